//! Every id intake mints. Ids that a retry, a re-delivery or a second
//! sweeper must reproduce are UUIDv5 of what identifies the attempt, so the
//! repeat lands on the log as a recorded `Duplicate` instead of a second
//! event (docs/contract.md §2); the rest are random.

use uuid::Uuid;
use warrant_schema::DeadlineKind;

/// Namespace of every v5 UUID intake derives. Never change it: ids derived
/// before and after must stay equal for duplicates to be recognised.
pub const NAMESPACE: Uuid = Uuid::from_u128(0x3f0c_9a27_5d41_4b8e_a6f3_81c2_d40e_6b19);

fn derive(name: &str) -> String {
    Uuid::new_v5(&NAMESPACE, name.as_bytes())
        .hyphenated()
        .to_string()
}

/// A v5 id over `parts`, each preceded by its length in bytes, so no two
/// different part lists share a name: joining free-form parts with `/`
/// would give `deployer` + `x/1` and `deployer/x` + `1` the same id.
fn derive_parts(label: &str, parts: &[&str]) -> String {
    let mut name =
        Vec::with_capacity(label.len() + parts.iter().map(|p| p.len() + 9).sum::<usize>());
    name.extend_from_slice(label.as_bytes());
    for part in parts {
        name.push(0);
        name.extend_from_slice(&(part.len() as u64).to_be_bytes());
        name.extend_from_slice(part.as_bytes());
    }
    Uuid::new_v5(&NAMESPACE, &name).hyphenated().to_string()
}

/// 122 random bits as 32 lowercase hex digits (a UUIDv4 without dashes),
/// for session tokens and challenges.
pub fn random_hex() -> String {
    Uuid::new_v4().simple().to_string()
}

/// A fresh random id (UUIDv4), canonical form.
pub fn random() -> String {
    Uuid::new_v4().hyphenated().to_string()
}

/// Parse an instance id in any form `uuid` accepts and return the canonical
/// lowercase hyphenated form the log is keyed by. The nil UUID is refused.
pub fn canonical_instance_id(text: &str) -> Option<String> {
    let uuid = Uuid::try_parse(text.trim()).ok()?;
    (!uuid.is_nil()).then(|| uuid.hyphenated().to_string())
}

/// The event id of the `ActionProposed` for a client-chosen instance id:
/// the same for every retry of that proposal.
pub fn proposal_event_id(instance_id: &str) -> String {
    derive(&format!("{instance_id}/proposal"))
}

/// The event id for a request carrying an `Idempotency-Key`: the same for
/// every retry by the same principal on the same endpoint and instance,
/// and never the same for two (principal, key) pairs.
pub fn idempotent_event_id(
    instance_id: &str,
    endpoint: &str,
    principal: &str,
    key: &str,
) -> String {
    derive_parts("idempotency.v2", &[instance_id, endpoint, principal, key])
}

/// The instance id of a proposal without one, submitted with an
/// `Idempotency-Key`: retries name the same instance, and two principals
/// can never be steered onto one instance.
pub fn idempotent_instance_id(principal: &str, key: &str) -> String {
    derive_parts("idempotency-instance.v2", &[principal, key])
}

/// The event id of whatever intake appends for one ingress record: derived
/// from where the record sits, so a re-delivery after a crash is a duplicate.
pub fn ingress_event_id(topic: &str, partition: i32, offset: i64) -> String {
    derive(&format!("ingress/{topic}/{partition}/{offset}"))
}

/// The instance id of an ingress proposal that named none.
pub fn ingress_instance_id(topic: &str, partition: i32, offset: i64) -> String {
    derive(&format!("ingress-instance/{topic}/{partition}/{offset}"))
}

/// The event id of a decision: the reviewer, the signed timestamp and the
/// SHA-256 of the exact body. Replaying a captured request inside the clock
/// window is a duplicate however it is re-signed: with only one of the
/// tags a rotating reviewer sent, or with their other key.
pub fn decision_event_id(
    instance_id: &str,
    reviewer: &str,
    timestamp: &str,
    body: &[u8],
) -> String {
    let body_sha256 = warrant_authority::sha256_hex(body);
    derive_parts(
        "decision.v2",
        &[instance_id, reviewer, timestamp, &body_sha256],
    )
}

/// The event id of a `DeadlineReached`: instance, deadline kind, deadline
/// value and the number of history entries the sweeper saw. A restart or a
/// second sweeper looking at the same state derives the same id; if the
/// instance moved on (an entry was added) a new attempt gets a new id.
pub fn deadline_event_id(
    instance_id: &str,
    kind: DeadlineKind,
    deadline: i64,
    entries: u64,
) -> String {
    let kind = match kind {
        DeadlineKind::Decision => "DECISION",
        DeadlineKind::Grant => "GRANT",
    };
    derive(&format!(
        "deadline/{instance_id}/{kind}/{deadline}/{entries}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_are_stable_and_distinct() {
        let id = "6f1c2b9e-4d0a-4c7e-9a51-0d2f3b8c7e11";
        assert_eq!(proposal_event_id(id), proposal_event_id(id));
        assert_ne!(proposal_event_id(id), ingress_event_id(id, 0, 0));
        assert_ne!(ingress_event_id("t", 0, 1), ingress_event_id("t", 1, 0));
        assert_ne!(ingress_event_id("t", 0, 1), ingress_instance_id("t", 0, 1));
        assert_ne!(
            deadline_event_id(id, DeadlineKind::Decision, 5, 1),
            deadline_event_id(id, DeadlineKind::Grant, 5, 1)
        );
        // Pinned (computed with Python's uuid.uuid5): a change here would
        // stop retries and re-deliveries from deduplicating against ids
        // already on the log.
        assert_eq!(
            proposal_event_id(id),
            "c3f272dc-ac02-55b5-9317-a975ad724dec"
        );
        assert_eq!(
            ingress_event_id("warrant.proposals", 0, 0),
            "2ac13ac6-72d8-55f3-8910-478235410394"
        );
    }

    #[test]
    fn idempotency_ids_never_collide_across_principals() {
        let id = "6f1c2b9e-4d0a-4c7e-9a51-0d2f3b8c7e11";
        // The pairs a `/`-joined name could not tell apart.
        assert_ne!(
            idempotent_event_id(id, "executions", "deployer", "x/1"),
            idempotent_event_id(id, "executions", "deployer/x", "1")
        );
        assert_ne!(
            idempotent_instance_id("svc", "a/b"),
            idempotent_instance_id("svc/a", "b")
        );
        assert_ne!(
            idempotent_event_id(id, "reports", "p", ""),
            idempotent_event_id(id, "reports", "", "p")
        );
        assert_eq!(
            idempotent_event_id(id, "executions", "deployer", "x/1"),
            idempotent_event_id(id, "executions", "deployer", "x/1")
        );
    }

    #[test]
    fn instance_ids_are_canonicalised() {
        let id = "6f1c2b9e-4d0a-4c7e-9a51-0d2f3b8c7e11";
        assert_eq!(canonical_instance_id(id).as_deref(), Some(id));
        assert_eq!(
            canonical_instance_id(&id.to_uppercase()).as_deref(),
            Some(id)
        );
        assert_eq!(
            canonical_instance_id("6f1c2b9e4d0a4c7e9a510d2f3b8c7e11").as_deref(),
            Some(id)
        );
        assert_eq!(
            canonical_instance_id("00000000-0000-0000-0000-000000000000"),
            None
        );
        assert_eq!(canonical_instance_id("not-a-uuid"), None);
        assert_eq!(canonical_instance_id(""), None);
    }
}
