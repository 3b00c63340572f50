//! The trail: every entry's hash and log position in one digest, so
//! `--verify` can tell that all of an instance's entries match the
//! projector's while keeping 32 bytes per instance instead of 40 per entry.
//!
//! The hash chain already commits each entry to every one before it, but
//! not to positions (a record moved on the log keeps its hash), and the
//! projector's record lists each entry's hash on its own: comparing only
//! the heads would take the projector's word for the hashes before. The
//! trail covers both, for entries `1..=n`:
//! `SHA-256(hash₁ ‖ partition₁ ‖ offset₁ ‖ … ‖ hashₙ ‖ partitionₙ ‖ offsetₙ)`,
//! partition as 4 and offset as 8 big-endian bytes. Equal trails mean
//! equal entries; different ones do not say which entry differs, which
//! only the entries themselves can (`Keep::Chain`).

use sha2::{Digest, Sha256};
use warrant_authority::{Hash32, LogPosition};

/// A trail being built, one entry at a time.
#[derive(Debug, Clone, Default)]
pub struct Trail(Sha256);

impl Trail {
    pub fn push(&mut self, hash: &Hash32, position: LogPosition) {
        self.0.update(hash.0);
        self.0.update(position.partition.to_be_bytes());
        self.0.update(position.offset.to_be_bytes());
    }

    pub fn finish(self) -> Hash32 {
        Hash32(self.0.finalize().into())
    }
}

/// The trail of these entries, in order.
pub fn of<'a>(entries: impl IntoIterator<Item = (&'a Hash32, LogPosition)>) -> Hash32 {
    let mut trail = Trail::default();
    for (hash, position) in entries {
        trail.push(hash, position);
    }
    trail.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(offset: i64) -> LogPosition {
        LogPosition {
            partition: 1,
            offset,
        }
    }

    #[test]
    fn a_changed_hash_position_or_length_changes_the_trail() {
        let (a, b) = (Hash32([1; 32]), Hash32([2; 32]));
        let trail = of([(&a, at(4)), (&b, at(9))]);
        assert_eq!(trail, of([(&a, at(4)), (&b, at(9))]));
        for other in [
            of([(&a, at(4)), (&a, at(9))]),
            of([(&a, at(4)), (&b, at(10))]),
            of([(
                &a,
                LogPosition {
                    partition: 2,
                    offset: 4,
                },
            )]),
            of([(&a, at(4))]),
            of([(&b, at(9)), (&a, at(4))]),
            of([]),
        ] {
            assert_ne!(trail, other);
        }
    }
}
