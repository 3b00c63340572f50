//! Kafka ingress: `warrant.proposals` and `warrant.signals` in, envelopes on
//! `warrant.log` out (docs/contract.md §2), at least once and without Kafka
//! transactions.
//!
//! Records are handled in batches, in order. Each valid record becomes an
//! envelope whose `event_id` is derived from the record's topic, partition
//! and offset; each invalid one goes, untouched, to the dead-letter topic
//! with the reason and its origin in headers. Only when every record of a
//! batch is acknowledged by Kafka are the offsets stored and committed (the
//! pattern of rust-rdkafka's `examples/at_least_once.rs`). A crash before
//! the commit re-delivers the batch; the re-appended envelopes carry the
//! same event ids and the fold records them as `Duplicate`.
//!
//! Known limit: if one append of a batch fails and is retried after a later
//! record of the same batch was acknowledged, the two land in the other
//! order. Records of one instance only compete when several signals of the
//! same instance sit in one batch and Kafka fails in between.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{DeliveryFuture, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;
use warrant_schema::{Envelope, ProposalSubmitted, SignalSubmitted};

use crate::config::Shared;
use crate::http::Clock;
use crate::log::{
    is_permanent, log_append, DeadLetter, KafkaLog, Truncated, TRUNCATED_DEAD_LETTER_BYTES,
    TRUNCATED_DEAD_LETTER_KEY_BYTES,
};
use crate::metrics::{IngressLabels, Metrics, RefusedLabels, TopicLabels};
use crate::principals::IngressIdentities;
use crate::Error;
use crate::{door, ids};

/// Largest envelope intake appends: below Kafka's default 1 MB message limit.
pub const MAX_ENVELOPE_BYTES: usize = 900_000;

/// How ingress runs.
#[derive(Debug, Clone)]
pub struct IngressOptions {
    /// Consumer group id.
    pub group: String,
    /// `group.instance.id` (static membership): a restarted intake with the
    /// same id takes its partitions back at once instead of after the
    /// session timeout.
    pub instance_id: Option<String>,
    /// Most records handled per batch (per commit).
    pub batch: usize,
    /// Testing only: abort the process right after this many appends,
    /// before their offsets are committed, to prove re-delivery is safe.
    pub crash_after_appends: Option<u64>,
}

/// What one ingress record becomes.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Append(Box<Envelope>),
    DeadLetter(String),
}

/// Which ingress topic a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Proposals,
    Signals,
}

/// Validate one ingress record and build its envelope through the same
/// door logic as HTTP (`crate::door`). Pure: the caller passes the ruleset
/// and the topics' declared identities in force, and the time.
///
/// Identity is bound to the topic, never read from the record: every
/// record on the proposals topic is proposed by the principal the
/// principals file declares for it, every signal is from the declared
/// source, and a record naming anyone else is dead-lettered.
#[allow(clippy::too_many_arguments)]
pub fn validate(
    source: Source,
    topic: &str,
    partition: i32,
    offset: i64,
    value: Option<&[u8]>,
    ruleset: &warrant_authority::Ruleset,
    identities: &IngressIdentities,
    submitted_by: &str,
    recorded_at: i64,
) -> Verdict {
    let stamp = |instance_id: String| door::Stamp {
        instance_id,
        event_id: ids::ingress_event_id(topic, partition, offset),
        submitted_by: submitted_by.to_owned(),
        recorded_at,
    };
    let built = match value.filter(|v| !v.is_empty()) {
        None => Err("empty record value".to_owned()),
        Some(value) => match source {
            Source::Proposals => propose(value, identities, ruleset, |submitted| {
                Ok(stamp(match &submitted.instance_id {
                    Some(text) => door::chosen_instance_id(text)?,
                    None => ids::ingress_instance_id(topic, partition, offset),
                }))
            }),
            Source::Signals => signal(value, identities, |submitted| {
                Ok(stamp(door::instance_id(&submitted.instance_id)?))
            }),
        },
    };
    match built {
        Ok(envelope) => Verdict::Append(Box::new(envelope)),
        Err(reason) => Verdict::DeadLetter(reason),
    }
}

fn propose(
    value: &[u8],
    identities: &IngressIdentities,
    ruleset: &warrant_authority::Ruleset,
    stamp: impl FnOnce(&ProposalSubmitted) -> Result<door::Stamp, door::Invalid>,
) -> Result<Envelope, String> {
    let submitted: ProposalSubmitted = warrant_schema::decode(value).map_err(|e| {
        format!(
            "not a warrant.ProposalSubmitted: {}",
            crate::error_chain(&e)
        )
    })?;
    let principal = identities.proposals.as_deref().ok_or(
        "the proposals topic is not declared in the principals file (ingress.proposals), so no record on it has an identity",
    )?;
    let stamp = stamp(&submitted).map_err(|e| e.to_string())?;
    let draft = door::ProposalDraft {
        action: submitted.action,
        claimed_principal: Some(submitted.proposer.principal),
        kind: submitted.proposer.kind,
        model: submitted.proposer.model,
        context_refs: submitted.context_refs,
        rationale: submitted.rationale,
    };
    door::proposal(stamp, principal, draft, ruleset).map_err(|e| e.to_string())
}

fn signal(
    value: &[u8],
    identities: &IngressIdentities,
    stamp: impl FnOnce(&SignalSubmitted) -> Result<door::Stamp, door::Invalid>,
) -> Result<Envelope, String> {
    let submitted: SignalSubmitted = warrant_schema::decode(value)
        .map_err(|e| format!("not a warrant.SignalSubmitted: {}", crate::error_chain(&e)))?;
    let source = identities.signals.as_deref().ok_or(
        "the signals topic is not declared in the principals file (ingress.signals), so no record on it has an identity",
    )?;
    let stamp = stamp(&submitted).map_err(|e| e.to_string())?;
    let draft = door::SignalDraft {
        claimed_source: Some(submitted.source),
        verdict: submitted.verdict,
        reasons: submitted.reasons,
        policy_ref: submitted.policy_ref,
    };
    door::signal(stamp, source, draft).map_err(|e| e.to_string())
}

/// The ingress consumer and what it needs.
pub struct Ingress {
    consumer: Arc<StreamConsumer>,
    log: KafkaLog,
    config: Shared,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
    options: IngressOptions,
    appended: AtomicU64,
}

impl std::fmt::Debug for Ingress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingress")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// One record of a batch, and what becomes of it.
struct Item {
    message: OwnedMessage,
    /// The encoded envelope, or `None` when the record is dead-lettered.
    envelope: Option<(Envelope, Vec<u8>)>,
    reason: Option<String>,
}

/// An item on its way to Kafka, and how much of its record a dead letter
/// still carries.
struct Pending {
    item: Item,
    cut: Cut,
}

/// How much of a dead-lettered record its dead letter carries. It only
/// steps down, each time Kafka refused the previous form for good (see
/// [`crate::log::is_permanent`]): a record Kafka can never take must not
/// hold up the records behind it on its partition.
enum Cut {
    /// The original key and value, untouched (docs/contract.md §2).
    Whole,
    /// At most [`TRUNCATED_DEAD_LETTER_BYTES`] of the value.
    Truncated(Original),
    /// No value at all: only the headers say what the record was.
    Bare(Original),
}

/// What a cut dead letter says about the whole record.
struct Original {
    sha256: String,
    /// The produce error that refused the record whole.
    cause: String,
}

impl Cut {
    fn original(&self) -> Option<&Original> {
        match self {
            Cut::Whole => None,
            Cut::Truncated(original) | Cut::Bare(original) => Some(original),
        }
    }

    /// How many of a value's `len` bytes the dead letter carries.
    fn kept(&self, len: usize) -> usize {
        match self {
            Cut::Whole => len,
            Cut::Truncated(_) => len.min(TRUNCATED_DEAD_LETTER_BYTES),
            Cut::Bare(_) => 0,
        }
    }
}

enum Delivered {
    Done,
    Stopped,
}

impl Ingress {
    /// Create the consumer; [`Ingress::subscribe`] joins the group.
    pub fn new(
        log: KafkaLog,
        config: Shared,
        metrics: Arc<Metrics>,
        clock: Arc<dyn Clock>,
        options: IngressOptions,
    ) -> Result<Ingress, Error> {
        let topics = log.topics().clone();
        let mut client = topics.consumer_config(&options.group);
        client
            .set("enable.partition.eof", "false")
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000");
        if let Some(instance_id) = &options.instance_id {
            client.set("group.instance.id", instance_id);
        }
        let consumer: StreamConsumer = client.create().map_err(|source| Error::Consumer {
            group: options.group.clone(),
            source,
        })?;
        Ok(Ingress {
            consumer: Arc::new(consumer),
            log,
            config,
            metrics,
            clock,
            options,
            appended: AtomicU64::new(0),
        })
    }

    /// Join the consumer group on both ingress topics. Only once intake can
    /// append: a member that does not consume yet would hold its share of
    /// the partitions idle, and leaving a group mid-rebalance can block.
    pub fn subscribe(&self) -> Result<(), Error> {
        let topics = self.log.topics();
        self.consumer
            .subscribe(&[&topics.proposals_topic, &topics.signals_topic])
            .map_err(|source| Error::Consumer {
                group: self.options.group.clone(),
                source,
            })?;
        tracing::info!(
            group = %self.options.group,
            proposals = %topics.proposals_topic,
            signals = %topics.signals_topic,
            "ingress subscribed"
        );
        Ok(())
    }

    /// Consume until `shutdown` turns true; the batch in hand is finished
    /// and committed first.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        loop {
            if *shutdown.borrow() {
                break;
            }
            let first = tokio::select! {
                _ = shutdown.changed() => break,
                received = self.consumer.recv() => received.map(|m| m.detach()),
            };
            let mut messages = Vec::with_capacity(self.options.batch);
            match first {
                Ok(message) => messages.push(message),
                Err(error) => {
                    tracing::warn!(error = %error, "ingress consumer error");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
            // Whatever else is already fetched joins the batch.
            while messages.len() < self.options.batch {
                match tokio::time::timeout(Duration::from_millis(5), self.consumer.recv()).await {
                    Ok(Ok(message)) => messages.push(message.detach()),
                    Ok(Err(error)) => {
                        tracing::warn!(error = %error, "ingress consumer error");
                        break;
                    }
                    Err(_elapsed) => break,
                }
            }
            match self.process(messages, &mut shutdown).await {
                Delivered::Done => {}
                Delivered::Stopped => {
                    tracing::info!("ingress stopped before its batch was acknowledged; it will be re-delivered");
                    return;
                }
            }
        }
        tracing::info!("ingress stopped");
    }

    fn item(
        &self,
        message: OwnedMessage,
        ruleset: &warrant_authority::Ruleset,
        identities: &IngressIdentities,
        now: i64,
    ) -> Item {
        let topics = self.log.topics();
        let topic = message.topic();
        let source = if topic == topics.proposals_topic {
            Source::Proposals
        } else {
            Source::Signals
        };
        // The door, never a name in the record: `kafka:` is reserved, so no
        // token or reviewer can be mistaken for it.
        let submitted_by = format!("kafka:{topic}");
        let verdict = validate(
            source,
            topic,
            message.partition(),
            message.offset(),
            message.payload(),
            ruleset,
            identities,
            &submitted_by,
            now,
        );
        let (envelope, reason) = match verdict {
            Verdict::DeadLetter(reason) => (None, Some(reason)),
            Verdict::Append(envelope) => match warrant_schema::encode(envelope.as_ref()) {
                Ok(bytes) if bytes.len() <= MAX_ENVELOPE_BYTES => (Some((*envelope, bytes)), None),
                Ok(bytes) => (
                    None,
                    Some(format!(
                        "the envelope would be {} bytes; at most {MAX_ENVELOPE_BYTES} are appended",
                        bytes.len()
                    )),
                ),
                Err(error) => (
                    None,
                    Some(format!(
                        "cannot encode the envelope: {}",
                        crate::error_chain(&error)
                    )),
                ),
            },
        };
        Item {
            message,
            envelope,
            reason,
        }
    }

    async fn process(
        &self,
        messages: Vec<OwnedMessage>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Delivered {
        let snapshot = self.config.snapshot();
        let now = self.clock.now_millis();
        let mut items: Vec<Pending> = messages
            .into_iter()
            .map(|message| Pending {
                item: self.item(
                    message,
                    &snapshot.ruleset.ruleset,
                    snapshot.principals.ingress(),
                    now,
                ),
                cut: Cut::Whole,
            })
            .collect();
        // Enqueue everything (librdkafka batches it), then wait in order.
        let mut deliveries = Vec::with_capacity(items.len());
        for pending in &items {
            deliveries.push(self.enqueue(pending).await);
        }
        for (pending, delivery) in items.iter_mut().zip(deliveries) {
            // A refusal is only taken as the record's own fault when the
            // record was alone: librdkafka refusing to enqueue it, or Kafka
            // refusing it re-sent by itself. A batch it shared may have been
            // refused for the batch's size.
            let (mut result, mut alone) = match delivery {
                Ok(future) => (
                    match future.await {
                        Ok(Ok(delivery)) => Ok((delivery.partition, delivery.offset)),
                        Ok(Err((error, _))) => Err(error),
                        Err(_canceled) => Err(KafkaError::Canceled),
                    },
                    false,
                ),
                Err(error) => (Err(error), true),
            };
            let mut backoff = Duration::from_millis(100);
            loop {
                match result {
                    Ok((partition, offset)) => {
                        self.delivered(pending, partition, offset);
                        break;
                    }
                    Err(error) if alone && is_permanent(&error) => {
                        // Retrying the same record cannot succeed: send what
                        // it falls back to at once, or give up on it loudly.
                        if !self.fall_back(pending, &error) {
                            self.dropped(pending, &error);
                            break;
                        }
                        result = self.send_one(pending).await;
                    }
                    Err(error) => {
                        let item = &pending.item;
                        tracing::warn!(
                            topic = item.message.topic(),
                            partition = item.message.partition(),
                            offset = item.message.offset(),
                            error = %error,
                            "ingress append not acknowledged; retrying"
                        );
                        if let Some((envelope, _)) = &item.envelope {
                            self.metrics.append("ingress", envelope.body.kind(), false);
                        }
                        tokio::select! {
                            _ = shutdown.changed() => return Delivered::Stopped,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        result = self.send_one(pending).await;
                        alone = true;
                    }
                }
            }
        }
        self.commit(&items).await;
        Delivered::Done
    }

    /// Kafka refused `pending`'s record for good: make it the next thing it
    /// can become. An envelope the log refuses becomes a dead letter with
    /// that reason; a dead letter refused whole is sent truncated, then
    /// bare. `false` when nothing is left to try.
    fn fall_back(&self, pending: &mut Pending, error: &KafkaError) -> bool {
        let message = &pending.item.message;
        let code = error
            .rdkafka_error_code()
            .map_or_else(|| "unknown".to_owned(), |code| format!("{code:?}"));
        let target = if pending.item.envelope.is_some() {
            "log"
        } else {
            "dead_letter"
        };
        self.metrics
            .ingress_refused
            .get_or_create(&RefusedLabels {
                topic: message.topic().to_owned(),
                target,
                error: code,
            })
            .inc();
        if pending.item.envelope.take().is_some() {
            tracing::warn!(
                topic = message.topic(),
                source_partition = message.partition(),
                source_offset = message.offset(),
                error = %error,
                "the log refused an ingress envelope for good; dead-lettering the record instead"
            );
            pending.item.reason = Some(format!("the log refused the envelope: {error}"));
            return true;
        }
        if matches!(pending.cut, Cut::Bare(_)) {
            return false;
        }
        let value = message.payload().unwrap_or_default();
        let original = |sha256: Option<String>| Original {
            sha256: sha256.unwrap_or_else(|| warrant_authority::sha256_hex(value)),
            cause: error.to_string(),
        };
        pending.cut = match std::mem::replace(&mut pending.cut, Cut::Whole) {
            // Truncating would keep it whole: straight to no bytes at all.
            Cut::Whole if value.len() <= TRUNCATED_DEAD_LETTER_BYTES => Cut::Bare(original(None)),
            Cut::Whole => Cut::Truncated(original(None)),
            Cut::Truncated(previous) | Cut::Bare(previous) => {
                Cut::Bare(original(Some(previous.sha256)))
            }
        };
        tracing::warn!(
            topic = message.topic(),
            source_partition = message.partition(),
            source_offset = message.offset(),
            size = value.len(),
            keeps = pending.cut.kept(value.len()),
            error = %error,
            "the dead-letter topic refused the record for good; dead-lettering it cut short"
        );
        true
    }

    /// Not even a bare dead letter could be produced. The record is given
    /// up rather than holding its partition forever; it is still on its
    /// ingress topic, and this line and a metric say where.
    fn dropped(&self, pending: &Pending, error: &KafkaError) {
        let message = &pending.item.message;
        tracing::error!(
            topic = message.topic(),
            source_partition = message.partition(),
            source_offset = message.offset(),
            size = message.payload().map_or(0, <[u8]>::len),
            sha256 = pending.cut.original().map(|o| o.sha256.as_str()),
            reason = pending.item.reason.as_deref().unwrap_or_default(),
            error = %error,
            "ingress record dropped: Kafka refused even a dead letter without its bytes"
        );
        self.metrics
            .ingress_records
            .get_or_create(&IngressLabels {
                topic: message.topic().to_owned(),
                result: "dropped",
            })
            .inc();
    }

    /// The record to produce for an item: its envelope on the log, or the
    /// original key and bytes (as much as its cut keeps) on the dead-letter
    /// topic with their origin.
    fn record<'a>(&'a self, pending: &'a Pending) -> FutureRecord<'a, [u8], [u8]> {
        let item = &pending.item;
        let message = &item.message;
        match &item.envelope {
            Some((envelope, bytes)) => FutureRecord::to(&self.log.topics().log_topic)
                .key(envelope.instance_id.as_bytes())
                .payload(bytes.as_slice()),
            None => {
                let value = message.payload().unwrap_or_default();
                let kept = &value[..pending.cut.kept(value.len())];
                let key = match &pending.cut {
                    Cut::Whole => message.key(),
                    // A key this long may be why it was refused.
                    _ => message
                        .key()
                        .filter(|key| key.len() <= TRUNCATED_DEAD_LETTER_KEY_BYTES),
                };
                let letter = DeadLetter {
                    reason: item.reason.as_deref().unwrap_or("invalid record"),
                    topic: message.topic(),
                    partition: message.partition(),
                    offset: message.offset(),
                    truncated: pending.cut.original().map(|original| Truncated {
                        original_size: value.len(),
                        original_sha256: &original.sha256,
                        cause: &original.cause,
                    }),
                };
                let mut record = FutureRecord::to(&self.log.topics().dead_letter_topic)
                    .payload(kept)
                    .headers(letter.headers());
                if let Some(key) = key {
                    record = record.key(key);
                }
                record
            }
        }
    }

    /// Put one record in the producer's queue, waiting while it is full.
    async fn enqueue(&self, pending: &Pending) -> Result<DeliveryFuture, KafkaError> {
        let mut record = self.record(pending);
        loop {
            match self.log.producer().send_result(record) {
                Ok(delivery) => return Ok(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    record = returned;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((error, _)) => return Err(error),
            }
        }
    }

    /// Send one record again and wait for it, at most the produce timeout.
    async fn send_one(&self, pending: &Pending) -> Result<(i32, i64), KafkaError> {
        let future = self.enqueue(pending).await?;
        match tokio::time::timeout(self.log.timeout(), future).await {
            Ok(Ok(Ok(delivery))) => Ok((delivery.partition, delivery.offset)),
            Ok(Ok(Err((error, _)))) => Err(error),
            Ok(Err(_canceled)) => Err(KafkaError::Canceled),
            Err(_elapsed) => Err(KafkaError::MessageProduction(
                RDKafkaErrorCode::MessageTimedOut,
            )),
        }
    }

    fn delivered(&self, pending: &Pending, partition: i32, offset: i64) {
        let item = &pending.item;
        let message = &item.message;
        let topic = message.topic().to_owned();
        match &item.envelope {
            Some((envelope, _)) => {
                log_append(envelope, crate::log::Appended { partition, offset });
                self.metrics.append("ingress", envelope.body.kind(), true);
                let appended = self.appended.fetch_add(1, Ordering::SeqCst) + 1;
                if self.options.crash_after_appends == Some(appended) {
                    tracing::error!(
                        appended,
                        "--crash-after-appends reached: aborting before the commit"
                    );
                    std::process::abort();
                }
                self.metrics
                    .ingress_records
                    .get_or_create(&IngressLabels {
                        topic,
                        result: "appended",
                    })
                    .inc();
            }
            None => {
                let original = pending.cut.original();
                tracing::warn!(
                    topic = message.topic(),
                    source_partition = message.partition(),
                    source_offset = message.offset(),
                    reason = item.reason.as_deref().unwrap_or_default(),
                    dead_letter_partition = partition,
                    dead_letter_offset = offset,
                    truncated = original.is_some(),
                    original_size = original.map(|_| message.payload().map_or(0, <[u8]>::len)),
                    original_sha256 = original.map(|o| o.sha256.as_str()),
                    "ingress record dead-lettered"
                );
                if original.is_some() {
                    self.metrics
                        .dead_letters_truncated
                        .get_or_create(&TopicLabels {
                            topic: topic.clone(),
                        })
                        .inc();
                }
                self.metrics
                    .ingress_records
                    .get_or_create(&IngressLabels {
                        topic,
                        result: "dead_lettered",
                    })
                    .inc();
            }
        }
    }

    /// Store the next offset of every partition the batch touched, then
    /// commit them: everything before them is acknowledged.
    async fn commit(&self, items: &[Pending]) {
        let mut next: std::collections::BTreeMap<(String, i32), i64> =
            std::collections::BTreeMap::new();
        for Pending { item, .. } in items {
            let key = (item.message.topic().to_owned(), item.message.partition());
            let offset = item.message.offset() + 1;
            let entry = next.entry(key).or_insert(offset);
            *entry = (*entry).max(offset);
        }
        let mut list = TopicPartitionList::new();
        for ((topic, partition), offset) in &next {
            if let Err(error) =
                list.add_partition_offset(topic, *partition, Offset::Offset(*offset))
            {
                tracing::warn!(topic, partition, error = %error, "cannot list an ingress offset");
            }
        }
        if let Err(error) = self.consumer.store_offsets(&list) {
            // A partition revoked meanwhile: its new owner re-delivers (duplicates).
            tracing::warn!(error = %error, "cannot store ingress offsets");
        }
        let consumer = self.consumer.clone();
        let committed =
            tokio::task::spawn_blocking(move || consumer.commit_consumer_state(CommitMode::Sync))
                .await;
        match committed {
            Ok(Ok(())) => {
                for ((topic, partition), offset) in &next {
                    tracing::debug!(topic, partition, offset, "ingress offset committed");
                }
            }
            Ok(Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset))) => {}
            Ok(Err(error)) => {
                tracing::warn!(error = %error, "cannot commit ingress offsets; the batch will be re-delivered")
            }
            Err(error) => tracing::warn!(error = %error, "the commit task failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use warrant_authority::Ruleset;
    use warrant_schema::{samples, EventBody};

    use super::*;

    fn ruleset() -> Ruleset {
        Ruleset::parse(include_bytes!("../../../deploy/examples/ruleset.yaml"))
            .expect("example ruleset")
    }

    fn check(source: Source, value: &[u8]) -> Verdict {
        validate(
            source,
            "warrant.proposals",
            2,
            41,
            Some(value),
            &ruleset(),
            &identities(),
            "kafka:warrant.proposals",
            7,
        )
    }

    fn identities() -> IngressIdentities {
        IngressIdentities {
            proposals: Some("agent:remediator".to_owned()),
            signals: Some("opa".to_owned()),
        }
    }

    #[test]
    fn a_valid_proposal_is_resolved_and_stamped() {
        let bytes = warrant_schema::encode(&samples::proposal_submitted()).expect("encodes");
        let Verdict::Append(envelope) = check(Source::Proposals, &bytes) else {
            panic!("valid proposal dead-lettered");
        };
        assert_eq!(envelope.instance_id, samples::INSTANCE_ID);
        assert_eq!(
            envelope.event_id,
            ids::ingress_event_id("warrant.proposals", 2, 41)
        );
        assert_eq!(envelope.recorded_at, 7);
        assert_eq!(envelope.submitted_by, "kafka:warrant.proposals");
        let EventBody::ActionProposed(proposed) = &envelope.body else {
            panic!("not a proposal");
        };
        assert_eq!(proposed.action_digest, samples::ACTION_DIGEST);
        assert_eq!(proposed.requirement.rule_id, "prod-restarts");
        assert_eq!(proposed.ruleset, ruleset().reference());
    }

    #[test]
    fn a_proposal_without_instance_id_gets_one_derived_from_its_position() {
        let mut submitted = samples::proposal_submitted();
        submitted.instance_id = None;
        let bytes = warrant_schema::encode(&submitted).expect("encodes");
        let Verdict::Append(envelope) = check(Source::Proposals, &bytes) else {
            panic!("dead-lettered");
        };
        assert_eq!(
            envelope.instance_id,
            ids::ingress_instance_id("warrant.proposals", 2, 41)
        );
    }

    #[test]
    fn invalid_records_are_dead_lettered_with_a_reason() {
        let reason = |source, bytes: &[u8]| match check(source, bytes) {
            Verdict::DeadLetter(reason) => reason,
            Verdict::Append(_) => panic!("accepted"),
        };
        assert!(reason(Source::Proposals, b"garbage").contains("not a warrant.ProposalSubmitted"));
        assert!(reason(Source::Proposals, b"").contains("empty"));
        let signal = warrant_schema::encode(&samples::signal_submitted()).expect("encodes");
        // A signal on the proposals topic: another schema's fingerprint.
        assert!(reason(Source::Proposals, &signal).contains("unknown writer schema fingerprint"));

        let mut bad_id = samples::proposal_submitted();
        bad_id.instance_id = Some("nope".to_owned());
        let bytes = warrant_schema::encode(&bad_id).expect("encodes");
        assert!(reason(Source::Proposals, &bytes).contains("\"nope\" is not a UUID"));

        let mut empty_kind = samples::proposal_submitted();
        empty_kind.action.kind = " ".to_owned();
        let bytes = warrant_schema::encode(&empty_kind).expect("encodes");
        assert!(reason(Source::Proposals, &bytes)
            .starts_with("the action is not in canonical form: action.kind"));

        let mut many_refs = samples::proposal_submitted();
        many_refs.context_refs =
            vec![many_refs.context_refs[0].clone(); warrant_authority::MAX_CONTEXT_REFS + 1];
        let bytes = warrant_schema::encode(&many_refs).expect("encodes");
        assert_eq!(
            reason(Source::Proposals, &bytes),
            "context_refs has 33 refs; a proposal may carry at most 32"
        );

        let mut no_policy = samples::signal_submitted();
        no_policy.policy_ref.id = String::new();
        let bytes = warrant_schema::encode(&no_policy).expect("encodes");
        assert_eq!(
            reason(Source::Signals, &bytes),
            "policy_ref.id must not be empty"
        );

        let mut bad_signal_id = samples::signal_submitted();
        bad_signal_id.instance_id = "00000000-0000-0000-0000-000000000000".to_owned();
        let bytes = warrant_schema::encode(&bad_signal_id).expect("encodes");
        assert!(reason(Source::Signals, &bytes).contains("is not a UUID"));
    }

    #[test]
    fn a_laxer_spelling_is_dead_lettered_not_resolved() {
        for (kind, target) in [
            ("Service.Restart", "prod/payments/api"),
            ("service.restart ", "prod/payments/api"),
            ("service.restart", " prod/payments/api"),
            ("service.restart", "./prod/payments/api"),
        ] {
            let mut submitted = samples::proposal_submitted();
            submitted.action.kind = kind.to_owned();
            submitted.action.target = target.to_owned();
            let bytes = warrant_schema::encode(&submitted).expect("encodes");
            match check(Source::Proposals, &bytes) {
                Verdict::DeadLetter(reason) => assert!(
                    reason.starts_with("the action is not in canonical form"),
                    "{reason}"
                ),
                Verdict::Append(_) => panic!("{kind:?} {target:?} was accepted"),
            }
        }
    }

    #[test]
    fn identity_comes_from_the_topic_not_the_record() {
        let reason = |source, bytes: &[u8], identities: &IngressIdentities| match validate(
            source,
            "warrant.signals",
            0,
            1,
            Some(bytes),
            &ruleset(),
            identities,
            "kafka:warrant.signals",
            7,
        ) {
            Verdict::DeadLetter(reason) => reason,
            Verdict::Append(_) => panic!("accepted"),
        };
        // Anyone who can write the signals topic could otherwise ALLOW as OPA.
        let mut forged = samples::signal_submitted();
        forged.source = "opa".to_owned();
        let bytes = warrant_schema::encode(&forged).expect("encodes");
        let only_gatekeeper = IngressIdentities {
            proposals: None,
            signals: Some("gatekeeper".to_owned()),
        };
        assert_eq!(
            reason(Source::Signals, &bytes, &only_gatekeeper),
            "source is \"opa\" but this door only accepts \"gatekeeper\""
        );
        // A proposal naming a reviewer as its proposer (to approve it later).
        let mut as_alice = samples::proposal_submitted();
        as_alice.proposer.principal = "alice".to_owned();
        let bytes = warrant_schema::encode(&as_alice).expect("encodes");
        assert_eq!(
            reason(Source::Proposals, &bytes, &identities()),
            "proposer.principal is \"alice\" but this door only accepts \"agent:remediator\""
        );
        // A topic nobody declared has no identity at all.
        let bytes = warrant_schema::encode(&samples::proposal_submitted()).expect("encodes");
        assert!(
            reason(Source::Proposals, &bytes, &IngressIdentities::default())
                .contains("not declared in the principals file")
        );
    }

    #[test]
    fn a_valid_signal_keeps_its_source() {
        let bytes = warrant_schema::encode(&samples::signal_submitted()).expect("encodes");
        let Verdict::Append(envelope) = check(Source::Signals, &bytes) else {
            panic!("dead-lettered");
        };
        let EventBody::PolicySignalRecorded(signal) = &envelope.body else {
            panic!("not a signal");
        };
        assert_eq!(signal.source, "opa");
        assert_eq!(envelope.instance_id, samples::INSTANCE_ID);
    }
}
