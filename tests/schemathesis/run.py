"""Fuzz intake's HTTP API with Schemathesis against the document it serves.

Starts the real intake and projector on fresh topics (tests/harness), seeds
instances in several states (awaiting a decision, authorized, granted,
reported, rejected, withdrawn, waiting on a policy signal), writes what the
hooks need (tokens, reviewer secrets and an Ed25519 key, the instances) to
a fixture file, and runs ``schemathesis run`` on ``GET /openapi.json`` with
``hooks.py``. Exits with Schemathesis' exit code: 0 only if no check failed.

    WARRANT_BIN_DIR=target/debug python tests/schemathesis/run.py [schemathesis options]

Extra arguments go to ``schemathesis run`` (e.g. ``--max-examples 200``,
``--seed 1``, ``--include-operation-id decide``). ``WARRANT_FUZZ_EXAMPLES``
sets the examples per operation (default 20, which keeps the CI run near
two minutes on two cores).
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import uuid
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "tests" / "harness"))

from warrant_system import (  # noqa: E402
    DEFAULT_PRINCIPALS_YAML,
    binaries_missing,
    http_json,
    running_system,
)

# The checks the run enforces (the Schemathesis 4 names): no 5xx, and every
# response's status, content type, body and headers as the document says.
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
)

# A reviewer who decides only with their own Ed25519 key (no HMAC secret);
# generated for each run, so nothing here is a key anyone else holds.
KEY_REVIEWER = "dave"


def ed25519_reviewer() -> tuple[str, str, str]:
    """(private hex, public hex, key id) of a fresh key."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes_raw().hex()
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return private, public.hex(), hashlib.sha256(public).hexdigest()[:16]


def principals_with_key(public_hex: str) -> str:
    """The harness's principals with one more reviewer holding only a key."""
    marker = "\ningress:"
    entry = (
        f"  - principal: {KEY_REVIEWER}\n"
        "    roles: [sre, security]\n"
        f'    keys: ["ed25519:{public_hex}"]\n'
    )
    head, tail = DEFAULT_PRINCIPALS_YAML.split(marker, 1)
    return head.rstrip("\n") + "\n" + entry + "\n" + marker.lstrip("\n") + tail


def post(system: Any, path: str, body: dict[str, Any], token: str) -> dict[str, Any]:
    status, answer = http_json(
        "POST",
        f"{system.intake_url}{path}",
        json.dumps(body).encode(),
        {"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    if status not in (201, 202):
        raise RuntimeError(f"seeding: POST {path} -> {status}: {answer}")
    return dict(answer)


def seed(system: Any) -> list[dict[str, Any]]:
    """Instances in the states the fuzzed operations should meet."""
    service = system.tokens["agent:sdk"]["service"]
    executor = system.tokens["agent:sdk"]["executor"]

    def propose(action: dict[str, Any]) -> dict[str, Any]:
        answer = post(system, "/v1/proposals", {"instance_id": str(uuid.uuid4()), "action": action}, service)
        return {"id": answer["instance_id"], "digest": answer["action_digest"], "grant_id": None}

    def restart(target: str) -> dict[str, Any]:
        return propose({"kind": "deploy.restart", "target": target})

    granted = [restart(f"staging/api-{n}") for n in range(2)]  # approved, claimed; the first reported
    authorized = [restart(f"staging/web-{n}") for n in range(6)]  # approved, left for fuzzed claims
    rejected, withdrawn = restart("staging/api-rejected"), restart("staging/api-withdrawn")
    waiting = [restart(f"staging/api-{n}") for n in range(2, 4)]  # awaiting a decision
    flushes = [propose({"kind": "cache.flush", "target": f"{r}/sessions"}) for r in ("eu", "us")]
    others = [
        restart("shortlived/worker"),  # expires while the run goes on
        propose({"kind": "db.migrate", "target": "prod/orders"}),
        propose({"kind": "mcp.tool", "target": "demo/echo", "parameters": {"text": '"hi"'}}),
    ]
    for item in granted + authorized:
        system.decide(item["id"], "alice")
    system.decide(rejected["id"], "bob", verdict="REJECT", justification="not now")
    post(system, f"/v1/instances/{withdrawn['id']}/withdrawal", {"reason": "seeding"}, service)
    system.signal(flushes[0]["id"], "ALLOW")  # authorized by the rule itself, 3 executions
    for item in granted + authorized:
        system.await_record(item["id"], ["AUTHORIZED"])
    for item in authorized:
        item["reserved"] = True  # see hooks.USES_RESERVED
    for item in granted:
        claim = {"action_digest": item["digest"]}
        item["grant_id"] = post(system, f"/v1/instances/{item['id']}/executions", claim, executor)["grant_id"]
    report = {"grant_id": granted[0]["grant_id"], "outcome": "SUCCEEDED"}
    post(system, f"/v1/instances/{granted[0]['id']}/reports", report, executor)
    return granted + authorized + [rejected, withdrawn] + waiting + flushes + others


def print_statuses(path: pathlib.Path) -> None:
    """Requests per operation and status, as the hooks counted them."""
    try:
        stats = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    table: dict[str, dict[str, int]] = {}
    for key, count in stats.items():
        operation, status = key.split(" ", 1)
        table.setdefault(operation, {})[status] = count
    print(f"\nrequests by operation and status ({sum(stats.values())} in all):")
    for operation in sorted(table):
        statuses = ", ".join(f"{s} {n}" for s, n in sorted(table[operation].items()))
        print(f"  {operation:<17} {statuses}")


def main(argv: list[str]) -> int:
    reason = binaries_missing()
    if reason is not None:
        print(f"schemathesis run: {reason}", file=sys.stderr)
        return 2
    private, public, key_id = ed25519_reviewer()
    with tempfile.TemporaryDirectory(prefix="warrant-schemathesis-") as scratch:
        workdir = pathlib.Path(scratch)
        with running_system(workdir, principals_yaml=principals_with_key(public)) as system:
            instances = seed(system)
            tokens = {
                "service": [system.tokens[p]["service"] for p in ("agent:sdk", "gateway:mcp")],
                "executor": [system.tokens[p]["executor"] for p in ("agent:sdk", "gateway:mcp")],
                "policy": [system.tokens["policy"]],
            }
            fixture = {
                "tokens": tokens,
                "secrets": system.reviewer_secrets,
                "ed25519": {"private": private, "key_id": key_id, "reviewer": KEY_REVIEWER},
                "instances": instances,
                "intake_url": system.intake_url,
            }
            fixture_path = workdir / "fixture.json"
            fixture_path.write_text(json.dumps(fixture))
            env = {
                **os.environ,
                "WARRANT_FUZZ_FIXTURE": str(fixture_path),
                "SCHEMATHESIS_HOOKS": "hooks",
                "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
            }
            command = [
                str(pathlib.Path(sys.executable).parent / "schemathesis"),
                "--config-file",
                str(HERE / "schemathesis.toml"),
                "run",
                f"{system.intake_url}/openapi.json",
                f"--url={system.intake_url}",
                f"--checks={','.join(CHECKS)}",
                f"--max-examples={os.environ.get('WARRANT_FUZZ_EXAMPLES', '20')}",
                *argv,
            ]
            stats_path = workdir / "stats.json"
            env["WARRANT_FUZZ_STATS"] = str(stats_path)
            completed = subprocess.run(command, env=env, cwd=workdir)
            print_statuses(stats_path)
            if completed.returncode != 0:
                for name, log in system.logs.items():
                    print(f"---- {name} log: {log} (kept until exit) ----", file=sys.stderr)
                    print("\n".join(log.read_text(errors="replace").splitlines()[-40:]), file=sys.stderr)
            return completed.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
