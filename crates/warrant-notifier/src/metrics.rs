//! `/metrics`: what was derived, sent, retried and parked, how far behind
//! the log the notifier is, and how long a notification takes from the log
//! to its receiver (OpenMetrics text via prometheus-client).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChannelLabel {
    pub channel: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SentLabel {
    pub channel: String,
    pub kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabel {
    pub partition: i32,
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub records_folded: Counter,
    pub derived: Family<KindLabel, Counter>,
    pub queued: Family<ChannelLabel, Counter>,
    pub sent: Family<SentLabel, Counter>,
    pub failed_attempts: Family<ChannelLabel, Counter>,
    pub parked: Family<ChannelLabel, Counter>,
    pub pending: Family<ChannelLabel, Gauge>,
    pub parked_pending: Family<ChannelLabel, Gauge>,
    pub consumed_offset: Family<PartitionLabel, Gauge>,
    pub lag_records: Family<PartitionLabel, Gauge>,
    pub delivery_seconds: Family<ChannelLabel, Histogram>,
    pub config_reloads: Counter,
    pub config_reload_failures: Counter,
    pub config_loaded_at_seconds: Gauge<f64, AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("warrant_notifier");
        let metrics = Metrics {
            records_folded: Counter::default(),
            derived: Family::default(),
            queued: Family::default(),
            sent: Family::default(),
            failed_attempts: Family::default(),
            parked: Family::default(),
            pending: Family::default(),
            parked_pending: Family::default(),
            consumed_offset: Family::default(),
            lag_records: Family::default(),
            // 5 ms to ~80 s: local receivers answer in milliseconds,
            // retried ones in minutes.
            delivery_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.005, 2.0, 15))
            }),
            config_reloads: Counter::default(),
            config_reload_failures: Counter::default(),
            config_loaded_at_seconds: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "records_folded",
            "Log records folded",
            metrics.records_folded.clone(),
        );
        registry.register(
            "notifications_derived",
            "Notifications derived from the log (and reminders fired), by kind, before routing",
            metrics.derived.clone(),
        );
        registry.register(
            "deliveries_queued",
            "Notifications queued for a channel",
            metrics.queued.clone(),
        );
        registry.register(
            "sent",
            "Notifications a channel's receiver accepted (2xx), by channel and kind",
            metrics.sent.clone(),
        );
        registry.register(
            "failed_attempts",
            "Delivery attempts that failed (non-2xx, timeout, connection error)",
            metrics.failed_attempts.clone(),
        );
        registry.register(
            "parked",
            "Notifications parked after the channel's max_attempts",
            metrics.parked.clone(),
        );
        registry.register(
            "pending",
            "Notifications queued for a channel and not delivered yet (parked ones excluded)",
            metrics.pending.clone(),
        );
        registry.register(
            "parked_pending",
            "Parked notifications kept in the store, per channel",
            metrics.parked_pending.clone(),
        );
        registry.register(
            "consumed_offset",
            "Next offset to consume per partition, as committed to the store",
            metrics.consumed_offset.clone(),
        );
        registry.register(
            "lag_records",
            "Records on the log not yet folded by the notifier, per partition",
            metrics.lag_records.clone(),
        );
        registry.register(
            "delivery_latency_seconds",
            "From the causing event's recorded_at (a reminder: when it fired) to the receiver's 2xx",
            metrics.delivery_seconds.clone(),
        );
        registry.register(
            "config_reloads",
            "Channels files loaded by SIGHUP",
            metrics.config_reloads.clone(),
        );
        registry.register(
            "config_reload_failures",
            "SIGHUP reloads refused (the previous channels stay in force)",
            metrics.config_reload_failures.clone(),
        );
        registry.register(
            "config_loaded_at_seconds",
            "Unix time the channels in force were loaded",
            metrics.config_loaded_at_seconds.clone(),
        );
        for kind in crate::notification::Kind::ALL {
            let _ = metrics.derived.get_or_create(&KindLabel {
                kind: kind.as_str(),
            });
        }
        Metrics {
            registry,
            ..metrics
        }
    }

    pub fn channel(name: &str) -> ChannelLabel {
        ChannelLabel {
            channel: name.to_owned(),
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

    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}
