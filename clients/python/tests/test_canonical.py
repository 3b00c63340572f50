"""The action digest and JCS canonical JSON agree with Warrant's Rust implementation."""

from __future__ import annotations

import hashlib
import json
import pathlib
import random

import pytest

from warrant import action_digest, canonical_json

REPO = pathlib.Path(__file__).resolve().parents[3]
VECTORS = json.loads((REPO / "schemas" / "golden" / "vectors.json").read_text())


def test_the_contracts_worked_example():
    action = {
        "kind": "service.restart",
        "target": "prod/payments/api",
        "parameters": {"strategy": "rolling", "reason": "memory leak, p99 > 2s"},
    }
    assert canonical_json(action) == (
        b'{"kind":"service.restart","parameters":{"reason":"memory leak, p99 > 2s",'
        b'"strategy":"rolling"},"target":"prod/payments/api"}'
    )
    assert action_digest(action) == "78a07f2ff9440dd82e55eb205ed9fb4928d80b291b34532957c322406816fdd4"


def test_every_golden_proposal_digest():
    proposals = [
        v["value"]["body"]["ActionProposed"]
        for v in VECTORS
        if v["record"] == "warrant.Envelope" and "ActionProposed" in v["value"]["body"]
    ]
    assert proposals, "the golden vectors hold no ActionProposed"
    for proposed in proposals:
        assert action_digest(proposed["action"]) == proposed["action_digest"]


def test_escapes_like_rust_and_json_stringify():
    # The vector of crates/warrant-authority/src/digest.rs `escapes_like_json_stringify`.
    tricky = {
        "kind": 'k"\\',
        "target": "t\n\u0001\u007fé",
        "parameters": {"\t": "\u2028", "a": "😀"},
    }
    assert canonical_json(tricky).decode() == (
        '{"kind":"k\\"\\\\","parameters":{"\\t":"\u2028","a":"😀"},"target":"t\\n\\u0001\u007fé"}'
    )
    assert action_digest(tricky) == "9578b64234e94c53681384490a34da4e289f0024536885bd8df4daa19b840a47"


def test_keys_sort_by_utf16_code_units_not_code_points():
    # U+FF61 sorts after U+1F600 by code point but before it in UTF-16.
    value = {"\uff61": "2", "\U0001F600": "1"}
    assert canonical_json(value).decode() == '{"\U0001F600":"1","\uff61":"2"}'
    assert json.dumps(value, sort_keys=True, ensure_ascii=False).index("\uff61") < json.dumps(
        value, sort_keys=True, ensure_ascii=False
    ).index("\U0001F600"), "Python's own sort differs here, which is why JCS needs its own"


def test_missing_parameters_digest_as_an_empty_map():
    assert action_digest({"kind": "a.b", "target": "x"}) == hashlib.sha256(
        b'{"kind":"a.b","parameters":{},"target":"x"}'
    ).hexdigest()
    # Only kind, target and parameters are digested.
    assert action_digest({"kind": "a.b", "target": "x", "parameters": {}}) == action_digest(
        {"kind": "a.b", "target": "x"}
    )


@pytest.mark.parametrize(
    ("number", "text"),
    [
        # RFC 8785 appendix B and ECMAScript Number::toString.
        (0.0, "0"),
        (-0.0, "0"),
        (1, "1"),
        (-1.5, "-1.5"),
        (1e21, "1e+21"),
        (1e20, "100000000000000000000"),
        (123e-20, "1.23e-18"),
        (0.000001, "0.000001"),
        (1e-7, "1e-7"),
        (333333333.33333329, "333333333.3333333"),
        (9007199254740991, "9007199254740991"),
        (4.94065645841246544e-324, "5e-324"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
        (0.1 + 0.2, "0.30000000000000004"),
    ],
)
def test_numbers_follow_ecmascript(number, text):
    assert canonical_json(number).decode() == text


def test_values_without_a_canonical_form_are_refused():
    for bad in (float("nan"), float("inf"), 2**53 + 1, "\ud800", {1: "x"}, object()):
        with pytest.raises((ValueError, TypeError)):
            canonical_json(bad)


def test_string_maps_equal_pythons_sorted_compact_json_within_the_bmp():
    # The contract's own cross-check: for string-only objects within the BMP,
    # JCS is json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False).
    rng = random.Random(8785)
    alphabet = "aZ09 /._-\"\\\n\t\u00e9\u2028\u4e2d\x00\x1f\x7f"
    for _ in range(300):
        value = {
            "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 6))): "".join(
                rng.choice(alphabet) for _ in range(rng.randint(0, 8))
            )
            for _ in range(rng.randint(0, 5))
        }
        expected = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert canonical_json(value) == expected.encode()
