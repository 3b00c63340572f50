//! The seed paper's whole flow, end to end, through the real binaries on a
//! real Kafka, driven as users would: agents propose over HTTP and (from
//! Python, with only the .avsc files) over the proposals topic; policy
//! engines report over HTTP and over the signals topic; the instance pauses
//! and an early claim is refused; a self-approval is refused; two SREs
//! approve through the signed webhook; a claim for another action is
//! refused and the right one granted and reported; a DENY is overridden by
//! the incident commander; an undecided instance expires by the sweeper; a
//! malformed ingress record is dead-lettered; and the auditors' replay
//! verifies every record against the projector.
//!
//! A second test plays adversarial clients against the same binaries: a
//! late signal past the decision deadline, an executor closing another's
//! grant, colliding idempotency keys, and a squatted instance id.
//!
//! Run `cargo build -p warrant-intake -p warrant-projector -p warrant-replay`
//! first when their sources changed: [`binary`] builds only missing ones.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use warrant_e2e::{
    eventually, free_port, get_json, read_topic, replay_verifies, repo_root, start_services,
    venv_python, Services,
};
use warrant_kafka::rdkafka::message::{Headers, Message};
use warrant_kafka::rdkafka::producer::FutureRecord;
use warrant_kafka::KafkaArgs;

// The example principals (deploy/examples/principals.yaml). Example secrets only.
const SERVICE_TOKEN: &str = "example-service-remediator-token-0001";
const POLICY_TOKEN: &str = "example-policy-opa-token-0001";
const EXECUTOR_TOKEN: &str = "example-executor-deployer-token-0001";
const ALICE: &str = "example-alice-secret-2026-11";
const BOB: &str = "example-bob-secret-2026-11";
const CAROL: &str = "example-carol-secret-2026-11";
// Test only: dave proposes with a service token and is also an SRE reviewer.
// No example principal is both, so this lives in a tempdir copy of the file.
const DAVE_TOKEN: &str = "e2e-service-dave-token-0001";
const DAVE: &str = "e2e-reviewer-dave-secret-0001";
const NOT_A_REVIEWER: &str = "e2e-nobody-holds-this-secret";
// Test only: two more executors whose `principal/key` pairs would have
// derived one event id (`e2e:deployer` + `x/1`, `e2e:deployer/x` + `1`).
const DEPLOYER_TOKEN: &str = "e2e-executor-deployer-token-0001";
const DEPLOYER_X_TOKEN: &str = "e2e-executor-deployer-x-token-0001";

/// The decision timeout of the test-only rule `fast-expiry`.
const DECISION_TIMEOUT_MS: i64 = 1500;
/// How long any one asynchronous step may take.
const WAIT: Duration = Duration::from_secs(20);

/// The example principals plus dave, in a file of the test's own.
fn principals_file(dir: &Path) -> PathBuf {
    let example = std::fs::read_to_string(repo_root().join("deploy/examples/principals.yaml"))
        .expect("example principals");
    assert!(example.contains("\ntokens:\n") && example.contains("\nreviewers:\n"));
    let text = example
        .replacen(
            "\ntokens:\n",
            &format!(
                "\ntokens:\n  - principal: dave\n    kind: service\n    token: \"{DAVE_TOKEN}\"\n  - principal: \"e2e:deployer\"\n    kind: executor\n    token: \"{DEPLOYER_TOKEN}\"\n  - principal: \"e2e:deployer/x\"\n    kind: executor\n    token: \"{DEPLOYER_X_TOKEN}\"\n"
            ),
            1,
        )
        .replacen(
            "\nreviewers:\n",
            &format!(
                "\nreviewers:\n  - principal: dave\n    roles: [sre]\n    secrets: [\"{DAVE}\"]\n"
            ),
            1,
        );
    let path = dir.join("principals.yaml");
    std::fs::write(&path, text).expect("write principals");
    path
}

/// The example ruleset plus `fast-expiry` (kind `test.expire`, decided
/// within 1.5 s or expired) and `late-allow` (kind `test.late`: authorized
/// by an OPA ALLOW alone, within 1.5 s), inserted before the catch-all.
fn ruleset_file(dir: &Path) -> PathBuf {
    let example = std::fs::read_to_string(repo_root().join("deploy/examples/ruleset.yaml"))
        .expect("example ruleset");
    let catch_all = "  - id: everything-else\n";
    assert!(example.contains(catch_all), "the example's catch-all moved");
    let rule = format!(
        "  - id: fast-expiry\n    match: {{ kind: \"test.expire\" }}\n    approvals_required: 1\n    approver_roles: [sre]\n    override_roles: [ic]\n    decision_timeout_ms: {DECISION_TIMEOUT_MS}\n    grant_ttl_ms: 60000\n    max_executions: 1\n\n"
    );
    let late = format!(
        "  - id: late-allow\n    match: {{ kind: \"test.late\" }}\n    approvals_required: 1\n    approver_roles: [sre]\n    override_roles: [ic]\n    required_signals: [opa]\n    review: unless_all_signals_allow\n    decision_timeout_ms: {DECISION_TIMEOUT_MS}\n    grant_ttl_ms: 60000\n\n"
    );
    let text = example.replacen(catch_all, &format!("{rule}{late}{catch_all}"), 1);
    let path = dir.join("ruleset.yaml");
    std::fs::write(&path, text).expect("write ruleset");
    path
}

/// `HMAC-SHA256(secret, timestamp + "." + body)` as the webhook header value.
fn signature(secret: &str, timestamp: u64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(format!("{timestamp}.{body}").as_bytes());
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// docs/contract.md §3: SHA-256 of the canonical JSON of the action (sorted keys,
/// compact; the strings here are ASCII, where that equals JCS).
fn action_digest(kind: &str, target: &str, parameters: &[(&str, &str)]) -> String {
    let parameters: BTreeMap<&str, &str> = parameters.iter().copied().collect();
    let mut action: BTreeMap<&str, Value> = BTreeMap::new();
    action.insert("kind", json!(kind));
    action.insert("target", json!(target));
    action.insert("parameters", json!(parameters));
    let canonical = serde_json::to_string(&action).expect("json");
    hex::encode(Sha256::digest(canonical.as_bytes()))
}

/// One history entry as `Event: FROM -> TO` or `Event: refused CODE`.
fn label(entry: &Value) -> String {
    let event = entry["event"].as_str().unwrap_or("?");
    let outcome = &entry["outcome"];
    match outcome["kind"].as_str() {
        Some("APPLIED") => format!(
            "{event}: {} -> {}",
            outcome["from"].as_str().unwrap_or("NONE"),
            outcome["to"].as_str().unwrap_or("?")
        ),
        Some("REFUSED") => format!(
            "{event}: refused {}",
            outcome["code"].as_str().unwrap_or("?")
        ),
        Some("VIOLATION") => format!(
            "{event}: violation {}",
            outcome["violation"].as_str().unwrap_or("?")
        ),
        _ => format!("{event}: {outcome}"),
    }
}

fn labels(record: &Value) -> Vec<String> {
    record["history"]
        .as_array()
        .map(|history| history.iter().map(label).collect())
        .unwrap_or_default()
}

/// The error code of a `{"error":{"code","message"}}` body, checking its shape.
fn error_code(body: &Value) -> &str {
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "not an error body: {body}"
    );
    body["error"]["code"].as_str().expect("an error code")
}

/// Intake and projector, over HTTP as a user reaches them.
struct Api {
    http: reqwest::Client,
    intake: String,
    projector: String,
}

impl Api {
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

    /// The reviewers' webhook, signed with `secret` over the exact bytes sent.
    async fn decide(&self, instance: &str, secret: &str, body: &Value) -> (u16, Value) {
        let body = body.to_string();
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_secs();
        let response = self
            .http
            .post(format!("{}/v1/instances/{instance}/decisions", self.intake))
            .header("Content-Type", "application/json")
            .header("X-Warrant-Timestamp", timestamp.to_string())
            .header("X-Warrant-Signature", signature(secret, timestamp, &body))
            .body(body)
            .send()
            .await
            .expect("intake answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// A decision that intake must accept (202), naming the signer.
    async fn decided(&self, instance: &str, secret: &str, reviewer: &str, body: Value) -> String {
        let (status, answer) = self.decide(instance, secret, &body).await;
        assert_eq!(status, 202, "{reviewer} on {instance}: {answer}");
        assert_eq!(answer["reviewer"]["principal"], reviewer, "{answer}");
        answer["event_id"].as_str().expect("event_id").to_owned()
    }

    /// A claim with `digest`; the status code and body.
    async fn claim(&self, instance: &str, digest: &str) -> (u16, Value) {
        self.post(
            &format!("/v1/instances/{instance}/executions"),
            EXECUTOR_TOKEN,
            &json!({ "action_digest": digest }),
        )
        .await
    }

    /// A claim that must be refused 409 with `code`, in the error body.
    async fn refused_claim(&self, instance: &str, digest: &str, code: &str) {
        let (status, body) = self.claim(instance, digest).await;
        assert_eq!(status, 409, "claim on {instance}: {body}");
        assert_eq!(error_code(&body), code, "{body}");
        // The refused request is on the log, and the body says where.
        assert!(body["event"]["offset"].is_i64(), "{body}");
    }

    /// The record once the projector shows `status`.
    async fn await_status(&self, instance: &str, status: &str) -> Value {
        eventually(WAIT, &format!("{instance} to be {status}"), || async {
            let (_, record) =
                get_json(&format!("{}/v1/instances/{instance}", self.projector)).await;
            (record["status"] == status).then_some(record)
        })
        .await
    }

    /// The record and the entry once the projector has folded `event_id`.
    async fn await_event(&self, instance: &str, event_id: &str) -> (Value, Value) {
        eventually(WAIT, &format!("event {event_id} in {instance}"), || async {
            let (_, record) =
                get_json(&format!("{}/v1/instances/{instance}", self.projector)).await;
            let entry = record["history"]
                .as_array()?
                .iter()
                .find(|entry| entry["event_id"] == event_id)?
                .clone();
            Some((record, entry))
        })
        .await
    }
}

/// Run tests/python/produce_proposal.py (fastavro + confluent-kafka, only
/// the .avsc files); returns where the record landed.
fn python_produce(python: &Path, args: &KafkaArgs, topic: &str, command: &[&str]) -> Value {
    let output = Command::new(python)
        .arg(repo_root().join("tests/python/produce_proposal.py"))
        .args(["--brokers", &args.brokers, "--topic", topic])
        .args(command)
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "produce_proposal.py {command:?} failed:\n{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let landed: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .expect("produce_proposal.py prints JSON");
    assert_eq!(landed["topic"], topic, "{landed}");
    landed
}

fn header(message: &impl Message, key: &str) -> Option<String> {
    message
        .headers()?
        .iter()
        .find(|h| h.key == key)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_paper_flow_through_the_real_binaries() {
    let started = Instant::now();
    let args = warrant_testkit::fresh_topics(3).await.expect("broker");
    let python = venv_python();
    let dir = tempfile::tempdir().expect("tempdir");
    let projector_url = format!("http://127.0.0.1:{}", free_port());
    let intake_port = free_port();
    let _services = start_services(
        &args,
        dir.path(),
        &projector_url,
        intake_port,
        true,
        &principals_file(dir.path()),
        &ruleset_file(dir.path()),
    );
    let api = Api {
        http: reqwest::Client::new(),
        intake: format!("http://127.0.0.1:{intake_port}"),
        projector: projector_url.clone(),
    };
    eventually(WAIT, "the projector to be healthy", || async {
        (get_json(&format!("{projector_url}/healthz")).await.0 == 200).then_some(())
    })
    .await;
    let ready = eventually(WAIT, "intake to be ready", || async {
        let (status, body) = get_json(&format!("{}/readyz", api.intake)).await;
        (status == 200).then_some(body)
    })
    .await;
    assert_eq!(ready["status"], "ready", "{ready}");

    // The instance that will expire (step 8) is proposed first, so its
    // 1.5 s run out while the rest of the flow goes on.
    let (status, expiring) = api
        .post(
            "/v1/proposals",
            SERVICE_TOKEN,
            &json!({ "action": { "kind": "test.expire", "target": "sandbox/cache" } }),
        )
        .await;
    assert_eq!(status, 202, "{expiring}");
    assert_eq!(expiring["rule_id"], "fast-expiry", "{expiring}");
    let expiring = expiring["instance_id"].as_str().expect("id").to_owned();

    // A malformed record on the proposals topic (step 9), checked later.
    let garbage = b"\xc3\x01 not a ProposalSubmitted at all".to_vec();
    let garbage_key = b"e2e-garbage-key".to_vec();
    let producer = args.producer().expect("producer");
    let (garbage_partition, garbage_offset) = producer
        .send(
            FutureRecord::to(&args.proposals_topic)
                .key(&garbage_key)
                .payload(&garbage),
            Duration::from_secs(10),
        )
        .await
        .map(|delivered| (delivered.partition, delivered.offset))
        .expect("garbage produced");

    // ---- 1. Proposals: one over HTTP, one from Python over Kafka.
    let params = [("strategy", "rolling"), ("reason", "heap grows 40 MB/min")];
    let digest_a = action_digest("service.restart", "prod/payments/api", &params);
    let (status, proposed) = api
        .post(
            "/v1/proposals",
            SERVICE_TOKEN,
            &json!({
                "action": {
                    "kind": "service.restart",
                    "target": "prod/payments/api",
                    "parameters": { "strategy": "rolling", "reason": "heap grows 40 MB/min" }
                },
                "proposer": { "kind": "AGENT", "model": "ops-model-7" },
                "context_refs": [{ "uri": "https://grafana.example/d/payments", "note": "p99 panel" }],
                "rationale": "a restart resets the leak until the fix ships"
            }),
        )
        .await;
    assert_eq!(status, 202, "{proposed}");
    assert_eq!(proposed["action_digest"], digest_a.as_str(), "{proposed}");
    assert_eq!(proposed["rule_id"], "prod-restarts");
    let a = proposed["instance_id"].as_str().expect("id").to_owned();

    let b = uuid::Uuid::new_v4().to_string();
    let landed = python_produce(
        &python,
        &args,
        &args.proposals_topic,
        &[
            "proposal",
            "--instance-id",
            &b,
            "--kind",
            "service.restart",
            "--target",
            "prod/search/indexer",
            "--param",
            "strategy=rolling",
            "--principal",
            "agent:remediator",
            "--model",
            "py-planner-2",
            "--context-uri",
            "https://runbooks.example/search/indexer",
        ],
    );
    let digest_b = action_digest(
        "service.restart",
        "prod/search/indexer",
        &[("strategy", "rolling")],
    );
    assert_eq!(landed["action_digest"], digest_b.as_str(), "{landed}");

    // ---- 3. Required signals missing: the instance is paused; a claim is
    // refused, and so is an approval that would come before the signals.
    let record = api.await_status(&a, "AWAITING_SIGNALS").await;
    assert_eq!(record["proposal"]["action_digest"], digest_a.as_str());
    assert_eq!(
        record["proposal"]["proposer"]["principal"],
        "svc:remediator"
    );
    assert_eq!(
        record["proposal"]["rule"]["required_signals"],
        json!(["opa"])
    );
    api.refused_claim(&a, &digest_a, "NotAuthorized").await;
    let early = api
        .decided(
            &a,
            ALICE,
            "alice",
            json!({ "instance_id": a, "verdict": "APPROVE", "justification": "looks fine already" }),
        )
        .await;
    let (record, entry) = api.await_event(&a, &early).await;
    assert_eq!(label(&entry), "DecisionRecorded: refused SignalsPending");
    assert_eq!(record["status"], "AWAITING_SIGNALS");

    // ---- 2. Signals: OPA's ALLOW for A through the signals topic (Python,
    // Avro SignalSubmitted), its DENY for B over HTTP.
    python_produce(
        &python,
        &args,
        &args.signals_topic,
        &[
            "signal",
            "--instance-id",
            &a,
            "--source",
            "opa",
            "--verdict",
            "ALLOW",
            "--reason",
            "restart within change window",
            "--policy-id",
            "restarts.rego",
            "--policy-version",
            "17",
        ],
    );
    let record = api.await_status(&a, "AWAITING_DECISION").await;
    let signal = &record["signals"][0];
    assert_eq!(signal["source"], "opa", "{record}");
    assert_eq!(signal["verdict"], "ALLOW");
    assert_eq!(
        signal["policy_ref"],
        json!({ "id": "restarts.rego", "version": "17" })
    );
    assert_eq!(signal["outcome"], "applied");
    let signal_entry = record["history"]
        .as_array()
        .and_then(|h| h.iter().find(|e| e["event"] == "PolicySignalRecorded"))
        .expect("the signal's entry");
    assert_eq!(
        signal_entry["submitted_by"],
        format!("kafka:{}", args.signals_topic)
    );

    let record = api.await_status(&b, "AWAITING_SIGNALS").await;
    assert_eq!(
        record["proposal"]["submitted_by"],
        format!("kafka:{}", args.proposals_topic)
    );
    assert_eq!(
        record["proposal"]["proposer"]["principal"],
        "agent:remediator"
    );
    assert_eq!(record["proposal"]["proposer"]["kind"], "AGENT");
    assert_eq!(record["proposal"]["action_digest"], digest_b.as_str());
    assert_eq!(record["proposal"]["rule"]["rule_id"], "prod-restarts");
    let (status, answer) = api
        .post(
            &format!("/v1/instances/{b}/signals"),
            POLICY_TOKEN,
            &json!({
                "verdict": "DENY",
                "reasons": ["search freeze in force"],
                "policy_ref": { "id": "freeze.rego", "version": "3" }
            }),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["source"], "opa");

    // Still paused after the signals: a claim is refused.
    api.refused_claim(&a, &digest_a, "NotAuthorized").await;

    // ---- 4. Self-approval: dave proposes, then approves his own proposal.
    let (status, proposed) = api
        .post(
            "/v1/proposals",
            DAVE_TOKEN,
            &json!({ "action": { "kind": "config.change", "target": "staging/search/api",
                                 "parameters": { "flag": "new-ranker" } } }),
        )
        .await;
    assert_eq!(status, 202, "{proposed}");
    assert_eq!(proposed["rule_id"], "everything-else");
    let c = proposed["instance_id"].as_str().expect("id").to_owned();
    let own = api
        .decided(
            &c,
            DAVE,
            "dave",
            json!({ "instance_id": c, "verdict": "APPROVE", "justification": "my own change" }),
        )
        .await;
    let (record, entry) = api.await_event(&c, &own).await;
    assert_eq!(label(&entry), "DecisionRecorded: refused SelfApproval");
    assert_eq!(record["status"], "AWAITING_DECISION");
    assert_eq!(record["decisions"][0]["reviewer"], "dave");
    assert_eq!(record["decisions"][0]["outcome"], "SelfApproval");
    assert!(record["authorization"].is_null(), "{record}");
    // Another SRE's single approval is what authorizes it: dave's never counted.
    api.decided(
        &c,
        ALICE,
        "alice",
        json!({ "instance_id": c, "verdict": "APPROVE", "justification": "reviewed the flag" }),
    )
    .await;
    let record = api.await_status(&c, "AUTHORIZED").await;
    assert_eq!(
        record["authorization"]["authority"],
        json!({ "kind": "QUORUM", "approvers": ["alice"] })
    );

    // ---- 5. Two distinct SREs approve A through the signed webhook. A
    // body signed with a key no reviewer holds is refused before the log.
    let (status, answer) = api
        .decide(
            &a,
            NOT_A_REVIEWER,
            &json!({ "instance_id": a, "verdict": "APPROVE", "justification": "trust me" }),
        )
        .await;
    assert_eq!(status, 401, "{answer}");
    assert_eq!(error_code(&answer), "bad_signature");
    let first = api
        .decided(
            &a,
            ALICE,
            "alice",
            json!({
                "instance_id": a,
                "verdict": "APPROVE",
                "justification": "heap profile confirms the leak",
                "scope": { "constraints": { "strategy": "rolling" } }
            }),
        )
        .await;
    let (record, entry) = api.await_event(&a, &first).await;
    assert_eq!(
        record["status"], "AWAITING_DECISION",
        "one of two approvals"
    );
    assert_eq!(
        entry["outcome"]["effect"],
        json!({ "kind": "APPROVAL_COUNTED", "principal": "alice", "distinct": 1, "required": 2 })
    );
    api.decided(
        &a,
        BOB,
        "bob",
        json!({ "instance_id": a, "verdict": "APPROVE", "justification": "ok for a rolling restart" }),
    )
    .await;
    let record = api.await_status(&a, "AUTHORIZED").await;
    let authorization = &record["authorization"];
    assert_eq!(
        authorization["authority"],
        json!({ "kind": "QUORUM", "approvers": ["alice", "bob"] })
    );
    assert_eq!(
        authorization["scope"]["constraints"],
        json!({ "strategy": "rolling" })
    );
    assert_eq!(authorization["scope"]["max_executions"], 1);
    // Roles come from the reviewer directory, never from the request.
    for decision in record["decisions"].as_array().expect("decisions") {
        assert_eq!(decision["roles"], json!(["sre"]), "{decision}");
    }

    // ---- 6. Another action's digest is refused; the right claim is
    // granted; the report completes the instance.
    api.refused_claim(&a, &"0".repeat(64), "DigestMismatch")
        .await;
    let (status, grant) = api.claim(&a, &digest_a).await;
    assert_eq!(status, 201, "{grant}");
    assert_eq!(grant["instance_id"], a.as_str());
    assert_eq!(grant["action_digest"], digest_a.as_str());
    assert_eq!(
        grant["scope"]["constraints"],
        json!({ "strategy": "rolling" })
    );
    assert_eq!(grant["not_after"], authorization["scope"]["not_after"]);
    let grant_id = grant["grant_id"].as_str().expect("grant_id").to_owned();
    let (status, answer) = api
        .post(
            &format!("/v1/instances/{a}/reports"),
            EXECUTOR_TOKEN,
            &json!({ "grant_id": grant_id, "outcome": "SUCCEEDED", "detail": "3/3 pods restarted" }),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    let record = api.await_status(&a, "COMPLETED").await;
    assert_eq!(record["grants"][0]["grant_id"], grant_id.as_str());
    assert_eq!(record["grants"][0]["executor"], "svc:deployer");
    assert_eq!(record["grants"][0]["report"]["outcome"], "SUCCEEDED");
    assert_eq!(record["violations"], json!([]));
    assert_eq!(
        labels(&record),
        [
            "ActionProposed: NONE -> AWAITING_SIGNALS",
            "ExecutionRequested: refused NotAuthorized",
            "DecisionRecorded: refused SignalsPending",
            "PolicySignalRecorded: AWAITING_SIGNALS -> AWAITING_DECISION",
            "ExecutionRequested: refused NotAuthorized",
            "DecisionRecorded: AWAITING_DECISION -> AWAITING_DECISION",
            "DecisionRecorded: AWAITING_DECISION -> AUTHORIZED",
            "ExecutionRequested: refused DigestMismatch",
            "ExecutionRequested: AUTHORIZED -> EXECUTING",
            "ExecutionReported: EXECUTING -> COMPLETED",
        ],
        "the whole history of {a}"
    );

    // ---- 7. B: OPA's DENY stands. An approval is refused (Blocked), an
    // override without the override role is refused, and the incident
    // commander's override authorizes it, marked as an override (docs/contract.md §5).
    let record = api.await_status(&b, "BLOCKED").await;
    assert_eq!(record["signals"][0]["verdict"], "DENY", "{record}");
    let approve = api
        .decided(
            &b,
            ALICE,
            "alice",
            json!({ "instance_id": b, "verdict": "APPROVE", "justification": "the freeze is over" }),
        )
        .await;
    let (_, entry) = api.await_event(&b, &approve).await;
    assert_eq!(label(&entry), "DecisionRecorded: refused Blocked");
    let not_ic = api
        .decided(
            &b,
            BOB,
            "bob",
            json!({ "instance_id": b, "verdict": "OVERRIDE", "justification": "urgent" }),
        )
        .await;
    let (_, entry) = api.await_event(&b, &not_ic).await;
    assert_eq!(label(&entry), "DecisionRecorded: refused RoleNotPermitted");
    api.decided(
        &b,
        CAROL,
        "carol",
        json!({
            "instance_id": b,
            "verdict": "OVERRIDE",
            "justification": "indexer is corrupting results; freeze exception INC-4711",
            "evidence_refs": ["https://incidents.example/INC-4711"]
        }),
    )
    .await;
    let record = api.await_status(&b, "AUTHORIZED").await;
    assert_eq!(
        record["authorization"]["authority"],
        json!({
            "kind": "OVERRIDE",
            "principal": "carol",
            "justification": "indexer is corrupting results; freeze exception INC-4711"
        })
    );
    assert_eq!(record["decisions"][2]["roles"], json!(["ic"]));
    assert_eq!(
        labels(&record),
        [
            "ActionProposed: NONE -> AWAITING_SIGNALS",
            "PolicySignalRecorded: AWAITING_SIGNALS -> BLOCKED",
            "DecisionRecorded: refused Blocked",
            "DecisionRecorded: refused RoleNotPermitted",
            "DecisionRecorded: BLOCKED -> AUTHORIZED",
        ]
    );

    // ---- 8. Nobody decided the fast-expiry instance: the sweeper's
    // DeadlineReached expires it, and nothing can run it any more.
    let record = api.await_status(&expiring, "EXPIRED").await;
    let deadline = record["proposal"]["decision_deadline"]
        .as_i64()
        .expect("deadline");
    assert_eq!(
        deadline
            - record["proposal"]["proposed_at"]
                .as_i64()
                .expect("proposed_at"),
        DECISION_TIMEOUT_MS
    );
    let expired_by = record["history"]
        .as_array()
        .and_then(|h| h.iter().find(|e| e["outcome"]["to"] == "EXPIRED"))
        .expect("the entry that expired it");
    assert_eq!(
        label(expired_by),
        "DeadlineReached: AWAITING_DECISION -> EXPIRED"
    );
    assert_eq!(expired_by["submitted_by"], "warrant:sweeper");
    assert!(expired_by["recorded_at"].as_i64().expect("recorded_at") > deadline);
    let digest = record["proposal"]["action_digest"]
        .as_str()
        .expect("digest")
        .to_owned();
    api.refused_claim(&expiring, &digest, "AlreadyFinal").await;

    // ---- 9. The malformed record went to the dead-letter topic, untouched,
    // with why and where from.
    let letters = eventually(WAIT, "the dead letter", || async {
        let letters = read_topic(&args, &args.dead_letter_topic);
        (!letters.is_empty()).then_some(letters)
    })
    .await;
    assert_eq!(letters.len(), 1, "exactly the one malformed record");
    let letter = &letters[0];
    assert_eq!(letter.payload(), Some(garbage.as_slice()));
    assert_eq!(letter.key(), Some(garbage_key.as_slice()));
    let reason = header(letter, "warrant.reason").expect("warrant.reason");
    assert!(
        reason.contains("not a warrant.ProposalSubmitted"),
        "{reason}"
    );
    assert_eq!(
        header(letter, "warrant.source.topic").as_deref(),
        Some(args.proposals_topic.as_str())
    );
    assert_eq!(
        header(letter, "warrant.source.partition"),
        Some(garbage_partition.to_string())
    );
    assert_eq!(
        header(letter, "warrant.source.offset"),
        Some(garbage_offset.to_string())
    );

    // ---- 10. The auditors' replay rebuilds every record from the log and
    // verifies it against the projector, once the projector has it all.
    let report = replay_verifies(&args, &projector_url).await;
    assert!(
        report.contains("4 instances: 4 verified; ok"),
        "every one of the four instances verified: {report}"
    );
    assert!(
        report.contains("checkpoint: digest equal over 4 instances"),
        "{report}"
    );
    eprintln!(
        "the seed-paper flow took {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// Start the services on fresh topics and wait until intake is ready.
async fn ready_services(sweeper: bool) -> (KafkaArgs, tempfile::TempDir, Services, Api) {
    let args = warrant_testkit::fresh_topics(3).await.expect("broker");
    let dir = tempfile::tempdir().expect("tempdir");
    let projector_url = format!("http://127.0.0.1:{}", free_port());
    let intake_port = free_port();
    let services = start_services(
        &args,
        dir.path(),
        &projector_url,
        intake_port,
        sweeper,
        &principals_file(dir.path()),
        &ruleset_file(dir.path()),
    );
    let api = Api {
        http: reqwest::Client::new(),
        intake: format!("http://127.0.0.1:{intake_port}"),
        projector: projector_url,
    };
    eventually(WAIT, "intake to be ready", || async {
        (get_json(&format!("{}/readyz", api.intake)).await.0 == 200).then_some(())
    })
    .await;
    (args, dir, services, api)
}

impl Api {
    /// Propose `kind` on `target` (no parameters); the instance id and digest.
    async fn proposed(&self, token: &str, kind: &str, target: &str) -> (String, String) {
        let (status, body) = self
            .post(
                "/v1/proposals",
                token,
                &json!({ "action": { "kind": kind, "target": target } }),
            )
            .await;
        assert_eq!(status, 202, "{body}");
        let digest = action_digest(kind, target, &[]);
        assert_eq!(body["action_digest"], digest.as_str(), "{body}");
        (body["instance_id"].as_str().expect("id").to_owned(), digest)
    }

    /// The history labels once the projector has `entries` entries.
    async fn labels_after(&self, instance: &str, entries: usize) -> Vec<String> {
        eventually(
            WAIT,
            &format!("{entries} entries in {instance}"),
            || async {
                let (_, record) =
                    get_json(&format!("{}/v1/instances/{instance}", self.projector)).await;
                let labels = labels(&record);
                (labels.len() >= entries).then_some(labels)
            },
        )
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adversarial_clients_cannot_authorize_past_a_deadline_close_anothers_grant_or_squat() {
    // No sweeper: a sweeper that is behind is exactly when a late event
    // could slip in.
    let (_args, _dir, _services, api) = ready_services(false).await;

    // ---- A late ALLOW past the decision deadline authorizes nothing.
    let (late, late_digest) = api.proposed(SERVICE_TOKEN, "test.late", "sandbox/x").await;
    tokio::time::sleep(Duration::from_millis(DECISION_TIMEOUT_MS as u64 + 500)).await;
    let (status, body) = api
        .post(
            &format!("/v1/instances/{late}/signals"),
            POLICY_TOKEN,
            &json!({ "verdict": "ALLOW", "policy_ref": { "id": "late.rego", "version": "1" } }),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        api.labels_after(&late, 2).await,
        vec![
            "ActionProposed: NONE -> AWAITING_SIGNALS",
            "PolicySignalRecorded: refused Expired",
        ]
    );
    api.refused_claim(&late, &late_digest, "Expired").await;

    // ---- Only the grant's executor closes it.
    let (run, digest) = api.proposed(SERVICE_TOKEN, "db.vacuum", "staging/db").await;
    api.decided(
        &run,
        ALICE,
        "alice",
        json!({ "instance_id": run, "verdict": "APPROVE", "justification": "routine" }),
    )
    .await;
    api.await_status(&run, "AUTHORIZED").await;
    let (status, grant) = api
        .post(
            &format!("/v1/instances/{run}/executions"),
            DEPLOYER_TOKEN,
            &json!({ "action_digest": digest }),
        )
        .await;
    assert_eq!(status, 201, "{grant}");
    let grant_id = grant["grant_id"].as_str().expect("grant_id").to_owned();
    let report = |outcome: &str| json!({ "grant_id": grant_id, "outcome": outcome });
    let (status, body) = api
        .post(
            &format!("/v1/instances/{run}/reports"),
            EXECUTOR_TOKEN,
            &report("SUCCEEDED"),
        )
        .await;
    assert_eq!(status, 202, "the report is recorded: {body}");
    let (status, body) = api
        .post(
            &format!("/v1/instances/{run}/reports"),
            DEPLOYER_TOKEN,
            &report("FAILED"),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let record = api.await_status(&run, "FAILED").await;
    assert_eq!(
        labels(&record)[3..],
        [
            "ExecutionReported: refused NotGrantHolder",
            "ExecutionReported: EXECUTING -> FAILED",
        ]
    );

    // ---- Colliding `principal/key` pairs never share an event (or a grant).
    let (twice, digest) = api
        .proposed(SERVICE_TOKEN, "db.vacuum", "staging/db2")
        .await;
    api.decided(
        &twice,
        BOB,
        "bob",
        json!({ "instance_id": twice, "verdict": "APPROVE", "justification": "routine" }),
    )
    .await;
    api.await_status(&twice, "AUTHORIZED").await;
    let claim = |token: &'static str, key: &'static str| {
        api.http
            .post(format!("{}/v1/instances/{twice}/executions", api.intake))
            .bearer_auth(token)
            .header("Idempotency-Key", key)
            .json(&json!({ "action_digest": digest }))
            .send()
    };
    let first = claim(DEPLOYER_TOKEN, "x/1").await.expect("intake answers");
    assert_eq!(first.status().as_u16(), 201);
    let second = claim(DEPLOYER_X_TOKEN, "1").await.expect("intake answers");
    let status = second.status().as_u16();
    let body: Value = second.json().await.unwrap_or(Value::Null);
    assert_eq!(
        status, 409,
        "another executor's grant was handed over: {body}"
    );
    assert_eq!(error_code(&body), "NoExecutionsLeft", "{body}");

    // ---- An instance id cannot be squatted; a true retry gets the original.
    let chosen = "0b3c6c8e-8a57-4f33-9a0e-5d7f1f0e2a11";
    let proposal = |target: &str| json!({ "instance_id": chosen, "action": { "kind": "db.vacuum", "target": target } });
    let (status, original) = api
        .post("/v1/proposals", DAVE_TOKEN, &proposal("staging/db3"))
        .await;
    assert_eq!(status, 202, "{original}");
    api.await_status(chosen, "AWAITING_DECISION").await;
    for (token, target) in [
        (SERVICE_TOKEN, "staging/db3"),
        (SERVICE_TOKEN, "prod/db3"),
        (DAVE_TOKEN, "prod/db3"),
    ] {
        let (status, body) = api.post("/v1/proposals", token, &proposal(target)).await;
        assert_eq!(status, 409, "{target}: {body}");
        assert_eq!(error_code(&body), "instance_exists", "{body}");
    }
    let (status, retry) = api
        .post("/v1/proposals", DAVE_TOKEN, &proposal("staging/db3"))
        .await;
    assert_eq!(status, 202, "{retry}");
    assert_eq!(
        retry, original,
        "a true retry is answered with the original"
    );
    let record = api.await_status(chosen, "AWAITING_DECISION").await;
    assert_eq!(
        labels(&record),
        ["ActionProposed: NONE -> AWAITING_DECISION"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_agent_learns_of_the_decision_without_polling() {
    let (_args, _dir, _services, api) = ready_services(false).await;
    let (instance, _) = api
        .proposed(SERVICE_TOKEN, "db.vacuum", "staging/wait")
        .await;
    // Waiting right after the 202, before the projector has folded the
    // proposal: an instance not folded yet counts as 0 entries.
    let (status, record) = get_json(&format!(
        "{}/v1/instances/{instance}?after_seq=0&wait_ms=20000",
        api.projector
    ))
    .await;
    assert_eq!(status, 200, "{record}");
    assert_eq!(record["status"], "AWAITING_DECISION");
    let seen = record["history"].as_array().map_or(0, Vec::len);
    assert_eq!(seen, 1);

    // The agent waits through intake with its own token, for anything
    // after what it has seen.
    let waiting = {
        let (http, url) = (
            api.http.clone(),
            format!(
                "{}/v1/instances/{instance}?after_seq={seen}&wait_ms=25000",
                api.intake
            ),
        );
        tokio::spawn(async move {
            let response = http
                .get(url)
                .bearer_auth(SERVICE_TOKEN)
                .send()
                .await
                .expect("intake answers");
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.expect("json"),
                Instant::now(),
            )
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "answered before anything changed");

    api.decided(
        &instance,
        ALICE,
        "alice",
        json!({ "instance_id": instance, "verdict": "APPROVE", "justification": "routine" }),
    )
    .await;
    let decided = Instant::now();
    let (status, record, answered) = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("woken by the decision's commit, long before wait_ms")
        .expect("the waiting task");
    assert_eq!(status, 200, "{record}");
    assert_eq!(record["status"], "AUTHORIZED", "{record}");
    assert_eq!(record["history"].as_array().map(Vec::len), Some(2));
    let latency = answered.saturating_duration_since(decided);
    eprintln!("decision 202 → waiter answered: {} ms", latency.as_millis());
    assert!(latency < Duration::from_secs(5), "{latency:?}");

    // Nothing new: the unchanged record after wait_ms.
    let started = Instant::now();
    let (status, record) = get_json(&format!(
        "{}/v1/instances/{instance}?after_seq=2&wait_ms=300",
        api.projector
    ))
    .await;
    assert_eq!(status, 200);
    assert_eq!(record["history"].as_array().map(Vec::len), Some(2));
    assert!(started.elapsed() >= Duration::from_millis(300));
}

// Test only: erin holds both roles of the example's two-group rule.
const ERIN: &str = "e2e-reviewer-erin-secret-0001";
const SASHA: &str = "example-sasha-secret-2026-12";

/// The approval groups of a record as `(roles, approved_by, missing)`.
fn groups(record: &Value) -> Vec<(Value, Value, i64)> {
    record["approval_groups"]
        .as_array()
        .map(|groups| {
            groups
                .iter()
                .map(|g| {
                    (
                        g["roles"].clone(),
                        g["approved_by"].clone(),
                        g["missing"].as_i64().unwrap_or(-1),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The example's `prod-access` rule (one SRE and one security reviewer)
/// through the real binaries: one group alone leaves the instance waiting
/// and the record names the group still missing; the other group's
/// approval authorizes it. A person holding both roles fills one group
/// only, however often they approve; the proposer's own approval is
/// refused whichever groups their roles would fill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_group_rule_is_authorized_only_once_both_groups_approve() {
    let args = warrant_testkit::fresh_topics(3).await.expect("broker");
    let dir = tempfile::tempdir().expect("tempdir");
    let principals = principals_file(dir.path());
    let text = std::fs::read_to_string(&principals).expect("principals");
    // dave proposes and holds sre and security; erin holds both too.
    let text = text
        .replacen(
            "  - principal: dave\n    roles: [sre]\n",
            "  - principal: dave\n    roles: [sre, security]\n",
            1,
        )
        .replacen(
            "\nreviewers:\n",
            &format!(
                "\nreviewers:\n  - principal: erin\n    roles: [sre, security]\n    secrets: [\"{ERIN}\"]\n"
            ),
            1,
        );
    assert!(text.contains("roles: [sre, security]\n    secrets: [\"e2e-reviewer-dave"));
    std::fs::write(&principals, text).expect("write principals");
    let projector_url = format!("http://127.0.0.1:{}", free_port());
    let intake_port = free_port();
    let _services = start_services(
        &args,
        dir.path(),
        &projector_url,
        intake_port,
        false,
        &principals,
        &repo_root().join("deploy/examples/ruleset.yaml"),
    );
    let api = Api {
        http: reqwest::Client::new(),
        intake: format!("http://127.0.0.1:{intake_port}"),
        projector: projector_url.clone(),
    };
    eventually(WAIT, "intake to be ready", || async {
        (get_json(&format!("{}/readyz", api.intake)).await.0 == 200).then_some(())
    })
    .await;
    let propose = |target: &'static str| {
        let api = &api;
        async move {
            let (status, proposed) = api
                .post(
                    "/v1/proposals",
                    DAVE_TOKEN,
                    &json!({ "action": { "kind": "iam.grant", "target": target,
                                         "parameters": { "role": "db-admin", "to": "svc:migrator" } } }),
                )
                .await;
            assert_eq!(status, 202, "{proposed}");
            assert_eq!(proposed["rule_id"], "prod-access", "{proposed}");
            proposed["instance_id"].as_str().expect("id").to_owned()
        }
    };
    let approve = |instance: &str, secret: &'static str, reviewer: &'static str| {
        let body = json!({ "instance_id": instance, "verdict": "APPROVE", "justification": "checked the grant" });
        let (api, instance) = (&api, instance.to_owned());
        async move { api.decided(&instance, secret, reviewer, body).await }
    };
    let sre = json!(["sre"]);
    let security = json!(["security"]);

    // ---- One SRE, then one security reviewer.
    let a = propose("prod/db/orders").await;
    let record = api.await_status(&a, "AWAITING_DECISION").await;
    assert_eq!(
        record["proposal"]["rule"]["approval_groups"],
        json!([{ "roles": ["sre"], "count": 1 }, { "roles": ["security"], "count": 1 }]),
        "{record}"
    );
    assert_eq!(
        groups(&record),
        vec![
            (sre.clone(), json!([]), 1),
            (security.clone(), json!([]), 1)
        ]
    );
    // The proposer holds both roles: refused all the same.
    let own = approve(&a, DAVE, "dave").await;
    let (record, entry) = api.await_event(&a, &own).await;
    assert_eq!(label(&entry), "DecisionRecorded: refused SelfApproval");
    assert_eq!(record["status"], "AWAITING_DECISION");

    let alice = approve(&a, ALICE, "alice").await;
    let (record, _) = api.await_event(&a, &alice).await;
    assert_eq!(record["status"], "AWAITING_DECISION", "{record}");
    assert!(record["authorization"].is_null(), "{record}");
    // The record names the group still missing.
    assert_eq!(
        groups(&record),
        vec![
            (sre.clone(), json!(["alice"]), 0),
            (security.clone(), json!([]), 1)
        ]
    );
    assert_eq!(record["decisions"][1]["counted_for"], 0, "{record}");
    api.refused_claim(
        &a,
        &action_digest(
            "iam.grant",
            "prod/db/orders",
            &[("role", "db-admin"), ("to", "svc:migrator")],
        ),
        "NotAuthorized",
    )
    .await;

    approve(&a, SASHA, "sasha").await;
    let record = api.await_status(&a, "AUTHORIZED").await;
    assert_eq!(
        groups(&record),
        vec![
            (sre.clone(), json!(["alice"]), 0),
            (security.clone(), json!(["sasha"]), 0)
        ]
    );
    assert_eq!(
        record["authorization"]["authority"]["kind"], "QUORUM",
        "{record}"
    );

    // ---- erin holds both roles: her approvals fill one group, never two.
    let b = propose("prod/db/billing").await;
    api.await_status(&b, "AWAITING_DECISION").await;
    let first = approve(&b, ERIN, "erin").await;
    let (record, _) = api.await_event(&b, &first).await;
    assert_eq!(record["status"], "AWAITING_DECISION", "{record}");
    let missing: i64 = groups(&record).iter().map(|(_, _, m)| m).sum();
    assert_eq!(missing, 1, "{record}");
    let again = approve(&b, ERIN, "erin").await;
    let (record, _) = api.await_event(&b, &again).await;
    assert_eq!(record["status"], "AWAITING_DECISION", "{record}");
    let missing: i64 = groups(&record).iter().map(|(_, _, m)| m).sum();
    assert_eq!(missing, 1, "erin counted twice: {record}");
    // An SRE fills the SRE group; erin then counts for security.
    approve(&b, BOB, "bob").await;
    let record = api.await_status(&b, "AUTHORIZED").await;
    assert_eq!(
        groups(&record),
        vec![(sre, json!(["bob"]), 0), (security, json!(["erin"]), 0)]
    );

    replay_verifies(&args, &projector_url).await;
}
