//! Intake on a Kafka that cannot take the ruleset yet (a broker still
//! loading, or a rulesets topic not created yet): it stays up, retries with
//! backoff and says so, is not ready and refuses proposals with 503 +
//! `Retry-After` meanwhile, becomes ready once the ruleset is published,
//! and stops cleanly on SIGTERM while still retrying.
//!
//! The dev broker does not auto-create topics (deploy/kafka), so a rulesets
//! topic that was never created stays missing until the test creates it.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{count, create_topic, eventually, example, produce, read_all};
use rdkafka::message::Message;
use reqwest::StatusCode;
use serde_json::{json, Value};
use warrant_intake::{Args, Intake};
use warrant_schema::samples;

const SERVICE: &str = "example-service-remediator-token-0001";

async fn get(base: &str, path: &str) -> (StatusCode, Value) {
    let response = reqwest::get(format!("{base}{path}"))
        .await
        .expect("an answer");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn propose(base: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{base}/v1/proposals"))
        .bearer_auth(SERVICE)
        .json(&json!({
            "action": { "kind": "service.restart", "target": "prod/payments/api", "parameters": { "strategy": "rolling" } }
        }))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .expect("an answer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intake_waits_for_the_rulesets_topic_and_is_not_ready_meanwhile() {
    let topics = warrant_testkit::fresh_topics(3)
        .await
        .expect("broker and topics");
    let mut args = Args::for_tests(
        topics.clone(),
        example("ruleset.yaml"),
        example("principals.yaml"),
    );
    let rulesets_topic = format!("{}-later", topics.rulesets_topic);
    args.kafka.rulesets_topic = rulesets_topic.clone();
    args.produce_timeout_ms = 1000;
    args.shutdown_timeout_ms = 3000;
    // Waiting on ingress: nothing may be appended before the ruleset it
    // cites is published.
    let ingress_proposal = warrant_schema::encode(&samples::proposal_submitted()).expect("encode");
    produce(
        &topics,
        &topics.proposals_topic,
        &[(None, ingress_proposal)],
    )
    .await;

    let intake = Intake::start(args)
        .await
        .expect("intake starts without the rulesets topic");
    let base = format!("http://{}", intake.local_addr());

    let (status, body) = get(&base, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["status"], "not_ready", "{body}");
    assert_eq!(body["checks"]["ruleset_published"], false, "{body}");

    let started = Instant::now();
    let refused = propose(&base).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], "ruleset_unpublished", "{body}");

    // Give ingress a chance it must not take.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        count(&topics, &topics.log_topic),
        0,
        "appended before the ruleset was published"
    );
    assert_eq!(
        get(&base, "/readyz").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );

    // The topic appears: intake publishes, becomes ready, and works.
    create_topic(
        &topics,
        &rulesets_topic,
        1,
        &[("cleanup.policy", "compact")],
    )
    .await;
    let mut ready = Value::Null;
    let became_ready = {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let (status, body) = get(&base, "/readyz").await;
            if status == StatusCode::OK {
                ready = body;
                break true;
            }
            if Instant::now() > deadline {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    assert!(
        became_ready,
        "/readyz never turned 200 once the topic existed"
    );
    assert_eq!(ready["checks"]["ruleset_published"], true, "{ready}");

    let text = std::fs::read(example("ruleset.yaml")).expect("ruleset");
    let digest = warrant_authority::sha256_hex(&text);
    let published = read_all(&topics, &rulesets_topic);
    assert!(
        !published.is_empty(),
        "the ruleset is not on the rulesets topic"
    );
    for record in &published {
        assert_eq!(record.key(), Some(digest.as_bytes()));
        assert_eq!(record.payload(), Some(text.as_slice()));
    }

    assert_eq!(propose(&base).await.status(), StatusCode::ACCEPTED);
    assert!(
        eventually(Duration::from_secs(60), || count(
            &topics,
            &topics.log_topic
        ) >= 2)
        .await,
        "ingress did not start once the ruleset was published"
    );

    intake.stop();
    intake.wait().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_retries_with_backoff_says_so_and_stops_cleanly_on_sigterm() {
    let topics = warrant_testkit::fresh_topics(3)
        .await
        .expect("broker and topics");
    let dir = tempfile::tempdir().expect("tempdir");
    let log_path = dir.path().join("intake.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    let rulesets_topic = format!("{}-never", topics.rulesets_topic);
    let mut child = Command::new(env!("CARGO_BIN_EXE_warrant-intake"))
        .args(["--brokers", &topics.brokers])
        .args(["--log-topic", &topics.log_topic])
        .args(["--proposals-topic", &topics.proposals_topic])
        .args(["--signals-topic", &topics.signals_topic])
        .args(["--dead-letter-topic", &topics.dead_letter_topic])
        .args(["--rulesets-topic", &rulesets_topic])
        .arg("--ruleset")
        .arg(example("ruleset.yaml"))
        .arg("--principals")
        .arg(example("principals.yaml"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--ingress-group", &format!("{}-intake", topics.log_topic)])
        .args(["--sweeper=false", "--log-format", "json"])
        .args([
            "--produce-timeout-ms",
            "500",
            "--shutdown-timeout-ms",
            "2000",
        ])
        .env("RUST_LOG", "info")
        .env_remove("WARRANT_INGRESS")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start warrant-intake");
    let base = format!("http://127.0.0.1:{port}");

    let lines = || -> Vec<Value> {
        std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    };
    let is_retry = |line: &Value| {
        line["level"] == "WARN"
            && line["topic"] == rulesets_topic.as_str()
            && line["attempt"].is_u64()
            && line["retry_in_ms"].is_u64()
            && line["problem"].is_string()
    };
    // Two retries logged, and /readyz answering 503 all along.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut readyz = Vec::new();
    while lines().iter().filter(|l| is_retry(l)).count() < 2 {
        if let Some(status) = child.try_wait().expect("try_wait") {
            panic!(
                "intake exited ({status}) instead of retrying:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "no retries logged:\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        if let Ok(response) = reqwest::get(format!("{base}/readyz")).await {
            readyz.push(response.status());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!readyz.is_empty(), "/readyz never answered");
    assert!(
        readyz.iter().all(|s| *s == StatusCode::SERVICE_UNAVAILABLE),
        "{readyz:?}"
    );
    assert_eq!(
        propose(&base).await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );

    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(term.success());
    let stopping = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if stopping.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!(
                "intake did not stop within 30 s of SIGTERM:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(status.success(), "exit {status}:\n{text}");
    assert!(
        text.contains("stopping before the ruleset was published"),
        "{text}"
    );
    // A member that cannot consume yet would hold its partitions idle.
    assert!(!text.contains("ingress subscribed"), "{text}");
}
