//! The minimum authoritative execution record (SPEC §7) as one value, built
//! from an instance's state and history. The projector serves it, replay
//! prints it, and `--verify` compares them, so both build it here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;
use warrant_schema::{
    Action, ContextRef, DecisionVerdict, EventBody, PolicyRef, Proposer, Requirement, RulesetRef,
    Scope, SignalVerdict, TimestampMillis,
};

use crate::record::*;

/// Instance under which records whose Kafka key is not a canonical UUID are
/// kept (SPEC §5: Malformed, "in a quarantine record").
pub const QUARANTINE_INSTANCE: &str = "quarantine";

/// The instance a log record belongs to, from its Kafka key.
pub fn instance_for_key(key: Option<&[u8]>) -> String {
    key.and_then(|key| std::str::from_utf8(key).ok())
        .and_then(|text| {
            let uuid = Uuid::try_parse(text).ok()?;
            let canonical = uuid.hyphenated().to_string();
            (canonical == text).then_some(canonical)
        })
        .unwrap_or_else(|| QUARANTINE_INSTANCE.to_owned())
}

/// SHA-256 over every instance's id and head hash, in id order: equal
/// digests mean equal records everywhere, whatever order they were built in.
pub fn checkpoint_digest<'a>(heads: impl IntoIterator<Item = (&'a str, &'a Hash32)>) -> Hash32 {
    let sorted: BTreeMap<&str, &Hash32> = heads.into_iter().collect();
    let mut hasher = Sha256::new();
    for (instance_id, head) in sorted {
        hasher.update(instance_id.as_bytes());
        hasher.update([0u8]);
        hasher.update(head.0);
    }
    Hash32(hasher.finalize().into())
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutionRecord {
    pub instance_id: String,
    /// `None` while nothing was proposed under this id.
    pub status: Option<StatusName>,
    pub proposal: Option<ProposalView>,
    pub signals: Vec<SignalView>,
    pub decisions: Vec<DecisionView>,
    pub authorization: Option<Authorization>,
    pub grants: Vec<Grant>,
    pub violations: Vec<Violation>,
    pub transitions: Vec<TransitionView>,
    pub history: Vec<EntryView>,
    pub head_hash: Hash32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProposalView {
    pub proposed_at: TimestampMillis,
    pub submitted_by: String,
    pub action: Action,
    pub action_digest: String,
    pub proposer: Proposer,
    /// The context available at decision time.
    pub context_refs: Vec<ContextRef>,
    pub rationale: Option<String>,
    pub rule: Requirement,
    pub ruleset: RulesetRef,
    pub decision_deadline: TimestampMillis,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalView {
    pub seq: u64,
    pub recorded_at: TimestampMillis,
    pub source: String,
    pub verdict: SignalVerdict,
    pub reasons: Vec<String>,
    pub policy_ref: PolicyRef,
    /// `applied`, or the refusal code.
    pub outcome: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionView {
    pub seq: u64,
    pub recorded_at: TimestampMillis,
    pub reviewer: String,
    pub roles: Vec<String>,
    pub verdict: DecisionVerdict,
    pub justification: String,
    pub scope: Scope,
    pub evidence_refs: Vec<String>,
    pub outcome: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransitionView {
    pub seq: u64,
    pub recorded_at: Option<TimestampMillis>,
    pub position: LogPosition,
    pub from: Option<StatusName>,
    pub to: StatusName,
}

/// A history entry without the event body (the body's facts are in the
/// lists above; its bytes are on the log, bound by `hash`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryView {
    pub seq: u64,
    pub recorded_at: Option<TimestampMillis>,
    pub position: LogPosition,
    pub event_id: Option<String>,
    pub event: String,
    pub submitted_by: Option<String>,
    pub outcome: Outcome,
    pub hash: Hash32,
}

fn outcome_label(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Applied { .. } => "applied".to_owned(),
        Outcome::Refused { code, .. } => code.as_str().to_owned(),
        Outcome::Violation { violation, .. } => violation.as_str().to_owned(),
    }
}

impl ExecutionRecord {
    pub fn build(state: &InstanceState, history: &[HistoryEntry]) -> ExecutionRecord {
        let instance = state.instance();
        let mut record = ExecutionRecord {
            instance_id: state.instance_id.clone(),
            status: state.status(),
            proposal: instance.map(|i| ProposalView {
                proposed_at: i.proposal.proposed_at,
                submitted_by: i.proposal.submitted_by.clone(),
                action: i.proposal.action.clone(),
                action_digest: i.proposal.action_digest.clone(),
                proposer: i.proposal.proposer.clone(),
                context_refs: i.proposal.context_refs.clone(),
                rationale: i.proposal.rationale.clone(),
                rule: i.proposal.requirement.clone(),
                ruleset: i.proposal.ruleset.clone(),
                decision_deadline: i.proposal.decision_deadline,
            }),
            signals: Vec::new(),
            decisions: Vec::new(),
            authorization: instance.and_then(|i| i.status.authorization().cloned()),
            grants: instance.map(|i| i.grants.clone()).unwrap_or_default(),
            violations: instance.map(|i| i.violations.clone()).unwrap_or_default(),
            transitions: Vec::new(),
            history: Vec::with_capacity(history.len()),
            head_hash: state.head,
        };
        for entry in history {
            record.add(entry);
        }
        record
    }

    fn add(&mut self, entry: &HistoryEntry) {
        if let Outcome::Applied { from, to, .. } = &entry.outcome {
            if *from != Some(*to) {
                self.transitions.push(TransitionView {
                    seq: entry.seq,
                    recorded_at: entry.recorded_at,
                    position: entry.position,
                    from: *from,
                    to: *to,
                });
            }
        }
        let envelope = entry.event.as_ref();
        if let Some(envelope) = envelope {
            match &envelope.body {
                EventBody::PolicySignalRecorded(signal) => self.signals.push(SignalView {
                    seq: entry.seq,
                    recorded_at: envelope.recorded_at,
                    source: signal.source.clone(),
                    verdict: signal.verdict,
                    reasons: signal.reasons.clone(),
                    policy_ref: signal.policy_ref.clone(),
                    outcome: outcome_label(&entry.outcome),
                }),
                EventBody::DecisionRecorded(decision) => self.decisions.push(DecisionView {
                    seq: entry.seq,
                    recorded_at: envelope.recorded_at,
                    reviewer: decision.reviewer.principal.clone(),
                    roles: decision.reviewer.roles.clone(),
                    verdict: decision.verdict,
                    justification: decision.justification.clone(),
                    scope: decision.scope.clone(),
                    evidence_refs: decision.evidence_refs.clone(),
                    outcome: outcome_label(&entry.outcome),
                }),
                EventBody::ActionProposed(_)
                | EventBody::ExecutionRequested(_)
                | EventBody::ExecutionReported(_)
                | EventBody::DeadlineReached(_)
                | EventBody::ProposalWithdrawn(_) => {}
            }
        }
        self.history.push(EntryView::from(entry));
    }
}

impl From<&HistoryEntry> for EntryView {
    fn from(entry: &HistoryEntry) -> Self {
        let envelope = entry.event.as_ref();
        EntryView {
            seq: entry.seq,
            recorded_at: entry.recorded_at,
            position: entry.position,
            event_id: envelope.map(|e| e.event_id.clone()),
            event: envelope.map_or("Malformed", |e| e.body.kind()).to_owned(),
            submitted_by: envelope.map(|e| e.submitted_by.clone()),
            outcome: entry.outcome.clone(),
            hash: entry.hash,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_canonical_uuid_keys_name_an_instance() {
        let id = "6f1c2b9e-4d0a-4c7e-9a51-0d2f3b8c7e11";
        assert_eq!(instance_for_key(Some(id.as_bytes())), id);
        assert_eq!(
            instance_for_key(Some(id.to_uppercase().as_bytes())),
            QUARANTINE_INSTANCE
        );
        assert_eq!(
            instance_for_key(Some(b"6f1c2b9e4d0a4c7e9a510d2f3b8c7e11")),
            QUARANTINE_INSTANCE
        );
        assert_eq!(instance_for_key(Some(&[0xff, 0xfe])), QUARANTINE_INSTANCE);
        assert_eq!(instance_for_key(None), QUARANTINE_INSTANCE);
    }

    #[test]
    fn the_checkpoint_digest_ignores_order_but_not_content() {
        let (a, b) = (Hash32([1; 32]), Hash32([2; 32]));
        let forward = checkpoint_digest([("x", &a), ("y", &b)]);
        assert_eq!(forward, checkpoint_digest([("y", &b), ("x", &a)]));
        assert_ne!(forward, checkpoint_digest([("x", &b), ("y", &a)]));
        assert_ne!(forward, checkpoint_digest([("x", &a)]));
    }
}
