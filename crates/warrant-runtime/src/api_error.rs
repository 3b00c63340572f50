//! The one error shape both HTTP services answer with (docs/contract.md §6: bad input
//! gets `{"error":{"code","message"}}` and a 4xx): intake's API and the
//! projector's read API build every error response from [`ApiError`], so a
//! client parses one shape whichever service it talks to.
//!
//! When a request did reach the log (intake: a refused claim, a claim the
//! fold has not answered yet) the body also names the event, so the client
//! can find what the fold made of it.

use std::borrow::Cow;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

/// Seconds a client should wait before retrying a 503.
pub const RETRY_AFTER_SECS: u64 = 1;

/// An event that is on the log, named in an error so the client can find
/// what the fold made of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventRef {
    pub event_id: String,
    pub partition: i32,
    pub offset: i64,
}

/// An HTTP error with a stable, machine-readable `code` and a message for
/// people. Rendered by its `IntoResponse`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: Cow<'static, str>,
    pub message: String,
    /// `Retry-After` seconds (503s).
    pub retry_after: Option<u64>,
    pub event: Option<Box<EventRef>>,
    /// `WWW-Authenticate` challenge for 401s on bearer-token routes.
    pub challenge: Option<&'static str>,
}

impl ApiError {
    pub fn new(
        status: StatusCode,
        code: impl Into<Cow<'static, str>>,
        message: impl Into<String>,
    ) -> ApiError {
        ApiError {
            status,
            code: code.into(),
            message: message.into(),
            retry_after: None,
            event: None,
            challenge: None,
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, code, message)
    }

    pub fn forbidden(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, code, message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, code, message)
    }

    /// The service cannot answer now; nothing was acknowledged.
    pub fn unavailable(code: &'static str, message: impl Into<String>) -> ApiError {
        let mut error = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message);
        error.retry_after = Some(RETRY_AFTER_SECS);
        error
    }

    /// A bug on our side. The cause is logged here, with all its sources;
    /// the body says nothing more, so a 500 never leaks internals.
    pub fn internal(cause: &dyn std::error::Error) -> ApiError {
        tracing::error!(error = %warrant_authority::error_chain(cause), "request failed");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    }

    pub fn with_event(mut self, event: EventRef) -> ApiError {
        self.event = Some(Box::new(event));
        self
    }

    pub fn with_challenge(mut self, challenge: &'static str) -> ApiError {
        self.challenge = Some(challenge);
        self
    }
}

#[derive(Serialize)]
struct Body<'a> {
    error: ErrorBody<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<&'a EventRef>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'a str,
    message: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            error: ErrorBody {
                code: &self.code,
                message: &self.message,
            },
            event: self.event.as_deref(),
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if let Some(challenge) = self.challenge {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        response
    }
}

/// 400 `invalid_query`: query parameter `what` is not a non-negative integer.
pub fn not_a_count(what: &str, text: &str) -> ApiError {
    ApiError::bad_request(
        "invalid_query",
        format!("{what} must be a non-negative integer, not {text:?}"),
    )
}

/// A non-negative integer query parameter; digits beyond u64 saturate, so
/// a huge `wait_ms` is clamped by the caller rather than refused.
pub fn saturating_count(what: &str, text: &str) -> Result<u64, ApiError> {
    match text.parse::<u64>() {
        Ok(value) => Ok(value),
        Err(_) if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) => Ok(u64::MAX),
        Err(_) => Err(not_a_count(what, text)),
    }
}

#[cfg(test)]
mod tests {
    use axum::body::to_bytes;

    use super::*;

    /// Status, headers and the body, byte for byte.
    async fn render(error: ApiError) -> (StatusCode, axum::http::HeaderMap, String) {
        let response = error.into_response();
        let (parts, body) = response.into_parts();
        let bytes = to_bytes(body, 1 << 16)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        (
            parts.status,
            parts.headers,
            String::from_utf8_lossy(&bytes).into_owned(),
        )
    }

    #[tokio::test]
    async fn the_body_is_code_and_message_only() {
        let (status, headers, body) = render(ApiError::bad_request(
            "invalid_limit",
            "limit must be 1 to 1000",
        ))
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            body,
            r#"{"error":{"code":"invalid_limit","message":"limit must be 1 to 1000"}}"#
        );
        assert_eq!(
            headers.get(header::CONTENT_TYPE).map(HeaderValue::as_bytes),
            Some(&b"application/json"[..])
        );
        assert!(!headers.contains_key(header::RETRY_AFTER));
        assert!(!headers.contains_key(header::WWW_AUTHENTICATE));
    }

    #[tokio::test]
    async fn each_constructor_has_its_status() {
        for (error, status) in [
            (ApiError::unauthorized("c", "m"), StatusCode::UNAUTHORIZED),
            (ApiError::forbidden("c", "m"), StatusCode::FORBIDDEN),
            (ApiError::not_found("c", "m"), StatusCode::NOT_FOUND),
            (
                ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "c", "m"),
                StatusCode::METHOD_NOT_ALLOWED,
            ),
        ] {
            assert_eq!(render(error).await.0, status);
        }
    }

    #[tokio::test]
    async fn a_request_on_the_log_names_its_event() {
        let event = EventRef {
            event_id: "e-1".to_owned(),
            partition: 2,
            offset: 41,
        };
        let (status, _, body) =
            render(ApiError::new(StatusCode::CONFLICT, "Expired", "too late").with_event(event))
                .await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(
            body,
            r#"{"error":{"code":"Expired","message":"too late"},"event":{"event_id":"e-1","partition":2,"offset":41}}"#
        );
    }

    #[tokio::test]
    async fn unavailable_asks_to_retry_and_401s_carry_their_challenge() {
        let (status, headers, _) = render(ApiError::unavailable("fold_pending", "later")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            headers.get(header::RETRY_AFTER).map(HeaderValue::as_bytes),
            Some(RETRY_AFTER_SECS.to_string().as_bytes())
        );
        let (_, headers, _) = render(
            ApiError::unauthorized("missing_token", "send a token").with_challenge("Bearer"),
        )
        .await;
        assert_eq!(
            headers
                .get(header::WWW_AUTHENTICATE)
                .map(HeaderValue::as_bytes),
            Some(&b"Bearer"[..])
        );
    }

    #[tokio::test]
    async fn an_internal_error_says_nothing_of_its_cause() {
        let cause = std::io::Error::other("disk on fire at /var/lib/secret");
        let (status, _, body) = render(ApiError::internal(&cause)).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            body,
            r#"{"error":{"code":"internal","message":"internal error"}}"#
        );
    }
}
