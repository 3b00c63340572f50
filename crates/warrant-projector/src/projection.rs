//! The fold stage: log records in, sealed sled batches out.
//!
//! Every record goes through `warrant_authority::step` exactly as replay
//! folds it; nothing here decides anything. Instance states touched by the
//! current batch (and recently) are cached, so a hot instance is read and
//! serialised once per batch, not once per event.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::Arc;

use warrant_authority::{
    instance_for_key, step, InstanceState, LogEvent, LogPosition, Outcome, RefusalCode, StatusName,
};

use crate::deadlines::{self, DeadlineChange, Watch};
use crate::error::Error;
use crate::paused::{OldestPaused, PausedQueue};
use crate::runs::{OpenRuns, Positions};
use crate::store::{self, StatusCounts, Store, Stored};

/// A fixed (unkeyed) hash: it only saves sled reads, so a collision costs a
/// read and nothing else.
fn id_hash(id: &[u8]) -> u64 {
    BuildHasherDefault::<DefaultHasher>::default().hash_one(id)
}

/// What one batch did, for metrics and logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchStats {
    pub records: u64,
    /// Records whose bytes did not decode as an `Envelope`.
    pub malformed: u64,
    pub violations: u64,
    pub refusals: BTreeMap<RefusalCode, u64>,
    /// `recorded_at` of the last decoded event, per partition.
    pub last_recorded_at: BTreeMap<i32, i64>,
}

/// A batch ready to commit: states, runs, index, counts and offsets in
/// one `sled::Batch`.
#[derive(Debug)]
pub struct Sealed {
    /// Runs, index changes, counts and offsets.
    pub batch: sled::Batch,
    /// The states to store and the positions of their entries, serialised
    /// by [`Sealed::take_batch`] on the commit thread, off the fold's path.
    states: Vec<(Arc<InstanceState>, Positions)>,
    pub seq: u64,
    /// Next offset per partition once this batch is committed.
    pub offsets: BTreeMap<i32, i64>,
    pub counts: StatusCounts,
    pub oldest_paused: OldestPaused,
    /// What this batch changes in the deadline index, for the commit
    /// thread to publish once the batch is durable.
    pub deadlines: Vec<DeadlineChange>,
    pub stats: BatchStats,
}

impl Sealed {
    /// The complete sled batch: serialises the states into it (and lets go
    /// of them, so the fold can take them back without a copy).
    ///
    /// Also returns each written instance with its new entry count, for the
    /// record waiters to be woken once the batch is durable.
    pub fn take_batch(&mut self) -> Result<(sled::Batch, Vec<(String, u64)>), Error> {
        let mut batch = std::mem::take(&mut self.batch);
        let mut written = Vec::with_capacity(self.states.len());
        for (state, positions) in self.states.drain(..) {
            batch.insert(
                store::state_key(&state.instance_id),
                store::encode_state_value(&state, &positions)?,
            );
            written.push((state.instance_id.clone(), state.entries));
        }
        Ok((batch, written))
    }
}

#[derive(Debug)]
struct Cached {
    /// Shared with a sealed batch until the commit thread has encoded it.
    state: Arc<InstanceState>,
    /// Status as committed (or about to be, by an earlier sealed batch);
    /// `None` while the instance has never been written.
    persisted: Option<Option<StatusName>>,
    /// The deadline the index holds for it as committed (or about to be):
    /// what a change of this batch removes.
    watched: Option<Watch>,
    /// Where every entry of the instance is, in entry order.
    positions: Positions,
    /// Last batch that wrote this instance.
    last_batch: u64,
    dirty: bool,
}

/// Folds records into batches. One per consumer; the only writer of the store.
#[derive(Debug)]
pub struct Projection {
    store: Arc<Store>,
    cache: HashMap<String, Cached>,
    cache_limit: usize,
    /// A 64-bit hash of every instance id the store (or a pending batch)
    /// holds: a miss proves an instance is new without asking sled, whose
    /// reads wait while the commit thread applies a batch.
    known: HashSet<u64>,
    touched: Vec<String>,
    /// The records of the open batch, per partition, and the runs it has
    /// already filled.
    runs: OpenRuns,
    batch: sled::Batch,
    offsets: BTreeMap<i32, i64>,
    offsets_dirty: bool,
    counts: StatusCounts,
    paused: PausedQueue,
    stats: BatchStats,
    seq: u64,
}

impl Projection {
    /// Continue from what the store has committed.
    pub fn new(store: Arc<Store>, cache_limit: usize) -> Result<Projection, Error> {
        let offsets = store.offsets()?;
        let counts = store.status_counts()?;
        // One scan rebuilds both: the paused queue for the metrics, and the
        // deadline index, published at once (it is the committed view's).
        let waiting = store.waiting()?;
        let paused = waiting.paused;
        store.deadlines().replace(waiting.deadlines);
        let mut known = HashSet::new();
        store.for_each_instance(|id| {
            known.insert(id_hash(id));
        })?;
        let seq = store.applied_seq() + 1;
        Ok(Projection {
            store,
            cache: HashMap::new(),
            cache_limit,
            known,
            touched: Vec::new(),
            runs: OpenRuns::default(),
            batch: sled::Batch::default(),
            offsets,
            offsets_dirty: false,
            counts,
            paused,
            stats: BatchStats::default(),
            seq,
        })
    }

    /// Next offset to fold per partition (committed or pending).
    pub fn offsets(&self) -> &BTreeMap<i32, i64> {
        &self.offsets
    }

    /// Where to start a partition that has no stored offset; written with
    /// the next batch so the checkpoint names every partition.
    pub fn start_partition(&mut self, partition: i32, offset: i64) {
        if let std::collections::btree_map::Entry::Vacant(vacant) = self.offsets.entry(partition) {
            vacant.insert(offset);
            self.offsets_dirty = true;
        }
    }

    /// Records folded into the batch being built.
    pub fn pending(&self) -> u64 {
        self.stats.records
    }

    /// Fold one log record. A record at or before an offset already folded
    /// is skipped (returns `false`): nothing is applied twice.
    pub fn apply(
        &mut self,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Result<bool, Error> {
        if self
            .offsets
            .get(&partition)
            .is_some_and(|next| offset < *next)
        {
            tracing::warn!(partition, offset, "record before the folded offset skipped");
            return Ok(false);
        }
        let instance_id = instance_for_key(key, partition);
        // A record without a value folds as empty bytes: a Malformed refusal.
        let bytes = value.unwrap_or_default();
        let event = LogEvent::decode(LogPosition { partition, offset }, bytes);
        let decoded = event.decoded.is_ok();

        let cached = match self.cache.get_mut(&instance_id) {
            Some(cached) => cached,
            None => {
                let stored = if self.known.insert(id_hash(instance_id.as_bytes())) {
                    None
                } else {
                    self.store.stored(&instance_id)?
                };
                let (state, positions, persisted) = match stored {
                    Some(Stored {
                        state, positions, ..
                    }) => {
                        let status = state.status();
                        (state, positions, Some(status))
                    }
                    None => (
                        InstanceState::new(instance_id.clone()),
                        Positions::default(),
                        None,
                    ),
                };
                let watched = deadlines::watched(&state);
                self.cache.entry(instance_id.clone()).or_insert(Cached {
                    state: Arc::new(state),
                    persisted,
                    watched,
                    positions,
                    last_batch: 0,
                    dirty: false,
                })
            }
        };
        // Cloned only while a batch being committed still holds it.
        let entry = step(Arc::make_mut(&mut cached.state), event);
        cached.last_batch = self.seq;
        if !cached.dirty {
            cached.dirty = true;
            self.touched.push(instance_id.clone());
        }
        cached.positions.push(entry.position);
        if let Some((key, run)) = self.runs.push(entry.position, bytes)? {
            self.batch.insert(key, run);
        }
        self.offsets.insert(partition, offset + 1);
        self.offsets_dirty = true;

        let stats = &mut self.stats;
        stats.records += 1;
        if let Some(at) = entry.recorded_at {
            stats.last_recorded_at.insert(partition, at);
        }
        match &entry.outcome {
            Outcome::Applied { .. } => {
                tracing::debug!(partition, offset, instance_id = %instance_id, seq = entry.seq, "event applied");
            }
            Outcome::Refused { code, reason } => {
                *stats.refusals.entry(*code).or_default() += 1;
                if decoded {
                    tracing::debug!(partition, offset, instance_id = %instance_id, code = code.as_str(), reason = %reason, "event refused");
                } else {
                    stats.malformed += 1;
                    tracing::warn!(partition, offset, instance_id = %instance_id, reason = %reason, "malformed record refused");
                }
            }
            Outcome::Violation { violation, reason } => {
                stats.violations += 1;
                tracing::warn!(partition, offset, instance_id = %instance_id, violation = violation.as_str(), reason = %reason, "violation recorded");
            }
        }
        Ok(true)
    }

    /// Close the batch being built: add the touched states, their summaries
    /// and index entries, the status counts and the offsets. `None` when
    /// there is nothing to write.
    pub fn seal(&mut self) -> Result<Option<Sealed>, Error> {
        if self.touched.is_empty() && !self.offsets_dirty {
            return Ok(None);
        }
        let mut batch = std::mem::take(&mut self.batch);
        for (key, run) in self.runs.close_all() {
            batch.insert(key, run);
        }
        let mut states = Vec::with_capacity(self.touched.len());
        let mut deadline_changes = Vec::new();
        for instance_id in self.touched.drain(..) {
            let Some(cached) = self.cache.get_mut(&instance_id) else {
                continue;
            };
            cached.dirty = false;
            let status = cached.state.status();
            states.push((cached.state.clone(), cached.positions.clone()));
            // Compared on every write, not only when the status changed, so
            // the index follows the state whatever the fold does with it.
            let watched = deadlines::watched(&cached.state);
            if watched != cached.watched {
                deadline_changes.push(DeadlineChange {
                    instance_id: instance_id.clone(),
                    before: cached.watched,
                    after: watched,
                });
                cached.watched = watched;
            }
            match cached.persisted {
                Some(before) if before == status => {}
                before => {
                    if let Some(before) = before {
                        self.counts.remove(before);
                        batch.remove(store::index_key(before, &instance_id));
                    }
                    batch.insert(store::index_key(status, &instance_id), &[][..]);
                    self.counts.add(status);
                    if let Some(instance) = cached.state.instance() {
                        self.paused.moved(
                            &instance_id,
                            instance.proposal.proposed_at,
                            before.flatten(),
                            status,
                        );
                    }
                    cached.persisted = Some(status);
                }
            }
        }
        for (status, count) in self.counts.iter() {
            batch.insert(&store::count_key(status)[..], &count.to_be_bytes()[..]);
        }
        for (partition, next) in &self.offsets {
            batch.insert(&store::offset_key(*partition)[..], &next.to_be_bytes()[..]);
        }
        self.offsets_dirty = false;
        let sealed = Sealed {
            batch,
            states,
            seq: self.seq,
            offsets: self.offsets.clone(),
            counts: self.counts,
            oldest_paused: self.paused.oldest(),
            deadlines: deadline_changes,
            stats: std::mem::take(&mut self.stats),
        };
        self.seq += 1;
        if self.cache.len() > self.cache_limit {
            // Only states the store already holds may go: a state from a
            // batch still on its way to sled would be read back stale.
            let applied = self.store.applied_seq();
            self.cache.retain(|_, cached| cached.last_batch > applied);
        }
        Ok(Some(sealed))
    }

    /// Apply and flush a sealed batch on the calling thread (tests, and
    /// callers without a separate commit thread).
    pub fn commit_now(&mut self) -> Result<Option<Sealed>, Error> {
        let Some(mut sealed) = self.seal()? else {
            return Ok(None);
        };
        let (batch, written) = sealed.take_batch()?;
        self.store.apply(batch, sealed.seq, &written)?;
        self.store.flush()?;
        self.store.deadlines().apply(&sealed.deadlines);
        Ok(Some(sealed))
    }
}
