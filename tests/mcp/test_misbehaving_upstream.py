"""warrant-mcp in front of an upstream that never answers tools/list, with
--allow-read-only: the read-only check gives up in bounded time and fails
closed (the call is proposed, nothing runs), the client's tools/list is an
error rather than a hang, and SIGTERM stops the gateway although the
client keeps stdio open. Spoken as raw JSON-RPC lines, so the test controls
exactly when stdin closes.

Run: see docs/mcp-gateway.md ("Tests").
"""

from __future__ import annotations

import json
import pathlib
import queue
import shlex
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from conftest import GATEWAY_PRINCIPAL, HERE, SERVER_NAME, gateway_binary, ran


class RawClient:
    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self.answers: dict[int, queue.Queue[dict[str, Any]]] = {}
        self.next_id = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if "id" in message and ("result" in message or "error" in message):
                self.answers.setdefault(message["id"], queue.Queue()).put(message)

    def send(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(message).encode() + b"\n")
        self.process.stdin.flush()

    def request(self, method: str, params: dict[str, Any], timeout: float) -> dict[str, Any]:
        self.next_id += 1
        ident = self.next_id
        answers = self.answers.setdefault(ident, queue.Queue())
        self.send({"jsonrpc": "2.0", "id": ident, "method": method, "params": params})
        return answers.get(timeout=timeout)


def test_a_silent_tools_list_fails_closed_in_bounded_time_and_sigterm_stops(
    system: Any, tmp_path: pathlib.Path, calls_file: pathlib.Path
) -> None:
    tokens = system.tokens[GATEWAY_PRINCIPAL]
    upstream = shlex.join([sys.executable, str(HERE / "silent_upstream.py")])
    log = tmp_path / "gateway.log"
    process = subprocess.Popen(
        [
            str(gateway_binary()),
            f"--intake-url={system.intake_url}",
            f"--server-name={SERVER_NAME}",
            f"--upstream-command={upstream}",
            "--allow-read-only",
            "--max-wait=3s",
            "--call-timeout=3s",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log.open("wb"),
        env={
            "WARRANT_TOKEN": tokens["service"],
            "WARRANT_EXECUTOR_TOKEN": tokens["executor"],
            "UPSTREAM_CALLS_FILE": str(calls_file),
            "RUST_LOG": "warrant_mcp=debug,info",
            "PATH": "/usr/bin:/bin",
        },
    )
    try:
        client = RawClient(process)
        hello = client.request(
            "initialize",
            {"protocolVersion": "2025-06-18", "capabilities": {},
             "clientInfo": {"name": "raw", "version": "0"}},
            timeout=30,
        )
        assert "result" in hello, hello
        client.send({"jsonrpc": "2.0", "method": "notifications/initialized"})

        started = time.monotonic()
        answer = client.request("tools/call", {"name": "status", "arguments": {"probe": 1}}, timeout=20)
        waited = time.monotonic() - started
        result = answer["result"]
        assert result.get("isError") is True, answer
        text = " ".join(block.get("text", "") for block in result["content"])
        # Not taken for read-only: proposed, and --max-wait (which the
        # listing counts against) ran out.
        assert "still awaiting review" in text, text
        assert waited < 10, waited
        assert "is not taken for read-only" in log.read_text()

        listed = client.request("tools/list", {}, timeout=20)
        assert "error" in listed, listed
        assert ran(calls_file) == []

        # stdin stays open: SIGTERM alone must end the process.
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
