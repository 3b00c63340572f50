"""Retries, idempotency keys, error mapping and wait pacing, against httpx.MockTransport.

No Warrant system needed: the transport plays intake.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Callable

import httpx
import pytest

import warrant
from warrant import (
    AsyncClient,
    BadRequest,
    Client,
    InstanceExists,
    NotFound,
    Refused,
    Unavailable,
    WaitTimeout,
    action_digest,
)
from warrant import _async, _sync

INSTANCE = "0b0c7c1e-6a2f-4d8e-9b1a-3c4d5e6f7a80"
ACTION = {"kind": "deploy.restart", "target": "staging/api", "parameters": {}}
ACCEPTED = {
    "instance_id": INSTANCE,
    "event_id": "e0000000-0000-5000-8000-000000000001",
    "partition": 1,
    "offset": 7,
    "action_digest": action_digest(ACTION),
    "rule_id": "staging-restarts",
    "ruleset": {"version": "v", "digest": "d" * 64},
}


def error(status: int, code: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(
        status, json={"error": {"code": code, "message": f"{code} message"}}, headers=headers
    )


class Intake:
    """A scripted intake: answers in order, records every request."""

    def __init__(self, *answers: httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]):
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        if callable(answer):
            return answer(request)
        return answer

    def keys(self) -> list[str | None]:
        return [r.headers.get("idempotency-key") for r in self.requests]


@pytest.fixture()
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    slept: list[float] = []
    monkeypatch.setattr(_sync.time, "sleep", slept.append)

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(_async.asyncio, "sleep", fake_sleep)
    return slept


def client_for(intake: Intake, **kwargs: Any) -> Client:
    http = httpx.Client(transport=httpx.MockTransport(intake))
    return Client("http://intake.test", "svc-token", executor_token="exec-token", http_client=http, **kwargs)


def test_503_is_retried_after_retry_after_with_one_idempotency_key(sleeps):
    intake = Intake(
        error(503, "log_unavailable", {"Retry-After": "1"}),
        error(503, "log_unavailable", {"Retry-After": "1"}),
        httpx.Response(202, json=ACCEPTED),
    )
    proposal = client_for(intake).propose(ACTION)
    assert proposal == warrant.Proposal(**ACCEPTED)
    assert len(intake.requests) == 3
    keys = intake.keys()
    assert keys[0] and keys[0] == keys[1] == keys[2], "one key across the retries of one call"
    assert len(sleeps) == 2 and all(1.0 <= s <= 1.25 for s in sleeps), sleeps
    # The same bytes every time: a retry is the same request.
    assert len({r.content for r in intake.requests}) == 1
    assert json.loads(intake.requests[0].content) == {"action": ACTION}


def test_each_logical_call_gets_its_own_key(sleeps):
    intake = Intake(httpx.Response(202, json=ACCEPTED))
    client = client_for(intake)
    client.propose(ACTION)
    client.propose(ACTION)
    first, second = intake.keys()
    assert first and second and first != second


def test_a_given_idempotency_key_is_sent_as_is(sleeps):
    intake = Intake(httpx.Response(202, json=ACCEPTED))
    client_for(intake).propose(ACTION, idempotency_key="job-42")
    assert intake.keys() == ["job-42"]


def test_503_forever_gives_unavailable_after_max_retries(sleeps):
    intake = Intake(error(503, "projector_unavailable", {"Retry-After": "1"}))
    with pytest.raises(Unavailable) as raised:
        client_for(intake, max_retries=3).propose(ACTION)
    assert len(intake.requests) == 4  # the first try and three retries
    assert raised.value.status == 503
    assert raised.value.code == "projector_unavailable"
    assert raised.value.attempts == 4
    assert len(sleeps) == 3


def test_backoff_grows_with_jitter_when_there_is_no_retry_after(sleeps):
    intake = Intake(error(503, "fold_pending"))
    with pytest.raises(Unavailable):
        client_for(intake, max_retries=4).propose(ACTION)
    # base 0.25 s doubling, each in [half, full]
    for attempt, slept in enumerate(sleeps):
        full = 0.25 * 2**attempt
        assert full / 2 <= slept <= full, (attempt, slept)


def test_an_absurd_retry_after_is_not_obeyed(sleeps):
    intake = Intake(error(503, "log_unavailable", {"Retry-After": "86400"}), httpx.Response(202, json=ACCEPTED))
    client_for(intake).propose(ACTION)
    assert sleeps and sleeps[0] < 1.0


def test_connection_errors_are_retried_then_unavailable(sleeps):
    intake = Intake(httpx.ConnectError("refused"))
    with pytest.raises(Unavailable) as raised:
        client_for(intake, max_retries=2).propose(ACTION)
    assert raised.value.status is None
    assert len(intake.requests) == 3
    assert len(set(intake.keys())) == 1


def test_a_lost_answer_then_success_uses_the_same_key(sleeps):
    intake = Intake(httpx.ReadTimeout("lost"), httpx.Response(202, json=ACCEPTED))
    assert client_for(intake).propose(ACTION).event_id == ACCEPTED["event_id"]
    assert len(intake.requests) == 2 and len(set(intake.keys())) == 1


def test_409_is_never_retried_and_a_claim_refusal_is_refused(sleeps):
    intake = Intake(error(409, "DigestMismatch"))
    with pytest.raises(Refused) as raised:
        client_for(intake).claim(INSTANCE, ACTION)
    assert len(intake.requests) == 1 and not sleeps
    assert raised.value.code == "DigestMismatch"
    assert raised.value.instance_id == INSTANCE
    request = intake.requests[0]
    assert request.url.path == f"/v1/instances/{INSTANCE}/executions"
    assert request.headers["authorization"] == "Bearer exec-token"
    assert json.loads(request.content) == {"action_digest": action_digest(ACTION)}


def test_error_codes_map_to_types(sleeps):
    cases = [
        (error(400, "invalid_action"), BadRequest),
        (error(404, "unknown_instance"), NotFound),
        (error(409, "instance_exists"), InstanceExists),
        (error(500, "internal"), warrant.ServerError),
        (error(401, "invalid_token"), warrant.AuthenticationError),
        (error(403, "wrong_principal_kind"), warrant.PermissionDenied),
    ]
    for response, cls in cases:
        intake = Intake(response)
        with pytest.raises(cls) as raised:
            client_for(intake).propose(ACTION)
        assert raised.value.status == response.status_code
        assert raised.value.code == response.json()["error"]["code"]
        assert raised.value.message.endswith("message")
        assert len(intake.requests) == 1, "4xx and 500 are not retried"


def test_report_needs_an_instance_for_a_bare_grant_id_and_a_known_outcome():
    client = client_for(Intake(httpx.Response(202, json={})))
    with pytest.raises(ValueError):
        client.report("grant-id", "SUCCEEDED")
    with pytest.raises(ValueError):
        client.report("grant-id", "DONE", instance_id=INSTANCE)


def test_report_and_withdraw_bodies(sleeps):
    intake = Intake(httpx.Response(202, json={"instance_id": INSTANCE}))
    client = client_for(intake)
    client.report("g-1", "FAILED", instance_id=INSTANCE, detail="boom", result_digest="r" * 64)
    client.withdraw(INSTANCE, "not needed")
    client.withdraw(INSTANCE)
    report, withdrawal, bare = intake.requests
    assert report.url.path.endswith("/reports")
    assert report.headers["authorization"] == "Bearer exec-token"
    assert json.loads(report.content) == {
        "grant_id": "g-1",
        "outcome": "FAILED",
        "detail": "boom",
        "result_digest": "r" * 64,
    }
    assert withdrawal.headers["authorization"] == "Bearer svc-token"
    assert json.loads(withdrawal.content) == {"reason": "not needed"}
    assert json.loads(bare.content) == {}
    assert all(r.headers.get("idempotency-key") for r in intake.requests)


def record(status: str, entries: int) -> dict[str, Any]:
    return {"instance_id": INSTANCE, "status": status, "history": [{"seq": i + 1} for i in range(entries)]}


def test_wait_long_polls_with_after_seq_and_stops_when_no_longer_paused(sleeps):
    answers = [
        error(404, "unknown_instance"),
        httpx.Response(200, json=record("AWAITING_DECISION", 1)),
        httpx.Response(200, json=record("AWAITING_DECISION", 1)),
        httpx.Response(200, json=record("AUTHORIZED", 2)),
    ]
    intake = Intake(*answers)
    result = client_for(intake).wait(INSTANCE, timeout=60)
    assert result["status"] == "AUTHORIZED"
    params = [(r.url.params.get("after_seq"), r.url.params.get("wait_ms")) for r in intake.requests]
    assert [p[0] for p in params] == ["0", "0", "1", "1"]
    assert all(p[1] is not None and 0 < int(p[1]) <= 30000 for p in params)
    # The mock answers at once, which an intake with the wait API never does
    # with nothing new: the client paces itself instead of spinning.
    assert sleeps and all(0 < s <= 1.0 for s in sleeps)


def test_wait_until_statuses_and_predicate(sleeps):
    intake = Intake(httpx.Response(200, json=record("AWAITING_DECISION", 1)))
    client = client_for(intake)
    assert client.wait(INSTANCE, until={"AWAITING_DECISION"})["status"] == "AWAITING_DECISION"
    assert client.wait(INSTANCE, until=lambda r: len(r["history"]) == 1)["history"] == [{"seq": 1}]


def test_wait_times_out_with_the_last_record(monkeypatch):
    intake = Intake(httpx.Response(200, json=record("AWAITING_DECISION", 1)))
    with pytest.raises(WaitTimeout) as raised:
        client_for(intake).wait(INSTANCE, timeout=0.3)
    assert raised.value.instance_id == INSTANCE
    assert raised.value.record == record("AWAITING_DECISION", 1)
    assert raised.value.last_record is raised.value.record


def test_the_guard_sends_nothing_before_enter_and_raises_rejected_without_claiming(sleeps):
    intake = Intake(
        httpx.Response(202, json=ACCEPTED),
        httpx.Response(200, json=record("REJECTED", 2)),
    )
    client = client_for(intake)
    guard = client.guard(ACTION)
    assert intake.requests == []
    with pytest.raises(warrant.Rejected) as raised:
        with guard:
            pytest.fail("the body ran without authority")
    assert raised.value.status == "REJECTED"
    assert raised.value.instance_id == INSTANCE
    assert not any(r.url.path.endswith("/executions") for r in intake.requests)


def test_async_client_retries_the_same_way(sleeps):
    intake = Intake(error(503, "log_unavailable", {"Retry-After": "1"}), httpx.Response(202, json=ACCEPTED))

    async def run() -> warrant.Proposal:
        http = httpx.AsyncClient(transport=httpx.MockTransport(intake))
        async with AsyncClient("http://intake.test", "svc-token", http_client=http) as client:
            return await client.propose(ACTION)

    assert asyncio.run(run()).instance_id == INSTANCE
    assert len(intake.requests) == 2 and len(set(intake.keys())) == 1
    assert len(sleeps) == 1 and sleeps[0] >= 1.0


def test_a_2xx_without_the_promised_fields_is_a_typed_error(sleeps):
    intake = Intake(httpx.Response(202, json={"instance_id": INSTANCE}))
    with pytest.raises(warrant.ServerError) as raised:
        client_for(intake).propose(ACTION)
    assert raised.value.code == "malformed_response"
