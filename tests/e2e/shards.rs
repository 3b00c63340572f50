//! The projector sharded by partition, end to end through the real
//! binaries on a real Kafka: a log of 6 partitions, two projector shards
//! (`--partitions 0-2` and `3-5`), one intake given both URLs. Instances
//! are chosen so that every partition has two; each gets its policy signal
//! or a reviewer's approval, then a claim, which must be granted (201)
//! whichever shard folds it. Reads and the reviewers' queue through intake
//! see every shard, a shard says `not_owner` for the other's instances,
//! and `warrant-replay --verify` with both URLs reports every instance and
//! both digests equal, while with only one it fails.
//!
//! Run `cargo build -p warrant-intake -p warrant-projector -p warrant-replay`
//! first when their sources changed: `binary` builds only missing ones.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use warrant_e2e::{
    checkpoint_total, end_offsets_total, eventually, free_port, get_json, replay_verify, repo_root,
    spawn_intake, spawn_projector, Processes,
};

// The example principals (deploy/examples/principals.yaml). Example secrets only.
const SERVICE_TOKEN: &str = "example-service-remediator-token-0001";
const POLICY_TOKEN: &str = "example-policy-opa-token-0001";
const EXECUTOR_TOKEN: &str = "example-executor-deployer-token-0001";
const ALICE: &str = "example-alice-secret-2026-11";

const PARTITIONS: i32 = 6;
const SHARDS: [&str; 2] = ["0-2", "3-5"];
/// How long any one asynchronous step may take.
const WAIT: Duration = Duration::from_secs(30);

/// `HMAC-SHA256(secret, timestamp + "." + body)` as the webhook header value.
fn signature(secret: &str, timestamp: u64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(format!("{timestamp}.{body}").as_bytes());
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// docs/contract.md §3: SHA-256 of the canonical JSON of an action without
/// parameters.
fn action_digest(kind: &str, target: &str) -> String {
    // Keys sorted, compact; the strings here are ASCII, where that is JCS.
    let canonical = format!(
        r#"{{"kind":{},"parameters":{{}},"target":{}}}"#,
        json!(kind),
        json!(target)
    );
    hex::encode(Sha256::digest(canonical.as_bytes()))
}

fn partition_of(instance_id: &str) -> i32 {
    warrant_authority::instance_partition(instance_id, PARTITIONS).expect("a partition")
}

/// The shard (index into [`SHARDS`]) that folds `partition`.
fn shard_of(partition: i32) -> usize {
    usize::from(partition >= 3)
}

struct Api {
    http: reqwest::Client,
    intake: String,
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

    async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .http
            .get(format!("{}{path}", self.intake))
            .bearer_auth(SERVICE_TOKEN)
            .send()
            .await
            .expect("intake answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// An approval signed for the reviewers' webhook.
    async fn approve(&self, instance: &str, secret: &str) -> (u16, Value) {
        let body = json!({ "instance_id": instance, "verdict": "APPROVE", "justification": "sharded e2e" })
            .to_string();
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

    /// Every page of the reviewers' queue for `status`, two at a time.
    async fn queue(&self, status: &str) -> Vec<String> {
        let mut ids = Vec::new();
        let mut after = String::new();
        loop {
            let (code, page) = self
                .get(&format!("/v1/instances?status={status}&limit=2{after}"))
                .await;
            assert_eq!(code, 200, "{page}");
            for instance in page["instances"].as_array().expect("instances") {
                ids.push(instance["instance_id"].as_str().expect("id").to_owned());
            }
            match page["next"].as_str() {
                Some(next) => after = format!("&after={next}"),
                None => return ids,
            }
        }
    }
}

/// One instance of the test: its id, action and how it gets authorized.
struct Planned {
    id: String,
    kind: &'static str,
    target: String,
}

impl Planned {
    /// `cache.flush` is authorized by an OPA ALLOW alone; anything else
    /// (the example's catch-all) by one SRE.
    fn by_signal(&self) -> bool {
        self.kind == "cache.flush"
    }
}

/// Two instances per partition, chosen by where their ids are produced.
fn plan() -> Vec<Planned> {
    let mut per_partition: BTreeMap<i32, usize> = BTreeMap::new();
    let mut planned = Vec::new();
    while planned.len() < 2 * PARTITIONS as usize {
        let id = uuid::Uuid::new_v4().to_string();
        let partition = partition_of(&id);
        let count = per_partition.entry(partition).or_default();
        if *count == 2 {
            continue;
        }
        *count += 1;
        let (kind, target) = if *count == 1 {
            ("cache.flush", format!("prod/cache/p{partition}"))
        } else {
            ("test.shard", format!("sandbox/p{partition}"))
        };
        planned.push(Planned { id, kind, target });
    }
    planned
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_shards_over_six_partitions_grant_every_claim_and_verify_equal() {
    let args = warrant_testkit::fresh_topics(PARTITIONS)
        .await
        .expect("broker");
    let dir = tempfile::tempdir().expect("tempdir");
    let urls: Vec<String> = SHARDS
        .iter()
        .map(|_| format!("http://127.0.0.1:{}", free_port()))
        .collect();
    let mut processes = Processes::default();
    for (n, (spec, url)) in SHARDS.iter().zip(&urls).enumerate() {
        let log = dir.path().join(format!("projector-{n}.log"));
        processes.children.push(spawn_projector(
            &args,
            &dir.path().join(format!("projector-{n}")),
            url,
            &log,
            &["--partitions", spec],
        ));
        processes.logs.push(log);
    }
    let intake_port = free_port();
    let intake_log = dir.path().join("intake.log");
    let examples = repo_root().join("deploy/examples");
    processes.children.push(spawn_intake(
        &args,
        &urls.iter().map(String::as_str).collect::<Vec<_>>(),
        intake_port,
        false,
        &examples.join("principals.yaml"),
        &examples.join("ruleset.yaml"),
        &intake_log,
    ));
    processes.logs.push(intake_log);
    let api = Api {
        http: reqwest::Client::new(),
        intake: format!("http://127.0.0.1:{intake_port}"),
    };
    for (url, owned) in urls.iter().zip([[0, 1, 2], [3, 4, 5]]) {
        let shard = eventually(WAIT, "a shard to resolve its partitions", || async {
            let (status, body) = get_json(&format!("{url}/v1/shard")).await;
            (status == 200 && !body["owned"].is_null()).then_some(body)
        })
        .await;
        assert_eq!(shard["owned"], json!(owned), "{shard}");
        assert_eq!(shard["log_partitions"], PARTITIONS, "{shard}");
    }
    eventually(WAIT, "intake to be ready", || async {
        (get_json(&format!("{}/readyz", api.intake)).await.0 == 200).then_some(())
    })
    .await;

    // ---- Proposals: each lands in the partition its id routes to.
    let planned = plan();
    for instance in &planned {
        let (status, body) = api
            .post(
                "/v1/proposals",
                SERVICE_TOKEN,
                &json!({
                    "instance_id": instance.id,
                    "action": { "kind": instance.kind, "target": instance.target },
                }),
            )
            .await;
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["partition"], partition_of(&instance.id), "{body}");
        assert_eq!(
            body["action_digest"],
            action_digest(instance.kind, &instance.target),
            "{body}"
        );
    }

    // ---- Reads through intake reach both shards; the reviewers' queue
    // is one list, merged across shards and paged by id.
    let mut awaiting: Vec<String> = planned
        .iter()
        .filter(|p| !p.by_signal())
        .map(|p| p.id.clone())
        .collect();
    awaiting.sort();
    let queue = eventually(WAIT, "every proposal in the queue", || async {
        let queue = api.queue("AWAITING_DECISION").await;
        (queue == awaiting).then_some(queue)
    })
    .await;
    assert_eq!(queue.len(), PARTITIONS as usize);
    for instance in &planned {
        let (status, record) = api.get(&format!("/v1/instances/{}", instance.id)).await;
        assert_eq!(status, 200, "{}: {record}", instance.id);
        assert_eq!(record["instance_id"], instance.id.as_str());
    }
    // An id nobody proposed is unknown whichever shard would own it: a
    // clean 404 from the owner, not a 503 or another shard's guess.
    for shard in 0..SHARDS.len() {
        let unknown = std::iter::repeat_with(|| uuid::Uuid::new_v4().to_string())
            .find(|id| shard_of(partition_of(id)) == shard)
            .expect("an id");
        let (status, body) = api.get(&format!("/v1/instances/{unknown}")).await;
        assert_eq!(status, 404, "{body}");
        assert_eq!(body["error"]["code"], "unknown_instance", "{body}");
    }
    // A shard asked about the other's instance says so, at once.
    let elsewhere = planned
        .iter()
        .find(|p| shard_of(partition_of(&p.id)) == 1)
        .expect("an instance of shard 1");
    let (status, body) = get_json(&format!(
        "{}/v1/instances/{}?wait_ms=20000",
        urls[0], elsewhere.id
    ))
    .await;
    assert_eq!(status, 421, "{body}");
    assert_eq!(body["error"]["code"], "not_owner", "{body}");

    // ---- Signals and approvals, then a claim on every instance: granted
    // by the fold on whichever shard owns its partition.
    for instance in &planned {
        let (status, body) = if instance.by_signal() {
            api.post(
                &format!("/v1/instances/{}/signals", instance.id),
                POLICY_TOKEN,
                &json!({ "verdict": "ALLOW", "policy_ref": { "id": "cache.rego", "version": "1" } }),
            )
            .await
        } else {
            api.approve(&instance.id, ALICE).await
        };
        assert_eq!(status, 202, "{}: {body}", instance.id);
    }
    let mut granted_on = [0usize; 2];
    for instance in &planned {
        let (status, body) = api
            .post(
                &format!("/v1/instances/{}/executions", instance.id),
                EXECUTOR_TOKEN,
                &json!({ "action_digest": action_digest(instance.kind, &instance.target) }),
            )
            .await;
        assert_eq!(
            status, 201,
            "claim on {} ({}): {body}",
            instance.id, instance.kind
        );
        assert!(body["grant_id"].is_string(), "{body}");
        granted_on[shard_of(partition_of(&instance.id))] += 1;
    }
    assert_eq!(granted_on, [6, 6]);

    // ---- Each shard folded its partitions to the end of the log.
    let end = end_offsets_total(&args, &args.log_topic);
    eventually(WAIT, "both shards to fold the whole log", || async {
        let mut total = 0;
        for url in &urls {
            let (_, checkpoint) = get_json(&format!("{url}/v1/checkpoint")).await;
            total += checkpoint_total(&checkpoint);
        }
        (total == end).then_some(())
    })
    .await;
    for (url, owned) in urls.iter().zip([["0", "1", "2"], ["3", "4", "5"]]) {
        let (_, checkpoint) = get_json(&format!("{url}/v1/checkpoint")).await;
        let consumed: Vec<&str> = checkpoint["partitions"]
            .as_object()
            .expect("partitions")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(consumed, owned, "{checkpoint}");
        assert_eq!(checkpoint["instances"], 6, "{checkpoint}");
    }

    // ---- The auditors' replay with both shards: every instance verified,
    // both digests equal, and so the composed one.
    let both = urls.join(",");
    for extra in [&[][..], &["--to-checkpoint"][..]] {
        let (code, report) = replay_verify(&args, &both, extra);
        assert_eq!(code, Some(0), "{extra:?}: {report}");
        assert!(
            report.contains("composed checkpoint: digest equal over 12 instances"),
            "{report}"
        );
        for (url, owned) in urls.iter().zip(SHARDS) {
            assert!(
                report.contains(&format!(
                    "shard {url} (partitions {owned}): checkpoint: digest equal over 6 instances"
                )),
                "{report}"
            );
        }
        assert!(report.contains("12 instances: 12 verified; ok"), "{report}");
        eprintln!("warrant-replay --verify {both} {extra:?}:\n{report}");
    }

    // ---- With one shard only, the log is not verified: it fails, naming
    // the partitions no projector given folds.
    let (code, report) = replay_verify(&args, &urls[0], &[]);
    assert_eq!(code, Some(1), "{report}");
    assert!(
        report.contains("UNOWNED   partitions 3-5: none of the projectors given folds them"),
        "{report}"
    );
    assert!(report.contains("6 unowned, 6 verified; FAILED"), "{report}");
    eprintln!("warrant-replay --verify {} (one shard):\n{report}", urls[0]);
    // Both URLs of the same shard: a partition folded twice is refused.
    let (code, report) = replay_verify(&args, &format!("{},{}", urls[1], urls[1]), &[]);
    assert_eq!(code, Some(2), "{report}");
    assert!(report.contains("is folded by both"), "{report}");
    drop(processes);
}
