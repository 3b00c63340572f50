"""The asyncio client: `AsyncClient` and its `guard`, over the same core as `Client`."""

from __future__ import annotations

import asyncio
import time
from types import TracebackType
from typing import Any, Literal, Mapping, TypeVar

import httpx

from . import _core
from ._core import Call, Grant, Proposal, Response, RetryPolicy, Until
from ._errors import Unavailable, WaitTimeout, WarrantError

T = TypeVar("T")


class AsyncClient:
    """`Client`'s methods as coroutines. `async with AsyncClient(...) as client:`."""

    def __init__(
        self,
        intake_url: str,
        token: str,
        *,
        executor_token: str | None = None,
        timeout: float = 10.0,
        max_retries: int = 5,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        self.intake_url = intake_url.rstrip("/")
        self.token = token
        self.executor_token = executor_token or token
        self.timeout = timeout
        self.retry = RetryPolicy(max_retries=max_retries)
        self._owns_http = http_client is None
        self._http = http_client or httpx.AsyncClient(base_url=self.intake_url, timeout=timeout)

    async def _send(self, request: _core.Request) -> Response:
        answer = await self._http.request(
            request.method,
            self.intake_url + request.path,
            content=request.body,
            params=request.params or None,
            headers=request.headers(),
            timeout=self.timeout + request.extra_timeout,
        )
        return Response(answer.status_code, {k.lower(): v for k, v in answer.headers.items()}, answer.content)

    async def _run(self, call: Call[T]) -> T:
        attempt = 0
        while True:
            try:
                response: Response | None = await self._send(call.request)
                error: Exception | None = None
            except httpx.TransportError as failure:
                response, error = None, failure
            delay = self.retry.delay(attempt, response)
            if delay is None:
                if response is None:
                    raise Unavailable(
                        f"cannot reach intake at {self.intake_url}: {error}", attempts=attempt + 1
                    ) from error
                if response.status in _core.RETRYABLE_STATUSES:
                    raise _core.error_from(response, attempts=attempt + 1)
                return call.read(response)
            await asyncio.sleep(delay)
            attempt += 1

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def propose(
        self,
        action: dict[str, Any],
        *,
        context_refs: list[dict[str, Any]] | None = None,
        rationale: str | None = None,
        instance_id: str | None = None,
        proposer: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Proposal:
        return await self._run(
            _core.propose(
                self.token,
                action,
                context_refs=context_refs,
                rationale=rationale,
                instance_id=instance_id,
                proposer=proposer,
                idempotency_key=idempotency_key,
            )
        )

    async def get(self, instance_id: str) -> dict[str, Any]:
        return await self._run(_core.get(self.token, instance_id))

    async def wait(
        self,
        instance_id: str,
        *,
        until: Until = None,
        timeout: float = 300.0,
        after_seq: int = 0,
    ) -> dict[str, Any]:
        plan = _core.WaitPlan(self.token, instance_id, until, timeout, after_seq, time.monotonic())
        while True:
            call = plan.next_call(time.monotonic())
            if call is None:
                raise WaitTimeout(instance_id, plan.record, timeout)
            done, pause = plan.observe(await self._run(call), time.monotonic())
            if done and plan.record is not None:
                return plan.record
            if pause:
                await asyncio.sleep(pause)

    async def claim(self, instance_id: str, action: Mapping[str, Any]) -> Grant:
        return await self._run(_core.claim(self.executor_token, instance_id, action))

    async def report(
        self,
        grant: Grant | str,
        outcome: str,
        *,
        detail: str | None = None,
        instance_id: str | None = None,
        result_digest: str | None = None,
    ) -> dict[str, Any]:
        return await self._run(
            _core.report(
                self.executor_token,
                grant,
                outcome,
                detail=detail,
                instance_id=instance_id,
                result_digest=result_digest,
            )
        )

    async def withdraw(self, instance_id: str, reason: str | None = None) -> dict[str, Any]:
        return await self._run(_core.withdraw(self.token, instance_id, reason))

    def guard(
        self,
        action: dict[str, Any],
        *,
        context_refs: list[dict[str, Any]] | None = None,
        rationale: str | None = None,
        instance_id: str | None = None,
        timeout: float = 300.0,
    ) -> "AsyncGuard":
        """`async with aclient.guard(action) as grant:`; see `Client.guard`."""
        return AsyncGuard(self, action, context_refs, rationale, instance_id, timeout)


class AsyncGuard:
    """The async context manager `AsyncClient.guard` returns."""

    def __init__(
        self,
        client: AsyncClient,
        action: dict[str, Any],
        context_refs: list[dict[str, Any]] | None,
        rationale: str | None,
        instance_id: str | None,
        timeout: float,
    ) -> None:
        self._client = client
        self.action = action
        self._context_refs = context_refs
        self._rationale = rationale
        self._instance_id = instance_id
        self._timeout = timeout
        self.proposal: Proposal | None = None
        self.record: dict[str, Any] | None = None
        self.grant: Grant | None = None
        self.report: dict[str, Any] | None = None
        self.report_error: WarrantError | None = None

    async def __aenter__(self) -> Grant:
        started = time.monotonic()
        self.proposal = await self._client.propose(
            self.action,
            context_refs=self._context_refs,
            rationale=self._rationale,
            instance_id=self._instance_id,
        )
        remaining = max(0.0, self._timeout - (time.monotonic() - started))
        self.record = await self._client.wait(self.proposal.instance_id, timeout=remaining)
        refusal = _core.refusal_for(self.proposal.instance_id, self.record)
        if refusal is not None:
            raise refusal
        self.grant = await self._client.claim(self.proposal.instance_id, self.action)
        return self.grant

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> Literal[False]:
        assert self.grant is not None  # __aexit__ runs only after __aenter__ returned it
        if exc is None:
            self.report = await self._client.report(self.grant, "SUCCEEDED")
            return False
        try:
            self.report = await self._client.report(
                self.grant, "FAILED", detail=_core.failure_detail(exc)
            )
        except WarrantError as failure:
            self.report_error = failure
            _core.note(exc, f"warrant: reporting FAILED for grant {self.grant.grant_id} failed: {failure}")
        return False
