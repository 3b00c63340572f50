//! Reads through intake, for people: the reviewers' queue and records,
//! behind either a bearer token or a reviewer's session, and the console's
//! static files.
//!
//! A reviewer opens a session by signing a fresh challenge with their own
//! key (docs/signatures.md): `POST /v1/sessions/challenge` hands out a
//! single-use challenge valid for a minute; `POST /v1/sessions` with the
//! key id and the Ed25519 signature over [`signed::SESSION_PREFIX`] +
//! challenge + `\n` + key id opens a read-only session (an HttpOnly,
//! SameSite=Strict cookie, also returned in the body for the CLI). A
//! session only reads: every write still needs its own signature or token.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use warrant_authority::{signed, StatusName};

use super::extract::{instance_id as parse_instance_id, parse_json, ApiQuery, RawBody};
use super::{ApiError, AppState};
use crate::ids;
use warrant_runtime::saturating_count;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "warrant_session";
/// How long a challenge may wait to be signed.
pub const CHALLENGE_TTL_MS: i64 = 60_000;
/// How long a session lasts.
pub const SESSION_TTL_MS: i64 = 15 * 60_000;
/// Most open challenges and sessions: an unauthenticated client can ask
/// for challenges, so their number is bounded (oldest dropped first).
pub const MAX_OPEN: usize = 10_000;

/// Open challenges and sessions, in memory: a restart signs everyone out,
/// which costs a reviewer one signature.
#[derive(Debug, Default)]
pub struct Sessions {
    inner: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    challenges: HashMap<String, i64>,
    challenge_order: VecDeque<String>,
    sessions: HashMap<String, Session>,
    session_order: VecDeque<String>,
}

/// A reviewer's read-only session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub principal: String,
    pub roles: Vec<String>,
    pub key_id: String,
    pub expires_at: i64,
}

fn bounded_insert<V>(
    map: &mut HashMap<String, V>,
    order: &mut VecDeque<String>,
    key: String,
    value: V,
) {
    while map.len() >= MAX_OPEN {
        match order.pop_front() {
            Some(old) => {
                map.remove(&old);
            }
            None => break,
        }
    }
    order.push_back(key.clone());
    map.insert(key, value);
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn challenge(&self, now: i64) -> (String, i64) {
        let challenge = format!("{}{}", ids::random_hex(), ids::random_hex());
        let expires_at = now + CHALLENGE_TTL_MS;
        let mut open = self.lock();
        let Open {
            challenges,
            challenge_order,
            ..
        } = &mut *open;
        bounded_insert(challenges, challenge_order, challenge.clone(), expires_at);
        (challenge, expires_at)
    }

    /// Use up a challenge: true if it was open and unexpired.
    fn redeem(&self, challenge: &str, now: i64) -> bool {
        let mut open = self.lock();
        open.challenges
            .remove(challenge)
            .is_some_and(|expires_at| now <= expires_at)
    }

    fn open(&self, session: Session) -> String {
        let token = format!("{}{}", ids::random_hex(), ids::random_hex());
        let mut open = self.lock();
        let Open {
            sessions,
            session_order,
            ..
        } = &mut *open;
        bounded_insert(sessions, session_order, token.clone(), session);
        token
    }

    pub fn get(&self, token: &str, now: i64) -> Option<Session> {
        let open = self.lock();
        open.sessions
            .get(token)
            .filter(|session| now <= session.expires_at)
            .cloned()
    }

    fn close(&self, token: &str) {
        self.lock().sessions.remove(token);
    }
}

/// Who is reading: a bearer-token holder or a reviewer's session.
#[derive(Debug, Clone)]
pub enum Reader {
    Token { principal: String },
    Reviewer(Session),
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find_map(|(key, value)| (key == name).then_some(value))
}

/// Reads are not open to anyone who can reach intake: a bearer token of
/// any kind, or a reviewer's session.
pub fn reader(state: &AppState, headers: &HeaderMap) -> Result<Reader, ApiError> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let token = value
            .to_str()
            .ok()
            .and_then(|text| text.trim().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim());
        return match token.and_then(|t| state.config.snapshot().principals.caller(t).cloned()) {
            Some(caller) => Ok(Reader::Token {
                principal: caller.principal,
            }),
            None => Err(ApiError::unauthorized(
                "invalid_token",
                "the bearer token is not recognised",
            )),
        };
    }
    let now = state.clock.now_millis();
    match cookie(headers, SESSION_COOKIE).and_then(|token| state.sessions.get(token, now)) {
        Some(session) => Ok(Reader::Reviewer(session)),
        None => Err(ApiError::unauthorized(
            "missing_session",
            "reads need a bearer token or a reviewer's session (POST /v1/sessions/challenge, then POST /v1/sessions)",
        )),
    }
}

pub async fn challenge(State(state): State<AppState>) -> Response {
    let (challenge, expires_at) = state.sessions.challenge(state.clock.now_millis());
    (
        StatusCode::CREATED,
        Json(json!({ "challenge": challenge, "expires_at": expires_at })),
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionRequest {
    pub key_id: String,
    pub challenge: String,
    /// Ed25519 over `SESSION_PREFIX + challenge + "\n" + key_id`, hex.
    pub signature: String,
}

/// The bytes a reviewer signs to open a session.
pub fn session_message(challenge: &str, key_id: &str) -> String {
    format!("{}{challenge}\n{key_id}", signed::SESSION_PREFIX)
}

pub async fn open_session(
    State(state): State<AppState>,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let request: SessionRequest = parse_json(&body)?;
    let principals = state.config.snapshot().principals;
    let Some((reviewer, key)) = principals.key(&request.key_id) else {
        return Err(ApiError::unauthorized(
            "unknown_key",
            "that key is not in the reviewer directory",
        ));
    };
    let signature = signed::parse_signature(&request.signature).map_err(|_| {
        ApiError::unauthorized(
            "invalid_signature",
            "signature must be 128 lowercase hex digits",
        )
    })?;
    let verifying =
        signed::parse_public_key(&key.public_key).map_err(|error| ApiError::internal(&error))?;
    let message = session_message(&request.challenge, &key.key_id);
    if signed::verify(&verifying, message.as_bytes(), &signature).is_err() {
        return Err(ApiError::unauthorized(
            "bad_signature",
            "the signature does not verify over the session challenge",
        ));
    }
    let now = state.clock.now_millis();
    // Only after the signature verified, so nobody can burn others' challenges.
    if !state.sessions.redeem(&request.challenge, now) {
        return Err(ApiError::unauthorized(
            "unknown_challenge",
            "the challenge is unknown, used or expired; ask for a new one",
        ));
    }
    let session = Session {
        principal: reviewer.principal.clone(),
        roles: reviewer.roles.clone(),
        key_id: key.key_id.clone(),
        expires_at: now + SESSION_TTL_MS,
    };
    let token = state.sessions.open(session.clone());
    let cookie = format!(
        "{SESSION_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        SESSION_TTL_MS / 1000
    );
    let mut response = (
        StatusCode::CREATED,
        Json(json!({
            "reviewer": { "principal": session.principal, "roles": session.roles },
            "key_id": session.key_id,
            "expires_at": session.expires_at,
            "session": token,
        })),
    )
        .into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    Ok(response)
}

pub async fn whoami(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    match reader(&state, &headers)? {
        Reader::Token { principal } => Ok(Json(json!({ "principal": principal })).into_response()),
        Reader::Reviewer(session) => Ok(Json(json!({
            "reviewer": { "principal": session.principal, "roles": session.roles },
            "key_id": session.key_id,
            "expires_at": session.expires_at,
        }))
        .into_response()),
    }
}

pub async fn close_session(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(token) = cookie(&headers, SESSION_COOKIE) {
        state.sessions.close(token);
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    if let Ok(value) = HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"
    )) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

fn projector_unavailable(error: &crate::projector::ProjectorError) -> ApiError {
    tracing::warn!(error = %crate::error_chain(error), "projector unavailable");
    match error {
        // Which partitions no shard owns is the operator's next step; an
        // unreachable shard's transport error stays in the log.
        crate::projector::ProjectorError::Sharding(reason) => ApiError::unavailable(
            "projector_unavailable",
            format!("the projector is unavailable: {reason}"),
        ),
        _ => ApiError::unavailable("projector_unavailable", "the projector is unavailable"),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordQuery {
    #[serde(default)]
    pub after_seq: Option<String>,
    #[serde(default)]
    pub wait_ms: Option<String>,
}

/// `GET /v1/instances/{id}[?after_seq=N&wait_ms=M]`: the execution record,
/// as the projector has it. With `wait_ms` the projector holds the answer
/// until the record has more than `after_seq` entries (capped at
/// [`crate::projector::MAX_RECORD_WAIT`]), so a caller learns of a decision
/// the moment it is folded. Each caller may hold a bounded share of waits.
pub async fn record(
    State(state): State<AppState>,
    Path(id): Path<String>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    // Credentials first: an anonymous caller learns nothing, not even
    // which parameters exist.
    let caller = match reader(&state, &headers)? {
        Reader::Token { principal } => format!("token:{principal}"),
        Reader::Reviewer(session) => format!("reviewer:{}", session.principal),
    };
    let ApiQuery(query) = ApiQuery::<RecordQuery>::from_uri(&uri)?;
    let instance_id = parse_instance_id(&id)?;
    let after_seq = match query.after_seq.as_deref() {
        None => 0,
        Some(text) => saturating_count("after_seq", text)?,
    };
    let wait = match query.wait_ms.as_deref() {
        None => std::time::Duration::ZERO,
        Some(text) => std::time::Duration::from_millis(saturating_count("wait_ms", text)?),
    };
    let found = if wait.is_zero() {
        state.projector.record(&instance_id).await
    } else {
        let Some(_counted) = state.waits.enter(&caller) else {
            return Err(ApiError::unavailable(
                "too_many_waiters",
                "this caller already holds its share of record waits; retry, or read without wait_ms",
            ));
        };
        state
            .projector
            .wait_record(&instance_id, after_seq, wait)
            .await
    };
    match found {
        Ok(Some(record)) => Ok(Json(record).into_response()),
        Ok(None) => Err(ApiError::not_found(
            "unknown_instance",
            format!("no instance {instance_id} has been proposed"),
        )),
        Err(crate::projector::ProjectorError::Busy { .. }) => Err(ApiError::unavailable(
            "too_many_waiters",
            "every waiter slot is taken; retry, or read without wait_ms",
        )),
        Err(error) => Err(projector_unavailable(&error)),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueQuery {
    #[serde(default)]
    pub status: Option<String>,
    /// Only instances this role may approve or override.
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub after: Option<String>,
    #[serde(default)]
    pub limit: Option<usize>,
}

/// `GET /v1/instances?status=&role=&after=&limit=`: the reviewers' queue,
/// each instance with what a reviewer needs to pick it up (the action, the
/// rule's roles, each approval group and what it still misses, and the
/// deadline), newest statuses from the projector.
pub async fn queue(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<QueueQuery>,
) -> Result<Response, ApiError> {
    reader(&state, &headers)?;
    let status = match query.status.as_deref() {
        None => StatusName::AwaitingDecision,
        Some(text) => StatusName::parse(text).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_status",
                "status must be a status name, e.g. AWAITING_DECISION",
            )
        })?,
    };
    let limit = query.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_limit",
            "limit must be between 1 and 200",
        ));
    }
    let page = state
        .projector
        .list(status, query.after.as_deref(), limit)
        .await
        .map_err(|error| projector_unavailable(&error))?;
    let mut instances = Vec::with_capacity(page.instances.len());
    for summary in page.instances {
        let record = match state.projector.record(&summary.instance_id).await {
            Ok(Some(record)) => record,
            Ok(None) => continue,
            Err(error) => return Err(projector_unavailable(&error)),
        };
        let Some(proposal) = record.proposal else {
            continue;
        };
        let rule = &proposal.rule;
        if let Some(role) = &query.role {
            if !rule.approver_roles.contains(role) && !rule.override_roles.contains(role) {
                continue;
            }
        }
        let approvals: Vec<&str> = record
            .decisions
            .iter()
            .filter(|d| d.outcome == "applied")
            .map(|d| d.reviewer.as_str())
            .collect();
        // Per group: a rule of several groups is met only when each is, so
        // the sum in `rule.approvals_required` does not say who is still
        // needed (two SREs do not make up for the missing security review).
        let groups: Vec<_> = record
            .approval_groups
            .iter()
            .map(|group| {
                json!({
                    "roles": group.roles,
                    "count": group.count,
                    "counted": group.approved_by.len(),
                    "approved_by": group.approved_by,
                    "missing": group.missing,
                })
            })
            .collect();
        instances.push(json!({
            "instance_id": summary.instance_id,
            "status": summary.status,
            "entries": summary.entries,
            "head_hash": summary.head_hash,
            "action": proposal.action,
            "action_digest": proposal.action_digest,
            "proposer": proposal.proposer,
            "proposed_at": proposal.proposed_at,
            "decision_deadline": proposal.decision_deadline,
            "rule": {
                "rule_id": rule.rule_id,
                "approvals_required": rule.approvals_required,
                "approver_roles": rule.approver_roles,
                "override_roles": rule.override_roles,
                "signed_decisions": rule.signed_decisions,
            },
            "decided_by": approvals,
            "approval_groups": groups,
        }));
    }
    Ok(Json(json!({ "instances": instances, "next": page.next })).into_response())
}

/// The reviewers' console: static files compiled into the binary, served
/// with a strict Content-Security-Policy (no inline script, no other
/// origin), so nothing from the log can run as code in a reviewer's page.
pub async fn console_file(path: Option<Path<String>>) -> Response {
    let name = path.map(|Path(name)| name).unwrap_or_default();
    let (body, content_type) = match name.as_str() {
        "" | "index.html" => (CONSOLE_INDEX, "text/html; charset=utf-8"),
        "app.js" => (CONSOLE_APP, "text/javascript; charset=utf-8"),
        "style.css" => (CONSOLE_STYLE, "text/css; charset=utf-8"),
        _ => return ApiError::not_found("no_route", "no such console file").into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CONSOLE_CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

pub const CONSOLE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";
const CONSOLE_INDEX: &str = include_str!("../../console/index.html");
const CONSOLE_APP: &str = include_str!("../../console/app.js");
const CONSOLE_STYLE: &str = include_str!("../../console/style.css");
