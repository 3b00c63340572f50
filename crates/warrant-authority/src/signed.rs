//! Decisions signed with a reviewer's own key (docs/signatures.md).
//!
//! A reviewer signs, with Ed25519, the bytes [`DECISION_PREFIX`] followed by
//! the decision as JSON ([`SignedDecision`]). Intake checks the signature
//! and the key at the door, and records the exact signed bytes, the
//! signature and the public key in `DecisionRecorded.proof`. The fold then
//! checks again, from the event alone ([`check_proof`]): verification is
//! pure, so every replay of the log re-verifies every signed decision, and
//! an operator of intake cannot write an approval in a reviewer's name.

use std::collections::BTreeMap;

use ed25519_dalek::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use warrant_schema::{DecisionProof, DecisionRecorded, DecisionVerdict, Scope, TimestampMillis};

/// Domain separation: these bytes can never be mistaken for anything else a
/// key might sign (a session challenge starts with [`SESSION_PREFIX`]).
pub const DECISION_PREFIX: &str = "warrant.decision.v1\n";
/// What a reviewer signs to open a read-only session.
pub const SESSION_PREFIX: &str = "warrant.session.v1\n";
/// The only scheme there is.
pub const ED25519: &str = "ed25519";
/// How far the signed timestamp may be from the event's `recorded_at`.
pub const MAX_SKEW_MS: i64 = 300_000;

/// The decision exactly as the reviewer signed it. The JSON after the
/// prefix is this, and nothing else (unknown fields are refused).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedDecision {
    pub instance_id: String,
    /// The action digest the reviewer saw: a signature over another
    /// action's digest approves nothing here.
    pub action_digest: String,
    pub verdict: DecisionVerdict,
    #[serde(default)]
    pub justification: String,
    #[serde(default)]
    pub scope: SignedScope,
    #[serde(default)]
    pub evidence_refs: Vec<String>,
    /// Unix seconds when the reviewer signed.
    pub timestamp: i64,
    /// [`key_id`] of the signing key.
    pub key_id: String,
}

/// The scope a reviewer allows, as signed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedScope {
    #[serde(default)]
    pub constraints: BTreeMap<String, String>,
    #[serde(default)]
    pub not_after: Option<i64>,
    #[serde(default)]
    pub max_executions: Option<i32>,
}

impl SignedScope {
    pub fn to_scope(&self) -> Scope {
        Scope {
            constraints: self.constraints.clone(),
            not_after: self.not_after,
            max_executions: self.max_executions,
        }
    }
}

/// Why a signed decision is not what it claims to be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("unknown signature scheme {0:?}")]
    Scheme(String),
    #[error("the public key is not 32 bytes of lowercase hex, or not a valid Ed25519 key")]
    PublicKey,
    #[error("key id {claimed:?} is not the id of the recorded key ({actual})")]
    KeyId { claimed: String, actual: String },
    #[error("the signature is not 64 bytes of lowercase hex")]
    SignatureFormat,
    #[error("the signature does not verify over the recorded payload with the recorded key")]
    Invalid,
    #[error("the signed payload does not start with {DECISION_PREFIX:?}")]
    Prefix,
    #[error("the signed payload is not a decision: {0}")]
    Payload(String),
    #[error("the signed {field} does not match the event's")]
    Mismatch { field: &'static str },
    #[error("signed at {signed_ms} ms but recorded at {recorded_at} ms: more than {MAX_SKEW_MS} ms apart")]
    Stale {
        signed_ms: i64,
        recorded_at: TimestampMillis,
    },
}

/// The id of a public key: the first 16 hex digits of its SHA-256.
pub fn key_id(public_key: &[u8; 32]) -> String {
    hex::encode(&Sha256::digest(public_key)[..8])
}

/// Parse a 32-byte Ed25519 public key from lowercase hex.
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, ProofError> {
    let bytes = strict_hex::<32>(text).ok_or(ProofError::PublicKey)?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| ProofError::PublicKey)
}

/// Parse a 64-byte Ed25519 signature from lowercase hex.
pub fn parse_signature(text: &str) -> Result<Signature, ProofError> {
    strict_hex::<64>(text)
        .map(|bytes| Signature::from_bytes(&bytes))
        .ok_or(ProofError::SignatureFormat)
}

/// Whether `signature` is `key`'s over `message` (strict verification:
/// no malleable or small-order forms).
pub fn verify(key: &VerifyingKey, message: &[u8], signature: &Signature) -> Result<(), ProofError> {
    key.verify_strict(message, signature)
        .map_err(|_| ProofError::Invalid)
}

/// The decision in a signed payload, or why the payload is not one.
pub fn parse_payload(payload: &str) -> Result<SignedDecision, ProofError> {
    let json = payload
        .strip_prefix(DECISION_PREFIX)
        .ok_or(ProofError::Prefix)?;
    serde_json::from_str(json).map_err(|e| ProofError::Payload(e.to_string()))
}

/// Check a recorded proof against the event it is part of: the signature
/// verifies over the recorded payload with the recorded key, and the
/// payload names this instance, its action digest, and exactly this
/// event's verdict, justification, scope and evidence, signed within
/// [`MAX_SKEW_MS`] of `recorded_at`. Pure: the fold and replay run it.
pub fn check_proof(
    proof: &DecisionProof,
    decision: &DecisionRecorded,
    instance_id: &str,
    action_digest: &str,
    recorded_at: TimestampMillis,
) -> Result<SignedDecision, ProofError> {
    if proof.scheme != ED25519 {
        return Err(ProofError::Scheme(proof.scheme.clone()));
    }
    let key = parse_public_key(&proof.public_key)?;
    let actual = key_id(key.as_bytes());
    if proof.key_id != actual {
        return Err(ProofError::KeyId {
            claimed: proof.key_id.clone(),
            actual,
        });
    }
    let signature = parse_signature(&proof.signature)?;
    verify(&key, proof.signed_payload.as_bytes(), &signature)?;
    let signed = parse_payload(&proof.signed_payload)?;
    let mismatch = |field| Err(ProofError::Mismatch { field });
    if signed.key_id != proof.key_id {
        return mismatch("key_id");
    }
    if signed.instance_id != instance_id {
        return mismatch("instance_id");
    }
    if signed.action_digest != action_digest {
        return mismatch("action_digest");
    }
    if signed.verdict != decision.verdict {
        return mismatch("verdict");
    }
    if signed.justification != decision.justification {
        return mismatch("justification");
    }
    if signed.scope.to_scope() != decision.scope {
        return mismatch("scope");
    }
    if signed.evidence_refs != decision.evidence_refs {
        return mismatch("evidence_refs");
    }
    let signed_ms = signed.timestamp.saturating_mul(1000);
    if signed_ms.saturating_sub(recorded_at).saturating_abs() > MAX_SKEW_MS {
        return Err(ProofError::Stale {
            signed_ms,
            recorded_at,
        });
    }
    Ok(signed)
}

/// Lowercase hex only: one spelling per key and signature.
fn strict_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut bytes = [0u8; N];
    hex::decode_to_slice(text, &mut bytes).ok()?;
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::{Signer, SigningKey};
    use warrant_schema::Reviewer;

    use super::*;

    const INSTANCE: &str = "6f1c2b9e-4d0a-4c7e-9a51-0d2f3b8c7e11";
    const DIGEST: &str = "78a07f2ff9440dd82e55eb205ed9fb4928d80b291b34532957c322406816fdd4";
    const AT: i64 = 1_800_000_000_000;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7u8; 32])
    }

    fn decision() -> DecisionRecorded {
        DecisionRecorded {
            reviewer: Reviewer {
                principal: "alice".to_owned(),
                roles: vec!["sre".to_owned()],
            },
            verdict: DecisionVerdict::Approve,
            justification: "leak confirmed".to_owned(),
            scope: Scope {
                constraints: BTreeMap::from([("region".to_owned(), "eu".to_owned())]),
                not_after: Some(AT + 60_000),
                max_executions: Some(1),
            },
            evidence_refs: vec!["https://pprof.example/1".to_owned()],
            proof: None,
        }
    }

    fn signed(decision: &DecisionRecorded) -> SignedDecision {
        SignedDecision {
            instance_id: INSTANCE.to_owned(),
            action_digest: DIGEST.to_owned(),
            verdict: decision.verdict,
            justification: decision.justification.clone(),
            scope: SignedScope {
                constraints: decision.scope.constraints.clone(),
                not_after: decision.scope.not_after,
                max_executions: decision.scope.max_executions,
            },
            evidence_refs: decision.evidence_refs.clone(),
            timestamp: AT / 1000,
            key_id: key_id(key().verifying_key().as_bytes()),
        }
    }

    fn proof_of(payload: &SignedDecision) -> DecisionProof {
        let signed_payload = format!(
            "{DECISION_PREFIX}{}",
            serde_json::to_string(payload).expect("json")
        );
        let signature = key().sign(signed_payload.as_bytes());
        DecisionProof {
            scheme: ED25519.to_owned(),
            key_id: key_id(key().verifying_key().as_bytes()),
            public_key: hex::encode(key().verifying_key().as_bytes()),
            signed_payload,
            signature: hex::encode(signature.to_bytes()),
        }
    }

    fn check(
        proof: &DecisionProof,
        decision: &DecisionRecorded,
    ) -> Result<SignedDecision, ProofError> {
        check_proof(proof, decision, INSTANCE, DIGEST, AT)
    }

    #[test]
    fn a_proof_over_exactly_this_decision_verifies() {
        let decision = decision();
        let proof = proof_of(&signed(&decision));
        assert_eq!(check(&proof, &decision), Ok(signed(&decision)));
    }

    #[test]
    fn a_proof_over_anything_else_does_not() {
        let decision = decision();
        type Change = fn(&mut SignedDecision);
        let cases: [(&str, Change); 7] = [
            ("instance_id", |s| s.instance_id = "other".to_owned()),
            ("action_digest", |s| s.action_digest = "00".repeat(32)),
            ("verdict", |s| s.verdict = DecisionVerdict::Override),
            ("justification", |s| s.justification.push('!')),
            ("scope", |s| s.scope.max_executions = Some(2)),
            ("evidence_refs", |s| s.evidence_refs.clear()),
            ("key_id", |s| s.key_id = "0123456789abcdef".to_owned()),
        ];
        for (field, change) in cases {
            let mut payload = signed(&decision);
            change(&mut payload);
            assert_eq!(
                check(&proof_of(&payload), &decision),
                Err(ProofError::Mismatch { field }),
                "{field}"
            );
        }
    }

    #[test]
    fn a_tampered_byte_or_another_key_fails_verification() {
        let decision = decision();
        let proof = proof_of(&signed(&decision));
        let mut tampered = proof.clone();
        tampered.signed_payload = tampered.signed_payload.replace("leak", "Leak");
        assert_eq!(check(&tampered, &decision), Err(ProofError::Invalid));
        let mut flipped = proof.clone();
        let mut signature = hex::decode(&flipped.signature).expect("hex");
        signature[10] ^= 1;
        flipped.signature = hex::encode(signature);
        assert_eq!(check(&flipped, &decision), Err(ProofError::Invalid));
        let other = SigningKey::from_bytes(&[8u8; 32]);
        let mut swapped = proof.clone();
        swapped.public_key = hex::encode(other.verifying_key().as_bytes());
        swapped.key_id = key_id(other.verifying_key().as_bytes());
        assert_eq!(check(&swapped, &decision), Err(ProofError::Invalid));
        let mut wrong_id = proof.clone();
        wrong_id.key_id = "0123456789abcdef".to_owned();
        assert!(matches!(
            check(&wrong_id, &decision),
            Err(ProofError::KeyId { .. })
        ));
        let mut upper = proof;
        upper.signature = upper.signature.to_uppercase();
        assert_eq!(check(&upper, &decision), Err(ProofError::SignatureFormat));
    }

    #[test]
    fn a_stale_signature_or_an_unprefixed_payload_is_refused() {
        let decision = decision();
        let mut old = signed(&decision);
        old.timestamp -= 301;
        assert!(matches!(
            check(&proof_of(&old), &decision),
            Err(ProofError::Stale { .. })
        ));
        let mut proof = proof_of(&signed(&decision));
        let json = proof
            .signed_payload
            .trim_start_matches(DECISION_PREFIX)
            .to_owned();
        proof.signed_payload = json.clone();
        proof.signature = hex::encode(key().sign(json.as_bytes()).to_bytes());
        assert_eq!(check(&proof, &decision), Err(ProofError::Prefix));
    }
}

#[cfg(test)]
mod sample_tests {
    use warrant_schema::{samples, EventBody};

    use super::*;

    /// The golden vector's signature is real: the schema crate's sample
    /// proof verifies against the sample instance.
    #[test]
    fn the_sample_signed_decision_verifies() {
        let envelope = samples::signed_decision();
        let EventBody::DecisionRecorded(decision) = &envelope.body else {
            panic!("not a decision");
        };
        let proof = decision.proof.as_ref().expect("a proof");
        let signed = check_proof(
            proof,
            decision,
            samples::INSTANCE_ID,
            samples::ACTION_DIGEST,
            envelope.recorded_at,
        )
        .expect("the sample proof verifies");
        assert_eq!(signed.key_id, proof.key_id);
    }
}
