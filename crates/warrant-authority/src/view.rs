//! The minimum authoritative execution record (docs/contract.md §7) as one value, built
//! from an instance's state and history. The projector serves it, replay
//! prints it, and `--verify` compares them, so both build it here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;
use warrant_schema::{
    Action, ContextRef, DecisionVerdict, EventBody, PolicyRef, Proposer, Requirement,
    RuleNotMatched, RulesetRef, Scope, SignalVerdict, TimestampMillis,
};

use crate::record::*;

/// Records whose Kafka key is not a canonical instance UUID are kept in a
/// quarantine record (docs/contract.md §5: Malformed, "in a quarantine record"), one per
/// partition: `quarantine-<partition>`, e.g. `quarantine-0`. Per partition
/// because the log orders records only within a partition: one quarantine
/// across partitions would chain its entries in whatever order a reader
/// happened to interleave the partitions, and replay and the projector could
/// build different heads (and checkpoint digests) from the same log.
pub const QUARANTINE: &str = "quarantine";

/// The quarantine pseudo-instance of `partition`: `quarantine-<partition>`.
pub fn quarantine_instance(partition: i32) -> String {
    format!("{QUARANTINE}-{partition}")
}

/// The partition whose quarantine `instance_id` names, if it names one
/// exactly as [`quarantine_instance`] writes it (`quarantine-0`, never
/// `quarantine-00` or `quarantine--1`).
pub fn quarantine_partition(instance_id: &str) -> Option<i32> {
    let digits = instance_id.strip_prefix(QUARANTINE)?.strip_prefix('-')?;
    let partition: i32 = digits.parse().ok()?;
    (partition >= 0 && partition.to_string() == digits).then_some(partition)
}

/// The instance id a Kafka key names, if it is a canonical (lowercase,
/// hyphenated) UUID; `None` for anything else, missing keys included.
pub fn instance_key(key: Option<&[u8]>) -> Option<&str> {
    let text = std::str::from_utf8(key?).ok()?;
    // The hyphenated form is the only 36-character one `Uuid` parses; its
    // canonical spelling is lowercase.
    let canonical = text.len() == 36
        && !text.bytes().any(|b| b.is_ascii_uppercase())
        && Uuid::try_parse(text).is_ok();
    canonical.then_some(text)
}

/// The instance a log record belongs to, from its Kafka key and the
/// partition it is in: the key when it is a canonical UUID, else that
/// partition's quarantine.
pub fn instance_for_key(key: Option<&[u8]>, partition: i32) -> String {
    match instance_key(key) {
        Some(instance_id) => instance_id.to_owned(),
        None => quarantine_instance(partition),
    }
}

/// SHA-256 over every instance's id and head hash, in id order: equal
/// digests mean equal records everywhere, whatever order they were built in.
pub fn checkpoint_digest<'a>(heads: impl IntoIterator<Item = (&'a str, &'a Hash32)>) -> Hash32 {
    let sorted: BTreeMap<&str, &Hash32> = heads.into_iter().collect();
    let mut digest = CheckpointDigest::default();
    for (instance_id, head) in sorted {
        digest.push(instance_id, head);
    }
    digest.finish()
}

/// [`checkpoint_digest`] for heads that already come in id order, one at a
/// time, so a caller scanning a sorted store need not hold them all. The
/// caller owes the order: ids strictly ascending (as `str` orders them,
/// byte by byte).
#[derive(Debug, Clone, Default)]
pub struct CheckpointDigest(Sha256);

impl CheckpointDigest {
    pub fn push(&mut self, instance_id: &str, head: &Hash32) {
        self.0.update(instance_id.as_bytes());
        self.0.update([0u8]);
        self.0.update(head.0);
    }

    pub fn finish(self) -> Hash32 {
        Hash32(self.0.finalize().into())
    }
}

/// What intake needs to know about an instance to take an event for it,
/// read from the stored state alone: no history, no refold. Existence is
/// monotonic (an instance, once proposed, stays proposed), so a caller may
/// remember a positive answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceFacts {
    pub instance_id: String,
    /// `None` until an `ActionProposed` was applied.
    pub status: Option<StatusName>,
    pub entries: u64,
    pub head_hash: Hash32,
    /// The principal that proposed it.
    pub submitted_by: Option<String>,
    pub action_digest: Option<String>,
    pub decision_deadline: Option<TimestampMillis>,
    /// The `not_after` of the authorization, while authorized.
    pub grant_not_after: Option<TimestampMillis>,
}

impl InstanceFacts {
    pub fn of(state: &InstanceState) -> InstanceFacts {
        let instance = state.instance();
        InstanceFacts {
            instance_id: state.instance_id.clone(),
            status: state.status(),
            entries: state.entries,
            head_hash: state.head,
            submitted_by: instance.map(|i| i.proposal.submitted_by.clone()),
            action_digest: instance.map(|i| i.proposal.action_digest.clone()),
            decision_deadline: instance.map(|i| i.proposal.decision_deadline),
            grant_not_after: instance
                .and_then(|i| i.status.authorization())
                .map(|a| a.scope.not_after),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutionRecord {
    pub instance_id: String,
    /// `None` while nothing was proposed under this id.
    pub status: Option<StatusName>,
    pub proposal: Option<ProposalView>,
    pub signals: Vec<SignalView>,
    pub decisions: Vec<DecisionView>,
    /// The rule's approval groups, who counts for each and how many are
    /// still missing (one group for a single-group rule, none for `review:
    /// never`).
    #[serde(default)]
    pub approval_groups: Vec<GroupProgress>,
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
    /// Every rule before `rule` and why it did not match (envelope v3).
    #[serde(default)]
    pub resolution: Vec<RuleNotMatched>,
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
    /// Who vouches for this decision: the reviewer's own key, or intake.
    pub attestation: Attestation,
    /// For a counted approval, the group (index into `approval_groups`) it
    /// counts for now; `None` for any other decision, and for an approval
    /// whose groups were all full.
    #[serde(default)]
    pub counted_for: Option<u32>,
}

/// One approval group and where it stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupProgress {
    pub roles: Vec<String>,
    pub count: u32,
    /// The principals counted for this group, in the order they approved.
    pub approved_by: Vec<String>,
    /// `count` minus those counted: 0 once the group is met.
    pub missing: u32,
}

/// How a decision is proven (docs/signatures.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Attestation {
    /// Signed with the reviewer's own Ed25519 key; anyone can verify it
    /// offline from the record (the fold did: a bad proof is refused
    /// `BadSignature`).
    SignedByReviewer { key_id: String, public_key: String },
    /// Attested by intake, which checked an HMAC with a secret it holds.
    AttestedByIntake,
}

impl Attestation {
    pub fn of(decision: &warrant_schema::DecisionRecorded) -> Attestation {
        match &decision.proof {
            Some(proof) => Attestation::SignedByReviewer {
                key_id: proof.key_id.clone(),
                public_key: proof.public_key.clone(),
            },
            None => Attestation::AttestedByIntake,
        }
    }

    /// `signed by the reviewer (key …)` or `attested by intake (HMAC)`.
    pub fn describe(&self) -> String {
        match self {
            Attestation::SignedByReviewer { key_id, .. } => {
                format!("signed by the reviewer (key {key_id})")
            }
            Attestation::AttestedByIntake => "attested by intake (HMAC)".to_owned(),
        }
    }
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
                resolution: i.proposal.resolution.clone(),
                decision_deadline: i.proposal.decision_deadline,
            }),
            signals: Vec::new(),
            decisions: Vec::new(),
            approval_groups: instance.map(group_progress).unwrap_or_default(),
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
        if let Some(instance) = instance {
            for decision in &mut record.decisions {
                decision.counted_for = instance
                    .approvals
                    .get(&decision.reviewer)
                    .filter(|counted| counted.seq == decision.seq)
                    .and_then(|counted| counted.counted_for);
            }
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
                    attestation: Attestation::of(decision),
                    counted_for: None,
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

fn group_progress(instance: &Instance) -> Vec<GroupProgress> {
    let mut counted: Vec<(&u64, &String, u32)> = instance
        .approvals
        .iter()
        .filter_map(|(p, c)| c.counted_for.map(|g| (&c.seq, p, g)))
        .collect();
    counted.sort();
    instance
        .proposal
        .requirement
        .groups()
        .into_iter()
        .zip(0u32..)
        .map(|(group, index)| {
            let approved_by: Vec<String> = counted
                .iter()
                .filter(|(_, _, g)| *g == index)
                .map(|(_, p, _)| (*p).clone())
                .collect();
            let count = u32::try_from(group.count).unwrap_or(0);
            let have = u32::try_from(approved_by.len()).unwrap_or(u32::MAX);
            GroupProgress {
                roles: group.roles,
                count,
                missing: count.saturating_sub(have),
                approved_by,
            }
        })
        .collect()
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
        assert_eq!(instance_for_key(Some(id.as_bytes()), 3), id);
        assert_eq!(instance_key(Some(id.as_bytes())), Some(id));
        for not_an_id in [
            id.to_uppercase().into_bytes(),
            b"6f1c2b9e4d0a4c7e9a510d2f3b8c7e11".to_vec(),
            format!("{{{id}}}").into_bytes(),
            format!("urn:uuid:{id}").into_bytes(),
            format!("{id} ").into_bytes(),
            b"quarantine-0".to_vec(),
            vec![0xff, 0xfe],
            vec![],
        ] {
            assert_eq!(instance_key(Some(&not_an_id)), None, "{not_an_id:?}");
            assert_eq!(instance_for_key(Some(&not_an_id), 0), "quarantine-0");
        }
        assert_eq!(instance_key(None), None);
        assert_eq!(instance_for_key(None, 0), "quarantine-0");
    }

    #[test]
    fn each_partition_has_its_own_quarantine() {
        assert_eq!(instance_for_key(Some(b"junk"), 0), "quarantine-0");
        assert_eq!(instance_for_key(Some(b"junk"), 11), "quarantine-11");
        assert_eq!(instance_for_key(None, 11), quarantine_instance(11));
        for partition in [0, 1, 9, 10, 2047, i32::MAX] {
            assert_eq!(
                quarantine_partition(&quarantine_instance(partition)),
                Some(partition)
            );
        }
        for other in [
            "quarantine",
            "quarantine-",
            "quarantine-00",
            "quarantine-01",
            "quarantine--1",
            "quarantine-+1",
            "quarantine-1x",
            "quarantine-99999999999",
            "Quarantine-1",
            "6f1c2b9e-4d0a-4c7e-9a51-0d2f3b8c7e11",
        ] {
            assert_eq!(quarantine_partition(other), None, "{other}");
        }
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
