//! The notifier: tells people when Warrant needs them, from the log alone.
//!
//! It reads `warrant.log` like replay does (every partition, assigned by
//! hand, folded with `warrant_authority::step`), derives notifications from
//! the fold's entries with a pure function ([`derive`]): *review needed*
//! when an instance awaits a decision or is blocked, a *reminder* before the
//! decision deadline, the *outcome* for the proposer, an *alert* on every
//! override and every ungranted execution. Each has a stable id (UUIDv5 of
//! instance, entry and kind), so a receiver deduplicates retries. They go
//! to webhooks and Slack-compatible channels from a YAML file, at least
//! once, each channel on its own worker.
//!
//! States, consumed offsets, the reminder schedule and the outbox live in
//! its own sled store, written in one atomic batch per Kafka batch: a
//! restart (even after SIGKILL) resumes exactly, derives the same
//! notifications with the same ids, and loses none that were queued.
//!
//! It must never write to Kafka, decide anything the fold did not, or read
//! a clock inside the derivation (reminders take the time as an argument).

pub mod channels;
pub mod deliver;
pub mod derive;
mod error;
pub mod http;
mod ingest;
pub mod metrics;
pub mod notification;
pub mod store;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use warrant_authority::error_chain;
use warrant_kafka::KafkaArgs;

pub use channels::{Channel, Channels, ConfigError};
pub use error::Error;
pub use metrics::Metrics;
pub use notification::{Kind, LinkBase, Notification};
pub use store::{Opened, Pending, Store};

/// Command-line flags and `WARRANT_*` variables; `--help` is the manual.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// The channels file (YAML): where notifications go and which ones go
    /// where (docs/notifier.md). Validated at start; SIGHUP reloads it, and
    /// a file that does not validate leaves the previous channels in force.
    #[arg(long, env = "WARRANT_NOTIFIER_CHANNELS")]
    pub channels: PathBuf,
    /// Directory of the notifier's store (fold states, offsets, reminders,
    /// the outbox). Not disposable: it holds notifications not yet delivered.
    #[arg(long, env = "WARRANT_NOTIFIER_DATA", default_value = ".cache/notifier")]
    pub data_dir: PathBuf,
    /// Address of /healthz, /readyz, /metrics and /v1/outbox.
    #[arg(
        long,
        env = "WARRANT_NOTIFIER_LISTEN",
        default_value = "127.0.0.1:8082"
    )]
    pub listen: SocketAddr,
    /// Intake's public URL: notifications link the execution record at
    /// {intake-url}/v1/instances/{id}.
    #[arg(
        long,
        env = "WARRANT_NOTIFIER_INTAKE_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub intake_url: String,
    /// The console's public URL, if not intake's: notifications link
    /// {console-url}/console/#/instance/{id}.
    #[arg(long, env = "WARRANT_NOTIFIER_CONSOLE_URL")]
    pub console_url: Option<String>,
    /// Remind this many milliseconds before an instance's decision deadline
    /// while it still awaits people (0: no reminders).
    #[arg(
        long,
        env = "WARRANT_NOTIFIER_REMINDER_BEFORE_MS",
        default_value_t = 900_000
    )]
    pub reminder_before_ms: i64,
    /// On a new store, notify about the whole log, not only about events
    /// recorded from the moment the store was created.
    #[arg(long, env = "WARRANT_NOTIFIER_BACKFILL")]
    pub backfill: bool,
    /// Put every parked notification back in its queue at start (after the
    /// receiver was fixed), with its attempts reset.
    #[arg(long, env = "WARRANT_NOTIFIER_RETRY_PARKED")]
    pub retry_parked: bool,
    /// Commit a batch once it holds this many records...
    #[arg(long, env = "WARRANT_NOTIFIER_BATCH_RECORDS", default_value_t = 1000)]
    pub batch_records: usize,
    /// ...or this many milliseconds after its first record (a batch is also
    /// committed as soon as no record is waiting).
    #[arg(long, env = "WARRANT_NOTIFIER_BATCH_MS", default_value_t = 50)]
    pub batch_ms: u64,
    /// Seconds deliveries in flight get to finish on shutdown.
    #[arg(
        long,
        env = "WARRANT_NOTIFIER_SHUTDOWN_TIMEOUT_SECS",
        default_value_t = 10
    )]
    pub shutdown_timeout_secs: u64,
}

impl Args {
    pub fn config(self) -> Result<Config, Error> {
        let console_url = self.console_url.unwrap_or_else(|| self.intake_url.clone());
        let config = Config {
            kafka: self.kafka,
            channels_file: self.channels,
            data_dir: self.data_dir,
            listen: self.listen,
            links: LinkBase {
                intake_url: self.intake_url,
                console_url,
            },
            reminder_before_ms: self.reminder_before_ms,
            backfill: self.backfill,
            retry_parked: self.retry_parked,
            batch_records: self.batch_records,
            batch_wait: Duration::from_millis(self.batch_ms),
            shutdown_timeout: Duration::from_secs(self.shutdown_timeout_secs),
        };
        config.validate()?;
        Ok(config)
    }
}

/// Everything the notifier needs, validated by [`Config::validate`].
#[derive(Debug, Clone)]
pub struct Config {
    pub kafka: KafkaArgs,
    pub channels_file: PathBuf,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub links: LinkBase,
    pub reminder_before_ms: i64,
    pub backfill: bool,
    pub retry_parked: bool,
    pub batch_records: usize,
    pub batch_wait: Duration,
    pub shutdown_timeout: Duration,
}

impl Config {
    pub fn validate(&self) -> Result<(), Error> {
        let fail = |message: String| Err(Error::Config(message));
        if self.kafka.log_topic.is_empty() {
            return fail("the log topic name is empty".to_owned());
        }
        for (flag, url) in [
            ("--intake-url", &self.links.intake_url),
            ("--console-url", &self.links.console_url),
        ] {
            let ok = reqwest::Url::parse(url)
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some());
            if !ok {
                return fail(format!("{flag} {url:?} is not an http(s) URL"));
            }
        }
        if self.reminder_before_ms < 0 {
            return fail("--reminder-before-ms must be 0 or more".to_owned());
        }
        if self.batch_records == 0 || self.batch_wait.is_zero() {
            return fail("--batch-records and --batch-ms must be at least 1".to_owned());
        }
        Ok(())
    }
}

/// Consumed offsets as committed, and whether the fold has caught up with
/// the high watermarks seen at start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    pub offsets: BTreeMap<i32, i64>,
    pub caught_up: bool,
}

/// A running notifier.
#[derive(Debug)]
pub struct Notifier {
    local_addr: SocketAddr,
    stop: Arc<AtomicBool>,
    progress: watch::Receiver<Progress>,
    channels: watch::Sender<Arc<Channels>>,
    channels_file: PathBuf,
    metrics: Arc<Metrics>,
    task: JoinHandle<Result<(), Error>>,
}

impl Notifier {
    /// Load the channels, open the store, bind HTTP, start the channel
    /// workers and the fold. Kafka is connected in the background.
    pub async fn start(config: Config) -> Result<Notifier, Error> {
        config.validate()?;
        let channels = Channels::load(&config.channels_file)?;
        tracing::info!(file = %config.channels_file.display(), channels = channels.channels.len(), "channels loaded");
        let (store, opened, backlog) = {
            let (dir, topic, backfill, retry) = (
                config.data_dir.clone(),
                config.kafka.log_topic.clone(),
                config.backfill,
                config.retry_parked,
            );
            tokio::task::spawn_blocking(move || -> Result<_, Error> {
                let (store, opened) = Store::open(&dir, &topic, unix_millis(), backfill)?;
                let mut backlog = store.outbox()?;
                if retry {
                    for pending in backlog.iter_mut().filter(|p| p.parked) {
                        pending.parked = false;
                        pending.attempts = 0;
                        pending.next_attempt_at = 0;
                        store.put_pending(pending)?;
                    }
                    store.flush()?;
                }
                Ok((store, opened, backlog))
            })
            .await
            .map_err(|_| Error::ThreadDied { name: "open" })??
        };
        let store = Arc::new(store);
        let parked = backlog.iter().filter(|p| p.parked).count();
        match opened {
            Opened::Fresh => {
                tracing::info!(path = %store.path().display(), backfill = config.backfill, "new store; folding the log from its start")
            }
            Opened::Resumed => {
                tracing::info!(path = %store.path().display(), pending = backlog.len() - parked, parked, "store opened; resuming from its offsets")
            }
        }
        let metrics = Arc::new(Metrics::new());
        metrics
            .config_loaded_at_seconds
            .set(unix_millis() as f64 / 1000.0);
        let (channels_tx, channels_rx) = watch::channel(Arc::new(channels));

        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| Error::Listen {
                addr: config.listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| Error::Listen {
            addr: config.listen,
            source,
        })?;
        let (progress_tx, progress) = watch::channel(Progress::default());
        let app = http::router(http::AppState {
            store: store.clone(),
            metrics: metrics.clone(),
            progress: progress.clone(),
        });
        let (http_stop, mut http_stopped) = watch::channel(false);
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = http_stopped.wait_for(|stopped| *stopped).await;
                })
                .await
        });
        tracing::info!(listen = %local_addr, "http listening");

        let (deliver_tx, deliver_rx) = mpsc::unbounded_channel();
        let (workers_stop, workers_stopped) = watch::channel(false);
        let workers = deliver::Workers::start(
            store.clone(),
            metrics.clone(),
            channels_rx.clone(),
            deliver_rx,
            backlog,
            workers_stopped,
            config.shutdown_timeout,
        );

        let stop = Arc::new(AtomicBool::new(false));
        let (done_tx, done_rx) = oneshot::channel();
        let ingest = ingest::Ingest {
            config: config.clone(),
            store: store.clone(),
            metrics: metrics.clone(),
            channels: channels_rx,
            stop: stop.clone(),
            progress: progress_tx,
            deliver: deliver_tx,
        };
        std::thread::Builder::new()
            .name("warrant-fold".to_owned())
            .spawn(move || {
                let _ = done_tx.send(ingest.run());
            })
            .map_err(|source| Error::Spawn {
                name: "fold",
                source,
            })?;

        let task = tokio::spawn(async move {
            let folded = done_rx
                .await
                .unwrap_or(Err(Error::ThreadDied { name: "fold" }));
            if let Err(error) = &folded {
                tracing::error!(error = %error_chain(error), "folding stopped");
            }
            // The fold has committed its last batch: now the workers finish
            // what they have in flight, then HTTP stops.
            let _ = workers_stop.send(true);
            workers.wait().await;
            let _ = http_stop.send(true);
            // A server that does not stop in time is dropped with the task.
            if let Ok(Ok(Err(error))) = tokio::time::timeout(Duration::from_secs(5), server).await {
                return Err(Error::Serve(error));
            }
            folded
        });

        Ok(Notifier {
            local_addr,
            stop,
            progress,
            channels: channels_tx,
            channels_file: config.channels_file,
            metrics,
            task,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.clone()
    }

    /// Reload the channels file; a file that does not validate leaves the
    /// channels in force, and the error says why.
    pub fn reload(&self) -> Result<(), Error> {
        match Channels::load(&self.channels_file) {
            Ok(channels) => {
                tracing::info!(file = %self.channels_file.display(), channels = channels.channels.len(), "channels reloaded");
                self.metrics.config_reloads.inc();
                self.metrics
                    .config_loaded_at_seconds
                    .set(unix_millis() as f64 / 1000.0);
                self.channels.send_replace(Arc::new(channels));
                Ok(())
            }
            Err(error) => {
                self.metrics.config_reload_failures.inc();
                tracing::error!(file = %self.channels_file.display(), error = %error_chain(&error), "channels file refused; the previous channels stay in force");
                Err(error.into())
            }
        }
    }

    /// Stop consuming (the batch in hand is committed), let deliveries in
    /// flight finish, then stop HTTP. Wait with [`Notifier::wait`].
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    pub async fn wait(self) -> Result<(), Error> {
        match self.task.await {
            Ok(result) => result,
            Err(_) => Err(Error::ThreadDied { name: "supervisor" }),
        }
    }
}

/// Run until `shutdown` resolves, reloading the channels on SIGHUP.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    let notifier = Notifier::start(config).await?;
    let mut progress = notifier.progress();
    let stopped_by_itself = async { while progress.changed().await.is_ok() {} };
    tokio::pin!(shutdown, stopped_by_itself);
    let mut hangups = hangups();
    loop {
        tokio::select! {
            () = &mut shutdown => {
                tracing::info!("shutting down: committing the batch in hand, finishing deliveries in flight");
                notifier.stop();
                break;
            }
            () = &mut stopped_by_itself => break,
            Some(()) = hangups.recv() => {
                // Errors are logged by reload; the old channels stay.
                let _ = notifier.reload();
            }
        }
    }
    notifier.wait().await
}

/// One message per SIGHUP.
fn hangups() -> mpsc::Receiver<()> {
    let (tx, rx) = mpsc::channel(1);
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::hangup()) {
            Ok(mut hangup) => {
                tokio::spawn(async move {
                    while hangup.recv().await.is_some() {
                        if tx.send(()).await.is_err() {
                            break;
                        }
                    }
                });
            }
            Err(error) => {
                tracing::warn!(error = %error, "cannot listen for SIGHUP; the channels file is read only at start")
            }
        }
    }
    #[cfg(not(unix))]
    drop(tx);
    rx
}

/// The system clock in Unix milliseconds: reminders and delivery times
/// only, never inside the derivation.
pub(crate) fn unix_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
