//! decode + fold + hash over a realistic instance: a proposal, two signals,
//! two approvals, a claim and its report (issue: ≥ 1 M events/s on one core).
//!
//! `cargo bench -p warrant-authority --bench fold` prints the whole pipeline
//! and each stage alone, so the split between Avro decoding, the rules and
//! SHA-256 is read off one run.

/// What the services and replay run with: their binaries set the same.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use warrant_authority::{
    chain_hash, step, Hash32, InstanceState, LogEvent, LogPosition, Outcome, StatusName,
};
use warrant_schema::{
    samples, DecisionRecorded, DecisionVerdict, Envelope, EventBody, ExecutionOutcome,
    ExecutionReported, ExecutionRequested, PolicyRef, PolicySignalRecorded, Reviewer, Scope,
    SignalVerdict,
};

/// The seven records of one instance's life, as bytes on the log.
fn realistic_mix() -> Vec<Vec<u8>> {
    let t0 = samples::PROPOSED_AT;
    let envelope = |n: u32, by: &str, body: EventBody| Envelope {
        event_id: format!("00000000-0000-4000-8000-{n:012}"),
        instance_id: samples::INSTANCE_ID.to_owned(),
        recorded_at: t0 + i64::from(n) * 1_000,
        submitted_by: by.to_owned(),
        body,
    };
    let signal = |source: &str| {
        EventBody::PolicySignalRecorded(PolicySignalRecorded {
            source: source.to_owned(),
            verdict: SignalVerdict::Allow,
            reasons: vec!["within change window".to_owned()],
            policy_ref: PolicyRef {
                id: format!("{source}.rego"),
                version: "17".to_owned(),
            },
        })
    };
    let approve = |principal: &str| {
        EventBody::DecisionRecorded(DecisionRecorded {
            reviewer: Reviewer {
                principal: principal.to_owned(),
                roles: vec!["sre".to_owned()],
            },
            verdict: DecisionVerdict::Approve,
            justification: "heap profile confirms the leak".to_owned(),
            scope: Scope::default(),
            evidence_refs: vec!["https://pprof.example/heap/123".to_owned()],
            proof: None,
        })
    };
    let mut first_claim = None;
    let events = vec![
        envelope(
            0,
            "svc:remediator",
            EventBody::ActionProposed(Box::new(samples::action_proposed())),
        ),
        envelope(1, "policy:opa", signal("opa")),
        envelope(2, "policy:calendar", signal("change-calendar")),
        envelope(3, "reviewer:alice", approve("alice")),
        envelope(4, "reviewer:bob", approve("bob")),
        envelope(
            5,
            "svc:deployer",
            EventBody::ExecutionRequested(ExecutionRequested {
                executor: "svc:deployer".to_owned(),
                action_digest: samples::ACTION_DIGEST.to_owned(),
            }),
        ),
    ];
    // Learn the grant id the fold will issue, so the report closes it.
    let mut state = InstanceState::new(samples::INSTANCE_ID);
    let mut bytes: Vec<Vec<u8>> = Vec::new();
    for (offset, event) in events.into_iter().enumerate() {
        let encoded = warrant_schema::encode(&event).expect("encodes");
        let entry = step(
            &mut state,
            LogEvent::decode(
                LogPosition {
                    partition: 0,
                    offset: offset as i64,
                },
                &encoded,
            ),
        );
        first_claim = entry
            .outcome
            .grant()
            .map(|g| g.grant_id.clone())
            .or(first_claim);
        bytes.push(encoded);
    }
    let report = envelope(
        6,
        "svc:deployer",
        EventBody::ExecutionReported(ExecutionReported {
            grant_id: first_claim.expect("the claim was granted"),
            outcome: ExecutionOutcome::Succeeded,
            detail: Some("3/3 pods restarted".to_owned()),
            result_digest: None,
        }),
    );
    bytes.push(warrant_schema::encode(&report).expect("encodes"));
    let (final_state, _) = fold_all(&bytes);
    assert_eq!(
        final_state.status(),
        Some(StatusName::Completed),
        "the mix must exercise every rule"
    );
    bytes
}

fn fold_all(records: &[Vec<u8>]) -> (InstanceState, Hash32) {
    let mut state = InstanceState::new(samples::INSTANCE_ID);
    for (offset, bytes) in records.iter().enumerate() {
        step(
            &mut state,
            LogEvent::decode(
                LogPosition {
                    partition: 0,
                    offset: offset as i64,
                },
                bytes,
            ),
        );
    }
    let head = state.head;
    (state, head)
}

fn benches(c: &mut Criterion) {
    let records = realistic_mix();
    let events = records.len() as u64;
    let decoded: Vec<Envelope> = records
        .iter()
        .map(|b| warrant_schema::decode(b).expect("decodes"))
        .collect();

    let mut group = c.benchmark_group("instance_of_7_events");
    group.throughput(Throughput::Elements(events));

    group.bench_function("decode+fold+hash", |b| b.iter(|| fold_all(&records)));

    group.bench_function("decode_only", |b| {
        b.iter(|| {
            for bytes in &records {
                std::hint::black_box(warrant_schema::decode::<Envelope>(bytes).expect("decodes"));
            }
        })
    });

    // The fold with hashing, on envelopes decoded beforehand; cloning the
    // envelopes is part of the setup, not the measurement.
    group.bench_function("fold+hash (pre-decoded)", |b| {
        b.iter_batched(
            || decoded.clone(),
            |decoded| {
                let mut state = InstanceState::new(samples::INSTANCE_ID);
                for (offset, (envelope, bytes)) in decoded.into_iter().zip(&records).enumerate() {
                    let event = LogEvent {
                        position: LogPosition {
                            partition: 0,
                            offset: offset as i64,
                        },
                        bytes,
                        decoded: Ok(envelope),
                    };
                    step(&mut state, event);
                }
                state
            },
            BatchSize::SmallInput,
        )
    });

    let outcome = Outcome::Refused {
        code: warrant_authority::RefusalCode::Duplicate,
        reason: String::new(),
    };
    group.bench_function("hash_only", |b| {
        b.iter(|| {
            let mut head = Hash32::default();
            for bytes in &records {
                head = chain_hash(&head, bytes, &outcome);
            }
            head
        })
    });
    group.finish();
}

criterion_group!(fold_benches, benches);
criterion_main!(fold_benches);
