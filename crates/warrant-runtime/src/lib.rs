//! Process plumbing shared by `warrant-intake`, `warrant-projector` and
//! `warrant-replay`, so the three behave alike for an operator: the same
//! `--log-format`/`WARRANT_LOG_FORMAT` switch, the same `RUST_LOG` filter,
//! and the same stop signals; and, for the two services, one JSON error
//! shape ([`ApiError`]) so a client parses one shape from both.

pub mod api_error;

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

pub use api_error::{not_a_count, saturating_count, ApiError, EventRef, RETRY_AFTER_SECS};

/// The format of the log lines on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (coloured on a terminal).
    Text,
    /// One JSON object per line, fields flattened, for log shippers.
    Json,
}

/// Install the global subscriber: stderr, filtered by `RUST_LOG`, else by
/// `default_filter` (e.g. `"info"`).
pub fn init_tracing(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Resolves on the first SIGTERM (what Docker and Kubernetes send) or
/// SIGINT. A service passes it to its `run` to begin a graceful stop.
pub async fn shutdown_signal(service: &'static str) {
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
                tracing::warn!(error = %error, "cannot listen for SIGTERM; only SIGINT stops {service}");
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
    tracing::info!("{service}: stop requested; finishing in-flight work");
}
