//! The HTTP API over the real broker: a 2xx names where the envelope is on
//! the log; a log topic that does not answer is a 503 within the produce
//! timeout; SIGHUP publishes a changed ruleset and swaps the principals.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{example, read_all};
use rdkafka::message::Message;
use serde_json::{json, Value};
use warrant_intake::{Args, Intake};
use warrant_schema::{Envelope, EventBody};

const SERVICE: &str = "example-service-remediator-token-0001";

fn restart() -> Value {
    json!({
        "action": { "kind": "service.restart", "target": "prod/payments/api", "parameters": { "strategy": "rolling" } }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_202_means_the_envelope_is_on_the_log_where_it_says() {
    let topics = warrant_testkit::fresh_topics(3)
        .await
        .expect("broker and topics");
    let mut args = Args::for_tests(
        topics.clone(),
        example("ruleset.yaml"),
        example("principals.yaml"),
    );
    args.ingress = false;
    let intake = Intake::start(args).await.expect("intake starts");
    let base = format!("http://{}", intake.local_addr());
    let client = reqwest::Client::new();

    let response = client
        .post(format!("{base}/v1/proposals"))
        .bearer_auth(SERVICE)
        .json(&restart())
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.expect("JSON");
    let log = read_all(&topics, &topics.log_topic);
    let found = log
        .iter()
        .find(|m| {
            Some(i64::from(m.partition())) == body["partition"].as_i64()
                && Some(m.offset()) == body["offset"].as_i64()
        })
        .expect("a record at the answered position");
    let envelope: Envelope =
        warrant_schema::decode(found.payload().expect("value")).expect("envelope");
    assert_eq!(Some(envelope.event_id.as_str()), body["event_id"].as_str());
    assert_eq!(
        Some(envelope.instance_id.as_str()),
        body["instance_id"].as_str()
    );
    assert_eq!(found.key(), Some(envelope.instance_id.as_bytes()));
    assert!(matches!(envelope.body, EventBody::ActionProposed(_)));

    // Readiness follows the log topic's metadata, checked in the background.
    let mut ready = false;
    for _ in 0..100 {
        let status = client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .map(|r| r.status());
        if matches!(status, Ok(s) if s == 200) {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "/readyz never turned ready");
    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(metrics.contains("warrant_intake_appends_total{origin=\"http\",event=\"ActionProposed\",result=\"ok\"} 1"), "{metrics}");

    intake.stop();
    intake.wait().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_that_does_not_acknowledge_is_a_503_within_the_produce_timeout() {
    let topics = warrant_testkit::fresh_topics(3)
        .await
        .expect("broker and topics");
    let mut args = Args::for_tests(
        topics.clone(),
        example("ruleset.yaml"),
        example("principals.yaml"),
    );
    args.ingress = false;
    // The broker does not auto-create topics: nothing can ever be acknowledged.
    args.kafka.log_topic = format!("{}-missing", topics.log_topic);
    args.produce_timeout_ms = 800;
    // The record stays queued in the producer; don't wait long to flush it at the end.
    args.shutdown_timeout_ms = 1000;
    let intake = Intake::start(args).await.expect("intake starts");
    let base = format!("http://{}", intake.local_addr());
    let client = reqwest::Client::new();
    let started = std::time::Instant::now();
    let response = client
        .post(format!("{base}/v1/proposals"))
        .bearer_auth(SERVICE)
        .json(&restart())
        .send()
        .await
        .expect("request");
    let elapsed = started.elapsed();
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], "log_unavailable");
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    let ready = client
        .get(format!("{base}/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 503);
    intake.stop();
    intake.wait().await.expect("stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_publishes_a_changed_ruleset_and_swaps_the_principals() {
    let topics = warrant_testkit::fresh_topics(3)
        .await
        .expect("broker and topics");
    let dir = tempfile::tempdir().expect("tempdir");
    let ruleset = dir.path().join("ruleset.yaml");
    let principals = dir.path().join("principals.yaml");
    std::fs::copy(example("ruleset.yaml"), &ruleset).expect("copy");
    std::fs::copy(example("principals.yaml"), &principals).expect("copy");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    let mut child = Command::new(env!("CARGO_BIN_EXE_warrant-intake"))
        .args(["--brokers", &topics.brokers])
        .args(["--log-topic", &topics.log_topic])
        .args(["--rulesets-topic", &topics.rulesets_topic])
        .args(["--principals-topic", &topics.principals_topic])
        .arg("--ruleset")
        .arg(&ruleset)
        .arg("--principals")
        .arg(&principals)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--ingress=false", "--sweeper=false", "--log-format", "json"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start warrant-intake");
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let propose = |token: &'static str| {
        let client = client.clone();
        let base = base.clone();
        async move {
            client
                .post(format!("{base}/v1/proposals"))
                .bearer_auth(token)
                .json(&restart())
                .send()
                .await
        }
    };
    let mut up = false;
    for _ in 0..200 {
        if propose(SERVICE)
            .await
            .map(|r| r.status() == 202)
            .unwrap_or(false)
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "intake did not come up");

    // A new ruleset version and a new service token.
    // Whatever version the example carries: a replace of one literal date
    // silently became a no-op the day the example was bumped.
    let new_rules: String = std::fs::read_to_string(&ruleset)
        .expect("ruleset")
        .lines()
        .map(|line| match line.starts_with("version:") {
            true => "version: \"reloaded-by-sighup\"\n".to_owned(),
            false => format!("{line}\n"),
        })
        .collect();
    assert!(new_rules.contains("version: \"reloaded-by-sighup\""));
    std::fs::write(&ruleset, &new_rules).expect("write");
    let new_principals = std::fs::read_to_string(&principals).expect("principals").replace(
        "tokens:\n",
        "tokens:\n  - principal: \"svc:new\"\n    kind: service\n    token: \"a-token-added-by-reload\"\n",
    );
    std::fs::write(&principals, new_principals).expect("write");
    assert_eq!(
        propose("a-token-added-by-reload")
            .await
            .expect("answer")
            .status(),
        401
    );
    let hup = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .expect("kill -HUP");
    assert!(hup.success());

    let mut reloaded = false;
    for _ in 0..100 {
        if propose("a-token-added-by-reload")
            .await
            .map(|r| r.status() == 202)
            .unwrap_or(false)
        {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(reloaded, "the new token was not accepted after SIGHUP");
    let answer: Value = propose(SERVICE)
        .await
        .expect("answer")
        .json()
        .await
        .expect("JSON");
    let digest = warrant_authority::sha256_hex(new_rules.as_bytes());
    assert_eq!(answer["ruleset"]["digest"], digest.as_str());
    assert_eq!(answer["ruleset"]["version"], "reloaded-by-sighup");
    let published = read_all(&topics, &topics.rulesets_topic);
    assert_eq!(published.len(), 2);
    let latest = published
        .iter()
        .find(|m| m.key() == Some(digest.as_bytes()))
        .expect("the new ruleset, keyed by its digest");
    assert_eq!(latest.payload(), Some(new_rules.as_bytes()));
    // The reviewer directory went to the principals topic at start, keyed
    // by its digest and without a secret; the reload changed only tokens,
    // so no second version was published.
    let directories = read_all(&topics, &topics.principals_topic);
    assert_eq!(directories.len(), 1);
    let directory = directories[0].payload().expect("a directory");
    assert_eq!(
        directories[0].key(),
        Some(warrant_authority::sha256_hex(directory).as_bytes())
    );
    let text = String::from_utf8_lossy(directory);
    assert!(text.contains("\"principal\":\"alice\""), "{text}");
    assert!(!text.contains("example-alice-secret"), "{text}");

    // A broken file changes nothing.
    std::fs::write(&ruleset, "rules: [").expect("write");
    Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .expect("kill -HUP");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let answer: Value = propose(SERVICE)
        .await
        .expect("answer")
        .json()
        .await
        .expect("JSON");
    assert_eq!(answer["ruleset"]["digest"], digest.as_str());

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    let status = child.wait().expect("reaped");
    assert!(status.success(), "graceful stop failed: {status}");
}
