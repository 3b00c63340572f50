"""Fixtures: one running Warrant system (intake + projector on fresh topics) per test session.

The system comes from the shared harness tests/harness/warrant_system.py.
Tests that need it are skipped, with the reason, only when the binaries are
not built; a broker that does not answer is a failure, never a skip.
"""

from __future__ import annotations

import pathlib
import sys
import threading
import uuid
from typing import Any, Callable, Iterator

import pytest

REPO = pathlib.Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "tests" / "harness"))

import warrant_system  # noqa: E402

from warrant import AsyncClient, Client  # noqa: E402

AGENT = "agent:sdk"


@pytest.fixture(scope="session")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[warrant_system.System]:
    reason = warrant_system.binaries_missing()
    if reason is not None:
        pytest.skip(reason)
    with warrant_system.running_system(tmp_path_factory.mktemp("warrant")) as running:
        yield running


@pytest.fixture()
def client(system: warrant_system.System) -> Iterator[Client]:
    tokens = system.tokens[AGENT]
    with Client(system.intake_url, tokens["service"], executor_token=tokens["executor"]) as c:
        yield c


@pytest.fixture()
def aclient(system: warrant_system.System) -> AsyncClient:
    tokens = system.tokens[AGENT]
    return AsyncClient(system.intake_url, tokens["service"], executor_token=tokens["executor"])


def staging_action(**parameters: str) -> dict[str, Any]:
    """A fresh action under the staging rule (one SRE approval)."""
    return {
        "kind": "deploy.restart",
        "target": f"staging/svc-{uuid.uuid4().hex[:8]}",
        "parameters": dict(parameters),
    }


class Reviewer:
    """Decides an instance from a background thread once it awaits a decision,
    as a person on the webhook would while the guard is blocked waiting."""

    def __init__(self, system: warrant_system.System) -> None:
        self.system = system
        self.threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []
        self.decided_at: dict[str, float] = {}

    def decide_when_waiting(
        self, instance_id: str, reviewer: str = "alice", verdict: str = "APPROVE", delay: float = 0.0
    ) -> None:
        import time

        def run() -> None:
            try:
                self.system.await_record(instance_id, {"AWAITING_DECISION"}, timeout=30)
                if delay:
                    time.sleep(delay)
                self.system.decide(instance_id, reviewer, verdict)
                self.decided_at[instance_id] = time.monotonic()
            except BaseException as error:  # surfaced by join()
                self.errors.append(error)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self.threads.append(thread)

    def join(self) -> None:
        for thread in self.threads:
            thread.join(timeout=60)
        if self.errors:
            raise self.errors[0]


@pytest.fixture()
def reviewer(system: warrant_system.System) -> Iterator[Reviewer]:
    r = Reviewer(system)
    yield r
    r.join()


def report_events(system: warrant_system.System, instance_id: str) -> list[dict[str, Any]]:
    """The ExecutionReported bodies of an instance, read from the log."""
    return [
        body
        for name, body in (e["body"] for e in system.log_events(instance_id))
        if name == "warrant.ExecutionReported"
    ]


def event_names(system: warrant_system.System, instance_id: str) -> list[str]:
    return [e["body"][0].rsplit(".", 1)[-1] for e in system.log_events(instance_id)]


Predicate = Callable[[dict[str, Any]], bool]
