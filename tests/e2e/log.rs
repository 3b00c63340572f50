//! "The log is the truth", end to end on a real Kafka: a scripted history
//! folds to the records it promises in the projector; replay from offset 0
//! verifies against it; a projector killed mid catch-up resumes without
//! applying anything twice; a byte flipped in an export is caught.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use warrant_authority::{instance_key, quarantine_partition, Ledger, LogPosition, StatusName};
use warrant_e2e::{binary, checkpoint_total, eventually, free_port, get_json, KillOnDrop};
use warrant_projector::{Config, Projector};

fn kafka_flags(args: &warrant_kafka::KafkaArgs) -> Vec<String> {
    vec![
        format!("--brokers={}", args.brokers),
        format!("--log-topic={}", args.log_topic),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_projector_folds_a_scripted_history_and_replay_verifies_it() {
    let args = warrant_testkit::fresh_topics(3).await.expect("broker");
    let script = warrant_testkit::scripted_history(120);
    let positions = warrant_testkit::produce(&args, script.records.clone())
        .await
        .expect("produced");

    // What the records must be: the shared fold over each partition in order.
    let mut ordered: Vec<_> = script.records.iter().zip(&positions).collect();
    ordered.sort_by_key(|(_, position)| **position);
    let mut ledger = Ledger::new();
    for (record, (partition, offset)) in ordered {
        let position = LogPosition {
            partition: *partition,
            offset: *offset,
        };
        ledger.apply(position, record.key.as_deref(), &record.value);
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let projector = Projector::start(Config::new(args.clone(), dir.path()))
        .await
        .expect("starts");
    let url = format!("http://{}", projector.local_addr());
    let total = positions.len() as i64;
    eventually(
        Duration::from_secs(60),
        "the projector to catch up",
        || async {
            let (_, checkpoint) = get_json(&format!("{url}/v1/checkpoint")).await;
            (checkpoint_total(&checkpoint) == total).then_some(())
        },
    )
    .await;

    for (instance_id, expected_status) in &script.expected {
        let (status, record) = get_json(&format!("{url}/v1/instances/{instance_id}")).await;
        assert_eq!(status, 200, "{instance_id}");
        let expected = ledger.get(instance_id).expect("folded").record();
        assert_eq!(
            record,
            serde_json::to_value(&expected).expect("json"),
            "{instance_id}"
        );
        let status_name = record["status"].as_str().and_then(StatusName::parse);
        assert_eq!(status_name, *expected_status, "{instance_id}");
        assert_eq!(
            record["history"].as_array().map(Vec::len),
            Some(script.entries[instance_id] as usize)
        );
    }

    // Records under keys that are not instance ids, in two partitions: one
    // quarantine per partition, served as the shared fold built it.
    let stray_partitions: std::collections::BTreeSet<i32> = script
        .records
        .iter()
        .zip(&positions)
        .filter(|(record, _)| instance_key(record.key.as_deref()).is_none())
        .map(|(_, (partition, _))| *partition)
        .collect();
    assert!(stray_partitions.len() >= 2, "{stray_partitions:?}");
    let quarantines: Vec<&String> = ledger
        .instances()
        .map(|(id, _)| id)
        .filter(|id| quarantine_partition(id).is_some())
        .collect();
    assert_eq!(quarantines.len(), stray_partitions.len());
    assert_eq!(ledger.len(), script.expected.len() + quarantines.len());
    for instance_id in quarantines {
        let (status, record) = get_json(&format!("{url}/v1/instances/{instance_id}")).await;
        assert_eq!(status, 200, "{instance_id}");
        let expected = ledger.get(instance_id).expect("folded").record();
        assert_eq!(
            record,
            serde_json::to_value(&expected).expect("json"),
            "{instance_id}"
        );
    }

    // The reviewers' queue lists exactly the instances awaiting a decision.
    let (_, queue) = get_json(&format!(
        "{url}/v1/instances?status=AWAITING_DECISION&limit=1000"
    ))
    .await;
    let queued = queue["instances"].as_array().map(Vec::len).unwrap_or(0);
    let awaiting = script
        .expected
        .values()
        .filter(|s| **s == Some(StatusName::AwaitingDecision))
        .count();
    assert_eq!(queued, awaiting);

    // The auditors' replay, from offset 0, verifies every record and the checkpoint.
    let output = Command::new(binary("warrant-replay"))
        .args(kafka_flags(&args))
        .args(["--quiet", "--format", "json", "--verify", &url])
        .output()
        .expect("replay runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "replay --verify failed: {stderr}");
    // Every instance, both quarantines included, and the checkpoint digest.
    assert!(stderr.contains("checkpoint: digest equal"), "{stderr}");
    assert!(!stderr.contains("PARTIAL"), "{stderr}");

    projector.stop();
    projector.wait().await.expect("stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projector_killed_while_catching_up_resumes_without_applying_twice() {
    let args = warrant_testkit::fresh_topics(3).await.expect("broker");
    // 100k events in whole instances of seven.
    let events = 7 * 14_286;
    warrant_testkit::produce(&args, warrant_testkit::bulk_history(events))
        .await
        .expect("produced");
    let dir = tempfile::tempdir().expect("tempdir");
    let log_dir = tempfile::tempdir().expect("tempdir");
    let listen = format!("127.0.0.1:{}", free_port());
    let url = format!("http://{listen}");
    let spawn = || {
        Command::new(binary("warrant-projector"))
            .args(kafka_flags(&args))
            .args(["--listen", &listen, "--batch-records", "2000"])
            .arg("--data-dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::options()
                    .create(true)
                    .append(true)
                    .open(log_dir.path().join("projector.log"))
                    .map(Stdio::from)
                    .unwrap_or(Stdio::null()),
            )
            .spawn()
            .map(KillOnDrop)
            .expect("projector starts")
    };

    let mut first = spawn();
    let partway = eventually(Duration::from_secs(60), "the first batches", || async {
        let (status, checkpoint) = get_json(&format!("{url}/v1/checkpoint")).await;
        let folded = checkpoint_total(&checkpoint);
        (status == 200 && folded > 0).then_some(folded)
    })
    .await;
    first.kill();
    assert!(
        partway < events as i64,
        "the kill must land mid catch-up (folded {partway})"
    );

    let mut second = spawn();
    eventually(
        Duration::from_secs(120),
        "the restarted projector to catch up",
        || async {
            let (_, checkpoint) = get_json(&format!("{url}/v1/checkpoint")).await;
            (checkpoint_total(&checkpoint) == events as i64).then_some(())
        },
    )
    .await;

    // Nothing applied twice: every bulk instance has exactly its 7 entries
    // and completed (a re-applied record would be an 8th entry, a Duplicate).
    let mut entries: BTreeMap<u64, usize> = BTreeMap::new();
    let mut after: Option<String> = None;
    loop {
        let page_url = match &after {
            None => format!("{url}/v1/instances?limit=1000"),
            Some(id) => format!("{url}/v1/instances?limit=1000&after={id}"),
        };
        let (_, page) = get_json(&page_url).await;
        for instance in page["instances"].as_array().into_iter().flatten() {
            *entries
                .entry(instance["entries"].as_u64().unwrap_or(0))
                .or_default() += 1;
            assert_eq!(instance["status"], "COMPLETED", "{instance}");
        }
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(
        entries.keys().copied().collect::<Vec<_>>(),
        vec![7],
        "{entries:?}"
    );
    assert_eq!(entries[&7], events.div_ceil(7));

    // Replay from offset 0 computes the same checkpoint digest.
    let output = Command::new(binary("warrant-replay"))
        .args(kafka_flags(&args))
        .args(["--quiet", "--format", "json", "--verify", &url])
        .stdout(Stdio::null())
        .output()
        .expect("replay runs");
    let report = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "replay --verify failed: {report}");
    assert!(report.contains("checkpoint: digest equal"), "{report}");

    second.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_byte_flipped_in_an_export_fails_verification_naming_the_instance() {
    let args = warrant_testkit::fresh_topics(3).await.expect("broker");
    let script = warrant_testkit::scripted_history(30);
    let positions = warrant_testkit::produce(&args, script.records.clone())
        .await
        .expect("produced");
    let dir = tempfile::tempdir().expect("tempdir");
    let projector = Projector::start(Config::new(args.clone(), dir.path().join("view")))
        .await
        .expect("starts");
    let url = format!("http://{}", projector.local_addr());
    eventually(
        Duration::from_secs(60),
        "the projector to catch up",
        || async {
            let (_, checkpoint) = get_json(&format!("{url}/v1/checkpoint")).await;
            (checkpoint_total(&checkpoint) == positions.len() as i64).then_some(())
        },
    )
    .await;

    let export = dir.path().join("log.avro");
    let status = Command::new(binary("warrant-replay"))
        .args(["export", "--quiet"])
        .args(kafka_flags(&args))
        .arg("--out")
        .arg(&export)
        .status()
        .expect("export runs");
    assert!(status.success());

    let verify = |file: &std::path::Path| {
        Command::new(binary("warrant-replay"))
            .args(["--quiet", "--file"])
            .arg(file)
            .args(["--format", "json", "--verify", &url])
            .output()
            .expect("replay runs")
    };
    let clean = verify(&export);
    assert!(
        clean.status.success(),
        "{}",
        String::from_utf8_lossy(&clean.stderr)
    );

    // The first instance's id appears as the record key, then inside the
    // envelope (the value). Flip one hex digit of the value's copy.
    let victim = script
        .expected
        .keys()
        .find(|id| id.contains('-'))
        .expect("an instance")
        .clone();
    let mut bytes = std::fs::read(&export).expect("read export");
    let needle = victim.as_bytes();
    let hits: Vec<usize> = bytes
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect();
    assert!(
        hits.len() >= 2,
        "the id should appear as key and in the value"
    );
    let at = hits[1] + needle.len() - 1;
    bytes[at] = if bytes[at] == b'0' { b'1' } else { b'0' };
    let tampered = dir.path().join("tampered.avro");
    std::fs::write(&tampered, &bytes).expect("write");

    let failed = verify(&tampered);
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&failed.stdout),
        String::from_utf8_lossy(&failed.stderr)
    );
    assert_eq!(failed.status.code(), Some(1), "{report}");
    assert!(
        report.contains(&victim),
        "the report must name {victim}: {report}"
    );

    projector.stop();
    projector.wait().await.expect("stops cleanly");
}
