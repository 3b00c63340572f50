//! warrant-notifier against the real system: intake, the projector and the
//! notifier as processes on a real Kafka, and an HTTP receiver in the test
//! that records every request (and can fail, hang or refuse on purpose).
//!
//! - a proposal produces one *review needed* to the channel of the right
//!   role, signed like intake's webhook, with the id a receiver can compute;
//! - the reminder fires before the deadline, and never after a decision;
//! - an override produces an alert (webhook and Slack-shaped), and so does
//!   an ungranted execution;
//! - a receiver answering 500 three times then 200 gets the notification
//!   exactly once more, with the same id; one that always fails gets it
//!   parked, visible in `/v1/outbox` and `/metrics`;
//! - a receiver that hangs does not delay another channel;
//! - a bad channels file on SIGHUP keeps the channels in force;
//! - the notifier killed with SIGKILL mid-stream and restarted delivers every
//!   notification at least once and no notification with a new id; SIGTERM
//!   then stops it gracefully.
//!
//! The benchmark (`bench_delivery_lag`, ignored) prints delivery lag from
//! the log to the receiver beside Kafka's produce latency, measured in the
//! same run; see docs/notifier.md.
//!
//! Run `cargo build -p warrant-intake -p warrant-projector -p warrant-notifier`
//! first when their sources changed: [`binary`] builds only missing ones.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use warrant_e2e::{
    binary, eventually, free_port, get_json, repo_root, start_services, topic_flags, KillOnDrop,
    Services,
};
use warrant_kafka::KafkaArgs;

// The example principals (deploy/examples/principals.yaml). Example secrets only.
const SERVICE_TOKEN: &str = "example-service-remediator-token-0001";
const EXECUTOR_TOKEN: &str = "example-executor-deployer-token-0001";
const ALICE: &str = "example-alice-secret-2026-11";
const CAROL: &str = "example-carol-secret-2026-11";
/// The secret every test channel signs with.
const HOOK_SECRET: &str = "e2e-notifier-hook-secret";
/// The namespace docs/notifier.md gives for notification ids.
const NOTIFICATION_NAMESPACE: &str = "3b8e51d4-7a20-4f6c-9d13-c0a75e28f941";
/// The decision timeout of the test rule `remind-fast`, and how long before
/// the deadline the notifier reminds.
const REMIND_TIMEOUT_MS: i64 = 8_000;
const REMIND_BEFORE_MS: i64 = 5_000;
const WAIT: Duration = Duration::from_secs(20);

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The id a receiver expects: UUIDv5 of `{instance}/{seq}/{kind}`.
fn expected_id(instance: &str, seq: u64, kind: &str) -> String {
    let namespace = uuid::Uuid::parse_str(NOTIFICATION_NAMESPACE).expect("namespace");
    uuid::Uuid::new_v5(&namespace, format!("{instance}/{seq}/{kind}").as_bytes()).to_string()
}

fn hmac_hex(secret: &str, message: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(message.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

// ---- the receiver -----------------------------------------------------------

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    id: String,
    timestamp: Option<String>,
    signature: Option<String>,
    body: String,
    json: Value,
    at_ms: i64,
    answered: u16,
}

#[derive(Debug, Clone, Default)]
struct Receiver {
    log: Arc<Mutex<Vec<Received>>>,
    attempts: Arc<Mutex<HashMap<String, u32>>>,
}

impl Receiver {
    /// Listen on a free local port; the base URL.
    async fn start(&self) -> String {
        let app = axum::Router::new()
            .route("/{*path}", post(receive))
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port");
        let addr = listener.local_addr().expect("an address");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        format!("http://{addr}")
    }

    fn all(&self) -> Vec<Received> {
        self.log.lock().expect("lock").clone()
    }

    /// Requests to `path` (accepted or not).
    fn at(&self, path: &str) -> Vec<Received> {
        self.all().into_iter().filter(|r| r.path == path).collect()
    }

    /// Wait for a request to `path` that `matches`.
    async fn wait_for(&self, path: &str, what: &str, matches: impl Fn(&Value) -> bool) -> Received {
        eventually(WAIT, what, || async {
            self.at(path).into_iter().find(|r| matches(&r.json))
        })
        .await
    }
}

async fn receive(
    State(receiver): State<Receiver>,
    UrlPath(path): UrlPath<String>,
    headers: HeaderMap,
    body: String,
) -> StatusCode {
    let at_ms = now_ms();
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let id = header("idempotency-key").unwrap_or_default();
    let answer = match path.as_str() {
        "flaky" => {
            let mut attempts = receiver.attempts.lock().expect("lock");
            let seen = attempts.entry(id.clone()).or_insert(0);
            *seen += 1;
            if *seen <= 3 {
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                StatusCode::OK
            }
        }
        "broken" => StatusCode::INTERNAL_SERVER_ERROR,
        "hang" => StatusCode::OK,
        _ => StatusCode::OK,
    };
    receiver.log.lock().expect("lock").push(Received {
        path: path.clone(),
        id,
        timestamp: header("x-warrant-timestamp"),
        signature: header("x-warrant-signature"),
        json: serde_json::from_str(&body).unwrap_or(Value::Null),
        body,
        at_ms,
        answered: answer.as_u16(),
    });
    if path == "slow" {
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    if path == "hang" {
        // Never answers within the channel's timeout.
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    answer
}

// ---- the system under test ---------------------------------------------------

/// The example ruleset plus `remind-fast` (kind `test.remind`: one SRE,
/// decided within 8 s), inserted before the catch-all.
fn ruleset_file(dir: &Path) -> PathBuf {
    let example = std::fs::read_to_string(repo_root().join("deploy/examples/ruleset.yaml"))
        .expect("example ruleset");
    let catch_all = "  - id: everything-else\n";
    assert!(example.contains(catch_all), "the example's catch-all moved");
    let rule = format!(
        "  - id: remind-fast\n    match: {{ kind: \"test.remind\" }}\n    approvals_required: 1\n    approver_roles: [sre]\n    override_roles: [ic]\n    decision_timeout_ms: {REMIND_TIMEOUT_MS}\n    grant_ttl_ms: 60000\n    max_executions: 1\n\n"
    );
    let path = dir.join("ruleset.yaml");
    std::fs::write(
        &path,
        example.replacen(catch_all, &format!("{rule}{catch_all}"), 1),
    )
    .expect("write ruleset");
    path
}

/// A signed webhook channel posting to `{base}/{path}`.
fn webhook(name: &str, base: &str, path: &str, extra: &str) -> String {
    format!(
        "  - name: {name}\n    type: webhook\n    url: {base}/{path}\n    secret_env: E2E_HOOK_SECRET\n{extra}"
    )
}

struct System {
    args: KafkaArgs,
    dir: tempfile::TempDir,
    _services: Services,
    intake: String,
    projector: String,
    notifier_port: u16,
    notifier: Option<NotifierProcess>,
    http: reqwest::Client,
}

/// The notifier as a process; its log is printed if the test fails.
struct NotifierProcess {
    child: KillOnDrop,
    log: PathBuf,
}

impl Drop for NotifierProcess {
    fn drop(&mut self) {
        self.child.kill();
        if std::thread::panicking() {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("---- last lines of {} ----", self.log.display());
            let tail: Vec<&str> = text.lines().rev().take(80).collect();
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

impl System {
    async fn start(partitions: i32) -> System {
        let args = warrant_testkit::fresh_topics(partitions)
            .await
            .expect("broker");
        let dir = tempfile::tempdir().expect("tempdir");
        let projector = format!("http://127.0.0.1:{}", free_port());
        let intake_port = free_port();
        let services = start_services(
            &args,
            dir.path(),
            &projector,
            intake_port,
            false,
            &repo_root().join("deploy/examples/principals.yaml"),
            &ruleset_file(dir.path()),
        );
        let intake = format!("http://127.0.0.1:{intake_port}");
        eventually(WAIT, "intake to be ready", || async {
            (get_json(&format!("{intake}/readyz")).await.0 == 200).then_some(())
        })
        .await;
        System {
            args,
            dir,
            _services: services,
            intake,
            projector,
            notifier_port: free_port(),
            notifier: None,
            http: reqwest::Client::new(),
        }
    }

    fn notifier_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.notifier_port)
    }

    fn channels_path(&self) -> PathBuf {
        self.dir.path().join("channels.yaml")
    }

    /// Start (or restart) the notifier on this system's topics and store.
    async fn start_notifier(&mut self) {
        let log = self.dir.path().join("notifier.log");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("a log file");
        let child = Command::new(binary("warrant-notifier"))
            .args(topic_flags(&self.args))
            .arg("--channels")
            .arg(self.channels_path())
            .arg("--data-dir")
            .arg(self.dir.path().join("notifier"))
            .arg(format!("--listen=127.0.0.1:{}", self.notifier_port))
            .arg(format!("--intake-url={}", self.intake))
            .arg(format!("--reminder-before-ms={REMIND_BEFORE_MS}"))
            .env("E2E_HOOK_SECRET", HOOK_SECRET)
            .env("RUST_LOG", "info,warrant_notifier=debug")
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .spawn()
            .map(KillOnDrop)
            .expect("the notifier starts");
        self.notifier = Some(NotifierProcess { child, log });
        let url = self.notifier_url();
        eventually(WAIT, "the notifier to be ready", || async {
            (get_json(&format!("{url}/readyz")).await.0 == 200).then_some(())
        })
        .await;
    }

    fn notifier_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("notifier.log")).unwrap_or_default()
    }

    async fn post(&self, path: &str, token: &str, body: &Value) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.intake))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .expect("intake answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Propose `kind` on `target`; the instance id.
    async fn propose(&self, kind: &str, target: &str) -> String {
        let (status, body) = self
            .post(
                "/v1/proposals",
                SERVICE_TOKEN,
                &json!({ "action": { "kind": kind, "target": target } }),
            )
            .await;
        assert_eq!(status, 202, "{body}");
        body["instance_id"]
            .as_str()
            .expect("instance_id")
            .to_owned()
    }

    /// A reviewer's decision through the HMAC-signed webhook.
    async fn decide(&self, instance: &str, secret: &str, verdict: &str, justification: &str) {
        let body =
            json!({ "instance_id": instance, "verdict": verdict, "justification": justification })
                .to_string();
        let timestamp = (now_ms() / 1000).to_string();
        let signature = format!("v1={}", hmac_hex(secret, &format!("{timestamp}.{body}")));
        let response = self
            .http
            .post(format!("{}/v1/instances/{instance}/decisions", self.intake))
            .header("Content-Type", "application/json")
            .header("X-Warrant-Timestamp", timestamp)
            .header("X-Warrant-Signature", signature)
            .body(body)
            .send()
            .await
            .expect("intake answers");
        assert_eq!(response.status().as_u16(), 202, "{verdict} on {instance}");
    }

    async fn await_status(&self, instance: &str, status: &str) -> Value {
        eventually(WAIT, &format!("{instance} to be {status}"), || async {
            let (_, record) =
                get_json(&format!("{}/v1/instances/{instance}", self.projector)).await;
            (record["status"] == status).then_some(record)
        })
        .await
    }
}

fn signed_correctly(received: &Received) -> bool {
    match (&received.timestamp, &received.signature) {
        (Some(ts), Some(sig)) => {
            *sig == format!(
                "v1={}",
                hmac_hex(HOOK_SECRET, &format!("{ts}.{}", received.body))
            )
        }
        _ => false,
    }
}

// ---- the tests -----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_reach_the_right_people_once_retried_and_never_held_up() {
    let started = Instant::now();
    let receiver = Receiver::default();
    let base = receiver.start().await;
    let mut system = System::start(3).await;
    let channels = [
        webhook("sre", &base, "sre", "    routes:\n      - kinds: [review_needed, reminder]\n        roles: [sre]\n"),
        webhook("ic", &base, "ic", "    routes:\n      - kinds: [review_needed]\n        roles: [ic]\n      - kinds: [alert]\n"),
        webhook("proposer", &base, "outcomes", "    routes:\n      - kinds: [outcome]\n        proposers: [\"svc:remediator\"]\n"),
        webhook("flaky", &base, "flaky", "    backoff_initial_ms: 100\n    backoff_max_ms: 400\n    routes:\n      - kinds: [outcome]\n"),
        webhook("broken", &base, "broken", "    max_attempts: 2\n    backoff_initial_ms: 50\n    routes:\n      - kinds: [alert]\n"),
        // Takes everything and never answers: one request in flight at a
        // time, each given up on only after 60 s.
        webhook("hang", &base, "hang", "    timeout_ms: 60000\n    concurrency: 1\n"),
        format!("  - name: security\n    type: slack\n    url: {base}/slack\n    routes:\n      - kinds: [alert]\n"),
    ];
    std::fs::write(
        system.channels_path(),
        format!("channels:\n{}", channels.concat()),
    )
    .expect("write channels");
    system.start_notifier().await;

    // ---- A proposal: one review needed, to the SREs' channel (and the
    // incident commander's, who may override), signed, with the id anyone
    // can compute. Nothing for the proposer yet.
    let proposed_at = now_ms();
    let a = system.propose("test.remind", "sandbox/a").await;
    let review = receiver
        .wait_for("sre", "a review request for a", |n| {
            n["instance_id"] == a.as_str()
        })
        .await;
    // A channel that hangs (it received its first request by now, or soon)
    // did not hold this one up.
    assert!(
        review.at_ms - proposed_at < 3_000,
        "the review request took {} ms",
        review.at_ms - proposed_at
    );
    let n = &review.json;
    assert_eq!(n["kind"], "review_needed", "{n}");
    assert_eq!(n["status"], "AWAITING_DECISION");
    assert_eq!(n["seq"], 1);
    assert_eq!(n["roles"], json!(["sre", "ic"]));
    assert_eq!(n["rule"]["id"], "remind-fast");
    assert_eq!(n["action"]["kind"], "test.remind");
    assert_eq!(n["proposer"]["principal"], "svc:remediator");
    assert_eq!(n["id"], expected_id(&a, 1, "review_needed").as_str());
    assert_eq!(
        review.id,
        expected_id(&a, 1, "review_needed"),
        "Idempotency-Key"
    );
    assert!(signed_correctly(&review), "signature: {review:?}");
    assert_eq!(
        n["links"]["record"],
        format!("{}/v1/instances/{a}", system.intake).as_str()
    );
    assert_eq!(
        n["links"]["console"],
        format!("{}/console/#/instance/{a}", system.intake).as_str()
    );
    receiver
        .wait_for("ic", "the overriders' copy", |n| {
            n["instance_id"] == a.as_str()
        })
        .await;
    let hang = eventually(WAIT, "the hanging channel to be sent something", || async {
        let hang = receiver.at("hang");
        (!hang.is_empty()).then_some(hang)
    })
    .await;
    assert_eq!(hang.len(), 1, "one request in flight, and it hangs");

    // ---- B is approved at once: its outcome reaches the proposer, and
    // the flaky channel sees 500, 500, 500, then 200: the same id four
    // times and never again.
    let b = system.propose("test.remind", "sandbox/b").await;
    system.decide(&b, ALICE, "APPROVE", "fine").await;
    let outcome = receiver
        .wait_for("outcomes", "b's outcome", |n| {
            n["instance_id"] == b.as_str()
        })
        .await;
    assert_eq!(outcome.json["kind"], "outcome");
    assert_eq!(outcome.json["status"], "AUTHORIZED");
    assert_eq!(outcome.id, expected_id(&b, 2, "outcome"));
    let flaky_done = receiver
        .wait_for("flaky", "b's outcome accepted by the flaky receiver", |n| {
            n["instance_id"] == b.as_str()
        })
        .await;
    assert_eq!(flaky_done.id, outcome.id);
    eventually(WAIT, "the flaky receiver to accept b's outcome", || async {
        receiver
            .at("flaky")
            .iter()
            .any(|r| r.id == outcome.id && r.answered == 200)
            .then_some(())
    })
    .await;

    // ---- The reminder: a is still undecided 3 s after its proposal (its
    // deadline is 8 s, the reminder 5 s before): the SREs are reminded
    // before the deadline. b was decided: no reminder, even after its time.
    let reminder = receiver
        .wait_for("sre", "a's reminder", |n| {
            n["instance_id"] == a.as_str() && n["kind"] == "reminder"
        })
        .await;
    let deadline = reminder.json["decision_deadline"]
        .as_i64()
        .expect("deadline");
    assert!(
        reminder.at_ms < deadline,
        "reminded {} ms after the deadline",
        reminder.at_ms - deadline
    );
    assert!(
        reminder.at_ms >= deadline - REMIND_BEFORE_MS,
        "reminded {} ms too early",
        deadline - REMIND_BEFORE_MS - reminder.at_ms
    );
    assert_eq!(reminder.json["roles"], json!(["sre", "ic"]));
    assert_eq!(
        reminder.json["quorum"],
        json!({ "counted": 0, "required": 1 })
    );
    assert!(signed_correctly(&reminder));
    // An event after the reminder that leaves a paused (carol holds no
    // approver role: refused) does not remind again.
    system.decide(&a, CAROL, "APPROVE", "not my call").await;

    // ---- C: carol (ic) overrides; the alert goes to the incident
    // commander's webhook and to Slack, the outcome to the proposer. Then an
    // executor reports a run under a grant that was never issued.
    let c = system.propose("service.restart", "staging/c").await;
    system
        .decide(&c, CAROL, "OVERRIDE", "payments are down, no SRE reachable")
        .await;
    let alert = receiver
        .wait_for("ic", "the override alert", |n| {
            n["instance_id"] == c.as_str() && n["kind"] == "alert"
        })
        .await;
    assert_eq!(alert.json["alert"]["type"], "override", "{}", alert.json);
    assert_eq!(alert.json["alert"]["principal"], "carol");
    assert_eq!(alert.json["alert"]["applied"], true);
    assert_eq!(
        alert.json["alert"]["justification"],
        "payments are down, no SRE reachable"
    );
    assert_eq!(alert.id, expected_id(&c, 2, "alert"));
    let slack = receiver
        .wait_for("slack", "the override on slack", |m| {
            m["text"].as_str().is_some_and(|t| t.contains("Override"))
        })
        .await;
    assert!(slack.signature.is_none(), "a slack webhook is not signed");
    assert_eq!(slack.id, alert.id);
    let blocks = slack.json["blocks"].as_array().expect("blocks");
    let buttons: Vec<&str> = blocks
        .iter()
        .flat_map(|b| b["elements"].as_array().into_iter().flatten())
        .filter_map(|e| e["url"].as_str())
        .collect();
    assert!(
        buttons.contains(&format!("{}/console/#/instance/{c}", system.intake).as_str()),
        "{buttons:?}"
    );
    let c_outcome = receiver
        .wait_for("outcomes", "c's outcome", |n| {
            n["instance_id"] == c.as_str()
        })
        .await;
    assert_eq!(c_outcome.json["status"], "AUTHORIZED");
    let (status, body) = system
        .post(
            &format!("/v1/instances/{c}/reports"),
            EXECUTOR_TOKEN,
            &json!({ "grant_id": uuid::Uuid::new_v4().to_string(), "outcome": "SUCCEEDED" }),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let violation = receiver
        .wait_for("ic", "the ungranted execution alert", |n| {
            n["alert"]["type"] == "ungranted_execution"
        })
        .await;
    assert_eq!(violation.json["instance_id"], c.as_str());
    assert_eq!(violation.json["alert"]["reported_by"], "svc:deployer");

    // ---- The always-failing channel parks both alerts after 2 attempts:
    // kept, counted, listed.
    let outbox = eventually(WAIT, "two parked alerts", || async {
        let (_, outbox) = get_json(&format!("{}/v1/outbox", system.notifier_url())).await;
        (outbox["channels"]["broken"]["parked"] == 2).then_some(outbox)
    })
    .await;
    let parked = outbox["parked"].as_array().expect("parked");
    assert!(
        parked
            .iter()
            .all(|p| p["channel"] == "broken" && p["attempts"] == 2),
        "{outbox}"
    );
    assert_eq!(
        receiver.at("broken").len(),
        4,
        "2 alerts x 2 attempts, then nothing"
    );
    let metrics = reqwest::get(format!("{}/metrics", system.notifier_url()))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("warrant_notifier_parked_total{channel=\"broken\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("warrant_notifier_parked_pending{channel=\"broken\"} 2"));

    // ---- Exactly once more: the flaky receiver saw b's outcome 4 times
    // (3 x 500, then 200), all the same bytes, and nothing after the 200.
    // b's reminder time has long passed by now: none was sent.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let flaky: Vec<Received> = receiver
        .at("flaky")
        .into_iter()
        .filter(|r| r.id == outcome.id)
        .collect();
    assert_eq!(
        flaky.iter().map(|r| r.answered).collect::<Vec<_>>(),
        [500, 500, 500, 200],
        "{flaky:?}"
    );
    assert!(flaky
        .iter()
        .all(|r| r.json == flaky[0].json && signed_correctly(r)));
    assert!(
        !receiver
            .at("sre")
            .iter()
            .any(|r| r.json["instance_id"] == b.as_str() && r.json["kind"] == "reminder"),
        "b was decided: no reminder"
    );
    let reviews_of_a = receiver
        .at("sre")
        .iter()
        .filter(|r| r.json["instance_id"] == a.as_str() && r.json["kind"] == "review_needed")
        .count();
    assert_eq!(reviews_of_a, 1, "one review request per instance");
    let reminders_of_a = receiver
        .at("sre")
        .iter()
        .filter(|r| r.json["instance_id"] == a.as_str() && r.json["kind"] == "reminder")
        .count();
    assert_eq!(reminders_of_a, 1, "one reminder per instance");
    assert!(
        receiver
            .at("outcomes")
            .iter()
            .all(|r| r.json["instance_id"] != a.as_str()),
        "a has no outcome yet"
    );
    assert_eq!(
        receiver.at("hang").len(),
        1,
        "still the one request, still hanging"
    );

    // ---- SIGHUP with a channels file that does not validate: refused,
    // the channels in force keep working.
    std::fs::write(
        system.channels_path(),
        "channels:\n  - name: x\n    type: pager\n    url: http://h/\n",
    )
    .expect("break the channels file");
    let pid = system
        .notifier
        .as_ref()
        .map(|n| n.child.0.id())
        .expect("running");
    let hup = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(hup.success());
    eventually(WAIT, "the reload to be refused", || async {
        system
            .notifier_log()
            .contains("channels file refused; the previous channels stay in force")
            .then_some(())
    })
    .await;
    assert!(
        system
            .notifier_log()
            .contains("channels[0] \"x\": type \"pager\""),
        "the refusal names the entry"
    );
    let d = system.propose("test.remind", "sandbox/d").await;
    receiver
        .wait_for("sre", "d's review request after the refused reload", |n| {
            n["instance_id"] == d.as_str()
        })
        .await;

    // ---- A good file adds a channel: it takes what is derived from now on
    // (routing is decided when a notification is derived), and the
    // notifier idles afterwards instead of spinning on the change.
    let late = webhook(
        "late",
        &base,
        "late",
        "    routes:\n      - kinds: [review_needed]\n",
    );
    std::fs::write(
        system.channels_path(),
        format!("channels:\n{}{late}", channels.concat()),
    )
    .expect("write channels");
    let hup = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(hup.success());
    eventually(WAIT, "the reload", || async {
        system
            .notifier_log()
            .contains("channels reloaded")
            .then_some(())
    })
    .await;
    let e = system.propose("test.remind", "sandbox/e").await;
    receiver
        .wait_for("late", "e's review request on the new channel", |n| {
            n["instance_id"] == e.as_str()
        })
        .await;
    assert!(
        receiver
            .at("late")
            .iter()
            .all(|r| r.json["instance_id"] == e.as_str()),
        "nothing derived before the reload"
    );
    let cpu = || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // utime and stime, in clock ticks (fields 14 and 15; the command
        // name in field 2 has no spaces here).
        let fields: Vec<&str> = stat.split_whitespace().collect();
        let tick = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        tick(13) + tick(14)
    };
    let before = cpu();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = cpu() - before;
    assert!(
        used < 60,
        "the idle notifier used {used} clock ticks of CPU in 2 s"
    );
    eprintln!("notifier e2e: {:.1} s", started.elapsed().as_secs_f64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notifier_killed_mid_stream_resumes_without_losing_or_renaming_anything() {
    let receiver = Receiver::default();
    let base = receiver.start().await;
    let mut system = System::start(3).await;
    std::fs::write(
        system.channels_path(),
        // One at a time, 150 ms each: a backlog builds up, so the kill
        // finds notifications queued and in flight.
        format!(
            "channels:\n{}",
            webhook("all", &base, "slow", "    concurrency: 1\n")
        ),
    )
    .expect("write channels");
    system.start_notifier().await;

    let mut instances = Vec::new();
    for i in 0..36 {
        instances.push(
            system
                .propose("service.restart", &format!("staging/svc-{i}"))
                .await,
        );
        if i == 12 {
            // Mid-stream: deliveries for the first proposals are queued
            // and one is in flight.
            if let Some(mut notifier) = system.notifier.take() {
                notifier.child.kill();
            }
            let delivered = receiver.at("slow").len();
            assert!(
                delivered < 13,
                "every delivery was done before the kill: {delivered}"
            );
        }
        if i == 24 {
            system.start_notifier().await;
        }
    }
    // Events after the restart for instances proposed before and during the
    // outage: every third is approved.
    let approved: Vec<&String> = instances.iter().step_by(3).collect();
    for instance in &approved {
        system.decide(instance, ALICE, "APPROVE", "ok").await;
    }
    for instance in &approved {
        system.await_status(instance, "AUTHORIZED").await;
    }

    let mut expected: BTreeSet<String> = instances
        .iter()
        .map(|i| expected_id(i, 1, "review_needed"))
        .collect();
    expected.extend(approved.iter().map(|i| expected_id(i, 2, "outcome")));
    eventually(WAIT, "every notification at least once", || async {
        let got: BTreeSet<String> = receiver.at("slow").into_iter().map(|r| r.id).collect();
        expected.is_subset(&got).then_some(())
    })
    .await;
    // Give a stray re-derivation time to show up before looking.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let received = receiver.at("slow");
    let mut bodies: BTreeMap<String, Value> = BTreeMap::new();
    for r in &received {
        assert!(
            expected.contains(&r.id),
            "a notification with an id no event explains: {}",
            r.json
        );
        assert_eq!(r.json["id"], r.id.as_str());
        // A redelivery is the same document; only the signature's
        // timestamp may differ.
        if let Some(first) = bodies.get(&r.id) {
            assert_eq!(first, &r.json, "the same id with another body");
        } else {
            bodies.insert(r.id.clone(), r.json.clone());
        }
    }
    assert_eq!(bodies.len(), expected.len());
    let log = system.notifier_log();
    assert!(
        log.contains("store opened; resuming from its offsets"),
        "{log}"
    );

    // SIGTERM: a graceful stop, exit 0, soon.
    let mut notifier = system.notifier.take().expect("running");
    let pid = notifier.child.0.id().to_string();
    let term = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(term.success());
    let stopped = Instant::now();
    let status = loop {
        if let Some(status) = notifier.child.0.try_wait().expect("wait") {
            break status;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(15),
            "no graceful stop in 15 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}");
    assert!(system.notifier_log().contains("notifier stopped"));
    let (code, _) = get_json(&format!("{}/healthz", system.notifier_url())).await;
    assert_eq!(code, 0, "HTTP stopped too");
    eprintln!(
        "after SIGKILL: {} notifications expected, {} deliveries ({} redelivered)",
        expected.len(),
        received.len(),
        received.len() - expected.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_notifier_does_not_remind_of_what_was_decided_while_it_was_down() {
    let receiver = Receiver::default();
    let base = receiver.start().await;
    let mut system = System::start(3).await;
    std::fs::write(
        system.channels_path(),
        format!(
            "channels:\n{}",
            webhook(
                "sre",
                &base,
                "sre",
                "    routes:\n      - kinds: [review_needed, reminder, outcome]\n"
            )
        ),
    )
    .expect("write channels");
    system.start_notifier().await;
    let instance = system.propose("test.remind", "sandbox/down").await;
    receiver
        .wait_for("sre", "the review request", |n| {
            n["instance_id"] == instance.as_str() && n["kind"] == "review_needed"
        })
        .await;
    let proposed = now_ms();

    // Down while the decision lands and while the reminder falls due.
    if let Some(mut notifier) = system.notifier.take() {
        notifier.child.kill();
    }
    system.decide(&instance, ALICE, "APPROVE", "ok").await;
    system.await_status(&instance, "AUTHORIZED").await;
    let due = proposed + REMIND_TIMEOUT_MS - REMIND_BEFORE_MS;
    let wait = u64::try_from(due + 1_000 - now_ms()).unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(wait)).await;

    // Back up: it folds the decision before it looks at reminders.
    system.start_notifier().await;
    receiver
        .wait_for("sre", "the outcome", |n| {
            n["instance_id"] == instance.as_str() && n["kind"] == "outcome"
        })
        .await;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let reminded: Vec<Value> = receiver
        .at("sre")
        .into_iter()
        .filter(|r| r.json["instance_id"] == instance.as_str() && r.json["kind"] == "reminder")
        .map(|r| r.json)
        .collect();
    assert!(
        reminded.is_empty(),
        "reminded of a decided instance: {reminded:?}"
    );
}

/// Delivery lag from the log to the receiver at ~1 000 instances/min, beside
/// Kafka's produce latency (acks=all) measured in the same run:
///
/// ```text
/// cargo test -p warrant-e2e --test notifier -- --ignored --nocapture bench_delivery_lag
/// ```
///
/// `WARRANT_BENCH_PER_MINUTE` (default 1000) and `WARRANT_BENCH_SECS`
/// (default 60) change the load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run it on purpose, it takes a minute"]
async fn bench_delivery_lag() {
    use warrant_kafka::rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
    use warrant_kafka::rdkafka::producer::FutureRecord;

    let per_minute: u64 = std::env::var("WARRANT_BENCH_PER_MINUTE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let seconds: u64 = std::env::var("WARRANT_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let receiver = Receiver::default();
    let base = receiver.start().await;
    let mut system = System::start(3).await;
    std::fs::write(
        system.channels_path(),
        format!(
            "channels:\n{}",
            webhook(
                "bench",
                &base,
                "bench",
                "    routes:\n      - kinds: [review_needed]\n"
            )
        ),
    )
    .expect("write channels");
    system.start_notifier().await;

    // A topic of its own for the produce probe, on the same broker.
    let probe_topic = format!("{}-probe", system.args.log_topic);
    let admin = system.args.admin().expect("admin");
    admin
        .create_topics(
            &[NewTopic::new(&probe_topic, 3, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .expect("probe topic");
    let producer = system.args.producer().expect("producer");
    // Warm up: the first sends wait for the new topic's metadata.
    for i in 0..20 {
        let key = format!("warm-{i}");
        producer
            .send(
                FutureRecord::to(&probe_topic)
                    .key(&key)
                    .payload(&b"warm"[..]),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(error, _)| error)
            .expect("a warm-up record");
    }

    let total = per_minute * seconds / 60;
    let interval = Duration::from_micros(60_000_000 / per_minute.max(1));
    let system = Arc::new(system);
    let accepted: Arc<Mutex<HashMap<String, i64>>> = Arc::default();
    let produce_ms: Arc<Mutex<Vec<f64>>> = Arc::default();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tasks = tokio::task::JoinSet::new();
    let began = Instant::now();
    for i in 0..total {
        ticker.tick().await;
        let (system, accepted) = (system.clone(), accepted.clone());
        tasks.spawn(async move {
            let id = system
                .propose("service.restart", &format!("staging/bench-{i}"))
                .await;
            accepted.lock().expect("lock").insert(id, now_ms());
        });
        let (producer, produce_ms, topic) =
            (producer.clone(), produce_ms.clone(), probe_topic.clone());
        tasks.spawn(async move {
            let payload = vec![b'x'; 1024];
            let key = format!("probe-{i}");
            let sent = Instant::now();
            let delivered = producer
                .send(
                    FutureRecord::to(&topic).key(&key).payload(&payload),
                    Duration::from_secs(30),
                )
                .await;
            if delivered.is_ok() {
                produce_ms
                    .lock()
                    .expect("lock")
                    .push(sent.elapsed().as_secs_f64() * 1000.0);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let offered = began.elapsed().as_secs_f64();
    let accepted = accepted.lock().expect("lock").clone();
    eventually(Duration::from_secs(60), "every review request", || async {
        let got: BTreeSet<String> = receiver
            .at("bench")
            .into_iter()
            .filter_map(|r| r.json["instance_id"].as_str().map(str::to_owned))
            .collect();
        accepted.keys().all(|id| got.contains(id)).then_some(())
    })
    .await;
    let mut from_log = Vec::new();
    let mut from_accept = Vec::new();
    for r in receiver.at("bench") {
        let id = r.json["instance_id"].as_str().unwrap_or_default();
        if let Some(recorded_at) = r.json["recorded_at"].as_i64() {
            from_log.push((r.at_ms - recorded_at) as f64);
        }
        if let Some(at) = accepted.get(id) {
            from_accept.push((r.at_ms - at) as f64);
        }
    }
    let mut produce = produce_ms.lock().expect("lock").clone();
    let pct = |values: &mut Vec<f64>, p: f64| {
        values.sort_by(f64::total_cmp);
        let index = ((values.len() as f64 - 1.0) * p).round() as usize;
        values.get(index).copied().unwrap_or(f64::NAN)
    };
    println!(
        "notifier bench: {} instances in {offered:.1} s ({:.0}/min offered), {} notifications received",
        accepted.len(),
        accepted.len() as f64 * 60.0 / offered,
        receiver.at("bench").len()
    );
    println!(
        "delivery lag, recorded_at -> receipt: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        pct(&mut from_log, 0.5),
        pct(&mut from_log, 0.99),
        pct(&mut from_log, 1.0)
    );
    println!(
        "delivery lag, intake's 202 -> receipt: p50 {:.0} ms, p99 {:.0} ms",
        pct(&mut from_accept, 0.5),
        pct(&mut from_accept, 0.99)
    );
    println!(
        "kafka produce (acks=all, 1 KiB, same broker, same run): p50 {:.1} ms, p99 {:.1} ms ({} records)",
        pct(&mut produce, 0.5),
        pct(&mut produce, 0.99),
        produce.len()
    );
}
