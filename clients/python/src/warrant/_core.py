"""The client without IO: building requests, reading answers, retry and wait decisions.

`Client` and `AsyncClient` are thin transports around this module, so the
two never disagree about what a call sends or what an answer means.
"""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Generic, Mapping, TypeVar
from urllib.parse import quote

from ._canonical import action_digest
from ._errors import (
    ApiError,
    AuthenticationError,
    BadRequest,
    Conflict,
    Expired,
    InstanceExists,
    NotAuthorized,
    NotFound,
    PermissionDenied,
    Refused,
    Rejected,
    ServerError,
    Unavailable,
    WarrantError,
    Withdrawn,
)

T = TypeVar("T")

PAUSED = frozenset({"AWAITING_SIGNALS", "AWAITING_DECISION", "BLOCKED"})
FINAL = frozenset({"COMPLETED", "FAILED", "REJECTED", "EXPIRED", "WITHDRAWN"})
OUTCOMES = frozenset({"SUCCEEDED", "FAILED"})

# The wait API answers within wait_ms, which it caps at 30 s.
MAX_WAIT_MS = 30_000
# A report's detail is free text; an exception's text can be huge.
MAX_DETAIL_CHARS = 4000
USER_AGENT = "warrant-python"


# -- results -----------------------------------------------------------------


@dataclass(frozen=True)
class Proposal:
    """Intake's 202 to a proposal: where the ActionProposed landed."""

    instance_id: str
    event_id: str
    partition: int
    offset: int
    action_digest: str
    rule_id: str
    ruleset: dict[str, Any]


@dataclass(frozen=True)
class Grant:
    """Intake's 201 to a claim: the fold's grant to run the action once."""

    instance_id: str
    grant_id: str
    action_digest: str
    scope: dict[str, Any]
    not_after: int
    event_id: str
    partition: int
    offset: int


# -- requests and answers ----------------------------------------------------


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    token: str
    body: bytes | None = None
    params: dict[str, str] = field(default_factory=dict)
    idempotency_key: str | None = None
    # Extra seconds beyond the client's timeout (a long poll's own wait).
    extra_timeout: float = 0.0

    def headers(self) -> dict[str, str]:
        headers = {
            "Authorization": f"Bearer {self.token}",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        if self.body is not None:
            headers["Content-Type"] = "application/json"
        if self.idempotency_key is not None:
            headers["Idempotency-Key"] = self.idempotency_key
        return headers


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        if not self.body:
            return None
        try:
            return json.loads(self.body)
        except ValueError:
            return self.body.decode("utf-8", "replace")


@dataclass(frozen=True)
class Call(Generic[T]):
    """One logical call: its request (re-sent as is on retries) and how to read the answer."""

    request: Request
    read: Callable[[Response], T]


def new_idempotency_key() -> str:
    return f"py-{uuid.uuid4().hex}"


def _body(document: Mapping[str, Any]) -> bytes:
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _instance_path(instance_id: str, tail: str = "") -> str:
    return f"/v1/instances/{quote(instance_id, safe='')}{tail}"


def error_from(response: Response, *, attempts: int = 1) -> WarrantError:
    """The typed exception for a non-2xx answer."""
    code, message, body = _error_parts(response)
    status = response.status
    if status in RETRYABLE_STATUSES:
        return Unavailable(message, status=status, code=code, body=body, attempts=attempts)
    if status == 409 and code == "instance_exists":
        return InstanceExists(status, code, message, body)
    classes: dict[int, type[ApiError]] = {
        400: BadRequest,
        401: AuthenticationError,
        403: PermissionDenied,
        404: NotFound,
        409: Conflict,
    }
    cls = classes.get(status, ServerError if status >= 500 else ApiError)
    return cls(status, code, message, body)


def _error_parts(response: Response) -> tuple[str | None, str, Any]:
    """(code, message, decoded body) of an error answer in intake's shape, or the best guess."""
    body = response.json()
    code: str | None = None
    message = f"HTTP {response.status}"
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        raw_code = body["error"].get("code")
        code = raw_code if isinstance(raw_code, str) else None
        message = str(body["error"].get("message", message))
    elif isinstance(body, str) and body:
        message = body[:500]
    return code, message, body


def decoded(read: Callable[[Response], T]) -> Callable[[Response], T]:
    """`read`, with a 2xx body that lacks what the API promises as a typed error."""

    def guarded(response: Response) -> T:
        try:
            return read(response)
        except (KeyError, TypeError, ValueError) as problem:
            raise ServerError(
                response.status,
                "malformed_response",
                f"intake's answer lacks what the API describes: {problem!r}",
                response.json(),
            ) from problem

    return guarded


def _expect(response: Response, *statuses: int) -> Any:
    if response.status not in statuses:
        raise error_from(response)
    return response.json()


# -- the calls ---------------------------------------------------------------


def propose(
    token: str,
    action: Mapping[str, Any],
    *,
    context_refs: list[dict[str, Any]] | None,
    rationale: str | None,
    instance_id: str | None,
    proposer: dict[str, Any] | None,
    idempotency_key: str | None,
) -> Call[Proposal]:
    document: dict[str, Any] = {"action": dict(action)}
    if instance_id is not None:
        document["instance_id"] = instance_id
    if proposer is not None:
        document["proposer"] = dict(proposer)
    if context_refs is not None:
        document["context_refs"] = [dict(ref) for ref in context_refs]
    if rationale is not None:
        document["rationale"] = rationale
    # Without an instance id the key is what makes a retry name the same
    # instance; with one it is harmless, so every proposal carries one.
    request = Request(
        "POST",
        "/v1/proposals",
        token,
        _body(document),
        idempotency_key=idempotency_key or new_idempotency_key(),
    )

    def read(response: Response) -> Proposal:
        body = _expect(response, 202)
        return Proposal(
            instance_id=body["instance_id"],
            event_id=body["event_id"],
            partition=int(body["partition"]),
            offset=int(body["offset"]),
            action_digest=body["action_digest"],
            rule_id=body["rule_id"],
            ruleset=dict(body["ruleset"]),
        )

    return Call(request, decoded(read))


def get(token: str, instance_id: str, *, after_seq: int | None = None, wait_ms: int | None = None) -> Call[dict[str, Any]]:
    params: dict[str, str] = {}
    extra = 0.0
    if after_seq is not None and wait_ms is not None:
        wait_ms = max(0, min(int(wait_ms), MAX_WAIT_MS))
        params = {"after_seq": str(int(after_seq)), "wait_ms": str(wait_ms)}
        extra = wait_ms / 1000.0
    request = Request("GET", _instance_path(instance_id), token, params=params, extra_timeout=extra)

    def read(response: Response) -> dict[str, Any]:
        return dict(_expect(response, 200))

    return Call(request, decoded(read))


def claim(token: str, instance_id: str, action: Mapping[str, Any]) -> Call[Grant]:
    request = Request(
        "POST",
        _instance_path(instance_id, "/executions"),
        token,
        _body({"action_digest": action_digest(action)}),
        # A retried claim with the same key is answered with what the fold
        # made of the first attempt, so a lost 201 is never a second grant.
        idempotency_key=new_idempotency_key(),
    )

    def read(response: Response) -> Grant:
        if response.status == 409:
            code, message, body = _error_parts(response)
            raise Refused(409, code, message, body, instance_id=instance_id)
        body = _expect(response, 201)
        return Grant(
            instance_id=body["instance_id"],
            grant_id=body["grant_id"],
            action_digest=body["action_digest"],
            scope=dict(body["scope"]),
            not_after=int(body["not_after"]),
            event_id=body["event_id"],
            partition=int(body["partition"]),
            offset=int(body["offset"]),
        )

    return Call(request, decoded(read))


def report(
    token: str,
    grant: Grant | str,
    outcome: str,
    *,
    detail: str | None,
    instance_id: str | None,
    result_digest: str | None,
) -> Call[dict[str, Any]]:
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of {sorted(OUTCOMES)}, not {outcome!r}")
    if isinstance(grant, Grant):
        grant_id = grant.grant_id
        if instance_id is not None and instance_id != grant.instance_id:
            raise ValueError("instance_id does not match the grant's instance")
        instance_id = grant.instance_id
    else:
        grant_id = grant
        if instance_id is None:
            raise ValueError("instance_id is required when the grant is given by id")
    document: dict[str, Any] = {"grant_id": grant_id, "outcome": outcome}
    if detail is not None:
        document["detail"] = detail
    if result_digest is not None:
        document["result_digest"] = result_digest
    request = Request(
        "POST",
        _instance_path(instance_id, "/reports"),
        token,
        _body(document),
        idempotency_key=new_idempotency_key(),
    )
    return Call(request, decoded(lambda response: dict(_expect(response, 202))))


def withdraw(token: str, instance_id: str, reason: str | None) -> Call[dict[str, Any]]:
    document: dict[str, Any] = {} if reason is None else {"reason": reason}
    request = Request(
        "POST",
        _instance_path(instance_id, "/withdrawal"),
        token,
        _body(document),
        idempotency_key=new_idempotency_key(),
    )
    return Call(request, decoded(lambda response: dict(_expect(response, 202))))


# -- retries -----------------------------------------------------------------

RETRYABLE_STATUSES = frozenset({502, 503, 504})
# A server asking for longer than this is not worth obeying.
MAX_RETRY_AFTER_S = 60.0


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 5
    base_delay: float = 0.25
    max_delay: float = 8.0

    def delay(
        self,
        attempt: int,
        response: Response | None,
        rng: Callable[[], float] = random.random,
    ) -> float | None:
        """Seconds to sleep before attempt `attempt + 1`, or None: do not retry.

        `attempt` counts from 0; `response` is None after a connection error
        (every call the SDK makes is idempotent: writes carry an
        Idempotency-Key, so a lost answer can always be asked again).
        """
        if attempt >= self.max_retries:
            return None
        if response is not None and response.status not in RETRYABLE_STATUSES:
            return None
        backoff = min(self.max_delay, self.base_delay * (2.0**attempt))
        # Full jitter in the upper half: spread retries without collapsing to 0.
        jittered = backoff * (0.5 + 0.5 * rng())
        retry_after = _retry_after(response)
        if retry_after is not None and retry_after <= MAX_RETRY_AFTER_S:
            return retry_after + self.base_delay * rng()
        return jittered


def _retry_after(response: Response | None) -> float | None:
    if response is None:
        return None
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP date: rare enough to fall back to backoff
    return seconds if seconds >= 0 else None


# -- waiting -----------------------------------------------------------------

Until = Callable[[dict[str, Any]], bool] | Collection[str] | None


def until_predicate(until: Until) -> Callable[[dict[str, Any]], bool]:
    if until is None:
        return lambda record: record.get("status") is not None and record["status"] not in PAUSED
    if callable(until):
        predicate: Callable[[dict[str, Any]], bool] = until
        return predicate
    if isinstance(until, str):
        statuses = frozenset({until})
    else:
        statuses = frozenset(until)
    return lambda record: record.get("status") in statuses


class WaitPlan:
    """The state of one `wait`: which request to send next, and what an answer means.

    Time is passed in (monotonic seconds), so the plan itself never reads a clock.
    """

    # When an intake without the wait API answers at once, poll at this pace.
    MIN_POLL_S = 0.05
    MAX_POLL_S = 1.0

    def __init__(self, token: str, instance_id: str, until: Until, timeout: float, after_seq: int, now: float) -> None:
        self.token = token
        self.instance_id = instance_id
        self.check = until_predicate(until)
        self.timeout = timeout
        self.deadline = now + timeout
        self.after_seq = after_seq
        self.record: dict[str, Any] | None = None
        self._poll = self.MIN_POLL_S
        self._sent_at = now
        self._wait_ms = 0

    def next_call(self, now: float) -> Call[Response] | None:
        """The next long poll, or None when the timeout has passed."""
        remaining = self.deadline - now
        if remaining <= 0:
            return None
        self._wait_ms = max(1, min(MAX_WAIT_MS, int(remaining * 1000)))
        self._sent_at = now
        call = get(self.token, self.instance_id, after_seq=self.after_seq, wait_ms=self._wait_ms)
        return Call(call.request, lambda response: response)

    def observe(self, response: Response, now: float) -> tuple[bool, float]:
        """(done, seconds to sleep before the next poll)."""
        if response.status == 404:
            # Not in the view yet: a waiter may start right after proposing.
            return False, self._backoff(now)
        record = decoded(lambda answer: dict(_expect(answer, 200)))(response)
        self.record = record
        if self.check(record):
            return True, 0.0
        history = record.get("history") or []
        if len(history) > self.after_seq:
            self.after_seq = len(history)
            self._poll = self.MIN_POLL_S
            return False, 0.0
        return False, self._backoff(now)

    def _backoff(self, now: float) -> float:
        # A long poll that came back well before wait_ms with nothing new
        # was not a long poll (an older intake): pace the loop instead.
        if now - self._sent_at >= 0.9 * self._wait_ms / 1000.0:
            return 0.0
        delay = self._poll
        self._poll = min(self.MAX_POLL_S, self._poll * 2)
        return min(delay, max(0.0, self.deadline - now))


# -- the guard's decisions ---------------------------------------------------

RUNNABLE = frozenset({"AUTHORIZED", "EXECUTING"})


def refusal_for(instance_id: str, record: dict[str, Any]) -> NotAuthorized | None:
    """None when the record allows a claim; otherwise the exception to raise."""
    status = record.get("status")
    if status in RUNNABLE:
        return None
    if status == "REJECTED":
        return Rejected(instance_id, status, record)
    if status == "EXPIRED":
        return Expired(instance_id, status, record, code="Expired")
    if status == "WITHDRAWN":
        return Withdrawn(instance_id, status, record)
    return NotAuthorized(instance_id, status, record, code=_last_refusal(record))


def _last_refusal(record: dict[str, Any]) -> str | None:
    for entry in reversed(record.get("history") or []):
        outcome = entry.get("outcome") or {}
        if outcome.get("kind") == "REFUSED":
            return outcome.get("code")
    return None


def failure_detail(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}"
    if len(text) > MAX_DETAIL_CHARS:
        text = text[: MAX_DETAIL_CHARS - 1] + "…"
    return text


def note(error: BaseException, text: str) -> None:
    """Attach `text` to `error` (PEP 678 notes where the runtime has them)."""
    add_note = getattr(error, "add_note", None)
    if callable(add_note):
        add_note(text)
