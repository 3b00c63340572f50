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

mod delta;
mod error;
pub mod file;
pub mod gaps;
pub mod kafka;
pub mod range;
mod replayed;
pub mod rules;
pub mod seen;
pub mod signatures;
mod source;
pub mod text;
pub mod time;
pub mod trail;
pub mod verify;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

pub use error::{Error, ThawError};
pub use gaps::Gap;
pub use range::{Bound, PartitionRange, RangeSpec};
pub use replayed::{
    Folder, Keep, Replay, ReplayedInstance, ReplayedRecord, SignedDecisionSeen, Summary,
};
pub use source::{Progress, RawRecord, Sink, Source};
pub use verify::{verify, Verdict, VerifyOptions, VerifyReport};

use crate::file::{ExportMetadata, FileRead};
use crate::range::RecordFilter;
use crate::replayed::{FoldResult, Only};
use crate::seen::{SeenConfig, SpillDir};

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
    /// Where the duplicate check writes the event ids it has seen
    /// ([`seen`]), in a directory of its own removed at the end; `None`:
    /// the system's temporary directory.
    pub spill_dir: Option<PathBuf>,
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
            spill_dir: None,
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
    let spill = SpillDir::create(options.spill_dir.as_deref())?;
    let fold = Fold {
        options,
        keep: options.keep,
        only: only.as_deref().map(Only::new),
        spill: &spill,
    };
    match &options.source {
        Source::Kafka(kafka) => {
            let (ranges, open_transactions) =
                kafka::resolve_and_check_transactions(kafka, &options.range)?;
            for open in &open_transactions {
                tracing::warn!(topic = %kafka.log_topic, partition = open.partition, "{open}");
            }
            let merged = fold.kafka(kafka, &ranges)?;
            let gaps = merged.offsets.gaps(&ranges, true);
            Ok(Replay {
                source: options.source.describe(),
                topic: kafka.log_topic.clone(),
                ranges,
                inexact: None,
                gaps,
                open_transactions,
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
            let (read, merged) = fold.file(path)?;
            let (ranges, inexact) = file_ranges(path, &read, &options.range)?;
            let gaps = merged.offsets.gaps(&ranges, inexact.is_none());
            Ok(Replay {
                source: options.source.describe(),
                topic: read
                    .metadata
                    .as_ref()
                    .map(|m| m.topic.clone())
                    .or(read.topic)
                    .unwrap_or_default(),
                ranges,
                inexact,
                gaps,
                open_transactions: Vec::new(),
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

/// Fold `instances` (ids, quarantines included) of `replayed` again, from
/// the same records, keeping every entry's hash and position
/// ([`Keep::Chain`]): what `--verify` needs to name the entry where an
/// instance whose trail differs first differs ([`VerifyReport::locate`]).
/// Memory is per entry of these instances only; the rest of the range is
/// read and skipped. Kafka ranges are the ones `replayed` resolved, so the
/// same offsets are read.
pub fn refold_chains(
    options: &ReplayOptions,
    replayed: &Replay,
    instances: &[String],
) -> Result<Replay, Error> {
    let spill = SpillDir::create(options.spill_dir.as_deref())?;
    let fold = Fold {
        options,
        keep: Keep::Chain,
        only: Some(Only::several(instances.iter().map(String::as_str))),
        spill: &spill,
    };
    let merged = match &options.source {
        Source::Kafka(kafka) => fold.kafka(kafka, &replayed.ranges)?,
        Source::File(path) => fold.file(path)?.1,
    };
    Ok(Replay {
        source: replayed.source.clone(),
        topic: replayed.topic.clone(),
        ranges: replayed.ranges.clone(),
        inexact: replayed.inexact.clone(),
        gaps: replayed.gaps.clone(),
        open_transactions: replayed.open_transactions.clone(),
        signed_decisions: merged.signed,
        attested_decisions: merged.attested,
        instances: merged.instances,
        records: merged.records,
        events: merged.events,
        keep: Keep::Chain,
        only: Some(format!("{} instances to locate", instances.len())),
    })
}

/// One fold of a source: how much to keep, of which instances, and where
/// the duplicate check spills.
struct Fold<'a> {
    options: &'a ReplayOptions,
    keep: Keep,
    only: Option<Only>,
    spill: &'a std::sync::Arc<SpillDir>,
}

impl Fold<'_> {
    fn folder(&self, expected_keys: u64) -> Folder {
        let seen = SeenConfig {
            spill: Some(std::sync::Arc::clone(self.spill)),
            // With one instance folded there are few ids to expect.
            expected_keys: if self.only.is_some() {
                0
            } else {
                expected_keys
            },
            ..SeenConfig::default()
        };
        Folder::with(self.keep, self.only.clone(), seen)
    }

    fn kafka(
        &self,
        kafka: &warrant_kafka::KafkaArgs,
        ranges: &[PartitionRange],
    ) -> Result<FoldResult, Error> {
        let threads = match self.options.threads {
            0 => default_threads(),
            n => n,
        };
        let plan = kafka::plan(ranges, threads);
        let folders = plan
            .iter()
            .map(|ranges| self.folder(ranges.iter().map(PartitionRange::len).sum()))
            .collect();
        let progress = Progress::new(self.options.progress, "records");
        let folders = kafka::read(kafka, plan, folders, &progress, self.options.stall_timeout)?;
        Ok(Folder::merge(folders))
    }

    fn file(&self, path: &std::path::Path) -> Result<(FileRead, FoldResult), Error> {
        // Records are rarely under 256 bytes: enough filter for most
        // files, and it grows if not.
        let size = std::fs::metadata(path).map_or(0, |m| m.len());
        let mut folder = self.folder(size / 256);
        let progress = Progress::new(self.options.progress, "bytes");
        let read = file::read(
            path,
            RecordFilter::new(self.options.range.clone()),
            &mut folder,
            &progress,
        )?;
        Ok((read, Folder::merge(vec![folder])))
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
            let end = match (spec.to_offset_of(r.partition), spec.to) {
                (Some(Some(to)), _) | (None, Some(Bound::Offset(to))) => r.end.min(to).max(start),
                (Some(None), _) => start,
                (None, _) => r.end,
            };
            PartitionRange { start, end, ..*r }
        })
        .collect()
}

/// The ranges a file replay covered: from the export's metadata when it has
/// some and the flags are offsets, else from the records seen.
///
/// Offsets come from the file, so anyone may have written them: the end
/// of a range is computed with checked arithmetic, an offset the log
/// could never hold (`i64::MAX`, whose successor does not exist) being an
/// input error, not a panic.
fn file_ranges(
    path: &std::path::Path,
    read: &FileRead,
    spec: &RangeSpec,
) -> Result<(Vec<PartitionRange>, Option<String>), Error> {
    let inexact = match &read.metadata {
        None => "the file has no export header".to_owned(),
        Some(_) if spec.uses_time() => "a time range was applied to a file".to_owned(),
        Some(metadata) if !metadata.exact => {
            "the export header says its ranges are not exact offsets".to_owned()
        }
        Some(metadata) => return Ok((narrow(&metadata.ranges, spec), None)),
    };
    let inexact = Some(format!(
        "{inexact}, so records missing at either end of a partition's range cannot be detected"
    ));
    let log_starts: BTreeMap<i32, i64> = read
        .metadata
        .iter()
        .flat_map(|m| m.ranges.iter().map(|r| (r.partition, r.log_start)))
        .collect();
    let mut ranges = Vec::new();
    for (partition, (first_in_file, admitted)) in &read.seen {
        let Some((first, last)) = *admitted else {
            continue;
        };
        let end = last.checked_add(1).ok_or_else(|| Error::BadOffset {
            path: path.to_owned(),
            partition: *partition,
            offset: last,
            reason: "no log offset can follow it".to_owned(),
        })?;
        ranges.push(PartitionRange {
            partition: *partition,
            log_start: log_starts.get(partition).copied().unwrap_or(*first_in_file),
            start: first,
            end,
        });
    }
    Ok((ranges, inexact))
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
    /// Offsets of the ranges exported with no record (see [`gaps`]): the
    /// file keeps them as found, and a replay of it reports them too.
    pub gaps: Vec<Gap>,
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
    let (exporter, partial) = file::create_export(&options.out, &metadata)?;
    let mut tracking = gaps::Tracking {
        sink: exporter,
        offsets: gaps::Offsets::default(),
    };
    let read = match &options.source {
        Source::Kafka(kafka) => {
            let plan = kafka::plan(&metadata.ranges, 1);
            let progress = Progress::new(options.progress, "records");
            kafka::read(
                kafka,
                plan,
                vec![&mut tracking],
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
                &mut tracking,
                &progress,
            )
            .map(|_| ())
        }
    };
    let gaps::Tracking {
        sink: exporter,
        offsets,
    } = tracking;
    if let Err(e) = read {
        drop(exporter);
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    let records = file::complete_export(exporter, &partial, &options.out)?;
    Ok(ExportSummary {
        out: options.out.clone(),
        records,
        gaps: offsets.gaps(&metadata.ranges, metadata.exact),
        metadata,
    })
}

impl<S: Sink + ?Sized> Sink for &mut S {
    fn record(&mut self, record: &RawRecord<'_>) -> Result<(), Error> {
        (**self).record(record)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use apache_avro::{Codec, Writer};

    use super::*;
    use crate::file::{log_record_schema, to_value, EXPORT_METADATA_KEY};

    /// Write `records` (partition, offset) to a container file, with
    /// `metadata` as its header when given, as anyone could.
    pub(crate) fn write_file(
        path: &Path,
        metadata: Option<&ExportMetadata>,
        records: &[(i32, i64)],
    ) {
        let schema = log_record_schema().unwrap_or_else(|e| panic!("{e}"));
        let mut writer =
            Writer::with_codec(schema, Vec::new(), Codec::Null).unwrap_or_else(|e| panic!("{e}"));
        if let Some(metadata) = metadata {
            let json = serde_json::to_vec(metadata).unwrap_or_else(|e| panic!("{e}"));
            writer
                .add_user_metadata(EXPORT_METADATA_KEY.to_owned(), json)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        for (partition, offset) in records {
            let record = RawRecord {
                topic: "warrant.log",
                partition: *partition,
                offset: *offset,
                timestamp: Some(1_795_000_000_000),
                key: Some(b"not-an-instance".as_slice()),
                value: b"not an envelope",
                log_start: 0,
                range_start: 0,
            };
            writer
                .append_value_ref(&to_value(&record))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let bytes = writer.into_inner().unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(path, bytes).unwrap_or_else(|e| panic!("{e}"));
    }

    pub(crate) fn replay_file(path: &Path, range: RangeSpec) -> Result<Replay, Error> {
        let mut options = ReplayOptions::new(Source::File(path.to_owned()));
        options.range = range;
        replay(&options)
    }

    #[test]
    fn an_offset_with_no_successor_is_an_input_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let path = dir.path().join("max.avro");
        write_file(&path, None, &[(0, 5), (0, i64::MAX)]);
        let result = replay_file(&path, RangeSpec::all());
        assert!(
            matches!(
                result,
                Err(Error::BadOffset {
                    partition: 0,
                    offset: i64::MAX,
                    ..
                })
            ),
            "{result:?}"
        );
    }

    #[test]
    fn a_range_at_the_i64_extremes_has_no_length_rather_than_overflowing() {
        let range = PartitionRange {
            partition: 0,
            log_start: i64::MIN,
            start: i64::MIN,
            end: i64::MAX,
        };
        assert_eq!(range.len(), 0);
    }

    fn header(ranges: &[(i32, i64, i64, i64)], exact: bool) -> ExportMetadata {
        ExportMetadata {
            format: EXPORT_FORMAT,
            topic: "warrant.log".to_owned(),
            source: "test".to_owned(),
            ranges: ranges
                .iter()
                .map(|(partition, log_start, start, end)| PartitionRange {
                    partition: *partition,
                    log_start: *log_start,
                    start: *start,
                    end: *end,
                })
                .collect(),
            exact,
        }
    }

    #[test]
    fn records_outside_the_headers_ranges_are_an_input_error() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let path = dir.path().join("f.avro");
        let records = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)];
        // An honest header verifies as exact.
        write_file(
            &path,
            Some(&header(&[(0, 0, 0, 3), (1, 0, 0, 2)], true)),
            &records,
        );
        let replayed = replay_file(&path, RangeSpec::all()).unwrap_or_else(|e| panic!("{e}"));
        assert!(replayed.exact_ranges(), "{:?}", replayed.inexact);

        // End lowered below records still in the file (attack: shrunk end).
        write_file(
            &path,
            Some(&header(&[(0, 0, 0, 2), (1, 0, 0, 2)], true)),
            &records,
        );
        let result = replay_file(&path, RangeSpec::all());
        assert!(
            matches!(
                result,
                Err(Error::BadOffset {
                    partition: 0,
                    offset: 2,
                    ..
                })
            ),
            "{result:?}"
        );
        // A partition's range left out while its records stay.
        write_file(&path, Some(&header(&[(0, 0, 0, 3)], true)), &records);
        let result = replay_file(&path, RangeSpec::all());
        assert!(
            matches!(
                result,
                Err(Error::BadOffset {
                    partition: 1,
                    offset: 0,
                    ..
                })
            ),
            "{result:?}"
        );
        // Start raised above records still in the file.
        write_file(
            &path,
            Some(&header(&[(0, 0, 1, 3), (1, 0, 0, 2)], true)),
            &records,
        );
        let result = replay_file(&path, RangeSpec::all());
        assert!(
            matches!(
                result,
                Err(Error::BadOffset {
                    partition: 0,
                    offset: 0,
                    ..
                })
            ),
            "{result:?}"
        );
        let message = result.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("partition 0 offset 0"), "{message}");
    }

    #[test]
    fn a_header_that_does_not_hold_together_is_an_input_error() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let path = dir.path().join("f.avro");
        for bad in [
            // log start after the range's start (the log_start lie)
            header(&[(0, 5, 0, 3)], true),
            header(&[(0, -1, 0, 3)], true),
            header(&[(0, 0, 3, 1)], true),
            header(&[(0, 0, 0, 3), (0, 0, 0, 3)], true),
            header(&[(0, i64::MIN, i64::MIN, i64::MAX)], true),
        ] {
            write_file(&path, Some(&bad), &[(0, 0)]);
            let result = replay_file(&path, RangeSpec::all());
            assert!(
                matches!(result, Err(Error::BadHeader { .. })),
                "{bad:?}: {result:?}"
            );
        }
    }

    #[test]
    fn offsets_must_grow_in_a_file_even_when_exported_not_folded() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let path = dir.path().join("f.avro");
        write_file(&path, None, &[(0, 3), (1, 1), (0, 3)]);
        let options = ExportOptions {
            source: Source::File(path.clone()),
            range: RangeSpec::all(),
            out: dir.path().join("out.avro"),
            stall_timeout: DEFAULT_STALL_TIMEOUT,
            progress: false,
        };
        let result = export(&options);
        assert!(
            matches!(
                result,
                Err(Error::OutOfOrder {
                    partition: 0,
                    offset: 3,
                    previous: 3,
                    ..
                })
            ),
            "{result:?}"
        );
    }

    #[test]
    fn without_an_exact_header_completeness_is_not_proven_and_says_why() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let path = dir.path().join("f.avro");
        let records = [(0, 0), (0, 1)];
        write_file(&path, None, &records);
        let replayed = replay_file(&path, RangeSpec::all()).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            replayed
                .inexact
                .as_deref()
                .is_some_and(|r| r.contains("no export header")),
            "{:?}",
            replayed.inexact
        );
        write_file(&path, Some(&header(&[(0, 0, 0, 2)], false)), &records);
        let replayed = replay_file(&path, RangeSpec::all()).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            replayed
                .inexact
                .as_deref()
                .is_some_and(|r| r.contains("not exact")),
            "{:?}",
            replayed.inexact
        );
        write_file(&path, Some(&header(&[(0, 0, 0, 2)], true)), &records);
        let by_time = RangeSpec::from_flags(&[], None, None, Some("1000"), None)
            .unwrap_or_else(|e| panic!("{e}"));
        let replayed = replay_file(&path, by_time).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            replayed
                .inexact
                .as_deref()
                .is_some_and(|r| r.contains("time range")),
            "{:?}",
            replayed.inexact
        );
    }

    #[test]
    fn a_file_with_a_record_taken_out_has_a_gap() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let path = dir.path().join("f.avro");
        let gap = |from, to| Gap {
            partition: 0,
            from,
            to,
        };
        // Exact header: gaps inside and at both ends count.
        write_file(
            &path,
            Some(&header(&[(0, 0, 0, 6)], true)),
            &[(0, 1), (0, 3), (0, 4)],
        );
        let replayed = replay_file(&path, RangeSpec::all()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(replayed.gaps, vec![gap(0, 1), gap(2, 3), gap(5, 6)]);
        // An honest --from/--to inside it has none of its ends' gaps.
        let middle = RangeSpec::from_flags(&[], Some(3), Some(5), None, None)
            .unwrap_or_else(|e| panic!("{e}"));
        let replayed = replay_file(&path, middle).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(replayed.gaps, vec![]);
        // No header: only between records.
        write_file(&path, None, &[(0, 1), (0, 3), (0, 4)]);
        let replayed = replay_file(&path, RangeSpec::all()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(replayed.gaps, vec![gap(2, 3)]);
    }

    #[test]
    fn to_checkpoint_narrows_an_exact_export_per_partition() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let path = dir.path().join("f.avro");
        let records = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)];
        write_file(
            &path,
            Some(&header(&[(0, 0, 0, 3), (1, 0, 0, 2)], true)),
            &records,
        );
        let spec = RangeSpec {
            to_offsets: Some(BTreeMap::from([(0, 2), (1, 2)])),
            ..RangeSpec::all()
        };
        let replayed = replay_file(&path, spec).unwrap_or_else(|e| panic!("{e}"));
        let ends: Vec<(i32, i64)> = replayed
            .ranges
            .iter()
            .map(|r| (r.partition, r.end))
            .collect();
        assert_eq!(ends, vec![(0, 2), (1, 2)]);
        assert_eq!(replayed.records.values().sum::<u64>(), 4);
        assert_eq!(replayed.gaps, vec![]);
    }
}
