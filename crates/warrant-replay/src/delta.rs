//! Serialized phases kept as differences from a reference phase.
//!
//! Without full histories, replay keeps the phase of every final instance
//! serialized (MessagePack, the projector's format for states), and those
//! bytes are most of its memory. Phases of one log are much alike: the
//! same rulesets and their digests, rule ids, roles, signal sources,
//! reviewers, executors, and the same MessagePack structure around them.
//! So each reader keeps one phase as its [`Reference`] (the first it
//! serializes) and every other phase as the byte runs the reference does
//! not hold plus `(position, length)` copies of the runs it does: an
//! LZ77 whose window is the reference alone, so any phase reads back on
//! its own, with no chain of earlier ones.
//!
//! The coding is lossless whatever the bytes ([`Reference::decode`] gives
//! back exactly what [`Reference::encode`] was given, which the tests
//! check on arbitrary bytes); how much it saves depends only on how much
//! a phase shares with the reference.
//!
//! An encoded phase is: the original length, then tokens until that many
//! bytes are out, each a literal length, the literal bytes, a copy length
//! and, when the copy length is not zero, the copy's position in the
//! reference. Numbers are LEB128 varints.

/// Shorter copies cost about as much as the bytes they stand for.
const MIN_COPY: usize = 6;

/// Bits of the index's hash: 2,048 slots of one position each.
const INDEX_BITS: u32 = 11;

/// Bytes of the reference that are indexed (positions are `u16`).
const MAX_REFERENCE: usize = u16::MAX as usize;

/// An empty slot of the index.
const NO_POSITION: u16 = u16::MAX;

/// A phase to code others against, and an index of where each 4-byte
/// sequence of it is (the last place, when there are several).
#[derive(Debug)]
pub struct Reference {
    bytes: Box<[u8]>,
    index: Box<[u16]>,
}

/// Why bytes did not decode: never the case for bytes [`Reference::encode`]
/// wrote, with the same reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a coded phase does not read back: {0}")]
pub struct DeltaError(&'static str);

fn hash(four: &[u8]) -> usize {
    let word = u32::from_le_bytes([four[0], four[1], four[2], four[3]]);
    (word.wrapping_mul(0x9e37_79b1) >> (32 - INDEX_BITS)) as usize
}

/// The first eight bytes of `bytes` (which has at least eight).
fn word(bytes: &[u8]) -> [u8; 8] {
    let mut word = [0; 8];
    word.copy_from_slice(&bytes[..8]);
    word
}

fn put_varint(out: &mut Vec<u8>, mut value: usize) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// A varint at `at`, and where the next field starts.
fn varint(bytes: &[u8], mut at: usize) -> Result<(usize, usize), DeltaError> {
    let mut value = 0usize;
    for shift in (0..usize::BITS).step_by(7) {
        let byte = *bytes.get(at).ok_or(DeltaError("truncated number"))?;
        at += 1;
        value |= usize::from(byte & 0x7f)
            .checked_shl(shift)
            .ok_or(DeltaError("number too large"))?;
        if byte & 0x80 == 0 {
            return Ok((value, at));
        }
    }
    Err(DeltaError("number too long"))
}

impl Reference {
    pub fn new(bytes: &[u8]) -> Reference {
        let bytes: Box<[u8]> = bytes[..bytes.len().min(MAX_REFERENCE)].into();
        let mut index = vec![NO_POSITION; 1 << INDEX_BITS].into_boxed_slice();
        for (at, four) in bytes.windows(4).enumerate() {
            // `at` < MAX_REFERENCE = u16::MAX: never the empty marker.
            index[hash(four)] = at as u16;
        }
        Reference { bytes, index }
    }

    /// How long the copy of `reference[from..]` matching `input[at..]` is.
    /// Eight bytes at a time: copies run to hundreds of bytes.
    #[inline]
    fn common(&self, from: usize, input: &[u8], at: usize) -> usize {
        let (a, b) = (&self.bytes[from..], &input[at..]);
        let most = a.len().min(b.len());
        let mut length = 0;
        while length + 8 <= most {
            let x = u64::from_le_bytes(word(&a[length..]));
            let y = u64::from_le_bytes(word(&b[length..]));
            if x != y {
                return length + ((x ^ y).trailing_zeros() / 8) as usize;
            }
            length += 8;
        }
        length
            + a[length..most]
                .iter()
                .zip(&b[length..most])
                .take_while(|(a, b)| a == b)
                .count()
    }

    /// Append `input`, coded against this reference, to `out`.
    pub fn encode(&self, input: &[u8], out: &mut Vec<u8>) {
        put_varint(out, input.len());
        let mut literal = 0;
        let mut at = 0;
        // Where the last copy ended in the reference: in phases this alike
        // the next copy most often resumes as far past it as the input has
        // moved since (after an id or a timestamp of the same length).
        let mut resume: Option<(usize, usize)> = None;
        while at + MIN_COPY <= input.len() {
            let guess = resume
                .map(|(copied_to, input_at)| copied_to + (at - input_at))
                .filter(|from| *from < self.bytes.len());
            let mut best = (0, 0);
            // Most positions tried are inside a run the reference does not
            // hold: their first byte already differs.
            if let Some(from) = guess.filter(|from| self.bytes[*from] == input[at]) {
                best = (from, self.common(from, input, at));
            }
            if best.1 < MIN_COPY {
                let slot = self.index[hash(&input[at..at + 4])];
                let from = usize::from(slot);
                if slot != NO_POSITION && self.bytes[from] == input[at] {
                    let length = self.common(from, input, at);
                    if length > best.1 {
                        best = (from, length);
                    }
                }
            }
            let (from, length) = best;
            if length < MIN_COPY {
                at += 1;
                continue;
            }
            put_varint(out, at - literal);
            out.extend_from_slice(&input[literal..at]);
            put_varint(out, length);
            put_varint(out, from);
            at += length;
            literal = at;
            resume = Some((from + length, at));
        }
        put_varint(out, input.len() - literal);
        out.extend_from_slice(&input[literal..]);
        put_varint(out, 0);
    }

    /// Append the bytes `coded` stands for to `out`.
    pub fn decode(&self, coded: &[u8], out: &mut Vec<u8>) -> Result<(), DeltaError> {
        let (length, mut at) = varint(coded, 0)?;
        let end = out
            .len()
            .checked_add(length)
            .ok_or(DeltaError("length too large"))?;
        // Never more than the coded bytes could stand for (each a literal,
        // or part of a copy of at most the whole reference), whatever
        // length they claim.
        out.reserve(length.min(coded.len().saturating_mul(self.bytes.len().max(1))));
        loop {
            let (literal, next) = varint(coded, at)?;
            let bytes = next
                .checked_add(literal)
                .and_then(|stop| coded.get(next..stop))
                .ok_or(DeltaError("literal past the end"))?;
            out.extend_from_slice(bytes);
            if out.len() > end {
                return Err(DeltaError("longer than its length"));
            }
            at = next + literal;
            let (copy, next) = varint(coded, at)?;
            at = next;
            if copy == 0 {
                break;
            }
            let (from, next) = varint(coded, at)?;
            at = next;
            let bytes = from
                .checked_add(copy)
                .and_then(|stop| self.bytes.get(from..stop))
                .ok_or(DeltaError("copy past the reference"))?;
            out.extend_from_slice(bytes);
            if out.len() > end {
                return Err(DeltaError("longer than its length"));
            }
        }
        if at != coded.len() || out.len() != end {
            return Err(DeltaError("not the length it says"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn round_trip(reference: &Reference, input: &[u8]) -> Vec<u8> {
        let mut coded = Vec::new();
        reference.encode(input, &mut coded);
        let mut back = Vec::new();
        reference
            .decode(&coded, &mut back)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, input);
        coded
    }

    #[test]
    fn alike_inputs_shrink_and_every_input_reads_back() {
        let reference = Reference::new(b"proposal of svc:remediator for prod/payments/api, ruleset 5b0e5f2a8c1d3e4f5a6b7c8d9e0f1a2b, at 1795000000000");
        let alike = b"proposal of svc:remediator for prod/payments/web, ruleset 5b0e5f2a8c1d3e4f5a6b7c8d9e0f1a2b, at 1795000123456";
        assert!(round_trip(&reference, alike).len() < alike.len() / 3);
        for input in [&b""[..], b"x", b"proposal", b"\x00\x00\x00\x00\x00\x00\x00"] {
            round_trip(&reference, input);
        }
        round_trip(&Reference::new(b""), b"anything at all, with no reference");
    }

    #[test]
    fn coded_bytes_that_do_not_hold_together_are_an_error_not_a_panic() {
        let reference = Reference::new(b"0123456789abcdef");
        let mut coded = Vec::new();
        reference.encode(b"0123456789abcdef and more", &mut coded);
        for cut in 0..coded.len() {
            let mut out = Vec::new();
            assert!(reference.decode(&coded[..cut], &mut out).is_err(), "{cut}");
        }
        let mut longer = coded.clone();
        longer.push(0);
        assert!(reference.decode(&longer, &mut Vec::new()).is_err());
        for bad in [&[0xff; 12][..], &[3, 0, 5, 200, 1]] {
            assert!(reference.decode(bad, &mut Vec::new()).is_err());
        }
    }

    proptest! {
        /// Lossless whatever the bytes: unrelated, or the reference with
        /// bytes changed, added and cut, as one phase is to another.
        #[test]
        fn every_input_reads_back_exactly(
            reference in prop::collection::vec(any::<u8>(), 0..400),
            edits in prop::collection::vec((any::<u16>(), 0u8..3, any::<u8>()), 0..20),
            unrelated in prop::collection::vec(any::<u8>(), 0..200),
        ) {
            let coder = Reference::new(&reference);
            let mut alike = reference.clone();
            for (at, kind, byte) in edits {
                let at = usize::from(at) % (alike.len() + 1);
                match kind {
                    0 if at < alike.len() => alike[at] = byte,
                    1 => alike.insert(at, byte),
                    _ if at < alike.len() => {
                        alike.remove(at);
                    }
                    _ => {}
                }
            }
            for input in [&alike, &unrelated, &reference] {
                let mut coded = Vec::new();
                coder.encode(input, &mut coded);
                let mut back = Vec::new();
                prop_assert!(coder.decode(&coded, &mut back).is_ok());
                prop_assert_eq!(&back, input);
            }
        }
    }
}
