//! Any bytes on `warrant.log`: decoding never panics, and whatever decodes
//! encodes back to an envelope that decodes to the same value (the fold
//! hashes the bytes on the log, so the codec must not be lossy).
#![no_main]

use libfuzzer_sys::fuzz_target;
use warrant_schema::{decode, encode, Envelope};

fuzz_target!(|data: &[u8]| {
    if let Ok(envelope) = decode::<Envelope>(data) {
        let bytes = encode(&envelope).expect("a decoded envelope encodes");
        let again = decode::<Envelope>(&bytes).expect("our own encoding decodes");
        assert_eq!(again, envelope);
    }
});
