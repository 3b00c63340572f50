//! Helpers shared by the end-to-end tests: the built binaries, the services
//! as processes, and a tiny HTTP client for the projector.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use warrant_kafka::KafkaArgs;

/// A workspace binary, built if this test run has not built it yet.
pub fn binary(name: &str) -> PathBuf {
    // Tests run from target/<profile>/deps; binaries sit one level up.
    let dir = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent()?.parent().map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("target/debug"));
    let path = dir.join(name);
    if !path.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-q", "-p", name])
            .status()
            .expect("cargo runs");
        assert!(status.success(), "cargo build -p {name} failed");
    }
    path
}

/// GET a JSON document; status 0 when nothing answers (yet).
pub async fn get_json(url: &str) -> (u16, serde_json::Value) {
    match reqwest::get(url).await {
        Ok(response) => {
            let status = response.status().as_u16();
            (
                status,
                response.json().await.unwrap_or(serde_json::Value::Null),
            )
        }
        Err(_) => (0, serde_json::Value::Null),
    }
}

/// Poll `check` until it returns `Some`, or fail after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(started.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Total next-offsets in a projector checkpoint.
pub fn checkpoint_total(checkpoint: &serde_json::Value) -> i64 {
    checkpoint["partitions"]
        .as_object()
        .map(|p| p.values().filter_map(serde_json::Value::as_i64).sum())
        .unwrap_or(0)
}

/// A free local port for a service under test.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port")
}

/// A child process that is killed when the test ends, pass or fail.
#[derive(Debug)]
pub struct KillOnDrop(pub std::process::Child);

impl KillOnDrop {
    /// SIGKILL now and reap.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The repository root (where `deploy/`, `schemas/` and `tests/python/` are).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub use warrant_testkit::venv_python;

/// Every record currently in `topic` (up to the high watermarks seen at
/// the start), partition by partition.
pub fn read_topic(
    args: &warrant_kafka::KafkaArgs,
    topic: &str,
) -> Vec<warrant_kafka::rdkafka::message::OwnedMessage> {
    use warrant_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
    use warrant_kafka::rdkafka::message::Message;
    use warrant_kafka::rdkafka::{Offset, TopicPartitionList};

    let consumer: BaseConsumer = args.assigned_consumer().expect("a consumer");
    let mut list = TopicPartitionList::new();
    let mut ends = std::collections::BTreeMap::new();
    for partition in warrant_kafka::partitions_of(&consumer, topic).expect("partitions") {
        let (low, high) =
            warrant_kafka::watermarks(&consumer, topic, partition).expect("watermarks");
        if high > low {
            list.add_partition_offset(topic, partition, Offset::Offset(low))
                .expect("a partition");
            ends.insert(partition, (low, high));
        }
    }
    let mut messages = Vec::new();
    if ends.is_empty() {
        return messages;
    }
    consumer.assign(&list).expect("assign");
    let deadline = Instant::now() + Duration::from_secs(30);
    while ends.values().any(|(next, high)| next < high) {
        assert!(Instant::now() < deadline, "timed out reading {topic}");
        // Errors here are end-of-partition notices; the loop condition decides.
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
            if let Some((next, _)) = ends.get_mut(&message.partition()) {
                *next = message.offset() + 1;
            }
            messages.push(message.detach());
        }
    }
    messages
}

/// The sum of the high watermarks of `topic`: what a consumer that read
/// everything has as next offsets (compare with [`checkpoint_total`]).
pub fn end_offsets_total(args: &warrant_kafka::KafkaArgs, topic: &str) -> i64 {
    use warrant_kafka::rdkafka::consumer::BaseConsumer;
    let consumer: BaseConsumer = args.assigned_consumer().expect("a consumer");
    warrant_kafka::partitions_of(&consumer, topic)
        .expect("partitions")
        .into_iter()
        .map(|p| {
            warrant_kafka::watermarks(&consumer, topic, p)
                .expect("watermarks")
                .1
        })
        .sum()
}

/// The projector and intake, as processes. Their logs go to files that are
/// printed if the test fails.
#[derive(Debug)]
pub struct Services {
    pub projector: KillOnDrop,
    pub intake: KillOnDrop,
    pub logs: Vec<PathBuf>,
}

impl Drop for Services {
    fn drop(&mut self) {
        self.projector.kill();
        self.intake.kill();
        if std::thread::panicking() {
            print_logs(&self.logs);
        }
    }
}

fn log_file(path: &Path) -> Stdio {
    std::fs::File::create(path)
        .map(Stdio::from)
        .expect("a log file")
}

pub fn topic_flags(args: &KafkaArgs) -> Vec<String> {
    vec![
        format!("--brokers={}", args.brokers),
        format!("--log-topic={}", args.log_topic),
        format!("--proposals-topic={}", args.proposals_topic),
        format!("--signals-topic={}", args.signals_topic),
        format!("--dead-letter-topic={}", args.dead_letter_topic),
        format!("--rulesets-topic={}", args.rulesets_topic),
        format!("--principals-topic={}", args.principals_topic),
    ]
}

/// Start the projector and intake on `args`' topics, with their logs and
/// the projector's data in `dir`, intake on `intake_port` with the given
/// principals and ruleset files, the sweeper on or off.
pub fn start_services(
    args: &KafkaArgs,
    dir: &Path,
    projector_url: &str,
    intake_port: u16,
    sweeper: bool,
    principals: &Path,
    ruleset: &Path,
) -> Services {
    let projector_log = dir.join("projector.log");
    let intake_log = dir.join("intake.log");
    let projector = spawn_projector(
        args,
        &dir.join("projector"),
        projector_url,
        &projector_log,
        &[],
    );
    let intake = spawn_intake(
        args,
        &[projector_url],
        intake_port,
        sweeper,
        principals,
        ruleset,
        &intake_log,
    );
    Services {
        projector,
        intake,
        logs: vec![projector_log, intake_log],
    }
}

/// One projector process on `args`' topics, listening at `url`, its view
/// in `data_dir`, its log in `log`, with `extra` flags (`--partitions`).
pub fn spawn_projector(
    args: &KafkaArgs,
    data_dir: &Path,
    url: &str,
    log: &Path,
    extra: &[&str],
) -> KillOnDrop {
    Command::new(binary("warrant-projector"))
        .args(topic_flags(args))
        .arg(format!("--listen={}", url.trim_start_matches("http://")))
        .arg("--data-dir")
        .arg(data_dir)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(log_file(log))
        .spawn()
        .map(KillOnDrop)
        .expect("the projector starts")
}

/// Intake on `args`' topics at `intake_port`, asking the projector at
/// `projector_urls` (every shard's, for a sharded one).
pub fn spawn_intake(
    args: &KafkaArgs,
    projector_urls: &[&str],
    intake_port: u16,
    sweeper: bool,
    principals: &Path,
    ruleset: &Path,
    log: &Path,
) -> KillOnDrop {
    Command::new(binary("warrant-intake"))
        .args(topic_flags(args))
        .arg(format!("--listen=127.0.0.1:{intake_port}"))
        .arg(format!("--projector-url={}", projector_urls.join(",")))
        .arg("--ruleset")
        .arg(ruleset)
        .arg("--principals")
        .arg(principals)
        // Never the default group: other intakes on this broker use it.
        .arg(format!("--ingress-group={}-intake", args.log_topic))
        .arg("--ingress=true")
        .arg(format!("--sweeper={sweeper}"))
        .arg("--sweep-interval-ms=200")
        .stdout(Stdio::null())
        .stderr(log_file(log))
        .spawn()
        .map(KillOnDrop)
        .expect("intake starts")
}

/// Processes killed when the test ends, whose logs are printed if it failed.
#[derive(Debug, Default)]
pub struct Processes {
    pub children: Vec<KillOnDrop>,
    pub logs: Vec<PathBuf>,
}

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.children {
            child.kill();
        }
        if std::thread::panicking() {
            print_logs(&self.logs);
        }
    }
}

fn print_logs(logs: &[PathBuf]) {
    for log in logs {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(60).collect();
        eprintln!("---- last lines of {} ----", log.display());
        for line in tail.iter().rev() {
            eprintln!("{line}");
        }
    }
}

/// Run `warrant-replay --verify` with `verify` (one URL, or a comma list of
/// shards) over the whole log; the exit code and stdout then stderr.
pub fn replay_verify(args: &KafkaArgs, verify: &str, extra: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(binary("warrant-replay"))
        .args([
            format!("--brokers={}", args.brokers),
            format!("--log-topic={}", args.log_topic),
            // Where replay finds which key was whose when each decision was signed.
            format!("--principals-topic={}", args.principals_topic),
        ])
        .args(["--quiet", "--verify", verify])
        .args(extra)
        .output()
        .expect("replay runs");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code(), report)
}

/// Wait until the projector at `projector_url` has folded the whole log,
/// then run `warrant-replay --verify` against it (signatures audited with
/// the test's principals topic) and require success. Returns the report,
/// stdout then stderr, for the caller's own checks.
pub async fn replay_verifies(args: &KafkaArgs, projector_url: &str) -> String {
    let end = end_offsets_total(args, &args.log_topic);
    eventually(
        Duration::from_secs(20),
        "the projector to fold the whole log",
        || async {
            let (_, checkpoint) = get_json(&format!("{projector_url}/v1/checkpoint")).await;
            (checkpoint_total(&checkpoint) == end).then_some(())
        },
    )
    .await;
    let (code, report) = replay_verify(args, projector_url, &[]);
    assert_eq!(code, Some(0), "replay --verify failed: {report}");
    report
}
