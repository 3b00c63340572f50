//! `warrant rules` through the real binary: no intake, no key, just files.

use std::path::PathBuf;
use std::process::{Command, Output};

fn warrant(args: &[&str]) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(env!("CARGO_BIN_EXE_warrant"))
        .args(args)
        .env_remove("WARRANT_KEY_FILE")
        .output()
        .expect("warrant runs");
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

fn example() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy/examples/ruleset.yaml")
        .display()
        .to_string()
}

#[test]
fn check_loads_the_example_and_names_the_broken_rule() {
    let (code, out, err) = warrant(&["rules", "check", &example()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("6 rule(s), 1 with a condition; digest "),
        "{out}"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let broken = dir.path().join("ruleset.yaml");
    let text = std::fs::read_to_string(example())
        .expect("example")
        .replace("contains(\"latency\")", "contain(\"latency\")");
    std::fs::write(&broken, text).expect("write");
    let (code, out, err) = warrant(&["rules", "check", &broken.display().to_string()]);
    assert_eq!(code, 4, "{out} {err}");
    assert!(
        err.contains("rule \"prod-restarts-latency\": when calls contain()"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

#[test]
fn explain_says_which_rule_applies_and_why_the_others_do_not() {
    let latency = r#"{"kind": "service.restart", "target": "prod/payments/api",
        "parameters": {"strategy": "rolling", "reason": "latency p99 high", "p99_ms": "2500"}}"#;
    let (code, out, err) = warrant(&["rules", "explain", &example(), "--action", latency]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("rule prod-restarts-latency")
            && out.contains("applies: 1 approval(s) from [sre]"),
        "{out}"
    );

    let canary = latency.replace("rolling", "canary");
    let (code, out, err) = warrant(&[
        "--json",
        "rules",
        "explain",
        &example(),
        "--action",
        &canary,
    ]);
    assert_eq!(code, 0, "{err}");
    let answer: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(answer["rule_id"], "prod-restarts");
    assert_eq!(
        answer["resolution"],
        serde_json::json!([{ "rule_id": "prod-restarts-latency", "reason": "when false" }])
    );

    let access = r#"{"action": {"kind": "iam.grant", "target": "prod/db", "parameters": {}},
        "proposer": {"principal": "agent:x", "kind": "AGENT", "model": null}}"#;
    let (code, out, _) = warrant(&["rules", "explain", &example(), "--action", access]);
    assert_eq!(code, 0);
    assert!(
        out.contains("applies: 1 of [sre] and 1 of [security]"),
        "{out}"
    );

    let (code, _, err) = warrant(&["rules", "explain", &example(), "--action", "{\"kind\": 1}"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = warrant(&[
        "rules",
        "explain",
        &example(),
        "--action",
        r#"{"kind": "Service.Restart", "target": "prod/x", "parameters": {}}"#,
    ]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("intake would refuse this action"), "{err}");
}
