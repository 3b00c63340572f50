//! The derivation against histories folded by the real `step`.

use warrant_authority::{step, HistoryEntry, InstanceState, LogEvent, LogPosition};
use warrant_schema::samples::{self, INSTANCE_ID, PROPOSED_AT};
use warrant_schema::{
    DeadlineKind, DeadlineReached, DecisionRecorded, DecisionVerdict, Envelope, EventBody,
    ExecutionOutcome, ExecutionReported, ExecutionRequested, PolicyRef, PolicySignalRecorded,
    ProposalWithdrawn, Reviewer, Scope, SignalVerdict,
};

use super::*;
use crate::notification::{entry_notification_id, reminder_id, Alert, Kind};

const TIMEOUT_MS: i64 = 60_000;

/// A history being written: each event is folded by `step` as it is added,
/// and the notifications each entry derives are kept beside it.
struct History {
    state: InstanceState,
    entries: Vec<(HistoryEntry, Vec<Notification>)>,
}

impl History {
    /// Proposed with the sample action, one SRE approval needed, the given
    /// required signals, a 60 s decision timeout.
    fn proposed(signals: &[&str]) -> History {
        let mut proposed = samples::action_proposed();
        proposed.requirement.approvals_required = 1;
        proposed.requirement.approver_roles = vec!["sre".to_owned()];
        proposed.requirement.override_roles = vec!["ic".to_owned()];
        proposed.requirement.required_signals = signals.iter().map(|s| (*s).to_owned()).collect();
        proposed.requirement.decision_timeout_ms = TIMEOUT_MS;
        proposed.requirement.max_executions = 1;
        let mut history = History {
            state: InstanceState::new(INSTANCE_ID),
            entries: Vec::new(),
        };
        history.add(
            0,
            "svc:remediator",
            EventBody::ActionProposed(Box::new(proposed)),
        );
        history
    }

    fn add(&mut self, at: i64, by: &str, body: EventBody) -> &[Notification] {
        let seq = self.entries.len() as i64;
        let envelope = Envelope {
            event_id: format!("event-{seq}"),
            instance_id: INSTANCE_ID.to_owned(),
            recorded_at: PROPOSED_AT + at,
            submitted_by: by.to_owned(),
            body,
        };
        let entry = step(
            &mut self.state,
            LogEvent {
                position: LogPosition {
                    partition: 0,
                    offset: seq,
                },
                bytes: format!("bytes-{seq}").as_bytes(),
                decoded: Ok(envelope),
            },
        );
        let notifications = derive(&entry, &self.state);
        self.entries.push((entry, notifications));
        self.entries.last().map_or(&[], |(_, n)| n.as_slice())
    }

    fn signal(&mut self, at: i64, verdict: SignalVerdict) -> &[Notification] {
        self.add(
            at,
            "policy:opa",
            EventBody::PolicySignalRecorded(PolicySignalRecorded {
                source: "opa".to_owned(),
                verdict,
                reasons: vec![],
                policy_ref: PolicyRef {
                    id: "p".to_owned(),
                    version: "1".to_owned(),
                },
            }),
        )
    }

    fn decide(
        &mut self,
        at: i64,
        who: &str,
        role: &str,
        verdict: DecisionVerdict,
    ) -> &[Notification] {
        self.add(
            at,
            &format!("reviewer:{who}"),
            EventBody::DecisionRecorded(DecisionRecorded {
                reviewer: Reviewer {
                    principal: who.to_owned(),
                    roles: vec![role.to_owned()],
                },
                verdict,
                justification: "prod is down".to_owned(),
                scope: Scope::default(),
                evidence_refs: vec![],
                proof: None,
            }),
        )
    }

    fn first(&self) -> &[Notification] {
        self.entries.first().map_or(&[], |(_, n)| n.as_slice())
    }
}

fn kinds(notifications: &[Notification]) -> Vec<Kind> {
    notifications.iter().map(|n| n.kind).collect()
}

#[test]
fn a_proposal_awaiting_a_decision_asks_approvers_and_overriders() {
    let history = History::proposed(&[]);
    let [review] = history.first() else {
        panic!("one notification: {:?}", history.first());
    };
    assert_eq!(review.kind, Kind::ReviewNeeded);
    assert_eq!(review.status, "AWAITING_DECISION");
    assert_eq!(review.roles, ["sre", "ic"]);
    assert_eq!(review.rule.id, "prod-restarts");
    assert_eq!(review.seq, 1);
    assert_eq!(review.recorded_at, PROPOSED_AT);
    assert_eq!(review.decision_deadline, PROPOSED_AT + TIMEOUT_MS);
    assert_eq!(
        review.id,
        entry_notification_id(INSTANCE_ID, 1, Kind::ReviewNeeded)
    );
    assert_eq!(review.action, samples::action());
    assert_eq!(review.proposer.principal, "agent:remediator");
    let quorum = review.quorum.expect("a quorum while paused");
    assert_eq!((quorum.counted, quorum.required), (0, 1));
}

#[test]
fn waiting_for_signals_asks_nobody_until_the_signals_are_in() {
    let mut history = History::proposed(&["opa"]);
    assert!(history.first().is_empty(), "{:?}", history.first());
    let review = history.signal(10, SignalVerdict::Pause).to_vec();
    assert_eq!(kinds(&review), [Kind::ReviewNeeded]);
    assert_eq!(review[0].seq, 2);
    // A second PAUSE changes nothing: nobody is asked twice.
    assert!(history.signal(20, SignalVerdict::Pause).is_empty());
}

#[test]
fn a_deny_asks_only_the_overriders_and_an_override_alerts_and_tells_the_proposer() {
    let mut history = History::proposed(&["opa"]);
    let blocked = history.signal(10, SignalVerdict::Deny).to_vec();
    assert_eq!(kinds(&blocked), [Kind::ReviewNeeded]);
    assert_eq!(blocked[0].status, "BLOCKED");
    assert_eq!(blocked[0].roles, ["ic"]);
    let overridden = history
        .decide(20, "carol", "ic", DecisionVerdict::Override)
        .to_vec();
    assert_eq!(kinds(&overridden), [Kind::Outcome, Kind::Alert]);
    assert_eq!(overridden[0].status, "AUTHORIZED");
    assert_ne!(overridden[0].id, overridden[1].id, "one id per kind");
    match &overridden[1].alert {
        Some(Alert::Override {
            principal,
            applied: true,
            refusal: None,
            justification,
            ..
        }) => {
            assert_eq!(principal, "carol");
            assert_eq!(justification, "prod is down");
        }
        other => panic!("an applied override alert: {other:?}"),
    }
}

#[test]
fn a_refused_override_attempt_alerts_too_but_a_duplicate_does_not() {
    let mut history = History::proposed(&[]);
    // bob holds no override role: the fold refuses, the attempt is news.
    let refused = history
        .decide(10, "bob", "sre", DecisionVerdict::Override)
        .to_vec();
    assert_eq!(kinds(&refused), [Kind::Alert]);
    match &refused[0].alert {
        Some(Alert::Override {
            applied: false,
            refusal: Some(code),
            ..
        }) => assert_eq!(code, "RoleNotPermitted"),
        other => panic!("a refused override alert: {other:?}"),
    }
    assert_eq!(refused[0].status, "AWAITING_DECISION");
    // The same event again (same event id) is refused Duplicate: no alert.
    let (entry, _) = &history.entries[1];
    let mut again = entry.event.clone().expect("decoded");
    again.recorded_at += 1;
    let entry = step(
        &mut history.state,
        LogEvent {
            position: LogPosition {
                partition: 0,
                offset: 9,
            },
            bytes: b"again",
            decoded: Ok(again),
        },
    );
    assert_eq!(entry.outcome.refusal(), Some(RefusalCode::Duplicate));
    assert!(derive(&entry, &history.state).is_empty());
}

#[test]
fn outcomes_go_to_the_proposer_once_each() {
    let mut approved = History::proposed(&[]);
    let authorized = approved
        .decide(10, "alice", "sre", DecisionVerdict::Approve)
        .to_vec();
    assert_eq!(kinds(&authorized), [Kind::Outcome]);
    assert_eq!(authorized[0].status, "AUTHORIZED");
    assert_eq!(authorized[0].quorum, None);
    // Claiming is no outcome; the report that completes it is.
    let digest = approved
        .state
        .instance()
        .expect("proposed")
        .proposal
        .action_digest
        .clone();
    let claimed = approved.add(
        20,
        "svc:deployer",
        EventBody::ExecutionRequested(ExecutionRequested {
            executor: "svc:deployer".to_owned(),
            action_digest: digest,
        }),
    );
    assert!(claimed.is_empty(), "{claimed:?}");
    let grant_id = approved
        .state
        .instance()
        .and_then(|i| i.grants.first())
        .map(|g| g.grant_id.clone())
        .expect("a grant");
    let completed = approved
        .add(
            30,
            "svc:deployer",
            EventBody::ExecutionReported(ExecutionReported {
                grant_id,
                outcome: ExecutionOutcome::Succeeded,
                detail: None,
                result_digest: None,
            }),
        )
        .to_vec();
    assert_eq!(kinds(&completed), [Kind::Outcome]);
    assert_eq!(completed[0].status, "COMPLETED");

    let mut rejected = History::proposed(&[]);
    let outcome = rejected
        .decide(10, "alice", "sre", DecisionVerdict::Reject)
        .to_vec();
    assert_eq!(kinds(&outcome), [Kind::Outcome]);
    assert_eq!(outcome[0].status, "REJECTED");
    // Anything after the final status is refused: no second outcome.
    assert!(rejected
        .decide(20, "bob", "sre", DecisionVerdict::Reject)
        .is_empty());

    let mut withdrawn = History::proposed(&[]);
    let outcome = withdrawn
        .add(
            10,
            "svc:remediator",
            EventBody::ProposalWithdrawn(ProposalWithdrawn { reason: None }),
        )
        .to_vec();
    assert_eq!(kinds(&outcome), [Kind::Outcome]);
    assert_eq!(outcome[0].status, "WITHDRAWN");

    let mut expired = History::proposed(&[]);
    let early = expired.add(
        TIMEOUT_MS,
        "warrant:sweeper",
        EventBody::DeadlineReached(DeadlineReached {
            deadline: DeadlineKind::Decision,
        }),
    );
    assert!(early.is_empty(), "refused Early: {early:?}");
    let outcome = expired
        .add(
            TIMEOUT_MS + 1,
            "warrant:sweeper",
            EventBody::DeadlineReached(DeadlineReached {
                deadline: DeadlineKind::Decision,
            }),
        )
        .to_vec();
    assert_eq!(kinds(&outcome), [Kind::Outcome]);
    assert_eq!(outcome[0].status, "EXPIRED");
}

#[test]
fn an_ungranted_execution_alerts_whatever_the_status() {
    let mut history = History::proposed(&[]);
    let alert = history
        .add(
            10,
            "svc:rogue",
            EventBody::ExecutionReported(ExecutionReported {
                grant_id: "never-issued".to_owned(),
                outcome: ExecutionOutcome::Succeeded,
                detail: None,
                result_digest: None,
            }),
        )
        .to_vec();
    assert_eq!(kinds(&alert), [Kind::Alert]);
    assert_eq!(
        alert[0].alert,
        Some(Alert::UngrantedExecution {
            grant_id: "never-issued".to_owned(),
            reported_by: "svc:rogue".to_owned(),
            outcome: "SUCCEEDED".to_owned(),
        })
    );
    assert_eq!(
        alert[0].id,
        entry_notification_id(INSTANCE_ID, 2, Kind::Alert)
    );
}

#[test]
fn a_second_approval_short_of_quorum_and_refusals_notify_nobody() {
    let mut history = History::proposed(&[]);
    // The proposer approving its own action is refused SelfApproval.
    assert!(history
        .decide(10, "agent:remediator", "sre", DecisionVerdict::Approve)
        .is_empty());
    let unproposed = InstanceState::new("other");
    let (entry, _) = &history.entries[0];
    assert!(
        derive(entry, &unproposed).is_empty(),
        "no instance, nobody to tell"
    );
}

#[test]
fn the_reminder_falls_due_before_the_deadline_and_only_while_people_are_needed() {
    let lead = 20_000;
    let history = History::proposed(&[]);
    let deadline = PROPOSED_AT + TIMEOUT_MS;
    assert_eq!(reminder_due(&history.state, lead), Some(deadline - lead));
    assert!(
        reminder(&history.state, deadline - lead - 1, lead).is_none(),
        "not yet"
    );
    let sent = reminder(&history.state, deadline - lead, lead).expect("due");
    assert_eq!(sent.kind, Kind::Reminder);
    assert_eq!(sent.id, reminder_id(INSTANCE_ID, deadline));
    assert_eq!(sent.roles, ["sre", "ic"]);
    assert_eq!(sent.recorded_at, deadline - lead);
    // Firing later (a restart, a slow clock) gives the same id.
    assert_eq!(
        reminder(&history.state, deadline - 1, lead).map(|n| n.id),
        Some(sent.id)
    );
    assert!(
        reminder(&history.state, deadline, lead).is_none(),
        "too late"
    );
    // A deadline within the lead of the proposal gets no reminder.
    assert_eq!(reminder_due(&history.state, TIMEOUT_MS), None);
    assert!(reminder(&history.state, PROPOSED_AT + 1, TIMEOUT_MS).is_none());

    let mut decided = History::proposed(&[]);
    decided.decide(10, "alice", "sre", DecisionVerdict::Approve);
    assert_eq!(reminder_due(&decided.state, lead), None);
    assert!(
        reminder(&decided.state, deadline - lead, lead).is_none(),
        "quorum met"
    );

    let waiting = History::proposed(&["opa"]);
    assert!(
        reminder(&waiting.state, deadline - lead, lead).is_none(),
        "no person can give a signal"
    );
    assert_eq!(
        reminder_due(&waiting.state, lead),
        Some(deadline - lead),
        "but it stays scheduled: the signals may come in time"
    );
}

#[test]
fn the_same_history_derives_the_same_notifications() {
    let build = || {
        let mut history = History::proposed(&["opa"]);
        history.signal(10, SignalVerdict::Deny);
        history.decide(20, "carol", "ic", DecisionVerdict::Override);
        history
            .entries
            .into_iter()
            .flat_map(|(_, n)| n)
            .collect::<Vec<_>>()
    };
    let first = build();
    assert_eq!(first.len(), 3);
    assert_eq!(first, build());
}
