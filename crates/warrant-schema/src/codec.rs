//! Avro single-object encoding (`C3 01` + 8-byte CRC-64-AVRO fingerprint of
//! the writer schema + datum) for the records in `schemas/`.
//!
//! Decoding never trusts the input: the record size is capped before any
//! decoding, apache-avro's allocation limit is set to a constant so a length
//! prefix cannot ask for more, and bytes left over after the datum are an
//! error rather than ignored (an audit log must not carry unread bytes).

use std::sync::OnceLock;

use apache_avro::{
    headers::HeaderBuilder, AvroSchema, GenericSingleObjectReader, Schema,
    SpecificSingleObjectWriter,
};
use serde::{de::DeserializeOwned, Serialize};

use crate::types::{Envelope, ProposalSubmitted, SignalSubmitted};

/// Largest record Warrant accepts: Kafka's default `message.max.bytes` is
/// just over 1 MiB, so nothing larger can be on the log anyway.
pub const MAX_RECORD_BYTES: usize = 1024 * 1024;

/// The cap handed to apache-avro for any single allocation while decoding.
const MAX_DECODE_ALLOCATION_BYTES: usize = 2 * MAX_RECORD_BYTES;

const SINGLE_OBJECT_MARKER: [u8; 2] = [0xC3, 0x01];
const HEADER_LEN: usize = 10;

/// The `.avsc` texts compiled into the binary; `schemas/` is the source of truth.
pub mod avsc {
    pub const ENVELOPE: &str = include_str!("../../../schemas/envelope.avsc");
    pub const PROPOSAL_SUBMITTED: &str = include_str!("../../../schemas/proposal_submitted.avsc");
    pub const SIGNAL_SUBMITTED: &str = include_str!("../../../schemas/signal_submitted.avsc");

    /// Frozen copies of every schema version ever written to a topic. Bytes
    /// written under one of these must stay readable: the decoder picks the
    /// writer schema by fingerprint. Add the old file here before changing a
    /// schema, and give every new Rust field `#[serde(default)]`.
    pub const ENVELOPE_HISTORY: &[&str] = &[
        include_str!("../../../schemas/history/envelope.v1.avsc"),
        include_str!("../../../schemas/history/envelope.v2.avsc"),
        include_str!("../../../schemas/history/envelope.v3.avsc"),
    ];
    pub const PROPOSAL_SUBMITTED_HISTORY: &[&str] = &[include_str!(
        "../../../schemas/history/proposal_submitted.v1.avsc"
    )];
    pub const SIGNAL_SUBMITTED_HISTORY: &[&str] = &[include_str!(
        "../../../schemas/history/signal_submitted.v1.avsc"
    )];
}

/// What went wrong encoding or decoding a record.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("record of {len} bytes exceeds the {limit}-byte limit")]
    TooLarge { len: usize, limit: usize },
    #[error(
        "not Avro single-object encoding: the record does not start with C3 01 and a fingerprint"
    )]
    NotSingleObject,
    #[error("unknown writer schema fingerprint {fingerprint} for {record}")]
    UnknownFingerprint {
        record: &'static str,
        fingerprint: String,
    },
    #[error("bytes do not decode as {record}")]
    Decode {
        record: &'static str,
        #[source]
        source: Box<apache_avro::Error>,
    },
    #[error("{leftover} bytes left over after the {record} datum")]
    TrailingBytes {
        record: &'static str,
        leftover: usize,
    },
    #[error("cannot encode {record}")]
    Encode {
        record: &'static str,
        #[source]
        source: Box<apache_avro::Error>,
    },
    #[error("compiled-in schema for {record} is invalid: {message}")]
    Schema {
        record: &'static str,
        message: String,
    },
}

/// A top-level record with its own `.avsc` file.
pub trait AvroRecord: AvroSchema + Serialize + DeserializeOwned + Sized + 'static {
    /// The Avro full name, for errors and logs.
    const NAME: &'static str;
    const AVSC: &'static str;
    const HISTORY: &'static [&'static str];
    fn codec() -> &'static OnceLock<Result<Codec<Self>, SchemaError>>;
}

/// A schema that failed to load, kept so every call reports the same error.
#[derive(Debug)]
pub struct SchemaError(String);

/// Reader and writer state for one record type, built once per process.
pub struct Codec<T: AvroRecord> {
    schema: Schema,
    writer: SpecificSingleObjectWriter<T>,
    /// Writer schemas by fingerprint: the current one and every frozen one.
    readers: Vec<([u8; 8], GenericSingleObjectReader)>,
}

impl<T: AvroRecord> std::fmt::Debug for Codec<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codec").field("record", &T::NAME).finish()
    }
}

macro_rules! avro_record {
    ($ty:ty, $name:literal, $avsc:expr, $history:expr) => {
        impl AvroRecord for $ty {
            const NAME: &'static str = $name;
            const AVSC: &'static str = $avsc;
            const HISTORY: &'static [&'static str] = $history;
            fn codec() -> &'static OnceLock<Result<Codec<Self>, SchemaError>> {
                static CODEC: OnceLock<Result<Codec<$ty>, SchemaError>> = OnceLock::new();
                &CODEC
            }
        }

        impl AvroSchema for $ty {
            fn get_schema() -> Schema {
                // Only reached from `Codec::load`, after the same text parsed.
                #[allow(clippy::expect_used)]
                Schema::parse_str($avsc)
                    .expect("compiled-in schema parses (checked by Codec::load)")
            }
        }
    };
}

avro_record!(
    Envelope,
    "warrant.Envelope",
    avsc::ENVELOPE,
    avsc::ENVELOPE_HISTORY
);
avro_record!(
    ProposalSubmitted,
    "warrant.ProposalSubmitted",
    avsc::PROPOSAL_SUBMITTED,
    avsc::PROPOSAL_SUBMITTED_HISTORY
);
avro_record!(
    SignalSubmitted,
    "warrant.SignalSubmitted",
    avsc::SIGNAL_SUBMITTED,
    avsc::SIGNAL_SUBMITTED_HISTORY
);

impl<T: AvroRecord> Codec<T> {
    fn load() -> Result<Self, apache_avro::Error> {
        apache_avro::util::max_allocation_bytes(MAX_DECODE_ALLOCATION_BYTES);
        let schema = Schema::parse_str(T::AVSC)?;
        let writer = SpecificSingleObjectWriter::<T>::new_with_header_builder(&SpecHeader(
            fingerprint_of(&schema),
        ))?;
        let mut readers = Vec::new();
        for text in std::iter::once(T::AVSC).chain(T::HISTORY.iter().copied()) {
            let writer_schema = Schema::parse_str(text)?;
            let fingerprint = fingerprint_of(&writer_schema);
            if readers.iter().any(|(known, _)| *known == fingerprint) {
                continue;
            }
            let reader = GenericSingleObjectReader::builder()
                .header(SpecHeader(fingerprint).build_header())
                .schema(writer_schema)
                .build()?;
            readers.push((fingerprint, reader));
        }
        Ok(Codec {
            schema,
            writer,
            readers,
        })
    }

    fn get() -> Result<&'static Self, Error> {
        match T::codec().get_or_init(|| Codec::load().map_err(|e| SchemaError(e.to_string()))) {
            Ok(codec) => Ok(codec),
            Err(SchemaError(message)) => Err(Error::Schema {
                record: T::NAME,
                message: message.clone(),
            }),
        }
    }

    /// The parsed current schema (what the container-file export writes).
    pub fn schema(&self) -> &Schema {
        &self.schema
    }
}

/// The CRC-64-AVRO fingerprint of the schema's Parsing Canonical Form, as
/// the Avro specification, Java and fastavro compute it.
///
/// apache-avro 0.22's own `canonical_form()` keeps a primitive that carried a
/// logical type as `{"type":"string"}` where the specification (and every
/// other implementation) writes `"string"`, so its fingerprint of our schemas
/// differs from fastavro's. We normalise that one difference here; the Python
/// test pins the result to fastavro's.
fn fingerprint_of(schema: &Schema) -> [u8; 8] {
    let canonical = spec_canonical_form(&schema.canonical_form());
    crate::rabin::fingerprint(canonical.as_bytes()).to_le_bytes()
}

fn spec_canonical_form(apache_avro_form: &str) -> String {
    const PRIMITIVES: [&str; 8] = [
        "null", "boolean", "int", "long", "float", "double", "bytes", "string",
    ];
    let mut form = apache_avro_form.to_owned();
    for primitive in PRIMITIVES {
        form = form.replace(
            &format!("{{\"type\":\"{primitive}\"}}"),
            &format!("\"{primitive}\""),
        );
    }
    form
}

/// The single-object header for a fingerprint computed by [`fingerprint_of`].
struct SpecHeader([u8; 8]);

impl HeaderBuilder for SpecHeader {
    fn build_header(&self) -> Vec<u8> {
        let mut header = SINGLE_OBJECT_MARKER.to_vec();
        header.extend_from_slice(&self.0);
        header
    }
}

/// Encode a record in single-object encoding under its current schema.
pub fn encode<T: AvroRecord>(value: &T) -> Result<Vec<u8>, Error> {
    let codec = Codec::<T>::get()?;
    let mut bytes = Vec::with_capacity(256);
    codec
        .writer
        .write_ref(value, &mut bytes)
        .map_err(|source| Error::Encode {
            record: T::NAME,
            source: Box::new(source),
        })?;
    Ok(bytes)
}

/// Decode one single-object encoded record, written under the current schema
/// or any frozen earlier version of it.
pub fn decode<T: AvroRecord>(bytes: &[u8]) -> Result<T, Error> {
    if bytes.len() > MAX_RECORD_BYTES {
        return Err(Error::TooLarge {
            len: bytes.len(),
            limit: MAX_RECORD_BYTES,
        });
    }
    if bytes.len() < HEADER_LEN || bytes[..2] != SINGLE_OBJECT_MARKER {
        return Err(Error::NotSingleObject);
    }
    let codec = Codec::<T>::get()?;
    let fingerprint = &bytes[2..HEADER_LEN];
    let Some((_, reader)) = codec
        .readers
        .iter()
        .find(|(known, _)| known.as_slice() == fingerprint)
    else {
        return Err(Error::UnknownFingerprint {
            record: T::NAME,
            fingerprint: fingerprint.iter().map(|b| format!("{b:02x}")).collect(),
        });
    };
    let mut rest = bytes;
    let value = reader
        .read_deser::<T>(&mut rest)
        .map_err(|source| Error::Decode {
            record: T::NAME,
            source: Box::new(source),
        })?;
    if !rest.is_empty() {
        return Err(Error::TrailingBytes {
            record: T::NAME,
            leftover: rest.len(),
        });
    }
    Ok(value)
}

/// The lowercase hex CRC-64-AVRO fingerprint of a record's current schema,
/// as it appears in bytes 2..10 of every record written under it.
pub fn current_fingerprint<T: AvroRecord>() -> Result<String, Error> {
    let codec = Codec::<T>::get()?;
    Ok(fingerprint_of(&codec.schema)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}
