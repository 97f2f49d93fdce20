"""The one byte representation of a measurement that signatures and hashes cover.

Signing needs every JSON value to have exactly one serialisation, so a report
line is written, signed and hashed as its RFC 8785 JSON Canonicalization Scheme
(JCS) form. This module writes that form with the standard library's C JSON
encoder where that provably agrees with the ``rfc8785`` package (almost always),
with ``rfc8785`` elsewhere, and adds the strict JSON reader the verifier uses.
It refuses, with :class:`CanonicalizationError` naming the offending field,
everything JCS cannot represent exactly instead of coercing it: NaN and
infinities, integers outside +/-(2**53 - 1) (JSON numbers are IEEE doubles,
RFC 8785 section 3.2.2.3), lone surrogates, non-string keys, and any Python
type that is not dict, list, tuple, str, int, float, bool or None.
"""

from __future__ import annotations

import json
import math
from typing import Any

import rfc8785

#: The largest magnitude an integer may have; beyond it a double loses precision.
MAX_SAFE_INTEGER = 2**53 - 1


class CanonicalizationError(ValueError):
    """A value has no RFC 8785 form; ``path`` says where (e.g. ``test_keys.queries[2].t``)."""

    def __init__(self, reason: str, path: str = "") -> None:
        self.reason = reason
        self.path = path
        where = f"{path}: " if path else ""
        super().__init__(f"cannot canonicalise {where}{reason}")


class JsonSyntaxError(ValueError):
    """Bytes that are not one strict JSON text (see :func:`parse_json_strict`)."""


def canonical_bytes(obj: Any) -> bytes:
    """Return the RFC 8785 (JCS) serialisation of ``obj`` as UTF-8 bytes.

    Raises :class:`CanonicalizationError` for values JCS cannot represent.
    """
    try:
        return _fast_canonical_bytes(obj)
    except _NotPlain:
        pass  # something unusual: the reference implementation says what
    try:
        return rfc8785.dumps(obj)
    except rfc8785.CanonicalizationError as error:
        raise _locate(obj, str(error)) from error
    except RecursionError as error:
        raise CanonicalizationError("nested too deeply") from error


class _NotPlain(Exception):
    """A value the fast path does not handle exactly like ``rfc8785``."""


# The standard library's C encoder writes what RFC 8785 asks for whenever
# _plain() lets a value through: strings escaped exactly as JCS says
# (section 3.2.2.2: \b \f \n \r \t \" \\, other controls as lowercase \u00xx,
# everything else as is), integers as digits, and members sorted by code point,
# which is the UTF-16 order JCS requires (section 3.2.3) as long as no key has a
# character beyond U+FFFF. Floats are where Python and ECMAScript differ (1.0,
# 1e-05, 1e+16): integral ones become ints, those whose repr is already the
# ECMAScript form stay, and any other sends the whole value to ``rfc8785``.
_ENCODER = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, sort_keys=True, separators=(",", ":")
)


def _fast_canonical_bytes(obj: Any) -> bytes:
    try:
        text = _ENCODER.encode(_plain(obj))
        return text.encode("utf-8")
    except (UnicodeEncodeError, RecursionError, ValueError, TypeError):
        raise _NotPlain from None  # a lone surrogate, too deep, ...


def _plain(value: Any) -> Any:
    """``value`` with floats in their ECMAScript form; raises _NotPlain otherwise."""
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return value
    if isinstance(value, str):  # a StrEnum member (a verdict, a check): its string
        return str.__str__(value)
    if kind is int:
        if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            return value
        raise _NotPlain
    if kind is float:
        if value.is_integer():
            if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
                return int(value)  # 3.0 -> "3", -0.0 -> "0" (section 3.2.2.3)
        elif 1e-4 <= abs(value) < 1e16:
            return value  # repr() has no exponent here and is the shortest round trip
        raise _NotPlain
    if kind is dict:
        copied = None
        for key, item in value.items():
            if type(key) is not str or not (key.isascii() or max(key) <= "\uffff"):
                raise _NotPlain
            plain = _plain(item)
            if plain is not item:
                if copied is None:
                    copied = dict(value)
                copied[key] = plain
        return value if copied is None else copied
    if kind is list or kind is tuple:
        changed = None
        for index, item in enumerate(value):
            plain = _plain(item)
            if plain is not item:
                if changed is None:
                    changed = list(value)
                changed[index] = plain
        return value if changed is None else changed
    raise _NotPlain


def _locate(obj: Any, fallback: str) -> CanonicalizationError:
    """Find the first value under ``obj`` that JCS rejects, to name it in the error."""
    stack: list[tuple[str, Any]] = [("", obj)]
    while stack:
        path, value = stack.pop()
        reason = _scalar_problem(value)
        if reason:
            return CanonicalizationError(reason, path or "(top level)")
        if isinstance(value, dict):
            children = []
            for key, child in value.items():
                if not isinstance(key, str):
                    return CanonicalizationError(
                        f"object key {key!r} is not a string", path or "(top level)"
                    )
                key_problem = _string_problem(key)
                if key_problem:
                    return CanonicalizationError(f"object key {key_problem}", path or "(top level)")
                children.append((f"{path}.{key}" if path else key, child))
            stack.extend(reversed(children))
        elif isinstance(value, (list, tuple)):
            stack.extend(reversed([(f"{path}[{i}]", child) for i, child in enumerate(value)]))
    return CanonicalizationError(fallback)


def _scalar_problem(value: Any) -> str:
    if value is None or isinstance(value, (bool, dict, list, tuple)):
        return ""
    if isinstance(value, int):
        if abs(value) > MAX_SAFE_INTEGER:
            return (
                f"integer {value} is outside +/-(2**53 - 1), which JSON numbers cannot hold "
                "exactly; store it as a string"
            )
        return ""
    if isinstance(value, float):
        if not math.isfinite(value):
            return f"{value} is not a finite number; JSON has no NaN or infinity (use null)"
        return ""
    if isinstance(value, str):
        return _string_problem(value)
    return f"a {type(value).__name__} is not a JSON value"


def _string_problem(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "string contains a lone surrogate, which is not valid Unicode"
    return ""


def parse_json_strict(data: bytes) -> Any:
    """Parse one JSON text from UTF-8 ``data``, more strictly than :func:`json.loads`.

    Rejects invalid UTF-8, duplicate object keys (two parsers may keep different
    ones, so what was verified would not be what a reader sees), the non-JSON
    constants NaN/Infinity, numbers that overflow a double, and nesting deep enough
    to exhaust the stack. Integers beyond +/-(2**53 - 1) are read as doubles, as
    RFC 8785 reads every number. Raises :class:`JsonSyntaxError` with a short reason.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise JsonSyntaxError(f"not valid UTF-8 (byte {error.start})") from None
    try:
        return json.loads(
            text,
            object_pairs_hook=_no_duplicate_keys,
            parse_constant=_no_constant,
            parse_float=_finite_float,
            parse_int=_integer_or_double,
        )
    except json.JSONDecodeError as error:
        raise JsonSyntaxError(f"{error.msg} (column {error.colno})") from None
    except RecursionError:
        raise JsonSyntaxError("nested too deeply") from None


def _integer_or_double(text: str) -> int | float:
    # JCS numbers are doubles: the signer writes the float 1e20 as
    # "100000000000000000000", which must read back as that double, not as an
    # integer JCS has no form for. An integer a double cannot hold exactly reads
    # back as the nearest double, whose canonical form then differs from the line.
    if len(text) > 400:
        raise JsonSyntaxError(f"number {text[:40]}... is too long")
    value = int(text)
    if abs(value) <= MAX_SAFE_INTEGER:
        return value
    return _finite_float(text)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise JsonSyntaxError(f"duplicate object key {key!r}")
        result[key] = value
    return result


def _no_constant(name: str) -> Any:
    raise JsonSyntaxError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JsonSyntaxError(f"number {text[:40]} is too large for a double")
    return value
