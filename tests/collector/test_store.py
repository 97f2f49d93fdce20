"""The store: exactly the received bytes, one file per run, deduplicated, repaired after a crash."""

from __future__ import annotations

import errno
import os

import pytest

from probe.collector.lines import check_line
from probe.collector.store import DUPLICATE, REJECTED, STORED, Accepted, Store, StoreError
from probe.report.verify import verify_file

from .helpers import signed_run


def accepted(lines):
    items = []
    for line in lines:
        raw = line.rstrip(b"\n")
        checked = check_line(raw)
        assert checked.ok, checked.reason
        items.append(Accepted.from_checked(checked, raw))
    return items


def test_stores_the_bytes_received_in_one_file_per_run(tmp_path):
    store = Store(tmp_path)
    store.open()
    key, lines = signed_run()
    items = accepted(lines)
    assert [o.status for o in store.commit([items])[0]] == [STORED] * 4
    path = tmp_path / key.key_id / f"{items[0].run}.jsonl"
    assert path.read_bytes() == b"".join(lines)
    assert verify_file(path, require_end=True).ok
    # The same lines again, in another upload: acknowledged, not stored twice.
    assert [o.status for o in store.commit([items[::-1]])[0]] == [DUPLICATE] * 4
    assert path.read_bytes() == b"".join(lines)


def test_duplicates_within_one_group_are_stored_once(tmp_path):
    store = Store(tmp_path)
    store.open()
    _, lines = signed_run()
    items = accepted(lines)
    first, second = store.commit([items[:2], items[:3]])
    assert [o.status for o in first] == [STORED, STORED]
    assert [o.status for o in second] == [DUPLICATE, DUPLICATE, STORED]
    assert len(store) == 3


def test_the_same_uid_with_other_bytes_is_refused(tmp_path):
    store = Store(tmp_path)
    store.open()
    _, lines = signed_run()
    item = accepted(lines[:1])[0]
    store.commit([[item]])
    forged = Accepted(item.dedupe_key, "0" * 64, item.key_id, item.run, b"{}")
    (outcome,) = store.commit([[forged]])[0]
    assert outcome.status == REJECTED and "already stored with different content" in outcome.reason


def test_a_torn_tail_is_cut_and_the_index_rebuilt(tmp_path):
    store = Store(tmp_path)
    store.open()
    key, lines = signed_run()
    items = accepted(lines)
    store.commit([items[:2]])
    store.close()
    path = tmp_path / key.key_id / f"{items[0].run}.jsonl"
    with open(path, "ab") as stream:  # a crash in the middle of the next write
        stream.write(lines[2][:100])
    reopened = Store(tmp_path)
    recovery = reopened.open()
    assert (recovery.lines, recovery.torn_bytes) == (2, 100)
    assert recovery.torn_files == [f"{key.key_id}/{items[0].run}.jsonl"]
    assert path.read_bytes() == b"".join(lines[:2])
    statuses = [o.status for o in reopened.commit([items])[0]]
    assert statuses == [DUPLICATE, DUPLICATE, STORED, STORED]
    assert path.read_bytes() == b"".join(lines)


def test_a_failed_write_stores_nothing_of_the_group(tmp_path, monkeypatch):
    store = Store(tmp_path)
    store.open()
    _, first_run = signed_run()
    _, second_run = signed_run()
    store.commit([accepted(first_run[:1])])
    real_write = os.write
    calls = []

    def failing_write(descriptor, data):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(descriptor, data)

    monkeypatch.setattr(os, "write", failing_write)
    with pytest.raises(StoreError, match="No space left on device"):
        store.commit([accepted(first_run[1:]), accepted(second_run)])
    monkeypatch.undo()
    # Nothing of the failed group is on disk or in the index; a retry stores it all.
    sizes = sorted(p.stat().st_size for p in tmp_path.glob("*/*.jsonl"))
    assert sizes in ([0, len(first_run[0])], [len(first_run[0])])
    assert len(store) == 1
    statuses = [
        o.status
        for group in store.commit([accepted(first_run), accepted(second_run)])
        for o in group
    ]
    assert statuses == [DUPLICATE] + [STORED] * 7


def test_a_group_touching_more_files_than_may_stay_open(tmp_path, monkeypatch):
    """Regression: descriptors of a group were closed before its fsync (KeyError)."""
    import probe.collector.store as store_module

    monkeypatch.setattr(store_module, "MAX_OPEN_FILES", 3)
    store = Store(tmp_path)
    store.open()
    runs = [signed_run()[1] for _ in range(5)]
    outcomes = store.commit([accepted(run) for run in runs])
    assert all(o.status == STORED for group in outcomes for o in group)
    assert len(store._files) == 3
    assert len(list(tmp_path.glob("*/*.jsonl"))) == 5


def test_a_uid_is_unique_per_probe_key_only(tmp_path):
    """Another key's line with the same measurement_uid is its own measurement."""
    from probe.aggregate.synthetic import START, measurement, sign_run
    from probe.report.keys import generate_ephemeral

    record = measurement("telegram", "IR", "AS197207", START, {}, "rsame", "0123456789abcdef")
    first, second = generate_ephemeral(), generate_ephemeral()
    mine = sign_run(first, [record], finish=False)
    theirs = sign_run(second, [record], finish=False)
    assert mine != theirs
    store = Store(tmp_path)
    store.open()
    assert [o.status for o in store.commit([accepted(mine)])[0]] == [STORED]
    assert [o.status for o in store.commit([accepted(theirs)])[0]] == [STORED]
    assert store.known_key(first.key_id) and store.known_key(second.key_id)
    store.close()
    # The index rebuilt from the files at start scopes uids by key too.
    reopened = Store(tmp_path)
    assert reopened.open().lines == 2
    assert reopened.key_count == 2
    outcomes = reopened.commit([accepted(mine), accepted(theirs)])
    assert [o.status for group in outcomes for o in group] == [DUPLICATE, DUPLICATE]
    tampered = accepted(mine)[0]
    forged = Accepted(tampered.dedupe_key, "0" * 64, tampered.key_id, tampered.run, b"{}")
    (outcome,) = reopened.commit([[forged]])[0]
    assert outcome.status == REJECTED and first.key_id in outcome.reason
