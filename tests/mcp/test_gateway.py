"""warrant-mcp end to end: a Python MCP client -> warrant-mcp (stdio) -> the
upstream in upstream_server.py, against a real intake, projector and broker.

The harness's ruleset makes `mcp.tool` on targets under `demo/` need two
approvals from role `sre` (alice and bob), so every governed call here needs
both before anything runs.

Run: see docs/mcp-gateway.md ("Tests").
"""

from __future__ import annotations

import asyncio
import pathlib
import time
import uuid
from typing import Any

import httpx
import pytest

from conftest import (
    GATEWAY_PRINCIPAL,
    action_digest,
    action_for,
    instance_id,
    jcs,
    open_gateway,
    ran,
)

pytestmark = pytest.mark.anyio


def text_of(result: Any) -> str:
    return "\n".join(getattr(block, "text", "") for block in result.content)


async def in_thread(function: Any, *args: Any, **kwargs: Any) -> Any:
    """Harness calls block; keep the event loop (and the MCP session) moving."""
    return await asyncio.to_thread(function, *args, **kwargs)


async def approvals_applied(system: Any, instance: str, count: int) -> dict[str, Any]:
    return await in_thread(
        system.await_record,
        instance,
        lambda r: sum(
            1 for d in r.get("decisions", []) if d["verdict"] == "APPROVE" and d["outcome"] == "applied"
        )
        >= count,
    )


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def projector_status(system: Any, instance: str) -> int:
    return httpx.get(f"{system.projector_url}/v1/instances/{instance}").status_code


async def test_call_waits_for_two_approvals_then_runs_exactly_the_approved_arguments(
    system: Any, tmp_path: pathlib.Path, calls_file: pathlib.Path
) -> None:
    arguments = {
        "service": unique("payments"),
        # Nested, non-ASCII and numeric values: each travels as its JCS text.
        "strategy": {"kind": "rolling", "batch": 2, "ratio": 0.25, "note": "zürich 😀"},
    }
    instance = instance_id("restart", arguments)
    async with open_gateway(system, tmp_path, calls_file) as gateway:
        call = asyncio.create_task(gateway.call("restart", arguments))
        record = await in_thread(system.await_record, instance, {"AWAITING_DECISION"})
        assert record["proposal"]["action"] == action_for("restart", arguments)
        assert record["proposal"]["proposer"]["principal"] == GATEWAY_PRINCIPAL

        await in_thread(system.decide, instance, "alice", "APPROVE")
        await approvals_applied(system, instance, 1)
        # One approval of two: the call is still held and nothing ran.
        await asyncio.sleep(2.5)
        assert not call.done(), "the call returned after a single approval"
        assert ran(calls_file, "restart") == []

        await in_thread(system.decide, instance, "bob", "APPROVE")
        result = await asyncio.wait_for(call, 60)

    assert not result.is_error, text_of(result)
    assert text_of(result) == f"restarted {arguments['service']}"
    runs = ran(calls_file, "restart")
    assert len(runs) == 1
    # Byte for byte: the canonical text of every argument the upstream
    # received is the parameter text the reviewers approved.
    approved = record["proposal"]["action"]["parameters"]
    assert {name: jcs(value) for name, value in runs[0]["arguments"].items()} == approved
    assert runs[0]["arguments"] == arguments

    done = await in_thread(system.await_record, instance, {"COMPLETED"})
    assert len(done["grants"]) == 1
    assert done["grants"][0]["executor"] == GATEWAY_PRINCIPAL
    assert done["grants"][0]["report"]["outcome"] == "SUCCEEDED"
    # Progress notifications named the instance and its status while held.
    messages = [message or "" for _, message in gateway.progress]
    assert any(instance in m and "AWAITING_DECISION" in m for m in messages), messages
    assert any("1 approval so far" in m for m in messages), messages


async def test_the_same_call_after_completion_is_a_new_instance(
    system: Any, tmp_path: pathlib.Path, calls_file: pathlib.Path
) -> None:
    arguments = {"service": unique("search"), "strategy": "rolling"}
    first = instance_id("restart", arguments, epoch=0)
    second = instance_id("restart", arguments, epoch=1)
    async with open_gateway(system, tmp_path, calls_file, "--max-wait=3s") as gateway:
        call = asyncio.create_task(gateway.call("restart", arguments))
        await in_thread(system.await_record, first, {"AWAITING_DECISION"})
        await in_thread(system.decide, first, "alice", "APPROVE")
        await in_thread(system.decide, first, "bob", "APPROVE")
        result = await asyncio.wait_for(call, 60)
        assert not result.is_error, text_of(result)
        await in_thread(system.await_record, first, {"COMPLETED"})

        # Called again on purpose: the old approval does not answer it.
        again = await gateway.call("restart", arguments)
    assert again.is_error
    assert second in text_of(again) and "still awaiting review" in text_of(again)
    assert len(ran(calls_file, "restart")) == 1
    record = await in_thread(system.await_record, second, {"AWAITING_DECISION"})
    assert record["grants"] == []
