//! The fold: one event in, one history entry out (docs/contract.md §5).
//!
//! [`step`] is the whole rule book. It reads nothing but its arguments, so
//! the projector, intake and the auditors' replay compute the same records
//! from the same log. Each event kind has one function below, and each is a
//! `match` on the status with no wildcard arm, so adding a status forces a
//! decision everywhere.

use std::collections::BTreeMap;

use uuid::Uuid;
use warrant_schema::{
    ActionProposed, ApprovalGroup, DeadlineKind, DecisionRecorded, DecisionVerdict, Envelope,
    EventBody, ExecutionOutcome, ExecutionReported, ExecutionRequested, PolicySignalRecorded,
    Requirement, ReviewMode, Scope, SignalVerdict, TimestampMillis,
};

use crate::digest::action_digest;
use crate::record::*;

/// Namespace of the v5 UUIDs the fold derives (grant ids).
const GRANT_NAMESPACE: Uuid = Uuid::from_u128(0x6a1f_3c52_9e0b_4d7a_8c61_2f4e_9b0d_7a35);

/// One record from the log, as the fold sees it.
#[derive(Debug, Clone)]
pub struct LogEvent<'a> {
    pub position: LogPosition,
    /// The record value exactly as on the log; the hash chain commits to it.
    pub bytes: &'a [u8],
    /// The decoded envelope, or why the bytes are not one.
    pub decoded: Result<Envelope, String>,
}

impl<'a> LogEvent<'a> {
    /// Decode `bytes` with the wire codec. Decoding is pure, so it may live
    /// on either side of the fold's boundary; callers that already decoded
    /// build a `LogEvent` directly.
    pub fn decode(position: LogPosition, bytes: &'a [u8]) -> Self {
        LogEvent {
            position,
            bytes,
            decoded: warrant_schema::decode::<Envelope>(bytes).map_err(|e| error_chain(&e)),
        }
    }
}

/// An error and all its causes on one line: `outer: cause: root cause`.
/// The one place every crate formats errors for logs and refusal reasons.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Fold one event into an instance: the state moves on and exactly one
/// entry comes out.
pub fn step(state: &mut InstanceState, event: LogEvent<'_>) -> HistoryEntry {
    let seq = state.entries + 1;
    let (outcome, envelope) = match event.decoded {
        Err(reason) => (refuse(RefusalCode::Malformed, reason), None),
        Ok(envelope) => (decide(state, &envelope, seq), Some(envelope)),
    };
    let hash = chain_hash(&state.head, event.bytes, &outcome);
    state.entries = seq;
    state.head = hash;
    HistoryEntry {
        seq,
        recorded_at: envelope.as_ref().map(|e| e.recorded_at),
        position: event.position,
        event: envelope,
        outcome,
        hash,
    }
}

/// Fold a whole sequence from the beginning.
pub fn fold<'a>(
    instance_id: &str,
    events: impl IntoIterator<Item = LogEvent<'a>>,
) -> (InstanceState, Vec<HistoryEntry>) {
    let mut state = InstanceState::new(instance_id);
    let mut history = Vec::new();
    for event in events {
        history.push(step(&mut state, event));
    }
    (state, history)
}

/// The grant id for a granted `ExecutionRequested`: derived from the event,
/// so every fold of the log names the same grant.
pub fn grant_id(instance_id: &str, event_id: &str) -> String {
    Uuid::new_v5(
        &GRANT_NAMESPACE,
        format!("{instance_id}/{event_id}").as_bytes(),
    )
    .to_string()
}

fn refuse(code: RefusalCode, reason: impl Into<String>) -> Outcome {
    Outcome::Refused {
        code,
        reason: reason.into(),
    }
}

fn decide(state: &mut InstanceState, envelope: &Envelope, seq: u64) -> Outcome {
    if envelope.instance_id != state.instance_id {
        return refuse(
            RefusalCode::Malformed,
            format!(
                "envelope names instance {} but was keyed {}",
                envelope.instance_id, state.instance_id
            ),
        );
    }
    if !state.seen_event_ids.insert(envelope.event_id.clone()) {
        return refuse(
            RefusalCode::Duplicate,
            format!("event {} was already recorded", envelope.event_id),
        );
    }
    let at = envelope.recorded_at;
    if let Phase::Proposed(instance) = &state.phase {
        if let EventBody::DecisionRecorded(decision) = &envelope.body {
            if let Some(refusal) = unproven_decision(instance, envelope, decision) {
                return refusal;
            }
        }
        if let Some(refusal) = past_decision_deadline(instance, at, &envelope.body) {
            return refusal;
        }
    }
    match (&mut state.phase, &envelope.body) {
        (Phase::Unproposed, EventBody::ActionProposed(proposed)) => {
            match on_proposed(envelope, proposed) {
                Ok((instance, outcome)) => {
                    state.phase = Phase::Proposed(Box::new(instance));
                    outcome
                }
                Err(refusal) => refusal,
            }
        }
        (Phase::Unproposed, body) => refuse(
            RefusalCode::UnknownInstance,
            format!("{} before any ActionProposed", body.kind()),
        ),
        (Phase::Proposed(_), EventBody::ActionProposed(_)) => refuse(
            RefusalCode::AlreadyProposed,
            "the instance was already proposed",
        ),
        (Phase::Proposed(instance), EventBody::PolicySignalRecorded(signal)) => {
            on_signal(instance, at, seq, signal)
        }
        (Phase::Proposed(instance), EventBody::DecisionRecorded(decision)) => {
            on_decision(instance, at, seq, decision)
        }
        (Phase::Proposed(instance), EventBody::ExecutionRequested(request)) => {
            let grant_id = grant_id(&state.instance_id, &envelope.event_id);
            on_execution_requested(instance, at, seq, request, grant_id)
        }
        (Phase::Proposed(instance), EventBody::ExecutionReported(report)) => {
            on_execution_reported(instance, at, seq, &envelope.submitted_by, report)
        }
        (Phase::Proposed(instance), EventBody::DeadlineReached(deadline)) => {
            on_deadline(instance, at, deadline.deadline)
        }
        (Phase::Proposed(instance), EventBody::ProposalWithdrawn(_)) => {
            on_withdrawn(instance, &envelope.submitted_by)
        }
    }
}

/// A decision that carries a reviewer's signature counts only if the
/// signature verifies over the recorded bytes and those bytes are exactly
/// this decision on this instance's action (`BadSignature` otherwise); a
/// rule with `decisions: signed` takes no decision without one. Checked
/// before anything else about the decision, so a forged proof is named as
/// such whatever the instance's status.
fn unproven_decision(
    instance: &Instance,
    envelope: &Envelope,
    decision: &DecisionRecorded,
) -> Option<Outcome> {
    match &decision.proof {
        Some(proof) => crate::signed::check_proof(
            proof,
            decision,
            &envelope.instance_id,
            &instance.proposal.action_digest,
            envelope.recorded_at,
        )
        .err()
        .map(|error| refuse(RefusalCode::BadSignature, error.to_string())),
        None if instance.proposal.requirement.signed_decisions => Some(refuse(
            RefusalCode::RoleNotPermitted,
            format!(
                "rule {} takes only decisions signed with the reviewer's own key; this one is attested by intake",
                instance.proposal.requirement.rule_id
            ),
        )),
        None => None,
    }
}

/// Past the decision deadline a paused instance can only expire: whatever
/// would move it (a late signal, a decision, a claim, a withdrawal) is
/// refused `Expired`, so a sweeper that is behind never lets a late event
/// authorize. Three kinds keep their own answer: the sweeper's
/// `DeadlineReached` (which expires it), a second `ActionProposed`
/// (`AlreadyProposed`), and a report of an unknown grant, which stays a
/// recorded violation because something ran whatever the clock says.
fn past_decision_deadline(
    instance: &Instance,
    at: TimestampMillis,
    body: &EventBody,
) -> Option<Outcome> {
    if !instance.status.name().is_paused() || !instance.decision_expired(at) {
        return None;
    }
    match body {
        EventBody::DeadlineReached(_) | EventBody::ActionProposed(_) => None,
        EventBody::ExecutionReported(report)
            if !instance
                .grants
                .iter()
                .any(|g| g.grant_id == report.grant_id) =>
        {
            None
        }
        EventBody::PolicySignalRecorded(_)
        | EventBody::DecisionRecorded(_)
        | EventBody::ExecutionRequested(_)
        | EventBody::ExecutionReported(_)
        | EventBody::ProposalWithdrawn(_) => Some(refuse(
            RefusalCode::Expired,
            format!(
                "the decision deadline {} has passed; the instance can only expire",
                instance.proposal.decision_deadline
            ),
        )),
    }
}

impl Instance {
    /// Move to `next` and say so.
    fn transition(&mut self, next: Status, effect: Option<Effect>) -> Outcome {
        let from = self.status.name();
        self.status = next;
        Outcome::Applied {
            from: Some(from),
            to: self.status.name(),
            effect,
        }
    }

    /// Applied without a status change.
    fn recorded(&self, effect: Option<Effect>) -> Outcome {
        let status = self.status.name();
        Outcome::Applied {
            from: Some(status),
            to: status,
            effect,
        }
    }

    fn is_proposer(&self, principal: &str) -> bool {
        principal == self.proposal.proposer.principal || principal == self.proposal.submitted_by
    }

    fn decision_expired(&self, at: TimestampMillis) -> bool {
        at > self.proposal.decision_deadline
    }

    /// Where a paused instance stands given its signals (docs/contract.md §5, Signals).
    fn paused_status_from_signals(&self, at: TimestampMillis) -> Status {
        let requirement = &self.proposal.requirement;
        if self
            .signals
            .values()
            .any(|s| s.verdict == SignalVerdict::Deny)
        {
            return Status::Blocked;
        }
        let all_required_reported = requirement
            .required_signals
            .iter()
            .all(|source| self.signals.contains_key(source));
        if !all_required_reported {
            return Status::AwaitingSignals;
        }
        let all_allow = self
            .signals
            .values()
            .all(|s| s.verdict == SignalVerdict::Allow);
        match requirement.review {
            ReviewMode::UnlessAllSignalsAllow
                if all_allow && !requirement.required_signals.is_empty() =>
            {
                Status::Authorized(self.authorization(
                    at,
                    Authority::Rule {
                        rule_id: requirement.rule_id.clone(),
                    },
                    None,
                ))
            }
            // A NEVER rule is authorized at proposal and never paused (one
            // with required signals is refused Malformed); kept total.
            ReviewMode::UnlessAllSignalsAllow | ReviewMode::Always | ReviewMode::Never => {
                Status::AwaitingDecision
            }
        }
    }

    /// The effective scope of all counted decisions plus `extra`, capped by
    /// the rule. Conflicts were refused before anything was counted.
    fn authorization(
        &self,
        at: TimestampMillis,
        authority: Authority,
        extra: Option<&Scope>,
    ) -> Authorization {
        let requirement = &self.proposal.requirement;
        let mut scope = EffectiveScope {
            constraints: BTreeMap::new(),
            not_after: at.saturating_add(requirement.grant_ttl_ms),
            max_executions: u32::try_from(requirement.max_executions).unwrap_or(0),
        };
        for decided in self.approvals.values().map(|c| &c.scope).chain(extra) {
            if let Some(not_after) = decided.not_after {
                scope.not_after = scope.not_after.min(not_after);
            }
            if let Some(max) = decided.max_executions {
                scope.max_executions = scope.max_executions.min(u32::try_from(max).unwrap_or(0));
            }
            for (key, value) in &decided.constraints {
                scope.constraints.insert(key.clone(), value.clone());
            }
        }
        Authorization {
            authorized_at: at,
            authority,
            scope,
        }
    }

    /// The first constraint `scope` sets differently from a counted approval.
    fn conflicting_constraint(&self, scope: &Scope) -> Option<String> {
        self.approvals.iter().find_map(|(principal, counted)| {
            scope.constraints.iter().find_map(|(key, value)| {
                match counted.scope.constraints.get(key) {
                    Some(other) if other != value => Some(format!(
                        "constraint {key}={value} conflicts with {key}={other} approved by {principal}"
                    )),
                    Some(_) | None => None,
                }
            })
        })
    }

    fn open_grants(&self) -> usize {
        self.grants.iter().filter(|g| g.report.is_none()).count()
    }
}

fn has_any_role(roles: &[String], permitted: &[String]) -> bool {
    roles.iter().any(|role| permitted.contains(role))
}

/// Every role that can approve under `groups`, in first-seen order.
fn approver_roles(groups: &[ApprovalGroup]) -> Vec<String> {
    let mut roles: Vec<String> = Vec::new();
    for role in groups.iter().flat_map(|g| &g.roles) {
        if !roles.contains(role) {
            roles.push(role.clone());
        }
    }
    roles
}

fn group_size(group: &ApprovalGroup) -> usize {
    usize::try_from(group.count).unwrap_or(0)
}

/// Assign the counted approvals to the rule's groups so that as many group
/// places as possible are filled, each principal in at most one group.
///
/// A maximum bipartite matching (augmenting paths, Kuhn's algorithm, with
/// group sizes as capacities): an approver who qualifies for a full group
/// may take a place held by someone who can move to another group they
/// also qualify for. Approvers are tried in the order they approved and
/// groups in rule order, and existing places are kept unless a move is
/// needed, so every fold of the same events makes the same assignment.
fn assign_groups(groups: &[ApprovalGroup], approvals: &mut BTreeMap<String, CountedDecision>) {
    let mut order: Vec<(u64, &String)> = approvals
        .iter()
        .map(|(principal, counted)| (counted.seq, principal))
        .collect();
    order.sort();
    let principals: Vec<String> = order.into_iter().map(|(_, p)| p.clone()).collect();
    let decided: Vec<&CountedDecision> =
        principals.iter().filter_map(|p| approvals.get(p)).collect();
    let eligible: Vec<Vec<bool>> = decided
        .iter()
        .map(|c| {
            groups
                .iter()
                .map(|g| has_any_role(&c.roles, &g.roles))
                .collect()
        })
        .collect();
    let mut place: Vec<Option<usize>> = decided
        .iter()
        .map(|c| {
            c.counted_for
                .and_then(|g| usize::try_from(g).ok())
                .filter(|g| *g < groups.len())
        })
        .collect();
    fn augment(
        who: usize,
        groups: &[ApprovalGroup],
        eligible: &[Vec<bool>],
        place: &mut [Option<usize>],
        visited: &mut [bool],
    ) -> bool {
        for group in 0..groups.len() {
            if !eligible[who][group] || visited[group] {
                continue;
            }
            visited[group] = true;
            let holders: Vec<usize> = (0..place.len())
                .filter(|&h| place[h] == Some(group))
                .collect();
            if holders.len() < group_size(&groups[group]) {
                place[who] = Some(group);
                return true;
            }
            for holder in holders {
                if augment(holder, groups, eligible, place, visited) {
                    place[who] = Some(group);
                    return true;
                }
            }
        }
        false
    }
    for who in 0..principals.len() {
        if place[who].is_none() {
            let mut visited = vec![false; groups.len()];
            augment(who, groups, &eligible, &mut place, &mut visited);
        }
    }
    for (principal, group) in principals.iter().zip(place) {
        if let Some(counted) = approvals.get_mut(principal) {
            counted.counted_for = group.and_then(|g| u32::try_from(g).ok());
        }
    }
}

fn already_final(status: StatusName) -> Outcome {
    refuse(
        RefusalCode::AlreadyFinal,
        format!("the instance is already {status}"),
    )
}

fn on_proposed(
    envelope: &Envelope,
    proposed: &ActionProposed,
) -> Result<(Instance, Outcome), Outcome> {
    let computed = action_digest(&proposed.action);
    if proposed.action_digest != computed {
        return Err(refuse(
            RefusalCode::Malformed,
            format!(
                "action_digest {} is not the digest of the action ({computed})",
                proposed.action_digest
            ),
        ));
    }
    let requirement = &proposed.requirement;
    if let Some(problem) = unsatisfiable(requirement) {
        return Err(refuse(
            RefusalCode::Malformed,
            format!(
                "requirement of rule {} cannot be satisfied: {problem}",
                requirement.rule_id
            ),
        ));
    }
    // A NEVER rule starts here too and is authorized just below, once the
    // proposal it authorizes exists.
    let status = if requirement.required_signals.is_empty() {
        Status::AwaitingDecision
    } else {
        Status::AwaitingSignals
    };
    let instance = Instance {
        proposal: Proposal {
            proposed_at: envelope.recorded_at,
            submitted_by: envelope.submitted_by.clone(),
            action: proposed.action.clone(),
            action_digest: proposed.action_digest.clone(),
            proposer: proposed.proposer.clone(),
            context_refs: proposed.context_refs.clone(),
            rationale: proposed.rationale.clone(),
            requirement: requirement.clone(),
            ruleset: proposed.ruleset.clone(),
            resolution: proposed.resolution.clone(),
            decision_deadline: envelope
                .recorded_at
                .saturating_add(requirement.decision_timeout_ms),
        },
        status,
        signals: BTreeMap::new(),
        approvals: BTreeMap::new(),
        grants: Vec::new(),
        violations: Vec::new(),
    };
    let mut instance = instance;
    let effect = if requirement.review == ReviewMode::Never {
        // Authorized by the rule at proposal: still only through a grant
        // bound to the digest, within grant_ttl_ms and max_executions.
        let authorization = instance.authorization(
            envelope.recorded_at,
            Authority::Rule {
                rule_id: requirement.rule_id.clone(),
            },
            None,
        );
        instance.status = Status::Authorized(authorization.clone());
        Some(Effect::Authorized(authorization))
    } else {
        None
    };
    let outcome = Outcome::Applied {
        from: None,
        to: instance.status.name(),
        effect,
    };
    Ok((instance, outcome))
}

/// Why a recorded requirement could never be met (or contradicts itself),
/// if it could not. Intake only writes what a loaded ruleset resolved, so
/// this guards the fold against any other writer.
fn unsatisfiable(requirement: &Requirement) -> Option<String> {
    if requirement.override_roles.is_empty() {
        return Some("no override roles".to_owned());
    }
    if requirement.max_executions < 1
        || requirement.decision_timeout_ms < 1
        || requirement.grant_ttl_ms < 1
    {
        return Some("a limit is not positive".to_owned());
    }
    if requirement.review == ReviewMode::Never {
        if !requirement.required_signals.is_empty() || !requirement.approval_groups.is_empty() {
            return Some("review NEVER takes no signals or approvals".to_owned());
        }
        return None;
    }
    let groups = requirement.groups();
    if groups.is_empty() || groups.iter().any(|g| g.count < 1 || g.roles.is_empty()) {
        return Some("an approval group is empty".to_owned());
    }
    if !requirement.approval_groups.is_empty() {
        let total = groups
            .iter()
            .fold(0i32, |sum, g| sum.saturating_add(g.count));
        if requirement.approvals_required != total
            || requirement.approver_roles != approver_roles(&groups)
        {
            return Some(
                "approvals_required and approver_roles disagree with approval_groups".to_owned(),
            );
        }
    }
    None
}

/// Signals carry no scope: when they authorize by rule, the grant window
/// starts at the signal's `recorded_at`.
fn on_signal(
    instance: &mut Instance,
    at: TimestampMillis,
    seq: u64,
    signal: &PolicySignalRecorded,
) -> Outcome {
    let standing = StandingSignal {
        verdict: signal.verdict,
        seq,
    };
    match &instance.status {
        Status::Completed(_)
        | Status::Failed(_)
        | Status::Rejected { .. }
        | Status::Expired { .. }
        | Status::Withdrawn => already_final(instance.status.name()),
        Status::Authorized(_) | Status::Executing(_) => {
            instance.signals.insert(signal.source.clone(), standing);
            instance.recorded(Some(Effect::SignalAfterDecision))
        }
        Status::AwaitingSignals | Status::AwaitingDecision | Status::Blocked => {
            instance.signals.insert(signal.source.clone(), standing);
            let next = instance.paused_status_from_signals(at);
            let effect = next.authorization().cloned().map(Effect::Authorized);
            instance.transition(next, effect)
        }
    }
}

fn on_decision(
    instance: &mut Instance,
    at: TimestampMillis,
    seq: u64,
    decision: &DecisionRecorded,
) -> Outcome {
    match decision.verdict {
        DecisionVerdict::Approve => on_approve(instance, at, seq, decision),
        DecisionVerdict::Override => on_override(instance, at, seq, decision),
        DecisionVerdict::Reject => on_reject(instance, decision),
    }
}

fn on_approve(
    instance: &mut Instance,
    at: TimestampMillis,
    seq: u64,
    decision: &DecisionRecorded,
) -> Outcome {
    let principal = &decision.reviewer.principal;
    let groups = instance.proposal.requirement.groups();
    match &instance.status {
        Status::Completed(_)
        | Status::Failed(_)
        | Status::Rejected { .. }
        | Status::Expired { .. }
        | Status::Withdrawn => already_final(instance.status.name()),
        Status::Authorized(_) | Status::Executing(_) => {
            refuse(RefusalCode::NotPaused, "the instance is already authorized")
        }
        Status::AwaitingSignals | Status::AwaitingDecision | Status::Blocked
            if instance.is_proposer(principal) =>
        {
            refuse(
                RefusalCode::SelfApproval,
                format!("{principal} proposed this action"),
            )
        }
        Status::AwaitingSignals | Status::AwaitingDecision | Status::Blocked
            if !has_any_role(&decision.reviewer.roles, &approver_roles(&groups)) =>
        {
            refuse(
                RefusalCode::RoleNotPermitted,
                format!("{principal} holds none of {:?}", approver_roles(&groups)),
            )
        }
        Status::AwaitingSignals | Status::AwaitingDecision | Status::Blocked
            if instance.decision_expired(at) =>
        {
            refuse(RefusalCode::Expired, "the decision deadline has passed")
        }
        Status::AwaitingSignals => refuse(
            RefusalCode::SignalsPending,
            "required policy signals have not all reported",
        ),
        Status::Blocked => refuse(RefusalCode::Blocked, "a DENY signal stands"),
        Status::AwaitingDecision => {
            if instance.approvals.contains_key(principal) {
                return instance.recorded(Some(Effect::ApprovalAlreadyCounted {
                    principal: principal.clone(),
                }));
            }
            if let Some(conflict) = instance.conflicting_constraint(&decision.scope) {
                return refuse(RefusalCode::ConflictingScope, conflict);
            }
            instance.approvals.insert(
                principal.clone(),
                CountedDecision {
                    seq,
                    scope: decision.scope.clone(),
                    roles: decision.reviewer.roles.clone(),
                    counted_for: None,
                },
            );
            assign_groups(&groups, &mut instance.approvals);
            // Places filled across all groups, of all places: with one
            // group, the distinct approvers so far and the quorum.
            let filled = instance
                .approvals
                .values()
                .filter(|c| c.counted_for.is_some())
                .count();
            let places: usize = groups.iter().map(group_size).sum();
            let distinct = u32::try_from(filled).unwrap_or(u32::MAX);
            let required = u32::try_from(places).unwrap_or(u32::MAX);
            if filled >= places {
                let authorization = instance.authorization(
                    at,
                    Authority::Quorum {
                        approvers: instance
                            .approvals
                            .iter()
                            .filter(|(_, c)| c.counted_for.is_some())
                            .map(|(p, _)| p.clone())
                            .collect(),
                    },
                    None,
                );
                instance.transition(
                    Status::Authorized(authorization.clone()),
                    Some(Effect::Authorized(authorization)),
                )
            } else {
                instance.recorded(Some(Effect::ApprovalCounted {
                    principal: principal.clone(),
                    distinct,
                    required,
                }))
            }
        }
    }
}

fn on_override(
    instance: &mut Instance,
    at: TimestampMillis,
    _seq: u64,
    decision: &DecisionRecorded,
) -> Outcome {
    let principal = &decision.reviewer.principal;
    let requirement = &instance.proposal.requirement;
    match &instance.status {
        Status::Completed(_)
        | Status::Failed(_)
        | Status::Rejected { .. }
        | Status::Expired { .. }
        | Status::Withdrawn => already_final(instance.status.name()),
        Status::Authorized(_) | Status::Executing(_) => {
            refuse(RefusalCode::NotPaused, "the instance is already authorized")
        }
        Status::AwaitingSignals | Status::AwaitingDecision | Status::Blocked => {
            if instance.is_proposer(principal) {
                return refuse(
                    RefusalCode::SelfApproval,
                    format!("{principal} proposed this action"),
                );
            }
            if !has_any_role(&decision.reviewer.roles, &requirement.override_roles) {
                return refuse(
                    RefusalCode::RoleNotPermitted,
                    format!("{principal} holds none of {:?}", requirement.override_roles),
                );
            }
            if decision.justification.trim().is_empty() {
                return refuse(
                    RefusalCode::JustificationRequired,
                    "an override needs a justification",
                );
            }
            if instance.decision_expired(at) {
                return refuse(RefusalCode::Expired, "the decision deadline has passed");
            }
            if let Some(conflict) = instance.conflicting_constraint(&decision.scope) {
                return refuse(RefusalCode::ConflictingScope, conflict);
            }
            let authorization = instance.authorization(
                at,
                Authority::Override {
                    principal: principal.clone(),
                    justification: decision.justification.clone(),
                },
                Some(&decision.scope),
            );
            instance.transition(
                Status::Authorized(authorization.clone()),
                Some(Effect::Authorized(authorization)),
            )
        }
    }
}

fn on_reject(instance: &mut Instance, decision: &DecisionRecorded) -> Outcome {
    let principal = &decision.reviewer.principal;
    let requirement = &instance.proposal.requirement;
    let permitted = has_any_role(
        &decision.reviewer.roles,
        &approver_roles(&requirement.groups()),
    ) || has_any_role(&decision.reviewer.roles, &requirement.override_roles);
    match &instance.status {
        Status::Completed(_)
        | Status::Failed(_)
        | Status::Rejected { .. }
        | Status::Expired { .. }
        | Status::Withdrawn => already_final(instance.status.name()),
        Status::Executing(_) => refuse(
            RefusalCode::NotPaused,
            "an execution is open; it must be reported first",
        ),
        Status::AwaitingSignals
        | Status::AwaitingDecision
        | Status::Blocked
        | Status::Authorized(_)
            if !permitted =>
        {
            refuse(
                RefusalCode::RoleNotPermitted,
                format!("{principal} holds no approver or override role"),
            )
        }
        Status::AwaitingSignals
        | Status::AwaitingDecision
        | Status::Blocked
        | Status::Authorized(_) => instance.transition(
            Status::Rejected {
                by: principal.clone(),
            },
            None,
        ),
    }
}

fn on_execution_requested(
    instance: &mut Instance,
    at: TimestampMillis,
    seq: u64,
    request: &ExecutionRequested,
    grant_id: String,
) -> Outcome {
    match &instance.status {
        Status::Completed(_)
        | Status::Failed(_)
        | Status::Rejected { .. }
        | Status::Expired { .. }
        | Status::Withdrawn => already_final(instance.status.name()),
        Status::AwaitingSignals | Status::AwaitingDecision | Status::Blocked => refuse(
            RefusalCode::NotAuthorized,
            format!("the instance is paused ({})", instance.status.name()),
        ),
        Status::Authorized(authorization) | Status::Executing(authorization) => {
            let scope = &authorization.scope;
            if at > scope.not_after {
                return refuse(
                    RefusalCode::Expired,
                    format!("the grant window closed at {}", scope.not_after),
                );
            }
            if instance.grants.len() >= scope.max_executions as usize {
                return refuse(
                    RefusalCode::NoExecutionsLeft,
                    format!("all {} executions were granted", scope.max_executions),
                );
            }
            if request.action_digest != instance.proposal.action_digest {
                return refuse(
                    RefusalCode::DigestMismatch,
                    format!(
                        "presented {} but {} was authorized",
                        request.action_digest, instance.proposal.action_digest
                    ),
                );
            }
            let authorization = authorization.clone();
            let issued = IssuedGrant {
                grant_id: grant_id.clone(),
                action_digest: instance.proposal.action_digest.clone(),
                scope: authorization.scope.clone(),
                not_after: authorization.scope.not_after,
            };
            instance.grants.push(Grant {
                grant_id,
                executor: request.executor.clone(),
                granted_at: at,
                granted_seq: seq,
                report: None,
            });
            instance.transition(
                Status::Executing(authorization),
                Some(Effect::GrantIssued(issued)),
            )
        }
    }
}

fn on_execution_reported(
    instance: &mut Instance,
    at: TimestampMillis,
    seq: u64,
    reporter: &str,
    report: &ExecutionReported,
) -> Outcome {
    let Some(index) = instance
        .grants
        .iter()
        .position(|g| g.grant_id == report.grant_id)
    else {
        // Something ran that Warrant never granted: record it, whatever the status.
        instance.violations.push(Violation {
            kind: ViolationKind::UngrantedExecution,
            seq,
            grant_id: report.grant_id.clone(),
            reported_at: at,
        });
        return Outcome::Violation {
            violation: ViolationKind::UngrantedExecution,
            reason: format!(
                "grant {} was never issued for this instance",
                report.grant_id
            ),
        };
    };
    let grant = &instance.grants[index];
    let already_reported = grant.report.is_some();
    let holder = grant.executor.clone();
    match &instance.status {
        Status::Completed(_)
        | Status::Failed(_)
        | Status::Rejected { .. }
        | Status::Expired { .. }
        | Status::Withdrawn => already_final(instance.status.name()),
        // Only the executor that was granted may say how its run ended;
        // anyone else could close (or fail) another executor's grant.
        Status::AwaitingSignals
        | Status::AwaitingDecision
        | Status::Blocked
        | Status::Authorized(_)
        | Status::Executing(_)
            if reporter != holder =>
        {
            refuse(
                RefusalCode::NotGrantHolder,
                format!(
                    "grant {} is held by {holder}, not {reporter}",
                    report.grant_id
                ),
            )
        }
        Status::AwaitingSignals
        | Status::AwaitingDecision
        | Status::Blocked
        | Status::Authorized(_)
            if already_reported =>
        {
            refuse(
                RefusalCode::Duplicate,
                format!("grant {} was already reported", report.grant_id),
            )
        }
        Status::Executing(_) if already_reported => refuse(
            RefusalCode::Duplicate,
            format!("grant {} was already reported", report.grant_id),
        ),
        // An open grant exists only while Executing; kept total all the same.
        Status::AwaitingSignals
        | Status::AwaitingDecision
        | Status::Blocked
        | Status::Authorized(_) => {
            close_grant(instance, index, at, seq, report);
            instance.recorded(Some(Effect::ExecutionClosed {
                grant_id: report.grant_id.clone(),
                outcome: report.outcome,
            }))
        }
        Status::Executing(authorization) => {
            let authorization = authorization.clone();
            close_grant(instance, index, at, seq, report);
            let executions_left =
                instance.grants.len() < authorization.scope.max_executions as usize;
            let next = if instance.open_grants() > 0 {
                Status::Executing(authorization)
            } else if executions_left && at <= authorization.scope.not_after {
                Status::Authorized(authorization)
            } else {
                match report.outcome {
                    ExecutionOutcome::Succeeded => Status::Completed(authorization),
                    ExecutionOutcome::Failed => Status::Failed(authorization),
                }
            };
            instance.transition(
                next,
                Some(Effect::ExecutionClosed {
                    grant_id: report.grant_id.clone(),
                    outcome: report.outcome,
                }),
            )
        }
    }
}

fn close_grant(
    instance: &mut Instance,
    index: usize,
    at: TimestampMillis,
    seq: u64,
    report: &ExecutionReported,
) {
    if let Some(grant) = instance.grants.get_mut(index) {
        grant.report = Some(GrantReport {
            outcome: report.outcome,
            reported_at: at,
            seq,
        });
    }
}

fn on_deadline(instance: &mut Instance, at: TimestampMillis, deadline: DeadlineKind) -> Outcome {
    match (&instance.status, deadline) {
        (
            Status::Completed(_)
            | Status::Failed(_)
            | Status::Rejected { .. }
            | Status::Expired { .. }
            | Status::Withdrawn,
            _,
        ) => already_final(instance.status.name()),
        (
            Status::AwaitingSignals | Status::AwaitingDecision | Status::Blocked,
            DeadlineKind::Decision,
        ) => {
            if instance.decision_expired(at) {
                instance.transition(Status::Expired { deadline }, None)
            } else {
                refuse(
                    RefusalCode::Early,
                    format!(
                        "the decision deadline is {}",
                        instance.proposal.decision_deadline
                    ),
                )
            }
        }
        (
            Status::AwaitingSignals | Status::AwaitingDecision | Status::Blocked,
            DeadlineKind::Grant,
        ) => refuse(RefusalCode::Early, "no grant window is open yet"),
        (Status::Authorized(authorization), DeadlineKind::Grant) => {
            if at > authorization.scope.not_after {
                instance.transition(Status::Expired { deadline }, None)
            } else {
                refuse(
                    RefusalCode::Early,
                    format!(
                        "the grant window closes at {}",
                        authorization.scope.not_after
                    ),
                )
            }
        }
        (Status::Authorized(_), DeadlineKind::Decision) => {
            refuse(RefusalCode::Early, "the decision was made in time")
        }
        (Status::Executing(_), DeadlineKind::Decision | DeadlineKind::Grant) => {
            refuse(RefusalCode::Early, "an execution is open")
        }
    }
}

fn on_withdrawn(instance: &mut Instance, submitted_by: &str) -> Outcome {
    match &instance.status {
        Status::Completed(_)
        | Status::Failed(_)
        | Status::Rejected { .. }
        | Status::Expired { .. }
        | Status::Withdrawn => already_final(instance.status.name()),
        Status::Executing(_) => refuse(
            RefusalCode::NotPaused,
            "an execution is open; it must be reported first",
        ),
        Status::AwaitingSignals
        | Status::AwaitingDecision
        | Status::Blocked
        | Status::Authorized(_) => {
            if instance.is_proposer(submitted_by) {
                instance.transition(Status::Withdrawn, None)
            } else {
                refuse(
                    RefusalCode::RoleNotPermitted,
                    format!("only the proposer may withdraw, not {submitted_by}"),
                )
            }
        }
    }
}

#[cfg(test)]
#[path = "fold_tests.rs"]
mod tests;
