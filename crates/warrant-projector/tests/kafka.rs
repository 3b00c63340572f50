//! The projector against the real local broker (`deploy/kafka.sh start`),
//! each test on its own fresh topics.
//!
//! `catch_up_throughput` is ignored by default; run it with
//! `cargo test --release -p warrant-projector --test kafka -- --ignored --nocapture`
//! (`WARRANT_BENCH_EVENTS` sets the number of events, default 100000).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;
use warrant_authority::{quarantine_instance, Ledger, LogPosition, Outcome, RefusalCode};
use warrant_kafka::rdkafka::error::KafkaError;
use warrant_kafka::rdkafka::producer::{FutureProducer, FutureRecord};
use warrant_kafka::rdkafka::types::RDKafkaErrorCode;
use warrant_kafka::KafkaArgs;
use warrant_projector::{Config, Opened, Projector, Store, StoreOptions};
use warrant_schema::{samples, Envelope};

/// The local broker; `deploy/kafka.sh` and these tests follow WARRANT_KAFKA_PORT.
static BROKERS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let port = std::env::var("WARRANT_KAFKA_PORT").unwrap_or_else(|_| "9092".to_owned());
    format!("127.0.0.1:{port}")
});

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Start the shared broker if it is not running (idempotent, fast when up).
/// Never stop or reset it: other work uses it.
fn ensure_broker() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        let status = std::process::Command::new("bash")
            .arg(repo_root().join("deploy/kafka.sh"))
            .arg("start")
            .status()
            .expect("run deploy/kafka.sh start");
        assert!(status.success(), "deploy/kafka.sh start failed: {status}");
    });
}

async fn fresh_topics(partitions: i32) -> KafkaArgs {
    ensure_broker();
    let args = KafkaArgs::unique_for_tests(&BROKERS);
    args.create_topics(partitions).await.unwrap();
    args
}

/// One record to produce: explicit partition (or the default partitioner
/// on the key), key, value.
#[derive(Debug, Clone)]
struct Produce {
    partition: Option<i32>,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
}

impl Produce {
    fn event(envelope: &Envelope) -> Produce {
        Produce {
            partition: None,
            key: Some(envelope.instance_id.clone().into_bytes()),
            value: Some(warrant_schema::encode(envelope).unwrap()),
        }
    }
}

/// Produce in order, many in flight; returns where each record landed.
async fn produce(producer: &FutureProducer, topic: &str, records: &[Produce]) -> Vec<LogPosition> {
    let mut positions = Vec::with_capacity(records.len());
    let mut in_flight = VecDeque::new();
    for record in records {
        loop {
            let mut future_record = FutureRecord::<[u8], [u8]>::to(topic);
            if let Some(partition) = record.partition {
                future_record = future_record.partition(partition);
            }
            if let Some(key) = &record.key {
                future_record = future_record.key(key);
            }
            if let Some(value) = &record.value {
                future_record = future_record.payload(value);
            }
            match producer.send_result(future_record) {
                Ok(delivery) => {
                    in_flight.push_back(delivery);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    let delivery = in_flight
                        .pop_front()
                        .expect("a full queue has records in flight");
                    positions.push(delivered(delivery.await));
                }
                Err((error, _)) => panic!("cannot produce: {error}"),
            }
        }
    }
    while let Some(delivery) = in_flight.pop_front() {
        positions.push(delivered(delivery.await));
    }
    positions
}

fn delivered(
    result: Result<
        warrant_kafka::rdkafka::producer::future_producer::OwnedDeliveryResult,
        impl std::fmt::Debug,
    >,
) -> LogPosition {
    let delivery = result
        .expect("delivery not cancelled")
        .expect("record delivered");
    LogPosition {
        partition: delivery.partition,
        offset: delivery.offset,
    }
}

/// Fold what was produced, partition by partition in offset order: what
/// every correct fold of the log computes.
fn ledger_of(records: &[(LogPosition, Produce)]) -> Ledger {
    let mut sorted: Vec<&(LogPosition, Produce)> = records.iter().collect();
    sorted.sort_by_key(|(position, _)| *position);
    let mut ledger = Ledger::new();
    for (position, record) in sorted {
        ledger.apply(
            *position,
            record.key.as_deref(),
            record.value.as_deref().unwrap_or_default(),
        );
    }
    ledger
}

/// The sample history re-keyed to `instance_id`, event ids unique to it.
fn history_for(instance_id: &str) -> Vec<Envelope> {
    samples::envelopes()
        .into_iter()
        .enumerate()
        .map(|(n, (_, mut envelope))| {
            envelope.instance_id = instance_id.to_owned();
            envelope.event_id = format!("{}-{n:04}", &instance_id[..8]);
            envelope
        })
        .collect()
}

fn instance_id(n: u64) -> String {
    format!("{:08x}-0000-4000-8000-{n:012x}", n)
}

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, Value) {
    let response = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn wait_caught_up(projector: &Projector) {
    tokio::time::timeout(Duration::from_secs(90), projector.caught_up())
        .await
        .expect("caught up within 90 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn folds_the_log_like_the_shared_ledger_and_resumes_without_reapplying() {
    let kafka = fresh_topics(3).await;
    let producer = kafka.producer().unwrap();
    let topic = kafka.log_topic.clone();

    // Five instances spread over the partitions by key, interleaved; a value
    // that is not Avro, a record without a value, and three records whose
    // key is not a UUID, in partitions 0 and 1: each partition has its own
    // quarantine, so how the projector interleaves partitions cannot matter.
    let ids: Vec<String> = std::iter::once(samples::INSTANCE_ID.to_owned())
        .chain((1..5).map(instance_id))
        .collect();
    let histories: Vec<Vec<Envelope>> = ids.iter().map(|id| history_for(id)).collect();
    let mut records = Vec::new();
    for step in 0..samples::envelopes().len() {
        for (n, history) in histories.iter().enumerate() {
            // Instance n stops after 3 + 2n events: a spread of statuses.
            if step < 3 + 2 * n {
                records.push(Produce::event(&history[step]));
            }
        }
    }
    records.push(Produce {
        partition: None,
        key: Some(ids[1].clone().into_bytes()),
        value: Some(b"not avro at all".to_vec()),
    });
    records.push(Produce {
        partition: None,
        key: Some(ids[2].clone().into_bytes()),
        value: None,
    });
    records.push(Produce {
        partition: Some(0),
        key: Some(b"not-a-uuid".to_vec()),
        value: Some(warrant_schema::encode(&histories[0][0]).unwrap()),
    });
    records.push(Produce {
        partition: Some(1),
        key: None,
        value: Some(vec![0xc3, 0x01, 0xff]),
    });
    records.push(Produce {
        partition: Some(0),
        key: Some(b"quarantine".to_vec()),
        value: Some(b"junk".to_vec()),
    });
    let positions = produce(&producer, &topic, &records).await;
    let mut log: Vec<(LogPosition, Produce)> = positions.into_iter().zip(records).collect();
    let used: std::collections::BTreeSet<i32> = log.iter().map(|(p, _)| p.partition).collect();
    assert!(
        used.len() >= 2,
        "keys should spread over partitions: {used:?}"
    );
    let ledger = ledger_of(&log);
    assert_eq!(ledger.len(), ids.len() + 2);

    let data = tempfile::tempdir().unwrap();
    let config = Config::new(kafka.clone(), data.path());

    // First run: fold everything.
    let projector = Projector::start(config.clone()).await.unwrap();
    assert_eq!(projector.opened(), &Opened::Fresh);
    wait_caught_up(&projector).await;
    let addr = projector.local_addr();
    for (id, folded) in ledger.instances() {
        let (status, body) = get(addr, &format!("/v1/instances/{id}")).await;
        assert_eq!(status, 200, "{id}: {body}");
        assert_eq!(
            body,
            serde_json::to_value(folded.record()).unwrap(),
            "record of {id}"
        );
    }
    let quarantine = |partition| ledger.get(&quarantine_instance(partition)).unwrap();
    assert_eq!(quarantine(0).history.len(), 2);
    assert_eq!(quarantine(1).history.len(), 1);
    let (status, _) = get(addr, "/v1/instances/quarantine").await;
    assert_eq!(status, 404);
    let (status, body) = get(addr, &format!("/v1/instances/{}", instance_id(99))).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "not_found");

    let mut highs = BTreeMap::new();
    for (position, _) in &log {
        let high = highs.entry(position.partition.to_string()).or_insert(0i64);
        *high = (*high).max(position.offset + 1);
    }
    for partition in 0..3 {
        highs.entry(partition.to_string()).or_insert(0);
    }
    let (_, checkpoint) = get(addr, "/v1/checkpoint").await;
    assert_eq!(checkpoint["topic"], topic.as_str());
    assert_eq!(
        checkpoint["partitions"],
        serde_json::to_value(&highs).unwrap()
    );
    assert_eq!(checkpoint["instances"], ledger.len() as u64);
    assert_eq!(checkpoint["digest"], ledger.checkpoint_digest().to_string());

    let (_, metrics) = {
        let response = reqwest::get(format!("http://{addr}/metrics"))
            .await
            .unwrap();
        (response.status(), response.text().await.unwrap())
    };
    assert!(
        metrics.contains(&format!(
            "warrant_projector_records_folded_total {}",
            log.len()
        )),
        "{metrics}"
    );

    projector.stop();
    let summary = projector.wait().await.unwrap();
    assert_eq!(summary.progress.records, log.len() as u64);

    // Second run on the same directory: resumes, applies nothing again.
    let projector = Projector::start(config.clone()).await.unwrap();
    assert_eq!(projector.opened(), &Opened::Resumed);
    wait_caught_up(&projector).await;
    assert_eq!(
        projector.progress().borrow().records,
        0,
        "nothing may be re-applied"
    );
    let addr = projector.local_addr();
    // Nothing new to fold, yet readiness names the view's offsets.
    let (status, ready) = get(addr, "/readyz").await;
    assert_eq!(status, 200);
    assert_eq!(ready["offsets"], checkpoint["partitions"]);
    let (_, record) = get(addr, &format!("/v1/instances/{}", samples::INSTANCE_ID)).await;
    let before = ledger.get(samples::INSTANCE_ID).unwrap().history.len();
    assert_eq!(record["history"].as_array().unwrap().len(), before);

    // A new event (a redelivered proposal) is folded once, as a Duplicate.
    let duplicate = Produce::event(&histories[0][0]);
    let positions = produce(&producer, &topic, std::slice::from_ref(&duplicate)).await;
    let position = positions[0];
    log.push((position, duplicate));
    let mut progress = projector.progress();
    tokio::time::timeout(
        Duration::from_secs(30),
        progress.wait_for(|p| {
            p.offsets
                .get(&position.partition)
                .is_some_and(|next| *next > position.offset)
        }),
    )
    .await
    .expect("the new record is committed within 30 s")
    .unwrap();
    let (_, record) = get(addr, &format!("/v1/instances/{}", samples::INSTANCE_ID)).await;
    let history = record["history"].as_array().unwrap();
    assert_eq!(history.len(), before + 1);
    let last: Outcome = serde_json::from_value(history[before]["outcome"].clone()).unwrap();
    assert_eq!(last.refusal(), Some(RefusalCode::Duplicate));
    let ledger = ledger_of(&log);
    assert_eq!(
        record,
        serde_json::to_value(ledger.get(samples::INSTANCE_ID).unwrap().record()).unwrap()
    );
    projector.stop();
    let summary = projector.wait().await.unwrap();
    assert_eq!(summary.progress.records, 1);

    // The binary, on a fresh directory, with --exit-at-end: rebuilds the
    // same view from offset 0 and exits 0 by itself.
    let rebuilt = tempfile::tempdir().unwrap();
    let status = tokio::process::Command::new(env!("CARGO_BIN_EXE_warrant-projector"))
        .args(["--exit-at-end", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(rebuilt.path())
        .env("WARRANT_KAFKA_BROKERS", BROKERS.as_str())
        .env("WARRANT_LOG_TOPIC", &topic)
        .env("WARRANT_LOG_FORMAT", "json")
        .kill_on_drop(true)
        .status();
    let status = tokio::time::timeout(Duration::from_secs(90), status)
        .await
        .expect("the binary exits at the end of the log")
        .unwrap();
    assert!(status.success(), "{status}");
    let (store, opened) = Store::open(rebuilt.path(), &topic, StoreOptions::default()).unwrap();
    assert_eq!(opened, Opened::Resumed);
    let checkpoint = store.checkpoint().unwrap();
    assert_eq!(checkpoint.digest, ledger.checkpoint_digest());
    assert_eq!(checkpoint.instances, ledger.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_of_another_incarnation_of_the_topic_is_rebuilt() {
    let kafka = fresh_topics(1).await;
    let producer = kafka.producer().unwrap();
    let history = history_for(&instance_id(42));
    let records: Vec<Produce> = history[..3].iter().map(Produce::event).collect();
    let positions = produce(&producer, &kafka.log_topic, &records).await;
    let log: Vec<(LogPosition, Produce)> = positions.into_iter().zip(records).collect();

    // A view that claims to have consumed far past the end of the log.
    let data = tempfile::tempdir().unwrap();
    {
        let (store, _) =
            Store::open(data.path(), &kafka.log_topic, StoreOptions::default()).unwrap();
        let store = std::sync::Arc::new(store);
        let mut projection = warrant_projector::Projection::new(store.clone(), 10).unwrap();
        let value = warrant_schema::encode(&history_for(&instance_id(43))[0]).unwrap();
        assert!(projection
            .apply(0, 500, Some(instance_id(43).as_bytes()), Some(&value))
            .unwrap());
        projection.commit_now().unwrap();
        assert_eq!(store.offsets().unwrap(), BTreeMap::from([(0, 501)]));
    }

    let mut config = Config::new(kafka.clone(), data.path());
    config.exit_at_end = true;
    let projector = Projector::start(config).await.unwrap();
    let store = projector.store().clone();
    let summary = tokio::time::timeout(Duration::from_secs(90), projector.wait())
        .await
        .expect("exits at the end")
        .unwrap();
    assert!(summary.progress.caught_up);
    assert_eq!(summary.progress.records, 3);
    assert!(
        store.record(&instance_id(43)).unwrap().is_none(),
        "the stale view was cleared"
    );
    let ledger = ledger_of(&log);
    assert_eq!(
        store.checkpoint().unwrap().digest,
        ledger.checkpoint_digest()
    );
    assert_eq!(store.offsets().unwrap(), BTreeMap::from([(0, 3)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_shards_fold_their_own_partitions_and_the_producer_agrees_on_where_keys_go() {
    let kafka = fresh_topics(6).await;
    let producer = kafka.producer().unwrap();
    // Instances until every partition has two; the producer's partitioner
    // (murmur2_random) must put each where warrant-authority says.
    let mut records = Vec::new();
    let mut per_partition = BTreeMap::<i32, usize>::new();
    let mut ids = Vec::new();
    for n in 1.. {
        let id = instance_id(n);
        let partition = warrant_authority::instance_partition(&id, 6).unwrap();
        let count = per_partition.entry(partition).or_default();
        if *count < 2 {
            *count += 1;
            ids.push(id.clone());
            records.extend(history_for(&id)[..4].iter().map(Produce::event));
        }
        if per_partition.len() == 6 && per_partition.values().all(|c| *c == 2) {
            break;
        }
    }
    let positions = produce(&producer, &kafka.log_topic, &records).await;
    for (position, record) in positions.iter().zip(&records) {
        let key = String::from_utf8(record.key.clone().unwrap()).unwrap();
        assert_eq!(
            Some(position.partition),
            warrant_authority::instance_partition(&key, 6),
            "{key}"
        );
    }
    let log: Vec<(LogPosition, Produce)> = positions.into_iter().zip(records).collect();
    let ledger = ledger_of(&log);

    let data = tempfile::tempdir().unwrap();
    let mut shards = Vec::new();
    for (n, spec) in ["0-2", "3-5"].into_iter().enumerate() {
        let mut config = Config::new(kafka.clone(), data.path().join(format!("shard-{n}")));
        config.partitions = spec.parse().unwrap();
        shards.push(Projector::start(config).await.unwrap());
    }
    for shard in &shards {
        wait_caught_up(shard).await;
    }
    let mut instances = 0;
    for (shard, owned) in shards.iter().zip([[0, 1, 2], [3, 4, 5]]) {
        let addr = shard.local_addr();
        let (_, checkpoint) = get(addr, "/v1/checkpoint").await;
        assert_eq!(
            checkpoint["owned"],
            serde_json::json!(owned),
            "{checkpoint}"
        );
        assert_eq!(checkpoint["log_partitions"], 6);
        let consumed: Vec<i32> = checkpoint["partitions"]
            .as_object()
            .unwrap()
            .keys()
            .map(|p| p.parse().unwrap())
            .collect();
        assert_eq!(consumed, owned, "{checkpoint}");
        // Its digest is the shared ledger's over its own partitions.
        let heads: Vec<(&str, &warrant_authority::Hash32)> = ledger
            .instances()
            .filter(|(id, _)| {
                owned.contains(&warrant_authority::instance_partition(id, 6).unwrap())
            })
            .map(|(id, folded)| (id.as_str(), &folded.state.head))
            .collect();
        assert_eq!(checkpoint["instances"], heads.len());
        instances += heads.len();
        assert_eq!(
            checkpoint["digest"],
            warrant_authority::checkpoint_digest(heads).to_string()
        );
        let (status, body) = get(addr, "/readyz").await;
        assert_eq!(status, 200, "{body}");
        for id in &ids {
            let mine = owned.contains(&warrant_authority::instance_partition(id, 6).unwrap());
            let (status, body) = get(addr, &format!("/v1/instances/{id}")).await;
            if mine {
                assert_eq!(status, 200, "{id}: {body}");
                let expected = serde_json::to_value(ledger.get(id).unwrap().record()).unwrap();
                assert_eq!(body, expected);
            } else {
                assert_eq!(status, 421, "{id}: {body}");
                assert_eq!(body["error"]["code"], "not_owner");
            }
        }
    }
    assert_eq!(instances, ids.len());
    for shard in shards {
        shard.stop();
        shard.wait().await.unwrap();
    }
}

/// Catch-up rate on `WARRANT_BENCH_EVENTS` events (default 100000): the
/// sample lifecycle of many instances, in overlapping waves, over 3
/// partitions. Prints records/s; asserts only that the view is right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a test: run with --ignored --nocapture in release mode"]
async fn catch_up_throughput() {
    let events: usize = std::env::var("WARRANT_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
    let kafka = fresh_topics(3).await;
    let producer = kafka.producer().unwrap();
    let per_instance = samples::envelopes().len();
    let instances = events.div_ceil(per_instance) as u64;
    let mut records = Vec::with_capacity(events);
    // Waves of 1000 instances: each wave's events interleave.
    for wave in (0..instances).step_by(1000) {
        let histories: Vec<Vec<Envelope>> = (wave..(wave + 1000).min(instances))
            .map(|n| history_for(&instance_id(n)))
            .collect();
        for step in 0..per_instance {
            for history in &histories {
                records.push(Produce::event(&history[step]));
            }
        }
    }
    records.truncate(events);
    let started = Instant::now();
    let positions = produce(&producer, &kafka.log_topic, &records).await;
    println!(
        "produced {} records in {:.2?}",
        records.len(),
        started.elapsed()
    );
    let log: Vec<(LogPosition, Produce)> = positions.into_iter().zip(records).collect();

    let data = tempfile::tempdir().unwrap();
    let mut config = Config::new(kafka.clone(), data.path());
    config.exit_at_end = true;
    if let Some(records) = std::env::var("WARRANT_BENCH_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        config.batch_records = records;
    }
    let started = Instant::now();
    let projector = Projector::start(config).await.unwrap();
    let store = projector.store().clone();
    let summary = projector.wait().await.unwrap();
    let elapsed = started.elapsed();
    println!(
        "folded {} records in {:.2?}: {:.0} records/s ({} batches)",
        summary.progress.records,
        elapsed,
        summary.progress.records as f64 / elapsed.as_secs_f64(),
        summary.progress.batches
    );
    assert_eq!(summary.progress.records, events as u64);
    let ledger = ledger_of(&log);
    assert_eq!(
        store.checkpoint().unwrap().digest,
        ledger.checkpoint_digest()
    );
}
