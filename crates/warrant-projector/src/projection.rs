//! The fold stage: log records in, sealed sled batches out.
//!
//! Every record goes through `warrant_authority::step` exactly as replay
//! folds it; nothing here decides anything. The per-instance work (decode,
//! step, the cached states) runs in lanes ([`crate::lanes`]), on this
//! thread or on threads of their own; what depends on the log's order
//! (offsets, runs, batch boundaries, counts and the index) stays here.
//! Instance states touched by the current batch (and recently) are cached,
//! so a hot instance is read and serialised once per batch, not once per
//! event.

use std::collections::BTreeMap;
use std::sync::Arc;

use warrant_authority::{instance_for_key, LogPosition, RefusalCode};

use crate::deadlines::DeadlineChange;
use crate::error::Error;
use crate::lanes::{EncodedState, Lanes, LanesSealed, StorageWait};
use crate::paused::{OldestPaused, PausedQueue};
use crate::runs::OpenRuns;
use crate::store::{self, StatusCounts, Store};

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
    /// The states to store, serialised by their lanes (in parallel, and
    /// so that no state is shared with the commit thread while the next
    /// batch folds it).
    states: Vec<EncodedState>,
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
    /// The complete sled batch, with the states in it.
    ///
    /// Also returns each written instance with its new entry count, for the
    /// record waiters to be woken once the batch is durable.
    pub fn take_batch(&mut self) -> (sled::Batch, Vec<(String, u64)>) {
        let mut batch = std::mem::take(&mut self.batch);
        let mut written = Vec::with_capacity(self.states.len());
        for state in self.states.drain(..) {
            batch.insert(store::state_key(&state.instance_id), state.value);
            written.push((state.instance_id, state.entries));
        }
        (batch, written)
    }
}

/// Folds records into batches. One per consumer; the only writer of the store.
#[derive(Debug)]
pub struct Projection {
    store: Arc<Store>,
    lanes: Lanes,
    /// The records of the open batch, per partition, and the runs it has
    /// already filled.
    runs: OpenRuns,
    batch: sled::Batch,
    offsets: BTreeMap<i32, i64>,
    offsets_dirty: bool,
    counts: StatusCounts,
    paused: PausedQueue,
    /// Records folded into the open batch.
    pending: u64,
    seq: u64,
}

impl Projection {
    /// Continue from what the store has committed, folding on the calling
    /// thread.
    pub fn new(store: Arc<Store>, cache_limit: usize) -> Result<Projection, Error> {
        Projection::build(store, cache_limit, 1, None)
    }

    /// Continue from what the store has committed, folding in `lanes`
    /// threads (one folds on the calling thread). A lane thread waits
    /// through storage errors that pass with `wait`; any other error it
    /// meets comes back from [`Projection::seal`].
    pub(crate) fn with_lanes(
        store: Arc<Store>,
        cache_limit: usize,
        lanes: usize,
        wait: Arc<dyn StorageWait>,
    ) -> Result<Projection, Error> {
        Projection::build(store, cache_limit, lanes, Some(wait))
    }

    fn build(
        store: Arc<Store>,
        cache_limit: usize,
        lanes: usize,
        wait: Option<Arc<dyn StorageWait>>,
    ) -> Result<Projection, Error> {
        let offsets = store.offsets()?;
        let counts = store.status_counts()?;
        // One scan rebuilds both: the paused queue for the metrics, and the
        // deadline index, published at once (it is the committed view's).
        let waiting = store.waiting()?;
        let paused = waiting.paused;
        store.deadlines().replace(waiting.deadlines);
        let lanes = Lanes::new(&store, cache_limit, lanes, wait)?;
        let seq = store.applied_seq() + 1;
        Ok(Projection {
            store,
            lanes,
            runs: OpenRuns::default(),
            batch: sled::Batch::default(),
            offsets,
            offsets_dirty: false,
            counts,
            paused,
            pending: 0,
            seq,
        })
    }

    #[cfg(test)]
    pub(crate) fn lanes_for_tests(&mut self) -> &mut Lanes {
        &mut self.lanes
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
        self.pending
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
        let position = LogPosition { partition, offset };
        self.lanes.fold(instance_id, position, bytes, self.seq)?;
        if let Some((key, run)) = self.runs.push(position, bytes)? {
            self.batch.insert(key, run);
        }
        self.offsets.insert(partition, offset + 1);
        self.offsets_dirty = true;
        self.pending += 1;
        Ok(true)
    }

    /// Close the batch being built: add the touched states, their summaries
    /// and index entries, the status counts and the offsets. `None` when
    /// there is nothing to write.
    ///
    /// With lane threads, this waits until each has folded what it was
    /// given; an error one met folding is returned here. While stopping, a
    /// lane that gave up on a record leaves the batch incomplete: `None`,
    /// and nothing of it is written.
    pub fn seal(&mut self) -> Result<Option<Sealed>, Error> {
        if self.pending == 0 && !self.offsets_dirty {
            return Ok(None);
        }
        let (touched, stats) = match self.lanes.seal(self.seq)? {
            LanesSealed::Sealed(touched, stats) => (touched, stats),
            LanesSealed::Stopped => return Ok(None),
        };
        let mut batch = std::mem::take(&mut self.batch);
        for (key, run) in self.runs.close_all() {
            batch.insert(key, run);
        }
        let mut states = Vec::with_capacity(touched.len());
        let mut deadline_changes = Vec::new();
        for touched in touched {
            deadline_changes.extend(touched.deadline);
            let status = touched.after;
            let instance_id = &touched.encoded.instance_id;
            match touched.before {
                Some(before) if before == status => {}
                before => {
                    if let Some(before) = before {
                        self.counts.remove(before);
                        batch.remove(store::index_key(before, instance_id));
                    }
                    batch.insert(store::index_key(status, instance_id), &[][..]);
                    self.counts.add(status);
                    if let Some(proposed_at) = touched.proposed_at {
                        self.paused
                            .moved(instance_id, proposed_at, before.flatten(), status);
                    }
                }
            }
            states.push(touched.encoded);
        }
        for (status, count) in self.counts.iter() {
            batch.insert(&store::count_key(status)[..], &count.to_be_bytes()[..]);
        }
        for (partition, next) in &self.offsets {
            batch.insert(&store::offset_key(*partition)[..], &next.to_be_bytes()[..]);
        }
        self.offsets_dirty = false;
        self.pending = 0;
        let sealed = Sealed {
            batch,
            states,
            seq: self.seq,
            offsets: self.offsets.clone(),
            counts: self.counts,
            oldest_paused: self.paused.oldest(),
            deadlines: deadline_changes,
            stats,
        };
        self.seq += 1;
        Ok(Some(sealed))
    }

    /// Apply and flush a sealed batch on the calling thread (tests, and
    /// callers without a separate commit thread).
    pub fn commit_now(&mut self) -> Result<Option<Sealed>, Error> {
        let Some(mut sealed) = self.seal()? else {
            return Ok(None);
        };
        let (batch, written) = sealed.take_batch();
        self.store.apply(batch, sealed.seq, &written)?;
        self.store.flush()?;
        self.store.deadlines().apply(&sealed.deadlines);
        Ok(Some(sealed))
    }
}
