//! The client against a stand-in intake that checks signatures with
//! `warrant_authority::signed` (not the client's code): a session opens
//! only with a valid signature over the challenge, reads carry the
//! session, decisions carry a signature over the prefix and the exact
//! body, and intake's error codes come back typed.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use warrant_authority::signed;
use warrant_client::{Client, Decision, Error, ErrorKind, QueueQuery, ReviewerKey, SignedScope};
use warrant_schema::DecisionVerdict;

const INSTANCE: &str = "6f1c2b9e-4d0a-4c7e-9a51-0d2f3b8c7e11";
const DIGEST: &str = "78a07f2ff9440dd82e55eb205ed9fb4928d80b291b34532957c322406816fdd4";
const CHALLENGE: &str = "c0ffee";
const SESSION: &str = "s3ss10n";

#[derive(Clone)]
struct Fake {
    public_key: String,
    key_id: String,
    /// The last decision body and headers received.
    decided: Arc<Mutex<Option<(String, String, String)>>>,
}

fn error(status: StatusCode, code: &str) -> Response {
    (
        status,
        Json(json!({ "error": { "code": code, "message": format!("fake {code}") } })),
    )
        .into_response()
}

fn has_session(headers: &HeaderMap) -> bool {
    headers
        .get("cookie")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("warrant_session={SESSION}"))
}

async fn challenge() -> Response {
    (
        StatusCode::CREATED,
        Json(json!({ "challenge": CHALLENGE, "expires_at": 1 })),
    )
        .into_response()
}

async fn open(State(fake): State<Fake>, Json(body): Json<Value>) -> Response {
    if body["key_id"] != fake.key_id.as_str() {
        return error(StatusCode::UNAUTHORIZED, "unknown_key");
    }
    let key = signed::parse_public_key(&fake.public_key).expect("the fake's key");
    let Ok(signature) = signed::parse_signature(body["signature"].as_str().unwrap_or("")) else {
        return error(StatusCode::UNAUTHORIZED, "invalid_signature");
    };
    let message = format!("warrant.session.v1\n{CHALLENGE}\n{}", fake.key_id);
    if signed::verify(&key, message.as_bytes(), &signature).is_err() {
        return error(StatusCode::UNAUTHORIZED, "bad_signature");
    }
    (
        StatusCode::CREATED,
        Json(json!({
            "reviewer": { "principal": "erin", "roles": ["sre"] },
            "key_id": fake.key_id,
            "expires_at": 2,
            "session": SESSION,
        })),
    )
        .into_response()
}

async fn whoami(headers: HeaderMap) -> Response {
    if !has_session(&headers) {
        return error(StatusCode::UNAUTHORIZED, "missing_session");
    }
    Json(json!({
        "reviewer": { "principal": "erin", "roles": ["sre"] },
        "key_id": "k",
        "expires_at": 2,
    }))
    .into_response()
}

async fn queue(
    headers: HeaderMap,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Response {
    if !has_session(&headers) {
        return error(StatusCode::UNAUTHORIZED, "missing_session");
    }
    assert_eq!(query.as_deref(), Some("role=sre&limit=5"));
    Json(json!({
        "instances": [{
            "instance_id": INSTANCE,
            "status": "AWAITING_DECISION",
            "entries": 2,
            "head_hash": "ab",
            "action": { "kind": "service.restart", "target": "prod/x", "parameters": {} },
            "action_digest": DIGEST,
            "proposer": { "principal": "svc:remediator", "kind": "SERVICE", "model": null },
            "proposed_at": 1000,
            "decision_deadline": 2000,
            "rule": { "rule_id": "r", "approvals_required": 2, "approver_roles": ["sre"],
                      "override_roles": ["ic"], "signed_decisions": false },
            "decided_by": ["frank"],
            "a_field_added_later": true
        }],
        "next": null
    }))
    .into_response()
}

async fn decide(
    State(fake): State<Fake>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    assert!(
        headers.get("cookie").is_none(),
        "decisions carry no session"
    );
    *fake.decided.lock().expect("lock") = Some((
        body.clone(),
        header("x-warrant-timestamp"),
        header("x-warrant-signature"),
    ));
    let key = signed::parse_public_key(&fake.public_key).expect("the fake's key");
    let signature = header("x-warrant-signature");
    let Some(Ok(signature)) = signature
        .strip_prefix("ed25519=")
        .map(signed::parse_signature)
    else {
        return error(StatusCode::UNAUTHORIZED, "invalid_signature");
    };
    let message = format!("{}{body}", signed::DECISION_PREFIX);
    if signed::verify(&key, message.as_bytes(), &signature).is_err() {
        return error(StatusCode::UNAUTHORIZED, "bad_signature");
    }
    let decision = signed::parse_payload(&message).expect("a decision");
    if decision.action_digest != DIGEST {
        return error(StatusCode::UNAUTHORIZED, "digest_mismatch");
    }
    (
        StatusCode::ACCEPTED,
        Json(json!({
            "instance_id": id,
            "event_id": "e1",
            "partition": 1,
            "offset": 7,
            "reviewer": { "principal": "erin", "roles": ["sre"] },
            "attestation": "SIGNED_BY_REVIEWER",
            "key_id": decision.key_id,
        })),
    )
        .into_response()
}

async fn broken() -> Response {
    (StatusCode::BAD_GATEWAY, "<html>proxy error</html>").into_response()
}

async fn serve(key: &ReviewerKey) -> (String, Fake) {
    let fake = Fake {
        public_key: key.public_key_hex(),
        key_id: key.key_id().to_owned(),
        decided: Arc::default(),
    };
    let app = Router::new()
        .route("/v1/sessions/challenge", post(challenge))
        .route("/v1/sessions", post(open))
        .route("/v1/session", get(whoami))
        .route("/v1/session", delete(|| async { StatusCode::NO_CONTENT }))
        .route("/v1/instances", get(queue))
        .route("/v1/instances/{id}", get(broken))
        .route("/v1/instances/{id}/decisions", post(decide))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, fake)
}

fn client(url: &str) -> Client {
    Client::new(url, Duration::from_secs(5)).expect("a valid url")
}

#[tokio::test]
async fn a_session_opened_with_the_key_carries_the_reads() {
    let key = ReviewerKey::from_seed(&[7u8; 32], None);
    let (url, _) = serve(&key).await;
    let mut client = client(&url);
    // Before a session, reads are refused with intake's code.
    let before = client.whoami().await.expect_err("no session");
    assert_eq!(before.code(), Some("missing_session"));
    assert_eq!(before.kind(), ErrorKind::Auth);

    let session = client.open_session(&key).await.expect("session");
    assert_eq!(session.reviewer.principal, "erin");
    assert!(matches!(
        client.whoami().await.expect("whoami"),
        warrant_client::Reader::Reviewer(_)
    ));
    let page = client
        .queue(&QueueQuery {
            role: Some("sre".to_owned()),
            limit: Some(5),
            ..QueueQuery::default()
        })
        .await
        .expect("queue");
    assert_eq!(page.instances.len(), 1);
    assert_eq!(page.instances[0].action_digest, DIGEST);
    assert_eq!(page.instances[0].decided_by, ["frank"]);
    client.close_session().await.expect("closed");
    assert!(client.whoami().await.is_err(), "the session is gone");
}

#[tokio::test]
async fn a_key_intake_does_not_know_is_refused_as_auth() {
    let known = ReviewerKey::from_seed(&[7u8; 32], None);
    let stranger = ReviewerKey::from_seed(&[9u8; 32], None);
    let (url, _) = serve(&known).await;
    let error = client(&url)
        .open_session(&stranger)
        .await
        .expect_err("unknown");
    assert!(
        matches!(&error, Error::Api { status: 401, code, .. } if code == "unknown_key"),
        "{error}"
    );
    assert_eq!(error.kind(), ErrorKind::Auth);
}

#[tokio::test]
async fn a_decision_is_signed_over_the_digest_shown_and_the_exact_body() {
    let key = ReviewerKey::from_seed(&[7u8; 32], None);
    let (url, fake) = serve(&key).await;
    let decision = Decision {
        verdict: DecisionVerdict::Approve,
        justification: "leak confirmed".to_owned(),
        scope: SignedScope {
            constraints: BTreeMap::from([("strategy".to_owned(), "rolling".to_owned())]),
            not_after: None,
            max_executions: Some(1),
        },
        evidence_refs: vec![],
    };
    let receipt = client(&url)
        .decide(&key, INSTANCE, DIGEST, &decision)
        .await
        .expect("accepted");
    assert_eq!(receipt.attestation, "SIGNED_BY_REVIEWER");
    assert_eq!(receipt.key_id, key.key_id());
    assert_eq!((receipt.partition, receipt.offset), (1, 7));
    let (body, timestamp, _) = fake.decided.lock().expect("lock").clone().expect("sent");
    let sent: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(sent["timestamp"].to_string(), timestamp, "header = body");
    assert_eq!(sent["instance_id"], INSTANCE);
    assert_eq!(sent["scope"]["constraints"]["strategy"], "rolling");

    // Signed over another digest: intake's refusal comes back typed.
    let error = client(&url)
        .decide(&key, INSTANCE, &"00".repeat(32), &decision)
        .await
        .expect_err("mismatch");
    assert_eq!(error.code(), Some("digest_mismatch"));
}

#[tokio::test]
async fn what_is_not_intake_answering_is_unavailable_or_unexpected() {
    let key = ReviewerKey::from_seed(&[7u8; 32], None);
    let (url, _) = serve(&key).await;
    let error = client(&url)
        .with_token("t")
        .record(INSTANCE)
        .await
        .expect_err("502");
    assert!(
        matches!(&error, Error::Unexpected { status: 502, .. }),
        "{error}"
    );
    assert_eq!(error.kind(), ErrorKind::Unavailable);

    let nobody = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a port");
    // The listener is dropped: nothing answers on that port now.
    let error = client(&format!("http://{nobody}"))
        .whoami()
        .await
        .expect_err("unreachable");
    assert!(matches!(error, Error::Unreachable { .. }), "{error}");
    assert_eq!(error.kind(), ErrorKind::Unavailable);

    let error = client(&url).record("not-a-uuid").await.expect_err("bad id");
    assert_eq!(error.kind(), ErrorKind::Usage);
    assert!(matches!(
        Client::new("ftp://x", Duration::from_secs(1)),
        Err(Error::Url { .. })
    ));
}
