"""Another team's producer for Warrant's ingress topics, as a command.

Uses only the .avsc files in schemas/, fastavro and confluent-kafka: no
Warrant code. It writes one record in Avro single-object encoding (C3 01 +
CRC-64-AVRO fingerprint of the parsing canonical form + schemaless datum):

  proposal  a warrant.ProposalSubmitted to the proposals topic (an agent)
  signal    a warrant.SignalSubmitted to the signals topic (a policy engine)

and prints one JSON line saying where it landed (topic, partition, offset,
instance_id) and, for a proposal, the action digest as Python computes it.
The end-to-end test tests/e2e/flow.rs runs it in the venv .cache/venv.

Not collected by pytest (the name does not start with test_); importing it
does nothing.
"""

import argparse
import hashlib
import io
import json
import pathlib
import sys

import fastavro
from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

SCHEMAS = pathlib.Path(__file__).resolve().parents[2] / "schemas"


def load(name):
    return parse_schema(json.loads((SCHEMAS / name).read_text()))


def single_object(schema, datum):
    fp = fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO")
    out = io.BytesIO()
    out.write(b"\xc3\x01" + bytes.fromhex(fp))
    fastavro.schemaless_writer(out, schema, datum)
    return out.getvalue()


def action_digest(action):
    # docs/contract.md §3: for string-only maps, JCS equals sorted compact JSON as UTF-8.
    canonical = json.dumps(action, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def key_value(text):
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def proposal(args):
    action = {"kind": args.kind, "target": args.target, "parameters": dict(args.param)}
    datum = {
        "instance_id": args.instance_id,
        "action": action,
        "proposer": {"principal": args.principal, "kind": args.proposer_kind, "model": args.model},
        "context_refs": [{"uri": uri, "digest": None, "note": None} for uri in args.context_uri],
        "rationale": args.rationale,
    }
    value = single_object(load("proposal_submitted.avsc"), datum)
    return value, {"action_digest": action_digest(action)}


def signal(args):
    datum = {
        "instance_id": args.instance_id,
        "source": args.source,
        "verdict": args.verdict,
        "reasons": args.reason,
        "policy_ref": {"id": args.policy_id, "version": args.policy_version},
    }
    return single_object(load("signal_submitted.avsc"), datum), {}


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--brokers", required=True)
    parser.add_argument("--topic", required=True)
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("proposal", help="a warrant.ProposalSubmitted")
    p.add_argument("--instance-id", required=True)
    p.add_argument("--kind", required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--param", type=key_value, action="append", default=[])
    p.add_argument("--principal", required=True)
    p.add_argument("--proposer-kind", choices=["AGENT", "SERVICE", "HUMAN"], default="AGENT")
    p.add_argument("--model")
    p.add_argument("--context-uri", action="append", default=[])
    p.add_argument("--rationale")
    p.set_defaults(build=proposal)

    s = commands.add_parser("signal", help="a warrant.SignalSubmitted")
    s.add_argument("--instance-id", required=True)
    s.add_argument("--source", required=True)
    s.add_argument("--verdict", choices=["ALLOW", "PAUSE", "DENY"], required=True)
    s.add_argument("--reason", action="append", default=[])
    s.add_argument("--policy-id", required=True)
    s.add_argument("--policy-version", required=True)
    s.set_defaults(build=signal)

    args = parser.parse_args(argv)
    value, extra = args.build(args)
    assert value[:2] == b"\xc3\x01"

    from confluent_kafka import Producer

    landed = []
    producer = Producer({"bootstrap.servers": args.brokers, "acks": "all", "enable.idempotence": True})
    producer.produce(
        args.topic,
        key=args.instance_id.encode(),
        value=value,
        on_delivery=lambda error, message: landed.append((error, message)),
    )
    if producer.flush(30) != 0 or len(landed) != 1:
        sys.exit("the record was not delivered within 30 s")
    error, message = landed[0]
    if error is not None:
        sys.exit(f"delivery failed: {error}")
    print(
        json.dumps(
            {
                "topic": message.topic(),
                "partition": message.partition(),
                "offset": message.offset(),
                "instance_id": args.instance_id,
                **extra,
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1:])
