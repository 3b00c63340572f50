//! Crash safety of the ingress path, with the real binary and the real
//! broker: 10 000 ingress proposals; SIGKILL mid-way; a restart that aborts
//! right after appends it has not committed yet (`--crash-after-appends`,
//! so a re-delivery is certain, whatever the SIGKILL hit); a last restart
//! that finishes and stops on SIGTERM. Every ingress record must be on the
//! log (found by its derived event id), and every extra copy a re-delivery
//! produced must fold as a `Duplicate`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{count, eventually, example, produce, read_all};
use rdkafka::message::Message;
use warrant_authority::{Ledger, LogPosition, RefusalCode};
use warrant_intake::ids;
use warrant_kafka::KafkaArgs;
use warrant_schema::{samples, Envelope};

const RECORDS: usize = 10_000;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn spawn_intake(
    topics: &KafkaArgs,
    group: &str,
    port: u16,
    log_file: &std::path::Path,
    extra: &[&str],
) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_file)
        .expect("log file");
    Command::new(env!("CARGO_BIN_EXE_warrant-intake"))
        .args(["--brokers", &topics.brokers])
        .args(["--log-topic", &topics.log_topic])
        .args(["--proposals-topic", &topics.proposals_topic])
        .args(["--signals-topic", &topics.signals_topic])
        .args(["--dead-letter-topic", &topics.dead_letter_topic])
        .args(["--rulesets-topic", &topics.rulesets_topic])
        .args(["--principals-topic", &topics.principals_topic])
        .arg("--ruleset")
        .arg(example("ruleset.yaml"))
        .arg("--principals")
        .arg(example("principals.yaml"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--ingress-group", group])
        .args(["--ingress-instance-id", "crash-test"])
        .args(["--ingress-batch", "100"])
        .arg("--ingress")
        .arg("--sweeper=false")
        .args(extra)
        .env(
            "RUST_LOG",
            std::env::var("INTAKE_TEST_LOG").unwrap_or_else(|_| "warn".to_owned()),
        )
        .env_remove("WARRANT_INGRESS")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start warrant-intake")
}

async fn healthy(port: u16) -> bool {
    let client = reqwest::Client::new();
    for _ in 0..200 {
        if let Ok(response) = client
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await
        {
            if response.status().is_success() {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_intake_loses_nothing_and_duplicates_fold_as_duplicates() {
    let topics = warrant_testkit::fresh_topics(3)
        .await
        .expect("broker and topics");
    let group = format!("{}-crash", topics.log_topic);
    let dir = tempfile::tempdir().expect("tempdir");
    let log_file = dir.path().join("intake.log");

    // Every third proposal names no instance: its id is derived from its position.
    let records: Vec<(Option<Vec<u8>>, Vec<u8>)> = (0..RECORDS)
        .map(|n| {
            let mut proposal = samples::proposal_submitted();
            // Chosen ids are random-format (v4) UUIDs: intake refuses to
            // let anyone choose a v5 one, which it derives itself.
            proposal.instance_id =
                (n % 3 != 0).then(|| format!("00000000-0000-4000-8000-{n:012x}"));
            proposal
                .action
                .parameters
                .insert("n".to_owned(), n.to_string());
            (None, warrant_schema::encode(&proposal).expect("encode"))
        })
        .collect();
    let positions = produce(&topics, &topics.proposals_topic, &records).await;
    let expected: BTreeMap<String, (i32, i64)> = positions
        .iter()
        .map(|&(p, o)| (ids::ingress_event_id(&topics.proposals_topic, p, o), (p, o)))
        .collect();
    assert_eq!(expected.len(), RECORDS);
    let without_id: BTreeSet<(i32, i64)> = positions.iter().copied().step_by(3).collect();

    // First run: SIGKILL once a good part is on the log.
    let port = free_port();
    let mut first = spawn_intake(&topics, &group, port, &log_file, &[]);
    assert!(
        healthy(port).await,
        "intake did not come up: {}",
        std::fs::read_to_string(&log_file).unwrap_or_default()
    );
    let started = eventually(Duration::from_secs(120), || {
        count(&topics, &topics.log_topic) >= 2_000
    })
    .await;
    first.kill().expect("SIGKILL");
    first.wait().expect("reaped");
    let at_kill = count(&topics, &topics.log_topic);
    assert!(
        started,
        "intake appended too little before the kill ({at_kill})"
    );
    eprintln!("killed after {at_kill} appends");

    // Second run: resumes from the committed offsets, then aborts right
    // after appends whose offsets it has not committed (mid-batch).
    const CRASH_AFTER: usize = 1_234;
    let port = free_port();
    let mut crashing = spawn_intake(
        &topics,
        &group,
        port,
        &log_file,
        &["--crash-after-appends", &CRASH_AFTER.to_string()],
    );
    let status = crashing.wait().expect("reaped");
    assert!(
        !status.success(),
        "the crashing run exited cleanly ({status})"
    );
    let at_crash = count(&topics, &topics.log_topic);
    assert!(
        at_crash >= at_kill + CRASH_AFTER as i64,
        "the crashing run appended {} records",
        at_crash - at_kill
    );
    eprintln!("aborted after {at_crash} appends");

    // Third run: it catches up and stops gracefully.
    let port = free_port();
    let mut second = spawn_intake(&topics, &group, port, &log_file, &[]);
    assert!(healthy(port).await, "intake did not restart");
    let caught_up = eventually(Duration::from_secs(180), || {
        count(&topics, &topics.log_topic) >= RECORDS as i64
    })
    .await;
    // SIGTERM: a graceful stop that commits and flushes.
    let terminated = Command::new("kill")
        .args(["-TERM", &second.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(terminated.success());
    let status = second.wait().expect("reaped");
    let intake_log = std::fs::read_to_string(&log_file).unwrap_or_default();
    assert!(
        caught_up,
        "the restarted intake did not catch up:\n{intake_log}"
    );
    assert!(
        status.success(),
        "graceful stop failed ({status}):\n{intake_log}"
    );

    // Every ingress record is on the log; extra copies are re-deliveries.
    let log = read_all(&topics, &topics.log_topic);
    let mut copies: BTreeMap<String, usize> = BTreeMap::new();
    let mut ledger = Ledger::new();
    for message in &log {
        let bytes = message.payload().expect("value");
        let envelope: Envelope = warrant_schema::decode(bytes).expect("an envelope");
        assert!(
            expected.contains_key(&envelope.event_id),
            "unexpected event {}",
            envelope.event_id
        );
        let (p, o) = expected[&envelope.event_id];
        if without_id.contains(&(p, o)) {
            assert_eq!(
                envelope.instance_id,
                ids::ingress_instance_id(&topics.proposals_topic, p, o)
            );
        }
        *copies.entry(envelope.event_id.clone()).or_default() += 1;
        ledger.apply(
            LogPosition {
                partition: message.partition(),
                offset: message.offset(),
            },
            message.key(),
            bytes,
        );
    }
    let missing: Vec<&String> = expected
        .keys()
        .filter(|id| !copies.contains_key(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} ingress records never reached the log",
        missing.len()
    );
    let extra: usize = copies.values().map(|n| n - 1).sum();
    assert_eq!(log.len(), RECORDS + extra);
    let duplicates = ledger
        .instances()
        .flat_map(|(_, f)| f.history.iter())
        .filter(|e| e.outcome.refusal() == Some(RefusalCode::Duplicate))
        .count();
    assert_eq!(duplicates, extra, "every extra copy folds as a Duplicate");
    let other_refusals = ledger
        .instances()
        .flat_map(|(_, f)| f.history.iter())
        .filter_map(|e| e.outcome.refusal())
        .filter(|code| *code != RefusalCode::Duplicate)
        .count();
    assert_eq!(other_refusals, 0);
    assert_eq!(ledger.len(), RECORDS);
    // The aborted run appended part of a batch it never committed.
    assert!(
        extra > 0,
        "no re-delivery happened; the crash proved nothing"
    );
    eprintln!("{extra} re-delivered copies, all recorded as Duplicate");
    if std::env::var("INTAKE_TEST_LOG").is_ok() {
        eprintln!("{intake_log}");
    }
}
