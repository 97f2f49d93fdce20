"""The collector store's deduplication index, kept on disk in SQLite.

Two tables: ``lines`` maps each stored line's deduplication key to its SHA-256,
``files`` says, per run file, how many of its bytes (and lines) the index
covers. The run files are the truth and this is a cache of them:
:class:`probe.collector.store.Store` writes a line, fsyncs it, and only then
adds its row, so the index may lag behind the files (a crash between the two,
a commit lost with the power) but never run ahead of them. What lags is read
again from the files on the next start. This module only keeps the rows; it
never reads a run file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from probe.collector.store import Recovery

log = logging.getLogger("probe.collector.store")

INDEX_NAME = "index.sqlite3"
SCHEMA_VERSION = 1
FLUSH_ROWS = 50_000  # rows a start indexes per transaction (bounds the WAL)
CACHE_KIB = 16_384
_SCHEMA = (
    "CREATE TABLE lines (key TEXT PRIMARY KEY, digest BLOB NOT NULL) WITHOUT ROWID",
    "CREATE TABLE files (name TEXT PRIMARY KEY, length INTEGER NOT NULL,"
    " lines INTEGER NOT NULL, unreadable INTEGER NOT NULL) WITHOUT ROWID",
    "CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID",
    "INSERT INTO meta VALUES ('keys', 0)",
    f"PRAGMA user_version = {SCHEMA_VERSION}",
)

Covered = dict[str, tuple[int, int, int]]  # run file -> (bytes, lines, unreadable lines)


class Index:
    """Keys and digests of the stored lines; written by one thread, read by any."""

    def __init__(self, path: Path, db: sqlite3.Connection, key_count: int) -> None:
        self.path = path
        self._db = db
        self.key_count = key_count
        self._committed_key_count = key_count
        self._in_transaction = False
        self._unflushed = 0
        self._reader = _connect(path)
        self._reader_lock = threading.Lock()

    @classmethod
    def open(
        cls, path: Path, sizes: Mapping[str, int], recovery: Recovery
    ) -> tuple[Index, Covered]:
        """The index and what it covers of each run file; rebuilt when it cannot be trusted.

        ``sizes`` are the run files on disk now (``key_id/run.jsonl`` -> bytes).
        """
        if path.exists():
            db: sqlite3.Connection | None = None
            try:
                db = _connect(path)
                problem, covered, key_count = _read(db, sizes)
            except sqlite3.DatabaseError as error:
                problem, covered, key_count = f"is unreadable ({error})", {}, 0
            if problem is None and db is not None:
                return cls(path, db, key_count), covered
            if db is not None:
                db.close()
            log.warning("store index %s %s: rebuilding it from the run files", path, problem)
            recovery.index_rebuilt = problem
        elif sizes:
            log.info("store index %s: none yet, building it from %d run file(s)", path, len(sizes))
            recovery.index_rebuilt = "no index"
        _remove(path)
        db = _connect(path)
        for statement in _SCHEMA:
            db.execute(statement)
        return cls(path, db, 0), {}

    # ----------------------------------------------------------------- reads #

    def digest(self, key: str, *, writer: bool = False) -> str | None:
        """The SHA-256 (hex) of the line stored under ``key``, or None.

        ``writer``: from the writer thread, which also sees its own rows not yet
        committed; other threads see committed rows only.
        """
        if writer:
            row = self._db.execute("SELECT digest FROM lines WHERE key = ?", (key,)).fetchone()
        else:
            with self._reader_lock:
                row = self._reader.execute(
                    "SELECT digest FROM lines WHERE key = ?", (key,)
                ).fetchone()
        return row[0].hex() if row else None

    # ---------------------------------------------------------------- writes #

    def add(
        self,
        name: str,
        length: int,
        lines: int,
        unreadable: int,
        rows: Iterable[tuple[str, bytes]],
    ) -> None:
        """A run file read again at start: its new rows, and what the index covers of it now."""
        self._begin()
        self._insert(rows)
        self._db.execute(
            "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)", (name, length, lines, unreadable)
        )
        if self._unflushed >= FLUSH_ROWS:
            self.flush()

    def append(self, name: str, length: int, rows: list[tuple[str, bytes]]) -> None:
        """Lines just appended (and fsynced) to a run file, which is now ``length`` bytes."""
        self._begin()
        self._insert(rows)
        self._db.execute(
            "INSERT INTO files VALUES (?, ?, ?, 0) ON CONFLICT (name) DO UPDATE SET"
            " length = excluded.length, lines = lines + excluded.lines",
            (name, length, len(rows)),
        )

    def flush(self) -> None:
        """Commit. No fsync (WAL, synchronous=NORMAL): the files hold what a power cut loses."""
        if not self._in_transaction:
            return
        self._db.execute("UPDATE meta SET value = ? WHERE name = 'keys'", (self.key_count,))
        self._db.execute("COMMIT")
        self._in_transaction = False
        self._unflushed = 0
        self._committed_key_count = self.key_count

    def rollback(self) -> None:
        if self._in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
        self._in_transaction = False
        self._unflushed = 0
        self.key_count = self._committed_key_count

    def close(self) -> None:
        self.rollback()
        self._reader.close()
        self._db.close()

    def _begin(self) -> None:
        if not self._in_transaction:
            self._db.execute("BEGIN IMMEDIATE")
            self._in_transaction = True

    def _insert(self, rows: Iterable[tuple[str, bytes]]) -> None:
        cursor = self._db.executemany("INSERT OR IGNORE INTO lines VALUES (?, ?)", rows)
        self.key_count += max(cursor.rowcount, 0)
        self._unflushed += max(cursor.rowcount, 0)


def _connect(path: Path) -> sqlite3.Connection:
    # Not tied to a thread: the writer's moves from the thread that opens the
    # store to the store's writer thread (one at a time); the reader's has a lock.
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    db.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
    return db


def _read(db: sqlite3.Connection, sizes: Mapping[str, int]) -> tuple[str | None, Covered, int]:
    """(why the index cannot be used or None, what it covers, its key count)."""
    (version,) = db.execute("PRAGMA user_version").fetchone()
    if version != SCHEMA_VERSION:
        return f"has schema version {version}, not {SCHEMA_VERSION}", {}, 0
    covered: Covered = {
        name: (length, lines, unreadable)
        for name, length, lines, unreadable in db.execute("SELECT * FROM files").fetchall()
    }
    gone = covered.keys() - sizes.keys()
    if gone:
        return f"names the run file {min(gone)}, which this folder does not hold", {}, 0
    shorter = [name for name, (length, _, _) in covered.items() if sizes[name] < length]
    if shorter:
        name = min(shorter)
        return f"covers {covered[name][0]} bytes of {name}, which holds {sizes[name]}", {}, 0
    row = db.execute("SELECT value FROM meta WHERE name = 'keys'").fetchone()
    if row is None:
        return "has no key count", {}, 0
    return None, covered, row[0]


def _remove(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{path}{suffix}")
