"""Checking signed report files: every line, the chain of each run, control attestations.

:func:`verify_bytes` is the pure core: it takes a report file's bytes and returns
a :class:`VerifyResult` listing each problem with its line number and a reason a
person can act on. It never raises, whatever the bytes. :func:`verify_file`,
:func:`verify_files` and :func:`verify_command` (the body of ``probe verify``)
are the thin shell around it. The format is specified in docs/signing.md; every
rule, for a line and for a run, is applied by :mod:`probe.report.rules`, the
same code the collector and the aggregation call, so the three cannot disagree.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import click

from probe.report.keys import KeyFormatError, decode_public_key, is_key_id
from probe.report.rules import (
    ChainLink,
    LinePolicy,
    RunSummary,
    check_line,
    check_runs,
)

__all__ = [
    "Problem",
    "RunSummary",
    "TrustedKeysError",
    "VerifyResult",
    "load_trusted_keys",
    "parse_trusted_keys",
    "verify_bytes",
    "verify_command",
    "verify_file",
    "verify_files",
]


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
    intact since its key signed it. ``require_end`` turns a run without a
    sealed last line from a warning into a problem. Each line gets the first
    line rule it breaks; the run rules then see the lines that passed them all.
    """
    problems: list[Problem] = []
    warnings: list[Problem] = []
    control_key_ids: set[str] = set()
    policy = LinePolicy(
        trusted_keys=None if trusted_keys is None else frozenset(trusted_keys),
        trusted_control_keys=(
            None if trusted_control_keys is None else frozenset(trusted_control_keys)
        ),
        max_line_bytes=None,
    )
    runs: list[RunSummary] = []
    lines: list[bytes] = []
    try:
        lines = _split_lines(data, path, problems)
        links: list[ChainLink] = []
        invalid_lines: list[int] = []
        for lineno, line in enumerate(lines, start=1):
            checked = check_line(line, policy)
            if checked.ok:
                links.append(ChainLink.of(lineno, checked))
                control_key_ids |= checked.control_key_ids
            else:
                problems.append(Problem(path, lineno, checked.reason or "refused"))
                invalid_lines.append(lineno)
        findings, runs = check_runs(links, invalid_lines, require_end=require_end)
        for finding in findings:
            (warnings if finding.warning else problems).append(
                Problem(path, finding.line, finding.reason)
            )
    except Exception as error:  # noqa: BLE001 - a verifier must report, not crash
        problems.append(
            Problem(path, 0, f"internal error while verifying ({type(error).__name__}: {error})")
        )
        lines, runs = [], []
    return VerifyResult(
        path=path,
        lines=len(lines),
        problems=tuple(sorted(problems, key=lambda p: p.line)),
        warnings=tuple(sorted(warnings, key=lambda p: p.line)),
        runs=tuple(runs),
        control_key_ids=frozenset(control_key_ids),
    )


def _split_lines(data: bytes, path: str, problems: list[Problem]) -> list[bytes]:
    if not data:
        problems.append(Problem(path, 0, "file is empty: there is nothing signed in it"))
        return []
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    else:
        problems.append(Problem(
            path, len(lines), "no newline at the end of the file (was the file cut short?)"
        ))
    return lines


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
        + ("" if run.sealed else ", not sealed: its end may be missing")
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
