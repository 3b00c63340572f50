//! Extractors whose rejections are our JSON errors, never axum's text.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::AppState;
use crate::ids;
use crate::principals::Caller;

/// The longest accepted `Idempotency-Key`.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 200;

fn body_rejection(rejection: BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "the request body exceeds the configured limit (--max-body-bytes)",
        )
    } else {
        ApiError::bad_request("unreadable_body", "the request body could not be read")
    }
}

/// Parse JSON, telling syntax errors from shape errors.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|error| {
        let code = match error.classify() {
            serde_json::error::Category::Data => "invalid_body",
            serde_json::error::Category::Syntax
            | serde_json::error::Category::Eof
            | serde_json::error::Category::Io => "malformed_json",
        };
        ApiError::bad_request(code, error.to_string())
    })
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .map(|mime| {
            let mime = mime.trim().to_ascii_lowercase();
            mime == "application/json"
                || (mime.starts_with("application/") && mime.ends_with("+json"))
        })
        .unwrap_or(false)
}

fn unsupported_media_type() -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        "send the body as Content-Type: application/json",
    )
}

/// The raw body, within the body limit (for signatures).
#[derive(Debug)]
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        Bytes::from_request(request, state)
            .await
            .map(RawBody)
            .map_err(body_rejection)
    }
}

/// A JSON body. Malformed JSON, unknown or missing fields are our 400; a
/// body over the limit our 413; another content type our 415.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(request.headers()) {
            return Err(unsupported_media_type());
        }
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(body_rejection)?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Like [`ApiJson`], but an empty body means `T::default()`.
#[derive(Debug)]
pub struct OptionalJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json = is_json(request.headers());
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(body_rejection)?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(T::default()));
        }
        if !json {
            return Err(unsupported_media_type());
        }
        parse_json(&bytes).map(OptionalJson)
    }
}

/// Query parameters; unknown or malformed ones are our JSON 400, never
/// axum's plain-text rejection.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned> ApiQuery<T> {
    /// Parse the query of `uri` (for handlers that must authenticate first).
    pub fn from_uri(uri: &axum::http::Uri) -> Result<ApiQuery<T>, ApiError> {
        axum::extract::Query::<T>::try_from_uri(uri)
            .map(|axum::extract::Query(value)| ApiQuery(value))
            .map_err(|rejection| ApiError::bad_request("invalid_query", rejection.body_text()))
    }
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| ApiQuery(value))
            .map_err(|rejection| ApiError::bad_request("invalid_query", rejection.body_text()))
    }
}

/// The `{id}` path segment as a canonical instance id.
#[derive(Debug)]
pub struct InstanceId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for InstanceId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(text) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| ApiError::bad_request("invalid_path", rejection.body_text()))?;
        instance_id(&text).map(InstanceId)
    }
}

pub fn instance_id(text: &str) -> Result<String, ApiError> {
    ids::canonical_instance_id(text).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_instance_id",
            format!("{:?} is not a UUID instance id", truncate(text, 80)),
        )
    })
}

/// At most `max` characters of `text`, for error messages.
pub fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

/// The caller of a bearer-token route: `Authorization: Bearer <token>`.
#[derive(Debug)]
pub struct Authenticated(pub Caller);

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let challenge = "Bearer realm=\"warrant\"";
        let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
            return Err(ApiError::unauthorized(
                "missing_token",
                "send Authorization: Bearer <token>",
            )
            .with_challenge(challenge));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|text| {
                let (scheme, token) = text.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .filter(|token| !token.is_empty())
            .ok_or_else(|| {
                ApiError::unauthorized("missing_token", "send Authorization: Bearer <token>")
                    .with_challenge(challenge)
            })?;
        let principals = state.config.snapshot().principals;
        match principals.caller(token) {
            Some(caller) => Ok(Authenticated(caller.clone())),
            None => Err(ApiError::unauthorized(
                "invalid_token",
                "the bearer token is not recognised",
            )
            .with_challenge(challenge)),
        }
    }
}

/// An optional `Idempotency-Key` header: retries carrying the same key get
/// the same event id, so the log records them as duplicates.
#[derive(Debug)]
pub struct IdempotencyKey(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let Some(value) = parts.headers.get("idempotency-key") else {
            return Ok(IdempotencyKey(None));
        };
        let key = value
            .to_str()
            .ok()
            .map(str::trim)
            .filter(|key| {
                !key.is_empty()
                    && key.len() <= MAX_IDEMPOTENCY_KEY_LEN
                    && key.bytes().all(|b| b.is_ascii_graphic())
            })
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_idempotency_key",
                    format!(
                        "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} printable ASCII characters"
                    ),
                )
            })?;
        Ok(IdempotencyKey(Some(key.to_owned())))
    }
}
