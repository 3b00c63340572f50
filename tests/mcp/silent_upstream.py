"""A raw stdio MCP upstream for tests/mcp/test_misbehaving_upstream.py: it
completes the handshake and answers tools/call, but never answers
tools/list. Each tools/call is appended to UPSTREAM_CALLS_FILE as upstream_server.py does."""

import json
import os
import sys


def send(message: dict) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


for line in sys.stdin:
    if not line.strip():
        continue
    message = json.loads(line)
    ident, method = message.get("id"), message.get("method")
    if method == "initialize":
        send({"jsonrpc": "2.0", "id": ident, "result": {
            "protocolVersion": message["params"]["protocolVersion"],
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "silent", "version": "0"}}})
    elif method == "tools/list":
        continue  # never answered
    elif method == "tools/call":
        calls = os.environ.get("UPSTREAM_CALLS_FILE")
        if calls:
            with open(calls, "a") as out:
                params = message["params"]
                out.write(json.dumps({"tool": params["name"],
                                      "arguments": params.get("arguments")}) + "\n")
        send({"jsonrpc": "2.0", "id": ident, "result": {
            "content": [{"type": "text", "text": "ran " + message["params"]["name"]}]}})
    elif ident is not None:
        send({"jsonrpc": "2.0", "id": ident, "result": {}})
