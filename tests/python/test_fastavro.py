"""Another team's view of Warrant's wire format.

Uses only the .avsc files in schemas/ and fastavro: no Warrant code. It
decodes the golden bytes committed by the Rust tests to the same field
values, and writes a ProposalSubmitted that the Rust decoder must accept
(crates/warrant-schema/tests/wire.rs reads the file this test checks).
"""

import datetime
import io
import json
import os
import pathlib
import uuid

import fastavro
from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "schemas"
GOLDEN = SCHEMAS / "golden"

FILES = {
    "warrant.Envelope": "envelope.avsc",
    "warrant.ProposalSubmitted": "proposal_submitted.avsc",
    "warrant.SignalSubmitted": "signal_submitted.avsc",
}


def load(record):
    with open(SCHEMAS / FILES[record]) as f:
        return parse_schema(json.load(f))


def single_object_header(schema):
    fp = fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO")
    return b"\xc3\x01" + bytes.fromhex(fp)


def plain(value):
    """fastavro's logical types and union tuples, as serde's JSON shows them."""
    if isinstance(value, tuple):  # a union branch named by its record
        name, inner = value
        return {name.split(".")[-1]: plain(inner)}
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime.datetime):
        return int(value.timestamp() * 1000)
    return value


def test_golden_bytes_decode_to_the_same_fields():
    vectors = json.loads((GOLDEN / "vectors.json").read_text())
    assert len(vectors) >= 10
    for vector in vectors:
        schema = load(vector["record"])
        raw = bytes.fromhex(vector["hex"])
        header = single_object_header(schema)
        assert raw[:10] == header, vector["name"]
        decoded = fastavro.schemaless_reader(
            io.BytesIO(raw[10:]), schema, return_record_name=True, return_record_name_override=True
        )
        assert plain(decoded) == vector["value"], vector["name"]


def python_proposal():
    return {
        "instance_id": None,
        "action": {
            "kind": "db.migrate",
            "target": "prod/billing/postgres",
            "parameters": {"version": "42", "dry_run": "false"},
        },
        "proposer": {"principal": "agent:python", "kind": "AGENT", "model": None},
        "context_refs": [
            {"uri": "git://billing/migrations/42.sql", "digest": None, "note": "written by fastavro"}
        ],
        "rationale": "schema change for invoices v2",
    }


def test_a_proposal_written_by_fastavro_is_what_rust_reads():
    schema = load("warrant.ProposalSubmitted")
    out = io.BytesIO()
    out.write(single_object_header(schema))
    fastavro.schemaless_writer(out, schema, python_proposal())
    path = GOLDEN / "proposal_submitted.fastavro.hex"
    if os.environ.get("WARRANT_BLESS"):
        path.write_text(out.getvalue().hex() + "\n")
    assert out.getvalue().hex() == path.read_text().strip()


def test_a_v2_proposal_reads_under_the_current_schema_as_one_group():
    """Envelope v3 added approval groups, review NEVER and the resolution
    trace, all with defaults: another team reading old bytes with the new
    schema sees no groups and no trace (which means one group)."""
    with open(SCHEMAS / "history" / "envelope.v2.avsc") as f:
        writer = parse_schema(json.load(f))
    reader = load("warrant.Envelope")
    raw = bytes.fromhex((GOLDEN / "action_proposed.envelope-v2.hex").read_text().strip())
    assert raw[:10] == single_object_header(writer)
    decoded = fastavro.schemaless_reader(
        io.BytesIO(raw[10:]), writer, reader, return_record_name=True,
        return_record_name_override=True,
    )
    proposed = plain(decoded)["body"]["ActionProposed"]
    assert proposed["requirement"]["approval_groups"] == []
    assert proposed["resolution"] == []
    assert proposed["requirement"]["approvals_required"] == 2


def test_the_two_group_vector_carries_both_groups():
    vectors = {v["name"]: v for v in json.loads((GOLDEN / "vectors.json").read_text())}
    vector = vectors["action_proposed_two_groups"]
    schema = load("warrant.Envelope")
    raw = bytes.fromhex(vector["hex"])
    decoded = plain(fastavro.schemaless_reader(
        io.BytesIO(raw[10:]), schema, return_record_name=True, return_record_name_override=True
    ))
    requirement = decoded["body"]["ActionProposed"]["requirement"]
    assert requirement["approval_groups"] == [
        {"roles": ["sre"], "count": 2},
        {"roles": ["security"], "count": 1},
    ]
