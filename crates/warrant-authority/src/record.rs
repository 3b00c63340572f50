//! The execution record of one instance: the state the fold decides on, and
//! the history entries it appends (docs/contract.md §5, §7).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use warrant_schema::{
    Action, ContextRef, DeadlineKind, Envelope, ExecutionOutcome, Proposer, Requirement,
    RuleNotMatched, RulesetRef, SignalVerdict, TimestampMillis,
};

/// Where a record sits on the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LogPosition {
    pub partition: i32,
    pub offset: i64,
}

/// A SHA-256 value, shown as lowercase hex.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Hash32(pub [u8; 32]);

impl fmt::Debug for Hash32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", hex::encode(self.0))
    }
}

impl fmt::Display for Hash32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", hex::encode(self.0))
    }
}

impl Serialize for Hash32 {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&hex::encode(self.0))
    }
}

impl<'de> Deserialize<'de> for Hash32 {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(&text, &mut bytes).map_err(serde::de::Error::custom)?;
        Ok(Hash32(bytes))
    }
}

/// Everything the fold knows about one instance id, including ids whose
/// first event was not a proposal (their history shows the refusals).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceState {
    pub instance_id: String,
    pub phase: Phase,
    /// Every event id seen in this instance, valid or not (for `Duplicate`).
    ///
    /// `step` only ever looks up, and inserts, the id of the event it folds.
    /// A folder may therefore keep these ids elsewhere between steps (the
    /// auditors' replay does, so its memory does not grow with the events)
    /// if, before each step, the set holds that event's id whenever the
    /// instance saw it before, and it takes back whatever `step` inserted.
    pub seen_event_ids: BTreeSet<String>,
    /// Number of history entries so far; the next entry gets `entries + 1`.
    pub entries: u64,
    /// Hash of the last history entry; 32 zero bytes before the first.
    pub head: Hash32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// No `ActionProposed` yet.
    Unproposed,
    Proposed(Box<Instance>),
}

impl InstanceState {
    pub fn new(instance_id: impl Into<String>) -> Self {
        InstanceState {
            instance_id: instance_id.into(),
            phase: Phase::Unproposed,
            seen_event_ids: BTreeSet::new(),
            entries: 0,
            head: Hash32::default(),
        }
    }

    pub fn instance(&self) -> Option<&Instance> {
        match &self.phase {
            Phase::Unproposed => None,
            Phase::Proposed(instance) => Some(instance),
        }
    }

    pub fn status(&self) -> Option<StatusName> {
        self.instance().map(|instance| instance.status.name())
    }
}

/// A proposed instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub proposal: Proposal,
    pub status: Status,
    /// The latest verdict of every policy source that reported.
    pub signals: BTreeMap<String, StandingSignal>,
    /// Counted approvals by principal, each with the scope it allowed.
    pub approvals: BTreeMap<String, CountedDecision>,
    pub grants: Vec<Grant>,
    pub violations: Vec<Violation>,
}

/// What was proposed, copied from the `ActionProposed` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    pub proposed_at: TimestampMillis,
    /// The principal intake authenticated for the proposal.
    pub submitted_by: String,
    pub action: Action,
    pub action_digest: String,
    pub proposer: Proposer,
    pub context_refs: Vec<ContextRef>,
    pub rationale: Option<String>,
    pub requirement: Requirement,
    pub ruleset: RulesetRef,
    /// The rules before `requirement.rule_id` and why each did not match.
    #[serde(default)]
    pub resolution: Vec<RuleNotMatched>,
    /// `proposed_at + decision_timeout_ms`: after this, a pause expires.
    pub decision_deadline: TimestampMillis,
}

/// The statuses of docs/contract.md §5, with what each one needs to carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    AwaitingSignals,
    AwaitingDecision,
    /// A DENY stands.
    Blocked,
    Authorized(Authorization),
    /// At least one granted execution has not been reported yet.
    Executing(Authorization),
    Completed(Authorization),
    Failed(Authorization),
    Rejected {
        by: String,
    },
    Expired {
        deadline: DeadlineKind,
    },
    Withdrawn,
}

/// Status names exactly as the contract (docs/contract.md) and the HTTP API spell them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StatusName {
    AwaitingSignals,
    AwaitingDecision,
    Blocked,
    Authorized,
    Executing,
    Completed,
    Failed,
    Rejected,
    Expired,
    Withdrawn,
}

impl StatusName {
    pub const ALL: [StatusName; 10] = [
        StatusName::AwaitingSignals,
        StatusName::AwaitingDecision,
        StatusName::Blocked,
        StatusName::Authorized,
        StatusName::Executing,
        StatusName::Completed,
        StatusName::Failed,
        StatusName::Rejected,
        StatusName::Expired,
        StatusName::Withdrawn,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StatusName::AwaitingSignals => "AWAITING_SIGNALS",
            StatusName::AwaitingDecision => "AWAITING_DECISION",
            StatusName::Blocked => "BLOCKED",
            StatusName::Authorized => "AUTHORIZED",
            StatusName::Executing => "EXECUTING",
            StatusName::Completed => "COMPLETED",
            StatusName::Failed => "FAILED",
            StatusName::Rejected => "REJECTED",
            StatusName::Expired => "EXPIRED",
            StatusName::Withdrawn => "WITHDRAWN",
        }
    }

    pub fn parse(text: &str) -> Option<StatusName> {
        StatusName::ALL
            .into_iter()
            .find(|name| name.as_str() == text)
    }

    pub fn is_paused(self) -> bool {
        matches!(
            self,
            StatusName::AwaitingSignals | StatusName::AwaitingDecision | StatusName::Blocked
        )
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            StatusName::Completed
                | StatusName::Failed
                | StatusName::Rejected
                | StatusName::Expired
                | StatusName::Withdrawn
        )
    }
}

impl fmt::Display for StatusName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Status {
    pub fn name(&self) -> StatusName {
        match self {
            Status::AwaitingSignals => StatusName::AwaitingSignals,
            Status::AwaitingDecision => StatusName::AwaitingDecision,
            Status::Blocked => StatusName::Blocked,
            Status::Authorized(_) => StatusName::Authorized,
            Status::Executing(_) => StatusName::Executing,
            Status::Completed(_) => StatusName::Completed,
            Status::Failed(_) => StatusName::Failed,
            Status::Rejected { .. } => StatusName::Rejected,
            Status::Expired { .. } => StatusName::Expired,
            Status::Withdrawn => StatusName::Withdrawn,
        }
    }

    pub fn authorization(&self) -> Option<&Authorization> {
        match self {
            Status::Authorized(a)
            | Status::Executing(a)
            | Status::Completed(a)
            | Status::Failed(a) => Some(a),
            Status::AwaitingSignals
            | Status::AwaitingDecision
            | Status::Blocked
            | Status::Rejected { .. }
            | Status::Expired { .. }
            | Status::Withdrawn => None,
        }
    }
}

/// Why an instance may run, and within which limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Authorization {
    pub authorized_at: TimestampMillis,
    pub authority: Authority,
    pub scope: EffectiveScope,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Authority {
    /// Enough distinct permitted principals approved.
    Quorum { approvers: Vec<String> },
    /// A principal with an override role decided alone, with a justification.
    Override {
        principal: String,
        justification: String,
    },
    /// The rule itself: review `UNLESS_ALL_SIGNALS_ALLOW` and every signal
    /// allowed, or review `NEVER` (authorized at proposal).
    Rule { rule_id: String },
}

/// The most restrictive of all counted decisions (docs/contract.md §5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EffectiveScope {
    pub constraints: BTreeMap<String, String>,
    pub not_after: TimestampMillis,
    pub max_executions: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StandingSignal {
    pub verdict: SignalVerdict,
    pub seq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountedDecision {
    pub seq: u64,
    pub scope: warrant_schema::Scope,
    /// The roles the reviewer held when deciding: what assigning approvals
    /// to the rule's groups reads.
    #[serde(default)]
    pub roles: Vec<String>,
    /// The group (an index into `Requirement::groups()`) this approval
    /// counts for; `None` while every group it could fill is full. A later
    /// approval may move it to another group it also qualifies for.
    #[serde(default)]
    pub counted_for: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub grant_id: String,
    pub executor: String,
    pub granted_at: TimestampMillis,
    pub granted_seq: u64,
    pub report: Option<GrantReport>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantReport {
    pub outcome: ExecutionOutcome,
    pub reported_at: TimestampMillis,
    pub seq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    pub kind: ViolationKind,
    pub seq: u64,
    pub grant_id: String,
    pub reported_at: TimestampMillis,
}

/// One entry of an instance's history: exactly one per event on the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub seq: u64,
    /// `None` only when the bytes did not decode.
    pub recorded_at: Option<TimestampMillis>,
    pub position: LogPosition,
    /// The decoded event; `None` when the bytes were malformed.
    pub event: Option<Envelope>,
    pub outcome: Outcome,
    /// SHA-256(previous hash ‖ event bytes ‖ outcome code).
    pub hash: Hash32,
}

/// What one event did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Outcome {
    /// The event was applied; `from == to` when it was recorded without a
    /// status change (a repeated approval, a late signal).
    Applied {
        from: Option<StatusName>,
        to: StatusName,
        effect: Option<Effect>,
    },
    Refused {
        code: RefusalCode,
        reason: String,
    },
    /// Applied, and it shows something ran without authority.
    Violation {
        violation: ViolationKind,
        reason: String,
    },
}

impl Outcome {
    /// The bytes the hash chain commits to: `applied FROM>TO` (FROM is
    /// `NONE` for the first), `refused CODE` or `violation KIND`. Reasons are
    /// explanations, not facts, so rewording one never changes a hash.
    pub fn chain_code(&self) -> String {
        let mut code = String::with_capacity(48);
        self.for_each_chain_part(|part| code.push_str(part));
        code
    }

    fn for_each_chain_part(&self, mut part: impl FnMut(&str)) {
        match self {
            Outcome::Applied { from, to, .. } => {
                part("applied ");
                part(from.map_or("NONE", StatusName::as_str));
                part(">");
                part(to.as_str());
            }
            Outcome::Refused { code, .. } => {
                part("refused ");
                part(code.as_str());
            }
            Outcome::Violation { violation, .. } => {
                part("violation ");
                part(violation.as_str());
            }
        }
    }

    pub fn refusal(&self) -> Option<RefusalCode> {
        match self {
            Outcome::Refused { code, .. } => Some(*code),
            Outcome::Applied { .. } | Outcome::Violation { .. } => None,
        }
    }

    pub fn grant(&self) -> Option<&IssuedGrant> {
        match self {
            Outcome::Applied {
                effect: Some(Effect::GrantIssued(grant)),
                ..
            } => Some(grant),
            Outcome::Applied { .. } | Outcome::Refused { .. } | Outcome::Violation { .. } => None,
        }
    }
}

/// What an applied event did besides (or instead of) changing the status;
/// the services act on these (intake answers a claim with `GrantIssued`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Effect {
    ApprovalCounted {
        principal: String,
        distinct: u32,
        required: u32,
    },
    ApprovalAlreadyCounted {
        principal: String,
    },
    Authorized(Authorization),
    GrantIssued(IssuedGrant),
    ExecutionClosed {
        grant_id: String,
        outcome: ExecutionOutcome,
    },
    /// A signal arriving once the decision is made: kept, changes nothing.
    SignalAfterDecision,
}

/// The grant an executor receives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedGrant {
    pub grant_id: String,
    pub action_digest: String,
    pub scope: EffectiveScope,
    pub not_after: TimestampMillis,
}

macro_rules! codes {
    ($(#[$meta:meta])* $name:ident { $($variant:ident),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub enum $name { $($variant),* }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),*];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => stringify!($variant)),* }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

codes!(
    /// The refusal codes of docs/contract.md §5, the full list.
    RefusalCode {
        AlreadyProposed,
        UnknownInstance,
        Duplicate,
        Malformed,
        SignalsPending,
        Blocked,
        SelfApproval,
        RoleNotPermitted,
        JustificationRequired,
        ConflictingScope,
        NotPaused,
        NotAuthorized,
        Expired,
        NoExecutionsLeft,
        DigestMismatch,
        Early,
        AlreadyFinal,
        NotGrantHolder,
        BadSignature,
    }
);

codes!(
    /// Violation kinds of docs/contract.md §5.
    ViolationKind { UngrantedExecution }
);

/// The chain step: `SHA-256(previous ‖ event bytes ‖ outcome code)`.
pub fn chain_hash(previous: &Hash32, event_bytes: &[u8], outcome: &Outcome) -> Hash32 {
    let mut hasher = Sha256::new();
    hasher.update(previous.0);
    hasher.update(event_bytes);
    // Fed in parts: this runs once per event on the log, so no allocation.
    outcome.for_each_chain_part(|part| hasher.update(part.as_bytes()));
    Hash32(hasher.finalize().into())
}
