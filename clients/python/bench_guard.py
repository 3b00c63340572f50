"""What `guard` adds once an action is authorized: the time of claim + report.

For N instances (default 200), each proposed and approved by a reviewer on
the HMAC webhook beforehand, it times `client.claim(...)` then
`client.report(grant, "SUCCEEDED")` around a no-op body, one instance after
another, and prints the median and p99 in milliseconds. Beside it, as the
baseline, the p99 of N single Kafka produces (acks=all, idempotent,
confluent-kafka, ~500-byte records, each awaited before the next) to the
same broker in the same run, and the ratio of the two p99s.

By default it starts its own system with the test harness (fresh topics, the
built binaries from WARRANT_BIN_DIR), so the run needs only a broker:

    python clients/python/bench_guard.py [-n 200]

Not a test: it asserts nothing about the figures.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shlex
import statistics
import sys
import tempfile
import time
import uuid

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "harness"))

import warrant_system  # noqa: E402

from warrant import Client  # noqa: E402

WARMUP = 10


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def authorized_instances(system: warrant_system.System, client: Client, count: int) -> list[tuple[str, dict]]:
    instances = []
    for _ in range(count):
        action = {
            "kind": "deploy.restart",
            "target": f"staging/bench-{uuid.uuid4().hex[:10]}",
            "parameters": {"strategy": "rolling"},
        }
        instances.append((client.propose(action).instance_id, action))
    for instance_id, _ in instances:
        system.await_record(instance_id, {"AWAITING_DECISION"}, timeout=60)
        system.decide(instance_id, "alice")
    for instance_id, _ in instances:
        system.await_record(instance_id, {"AUTHORIZED"}, timeout=60)
    return instances


def time_guard_tail(client: Client, instances: list[tuple[str, dict]]) -> list[float]:
    samples = []
    for instance_id, action in instances:
        started = time.perf_counter()
        grant = client.claim(instance_id, action)
        # The guarded body would run here: a no-op.
        client.report(grant, "SUCCEEDED")
        samples.append((time.perf_counter() - started) * 1000.0)
    return samples


def time_kafka_produces(brokers: str, count: int) -> list[float]:
    from confluent_kafka import Producer

    topic = f"bench-{uuid.uuid4().hex[:12]}-produce"
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": brokers})
    for future in admin.create_topics([NewTopic(topic, 1, 1)], operation_timeout=30).values():
        future.result(timeout=60)
    producer = Producer(
        {"bootstrap.servers": brokers, "acks": "all", "enable.idempotence": True, "linger.ms": 0}
    )
    value = os.urandom(250).hex().encode()  # 500 bytes
    samples = []
    try:
        for index in range(count + WARMUP):
            landed: list[object] = []
            started = time.perf_counter()
            producer.produce(
                topic,
                key=str(uuid.uuid4()).encode(),
                value=value,
                on_delivery=lambda error, message: landed.append(error),
            )
            producer.flush(30)
            elapsed = (time.perf_counter() - started) * 1000.0
            if landed != [None]:
                raise SystemExit(f"produce {index} was not acknowledged: {landed}")
            if index >= WARMUP:
                samples.append(elapsed)
    finally:
        warrant_system.delete_topics(brokers, [topic])
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=200, help="instances (and Kafka produces) measured")
    args = parser.parse_args()
    reason = warrant_system.binaries_missing()
    if reason is not None:
        raise SystemExit(reason)

    command = " ".join(
        [f"WARRANT_BIN_DIR={shlex.quote(str(warrant_system.bin_dir()))}"]
        + [shlex.quote(part) for part in [sys.executable, *sys.argv]]
    )
    with tempfile.TemporaryDirectory() as workdir:
        with warrant_system.running_system(pathlib.Path(workdir)) as system:
            tokens = system.tokens["agent:sdk"]
            with Client(system.intake_url, tokens["service"], executor_token=tokens["executor"]) as client:
                instances = authorized_instances(system, client, args.n + WARMUP)
                guard = time_guard_tail(client, instances)[WARMUP:]
                system.await_record(instances[-1][0], {"COMPLETED"}, timeout=30)
            kafka = time_kafka_produces(system.brokers, args.n)

    guard_p99, kafka_p99 = percentile(guard, 99), percentile(kafka, 99)
    print(f"command: {command}")
    print(f"guard once authorized (claim + report, no-op body), n={len(guard)}:")
    print(f"  median {statistics.median(guard):.2f} ms   p99 {guard_p99:.2f} ms   max {max(guard):.2f} ms")
    print(f"kafka produce baseline (acks=all, idempotent, 500 B, awaited one by one), n={len(kafka)}:")
    print(f"  median {statistics.median(kafka):.2f} ms   p99 {kafka_p99:.2f} ms   max {max(kafka):.2f} ms")
    print(f"ratio of p99s (guard / kafka produce): {guard_p99 / kafka_p99:.1f}x")


if __name__ == "__main__":
    main()
