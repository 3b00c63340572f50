"""Proposals and signals over Kafka ingress (`pip install 'warrant[kafka]'`).

`KafkaProposer` writes `warrant.ProposalSubmitted` and `warrant.SignalSubmitted`
records in Avro single-object encoding (``C3 01``, the CRC-64-AVRO
fingerprint of the schema's parsing canonical form, then the datum), using
only the schema files (copies of the repository's ``schemas/*.avsc`` ship
inside this package). Intake consumes the ingress topics and appends the
events to the log; the identity of every record is the topic's, as the
principals file declares it, so a record naming another proposer or source
is dead-lettered.
"""

from __future__ import annotations

import io
import json
import pathlib
import uuid
from importlib import resources
from typing import Any, NamedTuple

from ._errors import WarrantError

__all__ = ["KafkaProposer", "Delivery", "DeliveryFailed", "single_object", "SCHEMA_FILES"]

SCHEMA_FILES = ("proposal_submitted.avsc", "signal_submitted.avsc")
DELIVERY_TIMEOUT_S = 30.0


class DeliveryFailed(WarrantError):
    """The broker did not acknowledge the record (with acks=all) in time."""


class _Position(NamedTuple):
    partition: int
    offset: int


class Delivery(_Position):
    """Where a record landed: unpacks as ``(partition, offset)``; also
    carries ``.topic`` and ``.instance_id``."""

    topic: str
    instance_id: str

    @classmethod
    def of(cls, partition: int, offset: int, topic: str, instance_id: str) -> "Delivery":
        delivery = cls(partition, offset)
        delivery.topic = topic
        delivery.instance_id = instance_id
        return delivery


def _schema_text(name: str, schemas_dir: pathlib.Path | None) -> str:
    if schemas_dir is not None:
        return (pathlib.Path(schemas_dir) / name).read_text(encoding="utf-8")
    return resources.files("warrant").joinpath("schemas", name).read_text(encoding="utf-8")


def single_object(schema: Any, datum: dict[str, Any]) -> bytes:
    """Avro single-object encoding of `datum` under a parsed fastavro schema."""
    import fastavro
    from fastavro.schema import fingerprint, to_parsing_canonical_form

    out = io.BytesIO()
    out.write(b"\xc3\x01")
    # fastavro's hex spells the fingerprint's bytes in the order the header
    # carries them; the golden vectors in the tests pin the result.
    out.write(bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO")))
    fastavro.schemaless_writer(out, schema, datum)
    return out.getvalue()


class KafkaProposer:
    """A producer for Warrant's ingress topics: acks=all, idempotent, keyed by instance id."""

    def __init__(
        self,
        brokers: str,
        *,
        proposals_topic: str = "warrant.proposals",
        signals_topic: str = "warrant.signals",
        schemas_dir: str | pathlib.Path | None = None,
        **producer_config: Any,
    ) -> None:
        from confluent_kafka import Producer
        from fastavro.schema import parse_schema

        directory = pathlib.Path(schemas_dir) if schemas_dir is not None else None
        self.proposals_topic = proposals_topic
        self.signals_topic = signals_topic
        self._proposal_schema = parse_schema(json.loads(_schema_text(SCHEMA_FILES[0], directory)))
        self._signal_schema = parse_schema(json.loads(_schema_text(SCHEMA_FILES[1], directory)))
        config: dict[str, Any] = {"bootstrap.servers": brokers, "linger.ms": 1}
        config.update(producer_config)
        # Set last: these are what make a delivered record durable and
        # unduplicated, and what puts an instance's key in the same
        # partition as Warrant's own producers would.
        config.update(
            {"acks": "all", "enable.idempotence": True, "partitioner": "murmur2_random"}
        )
        self._producer = Producer(config)

    def propose(
        self,
        action: dict[str, Any],
        *,
        principal: str,
        kind: str = "AGENT",
        model: str | None = None,
        instance_id: str | None = None,
        context_refs: list[dict[str, Any]] | None = None,
        rationale: str | None = None,
    ) -> Delivery:
        """Produce a ProposalSubmitted; returns once the broker acknowledged it.

        `principal` must be the proposals topic's principal in intake's
        principals file (`ingress.proposals.principal`). Without an
        `instance_id` a fresh one is chosen (``Delivery.instance_id``).
        """
        instance_id = instance_id or str(uuid.uuid4())
        datum = {
            "instance_id": instance_id,
            "action": {
                "kind": action["kind"],
                "target": action["target"],
                "parameters": dict(action.get("parameters") or {}),
            },
            "proposer": {"principal": principal, "kind": kind, "model": model},
            "context_refs": [
                {"uri": ref["uri"], "digest": ref.get("digest"), "note": ref.get("note")}
                for ref in context_refs or []
            ],
            "rationale": rationale,
        }
        value = single_object(self._proposal_schema, datum)
        return self._produce(self.proposals_topic, instance_id, value)

    def signal(
        self,
        instance_id: str,
        verdict: str,
        *,
        source: str,
        policy_ref: dict[str, str],
        reasons: list[str] | None = None,
    ) -> Delivery:
        """Produce a SignalSubmitted (verdict ALLOW, PAUSE or DENY) for `instance_id`."""
        datum = {
            "instance_id": instance_id,
            "source": source,
            "verdict": verdict,
            "reasons": list(reasons or []),
            "policy_ref": {"id": policy_ref["id"], "version": policy_ref["version"]},
        }
        value = single_object(self._signal_schema, datum)
        return self._produce(self.signals_topic, instance_id, value)

    def _produce(self, topic: str, instance_id: str, value: bytes) -> Delivery:
        landed: list[tuple[Any, Any]] = []
        self._producer.produce(
            topic,
            key=instance_id.encode(),
            value=value,
            on_delivery=lambda error, message: landed.append((error, message)),
        )
        remaining = self._producer.flush(DELIVERY_TIMEOUT_S)
        if not landed:
            raise DeliveryFailed(
                f"no acknowledgement from the broker within {DELIVERY_TIMEOUT_S:g} s "
                f"({remaining} record(s) still queued for {topic})"
            )
        error, message = landed[0]
        if error is not None:
            raise DeliveryFailed(f"delivery to {topic} failed: {error}")
        return Delivery.of(message.partition(), message.offset(), topic, instance_id)

    def close(self) -> None:
        self._producer.flush(DELIVERY_TIMEOUT_S)

    def __enter__(self) -> "KafkaProposer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
