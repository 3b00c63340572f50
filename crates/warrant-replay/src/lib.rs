//! The auditors' tool (docs/contract.md §6 "Replay"): read a range of `warrant.log`
//! (or an export of it), fold it with the shared fold, print execution
//! records, compare them with a projector, export ranges to Avro files.
//!
//! This crate owns reading, bookkeeping and presentation. It must never
//! decide anything about an instance itself: every record goes through
//! `warrant_authority::step` exactly as the projector's do, so equal logs
//! give equal records and equal hashes. It never writes to Kafka, never
//! joins a consumer group and never commits offsets.
//!
//! The entry points are [`replay`], [`verify()`] and [`export`]; the
//! binary `warrant-replay` is a thin command line over them.

// Errors end a run (at most once per process), so their size never matters
// on a hot path; boxing every Kafka error would only add noise.
#![allow(clippy::result_large_err)]

mod error;
pub mod file;
pub mod kafka;
pub mod range;
mod replayed;
pub mod rules;
pub mod signatures;
mod source;
pub mod text;
pub mod time;
pub mod verify;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

pub use error::Error;
pub use range::{Bound, PartitionRange, RangeSpec};
pub use replayed::{
    Folder, Keep, Replay, ReplayedInstance, ReplayedRecord, SignedDecisionSeen, Summary,
};
pub use source::{Progress, RawRecord, Sink, Source};
pub use verify::{verify, Verdict, VerifyOptions, VerifyReport};

use crate::file::{ExportMetadata, FileRead};
use crate::range::RecordFilter;

/// Version of [`ExportMetadata`] written by this build.
pub const EXPORT_FORMAT: u32 = 1;

/// How long a read may see no record before it fails (the broker is gone).
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// What to replay and how.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    pub source: Source,
    pub range: RangeSpec,
    pub keep: Keep,
    /// Fold only this instance (others are read and skipped).
    pub instance: Option<String>,
    /// Reader threads for Kafka (at most one per partition); 0 = two per CPU.
    pub threads: usize,
    pub stall_timeout: Duration,
    /// Log progress every two seconds.
    pub progress: bool,
}

impl ReplayOptions {
    /// The whole log, full histories, no progress.
    pub fn new(source: Source) -> ReplayOptions {
        ReplayOptions {
            source,
            range: RangeSpec::all(),
            keep: Keep::History,
            instance: None,
            threads: 0,
            stall_timeout: DEFAULT_STALL_TIMEOUT,
            progress: false,
        }
    }
}

/// Reader threads when not told: up to two per CPU (capped by the number of
/// partitions), since each thread also waits on its consumer; measured
/// faster than one per CPU with 3 partitions on 2 cores.
fn default_threads() -> usize {
    2 * std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Check an `--instance` argument: a canonical (lowercase, hyphenated)
/// UUID; `quarantine-<partition>`, the records of that partition whose key
/// is not an instance id; or the word `quarantine`, every partition's
/// quarantine. Uppercase is lowered.
pub fn canonical_instance(text: &str) -> Result<String, Error> {
    let lowered = text.trim().to_ascii_lowercase();
    let valid = warrant_authority::instance_key(Some(lowered.as_bytes())).is_some()
        || warrant_authority::quarantine_partition(&lowered).is_some()
        || lowered == warrant_authority::QUARANTINE;
    if valid {
        Ok(lowered)
    } else {
        Err(Error::Usage(format!(
            "--instance {text:?}: an instance id is a hyphenated UUID, or {q}-<partition> \
             for the records of a partition whose key is not one ({q} for all partitions)",
            q = warrant_authority::QUARANTINE
        )))
    }
}

/// Read the range and fold it.
pub fn replay(options: &ReplayOptions) -> Result<Replay, Error> {
    let only = options
        .instance
        .as_deref()
        .map(canonical_instance)
        .transpose()?;
    match &options.source {
        Source::Kafka(kafka) => {
            let ranges = kafka::resolve(kafka, &options.range)?;
            let threads = match options.threads {
                0 => default_threads(),
                n => n,
            };
            let plan = kafka::plan(&ranges, threads);
            let folders = plan
                .iter()
                .map(|_| Folder::new(options.keep, only.clone()))
                .collect();
            let progress = Progress::new(options.progress, "records");
            let folders = kafka::read(kafka, plan, folders, &progress, options.stall_timeout)?;
            let merged = Folder::merge(folders);
            Ok(Replay {
                source: options.source.describe(),
                topic: kafka.log_topic.clone(),
                ranges,
                exact_ranges: true,
                signed_decisions: merged.signed,
                attested_decisions: merged.attested,
                instances: merged.instances,
                records: merged.records,
                events: merged.events,
                keep: options.keep,
                only,
            })
        }
        Source::File(path) => {
            let mut folder = Folder::new(options.keep, only.clone());
            let progress = Progress::new(options.progress, "bytes");
            let read = file::read(
                path,
                RecordFilter::new(options.range.clone()),
                &mut folder,
                &progress,
            )?;
            let merged = Folder::merge(vec![folder]);
            let (ranges, exact_ranges) = file_ranges(&read, &options.range);
            Ok(Replay {
                source: options.source.describe(),
                topic: read
                    .metadata
                    .as_ref()
                    .map(|m| m.topic.clone())
                    .or(read.topic)
                    .unwrap_or_default(),
                ranges,
                exact_ranges,
                signed_decisions: merged.signed,
                attested_decisions: merged.attested,
                instances: merged.instances,
                records: merged.records,
                events: merged.events,
                keep: options.keep,
                only,
            })
        }
    }
}

/// Narrow an export's recorded ranges by offset flags.
fn narrow(ranges: &[PartitionRange], spec: &RangeSpec) -> Vec<PartitionRange> {
    ranges
        .iter()
        .filter(|r| spec.includes_partition(r.partition))
        .map(|r| {
            let start = match spec.from {
                Some(Bound::Offset(from)) => r.start.max(from).min(r.end),
                _ => r.start,
            };
            let end = match spec.to {
                Some(Bound::Offset(to)) => r.end.min(to).max(start),
                _ => r.end,
            };
            PartitionRange { start, end, ..*r }
        })
        .collect()
}

/// The ranges a file replay covered: from the export's metadata when it has
/// some and the flags are offsets, else from the records seen.
fn file_ranges(read: &FileRead, spec: &RangeSpec) -> (Vec<PartitionRange>, bool) {
    if let Some(metadata) = &read.metadata {
        if !spec.uses_time() {
            return (narrow(&metadata.ranges, spec), metadata.exact);
        }
    }
    let log_starts: BTreeMap<i32, i64> = read
        .metadata
        .iter()
        .flat_map(|m| m.ranges.iter().map(|r| (r.partition, r.log_start)))
        .collect();
    let ranges = read
        .seen
        .iter()
        .filter_map(|(partition, (first_in_file, admitted))| {
            let (first, last) = (*admitted)?;
            Some(PartitionRange {
                partition: *partition,
                log_start: log_starts.get(partition).copied().unwrap_or(*first_in_file),
                start: first,
                end: last + 1,
            })
        })
        .collect();
    (ranges, false)
}

/// What to export.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub source: Source,
    pub range: RangeSpec,
    pub out: PathBuf,
    pub stall_timeout: Duration,
    pub progress: bool,
}

/// What an export wrote.
#[derive(Debug, Clone)]
pub struct ExportSummary {
    pub out: PathBuf,
    pub records: u64,
    pub metadata: ExportMetadata,
}

/// Write a range to an Avro object container file (see [`file`]). The file
/// appears at `out` only once complete.
pub fn export(options: &ExportOptions) -> Result<ExportSummary, Error> {
    let metadata = match &options.source {
        Source::Kafka(kafka) => ExportMetadata {
            format: EXPORT_FORMAT,
            topic: kafka.log_topic.clone(),
            source: options.source.describe(),
            ranges: kafka::resolve(kafka, &options.range)?,
            exact: true,
        },
        Source::File(path) => {
            let input = std::fs::File::open(path).map_err(|source| Error::Io {
                what: "open",
                path: path.clone(),
                source,
            })?;
            let header = file::ExportReader::new(std::io::BufReader::new(input), path)?;
            let (topic, ranges, exact) = match header.metadata() {
                Some(m) => (
                    m.topic.clone(),
                    narrow(&m.ranges, &options.range),
                    m.exact && !options.range.uses_time(),
                ),
                None => (String::new(), Vec::new(), false),
            };
            ExportMetadata {
                format: EXPORT_FORMAT,
                topic,
                source: options.source.describe(),
                ranges,
                exact,
            }
        }
    };
    let (mut exporter, partial) = file::create_export(&options.out, &metadata)?;
    let read = match &options.source {
        Source::Kafka(kafka) => {
            let plan = kafka::plan(&metadata.ranges, 1);
            let progress = Progress::new(options.progress, "records");
            kafka::read(
                kafka,
                plan,
                vec![&mut exporter],
                &progress,
                options.stall_timeout,
            )
            .map(|_| ())
        }
        Source::File(path) => {
            let progress = Progress::new(options.progress, "bytes");
            file::read(
                path,
                RecordFilter::new(options.range.clone()),
                &mut exporter,
                &progress,
            )
            .map(|_| ())
        }
    };
    if let Err(e) = read {
        drop(exporter);
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    let records = file::complete_export(exporter, &partial, &options.out)?;
    Ok(ExportSummary {
        out: options.out.clone(),
        records,
        metadata,
    })
}

impl<S: Sink + ?Sized> Sink for &mut S {
    fn record(&mut self, record: &RawRecord<'_>) -> Result<(), Error> {
        (**self).record(record)
    }
}
