//! Intake as a service: flags, start-up, the background tasks (ingress,
//! sweeper, readiness, SIGHUP reload) and graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::producer::Producer;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use warrant_kafka::KafkaArgs;

use crate::config::{load_principals, LoadedRuleset, Paths, Shared};
use crate::http::{AppState, Clock, HttpOptions, Readiness, RecentInstances, SystemClock};
use crate::ingress::{Ingress, IngressOptions};
use crate::log::KafkaLog;
use crate::metrics::Metrics;
use crate::projector::HttpProjector;
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

    /// The authority rules (YAML, SPEC §4). Published to the rulesets topic
    /// at start and on every SIGHUP that changes it.
    #[arg(long, env = "WARRANT_RULESET")]
    pub ruleset: PathBuf,

    /// Bearer tokens and the reviewer directory (YAML). Reloaded on SIGHUP.
    #[arg(long, env = "WARRANT_PRINCIPALS")]
    pub principals: PathBuf,

    /// Base URL of warrant-projector, asked whether instances exist, what
    /// the fold answered an execution request, and which deadlines are due.
    #[arg(
        long,
        env = "WARRANT_PROJECTOR_URL",
        default_value = "http://127.0.0.1:8081"
    )]
    pub projector_url: String,

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

    /// `submitted_by` of envelopes from the proposals topic
    /// [default: kafka:<proposals topic>].
    #[arg(long, env = "WARRANT_PROPOSALS_SUBMITTED_BY")]
    pub proposals_submitted_by: Option<String>,

    /// `submitted_by` of envelopes from the signals topic
    /// [default: kafka:<signals topic>].
    #[arg(long, env = "WARRANT_SIGNALS_SUBMITTED_BY")]
    pub signals_submitted_by: Option<String>,

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
            projector_url: "http://127.0.0.1:9".to_owned(),
            claim_timeout_ms: 5000,
            produce_timeout_ms: 5000,
            max_body_bytes: 65_536,
            ingress: true,
            ingress_instance_id: None,
            ingress_batch: 500,
            crash_after_appends: None,
            proposals_submitted_by: None,
            signals_submitted_by: None,
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

/// A running intake.
pub struct Intake {
    addr: SocketAddr,
    stop: Arc<watch::Sender<bool>>,
    stopped: watch::Receiver<bool>,
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
    /// Load the files, publish the ruleset, bind the listener and start
    /// every task. Fails (and starts nothing) if any of that fails.
    pub async fn start(args: Args) -> Result<Intake, Error> {
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
        log.publish_ruleset(&ruleset)
            .await
            .map_err(Error::PublishRuleset)?;
        metrics.ruleset_loaded_at.set(crate::now_millis() / 1000);
        let config = Shared::new(ruleset, principals);
        let readiness = Arc::new(Readiness::new(false));
        readiness.ruleset_published.store(true, Ordering::Relaxed);
        let projector = Arc::new(
            HttpProjector::new(&args.projector_url, Duration::from_secs(5))
                .map_err(Error::Projector)?,
        );
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let state = AppState {
            config: config.clone(),
            log: Arc::new(log.clone()),
            projector: projector.clone(),
            metrics: metrics.clone(),
            clock: clock.clone(),
            readiness: readiness.clone(),
            recent: Arc::new(RecentInstances::new(10_000)),
            options: HttpOptions {
                claim_timeout: Duration::from_millis(args.claim_timeout_ms),
                max_body_bytes: args.max_body_bytes,
            },
        };
        let ingress = if args.ingress {
            let topics = &args.kafka;
            Some(Ingress::new(
                log.clone(),
                config.clone(),
                metrics.clone(),
                clock.clone(),
                IngressOptions {
                    group: args.ingress_group.clone(),
                    instance_id: args.ingress_instance_id.clone(),
                    proposals_submitted_by: args
                        .proposals_submitted_by
                        .clone()
                        .unwrap_or_else(|| format!("kafka:{}", topics.proposals_topic)),
                    signals_submitted_by: args
                        .signals_submitted_by
                        .clone()
                        .unwrap_or_else(|| format!("kafka:{}", topics.signals_topic)),
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
        let router = crate::http::router(state);
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
        if let Some(ingress) = ingress {
            tasks.push(("ingress", tokio::spawn(ingress.run(stopped.clone()))));
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
            tasks,
            server,
            log,
            grace: Duration::from_millis(args.shutdown_timeout_ms),
        })
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
    let intake = Intake::start(args).await?;
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

/// Keep `/readyz` honest: ask for the log topic's metadata every few seconds.
async fn check_log(log: KafkaLog, readiness: Arc<Readiness>, mut stopped: watch::Receiver<bool>) {
    loop {
        let producer = log.producer().clone();
        let topic = log.topics().log_topic.clone();
        let ok = tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&topic), Duration::from_secs(3))
                .map(|metadata| {
                    metadata.topics().iter().any(|t| {
                        t.name() == topic && t.error().is_none() && !t.partitions().is_empty()
                    })
                })
                .unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        let was = readiness.log.swap(ok, Ordering::Relaxed);
        if was != ok {
            tracing::info!(topic = %log.topics().log_topic, reachable = ok, "log topic reachability changed");
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
    let principals = match load_principals(&paths.principals) {
        Ok(principals) => Arc::new(principals),
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
