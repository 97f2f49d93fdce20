"""Synthetic signed reports with a known truth (probe.aggregate.synthetic), ingested once."""

from __future__ import annotations

import pytest

from probe.aggregate import database, synthetic

DAYS, RUNS_PER_DAY = 7, 2


@pytest.fixture(scope="session")
def report_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("reports") / "scenario.jsonl"
    with open(path, "wb") as out:
        out.writelines(
            b"".join(lines)
            for _key, lines in synthetic.scenario(days=DAYS, runs_per_day=RUNS_PER_DAY)
        )
    return path


@pytest.fixture(scope="session")
def loaded(report_file, tmp_path_factory):
    """A database holding the scenario (read-only for the tests that use it)."""
    con = database.connect(tmp_path_factory.mktemp("db") / "aggregate.duckdb")
    result = database.ingest(con, [report_file])
    assert result.rejected == 0
    return con
