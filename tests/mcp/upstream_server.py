"""A small upstream MCP server (stdio) for warrant-mcp's end-to-end tests.

Every call that reaches a tool is appended as one JSON line to the file named
by ``UPSTREAM_CALLS_FILE``, with the arguments exactly as the tool received
them, so a test can see what ran (and that nothing ran).

Tools:

- ``restart(service, strategy)``: pretends to restart a service.
- ``fail(reason)``: always fails (a tool error result).
- ``status()``: read-only (``readOnlyHint: true``), reports that all is well.

Served over stdio, or over streamable HTTP with ``--http PORT``.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ToolAnnotations

server = MCPServer("warrant-mcp-test-upstream")


def _record(tool: str, arguments: dict[str, Any]) -> None:
    path = os.environ.get("UPSTREAM_CALLS_FILE")
    if not path:
        return
    line = json.dumps({"tool": tool, "arguments": arguments, "pid": os.getpid()}, ensure_ascii=False)
    # One write per line, appended: concurrent upstream processes (a killed
    # gateway's and its successor's) never interleave inside a line.
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line + "\n")


@server.tool(annotations=ToolAnnotations(readOnlyHint=False, destructiveHint=True))
def restart(service: str, strategy: Any = None) -> str:
    """Restart a service with the given strategy."""
    _record("restart", {"service": service, "strategy": strategy})
    return f"restarted {service}"


@server.tool(annotations=ToolAnnotations(readOnlyHint=False))
def fail(reason: str) -> str:
    """Always fails, with the given reason."""
    _record("fail", {"reason": reason})
    raise ToolError(f"upstream refused: {reason}")


@server.tool(annotations=ToolAnnotations(readOnlyHint=True))
def status() -> str:
    """Report the state of every service (read-only)."""
    _record("status", {})
    return "all services up"


if __name__ == "__main__":
    # `--http PORT`: streamable HTTP on 127.0.0.1:PORT/mcp instead of stdio.
    if len(sys.argv) == 3 and sys.argv[1] == "--http":
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run("stdio")
