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

    // More context refs than intake takes: explained as intake's refusal,
    // so no condition is evaluated over a list intake never passes on.
    let refs: Vec<String> = (0..33)
        .map(|n| format!(r#"{{"uri": "runbook://{n}"}}"#))
        .collect();
    let proposal = format!(
        r#"{{"action": {{"kind": "service.restart", "target": "prod/x", "parameters": {{}}}}, "context_refs": [{}]}}"#,
        refs.join(",")
    );
    let (code, _, err) = warrant(&["rules", "explain", &example(), "--action", &proposal]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("at most 32"), "{err}");
}

const RULE_TAIL: &str = "    approver_roles: [sre]
    override_roles: [ic]
    decision_timeout_ms: 1000
    grant_ttl_ms: 1000
";

fn check_text(text: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("ruleset.yaml");
    std::fs::write(&file, text).expect("write");
    warrant(&["rules", "check", &file.display().to_string()])
}

#[test]
fn check_warns_about_a_strict_rule_with_a_condition_before_a_laxer_one() {
    // Bad: " 5000" makes int() err, so the refund falls to the one-approval rule.
    let strict_first = format!(
        "version: \"t\"\nrules:\n  - id: big-refunds\n    match: {{ kind: \"payments.refund\", target: \"prod/\" }}\n    when: int(action.parameters.amount) >= 1000\n    approvals_required: 3\n{RULE_TAIL}  - id: everything-else\n    approvals_required: 1\n{RULE_TAIL}"
    );
    let (code, out, err) = check_text(&strict_first);
    assert_eq!(code, 0, "a warning, not a refusal: {out} {err}");
    assert!(out.contains("2 rule(s), 1 with a condition"), "{out}");
    assert!(
        err.contains("warning: rule \"big-refunds\" has a condition and the later rule \"everything-else\" matches all it does with fewer approvals (1 < 3)"),
        "{err}"
    );

    // Good: the condition is on the lax rule, the strict one catches the rest.
    let lax_first = format!(
        "version: \"t\"\nrules:\n  - id: small-refunds\n    match: {{ kind: \"payments.refund\", target: \"prod/\" }}\n    when: int(action.parameters.amount) < 1000\n    approvals_required: 1\n{RULE_TAIL}  - id: everything-else\n    approvals_required: 3\n{RULE_TAIL}"
    );
    let (code, out, err) = check_text(&lax_first);
    assert_eq!(code, 0, "{out} {err}");
    assert!(!err.contains("warning"), "{err}");

    // The example ruleset has no warning either.
    let (code, _, err) = warrant(&["rules", "check", &example()]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("warning"), "{err}");
}

#[test]
fn check_refuses_misspelt_fields_and_warns_about_false() {
    let with = |when: &str| {
        format!(
            "version: \"t\"\nrules:\n  - id: strict\n    match: {{ kind: \"iam.grant\" }}\n    when: '{when}'\n    approvals_required: 1\n{RULE_TAIL}  - id: everything-else\n    approvals_required: 3\n{RULE_TAIL}"
        )
    };
    for (when, problem) in [
        (
            "action.paramters.amount == \"1\"",
            "rule \"strict\": when selects .paramters on the action",
        ),
        (
            "context_refs.exists(r, r.url == \"x\")",
            "rule \"strict\": when selects .url on a context ref",
        ),
        ("\"abc\"", "rule \"strict\": when is a string, not a bool"),
        (
            "[action.parameters].exists(context_refs, context_refs.map(k, k)[0] == \"a\")",
            "rule \"strict\": when binds \"context_refs\"",
        ),
    ] {
        let (code, out, err) = check_text(&with(when));
        assert_eq!(code, 4, "{when}: {out} {err}");
        assert!(err.contains(problem), "{when}: {err}");
    }
    let (code, out, err) = check_text(&with("false"));
    assert_eq!(code, 0, "{out} {err}");
    assert!(
        err.contains("warning: rule \"strict\": when is `false`, so the rule never matches"),
        "{err}"
    );
}
