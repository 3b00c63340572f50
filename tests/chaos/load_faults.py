"""Faults under load: the broker stopped, the broker killed, intake killed.

Each fault starts a fresh Warrant (tests/harness/warrant_system.py: its own
topics, intake, projector) on the chaos suite's broker, drives mixed HTTP
load at it (proposals, policy signals, HMAC-signed decisions, claims) from
several threads, injects the fault, lets the system recover, and then reads
the log back with ``warrant-replay --format ndjson`` to count what was lost
(acknowledged but not on the log) and what was applied twice (one event id
with more than one applied history entry), and runs ``warrant-replay
--verify`` against the projector.

Every logical request carries what makes its retry idempotent (an
``Idempotency-Key``, a client-chosen instance id, or the exact signed bytes
of a decision), and a 503 is retried with the same request after its
``Retry-After``: so a retry of something that did land must fold as
``Duplicate``, never as a second applied event.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import http.client
import json
import os
import pathlib
import random
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, deque
from typing import Any, Callable

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "tests" / "harness"))
sys.path.insert(0, str(REPO / "tests" / "python"))

from broker import ChaosBroker  # noqa: E402
from faultenv import FaultEnv  # noqa: E402

# Intake's timeouts, passed explicitly so the bounds below cannot drift
# from what intake runs with (these are also its defaults).
PRODUCE_TIMEOUT_S = 5.0
CLAIM_TIMEOUT_S = 5.0
# What a request may take beyond intake's own timeouts before it counts as
# a hang: scheduling on a loaded 2-core machine, the projector lookup.
MARGIN_S = 2.5

# Once the broker answers again, how soon intake must acknowledge again:
# librdkafka's reconnect backoff grows to 10 s (+50% jitter) while the
# broker is away, and a request then waits at most the produce timeout.
RECOVERY_S = 15.0 + PRODUCE_TIMEOUT_S

CHAOS_RULESET = """\
# The chaos suite's ruleset: one SRE approves, and an approved instance
# grants many executions so claims keep getting 201s under load.
version: "chaos-1"
rules:
  - id: chaos-restarts
    match: { kind: "deploy.restart", target: "chaos/" }
    approvals_required: 1
    approver_roles: [sre]
    override_roles: [security]
    decision_timeout_ms: 3600000
    grant_ttl_ms: 3600000
    max_executions: 1000000
  - id: everything-else
    approvals_required: 1
    approver_roles: [sre]
    override_roles: [security]
    decision_timeout_ms: 3600000
    grant_ttl_ms: 3600000
"""


# ---------------------------------------------------------------- http ----


@dataclasses.dataclass
class Answer:
    status: int  # 0: no HTTP answer (connection refused/reset, client timeout)
    body: Any
    retry_after: str | None
    elapsed: float
    error: str | None = None


def call(base: str, method: str, path: str, body: bytes | None, headers: dict[str, str], timeout: float) -> Answer:
    host, port = base.removeprefix("http://").split(":")
    began = time.monotonic()
    connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        raw = response.read()
        try:
            decoded: Any = json.loads(raw) if raw else None
        except ValueError:
            decoded = raw.decode(errors="replace")
        return Answer(response.status, decoded, response.getheader("Retry-After"), time.monotonic() - began)
    except (OSError, http.client.HTTPException) as error:
        return Answer(0, None, None, time.monotonic() - began, f"{type(error).__name__}: {error}")
    finally:
        connection.close()


def hmac_signature(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


# ---------------------------------------------------------------- load ----


@dataclasses.dataclass
class Op:
    """One logical request; every retry sends exactly these bytes."""

    kind: str  # proposal | signal | decision | claim
    path: str
    body: bytes
    headers: dict[str, str]
    bound: float  # seconds beyond which an answer is a hang
    instance_id: str


@dataclasses.dataclass
class Stats:
    sent: int = 0
    acked: int = 0
    refused_503: int = 0
    unanswered: int = 0  # no HTTP answer (refused or reset connection, or client timeout)
    hangs: int = 0  # answered (or timed out) later than the bound
    other_5xx: int = 0
    no_retry_after: int = 0  # a 503 without Retry-After
    other: Counter = dataclasses.field(default_factory=Counter)  # status -> count
    codes_503: Counter = dataclasses.field(default_factory=Counter)
    max_latency: dict[str, float] = dataclasses.field(default_factory=dict)
    acked_events: dict[str, str] = dataclasses.field(default_factory=dict)  # event id -> kind
    first_ack_after: dict[str, float] = dataclasses.field(default_factory=dict)
    samples: list[str] = dataclasses.field(default_factory=list)

    def sample(self, text: str) -> None:
        if len(self.samples) < 5:
            self.samples.append(text)


class Load:
    """Mixed HTTP load from worker threads, counting every request and outcome."""

    def __init__(self, system: Any, threads_per_kind: int = 1, pause: float = 0.0) -> None:
        self.system = system
        self.threads_per_kind = threads_per_kind
        self.pause = pause
        self.stats = Stats()
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.approved: list[tuple[str, str]] = []  # (instance id, action digest)
        self.pending: deque[str] = deque(maxlen=2000)  # proposed, to be decided
        self.known: deque[str] = deque(maxlen=2000)  # proposed, for signals
        self.marks: dict[str, float] = {}  # name -> monotonic time
        self.tokens = system.tokens

    # -- setup --------------------------------------------------------------

    def prepare(self, instances: int = 12) -> None:
        """Approved instances for the claimers, made before any fault."""
        for n in range(instances):
            instance_id = str(uuid.uuid4())
            op = self._proposal(instance_id, f"chaos/setup/{n}")
            answer = self._send(op, count=False)
            if answer.status != 202:
                raise RuntimeError(f"setup proposal answered {answer.status}: {answer.body}")
            digest = answer.body["action_digest"]
            answer = self._send(self._decision(instance_id), count=False)
            if answer.status != 202:
                raise RuntimeError(f"setup decision answered {answer.status}: {answer.body}")
            self.approved.append((instance_id, digest))
            self.known.append(instance_id)
        for instance_id, _ in self.approved:
            self.system.await_record(instance_id, {"AUTHORIZED"}, timeout=60)

    # -- requests -----------------------------------------------------------

    def _bearer(self, token: str, key: str | None) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
        if key is not None:
            headers["Idempotency-Key"] = key
        return headers

    def _proposal(self, instance_id: str | None, target: str) -> Op:
        document: dict[str, Any] = {
            "action": {"kind": "deploy.restart", "target": target, "parameters": {"n": "1"}},
            "rationale": "chaos load",
        }
        # A chosen instance id, or an Idempotency-Key that derives one, makes
        # a retry idempotent; either way intake also waits for the fold.
        key = None
        if instance_id is not None:
            document["instance_id"] = instance_id
        else:
            key = str(uuid.uuid4())
        return Op(
            "proposal",
            "/v1/proposals",
            json.dumps(document).encode(),
            self._bearer(self.tokens["agent:sdk"]["service"], key),
            PRODUCE_TIMEOUT_S + CLAIM_TIMEOUT_S + MARGIN_S,
            instance_id or "",
        )

    def _signal(self, instance_id: str) -> Op:
        document = {"verdict": "ALLOW", "reasons": ["chaos"], "policy_ref": {"id": "chaos", "version": "1"}}
        return Op(
            "signal",
            f"/v1/instances/{instance_id}/signals",
            json.dumps(document).encode(),
            self._bearer(self.tokens["policy"], str(uuid.uuid4())),
            PRODUCE_TIMEOUT_S + MARGIN_S,
            instance_id,
        )

    def _decision(self, instance_id: str, reviewer: str = "alice") -> Op:
        # Signed once: a retry resends the same timestamp and bytes, so it
        # derives the same event id (docs/contract.md: decisions' ids).
        body = json.dumps({"instance_id": instance_id, "verdict": "APPROVE", "justification": "chaos"}).encode()
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "X-Warrant-Timestamp": timestamp,
            "X-Warrant-Signature": hmac_signature(self.system.reviewer_secrets[reviewer], timestamp, body),
            "X-Warrant-Reviewer": reviewer,
        }
        return Op(
            "decision",
            f"/v1/instances/{instance_id}/decisions",
            body,
            headers,
            PRODUCE_TIMEOUT_S + MARGIN_S,
            instance_id,
        )

    def _claim(self, instance_id: str, digest: str) -> Op:
        return Op(
            "claim",
            f"/v1/instances/{instance_id}/executions",
            json.dumps({"action_digest": digest}).encode(),
            self._bearer(self.tokens["agent:sdk"]["executor"], str(uuid.uuid4())),
            PRODUCE_TIMEOUT_S + CLAIM_TIMEOUT_S + MARGIN_S,
            instance_id,
        )

    def _send(self, op: Op, count: bool = True) -> Answer:
        answer = call(self.system.intake_url, "POST", op.path, op.body, op.headers, op.bound + 10.0)
        if count:
            self._count(op, answer)
        return answer

    def _count(self, op: Op, answer: Answer) -> None:
        s = self.stats
        with self.lock:
            s.sent += 1
            s.max_latency[op.kind] = max(s.max_latency.get(op.kind, 0.0), answer.elapsed)
            if answer.elapsed > op.bound:
                s.hangs += 1
                s.sample(f"{op.kind} took {answer.elapsed:.1f}s (bound {op.bound:.1f}s), status {answer.status}")
            if answer.status == 0:
                s.unanswered += 1
                s.sample(f"{op.kind}: no answer: {answer.error}")
            elif 200 <= answer.status < 300:
                s.acked += 1
                event_id = answer.body.get("event_id") if isinstance(answer.body, dict) else None
                if event_id:
                    s.acked_events[event_id] = op.kind
                now = time.monotonic()
                for name, at in self.marks.items():
                    if name not in s.first_ack_after:
                        s.first_ack_after[name] = now - at
            elif answer.status == 503:
                s.refused_503 += 1
                code = answer.body.get("error", {}).get("code") if isinstance(answer.body, dict) else None
                s.codes_503[str(code)] += 1
                # However long the endpoint may wait for the fold, a failed
                # append is answered within the produce timeout.
                if code == "log_unavailable" and answer.elapsed > PRODUCE_TIMEOUT_S + MARGIN_S:
                    s.hangs += 1
                    s.sample(f"{op.kind}: log_unavailable after {answer.elapsed:.1f}s")
                if not answer.retry_after:
                    s.no_retry_after += 1
                    s.sample(f"{op.kind}: 503 without Retry-After: {answer.body}")
            elif answer.status >= 500:
                s.other_5xx += 1
                s.sample(f"{op.kind}: {answer.status}: {answer.body}")
            else:
                s.other[f"{op.kind}:{answer.status}"] += 1

    def mark(self, name: str) -> None:
        """Remember now, to report how long after it the first request was acknowledged."""
        with self.lock:
            self.marks[name] = time.monotonic()

    def _run(self, op: Op) -> Answer:
        """Send until answered with something other than 503 or no answer (or stopping)."""
        while True:
            answer = self._send(op)
            if answer.status not in (0, 503) or self.stopping.is_set():
                return answer
            try:
                wait = float(answer.retry_after) if answer.retry_after else 0.2
            except ValueError:
                wait = 1.0
            self.stopping.wait(min(wait, 5.0))
            if self.stopping.is_set():
                return answer

    # -- workers ------------------------------------------------------------

    def _proposer(self, n: int) -> None:
        while not self.stopping.is_set():
            chosen = random.random() < 0.5
            op = self._proposal(str(uuid.uuid4()) if chosen else None, f"chaos/load/{n}")
            answer = self._run(op)
            if answer.status == 202 and isinstance(answer.body, dict):
                self.pending.append(answer.body["instance_id"])
                self.known.append(answer.body["instance_id"])
            self.stopping.wait(self.pause)

    def _signaller(self) -> None:
        while not self.stopping.is_set():
            self._run(self._signal(random.choice(list(self.known))))
            self.stopping.wait(self.pause)

    def _decider(self) -> None:
        while not self.stopping.is_set():
            try:
                instance_id = self.pending.popleft()
            except IndexError:
                self.stopping.wait(0.05)
                continue
            self._run(self._decision(instance_id, random.choice(["alice", "bob"])))
            self.stopping.wait(self.pause)

    def _claimer(self) -> None:
        while not self.stopping.is_set():
            instance_id, digest = random.choice(self.approved)
            self._run(self._claim(instance_id, digest))
            self.stopping.wait(self.pause)

    def start(self) -> None:
        workers: list[Callable[[], None]] = []
        for n in range(self.threads_per_kind):
            workers += [lambda n=n: self._proposer(n), self._signaller, self._decider, self._claimer]
        for worker in workers:
            thread = threading.Thread(target=worker, daemon=True)
            thread.start()
            self.threads.append(thread)

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=PRODUCE_TIMEOUT_S + CLAIM_TIMEOUT_S + MARGIN_S + 15)


# ------------------------------------------------------------ ingress ----


class IngressLoad:
    """Another team's producer writing proposals to the ingress topic.

    Records go in bursts, so that intake spends a while appending one
    batch before it commits: a kill timed just after a burst (see
    `burst_sent`) lands between appends and their commit, the window
    re-delivery exists for.
    """

    def __init__(self, system: Any, burst: int, interval: float) -> None:
        from produce_proposal import load, single_object

        self.system = system
        self.topic = system.topics["proposals"]
        self.burst = burst
        self.interval = interval
        self.burst_sent = threading.Event()
        self.burst_delivered = threading.Event()
        self.schema = load("proposal_submitted.avsc")
        self.single_object = single_object
        self.lock = threading.Lock()
        self.delivered: dict[tuple[int, int], str] = {}  # (partition, offset) -> instance id
        self.failed = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from confluent_kafka import Producer

        producer = Producer(
            {"bootstrap.servers": self.system.brokers, "acks": "all", "enable.idempotence": True, "log_level": 3}
        )

        def delivered(error: Any, message: Any) -> None:
            with self.lock:
                if error is not None:
                    self.failed += 1
                else:
                    self.delivered[(message.partition(), message.offset())] = message.key().decode()

        n = 0
        while not self.stopping.is_set():
            for _ in range(self.burst):
                instance_id = str(uuid.uuid4())
                datum = {
                    "instance_id": instance_id,
                    "action": {"kind": "deploy.restart", "target": f"chaos/ingress/{n}", "parameters": {}},
                    "proposer": {"principal": "agent:kafka", "kind": "AGENT", "model": None},
                    "context_refs": [],
                    "rationale": "chaos ingress",
                }
                producer.produce(
                    self.topic,
                    key=instance_id.encode(),
                    value=self.single_object(self.schema, datum),
                    on_delivery=delivered,
                )
                n += 1
                producer.poll(0)
            # Handed to the producer, not yet all delivered: intake starts
            # appending the first records while the last are on their way.
            self.burst_sent.set()
            producer.flush(30)
            self.burst_delivered.set()
            self.stopping.wait(self.interval)
        producer.flush(30)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=60)

    def group(self) -> str:
        return f"{self.system.topics['log']}-intake"

    def committed(self) -> dict[int, int]:
        """The ingress consumer group's committed offset per partition of the proposals topic."""
        from confluent_kafka import Consumer, TopicPartition

        consumer = Consumer({"bootstrap.servers": self.system.brokers, "group.id": self.group(), "enable.auto.commit": False})
        try:
            partitions = consumer.list_topics(self.topic, timeout=10).topics[self.topic].partitions
            answer = consumer.committed([TopicPartition(self.topic, p) for p in partitions], timeout=10)
            return {tp.partition: max(tp.offset, 0) for tp in answer}
        finally:
            consumer.close()

    def high_watermarks(self) -> dict[int, int]:
        from confluent_kafka import Consumer, TopicPartition

        consumer = Consumer({"bootstrap.servers": self.system.brokers, "group.id": f"{self.group()}-watermarks"})
        try:
            partitions = consumer.list_topics(self.topic, timeout=10).topics[self.topic].partitions
            return {p: consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10)[1] for p in partitions}
        finally:
            consumer.close()

    def committed_records(self, committed: dict[int, int]) -> dict[tuple[int, int], str]:
        with self.lock:
            return {pos: inst for pos, inst in self.delivered.items() if pos[1] < committed.get(pos[0], 0)}

    def await_drained(self, timeout: float) -> dict[int, int]:
        """Wait until the group committed everything on the topic; the committed offsets."""
        deadline = time.monotonic() + timeout
        while True:
            committed, ends = self.committed(), self.high_watermarks()
            if all(committed.get(p, 0) >= end for p, end in ends.items()):
                return committed
            if time.monotonic() > deadline:
                raise RuntimeError(f"ingress did not catch up within {timeout:.0f} s: committed {committed}, ends {ends}")
            time.sleep(0.5)


# ------------------------------------------------------------- checks ----


def replayed_records(system: Any, env: FaultEnv) -> list[dict[str, Any]]:
    completed = subprocess.run(
        [
            str(env.bin_dir / "warrant-replay"),
            f"--brokers={system.brokers}",
            f"--log-topic={system.topics['log']}",
            f"--principals-topic={system.topics['principals']}",
            "--quiet",
            "--format=ndjson",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"warrant-replay exited {completed.returncode}: {completed.stderr[-2000:]}")
    return [json.loads(line) for line in completed.stdout.splitlines() if line.strip()]


@dataclasses.dataclass
class LogFacts:
    events: dict[str, list[dict[str, Any]]]  # event id -> history entries (with instance_id)
    applied_twice: int
    duplicates: int  # entries refused as Duplicate


def log_facts(records: list[dict[str, Any]]) -> LogFacts:
    events: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        for entry in record.get("history", []):
            event_id = entry.get("event_id")
            if event_id:
                events.setdefault(event_id, []).append({**entry, "instance_id": record.get("instance_id")})
    applied_twice = sum(
        1 for entries in events.values() if sum(1 for e in entries if e["outcome"].get("kind") == "APPLIED") > 1
    )
    duplicates = sum(
        1 for entries in events.values() for e in entries if e["outcome"].get("code") == "Duplicate"
    )
    return LogFacts(events, applied_twice, duplicates)


def verify(system: Any, env: FaultEnv, timeout: float = 120.0) -> tuple[str, str]:
    """`warrant-replay --verify` once the projector folded the whole log: ("equal"|"DIFFERENT", report)."""
    from warrant_system import http_json

    end = system.log_end_total()
    deadline = time.monotonic() + timeout
    while True:
        status, checkpoint = http_json("GET", f"{system.projector_url}/v1/checkpoint")
        folded = (
            sum(int(v) for v in checkpoint.get("partitions", {}).values())
            if status == 200 and isinstance(checkpoint, dict)
            else -1
        )
        if folded == end:
            break
        if time.monotonic() > deadline:
            return "DIFFERENT", f"the projector folded {folded} of {end} log records within {timeout:.0f} s"
        time.sleep(0.2)
    completed = subprocess.run(
        [
            str(env.bin_dir / "warrant-replay"),
            f"--brokers={system.brokers}",
            f"--log-topic={system.topics['log']}",
            f"--principals-topic={system.topics['principals']}",
            "--quiet",
            "--verify",
            system.projector_url,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = (completed.stdout + completed.stderr).strip()
    if completed.returncode == 0:
        return "equal", report.splitlines()[-1] if report else ""
    if completed.returncode == 1:
        return "DIFFERENT", report[-500:]
    raise RuntimeError(f"warrant-replay --verify exited {completed.returncode}: {report[-2000:]}")


# ------------------------------------------------------------- faults ----


def _intake_args() -> list[str]:
    return [
        f"--produce-timeout-ms={int(PRODUCE_TIMEOUT_S * 1000)}",
        f"--claim-timeout-ms={int(CLAIM_TIMEOUT_S * 1000)}",
    ]


def _system(env: FaultEnv, extra: list[str] | None = None) -> Any:
    # The harness reads its broker and binaries from the environment.
    os.environ["WARRANT_TEST_BROKERS"] = env.bootstrap
    os.environ["WARRANT_BIN_DIR"] = str(env.bin_dir)
    from warrant_system import running_system

    return running_system(env.work, ruleset_yaml=CHAOS_RULESET, sweeper=False, intake_args=_intake_args() + (extra or []))


def _timings(env: FaultEnv) -> dict[str, float]:
    if env.mode == "full":
        return {"before": 15.0, "down": 20.0, "after": 25.0, "threads": 2}
    return {"before": 3.0, "down": 4.0, "after": 4.0, "threads": 1}


def _broker_fault(env: FaultEnv, name: str, kill: bool) -> dict[str, Any]:
    broker = ChaosBroker.from_environment(env.repo)
    if broker.bootstrap != env.bootstrap:
        raise RuntimeError(f"the chaos broker is {broker.bootstrap} but the fault was given {env.bootstrap}")
    t = _timings(env)
    problems: list[str] = []
    with _system(env) as system:
        load = Load(system, threads_per_kind=int(t["threads"]))
        load.prepare()
        try:
            load.start()
            time.sleep(t["before"])
            acked_before = load.stats.acked
            began = time.monotonic()
            if kill:
                broker.kill()
            else:
                broker.stop()
            time.sleep(t["down"])
            took: dict[str, float] = {}
            starter = threading.Thread(target=lambda: took.update(start=broker.start()), daemon=True)
            starter.start()
            back = await_leaders(env.bootstrap, system.topics["log"], timeout=180)
            outage = time.monotonic() - began
            load.mark("broker-back")
            starter.join(timeout=180)
            start_took = took.get("start", float("nan"))
            # Recovery first (bounded), then the load runs on for `after`.
            deadline = time.monotonic() + RECOVERY_S
            while "broker-back" not in load.stats.first_ack_after and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(t["after"])
        finally:
            load.stop()
            # Whatever happened, the next fault (and this cleanup) needs the broker.
            broker.start()
        stats = load.stats
        recovered = stats.first_ack_after.get("broker-back")
        if stats.acked == acked_before or recovered is None:
            problems.append("nothing was acknowledged after the broker came back")
        elif recovered > RECOVERY_S:
            problems.append(f"intake took {recovered:.1f}s to acknowledge again once the broker answered")
        if stats.refused_503 == 0:
            problems.append("no 503 while the broker was away: the fault did not bite")
        result = _judge(system, env, load, problems)
        result["detail"] = (
            f"outage {outage:.0f}s (kafka.sh start {start_took:.0f}s, leaders after {back:.0f}s); "
            f"intake acked again {recovered if recovered is None else round(recovered, 1)}s after the broker answered; "
            + result["detail"]
        )
    return {"fault": name, **result}


def await_leaders(bootstrap: str, topic: str, timeout: float) -> float:
    """Wait until every partition of `topic` has a leader; the seconds it took.

    Each attempt uses a new client, so no reconnect backoff of ours delays
    the moment the broker is seen answering again.
    """
    from confluent_kafka.admin import AdminClient

    began = time.monotonic()
    while True:
        try:
            admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
            metadata = admin.list_topics(topic, timeout=1)
            partitions = metadata.topics[topic].partitions
            if partitions and all(p.leader >= 0 and p.error is None for p in partitions.values()):
                return time.monotonic() - began
        except Exception:  # KafkaException while the broker is away; keep asking
            pass
        if time.monotonic() - began > timeout:
            raise RuntimeError(f"{topic} had no leaders within {timeout:.0f} s of the broker starting")
        time.sleep(0.1)


def _judge(system: Any, env: FaultEnv, load: Load, problems: list[str]) -> dict[str, Any]:
    stats = load.stats
    if stats.hangs:
        problems.append(f"{stats.hangs} answers slower than intake's timeouts + {MARGIN_S}s")
    if stats.other_5xx:
        problems.append(f"{stats.other_5xx} 5xx answers other than 503")
    if stats.no_retry_after:
        problems.append(f"{stats.no_retry_after} 503s without Retry-After")
    if stats.unanswered:
        problems.append(f"{stats.unanswered} requests got no HTTP answer")
    verdict, report = verify(system, env)
    if verdict != "equal":
        problems.append(f"replay --verify: {report}")
    facts = log_facts(replayed_records(system, env))
    lost = [event_id for event_id in stats.acked_events if event_id not in facts.events]
    if lost:
        problems.append(f"{len(lost)} acknowledged events not on the log (e.g. {lost[0]})")
    if facts.applied_twice:
        problems.append(f"{facts.applied_twice} event ids applied more than once")
    latency = ", ".join(f"{k} {v:.1f}s" for k, v in sorted(stats.max_latency.items()))
    codes = ", ".join(f"{k} {v}" for k, v in sorted(stats.codes_503.items()))
    other = ", ".join(f"{k} {v}" for k, v in sorted(stats.other.items()))
    detail = f"max latency {latency}; 503s: {codes or 'none'}; duplicates folded {facts.duplicates}"
    if other:
        detail += f"; other answers: {other}"
    if problems:
        detail += "; FAILED: " + "; ".join(problems + stats.samples)
    return {
        "sent": stats.sent,
        "acked": stats.acked,
        "refused_503": stats.refused_503,
        "lost": len(lost),
        "applied_twice": facts.applied_twice,
        "verify": verdict,
        "ok": not problems,
        "detail": detail,
        "_facts": facts,
        "_problems": problems,
    }


def broker_stop(env: FaultEnv) -> dict[str, Any]:
    """The broker stopped cleanly for 20 s (a few in short mode) under mixed HTTP load."""
    result = _broker_fault(env, "broker-stop", kill=False)
    return _public(result)


def broker_kill(env: FaultEnv) -> dict[str, Any]:
    """The broker SIGKILLed under the same load, restarted after the same pause."""
    result = _broker_fault(env, "broker-kill", kill=True)
    return _public(result)


def intake_kill(env: FaultEnv) -> dict[str, Any]:
    """intake SIGKILLed under mixed HTTP and ingress load, restarted: nothing acknowledged is lost."""
    full = env.mode == "full"
    rounds = 4 if full else 1
    kills = 0
    between = 10.0 if full else 3.0
    problems: list[str] = []
    # Static membership: the restarted intake takes its ingress partitions
    # back at once instead of after the old member's session timeout.
    with _system(env, ["--ingress-instance-id=chaos-intake-0"]) as system:
        load = Load(system, threads_per_kind=2 if full else 1)
        load.prepare()
        ingress = IngressLoad(system, burst=1000, interval=2.0)
        at_kill: dict[tuple[int, int], str] = {}
        restarts: list[float] = []
        mid_batch = 0
        try:
            load.start()
            ingress.start()
            for n in range(rounds):
                time.sleep(between * random.uniform(0.5, 1.5))
                if n % 2 == 0:
                    # While intake appends an ingress batch it has not
                    # committed yet: what re-delivery exists for.
                    mid_batch += _kill_mid_batch(system, ingress)
                    kills += 2
                else:
                    system.kill("intake")  # wherever it is
                    kills += 1
                # What the group had committed when intake died must be on the log.
                at_kill.update(ingress.committed_records(ingress.committed()))
                began = time.monotonic()
                system.restart("intake")
                restarts.append(time.monotonic() - began)
            time.sleep(between)
        finally:
            ingress.stop()
            load.stop()
        committed = ingress.await_drained(timeout=90)
        result = _judge(system, env, load, [])
        # Requests in flight when intake died get no answer: expected here.
        problems = [p for p in result.pop("_problems") if "no HTTP answer" not in p]
        facts: LogFacts = result.pop("_facts")
        by_instance: dict[str, list[dict[str, Any]]] = {}
        for entries in facts.events.values():
            for entry in entries:
                if entry.get("event") == "ActionProposed":
                    by_instance.setdefault(entry["instance_id"], []).append(entry)
        for entries in by_instance.values():
            entries.sort(key=lambda e: e["seq"])
        final = ingress.committed_records(committed)
        missing = [inst for inst in final.values() if not _applied(by_instance.get(inst, []))]
        missing_at_kill = [inst for inst in at_kill.values() if not _applied(by_instance.get(inst, []))]
        redelivered = 0
        bad_redelivery: list[str] = []
        for inst in final.values():
            entries = by_instance.get(inst, [])
            if len(entries) > 1:
                redelivered += len(entries) - 1
                first, rest = entries[0], entries[1:]
                if first["outcome"].get("kind") != "APPLIED" or any(
                    e["outcome"].get("code") != "Duplicate" or e["event_id"] != first["event_id"] for e in rest
                ):
                    bad_redelivery.append(inst)
        if missing:
            problems.append(f"{len(missing)} committed ingress records not applied on the log")
        if missing_at_kill:
            problems.append(f"{len(missing_at_kill)} records committed before a kill not applied on the log")
        if bad_redelivery:
            problems.append(f"{len(bad_redelivery)} re-delivered ingress records not folded as Duplicate")
        if mid_batch and not redelivered:
            problems.append("a kill inside an ingress batch re-delivered nothing: re-delivery went untested")
        if ingress.failed:
            problems.append(f"{ingress.failed} ingress records could not be produced")
        if load.stats.acked == 0:
            problems.append("no HTTP request was acknowledged")
        detail = result["detail"].split("; FAILED:")[0]
        detail = (
            f"{kills} kills ({mid_batch} mid-batch), restart to ready max {max(restarts):.1f}s; HTTP sent {load.stats.sent} "
            f"acked {load.stats.acked} unanswered {load.stats.unanswered}; ingress produced {len(ingress.delivered)} "
            f"committed {len(final)}, re-delivered {redelivered}; " + detail
        )
        if problems:
            detail += "; FAILED: " + "; ".join(problems)
        result.update(
            fault="intake-kill",
            sent=load.stats.sent + len(ingress.delivered),
            acked=load.stats.acked + len(final),
            lost=result["lost"] + len(missing),
            ok=not problems,
            detail=detail,
        )
    return result


def _kill_mid_batch(system: Any, ingress: IngressLoad, timeout: float = 10.0) -> int:
    """Kill intake, let a backlog build, restart it and SIGKILL it at its first ingress append.

    Intake logs each append as it is acknowledged and commits a batch's
    offsets only after its last one; with a backlog its batches are full,
    so the first `appended` line of the restarted intake falls inside the
    window a crash re-delivers. Two kills; returns 1 if the second one
    came at an append (0 if none was seen within `timeout`).
    """
    system.kill("intake")
    ingress.burst_delivered.clear()
    ingress.burst_delivered.wait(timeout=timeout)
    log = system.logs["intake"]
    start = log.stat().st_size
    system.restart("intake", wait=False)
    seen = 0
    with log.open("rb") as handle:
        handle.seek(start)
        deadline = time.monotonic() + timeout
        tail = b""
        while time.monotonic() < deadline:
            chunk = handle.read()
            if not chunk:
                time.sleep(0.002)
                continue
            tail = (tail + chunk)[-8192:]
            if b"submitted_by=kafka:" in tail:
                seen = 1
                break
    system.kill("intake")
    return seen


def _applied(entries: list[dict[str, Any]]) -> bool:
    return any(e["outcome"].get("kind") == "APPLIED" for e in entries)


def _public(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if not k.startswith("_")}


FAULTS: list[tuple[str, Callable[[FaultEnv], dict]]] = [
    ("broker-stop", broker_stop),
    ("broker-kill", broker_kill),
    ("intake-kill", intake_kill),
]
