//! Intake's HTTP API (docs/contract.md §6). Every handler authenticates first, then
//! validates, then stamps an [`Envelope`](warrant_schema::Envelope) and
//! appends it; a 2xx is sent only after Kafka acknowledged the append.
//! Every client mistake is a 4xx with `{"error":{"code","message"}}`.

mod error;
mod extract;
mod handlers;
mod reads;

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::{Json, Router};
use tracing::Instrument;

pub use error::{ApiError, EventRef, RETRY_AFTER_SECS};
pub use extract::{parse_json, MAX_IDEMPOTENCY_KEY_LEN};
pub use handlers::{
    ClaimRequest, DecisionRequest, ProposalRequest, ReportRequest, ScopeRequest, SignalRequest,
    WithdrawalRequest,
};
pub use reads::{session_message, Session, Sessions, SESSION_COOKIE};

use crate::config::Shared;
use crate::log::LogAppender;
use crate::metrics::{HttpLabels, Metrics};
use crate::projector::Projector;

/// Longest a request body may take to arrive.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The OpenAPI 3.1 description of this API, written by hand.
pub const OPENAPI: &str = include_str!("../../openapi.json");

/// Intake's clock: the only time intake stamps (`recorded_at`) or checks
/// signatures against.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    fn now_millis(&self) -> i64;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_millis(&self) -> i64 {
        crate::now_millis()
    }
}

/// A clock tests set by hand.
#[derive(Debug, Default)]
pub struct ManualClock(pub AtomicI64);

impl ManualClock {
    pub fn at(millis: i64) -> ManualClock {
        ManualClock(AtomicI64::new(millis))
    }

    pub fn set(&self, millis: i64) {
        self.0.store(millis, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_millis(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// What `/readyz` reports: set by the background tasks intake starts (the
/// log topic's metadata check, and publishing the ruleset at start-up).
#[derive(Debug)]
pub struct Readiness {
    /// The log topic answered a metadata request recently.
    pub log: AtomicBool,
    /// The ruleset in force is on the rulesets topic.
    pub ruleset_published: AtomicBool,
}

impl Readiness {
    pub fn new(ready: bool) -> Readiness {
        Readiness {
            log: AtomicBool::new(ready),
            ruleset_published: AtomicBool::new(ready),
        }
    }

    pub fn is_ready(&self) -> bool {
        self.log.load(Ordering::Relaxed) && self.ruleset_published.load(Ordering::Relaxed)
    }

    /// For requests resolved against the ruleset: a 503 with `Retry-After`
    /// until the ruleset in force is on the rulesets topic, since what they
    /// append would cite rules an auditor cannot fetch.
    pub fn require_ruleset(&self) -> Result<(), ApiError> {
        if self.ruleset_published.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err(ApiError::unavailable(
                "ruleset_unpublished",
                "intake is starting: the ruleset in force is not on the rulesets topic yet (Kafka is not reachable or still loading); retry",
            ))
        }
    }
}

/// Instance ids this intake proposed recently, so a signal or decision that
/// follows its proposal by milliseconds is not refused as unknown while the
/// projector catches up. Bounded; the projector stays the authority.
#[derive(Debug)]
pub struct RecentInstances {
    capacity: usize,
    inner: Mutex<(VecDeque<String>, HashSet<String>)>,
}

impl RecentInstances {
    pub fn new(capacity: usize) -> RecentInstances {
        RecentInstances {
            capacity,
            inner: Mutex::new((VecDeque::new(), HashSet::new())),
        }
    }

    pub fn insert(&self, instance_id: &str) {
        if self.capacity == 0 {
            return;
        }
        let mut guard = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let (order, set) = &mut *guard;
        if set.insert(instance_id.to_owned()) {
            order.push_back(instance_id.to_owned());
            while order.len() > self.capacity {
                if let Some(old) = order.pop_front() {
                    set.remove(&old);
                }
            }
        }
    }

    pub fn contains(&self, instance_id: &str) -> bool {
        let guard = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        guard.1.contains(instance_id)
    }
}

/// Tunables of the HTTP API.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// How long an execution request waits for the fold's answer.
    pub claim_timeout: Duration,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            claim_timeout: Duration::from_millis(5000),
            max_body_bytes: 65_536,
        }
    }
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub config: Shared,
    pub log: Arc<dyn LogAppender>,
    pub projector: Arc<dyn Projector>,
    pub metrics: Arc<Metrics>,
    pub clock: Arc<dyn Clock>,
    pub readiness: Arc<Readiness>,
    pub recent: Arc<RecentInstances>,
    /// Reviewers' read-only sessions (console and CLI).
    pub sessions: Arc<Sessions>,
    /// Record waits in flight, per caller.
    pub waits: Arc<CallerWaits>,
    pub options: HttpOptions,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// Default for `--max-waits-per-caller`.
pub const DEFAULT_MAX_WAITS_PER_CALLER: usize = 32;

/// Record waits in flight per caller (token principal or reviewer). The
/// projector's waiter slots are shared by everyone; without a share per
/// caller, one token holder could take them all and every other agent's
/// wait would be refused.
#[derive(Debug)]
pub struct CallerWaits {
    per_caller: usize,
    counts: Mutex<std::collections::HashMap<String, usize>>,
}

/// One wait counted against its caller; given back when dropped.
#[derive(Debug)]
pub struct CallerWait<'a> {
    waits: &'a CallerWaits,
    caller: String,
}

impl CallerWaits {
    pub fn new(per_caller: usize) -> CallerWaits {
        CallerWaits {
            per_caller,
            counts: Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Count one more wait for `caller`, or `None` if it has its share.
    pub fn enter(&self, caller: &str) -> Option<CallerWait<'_>> {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let count = counts.entry(caller.to_owned()).or_insert(0);
        if *count >= self.per_caller {
            return None;
        }
        *count += 1;
        Some(CallerWait {
            waits: self,
            caller: caller.to_owned(),
        })
    }
}

impl Drop for CallerWait<'_> {
    fn drop(&mut self) {
        let mut counts = self
            .waits
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&self.caller) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.caller);
            }
        }
    }
}

/// One route of the API: method and path as the OpenAPI document names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteInfo {
    pub method: &'static str,
    pub path: &'static str,
}

struct Routes {
    router: Router<AppState>,
    table: Vec<RouteInfo>,
}

impl Routes {
    fn add(
        mut self,
        method: &'static str,
        path: &'static str,
        handler: MethodRouter<AppState>,
    ) -> Routes {
        self.table.push(RouteInfo { method, path });
        self.router = self.router.route(path, handler);
        self
    }
}

/// The router and the table of its routes (the OpenAPI test reads it).
pub fn router_with_routes(state: AppState) -> (Router, Vec<RouteInfo>) {
    let routes = Routes {
        router: Router::new(),
        table: Vec::new(),
    }
    .add("post", "/v1/proposals", post(handlers::propose))
    .add("post", "/v1/instances/{id}/signals", post(handlers::signal))
    .add(
        "post",
        "/v1/instances/{id}/decisions",
        post(handlers::decide),
    )
    .add(
        "post",
        "/v1/instances/{id}/executions",
        post(handlers::claim),
    )
    .add("post", "/v1/instances/{id}/reports", post(handlers::report))
    .add(
        "post",
        "/v1/instances/{id}/withdrawal",
        post(handlers::withdraw),
    )
    .add("get", "/v1/instances", get(reads::queue))
    .add("get", "/v1/instances/{id}", get(reads::record))
    .add("post", "/v1/sessions/challenge", post(reads::challenge))
    .add("post", "/v1/sessions", post(reads::open_session))
    .add("get", "/v1/session", get(reads::whoami))
    .add(
        "delete",
        "/v1/session",
        axum::routing::delete(reads::close_session),
    )
    .add("get", "/healthz", get(healthz))
    .add("get", "/readyz", get(readyz))
    .add("get", "/metrics", get(metrics))
    .add("get", "/openapi.json", get(openapi));
    let max_body = state.options.max_body_bytes;
    // The console is pages, not API: outside the OpenAPI route table.
    let router = routes
        .router
        .route(
            "/console",
            get(|| async { axum::response::Redirect::permanent("/console/") }),
        )
        .route("/console/", get(reads::console_file))
        .route("/console/{file}", get(reads::console_file))
        .route_layer(middleware::from_fn_with_state(state.clone(), track))
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        // A client that sends its headers and then trickles (or never sends)
        // its body would hold a connection and a task forever: nothing is
        // authenticated before the body is read on the webhook.
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            BODY_READ_TIMEOUT,
        ))
        .with_state(state);
    (router, routes.table)
}

/// The HTTP API of intake.
pub fn router(state: AppState) -> Router {
    router_with_routes(state).0
}

async fn healthz() -> Response {
    Json(serde_json::json!({ "status": "ok" })).into_response()
}

async fn readyz(State(state): State<AppState>) -> Response {
    let log = state.readiness.log.load(Ordering::Relaxed);
    let published = state.readiness.ruleset_published.load(Ordering::Relaxed);
    let snapshot = state.config.snapshot();
    let body = serde_json::json!({
        "status": if log && published { "ready" } else { "not_ready" },
        "checks": { "log": log, "ruleset_published": published },
        "ruleset": snapshot.ruleset.ruleset.reference(),
    });
    let status = if log && published {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let text = state
        .metrics
        .encode()
        .map_err(|error| ApiError::internal(&error))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn no_route() -> ApiError {
    ApiError::not_found("no_route", "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not answer that method",
    )
}

async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    // One span per request: every line logged while handling it (the append
    // with its log position, the wait for the fold) carries the instance.
    // Proposals learn their instance id from the body; `log_append` records
    // it then, with the partition and offset.
    let span = tracing::info_span!(
        "request",
        method = %request.method(),
        route = %route,
        instance_id = tracing::field::Empty,
        partition = tracing::field::Empty,
        offset = tracing::field::Empty,
    );
    if let Some(id) = instance_in_path(request.uri().path()) {
        span.record("instance_id", id);
    }
    let started = Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status().as_u16();
    let seconds = started.elapsed().as_secs_f64();
    state
        .metrics
        .http_requests
        .get_or_create(&HttpLabels { route, status })
        .observe(seconds);
    let _entered = span.enter();
    let millis = seconds * 1000.0;
    match status {
        500.. => tracing::warn!(status, millis, "answered"),
        400..=499 => tracing::info!(status, millis, "answered"),
        _ => tracing::debug!(status, millis, "answered"),
    }
    response
}

/// The `{id}` of `/v1/instances/{id}/...`, as sent (validated later).
fn instance_in_path(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v1/instances/")?;
    rest.split('/').next().filter(|id| !id.is_empty())
}

#[cfg(test)]
pub(crate) mod tests;
