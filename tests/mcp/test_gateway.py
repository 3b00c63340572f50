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
    http_gateway,
    http_upstream,
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


async def test_changed_arguments_do_not_run_on_an_earlier_approval(
    system: Any, tmp_path: pathlib.Path, calls_file: pathlib.Path
) -> None:
    approved_args = {"service": unique("billing"), "strategy": {"kind": "canary", "percent": 5}}
    changed_args = {**approved_args, "strategy": {"kind": "all-at-once"}}
    approved = instance_id("restart", approved_args)
    changed = instance_id("restart", changed_args)
    assert approved != changed
    async with open_gateway(system, tmp_path, calls_file, "--max-wait=2s") as gateway:
        # Proposed, then left waiting past --max-wait; the reviewers approve
        # while no call is held, so the instance sits AUTHORIZED, unclaimed.
        first = await gateway.call("restart", approved_args)
        assert first.is_error and approved in text_of(first)
        await in_thread(system.decide, approved, "alice", "APPROVE")
        await in_thread(system.decide, approved, "bob", "APPROVE")
        await in_thread(system.await_record, approved, {"AUTHORIZED"})

        # The same tool with changed arguments is another action: its own
        # instance, waiting for its own review; nothing runs.
        other = await gateway.call("restart", changed_args)
        assert other.is_error, text_of(other)
        assert changed in text_of(other) and "still awaiting review" in text_of(other)
        assert ran(calls_file, "restart") == []
        assert (await in_thread(system.record, approved))["grants"] == []

        # An executor presenting the changed action's digest on the approved
        # instance is refused by the fold: the grant covers one digest only.
        async with httpx.AsyncClient() as client:
            claim = await client.post(
                f"{system.intake_url}/v1/instances/{approved}/executions",
                headers={"Authorization": f"Bearer {system.tokens[GATEWAY_PRINCIPAL]['executor']}"},
                json={"action_digest": action_digest(action_for("restart", changed_args))},
            )
        assert claim.status_code == 409, claim.text
        assert claim.json()["error"]["code"] == "DigestMismatch"

        # Retrying the approved call runs it, with exactly the approved texts.
        retried = await gateway.call("restart", approved_args)
    assert not retried.is_error, text_of(retried)
    runs = ran(calls_file, "restart")
    assert len(runs) == 1
    record = await in_thread(system.await_record, approved, {"COMPLETED"})
    parameters = record["proposal"]["action"]["parameters"]
    assert {name: jcs(value) for name, value in runs[0]["arguments"].items()} == parameters
    assert record["proposal"]["action_digest"] == action_digest(action_for("restart", approved_args))


async def test_a_rejected_call_returns_an_error_and_never_runs(
    system: Any, tmp_path: pathlib.Path, calls_file: pathlib.Path
) -> None:
    arguments = {"service": unique("ledger"), "strategy": "rolling"}
    instance = instance_id("restart", arguments)
    async with open_gateway(system, tmp_path, calls_file) as gateway:
        call = asyncio.create_task(gateway.call("restart", arguments))
        await in_thread(system.await_record, instance, {"AWAITING_DECISION"})
        await in_thread(system.decide, instance, "alice", "APPROVE")
        await in_thread(system.decide, instance, "bob", "REJECT", justification="change freeze")
        result = await asyncio.wait_for(call, 30)
    assert result.is_error
    message = text_of(result)
    assert "REJECTED" in message and instance in message, message
    assert "bob" in message and "change freeze" in message, message
    assert ran(calls_file) == []
    record = await in_thread(system.record, instance)
    assert record["status"] == "REJECTED" and record["grants"] == []


async def test_an_upstream_failure_is_reported_failed(
    system: Any, tmp_path: pathlib.Path, calls_file: pathlib.Path
) -> None:
    arguments = {"reason": unique("disk full")}
    instance = instance_id("fail", arguments)
    async with open_gateway(system, tmp_path, calls_file) as gateway:
        call = asyncio.create_task(gateway.call("fail", arguments))
        await in_thread(system.await_record, instance, {"AWAITING_DECISION"})
        await in_thread(system.decide, instance, "alice", "APPROVE")
        await in_thread(system.decide, instance, "bob", "APPROVE")
        result = await asyncio.wait_for(call, 30)
    # The upstream's own error result is what the client gets.
    assert result.is_error
    assert f"upstream refused: {arguments['reason']}" in text_of(result)
    assert ran(calls_file, "fail") == [
        {"tool": "fail", "arguments": arguments, "pid": ran(calls_file, "fail")[0]["pid"]}
    ]
    record = await in_thread(system.await_record, instance, {"FAILED"})
    assert record["grants"][0]["report"]["outcome"] == "FAILED"
    # The report's detail (on the log, not in the record) carries the text.
    events = await in_thread(system.log_events, instance)
    reports = [fields for name, fields in (e["body"] for e in events) if name == "warrant.ExecutionReported"]
    assert len(reports) == 1
    assert reports[0]["outcome"] == "FAILED"
    assert arguments["reason"] in (reports[0]["detail"] or "")


async def test_killed_mid_wait_the_retry_continues_the_same_instance(
    system: Any, tmp_path: pathlib.Path, calls_file: pathlib.Path
) -> None:
    arguments = {"service": unique("checkout"), "strategy": {"kind": "rolling"}}
    instance = instance_id("restart", arguments)
    async with open_gateway(system, tmp_path, calls_file) as gateway:
        call = asyncio.create_task(gateway.call("restart", arguments))
        await in_thread(system.await_record, instance, {"AWAITING_DECISION"})
        await in_thread(system.decide, instance, "alice", "APPROVE")
        await approvals_applied(system, instance, 1)
        gateway.kill()
        with pytest.raises(BaseException):
            await asyncio.wait_for(call, 30)
    assert ran(calls_file) == []

    # A new gateway process, the same call: no new instance, no 409, and it
    # completes once the second reviewer approves.
    async with open_gateway(system, tmp_path, calls_file) as gateway:
        call = asyncio.create_task(gateway.call("restart", arguments))
        await asyncio.sleep(2)
        assert not call.done()
        await in_thread(system.decide, instance, "bob", "APPROVE")
        result = await asyncio.wait_for(call, 30)
    assert not result.is_error, text_of(result)
    assert [r["arguments"] for r in ran(calls_file, "restart")] == [arguments]
    record = await in_thread(system.await_record, instance, {"COMPLETED"})
    proposals = [e for e in record["history"] if e["event"] == "ActionProposed"]
    assert len(proposals) == 1, record["history"]
    assert projector_status(system, instance_id("restart", arguments, epoch=1)) == 404


async def test_waiting_past_max_wait_names_the_instance_and_a_retry_continues_it(
    system: Any, tmp_path: pathlib.Path, calls_file: pathlib.Path
) -> None:
    arguments = {"service": unique("inventory"), "strategy": "rolling"}
    instance = instance_id("restart", arguments)
    async with open_gateway(system, tmp_path, calls_file, "--max-wait=2s") as gateway:
        started = time.monotonic()
        result = await gateway.call("restart", arguments)
        waited = time.monotonic() - started
        again = await gateway.call("restart", arguments)
    assert result.is_error
    message = text_of(result)
    assert instance in message, message
    assert "still awaiting review" in message and "continues the same instance" in message, message
    assert 1.5 < waited < 10, waited
    assert again.is_error and instance in text_of(again)
    assert ran(calls_file) == []
    record = await in_thread(system.record, instance)
    assert record["status"] == "AWAITING_DECISION"
    assert [e["event"] for e in record["history"]] == ["ActionProposed"]


async def test_an_allow_listed_read_only_tool_passes_through_without_a_proposal(
    system: Any, tmp_path: pathlib.Path, calls_file: pathlib.Path
) -> None:
    async with open_gateway(system, tmp_path, calls_file, "--allow-read-only") as gateway:
        listed = await gateway.session.list_tools()
        tools = {tool.name: tool for tool in listed.tools}
        assert set(tools) >= {"restart", "fail", "status"}
        assert tools["status"].annotations.read_only_hint is True
        assert tools["restart"].annotations.read_only_hint is False

        log_before = await in_thread(system.log_end_total)
        result = await gateway.call("status", {})
        assert not result.is_error, text_of(result)
        assert text_of(result) == "all services up"
        assert await in_thread(system.log_end_total) == log_before
    assert [r["tool"] for r in ran(calls_file)] == ["status"]

    # Without the flag the same read-only tool is held like any other.
    async with open_gateway(system, tmp_path, calls_file, "--max-wait=1s") as gateway:
        held = await gateway.call("status", {})
    assert held.is_error and instance_id("status", {}) in text_of(held)
    assert [r["tool"] for r in ran(calls_file)] == ["status"]


async def test_intake_unreachable_fails_closed(
    system: Any, tmp_path: pathlib.Path, calls_file: pathlib.Path
) -> None:
    class Elsewhere:
        # The real system's tokens, an intake URL nothing listens on.
        intake_url = "http://127.0.0.1:9"
        tokens = system.tokens

    async with open_gateway(Elsewhere, tmp_path, calls_file) as gateway:
        result = await gateway.call("restart", {"service": unique("x"), "strategy": "rolling"})
    assert result.is_error
    assert "fail closed" in text_of(result), text_of(result)
    assert ran(calls_file) == []


async def test_over_streamable_http_and_a_graceful_stop(
    system: Any, tmp_path: pathlib.Path, calls_file: pathlib.Path
) -> None:
    from mcp.client.session import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    arguments = {"service": unique("gateway-http"), "strategy": "rolling"}
    instance = instance_id("restart", arguments)
    waiting_args = {"service": unique("never-approved"), "strategy": "rolling"}
    progress: list[str] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(message or "")

    with http_gateway(system, tmp_path, calls_file) as (url, process):
        async with streamable_http_client(url) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                call = asyncio.create_task(
                    session.call_tool("restart", arguments, progress_callback=on_progress)
                )
                await in_thread(system.await_record, instance, {"AWAITING_DECISION"})
                await in_thread(system.decide, instance, "alice", "APPROVE")
                await in_thread(system.decide, instance, "bob", "APPROVE")
                result = await asyncio.wait_for(call, 30)
                assert not result.is_error, text_of(result)
                assert any(instance in m for m in progress), progress

                # SIGTERM while a call waits for review: the call ends with a
                # tool error (nothing ran) and the gateway exits cleanly.
                held = asyncio.create_task(session.call_tool("restart", waiting_args))
                await in_thread(
                    system.await_record, instance_id("restart", waiting_args), {"AWAITING_DECISION"}
                )
                process.terminate()
                stopped = await asyncio.wait_for(held, 15)
                assert stopped.is_error and "was stopped" in text_of(stopped), text_of(stopped)
                assert instance_id("restart", waiting_args) in text_of(stopped)
        assert await in_thread(process.wait, 15) == 0
    assert [r["arguments"] for r in ran(calls_file, "restart")] == [arguments]
    await in_thread(system.await_record, instance, {"COMPLETED"})


async def test_an_upstream_reached_over_streamable_http(
    system: Any, tmp_path: pathlib.Path, calls_file: pathlib.Path
) -> None:
    arguments = {"service": unique("upstream-http"), "strategy": {"kind": "blue-green"}}
    instance = instance_id("restart", arguments)
    with http_upstream(tmp_path, calls_file) as url:
        async with open_gateway(system, tmp_path, calls_file, upstream_url=url) as gateway:
            listed = await gateway.session.list_tools()
            assert {tool.name for tool in listed.tools} >= {"restart", "fail", "status"}
            call = asyncio.create_task(gateway.call("restart", arguments))
            await in_thread(system.await_record, instance, {"AWAITING_DECISION"})
            assert ran(calls_file) == []
            await in_thread(system.decide, instance, "alice", "APPROVE")
            await in_thread(system.decide, instance, "bob", "APPROVE")
            result = await asyncio.wait_for(call, 30)
    assert not result.is_error, text_of(result)
    assert [r["arguments"] for r in ran(calls_file, "restart")] == [arguments]
    await in_thread(system.await_record, instance, {"COMPLETED"})


async def test_an_id_taken_by_another_proposer_is_skipped(
    system: Any, tmp_path: pathlib.Path, calls_file: pathlib.Path
) -> None:
    arguments = {"service": unique("squatted"), "strategy": "rolling"}
    taken = instance_id("restart", arguments, epoch=0)
    # Another service proposes the same action under the gateway's first id.
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{system.intake_url}/v1/proposals",
            headers={"Authorization": f"Bearer {system.tokens['agent:sdk']['service']}"},
            json={"instance_id": taken, "action": action_for("restart", arguments)},
        )
    assert response.status_code == 202, response.text
    await in_thread(system.await_record, taken, {"AWAITING_DECISION"})
    # Approving the other proposer's instance must not run the gateway's call.
    await in_thread(system.decide, taken, "alice", "APPROVE")
    await in_thread(system.decide, taken, "bob", "APPROVE")
    await in_thread(system.await_record, taken, {"AUTHORIZED"})

    async with open_gateway(system, tmp_path, calls_file, "--max-wait=2s") as gateway:
        result = await gateway.call("restart", arguments)
    assert result.is_error
    own = instance_id("restart", arguments, epoch=1)
    assert own in text_of(result) and taken not in text_of(result), text_of(result)
    assert ran(calls_file) == []
    record = await in_thread(system.record, own)
    assert record["proposal"]["proposer"]["principal"] == GATEWAY_PRINCIPAL
    assert (await in_thread(system.record, taken))["grants"] == []


async def test_arguments_that_cannot_form_a_canonical_action_are_refused_unsent(
    system: Any, tmp_path: pathlib.Path, calls_file: pathlib.Path
) -> None:
    async with open_gateway(system, tmp_path, calls_file) as gateway:
        log_before = await in_thread(system.log_end_total)
        # A key with surrounding whitespace is not a canonical parameter key.
        padded = await gateway.call("restart", {"service": "api", " strategy": "rolling"})
        # A double would round this integer: the approved text would name another number.
        rounded = await gateway.call("restart", {"service": "api", "strategy": 9007199254740993})
        assert await in_thread(system.log_end_total) == log_before
    assert padded.is_error and "not forwarded" in text_of(padded), text_of(padded)
    assert "strategy" in text_of(padded)
    assert rounded.is_error and "9007199254740993" in text_of(rounded), text_of(rounded)
    assert ran(calls_file) == []


async def test_a_named_allow_listed_tool_passes_through(
    system: Any, tmp_path: pathlib.Path, calls_file: pathlib.Path
) -> None:
    arguments = {"service": unique("scratch"), "strategy": "rolling"}
    async with open_gateway(system, tmp_path, calls_file, "--allow-tool=restart") as gateway:
        log_before = await in_thread(system.log_end_total)
        result = await gateway.call("restart", arguments)
        assert await in_thread(system.log_end_total) == log_before
    assert not result.is_error, text_of(result)
    assert [r["arguments"] for r in ran(calls_file, "restart")] == [arguments]
    assert projector_status(system, instance_id("restart", arguments)) == 404


async def test_identical_calls_at_once_never_share_a_grant(
    system: Any, tmp_path: pathlib.Path, calls_file: pathlib.Path
) -> None:
    arguments = {"service": unique("twice"), "strategy": "rolling"}
    first, second = instance_id("restart", arguments, 0), instance_id("restart", arguments, 1)
    async with open_gateway(system, tmp_path, calls_file, "--max-wait=40s") as gateway:
        calls = [asyncio.create_task(gateway.call("restart", arguments)) for _ in range(2)]
        await in_thread(system.await_record, first, {"AWAITING_DECISION"})
        await in_thread(system.decide, first, "alice", "APPROVE")
        await in_thread(system.decide, first, "bob", "APPROVE")
        # One of the two ran on the first instance's one grant; the other
        # is now proposed again under the next id and waits for its own review.
        await in_thread(system.await_record, first, {"COMPLETED"})
        await in_thread(system.await_record, second, {"AWAITING_DECISION"}, 30.0)
        assert len(ran(calls_file, "restart")) == 1
        await in_thread(system.decide, second, "alice", "APPROVE")
        await in_thread(system.decide, second, "bob", "APPROVE")
        results = await asyncio.wait_for(asyncio.gather(*calls), 40)
    assert all(not r.is_error for r in results), [text_of(r) for r in results]
    assert len(ran(calls_file, "restart")) == 2
    for instance in (first, second):
        record = await in_thread(system.await_record, instance, {"COMPLETED"})
        assert len(record["grants"]) == 1
