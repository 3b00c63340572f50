use std::path::PathBuf;

/// What went wrong; every variant says where (topic/partition/offset, file,
/// URL). Verification *differences* are not errors: they are findings in a
/// [`crate::VerifyReport`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Kafka(#[from] warrant_kafka::Error),
    #[error("cannot {what} on {topic}")]
    KafkaCall {
        what: &'static str,
        topic: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("kafka error reading {topic} at {positions}")]
    Read {
        topic: String,
        /// `partition@next-offset` of every partition still being read.
        positions: String,
        // Boxed: it would make every Result in the crate 128 bytes wide.
        #[source]
        source: Box<rdkafka::error::KafkaError>,
    },
    #[error("no record from {topic} at {positions} for {seconds} s (is the broker up?)")]
    Stalled {
        topic: String,
        positions: String,
        seconds: u64,
    },
    #[error("cannot look up the offset of time {time} on {topic}/{partition}: {reason}")]
    OffsetForTime {
        topic: String,
        partition: i32,
        time: i64,
        reason: String,
    },
    #[error("topic {topic} has no partition {partition}")]
    NoSuchPartition { topic: String, partition: i32 },
    #[error(
        "records of {topic}/{partition} are out of log order: offset {offset} after {previous}"
    )]
    OutOfOrder {
        topic: String,
        partition: i32,
        offset: i64,
        previous: i64,
    },
    #[error("cannot {what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a readable log export ({reason})", path.display())]
    NotAnExport { path: PathBuf, reason: String },
    #[error("{}: record {index} is damaged", path.display())]
    FileRecord {
        path: PathBuf,
        index: u64,
        #[source]
        source: Box<apache_avro::Error>,
    },
    #[error("{}: record {index} has no valid {field} field", path.display())]
    FileField {
        path: PathBuf,
        index: u64,
        field: &'static str,
    },
    /// A record or header of an export file names an offset or range the
    /// log cannot have, or one the file's own header does not cover.
    #[error("{}: partition {partition} offset {offset}: {reason}", path.display())]
    BadOffset {
        path: PathBuf,
        partition: i32,
        offset: i64,
        reason: String,
    },
    #[error("{}: the export header does not hold together: {reason}", path.display())]
    BadHeader { path: PathBuf, reason: String },
    #[error("cannot write {}", path.display())]
    Export {
        path: PathBuf,
        #[source]
        source: Box<apache_avro::Error>,
    },
    #[error("the compiled-in schema {name} is invalid: {reason}")]
    Schema { name: &'static str, reason: String },
    #[error("request to {url} failed")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} answered HTTP {status}: {body}")]
    HttpStatus {
        url: String,
        status: u16,
        body: String,
    },
    /// The duplicate check's spill directory (`--spill-dir`) is unusable.
    #[error("cannot {what} in the spill directory {} (--spill-dir, WARRANT_REPLAY_SPILL_DIR: a writable directory with room for 24 bytes per event)", dir.display())]
    Spill {
        what: &'static str,
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Thaw(#[from] ThawError),
    #[error("cannot write the output")]
    Output(#[source] std::io::Error),
    #[error("a reader thread stopped unexpectedly")]
    Worker,
}

/// Replay's own serialized copy of a final instance's state does not read
/// back: a bug, never the log's doing. Small, so results that carry it
/// stay small.
#[derive(Debug, thiserror::Error)]
#[error("cannot read back replay's copy of the state of {instance_id}: {reason} (a bug in warrant-replay)")]
pub struct ThawError {
    pub instance_id: String,
    pub reason: String,
}
