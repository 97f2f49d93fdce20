"""A second, minimal verifier for signed reports, written from docs/signing.md alone.

It shares no code with probe (no ``import probe``): its own RFC 8785
canonicalisation for the JSON a report can hold, its own parsing, chain and
attestation rules. Only Ed25519 itself comes from ``cryptography``. If the two
verifiers ever disagree, either the document or one of them is wrong.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
import math
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

LINE_PREFIX = b"probe/report-line/v1\n"
CONTROL_PREFIX = b"probe/control-response/v1\n"
LINE_MEMBERS = {"version", "alg", "key_id", "public_key", "run", "seq", "prev", "value"}
CONTROL_MEMBERS = {"version", "alg", "key_id", "public_key", "value"}


class Invalid(Exception):
    pass


# ---- RFC 8785 ------------------------------------------------------------- #


def jcs(value: Any) -> bytes:
    return _jcs(value).encode("utf-8")


def _jcs(value: Any) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        if abs(value) > 2**53 - 1:
            raise Invalid("integer outside the IEEE double range")
        return str(value)
    if isinstance(value, float):
        return _es_number(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list):
        return "[" + ",".join(_jcs(v) for v in value) + "]"
    if isinstance(value, dict):
        members = sorted(value.items(), key=lambda kv: kv[0].encode("utf-16-be"))
        return "{" + ",".join(_string(k) + ":" + _jcs(v) for k, v in members) + "}"
    raise Invalid(f"not JSON: {type(value).__name__}")


def _string(text: str) -> str:
    out = ['"']
    for char in text:
        if char == '"':
            out.append('\\"')
        elif char == "\\":
            out.append("\\\\")
        elif ord(char) < 0x20:
            short = {"\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}
            out.append(short.get(char, f"\\u{ord(char):04x}"))
        elif 0xD800 <= ord(char) <= 0xDFFF:
            raise Invalid("lone surrogate in string")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def _es_number(number: float) -> str:
    """ECMAScript Number.prototype.toString for a finite double."""
    if not math.isfinite(number):
        raise Invalid("NaN or infinity")
    if number == 0:
        return "0"
    if number < 0:
        return "-" + _es_number(-number)
    # repr() is the shortest string that round-trips, as ECMAScript requires.
    _, digit_tuple, exponent = Decimal(repr(number)).normalize().as_tuple()
    digits = "".join(map(str, digit_tuple))
    k = len(digits)
    n = exponent + k  # value = 0.digits * 10**n
    if k <= n <= 21:
        return digits + "0" * (n - k)
    if 0 < n <= 21:
        return digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return "0." + "0" * (-n) + digits
    e = n - 1
    mantissa = digits if k == 1 else digits[0] + "." + digits[1:]
    return f"{mantissa}e{'+' if e > 0 else '-'}{abs(e)}"


# ---- encodings ------------------------------------------------------------ #


def _b64(text: Any, length: int) -> bytes:
    if not isinstance(text, str):
        raise Invalid("base64 field is not a string")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise Invalid("bad base64") from None
    if len(raw) != length or base64.b64encode(raw).decode("ascii") != text:
        raise Invalid("base64 of the wrong length or not canonical")
    return raw


def _hex(text: Any, length: int) -> bool:
    return isinstance(text, str) and len(text) == length and set(text) <= set("0123456789abcdef")


# ---- Ed25519 public keys (RFC 8032 section 5.1) ----------------------------- #

P = 2**255 - 19
D = (-121665 * pow(121666, -1, P)) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)


def _decode_point(raw: bytes) -> tuple[int, int]:
    """RFC 8032 5.1.3, refusing what it says must fail (y >= p, x = 0 with the sign bit)."""
    value = int.from_bytes(raw, "little")
    y, sign = value & ((1 << 255) - 1), value >> 255
    if y >= P:
        raise Invalid("public key: y is not below p")
    u, v = (y * y - 1) % P, (D * y * y + 1) % P
    x = u * pow(v, 3, P) * pow(u * pow(v, 7, P), (P - 5) // 8, P) % P
    if v * x * x % P == (-u) % P:
        x = x * SQRT_M1 % P
    if v * x * x % P != u:
        raise Invalid("public key is not a curve point")
    if x == 0 and sign:
        raise Invalid("public key: x is 0 but its sign bit is set")
    if x & 1 != sign:
        x = P - x
    return x, y


def _small_order(point: tuple[int, int]) -> bool:
    """8P = identity? Three doublings in projective coordinates (no inversions)."""
    x, y, z = point[0], point[1], 1
    for _ in range(3):
        b, c, d = (x + y) ** 2 % P, x * x % P, y * y % P
        f = (d - c) % P  # a = -1: E = -C, F = E + D
        j = (f - 2 * z * z) % P
        x, y, z = (b - c - d) * j % P, f * (-c - d) % P, f * j % P
    return x == 0 and y == z


@functools.lru_cache(maxsize=256)
def check_public_key(raw: bytes) -> None:
    """Refuse keys that are not canonical or whose point has small order (8A = identity)."""
    if _small_order(_decode_point(raw)):
        raise Invalid("public key has small order")


def check_r(signature: bytes) -> None:
    """Refuse a signature whose R is a small-order point (as libsodium does)."""
    try:
        point = _decode_point(signature[:32])
    except Invalid:
        return  # not a point: the signature check itself fails
    if _small_order(point):
        raise Invalid("signature R has small order")


def key_id_of(public_key_raw: bytes) -> str:
    return hashlib.sha256(public_key_raw).hexdigest()[:16]


def _check_signature(obj: dict, members: set[str], prefix: bytes) -> dict:
    signature = obj.get("signature")
    if not isinstance(signature, dict) or set(signature) != members:
        raise Invalid("signature object missing or with wrong members")
    if signature["version"] != 1 or signature["version"] is True or signature["alg"] != "ed25519":
        raise Invalid("unsupported version or algorithm")
    public_key = _b64(signature["public_key"], 32)
    check_public_key(public_key)
    value = _b64(signature["value"], 64)
    check_r(value)
    if signature["key_id"] != key_id_of(public_key):
        raise Invalid("key_id is not the key id of public_key")
    unsigned = dict(obj)
    unsigned["signature"] = {k: v for k, v in signature.items() if k != "value"}
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(value, prefix + jcs(unsigned))
    except InvalidSignature:
        raise Invalid("bad signature") from None
    return signature


def _trusted(signature: dict, trusted: set[str] | None) -> bool:
    return trusted is None or bool({signature["public_key"], signature["key_id"]} & trusted)


# ---- the file ------------------------------------------------------------- #


@dataclass
class Result:
    problems: list[tuple[int, str]] = field(default_factory=list)
    warnings: list[tuple[int, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def parse_line(line: bytes) -> Any:
    def pairs(items: list) -> dict:
        if len({k for k, _ in items}) != len(items):
            raise Invalid("duplicate member name")
        return dict(items)

    def constant(name: str) -> Any:
        raise Invalid(f"{name} is not JSON")

    def number(text: str) -> int | float:  # every JSON number is a double (RFC 8785)
        if len(text) > 400:
            raise Invalid("number too long")
        return int(text) if abs(int(text)) <= 2**53 - 1 else float(text)

    try:
        return json.loads(
            line.decode("utf-8"),
            object_pairs_hook=pairs,
            parse_constant=constant,
            parse_int=number,
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise Invalid(f"not JSON: {error}") from None


def verify(
    data: bytes,
    trusted_keys: set[str] | None = None,
    trusted_control_keys: set[str] | None = None,
) -> Result:
    result = Result()
    if not data:
        result.problems.append((0, "empty file"))
        return result
    lines = data.split(b"\n")
    if lines[-1] != b"":
        result.problems.append((len(lines), "file does not end with LF"))
    else:
        lines.pop()
    runs: dict[str, list[tuple[int, dict, str]]] = {}
    seen_lines: dict[bytes, int] = {}
    seen_uids: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        try:
            if not line:
                raise Invalid("empty line")
            record = parse_line(line)
            if not isinstance(record, dict):
                raise Invalid("not an object")
            claimed = record.get("signature")
            sealed = isinstance(claimed, dict) and "seal" in claimed
            members = LINE_MEMBERS | {"seal"} if sealed else LINE_MEMBERS
            signature = _check_signature(record, members, LINE_PREFIX)
            if jcs(record) != line:
                raise Invalid("line is not the JCS form of its record")
            if not (_hex(signature["run"], 32) and isinstance(signature["seq"], int)):
                raise Invalid("bad run or seq")
            if isinstance(signature["seq"], bool) or signature["seq"] < 0:
                raise Invalid("bad seq")
            if (signature["seq"] == 0) != (signature["prev"] is None):
                raise Invalid("prev must be null exactly when seq is 0")
            if signature["prev"] is not None and not _hex(signature["prev"], 64):
                raise Invalid("bad prev")
            if not _trusted(signature, trusted_keys):
                raise Invalid("key not trusted")
            if "end_of_run" in record:
                raise Invalid("end-of-run record: the earlier format, not a measurement")
            if sealed:
                seal = signature["seal"]
                if (
                    not isinstance(seal, dict)
                    or set(seal) != {"measurements", "interrupted"}
                    or not isinstance(seal["interrupted"], bool)
                    or type(seal["measurements"]) is not int
                    or seal["measurements"] != signature["seq"] + 1
                ):
                    raise Invalid("bad seal")
            uid = record.get("measurement_uid")
            if not (isinstance(uid, str) and 0 < len(uid) <= 200
                    and all(0x21 <= ord(c) <= 0x7E for c in uid)):
                raise Invalid("measurement_uid is not 1-200 visible ASCII characters")
            _check_attestations(record, trusted_control_keys)
        except Invalid as error:
            result.problems.append((number, str(error)))
            continue
        if line in seen_lines:
            result.problems.append((number, f"same as line {seen_lines[line]}"))
            continue
        seen_lines[line] = number
        if seen_uids.setdefault(uid, number) != number:
            result.problems.append((number, f"measurement_uid also at line {seen_uids[uid]}"))
        runs.setdefault(signature["run"], []).append(
            (number, record, hashlib.sha256(line).hexdigest())
        )
    for records in runs.values():
        _check_chain(records, result)
    result.problems.sort()
    return result


def _check_attestations(record: dict, trusted: set[str] | None) -> None:
    test_keys = record.get("test_keys")
    if not isinstance(test_keys, dict) or test_keys.get("control") is None:
        return
    control = test_keys["control"]
    if not isinstance(control, dict) or "attestation" not in control:
        if trusted is not None:
            raise Invalid("control data without an attestation")
        return
    attestations = control["attestation"]
    if attestations == []:
        raise Invalid("empty list of control attestations")
    for attestation in attestations if isinstance(attestations, list) else [attestations]:
        if not isinstance(attestation, dict) or set(attestation) != {"response", "signature"}:
            raise Invalid("control attestation is not exactly response and signature")
        try:
            signature = _check_signature(attestation, CONTROL_MEMBERS, CONTROL_PREFIX)
        except Invalid as error:
            raise Invalid(f"control attestation: {error}") from None
        if not _trusted(signature, trusted):
            raise Invalid("control attestation: key not trusted")


def _check_chain(records: list[tuple[int, dict, str]], result: Result) -> None:
    previous: tuple[int, dict, str] | None = None
    for number, record, line_hash in records:
        signature = record["signature"]
        if previous is not None and "seal" in previous[1]["signature"]:
            result.problems.append((number, "record after the sealed record"))
            continue  # the sealed record stays the run's last
        if previous is None:
            if signature["seq"] != 0:
                result.problems.append((number, "run does not start at seq 0: head missing"))
        else:
            previous_signature = previous[1]["signature"]
            if previous_signature["public_key"] != signature["public_key"]:
                result.problems.append((number, "key changes within the run"))
            if signature["seq"] <= previous_signature["seq"]:
                result.problems.append((number, "seq goes backwards: lines reordered"))
                continue
            if signature["seq"] != previous_signature["seq"] + 1:
                result.problems.append((number, "seq skips: line(s) missing"))
            elif signature["prev"] != previous[2]:
                result.problems.append((number, "prev is not the hash of the previous line"))
        previous = (number, record, line_hash)
    if "seal" not in previous[1]["signature"]:
        result.warnings.append((previous[0], "run has no sealed record"))
