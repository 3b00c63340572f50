//! Folding a range with the shared fold, and what comes out of it.
//!
//! Every record goes through `warrant_authority::step` (via
//! `LogEvent::decode` and `instance_for_key`), exactly as `Ledger::apply`
//! does; nothing here decides anything about an instance. What this module
//! adds is bookkeeping the auditor needs: which partition an instance lives
//! in, whether its first event may lie before the range (`partial`), how
//! much of each history to keep in memory ([`Keep`]), and the event ids
//! each instance has seen, kept out of the states ([`crate::seen`]) so
//! that memory follows the instances, not the events. Without full
//! histories, instances whose status is final are kept serialized
//! ([`Frozen`]): memory then follows the live instances.
//!
//! Records under keys that are not instance ids go to their partition's
//! quarantine (`quarantine-<partition>`), as everywhere else, so every
//! instance lives in one partition and each partition is folded on its own:
//! reader threads never need to agree on an order across partitions.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use warrant_authority::{
    checkpoint_digest, error_chain, instance_for_key, instance_key, quarantine_partition, step,
    ExecutionRecord, Folded, Hash32, HistoryEntry, InstanceState, LogEvent, LogPosition, Outcome,
    Phase, StatusName, QUARANTINE,
};

use crate::delta::Reference;
use crate::error::ThawError;
use crate::range::PartitionRange;
use crate::seen::{canonical_uuid_bytes, Key, SeenConfig, SeenIds};
use crate::source::{RawRecord, Sink};
use crate::trail::Trail;
use crate::Error;

/// How much of each instance's history to keep. The state is always kept
/// (memory per instance, whatever the number of events); the levels
/// above [`Keep::Trail`] cost memory per event on big ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Keep {
    /// State and head hash only: summaries and the checkpoint digest.
    State,
    /// Plus the trail of every entry's hash and position
    /// ([`crate::trail`], 32 bytes): `--verify` can tell that every entry
    /// matches, not which one differs first (it folds the instances that
    /// differ again with [`Keep::Chain`] for that).
    Trail,
    /// Plus every entry's hash and offset: `--verify` can name the first
    /// differing entry.
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
    /// Other partitions holding records under the same instance id. Never
    /// the case on a log that keeps docs/contract.md §2 (all events of an instance in one
    /// partition; quarantines are per partition); it happens when partitions
    /// were added to the topic while instances were open, which moves their
    /// later events elsewhere. Each partition is folded on its own, and such
    /// an instance is reported, not verified: a chain across partitions
    /// would depend on how a reader interleaved them.
    pub other_partitions: Vec<i32>,
    /// What the fold kept, in the box it was folded in: the result is a
    /// list of small records pointing at the boxes, not a second copy of
    /// every state made while the first is still alive.
    kept: Box<Kept>,
    /// The id's UUID bits, when it is one (every instance but a
    /// quarantine): the order of the ids, without reading the boxes.
    id_bits: Option<u128>,
}

/// What the fold keeps of one instance.
#[derive(Debug, Clone)]
struct Kept {
    /// State and history; the history is empty unless [`Keep::History`].
    /// While `frozen`, the state's phase is in there instead.
    folded: Folded,
    frozen: Option<Frozen>,
    entries: Entries,
}

/// What is kept of every entry besides the history, by [`Keep`]: one
/// field for whichever it is, so an instance carries the room for one.
/// Every variant is one pointer: with `--format none` (`Keep::State`) an
/// instance carries 16 bytes for it, and its box fits mimalloc's 160-byte
/// class, not the 192-byte one.
#[derive(Debug, Clone)]
enum Entries {
    /// [`Keep::State`], and [`Keep::History`] (the history has them all).
    Nothing,
    /// [`Keep::Trail`] while the range is read (a SHA-256 state).
    Trail(Box<Trail>),
    /// [`Keep::Trail`] once the range is read: the trail of every entry.
    TrailOf(Box<Hash32>),
    /// [`Keep::Chain`], what `--verify` folds again for a few instances.
    Chain(Box<Chain>),
}

/// Every entry's hash, and its offset (in the instance's partition): the
/// hash chain does not commit to positions, so `--verify` compares them
/// apart.
#[derive(Debug, Clone, Default)]
struct Chain {
    hashes: Vec<Hash32>,
    offsets: Vec<i64>,
}

impl Entries {
    fn new(keep: Keep) -> Entries {
        match keep {
            Keep::State | Keep::History => Entries::Nothing,
            Keep::Trail => Entries::Trail(Box::default()),
            Keep::Chain => Entries::Chain(Box::default()),
        }
    }

    fn finish(self) -> Entries {
        match self {
            Entries::Trail(trail) => Entries::TrailOf(Box::new(trail.finish())),
            other => other,
        }
    }
}

impl ReplayedInstance {
    /// Instance ids in string order, then partitions. Canonical UUIDs
    /// (fixed positions, lowercase hex digits) order as their bits, so a
    /// sort of 143k instances need not chase two pointers per comparison
    /// into memory it would otherwise never touch (it was most of the
    /// merge); any other id compares as its string.
    fn by_id(&self, other: &ReplayedInstance) -> std::cmp::Ordering {
        let ids = match (self.id_bits, other.id_bits) {
            (Some(a), Some(b)) => a.cmp(&b),
            _ => self.instance_id().cmp(other.instance_id()),
        };
        ids.then(self.partition.cmp(&other.partition))
    }

    pub fn instance_id(&self) -> &str {
        &self.kept.folded.state.instance_id
    }

    /// History entries folded from the range.
    pub fn entries(&self) -> u64 {
        self.kept.folded.state.entries
    }

    pub fn head(&self) -> Hash32 {
        self.kept.folded.state.head
    }

    /// Its status (`None`: never proposed).
    pub fn status(&self) -> Option<StatusName> {
        match &self.kept.frozen {
            Some(frozen) => Some(frozen.status()),
            None => self.kept.folded.state.status(),
        }
    }

    /// The state the fold left (read back if it was kept serialized).
    pub fn state(&self) -> Result<Cow<'_, InstanceState>, ThawError> {
        match &self.kept.frozen {
            None => Ok(Cow::Borrowed(&self.kept.folded.state)),
            Some(frozen) => {
                let mut state = self.kept.folded.state.clone();
                state.phase = frozen.thaw(&state.instance_id)?;
                Ok(Cow::Owned(state))
            }
        }
    }

    /// Every entry's hash, by `seq - 1`, if the replay kept them.
    pub fn hashes(&self) -> Option<Cow<'_, [Hash32]>> {
        let history = &self.kept.folded.history;
        if !history.is_empty() {
            return Some(Cow::Owned(history.iter().map(|e| e.hash).collect()));
        }
        match &self.kept.entries {
            Entries::Chain(chain) if !chain.hashes.is_empty() => Some(Cow::Borrowed(&chain.hashes)),
            _ => None,
        }
    }

    /// Every entry's log position, by `seq - 1`, if the replay kept them.
    pub fn positions(&self) -> Option<Vec<LogPosition>> {
        let history = &self.kept.folded.history;
        if !history.is_empty() {
            return Some(history.iter().map(|e| e.position).collect());
        }
        match &self.kept.entries {
            Entries::Chain(chain) if !chain.offsets.is_empty() => Some(
                chain
                    .offsets
                    .iter()
                    .map(|offset| LogPosition {
                        partition: self.partition,
                        offset: *offset,
                    })
                    .collect(),
            ),
            _ => None,
        }
    }

    /// The trail ([`crate::trail`]) of every entry, if the replay kept
    /// only that ([`Keep::Trail`]).
    pub fn trail(&self) -> Option<Hash32> {
        match &self.kept.entries {
            Entries::TrailOf(trail) => Some(**trail),
            _ => None,
        }
    }

    /// The history, if the replay kept it ([`Keep::History`]).
    pub fn history(&self) -> Option<&[HistoryEntry]> {
        let history = &self.kept.folded.history;
        (history.len() as u64 == self.entries() && self.entries() > 0).then_some(history.as_slice())
    }

    /// The execution record (`Folded::record`) with replay's markings; `None`
    /// unless the history was kept (and then the state is never frozen).
    pub fn record(&self) -> Option<ReplayedRecord> {
        let history = self.history()?;
        let state = self.state().ok()?;
        Some(ReplayedRecord {
            partial: self.partial,
            partition: self.partition,
            also_in_partitions: self.other_partitions.clone(),
            record: ExecutionRecord::build(&state, history),
        })
    }

    /// The parts of the record that come from the state alone (status,
    /// proposal, authorization, grants, violations, head hash); the lists
    /// built from the history are empty.
    pub fn state_record(&self) -> Result<ExecutionRecord, ThawError> {
        let state = self.state()?;
        Ok(ExecutionRecord::build(&state, &[]))
    }
}

/// The phase (proposal, status, signals, decisions, grants) of an instance
/// whose status is final, as MessagePack: the projector's format for
/// states, so the round trip is the one it relies on. A final instance is
/// rarely touched again, and its phase serialized is about a seventh of its
/// size in memory (785 bytes against ~5.5 KiB on the benchmark's mix, whose
/// maps allocate whole tree nodes for two entries). An event for it reads
/// the phase back, folds, and serializes it again.
///
/// The bytes are kept coded against the folder's reference phase
/// ([`crate::delta`]): phases of one log share most of their bytes (the
/// benchmark's, all but ids and timestamps: 785 bytes coded in ~100).
#[derive(Debug, Clone)]
struct Frozen {
    /// The status (its index in `StatusName::ALL`), then the phase coded
    /// against `reference`. The status is inside so that the phase costs
    /// an instance two pointers, which keep its box in the 160-byte class.
    coded: Box<[u8]>,
    reference: Arc<Reference>,
}

/// What a folder serializes final phases with.
#[derive(Debug, Default)]
struct Freezer {
    /// A phase's MessagePack, then its coded form: reused for every state,
    /// so they have long been big enough, and copied out at the exact
    /// length (growing a vector for each state copied it over and over,
    /// and mimalloc keeps a shrink to half or more in place).
    bytes: Vec<u8>,
    coded: Vec<u8>,
    /// The first phase this folder serialized.
    reference: Option<Arc<Reference>>,
}

impl Frozen {
    /// The state's phase, serialized, if its status is final; the state is
    /// left with none. `None`: not final, or it would not serialize.
    fn freeze(state: &mut InstanceState, freezer: &mut Freezer) -> Option<Frozen> {
        let status = state.status().filter(|s| s.is_final())?;
        let index = StatusName::ALL.iter().position(|s| *s == status)? as u8;
        freezer.bytes.clear();
        if let Err(error) = rmp_serde::encode::write(&mut freezer.bytes, &state.phase) {
            tracing::debug!(instance_id = %state.instance_id, error = %error, "state kept in memory");
            return None;
        }
        let bytes = &freezer.bytes;
        let reference = freezer
            .reference
            .get_or_insert_with(|| Arc::new(Reference::new(bytes)));
        freezer.coded.clear();
        freezer.coded.push(index);
        reference.encode(bytes, &mut freezer.coded);
        state.phase = Phase::Unproposed;
        Some(Frozen {
            coded: Box::from(freezer.coded.as_slice()),
            reference: Arc::clone(reference),
        })
    }

    fn status(&self) -> StatusName {
        // Always one of them: `freeze` wrote it.
        let index = self.coded.first().copied().unwrap_or_default();
        StatusName::ALL
            .get(usize::from(index))
            .copied()
            .unwrap_or(StatusName::Completed)
    }

    fn thaw(&self, instance_id: &str) -> Result<Phase, ThawError> {
        let failed = |reason: String| ThawError {
            instance_id: instance_id.to_owned(),
            reason,
        };
        let mut bytes = Vec::new();
        self.reference
            .decode(self.coded.get(1..).unwrap_or_default(), &mut bytes)
            .map_err(|e| failed(e.to_string()))?;
        rmp_serde::from_slice(&bytes).map_err(|e| failed(error_chain(&e)))
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

/// Which records `--instance` folds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Only {
    /// The records keyed by this instance id.
    Instance(String),
    /// Records under keys that are not instance ids: in one partition
    /// (`quarantine-<partition>`), or in all (`quarantine`).
    Quarantine(Option<i32>),
    /// Several instances (what `--verify` folds again to locate a
    /// difference): these ids, and these partitions' quarantines.
    Several {
        ids: HashSet<String>,
        quarantines: BTreeSet<i32>,
    },
}

impl Only {
    pub(crate) fn new(only: &str) -> Only {
        match quarantine_partition(only) {
            Some(partition) => Only::Quarantine(Some(partition)),
            None if only == QUARANTINE => Only::Quarantine(None),
            None => Only::Instance(only.to_owned()),
        }
    }

    /// These instance ids (quarantines included).
    pub(crate) fn several<'a>(instances: impl IntoIterator<Item = &'a str>) -> Only {
        let mut ids = HashSet::new();
        let mut quarantines = BTreeSet::new();
        for id in instances {
            match quarantine_partition(id) {
                Some(partition) => {
                    quarantines.insert(partition);
                }
                None => {
                    ids.insert(id.to_owned());
                }
            }
        }
        Only::Several { ids, quarantines }
    }

    /// Whether the record keyed `key` in `partition` is selected.
    fn selects(&self, key: Option<&[u8]>, partition: i32) -> bool {
        match self {
            // A key equal to an instance id is that id: no parsing needed.
            Only::Instance(id) => key == Some(id.as_bytes()),
            Only::Quarantine(only) => {
                only.is_none_or(|only| only == partition) && instance_key(key).is_none()
            }
            Only::Several { ids, quarantines } => {
                let named = key
                    .and_then(|key| std::str::from_utf8(key).ok())
                    .is_some_and(|key| ids.contains(key));
                named || (quarantines.contains(&partition) && instance_key(key).is_none())
            }
        }
    }
}

/// An instance while its partition is read.
struct Slot {
    /// The instance's number in its folder, for the seen-id store.
    ordinal: u64,
    first: LogPosition,
    partial: bool,
    kept: Box<Kept>,
}

impl Slot {
    fn new(ordinal: u64, first: LogPosition, instance_id: String, keep: Keep) -> Slot {
        Slot {
            ordinal,
            first,
            partial: false,
            kept: Box::new(Kept {
                folded: Folded {
                    state: InstanceState::new(instance_id),
                    history: Vec::new(),
                },
                frozen: None,
                entries: Entries::new(keep),
            }),
        }
    }
}

#[derive(Default)]
struct PartitionFold {
    /// Whether the range starts after the log does on this partition
    /// (from the range, as the first record seen carries it).
    starts_late: bool,
    last_offset: Option<i64>,
    records: u64,
    /// Keyed by instance id, as the 128 bits of the UUID it is
    /// ([`crate::seen::canonical_uuid`]): the id is already in the state,
    /// so a `String` key would be a second copy of every id, and hashing
    /// 16 bytes is cheaper than hashing 36. A `HashMap` for speed: it is
    /// never iterated into output before being sorted by id. A slot is
    /// small (what the fold keeps is boxed): a table keeps up to twice as
    /// many buckets as entries, each the size of its entry.
    instances: HashMap<u128, Slot>,
    /// Every other instance id: the partition's quarantine.
    others: HashMap<String, Slot>,
}

/// A decision signed with a reviewer's own key, as replay saw it: what the
/// offline signature audit (`crate::signatures`) checks against the
/// reviewer directories published before it. Kept for every signed
/// decision whatever `Keep` says (they are few), nothing for HMAC ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SignedDecisionSeen {
    pub instance_id: String,
    pub seq: u64,
    pub position: LogPosition,
    pub recorded_at: i64,
    pub reviewer: String,
    pub key_id: String,
    pub public_key: String,
    /// The fold's refusal of it, if any (`BadSignature` means the proof
    /// did not verify: intake was bypassed or the log was tampered with).
    pub refusal: Option<warrant_authority::RefusalCode>,
}

/// A [`Sink`] that folds records; one per reader thread, merged at the end.
pub struct Folder {
    keep: Keep,
    offsets: crate::gaps::Offsets,
    only: Option<Only>,
    partitions: BTreeMap<i32, PartitionFold>,
    events: u64,
    signed: Vec<SignedDecisionSeen>,
    attested: u64,
    /// Every (instance, event id) folded: the states' `seen_event_ids`,
    /// kept outside them between steps (see [`Folder::apply`]).
    seen: SeenIds,
    instances: u64,
    freezer: Freezer,
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

impl Folder {
    /// `only`: fold just this instance's records (others are read, not
    /// folded); `quarantine` folds every partition's quarantine. Seen ids
    /// spill to the system's temporary directory.
    pub fn new(keep: Keep, only: Option<String>) -> Folder {
        Folder::with(keep, only.as_deref().map(Only::new), SeenConfig::default())
    }

    pub(crate) fn with(keep: Keep, only: Option<Only>, seen: SeenConfig) -> Folder {
        Folder {
            keep,
            offsets: crate::gaps::Offsets::default(),
            only,
            partitions: BTreeMap::new(),
            events: 0,
            signed: Vec::new(),
            attested: 0,
            seen: SeenIds::new(seen),
            instances: 0,
            freezer: Freezer::default(),
        }
    }

    /// Fold one record. Records of a partition must come in offset order.
    ///
    /// The fold's `Duplicate` check reads `InstanceState::seen_event_ids`,
    /// which here holds nothing between steps: the ids live in
    /// [`SeenIds`]. Before the step, the event's id is put back into the
    /// state if the store saw it under this instance, so `step` refuses it
    /// exactly as if the state had kept every id; after the step, whatever
    /// `step` inserted is moved into the store. `step` stays the only judge.
    pub fn apply(&mut self, record: &RawRecord<'_>) -> Result<(), Error> {
        let part = self.partitions.entry(record.partition).or_default();
        match part.last_offset {
            Some(previous) if record.offset <= previous => {
                return Err(Error::OutOfOrder {
                    topic: record.topic.to_owned(),
                    partition: record.partition,
                    offset: record.offset,
                    previous,
                });
            }
            Some(_) => {}
            None => part.starts_late = record.range_start > record.log_start,
        }
        part.last_offset = Some(record.offset);
        part.records += 1;
        self.offsets.see(record.partition, record.offset);
        if let Some(only) = &self.only {
            if !only.selects(record.key, record.partition) {
                return Ok(());
            }
        }
        let position = LogPosition {
            partition: record.partition,
            offset: record.offset,
        };
        // A key that is a canonical UUID is the instance id
        // `instance_for_key` returns, and is looked up as its 128 bits: no
        // String for a known instance. Any other key goes to the
        // partition's quarantine, as `instance_for_key` says. Instances are
        // per partition, so no other partition interferes.
        let keep = self.keep;
        let slot = match record.key.and_then(canonical_uuid_bytes) {
            Some(bits) => part.instances.entry(bits).or_insert_with(|| {
                let ordinal = self.instances;
                self.instances += 1;
                Slot::new(
                    ordinal,
                    position,
                    instance_for_key(record.key, record.partition),
                    keep,
                )
            }),
            None => part
                .others
                .entry(instance_for_key(record.key, record.partition))
                .or_insert_with_key(|instance_id| {
                    let ordinal = self.instances;
                    self.instances += 1;
                    Slot::new(ordinal, position, instance_id.clone(), keep)
                }),
        };
        let kept = &mut *slot.kept;
        if let Some(frozen) = kept.frozen.take() {
            kept.folded.state.phase = frozen.thaw(&kept.folded.state.instance_id)?;
        }
        let event = LogEvent::decode(position, record.value);
        let mut key = event
            .decoded
            .as_ref()
            .ok()
            .map(|envelope| Key::new(slot.ordinal, &envelope.event_id));
        // A new instance has seen nothing: no lookup for its first event.
        let seen_before = match &key {
            Some(key) if kept.folded.state.entries > 0 => self.seen.contains(key)?,
            _ => false,
        };
        if let (true, Ok(envelope)) = (seen_before, &event.decoded) {
            kept.folded
                .state
                .seen_event_ids
                .insert(envelope.event_id.clone());
        }
        let entry = step(&mut kept.folded.state, event);
        let inserted = std::mem::take(&mut kept.folded.state.seen_event_ids);
        if !seen_before {
            for id in inserted {
                // The fold inserts the id of the event it folds; any other
                // would be keyed on its own.
                let own = entry.event.as_ref().is_some_and(|e| e.event_id == id);
                let key = match key.take() {
                    Some(key) if own => key,
                    _ => Key::new(slot.ordinal, &id),
                };
                self.seen.insert(key)?;
            }
        }
        if let Some(warrant_schema::EventBody::DecisionRecorded(decision)) =
            entry.event.as_ref().map(|e| &e.body)
        {
            match &decision.proof {
                Some(proof) => self.signed.push(SignedDecisionSeen {
                    instance_id: kept.folded.state.instance_id.clone(),
                    seq: entry.seq,
                    position,
                    recorded_at: entry.recorded_at.unwrap_or_default(),
                    reviewer: decision.reviewer.principal.clone(),
                    key_id: proof.key_id.clone(),
                    public_key: proof.public_key.clone(),
                    refusal: entry.outcome.refusal(),
                }),
                None => self.attested += 1,
            }
        }
        if entry.seq == 1 {
            let proposal_applied = matches!(entry.outcome, Outcome::Applied { from: None, .. });
            slot.partial = part.starts_late && !proposal_applied;
        }
        match &mut kept.entries {
            Entries::Trail(trail) => trail.push(&entry.hash, position),
            Entries::Chain(chain) => {
                chain.hashes.push(entry.hash);
                chain.offsets.push(record.offset);
            }
            Entries::Nothing | Entries::TrailOf(_) => {}
        }
        if self.keep == Keep::History {
            kept.folded.history.push(entry);
        }
        // Full histories dwarf a state; and `Keep::Chain` folds a few
        // instances only.
        if matches!(self.keep, Keep::State | Keep::Trail) {
            kept.frozen = Frozen::freeze(&mut kept.folded.state, &mut self.freezer);
        }
        self.events += 1;
        Ok(())
    }

    /// Merge the folders of all reader threads into one result, instances
    /// sorted by id then partition.
    pub fn merge(folders: Vec<Folder>) -> FoldResult {
        // Exactly sized: growing by doubling would hold two copies at once.
        let mut instances = Vec::with_capacity(
            folders
                .iter()
                .flat_map(|f| f.partitions.values())
                .map(|p| p.instances.len() + p.others.len())
                .sum(),
        );
        let mut events = 0;
        let mut records = BTreeMap::new();
        let mut signed = Vec::new();
        let mut attested = 0;
        let mut offsets = Vec::new();
        for folder in folders {
            tracing::debug!(stats = ?folder.seen.stats(), "duplicate check");
            offsets.push(folder.offsets);
            events += folder.events;
            signed.extend(folder.signed);
            attested += folder.attested;
            for (partition, part) in folder.partitions {
                *records.entry(partition).or_insert(0) += part.records;
                let slots = (part.instances.into_iter())
                    .map(|(bits, slot)| (Some(bits), slot))
                    .chain(part.others.into_values().map(|slot| (None, slot)));
                instances.extend(slots.map(|(id_bits, mut slot)| {
                    // Only trails have anything to finish: the other boxes
                    // are left untouched.
                    if let Entries::Trail(_) = slot.kept.entries {
                        let kept = &mut *slot.kept;
                        kept.entries =
                            std::mem::replace(&mut kept.entries, Entries::Nothing).finish();
                    }
                    ReplayedInstance {
                        partition,
                        first: slot.first,
                        partial: slot.partial,
                        other_partitions: Vec::new(),
                        kept: slot.kept,
                        id_bits,
                    }
                }));
            }
        }
        instances.sort_unstable_by(ReplayedInstance::by_id);
        let mut partitions_of: BTreeMap<String, Vec<i32>> = BTreeMap::new();
        for window in instances.windows(2) {
            let same = match (window[0].id_bits, window[1].id_bits) {
                (Some(a), Some(b)) => a == b,
                _ => window[0].instance_id() == window[1].instance_id(),
            };
            if same {
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
        signed.sort_by(|a, b| (&a.instance_id, a.seq).cmp(&(&b.instance_id, b.seq)));
        FoldResult {
            instances,
            events,
            records,
            signed,
            attested,
            offsets: crate::gaps::Offsets::merge(offsets),
        }
    }
}

/// Internal: the merged result of all folders.
#[derive(Debug)]
pub struct FoldResult {
    pub instances: Vec<ReplayedInstance>,
    pub events: u64,
    pub records: BTreeMap<i32, u64>,
    pub signed: Vec<SignedDecisionSeen>,
    pub attested: u64,
    pub offsets: crate::gaps::Offsets,
}

impl Sink for Folder {
    fn record(&mut self, record: &RawRecord<'_>) -> Result<(), Error> {
        self.apply(record)
    }
}

/// The result of a replay.
#[derive(Debug)]
pub struct Replay {
    /// Every decision signed with a reviewer's own key in the range.
    pub signed_decisions: Vec<SignedDecisionSeen>,
    /// Decisions in the range attested by intake (HMAC).
    pub attested_decisions: u64,
    /// What was read (`kafka <brokers> topic <t>` or `file <path>`).
    pub source: String,
    pub topic: String,
    /// Per partition read: the range, as resolved (Kafka) or as recorded in
    /// the export and narrowed by the flags (file).
    pub ranges: Vec<PartitionRange>,
    /// Why `ranges` are not known to be exactly what was read, if they are
    /// not (a file without an export header, an export whose header says
    /// it is inexact, a file narrowed by time: the ranges are then what was
    /// seen). Records missing at either end of such a range cannot be
    /// detected, so completeness is not proven.
    pub inexact: Option<String>,
    /// Offsets inside the ranges with no record (see [`crate::gaps`]):
    /// evidence of a rewritten log.
    pub gaps: Vec<crate::Gap>,
    /// Kafka partitions with an open transaction when the range was
    /// resolved (their ends are the last stable offsets).
    pub open_transactions: Vec<crate::kafka::OpenTransaction>,
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
    /// Whether `ranges` are exactly the offsets read.
    pub fn exact_ranges(&self) -> bool {
        self.inexact.is_none()
    }

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
            let status = instance.status().map_or("UNPROPOSED", |s| s.as_str());
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

#[cfg(test)]
mod tests {
    use warrant_authority::Ledger;
    use warrant_schema::samples;

    use super::*;

    fn id(n: u8) -> String {
        format!("6f1c2b9e-4d0a-4c7e-9a51-0000000000{n:02x}")
    }

    /// The first `len` sample events, re-keyed to instance `n`.
    fn events(n: u8, len: usize) -> Vec<Vec<u8>> {
        samples::envelopes()
            .into_iter()
            .take(len)
            .map(|(_, mut envelope)| {
                envelope.instance_id = id(n);
                warrant_schema::encode(&envelope).unwrap_or_else(|e| panic!("{e}"))
            })
            .collect()
    }

    /// Partition, offset, key, value.
    type Record = (i32, i64, Option<Vec<u8>>, Vec<u8>);

    struct Feed {
        log_start: i64,
        /// Where the range starts; `None`: at each partition's first record.
        range_start: Option<i64>,
        records: Vec<Record>,
    }

    impl Feed {
        fn new(log_start: i64) -> Feed {
            Feed {
                log_start,
                range_start: None,
                records: Vec::new(),
            }
        }

        fn push(&mut self, partition: i32, offset: i64, key: Option<&[u8]>, value: &[u8]) {
            self.records
                .push((partition, offset, key.map(<[u8]>::to_vec), value.to_vec()));
        }

        fn fold(&self, keep: Keep, only: Option<&str>) -> FoldResult {
            let mut folder = Folder::new(keep, only.map(str::to_owned));
            for (partition, offset, key, value) in &self.records {
                let record = RawRecord {
                    topic: "warrant.log",
                    partition: *partition,
                    offset: *offset,
                    timestamp: None,
                    key: key.as_deref(),
                    value,
                    log_start: self.log_start,
                    // Only the first record of a partition is looked at.
                    range_start: self.range_start.unwrap_or(*offset),
                };
                folder.apply(&record).unwrap_or_else(|e| panic!("{e}"));
            }
            Folder::merge(vec![folder])
        }

        fn fold_spilling(&self, keep: Keep, buffer_keys: usize) -> FoldResult {
            let seen = SeenConfig {
                buffer_keys,
                ..SeenConfig::default()
            };
            let mut folder = Folder::with(keep, None, seen);
            for (partition, offset, key, value) in &self.records {
                let record = RawRecord {
                    topic: "warrant.log",
                    partition: *partition,
                    offset: *offset,
                    timestamp: None,
                    key: key.as_deref(),
                    value,
                    log_start: self.log_start,
                    range_start: *offset,
                };
                folder.apply(&record).unwrap_or_else(|e| panic!("{e}"));
            }
            Folder::merge(vec![folder])
        }

        fn ledger(&self) -> Ledger {
            let mut ledger = Ledger::new();
            for (partition, offset, key, value) in &self.records {
                ledger.apply(
                    LogPosition {
                        partition: *partition,
                        offset: *offset,
                    },
                    key.as_deref(),
                    value,
                );
            }
            ledger
        }
    }

    fn find<'a>(result: &'a FoldResult, instance: &str) -> &'a ReplayedInstance {
        result
            .instances
            .iter()
            .find(|i| i.instance_id() == instance)
            .unwrap_or_else(|| panic!("{instance} not folded"))
    }

    /// Partition 0 from offset 10 on, of a log that starts at `log_start`:
    /// instance 1 has only later events in the range, instance 2 starts in it.
    fn late_range(log_start: i64) -> Feed {
        let (one, two) = (events(1, 7), events(2, 3));
        let mut feed = Feed::new(log_start);
        let (key1, key2) = (id(1), id(2));
        feed.push(0, 10, Some(key1.as_bytes()), &one[3]);
        feed.push(0, 11, Some(key2.as_bytes()), &two[0]);
        feed.push(0, 12, Some(key1.as_bytes()), &one[4]);
        feed.push(0, 13, Some(key2.as_bytes()), &two[1]);
        feed
    }

    #[test]
    fn an_instance_first_seen_mid_history_after_the_log_start_is_partial() {
        let result = late_range(0).fold(Keep::Chain, None);
        assert!(find(&result, &id(1)).partial);
        assert!(!find(&result, &id(2)).partial);
        assert_eq!(
            find(&result, &id(1)).first,
            LogPosition {
                partition: 0,
                offset: 10
            }
        );
    }

    #[test]
    fn records_removed_at_the_start_of_a_whole_log_range_make_nothing_partial() {
        // The range starts with the log at 0, yet the first record read is
        // at 10 (0..10 were removed from a copy): the instance is not partial
        // (its start was in the range and is missing), so --verify compares it.
        let mut feed = late_range(0);
        feed.range_start = Some(0);
        let result = feed.fold(Keep::Chain, None);
        assert!(result.instances.iter().all(|i| !i.partial));
    }

    #[test]
    fn nothing_is_partial_when_the_range_starts_with_the_log() {
        let result = late_range(10).fold(Keep::Chain, None);
        assert!(result.instances.iter().all(|i| !i.partial));
    }

    #[test]
    fn a_refused_first_proposal_does_not_make_an_instance_whole() {
        // A proposal keyed to another instance is refused (Malformed): it is
        // not this instance's start.
        let mut feed = Feed::new(0);
        let key = id(3);
        feed.push(0, 10, Some(key.as_bytes()), &events(4, 1)[0]);
        let result = feed.fold(Keep::State, None);
        assert!(find(&result, &id(3)).partial);
    }

    #[test]
    fn every_keep_level_folds_the_ledgers_records() {
        let mut feed = Feed::new(0);
        let (a, b) = (events(1, 7), events(2, 11));
        let (key_a, key_b) = (id(1), id(2));
        for (n, value_b) in b.iter().enumerate() {
            if let Some(value) = a.get(n) {
                feed.push(0, 2 * n as i64, Some(key_a.as_bytes()), value);
            }
            feed.push(0, 2 * n as i64 + 1, Some(key_b.as_bytes()), value_b);
        }
        feed.push(0, 30, Some(b"not a uuid"), b"garbage");
        feed.push(0, 31, None, &a[0]);
        // Instance 3 is withdrawn (final), then gets two more events: each
        // is folded from its state read back.
        let c = events(3, 11);
        let key_c = id(3);
        for (offset, index) in [(32, 0), (33, 9), (34, 1), (35, 10)] {
            feed.push(0, offset, Some(key_c.as_bytes()), &c[index]);
        }
        let ledger = feed.ledger();
        assert_eq!(
            ledger.get(&key_c).and_then(|f| f.state.status()),
            Some(StatusName::Withdrawn)
        );

        let history = feed.fold(Keep::History, None);
        assert_eq!(history.events, 24);
        assert_eq!(history.instances.len(), ledger.len());
        for instance in &history.instances {
            let folded = ledger
                .get(instance.instance_id())
                .unwrap_or_else(|| panic!("{} not in the ledger", instance.instance_id()));
            assert_eq!(instance.record().map(|r| r.record), Some(folded.record()));
            assert_eq!(
                instance.hashes().map(|h| h.into_owned()),
                Some(folded.history.iter().map(|e| e.hash).collect())
            );
        }

        let chain = feed.fold(Keep::Chain, None);
        for (with_history, with_chain) in history.instances.iter().zip(&chain.instances) {
            assert_eq!(with_chain.record(), None);
            assert_eq!(with_chain.hashes(), with_history.hashes());
            assert_eq!(with_chain.positions(), with_history.positions());
            assert!(with_chain.positions().is_some());
            assert_eq!(with_chain.kept.folded.state, with_history.kept.folded.state);
        }

        let trail = feed.fold(Keep::Trail, None);
        for (with_history, with_trail) in history.instances.iter().zip(&trail.instances) {
            assert_eq!(with_trail.hashes(), None);
            // Final instances are kept serialized: read back, the same.
            assert_eq!(
                with_trail.kept.frozen.is_some(),
                with_history.status().is_some_and(StatusName::is_final)
            );
            assert_eq!(
                with_trail.state().map(Cow::into_owned).ok().as_ref(),
                Some(&with_history.kept.folded.state)
            );
            assert_eq!(with_trail.status(), with_history.status());
            assert_eq!(
                with_trail.state_record().ok(),
                with_history.state_record().ok()
            );
            let entries = with_history.history().unwrap_or_default();
            assert_eq!(
                with_trail.trail(),
                Some(crate::trail::of(
                    entries.iter().map(|e| (&e.hash, e.position))
                ))
            );
        }

        let state = feed.fold(Keep::State, None);
        assert!(state.instances.iter().all(|i| i.hashes().is_none()));
        assert!(state.instances.iter().all(|i| i.trail().is_none()));
        assert!(state.instances.iter().any(|i| i.kept.frozen.is_some()));
        for (with_state, with_history) in state.instances.iter().zip(&history.instances) {
            assert_eq!(
                with_state.state().map(Cow::into_owned).ok().as_ref(),
                Some(&with_history.kept.folded.state)
            );
        }
        assert_eq!(
            state
                .instances
                .iter()
                .map(ReplayedInstance::head)
                .collect::<Vec<_>>(),
            history
                .instances
                .iter()
                .map(ReplayedInstance::head)
                .collect::<Vec<_>>()
        );
    }

    /// Sample event `index` of instance `n` under another event id.
    fn event_with_id(n: u8, index: usize, event_id: &str) -> Vec<u8> {
        let mut envelope = samples::envelopes()
            .into_iter()
            .nth(index)
            .map(|(_, envelope)| envelope)
            .unwrap_or_else(|| panic!("no sample {index}"));
        envelope.instance_id = id(n);
        envelope.event_id = event_id.to_owned();
        warrant_schema::encode(&envelope).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn duplicates_are_refused_as_the_ledger_does_though_the_ids_are_on_disk() {
        let mut feed = Feed::new(0);
        // The samples' event ids, under two instances: the same ids are
        // new in each (the store keys them by instance).
        let (a, b) = (events(1, 7), events(2, 7));
        let (key_a, key_b) = (id(1), id(2));
        let mut offset = 0;
        let mut push = |feed: &mut Feed, key: &str, value: &[u8]| {
            feed.push(0, offset, Some(key.as_bytes()), value);
            offset += 1;
        };
        for n in 0..7 {
            push(&mut feed, &key_a, &a[n]);
            push(&mut feed, &key_b, &b[n]);
        }
        // Replayed events: long after their first time, so with a tiny
        // buffer their ids are in a run on disk by now.
        push(&mut feed, &key_a, &a[3]);
        push(&mut feed, &key_b, &b[0]);
        push(&mut feed, &key_a, &a[6]);
        // Ids that are not canonical UUIDs: an uppercase spelling is another
        // id; repeated, it is a duplicate.
        let upper = events_id(&a[4]).to_uppercase();
        push(&mut feed, &key_a, &event_with_id(1, 4, &upper));
        push(&mut feed, &key_a, &event_with_id(1, 4, &upper));
        push(&mut feed, &key_a, &event_with_id(1, 4, "not-a-uuid"));
        push(&mut feed, &key_a, &event_with_id(1, 4, "not-a-uuid"));
        let ledger = feed.ledger();
        let refusals = |result: &FoldResult| -> Vec<(String, u64)> {
            result
                .instances
                .iter()
                .flat_map(|i| {
                    i.kept
                        .folded
                        .history
                        .iter()
                        .filter(|e| {
                            e.outcome.refusal() == Some(warrant_authority::RefusalCode::Duplicate)
                        })
                        .map(|e| (i.instance_id().to_owned(), e.seq))
                })
                .collect()
        };
        let mut expected = Vec::new();
        for buffer_keys in [1, 2, 3, 1 << 17] {
            let result = feed.fold_spilling(Keep::History, buffer_keys);
            for instance in &result.instances {
                let folded = ledger
                    .get(instance.instance_id())
                    .unwrap_or_else(|| panic!("{} not in the ledger", instance.instance_id()));
                assert_eq!(
                    instance.record().map(|r| r.record),
                    Some(folded.record()),
                    "buffer of {buffer_keys}"
                );
                assert!(instance.kept.folded.state.seen_event_ids.is_empty());
            }
            if expected.is_empty() {
                expected = refusals(&result);
            }
            assert_eq!(refusals(&result), expected, "buffer of {buffer_keys}");
        }
        // a[3], a[6], b[0], the second uppercase and the second not-a-uuid.
        assert_eq!(expected.len(), 5, "{expected:?}");
    }

    /// The event id in encoded sample bytes.
    fn events_id(bytes: &[u8]) -> String {
        warrant_schema::decode::<warrant_schema::Envelope>(bytes)
            .map(|e| e.event_id)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn one_instance_is_folded_alone() {
        let feed = late_range(10);
        let only = feed.fold(Keep::History, Some(&id(2)));
        assert_eq!(only.instances.len(), 1);
        assert_eq!(only.events, 2);
        assert_eq!(only.records.get(&0), Some(&4));
        assert_eq!(
            only.instances[0].head(),
            find(&feed.fold(Keep::State, None), &id(2)).head()
        );

        let mut feed = Feed::new(0);
        feed.push(0, 0, Some(b"junk"), b"x");
        feed.push(0, 1, Some(id(1).as_bytes()), b"y");
        feed.push(0, 2, None, b"z");
        feed.push(1, 0, Some(b"quarantine-0"), b"w");
        feed.push(1, 1, Some(id(2).to_uppercase().as_bytes()), b"v");
        let ids = |result: &FoldResult| -> Vec<(String, i32, u64)> {
            result
                .instances
                .iter()
                .map(|i| (i.instance_id().to_owned(), i.partition, i.entries()))
                .collect()
        };
        let zero = feed.fold(Keep::History, Some("quarantine-0"));
        assert_eq!(zero.events, 2);
        assert_eq!(ids(&zero), [("quarantine-0".to_owned(), 0, 2)]);
        let one = feed.fold(Keep::History, Some("quarantine-1"));
        assert_eq!(ids(&one), [("quarantine-1".to_owned(), 1, 2)]);
        let all = feed.fold(Keep::History, Some("quarantine"));
        assert_eq!(all.events, 4);
        assert_eq!(ids(&all), [ids(&zero)[0].clone(), ids(&one)[0].clone()]);
        assert!(feed
            .fold(Keep::State, Some("quarantine-2"))
            .instances
            .is_empty());
        // The same records, folded in full, give the same quarantines.
        let whole = feed.fold(Keep::History, None);
        for quarantine in &all.instances {
            assert_eq!(
                find(&whole, quarantine.instance_id()).head(),
                quarantine.head()
            );
        }
    }

    #[test]
    fn instance_arguments_are_ids_or_quarantines() {
        for (given, canonical) in [
            (
                "6F1C2B9E-4D0A-4C7E-9A51-0D2F3B8C7E11",
                "6f1c2b9e-4d0a-4c7e-9a51-0d2f3b8c7e11",
            ),
            (" quarantine-3 ", "quarantine-3"),
            ("Quarantine", "quarantine"),
        ] {
            assert_eq!(
                crate::canonical_instance(given).ok().as_deref(),
                Some(canonical)
            );
        }
        for bad in [
            "quarantine-03",
            "quarantine-",
            "quarantine-x",
            "6f1c2b9e",
            "junk",
            "",
        ] {
            assert!(crate::canonical_instance(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn offsets_must_grow_within_a_partition() {
        let mut folder = Folder::new(Keep::State, None);
        let record = |partition, offset| RawRecord {
            topic: "t",
            partition,
            offset,
            timestamp: None,
            key: None,
            value: b"",
            log_start: 0,
            range_start: 0,
        };
        assert!(folder.apply(&record(0, 5)).is_ok());
        assert!(folder.apply(&record(1, 2)).is_ok());
        assert!(matches!(
            folder.apply(&record(0, 5)),
            Err(Error::OutOfOrder { previous: 5, .. })
        ));
        assert!(matches!(
            folder.apply(&record(0, 4)),
            Err(Error::OutOfOrder { previous: 5, .. })
        ));
        assert!(folder.apply(&record(0, 9)).is_ok());
    }

    #[test]
    fn stray_keys_in_two_partitions_are_two_quarantines_not_a_split() {
        let mut feed = Feed::new(0);
        feed.push(0, 0, Some(b"junk"), b"x");
        feed.push(2, 0, Some(b"other junk"), b"y");
        feed.push(2, 1, None, &events(1, 1)[0]);
        feed.push(1, 0, Some(id(1).as_bytes()), &events(1, 1)[0]);
        feed.push(0, 1, Some(b"junk"), b"z");
        let result = feed.fold(Keep::History, None);
        let quarantines: Vec<(&str, i32, u64)> = result
            .instances
            .iter()
            .filter(|i| quarantine_partition(i.instance_id()).is_some())
            .map(|i| (i.instance_id(), i.partition, i.entries()))
            .collect();
        assert_eq!(
            quarantines,
            vec![("quarantine-0", 0, 2), ("quarantine-2", 2, 2)]
        );
        assert!(result
            .instances
            .iter()
            .all(|i| i.other_partitions.is_empty()));
        // The records and digest are the ledger's, whatever the order.
        let ledger = feed.ledger();
        for instance in &result.instances {
            let folded = ledger.get(instance.instance_id());
            assert_eq!(
                instance.record().map(|r| r.record),
                folded.map(Folded::record)
            );
        }
        let replay = Replay {
            signed_decisions: Vec::new(),
            attested_decisions: 0,
            source: String::new(),
            topic: String::new(),
            ranges: Vec::new(),
            inexact: None,
            gaps: Vec::new(),
            open_transactions: Vec::new(),
            instances: result.instances,
            records: result.records,
            events: result.events,
            keep: Keep::History,
            only: None,
        };
        assert_eq!(replay.checkpoint_digest(), Some(ledger.checkpoint_digest()));
        assert_eq!(replay.summary().split, 0);
    }

    #[test]
    fn an_id_in_two_partitions_gives_two_records_that_name_each_other() {
        // Off contract (docs/contract.md §2): an instance's events in two partitions, as
        // after partitions were added to the topic.
        let mut feed = Feed::new(0);
        let key = id(1);
        let history = events(1, 3);
        feed.push(0, 0, Some(key.as_bytes()), &history[0]);
        feed.push(2, 0, Some(key.as_bytes()), &history[1]);
        feed.push(2, 1, Some(key.as_bytes()), &history[2]);
        feed.push(1, 0, Some(id(2).as_bytes()), &events(2, 1)[0]);
        let result = feed.fold(Keep::State, None);
        let split: Vec<(i32, Vec<i32>)> = result
            .instances
            .iter()
            .filter(|i| i.instance_id() == key)
            .map(|i| (i.partition, i.other_partitions.clone()))
            .collect();
        assert_eq!(split, vec![(0, vec![2]), (2, vec![0])]);
        assert!(find(&result, &id(2)).other_partitions.is_empty());
    }

    #[test]
    fn final_phases_are_kept_coded_against_the_first_and_read_back_the_same() {
        let mut feed = Feed::new(0);
        for n in 1..=3 {
            let (key, history) = (id(n), events(n, 11));
            // Proposed, signalled, approved once, withdrawn: final.
            for (offset, index) in [0, 1, 2, 3, 9].into_iter().enumerate() {
                let offset = i64::from(n) * 10 + offset as i64;
                feed.push(0, offset, Some(key.as_bytes()), &history[index]);
            }
        }
        let ledger = feed.ledger();
        let state = feed.fold(Keep::State, None);
        let frozen: Vec<&Frozen> = state
            .instances
            .iter()
            .filter_map(|i| i.kept.frozen.as_ref())
            .collect();
        assert_eq!(frozen.len(), 3, "every instance is final");
        for instance in &state.instances {
            let folded = ledger
                .get(instance.instance_id())
                .unwrap_or_else(|| panic!("not folded"));
            assert_eq!(instance.status(), Some(StatusName::Withdrawn));
            let read_back = instance.state().unwrap_or_else(|e| panic!("{e}"));
            // The event ids are kept apart (see `Folder::apply`).
            assert_eq!(read_back.phase, folded.state.phase);
            assert_eq!(read_back.head, folded.state.head);
        }
        // One reference per folder, the first phase: that one codes to a
        // single copy of itself, the others to what differs (ids, times).
        assert!(frozen
            .iter()
            .all(|f| Arc::ptr_eq(&f.reference, &frozen[0].reference)));
        let full = ledger
            .get(&id(1))
            .map(|f| rmp_serde::to_vec(&f.state.phase).unwrap_or_default().len())
            .unwrap_or_default();
        for f in &frozen {
            assert!(f.coded.len() * 3 < full, "{} of {full}", f.coded.len());
        }
    }

    #[test]
    fn what_an_instance_keeps_fits_its_allocation_class() {
        // mimalloc's classes around it are 128, 160 and 192 bytes.
        assert!(size_of::<Kept>() <= 160, "{}", size_of::<Kept>());
    }

    mod order {
        use proptest::prelude::*;

        use super::*;

        /// The id's canonical spelling, as intake writes it.
        fn spelled(bits: u128) -> String {
            let hex = format!("{bits:032x}");
            format!(
                "{}-{}-{}-{}-{}",
                &hex[..8],
                &hex[8..12],
                &hex[12..16],
                &hex[16..20],
                &hex[20..]
            )
        }

        fn instance(partition: i32, id_bits: Option<u128>) -> ReplayedInstance {
            let first = LogPosition {
                partition,
                offset: 0,
            };
            let id = id_bits.map_or_else(
                || warrant_authority::quarantine_instance(partition),
                spelled,
            );
            ReplayedInstance {
                partition,
                first,
                partial: false,
                other_partitions: Vec::new(),
                kept: Slot::new(0, first, id, Keep::State).kept,
                id_bits,
            }
        }

        proptest! {
            /// The merge sorts by UUID bits where it can: the order must be
            /// the ids' string order, which `Replay::get` searches by.
            #[test]
            fn instances_sort_as_their_ids_strings_do(
                ids in prop::collection::vec(
                    prop_oneof![
                        any::<u128>().prop_map(Some),
                        // Ids that share long prefixes.
                        (0u128..64).prop_map(|n| Some((n << 64) | 7)),
                        Just(None),
                    ],
                    0..60,
                ),
                partitions in prop::collection::vec(0i32..12, 60),
            ) {
                let mut instances: Vec<ReplayedInstance> = ids
                    .iter()
                    .zip(&partitions)
                    .map(|(bits, partition)| instance(*partition, *bits))
                    .collect();
                let mut expected: Vec<(String, i32)> = instances
                    .iter()
                    .map(|i| (i.instance_id().to_owned(), i.partition))
                    .collect();
                expected.sort();
                expected.dedup();
                instances.sort_unstable_by(ReplayedInstance::by_id);
                let mut sorted: Vec<(String, i32)> = instances
                    .iter()
                    .map(|i| (i.instance_id().to_owned(), i.partition))
                    .collect();
                sorted.dedup();
                prop_assert_eq!(sorted, expected);
            }
        }
    }
}
