//! The MCP server side: lists the upstream's tools and holds each call
//! until Warrant grants exactly its arguments (docs/mcp-gateway.md).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ListToolsResult, PaginatedRequestParams, ProgressNotificationParam, ProgressToken,
    ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, Peer, RoleClient, RoleServer, ServerHandler};
use tokio::sync::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use warrant_authority::{sha256_hex, StatusName};

use crate::action::{self, ActionError, ToolAction};
use crate::allow::AllowList;
use crate::decide::{self, Next, Record, Slot};
use crate::intake::{Claim, Intake, IntakeError, Outcome};
use crate::jcs;

/// How far along the epoch sequence a call may look for an unused id
/// before giving up: each step is one read, and a thousand earlier uses of
/// the very same arguments is far past any real workload.
const MAX_EPOCHS: u64 = 1000;

/// How long a claim may keep being retried while the fold is pending.
const CLAIM_PATIENCE: Duration = Duration::from_secs(30);

/// Longest text of an upstream error copied into a report's detail.
const MAX_DETAIL: usize = 2000;

/// At most this many `tools/list` pages are read for one read-only check,
/// and at most this many tools: an upstream that keeps answering with a
/// `nextCursor` must not grow the gateway without bound.
const MAX_LIST_PAGES: usize = 100;
const MAX_LISTED_TOOLS: usize = 10_000;

/// How long a granted call looks for its grant on the record before it
/// gives up (and reports the execution FAILED, not forwarded).
const GRANT_VISIBLE_PATIENCE: Duration = Duration::from_secs(10);

/// The gateway's settings that are not connections.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Used in every target: `<server>/<tool>`.
    pub server_name: String,
    pub allow: AllowList,
    /// How long one call may wait for review before returning a tool error.
    pub max_wait: Duration,
    /// How often a waiting call reports progress (and re-reads the record).
    pub progress_interval: Duration,
    /// The pause between reads when intake answers at once (no wait API).
    pub poll_interval: Duration,
    /// How long the upstream may take to answer a forwarded call.
    pub call_timeout: Duration,
}

/// Why a governed call did not return the upstream's result.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("not forwarded: {0}")]
    Action(#[from] ActionError),
    #[error("Warrant could not be reached, so nothing was forwarded (fail closed): {0}")]
    Intake(#[from] IntakeError),
    #[error(
        "Warrant instance {instance} is {status}{detail}; the call was not forwarded",
        status = status.as_str(),
        detail = detail.as_ref().map(|d| format!(" ({d})")).unwrap_or_default()
    )]
    Stopped {
        instance: String,
        status: StatusName,
        detail: Option<String>,
    },
    #[error("Warrant refused the claim on instance {instance} ({code}): {message}; the call was not forwarded")]
    ClaimRefused {
        instance: String,
        code: String,
        message: String,
    },
    #[error(
        "Warrant instance {instance} is still awaiting review ({status}) after {waited}s; \
         nothing ran. Retrying the same call (same tool, same arguments) continues the same instance."
    )]
    StillWaiting {
        instance: String,
        status: String,
        waited: u64,
    },
    #[error(
        "an identical call (same tool, same arguments) is already in progress through this gateway; \
         nothing ran for this one. Retry once it has returned."
    )]
    Busy,
    #[error(
        "the call was cancelled while Warrant instance {instance} awaited review; nothing ran"
    )]
    Cancelled { instance: String },
    #[error(
        "warrant-mcp was stopped while Warrant instance {instance} awaited review; nothing ran. \
         Retrying the same call continues the same instance."
    )]
    Stopping { instance: String },
    #[error("no unused Warrant instance id left for these arguments after {0} earlier uses")]
    EpochsExhausted(u64),
    #[error(
        "Warrant instance {instance} holds another action than this call (digest {found}, expected {expected}); not forwarded"
    )]
    DigestDiverged {
        instance: String,
        found: String,
        expected: String,
    },
    #[error("the upstream MCP server failed: {0}")]
    Upstream(String),
    #[error(
        "Warrant instance {instance} granted this call after it had granted another call on the same \
         approval; reported FAILED and not forwarded"
    )]
    NotFirstGrant { instance: String },
    #[error(
        "the grant on Warrant instance {instance} did not show on its record; reported FAILED and not forwarded (fail closed)"
    )]
    GrantUnseen { instance: String },
}

/// Why the upstream's tool listing could not be read (a tool is then not
/// taken for read-only).
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    #[error("the upstream did not list its tools within {0}s")]
    Timeout(u64),
    #[error("the upstream's tools/list failed: {0}")]
    Failed(String),
    #[error("the upstream's tool listing is longer than {MAX_LIST_PAGES} pages or {MAX_LISTED_TOOLS} tools")]
    TooLong,
    #[error("the upstream's tools/list repeated a cursor")]
    CursorLoop,
    #[error("warrant-mcp is stopping")]
    Stopping,
}

/// The lock of one action digest, and how many calls hold or await it.
type InFlight = (Arc<Mutex<()>>, usize);

struct Inner {
    settings: Settings,
    intake: Intake,
    upstream: Peer<RoleClient>,
    /// One lock per action digest: two identical calls at once would land
    /// on one instance and could both run on its one grant.
    in_flight: Mutex<HashMap<String, InFlight>>,
    /// Makes claim idempotency keys this process's own, so two gateways
    /// sharing an executor token never receive each other's grant.
    process_nonce: String,
    /// Cancelled when the gateway stops: calls still waiting for review
    /// return at once; calls already granted run to their report.
    shutdown: CancellationToken,
    /// Every call in progress, so a stop can wait for granted ones.
    calls: TaskTracker,
}

/// The gateway, one per process; cheap to clone (one per HTTP session).
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("server_name", &self.inner.settings.server_name)
            .field("intake", &self.inner.intake.base())
            .finish()
    }
}

impl Gateway {
    pub fn new(
        settings: Settings,
        intake: Intake,
        upstream: Peer<RoleClient>,
        shutdown: CancellationToken,
    ) -> Gateway {
        Gateway {
            inner: Arc::new(Inner {
                settings,
                intake,
                upstream,
                in_flight: Mutex::new(HashMap::new()),
                process_nonce: uuid::Uuid::new_v4().simple().to_string(),
                shutdown,
                calls: TaskTracker::new(),
            }),
        }
    }

    /// After the stop token was cancelled: waits up to `limit` for calls in
    /// progress (a granted call runs to its report), so no execution is
    /// left open on the log by a graceful stop.
    pub async fn drain(&self, limit: Duration) {
        self.inner.calls.close();
        let open = self.inner.calls.len();
        if open > 0 {
            tracing::info!(calls = open, "waiting for calls in progress to finish");
        }
        if tokio::time::timeout(limit, self.inner.calls.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                calls = self.inner.calls.len(),
                "calls still running at the stop; their executions stay open on the log"
            );
        }
    }

    /// How long one `tools/list` exchange with the upstream may take.
    fn list_timeout(&self) -> Duration {
        let settings = &self.inner.settings;
        settings.call_timeout.min(settings.max_wait)
    }

    /// The upstream's current listing of `name`, read afresh for every
    /// read-only decision (nothing is cached: an upstream that re-marks a
    /// tool is believed at the next call). Bounded in time, pages and tools;
    /// any failure means "not read-only".
    async fn listing(&self, name: &str) -> Option<Tool> {
        let limit = self.list_timeout();
        let found = tokio::select! {
            found = tokio::time::timeout(limit, find_tool(&self.inner.upstream, name)) => {
                found.unwrap_or(Err(ListError::Timeout(limit.as_secs())))
            }
            _ = self.inner.shutdown.cancelled() => Err(ListError::Stopping),
        };
        match found {
            Ok(tool) => tool,
            Err(error) => {
                tracing::warn!(error = %error, "cannot list the upstream's tools; '{name}' is not taken for read-only");
                None
            }
        }
    }

    /// One `tools/call`, always answered with a result (errors are tool
    /// errors the model can read, never protocol errors it cannot).
    pub async fn call(
        &self,
        params: CallToolRequestParams,
        context: &RequestContext<RoleServer>,
    ) -> CallToolResult {
        let _in_progress = self.inner.calls.token();
        if self.inner.shutdown.is_cancelled() {
            return tool_error("warrant-mcp is stopping; nothing was forwarded");
        }
        // --max-wait counts from here: a slow listing is part of the wait.
        let started = Instant::now();
        let tool = params.name.to_string();
        let arguments = params.arguments.unwrap_or_default();
        // The listing matters only for read-only hints; without the flag an
        // unlisted tool must not cost a tools/list round trip per call.
        let listing = if self.inner.settings.allow.read_only {
            self.listing(&tool).await
        } else {
            None
        };
        if self.inner.settings.allow.passes(&tool, listing.as_ref()) {
            tracing::info!(tool = %tool, "allow-listed: forwarded without a proposal");
            return match self.forward(&tool, arguments).await {
                Ok(result) => result,
                Err(error) => tool_error(&error.to_string()),
            };
        }
        let mut progress = Progress::new(context.peer.clone(), context.meta.get_progress_token());
        match self
            .govern(&tool, &arguments, &mut progress, &context.ct, started)
            .await
        {
            Ok(result) => result,
            Err(error) => {
                tracing::warn!(tool = %tool, error = %error, "the call ends with a tool error");
                tool_error(&error.to_string())
            }
        }
    }

    async fn govern(
        &self,
        tool: &str,
        arguments: &serde_json::Map<String, serde_json::Value>,
        progress: &mut Progress,
        cancelled: &CancellationToken,
        started: Instant,
    ) -> Result<CallToolResult, CallError> {
        let settings = &self.inner.settings;
        let call = action::build(&settings.server_name, tool, arguments)?;
        let deadline = saturating_deadline(started, settings.max_wait);

        let slot = self.acquire(&call.digest).await;
        let held = match tokio::time::timeout_at(deadline, slot.lock()).await {
            Ok(guard) => guard,
            Err(_) => {
                self.release(&call.digest).await;
                return Err(CallError::Busy);
            }
        };
        let outcome = self
            .govern_locked(tool, &call, progress, cancelled, started, deadline)
            .await;
        drop(held);
        self.release(&call.digest).await;
        outcome
    }

    async fn acquire(&self, digest: &str) -> Arc<Mutex<()>> {
        let mut in_flight = self.inner.in_flight.lock().await;
        let entry = in_flight
            .entry(digest.to_owned())
            .or_insert_with(|| (Arc::new(Mutex::new(())), 0));
        entry.1 += 1;
        entry.0.clone()
    }

    async fn release(&self, digest: &str) {
        let mut in_flight = self.inner.in_flight.lock().await;
        if let Some(entry) = in_flight.get_mut(digest) {
            entry.1 -= 1;
            if entry.1 == 0 {
                in_flight.remove(digest);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn govern_locked(
        &self,
        tool: &str,
        call: &ToolAction,
        progress: &mut Progress,
        cancelled: &CancellationToken,
        started: Instant,
        deadline: Instant,
    ) -> Result<CallToolResult, CallError> {
        let (instance, found) = self.locate(tool, call, deadline).await?;
        tracing::info!(instance = %instance, tool = %tool, digest = %call.digest, "call held for Warrant");
        let record = self
            .await_authorization(&instance, found, progress, cancelled, started, deadline)
            .await?;
        self.claim_and_run(tool, call, &instance, record, progress)
            .await
    }

    /// Walks the instance ids of this call (epoch 0, 1, …) to the first one
    /// not used up, and proposes there (a retry's proposal is idempotent).
    async fn locate(
        &self,
        tool: &str,
        call: &ToolAction,
        deadline: Instant,
    ) -> Result<(String, Option<Record>), CallError> {
        let intake = &self.inner.intake;
        let rationale = format!(
            "tools/call of '{tool}' on MCP server '{}', held by warrant-mcp",
            self.inner.settings.server_name
        );
        for epoch in 0..MAX_EPOCHS {
            let instance = action::instance_id(&call.action, epoch);
            let record = retry_transient(deadline, || intake.record(&instance, None)).await?;
            if decide::slot(record.as_ref()) == Slot::Used {
                tracing::debug!(instance = %instance, epoch, "used by an earlier call; next epoch");
                continue;
            }
            match retry_transient(deadline, || {
                intake.propose(&instance, &call.action, &rationale)
            })
            .await
            {
                Ok(()) => return Ok((instance, record)),
                Err(error) if error.code() == Some("instance_exists") => {
                    tracing::info!(instance = %instance, epoch, "id taken by another proposer; next epoch");
                    continue;
                }
                Err(error) => return Err(error.into()),
            }
        }
        Err(CallError::EpochsExhausted(MAX_EPOCHS))
    }

    async fn await_authorization(
        &self,
        instance: &str,
        mut record: Option<Record>,
        progress: &mut Progress,
        cancelled: &CancellationToken,
        started: Instant,
        deadline: Instant,
    ) -> Result<Record, CallError> {
        let settings = &self.inner.settings;
        loop {
            if let Some(current) = &record {
                match decide::next(current) {
                    Next::Claim => return Ok(current.clone()),
                    Next::Stop(stop) => {
                        return Err(CallError::Stopped {
                            instance: instance.to_owned(),
                            status: stop.status,
                            detail: stop.detail,
                        })
                    }
                    Next::Wait => {}
                }
            }
            progress
                .send(&waiting_message(instance, record.as_ref()))
                .await;
            let now = Instant::now();
            if now >= deadline {
                return Err(CallError::StillWaiting {
                    instance: instance.to_owned(),
                    status: status_text(record.as_ref()),
                    waited: started.elapsed().as_secs(),
                });
            }
            let wait = (deadline - now).min(settings.progress_interval);
            let seen = record.as_ref().map(Record::entries).unwrap_or(0);
            let asked = Instant::now();
            let read = tokio::select! {
                read = self.inner.intake.record(instance, Some((seen, wait.as_millis() as u64))) => read,
                _ = cancelled.cancelled() => return Err(CallError::Cancelled { instance: instance.to_owned() }),
                _ = self.inner.shutdown.cancelled() => return Err(CallError::Stopping { instance: instance.to_owned() }),
            };
            match read {
                Ok(Some(fresh)) => {
                    // An intake without the wait API answers at once with
                    // the same record: pause instead of spinning.
                    if fresh.entries() <= seen && asked.elapsed() < wait / 2 {
                        sleep_until_or(settings.poll_interval, deadline).await;
                    }
                    record = Some(fresh);
                }
                // Proposed moments ago and not folded yet.
                Ok(None) => sleep_until_or(settings.poll_interval, deadline).await,
                Err(error) if error.is_transient() => {
                    let pause = match &error {
                        IntakeError::Api {
                            retry_after: Some(seconds),
                            ..
                        } => Duration::from_secs(*seconds),
                        _ => Duration::from_secs(1),
                    };
                    tracing::debug!(instance = %instance, error = %error, "intake busy; asking again");
                    sleep_until_or(pause, deadline).await;
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    async fn claim_and_run(
        &self,
        tool: &str,
        call: &ToolAction,
        instance: &str,
        record: Record,
        progress: &mut Progress,
    ) -> Result<CallToolResult, CallError> {
        let intake = &self.inner.intake;
        let proposal = record.proposal.as_ref().ok_or_else(|| CallError::Stopped {
            instance: instance.to_owned(),
            status: StatusName::Authorized,
            detail: Some("the record shows no proposal".to_owned()),
        })?;
        if proposal.action_digest != call.digest {
            return Err(CallError::DigestDiverged {
                instance: instance.to_owned(),
                found: proposal.action_digest.clone(),
                expected: call.digest.clone(),
            });
        }
        // What runs is parsed from the authorized texts, and its digest is
        // recomputed from what will be forwarded, not copied from the record.
        let arguments = action::forwarded_arguments(&proposal.action)?;
        let forwarded = action::build(&self.inner.settings.server_name, tool, &arguments)?;
        let key = format!(
            "warrant-mcp-claim-{}-{}",
            self.inner.process_nonce,
            record.entries()
        );
        let claim_deadline = Instant::now() + CLAIM_PATIENCE;
        let claim = retry_transient(claim_deadline, || {
            intake.claim(instance, &forwarded.digest, &key)
        })
        .await?;
        let grant_id = match claim {
            Claim::Granted { grant_id } => grant_id,
            Claim::Refused { code, message } => {
                return Err(CallError::ClaimRefused {
                    instance: instance.to_owned(),
                    code,
                    message,
                })
            }
        };
        // Two callers held on one instance of a rule allowing several
        // executions can both be granted: only the first grant runs.
        if let Err(error) = self.check_first_grant(instance, &grant_id).await {
            let detail = format!("not forwarded: {error}");
            self.report(instance, &grant_id, Outcome::Failed, Some(&detail), None)
                .await;
            return Err(error);
        }
        progress
            .send(&format!(
                "Warrant instance {instance}: AUTHORIZED; running the call"
            ))
            .await;
        tracing::info!(instance = %instance, grant = %grant_id, "granted; forwarding the authorized arguments");

        let ran = tokio::time::timeout(
            self.inner.settings.call_timeout,
            self.inner
                .upstream
                .call_tool(CallToolRequestParams::new(tool.to_owned()).with_arguments(arguments)),
        )
        .await;
        let (outcome, detail, result) = match ran {
            Ok(Ok(result)) if result.is_error == Some(true) => {
                let text = result_text(&result);
                (Outcome::Failed, Some(text), Ok(result))
            }
            Ok(Ok(result)) => (Outcome::Succeeded, None, Ok(result)),
            Ok(Err(error)) => {
                let text = format!("the upstream call failed: {error}");
                (
                    Outcome::Failed,
                    Some(text.clone()),
                    Err(CallError::Upstream(text)),
                )
            }
            Err(_) => {
                let text = format!(
                    "the upstream did not answer within {}s; its outcome is unknown",
                    self.inner.settings.call_timeout.as_secs()
                );
                (
                    Outcome::Failed,
                    Some(text.clone()),
                    Err(CallError::Upstream(text)),
                )
            }
        };
        let result_digest = result
            .as_ref()
            .ok()
            .and_then(|r| serde_json::to_value(r).ok())
            .and_then(|value| jcs::canonicalize(&value).ok())
            .map(|text| sha256_hex(text.as_bytes()));
        let detail = detail.map(|d| truncate(&d, MAX_DETAIL));
        self.report(
            instance,
            &grant_id,
            outcome,
            detail.as_deref(),
            result_digest.as_deref(),
        )
        .await;
        result
    }

    /// Re-reads the record after a granted claim: the call runs only if its
    /// grant is on the record and no other grant came before it.
    async fn check_first_grant(&self, instance: &str, grant_id: &str) -> Result<(), CallError> {
        let intake = &self.inner.intake;
        let deadline = Instant::now() + GRANT_VISIBLE_PATIENCE;
        loop {
            let record = retry_transient(deadline, || intake.record(instance, None)).await?;
            match record
                .as_ref()
                .and_then(|r| decide::first_grant(r, grant_id))
            {
                Some(true) => return Ok(()),
                Some(false) => {
                    return Err(CallError::NotFirstGrant {
                        instance: instance.to_owned(),
                    })
                }
                None if Instant::now() < deadline => {
                    sleep_until_or(self.inner.settings.poll_interval, deadline).await;
                }
                None => {
                    return Err(CallError::GrantUnseen {
                        instance: instance.to_owned(),
                    })
                }
            }
        }
    }

    async fn report(
        &self,
        instance: &str,
        grant_id: &str,
        outcome: Outcome,
        detail: Option<&str>,
        result_digest: Option<&str>,
    ) {
        let intake = &self.inner.intake;
        let report_deadline = Instant::now() + CLAIM_PATIENCE;
        match retry_transient(report_deadline, || {
            intake.report(instance, grant_id, outcome, detail, result_digest)
        })
        .await
        {
            Ok(()) => {
                tracing::info!(instance = %instance, grant = %grant_id, outcome = ?outcome, "reported")
            }
            // The call ran (or was refused here): its result is the caller's
            // either way. The record keeps showing the open execution, which
            // is the truth the auditors see until someone reports it.
            Err(error) => {
                tracing::error!(instance = %instance, grant = %grant_id, error = %error, "could not report the outcome")
            }
        }
    }

    /// Forwards an allow-listed call untouched.
    async fn forward(
        &self,
        tool: &str,
        arguments: serde_json::Map<String, serde_json::Value>,
    ) -> Result<CallToolResult, CallError> {
        let call = self
            .inner
            .upstream
            .call_tool(CallToolRequestParams::new(tool.to_owned()).with_arguments(arguments));
        match tokio::time::timeout(self.inner.settings.call_timeout, call).await {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(error)) => Err(CallError::Upstream(error.to_string())),
            Err(_) => Err(CallError::Upstream(format!(
                "no answer within {}s",
                self.inner.settings.call_timeout.as_secs()
            ))),
        }
    }
}

impl ServerHandler for Gateway {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new(
                "warrant-mcp",
                env!("CARGO_PKG_VERSION"),
            ))
            .with_instructions(format!(
                "Tools of '{}' behind Warrant: a call that is not allow-listed runs only after \
                 Warrant's reviewers authorize exactly its arguments. A call that returns \
                 'still awaiting review' can be retried with the same arguments to keep waiting.",
                self.inner.settings.server_name
            ))
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let limit = self.list_timeout();
        match tokio::time::timeout(limit, self.inner.upstream.list_tools(request)).await {
            Ok(Ok(listed)) => Ok(listed),
            Ok(Err(error)) => Err(ErrorData::internal_error(
                format!("the upstream MCP server failed: {error}"),
                None,
            )),
            Err(_) => Err(ErrorData::internal_error(
                format!(
                    "the upstream MCP server did not list its tools within {}s",
                    limit.as_secs()
                ),
                None,
            )),
        }
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        Ok(self.call(request, &context).await.into())
    }
}

/// Progress notifications for one call, if the client asked for them.
struct Progress {
    peer: Peer<RoleServer>,
    token: Option<ProgressToken>,
    sent: u32,
}

impl Progress {
    fn new(peer: Peer<RoleServer>, token: Option<ProgressToken>) -> Progress {
        Progress {
            peer,
            token,
            sent: 0,
        }
    }

    async fn send(&mut self, message: &str) {
        let Some(token) = &self.token else {
            return;
        };
        self.sent += 1;
        let notification = ProgressNotificationParam::new(token.clone(), f64::from(self.sent))
            .with_message(message);
        if let Err(error) = self.peer.notify_progress(notification).await {
            tracing::debug!(error = %error, "progress notification not delivered");
        }
    }
}

fn status_text(record: Option<&Record>) -> String {
    record
        .and_then(|r| r.status)
        .map(|s| s.as_str().to_owned())
        .unwrap_or_else(|| "not folded yet".to_owned())
}

fn waiting_message(instance: &str, record: Option<&Record>) -> String {
    let approvals = record.map(Record::approvals).unwrap_or(0);
    format!(
        "Warrant instance {instance}: {} ({approvals} approval{} so far); waiting for review",
        status_text(record),
        if approvals == 1 { "" } else { "s" }
    )
}

fn tool_error(message: &str) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(message.to_owned())])
}

fn result_text(result: &CallToolResult) -> String {
    let texts: Vec<&str> = result
        .content
        .iter()
        .filter_map(|block| block.as_text().map(|t| t.text.as_str()))
        .collect();
    if texts.is_empty() {
        "the upstream returned an error result without text".to_owned()
    } else {
        texts.join("\n")
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// `start + wait`, or a year from `start` if that would overflow the clock.
fn saturating_deadline(start: Instant, wait: Duration) -> Instant {
    start
        .checked_add(wait)
        .or_else(|| start.checked_add(Duration::from_secs(365 * 24 * 3600)))
        .unwrap_or(start)
}

async fn sleep_until_or(pause: Duration, deadline: Instant) {
    // A huge Retry-After must not overflow the clock: it saturates at the deadline.
    let until = Instant::now()
        .checked_add(pause)
        .map_or(deadline, |at| at.min(deadline));
    tokio::time::sleep_until(until).await;
}

/// Pages through the upstream's `tools/list` for `name`, within
/// [`MAX_LIST_PAGES`] and [`MAX_LISTED_TOOLS`], stopping at a repeated
/// cursor. A name listed more than once is read-only only if every
/// listing of it says so (the first listing without the hint is returned).
pub async fn find_tool(upstream: &Peer<RoleClient>, name: &str) -> Result<Option<Tool>, ListError> {
    let mut cursor: Option<String> = None;
    let mut seen_cursors = std::collections::HashSet::new();
    let mut listed = 0usize;
    let mut found: Option<Tool> = None;
    for _ in 0..MAX_LIST_PAGES {
        let request = cursor
            .clone()
            .map(|c| PaginatedRequestParams::default().with_cursor(Some(c)));
        let page = upstream
            .list_tools(request)
            .await
            .map_err(|error| ListError::Failed(error.to_string()))?;
        listed = listed.saturating_add(page.tools.len());
        if listed > MAX_LISTED_TOOLS {
            return Err(ListError::TooLong);
        }
        for tool in page.tools {
            if tool.name != name {
                continue;
            }
            let read_only =
                |t: &Tool| t.annotations.as_ref().and_then(|a| a.read_only_hint) == Some(true);
            match &found {
                Some(earlier) if !read_only(earlier) => {}
                _ if found.is_none() || !read_only(&tool) => found = Some(tool),
                _ => {}
            }
        }
        match page.next_cursor {
            None => return Ok(found),
            Some(next) => {
                if !seen_cursors.insert(next.clone()) {
                    return Err(ListError::CursorLoop);
                }
                cursor = Some(next);
            }
        }
    }
    Err(ListError::TooLong)
}

/// Repeats `attempt` while intake answers 503 (nothing decided), until
/// `deadline`; any other answer is returned as it is.
async fn retry_transient<T, F, Fut>(deadline: Instant, mut attempt: F) -> Result<T, IntakeError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, IntakeError>>,
{
    loop {
        match attempt().await {
            Err(error) if error.is_transient() && Instant::now() < deadline => {
                let pause = match &error {
                    IntakeError::Api {
                        retry_after: Some(seconds),
                        ..
                    } => Duration::from_secs((*seconds).max(1)),
                    _ => Duration::from_secs(1),
                };
                tracing::debug!(error = %error, "intake busy; retrying");
                sleep_until_or(pause, deadline).await;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn still_waiting_names_the_instance_and_the_retry() {
        let text = CallError::StillWaiting {
            instance: "abc".into(),
            status: "AWAITING_DECISION".into(),
            waited: 50,
        }
        .to_string();
        assert!(text.contains("abc"), "{text}");
        assert!(text.contains("still awaiting review"), "{text}");
        assert!(text.contains("continues the same instance"), "{text}");
    }

    #[test]
    fn stops_name_status_detail_and_instance() {
        let text = CallError::Stopped {
            instance: "abc".into(),
            status: StatusName::Rejected,
            detail: Some("rejected by reviewer:bob: no".into()),
        }
        .to_string();
        assert_eq!(
            text,
            "Warrant instance abc is REJECTED (rejected by reviewer:bob: no); the call was not forwarded"
        );
        let refused = CallError::ClaimRefused {
            instance: "abc".into(),
            code: "DigestMismatch".into(),
            message: "m".into(),
        }
        .to_string();
        assert!(refused.contains("DigestMismatch") && refused.contains("abc"));
    }

    #[tokio::test]
    async fn a_huge_retry_after_saturates_at_the_deadline() {
        let deadline = Instant::now() + Duration::from_millis(20);
        tokio::time::timeout(
            Duration::from_secs(5),
            sleep_until_or(Duration::from_secs(u64::MAX), deadline),
        )
        .await
        .expect("returns at the deadline, without overflowing");
        let now = Instant::now();
        assert!(saturating_deadline(now, Duration::MAX) > now);
    }

    #[test]
    fn truncates_on_a_char_boundary() {
        assert_eq!(truncate("ééé", 3), "é…");
        assert_eq!(truncate("abc", 3), "abc");
    }
}
