//! The notifier's one error type.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::channels::ConfigError;

/// Everything that can stop the notifier. `Display` says what failed; the
/// cause is in `source()`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Channels(#[from] ConfigError),
    #[error("cannot prepare the data directory {path}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("another notifier holds the lock on {path}")]
    Locked {
        path: PathBuf,
        #[source]
        source: std::fs::TryLockError,
    },
    #[error("cannot open the sled store at {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    #[error("cannot use the store at {path}: {reason} (move it away to start afresh; its outbox would be lost)")]
    Incompatible { path: PathBuf, reason: String },
    #[error("sled failed to {op}")]
    Sled {
        op: &'static str,
        #[source]
        source: sled::Error,
    },
    #[error("the store is corrupt: {0}")]
    Corrupt(String),
    #[error("cannot serialise {what}")]
    Encode {
        what: &'static str,
        #[source]
        source: rmp_serde::encode::Error,
    },
    #[error("cannot serialise {what}")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot set up the Kafka consumer")]
    Kafka(#[source] warrant_kafka::Error),
    #[error("cannot assign the partitions of {topic}")]
    Assign {
        topic: String,
        #[source]
        source: warrant_kafka::rdkafka::error::KafkaError,
    },
    #[error("consuming {topic} failed")]
    Consume {
        topic: String,
        #[source]
        source: warrant_kafka::rdkafka::error::KafkaError,
    },
    #[error("cannot build the HTTP client of channel {channel}")]
    HttpClient {
        channel: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("cannot listen on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the http server failed")]
    Serve(#[source] std::io::Error),
    #[error("cannot start the {name} thread")]
    Spawn {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the {name} thread stopped unexpectedly")]
    ThreadDied { name: &'static str },
}

impl Error {
    pub(crate) fn sled(op: &'static str) -> impl FnOnce(sled::Error) -> Error {
        move |source| Error::Sled { op, source }
    }

    pub(crate) fn incompatible(path: &Path, reason: impl Into<String>) -> Error {
        Error::Incompatible {
            path: path.to_owned(),
            reason: reason.into(),
        }
    }
}
