//! `warrant-mcp`: an MCP gateway in front of one upstream MCP server. Every
//! `tools/call` that is not allow-listed becomes a Warrant proposal, waits
//! for authorization, is claimed with the digest of exactly the arguments
//! that will be forwarded, runs, and is reported. Anything else, including
//! Warrant being unreachable, is a tool error: it fails closed.
//!
//! The guarantees and every flag: docs/mcp-gateway.md.

pub mod action;
pub mod allow;
pub mod decide;
pub mod gateway;
pub mod intake;
pub mod jcs;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::ServiceExt;
use tokio_util::sync::CancellationToken;

use crate::allow::AllowList;
use crate::gateway::{Gateway, Settings};
use crate::intake::{Intake, IntakeError};
use crate::upstream::{Upstream, UpstreamError};

/// How long a stop leaves for the last answers to be written out.
const FLUSH_PAUSE: Duration = Duration::from_millis(200);

/// Errors that stop the gateway (a single call's failure never does).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("--server-name '{name}' cannot start a Warrant target: {problem}")]
    ServerName { name: String, problem: String },
    #[error("--upstream-command or --upstream-url is required (exactly one)")]
    NoUpstream,
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error(transparent)]
    Intake(#[from] IntakeError),
    #[error("invalid duration '{0}': use a number with ms, s or m (e.g. 50s, 500ms)")]
    Duration(String),
    #[error("cannot serve MCP on stdio: {0}")]
    Stdio(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the HTTP server failed: {0}")]
    Serve(#[source] std::io::Error),
}

/// Parses `50s`, `500ms`, `2m`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, Error> {
    let text = text.trim();
    let bad = || Error::Duration(text.to_owned());
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let value: u64 = number.parse().map_err(|_| bad())?;
    match unit {
        "ms" => Ok(Duration::from_millis(value)),
        "s" => Ok(Duration::from_secs(value)),
        "m" => Ok(Duration::from_secs(value.saturating_mul(60))),
        _ => Err(bad()),
    }
}

fn duration_arg(text: &str) -> Result<Duration, String> {
    parse_duration(text).map_err(|error| error.to_string())
}

/// Everything `warrant-mcp` is configured with; each flag also reads the
/// `WARRANT_*` variable named in `--help`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Intake's base URL (plain http).
    #[arg(
        long,
        env = "WARRANT_INTAKE_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub intake_url: String,
    /// Service token: proposes, and reads records while waiting.
    #[arg(long, env = "WARRANT_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Executor token: claims and reports. Defaults to --token (one
    /// principal may hold both kinds).
    #[arg(long, env = "WARRANT_EXECUTOR_TOKEN", hide_env_values = true)]
    pub executor_token: Option<String>,
    /// The upstream's name in Warrant: every action's target is
    /// `<server-name>/<tool>`, which ruleset rules match by prefix.
    #[arg(long, env = "WARRANT_MCP_SERVER_NAME")]
    pub server_name: String,
    /// Run the upstream MCP server as a child process speaking stdio: the
    /// command line, split like a POSIX shell would (no shell is run).
    #[arg(
        long,
        env = "WARRANT_MCP_UPSTREAM_COMMAND",
        conflicts_with = "upstream_url"
    )]
    pub upstream_command: Option<String>,
    /// Or reach the upstream over streamable HTTP at this URL (plain http).
    #[arg(long, env = "WARRANT_MCP_UPSTREAM_URL")]
    pub upstream_url: Option<String>,
    /// Serve MCP over streamable HTTP on this address (path /mcp) instead
    /// of stdio.
    #[arg(long, env = "WARRANT_MCP_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// With --listen: a Host header value to accept besides loopback
    /// (DNS-rebinding protection). Repeatable.
    #[arg(
        long = "allowed-host",
        env = "WARRANT_MCP_ALLOWED_HOSTS",
        value_delimiter = ','
    )]
    pub allowed_hosts: Vec<String>,
    /// A tool forwarded without a proposal. Repeatable. Default: none.
    #[arg(
        long = "allow-tool",
        env = "WARRANT_MCP_ALLOW_TOOLS",
        value_delimiter = ','
    )]
    pub allow_tools: Vec<String>,
    /// Forward without a proposal every tool the upstream annotates
    /// readOnlyHint: true (this trusts the upstream's annotations).
    #[arg(long, env = "WARRANT_MCP_ALLOW_READ_ONLY")]
    pub allow_read_only: bool,
    /// How long one call waits for authorization before it returns a tool
    /// error naming its instance (a retry continues the same instance).
    /// Keep it under the client's request timeout (often 60 s).
    #[arg(long, env = "WARRANT_MCP_MAX_WAIT", default_value = "50s", value_parser = duration_arg)]
    pub max_wait: Duration,
    /// How often a waiting call sends a progress notification.
    #[arg(long, env = "WARRANT_MCP_PROGRESS_INTERVAL", default_value = "5s", value_parser = duration_arg)]
    pub progress_interval: Duration,
    /// Pause between record reads when intake answers without waiting.
    #[arg(long, env = "WARRANT_MCP_POLL_INTERVAL", default_value = "500ms", value_parser = duration_arg)]
    pub poll_interval: Duration,
    /// How long a forwarded call may run at the upstream; past it the
    /// execution is reported FAILED with an unknown outcome.
    #[arg(long, env = "WARRANT_MCP_CALL_TIMEOUT", default_value = "300s", value_parser = duration_arg)]
    pub call_timeout: Duration,
}

/// Runs until `shutdown` resolves, or (stdio) until the client hangs up.
pub async fn run(
    args: Args,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let server_name = args.server_name.trim_end_matches('/').to_owned();
    // The target of any tool must be canonical; checking the name alone
    // with a tool segment appended catches every problem it could cause.
    warrant_authority::check_target(&format!("{server_name}/tool")).map_err(|problem| {
        Error::ServerName {
            name: args.server_name.clone(),
            problem,
        }
    })?;
    let upstream = match (&args.upstream_command, &args.upstream_url) {
        (Some(command), _) => Upstream::Command(command.clone()),
        (None, Some(url)) => Upstream::Url(url.clone()),
        (None, None) => return Err(Error::NoUpstream),
    };
    let executor_token = args
        .executor_token
        .clone()
        .unwrap_or_else(|| args.token.clone());
    let intake = Intake::new(&args.intake_url, args.token.clone(), executor_token)?;
    let settings = Settings {
        server_name,
        allow: AllowList {
            tools: args.allow_tools.iter().cloned().collect(),
            read_only: args.allow_read_only,
        },
        max_wait: args.max_wait,
        progress_interval: args.progress_interval.max(Duration::from_millis(100)),
        poll_interval: args.poll_interval,
        call_timeout: args.call_timeout,
    };

    let upstream = upstream::connect(&upstream).await?;
    tracing::info!(
        server = %settings.server_name,
        intake = %args.intake_url,
        allow_tools = ?settings.allow.tools,
        allow_read_only = settings.allow.read_only,
        "connected to the upstream MCP server"
    );
    let stop = CancellationToken::new();
    let gateway = Gateway::new(settings, intake, upstream.peer().clone(), stop.clone());

    // A granted call may run for --call-timeout and then report.
    let drain_limit = args.call_timeout.saturating_add(Duration::from_secs(30));
    let outcome = match args.listen {
        None => serve_stdio(gateway, shutdown, stop.clone(), drain_limit).await,
        Some(addr) => {
            serve_http(
                gateway,
                addr,
                args.allowed_hosts,
                shutdown,
                stop.clone(),
                drain_limit,
            )
            .await
        }
    };
    stop.cancel();
    if let Err(error) = upstream.cancel().await {
        tracing::debug!(error = %error, "upstream connection did not close cleanly");
    }
    outcome
}

async fn serve_stdio(
    gateway: Gateway,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    stop: CancellationToken,
    drain_limit: Duration,
) -> Result<(), Error> {
    let service = gateway
        .clone()
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|error| Error::Stdio(error.to_string()))?;
    let cancel = service.cancellation_token();
    let waiting = service.waiting();
    tokio::pin!(waiting);
    tokio::select! {
        finished = &mut waiting => {
            if let Err(error) = finished {
                tracing::warn!(error = %error, "the MCP session ended with an error");
            }
            tracing::info!("the MCP client closed stdio");
            // Nobody can read the answers now, but a call already granted
            // still gets its report rather than an execution left open.
            stop.cancel();
            gateway.drain(drain_limit).await;
            return Ok(());
        }
        _ = shutdown => {}
    }
    stop.cancel();
    gateway.drain(drain_limit).await;
    // Let the answers of the calls that just returned reach the client.
    tokio::time::sleep(FLUSH_PAUSE).await;
    cancel.cancel();
    if let Err(error) = waiting.await {
        tracing::debug!(error = %error, "the MCP session ended with an error");
    }
    Ok(())
}

async fn serve_http(
    gateway: Gateway,
    addr: SocketAddr,
    allowed_hosts: Vec<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    stop: CancellationToken,
    drain_limit: Duration,
) -> Result<(), Error> {
    // Sessions end only after the calls in them have (see the stdio case).
    let sessions = CancellationToken::new();
    let mut config =
        StreamableHttpServerConfig::default().with_cancellation_token(sessions.child_token());
    if !allowed_hosts.is_empty() {
        let mut hosts = config.allowed_hosts.clone();
        hosts.extend(allowed_hosts);
        config.allowed_hosts = hosts;
    }
    let factory = gateway.clone();
    let service: StreamableHttpService<Gateway, LocalSessionManager> = StreamableHttpService::new(
        move || Ok(factory.clone()),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    let router = axum::Router::new().nest_service("/mcp", service);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Listen { addr, source })?;
    tracing::info!(addr = %addr, "serving MCP over streamable HTTP at /mcp");
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            shutdown.await;
            stop.cancel();
            gateway.drain(drain_limit).await;
            tokio::time::sleep(FLUSH_PAUSE).await;
            sessions.cancel();
        })
        .await
        .map_err(Error::Serve)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("50s").ok(), Some(Duration::from_secs(50)));
        assert_eq!(
            parse_duration("500ms").ok(),
            Some(Duration::from_millis(500))
        );
        assert_eq!(parse_duration("2m").ok(), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("7").ok(), Some(Duration::from_secs(7)));
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
