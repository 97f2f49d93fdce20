"""``probe aggregate``: ingest, tables, rejected lines, report and export from the command line."""

from __future__ import annotations

from click.testing import CliRunner

from probe.aggregate.cli import aggregate


def test_the_commands_end_to_end(report_file, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"not":"signed"}\n')
    db = str(tmp_path / "a.duckdb")
    runner = CliRunner()

    def run(*args):
        result = runner.invoke(aggregate, ["--db", db, *args])
        assert result.exit_code == 0, result.output
        return result.output

    output = run("ingest", str(report_file), str(bad))
    assert f"rejected {bad}:1: no signature" in output
    assert "168 new measurement(s), 0 already known, 56 sealed run(s), 1 rejected" in output
    assert "0 new measurement(s), 168 already known" in run("ingest", str(report_file))
    summary = run("summary", "--country", "ir", "--service", "telegram").splitlines()
    assert summary[0].split() == [
        "cc",
        "network",
        "service",
        "day",
        "n",
        "blocked",
        "partial",
        "down",
        "inconcl.",
        "dominant",
        "methods",
    ]
    assert len(summary) == 2 + 2 * 7
    assert summary[2].split() == [
        "IR",
        "AS197207",
        "telegram",
        "2026-03-01",
        "2",
        "100%",
        "0%",
        "0%",
        "0%",
        "dns.nxdomain",
        "(2),",
        "tcp.timeout",
        "(2)",
    ]
    endpoints = run("endpoints", "--country", "RU")
    assert "telegram-web" in endpoints and "http.blockpage" in endpoints
    timeline = run("timeline", "--service", "signal")
    assert ["IR", "AS44244", "signal", "14", "100%", "2026-03-01", "02:01:00"] in [
        line.split()[:7] for line in timeline.splitlines()
    ]
    assert "no signature" in run("rejected") and "1 rejected line(s)" in run("rejected")
    page = tmp_path / "report.html"
    assert "wrote" in run("report", "--html", str(page))
    assert "<svg" in page.read_text() and "1 line(s) were rejected" in page.read_text()
    assert "168 measurements rows, 392 endpoints rows" in run(
        "export", "--parquet", str(tmp_path / "pq")
    )


def test_missing_inputs_are_usage_errors(tmp_path):
    result = CliRunner().invoke(
        aggregate, ["--db", str(tmp_path / "a.duckdb"), "ingest", str(tmp_path / "nothing")]
    )
    assert result.exit_code == 2 and "does not exist" in result.output
