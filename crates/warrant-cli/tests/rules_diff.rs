//! `warrant rules diff --from-log` through the real binary, on a log
//! recorded on the local broker (fresh topics): proposals resolved as
//! intake resolved them under the example ruleset, then diffed against a
//! changed copy of it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use warrant_kafka::rdkafka::producer::FutureRecord;
use warrant_kafka::KafkaArgs;
use warrant_schema::{samples, Action, EventBody};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn warrant(args: &[&str]) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(env!("CARGO_BIN_EXE_warrant"))
        .args(args)
        .env_remove("WARRANT_KEY_FILE")
        .env_remove("WARRANT_JSON")
        .output()
        .expect("warrant runs");
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

fn instance_id(k: usize) -> String {
    format!("6f1c2b9e-4d0a-4c7e-9a51-{k:012x}")
}

/// An `ActionProposed` for `action` as intake writes it under `ruleset`.
fn proposal(k: usize, ruleset: &warrant_authority::Ruleset, action: Action) -> Vec<u8> {
    let mut envelope = samples::envelopes()[0].1.clone();
    envelope.instance_id = instance_id(k);
    envelope.event_id = format!("0b7d6a3e-1f2c-4e5d-8a9b-{k:012x}");
    let EventBody::ActionProposed(proposed) = &mut envelope.body else {
        panic!("the first sample is a proposal");
    };
    proposed.action_digest = warrant_authority::action_digest(&action);
    proposed.action = action;
    let resolution = ruleset.resolve(&warrant_authority::Facts {
        action: &proposed.action,
        proposer: &proposed.proposer,
        context_refs: &proposed.context_refs,
    });
    proposed.requirement = resolution.requirement().clone();
    proposed.resolution = resolution.not_matched.clone();
    proposed.ruleset = ruleset.reference();
    warrant_schema::encode(&envelope).expect("encode")
}

fn action(kind: &str, target: &str) -> Action {
    Action {
        kind: kind.to_owned(),
        target: target.to_owned(),
        parameters: Default::default(),
    }
}

async fn record(kafka: &KafkaArgs, proposals: Vec<(usize, Vec<u8>)>) {
    let producer = kafka.producer().expect("producer");
    for (k, value) in proposals {
        let key = instance_id(k);
        producer
            .send(
                FutureRecord::<str, [u8]>::to(&kafka.log_topic)
                    .key(&key)
                    .payload(&value),
                Duration::from_secs(10),
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("produce: {e}"));
    }
}

/// The example with prod-restarts needing three SREs instead of two and a
/// new rule for config changes before the catch-all.
fn changed_example(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(repo().join("deploy/examples/ruleset.yaml"))
        .expect("example ruleset");
    let two = "  - id: prod-restarts\n    match: { kind: \"service.restart\", target: \"prod/\" }\n    approvals_required: 2\n";
    assert!(text.contains(two), "the example's prod-restarts moved");
    let catch_all = "  - id: everything-else\n";
    assert!(text.contains(catch_all), "the example's catch-all moved");
    let text = text
        .replacen(two, &two.replace("approvals_required: 2", "approvals_required: 3"), 1)
        .replacen(
            catch_all,
            "  - id: config-changes\n    match: { kind: \"config.change\" }\n    approvals_required: 2\n    approver_roles: [sre]\n    override_roles: [ic]\n    decision_timeout_ms: 3600000\n    grant_ttl_ms: 900000\n\n  - id: everything-else\n",
            1,
        )
        .replacen("version: \"2026-12-02\"", "version: \"2026-12-03\"", 1);
    let path = dir.join("new.yaml");
    std::fs::write(&path, text).expect("write the new ruleset");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_lists_the_instances_of_a_recorded_log_whose_requirement_changes() {
    let kafka = warrant_testkit::fresh_topics(3).await.expect("broker");
    let old_path = repo().join("deploy/examples/ruleset.yaml");
    let old = warrant_authority::Ruleset::parse(&std::fs::read(&old_path).expect("example"))
        .expect("example loads");
    record(
        &kafka,
        vec![
            (
                1,
                proposal(1, &old, action("service.restart", "prod/payments/api")),
            ),
            (
                2,
                proposal(2, &old, action("service.restart", "prod/search/indexer")),
            ),
            (
                3,
                proposal(3, &old, action("config.change", "staging/search/api")),
            ),
            (4, proposal(4, &old, action("cache.warm", "prod/cdn"))),
        ],
    )
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let new_path = changed_example(dir.path());
    let (old_arg, new_arg) = (
        old_path.display().to_string(),
        new_path.display().to_string(),
    );
    let log = [
        "--from-log",
        "--brokers",
        kafka.brokers.as_str(),
        "--log-topic",
        kafka.log_topic.as_str(),
    ];
    let mut args = vec!["rules", "diff", old_arg.as_str(), new_arg.as_str()];
    args.extend(log);

    let (code, out, err) = warrant(&args);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("rules diff: 4 proposal(s) in the range resolved under ruleset 2026-12-02")
            && out.contains("and 2026-12-03 (")
            && out.contains("; 3 would get a different requirement"),
        "{out}"
    );
    assert!(!out.contains("note:"), "the log ran on OLD: {out}");
    let restarts = format!(
        "rule prod-restarts: 2 instance(s)\n  approvals: 2 of [sre] -> 3 of [sre]\n    {}\n    {}\n",
        instance_id(1),
        instance_id(2)
    );
    assert!(out.contains(&restarts), "{out}");
    let config = format!(
        "rule everything-else -> config-changes: 1 instance(s)\n  approvals: 1 of [sre] -> 2 of [sre]\n  decision_timeout_ms: 86400000 -> 3600000\n    {}\n",
        instance_id(3)
    );
    assert!(out.contains(&config), "{out}");
    assert!(
        !out.contains(&instance_id(4)),
        "cache.warm is unchanged: {out}"
    );

    // --json, and a range: offsets are per partition, so --to 0 reads nothing.
    let mut json_args = args.clone();
    json_args.push("--json");
    let (code, out, err) = warrant(&json_args);
    assert_eq!(code, 0, "{err}");
    let report: Value = serde_json::from_str(&out).expect("one JSON document");
    assert_eq!(report["proposals"], 4, "{report}");
    assert_eq!(
        report["changed"].as_array().map(Vec::len),
        Some(2),
        "{report}"
    );
    assert_eq!(report["new"]["version"], "2026-12-03", "{report}");
    args.extend(["--to", "0"]);
    let (code, out, err) = warrant(&args);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("rules diff: 0 proposal(s)"), "{out}");

    // Diffing a ruleset with itself changes nothing; a broken NEW is refused.
    let mut same = vec!["rules", "diff", old_arg.as_str(), old_arg.as_str()];
    same.extend(log);
    let (code, out, _) = warrant(&same);
    assert_eq!(code, 0);
    assert!(
        out.contains("; 0 would get a different requirement"),
        "{out}"
    );
    let broken = dir.path().join("broken.yaml");
    std::fs::write(&broken, "version: x\nrules: []\n").expect("write");
    let broken_arg = broken.display().to_string();
    let mut refused = vec!["rules", "diff", old_arg.as_str(), broken_arg.as_str()];
    refused.extend(log);
    let (code, _, err) = warrant(&refused);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("is refused"), "{err}");
}
