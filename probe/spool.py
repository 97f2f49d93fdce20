"""The local spool: which report lines still have to reach the collector, and the upload.

Reports are the source of truth: ``reports/*.jsonl``, written whole and
atomically by :mod:`probe.report.writer` and never changed afterwards. The spool
only records, per report, which of its lines the collector has confirmed, in an
append-only file ``reports/.spool/<report name>.acks``: one JSON object per line,
``{"line": 3, "sha256": "...", "status": "stored"}`` (or ``"duplicate"``, or
``"rejected"`` with the collector's ``"reason"``: a quarantined line, never
sent again). A line is identified by the SHA-256 of its bytes, its chain hash
(docs/signing.md), so a report that is copied or renamed keeps its state.

Why this survives ``kill -9`` at any moment:

- a line becomes "confirmed" only after the collector answered ``stored`` or
  ``duplicate`` (both durable at the collector, docs/upload-protocol.md) *and*
  the record is fsync'd here; dying in between means the line is sent again,
  and the collector answers ``duplicate``: never lost, never stored twice;
- records are appended with one ``write`` and then fsync'd; a record cut short
  by a kill has no final newline, is ignored when reading and cut off before
  the next append; an unreadable record only causes a re-send;
- nothing here ever writes to a report; two uploads on one folder are kept
  apart by an advisory lock (``.spool/lock``) that the kernel drops when its
  holder dies.

The upload (:func:`upload_pending`) follows docs/upload-protocol.md: gzip,
batches within the collector's limits and of one probe key each (named in the
``X-Probe-Key`` header, so a collector that enrols its probes can refuse a
stranger before reading a byte of the body), exponential backoff with jitter,
``Retry-After`` on 429, 503 and 507, halving a batch on 413 (and on 400, to find
the line at fault), quarantine for ``rejected`` lines, and ``unchecked`` lines
sent again. Its only network I/O is
one method, :meth:`CollectorTransport.post`; :class:`AiohttpTransport` is the
real one. It is not the measurement seam (``probe.net.network``): uploading
measures nothing, and recording or replaying it would make no sense.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import email.utils
import errno
import gzip
import hashlib
import json
import os
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "AiohttpTransport",
    "CollectorResponse",
    "CollectorTransport",
    "CollectorUnreachable",
    "Limits",
    "RetryPolicy",
    "Spool",
    "SpoolBusy",
    "SpoolStatus",
    "UploadSummary",
    "pending_status",
    "upload_pending",
]

SPOOL_FOLDER = ".spool"
ACKS_SUFFIX = ".acks"
STORED, DUPLICATE, REJECTED = "stored", "duplicate", "rejected"
UNCHECKED = "unchecked"  # the collector did not look at the line: send it again
KEY_HEADER = "X-Probe-Key"
CONFIRMED = frozenset({STORED, DUPLICATE})
UPLOAD_PATH = "/v1/measurements"
MAX_RESPONSE = 16 << 20


# --------------------------------------------------------------------------- #
# the spool on disk                                                            #
# --------------------------------------------------------------------------- #


class SpoolBusy(Exception):
    """Another upload holds the spool's lock."""


@dataclass(frozen=True)
class PendingLine:
    """One report line waiting for the collector: ``data`` without its newline."""

    report: str
    number: int  # 1-based line number in the report file
    data: bytes
    sha256: str


@dataclass(frozen=True)
class QuarantinedLine:
    report: str
    number: int
    measurement_uid: str | None
    reason: str


@dataclass(frozen=True)
class ReportStatus:
    name: str
    lines: int
    confirmed: int
    pending: int
    quarantined: int


@dataclass(frozen=True)
class SpoolStatus:
    reports: tuple[ReportStatus, ...]
    quarantined: tuple[QuarantinedLine, ...]

    @property
    def pending(self) -> int:
        return sum(r.pending for r in self.reports)


def _sha256(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # Windows: folders cannot be opened; the rename/create is all we have
    try:
        os.fsync(fd)
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def read_report_lines(path: Path) -> list[bytes]:
    """The lines of a report file, without newlines (empty lines kept, as positions)."""
    data = path.read_bytes()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the file's final newline
    return lines


class Spool:
    """The pending-upload state of one reports folder."""

    def __init__(self, reports_dir: str | os.PathLike[str]) -> None:
        self.reports_dir = Path(reports_dir)
        self.folder = self.reports_dir / SPOOL_FOLDER

    def reports(self) -> list[Path]:
        """Report files, oldest first (their names start with the run's UTC time)."""
        if not self.reports_dir.is_dir():
            return []
        return sorted(
            p for p in self.reports_dir.iterdir()
            if p.name.endswith(".jsonl") and not p.name.startswith(".") and p.is_file()
        )

    def _acks_path(self, report_name: str) -> Path:
        return self.folder / (report_name + ACKS_SUFFIX)

    def records(self, report_name: str) -> dict[str, dict[str, Any]]:
        """What the collector said about each line of a report, by line hash (last word wins)."""
        path = self._acks_path(report_name)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return {}
        found: dict[str, dict[str, Any]] = {}
        complete = data[: data.rfind(b"\n") + 1]  # a record cut short by a kill is ignored
        for raw in complete.split(b"\n"):
            try:
                record = json.loads(raw)
            except ValueError:
                continue  # cannot happen short of disk damage; costs a re-send at most
            if (
                isinstance(record, dict)
                and isinstance(record.get("sha256"), str)
                and record.get("status") in (STORED, DUPLICATE, REJECTED)
            ):
                found[record["sha256"]] = record
        return found

    def pending(self) -> Iterator[PendingLine]:
        """Every line of every report that has no confirmation and is not quarantined."""
        for path in self.reports():
            try:
                lines = read_report_lines(path)
            except FileNotFoundError:
                continue  # deleted since listing
            done = self.records(path.name)
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                digest = _sha256(line)
                if digest not in done:
                    yield PendingLine(path.name, number, line, digest)

    def status(self) -> SpoolStatus:
        reports, quarantined = [], []
        for path in self.reports():
            try:
                lines = read_report_lines(path)
            except FileNotFoundError:
                continue
            done = self.records(path.name)
            confirmed = pending = rejected = 0
            counted = 0
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                counted += 1
                record = done.get(_sha256(line))
                if record is None:
                    pending += 1
                elif record["status"] == REJECTED:
                    rejected += 1
                    quarantined.append(QuarantinedLine(
                        path.name, number, _uid_of(line), str(record.get("reason") or "rejected")))
                else:
                    confirmed += 1
            reports.append(ReportStatus(path.name, counted, confirmed, pending, rejected))
        return SpoolStatus(tuple(reports), tuple(quarantined))

    def record(self, entries: list[tuple[PendingLine, str, str | None]]) -> None:
        """Durably note the collector's word on lines: (line, status, reason)."""
        by_report: dict[str, list[bytes]] = {}
        for line, status, reason in entries:
            record: dict[str, Any] = {"line": line.number, "sha256": line.sha256, "status": status}
            if reason:
                record["reason"] = reason[:2000]
            by_report.setdefault(line.report, []).append(
                json.dumps(record, ensure_ascii=True, separators=(",", ":")).encode() + b"\n"
            )
        for report_name, chunks in by_report.items():
            self._append(self._acks_path(report_name), b"".join(chunks))

    def _append(self, path: Path, data: bytes) -> None:
        created = not path.exists()
        if created:
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            size = os.fstat(fd).st_size
            if size:
                with open(path, "rb") as reader:
                    reader.seek(size - 1)
                    if reader.read(1) != b"\n":  # a torn record from a kill: cut it off
                        reader.seek(0)
                        keep = reader.read().rfind(b"\n") + 1
                        os.ftruncate(fd, keep)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            _fsync_directory(self.folder)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the spool for one upload; raise :class:`SpoolBusy` if another holds it."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no advisory locks here
            yield
            return
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.folder / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise SpoolBusy(
                    f"another 'probe upload' is using {self.reports_dir}; try again when it ends"
                ) from None
            yield
        finally:
            os.close(fd)  # closing releases the lock


def pending_status(reports_dir: str | os.PathLike[str]) -> SpoolStatus:
    """What is pending and quarantined, per report (reads only; no lock needed)."""
    return Spool(reports_dir).status()


def _uid_of(line: bytes) -> str | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    uid = record.get("measurement_uid") if isinstance(record, dict) else None
    return uid if isinstance(uid, str) else None


# --------------------------------------------------------------------------- #
# the transport: the upload's only network I/O                                 #
# --------------------------------------------------------------------------- #


class CollectorUnreachable(Exception):
    """No answer from the collector (refused, reset, timeout, TLS failure)."""


@dataclass(frozen=True)
class CollectorResponse:
    status: int
    headers: Mapping[str, str]
    body: bytes


class CollectorTransport(Protocol):
    async def post(
        self, url: str, body: bytes, headers: Mapping[str, str]
    ) -> CollectorResponse: ...

    async def aclose(self) -> None: ...


class AiohttpTransport:
    """POSTs with aiohttp; each request has ``timeout`` seconds in all."""

    def __init__(self, timeout: float = 120.0) -> None:
        self.timeout = timeout
        self._session: Any = None

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> CollectorResponse:
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout), auto_decompress=True
            )
        try:
            async with self._session.post(
                url, data=body, headers=dict(headers), allow_redirects=False
            ) as response:
                chunks, size = [], 0
                async for chunk in response.content.iter_chunked(1 << 16):
                    size += len(chunk)
                    if size > MAX_RESPONSE:
                        raise CollectorUnreachable("the collector's answer is implausibly large")
                    chunks.append(chunk)
                return CollectorResponse(response.status, dict(response.headers), b"".join(chunks))
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as error:
            raise CollectorUnreachable(str(error) or type(error).__name__) from None

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


# --------------------------------------------------------------------------- #
# uploading                                                                    #
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class Limits:
    """The collector's limits (docs/upload-protocol.md); smaller in tests."""

    max_body: int = 8 << 20
    max_line: int = 1 << 20
    max_lines: int = 5000


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter; ``deadline`` bounds one upload in seconds."""

    base_delay: float = 1.0
    max_delay: float = 300.0
    max_attempts: int = 8  # consecutive failures of one batch before giving up for now
    deadline: float | None = 600.0

    def backoff(self, attempt: int, rng: Callable[[], float]) -> float:
        """Attempt 1, 2, 3...: half of base * 2^(n-1) for sure, the other half at random."""
        ceiling = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        return ceiling / 2 + rng() * ceiling / 2


@dataclass
class UploadSummary:
    stored: int = 0
    duplicate: int = 0
    rejected: int = 0
    pending: int = 0  # still pending when the upload ended
    requests: int = 0
    problem: str | None = None  # why it stopped early, for the user

    @property
    def drained(self) -> bool:
        return self.pending == 0


@dataclass
class _Batch:
    lines: list[PendingLine]
    key: str | None = None  # the base64 public key that signed every line, if known
    attempts: int = 0

    def body(self) -> bytes:
        return b"".join(line.data + b"\n" for line in self.lines)


@dataclass
class _Outcome:
    kind: str  # "done", "retry", "split", "refused" (this batch's key), "stop"
    wait: float | None = None  # at least this long (Retry-After)
    reason: str = ""
    results: list[tuple[PendingLine, str, str | None]] = field(default_factory=list)
    unchecked: list[PendingLine] = field(default_factory=list)  # to send again


def _public_key_of(line: bytes) -> str | None:
    """The base64 public key a report line says it is signed with, if it says so."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    signature = record.get("signature") if isinstance(record, dict) else None
    key = signature.get("public_key") if isinstance(signature, dict) else None
    return key if isinstance(key, str) and len(key) == 44 and key.isascii() else None


def _batches(lines: list[PendingLine], limits: Limits) -> list[_Batch]:
    """Batches within the collector's limits, each of the lines of one probe key.

    Keys in the order they first appear; lines whose key cannot be read go
    last, without a key header (the collector rejects them, one by one).
    """
    by_key: dict[str | None, list[PendingLine]] = {}
    for line in lines:
        by_key.setdefault(_public_key_of(line.data), []).append(line)
    keys = sorted(by_key, key=lambda key: key is None)  # stable: first appearance otherwise
    batches: list[_Batch] = []
    for key in keys:
        current: list[PendingLine] = []
        size = 0
        for line in by_key[key]:
            cost = len(line.data) + 1
            if current and (len(current) >= limits.max_lines or size + cost > limits.max_body):
                batches.append(_Batch(current, key))
                current, size = [], 0
            current.append(line)
            size += cost
        if current:
            batches.append(_Batch(current, key))
    return batches


def retry_after(value: str | None, now: datetime.datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    now = now or datetime.datetime.now(datetime.UTC)
    return max(0.0, (moment - now).total_seconds())


def _error_text(response: CollectorResponse) -> str:
    try:
        error = json.loads(response.body).get("error")
    except (ValueError, AttributeError):
        error = None
    return str(error)[:300] if error else f"HTTP {response.status}"


def _interpret(batch: _Batch, response: CollectorResponse) -> _Outcome:
    status = response.status
    if status == 200:
        return _results(batch, response)
    wait = retry_after(_header(response.headers, "Retry-After"))
    reason = _error_text(response)
    if status in (429, 503, 507, 408) or 500 <= status < 600:
        return _Outcome("retry", wait, f"collector answered {status}: {reason}")
    if status == 403:
        return _Outcome(
            "refused",
            reason=(
                f"the collector refuses this probe's key ({reason}); ask the NGO to enrol "
                "it: 'probe key show' prints the key to send them"
            ),
        )
    if status in (400, 413):
        # 413: over a limit; 400: a line the collector cannot even parse as a request
        # (not UTF-8...). Halve the batch; a single line gets quarantined.
        return _Outcome("split", reason=f"collector answered {status}: {reason}")
    return _Outcome(
        "stop", reason=f"collector answered {status} ({reason}); check the upload URL"
    )


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name.lower():
            return value
    return None


def _results(batch: _Batch, response: CollectorResponse) -> _Outcome:
    try:
        results = json.loads(response.body)["results"]
        if not isinstance(results, list):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        return _Outcome("retry", None, "the collector's answer was not the expected JSON")
    recorded: list[tuple[PendingLine, str, str | None]] = []
    unchecked: list[PendingLine] = []
    seen: set[int] = set()
    for result in results:
        if not isinstance(result, dict):
            continue
        index, status = result.get("line"), result.get("status")
        if (
            status == UNCHECKED
            and isinstance(index, int)
            and not isinstance(index, bool)
            and 1 <= index <= len(batch.lines)
            and index not in seen
        ):
            seen.add(index)
            unchecked.append(batch.lines[index - 1])
            continue
        if (
            not isinstance(index, int) or isinstance(index, bool)
            or not 1 <= index <= len(batch.lines) or index in seen
            or status not in (STORED, DUPLICATE, REJECTED)
        ):
            continue  # a result we cannot match: its line stays pending
        line = batch.lines[index - 1]
        uid = result.get("measurement_uid")
        if status in CONFIRMED and isinstance(uid, str) and _uid_of(line.data) not in (uid, None):
            continue  # the collector confirmed another measurement than ours: do not trust it
        seen.add(index)
        reason = result.get("reason")
        recorded.append((line, status, str(reason) if reason is not None else None))
    return _Outcome("done", results=recorded, unchecked=unchecked)


async def upload_pending(
    reports_dir: str | os.PathLike[str],
    url: str,
    *,
    transport: CollectorTransport | None = None,
    policy: RetryPolicy = RetryPolicy(),
    limits: Limits = Limits(),
    compress: bool = True,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    rng: Callable[[], float] = random.random,
    clock: Callable[[], float] = time.monotonic,
    on_progress: Callable[[UploadSummary], None] | None = None,
) -> UploadSummary:
    """Send every pending line of ``reports_dir`` to the collector at ``url`` (its base).

    Returns what happened; ``summary.drained`` tells whether nothing is left.
    Raises :class:`SpoolBusy` if another upload runs on the same folder.
    """
    spool = Spool(reports_dir)
    endpoint = url.rstrip("/") + UPLOAD_PATH
    summary = UploadSummary()
    owned = transport is None
    transport = transport or AiohttpTransport()
    started = clock()
    try:
        with spool.lock():
            lines = list(spool.pending())
            oversized = [line for line in lines if len(line.data) + 1 > limits.max_line]
            if oversized:
                spool.record([(line, REJECTED, "longer than the collector's 1 MiB limit per line")
                              for line in oversized])
                summary.rejected += len(oversized)
            fitting = [line for line in lines if len(line.data) + 1 <= limits.max_line]
            queue = deque(_batches(fitting, limits))
            suspects: list[tuple[PendingLine, str]] = []  # lines refused whole (400, 413)
            accepted = False
            while queue:
                batch = queue[0]
                outcome = await _send(transport, endpoint, batch, compress)
                summary.requests += 1
                if outcome.kind == "done":
                    accepted = True
                    queue.popleft()
                    if outcome.results:
                        spool.record(outcome.results)
                    for _, status, _ in outcome.results:
                        if status == STORED:
                            summary.stored += 1
                        elif status == DUPLICATE:
                            summary.duplicate += 1
                        else:
                            summary.rejected += 1
                    if on_progress:
                        on_progress(summary)
                    if outcome.unchecked and outcome.results:
                        # The collector stopped checking a batch with many bad lines;
                        # send the rest again (each round settles some lines, so this ends).
                        queue.append(_Batch(outcome.unchecked, batch.key))
                    continue
                if outcome.kind == "split":
                    queue.popleft()
                    if len(batch.lines) == 1:
                        # Quarantined only once the collector has accepted other lines:
                        # a collector (or proxy) that refuses everything must not make
                        # us quarantine the whole spool.
                        suspects.append((batch.lines[0], outcome.reason))
                    else:
                        half = len(batch.lines) // 2
                        queue.appendleft(_Batch(batch.lines[half:], batch.key))
                        queue.appendleft(_Batch(batch.lines[:half], batch.key))
                    continue
                summary.problem = outcome.reason
                if outcome.kind == "refused":
                    # The collector does not accept this key: its other batches would
                    # be refused too; lines of other keys may still go.
                    queue = deque(b for b in queue if b.key is None or b.key != batch.key)
                    if batch.key is None:
                        queue.popleft()
                    continue
                if outcome.kind == "stop":
                    break
                batch.attempts += 1
                if batch.attempts >= policy.max_attempts:
                    summary.problem = (
                        f"gave up for now after {batch.attempts} tries: {outcome.reason}"
                    )
                    break
                delay = policy.backoff(batch.attempts, rng)
                if outcome.wait is not None:
                    delay = outcome.wait + rng() * min(1.0, policy.base_delay)
                if policy.deadline is not None and clock() - started + delay > policy.deadline:
                    summary.problem = f"out of time, will retry later: {outcome.reason}"
                    break
                await sleep(delay)
            if suspects and accepted:
                spool.record([(line, REJECTED, reason) for line, reason in suspects])
                summary.rejected += len(suspects)
            elif suspects:
                summary.problem = (
                    f"the collector refuses every request ({suspects[0][1]}); "
                    "nothing was quarantined: check the upload URL or try later"
                )
    finally:
        if owned:
            await transport.aclose()
    summary.pending = sum(1 for _ in spool.pending())
    if summary.pending == 0:
        summary.problem = None
    elif summary.problem is None:
        summary.problem = f"{summary.pending} line(s) still pending; run 'probe upload' again"
    return summary


async def _send(
    transport: CollectorTransport, endpoint: str, batch: _Batch, compress: bool
) -> _Outcome:
    body = batch.body()
    headers = {"Content-Type": "application/x-ndjson", "Accept": "application/json"}
    if batch.key is not None:
        headers[KEY_HEADER] = batch.key  # the collector checks it before reading the body
    if compress:
        body = gzip.compress(body, compresslevel=6, mtime=0)
        headers["Content-Encoding"] = "gzip"
    try:
        response = await transport.post(endpoint, body, headers)
    except CollectorUnreachable as error:
        return _Outcome("retry", None, f"cannot reach the collector: {error}")
    return _interpret(batch, response)
