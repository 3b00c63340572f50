"""Schemathesis hooks for fuzzing intake: credentials, real instances, signed decisions.

Loaded by the `schemathesis` CLI through ``SCHEMATHESIS_HOOKS=hooks`` (see
``run.py``, which starts the system and writes the fixture file this module
reads from ``WARRANT_FUZZ_FIXTURE``). Without these hooks nearly every
generated request would stop at authentication (401) or at an unknown
instance (404) and the door's real logic would go untested. So:

* ``flatmap_case`` gives each case the credentials its operation needs,
  drawn by Hypothesis so failures shrink and replay: mostly the right kind
  of bearer token, sometimes the wrong kind (403), an unknown token or none
  (401); a path ``id`` that mostly names a real instance (proposed before
  the run or by a proposal earlier in it), with the claim's digest or the
  report's grant id of that instance; and, for decisions, how to sign.
* ``before_call`` signs decisions over the exact bytes sent: an HMAC
  attestation (``X-Warrant-Signature: v1=...``) with a reviewer's secret, or
  an Ed25519 signature with a reviewer's own key over
  ``warrant.decision.v1\\n`` + body (docs/signatures.md), or deliberately
  wrong ones.
* ``after_call`` remembers instances that fuzzed proposals created and
  grants that fuzzed claims obtained, so later cases use them.
"""

from __future__ import annotations

import atexit
import hashlib
import hmac
import json
import os
import threading
import time
import uuid
from typing import Any

import schemathesis
from hypothesis import strategies as st

# What the runner wrote: tokens, reviewer secrets and key, the seeded instances.
_FIXTURE: dict[str, Any] | None = None
_LOCK = threading.Lock()
# Instances known to exist: {"id", "digest", "grant_id"}; grows during the run.
_INSTANCES: list[dict[str, Any]] = []

# A header carrying what flatmap_case drew (credentials, how to sign) to
# before_call; never sent. A case without it comes from a phase that does
# not run generation hooks (coverage, some stateful steps): before_call
# then gives it valid credentials, so those cases reach the real logic too.
MARKER = "X-Fuzz-Choice"

# Which bearer token each operation needs (docs/contract.md §6; reads take any token).
NEEDS = {
    "propose": "service",
    "withdraw": "service",
    "signal": "policy",
    "claim": "executor",
    "report": "executor",
    "queue": "any",
    "record": "any",
    "whoami": "any",
}
WRONG_KIND = {"service": "executor", "policy": "service", "executor": "policy", "any": None}


def fixture() -> dict[str, Any]:
    global _FIXTURE
    with _LOCK:
        if _FIXTURE is None:
            path = os.environ.get("WARRANT_FUZZ_FIXTURE")
            if not path:
                raise RuntimeError("WARRANT_FUZZ_FIXTURE is not set: run tests/schemathesis/run.py")
            with open(path, encoding="utf-8") as handle:
                _FIXTURE = json.load(handle)
            _INSTANCES.extend(_FIXTURE["instances"])
        return _FIXTURE


def instances() -> list[dict[str, Any]]:
    fixture()
    with _LOCK:
        return list(_INSTANCES)


def _operation_id(context: schemathesis.HookContext) -> str | None:
    operation = context.operation
    if operation is None:
        return None
    return operation.definition.raw.get("operationId")


def _credentials(need: str) -> st.SearchStrategy[str | None]:
    """An Authorization value: mostly right, sometimes wrong kind, unknown or none.

    For reads, ``SESSION`` stands for a reviewer's session cookie, opened
    with the reviewer's own key just before the call.
    """
    # Tokens of each kind, the proposer's first; a second service or
    # executor principal makes the fold meet withdrawals and claims by
    # someone other than the proposer or the grant's holder.
    tokens = fixture()["tokens"]
    right = [f"Bearer {token}" for kind, held in tokens.items() if need in ("any", kind) for token in held]
    choices: list[st.SearchStrategy[str | None]] = [st.sampled_from(right)] * 7
    if need == "any":
        choices += [st.just(SESSION)] * 2
    wrong = WRONG_KIND[need]
    if wrong is not None:
        choices.append(st.just(f"Bearer {tokens[wrong][0]}"))
    choices.append(st.just("Bearer not-a-token-anyone-holds"))
    choices.append(st.none())
    return st.one_of(*choices)


SESSION = "session-cookie"


# Operations that may use the instances seeded for claims (reports only
# once a claim got their grant). The others would end them before any claim
# came, since the fuzzer runs one operation after another: a withdrawal, a
# rejection, or a report under a grant never issued (the fold records the
# violation and the instance fails).
USES_RESERVED = ("claim", "record")


def _usable(operation: str | None) -> list[dict[str, Any]]:
    return [
        i
        for i in instances()
        if not i.get("reserved")
        or operation in USES_RESERVED
        or (operation == "report" and i.get("grant_id"))
    ]


def _known_instance(case: schemathesis.Case, operation: str | None) -> st.SearchStrategy[dict[str, Any] | None]:
    """Mostly a real instance; sometimes keep whatever id was generated (None)."""
    known = _usable(operation)
    if not known or "id" not in (case.path_parameters or {}):
        return st.none()
    return st.one_of(*([st.sampled_from(known)] * 5), st.none())


@schemathesis.hook
def flatmap_case(context: schemathesis.HookContext, case: schemathesis.Case) -> Any:
    operation = _operation_id(context)
    if operation == "openSession":
        # Mostly a real challenge signed with the reviewer's key (done in
        # before_call: a challenge is single-use and lives 60 s).
        modes = ["valid"] * 4 + ["wrong-key", "as-generated"]
        return st.sampled_from(modes).map(lambda mode: _marked(case, mode))
    if operation == "decide":
        return st.tuples(
            _known_instance(case, operation),
            st.sampled_from(_signing_modes()),
            st.booleans(),
        ).map(lambda drawn: _decision_case(case, *drawn))
    need = NEEDS.get(operation or "")
    if need is None:
        return st.just(case)
    return st.tuples(_credentials(need), _known_instance(case, operation), st.integers(0, 9)).map(
        lambda drawn: _bearer_case(case, operation, *drawn)
    )


def _marked(case: schemathesis.Case, mode: str) -> schemathesis.Case:
    case.headers = {**(case.headers or {}), MARKER: mode}
    return case


def _bearer_case(
    case: schemathesis.Case,
    operation: str | None,
    authorization: str | None,
    instance: dict[str, Any] | None,
    dice: int,
) -> schemathesis.Case:
    headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
    headers[MARKER] = "none" if authorization is None else authorization
    case.headers = headers
    body = case.body
    proposer = body.get("proposer") if isinstance(body, dict) else None
    if operation == "propose" and isinstance(proposer, dict) and "principal" in proposer and dice < 8:
        # Naming anyone but the token's principal is a 403 (principal_mismatch);
        # mostly leave the name out so proposals reach the door's rules.
        case.body = {**body, "proposer": {k: v for k, v in proposer.items() if k != "principal"}}
    if instance is not None:
        case.path_parameters = {**case.path_parameters, "id": instance["id"]}
        body = case.body
        # Nine times in ten the claim names the digest the instance proposes
        # and the report the grant it got, so the fold's answer is reached;
        # the tenth keeps the generated value (a mismatch the fold refuses).
        if isinstance(body, dict) and dice < 9:
            if operation == "claim" and instance.get("digest"):
                case.body = {**body, "action_digest": instance["digest"]}
            elif operation == "report" and instance.get("grant_id"):
                case.body = {**body, "grant_id": instance["grant_id"]}
    return case


def _signing_modes() -> list[str]:
    """How a decision is signed; weighted toward signatures that verify."""
    reviewers = sorted(fixture()["secrets"])
    valid = [f"hmac:{name}" for name in reviewers] + [f"hmac-hinted:{name}" for name in reviewers]
    valid += ["ed25519"] * len(reviewers)
    return valid * 3 + ["hmac-wrong-secret", "ed25519-wrong-key", "stale", "as-generated"]


SIGNED_ONLY = ("action_digest", "timestamp", "key_id")


def _decision_case(
    case: schemathesis.Case, instance: dict[str, Any] | None, mode: str, same_instance: bool
) -> schemathesis.Case:
    if instance is not None:
        case.path_parameters = {**case.path_parameters, "id": instance["id"]}
    body = case.body
    # The body must repeat the path's instance; mostly make it so, so the
    # request gets past instance_mismatch to the fold.
    if isinstance(body, dict) and same_instance and "id" in case.path_parameters:
        body = {**body, "instance_id": str(case.path_parameters["id"])}
    if isinstance(body, dict) and mode.startswith("ed25519"):
        # A signed body names the digest the reviewer saw and the key.
        digest = (instance or {}).get("digest") or body.get("action_digest") or "0" * 64
        body = {**body, "action_digest": digest, "key_id": fixture()["ed25519"]["key_id"]}
    elif isinstance(body, dict) and mode.startswith("hmac"):
        # The document's oneOf also generates signed bodies; an attested
        # decision has none of their fields.
        body = {k: v for k, v in body.items() if k not in SIGNED_ONLY}
    case.body = body
    return _marked(case, mode)


def _body_bytes(body: Any) -> bytes:
    if isinstance(body, (bytes, bytearray)):
        return bytes(body)  # already raw (the coverage phase sends some bodies so)
    return json.dumps(body, ensure_ascii=False).encode()


def _fallback_instance(case: schemathesis.Case, operation: str | None) -> None:
    """Point a case no strategy drew for at a known instance (keeping the
    body's references to the old id consistent), so it is not only a 404."""
    old = (case.path_parameters or {}).get("id")
    known = _usable(operation)
    if operation == "claim":
        # The coverage phase sends many claims with valid values: aimed at
        # instances left authorized for claims, some are granted.
        known = [i for i in known if i.get("reserved")] or known
    if not isinstance(old, str) or not known or any(i["id"] == old for i in known):
        return
    if not _is_uuid(old):
        return  # a malformed id is what this case tests
    instance = _fallback(case, known)
    case.path_parameters = {**case.path_parameters, "id": instance["id"]}
    body = case.body
    if isinstance(body, dict):
        if body.get("instance_id") == old:
            body = {**body, "instance_id": instance["id"]}
        if operation == "decide" and "action_digest" in body and instance.get("digest"):
            body = {**body, "action_digest": instance["digest"]}
        # A well-formed digest or grant id stands in for the instance's own;
        # a malformed one is what the case tests, so it stays.
        digest = body.get("action_digest")
        if operation == "claim" and isinstance(digest, str) and _is_hex64(digest) and instance.get("digest"):
            body = {**body, "action_digest": instance["digest"]}
        grant = body.get("grant_id")
        if operation == "report" and isinstance(grant, str) and _is_uuid(grant) and instance.get("grant_id"):
            body = {**body, "grant_id": instance["grant_id"]}
        case.body = body


def _is_hex64(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdefABCDEF" for c in text)


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def _fallback(case: schemathesis.Case, choices: list[Any]) -> Any:
    """A choice fixed by the case's content, for cases no strategy drew for."""
    text = repr((case.path_parameters, case.query, case.headers, case.body))
    return choices[int(hashlib.sha256(text.encode()).hexdigest(), 16) % len(choices)]


@schemathesis.hook
def before_call(context: schemathesis.HookContext, case: schemathesis.Case, kwargs: dict[str, Any]) -> None:
    operation = _operation_id(context)
    headers = dict(case.headers or {})
    drawn = headers.pop(MARKER, None)
    case.headers = headers
    if drawn is None:
        _fallback_instance(case, operation)
    if operation == "decide":
        if drawn is None:
            signed_shape = isinstance(case.body, dict) and any(k in case.body for k in SIGNED_ONLY)
            drawn = "ed25519" if signed_shape else _fallback(case, ["hmac:alice", "hmac:bob", "as-generated"])
        _sign_decision(case, kwargs, drawn)
    elif operation == "openSession":
        _open_session_body(case, kwargs, drawn or "valid")
    elif operation in NEEDS:
        if drawn is None:
            need = NEEDS[operation]
            kind = "service" if need == "any" else need
            authorization: str | None = f"Bearer {fixture()['tokens'][kind][0]}"
        else:
            authorization = None if drawn == "none" else drawn
        headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
        if authorization == SESSION:
            case.cookies = {**(case.cookies or {}), "warrant_session": _session_token()}
        elif authorization is not None:
            headers["Authorization"] = authorization
        case.headers = headers


def _sign_decision(case: schemathesis.Case, kwargs: dict[str, Any], mode: str) -> None:
    headers = dict(case.headers or {})
    if mode == "as-generated" or case.media_type != "application/json":
        return
    now = int(time.time())
    timestamp = str(now - 3600 if mode == "stale" else now)
    body = case.body
    if isinstance(body, dict) and mode.startswith("ed25519"):
        # The signed body carries the same timestamp as the header, and the
        # key id (set here too for cases no strategy drew for).
        body = {**body, "timestamp": int(timestamp), "key_id": fixture()["ed25519"]["key_id"]}
        body.setdefault("action_digest", "0" * 64)
        case.body = body
    raw = _body_bytes(body)
    for name in list(headers):
        if name.lower() in ("x-warrant-signature", "x-warrant-timestamp", "x-warrant-reviewer"):
            del headers[name]
    headers["X-Warrant-Timestamp"] = timestamp
    secrets = fixture()["secrets"]
    if mode.startswith("ed25519"):
        headers["X-Warrant-Signature"] = "ed25519=" + _ed25519_sign(
            b"warrant.decision.v1\n" + raw, wrong_key=mode == "ed25519-wrong-key"
        )
    else:
        reviewer = mode.split(":", 1)[1] if ":" in mode else sorted(secrets)[0]
        secret = secrets[reviewer] if mode != "hmac-wrong-secret" else "not-anyone's-secret"
        mac = hmac.new(secret.encode(), timestamp.encode() + b"." + raw, hashlib.sha256)
        headers["X-Warrant-Signature"] = "v1=" + mac.hexdigest()
        if mode.startswith("hmac-hinted:"):
            headers["X-Warrant-Reviewer"] = reviewer
    case.headers = headers
    # Send exactly the bytes signed: the transport's own JSON encoding could differ.
    kwargs["data"] = raw


def _challenge() -> str:
    import requests

    answer = requests.post(f"{fixture()['intake_url']}/v1/sessions/challenge", timeout=10)
    answer.raise_for_status()
    return str(answer.json()["challenge"])


def _session_body(wrong_key: bool = False) -> bytes:
    challenge = _challenge()
    key_id = fixture()["ed25519"]["key_id"]
    message = f"warrant.session.v1\n{challenge}\n{key_id}".encode()
    signature = _ed25519_sign(message, wrong_key=wrong_key)
    return json.dumps({"key_id": key_id, "challenge": challenge, "signature": signature}).encode()


def _open_session_body(case: schemathesis.Case, kwargs: dict[str, Any], mode: str) -> None:
    if mode == "as-generated" or case.media_type != "application/json":
        return
    raw = _session_body(wrong_key=mode == "wrong-key")
    case.body = json.loads(raw)
    kwargs["data"] = raw


_SESSION_TOKEN: list[str] = []


def _session_token() -> str:
    """One session of the key-holding reviewer, opened on first use."""
    import requests

    with _LOCK:
        if _SESSION_TOKEN:
            return _SESSION_TOKEN[0]
    answer = requests.post(
        f"{fixture()['intake_url']}/v1/sessions",
        data=_session_body(),
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    answer.raise_for_status()
    token = answer.cookies.get("warrant_session") or answer.json()["token"]
    with _LOCK:
        _SESSION_TOKEN[:] = [token]
    return token


def _ed25519_sign(message: bytes, wrong_key: bool) -> str:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if wrong_key:
        key = Ed25519PrivateKey.generate()
    else:
        key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(fixture()["ed25519"]["private"]))
    return key.sign(message).hex()


# (operation, status) -> count, written to WARRANT_FUZZ_STATS at exit.
_STATS: dict[str, int] = {}


def _write_stats() -> None:
    path = os.environ.get("WARRANT_FUZZ_STATS")
    if path:
        with _LOCK, open(path, "w", encoding="utf-8") as handle:
            json.dump(_STATS, handle)


atexit.register(_write_stats)


@schemathesis.hook
def after_call(context: schemathesis.HookContext, case: schemathesis.Case, response: Any) -> None:
    operation = _operation_id(context)
    try:
        answer = response.json()
    except ValueError:
        answer = None
    code = answer.get("error", {}).get("code") if isinstance(answer, dict) else None
    with _LOCK:
        key = f"{operation} {response.status_code}" + (f" {code}" if isinstance(code, str) else "")
        _STATS[key] = _STATS.get(key, 0) + 1
    debug = os.environ.get("WARRANT_FUZZ_DEBUG")
    if debug and operation in debug.split(","):
        request = response.request
        with _LOCK, open(os.environ.get("WARRANT_FUZZ_DEBUG_FILE", "/dev/stderr"), "a") as out:
            print(response.status_code, code, dict(request.headers), request.body, answer, file=out)
    if operation not in ("propose", "claim"):
        return
    if not isinstance(answer, dict):
        return
    with _LOCK:
        if operation == "propose" and response.status_code == 202 and "instance_id" in answer:
            if len(_INSTANCES) < 500 and all(i["id"] != answer["instance_id"] for i in _INSTANCES):
                _INSTANCES.append(
                    {"id": answer["instance_id"], "digest": answer.get("action_digest"), "grant_id": None}
                )
        elif operation == "claim" and response.status_code == 201 and "grant_id" in answer:
            for known in _INSTANCES:
                if known["id"] == answer.get("instance_id"):
                    known["grant_id"] = answer["grant_id"]


# Longest record wait a fuzzed read may ask for. A generated wait_ms is
# usually huge and intake honours up to 30 s, which would spend the whole
# time budget on waiting; values up to this bound keep the waiting path
# (including a wait that ends with nothing new) in the run.
MAX_FUZZ_WAIT_MS = 300


@schemathesis.hook("map_query").apply_to(operation_id="record")
def shorter_waits(context: schemathesis.HookContext, query: dict[str, Any] | None) -> Any:
    if isinstance(query, dict) and isinstance(query.get("wait_ms"), int) and query["wait_ms"] > MAX_FUZZ_WAIT_MS:
        query = {**query, "wait_ms": query["wait_ms"] % (MAX_FUZZ_WAIT_MS + 1)}
    return query
