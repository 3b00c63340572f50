//! Reading a range of the log from Kafka: partitions assigned by hand (no
//! group, nothing committed), one `BaseConsumer` per reader thread polled
//! in a plain loop, large fetches, and a stop at the range's end so a
//! replay always terminates.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Message, Offset, TopicPartitionList};
use warrant_kafka::{partitions_of, watermarks, KafkaArgs, QuietContext, METADATA_TIMEOUT};

use crate::range::{clamp_range, Bound, PartitionRange, RangeSpec};
use crate::source::{Progress, RawRecord, Sink};
use crate::Error;

/// How long one poll waits before checking for a stall.
const POLL_TIMEOUT: Duration = Duration::from_millis(200);

/// Progress is published to the shared counter every this many records.
const PROGRESS_BATCH: u64 = 4096;

/// Replay's consumer: `KafkaArgs::consumer_config` (read_committed, no
/// group commits) tuned for reading whole partitions as fast as the fold
/// can take them, and with no silent offset reset.
///
/// Measured on 1M events (3 partitions, 2 cores): bigger prefetch queues
/// (`queued.min.messages` 1M, 256 MiB) only add memory, since the fold, not
/// the fetch, is the bottleneck; `fetch.queue.backoff.ms` (default 1 s)
/// must be short or a full queue idles the reader. The queues are per
/// partition and stay full while the fold catches up, so their size is
/// peak memory: 10,000 records or 8 MiB each read as fast as 100,000 or
/// 64 MiB did, with ~220 MB less peak RSS. Fetches of 512 KiB a partition,
/// not 4 MiB: librdkafka decompresses each batch into buffers from the C
/// allocator, whose heaps fragment over a long read (with 2 MiB fetches a
/// 10M-event replay ended ~100 MB above a 1M-event one, with 512 KiB
/// ~8 MB); no slower on a local broker (a distant one, whose round trip
/// bounds each fetch, would read faster with bigger ones).
pub fn consumer_config(kafka: &KafkaArgs) -> ClientConfig {
    let mut config = kafka.consumer_config("warrant-replay");
    config
        // A range whose start was deleted by retention while we read must
        // fail, not silently restart somewhere else.
        .set("auto.offset.reset", "error")
        .set("enable.partition.eof", "true")
        .set("max.partition.fetch.bytes", "524288")
        .set("fetch.wait.max.ms", "50")
        .set("fetch.queue.backoff.ms", "5")
        .set("queued.min.messages", "10000")
        .set("queued.max.messages.kbytes", "8192");
    config
}

/// Reaching the end of a partition is how a replay finishes; librdkafka
/// reports it as a client "error", which [`QuietContext`] logs at debug.
type ReplayConsumer = BaseConsumer<QuietContext>;

fn client_error(kafka: &KafkaArgs, source: KafkaError) -> Error {
    Error::Kafka(warrant_kafka::Error::Client {
        role: "consumer",
        brokers: kafka.brokers.clone(),
        source,
    })
}

/// A consumer that reads records: assigned partitions, which librdkafka
/// only does for a consumer with a `group.id` (no group is ever joined).
fn consumer(kafka: &KafkaArgs) -> Result<ReplayConsumer, Error> {
    consumer_config(kafka)
        .create_with_context(QuietContext)
        .map_err(|source| client_error(kafka, source))
}

/// A client that is never polled: it looks up metadata, watermarks and
/// offsets by time. Without a `group.id`: dropping a consumer with one
/// closes its group session and waits out a whole 100 ms poll for that
/// (rdkafka's `Drop`), which the three such clients of a replay paid
/// before the first record was read.
fn lookup_client(kafka: &KafkaArgs, isolation: &str) -> Result<ReplayConsumer, Error> {
    consumer_config(kafka)
        .remove("group.id")
        .set("isolation.level", isolation)
        .create_with_context(QuietContext)
        .map_err(|source| client_error(kafka, source))
}

/// Resolve the flags to `[start, end)` on every requested partition, from
/// the watermarks observed now (so the replay terminates) and, for times,
/// `offsets_for_times`.
pub fn resolve(kafka: &KafkaArgs, spec: &RangeSpec) -> Result<Vec<PartitionRange>, Error> {
    resolve_with(&lookup_client(kafka, "read_committed")?, kafka, spec)
}

/// [`resolve`], then the partitions of the range with an open transaction
/// ([`OpenTransaction`]). Both clients are created first, so they connect
/// to the broker at the same time: a new client's first lookup waits
/// ~50 ms for it on a local broker, paid once instead of twice.
pub fn resolve_and_check_transactions(
    kafka: &KafkaArgs,
    spec: &RangeSpec,
) -> Result<(Vec<PartitionRange>, Vec<OpenTransaction>), Error> {
    let committed = lookup_client(kafka, "read_committed")?;
    let uncommitted = lookup_client(kafka, "read_uncommitted")?;
    let ranges = resolve_with(&committed, kafka, spec)?;
    let open = open_transactions(&committed, &uncommitted, kafka, &ranges)?;
    Ok((ranges, open))
}

fn resolve_with(
    consumer: &ReplayConsumer,
    kafka: &KafkaArgs,
    spec: &RangeSpec,
) -> Result<Vec<PartitionRange>, Error> {
    let topic = kafka.log_topic.as_str();
    let all = partitions_of(consumer, topic)?;
    if let Some(missing) = spec.partitions.iter().find(|p| !all.contains(p)) {
        return Err(Error::NoSuchPartition {
            topic: topic.to_owned(),
            partition: *missing,
        });
    }
    let partitions: Vec<i32> = all
        .into_iter()
        .filter(|p| spec.includes_partition(*p))
        .collect();
    let mut marks = BTreeMap::new();
    for partition in &partitions {
        marks.insert(*partition, watermarks(consumer, topic, *partition)?);
    }
    let from = offsets_at(consumer, topic, &marks, spec.from)?;
    let mut to = offsets_at(consumer, topic, &marks, spec.to)?;
    if spec.to_offsets.is_some() {
        for partition in &partitions {
            let (low, _) = marks[partition];
            let start = from.get(partition).copied().unwrap_or(low).max(low);
            // A partition the checkpoint lacks is not read (its range is
            // empty); the digest comparison then says why it is skipped.
            let end = spec.to_offset_of(*partition).flatten().unwrap_or(start);
            to.insert(*partition, end);
        }
    }
    Ok(partitions
        .iter()
        .map(|p| {
            let range = clamp_range(*p, marks[p], from.get(p).copied(), to.get(p).copied());
            tracing::debug!(
                topic,
                partition = p,
                low = marks[p].0,
                high = marks[p].1,
                start = range.start,
                end = range.end,
                "range resolved"
            );
            let (low, high) = marks[p];
            if from.get(p).is_some_and(|start| *start < low) {
                tracing::warn!(
                    topic,
                    partition = p,
                    first_available = low,
                    "offsets before {low} are no longer on the log (retention); reading from {low}"
                );
            }
            if to.get(p).is_some_and(|end| *end > high) {
                tracing::info!(
                    topic,
                    partition = p,
                    high,
                    "the log ends at {high}; reading up to it"
                );
            }
            range
        })
        .collect())
}

/// A partition whose last stable offset (what a read_committed consumer
/// reads up to) is behind its high watermark: a transaction is open, and
/// the records after it are not read. Warrant's writers are not
/// transactional, so on `warrant.log` this is itself suspicious.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OpenTransaction {
    pub partition: i32,
    pub stable_end: i64,
    pub high_watermark: i64,
}

impl std::fmt::Display for OpenTransaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "partition {}: the last stable offset {} is behind the high watermark {} (an open transaction): records from {} on are not read, and Warrant's writers are not transactional",
            self.partition, self.stable_end, self.high_watermark, self.stable_end
        )
    }
}

/// The partitions of `ranges` with an open transaction, found by asking
/// for the watermarks as a read_uncommitted consumer too.
fn open_transactions(
    committed: &ReplayConsumer,
    uncommitted: &ReplayConsumer,
    kafka: &KafkaArgs,
    ranges: &[PartitionRange],
) -> Result<Vec<OpenTransaction>, Error> {
    let topic = kafka.log_topic.as_str();
    let mut open = Vec::new();
    for range in ranges {
        let (_, stable_end) = watermarks(committed, topic, range.partition)?;
        let (_, high_watermark) = watermarks(uncommitted, topic, range.partition)?;
        if stable_end < high_watermark {
            open.push(OpenTransaction {
                partition: range.partition,
                stable_end,
                high_watermark,
            });
        }
    }
    Ok(open)
}

/// The offset a bound names on each partition.
fn offsets_at(
    consumer: &ReplayConsumer,
    topic: &str,
    marks: &BTreeMap<i32, (i64, i64)>,
    bound: Option<Bound>,
) -> Result<BTreeMap<i32, i64>, Error> {
    let time = match bound {
        None => return Ok(BTreeMap::new()),
        Some(Bound::Offset(offset)) => return Ok(marks.keys().map(|p| (*p, offset)).collect()),
        Some(Bound::Time(time)) => time,
    };
    let mut query = TopicPartitionList::new();
    for partition in marks.keys() {
        query
            .add_partition_offset(topic, *partition, Offset::Offset(time))
            .map_err(|source| Error::KafkaCall {
                what: "look up offsets by time",
                topic: topic.to_owned(),
                source,
            })?;
    }
    let answer = consumer
        .offsets_for_times(query, METADATA_TIMEOUT)
        .map_err(|source| Error::KafkaCall {
            what: "look up offsets by time",
            topic: topic.to_owned(),
            source,
        })?;
    let mut offsets = BTreeMap::new();
    for element in answer.elements_for_topic(topic) {
        let partition = element.partition();
        let Some((_, high)) = marks.get(&partition) else {
            continue;
        };
        if let Err(e) = element.error() {
            return Err(Error::OffsetForTime {
                topic: topic.to_owned(),
                partition,
                time,
                reason: e.to_string(),
            });
        }
        let offset = match element.offset() {
            Offset::Offset(offset) => offset,
            // No record at or after that time: the bound is the end.
            Offset::End => *high,
            other => {
                return Err(Error::OffsetForTime {
                    topic: topic.to_owned(),
                    partition,
                    time,
                    reason: format!("broker answered {other:?}"),
                })
            }
        };
        offsets.insert(partition, offset);
    }
    if let Some(missing) = marks.keys().find(|p| !offsets.contains_key(p)) {
        return Err(Error::OffsetForTime {
            topic: topic.to_owned(),
            partition: *missing,
            time,
            reason: "no answer for this partition".to_owned(),
        });
    }
    Ok(offsets)
}

/// How reader threads share the partitions: round robin, at most one
/// thread per non-empty range.
pub fn plan(ranges: &[PartitionRange], threads: usize) -> Vec<Vec<PartitionRange>> {
    let work: Vec<PartitionRange> = ranges.iter().copied().filter(|r| !r.is_empty()).collect();
    let threads = threads.clamp(1, work.len().max(1));
    let mut plan = vec![Vec::new(); threads];
    for (index, range) in work.into_iter().enumerate() {
        plan[index % threads].push(range);
    }
    plan.retain(|ranges| !ranges.is_empty());
    plan
}

/// Read `plan[i]` into `sinks[i]` on one thread each, and give the sinks back.
pub fn read<S: Sink + Send>(
    kafka: &KafkaArgs,
    plan: Vec<Vec<PartitionRange>>,
    sinks: Vec<S>,
    progress: &Progress,
    stall_timeout: Duration,
) -> Result<Vec<S>, Error> {
    progress.set_total(plan.iter().flatten().map(PartitionRange::len).sum());
    progress.run(|| {
        std::thread::scope(|scope| {
            let handles: Vec<_> = plan
                .into_iter()
                .zip(sinks)
                .map(|(ranges, mut sink)| {
                    scope.spawn(move || {
                        read_ranges(kafka, &ranges, &mut sink, progress, stall_timeout)
                            .map(|()| sink)
                    })
                })
                .collect();
            let mut sinks = Vec::with_capacity(handles.len());
            let mut first_error = None;
            for handle in handles {
                match handle.join() {
                    Ok(Ok(sink)) => sinks.push(sink),
                    Ok(Err(e)) => {
                        first_error.get_or_insert(e);
                    }
                    Err(_) => {
                        first_error.get_or_insert(Error::Worker);
                    }
                }
            }
            match first_error {
                Some(e) => Err(e),
                None => Ok(sinks),
            }
        })
    })
}

/// Where one partition's read stands.
struct Reading {
    range: PartitionRange,
    next: i64,
}

fn positions(pending: &BTreeMap<i32, Reading>) -> String {
    let list: Vec<String> = pending
        .iter()
        .map(|(p, r)| format!("{p}@{}", r.next))
        .collect();
    list.join(",")
}

/// Whether a consumer error ends the read. Transport trouble is retried by
/// librdkafka (and bounded by the stall timeout); anything about the
/// partition or the offsets is not going to fix itself.
fn is_fatal(error: &KafkaError) -> bool {
    match error {
        KafkaError::MessageConsumption(code) => !matches!(
            code,
            RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::Resolve
                | RDKafkaErrorCode::OperationTimedOut
                | RDKafkaErrorCode::RequestTimedOut
                | RDKafkaErrorCode::NetworkException
                | RDKafkaErrorCode::LeaderNotAvailable
                | RDKafkaErrorCode::NotLeaderForPartition
                | RDKafkaErrorCode::BrokerNotAvailable
                | RDKafkaErrorCode::CoordinatorLoadInProgress
        ),
        _ => true,
    }
}

fn read_ranges<S: Sink>(
    kafka: &KafkaArgs,
    ranges: &[PartitionRange],
    sink: &mut S,
    progress: &Progress,
    stall_timeout: Duration,
) -> Result<(), Error> {
    let topic = kafka.log_topic.as_str();
    let consumer = consumer(kafka)?;
    let kafka_call = |what: &'static str| {
        move |source| Error::KafkaCall {
            what,
            topic: topic.to_owned(),
            source,
        }
    };
    let mut assignment = TopicPartitionList::new();
    let mut pending = BTreeMap::new();
    for range in ranges.iter().filter(|r| !r.is_empty()) {
        assignment
            .add_partition_offset(topic, range.partition, Offset::Offset(range.start))
            .map_err(kafka_call("assign partitions"))?;
        pending.insert(
            range.partition,
            Reading {
                range: *range,
                next: range.start,
            },
        );
    }
    if pending.is_empty() {
        return Ok(());
    }
    consumer
        .assign(&assignment)
        .map_err(kafka_call("assign partitions"))?;

    // Reading the clock per record shows in profiles: only time the gaps.
    let mut idle_since: Option<Instant> = None;
    let mut unreported = 0u64;
    while !pending.is_empty() {
        let message = match consumer.poll(POLL_TIMEOUT) {
            None => {
                if idle_since.get_or_insert_with(Instant::now).elapsed() >= stall_timeout {
                    return Err(Error::Stalled {
                        topic: topic.to_owned(),
                        positions: positions(&pending),
                        seconds: stall_timeout.as_secs(),
                    });
                }
                continue;
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                // The end of what is on the log now: nothing more of this
                // range can arrive (transaction markers can hide the last
                // offsets of a range from a read_committed consumer).
                if let Some(reading) = pending.remove(&partition) {
                    tracing::debug!(
                        topic,
                        partition,
                        next = reading.next,
                        end = reading.range.end,
                        "partition end reached"
                    );
                }
                continue;
            }
            Some(Err(error)) if is_fatal(&error) => {
                return Err(Error::Read {
                    topic: topic.to_owned(),
                    positions: positions(&pending),
                    source: Box::new(error),
                })
            }
            Some(Err(error)) => {
                tracing::warn!(topic, positions = %positions(&pending), error = %error, "kafka trouble; retrying");
                continue;
            }
            Some(Ok(message)) => message,
        };
        idle_since = None;
        let partition = message.partition();
        let offset = message.offset();
        let Some(reading) = pending.get_mut(&partition) else {
            continue;
        };
        if offset >= reading.range.end {
            finish(&consumer, topic, &mut pending, partition);
            continue;
        }
        sink.record(&RawRecord {
            topic,
            partition,
            offset,
            timestamp: message.timestamp().to_millis(),
            key: message.key(),
            value: message.payload().unwrap_or(&[]),
            log_start: reading.range.log_start,
            range_start: reading.range.start,
        })?;
        reading.next = offset + 1;
        unreported += 1;
        if unreported == PROGRESS_BATCH {
            progress.add(unreported);
            unreported = 0;
        }
        if reading.next >= reading.range.end {
            finish(&consumer, topic, &mut pending, partition);
        }
    }
    progress.add(unreported);
    Ok(())
}

/// Stop fetching a partition whose range is done.
fn finish(
    consumer: &ReplayConsumer,
    topic: &str,
    pending: &mut BTreeMap<i32, Reading>,
    partition: i32,
) {
    pending.remove(&partition);
    if pending.is_empty() {
        return;
    }
    let mut done = TopicPartitionList::new();
    done.add_partition(topic, partition);
    if let Err(error) = consumer.pause(&done) {
        tracing::debug!(topic, partition, error = %error, "cannot pause a finished partition");
    }
}

/// Every reviewer directory on the principals topic, with the time each was
/// published (the record timestamp), for the offline signature audit. The
/// topic is small (one record per directory version, compacted), so it is
/// read whole. A missing topic is an error: an auditor must not mistake
/// "nothing to check against" for "nothing wrong".
pub fn read_directories(
    kafka: &KafkaArgs,
) -> Result<Vec<crate::signatures::PublishedDirectory>, Error> {
    let consumer = consumer(kafka)?;
    let topic = &kafka.principals_topic;
    let mut directories = Vec::new();
    let mut list = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for partition in partitions_of(&consumer, topic)? {
        let (low, high) = watermarks(&consumer, topic, partition)?;
        if high > low {
            list.add_partition_offset(topic, partition, Offset::Offset(low))
                .map_err(|source| client_error(kafka, source))?;
            ends.insert(partition, high);
        }
    }
    if ends.is_empty() {
        return Ok(directories);
    }
    consumer
        .assign(&list)
        .map_err(|source| client_error(kafka, source))?;
    let deadline = Instant::now() + METADATA_TIMEOUT;
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    while ends
        .iter()
        .any(|(partition, high)| next.get(partition).copied().unwrap_or(0) < *high)
    {
        if Instant::now() > deadline {
            return Err(Error::Stalled {
                topic: topic.clone(),
                positions: format!("{next:?} of {ends:?}"),
                seconds: METADATA_TIMEOUT.as_secs(),
            });
        }
        // Errors are end-of-partition notices; the loop condition decides.
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
            next.insert(message.partition(), message.offset().saturating_add(1));
            let digest = message
                .key()
                .map(|key| String::from_utf8_lossy(key).into_owned())
                .unwrap_or_default();
            let published_at = message.timestamp().to_millis().unwrap_or_default();
            let Some(value) = message.payload() else {
                continue;
            };
            match crate::signatures::parse_directory(&digest, published_at, value) {
                Ok(directory) => directories.push(directory),
                Err(problem) => tracing::warn!(topic = %topic, problem, "skipping a record"),
            }
        }
    }
    Ok(directories)
}

/// Every ruleset on the rulesets topic, by the digest it is keyed under, as
/// the exact published bytes (for `--check-rules`). Like the directories,
/// the topic is small and read whole; a missing topic is an error.
pub fn read_rulesets(kafka: &KafkaArgs) -> Result<BTreeMap<String, Vec<u8>>, Error> {
    let consumer = consumer(kafka)?;
    let topic = &kafka.rulesets_topic;
    let mut rulesets = BTreeMap::new();
    let mut list = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for partition in partitions_of(&consumer, topic)? {
        let (low, high) = watermarks(&consumer, topic, partition)?;
        if high > low {
            list.add_partition_offset(topic, partition, Offset::Offset(low))
                .map_err(|source| client_error(kafka, source))?;
            ends.insert(partition, high);
        }
    }
    if ends.is_empty() {
        return Ok(rulesets);
    }
    consumer
        .assign(&list)
        .map_err(|source| client_error(kafka, source))?;
    let deadline = Instant::now() + METADATA_TIMEOUT;
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    while ends
        .iter()
        .any(|(partition, high)| next.get(partition).copied().unwrap_or(0) < *high)
    {
        if Instant::now() > deadline {
            return Err(Error::Stalled {
                topic: topic.clone(),
                positions: format!("{next:?} of {ends:?}"),
                seconds: METADATA_TIMEOUT.as_secs(),
            });
        }
        // Errors are end-of-partition notices; the loop condition decides.
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
            next.insert(message.partition(), message.offset() + 1);
            let (Some(key), Some(value)) = (message.key(), message.payload()) else {
                continue;
            };
            rulesets.insert(String::from_utf8_lossy(key).into_owned(), value.to_vec());
        }
    }
    Ok(rulesets)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(partition: i32, start: i64, end: i64) -> PartitionRange {
        PartitionRange {
            partition,
            log_start: 0,
            start,
            end,
        }
    }

    #[test]
    fn partitions_are_shared_round_robin_without_empty_ranges() {
        let ranges = [
            range(0, 0, 10),
            range(1, 5, 5),
            range(2, 0, 3),
            range(3, 1, 2),
        ];
        let plan = plan(&ranges, 2);
        let partitions: Vec<Vec<i32>> = plan
            .iter()
            .map(|r| r.iter().map(|r| r.partition).collect())
            .collect();
        assert_eq!(partitions, vec![vec![0, 3], vec![2]]);
        assert_eq!(super::plan(&ranges, 64).len(), 3);
        assert_eq!(super::plan(&ranges, 0).len(), 1);
        assert!(super::plan(&[range(0, 3, 3)], 4).is_empty());
    }
}
