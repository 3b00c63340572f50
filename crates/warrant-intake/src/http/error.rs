//! The one error shape every intake response uses:
//! `{"error":{"code","message"}}`, plus `event` when a request did reach the
//! log (a refused claim, a claim the fold has not answered yet).

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

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: Cow<'static, str>,
    pub message: String,
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

    /// A bug on our side. The cause is logged; the body says nothing more.
    pub fn internal(cause: &dyn std::error::Error) -> ApiError {
        tracing::error!(error = %crate::error_chain(cause), "request failed");
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
