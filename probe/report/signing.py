"""Signing report lines into a hash chain, and signing control-helper responses.

:class:`ReportSigner` turns each measurement of a run, in order, into one signed
report line: the measurement plus a ``"signature"`` object that names the key,
the run, the line's position (``seq``) and the hash of the previous line, and
carries an Ed25519 signature over the RFC 8785 form of all of that. ``finish()``
adds a signed end-of-run record so a verifier can tell a complete run from one
whose tail was cut off. :func:`sign_object` / :func:`verify_object` do the same
for a single object (the control helper's attested responses).

This module is pure: it returns bytes and dicts and never writes files. The
format is specified in docs/signing.md; :mod:`probe.report.verify` checks it.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from probe.report.canonical import canonical_bytes
from probe.report.keys import (
    PUBLIC_KEY_BYTES,
    SIGNATURE_BYTES,
    KeyFormatError,
    SigningKey,
    b64decode_strict,
    b64encode,
    fingerprint,
    is_key_id,
    verify_raw,
)

SIGNATURE_FIELD = "signature"
END_OF_RUN_FIELD = "end_of_run"
FORMAT_VERSION = 1
ALGORITHM = "ed25519"

#: Prepended to the canonical bytes before signing, so a signature made for one
#: purpose can never be passed off as one made for the other (a signed control
#: response is not a report line, even if a key were used for both).
REPORT_LINE_CONTEXT = b"probe/report-line/v1\n"
CONTROL_RESPONSE_CONTEXT = b"probe/control-response/v1\n"

LINE_SIGNATURE_FIELDS = frozenset(
    {"version", "alg", "key_id", "public_key", "run", "seq", "prev", "value"}
)
OBJECT_SIGNATURE_FIELDS = frozenset({"version", "alg", "key_id", "public_key", "value"})

#: Where a measurement carries its control helper's signed response(s).
CONTROL_ATTESTATION_PATH = ("test_keys", "control", "attestation")


class SigningError(Exception):
    """A measurement cannot be signed (reserved field present, run already finished)."""


class SignatureError(ValueError):
    """A signed object does not verify; ``str()`` is the reason, for people."""


@dataclass(frozen=True)
class SignedLine:
    """One signed report line: ``line`` is what to append to the file (ends with ``\\n``)."""

    record: dict[str, Any]
    line: bytes
    seq: int

    @property
    def line_hash(self) -> str:
        return line_hash(self.line)


def line_hash(line: bytes) -> str:
    """The chain hash of a line: lowercase hex SHA-256 of its bytes without the newline."""
    return hashlib.sha256(line.rstrip(b"\n")).hexdigest()


def new_run_id() -> str:
    """A random run id: 16 bytes as 32 lowercase hex characters."""
    return secrets.token_hex(16)


class ReportSigner:
    """Signs the lines of one run in order. Not thread-safe: one writer per run.

    Per measurement call :meth:`sign` and append ``.line`` to the report file;
    after the last one call :meth:`finish` and append its ``.line`` too. A signed
    line that never reaches the file shows as a missing line to the verifier,
    which is the truth; do not retry by signing the same measurement again.
    """

    def __init__(self, key: SigningKey, run_id: str | None = None) -> None:
        if run_id is not None and not _is_hex(run_id, 32):
            raise ValueError("run_id must be 32 lowercase hex characters")
        self.key = key
        self.run_id = run_id or new_run_id()
        self.seq = 0
        self.previous_hash: str | None = None
        self.finished = False

    def sign(self, measurement: Mapping[str, Any]) -> SignedLine:
        """Sign the next measurement of the run.

        Raises :class:`SigningError` if the measurement already has a
        ``signature`` or ``end_of_run`` field or the run is finished, and
        :class:`~probe.report.canonical.CanonicalizationError` (naming the
        field) if it holds a value JSON cannot carry exactly; in both cases the
        chain is unchanged, so the caller may skip that measurement and go on.
        """
        for reserved in (SIGNATURE_FIELD, END_OF_RUN_FIELD):
            if reserved in measurement:
                raise SigningError(f"measurement already has a {reserved!r} field")
        return self._sign_record(dict(measurement))

    def finish(self, *, interrupted: bool = False) -> SignedLine:
        """The end-of-run record; ``interrupted`` says the run was cut short (Ctrl-C).

        Without it a verifier cannot exclude that lines were cut from the end.
        """
        record = {END_OF_RUN_FIELD: {"measurements": self.seq, "interrupted": interrupted}}
        signed = self._sign_record(record)
        self.finished = True
        return signed

    def _sign_record(self, record: dict[str, Any]) -> SignedLine:
        if self.finished:
            raise SigningError("the run is finished; start a new ReportSigner for a new run")
        signature: dict[str, Any] = {
            "version": FORMAT_VERSION,
            "alg": ALGORITHM,
            "key_id": self.key.key_id,
            "public_key": self.key.public_key_b64,
            "run": self.run_id,
            "seq": self.seq,
            "prev": self.previous_hash,
        }
        record[SIGNATURE_FIELD] = signature
        message = REPORT_LINE_CONTEXT + canonical_bytes(record)
        signature["value"] = b64encode(self.key.sign(message))
        line = canonical_bytes(record)
        signed = SignedLine(record=record, line=line + b"\n", seq=self.seq)
        self.previous_hash = line_hash(line)
        self.seq += 1
        return signed


def sign_lines(key: SigningKey, measurements: Iterable[Mapping[str, Any]]) -> bytes:
    """Sign a whole run at once and return the report file's bytes (tests, tools)."""
    signer = ReportSigner(key)
    lines = [signer.sign(m).line for m in measurements]
    lines.append(signer.finish().line)
    return b"".join(lines)


# --------------------------------------------------------------------------- #
# single signed objects: control attestation                                   #
# --------------------------------------------------------------------------- #


def sign_object(obj: Mapping[str, Any], key: SigningKey) -> dict[str, Any]:
    """Return a copy of ``obj`` with a ``signature`` over its RFC 8785 form."""
    if SIGNATURE_FIELD in obj:
        raise SigningError("object already has a 'signature' field")
    signed = dict(obj)
    signature: dict[str, Any] = {
        "version": FORMAT_VERSION,
        "alg": ALGORITHM,
        "key_id": key.key_id,
        "public_key": key.public_key_b64,
    }
    signed[SIGNATURE_FIELD] = signature
    signature["value"] = b64encode(key.sign(CONTROL_RESPONSE_CONTEXT + canonical_bytes(signed)))
    return signed


def attest_control_response(response: Any, key: SigningKey) -> dict[str, Any]:
    """What the control helper sends: ``{"response": response, "signature": {...}}``."""
    return sign_object({"response": response}, key)


def verify_object(obj: Any, trusted_keys: Iterable[str] | None = None) -> str:
    """Check a :func:`sign_object` result; return its key id or raise SignatureError.

    ``trusted_keys`` holds base64 public keys and/or key ids; None accepts any key
    (the signature then proves only that the object is unchanged since signing).
    """
    reason = object_signature_problem(obj, trusted_keys)
    if reason:
        raise SignatureError(reason)
    return obj[SIGNATURE_FIELD]["key_id"]


def object_signature_problem(obj: Any, trusted_keys: Iterable[str] | None = None) -> str:
    """The reason ``obj`` fails :func:`verify_object`, or "" if it verifies."""
    if not isinstance(obj, dict):
        return "not a JSON object"
    signature = obj.get(SIGNATURE_FIELD)
    problem = _signature_fields_problem(signature, OBJECT_SIGNATURE_FIELDS)
    if problem:
        return problem
    assert isinstance(signature, dict)  # a well-formed signature is an object
    public_key = b64decode_strict(signature["public_key"], PUBLIC_KEY_BYTES, "public key")
    value = b64decode_strict(signature["value"], SIGNATURE_BYTES, "signature value")
    try:
        message = CONTROL_RESPONSE_CONTEXT + canonical_bytes(without_value(obj))
    except ValueError as error:
        return str(error)
    if not verify_raw(public_key, value, message):
        return "signature does not match (content changed after signing)"
    if trusted_keys is not None and not is_trusted(signature, trusted_keys):
        return f"key {signature['key_id']} is not in the trusted keys"
    return ""


# --------------------------------------------------------------------------- #
# helpers shared with the verifier                                             #
# --------------------------------------------------------------------------- #


def without_value(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with ``signature.value`` removed: what the signature covers."""
    signature = {k: v for k, v in record[SIGNATURE_FIELD].items() if k != "value"}
    return {**record, SIGNATURE_FIELD: signature}


def is_trusted(signature: Mapping[str, Any], trusted_keys: Iterable[str]) -> bool:
    """True if the signature's public key, or its key id, is among ``trusted_keys``.

    Only call after the key id was checked against the public key.
    """
    trusted = trusted_keys if isinstance(trusted_keys, (set, frozenset)) else set(trusted_keys)
    return signature["public_key"] in trusted or signature["key_id"] in trusted


def _signature_fields_problem(signature: Any, fields: frozenset[str]) -> str:
    """Check the signature object's shape and encodings; "" if well formed."""
    if signature is None:
        return "no signature"
    if not isinstance(signature, dict):
        return "'signature' is not an object"
    missing = sorted(fields - signature.keys())
    if missing:
        return f"signature lacks field(s) {', '.join(missing)}"
    extra = sorted(signature.keys() - fields)
    if extra:
        return f"signature has unknown field(s) {', '.join(extra)}"
    if signature["version"] != FORMAT_VERSION or isinstance(signature["version"], bool):
        return f"unsupported signature version {signature['version']!r} (this verifier knows 1)"
    if signature["alg"] != ALGORITHM:
        return f"unsupported signature algorithm {signature['alg']!r}"
    try:
        b64decode_strict(signature["public_key"], PUBLIC_KEY_BYTES, "public key")
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
    return ""


def line_signature_problem(record: dict[str, Any]) -> str:
    """The reason a parsed report line's signature fails, or "" (no chain, no trust)."""
    problem = _signature_fields_problem(record.get(SIGNATURE_FIELD), LINE_SIGNATURE_FIELDS)
    if problem:
        return problem
    signature = record[SIGNATURE_FIELD]
    public_key = b64decode_strict(signature["public_key"], PUBLIC_KEY_BYTES, "public key")
    value = b64decode_strict(signature["value"], SIGNATURE_BYTES, "signature value")
    try:
        message = REPORT_LINE_CONTEXT + canonical_bytes(without_value(record))
    except ValueError as error:
        return str(error)
    if not verify_raw(public_key, value, message):
        return "signature does not match (content changed after signing)"
    return ""


def _is_hex(text: str, length: int) -> bool:
    return len(text) == length and all(c in "0123456789abcdef" for c in text)
