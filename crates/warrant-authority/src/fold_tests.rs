//! One test per rule of docs/contract.md §5, each a line or two:
//! `given(&[events]).when(event).then_…(expected)`.

use std::collections::BTreeMap;

use warrant_schema::{
    samples, ActionProposed, DeadlineKind, DeadlineReached, DecisionRecorded, DecisionVerdict,
    Envelope, EventBody, ExecutionOutcome, ExecutionReported, ExecutionRequested, PolicyRef,
    PolicySignalRecorded, ProposalWithdrawn, ReviewMode, Reviewer, Scope, SignalVerdict,
};

use super::*;
use crate::record::RefusalCode::*;
use crate::record::StatusName::*;

const T0: i64 = 1_800_000_000_000;
const MINUTE: i64 = 60_000;
const PROPOSER: &str = "agent:remediator";
const PROPOSING_SERVICE: &str = "svc:remediator";
const INSTANCE: &str = "5d9e1f7a-3b2c-4d8e-9f0a-1b2c3d4e5f60";
/// Stands for "the grant the last claim received" in a report.
const LAST_GRANT: &str = "<last grant>";

/// An event under construction.
#[derive(Clone)]
struct Ev {
    body: EventBody,
    by: String,
    at: Option<i64>,
    event_id: Option<String>,
}

impl Ev {
    fn at(mut self, minutes: i64) -> Ev {
        self.at = Some(T0 + minutes * MINUTE);
        self
    }
    fn at_ms(mut self, millis: i64) -> Ev {
        self.at = Some(T0 + millis);
        self
    }
    fn id(mut self, event_id: &str) -> Ev {
        self.event_id = Some(event_id.to_owned());
        self
    }
}

fn ev(body: EventBody, by: &str) -> Ev {
    Ev {
        body,
        by: by.to_owned(),
        at: None,
        event_id: None,
    }
}

/// The default rule: two approvals from `sre`, overrides by `ic`, OPA must
/// report, one execution, 60-minute decision deadline, 15-minute grant.
fn proposed() -> ActionProposed {
    let mut proposed = samples::action_proposed();
    proposed.proposer.principal = PROPOSER.to_owned();
    proposed.requirement = warrant_schema::Requirement {
        rule_id: "test-rule".to_owned(),
        approvals_required: 2,
        approver_roles: vec!["sre".to_owned()],
        override_roles: vec!["ic".to_owned()],
        required_signals: vec!["opa".to_owned()],
        review: ReviewMode::Always,
        decision_timeout_ms: 60 * MINUTE,
        grant_ttl_ms: 15 * MINUTE,
        max_executions: 1,
        signed_decisions: false,
        approval_groups: vec![],
    };
    proposed
}

fn propose() -> Ev {
    propose_with(|_| {})
}

fn propose_with(change: impl FnOnce(&mut ActionProposed)) -> Ev {
    let mut proposed = proposed();
    change(&mut proposed);
    ev(
        EventBody::ActionProposed(Box::new(proposed)),
        PROPOSING_SERVICE,
    )
}

fn no_signals(p: &mut ActionProposed) {
    p.requirement.required_signals.clear();
}

fn signal(source: &str, verdict: SignalVerdict) -> Ev {
    ev(
        EventBody::PolicySignalRecorded(PolicySignalRecorded {
            source: source.to_owned(),
            verdict,
            reasons: vec![],
            policy_ref: PolicyRef {
                id: "p".to_owned(),
                version: "1".to_owned(),
            },
        }),
        &format!("policy:{source}"),
    )
}

fn allow() -> Ev {
    signal("opa", SignalVerdict::Allow)
}

fn deny() -> Ev {
    signal("opa", SignalVerdict::Deny)
}

fn decision(
    verdict: DecisionVerdict,
    principal: &str,
    roles: &[&str],
    justification: &str,
    scope: Scope,
) -> Ev {
    ev(
        EventBody::DecisionRecorded(DecisionRecorded {
            reviewer: Reviewer {
                principal: principal.to_owned(),
                roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            },
            verdict,
            justification: justification.to_owned(),
            scope,
            evidence_refs: vec![],
            proof: None,
        }),
        &format!("reviewer:{principal}"),
    )
}

fn approve(principal: &str) -> Ev {
    decision(
        DecisionVerdict::Approve,
        principal,
        &["sre"],
        "looks right",
        Scope::default(),
    )
}

fn approve_as(principal: &str, roles: &[&str]) -> Ev {
    decision(
        DecisionVerdict::Approve,
        principal,
        roles,
        "looks right",
        Scope::default(),
    )
}

fn approve_scoped(principal: &str, scope: Scope) -> Ev {
    decision(
        DecisionVerdict::Approve,
        principal,
        &["sre"],
        "within scope",
        scope,
    )
}

fn reject(principal: &str) -> Ev {
    decision(
        DecisionVerdict::Reject,
        principal,
        &["sre"],
        "no",
        Scope::default(),
    )
}

fn override_by(principal: &str, roles: &[&str], justification: &str) -> Ev {
    decision(
        DecisionVerdict::Override,
        principal,
        roles,
        justification,
        Scope::default(),
    )
}

fn claim() -> Ev {
    claim_digest(samples::ACTION_DIGEST)
}

fn claim_digest(digest: &str) -> Ev {
    claim_as("svc:deployer", digest)
}

/// Intake names the authenticated caller as the executor, so both agree.
fn claim_as(executor: &str, digest: &str) -> Ev {
    ev(
        EventBody::ExecutionRequested(ExecutionRequested {
            executor: executor.to_owned(),
            action_digest: digest.to_owned(),
        }),
        executor,
    )
}

fn report_grant(grant_id: &str, outcome: ExecutionOutcome) -> Ev {
    report_as("svc:deployer", grant_id, outcome)
}

/// A report submitted by `reporter`, whoever holds the grant.
fn report_as(reporter: &str, grant_id: &str, outcome: ExecutionOutcome) -> Ev {
    ev(
        EventBody::ExecutionReported(ExecutionReported {
            grant_id: grant_id.to_owned(),
            outcome,
            detail: None,
            result_digest: None,
        }),
        reporter,
    )
}

fn report(outcome: ExecutionOutcome) -> Ev {
    report_grant(LAST_GRANT, outcome)
}

fn succeeded() -> Ev {
    report(ExecutionOutcome::Succeeded)
}

fn deadline(kind: DeadlineKind) -> Ev {
    ev(
        EventBody::DeadlineReached(DeadlineReached { deadline: kind }),
        "warrant:sweeper",
    )
}

fn withdraw(by: &str) -> Ev {
    ev(
        EventBody::ProposalWithdrawn(ProposalWithdrawn { reason: None }),
        by,
    )
}

/// Signals and two approvals: AUTHORIZED.
fn authorized() -> Vec<Ev> {
    vec![propose(), allow(), approve("alice"), approve("bob")]
}

struct Scenario {
    state: InstanceState,
    step: i64,
    last_grant: Option<String>,
    history: Vec<HistoryEntry>,
}

fn given(events: &[Ev]) -> Scenario {
    let mut scenario = Scenario {
        state: InstanceState::new(INSTANCE),
        step: 0,
        last_grant: None,
        history: Vec::new(),
    };
    for event in events {
        scenario.apply(event.clone());
    }
    scenario
}

impl Scenario {
    fn apply(&mut self, event: Ev) -> HistoryEntry {
        self.step += 1;
        let mut body = event.body;
        if let EventBody::ExecutionReported(report) = &mut body {
            if report.grant_id == LAST_GRANT {
                report.grant_id = self.last_grant.clone().unwrap_or_default();
            }
        }
        let envelope = Envelope {
            event_id: event
                .event_id
                .unwrap_or_else(|| format!("00000000-0000-4000-8000-{:012}", self.step)),
            instance_id: INSTANCE.to_owned(),
            recorded_at: event.at.unwrap_or(T0 + self.step * 1_000),
            submitted_by: event.by,
            body,
        };
        let bytes = warrant_schema::encode(&envelope).expect("test events encode");
        let position = LogPosition {
            partition: 0,
            offset: self.step,
        };
        let entry = step(
            &mut self.state,
            LogEvent {
                position,
                bytes: &bytes,
                decoded: Ok(envelope),
            },
        );
        if let Some(grant) = entry.outcome.grant() {
            self.last_grant = Some(grant.grant_id.clone());
        }
        self.history.push(entry.clone());
        entry
    }

    fn when(mut self, event: Ev) -> Then {
        let entry = self.apply(event);
        Then {
            entry,
            state: self.state,
            step: self.step,
            last_grant: self.last_grant,
            history: self.history,
        }
    }
}

struct Then {
    entry: HistoryEntry,
    state: InstanceState,
    step: i64,
    last_grant: Option<String>,
    history: Vec<HistoryEntry>,
}

impl Then {
    #[track_caller]
    fn then_status(self, expected: StatusName) -> Then {
        assert!(
            matches!(self.entry.outcome, Outcome::Applied { .. }),
            "expected applied, got {:?}",
            self.entry.outcome
        );
        assert_eq!(
            self.state.status(),
            Some(expected),
            "outcome {:?}",
            self.entry.outcome
        );
        self
    }

    #[track_caller]
    fn then_refused(self, expected: RefusalCode) -> Then {
        assert_eq!(
            self.entry.outcome.refusal(),
            Some(expected),
            "outcome {:?}",
            self.entry.outcome
        );
        self
    }

    /// The status after the event, whatever its outcome (a refusal leaves it).
    #[track_caller]
    fn then_still(self, expected: StatusName) -> Then {
        assert_eq!(
            self.state.status(),
            Some(expected),
            "outcome {:?}",
            self.entry.outcome
        );
        self
    }

    #[track_caller]
    fn then_violation(self, expected: ViolationKind) -> Then {
        assert!(
            matches!(&self.entry.outcome, Outcome::Violation { violation, .. } if *violation == expected),
            "expected violation {expected}, got {:?}",
            self.entry.outcome
        );
        self
    }

    /// Continue the same scenario with one more event.
    fn and_when(self, event: Ev) -> Then {
        Scenario {
            state: self.state,
            step: self.step,
            last_grant: self.last_grant,
            history: self.history,
        }
        .when(event)
    }

    fn instance(&self) -> &Instance {
        self.state.instance().expect("proposed")
    }

    fn authorization(&self) -> &Authorization {
        self.instance().status.authorization().expect("authorized")
    }
}

// --- proposing ---------------------------------------------------------------

#[test]
fn a_proposal_with_required_signals_awaits_them() {
    given(&[]).when(propose()).then_status(AwaitingSignals);
}

#[test]
fn a_proposal_without_required_signals_awaits_a_decision() {
    given(&[])
        .when(propose_with(no_signals))
        .then_status(AwaitingDecision);
}

#[test]
fn a_second_proposal_is_refused() {
    given(&[propose()])
        .when(propose())
        .then_refused(AlreadyProposed);
}

#[test]
fn any_other_first_event_is_an_unknown_instance() {
    given(&[])
        .when(approve("alice"))
        .then_refused(UnknownInstance);
    given(&[]).when(claim()).then_refused(UnknownInstance);
}

#[test]
fn a_proposal_whose_digest_is_not_its_actions_is_malformed() {
    given(&[])
        .when(propose_with(|p| p.action_digest = "00".repeat(32)))
        .then_refused(Malformed);
}

#[test]
fn a_proposal_nobody_could_approve_is_malformed() {
    given(&[])
        .when(propose_with(|p| p.requirement.approvals_required = 0))
        .then_refused(Malformed);
    given(&[])
        .when(propose_with(|p| p.requirement.approver_roles.clear()))
        .then_refused(Malformed);
}

// --- signals -----------------------------------------------------------------

#[test]
fn all_required_signals_without_deny_await_a_decision() {
    given(&[propose()])
        .when(allow())
        .then_status(AwaitingDecision);
    given(&[propose()])
        .when(signal("opa", SignalVerdict::Pause))
        .then_status(AwaitingDecision);
}

#[test]
fn a_signal_from_another_source_does_not_stand_in_for_a_required_one() {
    given(&[propose()])
        .when(signal("lint", SignalVerdict::Allow))
        .then_status(AwaitingSignals);
}

#[test]
fn any_standing_deny_blocks_even_from_an_unrequired_source() {
    given(&[propose()])
        .when(deny())
        .then_status(StatusName::Blocked);
    given(&[propose(), allow()])
        .when(signal("lint", SignalVerdict::Deny))
        .then_status(StatusName::Blocked);
}

#[test]
fn the_latest_verdict_per_source_counts() {
    given(&[propose(), deny()])
        .when(allow())
        .then_status(AwaitingDecision);
}

#[test]
fn all_allow_authorizes_by_rule_when_review_is_unless_all_signals_allow() {
    let unreviewed = propose_with(|p| p.requirement.review = ReviewMode::UnlessAllSignalsAllow);
    let then = given(std::slice::from_ref(&unreviewed))
        .when(allow())
        .then_status(Authorized);
    assert_eq!(
        then.authorization().authority,
        Authority::Rule {
            rule_id: "test-rule".to_owned()
        }
    );
    given(&[unreviewed])
        .when(signal("opa", SignalVerdict::Pause))
        .then_status(AwaitingDecision);
}

#[test]
fn signals_after_authorization_are_recorded_but_change_nothing() {
    let then = given(&authorized()).when(deny()).then_status(Authorized);
    assert!(matches!(
        then.entry.outcome,
        Outcome::Applied {
            effect: Some(Effect::SignalAfterDecision),
            ..
        }
    ));
}

// --- approvals ---------------------------------------------------------------

#[test]
fn distinct_approvals_reaching_the_quorum_authorize() {
    given(&[propose(), allow(), approve("alice")])
        .when(approve("bob"))
        .then_status(Authorized);
    given(&[propose(), allow()])
        .when(approve("alice"))
        .then_status(AwaitingDecision);
}

#[test]
fn the_same_reviewer_approving_twice_counts_once() {
    let then = given(&[propose(), allow(), approve("alice")])
        .when(approve("alice"))
        .then_status(AwaitingDecision);
    assert_eq!(then.instance().approvals.len(), 1);
    given(&[propose(), allow(), approve("alice"), approve("alice")])
        .when(approve("bob"))
        .then_status(Authorized);
}

#[test]
fn self_approval_is_refused() {
    given(&[propose(), allow()])
        .when(approve(PROPOSER))
        .then_refused(SelfApproval);
    given(&[propose(), allow()])
        .when(approve(PROPOSING_SERVICE))
        .then_refused(SelfApproval);
}

#[test]
fn approval_without_an_approver_role_is_refused() {
    given(&[propose(), allow()])
        .when(approve_as("mallory", &["dev"]))
        .then_refused(RoleNotPermitted);
    given(&[propose(), allow()])
        .when(approve_as("carol", &["ic"]))
        .then_refused(RoleNotPermitted);
}

#[test]
fn approval_before_required_signals_is_refused() {
    given(&[propose()])
        .when(approve("alice"))
        .then_refused(SignalsPending);
}

#[test]
fn a_deny_blocks_approvals() {
    given(&[propose(), deny()])
        .when(approve("alice"))
        .then_refused(RefusalCode::Blocked);
}

#[test]
fn approval_after_the_decision_deadline_is_refused() {
    given(&[propose().at(0), allow().at(1)])
        .when(approve("alice").at(61))
        .then_refused(RefusalCode::Expired);
}

#[test]
fn approving_an_authorized_instance_is_refused() {
    given(&authorized())
        .when(approve("carol"))
        .then_refused(NotPaused);
}

// --- approval groups -----------------------------------------------------------

/// Two SREs and one security reviewer, no signals.
fn two_groups(p: &mut ActionProposed) {
    p.requirement.required_signals.clear();
    p.requirement.approvals_required = 3;
    p.requirement.approver_roles = vec!["sre".to_owned(), "security".to_owned()];
    p.requirement.approval_groups = vec![
        warrant_schema::ApprovalGroup {
            roles: vec!["sre".to_owned()],
            count: 2,
        },
        warrant_schema::ApprovalGroup {
            roles: vec!["security".to_owned()],
            count: 1,
        },
    ];
}

/// One SRE and one security reviewer: the smallest case where one person
/// could fill either group.
fn sre_and_security(p: &mut ActionProposed) {
    two_groups(p);
    p.requirement.approvals_required = 2;
    p.requirement.approval_groups[0].count = 1;
}

fn group_of(then: &Then, principal: &str) -> Option<u32> {
    then.instance().approvals[principal].counted_for
}

#[test]
fn every_group_must_be_met_before_authorizing() {
    let proposal = propose_with(two_groups);
    given(&[proposal.clone(), approve("alice")])
        .when(approve("bob"))
        .then_status(AwaitingDecision);
    given(&[proposal.clone(), approve("alice"), approve("bob")])
        .when(approve_as("sam", &["security"]))
        .then_status(Authorized);
    // Order does not matter.
    given(&[proposal, approve_as("sam", &["security"]), approve("alice")])
        .when(approve("bob"))
        .then_status(Authorized);
}

#[test]
fn surplus_approvals_in_a_full_group_do_not_stand_in_for_another_group() {
    let then = given(&[propose_with(two_groups), approve("alice"), approve("bob")])
        .when(approve("carol"))
        .then_status(AwaitingDecision);
    assert_eq!(group_of(&then, "carol"), None);
    match &then.entry.outcome {
        Outcome::Applied {
            effect:
                Some(Effect::ApprovalCounted {
                    distinct, required, ..
                }),
            ..
        } => assert_eq!((*distinct, *required), (2, 3)),
        other => panic!("expected ApprovalCounted, got {other:?}"),
    }
}

#[test]
fn one_person_counts_for_at_most_one_group() {
    // Dana holds both roles: her one approval fills one group, not both.
    given(&[propose_with(sre_and_security)])
        .when(approve_as("dana", &["sre", "security"]))
        .then_status(AwaitingDecision);
    given(&[
        propose_with(sre_and_security),
        approve_as("dana", &["sre", "security"]),
    ])
    .when(approve_as("dana", &["sre", "security"]))
    .then_status(AwaitingDecision);
}

#[test]
fn an_approver_qualifying_for_two_groups_moves_to_make_room() {
    // Dana first takes the SRE place; when Bob (SRE only) approves, Dana
    // moves to the security place and both groups are met.
    let then = given(&[
        propose_with(sre_and_security),
        approve_as("dana", &["sre", "security"]),
    ])
    .when(approve("bob"))
    .then_status(Authorized);
    assert_eq!(group_of(&then, "bob"), Some(0));
    assert_eq!(group_of(&then, "dana"), Some(1));
    match &then.authorization().authority {
        Authority::Quorum { approvers } => assert_eq!(approvers, &["bob", "dana"]),
        other => panic!("expected a quorum, got {other:?}"),
    }
}

#[test]
fn the_record_shows_the_group_of_each_approval_and_what_is_missing() {
    let then = given(&[
        propose_with(two_groups),
        approve_as("dana", &["sre", "security"]),
        approve("alice"),
    ])
    .when(approve("carol"))
    .then_status(Authorized);
    let record = crate::view::ExecutionRecord::build(&then.state, &then.history);
    let groups: Vec<(Vec<String>, u32)> = record
        .approval_groups
        .iter()
        .map(|g| (g.approved_by.clone(), g.missing))
        .collect();
    // Carol's SRE approval moved Dana to the security place.
    assert_eq!(
        groups,
        vec![
            (vec!["alice".to_owned(), "carol".to_owned()], 0),
            (vec!["dana".to_owned()], 0),
        ]
    );
    let counted: Vec<(&str, Option<u32>)> = record
        .decisions
        .iter()
        .map(|d| (d.reviewer.as_str(), d.counted_for))
        .collect();
    assert_eq!(
        counted,
        vec![("dana", Some(1)), ("alice", Some(0)), ("carol", Some(0))]
    );
    let then = given(&[propose_with(two_groups)])
        .when(approve("alice"))
        .then_status(AwaitingDecision);
    let record = crate::view::ExecutionRecord::build(&then.state, &then.history);
    assert_eq!(
        record
            .approval_groups
            .iter()
            .map(|g| g.missing)
            .collect::<Vec<_>>(),
        vec![1, 1]
    );
}

#[test]
fn no_self_approval_in_any_group() {
    given(&[propose_with(sre_and_security), approve("bob")])
        .when(approve_as(PROPOSER, &["security"]))
        .then_refused(SelfApproval);
}

#[test]
fn an_approver_in_no_group_is_refused() {
    given(&[propose_with(two_groups)])
        .when(approve_as("eve", &["dev"]))
        .then_refused(RoleNotPermitted);
    // Any group's role may reject.
    given(&[propose_with(two_groups)])
        .when(decision(
            DecisionVerdict::Reject,
            "sam",
            &["security"],
            "no",
            Scope::default(),
        ))
        .then_status(Rejected);
}

#[test]
fn groups_that_disagree_with_the_summary_fields_are_malformed() {
    given(&[])
        .when(propose_with(|p| {
            two_groups(p);
            p.requirement.approvals_required = 1;
        }))
        .then_refused(Malformed);
    given(&[])
        .when(propose_with(|p| {
            two_groups(p);
            p.requirement.approval_groups[1].count = 0;
            p.requirement.approvals_required = 2;
        }))
        .then_refused(Malformed);
}

#[test]
fn the_single_group_form_is_one_group() {
    let then = given(&[propose(), allow(), approve("alice")])
        .when(approve("bob"))
        .then_status(Authorized);
    assert_eq!(group_of(&then, "alice"), Some(0));
    assert_eq!(group_of(&then, "bob"), Some(0));
}

// --- review: never -------------------------------------------------------------

fn never_reviewed(p: &mut ActionProposed) {
    p.requirement.required_signals.clear();
    p.requirement.review = ReviewMode::Never;
    p.requirement.approvals_required = 0;
    p.requirement.approver_roles.clear();
    p.requirement.max_executions = 2;
}

#[test]
fn review_never_authorizes_at_proposal_by_the_rule() {
    let then = given(&[])
        .when(propose_with(never_reviewed).at(0))
        .then_status(Authorized);
    let authorization = then.authorization();
    assert_eq!(
        authorization.authority,
        Authority::Rule {
            rule_id: "test-rule".to_owned()
        }
    );
    assert_eq!(authorization.authorized_at, T0);
    assert_eq!(authorization.scope.not_after, T0 + 15 * MINUTE);
    assert_eq!(authorization.scope.max_executions, 2);
    assert!(matches!(
        then.entry.outcome,
        Outcome::Applied {
            from: None,
            to: Authorized,
            effect: Some(Effect::Authorized(_))
        }
    ));
}

#[test]
fn review_never_still_needs_a_grant_for_the_digest_within_its_limits() {
    let proposal = propose_with(never_reviewed).at(0);
    given(std::slice::from_ref(&proposal))
        .when(claim_digest(&"ab".repeat(32)))
        .then_refused(DigestMismatch);
    given(std::slice::from_ref(&proposal))
        .when(claim().at(16))
        .then_refused(RefusalCode::Expired);
    given(&[proposal.clone(), claim().at(1), succeeded().at(2)])
        .when(claim().at(3))
        .then_status(Executing)
        .and_when(succeeded().at(4))
        .then_status(Completed);
    given(&[
        proposal.clone(),
        claim().at(1),
        succeeded().at(2),
        claim().at(3),
        succeeded().at(4),
    ])
    .when(claim().at(5))
    .then_refused(AlreadyFinal);
    // Nothing to approve; it can still be rejected before it runs.
    given(std::slice::from_ref(&proposal))
        .when(approve("alice"))
        .then_refused(NotPaused);
    given(&[proposal])
        .when(decision(
            DecisionVerdict::Reject,
            "carol",
            &["ic"],
            "not today",
            Scope::default(),
        ))
        .then_status(Rejected);
}

#[test]
fn review_never_with_signals_or_groups_is_malformed() {
    given(&[])
        .when(propose_with(|p| {
            never_reviewed(p);
            p.requirement.required_signals = vec!["opa".to_owned()];
        }))
        .then_refused(Malformed);
    given(&[])
        .when(propose_with(|p| {
            two_groups(p);
            p.requirement.review = ReviewMode::Never;
        }))
        .then_refused(Malformed);
}

// --- overrides ---------------------------------------------------------------

#[test]
fn a_deny_does_not_block_an_override() {
    let then = given(&[propose(), deny()])
        .when(override_by("carol", &["ic"], "SEV1"))
        .then_status(Authorized);
    assert!(matches!(
        then.authorization().authority,
        Authority::Override { .. }
    ));
}

#[test]
fn an_override_authorizes_from_every_paused_status() {
    given(&[propose()])
        .when(override_by("carol", &["ic"], "SEV1"))
        .then_status(Authorized);
    given(&[propose(), allow()])
        .when(override_by("carol", &["ic"], "SEV1"))
        .then_status(Authorized);
}

#[test]
fn an_override_without_justification_is_refused() {
    given(&[propose(), deny()])
        .when(override_by("carol", &["ic"], "  "))
        .then_refused(JustificationRequired);
}

#[test]
fn an_override_without_an_override_role_is_refused() {
    given(&[propose(), deny()])
        .when(override_by("alice", &["sre"], "SEV1"))
        .then_refused(RoleNotPermitted);
}

#[test]
fn the_proposer_cannot_override_either() {
    given(&[propose(), deny()])
        .when(override_by(PROPOSER, &["ic"], "trust me"))
        .then_refused(SelfApproval);
}

#[test]
fn overriding_an_authorized_instance_is_refused() {
    given(&authorized())
        .when(override_by("carol", &["ic"], "SEV1"))
        .then_refused(NotPaused);
}

// --- scope -------------------------------------------------------------------

fn scope(constraints: &[(&str, &str)], not_after_minutes: Option<i64>, max: Option<i32>) -> Scope {
    Scope {
        constraints: constraints
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<BTreeMap<_, _>>(),
        not_after: not_after_minutes.map(|m| T0 + m * MINUTE),
        max_executions: max,
    }
}

#[test]
fn the_effective_scope_is_the_most_restrictive_of_all_counted_decisions() {
    let rule = propose_with(|p| p.requirement.max_executions = 5).at(0);
    let first = approve_scoped("alice", scope(&[("region", "eu")], Some(10), Some(3))).at(2);
    let then = given(&[rule, allow().at(1), first])
        .when(approve_scoped("bob", scope(&[("window", "night")], Some(8), Some(4))).at(3))
        .then_status(Authorized);
    let granted = &then.authorization().scope;
    assert_eq!(granted.not_after, T0 + 8 * MINUTE);
    assert_eq!(granted.max_executions, 3);
    assert_eq!(granted.constraints.len(), 2);
}

#[test]
fn not_after_is_capped_by_the_grant_ttl_and_executions_by_the_rule() {
    let then = given(&[
        propose().at(0),
        allow().at(1),
        approve_scoped("alice", scope(&[], Some(600), Some(9))).at(2),
    ])
    .when(approve("bob").at(3))
    .then_status(Authorized);
    assert_eq!(then.authorization().scope.not_after, T0 + 18 * MINUTE);
    assert_eq!(then.authorization().scope.max_executions, 1);
}

#[test]
fn conflicting_constraints_are_refused() {
    given(&[
        propose(),
        allow(),
        approve_scoped("alice", scope(&[("region", "eu")], None, None)),
    ])
    .when(approve_scoped(
        "bob",
        scope(&[("region", "us")], None, None),
    ))
    .then_refused(ConflictingScope);
}

// --- claims ------------------------------------------------------------------

#[test]
fn a_claim_on_an_authorized_instance_is_granted() {
    let then = given(&authorized()).when(claim()).then_status(Executing);
    let grant = then.entry.outcome.grant().expect("a grant");
    assert_eq!(grant.action_digest, samples::ACTION_DIGEST);
}

#[test]
fn a_claim_while_paused_is_refused() {
    given(&[propose()])
        .when(claim())
        .then_refused(NotAuthorized);
    given(&[propose(), allow(), approve("alice")])
        .when(claim())
        .then_refused(NotAuthorized);
    given(&[propose(), deny()])
        .when(claim())
        .then_refused(NotAuthorized);
}

#[test]
fn a_claim_for_another_action_digest_is_refused() {
    given(&authorized())
        .when(claim_digest(&"ab".repeat(32)))
        .then_refused(DigestMismatch);
}

#[test]
fn a_claim_after_not_after_is_refused() {
    let events = [
        propose().at(0),
        allow().at(1),
        approve("alice").at(2),
        approve("bob").at(3),
    ];
    given(&events).when(claim().at(18)).then_status(Executing);
    given(&events)
        .when(claim().at(19))
        .then_refused(RefusalCode::Expired);
}

#[test]
fn a_claim_past_max_executions_is_refused() {
    let twice = propose_with(|p| p.requirement.max_executions = 2);
    given(&[
        twice.clone(),
        allow(),
        approve("alice"),
        approve("bob"),
        claim(),
    ])
    .when(claim())
    .then_status(Executing);
    given(&[
        twice,
        allow(),
        approve("alice"),
        approve("bob"),
        claim(),
        claim(),
    ])
    .when(claim())
    .then_refused(NoExecutionsLeft);
}

#[test]
fn grant_ids_are_derived_from_the_event() {
    let a = given(&authorized()).when(claim().id("11111111-1111-4111-8111-111111111111"));
    let b = given(&authorized()).when(claim().id("11111111-1111-4111-8111-111111111111"));
    let c = given(&authorized()).when(claim().id("22222222-2222-4222-8222-222222222222"));
    let id = |t: &Then| t.entry.outcome.grant().expect("grant").grant_id.clone();
    assert_eq!(id(&a), id(&b));
    assert_ne!(id(&a), id(&c));
}

// --- reports -----------------------------------------------------------------

#[test]
fn reporting_the_last_execution_completes() {
    let mut events = authorized();
    events.push(claim());
    given(&events).when(succeeded()).then_status(Completed);
    given(&events)
        .when(report(ExecutionOutcome::Failed))
        .then_status(Failed);
}

#[test]
fn reporting_with_executions_left_returns_to_authorized() {
    let events = [
        propose_with(|p| p.requirement.max_executions = 2),
        allow(),
        approve("alice"),
        approve("bob"),
        claim(),
    ];
    given(&events).when(succeeded()).then_status(Authorized);
}

#[test]
fn reporting_after_not_after_completes_even_with_executions_left() {
    let twice = propose_with(|p| p.requirement.max_executions = 2).at(0);
    let events = [
        twice,
        allow().at(1),
        approve("alice").at(2),
        approve("bob").at(3),
        claim().at(4),
    ];
    given(&events)
        .when(succeeded().at(30))
        .then_status(Completed);
}

#[test]
fn a_report_without_a_grant_is_recorded_as_a_violation() {
    for events in [
        authorized(),
        vec![propose()],
        vec![propose(), allow(), reject("alice")],
    ] {
        let then = given(&events).when(report_grant(
            "ffffffff-ffff-4fff-8fff-ffffffffffff",
            ExecutionOutcome::Succeeded,
        ));
        assert!(matches!(
            then.entry.outcome,
            Outcome::Violation {
                violation: ViolationKind::UngrantedExecution,
                ..
            }
        ));
        assert_eq!(then.state.instance().expect("proposed").violations.len(), 1);
    }
}

#[test]
fn a_grant_reported_twice_is_refused() {
    let twice = propose_with(|p| p.requirement.max_executions = 2);
    given(&[
        twice,
        allow(),
        approve("alice"),
        approve("bob"),
        claim(),
        succeeded(),
    ])
    .when(succeeded())
    .then_refused(Duplicate);
}

// --- rejection, withdrawal, deadlines ------------------------------------------

#[test]
fn a_reject_is_final_from_any_paused_status() {
    given(&[propose()])
        .when(reject("alice"))
        .then_status(Rejected);
    given(&[propose(), deny()])
        .when(reject("alice"))
        .then_status(Rejected);
    given(&[propose(), deny()])
        .when(decision(
            DecisionVerdict::Reject,
            "carol",
            &["ic"],
            "",
            Scope::default(),
        ))
        .then_status(Rejected);
}

#[test]
fn a_reject_revokes_an_authorization_with_no_open_execution() {
    given(&authorized())
        .when(reject("carol"))
        .then_status(Rejected);
    let mut executing = authorized();
    executing.push(claim());
    given(&executing)
        .when(reject("carol"))
        .then_refused(NotPaused);
}

#[test]
fn a_reject_needs_a_role() {
    given(&[propose()])
        .when(decision(
            DecisionVerdict::Reject,
            "eve",
            &[],
            "",
            Scope::default(),
        ))
        .then_refused(RoleNotPermitted);
}

#[test]
fn only_the_proposer_can_withdraw() {
    given(&[propose()])
        .when(withdraw(PROPOSING_SERVICE))
        .then_status(Withdrawn);
    given(&authorized())
        .when(withdraw(PROPOSER))
        .then_status(Withdrawn);
    given(&[propose()])
        .when(withdraw("reviewer:alice"))
        .then_refused(RoleNotPermitted);
}

#[test]
fn an_early_deadline_is_refused() {
    given(&[propose().at(0)])
        .when(deadline(DeadlineKind::Decision).at(60))
        .then_refused(Early);
    given(&[
        propose().at(0),
        allow().at(1),
        approve("alice").at(2),
        approve("bob").at(3),
    ])
    .when(deadline(DeadlineKind::Grant).at(18))
    .then_refused(Early);
}

#[test]
fn a_passed_decision_deadline_expires_a_pause() {
    given(&[propose().at(0)])
        .when(deadline(DeadlineKind::Decision).at(61))
        .then_status(StatusName::Expired);
    given(&[propose().at(0), deny().at(1)])
        .when(deadline(DeadlineKind::Decision).at(61))
        .then_status(StatusName::Expired);
}

#[test]
fn a_passed_grant_deadline_expires_an_unused_authorization() {
    let events = [
        propose().at(0),
        allow().at(1),
        approve("alice").at(2),
        approve("bob").at(3),
    ];
    given(&events)
        .when(deadline(DeadlineKind::Grant).at(19))
        .then_status(StatusName::Expired);
    let mut executing = events.to_vec();
    executing.push(claim().at(4));
    given(&executing)
        .when(deadline(DeadlineKind::Grant).at(19))
        .then_refused(Early);
}

#[test]
fn everything_after_a_final_status_is_refused() {
    let finals: Vec<Vec<Ev>> = vec![
        vec![propose(), reject("alice")],
        vec![propose(), withdraw(PROPOSING_SERVICE)],
        vec![propose().at(0), deadline(DeadlineKind::Decision).at(61)],
        [authorized(), vec![claim(), succeeded()]].concat(),
    ];
    for history in finals {
        for event in [
            allow(),
            approve("carol"),
            reject("carol"),
            override_by("carol", &["ic"], "x"),
            claim(),
            deadline(DeadlineKind::Grant),
            withdraw(PROPOSING_SERVICE),
        ] {
            given(&history)
                .when(event.at(120))
                .then_refused(AlreadyFinal);
        }
    }
}

// --- past the decision deadline, sweeper behind --------------------------------
//
// The sweeper's DeadlineReached can land any time after the deadline. Until
// it does, a paused instance must not move on an event recorded too late;
// without that rule a late ALLOW authorized by rule, and a late withdrawal or
// rejection was applied as if the clock had not run out.

const SECOND: i64 = 1_000;

/// Review UNLESS_ALL_SIGNALS_ALLOW on OPA, one approval, a 1 s decision
/// deadline, proposed at T0.
fn unreviewed_with_a_one_second_deadline() -> Ev {
    propose_with(|p| {
        p.requirement.review = ReviewMode::UnlessAllSignalsAllow;
        p.requirement.approvals_required = 1;
        p.requirement.decision_timeout_ms = SECOND;
    })
    .at_ms(0)
}

/// The same instance once OPA said PAUSE in time: awaiting a decision.
fn awaiting_a_decision_with_a_one_second_deadline() -> Vec<Ev> {
    vec![
        unreviewed_with_a_one_second_deadline(),
        signal("opa", SignalVerdict::Pause).at_ms(500),
    ]
}

#[test]
fn a_late_allow_is_refused_and_the_sweeper_then_expires_the_pause() {
    given(&[unreviewed_with_a_one_second_deadline()])
        .when(allow().at_ms(2 * SECOND))
        .then_refused(RefusalCode::Expired)
        .then_still(AwaitingSignals)
        .and_when(deadline(DeadlineKind::Decision).at_ms(2 * SECOND))
        .then_status(StatusName::Expired);
}

#[test]
fn an_allow_exactly_at_the_decision_deadline_still_authorizes_by_rule() {
    given(&[unreviewed_with_a_one_second_deadline()])
        .when(allow().at_ms(SECOND))
        .then_status(Authorized);
}

#[test]
fn a_late_approval_is_refused_expired_whether_or_not_the_reviewer_may_approve() {
    given(&awaiting_a_decision_with_a_one_second_deadline())
        .when(approve("alice").at_ms(2 * SECOND))
        .then_refused(RefusalCode::Expired)
        .then_still(AwaitingDecision);
    // The deadline is weighed first: a late approval is not refused for
    // lack of a role, as if a reviewer with one could still have counted.
    given(&awaiting_a_decision_with_a_one_second_deadline())
        .when(approve_as("mallory", &["dev"]).at_ms(2 * SECOND))
        .then_refused(RefusalCode::Expired)
        .then_still(AwaitingDecision);
}

#[test]
fn late_rejections_overrides_and_claims_are_refused_expired() {
    for late in [
        reject("alice"),
        override_by("carol", &["ic"], "SEV1"),
        claim(),
    ] {
        given(&awaiting_a_decision_with_a_one_second_deadline())
            .when(late.at_ms(2 * SECOND))
            .then_refused(RefusalCode::Expired)
            .then_still(AwaitingDecision);
    }
}

#[test]
fn a_late_withdrawal_is_refused_and_the_pause_can_only_expire() {
    given(&[unreviewed_with_a_one_second_deadline()])
        .when(withdraw(PROPOSING_SERVICE).at_ms(2 * SECOND))
        .then_refused(RefusalCode::Expired)
        .then_still(AwaitingSignals)
        .and_when(deadline(DeadlineKind::Decision).at_ms(3 * SECOND))
        .then_status(StatusName::Expired);
}

#[test]
fn a_late_second_proposal_is_still_refused_as_already_proposed() {
    given(&[unreviewed_with_a_one_second_deadline()])
        .when(propose().at_ms(2 * SECOND))
        .then_refused(AlreadyProposed);
}

#[test]
fn an_unknown_grant_reported_past_the_decision_deadline_is_still_a_violation() {
    // Something ran without authority whatever the clock says: the record
    // must show it rather than file it under Expired.
    let then = given(&[unreviewed_with_a_one_second_deadline()])
        .when(
            report_grant(
                "ffffffff-ffff-4fff-8fff-ffffffffffff",
                ExecutionOutcome::Succeeded,
            )
            .at_ms(2 * SECOND),
        )
        .then_violation(ViolationKind::UngrantedExecution)
        .then_still(AwaitingSignals);
    assert_eq!(then.instance().violations.len(), 1);
}

// --- only the grant holder reports ------------------------------------------------

const EXECUTOR_A: &str = "svc:deployer-a";
const EXECUTOR_B: &str = "svc:deployer-b";

fn executing_for_a() -> Vec<Ev> {
    let mut events = authorized();
    events.push(claim_as(EXECUTOR_A, samples::ACTION_DIGEST));
    events
}

#[test]
fn another_executor_cannot_close_a_grant_and_the_holder_still_can() {
    given(&executing_for_a())
        .when(report_as(EXECUTOR_B, LAST_GRANT, ExecutionOutcome::Failed))
        .then_refused(NotGrantHolder)
        .then_still(Executing)
        .and_when(report_as(
            EXECUTOR_A,
            LAST_GRANT,
            ExecutionOutcome::Succeeded,
        ))
        .then_status(Completed);
}

#[test]
fn a_refused_foreign_report_leaves_the_grant_open() {
    let then = given(&executing_for_a())
        .when(report_as(
            EXECUTOR_B,
            LAST_GRANT,
            ExecutionOutcome::Succeeded,
        ))
        .then_refused(NotGrantHolder);
    let grants = &then.instance().grants;
    assert_eq!(grants.len(), 1);
    assert_eq!(grants[0].executor, EXECUTOR_A);
    assert_eq!(grants[0].report, None);
}

// --- the log itself ------------------------------------------------------------

#[test]
fn duplicates_are_recorded_as_duplicate() {
    let first = approve("alice").id("33333333-3333-4333-8333-333333333333");
    let again = approve("bob").id("33333333-3333-4333-8333-333333333333");
    given(&[propose(), allow(), first])
        .when(again)
        .then_refused(Duplicate);
}

#[test]
fn bytes_that_do_not_decode_are_refused_as_malformed() {
    let mut state = given(&[propose()]).state;
    let entry = step(
        &mut state,
        LogEvent::decode(
            LogPosition {
                partition: 0,
                offset: 9,
            },
            b"not avro",
        ),
    );
    assert_eq!(entry.outcome.refusal(), Some(Malformed));
    assert_eq!(entry.event, None);
    assert_eq!(state.status(), Some(AwaitingSignals));
    assert_eq!(state.entries, 2);
}

#[test]
fn an_envelope_keyed_to_another_instance_is_malformed() {
    let mut envelope = samples::envelopes()[1].1.clone();
    envelope.instance_id = "00000000-0000-4000-8000-00000000dead".to_owned();
    let bytes = warrant_schema::encode(&envelope).expect("encodes");
    let entry = step(
        &mut given(&[propose()]).state,
        LogEvent {
            position: LogPosition {
                partition: 0,
                offset: 1,
            },
            bytes: &bytes,
            decoded: Ok(envelope),
        },
    );
    assert_eq!(entry.outcome.refusal(), Some(Malformed));
}

#[test]
fn the_hash_chain_starts_from_zero_and_commits_to_bytes_and_outcome() {
    let mut state = InstanceState::new(INSTANCE);
    let entry = step(
        &mut state,
        LogEvent::decode(
            LogPosition {
                partition: 2,
                offset: 7,
            },
            b"garbage",
        ),
    );
    use sha2::Digest;
    let expected = sha2::Sha256::new()
        .chain_update([0u8; 32])
        .chain_update(b"garbage")
        .chain_update(b"refused Malformed")
        .finalize();
    assert_eq!(entry.hash.0, <[u8; 32]>::from(expected));
    assert_eq!(state.head, entry.hash);
    assert_eq!((entry.seq, entry.position.offset), (1, 7));
}
