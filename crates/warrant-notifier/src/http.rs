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

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;
    use crate::notification::{Kind, Links, Notification, ProposerSummary, RuleSummary};
    use crate::store::Pending;

    fn pending(channel: &str, n: u128, parked: bool) -> Pending {
        let mut pending = Pending::new(
            channel,
            Notification {
                id: uuid::Uuid::from_u128(n),
                kind: Kind::Alert,
                instance_id: format!("i-{n}"),
                seq: 2,
                status: "AUTHORIZED".to_owned(),
                recorded_at: 0,
                action: warrant_schema::samples::action(),
                action_digest: String::new(),
                rule: RuleSummary {
                    id: "r".to_owned(),
                    approvals_required: 1,
                    approver_roles: vec![],
                    override_roles: vec![],
                },
                proposer: ProposerSummary {
                    principal: "p".to_owned(),
                    kind: warrant_schema::ProposerKind::Service,
                },
                decision_deadline: 0,
                roles: vec![],
                quorum: None,
                alert: None,
                links: Links::default(),
            },
        );
        pending.parked = parked;
        pending.attempts = if parked { 3 } else { 0 };
        pending.last_error = parked.then(|| "the receiver answered 500".to_owned());
        pending
    }

    async fn get(app: &Router, path: &str) -> (StatusCode, serde_json::Value) {
        let response = app
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).expect("a request"))
            .await
            .expect("an answer");
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("a body")
            .to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        )
    }

    #[tokio::test]
    async fn readiness_follows_the_fold_and_the_outbox_lists_what_is_parked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = Store::open(dir.path(), "log", 0, false).expect("store");
        for p in [
            pending("a", 1, false),
            pending("a", 2, true),
            pending("b", 3, false),
        ] {
            store.put_pending(&p).expect("put");
        }
        let (progress_tx, progress) = watch::channel(Progress::default());
        let app = router(AppState {
            store: Arc::new(store),
            metrics: Arc::new(Metrics::new()),
            progress,
        });
        let (status, body) = get(&app, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["status"], "catching_up");
        progress_tx.send_modify(|p| p.caught_up = true);
        assert_eq!(get(&app, "/readyz").await.0, StatusCode::OK);
        assert_eq!(get(&app, "/healthz").await.0, StatusCode::OK);

        let (status, outbox) = get(&app, "/v1/outbox").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            outbox["channels"],
            serde_json::json!({ "a": { "pending": 1, "parked": 1 }, "b": { "pending": 1, "parked": 0 } })
        );
        let parked = outbox["parked"].as_array().expect("a list");
        assert_eq!(parked.len(), 1);
        assert_eq!(parked[0]["instance_id"], "i-2");
        assert_eq!(parked[0]["attempts"], 3);
        assert_eq!(parked[0]["last_error"], "the receiver answered 500");

        let (status, body) = get(&app, "/v1/nothing").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["error"]["code"], "no_route");
        let metrics = app
            .clone()
            .oneshot(
                Request::get("/metrics")
                    .body(Body::empty())
                    .expect("a request"),
            )
            .await
            .expect("an answer");
        assert_eq!(metrics.status(), StatusCode::OK);
    }
}
