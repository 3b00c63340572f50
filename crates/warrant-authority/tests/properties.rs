//! Properties of the fold over arbitrary event sequences (docs/contract.md §1, §5):
//! totality, determinism, resume-equals-replay, and safety.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use warrant_authority::{
    fold, quarantine_instance, step, Authority, HistoryEntry, InstanceState, Ledger, LogEvent,
    LogPosition, Outcome, StatusName,
};
use warrant_schema::{
    samples, ActionProposed, DeadlineKind, DeadlineReached, DecisionRecorded, DecisionVerdict,
    Envelope, EventBody, ExecutionOutcome, ExecutionReported, ExecutionRequested, PolicyRef,
    PolicySignalRecorded, ProposalWithdrawn, ReviewMode, Reviewer, Scope, SignalVerdict,
};

const INSTANCE: &str = "7a0c9d2e-1b3f-4a5c-8d6e-9f0a1b2c3d4e";
const OTHER_INSTANCE: &str = "00000000-0000-4000-8000-000000000000";
/// The instance living in partition 1 when two partitions are folded.
const SECOND_INSTANCE: &str = "3c5e7a90-2d4f-4b6a-9c8e-0f1a2b3c4d5e";
const T0: i64 = 1_800_000_000_000;
const MINUTE: i64 = 60_000;
const PROPOSER: &str = "agent:bot";
const PROPOSING_SERVICE: &str = "svc:agent";
const PRINCIPALS: [&str; 5] = ["alice", "bob", "carol", PROPOSER, PROPOSING_SERVICE];
const ROLES: [&str; 3] = ["sre", "ic", "dev"];
const SOURCES: [&str; 3] = ["opa", "calendar", "lint"];

/// An event in the abstract; [`materialize`] turns it into log bytes.
#[derive(Debug, Clone)]
enum Op {
    Propose {
        approvals_required: i32,
        required_signals: Vec<usize>,
        unless_all_allow: bool,
        max_executions: i32,
    },
    Signal {
        source: usize,
        verdict: u8,
    },
    Decision {
        principal: usize,
        roles: Vec<usize>,
        verdict: u8,
        justified: bool,
        region: Option<bool>,
        not_after_minutes: Option<i64>,
        max_executions: Option<i32>,
    },
    Claim {
        right_digest: bool,
    },
    Report {
        last_grant: bool,
        failed: bool,
    },
    Deadline {
        grant: bool,
    },
    Withdraw {
        by_proposer: bool,
    },
    Garbage(Vec<u8>),
    /// Keyed to this instance but naming another.
    Misaddressed,
}

fn op() -> impl Strategy<Value = Op> {
    let leaf = prop_oneof![
        1 => (1i32..4, proptest::collection::vec(0usize..3, 0..3), any::<bool>(), 1i32..4).prop_map(
            |(approvals_required, required_signals, unless_all_allow, max_executions)| Op::Propose {
                approvals_required,
                required_signals,
                unless_all_allow,
                max_executions,
            }
        ),
        4 => (0usize..3, 0u8..3).prop_map(|(source, verdict)| Op::Signal { source, verdict }),
        6 => (
            prop_oneof![6 => 0usize..3, 1 => 3usize..5],
            proptest::collection::vec(0usize..3, 1..3),
            prop_oneof![6 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8)],
            any::<bool>(),
            proptest::option::of(any::<bool>()),
            proptest::option::of(-5i64..40),
            proptest::option::of(0i32..4),
        )
            .prop_map(|(principal, roles, verdict, justified, region, not_after_minutes, max_executions)| {
                Op::Decision { principal, roles, verdict, justified, region, not_after_minutes, max_executions }
            }),
        5 => prop_oneof![4 => Just(true), 1 => Just(false)].prop_map(|right_digest| Op::Claim { right_digest }),
        3 => (any::<bool>(), any::<bool>()).prop_map(|(last_grant, failed)| Op::Report { last_grant, failed }),
        1 => any::<bool>().prop_map(|grant| Op::Deadline { grant }),
        1 => any::<bool>().prop_map(|by_proposer| Op::Withdraw { by_proposer }),
        1 => proptest::collection::vec(any::<u8>(), 0..64).prop_map(Op::Garbage),
        1 => Just(Op::Misaddressed),
    ];
    leaf
}

/// One step of a history: minutes since the previous event, sometimes the
/// event id of an earlier event (a re-delivery), and the event.
type Step = (i64, Option<usize>, Op);

/// A history: usually starting with a proposal, with time moving 0–25 min per event.
fn history() -> impl Strategy<Value = Vec<Step>> {
    let first = prop_oneof![
        9 => (1i32..4, proptest::collection::vec(0usize..3, 0..3), any::<bool>(), 1i32..4).prop_map(
            |(approvals_required, required_signals, unless_all_allow, max_executions)| Op::Propose {
                approvals_required,
                required_signals,
                unless_all_allow,
                max_executions,
            }
        ),
        1 => op(),
    ];
    let reuse = prop_oneof![15 => Just(None), 1 => any::<usize>().prop_map(Some)];
    // Mostly quick succession so decisions land before deadlines; sometimes
    // long gaps so deadlines and grant windows pass.
    let gap = prop_oneof![8 => 0i64..3, 1 => 0i64..40];
    (first, proptest::collection::vec((gap, reuse, op()), 0..40)).prop_map(|(first, rest)| {
        let mut all = vec![(0, None, first)];
        all.extend(rest);
        all
    })
}

struct Materialized {
    records: Vec<(LogPosition, Vec<u8>, Result<Envelope, String>)>,
}

fn materialize(ops: &[Step]) -> Materialized {
    materialize_for(INSTANCE, ops)
}

fn materialize_for(instance: &str, ops: &[Step]) -> Materialized {
    let mut records = Vec::new();
    let mut clock = T0;
    let mut event_ids: Vec<String> = Vec::new();
    let mut last_grant: Option<String> = None;
    let mut state = InstanceState::new(instance);
    for (index, (dt, reuse, op)) in ops.iter().enumerate() {
        clock += dt * MINUTE;
        let event_id = match reuse {
            Some(i) if !event_ids.is_empty() => event_ids[i % event_ids.len()].clone(),
            Some(_) | None => format!("00000000-0000-4000-8000-{index:012}"),
        };
        event_ids.push(event_id.clone());
        let position = LogPosition {
            partition: 0,
            offset: index as i64,
        };
        let (bytes, decoded) = match build(instance, op, clock, &event_id, last_grant.as_deref()) {
            None => {
                let Op::Garbage(bytes) = op else {
                    unreachable!("only garbage has no envelope")
                };
                (bytes.clone(), Err("garbage".to_owned()))
            }
            Some(envelope) => (
                warrant_schema::encode(&envelope).expect("encodes"),
                Ok(envelope),
            ),
        };
        let entry = step(
            &mut state,
            LogEvent {
                position,
                bytes: &bytes,
                decoded: decoded.clone(),
            },
        );
        if let Some(grant) = entry.outcome.grant() {
            last_grant = Some(grant.grant_id.clone());
        }
        records.push((position, bytes, decoded));
    }
    Materialized { records }
}

fn build(
    instance: &str,
    op: &Op,
    at: i64,
    event_id: &str,
    last_grant: Option<&str>,
) -> Option<Envelope> {
    let envelope = |body: EventBody, by: &str| Envelope {
        event_id: event_id.to_owned(),
        instance_id: instance.to_owned(),
        recorded_at: at,
        submitted_by: by.to_owned(),
        body,
    };
    Some(match op {
        Op::Propose {
            approvals_required,
            required_signals,
            unless_all_allow,
            max_executions,
        } => {
            let mut proposed: ActionProposed = samples::action_proposed();
            proposed.proposer.principal = PROPOSER.to_owned();
            proposed.requirement.approvals_required = *approvals_required;
            proposed.requirement.approver_roles = vec!["sre".to_owned()];
            proposed.requirement.override_roles = vec!["ic".to_owned()];
            let signals: BTreeSet<&str> = required_signals.iter().map(|i| SOURCES[*i]).collect();
            proposed.requirement.required_signals =
                signals.into_iter().map(str::to_owned).collect();
            proposed.requirement.review = if *unless_all_allow {
                ReviewMode::UnlessAllSignalsAllow
            } else {
                ReviewMode::Always
            };
            proposed.requirement.max_executions = *max_executions;
            proposed.requirement.decision_timeout_ms = 60 * MINUTE;
            proposed.requirement.grant_ttl_ms = 30 * MINUTE;
            envelope(
                EventBody::ActionProposed(Box::new(proposed)),
                PROPOSING_SERVICE,
            )
        }
        Op::Signal { source, verdict } => envelope(
            EventBody::PolicySignalRecorded(PolicySignalRecorded {
                source: SOURCES[*source].to_owned(),
                verdict: [
                    SignalVerdict::Allow,
                    SignalVerdict::Pause,
                    SignalVerdict::Deny,
                ][*verdict as usize],
                reasons: vec![],
                policy_ref: PolicyRef {
                    id: "p".to_owned(),
                    version: "1".to_owned(),
                },
            }),
            "policy",
        ),
        Op::Decision {
            principal,
            roles,
            verdict,
            justified,
            region,
            not_after_minutes,
            max_executions,
        } => {
            let roles: BTreeSet<&str> = roles.iter().map(|i| ROLES[*i]).collect();
            envelope(
                EventBody::DecisionRecorded(DecisionRecorded {
                    reviewer: Reviewer {
                        principal: PRINCIPALS[*principal].to_owned(),
                        roles: roles.into_iter().map(str::to_owned).collect(),
                    },
                    verdict: [
                        DecisionVerdict::Approve,
                        DecisionVerdict::Reject,
                        DecisionVerdict::Override,
                    ][*verdict as usize],
                    justification: if *justified {
                        "because".to_owned()
                    } else {
                        " ".to_owned()
                    },
                    scope: Scope {
                        constraints: region
                            .map(|eu| {
                                BTreeMap::from([(
                                    "region".to_owned(),
                                    if eu { "eu" } else { "us" }.to_owned(),
                                )])
                            })
                            .unwrap_or_default(),
                        not_after: not_after_minutes.map(|m| at + m * MINUTE),
                        max_executions: *max_executions,
                    },
                    evidence_refs: vec![],
                    proof: None,
                }),
                &format!("reviewer:{}", PRINCIPALS[*principal]),
            )
        }
        Op::Claim { right_digest } => envelope(
            EventBody::ExecutionRequested(ExecutionRequested {
                executor: "svc:deployer".to_owned(),
                action_digest: if *right_digest {
                    samples::ACTION_DIGEST.to_owned()
                } else {
                    "ab".repeat(32)
                },
            }),
            "svc:deployer",
        ),
        Op::Report {
            last_grant: use_last,
            failed,
        } => envelope(
            EventBody::ExecutionReported(ExecutionReported {
                grant_id: match (use_last, last_grant) {
                    (true, Some(grant)) => grant.to_owned(),
                    _ => "ffffffff-ffff-4fff-8fff-ffffffffffff".to_owned(),
                },
                outcome: if *failed {
                    ExecutionOutcome::Failed
                } else {
                    ExecutionOutcome::Succeeded
                },
                detail: None,
                result_digest: None,
            }),
            "svc:deployer",
        ),
        Op::Deadline { grant } => envelope(
            EventBody::DeadlineReached(DeadlineReached {
                deadline: if *grant {
                    DeadlineKind::Grant
                } else {
                    DeadlineKind::Decision
                },
            }),
            "warrant:sweeper",
        ),
        Op::Withdraw { by_proposer } => envelope(
            EventBody::ProposalWithdrawn(ProposalWithdrawn { reason: None }),
            if *by_proposer {
                PROPOSING_SERVICE
            } else {
                "reviewer:alice"
            },
        ),
        Op::Garbage(_) => return None,
        Op::Misaddressed => {
            let mut e = envelope(
                EventBody::ProposalWithdrawn(ProposalWithdrawn { reason: None }),
                PROPOSING_SERVICE,
            );
            e.instance_id = OTHER_INSTANCE.to_owned();
            e
        }
    })
}

fn events(m: &Materialized) -> impl Iterator<Item = LogEvent<'_>> {
    m.records.iter().map(|(position, bytes, decoded)| LogEvent {
        position: *position,
        bytes,
        decoded: decoded.clone(),
    })
}

/// Checks docs/contract.md §1's safety claims from the events themselves, not from the
/// fold's state: who authorized, and what a grant was issued for.
fn assert_safe(m: &Materialized, history: &[HistoryEntry]) {
    let mut proposal: Option<ActionProposed> = None;
    let mut proposal_by: Option<String> = None;
    let mut latest_signals: BTreeMap<String, SignalVerdict> = BTreeMap::new();
    let mut approvers: BTreeSet<String> = BTreeSet::new();
    let mut grants = 0u32;
    for ((_, _, decoded), entry) in m.records.iter().zip(history) {
        let applied = matches!(entry.outcome, Outcome::Applied { .. });
        let Ok(envelope) = decoded else { continue };
        if let (EventBody::ActionProposed(p), true) = (&envelope.body, applied) {
            if proposal.is_none() {
                proposal = Some((**p).clone());
                proposal_by = Some(envelope.submitted_by.clone());
            }
        }
        let Some(p) = &proposal else {
            assert!(
                !applied || matches!(envelope.body, EventBody::ActionProposed(_)),
                "applied before a proposal"
            );
            continue;
        };
        let requirement = &p.requirement;
        let is_proposer =
            |who: &str| who == p.proposer.principal || Some(who) == proposal_by.as_deref();
        if applied {
            match &envelope.body {
                EventBody::PolicySignalRecorded(s) => {
                    latest_signals.insert(s.source.clone(), s.verdict);
                }
                EventBody::DecisionRecorded(d) if d.verdict == DecisionVerdict::Approve => {
                    let permitted = d
                        .reviewer
                        .roles
                        .iter()
                        .any(|r| requirement.approver_roles.contains(r));
                    assert!(
                        permitted && !is_proposer(&d.reviewer.principal),
                        "counted a forbidden approval: {d:?}"
                    );
                    approvers.insert(d.reviewer.principal.clone());
                }
                _ => {}
            }
        }
        if let Outcome::Applied {
            from,
            to: StatusName::Authorized,
            ..
        } = &entry.outcome
        {
            let from_paused = from.is_some_and(StatusName::is_paused);
            if from_paused {
                let authority = history_authority(&entry.outcome);
                match &envelope.body {
                    EventBody::DecisionRecorded(d) if d.verdict == DecisionVerdict::Approve => {
                        assert!(
                            approvers.len() >= requirement.approvals_required as usize,
                            "quorum not reached"
                        );
                        assert!(matches!(authority, Some(Authority::Quorum { .. })));
                    }
                    EventBody::DecisionRecorded(d) if d.verdict == DecisionVerdict::Override => {
                        assert!(d
                            .reviewer
                            .roles
                            .iter()
                            .any(|r| requirement.override_roles.contains(r)));
                        assert!(
                            !d.justification.trim().is_empty(),
                            "override without justification"
                        );
                        assert!(!is_proposer(&d.reviewer.principal), "self-override");
                    }
                    EventBody::PolicySignalRecorded(_) => {
                        assert_eq!(requirement.review, ReviewMode::UnlessAllSignalsAllow);
                        assert!(!requirement.required_signals.is_empty());
                        for source in &requirement.required_signals {
                            assert_eq!(latest_signals.get(source), Some(&SignalVerdict::Allow));
                        }
                        assert!(latest_signals.values().all(|v| *v == SignalVerdict::Allow));
                    }
                    other => panic!("{} authorized a paused instance", other.kind()),
                }
            }
        }
        if let Some(grant) = entry.outcome.grant() {
            let Outcome::Applied { from, .. } = &entry.outcome else {
                unreachable!()
            };
            assert!(
                matches!(from, Some(StatusName::Authorized | StatusName::Executing)),
                "grant issued from {from:?}"
            );
            let EventBody::ExecutionRequested(request) = &envelope.body else {
                panic!("grant without a claim")
            };
            assert_eq!(
                request.action_digest, p.action_digest,
                "grant for another digest"
            );
            assert!(
                envelope.recorded_at <= grant.not_after,
                "grant after expiry"
            );
            grants += 1;
            assert!(
                grants <= grant.scope.max_executions,
                "more grants than executions allowed"
            );
            assert!(grants <= requirement.max_executions as u32);
        }
    }
}

fn history_authority(outcome: &Outcome) -> Option<Authority> {
    match outcome {
        Outcome::Applied {
            effect: Some(warrant_authority::Effect::Authorized(a)),
            ..
        } => Some(a.authority.clone()),
        _ => None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn total_one_entry_per_event_in_order(ops in history()) {
        let m = materialize(&ops);
        let (state, history) = fold(INSTANCE, events(&m));
        prop_assert_eq!(history.len(), m.records.len());
        for (index, entry) in history.iter().enumerate() {
            prop_assert_eq!(entry.seq, index as u64 + 1);
            prop_assert_eq!(entry.position.offset, index as i64);
        }
        prop_assert_eq!(state.entries, history.len() as u64);
        prop_assert_eq!(Some(state.head), history.last().map(|e| e.hash).or(Some(state.head)));
    }

    #[test]
    fn deterministic(ops in history()) {
        let m = materialize(&ops);
        let first = fold(INSTANCE, events(&m));
        let second = fold(INSTANCE, events(&m));
        prop_assert_eq!(first, second);
    }

    #[test]
    fn resuming_from_a_serialized_prefix_equals_folding_everything(ops in history(), cut in any::<prop::sample::Index>()) {
        let m = materialize(&ops);
        let (all_state, all_history) = fold(INSTANCE, events(&m));
        let cut = cut.index(m.records.len() + 1);
        let (prefix_state, mut history) = fold(INSTANCE, events(&m).take(cut));
        let stored = serde_json::to_vec(&prefix_state).expect("state serializes");
        let mut state: InstanceState = serde_json::from_slice(&stored).expect("state deserializes");
        for event in events(&m).skip(cut) {
            history.push(step(&mut state, event));
        }
        prop_assert_eq!(state, all_state);
        prop_assert_eq!(history, all_history);
    }

}

proptest! {
    // Grants are the rarest outcome (roughly one history in fifteen), so
    // safety gets more cases than the others.
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn safe(ops in history()) {
        let m = materialize(&ops);
        let (_, history) = fold(INSTANCE, events(&m));
        assert_safe(&m, &history);
    }
}

/// A key that names no instance: its record goes to its partition's quarantine.
fn junk_key() -> impl Strategy<Value = Option<Vec<u8>>> {
    prop_oneof![
        Just(None),
        Just(Some(INSTANCE.to_uppercase().into_bytes())),
        Just(Some(INSTANCE.replace('-', "").into_bytes())),
        // Spells another partition's quarantine; still a key of this one.
        Just(Some(b"quarantine-1".to_vec())),
        Just(Some(b"quarantine-0".to_vec())),
        proptest::collection::vec(any::<u8>(), 0..12).prop_map(Some),
    ]
}

/// One log record: position, key, value.
type Record = (LogPosition, Option<Vec<u8>>, Vec<u8>);

/// One partition's records: `instance`'s history (keyed by its id) with at
/// least one record under a key that is not an instance id slipped in
/// anywhere; its value is garbage or a copy of one of the instance's events.
fn partition_log(partition: i32, instance: &'static str) -> impl Strategy<Value = Vec<Record>> {
    let junk = (
        any::<prop::sample::Index>(),
        junk_key(),
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..24).prop_map(Err),
            any::<prop::sample::Index>().prop_map(Ok),
        ],
    );
    (history(), proptest::collection::vec(junk, 1..6)).prop_map(move |(ops, junk)| {
        let m = materialize_for(instance, &ops);
        let mut records: Vec<(Option<Vec<u8>>, Vec<u8>)> = m
            .records
            .iter()
            .map(|(_, bytes, _)| (Some(instance.as_bytes().to_vec()), bytes.clone()))
            .collect();
        for (at, key, value) in junk {
            let value = match value {
                Err(garbage) => garbage,
                Ok(copy) => m.records[copy.index(m.records.len())].1.clone(),
            };
            records.insert(at.index(records.len() + 1), (key, value));
        }
        records
            .into_iter()
            .enumerate()
            .map(|(offset, (key, value))| {
                let position = LogPosition {
                    partition,
                    offset: offset as i64,
                };
                (position, key, value)
            })
            .collect()
    })
}

/// Partitions 0 and 1 merged, each in its own order, taking from partition
/// 0 where `picks` says `true` (and from whichever is left once one runs out).
fn interleave<'a>(first: &'a [Record], second: &'a [Record], picks: &[bool]) -> Vec<&'a Record> {
    let (mut a, mut b) = (first.iter().peekable(), second.iter().peekable());
    let mut picks = picks.iter().copied();
    let mut merged = Vec::with_capacity(first.len() + second.len());
    loop {
        let from_first = match (a.peek(), b.peek()) {
            (None, None) => return merged,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(_), Some(_)) => picks.next().unwrap_or(true),
        };
        merged.extend(if from_first { a.next() } else { b.next() });
    }
}

fn ledger_of<'a>(records: impl IntoIterator<Item = &'a Record>) -> Ledger {
    let mut ledger = Ledger::new();
    for (position, key, value) in records {
        ledger.apply(*position, key.as_deref(), value);
    }
    ledger
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// docs/contract.md §1.3: a fold reads no other partition. Records under keys that
    /// are not instance ids, in two partitions, give the same records and
    /// the same checkpoint digest however the partitions interleave (as the
    /// projector and replay may read them differently).
    #[test]
    fn quarantine_does_not_depend_on_how_partitions_interleave(
        zero in partition_log(0, INSTANCE),
        one in partition_log(1, SECOND_INSTANCE),
        picks in proptest::collection::vec(any::<bool>(), 0..100),
    ) {
        let in_turn = ledger_of(zero.iter().chain(&one));
        let reversed = ledger_of(one.iter().chain(&zero));
        let interleaved = ledger_of(interleave(&zero, &one, &picks));
        for other in [&reversed, &interleaved] {
            prop_assert_eq!(
                other.instances().collect::<Vec<_>>(),
                in_turn.instances().collect::<Vec<_>>()
            );
            for (id, folded) in in_turn.instances() {
                prop_assert_eq!(other.get(id).map(|f| f.record()), Some(folded.record()));
            }
            prop_assert_eq!(other.checkpoint_digest(), in_turn.checkpoint_digest());
        }
        // Each partition's stray records, all of them and in log order, are
        // in that partition's quarantine and nowhere else.
        for (partition, log, instance) in [(0, &zero, INSTANCE), (1, &one, SECOND_INSTANCE)] {
            let stray: Vec<LogPosition> = log
                .iter()
                .filter(|(_, key, _)| key.as_deref() != Some(instance.as_bytes()))
                .map(|(position, _, _)| *position)
                .collect();
            let quarantine = in_turn
                .get(&quarantine_instance(partition))
                .expect("a quarantine per partition with stray records");
            let positions: Vec<LogPosition> =
                quarantine.history.iter().map(|e| e.position).collect();
            prop_assert_eq!(positions, stray);
        }
        prop_assert_eq!(in_turn.len(), 4);
    }
}

#[test]
fn the_generator_reaches_every_status() {
    // Without this, the properties above could pass by never leaving AWAITING_SIGNALS.
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut seen: BTreeSet<StatusName> = BTreeSet::new();
    let mut grants = 0;
    for _ in 0..3000 {
        let ops = history()
            .new_tree(&mut runner)
            .expect("generates")
            .current();
        let m = materialize(&ops);
        let (_, history) = fold(INSTANCE, events(&m));
        for entry in &history {
            if let Outcome::Applied { to, .. } = &entry.outcome {
                seen.insert(*to);
            }
            grants += usize::from(entry.outcome.grant().is_some());
        }
    }
    assert_eq!(
        seen.len(),
        StatusName::ALL.len(),
        "statuses reached: {seen:?}"
    );
    assert!(grants > 150, "only {grants} grants issued");
}
