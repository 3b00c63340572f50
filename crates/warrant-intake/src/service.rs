//! Intake as a service: flags, start-up, the background tasks (ingress,
//! sweeper, readiness, SIGHUP reload) and graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use warrant_kafka::KafkaArgs;

use crate::config::{load_principals, LoadedRuleset, Paths, Shared};
use crate::http::{AppState, Clock, HttpOptions, Readiness, RecentInstances, SystemClock};
use crate::ingress::{Ingress, IngressOptions};
use crate::log::{Appended, KafkaLog};
use crate::metrics::{HttpLabels, Metrics};
use crate::projector::{Projector, ProjectorError};
use crate::shards::ShardedProjector;
use crate::sweeper::Sweeper;
use crate::Error;

/// Every flag of `warrant-intake`; each also reads a `WARRANT_*` variable.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub kafka: KafkaArgs,

    /// Address the HTTP API listens on.
    #[arg(long, env = "WARRANT_INTAKE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// The authority rules (YAML, docs/contract.md §4). Published to the rulesets topic
    /// at start and on every SIGHUP that changes it.
    #[arg(long, env = "WARRANT_RULESET")]
    pub ruleset: PathBuf,

    /// Bearer tokens and the reviewer directory (YAML). Reloaded on SIGHUP.
    #[arg(long, env = "WARRANT_PRINCIPALS")]
    pub principals: PathBuf,

    /// Base URL of warrant-projector, asked whether instances exist, what
    /// the fold answered an execution request, and which deadlines are due.
    /// For a projector sharded by partition (--partitions), every shard's
    /// URL: repeat the flag, or separate them with commas. Intake asks each
    /// shard what it owns and sends each question to the owner of the
    /// instance's partition.
    #[arg(
        long,
        env = "WARRANT_PROJECTOR_URL",
        value_name = "URL",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:8081"
    )]
    pub projector_url: Vec<String>,

    /// How long POST /executions waits for the fold's answer before a 503
    /// (the request stays on the log and the fold still decides it).
    #[arg(long, env = "WARRANT_CLAIM_TIMEOUT_MS", default_value_t = 5000)]
    pub claim_timeout_ms: u64,

    /// How long an append may wait for Kafka's acknowledgement before the
    /// request is answered 503.
    #[arg(long, env = "WARRANT_PRODUCE_TIMEOUT_MS", default_value_t = 5000)]
    pub produce_timeout_ms: u64,

    /// Largest accepted request body; larger bodies get 413.
    #[arg(long, env = "WARRANT_MAX_BODY_BYTES", default_value_t = 65536)]
    pub max_body_bytes: usize,

    /// Record waits (`GET /v1/instances/{id}?wait_ms=`) one caller may hold
    /// at once; beyond it, 503 `too_many_waiters` with Retry-After.
    #[arg(
        long,
        env = "WARRANT_MAX_WAITS_PER_CALLER",
        default_value_t = crate::http::DEFAULT_MAX_WAITS_PER_CALLER
    )]
    pub max_waits_per_caller: usize,

    /// Consume the ingress topics (`--ingress=false` to disable).
    #[arg(
        long,
        env = "WARRANT_INGRESS",
        default_value_t = true,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true",
        require_equals = true
    )]
    pub ingress: bool,

    /// Consumer group of the ingress consumer.
    #[arg(long, env = "WARRANT_INGRESS_GROUP", default_value = "warrant-intake")]
    pub ingress_group: String,

    /// Static group membership id (`group.instance.id`): a restarted intake
    /// with the same id gets its partitions back without waiting for the
    /// session timeout. Give each replica its own.
    #[arg(long, env = "WARRANT_INGRESS_INSTANCE_ID")]
    pub ingress_instance_id: Option<String>,

    /// Most ingress records appended per offset commit.
    #[arg(long, env = "WARRANT_INGRESS_BATCH", default_value_t = 500)]
    pub ingress_batch: usize,

    /// Testing only: abort after this many ingress appends, before their
    /// offsets are committed (proves re-delivery lands as duplicates).
    #[arg(long, env = "WARRANT_INTAKE_CRASH_AFTER_APPENDS", hide = true)]
    pub crash_after_appends: Option<u64>,

    /// Run the deadline sweeper (`--sweeper=false` to disable).
    #[arg(
        long,
        env = "WARRANT_SWEEPER",
        default_value_t = true,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true",
        require_equals = true
    )]
    pub sweeper: bool,

    /// Interval between deadline sweeps.
    #[arg(long, env = "WARRANT_SWEEP_INTERVAL_MS", default_value_t = 5000)]
    pub sweep_interval_ms: u64,

    /// On SIGTERM, how long in-flight requests and the ingress batch in hand
    /// may take to finish, and the producer to flush.
    #[arg(long, env = "WARRANT_SHUTDOWN_TIMEOUT_MS", default_value_t = 10000)]
    pub shutdown_timeout_ms: u64,
}

impl Args {
    /// Arguments for a test: the given topics, port 0, the example files.
    pub fn for_tests(kafka: KafkaArgs, ruleset: PathBuf, principals: PathBuf) -> Args {
        Args {
            ingress_group: format!("{}-intake", kafka.log_topic),
            kafka,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ruleset,
            principals,
            projector_url: vec!["http://127.0.0.1:9".to_owned()],
            claim_timeout_ms: 5000,
            produce_timeout_ms: 5000,
            max_body_bytes: 65_536,
            max_waits_per_caller: crate::http::DEFAULT_MAX_WAITS_PER_CALLER,
            ingress: true,
            ingress_instance_id: None,
            ingress_batch: 500,
            crash_after_appends: None,
            sweeper: false,
            sweep_interval_ms: 5000,
            shutdown_timeout_ms: 10_000,
        }
    }

    fn validate(&self) -> Result<(), Error> {
        let fail = |message: &str| Err(Error::Config(message.to_owned()));
        if self.claim_timeout_ms == 0 || self.produce_timeout_ms == 0 {
            return fail("--claim-timeout-ms and --produce-timeout-ms must be positive");
        }
        if self.max_waits_per_caller == 0 {
            return fail("--max-waits-per-caller must be at least 1");
        }
        if !(1024..=warrant_schema::MAX_RECORD_BYTES / 2).contains(&self.max_body_bytes) {
            return fail("--max-body-bytes must be between 1024 and 524288");
        }
        if !(1..=10_000).contains(&self.ingress_batch) {
            return fail("--ingress-batch must be between 1 and 10000");
        }
        if self.sweep_interval_ms < 100 {
            return fail("--sweep-interval-ms must be at least 100");
        }
        if self.ingress_group.trim().is_empty() {
            return fail("--ingress-group must not be empty");
        }
        Ok(())
    }
}

/// The projector's shards (`--projector-url` repeated or comma-separated).
/// One URL is a shard too: it is asked what it owns like any other, so a
/// URL of one shard of several is refused rather than read as the whole log.
fn projector_client(urls: &[String]) -> Result<Arc<dyn Projector>, ProjectorError> {
    let urls: Vec<String> = urls
        .iter()
        .map(|url| url.trim().to_owned())
        .filter(|url| !url.is_empty())
        .collect();
    let timeout = Duration::from_secs(5);
    let projector = ShardedProjector::new(&urls, timeout)?;
    if urls.len() > 1 {
        tracing::info!(
            shards = urls.len(),
            "projector shards: routing by partition"
        );
    }
    Ok(Arc::new(projector))
}

/// `--check-config`'s look at `--projector-url`: the URLs intake would
/// start with (each plain http, none twice), without asking them anything.
pub fn check_projector_urls(urls: &[String]) -> Result<usize, ProjectorError> {
    projector_client(urls)?;
    Ok(urls.iter().filter(|url| !url.trim().is_empty()).count())
}

/// A running intake.
pub struct Intake {
    addr: SocketAddr,
    stop: Arc<watch::Sender<bool>>,
    stopped: watch::Receiver<bool>,
    published: watch::Receiver<Publication>,
    tasks: Vec<(&'static str, JoinHandle<()>)>,
    server: JoinHandle<Result<(), Error>>,
    log: KafkaLog,
    grace: Duration,
}

impl std::fmt::Debug for Intake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Intake")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Intake {
    /// Load the files, bind the listener and start every task, then wait
    /// for the first attempt to publish the ruleset to end (at most the
    /// produce timeout). Fails, starting nothing, only on what a retry
    /// cannot fix (the files, the flags, the listen address). If Kafka did
    /// not take the ruleset yet, intake is up but not ready and keeps
    /// trying in the background (see [`Intake::launch`]).
    pub async fn start(args: Args) -> Result<Intake, Error> {
        let intake = Intake::launch(args).await?;
        let mut published = intake.published.clone();
        let mut stopped = intake.stopped.clone();
        tokio::select! {
            _ = published.wait_for(|p| p.published || p.attempts > 0) => {}
            _ = stopped_signal(&mut stopped) => {}
        }
        Ok(intake)
    }

    /// Like [`Intake::start`] but without waiting on Kafka at all, so a
    /// stop signal is heard from the first moment. Until the ruleset is on
    /// the rulesets topic (retried with backoff, each retry logged),
    /// `/readyz` answers 503, `POST /v1/proposals` answers 503 with
    /// `Retry-After` (a proposal would cite rules an auditor cannot fetch)
    /// and ingress does not consume.
    pub async fn launch(args: Args) -> Result<Intake, Error> {
        args.validate()?;
        let ruleset = LoadedRuleset::load(&args.ruleset)?;
        let principals = load_principals(&args.principals)?;
        let (tokens, reviewers) = principals.counts();
        tracing::info!(
            ruleset = %args.ruleset.display(),
            version = ruleset.ruleset.version(),
            digest = ruleset.ruleset.digest(),
            rules = ruleset.ruleset.rules().len(),
            tokens,
            reviewers,
            "loaded configuration"
        );
        let metrics = Arc::new(Metrics::new());
        let log = KafkaLog::new(&args.kafka, Duration::from_millis(args.produce_timeout_ms))
            .map_err(Error::Kafka)?;
        let config = Shared::new(ruleset, principals);
        let readiness = Arc::new(Readiness::new(false));
        let projector = projector_client(&args.projector_url).map_err(Error::Projector)?;
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let state = AppState {
            config: config.clone(),
            log: Arc::new(log.clone()),
            projector: projector.clone(),
            metrics: metrics.clone(),
            clock: clock.clone(),
            readiness: readiness.clone(),
            recent: Arc::new(RecentInstances::new(10_000)),
            sessions: Arc::new(crate::http::Sessions::default()),
            waits: Arc::new(crate::http::CallerWaits::new(args.max_waits_per_caller)),
            options: HttpOptions {
                claim_timeout: Duration::from_millis(args.claim_timeout_ms),
                max_body_bytes: args.max_body_bytes,
            },
        };
        let ingress = if args.ingress {
            Some(Ingress::new(
                log.clone(),
                config.clone(),
                metrics.clone(),
                clock.clone(),
                IngressOptions {
                    group: args.ingress_group.clone(),
                    instance_id: args.ingress_instance_id.clone(),
                    batch: args.ingress_batch,
                    crash_after_appends: args.crash_after_appends,
                },
            )?)
        } else {
            None
        };
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(|source| Error::Listen {
                addr: args.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| Error::Listen {
            addr: args.listen,
            source,
        })?;

        let (stop, stopped) = watch::channel(false);
        let stop = Arc::new(stop);
        let (published_tx, published) = watch::channel(Publication::default());
        let router = crate::http::router(state).layer(axum::middleware::from_fn_with_state(
            (readiness.clone(), metrics.clone()),
            refuse_until_published,
        ));
        let server = {
            let mut stopped = stopped.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let result = axum::serve(listener, router)
                    .with_graceful_shutdown(async move {
                        let _ = stopped.wait_for(|stop| *stop).await;
                    })
                    .await
                    .map_err(Error::Serve);
                // If the server dies on its own, everything else stops too.
                stop.send_replace(true);
                result
            })
        };
        tracing::info!(%addr, "intake listening");

        let mut tasks = Vec::new();
        tasks.push((
            "publish",
            tokio::spawn(publish_ruleset(
                log.clone(),
                config.clone(),
                readiness.clone(),
                metrics.clone(),
                published_tx,
                stopped.clone(),
            )),
        ));
        if let Some(ingress) = ingress {
            let mut published = published.clone();
            let mut stopped = stopped.clone();
            let stop = stop.clone();
            tasks.push((
                "ingress",
                tokio::spawn(async move {
                    // Every envelope cites the ruleset in force: none before
                    // an auditor can fetch it, and no group membership either.
                    tokio::select! {
                        // Err: the publisher gave up, which it only does on a stop.
                        waited = published.wait_for(|p| p.published) => if waited.is_err() {
                            return;
                        },
                        _ = stopped_signal(&mut stopped) => return,
                    }
                    if let Err(error) = ingress.subscribe() {
                        // Was a start-up failure; it still stops intake.
                        tracing::error!(error = %crate::error_chain(&error), "ingress cannot start; stopping");
                        stop.send_replace(true);
                        return;
                    }
                    ingress.run(stopped).await;
                }),
            ));
        }
        if args.sweeper {
            let sweeper = Sweeper::new(Arc::new(log.clone()), projector, clock, metrics.clone());
            let interval = Duration::from_millis(args.sweep_interval_ms);
            tasks.push((
                "sweeper",
                tokio::spawn(sweeper.run(interval, stopped.clone())),
            ));
        }
        tasks.push((
            "readiness",
            tokio::spawn(check_log(log.clone(), readiness.clone(), stopped.clone())),
        ));
        let paths = Paths {
            ruleset: args.ruleset.clone(),
            principals: args.principals.clone(),
        };
        tasks.push((
            "reload",
            tokio::spawn(reload_on_sighup(
                paths,
                config,
                log.clone(),
                metrics,
                stopped.clone(),
            )),
        ));
        Ok(Intake {
            addr,
            stop,
            stopped,
            published,
            tasks,
            server,
            log,
            grace: Duration::from_millis(args.shutdown_timeout_ms),
        })
    }

    /// Whether the ruleset in force is on the rulesets topic yet.
    pub fn ruleset_published(&self) -> bool {
        self.published.borrow().published
    }

    /// Where the HTTP API listens (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Begin a graceful shutdown.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Resolves when a shutdown began (asked for, or the server died).
    pub async fn stopping(&self) {
        let mut stopped = self.stopped.clone();
        let _ = stopped.wait_for(|stop| *stop).await;
    }

    /// Wait for in-flight requests and the ingress batch in hand (at most
    /// the shutdown timeout), then flush the producer.
    pub async fn wait(self) -> Result<(), Error> {
        let mut result = Ok(());
        match tokio::time::timeout(self.grace, self.server).await {
            Ok(Ok(served)) => result = served,
            Ok(Err(error)) => tracing::error!(error = %error, "the http server task failed"),
            Err(_elapsed) => tracing::warn!(
                grace_ms = self.grace.as_millis() as u64,
                "in-flight requests did not finish in time"
            ),
        }
        for (name, task) in self.tasks {
            match tokio::time::timeout(self.grace, task).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::error!(task = name, error = %error, "task failed"),
                Err(_elapsed) => tracing::warn!(task = name, "task did not stop in time"),
            }
        }
        if !self.published.borrow().published {
            // Kafka never took the ruleset, so flushing would only wait out
            // the grace period; it is published again at the next start.
            tracing::info!(
                "the ruleset was never published; discarding what the producer still holds"
            );
            self.log.discard_queued();
        }
        let log = self.log.clone();
        let grace = self.grace;
        match tokio::task::spawn_blocking(move || log.flush(grace)).await {
            Ok(Ok(())) => tracing::info!("producer flushed"),
            Ok(Err(error)) => tracing::warn!(error = %error, "producer did not flush"),
            Err(error) => tracing::warn!(error = %error, "flush task failed"),
        }
        result
    }
}

/// Run intake until `shutdown` resolves, then stop gracefully.
pub async fn run(args: Args, shutdown: impl Future<Output = ()> + Send) -> Result<(), Error> {
    // Not `start`: a SIGTERM while Kafka is still loading must be heard.
    let intake = Intake::launch(args).await?;
    tokio::select! {
        _ = shutdown => tracing::info!("shutting down"),
        _ = intake.stopping() => {}
    }
    intake.stop();
    intake.wait().await
}

/// Resolves once a shutdown began (or the sender is gone).
async fn stopped_signal(stopped: &mut watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stop| *stop).await;
}

/// How publishing the ruleset at start-up is going.
#[derive(Debug, Clone, Copy, Default)]
struct Publication {
    /// Attempts that failed, and produce-timeout windows a pending attempt
    /// spent unacknowledged: `start` returns after the first.
    attempts: u32,
    published: bool,
}

/// Publish the ruleset in force to the rulesets topic, retrying until Kafka
/// acknowledges it or intake stops. A broker that is still loading, or a
/// rulesets topic not created yet, is waited out, never fatal.
async fn publish_ruleset(
    log: KafkaLog,
    config: Shared,
    readiness: Arc<Readiness>,
    metrics: Arc<Metrics>,
    progress: watch::Sender<Publication>,
    mut stopped: watch::Receiver<bool>,
) {
    let topic = log.topics().rulesets_topic.clone();
    let window = log.timeout();
    let started = std::time::Instant::now();
    let mut backoff = Duration::from_millis(500);
    let mut attempt: u32 = 0;
    loop {
        // A SIGHUP reload may have published a newer ruleset meanwhile; the
        // one in force is what must be on the topic.
        let loaded = config.snapshot().ruleset;
        attempt += 1;
        let failure = match log.enqueue_ruleset(&loaded) {
            Err(error) => crate::error_chain(&error),
            Ok(mut delivery) => loop {
                tokio::select! {
                    _ = stopped_signal(&mut stopped) => {
                        tracing::info!(topic = %topic, "stopping before the ruleset was published");
                        return;
                    }
                    waited = tokio::time::timeout(window, &mut delivery) => match waited {
                        Ok(Ok(Ok(delivered))) => {
                            let appended = Appended {
                                partition: delivered.partition,
                                offset: delivered.offset,
                            };
                            crate::log::log_published(&topic, &loaded, appended);
                            // The directory goes first too: a signed
                            // decision must never cite a key before the
                            // directory naming its owner is on the log.
                            if let Err(error) = log.publish_directory(&config.snapshot().principals).await {
                                break crate::error_chain(&error);
                            }
                            metrics.ruleset_loaded_at.set(crate::now_millis() / 1000);
                            readiness.ruleset_published.store(true, Ordering::Relaxed);
                            progress.send_modify(|p| p.published = true);
                            return;
                        }
                        Ok(Ok(Err((error, _message)))) => break error.to_string(),
                        Ok(Err(_canceled)) => break "the producer dropped the record".to_owned(),
                        Err(_elapsed) => {
                            // Still queued: librdkafka keeps retrying it, so
                            // wait on, rather than queue a copy.
                            let Some(problem) = count_retry(&log, &topic, &metrics, &progress, &mut stopped).await else {
                                return;
                            };
                            tracing::warn!(
                                topic = %topic,
                                digest = loaded.ruleset.digest(),
                                attempt,
                                waited_ms = started.elapsed().as_millis() as u64,
                                retry_in_ms = window.as_millis() as u64,
                                problem = problem.as_deref().unwrap_or("none seen; the broker may still be loading"),
                                "the ruleset is not acknowledged yet; not ready, still trying"
                            );
                        }
                    },
                }
            },
        };
        let Some(problem) = count_retry(&log, &topic, &metrics, &progress, &mut stopped).await
        else {
            return;
        };
        tracing::warn!(
            topic = %topic,
            digest = loaded.ruleset.digest(),
            attempt,
            waited_ms = started.elapsed().as_millis() as u64,
            retry_in_ms = backoff.as_millis() as u64,
            error = %failure,
            problem = problem.as_deref().unwrap_or("none seen"),
            "cannot publish the ruleset; not ready, retrying"
        );
        tokio::select! {
            _ = stopped_signal(&mut stopped) => {
                tracing::info!(topic = %topic, "stopping before the ruleset was published");
                return;
            }
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// `future`'s output, or `None` if a shutdown begins first.
/// Count a failed or slow publication attempt and ask the broker why the
/// topic does not take records; `None` when intake is stopping meanwhile
/// (said in the log), so the publisher returns.
async fn count_retry(
    log: &KafkaLog,
    topic: &str,
    metrics: &Metrics,
    progress: &watch::Sender<Publication>,
    stopped: &mut watch::Receiver<bool>,
) -> Option<Option<String>> {
    metrics.ruleset_publish_retries.inc();
    progress.send_modify(|p| p.attempts += 1);
    let problem = unless_stopped(stopped, topic_problem(log, topic)).await;
    if problem.is_none() {
        tracing::info!(topic = %topic, "stopping before the ruleset was published");
    }
    problem
}

async fn unless_stopped<T>(
    stopped: &mut watch::Receiver<bool>,
    future: impl Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        output = future => Some(output),
        _ = stopped_signal(stopped) => None,
    }
}

/// [`KafkaLog::topic_problem`] off the async threads.
async fn topic_problem(log: &KafkaLog, topic: &str) -> Option<String> {
    let log = log.clone();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || log.topic_problem(&topic, Duration::from_secs(3)))
        .await
        .unwrap_or_else(|error| Some(format!("the metadata check failed: {error}")))
}

/// Answer `POST /v1/proposals` 503 with `Retry-After` until the ruleset is
/// published: a proposal is resolved against the ruleset and cites it.
async fn refuse_until_published(
    State((readiness, metrics)): State<(Arc<Readiness>, Arc<Metrics>)>,
    request: Request,
    next: Next,
) -> Response {
    if request.method() == Method::POST && request.uri().path() == "/v1/proposals" {
        if let Err(refused) = readiness.require_ruleset() {
            // `track` (which counts requests) runs after routing, inside this layer.
            metrics
                .http_requests
                .get_or_create(&HttpLabels {
                    route: "/v1/proposals".to_owned(),
                    status: refused.status.as_u16(),
                })
                .observe(0.0);
            return refused.into_response();
        }
    }
    next.run(request).await
}

/// Keep `/readyz` honest: ask for the log topic's metadata every few seconds.
async fn check_log(log: KafkaLog, readiness: Arc<Readiness>, mut stopped: watch::Receiver<bool>) {
    loop {
        let problem = topic_problem(&log, &log.topics().log_topic).await;
        let ok = problem.is_none();
        let was = readiness.log.swap(ok, Ordering::Relaxed);
        if was != ok {
            tracing::info!(
                topic = %log.topics().log_topic,
                reachable = ok,
                problem = problem.as_deref(),
                "log topic reachability changed"
            );
        }
        tokio::select! {
            _ = stopped_signal(&mut stopped) => return,
            _ = tokio::time::sleep(Duration::from_secs(if ok { 5 } else { 1 })) => {}
        }
    }
}

/// On SIGHUP, reload both files. A file that fails to load changes
/// nothing; a new ruleset is in force only once it is on the rulesets topic.
async fn reload_on_sighup(
    paths: Paths,
    config: Shared,
    log: KafkaLog,
    metrics: Arc<Metrics>,
    mut stopped: watch::Receiver<bool>,
) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(hangup) => hangup,
            Err(error) => {
                tracing::warn!(error = %error, "cannot listen for SIGHUP; reload by restarting");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = stopped_signal(&mut stopped) => return,
                received = hangup.recv() => {
                    if received.is_none() {
                        return;
                    }
                    reload(&paths, &config, &log, &metrics).await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (paths, config, log, metrics);
        let _ = stopped.wait_for(|stop| *stop).await;
    }
}

/// Reload the ruleset and the principals (see [`reload_on_sighup`]).
pub async fn reload(paths: &Paths, config: &Shared, log: &KafkaLog, metrics: &Metrics) {
    let current = config.snapshot();
    // Like a ruleset, a new directory is in force only once it is on the
    // principals topic: a key must be published before it can sign.
    let principals = match load_principals(&paths.principals) {
        Ok(principals) if principals.directory() == current.principals.directory() => {
            Arc::new(principals)
        }
        Ok(principals) => match log.publish_directory(&principals).await {
            Ok(_) => Arc::new(principals),
            Err(error) => {
                metrics.reloads_failed.inc();
                tracing::error!(error = %crate::error_chain(&error), "new reviewer directory not published; keeping the principals in force");
                current.principals.clone()
            }
        },
        Err(error) => {
            metrics.reloads_failed.inc();
            tracing::error!(error = %crate::error_chain(&error), "reload refused; keeping the principals in force");
            current.principals.clone()
        }
    };
    let ruleset = match LoadedRuleset::load(&paths.ruleset) {
        Ok(loaded) if loaded.ruleset.digest() == current.ruleset.ruleset.digest() => {
            current.ruleset.clone()
        }
        Ok(loaded) => match log.publish_ruleset(&loaded).await {
            Ok(_) => {
                metrics.ruleset_loaded_at.set(crate::now_millis() / 1000);
                tracing::info!(
                    version = loaded.ruleset.version(),
                    digest = loaded.ruleset.digest(),
                    "ruleset reloaded"
                );
                Arc::new(loaded)
            }
            Err(error) => {
                metrics.reloads_failed.inc();
                tracing::error!(error = %crate::error_chain(&error), "new ruleset not published; keeping the one in force");
                current.ruleset.clone()
            }
        },
        Err(error) => {
            metrics.reloads_failed.inc();
            tracing::error!(error = %crate::error_chain(&error), "reload refused; keeping the ruleset in force");
            current.ruleset.clone()
        }
    };
    let (tokens, reviewers) = principals.counts();
    tracing::info!(
        tokens,
        reviewers,
        digest = ruleset.ruleset.digest(),
        "configuration reloaded"
    );
    config.replace(ruleset, principals);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn urls(flags: &[&str]) -> Vec<String> {
        let base = ["intake", "--ruleset", "r.yaml", "--principals", "p.yaml"];
        Cli::try_parse_from(base.iter().chain(flags))
            .unwrap()
            .args
            .projector_url
    }

    #[test]
    fn one_projector_or_every_shard_by_repeating_the_flag_or_with_commas() {
        assert_eq!(urls(&[]), ["http://127.0.0.1:8081"]);
        let two = ["http://p0:8081", "http://p1:8081"];
        assert_eq!(
            urls(&["--projector-url", "http://p0:8081,http://p1:8081"]),
            two
        );
        assert_eq!(
            urls(&[
                "--projector-url",
                "http://p0:8081",
                "--projector-url=http://p1:8081"
            ]),
            two
        );
        assert!(projector_client(&urls(&[])).is_ok());
        assert!(projector_client(&two.map(str::to_owned)).is_ok());
        assert!(matches!(
            projector_client(&["http://p0:8081".to_owned(), "http://p0:8081".to_owned()]),
            Err(ProjectorError::Sharding(_))
        ));
        assert!(projector_client(&[" ".to_owned()]).is_err());
    }

    #[test]
    fn the_config_check_refuses_what_start_would() {
        let check = |flag: &str| check_projector_urls(&urls(&["--projector-url", flag]));
        assert_eq!(check("http://p0:8081").unwrap(), 1);
        assert_eq!(check("http://p0:8081,http://p1:8081/").unwrap(), 2);
        let error = check("http://p0:8081,http://p0:8081").unwrap_err();
        assert!(error.to_string().contains("given twice"), "{error}");
        let error = check(" , ").unwrap_err();
        assert!(error.to_string().contains("no projector URL"), "{error}");
        assert!(matches!(
            check("http://p0:8081,p1:8081"),
            Err(ProjectorError::Url(_))
        ));
    }
}
