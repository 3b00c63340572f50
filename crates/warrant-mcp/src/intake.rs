//! The gateway's side of intake's HTTP API (docs/contract.md §6.1): propose,
//! read (and wait on) a record, claim, report.

use std::time::Duration;

use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::json;
use warrant_schema::Action;

use crate::decide::Record;

/// Time allowed for one request besides a deliberate wait.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error("intake at {url} is unreachable: {message}")]
    Unreachable { url: String, message: String },
    #[error("intake answered {status} {code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
        /// `Retry-After` in seconds, when intake sent one (503s).
        retry_after: Option<u64>,
    },
    #[error("intake's answer to {what} could not be read: {message}")]
    Unreadable { what: &'static str, message: String },
}

impl IntakeError {
    pub fn code(&self) -> Option<&str> {
        match self {
            IntakeError::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Worth asking again: nothing was decided (intake or its log or
    /// projector is busy), as opposed to a refusal.
    pub fn is_transient(&self) -> bool {
        match self {
            IntakeError::Api { status, .. } => *status == 503,
            IntakeError::Unreachable { .. } => false,
            IntakeError::Unreadable { .. } => false,
        }
    }
}

/// What a claim came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    Granted {
        grant_id: String,
    },
    /// 409: the fold's refusal code (`DigestMismatch`, `Expired`, …).
    Refused {
        code: String,
        message: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    Failed,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "SUCCEEDED",
            Outcome::Failed => "FAILED",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Intake {
    http: reqwest::Client,
    base: String,
    service_token: String,
    executor_token: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    code: String,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
struct GrantBody {
    grant_id: String,
}

impl Intake {
    pub fn new(
        base: &str,
        service_token: String,
        executor_token: String,
    ) -> Result<Intake, IntakeError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|error| IntakeError::Unreachable {
                url: base.to_owned(),
                message: error.to_string(),
            })?;
        Ok(Intake {
            http,
            base: base.trim_end_matches('/').to_owned(),
            service_token,
            executor_token,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// `POST /v1/proposals` with a chosen instance id. A true retry is
    /// answered 202 with the original event, so proposing again is how a
    /// retry checks that an instance found on the sequence is this
    /// principal's own (another's is 409 `instance_exists`).
    pub async fn propose(
        &self,
        instance_id: &str,
        action: &Action,
        rationale: &str,
    ) -> Result<(), IntakeError> {
        let body = json!({
            "instance_id": instance_id,
            "action": action,
            "proposer": {"kind": "AGENT"},
            "rationale": rationale,
        });
        let url = format!("{}/v1/proposals", self.base);
        let response = self
            .send(
                self.http
                    .post(&url)
                    .bearer_auth(&self.service_token)
                    .timeout(REQUEST_TIMEOUT)
                    .json(&body),
                &url,
            )
            .await?;
        if response.status().is_success() {
            return Ok(());
        }
        Err(api_error(response).await)
    }

    /// `GET /v1/instances/{id}`, waiting up to `wait_ms` for more than
    /// `after_seq` entries when asked. `None`: intake knows no such instance.
    pub async fn record(
        &self,
        instance_id: &str,
        wait: Option<(u64, u64)>,
    ) -> Result<Option<Record>, IntakeError> {
        let mut url = format!("{}/v1/instances/{}", self.base, instance_id);
        let mut timeout = REQUEST_TIMEOUT;
        if let Some((after_seq, wait_ms)) = wait {
            url.push_str(&format!("?after_seq={after_seq}&wait_ms={wait_ms}"));
            timeout += Duration::from_millis(wait_ms);
        }
        let response = self
            .send(
                self.http
                    .get(&url)
                    .bearer_auth(&self.service_token)
                    .timeout(timeout),
                &url,
            )
            .await?;
        match response.status() {
            status if status.is_success() => {
                response
                    .json::<Record>()
                    .await
                    .map(Some)
                    .map_err(|error| IntakeError::Unreadable {
                        what: "a record read",
                        message: error.to_string(),
                    })
            }
            StatusCode::NOT_FOUND => match api_error(response).await {
                IntakeError::Api { code, .. } if code == "unknown_instance" => Ok(None),
                other => Err(other),
            },
            _ => Err(api_error(response).await),
        }
    }

    /// `POST /v1/instances/{id}/executions` with the digest of exactly what
    /// is about to run. The idempotency key makes a retry after 503
    /// `fold_pending` get the first attempt's answer, not a second grant.
    pub async fn claim(
        &self,
        instance_id: &str,
        action_digest: &str,
        idempotency_key: &str,
    ) -> Result<Claim, IntakeError> {
        let url = format!("{}/v1/instances/{}/executions", self.base, instance_id);
        let response = self
            .send(
                self.http
                    .post(&url)
                    .bearer_auth(&self.executor_token)
                    .header("Idempotency-Key", idempotency_key)
                    .timeout(REQUEST_TIMEOUT)
                    .json(&json!({ "action_digest": action_digest })),
                &url,
            )
            .await?;
        match response.status() {
            StatusCode::CREATED | StatusCode::OK => response
                .json::<GrantBody>()
                .await
                .map(|grant| Claim::Granted {
                    grant_id: grant.grant_id,
                })
                .map_err(|error| IntakeError::Unreadable {
                    what: "a claim",
                    message: error.to_string(),
                }),
            StatusCode::CONFLICT => match api_error(response).await {
                IntakeError::Api { code, message, .. } => Ok(Claim::Refused { code, message }),
                other => Err(other),
            },
            _ => Err(api_error(response).await),
        }
    }

    /// `POST /v1/instances/{id}/reports`; keyed by the grant so a retried
    /// report is a recorded duplicate.
    pub async fn report(
        &self,
        instance_id: &str,
        grant_id: &str,
        outcome: Outcome,
        detail: Option<&str>,
        result_digest: Option<&str>,
    ) -> Result<(), IntakeError> {
        let url = format!("{}/v1/instances/{}/reports", self.base, instance_id);
        let body = json!({
            "grant_id": grant_id,
            "outcome": outcome.as_str(),
            "detail": detail,
            "result_digest": result_digest,
        });
        let response = self
            .send(
                self.http
                    .post(&url)
                    .bearer_auth(&self.executor_token)
                    .header("Idempotency-Key", format!("warrant-mcp-report-{grant_id}"))
                    .timeout(REQUEST_TIMEOUT)
                    .json(&body),
                &url,
            )
            .await?;
        if response.status().is_success() {
            return Ok(());
        }
        Err(api_error(response).await)
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<reqwest::Response, IntakeError> {
        request
            .send()
            .await
            .map_err(|error| IntakeError::Unreachable {
                url: url.to_owned(),
                message: warrant_authority::error_chain(&error),
            })
    }
}

async fn api_error(response: reqwest::Response) -> IntakeError {
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse().ok());
    let text = response.text().await.unwrap_or_default();
    match serde_json::from_str::<ErrorBody>(&text) {
        Ok(body) => IntakeError::Api {
            status,
            code: body.error.code,
            message: body.error.message,
            retry_after,
        },
        Err(_) => IntakeError::Api {
            status,
            code: format!("http_{status}"),
            message: text.chars().take(200).collect(),
            retry_after,
        },
    }
}
