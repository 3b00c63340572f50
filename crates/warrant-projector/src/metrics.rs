//! `/metrics`: what the fold did, how far behind the log it is, and how
//! the HTTP API answers (Prometheus/OpenMetrics text via prometheus-client).

use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, PoisonError};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use warrant_authority::StatusName;

use crate::paused::{OldestPaused, PAUSED};
use crate::projection::BatchStats;
use crate::store::StatusCounts;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabel {
    pub partition: i32,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabel {
    pub route: String,
    pub status: u16,
}

/// Label value for instances without a proposal.
pub const NO_STATUS_LABEL: &str = "NONE";

/// Every metric the projector exports, registered once.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub records_folded: Counter,
    pub refusals: Family<CodeLabel, Counter>,
    pub malformed: Counter,
    pub violations: Counter,
    pub batches: Counter,
    pub consumed_offset: Family<PartitionLabel, Gauge>,
    pub lag_records: Family<PartitionLabel, Gauge>,
    pub fold_lag_seconds: Family<PartitionLabel, Gauge<f64, AtomicU64>>,
    pub instances: Family<StatusLabel, Gauge>,
    pub oldest_paused_age_seconds: Family<StatusLabel, Gauge<f64, AtomicU64>>,
    /// As of the last commit; turned into ages when scraped.
    oldest_paused: Mutex<OldestPaused>,
    pub commit_seconds: Histogram,
    pub http_seconds: Family<HttpLabel, Histogram>,
    /// Record long-polls holding a waiter slot right now.
    pub record_waiters: Gauge,
    /// Record long-polls turned away because every slot was taken.
    pub waiters_refused: Counter,
    /// Failed attempts to write a batch (full disk, I/O errors).
    pub storage_errors: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("warrant_projector");
        let metrics = Metrics {
            records_folded: Counter::default(),
            refusals: Family::default(),
            malformed: Counter::default(),
            violations: Counter::default(),
            batches: Counter::default(),
            consumed_offset: Family::default(),
            lag_records: Family::default(),
            fold_lag_seconds: Family::default(),
            instances: Family::default(),
            oldest_paused_age_seconds: Family::default(),
            oldest_paused: Mutex::new(PAUSED.map(|status| (status, None))),
            commit_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            http_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 14))
            }),
            record_waiters: Gauge::default(),
            waiters_refused: Counter::default(),
            storage_errors: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "records_folded",
            "Log records folded into the view",
            metrics.records_folded.clone(),
        );
        registry.register(
            "refusals",
            "Events recorded as refusals, by refusal code",
            metrics.refusals.clone(),
        );
        registry.register(
            "malformed_records",
            "Log records whose bytes are not an Envelope",
            metrics.malformed.clone(),
        );
        registry.register(
            "violations",
            "Events applied as violations (something ran without authority)",
            metrics.violations.clone(),
        );
        registry.register(
            "batches_committed",
            "Batches applied to sled and flushed",
            metrics.batches.clone(),
        );
        registry.register(
            "consumed_offset",
            "Next offset to consume per partition, as committed to sled",
            metrics.consumed_offset.clone(),
        );
        registry.register(
            "lag_records",
            "Records on the log not yet committed to the view, per partition",
            metrics.lag_records.clone(),
        );
        registry.register(
            "fold_lag_seconds",
            "Now minus recorded_at of the last event folded from a partition, at the last commit (0 when caught up)",
            metrics.fold_lag_seconds.clone(),
        );
        registry.register(
            "oldest_paused_age_seconds",
            "Now minus the proposal time of the longest-waiting instance in each paused status (0 when none)",
            metrics.oldest_paused_age_seconds.clone(),
        );
        registry.register(
            "instances",
            "Instances in the view by status (NONE: no proposal)",
            metrics.instances.clone(),
        );
        registry.register(
            "commit_seconds",
            "Time to apply and flush one batch",
            metrics.commit_seconds.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by route and status",
            metrics.http_seconds.clone(),
        );
        registry.register(
            "record_waiters",
            "Requests waiting on GET /v1/instances/{id}?wait_ms for a record to change",
            metrics.record_waiters.clone(),
        );
        registry.register(
            "storage_errors",
            "Attempts to apply or flush a batch that the disk refused (each is retried)",
            metrics.storage_errors.clone(),
        );
        registry.register(
            "record_waiters_refused",
            "Record waits answered 503 too_many_waiters (every waiter slot taken)",
            metrics.waiters_refused.clone(),
        );
        // Pre-create the per-code and per-status series so dashboards see zeros.
        for code in warrant_authority::RefusalCode::ALL {
            let _ = metrics.refusals.get_or_create(&CodeLabel {
                code: code.as_str(),
            });
        }
        Metrics {
            registry,
            ..metrics
        }
    }

    /// An attempt to write a batch failed on the disk.
    pub fn storage_failed(&self) {
        self.storage_errors.inc();
    }

    /// A batch was applied and flushed.
    pub fn committed(&self, stats: &BatchStats, counts: &StatusCounts, seconds: f64) {
        self.records_folded.inc_by(stats.records);
        self.malformed.inc_by(stats.malformed);
        self.violations.inc_by(stats.violations);
        for (code, count) in &stats.refusals {
            self.refusals
                .get_or_create(&CodeLabel {
                    code: code.as_str(),
                })
                .inc_by(*count);
        }
        self.batches.inc();
        self.commit_seconds.observe(seconds);
        self.set_counts(counts);
    }

    /// Fold lag of a partition: `now_millis` minus `recorded_at` of the last
    /// event folded from it.
    pub fn set_fold_lag(&self, partition: i32, now_millis: i64, recorded_at: i64) {
        self.fold_lag_seconds
            .get_or_create(&PartitionLabel { partition })
            .set(((now_millis - recorded_at) as f64 / 1000.0).max(0.0));
    }

    pub fn set_oldest_paused(&self, oldest: OldestPaused) {
        *self
            .oldest_paused
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = oldest;
    }

    /// Turn the committed proposal times into ages as of `now_millis`
    /// (called when scraped, so an undecided instance keeps ageing between
    /// commits).
    pub fn refresh_paused_ages(&self, now_millis: i64) {
        let oldest = *self
            .oldest_paused
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (status, proposed_at) in oldest {
            let age = proposed_at.map_or(0.0, |at| ((now_millis - at) as f64 / 1000.0).max(0.0));
            self.oldest_paused_age_seconds
                .get_or_create(&StatusLabel {
                    status: status.as_str(),
                })
                .set(age);
        }
    }

    pub fn set_counts(&self, counts: &StatusCounts) {
        for (status, count) in counts.iter() {
            self.instances
                .get_or_create(&StatusLabel {
                    status: status.map_or(NO_STATUS_LABEL, StatusName::as_str),
                })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }

    pub fn set_offset(&self, partition: i32, next: i64, high: Option<i64>) {
        self.consumed_offset
            .get_or_create(&PartitionLabel { partition })
            .set(next);
        if let Some(high) = high {
            self.lag_records
                .get_or_create(&PartitionLabel { partition })
                .set((high - next).max(0));
        }
    }

    pub fn observe_http(&self, route: &str, status: u16, seconds: f64) {
        self.http_seconds
            .get_or_create(&HttpLabel {
                route: route.to_owned(),
                status,
            })
            .observe(seconds);
    }

    /// The registry in the OpenMetrics text format.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}
