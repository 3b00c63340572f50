//! The pure core: what a folded entry means for people.
//!
//! [`derive`] takes an entry and the state after it (the entry's outcome
//! names the status before it) and returns the notifications that entry
//! causes; [`reminder`]
//! decides whether an instance's reminder is still worth sending at a given
//! time. Neither reads a clock, a file or the network: the time comes in as
//! an argument, so a restarted notifier folding the same log derives the
//! same notifications with the same ids.

use warrant_authority::{HistoryEntry, Instance, InstanceState, Outcome, RefusalCode, StatusName};
use warrant_schema::{DecisionVerdict, EventBody, ExecutionOutcome, TimestampMillis};

use crate::notification::{
    entry_notification_id, reminder_id, Alert, Kind, Links, Notification, ProposerSummary, Quorum,
    RuleSummary,
};

/// The notifications one history entry causes (in a fixed order).
pub fn derive(entry: &HistoryEntry, after: &InstanceState) -> Vec<Notification> {
    let Some(instance) = after.instance() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let base = |kind: Kind| {
        notification(
            &after.instance_id,
            instance,
            kind,
            entry.seq,
            entry.recorded_at.unwrap_or_default(),
        )
    };
    match &entry.outcome {
        Outcome::Applied { from, to, .. } => {
            let entered = *from != Some(*to);
            match to {
                StatusName::AwaitingDecision | StatusName::Blocked if entered => {
                    let mut review = base(Kind::ReviewNeeded);
                    review.roles = audience(instance, *to);
                    out.push(review);
                }
                StatusName::Authorized if from.is_some_and(StatusName::is_paused) => {
                    out.push(base(Kind::Outcome));
                }
                StatusName::Rejected
                | StatusName::Expired
                | StatusName::Withdrawn
                | StatusName::Completed
                | StatusName::Failed
                    if entered =>
                {
                    out.push(base(Kind::Outcome));
                }
                StatusName::AwaitingSignals
                | StatusName::AwaitingDecision
                | StatusName::Blocked
                | StatusName::Authorized
                | StatusName::Executing
                | StatusName::Rejected
                | StatusName::Expired
                | StatusName::Withdrawn
                | StatusName::Completed
                | StatusName::Failed => {}
            }
            if let Some(alert) = override_alert(entry, None) {
                let mut notification = base(Kind::Alert);
                notification.alert = Some(alert);
                out.push(notification);
            }
        }
        // A retried copy of an event already on the log is not a new attempt.
        Outcome::Refused { code, .. } if *code == RefusalCode::Duplicate => {}
        Outcome::Refused { code, .. } => {
            if let Some(alert) = override_alert(entry, Some(*code)) {
                let mut notification = base(Kind::Alert);
                notification.alert = Some(alert);
                out.push(notification);
            }
        }
        Outcome::Violation { .. } => {
            if let Some(envelope) = &entry.event {
                if let EventBody::ExecutionReported(report) = &envelope.body {
                    let mut notification = base(Kind::Alert);
                    notification.alert = Some(Alert::UngrantedExecution {
                        grant_id: report.grant_id.clone(),
                        reported_by: envelope.submitted_by.clone(),
                        outcome: match report.outcome {
                            ExecutionOutcome::Succeeded => "SUCCEEDED",
                            ExecutionOutcome::Failed => "FAILED",
                        }
                        .to_owned(),
                    });
                    out.push(notification);
                }
            }
        }
    }
    out
}

/// Whether an instance in `state` should get a reminder at `now`, the
/// notifier's clock, when reminders go out `lead_ms` before the decision
/// deadline; the reminder if so. Not when the instance no longer waits for
/// people (decided, authorized by quorum, expired, withdrawn; or waiting
/// for policy signals, which no person can give), nor once the deadline has
/// passed, nor when the deadline was already within `lead_ms` of the
/// proposal (its review-needed notification said as much).
pub fn reminder(state: &InstanceState, now: TimestampMillis, lead_ms: i64) -> Option<Notification> {
    let instance = state.instance()?;
    let status = instance.status.name();
    let deadline = instance.proposal.decision_deadline;
    let due = deadline.saturating_sub(lead_ms);
    let waits_for_people = matches!(status, StatusName::AwaitingDecision | StatusName::Blocked);
    if !waits_for_people || now < due || now >= deadline || due <= instance.proposal.proposed_at {
        return None;
    }
    let mut notification = notification(
        &state.instance_id,
        instance,
        Kind::Reminder,
        state.entries,
        now,
    );
    notification.id = reminder_id(&state.instance_id, deadline);
    notification.roles = audience(instance, status);
    Some(notification)
}

/// When the reminder of an instance in `state` falls due, if it may get
/// one at all (see [`reminder`]); the notifier keeps these in its schedule.
pub fn reminder_due(state: &InstanceState, lead_ms: i64) -> Option<TimestampMillis> {
    let instance = state.instance()?;
    if !instance.status.name().is_paused() {
        return None;
    }
    let due = instance.proposal.decision_deadline.saturating_sub(lead_ms);
    (due > instance.proposal.proposed_at).then_some(due)
}

/// Who can act on an instance in `status`: approvers or overriders while it
/// awaits a decision; only overriders while a DENY blocks it (approvals are
/// refused then).
fn audience(instance: &Instance, status: StatusName) -> Vec<String> {
    let requirement = &instance.proposal.requirement;
    let mut roles = Vec::new();
    if status == StatusName::AwaitingDecision {
        roles.extend(requirement.approver_roles.iter().cloned());
    }
    for role in &requirement.override_roles {
        if !roles.contains(role) {
            roles.push(role.clone());
        }
    }
    roles
}

fn override_alert(entry: &HistoryEntry, refusal: Option<RefusalCode>) -> Option<Alert> {
    let envelope = entry.event.as_ref()?;
    let EventBody::DecisionRecorded(decision) = &envelope.body else {
        return None;
    };
    (decision.verdict == DecisionVerdict::Override).then(|| Alert::Override {
        principal: decision.reviewer.principal.clone(),
        roles: decision.reviewer.roles.clone(),
        justification: decision.justification.clone(),
        applied: refusal.is_none(),
        refusal: refusal.map(|code| code.as_str().to_owned()),
    })
}

fn notification(
    instance_id: &str,
    instance: &Instance,
    kind: Kind,
    seq: u64,
    recorded_at: TimestampMillis,
) -> Notification {
    let proposal = &instance.proposal;
    let requirement = &proposal.requirement;
    let status = instance.status.name();
    let quorum = status.is_paused().then(|| Quorum {
        counted: u32::try_from(instance.approvals.len()).unwrap_or(u32::MAX),
        required: u32::try_from(requirement.approvals_required).unwrap_or(0),
    });
    Notification {
        id: entry_notification_id(instance_id, seq, kind),
        kind,
        instance_id: instance_id.to_owned(),
        seq,
        status: status.as_str().to_owned(),
        recorded_at,
        action: proposal.action.clone(),
        action_digest: proposal.action_digest.clone(),
        rule: RuleSummary {
            id: requirement.rule_id.clone(),
            approvals_required: requirement.approvals_required,
            approver_roles: requirement.approver_roles.clone(),
            override_roles: requirement.override_roles.clone(),
        },
        proposer: ProposerSummary {
            principal: proposal.proposer.principal.clone(),
            kind: proposal.proposer.kind,
        },
        decision_deadline: proposal.decision_deadline,
        roles: Vec::new(),
        quorum,
        alert: None,
        links: Links::default(),
    }
}

#[cfg(test)]
#[path = "derive_tests.rs"]
mod tests;
