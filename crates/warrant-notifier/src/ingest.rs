//! The fold thread: every partition of the log, assigned by hand from the
//! offsets in the store, folded with `warrant_authority::step`, each entry
//! turned into notifications by [`crate::derive`], routed to channels, and
//! committed with the states, offsets and reminder schedule in one batch.
//!
//! It is the store's only writer of states, offsets, the schedule and new
//! outbox entries, and it also fires reminders, so a reminder can never
//! race the entry that makes it moot: both are decided on this thread, in
//! log order, against the same state.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use warrant_authority::{
    error_chain, instance_for_key, step, InstanceState, LogEvent, LogPosition,
};
use warrant_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use warrant_kafka::rdkafka::error::KafkaError;
use warrant_kafka::rdkafka::types::RDKafkaErrorCode;
use warrant_kafka::rdkafka::{Message, Offset, TopicPartitionList};
use warrant_kafka::{partitions_of, watermarks, QuietContext};

use crate::channels::Channels;
use crate::derive::{derive, reminder, reminder_due};
use crate::error::Error;
use crate::metrics::{KindLabel, Metrics};
use crate::notification::Notification;
use crate::store::{BatchWriter, Pending, Store};
use crate::{unix_millis, Config, Progress};

/// Poll timeout while no batch is open.
const IDLE_POLL: Duration = Duration::from_millis(100);
/// States kept in memory between batches before the cache is dropped.
const CACHE_LIMIT: usize = 50_000;
/// How often the lag thread refreshes high watermarks.
const WATERMARK_REFRESH: Duration = Duration::from_secs(2);

pub(crate) struct Ingest {
    pub config: Config,
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
    pub channels: watch::Receiver<Arc<Channels>>,
    pub stop: Arc<AtomicBool>,
    pub progress: watch::Sender<Progress>,
    pub deliver: mpsc::UnboundedSender<Pending>,
}

/// The consumer and the (low, high) watermarks per partition at start.
type Connected = (BaseConsumer<QuietContext>, BTreeMap<i32, (i64, i64)>);

/// What the open batch holds.
#[derive(Default)]
struct Open {
    writer: BatchWriter,
    dirty: HashSet<String>,
    pending: Vec<Pending>,
    records: u64,
    opened: Option<Instant>,
}

struct Fold<'a> {
    ingest: &'a Ingest,
    cache: HashMap<String, InstanceState>,
    /// (decision deadline, instance id) of every instance that may still
    /// get a reminder; mirrors the store's `r` table.
    schedule: BTreeSet<(i64, String)>,
    /// Paused instances whose reminder has fired: the next event of such an
    /// instance (a refused decision, an approval short of quorum) must not
    /// schedule it again. Mirrors the `f` table.
    fired: HashSet<String>,
    offsets: BTreeMap<i32, i64>,
    open: Open,
}

impl Ingest {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

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

    /// Fold until stopped. Blocking.
    pub fn run(self) -> Result<(), Error> {
        let Some((consumer, marks)) = self.connect()? else {
            return Ok(());
        };
        let topic = self.config.kafka.log_topic.clone();
        let stored = self.store.offsets()?;
        for (partition, next) in &stored {
            match marks.get(partition) {
                None => {
                    return Err(Error::Config(format!(
                        "the store consumed partition {partition} of {topic}, which the topic does not have (was it recreated?)"
                    )))
                }
                Some((_, high)) if next > high => {
                    return Err(Error::Config(format!(
                        "the store consumed partition {partition} of {topic} up to offset {next} but the log ends at {high} (was it recreated?)"
                    )))
                }
                Some(_) => {}
            }
        }
        let mut assignment = TopicPartitionList::with_capacity(marks.len());
        let mut offsets = BTreeMap::new();
        for (partition, (low, high)) in &marks {
            let start = stored.get(partition).copied().unwrap_or(*low).max(*low);
            offsets.insert(*partition, start);
            self.metrics.set_offset(*partition, start, Some(*high));
            assignment
                .add_partition_offset(&topic, *partition, Offset::Offset(start))
                .map_err(|source| Error::Assign {
                    topic: topic.clone(),
                    source,
                })?;
            tracing::info!(topic = %topic, partition, offset = start, high, "consuming partition");
        }
        consumer
            .assign(&assignment)
            .map_err(|source| Error::Assign {
                topic: topic.clone(),
                source,
            })?;
        let shared_offsets = Arc::new(Mutex::new(offsets.clone()));
        self.spawn_lag_thread(shared_offsets.clone());

        let mut fold = Fold {
            ingest: &self,
            cache: HashMap::new(),
            schedule: self.store.reminders()?.into_iter().collect(),
            fired: self.store.fired()?,
            offsets,
            open: Open::default(),
        };
        let targets: BTreeMap<i32, i64> = marks.iter().map(|(p, (_, high))| (*p, *high)).collect();
        let mut eof = BTreeSet::new();
        let mut announced = false;
        let mut last_reminders = Instant::now() - Duration::from_secs(1);
        while !self.stopped() {
            let timeout = if fold.open.opened.is_some() {
                Duration::ZERO
            } else {
                IDLE_POLL
            };
            let mut idle = false;
            match consumer.poll(timeout) {
                None => idle = true,
                Some(Ok(message)) => {
                    let partition = message.partition();
                    fold.apply(
                        partition,
                        message.offset(),
                        message.key(),
                        message.payload(),
                    )?;
                    eof.remove(&partition);
                }
                Some(Err(KafkaError::PartitionEOF(partition))) => {
                    eof.insert(partition);
                    idle = true;
                }
                Some(Err(KafkaError::Global(RDKafkaErrorCode::PartitionEOF))) => idle = true,
                Some(Err(error @ KafkaError::MessageConsumptionFatal(_))) => {
                    return Err(Error::Consume {
                        topic,
                        source: error,
                    });
                }
                Some(Err(error)) => {
                    tracing::warn!(topic = %topic, error = %error, "consumer error; librdkafka retries");
                }
            }
            let caught_up = targets.iter().all(|(partition, high)| {
                eof.contains(partition) || fold.offsets.get(partition).is_some_and(|n| n >= high)
            });
            // Reminders are checked a few times a second, between records,
            // and only once caught up: a state read back while the log
            // still holds its decision would remind reviewers of something
            // already decided.
            if announced && last_reminders.elapsed() >= Duration::from_millis(100) {
                fold.fire_reminders(unix_millis())?;
                last_reminders = Instant::now();
            }
            let full = fold.open.records >= self.config.batch_records as u64;
            let due = fold
                .open
                .opened
                .is_some_and(|at| at.elapsed() >= self.config.batch_wait);
            if full || due || idle || (caught_up && !announced) {
                fold.commit()?;
                *shared_offsets
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = fold.offsets.clone();
                if caught_up && !announced {
                    announced = true;
                    tracing::info!(topic = %topic, "caught up with the log");
                }
                let offsets = fold.offsets.clone();
                self.progress.send_if_modified(|p| {
                    let changed = p.offsets != offsets || p.caught_up != announced;
                    p.offsets = offsets;
                    p.caught_up = announced;
                    changed
                });
            }
        }
        fold.commit()?;
        Ok(())
    }

    fn connect(&self) -> Result<Option<Connected>, Error> {
        let topic = &self.config.kafka.log_topic;
        let consumer = consumer(&self.config)?;
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
                Ok(marks) => return Ok(Some((consumer, marks))),
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

    /// Lag per partition from a client of its own: the fold thread never
    /// waits on a metadata request.
    fn spawn_lag_thread(&self, offsets: Arc<Mutex<BTreeMap<i32, i64>>>) {
        let (config, metrics, stop) =
            (self.config.clone(), self.metrics.clone(), self.stop.clone());
        let spawned = std::thread::Builder::new()
            .name("warrant-lag".to_owned())
            .spawn(move || {
                let Ok(client) = consumer(&config) else {
                    tracing::warn!("cannot create a client for watermarks; lag metrics stay stale");
                    return;
                };
                let topic = &config.kafka.log_topic;
                while !stop.load(Ordering::Acquire) {
                    let current = offsets
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .clone();
                    for (partition, next) in current {
                        if let Ok((_, high)) = watermarks(&client, topic, partition) {
                            metrics.set_offset(partition, next, Some(high));
                        }
                    }
                    let until = Instant::now() + WATERMARK_REFRESH;
                    while Instant::now() < until && !stop.load(Ordering::Acquire) {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            });
        if let Err(error) = spawned {
            tracing::warn!(error = %error, "cannot start the lag thread; lag metrics stay stale");
        }
    }
}

impl Fold<'_> {
    fn state(&mut self, instance_id: &str) -> Result<InstanceState, Error> {
        if let Some(state) = self.cache.remove(instance_id) {
            return Ok(state);
        }
        Ok(self
            .ingest
            .store
            .state(instance_id)?
            .unwrap_or_else(|| InstanceState::new(instance_id)))
    }

    fn apply(
        &mut self,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Result<(), Error> {
        if self
            .offsets
            .get(&partition)
            .is_some_and(|next| offset < *next)
        {
            tracing::warn!(partition, offset, "record before the folded offset skipped");
            return Ok(());
        }
        let instance_id = instance_for_key(key, partition);
        let mut state = self.state(&instance_id)?;
        let entry = step(
            &mut state,
            LogEvent::decode(LogPosition { partition, offset }, value.unwrap_or_default()),
        );
        let notify = entry
            .recorded_at
            .is_some_and(|at| at >= self.ingest.store.since());
        if notify {
            for notification in derive(&entry, &state) {
                self.queue(notification);
            }
        }
        self.reschedule(&state);
        self.ingest.metrics.records_folded.inc();
        self.offsets.insert(partition, offset + 1);
        self.open.writer.offset(partition, offset + 1);
        self.open.records += 1;
        self.open.opened.get_or_insert_with(Instant::now);
        self.open.dirty.insert(instance_id.clone());
        self.cache.insert(instance_id, state);
        Ok(())
    }

    /// Route `notification` to every channel that takes it, in the open batch.
    fn queue(&mut self, mut notification: Notification) {
        self.ingest
            .metrics
            .derived
            .get_or_create(&KindLabel {
                kind: notification.kind.as_str(),
            })
            .inc();
        notification.links = self.ingest.config.links.links(&notification.instance_id);
        let channels = self.ingest.channels.borrow().clone();
        let mut routed = false;
        for channel in channels.route(&notification) {
            let pending = Pending::new(&channel.name, notification.clone());
            match self.open.writer.pending(&pending) {
                Ok(()) => {
                    routed = true;
                    self.open.pending.push(pending);
                }
                Err(error) => {
                    tracing::error!(error = %error_chain(&error), "cannot encode a notification")
                }
            }
        }
        if !routed {
            tracing::debug!(id = %notification.id, kind = %notification.kind, instance_id = %notification.instance_id, "no channel takes this notification");
        }
    }

    fn reschedule(&mut self, state: &InstanceState) {
        let lead = self.ingest.config.reminder_before_ms;
        let Some(instance) = state.instance() else {
            return;
        };
        let id = &state.instance_id;
        let key = (instance.proposal.decision_deadline, id.clone());
        let wanted = lead > 0 && reminder_due(state, lead).is_some();
        let scheduled = self.schedule.contains(&key);
        if wanted {
            if !scheduled && !self.fired.contains(id) {
                self.open.writer.schedule(key.0, &key.1);
                self.schedule.insert(key);
            }
            return;
        }
        if scheduled {
            self.open.writer.unschedule(key.0, &key.1);
            self.schedule.remove(&key);
        }
        // No longer paused, and no status leads back to a pause.
        if self.fired.remove(id) {
            self.open.writer.unfired(id);
        }
    }

    /// Send every reminder due by `now` that is still wanted, and drop it
    /// from the schedule either way; committed at once.
    fn fire_reminders(&mut self, now: i64) -> Result<(), Error> {
        let lead = self.ingest.config.reminder_before_ms;
        if lead <= 0 {
            return Ok(());
        }
        let due: Vec<(i64, String)> = self
            .schedule
            .iter()
            .take_while(|(deadline, _)| deadline.saturating_sub(lead) <= now)
            .cloned()
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        for key in due {
            let state = self.state(&key.1)?;
            if let Some(notification) = reminder(&state, now, lead) {
                tracing::info!(instance_id = %key.1, deadline = key.0, "reminder due");
                self.queue(notification);
            }
            self.cache.insert(key.1.clone(), state);
            self.open.writer.unschedule(key.0, &key.1);
            self.open.writer.fired(&key.1);
            self.fired.insert(key.1.clone());
            self.schedule.remove(&key);
        }
        self.commit()
    }

    /// Write the open batch (states, offsets, schedule, outbox) atomically,
    /// flush it, and only then hand the new deliveries to the channels.
    fn commit(&mut self) -> Result<(), Error> {
        if self.open.writer.writes == 0 && self.open.dirty.is_empty() {
            self.open = Open::default();
            return Ok(());
        }
        let mut open = std::mem::take(&mut self.open);
        for id in open.dirty.drain() {
            if let Some(state) = self.cache.get(&id) {
                open.writer.state(state)?;
            }
        }
        self.ingest.store.apply(open.writer.into_batch())?;
        self.ingest.store.flush()?;
        for (partition, next) in &self.offsets {
            self.ingest.metrics.set_offset(*partition, *next, None);
        }
        for pending in open.pending {
            self.ingest
                .metrics
                .queued
                .get_or_create(&Metrics::channel(&pending.channel))
                .inc();
            // The workers stop only after this thread: a failed send means
            // shutdown, and the entry is in the store for the next start.
            let _ = self.ingest.deliver.send(pending);
        }
        if self.cache.len() > CACHE_LIMIT {
            self.cache.clear();
        }
        Ok(())
    }
}

/// warrant-kafka's consumer settings: read_committed, no auto commit,
/// partitions assigned by hand.
fn consumer(config: &Config) -> Result<BaseConsumer<QuietContext>, Error> {
    config
        .kafka
        .consumer_config("warrant-notifier")
        .create_with_context(QuietContext)
        .map_err(|source| {
            Error::Kafka(warrant_kafka::Error::Client {
                role: "consumer",
                brokers: config.kafka.brokers.clone(),
                source,
            })
        })
}
