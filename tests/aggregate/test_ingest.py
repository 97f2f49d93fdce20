"""Ingest: only verified lines count, rejected ones are listed; the tables match the truth."""

from __future__ import annotations

import json

from probe.aggregate import database, synthetic
from probe.aggregate.queries import DuckDBEngine, aggregate
from probe.collector.lines import LinePolicy, check_line
from probe.collector.store import Accepted, Store
from probe.report.keys import generate_ephemeral

from .conftest import DAYS, RUNS_PER_DAY


def expected_status(network, service, day):
    verdicts = synthetic.verdicts_for(network, service, day)
    return synthetic.service_status(verdicts.get(e[0], "ok") for e in synthetic.SERVICES[service])


def test_summary_matches_the_ground_truth(loaded):
    results = aggregate(DuckDBEngine(loaded))
    rows = {(r["probe_cc"], r["probe_asn"], r["service"], r["day"]): r for r in results.summary}
    assert len(rows) == len(synthetic.NETWORKS) * len(synthetic.SERVICES) * DAYS
    for network in synthetic.NETWORKS:
        for service in synthetic.SERVICES:
            for day in range(DAYS):
                date = f"2026-03-{day + 1:02d}"
                row = rows[(network.cc, network.asn, service, date)]
                status = expected_status(network, service, day)
                assert row["measurements"] == RUNS_PER_DAY
                assert row[f"share_{status}"] == 1.0, (network.asn, service, date, row)


def test_dominant_methods_first_and_last_seen(loaded):
    results = aggregate(DuckDBEngine(loaded))
    summary = {(r["probe_asn"], r["service"], r["day"]): r for r in results.summary}
    assert summary[("AS197207", "telegram", "2026-03-01")]["methods"] == [
        "dns.nxdomain (2)",
        "tcp.timeout (2)",
    ]
    assert summary[("AS197207", "whatsapp", "2026-03-03")]["methods"] == ["tls.reset (2)"]
    assert summary[("AS197207", "whatsapp", "2026-03-03")]["share_partially_blocked"] == 1.0
    assert summary[("AS197207", "whatsapp", "2026-03-02")]["methods"] == []
    timeline = {(r["probe_asn"], r["service"]): r for r in results.timeline}
    whatsapp = timeline[("AS197207", "whatsapp")]
    # Blocked on days 2..4 (0-based), two runs a day at 02:00 and 10:00.
    assert (whatsapp["first_blocked"], whatsapp["last_blocked"]) == (
        "2026-03-03 02:00:00",
        "2026-03-05 10:00:00",
    )
    assert whatsapp["share_blocked"] == round(6 / 14, 4)
    assert timeline[("AS3320", "whatsapp")]["first_blocked"] is None  # down is not blocked
    endpoints = {(r["probe_asn"], r["endpoint_id"]): r for r in results.endpoints}
    assert endpoints[("AS44244", "signal-chat")]["a_method"] == "tls.reset"
    assert endpoints[("AS44244", "signal-chat")]["share_blocked"] == 1.0
    assert endpoints[("AS12389", "telegram-web")]["first_blocked"] == "2026-03-04 02:02:00"
    matrix = {(r["probe_cc"], r["service"]): r for r in results.matrix}
    assert matrix[("IR", "telegram")]["networks"] == 2
    assert matrix[("DE", "telegram")]["share_blocked"] == 0.0


def test_bad_lines_are_rejected_and_listed_duplicates_counted_once(tmp_path, report_file):
    lines = report_file.read_bytes().split(b"\n")[:8]
    tampered = lines[0].replace(b'"probe_asn":"AS197207"', b'"probe_asn":"AS1"')
    reordered = json.dumps(json.loads(lines[1])).encode()  # same content, not canonical
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(
        b"\n".join([tampered, reordered, b"garbage", b'{"unsigned":true}', lines[2]]) + b"\n"
    )
    con = database.connect()
    result = database.ingest(con, [report_file, bad, report_file])
    assert result.rejected == 4
    reasons = {
        (source.rsplit("/", 1)[-1], line): reason for source, line, reason in result.rejections
    }
    assert reasons[("bad.jsonl", 1)] == "signature does not match (content changed after signing)"
    assert "not in canonical form" in reasons[("bad.jsonl", 2)]
    assert reasons[("bad.jsonl", 3)].startswith("not valid JSON")
    assert reasons[("bad.jsonl", 4)] == "no signature"
    total = len(synthetic.NETWORKS) * len(synthetic.SERVICES) * DAYS * RUNS_PER_DAY
    assert result.measurements == total
    assert result.duplicates == total + 1  # the file twice, and line 2 of it once more
    assert con.execute("SELECT count(*) FROM rejected").fetchall()[0][0] == 4
    assert con.execute("SELECT count(*) FROM measurements").fetchall()[0][0] == total
    assert database.ingest(con, [bad]).measurements == 0  # listed once, however often seen
    assert con.execute("SELECT count(*) FROM rejected").fetchall()[0][0] == 4


def test_trusted_keys_and_worker_processes(report_file):
    first_key = json.loads(report_file.read_bytes().split(b"\n")[0])["signature"]["key_id"]
    con = database.connect()
    result = database.ingest(con, [report_file], LinePolicy(frozenset({first_key})), workers=1)
    assert result.measurements == len(synthetic.SERVICES) * DAYS * RUNS_PER_DAY
    assert result.rejected == result.lines - result.measurements  # every line a measurement
    assert "is not in the trusted keys" in result.rejections[0][2]


def test_ingest_a_collector_store_and_check_its_chains(tmp_path):
    store = Store(tmp_path / "data")
    store.open()
    key = generate_ephemeral()
    records = [
        synthetic.measurement(s, "IR", "AS1", synthetic.START, {}, "r", f"{n:016x}")
        for n, s in enumerate(["telegram", "signal", "whatsapp", "telegram"])
    ]
    lines = [line.rstrip(b"\n") for line in synthetic.sign_run(key, records)]
    others = [
        synthetic.measurement("signal", "IR", "AS1", synthetic.START, {}, "r", f"{n:016x}")
        for n in (10, 11)
    ]
    cut = [line.rstrip(b"\n") for line in synthetic.sign_run(key, others, finish=False)]
    items = []
    for line in lines[:1] + lines[2:] + cut:  # run 1 lacks its seq 1; run 2 has no end
        checked = check_line(line)
        items.append(
            Accepted(checked.dedupe_key, checked.digest, checked.key_id, checked.run, line)
        )
    store.commit([items[::-1]])  # any arrival order
    con = database.connect()
    result = database.ingest(con, [tmp_path / "data"])
    assert (result.files, result.measurements, result.run_ends) == (2, 5, 1)
    findings = database.integrity(con)
    assert any("1 of 4 line(s) never received" in f for f in findings), findings
    assert any("not sealed" in f for f in findings), findings
    assert len(findings) == 2


def test_the_same_uid_under_two_keys_is_two_measurements(tmp_path):
    """A measurement_uid is its probe's own name: another key's line with the same
    uid is another measurement, neither a duplicate nor a conflict (nor can a
    stranger who copies a uid shadow someone else's measurement)."""
    record = synthetic.measurement("telegram", "IR", "AS1", synthetic.START, {}, "r",
                                   "00000000000000aa")
    files = []
    for name in ("one", "two"):
        path = tmp_path / f"{name}.jsonl"
        path.write_bytes(b"".join(synthetic.sign_run(generate_ephemeral(), [record])))
        files.append(path)
    con = database.connect()
    result = database.ingest(con, files)
    assert (result.measurements, result.duplicates, result.rejected) == (2, 0, 0)
    assert database.ingest(con, files).duplicates == 2  # each still a duplicate of itself
    keys = con.execute("SELECT count(DISTINCT key_id) FROM measurements").fetchall()[0][0]
    assert keys == 2
