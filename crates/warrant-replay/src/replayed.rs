//! Folding a range with the shared fold, and what comes out of it.
//!
//! Every record goes through `warrant_authority::step` (via
//! `LogEvent::decode` and `instance_for_key`), exactly as `Ledger::apply`
//! does; nothing here decides anything about an instance. What this module
//! adds is bookkeeping the auditor needs: which partition an instance lives
//! in, whether its first event may lie before the range (`partial`), and
//! how much of each history to keep in memory ([`Keep`]).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use warrant_authority::{
    checkpoint_digest, instance_for_key, step, ExecutionRecord, Folded, Hash32, HistoryEntry,
    InstanceState, LogEvent, LogPosition, Outcome, QUARANTINE_INSTANCE,
};

use crate::range::PartitionRange;
use crate::source::{RawRecord, Sink};
use crate::Error;

/// How much of each instance's history to keep. The state is always kept;
/// full histories hold every decoded event and cost memory on big ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Keep {
    /// State and head hash only: summaries and the checkpoint digest.
    State,
    /// Plus every entry's hash: `--verify` can name the first differing entry.
    Chain,
    /// Plus every history entry: execution records can be printed.
    History,
}

/// One instance as replayed from the range.
#[derive(Debug, Clone)]
pub struct ReplayedInstance {
    pub partition: i32,
    /// Where its first event in the range is.
    pub first: LogPosition,
    /// Its first event in the range may not be its first event on the log:
    /// the range starts after the log does and that event was not an
    /// applied `ActionProposed`. Its hashes cannot be rebuilt from the range.
    pub partial: bool,
    /// Other partitions holding records under the same instance id (only
    /// expected for the quarantine instance, whose keys are not instance
    /// ids). Each partition is folded on its own, so its chain does not
    /// depend on how partitions interleave.
    pub other_partitions: Vec<i32>,
    /// State and history; the history is empty unless [`Keep::History`].
    pub folded: Folded,
    /// Entry hashes when [`Keep::Chain`] (the history has them otherwise).
    chain: Vec<Hash32>,
}

impl ReplayedInstance {
    pub fn instance_id(&self) -> &str {
        &self.folded.state.instance_id
    }

    /// History entries folded from the range.
    pub fn entries(&self) -> u64 {
        self.folded.state.entries
    }

    pub fn head(&self) -> Hash32 {
        self.folded.state.head
    }

    /// Every entry's hash, by `seq - 1`, if the replay kept them.
    pub fn hashes(&self) -> Option<Cow<'_, [Hash32]>> {
        if !self.folded.history.is_empty() {
            return Some(Cow::Owned(
                self.folded.history.iter().map(|e| e.hash).collect(),
            ));
        }
        if !self.chain.is_empty() {
            return Some(Cow::Borrowed(&self.chain));
        }
        None
    }

    /// The history, if the replay kept it ([`Keep::History`]).
    pub fn history(&self) -> Option<&[HistoryEntry]> {
        (self.folded.history.len() as u64 == self.entries() && self.entries() > 0)
            .then_some(self.folded.history.as_slice())
    }

    /// The execution record (`Folded::record`) with replay's markings; `None`
    /// unless the history was kept.
    pub fn record(&self) -> Option<ReplayedRecord> {
        self.history()?;
        Some(ReplayedRecord {
            partial: self.partial,
            partition: self.partition,
            also_in_partitions: self.other_partitions.clone(),
            record: self.folded.record(),
        })
    }

    /// The parts of the record that come from the state alone (status,
    /// proposal, authorization, grants, violations, head hash); the lists
    /// built from the history are empty.
    pub fn state_record(&self) -> ExecutionRecord {
        ExecutionRecord::build(&self.folded.state, &[])
    }
}

/// An execution record as replay prints it: `warrant_authority`'s
/// `ExecutionRecord` (flattened, so its fields are top-level in JSON) plus
/// where the range found it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayedRecord {
    /// The instance's first event may lie before the range: statuses and
    /// hashes below are from the range alone, not the instance's record.
    pub partial: bool,
    pub partition: i32,
    /// Other partitions with records under this id (see [`ReplayedInstance`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub also_in_partitions: Vec<i32>,
    #[serde(flatten)]
    pub record: ExecutionRecord,
}

struct Slot {
    first: LogPosition,
    partial: bool,
    folded: Folded,
    chain: Vec<Hash32>,
}

#[derive(Default)]
struct PartitionFold {
    /// Whether the range starts after the log does on this partition;
    /// decided by the first record seen.
    starts_late: bool,
    last_offset: Option<i64>,
    records: u64,
    /// Keyed by instance id. A `HashMap` for speed: it is never iterated
    /// into output before being sorted by id.
    instances: HashMap<String, Slot>,
}

/// A [`Sink`] that folds records; one per reader thread, merged at the end.
pub struct Folder {
    keep: Keep,
    only: Option<String>,
    partitions: BTreeMap<i32, PartitionFold>,
    events: u64,
}

impl std::fmt::Debug for Folder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Folder")
            .field("keep", &self.keep)
            .field("only", &self.only)
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

/// Whether a record keyed `key` belongs to instance `only`.
fn selects(only: &str, key: Option<&[u8]>) -> bool {
    key == Some(only.as_bytes())
        || (only == QUARANTINE_INSTANCE && instance_for_key(key) == QUARANTINE_INSTANCE)
}

impl Folder {
    /// `only`: fold just this instance's records (others are read, not folded).
    pub fn new(keep: Keep, only: Option<String>) -> Folder {
        Folder {
            keep,
            only,
            partitions: BTreeMap::new(),
            events: 0,
        }
    }

    /// Fold one record. Records of a partition must come in offset order.
    pub fn apply(&mut self, record: &RawRecord<'_>) -> Result<(), OutOfOrder> {
        let part = self.partitions.entry(record.partition).or_default();
        match part.last_offset {
            Some(previous) if record.offset <= previous => {
                return Err(OutOfOrder { previous });
            }
            Some(_) => {}
            None => part.starts_late = record.offset > record.log_start,
        }
        part.last_offset = Some(record.offset);
        part.records += 1;
        if let Some(only) = &self.only {
            if !selects(only, record.key) {
                return Ok(());
            }
        }
        let position = LogPosition {
            partition: record.partition,
            offset: record.offset,
        };
        // Look the key up as it is first: for a known instance that is
        // exactly what `instance_for_key` would return, and costs no String.
        let known = record
            .key
            .and_then(|key| std::str::from_utf8(key).ok())
            .filter(|key| part.instances.contains_key(*key));
        let slot = match known {
            Some(key) => part.instances.get_mut(key),
            None => {
                let instance_id = instance_for_key(record.key);
                Some(
                    part.instances
                        .entry(instance_id)
                        .or_insert_with_key(|instance_id| Slot {
                            first: position,
                            partial: false,
                            folded: Folded {
                                state: InstanceState::new(instance_id.clone()),
                                history: Vec::new(),
                            },
                            chain: Vec::new(),
                        }),
                )
            }
        };
        let Some(slot) = slot else {
            return Ok(());
        };
        let state = std::mem::replace(&mut slot.folded.state, InstanceState::new(String::new()));
        let (state, entry) = step(state, LogEvent::decode(position, record.value));
        slot.folded.state = state;
        if entry.seq == 1 {
            let proposal_applied = matches!(entry.outcome, Outcome::Applied { from: None, .. });
            slot.partial = part.starts_late && !proposal_applied;
        }
        match self.keep {
            Keep::State => {}
            Keep::Chain => slot.chain.push(entry.hash),
            Keep::History => slot.folded.history.push(entry),
        }
        self.events += 1;
        Ok(())
    }

    /// Merge the folders of all reader threads into one result, instances
    /// sorted by id then partition.
    pub fn merge(folders: Vec<Folder>) -> FoldResult {
        let mut instances = Vec::new();
        let mut events = 0;
        let mut records = BTreeMap::new();
        for folder in folders {
            events += folder.events;
            for (partition, part) in folder.partitions {
                *records.entry(partition).or_insert(0) += part.records;
                instances.extend(part.instances.into_values().map(|slot| ReplayedInstance {
                    partition,
                    first: slot.first,
                    partial: slot.partial,
                    other_partitions: Vec::new(),
                    folded: slot.folded,
                    chain: slot.chain,
                }));
            }
        }
        instances
            .sort_by(|a, b| (a.instance_id(), a.partition).cmp(&(b.instance_id(), b.partition)));
        let mut partitions_of: BTreeMap<String, Vec<i32>> = BTreeMap::new();
        for window in instances.windows(2) {
            if window[0].instance_id() == window[1].instance_id() {
                let list = partitions_of
                    .entry(window[0].instance_id().to_owned())
                    .or_insert_with(|| vec![window[0].partition]);
                list.push(window[1].partition);
            }
        }
        for instance in &mut instances {
            if let Some(all) = partitions_of.get(instance.instance_id()) {
                instance.other_partitions = all
                    .iter()
                    .copied()
                    .filter(|p| *p != instance.partition)
                    .collect();
            }
        }
        FoldResult {
            instances,
            events,
            records,
        }
    }
}

/// Internal: the merged result of all folders.
#[derive(Debug)]
pub struct FoldResult {
    pub instances: Vec<ReplayedInstance>,
    pub events: u64,
    pub records: BTreeMap<i32, u64>,
}

/// A record whose offset does not follow the previous one of its partition.
#[derive(Debug, Clone, Copy)]
pub struct OutOfOrder {
    pub previous: i64,
}

impl Sink for Folder {
    fn record(&mut self, record: &RawRecord<'_>) -> Result<(), Error> {
        self.apply(record)
            .map_err(|OutOfOrder { previous }| Error::OutOfOrder {
                topic: record.topic.to_owned(),
                partition: record.partition,
                offset: record.offset,
                previous,
            })
    }
}

/// The result of a replay.
#[derive(Debug)]
pub struct Replay {
    /// What was read (`kafka <brokers> topic <t>` or `file <path>`).
    pub source: String,
    pub topic: String,
    /// Per partition read: the range, as resolved (Kafka) or as recorded in
    /// the export and narrowed by the flags (file).
    pub ranges: Vec<PartitionRange>,
    /// Whether `ranges` are exactly what was read (false for a file without
    /// export metadata, or narrowed by time, where they are what was seen).
    pub exact_ranges: bool,
    pub instances: Vec<ReplayedInstance>,
    /// Records read in the range, per partition.
    pub records: BTreeMap<i32, u64>,
    /// Records folded (all of them, or only `--instance`'s).
    pub events: u64,
    pub keep: Keep,
    /// `--instance`, if only one instance was folded.
    pub only: Option<String>,
}

impl Replay {
    /// The instance's record from its (first) partition.
    pub fn get(&self, instance_id: &str) -> Option<&ReplayedInstance> {
        let at = self
            .instances
            .partition_point(|i| i.instance_id() < instance_id);
        self.instances
            .get(at)
            .filter(|i| i.instance_id() == instance_id)
    }

    /// Records of every instance, in id order (empty unless [`Keep::History`]).
    pub fn records(&self) -> impl Iterator<Item = ReplayedRecord> + '_ {
        self.instances.iter().filter_map(ReplayedInstance::record)
    }

    pub fn records_read(&self) -> u64 {
        self.records.values().sum()
    }

    /// `checkpoint_digest` over every replayed head, as the projector
    /// computes it; `None` when an id spans partitions (its head would
    /// depend on how the projector interleaved them).
    pub fn checkpoint_digest(&self) -> Option<Hash32> {
        if self
            .instances
            .iter()
            .any(|i| !i.other_partitions.is_empty())
        {
            return None;
        }
        let heads: Vec<(&str, Hash32)> = self
            .instances
            .iter()
            .map(|i| (i.instance_id(), i.head()))
            .collect();
        Some(checkpoint_digest(
            heads.iter().map(|(id, head)| (*id, head)),
        ))
    }

    pub fn summary(&self) -> Summary {
        let mut by_status = BTreeMap::new();
        for instance in &self.instances {
            let status = instance
                .folded
                .state
                .status()
                .map_or("UNPROPOSED", |s| s.as_str());
            *by_status.entry(status.to_owned()).or_insert(0) += 1;
        }
        Summary {
            source: self.source.clone(),
            partitions: self.ranges.iter().map(|r| r.partition).collect(),
            records: self.records_read(),
            events: self.events,
            instances: self.instances.len() as u64,
            partial: self.instances.iter().filter(|i| i.partial).count() as u64,
            split: self
                .instances
                .iter()
                .filter(|i| !i.other_partitions.is_empty())
                .count() as u64,
            by_status,
        }
    }
}

/// Counts for the summary line (and the JSON document).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub source: String,
    pub partitions: Vec<i32>,
    pub records: u64,
    pub events: u64,
    pub instances: u64,
    pub partial: u64,
    /// Instance records coming from an id seen in several partitions.
    pub split: u64,
    /// Status name (or `UNPROPOSED`) to number of instances.
    pub by_status: BTreeMap<String, u64>,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "replayed {} events ({} records read) from {} partition(s) of {} into {} instances",
            self.events,
            self.records,
            self.partitions.len(),
            self.source,
            self.instances
        )?;
        if self.partial > 0 {
            write!(f, " ({} partial)", self.partial)?;
        }
        if self.split > 0 {
            write!(
                f,
                " ({} records of ids split across partitions)",
                self.split
            )?;
        }
        if !self.by_status.is_empty() {
            let statuses: Vec<String> = self
                .by_status
                .iter()
                .map(|(status, n)| format!("{status} {n}"))
                .collect();
            write!(f, ": {}", statuses.join(", "))?;
        }
        Ok(())
    }
}
