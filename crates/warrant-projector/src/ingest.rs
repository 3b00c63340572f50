//! The consumer side: every partition of the log (or this shard's share of
//! them, `--partitions`), assigned by hand from the offsets in sled, folded
//! by the polling thread and its lanes ([`crate::lanes`]) and committed on
//! another thread.
//!
//! The fold thread polls, hands each record to its instance's lane, and
//! seals batches; the commit thread applies each batch to sled, flushes it,
//! and only then reports progress and metrics. A bounded channel between
//! them lets the next batch be folded while the previous one is written,
//! and nothing else.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use warrant_authority::{error_chain, ranges};
use warrant_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use warrant_kafka::rdkafka::error::KafkaError;
use warrant_kafka::rdkafka::types::RDKafkaErrorCode;
use warrant_kafka::rdkafka::{Message, Offset, TopicPartitionList};
use warrant_kafka::{partitions_of, watermarks, QuietContext};

use crate::error::Error;
use crate::lanes::StorageWait;
use crate::metrics::Metrics;
use crate::projection::{Projection, Sealed};
use crate::store::{Kept, Owned, Store};
use crate::waiters::RecordWaiters;
use crate::{Config, Progress};

/// While catching up, how long the fold thread waits for a record before it
/// treats the log as drained and commits what it has. Once caught up it
/// waits for nothing: a batch is committed as soon as no record is queued
/// locally, because an executor's claim is waiting on it (librdkafka reports
/// the end of a partition only after its next, empty, fetch: up to
/// `fetch.wait.max.ms` later). Under load the commit thread's back-pressure
/// still makes batches grow.
const IDLE: Duration = Duration::from_millis(10);
/// Poll timeout while no batch is open.
const IDLE_POLL: Duration = Duration::from_millis(100);
/// Wait before the fold thread reads a state again while the view is closed.
const STORAGE_READ_RETRY: Duration = Duration::from_millis(200);
/// How often the commit thread refreshes high watermarks for the lag gauges.
const WATERMARK_REFRESH: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub(crate) struct Ingest {
    pub config: Config,
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
    pub stop: Arc<AtomicBool>,
    pub progress: watch::Sender<Progress>,
    /// Woken per written instance after each durable batch.
    pub waiters: Arc<RecordWaiters>,
}

enum ToCommit {
    Batch {
        sealed: Box<Sealed>,
        caught_up: bool,
    },
    /// Caught up without anything left to write.
    CaughtUp,
}

struct Connected {
    consumer: BaseConsumer<QuietContext>,
    /// (low, high) watermarks per partition when the fold started.
    marks: BTreeMap<i32, (i64, i64)>,
}

impl Ingest {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Sleep up to `duration`, waking early on stop; `false` when stopped.
    fn pause(&self, duration: Duration) -> bool {
        let until = Instant::now() + duration;
        while Instant::now() < until {
            if self.stopped() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50).min(until - Instant::now()));
        }
        !self.stopped()
    }

    /// Fold until stopped (or caught up, with `exit_at_end`). Blocking.
    pub fn run(self) -> Result<(), Error> {
        let Some(Connected { consumer, marks }) = self.connect()? else {
            return Ok(());
        };
        let topic = self.config.kafka.log_topic.clone();
        let owned = self.check_ownership(&marks)?;
        // Only the owned partitions are consumed, and only they count for
        // catching up (readiness), lag and progress.
        let marks: BTreeMap<i32, (i64, i64)> = marks
            .into_iter()
            .filter(|(partition, _)| owned.partitions.contains(partition))
            .collect();
        self.check_offsets(&marks, &owned)?;
        // A view of another incarnation of the topic was just cleared: its
        // old offsets are not committed progress any more.
        let offsets = self.store.offsets()?;
        self.progress.send_modify(|p| p.offsets = offsets);

        let lanes = self.config.fold_threads.max(1);
        let mut projection = Projection::with_lanes(
            self.store.clone(),
            self.config.cache_instances,
            lanes,
            Arc::new(self.clone()),
        )?;
        let mut assignment = TopicPartitionList::with_capacity(marks.len());
        for (partition, (low, _)) in &marks {
            projection.start_partition(*partition, *low);
            let start = projection.offsets().get(partition).copied().unwrap_or(*low);
            assignment
                .add_partition_offset(&topic, *partition, Offset::Offset(start.max(0)))
                .map_err(|source| Error::Assign {
                    topic: topic.clone(),
                    source,
                })?;
            tracing::info!(topic = %topic, partition, offset = start, high = marks.get(partition).map_or(0, |m| m.1), "consuming partition");
        }
        consumer
            .assign(&assignment)
            .map_err(|source| Error::Assign {
                topic: topic.clone(),
                source,
            })?;

        let (sender, receiver) = mpsc::sync_channel::<ToCommit>(1);
        let committer = {
            let shared = self.clone();
            let highs: BTreeMap<i32, i64> =
                marks.iter().map(|(p, (_, high))| (*p, *high)).collect();
            std::thread::Builder::new()
                .name("warrant-commit".to_owned())
                .spawn(move || commit_thread(receiver, &shared, highs))
                .map_err(|source| Error::Spawn {
                    name: "commit",
                    source,
                })?
        };
        let targets: BTreeMap<i32, i64> = marks.iter().map(|(p, (_, high))| (*p, *high)).collect();
        let folded = self.fold_loop(&consumer, &mut projection, &sender, &targets);
        drop(sender);
        let committed = committer
            .join()
            .unwrap_or(Err(Error::ThreadDied { name: "commit" }));
        for result in [&folded, &committed] {
            if let Err(Error::Corrupt { what }) = result {
                self.store.mark_corrupt(what);
            }
        }
        // The commit thread's own error explains a failed send best.
        match (folded, committed) {
            (Err(Error::ThreadDied { .. }), Err(error)) | (Ok(()), Err(error)) => Err(error),
            (Err(error), _) => Err(error),
            (Ok(()), Ok(())) => Ok(()),
        }
    }

    fn connect(&self) -> Result<Option<Connected>, Error> {
        let topic = &self.config.kafka.log_topic;
        let consumer = projector_consumer(&self.config)?;
        let mut delay = Duration::from_millis(500);
        loop {
            if self.stopped() {
                return Ok(None);
            }
            let marks = partitions_of(&consumer, topic).and_then(|partitions| {
                partitions
                    .into_iter()
                    .map(|p| watermarks(&consumer, topic, p).map(|marks| (p, marks)))
                    .collect::<Result<BTreeMap<_, _>, _>>()
            });
            match marks {
                Ok(marks) => return Ok(Some(Connected { consumer, marks })),
                Err(error) => {
                    tracing::warn!(topic = %topic, error = %error_chain(&error), retry_in_ms = delay.as_millis() as u64, "cannot read the log's partitions; retrying");
                    if !self.pause(delay) {
                        return Ok(None);
                    }
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    /// Resolve `--partitions` against the log's partitions and make the view
    /// hold nothing else: one that holds a partition this projector does
    /// not own now (it was another shard, or the whole log) is emptied and
    /// rebuilt from offset 0; one that holds only some of them is kept, and
    /// the others are folded from the start of the log (an instance lives
    /// in one partition, so a partition's instances are added whole).
    fn check_ownership(&self, marks: &BTreeMap<i32, (i64, i64)>) -> Result<Owned, Error> {
        let log: Vec<i32> = marks.keys().copied().collect();
        let spec = &self.config.partitions;
        let partitions = spec.resolve(&log).map_err(|error| {
            Error::Config(format!(
                "--partitions {spec} on topic {}: {error}",
                self.config.kafka.log_topic
            ))
        })?;
        let owned = Owned {
            log_partitions: i32::try_from(log.len()).unwrap_or(i32::MAX),
            partitions,
        };
        let recorded = self.store.owned()?;
        let offsets = self.store.offsets()?;
        // What the view holds: what it recorded, and every partition it has
        // offsets for. A view from before shards recorded nothing and
        // folded every partition.
        let mut held: BTreeSet<i32> = match &recorded {
            Some(recorded) => recorded.partitions.clone(),
            None if offsets.is_empty() => BTreeSet::new(),
            None => log.iter().copied().collect(),
        };
        held.extend(offsets.keys().copied());
        let list = |set: &BTreeSet<i32>| ranges(&set.iter().copied().collect::<Vec<_>>());
        if !held.is_subset(&owned.partitions) {
            let reason = format!(
                "the view holds partitions {} but this projector owns {} (--partitions {spec})",
                list(&held),
                list(&owned.partitions)
            );
            self.store.reset(&reason, Some(&owned))?;
            self.metrics.set_counts(&self.store.status_counts()?);
        } else if recorded.as_ref() != Some(&owned) {
            let added: BTreeSet<i32> = owned.partitions.difference(&held).copied().collect();
            if !held.is_empty() && !added.is_empty() {
                tracing::info!(held = %list(&held), added = %list(&added), "the view owns more partitions now; folding the new ones from the start of the log");
            }
            self.store.set_owned(&owned)?;
        }
        tracing::info!(topic = %self.config.kafka.log_topic, partitions = %list(&owned.partitions), of = owned.log_partitions, spec = %spec, "owned partitions");
        Ok(owned)
    }

    /// A view that consumed past the end of a partition, or a partition the
    /// topic no longer has, was built from another incarnation of the topic.
    fn check_offsets(&self, marks: &BTreeMap<i32, (i64, i64)>, owned: &Owned) -> Result<(), Error> {
        let stored = self.store.offsets()?;
        let mismatch = stored.iter().find_map(|(partition, next)| match marks.get(partition) {
            None => Some(format!("partition {partition} is in the view but not in the topic")),
            Some((_, high)) if next > high => Some(format!(
                "the view consumed partition {partition} up to offset {next} but the log ends at {high} (was the topic recreated?)"
            )),
            Some(_) => None,
        });
        if let Some(reason) = mismatch {
            self.store.reset(&reason, Some(owned))?;
            self.metrics.set_counts(&self.store.status_counts()?);
            return Ok(());
        }
        for (partition, (low, _)) in marks {
            if let Some(next) = stored.get(partition).filter(|next| *next < low) {
                tracing::warn!(partition, offset = next, low, "records between the view's offset and the start of the log were deleted by retention; the view cannot include them");
            }
        }
        Ok(())
    }

    /// Fold one record; while the view cannot be read for a reason that
    /// passes (closed for a reopen, a full disk), wait and read again.
    /// `None` when stopped meanwhile.
    fn fold_record(
        &self,
        projection: &mut Projection,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Result<Option<bool>, Error> {
        let mut waited = false;
        let applied = loop {
            match projection.apply(partition, offset, key, value) {
                // Nothing of this record was folded yet.
                Err(error) if error.is_storage() => {
                    // A reopen's outage is the commit thread's to report.
                    waited |= !matches!(error, Error::Unavailable);
                    if !self.wait(&error) {
                        return Ok(None);
                    }
                }
                result => break result?,
            }
        };
        if waited {
            self.resumed();
        }
        Ok(Some(applied))
    }

    fn fold_loop(
        &self,
        consumer: &BaseConsumer<QuietContext>,
        projection: &mut Projection,
        sender: &SyncSender<ToCommit>,
        targets: &BTreeMap<i32, i64>,
    ) -> Result<(), Error> {
        let batch_records = self.config.batch_records as u64;
        let batch_wait = self.config.batch_wait;
        let mut eof = BTreeSet::new();
        let mut opened: Option<Instant> = None;
        let mut announced = false;
        let send = |message: ToCommit| {
            sender
                .send(message)
                .map_err(|_| Error::ThreadDied { name: "commit" })
        };
        loop {
            if self.stopped() {
                break;
            }
            let timeout = match opened {
                Some(_) if announced => Duration::ZERO,
                Some(at) => batch_wait.saturating_sub(at.elapsed()).min(IDLE),
                None => IDLE_POLL,
            };
            let mut idle = false;
            match consumer.poll(timeout) {
                None => idle = true,
                Some(Ok(message)) => {
                    let (partition, offset) = (message.partition(), message.offset());
                    let Some(applied) = self.fold_record(
                        projection,
                        partition,
                        offset,
                        message.key(),
                        message.payload(),
                    )?
                    else {
                        return Ok(());
                    };
                    if applied {
                        opened.get_or_insert_with(Instant::now);
                        eof.remove(&partition);
                    }
                }
                Some(Err(KafkaError::PartitionEOF(partition))) => {
                    eof.insert(partition);
                    idle = true;
                }
                Some(Err(error @ KafkaError::MessageConsumptionFatal(_))) => {
                    return Err(Error::Consume {
                        topic: self.config.kafka.log_topic.clone(),
                        source: error,
                    });
                }
                Some(Err(KafkaError::Global(RDKafkaErrorCode::PartitionEOF))) => idle = true,
                Some(Err(error)) => {
                    tracing::warn!(topic = %self.config.kafka.log_topic, error = %error, "consumer error; librdkafka retries");
                }
            }
            let caught_up = targets.iter().all(|(partition, high)| {
                eof.contains(partition)
                    || projection
                        .offsets()
                        .get(partition)
                        .is_some_and(|next| next >= high)
            });
            let reached = caught_up && !announced;
            let full = projection.pending() >= batch_records;
            let due = opened.is_some_and(|at| at.elapsed() >= batch_wait);
            if full || due || reached || (idle && opened.is_some()) {
                match projection.seal()? {
                    Some(sealed) => send(ToCommit::Batch {
                        sealed: Box::new(sealed),
                        caught_up: reached,
                    })?,
                    None if reached && !self.stopped() => send(ToCommit::CaughtUp)?,
                    None => {}
                }
                opened = None;
                announced |= reached;
            }
            if caught_up && self.config.exit_at_end {
                break;
            }
        }
        // Stopping: whatever was folded is committed before the thread ends.
        if let Some(sealed) = projection.seal()? {
            send(ToCommit::Batch {
                sealed: Box::new(sealed),
                caught_up: false,
            })?;
        }
        Ok(())
    }
}

/// How the fold (on the polling thread or a lane's) waits while the view
/// cannot be read: the commit thread is reopening sled after a storage
/// error (it says so in /readyz), or the disk is full.
impl StorageWait for Ingest {
    fn wait(&self, error: &Error) -> bool {
        if matches!(error, Error::Unavailable) {
            // The commit thread logs and counts its reopens.
            tracing::debug!(error = %error_chain(error), "cannot read the view; folding waits");
        } else {
            // The fold's own wait, not the commit thread's: counted and
            // named here.
            self.metrics.storage_failed();
            self.progress
                .send_modify(|p| p.storage_error = Some(error_chain(error)));
            tracing::warn!(error = %error_chain(error), "cannot read the view; folding waits");
        }
        self.pause(STORAGE_READ_RETRY)
    }

    fn resumed(&self) {
        self.progress.send_modify(|p| p.storage_error = None);
    }
}

/// What [`write_batch`] needs of the view; the [`Store`], or a test's
/// stand-in that fails the way a full disk does.
pub(crate) trait ViewWriter {
    fn apply(&self, batch: sled::Batch, seq: u64, written: &[(String, u64)]) -> Result<(), Error>;
    fn flush(&self) -> Result<usize, Error>;
    /// See [`Store::reopen_with`]: the kept batch is durable on the new
    /// handle before anything else can read it.
    fn reopen_with(&self, kept: Kept<'_>) -> Result<(), Error>;
    fn offsets(&self) -> Result<BTreeMap<i32, i64>, Error>;
}

impl ViewWriter for Store {
    fn apply(&self, batch: sled::Batch, seq: u64, written: &[(String, u64)]) -> Result<(), Error> {
        Store::apply(self, batch, seq, written)
    }
    fn flush(&self) -> Result<usize, Error> {
        Store::flush(self)
    }
    fn reopen_with(&self, kept: Kept<'_>) -> Result<(), Error> {
        Store::reopen_with(self, Some(kept))
    }
    fn offsets(&self) -> Result<BTreeMap<i32, i64>, Error> {
        Store::offsets(self)
    }
}

/// First and longest wait between two attempts to write a batch the disk refused.
const STORAGE_RETRY_FIRST: Duration = Duration::from_millis(200);
const STORAGE_RETRY_MAX: Duration = Duration::from_secs(5);

/// Apply and flush one batch, and on a full disk keep trying instead of
/// stopping: reopen sled and write the same batch on the new handle, with
/// backoff, until it is durable or the projector is stopped. Meanwhile
/// nothing is applied after it (the fold thread blocks on the channel, or
/// waits on [`Error::Unavailable`] reads), `/readyz` says why, and the
/// failures are counted. Any other failure, of a write or of a reopen (EIO,
/// a view sled will not take back, one at the wrong offsets), is returned:
/// the projector stops with it.
///
/// Writing the batch again is safe because a batch sets absolute values
/// (states, runs under their first seq, counts, offsets) and sled applies
/// it atomically: the reopened view holds everything up to the previous
/// batch, which was flushed, and this batch either wholly or not at all.
/// It is written inside the reopen, so no reader sees the new handle
/// without it (see [`Store::reopen_with`]).
///
/// Returns how long the successful write took (the outage excluded), for
/// the commit-time metric.
// The batch, where it leads and what to do while waiting are all the
// caller's; a struct for them would only rename the parameters.
#[allow(clippy::too_many_arguments)]
pub(crate) fn write_batch(
    store: &impl ViewWriter,
    metrics: &Metrics,
    progress: &watch::Sender<Progress>,
    stop: &AtomicBool,
    batch: sled::Batch,
    seq: u64,
    written: &[(String, u64)],
    offsets: &BTreeMap<i32, i64>,
    waiting: &mut dyn FnMut(),
) -> Result<Duration, Error> {
    let before = store.offsets().ok();
    let began = Instant::now();
    let written = store
        .apply(batch.clone(), seq, written)
        .and_then(|()| store.flush().map(drop));
    let mut error = match written {
        Ok(()) => return Ok(began.elapsed()),
        Err(error) if error.is_storage() => error,
        Err(error) => return Err(error),
    };
    let mut delay = STORAGE_RETRY_FIRST;
    loop {
        metrics.storage_failed();
        tracing::error!(batch = seq, error = %error_chain(&error), retry_in_ms = delay.as_millis() as u64, "cannot write a batch to the view; folding is paused until it can be written");
        progress.send_modify(|p| p.storage_error = Some(error_chain(&error)));
        let until = Instant::now() + delay;
        while Instant::now() < until {
            if stop.load(Ordering::Acquire) {
                // Stopping: what is on disk is the previous batch, consistent.
                return Err(error);
            }
            waiting();
            std::thread::sleep(Duration::from_millis(50).min(until - Instant::now()));
        }
        delay = (delay * 2).min(STORAGE_RETRY_MAX);
        let began = Instant::now();
        let kept = Kept {
            batch: batch.clone(),
            seq,
            before: before.as_ref(),
            after: offsets,
        };
        match store.reopen_with(kept) {
            Ok(()) => {
                tracing::info!(batch = seq, "the view is writable again; folding resumes");
                progress.send_modify(|p| p.storage_error = None);
                return Ok(began.elapsed());
            }
            Err(failed) if failed.is_storage() => error = failed,
            Err(failed) => {
                tracing::error!(batch = seq, error = %error_chain(&failed), "cannot reopen the view; the projector stops");
                return Err(failed);
            }
        }
    }
}

/// warrant-kafka's consumer settings (read_committed, no auto commit, no
/// group rebalancing: partitions are assigned by hand), with fetches large
/// enough for catching up and a prefetch queue small enough for memory. Its context logs
/// the end of a partition (how the fold knows it caught up) at debug.
fn projector_consumer(config: &Config) -> Result<BaseConsumer<QuietContext>, Error> {
    config
        .kafka
        .consumer_config("warrant-projector")
        .set("max.partition.fetch.bytes", "1048576")
        .set("fetch.max.bytes", "16777216")
        // librdkafka prefetches up to this much per partition: at the
        // default (64 MiB) a catch-up buffers most of a small log in memory
        // while the fold is the slower side anyway. Per partition, so it
        // adds up: 12 partitions at 8 MiB were a fifth of the projector's
        // memory.
        .set("queued.max.messages.kbytes", "2048")
        // Once that queue is full librdkafka postpones the partition's next
        // fetch by this long (default 1 s): with the small queue above, that
        // pause, not the fold, set the pace of a catch-up (kcat with the
        // same two settings read the log six times slower).
        .set("fetch.queue.backoff.ms", "5")
        .create_with_context(QuietContext)
        .map_err(|source| {
            Error::Kafka(warrant_kafka::Error::Client {
                role: "consumer",
                brokers: config.kafka.brokers.clone(),
                source,
            })
        })
}

/// Fetch fresh high watermarks and set the lag gauges from them.
fn refresh_lag(
    client: Option<&BaseConsumer<QuietContext>>,
    topic: &str,
    highs: &mut BTreeMap<i32, i64>,
    offsets: &BTreeMap<i32, i64>,
    metrics: &Metrics,
) {
    if let Some(client) = client {
        for (partition, high) in highs.iter_mut() {
            match client.fetch_watermarks(topic, *partition, Duration::from_secs(1)) {
                Ok((_, fresh)) => *high = fresh,
                Err(error) => {
                    tracing::debug!(partition, error = %error, "cannot refresh the high watermark")
                }
            }
        }
    }
    for (partition, next) in offsets {
        metrics.set_offset(*partition, *next, highs.get(partition).copied());
        // Nothing left to fold here: whatever the last event's age, this
        // partition is not behind.
        if highs.get(partition).is_some_and(|high| high <= next) {
            let now = crate::unix_millis();
            metrics.set_fold_lag(*partition, now, now);
        }
    }
}

/// The commit thread: [`commit_loop`], and on its failure a stop.
fn commit_thread(
    receiver: mpsc::Receiver<ToCommit>,
    shared: &Ingest,
    highs: BTreeMap<i32, i64>,
) -> Result<(), Error> {
    let committed = commit_loop(receiver, shared, highs);
    if committed.is_err() {
        // The fold thread may be waiting for the view to come back (a read
        // retried while the view is closed): it never will. Stop it, so that
        // run() returns this error and the projector exits non-zero.
        shared.stop.store(true, Ordering::Release);
    }
    committed
}

fn commit_loop(
    receiver: mpsc::Receiver<ToCommit>,
    shared: &Ingest,
    mut highs: BTreeMap<i32, i64>,
) -> Result<(), Error> {
    let Ingest {
        config,
        store,
        metrics,
        stop,
        progress,
        waiters,
    } = shared;
    let topic = &config.kafka.log_topic;
    // A client of its own for watermarks: the fold thread's is busy polling.
    let marks_client = match projector_consumer(config) {
        Ok(client) => Some(client),
        Err(error) => {
            tracing::warn!(error = %error_chain(&error), "cannot create a client for watermarks; lag metrics stay stale");
            None
        }
    };
    let started = Instant::now();
    let mut refreshed = Instant::now();
    let mut logged = Instant::now();
    let mut records_at_log = 0u64;
    let mut offsets: BTreeMap<i32, i64> = BTreeMap::new();
    loop {
        match receiver.recv_timeout(Duration::from_secs(1)) {
            Ok(ToCommit::Batch {
                mut sealed,
                caught_up,
            }) => {
                let (batch, written) = sealed.take_batch();
                let took = write_batch(
                    store.as_ref(),
                    metrics,
                    progress,
                    stop,
                    batch,
                    sealed.seq,
                    &written,
                    &sealed.offsets,
                    // The lag gauges keep moving while the disk is full:
                    // the log grows, the view does not.
                    &mut || {
                        if refreshed.elapsed() >= WATERMARK_REFRESH {
                            refreshed = Instant::now();
                            refresh_lag(
                                marks_client.as_ref(),
                                topic,
                                &mut highs,
                                &offsets,
                                metrics,
                            );
                        }
                    },
                )?;
                waiters.committed(written.iter().map(|(id, entries)| (id.as_str(), *entries)));
                // In batch order, and only once durable: the sweeper never
                // sees a deadline of a state that could still be lost.
                store.deadlines().apply(&sealed.deadlines);
                let seconds = took.as_secs_f64();
                // Durable from here on: report it.
                metrics.committed(&sealed.stats, &sealed.counts, seconds);
                metrics.set_oldest_paused(sealed.oldest_paused);
                let now = crate::unix_millis();
                for (partition, at) in &sealed.stats.last_recorded_at {
                    metrics.set_fold_lag(*partition, now, *at);
                }
                for (partition, next) in &sealed.offsets {
                    metrics.set_offset(*partition, *next, highs.get(partition).copied());
                }
                offsets.clone_from(&sealed.offsets);
                tracing::debug!(
                    batch = sealed.seq,
                    records = sealed.stats.records,
                    seconds,
                    "batch committed"
                );
                progress.send_modify(|p| {
                    p.offsets.clone_from(&sealed.offsets);
                    p.records += sealed.stats.records;
                    p.batches += 1;
                    p.caught_up |= caught_up;
                });
                let total = progress.borrow().records;
                if caught_up {
                    let elapsed = started.elapsed().as_secs_f64();
                    tracing::info!(topic = %topic, records = total, seconds = elapsed, records_per_sec = (total as f64 / elapsed.max(1e-9)) as u64, "caught up with the log");
                }
            }
            Ok(ToCommit::CaughtUp) => {
                progress.send_modify(|p| p.caught_up = true);
                tracing::info!(topic = %topic, "caught up with the log");
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        }
        if refreshed.elapsed() >= WATERMARK_REFRESH {
            refreshed = Instant::now();
            refresh_lag(marks_client.as_ref(), topic, &mut highs, &offsets, metrics);
        }
        if logged.elapsed() >= config.progress_interval {
            let records = progress.borrow().records;
            if records > records_at_log {
                let lag: i64 = offsets
                    .iter()
                    .map(|(partition, next)| {
                        highs.get(partition).map_or(0, |high| (high - next).max(0))
                    })
                    .sum();
                let rate = (records - records_at_log) as f64 / logged.elapsed().as_secs_f64();
                tracing::info!(topic = %topic, records, records_per_sec = rate as u64, lag, "folding");
                records_at_log = records;
            }
            logged = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::atomic::AtomicUsize;
    use std::sync::Mutex;

    use super::*;

    /// A view whose writes fail `failures` times with a full disk, then work.
    struct FullDisk {
        failures: AtomicUsize,
        reopened: AtomicUsize,
        /// Calls of `write_batch`'s `waiting` (the lag gauges' refresh).
        waited: AtomicUsize,
        applied: Mutex<Vec<u64>>,
        /// What `offsets` answers after a reopen.
        offsets_after_reopen: BTreeMap<i32, i64>,
        error: fn() -> Error,
    }

    fn disk_full() -> Error {
        Error::Sled {
            op: "flush",
            source: sled::Error::Io(std::io::Error::from(std::io::ErrorKind::StorageFull)),
        }
    }

    impl FullDisk {
        fn new(failures: usize) -> FullDisk {
            FullDisk {
                failures: AtomicUsize::new(failures),
                reopened: AtomicUsize::new(0),
                waited: AtomicUsize::new(0),
                applied: Mutex::new(Vec::new()),
                offsets_after_reopen: BTreeMap::from([(0, 10)]),
                error: disk_full,
            }
        }
    }

    impl ViewWriter for FullDisk {
        fn apply(
            &self,
            _batch: sled::Batch,
            seq: u64,
            _written: &[(String, u64)],
        ) -> Result<(), Error> {
            self.applied.lock().unwrap().push(seq);
            Ok(())
        }
        fn flush(&self) -> Result<usize, Error> {
            let left = self.failures.load(Ordering::SeqCst);
            if left > 0 {
                self.failures.store(left - 1, Ordering::SeqCst);
                return Err((self.error)());
            }
            Ok(0)
        }
        fn reopen_with(&self, kept: Kept<'_>) -> Result<(), Error> {
            self.reopened.fetch_add(1, Ordering::SeqCst);
            let now = self.offsets_after_reopen.clone();
            if kept.before.is_some_and(|before| *before != now) && now != *kept.after {
                return Err(Error::corrupt("offsets"));
            }
            self.apply(kept.batch, kept.seq, &[])?;
            self.flush().map(drop)
        }
        fn offsets(&self) -> Result<BTreeMap<i32, i64>, Error> {
            Ok(if self.reopened.load(Ordering::SeqCst) == 0 {
                BTreeMap::from([(0, 10)])
            } else {
                self.offsets_after_reopen.clone()
            })
        }
    }

    fn write(
        view: &FullDisk,
        stop: &AtomicBool,
    ) -> (
        Result<(), Error>,
        Metrics,
        watch::Receiver<Progress>,
        Vec<Option<String>>,
    ) {
        let metrics = Metrics::new();
        let (progress, seen) = watch::channel(Progress::default());
        let mut watcher = seen.clone();
        let reasons = std::thread::scope(|scope| {
            let collect = scope.spawn(move || {
                let mut reasons = Vec::new();
                while watcher.has_changed().is_ok() {
                    if watcher.has_changed().unwrap_or(false) {
                        reasons.push(watcher.borrow_and_update().storage_error.clone());
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                reasons
            });
            let result = write_batch(
                view,
                &metrics,
                &progress,
                stop,
                sled::Batch::default(),
                7,
                &[],
                &BTreeMap::from([(0, 20)]),
                &mut || {
                    view.waited.fetch_add(1, Ordering::SeqCst);
                },
            );
            drop(progress);
            (result, collect.join().unwrap())
        });
        (reasons.0.map(drop), metrics, seen, reasons.1)
    }

    #[test]
    fn a_batch_the_disk_refuses_is_written_again_after_a_reopen_and_readiness_says_why() {
        let view = FullDisk::new(2);
        let (result, metrics, progress, reasons) = write(&view, &AtomicBool::new(false));
        result.unwrap();
        // Written three times (two refused), on a view reopened twice.
        assert_eq!(*view.applied.lock().unwrap(), vec![7, 7, 7]);
        assert_eq!(view.reopened.load(Ordering::SeqCst), 2);
        assert_eq!(metrics.storage_errors.get(), 2);
        // The lag gauges were given their chance to move while it waited.
        assert!(view.waited.load(Ordering::SeqCst) > 0);
        // While refused, the progress named the disk's error; once written, nothing.
        assert!(
            reasons
                .iter()
                .any(|r| r.as_deref().is_some_and(|r| r.contains("no storage space"))),
            "{reasons:?}"
        );
        assert_eq!(progress.borrow().storage_error, None);
    }

    #[test]
    fn stopping_while_the_disk_is_full_gives_up_on_the_batch() {
        let view = FullDisk::new(usize::MAX);
        let stop = AtomicBool::new(true);
        let (result, metrics, _, _) = write(&view, &stop);
        assert!(result.unwrap_err().is_storage());
        assert_eq!(metrics.storage_errors.get(), 1);
        assert_eq!(view.reopened.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn errors_that_are_not_the_disks_are_not_retried() {
        let mut view = FullDisk::new(1);
        view.error = || Error::corrupt("bad bytes");
        let (result, metrics, _, _) = write(&view, &AtomicBool::new(false));
        assert!(matches!(result, Err(Error::Corrupt { .. })));
        assert_eq!(metrics.storage_errors.get(), 0);
        assert_eq!(*view.applied.lock().unwrap(), vec![7]);
    }

    #[test]
    fn io_errors_other_than_a_full_disk_stop_instead_of_retrying() {
        for error in [
            || Error::Sled {
                op: "flush",
                source: sled::Error::Io(std::io::Error::from_raw_os_error(5)), // EIO
            },
            || Error::Sled {
                op: "flush",
                source: sled::Error::Io(std::io::Error::from_raw_os_error(30)), // EROFS
            },
            || Error::Sled {
                op: "flush",
                source: sled::Error::Io(std::io::Error::from(std::io::ErrorKind::UnexpectedEof)),
            },
        ] {
            let mut view = FullDisk::new(1);
            view.error = error;
            let (result, metrics, _, _) = write(&view, &AtomicBool::new(false));
            assert!(matches!(result, Err(Error::Sled { .. })), "{result:?}");
            assert_eq!(view.reopened.load(Ordering::SeqCst), 0);
            assert_eq!(metrics.storage_errors.get(), 0);
        }
    }

    fn ingest(store: Arc<Store>, dir: &std::path::Path) -> (Ingest, watch::Receiver<Progress>) {
        let (progress, seen) = watch::channel(Progress::default());
        let ingest = Ingest {
            config: Config::new(warrant_kafka::KafkaArgs::default(), dir),
            store,
            metrics: Arc::new(Metrics::new()),
            stop: Arc::new(AtomicBool::new(false)),
            progress,
            waiters: Arc::new(RecordWaiters::new(16)),
        };
        (ingest, seen)
    }

    /// Watermarks of a log of `n` partitions.
    fn log_of(n: i32) -> BTreeMap<i32, (i64, i64)> {
        (0..n).map(|p| (p, (0, 100))).collect()
    }

    fn sharded(store: &Arc<Store>, dir: &std::path::Path, spec: &str) -> Result<Owned, Error> {
        let (mut ingest, _) = ingest(store.clone(), dir);
        ingest.config.partitions = spec.parse().unwrap();
        ingest.check_ownership(&log_of(6))
    }

    fn owned(partitions: &[i32]) -> Owned {
        Owned {
            log_partitions: 6,
            partitions: partitions.iter().copied().collect(),
        }
    }

    /// A view of instances on partitions 0 and 1, as a projector from
    /// before shards left it (nothing recorded about ownership).
    fn legacy_view(dir: &std::path::Path) -> Arc<Store> {
        use crate::testutil::{history_for, instance_id, record};
        let (store, _) = crate::testutil::open(&dir.join("view"));
        let mut log: Vec<_> = history_for(&instance_id(1), 3)
            .iter()
            .map(|e| record(0, e))
            .collect();
        log.extend(history_for(&instance_id(2), 3).iter().map(|e| record(1, e)));
        crate::testutil::fold_into(&store, &log);
        store
    }

    #[test]
    fn a_fresh_view_records_the_partitions_it_owns() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = crate::testutil::open(&dir.path().join("view"));
        assert_eq!(
            sharded(&store, dir.path(), "3-5").unwrap(),
            owned(&[3, 4, 5])
        );
        assert_eq!(store.owned().unwrap(), Some(owned(&[3, 4, 5])));
        assert_eq!(store.checkpoint().unwrap().owned, Some([3, 4, 5].into()));
    }

    #[test]
    fn a_view_from_before_shards_is_kept_for_all_and_rebuilt_for_a_share() {
        let dir = tempfile::tempdir().unwrap();
        let store = legacy_view(dir.path());
        let before = store.checkpoint().unwrap();
        assert_eq!(
            sharded(&store, dir.path(), "all").unwrap(),
            owned(&[0, 1, 2, 3, 4, 5])
        );
        let kept = store.checkpoint().unwrap();
        assert_eq!((kept.digest, kept.instances), (before.digest, 2));

        let dir = tempfile::tempdir().unwrap();
        let store = legacy_view(dir.path());
        assert_eq!(
            sharded(&store, dir.path(), "3-5").unwrap(),
            owned(&[3, 4, 5])
        );
        // It held partitions it does not own any more: emptied, from offset 0.
        assert_eq!(store.offsets().unwrap(), BTreeMap::new());
        assert_eq!(store.status_counts().unwrap().total(), 0);
        assert_eq!(store.owned().unwrap(), Some(owned(&[3, 4, 5])));
    }

    #[test]
    fn a_shard_that_owns_more_keeps_its_view_and_one_that_owns_others_rebuilds() {
        let dir = tempfile::tempdir().unwrap();
        let store = legacy_view(dir.path());
        store.set_owned(&owned(&[0, 1])).unwrap();
        // 0-1 grows to 0-2: partition 2's instances are folded from its start.
        assert_eq!(
            sharded(&store, dir.path(), "0-2").unwrap(),
            owned(&[0, 1, 2])
        );
        assert_eq!(store.status_counts().unwrap().total(), 2);
        assert_eq!(store.owned().unwrap(), Some(owned(&[0, 1, 2])));
        // 0-2 becomes shard 1 of 2 (1, 3, 5): it holds 0, so it is rebuilt.
        assert_eq!(
            sharded(&store, dir.path(), "1/2").unwrap(),
            owned(&[1, 3, 5])
        );
        assert_eq!(store.status_counts().unwrap().total(), 0);
        assert_eq!(store.owned().unwrap(), Some(owned(&[1, 3, 5])));
    }

    #[test]
    fn partitions_the_log_does_not_have_stop_the_projector_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = crate::testutil::open(&dir.path().join("view"));
        for (spec, says) in [
            ("4-7", "partitions 6-7 are not in the log, which has 0-5"),
            ("6/8", "owns none of the log's partitions"),
        ] {
            let error = sharded(&store, dir.path(), spec).unwrap_err();
            assert!(matches!(error, Error::Config(_)), "{error:?}");
            let text = error.to_string();
            assert!(text.contains(says) && text.contains(spec), "{text}");
        }
        // Nothing was recorded for a spec that cannot be served.
        assert_eq!(store.owned().unwrap(), None);
    }

    /// Two instances, A's history interrupted by B's first event: folded as
    /// batches `[0..4]`, `[4..6]` (A), `[6..7]` (B), the rest.
    fn two_instances() -> Vec<crate::testutil::Record> {
        use crate::testutil::{history_for, instance_id, record};
        let a: Vec<_> = history_for(&instance_id(1), 8)
            .iter()
            .map(|e| record(0, e))
            .collect();
        let b: Vec<_> = history_for(&instance_id(2), 3)
            .iter()
            .map(|e| record(0, e))
            .collect();
        [&a[..6], &b[..1], &a[6..], &b[1..]].concat()
    }

    /// Where [`folded_to_the_third_batch`] leaves the fold.
    struct Folded {
        projection: Projection,
        /// Offsets of the first batch, flushed.
        flushed: BTreeMap<i32, i64>,
        /// The second batch, applied but not flushed.
        second: (sled::Batch, u64, BTreeMap<i32, i64>),
        third: Sealed,
    }

    /// A projection with the first batch of [`two_instances`] committed, the
    /// second applied, and the third sealed, which let the cache drop A's
    /// states (`cache_limit` 0): the next A event reads A from the store.
    fn folded_to_the_third_batch(store: &Arc<Store>, log: &[crate::testutil::Record]) -> Folded {
        let mut projection = Projection::new(store.clone(), 0).unwrap();
        crate::testutil::apply(&mut projection, &log[..4]);
        projection.commit_now().unwrap();
        let flushed = store.offsets().unwrap();
        crate::testutil::apply(&mut projection, &log[4..6]);
        let mut second = projection.seal().unwrap().unwrap();
        let (batch, written) = second.take_batch();
        store.apply(batch.clone(), second.seq, &written).unwrap();
        crate::testutil::apply(&mut projection, &log[6..7]);
        let third = projection.seal().unwrap().unwrap();
        Folded {
            projection,
            flushed,
            second: (batch, second.seq, second.offsets.clone()),
            third,
        }
    }

    /// Fold `log[7]` on another thread once the view is closed.
    fn fold_once_closed(
        ingest: &Ingest,
        mut projection: Projection,
        log: &[crate::testutil::Record],
    ) -> std::thread::JoinHandle<(Result<Option<bool>, Error>, Projection)> {
        let ingest = ingest.clone();
        let (partition, key, value) = log[7].clone();
        std::thread::spawn(move || {
            while ingest.store.offsets().is_ok() {
                std::thread::sleep(Duration::from_millis(5));
            }
            let applied = ingest.fold_record(
                &mut projection,
                partition,
                7,
                key.as_deref(),
                value.as_deref(),
            );
            (applied, projection)
        })
    }

    #[test]
    fn a_reopen_that_fails_for_good_stops_the_projector_instead_of_hanging() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = crate::testutil::open(&dir.path().join("view"));
        let log = two_instances();
        let Folded {
            projection, third, ..
        } = folded_to_the_third_batch(&store, &log);
        store.flush().unwrap();
        // A read found bad bytes (the next start must rebuild), and the
        // flush of the next batch fails: the reopen finds the mark.
        store.mark_corrupt("a test");
        store.fail_flushes(1);
        let (ingest, progress) = ingest(store.clone(), dir.path());
        let (sender, receiver) = mpsc::sync_channel(1);
        let committer = {
            let shared = ingest.clone();
            std::thread::spawn(move || commit_thread(receiver, &shared, BTreeMap::new()))
        };
        // Meanwhile the fold waits for the view to come back: it must be
        // stopped, not left retrying a view that never reopens.
        let folded = fold_once_closed(&ingest, projection, &log);
        sender
            .send(ToCommit::Batch {
                sealed: Box::new(third),
                caught_up: false,
            })
            .unwrap();
        let committed = committer.join().unwrap();
        assert!(
            matches!(committed, Err(Error::Corrupt { .. })),
            "{committed:?}"
        );
        assert!(ingest.stopped());
        assert!(matches!(folded.join().unwrap().0, Ok(None)));
        assert!(progress.borrow().storage_error.is_some());
    }

    #[test]
    fn the_fold_waits_while_the_view_is_closed_and_reads_the_kept_batch_after() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = crate::testutil::open(&dir.path().join("view"));
        let log = two_instances();
        let Folded {
            projection,
            flushed,
            second: (batch, seq, offsets),
            mut third,
        } = folded_to_the_third_batch(&store, &log);
        let kept = || Kept {
            batch: batch.clone(),
            seq,
            before: Some(&flushed),
            after: &offsets,
        };
        // The second batch's flush is refused, and so is the reopen's write
        // of it: the view stays closed rather than open one batch behind.
        store.fail_flushes(2);
        assert!(store.flush().unwrap_err().is_storage());
        assert!(store.reopen_with(Some(kept())).unwrap_err().is_storage());
        let (ingest, _) = ingest(store.clone(), dir.path());
        let folded = fold_once_closed(&ingest, projection, &log);
        std::thread::sleep(Duration::from_millis(300));
        assert!(!folded.is_finished(), "the fold read a closed view");
        store.reopen_with(Some(kept())).unwrap();
        let (applied, mut projection) = folded.join().unwrap();
        assert_eq!(applied.unwrap(), Some(true));
        // A's event 7 folded onto A's state with the second batch's events:
        // the view ends where the shared ledger does, every history whole.
        let (batch, written) = third.take_batch();
        store.apply(batch, third.seq, &written).unwrap();
        store.flush().unwrap();
        crate::testutil::apply(&mut projection, &log[8..]);
        projection.commit_now().unwrap();
        let ledger = crate::testutil::ledger_of(&log);
        assert_eq!(
            store.checkpoint().unwrap().digest,
            ledger.checkpoint_digest()
        );
        for n in [1, 2] {
            let id = crate::testutil::instance_id(n);
            let (state, _) = store.history(&id).unwrap().unwrap();
            assert_eq!(state.head, ledger.get(&id).unwrap().state.head);
        }
    }

    #[test]
    fn a_reopened_view_at_neither_batch_is_corrupt() {
        // Offsets before the batch are {0: 10}, the batch writes {0: 20}:
        // a reopened view holding {0: 20} had the batch applied already.
        let mut applied = FullDisk::new(1);
        applied.offsets_after_reopen = BTreeMap::from([(0, 20)]);
        write(&applied, &AtomicBool::new(false)).0.unwrap();

        let mut elsewhere = FullDisk::new(1);
        elsewhere.offsets_after_reopen = BTreeMap::from([(0, 3)]);
        let (result, _, _, _) = write(&elsewhere, &AtomicBool::new(false));
        assert!(matches!(result, Err(Error::Corrupt { .. })), "{result:?}");
    }
}
