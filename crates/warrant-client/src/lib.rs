//! A reviewer's client for Warrant's intake (docs/signatures.md,
//! docs/contract.md §6.1): key files, a read-only session opened by
//! signing a challenge, the queue, execution records, and decisions signed
//! with the reviewer's own Ed25519 key.
//!
//! It decides nothing: every verdict is the reviewer's, every check is
//! intake's and the fold's. What it guarantees is that what a reviewer
//! signs is what they were shown: the caller passes the action digest it
//! displayed, and the signature covers it.
//!
//! ```no_run
//! # async fn example() -> Result<(), warrant_client::Error> {
//! use std::time::Duration;
//! use warrant_client::{Client, Decision, ReviewerKey};
//! use warrant_schema::DecisionVerdict;
//!
//! let key = ReviewerKey::load("erin.key".as_ref())?;
//! let mut client = Client::new("http://127.0.0.1:8080", Duration::from_secs(10))?;
//! client.open_session(&key).await?;
//! let record = client.record("6f1c2b9e-4d0a-4c7e-9a51-0d2f3b8c7e11").await?;
//! let digest = record.proposal.map(|p| p.action_digest).unwrap_or_default();
//! let decision = Decision {
//!     verdict: DecisionVerdict::Approve,
//!     justification: "leak confirmed".to_owned(),
//!     scope: Default::default(),
//!     evidence_refs: vec![],
//! };
//! client.decide(&key, &record.instance_id, &digest, &decision).await?;
//! # Ok(())
//! # }
//! ```

mod client;
mod error;
mod key;
mod sign;

pub use client::{
    canonical_instance_id, unix_now_millis, unix_now_secs, Client, DecisionReceipt, Identity,
    QueueGroup, QueueItem, QueuePage, QueueQuery, QueueRule, Reader, Session, SESSION_COOKIE,
};
pub use error::{Error, ErrorKind};
pub use key::{KeyError, ReviewerKey, KEY_FILE_FORMAT};
pub use sign::{session_message, sign_decision, Decision, SignedRequest};
pub use warrant_authority::signed::SignedScope;
