//! `warrant-projector`: fold `warrant.log` into a sled view and serve it.

use std::process::ExitCode;

use clap::Parser;
use warrant_runtime::{init_tracing, shutdown_signal, LogFormat};

/// mimalloc: the fold allocates and frees a few dozen small strings per
/// event, and glibc's malloc took ~40% of its time (make bench-fold).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Folds the Warrant log into a local view and serves execution records.
///
/// Consumes every partition of the log topic (or its shard's share,
/// --partitions) from the offsets stored in its sled directory, folds each
/// event with the same code as warrant-replay, and serves:
///
///   GET /v1/instances/{id}            the execution record of one instance
///                                     (421 not_owner: another shard's partition)
///   GET /v1/instances?status=S&limit=N&after=ID
///                                     instances by status, paged by id
///   GET /v1/checkpoint                consumed offsets, the partitions owned
///                                     and a digest of all heads
///   GET /v1/shard                     the partitions owned, of how many
///   GET /readyz                       200 once caught up with the log; 503 while
///                                     catching up or while the disk is full
///                                     ("status": "storage_error", with the error)
///   GET /healthz, GET /metrics
///
/// The sled directory is a disposable cache of the log: delete it (with the
/// projector stopped) and the next start rebuilds it from offset 0. The
/// projector rebuilds it by itself when sled cannot open it or a read finds
/// corrupt bytes (the read marks the view; the next start rebuilds), never
/// serving them. When the disk is full (ENOSPC, EDQUOT) it keeps the batch,
/// stops folding and retries with backoff, resuming by itself once the
/// write succeeds; any other I/O error (EIO, a read-only filesystem) stops
/// it with the error.
#[derive(Debug, Parser)]
#[command(name = "warrant-projector", version, verbatim_doc_comment)]
struct Cli {
    #[command(flatten)]
    args: warrant_projector::Args,
    /// Log line format.
    #[arg(long, env = "WARRANT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = cli.args.config()?;
    let summary = warrant_projector::run(config, shutdown_signal("warrant-projector")).await?;
    tracing::info!(
        records = summary.progress.records,
        batches = summary.progress.batches,
        caught_up = summary.progress.caught_up,
        "projector stopped"
    );
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format, "info");
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = %format!("{error:#}"), "projector failed");
            ExitCode::FAILURE
        }
    }
}
