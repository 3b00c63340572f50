//! Where records come from (Kafka or an export file), what one looks like
//! on its way to the fold or the exporter, and progress reporting.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use warrant_kafka::KafkaArgs;

use crate::Error;

/// Where to read the log from.
#[derive(Debug, Clone)]
pub enum Source {
    /// `KafkaArgs::log_topic` on `KafkaArgs::brokers`.
    Kafka(KafkaArgs),
    /// An Avro object container file written by `warrant-replay export`
    /// (or any file with the `warrant.LogRecord` schema).
    File(PathBuf),
}

impl Source {
    pub fn describe(&self) -> String {
        match self {
            Source::Kafka(kafka) => format!("kafka {} topic {}", kafka.brokers, kafka.log_topic),
            Source::File(path) => format!("file {}", path.display()),
        }
    }
}

/// One log record, borrowed from the consumer's buffer or the file reader.
#[derive(Debug, Clone, Copy)]
pub struct RawRecord<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    /// Kafka timestamp in epoch milliseconds, if the record has one.
    pub timestamp: Option<i64>,
    pub key: Option<&'a [u8]>,
    /// The value exactly as on the log (a null value reads as empty).
    pub value: &'a [u8],
    /// The first offset still on the log for this partition, so the fold
    /// can tell whether an instance may have begun before the range.
    pub log_start: i64,
    /// Where the range being read starts on this partition: an instance
    /// may have begun before the range only if this is after `log_start`
    /// (not the first record read: that one may sit after the range's
    /// start because records were removed there).
    pub range_start: i64,
}

/// Receives the records of a range in log order per partition.
pub trait Sink {
    fn record(&mut self, record: &RawRecord<'_>) -> Result<(), Error>;
}

/// Shared progress counters: readers add, the reporting thread reads.
#[derive(Debug)]
pub struct Progress {
    enabled: bool,
    unit: &'static str,
    total: AtomicU64,
    done: AtomicU64,
}

/// How often progress is logged.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(2);

impl Progress {
    pub fn new(enabled: bool, unit: &'static str) -> Progress {
        Progress {
            enabled,
            unit,
            total: AtomicU64::new(0),
            done: AtomicU64::new(0),
        }
    }

    pub fn set_total(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
    }

    pub fn add(&self, done: u64) {
        self.done.fetch_add(done, Ordering::Relaxed);
    }

    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Run `work` on a scoped thread while this thread logs progress every
    /// [`PROGRESS_INTERVAL`]. A panic in `work` is resumed here.
    pub fn run<T: Send>(&self, work: impl FnOnce() -> T + Send) -> T {
        if !self.enabled {
            return work();
        }
        std::thread::scope(|scope| {
            let (finished, wait) = mpsc::channel::<()>();
            let handle = scope.spawn(move || {
                let result = work();
                let _ = finished.send(());
                result
            });
            let started = Instant::now();
            let (mut last_at, mut last_done) = (started, 0);
            while let Err(mpsc::RecvTimeoutError::Timeout) = wait.recv_timeout(PROGRESS_INTERVAL) {
                let now = Instant::now();
                let done = self.done();
                let total = self.total.load(Ordering::Relaxed);
                let rate = (done.saturating_sub(last_done)) as f64
                    / now.duration_since(last_at).as_secs_f64().max(1e-3);
                let percent = if total == 0 {
                    100.0
                } else {
                    (done as f64 * 100.0 / total as f64).min(100.0)
                };
                tracing::info!(
                    done,
                    total,
                    unit = self.unit,
                    per_second = rate.round() as u64,
                    "read {done} of {total} {} ({percent:.1}%), {:.0} {}/s",
                    self.unit,
                    rate,
                    self.unit
                );
                (last_at, last_done) = (now, done);
            }
            match handle.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }
}
