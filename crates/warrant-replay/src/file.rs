//! Export files: Avro object container files of `warrant.LogRecord`
//! (`schemas/log_record.avsc`), codec null, so any Avro tool reads them and
//! a damaged byte damages one record rather than a compressed block.
//!
//! The record value is kept byte for byte: the hash chain commits to the
//! exact value bytes, so replaying a file proves the same things as
//! replaying the topic, and a changed byte shows up as a changed hash.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use apache_avro::types::Value;
use apache_avro::{Codec, Reader, Schema, Writer};
use serde::{Deserialize, Serialize};

use crate::range::{PartitionRange, RecordFilter};
use crate::source::{Progress, RawRecord, Sink};
use crate::Error;

/// The schema of an export file's records.
pub const LOG_RECORD_AVSC: &str = include_str!("../../../schemas/log_record.avsc");

/// Container-file metadata key holding [`ExportMetadata`] as JSON.
pub const EXPORT_METADATA_KEY: &str = "warrant.export";

/// The parsed [`LOG_RECORD_AVSC`].
pub fn log_record_schema() -> Result<&'static Schema, Error> {
    static SCHEMA: OnceLock<Result<Schema, String>> = OnceLock::new();
    match SCHEMA.get_or_init(|| Schema::parse_str(LOG_RECORD_AVSC).map_err(|e| e.to_string())) {
        Ok(schema) => Ok(schema),
        Err(reason) => Err(Error::Schema {
            name: "warrant.LogRecord",
            reason: reason.clone(),
        }),
    }
}

/// What an export holds, written into the file's header so a replay of the
/// file knows where the log started (for `partial`) and what was covered
/// (for the checkpoint comparison of `--verify`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportMetadata {
    /// Version of this metadata's shape.
    pub format: u32,
    pub topic: String,
    /// Where it was read from (`kafka <brokers> topic <t>` or `file <path>`).
    pub source: String,
    pub ranges: Vec<PartitionRange>,
    /// Whether `ranges` are exactly the offsets exported.
    pub exact: bool,
}

/// A [`Sink`] writing records to a container file.
pub struct Exporter<W: Write> {
    path: PathBuf,
    writer: Writer<'static, W>,
    records: u64,
}

impl<W: Write> std::fmt::Debug for Exporter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter")
            .field("path", &self.path)
            .field("records", &self.records)
            .finish_non_exhaustive()
    }
}

impl<W: Write> Exporter<W> {
    /// Start a container file on `out`; `path` names it in errors.
    pub fn new(out: W, path: &Path, metadata: &ExportMetadata) -> Result<Self, Error> {
        let export_error = |source| Error::Export {
            path: path.to_owned(),
            source: Box::new(source),
        };
        let mut writer =
            Writer::with_codec(log_record_schema()?, out, Codec::Null).map_err(export_error)?;
        let json = serde_json::to_vec(metadata).map_err(|e| Error::Io {
            what: "describe the export in",
            path: path.to_owned(),
            source: std::io::Error::other(e),
        })?;
        writer
            .add_user_metadata(EXPORT_METADATA_KEY.to_owned(), json)
            .map_err(export_error)?;
        Ok(Exporter {
            path: path.to_owned(),
            writer,
            records: 0,
        })
    }

    /// Flush the last block and hand back the output and the record count.
    pub fn finish(self) -> Result<(W, u64), Error> {
        let records = self.records;
        let path = self.path;
        let out = self.writer.into_inner().map_err(|source| Error::Export {
            path,
            source: Box::new(source),
        })?;
        Ok((out, records))
    }
}

fn null() -> Value {
    Value::Union(0, Box::new(Value::Null))
}

/// The Avro value of one record.
pub fn to_value(record: &RawRecord<'_>) -> Value {
    Value::Record(vec![
        ("topic".to_owned(), Value::String(record.topic.to_owned())),
        ("partition".to_owned(), Value::Int(record.partition)),
        ("offset".to_owned(), Value::Long(record.offset)),
        (
            "timestamp".to_owned(),
            record.timestamp.map_or_else(null, |t| {
                Value::Union(1, Box::new(Value::TimestampMillis(t)))
            }),
        ),
        (
            "key".to_owned(),
            record.key.map_or_else(null, |k| {
                Value::Union(1, Box::new(Value::Bytes(k.to_vec())))
            }),
        ),
        ("value".to_owned(), Value::Bytes(record.value.to_vec())),
    ])
}

impl<W: Write> Sink for Exporter<W> {
    fn record(&mut self, record: &RawRecord<'_>) -> Result<(), Error> {
        self.writer
            .append_value_ref(&to_value(record))
            .map_err(|source| Error::Export {
                path: self.path.clone(),
                source: Box::new(source),
            })?;
        self.records += 1;
        Ok(())
    }
}

/// A record read back from a file, owning its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub timestamp: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
}

impl FileRecord {
    pub fn as_raw(&self, log_start: i64, range_start: i64) -> RawRecord<'_> {
        RawRecord {
            topic: &self.topic,
            partition: self.partition,
            offset: self.offset,
            timestamp: self.timestamp,
            key: self.key.as_deref(),
            value: &self.value,
            log_start,
            range_start,
        }
    }

    fn from_value(value: Value, path: &Path, index: u64) -> Result<FileRecord, Error> {
        let missing = |field| Error::FileField {
            path: path.to_owned(),
            index,
            field,
        };
        let Value::Record(fields) = value else {
            return Err(missing("record"));
        };
        let (mut topic, mut partition, mut offset) = (None, None, None);
        let (mut timestamp, mut key, mut bytes) = (None, None, None);
        for (name, value) in fields {
            match (name.as_str(), value) {
                ("topic", Value::String(text)) => topic = Some(text),
                ("partition", Value::Int(p)) => partition = Some(p),
                ("offset", Value::Long(o)) => offset = Some(o),
                ("timestamp", Value::Union(_, inner)) => {
                    timestamp = Some(match *inner {
                        Value::Null => None,
                        Value::TimestampMillis(t) | Value::Long(t) => Some(t),
                        _ => return Err(missing("timestamp")),
                    })
                }
                ("key", Value::Union(_, inner)) => {
                    key = Some(match *inner {
                        Value::Null => None,
                        Value::Bytes(k) => Some(k),
                        _ => return Err(missing("key")),
                    })
                }
                ("value", Value::Bytes(v)) => bytes = Some(v),
                _ => {}
            }
        }
        Ok(FileRecord {
            topic: topic.ok_or_else(|| missing("topic"))?,
            partition: partition.ok_or_else(|| missing("partition"))?,
            offset: offset.ok_or_else(|| missing("offset"))?,
            timestamp: timestamp.ok_or_else(|| missing("timestamp"))?,
            key: key.ok_or_else(|| missing("key"))?,
            value: bytes.ok_or_else(|| missing("value"))?,
        })
    }
}

/// Counts bytes read into the progress counter.
struct Counting<'p, R> {
    inner: R,
    progress: &'p Progress,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.add(n as u64);
        Ok(n)
    }
}

/// An open export file.
pub struct ExportReader<R: Read> {
    path: PathBuf,
    reader: Reader<'static, R>,
    metadata: Option<ExportMetadata>,
    index: u64,
}

impl<R: Read> std::fmt::Debug for ExportReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportReader")
            .field("path", &self.path)
            .field("metadata", &self.metadata)
            .finish_non_exhaustive()
    }
}

impl<R: Read> ExportReader<R> {
    /// Read the header; the file's own schema is resolved against
    /// `warrant.LogRecord`, so any writer of compatible records will do.
    pub fn new(input: R, path: &Path) -> Result<Self, Error> {
        // Load the envelope codec first: it sets apache-avro's process-wide
        // allocation cap, which the first decode would otherwise fix at
        // apache-avro's far larger default.
        let _ = warrant_schema::current_fingerprint::<warrant_schema::Envelope>();
        let not_export = |reason: String| Error::NotAnExport {
            path: path.to_owned(),
            reason,
        };
        let reader = Reader::builder(input)
            .reader_schema(log_record_schema()?)
            .build()
            .map_err(|e| not_export(e.to_string()))?;
        let metadata = match reader.user_metadata().get(EXPORT_METADATA_KEY) {
            None => None,
            Some(json) => Some(
                serde_json::from_slice::<ExportMetadata>(json)
                    .map_err(|e| not_export(format!("metadata {EXPORT_METADATA_KEY}: {e}")))?,
            ),
        };
        Ok(ExportReader {
            path: path.to_owned(),
            reader,
            metadata,
            index: 0,
        })
    }

    pub fn metadata(&self) -> Option<&ExportMetadata> {
        self.metadata.as_ref()
    }

    /// The next record, `None` at the end of the file.
    pub fn next_record(&mut self) -> Result<Option<FileRecord>, Error> {
        let Some(value) = self.reader.next() else {
            return Ok(None);
        };
        self.index += 1;
        let value = value.map_err(|source| Error::FileRecord {
            path: self.path.clone(),
            index: self.index,
            source: Box::new(source),
        })?;
        FileRecord::from_value(value, &self.path, self.index).map(Some)
    }
}

/// What reading a file found, per partition.
#[derive(Debug, Clone, Default)]
pub struct FileRead {
    pub metadata: Option<ExportMetadata>,
    pub topic: Option<String>,
    /// Per partition: first offset in the file, first and last offset read.
    pub seen: std::collections::BTreeMap<i32, (i64, Option<(i64, i64)>)>,
    pub records: u64,
}

/// Open `path` and feed the records `filter` admits to `sink`.
pub fn read(
    path: &Path,
    mut filter: RecordFilter,
    sink: &mut (dyn Sink + Send),
    progress: &Progress,
) -> Result<FileRead, Error> {
    let io = |what| {
        move |source| Error::Io {
            what,
            path: path.to_owned(),
            source,
        }
    };
    let file = File::open(path).map_err(io("open"))?;
    let size = file.metadata().map_err(io("read"))?.len();
    progress.set_total(size);
    progress.run(|| {
        let input = BufReader::with_capacity(
            1 << 20,
            Counting {
                inner: file,
                progress,
            },
        );
        let mut reader = ExportReader::new(input, path)?;
        let mut read = FileRead {
            metadata: reader.metadata().cloned(),
            ..FileRead::default()
        };
        let claimed = match &read.metadata {
            Some(metadata) => Some(check_header(path, metadata)?),
            None => None,
        };
        let log_starts: std::collections::BTreeMap<i32, i64> = read
            .metadata
            .iter()
            .flat_map(|m| m.ranges.iter().map(|r| (r.partition, r.log_start)))
            .collect();
        let exact_starts: Option<std::collections::BTreeMap<i32, i64>> = read
            .metadata
            .as_ref()
            .filter(|m| m.exact && !filter.uses_time())
            .map(|m| {
                m.ranges
                    .iter()
                    .map(|r| (r.partition, filter.narrow_start(r)))
                    .collect()
            });
        let mut last_offsets = std::collections::BTreeMap::<i32, i64>::new();
        while let Some(record) = reader.next_record()? {
            if read.topic.is_none() {
                read.topic = Some(record.topic.clone());
            }
            if let Some(claimed) = &claimed {
                check_claimed(path, claimed, &record)?;
            }
            // Per partition, a log's offsets only grow: a file that repeats
            // or reorders them is not a copy of one (checked here as well as
            // in the fold, since an export of a file never folds).
            if let Some(previous) = last_offsets.insert(record.partition, record.offset) {
                if record.offset <= previous {
                    return Err(Error::OutOfOrder {
                        topic: record.topic.clone(),
                        partition: record.partition,
                        offset: record.offset,
                        previous,
                    });
                }
            }
            let seen = read
                .seen
                .entry(record.partition)
                .or_insert((record.offset, None));
            if !filter.admits(record.partition, record.offset, record.timestamp) {
                continue;
            }
            seen.1 = Some(match seen.1 {
                None => (record.offset, record.offset),
                Some((first, _)) => (first, record.offset),
            });
            let log_start = log_starts.get(&record.partition).copied().unwrap_or(seen.0);
            // Where the range starts: the header's (narrowed by --from)
            // when it is exact and no time range applies; else the first
            // record admitted, the only start a file without one can show.
            let range_start = match (&exact_starts, seen.1) {
                (Some(starts), _) => starts
                    .get(&record.partition)
                    .copied()
                    .unwrap_or(record.offset),
                (None, Some((first, _))) => first,
                (None, None) => record.offset,
            };
            sink.record(&record.as_raw(log_start, range_start))?;
            read.records += 1;
        }
        Ok(read)
    })
}

/// Check an export header on its own: one range per partition, each
/// `log_start <= start <= end` with nothing negative. The header is not
/// authenticated (anyone can write one), so it is only trusted as far as
/// the records agree with it ([`check_claimed`]).
pub fn check_header(
    path: &Path,
    metadata: &ExportMetadata,
) -> Result<std::collections::BTreeMap<i32, PartitionRange>, Error> {
    let bad = |reason: String| Error::BadHeader {
        path: path.to_owned(),
        reason,
    };
    let mut claimed = std::collections::BTreeMap::new();
    for range in &metadata.ranges {
        let PartitionRange {
            partition,
            log_start,
            start,
            end,
        } = *range;
        if partition < 0 || log_start < 0 {
            return Err(bad(format!(
                "partition {partition}: partitions and offsets are >= 0 (log start {log_start})"
            )));
        }
        if log_start > start {
            return Err(bad(format!(
                "partition {partition}: the range starts at {start}, before the log's start {log_start}"
            )));
        }
        if start > end {
            return Err(bad(format!(
                "partition {partition}: the range starts at {start}, after its end {end}"
            )));
        }
        if claimed.insert(partition, *range).is_some() {
            return Err(bad(format!("partition {partition} has two ranges")));
        }
    }
    Ok(claimed)
}

/// A record outside the ranges its file's header claims is an input
/// error: replaying it would fold records the header says are not there,
/// and the header would then vouch for a completeness it does not have.
fn check_claimed(
    path: &Path,
    claimed: &std::collections::BTreeMap<i32, PartitionRange>,
    record: &FileRecord,
) -> Result<(), Error> {
    let outside = |reason: String| Error::BadOffset {
        path: path.to_owned(),
        partition: record.partition,
        offset: record.offset,
        reason,
    };
    match claimed.get(&record.partition) {
        None => Err(outside(
            "the export header has no range for this partition".to_owned(),
        )),
        Some(range) if !(range.start..range.end).contains(&record.offset) => Err(outside(format!(
            "outside the export header's range [{}, {})",
            range.start, range.end
        ))),
        Some(_) => Ok(()),
    }
}

/// Create `out` atomically: records go to `out.partial`, renamed over
/// `out` once complete and synced, so a failed export leaves no file that
/// looks finished.
pub fn create_export(
    out: &Path,
    metadata: &ExportMetadata,
) -> Result<(Exporter<BufWriter<File>>, PathBuf), Error> {
    let mut partial = out.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let file = File::create(&partial).map_err(|source| Error::Io {
        what: "create",
        path: partial.clone(),
        source,
    })?;
    let exporter = Exporter::new(BufWriter::with_capacity(1 << 20, file), out, metadata)?;
    Ok((exporter, partial))
}

/// Finish what [`create_export`] started.
pub fn complete_export(
    exporter: Exporter<BufWriter<File>>,
    partial: &Path,
    out: &Path,
) -> Result<u64, Error> {
    let io = |what, path: &Path| {
        let path = path.to_owned();
        move |source| Error::Io { what, path, source }
    };
    let (buffered, records) = exporter.finish()?;
    let file = buffered
        .into_inner()
        .map_err(|e| io("write", partial)(e.into_error()))?;
    file.sync_all().map_err(io("sync", partial))?;
    drop(file);
    std::fs::rename(partial, out).map_err(io("rename into place", out))?;
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::range::RangeSpec;

    struct Collect(Vec<FileRecord>);

    impl Sink for Collect {
        fn record(&mut self, record: &RawRecord<'_>) -> Result<(), Error> {
            self.0.push(FileRecord {
                topic: record.topic.to_owned(),
                partition: record.partition,
                offset: record.offset,
                timestamp: record.timestamp,
                key: record.key.map(<[u8]>::to_vec),
                value: record.value.to_vec(),
            });
            Ok(())
        }
    }

    fn sample_records(n: usize) -> Vec<FileRecord> {
        (0..n)
            .map(|i| FileRecord {
                topic: "warrant.log".to_owned(),
                partition: (i % 3) as i32,
                offset: (i / 3) as i64 + 7,
                timestamp: (i % 4 != 0).then_some(1_795_000_000_000 + i as i64),
                key: (i % 5 != 0).then(|| format!("key-{i}").into_bytes()),
                // Unique, every byte value, odd lengths, and the empty value.
                value: if i % 17 == 0 {
                    Vec::new()
                } else {
                    (i as u64)
                        .to_le_bytes()
                        .into_iter()
                        .chain((0..(i * 37 % 300)).map(|b| (b * 7 + i) as u8))
                        .collect()
                },
            })
            .collect()
    }

    fn metadata() -> ExportMetadata {
        ExportMetadata {
            format: 1,
            topic: "warrant.log".to_owned(),
            source: "test".to_owned(),
            // What sample_records(1000) holds: a file's records must lie
            // inside its header's ranges.
            ranges: (0..3)
                .map(|partition| PartitionRange {
                    partition,
                    log_start: 3,
                    start: 7,
                    end: 341,
                })
                .collect(),
            exact: true,
        }
    }

    #[test]
    fn a_container_file_gives_back_the_exact_records() {
        let records = sample_records(1000);
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let out = dir.path().join("log.avro");
        let (mut exporter, partial) =
            create_export(&out, &metadata()).unwrap_or_else(|e| panic!("{e}"));
        for record in &records {
            exporter
                .record(&record.as_raw(0, 0))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        assert_eq!(complete_export(exporter, &partial, &out).ok(), Some(1000));
        assert!(!partial.exists());

        let mut collect = Collect(Vec::new());
        let read = read(
            &out,
            RecordFilter::new(RangeSpec::all()),
            &mut collect,
            &Progress::new(false, "bytes"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(read.records, 1000);
        assert_eq!(read.metadata, Some(metadata()));
        assert_eq!(collect.0, records);

        // Any Avro reader sees the schema and the records.
        let bytes = std::fs::read(&out).unwrap_or_else(|e| panic!("{e}"));
        let reader = Reader::new(bytes.as_slice()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            reader.writer_schema(),
            log_record_schema().unwrap_or_else(|e| panic!("{e}"))
        );
        assert_eq!(reader.count(), 1000);
    }

    #[test]
    fn a_flipped_value_byte_changes_one_record_only() {
        let records = sample_records(50);
        let mut exporter = Exporter::new(Vec::new(), Path::new("mem"), &metadata())
            .unwrap_or_else(|e| panic!("{e}"));
        for record in &records {
            exporter
                .record(&record.as_raw(0, 0))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let (mut bytes, _) = exporter.finish().unwrap_or_else(|e| panic!("{e}"));
        let target = &records[20].value;
        let at = bytes
            .windows(target.len())
            .position(|w| w == target.as_slice())
            .unwrap_or_else(|| panic!("value not found"));
        bytes[at + target.len() / 2] ^= 0x01;

        let mut reader =
            ExportReader::new(bytes.as_slice(), Path::new("mem")).unwrap_or_else(|e| panic!("{e}"));
        let mut back = Vec::new();
        while let Some(record) = reader.next_record().unwrap_or_else(|e| panic!("{e}")) {
            back.push(record);
        }
        assert_eq!(back.len(), records.len());
        let differing: Vec<usize> = (0..records.len())
            .filter(|i| back[*i] != records[*i])
            .collect();
        assert_eq!(differing, vec![20]);
    }

    #[test]
    fn garbage_is_not_an_export() {
        let result = ExportReader::new(&b"not avro at all"[..], Path::new("junk"));
        assert!(
            matches!(result, Err(Error::NotAnExport { .. })),
            "{result:?}"
        );
    }
}
