//! How the view keeps history: the log records themselves, in runs per
//! partition, and for each instance the positions of its records.
//!
//! A batch writes the records it folded of one partition as runs of
//! consecutive records, at most [`RUN_BYTES`] each (a larger record is a run
//! by itself), under `r` partition first-offset. Those keys grow with the
//! offsets, so sled appends them at the end of its tree. Per instance, the
//! batch writes only the state, whose value carries the positions of its
//! entries ([`Positions`]): one key per instance touched, not two, and none
//! of them a copy of a record.
//!
//! Every folded record is an entry of exactly one instance, so every record
//! in a run is one instance's entry; nothing in a run is ever rewritten.

use std::collections::BTreeMap;

use warrant_authority::LogPosition;

use crate::error::Error;
use crate::store;

/// A run closes once adding the next record would pass this many bytes.
/// sled splits a leaf past 16 keys and writes a page over an eighth of its
/// 512 KiB segment to a file of its own: a leaf of 4 KiB runs stays inline.
/// Small runs also keep what reading one instance's entries reads small.
pub(crate) const RUN_BYTES: usize = 4 * 1024;

/// Length (u32 BE), then the record's offset (i64 BE), then its bytes.
const LEN_BYTES: usize = 4;
const OFFSET_BYTES: usize = 8;

/// Append one record to a run.
pub(crate) fn push_entry(run: &mut Vec<u8>, offset: i64, bytes: &[u8]) -> Result<(), Error> {
    let len = u32::try_from(OFFSET_BYTES + bytes.len())
        .map_err(|_| Error::Config("a log record over 4 GiB".to_owned()))?;
    run.reserve(LEN_BYTES + OFFSET_BYTES + bytes.len());
    run.extend_from_slice(&len.to_be_bytes());
    run.extend_from_slice(&offset.to_be_bytes());
    run.extend_from_slice(bytes);
    Ok(())
}

/// The first record of a run (offset and bytes) and the rest of the run.
pub(crate) fn split_entry(run: &[u8]) -> Result<(i64, &[u8], &[u8]), String> {
    let len = run
        .get(..LEN_BYTES)
        .and_then(|b| <[u8; LEN_BYTES]>::try_from(b).ok())
        .map(u32::from_be_bytes)
        .ok_or("truncated length")?;
    let end = usize::try_from(len)
        .ok()
        .filter(|len| *len >= OFFSET_BYTES)
        .and_then(|len| len.checked_add(LEN_BYTES))
        .filter(|end| *end <= run.len())
        .ok_or("bad entry length")?;
    let (offset, bytes) = run[LEN_BYTES..end].split_at(OFFSET_BYTES);
    let offset = i64::from_be_bytes(offset.try_into().map_err(|_| "offset")?);
    Ok((offset, bytes, &run[end..]))
}

/// Where the record at `offset` lies in `run`, as a byte range; `None` if
/// the run does not hold it.
pub(crate) fn find_entry(run: &[u8], offset: i64) -> Result<Option<(usize, usize)>, String> {
    let mut rest = run;
    while !rest.is_empty() {
        let (at, bytes, tail) = split_entry(rest)?;
        if at == offset {
            let start = run.len() - rest.len() + LEN_BYTES + OFFSET_BYTES;
            return Ok(Some((start, start + bytes.len())));
        }
        if at > offset {
            break;
        }
        rest = tail;
    }
    Ok(None)
}

/// A run's sled key and its bytes.
pub(crate) type Run = (Vec<u8>, Vec<u8>);

/// The runs an open batch is filling, one per partition.
#[derive(Debug, Default)]
pub(crate) struct OpenRuns {
    open: BTreeMap<i32, (i64, Vec<u8>)>,
}

impl OpenRuns {
    /// Add a folded record. Returns the partition's previous run, key and
    /// bytes, when this record did not fit in it.
    pub(crate) fn push(
        &mut self,
        position: LogPosition,
        bytes: &[u8],
    ) -> Result<Option<Run>, Error> {
        let mut closed = None;
        if let Some((first, run)) = self.open.get_mut(&position.partition) {
            if !run.is_empty() && run.len() + LEN_BYTES + OFFSET_BYTES + bytes.len() > RUN_BYTES {
                let full = std::mem::replace(run, Vec::with_capacity(RUN_BYTES));
                closed = Some((store::run_key(position.partition, *first), full));
                *first = position.offset;
            }
        }
        let (_, run) = self
            .open
            .entry(position.partition)
            .or_insert_with(|| (position.offset, Vec::with_capacity(RUN_BYTES)));
        push_entry(run, position.offset, bytes)?;
        Ok(closed)
    }

    /// Every open run, key and bytes; none is open afterwards.
    pub(crate) fn close_all(&mut self) -> impl Iterator<Item = Run> {
        std::mem::take(&mut self.open)
            .into_iter()
            .map(|(partition, (first, run))| (store::run_key(partition, first), run))
    }
}

/// The positions of an instance's entries, in entry order, as stored in its
/// state value: per entry the change of partition and the change of offset
/// from the entry before (the first from partition 0, offset 0), each a
/// zigzag LEB128 varint. An instance's records normally share a partition
/// and lie close together, so an entry costs two to four bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Positions {
    bytes: Vec<u8>,
    last: Option<LogPosition>,
    count: u64,
}

impl Positions {
    pub(crate) fn push(&mut self, position: LogPosition) {
        let (partition, offset) = self
            .last
            .map_or((0, 0), |last| (last.partition, last.offset));
        write_varint(
            &mut self.bytes,
            i64::from(position.partition) - i64::from(partition),
        );
        write_varint(&mut self.bytes, position.offset.wrapping_sub(offset));
        self.last = Some(position);
        self.count += 1;
    }

    pub(crate) fn count(&self) -> u64 {
        self.count
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Read stored positions back, checking every varint.
    pub(crate) fn decode(bytes: &[u8]) -> Result<(Positions, Vec<LogPosition>), String> {
        let mut rest = bytes;
        let mut all = Vec::new();
        let (mut partition, mut offset) = (0i64, 0i64);
        while !rest.is_empty() {
            // Checked: corrupt bytes can hold any delta, and an overflow
            // must be an error, never a panic (debug builds check).
            partition = partition
                .checked_add(read_varint(&mut rest)?)
                .ok_or("a partition out of range")?;
            offset = offset.wrapping_add(read_varint(&mut rest)?);
            all.push(LogPosition {
                partition: i32::try_from(partition).map_err(|_| "a partition out of range")?,
                offset,
            });
        }
        let positions = Positions {
            bytes: bytes.to_vec(),
            last: all.last().copied(),
            count: all.len() as u64,
        };
        Ok((positions, all))
    }
}

fn write_varint(out: &mut Vec<u8>, value: i64) {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    while zigzag >= 0x80 {
        out.push((zigzag as u8) | 0x80);
        zigzag >>= 7;
    }
    out.push(zigzag as u8);
}

fn read_varint(input: &mut &[u8]) -> Result<i64, String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = input.split_first().ok_or("a truncated position")?;
        *input = rest;
        value |= u64::from(byte & 0x7F) << shift;
        if byte & 0x80 == 0 {
            return Ok(((value >> 1) as i64) ^ -((value & 1) as i64));
        }
    }
    Err("a position varint over 64 bits".to_owned())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use proptest::prelude::*;

    use super::*;

    fn position(partition: i32, offset: i64) -> LogPosition {
        LogPosition { partition, offset }
    }

    proptest! {
        #[test]
        fn positions_read_back_as_written(
            raw in proptest::collection::vec((0i32..i32::MAX, 0i64..i64::MAX), 0..64)
        ) {
            let mut positions = Positions::default();
            let written: Vec<LogPosition> = raw.iter().map(|(p, o)| position(*p, *o)).collect();
            for at in &written {
                positions.push(*at);
            }
            let (decoded, read) = Positions::decode(positions.as_bytes()).unwrap();
            prop_assert_eq!(&read, &written);
            prop_assert_eq!(decoded, positions);
        }
    }

    #[test]
    fn nearby_positions_cost_a_few_bytes() {
        let mut positions = Positions::default();
        for offset in [1_000_000, 1_000_040, 1_000_100, 1_000_300] {
            positions.push(position(3, offset));
        }
        // The first entry carries the whole offset; the rest, small steps.
        assert!(positions.as_bytes().len() <= 5 + 4 * 3, "{:?}", positions);
        assert!(Positions::decode(&[0x80]).is_err());
        assert!(Positions::decode(&[0x80; 11]).is_err());
    }

    #[test]
    fn corrupt_positions_are_an_error_never_a_panic() {
        // A partition of 1 (or -1), then a delta of i64::MAX (or MIN): the
        // sum overflows an i64, though every partition before it fit.
        let varint = |value: i64| {
            let mut bytes = Vec::new();
            write_varint(&mut bytes, value);
            bytes
        };
        let (max, min) = (varint(i64::MAX), varint(i64::MIN));
        for (first, second) in [(&varint(1), &max), (&varint(-1), &min)] {
            let mut bytes = Vec::new();
            for delta in [first, second] {
                bytes.extend_from_slice(delta);
                bytes.push(0);
            }
            let decoded = std::panic::catch_unwind(|| Positions::decode(&bytes));
            assert!(
                matches!(decoded, Ok(Err(_))),
                "{bytes:?} must decode to an error: {decoded:?}"
            );
        }
        // A partition outside i32, in one step.
        let mut bytes = max.clone();
        bytes.push(0);
        assert!(Positions::decode(&bytes).is_err());
        // Every byte string of up to three bytes decodes or fails, but
        // never panics; so do the overflowing ones with junk after them.
        for a in 0..=255u8 {
            for b in [0u8, 1, 0x7F, 0x80, 0xFE, 0xFF] {
                for c in [0u8, 0x80, 0xFF] {
                    let _ = Positions::decode(&[a, b, c]);
                    let mut long = max.clone();
                    long.extend_from_slice(&[a, b, c]);
                    long.extend_from_slice(&max);
                    long.push(a);
                    let _ = Positions::decode(&long);
                }
            }
        }
    }

    proptest! {
        #[test]
        fn arbitrary_position_bytes_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..64)
        ) {
            let _ = Positions::decode(&bytes);
        }
    }

    #[test]
    fn runs_close_when_full_and_every_record_is_found_again() {
        let mut runs = OpenRuns::default();
        let mut closed = Vec::new();
        let record = vec![7u8; 1000];
        for offset in 0..100 {
            for partition in [0, 1] {
                if let Some(run) = runs.push(position(partition, offset), &record).unwrap() {
                    closed.push(run);
                }
            }
        }
        closed.extend(runs.close_all());
        assert!(closed.iter().all(|(_, run)| run.len() <= RUN_BYTES));
        assert!(closed.len() >= 2 * 100 * 1000 / RUN_BYTES);
        for partition in [0i32, 1] {
            for offset in 0..100 {
                let found = closed
                    .iter()
                    .filter(|(key, _)| key[1..5] == partition.to_be_bytes())
                    .filter_map(|(_, run)| find_entry(run, offset).unwrap().map(|r| (run, r)))
                    .collect::<Vec<_>>();
                assert_eq!(found.len(), 1, "partition {partition} offset {offset}");
                let (run, (start, end)) = found[0];
                assert_eq!(&run[start..end], &record[..]);
            }
        }
        // A record over the limit is a run by itself.
        let mut runs = OpenRuns::default();
        runs.push(position(0, 0), &[1]).unwrap();
        let big = vec![2u8; RUN_BYTES * 2];
        let closed = runs.push(position(0, 1), &big).unwrap().unwrap();
        assert_eq!(find_entry(&closed.1, 0).unwrap(), Some((12, 13)));
        let (_, last) = runs.close_all().next().unwrap();
        assert_eq!(find_entry(&last, 1).unwrap(), Some((12, 12 + big.len())));
    }

    #[test]
    fn a_truncated_run_does_not_split_cleanly() {
        let mut run = Vec::new();
        for offset in 0..5 {
            push_entry(&mut run, offset, b"record").unwrap();
        }
        assert!(split_entry(&run[..3]).is_err());
        let mut truncated = &run[..run.len() - 1];
        let mut failed = false;
        while !truncated.is_empty() {
            match split_entry(truncated) {
                Ok((_, _, tail)) => truncated = tail,
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        assert!(failed);
        assert!(find_entry(&run[..run.len() - 1], 4).is_err());
        assert_eq!(find_entry(&run, 9).unwrap(), None);
    }
}
