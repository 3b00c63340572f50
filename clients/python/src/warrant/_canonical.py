"""RFC 8785 (JCS) canonical JSON and the action digest, as Warrant computes them.

The action digest is the lowercase hex SHA-256 of the JCS form of
``{"kind", "target", "parameters"}`` (docs/contract.md §3). An executor
presents it when it claims, and the fold grants only when it equals the
digest of what was proposed, so this must agree byte for byte with intake.
"""

from __future__ import annotations

import decimal
import hashlib
import math
from typing import Any, Mapping

__all__ = ["canonical_json", "action_digest", "canonical_action"]

# JSON.stringify's short escapes; every other control character is \u00xx.
_SHORT_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
}


def _string(text: str) -> str:
    out = ['"']
    for char in text:
        escaped = _SHORT_ESCAPES.get(char)
        if escaped is not None:
            out.append(escaped)
        elif char < " ":
            out.append(f"\\u{ord(char):04x}")
        elif "\ud800" <= char <= "\udfff":
            # A lone surrogate has no UTF-8 form: no other implementation
            # could hash the same bytes.
            raise ValueError(f"lone surrogate U+{ord(char):04X} cannot be canonicalised")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def _utf16_key(key: str) -> bytes:
    # JCS sorts member names by UTF-16 code units; big-endian UTF-16 bytes
    # compare in exactly that order.
    return key.encode("utf-16-be", "surrogatepass")


def _number(value: float) -> str:
    """ECMAScript Number::toString, which JCS prescribes for every number."""
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"{value!r} has no JSON form")
    if value == 0:
        return "0"  # also -0
    sign = "-" if value < 0 else ""
    # repr gives the shortest digits that round-trip, as ECMAScript requires.
    parsed = decimal.Decimal(repr(abs(value))).normalize().as_tuple()
    digits = "".join(str(d) for d in parsed.digits)
    exponent = int(parsed.exponent)
    k = len(digits)
    n = exponent + k  # value = 0.digits × 10^n
    if k <= n <= 21:
        text = digits + "0" * (n - k)
    elif 0 < n <= 21:
        text = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        text = "0." + "0" * (-n) + digits
    else:
        e = n - 1
        mantissa = digits if k == 1 else digits[0] + "." + digits[1:]
        text = f"{mantissa}e{'+' if e >= 0 else '-'}{abs(e)}"
    return sign + text


def _encode(value: Any, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, str):
        out.append(_string(value))
    elif isinstance(value, int):
        as_float = float(value)
        if int(as_float) != value:
            raise ValueError(f"integer {value} is not exactly representable as an IEEE 754 double")
        out.append(_number(as_float))
    elif isinstance(value, float):
        out.append(_number(value))
    elif isinstance(value, Mapping):
        for key in value:
            if not isinstance(key, str):
                raise TypeError(f"JSON object keys must be strings, not {type(key).__name__}")
        out.append("{")
        for index, key in enumerate(sorted(value, key=_utf16_key)):
            if index:
                out.append(",")
            out.append(_string(key))
            out.append(":")
            _encode(value[key], out)
        out.append("}")
    elif isinstance(value, (list, tuple)):
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            _encode(item, out)
        out.append("]")
    else:
        raise TypeError(f"{type(value).__name__} is not JSON")


def canonical_json(value: Any) -> bytes:
    """The RFC 8785 canonical JSON of `value`, as UTF-8 bytes."""
    out: list[str] = []
    _encode(value, out)
    return "".join(out).encode("utf-8")


def canonical_action(action: Mapping[str, Any]) -> dict[str, Any]:
    """The digested object of an action: exactly kind, target and parameters ({} if absent)."""
    try:
        kind, target = action["kind"], action["target"]
    except KeyError as missing:
        raise ValueError(f"an action needs {missing.args[0]!r}") from None
    parameters = action.get("parameters") or {}
    if not isinstance(kind, str) or not isinstance(target, str):
        raise TypeError("action kind and target must be strings")
    if not isinstance(parameters, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in parameters.items()
    ):
        raise TypeError("action parameters must map strings to strings")
    return {"kind": kind, "target": target, "parameters": dict(parameters)}


def action_digest(action: Mapping[str, Any]) -> str:
    """Lowercase hex SHA-256 of the canonical JSON of {kind, target, parameters}."""
    return hashlib.sha256(canonical_json(canonical_action(action))).hexdigest()
