//! `warrant-intake`: the only door into the authoritative log.
//!
//! Intake owns authentication (bearer tokens for services, policy engines
//! and executors; HMAC-signed webhooks for reviewers), validation, ruleset
//! resolution, and stamping: it turns a request or an ingress record into
//! an [`Envelope`](warrant_schema::Envelope) with `recorded_at` from its own
//! clock and `submitted_by` from the authenticated principal, appends it to
//! `warrant.log` keyed by instance id, and answers only after Kafka
//! acknowledged the append. It also publishes the ruleset in force to
//! `warrant.rulesets`, consumes the ingress topics at least once, and
//! sweeps deadlines.
//!
//! It must never decide anything the fold decides: whether an execution is
//! granted, and whether a deadline really passed, are read from the
//! projector (the fold's one materialized view) or left to the fold on the
//! log. It never trusts a name in a request body for who is asking.

pub mod config;
pub mod door;
pub mod http;
pub mod ids;
pub mod ingress;
pub mod log;
pub mod metrics;
pub mod principals;
pub mod projector;
mod service;
pub mod shards;
pub mod signature;
pub mod sweeper;

use std::net::SocketAddr;
use std::path::PathBuf;

pub use service::{check_projector_urls, reload, run, Args, Intake};

/// Everything that can stop intake. `Display` says what failed; the cause
/// is in `source()`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the ruleset {path} is refused")]
    Ruleset {
        path: PathBuf,
        #[source]
        source: warrant_authority::RulesetError,
    },
    #[error("the principals file {path} is refused")]
    Principals {
        path: PathBuf,
        #[source]
        source: principals::PrincipalsError,
    },
    #[error("cannot set up Kafka")]
    Kafka(#[source] warrant_kafka::Error),
    #[error("cannot start the ingress consumer (group {group})")]
    Consumer {
        group: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("cannot publish the ruleset to the rulesets topic")]
    PublishRuleset(#[source] log::AppendError),
    #[error("cannot set up the projector client")]
    Projector(#[source] projector::ProjectorError),
    #[error("cannot listen on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the http server failed")]
    Serve(#[source] std::io::Error),
}

/// An error and all its causes on one line, for logs.
pub use warrant_authority::error_chain;

/// Milliseconds since the Unix epoch by the system clock (0 if the clock is
/// before 1970).
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
