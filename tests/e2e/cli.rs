//! The reviewers' command line, `warrant`, as reviewers use it: the real
//! binary against the real intake and projector on a real Kafka.
//!
//! Two reviewers (erin and frank, role sre) each make a key with `warrant
//! keygen`; the principals lines it prints are registered; an agent
//! proposes a production restart and OPA allows it; `warrant queue` lists
//! it and `warrant show` prints its record; an approval without a terminal
//! and without `--yes` fails before signing anything; both approve with
//! `--yes`, and the record is AUTHORIZED by two decisions signed with their
//! own keys. Along the way, the exit codes: a key intake does not know is
//! an auth failure, an unknown instance a refusal, an unreachable intake
//! unavailable. The auditors' replay then verifies every hash and signature.
//!
//! The CLI is rebuilt at the start (a no-op when fresh), so the test never
//! runs a stale `warrant`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use warrant_e2e::{
    binary, eventually, free_port, get_json, replay_verifies, repo_root, start_services,
};

// The example principals (deploy/examples/principals.yaml). Example tokens only.
const SERVICE_TOKEN: &str = "example-service-remediator-token-0001";
const POLICY_TOKEN: &str = "example-policy-opa-token-0001";
const WAIT: Duration = Duration::from_secs(20);

/// A line on the terminal even when the test passes (libtest captures only
/// the print macros).
fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "cli e2e: {line}");
}

/// `target/<profile>/warrant`, built now: `binary` builds by package name
/// and only when missing, and the package here is `warrant-cli`.
fn warrant_binary() -> PathBuf {
    let intake = binary("warrant-intake");
    let status = std::process::Command::new(env!("CARGO"))
        .args(["build", "-q", "-p", "warrant-cli"])
        .status()
        .expect("cargo runs");
    assert!(status.success(), "cargo build -p warrant-cli failed");
    let path = intake.with_file_name("warrant");
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// Runs `warrant` with a clean environment of its own: no WARRANT_*
/// variable of the caller's (a stray WARRANT_YES would skip the prompt),
/// no terminal on stdin.
struct Warrant {
    bin: PathBuf,
    intake: String,
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.stdout))
    }

    /// A failure: the exit `code`, and exactly one line on stderr.
    fn failed_with(&self, code: i32) -> &str {
        assert_eq!(
            self.code, code,
            "stdout {} stderr {}",
            self.stdout, self.stderr
        );
        assert_eq!(
            self.stderr.trim_end().lines().count(),
            1,
            "one line on stderr: {:?}",
            self.stderr
        );
        self.stderr.trim_end()
    }
}

impl Warrant {
    async fn run(&self, key: Option<&Path>, args: &[&str]) -> Run {
        let mut command = tokio::process::Command::new(&self.bin);
        for (name, _) in std::env::vars() {
            if name.starts_with("WARRANT_") {
                command.env_remove(name);
            }
        }
        command
            .env("WARRANT_INTAKE_URL", &self.intake)
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if let Some(key) = key {
            command.env("WARRANT_KEY_FILE", key);
        }
        let Output {
            status,
            stdout,
            stderr,
        } = tokio::time::timeout(WAIT, command.output())
            .await
            .unwrap_or_else(|_| panic!("warrant {args:?} did not finish"))
            .expect("warrant runs");
        Run {
            code: status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        }
    }

    /// A run that must succeed.
    async fn ok(&self, key: Option<&Path>, args: &[&str]) -> Run {
        let run = self.run(key, args).await;
        assert_eq!(
            run.code, 0,
            "warrant {args:?}: stdout {} stderr {}",
            run.stdout, run.stderr
        );
        run
    }
}

/// The example principals with erin and frank registered by the key lines
/// `warrant keygen` printed for them.
fn principals_file(dir: &Path, erin: &str, frank: &str) -> PathBuf {
    let example = std::fs::read_to_string(repo_root().join("deploy/examples/principals.yaml"))
        .expect("example principals");
    assert!(
        example.contains("\nreviewers:\n"),
        "the example changed shape"
    );
    let reviewers = format!(
        "\nreviewers:\n  - principal: erin\n    roles: [sre]\n    {erin}\n  - principal: frank\n    roles: [sre]\n    {frank}\n"
    );
    let path = dir.join("principals.yaml");
    std::fs::write(&path, example.replacen("\nreviewers:\n", &reviewers, 1))
        .expect("write principals");
    path
}

/// The one `keys: [...]` line in keygen's text output.
fn keys_line(output: &str) -> String {
    let lines: Vec<&str> = output
        .lines()
        .map(str::trim)
        .filter(|line| line.starts_with("keys: [\"ed25519:"))
        .collect();
    assert_eq!(lines.len(), 1, "one keys line in {output}");
    lines[0].to_owned()
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
    assert_eq!(status, 202, "{url}: {body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reviewers_decide_with_their_own_keys_through_the_cli() {
    let started = Instant::now();
    let bin = warrant_binary();
    let args = warrant_testkit::fresh_topics(3).await.expect("broker");
    let dir = tempfile::tempdir().expect("tempdir");
    let projector_url = format!("http://127.0.0.1:{}", free_port());
    let intake_port = free_port();
    let intake = format!("http://127.0.0.1:{intake_port}");
    let warrant = Warrant {
        bin,
        intake: intake.clone(),
    };

    // ---- Keys: erin's as JSON, frank's as text; the principals lines.
    let erin_key = dir.path().join("erin.key");
    let frank_key = dir.path().join("frank.key");
    let outsider_key = dir.path().join("outsider.key");
    let erin = warrant
        .ok(
            None,
            &[
                "keygen",
                "--out",
                &erin_key.display().to_string(),
                "--principal",
                "erin",
                "--json",
            ],
        )
        .await
        .json();
    let erin_id = erin["key_id"].as_str().expect("key_id").to_owned();
    assert_eq!(erin_id.len(), 16, "{erin}");
    let public = erin["public_key"].as_str().expect("public_key");
    assert_eq!(erin["principals_entry"], format!("ed25519:{public}"));
    let erin_line = format!(
        "keys: [\"{}\"]",
        erin["principals_entry"].as_str().expect("entry")
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&erin_key)
            .expect("key file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the private key is the owner's only");
    }
    let file: Value =
        serde_json::from_str(&std::fs::read_to_string(&erin_key).expect("read")).expect("JSON");
    assert_eq!(
        (file["scheme"].as_str(), file["key_id"].as_str()),
        (Some("ed25519"), Some(erin_id.as_str()))
    );
    assert!(file["secret_key"].as_str().is_some_and(|s| s.len() == 64));

    // A second keygen onto the same file is refused, and the key survives.
    let before = std::fs::read(&erin_key).expect("read");
    let again = warrant
        .run(None, &["keygen", "--out", &erin_key.display().to_string()])
        .await;
    assert!(
        again.failed_with(2).contains("refusing to overwrite"),
        "{}",
        again.stderr
    );
    assert_eq!(std::fs::read(&erin_key).expect("read"), before);

    let frank = warrant
        .ok(
            None,
            &[
                "keygen",
                "--out",
                &frank_key.display().to_string(),
                "--principal",
                "frank",
            ],
        )
        .await;
    let frank_line = keys_line(&frank.stdout);
    let frank_id = frank
        .stdout
        .lines()
        .find_map(|line| line.strip_prefix("key id"))
        .map(|id| id.trim().to_owned())
        .expect("a key id line");
    warrant
        .ok(
            None,
            &["keygen", "--out", &outsider_key.display().to_string()],
        )
        .await;

    // ---- The services, with erin's and frank's keys registered.
    let _services = start_services(
        &args,
        dir.path(),
        &projector_url,
        intake_port,
        false,
        &principals_file(dir.path(), &erin_line, &frank_line),
        &repo_root().join("deploy/examples/ruleset.yaml"),
    );
    eventually(WAIT, "intake to be ready", || async {
        (get_json(&format!("{intake}/readyz")).await.0 == 200).then_some(())
    })
    .await;

    let me = warrant
        .ok(Some(&erin_key), &["whoami", "--json"])
        .await
        .json();
    assert_eq!(
        me["reviewer"],
        json!({ "principal": "erin", "roles": ["sre"] })
    );
    assert_eq!(me["key_id"], erin_id.as_str());
    // A key that is in nobody's entry opens no session: exit 3, intake's code.
    let stranger = warrant.run(Some(&outsider_key), &["queue"]).await;
    assert!(
        stranger.failed_with(3).contains("unknown_key"),
        "{}",
        stranger.stderr
    );

    // ---- An agent proposes the example restart; OPA allows it.
    let http = reqwest::Client::new();
    let proposed = post(
        &http,
        &format!("{intake}/v1/proposals"),
        SERVICE_TOKEN,
        &json!({
            "action": {
                "kind": "service.restart",
                "target": "prod/payments/api",
                "parameters": { "strategy": "rolling", "reason": "heap grows 40 MB/min" }
            },
            "proposer": { "kind": "AGENT", "model": "ops-model-7" },
            "rationale": "a restart resets the leak until the fix ships"
        }),
    )
    .await;
    assert_eq!(proposed["rule_id"], "prod-restarts", "{proposed}");
    let id = proposed["instance_id"].as_str().expect("id").to_owned();
    let digest = proposed["action_digest"]
        .as_str()
        .expect("digest")
        .to_owned();
    post(
        &http,
        &format!("{intake}/v1/instances/{id}/signals"),
        POLICY_TOKEN,
        &json!({ "verdict": "ALLOW", "reasons": ["inside the change window"],
                 "policy_ref": { "id": "restarts.rego", "version": "17" } }),
    )
    .await;

    // ---- The queue shows it, with its digest and rule; by role too.
    let item = eventually(WAIT, "the instance in warrant queue", || async {
        let page = warrant
            .ok(Some(&erin_key), &["queue", "--json"])
            .await
            .json();
        page["instances"]
            .as_array()?
            .iter()
            .find(|item| item["instance_id"] == id.as_str())
            .cloned()
    })
    .await;
    assert_eq!(item["status"], "AWAITING_DECISION");
    assert_eq!(item["action_digest"], digest.as_str());
    assert_eq!(item["rule"]["approvals_required"], 2);
    let for_ic = warrant
        .ok(Some(&erin_key), &["queue", "--json", "--role", "ic"])
        .await
        .json();
    assert_eq!(
        for_ic["instances"][0]["instance_id"],
        id.as_str(),
        "ic may override"
    );
    let for_nobody = warrant
        .ok(Some(&erin_key), &["queue", "--json", "--role", "nobody"])
        .await
        .json();
    assert_eq!(for_nobody["instances"], json!([]));
    let table = warrant.ok(Some(&frank_key), &["queue"]).await.stdout;
    let row = table
        .lines()
        .find(|line| line.starts_with(&id))
        .unwrap_or_else(|| panic!("no row for {id} in:\n{table}"));
    assert!(
        row.contains("0/2") && row.contains("prod-restarts"),
        "{row}"
    );
    assert!(
        row.contains("service.restart on prod/payments/api"),
        "{row}"
    );

    // ---- show prints replay's layout of the record.
    let shown = warrant.ok(Some(&erin_key), &["show", &id]).await.stdout;
    for line in [
        format!("== instance {id} =="),
        "status           AWAITING_DECISION".to_owned(),
        "action           service.restart on prod/payments/api".to_owned(),
        format!("action digest    {digest}"),
        "  parameter      strategy = rolling".to_owned(),
    ] {
        assert!(shown.contains(&line), "missing {line:?} in:\n{shown}");
    }
    let unknown = warrant
        .run(
            Some(&erin_key),
            &["show", "0b7e4c1a-1111-4a2b-8c3d-9e8f7a6b5c4d"],
        )
        .await;
    assert!(
        unknown.failed_with(4).contains("unknown_instance"),
        "{}",
        unknown.stderr
    );

    // ---- Without a terminal and without --yes: refused before signing.
    let unconfirmed = warrant
        .run(
            Some(&erin_key),
            &["approve", &id, "--justification", "looks right"],
        )
        .await;
    assert!(
        unconfirmed.failed_with(2).contains("--yes"),
        "{}",
        unconfirmed.stderr
    );

    // ---- erin approves (JSON), then frank (text): AUTHORIZED.
    let approved = warrant
        .ok(
            Some(&erin_key),
            &[
                "approve",
                &id,
                "--yes",
                "--json",
                "--justification",
                "heap profile confirms the leak",
                "--constraint",
                "strategy=rolling",
            ],
        )
        .await;
    let erin_decision = approved.json();
    assert_eq!(
        erin_decision["decision"]["attestation"],
        "SIGNED_BY_REVIEWER"
    );
    assert_eq!(erin_decision["decision"]["reviewer"]["principal"], "erin");
    assert_eq!(erin_decision["decision"]["key_id"], erin_id.as_str());
    assert_eq!(
        erin_decision["fold"]["outcome"]["kind"], "APPLIED",
        "{erin_decision}"
    );
    assert_eq!(erin_decision["fold"]["status"], "AWAITING_DECISION");
    assert_eq!(
        erin_decision["fold"]["outcome"]["effect"],
        json!({ "kind": "APPROVAL_COUNTED", "principal": "erin", "distinct": 1, "required": 2 })
    );
    // What was signed was shown first, on stderr: the digest among it.
    assert!(
        approved
            .stderr
            .contains(&format!("action digest    {digest}")),
        "{}",
        approved.stderr
    );

    let by_frank = warrant
        .ok(
            Some(&frank_key),
            &[
                "approve",
                &id,
                "--yes",
                "--justification",
                "ok for the rolling restart",
            ],
        )
        .await;
    assert!(
        by_frank
            .stdout
            .contains(&format!("instance {id} is AUTHORIZED")),
        "{}",
        by_frank.stdout
    );

    let (_, record) = get_json(&format!("{projector_url}/v1/instances/{id}")).await;
    assert_eq!(record["status"], "AUTHORIZED", "{record}");
    let decisions = record["decisions"].as_array().expect("decisions");
    assert_eq!(decisions.len(), 2, "{record}");
    for (decision, (reviewer, key_id)) in decisions
        .iter()
        .zip([("erin", &erin_id), ("frank", &frank_id)])
    {
        assert_eq!(decision["reviewer"], reviewer);
        assert_eq!(decision["outcome"], "applied");
        assert_eq!(
            decision["attestation"]["kind"], "SIGNED_BY_REVIEWER",
            "{decision}"
        );
        assert_eq!(decision["attestation"]["key_id"], key_id.as_str());
    }
    assert_eq!(
        record["authorization"]["authority"],
        json!({ "kind": "QUORUM", "approvers": ["erin", "frank"] })
    );
    assert_eq!(
        record["authorization"]["scope"]["constraints"]["strategy"],
        "rolling"
    );

    // ---- Nothing answering: unavailable, exit 5.
    let nobody = format!("http://127.0.0.1:{}", free_port());
    let down = warrant
        .run(Some(&erin_key), &["queue", "--intake-url", &nobody])
        .await;
    assert!(
        down.failed_with(5).contains("unreachable"),
        "{}",
        down.stderr
    );

    // ---- The auditors' replay verifies every hash and both signatures.
    let replayed = replay_verifies(&args, &projector_url).await;
    assert!(
        replayed.contains("1 instances: 1 verified; ok"),
        "{replayed}"
    );
    assert!(
        replayed.contains("signatures: 2 signed by the reviewer, 0 attested by intake (HMAC); ok"),
        "{replayed}"
    );
    say(&format!("took {:.1} s", started.elapsed().as_secs_f64()));
}
