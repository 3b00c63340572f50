"""Another team's producer for Warrant's ingress topic.

Uses only the .avsc files in schemas/, fastavro and confluent-kafka: no
Warrant code. It writes one warrant.ProposalSubmitted in Avro single-object
encoding (C3 01 + CRC-64-AVRO fingerprint of the parsing canonical form +
schemaless datum) to the proposals topic of a running broker; the Rust test
crates/warrant-intake/tests/python_ingress.rs starts intake, runs this file
with the variables below, and checks that intake appended the proposal to
the log.

Runs only when WARRANT_TEST_BROKERS and WARRANT_TEST_PROPOSALS_TOPIC are
set; without them it is skipped. Optional: WARRANT_TEST_INSTANCE_ID (the
instance id to propose under) and WARRANT_TEST_EXPECT_FILE (where to write
what this side expects: the instance id, the action digest as Python
computes it, and where the record landed).
"""

import json
import os
import pathlib
import uuid

import pytest
from fastavro.schema import parse_schema

# The same encoding as the end-to-end test's producer (this directory).
from produce_proposal import action_digest, single_object

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCHEMA_FILE = ROOT / "schemas" / "proposal_submitted.avsc"

BROKERS = os.environ.get("WARRANT_TEST_BROKERS")
TOPIC = os.environ.get("WARRANT_TEST_PROPOSALS_TOPIC")

pytestmark = pytest.mark.skipif(
    not (BROKERS and TOPIC),
    reason="needs WARRANT_TEST_BROKERS and WARRANT_TEST_PROPOSALS_TOPIC "
    "(crates/warrant-intake/tests/python_ingress.rs sets them)",
)


def test_a_proposal_produced_from_python_is_accepted_by_intake():
    # Imported here: without the variables this test is skipped, and the
    # module must still import where confluent-kafka is not installed.
    from confluent_kafka import Producer

    schema = parse_schema(json.loads(SCHEMA_FILE.read_text()))
    instance_id = os.environ.get("WARRANT_TEST_INSTANCE_ID") or str(uuid.uuid4())
    action = {
        "kind": "db.migrate",
        "target": "prod/billing/postgres",
        "parameters": {"version": "42", "dry_run": "false", "note": "naïve → ✓"},
    }
    proposal = {
        "instance_id": instance_id,
        "action": action,
        "proposer": {"principal": "agent:remediator", "kind": "AGENT", "model": "py-1"},
        "context_refs": [
            {"uri": "git://billing/migrations/42.sql", "digest": None, "note": "from fastavro"}
        ],
        "rationale": "schema change for invoices v2",
    }
    value = single_object(schema, proposal)
    assert value[:2] == b"\xc3\x01"

    landed = []

    def on_delivery(error, message):
        landed.append((error, message.partition(), message.offset()))

    producer = Producer(
        {"bootstrap.servers": BROKERS, "acks": "all", "enable.idempotence": True}
    )
    producer.produce(TOPIC, key=instance_id.encode(), value=value, on_delivery=on_delivery)
    assert producer.flush(30) == 0, "the record was not delivered"
    assert len(landed) == 1
    error, partition, offset = landed[0]
    assert error is None, error

    expect_file = os.environ.get("WARRANT_TEST_EXPECT_FILE")
    if expect_file:
        pathlib.Path(expect_file).write_text(
            json.dumps(
                {
                    "instance_id": instance_id,
                    "action_digest": action_digest(action),
                    "topic": TOPIC,
                    "partition": partition,
                    "offset": offset,
                }
            )
        )
