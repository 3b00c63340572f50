//! Test support for the end-to-end tests and the benchmarks: the local
//! broker, throwaway topics, and scripted histories.
//!
//! [`scripted_history`] writes instances that end in every status, with
//! duplicates, garbage and non-UUID keys mixed in, and says what each
//! instance must end as. [`bulk_history`] is the realistic mix at volume.
//! Nothing here is used by a service.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use warrant_authority::{action_digest, grant_id, StatusName};
use warrant_kafka::KafkaArgs;
use warrant_schema::{
    samples, DeadlineKind, DeadlineReached, DecisionRecorded, DecisionVerdict, Envelope, EventBody,
    ExecutionOutcome, ExecutionReported, ExecutionRequested, PolicyRef, PolicySignalRecorded,
    ProposalWithdrawn, ReviewMode, Reviewer, Scope, SignalVerdict,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("deploy/kafka.sh start failed: {0}")]
    Broker(String),
    #[error(transparent)]
    Kafka(#[from] warrant_kafka::Error),
    #[error("cannot produce to {topic}")]
    Produce {
        topic: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
}

/// The repository root (where `deploy/` is).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Start the local broker if it is not running (idempotent), and return its
/// address. `WARRANT_TEST_BROKERS` points the tests at another broker;
/// `deploy/kafka.sh` honours `WARRANT_KAFKA_PORT` and so does this.
pub fn ensure_broker() -> Result<String, Error> {
    if let Ok(brokers) = std::env::var("WARRANT_TEST_BROKERS") {
        return Ok(brokers);
    }
    let output = Command::new("bash")
        .arg(repo_root().join("deploy/kafka.sh"))
        .arg("start")
        .output()
        .map_err(|e| Error::Broker(e.to_string()))?;
    if !output.status.success() {
        return Err(Error::Broker(format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    let port = std::env::var("WARRANT_KAFKA_PORT").unwrap_or_else(|_| "9092".to_owned());
    Ok(format!("127.0.0.1:{port}"))
}

/// A running broker and fresh, randomly named topics on it.
pub async fn fresh_topics(log_partitions: i32) -> Result<KafkaArgs, Error> {
    let brokers = ensure_broker()?;
    let args = KafkaArgs::unique_for_tests(&brokers);
    args.create_topics(log_partitions).await?;
    Ok(args)
}

/// One record for the log: key and value exactly as produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
}

impl LogRecord {
    fn event(envelope: &Envelope) -> LogRecord {
        LogRecord {
            key: Some(envelope.instance_id.clone().into_bytes()),
            // Test envelopes are built from valid samples; encoding cannot fail.
            value: warrant_schema::encode(envelope).unwrap_or_default(),
        }
    }
}

/// What a scripted history must fold to.
#[derive(Debug, Clone, Default)]
pub struct Script {
    pub records: Vec<LogRecord>,
    /// Final status per instance id (`None`: never proposed).
    pub expected: BTreeMap<String, Option<StatusName>>,
    /// Expected number of history entries per instance id.
    pub entries: BTreeMap<String, u64>,
    /// How many of `records` have a key that is not an instance id. They
    /// are in no `expected` instance: each lands in the quarantine of the
    /// partition the producer puts it in (`quarantine-<partition>`).
    pub stray: u64,
}

const T0: i64 = 1_800_000_000_000;
const MINUTE: i64 = 60_000;

/// Builds one instance's events with consecutive ids and times.
struct InstanceScript {
    instance_id: String,
    events: Vec<Envelope>,
    clock: i64,
    last_claim: Option<String>,
}

impl InstanceScript {
    fn new(index: usize) -> Self {
        InstanceScript {
            instance_id: uuid_for(index as u64, 0),
            events: Vec::new(),
            clock: T0 + index as i64,
            last_claim: None,
        }
    }

    fn push(&mut self, by: &str, minutes_later: i64, body: EventBody) -> &mut Self {
        self.clock += minutes_later * MINUTE;
        let event_id = uuid_for(self.events.len() as u64 + 1, 1 + fnv(&self.instance_id));
        if matches!(body, EventBody::ExecutionRequested(_)) {
            self.last_claim = Some(event_id.clone());
        }
        self.events.push(Envelope {
            event_id,
            instance_id: self.instance_id.clone(),
            recorded_at: self.clock,
            submitted_by: by.to_owned(),
            body,
        });
        self
    }

    fn propose(&mut self, signals: &[&str], review: ReviewMode) -> &mut Self {
        let mut proposed = samples::action_proposed();
        proposed
            .action
            .parameters
            .insert("instance".to_owned(), self.instance_id.clone());
        proposed.action_digest = action_digest(&proposed.action);
        proposed.requirement.approvals_required = 2;
        proposed.requirement.approver_roles = vec!["sre".to_owned()];
        proposed.requirement.override_roles = vec!["ic".to_owned()];
        proposed.requirement.required_signals = signals.iter().map(|s| (*s).to_owned()).collect();
        proposed.requirement.review = review;
        proposed.requirement.decision_timeout_ms = 60 * MINUTE;
        proposed.requirement.grant_ttl_ms = 15 * MINUTE;
        proposed.requirement.max_executions = 1;
        self.push(
            "svc:remediator",
            0,
            EventBody::ActionProposed(Box::new(proposed)),
        )
    }

    fn signal(&mut self, source: &str, verdict: SignalVerdict) -> &mut Self {
        self.push(
            &format!("policy:{source}"),
            1,
            EventBody::PolicySignalRecorded(PolicySignalRecorded {
                source: source.to_owned(),
                verdict,
                reasons: vec![format!("{source} says {verdict:?}")],
                policy_ref: PolicyRef {
                    id: format!("{source}.policy"),
                    version: "1".to_owned(),
                },
            }),
        )
    }

    /// A policy source reporting again, at once: while authorized the fold
    /// records it (`SignalAfterDecision`) and only replaces the standing
    /// verdict, so the state does not grow.
    fn signal_again(&mut self, source: &str) -> &mut Self {
        self.signal(source, SignalVerdict::Allow);
        self.clock -= MINUTE;
        if let Some(event) = self.events.last_mut() {
            event.recorded_at = self.clock;
        }
        self
    }

    fn decide(&mut self, principal: &str, roles: &[&str], verdict: DecisionVerdict) -> &mut Self {
        self.push(
            &format!("reviewer:{principal}"),
            1,
            EventBody::DecisionRecorded(DecisionRecorded {
                reviewer: Reviewer {
                    principal: principal.to_owned(),
                    roles: roles.iter().map(|r| (*r).to_owned()).collect(),
                },
                verdict,
                justification: format!("{principal} decided"),
                scope: Scope::default(),
                evidence_refs: vec![],
                proof: None,
            }),
        )
    }

    fn approve(&mut self, principal: &str) -> &mut Self {
        self.decide(principal, &["sre"], DecisionVerdict::Approve)
    }

    fn claim(&mut self) -> &mut Self {
        let digest = self.proposed_digest();
        self.push(
            "svc:deployer",
            1,
            EventBody::ExecutionRequested(ExecutionRequested {
                executor: "svc:deployer".to_owned(),
                action_digest: digest,
            }),
        )
    }

    fn report(&mut self, outcome: ExecutionOutcome) -> &mut Self {
        let grant = self
            .last_claim
            .as_deref()
            .map(|event_id| grant_id(&self.instance_id, event_id))
            .unwrap_or_default();
        self.push(
            "svc:deployer",
            1,
            EventBody::ExecutionReported(ExecutionReported {
                grant_id: grant,
                outcome,
                detail: None,
                result_digest: None,
            }),
        )
    }

    fn deadline(&mut self, kind: DeadlineKind, minutes_later: i64) -> &mut Self {
        self.push(
            "warrant:sweeper",
            minutes_later,
            EventBody::DeadlineReached(DeadlineReached { deadline: kind }),
        )
    }

    fn proposed_digest(&self) -> String {
        self.events
            .iter()
            .find_map(|e| match &e.body {
                EventBody::ActionProposed(p) => Some(p.action_digest.clone()),
                _ => None,
            })
            .unwrap_or_default()
    }
}

/// Deterministic UUID-shaped ids, so scripts are identical run to run.
pub fn uuid_for(n: u64, salt: u64) -> String {
    let value = (u128::from(salt) << 64) | u128::from(n);
    let hex = format!("{value:032x}");
    format!(
        "{}-{}-4{}-8{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        &hex[17..20],
        &hex[20..32]
    )
}

fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3)
    })
}

/// `instances` instances cycling through every final and paused status,
/// plus: each 7th instance has one event re-delivered (a `Duplicate`), each
/// 11th a garbage value under its key (a `Malformed`), each 13th a report
/// for a grant that never existed (a violation); and two records whose keys
/// are not UUIDs (quarantined), which Kafka's default partitioner puts in
/// partitions 1 and 2 of a three-partition log.
pub fn scripted_history(instances: usize) -> Script {
    let mut script = Script::default();
    for index in 0..instances {
        let mut s = InstanceScript::new(index);
        let status = match index % 10 {
            0 => {
                s.propose(&["opa"], ReviewMode::Always)
                    .signal("opa", SignalVerdict::Allow);
                s.approve("alice")
                    .approve("bob")
                    .claim()
                    .report(ExecutionOutcome::Succeeded);
                StatusName::Completed
            }
            1 => {
                s.propose(&[], ReviewMode::Always)
                    .approve("alice")
                    .approve("bob")
                    .claim();
                s.report(ExecutionOutcome::Failed);
                StatusName::Failed
            }
            2 => {
                s.propose(&["opa"], ReviewMode::Always)
                    .signal("opa", SignalVerdict::Pause);
                s.decide("alice", &["sre"], DecisionVerdict::Reject);
                StatusName::Rejected
            }
            3 => {
                s.propose(&["opa"], ReviewMode::Always)
                    .deadline(DeadlineKind::Decision, 61);
                StatusName::Expired
            }
            4 => {
                s.propose(&[], ReviewMode::Always);
                s.push(
                    "svc:remediator",
                    1,
                    EventBody::ProposalWithdrawn(ProposalWithdrawn { reason: None }),
                );
                StatusName::Withdrawn
            }
            5 => {
                s.propose(&["opa"], ReviewMode::Always)
                    .signal("opa", SignalVerdict::Deny);
                // Refused: a DENY stands.
                s.approve("alice");
                StatusName::Blocked
            }
            6 => {
                s.propose(&["opa", "calendar"], ReviewMode::Always)
                    .signal("opa", SignalVerdict::Allow);
                StatusName::AwaitingSignals
            }
            7 => {
                // An approval by the proposer is refused; one real approval counted.
                s.propose(&[], ReviewMode::Always)
                    .approve("svc:remediator")
                    .approve("alice");
                StatusName::AwaitingDecision
            }
            8 => {
                s.propose(&["opa"], ReviewMode::UnlessAllSignalsAllow)
                    .signal("opa", SignalVerdict::Allow);
                StatusName::Authorized
            }
            _ => {
                s.propose(&["opa"], ReviewMode::Always)
                    .signal("opa", SignalVerdict::Deny);
                s.decide("carol", &["ic"], DecisionVerdict::Override)
                    .claim();
                StatusName::Executing
            }
        };
        if index % 13 == 12 {
            s.report(ExecutionOutcome::Succeeded);
            if let Some(EventBody::ExecutionReported(r)) = s.events.last_mut().map(|e| &mut e.body)
            {
                r.grant_id = uuid_for(index as u64, 0xdead);
            }
        }
        let mut records: Vec<LogRecord> = s.events.iter().map(LogRecord::event).collect();
        if index % 7 == 6 {
            let again = records[records.len() / 2].clone();
            records.push(again);
        }
        if index % 11 == 10 {
            records.push(LogRecord {
                key: Some(s.instance_id.clone().into_bytes()),
                value: b"\xc3\x01not an envelope at all".to_vec(),
            });
        }
        script
            .entries
            .insert(s.instance_id.clone(), records.len() as u64);
        script.expected.insert(s.instance_id.clone(), Some(status));
        script.records.extend(records);
    }
    // murmur2 mod 3: "not-a-uuid" -> 1, "not-a-uuid-either" -> 2.
    for key in ["not-a-uuid", "not-a-uuid-either"] {
        script.records.push(LogRecord {
            key: Some(key.as_bytes().to_vec()),
            value: b"whatever".to_vec(),
        });
        script.stray += 1;
    }
    script
}

/// Events of one instance in [`bulk_history`].
pub const BULK_PER_INSTANCE: usize = 7;

/// The realistic mix at volume: instances of seven events each (proposal,
/// two signals, two approvals, a claim, its report), `events` in all,
/// interleaved across instances as a busy log would be.
pub fn bulk_history(events: usize) -> impl Iterator<Item = LogRecord> {
    bulk_history_over(events, events.div_ceil(BULK_PER_INSTANCE))
}

/// [`bulk_history`] with `events` spread over `instances` instances (fewer
/// when that leaves under seven events each): past the seven, each
/// instance's policy sources report again while it is authorized, before
/// the claim. The fold records those without growing the state, so a
/// longer log over the same instances folds to states of the same size:
/// what the replay memory benchmark compares (scripts/bench-replay-mem.sh).
pub fn bulk_history_over(events: usize, instances: usize) -> impl Iterator<Item = LogRecord> {
    const INTERLEAVE: usize = 64;
    let per = events.div_ceil(instances.max(1)).max(BULK_PER_INSTANCE);
    let instances = events.div_ceil(per);
    (0..instances.div_ceil(INTERLEAVE))
        .flat_map(move |block| {
            let scripts: Vec<InstanceScript> = (block * INTERLEAVE
                ..((block + 1) * INTERLEAVE).min(instances))
                .map(|index| {
                    let mut s = InstanceScript::new(1_000_000 + index);
                    s.propose(&["opa", "calendar"], ReviewMode::Always)
                        .signal("opa", SignalVerdict::Allow)
                        .signal("calendar", SignalVerdict::Allow)
                        .approve("alice")
                        .approve("bob");
                    for again in 0..per - BULK_PER_INSTANCE {
                        s.signal_again(if again % 2 == 0 { "opa" } else { "calendar" });
                    }
                    s.claim().report(ExecutionOutcome::Succeeded);
                    s
                })
                .collect();
            (0..per)
                .flat_map(move |step| {
                    scripts
                        .iter()
                        .map(|s| LogRecord::event(&s.events[step]))
                        .collect::<Vec<_>>()
                })
                .collect::<Vec<_>>()
        })
        .take(events)
}

/// Produce records to the log topic in order, waiting for every ack.
/// Returns the (partition, offset) of each record.
pub async fn produce(
    args: &KafkaArgs,
    records: impl IntoIterator<Item = LogRecord>,
) -> Result<Vec<(i32, i64)>, Error> {
    let producer: FutureProducer = args.producer()?;
    let topic = args.log_topic.as_str();
    let mut positions = Vec::new();
    let mut in_flight: Vec<DeliveryFuture> = Vec::new();
    for record in records {
        let mut future_record = FutureRecord::to(topic).payload(&record.value);
        if let Some(key) = &record.key {
            future_record = future_record.key(key);
        }
        // Enqueue now (librdkafka batches); only wait when its queue is full.
        loop {
            match producer.send_result(future_record) {
                Ok(delivery) => {
                    in_flight.push(delivery);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    future_record = returned;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((source, _)) => {
                    return Err(Error::Produce {
                        topic: topic.to_owned(),
                        source,
                    })
                }
            }
        }
        if in_flight.len() >= 50_000 {
            drain(&mut in_flight, &mut positions, topic).await?;
        }
    }
    drain(&mut in_flight, &mut positions, topic).await?;
    Ok(positions)
}

async fn drain(
    in_flight: &mut Vec<DeliveryFuture>,
    positions: &mut Vec<(i32, i64)>,
    topic: &str,
) -> Result<(), Error> {
    for delivery in in_flight.drain(..) {
        let failed = |source| Error::Produce {
            topic: topic.to_owned(),
            source,
        };
        match delivery.await {
            Ok(Ok(delivered)) => positions.push((delivered.partition, delivered.offset)),
            Ok(Err((source, _))) => return Err(failed(source)),
            Err(_cancelled) => return Err(failed(KafkaError::Canceled)),
        }
    }
    Ok(())
}

/// Run a command a test depends on; fail the test, with its output, if it
/// does not succeed.
pub fn run_ok(command: &mut Command) -> std::process::Output {
    // Test support only: a command that cannot start fails the test that
    // needed it, which is what a panic here does.
    let output = command.output().expect("the command starts");
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The Python of `.cache/venv` with tests/python/requirements.txt installed
/// (created here if `scripts/test.sh` has not yet; pip is quiet and quick
/// when everything is already installed).
pub fn venv_python() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let venv = root.join(".cache/venv");
    let python = venv.join("bin/python");
    if !python.exists() {
        run_ok(Command::new("python3").arg("-m").arg("venv").arg(&venv));
    }
    run_ok(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
            .arg(root.join("tests/python/requirements.txt")),
    );
    python
}

#[cfg(test)]
mod tests {
    use warrant_authority::Ledger;

    use super::*;

    #[test]
    fn the_script_folds_to_what_it_promises() {
        let script = scripted_history(40);
        let mut ledger = Ledger::new();
        for (offset, record) in script.records.iter().enumerate() {
            let position = warrant_authority::LogPosition {
                partition: 0,
                offset: offset as i64,
            };
            ledger.apply(position, record.key.as_deref(), &record.value);
        }
        // One partition here: the stray records share its quarantine.
        assert_eq!(ledger.len(), script.expected.len() + 1);
        let quarantine = ledger
            .get(&warrant_authority::quarantine_instance(0))
            .expect("quarantine folded");
        assert_eq!(quarantine.state.entries, script.stray);
        assert_eq!(quarantine.state.status(), None);
        for (instance_id, expected) in &script.expected {
            let folded = ledger.get(instance_id).expect("instance folded");
            assert_eq!(folded.state.status(), *expected, "{instance_id}");
            assert_eq!(
                folded.state.entries, script.entries[instance_id],
                "{instance_id}"
            );
        }
        let refusals: Vec<_> = ledger
            .instances()
            .flat_map(|(_, f)| f.history.iter().filter_map(|e| e.outcome.refusal()))
            .collect();
        for code in [
            warrant_authority::RefusalCode::Duplicate,
            warrant_authority::RefusalCode::Malformed,
            warrant_authority::RefusalCode::SelfApproval,
            warrant_authority::RefusalCode::Blocked,
        ] {
            assert!(refusals.contains(&code), "no {code} in the script");
        }
        let statuses: std::collections::BTreeSet<_> = script.expected.values().flatten().collect();
        assert_eq!(
            statuses.len(),
            StatusName::ALL.len(),
            "every status is scripted"
        );
    }

    #[test]
    fn the_bulk_mix_completes_every_instance() {
        let records: Vec<LogRecord> = bulk_history(7 * 100).collect();
        assert_eq!(records.len(), 700);
        let mut ledger = Ledger::new();
        for (offset, record) in records.iter().enumerate() {
            let position = warrant_authority::LogPosition {
                partition: 0,
                offset: offset as i64,
            };
            let entry = ledger.apply(position, record.key.as_deref(), &record.value);
            assert!(entry.outcome.refusal().is_none(), "{:?}", entry.outcome);
        }
        assert_eq!(ledger.len(), 100);
        assert!(ledger
            .instances()
            .all(|(_, f)| f.state.status() == Some(StatusName::Completed)));
    }

    #[test]
    fn more_events_over_the_same_instances_fold_to_states_of_the_same_shape() {
        let fold = |events, instances| {
            let mut ledger = Ledger::new();
            for (offset, record) in bulk_history_over(events, instances).enumerate() {
                let position = warrant_authority::LogPosition {
                    partition: 0,
                    offset: offset as i64,
                };
                let entry = ledger.apply(position, record.key.as_deref(), &record.value);
                assert!(entry.outcome.refusal().is_none(), "{:?}", entry.outcome);
            }
            ledger
        };
        let short = fold(7 * 30, 30);
        let long = fold(70 * 30, 30);
        assert_eq!((short.len(), long.len()), (30, 30));
        for ((id, a), (other, b)) in short.instances().zip(long.instances()) {
            assert_eq!(id, other);
            assert_eq!((a.state.entries, b.state.entries), (7, 70));
            assert_eq!(b.state.status(), Some(StatusName::Completed));
            let (Some(a), Some(b)) = (a.state.instance(), b.state.instance()) else {
                panic!("{id} not proposed");
            };
            assert_eq!(
                (a.signals.len(), a.approvals.len(), a.grants.len()),
                (b.signals.len(), b.approvals.len(), b.grants.len())
            );
        }
        // Fewer events than seven an instance: fewer instances.
        assert_eq!(fold(20, 10).len(), 3);
    }
}
