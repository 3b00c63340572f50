//! Intake's Prometheus metrics (`GET /metrics`, OpenMetrics text).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub route: String,
    pub status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AppendLabels {
    /// `http`, `ingress` or `sweeper`.
    pub origin: &'static str,
    pub event: &'static str,
    /// `ok` or `failed`.
    pub result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IngressLabels {
    pub topic: String,
    /// `appended`, `dead_lettered`, or `dropped` (not even a dead letter
    /// without the record's bytes could be produced; logged as an error).
    pub result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabels {
    pub topic: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    /// The ingress topic the record came from.
    pub topic: String,
    /// Where it was going: `log` or `dead_letter`.
    pub target: &'static str,
    /// The Kafka error code, e.g. `MessageSizeTooLarge`.
    pub error: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClaimLabels {
    /// `granted`, a refusal code, or `timeout`.
    pub answer: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeadlineLabels {
    pub deadline: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Every metric intake exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub http_requests: HistogramFamily<HttpLabels>,
    pub appends: Family<AppendLabels, Counter>,
    pub ingress_records: Family<IngressLabels, Counter>,
    pub ingress_refused: Family<RefusedLabels, Counter>,
    pub dead_letters_truncated: Family<TopicLabels, Counter>,
    pub claims: Family<ClaimLabels, Counter>,
    pub deadlines: Family<DeadlineLabels, Counter>,
    pub sweeps_failed: Counter,
    pub reloads_failed: Counter,
    pub ruleset_loaded_at: Gauge,
    pub ruleset_publish_retries: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("warrant_intake");
        let http_requests: HistogramFamily<HttpLabels> =
            Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by route and status",
            http_requests.clone(),
        );
        let appends = Family::<AppendLabels, Counter>::default();
        registry.register(
            "appends",
            "Appends to the log by origin, event kind and result",
            appends.clone(),
        );
        let ingress_records = Family::<IngressLabels, Counter>::default();
        registry.register(
            "ingress_records",
            "Ingress records processed, by topic and result",
            ingress_records.clone(),
        );
        let ingress_refused = Family::<RefusedLabels, Counter>::default();
        registry.register(
            "ingress_refused",
            "Ingress records Kafka refused for good (no retry could succeed), by ingress topic, target and error; each falls back to a dead letter, truncated if need be",
            ingress_refused.clone(),
        );
        let dead_letters_truncated = Family::<TopicLabels, Counter>::default();
        registry.register(
            "dead_letters_truncated",
            "Dead letters carrying only a prefix of their record (or none of it), by ingress topic",
            dead_letters_truncated.clone(),
        );
        let claims = Family::<ClaimLabels, Counter>::default();
        registry.register(
            "claims",
            "Execution requests answered, by the fold's answer",
            claims.clone(),
        );
        let deadlines = Family::<DeadlineLabels, Counter>::default();
        registry.register(
            "deadlines_emitted",
            "DeadlineReached events appended by the sweeper",
            deadlines.clone(),
        );
        let sweeps_failed = Counter::default();
        registry.register(
            "sweeps_failed",
            "Deadline sweeps that could not complete (projector or log unavailable)",
            sweeps_failed.clone(),
        );
        let reloads_failed = Counter::default();
        registry.register(
            "reloads_failed",
            "SIGHUP reloads refused (invalid file or ruleset not published)",
            reloads_failed.clone(),
        );
        let ruleset_loaded_at = Gauge::default();
        registry.register(
            "ruleset_loaded_at_seconds",
            "Unix time the ruleset in force was loaded",
            ruleset_loaded_at.clone(),
        );
        let ruleset_publish_retries = Counter::default();
        registry.register(
            "ruleset_publish_retries",
            "Start-up attempts to publish the ruleset that Kafka did not acknowledge in time",
            ruleset_publish_retries.clone(),
        );
        Metrics {
            registry,
            http_requests,
            appends,
            ingress_records,
            ingress_refused,
            dead_letters_truncated,
            claims,
            deadlines,
            sweeps_failed,
            reloads_failed,
            ruleset_loaded_at,
            ruleset_publish_retries,
        }
    }

    pub fn append(&self, origin: &'static str, event: &'static str, ok: bool) {
        self.appends
            .get_or_create(&AppendLabels {
                origin,
                event,
                result: if ok { "ok" } else { "failed" },
            })
            .inc();
    }

    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}
