//! The wire format as other teams see it: golden bytes, hostile bytes, and
//! the agreement between the `.avsc` files and the Rust types.

use std::path::PathBuf;

use apache_avro::{
    headers::{HeaderBuilder, RabinFingerprintHeader},
    schema_compatibility::SchemaCompatibility,
    writer::datum::GenericDatumWriter,
    Schema,
};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use warrant_schema::{
    avsc, decode, encode, samples, Envelope, Error, ProposalSubmitted, SignalSubmitted,
};

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../schemas/golden")
}

/// One golden vector: a record, as JSON, and its exact bytes.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Vector {
    name: String,
    record: String,
    value: serde_json::Value,
    hex: String,
}

fn current_vectors() -> Vec<Vector> {
    let mut vectors: Vec<Vector> = samples::envelopes()
        .into_iter()
        .map(|(name, envelope)| Vector {
            name: name.to_owned(),
            record: "warrant.Envelope".to_owned(),
            value: serde_json::to_value(&envelope).expect("samples serialize"),
            hex: hex::encode(encode(&envelope).expect("samples encode")),
        })
        .collect();
    vectors.push(Vector {
        name: "decision_signed_by_reviewer".to_owned(),
        record: "warrant.Envelope".to_owned(),
        value: serde_json::to_value(samples::signed_decision()).expect("serialize"),
        hex: hex::encode(encode(&samples::signed_decision()).expect("encode")),
    });
    for (name, envelope) in [
        ("action_proposed_two_groups", samples::two_group_proposal()),
        (
            "action_proposed_review_never",
            samples::review_never_proposal(),
        ),
    ] {
        vectors.push(Vector {
            name: name.to_owned(),
            record: "warrant.Envelope".to_owned(),
            value: serde_json::to_value(&envelope).expect("serialize"),
            hex: hex::encode(encode(&envelope).expect("encode")),
        });
    }
    let proposal = samples::proposal_submitted();
    vectors.push(Vector {
        name: "proposal_submitted".to_owned(),
        record: "warrant.ProposalSubmitted".to_owned(),
        value: serde_json::to_value(&proposal).expect("serialize"),
        hex: hex::encode(encode(&proposal).expect("encode")),
    });
    let signal = samples::signal_submitted();
    vectors.push(Vector {
        name: "signal_submitted".to_owned(),
        record: "warrant.SignalSubmitted".to_owned(),
        value: serde_json::to_value(&signal).expect("serialize"),
        hex: hex::encode(encode(&signal).expect("encode")),
    });
    vectors
}

/// `WARRANT_BLESS=1 cargo test -p warrant-schema` rewrites the golden file;
/// the diff is then what reviewers look at.
#[test]
fn golden_vectors_are_exactly_the_bytes_we_write_and_read() {
    let path = golden_dir().join("vectors.json");
    let current = current_vectors();
    if std::env::var_os("WARRANT_BLESS").is_some() {
        let text = serde_json::to_string_pretty(&current).expect("json");
        std::fs::write(&path, text + "\n").expect("write golden file");
    }
    let committed: Vec<Vector> =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("golden file exists"))
            .expect("golden file parses");
    assert_eq!(
        committed, current,
        "encoding changed: the bytes on the wire differ from schemas/golden/vectors.json"
    );

    for vector in &committed {
        let bytes = hex::decode(&vector.hex).expect("hex");
        let decoded = match vector.record.as_str() {
            "warrant.Envelope" => {
                serde_json::to_value(decode::<Envelope>(&bytes).expect("decodes"))
            }
            "warrant.ProposalSubmitted" => {
                serde_json::to_value(decode::<ProposalSubmitted>(&bytes).expect("decodes"))
            }
            "warrant.SignalSubmitted" => {
                serde_json::to_value(decode::<SignalSubmitted>(&bytes).expect("decodes"))
            }
            other => panic!("unknown record {other}"),
        }
        .expect("json");
        assert_eq!(
            decoded, vector.value,
            "{} decodes to other values",
            vector.name
        );
    }
}

#[test]
fn bytes_written_by_fastavro_from_the_avsc_alone_decode() {
    // Produced by tests/python/test_fastavro.py with only schemas/*.avsc.
    let hex_text = std::fs::read_to_string(golden_dir().join("proposal_submitted.fastavro.hex"))
        .expect("fastavro vector exists");
    let bytes = hex::decode(hex_text.trim()).expect("hex");
    let decoded: ProposalSubmitted = decode(&bytes).expect("rust decodes what fastavro wrote");
    assert_eq!(decoded.action.kind, "db.migrate");
    assert_eq!(
        decoded.action.parameters.get("version").map(String::as_str),
        Some("42")
    );
    assert_eq!(decoded.proposer.principal, "agent:python");
    assert_eq!(decoded.instance_id, None);
    assert_eq!(decoded.context_refs.len(), 1);
    assert_eq!(
        decoded.context_refs[0].note.as_deref(),
        Some("written by fastavro")
    );
}

#[test]
fn a_proposal_written_under_envelope_v2_still_decodes_as_one_group() {
    // The exact bytes of the action_proposed vector as envelope v2 wrote
    // them, before approval groups, review NEVER and the resolution trace.
    let hex_text = std::fs::read_to_string(golden_dir().join("action_proposed.envelope-v2.hex"))
        .expect("v2 vector exists");
    let bytes = hex::decode(hex_text.trim()).expect("hex");
    let decoded = decode::<Envelope>(&bytes).expect("v2 bytes decode");
    let warrant_schema::EventBody::ActionProposed(proposed) = decoded.body else {
        panic!("not a proposal");
    };
    assert!(proposed.requirement.approval_groups.is_empty());
    assert!(proposed.resolution.is_empty());
    assert_eq!(
        proposed.requirement.groups(),
        vec![warrant_schema::ApprovalGroup {
            roles: vec!["sre".to_owned(), "payments-oncall".to_owned()],
            count: 2,
        }]
    );
    // Everything else reads as the current sample does.
    assert_eq!(*proposed, samples::action_proposed());
    assert_ne!(
        bytes,
        encode(&samples::envelopes()[0].1).expect("encode"),
        "v3 writes under its own fingerprint"
    );
}

#[test]
fn every_frozen_schema_version_can_still_be_read_by_the_current_one() {
    let pairs = [
        (avsc::ENVELOPE, avsc::ENVELOPE_HISTORY),
        (avsc::PROPOSAL_SUBMITTED, avsc::PROPOSAL_SUBMITTED_HISTORY),
        (avsc::SIGNAL_SUBMITTED, avsc::SIGNAL_SUBMITTED_HISTORY),
    ];
    for (current, history) in pairs {
        let reader = Schema::parse_str(current).expect("current parses");
        for old in history {
            let writer = Schema::parse_str(old).expect("frozen parses");
            SchemaCompatibility::can_read(&writer, &reader)
                .unwrap_or_else(|e| panic!("current schema cannot read a frozen version: {e}"));
        }
    }
}

#[test]
fn shared_named_types_are_identical_in_every_file() {
    // The ingress schemas repeat Action, Proposer, ContextRef and PolicyRef so
    // each file stands alone for other teams; they must not diverge.
    let envelope: serde_json::Value = serde_json::from_str(avsc::ENVELOPE).expect("json");
    let proposal: serde_json::Value = serde_json::from_str(avsc::PROPOSAL_SUBMITTED).expect("json");
    let signal: serde_json::Value = serde_json::from_str(avsc::SIGNAL_SUBMITTED).expect("json");
    let proposed = &envelope["fields"][4]["type"][0]["fields"];
    let recorded = &envelope["fields"][4]["type"][1]["fields"];
    let field = |fields: &serde_json::Value, name: &str| -> serde_json::Value {
        fields
            .as_array()
            .and_then(|f| f.iter().find(|f| f["name"] == name))
            .map(|f| f["type"].clone())
            .unwrap_or_else(|| panic!("field {name} missing"))
    };
    for name in ["action", "proposer", "context_refs"] {
        assert_eq!(
            field(proposed, name),
            field(&proposal["fields"], name),
            "{name} differs"
        );
    }
    assert_eq!(
        field(recorded, "policy_ref"),
        field(&signal["fields"], "policy_ref")
    );
    assert_eq!(
        field(recorded, "verdict"),
        field(&signal["fields"], "verdict")
    );
}

/// `SignalSubmitted` plus one field the schema does not have.
#[derive(Serialize)]
struct SignalWithSeverity {
    instance_id: String,
    source: String,
    verdict: warrant_schema::SignalVerdict,
    reasons: Vec<String>,
    policy_ref: warrant_schema::PolicyRef,
    severity: String,
}

fn signal_with_severity() -> SignalWithSeverity {
    let s = samples::signal_submitted();
    SignalWithSeverity {
        instance_id: s.instance_id,
        source: s.source,
        verdict: s.verdict,
        reasons: s.reasons,
        policy_ref: s.policy_ref,
        severity: "high".to_owned(),
    }
}

#[test]
fn a_rust_field_missing_from_the_schema_fails_to_encode() {
    let schema = Schema::parse_str(avsc::SIGNAL_SUBMITTED).expect("parses");
    let writer = GenericDatumWriter::builder(&schema)
        .build()
        .expect("writer");
    assert!(writer
        .write_ser_to_vec(&samples::signal_submitted())
        .is_ok());
    assert!(writer.write_ser_to_vec(&signal_with_severity()).is_err());
}

#[test]
fn a_schema_field_missing_from_the_rust_type_fails_to_decode() {
    let mut wider: serde_json::Value = serde_json::from_str(avsc::SIGNAL_SUBMITTED).expect("json");
    wider["fields"]
        .as_array_mut()
        .expect("fields")
        .push(serde_json::json!({"name": "severity", "type": "string"}));
    let wider = Schema::parse_str(&wider.to_string()).expect("parses");
    let writer = GenericDatumWriter::builder(&wider).build().expect("writer");
    let mut bytes = RabinFingerprintHeader::from_schema(&wider).build_header();
    bytes.extend(
        writer
            .write_ser_to_vec(&signal_with_severity())
            .expect("encodes"),
    );
    let reader = apache_avro::GenericSingleObjectReader::builder()
        .schema(wider)
        .build()
        .expect("reader");
    let result = reader.read_deser::<SignalSubmitted>(&mut bytes.as_slice());
    assert!(
        result.is_err(),
        "deny_unknown_fields must reject the extra field"
    );
}

fn golden_envelope_bytes() -> Vec<u8> {
    encode(&samples::envelopes()[0].1).expect("encode")
}

#[test]
fn garbage_is_a_typed_error() {
    assert!(matches!(
        decode::<Envelope>(b""),
        Err(Error::NotSingleObject)
    ));
    assert!(matches!(
        decode::<Envelope>(b"{\"json\":true}"),
        Err(Error::NotSingleObject)
    ));
    assert!(matches!(
        decode::<Envelope>(&[0xC3, 0x01, 1, 2, 3, 4, 5, 6, 7, 8, 0]),
        Err(Error::UnknownFingerprint { .. })
    ));
}

#[test]
fn every_truncation_is_a_typed_error() {
    let bytes = golden_envelope_bytes();
    for len in 0..bytes.len() {
        assert!(
            decode::<Envelope>(&bytes[..len]).is_err(),
            "prefix of {len} bytes decoded"
        );
    }
}

#[test]
fn trailing_bytes_are_refused() {
    let mut bytes = golden_envelope_bytes();
    bytes.push(0);
    assert!(matches!(
        decode::<Envelope>(&bytes),
        Err(Error::TrailingBytes { leftover: 1, .. })
    ));
}

#[test]
fn oversized_records_are_refused_before_decoding() {
    let bytes = vec![0u8; warrant_schema::MAX_RECORD_BYTES + 1];
    assert!(matches!(
        decode::<Envelope>(&bytes),
        Err(Error::TooLarge { .. })
    ));
}

#[test]
fn a_declared_length_beyond_the_input_is_an_error_not_an_allocation() {
    // Header, then event_id declared as a string of i64::MAX/2 bytes (zigzag
    // varint), followed by nothing.
    let mut bytes = golden_envelope_bytes()[..10].to_vec();
    bytes.extend([0xFE, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]);
    assert!(matches!(
        decode::<Envelope>(&bytes),
        Err(Error::Decode { .. })
    ));
    // A length just under the allocation cap still fails cleanly on read.
    let mut bytes = golden_envelope_bytes()[..10].to_vec();
    bytes.extend([0x80, 0x80, 0x80, 0x02]); // zigzag 2_097_152 / 2 = 1 MiB
    assert!(matches!(
        decode::<Envelope>(&bytes),
        Err(Error::Decode { .. })
    ));
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode::<Envelope>(&bytes);
        let mut framed = golden_envelope_bytes()[..10].to_vec();
        framed.extend(&bytes);
        let _ = decode::<Envelope>(&framed);
    }

    #[test]
    fn flipping_any_byte_never_panics(index in 0usize..4096, bit in 0u8..8) {
        let mut bytes = golden_envelope_bytes();
        let index = index % bytes.len();
        bytes[index] ^= 1 << bit;
        let _ = decode::<Envelope>(&bytes);
    }

    #[test]
    fn envelopes_round_trip(index in 0usize..11, recorded_at in any::<i64>(), submitted_by in ".{0,40}") {
        let mut envelope = samples::envelopes()[index % 11].1.clone();
        envelope.recorded_at = recorded_at;
        envelope.submitted_by = submitted_by;
        let bytes = encode(&envelope).expect("encode");
        prop_assert_eq!(decode::<Envelope>(&bytes).expect("decode"), envelope);
    }
}
