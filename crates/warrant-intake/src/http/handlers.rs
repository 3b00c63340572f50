//! The POST endpoints. Each one: authenticate, validate, stamp, append, and
//! answer only after the append was acknowledged.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use warrant_authority::{signed, EntryView, LogPosition, Outcome, RefusalCode};
use warrant_schema::{
    Action, ContextRef, DecisionProof, DecisionRecorded, DecisionVerdict, Envelope, EventBody,
    ExecutionOutcome, ExecutionReported, ExecutionRequested, PolicyRef, ProposalWithdrawn,
    ProposerKind, Reviewer, Scope, SignalVerdict,
};

use super::error::{ApiError, EventRef};
use super::extract::{
    instance_id as parse_instance_id, parse_json, truncate, ApiJson, Authenticated, IdempotencyKey,
    InstanceId, OptionalJson, RawBody,
};
use super::AppState;
use crate::log::{AppendError, Appended};
use crate::metrics::ClaimLabels;
use crate::principals::{Caller, Kind};
use crate::signature::{self, SignatureError};
use crate::{door, ids};

/// `POST /v1/proposals`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProposalRequest {
    /// Client-chosen instance id: retries with the same id are duplicates.
    #[serde(default)]
    pub instance_id: Option<String>,
    pub action: ActionRequest,
    #[serde(default)]
    pub proposer: Option<ProposerRequest>,
    #[serde(default)]
    pub context_refs: Vec<ContextRef>,
    #[serde(default)]
    pub rationale: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionRequest {
    pub kind: String,
    pub target: String,
    #[serde(default)]
    pub parameters: BTreeMap<String, String>,
}

/// Who is behind the service token. The principal is always the
/// authenticated one; naming another is refused.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProposerRequest {
    #[serde(default)]
    pub principal: Option<String>,
    pub kind: ProposerKind,
    #[serde(default)]
    pub model: Option<String>,
}

/// `POST /v1/instances/{id}/signals`. The source is the token's, never the
/// body's; a `source` that differs is refused.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignalRequest {
    pub verdict: SignalVerdict,
    #[serde(default)]
    pub reasons: Vec<String>,
    pub policy_ref: PolicyRef,
    #[serde(default)]
    pub source: Option<String>,
}

/// `POST /v1/instances/{id}/decisions`. The reviewer is whoever's key
/// signed; `instance_id` must repeat the path's, so a signed body cannot be
/// replayed against another instance.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionRequest {
    pub instance_id: String,
    pub verdict: DecisionVerdict,
    #[serde(default)]
    pub justification: String,
    #[serde(default)]
    pub scope: ScopeRequest,
    #[serde(default)]
    pub evidence_refs: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopeRequest {
    #[serde(default)]
    pub constraints: BTreeMap<String, String>,
    #[serde(default)]
    pub not_after: Option<i64>,
    #[serde(default)]
    pub max_executions: Option<i32>,
}

/// `POST /v1/instances/{id}/executions`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimRequest {
    pub action_digest: String,
}

/// `POST /v1/instances/{id}/reports`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportRequest {
    pub grant_id: String,
    pub outcome: ExecutionOutcome,
    #[serde(default)]
    pub detail: Option<String>,
    #[serde(default)]
    pub result_digest: Option<String>,
}

/// `POST /v1/instances/{id}/withdrawal`; the body may be empty.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WithdrawalRequest {
    #[serde(default)]
    pub reason: Option<String>,
}

fn require(caller: &Caller, kind: Kind, what: &str) -> Result<(), ApiError> {
    if caller.kind == kind {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "wrong_principal_kind",
            format!(
                "{} is a {} principal; only {} principals may {what}",
                caller.principal,
                caller.kind.as_str(),
                kind.as_str()
            ),
        ))
    }
}

/// The event id of a request: derived from its `Idempotency-Key` when
/// given, so a retry is a recorded duplicate; random otherwise.
fn event_id_for(
    instance_id: &str,
    endpoint: &str,
    caller: &Caller,
    key: &Option<String>,
) -> String {
    match key {
        Some(key) => ids::idempotent_event_id(instance_id, endpoint, &caller.principal, key),
        None => ids::random(),
    }
}

/// Append and map failures: Kafka unavailable is a 503 with `Retry-After`.
async fn append(state: &AppState, envelope: &Envelope) -> Result<Appended, ApiError> {
    let kind = envelope.body.kind();
    match state.log.append(envelope).await {
        Ok(appended) => {
            state.metrics.append("http", kind, true);
            Ok(appended)
        }
        Err(AppendError::Encode(error)) => {
            state.metrics.append("http", kind, false);
            Err(ApiError::internal(&error))
        }
        Err(error) => {
            state.metrics.append("http", kind, false);
            tracing::warn!(
                instance_id = %envelope.instance_id,
                event_id = %envelope.event_id,
                event = kind,
                error = %crate::error_chain(&error),
                "append not acknowledged"
            );
            Err(ApiError::unavailable(
                "log_unavailable",
                "the log did not acknowledge the event in time; retry (an Idempotency-Key, or a proposal's instance_id, makes the retry a recorded duplicate if the first attempt did land)",
            ))
        }
    }
}

/// 404 unless the projector (or this intake, moments ago) knows the instance.
/// A proposed instance stays proposed, so a positive answer is remembered
/// and the projector is asked about each instance at most once while it is
/// in that memory; a negative one is not (the proposal may be in flight).
async fn ensure_known(state: &AppState, instance_id: &str) -> Result<(), ApiError> {
    if state.recent.contains(instance_id) {
        return Ok(());
    }
    match state.projector.facts(instance_id).await {
        Ok(Some(facts)) if facts.status.is_some() => {
            state.recent.insert(instance_id);
            Ok(())
        }
        Ok(_) => Err(ApiError::not_found(
            "unknown_instance",
            format!("no instance {instance_id} has been proposed"),
        )),
        Err(error) => {
            tracing::warn!(instance_id, error = %crate::error_chain(&error), "projector unavailable");
            Err(ApiError::unavailable(
                "projector_unavailable",
                "cannot look the instance up: the projector is unavailable",
            ))
        }
    }
}

fn envelope(
    state: &AppState,
    instance_id: &str,
    event_id: String,
    submitted_by: &str,
    body: EventBody,
) -> Envelope {
    Envelope {
        event_id,
        instance_id: instance_id.to_owned(),
        recorded_at: state.clock.now_millis(),
        submitted_by: submitted_by.to_owned(),
        body,
    }
}

fn accepted(envelope: &Envelope, appended: Appended, mut extra: serde_json::Value) -> Response {
    let mut body = json!({
        "instance_id": envelope.instance_id,
        "event_id": envelope.event_id,
        "partition": appended.partition,
        "offset": appended.offset,
    });
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object_mut()) {
        body.append(extra);
    }
    (StatusCode::ACCEPTED, Json(body)).into_response()
}

/// Map the door's refusal to the HTTP answer: naming someone else is a
/// 403, everything else a 400 naming the field.
fn invalid(error: door::Invalid) -> ApiError {
    let code = error.code();
    match error {
        door::Invalid::NotYours { .. } => ApiError::forbidden(code, error.to_string()),
        door::Invalid::InstanceId(_) | door::Invalid::Field { .. } | door::Invalid::Action(_) => {
            ApiError::bad_request(code, error.to_string())
        }
    }
}

pub async fn propose(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    IdempotencyKey(key): IdempotencyKey,
    ApiJson(request): ApiJson<ProposalRequest>,
) -> Result<Response, ApiError> {
    require(&caller, Kind::Service, "propose actions")?;
    // A chosen or derived id may already be someone's instance; a random
    // one cannot be.
    let (instance_id, chosen) = match (&request.instance_id, &key) {
        (Some(text), _) => (door::chosen_instance_id(text).map_err(invalid)?, true),
        (None, Some(key)) => (ids::idempotent_instance_id(&caller.principal, key), true),
        (None, None) => (ids::random(), false),
    };
    let (claimed_principal, kind, model) = match request.proposer {
        None => (None, ProposerKind::Service, None),
        Some(proposer) => (proposer.principal, proposer.kind, proposer.model),
    };
    let draft = door::ProposalDraft {
        action: Action {
            kind: request.action.kind,
            target: request.action.target,
            parameters: request.action.parameters,
        },
        claimed_principal,
        kind,
        model,
        context_refs: request.context_refs,
        rationale: request.rationale,
    };
    let stamp = door::Stamp {
        event_id: ids::proposal_event_id(&instance_id),
        instance_id: instance_id.clone(),
        submitted_by: caller.principal.clone(),
        recorded_at: state.clock.now_millis(),
    };
    let snapshot = state.config.snapshot();
    let ruleset = &snapshot.ruleset.ruleset;
    let envelope = door::proposal(stamp, &caller.principal, draft, ruleset).map_err(invalid)?;
    let EventBody::ActionProposed(proposed) = &envelope.body else {
        return Err(ApiError::internal(&door::Invalid::Field {
            field: "body",
            problem: "the door built no proposal".to_owned(),
        }));
    };
    let digest = proposed.action_digest.clone();
    let rule_id = proposed.requirement.rule_id.clone();
    if chosen {
        if let Some(existing) = proposed_record(&state, &instance_id).await? {
            return answer_existing(&existing, &caller, &digest);
        }
    }
    let appended = append(&state, &envelope).await?;
    state.recent.insert(&instance_id);
    if chosen {
        // Another proposal for this id may have landed first (two intakes,
        // or a projector that had not folded it yet): the fold's entry says
        // whether this one started the instance.
        let position = LogPosition {
            partition: appended.partition,
            offset: appended.offset,
        };
        let deadline = Instant::now() + state.options.claim_timeout;
        let event = EventRef {
            event_id: envelope.event_id.clone(),
            partition: appended.partition,
            offset: appended.offset,
        };
        let entry = await_entry(&state, &instance_id, position, deadline)
            .await
            .map_err(|error| error.with_event(event.clone()))?;
        if !matches!(entry.outcome, Outcome::Applied { from: None, .. }) {
            return match proposed_record(&state, &instance_id).await? {
                Some(existing) => answer_existing(&existing, &caller, &digest),
                None => Err(ApiError::unavailable(
                    "fold_pending",
                    "the proposal is on the log but the projector does not show the instance yet; retry",
                )
                .with_event(event)),
            };
        }
    }
    Ok(accepted(
        &envelope,
        appended,
        json!({
            "action_digest": digest,
            "rule_id": rule_id,
            "ruleset": ruleset.reference(),
        }),
    ))
}

/// The record of `instance_id` if something was proposed under it.
async fn proposed_record(
    state: &AppState,
    instance_id: &str,
) -> Result<Option<warrant_authority::ExecutionRecord>, ApiError> {
    match state.projector.record(instance_id).await {
        Ok(Some(record)) if record.proposal.is_some() => Ok(Some(record)),
        Ok(_) => Ok(None),
        Err(error) => {
            tracing::warn!(instance_id, error = %crate::error_chain(&error), "projector unavailable");
            Err(ApiError::unavailable(
                "projector_unavailable",
                "cannot tell whether this instance id is taken: the projector is unavailable",
            ))
        }
    }
}

/// Answer a proposal for an instance that already exists from what the
/// log holds: the original, for a true retry by the same proposer of the
/// same action; 409 for anyone or anything else, without saying whose.
fn answer_existing(
    record: &warrant_authority::ExecutionRecord,
    caller: &Caller,
    digest: &str,
) -> Result<Response, ApiError> {
    let original = record.proposal.as_ref().filter(|proposal| {
        proposal.submitted_by == caller.principal && proposal.action_digest == digest
    });
    let first = record
        .history
        .iter()
        .find(|entry| matches!(entry.outcome, Outcome::Applied { from: None, .. }));
    match (original, first) {
        (Some(proposal), Some(first)) => {
            let body = json!({
                "instance_id": record.instance_id,
                "event_id": first.event_id,
                "partition": first.position.partition,
                "offset": first.position.offset,
                "action_digest": proposal.action_digest,
                "rule_id": proposal.rule.rule_id,
                "ruleset": proposal.ruleset,
            });
            Ok((StatusCode::ACCEPTED, Json(body)).into_response())
        }
        (Some(_), None) | (None, _) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "instance_exists",
            format!(
                "instance {} was already proposed, by another principal or for another action",
                record.instance_id
            ),
        )),
    }
}

pub async fn signal(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    InstanceId(instance_id): InstanceId,
    IdempotencyKey(key): IdempotencyKey,
    ApiJson(request): ApiJson<SignalRequest>,
) -> Result<Response, ApiError> {
    require(&caller, Kind::Policy, "report policy signals")?;
    // Loading guarantees a policy token has a source.
    let source = caller
        .source
        .clone()
        .unwrap_or_else(|| caller.principal.clone());
    let stamp = door::Stamp {
        event_id: event_id_for(&instance_id, "signals", &caller, &key),
        instance_id: instance_id.clone(),
        submitted_by: caller.principal.clone(),
        recorded_at: state.clock.now_millis(),
    };
    let envelope = door::signal(
        stamp,
        &source,
        door::SignalDraft {
            claimed_source: request.source,
            verdict: request.verdict,
            reasons: request.reasons,
            policy_ref: request.policy_ref,
        },
    )
    .map_err(invalid)?;
    ensure_known(&state, &instance_id).await?;
    let appended = append(&state, &envelope).await?;
    Ok(accepted(&envelope, appended, json!({ "source": source })))
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    // A header that is not visible ASCII is present but can never be valid.
    headers
        .get(name)
        .map(|value| value.to_str().unwrap_or("\u{fffd}"))
}

fn signature_error(error: SignatureError) -> ApiError {
    let code = match error {
        SignatureError::MissingTimestamp => "missing_timestamp",
        SignatureError::BadTimestamp => "invalid_timestamp",
        SignatureError::Stale { .. } => "stale_timestamp",
        SignatureError::MissingSignature => "missing_signature",
        SignatureError::BadSignatureFormat => "invalid_signature",
    };
    ApiError::unauthorized(code, error.to_string())
}

pub async fn decide(
    State(state): State<AppState>,
    InstanceId(instance_id): InstanceId,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let now_secs = state.clock.now_millis().div_euclid(1000);
    let timestamp =
        signature::check_timestamp(header(&headers, signature::TIMESTAMP_HEADER), now_secs)
            .map_err(signature_error)?;
    if let Some(signed) = header(&headers, signature::SIGNATURE_HEADER)
        .and_then(|value| value.trim().strip_prefix(signature::ED25519_PREFIX))
    {
        return decide_signed(&state, &instance_id, timestamp, signed, &body).await;
    }
    let tags = signature::parse_signatures(header(&headers, signature::SIGNATURE_HEADER))
        .map_err(signature_error)?;
    let principals = state.config.snapshot().principals;
    let named = header(&headers, signature::REVIEWER_HEADER);
    if let Some(name) = named {
        if principals.reviewer(name).is_none() {
            return Err(ApiError::forbidden(
                "unknown_reviewer",
                format!("{:?} is not in the reviewer directory", truncate(name, 80)),
            ));
        }
    }
    let message = signature::signed_message(timestamp, &body);
    let Some((reviewer, _tag)) = principals.signer(&message, &tags, named) else {
        return Err(ApiError::unauthorized(
            "bad_signature",
            "the signature matches no reviewer key",
        ));
    };
    let request: DecisionRequest = parse_json(&body)?;
    if parse_instance_id(&request.instance_id)? != instance_id {
        return Err(ApiError::bad_request(
            "instance_mismatch",
            "the signed body's instance_id differs from the instance in the path",
        ));
    }
    check_scope(&request.scope.max_executions, &request.scope.not_after)?;
    check_decision_text(
        request.verdict,
        &request.justification,
        request.scope.constraints.keys(),
    )?;
    ensure_known(&state, &instance_id).await?;
    let event_id = ids::decision_event_id(&instance_id, &reviewer.principal, timestamp, &body);
    let recorded = Reviewer {
        principal: reviewer.principal.clone(),
        roles: reviewer.roles.clone(),
    };
    let envelope = envelope(
        &state,
        &instance_id,
        event_id,
        &format!("reviewer:{}", reviewer.principal),
        EventBody::DecisionRecorded(DecisionRecorded {
            reviewer: recorded.clone(),
            verdict: request.verdict,
            justification: request.justification,
            scope: Scope {
                constraints: request.scope.constraints,
                not_after: request.scope.not_after,
                max_executions: request.scope.max_executions,
            },
            evidence_refs: request.evidence_refs,
            proof: None,
        }),
    );
    let appended = append(&state, &envelope).await?;
    Ok(accepted(
        &envelope,
        appended,
        json!({ "reviewer": recorded }),
    ))
}

/// A decision signed with the reviewer's own key: `X-Warrant-Signature:
/// ed25519=<hex>` over [`signed::DECISION_PREFIX`] followed by the raw
/// body, which is the [`signed::SignedDecision`] itself. The reviewer is
/// whoever holds the named key; nothing is appended unless the signature
/// verifies, the timestamps agree, and the digest signed is the instance's.
/// The exact bytes and the signature go on the log, so the fold (and every
/// replay) verifies them again without trusting intake.
async fn decide_signed(
    state: &AppState,
    instance_id: &str,
    timestamp: &str,
    signature_hex: &str,
    body: &[u8],
) -> Result<Response, ApiError> {
    let unauthorized = |code: &'static str, message: String| ApiError::unauthorized(code, message);
    let signature = signed::parse_signature(signature_hex).map_err(|_| {
        unauthorized(
            "invalid_signature",
            "X-Warrant-Signature must be ed25519=<128 lowercase hex digits>".to_owned(),
        )
    })?;
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::bad_request("malformed_json", "the signed body is not UTF-8"))?;
    let decision: signed::SignedDecision = parse_json(body)?;
    let principals = state.config.snapshot().principals;
    let Some((reviewer, key)) = principals.key(&decision.key_id) else {
        return Err(unauthorized(
            "unknown_key",
            format!(
                "key {:?} is not in the reviewer directory",
                truncate(&decision.key_id, 40)
            ),
        ));
    };
    let payload = format!("{}{text}", signed::DECISION_PREFIX);
    let verifying =
        signed::parse_public_key(&key.public_key).map_err(|error| ApiError::internal(&error))?;
    if signed::verify(&verifying, payload.as_bytes(), &signature).is_err() {
        return Err(unauthorized(
            "bad_signature",
            format!(
                "the signature does not verify with key {} over the prefix and the body",
                key.key_id
            ),
        ));
    }
    if decision.timestamp.to_string() != timestamp {
        return Err(unauthorized(
            "stale_timestamp",
            "the signed timestamp differs from X-Warrant-Timestamp".to_owned(),
        ));
    }
    if parse_instance_id(&decision.instance_id)? != instance_id {
        return Err(ApiError::bad_request(
            "instance_mismatch",
            "the signed body's instance_id differs from the instance in the path",
        ));
    }
    check_scope(&decision.scope.max_executions, &decision.scope.not_after)?;
    check_decision_text(
        decision.verdict,
        &decision.justification,
        decision.scope.constraints.keys(),
    )?;
    let facts = match state.projector.facts(instance_id).await {
        Ok(Some(facts)) => facts,
        Ok(None) => {
            return Err(ApiError::not_found(
                "unknown_instance",
                format!("no instance {instance_id} has been proposed"),
            ))
        }
        Err(error) => {
            tracing::warn!(instance_id, error = %crate::error_chain(&error), "projector unavailable");
            return Err(ApiError::unavailable(
                "projector_unavailable",
                "cannot check the signed action digest: the projector is unavailable",
            ));
        }
    };
    let Some(proposed_digest) = facts.action_digest.as_deref() else {
        return Err(ApiError::not_found(
            "unknown_instance",
            format!("no instance {instance_id} has been proposed"),
        ));
    };
    if proposed_digest != decision.action_digest {
        return Err(unauthorized(
            "digest_mismatch",
            format!(
                "the decision was signed over action digest {} but instance {instance_id} proposes {}",
                truncate(&decision.action_digest, 64),
                proposed_digest
            ),
        ));
    }
    let recorded = Reviewer {
        principal: reviewer.principal.clone(),
        roles: reviewer.roles.clone(),
    };
    let envelope = envelope(
        state,
        instance_id,
        ids::decision_event_id(instance_id, &reviewer.principal, timestamp, body),
        &format!("reviewer:{}", reviewer.principal),
        EventBody::DecisionRecorded(DecisionRecorded {
            reviewer: recorded.clone(),
            verdict: decision.verdict,
            justification: decision.justification.clone(),
            scope: decision.scope.to_scope(),
            evidence_refs: decision.evidence_refs.clone(),
            proof: Some(DecisionProof {
                scheme: signed::ED25519.to_owned(),
                key_id: key.key_id.clone(),
                public_key: key.public_key.clone(),
                signed_payload: payload,
                signature: signature_hex.to_owned(),
            }),
        }),
    );
    let appended = append(state, &envelope).await?;
    Ok(accepted(
        &envelope,
        appended,
        json!({ "reviewer": recorded, "attestation": "SIGNED_BY_REVIEWER", "key_id": key.key_id }),
    ))
}

/// Constraint keys follow the canonical text rules (so `region` and
/// `region\u{200b}` cannot be two constraints that never conflict), and an
/// override's justification must hold something a person can read.
fn check_decision_text<'a>(
    verdict: DecisionVerdict,
    justification: &str,
    constraint_keys: impl Iterator<Item = &'a String>,
) -> Result<(), ApiError> {
    for key in constraint_keys {
        warrant_authority::check_text(key).map_err(|problem| {
            ApiError::bad_request(
                "invalid_field",
                format!("scope.constraints key {:?} {problem}", truncate(key, 40)),
            )
        })?;
    }
    if verdict == DecisionVerdict::Override && !warrant_authority::is_visible_text(justification) {
        return Err(ApiError::bad_request(
            "justification_required",
            "an override needs a justification a person can read",
        ));
    }
    Ok(())
}

fn check_scope(max_executions: &Option<i32>, not_after: &Option<i64>) -> Result<(), ApiError> {
    if max_executions.is_some_and(|max| max < 1) {
        return Err(ApiError::bad_request(
            "invalid_field",
            "scope.max_executions must be at least 1",
        ));
    }
    if not_after.is_some_and(|at| at < 0) {
        return Err(ApiError::bad_request(
            "invalid_field",
            "scope.not_after must be unix milliseconds",
        ));
    }
    Ok(())
}

fn lowercase_digest(text: &str) -> Result<String, ApiError> {
    if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(text.to_ascii_lowercase())
    } else {
        Err(ApiError::bad_request(
            "invalid_field",
            "action_digest must be the 64 hex digits of a SHA-256",
        ))
    }
}

pub async fn claim(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    InstanceId(instance_id): InstanceId,
    IdempotencyKey(key): IdempotencyKey,
    ApiJson(request): ApiJson<ClaimRequest>,
) -> Result<Response, ApiError> {
    require(&caller, Kind::Executor, "ask to execute")?;
    let digest = lowercase_digest(&request.action_digest)?;
    ensure_known(&state, &instance_id).await?;
    let event_id = event_id_for(&instance_id, "executions", &caller, &key);
    let envelope = envelope(
        &state,
        &instance_id,
        event_id.clone(),
        &caller.principal,
        EventBody::ExecutionRequested(ExecutionRequested {
            executor: caller.principal.clone(),
            action_digest: digest,
        }),
    );
    let appended = append(&state, &envelope).await?;
    let event = EventRef {
        event_id: event_id.clone(),
        partition: appended.partition,
        offset: appended.offset,
    };
    let position = LogPosition {
        partition: appended.partition,
        offset: appended.offset,
    };
    let deadline = Instant::now() + state.options.claim_timeout;
    let entry = match await_entry(&state, &instance_id, position, deadline).await {
        Ok(entry) => entry,
        Err(error) => {
            count_claim(&state, "timeout");
            return Err(error.with_event(event));
        }
    };
    if entry.event_id.as_deref() != Some(event_id.as_str()) {
        tracing::error!(
            instance_id = %instance_id,
            partition = position.partition,
            offset = position.offset,
            expected = %event_id,
            found = ?entry.event_id,
            "the projector's entry at this position is another event"
        );
        count_claim(&state, "mismatch");
        return Err(ApiError::unavailable(
            "projector_inconsistent",
            "the projector's entry at the request's log position is another event",
        )
        .with_event(event));
    }
    let mut outcome = entry.outcome;
    if key.is_some() && outcome.refusal() == Some(RefusalCode::Duplicate) {
        // A retry: answer what the fold made of the first attempt, but only
        // if that attempt was this caller's. Ids are derived so that two
        // executors never share one; this check keeps it true if they did.
        if let Some(first) = first_entry(&state, &instance_id, &event_id, entry.seq).await {
            if first.submitted_by.as_deref() == Some(caller.principal.as_str()) {
                outcome = first.outcome;
            } else {
                tracing::error!(
                    instance_id = %instance_id,
                    event_id = %event_id,
                    caller = %caller.principal,
                    "an idempotent claim matched another principal's event; no grant is handed over"
                );
            }
        }
    }
    answer_claim(&state, &instance_id, event, outcome)
}

/// Wait for the fold's entry at `position`, asking the projector until the
/// deadline. The request stays on the log either way: the fold decides it.
async fn await_entry(
    state: &AppState,
    instance_id: &str,
    position: LogPosition,
    deadline: Instant,
) -> Result<EntryView, ApiError> {
    let mut unreachable = false;
    loop {
        let asked = Instant::now();
        let remaining = deadline.saturating_duration_since(asked);
        if remaining.is_zero() {
            return Err(if unreachable {
                ApiError::unavailable(
                    "projector_unavailable",
                    "the request is on the log but the projector could not be asked for the fold's answer; the fold still decides it",
                )
            } else {
                ApiError::unavailable(
                    "fold_pending",
                    format!(
                        "the fold has not answered within {} ms; the request is on the log and the fold still decides it",
                        state.options.claim_timeout.as_millis()
                    ),
                )
            });
        }
        match state
            .projector
            .entry(instance_id, position, remaining)
            .await
        {
            Ok(Some(entry)) => return Ok(entry),
            Ok(None) => {
                unreachable = false;
                // A projector that answers "not yet" at once must not be hammered.
                if asked.elapsed() < Duration::from_millis(50) {
                    tokio::time::sleep(remaining.min(Duration::from_millis(100))).await;
                }
            }
            Err(error) => {
                unreachable = true;
                tracing::warn!(instance_id, error = %crate::error_chain(&error), "cannot ask the projector");
                tokio::time::sleep(remaining.min(Duration::from_millis(200))).await;
            }
        }
    }
}

/// The first entry of `event_id` in the instance's history, before `seq`.
async fn first_entry(
    state: &AppState,
    instance_id: &str,
    event_id: &str,
    seq: u64,
) -> Option<EntryView> {
    let record = state.projector.record(instance_id).await.ok()??;
    record
        .history
        .into_iter()
        .find(|entry| entry.seq < seq && entry.event_id.as_deref() == Some(event_id))
}

fn count_claim(state: &AppState, answer: &str) {
    state
        .metrics
        .claims
        .get_or_create(&ClaimLabels {
            answer: answer.to_owned(),
        })
        .inc();
}

fn answer_claim(
    state: &AppState,
    instance_id: &str,
    event: EventRef,
    outcome: Outcome,
) -> Result<Response, ApiError> {
    if let Some(grant) = outcome.grant() {
        count_claim(state, "granted");
        let body = json!({
            "instance_id": instance_id,
            "grant_id": grant.grant_id,
            "action_digest": grant.action_digest,
            "scope": grant.scope,
            "not_after": grant.not_after,
            "event_id": event.event_id,
            "partition": event.partition,
            "offset": event.offset,
        });
        return Ok((StatusCode::CREATED, Json(body)).into_response());
    }
    let (code, message) = match outcome {
        Outcome::Refused { code, reason } => (code.as_str(), reason),
        Outcome::Violation { violation, reason } => (violation.as_str(), reason),
        Outcome::Applied { to, .. } => (
            "NotGranted",
            format!("the request was recorded ({to}) but no grant was issued"),
        ),
    };
    count_claim(state, code);
    Err(ApiError::new(StatusCode::CONFLICT, code, message).with_event(event))
}

pub async fn report(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    InstanceId(instance_id): InstanceId,
    IdempotencyKey(key): IdempotencyKey,
    ApiJson(request): ApiJson<ReportRequest>,
) -> Result<Response, ApiError> {
    require(&caller, Kind::Executor, "report executions")?;
    let grant_id = ids::canonical_instance_id(&request.grant_id).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_grant_id",
            format!(
                "{:?} is not a UUID grant id",
                truncate(&request.grant_id, 80)
            ),
        )
    })?;
    ensure_known(&state, &instance_id).await?;
    let event_id = event_id_for(&instance_id, "reports", &caller, &key);
    let envelope = envelope(
        &state,
        &instance_id,
        event_id,
        &caller.principal,
        EventBody::ExecutionReported(ExecutionReported {
            grant_id,
            outcome: request.outcome,
            detail: request.detail,
            result_digest: request.result_digest,
        }),
    );
    let appended = append(&state, &envelope).await?;
    Ok(accepted(&envelope, appended, json!({})))
}

pub async fn withdraw(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    InstanceId(instance_id): InstanceId,
    IdempotencyKey(key): IdempotencyKey,
    OptionalJson(request): OptionalJson<WithdrawalRequest>,
) -> Result<Response, ApiError> {
    require(&caller, Kind::Service, "withdraw proposals")?;
    ensure_known(&state, &instance_id).await?;
    let event_id = event_id_for(&instance_id, "withdrawal", &caller, &key);
    let envelope = envelope(
        &state,
        &instance_id,
        event_id,
        &caller.principal,
        EventBody::ProposalWithdrawn(ProposalWithdrawn {
            reason: request.reason,
        }),
    );
    let appended = append(&state, &envelope).await?;
    Ok(accepted(&envelope, appended, json!({})))
}
