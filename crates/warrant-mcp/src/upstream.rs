//! The one upstream MCP server the gateway fronts: a child process over
//! stdio, or a streamable HTTP endpoint.

use rmcp::service::RunningService;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{ClientCacheConfig, RoleClient, ServiceExt};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// A command line, split like a POSIX shell would; no shell runs it.
    Command(String),
    Url(String),
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("--upstream-command cannot be split into words: {0}")]
    Split(String),
    #[error("--upstream-command is empty")]
    EmptyCommand,
    #[error("cannot start the upstream '{program}': {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the upstream MCP server did not complete the handshake: {0}")]
    Handshake(String),
}

pub type Connection = RunningService<RoleClient, ()>;

pub async fn connect(upstream: &Upstream) -> Result<Connection, UpstreamError> {
    let connection = open(upstream).await?;
    // rmcp would keep tools/list answers for as long as the upstream's
    // ttlMs says, and serve a stale one when a fresh read fails: the
    // read-only check must see the upstream's current listing, or nothing.
    connection
        .peer()
        .set_response_cache_config(ClientCacheConfig::disabled())
        .await;
    Ok(connection)
}

async fn open(upstream: &Upstream) -> Result<Connection, UpstreamError> {
    match upstream {
        Upstream::Command(line) => {
            let words = shell_words::split(line)
                .map_err(|error| UpstreamError::Split(error.to_string()))?;
            let (program, arguments) = words.split_first().ok_or(UpstreamError::EmptyCommand)?;
            let mut command = tokio::process::Command::new(program);
            command.args(arguments);
            // stdin/stdout carry MCP; the upstream's stderr joins ours.
            let transport =
                TokioChildProcess::new(command).map_err(|source| UpstreamError::Spawn {
                    program: program.clone(),
                    source,
                })?;
            ().serve(transport)
                .await
                .map_err(|error| UpstreamError::Handshake(error.to_string()))
        }
        Upstream::Url(url) => {
            let transport = StreamableHttpClientTransport::from_uri(url.as_str());
            ().serve(transport)
                .await
                .map_err(|error| UpstreamError::Handshake(error.to_string()))
        }
    }
}
