//! The reviewers' console, as reviewers use it: real headless Chromium
//! (Debian's `chromium`, driven by Playwright from `tests/e2e/console.py`)
//! against the real intake and projector on a real Kafka.
//!
//! Two reviewers each generate a key in their own browser; the principals
//! lines the pages show are registered and intake reloads on SIGHUP; both
//! sign in by signing a challenge and approve a pending restart through the
//! decision form. The record is then AUTHORIZED by two decisions signed by
//! the reviewers' own keys, and the auditors' replay verifies it. A proposal
//! with a script for a rationale and a `javascript:` context ref renders as
//! text. Screenshots land in `.cache/artifacts/`.
//!
//! Needs `/usr/bin/chromium` (`scripts/test.sh` installs it) and installs
//! Playwright into `.cache/venv` from `tests/e2e/requirements-browser.txt`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use warrant_e2e::{
    eventually, free_port, get_json, replay_verifies, repo_root, start_services, venv_python,
};

// The example principals (deploy/examples/principals.yaml). Example secrets only.
const SERVICE_TOKEN: &str = "example-service-remediator-token-0001";
const POLICY_TOKEN: &str = "example-policy-opa-token-0001";
const CHROMIUM: &str = "/usr/bin/chromium";
const WAIT: Duration = Duration::from_secs(20);
/// The browser part may take this long before it is killed.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(240);

/// A line on the terminal even when the test passes (libtest captures only
/// the print macros), so `make test` shows how long the browser run took.
fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "console e2e: {line}");
}

/// docs/contract.md §3: SHA-256 of the canonical JSON of the action (sorted
/// keys, compact; the strings here are ASCII, where that equals JCS).
fn action_digest(kind: &str, target: &str, parameters: &[(&str, &str)]) -> String {
    let parameters: BTreeMap<&str, &str> = parameters.iter().copied().collect();
    let canonical =
        serde_json::to_string(&json!({ "kind": kind, "parameters": parameters, "target": target }))
            .expect("json");
    hex::encode(Sha256::digest(canonical.as_bytes()))
}

/// The venv's Python with Playwright installed (pip is quick when it is).
fn browser_python() -> PathBuf {
    let python = venv_python();
    let status = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
        ])
        .arg(repo_root().join("tests/e2e/requirements-browser.txt"))
        .status()
        .expect("pip runs");
    assert!(
        status.success(),
        "pip install -r tests/e2e/requirements-browser.txt failed"
    );
    python
}

async fn post(http: &reqwest::Client, url: &str, token: &str, body: &Value) -> Value {
    let response = http
        .post(url)
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .expect("intake answers");
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert_eq!(status, 202, "POST {url}: {body}");
    body
}

/// Run the browser script to the end (or kill it after [`BROWSER_TIMEOUT`]);
/// its last stdout line is its JSON report.
fn run_browser(python: &Path, dir: &Path, args: &[String]) -> Value {
    let stdout_path = dir.join("console-py.stdout");
    let stderr_path = dir.join("console-py.stderr");
    let mut child = Command::new(python)
        .arg(repo_root().join("tests/e2e/console.py"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).expect("stdout file"))
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
        .spawn()
        .expect("python runs");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if started.elapsed() > BROWSER_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = std::fs::read_to_string(&stdout_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    match status {
        Some(status) if status.success() => {}
        Some(status) => panic!("console.py failed ({status}):\n{stdout}\n{stderr}"),
        None => panic!("console.py timed out after {BROWSER_TIMEOUT:?}:\n{stdout}\n{stderr}"),
    }
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|_| panic!("console.py printed no JSON report:\n{stdout}\n{stderr}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_reviewers_approve_in_real_chromium_with_keys_made_in_their_browsers() {
    let started = Instant::now();
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: run scripts/test.sh (it installs Debian's chromium) or apt-get install -y chromium"
    );
    let python = browser_python();
    let args = warrant_testkit::fresh_topics(3).await.expect("broker");
    let dir = tempfile::tempdir().expect("tempdir");
    let principals = dir.path().join("principals.yaml");
    std::fs::copy(
        repo_root().join("deploy/examples/principals.yaml"),
        &principals,
    )
    .expect("copy the example principals");
    let projector_url = format!("http://127.0.0.1:{}", free_port());
    let intake_port = free_port();
    let intake_url = format!("http://127.0.0.1:{intake_port}");
    let services = start_services(
        &args,
        dir.path(),
        &projector_url,
        intake_port,
        false,
        &principals,
        &repo_root().join("deploy/examples/ruleset.yaml"),
    );
    eventually(WAIT, "intake to be ready", || async {
        (get_json(&format!("{intake_url}/readyz")).await.0 == 200).then_some(())
    })
    .await;
    let http = reqwest::Client::new();

    // The example restart (prod-restarts: two SREs after OPA), and OPA's ALLOW.
    let digest = action_digest(
        "service.restart",
        "prod/payments/api",
        &[("strategy", "rolling"), ("reason", "heap grows 40 MB/min")],
    );
    let proposed = post(
        &http,
        &format!("{intake_url}/v1/proposals"),
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
    assert_eq!(proposed["action_digest"], digest.as_str(), "{proposed}");
    let restart = proposed["instance_id"].as_str().expect("id").to_owned();
    post(
        &http,
        &format!("{intake_url}/v1/instances/{restart}/signals"),
        POLICY_TOKEN,
        &json!({
            "verdict": "ALLOW",
            "reasons": ["restart within change window"],
            "policy_ref": { "id": "restarts.rego", "version": "17" }
        }),
    )
    .await;

    // A proposal whose text is hostile: it must only ever be text.
    let hostile = post(
        &http,
        &format!("{intake_url}/v1/proposals"),
        SERVICE_TOKEN,
        &json!({
            "action": { "kind": "config.change", "target": "staging/search/api",
                        "parameters": { "flag": "<b>new-ranker</b>" } },
            "context_refs": [
                { "uri": "javascript:alert(1)", "note": "<img src=x onerror=alert(2)>" },
                { "uri": "https://runbooks.example/restart" }
            ],
            "rationale": "<script>alert(1)</script>"
        }),
    )
    .await;
    let hostile = hostile["instance_id"].as_str().expect("id").to_owned();
    for instance in [&restart, &hostile] {
        eventually(WAIT, "both instances awaiting a decision", || async {
            let (_, record) = get_json(&format!("{projector_url}/v1/instances/{instance}")).await;
            (record["status"] == "AWAITING_DECISION").then_some(())
        })
        .await;
    }

    // ---- The reviewers, in Chromium.
    let artifacts = repo_root().join(".cache/artifacts");
    std::fs::create_dir_all(&artifacts).expect("the artifacts directory");
    let artifacts = artifacts.canonicalize().expect("the artifacts directory");
    let browser_started = Instant::now();
    let report = run_browser(
        &python,
        dir.path(),
        &[
            format!("--url={intake_url}"),
            format!("--principals={}", principals.display()),
            format!("--intake-pid={}", services.intake.0.id()),
            format!("--approve={restart}"),
            format!("--digest={digest}"),
            format!("--hostile={hostile}"),
            format!("--artifacts={}", artifacts.display()),
        ],
    );
    let browser_secs = browser_started.elapsed().as_secs_f64();

    // The principals file now holds the two lines read off the pages.
    let text = std::fs::read_to_string(&principals).expect("principals");
    for line in report["lines"].as_array().expect("lines") {
        assert!(text.contains(line.as_str().expect("a line")), "{text}");
    }

    // ---- The record: AUTHORIZED by two decisions, each signed by the key
    // made in that reviewer's browser.
    let (_, record) = get_json(&format!("{projector_url}/v1/instances/{restart}")).await;
    assert_eq!(record["status"], "AUTHORIZED", "{record}");
    assert_eq!(
        record["authorization"]["authority"],
        json!({ "kind": "QUORUM", "approvers": ["alice", "bob"] })
    );
    assert_eq!(
        record["authorization"]["scope"]["constraints"],
        json!({ "strategy": "rolling" })
    );
    let decisions = record["decisions"].as_array().expect("decisions");
    assert_eq!(decisions.len(), 2, "{record}");
    for (decision, reviewer) in decisions.iter().zip(["alice", "bob"]) {
        assert_eq!(decision["reviewer"], reviewer, "{decision}");
        assert_eq!(decision["outcome"], "applied", "{decision}");
        assert_eq!(
            decision["attestation"]["kind"], "SIGNED_BY_REVIEWER",
            "{decision}"
        );
        assert_eq!(
            decision["attestation"]["key_id"], report["keys"][reviewer],
            "{decision}"
        );
    }
    let (_, record) = get_json(&format!("{projector_url}/v1/instances/{hostile}")).await;
    assert_eq!(
        record["proposal"]["rationale"], "<script>alert(1)</script>",
        "{record}"
    );

    // ---- The auditors' replay re-verifies every signature and hash.
    let replayed = replay_verifies(&args, &projector_url).await;
    assert!(
        replayed.contains("2 instances: 2 verified; ok"),
        "{replayed}"
    );
    drop(services);

    say(&format!(
        "browser part {browser_secs:.1} s (chromium launch {} s), whole test {:.1} s; screenshots in {}",
        report["timings"]["launch_s"],
        started.elapsed().as_secs_f64(),
        artifacts.display()
    ));
}
