//! Decisions signed with a reviewer's own key, through the fold: a proof
//! that verifies counts, anything else is refused `BadSignature`, and a
//! rule with `decisions: signed` takes no decision attested by intake.

use warrant_authority::{fold, Attestation, ExecutionRecord, LogEvent, LogPosition, Outcome};
use warrant_authority::{RefusalCode, StatusName};
use warrant_schema::{samples, Envelope, EventBody};

/// The sample proposal under a rule of one SRE approval and no signals,
/// optionally `decisions: signed`.
fn proposal(signed_only: bool) -> Envelope {
    let mut envelope = samples::envelopes()[0].1.clone();
    let EventBody::ActionProposed(proposed) = &mut envelope.body else {
        panic!("the first sample is the proposal");
    };
    proposed.requirement.approvals_required = 1;
    proposed.requirement.required_signals.clear();
    proposed.requirement.approver_roles = vec!["sre".to_owned()];
    proposed.requirement.signed_decisions = signed_only;
    envelope
}

/// An HMAC-attested approval by bob, otherwise like the signed one.
fn attested() -> Envelope {
    let mut envelope = samples::signed_decision();
    envelope.event_id = "0b7d6a3e-1f2c-4e5d-8a9b-0c1d2e3f4a21".to_owned();
    envelope.submitted_by = "reviewer:bob".to_owned();
    if let EventBody::DecisionRecorded(decision) = &mut envelope.body {
        decision.reviewer.principal = "bob".to_owned();
        decision.proof = None;
    }
    envelope
}

fn fold_all(envelopes: &[Envelope]) -> (StatusName, Vec<Outcome>, ExecutionRecord) {
    let bytes: Vec<Vec<u8>> = envelopes
        .iter()
        .map(|e| warrant_schema::encode(e).expect("encodes"))
        .collect();
    let events = bytes.iter().enumerate().map(|(offset, bytes)| {
        LogEvent::decode(
            LogPosition {
                partition: 0,
                offset: offset as i64,
            },
            bytes,
        )
    });
    let (state, history) = fold(samples::INSTANCE_ID, events);
    let record = ExecutionRecord::build(&state, &history);
    (
        state.status().expect("proposed"),
        history.into_iter().map(|entry| entry.outcome).collect(),
        record,
    )
}

#[test]
fn a_reviewer_signed_approval_authorizes_and_the_record_says_so() {
    let (status, _, record) = fold_all(&[proposal(false), samples::signed_decision()]);
    assert_eq!(status, StatusName::Authorized);
    assert_eq!(
        record.decisions[0].attestation,
        Attestation::SignedByReviewer {
            key_id: "b600306cfa76723f".to_owned(),
            public_key: samples::SIGNED_REVIEWER_PUBLIC_KEY.to_owned(),
        }
    );
    let (_, _, record) = fold_all(&[proposal(false), attested()]);
    assert_eq!(
        record.decisions[0].attestation,
        Attestation::AttestedByIntake
    );
}

#[test]
fn a_proof_that_does_not_match_the_event_is_refused_bad_signature() {
    type Tamper = fn(&mut warrant_schema::DecisionRecorded);
    let tamperings: [(&str, Tamper); 4] = [
        ("a widened scope", |d| d.scope.max_executions = Some(5)),
        ("another verdict", |d| {
            d.verdict = warrant_schema::DecisionVerdict::Override
        }),
        ("an edited justification", |d| d.justification.push('.')),
        ("a flipped signature byte", |d| {
            if let Some(proof) = &mut d.proof {
                let mut bytes = hex::decode(&proof.signature).expect("hex");
                bytes[0] ^= 0x01;
                proof.signature = hex::encode(bytes);
            }
        }),
    ];
    for (what, tamper) in tamperings {
        let mut decision = samples::signed_decision();
        if let EventBody::DecisionRecorded(recorded) = &mut decision.body {
            tamper(recorded);
        }
        let (status, outcomes, _) = fold_all(&[proposal(false), decision]);
        assert_eq!(
            outcomes[1].refusal(),
            Some(RefusalCode::BadSignature),
            "{what}"
        );
        assert_eq!(status, StatusName::AwaitingDecision, "{what}");
    }
}

#[test]
fn a_signature_for_another_instance_approves_nothing_here() {
    // The same signed bytes replayed into another instance: the payload
    // names the sample instance, so it is refused there.
    let other = "11111111-2222-4333-8444-555555555555";
    let mut proposed = proposal(false);
    proposed.instance_id = other.to_owned();
    let mut decision = samples::signed_decision();
    decision.instance_id = other.to_owned();
    let bytes = [proposed, decision].map(|e| warrant_schema::encode(&e).expect("encodes"));
    let events = bytes.iter().enumerate().map(|(offset, bytes)| {
        LogEvent::decode(
            LogPosition {
                partition: 0,
                offset: offset as i64,
            },
            bytes,
        )
    });
    let (state, history) = fold(other, events);
    assert_eq!(
        history[1].outcome.refusal(),
        Some(RefusalCode::BadSignature)
    );
    assert_eq!(state.status(), Some(StatusName::AwaitingDecision));
}

#[test]
fn a_signed_only_rule_refuses_decisions_attested_by_intake() {
    let (status, outcomes, _) = fold_all(&[proposal(true), attested()]);
    assert_eq!(outcomes[1].refusal(), Some(RefusalCode::RoleNotPermitted));
    assert_eq!(status, StatusName::AwaitingDecision);
    let (status, _, _) = fold_all(&[proposal(true), attested(), samples::signed_decision()]);
    assert_eq!(status, StatusName::Authorized);
}
