//! The gateway against a scripted intake and an in-process upstream: the
//! paths a real system rarely takes on demand (503 while the fold is
//! pending, a refused claim, a status the gateway does not know, a refused
//! token, an intake without the wait API).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ListToolsResult,
    PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::{RequestContext, RunningService};
use rmcp::{ErrorData, RoleClient, RoleServer, ServerHandler, ServiceExt};
use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;
use warrant_mcp::allow::AllowList;
use warrant_mcp::gateway::{Gateway, Settings};
use warrant_mcp::intake::Intake;

// ---- the upstream -------------------------------------------------------

/// How the upstream answers tools/list.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
enum Listing {
    #[default]
    Plain,
    /// Never answers.
    Hang,
    /// A new page with a new cursor, forever.
    Endless,
    /// Always the same cursor.
    Loop,
}

#[derive(Clone, Default)]
struct Upstream {
    calls: Arc<Mutex<Vec<Map<String, Value>>>>,
    listing: Listing,
    /// Whether `status` is listed with readOnlyHint: true.
    status_read_only: Arc<std::sync::atomic::AtomicBool>,
    pages: Arc<std::sync::atomic::AtomicUsize>,
}

impl ServerHandler for Upstream {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        use std::sync::atomic::Ordering;
        let page = self.pages.fetch_add(1, Ordering::SeqCst);
        match self.listing {
            Listing::Plain => {}
            Listing::Hang => std::future::pending::<()>().await,
            Listing::Endless | Listing::Loop => {
                let tools = (0..50)
                    .map(|n| Tool::new(format!("t{page}-{n}"), "filler", Arc::new(Map::new())))
                    .collect();
                let mut result = ListToolsResult::with_all_items(tools);
                result.next_cursor = Some(if self.listing == Listing::Loop {
                    "again".to_owned()
                } else {
                    page.to_string()
                });
                return Ok(result);
            }
        }
        let mut status = Tool::new("status", "reads the status", Arc::new(Map::new()));
        status.annotations = Some(
            rmcp::model::ToolAnnotations::new()
                .read_only(self.status_read_only.load(Ordering::SeqCst)),
        );
        Ok(ListToolsResult::with_all_items(vec![
            Tool::new("restart", "restart a service", Arc::new(Map::new())),
            Tool::new("fail", "always fails", Arc::new(Map::new())),
            status,
        ]))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let arguments = request.arguments.unwrap_or_default();
        self.calls.lock().expect("lock").push(arguments);
        if request.name == "fail" {
            return Ok(CallToolResult::error(vec![ContentBlock::text("disk full")]).into());
        }
        Ok(CallToolResult::success(vec![ContentBlock::text("restarted")]).into())
    }
}

// ---- the scripted intake ------------------------------------------------

#[derive(Default)]
struct Script {
    /// Records by instance id, as intake would serve them.
    records: BTreeMap<String, Value>,
    /// Status a new proposal starts in.
    start_status: String,
    /// Answers for successive claims: (status code, body); the last repeats.
    claims: Vec<(u16, Value)>,
    claim_keys: Vec<String>,
    claim_digests: Vec<String>,
    reports: Vec<Value>,
    proposals: usize,
    refuse_token: bool,
    /// A claim's grant lands on the record after another call's grant.
    older_grant: bool,
}

type Shared = Arc<Mutex<Script>>;

fn error(status: u16, code: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (
        status,
        Json(json!({"error": {"code": code, "message": code}})),
    )
        .into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert("retry-after", axum::http::HeaderValue::from_static("1"));
    }
    response
}

async fn propose(State(script): State<Shared>, Json(body): Json<Value>) -> Response {
    let mut script = script.lock().expect("lock");
    if script.refuse_token {
        return error(401, "invalid_token");
    }
    script.proposals += 1;
    let id = body["instance_id"].as_str().unwrap_or_default().to_owned();
    let action: warrant_schema::Action =
        serde_json::from_value(body["action"].clone()).expect("an action");
    let digest = warrant_authority::action_digest(&action);
    let status = script.start_status.clone();
    script.records.entry(id.clone()).or_insert_with(|| {
        json!({
            "instance_id": id,
            "status": status,
            "proposal": {"action": action, "action_digest": digest},
            "decisions": [], "grants": [],
            "history": [{"seq": 1}],
        })
    });
    (StatusCode::ACCEPTED, Json(json!({"instance_id": id}))).into_response()
}

async fn record(State(script): State<Shared>, Path(id): Path<String>) -> Response {
    let script = script.lock().expect("lock");
    match script.records.get(&id) {
        Some(record) => Json(record.clone()).into_response(),
        None => error(404, "unknown_instance"),
    }
}

async fn claim(
    State(script): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let mut script = script.lock().expect("lock");
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    script.claim_keys.push(key);
    script.claim_digests.push(
        body["action_digest"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    );
    let (status, answer) = if script.claims.len() > 1 {
        script.claims.remove(0)
    } else {
        script.claims[0].clone()
    };
    if status == 201 {
        let older = script.older_grant;
        if let Some(record) = script.records.get_mut(&id) {
            record["status"] = json!("EXECUTING");
            let ours =
                json!({"grant_id": answer["grant_id"], "executor": "gateway", "granted_seq": 7});
            record["grants"] = if older {
                json!([{"grant_id": "0c0c0c0c-0000-5000-8000-000000000000", "executor": "gateway", "granted_seq": 5}, ours])
            } else {
                json!([ours])
            };
        }
        return (StatusCode::CREATED, Json(answer)).into_response();
    }
    error(status, answer["code"].as_str().unwrap_or("internal"))
}

async fn report(
    State(script): State<Shared>,
    Path(_id): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    script.lock().expect("lock").reports.push(body);
    (StatusCode::ACCEPTED, Json(json!({}))).into_response()
}

async fn fake_intake(script: Shared) -> String {
    let router = Router::new()
        .route("/v1/proposals", post(propose))
        .route("/v1/instances/{id}", get(record))
        .route("/v1/instances/{id}/executions", post(claim))
        .route("/v1/instances/{id}/reports", post(report))
        .with_state(script);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    format!("http://{addr}")
}

// ---- wiring -------------------------------------------------------------

struct Harness {
    script: Shared,
    upstream: Upstream,
    client: RunningService<RoleClient, ()>,
    /// The gateway's connection to the upstream; dropping it would close it.
    _upstream_client: RunningService<RoleClient, ()>,
}

async fn harness(script: Script, max_wait: Duration) -> Harness {
    harness_with(script, max_wait, Upstream::default(), AllowList::default()).await
}

async fn harness_with(
    script: Script,
    max_wait: Duration,
    upstream: Upstream,
    allow: AllowList,
) -> Harness {
    let script = Arc::new(Mutex::new(script));
    let url = fake_intake(script.clone()).await;

    let (upstream_server_io, upstream_client_io) = tokio::io::duplex(1 << 16);
    let served = upstream.clone();
    tokio::spawn(async move {
        if let Ok(service) = served.serve(upstream_server_io).await {
            let _ = service.waiting().await;
        }
    });
    let upstream_client = ().serve(upstream_client_io).await.expect("upstream handshake");
    // As upstream::connect does: no tools/list answer is reused.
    upstream_client
        .peer()
        .set_response_cache_config(rmcp::ClientCacheConfig::disabled())
        .await;

    let settings = Settings {
        server_name: "demo".into(),
        allow,
        max_wait,
        progress_interval: Duration::from_millis(200),
        // The scripted intake has no wait API: it answers at once.
        poll_interval: Duration::from_millis(20),
        call_timeout: Duration::from_secs(5),
    };
    let intake =
        Intake::new(&url, "service-token".into(), "executor-token".into()).expect("intake client");
    let gateway = Gateway::new(
        settings,
        intake,
        upstream_client.peer().clone(),
        CancellationToken::new(),
    );

    let (gateway_io, client_io) = tokio::io::duplex(1 << 16);
    tokio::spawn(async move {
        if let Ok(service) = gateway.serve(gateway_io).await {
            let _ = service.waiting().await;
        }
    });
    let client = ().serve(client_io).await.expect("gateway handshake");
    Harness {
        script,
        upstream,
        client,
        _upstream_client: upstream_client,
    }
}

fn restart_args() -> Map<String, Value> {
    match json!({"service": "api", "strategy": {"kind": "rolling", "batch": 2}}) {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

async fn call(h: &Harness, tool: &'static str) -> CallToolResult {
    h.client
        .call_tool(CallToolRequestParams::new(tool).with_arguments(restart_args()))
        .await
        .expect("a tools/call answer")
}

fn text(result: &CallToolResult) -> String {
    result
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join("\n")
}

fn granted() -> (u16, Value) {
    (
        201,
        json!({"grant_id": "3b1f2d6e-7a4c-5e8f-9a0b-1c2d3e4f5a6b"}),
    )
}

fn pending() -> (u16, Value) {
    (503, json!({"code": "fold_pending"}))
}

// ---- tests --------------------------------------------------------------

#[tokio::test]
async fn a_pending_fold_is_asked_again_with_the_same_key_and_runs_once() {
    let h = harness(
        Script {
            start_status: "AUTHORIZED".into(),
            claims: vec![pending(), pending(), granted()],
            ..Script::default()
        },
        Duration::from_secs(10),
    )
    .await;
    let result = call(&h, "restart").await;
    assert_ne!(result.is_error, Some(true), "{}", text(&result));
    assert_eq!(text(&result), "restarted");

    let script = h.script.lock().expect("lock");
    assert_eq!(script.claim_keys.len(), 3);
    assert!(
        script.claim_keys.iter().all(|k| k == &script.claim_keys[0]),
        "retries must reuse the key: {:?}",
        script.claim_keys
    );
    // The digest claimed is the digest of what was forwarded.
    let forwarded = h.upstream.calls.lock().expect("lock").clone();
    assert_eq!(forwarded, vec![restart_args()]);
    let action = warrant_mcp::action::build("demo", "restart", &forwarded[0]).expect("canonical");
    assert!(script.claim_digests.iter().all(|d| d == &action.digest));
    assert_eq!(script.reports.len(), 1);
    assert_eq!(script.reports[0]["outcome"], "SUCCEEDED");
    assert!(script.reports[0]["result_digest"]
        .as_str()
        .is_some_and(|d| d.len() == 64));
}

#[tokio::test]
async fn a_refused_claim_is_a_tool_error_and_nothing_runs() {
    let h = harness(
        Script {
            start_status: "AUTHORIZED".into(),
            claims: vec![(409, json!({"code": "Expired"}))],
            ..Script::default()
        },
        Duration::from_secs(10),
    )
    .await;
    let result = call(&h, "restart").await;
    assert_eq!(result.is_error, Some(true));
    let message = text(&result);
    assert!(message.contains("Expired"), "{message}");
    let instance = h
        .script
        .lock()
        .expect("lock")
        .records
        .keys()
        .next()
        .cloned()
        .expect("one instance");
    assert!(message.contains(&instance), "{message}");
    assert!(h.upstream.calls.lock().expect("lock").is_empty());
    assert!(h.script.lock().expect("lock").reports.is_empty());
}

#[tokio::test]
async fn an_unknown_status_fails_closed() {
    let h = harness(
        Script {
            start_status: "SOMETHING_NEW".into(),
            claims: vec![granted()],
            ..Script::default()
        },
        Duration::from_secs(5),
    )
    .await;
    let result = call(&h, "restart").await;
    assert_eq!(result.is_error, Some(true));
    assert!(text(&result).contains("fail closed"), "{}", text(&result));
    assert!(h.upstream.calls.lock().expect("lock").is_empty());
    assert!(h.script.lock().expect("lock").claim_keys.is_empty());
}

#[tokio::test]
async fn a_refused_token_fails_closed() {
    let h = harness(
        Script {
            start_status: "AUTHORIZED".into(),
            claims: vec![granted()],
            refuse_token: true,
            ..Script::default()
        },
        Duration::from_secs(5),
    )
    .await;
    let result = call(&h, "restart").await;
    assert_eq!(result.is_error, Some(true));
    assert!(text(&result).contains("invalid_token"), "{}", text(&result));
    assert!(h.upstream.calls.lock().expect("lock").is_empty());
}

#[tokio::test]
async fn without_the_wait_api_the_gateway_polls_and_gives_up_at_max_wait() {
    let h = harness(
        Script {
            start_status: "AWAITING_DECISION".into(),
            claims: vec![granted()],
            ..Script::default()
        },
        Duration::from_millis(600),
    )
    .await;
    let started = std::time::Instant::now();
    let result = call(&h, "restart").await;
    let waited = started.elapsed();
    assert_eq!(result.is_error, Some(true));
    assert!(
        text(&result).contains("still awaiting review"),
        "{}",
        text(&result)
    );
    assert!(waited >= Duration::from_millis(600), "{waited:?}");
    assert!(waited < Duration::from_secs(3), "{waited:?}");
    // A retry proposes again (idempotently) on the same instance.
    let again = call(&h, "restart").await;
    assert_eq!(again.is_error, Some(true));
    let script = h.script.lock().expect("lock");
    assert_eq!(script.records.len(), 1);
    assert_eq!(script.proposals, 2);
    assert!(h.upstream.calls.lock().expect("lock").is_empty());
}

#[tokio::test]
async fn an_upstream_error_result_is_reported_failed_with_its_text() {
    let h = harness(
        Script {
            start_status: "AUTHORIZED".into(),
            claims: vec![granted()],
            ..Script::default()
        },
        Duration::from_secs(5),
    )
    .await;
    let result = call(&h, "fail").await;
    assert_eq!(result.is_error, Some(true));
    assert_eq!(text(&result), "disk full");
    let script = h.script.lock().expect("lock");
    assert_eq!(script.reports.len(), 1);
    assert_eq!(script.reports[0]["outcome"], "FAILED");
    assert_eq!(script.reports[0]["detail"], "disk full");
}

fn read_only() -> AllowList {
    AllowList {
        tools: Default::default(),
        read_only: true,
    }
}

async fn bounded(h: &Harness, tool: &'static str) -> CallToolResult {
    tokio::time::timeout(Duration::from_secs(10), call(h, tool))
        .await
        .expect("answered in bounded time")
}

#[tokio::test]
async fn an_upstream_that_never_lists_does_not_hang_calls_or_listings() {
    let upstream = Upstream {
        listing: Listing::Hang,
        ..Upstream::default()
    };
    let h = harness_with(
        Script {
            start_status: "AWAITING_DECISION".into(),
            claims: vec![granted()],
            ..Script::default()
        },
        Duration::from_millis(500),
        upstream,
        read_only(),
    )
    .await;
    let started = std::time::Instant::now();
    // Not taken for read-only (fail closed): proposed, and still waiting.
    let result = bounded(&h, "status").await;
    assert_eq!(result.is_error, Some(true));
    assert!(
        text(&result).contains("still awaiting review"),
        "{}",
        text(&result)
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(h.script.lock().expect("lock").proposals, 1);
    // The client's own tools/list is an error, not a hang.
    let listed = tokio::time::timeout(Duration::from_secs(10), h.client.list_tools(None))
        .await
        .expect("answered in bounded time");
    assert!(listed.is_err(), "{listed:?}");
    assert!(h.upstream.calls.lock().expect("lock").is_empty());
}

#[tokio::test]
async fn endless_or_looping_pages_are_cut_off_and_fail_closed() {
    for listing in [Listing::Endless, Listing::Loop] {
        let upstream = Upstream {
            listing,
            ..Upstream::default()
        };
        let h = harness_with(
            Script {
                start_status: "AWAITING_DECISION".into(),
                claims: vec![granted()],
                ..Script::default()
            },
            Duration::from_millis(300),
            upstream,
            read_only(),
        )
        .await;
        let result = bounded(&h, "status").await;
        assert_eq!(result.is_error, Some(true));
        assert!(
            text(&result).contains("still awaiting review"),
            "{}",
            text(&result)
        );
        let pages = h.upstream.pages.load(std::sync::atomic::Ordering::SeqCst);
        match listing {
            Listing::Loop => assert_eq!(pages, 2, "stops at the repeated cursor"),
            _ => assert!(pages <= 100, "{pages} pages"),
        }
        assert!(h.upstream.calls.lock().expect("lock").is_empty());
    }
}

#[tokio::test]
async fn a_tool_re_marked_not_read_only_is_governed_at_the_next_call() {
    let upstream = Upstream::default();
    upstream
        .status_read_only
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let h = harness_with(
        Script {
            start_status: "AWAITING_DECISION".into(),
            claims: vec![granted()],
            ..Script::default()
        },
        Duration::from_millis(300),
        upstream,
        read_only(),
    )
    .await;
    let first = bounded(&h, "status").await;
    assert_ne!(first.is_error, Some(true), "{}", text(&first));
    assert_eq!(h.script.lock().expect("lock").proposals, 0);
    // The upstream now lists it without the hint; no client tools/list.
    h.upstream
        .status_read_only
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let second = bounded(&h, "status").await;
    assert_eq!(second.is_error, Some(true), "{}", text(&second));
    assert_eq!(h.script.lock().expect("lock").proposals, 1);
    assert_eq!(h.upstream.calls.lock().expect("lock").len(), 1);
}

#[tokio::test]
async fn a_grant_after_another_grant_is_reported_failed_and_not_run() {
    let h = harness(
        Script {
            start_status: "AUTHORIZED".into(),
            claims: vec![granted()],
            older_grant: true,
            ..Script::default()
        },
        Duration::from_secs(5),
    )
    .await;
    let result = bounded(&h, "restart").await;
    assert_eq!(result.is_error, Some(true));
    assert!(text(&result).contains("not forwarded"), "{}", text(&result));
    assert!(h.upstream.calls.lock().expect("lock").is_empty());
    let script = h.script.lock().expect("lock");
    assert_eq!(script.reports.len(), 1);
    assert_eq!(script.reports[0]["outcome"], "FAILED");
    assert!(script.reports[0]["detail"]
        .as_str()
        .is_some_and(|d| d.starts_with("not forwarded")));
}
