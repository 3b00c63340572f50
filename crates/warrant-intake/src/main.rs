//! `warrant-intake`: the only door into the authoritative log.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

/// The only door into Warrant's authoritative log (warrant.log).
///
/// Authenticates every caller, resolves proposals against the ruleset,
/// stamps recorded_at and submitted_by, appends one Avro envelope per
/// request keyed by instance id, and answers only after Kafka acknowledged
/// the append.
///
/// HTTP API (JSON; errors are {"error":{"code","message"}}; GET /openapi.json
/// describes it all):
///
///   POST /v1/proposals                     services (bearer)  → 202
///   POST /v1/instances/{id}/signals        policy engines     → 202
///   POST /v1/instances/{id}/decisions      reviewers, signed with HMAC:
///        X-Warrant-Timestamp: <unix s>, X-Warrant-Signature: v1=<hex
///        HMAC-SHA256(secret, timestamp + "." + raw body)>   → 202
///   POST /v1/instances/{id}/executions     executors → 201 grant | 409 refusal
///   POST /v1/instances/{id}/reports        executors          → 202
///   POST /v1/instances/{id}/withdrawal     services           → 202
///   GET  /healthz  /readyz  /metrics  /openapi.json
///
/// Also consumes the ingress topics (Avro ProposalSubmitted/SignalSubmitted)
/// at least once, dead-letters invalid records, publishes the ruleset to the
/// rulesets topic, and appends DeadlineReached when the projector's state
/// shows a deadline passed.
///
/// Signals: SIGTERM/SIGINT stop gracefully (in-flight requests finish, the
/// producer flushes); SIGHUP reloads the ruleset and principals files.
/// Log verbosity: RUST_LOG (default info).
#[derive(Debug, Parser)]
#[command(name = "warrant-intake", version, verbatim_doc_comment)]
struct Cli {
    #[command(flatten)]
    args: warrant_intake::Args,
    /// Log line format.
    #[arg(long, env = "WARRANT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(error) => {
                tracing::warn!(error = %error, "cannot listen for SIGTERM; only SIGINT stops intake");
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(error = %error, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    let result: anyhow::Result<()> = runtime
        .block_on(warrant_intake::run(cli.args, shutdown_signal()))
        .map_err(anyhow::Error::from);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "warrant-intake stopped");
            ExitCode::FAILURE
        }
    }
}
