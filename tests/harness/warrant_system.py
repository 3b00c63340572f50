"""A running Warrant system for Python tests: fresh topics, intake and the projector.

Used by the Python SDK's tests and by every other Python test that needs the
real binaries. It depends on the standard library, ``confluent_kafka`` and
``PyYAML`` only (never on pytest), so any test runner can import it::

    sys.path.insert(0, str(REPO / "tests" / "harness"))
    from warrant_system import running_system, binaries_missing

    with running_system(tmp_path) as system:
        ...  # system.intake_url, system.tokens["agent:sdk"]["service"], system.decide(...)

``running_system`` creates uniquely named topics on ``WARRANT_TEST_BROKERS``
(default ``127.0.0.1:9092``) with the configuration intake itself creates
them with, writes the ruleset and principals files into ``workdir``, starts
``warrant-projector`` and ``warrant-intake`` on free ports (binaries from
``WARRANT_BIN_DIR``, else ``$CARGO_TARGET_DIR/debug``, else the repository's
``target/debug``), waits until both answer ``/readyz`` with 200, and on exit
kills both and deletes the topics (``WARRANT_TEST_KEEP_TOPICS=1`` keeps
them). When the body raised, the last 60 lines of each service's log are
printed to stderr. ``System.kill`` and ``System.restart`` stop one service
(SIGKILL by default) and start it again with the same flags, for the fault
tests in ``tests/chaos``.

The default principals and ruleset are ``DEFAULT_PRINCIPALS_YAML`` and
``DEFAULT_RULESET_YAML`` below; a test may pass its own text for either.
Whatever principals file is used, ``System.tokens`` and
``System.reviewer_secrets`` are read back from it.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Iterator, Mapping, Sequence

import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]

READY_TIMEOUT_S = 60.0
LOG_TAIL_LINES = 60

# Example secrets for throwaway test systems only.
DEFAULT_PRINCIPALS_YAML = """\
# Test principals (throwaway secrets). agent:sdk and gateway:mcp each hold
# a service token (to propose) and an executor token (to claim and report).
tokens:
  - principal: "agent:sdk"
    kind: service
    token: "test-agent-sdk-service-token-0001"
  - principal: "agent:sdk"
    kind: executor
    token: "test-agent-sdk-executor-token-0001"
  - principal: "gateway:mcp"
    kind: service
    token: "test-gateway-mcp-service-token-0001"
  - principal: "gateway:mcp"
    kind: executor
    token: "test-gateway-mcp-executor-token-0001"
  - principal: "policy:opa"
    kind: policy
    source: opa
    token: "test-policy-opa-token-0001"

reviewers:
  - principal: alice
    roles: [sre]
    secrets: ["test-alice-secret-0001"]
  - principal: bob
    roles: [sre]
    secrets: ["test-bob-secret-0001"]
  - principal: carol
    roles: [security]
    secrets: ["test-carol-secret-0001"]

ingress:
  proposals:
    principal: "agent:kafka"
  signals:
    source: opa
"""

# How long the `shortlived/` rule lets an instance wait for a decision.
SHORTLIVED_DECISION_TIMEOUT_MS = 3000

DEFAULT_RULESET_YAML = f"""\
# Test ruleset. First match wins; the catch-all comes last.
version: "test-harness-1"
rules:
  # One SRE restarts staging.
  - id: staging-restarts
    match: {{ kind: "deploy.restart", target: "staging/" }}
    approvals_required: 1
    approver_roles: [sre]
    override_roles: [security]
    decision_timeout_ms: 600000
    grant_ttl_ms: 600000
    max_executions: 1

  # Like staging, but the decision must come within a few seconds.
  - id: shortlived-restarts
    match: {{ kind: "deploy.restart", target: "shortlived/" }}
    approvals_required: 1
    approver_roles: [sre]
    override_roles: [security]
    decision_timeout_ms: {SHORTLIVED_DECISION_TIMEOUT_MS}
    grant_ttl_ms: 600000
    max_executions: 1

  # Tool calls through the MCP gateway: two SREs.
  - id: mcp-demo-tools
    match: {{ kind: "mcp.tool", target: "demo/" }}
    approvals_required: 2
    approver_roles: [sre]
    override_roles: [security]
    decision_timeout_ms: 600000
    grant_ttl_ms: 600000
    max_executions: 1

  # Authorized by the rule itself when OPA allows; otherwise one SRE.
  - id: policy-flush
    match: {{ kind: "cache.flush" }}
    approvals_required: 1
    approver_roles: [sre]
    override_roles: [security]
    required_signals: [opa]
    review: unless_all_signals_allow
    decision_timeout_ms: 600000
    grant_ttl_ms: 600000
    max_executions: 3

  # Anything else: one SRE.
  - id: everything-else
    approvals_required: 1
    approver_roles: [sre]
    override_roles: [security]
    decision_timeout_ms: 600000
    grant_ttl_ms: 600000
"""

BINARIES = ("warrant-intake", "warrant-projector", "warrant-replay")


class HarnessError(RuntimeError):
    """The system did not start, or a call the harness made was refused."""


class HttpError(HarnessError):
    """A non-2xx answer: ``status`` and the decoded ``body`` (or its text)."""

    def __init__(self, method: str, url: str, status: int, body: Any) -> None:
        super().__init__(f"{method} {url} -> {status}: {body}")
        self.status = status
        self.body = body


def brokers() -> str:
    return os.environ.get("WARRANT_TEST_BROKERS", "127.0.0.1:9092")


def bin_dir() -> pathlib.Path:
    explicit = os.environ.get("WARRANT_BIN_DIR")
    if explicit:
        return pathlib.Path(explicit)
    target = os.environ.get("CARGO_TARGET_DIR")
    if target:
        return pathlib.Path(target) / "debug"
    return REPO / "target" / "debug"


def binaries_missing() -> str | None:
    """Why the system cannot run here (which binary is missing), or None."""
    directory = bin_dir()
    missing = [name for name in BINARIES if not (directory / name).is_file()]
    if not missing:
        return None
    return (
        f"Warrant binaries not built: {', '.join(missing)} missing in {directory} "
        "(build them with cargo, or point WARRANT_BIN_DIR at a directory holding them)"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def hmac_signature(secret: str, timestamp: str, body: bytes) -> str:
    """The webhook's ``X-Warrant-Signature`` value for one secret."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def http_json(
    method: str,
    url: str,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 35.0,
) -> tuple[int, Any]:
    """One request; (status, decoded JSON or text). Status 0 if nothing answered."""
    request = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return 0, None
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode("utf-8", "replace")


def _checked(method: str, url: str, body: bytes | None, headers: Mapping[str, str]) -> Any:
    status, decoded = http_json(method, url, body, headers)
    if not 200 <= status < 300:
        raise HttpError(method, url, status, decoded)
    return decoded


def _tail(path: pathlib.Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"({path} unreadable)"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class System:
    """One running intake + projector on their own topics."""

    workdir: pathlib.Path
    intake_url: str
    projector_url: str
    brokers: str
    topics: dict[str, str]
    tokens: dict[str, Any]
    reviewer_secrets: dict[str, str]
    ruleset_path: pathlib.Path
    principals_path: pathlib.Path
    logs: dict[str, pathlib.Path] = field(default_factory=dict)
    # The running services and the command line each was started with, so
    # a fault test can kill one and start it again (`kill`, `restart`).
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, repr=False)
    commands: dict[str, list[str]] = field(default_factory=dict, repr=False)

    # -- processes --------------------------------------------------------

    def kill(self, name: str, sig: int = signal.SIGKILL) -> int:
        """Send `sig` (default SIGKILL) to `name` ("intake" or "projector"); its exit status."""
        process = self.processes[name]
        if process.poll() is None:
            process.send_signal(sig)
        return process.wait(timeout=30)

    def restart(self, name: str, wait: bool = True) -> None:
        """Start `name` again with its original command line; with `wait`, return once `/readyz` is 200.

        Its log is appended to, so the lines before the restart stay readable.
        """
        process = self.processes.get(name)
        if process is not None and process.poll() is None:
            raise HarnessError(f"{name} is still running (pid {process.pid}); kill it first")
        self.processes[name] = _spawn(self.commands[name], self.logs[name], append=True)
        if wait:
            _await_ready(self, {name: self.processes[name]})

    # -- writes -----------------------------------------------------------

    def decide(
        self,
        instance_id: str,
        reviewer: str,
        verdict: str = "APPROVE",
        justification: str = "ok",
        scope: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Post a decision on the HMAC-signed webhook as `reviewer`; the 202 body."""
        secret = self.reviewer_secrets[reviewer]
        document: dict[str, Any] = {
            "instance_id": instance_id,
            "verdict": verdict,
            "justification": justification,
        }
        if scope is not None:
            document["scope"] = dict(scope)
        # Sign exactly the bytes sent, never a re-serialisation.
        body = json.dumps(document).encode()
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "X-Warrant-Timestamp": timestamp,
            "X-Warrant-Signature": hmac_signature(secret, timestamp, body),
            "X-Warrant-Reviewer": reviewer,
        }
        url = f"{self.intake_url}/v1/instances/{instance_id}/decisions"
        return dict(_checked("POST", url, body, headers))

    def signal(
        self,
        instance_id: str,
        verdict: str,
        reasons: list[str] | None = None,
        policy_ref: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """Report a policy signal with the policy token (source `opa`); the 202 body."""
        document = {
            "verdict": verdict,
            "reasons": list(reasons or []),
            "policy_ref": dict(policy_ref or {"id": "harness", "version": "1"}),
        }
        headers = {
            "Content-Type": "application/json",
            "Authorization": f"Bearer {self.tokens['policy']}",
        }
        url = f"{self.intake_url}/v1/instances/{instance_id}/signals"
        return dict(_checked("POST", url, json.dumps(document).encode(), headers))

    # -- reads ------------------------------------------------------------

    def record(self, instance_id: str) -> dict[str, Any]:
        """The projector's execution record; raises HttpError (404) if unknown."""
        return dict(_checked("GET", f"{self.projector_url}/v1/instances/{instance_id}", None, {}))

    def await_record(
        self,
        instance_id: str,
        until: Callable[[dict[str, Any]], bool] | Collection[str],
        timeout: float = 20.0,
    ) -> dict[str, Any]:
        """Poll the projector until the record satisfies `until` (a predicate or statuses)."""
        check: Callable[[dict[str, Any]], bool]
        if callable(until):
            check = until
        else:
            statuses = set(until)
            check = lambda record: record.get("status") in statuses  # noqa: E731
        deadline = time.monotonic() + timeout
        last: Any = None
        while True:
            status, last = http_json("GET", f"{self.projector_url}/v1/instances/{instance_id}")
            if status == 200 and check(last):
                return dict(last)
            if time.monotonic() > deadline:
                raise HarnessError(f"timed out waiting for {instance_id}; last record: {last}")
            time.sleep(0.05)

    def log_end_total(self) -> int:
        """The sum of the log topic's high watermarks."""
        from confluent_kafka import Consumer, TopicPartition

        consumer = Consumer(
            {"bootstrap.servers": self.brokers, "group.id": f"{self.topics['log']}-watermarks"}
        )
        try:
            metadata = consumer.list_topics(self.topics["log"], timeout=10)
            partitions = metadata.topics[self.topics["log"]].partitions
            return sum(
                consumer.get_watermark_offsets(TopicPartition(self.topics["log"], p), timeout=10)[1]
                for p in partitions
            )
        finally:
            consumer.close()

    def log_events(self, instance_id: str | None = None, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Every envelope on the log (of one instance, if given), decoded with fastavro.

        Facts the execution record leaves out (a report's ``detail``, a
        proposal's exact body) are on the log; this reads them the way
        another team would, with nothing but ``schemas/envelope.avsc``.
        Each item is the envelope (``body`` as ``(record name, fields)``)
        plus ``_partition`` and ``_offset``.
        """
        import io

        import fastavro
        from confluent_kafka import Consumer, TopicPartition

        schema = fastavro.parse_schema(json.loads((REPO / "schemas" / "envelope.avsc").read_text()))
        log = self.topics["log"]
        consumer = Consumer(
            {
                "bootstrap.servers": self.brokers,
                "group.id": f"{log}-reader",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
            }
        )
        events: list[dict[str, Any]] = []
        try:
            partitions = consumer.list_topics(log, timeout=10).topics[log].partitions
            ends = {}
            assignment = []
            for p in partitions:
                low, high = consumer.get_watermark_offsets(TopicPartition(log, p), timeout=10)
                if high > low:
                    ends[p] = high
                    assignment.append(TopicPartition(log, p, low))
            consumer.assign(assignment)
            done = {p: False for p in ends}
            deadline = time.monotonic() + timeout
            while not all(done.values()):
                if time.monotonic() > deadline:
                    raise HarnessError(f"timed out reading {log}")
                message = consumer.poll(0.2)
                if message is None or message.error() is not None:
                    continue
                partition, offset = message.partition(), message.offset()
                if offset + 1 >= ends[partition]:
                    done[partition] = True
                value = message.value() or b""
                if value[:2] != b"\xc3\x01":
                    continue  # not an envelope (the fold quarantines such records)
                # Union branches come back as (record name, fields), so a
                # body says which event it is: ("warrant.ExecutionReported", {...}).
                envelope = fastavro.schemaless_reader(
                    io.BytesIO(value[10:]), schema, return_record_name=True
                )
                if instance_id is None or str(envelope.get("instance_id")) == instance_id:
                    envelope["_partition"], envelope["_offset"] = partition, offset
                    events.append(envelope)
        finally:
            consumer.close()
        events.sort(key=lambda e: (e["_partition"], e["_offset"]))
        return events

    def replay_verify(self, timeout: float = 30.0) -> str:
        """Once the projector folded the whole log, `warrant-replay --verify` it; the report."""
        end = self.log_end_total()
        deadline = time.monotonic() + timeout
        while True:
            status, checkpoint = http_json("GET", f"{self.projector_url}/v1/checkpoint")
            folded = (
                sum(int(v) for v in checkpoint.get("partitions", {}).values())
                if status == 200 and isinstance(checkpoint, dict)
                else -1
            )
            if folded == end:
                break
            if time.monotonic() > deadline:
                raise HarnessError(f"the projector folded {folded} of {end} log records")
            time.sleep(0.1)
        completed = subprocess.run(
            [
                str(bin_dir() / "warrant-replay"),
                f"--brokers={self.brokers}",
                f"--log-topic={self.topics['log']}",
                # Where replay finds which key was whose when each decision was signed.
                f"--principals-topic={self.topics['principals']}",
                "--quiet",
                "--verify",
                self.projector_url,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        report = completed.stdout + completed.stderr
        if completed.returncode != 0:
            raise HarnessError(f"replay --verify exited {completed.returncode}: {report}")
        return report


def _topic_names() -> dict[str, str]:
    run = uuid.uuid4().hex[:12]
    return {
        "log": f"test-{run}-log",
        "proposals": f"test-{run}-proposals",
        "signals": f"test-{run}-signals",
        "dead_letters": f"test-{run}-dead-letter",
        "rulesets": f"test-{run}-rulesets",
        "principals": f"test-{run}-principals",
    }


def create_topics(broker_list: str, topics: Mapping[str, str], log_partitions: int = 3) -> None:
    """Create the six topics with the configuration intake's own topic creation uses."""
    from confluent_kafka.admin import AdminClient, NewTopic

    # The log and dead letters must never age out; the two directories are
    # keyed by digest and compacted.
    specs = [
        NewTopic(topics["log"], log_partitions, 1, config={"retention.ms": "-1"}),
        NewTopic(topics["proposals"], 3, 1),
        NewTopic(topics["signals"], 3, 1),
        NewTopic(topics["dead_letters"], 1, 1, config={"retention.ms": "-1"}),
        NewTopic(topics["rulesets"], 1, 1, config={"cleanup.policy": "compact"}),
        NewTopic(topics["principals"], 1, 1, config={"cleanup.policy": "compact"}),
    ]
    admin = AdminClient({"bootstrap.servers": broker_list})
    for topic, future in admin.create_topics(specs, operation_timeout=30).items():
        try:
            future.result(timeout=60)
        except Exception as error:  # confluent_kafka raises KafkaException wrapping the code
            raise HarnessError(f"could not create topic {topic} on {broker_list}: {error}") from error


def delete_topics(broker_list: str, topics: Collection[str]) -> None:
    """Delete topics this harness created; failures are reported, never raised."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": broker_list})
    for topic, future in admin.delete_topics(list(topics), operation_timeout=30).items():
        try:
            future.result(timeout=60)
        except Exception as error:  # cleanup must not hide the test's own outcome
            print(f"warrant_system: could not delete topic {topic}: {error}", file=sys.stderr)


def _tokens_from(principals: Any) -> tuple[dict[str, Any], dict[str, str]]:
    tokens: dict[str, Any] = {}
    for entry in principals.get("tokens") or []:
        token = entry.get("token")
        if token is None:
            continue  # a token_sha256 entry: nothing usable to hand to a test
        if entry.get("kind") == "policy":
            tokens.setdefault("policy", token)
        tokens.setdefault(entry["principal"], {})[entry["kind"]] = token
    # A reviewer may hold only Ed25519 keys (docs/signatures.md): no secret to hand out.
    secrets = {
        entry["principal"]: entry["secrets"][0]
        for entry in principals.get("reviewers") or []
        if entry.get("secrets")
    }
    return tokens, secrets


def _spawn(args: list[str], log: pathlib.Path, append: bool = False) -> subprocess.Popen[bytes]:
    with log.open("ab" if append else "wb") as handle:
        return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=handle)


@contextlib.contextmanager
def running_system(
    workdir: pathlib.Path,
    *,
    ruleset_yaml: str | None = None,
    principals_yaml: str | None = None,
    sweeper: bool = True,
    intake_args: Sequence[str] = (),
) -> Iterator[System]:
    """Start a fresh Warrant (topics, projector, intake) and stop it on exit.

    `intake_args` are extra flags for warrant-intake (e.g. its timeouts).
    """
    reason = binaries_missing()
    if reason is not None:
        raise HarnessError(reason)
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    broker_list = brokers()
    topics = _topic_names()

    ruleset_path = workdir / "ruleset.yaml"
    principals_path = workdir / "principals.yaml"
    principals_text = principals_yaml if principals_yaml is not None else DEFAULT_PRINCIPALS_YAML
    ruleset_path.write_text(ruleset_yaml if ruleset_yaml is not None else DEFAULT_RULESET_YAML)
    principals_path.write_text(principals_text)
    tokens, secrets = _tokens_from(yaml.safe_load(principals_text))

    create_topics(broker_list, topics)
    projector_port, intake_port = free_port(), free_port()
    system = System(
        workdir=workdir,
        intake_url=f"http://127.0.0.1:{intake_port}",
        projector_url=f"http://127.0.0.1:{projector_port}",
        brokers=broker_list,
        topics=topics,
        tokens=tokens,
        reviewer_secrets=secrets,
        ruleset_path=ruleset_path,
        principals_path=principals_path,
        logs={"projector": workdir / "projector.log", "intake": workdir / "intake.log"},
    )
    topic_flags = [
        f"--brokers={broker_list}",
        f"--log-topic={topics['log']}",
        f"--proposals-topic={topics['proposals']}",
        f"--signals-topic={topics['signals']}",
        f"--dead-letter-topic={topics['dead_letters']}",
        f"--rulesets-topic={topics['rulesets']}",
        f"--principals-topic={topics['principals']}",
    ]
    processes = system.processes
    system.commands["projector"] = [
        str(bin_dir() / "warrant-projector"),
        *topic_flags,
        f"--listen=127.0.0.1:{projector_port}",
        f"--data-dir={workdir / 'projector'}",
    ]
    system.commands["intake"] = [
        str(bin_dir() / "warrant-intake"),
        *topic_flags,
        f"--listen=127.0.0.1:{intake_port}",
        f"--projector-url={system.projector_url}",
        f"--ruleset={ruleset_path}",
        f"--principals={principals_path}",
        # Never the default group: other intakes on this broker use it.
        f"--ingress-group={topics['log']}-intake",
        "--ingress=true",
        f"--sweeper={'true' if sweeper else 'false'}",
        "--sweep-interval-ms=200",
        *intake_args,
    ]
    failed = False
    try:
        for name in ("projector", "intake"):
            processes[name] = _spawn(system.commands[name], system.logs[name])
        _await_ready(system, processes)
        yield system
    except BaseException:
        failed = True
        raise
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
        if failed:
            for name, log in system.logs.items():
                print(f"---- last lines of {name} ({log}) ----", file=sys.stderr)
                print(_tail(log), file=sys.stderr)
        if os.environ.get("WARRANT_TEST_KEEP_TOPICS") != "1":
            delete_topics(broker_list, list(topics.values()))


def _await_ready(system: System, processes: Mapping[str, subprocess.Popen[bytes]]) -> None:
    urls = {"projector": system.projector_url, "intake": system.intake_url}
    pending = {name: urls[name] for name in processes}
    deadline = time.monotonic() + READY_TIMEOUT_S
    while pending:
        for name, process in processes.items():
            if process.poll() is not None:
                raise HarnessError(
                    f"{name} exited with {process.returncode} before it was ready:\n"
                    + _tail(system.logs[name])
                )
        for name, url in list(pending.items()):
            if http_json("GET", f"{url}/readyz", timeout=2.0)[0] == 200:
                del pending[name]
        if not pending:
            return
        if time.monotonic() > deadline:
            tails = "\n".join(
                f"---- {name} ----\n{_tail(system.logs[name])}" for name in pending
            )
            raise HarnessError(
                f"not ready within {READY_TIMEOUT_S:.0f} s: {', '.join(pending)}\n{tails}"
            )
        time.sleep(0.1)
