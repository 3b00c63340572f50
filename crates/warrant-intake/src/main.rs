//! `warrant-intake`: the only door into the authoritative log.

use std::process::ExitCode;

use clap::Parser;
use warrant_intake::config::{self, Paths};
use warrant_runtime::{init_tracing, shutdown_signal, LogFormat};

/// mimalloc: the fold allocates and frees a few dozen small strings per
/// event, and glibc's malloc took ~40% of its time (make bench-fold).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
///
/// --check-config loads and cross-checks the two files and the
/// --projector-url list, prints what it found as JSON, and exits (0: usable,
/// 1: not) without touching Kafka or the projector.
#[derive(Debug, Parser)]
#[command(name = "warrant-intake", version, verbatim_doc_comment)]
struct Cli {
    #[command(flatten)]
    args: warrant_intake::Args,
    /// Log line format.
    #[arg(long, env = "WARRANT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Load and check the ruleset and principals files, print the result
    /// as JSON and exit.
    #[arg(long)]
    check_config: bool,
}

/// `--check-config`: 0 when intake could run on the files, 1 when not.
fn check_config(args: &warrant_intake::Args) -> ExitCode {
    // Refused at start too; say so before a rollout, not after.
    if let Err(error) = warrant_intake::check_projector_urls(&args.projector_url) {
        eprintln!(
            "warrant-intake: --projector-url {:?}: {}",
            args.projector_url.join(","),
            warrant_intake::error_chain(&error)
        );
        return ExitCode::FAILURE;
    }
    let paths = Paths {
        ruleset: args.ruleset.clone(),
        principals: args.principals.clone(),
    };
    match config::check(&paths) {
        Ok(check) => {
            match serde_json::to_string_pretty(&check) {
                Ok(json) => println!("{json}"),
                Err(error) => eprintln!("warrant-intake: cannot print the check: {error}"),
            }
            if check.passed() {
                ExitCode::SUCCESS
            } else {
                eprintln!(
                    "warrant-intake: no reviewer holds these roles, so their rules can never be approved: {}",
                    check.unheld_roles.join(", ")
                );
                ExitCode::FAILURE
            }
        }
        Err(error) => {
            eprintln!("warrant-intake: {}", warrant_intake::error_chain(&error));
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.check_config {
        return check_config(&cli.args);
    }
    init_tracing(cli.log_format, "info");
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
        .block_on(warrant_intake::run(
            cli.args,
            shutdown_signal("warrant-intake"),
        ))
        .map_err(anyhow::Error::from);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "warrant-intake stopped");
            ExitCode::FAILURE
        }
    }
}
