//! Appending to the authoritative log: the one trait handlers depend on,
//! and its Kafka implementation (idempotent producer, `acks=all`).
//!
//! An append returns only once Kafka acknowledged the record, or fails; it
//! never reports success for something that is not on the log (docs/contract.md §1.7).
//! A delivery that takes longer than the produce timeout is reported as a
//! failure even though librdkafka may still deliver it later; the caller
//! answers 503 and a retry with the same derived event id is a duplicate.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer, PurgeConfig};
use rdkafka::util::Timeout;
use serde::Serialize;
use warrant_kafka::KafkaArgs;
use warrant_schema::Envelope;

use crate::config::LoadedRuleset;

/// A boxed `Send` future, so the traits stay object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where an appended record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Appended {
    pub partition: i32,
    pub offset: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error("cannot encode the envelope")]
    Encode(#[source] warrant_schema::Error),
    #[error("{topic} did not acknowledge the record within {timeout_ms} ms")]
    Timeout { topic: String, timeout_ms: u128 },
    #[error("cannot produce to {topic}")]
    Kafka {
        topic: String,
        #[source]
        source: KafkaError,
    },
}

/// Appends envelopes to `warrant.log`, keyed by instance id.
pub trait LogAppender: Send + Sync + 'static {
    fn append<'a>(&'a self, envelope: &'a Envelope)
        -> BoxFuture<'a, Result<Appended, AppendError>>;
}

/// Intake's producer and the topics it writes.
#[derive(Clone)]
pub struct KafkaLog {
    producer: FutureProducer,
    topics: KafkaArgs,
    timeout: Duration,
}

impl std::fmt::Debug for KafkaLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaLog")
            .field("log_topic", &self.topics.log_topic)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Most bytes of the original value a truncated dead letter keeps: enough
/// for a person to see what the record was. Its size and SHA-256 headers
/// identify the original, which is still on the ingress topic.
pub const TRUNCATED_DEAD_LETTER_BYTES: usize = 64 * 1024;

/// Longest original key a truncated dead letter keeps: a key this long is
/// itself a reason the record cannot be produced.
pub const TRUNCATED_DEAD_LETTER_KEY_BYTES: usize = 1024;

/// Where a dead-lettered record came from and why (docs/contract.md §2);
/// its key and value are the original ones, untouched, unless `truncated`
/// says the whole record could not be dead-lettered.
#[derive(Debug, Clone)]
pub struct DeadLetter<'a> {
    pub reason: &'a str,
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub truncated: Option<Truncated<'a>>,
}

/// What a dead letter that carries only part of its record says about the
/// whole: `warrant.original.size`, `warrant.original.sha256` (of the
/// original value), `warrant.truncated: true` and, in
/// `warrant.truncated.cause`, the produce error that refused it whole.
#[derive(Debug, Clone)]
pub struct Truncated<'a> {
    pub original_size: usize,
    /// Lowercase hex.
    pub original_sha256: &'a str,
    pub cause: &'a str,
}

impl DeadLetter<'_> {
    pub fn headers(&self) -> OwnedHeaders {
        let partition = self.partition.to_string();
        let offset = self.offset.to_string();
        let headers = OwnedHeaders::new_with_capacity(8)
            .insert(Header {
                key: "warrant.reason",
                value: Some(self.reason),
            })
            .insert(Header {
                key: "warrant.source.topic",
                value: Some(self.topic),
            })
            .insert(Header {
                key: "warrant.source.partition",
                value: Some(&partition),
            })
            .insert(Header {
                key: "warrant.source.offset",
                value: Some(&offset),
            });
        let Some(truncated) = &self.truncated else {
            return headers;
        };
        let size = truncated.original_size.to_string();
        headers
            .insert(Header {
                key: "warrant.truncated",
                value: Some("true"),
            })
            .insert(Header {
                key: "warrant.original.size",
                value: Some(&size),
            })
            .insert(Header {
                key: "warrant.original.sha256",
                value: Some(truncated.original_sha256),
            })
            .insert(Header {
                key: "warrant.truncated.cause",
                value: Some(truncated.cause),
            })
    }
}

/// Whether Kafka refused a record in a way no retry of the same record can
/// change: it is too large, or malformed for the topic. Anything else
/// (timeouts, a broker away, a leader moving, even authorization, which an
/// operator can fix) may succeed later.
pub fn is_permanent(error: &KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as Code;
    matches!(
        error,
        KafkaError::MessageProduction(
            Code::MessageSizeTooLarge
                | Code::InvalidMessageSize
                | Code::MessageBatchTooLarge
                | Code::InvalidRecord
                | Code::BadMessage
        )
    )
}

impl KafkaLog {
    pub fn new(args: &KafkaArgs, timeout: Duration) -> Result<KafkaLog, warrant_kafka::Error> {
        Ok(KafkaLog {
            producer: args.producer()?,
            topics: args.clone(),
            timeout,
        })
    }

    pub fn producer(&self) -> &FutureProducer {
        &self.producer
    }

    pub fn topics(&self) -> &KafkaArgs {
        &self.topics
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Produce one record and wait for its acknowledgement, at most the
    /// produce timeout.
    pub async fn produce(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        value: &[u8],
        headers: Option<OwnedHeaders>,
    ) -> Result<Appended, AppendError> {
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).payload(value);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(headers) = headers {
            record = record.headers(headers);
        }
        let send = self.producer.send(record, Timeout::After(self.timeout));
        match tokio::time::timeout(self.timeout, send).await {
            Err(_elapsed) => Err(AppendError::Timeout {
                topic: topic.to_owned(),
                timeout_ms: self.timeout.as_millis(),
            }),
            Ok(Ok(delivery)) => Ok(Appended {
                partition: delivery.partition,
                offset: delivery.offset,
            }),
            Ok(Err((source, _message))) => Err(AppendError::Kafka {
                topic: topic.to_owned(),
                source,
            }),
        }
    }

    /// Publish the reviewer directory (names, roles, public keys; never a
    /// secret) to the compacted principals topic under the SHA-256 of its
    /// bytes, so an auditor can tie a key to a reviewer at a time
    /// (docs/signatures.md). Returns the digest.
    pub async fn publish_directory(
        &self,
        principals: &crate::principals::Principals,
    ) -> Result<String, AppendError> {
        let bytes = principals.directory().to_bytes();
        let digest = warrant_authority::sha256_hex(&bytes);
        let appended = self
            .produce(
                &self.topics.principals_topic,
                Some(digest.as_bytes()),
                &bytes,
                None,
            )
            .await?;
        tracing::info!(
            topic = %self.topics.principals_topic,
            digest = %digest,
            partition = appended.partition,
            offset = appended.offset,
            "published reviewer directory"
        );
        Ok(digest)
    }

    /// Publish a ruleset's exact text to the compacted rulesets topic under
    /// its digest, so an auditor can fetch the rules any instance cites.
    pub async fn publish_ruleset(&self, loaded: &LoadedRuleset) -> Result<Appended, AppendError> {
        let digest = loaded.ruleset.digest();
        let appended = self
            .produce(
                &self.topics.rulesets_topic,
                Some(digest.as_bytes()),
                &loaded.text,
                None,
            )
            .await?;
        log_published(&self.topics.rulesets_topic, loaded, appended);
        Ok(appended)
    }

    /// Queue a ruleset's record for the rulesets topic without waiting for
    /// it. Start-up keeps waiting on this one delivery, which librdkafka
    /// retries for `message.timeout.ms`, instead of queueing a copy per
    /// attempt that would all land once Kafka is back.
    pub fn enqueue_ruleset(&self, loaded: &LoadedRuleset) -> Result<DeliveryFuture, AppendError> {
        let topic = &self.topics.rulesets_topic;
        let record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic)
            .key(loaded.ruleset.digest().as_bytes())
            .payload(&loaded.text);
        self.producer
            .send_result(record)
            .map_err(|(source, _record)| AppendError::Kafka {
                topic: topic.clone(),
                source,
            })
    }

    /// Why `topic` cannot take records now, according to the broker's
    /// metadata, or `None` if it can. Blocks for at most `timeout`.
    pub fn topic_problem(&self, topic: &str, timeout: Duration) -> Option<String> {
        let metadata = match self
            .producer
            .client()
            .fetch_metadata(Some(topic), Timeout::After(timeout))
        {
            Ok(metadata) => metadata,
            Err(error) => return Some(format!("no broker answered: {error}")),
        };
        match metadata.topics().iter().find(|t| t.name() == topic) {
            None => Some(format!("the broker does not list topic {topic}")),
            Some(found) => match found.error() {
                Some(code) => Some(format!(
                    "topic {topic}: {}",
                    rdkafka::types::RDKafkaErrorCode::from(code)
                )),
                None if found.partitions().is_empty() => {
                    Some(format!("topic {topic} has no partitions"))
                }
                None => None,
            },
        }
    }

    /// Drop every record still queued or in flight, unacknowledged: their
    /// deliveries fail. For a shutdown that has nothing worth flushing.
    pub fn discard_queued(&self) {
        self.producer
            .purge(PurgeConfig::default().queue().inflight());
    }

    /// Wait up to `timeout` for everything queued to be delivered.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.flush(Timeout::After(timeout))
    }
}

impl LogAppender for KafkaLog {
    fn append<'a>(
        &'a self,
        envelope: &'a Envelope,
    ) -> BoxFuture<'a, Result<Appended, AppendError>> {
        Box::pin(async move {
            let bytes = warrant_schema::encode(envelope).map_err(AppendError::Encode)?;
            let appended = self
                .produce(
                    &self.topics.log_topic,
                    Some(envelope.instance_id.as_bytes()),
                    &bytes,
                    None,
                )
                .await?;
            log_append(envelope, appended);
            Ok(appended)
        })
    }
}

/// The line a published ruleset writes.
pub fn log_published(topic: &str, loaded: &LoadedRuleset, appended: Appended) {
    tracing::info!(
        topic = %topic,
        digest = loaded.ruleset.digest(),
        version = loaded.ruleset.version(),
        partition = appended.partition,
        offset = appended.offset,
        "published ruleset"
    );
}

/// The one log line every append writes. Inside a request, the request's
/// span takes the instance and log position too, so the lines that follow
/// (the wait for the fold, the answer) name them.
pub fn log_append(envelope: &Envelope, appended: Appended) {
    let span = tracing::Span::current();
    span.record("instance_id", envelope.instance_id.as_str());
    span.record("partition", appended.partition);
    span.record("offset", appended.offset);
    tracing::info!(
        instance_id = %envelope.instance_id,
        event_id = %envelope.event_id,
        event = envelope.body.kind(),
        submitted_by = %envelope.submitted_by,
        partition = appended.partition,
        offset = appended.offset,
        "appended"
    );
}
