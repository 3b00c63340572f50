//! One door logic for both doors into the log: what turns a proposal or a
//! signal into an envelope, whether it arrived over HTTP or on an ingress
//! topic.
//!
//! Everything here is pure: the caller authenticates (a bearer token, or
//! the ingress topic's declared identity), picks the ids and the time, and
//! passes the ruleset in force. Canonical names, identity rules and rule
//! resolution therefore live once; the HTTP side maps [`Invalid`] to a 4xx
//! JSON error and ingress to a dead-letter reason.

use warrant_authority::{
    action_digest, check_action, Facts, NotCanonical, Ruleset, MAX_CONTEXT_REFS,
};
use warrant_schema::{
    Action, ActionProposed, ContextRef, Envelope, EventBody, PolicyRef, PolicySignalRecorded,
    Proposer, ProposerKind, SignalVerdict, TimestampMillis,
};

use crate::ids;

/// Why a submission does not become an event. `Display` is the message a
/// caller (or the dead-letter reason) gets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("instance_id {0:?} is not a UUID instance id")]
    InstanceId(String),
    #[error("{field} {problem}")]
    Field {
        field: &'static str,
        problem: String,
    },
    #[error("the action is not in canonical form: {0}")]
    Action(NotCanonical),
    /// The submission names another identity than the one the door
    /// authenticated: never recorded as someone else.
    #[error("{field} is {claimed:?} but this door only accepts {actual:?}")]
    NotYours {
        field: &'static str,
        claimed: String,
        actual: String,
    },
}

impl Invalid {
    /// The machine-readable code of the HTTP error body.
    pub fn code(&self) -> &'static str {
        match self {
            Invalid::InstanceId(_) => "invalid_instance_id",
            Invalid::Field { .. } => "invalid_field",
            Invalid::Action(_) => "invalid_action",
            Invalid::NotYours {
                field: "proposer.principal",
                ..
            } => "principal_mismatch",
            Invalid::NotYours { .. } => "source_mismatch",
        }
    }
}

/// Who, when and under which ids: what the door decided before the body
/// was looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    pub instance_id: String,
    pub event_id: String,
    /// The principal the door authenticated (`kafka:<topic>` for ingress).
    pub submitted_by: String,
    pub recorded_at: TimestampMillis,
}

/// A proposal as submitted, before anything about it is believed.
#[derive(Debug, Clone, PartialEq)]
pub struct ProposalDraft {
    pub action: Action,
    /// The proposer principal the submission names, if any.
    pub claimed_principal: Option<String>,
    pub kind: ProposerKind,
    pub model: Option<String>,
    pub context_refs: Vec<ContextRef>,
    pub rationale: Option<String>,
}

/// A policy signal as submitted.
#[derive(Debug, Clone, PartialEq)]
pub struct SignalDraft {
    /// The source the submission names, if any.
    pub claimed_source: Option<String>,
    pub verdict: SignalVerdict,
    pub reasons: Vec<String>,
    pub policy_ref: PolicyRef,
}

/// The canonical instance id of `text`, or why it is not one.
pub fn instance_id(text: &str) -> Result<String, Invalid> {
    ids::canonical_instance_id(text).ok_or_else(|| Invalid::InstanceId(shorten(text, 80)))
}

/// The instance id a proposer chose for a new instance. Version-5 UUIDs are
/// refused: intake derives those (from an `Idempotency-Key`, or from an
/// ingress record's position), and anyone who can compute another
/// principal's derived id could otherwise take it first.
pub fn chosen_instance_id(text: &str) -> Result<String, Invalid> {
    let id = instance_id(text)?;
    if uuid::Uuid::try_parse(&id).is_ok_and(|uuid| uuid.get_version_num() == 5) {
        return Err(Invalid::Field {
            field: "instance_id",
            problem: "must not be a version-5 UUID: intake derives those; choose a random (v4) or time-ordered (v7) one".to_owned(),
        });
    }
    Ok(id)
}

/// Validate a proposal, resolve its rule and build its `ActionProposed`.
/// `principal` is the proposer the door authenticated.
pub fn proposal(
    stamp: Stamp,
    principal: &str,
    draft: ProposalDraft,
    ruleset: &Ruleset,
) -> Result<Envelope, Invalid> {
    if let Some(claimed) = draft.claimed_principal.filter(|c| c != principal) {
        return Err(Invalid::NotYours {
            field: "proposer.principal",
            claimed: shorten(&claimed, 80),
            actual: principal.to_owned(),
        });
    }
    check_action(&draft.action).map_err(Invalid::Action)?;
    // Conditions range over the refs, and loading bounded what that costs
    // by this count: more would make a proposal as slow as its client likes.
    if draft.context_refs.len() > MAX_CONTEXT_REFS {
        return Err(Invalid::Field {
            field: "context_refs",
            problem: format!(
                "has {} refs; a proposal may carry at most {MAX_CONTEXT_REFS}",
                draft.context_refs.len()
            ),
        });
    }
    for context in &draft.context_refs {
        non_empty("context_refs[].uri", &context.uri)?;
    }
    let proposer = Proposer {
        principal: principal.to_owned(),
        kind: draft.kind,
        model: draft.model,
    };
    // Total: loading guaranteed a catch-all rule. Resolved on exactly what
    // is recorded (the authenticated proposer, the canonical action), so a
    // replay of the ruleset over the event gives the same answer.
    let resolution = ruleset.resolve(&Facts {
        action: &draft.action,
        proposer: &proposer,
        context_refs: &draft.context_refs,
    });
    let requirement = resolution.requirement().clone();
    let not_matched = resolution.not_matched;
    let digest = action_digest(&draft.action);
    let body = ActionProposed {
        action: draft.action,
        action_digest: digest,
        proposer,
        context_refs: draft.context_refs,
        rationale: draft.rationale,
        requirement,
        ruleset: ruleset.reference(),
        resolution: not_matched,
    };
    Ok(envelope(stamp, EventBody::ActionProposed(Box::new(body))))
}

/// Validate a policy signal and build its `PolicySignalRecorded`.
/// `source` is the policy source the door authenticated.
pub fn signal(stamp: Stamp, source: &str, draft: SignalDraft) -> Result<Envelope, Invalid> {
    if let Some(claimed) = draft.claimed_source.filter(|c| c != source) {
        return Err(Invalid::NotYours {
            field: "source",
            claimed: shorten(&claimed, 80),
            actual: source.to_owned(),
        });
    }
    non_empty("policy_ref.id", &draft.policy_ref.id)?;
    let body = PolicySignalRecorded {
        source: source.to_owned(),
        verdict: draft.verdict,
        reasons: draft.reasons,
        policy_ref: draft.policy_ref,
    };
    Ok(envelope(stamp, EventBody::PolicySignalRecorded(body)))
}

fn envelope(stamp: Stamp, body: EventBody) -> Envelope {
    Envelope {
        event_id: stamp.event_id,
        instance_id: stamp.instance_id,
        recorded_at: stamp.recorded_at,
        submitted_by: stamp.submitted_by,
        body,
    }
}

fn non_empty(field: &'static str, value: &str) -> Result<(), Invalid> {
    if value.trim().is_empty() {
        Err(Invalid::Field {
            field,
            problem: "must not be empty".to_owned(),
        })
    } else {
        Ok(())
    }
}

fn shorten(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use warrant_schema::samples;

    use super::*;

    fn ruleset() -> Ruleset {
        Ruleset::parse(include_bytes!("../../../deploy/examples/ruleset.yaml"))
            .expect("example ruleset")
    }

    fn stamp() -> Stamp {
        Stamp {
            instance_id: samples::INSTANCE_ID.to_owned(),
            event_id: "e1".to_owned(),
            submitted_by: "svc:remediator".to_owned(),
            recorded_at: 7,
        }
    }

    fn draft(kind: &str, target: &str) -> ProposalDraft {
        ProposalDraft {
            action: Action {
                kind: kind.to_owned(),
                target: target.to_owned(),
                parameters: BTreeMap::new(),
            },
            claimed_principal: None,
            kind: ProposerKind::Agent,
            model: None,
            context_refs: Vec::new(),
            rationale: None,
        }
    }

    #[test]
    fn a_canonical_proposal_is_resolved_stamped_and_digested() {
        let envelope = proposal(
            stamp(),
            "svc:remediator",
            draft("service.restart", "prod/payments"),
            &ruleset(),
        )
        .expect("valid");
        assert_eq!(envelope.submitted_by, "svc:remediator");
        assert_eq!(envelope.recorded_at, 7);
        let EventBody::ActionProposed(proposed) = &envelope.body else {
            panic!("not a proposal");
        };
        assert_eq!(proposed.requirement.rule_id, "prod-restarts");
        assert_eq!(proposed.proposer.principal, "svc:remediator");
        assert_eq!(proposed.action_digest, action_digest(&proposed.action));
    }

    #[test]
    fn conditions_pick_the_rule_and_the_proposal_records_why_others_did_not() {
        let mut latency = draft("service.restart", "prod/payments");
        latency.action.parameters = BTreeMap::from([
            ("strategy".to_owned(), "rolling".to_owned()),
            ("reason".to_owned(), "latency p99 over threshold".to_owned()),
            ("p99_ms".to_owned(), "2400".to_owned()),
        ]);
        let resolved = |draft: ProposalDraft| {
            let envelope = proposal(stamp(), "svc:remediator", draft, &ruleset()).expect("valid");
            let EventBody::ActionProposed(proposed) = envelope.body else {
                panic!("not a proposal");
            };
            proposed
        };
        let fast = resolved(latency.clone());
        assert_eq!(fast.requirement.rule_id, "prod-restarts-latency");
        assert_eq!(fast.requirement.approvals_required, 1);
        assert!(fast.resolution.is_empty());

        let slow = resolved(draft("service.restart", "prod/payments"));
        assert_eq!(slow.requirement.rule_id, "prod-restarts");
        assert_eq!(
            slow.resolution,
            vec![warrant_schema::RuleNotMatched {
                rule_id: "prod-restarts-latency".to_owned(),
                reason: "when false".to_owned(),
            }]
        );

        latency
            .action
            .parameters
            .insert("p99_ms".to_owned(), "very slow".to_owned());
        let unreadable = resolved(latency);
        assert_eq!(unreadable.requirement.rule_id, "prod-restarts");
        assert!(
            unreadable.resolution[0].reason.starts_with("when error: "),
            "{:?}",
            unreadable.resolution
        );

        let access = resolved(draft("iam.grant", "prod/payments"));
        assert_eq!(access.requirement.rule_id, "prod-access");
        assert_eq!(access.requirement.approval_groups.len(), 2);
        let warm = resolved(draft("cache.warm", "prod/payments"));
        assert_eq!(warm.requirement.review, warrant_schema::ReviewMode::Never);
    }

    /// Given a proposal with more context refs than conditions were bounded
    /// for, when validated (for both doors), then refused naming the field
    /// and the limit; at the limit, accepted.
    #[test]
    fn a_proposal_carries_at_most_max_context_refs() {
        let with = |n: usize| {
            let mut many = draft("service.restart", "prod/payments");
            many.context_refs = (0..n)
                .map(|i| ContextRef {
                    uri: format!("runbook://{i}"),
                    digest: None,
                    note: None,
                })
                .collect();
            proposal(stamp(), "svc:remediator", many, &ruleset())
        };
        assert!(with(MAX_CONTEXT_REFS).is_ok());
        let refused = with(MAX_CONTEXT_REFS + 1).expect_err("too many");
        assert_eq!(refused.code(), "invalid_field");
        assert_eq!(
            refused.to_string(),
            "context_refs has 33 refs; a proposal may carry at most 32"
        );
    }

    #[test]
    fn no_spelling_reaches_a_laxer_rule() {
        // Each of these used to fall through to the catch-all rule.
        for (kind, target, field) in [
            ("Service.Restart", "prod/payments", "action.kind"),
            ("service.restart ", "prod/payments", "action.kind"),
            ("service.restart", "Prod/payments", ""),
            ("service.restart", " prod/payments", "action.target"),
            ("service.restart", "./prod/payments", "action.target"),
            ("service.restart", "prod//payments", "action.target"),
        ] {
            let result = proposal(stamp(), "svc:remediator", draft(kind, target), &ruleset());
            match result {
                Err(Invalid::Action(error)) => assert_eq!(error.field, field, "{kind} {target}"),
                // Targets are case-sensitive: `Prod` is another target, so
                // it is canonical and matches what it says, not `prod/`.
                Ok(envelope) if field.is_empty() => {
                    let EventBody::ActionProposed(proposed) = &envelope.body else {
                        panic!("not a proposal");
                    };
                    assert_eq!(proposed.requirement.rule_id, "everything-else");
                }
                other => panic!("{kind} {target}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_proposal_naming_another_proposer_is_not_yours() {
        let mut named = draft("service.restart", "prod/payments");
        named.claimed_principal = Some("alice".to_owned());
        let error = proposal(stamp(), "svc:remediator", named, &ruleset()).expect_err("refused");
        assert_eq!(error.code(), "principal_mismatch");
        let mut same = draft("service.restart", "prod/payments");
        same.claimed_principal = Some("svc:remediator".to_owned());
        assert!(proposal(stamp(), "svc:remediator", same, &ruleset()).is_ok());
    }

    #[test]
    fn a_signal_keeps_the_authenticated_source_only() {
        let draft = |claimed: Option<&str>| SignalDraft {
            claimed_source: claimed.map(str::to_owned),
            verdict: SignalVerdict::Allow,
            reasons: Vec::new(),
            policy_ref: PolicyRef {
                id: "p".to_owned(),
                version: "1".to_owned(),
            },
        };
        let envelope = signal(stamp(), "opa", draft(Some("opa"))).expect("valid");
        let EventBody::PolicySignalRecorded(recorded) = &envelope.body else {
            panic!("not a signal");
        };
        assert_eq!(recorded.source, "opa");
        let error = signal(stamp(), "opa", draft(Some("other"))).expect_err("refused");
        assert_eq!(error.code(), "source_mismatch");
        let mut empty = draft(None);
        empty.policy_ref.id = " ".to_owned();
        assert_eq!(
            signal(stamp(), "opa", empty).expect_err("refused").code(),
            "invalid_field"
        );
    }

    #[test]
    fn a_chosen_instance_id_may_not_be_one_intake_derives() {
        let derived = ids::idempotent_instance_id("svc:remediator", "key-1");
        assert_eq!(
            chosen_instance_id(&derived).expect_err("refused").code(),
            "invalid_field"
        );
        assert!(chosen_instance_id(samples::INSTANCE_ID).is_ok());
    }

    #[test]
    fn instance_ids_are_canonical_uuids() {
        assert_eq!(
            instance_id(&samples::INSTANCE_ID.to_uppercase()).as_deref(),
            Ok(samples::INSTANCE_ID)
        );
        assert_eq!(
            instance_id("nope").expect_err("refused").code(),
            "invalid_instance_id"
        );
    }
}
