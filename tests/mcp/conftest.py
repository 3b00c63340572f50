"""Fixtures for warrant-mcp's end-to-end tests: a real Warrant (the shared
harness: fresh topics, intake, projector), and a way to open an MCP client
session on a `warrant-mcp` process that fronts ``upstream_server.py``.

Binaries: ``WARRANT_MCP_BIN`` (default ``$CARGO_TARGET_DIR/debug/warrant-mcp``)
and the harness's ``WARRANT_BIN_DIR`` for intake, projector and replay.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import shlex
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Iterator

import pytest

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "tests" / "harness"))

from warrant_system import binaries_missing, running_system  # noqa: E402

SERVER_NAME = "demo"
GATEWAY_PRINCIPAL = "gateway:mcp"


def gateway_binary() -> pathlib.Path:
    explicit = os.environ.get("WARRANT_MCP_BIN")
    if explicit:
        return pathlib.Path(explicit)
    target = os.environ.get("CARGO_TARGET_DIR")
    base = pathlib.Path(target) if target else REPO / "target"
    return base / "debug" / "warrant-mcp"


def jcs(value: Any) -> str:
    """RFC 8785 text of the plain values these tests send (strings, small
    integers, short decimals, objects, lists): for them it is Python's sorted,
    compact JSON with non-ASCII kept as it is."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def action_for(tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": "mcp.tool",
        "target": f"{SERVER_NAME}/{tool}",
        "parameters": {name: jcs(value) for name, value in arguments.items()},
    }


def action_digest(action: dict[str, Any]) -> str:
    return hashlib.sha256(jcs(action).encode()).hexdigest()


def instance_id(tool: str, arguments: dict[str, Any], epoch: int = 0) -> str:
    """The gateway's id for this call at `epoch`, computed independently
    (docs/mcp-gateway.md): SHA-256 over length-prefixed parts, first 16
    bytes, with the UUID version 4 and variant bits set."""
    digest = hashlib.sha256()
    for part in ("warrant-mcp.instance.v1", jcs(action_for(tool, arguments)), str(epoch)):
        data = part.encode()
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    raw = bytearray(digest.digest()[:16])
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    return str(uuid.UUID(bytes=bytes(raw)))


@dataclass
class Gateway:
    """One running warrant-mcp with a connected MCP client session."""

    session: Any
    pid: int
    log: pathlib.Path
    progress: list[tuple[float, str | None]] = field(default_factory=list)

    async def call(self, tool: str, arguments: dict[str, Any], timeout: float = 90.0) -> Any:
        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            self.progress.append((progress, message))

        return await self.session.call_tool(
            tool, arguments, read_timeout_seconds=timeout, progress_callback=on_progress
        )

    def kill(self) -> None:
        """SIGKILL: no graceful stop, as a crash would be."""
        os.kill(self.pid, signal.SIGKILL)


def _gateway_pids(marker: str) -> set[int]:
    """Pids of warrant-mcp processes whose command line holds `marker`
    (each test system's intake URL is unique, so only this test's)."""
    pids = set()
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"warrant-mcp") and marker.encode() in b" ".join(argv):
            pids.add(int(entry.name))
    return pids


@contextlib.asynccontextmanager
async def open_gateway(
    system: Any,
    workdir: pathlib.Path,
    calls_file: pathlib.Path,
    *flags: str,
    upstream_url: str | None = None,
) -> AsyncIterator[Gateway]:
    """A warrant-mcp on stdio in front of upstream_server.py, run as its child
    (or reached at `upstream_url`), with an initialized client session."""
    from mcp.client.session import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client

    if upstream_url is None:
        command = shlex.join([sys.executable, str(HERE / "upstream_server.py")])
        upstream = f"--upstream-command={command}"
    else:
        upstream = f"--upstream-url={upstream_url}"
    tokens = system.tokens[GATEWAY_PRINCIPAL]
    args = [
        f"--intake-url={system.intake_url}",
        f"--server-name={SERVER_NAME}",
        upstream,
        "--progress-interval=1s",
        *flags,
    ]
    env = {
        "WARRANT_TOKEN": tokens["service"],
        "WARRANT_EXECUTOR_TOKEN": tokens["executor"],
        "UPSTREAM_CALLS_FILE": str(calls_file),
        "RUST_LOG": "warrant_mcp=debug,info",
    }
    log = workdir / f"gateway-{uuid.uuid4().hex[:8]}.log"
    before = _gateway_pids(system.intake_url)
    with log.open("w") as errlog:
        params = StdioServerParameters(command=str(gateway_binary()), args=args, env=env)
        async with stdio_client(params, errlog=errlog) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                started = _gateway_pids(system.intake_url) - before
                assert len(started) == 1, f"expected one new warrant-mcp process, found {started}"
                yield Gateway(session=session, pid=started.pop(), log=log)


@contextlib.contextmanager
def http_gateway(
    system: Any, workdir: pathlib.Path, calls_file: pathlib.Path, *flags: str
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """warrant-mcp serving streamable HTTP (--listen); yields (MCP URL, process)."""
    port = free_port()
    upstream = shlex.join([sys.executable, str(HERE / "upstream_server.py")])
    tokens = system.tokens[GATEWAY_PRINCIPAL]
    env = {
        **os.environ,
        "WARRANT_TOKEN": tokens["service"],
        "WARRANT_EXECUTOR_TOKEN": tokens["executor"],
        "UPSTREAM_CALLS_FILE": str(calls_file),
        "RUST_LOG": "warrant_mcp=debug,info",
    }
    log = workdir / f"gateway-http-{uuid.uuid4().hex[:8]}.log"
    with log.open("wb") as errlog:
        process = subprocess.Popen(
            [
                str(gateway_binary()),
                f"--intake-url={system.intake_url}",
                f"--server-name={SERVER_NAME}",
                f"--upstream-command={upstream}",
                f"--listen=127.0.0.1:{port}",
                "--progress-interval=1s",
                *flags,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=errlog,
            env=env,
        )
    try:
        await_port(port, process, log)
        yield f"http://127.0.0.1:{port}/mcp", process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def await_port(port: int, process: subprocess.Popen[bytes], log: pathlib.Path) -> None:
    import socket

    deadline = time.monotonic() + 20
    while True:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"nothing listens on {port}:\n{log.read_text()}")
        time.sleep(0.05)


@contextlib.contextmanager
def http_upstream(workdir: pathlib.Path, calls_file: pathlib.Path) -> Iterator[str]:
    """upstream_server.py over streamable HTTP; yields its MCP URL."""
    port = free_port()
    log = workdir / "upstream-http.log"
    with log.open("wb") as errlog:
        process = subprocess.Popen(
            [sys.executable, str(HERE / "upstream_server.py"), "--http", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=errlog,
            stderr=errlog,
            env={**os.environ, "UPSTREAM_CALLS_FILE": str(calls_file)},
        )
    try:
        await_port(port, process, log)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        if process.poll() is None:
            process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def ran(calls_file: pathlib.Path, tool: str | None = None) -> list[dict[str, Any]]:
    """What the upstream ran, in order (optionally of one tool)."""
    if not calls_file.exists():
        return []
    lines = [json.loads(line) for line in calls_file.read_text().splitlines() if line.strip()]
    return [line for line in lines if tool is None or line["tool"] == tool]


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Any:
    reason = binaries_missing()
    if reason is not None:
        pytest.skip(reason)
    if not gateway_binary().is_file():
        pytest.skip(f"warrant-mcp not built at {gateway_binary()} (cargo build -p warrant-mcp)")
    workdir = tmp_path_factory.mktemp("warrant")
    with running_system(workdir) as running:
        yield running
        # Every instance the tests made, folded again by replay, matches the
        # projector entry by entry.
        running.replay_verify()


@pytest.fixture
def calls_file(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "upstream-calls.jsonl"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
