"""kill -9 of the collector process mid-upload loses nothing it acknowledged.

The collector runs as a real subprocess (``python -m probe.collector serve``).
Uploaders keep sending while it is killed with SIGKILL; a torn line is left at
the end of one run file as a crash inside a write would; the collector is
started again on the same folder, and the uploaders retry what was not
acknowledged, as the probe's spool does. At the end every line sent is stored
exactly once, byte for byte, and everything acknowledged before the kill was
still there after it.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

from probe.collector.lines import check_line

from .helpers import CollectorProcess, signed_run, upload


def stored_lines(data, allow_torn_tail: bool = False) -> list[bytes]:
    """Every complete stored line. Right after a kill -9 a write may have been cut
    (a torn, never acknowledged tail): allowed then, never after a restart."""
    lines = []
    for path in sorted(data.glob("*/*.jsonl")):
        content = path.read_bytes()
        if not content.endswith(b"\n"):
            assert allow_torn_tail, f"{path} ends with a torn line"
            content = content[: content.rfind(b"\n") + 1]
        if content:
            lines += [line + b"\n" for line in content[:-1].split(b"\n")]
    return lines


class Uploader(threading.Thread):
    def __init__(self, batches, collector_url):
        super().__init__(daemon=True)
        self.todo = list(batches)
        self.url = collector_url
        self.acknowledged: list[bytes] = []
        self.errors = 0
        self.done = threading.Event()

    def run(self):
        deadline = time.monotonic() + 60
        while self.todo and time.monotonic() < deadline:
            batch = self.todo[0]
            try:
                status, _, payload = upload(self.url[0], batch, timeout=5)
            except OSError:
                self.errors += 1
                time.sleep(0.05)
                continue
            if status != 200:
                self.errors += 1
                time.sleep(0.05)
                continue
            for line, result in zip(batch, payload["results"], strict=False):
                assert result["status"] in ("stored", "duplicate"), result
                self.acknowledged.append(line)
            self.todo.pop(0)
        self.done.set()


def test_kill_9_mid_upload_loses_nothing_acknowledged(tmp_path):
    data = tmp_path / "data"
    runs = [signed_run()[1] for _ in range(60)]
    every_line = [line for run in runs for line in run]
    # Batches of 6 lines that cut across runs, each uploader with its own share.
    batches = [every_line[i : i + 6] for i in range(0, len(every_line), 6)]
    url = [""]
    # 60 probe keys from one loopback address: far more than one client may bring.
    generous = ("--new-keys-per-client-hour", "1000", "--max-uploads-per-client", "8")
    first = CollectorProcess(data, *generous)
    url[0] = first.start()
    uploaders = [Uploader(batches[i::4], url) for i in range(4)]
    for uploader in uploaders:
        uploader.start()
    deadline = time.monotonic() + 60
    while sum(len(u.acknowledged) for u in uploaders) < 40:
        assert time.monotonic() < deadline, "no uploads acknowledged: " + first.log()[-2000:]
        time.sleep(0.005)
    first.kill()  # SIGKILL, mid-upload: other uploads are in flight
    acknowledged_before_kill = {line for u in uploaders for line in list(u.acknowledged)}
    assert acknowledged_before_kill
    on_disk = set(stored_lines(data, allow_torn_tail=True))
    assert acknowledged_before_kill <= on_disk, "an acknowledged line was lost"

    # A crash inside a write leaves a torn line: the restart must cut it (the kill may
    # already have left one elsewhere; tear a file that ended cleanly, to know its size).
    victim = min(p for p in data.glob("*/*.jsonl") if p.read_bytes().endswith(b"\n"))
    with open(victim, "ab") as stream:
        stream.write(b'{"measurement_uid":"torn')

    second = CollectorProcess(data, *generous)
    url[0] = second.start()
    try:
        for uploader in uploaders:
            assert uploader.done.wait(60), "uploads did not finish"
        log = second.log()
        assert "cut 24 byte(s) of unacknowledged torn tail" in log
        stored = stored_lines(data)
        counts = Counter(stored)
        assert max(counts.values()) == 1, "a line was stored twice"
        assert set(stored) == set(every_line), "a line sent was not stored"
        assert all(check_line(line.rstrip(b"\n")).ok for line in stored)
        # Sending everything again stores nothing new.
        status, _, payload = upload(url[0], every_line[:100])
        assert status == 200 and {r["status"] for r in payload["results"]} == {"duplicate"}
    finally:
        assert second.stop() == 0
    assert sum(u.errors for u in uploaders) > 0  # the kill was felt by the uploaders
