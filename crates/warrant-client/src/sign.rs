//! The bytes a reviewer signs (docs/signatures.md): pure, so what the CLI
//! sends can be checked without a server.

use warrant_authority::signed::{self, SignedDecision, SignedScope};
use warrant_schema::DecisionVerdict;

use crate::error::Error;
use crate::key::ReviewerKey;

/// What a reviewer decides, before it is bound to an instance, a digest,
/// a time and a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub verdict: DecisionVerdict,
    pub justification: String,
    pub scope: SignedScope,
    pub evidence_refs: Vec<String>,
}

/// A signed decision as it goes over the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedRequest {
    /// The raw body: the [`SignedDecision`] JSON, byte for byte what was
    /// signed after [`signed::DECISION_PREFIX`].
    pub body: String,
    /// `X-Warrant-Timestamp`, equal to the body's `timestamp`.
    pub timestamp: i64,
    /// `X-Warrant-Signature`: `ed25519=<128 lowercase hex>`.
    pub signature_header: String,
}

/// The message that opens a session: [`signed::SESSION_PREFIX`], the
/// challenge, a newline, the key id (as intake's `session_message`).
pub fn session_message(challenge: &str, key_id: &str) -> String {
    format!("{}{challenge}\n{key_id}", signed::SESSION_PREFIX)
}

/// Bind `decision` to the instance, the action digest the reviewer saw,
/// the time and the key, and sign [`signed::DECISION_PREFIX`] + the JSON.
/// The JSON is serialised once and sent as is: intake verifies the bytes
/// it receives, so no re-serialisation may come between.
pub fn sign_decision(
    key: &ReviewerKey,
    instance_id: &str,
    action_digest: &str,
    decision: &Decision,
    timestamp: i64,
) -> Result<SignedRequest, Error> {
    let payload = SignedDecision {
        instance_id: instance_id.to_owned(),
        action_digest: action_digest.to_owned(),
        verdict: decision.verdict,
        justification: decision.justification.clone(),
        scope: decision.scope.clone(),
        evidence_refs: decision.evidence_refs.clone(),
        timestamp,
        key_id: key.key_id().to_owned(),
    };
    let body = serde_json::to_string(&payload)
        .map_err(|error| Error::Input(format!("cannot serialise the decision: {error}")))?;
    let message = format!("{}{body}", signed::DECISION_PREFIX);
    let signature = key.sign_hex(message.as_bytes());
    Ok(SignedRequest {
        body,
        timestamp,
        signature_header: format!("{}={signature}", signed::ED25519),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    const INSTANCE: &str = "6f1c2b9e-4d0a-4c7e-9a51-0d2f3b8c7e11";
    const DIGEST: &str = "78a07f2ff9440dd82e55eb205ed9fb4928d80b291b34532957c322406816fdd4";

    fn decision() -> Decision {
        Decision {
            verdict: DecisionVerdict::Approve,
            justification: "leak confirmed".to_owned(),
            scope: SignedScope {
                constraints: BTreeMap::from([("region".to_owned(), "eu".to_owned())]),
                not_after: Some(1_800_000_060_000),
                max_executions: Some(1),
            },
            evidence_refs: vec!["https://pprof.example/1".to_owned()],
        }
    }

    #[test]
    fn the_signature_covers_the_prefix_and_exactly_the_body_sent() {
        let key = ReviewerKey::from_seed(&[7u8; 32], None);
        let request =
            sign_decision(&key, INSTANCE, DIGEST, &decision(), 1_800_000_000).expect("signed");
        let hex = request
            .signature_header
            .strip_prefix("ed25519=")
            .expect("the scheme prefix");
        let public = signed::parse_public_key(&key.public_key_hex()).expect("key");
        let signature = signed::parse_signature(hex).expect("128 lowercase hex");
        let message = format!("{}{}", signed::DECISION_PREFIX, request.body);
        assert_eq!(
            signed::verify(&public, message.as_bytes(), &signature),
            Ok(())
        );
        // Without the prefix the same bytes do not verify: domain separation.
        assert!(signed::verify(&public, request.body.as_bytes(), &signature).is_err());
        // The body is a decision the fold's parser reads back unchanged.
        let parsed = signed::parse_payload(&message).expect("a signed decision");
        assert_eq!(parsed.instance_id, INSTANCE);
        assert_eq!(parsed.action_digest, DIGEST);
        assert_eq!(parsed.timestamp, request.timestamp);
        assert_eq!(parsed.key_id, key.key_id());
        assert_eq!(parsed.scope, decision().scope);
        assert_eq!(parsed.verdict, DecisionVerdict::Approve);
    }

    #[test]
    fn the_session_message_matches_the_documented_layout() {
        assert_eq!(
            session_message("abc", "0123456789abcdef"),
            "warrant.session.v1\nabc\n0123456789abcdef"
        );
    }
}
