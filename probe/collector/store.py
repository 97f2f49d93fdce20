"""The collector's store: the signed lines as received, append-only, one file per run.

Layout: ``<data>/<key_id>/<run>.jsonl``, each line exactly the bytes the probe
signed (anyone can re-verify them later with ``probe verify`` or the
aggregation). Lines of a run are appended in the order they arrive, which need
not be ``seq`` order: a spool may upload a run in pieces.

Durability: :meth:`Store.commit` writes a group of accepted lines, fsyncs every
file it wrote (and every directory it created) and only then returns; the
collector acknowledges a line only after that. A crash (kill -9, power loss)
can therefore leave at most an unacknowledged, possibly torn, tail.

Deduplication: a line is the same upload as a stored one when its probe key
and ``measurement_uid`` are (every line is a measurement; a run's sealed last
line is deduplicated like any other). A uid is scoped by the key that signed it: a uid is only
unique among one probe's measurements, and anyone can copy another probe's uid
into a line of their own, which must not lock the real probe out. The index
maps that key to the line's SHA-256: the same key with other bytes is refused,
never stored next to the first.

The index is an SQLite database in the data folder (``index.sqlite3``, WAL),
a cache of the run files, which stay the truth. It records, per run file, how
many bytes its rows cover, and is written after the lines' fsync, in the same
order: a crash between the two leaves lines beyond what the index covers. On
start, :meth:`Store.open` compares each file's size with that length and reads
only what lies beyond: it cuts a torn last line off, fsyncs what remains (a
retried upload of those lines is then answered "duplicate", which must be true
after a power loss too) and indexes the rest. A start therefore costs one stat
per run file, not a read of every line (a million lines: well under a second;
the old rebuild took about 10 s). An index that is missing (a folder written
before it existed), unreadable, of another schema, or that does not match the
files (it names a file that is gone or longer than it is: another folder's
index, a restored backup) is rebuilt from the files, with one log line. The
index's own commits need no fsync: one lost to a power cut is a tail read again.
Only the writer thread writes the files and the index; :meth:`Store.known` and
:meth:`Store.known_key` may be read from elsewhere.

Quotas are not the store's business (:mod:`probe.collector.server` charges
them); the store only says which probe keys it already holds (a new key is a new
folder) and how much room the data filesystem has left (:meth:`Store.free_space`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path
from typing import TYPE_CHECKING

from probe.collector.index import INDEX_NAME, Index

if TYPE_CHECKING:
    from probe.collector.lines import CheckedLine

log = logging.getLogger("probe.collector.store")

STORED, DUPLICATE, REJECTED = "stored", "duplicate", "rejected"
_KEY_DIR = re.compile(r"[0-9a-f]{16}\Z")
_RUN_FILE = re.compile(r"([0-9a-f]{32})\.jsonl\Z")
MAX_OPEN_FILES = 128


class StoreError(Exception):
    """The store cannot write (disk full, permissions): nothing of the group was acknowledged."""


@dataclass(frozen=True)
class Accepted:
    """A line that passed every check, ready to store (``line`` without newline)."""

    dedupe_key: str
    digest: str
    key_id: str
    run: str
    line: bytes

    @classmethod
    def from_checked(cls, checked: CheckedLine, line: bytes) -> Accepted:
        """An accepted line with the facts its checks established (an accepted line has all)."""
        digest, key_id, run = checked.digest, checked.key_id, checked.run
        if not checked.ok or digest is None or key_id is None or run is None:
            raise ValueError(f"line not accepted, or accepted without its facts: {checked}")
        return cls(measurement_key(key_id, checked.measurement_uid), digest, key_id, run, line)

    @property
    def size(self) -> int:
        """Bytes this line takes on disk (with its newline)."""
        return len(self.line) + 1


@dataclass(frozen=True)
class Outcome:
    status: str  # stored, duplicate or rejected
    reason: str | None = None


@dataclass
class Recovery:
    """What :meth:`Store.open` found."""

    files: int = 0
    lines: int = 0
    torn_bytes: int = 0
    torn_files: list[str] = field(default_factory=list)
    unreadable_lines: int = 0
    reindexed_lines: int = 0  # read from the files at this start (beyond what the index held)
    index_rebuilt: str | None = None  # why the index was built from scratch, if it was


class Store:
    def __init__(self, root: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.root = Path(root)
        self.fsync = fsync  # False only for tests that measure something else
        self._index: Index | None = None
        self._keys: set[str] = set()  # key ids that have a folder
        self._files: OrderedDict[Path, int] = OrderedDict()  # open descriptors, LRU
        self._opened = False

    # ----------------------------------------------------------------- start #

    def open(self) -> Recovery:
        """Create the folder if needed, open the index, repair and index what it lacks."""
        self.root.mkdir(parents=True, exist_ok=True)
        recovery = Recovery()
        sizes: dict[str, int] = {}  # run file (key_id/run.jsonl) -> its size now
        for key_dir in os.scandir(self.root):
            if not (_KEY_DIR.match(key_dir.name) and key_dir.is_dir()):
                continue
            self._keys.add(key_dir.name)
            prefix = key_dir.name + "/"
            for entry in os.scandir(key_dir.path):  # names checked below, once
                if entry.name.endswith(".jsonl") and entry.is_file():
                    sizes[prefix + entry.name] = entry.stat().st_size
        if self._index is not None:
            self._index.close()
            self._index = None
        index_path = self.root / INDEX_NAME
        try:
            self._index, covered = Index.open(index_path, sizes, recovery)
            # An indexed name was a run file's; only the others need the pattern.
            for name in sizes.keys() - covered.keys():
                if not _RUN_FILE.match(name[len("0123456789abcdef/") :]):
                    del sizes[name]
            recovery.files = len(sizes)
            recovery.lines = sum(lines for _, lines, _ in covered.values())
            recovery.unreadable_lines = sum(bad for _, _, bad in covered.values())
            nothing = (0, 0, 0)
            tails = [name for name, size in sizes.items() if size > covered.get(name, nothing)[0]]
            for name in sorted(tails):
                length, lines, unreadable = covered.get(name, nothing)
                now_lines, now_unreadable = self._recover_tail(
                    name, length, lines, unreadable, recovery
                )
                recovery.lines += now_lines - lines
                recovery.unreadable_lines += now_unreadable - unreadable
            self._index.flush()
        except sqlite3.Error as error:  # a read-only folder, a full disk
            raise OSError(f"cannot write the index {index_path}: {error}") from None
        except OSError as error:
            if self._index is None:  # the index's own file, not a run file
                raise OSError(f"cannot write the index {index_path}: {error}") from None
            raise
        if recovery.torn_files or recovery.reindexed_lines:
            for key_id in {name.split("/", 1)[0] for name in sizes}:
                self._sync_dir(self.root / key_id)
        self._sync_dir(self.root)
        self._opened = True
        return recovery

    def _recover_tail(
        self, name: str, covered: int, lines: int, unreadable: int, recovery: Recovery
    ) -> tuple[int, int]:
        """Index a run file's bytes beyond ``covered``: (lines, unreadable lines) now in it."""
        assert self._index is not None
        path = self.root / name
        key_id, run = name[: -len(".jsonl")].split("/")
        with open(path, "r+b") as stream:
            stream.seek(covered)
            data = stream.read()
            end = data.rfind(b"\n") + 1
            if end < len(data):
                # Written but never acknowledged: the crash came before the fsync
                # returned. Cut it so the next append starts on a fresh line.
                recovery.torn_bytes += len(data) - end
                recovery.torn_files.append(name)
                stream.truncate(covered + end)
                data = data[:end]
            if self.fsync:
                os.fsync(stream.fileno())
        rows = []
        for line in data.split(b"\n")[:-1]:
            key = _dedupe_key(line, key_id, run)
            if key is None:
                unreadable += 1
                continue
            rows.append((key, sha256(line).digest()))
            lines += 1
        recovery.reindexed_lines += len(rows)
        self._index.add(name, covered + end, lines, unreadable, rows)
        return lines, unreadable

    # ---------------------------------------------------------------- writes #

    def known(self, dedupe_key: str) -> bool:
        return self._index is not None and self._index.digest(dedupe_key) is not None

    def known_key(self, key_id: str) -> bool:
        """Does the store hold lines of this probe key (a folder of its own)?"""
        return key_id in self._keys

    @property
    def key_count(self) -> int:
        return len(self._keys)

    def free_space(self) -> tuple[int, int]:
        """(free bytes for an unprivileged writer, size in bytes) of the data filesystem."""
        stats = os.statvfs(self.root)
        return stats.f_bavail * stats.f_frsize, stats.f_blocks * stats.f_frsize

    def __len__(self) -> int:
        return self._index.key_count if self._index is not None else 0

    def commit(self, groups: Sequence[Sequence[Accepted]]) -> list[list[Outcome]]:
        """Store the lines of several uploads at once; their outcomes, in order.

        Returns after every stored line is on disk (fsync) and in the index.
        Raises StoreError, with every file cut back to its previous length,
        when anything fails.
        """
        index = self._index
        if not self._opened or index is None:
            raise StoreError("the store was not opened")
        pending: dict[str, str] = {}
        by_path: dict[Path, list[bytes]] = {}
        new_rows: dict[Path, list[tuple[str, bytes]]] = {}
        outcomes: list[list[Outcome]] = []
        for group in groups:
            results = []
            for item in group:
                known = pending.get(item.dedupe_key) or index.digest(item.dedupe_key, writer=True)
                if known is None:
                    pending[item.dedupe_key] = item.digest
                    path = self.root / item.key_id / f"{item.run}.jsonl"
                    by_path.setdefault(path, []).append(item.line + b"\n")
                    new_rows.setdefault(path, []).append(
                        (item.dedupe_key, bytes.fromhex(item.digest))
                    )
                    results.append(Outcome(STORED))
                elif known == item.digest:
                    results.append(Outcome(DUPLICATE))
                else:
                    results.append(Outcome(REJECTED, _conflict_reason(item.dedupe_key)))
            outcomes.append(results)
        if by_path:
            lengths = self._write(by_path)
            try:
                # After the fsync, never before: the index never covers a byte
                # that a crash could still take away.
                for path, rows in new_rows.items():
                    name = f"{path.parent.name}/{path.name}"
                    index.append(name, lengths[path] + sum(map(len, by_path[path])), rows)
                index.flush()
            except sqlite3.Error as error:
                index.rollback()
                self._undo(lengths)
                raise StoreError(f"cannot write the index {index.path}: {error}") from None
            self._keys.update(path.parent.name for path in by_path)
        return outcomes

    def _write(self, by_path: dict[Path, list[bytes]]) -> dict[Path, int]:
        """Append and fsync; every file's length before, to cut back to."""
        lengths: dict[Path, int] = {}
        descriptors: dict[Path, int] = {}  # this group's files stay open until fsynced
        new_dirs: set[Path] = set()
        try:
            for path, chunks in by_path.items():
                descriptor, created_dir = self._descriptor(path)
                descriptors[path] = descriptor
                if created_dir:
                    new_dirs.add(path.parent)
                lengths[path] = os.fstat(descriptor).st_size
                _write_all(descriptor, b"".join(chunks))
            if self.fsync:
                for descriptor in descriptors.values():
                    os.fsync(descriptor)
                for directory in new_dirs:
                    self._sync_dir(directory)
                if new_dirs:
                    self._sync_dir(self.root)
                # A new run file's directory entry must be durable too.
                for directory in {p.parent for p, n in lengths.items() if n == 0} - new_dirs:
                    self._sync_dir(directory)
        except OSError as error:
            self._undo(lengths)
            raise StoreError(f"cannot write to {self.root}: {error.strerror or error}") from None
        finally:
            while len(self._files) > MAX_OPEN_FILES:
                self._close(next(iter(self._files)))
        return lengths

    def _undo(self, lengths: dict[Path, int]) -> None:
        for path, length in lengths.items():
            try:
                os.truncate(path, length)
            except OSError as error:  # the next start cuts the torn tail anyway
                log.error("cannot cut %s back after a failed write: %s", path, error)
            self._close(path)

    def _descriptor(self, path: Path) -> tuple[int, bool]:
        if path in self._files:
            self._files.move_to_end(path)
            return self._files[path], False
        created_dir = False
        if not path.parent.is_dir():
            path.parent.mkdir(parents=True, exist_ok=True)
            created_dir = True
        descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self._files[path] = descriptor  # closed, least recently used first, after the group
        return descriptor, created_dir

    def _close(self, path: Path) -> None:
        descriptor = self._files.pop(path, None)
        if descriptor is not None:
            os.close(descriptor)

    def close(self) -> None:
        for path in list(self._files):
            self._close(path)
        if self._index is not None:
            self._index.close()
            self._index = None
        self._opened = False

    def _sync_dir(self, directory: Path) -> None:
        if not self.fsync or os.name != "posix":
            return
        descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    # ----------------------------------------------------------------- reads #

    def run_files(self) -> list[Path]:
        """Every run file, in a stable order."""
        return sorted(self.root.glob("*/*.jsonl"))


def run_files(root: str | os.PathLike[str]) -> list[Path]:
    """The run files of a collector's data folder (for the aggregation)."""
    base = Path(root)
    return sorted(
        p
        for p in base.glob("*/*.jsonl")
        if _KEY_DIR.match(p.parent.name) and _RUN_FILE.match(p.name)
    )


def measurement_key(key_id: str, measurement_uid: str | None) -> str:
    """The deduplication key of a measurement: its uid, within its probe key."""
    return f"m:{key_id}:{measurement_uid}"


def _dedupe_key(line: bytes, key_id: str, run: str) -> str | None:
    """A stored line's deduplication key; its key id is its folder's name."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict):
        return None
    uid = record.get("measurement_uid")
    return measurement_key(key_id, uid) if isinstance(uid, str) else None


def _conflict_reason(dedupe_key: str) -> str:
    _, key_id, uid = dedupe_key.split(":", 2)
    return (
        f"measurement_uid {uid} of key {key_id} is already stored with different content "
        "(a measurement_uid is unique per probe key: this line was altered or forged)"
    )


def _write_all(descriptor: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(descriptor, view)
        view = view[written:]
