//! What intake asks the projector, the one materialized view of the fold.
//! Intake never folds or decides itself: whether an instance exists, what a
//! claim was answered, and which deadlines are due all come from here.
//!
//! The contract (served by warrant-projector):
//! - `GET {base}/v1/instances/{id}` → 200 [`ExecutionRecord`] or 404;
//! - `GET {base}/v1/instances/{id}?after_seq=N&wait_ms=M` → the same, once
//!   the record has more than N entries or M ms have passed; 503
//!   `too_many_waiters` when every waiter slot is taken;
//! - `GET {base}/v1/instances/{id}/facts` → 200 [`InstanceFacts`] or 404;
//! - `GET {base}/v1/instances/{id}/entries?partition=P&offset=O&wait_ms=N`
//!   → 200 [`EntryView`] once the entry at that log position is folded and
//!   committed, or 404 `{"error":{"code":"not_folded"}}` after `wait_ms`;
//! - `GET {base}/v1/instances?status=S&limit=N&after=ID` → a [`Page`];
//! - `GET {base}/v1/deadlines?due_before=T&limit=N&after=C` → a
//!   [`DeadlinePage`]: the paused and authorized instances whose deadline
//!   is at or before T, in deadline order (the sweeper's one question);
//! - `GET {base}/v1/shard` → which partitions the projector folds;
//! - 421 `not_owner` from any per-instance call: the projector is one shard
//!   of several and the instance's partition is another's (see
//!   [`crate::shards::ShardedProjector`], which routes to the owner).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use warrant_authority::{EntryView, ExecutionRecord, InstanceFacts, LogPosition, StatusName};
use warrant_schema::DeadlineKind;

use crate::log::BoxFuture;

/// Largest `wait_ms` asked of the projector for a claim's entry.
pub const MAX_WAIT: Duration = Duration::from_secs(10);

/// Largest `wait_ms` of a record wait, the projector's own cap.
pub const MAX_RECORD_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ProjectorError {
    #[error("the projector at {url} is unreachable")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the projector answered {status} to {url}")]
    Status { url: String, status: u16 },
    #[error("cannot read the projector's answer to {url}")]
    Body {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("invalid projector url {0}: expected http://host:port (no TLS support is built in)")]
    Url(String),
    #[error("the projector at {url} has no free waiter slot")]
    Busy { url: String },
    #[error("the projector at {url} does not own the partition asked about (give intake every shard's URL)")]
    NotOwner { url: String },
    #[error("cannot route to the projector shards: {0}")]
    Sharding(String),
}

/// `GET /v1/shard`: the partitions one projector folds, of how many; both
/// `None` until it has resolved them against the log.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ShardInfo {
    pub topic: String,
    pub owned: Option<Vec<i32>>,
    pub log_partitions: Option<i32>,
}

/// One line of `GET /v1/instances`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceSummary {
    pub instance_id: String,
    pub status: Option<StatusName>,
    #[serde(default)]
    pub head_hash: Option<String>,
    #[serde(default)]
    pub entries: u64,
}

/// A page of `GET /v1/instances`; `next` is the cursor for the next page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page {
    pub instances: Vec<InstanceSummary>,
    pub next: Option<String>,
}

/// One line of `GET /v1/deadlines`: an instance waiting on a deadline
/// that is due.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DueDeadline {
    pub instance_id: String,
    /// `DECISION` (a paused instance) or `GRANT` (an authorized one).
    pub kind: DeadlineKind,
    /// Unix milliseconds.
    pub deadline: i64,
    pub status: Option<StatusName>,
    /// The instance's history length when read.
    pub entries: u64,
}

/// Where a [`DueDeadline`] sorts: deadline, instance id, kind.
pub type DeadlineKey = (i64, String, DeadlineKind);

fn kind_name(kind: DeadlineKind) -> &'static str {
    match kind {
        DeadlineKind::Decision => "DECISION",
        DeadlineKind::Grant => "GRANT",
    }
}

impl DueDeadline {
    pub fn key(&self) -> DeadlineKey {
        (self.deadline, self.instance_id.clone(), self.kind)
    }

    /// The cursor that resumes after this line.
    pub fn cursor(&self) -> String {
        cursor_of(&self.key())
    }
}

/// The projector's paging cursor of a key: `<deadline>:<instance id>:<KIND>`.
pub fn cursor_of((deadline, instance_id, kind): &DeadlineKey) -> String {
    format!("{deadline}:{instance_id}:{}", kind_name(*kind))
}

/// The key a cursor of the projector's names; `None` if it is not one.
pub fn parse_cursor(text: &str) -> Option<DeadlineKey> {
    let (deadline, rest) = text.split_once(':')?;
    let (instance_id, kind) = rest.rsplit_once(':')?;
    let kind = match kind {
        "DECISION" => DeadlineKind::Decision,
        "GRANT" => DeadlineKind::Grant,
        _ => return None,
    };
    if instance_id.is_empty() {
        return None;
    }
    Some((deadline.parse().ok()?, instance_id.to_owned(), kind))
}

/// A page of `GET /v1/deadlines`; `next` resumes after the last line the
/// projector examined, so a page may be short (even empty) with more to come.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadlinePage {
    pub deadlines: Vec<DueDeadline>,
    pub next: Option<String>,
}

/// The questions intake asks the projector.
pub trait Projector: Send + Sync + 'static {
    /// The execution record of an instance, `None` if the view has none.
    fn record<'a>(
        &'a self,
        instance_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<ExecutionRecord>, ProjectorError>>;

    /// What intake checks before taking an event for an instance, without
    /// its history; `None` if the view has no such instance.
    fn facts<'a>(
        &'a self,
        instance_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<InstanceFacts>, ProjectorError>>;

    /// The execution record once it has more than `after_seq` history
    /// entries, or as it is after `wait`; `None` if still unknown then.
    fn wait_record<'a>(
        &'a self,
        instance_id: &'a str,
        after_seq: u64,
        wait: Duration,
    ) -> BoxFuture<'a, Result<Option<ExecutionRecord>, ProjectorError>>;

    /// The history entry at `position`, waiting up to `wait` for the fold to
    /// reach it; `None` if it has not been folded by then.
    fn entry<'a>(
        &'a self,
        instance_id: &'a str,
        position: LogPosition,
        wait: Duration,
    ) -> BoxFuture<'a, Result<Option<EntryView>, ProjectorError>>;

    /// One page of instances in `status`, after the cursor.
    fn list<'a>(
        &'a self,
        status: StatusName,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Page, ProjectorError>>;

    /// One page of the deadlines due by `due_before` (deadline ≤ it, Unix
    /// ms), in deadline order, after the cursor.
    fn due<'a>(
        &'a self,
        due_before: i64,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<DeadlinePage, ProjectorError>>;
}

/// The projector over HTTP.
#[derive(Debug, Clone)]
pub struct HttpProjector {
    base: String,
    client: reqwest::Client,
}

impl HttpProjector {
    pub fn new(base: &str, request_timeout: Duration) -> Result<HttpProjector, ProjectorError> {
        let base = base.trim_end_matches('/').to_owned();
        // reqwest is built without TLS in this workspace: only plain http.
        if !base.starts_with("http://") {
            return Err(ProjectorError::Url(base));
        }
        let client = reqwest::Client::builder()
            .timeout(request_timeout)
            .connect_timeout(Duration::from_secs(2))
            .build()
            .map_err(|source| ProjectorError::Unreachable {
                url: base.clone(),
                source,
            })?;
        Ok(HttpProjector { base, client })
    }

    /// The base URL, without a trailing slash.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Which partitions this projector folds (`GET /v1/shard`).
    pub async fn shard(&self) -> Result<ShardInfo, ProjectorError> {
        let info: Option<ShardInfo> = self.get("/v1/shard", &[], None).await?;
        info.ok_or_else(|| {
            ProjectorError::Sharding(format!(
                "{}/v1/shard answered 404: this projector does not say which partitions it folds (it predates shards)",
                self.base
            ))
        })
    }

    /// GET `path` with `query`; `Ok(None)` on 404.
    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
        timeout: Option<Duration>,
    ) -> Result<Option<T>, ProjectorError> {
        let url = format!("{}{path}", self.base);
        let mut request = self.client.get(&url).query(query);
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        let response = request
            .send()
            .await
            .map_err(|source| ProjectorError::Unreachable {
                url: url.clone(),
                source,
            })?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if status == reqwest::StatusCode::MISDIRECTED_REQUEST {
            return Err(ProjectorError::NotOwner { url });
        }
        if !status.is_success() {
            return Err(ProjectorError::Status {
                url,
                status: status.as_u16(),
            });
        }
        response
            .json::<T>()
            .await
            .map(Some)
            .map_err(|source| ProjectorError::Body { url, source })
    }
}

/// Path segments we build are UUIDs we validated; still, never let one
/// change the path.
fn segment(text: &str) -> String {
    text.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect()
}

impl Projector for HttpProjector {
    fn record<'a>(
        &'a self,
        instance_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<ExecutionRecord>, ProjectorError>> {
        Box::pin(async move {
            self.get(
                &format!("/v1/instances/{}", segment(instance_id)),
                &[],
                None,
            )
            .await
        })
    }

    fn facts<'a>(
        &'a self,
        instance_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<InstanceFacts>, ProjectorError>> {
        Box::pin(async move {
            self.get(
                &format!("/v1/instances/{}/facts", segment(instance_id)),
                &[],
                None,
            )
            .await
        })
    }

    fn wait_record<'a>(
        &'a self,
        instance_id: &'a str,
        after_seq: u64,
        wait: Duration,
    ) -> BoxFuture<'a, Result<Option<ExecutionRecord>, ProjectorError>> {
        Box::pin(async move {
            let wait = wait.min(MAX_RECORD_WAIT);
            let query = [
                ("after_seq", after_seq.to_string()),
                ("wait_ms", wait.as_millis().to_string()),
            ];
            let found = self
                .get(
                    &format!("/v1/instances/{}", segment(instance_id)),
                    &query,
                    Some(wait + Duration::from_secs(5)),
                )
                .await;
            match found {
                // The only 503 a record wait gets: its waiter slots are full.
                Err(ProjectorError::Status { url, status: 503 }) => {
                    Err(ProjectorError::Busy { url })
                }
                other => other,
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
            let wait = wait.min(MAX_WAIT);
            let query = [
                ("partition", position.partition.to_string()),
                ("offset", position.offset.to_string()),
                ("wait_ms", wait.as_millis().to_string()),
            ];
            // The projector holds the request up to wait_ms before answering.
            let timeout = wait + Duration::from_secs(5);
            self.get(
                &format!("/v1/instances/{}/entries", segment(instance_id)),
                &query,
                Some(timeout),
            )
            .await
        })
    }

    fn list<'a>(
        &'a self,
        status: StatusName,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Page, ProjectorError>> {
        Box::pin(async move {
            let mut query = vec![
                ("status", status.as_str().to_owned()),
                ("limit", limit.to_string()),
            ];
            if let Some(after) = after {
                query.push(("after", after.to_owned()));
            }
            let page: Option<Page> = self.get("/v1/instances", &query, None).await?;
            Ok(page.unwrap_or(Page {
                instances: Vec::new(),
                next: None,
            }))
        })
    }

    fn due<'a>(
        &'a self,
        due_before: i64,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<DeadlinePage, ProjectorError>> {
        Box::pin(async move {
            let mut query = vec![
                // The projector takes a non-negative Unix time.
                ("due_before", due_before.max(0).to_string()),
                ("limit", limit.to_string()),
            ];
            if let Some(after) = after {
                query.push(("after", after.to_owned()));
            }
            let page: Option<DeadlinePage> = self.get("/v1/deadlines", &query, None).await?;
            // A 404 is a projector without the route (older than intake):
            // an error, never an empty page that would expire nothing.
            page.ok_or_else(|| ProjectorError::Status {
                url: format!("{}/v1/deadlines", self.base),
                status: 404,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn cursors_are_the_projectors_and_bad_ones_are_none() {
        let key: DeadlineKey = (
            1_800_000_000_000,
            "6f1c2b9e-4d0a-4c7e-9a51-0d2f3b8c7e11".to_owned(),
            DeadlineKind::Grant,
        );
        assert_eq!(
            cursor_of(&key),
            "1800000000000:6f1c2b9e-4d0a-4c7e-9a51-0d2f3b8c7e11:GRANT"
        );
        assert_eq!(parse_cursor(&cursor_of(&key)), Some(key));
        for bad in ["", "1:x", "one:x:GRANT", "1::GRANT", "1:x:Grant"] {
            assert_eq!(parse_cursor(bad), None, "{bad}");
        }
    }
}
