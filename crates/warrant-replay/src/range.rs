//! Which part of the log to read: what the flags ask for ([`RangeSpec`]) and
//! what it means on each partition once the log's offsets are known
//! ([`PartitionRange`]).
//!
//! Ranges are half-open everywhere: `--from` is the first offset (or time)
//! read, `--to` the first one *not* read, like Kafka's high watermark and the
//! projector's checkpoint offsets. So `--to` can be pasted from a checkpoint.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use warrant_schema::TimestampMillis;

use crate::time::parse_time;
use crate::Error;

/// One end of a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    Offset(i64),
    /// Epoch milliseconds: the first record whose Kafka timestamp is at or
    /// after this instant (Kafka's `offsets_for_times`).
    Time(TimestampMillis),
}

/// The range the flags ask for, before looking at the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeSpec {
    /// Partitions to read; empty means all of them.
    pub partitions: Vec<i32>,
    /// Inclusive start; `None` = the first available offset.
    pub from: Option<Bound>,
    /// Exclusive end; `None` = the high watermark observed at start.
    pub to: Option<Bound>,
    /// Exclusive end per partition (`--to-checkpoint`: a projector's
    /// checkpoint offsets), instead of `to`; a partition it leaves out is
    /// read up to its start, that is not at all.
    pub to_offsets: Option<BTreeMap<i32, i64>>,
}

impl RangeSpec {
    /// The whole log, every partition.
    pub fn all() -> RangeSpec {
        RangeSpec::default()
    }

    /// Build from the command line's pieces, refusing contradictions.
    pub fn from_flags(
        partitions: &[i32],
        from: Option<i64>,
        to: Option<i64>,
        from_time: Option<&str>,
        to_time: Option<&str>,
    ) -> Result<RangeSpec, Error> {
        let usage = |message: String| Error::Usage(message);
        if let Some(p) = partitions.iter().find(|p| **p < 0) {
            return Err(usage(format!("--partition {p}: partitions are >= 0")));
        }
        let from = match (from, from_time) {
            (Some(_), Some(_)) => {
                return Err(usage("give --from or --from-time, not both".to_owned()))
            }
            (Some(offset), None) if offset < 0 => {
                return Err(usage(format!("--from {offset}: offsets are >= 0")))
            }
            (Some(offset), None) => Some(Bound::Offset(offset)),
            (None, Some(text)) => Some(Bound::Time(
                parse_time(text).map_err(|e| usage(format!("--from-time {e}")))?,
            )),
            (None, None) => None,
        };
        let to = match (to, to_time) {
            (Some(_), Some(_)) => return Err(usage("give --to or --to-time, not both".to_owned())),
            (Some(offset), None) if offset < 0 => {
                return Err(usage(format!("--to {offset}: offsets are >= 0")))
            }
            (Some(offset), None) => Some(Bound::Offset(offset)),
            (None, Some(text)) => Some(Bound::Time(
                parse_time(text).map_err(|e| usage(format!("--to-time {e}")))?,
            )),
            (None, None) => None,
        };
        match (from, to) {
            (Some(Bound::Offset(a)), Some(Bound::Offset(b))) if a > b => {
                return Err(usage(format!("--from {a} is after --to {b}")))
            }
            (Some(Bound::Time(a)), Some(Bound::Time(b))) if a > b => {
                return Err(usage(format!("--from-time {a} is after --to-time {b}")))
            }
            _ => {}
        }
        let mut partitions = partitions.to_vec();
        partitions.sort_unstable();
        partitions.dedup();
        Ok(RangeSpec {
            partitions,
            from,
            to,
            to_offsets: None,
        })
    }

    pub fn includes_partition(&self, partition: i32) -> bool {
        self.partitions.is_empty() || self.partitions.contains(&partition)
    }

    pub fn uses_time(&self) -> bool {
        matches!(self.from, Some(Bound::Time(_))) || matches!(self.to, Some(Bound::Time(_)))
    }

    /// The end `to_offsets` gives a partition: `Some(None)` when it has
    /// none (the partition is not read), `None` without `to_offsets`.
    pub fn to_offset_of(&self, partition: i32) -> Option<Option<i64>> {
        self.to_offsets
            .as_ref()
            .map(|ends| ends.get(&partition).copied())
    }
}

/// What a range is on one partition: `[start, end)`, and where the log
/// itself starts there (its low watermark when the range was resolved).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionRange {
    pub partition: i32,
    /// The first offset still on the log.
    pub log_start: i64,
    pub start: i64,
    pub end: i64,
}

impl PartitionRange {
    /// Offsets in the range (an upper bound on records: compaction and
    /// transaction markers leave gaps).
    pub fn len(&self) -> u64 {
        // Checked: a range read from a file header may hold any i64s.
        self.end
            .checked_sub(self.start)
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }
}

/// Clamp a requested `[start, end)` to what the partition holds,
/// `[low, high)`. `None` means "from the beginning" / "to the high
/// watermark"; an `offsets_for_times` lookup that found nothing (every
/// record is older) is passed as `Some(high)`.
pub fn clamp_range(
    partition: i32,
    (low, high): (i64, i64),
    start: Option<i64>,
    end: Option<i64>,
) -> PartitionRange {
    let start = start.unwrap_or(low).clamp(low, high.max(low));
    let end = end.unwrap_or(high).clamp(start, high.max(start));
    PartitionRange {
        partition,
        log_start: low,
        start,
        end,
    }
}

/// The same range applied record by record to an exported file, where
/// there is no broker to ask for offsets: a partition starts at the first
/// record at/after `--from` (offset, or Kafka timestamp like
/// `offsets_for_times`) and stops at the first record at/after `--to`.
#[derive(Debug, Clone)]
pub struct RecordFilter {
    spec: RangeSpec,
    /// Per partition: has the range started, has it ended.
    state: BTreeMap<i32, (bool, bool)>,
}

impl RecordFilter {
    pub fn new(spec: RangeSpec) -> RecordFilter {
        RecordFilter {
            spec,
            state: BTreeMap::new(),
        }
    }

    pub fn uses_time(&self) -> bool {
        self.spec.uses_time()
    }

    /// Where an exported range starts once `--from` (an offset) applies.
    pub fn narrow_start(&self, range: &PartitionRange) -> i64 {
        match self.spec.from {
            Some(Bound::Offset(from)) => range.start.max(from).min(range.end),
            _ => range.start,
        }
    }

    /// Whether this record is in the range. Call once per record, in file order.
    pub fn admits(&mut self, partition: i32, offset: i64, timestamp: Option<i64>) -> bool {
        if !self.spec.includes_partition(partition) {
            return false;
        }
        let (started, ended) = self.state.entry(partition).or_insert((false, false));
        if *ended {
            return false;
        }
        let reached = |bound: Bound| match bound {
            Bound::Offset(at) => offset >= at,
            Bound::Time(at) => timestamp.is_some_and(|t| t >= at),
        };
        if !*started {
            *started = self.spec.from.is_none_or(reached);
        }
        let past_end = match self.spec.to_offset_of(partition) {
            Some(Some(end)) => offset >= end,
            Some(None) => true,
            None => self.spec.to.is_some_and(reached),
        };
        if *started && past_end {
            *ended = true;
        }
        *started && !*ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_build_a_spec_and_refuse_contradictions() {
        let spec = RangeSpec::from_flags(&[2, 0, 2], Some(10), Some(20), None, None);
        assert_eq!(
            spec.ok(),
            Some(RangeSpec {
                partitions: vec![0, 2],
                from: Some(Bound::Offset(10)),
                to: Some(Bound::Offset(20)),
                to_offsets: None,
            })
        );
        let spec =
            RangeSpec::from_flags(&[], None, None, Some("1000"), Some("1970-01-01T00:00:02Z"));
        assert_eq!(
            spec.ok().map(|s| (s.from, s.to)),
            Some((Some(Bound::Time(1000)), Some(Bound::Time(2000))))
        );
        for bad in [
            RangeSpec::from_flags(&[], Some(5), None, Some("1000"), None),
            RangeSpec::from_flags(&[], None, Some(5), None, Some("1000")),
            RangeSpec::from_flags(&[], Some(20), Some(10), None, None),
            RangeSpec::from_flags(&[], Some(-1), None, None, None),
            RangeSpec::from_flags(&[-1], None, None, None, None),
            RangeSpec::from_flags(&[], None, None, Some("3000"), Some("2000")),
            RangeSpec::from_flags(&[], None, None, Some("last tuesday"), None),
        ] {
            assert!(matches!(bad, Err(Error::Usage(_))), "{bad:?}");
        }
    }

    #[test]
    fn ranges_are_clamped_to_the_log() {
        let whole = clamp_range(1, (100, 250), None, None);
        assert_eq!((whole.log_start, whole.start, whole.end), (100, 100, 250));
        assert_eq!(whole.len(), 150);

        // Offsets deleted by retention cannot be read; beyond the high
        // watermark nothing exists yet.
        let clamped = clamp_range(1, (100, 250), Some(5), Some(900));
        assert_eq!((clamped.start, clamped.end), (100, 250));

        let middle = clamp_range(1, (100, 250), Some(120), Some(130));
        // The log's own start is kept: what tells a late range (and so a
        // partial instance) from one that reads from the beginning.
        assert_eq!(
            (middle.log_start, middle.start, middle.end, middle.len()),
            (100, 120, 130, 10)
        );

        // A start past the end is an empty range, never a negative one.
        let empty = clamp_range(1, (100, 250), Some(300), None);
        assert!(empty.is_empty());
        assert_eq!(empty.len(), 0);
        let empty_log = clamp_range(0, (0, 0), None, None);
        assert!(empty_log.is_empty());
    }

    #[test]
    fn the_file_filter_starts_and_stops_per_partition() {
        let spec = RangeSpec::from_flags(&[0, 1], Some(2), Some(4), None, None);
        let mut filter = RecordFilter::new(spec.unwrap_or_default());
        let admitted: Vec<(i32, i64)> = [
            (0, 0),
            (0, 1),
            (1, 2),
            (0, 2),
            (0, 3),
            (2, 3),
            (0, 4),
            (1, 3),
            (1, 4),
        ]
        .into_iter()
        .filter(|(p, o)| filter.admits(*p, *o, None))
        .collect();
        assert_eq!(admitted, vec![(1, 2), (0, 2), (0, 3), (1, 3)]);
    }

    #[test]
    fn the_file_filter_follows_offsets_for_times_semantics() {
        let spec = RangeSpec::from_flags(&[], None, None, Some("1000"), Some("2000"));
        let mut filter = RecordFilter::new(spec.unwrap_or_default());
        // Timestamps need not be monotonic: once the range started, an older
        // record is still in it (as when Kafka reads on from that offset);
        // the first record at/after --to-time ends it for good.
        let records = [
            (0, Some(900)),
            (1, None),
            (2, Some(1000)),
            (3, Some(950)),
            (4, None),
            (5, Some(2000)),
            (6, Some(1500)),
        ];
        let admitted: Vec<i64> = records
            .into_iter()
            .filter(|(o, t)| filter.admits(0, *o, *t))
            .map(|(o, _)| o)
            .collect();
        assert_eq!(admitted, vec![2, 3, 4]);
    }

    #[test]
    fn checkpoint_offsets_end_each_partition_on_its_own() {
        // --to-checkpoint: partition 0 up to 3, partition 1 up to 1,
        // partition 2 absent from the checkpoint, so not read.
        let spec = RangeSpec {
            to_offsets: Some(BTreeMap::from([(0, 3), (1, 1)])),
            ..RangeSpec::all()
        };
        let mut filter = RecordFilter::new(spec);
        let admitted: Vec<(i32, i64)> = [(0, 0), (1, 0), (2, 0), (0, 2), (1, 1), (0, 3), (2, 1)]
            .into_iter()
            .filter(|(p, o)| filter.admits(*p, *o, None))
            .collect();
        assert_eq!(admitted, vec![(0, 0), (1, 0), (0, 2)]);
    }
}
