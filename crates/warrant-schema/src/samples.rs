//! One sample of every record and union branch, with every optional field
//! both set and unset somewhere. The golden vectors, the Python check and
//! the benchmarks all use these, so they are part of the public API.

use std::collections::BTreeMap;

use crate::types::*;

pub const INSTANCE_ID: &str = "6f1c2b9e-4d0a-4c7e-9a51-0d2f3b8c7e11";
pub const PROPOSED_AT: TimestampMillis = 1_795_000_000_000;

fn envelope(event_id: &str, offset_ms: i64, submitted_by: &str, body: EventBody) -> Envelope {
    Envelope {
        event_id: event_id.to_owned(),
        instance_id: INSTANCE_ID.to_owned(),
        recorded_at: PROPOSED_AT + offset_ms,
        submitted_by: submitted_by.to_owned(),
        body,
    }
}

pub fn action() -> Action {
    Action {
        kind: "service.restart".to_owned(),
        target: "prod/payments/api".to_owned(),
        parameters: BTreeMap::from([
            ("reason".to_owned(), "memory leak, p99 > 2s".to_owned()),
            ("strategy".to_owned(), "rolling".to_owned()),
        ]),
    }
}

/// The SHA-256 of the JCS form of [`action`], as computed by Python's
/// `json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)`.
pub const ACTION_DIGEST: &str = "78a07f2ff9440dd82e55eb205ed9fb4928d80b291b34532957c322406816fdd4";

pub fn requirement() -> Requirement {
    Requirement {
        rule_id: "prod-restarts".to_owned(),
        approvals_required: 2,
        approver_roles: vec!["sre".to_owned(), "payments-oncall".to_owned()],
        override_roles: vec!["incident-commander".to_owned()],
        required_signals: vec!["opa".to_owned(), "change-calendar".to_owned()],
        review: ReviewMode::Always,
        decision_timeout_ms: 3_600_000,
        grant_ttl_ms: 900_000,
        max_executions: 1,
        signed_decisions: false,
        approval_groups: vec![],
    }
}

pub fn action_proposed() -> ActionProposed {
    ActionProposed {
        action: action(),
        action_digest: ACTION_DIGEST.to_owned(),
        proposer: Proposer {
            principal: "agent:remediator".to_owned(),
            kind: ProposerKind::Agent,
            model: Some("gpt-ops-7".to_owned()),
        },
        context_refs: vec![
            ContextRef {
                uri: "https://grafana.example/d/payments?from=now-1h".to_owned(),
                digest: Some("sha256:9f2c".to_owned()),
                note: Some("p99 latency panel".to_owned()),
            },
            ContextRef {
                uri: "runbook://payments/restart".to_owned(),
                digest: None,
                note: None,
            },
        ],
        rationale: Some("heap grows 40 MB/min since deploy 1.42; a restart resets it".to_owned()),
        requirement: requirement(),
        ruleset: RulesetRef {
            version: "2026-11-01".to_owned(),
            digest: "5b0e5f2a8c1d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f".to_owned(),
        },
        resolution: vec![],
    }
}

/// A proposal under a two-group rule (envelope v3): two SREs and one
/// security reviewer, after two earlier rules did not match.
pub fn two_group_proposal() -> Envelope {
    let mut proposed = action_proposed();
    proposed.requirement = Requirement {
        rule_id: "prod-restarts-two-groups".to_owned(),
        approvals_required: 3,
        approver_roles: vec!["sre".to_owned(), "security".to_owned()],
        approval_groups: vec![
            ApprovalGroup {
                roles: vec!["sre".to_owned()],
                count: 2,
            },
            ApprovalGroup {
                roles: vec!["security".to_owned()],
                count: 1,
            },
        ],
        ..requirement()
    };
    proposed.resolution = vec![
        RuleNotMatched {
            rule_id: "payments-refunds".to_owned(),
            reason: "kind".to_owned(),
        },
        RuleNotMatched {
            rule_id: "prod-restarts-latency".to_owned(),
            reason: "when false".to_owned(),
        },
    ];
    envelope(
        "0b7d6a3e-1f2c-4e5d-8a9b-0c1d2e3f4a30",
        0,
        "svc:remediator",
        EventBody::ActionProposed(Box::new(proposed)),
    )
}

/// A proposal the rule itself authorizes (`review: NEVER`, envelope v3).
pub fn review_never_proposal() -> Envelope {
    let mut proposed = action_proposed();
    proposed.requirement = Requirement {
        rule_id: "cache-flush".to_owned(),
        approvals_required: 0,
        approver_roles: vec![],
        required_signals: vec![],
        review: ReviewMode::Never,
        ..requirement()
    };
    envelope(
        "0b7d6a3e-1f2c-4e5d-8a9b-0c1d2e3f4a31",
        0,
        "svc:remediator",
        EventBody::ActionProposed(Box::new(proposed)),
    )
}

/// A realistic history of one instance: proposal, two signals, two
/// approvals, a claim and its report; then one of each remaining branch.
pub fn envelopes() -> Vec<(&'static str, Envelope)> {
    vec![
        (
            "action_proposed",
            envelope(
                "0b7d6a3e-1f2c-4e5d-8a9b-0c1d2e3f4a01",
                0,
                "svc:remediator",
                EventBody::ActionProposed(Box::new(action_proposed())),
            ),
        ),
        (
            "signal_allow",
            envelope(
                "0b7d6a3e-1f2c-4e5d-8a9b-0c1d2e3f4a02",
                1_000,
                "policy:opa",
                EventBody::PolicySignalRecorded(PolicySignalRecorded {
                    source: "opa".to_owned(),
                    verdict: SignalVerdict::Allow,
                    reasons: vec![],
                    policy_ref: PolicyRef {
                        id: "restarts.rego".to_owned(),
                        version: "17".to_owned(),
                    },
                }),
            ),
        ),
        (
            "signal_pause",
            envelope(
                "0b7d6a3e-1f2c-4e5d-8a9b-0c1d2e3f4a03",
                2_000,
                "policy:calendar",
                EventBody::PolicySignalRecorded(PolicySignalRecorded {
                    source: "change-calendar".to_owned(),
                    verdict: SignalVerdict::Pause,
                    reasons: vec![
                        "inside payments freeze window".to_owned(),
                        "ask the IC".to_owned(),
                    ],
                    policy_ref: PolicyRef {
                        id: "freeze".to_owned(),
                        version: "2026.11".to_owned(),
                    },
                }),
            ),
        ),
        (
            "decision_approve",
            envelope(
                "0b7d6a3e-1f2c-4e5d-8a9b-0c1d2e3f4a04",
                60_000,
                "reviewer:alice",
                EventBody::DecisionRecorded(DecisionRecorded {
                    reviewer: Reviewer {
                        principal: "alice".to_owned(),
                        roles: vec!["sre".to_owned()],
                    },
                    verdict: DecisionVerdict::Approve,
                    justification: "leak confirmed in heap profile".to_owned(),
                    scope: Scope {
                        constraints: BTreeMap::from([(
                            "region".to_owned(),
                            "eu-west-1".to_owned(),
                        )]),
                        not_after: Some(PROPOSED_AT + 600_000),
                        max_executions: Some(1),
                    },
                    evidence_refs: vec!["https://pprof.example/heap/123".to_owned()],
                    proof: None,
                }),
            ),
        ),
        (
            "decision_approve_unscoped",
            envelope(
                "0b7d6a3e-1f2c-4e5d-8a9b-0c1d2e3f4a05",
                90_000,
                "reviewer:bob",
                EventBody::DecisionRecorded(DecisionRecorded {
                    reviewer: Reviewer {
                        principal: "bob".to_owned(),
                        roles: vec!["payments-oncall".to_owned(), "sre".to_owned()],
                    },
                    verdict: DecisionVerdict::Approve,
                    justification: String::new(),
                    scope: Scope::default(),
                    evidence_refs: vec![],
                    proof: None,
                }),
            ),
        ),
        (
            "execution_requested",
            envelope(
                "0b7d6a3e-1f2c-4e5d-8a9b-0c1d2e3f4a06",
                120_000,
                "svc:deployer",
                EventBody::ExecutionRequested(ExecutionRequested {
                    executor: "svc:deployer".to_owned(),
                    action_digest: ACTION_DIGEST.to_owned(),
                }),
            ),
        ),
        (
            "execution_reported",
            envelope(
                "0b7d6a3e-1f2c-4e5d-8a9b-0c1d2e3f4a07",
                180_000,
                "svc:deployer",
                EventBody::ExecutionReported(ExecutionReported {
                    grant_id: "9a8b7c6d-5e4f-5a3b-8c2d-1e0f9a8b7c6d".to_owned(),
                    outcome: ExecutionOutcome::Succeeded,
                    detail: Some("3/3 pods restarted".to_owned()),
                    result_digest: Some("sha256:77aa".to_owned()),
                }),
            ),
        ),
        (
            "decision_override",
            envelope(
                "0b7d6a3e-1f2c-4e5d-8a9b-0c1d2e3f4a08",
                200_000,
                "reviewer:carol",
                EventBody::DecisionRecorded(DecisionRecorded {
                    reviewer: Reviewer {
                        principal: "carol".to_owned(),
                        roles: vec!["incident-commander".to_owned()],
                    },
                    verdict: DecisionVerdict::Override,
                    justification: "SEV1, customer payments failing".to_owned(),
                    scope: Scope {
                        constraints: BTreeMap::new(),
                        not_after: None,
                        max_executions: Some(2),
                    },
                    evidence_refs: vec![],
                    proof: None,
                }),
            ),
        ),
        (
            "deadline_reached",
            envelope(
                "0b7d6a3e-1f2c-4e5d-8a9b-0c1d2e3f4a09",
                3_600_001,
                "warrant:sweeper",
                EventBody::DeadlineReached(DeadlineReached {
                    deadline: DeadlineKind::Decision,
                }),
            ),
        ),
        (
            "proposal_withdrawn",
            envelope(
                "0b7d6a3e-1f2c-4e5d-8a9b-0c1d2e3f4a0a",
                300_000,
                "svc:remediator",
                EventBody::ProposalWithdrawn(ProposalWithdrawn {
                    reason: Some("leak fixed by config push".to_owned()),
                }),
            ),
        ),
        (
            "proposal_withdrawn_no_reason",
            envelope(
                "0b7d6a3e-1f2c-4e5d-8a9b-0c1d2e3f4a0b",
                301_000,
                "svc:remediator",
                EventBody::ProposalWithdrawn(ProposalWithdrawn { reason: None }),
            ),
        ),
    ]
}

pub fn proposal_submitted() -> ProposalSubmitted {
    let proposed = action_proposed();
    ProposalSubmitted {
        instance_id: Some(INSTANCE_ID.to_owned()),
        action: proposed.action,
        proposer: proposed.proposer,
        context_refs: proposed.context_refs,
        rationale: proposed.rationale,
    }
}

pub fn signal_submitted() -> SignalSubmitted {
    SignalSubmitted {
        instance_id: INSTANCE_ID.to_owned(),
        source: "opa".to_owned(),
        verdict: SignalVerdict::Deny,
        reasons: vec!["target is in a frozen namespace".to_owned()],
        policy_ref: PolicyRef {
            id: "restarts.rego".to_owned(),
            version: "18".to_owned(),
        },
    }
}

/// The public half of the sample reviewer key (Ed25519, secret key 32 bytes
/// of 0x2a: test material only, never a real key).
pub const SIGNED_REVIEWER_PUBLIC_KEY: &str =
    "197f6b23e16c8532c6abc838facd5ea789be0c76b2920334039bfa8b3d368d61";

/// A decision signed with the reviewer's own key (envelope v2): dave
/// approves the sample instance two minutes after the proposal. The proof
/// verifies (warrant-authority's tests check it), so the golden vector
/// pins a real signature, not just the field layout.
pub fn signed_decision() -> Envelope {
    envelope(
        "0b7d6a3e-1f2c-4e5d-8a9b-0c1d2e3f4a20",
        120_000,
        "reviewer:dave",
        EventBody::DecisionRecorded(DecisionRecorded {
            reviewer: Reviewer {
                principal: "dave".to_owned(),
                roles: vec!["sre".to_owned()],
            },
            verdict: DecisionVerdict::Approve,
            justification: "reviewed the heap profile; signed with my own key".to_owned(),
            scope: Scope::default(),
            evidence_refs: vec![],
            proof: Some(DecisionProof {
                scheme: "ed25519".to_owned(),
                key_id: "b600306cfa76723f".to_owned(),
                public_key: SIGNED_REVIEWER_PUBLIC_KEY.to_owned(),
                signed_payload: concat!(
                    "warrant.decision.v1\n",
                    "{\"instance_id\":\"6f1c2b9e-4d0a-4c7e-9a51-0d2f3b8c7e11\",",
                    "\"action_digest\":\"78a07f2ff9440dd82e55eb205ed9fb4928d80b291b34532957c322406816fdd4\",",
                    "\"verdict\":\"APPROVE\",",
                    "\"justification\":\"reviewed the heap profile; signed with my own key\",",
                    "\"scope\":{\"constraints\":{},\"not_after\":null,\"max_executions\":null},",
                    "\"evidence_refs\":[],\"timestamp\":1795000120,\"key_id\":\"b600306cfa76723f\"}"
                )
                .to_owned(),
                signature: concat!(
                    "687e66260e8cbd6f897ee9edcb6635588c10f79134aac1ea7303968f9f77c0b5",
                    "34aea49e2656b7567dc826ea45068ea3055b884cbf8640c6d1e307a8b15f1a06"
                )
                .to_owned(),
            }),
        }),
    )
}
