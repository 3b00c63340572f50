//! The HTTP calls a reviewer makes to intake (docs/contract.md §6.1,
//! `crates/warrant-intake/openapi.json`).

use std::fmt;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::header::{HeaderValue, CONTENT_TYPE, COOKIE};
use reqwest::{Method, RequestBuilder, Url};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use warrant_authority::ExecutionRecord;
use warrant_schema::{Action, Proposer};

use crate::error::Error;
use crate::key::ReviewerKey;
use crate::sign::{session_message, sign_decision, Decision};

/// The cookie intake's sessions travel in.
pub const SESSION_COOKIE: &str = "warrant_session";

/// A reviewer as intake's directory lists them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub principal: String,
    pub roles: Vec<String>,
}

/// An open read-only session (the token itself stays inside [`Client`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub reviewer: Identity,
    pub key_id: String,
    /// Unix milliseconds.
    pub expires_at: i64,
}

/// Who intake says is reading: a reviewer's session or a bearer token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Reader {
    Reviewer(Session),
    Token { principal: String },
}

/// Which part of the queue to list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct QueueQuery {
    /// A status name; intake's default is `AWAITING_DECISION`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Only instances this role may approve or override.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// The `next` of the previous page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// 1 to 200; intake's default is 50.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// One page of the queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuePage {
    pub instances: Vec<QueueItem>,
    /// The `after` of the next page, when there is one.
    pub next: Option<String>,
}

/// An instance in the queue, with what a reviewer needs to pick it up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueItem {
    pub instance_id: String,
    pub status: String,
    pub entries: u64,
    pub head_hash: String,
    pub action: Action,
    pub action_digest: String,
    pub proposer: Proposer,
    /// Unix milliseconds.
    pub proposed_at: i64,
    /// Unix milliseconds.
    pub decision_deadline: i64,
    pub rule: QueueRule,
    /// Reviewers whose decisions the fold applied so far.
    #[serde(default)]
    pub decided_by: Vec<String>,
    /// Each approval group and where it stands: every one must be met, so
    /// this, not `rule.approvals_required` (their sum), says who is still
    /// needed. Empty from an intake that does not send it.
    #[serde(default)]
    pub approval_groups: Vec<QueueGroup>,
}

/// One approval group of a queued instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueGroup {
    pub roles: Vec<String>,
    /// Distinct principals the group needs.
    pub count: u32,
    /// How many approvals count for it now.
    pub counted: u32,
    /// Who they are, in the order they approved.
    pub approved_by: Vec<String>,
    /// `count - counted`: 0 once the group is met.
    pub missing: u32,
}

/// The rule an instance is held under, as the queue shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueRule {
    pub rule_id: String,
    pub approvals_required: i32,
    pub approver_roles: Vec<String>,
    pub override_roles: Vec<String>,
    #[serde(default)]
    pub signed_decisions: bool,
}

/// Intake's 202 for a signed decision: it is on the log (not yet folded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionReceipt {
    pub instance_id: String,
    pub event_id: String,
    pub partition: i32,
    pub offset: i64,
    pub reviewer: Identity,
    /// `SIGNED_BY_REVIEWER`.
    pub attestation: String,
    pub key_id: String,
}

/// How the client proves who is reading.
#[derive(Clone)]
enum Auth {
    None,
    Bearer(String),
    Session(String),
}

/// A client of one intake. Reads need either a session opened with a
/// reviewer's key ([`Client::open_session`]) or a bearer token
/// ([`Client::with_token`]); decisions are signed per request and need
/// neither.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    auth: Auth,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let auth = match self.auth {
            Auth::None => "none",
            Auth::Bearer(_) => "bearer token",
            Auth::Session(_) => "session",
        };
        f.debug_struct("Client")
            .field("base", &self.base.as_str())
            .field("auth", &auth)
            .finish()
    }
}

/// Unix seconds now, as a signed decision's `timestamp`.
pub fn unix_now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX)
        })
}

/// Unix milliseconds now.
pub fn unix_now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}

/// An instance id as the log spells it (lowercase, hyphenated), or why not.
pub fn canonical_instance_id(text: &str) -> Result<String, Error> {
    let lowered = text.trim().to_ascii_lowercase();
    match warrant_authority::instance_key(Some(lowered.as_bytes())) {
        Some(id) => Ok(id.to_owned()),
        None => Err(Error::Input(format!(
            "{text:?} is not an instance id (a UUID such as 6f1c2b9e-4d0a-4c7e-9a51-0d2f3b8c7e11)"
        ))),
    }
}

impl Client {
    /// A client of the intake at `base_url` (`http://host:port`, optionally
    /// with a path prefix), every request bounded by `timeout`.
    pub fn new(base_url: &str, timeout: Duration) -> Result<Client, Error> {
        let bad = |reason: &str| Error::Url {
            url: base_url.to_owned(),
            reason: reason.to_owned(),
        };
        let mut base = Url::parse(base_url).map_err(|error| bad(&error.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(bad("only http:// and https:// are supported"));
        }
        if base.cannot_be_a_base() || base.query().is_some() || base.fragment().is_some() {
            return Err(bad("expected scheme, host, port and at most a path"));
        }
        // Paths below are joined relative to the base: it must end in `/`
        // or `join` would replace its last segment.
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|error| bad(&error.to_string()))?;
        Ok(Client {
            http,
            base,
            auth: Auth::None,
        })
    }

    /// Read with a bearer token (any kind) instead of a reviewer's session.
    pub fn with_token(mut self, token: &str) -> Client {
        self.auth = Auth::Bearer(token.to_owned());
        self
    }

    /// The intake this client talks to.
    pub fn base_url(&self) -> &str {
        self.base.as_str()
    }

    fn url(&self, segments: &[&str]) -> Result<Url, Error> {
        let mut url = self.base.clone();
        {
            let mut path = url.path_segments_mut().map_err(|()| Error::Url {
                url: self.base.to_string(),
                reason: "cannot be a base".to_owned(),
            })?;
            // Drops the empty segment the trailing `/` leaves, then appends
            // each segment percent-encoded.
            path.pop_if_empty();
            path.extend(segments);
        }
        Ok(url)
    }

    fn request(&self, method: Method, url: Url) -> RequestBuilder {
        let builder = self.http.request(method, url);
        match &self.auth {
            Auth::None => builder,
            Auth::Bearer(token) => builder.bearer_auth(token),
            Auth::Session(token) => builder.header(
                COOKIE,
                HeaderValue::from_str(&format!("{SESSION_COOKIE}={token}"))
                    .unwrap_or_else(|_| HeaderValue::from_static("")),
            ),
        }
    }

    /// Send and read the answer: `T` on a 2xx, else intake's error.
    async fn send<T: DeserializeOwned>(&self, builder: RequestBuilder) -> Result<T, Error> {
        let (url, status, body) = self.exchange(builder).await?;
        if (200..300).contains(&status) {
            return serde_json::from_slice(&body).map_err(|error| Error::Unexpected {
                url,
                status,
                detail: format!("not the expected JSON: {error}"),
            });
        }
        Err(api_error(url, status, &body))
    }

    async fn exchange(&self, builder: RequestBuilder) -> Result<(String, u16, Vec<u8>), Error> {
        let request = builder
            .build()
            .map_err(|error| Error::Input(error.to_string()))?;
        let url = request.url().to_string();
        let unreachable = |error: reqwest::Error| Error::Unreachable {
            url: self.base.to_string(),
            reason: describe(&error),
        };
        let response = self.http.execute(request).await.map_err(unreachable)?;
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(unreachable)?;
        Ok((url, status, body.to_vec()))
    }

    /// Open a read-only session by signing a fresh challenge with `key`;
    /// later reads through this client use it.
    pub async fn open_session(&mut self, key: &ReviewerKey) -> Result<Session, Error> {
        #[derive(Deserialize)]
        struct Challenge {
            challenge: String,
        }
        let challenge: Challenge = self
            .send(self.request(Method::POST, self.url(&["v1", "sessions", "challenge"])?))
            .await?;
        let signature =
            key.sign_hex(session_message(&challenge.challenge, key.key_id()).as_bytes());
        let body = json!({
            "key_id": key.key_id(),
            "challenge": challenge.challenge,
            "signature": signature,
        });
        let opened: Value = self
            .send(
                self.request(Method::POST, self.url(&["v1", "sessions"])?)
                    .json(&body),
            )
            .await?;
        let token = opened["session"]
            .as_str()
            .filter(|token| !token.is_empty())
            .map(str::to_owned);
        let session = serde_json::from_value::<Session>(opened).ok();
        let (Some(token), Some(session)) = (token, session) else {
            return Err(Error::Unexpected {
                url: self.url(&["v1", "sessions"])?.to_string(),
                status: 201,
                detail: "no session in the answer".to_owned(),
            });
        };
        self.auth = Auth::Session(token);
        Ok(session)
    }

    /// Close the session this client holds, if any (best effort on the
    /// server: an unknown session is not an error).
    pub async fn close_session(&mut self) -> Result<(), Error> {
        if !matches!(self.auth, Auth::Session(_)) {
            return Ok(());
        }
        let (url, status, body) = self
            .exchange(self.request(Method::DELETE, self.url(&["v1", "session"])?))
            .await?;
        self.auth = Auth::None;
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(api_error(url, status, &body))
        }
    }

    /// Who intake says is reading.
    pub async fn whoami(&self) -> Result<Reader, Error> {
        self.send(self.request(Method::GET, self.url(&["v1", "session"])?))
            .await
    }

    /// One page of the reviewers' queue.
    pub async fn queue(&self, query: &QueueQuery) -> Result<QueuePage, Error> {
        self.send(
            self.request(Method::GET, self.url(&["v1", "instances"])?)
                .query(query),
        )
        .await
    }

    /// The execution record of one instance.
    pub async fn record(&self, instance_id: &str) -> Result<ExecutionRecord, Error> {
        let id = canonical_instance_id(instance_id)?;
        self.send(self.request(Method::GET, self.url(&["v1", "instances", &id])?))
            .await
    }

    /// Sign `decision` over `action_digest` with `key`, timestamped now,
    /// and post it. The digest is the caller's: it must be the one the
    /// reviewer was shown, so that what was approved is what was seen
    /// (intake refuses `digest_mismatch` if the instance proposes another).
    pub async fn decide(
        &self,
        key: &ReviewerKey,
        instance_id: &str,
        action_digest: &str,
        decision: &Decision,
    ) -> Result<DecisionReceipt, Error> {
        let id = canonical_instance_id(instance_id)?;
        let request = sign_decision(key, &id, action_digest, decision, unix_now_secs())?;
        // Decisions carry no session or token: the signature is the
        // reviewer's identity.
        let builder = self
            .http
            .post(self.url(&["v1", "instances", &id, "decisions"])?)
            .header(CONTENT_TYPE, "application/json")
            .header("X-Warrant-Timestamp", request.timestamp.to_string())
            .header("X-Warrant-Signature", &request.signature_header)
            .body(request.body);
        self.send(builder).await
    }

    /// The record once the fold has made an entry of `event_id`, polling
    /// until `timeout`; `None` if it has not by then (the event is on the
    /// log and will still be folded).
    pub async fn await_event(
        &self,
        instance_id: &str,
        event_id: &str,
        timeout: Duration,
    ) -> Result<Option<ExecutionRecord>, Error> {
        let started = Instant::now();
        loop {
            let record = self.record(instance_id).await?;
            if record
                .history
                .iter()
                .any(|entry| entry.event_id.as_deref() == Some(event_id))
            {
                return Ok(Some(record));
            }
            if started.elapsed() >= timeout {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Intake's `{"error":{"code","message"}}`, or what else came back.
fn api_error(url: String, status: u16, body: &[u8]) -> Error {
    #[derive(Deserialize)]
    struct Body {
        error: Inner,
    }
    #[derive(Deserialize)]
    struct Inner {
        code: String,
        #[serde(default)]
        message: String,
    }
    match serde_json::from_slice::<Body>(body) {
        Ok(Body { error }) => Error::Api {
            status,
            code: error.code,
            message: error.message,
        },
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let mut detail: String = text.chars().take(200).collect();
            if detail.trim().is_empty() {
                detail = "no Warrant error in the body".to_owned();
            }
            Error::Unexpected {
                url,
                status,
                detail,
            }
        }
    }
}

/// A transport error in one line, with its causes (reqwest's own message
/// is often just "error sending request").
fn describe(error: &reqwest::Error) -> String {
    let mut text = if error.is_timeout() {
        "timed out".to_owned()
    } else if error.is_connect() {
        "connection failed".to_owned()
    } else {
        error.to_string()
    };
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
