//! The consumer side: every partition of the log, assigned by hand from the
//! offsets in sled, folded on one thread and committed on another.
//!
//! The fold thread polls, folds and seals batches; the commit thread applies
//! each batch to sled, flushes it, and only then reports progress and
//! metrics. A bounded channel between them lets the next batch be folded
//! while the previous one is written, and nothing else.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use warrant_authority::error_chain;
use warrant_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use warrant_kafka::rdkafka::error::KafkaError;
use warrant_kafka::rdkafka::types::RDKafkaErrorCode;
use warrant_kafka::rdkafka::{Message, Offset, TopicPartitionList};
use warrant_kafka::{partitions_of, watermarks, QuietContext};

use crate::error::Error;
use crate::metrics::Metrics;
use crate::projection::{Projection, Sealed};
use crate::store::Store;
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
/// How often the commit thread refreshes high watermarks for the lag gauges.
const WATERMARK_REFRESH: Duration = Duration::from_secs(2);

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
        self.check_offsets(&marks)?;

        let mut projection = Projection::new(self.store.clone(), self.config.cache_instances)?;
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
            let store = self.store.clone();
            let metrics = self.metrics.clone();
            let progress = self.progress.clone();
            let waiters = self.waiters.clone();
            let config = self.config.clone();
            let highs: BTreeMap<i32, i64> =
                marks.iter().map(|(p, (_, high))| (*p, *high)).collect();
            std::thread::Builder::new()
                .name("warrant-commit".to_owned())
                .spawn(move || {
                    commit_loop(
                        receiver, &store, &metrics, &progress, &waiters, &config, highs,
                    )
                })
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
        if let Err(Error::Corrupt { what }) = &folded {
            self.store.mark_corrupt(what);
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

    /// A view that consumed past the end of a partition, or a partition the
    /// topic no longer has, was built from another incarnation of the topic.
    fn check_offsets(&self, marks: &BTreeMap<i32, (i64, i64)>) -> Result<(), Error> {
        let stored = self.store.offsets()?;
        let mismatch = stored.iter().find_map(|(partition, next)| match marks.get(partition) {
            None => Some(format!("partition {partition} is in the view but not in the topic")),
            Some((_, high)) if next > high => Some(format!(
                "the view consumed partition {partition} up to offset {next} but the log ends at {high} (was the topic recreated?)"
            )),
            Some(_) => None,
        });
        if let Some(reason) = mismatch {
            self.store.reset(&reason)?;
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
                    if projection.apply(partition, offset, message.key(), message.payload())? {
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
                    None if reached => send(ToCommit::CaughtUp)?,
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

/// warrant-kafka's consumer settings (read_committed, no auto commit, no
/// group rebalancing: partitions are assigned by hand), with larger fetches
/// for catching up: fewer round trips per million records. Its context logs
/// the end of a partition (how the fold knows it caught up) at debug.
fn projector_consumer(config: &Config) -> Result<BaseConsumer<QuietContext>, Error> {
    config
        .kafka
        .consumer_config("warrant-projector")
        .set("max.partition.fetch.bytes", "8388608")
        .set("fetch.max.bytes", "67108864")
        .create_with_context(QuietContext)
        .map_err(|source| {
            Error::Kafka(warrant_kafka::Error::Client {
                role: "consumer",
                brokers: config.kafka.brokers.clone(),
                source,
            })
        })
}

fn commit_loop(
    receiver: mpsc::Receiver<ToCommit>,
    store: &Store,
    metrics: &Metrics,
    progress: &watch::Sender<Progress>,
    waiters: &RecordWaiters,
    config: &Config,
    mut highs: BTreeMap<i32, i64>,
) -> Result<(), Error> {
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
                let began = Instant::now();
                let (batch, written) = sealed.take_batch()?;
                store.apply(batch, sealed.seq)?;
                store.flush()?;
                waiters.committed(written.iter().map(|(id, entries)| (id.as_str(), *entries)));
                let seconds = began.elapsed().as_secs_f64();
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
            if let Some(client) = &marks_client {
                for (partition, high) in highs.iter_mut() {
                    match client.fetch_watermarks(topic, *partition, Duration::from_secs(1)) {
                        Ok((_, fresh)) => *high = fresh,
                        Err(error) => {
                            tracing::debug!(partition, error = %error, "cannot refresh the high watermark")
                        }
                    }
                }
            }
            for (partition, next) in &offsets {
                metrics.set_offset(*partition, *next, highs.get(partition).copied());
                // Nothing left to fold here: whatever the last event's age,
                // this partition is not behind.
                if highs.get(partition).is_some_and(|high| high <= next) {
                    let now = crate::unix_millis();
                    metrics.set_fold_lag(*partition, now, now);
                }
            }
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
