"""Signing report lines into a hash chain, and signing control-helper responses.

:class:`ReportSigner` turns each measurement of a run, in order, into one signed
report line: the measurement plus a ``"signature"`` object that names the key,
the run, the line's position (``seq``) and the hash of the previous line, and
carries an Ed25519 signature over the RFC 8785 form of all of that. The run's
last measurement is signed with a *seal* in its signature object (the run's
size, and whether it was interrupted), so a verifier can tell a complete run
from one whose tail was cut off while every line stays an OONI measurement:
:meth:`ReportSigner.sign_run` looks one measurement ahead to know which is last.
:func:`sign_object` / :func:`verify_object` do the same for a single object
(the control helper's attested responses).

This module is pure: it returns bytes and dicts and never writes files. The
format is specified in docs/signing.md; :mod:`probe.report.verify` checks it.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from probe.report.canonical import canonical_bytes
from probe.report.keys import SigningKey, b64encode
from probe.report.rules import (
    ALGORITHM,
    CONTROL_ATTESTATION_PATH,
    CONTROL_RESPONSE_CONTEXT,
    END_OF_RUN_FIELD,
    FORMAT_VERSION,
    LINE_SIGNATURE_FIELDS,
    OBJECT_SIGNATURE_FIELDS,
    REPORT_LINE_CONTEXT,
    SEAL_FIELD,
    SIGNATURE_FIELD,
    _is_hex,
    attestation_problem,
    is_trusted,
)

# The format's names are defined once, in probe.report.rules; signers and older
# callers import them from here too.
__all__ = [
    "ALGORITHM",
    "CONTROL_ATTESTATION_PATH",
    "CONTROL_RESPONSE_CONTEXT",
    "END_OF_RUN_FIELD",
    "FORMAT_VERSION",
    "LINE_SIGNATURE_FIELDS",
    "OBJECT_SIGNATURE_FIELDS",
    "REPORT_LINE_CONTEXT",
    "SEAL_FIELD",
    "SIGNATURE_FIELD",
    "ReportSigner",
    "SignatureError",
    "SignedLine",
    "SigningError",
    "attest_control_response",
    "is_trusted",
    "line_hash",
    "new_run_id",
    "object_signature_problem",
    "sign_lines",
    "sign_object",
    "verify_object",
    "without_value",
]


class SigningError(Exception):
    """A measurement cannot be signed (reserved field present, run already sealed)."""


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

    :meth:`sign_run` signs a whole run, sealing its last measurement; or call
    :meth:`sign` per measurement and :meth:`sign_last` for the last one. Append
    each ``.line`` to the report file. A signed line that never reaches the file
    shows as a missing line to the verifier, which is the truth; do not retry by
    signing the same measurement again. A run of no measurement has no line.
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
        """Sign the next measurement of the run, not its last.

        Raises :class:`SigningError` if the measurement already has a
        ``signature`` or ``end_of_run`` field or the run is sealed, and
        :class:`~probe.report.canonical.CanonicalizationError` (naming the
        field) if it holds a value JSON cannot carry exactly; in both cases the
        chain is unchanged, so the caller may skip that measurement and go on.
        """
        return self._sign_record(measurement, None)

    def sign_last(self, measurement: Mapping[str, Any], *, interrupted: bool = False) -> SignedLine:
        """Sign the run's last measurement with the seal; ``interrupted`` says the run
        was cut short (Ctrl-C). Errors as :meth:`sign`; once this succeeds the run
        is sealed and takes no more lines.

        Without the seal a verifier cannot exclude that lines were cut from the end.
        """
        signed = self._sign_record(
            measurement, {"measurements": self.seq + 1, "interrupted": interrupted}
        )
        self.finished = True
        return signed

    def sign_run(
        self, measurements: Iterable[Mapping[str, Any]], *, interrupted: bool = False
    ) -> Iterator[SignedLine]:
        """Sign measurements as they come, holding one back to know which is last.

        A measurement that cannot be signed (see :meth:`sign`) raises, as there;
        nothing is yielded for an empty ``measurements``.
        """
        pending: Mapping[str, Any] | None = None
        for measurement in measurements:
            if pending is not None:
                yield self.sign(pending)
            pending = measurement
        if pending is not None:
            yield self.sign_last(pending, interrupted=interrupted)

    def _sign_record(
        self, measurement: Mapping[str, Any], seal: dict[str, Any] | None
    ) -> SignedLine:
        if self.finished:
            raise SigningError("the run is sealed; start a new ReportSigner for a new run")
        for reserved in (SIGNATURE_FIELD, END_OF_RUN_FIELD):
            if reserved in measurement:
                raise SigningError(f"measurement already has a {reserved!r} field")
        record = dict(measurement)
        signature: dict[str, Any] = {
            "version": FORMAT_VERSION,
            "alg": ALGORITHM,
            "key_id": self.key.key_id,
            "public_key": self.key.public_key_b64,
            "run": self.run_id,
            "seq": self.seq,
            "prev": self.previous_hash,
        }
        if seal is not None:
            signature[SEAL_FIELD] = seal
        record[SIGNATURE_FIELD] = signature
        message = REPORT_LINE_CONTEXT + canonical_bytes(record)
        signature["value"] = b64encode(self.key.sign(message))
        line = canonical_bytes(record)
        signed = SignedLine(record=record, line=line + b"\n", seq=self.seq)
        self.previous_hash = line_hash(line)
        self.seq += 1
        return signed


def sign_lines(
    key: SigningKey, measurements: Iterable[Mapping[str, Any]], *, interrupted: bool = False
) -> bytes:
    """Sign a whole run at once and return the report file's bytes (tests, tools)."""
    return b"".join(signed.line for signed in ReportSigner(key).sign_run(
        measurements, interrupted=interrupted
    ))


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
    """The reason ``obj`` fails :func:`verify_object`, or "" if it verifies.

    A signed object is a control attestation: exactly ``response`` and
    ``signature``, by the rules of :func:`probe.report.rules.attestation_problem`.
    """
    return attestation_problem(obj, trusted_keys)


# --------------------------------------------------------------------------- #
# helpers shared with the verifier                                             #
# --------------------------------------------------------------------------- #


def without_value(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with ``signature.value`` removed: what the signature covers."""
    signature = {k: v for k, v in record[SIGNATURE_FIELD].items() if k != "value"}
    return {**record, SIGNATURE_FIELD: signature}
