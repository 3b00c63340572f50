//! The event ids each instance has seen, for the fold's `Duplicate` check,
//! kept out of memory as the range grows.
//!
//! The fold refuses an event whose id its instance saw before
//! (`InstanceState::seen_event_ids`). Kept in the states, those ids are
//! most of replay's memory on a long range: every id of every instance,
//! forever. Replay keeps them here instead, between steps, and hands the
//! fold exactly what it needs (see `Folder::apply`): before each step the
//! event's id goes back into the state if this store has seen it under the
//! same instance, so `step` refuses it `Duplicate` as it always did; after
//! the step whatever `step` inserted is moved out into the store.
//!
//! The answer must be exact: a false "seen" would refuse a valid event and
//! corrupt the record, a false "new" would apply a replayed one. So:
//!
//! * every key is kept exactly: the instance's ordinal in its reader plus
//!   the event id as a `u128` when it is a canonical (lowercase, hyphenated)
//!   UUID, which is what intake writes and which round-trips to the same
//!   string; any other string, only ever written by a hostile or broken
//!   writer, is kept as it is in a small exact set in memory ([`Key`]);
//! * recent keys sit in memory in `buffer` (sorted chunks); when it is full
//!   it is sorted and appended as a run to the store's spill file, in a
//!   directory of its own (`--spill-dir`), with only a sparse index (every
//!   [`BLOCK_KEYS`]-th key) kept in memory;
//! * a Bloom filter over every key answers "new" at once for almost every
//!   event (a real log has no duplicates); a hit, true or false, is
//!   confirmed exactly in the buffer and the runs (one positioned read of
//!   one block per run whose key range covers the key; no mmap, so the
//!   pages stay in the kernel's cache, not in this process's RSS).
//!
//! Memory is the filter, [`BLOOM_BITS_PER_KEY`] bits per id (2 bytes),
//! plus the buffer and the indexes, against ~70 bytes per id (the string
//! and its tree node) in the state. Disk is 24 bytes per id, gone when the
//! store is dropped (the file is unlinked as it is created, and its
//! directory removed).

use std::collections::HashSet;
use std::fs::File;
use std::hash::{BuildHasher, RandomState};
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::Error;

/// Bloom filter bits per key: about one false hit in 1,000 lookups, each
/// costing one small positioned read per run that could hold the key.
pub const BLOOM_BITS_PER_KEY: u64 = 16;

/// Keys in one block of a run file (one positioned read of 4,080 bytes).
pub const BLOCK_KEYS: usize = 170;

/// Keys the in-memory buffer holds before it is written as a run: 3 MiB.
pub const DEFAULT_BUFFER_KEYS: usize = 1 << 17;

/// The buffer is kept as sorted chunks of this many keys (the last one
/// filling), so a lookup is a binary search per chunk.
const CHUNK_KEYS: usize = 1024;

/// Bytes of one key in a run file: ordinal, then id, both big-endian, so
/// byte order is key order.
const KEY_BYTES: usize = 24;

/// Where run files go: a directory of this process's own, created in the
/// directory given (`--spill-dir`) and removed, with everything in it,
/// when the last store using it is dropped.
#[derive(Debug)]
pub struct SpillDir {
    dir: tempfile::TempDir,
}

impl SpillDir {
    /// Create a private directory in `parent` (the system's temporary
    /// directory when `None`) and check that a file can be written there,
    /// so a bad `--spill-dir` fails before the log is read, not after.
    pub fn create(parent: Option<&Path>) -> Result<Arc<SpillDir>, Error> {
        let parent = parent.map_or_else(std::env::temp_dir, Path::to_path_buf);
        let dir = tempfile::Builder::new()
            .prefix("warrant-replay-")
            .tempdir_in(&parent)
            .map_err(|source| Error::Spill {
                what: "create a directory",
                dir: parent.clone(),
                source,
            })?;
        let spill = SpillDir { dir };
        let mut probe = spill.file()?;
        probe
            .write_all(&[0; KEY_BYTES])
            .map_err(|source| Error::Spill {
                what: "write a file",
                dir: parent,
                source,
            })?;
        Ok(Arc::new(spill))
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A new anonymous file: unlinked at once where the system allows it,
    /// so it is gone when closed, even if the process is killed.
    fn file(&self) -> Result<File, Error> {
        tempfile::tempfile_in(self.dir.path()).map_err(|source| Error::Spill {
            what: "create a file",
            dir: self.dir.path().to_owned(),
            source,
        })
    }
}

/// One (instance, event id) pair. Canonical UUIDs and other strings never
/// compare equal (a canonical string is never spelled another way), so the
/// two kinds answer apart.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    Uuid(UuidKey),
    /// Any other event id, kept as it is.
    Other(u64, Box<str>),
}

impl Key {
    /// `ordinal`: the instance's number in its reader, given once per instance.
    pub fn new(ordinal: u64, event_id: &str) -> Key {
        match canonical_uuid(event_id) {
            Some(id) => Key::Uuid(UuidKey { ordinal, id }),
            None => Key::Other(ordinal, event_id.into()),
        }
    }
}

/// The key of a canonical UUID event id. Ordered by instance, then id.
/// Packed to 8-byte alignment: 24 bytes, not the 32 a `u128`'s 16-byte
/// alignment would make it, in the buffer every reader fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(C, packed(8))]
pub struct UuidKey {
    pub ordinal: u64,
    pub id: u128,
}

impl UuidKey {
    fn to_bytes(self) -> [u8; KEY_BYTES] {
        let mut bytes = [0; KEY_BYTES];
        bytes[..8].copy_from_slice(&self.ordinal.to_be_bytes());
        bytes[8..].copy_from_slice(&self.id.to_be_bytes());
        bytes
    }

    fn from_bytes(bytes: &[u8]) -> UuidKey {
        let mut ordinal = [0; 8];
        let mut id = [0; 16];
        ordinal.copy_from_slice(&bytes[..8]);
        id.copy_from_slice(&bytes[8..KEY_BYTES]);
        UuidKey {
            ordinal: u64::from_be_bytes(ordinal),
            id: u128::from_be_bytes(id),
        }
    }
}

/// The 128 bits of a lowercase, hyphenated UUID (8-4-4-4-12 hex digits);
/// `None` for any other string, uppercase included: the fold compares ids
/// as strings, so `A…` and `a…` are different ids and must stay apart.
pub fn canonical_uuid(text: &str) -> Option<u128> {
    canonical_uuid_bytes(text.as_bytes())
}

/// [`canonical_uuid`] of bytes that may not be UTF-8 (a Kafka key): the
/// same answer for the same bytes, and `None` for any that are not a
/// canonical UUID's. A canonical UUID is exactly a key
/// `warrant_authority::instance_key` takes for an instance id.
pub fn canonical_uuid_bytes(bytes: &[u8]) -> Option<u128> {
    if bytes.len() != 36 {
        return None;
    }
    let mut value = 0u128;
    for (at, byte) in bytes.iter().enumerate() {
        if matches!(at, 8 | 13 | 18 | 23) {
            if *byte != b'-' {
                return None;
            }
            continue;
        }
        let digit = match byte {
            b'0'..=b'9' => byte - b'0',
            b'a'..=b'f' => byte - b'a' + 10,
            _ => return None,
        };
        value = (value << 4) | u128::from(digit);
    }
    Some(value)
}

/// Multiply and fold: the mixing step of the hashes below.
fn fold_multiply(a: u64, b: u64) -> u64 {
    let product = u128::from(a) * u128::from(b);
    (product as u64) ^ ((product >> 64) as u64)
}

const MIX: [u64; 4] = [
    0xa076_1d64_78bd_642f,
    0xe703_7ed1_a0b4_28db,
    0x8ebc_6af0_9c88_c6e3,
    0x5899_65cc_7537_4cc3,
];

/// A hash of a key under a per-process seed: event ids come from the log,
/// so anyone could choose them; unseeded, they could be chosen to crowd
/// one Bloom block (slow, never wrong).
fn hash(seed: u64, key: UuidKey) -> u64 {
    let low = key.id as u64;
    let high = (key.id >> 64) as u64;
    let h = fold_multiply(low ^ seed ^ MIX[0], high ^ MIX[1]);
    fold_multiply(h ^ key.ordinal ^ MIX[2], MIX[3] ^ seed.rotate_left(32))
}

/// 512 bits, one cache line: a key sets one bit in each of its 8 words.
#[derive(Debug, Clone, Copy)]
#[repr(align(64))]
struct Block([u64; 8]);

#[derive(Debug)]
struct Layer {
    blocks: Vec<Block>,
    /// Keys this layer is sized for; a fuller one adds a layer.
    capacity: u64,
    len: u64,
}

impl Layer {
    fn new(capacity: u64) -> Layer {
        let blocks = (capacity * BLOOM_BITS_PER_KEY).div_ceil(512).max(1);
        Layer {
            blocks: vec![Block([0; 8]); blocks as usize],
            capacity,
            len: 0,
        }
    }

    /// The block and the bit in each of its words for hash `h`.
    fn place(&self, h: u64) -> (usize, [u64; 8]) {
        // The high half picks the block (multiply-shift: no division); the
        // bits come from a second mix, independent of the block.
        let block = ((h >> 32) * self.blocks.len() as u64) >> 32;
        let b = fold_multiply(h, MIX[0]);
        let mut bits = [0u64; 8];
        for (i, bit) in bits.iter_mut().enumerate() {
            *bit = 1 << ((b >> (6 * i)) & 63);
        }
        (block as usize, bits)
    }

    fn insert(&mut self, h: u64) {
        let (block, bits) = self.place(h);
        for (word, bit) in self.blocks[block].0.iter_mut().zip(bits) {
            *word |= bit;
        }
        self.len += 1;
    }

    fn contains(&self, h: u64) -> bool {
        let (block, bits) = self.place(h);
        self.blocks[block]
            .0
            .iter()
            .zip(bits)
            .all(|(word, bit)| word & bit != 0)
    }
}

/// A Bloom filter that adds a layer, twice as large, when the last one is
/// full, so a wrong size guess costs memory or a little time, never the
/// false-hit rate.
#[derive(Debug)]
struct Bloom {
    layers: Vec<Layer>,
}

impl Bloom {
    fn new(expected: u64) -> Bloom {
        Bloom {
            layers: vec![Layer::new(expected.max(1 << 16))],
        }
    }

    fn insert(&mut self, h: u64) {
        let full = self.layers.last().is_none_or(|l| l.len >= l.capacity);
        if full {
            let capacity = self.layers.last().map_or(1 << 16, |l| l.capacity * 2);
            self.layers.push(Layer::new(capacity));
        }
        if let Some(layer) = self.layers.last_mut() {
            layer.insert(h);
        }
    }

    fn contains(&self, h: u64) -> bool {
        self.layers.iter().any(|layer| layer.contains(h))
    }

    fn bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|l| l.blocks.len() * size_of::<Block>())
            .sum()
    }
}

/// One sorted run of keys in the spill file, with every [`BLOCK_KEYS`]-th
/// key in memory to find the one block that could hold a key.
#[derive(Debug)]
struct Run {
    /// Where the run starts in the file, in bytes.
    start: u64,
    keys: usize,
    /// The first key of every block.
    fence: Vec<UuidKey>,
    last: UuidKey,
}

impl Run {
    fn contains(&self, file: &File, key: UuidKey, scratch: &mut Vec<u8>) -> std::io::Result<bool> {
        let Some(first) = self.fence.first() else {
            return Ok(false);
        };
        if key < *first || key > self.last {
            return Ok(false);
        }
        // The last block whose first key is at or before `key`.
        let block = self.fence.partition_point(|f| *f <= key) - 1;
        let from = block * BLOCK_KEYS;
        let len = BLOCK_KEYS.min(self.keys - from);
        scratch.resize(len * KEY_BYTES, 0);
        file.read_exact_at(scratch, self.start + (from * KEY_BYTES) as u64)?;
        let (mut low, mut high) = (0, len);
        while low < high {
            let middle = (low + high) / 2;
            let at = middle * KEY_BYTES;
            match UuidKey::from_bytes(&scratch[at..at + KEY_BYTES]).cmp(&key) {
                std::cmp::Ordering::Less => low = middle + 1,
                std::cmp::Ordering::Greater => high = middle,
                std::cmp::Ordering::Equal => return Ok(true),
            }
        }
        Ok(false)
    }
}

/// How big the store's memory parts are; see [`SeenIds::new`].
#[derive(Debug, Clone)]
pub struct SeenConfig {
    /// Where run files go; `None`: a directory in the system's temporary
    /// directory, created when the first run is written.
    pub spill: Option<Arc<SpillDir>>,
    /// Keys held in memory before a run is written.
    pub buffer_keys: usize,
    /// Keys expected (the records to fold), to size the Bloom filter.
    pub expected_keys: u64,
}

impl Default for SeenConfig {
    fn default() -> SeenConfig {
        SeenConfig {
            spill: None,
            buffer_keys: DEFAULT_BUFFER_KEYS,
            expected_keys: 0,
        }
    }
}

/// Counters, for tests and the debug log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeenStats {
    pub keys: u64,
    pub runs: usize,
    /// Lookups the filter passed on to the exact check.
    pub confirmations: u64,
    /// Of those, keys really seen before.
    pub seen: u64,
    /// Event ids that are not canonical UUIDs (kept in memory).
    pub other: usize,
    pub bloom_bytes: usize,
}

/// The exact set of (instance, event id) pairs a reader has folded.
#[derive(Debug)]
pub struct SeenIds {
    seed: u64,
    bloom: Bloom,
    /// Sorted chunks of [`CHUNK_KEYS`], the last one filling (unsorted).
    buffer: Vec<UuidKey>,
    buffer_keys: usize,
    runs: Vec<Run>,
    /// Every run, one after the other: one file (and descriptor) per store
    /// however long the range.
    file: Option<File>,
    file_len: u64,
    /// Only `Key::Other` keys.
    other: HashSet<Key>,
    spill: Option<Arc<SpillDir>>,
    scratch: Vec<u8>,
    stats: SeenStats,
}

impl SeenIds {
    pub fn new(config: SeenConfig) -> SeenIds {
        let buffer_keys = config.buffer_keys.max(1);
        SeenIds {
            seed: RandomState::new().hash_one(0u64),
            bloom: Bloom::new(config.expected_keys),
            buffer: Vec::with_capacity(buffer_keys.min(DEFAULT_BUFFER_KEYS)),
            buffer_keys,
            runs: Vec::new(),
            file: None,
            file_len: 0,
            other: HashSet::new(),
            spill: config.spill,
            scratch: Vec::new(),
            stats: SeenStats::default(),
        }
    }

    /// Whether `key` was inserted before.
    pub fn contains(&mut self, key: &Key) -> Result<bool, Error> {
        let key = match key {
            Key::Uuid(key) => *key,
            Key::Other(..) => return Ok(self.other.contains(key)),
        };
        if !self.bloom.contains(hash(self.seed, key)) {
            return Ok(false);
        }
        self.stats.confirmations += 1;
        let seen = self.exact_contains(key)?;
        self.stats.seen += u64::from(seen);
        Ok(seen)
    }

    fn exact_contains(&mut self, key: UuidKey) -> Result<bool, Error> {
        let (sorted, filling) = self
            .buffer
            .split_at(self.buffer.len() / CHUNK_KEYS * CHUNK_KEYS);
        if filling.contains(&key)
            || sorted
                .chunks(CHUNK_KEYS)
                .any(|chunk| chunk.binary_search(&key).is_ok())
        {
            return Ok(true);
        }
        let Some(file) = &self.file else {
            return Ok(false);
        };
        for run in &self.runs {
            let found = run
                .contains(file, key, &mut self.scratch)
                .map_err(|source| Error::Spill {
                    what: "read a file",
                    dir: spill_path(&self.spill),
                    source,
                })?;
            if found {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Add `key`. Adding a key already there is harmless.
    pub fn insert(&mut self, key: Key) -> Result<(), Error> {
        let key = match key {
            Key::Uuid(key) => key,
            other @ Key::Other(..) => {
                self.other.insert(other);
                return Ok(());
            }
        };
        self.bloom.insert(hash(self.seed, key));
        self.stats.keys += 1;
        self.buffer.push(key);
        if self.buffer.len().is_multiple_of(CHUNK_KEYS) {
            let from = self.buffer.len() - CHUNK_KEYS;
            self.buffer[from..].sort_unstable();
        }
        if self.buffer.len() >= self.buffer_keys {
            self.spill()?;
        }
        Ok(())
    }

    /// Write the buffer as a sorted run and empty it.
    fn spill(&mut self) -> Result<(), Error> {
        // The chunks are sorted runs: a merge sort only merges them.
        self.buffer.sort();
        self.buffer.dedup();
        let file = match &mut self.file {
            Some(file) => file,
            None => {
                let dir = match &self.spill {
                    Some(dir) => Arc::clone(dir),
                    None => {
                        let dir = SpillDir::create(None)?;
                        self.spill = Some(Arc::clone(&dir));
                        dir
                    }
                };
                self.file.insert(dir.file()?)
            }
        };
        let dir = spill_path(&self.spill);
        let failed = |source| Error::Spill {
            what: "write a file",
            dir: dir.clone(),
            source,
        };
        let mut out = BufWriter::with_capacity(1 << 16, file);
        let mut fence = Vec::with_capacity(self.buffer.len().div_ceil(BLOCK_KEYS));
        for (index, key) in self.buffer.iter().enumerate() {
            if index % BLOCK_KEYS == 0 {
                fence.push(*key);
            }
            out.write_all(&key.to_bytes()).map_err(failed)?;
        }
        out.flush().map_err(failed)?;
        drop(out);
        if let Some(last) = self.buffer.last() {
            self.runs.push(Run {
                start: self.file_len,
                keys: self.buffer.len(),
                fence,
                last: *last,
            });
            self.file_len += (self.buffer.len() * KEY_BYTES) as u64;
        }
        self.buffer.clear();
        tracing::debug!(
            runs = self.runs.len(),
            keys = self.stats.keys,
            "duplicate check: wrote a run"
        );
        Ok(())
    }

    pub fn stats(&self) -> SeenStats {
        SeenStats {
            runs: self.runs.len(),
            other: self.other.len(),
            bloom_bytes: self.bloom.bytes(),
            ..self.stats
        }
    }
}

fn spill_path(spill: &Option<Arc<SpillDir>>) -> PathBuf {
    spill
        .as_ref()
        .map_or_else(std::env::temp_dir, |dir| dir.path().to_owned())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    fn uuid(n: u128) -> String {
        let hex = format!("{n:032x}");
        format!(
            "{}-{}-{}-{}-{}",
            &hex[..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..]
        )
    }

    fn tiny(spill: Option<Arc<SpillDir>>) -> SeenIds {
        SeenIds::new(SeenConfig {
            spill,
            buffer_keys: 7,
            expected_keys: 0,
        })
    }

    #[test]
    fn a_buffered_key_is_as_big_as_on_disk() {
        assert_eq!(size_of::<UuidKey>(), KEY_BYTES);
    }

    #[test]
    fn canonical_uuids_round_trip_and_nothing_else_is_one() {
        for n in [0, 1, u128::MAX, 0x6f1c_2b9e_4d0a_4c7e_9a51_0d2f_3b8c_7e11] {
            assert_eq!(canonical_uuid(&uuid(n)), Some(n));
        }
        let good = "6f1c2b9e-4d0a-4c7e-9a51-0d2f3b8c7e11";
        for bad in [
            "6F1C2B9E-4D0A-4C7E-9A51-0D2F3B8C7E11",
            "6f1c2b9e4d0a4c7e9a510d2f3b8c7e11",
            "6f1c2b9e-4d0a-4c7e-9a51-0d2f3b8c7e1",
            "6f1c2b9e-4d0a-4c7e-9a51-0d2f3b8c7e111",
            "6f1c2b9e+4d0a-4c7e-9a51-0d2f3b8c7e11",
            "6f1c2b9e-4d0a-4c7e-9a51-0d2f3b8c7e1g",
            "{6f1c2b9e-4d0a-4c7e-9a51-0d2f3b8c7e1}",
            "",
        ] {
            assert_eq!(canonical_uuid(bad), None, "{bad}");
        }
        assert!(canonical_uuid(good).is_some());
    }

    #[test]
    fn the_same_id_under_another_instance_or_spelling_is_new() {
        let mut seen = tiny(None);
        let id = "6f1c2b9e-4d0a-4c7e-9a51-0d2f3b8c7e11";
        seen.insert(Key::new(1, id))
            .unwrap_or_else(|e| panic!("{e}"));
        let contains = |seen: &mut SeenIds, ordinal, id: &str| {
            seen.contains(&Key::new(ordinal, id))
                .unwrap_or_else(|e| panic!("{e}"))
        };
        assert!(contains(&mut seen, 1, id));
        assert!(!contains(&mut seen, 2, id));
        assert!(!contains(&mut seen, 1, &id.to_uppercase()));
        seen.insert(Key::new(1, &id.to_uppercase()))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(contains(&mut seen, 1, &id.to_uppercase()));
        assert!(!contains(&mut seen, 2, &id.to_uppercase()));
        for other in ["", "not a uuid", "ünïcode"] {
            assert!(!contains(&mut seen, 1, other));
            seen.insert(Key::new(1, other))
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(contains(&mut seen, 1, other));
        }
        assert_eq!(seen.stats().other, 4);
    }

    #[test]
    fn keys_written_to_runs_are_still_found_and_the_files_go_away() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let spill = SpillDir::create(Some(dir.path())).unwrap_or_else(|e| panic!("{e}"));
        let inner = spill.path().to_owned();
        let mut seen = tiny(Some(spill));
        // Enough keys for several runs of several blocks each.
        let mut small = SeenIds::new(SeenConfig {
            spill: None,
            buffer_keys: 3 * BLOCK_KEYS + 5,
            expected_keys: 0,
        });
        for n in 0..2_000u128 {
            let key = Key::new((n % 13) as u64, &uuid(n * 7919));
            seen.insert(key.clone()).unwrap_or_else(|e| panic!("{e}"));
            small.insert(key).unwrap_or_else(|e| panic!("{e}"));
        }
        assert!(seen.stats().runs > 100);
        assert!(small.stats().runs >= 3);
        for n in 0..2_000u128 {
            let key = Key::new((n % 13) as u64, &uuid(n * 7919));
            assert!(seen.contains(&key).unwrap_or_else(|e| panic!("{e}")), "{n}");
            assert!(
                small.contains(&key).unwrap_or_else(|e| panic!("{e}")),
                "{n}"
            );
            let absent = Key::new((n % 13) as u64 + 1, &uuid(n * 7919));
            assert!(!small.contains(&absent).unwrap_or_else(|e| panic!("{e}")));
        }
        drop(seen);
        assert!(!inner.exists(), "the spill directory is removed");
    }

    #[test]
    fn an_unusable_spill_directory_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"x").unwrap_or_else(|e| panic!("{e}"));
        let error = SpillDir::create(Some(&file)).err();
        let message = error.map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("spill directory"), "{message}");
        assert!(message.contains("a-file"), "{message}");
    }

    #[test]
    fn false_hits_are_rare_at_the_sized_load() {
        let keys = 200_000u64;
        let mut seen = SeenIds::new(SeenConfig {
            spill: None,
            buffer_keys: usize::MAX,
            expected_keys: keys,
        });
        for n in 0..keys {
            seen.insert(Key::new(n / 7, &uuid(u128::from(n) << 17)))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let before = seen.stats().confirmations;
        for n in 0..keys {
            let fresh = Key::new(n / 7, &uuid((u128::from(n) << 17) | 1));
            assert!(!seen.contains(&fresh).unwrap_or_else(|e| panic!("{e}")));
        }
        let false_hits = seen.stats().confirmations - before;
        // 16 bits a key in one-cache-line blocks: ~0.1 %.
        assert!(false_hits * 250 < keys, "{false_hits} false hits");
    }

    /// The cost per event at volume (not run by default):
    /// `cargo test --release -p warrant-replay cost_per_event -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn cost_per_event() {
        let events: u64 = std::env::var("SEEN_EVENTS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(10_000_000);
        let mut seen = SeenIds::new(SeenConfig {
            spill: None,
            buffer_keys: DEFAULT_BUFFER_KEYS,
            expected_keys: events,
        });
        // As a busy log: 143k instances, 64 open at a time, ids random.
        let state = RandomState::new();
        let id = |n: u64| uuid(u128::from(state.hash_one(n)) << 64 | u128::from(n));
        let ordinal = |n: u64| (n / 64) % 2_234 * 64 + n % 64;
        // What making the test's ids costs, to take it out.
        let started = std::time::Instant::now();
        let mut length = 0;
        for n in 0..events {
            length += id(n).len() as u64 + ordinal(n);
        }
        let making = started.elapsed();
        let started = std::time::Instant::now();
        for n in 0..events {
            let key = Key::new(ordinal(n), &id(n));
            assert!(!seen.contains(&key).unwrap_or_else(|e| panic!("{e}")));
            seen.insert(key).unwrap_or_else(|e| panic!("{e}"));
        }
        let elapsed = started.elapsed().saturating_sub(making);
        eprintln!(
            "{events} events: {:.0} ns an event (id parsed, looked up, inserted); {:?} ({length})",
            elapsed.as_nanos() as f64 / events as f64,
            seen.stats()
        );
    }

    proptest! {
        /// The folder looks instances up by these bits: a key must have
        /// them exactly when the fold takes it for an instance id, or a
        /// record would be folded under the wrong instance.
        #[test]
        fn a_key_has_uuid_bits_exactly_when_it_is_an_instance_id(
            key in prop_oneof![
                "[0-9a-fA-F-]{36}",
                "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
                "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
                "[0-9a-f{}:urnid-]{30,46}",
                ".{0,40}",
            ],
        ) {
            let bits = canonical_uuid_bytes(key.as_bytes());
            let instance = warrant_authority::instance_key(Some(key.as_bytes()));
            prop_assert_eq!(bits.is_some(), instance.is_some(), "{:?}", key);
            if let Some(bits) = bits {
                prop_assert_eq!(uuid(bits), key);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever the sequence, with repeats, and however small the
        /// buffer (runs of one key and up), the store answers as a BTreeSet.
        #[test]
        fn answers_exactly_as_a_set(
            buffer_keys in 1usize..40,
            ops in prop::collection::vec((0u64..4, 0u128..60, any::<bool>()), 0..600),
        ) {
            let mut seen = SeenIds::new(SeenConfig {
                spill: None,
                buffer_keys,
                expected_keys: 0,
            });
            let mut oracle = BTreeSet::new();
            for (ordinal, n, canonical) in ops {
                let id = if canonical { uuid(n) } else { format!("id-{n}") };
                let key = Key::new(ordinal, &id);
                let was = seen.contains(&key).unwrap_or_else(|e| panic!("{e}"));
                prop_assert_eq!(was, oracle.contains(&(ordinal, id.clone())));
                if !was {
                    seen.insert(key).unwrap_or_else(|e| panic!("{e}"));
                    oracle.insert((ordinal, id));
                }
            }
            for (ordinal, id) in &oracle {
                let found = seen.contains(&Key::new(*ordinal, id)).unwrap_or_else(|e| panic!("{e}"));
                prop_assert!(found);
            }
        }
    }
}
