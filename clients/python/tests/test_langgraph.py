"""The LangGraph adapter against a real Warrant (intake, projector, Kafka).

The graph is a scripted "model" node that emits one fixed tool call, a
``ToolNode`` guarded by ``WarrantToolGuard``, and an in-memory checkpointer;
no model is called. Reviewers decide through the harness's HMAC webhook.
"""

from __future__ import annotations

import os
import pathlib
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Annotated, Any, TypedDict

import pytest

if os.environ.get("CI") != "true":
    # Locally the adapter's tests are optional; in CI a missing LangGraph
    # fails the import below instead of skipping the whole module.
    pytest.importorskip(
        "langgraph", reason="LangGraph is not installed (clients/python/requirements-langgraph.txt)"
    )

from langchain_core.messages import AIMessage, AnyMessage, HumanMessage, ToolMessage  # noqa: E402
from langchain_core.tools import tool  # noqa: E402
from langgraph.checkpoint.memory import InMemorySaver  # noqa: E402
from langgraph.graph import END, START, StateGraph  # noqa: E402
from langgraph.graph.message import add_messages  # noqa: E402
from langgraph.prebuilt import ToolNode, tools_condition  # noqa: E402
from langgraph.types import Command  # noqa: E402

from warrant import Client, action_digest  # noqa: E402
from warrant.langgraph import (  # noqa: E402
    AlreadyExecuted,
    ArgumentsChanged,
    NotAuthorizedToRun,
    WarrantToolGuard,
    instance_id_for,
    tool_action,
)

REPO = pathlib.Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "tests" / "harness"))

from warrant_system import binaries_missing, running_system  # noqa: E402

TOOL_NAME = "restart_service"


# -- the system and the graph -----------------------------------------------


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    reason = binaries_missing()
    if reason is not None:
        pytest.skip(reason)
    with running_system(tmp_path_factory.mktemp("langgraph-system")) as running:
        yield running


@pytest.fixture
def client(system: Any) -> Iterator[Client]:
    tokens = system.tokens["agent:sdk"]
    with Client(system.intake_url, tokens["service"], executor_token=tokens["executor"]) as c:
        yield c


class State(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]


class Tool:
    """The guarded tool, counting every run with its arguments."""

    def __init__(self, fail: str | None = None) -> None:
        self.runs: list[dict[str, Any]] = []
        self.fail = fail

        @tool(TOOL_NAME)
        def restart_service(service: str, strategy: str, replicas: int) -> str:
            """Restart a staging service."""
            self.runs.append({"service": service, "strategy": strategy, "replicas": replicas})
            if self.fail is not None:
                raise RuntimeError(self.fail)
            return f"restarted {service} ({strategy}, {replicas} replicas)"

        self.tool = restart_service


ARGS = {"service": "api", "strategy": "rolling", "replicas": 3}


def build_graph(
    guard: WarrantToolGuard, tool_: Tool, call_id: str, args: dict[str, Any], *more: dict[str, Any]
) -> Any:
    """The scripted graph; `more` are further calls in the same model message."""
    calls = [{"name": TOOL_NAME, "args": dict(args), "id": call_id, "type": "tool_call"}, *more]

    def model(state: State) -> dict[str, Any]:
        # A scripted model: the tool call(s), then a final answer once the
        # tool (or Warrant's refusal) has answered.
        if isinstance(state["messages"][-1], ToolMessage):
            return {"messages": [AIMessage(content="done", id=f"final-{call_id}")]}
        return {"messages": [AIMessage(content="", tool_calls=calls, id=f"ai-{call_id}")]}

    builder = StateGraph(State)
    builder.add_node("model", model)
    builder.add_node("tools", ToolNode([tool_.tool], **guard.hooks()))
    builder.add_edge(START, "model")
    builder.add_conditional_edges("model", tools_condition, {"tools": "tools", END: END})
    builder.add_edge("tools", "model")
    return builder.compile(checkpointer=InMemorySaver())


def make_guard(client: Client, prefix: str = "staging", **options: Any) -> WarrantToolGuard:
    settings: dict[str, Any] = {
        "kind": "deploy.restart",
        "target": lambda name, args: f"{prefix}/{args['service']}",
        "rationale": lambda call: f"scripted test call {call['id']}",
        "resume_wait": 2.0,
        **options,
    }
    return WarrantToolGuard(client, **settings)


class Run:
    """One thread of one graph: its config, instance id and expected action."""

    def __init__(
        self, client: Client, tool_: Tool | None = None, prefix: str = "staging", **options: Any
    ) -> None:
        self.thread_id = f"thread-{uuid.uuid4()}"
        self.call_id = f"call-{uuid.uuid4().hex[:12]}"
        self.tool = tool_ or Tool()
        self.guard = make_guard(client, prefix, **options)
        self.graph = build_graph(self.guard, self.tool, self.call_id, ARGS)
        self.config = {"configurable": {"thread_id": self.thread_id}}
        self.instance_id = instance_id_for(self.thread_id, self.call_id)
        self.action = tool_action("deploy.restart", f"{prefix}/api", ARGS)

    def start(self) -> dict[str, Any]:
        """Run until the guard's interrupt; its payload."""
        result = self.graph.invoke({"messages": [HumanMessage("restart api")]}, self.config)
        return only_interrupt(result)

    def resume(self, value: Any = "approved") -> dict[str, Any]:
        return self.graph.invoke(Command(resume=value), self.config)


def only_interrupt(result: dict[str, Any]) -> dict[str, Any]:
    interrupts = result.get("__interrupt__") or []
    assert len(interrupts) == 1, f"expected one pending interrupt, got {result!r}"
    return interrupts[0].value["warrant"]


def tool_messages(result: dict[str, Any]) -> list[ToolMessage]:
    return [m for m in result["messages"] if isinstance(m, ToolMessage)]


def events(record: dict[str, Any]) -> list[str]:
    return [entry["event"] for entry in record["history"]]


# -- pure parts --------------------------------------------------------------


def test_instance_ids_are_stable_version_4_and_distinct() -> None:
    first = instance_id_for("thread-1", "call-1")
    assert first == instance_id_for("thread-1", "call-1")
    assert uuid.UUID(first).version == 4
    assert uuid.UUID(first).variant == uuid.RFC_4122
    # Length-prefixed parts: moving a character between the parts is another id.
    assert first != instance_id_for("thread-1c", "all-1")
    assert first != instance_id_for("thread-1", "call-2")
    assert first != instance_id_for("thread-1", "call-1", namespace="other-app")


def test_parameters_are_the_canonical_json_of_each_argument() -> None:
    args = {"replicas": 3, "tags": {"b": 1, "a": "x"}}
    action = tool_action("deploy.restart", "staging/api", args)
    assert action["parameters"] == {"replicas": "3", "tags": '{"a":"x","b":1}'}
    # A string argument is quoted: "3" and 3 are two different actions.
    assert tool_action("k", "t", {"replicas": "3"})["parameters"] == {"replicas": '"3"'}
    assert action_digest(tool_action("k", "t", {"replicas": "3"})) != action_digest(
        tool_action("k", "t", {"replicas": 3})
    )


# -- against the real system -------------------------------------------------


def test_approved_call_runs_once_and_completes(system: Any, client: Client) -> None:
    run = Run(client)
    paused = run.start()

    assert paused["instance_id"] == run.instance_id
    assert paused["status"] == "AWAITING_DECISION"
    assert paused["action"] == run.action
    assert paused["action_digest"] == action_digest(run.action)
    assert paused["review_url"] == f"{system.intake_url}/console/#/instance/{run.instance_id}"
    assert run.tool.runs == []
    proposed = system.record(run.instance_id)
    assert proposed["proposal"]["action_digest"] == action_digest(run.action)
    assert proposed["proposal"]["submitted_by"] == "agent:sdk"

    system.decide(run.instance_id, "alice", "APPROVE")
    result = run.resume("approved")

    assert run.tool.runs == [ARGS]
    [message] = tool_messages(result)
    assert message.status != "error"
    assert message.content == "restarted api (rolling, 3 replicas)"
    assert result["messages"][-1].content == "done"
    record = system.await_record(run.instance_id, {"COMPLETED"})
    [grant] = record["grants"]
    assert grant["executor"] == "agent:sdk"
    assert grant["report"]["outcome"] == "SUCCEEDED"


def test_resume_before_the_decision_does_not_run_the_tool(system: Any, client: Client) -> None:
    run = Run(client, resume_wait=0.5)
    run.start()

    # The application claims "approved"; Warrant has no decision yet.
    again = only_interrupt(run.resume({"approved": True}))

    assert again["instance_id"] == run.instance_id
    assert again["status"] == "AWAITING_DECISION"
    assert run.tool.runs == []
    assert system.record(run.instance_id)["grants"] == []

    system.decide(run.instance_id, "bob", "APPROVE")
    run.resume()
    assert run.tool.runs == [ARGS]
    assert system.await_record(run.instance_id, {"COMPLETED"})["grants"][0]["report"]


def test_a_decision_during_the_resume_wait_runs_the_tool_in_that_resume(
    system: Any, client: Client
) -> None:
    run = Run(client, resume_wait=20.0)
    run.start()
    decided_at: list[float] = []

    def approve() -> None:
        system.decide(run.instance_id, "alice", "APPROVE")
        decided_at.append(time.monotonic())

    reviewer = threading.Timer(1.0, approve)
    reviewer.start()
    try:
        result = run.resume("resumed before the decision")
    finally:
        reviewer.join()
    returned_at = time.monotonic()

    assert run.tool.runs == [ARGS]
    assert "__interrupt__" not in result
    # The guard long-polls the record: it goes on soon after the decision,
    # not at the end of its 20 s wait.
    assert returned_at - decided_at[0] < 3.0
    assert system.await_record(run.instance_id, {"COMPLETED"})["grants"]


def test_a_call_authorized_by_its_policy_signal_runs_without_a_reviewer(
    system: Any, client: Client
) -> None:
    run = Run(client, kind="cache.flush")
    run.action = tool_action("cache.flush", "staging/api", ARGS)
    paused = run.start()
    assert paused["status"] == "AWAITING_SIGNALS"
    assert paused["action"] == run.action

    system.signal(run.instance_id, "ALLOW", reasons=["within the change window"])
    system.await_record(run.instance_id, {"AUTHORIZED"})
    run.resume()

    assert run.tool.runs == [ARGS]
    # The rule allows three executions, so the record goes back to
    # AUTHORIZED after the report: only the grant says this call ran.
    record = system.await_record(
        run.instance_id, lambda r: bool(r["grants"]) and r["grants"][0]["report"] is not None
    )
    assert record["status"] == "AUTHORIZED"
    assert record["authorization"]["authority"]["kind"] == "RULE"
    assert record["decisions"] == []

    # A replay of the tools node does not spend a second execution on it.
    before_tools = next(s for s in run.graph.get_state_history(run.config) if s.next == ("tools",))
    replayed = run.graph.invoke(None, before_tools.config)

    assert run.tool.runs == [ARGS]
    assert tool_messages(replayed)[-1].artifact["warrant"]["status"] == "AUTHORIZED"
    assert len(system.record(run.instance_id)["grants"]) == 1


def test_rejected_call_never_runs_and_the_model_is_told(system: Any, client: Client) -> None:
    run = Run(client)
    run.start()
    system.decide(run.instance_id, "alice", "REJECT", justification="not during the freeze")

    result = run.resume("approved")

    assert run.tool.runs == []
    [message] = tool_messages(result)
    assert message.status == "error"
    assert "REJECTED" in message.content and run.instance_id in message.content
    assert "not during the freeze" in message.content
    assert message.artifact["warrant"] == {
        "instance_id": run.instance_id,
        "status": "REJECTED",
        "code": None,
    }
    record = system.await_record(run.instance_id, {"REJECTED"})
    assert record["grants"] == []
    assert "ExecutionRequested" not in events(record)


def test_rejected_call_raises_when_asked_to(system: Any, client: Client) -> None:
    run = Run(client, on_refusal="raise")
    run.start()
    system.decide(run.instance_id, "alice", "REJECT", justification="no")

    with pytest.raises(NotAuthorizedToRun) as raised:
        run.resume()

    assert raised.value.status == "REJECTED"
    assert raised.value.instance_id == run.instance_id
    assert run.tool.runs == []


def test_changed_arguments_are_refused_and_never_claimed(system: Any, client: Client) -> None:
    run = Run(client)
    run.start()
    # Between the interrupt and the resume, the state's tool call is edited
    # (same message id and tool-call id, so add_messages replaces it).
    tampered = {**ARGS, "strategy": "recreate", "replicas": 30}
    call = {"name": TOOL_NAME, "args": tampered, "id": run.call_id, "type": "tool_call"}
    run.graph.update_state(
        run.config,
        {"messages": [AIMessage(content="", tool_calls=[call], id=f"ai-{run.call_id}")]},
        as_node="model",
    )
    # The reviewer approves what was proposed, the original arguments.
    system.decide(run.instance_id, "alice", "APPROVE")
    system.await_record(run.instance_id, {"AUTHORIZED"})

    with pytest.raises(ArgumentsChanged) as raised:
        run.resume("approved")

    assert raised.value.instance_id == run.instance_id
    assert raised.value.authorized_digest == action_digest(run.action)
    tampered_action = tool_action("deploy.restart", "staging/api", tampered)
    assert raised.value.digest == action_digest(tampered_action)
    assert run.tool.runs == []
    record = system.record(run.instance_id)
    assert record["status"] == "AUTHORIZED"
    assert record["grants"] == []
    assert events(record) == ["ActionProposed", "DecisionRecorded"]
    assert record["proposal"]["action"]["parameters"] == run.action["parameters"]


def test_rerun_and_second_resume_land_on_the_same_instance_and_run_once(
    system: Any, client: Client
) -> None:
    run = Run(client)
    first = run.start()
    # The node runs again before any decision (e.g. the application resumed
    # too early): the same instance is proposed again, not a second one.
    again = only_interrupt(run.resume("too early"))
    assert again["instance_id"] == first["instance_id"] == run.instance_id
    assert events(system.record(run.instance_id)) == ["ActionProposed"]

    system.decide(run.instance_id, "alice", "APPROVE")
    run.resume("approved")
    assert run.tool.runs == [ARGS]
    completed = system.await_record(run.instance_id, {"COMPLETED"})

    # A second resume of a thread that already finished.
    run.resume("approved again")
    # The tools node itself re-executed, from the checkpoint taken before it ran.
    before_tools = next(
        snapshot
        for snapshot in run.graph.get_state_history(run.config)
        if snapshot.next == ("tools",)
    )
    replayed = run.graph.invoke(None, before_tools.config)

    assert run.tool.runs == [ARGS]
    message = tool_messages(replayed)[-1]
    assert message.status == "error"
    assert message.artifact["warrant"]["instance_id"] == run.instance_id
    record = system.record(run.instance_id)
    assert record["status"] == "COMPLETED"
    assert len(record["grants"]) == 1
    assert record["grants"] == completed["grants"]
    assert record["history"][0]["event_id"] == completed["history"][0]["event_id"]
    assert "ExecutionRequested" not in events(record)[len(completed["history"]) :]


def test_rerun_raises_already_executed_when_asked_to(system: Any, client: Client) -> None:
    run = Run(client, on_refusal="raise")
    run.start()
    system.decide(run.instance_id, "alice", "APPROVE")
    run.resume()
    system.await_record(run.instance_id, {"COMPLETED"})
    before_tools = next(s for s in run.graph.get_state_history(run.config) if s.next == ("tools",))

    with pytest.raises(AlreadyExecuted) as raised:
        run.graph.invoke(None, before_tools.config)

    assert raised.value.instance_id == run.instance_id
    assert raised.value.status == "COMPLETED"
    assert run.tool.runs == [ARGS]


def test_expired_and_withdrawn_calls_never_run(system: Any, client: Client) -> None:
    expiring = Run(client, prefix="shortlived")
    withdrawn = Run(client)
    expiring.start()
    withdrawn.start()
    client.withdraw(withdrawn.instance_id, reason="the incident resolved itself")
    system.await_record(expiring.instance_id, {"EXPIRED"}, timeout=30.0)
    system.await_record(withdrawn.instance_id, {"WITHDRAWN"})

    for run, status in ((expiring, "EXPIRED"), (withdrawn, "WITHDRAWN")):
        [message] = tool_messages(run.resume("approved"))
        assert message.status == "error"
        assert message.artifact["warrant"]["status"] == status
        assert run.tool.runs == []
        assert system.record(run.instance_id)["grants"] == []


def test_a_grant_from_an_earlier_crashed_run_is_never_run_again(
    system: Any, client: Client
) -> None:
    run = Run(client)
    run.start()
    system.decide(run.instance_id, "alice", "APPROVE")
    system.await_record(run.instance_id, {"AUTHORIZED"})
    # An earlier run of the node claimed and died before its tool ran or
    # its report was sent: at most once means the tool is not run now.
    earlier = client.claim(run.instance_id, run.action)

    [message] = tool_messages(run.resume("approved"))

    assert run.tool.runs == []
    assert message.status == "error"
    assert message.artifact["warrant"]["status"] == "EXECUTING"
    record = system.record(run.instance_id)
    assert [g["grant_id"] for g in record["grants"]] == [earlier.grant_id]
    assert record["grants"][0]["report"] is None


def test_two_calls_in_one_message_are_two_instances(system: Any, client: Client) -> None:
    run = Run(client)
    web_args = {**ARGS, "service": "web"}
    web = {"name": TOOL_NAME, "args": web_args, "id": f"{run.call_id}-web", "type": "tool_call"}
    run.graph = build_graph(run.guard, run.tool, run.call_id, ARGS, web)
    web_instance = instance_id_for(run.thread_id, web["id"])

    run.start()
    # ToolNode runs the calls side by side: both are proposed in the first
    # step, even though the step stops at the first interrupt.
    assert system.record(run.instance_id)["proposal"]["action"] == run.action
    assert system.record(web_instance)["proposal"]["action"]["target"] == "staging/web"
    assert run.tool.runs == []
    system.decide(run.instance_id, "alice", "APPROVE")
    system.decide(web_instance, "bob", "REJECT", justification="web stays up")
    system.await_record(web_instance, {"REJECTED"})
    system.await_record(run.instance_id, {"AUTHORIZED"})

    result = run.resume("approved")

    assert run.tool.runs == [ARGS]
    by_id = {m.tool_call_id: m for m in tool_messages(result)}
    assert by_id[run.call_id].status != "error"
    assert by_id[web["id"]].status == "error"
    assert system.await_record(run.instance_id, {"COMPLETED"})["grants"]
    assert system.record(web_instance)["grants"] == []


def test_a_failing_tool_is_reported_failed(system: Any, client: Client) -> None:
    run = Run(client, tool_=Tool(fail="disk full on node-3"))
    run.start()
    system.decide(run.instance_id, "alice", "APPROVE")

    # ToolNode's default error handling lets a tool's own exception through.
    with pytest.raises(RuntimeError, match="disk full on node-3"):
        run.resume()

    assert len(run.tool.runs) == 1
    record = system.await_record(run.instance_id, {"FAILED"})
    [grant] = record["grants"]
    assert grant["report"]["outcome"] == "FAILED"


def test_async_graph_is_guarded_the_same_way(system: Any, client: Client) -> None:
    import asyncio

    run = Run(client)

    async def scenario() -> dict[str, Any]:
        started = await run.graph.ainvoke({"messages": [HumanMessage("restart")]}, run.config)
        paused = only_interrupt(started)
        assert paused["instance_id"] == run.instance_id
        assert run.tool.runs == []
        await asyncio.to_thread(system.decide, run.instance_id, "alice", "APPROVE")
        return await run.graph.ainvoke(Command(resume="approved"), run.config)

    result = asyncio.run(scenario())

    assert run.tool.runs == [ARGS]
    assert tool_messages(result)[0].content == "restarted api (rolling, 3 replicas)"
    assert (
        system.await_record(run.instance_id, {"COMPLETED"})["grants"][0]["report"]["outcome"]
        == "SUCCEEDED"
    )
