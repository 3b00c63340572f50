//! The sled view of the log: instance states, their histories, a status
//! index and the consumed offsets, all in one tree so that one `Batch`
//! commits them together.
//!
//! The view is disposable (docs/operations.md, "Rebuilding a projector"): the log is the truth. A
//! directory that fails to open, carries another format or another topic,
//! or was marked corrupt is wiped and rebuilt from offset 0.
//!
//! Layout (one sled tree; the first byte of a key names its table):
//!
//! | key | value |
//! |---|---|
//! | `~format` | [`FORMAT`] |
//! | `~topic` | the log topic name |
//! | `~owned` | the partitions the view folds, of how many: `6:0,1,2` (absent in a view from before shards, which folded them all, and in a fresh one); see [`Owned`] |
//! | `~corrupt` | present only when a read found bad bytes: rebuild on next start |
//! | `c` status-code | instances with that status, u64 BE (code 0xFF: no proposal) |
//! | `i` status-code instance-id | nothing: every instance is under exactly one status (0xFF: no proposal) |
//! | `o` partition-i32-BE | next offset to consume, i64 BE |
//! | `r` partition-i32-BE first-offset-i64-BE | a run: log records of that partition from one batch (see `runs`) |
//! | `s` instance-id | entries u64 BE, head hash (32 bytes), status code, the positions of its entries (u32 BE length, then `runs::Positions`), then the `InstanceState` (MessagePack) |
//!
//! A history entry is stored as its log record (offset and bytes, exactly
//! as on the log) in its partition's run, and found again through the
//! positions in the instance's state value. Reading refolds them with
//! `warrant_authority::fold` — the code replay runs — and checks the result
//! against the stored head hash, so a served record is replay's record by
//! construction. sled's cost is per key and grows where keys scatter: a
//! batch writes one state per instance it touched (plus two small index
//! keys when its status changed) and a few dozen runs whose keys only grow,
//! whatever the number of events.
//!
//! States are MessagePack (`rmp_serde`, structs as arrays): a change to the
//! serde shape of `InstanceState` or anything in it must bump [`FORMAT`].

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::File;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError, RwLock};

use serde::Serialize;
use warrant_authority::{
    fold, instance_partition, CheckpointDigest, ExecutionRecord, Hash32, HistoryEntry,
    InstanceState, LogEvent, LogPosition, StatusName,
};

use crate::deadlines::{self, DeadlineIndex, Deadlines};
use crate::error::Error;
use crate::paused::{PausedQueue, PAUSED};
use crate::runs::{self, Positions};

/// Bump when anything in the layout or the value encodings changes (or when
/// the codec could decode stored bytes differently, or the fold would route
/// or chain the same records differently): an older view is then rebuilt
/// instead of misread.
///
/// 2: records under keys that are not instance ids go to one quarantine per
/// partition (`quarantine-<partition>`), no longer to one `quarantine` for
/// the whole log; a view of format 1 would keep a stale `quarantine` record
/// in its checkpoint digest.
///
/// 4: counted approvals keep the reviewer's roles and the approval group
/// they count for (envelope v3's approval groups); a stored state of
/// format 3 has neither, and would count its approvals for no group.
///
/// 5: the log records moved from per-instance runs (`h`) to per-partition
/// runs (`r`), the state from the status index (`i`, now value-less) to its
/// own table (`s`), which also keeps the positions of the entries.
pub const FORMAT: &str = "warrant-projector/5";

const META_FORMAT: &[u8] = b"~format";
const META_TOPIC: &[u8] = b"~topic";
const META_OWNED: &[u8] = b"~owned";
const META_CORRUPT: &[u8] = b"~corrupt";
const COUNT: u8 = b'c';
const INDEX: u8 = b'i';
const OFFSET: u8 = b'o';
const RUN: u8 = b'r';
const STATE: u8 = b's';

/// Status code for an instance that has no proposal (yet).
pub(crate) const NO_STATUS: u8 = 0xFF;

/// The stored code of a status. Explicit, so reordering `StatusName` can
/// never silently change what stored bytes mean.
pub(crate) fn status_code(status: Option<StatusName>) -> u8 {
    match status {
        None => NO_STATUS,
        Some(StatusName::AwaitingSignals) => 0,
        Some(StatusName::AwaitingDecision) => 1,
        Some(StatusName::Blocked) => 2,
        Some(StatusName::Authorized) => 3,
        Some(StatusName::Executing) => 4,
        Some(StatusName::Completed) => 5,
        Some(StatusName::Failed) => 6,
        Some(StatusName::Rejected) => 7,
        Some(StatusName::Expired) => 8,
        Some(StatusName::Withdrawn) => 9,
    }
}

fn status_from_code(code: u8) -> Result<Option<StatusName>, Error> {
    if code == NO_STATUS {
        return Ok(None);
    }
    StatusName::ALL
        .into_iter()
        .find(|status| status_code(Some(*status)) == code)
        .map(Some)
        .ok_or_else(|| Error::corrupt(format!("unknown status code {code}")))
}

/// How many instances have each status; index = status code, the last slot
/// counts instances without a proposal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatusCounts(pub [u64; 11]);

impl StatusCounts {
    fn slot(status: Option<StatusName>) -> usize {
        match status_code(status) {
            NO_STATUS => 10,
            code => usize::from(code),
        }
    }

    pub fn get(&self, status: Option<StatusName>) -> u64 {
        self.0[Self::slot(status)]
    }

    pub(crate) fn add(&mut self, status: Option<StatusName>) {
        self.0[Self::slot(status)] += 1;
    }

    pub(crate) fn remove(&mut self, status: Option<StatusName>) {
        let slot = &mut self.0[Self::slot(status)];
        *slot = slot.saturating_sub(1);
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// `(status, count)` for every status, `None` last.
    pub fn iter(&self) -> impl Iterator<Item = (Option<StatusName>, u64)> + '_ {
        StatusName::ALL
            .into_iter()
            .map(Some)
            .chain(std::iter::once(None))
            .map(|status| (status, self.get(status)))
    }
}

/// One line of `GET /v1/instances`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstanceSummary {
    pub instance_id: String,
    pub status: Option<StatusName>,
    pub head_hash: Hash32,
    pub entries: u64,
}

/// A page of instances; `next` is the cursor for the following page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Page {
    pub instances: Vec<InstanceSummary>,
    pub next: Option<String>,
}

/// `GET /v1/checkpoint`: what the view has consumed and a digest of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Checkpoint {
    pub topic: String,
    /// Next offset to consume, per partition.
    pub partitions: BTreeMap<i32, i64>,
    /// The partitions this view folds (all of them, unless the projector
    /// is one shard of several), once the fold has resolved them against
    /// the log; a partition owned but still empty has no offset yet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owned: Option<BTreeSet<i32>>,
    /// How many partitions the log had when they were resolved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_partitions: Option<i32>,
    pub instances: u64,
    /// [`warrant_authority::checkpoint_digest`] over the head of every
    /// instance in the view (in its owned partitions only, for a shard).
    pub digest: Hash32,
}

/// The partitions a view folds, of a log of `log_partitions`: every one
/// for a lone projector, its share for one shard of several (`--partitions`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Owned {
    pub log_partitions: i32,
    pub partitions: BTreeSet<i32>,
}

impl Owned {
    fn encode(&self) -> String {
        let partitions: Vec<String> = self.partitions.iter().map(i32::to_string).collect();
        format!("{}:{}", self.log_partitions, partitions.join(","))
    }

    fn decode(bytes: &[u8]) -> Option<Owned> {
        let text = std::str::from_utf8(bytes).ok()?;
        let (count, list) = text.split_once(':')?;
        let log_partitions: i32 = count.parse().ok().filter(|n| *n > 0)?;
        let partitions = list
            .split(',')
            .map(|p| {
                p.parse::<i32>()
                    .ok()
                    .filter(|p| (0..log_partitions).contains(p))
            })
            .collect::<Option<BTreeSet<i32>>>()?;
        (!partitions.is_empty()).then_some(Owned {
            log_partitions,
            partitions,
        })
    }
}

/// What [`Store::open`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// No view existed: start from the beginning of the log.
    Fresh,
    /// A compatible view: resume from its offsets.
    Resumed,
    /// The old view was unusable and was wiped; start from the beginning.
    Rebuilt { reason: String },
}

/// Settings of the sled view.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// sled's page cache, in bytes.
    pub cache_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            cache_bytes: 128 * 1024 * 1024,
        }
    }
}

/// The sled view, shared by the commit thread (the only writer) and HTTP.
#[derive(Debug)]
pub struct Store {
    /// `None` only while [`Store::reopen`] could not open the directory
    /// again: every read then fails with [`Error::Unavailable`].
    db: RwLock<Option<sled::Db>>,
    options: StoreOptions,
    topic: String,
    sled_dir: PathBuf,
    /// Held for writing while a batch is applied, for reading by scans that
    /// must see whole batches (sled's own lock covers single gets only).
    gate: RwLock<()>,
    /// Sequence number of the last applied batch.
    applied: AtomicU64,
    checkpoint: Mutex<Option<(u64, Checkpoint)>>,
    /// One checkpoint scan at a time.
    checkpointing: Mutex<()>,
    /// While a checkpoint scans without the gate: every instance a batch
    /// has written since the scan began (see [`Store::checkpoint`]).
    written_during_scan: Mutex<Option<HashSet<String>>>,
    /// Bumped whenever the handle is replaced or the view emptied: a scan
    /// that ran across one is thrown away.
    generation: AtomicU64,
    /// Flushes still to fail as if the disk were full (tests).
    #[cfg(test)]
    failing_flushes: AtomicU64,
    /// Batch applies still to fail as if the disk were full (tests).
    #[cfg(test)]
    failing_applies: AtomicU64,
    /// Run once in the middle of the next checkpoint scan (tests).
    #[cfg(test)]
    during_scan: DuringScan,
    /// The deadline index as of the last durable batch (see
    /// [`crate::deadlines`]): kept here, beside the view it indexes, so
    /// HTTP reads it where it reads the view.
    deadlines: Deadlines,
    /// Keeps a second projector off this directory.
    _lock: File,
}

/// What the paused and authorized instances of the view are waiting for:
/// the paused queue (for the oldest-wait metric) and the deadline index.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Waiting {
    pub paused: PausedQueue,
    pub deadlines: DeadlineIndex,
}

impl Store {
    /// Open (or create) the view under `data_dir` for `topic`; an unusable
    /// view is wiped and rebuilt, with a warning that says why.
    pub fn open(
        data_dir: &Path,
        topic: &str,
        options: StoreOptions,
    ) -> Result<(Store, Opened), Error> {
        let data_dir_error = |source| Error::DataDir {
            path: data_dir.to_owned(),
            source,
        };
        std::fs::create_dir_all(data_dir).map_err(data_dir_error)?;
        let lock_path = data_dir.join("projector.lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(data_dir_error)?;
        lock.try_lock().map_err(|source| Error::Locked {
            path: data_dir.to_owned(),
            source,
        })?;
        let sled_dir = data_dir.join("sled");
        let existed = sled_dir.exists();

        let (db, opened) = match open_sled(&sled_dir, &options) {
            // Bad bytes under the meta keys: as unusable as a failed open.
            Ok(db) => match check_meta(&db, topic, true).or_else(|error| match error {
                Error::Corrupt { what } => Ok(Meta::Incompatible(what)),
                error => Err(error),
            })? {
                Meta::Compatible => (db, Opened::Resumed),
                Meta::Empty => (
                    db,
                    if existed {
                        Opened::Rebuilt {
                            reason: "the view was empty".to_owned(),
                        }
                    } else {
                        Opened::Fresh
                    },
                ),
                Meta::Incompatible(reason) => {
                    drop(db);
                    (
                        wipe_and_open(&sled_dir, &options, &reason)?,
                        Opened::Rebuilt { reason },
                    )
                }
            },
            Err(OpenFailure::Storage(error)) => {
                return Err(Error::Open {
                    path: sled_dir,
                    source: sled::Error::Io(error),
                })
            }
            Err(OpenFailure::Unusable(reason)) => (
                wipe_and_open(&sled_dir, &options, &reason)?,
                Opened::Rebuilt { reason },
            ),
        };
        if opened != Opened::Resumed {
            write_meta(&db, topic, None)?;
        }
        let store = Store {
            db: RwLock::new(Some(db)),
            options,
            topic: topic.to_owned(),
            sled_dir,
            gate: RwLock::new(()),
            applied: AtomicU64::new(0),
            checkpoint: Mutex::new(None),
            checkpointing: Mutex::new(()),
            written_during_scan: Mutex::new(None),
            generation: AtomicU64::new(0),
            #[cfg(test)]
            failing_flushes: AtomicU64::new(0),
            #[cfg(test)]
            failing_applies: AtomicU64::new(0),
            #[cfg(test)]
            during_scan: DuringScan::default(),
            deadlines: Deadlines::default(),
            _lock: lock,
        };
        Ok((store, opened))
    }

    /// Empty the view in place (the log changed under it, e.g. the topic was
    /// recreated, or the projector now owns other partitions): the next
    /// fold starts from offset 0. `owned`: what the emptied view will fold.
    pub fn reset(&self, reason: &str, owned: Option<&Owned>) -> Result<(), Error> {
        tracing::warn!(path = %self.sled_dir.display(), reason, "sled view does not match the log; clearing it and rebuilding from offset 0");
        let _gate = self.gate.write().unwrap_or_else(PoisonError::into_inner);
        let db = self.db()?;
        self.generation.fetch_add(1, Ordering::AcqRel);
        db.clear().map_err(Error::sled("clear the view"))?;
        write_meta(&db, &self.topic, owned)?;
        db.flush().map_err(Error::sled("flush"))?;
        *self
            .checkpoint
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
        // Nothing is waiting on a deadline in an empty view.
        self.deadlines.replace(DeadlineIndex::default());
        Ok(())
    }

    /// Record that stored bytes were found corrupt, so the next start
    /// rebuilds the view instead of tripping over them again.
    pub fn mark_corrupt(&self, what: &str) {
        tracing::error!(path = %self.sled_dir.display(), what, "sled view is corrupt; it will be rebuilt on the next start");
        let marked = self.db().and_then(|db| {
            db.insert(META_CORRUPT, what.as_bytes())
                .and_then(|_| db.flush())
                .map_err(Error::sled("mark the view corrupt"))
        });
        if let Err(error) = marked {
            tracing::error!(error = %error, "cannot mark the sled view corrupt");
        }
    }

    /// The next offset to consume per partition, as last committed.
    pub fn offsets(&self) -> Result<BTreeMap<i32, i64>, Error> {
        offsets_in(&self.db()?)
    }

    /// The partitions the view folds, if recorded (see [`Owned`]).
    pub fn owned(&self) -> Result<Option<Owned>, Error> {
        owned_in(&self.db()?)
    }

    /// Record the partitions the view folds from now on. The caller makes
    /// sure the view holds nothing of any other (see [`Store::reset`]).
    pub fn set_owned(&self, owned: &Owned) -> Result<(), Error> {
        let _gate = self.gate.write().unwrap_or_else(PoisonError::into_inner);
        let db = self.db()?;
        self.generation.fetch_add(1, Ordering::AcqRel);
        db.insert(META_OWNED, owned.encode().as_bytes())
            .map_err(Error::sled("write meta"))?;
        db.flush().map_err(Error::sled("flush"))?;
        *self
            .checkpoint
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
        Ok(())
    }

    /// The partition of `instance_id` and what the view owns, when the view
    /// is a shard that does not own that partition and holds no such
    /// instance: a request for it was sent to the wrong shard. `None` when
    /// the view owns it, holds it anyway, or has not resolved its
    /// partitions yet.
    pub fn misdirected(&self, instance_id: &str) -> Result<Option<(i32, Owned)>, Error> {
        let Some(owned) = self.owned()? else {
            return Ok(None);
        };
        let Some(partition) = instance_partition(instance_id, owned.log_partitions) else {
            return Ok(None);
        };
        if owned.partitions.contains(&partition) || self.state(instance_id)?.is_some() {
            return Ok(None);
        }
        Ok(Some((partition, owned)))
    }

    /// How many instances have each status, as last committed.
    pub fn status_counts(&self) -> Result<StatusCounts, Error> {
        let mut counts = StatusCounts::default();
        for item in self.db()?.scan_prefix([COUNT]) {
            let (key, value) = item.map_err(Error::sled("read counts"))?;
            let code = key
                .get(1)
                .copied()
                .ok_or_else(|| Error::corrupt("count key"))?;
            let status = status_from_code(code)?;
            counts.0[StatusCounts::slot(status)] = decode_u64(&value, "count")?;
        }
        Ok(counts)
    }

    /// The paused instances of the view, by when they were proposed, and
    /// the deadline of every paused and authorized one. Reads every paused
    /// and authorized state: once, when folding starts.
    pub fn waiting(&self) -> Result<Waiting, Error> {
        let mut waiting = Waiting::default();
        let db = self.db()?;
        for status in PAUSED.into_iter().chain([StatusName::Authorized]) {
            for item in db.scan_prefix([INDEX, status_code(Some(status))]) {
                let (key, _) = item.map_err(Error::sled("read paused instances"))?;
                let instance_id = id_from_key(key.get(2..).unwrap_or_default())?;
                let Some(stored) = stored_in(&db, &instance_id)? else {
                    return Err(Error::corrupt(format!(
                        "{instance_id} is in the index but has no state"
                    )));
                };
                if let Some(instance) = stored.state.instance() {
                    waiting.paused.moved(
                        &instance_id,
                        instance.proposal.proposed_at,
                        None,
                        Some(status),
                    );
                }
                waiting
                    .deadlines
                    .moved(&instance_id, None, deadlines::watched(&stored.state));
            }
        }
        Ok(waiting)
    }

    /// The deadline index as of the last durable batch.
    pub fn deadlines(&self) -> &Deadlines {
        &self.deadlines
    }

    /// The summary of one instance (status, entries, head) from the header
    /// of its state value, without decoding the state.
    pub fn summary(&self, instance_id: &str) -> Result<Option<InstanceSummary>, Error> {
        self.db()?
            .get(state_key(instance_id))
            .map_err(Error::sled("read a summary"))?
            .map(|value| decode_summary(instance_id.to_owned(), &value))
            .transpose()
    }

    /// Call `each` with the id of every instance in the view (any order).
    pub fn for_each_instance(&self, mut each: impl FnMut(&[u8])) -> Result<(), Error> {
        for item in self.db()?.scan_prefix([INDEX]) {
            let (key, _) = item.map_err(Error::sled("read the index"))?;
            each(key.get(2..).unwrap_or_default());
        }
        Ok(())
    }

    /// The stored state of one instance.
    pub fn state(&self, instance_id: &str) -> Result<Option<InstanceState>, Error> {
        Ok(self.stored(instance_id)?.map(|stored| stored.state))
    }

    /// The stored state of one instance and the positions of its entries:
    /// what the fold continues from.
    pub(crate) fn stored(&self, instance_id: &str) -> Result<Option<Stored>, Error> {
        stored_in(&self.db()?, instance_id)
    }

    /// The state and full history of one instance, consistent with each
    /// other: entries committed after the state was read are left out.
    ///
    /// The entries are refolded from their stored log records with
    /// `warrant_authority::fold`, exactly as replay folds them, and the
    /// result must end on the stored head hash; anything else is corruption
    /// (or a fold that changed under a view built by an older one).
    pub fn history(
        &self,
        instance_id: &str,
    ) -> Result<Option<(InstanceState, Vec<HistoryEntry>)>, Error> {
        // The state and its runs from one handle in one hold of the gate: a
        // reopen (which takes the gate) can never come between them, so a
        // mismatch is in the bytes, never a state read on the old handle
        // and runs read on the new one.
        let _gate = self.gate.read().unwrap_or_else(PoisonError::into_inner);
        let db = self.db()?;
        let Some(Stored {
            state: stored,
            entries_at,
            ..
        }) = stored_in(&db, instance_id)?
        else {
            return Ok(None);
        };
        let corrupt = |what: String| Error::corrupt(format!("history of {instance_id}: {what}"));
        // Entries of one instance mostly share runs: each run is read once.
        let mut runs: Vec<(i32, sled::IVec)> = Vec::new();
        let mut found: Vec<(LogPosition, usize, (usize, usize))> =
            Vec::with_capacity(entries_at.len());
        for (number, position) in entries_at.iter().enumerate() {
            let in_last = match runs.last() {
                Some((partition, run)) if *partition == position.partition => {
                    runs::find_entry(run, position.offset)
                        .map_err(|what| corrupt(format!("entry {}: {what}", number + 1)))?
                }
                _ => None,
            };
            let range = match in_last {
                Some(range) => range,
                None => {
                    let (_, run) = db
                        .range(
                            run_key(position.partition, 0)
                                ..=run_key(position.partition, position.offset),
                        )
                        .next_back()
                        .transpose()
                        .map_err(Error::sled("read a history"))?
                        .ok_or_else(|| {
                            corrupt(format!(
                                "no run holds entry {} (partition {}, offset {})",
                                number + 1,
                                position.partition,
                                position.offset
                            ))
                        })?;
                    let range = runs::find_entry(&run, position.offset)
                        .map_err(|what| corrupt(format!("entry {}: {what}", number + 1)))?
                        .ok_or_else(|| {
                            corrupt(format!(
                                "no run holds entry {} (partition {}, offset {})",
                                number + 1,
                                position.partition,
                                position.offset
                            ))
                        })?;
                    runs.push((position.partition, run));
                    range
                }
            };
            found.push((*position, runs.len() - 1, range));
        }
        drop(db);
        drop(_gate);
        let (state, history) = fold(
            instance_id,
            found.iter().map(|(position, run, (start, end))| {
                LogEvent::decode(*position, &runs[*run].1[*start..*end])
            }),
        );
        if state.head != stored.head {
            return Err(corrupt(format!(
                "refolding gives head {} but the view holds {}",
                state.head, stored.head
            )));
        }
        Ok(Some((state, history)))
    }

    /// The execution record of one instance (docs/contract.md §7).
    pub fn record(&self, instance_id: &str) -> Result<Option<ExecutionRecord>, Error> {
        Ok(self
            .history(instance_id)?
            .map(|(state, history)| ExecutionRecord::build(&state, &history)))
    }

    /// Instances in id order, after the cursor, optionally with one status.
    pub fn list(
        &self,
        status: Option<StatusName>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page, Error> {
        let _gate = self.gate.read().unwrap_or_else(PoisonError::into_inner);
        let db = self.db()?;
        let mut instances = Vec::with_capacity(limit.min(1024));
        let mut more = false;
        match status {
            // The state table is in id order already.
            None => {
                for item in scan_after(&db, vec![STATE], after) {
                    if instances.len() == limit {
                        more = true;
                        break;
                    }
                    let (key, value) = item.map_err(Error::sled("list instances"))?;
                    let instance_id = id_from_key(key.get(1..).unwrap_or_default())?;
                    instances.push(decode_summary(instance_id, &value)?);
                }
            }
            Some(status) => {
                for item in scan_after(&db, vec![INDEX, status_code(Some(status))], after) {
                    if instances.len() == limit {
                        more = true;
                        break;
                    }
                    let (key, _) = item.map_err(Error::sled("list instances"))?;
                    let instance_id = id_from_key(key.get(2..).unwrap_or_default())?;
                    let value = db
                        .get(state_key(&instance_id))
                        .map_err(Error::sled("list instances"))?
                        .ok_or_else(|| {
                            Error::corrupt(format!(
                                "{instance_id} is in the index but has no state"
                            ))
                        })?;
                    instances.push(decode_summary(instance_id, &value)?);
                }
            }
        }
        let next = if more {
            instances.last().map(|i| i.instance_id.clone())
        } else {
            None
        };
        Ok(Page { instances, next })
    }

    /// Offsets, instance count and the digest over all heads, as of one
    /// committed batch. Recomputed only after a new batch was committed.
    ///
    /// The scan of every state does not hold the gate, so batches keep
    /// being applied meanwhile (a million instances take seconds to scan).
    /// [`Store::apply`] notes the instances each batch writes while a scan
    /// runs; once the scan is done, those few are read again under the
    /// gate, with the offsets, so the result is exactly the view as of the
    /// last batch applied, as if the whole scan had held the gate.
    pub fn checkpoint(&self) -> Result<Checkpoint, Error> {
        let _one = self
            .checkpointing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let began = {
            let _gate = self.gate.read().unwrap_or_else(PoisonError::into_inner);
            let applied = self.applied.load(Ordering::Acquire);
            if let Some((at, checkpoint)) = &*self
                .checkpoint
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
            {
                if *at == applied {
                    return Ok(checkpoint.clone());
                }
            }
            *self
                .written_during_scan
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(HashSet::new());
            self.generation.load(Ordering::Acquire)
        };
        let scanned = self.scan_heads();
        let _gate = self.gate.read().unwrap_or_else(PoisonError::into_inner);
        let written = self
            .written_during_scan
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .unwrap_or_default();
        let mut heads = scanned?;
        if self.generation.load(Ordering::Acquire) != began {
            // The handle was replaced or the view emptied under the scan.
            return Err(Error::Unavailable);
        }
        let db = self.db()?;
        for instance_id in written {
            let value = db
                .get(state_key(&instance_id))
                .map_err(Error::sled("read a state"))?
                .ok_or_else(|| Error::corrupt(format!("a batch wrote {instance_id}, not found")))?;
            let head = decode_summary(instance_id, &value)?;
            match heads.binary_search_by(|(id, _)| id.as_str().cmp(&head.instance_id)) {
                Ok(at) => heads[at].1 = head.head_hash,
                Err(at) => heads.insert(at, (head.instance_id, head.head_hash)),
            }
        }
        let mut digest = CheckpointDigest::default();
        for (instance_id, head) in &heads {
            digest.push(instance_id, head);
        }
        let owned = owned_in(&db)?;
        let checkpoint = Checkpoint {
            topic: self.topic.clone(),
            partitions: offsets_in(&db)?,
            log_partitions: owned.as_ref().map(|o| o.log_partitions),
            owned: owned.map(|o| o.partitions),
            instances: heads.len() as u64,
            digest: digest.finish(),
        };
        *self
            .checkpoint
            .lock()
            .unwrap_or_else(PoisonError::into_inner) =
            Some((self.applied.load(Ordering::Acquire), checkpoint.clone()));
        Ok(checkpoint)
    }

    /// Every instance's id and head, in id order, read without the gate.
    fn scan_heads(&self) -> Result<Vec<(String, Hash32)>, Error> {
        let db = self.db()?;
        let mut heads = Vec::new();
        for item in db.scan_prefix([STATE]) {
            let (key, value) = item.map_err(Error::sled("read the states"))?;
            let summary = decode_summary(id_from_key(key.get(1..).unwrap_or_default())?, &value)?;
            heads.push((summary.instance_id, summary.head_hash));
            #[cfg(test)]
            if heads.len() == 1 {
                if let Some(during) = self
                    .during_scan
                    .0
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take()
                {
                    during();
                }
            }
        }
        Ok(heads)
    }

    /// Apply one sealed batch atomically (not yet durable: see [`Store::flush`]).
    /// `written`: the instances whose states it writes.
    pub fn apply(
        &self,
        batch: sled::Batch,
        seq: u64,
        written: &[(String, u64)],
    ) -> Result<(), Error> {
        let _gate = self.gate.write().unwrap_or_else(PoisonError::into_inner);
        #[cfg(test)]
        if self
            .failing_applies
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(Error::Sled {
                op: "apply a batch",
                source: sled::Error::Io(std::io::Error::from(std::io::ErrorKind::StorageFull)),
            });
        }
        self.db()?
            .apply_batch(batch)
            .map_err(Error::sled("apply a batch"))?;
        // Noted only once applied, still under the gate: a batch that failed
        // wrote nothing, and a scan that re-read its new instances would find
        // no state and call the view corrupt. No scan can take the notes
        // between the apply and this (it takes them under the gate).
        if let Some(noted) = self
            .written_during_scan
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
        {
            noted.extend(written.iter().map(|(id, _)| id.clone()));
        }
        self.applied.store(seq, Ordering::Release);
        Ok(())
    }

    /// Make every applied batch durable.
    pub fn flush(&self) -> Result<usize, Error> {
        flush_db(&self.db()?, self)
    }

    /// The open sled handle. A clone (sled's handles are shared): holding
    /// one only delays [`Store::reopen`], whose open then retries.
    pub(crate) fn db(&self) -> Result<sled::Db, Error> {
        self.db
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or(Error::Unavailable)
    }

    /// Close sled and open the directory again (see [`Store::reopen_with`]),
    /// with no batch to write again.
    pub fn reopen(&self) -> Result<(), Error> {
        self.reopen_with(None)
    }

    /// Close sled and open the directory again, after a write or flush
    /// failed (a full disk). sled remembers the first such error and fails
    /// every later write with it, whatever the disk does next, so retrying
    /// on the same handle can never succeed; a new handle recovers the view
    /// as of its last flushed batch.
    ///
    /// The batch that failed (`kept`) is applied and flushed on the new
    /// handle before anyone else may use it, in the same hold of the gate:
    /// nothing ever reads the reopened view without that batch, though the
    /// old handle served it (in memory) and the fold and HTTP may already
    /// have built on it — the fold's cache may have let go of its states, a
    /// record waiter may have been told about it. Until the new handle is
    /// exposed, reads fail with [`Error::Unavailable`] (503, and the fold
    /// waits), never with a view one batch behind.
    pub(crate) fn reopen_with(&self, kept: Option<Kept<'_>>) -> Result<(), Error> {
        // No read may run across the swap.
        let _gate = self.gate.write().unwrap_or_else(PoisonError::into_inner);
        let mut db = self.db.write().unwrap_or_else(PoisonError::into_inner);
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Some(old) = db.take() {
            // sled flushes (and may panic on a failed fsync) when its last
            // handle drops; nothing it could still write matters: the batch
            // in hand is applied again below.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(old)));
        }
        *self
            .checkpoint
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
        let reopened =
            open_sled(&self.sled_dir, &self.options).map_err(|failure| match failure {
                // The filesystem refused: a full disk passes (the caller
                // tries again); a failing one stops the projector, and the
                // view is not wiped for it.
                OpenFailure::Storage(error) => Error::Open {
                    path: self.sled_dir.clone(),
                    source: sled::Error::Io(error),
                },
                // sled will not take this directory back: only a rebuild helps,
                // which the next start does (it cannot open it either).
                OpenFailure::Unusable(reason) => {
                    Error::corrupt(format!("the view cannot be reopened: {reason}"))
                }
            })?;
        match self.ready_reopened(&reopened, kept) {
            Ok(()) => {
                *db = Some(reopened);
                Ok(())
            }
            Err(error) => {
                // Not exposed. A handle that failed a write is as spent as
                // the last one (and may panic flushing as it drops).
                let _ =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(reopened)));
                Err(error)
            }
        }
    }

    /// Check a reopened handle and write the kept batch on it.
    fn ready_reopened(&self, reopened: &sled::Db, kept: Option<Kept<'_>>) -> Result<(), Error> {
        // Only the meta keys: the offsets check below is what tells a view
        // that lost flushed batches, without scanning the whole index under
        // the gate.
        match check_meta(reopened, &self.topic, false)? {
            Meta::Compatible => {}
            Meta::Empty => return Err(Error::corrupt("the view was empty when reopened")),
            Meta::Incompatible(reason) => {
                return Err(Error::corrupt(format!("when reopened, {reason}")))
            }
        }
        let Some(kept) = kept else {
            return Ok(());
        };
        // The reopened view holds the last flushed batch, or this one too
        // (the old handle's drop flushed it). Anything else is not this
        // view: marked, so the next start rebuilds it rather than resuming
        // from offsets it never had.
        let now = offsets_in(reopened)?;
        if kept.before.is_some_and(|before| *before != now) && now != *kept.after {
            let what = format!(
                "after reopening, the view's offsets {now:?} are neither the last flushed batch's nor this one's"
            );
            let _ = reopened
                .insert(META_CORRUPT, what.as_bytes())
                .and_then(|_| reopened.flush());
            return Err(Error::corrupt(what));
        }
        // Setting absolute values, atomically: applying it again to a view
        // that already has it changes nothing.
        reopened
            .apply_batch(kept.batch)
            .map_err(Error::sled("apply a batch"))?;
        flush_db(reopened, self)?;
        self.applied.store(kept.seq, Ordering::Release);
        Ok(())
    }

    /// Sequence number of the last applied batch.
    pub fn applied_seq(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    /// Close the handle as a reopen does while it swaps (tests): reads are
    /// [`Error::Unavailable`] from here on.
    #[cfg(test)]
    pub(crate) fn close_for_tests(&self) {
        *self.db.write().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// Make the next `n` flushes fail with a full disk (tests).
    #[cfg(test)]
    pub(crate) fn fail_flushes(&self, n: u64) {
        self.failing_flushes.store(n, Ordering::Release);
    }

    /// Make the next `n` batch applies fail with a full disk (tests).
    #[cfg(test)]
    pub(crate) fn fail_applies(&self, n: u64) {
        self.failing_applies.store(n, Ordering::Release);
    }

    pub fn sled_dir(&self) -> &Path {
        &self.sled_dir
    }

    /// The log topic this view folds.
    pub fn topic(&self) -> &str {
        &self.topic
    }
}

/// [`Store::offsets`] on one handle.
fn offsets_in(db: &sled::Db) -> Result<BTreeMap<i32, i64>, Error> {
    let mut offsets = BTreeMap::new();
    for item in db.scan_prefix([OFFSET]) {
        let (key, value) = item.map_err(Error::sled("read offsets"))?;
        let partition = key
            .get(1..)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(i32::from_be_bytes)
            .ok_or_else(|| Error::corrupt("offset key"))?;
        offsets.insert(partition, decode_i64(&value, "offset")?);
    }
    Ok(offsets)
}

/// [`Store::owned`] on one handle.
fn owned_in(db: &sled::Db) -> Result<Option<Owned>, Error> {
    match db.get(META_OWNED).map_err(Error::sled("read meta"))? {
        None => Ok(None),
        Some(bytes) => Owned::decode(&bytes)
            .map(Some)
            .ok_or_else(|| Error::corrupt("the owned partitions do not decode")),
    }
}

#[cfg(test)]
#[derive(Default)]
struct DuringScan(Mutex<Option<Box<dyn FnOnce() + Send>>>);

#[cfg(test)]
impl std::fmt::Debug for DuringScan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DuringScan")
    }
}

/// [`Store::stored`] on one handle.
fn stored_in(db: &sled::Db, instance_id: &str) -> Result<Option<Stored>, Error> {
    db.get(state_key(instance_id))
        .map_err(Error::sled("read a state"))?
        .map(|value| decode_stored(instance_id, &value))
        .transpose()
}

/// The batch a failed write leaves in hand, for [`Store::reopen_with`].
pub(crate) struct Kept<'a> {
    pub batch: sled::Batch,
    pub seq: u64,
    /// Offsets of the last flushed batch, when known.
    pub before: Option<&'a BTreeMap<i32, i64>>,
    /// Offsets once this batch is written.
    pub after: &'a BTreeMap<i32, i64>,
}

/// Flush `db`; in tests, fail the way a full disk does while
/// [`Store::fail_flushes`] says so.
fn flush_db(db: &sled::Db, store: &Store) -> Result<usize, Error> {
    #[cfg(test)]
    if store
        .failing_flushes
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
        .is_ok()
    {
        return Err(Error::Sled {
            op: "flush",
            source: sled::Error::Io(std::io::Error::from(std::io::ErrorKind::StorageFull)),
        });
    }
    #[cfg(not(test))]
    let _ = store;
    db.flush().map_err(Error::sled("flush"))
}

enum Meta {
    Compatible,
    Empty,
    Incompatible(String),
}

/// Why sled could not open a directory.
enum OpenFailure {
    /// The filesystem refused (full, read-only, I/O error): the view may be
    /// fine, and wiping it would throw away a good view for a disk problem.
    Storage(std::io::Error),
    /// The directory itself is unusable (corrupt, not a sled view).
    Unusable(String),
}

impl OpenFailure {
    fn reason(self) -> String {
        match self {
            OpenFailure::Storage(error) => format!("the filesystem refused: {error}"),
            OpenFailure::Unusable(reason) => reason,
        }
    }
}

fn open_sled(dir: &Path, options: &StoreOptions) -> Result<sled::Db, OpenFailure> {
    remove_unfinished_snapshots(dir)?;
    let config = sled::Config::new()
        .path(dir)
        .cache_capacity(options.cache_bytes)
        .mode(sled::Mode::HighThroughput)
        // Every batch is flushed explicitly before its progress is reported.
        .flush_every_ms(None);
    // sled 0.34 has been seen to panic, not fail, on a damaged directory; a
    // panic here means "unusable view", which the log can rebuild.
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| config.open())) {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(sled::Error::Io(error))) if is_storage_failure(&error) => {
            Err(OpenFailure::Storage(error))
        }
        // sled's own lock on its file: a handle of the previous open is still
        // alive (a read in flight during a reopen). It passes; the directory
        // is fine.
        Ok(Err(sled::Error::Io(error))) if error.to_string().contains("could not acquire lock") => {
            Err(OpenFailure::Storage(std::io::Error::new(
                std::io::ErrorKind::WouldBlock,
                format!("the previous sled handle is still in use: {error}"),
            )))
        }
        Ok(Err(error)) => Err(OpenFailure::Unusable(format!(
            "sled cannot open it: {error}"
        ))),
        Err(_) => Err(OpenFailure::Unusable(
            "sled panicked while opening it".to_owned(),
        )),
    }
}

/// sled 0.34 writes a snapshot to `snap.<lsn>.generating` and renames it
/// to `snap.<lsn>` only once it is complete and synced, but when it opens a
/// directory it reads the newest `snap.*` file, unfinished ones included: a
/// snapshot write cut short (a full disk, a kill) leaves a directory sled
/// refuses for good ("Read corrupted data"), though the log and the last
/// complete snapshot are intact. An unfinished snapshot is never valid by
/// sled's own protocol, so removing it before opening is what sled would
/// have needed to do; sled then recovers from the previous snapshot and the
/// log.
fn remove_unfinished_snapshots(dir: &Path) -> Result<(), OpenFailure> {
    let storage = |error: std::io::Error| {
        OpenFailure::Storage(std::io::Error::new(
            error.kind(),
            format!("cannot clear unfinished sled snapshots: {error}"),
        ))
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(storage(error)),
    };
    for entry in entries {
        let path = entry.map_err(storage)?.path();
        let unfinished = path
            .file_name()
            .and_then(|name| name.to_str())
            .is_some_and(|name| name.starts_with("snap.") && name.ends_with(".generating"));
        if unfinished {
            tracing::warn!(path = %path.display(), "removing an unfinished sled snapshot");
            std::fs::remove_file(&path).map_err(storage)?;
        }
    }
    Ok(())
}

/// A full filesystem or an exhausted quota: the one disk failure that
/// passes by itself (once space is freed), so the only one worth waiting
/// out. A read-only filesystem (EROFS) is not: Linux remounts a filesystem
/// read-only after errors, and it stays so until someone acts; like EIO it
/// stops the projector with the error, whose restart then finds the disk
/// as it is.
pub(crate) fn is_out_of_space(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        error.kind(),
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded
    ) || matches!(error.raw_os_error(), Some(28 | 122)) // ENOSPC, EDQUOT
}

/// A reopen that met sled's lock held by a handle of the previous open (a
/// read still in flight): it passes when that read ends.
pub(crate) fn is_handle_busy(error: &std::io::Error) -> bool {
    error.kind() == std::io::ErrorKind::WouldBlock
}

/// Errors of the filesystem rather than of the bytes in it: a view that
/// fails to open with one is not wiped (the view may be fine).
pub(crate) fn is_storage_failure(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        error.kind(),
        ErrorKind::StorageFull
            | ErrorKind::QuotaExceeded
            | ErrorKind::ReadOnlyFilesystem
            | ErrorKind::PermissionDenied
    ) || matches!(error.raw_os_error(), Some(5 | 28 | 122)) // EIO, ENOSPC, EDQUOT
}

fn wipe_and_open(dir: &Path, options: &StoreOptions, reason: &str) -> Result<sled::Db, Error> {
    tracing::warn!(path = %dir.display(), reason, "sled view is unusable; wiping it and rebuilding from offset 0");
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|source| Error::DataDir {
            path: dir.to_owned(),
            source,
        })?;
    }
    open_sled(dir, options).map_err(|failure| Error::Open {
        path: dir.to_owned(),
        source: sled::Error::Unsupported(failure.reason()),
    })
}

/// Whether `db` is a view of this projector's format and topic; with
/// `full`, also whether its counts, index and offsets agree (a scan of the
/// whole index: at start only).
fn check_meta(db: &sled::Db, topic: &str, full: bool) -> Result<Meta, Error> {
    let get = |key: &[u8]| db.get(key).map_err(Error::sled("read meta"));
    if let Some(what) = get(META_CORRUPT)? {
        return Ok(Meta::Incompatible(format!(
            "it was marked corrupt ({})",
            String::from_utf8_lossy(&what)
        )));
    }
    let Some(format) = get(META_FORMAT)? else {
        return Ok(if db.is_empty() {
            Meta::Empty
        } else {
            Meta::Incompatible("it has no format marker".to_owned())
        });
    };
    if format.as_ref() != FORMAT.as_bytes() {
        return Ok(Meta::Incompatible(format!(
            "its format is {:?}, this projector writes {FORMAT:?}",
            String::from_utf8_lossy(&format)
        )));
    }
    match get(META_TOPIC)? {
        Some(stored) if stored.as_ref() == topic.as_bytes() => {}
        stored => {
            return Ok(Meta::Incompatible(format!(
                "it was built from topic {:?}, not {topic:?}",
                stored.map(|s| String::from_utf8_lossy(&s).into_owned())
            )))
        }
    }
    if get(META_OWNED)?.is_some_and(|owned| Owned::decode(&owned).is_none()) {
        return Ok(Meta::Incompatible(
            "its owned partitions do not decode".to_owned(),
        ));
    }
    // The few keys everything else rests on must decode.
    for item in db.scan_prefix([OFFSET]).chain(db.scan_prefix([COUNT])) {
        let (key, value) = item.map_err(Error::sled("read meta"))?;
        if key.len() != if key[0] == OFFSET { 5 } else { 2 } || value.len() != 8 {
            return Ok(Meta::Incompatible(
                "its offsets or counts do not decode".to_owned(),
            ));
        }
    }
    if !full {
        return Ok(Meta::Compatible);
    }
    // Every batch writes states, index, counts and offsets together, so in
    // a view sled recovered whole they agree. One that lost keys (sled
    // returning less than was flushed, which it did with truncated files)
    // must not resume: with its offsets gone it would fold old events
    // again, with index entries gone its checkpoint would be wrong.
    let mut indexed: BTreeMap<u8, u64> = BTreeMap::new();
    for item in db.scan_prefix([INDEX]) {
        let (key, _) = item.map_err(Error::sled("read the index"))?;
        *indexed
            .entry(key.get(1).copied().unwrap_or(NO_STATUS))
            .or_default() += 1;
    }
    let mut counted: BTreeMap<u8, u64> = BTreeMap::new();
    for item in db.scan_prefix([COUNT]) {
        let (key, value) = item.map_err(Error::sled("read counts"))?;
        let count = decode_u64(&value, "count")?;
        if count > 0 {
            counted.insert(key[1], count);
        }
    }
    if indexed != counted {
        return Ok(Meta::Incompatible(format!(
            "its status counts {counted:?} do not match its index {indexed:?}"
        )));
    }
    let mut states = 0u64;
    for item in db.scan_prefix([STATE]) {
        item.map_err(Error::sled("read the states"))?;
        states += 1;
    }
    let total: u64 = indexed.values().sum();
    if states != total {
        return Ok(Meta::Incompatible(format!(
            "its index holds {total} instances but it has {states} states"
        )));
    }
    if !indexed.is_empty() && db.scan_prefix([OFFSET]).next().is_none() {
        return Ok(Meta::Incompatible(
            "it holds instances but no offsets".to_owned(),
        ));
    }
    Ok(Meta::Compatible)
}

fn write_meta(db: &sled::Db, topic: &str, owned: Option<&Owned>) -> Result<(), Error> {
    let mut batch = sled::Batch::default();
    batch.insert(META_FORMAT, FORMAT.as_bytes());
    batch.insert(META_TOPIC, topic.as_bytes());
    match owned {
        Some(owned) => batch.insert(META_OWNED, owned.encode().as_bytes()),
        None => batch.remove(META_OWNED),
    }
    batch.remove(META_CORRUPT);
    db.apply_batch(batch).map_err(Error::sled("write meta"))?;
    db.flush().map_err(Error::sled("flush"))?;
    Ok(())
}

/// Keys strictly after `prefix ‖ after` (or from `prefix`) that start with `prefix`.
fn scan_after(
    db: &sled::Db,
    prefix: Vec<u8>,
    after: Option<&str>,
) -> impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>> {
    let start = match after {
        Some(after) => {
            let mut key = prefix.clone();
            key.extend_from_slice(after.as_bytes());
            Bound::Excluded(key)
        }
        None => Bound::Included(prefix.clone()),
    };
    let end = match prefix_end(&prefix) {
        Some(end) => Bound::Excluded(end),
        None => Bound::Unbounded,
    };
    db.range::<Vec<u8>, _>((start, end))
}

/// The smallest key greater than every key starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

pub(crate) fn state_key(instance_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + instance_id.len());
    key.push(STATE);
    key.extend_from_slice(instance_id.as_bytes());
    key
}

/// The index key of an instance: its status code, then its id.
pub(crate) fn index_key(status: Option<StatusName>, instance_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(2 + instance_id.len());
    key.push(INDEX);
    key.push(status_code(status));
    key.extend_from_slice(instance_id.as_bytes());
    key
}

/// The key of a run of `partition` whose first record is at `first_offset`.
pub(crate) fn run_key(partition: i32, first_offset: i64) -> Vec<u8> {
    let mut key = Vec::with_capacity(13);
    key.push(RUN);
    key.extend_from_slice(&partition.to_be_bytes());
    key.extend_from_slice(&first_offset.to_be_bytes());
    key
}

pub(crate) fn offset_key(partition: i32) -> [u8; 5] {
    let mut key = [OFFSET, 0, 0, 0, 0];
    key[1..].copy_from_slice(&partition.to_be_bytes());
    key
}

pub(crate) fn count_key(status: Option<StatusName>) -> [u8; 2] {
    [COUNT, status_code(status)]
}

/// Entries, head hash and status code: what a listing or the checkpoint
/// reads of a state value.
const SUMMARY_LEN: usize = 8 + 32 + 1;
/// The summary, then the length of the positions.
const HEADER_LEN: usize = SUMMARY_LEN + 4;

/// The state value: the summary, the positions of the entries, the state.
pub(crate) fn encode_state_value(
    state: &InstanceState,
    positions: &Positions,
) -> Result<Vec<u8>, Error> {
    let encoded = positions.as_bytes();
    let positions_len = u32::try_from(encoded.len())
        .map_err(|_| Error::Config("an instance with over 4 GiB of positions".to_owned()))?;
    // A typical state encodes to over 1 KiB: one allocation, not a regrowth.
    let mut value = Vec::with_capacity(HEADER_LEN + encoded.len() + 2048);
    value.extend_from_slice(&state.entries.to_be_bytes());
    value.extend_from_slice(&state.head.0);
    value.push(status_code(state.status()));
    value.extend_from_slice(&positions_len.to_be_bytes());
    value.extend_from_slice(encoded);
    rmp_serde::encode::write(&mut value, state).map_err(|source| Error::Encode {
        what: "an instance state",
        source,
    })?;
    Ok(value)
}

/// A state value read back: the state and where its entries are.
#[derive(Debug)]
pub(crate) struct Stored {
    pub state: InstanceState,
    pub positions: Positions,
    pub entries_at: Vec<LogPosition>,
}

fn decode_stored(instance_id: &str, value: &[u8]) -> Result<Stored, Error> {
    let corrupt = |what: &str| Error::corrupt(format!("state of {instance_id}: {what}"));
    let header = value
        .get(..HEADER_LEN)
        .ok_or_else(|| corrupt("too short"))?;
    let positions_len = <[u8; 4]>::try_from(&header[SUMMARY_LEN..])
        .map(u32::from_be_bytes)
        .map_err(|_| corrupt("positions length"))?;
    let positions_end = usize::try_from(positions_len)
        .ok()
        .and_then(|len| HEADER_LEN.checked_add(len))
        .filter(|end| *end <= value.len())
        .ok_or_else(|| corrupt("positions past the end"))?;
    let (positions, entries_at) =
        Positions::decode(&value[HEADER_LEN..positions_end]).map_err(|what| corrupt(&what))?;
    let state: InstanceState =
        rmp_serde::from_slice(&value[positions_end..]).map_err(|e| corrupt(&e.to_string()))?;
    if state.instance_id != instance_id {
        return Err(Error::corrupt(format!(
            "the state under {instance_id} names {}",
            state.instance_id
        )));
    }
    let summary = decode_summary(instance_id.to_owned(), value)?;
    if (summary.entries, summary.head_hash, summary.status)
        != (state.entries, state.head, state.status())
        || positions.count() != state.entries
    {
        return Err(corrupt("its summary or positions do not match the state"));
    }
    Ok(Stored {
        state,
        positions,
        entries_at,
    })
}

fn decode_summary(instance_id: String, value: &[u8]) -> Result<InstanceSummary, Error> {
    let Some(bytes) = value.get(..SUMMARY_LEN) else {
        return Err(Error::corrupt(format!("summary of {instance_id}")));
    };
    let mut entries = [0u8; 8];
    entries.copy_from_slice(&bytes[..8]);
    let mut head = [0u8; 32];
    head.copy_from_slice(&bytes[8..40]);
    Ok(InstanceSummary {
        status: status_from_code(bytes[40])?,
        entries: u64::from_be_bytes(entries),
        head_hash: Hash32(head),
        instance_id,
    })
}

fn id_from_key(bytes: &[u8]) -> Result<String, Error> {
    String::from_utf8(bytes.to_vec()).map_err(|_| Error::corrupt("an instance id is not UTF-8"))
}

fn decode_u64(value: &[u8], what: &str) -> Result<u64, Error> {
    <[u8; 8]>::try_from(value)
        .map(u64::from_be_bytes)
        .map_err(|_| Error::corrupt(what.to_owned()))
}

fn decode_i64(value: &[u8], what: &str) -> Result<i64, Error> {
    <[u8; 8]>::try_from(value)
        .map(i64::from_be_bytes)
        .map_err(|_| Error::corrupt(what.to_owned()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use warrant_authority::quarantine_instance;
    use warrant_schema::samples;

    use super::*;
    use crate::projection::Projection;
    use crate::testutil::*;

    fn record_json(store: &Store, id: &str) -> serde_json::Value {
        serde_json::to_value(store.record(id).unwrap().unwrap()).unwrap()
    }

    #[test]
    fn the_view_equals_the_shared_fold() {
        let dir = tempfile::tempdir().unwrap();
        let (store, opened) = open(dir.path());
        assert_eq!(opened, Opened::Fresh);
        let log = mixed_log();
        fold_into(&store, &log);

        let ledger = ledger_of(&log);
        assert_eq!(ledger.len(), 3);
        for (id, folded) in ledger.instances() {
            assert_eq!(
                record_json(&store, id),
                serde_json::to_value(folded.record()).unwrap(),
                "record of {id}"
            );
        }
        // The sample history contains refusals and a violation; the
        // quarantine and a Malformed entry are there too.
        let sample = store.record(samples::INSTANCE_ID).unwrap().unwrap();
        assert!(!sample.violations.is_empty());
        let last = sample.history.last().unwrap();
        assert_eq!(last.event, "Malformed");
        assert!(store.record(&quarantine_instance(0)).unwrap().is_some());
        assert!(store.record("quarantine").unwrap().is_none());
        assert!(store.record(&instance_id(999)).unwrap().is_none());

        let checkpoint = store.checkpoint().unwrap();
        assert_eq!(
            checkpoint.partitions,
            BTreeMap::from([(0, log.len() as i64)])
        );
        assert_eq!(checkpoint.instances, 3);
        assert_eq!(checkpoint.digest, ledger.checkpoint_digest());
        assert_eq!(checkpoint.topic, TOPIC);
    }

    #[test]
    fn a_checkpoint_lets_batches_commit_during_its_scan_and_counts_them() {
        let log = mixed_log();
        let whole = tempfile::tempdir().unwrap();
        let (whole_store, _) = open(whole.path());
        fold_into(&whole_store, &log);

        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open(dir.path());
        let mut projection = Projection::new(store.clone(), 1000).unwrap();
        let half = log.len() / 2;
        apply(&mut projection, &log[..half]);
        projection.commit_now().unwrap();
        let rest = log[half..].to_vec();
        // The rest of the log is committed while the scan is under way: a
        // scan that held the gate would never let this apply finish.
        *store.during_scan.0.lock().unwrap() = Some(Box::new(move || {
            apply(&mut projection, &rest);
            projection.commit_now().unwrap();
        }));
        let (sender, receiver) = std::sync::mpsc::channel();
        let scanning = store.clone();
        std::thread::spawn(move || {
            let _ = sender.send(scanning.checkpoint());
        });
        let checkpoint = receiver
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("the checkpoint scan blocked the commit")
            .unwrap();
        assert!(
            store.during_scan.0.lock().unwrap().is_none(),
            "the scan ran its hook"
        );
        assert_eq!(checkpoint, whole_store.checkpoint().unwrap());
        assert_eq!(store.checkpoint().unwrap(), checkpoint);
    }

    #[test]
    fn a_checkpoint_across_a_change_of_the_view_is_unavailable_not_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open(dir.path());
        fold_into(&store, &mixed_log());
        let expected = store.checkpoint().unwrap();
        let changing = store.clone();
        *store.during_scan.0.lock().unwrap() = Some(Box::new(move || {
            let owned = Owned {
                log_partitions: 2,
                partitions: BTreeSet::from([0, 1]),
            };
            changing.set_owned(&owned).unwrap();
        }));
        // As if a batch had come: the cached checkpoint is not served.
        store.applied.fetch_add(1, Ordering::AcqRel);
        assert!(matches!(store.checkpoint(), Err(Error::Unavailable)));
        let after = store.checkpoint().unwrap();
        assert_eq!(
            (after.instances, after.digest),
            (expected.instances, expected.digest)
        );
    }

    #[test]
    fn batches_split_anywhere_give_the_same_view() {
        let log = mixed_log();
        let whole = tempfile::tempdir().unwrap();
        let (whole_store, _) = open(whole.path());
        fold_into(&whole_store, &log);

        let split = tempfile::tempdir().unwrap();
        let (split_store, _) = open(split.path());
        let mut projection = Projection::new(split_store.clone(), 1).unwrap();
        for chunk in log.chunks(2) {
            apply(&mut projection, chunk);
            projection.commit_now().unwrap();
        }
        assert_eq!(
            whole_store.checkpoint().unwrap(),
            split_store.checkpoint().unwrap()
        );
        assert_eq!(
            record_json(&whole_store, samples::INSTANCE_ID),
            record_json(&split_store, samples::INSTANCE_ID)
        );
    }

    #[test]
    fn an_uncommitted_batch_leaves_no_trace_and_resume_applies_nothing_twice() {
        let dir = tempfile::tempdir().unwrap();
        let log = mixed_log();
        {
            let (store, _) = open(dir.path());
            let mut projection = Projection::new(store.clone(), 1000).unwrap();
            apply(&mut projection, &log[..3]);
            projection.commit_now().unwrap();
            // Folded and sealed, but never applied: a crash before commit.
            apply(&mut projection, &log[3..6]);
            let _lost = projection.seal().unwrap().unwrap();
        }
        let (store, opened) = open(dir.path());
        assert_eq!(opened, Opened::Resumed);
        assert_eq!(store.offsets().unwrap(), BTreeMap::from([(0, 3)]));
        let state = store.state(samples::INSTANCE_ID).unwrap().unwrap();
        assert_eq!(state.entries, 3);
        assert_eq!(
            store
                .history(samples::INSTANCE_ID)
                .unwrap()
                .unwrap()
                .1
                .len(),
            3
        );

        let mut projection = Projection::new(store.clone(), 1000).unwrap();
        // Redelivered records before the stored offset are skipped.
        for (offset, (partition, key, value)) in log[..3].iter().enumerate() {
            assert!(!projection
                .apply(*partition, offset as i64, key.as_deref(), value.as_deref())
                .unwrap());
        }
        apply(&mut projection, &log[3..]);
        projection.commit_now().unwrap();
        let ledger = ledger_of(&log);
        assert_eq!(
            record_json(&store, samples::INSTANCE_ID),
            serde_json::to_value(ledger.get(samples::INSTANCE_ID).unwrap().record()).unwrap()
        );
        assert_eq!(
            store.checkpoint().unwrap().digest,
            ledger.checkpoint_digest()
        );
    }

    #[test]
    fn stray_keys_in_two_partitions_fold_alike_however_the_partitions_interleave() {
        // Partition 0: the mixed log (with its non-UUID key); partition 1:
        // an instance and records under keys that are not instance ids.
        let mut one: Vec<Record> = history_for(&instance_id(21), 4)
            .iter()
            .map(|e| record(1, e))
            .collect();
        one.insert(1, (1, None, Some(b"no key".to_vec())));
        one.insert(3, (1, Some(b"not-a-uuid".to_vec()), one[0].2.clone()));
        one.push((
            1,
            Some(b"quarantine-0".to_vec()),
            Some(b"\xc3\x01".to_vec()),
        ));
        let zero = mixed_log();
        let in_turn: Vec<Record> = zero.iter().chain(&one).cloned().collect();
        let mut alternating = Vec::new();
        for n in 0..zero.len().max(one.len()) {
            alternating.extend(one.get(n).cloned());
            alternating.extend(zero.get(n).cloned());
        }

        let ledger = ledger_of(&in_turn);
        assert!(ledger.get(&quarantine_instance(0)).is_some());
        assert_eq!(
            ledger.get(&quarantine_instance(1)).map(|f| f.history.len()),
            Some(3)
        );
        let mut checkpoints = Vec::new();
        for log in [&in_turn, &alternating] {
            let dir = tempfile::tempdir().unwrap();
            let (store, _) = open(dir.path());
            fold_into(&store, log);
            for (id, folded) in ledger.instances() {
                assert_eq!(
                    record_json(&store, id),
                    serde_json::to_value(folded.record()).unwrap(),
                    "record of {id}"
                );
            }
            checkpoints.push(store.checkpoint().unwrap());
        }
        assert_eq!(checkpoints[0], checkpoints[1]);
        assert_eq!(checkpoints[0].digest, ledger.checkpoint_digest());
        assert_eq!(checkpoints[0].instances, ledger.len() as u64);
    }

    #[test]
    fn another_topic_or_format_or_a_corrupt_mark_rebuilds_the_view() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, _) = open(dir.path());
            fold_into(&store, &mixed_log());
        }
        // Same topic: resumed, data kept.
        {
            let (store, opened) = open(dir.path());
            assert_eq!(opened, Opened::Resumed);
            assert_eq!(store.checkpoint().unwrap().instances, 3);
        }
        // Another topic: wiped.
        {
            let (store, opened) =
                Store::open(dir.path(), "other.log", StoreOptions::default()).unwrap();
            assert!(
                matches!(opened, Opened::Rebuilt { ref reason } if reason.contains("topic")),
                "{opened:?}"
            );
            assert_eq!(store.checkpoint().unwrap().instances, 0);
            assert!(store.offsets().unwrap().is_empty());
            assert_eq!(store.status_counts().unwrap().total(), 0);
        }
        // Back to ours: the view now belongs to "other.log", rebuilt again.
        let (store, opened) = open(dir.path());
        assert!(matches!(opened, Opened::Rebuilt { .. }));
        fold_into(&store, &mixed_log());
        store
            .db()
            .unwrap()
            // The format before quarantine went per partition.
            .insert(META_FORMAT, &b"warrant-projector/1"[..])
            .unwrap();
        store.db().unwrap().flush().unwrap();
        drop(store);
        let (store, opened) = open(dir.path());
        assert!(
            matches!(opened, Opened::Rebuilt { ref reason } if reason.contains("format")),
            "{opened:?}"
        );
        assert!(store.record(samples::INSTANCE_ID).unwrap().is_none());

        fold_into(&store, &mixed_log());
        store.mark_corrupt("a test said so");
        drop(store);
        let (store, opened) = open(dir.path());
        assert!(
            matches!(opened, Opened::Rebuilt { ref reason } if reason.contains("corrupt")),
            "{opened:?}"
        );
        assert_eq!(store.checkpoint().unwrap().instances, 0);
    }

    #[test]
    fn the_owned_partitions_survive_a_restart_and_bad_ones_rebuild_the_view() {
        let dir = tempfile::tempdir().unwrap();
        let owned = Owned {
            log_partitions: 6,
            partitions: [3, 4, 5].into(),
        };
        {
            let (store, _) = open(dir.path());
            fold_into(&store, &mixed_log());
            store.set_owned(&owned).unwrap();
        }
        let (store, opened) = open(dir.path());
        assert_eq!(opened, Opened::Resumed);
        assert_eq!(store.owned().unwrap(), Some(owned.clone()));
        // Reset keeps what the emptied view will fold.
        store.reset("a test", Some(&owned)).unwrap();
        assert_eq!(store.owned().unwrap(), Some(owned));
        for bad in [&b"6:"[..], b"6:7", b"0:0", b"x", b"6:1,,2"] {
            store.db().unwrap().insert(META_OWNED, bad).unwrap();
            assert!(Owned::decode(bad).is_none(), "{bad:?}");
            store.db().unwrap().flush().unwrap();
        }
        drop(store);
        let (store, opened) = open(dir.path());
        assert!(
            matches!(opened, Opened::Rebuilt { ref reason } if reason.contains("owned")),
            "{opened:?}"
        );
        assert_eq!(store.owned().unwrap(), None);
    }

    #[test]
    fn a_directory_sled_cannot_open_is_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, _) = open(dir.path());
            fold_into(&store, &mixed_log());
        }
        let sled_dir = dir.path().join("sled");
        // Destroy sled's own files.
        for entry in std::fs::read_dir(&sled_dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                std::fs::write(&path, b"\xde\xad\xbe\xef not sled").unwrap();
            }
        }
        let (store, opened) = open(dir.path());
        assert!(matches!(opened, Opened::Rebuilt { .. }), "{opened:?}");
        assert!(store.offsets().unwrap().is_empty());
        fold_into(&store, &mixed_log());
        assert_eq!(
            store.checkpoint().unwrap().digest,
            ledger_of(&mixed_log()).checkpoint_digest()
        );
    }

    #[test]
    fn an_unfinished_sled_snapshot_does_not_cost_the_view() {
        // A snapshot write cut short by a full disk or a kill leaves an
        // empty or partial `snap.<lsn>.generating`, which sled 0.34 reads as
        // its newest snapshot and refuses as corrupt.
        let dir = tempfile::tempdir().unwrap();
        let expected = {
            let (store, _) = open(dir.path());
            fold_into(&store, &mixed_log());
            store.checkpoint().unwrap()
        };
        let unfinished = dir
            .path()
            .join("sled")
            .join("snap.FFFFFFFFFFFFFFFF.generating");
        std::fs::write(&unfinished, b"").unwrap();
        let (store, opened) = open(dir.path());
        assert_eq!(opened, Opened::Resumed);
        assert_eq!(store.checkpoint().unwrap(), expected);
        assert!(!unfinished.exists());
    }

    #[test]
    fn a_view_that_lost_keys_is_rebuilt_not_resumed() {
        // sled has opened damaged files as a view with keys missing; one
        // missing offsets would fold old events again, one missing index
        // entries would give a wrong checkpoint.
        for lose in [INDEX, OFFSET, STATE] {
            let dir = tempfile::tempdir().unwrap();
            {
                let (store, _) = open(dir.path());
                fold_into(&store, &mixed_log());
                let db = store.db().unwrap();
                let keys: Vec<sled::IVec> =
                    db.scan_prefix([lose]).map(|item| item.unwrap().0).collect();
                assert!(!keys.is_empty());
                for key in keys {
                    db.remove(key).unwrap();
                }
                db.flush().unwrap();
            }
            let (store, opened) = open(dir.path());
            let Opened::Rebuilt { reason } = opened else {
                panic!("{opened:?} after losing {}", lose as char);
            };
            assert!(
                reason.contains("do not match its index")
                    || reason.contains("no offsets")
                    || reason.contains("states"),
                "{reason}"
            );
            assert!(store.offsets().unwrap().is_empty());
        }
    }

    #[test]
    fn a_handle_still_open_makes_a_reopen_wait_not_a_rebuild() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open(dir.path());
        fold_into(&store, &mixed_log());
        let before = store.checkpoint().unwrap();
        // A read in flight holds a handle of the open being replaced.
        let held = store.db().unwrap();
        let error = store.reopen().unwrap_err();
        assert!(error.is_storage(), "{error:?}");
        assert!(matches!(store.db(), Err(Error::Unavailable)));
        drop(held);
        store.reopen().unwrap();
        assert_eq!(store.checkpoint().unwrap(), before);
    }

    #[test]
    fn reads_while_a_kept_batch_cannot_be_rewritten_are_unavailable_not_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open(dir.path());
        let log = mixed_log();
        let mut projection = Projection::new(store.clone(), 1000).unwrap();
        apply(&mut projection, &log[..4]);
        projection.commit_now().unwrap();
        let flushed = store.offsets().unwrap();
        // The next batch is applied (the old handle serves it), its flush
        // refused, and the reopen's write of it refused too.
        apply(&mut projection, &log[4..]);
        let mut sealed = projection.seal().unwrap().unwrap();
        let (batch, written) = sealed.take_batch();
        store.apply(batch.clone(), sealed.seq, &written).unwrap();
        store.fail_flushes(2);
        assert!(store.flush().unwrap_err().is_storage());
        let served = store.record(samples::INSTANCE_ID).unwrap().unwrap();
        let before = store.checkpoint().unwrap();
        let kept = || Kept {
            batch: batch.clone(),
            seq: sealed.seq,
            before: Some(&flushed),
            after: &sealed.offsets,
        };
        assert!(store.reopen_with(Some(kept())).unwrap_err().is_storage());
        // Closed, not one batch behind: nothing reads a state without its
        // runs, or a checkpoint older than one already served.
        assert!(matches!(
            store.record(samples::INSTANCE_ID),
            Err(Error::Unavailable)
        ));
        assert!(matches!(store.checkpoint(), Err(Error::Unavailable)));
        store.reopen_with(Some(kept())).unwrap();
        assert_eq!(store.record(samples::INSTANCE_ID).unwrap().unwrap(), served);
        assert_eq!(store.checkpoint().unwrap(), before);
        assert_eq!(before.digest, ledger_of(&log).checkpoint_digest());
        // Nothing marked the view corrupt: the next start resumes it.
        drop(projection);
        drop(store);
        assert_eq!(open(dir.path()).1, Opened::Resumed);
    }

    #[test]
    fn a_reopened_view_holds_every_flushed_batch() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open(dir.path());
        let log = mixed_log();
        fold_into(&store, &log[..4]);
        let before = store.checkpoint().unwrap();
        store.reopen().unwrap();
        assert_eq!(store.checkpoint().unwrap(), before);
        // And it is writable: the rest of the log folds onto it.
        let mut projection = Projection::new(store.clone(), 1000).unwrap();
        apply(&mut projection, &log[4..]);
        projection.commit_now().unwrap();
        assert_eq!(
            store.checkpoint().unwrap().digest,
            ledger_of(&log).checkpoint_digest()
        );
    }

    #[test]
    fn sled_reporting_corrupt_bytes_is_corruption_and_io_is_storage() {
        let corrupt = Error::sled("read a state")(sled::Error::Corruption { at: None, bt: () });
        assert!(matches!(corrupt, Error::Corrupt { .. }), "{corrupt:?}");
        assert!(!corrupt.is_storage());
        let full = Error::sled("flush")(sled::Error::Io(std::io::Error::from(
            std::io::ErrorKind::StorageFull,
        )));
        assert!(full.is_storage());
        assert!(is_storage_failure(&std::io::Error::from_raw_os_error(28)));
        // Only a full disk is waited out; a failing or read-only one stops.
        let io = |error: std::io::Error| Error::sled("flush")(sled::Error::Io(error));
        assert!(io(std::io::Error::from_raw_os_error(28)).is_storage()); // ENOSPC
        assert!(io(std::io::Error::from_raw_os_error(122)).is_storage()); // EDQUOT
        for stops in [
            std::io::Error::from_raw_os_error(5),  // EIO
            std::io::Error::from_raw_os_error(30), // EROFS
            std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
            std::io::Error::from(std::io::ErrorKind::InvalidData),
        ] {
            assert!(!io(stops).is_storage());
        }
        assert!(!is_storage_failure(&std::io::Error::from(
            std::io::ErrorKind::InvalidData
        )));
    }

    #[test]
    fn a_second_projector_on_the_same_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (_store, _) = open(dir.path());
        let second = Store::open(dir.path(), TOPIC, StoreOptions::default());
        assert!(matches!(second, Err(Error::Locked { .. })), "{second:?}");
    }

    #[test]
    fn reset_empties_the_view_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open(dir.path());
        fold_into(&store, &mixed_log());
        assert_eq!(store.checkpoint().unwrap().instances, 3);
        store.reset("a test", None).unwrap();
        assert_eq!(store.checkpoint().unwrap().instances, 0);
        assert!(store.offsets().unwrap().is_empty());
        drop(store);
        let (_, opened) = open(dir.path());
        assert_eq!(opened, Opened::Resumed);
    }

    /// Proposed only: AWAITING_SIGNALS. With both required signals:
    /// AWAITING_DECISION.
    fn queue_log(awaiting_signals: &[u32], awaiting_decision: &[u32]) -> Vec<Record> {
        let mut log = Vec::new();
        for n in awaiting_signals {
            log.extend(
                history_for(&instance_id(*n), 1)
                    .iter()
                    .map(|e| record(0, e)),
            );
        }
        for n in awaiting_decision {
            log.extend(
                history_for(&instance_id(*n), 3)
                    .iter()
                    .map(|e| record(1, e)),
            );
        }
        log
    }

    #[test]
    fn the_status_index_pages_in_id_order_and_follows_transitions() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open(dir.path());
        fold_into(&store, &queue_log(&[1, 2, 3], &[9, 5, 7, 6, 8]));

        let decision = Some(StatusName::AwaitingDecision);
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = store.list(decision, after.as_deref(), 2).unwrap();
            assert!(page.instances.len() <= 2);
            for summary in &page.instances {
                assert_eq!(summary.status, decision);
                assert_eq!(summary.entries, 3);
                assert_eq!(
                    summary.head_hash,
                    store.state(&summary.instance_id).unwrap().unwrap().head
                );
            }
            seen.extend(page.instances.iter().map(|s| s.instance_id.clone()));
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        assert_eq!(seen, [5, 6, 7, 8, 9].map(instance_id));

        let signals = store
            .list(Some(StatusName::AwaitingSignals), None, 50)
            .unwrap();
        assert_eq!(
            signals
                .instances
                .iter()
                .map(|s| s.instance_id.clone())
                .collect::<Vec<_>>(),
            [1, 2, 3].map(instance_id)
        );
        assert_eq!(signals.next, None);
        let all = store.list(None, Some(&instance_id(3)), 3).unwrap();
        assert_eq!(
            all.instances
                .iter()
                .map(|s| s.instance_id.clone())
                .collect::<Vec<_>>(),
            [5, 6, 7].map(instance_id)
        );
        assert_eq!(all.next, Some(instance_id(7)));
        assert!(store
            .list(Some(StatusName::Completed), None, 50)
            .unwrap()
            .instances
            .is_empty());

        // Instance 2 gets both signals: it moves queues, in the counts too.
        let mut projection = Projection::new(store.clone(), 1000).unwrap();
        let events = history_for(&instance_id(2), 3);
        let offset = projection.offsets()[&0];
        for (i, envelope) in events[1..].iter().enumerate() {
            let (partition, key, value) = record(0, envelope);
            projection
                .apply(
                    partition,
                    offset + i as i64,
                    key.as_deref(),
                    value.as_deref(),
                )
                .unwrap();
        }
        projection.commit_now().unwrap();
        let signals = store
            .list(Some(StatusName::AwaitingSignals), None, 50)
            .unwrap();
        assert_eq!(signals.instances.len(), 2);
        assert!(signals
            .instances
            .iter()
            .all(|s| s.instance_id != instance_id(2)));
        assert_eq!(store.list(decision, None, 50).unwrap().instances.len(), 6);
        let counts = store.status_counts().unwrap();
        assert_eq!(counts.get(Some(StatusName::AwaitingSignals)), 2);
        assert_eq!(counts.get(decision), 6);
        assert_eq!(counts.total(), 8);
    }

    #[test]
    fn states_of_every_shape_round_trip_through_the_state_value() {
        let id = instance_id(3);
        let events = history_for(&id, usize::MAX);
        // Indexes into the sample history: quorum, override, expiry,
        // withdrawal, a violation, and nothing proposed at all.
        for picks in [
            &[0, 1, 2, 3, 4][..],
            &[0, 7],
            &[0, 8],
            &[0, 9],
            &[0, 1, 2, 3, 4, 5, 6],
            &[1],
        ] {
            let records: Vec<Vec<u8>> = picks
                .iter()
                .map(|n| warrant_schema::encode(&events[*n]).unwrap())
                .collect();
            let at: Vec<LogPosition> = (0..records.len())
                .map(|n| LogPosition {
                    partition: 2,
                    offset: 1_000 + 37 * n as i64,
                })
                .collect();
            let (state, _) = fold(
                &id,
                records
                    .iter()
                    .zip(&at)
                    .map(|(bytes, position)| LogEvent::decode(*position, bytes)),
            );
            let mut positions = Positions::default();
            at.iter().for_each(|position| positions.push(*position));
            let value = encode_state_value(&state, &positions).unwrap();
            let stored = decode_stored(&id, &value).unwrap();
            assert_eq!(stored.state, state, "{picks:?}");
            assert_eq!(stored.entries_at, at);
            assert_eq!(stored.positions, positions);
            let summary = decode_summary(id.clone(), &value).unwrap();
            assert_eq!(
                (summary.entries, summary.head_hash, summary.status),
                (state.entries, state.head, state.status())
            );
            // Positions that do not count the entries are not this state's.
            let mut short = positions.clone();
            short.push(LogPosition {
                partition: 2,
                offset: 9_999,
            });
            let value = encode_state_value(&state, &short).unwrap();
            assert!(decode_stored(&id, &value).is_err());
        }
        assert!(decode_stored(&id, &[0; 44]).is_err());
        assert!(decode_stored(
            &instance_id(4),
            &encode_state_value(&InstanceState::new(id.clone()), &Positions::default()).unwrap()
        )
        .is_err());
    }

    #[test]
    fn a_history_that_does_not_refold_to_the_stored_head_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open(dir.path());
        fold_into(&store, &mixed_log());
        // Swap one stored record's bytes for another valid event's.
        let db = store.db().unwrap();
        let first = stored_in(&db, samples::INSTANCE_ID)
            .unwrap()
            .unwrap()
            .entries_at[0];
        let (key, value) = db
            .range(run_key(first.partition, 0)..=run_key(first.partition, first.offset))
            .next_back()
            .unwrap()
            .unwrap();
        let mut run = value.to_vec();
        let (start, end) = runs::find_entry(&run, first.offset).unwrap().unwrap();
        let replacement = history_for(samples::INSTANCE_ID, 2)[1].clone();
        let mut other = warrant_schema::encode(&replacement).unwrap();
        other.resize(end - start, 0);
        run[start..end].copy_from_slice(&other);
        db.insert(key, run).unwrap();
        let result = store.record(samples::INSTANCE_ID);
        assert!(matches!(result, Err(Error::Corrupt { .. })), "{result:?}");
        // Other instances are unaffected.
        assert!(store.record(&instance_id(7)).unwrap().is_some());
    }

    /// Bytes that are not an envelope, distinct per `seed`, `len` long.
    fn junk(seed: u8, len: usize) -> Vec<u8> {
        (0..len)
            .map(|n| (n as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// A hostile producer's log: one instance's events on two partitions,
    /// interleaved with another instance's, and records under its key that
    /// are empty, absent, just under, at and over a run, and over sled's
    /// 16 KiB leaf.
    fn two_partition_log() -> Vec<Record> {
        let x = instance_id(1);
        let y = instance_id(2);
        let key = |id: &str| Some(id.as_bytes().to_vec());
        let sizes = [0usize, 4096 - 12, 4096 - 11, 4096, 5000, 17 * 1024, 70_000];
        let mut log = Vec::new();
        let ys = history_for(&y, 6);
        for (n, envelope) in history_for(&x, usize::MAX).iter().enumerate() {
            let partition = (n % 2) as i32;
            log.push(record(partition, envelope));
            if let Some(other) = ys.get(n) {
                log.push(record(1 - partition, other));
            }
            match sizes.get(n) {
                Some(0) => log.push((partition, key(&x), Some(Vec::new()))),
                Some(len) => log.push((1 - partition, key(&x), Some(junk(n as u8, *len)))),
                None => {}
            }
            if n % 3 == 0 {
                log.push((partition, key(&x), None));
                log.push((1 - partition, None, Some(junk(0xA0, 5000))));
            }
        }
        log
    }

    fn assert_view_is_ledger(store: &Store, log: &[Record]) {
        let ledger = ledger_of(log);
        for (id, folded) in ledger.instances() {
            assert_eq!(
                record_json(store, id),
                serde_json::to_value(folded.record()).unwrap(),
                "record of {id}"
            );
        }
        let checkpoint = store.checkpoint().unwrap();
        assert_eq!(checkpoint.digest, ledger.checkpoint_digest());
        assert_eq!(checkpoint.instances, ledger.len() as u64);
    }

    #[test]
    fn one_instance_on_two_partitions_with_empty_and_huge_records_reads_back_as_folded() {
        let log = two_partition_log();
        let whole = tempfile::tempdir().unwrap();
        let (whole_store, _) = open(whole.path());
        fold_into(&whole_store, &log);
        assert_view_is_ledger(&whole_store, &log);
        let x = whole_store.record(&instance_id(1)).unwrap().unwrap();
        assert!(x.history.len() > 20, "{}", x.history.len());

        // Batches of every size, a cache that keeps no committed state (so
        // every batch reads the positions back from sled), and a restart in
        // the middle: the same view.
        let dir = tempfile::tempdir().unwrap();
        let middle = log.len() / 2;
        for part in [&log[..middle], &log[middle..]] {
            let (store, _) = open(dir.path());
            let mut projection = Projection::new(store.clone(), 0).unwrap();
            let mut rest = part;
            for size in [1usize, 2, 3, 5, 8].into_iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let (chunk, tail) = rest.split_at(size.min(rest.len()));
                apply(&mut projection, chunk);
                projection.commit_now().unwrap();
                rest = tail;
            }
        }
        let (store, opened) = open(dir.path());
        assert_eq!(opened, Opened::Resumed);
        assert_view_is_ledger(&store, &log);
        assert_eq!(
            store.checkpoint().unwrap(),
            whole_store.checkpoint().unwrap()
        );
    }

    #[test]
    fn a_kept_batch_of_huge_records_written_again_after_a_full_disk_is_whole() {
        let log = two_partition_log();
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open(dir.path());
        let mut projection = Projection::new(store.clone(), 0).unwrap();
        let middle = log.len() / 2;
        apply(&mut projection, &log[..middle]);
        projection.commit_now().unwrap();
        let flushed = store.offsets().unwrap();
        apply(&mut projection, &log[middle..]);
        let mut sealed = projection.seal().unwrap().unwrap();
        let (batch, written) = sealed.take_batch();
        store.apply(batch.clone(), sealed.seq, &written).unwrap();
        store.fail_flushes(1);
        assert!(store.flush().unwrap_err().is_storage());
        store
            .reopen_with(Some(Kept {
                batch,
                seq: sealed.seq,
                before: Some(&flushed),
                after: &sealed.offsets,
            }))
            .unwrap();
        assert_view_is_ledger(&store, &log);
        drop(projection);
        drop(store);
        let (store, opened) = open(dir.path());
        assert_eq!(opened, Opened::Resumed);
        assert_view_is_ledger(&store, &log);
    }

    /// The stored value of `id` with its positions replaced by `positions`.
    fn with_positions(store: &Store, id: &str, positions: &[u8]) {
        let db = store.db().unwrap();
        let value = db.get(state_key(id)).unwrap().unwrap();
        let old_len = u32::from_be_bytes(value[SUMMARY_LEN..HEADER_LEN].try_into().unwrap());
        let mut new = value[..SUMMARY_LEN].to_vec();
        new.extend_from_slice(&u32::try_from(positions.len()).unwrap().to_be_bytes());
        new.extend_from_slice(positions);
        new.extend_from_slice(&value[HEADER_LEN + old_len as usize..]);
        db.insert(state_key(id), new).unwrap();
    }

    #[test]
    fn corrupt_positions_are_corrupt_never_a_panic_or_another_record() {
        let log = two_partition_log();
        let x = instance_id(1);
        let y = instance_id(2);
        let position = |partition: i32, offset: i64| LogPosition { partition, offset };
        let positions_of = |all: &[LogPosition]| {
            let mut positions = Positions::default();
            for at in all {
                positions.push(*at);
            }
            positions.as_bytes().to_vec()
        };
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open(dir.path());
        fold_into(&store, &log);
        let db = store.db().unwrap();
        let good = stored_in(&db, &x).unwrap().unwrap().entries_at;
        let ys = stored_in(&db, &y).unwrap().unwrap().entries_at;
        let n = good.len();
        // Partition 1, then a partition delta of i64::MAX (zigzag): the sum
        // overflows an i64.
        let mut overflow = vec![2, 0];
        for _ in 1..n {
            overflow
                .extend_from_slice(&[0xFE, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]);
            overflow.push(0);
        }
        let mut swapped = good.clone();
        swapped.swap(0, 1);
        let mut others = good.clone();
        others[n - 1] = ys[0];
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("overflowing partitions", overflow),
            ("negative offsets", positions_of(&vec![position(0, -5); n])),
            (
                "the smallest offset",
                positions_of(&vec![position(0, i64::MIN); n]),
            ),
            (
                "the largest offset",
                positions_of(&vec![position(1, i64::MAX); n]),
            ),
            (
                "a negative partition",
                positions_of(&vec![position(-1, 0); n]),
            ),
            (
                "a partition never folded",
                positions_of(&vec![position(7, 0); n]),
            ),
            ("two entries swapped", positions_of(&swapped)),
            ("another instance's record", positions_of(&others)),
        ];
        for (what, bytes) in cases {
            with_positions(&store, &x, &bytes);
            let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                store.record(&x).map(|_| ())
            }));
            assert!(
                matches!(read, Ok(Err(Error::Corrupt { .. }))),
                "{what}: {read:?}"
            );
        }
        // The right positions again: readable, so nothing else was hurt.
        with_positions(&store, &x, &positions_of(&good));
        assert_view_is_ledger(&store, &log);
    }

    #[test]
    fn a_batch_that_failed_to_apply_during_a_checkpoint_scan_is_not_corruption() {
        let log = mixed_log();
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open(dir.path());
        let mut projection = Projection::new(store.clone(), 1000).unwrap();
        let half = log.len() / 2;
        apply(&mut projection, &log[..half]);
        projection.commit_now().unwrap();
        let before = store.checkpoint().unwrap();
        let rest = log[half..].to_vec();
        let failing = store.clone();
        // During the scan a batch with a new instance fails to apply (the
        // disk is full): it wrote nothing.
        *store.during_scan.0.lock().unwrap() = Some(Box::new(move || {
            apply(&mut projection, &rest);
            let mut sealed = projection.seal().unwrap().unwrap();
            let (batch, written) = sealed.take_batch();
            assert!(written
                .iter()
                .any(|(id, _)| failing.state(id).unwrap().is_none()));
            failing.fail_applies(1);
            let applied = failing.apply(batch, sealed.seq, &written);
            assert!(applied.unwrap_err().is_storage());
        }));
        store.applied.fetch_add(1, Ordering::AcqRel);
        let checkpoint = store.checkpoint();
        assert!(
            store.during_scan.0.lock().unwrap().is_none(),
            "the scan ran its hook"
        );
        // The view as it is (the batch is not in it), or unavailable; never
        // corrupt, which would mark the view and rebuild it on restart.
        match checkpoint {
            Ok(checkpoint) => {
                assert_eq!(
                    (checkpoint.digest, checkpoint.instances),
                    (before.digest, before.instances)
                );
            }
            Err(Error::Unavailable) => {}
            Err(error) => panic!("{error:?}"),
        }
    }

    #[test]
    fn checkpoints_and_records_read_while_batches_commit_are_of_one_batch() {
        // One partition, many instances, so a scan spans batches.
        let mut log: Vec<Record> = Vec::new();
        for step in 0..3 {
            for n in 0..150 {
                let id = instance_id(1000 + n);
                let events = history_for(&id, 3);
                log.push(record(0, &events[step]));
            }
        }
        log.extend(two_partition_log().into_iter().filter(|(p, _, _)| *p == 0));
        let digests: BTreeMap<i64, Hash32> = (0..=log.len())
            .map(|n| (n as i64, ledger_of(&log[..n]).checkpoint_digest()))
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open(dir.path());
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let committing = {
            let store = store.clone();
            let log = log.clone();
            let done = done.clone();
            std::thread::spawn(move || {
                let mut projection = Projection::new(store, 0).unwrap();
                for chunk in log.chunks(7) {
                    apply(&mut projection, chunk);
                    projection.commit_now().unwrap();
                }
                done.store(true, Ordering::Release);
            })
        };
        let reading = {
            let store = store.clone();
            let done = done.clone();
            std::thread::spawn(move || {
                let mut reads = 0;
                while !done.load(Ordering::Acquire) {
                    for n in [1000, 1077, 1149] {
                        if let Some((state, history)) = store.history(&instance_id(n)).unwrap() {
                            assert_eq!(history.len() as u64, state.entries);
                            reads += 1;
                        }
                    }
                    let _ = store.list(None, Some(&instance_id(1100)), 20).unwrap();
                    let _ = store
                        .list(Some(StatusName::AwaitingDecision), None, 20)
                        .unwrap();
                }
                reads
            })
        };
        let mut checked = 0;
        while !done.load(Ordering::Acquire) {
            let checkpoint = store.checkpoint().unwrap();
            let folded = checkpoint.partitions.get(&0).copied().unwrap_or(0);
            assert_eq!(
                checkpoint.digest, digests[&folded],
                "the checkpoint at offset {folded}"
            );
            checked += 1;
        }
        committing.join().unwrap();
        reading.join().unwrap();
        assert!(checked > 0);
        assert_eq!(
            store.checkpoint().unwrap().digest,
            digests[&(log.len() as i64)]
        );
    }
}
