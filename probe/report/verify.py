"""Checking signed report files: every line, the chain of each run, control attestations.

:func:`verify_bytes` is the pure core: it takes a report file's bytes and returns
a :class:`VerifyResult` listing each problem with its line number and a reason a
person can act on. It never raises, whatever the bytes. :func:`verify_file`,
:func:`verify_files` and :func:`verify_command` (the body of ``probe verify``)
are the thin shell around it. The format is specified in docs/signing.md.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import click

from probe.report.canonical import (
    CanonicalizationError,
    JsonSyntaxError,
    canonical_bytes,
    parse_json_strict,
)
from probe.report.keys import KeyFormatError, decode_public_key, is_key_id
from probe.report.signing import (
    CONTROL_ATTESTATION_PATH,
    END_OF_RUN_FIELD,
    SIGNATURE_FIELD,
    is_trusted,
    line_hash,
    line_signature_problem,
    object_signature_problem,
)


@dataclass(frozen=True)
class Problem:
    """One finding; ``line`` is 1-based, 0 for the file as a whole."""

    path: str
    line: int
    reason: str

    def __str__(self) -> str:
        if self.line:
            return f"{self.path}:{self.line}: {self.reason}"
        return f"{self.path}: {self.reason}"


@dataclass(frozen=True)
class RunSummary:
    """What the file holds of one run (lines whose signature verified)."""

    run: str
    key_id: str
    public_key: str
    first_line: int
    last_line: int
    lines: int
    sealed: bool
    interrupted: bool


@dataclass(frozen=True)
class VerifyResult:
    path: str
    lines: int
    problems: tuple[Problem, ...]
    warnings: tuple[Problem, ...]
    runs: tuple[RunSummary, ...]
    control_key_ids: frozenset[str] = frozenset()

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def bad_lines(self) -> frozenset[int]:
        return frozenset(p.line for p in self.problems if p.line)

    @property
    def key_ids(self) -> frozenset[str]:
        return frozenset(run.key_id for run in self.runs)


class TrustedKeysError(ValueError):
    """A trusted-keys file cannot be read or has a bad entry (message names file and line)."""


# --------------------------------------------------------------------------- #
# the pure core                                                                #
# --------------------------------------------------------------------------- #


@dataclass
class _Entry:
    """A line whose signature verified: a link of its run's chain."""

    lineno: int
    run: str
    seq: int
    prev: str | None
    hash: str
    key_id: str
    public_key: str
    end_of_run: dict[str, Any] | None


@dataclass
class _Findings:
    path: str
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    control_key_ids: set[str] = field(default_factory=set)

    def problem(self, line: int, reason: str) -> None:
        self.problems.append(Problem(self.path, line, reason))

    def warning(self, line: int, reason: str) -> None:
        self.warnings.append(Problem(self.path, line, reason))


def verify_bytes(
    data: bytes,
    path: str = "<report>",
    trusted_keys: Iterable[str] | None = None,
    trusted_control_keys: Iterable[str] | None = None,
    *,
    require_end: bool = False,
) -> VerifyResult:
    """Verify a report file's contents.

    ``trusted_keys`` / ``trusted_control_keys`` hold base64 public keys and/or key
    ids; None means "any key", and the result then proves only that each run is
    intact since its key signed it. ``require_end`` turns a run without an
    end-of-run record from a warning into a problem.
    """
    findings = _Findings(path)
    trusted = None if trusted_keys is None else frozenset(trusted_keys)
    trusted_control = None if trusted_control_keys is None else frozenset(trusted_control_keys)
    try:
        lines = _split_lines(data, findings)
        entries: list[_Entry] = []
        invalid_lines: list[int] = []
        for lineno, line in enumerate(lines, start=1):
            entry = _check_line(lineno, line, findings, trusted, trusted_control)
            if entry is None:
                invalid_lines.append(lineno)
            else:
                entries.append(entry)
        runs = _check_chains(entries, invalid_lines, findings, require_end)
    except Exception as error:  # noqa: BLE001 - a verifier must report, not crash
        findings.problem(0, f"internal error while verifying ({type(error).__name__}: {error})")
        lines, runs = [], []
    return VerifyResult(
        path=path,
        lines=len(lines),
        problems=tuple(sorted(findings.problems, key=lambda p: p.line)),
        warnings=tuple(sorted(findings.warnings, key=lambda p: p.line)),
        runs=tuple(runs),
        control_key_ids=frozenset(findings.control_key_ids),
    )


def _split_lines(data: bytes, findings: _Findings) -> list[bytes]:
    if not data:
        findings.problem(0, "file is empty: there is nothing signed in it")
        return []
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    else:
        findings.problem(
            len(lines), "no newline at the end of the file (was the file cut short?)"
        )
    return lines


def _check_line(
    lineno: int,
    line: bytes,
    findings: _Findings,
    trusted: frozenset[str] | None,
    trusted_control: frozenset[str] | None,
) -> _Entry | None:
    """Check one line on its own; return its chain link if its signature verified."""
    if not line.strip():
        findings.problem(lineno, "empty line")
        return None
    try:
        record = parse_json_strict(line)
    except JsonSyntaxError as error:
        findings.problem(lineno, f"not valid JSON: {error}")
        return None
    if not isinstance(record, dict):
        findings.problem(lineno, "not a JSON object")
        return None
    try:
        canonical = canonical_bytes(record)
    except CanonicalizationError as error:
        findings.problem(lineno, f"not canonical JSON: {error}")
        return None
    reason = line_signature_problem(record)
    if reason:
        findings.problem(lineno, reason)
        return None
    if canonical != line:
        # The signed content is intact, but these bytes are not the ones written:
        # someone re-serialised or edited the line without changing its meaning.
        findings.problem(
            lineno,
            "line is not in canonical form (RFC 8785): it was re-serialised or edited "
            "after signing, although the signed content is unchanged",
        )
    signature = record[SIGNATURE_FIELD]
    if trusted is not None and not is_trusted(signature, trusted):
        findings.problem(lineno, f"key {signature['key_id']} is not in the trusted keys")
    end_of_run = None
    if END_OF_RUN_FIELD in record:
        end_of_run = _end_of_run(record, lineno, findings)
    else:
        _check_attestations(record, lineno, findings, trusted_control)
    return _Entry(
        lineno=lineno,
        run=signature["run"],
        seq=signature["seq"],
        prev=signature["prev"],
        hash=line_hash(canonical),
        key_id=signature["key_id"],
        public_key=signature["public_key"],
        end_of_run=end_of_run,
    )


def _end_of_run(record: dict[str, Any], lineno: int, findings: _Findings) -> dict[str, Any]:
    seal = record[END_OF_RUN_FIELD]
    seq = record[SIGNATURE_FIELD]["seq"]
    if set(record) != {END_OF_RUN_FIELD, SIGNATURE_FIELD}:
        findings.problem(lineno, "end-of-run record has fields other than end_of_run, signature")
    elif (
        not isinstance(seal, dict)
        or set(seal) != {"measurements", "interrupted"}
        or not isinstance(seal["interrupted"], bool)
        or seal["measurements"] != seq
        or isinstance(seal["measurements"], bool)
    ):
        findings.problem(lineno, "malformed end-of-run record (measurements must equal its seq)")
    return seal if isinstance(seal, dict) else {}


def _check_attestations(
    record: dict[str, Any],
    lineno: int,
    findings: _Findings,
    trusted_control: frozenset[str] | None,
) -> None:
    """Check the control helper's signed response(s) embedded in a measurement."""
    node: Any = record
    for index, name in enumerate(CONTROL_ATTESTATION_PATH):
        if not isinstance(node, dict) or name not in node:
            control_present = index == len(CONTROL_ATTESTATION_PATH) - 1 and node is not None
            if control_present and trusted_control is not None:
                findings.warning(lineno, "control data is not attested by the control helper")
            return
        node = node[name]
    attestations = node if isinstance(node, list) else [node]
    for number, attestation in enumerate(attestations):
        label = "control attestation" + (f" #{number + 1}" if isinstance(node, list) else "")
        if not isinstance(attestation, dict) or "response" not in attestation:
            findings.problem(lineno, f"{label}: not an object with a 'response'")
            continue
        reason = object_signature_problem(attestation, trusted_control)
        if reason.startswith("signature does not match"):
            reason = (
                "signature does not match"
                " (control response changed after the helper signed it)"
            )
        elif reason.startswith("key ") and reason.endswith("trusted keys"):
            reason = reason.replace("trusted keys", "trusted control keys")
        if reason:
            findings.problem(lineno, f"{label}: {reason}")
        else:
            findings.control_key_ids.add(attestation[SIGNATURE_FIELD]["key_id"])


def _check_chains(
    entries: list[_Entry],
    invalid_lines: list[int],
    findings: _Findings,
    require_end: bool,
) -> list[RunSummary]:
    """Check each run's links, in file order; return what each run looks like."""
    first_with_hash: dict[str, int] = {}
    by_run: dict[str, list[_Entry]] = defaultdict(list)
    for entry in entries:
        if entry.hash in first_with_hash:
            findings.problem(
                entry.lineno, f"duplicate of line {first_with_hash[entry.hash]} (a line was copied)"
            )
            continue
        first_with_hash[entry.hash] = entry.lineno
        by_run[entry.run].append(entry)
    return [
        _check_run(run, run_entries, invalid_lines, findings, require_end)
        for run, run_entries in by_run.items()
    ]


def _check_run(
    run: str,
    entries: list[_Entry],
    invalid_lines: list[int],
    findings: _Findings,
    require_end: bool,
) -> RunSummary:
    short = run[:8]
    by_seq: dict[int, list[_Entry]] = defaultdict(list)
    for entry in entries:
        by_seq[entry.seq].append(entry)
    first = entries[0]
    highest: _Entry | None = None  # the entry with the highest seq seen so far
    for entry in entries:
        if entry.public_key != first.public_key:
            findings.problem(
                entry.lineno,
                f"run {short} changes key (key {entry.key_id} here, {first.key_id} at line "
                f"{first.lineno})",
            )
        if highest is not None and entry.seq <= highest.seq:
            if entry.seq == highest.seq:
                reason = f"line {highest.lineno} also claims seq {entry.seq} of run {short}"
                findings.problem(entry.lineno, f"{reason} (the run was forked or spliced)")
            else:
                findings.problem(
                    entry.lineno,
                    f"out of order: seq {entry.seq} of run {short} comes after seq "
                    f"{highest.seq} (line {highest.lineno}): lines were reordered",
                )
            continue
        if entry.seq > 0:
            _check_link(entry, highest, by_seq, invalid_lines, findings, short)
        highest = entry
    seal_entries = [e for e in entries if e.end_of_run is not None]
    sealed = bool(seal_entries)
    last = entries[-1]
    if not sealed:
        reason = (
            f"run {short} (lines {first.lineno}-{last.lineno}) has no end-of-run record: the "
            "probe was interrupted, or lines were cut from the end of the file, which "
            "cannot be detected without that record"
        )
        if require_end:
            findings.problem(last.lineno, reason)
        else:
            findings.warning(last.lineno, reason)
    interrupted = any(bool(e.end_of_run and e.end_of_run.get("interrupted")) for e in seal_entries)
    if interrupted:
        findings.warning(
            seal_entries[0].lineno, f"run {short} was interrupted before it measured everything"
        )
    return RunSummary(
        run=run,
        key_id=first.key_id,
        public_key=first.public_key,
        first_line=first.lineno,
        last_line=last.lineno,
        lines=len(entries),
        sealed=sealed,
        interrupted=interrupted,
    )


def _check_link(
    entry: _Entry,
    highest: _Entry | None,
    by_seq: dict[int, list[_Entry]],
    invalid_lines: list[int],
    findings: _Findings,
    short: str,
) -> None:
    """Is the line with seq - 1 present, before this one, with the hash ``prev`` names?"""
    predecessors = by_seq.get(entry.seq - 1, [])
    matching = [p for p in predecessors if p.hash == entry.prev]
    if matching:
        predecessor = matching[0]
        if predecessor.lineno > entry.lineno:
            findings.problem(
                entry.lineno,
                f"out of order: its previous line in run {short} (seq {entry.seq - 1}) is line "
                f"{predecessor.lineno}, after it: lines were reordered",
            )
        return
    if predecessors:
        findings.problem(
            entry.lineno,
            f"chain broken: previous-line hash does not match line {predecessors[0].lineno} "
            f"(seq {entry.seq - 1} of run {short}): the run was forked or spliced",
        )
        return
    start = highest.lineno if highest else 0
    missing = entry.seq - 1 - (highest.seq if highest else -1)
    unreadable = sum(1 for n in invalid_lines if start < n < entry.lineno)
    if unreadable >= missing:
        return  # the gap is the bad line(s) just above, already reported
    if highest is None:
        findings.problem(
            entry.lineno,
            f"chain broken: the first {missing} line(s) of run {short} are missing (its first "
            f"line here has seq {entry.seq}): the start of the report was removed",
        )
    else:
        findings.problem(
            entry.lineno,
            f"chain broken: previous line hash mismatch, {missing} line(s) of run {short} "
            f"missing before this one (seq {highest.seq} at line {highest.lineno}, then seq "
            f"{entry.seq}): a line was removed",
        )


# --------------------------------------------------------------------------- #
# the shell: files, trusted keys, the CLI command                              #
# --------------------------------------------------------------------------- #


def verify_file(
    path: str | os.PathLike[str],
    trusted_keys: Iterable[str] | None = None,
    trusted_control_keys: Iterable[str] | None = None,
    *,
    require_end: bool = False,
) -> VerifyResult:
    """Verify one report file; an unreadable file is a problem, not an exception."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as stream:
            data = stream.read()
    except OSError as error:
        problem = Problem(name, 0, f"cannot read the file: {error.strerror or error}")
        return VerifyResult(name, 0, (problem,), (), ())
    return verify_bytes(
        data, name, trusted_keys, trusted_control_keys, require_end=require_end
    )


def verify_files(
    paths: Sequence[str | os.PathLike[str]],
    trusted_keys: Iterable[str] | None = None,
    trusted_control_keys: Iterable[str] | None = None,
    *,
    require_end: bool = False,
) -> list[VerifyResult]:
    """Verify each file on its own (a run's lines must all be in one file)."""
    trusted = None if trusted_keys is None else frozenset(trusted_keys)
    control = None if trusted_control_keys is None else frozenset(trusted_control_keys)
    return [verify_file(p, trusted, control, require_end=require_end) for p in paths]


def parse_trusted_keys(text: str, path: str = "<trusted keys>") -> frozenset[str]:
    """Entries of a trusted-keys file: one base64 public key or key id a line, # comments."""
    keys: set[str] = set()
    for lineno, raw in enumerate(text.splitlines(), start=1):
        entry = raw.split("#", 1)[0].strip()
        if not entry:
            continue
        if is_key_id(entry.lower()):
            keys.add(entry.lower())
            continue
        try:
            decode_public_key(entry)
        except KeyFormatError:
            raise TrustedKeysError(
                f"{path} line {lineno}: {entry[:60]!r} is neither a base64 Ed25519 public "
                "key (44 characters) nor a key id (16 hex characters)"
            ) from None
        keys.add(entry)
    return frozenset(keys)


def load_trusted_keys(path: str | os.PathLike[str]) -> frozenset[str]:
    """Read a trusted-keys file; raises TrustedKeysError with the file and line."""
    name = os.fspath(path)
    try:
        with open(name, encoding="utf-8") as stream:
            text = stream.read()
    except (OSError, UnicodeDecodeError) as error:
        raise TrustedKeysError(f"cannot read trusted keys file {name}: {error}") from None
    keys = parse_trusted_keys(text, name)
    if not keys:
        raise TrustedKeysError(f"{name} lists no keys, so nothing could be trusted")
    return keys


def verify_command(
    paths: Sequence[str | os.PathLike[str]],
    trusted_keys_file: str | os.PathLike[str] | None = None,
    trusted_control_keys_file: str | os.PathLike[str] | None = None,
    *,
    require_end: bool = False,
) -> int:
    """``probe verify``: print each bad line and a summary; return the exit code.

    0: every file verified; 1: at least one problem; 2: a trusted-keys file is
    unusable (nothing was verified).
    """
    try:
        trusted = load_trusted_keys(trusted_keys_file) if trusted_keys_file else None
        control = (
            load_trusted_keys(trusted_control_keys_file) if trusted_control_keys_file else None
        )
    except TrustedKeysError as error:
        click.echo(f"error: {error}", err=True)
        return 2
    results = verify_files(paths, trusted, control, require_end=require_end)
    for result in results:
        for problem in result.problems:
            click.echo(str(problem))
        for warning in result.warnings:
            click.echo(f"warning: {warning}")
        click.echo(_summary(result, trusted is not None, control is not None))
    failed = sum(1 for r in results if not r.ok)
    if failed:
        click.echo(f"FAILED: {failed} of {len(results)} file(s) did not verify")
        return 1
    click.echo(f"OK: {len(results)} file(s) verified")
    if trusted is None:
        click.echo(
            "note: no --trusted-keys given, so this shows only that each run is unchanged "
            "since the key shown signed it, not who signed it"
        )
    return 0


def _summary(result: VerifyResult, keys_trusted: bool, control_trusted: bool) -> str:
    status = "OK" if result.ok else f"FAILED ({len(result.bad_lines)} bad line(s))"
    runs = ", ".join(
        f"run {run.run[:8]} by key {run.key_id} ({run.lines} line(s)"
        + ("" if run.sealed else ", no end-of-run record")
        + ")"
        for run in result.runs
    )
    text = f"{result.path}: {status}, {result.lines} line(s)"
    if runs:
        text += f"; {runs}"
    if keys_trusted and result.runs:
        text += "; keys checked against the trusted list"
    if result.control_key_ids:
        trust = "trusted" if control_trusted else "not checked against a trusted list"
        text += f"; control attested by {', '.join(sorted(result.control_key_ids))} ({trust})"
    return text
