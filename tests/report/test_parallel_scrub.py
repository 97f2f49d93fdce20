"""Scrubbing in worker processes gives the serial path's report, line for line.

A lab trace (no censorship, every service of the lab's targets) is replayed and
its report lines scrubbed of an address that is in them, once here and once in
two forked workers: the clean lines, their order and the dropped ones must be
the same, and so must whole reports written both ways (but for the parts that
are random in every report: the measurement uid and the signature).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from probe.replay import replay_trace
from probe.report import measurements
from probe.report.canonical import canonical_bytes
from probe.report.keys import generate_ephemeral
from probe.report.measurements import RunContext, iter_lines, scrub_stream, write_run_report

TRACE = Path(__file__).resolve().parent.parent / "traces" / "lab" / "none.jsonl.gz"
# the lab's resolver: in every line (resolver_ip, DNS queries), so scrubbing has work
ADDRESSES = ("198.51.100.53", "2001:db8:ffff::1")

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="workers fork: Linux only")


@pytest.fixture(scope="module")
def replayed():
    return replay_trace(TRACE)


def test_workers_scrub_exactly_as_the_serial_path(replayed, monkeypatch):
    monkeypatch.setattr(measurements, "PARALLEL_SCRUB_LINES", 2)
    context = RunContext(ADDRESSES)
    lines = list(iter_lines(replayed.outcome, replayed.trace.run.targets, context))
    assert len(lines) >= 4 and any("198.51.100.53" in json.dumps(x) for x in lines)
    serial = list(scrub_stream(lines, ADDRESSES, workers=0))
    parallel = list(scrub_stream(lines, ADDRESSES, workers=2))
    assert [lost for _, lost in serial] == [lost for _, lost in parallel]
    assert [[canonical_bytes(x) for x in clean] for clean, _ in serial] == \
        [[canonical_bytes(x) for x in clean] for clean, _ in parallel]
    assert not any("198.51.100.53" in json.dumps(x) for clean, _ in serial for x in clean)


def stable(report: Path) -> list[str]:
    records = []
    for raw in report.read_bytes().splitlines():
        record = json.loads(raw)
        record.pop("signature")
        record.pop("measurement_uid")
        records.append(json.dumps(record, sort_keys=True))
    return records


def test_reports_written_with_and_without_workers_are_the_same(replayed, tmp_path,
                                                               monkeypatch):
    monkeypatch.setattr(measurements, "PARALLEL_SCRUB_LINES", 2)
    key = generate_ephemeral()
    reports = []
    for workers in (0, 2):
        path, dropped = write_run_report(
            replayed.outcome, replayed.trace.run.targets, tmp_path / str(workers), key,
            RunContext(ADDRESSES), workers=workers)
        assert path is not None and not dropped
        reports.append(stable(path))
    assert reports[0] == reports[1] and len(reports[0]) >= 4
