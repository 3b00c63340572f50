//! Offset gaps: offsets inside a range that no record answers to.
//!
//! Warrant's writers are idempotent, not transactional, and `warrant.log`
//! is never compacted (retention only ever deletes from the front), so
//! inside a range its offsets are contiguous. An offset with no record is
//! therefore evidence that the log (or a file, or a copy of it) was
//! rewritten: a transaction marker placed where a record was, an aborted
//! record, or a record taken out of an export. Exports keep each record's
//! offset, so a file's gaps count the same as the topic's.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::range::PartitionRange;
use crate::source::{RawRecord, Sink};
use crate::Error;

/// Offsets `[from, to)` of `partition` that hold no record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    pub partition: i32,
    pub from: i64,
    pub to: i64,
}

impl std::fmt::Display for Gap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.to.checked_sub(self.from) == Some(1) {
            write!(
                f,
                "partition {}: no record at offset {} inside the range",
                self.partition, self.from
            )
        } else {
            write!(
                f,
                "partition {}: no records at offsets {} to {} inside the range",
                self.partition,
                self.from,
                self.to.saturating_sub(1)
            )
        }
    }
}

/// What offsets a read saw, per partition: the first and last, and every
/// gap between two records. Records of a partition come in offset order.
#[derive(Debug, Clone, Default)]
pub struct Offsets {
    seen: BTreeMap<i32, (i64, i64)>,
    inner: Vec<Gap>,
}

impl Offsets {
    pub fn see(&mut self, partition: i32, offset: i64) {
        match self.seen.get_mut(&partition) {
            None => {
                self.seen.insert(partition, (offset, offset));
            }
            Some((_, last)) => {
                // Checked: offsets from a file may be anything; an offset
                // at or before the last is refused elsewhere (out of order).
                if let Some(next) = last.checked_add(1).filter(|next| offset > *next) {
                    self.inner.push(Gap {
                        partition,
                        from: next,
                        to: offset,
                    });
                }
                *last = offset;
            }
        }
    }

    /// Combine the offsets of readers that read different partitions.
    pub fn merge(all: impl IntoIterator<Item = Offsets>) -> Offsets {
        let mut merged = Offsets::default();
        for offsets in all {
            merged.seen.extend(offsets.seen);
            merged.inner.extend(offsets.inner);
        }
        merged
    }

    /// Every gap: between records always; and, when `exact` (the ranges
    /// are exactly what was meant to be read), before the first record and
    /// after the last one of each range, or the whole range if it has none.
    pub fn gaps(&self, ranges: &[PartitionRange], exact: bool) -> Vec<Gap> {
        let mut gaps = self.inner.clone();
        if exact {
            for range in ranges.iter().filter(|r| !r.is_empty()) {
                let partition = range.partition;
                let gap = |from, to| Gap {
                    partition,
                    from,
                    to,
                };
                match self.seen.get(&partition) {
                    None => gaps.push(gap(range.start, range.end)),
                    Some((first, last)) => {
                        if *first > range.start {
                            gaps.push(gap(range.start, *first));
                        }
                        if let Some(next) = last.checked_add(1).filter(|next| *next < range.end) {
                            gaps.push(gap(next, range.end));
                        }
                    }
                }
            }
        }
        gaps.sort_by_key(|g| (g.partition, g.from));
        gaps
    }
}

/// A [`Sink`] that notes offsets on the way to another sink (the exporter).
#[derive(Debug)]
pub struct Tracking<S> {
    pub sink: S,
    pub offsets: Offsets,
}

impl<S: Sink> Sink for Tracking<S> {
    fn record(&mut self, record: &RawRecord<'_>) -> Result<(), Error> {
        self.sink.record(record)?;
        self.offsets.see(record.partition, record.offset);
        Ok(())
    }
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

    fn gap(partition: i32, from: i64, to: i64) -> Gap {
        Gap {
            partition,
            from,
            to,
        }
    }

    #[test]
    fn contiguous_offsets_have_no_gaps_even_in_a_late_range() {
        let mut offsets = Offsets::default();
        for offset in 40..50 {
            offsets.see(0, offset);
        }
        // An honest --from 40 --to 50 read.
        assert_eq!(offsets.gaps(&[range(0, 40, 50)], true), vec![]);
    }

    #[test]
    fn a_marker_in_place_of_a_record_is_a_gap_wherever_it_lies() {
        let mut offsets = Offsets::default();
        for offset in [1, 2, 4, 5, 9] {
            offsets.see(0, offset);
        }
        offsets.see(1, 7);
        let ranges = [range(0, 0, 12), range(1, 7, 8), range(2, 0, 3)];
        assert_eq!(
            offsets.gaps(&ranges, true),
            vec![
                gap(0, 0, 1),
                gap(0, 3, 4),
                gap(0, 6, 9),
                gap(0, 10, 12),
                gap(2, 0, 3),
            ]
        );
        // Where the ranges are not known to be exact, only gaps between
        // records are evidence.
        assert_eq!(
            offsets.gaps(&ranges, false),
            vec![gap(0, 3, 4), gap(0, 6, 9)]
        );
        assert_eq!(
            gap(0, 3, 4).to_string(),
            "partition 0: no record at offset 3 inside the range"
        );
        assert_eq!(
            gap(0, 6, 9).to_string(),
            "partition 0: no records at offsets 6 to 8 inside the range"
        );
    }

    #[test]
    fn extreme_offsets_do_not_overflow() {
        let mut offsets = Offsets::default();
        offsets.see(0, i64::MIN);
        offsets.see(0, i64::MAX);
        offsets.see(1, i64::MAX);
        let gaps = offsets.gaps(&[range(1, 0, i64::MAX)], true);
        assert_eq!(gaps.len(), 2, "{gaps:?}");
    }
}
