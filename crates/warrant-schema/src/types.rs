//! Rust mirrors of the records in `schemas/*.avsc`.
//!
//! Field names and order follow the `.avsc` files exactly; the union branch
//! order of [`EventBody`] follows the `body` union of `envelope.avsc`. Every
//! type denies unknown fields, so a field added to a schema but not here (or
//! the other way round) fails the round-trip tests instead of being dropped.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch (`timestamp-millis`).
pub type TimestampMillis = i64;

/// One event on `warrant.log`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    pub event_id: String,
    pub instance_id: String,
    pub recorded_at: TimestampMillis,
    pub submitted_by: String,
    pub body: EventBody,
}

/// The `body` union. Variant order is the union's branch order: changing it
/// changes the bytes on the wire, which the golden vectors catch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventBody {
    ActionProposed(Box<ActionProposed>),
    PolicySignalRecorded(PolicySignalRecorded),
    DecisionRecorded(DecisionRecorded),
    ExecutionRequested(ExecutionRequested),
    ExecutionReported(ExecutionReported),
    DeadlineReached(DeadlineReached),
    ProposalWithdrawn(ProposalWithdrawn),
}

impl EventBody {
    /// The record name of the union branch, as an auditor reads it.
    pub fn kind(&self) -> &'static str {
        match self {
            EventBody::ActionProposed(_) => "ActionProposed",
            EventBody::PolicySignalRecorded(_) => "PolicySignalRecorded",
            EventBody::DecisionRecorded(_) => "DecisionRecorded",
            EventBody::ExecutionRequested(_) => "ExecutionRequested",
            EventBody::ExecutionReported(_) => "ExecutionReported",
            EventBody::DeadlineReached(_) => "DeadlineReached",
            EventBody::ProposalWithdrawn(_) => "ProposalWithdrawn",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionProposed {
    pub action: Action,
    pub action_digest: String,
    pub proposer: Proposer,
    pub context_refs: Vec<ContextRef>,
    pub rationale: Option<String>,
    pub requirement: Requirement,
    pub ruleset: RulesetRef,
    /// Every rule before the one that applied, with why it did not match
    /// (added in envelope v3; empty for v1 and v2 events).
    #[serde(default)]
    pub resolution: Vec<RuleNotMatched>,
}

/// A rule that resolution passed over, and why (`kind`, `target`, `when
/// false`, `when error: …`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleNotMatched {
    pub rule_id: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Action {
    pub kind: String,
    pub target: String,
    pub parameters: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Proposer {
    pub principal: String,
    pub kind: ProposerKind,
    pub model: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ProposerKind {
    Agent,
    Service,
    Human,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContextRef {
    pub uri: String,
    pub digest: Option<String>,
    pub note: Option<String>,
}

/// The rule resolved at proposal time (docs/contract.md §3), copied into the event so the
/// fold never looks rules up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requirement {
    pub rule_id: String,
    pub approvals_required: i32,
    pub approver_roles: Vec<String>,
    pub override_roles: Vec<String>,
    pub required_signals: Vec<String>,
    pub review: ReviewMode,
    pub decision_timeout_ms: i64,
    pub grant_ttl_ms: i64,
    pub max_executions: i32,
    /// Only decisions signed with the reviewer's own key count (added in
    /// envelope v2; v1 events decode with `false`).
    #[serde(default)]
    pub signed_decisions: bool,
    /// Several groups that must all be met (added in envelope v3). Empty
    /// means the single group `approvals_required` of `approver_roles`,
    /// which is what every v1 and v2 event says; use [`Requirement::groups`].
    #[serde(default)]
    pub approval_groups: Vec<ApprovalGroup>,
}

/// `count` distinct principals, each holding one of `roles`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalGroup {
    pub roles: Vec<String>,
    pub count: i32,
}

impl Requirement {
    /// The groups approvals are counted into: `approval_groups` when set,
    /// else the one group the single-group form (and every older event)
    /// means. Empty only for `review: NEVER` rules, which take no approvals.
    pub fn groups(&self) -> Vec<ApprovalGroup> {
        if !self.approval_groups.is_empty() {
            return self.approval_groups.clone();
        }
        if self.review == ReviewMode::Never {
            return Vec::new();
        }
        vec![ApprovalGroup {
            roles: self.approver_roles.clone(),
            count: self.approvals_required,
        }]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReviewMode {
    Always,
    UnlessAllSignalsAllow,
    /// The rule authorizes at proposal (added in envelope v3).
    Never,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesetRef {
    pub version: String,
    pub digest: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySignalRecorded {
    pub source: String,
    pub verdict: SignalVerdict,
    pub reasons: Vec<String>,
    pub policy_ref: PolicyRef,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SignalVerdict {
    Allow,
    Pause,
    Deny,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRef {
    pub id: String,
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionRecorded {
    pub reviewer: Reviewer,
    pub verdict: DecisionVerdict,
    pub justification: String,
    pub scope: Scope,
    pub evidence_refs: Vec<String>,
    /// The reviewer's own signature (added in envelope v2; `None` for
    /// decisions intake attests with HMAC, and for every v1 event).
    #[serde(default)]
    pub proof: Option<DecisionProof>,
}

/// A decision signed with the reviewer's own Ed25519 key, recorded so that
/// replay re-verifies it offline (docs/signatures.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionProof {
    /// `ed25519`.
    pub scheme: String,
    pub key_id: String,
    /// Lowercase hex of the 32-byte public key.
    pub public_key: String,
    /// Exactly the bytes that were signed, as UTF-8 text.
    pub signed_payload: String,
    /// Lowercase hex of the 64-byte signature.
    pub signature: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reviewer {
    pub principal: String,
    pub roles: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DecisionVerdict {
    Approve,
    Reject,
    Override,
}

/// What a reviewer allows: the fold narrows the grant to the most
/// restrictive of all counted decisions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scope {
    pub constraints: BTreeMap<String, String>,
    pub not_after: Option<TimestampMillis>,
    pub max_executions: Option<i32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutionRequested {
    pub executor: String,
    pub action_digest: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutionReported {
    pub grant_id: String,
    pub outcome: ExecutionOutcome,
    pub detail: Option<String>,
    pub result_digest: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ExecutionOutcome {
    Succeeded,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadlineReached {
    pub deadline: DeadlineKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DeadlineKind {
    Decision,
    Grant,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProposalWithdrawn {
    pub reason: Option<String>,
}

/// Value of a record on the ingress topic `warrant.proposals`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProposalSubmitted {
    pub instance_id: Option<String>,
    pub action: Action,
    pub proposer: Proposer,
    pub context_refs: Vec<ContextRef>,
    pub rationale: Option<String>,
}

/// Value of a record on the ingress topic `warrant.signals`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignalSubmitted {
    pub instance_id: String,
    pub source: String,
    pub verdict: SignalVerdict,
    pub reasons: Vec<String>,
    pub policy_ref: PolicyRef,
}
