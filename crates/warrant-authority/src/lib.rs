//! Warrant's rule book: the authority semantics of docs/contract.md §4 and §5.
//!
//! This crate owns the answer to "may this action run, and who said so". It
//! holds the ruleset (parse, validate, resolve), the action digest, and the
//! fold that turns an instance's ordered events into its execution record,
//! each entry chained by SHA-256.
//!
//! It must never do IO: no clock, file, environment, network or randomness
//! (`clippy.toml` bans the usual suspects), so that the projector, intake and
//! the auditors' replay compute byte-identical records from the same log.

mod canonical;
mod condition;
mod digest;
mod fold;
mod ledger;
mod partition;
mod record;
mod ruleset;
pub mod signed;
mod view;

pub use canonical::{
    check_action, check_kind, check_target, check_text, is_invisible, is_visible_text,
    target_has_prefix, NotCanonical,
};
pub use condition::MAX_CONTEXT_REFS;
pub use digest::{action_digest, canonical_action_json, sha256_hex};
pub use fold::{error_chain, fold, grant_id, step, LogEvent};
pub use ledger::{Folded, Ledger};
pub use partition::{
    instance_partition, murmur2, partition_for_key, ranges, Ownership, OwnershipError,
};
pub use record::*;
pub use ruleset::{Facts, Resolution, Rule, Ruleset, RulesetError};
pub use view::{
    checkpoint_digest, instance_for_key, instance_key, quarantine_instance, quarantine_partition,
    Attestation, CheckpointDigest, DecisionView, EntryView, ExecutionRecord, GroupProgress,
    InstanceFacts, ProposalView, SignalView, TransitionView, QUARANTINE,
};
