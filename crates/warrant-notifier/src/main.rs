//! `warrant-notifier`: notifications derived from `warrant.log`.

use std::process::ExitCode;

use clap::Parser;
use warrant_runtime::{init_tracing, shutdown_signal, LogFormat};

/// mimalloc: the fold allocates and frees a few dozen small strings per
/// event, and glibc's malloc took ~40% of its time (make bench-fold).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Tells people when Warrant needs them, from the log alone.
///
/// Folds every partition of the log topic with the same code as
/// warrant-replay and derives, from the fold's entries:
///
///   review_needed  an instance awaits a decision (approvers and overriders)
///                  or is blocked by a DENY (overriders)
///   reminder       --reminder-before-ms before the decision deadline, while
///                  the instance still awaits people
///   outcome        AUTHORIZED, REJECTED, EXPIRED, WITHDRAWN, COMPLETED, FAILED
///   alert          every override (applied or refused) and every
///                  UngrantedExecution violation
///
/// Each is a JSON document with a stable id (UUIDv5 of instance, entry seq
/// and kind), sent to the channels of --channels that route it: signed
/// webhooks (X-Warrant-Timestamp, X-Warrant-Signature, Idempotency-Key) and
/// Slack-compatible incoming webhooks. Delivery is at least once, with
/// exponential backoff and jitter; after a channel's max_attempts a
/// notification is parked (kept, counted, logged). SIGHUP reloads the
/// channels file; SIGTERM stops gracefully.
///
///   GET /healthz, GET /readyz, GET /metrics
///   GET /v1/outbox        pending and parked notifications per channel
#[derive(Debug, Parser)]
#[command(name = "warrant-notifier", version, verbatim_doc_comment)]
struct Cli {
    #[command(flatten)]
    args: warrant_notifier::Args,
    /// Log line format.
    #[arg(long, env = "WARRANT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = cli.args.config()?;
    warrant_notifier::run(config, shutdown_signal("warrant-notifier")).await?;
    tracing::info!("notifier stopped");
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format, "info");
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = %format!("{error:#}"), "notifier failed");
            ExitCode::FAILURE
        }
    }
}
