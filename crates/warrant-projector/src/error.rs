//! The projector's one error type.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Everything that can stop the projector. `Display` says what failed; the
/// cause is in `source()`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot prepare the data directory {path}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("another projector holds the lock on {path}")]
    Locked {
        path: PathBuf,
        #[source]
        source: std::fs::TryLockError,
    },
    #[error("cannot open the sled view at {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    #[error("sled failed to {op}")]
    Sled {
        op: &'static str,
        #[source]
        source: sled::Error,
    },
    #[error("the sled view is not open: reopening it failed after a storage error")]
    Unavailable,
    #[error("the sled view is corrupt: {what}")]
    Corrupt { what: String },
    #[error("cannot serialise {what}")]
    Encode {
        what: &'static str,
        #[source]
        source: rmp_serde::encode::Error,
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
    #[error("cannot encode the metrics")]
    Metrics,
    #[error("the {name} thread stopped unexpectedly")]
    ThreadDied { name: &'static str },
}

impl Error {
    /// A sled failure; one where sled found bad bytes is [`Error::Corrupt`],
    /// so that it is marked and rebuilt rather than retried or served.
    pub(crate) fn sled(op: &'static str) -> impl FnOnce(sled::Error) -> Error {
        move |source| match source {
            sled::Error::Corruption { at, .. } => Error::Corrupt {
                what: format!("sled found corrupt data at {at:?} trying to {op}"),
            },
            source => Error::Sled { op, source },
        }
    }

    /// A failure that passes by itself, to wait out rather than stop for: a
    /// full disk (ENOSPC, EDQUOT; the batch is kept and written again after
    /// [`crate::Store::reopen`]), a reopen that met a handle still in use,
    /// or the view closed while the commit thread reopens it. Any other I/O
    /// error (EIO, EROFS, a short read), corrupt bytes and bugs stop the
    /// projector with the error.
    pub fn is_storage(&self) -> bool {
        use crate::store::{is_handle_busy, is_out_of_space};
        match self {
            Error::Sled {
                source: sled::Error::Io(error),
                ..
            } => is_out_of_space(error),
            Error::Open {
                source: sled::Error::Io(error),
                ..
            } => is_out_of_space(error) || is_handle_busy(error),
            Error::Unavailable => true,
            Error::DataDir { source, .. } => is_out_of_space(source),
            _ => false,
        }
    }

    pub(crate) fn corrupt(what: impl Into<String>) -> Error {
        Error::Corrupt { what: what.into() }
    }
}
