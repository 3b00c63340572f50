//! Every JSON request body of intake, through the real router: whatever a
//! client sends, on any route, with any of the example credentials, the
//! answer is never a 5xx other than 503, and every error is the JSON shape
//! `{"error": {"code", "message"}}`.
//!
//! The log is an in-memory stand-in and the projector folds it with the
//! real `Ledger`, so handlers run their whole validation and the claim path
//! gets the fold's answer. Input: one byte picks the route, one the
//! credential, one an Idempotency-Key; the rest is the body.
#![no_main]

use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request};
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;
use warrant_authority::{
    EntryView, ExecutionRecord, InstanceFacts, Ledger, LogPosition, StatusName,
};
use warrant_intake::config::{LoadedRuleset, Shared};
use warrant_intake::http::{
    router, AppState, CallerWaits, HttpOptions, ManualClock, Readiness, RecentInstances, Sessions,
};
use warrant_intake::log::{AppendError, Appended, BoxFuture, LogAppender};
use warrant_intake::metrics::Metrics;
use warrant_intake::principals::Principals;
use warrant_intake::projector::{DeadlinePage, Page, Projector, ProjectorError};
use warrant_schema::{samples, Envelope};

const NOW_MS: i64 = samples::PROPOSED_AT + 60_000;
const TOKENS: [&str; 3] = [
    "example-service-remediator-token-0001",
    "example-policy-opa-token-0001",
    "example-executor-deployer-token-0001",
];
const REVIEWER_SECRET: &str = "example-alice-secret-2026-11";

#[derive(Default)]
struct MemoryLog(Mutex<Vec<(String, Vec<u8>)>>);

impl MemoryLog {
    fn ledger(&self) -> Ledger {
        let mut ledger = Ledger::new();
        let records = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        for (offset, (key, bytes)) in records.iter().enumerate() {
            let position = LogPosition {
                partition: 0,
                offset: offset as i64,
            };
            ledger.apply(position, Some(key.as_bytes()), bytes);
        }
        ledger
    }
}

impl LogAppender for MemoryLog {
    fn append<'a>(
        &'a self,
        envelope: &'a Envelope,
    ) -> BoxFuture<'a, Result<Appended, AppendError>> {
        Box::pin(async move {
            let bytes = warrant_schema::encode(envelope).map_err(AppendError::Encode)?;
            let mut records = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            records.push((envelope.instance_id.clone(), bytes));
            Ok(Appended {
                partition: 0,
                offset: records.len() as i64 - 1,
            })
        })
    }
}

struct FoldingProjector(Arc<MemoryLog>);

impl Projector for FoldingProjector {
    fn record<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<ExecutionRecord>, ProjectorError>> {
        Box::pin(async move { Ok(self.0.ledger().get(id).map(|f| f.record())) })
    }

    fn facts<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<InstanceFacts>, ProjectorError>> {
        Box::pin(async move { Ok(self.0.ledger().get(id).map(|f| InstanceFacts::of(&f.state))) })
    }

    fn wait_record<'a>(
        &'a self,
        id: &'a str,
        _after_seq: u64,
        _wait: Duration,
    ) -> BoxFuture<'a, Result<Option<ExecutionRecord>, ProjectorError>> {
        self.record(id)
    }

    fn entry<'a>(
        &'a self,
        id: &'a str,
        position: LogPosition,
        _wait: Duration,
    ) -> BoxFuture<'a, Result<Option<EntryView>, ProjectorError>> {
        Box::pin(async move {
            Ok(self.0.ledger().get(id).and_then(|folded| {
                folded
                    .history
                    .iter()
                    .find(|entry| entry.position == position)
                    .map(EntryView::from)
            }))
        })
    }

    fn list<'a>(
        &'a self,
        _status: StatusName,
        _after: Option<&'a str>,
        _limit: usize,
    ) -> BoxFuture<'a, Result<Page, ProjectorError>> {
        Box::pin(async move {
            Ok(Page {
                instances: Vec::new(),
                next: None,
            })
        })
    }

    // Only the sweeper asks, and it does not run here.
    fn due<'a>(
        &'a self,
        _due_before: i64,
        _after: Option<&'a str>,
        _limit: usize,
    ) -> BoxFuture<'a, Result<DeadlinePage, ProjectorError>> {
        Box::pin(async move {
            Ok(DeadlinePage {
                deadlines: Vec::new(),
                next: None,
            })
        })
    }
}

fn config() -> &'static Shared {
    static CONFIG: OnceLock<Shared> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let ruleset =
            LoadedRuleset::parse(include_bytes!("../../deploy/examples/ruleset.yaml").to_vec())
                .expect("the example ruleset loads");
        let principals = Principals::parse(include_bytes!("../../deploy/examples/principals.yaml"))
            .expect("the example principals load");
        Shared::new(ruleset, principals)
    })
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    let [route, credential, key, body @ ..] = data else {
        return;
    };
    let log = Arc::new(MemoryLog::default());
    // The sample instance exists, so the per-instance routes reach their
    // validation instead of stopping at 404.
    let (_, proposal) = samples::envelopes().swap_remove(0);
    log.0.lock().unwrap_or_else(PoisonError::into_inner).push((
        proposal.instance_id.clone(),
        warrant_schema::encode(&proposal).expect("encodes"),
    ));
    let state = AppState {
        config: config().clone(),
        log: log.clone(),
        projector: Arc::new(FoldingProjector(log)),
        metrics: Arc::new(Metrics::new()),
        clock: Arc::new(ManualClock::at(NOW_MS)),
        readiness: Arc::new(Readiness::new(true)),
        recent: Arc::new(RecentInstances::new(0)),
        sessions: Arc::new(Sessions::default()),
        waits: Arc::new(CallerWaits::new(4)),
        options: HttpOptions {
            claim_timeout: Duration::from_millis(20),
            max_body_bytes: 65_536,
        },
    };
    let instance = samples::INSTANCE_ID;
    let paths = [
        "/v1/proposals".to_owned(),
        format!("/v1/instances/{instance}/signals"),
        format!("/v1/instances/{instance}/decisions"),
        format!("/v1/instances/{instance}/executions"),
        format!("/v1/instances/{instance}/reports"),
        format!("/v1/instances/{instance}/withdrawal"),
        "/v1/sessions".to_owned(),
    ];
    let path = &paths[usize::from(*route) % paths.len()];
    let mut builder = Request::builder()
        .method("POST")
        .uri(path.as_str())
        .header(header::CONTENT_TYPE, "application/json");
    match credential % 5 {
        0 => {}
        4 => {
            let timestamp = (NOW_MS / 1000).to_string();
            builder = builder
                .header("X-Warrant-Timestamp", timestamp.as_str())
                .header(
                    "X-Warrant-Signature",
                    warrant_intake::signature::header_value(
                        REVIEWER_SECRET.as_bytes(),
                        &timestamp,
                        body,
                    ),
                );
        }
        n => {
            builder = builder.header(
                header::AUTHORIZATION,
                format!("Bearer {}", TOKENS[usize::from(n) - 1]),
            );
        }
    }
    if key % 2 == 1 {
        builder = builder.header("Idempotency-Key", format!("key-{key}"));
    }
    let Ok(request) = builder.body(Body::from(body.to_vec())) else {
        return;
    };
    let response = runtime()
        .block_on(router(state).oneshot(request))
        .expect("the router never fails");
    let status = response.status().as_u16();
    assert!(status < 500 || status == 503, "{path}: answered {status}");
    if status >= 400 {
        let bytes = runtime()
            .block_on(axum::body::to_bytes(response.into_body(), 1 << 20))
            .expect("a body");
        let error: serde_json::Value = serde_json::from_slice(&bytes).expect("errors are JSON");
        assert!(error["error"]["code"].is_string(), "{path}: {error}");
    }
});
