//! The one place Warrant talks to Kafka's configuration.
//!
//! Every rdkafka client is built here, so the guarantees docs/contract.md §1.7 and §2
//! rest on are set once: producers are idempotent with `acks=all`, consumers
//! read `read_committed` and never auto-commit. Topic names live here too,
//! and [`KafkaArgs::unique_for_tests`] gives each test its own topics.
//!
//! Nothing here folds, decodes or decides; it only connects.

use std::time::Duration;

use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::{ClientContext, DefaultClientContext},
    config::{ClientConfig, RDKafkaLogLevel},
    consumer::{BaseConsumer, Consumer, ConsumerContext},
    error::KafkaError,
    producer::FutureProducer,
    types::RDKafkaErrorCode,
};

pub use rdkafka;

/// Broker address and topic names, as flags and `WARRANT_*` variables.
#[derive(Debug, Clone, clap::Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers.
    #[arg(
        long = "brokers",
        env = "WARRANT_KAFKA_BROKERS",
        default_value = "127.0.0.1:9092"
    )]
    pub brokers: String,
    /// The authoritative log (docs/contract.md §2).
    #[arg(
        long = "log-topic",
        env = "WARRANT_LOG_TOPIC",
        default_value = "warrant.log"
    )]
    pub log_topic: String,
    /// Ingress topic for proposals (Avro warrant.ProposalSubmitted).
    #[arg(
        long = "proposals-topic",
        env = "WARRANT_PROPOSALS_TOPIC",
        default_value = "warrant.proposals"
    )]
    pub proposals_topic: String,
    /// Ingress topic for policy signals (Avro warrant.SignalSubmitted).
    #[arg(
        long = "signals-topic",
        env = "WARRANT_SIGNALS_TOPIC",
        default_value = "warrant.signals"
    )]
    pub signals_topic: String,
    /// Where invalid ingress records go, with the reason in headers.
    #[arg(
        long = "dead-letter-topic",
        env = "WARRANT_DEAD_LETTER_TOPIC",
        default_value = "warrant.dead-letter"
    )]
    pub dead_letter_topic: String,
    /// Compacted topic of ruleset texts, keyed by digest.
    #[arg(
        long = "rulesets-topic",
        env = "WARRANT_RULESETS_TOPIC",
        default_value = "warrant.rulesets"
    )]
    pub rulesets_topic: String,
    /// Compacted topic of reviewer directories (names, roles, public keys;
    /// never secrets), keyed by digest: which key was a reviewer's when.
    #[arg(
        long = "principals-topic",
        env = "WARRANT_PRINCIPALS_TOPIC",
        default_value = "warrant.principals"
    )]
    pub principals_topic: String,
    /// Extra librdkafka properties for every client, as KEY=VALUE: how to
    /// reach a secured cluster (security.protocol=SASL_SSL,
    /// sasl.mechanism=SCRAM-SHA-512, sasl.username=..., ssl.ca.location=...).
    /// Repeat the flag, or separate with commas in the variable. Warrant's
    /// own guarantees (acks, idempotence, isolation, commits) are set after
    /// these and cannot be overridden.
    #[arg(
        long = "kafka-property",
        env = "WARRANT_KAFKA_PROPERTIES",
        value_name = "KEY=VALUE",
        value_delimiter = ',',
        value_parser = parse_property
    )]
    pub properties: Vec<KafkaProperty>,
}

/// One `KEY=VALUE` librdkafka property from `--kafka-property`.
#[derive(Clone, PartialEq, Eq)]
pub struct KafkaProperty {
    pub key: String,
    pub value: String,
}

/// Values may be passwords: never print them.
impl std::fmt::Debug for KafkaProperty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}=<redacted>", self.key)
    }
}

fn parse_property(text: &str) -> Result<KafkaProperty, String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => Ok(KafkaProperty {
            key: key.trim().to_owned(),
            value: value.to_owned(),
        }),
        _ => Err(format!(
            "expected KEY=VALUE (a librdkafka property), got {:?}",
            text.split('=').next().unwrap_or_default()
        )),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot create a Kafka {role} for {brokers}")]
    Client {
        role: &'static str,
        brokers: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("cannot read metadata of topic {topic}")]
    Metadata {
        topic: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("topic {topic} does not exist or has no partitions")]
    NoSuchTopic { topic: String },
    #[error("cannot read the offsets of {topic}/{partition}")]
    Watermarks {
        topic: String,
        partition: i32,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("cannot create topic {topic}: {code}")]
    CreateTopic { topic: String, code: String },
    #[error("cannot create topics")]
    Admin(#[source] rdkafka::error::KafkaError),
}

impl Default for KafkaArgs {
    fn default() -> Self {
        KafkaArgs {
            brokers: "127.0.0.1:9092".to_owned(),
            log_topic: "warrant.log".to_owned(),
            proposals_topic: "warrant.proposals".to_owned(),
            signals_topic: "warrant.signals".to_owned(),
            dead_letter_topic: "warrant.dead-letter".to_owned(),
            rulesets_topic: "warrant.rulesets".to_owned(),
            principals_topic: "warrant.principals".to_owned(),
            properties: Vec::new(),
        }
    }
}

/// How long a metadata or watermark request may take before it is an error.
pub const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

impl KafkaArgs {
    /// Fresh, randomly named topics on the same broker, so tests never see
    /// each other's data. Create them with [`KafkaArgs::create_topics`].
    pub fn unique_for_tests(brokers: &str) -> KafkaArgs {
        let run = uuid::Uuid::new_v4().simple().to_string();
        let name = |topic: &str| format!("test-{}-{topic}", &run[..12]);
        KafkaArgs {
            brokers: brokers.to_owned(),
            log_topic: name("log"),
            proposals_topic: name("proposals"),
            signals_topic: name("signals"),
            dead_letter_topic: name("dead-letter"),
            rulesets_topic: name("rulesets"),
            principals_topic: name("principals"),
            properties: Vec::new(),
        }
    }

    /// Settings every client shares.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("socket.keepalive.enable", "true")
            .set("log_level", "4");
        for property in &self.properties {
            config.set(&property.key, &property.value);
        }
        config
    }

    /// The only producer configuration Warrant uses: nothing is acknowledged
    /// before every in-sync replica has it, and retries never duplicate or
    /// reorder (docs/contract.md §1.7).
    pub fn producer(&self) -> Result<FutureProducer, Error> {
        self.client_config()
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("max.in.flight.requests.per.connection", "5")
            .set("linger.ms", "1")
            .set("message.timeout.ms", "30000")
            .set("compression.type", "lz4")
            // The Java client's partitioner, so an instance's key lands in
            // the same partition whichever client writes it.
            .set("partitioner", "murmur2_random")
            .create()
            .map_err(|source| self.client_error("producer", source))
    }

    /// A consumer for manually assigned partitions: no group membership, no
    /// auto commit; the caller stores its own offsets (the projector in sled).
    pub fn assigned_consumer(&self) -> Result<BaseConsumer, Error> {
        self.consumer_config("warrant-assigned")
            .create()
            .map_err(|source| self.client_error("consumer", source))
    }

    /// Consumer settings; `group` is required by librdkafka even for manual
    /// assignment, where it is never used to commit.
    pub fn consumer_config(&self, group: &str) -> ClientConfig {
        let mut config = self.client_config();
        config
            .set("group.id", group)
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "true")
            .set("fetch.wait.max.ms", "100")
            .set("queued.max.messages.kbytes", "65536");
        config
    }

    pub fn admin(&self) -> Result<AdminClient<DefaultClientContext>, Error> {
        self.client_config()
            .create()
            .map_err(|source| self.client_error("admin client", source))
    }

    /// Create Warrant's topics if missing: `log_partitions` for the log,
    /// compaction for rulesets (docs/contract.md §2). Existing topics are left alone.
    pub async fn create_topics(&self, log_partitions: i32) -> Result<(), Error> {
        let admin = self.admin()?;
        // The log is the record and dead letters wait for a human: neither
        // may age out. Rulesets are keyed by digest: compaction keeps each.
        let topics = [
            NewTopic::new(&self.log_topic, log_partitions, TopicReplication::Fixed(1))
                .set("retention.ms", "-1"),
            NewTopic::new(&self.proposals_topic, 3, TopicReplication::Fixed(1)),
            NewTopic::new(&self.signals_topic, 3, TopicReplication::Fixed(1)),
            NewTopic::new(&self.dead_letter_topic, 1, TopicReplication::Fixed(1))
                .set("retention.ms", "-1"),
            NewTopic::new(&self.rulesets_topic, 1, TopicReplication::Fixed(1))
                .set("cleanup.policy", "compact"),
            NewTopic::new(&self.principals_topic, 1, TopicReplication::Fixed(1))
                .set("cleanup.policy", "compact"),
        ];
        let options = AdminOptions::new().operation_timeout(Some(METADATA_TIMEOUT));
        let results = admin
            .create_topics(topics.iter(), &options)
            .await
            .map_err(Error::Admin)?;
        for result in results {
            match result {
                Ok(_) => {}
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(Error::CreateTopic {
                        topic,
                        code: code.to_string(),
                    })
                }
            }
        }
        Ok(())
    }

    fn client_error(&self, role: &'static str, source: rdkafka::error::KafkaError) -> Error {
        Error::Client {
            role,
            brokers: self.brokers.clone(),
            source,
        }
    }
}

/// The partition ids of `topic`, in order. Any consumer will do, whatever
/// its context.
pub fn partitions_of<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    topic: &str,
) -> Result<Vec<i32>, Error> {
    let metadata = consumer
        .fetch_metadata(Some(topic), METADATA_TIMEOUT)
        .map_err(|source| Error::Metadata {
            topic: topic.to_owned(),
            source,
        })?;
    let mut partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    partitions.sort_unstable();
    if partitions.is_empty() {
        return Err(Error::NoSuchTopic {
            topic: topic.to_owned(),
        });
    }
    Ok(partitions)
}

/// The low and high watermarks (first offset, next offset) of a partition.
pub fn watermarks<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    topic: &str,
    partition: i32,
) -> Result<(i64, i64), Error> {
    consumer
        .fetch_watermarks(topic, partition, METADATA_TIMEOUT)
        .map_err(|source| Error::Watermarks {
            topic: topic.to_owned(),
            partition,
            source,
        })
}

/// The client context for consumers that read partitions to their end (the
/// projector, replay): librdkafka's log lines and errors go through
/// `tracing`, and reaching the end of a partition, which librdkafka reports
/// as an "error" when `enable.partition.eof` is set, is logged at debug: it
/// is how a reader knows it has caught up, not something to alert on.
#[derive(Debug, Clone, Copy, Default)]
pub struct QuietContext;

impl ClientContext for QuietContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error
            | RDKafkaLogLevel::Warning => tracing::warn!(facility, "librdkafka: {message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(facility, "librdkafka: {message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(facility, "librdkafka: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if is_partition_eof(&error) {
            tracing::debug!(reason, "end of partition");
        } else {
            tracing::warn!(error = %error, reason, "kafka client error");
        }
    }
}

impl ConsumerContext for QuietContext {}

/// Whether `error` only says that a partition has been read to its end.
fn is_partition_eof(error: &KafkaError) -> bool {
    matches!(
        error,
        KafkaError::PartitionEOF(_)
            | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
            | KafkaError::MessageConsumption(RDKafkaErrorCode::PartitionEOF)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_end_of_a_partition_is_quiet() {
        assert!(is_partition_eof(&KafkaError::PartitionEOF(2)));
        assert!(is_partition_eof(&KafkaError::Global(
            RDKafkaErrorCode::PartitionEOF
        )));
        assert!(is_partition_eof(&KafkaError::MessageConsumption(
            RDKafkaErrorCode::PartitionEOF
        )));
        assert!(!is_partition_eof(&KafkaError::Global(
            RDKafkaErrorCode::AllBrokersDown
        )));
        assert!(!is_partition_eof(&KafkaError::MessageConsumption(
            RDKafkaErrorCode::OffsetOutOfRange
        )));
    }

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        kafka: KafkaArgs,
    }

    fn parse(args: &[&str]) -> Result<KafkaArgs, clap::Error> {
        use clap::Parser;
        Cli::try_parse_from(std::iter::once("test").chain(args.iter().copied())).map(|c| c.kafka)
    }

    #[test]
    fn extra_properties_reach_every_client_but_not_warrants_guarantees() {
        let kafka = parse(&[
            "--kafka-property",
            "security.protocol=SASL_SSL",
            "--kafka-property=sasl.password=a=b",
            "--kafka-property",
            "acks=1,enable.idempotence=false",
        ])
        .expect("valid properties");
        let client = kafka.client_config();
        assert_eq!(client.get("security.protocol"), Some("SASL_SSL"));
        // Only the first '=' splits: the value keeps the rest.
        assert_eq!(client.get("sasl.password"), Some("a=b"));
        // Properties are secrets: Debug never shows a value.
        assert!(!format!("{kafka:?}").contains("a=b"));
        let consumer = kafka.consumer_config("g");
        assert_eq!(consumer.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(consumer.get("isolation.level"), Some("read_committed"));
    }

    #[test]
    fn clients_for_a_tls_and_scram_cluster_can_be_built() {
        // librdkafka refuses these settings at creation when it was built
        // without OpenSSL; creating a client does not connect.
        let kafka = parse(&[
            "--brokers",
            "127.0.0.1:1",
            "--kafka-property",
            "security.protocol=SASL_SSL,sasl.mechanism=SCRAM-SHA-512",
            "--kafka-property",
            "sasl.username=warrant-intake,sasl.password=example",
        ])
        .expect("valid properties");
        let _producer = kafka.producer().expect("a TLS + SCRAM producer");
        let _consumer = kafka.assigned_consumer().expect("a TLS + SCRAM consumer");
    }

    #[test]
    fn a_property_without_a_key_is_refused_by_name() {
        let error = parse(&["--kafka-property", "=x"]).expect_err("no key");
        assert!(error.to_string().contains("KEY=VALUE"), "{error}");
        let error = parse(&["--kafka-property", "plain"]).expect_err("no =");
        assert!(error.to_string().contains("KEY=VALUE"), "{error}");
    }
}
