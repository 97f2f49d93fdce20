"""Writing a run's report file atomically: the whole file, or nothing.

:func:`write_report_atomic` writes JSON Lines to a temporary file in the target
folder, flushes and fsyncs it, renames it over the target and fsyncs the folder
(POSIX rename is atomic; the folder fsync makes the rename itself durable). A
crash, a full disk or Ctrl-C therefore never leaves a half-written line under
the report's name; on any error the temporary file is removed. Only a hard
crash (power loss, SIGKILL) can leave a temporary file, and it is named
``.<report name>.<random>.tmp``, so ``*.jsonl`` never matches it.

Reports are created readable by their owner only (0600): they describe the
volunteer's network. Failures raise :class:`ReportWriteError` with a message that
says what to do.
"""

from __future__ import annotations

import datetime
import errno
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path

__all__ = ["ReportWriteError", "describe_os_error", "report_path", "write_report_atomic"]

_ADVICE = {
    errno.ENOSPC: "the disk is full; free some space or pass --out with a folder on another disk",
    errno.EDQUOT: "your disk quota is used up; free some space or pass --out elsewhere",
    errno.EACCES: "you may not write there; pass --out with a folder you can write to",
    errno.EPERM: "you may not write there; pass --out with a folder you can write to",
    errno.EROFS: "that disk is read-only; pass --out with a writable folder",
    errno.ENOTDIR: "part of that path is a file, not a folder; pass --out with a folder",
    errno.EEXIST: "a file of that name is in the way of the folder; pass --out with a folder",
    errno.ENOENT: "that folder does not exist and could not be created; check --out",
    errno.EIO: "the disk reported an I/O error; try another disk with --out",
}


class ReportWriteError(Exception):
    """The report could not be written; ``path`` is the report we tried to write."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"cannot write the report {self.path}: {reason}")


def describe_os_error(error: OSError) -> str:
    text = error.strerror or str(error)
    advice = _ADVICE.get(error.errno or -1)
    return f"{text} ({advice})" if advice else text


def _short_id(report_id: str) -> str:
    # The random tail of ids like 20261128T021500Z_probe_3f9c2a1b7d4e: enough to tell
    # two runs of the same second apart, and only [A-Za-z0-9] so it cannot leave out_dir.
    tail = re.sub(r"[^A-Za-z0-9]", "", report_id.rsplit("_", 1)[-1])[:8]
    return tail or hashlib.sha256(report_id.encode("utf-8")).hexdigest()[:8]


def report_path(out_dir: Path, started_at: datetime.datetime, report_id: str) -> Path:
    """``out_dir/2026-11-28T021500Z-<short id>.jsonl`` for a run started at ``started_at``."""
    if started_at.tzinfo is None or started_at.utcoffset() is None:
        raise ValueError(
            f"started_at {started_at.isoformat()} has no time zone; pass an aware datetime"
        )
    moment = started_at.astimezone(datetime.UTC)
    return Path(out_dir) / f"{moment:%Y-%m-%dT%H%M%SZ}-{_short_id(report_id)}.jsonl"


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # platforms where a folder cannot be opened (Windows): rename is all we have
    try:
        os.fsync(fd)
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise  # filesystems that cannot sync folders say EINVAL: nothing to do there
    finally:
        os.close(fd)


def write_report_atomic(path: Path, lines: Iterable[dict | bytes]) -> Path:
    """Write ``lines`` as JSON Lines to ``path`` atomically; return ``path``.

    The folder is created if missing. An existing file at ``path`` is replaced
    only once the new one is complete and on disk. An exception raised by
    ``lines`` itself (e.g. a generator interrupted by Ctrl-C) propagates
    unchanged, after the temporary file is removed; OS errors and lines that
    are not JSON become :class:`ReportWriteError`.
    """
    path = Path(path)
    directory = path.parent
    temporary: str | None = None
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
        with os.fdopen(fd, "wb") as stream:
            for number, line in enumerate(lines, 1):
                if isinstance(line, bytes):  # already serialised (signed lines: keep exact)
                    stream.write(line if line.endswith(b"\n") else line + b"\n")
                    continue
                try:
                    data = json.dumps(
                        line, ensure_ascii=False, allow_nan=False, separators=(",", ":")
                    ).encode("utf-8")  # lone surrogates fail here, not half-way into the file
                except (TypeError, ValueError) as error:
                    raise ReportWriteError(
                        path, f"line {number} is not valid JSON ({error}); this is a bug in probe"
                    ) from error
                stream.write(data + b"\n")
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
        temporary = None
        _fsync_directory(directory)
    except OSError as error:
        raise ReportWriteError(path, describe_os_error(error)) from error
    finally:
        if temporary is not None:
            try:
                os.unlink(temporary)
            except OSError:
                pass
    return path
