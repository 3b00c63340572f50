//! `warrant-mcp`: the MCP gateway binary.

use std::process::ExitCode;

use clap::Parser;
use warrant_runtime::{init_tracing, shutdown_signal, LogFormat};

/// An MCP gateway that holds each tool call until Warrant grants exactly
/// those arguments.
///
/// Serves MCP (stdio by default; streamable HTTP at /mcp with --listen) in
/// front of one upstream MCP server (--upstream-command over stdio, or
/// --upstream-url). tools/list passes through. Each tools/call that is not
/// allow-listed becomes the Warrant action
///
///   {kind: "mcp.tool", target: "<server-name>/<tool>",
///    parameters: {<argument>: <its RFC 8785 canonical JSON text>}}
///
/// proposed through intake under an instance id derived from the call (a
/// retry lands on the same instance). The call waits (progress
/// notifications every --progress-interval) until the instance is
/// AUTHORIZED, then claims with the digest of exactly the arguments it
/// forwards, forwards the arguments parsed from the authorized texts, and
/// reports SUCCEEDED or FAILED. REJECTED, EXPIRED, WITHDRAWN, a refused
/// claim, waiting past --max-wait, or Warrant being unreachable: a tool
/// error, and nothing is forwarded (fail closed).
///
/// stdout is the MCP channel in stdio mode: logs go to stderr.
/// Log verbosity: RUST_LOG (default info). SIGTERM/SIGINT stop gracefully.
#[derive(Debug, Parser)]
#[command(name = "warrant-mcp", version, verbatim_doc_comment)]
struct Cli {
    #[command(flatten)]
    args: warrant_mcp::Args,
    /// Log line format (stderr).
    #[arg(long, env = "WARRANT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // rmcp logs every handshake at info, with whole structs: keep it to warnings.
    init_tracing(cli.log_format, "info,rmcp=warn");
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
        .block_on(warrant_mcp::run(cli.args, shutdown_signal("warrant-mcp")))
        .map_err(anyhow::Error::from);
    // The stdin reader of stdio mode sits in a blocking read until the
    // client closes stdio; a plain drop of the runtime would wait for it,
    // so a SIGTERM would not end the process.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "warrant-mcp stopped");
            ExitCode::FAILURE
        }
    }
}
