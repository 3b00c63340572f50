//! Intake's latency benchmarks, against a running intake, projector and
//! Kafka (`scripts/bench-intake.sh` starts them on fresh topics).
//!
//! In order:
//! 1. setup: instances proposed, signalled and approved over HTTP exactly as
//!    `scripts/demo.sh` does (AUTHORIZED ones for the claims, AWAITING_DECISION
//!    ones for the decisions), then waited for in the projector, and then
//!    until the projector is idle (the measured intake's deadline sweeper
//!    reads each new instance once);
//! 2. sequential baselines: `GET /healthz` on intake, and a raw Kafka produce
//!    round trip with Warrant's own producer (acks=all, idempotent);
//! 3. the claim round trip (POST /executions → append → fold → 201 grant),
//!    one client in a closed loop, then a few clients at once;
//! 4. signed APPROVE decisions at a fixed offered rate (open loop; latency
//!    from each request's scheduled send time, so a stall is charged to
//!    every request it delays: no coordinated omission);
//! 5. the same open loop at the same rate for the baselines.
//!
//! Every answer that is not the expected status counts as an error, by
//! status and code; nothing is dropped. `--json` writes every figure.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::Parser;
use hmac::{Hmac, Mac};
use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use warrant_kafka::KafkaArgs;
use warrant_schema::{samples, EventBody};

/// Intake's latency benchmarks: the claim round trip and the reviewers'
/// webhook at a fixed rate, with an HTTP and a Kafka baseline from the same
/// run. Drives a running intake and projector; writes instances to their log.
///
/// The defaults are the example principals of deploy/examples/principals.yaml
/// and the `prod-restarts` rule of deploy/examples/ruleset.yaml (two SRE
/// approvals after an OPA signal, one execution), as in scripts/demo.sh.
#[derive(Debug, Parser)]
#[command(name = "warrant-intakebench", verbatim_doc_comment)]
struct Args {
    /// Intake whose latency is measured.
    #[arg(
        long,
        env = "WARRANT_BENCH_INTAKE_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    intake_url: String,
    /// Intake used to create the instances [default: --intake-url]. Another
    /// intake process makes the measured one look every instance up in the
    /// projector, as it does for instances it did not propose moments ago.
    #[arg(long, env = "WARRANT_BENCH_SETUP_INTAKE_URL")]
    setup_intake_url: Option<String>,
    /// The projector both intakes use (the bench waits on it after setup).
    #[arg(
        long,
        env = "WARRANT_BENCH_PROJECTOR_URL",
        default_value = "http://127.0.0.1:8081"
    )]
    projector_url: String,
    /// Bearer token of a service principal (proposes).
    #[arg(
        long,
        env = "WARRANT_BENCH_SERVICE_TOKEN",
        default_value = "example-service-remediator-token-0001"
    )]
    service_token: String,
    /// Bearer token of a policy principal whose source the rule requires.
    #[arg(
        long,
        env = "WARRANT_BENCH_POLICY_TOKEN",
        default_value = "example-policy-opa-token-0001"
    )]
    policy_token: String,
    /// Bearer token of an executor principal (claims).
    #[arg(
        long,
        env = "WARRANT_BENCH_EXECUTOR_TOKEN",
        default_value = "example-executor-deployer-token-0001"
    )]
    executor_token: String,
    /// Webhook secret of an approver; signs every timed decision.
    #[arg(
        long,
        env = "WARRANT_BENCH_REVIEWER_SECRET",
        default_value = "example-alice-secret-2026-11"
    )]
    reviewer_secret: String,
    /// Webhook secret of a second, different approver (setup only).
    #[arg(
        long,
        env = "WARRANT_BENCH_SECOND_REVIEWER_SECRET",
        default_value = "example-bob-secret-2026-11"
    )]
    second_reviewer_secret: String,
    /// Action kind of every proposal; must resolve to a rule that needs one
    /// signal from --policy-token's source and two approvals.
    #[arg(
        long,
        env = "WARRANT_BENCH_ACTION_KIND",
        default_value = "service.restart"
    )]
    action_kind: String,
    /// Targets are this prefix plus a number.
    #[arg(
        long,
        env = "WARRANT_BENCH_TARGET_PREFIX",
        default_value = "prod/bench/svc-"
    )]
    target_prefix: String,
    /// Claims timed one at a time (one AUTHORIZED instance each); 0 skips.
    #[arg(long, env = "WARRANT_BENCH_CLAIMS", default_value_t = 1000)]
    claims: usize,
    /// Concurrent claiming clients after the sequential run, each claiming
    /// --claims / clients instances one at a time; 0 skips.
    #[arg(long, env = "WARRANT_BENCH_CLAIM_CLIENTS", default_value_t = 4)]
    claim_clients: usize,
    /// Offered rate of the decision webhook, requests per second.
    #[arg(long, env = "WARRANT_BENCH_RATE", default_value_t = 2000.0)]
    rate: f64,
    /// Seconds measured at that rate; 0 skips the decisions.
    #[arg(long, env = "WARRANT_BENCH_DURATION_SECS", default_value_t = 10.0)]
    duration_secs: f64,
    /// Seconds at the same rate before measuring (connections, caches).
    #[arg(long, env = "WARRANT_BENCH_WARMUP_SECS", default_value_t = 1.0)]
    warmup_secs: f64,
    /// AWAITING_DECISION instances the decisions go to, round robin
    /// [default: one per decision, as reviewers decide each instance once].
    /// The first approval of each is counted, any later one by the same
    /// reviewer is recorded as already counted: all are answered 202.
    #[arg(long, env = "WARRANT_BENCH_DECISION_INSTANCES")]
    decision_instances: Option<usize>,
    /// Requests in flight while setting up.
    #[arg(long, env = "WARRANT_BENCH_SETUP_CONCURRENCY", default_value_t = 32)]
    setup_concurrency: usize,
    /// Kafka bootstrap servers, for the produce baseline.
    #[arg(long, env = "WARRANT_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Topic for the raw Kafka produce baseline (created with the log's
    /// partition count if missing; never the log itself). Without it the
    /// Kafka baseline is skipped.
    #[arg(long, env = "WARRANT_BENCH_BASELINE_TOPIC")]
    baseline_topic: Option<String>,
    /// Partitions of the baseline topic when it is created.
    #[arg(long, env = "WARRANT_BENCH_BASELINE_PARTITIONS", default_value_t = 3)]
    baseline_partitions: i32,
    /// Seconds measured for each open-loop baseline at --rate.
    #[arg(long, env = "WARRANT_BENCH_BASELINE_SECS", default_value_t = 5.0)]
    baseline_secs: f64,
    /// Print the p50, p99 and max of every interval of this many
    /// milliseconds of the open-loop phases (to tell a stall from a trend).
    #[arg(long, env = "WARRANT_BENCH_TIMELINE_MS")]
    timeline_ms: Option<u64>,
    /// Write every figure to this file as JSON.
    #[arg(long, env = "WARRANT_BENCH_JSON")]
    json: Option<PathBuf>,
    /// Propose only instances whose ids the producer puts in these
    /// partitions of the log (comma list, e.g. 0,2,4; needs
    /// --log-partitions): the claims of `make bench-scale` go to the shard
    /// that is caught up while another catches up.
    #[arg(
        long,
        env = "WARRANT_BENCH_INSTANCE_PARTITIONS",
        value_delimiter = ',',
        requires = "log_partitions"
    )]
    instance_partitions: Vec<i32>,
    /// Partitions of the log, for --instance-partitions.
    #[arg(long, env = "WARRANT_BENCH_LOG_PARTITIONS")]
    log_partitions: Option<i32>,
}

type HmacSha256 = Hmac<Sha256>;

/// What one timed request came to: `Ok`, or an error label such as
/// `409 NotAuthorized` or `connect: ...`.
type Outcome = Result<(), String>;

/// Latencies of the expected answers and counts of every other one.
#[derive(Debug, Default)]
struct Samples {
    ok: Vec<Duration>,
    errors: BTreeMap<String, u64>,
    /// Wall time the samples were taken over.
    wall: Duration,
    /// Open loop only: how late each request left its scheduled time.
    send_lag: Vec<Duration>,
    /// Open loop only: the rate asked for.
    offered: Option<f64>,
    /// Open loop only: (scheduled time since the measured window began,
    /// latency) of every measured request.
    timeline: Vec<(Duration, Duration)>,
}

impl Samples {
    fn record(&mut self, latency: Duration, outcome: Outcome) {
        match outcome {
            Ok(()) => self.ok.push(latency),
            Err(label) => *self.errors.entry(label).or_default() += 1,
        }
    }

    fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    fn summary(&mut self, name: &str, what: &str) -> Value {
        self.ok.sort_unstable();
        self.send_lag.sort_unstable();
        let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
        let ok = self.ok.len();
        let mean = if ok == 0 {
            Duration::ZERO
        } else {
            self.ok.iter().sum::<Duration>() / u32::try_from(ok).unwrap_or(u32::MAX)
        };
        let per_sec = ok as f64 / self.wall.as_secs_f64().max(1e-9);
        json!({
            "name": name,
            "what": what,
            "ok": ok,
            "errors": self.error_count(),
            "errors_by_answer": self.errors,
            "p50_ms": ms(percentile(&self.ok, 0.50)),
            "p90_ms": ms(percentile(&self.ok, 0.90)),
            "p99_ms": ms(percentile(&self.ok, 0.99)),
            "p999_ms": ms(percentile(&self.ok, 0.999)),
            "max_ms": ms(self.ok.last().copied().unwrap_or_default()),
            "mean_ms": ms(mean),
            "wall_s": (self.wall.as_secs_f64() * 1e3).round() / 1e3,
            "per_sec": per_sec.round(),
            "offered_per_sec": self.offered,
            "send_lag_p99_ms": (!self.send_lag.is_empty()).then(|| ms(percentile(&self.send_lag, 0.99))),
            "send_lag_max_ms": self.send_lag.last().map(|d| ms(*d)),
        })
    }
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Latency per interval of an open-loop phase: shows whether a tail is
/// spread out or one stall.
fn print_timeline(samples: &Samples, interval_ms: u64) {
    let interval = interval_ms.max(1);
    let mut slots: BTreeMap<u64, Vec<Duration>> = BTreeMap::new();
    for (at, latency) in &samples.timeline {
        let slot = u64::try_from(at.as_millis()).unwrap_or(u64::MAX) / interval * interval;
        slots.entry(slot).or_default().push(*latency);
    }
    for (slot, mut latencies) in slots {
        latencies.sort_unstable();
        println!(
            "    at {:>7.1} s: n {:>5}  p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms",
            slot as f64 / 1e3,
            latencies.len(),
            percentile(&latencies, 0.5).as_secs_f64() * 1e3,
            percentile(&latencies, 0.99).as_secs_f64() * 1e3,
            latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3
        );
    }
}

fn print_header() {
    println!(
        "{:<46} {:>6} {:>5} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9}",
        "phase", "ok", "err", "p50 ms", "p90 ms", "p99 ms", "p99.9", "max ms", "per s"
    );
}

fn print_row(row: &Value) {
    let f = |key: &str| row[key].as_f64().unwrap_or(f64::NAN);
    let mut line = format!(
        "{:<46} {:>6} {:>5} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>9.0}",
        row["what"].as_str().unwrap_or(""),
        row["ok"],
        row["errors"],
        f("p50_ms"),
        f("p90_ms"),
        f("p99_ms"),
        f("p999_ms"),
        f("max_ms"),
        f("per_sec"),
    );
    if let Some(offered) = row["offered_per_sec"].as_f64() {
        line.push_str(&format!(
            "  (offered {offered:.0}/s, send lag p99 {:.2} ms)",
            f("send_lag_p99_ms")
        ));
    }
    println!("{line}");
    if let Some(errors) = row["errors_by_answer"].as_object() {
        for (answer, count) in errors {
            println!("    error: {count} x {answer}");
        }
    }
}

/// The HTTP side: one pooled client for everything.
#[derive(Debug, Clone)]
struct Http {
    client: reqwest::Client,
}

/// An answer: status and body.
#[derive(Debug)]
struct Answer {
    status: u16,
    body: Value,
}

impl Answer {
    /// `"<status> <error code>"`, the label of an unexpected answer.
    fn label(&self) -> String {
        match self.body["error"]["code"].as_str() {
            Some(code) => format!("{} {code}", self.status),
            None => format!("{}", self.status),
        }
    }
}

fn request_error(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timeout"
    } else if error.is_connect() {
        "connect"
    } else {
        "request"
    };
    format!("{kind}: {error}")
}

impl Http {
    fn new() -> anyhow::Result<Http> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .pool_max_idle_per_host(1024)
            .build()
            .context("building the HTTP client")?;
        Ok(Http { client })
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Answer, String> {
        let response = request.send().await.map_err(|e| request_error(&e))?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(|e| request_error(&e))?;
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok(Answer { status, body })
    }

    async fn post_bearer(&self, url: &str, token: &str, body: &Value) -> Result<Answer, String> {
        self.send(
            self.client
                .post(url)
                .bearer_auth(token)
                .header("content-type", "application/json")
                .body(body.to_string()),
        )
        .await
    }

    /// The reviewers' webhook: HMAC-SHA256(secret, timestamp + "." + body).
    async fn post_signed(&self, url: &str, secret: &str, body: String) -> Result<Answer, String> {
        let timestamp = unix_seconds().to_string();
        let signature = sign(secret, &timestamp, body.as_bytes());
        self.send(
            self.client
                .post(url)
                .header("content-type", "application/json")
                .header("x-warrant-timestamp", timestamp)
                .header("x-warrant-signature", signature)
                .body(body),
        )
        .await
    }

    async fn get(&self, url: &str) -> Result<Answer, String> {
        self.send(self.client.get(url)).await
    }
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `v1=<hex HMAC-SHA256(secret, timestamp + "." + body)>`.
fn sign(secret: &str, timestamp: &str, body: &[u8]) -> String {
    // HMAC accepts keys of any length: this cannot fail.
    let Ok(mut mac) = HmacSha256::new_from_slice(secret.as_bytes()) else {
        return String::new();
    };
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

fn decision_body(instance_id: &str, justification: &str) -> String {
    json!({
        "instance_id": instance_id,
        "verdict": "APPROVE",
        "justification": justification,
    })
    .to_string()
}

/// One instance made by the setup.
#[derive(Debug, Clone)]
struct Instance {
    id: String,
    digest: String,
}

/// Everything the phases share.
#[derive(Debug)]
struct Bench {
    args: Args,
    http: Http,
    setup_url: String,
    /// Distinguishes this run's chosen instance ids from an earlier run's.
    run_salt: u64,
}

impl Bench {
    /// The instance id to propose as number `n`: intake's own choice, or a
    /// chosen UUID-shaped id that lands in one of --instance-partitions.
    fn chosen_instance_id(&self, n: usize) -> Option<String> {
        let partitions = self.args.log_partitions?;
        if self.args.instance_partitions.is_empty() {
            return None;
        }
        (0u64..).find_map(|attempt| {
            // n in the high bits, the attempt in the low: distinct per n.
            let id = warrant_testkit::uuid_for(((n as u64) << 16) + attempt, self.run_salt);
            warrant_authority::instance_partition(&id, partitions)
                .filter(|p| self.args.instance_partitions.contains(p))
                .map(|_| id)
        })
    }
}

fn expect(what: &str, answer: Result<Answer, String>, status: u16) -> anyhow::Result<Answer> {
    match answer {
        Ok(answer) if answer.status == status => Ok(answer),
        Ok(answer) => bail!(
            "{what}: expected HTTP {status}, got {}: {}",
            answer.status,
            answer.body
        ),
        Err(error) => bail!("{what}: {error}"),
    }
}

impl Bench {
    /// Propose, report the required signal, and approve `approvals` times by
    /// distinct reviewers (0, 1 or 2), all through the setup intake.
    async fn make_instance(&self, n: usize, approvals: usize) -> anyhow::Result<Instance> {
        let base = &self.setup_url;
        let args = &self.args;
        let mut proposal = json!({
            "action": {
                "kind": args.action_kind,
                "target": format!("{}{n}", args.target_prefix),
                "parameters": {"strategy": "rolling"},
            },
            "proposer": {"kind": "AGENT", "model": "bench"},
            "rationale": "warrant-intakebench",
        });
        if let Some(id) = self.chosen_instance_id(n) {
            proposal["instance_id"] = json!(id);
        }
        let answer = expect(
            "propose",
            self.http
                .post_bearer(
                    &format!("{base}/v1/proposals"),
                    &args.service_token,
                    &proposal,
                )
                .await,
            202,
        )?;
        let (Some(id), Some(digest)) = (
            answer.body["instance_id"].as_str(),
            answer.body["action_digest"].as_str(),
        ) else {
            bail!("propose: no instance_id/action_digest in {}", answer.body);
        };
        let instance = Instance {
            id: id.to_owned(),
            digest: digest.to_owned(),
        };
        let signal = json!({
            "verdict": "ALLOW",
            "reasons": ["bench"],
            "policy_ref": {"id": "bench.rego", "version": "1"},
        });
        expect(
            "signal",
            self.http
                .post_bearer(
                    &format!("{base}/v1/instances/{id}/signals"),
                    &args.policy_token,
                    &signal,
                )
                .await,
            202,
        )?;
        let secrets = [&args.reviewer_secret, &args.second_reviewer_secret];
        for secret in secrets.iter().take(approvals) {
            expect(
                "approve",
                self.http
                    .post_signed(
                        &format!("{base}/v1/instances/{id}/decisions"),
                        secret,
                        decision_body(id, "setup approval"),
                    )
                    .await,
                202,
            )?;
        }
        Ok(instance)
    }

    /// Make `count` instances, numbered from `first`, concurrently.
    async fn make_instances(
        self: &Arc<Self>,
        first: usize,
        count: usize,
        approvals: usize,
    ) -> anyhow::Result<Vec<Instance>> {
        let permits = Arc::new(Semaphore::new(self.args.setup_concurrency.max(1)));
        let mut tasks = JoinSet::new();
        for n in first..first + count {
            let bench = self.clone();
            let permits = permits.clone();
            tasks.spawn(async move {
                let _permit = permits.acquire_owned().await?;
                bench
                    .make_instance(n, approvals)
                    .await
                    .map(|instance| (n, instance))
            });
        }
        let mut made = BTreeMap::new();
        while let Some(joined) = tasks.join_next().await {
            let (n, instance) = joined.context("a setup task panicked")??;
            made.insert(n, instance);
        }
        Ok(made.into_values().collect())
    }

    /// Wait until the projector shows every instance in `status`.
    async fn await_status(
        self: &Arc<Self>,
        instances: &[Instance],
        status: &'static str,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        let permits = Arc::new(Semaphore::new(16));
        let mut tasks = JoinSet::new();
        for instance in instances {
            let bench = self.clone();
            let permits = permits.clone();
            let id = instance.id.clone();
            tasks.spawn(async move {
                let _permit = permits.acquire_owned().await?;
                let url = format!("{}/v1/instances/{id}", bench.args.projector_url);
                loop {
                    let seen = match bench.http.get(&url).await {
                        Ok(answer) if answer.status == 200 => {
                            answer.body["status"].as_str().map(str::to_owned)
                        }
                        Ok(_) | Err(_) => None,
                    };
                    if seen.as_deref() == Some(status) {
                        return Ok(());
                    }
                    if Instant::now() > deadline {
                        bail!("instance {id} is {seen:?} in the projector, not {status}");
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            });
        }
        while let Some(joined) = tasks.join_next().await {
            joined.context("a wait task panicked")??;
        }
        Ok(())
    }

    /// Requests the projector has served so far (its `/metrics`).
    async fn projector_requests(&self) -> Option<f64> {
        let url = format!("{}/metrics", self.args.projector_url);
        let response = self.http.client.get(&url).send().await.ok()?;
        let text = response.text().await.ok()?;
        Some(
            text.lines()
                .filter(|line| {
                    line.starts_with("warrant_projector_http_request_duration_seconds_count")
                })
                .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
                .sum(),
        )
    }

    /// Wait (at most `limit`) until the projector serves fewer than
    /// `SETTLED_PER_SEC` requests a second twice in a row: the measured
    /// intake's deadline sweeper reads the record of every instance it has
    /// not seen yet once, a backlog the setup creates and no steady state has.
    async fn settle(&self, limit: Duration) -> Duration {
        const SETTLED_PER_SEC: f64 = 100.0;
        let started = Instant::now();
        let mut quiet = 0;
        let mut last = self.projector_requests().await;
        while quiet < 2 && started.elapsed() < limit {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = self.projector_requests().await;
            quiet = match (last, now) {
                (Some(before), Some(after)) if after - before < SETTLED_PER_SEC => quiet + 1,
                _ => 0,
            };
            last = now;
        }
        started.elapsed()
    }

    /// One claim: 201 with a grant is the expected answer.
    async fn claim(&self, instance: &Instance) -> Outcome {
        let url = format!(
            "{}/v1/instances/{}/executions",
            self.args.intake_url, instance.id
        );
        let body = json!({ "action_digest": instance.digest });
        let answer = self
            .http
            .post_bearer(&url, &self.args.executor_token, &body)
            .await?;
        if answer.status == 201 && answer.body["grant_id"].is_string() {
            Ok(())
        } else {
            Err(answer.label())
        }
    }

    /// Claims by `clients` clients at once, each one at a time (closed loop).
    async fn claims(self: &Arc<Self>, instances: Vec<Instance>, clients: usize) -> Samples {
        let clients = clients.max(1);
        let started = Instant::now();
        let mut tasks = JoinSet::new();
        let per_client = instances.len().div_ceil(clients).max(1);
        for chunk in instances.chunks(per_client) {
            let bench = self.clone();
            let chunk = chunk.to_vec();
            tasks.spawn(async move {
                let mut samples = Samples::default();
                for instance in &chunk {
                    let began = Instant::now();
                    let outcome = bench.claim(instance).await;
                    samples.record(began.elapsed(), outcome);
                }
                samples
            });
        }
        let mut all = Samples::default();
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(samples) => {
                    all.ok.extend(samples.ok);
                    for (label, count) in samples.errors {
                        *all.errors.entry(label).or_default() += count;
                    }
                }
                Err(error) => *all.errors.entry(format!("panic: {error}")).or_default() += 1,
            }
        }
        all.wall = started.elapsed();
        all
    }

    /// One signed APPROVE for `instance`; every body differs (so every event
    /// id differs) and every one is answered 202.
    async fn decide(&self, instance: &str, n: u64) -> Outcome {
        let url = format!("{}/v1/instances/{instance}/decisions", self.args.intake_url);
        let body = decision_body(instance, &format!("bench decision {n}"));
        let answer = self
            .http
            .post_signed(&url, &self.args.reviewer_secret, body)
            .await?;
        if answer.status == 202 {
            Ok(())
        } else {
            Err(answer.label())
        }
    }

    async fn healthz(&self) -> Outcome {
        let answer = self
            .http
            .get(&format!("{}/healthz", self.args.intake_url))
            .await?;
        if answer.status == 200 {
            Ok(())
        } else {
            Err(answer.label())
        }
    }
}

/// Closed loop, one at a time: `count` calls of `call`.
async fn sequential<F, Fut>(count: usize, mut call: F) -> Samples
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = Outcome>,
{
    let mut samples = Samples::default();
    let started = Instant::now();
    for n in 0..count {
        let began = Instant::now();
        let outcome = call(n).await;
        samples.record(began.elapsed(), outcome);
    }
    samples.wall = started.elapsed();
    samples
}

/// Open loop: request `n` is scheduled at `n / rate` seconds and sent then
/// (never later because an earlier one is slow); its latency runs from the
/// scheduled time. The first `warmup` is not measured.
async fn open_loop<F, Fut>(rate: f64, warmup: Duration, duration: Duration, make: F) -> Samples
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let interval = 1.0 / rate;
    let total = ((warmup + duration).as_secs_f64() * rate).round() as u64;
    let measured_from = (warmup.as_secs_f64() * rate).round() as u64;
    let start = Instant::now() + Duration::from_millis(20);
    let at = |n: u64| start + Duration::from_secs_f64(n as f64 * interval);
    let window = at(measured_from);
    let mut tasks = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for n in 0..total {
        let scheduled = at(n);
        if scheduled > Instant::now() {
            tokio::time::sleep_until(tokio::time::Instant::from_std(scheduled)).await;
        }
        let request = make(n);
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let outcome = request.await;
            let done = Instant::now();
            (done, done - scheduled, sent - scheduled, outcome)
        }));
    }
    let mut samples = Samples {
        offered: Some(rate),
        ..Samples::default()
    };
    let mut last = window;
    for (n, task) in (0u64..).zip(tasks) {
        match task.await {
            Ok((done, latency, lag, outcome)) if n >= measured_from => {
                last = last.max(done);
                samples.send_lag.push(lag);
                samples
                    .timeline
                    .push((at(n).saturating_duration_since(window), latency));
                samples.record(latency, outcome);
            }
            Ok(_) => {}
            Err(error) => *samples.errors.entry(format!("panic: {error}")).or_default() += 1,
        }
    }
    samples.wall = last - window;
    samples
}

/// Warrant's own producer (acks=all, idempotent, linger as configured) on
/// a topic of its own, with a real decision envelope's bytes as value.
#[derive(Clone)]
struct KafkaBaseline {
    producer: FutureProducer,
    topic: Arc<str>,
    payload: Arc<[u8]>,
}

impl KafkaBaseline {
    async fn new(args: &Args, topic: &str) -> anyhow::Result<KafkaBaseline> {
        let kafka = KafkaArgs {
            brokers: args.brokers.clone(),
            ..KafkaArgs::default()
        };
        let admin = kafka.admin()?;
        let new = NewTopic::new(topic, args.baseline_partitions, TopicReplication::Fixed(1));
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        for result in admin.create_topics([&new], &options).await? {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => bail!("cannot create {topic}: {code}"),
            }
        }
        let envelope = samples::envelopes()
            .into_iter()
            .map(|(_, envelope)| envelope)
            .find(|envelope| matches!(envelope.body, EventBody::DecisionRecorded(_)))
            .context("the schema samples hold no decision")?;
        let payload = warrant_schema::encode(&envelope)?;
        Ok(KafkaBaseline {
            producer: kafka.producer()?,
            topic: Arc::from(topic),
            payload: Arc::from(payload),
        })
    }

    async fn produce(&self, n: u64) -> Outcome {
        // Keys shaped like instance ids, spread over the partitions.
        let key = format!("00000000-0000-4000-8000-{:012x}", n % 1000);
        let record = FutureRecord::to(&self.topic)
            .key(key.as_bytes())
            .payload(&self.payload[..]);
        match self
            .producer
            .send(record, Timeout::After(Duration::from_secs(30)))
            .await
        {
            Ok(_) => Ok(()),
            Err((error, _)) => Err(format!("kafka: {error}")),
        }
    }
}

impl std::fmt::Debug for KafkaBaseline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaBaseline")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

fn seconds(value: f64, flag: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value)
        .with_context(|| format!("{flag} must be a number of seconds"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.rate <= 0.0 || !args.rate.is_finite() {
        bail!("--rate must be positive");
    }
    let duration = seconds(args.duration_secs, "--duration-secs")?;
    let warmup = seconds(args.warmup_secs, "--warmup-secs")?;
    let baseline_duration = seconds(args.baseline_secs, "--baseline-secs")?;
    let trim = |url: &str| url.trim_end_matches('/').to_owned();
    let args = Args {
        intake_url: trim(&args.intake_url),
        projector_url: trim(&args.projector_url),
        ..args
    };
    let setup_url = trim(args.setup_intake_url.as_deref().unwrap_or(&args.intake_url));
    let run_salt = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos() as u64);
    let bench = Arc::new(Bench {
        http: Http::new()?,
        setup_url,
        args,
        run_salt,
    });
    let args = &bench.args;
    let kafka = match &args.baseline_topic {
        Some(topic) => Some(KafkaBaseline::new(args, topic).await?),
        None => None,
    };

    // 1. Setup.
    let decisions = ((warmup + duration).as_secs_f64() * args.rate).round() as usize;
    let decision_instances = args.decision_instances.unwrap_or(decisions);
    let concurrent_claims = if args.claim_clients > 0 {
        args.claims
    } else {
        0
    };
    let started = Instant::now();
    let claimable = bench
        .make_instances(0, args.claims + concurrent_claims, 2)
        .await
        .context("setting up AUTHORIZED instances")?;
    let paused = if duration.is_zero() {
        Vec::new()
    } else {
        bench
            .make_instances(claimable.len(), decision_instances.max(1), 0)
            .await
            .context("setting up AWAITING_DECISION instances")?
    };
    bench.await_status(&claimable, "AUTHORIZED").await?;
    bench.await_status(&paused, "AWAITING_DECISION").await?;
    let settled = bench.settle(Duration::from_secs(120)).await;
    eprintln!(
        "setup: {} AUTHORIZED and {} AWAITING_DECISION instances through {} in {:.1} s, \
         then {:.1} s until the projector was idle",
        claimable.len(),
        paused.len(),
        bench.setup_url,
        (started.elapsed() - settled).as_secs_f64(),
        settled.as_secs_f64()
    );

    let mut rows = Vec::new();
    let mut report = |mut samples: Samples, name: &str, what: &str| {
        let row = samples.summary(name, what);
        print_row(&row);
        if let Some(interval) = args.timeline_ms {
            print_timeline(&samples, interval);
        }
        rows.push(row);
    };
    println!(
        "intake {}, projector {}, {} measured",
        args.intake_url,
        args.projector_url,
        if bench.setup_url == args.intake_url {
            "the same intake set up and is"
        } else {
            "another intake set up; this one is"
        }
    );
    print_header();

    // 2. Sequential baselines.
    let baseline_count = args.claims.max(200);
    report(
        sequential(baseline_count, |_| bench.healthz()).await,
        "healthz_sequential",
        "baseline: GET /healthz, 1 client",
    );
    if let Some(kafka) = &kafka {
        report(
            sequential(baseline_count, |n| kafka.produce(n as u64)).await,
            "kafka_sequential",
            "baseline: Kafka produce acks=all, 1 client",
        );
    }

    // 3. Claims.
    let (sequential_claims, concurrent) = claimable.split_at(args.claims);
    if !sequential_claims.is_empty() {
        report(
            bench.claims(sequential_claims.to_vec(), 1).await,
            "claims_sequential",
            "claim POST /executions -> 201, 1 client",
        );
    }
    if !concurrent.is_empty() {
        report(
            bench.claims(concurrent.to_vec(), args.claim_clients).await,
            "claims_concurrent",
            &format!(
                "claim POST /executions -> 201, {} clients",
                args.claim_clients
            ),
        );
    }

    // 4. Decisions at a fixed rate.
    if !paused.is_empty() {
        let ids: Arc<[String]> = paused.iter().map(|i| i.id.clone()).collect();
        let samples = open_loop(args.rate, warmup, duration, |n| {
            let bench = bench.clone();
            let ids = ids.clone();
            async move {
                let index = usize::try_from(n).unwrap_or(0) % ids.len();
                bench.decide(&ids[index], n).await
            }
        })
        .await;
        report(
            samples,
            "decisions_open_loop",
            "decision POST /decisions -> 202, open loop",
        );
    }

    // 5. The baselines at the same rate.
    if !baseline_duration.is_zero() {
        let samples = open_loop(args.rate, warmup, baseline_duration, |_| {
            let bench = bench.clone();
            async move { bench.healthz().await }
        })
        .await;
        report(
            samples,
            "healthz_open_loop",
            "baseline: GET /healthz, open loop",
        );
        if let Some(kafka) = &kafka {
            let samples = open_loop(args.rate, warmup, baseline_duration, |n| {
                let kafka = kafka.clone();
                async move { kafka.produce(n).await }
            })
            .await;
            report(
                samples,
                "kafka_open_loop",
                "baseline: Kafka produce acks=all, open loop",
            );
        }
    }

    if let Some(path) = &args.json {
        let document = json!({
            "intake_url": args.intake_url,
            "setup_intake_url": bench.setup_url,
            "rate": args.rate,
            "duration_s": args.duration_secs,
            "warmup_s": args.warmup_secs,
            "claims": args.claims,
            "claim_clients": args.claim_clients,
            "decision_instances": paused.len(),
            "phases": rows,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&document)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
