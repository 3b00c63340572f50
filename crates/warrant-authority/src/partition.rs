//! Which partition of the log an instance lives in, and which partitions a
//! projector shard owns.
//!
//! Intake produces every envelope keyed by its instance id with Kafka's
//! default partitioner for keyed records (librdkafka's `murmur2_random`,
//! the Java client's `murmur2`): `(murmur2(key) & 0x7fffffff) % partitions`.
//! [`partition_for_key`] is that function, so a reader that knows the
//! log's partition count can tell, from an id alone, which partition (and
//! so which projector shard) holds the instance without asking anyone.
//! It is only as true as the producer's partitioner: the log's positions
//! stay the truth, and whoever holds a position routes by it instead.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use crate::view::quarantine_partition;

/// Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`, and
/// librdkafka's `rd_murmur2`): seed `0x9747b28c`, little-endian words.
pub fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    // The length is mixed in as Java's int: the low 32 bits.
    let mut h: u32 = 0x9747_b28c ^ (data.len() as u32);
    let mut words = data.chunks_exact(4);
    for word in &mut words {
        let mut k = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = words.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// The partition Kafka's default partitioner gives a record with `key` on
/// a topic of `partitions` partitions; `None` when `partitions` is not
/// positive.
pub fn partition_for_key(key: &[u8], partitions: i32) -> Option<i32> {
    let count = u32::try_from(partitions).ok().filter(|n| *n > 0)?;
    // Below 2^31, so the cast back cannot wrap.
    Some(((murmur2(key) & 0x7fff_ffff) % count) as i32)
}

/// The partition whose records make up `instance_id`: a quarantine names
/// its partition (`quarantine-3`), any other id is a Kafka key routed by
/// [`partition_for_key`]. `None` when `partitions` is not positive or the
/// quarantine's partition is not one of them.
pub fn instance_partition(instance_id: &str, partitions: i32) -> Option<i32> {
    match quarantine_partition(instance_id) {
        Some(partition) => (partition < partitions).then_some(partition),
        None => partition_for_key(instance_id.as_bytes(), partitions),
    }
}

/// Which partitions of the log one projector folds and serves.
///
/// Written `all` (every partition: one projector for the whole log), a
/// list of partitions and ranges (`0-2`, `3,4,5`, `0-2,7`), or `I/N`:
/// shard `I` of `N`, the partitions `p` with `p % N == I`. `I` may also be
/// a name that ends in `-I`, such as a StatefulSet pod's name
/// (`warrant-projector-1/2`), so a pod can pass its own name.
///
/// `I/N` needs no knowledge of the partition count, which is why a
/// StatefulSet uses it: `N` replicas, each its ordinal, cover any log, and
/// each shard gets within one partition of every other's share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ownership {
    All,
    Listed(BTreeSet<i32>),
    Modulo { index: u32, count: u32 },
}

/// Why an ownership cannot be parsed, or does not fit a log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct OwnershipError(pub String);

fn ownership_error(message: impl Into<String>) -> OwnershipError {
    OwnershipError(message.into())
}

/// Largest partition id a list may name; Kafka's own limit is far lower in
/// practice, this only keeps a typo from expanding into a huge range.
const MAX_LISTED: i32 = 100_000;

impl Ownership {
    /// Whether `partition` is this projector's.
    pub fn owns(&self, partition: i32) -> bool {
        match self {
            Ownership::All => true,
            Ownership::Listed(partitions) => partitions.contains(&partition),
            Ownership::Modulo { index, count } => {
                u32::try_from(partition).is_ok_and(|p| p % count == *index)
            }
        }
    }

    /// The partitions of a log with `log_partitions` that this owns: an
    /// error when that is none of them, or when a listed partition is not
    /// in the log (a list names exactly what to fold).
    pub fn resolve(&self, log_partitions: &[i32]) -> Result<BTreeSet<i32>, OwnershipError> {
        if let Ownership::Listed(listed) = self {
            let missing: Vec<i32> = listed
                .iter()
                .filter(|p| !log_partitions.contains(p))
                .copied()
                .collect();
            if !missing.is_empty() {
                return Err(ownership_error(format!(
                    "partitions {} are not in the log, which has {}",
                    ranges(&missing),
                    ranges(log_partitions)
                )));
            }
        }
        let owned: BTreeSet<i32> = log_partitions
            .iter()
            .filter(|p| self.owns(**p))
            .copied()
            .collect();
        if owned.is_empty() {
            return Err(ownership_error(format!(
                "{self} owns none of the log's partitions ({}): fewer partitions than shards",
                ranges(log_partitions)
            )));
        }
        Ok(owned)
    }
}

impl FromStr for Ownership {
    type Err = OwnershipError;

    fn from_str(text: &str) -> Result<Ownership, OwnershipError> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("all") {
            return Ok(Ownership::All);
        }
        if let Some((index, count)) = text.split_once('/') {
            let count: u32 = count
                .trim()
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| {
                    ownership_error(format!(
                        "{text:?}: the shard count after '/' must be a positive integer"
                    ))
                })?;
            let index = index.trim();
            // A pod name: the ordinal is what follows its last '-'.
            let digits = index.rsplit_once('-').map_or(index, |(_, ordinal)| ordinal);
            let index: u32 = digits.parse().map_err(|_| {
                ownership_error(format!(
                    "{text:?}: expected I/N, I a shard number or a name ending in -I"
                ))
            })?;
            if index >= count {
                return Err(ownership_error(format!(
                    "{text:?}: shard {index} of {count} does not exist (shards are numbered 0 to {})",
                    count - 1
                )));
            }
            return Ok(Ownership::Modulo { index, count });
        }
        let mut partitions = BTreeSet::new();
        for part in text.split(',') {
            let part = part.trim();
            let number = |digits: &str| {
                digits
                    .trim()
                    .parse::<i32>()
                    .ok()
                    .filter(|p| (0..=MAX_LISTED).contains(p))
                    .ok_or_else(|| {
                        ownership_error(format!(
                            "{part:?} in {text:?}: expected a partition number (0 to {MAX_LISTED}), a range like 0-2, I/N or all"
                        ))
                    })
            };
            match part.split_once('-') {
                Some((first, last)) => {
                    let (first, last) = (number(first)?, number(last)?);
                    if first > last {
                        return Err(ownership_error(format!(
                            "{part:?} in {text:?}: a range runs from low to high"
                        )));
                    }
                    partitions.extend(first..=last);
                }
                None => {
                    partitions.insert(number(part)?);
                }
            }
        }
        Ok(Ownership::Listed(partitions))
    }
}

/// The canonical spelling: `all`, `I/N`, or the list as ranges (`0-2,7`);
/// parsing it gives the same ownership back.
impl fmt::Display for Ownership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ownership::All => f.write_str("all"),
            Ownership::Modulo { index, count } => write!(f, "{index}/{count}"),
            Ownership::Listed(partitions) => {
                let listed: Vec<i32> = partitions.iter().copied().collect();
                f.write_str(&ranges(&listed))
            }
        }
    }
}

/// Sorted partitions as ranges: `[0, 1, 2, 5]` is `0-2,5`.
pub fn ranges(partitions: &[i32]) -> String {
    let mut sorted = partitions.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut parts: Vec<String> = Vec::new();
    let mut iter = sorted.into_iter().peekable();
    while let Some(first) = iter.next() {
        let mut last = first;
        while iter.peek() == Some(&(last + 1)) {
            last += 1;
            iter.next();
        }
        parts.push(if first == last {
            first.to_string()
        } else {
            format!("{first}-{last}")
        });
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_is_kafkas() {
        // The vectors of Kafka's own UtilsTest.testMurmur2 (Java ints).
        for (data, expected) in [
            (&b"21"[..], -973_932_308_i32),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ] {
            assert_eq!(
                murmur2(data) as i32,
                expected,
                "{}",
                String::from_utf8_lossy(data)
            );
        }
    }

    #[test]
    fn keys_and_quarantines_have_a_partition() {
        assert_eq!(partition_for_key(b"abc", 0), None);
        assert_eq!(partition_for_key(b"abc", -1), None);
        // 479470107 % 6 == 3; a negative hash is made positive first.
        assert_eq!(partition_for_key(b"abc", 6), Some(3));
        assert_eq!(
            partition_for_key(b"21", 6),
            Some(((-973_932_308_i32) & 0x7fff_ffff) % 6)
        );
        assert_eq!(instance_partition("quarantine-4", 6), Some(4));
        assert_eq!(instance_partition("quarantine-6", 6), None);
        let id = "6f1c2b9e-4d0a-4c7e-9a51-0d2f3b8c7e11";
        assert_eq!(
            instance_partition(id, 6),
            partition_for_key(id.as_bytes(), 6)
        );
    }

    fn parse(text: &str) -> Ownership {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn ownership_parses_lists_ranges_shards_and_pod_names() {
        assert_eq!(parse("all"), Ownership::All);
        assert_eq!(parse("0-2"), Ownership::Listed(BTreeSet::from([0, 1, 2])));
        assert_eq!(
            parse("3,4, 5"),
            Ownership::Listed(BTreeSet::from([3, 4, 5]))
        );
        assert_eq!(parse("0-1,7"), Ownership::Listed(BTreeSet::from([0, 1, 7])));
        assert_eq!(parse("1/2"), Ownership::Modulo { index: 1, count: 2 });
        assert_eq!(
            parse("warrant-projector-2/3"),
            Ownership::Modulo { index: 2, count: 3 }
        );
        for text in ["all", "0-2,7", "1/2"] {
            assert_eq!(parse(text).to_string(), text);
        }
        assert_eq!(parse("2,0,1").to_string(), "0-2");
        for (bad, says) in [
            ("", "expected a partition number"),
            ("2-0", "low to high"),
            ("x", "expected a partition number"),
            ("-1", "expected a partition number"),
            ("2/2", "does not exist"),
            ("0/0", "positive integer"),
            ("pod/2", "name ending in -I"),
            ("0-999999", "expected a partition number"),
        ] {
            let error = bad.parse::<Ownership>().expect_err(bad);
            assert!(error.to_string().contains(says), "{bad}: {error}");
        }
    }

    #[test]
    fn ownership_resolves_against_the_log() {
        let log: Vec<i32> = (0..6).collect();
        assert_eq!(parse("all").resolve(&log), Ok((0..6).collect()));
        assert_eq!(parse("1/2").resolve(&log), Ok(BTreeSet::from([1, 3, 5])));
        assert_eq!(parse("3-5").resolve(&log), Ok(BTreeSet::from([3, 4, 5])));
        let error = parse("4-7").resolve(&log).expect_err("7 is not in the log");
        assert!(
            error
                .to_string()
                .contains("partitions 6-7 are not in the log, which has 0-5"),
            "{error}"
        );
        let error = parse("6/8").resolve(&log).expect_err("nothing owned");
        assert!(error.to_string().contains("owns none"), "{error}");
        // Every partition is owned by exactly one shard of a modulo split.
        for count in 1..=7u32 {
            for p in &log {
                let owners = (0..count)
                    .filter(|index| {
                        Ownership::Modulo {
                            index: *index,
                            count,
                        }
                        .owns(*p)
                    })
                    .count();
                assert_eq!(owners, 1);
            }
        }
    }

    #[test]
    fn ranges_compress_runs() {
        assert_eq!(ranges(&[5, 0, 1, 2, 2]), "0-2,5");
        assert_eq!(ranges(&[]), "");
        assert_eq!(ranges(&[3]), "3");
    }
}
