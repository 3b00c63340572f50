//! The HTTP API through `Router::oneshot`: no socket, no broker. The log is
//! a stub that keeps what was appended; the projector folds that stub log
//! with the real fold, so claims are answered exactly as in production.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;
use warrant_authority::{
    EntryView, ExecutionRecord, InstanceFacts, Ledger, LogPosition, RefusalCode, StatusName,
};
use warrant_schema::{Envelope, EventBody};

use super::*;
use crate::config::{LoadedRuleset, Shared};
use crate::log::{AppendError, Appended, BoxFuture, LogAppender};
use crate::principals::Principals;
use crate::projector::{
    parse_cursor, DeadlinePage, DueDeadline, InstanceSummary, Page, Projector, ProjectorError,
};
use crate::signature;

pub(crate) const SERVICE: &str = "example-service-remediator-token-0001";
pub(crate) const POLICY: &str = "example-policy-opa-token-0001";
pub(crate) const EXECUTOR: &str = "example-executor-deployer-token-0001";
pub(crate) const ALICE: &str = "example-alice-secret-2026-10";
const ALICE_NEW: &str = "example-alice-secret-2026-11";
pub(crate) const BOB: &str = "example-bob-secret-2026-11";
const CAROL: &str = "example-carol-secret-2026-11";
pub(crate) const NOW_MS: i64 = 1_800_000_000_000;
pub(crate) const INSTANCE: &str = "6f1c2b9e-4d0a-4c7e-9a51-0d2f3b8c7e11";

/// The log: every appended record, in order, on partition 0.
#[derive(Default)]
pub(crate) struct StubLog {
    records: Mutex<Vec<(String, Vec<u8>)>>,
    down: AtomicBool,
}

impl StubLog {
    fn envelopes(&self) -> Vec<Envelope> {
        self.records
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(_, bytes)| warrant_schema::decode(bytes).expect("intake wrote a valid envelope"))
            .collect()
    }

    pub(crate) fn ledger(&self) -> Ledger {
        self.ledger_upto(usize::MAX)
    }

    fn ledger_upto(&self, visible: usize) -> Ledger {
        let mut ledger = Ledger::new();
        for (offset, (key, bytes)) in self
            .records
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .take(visible)
            .enumerate()
        {
            let position = LogPosition {
                partition: 0,
                offset: offset as i64,
            };
            ledger.apply(position, Some(key.as_bytes()), bytes);
        }
        ledger
    }

    pub(crate) fn len(&self) -> usize {
        self.records
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl LogAppender for StubLog {
    fn append<'a>(
        &'a self,
        envelope: &'a Envelope,
    ) -> BoxFuture<'a, Result<Appended, AppendError>> {
        Box::pin(async move {
            if self.down.load(Ordering::SeqCst) {
                return Err(AppendError::Timeout {
                    topic: "warrant.log".to_owned(),
                    timeout_ms: 5,
                });
            }
            let bytes = warrant_schema::encode(envelope).map_err(AppendError::Encode)?;
            let mut records = self.records.lock().unwrap_or_else(PoisonError::into_inner);
            records.push((envelope.instance_id.clone(), bytes));
            Ok(Appended {
                partition: 0,
                offset: records.len() as i64 - 1,
            })
        })
    }
}

/// The projector: the real fold over the stub log.
pub(crate) struct FoldingProjector {
    log: Arc<StubLog>,
    pub(crate) down: AtomicBool,
    /// Answers record waits as if every waiter slot were taken.
    pub(crate) busy: AtomicBool,
    /// Never reaches new positions (a projector that fell behind).
    lagging: AtomicBool,
    /// Sees only this many records of the log (a projector that lags).
    visible: Mutex<Option<usize>>,
    /// How many times intake asked for an instance's facts.
    pub(crate) facts_asked: AtomicUsize,
    /// How many pages of due deadlines were asked for.
    pub(crate) due_asked: AtomicUsize,
}

fn unreachable_projector() -> ProjectorError {
    ProjectorError::Status {
        url: "http://projector.invalid".to_owned(),
        status: 502,
    }
}

impl FoldingProjector {
    pub(crate) fn ledger(&self) -> Ledger {
        let visible = *self.visible.lock().unwrap_or_else(PoisonError::into_inner);
        self.log.ledger_upto(visible.unwrap_or(usize::MAX))
    }

    pub(crate) fn record_of(&self, instance_id: &str) -> Option<ExecutionRecord> {
        self.ledger().get(instance_id).map(|folded| folded.record())
    }

    /// Stop seeing new records (`Some(n)`: only the first n) or catch up (`None`).
    pub(crate) fn freeze(&self, visible: Option<usize>) {
        *self.visible.lock().unwrap_or_else(PoisonError::into_inner) = visible;
    }
}

impl Projector for FoldingProjector {
    fn record<'a>(
        &'a self,
        instance_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<ExecutionRecord>, ProjectorError>> {
        Box::pin(async move {
            if self.down.load(Ordering::SeqCst) {
                return Err(unreachable_projector());
            }
            Ok(self.record_of(instance_id))
        })
    }

    fn facts<'a>(
        &'a self,
        instance_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<InstanceFacts>, ProjectorError>> {
        Box::pin(async move {
            if self.down.load(Ordering::SeqCst) {
                return Err(unreachable_projector());
            }
            self.facts_asked.fetch_add(1, Ordering::SeqCst);
            Ok(self
                .ledger()
                .get(instance_id)
                .map(|folded| InstanceFacts::of(&folded.state)))
        })
    }

    fn wait_record<'a>(
        &'a self,
        instance_id: &'a str,
        after_seq: u64,
        wait: Duration,
    ) -> BoxFuture<'a, Result<Option<ExecutionRecord>, ProjectorError>> {
        Box::pin(async move {
            // The stub has no commit signal to wait on: poll its ledger.
            let deadline = tokio::time::Instant::now() + wait;
            loop {
                if self.down.load(Ordering::SeqCst) {
                    return Err(unreachable_projector());
                }
                if self.busy.load(Ordering::SeqCst) {
                    return Err(ProjectorError::Busy {
                        url: "http://projector.invalid".to_owned(),
                    });
                }
                let record = self.record_of(instance_id);
                let entries = record.as_ref().map_or(0, |r| r.history.len() as u64);
                if entries > after_seq || tokio::time::Instant::now() >= deadline {
                    return Ok(record);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    }

    fn entry<'a>(
        &'a self,
        instance_id: &'a str,
        position: LogPosition,
        wait: Duration,
    ) -> BoxFuture<'a, Result<Option<EntryView>, ProjectorError>> {
        Box::pin(async move {
            if self.down.load(Ordering::SeqCst) {
                return Err(unreachable_projector());
            }
            if self.lagging.load(Ordering::SeqCst) {
                tokio::time::sleep(wait).await;
                return Ok(None);
            }
            Ok(self.record_of(instance_id).and_then(|record| {
                record
                    .history
                    .into_iter()
                    .find(|entry| entry.position == position)
            }))
        })
    }

    fn list<'a>(
        &'a self,
        status: StatusName,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Page, ProjectorError>> {
        Box::pin(async move {
            if self.down.load(Ordering::SeqCst) {
                return Err(unreachable_projector());
            }
            let ledger = self.ledger();
            let mut instances: Vec<InstanceSummary> = ledger
                .instances()
                .filter(|(id, folded)| {
                    folded.state.status() == Some(status) && after.is_none_or(|a| id.as_str() > a)
                })
                .map(|(id, folded)| InstanceSummary {
                    instance_id: id.clone(),
                    status: folded.state.status(),
                    head_hash: Some(folded.state.head.to_string()),
                    entries: folded.state.entries,
                })
                .collect();
            let next = (instances.len() > limit).then(|| instances[limit - 1].instance_id.clone());
            instances.truncate(limit);
            Ok(Page { instances, next })
        })
    }

    /// What the projector's deadline index holds, derived from the folded
    /// states' facts the way the projector derives it.
    fn due<'a>(
        &'a self,
        due_before: i64,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<DeadlinePage, ProjectorError>> {
        Box::pin(async move {
            if self.down.load(Ordering::SeqCst) {
                return Err(unreachable_projector());
            }
            self.due_asked.fetch_add(1, Ordering::SeqCst);
            let after = after.map(|text| parse_cursor(text).expect("a cursor we gave"));
            let mut deadlines: Vec<DueDeadline> = self
                .ledger()
                .instances()
                .filter_map(|(id, folded)| {
                    let facts = InstanceFacts::of(&folded.state);
                    let (deadline, kind) = match facts.status? {
                        StatusName::AwaitingSignals
                        | StatusName::AwaitingDecision
                        | StatusName::Blocked => (
                            facts.decision_deadline?,
                            warrant_schema::DeadlineKind::Decision,
                        ),
                        StatusName::Authorized => {
                            (facts.grant_not_after?, warrant_schema::DeadlineKind::Grant)
                        }
                        _ => return None,
                    };
                    Some(DueDeadline {
                        instance_id: id.clone(),
                        kind,
                        deadline,
                        status: facts.status,
                        entries: facts.entries,
                    })
                })
                .filter(|due| due.deadline <= due_before)
                .filter(|due| after.as_ref().is_none_or(|after| due.key() > *after))
                .collect();
            deadlines.sort_by_key(DueDeadline::key);
            let next = (deadlines.len() > limit).then(|| deadlines[limit - 1].cursor());
            deadlines.truncate(limit);
            Ok(DeadlinePage { deadlines, next })
        })
    }
}

pub(crate) struct Harness {
    pub router: Router,
    pub state: AppState,
    pub log: Arc<StubLog>,
    pub projector: Arc<FoldingProjector>,
    pub clock: Arc<ManualClock>,
}

fn example(name: &str) -> Vec<u8> {
    std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../deploy/examples")
            .join(name),
    )
    .expect("example file")
}

pub(crate) fn harness() -> Harness {
    harness_with(HttpOptions {
        claim_timeout: Duration::from_millis(300),
        max_body_bytes: 4096,
    })
}

pub(crate) fn harness_with(options: HttpOptions) -> Harness {
    let ruleset = LoadedRuleset::parse(example("ruleset.yaml")).expect("example ruleset");
    let principals = Principals::parse(&example("principals.yaml")).expect("example principals");
    let log = Arc::new(StubLog::default());
    let projector = Arc::new(FoldingProjector {
        log: log.clone(),
        down: AtomicBool::new(false),
        busy: AtomicBool::new(false),
        lagging: AtomicBool::new(false),
        visible: Mutex::new(None),
        facts_asked: AtomicUsize::new(0),
        due_asked: AtomicUsize::new(0),
    });
    let clock = Arc::new(ManualClock::at(NOW_MS));
    let state = AppState {
        config: Shared::new(ruleset, principals),
        log: log.clone(),
        projector: projector.clone(),
        metrics: Arc::new(Metrics::new()),
        clock: clock.clone(),
        readiness: Arc::new(Readiness::new(true)),
        // Off, so every lookup goes to the projector.
        recent: Arc::new(RecentInstances::new(0)),
        sessions: Arc::new(Sessions::default()),
        waits: Arc::new(CallerWaits::new(2)),
        options,
    };
    Harness {
        router: router(state.clone()),
        state,
        log,
        projector,
        clock,
    }
}

pub(crate) struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    json: Value,
    text: String,
}

impl Answer {
    fn code(&self) -> &str {
        self.json["error"]["code"]
            .as_str()
            .unwrap_or("<no error code>")
    }

    #[track_caller]
    fn expect(&self, status: StatusCode, code: &str) {
        assert_eq!(
            (self.status, self.code()),
            (status, code),
            "unexpected answer: {}",
            self.text
        );
        assert!(
            self.json["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "no message: {}",
            self.text
        );
        assert_eq!(
            self.headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
            Some("application/json")
        );
    }

    #[track_caller]
    fn ok(&self, status: StatusCode) -> &Value {
        assert_eq!(self.status, status, "unexpected answer: {}", self.text);
        &self.json
    }
}

impl Harness {
    pub(crate) async fn send(&self, request: Request<Body>) -> Answer {
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("the router never fails");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Answer {
            status,
            headers,
            json,
            text,
        }
    }

    pub(crate) async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> Answer {
        self.send(post(path, token, body.to_string())).await
    }

    pub(crate) async fn decide(&self, instance_id: &str, secret: &str, body: &Value) -> Answer {
        let path = format!("/v1/instances/{instance_id}/decisions");
        let timestamp = (self.clock.now_millis() / 1000).to_string();
        self.send(signed(&path, secret, &timestamp, &body.to_string(), None))
            .await
    }

    /// Propose the example restart (2 SRE approvals, OPA required).
    pub(crate) async fn propose_restart(&self, instance_id: &str) -> Value {
        let answer = self
            .post("/v1/proposals", Some(SERVICE), &restart(Some(instance_id)))
            .await;
        answer.ok(StatusCode::ACCEPTED).clone()
    }

    /// Propose, let OPA allow, and get alice's and bob's approvals.
    pub(crate) async fn authorized(&self, instance_id: &str) -> String {
        let proposed = self.propose_restart(instance_id).await;
        let signal = self
            .post(
                &format!("/v1/instances/{instance_id}/signals"),
                Some(POLICY),
                &allow(),
            )
            .await;
        signal.ok(StatusCode::ACCEPTED);
        for secret in [ALICE, BOB] {
            self.decide(instance_id, secret, &approve(instance_id))
                .await
                .ok(StatusCode::ACCEPTED);
        }
        assert_eq!(self.status_of(instance_id), Some(StatusName::Authorized));
        proposed["action_digest"]
            .as_str()
            .expect("digest")
            .to_owned()
    }

    pub(crate) fn status_of(&self, instance_id: &str) -> Option<StatusName> {
        self.log
            .ledger()
            .get(instance_id)
            .and_then(|folded| folded.state.status())
    }

    pub(crate) fn refusals(&self, instance_id: &str) -> Vec<RefusalCode> {
        self.log
            .ledger()
            .get(instance_id)
            .map(|folded| {
                folded
                    .history
                    .iter()
                    .filter_map(|entry| entry.outcome.refusal())
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn post(path: &str, token: Option<&str>, body: String) -> Request<Body> {
    let mut builder = Request::builder()
        .method("POST")
        .uri(path)
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(token) = token {
        builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    builder.body(Body::from(body)).expect("request")
}

fn signed(
    path: &str,
    secret: &str,
    timestamp: &str,
    body: &str,
    reviewer: Option<&str>,
) -> Request<Body> {
    let mut builder = Request::builder()
        .method("POST")
        .uri(path)
        .header(header::CONTENT_TYPE, "application/json")
        .header("X-Warrant-Timestamp", timestamp)
        .header(
            "X-Warrant-Signature",
            signature::header_value(secret.as_bytes(), timestamp, body.as_bytes()),
        );
    if let Some(reviewer) = reviewer {
        builder = builder.header("X-Warrant-Reviewer", reviewer);
    }
    builder.body(Body::from(body.to_owned())).expect("request")
}

fn get(path: &str) -> Request<Body> {
    Request::builder()
        .uri(path)
        .body(Body::empty())
        .expect("request")
}

fn restart(instance_id: Option<&str>) -> Value {
    let mut body = json!({
        "action": {
            "kind": "service.restart",
            "target": "prod/payments/api",
            "parameters": { "reason": "memory leak, p99 > 2s", "strategy": "rolling" }
        },
        "proposer": { "kind": "AGENT", "model": "gpt-x" },
        "context_refs": [{ "uri": "https://grafana.example/d/abc" }],
        "rationale": "heap grows 40 MB/min"
    });
    if let Some(id) = instance_id {
        body["instance_id"] = json!(id);
    }
    body
}

fn allow() -> Value {
    json!({ "verdict": "ALLOW", "reasons": [], "policy_ref": { "id": "restarts.rego", "version": "17" } })
}

fn approve(instance_id: &str) -> Value {
    json!({ "instance_id": instance_id, "verdict": "APPROVE", "justification": "leak confirmed" })
}

pub(crate) fn instance(n: u8) -> String {
    format!("6f1c2b9e-4d0a-4c7e-9a51-0d2f3b8c7e{n:02x}")
}

// ---------------------------------------------------------------- proposals

#[tokio::test]
async fn a_proposal_is_resolved_stamped_and_appended() {
    let h = harness();
    let answer = h.post("/v1/proposals", Some(SERVICE), &restart(None)).await;
    let body = answer.ok(StatusCode::ACCEPTED);
    let instance_id = body["instance_id"].as_str().expect("instance_id");
    assert!(crate::ids::canonical_instance_id(instance_id).as_deref() == Some(instance_id));
    assert_eq!(body["partition"], 0);
    assert_eq!(body["offset"], 0);
    assert_eq!(
        body["action_digest"],
        warrant_schema::samples::ACTION_DIGEST
    );
    assert_eq!(body["rule_id"], "prod-restarts");

    let envelopes = h.log.envelopes();
    assert_eq!(envelopes.len(), 1);
    let envelope = &envelopes[0];
    assert_eq!(
        envelope.event_id,
        body["event_id"].as_str().expect("event_id")
    );
    assert_eq!(
        envelope.event_id,
        crate::ids::proposal_event_id(instance_id)
    );
    assert_eq!(envelope.recorded_at, NOW_MS);
    assert_eq!(envelope.submitted_by, "svc:remediator");
    let EventBody::ActionProposed(proposed) = &envelope.body else {
        panic!("not a proposal: {envelope:?}");
    };
    let snapshot = h.state.config.snapshot();
    assert_eq!(proposed.ruleset, snapshot.ruleset.ruleset.reference());
    assert_eq!(proposed.requirement.rule_id, "prod-restarts");
    assert_eq!(
        proposed.requirement.required_signals,
        vec!["opa".to_owned()]
    );
    assert_eq!(
        proposed.action_digest,
        warrant_schema::samples::ACTION_DIGEST
    );
    assert_eq!(proposed.proposer.principal, "svc:remediator");
    assert_eq!(proposed.proposer.model.as_deref(), Some("gpt-x"));
    assert_eq!(h.status_of(instance_id), Some(StatusName::AwaitingSignals));
}

#[tokio::test]
async fn a_retried_proposal_with_its_instance_id_is_answered_with_the_original() {
    let h = harness();
    let first = h.propose_restart(INSTANCE).await;
    let again = h.propose_restart(&INSTANCE.to_uppercase()).await;
    assert_eq!(first["instance_id"], INSTANCE);
    assert_eq!(again, first, "a true retry gets the original answer");
    assert_eq!(h.log.len(), 1, "and appends nothing");
    assert_eq!(h.status_of(INSTANCE), Some(StatusName::AwaitingSignals));
}

/// The example principals plus a second service and two executors whose
/// `principal/key` pairs would have collided.
fn with_more_principals(h: &Harness) {
    let text = String::from_utf8(example("principals.yaml")).expect("utf-8");
    let text = text.replacen(
        "tokens:\n",
        "tokens:\n  - {principal: \"svc:squatter\", kind: service, token: \"squatter-token-00001\"}\n  - {principal: deployer, kind: executor, token: \"deployer-token-000001\"}\n  - {principal: \"deployer/x\", kind: executor, token: \"deployer-x-token-0001\"}\n",
        1,
    );
    let principals = Principals::parse(text.as_bytes()).expect("valid principals");
    let snapshot = h.state.config.snapshot();
    h.state
        .config
        .replace(snapshot.ruleset.clone(), Arc::new(principals));
}

#[tokio::test]
async fn an_instance_id_cannot_be_squatted() {
    let h = harness();
    with_more_principals(&h);
    let original = h.propose_restart(INSTANCE).await;
    // Another principal reusing the id, with the same or another action.
    for body in [restart(Some(INSTANCE)), {
        let mut other = restart(Some(INSTANCE));
        other["action"]["target"] = json!("staging/x");
        other
    }] {
        let answer = h
            .post("/v1/proposals", Some("squatter-token-00001"), &body)
            .await;
        assert_eq!(
            (answer.status, answer.code()),
            (StatusCode::CONFLICT, "instance_exists"),
            "{}",
            answer.text
        );
    }
    // The same principal retrying with another action is no retry either.
    let mut changed = restart(Some(INSTANCE));
    changed["action"]["parameters"]["strategy"] = json!("all-at-once");
    let answer = h.post("/v1/proposals", Some(SERVICE), &changed).await;
    assert_eq!(answer.status, StatusCode::CONFLICT, "{}", answer.text);
    assert_eq!(h.log.len(), 1, "nothing was appended for the squatters");
    let record = h.projector.record_of(INSTANCE).expect("record");
    let proposal = record.proposal.expect("proposed");
    assert_eq!(proposal.submitted_by, "svc:remediator");
    assert_eq!(json!(proposal.action_digest), original["action_digest"]);
}

#[tokio::test]
async fn a_chosen_instance_id_needs_the_projector_to_tell_whether_it_is_taken() {
    let h = harness();
    h.projector.down.store(true, Ordering::SeqCst);
    let answer = h
        .post("/v1/proposals", Some(SERVICE), &restart(Some(INSTANCE)))
        .await;
    assert_eq!(
        (answer.status, answer.code()),
        (StatusCode::SERVICE_UNAVAILABLE, "projector_unavailable")
    );
    assert_eq!(h.log.len(), 0);
    // A proposal without a chosen id cannot collide and needs no projector.
    let answer = h.post("/v1/proposals", Some(SERVICE), &restart(None)).await;
    answer.ok(StatusCode::ACCEPTED);
}

#[tokio::test]
async fn an_idempotency_key_never_hands_one_executor_another_executors_grant() {
    let h = harness();
    with_more_principals(&h);
    let digest = h.authorized(INSTANCE).await;
    let claim = |token: &'static str, key: &'static str| {
        let mut request = post(
            &format!("/v1/instances/{INSTANCE}/executions"),
            Some(token),
            json!({ "action_digest": digest }).to_string(),
        );
        request
            .headers_mut()
            .insert("idempotency-key", key.parse().expect("header"));
        request
    };
    let first = h.send(claim("deployer-token-000001", "x/1")).await;
    let granted = first.ok(StatusCode::CREATED).clone();
    // `deployer` + `x/1` and `deployer/x` + `1` used to derive one event id.
    let second = h.send(claim("deployer-x-token-0001", "1")).await;
    assert_eq!(
        (second.status, second.code()),
        (StatusCode::CONFLICT, "NoExecutionsLeft"),
        "{}",
        second.text
    );
    assert!(second.json.get("grant_id").is_none());
    // The holder's own retry still gets its grant back.
    let again = h.send(claim("deployer-token-000001", "x/1")).await;
    assert_eq!(
        again.ok(StatusCode::CREATED)["grant_id"],
        granted["grant_id"]
    );
}

#[tokio::test]
async fn non_canonical_actions_are_400s_naming_the_field() {
    let h = harness();
    for (kind, target, field) in [
        ("Service.Restart", "prod/payments/api", "action.kind"),
        ("service.restart ", "prod/payments/api", "action.kind"),
        ("service.restart", " prod/payments/api", "action.target"),
        ("service.restart", "./prod/payments/api", "action.target"),
        ("service.restart", "prod//payments/api", "action.target"),
    ] {
        let mut body = restart(None);
        body["action"]["kind"] = json!(kind);
        body["action"]["target"] = json!(target);
        let answer = h.post("/v1/proposals", Some(SERVICE), &body).await;
        assert_eq!(
            (answer.status, answer.code()),
            (StatusCode::BAD_REQUEST, "invalid_action"),
            "{kind:?} {target:?}: {}",
            answer.text
        );
        assert!(
            answer.json["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(field)),
            "{}",
            answer.text
        );
    }
    assert_eq!(h.log.len(), 0);
}

#[tokio::test]
async fn bogus_signature_tags_are_capped_and_a_real_one_among_them_counts() {
    let h = harness();
    h.propose_restart(INSTANCE).await;
    let path = format!("/v1/instances/{INSTANCE}/decisions");
    let timestamp = (h.clock.now_millis() / 1000).to_string();
    let body = approve(INSTANCE).to_string();
    let real = signature::header_value(ALICE.as_bytes(), &timestamp, body.as_bytes());
    let bogus = format!("v1={}", "00".repeat(32));
    let request = |tags: Vec<String>| {
        Request::builder()
            .method("POST")
            .uri(&path)
            .header(header::CONTENT_TYPE, "application/json")
            .header("X-Warrant-Timestamp", &timestamp)
            .header("X-Warrant-Signature", tags.join(","))
            .body(Body::from(body.clone()))
            .expect("request")
    };
    let too_many = h.send(request(vec![bogus.clone(); 5])).await;
    assert_eq!(
        (too_many.status, too_many.code()),
        (StatusCode::UNAUTHORIZED, "invalid_signature")
    );
    let hidden = h
        .send(request(vec![bogus.clone(), bogus.clone(), real]))
        .await;
    assert_eq!(
        hidden.ok(StatusCode::ACCEPTED)["reviewer"]["principal"],
        "alice"
    );
}

#[tokio::test]
async fn an_idempotency_key_names_the_same_instance_on_retry() {
    let h = harness();
    let request = || {
        let mut request = post("/v1/proposals", Some(SERVICE), restart(None).to_string());
        request
            .headers_mut()
            .insert("idempotency-key", "attempt-42".parse().expect("header"));
        request
    };
    let first = h.send(request()).await;
    let again = h.send(request()).await;
    assert_eq!(
        first.ok(StatusCode::ACCEPTED)["instance_id"],
        again.ok(StatusCode::ACCEPTED)["instance_id"]
    );
    let mut bad = request();
    bad.headers_mut()
        .insert("idempotency-key", "has space".parse().expect("header"));
    h.send(bad)
        .await
        .expect(StatusCode::BAD_REQUEST, "invalid_idempotency_key");
}

#[tokio::test]
async fn malformed_proposals_are_400s_and_nothing_is_appended() {
    let h = harness();
    let cases: Vec<(String, &str)> = vec![
        ("{".to_owned(), "malformed_json"),
        ("".to_owned(), "malformed_json"),
        ("[1,2]".to_owned(), "invalid_body"),
        ("{\"action\":{\"kind\":\"k\",\"target\":\"t\"},\"extra\":1}".to_owned(), "invalid_body"),
        ("{\"action\":{\"kind\":\"k\",\"target\":\"t\",\"colour\":\"red\"}}".to_owned(), "invalid_body"),
        ("{\"action\":{\"kind\":\"k\"}}".to_owned(), "invalid_body"),
        ("{}".to_owned(), "invalid_body"),
        ("{\"action\":{\"kind\":\"k\",\"target\":\"t\",\"parameters\":{\"n\":1}}}".to_owned(), "invalid_body"),
        ("{\"action\":{\"kind\":\"k\",\"target\":\"t\"},\"proposer\":{\"kind\":\"ROBOT\"}}".to_owned(), "invalid_body"),
        ("{\"action\":{\"kind\":\" \",\"target\":\"t\"}}".to_owned(), "invalid_action"),
        ("{\"action\":{\"kind\":\"k\",\"target\":\"\"}}".to_owned(), "invalid_action"),
        ("{\"action\":{\"kind\":\"k\",\"target\":\"t\"},\"context_refs\":[{\"uri\":\"\"}]}".to_owned(), "invalid_field"),
        ("{\"instance_id\":\"nope\",\"action\":{\"kind\":\"k\",\"target\":\"t\"}}".to_owned(), "invalid_instance_id"),
        ("{\"instance_id\":\"00000000-0000-0000-0000-000000000000\",\"action\":{\"kind\":\"k\",\"target\":\"t\"}}".to_owned(), "invalid_instance_id"),
        ("\u{0}\u{1}binary".to_owned(), "malformed_json"),
    ];
    for (body, code) in cases {
        let answer = h
            .send(post("/v1/proposals", Some(SERVICE), body.clone()))
            .await;
        assert_eq!(
            (answer.status, answer.code()),
            (StatusCode::BAD_REQUEST, code),
            "body {body:?}: {}",
            answer.text
        );
    }
    assert_eq!(h.log.len(), 0);
}

#[tokio::test]
async fn a_body_that_is_not_json_is_a_415() {
    let h = harness();
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let mut builder = Request::builder()
            .method("POST")
            .uri("/v1/proposals")
            .header(header::AUTHORIZATION, format!("Bearer {SERVICE}"));
        if let Some(content_type) = content_type {
            builder = builder.header(header::CONTENT_TYPE, content_type);
        }
        let request = builder
            .body(Body::from(restart(None).to_string()))
            .expect("request");
        h.send(request)
            .await
            .expect(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
    }
    let mut request = post("/v1/proposals", Some(SERVICE), restart(None).to_string());
    request.headers_mut().insert(
        header::CONTENT_TYPE,
        "application/json; charset=utf-8".parse().expect("header"),
    );
    h.send(request).await.ok(StatusCode::ACCEPTED);
}

#[tokio::test]
async fn tokens_are_checked_before_anything_else() {
    let h = harness();
    let answer = h.post("/v1/proposals", None, &restart(None)).await;
    answer.expect(StatusCode::UNAUTHORIZED, "missing_token");
    assert!(answer.headers.contains_key(header::WWW_AUTHENTICATE));
    h.post(
        "/v1/proposals",
        Some("not-a-known-token-at-all"),
        &restart(None),
    )
    .await
    .expect(StatusCode::UNAUTHORIZED, "invalid_token");
    // Even a malformed body gets the 401 first.
    h.send(post(
        "/v1/proposals",
        Some("wrong-token-wrong-token"),
        "{".to_owned(),
    ))
    .await
    .expect(StatusCode::UNAUTHORIZED, "invalid_token");
    for value in ["Basic abc", "Bearer", "Bearer ", SERVICE] {
        let mut request = post("/v1/proposals", None, restart(None).to_string());
        request
            .headers_mut()
            .insert(header::AUTHORIZATION, value.parse().expect("header"));
        h.send(request)
            .await
            .expect(StatusCode::UNAUTHORIZED, "missing_token");
    }
    let mut request = post("/v1/proposals", None, restart(None).to_string());
    request.headers_mut().insert(
        header::AUTHORIZATION,
        axum::http::HeaderValue::from_bytes(b"Bearer \xff\xfe").expect("header"),
    );
    h.send(request)
        .await
        .expect(StatusCode::UNAUTHORIZED, "missing_token");
    assert_eq!(h.log.len(), 0);
}

#[tokio::test]
async fn principals_of_the_wrong_kind_are_403s() {
    let h = harness();
    for token in [POLICY, EXECUTOR] {
        h.post("/v1/proposals", Some(token), &restart(None))
            .await
            .expect(StatusCode::FORBIDDEN, "wrong_principal_kind");
    }
    h.propose_restart(INSTANCE).await;
    let path = |what: &str| format!("/v1/instances/{INSTANCE}/{what}");
    h.post(&path("signals"), Some(SERVICE), &allow())
        .await
        .expect(StatusCode::FORBIDDEN, "wrong_principal_kind");
    h.post(
        &path("executions"),
        Some(SERVICE),
        &json!({ "action_digest": "a".repeat(64) }),
    )
    .await
    .expect(StatusCode::FORBIDDEN, "wrong_principal_kind");
    h.post(
        &path("reports"),
        Some(POLICY),
        &json!({ "grant_id": INSTANCE, "outcome": "SUCCEEDED" }),
    )
    .await
    .expect(StatusCode::FORBIDDEN, "wrong_principal_kind");
    h.post(&path("withdrawal"), Some(EXECUTOR), &json!({}))
        .await
        .expect(StatusCode::FORBIDDEN, "wrong_principal_kind");
    assert_eq!(h.log.len(), 1);
}

#[tokio::test]
async fn a_proposal_cannot_name_another_proposer() {
    let h = harness();
    let mut body = restart(None);
    body["proposer"]["principal"] = json!("alice");
    h.post("/v1/proposals", Some(SERVICE), &body)
        .await
        .expect(StatusCode::FORBIDDEN, "principal_mismatch");
    body["proposer"]["principal"] = json!("svc:remediator");
    h.post("/v1/proposals", Some(SERVICE), &body)
        .await
        .ok(StatusCode::ACCEPTED);
}

#[tokio::test]
async fn an_oversized_body_is_a_json_413() {
    let h = harness();
    let mut body = restart(None);
    body["rationale"] = json!("x".repeat(5000));
    h.post("/v1/proposals", Some(SERVICE), &body)
        .await
        .expect(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large");
    // With a Content-Length that says so, too.
    let text = body.to_string();
    let mut request = post("/v1/proposals", Some(SERVICE), text.clone());
    request
        .headers_mut()
        .insert(header::CONTENT_LENGTH, text.len().into());
    h.send(request)
        .await
        .expect(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large");
    // The signed webhook reads raw bytes under the same limit.
    h.propose_restart(INSTANCE).await;
    let mut decision = approve(INSTANCE);
    decision["justification"] = json!("z".repeat(5000));
    h.decide(INSTANCE, ALICE, &decision)
        .await
        .expect(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large");
    assert_eq!(h.log.len(), 1);
}

#[tokio::test]
async fn kafka_unavailable_is_a_503_with_retry_after() {
    let h = harness();
    h.log.down.store(true, Ordering::SeqCst);
    let answer = h.post("/v1/proposals", Some(SERVICE), &restart(None)).await;
    answer.expect(StatusCode::SERVICE_UNAVAILABLE, "log_unavailable");
    assert_eq!(
        answer
            .headers
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    assert_eq!(h.log.len(), 0);
    let metrics = h.send(get("/metrics")).await.text;
    assert!(
        metrics.contains("warrant_intake_appends_total{origin=\"http\",event=\"ActionProposed\",result=\"failed\"} 1"),
        "{metrics}"
    );
}

// ------------------------------------------------------------------ signals

#[tokio::test]
async fn a_signal_carries_the_tokens_source() {
    let h = harness();
    h.propose_restart(INSTANCE).await;
    let path = format!("/v1/instances/{INSTANCE}/signals");
    let answer = h.post(&path, Some(POLICY), &allow()).await;
    assert_eq!(answer.ok(StatusCode::ACCEPTED)["source"], "opa");
    let envelopes = h.log.envelopes();
    let EventBody::PolicySignalRecorded(signal) = &envelopes[1].body else {
        panic!("not a signal");
    };
    assert_eq!(signal.source, "opa");
    assert_eq!(envelopes[1].submitted_by, "policy:opa");
    assert_eq!(h.status_of(INSTANCE), Some(StatusName::AwaitingDecision));

    let mut body = allow();
    body["source"] = json!("change-calendar");
    h.post(&path, Some(POLICY), &body)
        .await
        .expect(StatusCode::FORBIDDEN, "source_mismatch");
    body["source"] = json!("opa");
    h.post(&path, Some(POLICY), &body)
        .await
        .ok(StatusCode::ACCEPTED);

    for (body, code) in [
        (
            json!({ "verdict": "MAYBE", "policy_ref": { "id": "a", "version": "1" } }),
            "invalid_body",
        ),
        (json!({ "verdict": "ALLOW" }), "invalid_body"),
        (
            json!({ "verdict": "ALLOW", "policy_ref": { "id": "a" } }),
            "invalid_body",
        ),
        (
            json!({ "verdict": "ALLOW", "policy_ref": { "id": "", "version": "1" } }),
            "invalid_field",
        ),
    ] {
        h.post(&path, Some(POLICY), &body)
            .await
            .expect(StatusCode::BAD_REQUEST, code);
    }
}

#[tokio::test]
async fn unknown_instances_are_404s_and_an_unreachable_projector_a_503() {
    let h = harness();
    let unknown = instance(0x99);
    for (what, token, body) in [
        ("signals", POLICY, allow()),
        (
            "executions",
            EXECUTOR,
            json!({ "action_digest": "a".repeat(64) }),
        ),
        (
            "reports",
            EXECUTOR,
            json!({ "grant_id": INSTANCE, "outcome": "FAILED" }),
        ),
        ("withdrawal", SERVICE, json!({})),
    ] {
        let path = format!("/v1/instances/{unknown}/{what}");
        h.post(&path, Some(token), &body)
            .await
            .expect(StatusCode::NOT_FOUND, "unknown_instance");
        h.projector.down.store(true, Ordering::SeqCst);
        let answer = h.post(&path, Some(token), &body).await;
        answer.expect(StatusCode::SERVICE_UNAVAILABLE, "projector_unavailable");
        assert!(answer.headers.contains_key(header::RETRY_AFTER));
        h.projector.down.store(false, Ordering::SeqCst);
    }
    h.decide(&unknown, ALICE, &approve(&unknown))
        .await
        .expect(StatusCode::NOT_FOUND, "unknown_instance");
    assert_eq!(h.log.len(), 0);
}

#[tokio::test]
async fn a_bad_instance_id_in_the_path_is_a_400() {
    let h = harness();
    for id in [
        "nope",
        "00000000-0000-0000-0000-000000000000",
        "6f1c2b9e-4d0a-4c7e-9a51",
    ] {
        h.post(
            &format!("/v1/instances/{id}/signals"),
            Some(POLICY),
            &allow(),
        )
        .await
        .expect(StatusCode::BAD_REQUEST, "invalid_instance_id");
    }
}

#[tokio::test]
async fn a_proposal_just_made_here_is_known_before_the_projector_folds_it() {
    let mut h = harness();
    h.state.recent = Arc::new(RecentInstances::new(10));
    h.router = router(h.state.clone());
    h.propose_restart(INSTANCE).await;
    h.projector.down.store(true, Ordering::SeqCst);
    h.post(
        &format!("/v1/instances/{INSTANCE}/signals"),
        Some(POLICY),
        &allow(),
    )
    .await
    .ok(StatusCode::ACCEPTED);
}

#[tokio::test]
async fn an_instance_the_projector_confirmed_is_not_looked_up_again() {
    let mut h = harness();
    // Proposed through an intake that keeps no memory (another replica).
    h.propose_restart(INSTANCE).await;
    h.state.recent = Arc::new(RecentInstances::new(10));
    h.router = router(h.state.clone());
    let path = format!("/v1/instances/{INSTANCE}/signals");
    h.post(&path, Some(POLICY), &allow())
        .await
        .ok(StatusCode::ACCEPTED);
    assert_eq!(h.projector.facts_asked.load(Ordering::SeqCst), 1);
    h.projector.down.store(true, Ordering::SeqCst);
    h.post(&path, Some(POLICY), &allow())
        .await
        .ok(StatusCode::ACCEPTED);
    assert_eq!(h.projector.facts_asked.load(Ordering::SeqCst), 1);

    // An unknown instance is asked about every time: it may be in flight.
    let unknown = instance(0x98);
    h.projector.down.store(false, Ordering::SeqCst);
    for _ in 0..2 {
        h.post(
            &format!("/v1/instances/{unknown}/signals"),
            Some(POLICY),
            &allow(),
        )
        .await
        .expect(StatusCode::NOT_FOUND, "unknown_instance");
    }
    assert_eq!(h.projector.facts_asked.load(Ordering::SeqCst), 3);
}

// ---------------------------------------------------------------- decisions

#[tokio::test]
async fn the_reviewer_is_whoever_signed_with_the_directorys_roles() {
    let h = harness();
    h.propose_restart(INSTANCE).await;
    let answer = h.decide(INSTANCE, CAROL, &approve(INSTANCE)).await;
    let body = answer.ok(StatusCode::ACCEPTED);
    assert_eq!(
        body["reviewer"],
        json!({ "principal": "carol", "roles": ["ic"] })
    );
    let envelopes = h.log.envelopes();
    let EventBody::DecisionRecorded(decision) = &envelopes[1].body else {
        panic!("not a decision");
    };
    assert_eq!(decision.reviewer.principal, "carol");
    assert_eq!(decision.reviewer.roles, vec!["ic".to_owned()]);
    assert_eq!(envelopes[1].submitted_by, "reviewer:carol");
    // carol is no approver under prod-restarts: the fold refuses, intake does not.
    assert_eq!(h.refusals(INSTANCE), vec![RefusalCode::RoleNotPermitted]);

    // A body that tries to name a reviewer or roles is refused outright.
    let mut body = approve(INSTANCE);
    body["reviewer"] = json!({ "principal": "alice", "roles": ["sre"] });
    h.decide(INSTANCE, CAROL, &body)
        .await
        .expect(StatusCode::BAD_REQUEST, "invalid_body");
}

#[tokio::test]
async fn both_active_secrets_of_a_rotating_reviewer_are_accepted() {
    let h = harness();
    h.propose_restart(INSTANCE).await;
    for secret in [ALICE, ALICE_NEW] {
        let answer = h.decide(INSTANCE, secret, &approve(INSTANCE)).await;
        assert_eq!(
            answer.ok(StatusCode::ACCEPTED)["reviewer"]["principal"],
            "alice"
        );
    }
}

#[tokio::test]
async fn webhook_signatures_and_timestamps_are_enforced() {
    let h = harness();
    h.propose_restart(INSTANCE).await;
    let path = format!("/v1/instances/{INSTANCE}/decisions");
    let body = approve(INSTANCE).to_string();
    let now = (NOW_MS / 1000).to_string();

    let mut request = signed(&path, ALICE, &now, &body, None);
    request.headers_mut().remove("x-warrant-timestamp");
    h.send(request)
        .await
        .expect(StatusCode::UNAUTHORIZED, "missing_timestamp");
    let mut request = signed(&path, ALICE, &now, &body, None);
    request.headers_mut().remove("x-warrant-signature");
    h.send(request)
        .await
        .expect(StatusCode::UNAUTHORIZED, "missing_signature");
    h.send(signed(&path, ALICE, "yesterday", &body, None))
        .await
        .expect(StatusCode::UNAUTHORIZED, "invalid_timestamp");
    for stale in [NOW_MS / 1000 - 301, NOW_MS / 1000 + 301] {
        h.send(signed(&path, ALICE, &stale.to_string(), &body, None))
            .await
            .expect(StatusCode::UNAUTHORIZED, "stale_timestamp");
    }
    // At the edge of the window: accepted.
    h.send(signed(
        &path,
        ALICE,
        &(NOW_MS / 1000 - 300).to_string(),
        &body,
        None,
    ))
    .await
    .ok(StatusCode::ACCEPTED);

    // A key nobody holds, or a body changed after signing.
    h.send(signed(
        &path,
        "example-mallory-secret-0001",
        &now,
        &body,
        None,
    ))
    .await
    .expect(StatusCode::UNAUTHORIZED, "bad_signature");
    let mut request = signed(&path, ALICE, &now, &body, None);
    *request.body_mut() = Body::from(body.replace("APPROVE", "REJECT"));
    h.send(request)
        .await
        .expect(StatusCode::UNAUTHORIZED, "bad_signature");
    // The timestamp is part of what is signed.
    let mut request = signed(&path, ALICE, &now, &body, None);
    let later = (NOW_MS / 1000 + 1).to_string();
    request
        .headers_mut()
        .insert("x-warrant-timestamp", later.parse().expect("header"));
    h.send(request)
        .await
        .expect(StatusCode::UNAUTHORIZED, "bad_signature");
    let mut request = signed(&path, ALICE, &now, &body, None);
    request
        .headers_mut()
        .insert("x-warrant-signature", "sha256=abc".parse().expect("header"));
    h.send(request)
        .await
        .expect(StatusCode::UNAUTHORIZED, "invalid_signature");
    // A bearer token is no signature.
    h.post(&path, Some(SERVICE), &approve(INSTANCE))
        .await
        .expect(StatusCode::UNAUTHORIZED, "missing_timestamp");

    // The reviewer hint: unknown names are 403; a known name must match the key.
    h.send(signed(&path, ALICE, &now, &body, Some("mallory")))
        .await
        .expect(StatusCode::FORBIDDEN, "unknown_reviewer");
    h.send(signed(&path, ALICE, &now, &body, Some("bob")))
        .await
        .expect(StatusCode::UNAUTHORIZED, "bad_signature");
    h.send(signed(&path, BOB, &now, &body, Some("bob")))
        .await
        .ok(StatusCode::ACCEPTED);
    // Two appended: the edge-of-window approval by alice and bob's.
    assert_eq!(h.log.len(), 3);
}

#[tokio::test]
async fn a_signed_decision_is_bound_to_its_instance_and_replays_are_duplicates() {
    let h = harness();
    h.propose_restart(INSTANCE).await;
    let other = instance(0x12);
    h.propose_restart(&other).await;
    // alice's signed approval of INSTANCE, posted to another instance.
    let now = (NOW_MS / 1000).to_string();
    let body = approve(INSTANCE).to_string();
    h.send(signed(
        &format!("/v1/instances/{other}/decisions"),
        ALICE,
        &now,
        &body,
        None,
    ))
    .await
    .expect(StatusCode::BAD_REQUEST, "instance_mismatch");
    let path = format!("/v1/instances/{INSTANCE}/decisions");
    let first = h.send(signed(&path, ALICE, &now, &body, None)).await;
    let replay = h.send(signed(&path, ALICE, &now, &body, None)).await;
    assert_eq!(
        first.ok(StatusCode::ACCEPTED)["event_id"],
        replay.ok(StatusCode::ACCEPTED)["event_id"]
    );
    // OPA has not reported yet, so the fold refuses the first; the replay is a duplicate.
    assert_eq!(
        h.refusals(INSTANCE),
        vec![RefusalCode::SignalsPending, RefusalCode::Duplicate]
    );

    for (body, code) in [
        (json!({ "verdict": "APPROVE" }), "invalid_body"),
        (
            json!({ "instance_id": "x", "verdict": "APPROVE" }),
            "invalid_instance_id",
        ),
        (
            json!({ "instance_id": INSTANCE, "verdict": "YES" }),
            "invalid_body",
        ),
        (
            json!({ "instance_id": INSTANCE, "verdict": "APPROVE", "scope": { "max_executions": 0 } }),
            "invalid_field",
        ),
        (
            json!({ "instance_id": INSTANCE, "verdict": "APPROVE", "scope": { "not_after": -5 } }),
            "invalid_field",
        ),
        (
            json!({ "instance_id": INSTANCE, "verdict": "APPROVE", "scope": { "region": "eu" } }),
            "invalid_body",
        ),
    ] {
        h.decide(INSTANCE, BOB, &body)
            .await
            .expect(StatusCode::BAD_REQUEST, code);
    }
    h.send(signed(&path, BOB, &now, "{not json", None))
        .await
        .expect(StatusCode::BAD_REQUEST, "malformed_json");
}

// --------------------------------------------------------------- executions

#[tokio::test]
async fn an_authorized_claim_is_answered_with_the_folds_grant() {
    let h = harness();
    let digest = h.authorized(INSTANCE).await;
    let answer = h
        .post(
            &format!("/v1/instances/{INSTANCE}/executions"),
            Some(EXECUTOR),
            &json!({ "action_digest": digest.to_uppercase() }),
        )
        .await;
    let grant = answer.ok(StatusCode::CREATED);
    let event_id = grant["event_id"].as_str().expect("event_id");
    assert_eq!(grant["instance_id"], INSTANCE);
    assert_eq!(
        grant["grant_id"],
        warrant_authority::grant_id(INSTANCE, event_id)
    );
    assert_eq!(grant["action_digest"], digest);
    // Authorized at NOW; prod-restarts grants 15 minutes.
    assert_eq!(grant["not_after"], NOW_MS + 900_000);
    assert_eq!(grant["scope"]["not_after"], NOW_MS + 900_000);
    assert_eq!(grant["scope"]["max_executions"], 1);
    assert_eq!(h.status_of(INSTANCE), Some(StatusName::Executing));
    let envelopes = h.log.envelopes();
    let last = envelopes.last().expect("appended");
    assert_eq!(last.submitted_by, "svc:deployer");
    let EventBody::ExecutionRequested(request) = &last.body else {
        panic!("not a claim");
    };
    assert_eq!(request.executor, "svc:deployer");
    assert_eq!(request.action_digest, digest);

    // Reporting it completes the instance.
    let report = h
        .post(
            &format!("/v1/instances/{INSTANCE}/reports"),
            Some(EXECUTOR),
            &json!({ "grant_id": grant["grant_id"], "outcome": "SUCCEEDED", "detail": "3/3 pods" }),
        )
        .await;
    report.ok(StatusCode::ACCEPTED);
    assert_eq!(h.status_of(INSTANCE), Some(StatusName::Completed));

    // A second claim: the fold refuses, and so does intake, with its code.
    let again = h
        .post(
            &format!("/v1/instances/{INSTANCE}/executions"),
            Some(EXECUTOR),
            &json!({ "action_digest": digest }),
        )
        .await;
    again.expect(StatusCode::CONFLICT, "AlreadyFinal");
    assert!(again.json["event"]["event_id"].is_string());
}

#[tokio::test]
async fn refused_claims_are_409s_with_the_refusal_code() {
    let h = harness();
    h.propose_restart(INSTANCE).await;
    let path = format!("/v1/instances/{INSTANCE}/executions");
    let digest = warrant_schema::samples::ACTION_DIGEST;
    let paused = h
        .post(&path, Some(EXECUTOR), &json!({ "action_digest": digest }))
        .await;
    paused.expect(StatusCode::CONFLICT, "NotAuthorized");
    assert_eq!(paused.json["event"]["partition"], 0);

    let h = harness();
    h.authorized(INSTANCE).await;
    h.post(
        &path,
        Some(EXECUTOR),
        &json!({ "action_digest": "0".repeat(64) }),
    )
    .await
    .expect(StatusCode::CONFLICT, "DigestMismatch");
    // The window closes 15 minutes after authorization.
    h.clock.set(NOW_MS + 900_001);
    h.post(&path, Some(EXECUTOR), &json!({ "action_digest": digest }))
        .await
        .expect(StatusCode::CONFLICT, "Expired");

    for body in [
        json!({ "action_digest": "abc" }),
        json!({ "action_digest": "g".repeat(64) }),
        json!({}),
        json!({ "action_digest": digest, "executor": "svc:other" }),
    ] {
        let answer = h.post(&path, Some(EXECUTOR), &body).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.text);
    }
}

#[tokio::test]
async fn a_claim_the_fold_has_not_answered_is_a_503_naming_the_event() {
    let h = harness();
    let digest = h.authorized(INSTANCE).await;
    h.projector.lagging.store(true, Ordering::SeqCst);
    let path = format!("/v1/instances/{INSTANCE}/executions");
    let answer = h
        .post(&path, Some(EXECUTOR), &json!({ "action_digest": digest }))
        .await;
    answer.expect(StatusCode::SERVICE_UNAVAILABLE, "fold_pending");
    assert!(answer.headers.contains_key(header::RETRY_AFTER));
    let offset = answer.json["event"]["offset"].as_i64().expect("offset");
    // The request is on the log, and the fold decides it regardless.
    assert_eq!(offset as usize, h.log.len() - 1);
    assert_eq!(h.status_of(INSTANCE), Some(StatusName::Executing));

    h.projector.lagging.store(false, Ordering::SeqCst);
    h.projector.down.store(true, Ordering::SeqCst);
    let mut state = h.state.clone();
    state.recent = Arc::new(RecentInstances::new(10));
    state.recent.insert(INSTANCE);
    let answer = router(state)
        .oneshot(post(
            &path,
            Some(EXECUTOR),
            json!({ "action_digest": digest }).to_string(),
        ))
        .await
        .expect("router");
    assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn a_retried_claim_with_its_idempotency_key_gets_the_first_answer() {
    let h = harness();
    let digest = h.authorized(INSTANCE).await;
    let path = format!("/v1/instances/{INSTANCE}/executions");
    let request = || {
        let mut request = post(
            &path,
            Some(EXECUTOR),
            json!({ "action_digest": digest }).to_string(),
        );
        request
            .headers_mut()
            .insert("idempotency-key", "deploy-7".parse().expect("header"));
        request
    };
    let first = h.send(request()).await;
    let retry = h.send(request()).await;
    let (first, retry) = (first.ok(StatusCode::CREATED), retry.ok(StatusCode::CREATED));
    assert_eq!(first["grant_id"], retry["grant_id"]);
    assert_eq!(first["event_id"], retry["event_id"]);
    assert_ne!(first["offset"], retry["offset"]);
    assert_eq!(h.refusals(INSTANCE), vec![RefusalCode::Duplicate]);
}

// ------------------------------------------------------ reports, withdrawal

#[tokio::test]
async fn reports_need_a_grant_uuid() {
    let h = harness();
    h.propose_restart(INSTANCE).await;
    let path = format!("/v1/instances/{INSTANCE}/reports");
    for (body, code) in [
        (
            json!({ "grant_id": "g-1", "outcome": "SUCCEEDED" }),
            "invalid_grant_id",
        ),
        (
            json!({ "grant_id": INSTANCE, "outcome": "DONE" }),
            "invalid_body",
        ),
        (json!({ "outcome": "FAILED" }), "invalid_body"),
    ] {
        h.post(&path, Some(EXECUTOR), &body)
            .await
            .expect(StatusCode::BAD_REQUEST, code);
    }
    // A report for a grant never issued is appended: the fold records the violation.
    let answer = h
        .post(
            &path,
            Some(EXECUTOR),
            &json!({ "grant_id": instance(0x77), "outcome": "SUCCEEDED" }),
        )
        .await;
    answer.ok(StatusCode::ACCEPTED);
    let record = h.projector.record_of(INSTANCE).expect("record");
    assert_eq!(record.violations.len(), 1);
}

#[tokio::test]
async fn the_proposer_withdraws_with_or_without_a_body() {
    let h = harness();
    h.propose_restart(INSTANCE).await;
    let path = format!("/v1/instances/{INSTANCE}/withdrawal");
    let request = Request::builder()
        .method("POST")
        .uri(&path)
        .header(header::AUTHORIZATION, format!("Bearer {SERVICE}"))
        .body(Body::empty())
        .expect("request");
    h.send(request).await.ok(StatusCode::ACCEPTED);
    assert_eq!(h.status_of(INSTANCE), Some(StatusName::Withdrawn));

    let other = instance(0x13);
    h.propose_restart(&other).await;
    let path = format!("/v1/instances/{other}/withdrawal");
    h.post(
        &path,
        Some(SERVICE),
        &json!({ "reason": "fixed by config push" }),
    )
    .await
    .ok(StatusCode::ACCEPTED);
    let envelopes = h.log.envelopes();
    let EventBody::ProposalWithdrawn(withdrawn) = &envelopes.last().expect("appended").body else {
        panic!("not a withdrawal");
    };
    assert_eq!(withdrawn.reason.as_deref(), Some("fixed by config push"));
    h.post(&path, Some(SERVICE), &json!({ "why": "x" }))
        .await
        .expect(StatusCode::BAD_REQUEST, "invalid_body");
    let request = Request::builder()
        .method("POST")
        .uri(&path)
        .header(header::AUTHORIZATION, format!("Bearer {SERVICE}"))
        .body(Body::from("{\"reason\":\"no content type\"}"))
        .expect("request");
    h.send(request)
        .await
        .expect(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
}

// -------------------------------------------------------------- operations

#[tokio::test]
async fn unknown_routes_and_methods_are_json_errors() {
    let h = harness();
    h.send(get("/v2/anything"))
        .await
        .expect(StatusCode::NOT_FOUND, "no_route");
    h.send(get("/v1/proposals"))
        .await
        .expect(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    let request = Request::builder()
        .method("DELETE")
        .uri("/healthz")
        .body(Body::empty())
        .expect("request");
    h.send(request)
        .await
        .expect(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let h = harness();
    assert_eq!(
        h.send(get("/healthz")).await.ok(StatusCode::OK)["status"],
        "ok"
    );
    let ready = h.send(get("/readyz")).await;
    assert_eq!(ready.ok(StatusCode::OK)["status"], "ready");
    assert_eq!(
        ready.json["ruleset"]["digest"],
        h.state.config.snapshot().ruleset.ruleset.digest()
    );
    h.state.readiness.log.store(false, Ordering::SeqCst);
    let not_ready = h.send(get("/readyz")).await;
    assert_eq!(not_ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(not_ready.json["checks"]["log"], false);

    h.post("/v1/proposals", Some(SERVICE), &restart(None)).await;
    let metrics = h.send(get("/metrics")).await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert!(metrics
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/openmetrics-text")));
    for needle in [
        "warrant_intake_appends_total{origin=\"http\",event=\"ActionProposed\",result=\"ok\"} 1",
        "warrant_intake_http_request_duration_seconds_count{route=\"/v1/proposals\",status=\"202\"} 1",
        "# EOF",
    ] {
        assert!(metrics.text.contains(needle), "{needle} not in {}", metrics.text);
    }
}

/// Given the documented limit on context refs, then it is the one intake
/// enforces (and conditions were bounded for), and one more is a 400 with
/// nothing appended.
#[tokio::test]
async fn the_openapi_document_states_the_context_refs_limit() {
    let document: Value = serde_json::from_str(OPENAPI).expect("valid JSON");
    let refs = &document["components"]["schemas"]["ProposalRequest"]["properties"]["context_refs"];
    assert_eq!(refs["maxItems"], json!(warrant_authority::MAX_CONTEXT_REFS));
    let h = harness();
    let refs: Vec<Value> = (0..=warrant_authority::MAX_CONTEXT_REFS)
        .map(|i| json!({ "uri": format!("runbook://{i}") }))
        .collect();
    let body = json!({ "action": { "kind": "k", "target": "t" }, "context_refs": refs });
    let answer = h
        .send(post("/v1/proposals", Some(SERVICE), body.to_string()))
        .await;
    assert_eq!(
        (answer.status, answer.code()),
        (StatusCode::BAD_REQUEST, "invalid_field"),
        "{}",
        answer.text
    );
    assert!(answer.text.contains("at most 32"), "{}", answer.text);
    assert_eq!(h.log.len(), 0);
}

#[tokio::test]
async fn every_route_is_in_the_openapi_document_and_nothing_else_is() {
    let h = harness();
    let (router, routes) = router_with_routes(h.state.clone());
    let served = h.send(get("/openapi.json")).await;
    let document = served.ok(StatusCode::OK);
    assert_eq!(document["openapi"], "3.1.0");
    assert_eq!(
        document,
        &serde_json::from_str::<Value>(OPENAPI).expect("valid JSON")
    );
    let paths = document["paths"].as_object().expect("paths");
    let mut documented = 0;
    for (path, operations) in paths {
        for method in operations.as_object().expect("operations").keys() {
            documented += 1;
            assert!(
                routes.iter().any(|r| r.path == path && r.method == method),
                "{method} {path} is documented but not routed"
            );
        }
    }
    assert_eq!(documented, routes.len());
    for route in &routes {
        assert!(
            paths
                .get(route.path)
                .and_then(|p| p.get(route.method))
                .is_some(),
            "{} {} is routed but not documented",
            route.method,
            route.path
        );
        // And the table is the router: every route answers something else than the fallback.
        let uri = route.path.replace("{id}", INSTANCE);
        let request = Request::builder()
            .method(route.method.to_uppercase().as_str())
            .uri(uri)
            .body(Body::empty())
            .expect("request");
        let response = router.clone().oneshot(request).await.expect("router");
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        assert!(
            !String::from_utf8_lossy(&bytes).contains("no_route"),
            "{} {} falls through to the fallback",
            route.method,
            route.path
        );
    }
    // Every $ref resolves.
    let text = OPENAPI;
    for reference in text.split("\"$ref\": \"#/").skip(1) {
        let pointer = reference.split('"').next().expect("ref");
        assert!(
            document.pointer(&format!("/{pointer}")).is_some(),
            "dangling $ref #/{pointer}"
        );
    }
}

/// POST /v1/sessions answered 413 for a body over the limit while the
/// document did not list 413 there (seen while writing the API fuzzing,
/// tests/schemathesis, whose generated bodies stay small): every route that
/// refuses an oversized body must say so in the document.
#[tokio::test]
async fn every_route_that_answers_413_documents_it() {
    let h = harness();
    let (router, routes) = router_with_routes(h.state.clone());
    let document: Value = serde_json::from_str(OPENAPI).expect("valid JSON");
    let oversized = format!("{{\"x\":\"{}\"}}", "x".repeat(5000));
    let mut refused = Vec::new();
    for route in &routes {
        let uri = route.path.replace("{id}", INSTANCE);
        let mut request = post(&uri, Some(SERVICE), oversized.clone());
        *request.method_mut() = route.method.to_uppercase().parse().expect("method");
        let response = router.clone().oneshot(request).await.expect("router");
        if response.status() != StatusCode::PAYLOAD_TOO_LARGE {
            continue;
        }
        refused.push(route.path);
        let responses = &document["paths"][route.path][route.method]["responses"];
        assert!(
            responses.get("413").is_some(),
            "{} {} answers 413 but its responses are {}",
            route.method,
            route.path,
            responses
        );
    }
    // The limit applies where it should (and the test sees it).
    for path in [
        "/v1/proposals",
        "/v1/instances/{id}/decisions",
        "/v1/sessions",
    ] {
        assert!(refused.contains(&path), "{path} did not refuse the body");
    }
}

// ------------------------------------------------------ no 5xx for anything

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]

    /// Whatever a client sends, with or without credentials, the answer is
    /// never a 5xx and always our JSON.
    #[test]
    fn no_client_input_gets_a_5xx(
        route in 0usize..7,
        credential in 0usize..4,
        body in proptest::prelude::any::<Vec<u8>>(),
        json_body in "\\{\"[a-z_]{1,12}\":(\"[ -~]{0,20}\"|[0-9]{1,5}|null|\\{\\}|\\[\\])\\}",
        use_json in proptest::prelude::any::<bool>(),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async {
            let h = harness();
            h.propose_restart(INSTANCE).await;
            let paths = [
                "/v1/proposals".to_owned(),
                format!("/v1/instances/{INSTANCE}/signals"),
                format!("/v1/instances/{INSTANCE}/decisions"),
                format!("/v1/instances/{INSTANCE}/executions"),
                format!("/v1/instances/{INSTANCE}/reports"),
                format!("/v1/instances/{INSTANCE}/withdrawal"),
                "/v1/instances/%ZZ/signals".to_owned(),
            ];
            let bytes = if use_json { json_body.into_bytes() } else { body };
            let token = [None, Some(SERVICE), Some(POLICY), Some(EXECUTOR)][credential];
            let mut builder = Request::builder()
                .method("POST")
                .uri(paths[route].as_str())
                .header(header::CONTENT_TYPE, "application/json");
            if let Some(token) = token {
                builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
            }
            if route == 2 && credential > 0 {
                let timestamp = (NOW_MS / 1000).to_string();
                let mut message = timestamp.clone().into_bytes();
                message.push(b'.');
                message.extend_from_slice(&bytes);
                let tag = signature::sign(ALICE.as_bytes(), &message);
                builder = builder
                    .header("X-Warrant-Timestamp", timestamp)
                    .header("X-Warrant-Signature", format!("v1={}", hex::encode(tag)));
            }
            let answer = h.send(builder.body(Body::from(bytes)).expect("request")).await;
            assert!(answer.status.as_u16() < 500, "{}: {}", answer.status, answer.text);
            if !answer.status.is_success() {
                assert!(answer.json["error"]["code"].is_string(), "{}", answer.text);
            }
        });
    }
}

// ------------------------------------------ the projector client, over HTTP

/// The projector contract served by axum over the folding stub.
async fn serve_fake_projector(projector: Arc<FoldingProjector>) -> String {
    use axum::extract::{Path, Query, State};
    use axum::response::IntoResponse;
    use axum::routing::get;
    use axum::Json;

    type Shared = Arc<FoldingProjector>;

    async fn record(State(p): State<Shared>, Path(id): Path<String>) -> axum::response::Response {
        match p.record_of(&id) {
            Some(record) => Json(record).into_response(),
            None => (
                StatusCode::NOT_FOUND,
                Json(json!({ "error": { "code": "not_found", "message": "no such instance" } })),
            )
                .into_response(),
        }
    }

    async fn facts(State(p): State<Shared>, Path(id): Path<String>) -> axum::response::Response {
        match Projector::facts(p.as_ref(), &id).await {
            Ok(Some(facts)) => Json(facts).into_response(),
            _ => (
                StatusCode::NOT_FOUND,
                Json(json!({ "error": { "code": "not_found", "message": "no such instance" } })),
            )
                .into_response(),
        }
    }

    async fn entry(
        State(p): State<Shared>,
        Path(id): Path<String>,
        Query(query): Query<BTreeMap<String, i64>>,
    ) -> axum::response::Response {
        let position = LogPosition {
            partition: query.get("partition").copied().unwrap_or(-1) as i32,
            offset: query.get("offset").copied().unwrap_or(-1),
        };
        let wait = Duration::from_millis(query.get("wait_ms").copied().unwrap_or(0) as u64);
        match Projector::entry(p.as_ref(), &id, position, wait).await {
            Ok(Some(entry)) => Json(entry).into_response(),
            _ => (
                StatusCode::NOT_FOUND,
                Json(json!({ "error": { "code": "not_folded", "message": "not yet" } })),
            )
                .into_response(),
        }
    }

    async fn list(
        State(p): State<Shared>,
        Query(query): Query<BTreeMap<String, String>>,
    ) -> axum::response::Response {
        let status = query
            .get("status")
            .and_then(|s| StatusName::parse(s))
            .unwrap_or(StatusName::AwaitingDecision);
        let limit = query
            .get("limit")
            .and_then(|l| l.parse().ok())
            .unwrap_or(50);
        match p
            .list(status, query.get("after").map(String::as_str), limit)
            .await
        {
            Ok(page) => Json(page).into_response(),
            Err(_) => StatusCode::BAD_GATEWAY.into_response(),
        }
    }

    let app = axum::Router::new()
        .route("/v1/instances", get(list))
        .route("/v1/instances/{id}", get(record))
        .route("/v1/instances/{id}/entries", get(entry))
        .route("/v1/instances/{id}/facts", get(facts))
        .with_state(projector);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn the_http_projector_client_speaks_the_contract() {
    let h = harness();
    let url = serve_fake_projector(h.projector.clone()).await;
    let client = Arc::new(
        crate::projector::HttpProjector::new(&url, Duration::from_secs(5)).expect("client"),
    );
    let mut state = h.state.clone();
    state.projector = client.clone();
    let h = Harness {
        router: router(state.clone()),
        state,
        ..h
    };
    let digest = h.authorized(INSTANCE).await;
    let answer = h
        .post(
            &format!("/v1/instances/{INSTANCE}/executions"),
            Some(EXECUTOR),
            &json!({ "action_digest": digest }),
        )
        .await;
    let grant = answer.ok(StatusCode::CREATED);
    assert_eq!(grant["action_digest"], digest);
    h.post(
        &format!("/v1/instances/{}/signals", instance(0x55)),
        Some(POLICY),
        &allow(),
    )
    .await
    .expect(StatusCode::NOT_FOUND, "unknown_instance");

    // Listing, as the sweeper uses it.
    let page = client
        .list(StatusName::Executing, None, 10)
        .await
        .expect("list");
    assert_eq!(page.instances.len(), 1);
    assert_eq!(page.instances[0].instance_id, INSTANCE);
    assert!(page.instances[0].entries >= 5);

    // A projector that is not there.
    let gone = crate::projector::HttpProjector::new("http://127.0.0.1:9", Duration::from_secs(1))
        .expect("client");
    assert!(gone.record(INSTANCE).await.is_err());
    for url in ["ftp://x", "https://projector:8081", "projector:8081"] {
        assert!(crate::projector::HttpProjector::new(url, Duration::from_secs(1)).is_err());
    }
}

#[test]
fn the_request_span_takes_the_instance_from_the_path() {
    use super::instance_in_path;
    assert_eq!(
        instance_in_path(&format!("/v1/instances/{INSTANCE}/executions")),
        Some(INSTANCE)
    );
    assert_eq!(instance_in_path("/v1/instances/abc"), Some("abc"));
    assert_eq!(instance_in_path("/v1/instances/"), None);
    assert_eq!(instance_in_path("/v1/proposals"), None);
}

mod signed_by_the_reviewer {
    use ed25519_dalek::{Signer, SigningKey};
    use warrant_authority::{signed, Attestation};

    use super::*;

    /// dave's own key: test material only.
    fn dave_key() -> SigningKey {
        SigningKey::from_bytes(&[0x2a; 32])
    }

    fn with_dave(h: &Harness) -> String {
        let public = hex::encode(dave_key().verifying_key().as_bytes());
        let text = String::from_utf8(example("principals.yaml")).expect("utf-8");
        let text = text.replacen(
            "reviewers:\n",
            &format!("reviewers:\n  - principal: dave\n    roles: [sre]\n    keys: [\"ed25519:{public}\"]\n"),
            1,
        );
        let principals = Principals::parse(text.as_bytes()).expect("valid principals");
        let snapshot = h.state.config.snapshot();
        h.state
            .config
            .replace(snapshot.ruleset.clone(), Arc::new(principals));
        signed::key_id(dave_key().verifying_key().as_bytes())
    }

    fn body(h: &Harness, digest: &str, key_id: &str) -> String {
        json!({
            "instance_id": INSTANCE,
            "action_digest": digest,
            "verdict": "APPROVE",
            "justification": "signed with my own key",
            "scope": { "constraints": {}, "not_after": null, "max_executions": null },
            "evidence_refs": [],
            "timestamp": h.clock.now_millis() / 1000,
            "key_id": key_id,
        })
        .to_string()
    }

    fn request(timestamp: i64, signature: &str, body: &str) -> Request<Body> {
        Request::builder()
            .method("POST")
            .uri(format!("/v1/instances/{INSTANCE}/decisions"))
            .header(header::CONTENT_TYPE, "application/json")
            .header("X-Warrant-Timestamp", timestamp.to_string())
            .header("X-Warrant-Signature", signature)
            .body(Body::from(body.to_owned()))
            .expect("request")
    }

    fn sign(body: &str) -> String {
        let payload = format!("{}{body}", signed::DECISION_PREFIX);
        format!(
            "ed25519={}",
            hex::encode(dave_key().sign(payload.as_bytes()).to_bytes())
        )
    }

    #[tokio::test]
    async fn a_signed_approval_is_recorded_with_its_proof_and_counts_once() {
        let h = harness();
        let key_id = with_dave(&h);
        let proposed = h.propose_restart(INSTANCE).await;
        let digest = proposed["action_digest"]
            .as_str()
            .expect("digest")
            .to_owned();
        h.post(
            &format!("/v1/instances/{INSTANCE}/signals"),
            Some(POLICY),
            &allow(),
        )
        .await
        .ok(StatusCode::ACCEPTED);
        let body = body(&h, &digest, &key_id);
        let now = h.clock.now_millis() / 1000;
        let answer = h.send(request(now, &sign(&body), &body)).await;
        let accepted = answer.ok(StatusCode::ACCEPTED).clone();
        assert_eq!(accepted["reviewer"]["principal"], "dave");
        assert_eq!(accepted["attestation"], "SIGNED_BY_REVIEWER");
        // A replayed signed request lands as a recorded duplicate.
        let again = h.send(request(now, &sign(&body), &body)).await;
        assert_eq!(
            again.ok(StatusCode::ACCEPTED)["event_id"],
            accepted["event_id"]
        );
        assert_eq!(h.refusals(INSTANCE), vec![RefusalCode::Duplicate]);
        let record = h.projector.record_of(INSTANCE).expect("record");
        assert_eq!(record.decisions.len(), 2);
        assert_eq!(
            record.decisions[0].attestation,
            Attestation::SignedByReviewer {
                key_id: key_id.clone(),
                public_key: hex::encode(dave_key().verifying_key().as_bytes()),
            }
        );
        let envelopes = h.log.envelopes();
        let EventBody::DecisionRecorded(decision) = &envelopes[2].body else {
            panic!("not a decision");
        };
        let proof = decision.proof.as_ref().expect("the proof is on the log");
        assert_eq!(
            proof.signed_payload,
            format!("{}{body}", signed::DECISION_PREFIX)
        );
    }

    #[tokio::test]
    async fn anything_but_a_good_signature_over_this_instances_digest_is_a_401() {
        let h = harness();
        let key_id = with_dave(&h);
        let proposed = h.propose_restart(INSTANCE).await;
        let digest = proposed["action_digest"]
            .as_str()
            .expect("digest")
            .to_owned();
        let now = h.clock.now_millis() / 1000;
        let good = body(&h, &digest, &key_id);
        let other_digest = body(&h, &"ab".repeat(32), &key_id);
        let unknown_key = body(&h, &digest, "0123456789abcdef");
        let cases: Vec<(Request<Body>, &str)> = vec![
            (
                request(now, &sign(&other_digest), &other_digest),
                "digest_mismatch",
            ),
            (
                request(now, &sign(&unknown_key), &unknown_key),
                "unknown_key",
            ),
            (
                request(now, &sign(&good), &good.replace("my own", "my 0wn")),
                "bad_signature",
            ),
            (request(now, "ed25519=zz", &good), "invalid_signature"),
            (request(now - 400, &sign(&good), &good), "stale_timestamp"),
            (request(now + 1, &sign(&good), &good), "stale_timestamp"),
        ];
        for (request, code) in cases {
            let answer = h.send(request).await;
            assert_eq!(
                (answer.status, answer.code()),
                (StatusCode::UNAUTHORIZED, code),
                "{}",
                answer.text
            );
        }
        assert_eq!(h.log.len(), 1, "nothing but the proposal was appended");
    }

    fn get_with(path: &str, headers: &[(&str, &str)]) -> Request<Body> {
        let mut builder = Request::builder().uri(path);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(Body::empty()).expect("request")
    }

    #[tokio::test]
    async fn a_reviewer_reads_after_signing_a_fresh_challenge_and_only_then() {
        let h = harness();
        let key_id = with_dave(&h);
        h.propose_restart(INSTANCE).await;
        let record_path = format!("/v1/instances/{INSTANCE}");
        let anonymous = h.send(get_with(&record_path, &[])).await;
        assert_eq!(
            (anonymous.status, anonymous.code()),
            (StatusCode::UNAUTHORIZED, "missing_session")
        );
        let challenge = h
            .send(post("/v1/sessions/challenge", None, String::new()))
            .await;
        let challenge = challenge.ok(StatusCode::CREATED)["challenge"]
            .as_str()
            .expect("challenge")
            .to_owned();
        let message = super::super::session_message(&challenge, &key_id);
        let signature = hex::encode(dave_key().sign(message.as_bytes()).to_bytes());
        let open = || {
            post(
                "/v1/sessions",
                None,
                json!({ "key_id": key_id, "challenge": challenge, "signature": signature })
                    .to_string(),
            )
        };
        let opened = h.send(open()).await;
        let cookie = opened
            .headers
            .get(header::SET_COOKIE)
            .and_then(|v| v.to_str().ok())
            .expect("a session cookie")
            .to_owned();
        assert!(
            cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
            "{cookie}"
        );
        let session = opened.ok(StatusCode::CREATED)["session"]
            .as_str()
            .expect("session")
            .to_owned();
        let cookie_header = format!("warrant_session={session}");
        let record = h
            .send(get_with(&record_path, &[("cookie", &cookie_header)]))
            .await;
        assert_eq!(record.ok(StatusCode::OK)["instance_id"], INSTANCE);
        let queue = h
            .send(get_with(
                "/v1/instances?status=AWAITING_SIGNALS&role=sre",
                &[("cookie", &cookie_header)],
            ))
            .await;
        let queue = queue.ok(StatusCode::OK).clone();
        assert_eq!(queue["instances"][0]["instance_id"], INSTANCE);
        assert_eq!(
            queue["instances"][0]["rule"]["approver_roles"],
            json!(["sre"])
        );
        let other_role = h
            .send(get_with(
                "/v1/instances?status=AWAITING_SIGNALS&role=payments",
                &[("cookie", &cookie_header)],
            ))
            .await;
        assert_eq!(other_role.ok(StatusCode::OK)["instances"], json!([]));
        // A challenge is good for one session only.
        let reused = h.send(open()).await;
        assert_eq!(
            (reused.status, reused.code()),
            (StatusCode::UNAUTHORIZED, "unknown_challenge")
        );
        // A session expires.
        h.clock.set(NOW_MS + 16 * 60_000);
        let expired = h
            .send(get_with(&record_path, &[("cookie", &cookie_header)]))
            .await;
        assert_eq!(expired.status, StatusCode::UNAUTHORIZED);
        // Bearer tokens read too.
        let bearer = format!("Bearer {SERVICE}");
        let with_token = h
            .send(get_with(&record_path, &[("authorization", &bearer)]))
            .await;
        assert_eq!(with_token.status, StatusCode::OK);
    }

    /// Given a rule of two groups (prod-access: one SRE and one security
    /// reviewer) and alice's approval, when the queue is read, then the item
    /// shows each group: the SRE place filled by alice, the security place
    /// still missing, which the summed "1 of 2" could not tell.
    #[tokio::test]
    async fn the_queue_shows_each_approval_group_and_what_it_still_misses() {
        let h = harness();
        let id = instance(0x51);
        let access = json!({
            "instance_id": id,
            "action": {
                "kind": "iam.grant",
                "target": "prod/payments",
                "parameters": { "role": "db-admin", "to": "dana" }
            },
            "proposer": { "kind": "AGENT" },
            "context_refs": [],
        });
        let proposed = h.post("/v1/proposals", Some(SERVICE), &access).await;
        assert_eq!(proposed.ok(StatusCode::ACCEPTED)["rule_id"], "prod-access");
        h.decide(&id, ALICE, &approve(&id))
            .await
            .ok(StatusCode::ACCEPTED);
        let bearer = format!("Bearer {SERVICE}");
        let queue = h
            .send(get_with(
                "/v1/instances?status=AWAITING_DECISION&role=security",
                &[("authorization", &bearer)],
            ))
            .await;
        let queue = queue.ok(StatusCode::OK).clone();
        let item = &queue["instances"][0];
        assert_eq!(item["instance_id"], json!(id));
        assert_eq!(
            item["approval_groups"],
            json!([
                { "roles": ["sre"], "count": 1, "counted": 1, "approved_by": ["alice"], "missing": 0 },
                { "roles": ["security"], "count": 1, "counted": 0, "approved_by": [], "missing": 1 },
            ])
        );
        // The summed form stays, for readers of the older queue.
        assert_eq!(item["rule"]["approvals_required"], 2);
        assert_eq!(item["decided_by"], json!(["alice"]));
        // A single-group rule has one group.
        h.propose_restart(INSTANCE).await;
        let queue = h
            .send(get_with(
                "/v1/instances?status=AWAITING_SIGNALS",
                &[("authorization", &bearer)],
            ))
            .await;
        assert_eq!(
            queue.ok(StatusCode::OK)["instances"][0]["approval_groups"],
            json!([{ "roles": ["sre"], "count": 2, "counted": 0, "approved_by": [], "missing": 2 }])
        );
    }

    #[tokio::test]
    async fn the_console_is_served_with_a_strict_content_security_policy() {
        let h = harness();
        for path in ["/console/", "/console/app.js", "/console/style.css"] {
            let answer = h.send(get_with(path, &[])).await;
            assert_eq!(answer.status, StatusCode::OK, "{path}");
            let csp = answer
                .headers
                .get(header::CONTENT_SECURITY_POLICY)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            assert!(
                csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
                "{csp}"
            );
        }
        let missing = h.send(get_with("/console/../principals.yaml", &[])).await;
        assert_ne!(missing.status, StatusCode::OK);
    }
}

#[tokio::test]
async fn a_replayed_decision_is_one_event_whichever_tag_or_key_signs_it() {
    let h = harness();
    h.propose_restart(INSTANCE).await;
    let path = format!("/v1/instances/{INSTANCE}/decisions");
    let timestamp = (h.clock.now_millis() / 1000).to_string();
    let body = approve(INSTANCE).to_string();
    let both = format!(
        "{},{}",
        signature::header_value(ALICE.as_bytes(), &timestamp, body.as_bytes()),
        signature::header_value(ALICE_NEW.as_bytes(), &timestamp, body.as_bytes())
    );
    let only_new = signature::header_value(ALICE_NEW.as_bytes(), &timestamp, body.as_bytes());
    let send = |tags: String| {
        Request::builder()
            .method("POST")
            .uri(&path)
            .header(header::CONTENT_TYPE, "application/json")
            .header("X-Warrant-Timestamp", &timestamp)
            .header("X-Warrant-Signature", tags)
            .body(Body::from(body.clone()))
            .expect("request")
    };
    let first = h.send(send(both)).await;
    let again = h.send(send(only_new)).await;
    assert_eq!(
        first.ok(StatusCode::ACCEPTED)["event_id"],
        again.ok(StatusCode::ACCEPTED)["event_id"]
    );
    assert_eq!(
        h.refusals(INSTANCE),
        vec![RefusalCode::SignalsPending, RefusalCode::Duplicate]
    );
}

#[tokio::test]
async fn invisible_constraint_keys_and_blank_override_justifications_are_400s() {
    let h = harness();
    h.propose_restart(INSTANCE).await;
    let cases = [
        (
            json!({ "instance_id": INSTANCE, "verdict": "APPROVE", "scope": { "constraints": { "region\u{200b}": "us" } } }),
            "invalid_field",
        ),
        (
            json!({ "instance_id": INSTANCE, "verdict": "APPROVE", "scope": { "constraints": { "": "us" } } }),
            "invalid_field",
        ),
        (
            json!({ "instance_id": INSTANCE, "verdict": "OVERRIDE", "justification": "\u{200b} \u{2060}" }),
            "justification_required",
        ),
    ];
    for (body, code) in cases {
        let answer = h.decide(INSTANCE, CAROL, &body).await;
        assert_eq!(
            (answer.status, answer.code()),
            (StatusCode::BAD_REQUEST, code),
            "{body}: {}",
            answer.text
        );
    }
    assert_eq!(h.log.len(), 1);
}

/// A request body that never arrives: headers sent, then nothing.
struct NeverEndingBody;

impl axum::body::HttpBody for NeverEndingBody {
    type Data = axum::body::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::task::Poll::Pending
    }
}

#[tokio::test(start_paused = true)]
async fn a_body_that_never_arrives_is_cut_off_not_waited_for_forever() {
    let h = harness();
    let request = Request::builder()
        .method("POST")
        .uri(format!("/v1/instances/{INSTANCE}/decisions"))
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, "60000")
        .body(Body::new(NeverEndingBody))
        .expect("request");
    // Paused time jumps to the body timeout as soon as nothing else runs.
    let answer = tokio::time::timeout(BODY_READ_TIMEOUT * 2, h.send(request))
        .await
        .expect("intake kept waiting on a body that never arrives");
    assert!(
        answer.status.is_client_error(),
        "{}: {}",
        answer.status,
        answer.text
    );
    assert_eq!(h.log.len(), 0);
}

// ------------------------------------------------------ waiting for a record

fn get_bearer(path: &str, token: &str) -> Request<Body> {
    Request::builder()
        .uri(path)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::empty())
        .expect("request")
}

#[tokio::test]
async fn a_record_wait_answers_when_the_next_entry_is_folded() {
    let h = Arc::new(harness());
    h.propose_restart(INSTANCE).await;
    let seen = h
        .send(get_bearer(&format!("/v1/instances/{INSTANCE}"), SERVICE))
        .await;
    let entries = seen.ok(StatusCode::OK)["history"]
        .as_array()
        .expect("history")
        .len();
    assert_eq!(entries, 1);

    let waiting = {
        let h = h.clone();
        tokio::spawn(async move {
            let path = format!("/v1/instances/{INSTANCE}?after_seq={entries}&wait_ms=20000");
            h.send(get_bearer(&path, SERVICE)).await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiting.is_finished(), "answered before anything changed");
    h.post(
        &format!("/v1/instances/{INSTANCE}/signals"),
        Some(POLICY),
        &allow(),
    )
    .await
    .ok(StatusCode::ACCEPTED);
    let answer = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("woken by the signal, long before wait_ms")
        .expect("the request task");
    let history = answer.ok(StatusCode::OK)["history"]
        .as_array()
        .expect("history")
        .len();
    assert_eq!(history, 2);
}

#[tokio::test]
async fn record_waits_refuse_bad_parameters_and_pass_on_a_full_projector() {
    let h = harness();
    h.propose_restart(INSTANCE).await;
    for query in ["after_seq=-1&wait_ms=10", "wait_ms=later", "wait=10"] {
        let path = format!("/v1/instances/{INSTANCE}?{query}");
        let answer = h.send(get_bearer(&path, SERVICE)).await;
        assert_eq!(
            (answer.status, answer.code()),
            (StatusCode::BAD_REQUEST, "invalid_query"),
            "{query}: {}",
            answer.text
        );
    }
    // Waiting needs the same credentials as reading, checked before the
    // parameters: an anonymous caller learns nothing.
    let path = format!("/v1/instances/{INSTANCE}?after_seq=1&wait_ms=10");
    let anonymous = h.send(get(&path)).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    let anonymous = h
        .send(get(&format!("/v1/instances/{INSTANCE}?probe=1")))
        .await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    // Beyond u64: clamped like any long wait, not refused.
    let huge = format!("/v1/instances/{INSTANCE}?after_seq=0&wait_ms=99999999999999999999");
    h.send(get_bearer(&huge, SERVICE)).await.ok(StatusCode::OK);

    // A wait that ends with nothing new answers the unchanged record.
    let unchanged = h.send(get_bearer(&path, EXECUTOR)).await;
    assert_eq!(
        unchanged.ok(StatusCode::OK)["history"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    // Still unknown when the wait ends: 404.
    let unknown = "00000000-0000-4000-8000-0000000000ff";
    let answer = h
        .send(get_bearer(
            &format!("/v1/instances/{unknown}?wait_ms=20"),
            SERVICE,
        ))
        .await;
    assert_eq!(
        (answer.status, answer.code()),
        (StatusCode::NOT_FOUND, "unknown_instance")
    );

    h.projector.busy.store(true, Ordering::SeqCst);
    let answer = h.send(get_bearer(&path, SERVICE)).await;
    assert_eq!(
        (answer.status, answer.code()),
        (StatusCode::SERVICE_UNAVAILABLE, "too_many_waiters")
    );
    assert_eq!(answer.headers[header::RETRY_AFTER], "1");
    // A plain read needs no waiter slot.
    let plain = h
        .send(get_bearer(&format!("/v1/instances/{INSTANCE}"), SERVICE))
        .await;
    plain.ok(StatusCode::OK);
}

#[tokio::test]
async fn one_caller_cannot_take_every_record_wait() {
    // The harness allows each caller two waits at once.
    let h = Arc::new(harness());
    h.propose_restart(INSTANCE).await;
    let path = format!("/v1/instances/{INSTANCE}?after_seq=1&wait_ms=20000");
    let holders: Vec<_> = (0..2)
        .map(|_| {
            let (h, path) = (h.clone(), path.clone());
            tokio::spawn(async move { h.send(get_bearer(&path, SERVICE)).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let third = h.send(get_bearer(&path, SERVICE)).await;
    assert_eq!(
        (third.status, third.code()),
        (StatusCode::SERVICE_UNAVAILABLE, "too_many_waiters"),
        "{}",
        third.text
    );
    assert_eq!(third.headers[header::RETRY_AFTER], "1");
    // Another caller still waits, and a plain read needs no share.
    let short = format!("/v1/instances/{INSTANCE}?after_seq=1&wait_ms=20");
    h.send(get_bearer(&short, EXECUTOR))
        .await
        .ok(StatusCode::OK);
    h.send(get_bearer(&format!("/v1/instances/{INSTANCE}"), SERVICE))
        .await
        .ok(StatusCode::OK);

    // The next entry answers both holders, and their shares come back.
    h.post(
        &format!("/v1/instances/{INSTANCE}/signals"),
        Some(POLICY),
        &allow(),
    )
    .await
    .ok(StatusCode::ACCEPTED);
    for holder in holders {
        let answer = tokio::time::timeout(Duration::from_secs(5), holder)
            .await
            .expect("woken by the signal")
            .expect("the request task");
        answer.ok(StatusCode::OK);
    }
    let again = format!("/v1/instances/{INSTANCE}?after_seq=2&wait_ms=20");
    h.send(get_bearer(&again, SERVICE)).await.ok(StatusCode::OK);
}
