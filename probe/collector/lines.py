"""One signed report line, checked on its own: the rules of docs/signing.md, line by line.

The collector checks every uploaded line with :func:`check_line` before it stores
it, and the aggregation checks every stored line again before it counts it, so
both accept exactly the same lines. A line passes when it is strict JSON, is
byte for byte its RFC 8785 form, carries a valid line signature (by a trusted
key when a list is given), and either is a well-formed end-of-run record or a
measurement with a ``measurement_uid`` whose control attestations verify (by a
trusted helper key when one is given). Chains are not checked here: a line
arrives without its neighbours; :mod:`probe.aggregate.ingest` checks them.

The RFC 8785 form is computed by ``json.dumps`` when that is provably the same
bytes (no float whose shortest form differs between Python and ECMAScript, no
unsafe integer, no object key where UTF-16 and code-point order differ), and by
:func:`probe.report.canonical.canonical_bytes` otherwise: the same answer, about
four times faster, which is what lets one core check ~1,500 lines a second.
This module is pure: bytes in, a :class:`CheckedLine` out; it never raises.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from probe.report.canonical import (
    MAX_SAFE_INTEGER,
    CanonicalizationError,
    canonical_bytes,
)
from probe.report.keys import (
    PUBLIC_KEY_BYTES,
    SIGNATURE_BYTES,
    b64decode_strict,
    verify_raw,
)
from probe.report.signing import (
    CONTROL_ATTESTATION_PATH,
    CONTROL_RESPONSE_CONTEXT,
    END_OF_RUN_FIELD,
    LINE_SIGNATURE_FIELDS,
    OBJECT_SIGNATURE_FIELDS,
    REPORT_LINE_CONTEXT,
    SIGNATURE_FIELD,
    _signature_fields_problem,  # the one definition of a well-formed signature object
    is_trusted,
)

DEFAULT_MAX_LINE_BYTES = 1024 * 1024
MAX_UID_CHARS = 200


@dataclass(frozen=True)
class LinePolicy:
    """What a line must satisfy beyond being authentic.

    ``trusted_keys``: base64 public keys and/or key ids of the probes whose lines
    are accepted (None: any key). ``trusted_control_keys``: the control helpers
    whose attestations count (None: any helper; every attestation present must
    still verify). With trusted control keys, control data that carries no
    attestation is refused: its origin cannot be told.
    """

    trusted_keys: frozenset[str] | None = None
    trusted_control_keys: frozenset[str] | None = None
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES


@dataclass(frozen=True)
class CheckedLine:
    """The outcome for one line. ``reason`` is None when the line is accepted.

    ``dedupe_key`` says what makes two uploads the same line: ``m:<uid>`` for a
    measurement, ``e:<run>:<seq>`` for an end-of-run record. ``digest`` is the
    SHA-256 of the line (without its newline), the chain's line hash.
    """

    reason: str | None
    measurement_uid: str | None = None
    key_id: str | None = None
    run: str | None = None
    seq: int | None = None
    prev: str | None = None
    end_of_run: bool = False
    digest: str | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None

    @property
    def dedupe_key(self) -> str | None:
        if self.reason is not None:
            return None
        if self.end_of_run:
            return f"e:{self.run}:{self.seq}"
        return f"m:{self.measurement_uid}"


def check_line(line: bytes, policy: LinePolicy = LinePolicy()) -> CheckedLine:
    """Check one line (without its trailing newline)."""
    checked, _ = check_and_parse(line, policy)
    return checked


def check_and_parse(
    line: bytes, policy: LinePolicy = LinePolicy()
) -> tuple[CheckedLine, dict[str, Any] | None]:
    """:func:`check_line`, also returning the parsed record when the line is accepted."""
    try:
        return _check(line, policy)
    except Exception as error:  # noqa: BLE001 - a line must never crash its checker
        return CheckedLine(f"cannot check the line: {type(error).__name__}: {error}"), None


def _check(line: bytes, policy: LinePolicy) -> tuple[CheckedLine, dict[str, Any] | None]:
    if not line.strip():
        return CheckedLine("empty line"), None
    if len(line) > policy.max_line_bytes:
        return CheckedLine(
            f"line is {len(line)} bytes, over the limit of {policy.max_line_bytes}"
        ), None
    parsed = _parse(line)
    if isinstance(parsed, str):
        return CheckedLine(f"not valid JSON: {parsed}"), None
    record, safe = parsed
    if not isinstance(record, dict):
        return CheckedLine("not a JSON object"), None
    uid = record.get("measurement_uid")
    if not isinstance(uid, str):
        uid = None

    def refuse(reason: str) -> tuple[CheckedLine, None]:
        # The uid, when there is one, lets the uploader name the refused measurement.
        return CheckedLine(reason, measurement_uid=uid[:MAX_UID_CHARS] if uid else None), None

    try:
        canonical = _canonical(record, safe)
    except CanonicalizationError as error:
        return refuse(f"not canonical JSON: {error}")
    signature = record.get(SIGNATURE_FIELD)
    problem = _signature_fields_problem(signature, LINE_SIGNATURE_FIELDS)
    if problem:
        return refuse(problem)
    assert isinstance(signature, dict)  # a well-formed signature is an object
    if not _signature_matches(record, REPORT_LINE_CONTEXT, safe):
        return refuse("signature does not match (content changed after signing)")
    if canonical != line:
        return refuse(
            "line is not in canonical form (RFC 8785): it was re-serialised or edited after "
            "signing, although the signed content is unchanged; send the bytes of the report "
            "file as they are"
        )
    if policy.trusted_keys is not None and not is_trusted(signature, policy.trusted_keys):
        return refuse(f"key {signature['key_id']} is not in the trusted keys")
    facts = {
        "key_id": signature["key_id"],
        "run": signature["run"],
        "seq": signature["seq"],
        "prev": signature["prev"],
        "digest": hashlib.sha256(line).hexdigest(),
    }
    if END_OF_RUN_FIELD in record:
        problem = _end_of_run_problem(record)
        if problem:
            return refuse(problem)
        return CheckedLine(None, end_of_run=True, **facts), record
    if not uid or len(uid) > MAX_UID_CHARS or not uid.isprintable():
        return refuse(f"measurement_uid must be a printable string of 1-{MAX_UID_CHARS} characters")
    problem = _attestation_problem(record, policy.trusted_control_keys, safe)
    if problem:
        return refuse(problem)
    return CheckedLine(None, measurement_uid=uid, **facts), record


# --------------------------------------------------------------------------- #
# strict parsing that also says whether json.dumps gives the RFC 8785 bytes    #
# --------------------------------------------------------------------------- #


class _NotJson(ValueError):
    pass


def _parse(line: bytes) -> tuple[Any, bool] | str:
    """(value, dumps_is_canonical) or the reason the bytes are not strict JSON.

    As strict as :func:`probe.report.canonical.parse_json_strict` (UTF-8, no
    duplicate keys, no NaN/Infinity, no overflowing numbers, integers beyond
    2**53 - 1 read as doubles).
    """
    safe = [True]

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in items:
            if key in result:
                raise _NotJson(f"duplicate object key {key!r}")
            if not key.isascii() and max(key) >= "\ud800":
                safe[0] = False  # UTF-16 and code-point order may differ (RFC 8785 3.2.3)
            result[key] = value
        return result

    def number(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise _NotJson(f"number {text[:40]} is too large for a double")
        if value.is_integer() or "e" in repr(value):
            safe[0] = False  # Python writes 1.0 and 1e-05, ECMAScript 1 and 0.00001
        return value

    def integer(text: str) -> int | float:
        if len(text) > 400:
            raise _NotJson(f"number {text[:40]}... is too long")
        value = int(text)
        if abs(value) <= MAX_SAFE_INTEGER:
            return value
        safe[0] = False
        return number(text)

    def constant(name: str) -> Any:
        raise _NotJson(f"{name} is not JSON")

    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as error:
        return f"not valid UTF-8 (byte {error.start})"
    try:
        value = json.loads(
            text,
            object_pairs_hook=pairs,
            parse_float=number,
            parse_int=integer,
            parse_constant=constant,
        )
    except _NotJson as error:
        return str(error)
    except json.JSONDecodeError as error:
        return f"{error.msg} (column {error.colno})"
    except RecursionError:
        return "nested too deeply"
    return value, safe[0]


def _canonical(value: Any, safe: bool) -> bytes:
    if safe:
        try:
            return json.dumps(
                value,
                sort_keys=True,
                separators=(",", ":"),
                ensure_ascii=False,
                allow_nan=False,
            ).encode("utf-8")
        except (UnicodeEncodeError, ValueError, RecursionError):
            pass  # a lone surrogate, or too deep: let the reference say why
    return canonical_bytes(value)


def _signature_matches(obj: dict[str, Any], context: bytes, safe: bool) -> bool:
    """Does ``signature.value`` sign ``context`` + JCS(obj without value)? (fields checked)"""
    signature = obj[SIGNATURE_FIELD]
    unsigned = {k: v for k, v in signature.items() if k != "value"}
    try:
        message = context + _canonical({**obj, SIGNATURE_FIELD: unsigned}, safe)
    except CanonicalizationError:
        return False
    public_key = b64decode_strict(signature["public_key"], PUBLIC_KEY_BYTES, "public key")
    value = b64decode_strict(signature["value"], SIGNATURE_BYTES, "signature value")
    return verify_raw(public_key, value, message)


def _end_of_run_problem(record: dict[str, Any]) -> str:
    # The same rules as probe.report.verify: exactly end_of_run and signature,
    # and the count of measurements before it equals its own seq.
    seal = record[END_OF_RUN_FIELD]
    if set(record) != {END_OF_RUN_FIELD, SIGNATURE_FIELD}:
        return "end-of-run record has fields other than end_of_run, signature"
    if (
        not isinstance(seal, dict)
        or set(seal) != {"measurements", "interrupted"}
        or not isinstance(seal["interrupted"], bool)
        or isinstance(seal["measurements"], bool)
        or seal["measurements"] != record[SIGNATURE_FIELD]["seq"]
    ):
        return "malformed end-of-run record (measurements must equal its seq)"
    return ""


def _attestation_problem(
    record: dict[str, Any], trusted_control: Iterable[str] | None, safe: bool
) -> str:
    node: Any = record
    for index, name in enumerate(CONTROL_ATTESTATION_PATH):
        if not isinstance(node, dict) or name not in node:
            control_present = index == len(CONTROL_ATTESTATION_PATH) - 1 and node is not None
            if control_present and trusted_control is not None:
                return (
                    "control data is not attested by a control helper, and this collector "
                    "accepts only control data signed by its trusted helpers"
                )
            return ""
        node = node[name]
    attestations = node if isinstance(node, list) else [node]
    for number, attestation in enumerate(attestations):
        label = "control attestation" + (f" #{number + 1}" if isinstance(node, list) else "")
        if not isinstance(attestation, dict) or "response" not in attestation:
            return f"{label}: not an object with a 'response'"
        problem = _signature_fields_problem(
            attestation.get(SIGNATURE_FIELD), OBJECT_SIGNATURE_FIELDS
        )
        if problem:
            return f"{label}: {problem}"
        if not _signature_matches(attestation, CONTROL_RESPONSE_CONTEXT, safe):
            return (
                f"{label}: signature does not match (control response changed after the "
                "helper signed it)"
            )
        if trusted_control is not None and not is_trusted(
            attestation[SIGNATURE_FIELD], trusted_control
        ):
            key_id = attestation[SIGNATURE_FIELD]["key_id"]
            return f"{label}: key {key_id} is not in the trusted control keys"
    return ""


def split_lines(body: bytes) -> list[bytes]:
    """A JSON Lines body -> its lines without newlines; a final newline is optional."""
    lines = body.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return lines
