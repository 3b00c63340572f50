//! Any bytes on the ingress topics: the proposal and signal decoders never
//! panic, and a decoded record survives its own round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warrant_schema::{decode, encode, ProposalSubmitted, SignalSubmitted};

fuzz_target!(|data: &[u8]| {
    if let Ok(proposal) = decode::<ProposalSubmitted>(data) {
        let bytes = encode(&proposal).expect("a decoded proposal encodes");
        assert_eq!(decode::<ProposalSubmitted>(&bytes).ok(), Some(proposal));
    }
    if let Ok(signal) = decode::<SignalSubmitted>(data) {
        let bytes = encode(&signal).expect("a decoded signal encodes");
        assert_eq!(decode::<SignalSubmitted>(&bytes).ok(), Some(signal));
    }
});
