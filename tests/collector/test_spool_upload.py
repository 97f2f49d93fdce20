"""The spool's upload client against the real collector: one key per request, named in a header."""

from __future__ import annotations

import asyncio

from probe.collector.lines import LinePolicy
from probe.report.writer import write_report_atomic
from probe.spool import RetryPolicy, pending_status, upload_pending

from .helpers import signed_run

FAST = RetryPolicy(base_delay=0.01, max_delay=0.05, max_attempts=3, deadline=30)


def two_probes_reports(folder):
    """A reports folder holding runs of two probe keys (a key rotated, say)."""
    enrolled, mine = signed_run()
    stranger, theirs = signed_run()
    write_report_atomic(folder / "20260301T000000Z-a.jsonl", mine)
    write_report_atomic(folder / "20260301T010000Z-b.jsonl", theirs)
    return enrolled, stranger


def test_each_request_names_the_key_of_all_its_lines(start_collector, tmp_path):
    reports = tmp_path / "reports"
    first, second = two_probes_reports(reports)
    collector = start_collector()
    summary = asyncio.run(upload_pending(reports, collector.url, policy=FAST))
    assert summary.drained and summary.stored == 8 and summary.rejected == 0
    assert summary.requests == 2  # one per key, although both fit in one request
    data = tmp_path / "data"
    assert {p.name for p in data.iterdir() if p.is_dir()} == {first.key_id, second.key_id}


def test_an_unenrolled_key_is_left_pending_not_quarantined(start_collector, tmp_path):
    reports = tmp_path / "reports"
    enrolled, stranger = two_probes_reports(reports)
    collector = start_collector(policy=LinePolicy(trusted_keys=frozenset({enrolled.key_id})))
    summary = asyncio.run(upload_pending(reports, collector.url, policy=FAST))
    assert summary.stored == 4 and summary.pending == 4 and summary.rejected == 0
    assert f"probe key {stranger.key_id} is not enrolled" in summary.problem
    assert "probe key show" in summary.problem
    assert pending_status(reports).quarantined == ()
    assert [p.name for p in (tmp_path / "data").iterdir() if p.is_dir()] == [enrolled.key_id]


def test_lines_left_unchecked_are_sent_again(start_collector, tmp_path):
    key, lines = signed_run(services=("telegram",) * 100, finish=False)
    tampered = [
        lines[0].replace(b'"probe_cc":"IR"', f'"probe_cc":"{n:03}"'.encode()) for n in range(500)
    ]
    assert len(set(tampered)) == 500
    reports = tmp_path / "reports"
    write_report_atomic(reports / "20260301T000000Z-a.jsonl", tampered + lines)
    collector = start_collector()  # one checker: waves of 200 lines
    summary = asyncio.run(upload_pending(reports, collector.url, policy=FAST))
    assert summary.drained and (summary.rejected, summary.stored) == (500, 100)
    assert summary.requests == 2  # 400 rejected, then the collector stopped checking
    assert collector.collector.totals["unchecked"] == 200
