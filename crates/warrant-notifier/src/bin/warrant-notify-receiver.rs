//! `warrant-notify-receiver`: a receiver that prints what warrant-notifier
//! sends, for demos and for trying a channels file. Not for production: it
//! accepts everything it is sent.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use clap::Parser;
use serde_json::Value;
use warrant_notifier::deliver::signature;

/// Prints every notification POSTed to it, one line each (or the JSON with
/// --json), and checks webhook signatures against the given secrets.
///
/// Answers 200 to everything. Point the channels of a notifier at
/// http://{listen}/<anything>: the path is printed, so one receiver serves
/// several channels.
#[derive(Debug, Parser)]
#[command(name = "warrant-notify-receiver", version, verbatim_doc_comment)]
struct Cli {
    /// Address to listen on.
    #[arg(
        long,
        env = "WARRANT_RECEIVER_LISTEN",
        default_value = "127.0.0.1:9101"
    )]
    listen: SocketAddr,
    /// A secret webhook signatures may be made with (repeatable; commas in
    /// the variable).
    #[arg(
        long = "secret",
        env = "WARRANT_RECEIVER_SECRETS",
        value_delimiter = ','
    )]
    secrets: Vec<String>,
    /// Print each notification's JSON document instead of one line.
    #[arg(long, env = "WARRANT_RECEIVER_JSON")]
    json: bool,
}

#[derive(Debug)]
struct Shared {
    secrets: Vec<String>,
    json: bool,
}

async fn receive(
    State(shared): State<Arc<Shared>>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let signed = match (header("x-warrant-timestamp"), header("x-warrant-signature")) {
        (Some(timestamp), Some(given)) => {
            if shared
                .secrets
                .iter()
                .any(|s| signature(s.as_bytes(), timestamp, &body) == given)
            {
                "signed"
            } else {
                "BAD SIGNATURE"
            }
        }
        _ => "unsigned",
    };
    let document: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if shared.json {
        println!(
            "{}",
            serde_json::json!({ "path": path, "signature": signed, "body": document })
        );
    } else if let Some(text) = document["text"].as_str() {
        // A Slack-shaped message; its last block names the kind and ids.
        let context = document["blocks"]
            .as_array()
            .and_then(|blocks| blocks.last())
            .and_then(|block| block["elements"][0]["text"].as_str())
            .unwrap_or("");
        println!("/{path} [{signed}] slack: {text} ({context})");
    } else {
        let field = |name: &str| document[name].as_str().unwrap_or("?").to_owned();
        println!(
            "/{path} [{signed}] {} {} {} {} {} -> {} (id {})",
            field("kind"),
            field("status"),
            field("instance_id"),
            document["action"]["kind"].as_str().unwrap_or("?"),
            document["action"]["target"].as_str().unwrap_or("?"),
            document["links"]["console"].as_str().unwrap_or("?"),
            field("id"),
        );
    }
    StatusCode::OK
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let shared = Arc::new(Shared {
        secrets: cli.secrets,
        json: cli.json,
    });
    let app = axum::Router::new()
        .route("/{*path}", post(receive))
        .with_state(shared);
    let listener = tokio::net::TcpListener::bind(cli.listen).await?;
    eprintln!(
        "warrant-notify-receiver listening on {}",
        listener.local_addr()?
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(warrant_runtime::shutdown_signal("warrant-notify-receiver"))
        .await?;
    Ok(())
}
