"""How long the collector takes to start on a store of a million lines.

    .venv/bin/python benchmarks/collector_start.py [--lines 1000000] [--lines-per-run 10]

Fills a data folder in the store's own layout (``<key_id>/<run>.jsonl``, one
small measurement line each, ``--lines-per-run`` lines a run, runs spread over
``--keys`` probe keys), then times :meth:`Store.open`:

1. the first start, on a folder without an index (as the code before the index
   left it): every line is read once to build ``index.sqlite3``;
2. ``--repeat`` starts on the indexed folder: one stat per run file, no line read;
3. a start after a crash between the line writes and their index rows (the
   last ``--tail`` lines appended to their files behind the index's back).

``--writer store`` fills the folder through :meth:`Store.commit` instead (groups
of 1,000 lines, no fsync), which builds the index as the collector does and
also times that. The page cache is warm (the files were just written or read).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from probe.collector.index import INDEX_NAME  # noqa: E402 - after sys.path
from probe.collector.store import Accepted, Store, measurement_key  # noqa: E402


def line(uid: str) -> bytes:
    """A small measurement line: what the index reads of a line is its uid."""
    return json.dumps(
        {"measurement_uid": uid, "probe_cc": "IR", "test_name": "messaging", "test_keys": {}},
        separators=(",", ":"),
    ).encode()


def runs(total: int, per_run: int, keys: int):
    """(key_id, run, [lines]) for ``total`` lines."""
    key_ids = [secrets.token_hex(8) for _ in range(keys)]
    made = 0
    number = 0
    while made < total:
        count = min(per_run, total - made)
        uids = [
            f"20260301T000000Z_IR_{number:08d}_{i:03d}_{secrets.token_hex(8)}" for i in range(count)
        ]
        yield key_ids[number % keys], secrets.token_hex(16), [line(uid) for uid in uids]
        made += count
        number += 1


def fill_synthetic(root: Path, total: int, per_run: int, keys: int) -> None:
    for key_id, run, lines in runs(total, per_run, keys):
        folder = root / key_id
        folder.mkdir(exist_ok=True)
        (folder / f"{run}.jsonl").write_bytes(b"".join(item + b"\n" for item in lines))


def fill_through_store(root: Path, total: int, per_run: int, keys: int) -> float:
    """Commit every line through the store (no fsync); seconds taken."""
    store = Store(root, fsync=False)
    store.open()
    group: list[Accepted] = []
    started = time.perf_counter()
    for key_id, run, lines in runs(total, per_run, keys):
        for item in lines:
            uid = json.loads(item)["measurement_uid"]
            digest = hashlib.sha256(item).hexdigest()
            group.append(Accepted(measurement_key(key_id, uid), digest, key_id, run, item))
        if len(group) >= 1000:
            store.commit([group])
            group = []
    if group:
        store.commit([group])
    elapsed = time.perf_counter() - started
    store.close()
    return elapsed


def remove_index(root: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{root / INDEX_NAME}{suffix}").unlink(missing_ok=True)


def timed_open(root: Path):
    store = Store(root)
    started = time.perf_counter()
    recovery = store.open()
    elapsed = time.perf_counter() - started
    count = len(store)
    store.close()
    return elapsed, recovery, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--lines-per-run", type=int, default=10)
    parser.add_argument("--keys", type=int, default=1000, help="probe keys (folders)")
    parser.add_argument("--writer", choices=("synthetic", "store"), default="synthetic")
    parser.add_argument("--repeat", type=int, default=5, help="starts timed on the indexed folder")
    parser.add_argument("--tail", type=int, default=1000, help="lines beyond the index")
    parser.add_argument("--keep", metavar="DIR", help="work in DIR and keep it")
    parser.add_argument(
        "--reuse", action="store_true", help="with --keep: reuse the run files in DIR"
    )
    args = parser.parse_args()
    if args.reuse and not args.keep:
        parser.error("--reuse needs --keep DIR")

    root = Path(args.keep or tempfile.mkdtemp(prefix="collector-start-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        started = time.perf_counter()
        if args.reuse and any(root.glob("*/*.jsonl")):
            remove_index(root)
        elif args.writer == "store":
            elapsed = fill_through_store(root, args.lines, args.lines_per_run, args.keys)
            print(
                f"stored {args.lines} lines through Store.commit in {elapsed:.1f} s "
                f"({args.lines / elapsed:,.0f} lines/s, no fsync)",
                flush=True,
            )
            remove_index(root)  # start as the code before the index left it
        else:
            fill_synthetic(root, args.lines, args.lines_per_run, args.keys)
        files = list(root.glob("*/*.jsonl"))
        size = sum(p.stat().st_size for p in files)
        print(
            f"store: {len(files)} run files, {len({p.parent for p in files})} keys, "
            f"{size / 1e6:.0f} MB (filled in {time.perf_counter() - started:.1f} s)",
            flush=True,
        )

        elapsed, recovery, count = timed_open(root)
        lines = recovery.lines
        index_mb = (root / INDEX_NAME).stat().st_size / 1e6
        print(
            f"first start, no index: {elapsed:.2f} s (read {lines} lines, "
            f"{count} keys; index {index_mb:.0f} MB)",
            flush=True,
        )

        times = []
        for _ in range(args.repeat):
            elapsed, recovery, count = timed_open(root)
            assert recovery.reindexed_lines == 0 and recovery.lines == lines, recovery
            times.append(elapsed)
        print(
            f"start with the index: median {statistics.median(times):.3f} s, max "
            f"{max(times):.3f} s over {args.repeat} starts ({count} keys, "
            f"{recovery.files} run files, no line read)",
            flush=True,
        )

        appended = 0
        for _key_id, _run, lines in runs(args.tail, args.lines_per_run, 1):
            with open(files[appended % len(files)], "ab") as stream:
                stream.write(b"".join(item + b"\n" for item in lines))
            appended += len(lines)
        elapsed, recovery, count = timed_open(root)
        print(
            f"start after a crash behind the index: {elapsed:.3f} s "
            f"(read {recovery.reindexed_lines} lines; {count} keys)",
            flush=True,
        )
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"peak memory {peak:.0f} MiB", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
