//! The notifier's small HTTP surface: health, readiness, metrics, and a
//! read of the outbox (what waits, what is parked). Errors have the shape
//! both Warrant services answer with, `{"error":{"code","message"}}`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::sync::watch;
use warrant_runtime::ApiError;

use crate::deliver::summary;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::Progress;

/// Parked entries listed by `/v1/outbox` at most.
const PARKED_SHOWN: usize = 100;

#[derive(Debug, Clone)]
pub struct AppState {
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
    pub progress: watch::Receiver<Progress>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(get_metrics))
        .route("/v1/outbox", get(get_outbox))
        .fallback(|| async { ApiError::not_found("no_route", "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route only answers GET",
            )
        })
        .with_state(state)
}

async fn healthz() -> Response {
    Json(serde_json::json!({ "status": "ok" })).into_response()
}

/// Ready once the fold has reached the high watermarks seen at start:
/// before that, notifications for old events are still being derived.
async fn readyz(State(state): State<AppState>) -> Response {
    let progress = state.progress.borrow().clone();
    let body = serde_json::json!({
        "status": if progress.caught_up { "ready" } else { "catching_up" },
        "offsets": progress.offsets,
    });
    let status = if progress.caught_up {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn get_metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let text = state.metrics.encode().map_err(|error| {
        ApiError::internal(&std::io::Error::other(format!(
            "cannot encode metrics: {error}"
        )))
    })?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// `{channels: {name: {pending, parked}}, parked: [...]}`: the first
/// parked notifications with why they were given up on.
async fn get_outbox(State(state): State<AppState>) -> Result<Response, ApiError> {
    let store = state.store.clone();
    let outbox = tokio::task::spawn_blocking(move || store.outbox())
        .await
        .map_err(|error| ApiError::internal(&error))?
        .map_err(|error| ApiError::internal(&error))?;
    let channels: serde_json::Map<String, serde_json::Value> = summary(&outbox)
        .into_iter()
        .map(|(name, (pending, parked))| {
            (
                name,
                serde_json::json!({ "pending": pending, "parked": parked }),
            )
        })
        .collect();
    let parked: Vec<serde_json::Value> = outbox
        .iter()
        .filter(|p| p.parked)
        .take(PARKED_SHOWN)
        .map(|p| {
            serde_json::json!({
                "channel": p.channel,
                "id": p.notification.id,
                "kind": p.notification.kind,
                "instance_id": p.notification.instance_id,
                "attempts": p.attempts,
                "last_error": p.last_error,
            })
        })
        .collect();
    Ok(Json(serde_json::json!({ "channels": channels, "parked": parked })).into_response())
}
