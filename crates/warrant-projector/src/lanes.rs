//! The fold's parallel part: decoding each record and stepping its
//! instance's state, split into lanes by a hash of the instance id.
//!
//! Everything that depends on the order of the log across instances (the
//! offsets, the runs of raw records, the batch boundaries, the status
//! counts and index) stays with [`crate::projection::Projection`], on the
//! thread that polls Kafka. What a lane does depends only on the events of
//! its own instances, in the order they arrive, so lanes may run at once.
//!
//! Lanes are keyed by instance, not by partition: a hostile producer can
//! put one instance id in two partitions, and the fold must still see that
//! instance's events one at a time, in consumption order, as one state.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use warrant_authority::{step, InstanceState, LogEvent, LogPosition, Outcome, StatusName};

use crate::deadlines::{self, DeadlineChange, Watch};
use crate::error::Error;
use crate::projection::BatchStats;
use crate::runs::Positions;
use crate::store::{encode_state_value, Store, Stored};

/// A fixed (unkeyed) hash: it only saves sled reads and spreads instances
/// over lanes, so a collision costs a read and nothing else.
pub(crate) fn id_hash(id: &[u8]) -> u64 {
    BuildHasherDefault::<DefaultHasher>::default().hash_one(id)
}

fn lane_of(hash: u64, lanes: usize) -> usize {
    // The low bits pick the bucket of the `known` sets; the high ones the lane.
    ((hash >> 32) % lanes as u64) as usize
}

/// Records handed to a lane thread at once: one channel send per chunk,
/// not per record.
const CHUNK: usize = 256;
/// Chunks queued per lane before the polling thread waits for it.
const QUEUED_CHUNKS: usize = 16;

#[derive(Debug)]
struct Cached {
    state: InstanceState,
    /// Status as committed (or about to be, by an earlier sealed batch);
    /// `None` while the instance has never been written.
    persisted: Option<Option<StatusName>>,
    /// The deadline the index holds for it as committed (or about to be):
    /// what a change of this batch removes.
    watched: Option<Watch>,
    /// Where every entry of the instance is, in entry order.
    positions: Positions,
    /// Last batch that folded a record of this instance.
    last_batch: u64,
    dirty: bool,
}

/// A state as stored: `store::encode_state_value` of it.
#[derive(Debug)]
pub(crate) struct EncodedState {
    pub instance_id: String,
    /// Its history length, for the record waiters.
    pub entries: u64,
    pub value: Vec<u8>,
}

/// An instance the batch wrote, as its lane leaves it at the seal.
#[derive(Debug)]
pub(crate) struct Touched {
    pub encoded: EncodedState,
    /// Its status once the batch is written.
    pub after: Option<StatusName>,
    /// When it was proposed, if it was.
    pub proposed_at: Option<i64>,
    /// Status as committed before this batch; `None` if never written.
    pub before: Option<Option<StatusName>>,
    /// What the batch changes in the deadline index for it, if anything.
    pub deadline: Option<DeadlineChange>,
}

/// One lane's instances: their cached states and what the open batch did
/// to them.
#[derive(Debug)]
pub(crate) struct Lane {
    store: Arc<Store>,
    cache: HashMap<String, Cached>,
    cache_limit: usize,
    /// A 64-bit hash of every instance id of this lane the store (or a
    /// pending batch) holds: a miss proves an instance is new without
    /// asking sled, whose reads wait while the commit thread applies a batch.
    known: HashSet<u64>,
    touched: Vec<String>,
    stats: BatchStats,
}

impl Lane {
    fn new(store: Arc<Store>, cache_limit: usize, known: HashSet<u64>) -> Lane {
        Lane {
            store,
            cache: HashMap::new(),
            cache_limit,
            known,
            touched: Vec::new(),
            stats: BatchStats::default(),
        }
    }

    /// Fold one record of `instance_id` (whose [`id_hash`] is `hash`) into
    /// batch `seq`. An error means the state could not be read, and
    /// nothing of the record was folded: folding it again is safe.
    fn fold(
        &mut self,
        instance_id: &str,
        hash: u64,
        position: LogPosition,
        bytes: &[u8],
        seq: u64,
    ) -> Result<(), Error> {
        let event = LogEvent::decode(position, bytes);
        let decoded = event.decoded.is_ok();
        let cached = match self.cache.get_mut(instance_id) {
            Some(cached) => cached,
            None => {
                let stored = if self.known.contains(&hash) {
                    self.store.stored(instance_id)?
                } else {
                    None
                };
                self.known.insert(hash);
                let (state, positions, persisted) = match stored {
                    Some(Stored {
                        state, positions, ..
                    }) => {
                        let status = state.status();
                        (state, positions, Some(status))
                    }
                    None => (
                        InstanceState::new(instance_id.to_owned()),
                        Positions::default(),
                        None,
                    ),
                };
                let watched = deadlines::watched(&state);
                self.cache.entry(instance_id.to_owned()).or_insert(Cached {
                    state,
                    persisted,
                    watched,
                    positions,
                    last_batch: 0,
                    dirty: false,
                })
            }
        };
        let entry = step(&mut cached.state, event);
        cached.last_batch = seq;
        if !cached.dirty {
            cached.dirty = true;
            self.touched.push(instance_id.to_owned());
        }
        cached.positions.push(entry.position);

        let LogPosition { partition, offset } = position;
        let stats = &mut self.stats;
        stats.records += 1;
        if let Some(at) = entry.recorded_at {
            stats.last_recorded_at.insert(partition, at);
        }
        match &entry.outcome {
            Outcome::Applied { .. } => {
                tracing::debug!(
                    partition,
                    offset,
                    instance_id,
                    seq = entry.seq,
                    "event applied"
                );
            }
            Outcome::Refused { code, reason } => {
                *stats.refusals.entry(*code).or_default() += 1;
                if decoded {
                    tracing::debug!(partition, offset, instance_id, code = code.as_str(), reason = %reason, "event refused");
                } else {
                    stats.malformed += 1;
                    tracing::warn!(partition, offset, instance_id, reason = %reason, "malformed record refused");
                }
            }
            Outcome::Violation { violation, reason } => {
                stats.violations += 1;
                tracing::warn!(partition, offset, instance_id, violation = violation.as_str(), reason = %reason, "violation recorded");
            }
        }
        Ok(())
    }

    /// The instances the open batch wrote, and its statistics; the lane
    /// then takes their new statuses as persisted, and lets go of states
    /// beyond its cache limit that the store already holds.
    fn seal(&mut self) -> Result<(Vec<Touched>, BatchStats), Error> {
        let mut touched = Vec::with_capacity(self.touched.len());
        for instance_id in self.touched.drain(..) {
            let Some(cached) = self.cache.get_mut(&instance_id) else {
                continue;
            };
            cached.dirty = false;
            // Compared on every write, not only when the status changed, so
            // the index follows the state whatever the fold does with it.
            let watched = deadlines::watched(&cached.state);
            let deadline = (watched != cached.watched).then(|| DeadlineChange {
                instance_id: instance_id.clone(),
                before: cached.watched,
                after: watched,
            });
            cached.watched = watched;
            touched.push(Touched {
                encoded: EncodedState {
                    instance_id: instance_id.clone(),
                    entries: cached.state.entries,
                    value: encode_state_value(&cached.state, &cached.positions)?,
                },
                after: cached.state.status(),
                proposed_at: cached
                    .state
                    .instance()
                    .map(|instance| instance.proposal.proposed_at),
                before: cached.persisted,
                deadline,
            });
            cached.persisted = Some(cached.state.status());
        }
        if self.cache.len() > self.cache_limit {
            // Only states the store already holds may go: a state from a
            // batch still on its way to sled would be read back stale.
            let applied = self.store.applied_seq();
            self.cache.retain(|_, cached| cached.last_batch > applied);
        }
        Ok((touched, std::mem::take(&mut self.stats)))
    }
}

/// What a lane thread does when the view cannot be read for a reason that
/// passes (closed for a reopen, a full disk): the polling thread's own
/// handling of the same errors, so metrics and readiness say the same.
pub(crate) trait StorageWait: Send + Sync {
    /// Wait before reading again; `false` once the projector is stopping.
    fn wait(&self, error: &Error) -> bool;
    /// A read that had to wait succeeded.
    fn resumed(&self);
}

/// One record on its way to a lane thread.
struct Routed {
    instance_id: String,
    hash: u64,
    position: LogPosition,
    bytes: Vec<u8>,
}

enum ToLane {
    Records { seq: u64, records: Vec<Routed> },
    Seal(SyncSender<LaneReply>),
}

enum LaneReply {
    Sealed(Vec<Touched>, BatchStats),
    /// The projector is stopping and the lane did not fold everything it
    /// was given: nothing of this batch may be committed.
    Stopped,
    Failed(Error),
}

struct LaneThread {
    sender: SyncSender<ToLane>,
    pending: Vec<Routed>,
    /// Set when the lanes are dropped, for every lane thread at once.
    closing: Arc<AtomicBool>,
    /// Taken when the lanes are dropped, to wait for the thread to end.
    thread: Option<JoinHandle<()>>,
}

impl Drop for LaneThread {
    fn drop(&mut self) {
        // A lane thread holds the store, and so sled's lock on the data
        // directory, until it ends: a projector started again in the same
        // process must find it released, not "held by another projector".
        // What is still queued is skipped and a wait given up: nobody will
        // commit it.
        self.closing.store(true, Ordering::Release);
        let (closed, _) = mpsc::sync_channel(0);
        drop(std::mem::replace(&mut self.sender, closed));
        if let Some(thread) = self.thread.take() {
            // One that panicked has nothing left to release.
            let _ = thread.join();
        }
    }
}

/// Where the fold's per-instance work runs.
#[derive(Debug)]
pub(crate) enum Lanes {
    /// On the calling thread (one lane: tests, and `--fold-threads 1`).
    Inline(Box<Lane>),
    /// On a thread per lane.
    Threads(Box<[LaneThreadHandle]>),
}

/// A lane thread as the polling thread sees it.
pub(crate) struct LaneThreadHandle(LaneThread);

impl std::fmt::Debug for LaneThreadHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LaneThread")
            .field("pending", &self.0.pending.len())
            .finish_non_exhaustive()
    }
}

/// What all lanes sealed, merged.
pub(crate) enum LanesSealed {
    Sealed(Vec<Touched>, BatchStats),
    Stopped,
}

impl Lanes {
    /// `count` lanes over the instances the store holds (one scan of it).
    /// More than one runs each lane on a thread of its own.
    pub fn new(
        store: &Arc<Store>,
        cache_limit: usize,
        count: usize,
        wait: Option<Arc<dyn StorageWait>>,
    ) -> Result<Lanes, Error> {
        // Lane threads need a way to wait; without one, one lane inline.
        let count = if wait.is_some() { count.max(1) } else { 1 };
        let mut known: Vec<HashSet<u64>> = (0..count).map(|_| HashSet::new()).collect();
        store.for_each_instance(|id| {
            let hash = id_hash(id);
            if let Some(set) = known.get_mut(lane_of(hash, count)) {
                set.insert(hash);
            }
        })?;
        let per_lane = cache_limit.div_ceil(count);
        let wait = match wait {
            Some(wait) if count > 1 => wait,
            _ => {
                let known = known.pop().unwrap_or_default();
                return Ok(Lanes::Inline(Box::new(Lane::new(
                    store.clone(),
                    cache_limit,
                    known,
                ))));
            }
        };
        let mut threads = Vec::with_capacity(count);
        let closing = Arc::new(AtomicBool::new(false));
        for (index, known) in known.into_iter().enumerate() {
            let lane = Lane::new(store.clone(), per_lane, known);
            let (sender, receiver) = mpsc::sync_channel(QUEUED_CHUNKS);
            let (wait, closed) = (wait.clone(), closing.clone());
            let thread = std::thread::Builder::new()
                .name(format!("warrant-fold-{index}"))
                .spawn(move || lane_thread(lane, &receiver, wait.as_ref(), &closed))
                .map_err(|source| Error::Spawn {
                    name: "fold lane",
                    source,
                })?;
            threads.push(LaneThreadHandle(LaneThread {
                sender,
                pending: Vec::with_capacity(CHUNK),
                closing: closing.clone(),
                thread: Some(thread),
            }));
        }
        Ok(Lanes::Threads(threads.into_boxed_slice()))
    }

    /// Fold one record, or queue it on its lane's thread. An error from an
    /// inline lane means nothing was folded; a lane thread's errors come
    /// back from [`Lanes::seal`].
    pub fn fold(
        &mut self,
        instance_id: String,
        position: LogPosition,
        bytes: &[u8],
        seq: u64,
    ) -> Result<(), Error> {
        let hash = id_hash(instance_id.as_bytes());
        match self {
            Lanes::Inline(lane) => lane.fold(&instance_id, hash, position, bytes, seq),
            Lanes::Threads(threads) => {
                let count = threads.len();
                let Some(LaneThreadHandle(thread)) = threads.get_mut(lane_of(hash, count)) else {
                    return Err(Error::ThreadDied { name: "fold lane" });
                };
                thread.pending.push(Routed {
                    instance_id,
                    hash,
                    position,
                    bytes: bytes.to_vec(),
                });
                if thread.pending.len() >= CHUNK {
                    thread.send_pending(seq)?;
                }
                Ok(())
            }
        }
    }

    /// Every lane's share of the open batch, once each has folded all it
    /// was given.
    pub fn seal(&mut self, seq: u64) -> Result<LanesSealed, Error> {
        let threads = match self {
            Lanes::Inline(lane) => {
                let (touched, stats) = lane.seal()?;
                return Ok(LanesSealed::Sealed(touched, stats));
            }
            Lanes::Threads(threads) => threads,
        };
        let mut replies = Vec::with_capacity(threads.len());
        for LaneThreadHandle(thread) in threads.iter_mut() {
            thread.send_pending(seq)?;
            let (reply, replied) = mpsc::sync_channel(1);
            thread
                .sender
                .send(ToLane::Seal(reply))
                .map_err(|_| Error::ThreadDied { name: "fold lane" })?;
            replies.push(replied);
        }
        let mut touched = Vec::new();
        let mut stats = BatchStats::default();
        let mut stopped = false;
        for replied in replies {
            match replied.recv() {
                Ok(LaneReply::Sealed(lane_touched, lane_stats)) => {
                    touched.extend(lane_touched);
                    stats.merge(lane_stats);
                }
                Ok(LaneReply::Stopped) => stopped = true,
                Ok(LaneReply::Failed(error)) => return Err(error),
                Err(_) => return Err(Error::ThreadDied { name: "fold lane" }),
            }
        }
        Ok(if stopped {
            LanesSealed::Stopped
        } else {
            LanesSealed::Sealed(touched, stats)
        })
    }
}

impl LaneThread {
    fn send_pending(&mut self, seq: u64) -> Result<(), Error> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let records = std::mem::replace(&mut self.pending, Vec::with_capacity(CHUNK));
        self.sender
            .send(ToLane::Records { seq, records })
            .map_err(|_| Error::ThreadDied { name: "fold lane" })
    }
}

/// A lane thread: fold what comes, answer seals, end when the polling
/// side lets go of the channel.
fn lane_thread(
    mut lane: Lane,
    receiver: &Receiver<ToLane>,
    wait: &dyn StorageWait,
    closing: &AtomicBool,
) {
    // Once a record could not be folded, nothing after it may be: the
    // batch is incomplete, and so is every later one.
    let mut broken: Option<LaneReply> = None;
    while let Ok(message) = receiver.recv() {
        if closing.load(Ordering::Acquire) {
            broken = Some(LaneReply::Stopped);
        }
        match message {
            ToLane::Records { seq, records } => {
                if broken.is_some() {
                    continue;
                }
                for record in records {
                    if let Err(reply) = fold_waiting(&mut lane, &record, seq, wait, closing) {
                        broken = Some(reply);
                        break;
                    }
                }
            }
            ToLane::Seal(reply) => {
                let answer = match broken.take() {
                    Some(failed) => {
                        broken = Some(LaneReply::Stopped);
                        failed
                    }
                    None => match lane.seal() {
                        Ok((touched, stats)) => LaneReply::Sealed(touched, stats),
                        Err(error) => {
                            broken = Some(LaneReply::Stopped);
                            LaneReply::Failed(error)
                        }
                    },
                };
                // The polling side gone means the projector is ending.
                let _ = reply.send(answer);
            }
        }
    }
}

/// Fold one record, waiting while the view cannot be read.
fn fold_waiting(
    lane: &mut Lane,
    record: &Routed,
    seq: u64,
    wait: &dyn StorageWait,
    closing: &AtomicBool,
) -> Result<(), LaneReply> {
    let mut waited = false;
    loop {
        match lane.fold(
            &record.instance_id,
            record.hash,
            record.position,
            &record.bytes,
            seq,
        ) {
            Ok(()) => {
                if waited {
                    wait.resumed();
                }
                return Ok(());
            }
            Err(error) if error.is_storage() => {
                // A reopen's outage is the commit thread's to report.
                waited |= !matches!(error, Error::Unavailable);
                if closing.load(Ordering::Acquire) || !wait.wait(&error) {
                    return Err(LaneReply::Stopped);
                }
            }
            Err(error) => return Err(LaneReply::Failed(error)),
        }
    }
}

impl BatchStats {
    /// Add another lane's share of the same batch. Its last `recorded_at`
    /// per partition is the later of the two: lanes fold a partition's
    /// records side by side, and the metric it feeds is an age.
    pub(crate) fn merge(&mut self, other: BatchStats) {
        self.records += other.records;
        self.malformed += other.malformed;
        self.violations += other.violations;
        for (code, count) in other.refusals {
            *self.refusals.entry(code).or_default() += count;
        }
        for (partition, at) in other.last_recorded_at {
            let last = self.last_recorded_at.entry(partition).or_insert(at);
            *last = (*last).max(at);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::atomic::AtomicUsize;

    use proptest::prelude::*;

    use super::*;
    use crate::projection::Projection;
    use crate::testutil::{history_for, instance_id, ledger_of, open, record, Record};

    /// Waits by counting; stops once told to.
    #[derive(Default)]
    struct Counting {
        waits: AtomicUsize,
        stop: AtomicBool,
    }

    impl StorageWait for Counting {
        fn wait(&self, _: &Error) -> bool {
            self.waits.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(5));
            !self.stop.load(Ordering::SeqCst)
        }
        fn resumed(&self) {}
    }

    /// Many instances over three partitions, one of them also in a second
    /// partition (off contract, as a hostile producer can write it), with
    /// records that do not decode and keys that are not instance ids.
    fn busy_log(instances: u32) -> Vec<Record> {
        let histories: Vec<Vec<warrant_schema::Envelope>> = (1..=instances)
            .map(|n| history_for(&instance_id(n), 3 + (n as usize % 9)))
            .collect();
        let mut log = Vec::new();
        for round in 0.. {
            let mut any = false;
            for (n, history) in histories.iter().enumerate() {
                if let Some(envelope) = history.get(round) {
                    any = true;
                    // Instance 1 alternates partitions; the others keep theirs.
                    let partition = if n == 0 {
                        (round % 2) as i32
                    } else {
                        (n % 3) as i32
                    };
                    log.push(record(partition, envelope));
                }
            }
            if round % 4 == 1 {
                log.push((2, Some(b"not-an-id".to_vec()), Some(b"junk".to_vec())));
                log.push((1, Some(instance_id(2).into_bytes()), Some(b"\x00".to_vec())));
                log.push((0, Some(instance_id(3).into_bytes()), None));
            }
            if !any {
                break;
            }
        }
        log
    }

    /// Fold `log` in batches of `batch` records with `lanes` lanes and a
    /// cache of `cache` states; the view's checkpoint and every record.
    fn fold_with(
        log: &[Record],
        lanes: usize,
        batch: usize,
        cache: usize,
    ) -> (crate::store::Checkpoint, Vec<serde_json::Value>) {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open(dir.path());
        let mut projection =
            Projection::with_lanes(store.clone(), cache, lanes, Arc::new(Counting::default()))
                .unwrap();
        for chunk in log.chunks(batch.max(1)) {
            crate::testutil::apply(&mut projection, chunk);
            projection.commit_now().unwrap();
        }
        let records = ledger_of(log)
            .instances()
            .map(|(id, _)| serde_json::to_value(store.record(id).unwrap().unwrap()).unwrap())
            .collect();
        (store.checkpoint().unwrap(), records)
    }

    #[test]
    fn lanes_fold_the_same_view_as_one_thread_and_as_the_ledger() {
        let log = busy_log(40);
        let ledger = ledger_of(&log);
        let (inline, inline_records) = fold_with(&log, 1, 37, 5);
        assert_eq!(inline.digest, ledger.checkpoint_digest());
        assert_eq!(inline.instances, ledger.len() as u64);
        let expected: Vec<serde_json::Value> = ledger
            .instances()
            .map(|(_, folded)| serde_json::to_value(folded.record()).unwrap())
            .collect();
        assert_eq!(inline_records, expected);
        for lanes in [2, 3, 7] {
            let (threaded, records) = fold_with(&log, lanes, 37, 5);
            assert_eq!(threaded, inline, "{lanes} lanes");
            assert_eq!(records, expected, "{lanes} lanes");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]
        #[test]
        fn any_lanes_batches_and_cache_fold_the_ledger(
            lanes in 1usize..6,
            batch in 1usize..120,
            cache in 0usize..8,
            instances in 1u32..25,
        ) {
            let log = busy_log(instances);
            let ledger = ledger_of(&log);
            let (checkpoint, _) = fold_with(&log, lanes, batch, cache);
            prop_assert_eq!(checkpoint.digest, ledger.checkpoint_digest());
            prop_assert_eq!(checkpoint.instances, ledger.len() as u64);
        }
    }

    /// The deadline index the ledger's states call for.
    fn index_of(ledger: &warrant_authority::Ledger) -> crate::deadlines::DeadlineIndex {
        let mut index = crate::deadlines::DeadlineIndex::default();
        for (id, folded) in ledger.instances() {
            index.moved(id, None, deadlines::watched(&folded.state));
        }
        index
    }

    /// Fold `log` as the projector does: a commit thread writes each sealed
    /// batch while the next one is folded, and the projector restarts (the
    /// open batch lost, the view opened again from disk) once it has been
    /// given each record count in `restarts`.
    fn fold_pipelined(
        log: &[Record],
        lanes: usize,
        batch: usize,
        cache: usize,
        restarts: &[usize],
    ) -> (tempfile::TempDir, Arc<Store>) {
        let dir = tempfile::tempdir().unwrap();
        let mut given = 0;
        let mut pass = 0;
        loop {
            let (store, _) = open(dir.path());
            let mut projection =
                Projection::with_lanes(store.clone(), cache, lanes, Arc::new(Counting::default()))
                    .unwrap();
            // The index is rebuilt from what the view holds.
            assert_eq!(
                store.deadlines().snapshot(),
                Some(store.waiting().unwrap().deadlines)
            );
            let (sender, receiver) = mpsc::sync_channel::<crate::projection::Sealed>(1);
            let committer = {
                let store = store.clone();
                std::thread::spawn(move || {
                    for mut sealed in receiver {
                        let (batch, written) = sealed.take_batch();
                        store.apply(batch, sealed.seq, &written).unwrap();
                        store.flush().unwrap();
                        store.deadlines().apply(&sealed.deadlines);
                    }
                })
            };
            let stop_at = restarts.get(pass).copied().unwrap_or(usize::MAX);
            let mut in_batch = 0;
            // Every record again, in log order: those already folded are
            // skipped by offset, as a consumer resuming from the view does.
            let mut offsets = std::collections::BTreeMap::new();
            let mut restarted = false;
            for (partition, key, value) in log {
                let offset = offsets.entry(*partition).or_insert(0i64);
                let folded = projection
                    .apply(*partition, *offset, key.as_deref(), value.as_deref())
                    .unwrap();
                *offset += 1;
                if !folded {
                    continue;
                }
                given += 1;
                in_batch += 1;
                if given >= stop_at {
                    restarted = true;
                    break;
                }
                if in_batch >= batch {
                    in_batch = 0;
                    if let Some(sealed) = projection.seal().unwrap() {
                        sender.send(sealed).unwrap();
                    }
                }
            }
            if !restarted {
                if let Some(sealed) = projection.seal().unwrap() {
                    sender.send(sealed).unwrap();
                }
            }
            drop(sender);
            committer.join().unwrap();
            if !restarted {
                return (dir, store);
            }
            // The records folded since the last seal are lost with the
            // process; the next one resumes from the view's offsets.
            given = store.offsets().unwrap().values().map(|n| *n as usize).sum();
            pass += 1;
            drop(projection);
            drop(store);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]
        /// Records, digest and the published deadline index are the
        /// ledger's, with the commit a batch behind the fold and restarts
        /// in the middle of batches, for any lanes, batch and cache.
        #[test]
        fn a_pipelined_and_restarted_fold_is_the_ledger_and_so_is_its_index(
            lanes in 1usize..5,
            batch in 1usize..60,
            cache in 0usize..4,
            instances in 1u32..20,
            restarts in proptest::collection::vec(1usize..400, 0..3),
        ) {
            let log = busy_log(instances);
            let ledger = ledger_of(&log);
            let mut restarts = restarts;
            restarts.sort_unstable();
            let (_dir, store) = fold_pipelined(&log, lanes, batch, cache, &restarts);
            let checkpoint = store.checkpoint().unwrap();
            prop_assert_eq!(checkpoint.digest, ledger.checkpoint_digest());
            prop_assert_eq!(checkpoint.instances, ledger.len() as u64);
            for (id, folded) in ledger.instances() {
                prop_assert_eq!(
                    serde_json::to_value(store.record(id).unwrap().unwrap()).unwrap(),
                    serde_json::to_value(folded.record()).unwrap()
                );
            }
            let expected = index_of(&ledger);
            prop_assert_eq!(store.deadlines().snapshot(), Some(expected.clone()));
            prop_assert_eq!(store.waiting().unwrap().deadlines, expected);
        }
    }

    #[test]
    fn dropped_lanes_let_go_of_the_store_even_while_waiting_for_the_view() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open(dir.path());
        let log = busy_log(30);
        let mut projection =
            Projection::with_lanes(store.clone(), 0, 3, Arc::new(Counting::default())).unwrap();
        // Plenty queued on the lane threads, none of it sealed.
        crate::testutil::apply(&mut projection, &log);
        drop(projection);
        assert_eq!(Arc::strong_count(&store), 1, "a lane thread still holds it");

        // A lane waiting for a closed view that never comes back (nothing
        // stops it) must not hold up the drop either.
        let id = instance_id(1);
        let history = history_for(&id, 2);
        crate::testutil::fold_into(&store, &[record(0, &history[0])]);
        let mut projection =
            Projection::with_lanes(store.clone(), 0, 2, Arc::new(Counting::default())).unwrap();
        store.close_for_tests();
        assert!(projection
            .apply(
                0,
                1,
                Some(id.as_bytes()),
                Some(&warrant_schema::encode(&history[1]).unwrap())
            )
            .unwrap());
        // Flushed to the lane, which starts waiting.
        let Lanes::Threads(threads) = &mut projection.lanes_for_tests() else {
            panic!("threads");
        };
        for LaneThreadHandle(thread) in threads.iter_mut() {
            thread.send_pending(1).unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        let began = std::time::Instant::now();
        drop(projection);
        assert!(began.elapsed() < std::time::Duration::from_secs(2));
        assert_eq!(Arc::strong_count(&store), 1);
    }

    /// A lane thread that dies (here: a panic while it waits for the view)
    /// fails the seal; it never leaves the polling thread waiting.
    #[test]
    fn a_lane_thread_that_dies_fails_the_seal_instead_of_hanging_it() {
        struct Panicking;
        impl StorageWait for Panicking {
            fn wait(&self, _: &Error) -> bool {
                panic!("a lane thread dies");
            }
            fn resumed(&self) {}
        }
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open(dir.path());
        let id = instance_id(1);
        let history = history_for(&id, 3);
        crate::testutil::fold_into(&store, &[record(0, &history[0])]);
        let mut projection =
            Projection::with_lanes(store.clone(), 0, 2, Arc::new(Panicking)).unwrap();
        store.close_for_tests();
        assert!(projection
            .apply(
                0,
                1,
                Some(id.as_bytes()),
                Some(&warrant_schema::encode(&history[1]).unwrap())
            )
            .unwrap());
        let error = projection.seal().unwrap_err();
        assert!(matches!(error, Error::ThreadDied { .. }), "{error:?}");
        // And after it, folding or sealing again fails the same way.
        let again = projection.apply(
            0,
            2,
            Some(id.as_bytes()),
            Some(&warrant_schema::encode(&history[2]).unwrap()),
        );
        assert!(again.is_ok() || matches!(again, Err(Error::ThreadDied { .. })));
        assert!(matches!(projection.seal(), Err(Error::ThreadDied { .. })));
    }

    #[test]
    fn a_state_a_lane_cannot_decode_fails_the_seal_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open(dir.path());
        let id = instance_id(1);
        let history = history_for(&id, 4);
        let first: Vec<Record> = history[..2].iter().map(|e| record(0, e)).collect();
        crate::testutil::fold_into(&store, &first);
        let mut projection =
            Projection::with_lanes(store.clone(), 0, 3, Arc::new(Counting::default())).unwrap();
        store
            .db()
            .unwrap()
            .insert(crate::store::state_key(&id), &b"garbage"[..])
            .unwrap();
        let before = store.offsets().unwrap();
        // Queued to the lane thread: the error comes back from the seal.
        assert!(projection
            .apply(
                0,
                2,
                Some(id.as_bytes()),
                Some(&warrant_schema::encode(&history[2]).unwrap())
            )
            .unwrap());
        let error = projection.seal().unwrap_err();
        assert!(matches!(error, Error::Corrupt { .. }), "{error:?}");
        assert_eq!(store.offsets().unwrap(), before);
    }

    #[test]
    fn a_lane_told_to_stop_while_waiting_leaves_the_batch_unsealed() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open(dir.path());
        let id = instance_id(1);
        let history = history_for(&id, 3);
        crate::testutil::fold_into(&store, &[record(0, &history[0])]);
        let wait = Arc::new(Counting::default());
        let mut projection = Projection::with_lanes(store.clone(), 0, 2, wait.clone()).unwrap();
        // The view is closed (as during a reopen): the lane waits on its
        // read, and the projector is stopping.
        store.close_for_tests();
        wait.stop.store(true, Ordering::SeqCst);
        assert!(projection
            .apply(
                0,
                1,
                Some(id.as_bytes()),
                Some(&warrant_schema::encode(&history[1]).unwrap())
            )
            .unwrap());
        assert!(projection.seal().unwrap().is_none());
        assert!(wait.waits.load(Ordering::SeqCst) > 0);
        // Nothing of the batch may be written later either.
        assert!(projection.seal().unwrap().is_none());
    }
}
