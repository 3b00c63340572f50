//! warrant-replay against the real local broker (`deploy/kafka.sh start`),
//! each test on its own fresh topics. The expected records always come from
//! `warrant_authority::Ledger` folding the same records, partition by
//! partition, so these tests check replay's reading and bookkeeping, never
//! a rule of its own.

// Errors end a run (at most once per process), so their size never matters
// on a hot path; boxing every Kafka error would only add noise.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use warrant_authority::{checkpoint_digest, ExecutionRecord, Hash32, Ledger, LogPosition};
use warrant_kafka::rdkafka::producer::FutureRecord;
use warrant_kafka::KafkaArgs;
use warrant_replay::{
    ExportOptions, Keep, RangeSpec, Replay, ReplayOptions, ReplayedRecord, Source, Verdict,
    VerifyOptions,
};
use warrant_schema::{samples, Envelope, EventBody};

/// The local broker; `deploy/kafka.sh` and these tests follow
/// WARRANT_KAFKA_PORT. `WARRANT_TEST_BROKERS` points them at a running
/// broker instead, as it does warrant-testkit's (the e2e tests').
static BROKERS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    if let Ok(brokers) = std::env::var("WARRANT_TEST_BROKERS") {
        return brokers;
    }
    let port = std::env::var("WARRANT_KAFKA_PORT").unwrap_or_else(|_| "9092".to_owned());
    format!("127.0.0.1:{port}")
});

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Start the shared broker if it is not running (idempotent; never stopped here).
fn ensure_broker() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        if std::env::var_os("WARRANT_TEST_BROKERS").is_some() {
            return;
        }
        let status = std::process::Command::new("bash")
            .arg(repo().join("deploy/kafka.sh"))
            .arg("start")
            .status()
            .unwrap_or_else(|e| panic!("cannot run deploy/kafka.sh: {e}"));
        assert!(status.success(), "deploy/kafka.sh start failed: {status}");
    });
}

async fn fresh_topics() -> KafkaArgs {
    ensure_broker();
    let kafka = KafkaArgs::unique_for_tests(&BROKERS);
    kafka
        .create_topics(3)
        .await
        .unwrap_or_else(|e| panic!("create topics: {e}"));
    kafka
}

fn instance_id(k: usize) -> String {
    format!("6f1c2b9e-4d0a-4c7e-9a51-{k:012x}")
}

/// Instance `k`'s events: a prefix of the sample history of varying length,
/// sometimes a duplicate, sometimes garbage under its key, sometimes a
/// signal before the proposal.
fn history(k: usize) -> Vec<Vec<u8>> {
    let id = instance_id(k);
    let mut envelopes: Vec<Envelope> = samples::envelopes()
        .into_iter()
        .take(1 + k % 7)
        .enumerate()
        .map(|(n, (_, mut envelope))| {
            envelope.instance_id = id.clone();
            envelope.event_id = format!("0b7d6a3e-1f2c-4e5d-8a9b-{k:04x}{n:08x}");
            envelope
        })
        .collect();
    if k % 9 == 8 && envelopes.len() > 1 {
        envelopes.swap(0, 1);
    }
    let mut values: Vec<Vec<u8>> = envelopes
        .iter()
        .map(|e| warrant_schema::encode(e).unwrap_or_else(|e| panic!("encode: {e}")))
        .collect();
    if k % 5 == 3 && values.len() > 1 {
        values.push(values[1].clone());
    }
    if k % 4 == 1 {
        values.push(b"\x00not an envelope".to_vec());
    }
    values
}

#[derive(Debug, Clone)]
struct Sent {
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    value: Vec<u8>,
}

/// (partition, key, value, timestamp) of a record to produce.
type ToSend = (i32, Option<Vec<u8>>, Vec<u8>, i64);

/// A recent timestamp: records older than the broker's retention (7 days by
/// default) may be deleted while a test reads them.
fn recent_millis() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_millis()).unwrap_or(i64::MAX) - 3_600_000
}

/// Produce `records` (explicit partition, key, value, timestamp) in order.
async fn produce(kafka: &KafkaArgs, records: Vec<ToSend>) -> Vec<Sent> {
    let producer = kafka.producer().unwrap_or_else(|e| panic!("producer: {e}"));
    let mut sent = Vec::with_capacity(records.len());
    for (partition, key, value, timestamp) in records {
        let mut record = FutureRecord::<[u8], [u8]>::to(&kafka.log_topic)
            .payload(&value)
            .partition(partition)
            .timestamp(timestamp);
        if let Some(key) = &key {
            record = record.key(key);
        }
        let delivery = producer
            .send(record, Duration::from_secs(10))
            .await
            .unwrap_or_else(|(e, _)| panic!("produce: {e}"));
        sent.push(Sent {
            partition: delivery.partition,
            offset: delivery.offset,
            key,
            value,
        });
    }
    sent
}

/// `instances` instances spread over three partitions, interleaved, plus
/// garbage under non-UUID keys (in partitions 0 and 1 when
/// `two_quarantines`, else only in 0).
async fn produce_fixture(kafka: &KafkaArgs, instances: usize, two_quarantines: bool) -> Vec<Sent> {
    let histories: Vec<Vec<Vec<u8>>> = (0..instances).map(history).collect();
    let longest = histories.iter().map(Vec::len).max().unwrap_or(0);
    let base = recent_millis();
    let mut records = Vec::new();
    for n in 0..longest {
        for (k, values) in histories.iter().enumerate() {
            if let Some(value) = values.get(n) {
                let t = base + records.len() as i64;
                records.push((
                    (k % 3) as i32,
                    Some(instance_id(k).into_bytes()),
                    value.clone(),
                    t,
                ));
            }
        }
        if n == 2 {
            records.push((0, Some(b"not-a-uuid".to_vec()), b"garbage".to_vec(), base));
            let quarantine_partition = if two_quarantines { 1 } else { 0 };
            records.push((quarantine_partition, None, histories[0][0].clone(), base));
        }
    }
    produce(kafka, records).await
}

/// The shared fold over the same records, one ledger per partition.
fn ledgers(sent: &[Sent]) -> BTreeMap<i32, Ledger> {
    let mut sorted: Vec<&Sent> = sent.iter().collect();
    sorted.sort_by_key(|s| (s.partition, s.offset));
    let mut ledgers: BTreeMap<i32, Ledger> = BTreeMap::new();
    for s in sorted {
        ledgers.entry(s.partition).or_default().apply(
            LogPosition {
                partition: s.partition,
                offset: s.offset,
            },
            s.key.as_deref(),
            &s.value,
        );
    }
    ledgers
}

fn expected_records(ledgers: &BTreeMap<i32, Ledger>) -> BTreeMap<(String, i32), ExecutionRecord> {
    ledgers
        .iter()
        .flat_map(|(partition, ledger)| {
            ledger
                .instances()
                .map(move |(id, folded)| ((id.clone(), *partition), folded.record()))
        })
        .collect()
}

async fn replay_blocking(options: ReplayOptions) -> Replay {
    tokio::task::spawn_blocking(move || warrant_replay::replay(&options))
        .await
        .unwrap_or_else(|e| panic!("join: {e}"))
        .unwrap_or_else(|e| panic!("replay: {e}"))
}

fn replayed_records(replay: &Replay) -> BTreeMap<(String, i32), ReplayedRecord> {
    replay
        .records()
        .map(|r| ((r.record.instance_id.clone(), r.partition), r))
        .collect()
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Run the built binary with a clean `WARRANT_*` environment.
async fn run_binary(args: &[&str]) -> Run {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_warrant-replay"));
    for (name, _) in std::env::vars() {
        if name.starts_with("WARRANT_") {
            command.env_remove(name);
        }
    }
    let output = command
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| panic!("run warrant-replay: {e}"));
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn kafka_args(kafka: &KafkaArgs) -> Vec<String> {
    vec![
        "--brokers".to_owned(),
        kafka.brokers.clone(),
        "--log-topic".to_owned(),
        kafka.log_topic.clone(),
        "--principals-topic".to_owned(),
        kafka.principals_topic.clone(),
    ]
}

/// A stand-in for the projector's HTTP API, serving records from ledgers.
#[derive(Clone)]
struct FakeProjector {
    records: Arc<BTreeMap<String, ExecutionRecord>>,
    checkpoint: Arc<serde_json::Value>,
}

async fn instance(State(fake): State<FakeProjector>, UrlPath(id): UrlPath<String>) -> Response {
    match fake.records.get(&id) {
        Some(record) => Json(record.clone()).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(
                serde_json::json!({"error": {"code": "not_found", "message": "unknown instance"}}),
            ),
        )
            .into_response(),
    }
}

async fn checkpoint(State(fake): State<FakeProjector>) -> Json<serde_json::Value> {
    Json((*fake.checkpoint).clone())
}

/// Serve `records` and a checkpoint at the given next offsets; the base URL.
async fn start_projector(
    kafka: &KafkaArgs,
    records: BTreeMap<String, ExecutionRecord>,
    next_offsets: &BTreeMap<i32, i64>,
) -> String {
    let digest = checkpoint_digest(records.iter().map(|(id, r)| (id.as_str(), &r.head_hash)));
    let partitions: serde_json::Map<String, serde_json::Value> = next_offsets
        .iter()
        .map(|(p, o)| (p.to_string(), serde_json::json!(o)))
        .collect();
    let fake = FakeProjector {
        checkpoint: Arc::new(serde_json::json!({
            "topic": kafka.log_topic,
            "partitions": partitions,
            "instances": records.len(),
            "digest": digest,
        })),
        records: Arc::new(records),
    };
    let app = Router::new()
        .route("/v1/instances/{id}", get(instance))
        .route("/v1/checkpoint", get(checkpoint))
        .with_state(fake);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let address = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("address: {e}"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{address}")
}

fn next_offsets(sent: &[Sent]) -> BTreeMap<i32, i64> {
    let mut next: BTreeMap<i32, i64> = (0..3).map(|p| (p, 0)).collect();
    for s in sent {
        let entry = next.entry(s.partition).or_insert(0);
        *entry = (*entry).max(s.offset + 1);
    }
    next
}

/// The projector's view (no instance spans partitions, so the per-partition
/// ledgers hold every record).
fn projector_records(ledgers: &BTreeMap<i32, Ledger>) -> BTreeMap<String, ExecutionRecord> {
    expected_records(ledgers)
        .into_iter()
        .map(|((id, _), record)| (id, record))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_builds_the_records_the_shared_fold_builds() {
    let kafka = fresh_topics().await;
    let sent = produce_fixture(&kafka, 40, true).await;
    let expected = expected_records(&ledgers(&sent));

    let replay = replay_blocking(ReplayOptions::new(Source::Kafka(kafka.clone()))).await;
    assert_eq!(replay.events, sent.len() as u64);
    assert_eq!(replay.records_read(), sent.len() as u64);
    let got = replayed_records(&replay);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    for (key, record) in &got {
        assert_eq!(Some(&record.record), expected.get(key), "{key:?}");
        assert!(
            !record.partial,
            "{key:?} marked partial on a whole-log replay"
        );
    }
    // Garbage under non-UUID keys in partitions 0 and 1: one quarantine per
    // partition, neither of them split across partitions.
    let quarantine: Vec<(&str, i32)> = got
        .values()
        .filter(|r| r.record.instance_id.starts_with("quarantine"))
        .map(|r| (r.record.instance_id.as_str(), r.partition))
        .collect();
    assert_eq!(quarantine, vec![("quarantine-0", 0), ("quarantine-1", 1)]);
    assert!(got.values().all(|r| r.also_in_partitions.is_empty()));
    assert_eq!(replay.summary().split, 0);
    // The instance whose signal came before its proposal is still whole.
    let late_proposal = &got[&(instance_id(8), 2)].record;
    assert_eq!(
        late_proposal.history[0]
            .outcome
            .refusal()
            .map(|c| c.as_str()),
        Some("UnknownInstance")
    );

    // Fewer threads or only heads: the same heads.
    let mut options = ReplayOptions::new(Source::Kafka(kafka.clone()));
    options.threads = 1;
    options.keep = Keep::State;
    let heads_only = replay_blocking(options).await;
    let heads = |r: &Replay| -> Vec<(String, i32, Hash32)> {
        r.instances
            .iter()
            .map(|i| (i.instance_id().to_owned(), i.partition, i.head()))
            .collect()
    };
    assert_eq!(heads(&heads_only), heads(&replay));
    assert_eq!(heads_only.records().count(), 0);

    // The binary prints the same records, one per line.
    let mut args = kafka_args(&kafka);
    args.extend(["--format", "ndjson", "--quiet"].map(str::to_owned));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = run_binary(&args).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let printed: BTreeMap<(String, i32), ReplayedRecord> = run
        .stdout
        .lines()
        .map(|line| {
            let record: ReplayedRecord =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            (
                (record.record.instance_id.clone(), record.partition),
                record,
            )
        })
        .collect();
    assert_eq!(printed, got);
    assert!(
        run.stderr
            .contains(&format!("replayed {} events", sent.len())),
        "{}",
        run.stderr
    );

    // One instance, as text.
    let id = instance_id(13);
    let mut args = kafka_args(&kafka);
    args.extend(["--instance", &id, "--quiet"].map(str::to_owned));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = run_binary(&args).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let record = &expected[&(id.clone(), 1)];
    assert!(
        run.stdout.starts_with(&format!("== instance {id} ==")),
        "{}",
        run.stdout
    );
    assert!(run
        .stdout
        .contains(&format!("head hash        {}", record.head_hash)));
    assert_eq!(run.stdout.matches("== instance").count(), 1);

    // A projector folds partitions in whatever order it polls them: one
    // ledger over every record in the order they were sent. Replay (each
    // partition on its own) verifies every record of it, both quarantines
    // included, and the checkpoint digest.
    let mut as_sent = Ledger::new();
    for s in &sent {
        let position = LogPosition {
            partition: s.partition,
            offset: s.offset,
        };
        as_sent.apply(position, s.key.as_deref(), &s.value);
    }
    let records: BTreeMap<String, ExecutionRecord> = as_sent
        .instances()
        .map(|(id, folded)| (id.clone(), folded.record()))
        .collect();
    assert_eq!(records.len(), expected.len());
    let url = start_projector(&kafka, records, &next_offsets(&sent)).await;
    let mut args = kafka_args(&kafka);
    args.extend(["--verify", &url, "--quiet"].map(str::to_owned));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = run_binary(&args).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout
            .contains(&format!("{} verified; ok", expected.len())),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("checkpoint: digest equal"),
        "{}",
        run.stdout
    );

    // One partition's quarantine alone.
    let mut args = kafka_args(&kafka);
    args.extend(
        [
            "--instance",
            "quarantine-1",
            "--format",
            "ndjson",
            "--quiet",
        ]
        .map(str::to_owned),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = run_binary(&args).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let only: Vec<ReplayedRecord> = run
        .stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    assert_eq!(only.len(), 1);
    assert_eq!(
        Some(&only[0].record),
        expected.get(&("quarantine-1".to_owned(), 1))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_starting_late_marks_partial_instances_and_verify_says_so() {
    let kafka = fresh_topics().await;
    let (a, b) = (history(6), history(5));
    let key = |k: usize| Some(instance_id(k).into_bytes());
    // Partition 0: A's proposal and first signals, then B's proposal, then
    // A and B continue. Timestamps are offset-aligned: base + 1000 * offset.
    let base = recent_millis();
    let order = [
        (6, 0),
        (6, 1),
        (6, 2),
        (5, 0),
        (6, 3),
        (5, 1),
        (6, 4),
        (5, 2),
    ];
    let records = order
        .iter()
        .enumerate()
        .map(|(n, (k, i))| {
            let values = if *k == 6 { &a } else { &b };
            (0, key(*k), values[*i].clone(), base + 1000 * n as i64)
        })
        .collect();
    let sent = produce(&kafka, records).await;
    assert_eq!(sent.last().map(|s| s.offset), Some(7));
    let ledgers = ledgers(&sent);
    let full = &ledgers[&0];

    // The same ranges of the topic and of an export of the whole topic.
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let file = dir.path().join("whole.avro");
    let export = ExportOptions {
        source: Source::Kafka(kafka.clone()),
        range: RangeSpec::all(),
        out: file.clone(),
        stall_timeout: Duration::from_secs(30),
        progress: false,
    };
    let exported = tokio::task::spawn_blocking(move || warrant_replay::export(&export))
        .await
        .unwrap_or_else(|e| panic!("join: {e}"))
        .unwrap_or_else(|e| panic!("export: {e}"));
    assert_eq!(exported.records, 8);
    let by_offset =
        RangeSpec::from_flags(&[0], Some(3), None, None, None).unwrap_or_else(|e| panic!("{e}"));
    // offsets_for_times: the first record at/after base + 2500 is offset 3.
    let by_time = RangeSpec::from_flags(&[], None, None, Some(&(base + 2500).to_string()), None)
        .unwrap_or_else(|e| panic!("{e}"));
    for (spec, source) in [
        (&by_offset, Source::Kafka(kafka.clone())),
        (&by_time, Source::Kafka(kafka.clone())),
        (&by_offset, Source::File(file.clone())),
        (&by_time, Source::File(file.clone())),
    ] {
        let mut options = ReplayOptions::new(source);
        options.range = spec.clone();
        let replay = replay_blocking(options).await;
        let range0 = replay.ranges.iter().find(|r| r.partition == 0).copied();
        assert_eq!(
            range0.map(|r| (r.log_start, r.start, r.end)),
            Some((0, 3, 8))
        );
        assert_eq!(replay.events, 5);
        let a_replayed = replay
            .get(&instance_id(6))
            .unwrap_or_else(|| panic!("A replayed"));
        let b_replayed = replay
            .get(&instance_id(5))
            .unwrap_or_else(|| panic!("B replayed"));
        assert!(a_replayed.partial, "A's proposal is before the range");
        assert!(!b_replayed.partial, "B is whole in the range");
        assert_eq!(
            Some(b_replayed.head()),
            full.get(&instance_id(5)).map(|f| f.state.head)
        );
        assert_eq!(a_replayed.record().map(|r| r.partial), Some(true));
    }

    // --to-time ends before the first record at/after it.
    let before_offset_2 = warrant_replay::time::format_millis(base + 1500);
    let mut options = ReplayOptions::new(Source::Kafka(kafka.clone()));
    options.range = RangeSpec::from_flags(&[], None, None, None, Some(&before_offset_2))
        .unwrap_or_else(|e| panic!("{e}"));
    let early = replay_blocking(options).await;
    assert_eq!(early.events, 2);

    // The projector folded the whole partition: B verifies, A is partial,
    // and that is not a failure.
    let url = start_projector(&kafka, projector_records(&ledgers), &next_offsets(&sent)).await;
    let mut args = kafka_args(&kafka);
    args.extend(["--from", "3", "--verify", &url].map(str::to_owned));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = run_binary(&args).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout
            .contains(&format!("PARTIAL   {}", instance_id(6))),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains(&instance_id(5)), "{}", run.stdout);
    assert!(
        run.stdout.contains("1 partial, 1 verified; ok"),
        "{}",
        run.stdout
    );
    // Not from the log's start: the digest cannot be compared.
    assert!(run.stdout.contains("digest not compared"), "{}", run.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_passes_on_equal_records_and_names_a_tampered_instance() {
    let kafka = fresh_topics().await;
    let sent = produce_fixture(&kafka, 30, false).await;
    let ledgers = ledgers(&sent);
    let records = projector_records(&ledgers);
    let next = next_offsets(&sent);

    let url = start_projector(&kafka, records.clone(), &next).await;
    let mut args = kafka_args(&kafka);
    args.extend(["--verify", &url, "--quiet"].map(str::to_owned));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run_ok = run_binary(&args).await;
    assert_eq!(run_ok.code, 0, "{}\n{}", run_ok.stdout, run_ok.stderr);
    assert!(
        run_ok
            .stdout
            .contains(&format!("{} verified; ok", records.len())),
        "{}",
        run_ok.stdout
    );
    assert!(
        run_ok.stdout.contains("checkpoint: digest equal"),
        "{}",
        run_ok.stdout
    );

    // One entry's hash changed at the projector: that instance, that entry.
    let victim = instance_id(20);
    let mut tampered = records.clone();
    if let Some(record) = tampered.get_mut(&victim) {
        record.history[1].hash = Hash32([0xab; 32]);
    }
    let url = start_projector(&kafka, tampered, &next).await;
    let mut args = kafka_args(&kafka);
    args.extend(["--verify", &url, "--quiet"].map(str::to_owned));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run_bad = run_binary(&args).await;
    assert_eq!(run_bad.code, 1, "{}\n{}", run_bad.stdout, run_bad.stderr);
    let line = run_bad
        .stdout
        .lines()
        .find(|l| l.contains(&victim))
        .unwrap_or_else(|| panic!("{victim} not named:\n{}", run_bad.stdout));
    assert!(
        line.starts_with("DIFFERS") && line.contains("entry 2 differs"),
        "{line}"
    );
    assert_eq!(
        run_bad.stdout.matches("DIFFERS").count(),
        1,
        "{}",
        run_bad.stdout
    );

    // An instance the projector does not know, via the library.
    let mut missing = records.clone();
    missing.remove(&instance_id(3));
    let url = start_projector(&kafka, missing, &next).await;
    let mut options = ReplayOptions::new(Source::Kafka(kafka.clone()));
    options.keep = Keep::Chain;
    let replay = replay_blocking(options).await;
    let report = warrant_replay::verify(&replay, &VerifyOptions::new(url))
        .await
        .unwrap_or_else(|e| panic!("verify: {e}"));
    assert!(report.failed());
    assert_eq!(report.verdict(&instance_id(3)), Some(&Verdict::Missing));
    assert!(matches!(
        report.verdict(&instance_id(4)),
        Some(Verdict::Verified { .. })
    ));
}

fn flip_byte_of(path: &Path, needle: &[u8]) {
    let mut bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read export: {e}"));
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap_or_else(|| panic!("value not found in the export"));
    bytes[at + needle.len() - 3] ^= 0x20;
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("write export: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_replays_to_the_same_heads_and_a_flipped_byte_is_caught() {
    let kafka = fresh_topics().await;
    let sent = produce_fixture(&kafka, 24, false).await;
    let ledgers = ledgers(&sent);
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let file = dir.path().join("log.avro");
    let file_arg = file.to_string_lossy().into_owned();

    let mut args = kafka_args(&kafka);
    args.extend(["export", "--out", &file_arg, "--quiet"].map(str::to_owned));
    // `export` comes first on the command line.
    args.rotate_right(4);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let exported = run_binary(&args).await;
    assert_eq!(exported.code, 0, "{}", exported.stderr);
    assert!(
        exported
            .stderr
            .contains(&format!("exported {} records", sent.len())),
        "{}",
        exported.stderr
    );

    let from_kafka = replay_blocking(ReplayOptions::new(Source::Kafka(kafka.clone()))).await;
    let from_file = replay_blocking(ReplayOptions::new(Source::File(file.clone()))).await;
    assert_eq!(replayed_records(&from_file), replayed_records(&from_kafka));
    assert_eq!(from_file.ranges, from_kafka.ranges);
    assert!(from_file.exact_ranges());
    assert_eq!(from_file.topic, kafka.log_topic);

    // The file verifies against the projector like the topic does.
    let url = start_projector(&kafka, projector_records(&ledgers), &next_offsets(&sent)).await;
    let verified = run_binary(&["--file", &file_arg, "--verify", &url, "--quiet"]).await;
    assert_eq!(verified.code, 0, "{}\n{}", verified.stdout, verified.stderr);
    assert!(
        verified.stdout.contains("checkpoint: digest equal"),
        "{}",
        verified.stdout
    );

    // Flip one byte inside one decision of one instance.
    let victim = instance_id(10);
    let decision = history(10)[3].clone();
    flip_byte_of(&file, &decision);
    let damaged = replay_blocking(ReplayOptions::new(Source::File(file.clone()))).await;
    let changed: Vec<&str> = damaged
        .instances
        .iter()
        .zip(&from_kafka.instances)
        .filter(|(d, k)| d.head() != k.head())
        .map(|(d, _)| d.instance_id())
        .collect();
    assert_eq!(changed, vec![victim.as_str()]);

    let caught = run_binary(&["--file", &file_arg, "--verify", &url, "--quiet"]).await;
    assert_eq!(caught.code, 1, "{}\n{}", caught.stdout, caught.stderr);
    let line = caught
        .stdout
        .lines()
        .find(|l| l.contains(&victim))
        .unwrap_or_else(|| panic!("{victim} not named:\n{}", caught.stdout));
    assert!(
        line.starts_with("DIFFERS") && line.contains("entry 4 differs"),
        "{line}"
    );
    assert!(
        caught.stdout.contains("DIFFERS   checkpoint digest"),
        "{}",
        caught.stdout
    );
}

/// The sample proposal under a one-SRE rule, then the sample decision
/// signed with the sample reviewer key (dave's), on partition 0.
fn signed_history() -> Vec<ToSend> {
    let mut proposal = samples::envelopes()[0].1.clone();
    if let warrant_schema::EventBody::ActionProposed(proposed) = &mut proposal.body {
        proposed.requirement.approvals_required = 1;
        proposed.requirement.required_signals.clear();
        proposed.requirement.approver_roles = vec!["sre".to_owned()];
    }
    let key = Some(samples::INSTANCE_ID.as_bytes().to_vec());
    [proposal, samples::signed_decision()]
        .iter()
        .map(|envelope| {
            let value = warrant_schema::encode(envelope).unwrap_or_else(|e| panic!("encode: {e}"));
            (0, key.clone(), value, recent_millis())
        })
        .collect()
}

/// Publish a reviewer directory naming `holder` as the sample key's owner,
/// at `published_at` (unix ms), the way intake does.
async fn publish_directory(kafka: &KafkaArgs, holder: &str, published_at: i64) {
    let value = serde_json::json!({ "reviewers": [{
        "principal": holder,
        "roles": ["sre"],
        "keys": [{ "key_id": "b600306cfa76723f", "public_key": samples::SIGNED_REVIEWER_PUBLIC_KEY }],
        "hmac": false,
    }]})
    .to_string();
    let digest = warrant_authority::sha256_hex(value.as_bytes());
    let producer = kafka.producer().unwrap_or_else(|e| panic!("producer: {e}"));
    producer
        .send(
            FutureRecord::<str, str>::to(&kafka.principals_topic)
                .key(&digest)
                .payload(&value)
                .timestamp(published_at),
            Duration::from_secs(10),
        )
        .await
        .unwrap_or_else(|(e, _)| panic!("produce: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_audits_every_signed_decision_against_the_directory_in_force() {
    let signed_at = samples::signed_decision().recorded_at;
    let kafka = fresh_topics().await;
    produce(&kafka, signed_history()).await;
    publish_directory(&kafka, "dave", signed_at - 60_000).await;
    let args = kafka_args(&kafka);
    let mut quiet: Vec<&str> = args.iter().map(String::as_str).collect();
    quiet.extend(["--quiet", "--format", "text"]);
    let run = run_binary(&quiet).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr
            .contains("signatures: 1 signed by the reviewer, 0 attested by intake (HMAC); ok"),
        "{}",
        run.stderr
    );
    assert!(
        run.stdout
            .contains("signed by the reviewer (key b600306cfa76723f)"),
        "{}",
        run.stdout
    );

    // A later directory (still before the decision) gives the key to erin:
    // dave's signature no longer ties to dave.
    publish_directory(&kafka, "erin", signed_at - 1_000).await;
    let run = run_binary(&quiet).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "SIGNATURE {} entry 2 (partition 0, offset 1) by dave: key b600306cfa76723f is not dave's",
            samples::INSTANCE_ID
        )),
        "{}",
        run.stderr
    );

    // With no directory published before the decision, nothing vouches for the key.
    let early = fresh_topics().await;
    produce(&early, signed_history()).await;
    publish_directory(&early, "dave", signed_at + 60_000).await;
    let args = kafka_args(&early);
    let mut quiet: Vec<&str> = args.iter().map(String::as_str).collect();
    quiet.push("--quiet");
    let run = run_binary(&quiet).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("no reviewer directory was published before it"),
        "{}",
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_signature_byte_in_an_export_makes_replay_fail() {
    let kafka = fresh_topics().await;
    produce(&kafka, signed_history()).await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let file = dir.path().join("signed.avro");
    let file_arg = file.to_string_lossy().into_owned();
    let mut args = kafka_args(&kafka);
    args.extend(["export", "--out", &file_arg, "--quiet"].map(str::to_owned));
    args.rotate_right(4);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let exported = run_binary(&args).await;
    assert_eq!(exported.code, 0, "{}", exported.stderr);

    let clean = run_binary(&["--file", &file_arg, "--quiet"]).await;
    assert_eq!(clean.code, 0, "{}", clean.stderr);
    assert!(
        clean
            .stderr
            .contains("1 verified but the key's owner not checked"),
        "{}",
        clean.stderr
    );

    let EventBody::DecisionRecorded(decision) = samples::signed_decision().body else {
        panic!("not a decision");
    };
    let signature = decision.proof.map(|p| p.signature).unwrap_or_default();
    flip_byte_of(&file, signature.as_bytes());
    let caught = run_binary(&["--file", &file_arg, "--quiet", "--format", "text"]).await;
    assert_eq!(caught.code, 1, "{}\n{}", caught.stdout, caught.stderr);
    assert!(
        caught.stderr.contains(&format!(
            "SIGNATURE {} entry 2 (partition 0, offset 1) by dave: the proof does not verify",
            samples::INSTANCE_ID
        )),
        "{}",
        caught.stderr
    );
    assert!(caught.stdout.contains("BadSignature"), "{}", caught.stdout);
}

/// An `ActionProposed` for `instance`, resolved by the example ruleset as
/// intake would, then changed by `alter` (a tampered envelope).
fn proposal_under_example(
    instance: &str,
    alter: impl FnOnce(&mut warrant_schema::ActionProposed),
) -> Vec<u8> {
    let ruleset =
        warrant_authority::Ruleset::parse(include_bytes!("../../../deploy/examples/ruleset.yaml"))
            .expect("example ruleset");
    let mut envelope = samples::envelopes()[0].1.clone();
    envelope.instance_id = instance.to_owned();
    let EventBody::ActionProposed(proposed) = &mut envelope.body else {
        panic!("the first sample is a proposal");
    };
    let resolution = ruleset.resolve(&warrant_authority::Facts {
        action: &proposed.action,
        proposer: &proposed.proposer,
        context_refs: &proposed.context_refs,
    });
    proposed.requirement = resolution.requirement().clone();
    proposed.resolution = resolution.not_matched.clone();
    proposed.ruleset = ruleset.reference();
    alter(proposed);
    warrant_schema::encode(&envelope).expect("encode")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_rules_fails_on_an_envelope_whose_requirement_was_altered() {
    let kafka = fresh_topics().await;
    let text = std::fs::read(repo().join("deploy/examples/ruleset.yaml")).expect("example");
    let digest = warrant_authority::sha256_hex(&text);
    let producer = kafka.producer().unwrap_or_else(|e| panic!("producer: {e}"));
    producer
        .send(
            FutureRecord::<str, [u8]>::to(&kafka.rulesets_topic)
                .key(&digest)
                .payload(&text),
            Duration::from_secs(10),
        )
        .await
        .unwrap_or_else(|(e, _)| panic!("produce: {e}"));
    let (honest, altered) = (instance_id(1), instance_id(2));
    let at = recent_millis();
    produce(
        &kafka,
        vec![
            (
                0,
                Some(honest.clone().into_bytes()),
                proposal_under_example(&honest, |_| {}),
                at,
            ),
            (
                0,
                Some(altered.clone().into_bytes()),
                proposal_under_example(&altered, |p| p.requirement.approvals_required = 1),
                at,
            ),
        ],
    )
    .await;
    let mut args = kafka_args(&kafka);
    args.extend([
        "--rulesets-topic".to_owned(),
        kafka.rulesets_topic.clone(),
        "--quiet".to_owned(),
        "--format".to_owned(),
        "none".to_owned(),
        "--check-rules".to_owned(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = run_binary(&args).await;
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains(
            "rules check: 2 proposal(s) resolved again against their published ruleset, 1 differ"
        ),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains(&format!(
            "instance {altered} (recorded rule prod-restarts): the published ruleset gives rule prod-restarts"
        )),
        "{}",
        run.stderr
    );
    assert!(
        !run.stderr.contains(&format!("instance {honest}")),
        "{}",
        run.stderr
    );
}

/// A transactional producer on the test broker: what Warrant's writers
/// never are, and what a forger uses to put markers where records were.
fn transactional(kafka: &KafkaArgs) -> warrant_kafka::rdkafka::producer::BaseProducer {
    use warrant_kafka::rdkafka::producer::Producer;
    let producer: warrant_kafka::rdkafka::producer::BaseProducer =
        warrant_kafka::rdkafka::ClientConfig::new()
            .set("bootstrap.servers", kafka.brokers.as_str())
            .set("transactional.id", format!("{}-tx", kafka.log_topic))
            .set("transaction.timeout.ms", "60000")
            .create()
            .unwrap_or_else(|e| panic!("transactional producer: {e}"));
    producer
        .init_transactions(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("init transactions: {e}"));
    producer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_transaction_is_warned_about_and_a_marker_in_the_range_is_a_gap() {
    use warrant_kafka::rdkafka::producer::{BaseRecord, Producer};

    let kafka = fresh_topics().await;
    let key = instance_id(1).into_bytes();
    let plain = |n: usize| -> Vec<ToSend> {
        (0..n)
            .map(|i| (0, Some(key.clone()), vec![i as u8; 4], recent_millis()))
            .collect()
    };
    // Offsets 0, 1, 2 from an ordinary (idempotent) producer.
    produce(&kafka, plain(3)).await;
    let producer = transactional(&kafka);
    producer
        .begin_transaction()
        .unwrap_or_else(|e| panic!("begin: {e}"));
    producer
        .send(
            BaseRecord::<[u8], [u8]>::to(&kafka.log_topic)
                .partition(0)
                .key(key.as_slice())
                .payload(b"open".as_slice()),
        )
        .unwrap_or_else(|(e, _)| panic!("send: {e}"));
    producer
        .flush(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("flush: {e}"));

    // Offset 3 is in an open transaction: a read_committed read ends at 3.
    let options = ReplayOptions::new(Source::Kafka(kafka.clone()));
    let replayed = replay_blocking(options.clone()).await;
    assert_eq!(
        replayed.open_transactions,
        vec![warrant_replay::kafka::OpenTransaction {
            partition: 0,
            stable_end: 3,
            high_watermark: 4,
        }]
    );
    assert_eq!(replayed.gaps, vec![]);

    // Aborted: offset 3 is an aborted record, 4 its marker, 5 a plain
    // record after them. Warrant's log never holds such offsets.
    producer
        .abort_transaction(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("abort: {e}"));
    produce(&kafka, plain(1)).await;
    let replayed = replay_blocking(options).await;
    assert_eq!(replayed.open_transactions, vec![]);
    assert_eq!(
        replayed.gaps,
        vec![warrant_replay::Gap {
            partition: 0,
            from: 3,
            to: 5,
        }]
    );
}
