"""The spool and its upload client, against a minimal real collector on loopback.

``TestCollector`` implements docs/upload-protocol.md (limits, gzip, dedupe by
measurement_uid or (run, seq), fsync'd storage, the error statuses) without
checking signatures: that is the real collector's job. It runs on 127.0.0.1 in a
thread of the test process, so it can be stopped and started again while a
probe subprocess is killed with SIGKILL at random moments.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections import deque
from pathlib import Path

import pytest
from aiohttp import web
from click.testing import CliRunner

from probe.report.keys import generate_ephemeral
from probe.report.signing import ReportSigner, line_hash
from probe.report.verify import verify_file
from probe.report.writer import write_report_atomic
from probe.spool import (
    Limits,
    RetryPolicy,
    Spool,
    SpoolBusy,
    pending_status,
    retry_after,
    upload_pending,
)
from probe.spool_cli import status as status_command
from probe.spool_cli import upload as upload_command

MAX_BODY, MAX_LINE, MAX_LINES = 8 << 20, 1 << 20, 5000


# --------------------------------------------------------------------------- #
# a minimal collector                                                          #
# --------------------------------------------------------------------------- #


class TestCollector:
    """docs/upload-protocol.md over aiohttp, with faults to inject."""

    __test__ = False  # not a test class for pytest

    def __init__(self, store: Path, max_lines: int = MAX_LINES) -> None:
        self.store = store
        self.max_lines = max_lines
        self.port = 0
        self.faults: deque[tuple] = deque()  # ("status", code, retry_after) / ("lie",)
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.keys: dict[str, bytes] = {}
        self._load()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # storage ---------------------------------------------------------------

    def _load(self) -> None:
        if not self.store.exists():
            return
        data = self.store.read_bytes()
        for line in data[: data.rfind(b"\n") + 1].split(b"\n"):
            if line:
                self.keys[self.key_of(json.loads(line))] = line

    @staticmethod
    def key_of(record: dict) -> str | None:
        if isinstance(record.get("measurement_uid"), str):
            return "uid:" + record["measurement_uid"]
        return None

    def stored_lines(self) -> list[bytes]:
        data = self.store.read_bytes() if self.store.exists() else b""
        return [line for line in data.split(b"\n") if line]

    # HTTP ------------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def measurements(self, request: web.Request) -> web.Response:
        self.requests.append({"encoding": request.headers.get("Content-Encoding"),
                              "type": request.headers.get("Content-Type")})
        if self.faults:
            fault = self.faults.popleft()
            if fault[0] == "status":
                headers = {"Retry-After": str(fault[2])} if fault[2] is not None else {}
                return web.json_response({"error": "injected"}, status=fault[1], headers=headers)
            lie = fault[0] == "lie"
        else:
            lie = False
        if request.headers.get("Content-Type") != "application/x-ndjson":
            return web.json_response({"error": "unknown Content-Type"}, status=400)
        raw = await request.content.read(MAX_BODY + 1)
        if len(raw) > MAX_BODY:
            return web.json_response({"error": "body too large"}, status=413)
        # aiohttp's server inflates gzip request bodies itself; inflate here what it did not.
        if request.headers.get("Content-Encoding") == "gzip" and raw[:2] == b"\x1f\x8b":
            inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
            try:
                body = inflater.decompress(raw, MAX_BODY + 1)
            except zlib.error:
                return web.json_response({"error": "not gzip"}, status=400)
            if len(body) > MAX_BODY:
                return web.json_response({"error": "body too large"}, status=413)
        else:
            body = raw
        try:
            body.decode("utf-8")
        except UnicodeDecodeError:
            return web.json_response({"error": "not UTF-8"}, status=400)
        lines = body.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        if not lines:
            return web.json_response({"error": "empty body"}, status=400)
        if len(lines) > self.max_lines:
            return web.json_response({"error": "too many lines"}, status=413)
        results, new = [], []
        with self.lock:
            batch_keys: dict[str, bytes] = {}
            for number, line in enumerate(lines, 1):
                result = {"line": number, "measurement_uid": None, "status": "rejected",
                          "reason": None}
                results.append(result)
                try:
                    record = json.loads(line)
                except ValueError:
                    result["reason"] = "not JSON"
                    continue
                uid = record.get("measurement_uid") if isinstance(record, dict) else None
                result["measurement_uid"] = uid if isinstance(uid, str) else None
                key = self.key_of(record) if isinstance(record, dict) else None
                if key is None:
                    result["reason"] = "no measurement_uid"
                elif record.get("poison"):
                    result["reason"] = "signature does not match (content changed after signing)"
                elif (known := self.keys.get(key) or batch_keys.get(key)) is not None:
                    if known == line:
                        result["status"] = "duplicate"
                    else:
                        result["reason"] = "already stored with different content"
                else:
                    batch_keys[key] = line
                    new.append(line)
                    result["status"] = "stored"
                if lie and result["status"] == "stored":
                    result["measurement_uid"] = "somebody-else"
            if new:
                with open(self.store, "ab") as stream:
                    stream.write(b"".join(line + b"\n" for line in new))
                    stream.flush()
                    os.fsync(stream.fileno())
                self.keys.update(batch_keys)
        return web.json_response({"results": results})

    # lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    async def _start(self) -> None:
        app = web.Application(client_max_size=MAX_BODY + 1)
        app.router.add_get("/health", self.health)
        app.router.add_post("/v1/measurements", self.measurements)
        self._runner = web.AppRunner(app, shutdown_timeout=0.2, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def stop(self) -> None:
        if self._loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
        self._loop = None

    @property
    def running(self) -> bool:
        return self._loop is not None


@pytest.fixture
def collector(tmp_path):
    server = TestCollector(tmp_path / "collector.jsonl")
    server.start()
    yield server
    server.stop()


# --------------------------------------------------------------------------- #
# helpers                                                                      #
# --------------------------------------------------------------------------- #

FAST = RetryPolicy(base_delay=0.01, max_delay=0.05, max_attempts=5, deadline=30)
KEY = generate_ephemeral()


def write_report(folder: Path, name: str, count: int, pad: int = 10, extra: dict | None = None,
                 raw_lines: list[bytes] = ()) -> list[bytes]:
    """A report of ``count`` measurements (lines), the last one sealed, then ``raw_lines``."""
    measurements = []
    for number in range(count):
        measurement = {"measurement_uid": f"{name}-{number}-{os.urandom(4).hex()}",
                       "test_name": "telegram", "pad": "x" * pad}
        if extra and number in extra:
            measurement.update(extra[number])
        measurements.append(measurement)
    lines = [signed.line for signed in ReportSigner(KEY).sign_run(measurements)]
    lines += [line + b"\n" for line in raw_lines]
    write_report_atomic(folder / f"{name}.jsonl", lines)
    return [line.rstrip(b"\n") for line in lines]


def upload(folder: Path, url: str, **options):
    options.setdefault("policy", FAST)
    return asyncio.run(upload_pending(folder, url, **options))


class RecordedSleep:
    """The clock seam: records each wait instead of waiting."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


# --------------------------------------------------------------------------- #
# upload                                                                       #
# --------------------------------------------------------------------------- #


def test_upload_drains_and_a_second_upload_sends_nothing(tmp_path, collector):
    reports = tmp_path / "reports"
    lines = write_report(reports, "a", 5) + write_report(reports, "b", 3)
    summary = upload(reports, collector.url)
    assert (summary.stored, summary.duplicate, summary.pending) == (8, 0, 0)
    assert summary.drained and summary.problem is None
    assert sorted(collector.stored_lines()) == sorted(lines)  # byte for byte
    assert all(r["encoding"] == "gzip" and r["type"] == "application/x-ndjson"
               for r in collector.requests)
    before = len(collector.requests)
    again = upload(reports, collector.url)
    assert again.requests == 0 and len(collector.requests) == before and again.drained
    assert pending_status(reports).pending == 0


def test_acks_are_the_lines_chain_hashes(tmp_path, collector):
    reports = tmp_path / "reports"
    lines = write_report(reports, "a", 2)
    upload(reports, collector.url)
    records = Spool(reports).records("a.jsonl")
    assert set(records) == {line_hash(line) for line in lines}
    assert {r["status"] for r in records.values()} == {"stored"}


def test_lost_acknowledgement_means_a_duplicate_not_a_second_copy(tmp_path, collector):
    reports = tmp_path / "reports"
    write_report(reports, "a", 4)
    upload(reports, collector.url)
    (reports / ".spool" / "a.jsonl.acks").unlink()  # as if killed before the ack was written
    summary = upload(reports, collector.url)
    assert (summary.stored, summary.duplicate, summary.pending) == (0, 4, 0)
    assert len(collector.stored_lines()) == 4


def test_batches_respect_line_and_size_limits_uncompressed(tmp_path, collector):
    reports = tmp_path / "reports"
    write_report(reports, "a", 20, pad=300)
    limits = Limits(max_body=2000, max_lines=4)
    summary = upload(reports, collector.url, limits=limits, compress=False)
    assert summary.drained and summary.stored == 20
    assert all(r["encoding"] is None for r in collector.requests)
    assert len(collector.requests) >= 20 * 300 // 2000


def test_too_many_lines_for_the_collector_are_split(tmp_path):
    server = TestCollector(tmp_path / "store.jsonl", max_lines=3)
    server.start()
    try:
        reports = tmp_path / "reports"
        write_report(reports, "a", 10)
        summary = upload(reports, server.url)
        assert summary.drained and summary.stored == 10
        assert len(server.stored_lines()) == 10
    finally:
        server.stop()


def test_429_waits_as_long_as_retry_after_says(tmp_path, collector):
    reports = tmp_path / "reports"
    write_report(reports, "a", 2)
    collector.faults.extend([("status", 429, 7), ("status", 503, 2)])
    sleep = RecordedSleep()
    summary = upload(reports, collector.url, sleep=sleep)
    assert summary.drained
    assert len(sleep.waits) == 2
    assert 7 <= sleep.waits[0] <= 7 + FAST.base_delay and 2 <= sleep.waits[1] <= 2.1


def test_503_without_retry_after_backs_off_exponentially_with_jitter(tmp_path, collector):
    reports = tmp_path / "reports"
    write_report(reports, "a", 1)
    collector.faults.extend([("status", 503, None)] * 4)
    sleep = RecordedSleep()
    policy = RetryPolicy(base_delay=1.0, max_delay=100, max_attempts=10, deadline=None)
    summary = upload(reports, collector.url, sleep=sleep, policy=policy)
    assert summary.drained
    for attempt, wait in enumerate(sleep.waits, 1):
        ceiling = 2 ** (attempt - 1)
        assert ceiling / 2 <= wait <= ceiling
    assert sleep.waits == sorted(sleep.waits)


def test_rejected_lines_are_quarantined_and_never_sent_again(tmp_path, collector):
    reports = tmp_path / "reports"
    write_report(reports, "a", 3, extra={1: {"poison": True}})
    summary = upload(reports, collector.url)
    assert (summary.stored, summary.rejected, summary.pending) == (2, 1, 0)
    state = pending_status(reports)
    assert state.pending == 0 and len(state.quarantined) == 1
    quarantined = state.quarantined[0]
    assert quarantined.number == 2 and "signature does not match" in quarantined.reason
    assert quarantined.measurement_uid.startswith("a-1-")
    assert upload(reports, collector.url).requests == 0


def test_a_line_that_breaks_the_whole_request_is_found_and_quarantined(tmp_path, collector):
    reports = tmp_path / "reports"
    write_report(reports, "a", 6, raw_lines=[b'{"measurement_uid": "bad \xff"}'])
    summary = upload(reports, collector.url, compress=False)
    assert summary.drained and summary.stored == 6 and summary.rejected == 1
    (quarantined,) = pending_status(reports).quarantined
    assert quarantined.number == 7 and "not UTF-8" in quarantined.reason


def test_lines_over_the_collector_limit_are_quarantined_locally(tmp_path, collector):
    reports = tmp_path / "reports"
    write_report(reports, "a", 2, extra={0: {"pad": "y" * 5000}})
    summary = upload(reports, collector.url, limits=Limits(max_line=4096))
    assert (summary.stored, summary.rejected) == (1, 1)
    assert "1 MiB" in pending_status(reports).quarantined[0].reason


def test_confirmation_for_another_measurement_is_not_trusted(tmp_path, collector):
    reports = tmp_path / "reports"
    write_report(reports, "a", 2)
    collector.faults.append(("lie",))
    summary = upload(reports, collector.url)
    assert summary.pending == 2 and not summary.drained  # every ack named another uid
    assert upload(reports, collector.url).drained


def test_collector_down_then_back(tmp_path, collector):
    reports = tmp_path / "reports"
    write_report(reports, "a", 3)
    collector.stop()
    summary = upload(reports, collector.url)
    assert not summary.drained and summary.pending == 3
    assert "cannot reach the collector" in summary.problem
    collector.start()
    assert upload(reports, collector.url).drained


def test_deadline_stops_retrying_without_losing_anything(tmp_path, collector):
    reports = tmp_path / "reports"
    write_report(reports, "a", 1)
    collector.faults.append(("status", 429, 3600))
    summary = upload(reports, collector.url, policy=RetryPolicy(deadline=60))
    assert summary.pending == 1 and "out of time" in summary.problem


def test_wrong_url_stops_at_once(tmp_path, collector):
    reports = tmp_path / "reports"
    write_report(reports, "a", 1)
    summary = upload(reports, collector.url + "/wrong")
    assert summary.requests == 1 and summary.pending == 1
    assert "404" in summary.problem and "check the upload URL" in summary.problem
    assert pending_status(reports).quarantined == ()


def test_a_torn_ack_record_is_ignored_then_cut_off(tmp_path, collector):
    reports = tmp_path / "reports"
    lines = write_report(reports, "a", 3)
    acks = reports / ".spool" / "a.jsonl.acks"
    acks.parent.mkdir(parents=True)
    first = json.dumps({"line": 1, "sha256": line_hash(lines[0]), "status": "stored"})
    acks.write_bytes(first.encode() + b'\n{"line": 2, "sha256": "ab')  # killed mid-write
    spool = Spool(reports)
    assert [p.number for p in spool.pending()] == [2, 3]
    collector.keys["uid:" + json.loads(lines[0])["measurement_uid"]] = lines[0]
    assert upload(reports, collector.url).drained
    records = [json.loads(row) for row in acks.read_bytes().splitlines()]
    assert [r["line"] for r in records] == [1, 2, 3]


def test_two_uploads_on_one_folder_exclude_each_other(tmp_path, collector):
    reports = tmp_path / "reports"
    write_report(reports, "a", 1)
    with Spool(reports).lock(), pytest.raises(SpoolBusy, match="another 'probe upload'"):
        upload(reports, collector.url)
    assert upload(reports, collector.url).drained


def test_temporary_files_of_an_interrupted_write_are_not_reports(tmp_path, collector):
    reports = tmp_path / "reports"
    write_report(reports, "a", 1)
    (reports / ".b.jsonl.x1y2.tmp").write_bytes(b'{"half')
    assert [p.name for p in Spool(reports).reports()] == ["a.jsonl"]


def test_retry_after_forms():
    import datetime

    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    assert retry_after("120") == 120
    assert retry_after("Thu, 01 Jan 2026 00:00:30 GMT", now) == 30
    assert retry_after("Wed, 31 Dec 2025 00:00:00 GMT", now) == 0
    assert retry_after("soon") is None and retry_after(None) is None


# --------------------------------------------------------------------------- #
# the commands                                                                 #
# --------------------------------------------------------------------------- #


def test_upload_command_exit_codes_and_config_file(tmp_path, collector):
    reports = tmp_path / "reports"
    write_report(reports, "a", 2)
    runner = CliRunner()
    config = tmp_path / "config.toml"
    result = runner.invoke(upload_command, ["--reports", str(reports), "--config", str(config)])
    assert result.exit_code == 2 and "no collector URL" in result.output
    config.write_text(f'[upload]\nurl = "{collector.url}"\n')
    result = runner.invoke(upload_command, ["--reports", str(reports), "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "2 stored" in result.output and "0 pending" in result.output
    collector.stop()
    write_report(reports, "b", 1)
    result = runner.invoke(upload_command, ["--reports", str(reports), "--url", collector.url,
                                            "--max-time", "1"])
    assert result.exit_code == 1 and "1 pending" in result.output


def test_upload_command_rejects_a_bad_url(tmp_path):
    result = CliRunner().invoke(upload_command, ["--reports", str(tmp_path), "--url", "ftp://x"])
    assert result.exit_code == 2 and "http://" in result.output


def test_status_command_shows_pending_and_quarantined(tmp_path, collector):
    reports = tmp_path / "reports"
    write_report(reports, "a", 2, extra={0: {"poison": True}})
    upload(reports, collector.url)
    write_report(reports, "b", 4)
    result = CliRunner().invoke(status_command, ["--reports", str(reports)])
    assert result.exit_code == 0
    assert "a.jsonl" in result.output and "b.jsonl      4 of 4 lines pending" in result.output
    assert "a.jsonl line 1" in result.output and "signature does not match" in result.output
    as_json = json.loads(CliRunner().invoke(status_command, ["--reports", str(reports),
                                                              "--json"]).output)
    assert as_json["pending"] == 4 and len(as_json["quarantined"]) == 1


# --------------------------------------------------------------------------- #
# kill -9 at random moments                                                    #
# --------------------------------------------------------------------------- #

CHILD = r"""
import asyncio, os, random, sys
from pathlib import Path
from probe.report.keys import generate_ephemeral
from probe.report.signing import ReportSigner
from probe.report.writer import write_report_atomic
from probe.spool import Limits, RetryPolicy, upload_pending

reports, url, iteration = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
rng = random.Random(iteration)
key = generate_ephemeral()
policy = RetryPolicy(base_delay=0.005, max_delay=0.03, max_attempts=10**6, deadline=None)

async def main():
    for number in range(200):  # until killed
        lines = [signed.line for signed in ReportSigner(key).sign_run(
            {"measurement_uid": f"{iteration}-{number}-{n}", "test_name": "t",
             "pad": "x" * rng.randint(0, 20000)} for n in range(rng.randint(1, 6)))]
        write_report_atomic(reports / f"{iteration:03d}-{number}.jsonl", lines)
        await upload_pending(reports, url, policy=policy, limits=Limits(max_lines=2))

asyncio.run(main())
"""


def _report_lines(reports: Path) -> dict[bytes, str]:
    found = {}
    for path in Spool(reports).reports():
        result = verify_file(path, require_end=True)
        assert result.problems == (), f"{path.name}: {result.problems}"
        for line in path.read_bytes().splitlines():
            found[line] = path.name
    return found


def test_kill_9_at_random_moments_loses_nothing_and_stores_nothing_twice(tmp_path, collector):
    reports = tmp_path / "reports"
    reports.mkdir()
    seed = int(os.environ.get("PROBE_KILL_SEED") or random.randrange(1 << 30))
    print(f"kill -9 schedule seed: {seed} (PROBE_KILL_SEED={seed} replays it)")
    rng = random.Random(seed)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    killed_during_upload = 0
    for iteration in range(20):
        if rng.random() < 0.25 and collector.running:
            collector.stop()  # the collector goes down for this iteration
        elif not collector.running:
            collector.start()
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(reports), collector.url,
                                  str(iteration)], env=env)
        deadline = time.monotonic() + rng.uniform(0.3, 1.5)
        while time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.01)
        if child.poll() is None:
            child.send_signal(signal.SIGKILL)
            killed_during_upload += 1
        child.wait(10)

        # After each kill: every report verifies (no corrupt line), every line the
        # spool holds as confirmed is at the collector, nothing is stored twice.
        lines = _report_lines(reports)
        stored = collector.stored_lines()
        assert len(stored) == len(set(stored)), "a line was stored twice"
        assert len({TestCollector.key_of(json.loads(s)) for s in stored}) == len(stored)
        assert set(stored) <= set(lines), "the collector holds a line no report has"
        stored_hashes = {line_hash(line) for line in stored}
        spool = Spool(reports)
        for path in spool.reports():
            for digest, record in spool.records(path.name).items():
                assert record["status"] in ("stored", "duplicate")
                assert digest in stored_hashes, "acknowledged but not at the collector"
    assert killed_during_upload >= 15  # the test really killed processes at work

    if not collector.running:
        collector.start()
    summary = upload(reports, collector.url)
    assert summary.drained, summary.problem
    lines = _report_lines(reports)
    stored = collector.stored_lines()
    assert sorted(stored) == sorted(lines)  # every written line exactly once
    assert pending_status(reports).pending == 0
    duplicates = sum(
        record["status"] == "duplicate"
        for path in Spool(reports).reports()
        for record in Spool(reports).records(path.name).values()
    )
    print(f"{killed_during_upload} kills at work; {duplicates} lines re-sent after a kill")


def test_gzip_body_is_one_member_the_collector_can_inflate(tmp_path, collector):
    reports = tmp_path / "reports"
    lines = write_report(reports, "a", 3)
    seen = []

    class Recording:
        async def post(self, url, body, headers):
            seen.append(body)
            from probe.spool import AiohttpTransport

            transport = AiohttpTransport()
            try:
                return await transport.post(url, body, headers)
            finally:
                await transport.aclose()

        async def aclose(self):
            return None

    assert upload(reports, collector.url, transport=Recording()).drained
    assert gzip.decompress(seen[0]).splitlines() == lines
    assert base64.b64encode(seen[0][:2]) == base64.b64encode(b"\x1f\x8b")


def test_a_collector_that_refuses_everything_gets_nothing_quarantined(tmp_path, collector):
    reports = tmp_path / "reports"
    write_report(reports, "a", 3)
    collector.faults.extend([("status", 400, None)] * 20)
    summary = upload(reports, collector.url)
    assert summary.pending == 3 and summary.rejected == 0
    assert "refuses every request" in summary.problem
    assert pending_status(reports).quarantined == ()
    collector.faults.clear()
    assert upload(reports, collector.url).drained
