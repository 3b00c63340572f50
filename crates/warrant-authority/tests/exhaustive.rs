//! An exhaustive, bounded model check of the fold (docs/contract.md §1, §5).
//!
//! Every event sequence up to a depth (6 by default; set
//! `WARRANT_EXHAUSTIVE_DEPTH=8` for the full run) over a small alphabet is
//! folded, and after every event the record is checked against oracles
//! written from the contract. The oracles keep their own model of the
//! instance, built from the events and the outcomes the fold recorded; they
//! never ask the fold what it would do. A failure prints the shortest
//! offending sequence, event by event, with each outcome.
//!
//! Prefixes that reach the same state are explored once (see [`fold_key`]),
//! and the search is split by first event over the available cores; the
//! figures it prints do not depend on how the threads were scheduled.
//!
//! `properties.rs` samples long random histories; this covers every short
//! one, including the exact boundaries (an event at the decision deadline, a
//! claim at `not_after`) that random gaps rarely hit.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use sha2::{Digest, Sha256};
use warrant_authority::{
    step, Authority, Authorization, CountedDecision, Effect, EffectiveScope, Grant, GrantReport,
    HistoryEntry, Instance, InstanceState, LogEvent, LogPosition, Outcome, Phase, Proposal,
    RefusalCode, StandingSignal, Status, StatusName, ViolationKind,
};
use warrant_schema::{
    samples, ActionProposed, DeadlineKind, DeadlineReached, DecisionRecorded, DecisionVerdict,
    Envelope, EventBody, ExecutionOutcome, ExecutionReported, ExecutionRequested, PolicyRef,
    PolicySignalRecorded, ProposalWithdrawn, ReviewMode, Reviewer, Scope, SignalVerdict,
};

const DEFAULT_DEPTH: usize = 6;
const INSTANCE: &str = "b4f2a0c1-6d3e-4f5a-8b7c-9d0e1f2a3b4c";
const T0: i64 = 1_800_000_000_000;
const MINUTE: i64 = 60_000;
const DECISION_TIMEOUT_MS: i64 = 10 * MINUTE;
const GRANT_TTL_MS: i64 = 20 * MINUTE;

/// The `recorded_at` values events carry, in minutes after T0; along a
/// sequence they never go backwards. For a proposal at 0 (decision deadline
/// 10): 10 is exactly the deadline (still in time), 20 is past it and
/// exactly `not_after` of an authorization at 0 (still in the window), 45
/// is past every grant window. A proposal that follows a stray first event
/// may land at 10 (its deadline is then exactly 20) or at 20 (only 45 is
/// late). Each slot more multiplies both the states and the branching.
const SLOTS_MINUTES: [i64; 4] = [0, 10, 20, 45];

/// The three principals who decide; the proposer is also known by the
/// service that submitted its proposal (both count as the proposer).
const PROPOSER: &str = "agent:bot";
const PROPOSING_SERVICE: &str = "svc:agent";
const ALICE: &str = "alice";
const BOB: &str = "bob";
const APPROVER: &str = "sre";
/// The second approval group's role (the two-group rule only).
const SECURITY: &str = "security";
const OVERRIDER: &str = "ic";
const NO_AUTHORITY: &str = "dev";
const EXECUTOR: &str = "svc:deployer-a";
const OTHER_EXECUTOR: &str = "svc:deployer-b";
const SOURCES: [&str; 2] = ["opa", "calendar"];
const UNKNOWN_GRANT: &str = "ffffffff-ffff-4fff-8fff-ffffffffffff";
const WRONG_DIGEST: &str = "abababababababababababababababababababababababababababababababab";
/// The scoped approval narrows the window to this and to one execution.
const SCOPED_NOT_AFTER: i64 = T0 + 15 * MINUTE;

/// A rule as resolved into the proposal.
#[derive(Debug)]
struct Shape {
    rule_id: &'static str,
    required_signals: &'static [&'static str],
    review: ReviewMode,
    approvals_required: i32,
    max_executions: i32,
    /// Several approval groups as (roles, count); empty for the single
    /// group of `approvals_required` approvers.
    groups: &'static [(&'static [&'static str], i32)],
}

impl Shape {
    /// The groups approvals fill, as the contract reads the rule.
    fn groups(&self) -> Vec<(&'static [&'static str], usize)> {
        if self.review == ReviewMode::Never {
            return Vec::new();
        }
        if self.groups.is_empty() {
            return vec![(&[APPROVER], self.approvals_required as usize)];
        }
        self.groups.iter().map(|(r, c)| (*r, *c as usize)).collect()
    }

    fn may_approve(&self, roles: &[String]) -> bool {
        self.groups()
            .iter()
            .any(|(group, _)| group.iter().any(|role| has_role(roles, role)))
    }

    /// Whether `approvers` can fill every place of every group, each in at
    /// most one group: tried by brute force over every assignment, an
    /// oracle independent of the fold's matching.
    fn met_by(&self, approvers: &[&[String]]) -> bool {
        let groups = self.groups();
        fn fill(
            groups: &[(&[&str], usize)],
            approvers: &[&[String]],
            left: &mut Vec<usize>,
        ) -> bool {
            let Some((first, rest)) = approvers.split_first() else {
                return left.iter().all(|n| *n == 0);
            };
            if fill(groups, rest, left) {
                return true;
            }
            for (g, (roles, _)) in groups.iter().enumerate() {
                if left[g] > 0 && roles.iter().any(|r| has_role(first, r)) {
                    left[g] -= 1;
                    let met = fill(groups, rest, left);
                    left[g] += 1;
                    if met {
                        return true;
                    }
                }
            }
            false
        }
        let mut left: Vec<usize> = groups.iter().map(|(_, n)| *n).collect();
        fill(&groups, approvers, &mut left)
    }

    fn places(&self) -> usize {
        self.groups().iter().map(|(_, n)| n).sum()
    }
}

const SHAPES: [Shape; 7] = [
    Shape {
        rule_id: "opa-then-two-approvals",
        required_signals: &["opa"],
        review: ReviewMode::Always,
        approvals_required: 2,
        max_executions: 1,
        groups: &[],
    },
    Shape {
        rule_id: "one-approval-twice",
        required_signals: &[],
        review: ReviewMode::Always,
        approvals_required: 1,
        max_executions: 2,
        groups: &[],
    },
    Shape {
        rule_id: "opa-allows-twice",
        required_signals: &["opa"],
        review: ReviewMode::UnlessAllSignalsAllow,
        approvals_required: 1,
        max_executions: 2,
        groups: &[],
    },
    Shape {
        rule_id: "both-allow-or-two-approvals",
        required_signals: &["opa", "calendar"],
        review: ReviewMode::UnlessAllSignalsAllow,
        approvals_required: 2,
        max_executions: 1,
        groups: &[],
    },
    // A ruleset with this rule is refused at load; should one reach the
    // log anyway, nothing may authorize by rule on no signals at all.
    Shape {
        rule_id: "unless-all-allow-of-nothing",
        required_signals: &[],
        review: ReviewMode::UnlessAllSignalsAllow,
        approvals_required: 1,
        max_executions: 1,
        groups: &[],
    },
    // One SRE and one security reviewer, distinct people: the smallest
    // rule where one approver (holding both roles) could fill either group.
    Shape {
        rule_id: "sre-and-security",
        required_signals: &[],
        review: ReviewMode::Always,
        approvals_required: 2,
        max_executions: 1,
        groups: &[(&[APPROVER], 1), (&[SECURITY], 1)],
    },
    // Low risk: the rule authorizes at proposal, twice at most.
    Shape {
        rule_id: "never-reviewed",
        required_signals: &[],
        review: ReviewMode::Never,
        approvals_required: 0,
        max_executions: 2,
        groups: &[],
    },
];

/// The rule a proposal arriving after a stray first event (or a second
/// proposal) uses: the one where timing decides most.
const LATE_SHAPE: usize = 2;

/// An event in the abstract; [`envelope`] makes it concrete.
#[derive(Debug, Clone, Copy)]
enum Op {
    Propose {
        shape: usize,
    },
    Signal {
        source: &'static str,
        verdict: SignalVerdict,
    },
    Decide {
        verdict: DecisionVerdict,
        reviewer: &'static str,
        roles: &'static [&'static str],
        justification: &'static str,
        scoped: bool,
    },
    Claim {
        digest: &'static str,
    },
    Report {
        grant: GrantRef,
        by: &'static str,
        outcome: ExecutionOutcome,
    },
    Deadline(DeadlineKind),
    Withdraw {
        by: &'static str,
    },
}

#[derive(Debug, Clone, Copy)]
enum GrantRef {
    /// The oldest open grant, else the latest one (a second report of it).
    Issued,
    /// A grant id this instance never issued.
    Unknown,
}

fn decide(
    verdict: DecisionVerdict,
    reviewer: &'static str,
    roles: &'static [&'static str],
    justification: &'static str,
) -> Op {
    Op::Decide {
        verdict,
        reviewer,
        roles,
        justification,
        scoped: false,
    }
}

/// Everything that may follow the first event.
fn alphabet() -> Vec<Op> {
    use DecisionVerdict::{Approve, Override, Reject};
    let mut ops = Vec::new();
    for source in SOURCES {
        for verdict in [
            SignalVerdict::Allow,
            SignalVerdict::Pause,
            SignalVerdict::Deny,
        ] {
            ops.push(Op::Signal { source, verdict });
        }
    }
    ops.extend([
        // Approvals need no justification: one with, one without.
        decide(Approve, ALICE, &[APPROVER], ""),
        decide(Approve, BOB, &[APPROVER], "looks right"),
        Op::Decide {
            verdict: Approve,
            reviewer: BOB,
            roles: &[APPROVER],
            justification: "tonight only",
            scoped: true,
        },
        decide(Approve, PROPOSER, &[APPROVER], "trust me"),
        // For the two-group rule: a security reviewer, and one person
        // holding both roles.
        decide(Approve, BOB, &[SECURITY], ""),
        decide(Approve, ALICE, &[APPROVER, SECURITY], "both hats"),
        decide(
            Approve,
            ALICE,
            &[OVERRIDER],
            "an override role is not an approver role",
        ),
        // Any approver or override role may reject.
        decide(Reject, ALICE, &[OVERRIDER], ""),
        decide(Reject, BOB, &[NO_AUTHORITY], "no"),
        decide(Reject, PROPOSER, &[APPROVER], "never mind"),
        decide(Override, ALICE, &[OVERRIDER], "SEV1"),
        decide(Override, ALICE, &[OVERRIDER], "  "),
        decide(Override, BOB, &[APPROVER], "SEV1"),
        decide(Override, PROPOSER, &[OVERRIDER], "SEV1"),
        Op::Claim {
            digest: samples::ACTION_DIGEST,
        },
        Op::Claim {
            digest: WRONG_DIGEST,
        },
        Op::Report {
            grant: GrantRef::Issued,
            by: EXECUTOR,
            outcome: ExecutionOutcome::Succeeded,
        },
        Op::Report {
            grant: GrantRef::Issued,
            by: EXECUTOR,
            outcome: ExecutionOutcome::Failed,
        },
        Op::Report {
            grant: GrantRef::Issued,
            by: OTHER_EXECUTOR,
            outcome: ExecutionOutcome::Succeeded,
        },
        Op::Report {
            grant: GrantRef::Unknown,
            by: EXECUTOR,
            outcome: ExecutionOutcome::Succeeded,
        },
        Op::Deadline(DeadlineKind::Decision),
        Op::Deadline(DeadlineKind::Grant),
        Op::Withdraw {
            by: PROPOSING_SERVICE,
        },
        Op::Withdraw { by: ALICE },
        Op::Propose { shape: LATE_SHAPE },
    ]);
    ops
}

/// The first events: one proposal per rule shape, and a few strays.
fn first_events() -> Vec<Op> {
    let mut ops: Vec<Op> = (0..SHAPES.len())
        .map(|shape| Op::Propose { shape })
        .collect();
    ops.extend([
        Op::Signal {
            source: "opa",
            verdict: SignalVerdict::Allow,
        },
        decide(DecisionVerdict::Approve, ALICE, &[APPROVER], ""),
        Op::Claim {
            digest: samples::ACTION_DIGEST,
        },
        Op::Report {
            grant: GrantRef::Unknown,
            by: EXECUTOR,
            outcome: ExecutionOutcome::Succeeded,
        },
    ]);
    ops
}

fn label(op: &Op) -> String {
    match op {
        Op::Propose { shape } => {
            let s = &SHAPES[*shape];
            format!(
                "ActionProposed rule {} (signals {:?}, review {:?}, groups {:?}, {} execution(s))",
                s.rule_id, s.required_signals, s.review, s.groups(), s.max_executions
            )
        }
        Op::Signal { source, verdict } => format!("PolicySignalRecorded {source} {verdict:?}"),
        Op::Decide {
            verdict,
            reviewer,
            roles,
            justification,
            scoped,
        } => format!(
            "DecisionRecorded {verdict:?} by {reviewer} roles {roles:?} justification {justification:?}{}",
            if *scoped {
                " scope {max_executions: 1, not_after: T0+15m}"
            } else {
                ""
            }
        ),
        Op::Claim { digest } => format!(
            "ExecutionRequested by {EXECUTOR} for the {} digest",
            if *digest == samples::ACTION_DIGEST {
                "proposed"
            } else {
                "wrong"
            }
        ),
        Op::Report { grant, by, outcome } => format!(
            "ExecutionReported {outcome:?} by {by} for {}",
            match grant {
                GrantRef::Issued => "the oldest open (else latest) grant",
                GrantRef::Unknown => "a grant never issued",
            }
        ),
        Op::Deadline(kind) => format!("DeadlineReached {kind:?}"),
        Op::Withdraw { by } => format!("ProposalWithdrawn by {by}"),
    }
}

fn event_id(n: usize) -> String {
    format!("00000000-0000-4000-8000-{n:012}")
}

fn position(n: usize) -> LogPosition {
    LogPosition {
        partition: 0,
        offset: n as i64 - 1,
    }
}

fn proposal(shape: &Shape) -> ActionProposed {
    let mut proposed = samples::action_proposed();
    proposed.proposer.principal = PROPOSER.to_owned();
    // Copied into every state and cloned on every step; the fold never
    // weighs them.
    proposed.context_refs.clear();
    proposed.rationale = None;
    let groups: Vec<warrant_schema::ApprovalGroup> = shape
        .groups
        .iter()
        .map(|(roles, count)| warrant_schema::ApprovalGroup {
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            count: *count,
        })
        .collect();
    let mut approver_roles: Vec<String> = Vec::new();
    for role in groups.iter().flat_map(|g| &g.roles) {
        if !approver_roles.contains(role) {
            approver_roles.push(role.clone());
        }
    }
    if groups.is_empty() && shape.review != ReviewMode::Never {
        approver_roles.push(APPROVER.to_owned());
    }
    proposed.requirement = warrant_schema::Requirement {
        rule_id: shape.rule_id.to_owned(),
        approvals_required: shape.approvals_required,
        approver_roles,
        override_roles: vec![OVERRIDER.to_owned()],
        required_signals: shape
            .required_signals
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
        review: shape.review,
        decision_timeout_ms: DECISION_TIMEOUT_MS,
        grant_ttl_ms: GRANT_TTL_MS,
        max_executions: shape.max_executions,
        signed_decisions: false,
        approval_groups: groups,
    };
    proposed
}

/// The `n`th event (from 1) of a sequence, `op` at `at`. `None` when the op
/// names a grant and none was issued (the unknown-grant op covers that).
fn envelope(op: &Op, at: i64, n: usize, model: &Model) -> Option<Envelope> {
    let (body, by) = match op {
        Op::Propose { shape } => (
            EventBody::ActionProposed(Box::new(proposal(&SHAPES[*shape]))),
            PROPOSING_SERVICE.to_owned(),
        ),
        Op::Signal { source, verdict } => (
            EventBody::PolicySignalRecorded(PolicySignalRecorded {
                source: (*source).to_owned(),
                verdict: *verdict,
                reasons: vec![],
                policy_ref: PolicyRef {
                    id: "p".to_owned(),
                    version: "1".to_owned(),
                },
            }),
            format!("policy:{source}"),
        ),
        Op::Decide {
            verdict,
            reviewer,
            roles,
            justification,
            scoped,
        } => (
            EventBody::DecisionRecorded(DecisionRecorded {
                reviewer: Reviewer {
                    principal: (*reviewer).to_owned(),
                    roles: roles.iter().map(|r| (*r).to_owned()).collect(),
                },
                verdict: *verdict,
                justification: (*justification).to_owned(),
                scope: if *scoped {
                    Scope {
                        constraints: BTreeMap::new(),
                        not_after: Some(SCOPED_NOT_AFTER),
                        max_executions: Some(1),
                    }
                } else {
                    Scope::default()
                },
                evidence_refs: vec![],
                proof: None,
            }),
            format!("reviewer:{reviewer}"),
        ),
        Op::Claim { digest } => (
            EventBody::ExecutionRequested(ExecutionRequested {
                executor: EXECUTOR.to_owned(),
                action_digest: (*digest).to_owned(),
            }),
            EXECUTOR.to_owned(),
        ),
        Op::Report { grant, by, outcome } => {
            let grant_id = match grant {
                GrantRef::Unknown => UNKNOWN_GRANT.to_owned(),
                GrantRef::Issued => issued_grant(model)?.to_owned(),
            };
            (
                EventBody::ExecutionReported(ExecutionReported {
                    grant_id,
                    outcome: *outcome,
                    detail: None,
                    result_digest: None,
                }),
                (*by).to_owned(),
            )
        }
        Op::Deadline(deadline) => (
            EventBody::DeadlineReached(DeadlineReached {
                deadline: *deadline,
            }),
            "warrant:sweeper".to_owned(),
        ),
        Op::Withdraw { by } => (
            EventBody::ProposalWithdrawn(ProposalWithdrawn { reason: None }),
            (*by).to_owned(),
        ),
    };
    Some(Envelope {
        event_id: event_id(n),
        instance_id: INSTANCE.to_owned(),
        recorded_at: at,
        submitted_by: by,
        body,
    })
}

/// The grant `GrantRef::Issued` names: the oldest open one, else the latest.
fn issued_grant(model: &Model) -> Option<&str> {
    model
        .grants
        .iter()
        .find(|g| g.open)
        .or(model.grants.last())
        .map(|g| g.id.as_str())
}

// --- the oracles' model ---------------------------------------------------------

/// What the contract says the instance is, learned from the events and the
/// outcomes the fold recorded for them (an applied event changes the model,
/// a refused one does not). Every expectation below is computed from this,
/// never from the fold's state.
#[derive(Debug, Clone, Default)]
struct Model {
    proposal: Option<Proposed>,
    status: Option<StatusName>,
    /// The latest applied verdict per source.
    signals: BTreeMap<String, SignalVerdict>,
    /// Counted approvals: the first applied APPROVE of each principal.
    approvals: BTreeMap<String, Scope>,
    /// The roles each counted approver held when approving.
    approver_roles: BTreeMap<String, Vec<String>>,
    /// Set when a paused instance is authorized.
    window: Option<Window>,
    grants: Vec<ModelGrant>,
}

#[derive(Debug, Clone)]
struct Proposed {
    shape: usize,
    at: i64,
    deadline: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Window {
    authorized_at: i64,
    not_after: i64,
    max_executions: u32,
}

#[derive(Debug, Clone)]
struct ModelGrant {
    id: String,
    holder: String,
    open: bool,
}

impl Model {
    fn shape(&self) -> Option<&'static Shape> {
        self.proposal.as_ref().map(|p| &SHAPES[p.shape])
    }

    /// Both identities of the proposer count as the proposer.
    fn is_proposer(principal: &str) -> bool {
        principal == PROPOSER || principal == PROPOSING_SERVICE
    }

    /// The status signals put a paused instance in (docs/contract.md §5, Signals).
    fn paused_status_with(
        &self,
        shape: &Shape,
        source: &str,
        verdict: SignalVerdict,
    ) -> StatusName {
        let mut signals = self.signals.clone();
        signals.insert(source.to_owned(), verdict);
        if signals.values().any(|v| *v == SignalVerdict::Deny) {
            StatusName::Blocked
        } else if !shape
            .required_signals
            .iter()
            .all(|s| signals.contains_key(*s))
        {
            StatusName::AwaitingSignals
        } else if shape.review == ReviewMode::UnlessAllSignalsAllow
            && !shape.required_signals.is_empty()
            && signals.values().all(|v| *v == SignalVerdict::Allow)
        {
            StatusName::Authorized
        } else {
            StatusName::AwaitingDecision
        }
    }

    /// The effective scope of an authorization at `at` (docs/contract.md §5, Effective
    /// scope): the grant TTL and the rule, narrowed by every counted
    /// decision and by `extra` (an override's own scope).
    fn window_at(&self, shape: &Shape, at: i64, extra: Option<&Scope>) -> Window {
        let mut window = Window {
            authorized_at: at,
            not_after: at + GRANT_TTL_MS,
            max_executions: u32::try_from(shape.max_executions).unwrap_or(0),
        };
        for scope in self.approvals.values().chain(extra) {
            if let Some(not_after) = scope.not_after {
                window.not_after = window.not_after.min(not_after);
            }
            if let Some(max) = scope.max_executions {
                window.max_executions = window.max_executions.min(u32::try_from(max).unwrap_or(0));
            }
        }
        window
    }

    fn open_grants(&self) -> usize {
        self.grants.iter().filter(|g| g.open).count()
    }

    /// The model as a dedup key: grant ids are left out (they are derived
    /// from event ids, i.e. from where in the sequence a claim came).
    fn key(&self, out: &mut String) {
        if let Some(p) = &self.proposal {
            let _ = write!(out, "{}@{}/{}", p.shape, p.at, p.deadline);
        }
        out.push('|');
        out.push_str(self.status.map_or("", StatusName::as_str));
        out.push('|');
        for (source, verdict) in &self.signals {
            let _ = write!(out, "{source}={verdict:?},");
        }
        out.push('|');
        for (principal, scope) in &self.approvals {
            out.push_str(principal);
            scope_key(scope, out);
            let _ = write!(out, "{:?}", self.approver_roles.get(principal));
        }
        out.push('|');
        if let Some(w) = &self.window {
            let _ = write!(
                out,
                "{}-{}x{}",
                w.authorized_at, w.not_after, w.max_executions
            );
        }
        out.push('|');
        for grant in &self.grants {
            out.push_str(&grant.holder);
            out.push(if grant.open { '+' } else { '-' });
        }
    }
}

/// What the contract expects of one event.
#[derive(Debug)]
enum Expect {
    Applied(StatusName),
    /// Refused with one of these codes (where several reasons apply the
    /// contract does not rank them).
    Refused(Vec<RefusalCode>),
    Violation,
    /// A report of an unknown grant after a final status: recorded as a
    /// violation (something ran) or refused `AlreadyFinal`; the contract
    /// says both.
    ViolationOrAlreadyFinal,
    /// The model itself cannot place the event (it learned an impossible
    /// history from the fold's outcomes).
    Inconsistent(&'static str),
}

fn refused(codes: &[RefusalCode]) -> Expect {
    Expect::Refused(codes.to_vec())
}

fn has_role(roles: &[String], role: &str) -> bool {
    roles.iter().any(|r| r == role)
}

/// The outcome docs/contract.md §5 prescribes for `envelope` given the model.
fn expected(model: &Model, envelope: &Envelope) -> Expect {
    use RefusalCode as R;
    use StatusName as S;
    let at = envelope.recorded_at;
    let body = &envelope.body;
    let (Some(proposed), Some(shape), Some(status)) =
        (&model.proposal, model.shape(), model.status)
    else {
        return match body {
            EventBody::ActionProposed(p) if p.requirement.review == ReviewMode::Never => {
                Expect::Applied(S::Authorized)
            }
            EventBody::ActionProposed(p) if p.requirement.required_signals.is_empty() => {
                Expect::Applied(S::AwaitingDecision)
            }
            EventBody::ActionProposed(_) => Expect::Applied(S::AwaitingSignals),
            _ => refused(&[R::UnknownInstance]),
        };
    };
    if let EventBody::ActionProposed(_) = body {
        return refused(&[R::AlreadyProposed]);
    }
    let reported = match body {
        EventBody::ExecutionReported(r) => Some(model.grants.iter().find(|g| g.id == r.grant_id)),
        _ => None,
    };
    if status.is_final() {
        return match reported {
            Some(None) => Expect::ViolationOrAlreadyFinal,
            Some(Some(_)) | None => refused(&[R::AlreadyFinal]),
        };
    }
    if let Some(None) = reported {
        return Expect::Violation;
    }
    let paused = status.is_paused();
    if paused && at > proposed.deadline {
        return match body {
            EventBody::DeadlineReached(d) if d.deadline == DeadlineKind::Decision => {
                Expect::Applied(S::Expired)
            }
            EventBody::DeadlineReached(_) => refused(&[R::Early]),
            _ => refused(&[R::Expired]),
        };
    }
    match body {
        EventBody::ActionProposed(_) => unreachable!("handled above"),
        EventBody::PolicySignalRecorded(s) if paused => {
            Expect::Applied(model.paused_status_with(shape, &s.source, s.verdict))
        }
        // Recorded, changing nothing: the decision stands.
        EventBody::PolicySignalRecorded(_) => Expect::Applied(status),
        EventBody::DecisionRecorded(d) => {
            let principal = &d.reviewer.principal;
            let roles = &d.reviewer.roles;
            let mut reasons = Vec::new();
            match d.verdict {
                DecisionVerdict::Approve | DecisionVerdict::Override if !paused => {
                    reasons.push(R::NotPaused)
                }
                DecisionVerdict::Approve => {
                    if Model::is_proposer(principal) {
                        reasons.push(R::SelfApproval);
                    }
                    if !shape.may_approve(roles) {
                        reasons.push(R::RoleNotPermitted);
                    }
                    if status == S::AwaitingSignals {
                        reasons.push(R::SignalsPending);
                    }
                    if status == S::Blocked {
                        reasons.push(R::Blocked);
                    }
                }
                DecisionVerdict::Override => {
                    if Model::is_proposer(principal) {
                        reasons.push(R::SelfApproval);
                    }
                    if !has_role(roles, OVERRIDER) {
                        reasons.push(R::RoleNotPermitted);
                    }
                    if d.justification.trim().is_empty() {
                        reasons.push(R::JustificationRequired);
                    }
                }
                DecisionVerdict::Reject => {
                    if status == S::Executing {
                        reasons.push(R::NotPaused);
                    }
                    if !shape.may_approve(roles) && !has_role(roles, OVERRIDER) {
                        reasons.push(R::RoleNotPermitted);
                    }
                }
            }
            if !reasons.is_empty() {
                return Expect::Refused(reasons);
            }
            Expect::Applied(match d.verdict {
                DecisionVerdict::Reject => S::Rejected,
                DecisionVerdict::Override => S::Authorized,
                DecisionVerdict::Approve => {
                    let mut approvers: BTreeMap<&str, &[String]> = model
                        .approver_roles
                        .iter()
                        .map(|(p, r)| (p.as_str(), r.as_slice()))
                        .collect();
                    approvers.entry(principal).or_insert(roles);
                    let approvers: Vec<&[String]> = approvers.into_values().collect();
                    if shape.met_by(&approvers) {
                        S::Authorized
                    } else {
                        S::AwaitingDecision
                    }
                }
            })
        }
        EventBody::ExecutionRequested(_) if paused => refused(&[R::NotAuthorized]),
        EventBody::ExecutionRequested(request) => {
            let Some(window) = &model.window else {
                return Expect::Inconsistent("authorized without a window");
            };
            let mut reasons = Vec::new();
            if at > window.not_after {
                reasons.push(R::Expired);
            }
            if model.grants.len() >= window.max_executions as usize {
                reasons.push(R::NoExecutionsLeft);
            }
            if request.action_digest != samples::ACTION_DIGEST {
                reasons.push(R::DigestMismatch);
            }
            if reasons.is_empty() {
                Expect::Applied(S::Executing)
            } else {
                Expect::Refused(reasons)
            }
        }
        EventBody::ExecutionReported(report) => {
            let Some(Some(grant)) = reported else {
                unreachable!("unknown grants are handled above")
            };
            if envelope.submitted_by != grant.holder {
                return refused(&[R::NotGrantHolder]);
            }
            if !grant.open {
                return refused(&[R::Duplicate]);
            }
            let Some(window) = &model.window else {
                return Expect::Inconsistent("a grant without a window");
            };
            if model.open_grants() > 1 {
                Expect::Applied(S::Executing)
            } else if model.grants.len() < window.max_executions as usize && at <= window.not_after
            {
                Expect::Applied(S::Authorized)
            } else if report.outcome == ExecutionOutcome::Failed {
                Expect::Applied(S::Failed)
            } else {
                Expect::Applied(S::Completed)
            }
        }
        EventBody::DeadlineReached(d) => match (status, d.deadline) {
            (S::Authorized, DeadlineKind::Grant)
                if model.window.as_ref().is_some_and(|w| at > w.not_after) =>
            {
                Expect::Applied(S::Expired)
            }
            _ => refused(&[R::Early]),
        },
        EventBody::ProposalWithdrawn(_) => {
            let mut reasons = Vec::new();
            if status == S::Executing {
                reasons.push(R::NotPaused);
            }
            if !Model::is_proposer(&envelope.submitted_by) {
                reasons.push(R::RoleNotPermitted);
            }
            if reasons.is_empty() {
                Expect::Applied(S::Withdrawn)
            } else {
                Expect::Refused(reasons)
            }
        }
    }
}

// --- the fold's state as a dedup key ------------------------------------------------

/// The fold's state minus what only grows or only records: the dedup key.
///
/// Two prefixes that end in the same key, at the same time slot and with the
/// same model, have the same futures, so only one is explored further. That
/// is sound because every field left out is write-only for the fold's
/// decisions and for every oracle here:
/// - `entries`, `head`: they number and chain entries; the structural
///   oracle checks them on every step against the concrete state;
/// - `seen_event_ids`: every event of the alphabet has a fresh id, so
///   `Duplicate`-by-id never fires and the set never matters;
/// - the `seq` of signals, approvals, grants and reports, `granted_at`,
///   `reported_at`, and the violations list: recorded, never weighed;
/// - grant ids: fresh per claim (derived from its event id) and only ever
///   compared with reports, which name grants by rank (oldest open, or a
///   never-issued id), so ranks stand in for ids;
/// - the proposal's copied fields: fixed by the rule shape and the time,
///   both in the model's part of the key.
///
/// The patterns below name every field, so a field added to the record
/// breaks this build until someone decides whether it belongs in the key.
fn fold_key(state: &InstanceState, out: &mut String) {
    let InstanceState {
        instance_id: _,
        phase,
        seen_event_ids: _,
        entries: _,
        head: _,
    } = state;
    let Phase::Proposed(instance) = phase else {
        out.push_str("unproposed");
        return;
    };
    let Instance {
        proposal,
        status,
        signals,
        approvals,
        grants,
        violations: _,
    } = &**instance;
    let Proposal {
        proposed_at,
        submitted_by: _,
        action: _,
        action_digest: _,
        proposer: _,
        context_refs: _,
        rationale: _,
        requirement: _,
        ruleset: _,
        resolution: _,
        decision_deadline,
    } = proposal;
    let _ = write!(out, "{proposed_at}/{decision_deadline}|");
    status_key(status, out);
    out.push('|');
    for (source, StandingSignal { verdict, seq: _ }) in signals {
        let _ = write!(out, "{source}={verdict:?},");
    }
    out.push('|');
    for (
        principal,
        CountedDecision {
            seq: _,
            scope,
            roles,
            counted_for,
        },
    ) in approvals
    {
        out.push_str(principal);
        scope_key(scope, out);
        let _ = write!(out, "{roles:?}>{counted_for:?}");
    }
    out.push('|');
    for Grant {
        grant_id: _,
        executor,
        granted_at: _,
        granted_seq: _,
        report,
    } in grants
    {
        let outcome = report.as_ref().map(
            |GrantReport {
                 outcome,
                 reported_at: _,
                 seq: _,
             }| outcome,
        );
        let _ = write!(out, "{executor}:{outcome:?},");
    }
}

fn status_key(status: &Status, out: &mut String) {
    out.push_str(status.name().as_str());
    let authorization = match status {
        Status::AwaitingSignals
        | Status::AwaitingDecision
        | Status::Blocked
        | Status::Withdrawn => return,
        Status::Rejected { by } => {
            out.push_str(by);
            return;
        }
        Status::Expired { deadline } => {
            let _ = write!(out, "{deadline:?}");
            return;
        }
        Status::Authorized(a) | Status::Executing(a) | Status::Completed(a) | Status::Failed(a) => {
            a
        }
    };
    let Authorization {
        authorized_at,
        authority,
        scope:
            EffectiveScope {
                constraints,
                not_after,
                max_executions,
            },
    } = authorization;
    let _ = write!(
        out,
        "@{authorized_at}-{not_after}x{max_executions}{constraints:?}"
    );
    match authority {
        Authority::Quorum { approvers } => {
            for approver in approvers {
                out.push_str(approver);
                out.push(',');
            }
        }
        Authority::Override {
            principal,
            justification,
        } => {
            let _ = write!(out, "override {principal} {justification:?}");
        }
        Authority::Rule { rule_id } => out.push_str(rule_id),
    }
}

fn scope_key(scope: &Scope, out: &mut String) {
    let Scope {
        constraints,
        not_after,
        max_executions,
    } = scope;
    let _ = write!(out, "({not_after:?},{max_executions:?},{constraints:?})");
}

/// What a refusal must leave untouched: the key plus the violations.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Footprint {
    key: String,
    violations: usize,
}

impl Footprint {
    fn of(state: &InstanceState) -> Footprint {
        let mut key = String::with_capacity(160);
        fold_key(state, &mut key);
        Footprint {
            key,
            violations: state.instance().map_or(0, |i| i.violations.len()),
        }
    }
}

// --- one step, checked ----------------------------------------------------------

#[derive(Debug, Clone)]
struct Node {
    state: InstanceState,
    model: Model,
    footprint: Footprint,
}

impl Node {
    fn root() -> Node {
        let state = InstanceState::new(INSTANCE);
        Node {
            footprint: Footprint::of(&state),
            state,
            model: Model::default(),
        }
    }
}

struct Stepped {
    node: Node,
    /// `None` when the fold panicked.
    entry: Option<HistoryEntry>,
    /// `Err` names the broken rule.
    verdict: Result<(), String>,
}

/// Concrete events and their log bytes, encoded once: an event depends only
/// on its op, time slot, position and the grant it names, and Avro encoding
/// in a debug build costs more than the fold.
#[derive(Debug, Default)]
struct Events {
    encoded: BTreeMap<EventKey, (Envelope, Vec<u8>)>,
}

/// Op, time slot, position, and the grant id a report names (else empty).
type EventKey = (usize, usize, usize, String);

impl Events {
    fn get(
        &mut self,
        op: usize,
        ops: &[Op],
        slot: usize,
        n: usize,
        model: &Model,
    ) -> Option<&(Envelope, Vec<u8>)> {
        let at = T0 + SLOTS_MINUTES[slot] * MINUTE;
        let grant = match ops[op] {
            Op::Report {
                grant: GrantRef::Issued,
                ..
            } => issued_grant(model)?.to_owned(),
            _ => String::new(),
        };
        let key = (op, slot, n, grant);
        if !self.encoded.contains_key(&key) {
            let envelope = envelope(&ops[op], at, n, model)?;
            let bytes = warrant_schema::encode(&envelope).expect("alphabet events encode");
            self.encoded.insert(key.clone(), (envelope, bytes));
        }
        self.encoded.get(&key)
    }
}

/// Fold `ops[op]` at `slot` as the `n`th event after `before`, and judge it.
fn advance(
    events: &mut Events,
    ops: &[Op],
    before: &Node,
    op: usize,
    slot: usize,
    n: usize,
) -> Option<Stepped> {
    let (envelope, bytes) = events.get(op, ops, slot, n, &before.model)?;
    let mut state = before.state.clone();
    // The fold is total (docs/contract.md §1.6): a panic is a failure like any other,
    // reported with the sequence that caused it.
    let folded = panic::catch_unwind(AssertUnwindSafe(|| {
        step(
            &mut state,
            LogEvent {
                position: position(n),
                bytes,
                decoded: Ok(envelope.clone()),
            },
        )
    }));
    let mut model = before.model.clone();
    let after = Footprint::of(&state);
    let (entry, verdict) = match folded {
        Ok(entry) => {
            let verdict = judge(before, &state, &after, envelope, &entry, n, &mut model);
            (Some(entry), verdict)
        }
        Err(payload) => {
            let message = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or(payload.downcast_ref::<&str>().copied())
                .unwrap_or("a non-text panic");
            (None, Err(format!("the fold panicked: {message}")))
        }
    };
    Some(Stepped {
        node: Node {
            state,
            model,
            footprint: after,
        },
        entry,
        verdict,
    })
}

fn shown(status: Option<StatusName>) -> &'static str {
    status.map_or("unproposed", StatusName::as_str)
}

fn ensure(holds: bool, rule: impl FnOnce() -> String) -> Result<(), String> {
    if holds {
        Ok(())
    } else {
        Err(rule())
    }
}

/// The hash chain step, from the contract: SHA-256(previous ‖ event bytes ‖
/// outcome), the outcome spelled `applied FROM>TO`, `refused CODE` or
/// `violation KIND`.
///
/// SHA-256 in a debug build costs as much as the rest of a step, so this
/// runs once per distinct state (on the step that first reaches it); every
/// step still checks numbering, placement and the head.
fn chain_holds(before: &Node, bytes: &[u8], entry: &HistoryEntry) -> Result<(), String> {
    ensure(
        entry.hash.0 == chained(&before.state.head.0, bytes, &entry.outcome),
        || "the entry's hash is not SHA-256(previous ‖ bytes ‖ outcome)".to_owned(),
    )
}

fn chained(previous: &[u8; 32], bytes: &[u8], outcome: &Outcome) -> [u8; 32] {
    let spelled = match outcome {
        Outcome::Applied { from, to, .. } => format!(
            "applied {}>{}",
            from.map_or("NONE", StatusName::as_str),
            to.as_str()
        ),
        Outcome::Refused { code, .. } => format!("refused {}", code.as_str()),
        Outcome::Violation { violation, .. } => format!("violation {}", violation.as_str()),
    };
    Sha256::new()
        .chain_update(previous)
        .chain_update(bytes)
        .chain_update(spelled.as_bytes())
        .finalize()
        .into()
}

/// Check one entry against every oracle and teach the model what was
/// applied. The safety invariants come first so that a broken one is
/// named as such; the exact contract outcome is checked last.
fn judge(
    before: &Node,
    after: &InstanceState,
    footprint: &Footprint,
    envelope: &Envelope,
    entry: &HistoryEntry,
    n: usize,
    model: &mut Model,
) -> Result<(), String> {
    let at = envelope.recorded_at;
    let was = before.model.status;
    let outcome = &entry.outcome;
    let applied_to = match outcome {
        Outcome::Applied { to, .. } => Some(*to),
        Outcome::Refused { .. } | Outcome::Violation { .. } => None,
    };

    // Exactly one history entry per event, numbered, placed and chained.
    ensure(entry.seq == n as u64, || {
        format!("one entry per event: entry {} for event {n}", entry.seq)
    })?;
    ensure(entry.position == position(n), || {
        format!(
            "the entry is at {:?}, not where the event was",
            entry.position
        )
    })?;
    ensure(
        entry.recorded_at == Some(at) && entry.event.as_ref() == Some(envelope),
        || "the entry does not carry the event it records".to_owned(),
    )?;
    ensure(
        after.entries == n as u64 && after.head == entry.hash,
        || "the state's entry count or head hash is not the last entry's".to_owned(),
    )?;

    // A refusal is recorded, never applied; a violation only adds itself.
    let (key_before, violations_before) = (&before.footprint.key, before.footprint.violations);
    let (key_after, violations_after) = (&footprint.key, footprint.violations);
    match outcome {
        Outcome::Applied { from, to, .. } => {
            ensure(*from == was, || {
                format!("applied from {from:?}, but the instance was {}", shown(was))
            })?;
            ensure(after.status() == Some(*to), || {
                format!("the record says {to} but the state is {:?}", after.status())
            })?;
            ensure(violations_after == violations_before, || {
                "an applied event changed the violations".to_owned()
            })?;
        }
        Outcome::Refused { code, .. } => {
            ensure(
                key_after == key_before && violations_after == violations_before,
                || format!("refused {code} yet the state changed"),
            )?;
        }
        Outcome::Violation { violation, .. } => {
            ensure(*violation == ViolationKind::UngrantedExecution, || {
                format!("unexpected violation kind {violation}")
            })?;
            ensure(
                key_after == key_before && violations_after == violations_before + 1,
                || "a violation did more than record itself".to_owned(),
            )?;
        }
    }

    // Nothing is applied after a final status.
    if was.is_some_and(StatusName::is_final) {
        ensure(applied_to.is_none(), || {
            format!(
                "{} was applied after the final status {}",
                envelope.body.kind(),
                shown(was)
            )
        })?;
    }

    // Past the decision deadline a paused instance only expires.
    let late_pause = was.is_some_and(StatusName::is_paused)
        && before
            .model
            .proposal
            .as_ref()
            .is_some_and(|p| at > p.deadline);
    if late_pause {
        ensure(
            !matches!(
                applied_to,
                Some(StatusName::Authorized | StatusName::Executing)
            ),
            || {
                format!(
                    "{} recorded after the decision deadline moved the pause to {applied_to:?}",
                    envelope.body.kind()
                )
            },
        )?;
        ensure(
            applied_to.is_none() || matches!(envelope.body, EventBody::DeadlineReached(_)),
            || {
                format!(
                    "{} recorded after the decision deadline was applied to a pause",
                    envelope.body.kind()
                )
            },
        )?;
    }

    learn(model, envelope, entry)?;
    authority(before, after, envelope, entry, model)?;
    grants(before, after, envelope, entry, model)?;

    // Finally the exact outcome the contract prescribes.
    let expect = expected(&before.model, envelope);
    if let Expect::Inconsistent(why) = expect {
        return Err(format!("the model cannot place this event: {why}"));
    }
    let matches = match (&expect, outcome) {
        (Expect::Applied(status), Outcome::Applied { to, .. }) => status == to,
        (Expect::Refused(codes), Outcome::Refused { code, .. }) => codes.contains(code),
        (Expect::Violation | Expect::ViolationOrAlreadyFinal, Outcome::Violation { .. }) => true,
        (Expect::ViolationOrAlreadyFinal, Outcome::Refused { code, .. }) => {
            *code == RefusalCode::AlreadyFinal
        }
        _ => false,
    };
    ensure(matches, || {
        format!("the contract prescribes {expect:?} for this event")
    })
}

/// Teach the model what an applied event did (refusals teach nothing).
fn learn(model: &mut Model, envelope: &Envelope, entry: &HistoryEntry) -> Result<(), String> {
    let Outcome::Applied { from, to, effect } = &entry.outcome else {
        return Ok(());
    };
    let at = envelope.recorded_at;
    match &envelope.body {
        EventBody::ActionProposed(p) => {
            let shape = SHAPES
                .iter()
                .position(|s| s.rule_id == p.requirement.rule_id)
                .ok_or("applied a proposal of a rule outside the alphabet")?;
            model.proposal = Some(Proposed {
                shape,
                at,
                deadline: at + DECISION_TIMEOUT_MS,
            });
            if *to == StatusName::Authorized {
                // review NEVER: authorized by the rule at proposal.
                model.window = Some(model.window_at(&SHAPES[shape], at, None));
            }
        }
        EventBody::PolicySignalRecorded(s) => {
            model.signals.insert(s.source.clone(), s.verdict);
        }
        EventBody::DecisionRecorded(d) if d.verdict == DecisionVerdict::Approve => {
            // No approval counts unless its reviewer may approve.
            let shape = model.shape().ok_or("an approval before any proposal")?;
            ensure(
                shape.may_approve(&d.reviewer.roles) && !Model::is_proposer(&d.reviewer.principal),
                || {
                    format!(
                        "counted an approval by {} {:?}",
                        d.reviewer.principal, d.reviewer.roles
                    )
                },
            )?;
            ensure(*from == Some(StatusName::AwaitingDecision), || {
                format!("counted an approval while {from:?}")
            })?;
            model
                .approvals
                .entry(d.reviewer.principal.clone())
                .or_insert_with(|| d.scope.clone());
            model
                .approver_roles
                .entry(d.reviewer.principal.clone())
                .or_insert_with(|| d.reviewer.roles.clone());
        }
        EventBody::ExecutionRequested(request) => {
            if let Some(Effect::GrantIssued(grant)) = effect {
                model.grants.push(ModelGrant {
                    id: grant.grant_id.clone(),
                    holder: request.executor.clone(),
                    open: true,
                });
            }
        }
        EventBody::ExecutionReported(report) => {
            // Only the holder closes its grant, and only once.
            let Some(grant) = model.grants.iter_mut().find(|g| g.id == report.grant_id) else {
                return Err(format!(
                    "closed grant {} that was never issued",
                    report.grant_id
                ));
            };
            ensure(envelope.submitted_by == grant.holder, || {
                format!(
                    "{} closed a grant held by {}",
                    envelope.submitted_by, grant.holder
                )
            })?;
            ensure(grant.open, || "closed a grant twice".to_owned())?;
            grant.open = false;
        }
        EventBody::DecisionRecorded(_)
        | EventBody::DeadlineReached(_)
        | EventBody::ProposalWithdrawn(_) => {}
    }
    if *to == StatusName::Authorized && from.is_some_and(StatusName::is_paused) {
        let shape = model.shape().ok_or("authorized before any proposal")?;
        let extra = match &envelope.body {
            EventBody::DecisionRecorded(d) if d.verdict == DecisionVerdict::Override => {
                Some(&d.scope)
            }
            _ => None,
        };
        model.window = Some(model.window_at(shape, at, extra));
    }
    model.status = Some(*to);
    Ok(())
}

/// No AUTHORIZED without a quorum of distinct permitted principals (none
/// the proposer), a justified override by an override role (not the
/// proposer), or the rule with every required signal ALLOW; and the record
/// names that authority and the effective scope.
fn authority(
    before: &Node,
    after: &InstanceState,
    envelope: &Envelope,
    entry: &HistoryEntry,
    model: &Model,
) -> Result<(), String> {
    let Outcome::Applied {
        from,
        to: StatusName::Authorized,
        ..
    } = &entry.outcome
    else {
        return Ok(());
    };
    let authorization = after
        .instance()
        .and_then(|i| i.status.authorization())
        .ok_or("AUTHORIZED without an authorization")?;
    match from {
        // Recorded in place (a late signal), or back from an execution:
        // the authorization must be the one already granted.
        Some(StatusName::Authorized | StatusName::Executing) => {
            let standing = before
                .state
                .instance()
                .and_then(|i| i.status.authorization());
            return ensure(standing == Some(authorization), || {
                "the authorization changed without a new decision".to_owned()
            });
        }
        Some(paused) if paused.is_paused() => {}
        None if matches!(envelope.body, EventBody::ActionProposed(_)) => {}
        other => return Err(format!("AUTHORIZED from {other:?}")),
    }
    let shape = model.shape().ok_or("authorized before any proposal")?;
    let rule_id = shape.rule_id;
    let named = &authorization.authority;
    match &envelope.body {
        EventBody::ActionProposed(_) => {
            ensure(shape.review == ReviewMode::Never, || {
                format!(
                    "a proposal of rule {rule_id} (review {:?}) AUTHORIZED",
                    shape.review
                )
            })?;
            ensure(
                *named
                    == Authority::Rule {
                        rule_id: rule_id.to_owned(),
                    },
                || format!("review NEVER recorded as {named:?}"),
            )?;
        }
        EventBody::DecisionRecorded(d) if d.verdict == DecisionVerdict::Approve => {
            let Authority::Quorum { approvers } = named else {
                return Err(format!("an approval authorized as {named:?}"));
            };
            // Exactly one place per named approver, every place filled, by
            // counted approvals only, and those people can fill the groups.
            let roles: Option<Vec<&[String]>> = approvers
                .iter()
                .map(|p| model.approver_roles.get(p).map(Vec::as_slice))
                .collect();
            let roles = roles.ok_or_else(|| {
                format!("quorum {approvers:?} names someone whose approval was not counted")
            })?;
            ensure(
                approvers.len() == shape.places() && shape.met_by(&roles),
                || {
                    format!(
                        "AUTHORIZED by {approvers:?}, which cannot fill the groups {:?}",
                        shape.groups()
                    )
                },
            )?;
            if shape.groups.is_empty() {
                // One group: everyone counted so far is the quorum.
                let all: Vec<String> = model.approvals.keys().cloned().collect();
                ensure(*approvers == all, || {
                    format!("quorum of {all:?} recorded as {named:?}")
                })?;
            }
        }
        EventBody::DecisionRecorded(d) if d.verdict == DecisionVerdict::Override => {
            ensure(
                has_role(&d.reviewer.roles, OVERRIDER)
                    && !d.justification.trim().is_empty()
                    && !Model::is_proposer(&d.reviewer.principal),
                || {
                    format!(
                        "AUTHORIZED by an override of {} {:?} justified {:?}",
                        d.reviewer.principal, d.reviewer.roles, d.justification
                    )
                },
            )?;
            ensure(
                *named
                    == Authority::Override {
                        principal: d.reviewer.principal.clone(),
                        justification: d.justification.clone(),
                    },
                || format!("override recorded as {named:?}"),
            )?;
        }
        EventBody::PolicySignalRecorded(_) => {
            ensure(
                shape.review == ReviewMode::UnlessAllSignalsAllow
                    && !shape.required_signals.is_empty()
                    && shape
                        .required_signals
                        .iter()
                        .all(|s| model.signals.get(*s) == Some(&SignalVerdict::Allow))
                    && model.signals.values().all(|v| *v == SignalVerdict::Allow),
                || {
                    format!(
                        "AUTHORIZED by rule {rule_id} (review {:?}, required {:?}) on signals {:?}",
                        shape.review, shape.required_signals, model.signals
                    )
                },
            )?;
            ensure(
                *named
                    == Authority::Rule {
                        rule_id: rule_id.to_owned(),
                    },
                || format!("rule authority recorded as {named:?}"),
            )?;
        }
        _ => {
            return Err(format!(
                "{} authorized a paused instance",
                envelope.body.kind()
            ))
        }
    }
    let window = model.window.as_ref().ok_or("authorized without a window")?;
    let scope = &authorization.scope;
    ensure(
        authorization.authorized_at == window.authorized_at
            && scope.not_after == window.not_after
            && scope.max_executions == window.max_executions,
        || {
            format!(
                "the effective scope should be {window:?}, the record says authorized_at {} {scope:?}",
                authorization.authorized_at
            )
        },
    )
}

/// No grant while paused, expired or final, after `not_after`, beyond
/// `max_executions` or for another digest; and a grant appears in the state
/// only when the record says one was issued.
fn grants(
    before: &Node,
    after: &InstanceState,
    envelope: &Envelope,
    entry: &HistoryEntry,
    model: &Model,
) -> Result<(), String> {
    let count = |s: &InstanceState| s.instance().map_or(0, |i| i.grants.len());
    let issued = entry.outcome.grant();
    ensure(
        count(after) == count(&before.state) + usize::from(issued.is_some()),
        || "the grants changed without a GrantIssued".to_owned(),
    )?;
    let Some(grant) = issued else {
        if let Outcome::Applied {
            from,
            to: StatusName::Executing,
            ..
        } = &entry.outcome
        {
            // Staying in EXECUTING (one of several grants closed, a late
            // signal recorded) is fine; entering it is what needs a grant.
            ensure(*from == Some(StatusName::Executing), || {
                format!("EXECUTING from {from:?} without a grant")
            })?;
        }
        return Ok(());
    };
    let EventBody::ExecutionRequested(request) = &envelope.body else {
        return Err(format!("a grant issued on {}", envelope.body.kind()));
    };
    let was = before.model.status;
    ensure(
        matches!(was, Some(StatusName::Authorized | StatusName::Executing)),
        || format!("a grant issued while {}", shown(was)),
    )?;
    ensure(
        request.action_digest == samples::ACTION_DIGEST
            && grant.action_digest == samples::ACTION_DIGEST,
        || format!("a grant for digest {}", request.action_digest),
    )?;
    let window = before
        .model
        .window
        .as_ref()
        .ok_or("a grant without an authorization window")?;
    ensure(envelope.recorded_at <= window.not_after, || {
        format!(
            "a grant at {} after not_after {}",
            envelope.recorded_at, window.not_after
        )
    })?;
    let shape = model.shape().ok_or("a grant before any proposal")?;
    ensure(
        model.grants.len() <= window.max_executions as usize
            && model.grants.len() <= shape.max_executions as usize,
        || {
            format!(
                "grant {} of at most {} execution(s)",
                model.grants.len(),
                window.max_executions
            )
        },
    )
}

// --- the search -------------------------------------------------------------------

/// A prefix that broke a rule: the events as (op, slot) and the rule.
#[derive(Debug)]
struct Failure {
    path: Vec<(usize, usize)>,
    message: String,
}

/// What the search reached, so a shrunken alphabet cannot pass by missing
/// whole parts of the contract.
#[derive(Debug, Default)]
struct Coverage {
    statuses: BTreeSet<StatusName>,
    refusals: BTreeSet<RefusalCode>,
    grants: u64,
    violations: u64,
}

impl Coverage {
    fn note(&mut self, outcome: &Outcome) {
        match outcome {
            Outcome::Applied { to, .. } => {
                self.statuses.insert(*to);
            }
            Outcome::Refused { code, .. } => {
                self.refusals.insert(*code);
            }
            Outcome::Violation { .. } => self.violations += 1,
        }
        self.grants += u64::from(outcome.grant().is_some());
    }
}

struct Search {
    ops: Vec<Op>,
    firsts: Vec<usize>,
    rest: Vec<usize>,
    depth: usize,
    /// Key → the most events explored after it.
    visited: BTreeMap<String, usize>,
    folded: u64,
    coverage: Coverage,
    events: Events,
}

impl Search {
    fn new(depth: usize) -> Search {
        let mut ops = first_events();
        let firsts = (0..ops.len()).collect();
        let start = ops.len();
        ops.extend(alphabet());
        let rest = (start..ops.len()).collect();
        Search {
            ops,
            firsts,
            rest,
            depth,
            visited: BTreeMap::new(),
            folded: 0,
            coverage: Coverage::default(),
            events: Events::default(),
        }
    }

    fn run(&mut self) -> Result<(), Failure> {
        let firsts = self.firsts.clone();
        self.run_from(&firsts)
    }

    /// Only the sequences that start with one of `firsts`.
    fn run_from(&mut self, firsts: &[usize]) -> Result<(), Failure> {
        let root = Node::root();
        let mut path = Vec::with_capacity(self.depth);
        for &first in firsts {
            // Every sequence starts at T0.
            self.visit(&root, first, 0, &mut path, self.depth)?;
        }
        Ok(())
    }

    /// The first events in groups whose searches share no state, one
    /// thread's work each, biggest first so no thread is left with a big one
    /// at the end. Each proposal stands alone (its rule is in every key below
    /// it) except the late rule's, which goes with the strays: they lead back
    /// to the unproposed state and on into that rule.
    fn work_items(&self) -> Vec<Vec<usize>> {
        let mut items: Vec<Vec<usize>> = Vec::new();
        let mut late_and_strays = Vec::new();
        for &first in &self.firsts {
            match self.ops[first] {
                Op::Propose { shape } if shape != LATE_SHAPE => items.push(vec![first]),
                Op::Propose { .. } => late_and_strays.insert(0, first),
                _ => late_and_strays.push(first),
            }
        }
        items.push(late_and_strays);
        // Rules with no required signals let decisions act at once and
        // branch most (a quarter of the search each at depth 6), then the
        // late rule with the strays, then the rest.
        items.sort_by_key(|item| {
            let Op::Propose { shape } = self.ops[item[0]] else {
                return 2;
            };
            if shape == LATE_SHAPE {
                1
            } else if SHAPES[shape].required_signals.is_empty() {
                0
            } else {
                2
            }
        });
        items
    }

    /// Fold `op` at `slot` after `node` (`budget` events left, this one
    /// included), then everything that may follow it.
    fn visit(
        &mut self,
        node: &Node,
        op: usize,
        slot: usize,
        path: &mut Vec<(usize, usize)>,
        budget: usize,
    ) -> Result<(), Failure> {
        let n = path.len() + 1;
        let Some(stepped) = advance(&mut self.events, &self.ops, node, op, slot, n) else {
            return Ok(());
        };
        self.folded += 1;
        path.push((op, slot));
        if let Err(message) = stepped.verdict {
            return Err(Failure {
                path: path.clone(),
                message,
            });
        }
        let entry = stepped.entry.expect("a verdict without an entry is an Err");
        self.coverage.note(&entry.outcome);
        let left = budget - 1;
        let mut key = String::with_capacity(320);
        let _ = write!(key, "{slot}|{}|", stepped.node.footprint.key);
        stepped.node.model.key(&mut key);
        let explored = self.visited.get(&key).is_some_and(|seen| *seen >= left);
        if !explored {
            if !self.visited.contains_key(&key) {
                let (_, bytes) = self
                    .events
                    .get(op, &self.ops, slot, n, &node.model)
                    .expect("just folded");
                chain_holds(node, bytes, &entry).map_err(|message| Failure {
                    path: path.clone(),
                    message,
                })?;
            }
            self.visited.insert(key, left);
            if left > 0 {
                for next_slot in slot..SLOTS_MINUTES.len() {
                    for index in 0..self.rest.len() {
                        let next = self.rest[index];
                        self.visit(&stepped.node, next, next_slot, path, left)?;
                    }
                }
            }
        }
        path.pop();
        Ok(())
    }

    /// The failing sequence, refolded, one line per event with its outcome.
    fn explain(&mut self, failure: &Failure) -> String {
        let mut node = Node::root();
        let mut text = format!(
            "the fold broke the contract after {} event(s):\n",
            failure.path.len()
        );
        for (n, (op, slot)) in failure.path.iter().enumerate() {
            let stepped =
                advance(&mut self.events, &self.ops, &node, *op, *slot, n + 1).expect("replayable");
            let outcome = match stepped.entry.as_ref().map(|e| &e.outcome) {
                Some(Outcome::Applied { from, to, .. }) => format!(
                    "applied {}>{to}",
                    from.map_or("NONE".to_owned(), |f| f.to_string())
                ),
                Some(Outcome::Refused { code, reason }) => format!("refused {code} ({reason})"),
                Some(Outcome::Violation { violation, .. }) => format!("violation {violation}"),
                None => "the fold panicked".to_owned(),
            };
            let _ = writeln!(
                text,
                "  {}. at T0+{}m  {}\n       -> {outcome}",
                n + 1,
                SLOTS_MINUTES[*slot],
                label(&self.ops[*op])
            );
            node = stepped.node;
        }
        let _ = write!(text, "broken: {}", failure.message);
        text
    }
}

/// What a whole search found, merged over its threads.
#[derive(Debug, Default)]
struct Totals {
    folded: u64,
    distinct: usize,
    coverage: Coverage,
}

/// The search on every core: work items are handed out in order, each
/// searched with a fresh dedup map (so the figures do not depend on which
/// thread ran what), and the maps are merged to count distinct states. A
/// failure stops the other threads at their next item.
fn search_everything(depth: usize) -> Result<Totals, Failure> {
    let items = Search::new(depth).work_items();
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(items.len());
    let results: Vec<Result<Vec<Search>, Failure>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let item = next.fetch_add(1, Ordering::Relaxed);
                        if item >= items.len() || failed.load(Ordering::Relaxed) {
                            return Ok(done);
                        }
                        let mut search = Search::new(depth);
                        if let Err(failure) = search.run_from(&items[item]) {
                            failed.store(true, Ordering::Relaxed);
                            return Err(failure);
                        }
                        done.push(search);
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| worker.join().unwrap_or_else(|e| panic::resume_unwind(e)))
            .collect()
    });
    let mut totals = Totals::default();
    let mut keys = BTreeSet::new();
    for search in results
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .flatten()
    {
        totals.folded += search.folded;
        keys.extend(search.visited.into_keys());
        let (mine, theirs) = (&mut totals.coverage, search.coverage);
        mine.statuses.extend(theirs.statuses);
        mine.refusals.extend(theirs.refusals);
        mine.grants += theirs.grants;
        mine.violations += theirs.violations;
    }
    totals.distinct = keys.len();
    Ok(totals)
}

#[allow(clippy::disallowed_methods)] // the test reads its depth; the fold reads nothing
fn depth() -> usize {
    match std::env::var("WARRANT_EXHAUSTIVE_DEPTH") {
        Ok(text) => text
            .parse()
            .expect("WARRANT_EXHAUSTIVE_DEPTH is a number of events"),
        Err(_) => DEFAULT_DEPTH,
    }
}

/// Shown with `--nocapture`, and always on stderr: the harness captures
/// `eprintln!` too, so the summary goes to the handle itself for CI logs.
fn report(line: &str) {
    println!("{line}");
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

#[test]
#[allow(clippy::disallowed_methods)] // timing the harness, not the fold
fn every_event_sequence_up_to_the_depth_keeps_the_contract() {
    let depth = depth();
    let started = std::time::Instant::now();
    let totals = match search_everything(depth) {
        Ok(totals) => totals,
        Err(mut failure) => {
            // Shrink, on one thread so the answer does not depend on
            // scheduling: the search is complete up to a depth, so
            // searching below the failure's length finds a shorter one
            // if there is one.
            while failure.path.len() > 1 {
                match Search::new(failure.path.len() - 1).run() {
                    Err(shorter) => failure = shorter,
                    Ok(()) => break,
                }
            }
            let mut search = Search::new(failure.path.len());
            if let Err(first) = search.run() {
                failure = first;
            }
            panic!("{}", search.explain(&failure));
        }
    };
    report(&format!(
        "exhaustive fold check, depth {depth}: {} event sequences folded and checked, {} distinct states, {:.1?}",
        totals.folded,
        totals.distinct,
        started.elapsed()
    ));
    let coverage = &totals.coverage;
    report(&format!(
        "  reached statuses {:?}; refusals {:?}; {} grants issued, {} violations recorded",
        coverage.statuses, coverage.refusals, coverage.grants, coverage.violations
    ));
    if depth >= DEFAULT_DEPTH {
        assert_eq!(
            coverage.statuses,
            StatusName::ALL.into_iter().collect(),
            "the alphabet no longer reaches every status"
        );
        use RefusalCode::*;
        let expected: BTreeSet<RefusalCode> = [
            AlreadyProposed,
            UnknownInstance,
            Duplicate,
            SignalsPending,
            Blocked,
            SelfApproval,
            RoleNotPermitted,
            JustificationRequired,
            NotPaused,
            NotAuthorized,
            Expired,
            NoExecutionsLeft,
            DigestMismatch,
            Early,
            AlreadyFinal,
            NotGrantHolder,
        ]
        .into_iter()
        .collect();
        let missing: Vec<_> = expected.difference(&coverage.refusals).collect();
        assert!(missing.is_empty(), "never refused with {missing:?}");
        assert!(coverage.grants > 0 && coverage.violations > 0);
    }
}
