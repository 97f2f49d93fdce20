"""The store's index on disk: a start reads only what it lacks, and a bad index is rebuilt."""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from probe.collector.index import INDEX_NAME, Index
from probe.collector.store import DUPLICATE, REJECTED, STORED, Accepted, Store, StoreError

from .helpers import REPO, signed_run
from .test_store import accepted


def stored_store(folder, runs=2):
    """A store holding ``runs`` runs (4 lines each), closed; its accepted lines."""
    store = Store(folder)
    store.open()
    items = [item for _ in range(runs) for item in accepted(signed_run()[1])]
    assert {o.status for o in store.commit([items])[0]} == {STORED}
    store.close()
    return items


def statuses(store, items):
    return [o.status for group in store.commit([items]) for o in group]


def remove_index(folder):
    for suffix in ("", "-wal", "-shm"):
        path = folder / f"{INDEX_NAME}{suffix}"
        if path.exists():
            path.unlink()


def test_a_start_reads_no_line_the_index_holds(tmp_path):
    items = stored_store(tmp_path)
    reopened = Store(tmp_path)
    recovery = reopened.open()
    assert (recovery.files, recovery.lines, recovery.reindexed_lines) == (2, 8, 0)
    assert recovery.index_rebuilt is None
    assert len(reopened) == 8 and reopened.known(items[0].dedupe_key)
    assert statuses(reopened, items) == [DUPLICATE] * 8
    forged = Accepted(items[0].dedupe_key, "0" * 64, items[0].key_id, items[0].run, b"{}")
    assert statuses(reopened, [forged]) == [REJECTED]


def test_a_crash_between_a_line_and_its_index_row_is_repaired_at_start(tmp_path):
    """The writer process dies (os._exit, no clean-up) after the fsync, before the index row."""
    items = stored_store(tmp_path, runs=1)
    _, more = signed_run()
    batch = tmp_path / "batch.jsonl"
    batch.write_bytes(b"".join(more))
    crash = textwrap.dedent(
        f"""
        import os, sys
        from probe.collector import index
        from probe.collector.lines import check_line
        from probe.collector.store import Accepted, Store

        def die(*args, **kwargs):
            os._exit(9)

        index.Index.append = die
        store = Store({str(tmp_path)!r})
        store.open()
        lines = open({str(batch)!r}, "rb").read().splitlines()
        store.commit([[Accepted.from_checked(check_line(line), line) for line in lines]])
        sys.exit(0)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    assert subprocess.run([sys.executable, "-c", crash], env=env, timeout=60).returncode == 9
    path = tmp_path / items[0].key_id  # the new run's lines are on disk, not in the index
    assert len(list(tmp_path.glob("*/*.jsonl"))) == 2 and path.is_dir()
    reopened = Store(tmp_path)
    recovery = reopened.open()
    assert (recovery.lines, recovery.reindexed_lines, recovery.torn_bytes) == (8, 4, 0)
    assert recovery.index_rebuilt is None
    assert statuses(reopened, items + accepted(more)) == [DUPLICATE] * 8
    reopened.close()
    # Indexed now: the next start reads nothing again.
    assert Store(tmp_path).open().reindexed_lines == 0


def test_a_torn_tail_beyond_the_index_is_cut_the_rest_indexed(tmp_path):
    store = Store(tmp_path)
    store.open()
    _, lines = signed_run()
    items = accepted(lines)
    store.commit([items[:2]])
    store.close()
    path = tmp_path / items[0].key_id / f"{items[0].run}.jsonl"
    with open(path, "ab") as stream:  # a whole line the index lacks, then a torn one
        stream.write(lines[2] + lines[3][:50])
    reopened = Store(tmp_path)
    recovery = reopened.open()
    assert (recovery.lines, recovery.reindexed_lines, recovery.torn_bytes) == (3, 1, 50)
    assert path.read_bytes() == b"".join(lines[:3])
    assert statuses(reopened, items) == [DUPLICATE] * 3 + [STORED]


def test_a_folder_without_an_index_is_indexed_once(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="probe.collector.store")
    items = stored_store(tmp_path)
    remove_index(tmp_path)  # as the store of the code before the index left it
    first = Store(tmp_path)
    recovery = first.open()
    assert (recovery.lines, recovery.reindexed_lines, recovery.index_rebuilt) == (8, 8, "no index")
    assert len(first) == 8 and statuses(first, items) == [DUPLICATE] * 8
    first.close()
    assert [r.getMessage() for r in caplog.records if "index" in r.getMessage()] == [
        f"store index {tmp_path / INDEX_NAME}: none yet, building it from 2 run file(s)"
    ]
    assert Store(tmp_path).open().reindexed_lines == 0


def test_a_corrupt_index_is_rebuilt_with_one_log_line(tmp_path, caplog):
    items = stored_store(tmp_path)
    remove_index(tmp_path)
    (tmp_path / INDEX_NAME).write_bytes(b"not a database, " * 512)
    store = Store(tmp_path)
    recovery = store.open()
    assert recovery.reindexed_lines == 8 and "unreadable" in recovery.index_rebuilt
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0].getMessage()
    assert "rebuilding it from the run files" in warnings[0].getMessage()
    assert statuses(store, items) == [DUPLICATE] * 8


def test_an_index_from_another_folder_is_rebuilt(tmp_path, caplog):
    mine = stored_store(tmp_path / "mine")
    theirs = stored_store(tmp_path / "theirs", runs=3)
    remove_index(tmp_path / "mine")
    shutil.copy(tmp_path / "theirs" / INDEX_NAME, tmp_path / "mine" / INDEX_NAME)
    store = Store(tmp_path / "mine")
    recovery = store.open()
    assert "which this folder does not hold" in recovery.index_rebuilt
    assert (recovery.lines, len(store)) == (8, 8)
    assert "rebuilding it from the run files" in caplog.text
    assert not store.known(theirs[0].dedupe_key)
    assert statuses(store, mine) == [DUPLICATE] * 8


def test_an_index_covering_more_than_a_file_holds_is_rebuilt(tmp_path):
    items = stored_store(tmp_path, runs=1)
    path = tmp_path / items[0].key_id / f"{items[0].run}.jsonl"
    content = path.read_bytes()
    path.write_bytes(content[: content.index(b"\n") + 1])  # the operator cut lines away
    store = Store(tmp_path)
    recovery = store.open()
    assert recovery.index_rebuilt.startswith("covers ") and recovery.lines == 1
    assert statuses(store, items) == [DUPLICATE, STORED, STORED, STORED]


def test_an_index_of_another_schema_is_rebuilt(tmp_path):
    stored_store(tmp_path, runs=1)
    with sqlite3.connect(tmp_path / INDEX_NAME) as db:
        db.execute("PRAGMA user_version = 99")
    recovery = Store(tmp_path).open()
    assert recovery.index_rebuilt == "has schema version 99, not 1" and recovery.lines == 4


def test_an_index_write_that_fails_stores_nothing(tmp_path, monkeypatch):
    items = stored_store(tmp_path, runs=1)
    store = Store(tmp_path)
    store.open()
    more = accepted(signed_run()[1])

    def full(*args, **kwargs):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(Index, "append", full)
    with pytest.raises(StoreError, match="database or disk is full"):
        store.commit([more])
    monkeypatch.undo()
    assert [p.stat().st_size for p in tmp_path.glob("*/*.jsonl")].count(0) == 1
    assert len(store) == 4 and not store.known(more[0].dedupe_key)
    assert statuses(store, items + more) == [DUPLICATE] * 4 + [STORED] * 4
    store.close()
    assert Store(tmp_path).open().lines == 8


def test_an_index_that_cannot_be_written_is_a_one_line_error(tmp_path):
    stored_store(tmp_path, runs=1)
    remove_index(tmp_path)
    (tmp_path / INDEX_NAME).mkdir()  # root may write anywhere: a folder stands in the way
    with pytest.raises(OSError) as raised:
        Store(tmp_path).open()
    message = raised.value.strerror or str(raised.value)
    assert message.startswith(f"cannot write the index {tmp_path / INDEX_NAME}: ")
    assert "\n" not in message


def test_other_files_in_a_key_folder_are_left_alone(tmp_path):
    items = stored_store(tmp_path, runs=1)
    (tmp_path / items[0].key_id / "notes.jsonl").write_bytes(b"not a run\n")
    (tmp_path / "notes.jsonl").write_bytes(b"not a key folder\n")
    recovery = Store(tmp_path).open()
    assert (recovery.files, recovery.lines, recovery.reindexed_lines) == (1, 4, 0)
    assert recovery.index_rebuilt is None
