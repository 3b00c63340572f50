"""Warrant in front of LangGraph tool calls.

``WarrantToolGuard`` plugs into ``langgraph.prebuilt.ToolNode`` through its
``wrap_tool_call`` / ``awrap_tool_call`` hooks: every guarded tool call is
proposed to Warrant with its exact arguments, the graph pauses with
``interrupt()`` while reviewers decide, and on resume the tool runs only if
the Warrant record authorizes exactly those arguments, under a grant claimed
for their digest, and its outcome is reported::

    from langgraph.prebuilt import ToolNode
    from warrant import Client
    from warrant.langgraph import WarrantToolGuard

    guard = WarrantToolGuard(
        Client(intake_url, service_token, executor_token=executor_token),
        kind="deploy.restart",
        target=lambda name, args: f"staging/{args['service']}",
    )
    tools = ToolNode([restart_service], **guard.hooks())

The resume value is never read as a decision: only the record in Warrant
decides. What this can and cannot prevent is in ``docs/langgraph-adapter.md``.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from langchain_core.messages import ToolMessage
from langgraph.prebuilt.tool_node import ToolCallRequest
from langgraph.types import Command, interrupt

from warrant import (
    PAUSED,
    ApiError,
    Client,
    Grant,
    Refused,
    WaitTimeout,
    WarrantError,
    action_digest,
    canonical_json,
)

__all__ = [
    "AlreadyExecuted",
    "ArgumentsChanged",
    "GuardConfigError",
    "GuardError",
    "InstanceConflict",
    "NotAuthorizedToRun",
    "ToolRefused",
    "WarrantToolGuard",
    "instance_id_for",
    "tool_action",
]

log = logging.getLogger("warrant.langgraph")


# Changing this string changes every derived instance id, so a graph resumed
# across an upgrade would propose a second instance for a call already
# proposed: it never changes.
_INSTANCE_NAMESPACE = "warrant.langgraph.instance.v1"

# A report's detail is for people reading the record; a tool's whole error
# output does not belong on the log.
_DETAIL_LIMIT = 2000

ToolResult = ToolMessage | Command[Any]
Execute = Callable[[ToolCallRequest], ToolResult]
AsyncExecute = Callable[[ToolCallRequest], Awaitable[ToolResult]]
NameOrFn = str | Callable[[str, Mapping[str, Any]], str]


# -- errors -------------------------------------------------------------------


class GuardError(WarrantError):
    """Base of the adapter's own errors; each names the instance it concerns."""

    def __init__(self, message: str, *, instance_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.instance_id = instance_id


class GuardConfigError(GuardError):
    """The graph cannot be guarded as configured (no thread id, no tool-call id)."""


class ArgumentsChanged(GuardError):
    """The arguments about to run are not the ones Warrant holds for this call.

    Raised, never turned into a tool message: it means the graph's state was
    changed after the proposal (or two different calls share an instance), and
    nothing was claimed or run.
    """

    def __init__(self, *, instance_id: str, authorized_digest: str | None, digest: str) -> None:
        super().__init__(
            f"instance {instance_id}: the tool call's arguments have digest {digest}, "
            f"but Warrant holds {authorized_digest} for this call; the tool was not run",
            instance_id=instance_id,
        )
        self.authorized_digest = authorized_digest
        self.digest = digest


class InstanceConflict(GuardError):
    """The derived instance id is held by another proposer's proposal of this action."""


class NotAuthorizedToRun(GuardError):
    """Warrant did not authorize the call; the tool did not run.

    ``status`` is the record's status (REJECTED, EXPIRED, WITHDRAWN, or the
    status when a claim was refused), ``code`` the refusal code when a claim
    was refused, ``record`` the execution record last read.
    """

    def __init__(
        self,
        message: str,
        *,
        instance_id: str,
        status: str | None,
        code: str | None = None,
        record: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message, instance_id=instance_id)
        self.status = status
        self.code = code
        self.record = dict(record) if record is not None else None


class AlreadyExecuted(NotAuthorizedToRun):
    """A grant was already issued for this call: it ran (or started) once and never runs again."""


class ToolRefused(NotAuthorizedToRun):
    """The claim was refused by the fold (``code`` is the refusal code)."""


# -- actions and instance ids ------------------------------------------------


def tool_action(kind: str, target: str, args: Mapping[str, Any]) -> dict[str, Any]:
    """The action for a tool call: each argument becomes one parameter.

    A parameter's value is the canonical JSON text of the argument, so the
    action digest binds the exact value and its type (``"5"`` and ``5`` are
    different actions).
    """
    parameters = {str(key): canonical_json(value).decode("utf-8") for key, value in args.items()}
    return {"kind": kind, "target": target, "parameters": parameters}


def instance_id_for(thread_id: str, tool_call_id: str, namespace: str = "") -> str:
    """The instance id of one tool call in one thread, formatted as a UUID version 4.

    The id must be the same every time the node runs for this call (so a
    re-run after resume lands on the instance already proposed), which a
    random id is not; and it must not be version 5, which intake derives
    itself and refuses as a chosen id. The parts are length-prefixed so no
    choice of thread and call ids produces another pair's id.
    """
    digest = hashlib.sha256()
    for part in (_INSTANCE_NAMESPACE, namespace, thread_id, tool_call_id):
        encoded = part.encode("utf-8")
        digest.update(len(encoded).to_bytes(8, "big"))
        digest.update(encoded)
    return str(uuid.UUID(bytes=digest.digest()[:16], version=4))


# -- the guard ---------------------------------------------------------------


@dataclass(frozen=True)
class _Prepared:
    """What the guard established before running the tool."""

    instance_id: str
    grant: Grant
    request: ToolCallRequest


class WarrantToolGuard:
    """A ``ToolNode`` hook that lets a tool call run only under a Warrant grant.

    ``kind`` and ``target`` name the action: a string, or a function of the
    tool's name and arguments. ``tools`` limits the guard to those tool names
    (default: every tool of the node). ``on_refusal`` says what a call that
    Warrant did not authorize becomes: ``"message"`` (default), a
    ``ToolMessage`` with ``status="error"`` that the model reads, or
    ``"raise"``, the ``NotAuthorizedToRun`` subclass, out of the graph.
    ``ArgumentsChanged`` and ``InstanceConflict`` are always raised.

    ``resume_wait`` is how long, on resume, the guard waits for a decision
    that is not in the record yet before it interrupts again; ``read_timeout``
    how long it waits for a fresh proposal to be folded. ``namespace`` goes
    into every derived instance id (two applications sharing thread ids give
    it different values). ``rationale`` (a function of the tool call) and
    ``model`` are shown to reviewers; ``review_url`` maps an instance id to
    the link put in the interrupt (default: intake's console).
    """

    def __init__(
        self,
        client: Client,
        *,
        kind: NameOrFn,
        target: NameOrFn,
        tools: Collection[str] | None = None,
        namespace: str = "",
        on_refusal: Literal["message", "raise"] = "message",
        resume_wait: float = 10.0,
        read_timeout: float = 10.0,
        rationale: Callable[[Mapping[str, Any]], str | None] | None = None,
        model: str | None = None,
        review_url: Callable[[str], str] | None = None,
    ) -> None:
        if on_refusal not in ("message", "raise"):
            raise GuardConfigError(f"on_refusal must be 'message' or 'raise', not {on_refusal!r}")
        self.client = client
        self._kind = kind
        self._target = target
        self._tools = frozenset(tools) if tools is not None else None
        self._namespace = namespace
        self._on_refusal = on_refusal
        self._resume_wait = resume_wait
        self._read_timeout = read_timeout
        self._rationale = rationale
        self._model = model
        self._review_url = review_url

    # The two hooks ToolNode takes; hooks() hands both over at once.

    def hooks(self) -> dict[str, Any]:
        """``ToolNode(tools, **guard.hooks())``: the sync and async hooks."""
        return {"wrap_tool_call": self.wrap_tool_call, "awrap_tool_call": self.awrap_tool_call}

    def guards(self, tool_name: str) -> bool:
        return self._tools is None or tool_name in self._tools

    def wrap_tool_call(self, request: ToolCallRequest, execute: Execute) -> ToolResult:
        if not self.guards(request.tool_call["name"]):
            return execute(request)
        try:
            prepared = self._prepare(request)
        except NotAuthorizedToRun as refusal:
            return self._refused(request, refusal)
        try:
            result = execute(prepared.request)
        except BaseException as error:
            self._report(prepared, "FAILED", f"{type(error).__name__}: {error}")
            raise
        self._report_result(prepared, result)
        return result

    async def awrap_tool_call(self, request: ToolCallRequest, execute: AsyncExecute) -> ToolResult:
        # The client is synchronous; its calls (and the interrupt, which reads
        # the graph's context, copied into the thread) run off the event loop
        # so a long wait never blocks other tasks.
        if not self.guards(request.tool_call["name"]):
            return await execute(request)
        try:
            prepared = await asyncio.to_thread(self._prepare, request)
        except NotAuthorizedToRun as refusal:
            return self._refused(request, refusal)
        try:
            result = await execute(prepared.request)
        except BaseException as error:
            await asyncio.to_thread(
                self._report, prepared, "FAILED", f"{type(error).__name__}: {error}"
            )
            raise
        await asyncio.to_thread(self._report_result, prepared, result)
        return result

    # -- the steps ------------------------------------------------------------

    def action_for(self, tool_name: str, args: Mapping[str, Any]) -> dict[str, Any]:
        kind = self._kind(tool_name, args) if callable(self._kind) else self._kind
        target = self._target(tool_name, args) if callable(self._target) else self._target
        return tool_action(kind, target, args)

    def instance_id(self, request: ToolCallRequest) -> str:
        config = getattr(request.runtime, "config", None) or {}
        thread_id = (config.get("configurable") or {}).get("thread_id")
        if thread_id is None:
            raise GuardConfigError(
                "a guarded tool call needs a thread id: compile the graph with a "
                "checkpointer and invoke it with config={'configurable': {'thread_id': ...}}"
            )
        call_id = request.tool_call.get("id")
        if not call_id:
            raise GuardConfigError(
                f"tool call {request.tool_call['name']!r} has no id; the guard derives "
                "the Warrant instance from it"
            )
        return instance_id_for(str(thread_id), str(call_id), self._namespace)

    def _prepare(self, request: ToolCallRequest) -> _Prepared:
        """Propose, pause until decided, re-check the arguments, claim."""
        call = request.tool_call
        # The arguments that will run are this copy: whatever else holds the
        # request's dict cannot change them between the digest and the run.
        args = copy.deepcopy(dict(call["args"]))
        action = self.action_for(call["name"], args)
        digest = action_digest(action)
        instance_id = self.instance_id(request)

        record = self._propose(instance_id, action, digest, call)
        # LangGraph re-runs the node from the top on every resume and hands
        # each earlier interrupt its earlier resume value again, so only the
        # first wait of a run is worth its time: later ones would re-wait for
        # cues already answered.
        waited = False
        while True:
            self._check_digest(instance_id, record, digest)
            status = record.get("status")
            if record.get("grants"):
                raise AlreadyExecuted(
                    f"instance {instance_id}: a grant was already issued for this tool "
                    f"call (status {status}); it is not run again",
                    instance_id=instance_id,
                    status=status,
                    record=record,
                )
            if status == "AUTHORIZED":
                break
            if status not in PAUSED and status is not None:
                # Final, or a status this adapter does not know: never a
                # reason to run.
                raise NotAuthorizedToRun(
                    f"instance {instance_id}: Warrant says {status}; the tool was not run",
                    instance_id=instance_id,
                    status=status,
                    record=record,
                )
            # Paused (or not folded yet). Whatever the application resumes
            # with is only a cue to look again: the record decides.
            interrupt(self._interrupt_payload(instance_id, action, digest, record, call))
            if waited:
                record = self.client.get(instance_id)
            else:
                record = self._wait_decided(instance_id)
                waited = True

        try:
            grant = self.client.claim(instance_id, action)
        except Refused as refusal:
            code = getattr(refusal, "code", None)
            raise ToolRefused(
                f"instance {instance_id}: the claim was refused ({code}); the tool was not run",
                instance_id=instance_id,
                status=record.get("status"),
                code=code,
                record=record,
            ) from refusal
        frozen = request.override(tool_call={**call, "args": args})
        return _Prepared(instance_id=instance_id, grant=grant, request=frozen)

    def _propose(
        self, instance_id: str, action: dict[str, Any], digest: str, call: Mapping[str, Any]
    ) -> dict[str, Any]:
        conflict = False
        try:
            self.client.propose(
                action,
                instance_id=instance_id,
                rationale=self._rationale(call) if self._rationale else None,
                proposer={"kind": "AGENT", "model": self._model},
            )
        except ApiError as error:
            # The same principal re-proposing the same action is answered
            # 202 with the original event; 409 means the id holds another
            # action, or another proposer's: the record says which.
            if getattr(error, "code", None) != "instance_exists":
                raise
            conflict = True
        record = self._read(instance_id)
        if conflict:
            self._check_digest(instance_id, record, digest)
            raise InstanceConflict(
                f"instance {instance_id} holds this action, proposed by someone else "
                f"({(record.get('proposal') or {}).get('submitted_by')}); the tool was not run",
                instance_id=instance_id,
            )
        return record

    def _read(self, instance_id: str) -> dict[str, Any]:
        """The record once the proposal is folded into it."""
        try:
            return self.client.wait(
                instance_id,
                until=lambda record: record.get("status") is not None,
                timeout=self._read_timeout,
            )
        except WaitTimeout:
            return self.client.get(instance_id)

    def _wait_decided(self, instance_id: str) -> dict[str, Any]:
        try:
            return self.client.wait(
                instance_id,
                until=lambda record: (
                    record.get("status") not in PAUSED and record.get("status") is not None
                ),
                timeout=self._resume_wait,
            )
        except WaitTimeout:
            return self.client.get(instance_id)

    @staticmethod
    def _check_digest(instance_id: str, record: Mapping[str, Any], digest: str) -> None:
        authorized = (record.get("proposal") or {}).get("action_digest")
        if authorized != digest:
            raise ArgumentsChanged(
                instance_id=instance_id, authorized_digest=authorized, digest=digest
            )

    def _interrupt_payload(
        self,
        instance_id: str,
        action: Mapping[str, Any],
        digest: str,
        record: Mapping[str, Any],
        call: Mapping[str, Any],
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "warrant": {
                "instance_id": instance_id,
                "status": record.get("status"),
                "action": dict(action),
                "action_digest": digest,
                "tool": call["name"],
                "tool_call_id": call.get("id"),
                "decision_deadline": (record.get("proposal") or {}).get("decision_deadline"),
            }
        }
        payload["warrant"]["review_url"] = self.review_url(instance_id)
        return payload

    def review_url(self, instance_id: str) -> str | None:
        """Where reviewers decide: ``review_url(id)`` if given, else intake's console."""
        if self._review_url is not None:
            return self._review_url(instance_id)
        intake = getattr(self.client, "intake_url", None)
        return f"{intake}/console/#/instance/{instance_id}" if intake else None

    def _refused(self, request: ToolCallRequest, refusal: NotAuthorizedToRun) -> ToolResult:
        if self._on_refusal == "raise":
            raise refusal
        content = f"Not run: {refusal}"
        reason = _rejection_reason(refusal.record)
        if reason:
            content += f". The reviewer said: {reason}"
        return ToolMessage(
            content=content,
            name=request.tool_call["name"],
            tool_call_id=request.tool_call["id"],
            status="error",
            artifact={
                "warrant": {
                    "instance_id": refusal.instance_id,
                    "status": refusal.status,
                    "code": refusal.code,
                }
            },
        )

    def _report_result(self, prepared: _Prepared, result: Any) -> None:
        # ToolNode turns a tool's exception into an error message when its
        # handle_tool_errors says so: that run failed all the same.
        if isinstance(result, ToolMessage) and result.status == "error":
            self._report(prepared, "FAILED", _text(result.content))
        else:
            self._report(prepared, "SUCCEEDED", None)

    def _report(self, prepared: _Prepared, outcome: str, detail: str | None) -> None:
        if detail is not None and len(detail) > _DETAIL_LIMIT:
            detail = detail[: _DETAIL_LIMIT - 1] + "…"
        try:
            self.client.report(prepared.grant, outcome, detail=detail)
        except WarrantError as error:
            # The tool already ran: raising would throw away its result while
            # the grant keeps it from ever running again. The record shows the
            # grant without a report; the report can be posted later.
            log.error(
                "report failed after the tool ran: instance_id=%s grant_id=%s outcome=%s error=%s",
                prepared.instance_id,
                getattr(prepared.grant, "grant_id", None),
                outcome,
                error,
            )


def _rejection_reason(record: Mapping[str, Any] | None) -> str | None:
    """The justification of the rejection that decided the record, if it was one."""
    if not record or record.get("status") != "REJECTED":
        return None
    for decision in reversed(record.get("decisions") or []):
        if decision.get("verdict") == "REJECT" and decision.get("outcome") == "applied":
            return str(decision.get("justification") or "") or None
    return None


def _text(content: Any) -> str:
    return content if isinstance(content, str) else str(content)
