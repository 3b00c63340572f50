//! CRC-64-AVRO (the Rabin fingerprint of the Avro specification).

const EMPTY: u64 = 0xc15d_213a_a4d7_a795;

const TABLE: [u64; 256] = {
    let mut table = [0u64; 256];
    let mut i = 0;
    while i < 256 {
        let mut fp = i as u64;
        let mut bit = 0;
        while bit < 8 {
            fp = (fp >> 1) ^ (EMPTY & (fp & 1).wrapping_neg());
            bit += 1;
        }
        table[i] = fp;
        i += 1;
    }
    table
};

pub(crate) fn fingerprint(bytes: &[u8]) -> u64 {
    bytes.iter().fold(EMPTY, |fp, &byte| {
        (fp >> 8) ^ TABLE[((fp ^ u64::from(byte)) & 0xff) as usize]
    })
}

#[cfg(test)]
mod tests {
    use super::fingerprint;

    #[test]
    fn matches_the_specification_examples() {
        // Values from the Avro specification's test suite (share/test/data/schema-tests.txt).
        assert_eq!(fingerprint(br#""null""#) as i64, 7195948357588979594);
        assert_eq!(fingerprint(br#""int""#) as i64, 8247732601305521295);
    }
}
