//! The projector: folds `warrant.log` into a sled view and serves it.
//!
//! This crate owns the read side of docs/contract.md §6: it consumes every partition of
//! the log, or one shard's share of them (`--partitions`; assigned by hand,
//! from offsets kept in sled), folds each record
//! with `warrant_authority::step` — the same code replay runs — and commits
//! states, the log records in runs per partition (`runs`), a status index
//! and the consumed offsets in one atomic sled batch, flushed before
//! anything reports progress (the layout is in `store`). It serves
//! execution records, status queues, due deadlines (`deadlines`, kept in
//! memory) and a checkpoint over HTTP.
//!
//! It must never decide anything itself (no rule lives here), never write
//! to Kafka, and never treat sled as the truth: an unusable view is wiped
//! and rebuilt from the log.
//!
//! Entry points: [`Projector::start`] (a running projector you can stop and
//! wait for) and [`run`] (start, then stop when a future resolves).

pub mod deadlines;
mod error;
pub mod http;
mod ingest;
mod lanes;
pub mod metrics;
pub mod paused;
pub mod projection;
mod runs;
pub mod store;
#[cfg(test)]
mod testutil;
pub mod waiters;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use warrant_authority::{error_chain, Ownership};
use warrant_kafka::KafkaArgs;

pub use error::Error;
pub use http::{router, AppState};
pub use metrics::Metrics;
pub use projection::{BatchStats, Projection, Sealed};
pub use store::{
    Checkpoint, InstanceSummary, Opened, Owned, Page, StatusCounts, Store, StoreOptions,
};

/// Command-line flags and `WARRANT_*` variables; `--help` is the manual.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Directory of the sled view. Disposable: delete it (with the projector
    /// stopped) to rebuild the view from offset 0 of the log.
    #[arg(
        long,
        env = "WARRANT_PROJECTOR_DATA",
        default_value = ".cache/projector"
    )]
    pub data_dir: PathBuf,
    /// The partitions of the log this projector folds and serves: `all`, a
    /// list with ranges (`0-2`, `3,4,5`), or `I/N`, shard I of N: every
    /// partition p with p % N == I (I may be a StatefulSet pod's name, whose
    /// ordinal ends it). Each shard keeps its own view; a view built for
    /// other partitions is rebuilt from offset 0 (one that holds fewer of
    /// them is kept, and the new ones folded from the start of the log).
    #[arg(
        long,
        env = "WARRANT_PROJECTOR_PARTITIONS",
        value_name = "SPEC",
        default_value = "all",
        value_parser = parse_ownership
    )]
    pub partitions: Ownership,
    /// Address of the HTTP API (/v1/instances, /v1/checkpoint, /healthz, /metrics).
    #[arg(
        long,
        env = "WARRANT_PROJECTOR_LISTEN",
        default_value = "127.0.0.1:8081"
    )]
    pub listen: SocketAddr,
    /// Commit a batch once it holds this many records...
    #[arg(
        long,
        env = "WARRANT_PROJECTOR_BATCH_RECORDS",
        default_value_t = 10_000
    )]
    pub batch_records: usize,
    /// ...or this many milliseconds after its first record, whichever comes
    /// first (a batch is also committed as soon as the log is drained).
    #[arg(long, env = "WARRANT_PROJECTOR_BATCH_MS", default_value_t = 100)]
    pub batch_ms: u64,
    /// Instance states kept in memory between batches (a state is about
    /// 5 KiB in memory; one not cached costs a sled read when its next
    /// event comes).
    #[arg(
        long,
        env = "WARRANT_PROJECTOR_CACHE_INSTANCES",
        default_value_t = 10_000
    )]
    pub cache_instances: usize,
    /// Threads that decode records and fold instance states, each for its
    /// own share of the instances (0: one per CPU core; at most 256). The
    /// polling, the batch bookkeeping and the sled writes have threads of
    /// their own.
    #[arg(long, env = "WARRANT_PROJECTOR_FOLD_THREADS", default_value_t = 0)]
    pub fold_threads: usize,
    /// sled's page cache, in MiB.
    #[arg(long, env = "WARRANT_PROJECTOR_SLED_CACHE_MB", default_value_t = 128)]
    pub sled_cache_mb: u64,
    /// Exit 0 once the view has caught up with the high watermarks seen at
    /// start (for benchmarks, tests and one-shot rebuilds).
    #[arg(long, env = "WARRANT_PROJECTOR_EXIT_AT_END")]
    pub exit_at_end: bool,
    /// Seconds the HTTP server gets to finish requests on shutdown.
    #[arg(
        long,
        env = "WARRANT_PROJECTOR_SHUTDOWN_TIMEOUT_SECS",
        default_value_t = 10
    )]
    pub shutdown_timeout_secs: u64,
    /// Seconds between progress lines in the log.
    #[arg(long, env = "WARRANT_PROJECTOR_PROGRESS_SECS", default_value_t = 5)]
    pub progress_secs: u64,
    /// Requests that may wait at once on `GET /v1/instances/{id}?wait_ms=`;
    /// beyond it they are answered 503 `too_many_waiters` with Retry-After.
    #[arg(
        long,
        env = "WARRANT_PROJECTOR_MAX_WAITERS",
        default_value_t = http::DEFAULT_MAX_WAITERS
    )]
    pub max_waiters: usize,
}

fn parse_ownership(text: &str) -> Result<Ownership, String> {
    text.parse()
        .map_err(|error: warrant_authority::OwnershipError| error.to_string())
}

impl Args {
    /// The validated configuration.
    pub fn config(self) -> Result<Config, Error> {
        let config = Config {
            kafka: self.kafka,
            data_dir: self.data_dir,
            partitions: self.partitions,
            listen: self.listen,
            batch_records: self.batch_records,
            batch_wait: Duration::from_millis(self.batch_ms),
            cache_instances: self.cache_instances,
            fold_threads: match self.fold_threads {
                0 => std::thread::available_parallelism().map_or(1, usize::from),
                threads => threads,
            },
            store: StoreOptions {
                cache_bytes: self.sled_cache_mb.saturating_mul(1024 * 1024),
            },
            exit_at_end: self.exit_at_end,
            shutdown_timeout: Duration::from_secs(self.shutdown_timeout_secs),
            progress_interval: Duration::from_secs(self.progress_secs),
            max_waiters: self.max_waiters,
        };
        config.validate()?;
        Ok(config)
    }
}

/// Most fold lanes: each is a thread with its own queue and cache, and
/// lanes beyond the cores only cost memory. A typo such as
/// `--fold-threads 100000000` is refused at start rather than failing (or
/// panicking on the allocation) once the fold begins.
pub const MAX_FOLD_THREADS: usize = 256;

/// Everything the projector needs, validated once by [`Config::validate`].
#[derive(Debug, Clone)]
pub struct Config {
    pub kafka: KafkaArgs,
    pub data_dir: PathBuf,
    /// Which partitions this projector folds (`--partitions`).
    pub partitions: Ownership,
    pub listen: SocketAddr,
    pub batch_records: usize,
    pub batch_wait: Duration,
    pub cache_instances: usize,
    /// Lanes the fold runs in (1: on the polling thread).
    pub fold_threads: usize,
    pub store: StoreOptions,
    pub exit_at_end: bool,
    pub shutdown_timeout: Duration,
    pub progress_interval: Duration,
    /// Bound on concurrent record long-polls.
    pub max_waiters: usize,
}

impl Config {
    /// Defaults for a view in `data_dir` of `kafka.log_topic`, listening on
    /// an ephemeral local port (tests and benchmarks).
    pub fn new(kafka: KafkaArgs, data_dir: impl Into<PathBuf>) -> Config {
        Config {
            kafka,
            data_dir: data_dir.into(),
            partitions: Ownership::All,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            batch_records: 10_000,
            batch_wait: Duration::from_millis(100),
            cache_instances: 10_000,
            fold_threads: 2,
            store: StoreOptions::default(),
            exit_at_end: false,
            shutdown_timeout: Duration::from_secs(10),
            progress_interval: Duration::from_secs(5),
            max_waiters: http::DEFAULT_MAX_WAITERS,
        }
    }

    pub fn validate(&self) -> Result<(), Error> {
        let fail = |message: &str| Err(Error::Config(message.to_owned()));
        if self.kafka.log_topic.is_empty() {
            return fail("the log topic name is empty");
        }
        if self.batch_records == 0 {
            return fail("batch records must be at least 1");
        }
        if self.batch_wait.is_zero() {
            return fail("batch milliseconds must be at least 1");
        }
        if self.fold_threads > MAX_FOLD_THREADS {
            return Err(Error::Config(format!(
                "fold threads must be at most {MAX_FOLD_THREADS}, not {}",
                self.fold_threads
            )));
        }
        if self.store.cache_bytes < 1024 * 1024 {
            return fail("the sled cache must be at least 1 MiB");
        }
        if self.progress_interval.is_zero() {
            return fail("progress seconds must be at least 1");
        }
        if self.max_waiters == 0 || self.max_waiters > tokio::sync::Semaphore::MAX_PERMITS {
            return fail("max waiters must be at least 1");
        }
        Ok(())
    }
}

/// What has been committed to sled (and flushed) by this run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// Next offset per partition, as committed.
    pub offsets: BTreeMap<i32, i64>,
    pub records: u64,
    pub batches: u64,
    /// The view has reached the high watermarks seen when consuming began.
    pub caught_up: bool,
    /// Why the last batch could not be written (a full disk, an I/O
    /// error), while the commit thread retries it; `None` once written.
    pub storage_error: Option<String>,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub opened: Opened,
    pub progress: Progress,
}

/// A running projector: HTTP is up, the fold runs on its own threads.
#[derive(Debug)]
pub struct Projector {
    local_addr: SocketAddr,
    store: Arc<Store>,
    opened: Opened,
    stop: Arc<AtomicBool>,
    progress: watch::Receiver<Progress>,
    task: JoinHandle<Result<Progress, Error>>,
}

impl Projector {
    /// Open the view, bind HTTP, and start folding. Returns once HTTP
    /// listens; Kafka is connected in the background (with retries).
    pub async fn start(config: Config) -> Result<Projector, Error> {
        config.validate()?;
        let (store, opened) = {
            let (dir, topic, options) = (
                config.data_dir.clone(),
                config.kafka.log_topic.clone(),
                config.store.clone(),
            );
            tokio::task::spawn_blocking(move || Store::open(&dir, &topic, options))
                .await
                .map_err(|_| Error::ThreadDied { name: "open" })??
        };
        let store = Arc::new(store);
        match &opened {
            Opened::Fresh => {
                tracing::info!(path = %store.sled_dir().display(), "new sled view; folding from offset 0")
            }
            Opened::Resumed => {
                tracing::info!(path = %store.sled_dir().display(), "sled view opened; resuming from its offsets")
            }
            Opened::Rebuilt { reason } => {
                tracing::warn!(path = %store.sled_dir().display(), reason = %reason, "sled view was wiped; rebuilding from offset 0")
            }
        }
        let metrics = Arc::new(Metrics::new());
        metrics.set_counts(&store.status_counts()?);
        let resumed_at = store.offsets()?;
        for (partition, next) in &resumed_at {
            metrics.set_offset(*partition, *next, None);
        }

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
        let (http_stop, mut http_stopped) = watch::channel(false);
        // What the view holds already is committed: /readyz shows its
        // offsets even when the log has nothing new to fold.
        let (progress_tx, progress) = watch::channel(Progress {
            offsets: resumed_at,
            ..Progress::default()
        });
        let waiters = Arc::new(waiters::RecordWaiters::new(config.max_waiters));
        let app = router(AppState {
            store: store.clone(),
            metrics: metrics.clone(),
            committed: progress.clone(),
            waiters: waiters.clone(),
        });
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = http_stopped.wait_for(|stopped| *stopped).await;
                })
                .await
        });
        tracing::info!(listen = %local_addr, "http listening");

        let stop = Arc::new(AtomicBool::new(false));
        let (done_tx, done_rx) = oneshot::channel();
        let ingest = ingest::Ingest {
            config: config.clone(),
            store: store.clone(),
            metrics,
            stop: stop.clone(),
            progress: progress_tx,
            waiters: waiters.clone(),
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

        let shutdown_timeout = config.shutdown_timeout;
        let final_progress = progress.clone();
        let task = tokio::spawn(async move {
            let folded = done_rx
                .await
                .unwrap_or(Err(Error::ThreadDied { name: "fold" }));
            if let Err(error) = &folded {
                tracing::error!(error = %error_chain(error), "folding stopped");
            }
            // Nothing will change any more: answer every record wait now
            // rather than hold shutdown for up to a wait's length.
            waiters.close();
            let _ = http_stop.send(true);
            let abort = server.abort_handle();
            let served = match tokio::time::timeout(shutdown_timeout, server).await {
                Ok(Ok(Ok(()))) => Ok(()),
                Ok(Ok(Err(error))) => Err(Error::Serve(error)),
                Ok(Err(_)) => Err(Error::ThreadDied { name: "http" }),
                Err(_) => {
                    tracing::warn!(
                        timeout_secs = shutdown_timeout.as_secs(),
                        "http server did not stop in time; closing it"
                    );
                    abort.abort();
                    Ok(())
                }
            };
            folded?;
            served?;
            let progress = final_progress.borrow().clone();
            Ok(progress)
        });

        Ok(Projector {
            local_addr,
            store,
            opened,
            stop,
            progress,
            task,
        })
    }

    /// Where HTTP listens (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn opened(&self) -> &Opened {
        &self.opened
    }

    /// Committed progress, updated after every flushed batch.
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.clone()
    }

    /// Wait until the view has reached the high watermarks seen at start.
    /// Returns `false` if the projector stopped first.
    pub async fn caught_up(&self) -> bool {
        let mut progress = self.progress.clone();
        let reached = progress.wait_for(|p| p.caught_up).await.is_ok();
        reached
    }

    /// Ask for a graceful stop: stop consuming, commit and flush the batch
    /// in hand, then stop HTTP. Wait for it with [`Projector::wait`].
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    /// Wait until the projector has stopped (after [`Projector::stop`], or
    /// by itself with `exit_at_end` or on an error).
    pub async fn wait(self) -> Result<Summary, Error> {
        let progress = match self.task.await {
            Ok(result) => result?,
            Err(_) => return Err(Error::ThreadDied { name: "supervisor" }),
        };
        Ok(Summary {
            opened: self.opened,
            progress,
        })
    }
}

/// Run until `shutdown` resolves (or, with `exit_at_end`, until caught up),
/// then stop gracefully.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<Summary, Error> {
    let projector = Projector::start(config).await?;
    let mut progress = projector.progress();
    let stopped_by_itself = async {
        // The sender lives as long as the fold threads.
        while progress.changed().await.is_ok() {}
    };
    tokio::select! {
        () = shutdown => {
            tracing::info!("shutting down: committing the batch in hand");
            projector.stop();
        }
        () = stopped_by_itself => {}
    }
    projector.wait().await
}

/// The system clock in Unix milliseconds, for lag and age metrics only:
/// nothing the fold decides reads it.
pub(crate) fn unix_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn args(extra: &[&str]) -> Result<Config, Error> {
        let mut argv = vec!["warrant-projector"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).unwrap().args.config()
    }

    #[test]
    fn fold_threads_are_one_per_core_by_default_and_bounded() {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        assert_eq!(args(&[]).unwrap().fold_threads, cores);
        assert_eq!(args(&["--fold-threads", "1"]).unwrap().fold_threads, 1);
        assert_eq!(args(&["--fold-threads", "256"]).unwrap().fold_threads, 256);
        for huge in ["257", "100000000", &usize::MAX.to_string()] {
            let refused = args(&["--fold-threads", huge]);
            assert!(
                matches!(refused, Err(Error::Config(_))),
                "{huge}: {refused:?}"
            );
        }
    }
}
