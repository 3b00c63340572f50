//! The read API: execution records, status queues, the checkpoint, health
//! and metrics. Every error is an [`ApiError`], the shape intake answers
//! with too: `{"error":{"code","message"}}`; a 5xx says nothing about
//! internals (the cause goes to the log).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, MatchedPath, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use warrant_authority::{ranges, EntryView, InstanceFacts, LogPosition, StatusName};
use warrant_runtime::{not_a_count, saturating_count, ApiError};

use crate::deadlines::{self, Due};
use crate::error::Error;
use crate::metrics::Metrics;
use crate::store::{Owned, Store};
use crate::waiters::RecordWaiters;
use crate::Progress;

/// Page size of `GET /v1/instances` when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 50;
/// Largest accepted `limit`.
pub const MAX_LIMIT: usize = 1000;

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct AppState {
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
    /// Changes after every committed batch; wakes the entry long-poll.
    pub committed: watch::Receiver<Progress>,
    /// Record long-polls, woken only when their own instance is written.
    pub waiters: Arc<RecordWaiters>,
}

/// Default bound on concurrent record long-polls (`--max-waiters`).
pub const DEFAULT_MAX_WAITERS: usize = 1024;

/// The longest a client may ask either long-poll to wait (`wait_ms` above
/// it is clamped, not refused, so a client need not know the cap).
pub const MAX_WAIT: Duration = Duration::from_secs(30);

/// The HTTP API of the projector.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/instances", get(list_instances))
        .route("/v1/instances/{id}", get(get_instance))
        .route("/v1/instances/{id}/entries", get(get_entry))
        .route("/v1/instances/{id}/facts", get(get_facts))
        .route("/v1/deadlines", get(list_deadlines))
        .route("/v1/checkpoint", get(get_checkpoint))
        .route("/v1/shard", get(get_shard))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(get_metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), track_latency))
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// 404 `not_found`: no such instance, entry or route.
fn not_found(message: impl Into<String>) -> ApiError {
    ApiError::not_found("not_found", message)
}

/// 421 `not_owner`: the request is for a partition another shard folds,
/// so "unknown" from here would be a lie. The caller (intake, replay)
/// asks `GET /v1/shard` of every shard to learn where to send it.
fn not_owner(partition: i32, owned: &Owned) -> ApiError {
    let partitions: Vec<i32> = owned.partitions.iter().copied().collect();
    ApiError::new(
        StatusCode::MISDIRECTED_REQUEST,
        "not_owner",
        format!(
            "partition {partition} is not this projector's: it folds partitions {} of the log's {}; ask the shard that owns it",
            ranges(&partitions),
            owned.log_partitions
        ),
    )
}

/// [`not_owner`] when this view is a shard without `id`'s partition and
/// without `id`.
async fn misdirected(state: &AppState, id: &str) -> Result<(), ApiError> {
    let lookup = id.to_owned();
    match read(&state.store, move |store| store.misdirected(&lookup)).await? {
        Some((partition, owned)) => Err(not_owner(partition, &owned)),
        None => Ok(()),
    }
}

/// `Query` whose rejection is our JSON 400, never axum's plain text.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(ApiQuery(value)),
            Err(rejection) => Err(ApiError::bad_request(
                "invalid_query",
                rejection.body_text(),
            )),
        }
    }
}

/// `Path` whose rejection is our JSON 400.
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(ApiPath(value)),
            Err(rejection) => Err(ApiError::bad_request("invalid_path", rejection.body_text())),
        }
    }
}

/// Run a store read off the async workers. A failed read is a bare 500
/// (its cause logged); one that found bad bytes also marks the view, so the
/// next start rebuilds it instead of serving them again.
async fn read<T: Send + 'static>(
    store: &Arc<Store>,
    read: impl FnOnce(&Store) -> Result<T, Error> + Send + 'static,
) -> Result<T, ApiError> {
    let store = store.clone();
    let result = tokio::task::spawn_blocking(move || {
        let result = read(&store);
        if let Err(Error::Corrupt { what }) = &result {
            // Here, not on an async worker: marking flushes sled.
            store.mark_corrupt(what);
        }
        result
    })
    .await
    .unwrap_or(Err(Error::ThreadDied { name: "http read" }));
    result.map_err(|error| match error {
        // sled is being reopened after a storage error: try again shortly.
        Error::Unavailable => ApiError::unavailable("view_unavailable", error.to_string()),
        error => ApiError::internal(&error),
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordQuery {
    after_seq: Option<String>,
    wait_ms: Option<String>,
}

/// `wait_ms` as a duration, clamped to [`MAX_WAIT`] (digits beyond u64
/// included: a larger value is clamped, never refused).
fn wait_of(text: Option<&str>) -> Result<Duration, ApiError> {
    match text {
        None => Ok(Duration::ZERO),
        Some(text) => {
            saturating_count("wait_ms", text).map(|ms| Duration::from_millis(ms).min(MAX_WAIT))
        }
    }
}

/// `GET /v1/instances/{id}[?after_seq=N&wait_ms=M]`: the execution record.
/// With `wait_ms`, the answer waits until the record has more than
/// `after_seq` entries (default 0, so a caller may start waiting before the
/// proposal is folded) or `wait_ms` has passed, then sends the record as it
/// is: agents and the console learn of a decision without polling.
async fn get_instance(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<RecordQuery>,
) -> Result<Response, ApiError> {
    let after_seq = match query.after_seq.as_deref() {
        None => 0,
        Some(text) => saturating_count("after_seq", text)?,
    };
    let wait = wait_of(query.wait_ms.as_deref())?;
    if !wait.is_zero() {
        // Never wait for an instance another shard folds.
        misdirected(&state, &id).await?;
        wait_for_entries(&state, &id, after_seq, wait).await?;
    }
    let lookup = id.clone();
    let record = read(&state.store, move |store| store.record(&lookup)).await?;
    match record {
        Some(record) => Ok(Json(record).into_response()),
        None => {
            misdirected(&state, &id).await?;
            Err(not_found(format!("no instance {id:?} in the view")))
        }
    }
}

/// `GET /v1/instances/{id}/facts`: what intake checks before it takes an
/// event for the instance (status, proposer, action digest, deadlines),
/// from the stored state alone. Unlike the record, this neither reads nor
/// refolds the history, so its cost does not grow with the instance.
async fn get_facts(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let lookup = id.clone();
    let stored = read(&state.store, move |store| store.state(&lookup)).await?;
    match stored {
        Some(stored) => Ok(Json(InstanceFacts::of(&stored)).into_response()),
        None => {
            misdirected(&state, &id).await?;
            Err(not_found(format!("no instance {id:?} in the view")))
        }
    }
}

/// Hold the request until instance `id` has more than `after_seq` history
/// entries, `wait` has passed, or the fold stopped. The store is read once;
/// after that the waiter sleeps until a committed batch writes its own
/// instance (see [`RecordWaiters`]), however busy the rest of the log is.
async fn wait_for_entries(
    state: &AppState,
    id: &str,
    after_seq: u64,
    wait: Duration,
) -> Result<(), ApiError> {
    let Ok(mut waiting) = state.waiters.register(id) else {
        state.metrics.waiters_refused.inc();
        return Err(ApiError::unavailable(
            "too_many_waiters",
            "every waiter slot is taken; retry, or read without wait_ms",
        ));
    };
    state.metrics.record_waiters.inc();
    // Decrement however this future ends, a client hanging up included.
    let _waiting = GaugeGuard(&state.metrics.record_waiters);
    let deadline = tokio::time::Instant::now() + wait;
    // Registered first: a batch committed from here on wakes us, one
    // committed before is in what we read now.
    let lookup = id.to_owned();
    let entries = read(&state.store, move |store| {
        Ok(store.state(&lookup)?.map_or(0, |state| state.entries))
    })
    .await?;
    if entries > after_seq {
        return Ok(());
    }
    loop {
        match tokio::time::timeout_at(deadline, waiting.entries.changed()).await {
            Ok(Ok(())) => {
                if *waiting.entries.borrow_and_update() > after_seq {
                    return Ok(());
                }
            }
            // Out of time, or the fold stopped: answer with what is there.
            Ok(Err(_)) | Err(_) => return Ok(()),
        }
    }
}

/// Decrements a gauge when dropped.
struct GaugeGuard<'a>(&'a prometheus_client::metrics::gauge::Gauge);

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryQuery {
    partition: String,
    offset: String,
    wait_ms: Option<String>,
}

/// `GET /v1/instances/{id}/entries?partition=P&offset=O&wait_ms=N`: the
/// history entry the fold made of the record at that log position, once it
/// is committed. Intake answers an execution request with it, so the grant
/// or refusal a client sees is the fold's, never intake's own.
async fn get_entry(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<EntryQuery>,
) -> Result<Response, ApiError> {
    let partition = query
        .partition
        .parse::<i32>()
        .ok()
        .filter(|p| *p >= 0)
        .ok_or_else(|| not_a_count("partition", &query.partition))?;
    let offset = query
        .offset
        .parse::<i64>()
        .ok()
        .filter(|o| *o >= 0)
        .ok_or_else(|| not_a_count("offset", &query.offset))?;
    let wait = wait_of(query.wait_ms.as_deref())?;
    // Another shard's partition is never folded here: say so at once
    // instead of holding a claim for the whole wait.
    if let Some(owned) = read(&state.store, Store::owned).await? {
        if !owned.partitions.contains(&partition) {
            return Err(not_owner(partition, &owned));
        }
    }
    let deadline = tokio::time::Instant::now() + wait;
    let position = LogPosition { partition, offset };
    let mut committed = state.committed.clone();
    loop {
        // Mark the current value seen before reading the store, so a commit
        // that lands in between still wakes the wait below.
        committed.borrow_and_update();
        let lookup = id.clone();
        let found = read(&state.store, move |store| {
            let folded = store
                .offsets()?
                .get(&partition)
                .is_some_and(|next| *next > offset);
            if !folded {
                return Ok(None);
            }
            Ok(Some(store.history(&lookup)?.and_then(|(_, history)| {
                history
                    .iter()
                    .find(|e| e.position == position)
                    .map(EntryView::from)
            })))
        })
        .await?;
        match found {
            Some(Some(entry)) => return Ok(Json(entry).into_response()),
            Some(None) => {
                return Err(not_found(format!(
                    "the record at {partition}:{offset} is not an event of instance {id:?}"
                )))
            }
            None => {}
        }
        match tokio::time::timeout_at(deadline, committed.changed()).await {
            Ok(Ok(())) => {}
            // Out of time, or the fold stopped.
            Ok(Err(_)) | Err(_) => {
                return Err(ApiError::not_found(
                    "not_folded",
                    format!("{partition}:{offset} is not folded yet"),
                ))
            }
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    status: Option<String>,
    limit: Option<String>,
    after: Option<String>,
}

async fn list_instances(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Response, ApiError> {
    let status = match query.status.as_deref() {
        None => None,
        Some(text) => Some(StatusName::parse(text).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_status",
                format!(
                    "unknown status {text:?}; expected one of {}",
                    StatusName::ALL.map(StatusName::as_str).join(", ")
                ),
            )
        })?),
    };
    let limit = limit_of(query.limit.as_deref())?;
    let page = read(&state.store, move |store| {
        store.list(status, query.after.as_deref(), limit)
    })
    .await?;
    Ok(Json(page).into_response())
}

/// `limit` of a listing: 1 to [`MAX_LIMIT`], [`DEFAULT_LIMIT`] if absent.
fn limit_of(text: Option<&str>) -> Result<usize, ApiError> {
    match text {
        None => Ok(DEFAULT_LIMIT),
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|limit| (1..=MAX_LIMIT).contains(limit))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_limit",
                    format!("limit must be an integer from 1 to {MAX_LIMIT}, not {text:?}"),
                )
            }),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeadlinesQuery {
    due_before: String,
    limit: Option<String>,
    after: Option<String>,
}

/// One line of `GET /v1/deadlines`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct DueView {
    instance_id: String,
    kind: &'static str,
    deadline: i64,
    status: Option<StatusName>,
    entries: u64,
}

#[derive(Debug, Serialize)]
struct DeadlinesPage {
    deadlines: Vec<DueView>,
    next: Option<String>,
}

/// `GET /v1/deadlines?due_before=T&limit=N&after=C`: the paused instances
/// whose decision deadline, and the authorized ones whose grant's
/// `not_after`, is at or before `T` (Unix ms), in deadline order, from the
/// deadline index (no scan of the view). Only the due ones are read, from
/// the header of their state value, for their status and entry count (the
/// sweeper's event ids are derived from it); one whose state has moved on
/// since the last durable batch is left out. `next` resumes after the last
/// one examined, so a page may hold fewer than `limit` with more to come.
async fn list_deadlines(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<DeadlinesQuery>,
) -> Result<Response, ApiError> {
    let due_before =
        i64::try_from(saturating_count("due_before", &query.due_before)?).unwrap_or(i64::MAX);
    let limit = limit_of(query.limit.as_deref())?;
    let after = match query.after.as_deref() {
        None => None,
        Some(text) => Some(Due::parse_cursor(text).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_query",
                format!("after must be a cursor this endpoint returned as next, not {text:?}"),
            )
        })?),
    };
    let Some((due, more)) = state
        .store
        .deadlines()
        .due(due_before, after.as_ref(), limit)
    else {
        return Err(ApiError::unavailable(
            "deadlines_pending",
            "the deadline index is rebuilt from the view when folding starts; retry",
        ));
    };
    let next = if more {
        due.last().map(Due::cursor)
    } else {
        None
    };
    let deadlines = read(&state.store, move |store| {
        let mut views = Vec::with_capacity(due.len());
        for entry in due {
            let Some(summary) = store.summary(&entry.instance_id)? else {
                continue;
            };
            if !deadlines::applies_to(entry.kind, summary.status) {
                continue;
            }
            views.push(DueView {
                instance_id: entry.instance_id,
                kind: deadlines::kind_name(entry.kind),
                deadline: entry.deadline,
                status: summary.status,
                entries: summary.entries,
            });
        }
        Ok(views)
    })
    .await?;
    Ok(Json(DeadlinesPage { deadlines, next }).into_response())
}

async fn get_checkpoint(State(state): State<AppState>) -> Result<Response, ApiError> {
    let checkpoint = read(&state.store, Store::checkpoint).await?;
    Ok(Json(checkpoint).into_response())
}

/// `GET /v1/shard`: which partitions this view folds, of how many; both
/// `null` until the fold has resolved `--partitions` against the log (a
/// fresh view before Kafka answered). Cheap, unlike the checkpoint: intake
/// asks every shard to route by partition.
async fn get_shard(State(state): State<AppState>) -> Result<Response, ApiError> {
    let owned = read(&state.store, Store::owned).await?;
    Ok(Json(serde_json::json!({
        "topic": state.store.topic(),
        "owned": owned.as_ref().map(|o| &o.partitions),
        "log_partitions": owned.as_ref().map(|o| o.log_partitions),
    }))
    .into_response())
}

async fn healthz() -> Response {
    Json(serde_json::json!({ "status": "ok" })).into_response()
}

/// Ready once the view has reached the high watermarks seen when consuming
/// began: before that, a replica that is catching up would answer as if
/// recent instances did not exist, so load balancers keep it out. Not ready
/// either while a batch cannot be written (`storage_error` says why): the
/// view stops moving, and a claim waiting on the fold would time out.
async fn readyz(State(state): State<AppState>) -> Response {
    let progress = state.committed.borrow().clone();
    let ready = progress.caught_up && progress.storage_error.is_none();
    let status_text = match (&progress.storage_error, progress.caught_up) {
        (Some(_), _) => "storage_error",
        (None, true) => "ready",
        (None, false) => "catching_up",
    };
    let mut body = serde_json::json!({
        "status": status_text,
        "records_folded": progress.records,
        "offsets": progress.offsets,
    });
    if let Some(reason) = &progress.storage_error {
        body["storage_error"] = serde_json::Value::String(reason.clone());
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn get_metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    state.metrics.refresh_paused_ages(crate::unix_millis());
    let text = state
        .metrics
        .encode()
        .map_err(|_| ApiError::internal(&Error::Metrics))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

async fn no_route() -> ApiError {
    not_found("no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route only answers GET",
    )
}

async fn track_latency(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let started = Instant::now();
    let response = next.run(request).await;
    state.metrics.observe_http(
        &route,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use axum::body::Body;
    use axum::http::{Method, Request as HttpRequest};
    use http_body_util::BodyExt;
    use serde_json::Value;
    use tower::ServiceExt;
    use warrant_schema::samples;

    use super::*;
    use crate::testutil::*;

    struct Fixture {
        _dir: tempfile::TempDir,
        app: Router,
        ledger: warrant_authority::Ledger,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open(dir.path());
        let mut log = mixed_log();
        // Three more instances waiting for a decision, one for signals.
        for n in [11, 12, 13] {
            log.extend(history_for(&instance_id(n), 3).iter().map(|e| record(1, e)));
        }
        log.extend(
            history_for(&instance_id(14), 1)
                .iter()
                .map(|e| record(1, e)),
        );
        fold_into(&store, &log);
        let app = router(AppState {
            store,
            metrics: Arc::new(Metrics::new()),
            committed: watch::channel(Progress::default()).1,
            waiters: Arc::new(RecordWaiters::new(DEFAULT_MAX_WAITERS)),
        });
        Fixture {
            _dir: dir,
            app,
            ledger: ledger_of(&log),
        }
    }

    async fn call(app: &Router, method: Method, uri: &str) -> (StatusCode, String, Vec<u8>) {
        let request = HttpRequest::builder()
            .method(method)
            .uri(uri)
            .body(Body::empty())
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let body = response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        (status, content_type, body)
    }

    async fn get_json(app: &Router, uri: &str) -> (StatusCode, Value) {
        let (status, content_type, body) = call(app, Method::GET, uri).await;
        assert_eq!(content_type, "application/json", "{uri}");
        (status, serde_json::from_slice(&body).unwrap())
    }

    fn assert_error(body: &Value, code: &str) {
        assert_eq!(body["error"]["code"], code, "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{body}"
        );
        assert_eq!(body.as_object().unwrap().len(), 1, "{body}");
    }

    #[tokio::test]
    async fn an_instance_is_served_as_the_shared_execution_record() {
        let fx = fixture();
        let (status, body) =
            get_json(&fx.app, &format!("/v1/instances/{}", samples::INSTANCE_ID)).await;
        assert_eq!(status, StatusCode::OK);
        let expected = fx.ledger.get(samples::INSTANCE_ID).unwrap().record();
        assert_eq!(body, serde_json::to_value(&expected).unwrap());
        assert_eq!(body["head_hash"], expected.head_hash.to_string());
    }

    #[tokio::test]
    async fn an_instances_facts_are_read_from_its_state() {
        let fx = fixture();
        let (status, body) = get_json(
            &fx.app,
            &format!("/v1/instances/{}/facts", samples::INSTANCE_ID),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let folded = fx.ledger.get(samples::INSTANCE_ID).unwrap();
        let record = folded.record();
        assert_eq!(
            body,
            serde_json::to_value(InstanceFacts::of(&folded.state)).unwrap()
        );
        let proposal = record.proposal.as_ref().unwrap();
        assert_eq!(body["action_digest"], proposal.action_digest);
        assert_eq!(body["submitted_by"], proposal.submitted_by);
        assert_eq!(body["entries"], record.history.len());
        assert_eq!(body["head_hash"], record.head_hash.to_string());

        let (status, body) = get_json(
            &fx.app,
            "/v1/instances/00000000-0000-4000-8000-000000000000/facts",
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_error(&body, "not_found");
    }

    #[tokio::test]
    async fn a_committed_position_is_answered_with_the_folds_entry() {
        let fx = fixture();
        let folded = fx.ledger.get(samples::INSTANCE_ID).unwrap();
        let entry = &folded.history[1];
        let uri = format!(
            "/v1/instances/{}/entries?partition={}&offset={}&wait_ms=10",
            samples::INSTANCE_ID,
            entry.position.partition,
            entry.position.offset
        );
        let (status, body) = get_json(&fx.app, &uri).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, serde_json::to_value(EntryView::from(entry)).unwrap());

        // Beyond the committed offsets: not folded (yet), after the wait.
        let uri = format!(
            "/v1/instances/{}/entries?partition=0&offset=999999&wait_ms=20",
            samples::INSTANCE_ID
        );
        let (status, body) = get_json(&fx.app, &uri).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["error"]["code"], "not_folded");

        // Committed, but another instance's record.
        let uri = format!(
            "/v1/instances/{}/entries?partition={}&offset={}",
            instance_id(999),
            entry.position.partition,
            entry.position.offset
        );
        let (status, body) = get_json(&fx.app, &uri).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["error"]["code"], "not_found");

        let (status, body) =
            get_json(&fx.app, "/v1/instances/x/entries?partition=-1&offset=0").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"]["code"], "invalid_query");
    }

    #[tokio::test]
    async fn a_shard_says_not_owner_for_another_shards_instances_and_positions() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open(dir.path());
        fold_into(&store, &mixed_log());
        let app = router(AppState {
            store: store.clone(),
            metrics: Arc::new(Metrics::new()),
            committed: watch::channel(Progress::default()).1,
            waiters: Arc::new(RecordWaiters::new(DEFAULT_MAX_WAITERS)),
        });
        // Before the fold resolved its partitions: nothing is refused.
        let (status, body) = get_json(&app, "/v1/shard").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["owned"], Value::Null, "{body}");
        let (_, checkpoint) = get_json(&app, "/v1/checkpoint").await;
        assert!(checkpoint.get("owned").is_none(), "{checkpoint}");

        // Shard of partitions 0 and 1 of 6.
        store
            .set_owned(&Owned {
                log_partitions: 6,
                partitions: [0, 1].into(),
            })
            .unwrap();
        let (_, body) = get_json(&app, "/v1/shard").await;
        assert_eq!(
            body,
            serde_json::json!({"topic": TOPIC, "owned": [0, 1], "log_partitions": 6})
        );
        let (_, checkpoint) = get_json(&app, "/v1/checkpoint").await;
        assert_eq!(checkpoint["owned"], serde_json::json!([0, 1]));
        assert_eq!(checkpoint["log_partitions"], 6);

        let partition_of = |id: &str| warrant_authority::instance_partition(id, 6).unwrap();
        let elsewhere = (1000..)
            .map(instance_id)
            .find(|id| partition_of(id) >= 2)
            .unwrap();
        let here = (1000..)
            .map(instance_id)
            .find(|id| partition_of(id) < 2)
            .unwrap();
        // Another shard's instance: 421 at once, with or without a wait.
        for uri in [
            format!("/v1/instances/{elsewhere}"),
            format!("/v1/instances/{elsewhere}?wait_ms=30000"),
            format!("/v1/instances/{here}/entries?partition=4&offset=0&wait_ms=30000"),
        ] {
            let started = Instant::now();
            let (status, body) = get_json(&app, &uri).await;
            assert_eq!(status, StatusCode::MISDIRECTED_REQUEST, "{uri}: {body}");
            assert_error(&body, "not_owner");
            assert!(
                body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("folds partitions 0-1 of the log's 6"),
                "{body}"
            );
            assert!(started.elapsed() < Duration::from_secs(5), "{uri} waited");
        }
        // One of its own that is unknown: a plain 404.
        let (status, body) = get_json(&app, &format!("/v1/instances/{here}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_error(&body, "not_found");
        // An instance the view holds is served whatever its key routes to
        // (a record produced to an explicit partition is still the log's).
        let held = samples::INSTANCE_ID;
        assert!(
            partition_of(held) >= 2,
            "pick an instance another shard would own"
        );
        let (status, _) = get_json(&app, &format!("/v1/instances/{held}")).await;
        assert_eq!(status, StatusCode::OK);
        // A quarantine names its partition.
        let (status, body) = get_json(&app, "/v1/instances/quarantine-5").await;
        assert_eq!(status, StatusCode::MISDIRECTED_REQUEST, "{body}");
        let (status, _) = get_json(&app, "/v1/instances/quarantine-0").await;
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn an_unknown_instance_is_a_json_404() {
        let fx = fixture();
        let (status, body) =
            get_json(&fx.app, &format!("/v1/instances/{}", instance_id(404))).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_error(&body, "not_found");
        let (status, body) = get_json(&fx.app, "/v1/nothing-here").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_error(&body, "not_found");
    }

    #[tokio::test]
    async fn bad_list_parameters_are_json_400s() {
        let fx = fixture();
        for (uri, code) in [
            ("/v1/instances?status=PAUSED", "invalid_status"),
            ("/v1/instances?status=awaiting_decision", "invalid_status"),
            ("/v1/instances?limit=0", "invalid_limit"),
            ("/v1/instances?limit=1001", "invalid_limit"),
            ("/v1/instances?limit=ten", "invalid_limit"),
            ("/v1/instances?limit=-1", "invalid_limit"),
            ("/v1/instances?stauts=BLOCKED", "invalid_query"),
            (
                "/v1/instances?status=BLOCKED&status=FAILED",
                "invalid_query",
            ),
        ] {
            let (status, body) = get_json(&fx.app, uri).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
            assert_error(&body, code);
        }
    }

    #[tokio::test]
    async fn the_queue_pages_by_instance_id() {
        let fx = fixture();
        let (status, body) =
            get_json(&fx.app, "/v1/instances?status=AWAITING_DECISION&limit=2").await;
        assert_eq!(status, StatusCode::OK);
        let ids: Vec<&str> = body["instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["instance_id"].as_str().unwrap())
            .collect();
        // Instance 7 of the mixed log also waits (its Malformed record changed nothing).
        assert_eq!(ids, [instance_id(7), instance_id(11)]);
        assert_eq!(body["next"], instance_id(11));
        let first = &body["instances"][1];
        assert_eq!(first["status"], "AWAITING_DECISION");
        assert_eq!(first["entries"], 3);
        let expected_head = fx
            .ledger
            .get(&instance_id(11))
            .unwrap()
            .state
            .head
            .to_string();
        assert_eq!(first["head_hash"], expected_head);
        assert_eq!(first.as_object().unwrap().len(), 4);

        let uri = format!(
            "/v1/instances?status=AWAITING_DECISION&limit=2&after={}",
            instance_id(11)
        );
        let (_, body) = get_json(&fx.app, &uri).await;
        assert_eq!(body["instances"].as_array().unwrap().len(), 2);
        assert_eq!(body["instances"][0]["instance_id"], instance_id(12));
        assert_eq!(body["instances"][1]["instance_id"], instance_id(13));
        assert_eq!(body["next"], Value::Null);
        let (_, body) = get_json(&fx.app, "/v1/instances?status=AWAITING_SIGNALS").await;
        assert_eq!(body["instances"].as_array().unwrap().len(), 1);
        assert_eq!(body["instances"][0]["instance_id"], instance_id(14));

        // Without a status: every instance, the default page holds them all.
        let (_, body) = get_json(&fx.app, "/v1/instances").await;
        let all = body["instances"].as_array().unwrap();
        assert_eq!(all.len(), fx.ledger.len());
        assert!(all
            .iter()
            .any(|i| i["instance_id"] == "quarantine-0" && i["status"].is_null()));
        assert_eq!(body["next"], Value::Null);
    }

    fn ids_of(body: &Value) -> Vec<String> {
        body["deadlines"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["instance_id"].as_str().unwrap().to_owned())
            .collect()
    }

    #[tokio::test]
    async fn due_deadlines_page_in_deadline_order() {
        let fx = fixture();
        // Every paused instance of the fixture was proposed at the same time.
        let deadline = samples::PROPOSED_AT + 3_600_000;
        let uri = |due: i64, rest: &str| format!("/v1/deadlines?due_before={due}{rest}");
        let (status, body) = get_json(&fx.app, &uri(deadline - 1, "")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, serde_json::json!({"deadlines": [], "next": null}));

        let (status, body) = get_json(&fx.app, &uri(deadline, "&limit=2")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(ids_of(&body), [instance_id(7), instance_id(11)]);
        assert_eq!(
            body["deadlines"][1],
            serde_json::json!({
                "instance_id": instance_id(11),
                "kind": "DECISION",
                "deadline": deadline,
                "status": "AWAITING_DECISION",
                "entries": 3,
            })
        );
        let next = body["next"].as_str().unwrap().to_owned();
        let (_, body) = get_json(&fx.app, &uri(deadline, &format!("&limit=2&after={next}"))).await;
        assert_eq!(ids_of(&body), [instance_id(12), instance_id(13)]);
        let next = body["next"].as_str().unwrap().to_owned();
        let (_, body) = get_json(&fx.app, &uri(deadline, &format!("&limit=2&after={next}"))).await;
        assert_eq!(ids_of(&body), [instance_id(14)]);
        assert_eq!(body["deadlines"][0]["status"], "AWAITING_SIGNALS");
        assert_eq!(body["deadlines"][0]["entries"], 1);
        assert_eq!(body["next"], Value::Null);
        // The completed sample instance is never due.
        let (_, body) = get_json(&fx.app, &uri(i64::MAX, "")).await;
        assert_eq!(ids_of(&body).len(), 5);
        assert!(!ids_of(&body).contains(&samples::INSTANCE_ID.to_owned()));
    }

    #[tokio::test]
    async fn an_entry_whose_state_moved_on_is_left_out_and_paging_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open(dir.path());
        let mut log = mixed_log();
        log.extend(
            history_for(&instance_id(11), 3)
                .iter()
                .map(|e| record(1, e)),
        );
        fold_into(&store, &log);
        // An entry the view's state no longer has (the completed sample
        // instance), as between a batch's apply and its publication.
        store.deadlines().apply(&[crate::deadlines::DeadlineChange {
            instance_id: samples::INSTANCE_ID.to_owned(),
            before: None,
            after: Some((0, warrant_schema::DeadlineKind::Decision)),
        }]);
        let app = router(AppState {
            store,
            metrics: Arc::new(Metrics::new()),
            committed: watch::channel(Progress::default()).1,
            waiters: Arc::new(RecordWaiters::new(DEFAULT_MAX_WAITERS)),
        });
        let (status, body) = get_json(&app, "/v1/deadlines?due_before=0&limit=1").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(ids_of(&body), Vec::<String>::new());
        assert_eq!(body["next"], Value::Null, "nothing else is due by 0");
        let (_, body) = get_json(
            &app,
            &format!("/v1/deadlines?due_before={}&limit=1", i64::MAX),
        )
        .await;
        assert_eq!(ids_of(&body), Vec::<String>::new());
        let next = body["next"].as_str().expect("more to come").to_owned();
        let uri = format!("/v1/deadlines?due_before={}&limit=5&after={next}", i64::MAX);
        let (_, body) = get_json(&app, &uri).await;
        assert_eq!(ids_of(&body), [instance_id(7), instance_id(11)]);
    }

    #[tokio::test]
    async fn bad_deadline_parameters_are_json_400s_and_an_unbuilt_index_a_503() {
        let fx = fixture();
        for (uri, code) in [
            ("/v1/deadlines", "invalid_query"),
            ("/v1/deadlines?due_before=", "invalid_query"),
            ("/v1/deadlines?due_before=-1", "invalid_query"),
            ("/v1/deadlines?due_before=soon", "invalid_query"),
            ("/v1/deadlines?due_before=1&limit=0", "invalid_limit"),
            ("/v1/deadlines?due_before=1&limit=1001", "invalid_limit"),
            ("/v1/deadlines?due_before=1&after=nope", "invalid_query"),
            (
                "/v1/deadlines?due_before=1&after=1:id:LATER",
                "invalid_query",
            ),
            ("/v1/deadlines?due_before=1&status=BLOCKED", "invalid_query"),
            ("/v1/deadlines?due_before=1&due_before=2", "invalid_query"),
        ] {
            let (status, body) = get_json(&fx.app, uri).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {body}");
            assert_error(&body, code);
        }
        // Digits beyond 64 bits: everything is due.
        let (status, body) =
            get_json(&fx.app, "/v1/deadlines?due_before=99999999999999999999999").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(ids_of(&body).len(), 5);

        // A view the fold has not started on has no index yet.
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open(dir.path());
        let app = router(AppState {
            store,
            metrics: Arc::new(Metrics::new()),
            committed: watch::channel(Progress::default()).1,
            waiters: Arc::new(RecordWaiters::new(DEFAULT_MAX_WAITERS)),
        });
        let request = HttpRequest::builder()
            .uri("/v1/deadlines?due_before=1")
            .body(Body::empty())
            .unwrap();
        let response = app.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        let body: Value =
            serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes())
                .unwrap();
        assert_error(&body, "deadlines_pending");
    }

    /// What a hostile client may send: every answer is ours, JSON and 4xx
    /// or a page, never a 5xx; and paging one line at a time through equal
    /// deadlines serves each due instance once and ends.
    #[tokio::test]
    async fn hostile_deadline_queries_get_json_4xx_and_paging_by_one_is_exact() {
        let fx = fixture();
        for uri in [
            "/v1/deadlines?due_before=1&after=",
            "/v1/deadlines?due_before=1&after=%FF%FE",
            "/v1/deadlines?due_before=1&after=99999999999999999999:x:GRANT",
            "/v1/deadlines?due_before=1&after=1:x:GRANT%00",
            "/v1/deadlines?due_before=1&after=1%3Ax",
            "/v1/deadlines?due_before=1e3",
            "/v1/deadlines?due_before=%20",
            "/v1/deadlines?due_before=-0",
            "/v1/deadlines?due_before=1&limit=-1",
            "/v1/deadlines?due_before=1&limit=99999999999999999999999",
            "/v1/deadlines?due_before=1&after=1:x:GRANT&after=2:x:GRANT",
            "/v1/deadlines?due_before=1&limit=1&limit=2",
        ] {
            let (status, body) = get_json(&fx.app, uri).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {body}");
            assert!(body["error"]["code"].is_string(), "{uri}: {body}");
        }
        // Cursors the endpoint never wrote but could have: any deadline in
        // 64 bits, any instance id, either kind; a page, not an error.
        let long = "x".repeat(8000);
        for after in [
            format!("{}:a:DECISION", i64::MIN),
            format!("{}:a:GRANT", i64::MAX),
            "0:quarantine-0:GRANT".to_owned(),
            "0:%3A%3A%3A:DECISION".to_owned(),
            format!("0:{long}:DECISION"),
        ] {
            let uri = format!("/v1/deadlines?due_before={}&after={after}", i64::MAX);
            let (status, body) = get_json(&fx.app, &uri).await;
            assert_eq!(status, StatusCode::OK, "{after}: {body}");
        }
        // A cursor past everything due: an empty last page.
        let (_, body) = get_json(
            &fx.app,
            &format!("/v1/deadlines?due_before=0&after={}:z:GRANT", i64::MAX),
        )
        .await;
        assert_eq!(body, serde_json::json!({"deadlines": [], "next": null}));

        // Five paused instances share one deadline: one line per page.
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        for _ in 0..20 {
            let uri = match &after {
                None => format!("/v1/deadlines?due_before={}&limit=1", i64::MAX),
                Some(next) => format!(
                    "/v1/deadlines?due_before={}&limit=1&after={}",
                    i64::MAX,
                    next.replace(':', "%3A")
                ),
            };
            let (status, body) = get_json(&fx.app, &uri).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            seen.extend(ids_of(&body));
            match body["next"].as_str() {
                Some(next) => after = Some(next.to_owned()),
                None => break,
            }
        }
        let (_, all) = get_json(&fx.app, &format!("/v1/deadlines?due_before={}", i64::MAX)).await;
        assert_eq!(seen, ids_of(&all));
        assert_eq!(seen.len(), 5);
    }

    #[tokio::test]
    async fn the_checkpoint_names_offsets_count_and_digest() {
        let fx = fixture();
        let (status, body) = get_json(&fx.app, "/v1/checkpoint").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["topic"], TOPIC);
        let mixed = mixed_log().len() as i64;
        assert_eq!(
            body["partitions"],
            serde_json::json!({ "0": mixed, "1": 10 })
        );
        assert_eq!(body["instances"], fx.ledger.len() as u64);
        assert_eq!(body["digest"], fx.ledger.checkpoint_digest().to_string());
        assert_eq!(body["digest"].as_str().unwrap().len(), 64);
        assert_eq!(body.as_object().unwrap().len(), 4);
    }

    /// A store holding instance 21's first three events, the waiter
    /// registry commits announce to, and an app with `max_waiters` slots.
    fn waiting_fixture(
        max_waiters: usize,
    ) -> (tempfile::TempDir, Arc<Store>, Arc<RecordWaiters>, Router) {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open(dir.path());
        let first: Vec<_> = history_for(&instance_id(21), 3)
            .iter()
            .map(|e| record(0, e))
            .collect();
        fold_into(&store, &first);
        let waiters = Arc::new(RecordWaiters::new(max_waiters));
        let app = router(AppState {
            store: store.clone(),
            metrics: Arc::new(Metrics::new()),
            committed: watch::channel(Progress::default()).1,
            waiters: waiters.clone(),
        });
        (dir, store, waiters, app)
    }

    /// Commit `records` and announce what the batch wrote, as the commit
    /// thread does.
    fn commit(store: &Arc<Store>, waiters: &RecordWaiters, records: &[Record]) {
        fold_into(store, records);
        let written: Vec<(String, u64)> = records
            .iter()
            .filter_map(|(_, key, _)| String::from_utf8(key.clone()?).ok())
            .map(|id| {
                let entries = store.state(&id).unwrap().unwrap().entries;
                (id, entries)
            })
            .collect();
        waiters.committed(written.iter().map(|(id, n)| (id.as_str(), *n)));
    }

    /// Commit instance 21's fourth event.
    fn commit_fourth_event(store: &Arc<Store>, waiters: &RecordWaiters) {
        let fourth = history_for(&instance_id(21), 4).pop().unwrap();
        commit(store, waiters, &[record(0, &fourth)]);
    }

    #[tokio::test]
    async fn a_record_wait_answers_as_soon_as_a_commit_adds_an_entry() {
        let (_dir, store, waiters, app) = waiting_fixture(DEFAULT_MAX_WAITERS);
        let uri = format!(
            "/v1/instances/{}?after_seq=3&wait_ms=30000",
            instance_id(21)
        );
        let started = Instant::now();
        let waiting = tokio::spawn(async move { get_json(&app, &uri).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiting.is_finished(), "answered before anything changed");
        // A batch that writes only another instance does not wake it.
        let other = history_for(&instance_id(23), 1);
        commit(&store, &waiters, &[record(0, &other[0])]);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiting.is_finished(), "woken by another instance's batch");

        commit_fourth_event(&store, &waiters);
        let (status, body) = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken by the commit, long before wait_ms")
            .unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["history"].as_array().unwrap().len(), 4);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_record_wait_that_times_out_answers_with_the_unchanged_record() {
        let (_dir, _store, _waiters, app) = waiting_fixture(DEFAULT_MAX_WAITERS);
        let started = Instant::now();
        let uri = format!("/v1/instances/{}?after_seq=3&wait_ms=150", instance_id(21));
        let (status, body) = get_json(&app, &uri).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["history"].as_array().unwrap().len(), 3);
        assert!(started.elapsed() >= Duration::from_millis(150));

        // A record that already has more entries than after_seq answers at
        // once, however long the client offered to wait (clamped, not refused).
        let started = Instant::now();
        let uri = format!(
            "/v1/instances/{}?after_seq=1&wait_ms=99999999999999999999",
            instance_id(21)
        );
        let (status, body) = get_json(&app, &uri).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["history"].as_array().unwrap().len(), 3);
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn a_wait_on_an_instance_not_folded_yet_sees_its_proposal_land() {
        let (_dir, store, waiters, app) = waiting_fixture(DEFAULT_MAX_WAITERS);
        let unknown = format!("/v1/instances/{}?wait_ms=100", instance_id(22));
        let (status, body) = get_json(&app, &unknown).await;
        assert_eq!(
            status,
            StatusCode::NOT_FOUND,
            "still unknown when the wait ends"
        );
        assert_error(&body, "not_found");

        let uri = format!("/v1/instances/{}?wait_ms=30000", instance_id(22));
        let waiting = tokio::spawn(async move { get_json(&app, &uri).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiting.is_finished());
        let proposal = history_for(&instance_id(22), 1);
        commit(&store, &waiters, &[record(0, &proposal[0])]);
        let (status, body) = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken by the commit")
            .unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["instance_id"], instance_id(22));
    }

    #[tokio::test]
    async fn waiters_beyond_the_bound_are_told_to_retry() {
        let (_dir, store, waiters, app) = waiting_fixture(1);
        let uri = format!(
            "/v1/instances/{}?after_seq=3&wait_ms=30000",
            instance_id(21)
        );
        let holder = {
            let (app, uri) = (app.clone(), uri.clone());
            tokio::spawn(async move { get_json(&app, &uri).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;

        let request = HttpRequest::builder()
            .uri(&uri)
            .body(Body::empty())
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        let body: Value =
            serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes())
                .unwrap();
        assert_error(&body, "too_many_waiters");
        // A plain read needs no slot.
        let (status, _) = get_json(&app, &format!("/v1/instances/{}", instance_id(21))).await;
        assert_eq!(status, StatusCode::OK);

        let (_, _, metrics) = call(&app, Method::GET, "/metrics").await;
        let text = String::from_utf8(metrics).unwrap();
        assert!(
            text.contains("warrant_projector_record_waiters 1"),
            "{text}"
        );
        assert!(
            text.contains("warrant_projector_record_waiters_refused_total 1"),
            "{text}"
        );

        commit_fourth_event(&store, &waiters);
        let (status, _) = holder.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        // The slot is free again once the holder has answered.
        let uri = format!("/v1/instances/{}?after_seq=0&wait_ms=10", instance_id(21));
        let (status, _) = get_json(&app, &uri).await;
        assert_eq!(status, StatusCode::OK);
        let (_, _, metrics) = call(&app, Method::GET, "/metrics").await;
        let text = String::from_utf8(metrics).unwrap();
        assert!(
            text.contains("warrant_projector_record_waiters 0"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn bad_wait_parameters_are_json_400s() {
        let (_dir, _store, _waiters, app) = waiting_fixture(DEFAULT_MAX_WAITERS);
        for query in [
            "after_seq=-1",
            "after_seq=x&wait_ms=10",
            "wait_ms=soon",
            "wait=10",
        ] {
            let uri = format!("/v1/instances/{}?{query}", instance_id(21));
            let (status, body) = get_json(&app, &uri).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
            assert_error(&body, "invalid_query");
        }
    }

    #[tokio::test]
    async fn ready_only_once_caught_up_with_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open(dir.path());
        let (progress, committed) = watch::channel(Progress::default());
        let app = router(AppState {
            store,
            metrics: Arc::new(Metrics::new()),
            committed,
            waiters: Arc::new(RecordWaiters::new(DEFAULT_MAX_WAITERS)),
        });
        let (status, body) = get_json(&app, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["status"], "catching_up");

        progress.send_modify(|p| {
            p.offsets.insert(0, 42);
            p.records = 42;
            p.caught_up = true;
        });
        let (status, body) = get_json(&app, "/readyz").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["status"], "ready");
        assert_eq!(body["offsets"]["0"], 42);
        assert!(body.get("storage_error").is_none());

        // A batch the disk refuses: not ready, and the reason is given.
        progress.send_modify(|p| {
            p.storage_error = Some("sled failed to flush: No space left on device".to_owned())
        });
        let (status, body) = get_json(&app, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["status"], "storage_error");
        assert_eq!(
            body["storage_error"],
            "sled failed to flush: No space left on device"
        );
        progress.send_modify(|p| p.storage_error = None);
        assert_eq!(get_json(&app, "/readyz").await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn health_metrics_and_methods() {
        let fx = fixture();
        let (status, body) = get_json(&fx.app, "/healthz").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["status"], "ok");

        let (status, _, body) = call(&fx.app, Method::POST, "/v1/checkpoint").await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_error(
            &serde_json::from_slice(&body).unwrap(),
            "method_not_allowed",
        );

        let (status, content_type, body) = call(&fx.app, Method::GET, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            content_type.starts_with("application/openmetrics-text"),
            "{content_type}"
        );
        let text = String::from_utf8(body).unwrap();
        assert!(
            text.contains("warrant_projector_records_folded_total"),
            "{text}"
        );
        assert!(
            text.contains("warrant_projector_refusals_total{code=\"Malformed\"}"),
            "{text}"
        );
        // Every paused status has an age series, computed when scraped.
        for status in ["AWAITING_SIGNALS", "AWAITING_DECISION", "BLOCKED"] {
            let series =
                format!("warrant_projector_oldest_paused_age_seconds{{status=\"{status}\"}}");
            assert!(text.contains(&series), "{series} missing from\n{text}");
        }
        // The requests above were timed, by route and status.
        assert!(
            text.contains("warrant_projector_http_request_duration_seconds_count{route=\"/healthz\",status=\"200\"} 1"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
