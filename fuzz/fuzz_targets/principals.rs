//! Any principals file: the loader never panics; it loads or says why not.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warrant_intake::principals::Principals;

fuzz_target!(|data: &[u8]| {
    if let Err(error) = Principals::parse(data) {
        assert!(!error.to_string().is_empty(), "a refusal names its reason");
    }
});
