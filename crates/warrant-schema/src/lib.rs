//! Warrant's wire format: Rust types for every record in `schemas/*.avsc` and
//! their Avro single-object encoding.
//!
//! This crate owns the bytes on `warrant.log` and on the ingress topics. The
//! `.avsc` files are the source of truth; the types here mirror them and the
//! tests fail when the two drift apart. It does no IO and knows no Kafka.

mod codec;
mod rabin;
pub mod samples;
mod types;

pub use codec::{
    avsc, current_fingerprint, decode, encode, AvroRecord, Codec, Error, SchemaError,
    MAX_RECORD_BYTES,
};
pub use types::*;
