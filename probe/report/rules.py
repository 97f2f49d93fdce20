"""The one rule set: what a valid report line, control attestation and run are.

docs/signing.md states these rules in words; this module is their only code.
``probe verify`` (:mod:`probe.report.verify`), the collector
(:mod:`probe.collector.lines`, which re-exports :func:`check_line`) and the
aggregation's ingest (:mod:`probe.aggregate.database`, through
:func:`check_and_parse`) all call it, so they cannot disagree about a line.
It lives in ``probe.report`` because the verifier must not depend on the
collector; the collector and aggregation depend on it.

A line is checked in this order, cheapest and most decisive first: size, then
(when trusted keys are given) trust, looked up in the raw bytes and again in
the parsed signature object *before* anything is canonicalised or any
signature verified, so junk from an untrusted key costs almost nothing; then
strict JSON, the signature object's form, RFC 8785 form, the Ed25519
signature, and last what the record says (its ``measurement_uid``, the seal
of a run's last line, control attestations). The first failure is the reason.
:func:`check_runs` holds the rules that need a run's other lines.

Every line is an OONI measurement. A run's last line says so inside its signed
``signature`` object: ``"seal": {"measurements": N, "interrupted": false}``,
with N its ``seq`` + 1. A verifier thereby tells a complete run from one whose
tail was cut off, with no line that is not a measurement.

The RFC 8785 form is computed by ``json.dumps`` when that is provably the same
bytes (no float whose shortest form differs between Python and ECMAScript, no
unsafe integer, no object key where UTF-16 and code-point order differ), and by
:func:`probe.report.canonical.canonical_bytes` otherwise: the same answer,
about four times faster. Everything here is pure and never raises on input.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from probe.report.canonical import MAX_SAFE_INTEGER, CanonicalizationError, canonical_bytes
from probe.report.keys import (
    PUBLIC_KEY_BYTES,
    SIGNATURE_BYTES,
    KeyFormatError,
    b64decode_strict,
    decode_public_key,
    fingerprint,
    is_key_id,
    verify_raw,
)

SIGNATURE_FIELD = "signature"
#: The member of a line's signature object that makes it its run's last line.
SEAL_FIELD = "seal"
#: The record of the format before the seal: a run ended with a line that was
#: not a measurement. Such lines are refused with a reason that says so.
END_OF_RUN_FIELD = "end_of_run"
FORMAT_VERSION = 1
ALGORITHM = "ed25519"

#: Prepended to the canonical bytes before signing, so a signature made for one
#: purpose can never be passed off as one made for the other (a signed control
#: response is not a report line, even if a key were used for both).
REPORT_LINE_CONTEXT = b"probe/report-line/v1\n"
CONTROL_RESPONSE_CONTEXT = b"probe/control-response/v1\n"

LINE_SIGNATURE_FIELDS = frozenset(
    {"version", "alg", "key_id", "public_key", "run", "seq", "prev", "value", SEAL_FIELD}
)
#: Members a signature object may lack: only the last line of a run is sealed.
OPTIONAL_SIGNATURE_FIELDS = frozenset({SEAL_FIELD})
OBJECT_SIGNATURE_FIELDS = frozenset({"version", "alg", "key_id", "public_key", "value"})
#: An attestation is exactly the helper's answer and the helper's signature:
#: anything else would be signed data no consumer knows to read.
ATTESTATION_FIELDS = frozenset({"response", SIGNATURE_FIELD})
SEAL_FIELDS = frozenset({"measurements", "interrupted"})

#: Where a measurement carries its control helper's signed response(s).
CONTROL_ATTESTATION_PATH = ("test_keys", "control", "attestation")

DEFAULT_MAX_LINE_BYTES = 1024 * 1024
MAX_UID_CHARS = 200
MAX_REASON_CHARS = 300

# The line signature object as it appears in canonical bytes: its members in
# RFC 8785 order, so key_id, prev and public_key are adjacent. Every valid line
# contains this pattern with its own key; finding no trusted key in any match
# refuses the line without parsing it. A match may also be a decoy nested
# elsewhere in the record: the line is then parsed and refused on its real
# signature object, so a decoy costs its sender the parse and nothing is let in.
_LINE_KEY_PATTERN = re.compile(
    rb'"key_id":"([0-9a-f]{16})","prev":(?:null|"[0-9a-f]{64}"),'
    rb'"public_key":"([A-Za-z0-9+/]{43}=)"'
)


@dataclass(frozen=True)
class LinePolicy:
    """What a line must satisfy beyond being authentic.

    ``trusted_keys``: base64 public keys and/or key ids of the probes whose lines
    are accepted (None: any key). ``trusted_control_keys``: the control helpers
    whose attestations count (None: any helper; every attestation present must
    still verify). With trusted control keys, control data that carries no
    attestation is refused: its origin cannot be told. ``max_line_bytes`` is a
    resource limit of the servers, not a validity rule (None: no limit, as
    ``probe verify`` has none).
    """

    trusted_keys: frozenset[str] | None = None
    trusted_control_keys: frozenset[str] | None = None
    max_line_bytes: int | None = DEFAULT_MAX_LINE_BYTES


@dataclass(frozen=True)
class CheckedLine:
    """The outcome for one line. ``reason`` is None when the line is accepted.

    ``dedupe_key`` says what makes two uploads the same line: ``m:<uid>``, for
    every line (a sealed line is a measurement like any other). ``digest`` is the
    SHA-256 of the line (without its newline), the chain's line hash. ``sealed``:
    the line is its run's last (its signature has a seal); ``interrupted`` is
    then the seal's.
    """

    reason: str | None
    measurement_uid: str | None = None
    key_id: str | None = None
    run: str | None = None
    seq: int | None = None
    prev: str | None = None
    sealed: bool = False
    digest: str | None = None
    public_key: str | None = None
    interrupted: bool = False
    control_key_ids: frozenset[str] = frozenset()

    @property
    def ok(self) -> bool:
        return self.reason is None

    @property
    def dedupe_key(self) -> str | None:
        if self.reason is not None:
            return None
        return f"m:{self.measurement_uid}"


# --------------------------------------------------------------------------- #
# one line                                                                     #
# --------------------------------------------------------------------------- #


def check_line(line: bytes, policy: LinePolicy = LinePolicy()) -> CheckedLine:
    """Check one line (without its trailing newline) against every line rule."""
    checked, _ = check_and_parse(line, policy)
    return checked


def check_and_parse(
    line: bytes, policy: LinePolicy = LinePolicy()
) -> tuple[CheckedLine, dict[str, Any] | None]:
    """:func:`check_line`, also returning the parsed record when the line is accepted."""
    try:
        checked, record = _check(line, policy)
    except Exception as error:  # noqa: BLE001 - a line must never crash its checker
        checked = CheckedLine(f"cannot check the line: {type(error).__name__}: {error}")
        record = None
    if checked.reason is not None and len(checked.reason) > MAX_REASON_CHARS:
        # Reasons quote the line (a member name, a path): they go back to the
        # uploader and into logs, so the sender must not choose their size.
        checked = dataclasses.replace(checked, reason=checked.reason[:MAX_REASON_CHARS] + "...")
    return checked, record


def untrusted_line_reason(line: bytes, trusted_keys: Iterable[str]) -> str:
    """Without parsing: why ``line`` cannot be signed by a trusted key, or "" if it may be.

    Costs one regular-expression scan of the bytes. "" does not mean trusted:
    the parsed signature object decides (see ``_LINE_KEY_PATTERN``).
    """
    trusted = trusted_keys if isinstance(trusted_keys, (set, frozenset)) else set(trusted_keys)
    named: list[str] = []
    for match in _LINE_KEY_PATTERN.finditer(line):
        key_id, public_key = match.group(1).decode(), match.group(2).decode()
        if key_id in trusted or public_key in trusted:
            return ""
        named.append(key_id)
        if len(named) > 3:
            break
    if len(named) == 1:
        return f"key {named[0]} is not in the trusted keys"
    return "not signed by a trusted key (no line signature names one of the trusted keys)"


def _check(line: bytes, policy: LinePolicy) -> tuple[CheckedLine, dict[str, Any] | None]:
    if not line.strip():
        return CheckedLine("empty line"), None
    if policy.max_line_bytes is not None and len(line) > policy.max_line_bytes:
        return CheckedLine(
            f"line is {len(line)} bytes, over the limit of {policy.max_line_bytes}"
        ), None
    if policy.trusted_keys is not None:
        reason = untrusted_line_reason(line, policy.trusted_keys)
        if reason:
            return CheckedLine(reason), None
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

    signature = record.get(SIGNATURE_FIELD)
    problem = signature_fields_problem(signature, LINE_SIGNATURE_FIELDS)
    if problem:
        return refuse(problem)
    assert isinstance(signature, dict)  # a well-formed signature is an object
    if policy.trusted_keys is not None and not is_trusted(signature, policy.trusted_keys):
        return refuse(f"key {signature['key_id']} is not in the trusted keys")
    try:
        canonical = _canonical(record, safe)
    except CanonicalizationError as error:
        return refuse(f"not canonical JSON: {error}")
    if not _signature_matches(record, REPORT_LINE_CONTEXT, safe):
        return refuse("signature does not match (content changed after signing)")
    if canonical != line:
        # The signed content is intact, but these bytes are not the ones written.
        return refuse(
            "line is not in canonical form (RFC 8785): it was re-serialised or edited after "
            "signing, although the signed content is unchanged; use the bytes of the report "
            "file as they are"
        )
    facts: dict[str, Any] = {
        "key_id": signature["key_id"],
        "public_key": signature["public_key"],
        "run": signature["run"],
        "seq": signature["seq"],
        "prev": signature["prev"],
        "digest": hashlib.sha256(line).hexdigest(),
    }
    if END_OF_RUN_FIELD in record:
        return refuse(OLD_END_OF_RUN_REASON)
    seal = signature.get(SEAL_FIELD)
    if seal is not None:
        facts["sealed"] = True
        facts["interrupted"] = seal["interrupted"]
    if not is_measurement_uid(uid):
        return refuse(
            f"measurement_uid must be a string of 1-{MAX_UID_CHARS} visible ASCII characters"
        )
    problem, control_key_ids = _attestations_problem(record, policy.trusted_control_keys, safe)
    if problem:
        return refuse(problem)
    return CheckedLine(
        None, measurement_uid=uid, control_key_ids=control_key_ids, **facts
    ), record


def is_measurement_uid(uid: Any) -> bool:
    """1-200 characters, each visible ASCII (U+0021-U+007E): an identifier that
    collectors and aggregations key on, safe in logs and file listings."""
    return (
        isinstance(uid, str)
        and 0 < len(uid) <= MAX_UID_CHARS
        and all("!" <= char <= "~" for char in uid)
    )


OLD_END_OF_RUN_REASON = (
    "an end-of-run record, which is not a measurement: this is the report format "
    "before the seal (a run now ends with a sealed measurement); verify the file "
    "with the probe version that wrote it"
)


def seal_problem(signature: dict[str, Any]) -> str:
    """A seal is exactly ``measurements`` (the line's seq + 1: the run's size) and
    ``interrupted`` (a boolean); "" if well formed or absent."""
    if SEAL_FIELD not in signature:
        return ""
    seal = signature[SEAL_FIELD]
    if (
        not isinstance(seal, dict)
        or set(seal) != SEAL_FIELDS
        or not isinstance(seal["interrupted"], bool)
        or not isinstance(seal["measurements"], int)
        or isinstance(seal["measurements"], bool)
        or seal["measurements"] != signature["seq"] + 1
    ):
        return (
            "malformed seal: it must be exactly measurements (the line's seq + 1) and "
            "interrupted (true or false)"
        )
    return ""


# --------------------------------------------------------------------------- #
# control attestations                                                         #
# --------------------------------------------------------------------------- #


def attestation_problem(
    attestation: Any, trusted_control: Iterable[str] | None = None, *, safe: bool = False
) -> str:
    """Why one control attestation is not valid, or "" (trust checked before the signature)."""
    if not isinstance(attestation, dict):
        return "not an object"
    if set(attestation) != ATTESTATION_FIELDS:
        extra = sorted(set(attestation) - ATTESTATION_FIELDS)
        if extra:
            names = ", ".join(repr(name[:40]) for name in extra[:5])
            return f"has member(s) other than response and signature: {names}"
        if "response" not in attestation:
            return "has no 'response'"
        return "no signature"
    problem = signature_fields_problem(attestation[SIGNATURE_FIELD], OBJECT_SIGNATURE_FIELDS)
    if problem:
        return problem
    signature = attestation[SIGNATURE_FIELD]
    if trusted_control is not None and not is_trusted(signature, trusted_control):
        return f"key {signature['key_id']} is not in the trusted control keys"
    if not _signature_matches(attestation, CONTROL_RESPONSE_CONTEXT, safe):
        return "signature does not match (control response changed after the helper signed it)"
    return ""


def _attestations_problem(
    record: dict[str, Any], trusted_control: Iterable[str] | None, safe: bool
) -> tuple[str, frozenset[str]]:
    """The measurement's attestations: (reason or "", key ids of the helpers that signed)."""
    node: Any = record
    for index, name in enumerate(CONTROL_ATTESTATION_PATH):
        if not isinstance(node, dict) or name not in node:
            control_present = index == len(CONTROL_ATTESTATION_PATH) - 1 and node is not None
            if control_present and trusted_control is not None:
                return (
                    "control data is not attested by a control helper, and only control "
                    "data signed by the trusted helpers is accepted"
                ), frozenset()
            return "", frozenset()
        node = node[name]
    if isinstance(node, list) and not node:
        # The probe omits the member when nothing is attested; an empty list
        # would look attested to a careless reader and proves nothing.
        return "control attestation list is empty (omit it when nothing is attested)", frozenset()
    attestations = node if isinstance(node, list) else [node]
    key_ids = set()
    for number, attestation in enumerate(attestations):
        label = "control attestation" + (f" #{number + 1}" if isinstance(node, list) else "")
        problem = attestation_problem(attestation, trusted_control, safe=safe)
        if problem:
            return f"{label}: {problem}", frozenset()
        key_ids.add(attestation[SIGNATURE_FIELD]["key_id"])
    return "", frozenset(key_ids)


# --------------------------------------------------------------------------- #
# the signature object                                                         #
# --------------------------------------------------------------------------- #


def is_trusted(signature: dict[str, Any], trusted_keys: Iterable[str]) -> bool:
    """True if the signature's public key, or its key id, is among ``trusted_keys``.

    Only call after the key id was checked against the public key.
    """
    trusted = trusted_keys if isinstance(trusted_keys, (set, frozenset)) else set(trusted_keys)
    return signature["public_key"] in trusted or signature["key_id"] in trusted


def signature_fields_problem(signature: Any, fields: frozenset[str]) -> str:
    """Check a signature object's members, encodings and key; "" if well formed."""
    if signature is None:
        return "no signature"
    if not isinstance(signature, dict):
        return "'signature' is not an object"
    missing = sorted(fields - OPTIONAL_SIGNATURE_FIELDS - signature.keys())
    if missing:
        return f"signature lacks field(s) {', '.join(missing)}"
    extra = sorted(signature.keys() - fields)
    if extra:
        return f"signature has unknown field(s) {', '.join(name[:40] for name in extra[:5])}"
    if signature["version"] != FORMAT_VERSION or isinstance(signature["version"], bool):
        version = str(signature["version"])[:20]
        return f"unsupported signature version {version!r} (this verifier knows 1)"
    if signature["alg"] != ALGORITHM:
        return f"unsupported signature algorithm {str(signature['alg'])[:20]!r}"
    try:
        decode_public_key(signature["public_key"])
        b64decode_strict(signature["value"], SIGNATURE_BYTES, "signature value")
    except KeyFormatError as error:
        return str(error)
    key_id = signature["key_id"]
    if not isinstance(key_id, str) or not is_key_id(key_id):
        return "key_id is not 16 lowercase hex characters"
    if key_id != fingerprint(signature["public_key"]):
        return "key_id does not match the public key"
    if "run" in fields:
        if not isinstance(signature["run"], str) or not _is_hex(signature["run"], 32):
            return "run is not 32 lowercase hex characters"
        seq = signature["seq"]
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            return "seq is not a non-negative integer"
        prev = signature["prev"]
        if seq == 0 and prev is not None:
            return "seq is 0 but prev is not null"
        if seq > 0 and not (isinstance(prev, str) and _is_hex(prev, 64)):
            return "prev is not 64 lowercase hex characters"
        return seal_problem(signature)
    return ""


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


def _is_hex(text: str, length: int) -> bool:
    return len(text) == length and all(c in "0123456789abcdef" for c in text)


# --------------------------------------------------------------------------- #
# strict parsing that also says whether json.dumps gives the RFC 8785 bytes    #
# --------------------------------------------------------------------------- #


class _NotJson(ValueError):
    pass


def _parse(line: bytes) -> tuple[Any, bool] | str:
    """(value, dumps_is_canonical) or the reason the bytes are not strict JSON.

    UTF-8, no duplicate keys, no NaN/Infinity, no overflowing numbers, integers
    beyond 2**53 - 1 read as doubles (RFC 8785 reads every number as a double).
    """
    safe = [True]

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in items:
            if key in result:
                raise _NotJson(f"duplicate object key {key[:40]!r}")
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


# --------------------------------------------------------------------------- #
# runs: the rules that need a line's neighbours                                #
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class ChainLink:
    """An accepted line as its run's chain sees it; ``lineno`` is its place in the file."""

    lineno: int
    run: str
    seq: int
    prev: str | None
    hash: str
    key_id: str
    public_key: str
    sealed: bool = False
    interrupted: bool = False
    measurement_uid: str | None = None

    @classmethod
    def of(cls, lineno: int, checked: CheckedLine) -> ChainLink:
        """The link of a line :func:`check_line` accepted."""
        assert checked.ok and checked.run is not None and checked.seq is not None
        return cls(
            lineno=lineno,
            run=checked.run,
            seq=checked.seq,
            prev=checked.prev,
            hash=checked.digest or "",
            key_id=checked.key_id or "",
            public_key=checked.public_key or "",
            sealed=checked.sealed,
            interrupted=checked.interrupted,
            measurement_uid=checked.measurement_uid,
        )


@dataclass(frozen=True)
class RunSummary:
    """What the file holds of one run (lines that passed every line rule)."""

    run: str
    key_id: str
    public_key: str
    first_line: int
    last_line: int
    lines: int
    sealed: bool
    interrupted: bool


@dataclass(frozen=True)
class RunFinding:
    """A run rule broken at ``line`` (1-based); a warning does not fail the file."""

    line: int
    reason: str
    warning: bool = False


def after_end_reason(seq: int, run: str, end_seq: int, end_where: str) -> str:
    """The one wording of "a record follows its run's sealed last line"."""
    return (
        f"record after the end of the run: seq {seq} of run {run[:8]}, which was sealed at "
        f"seq {end_seq} ({end_where}): lines were added to a finished run"
    )


def check_runs(
    links: Sequence[ChainLink], invalid_lines: Sequence[int], *, require_end: bool = False
) -> tuple[list[RunFinding], list[RunSummary]]:
    """The run rules over a file's accepted lines, in file order.

    No line twice, no two measurements with one ``measurement_uid`` (collectors
    and aggregations keep only the first); per run: seq strictly increasing, starting at 0, each seq
    n > 0 right after seq n - 1 with ``prev`` its line hash, one key, and no
    record after the sealed line (the run's last). A run without a sealed line is
    a warning, a finding if ``require_end``. ``invalid_lines`` (refused by the
    line rules, already reported) excuse the gap they leave in a chain.
    """
    findings: list[RunFinding] = []
    first_with_hash: dict[str, int] = {}
    first_with_uid: dict[str, int] = {}
    by_run: dict[str, list[ChainLink]] = defaultdict(list)
    for link in links:
        if link.hash in first_with_hash:
            first_copy = first_with_hash[link.hash]
            findings.append(
                RunFinding(link.lineno, f"duplicate of line {first_copy} (a line was copied)")
            )
            continue
        first_with_hash[link.hash] = link.lineno
        if link.measurement_uid is not None:
            earlier = first_with_uid.setdefault(link.measurement_uid, link.lineno)
            if earlier != link.lineno:
                findings.append(RunFinding(
                    link.lineno,
                    f"measurement_uid {link.measurement_uid} is also that of line {earlier}, "
                    "with other content (a measurement_uid names one measurement)",
                ))
        by_run[link.run].append(link)
    summaries = [
        _check_run(run, run_links, invalid_lines, findings, require_end)
        for run, run_links in by_run.items()
    ]
    return findings, summaries


def _check_run(
    run: str,
    links: list[ChainLink],
    invalid_lines: Sequence[int],
    findings: list[RunFinding],
    require_end: bool,
) -> RunSummary:
    short = run[:8]
    by_seq: dict[int, list[ChainLink]] = defaultdict(list)
    for link in links:
        by_seq[link.seq].append(link)
    first = links[0]
    highest: ChainLink | None = None  # the link with the highest seq seen so far
    end: ChainLink | None = None  # the run's first sealed line in file order
    for link in links:
        if link.public_key != first.public_key:
            findings.append(RunFinding(
                link.lineno,
                f"run {short} changes key (key {link.key_id} here, {first.key_id} at line "
                f"{first.lineno})",
            ))
        if highest is not None and link.seq <= highest.seq:
            if link.seq == highest.seq:
                reason = (
                    f"line {highest.lineno} also claims seq {link.seq} of run {short} "
                    "(the run was forked or spliced)"
                )
                findings.append(RunFinding(link.lineno, reason))
            else:
                findings.append(RunFinding(
                    link.lineno,
                    f"out of order: seq {link.seq} of run {short} comes after seq "
                    f"{highest.seq} (line {highest.lineno}): lines were reordered",
                ))
            continue
        if end is not None:
            # Correctly chained or not, nothing may follow the sealed line.
            findings.append(RunFinding(
                link.lineno, after_end_reason(link.seq, run, end.seq, f"line {end.lineno}")
            ))
            highest = link
            continue
        if link.seq > 0:
            _check_link(link, highest, by_seq, invalid_lines, findings, short)
        highest = link
        if link.sealed:
            end = link
    last = links[-1]
    if end is None:
        reason = (
            f"run {short} (lines {first.lineno}-{last.lineno}) is not sealed (no line says "
            "it is the run's last): the probe was killed, or lines were cut from the end "
            "of the file, which cannot be detected without the seal"
        )
        findings.append(RunFinding(last.lineno, reason, warning=not require_end))
    elif end.interrupted:
        findings.append(RunFinding(
            end.lineno, f"run {short} was interrupted before it measured everything", warning=True
        ))
    return RunSummary(
        run=run,
        key_id=first.key_id,
        public_key=first.public_key,
        first_line=first.lineno,
        last_line=last.lineno,
        lines=len(links),
        sealed=end is not None,
        interrupted=bool(end and end.interrupted),
    )


def _check_link(
    link: ChainLink,
    highest: ChainLink | None,
    by_seq: dict[int, list[ChainLink]],
    invalid_lines: Sequence[int],
    findings: list[RunFinding],
    short: str,
) -> None:
    """Is the line with seq - 1 present, before this one, with the hash ``prev`` names?"""
    predecessors = by_seq.get(link.seq - 1, [])
    matching = [p for p in predecessors if p.hash == link.prev]
    if matching:
        predecessor = matching[0]
        if predecessor.lineno > link.lineno:
            findings.append(RunFinding(
                link.lineno,
                f"out of order: its previous line in run {short} (seq {link.seq - 1}) is line "
                f"{predecessor.lineno}, after it: lines were reordered",
            ))
        return
    if predecessors:
        findings.append(RunFinding(
            link.lineno,
            f"chain broken: previous-line hash does not match line {predecessors[0].lineno} "
            f"(seq {link.seq - 1} of run {short}): the run was forked or spliced",
        ))
        return
    start = highest.lineno if highest else 0
    missing = link.seq - 1 - (highest.seq if highest else -1)
    unreadable = sum(1 for n in invalid_lines if start < n < link.lineno)
    if unreadable >= missing:
        return  # the gap is the bad line(s) just above, already reported
    if highest is None:
        findings.append(RunFinding(
            link.lineno,
            f"chain broken: the first {missing} line(s) of run {short} are missing (its first "
            f"line here has seq {link.seq}): the start of the report was removed",
        ))
    else:
        findings.append(RunFinding(
            link.lineno,
            f"chain broken: previous line hash mismatch, {missing} line(s) of run {short} "
            f"missing before this one (seq {highest.seq} at line {highest.lineno}, then seq "
            f"{link.seq}): a line was removed",
        ))
