"""Parquet export partitioned by day and country; Spark on it agrees with DuckDB exactly."""

from __future__ import annotations

import shutil

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from probe.aggregate import export
from probe.aggregate.cli import aggregate as aggregate_command
from probe.aggregate.queries import DuckDBEngine, SparkEngine, aggregate, spark_session


@pytest.fixture(scope="module")
def parquet(loaded, tmp_path_factory):
    out = tmp_path_factory.mktemp("parquet")
    written = export.export_parquet(loaded, out)
    assert written["measurements"] == 168 and written["endpoints"] == 392
    return out


def test_partitioned_by_day_and_country(parquet, loaded):
    folders = sorted(
        p.relative_to(parquet / "measurements").as_posix()
        for p in (parquet / "measurements").glob("*/*")
    )
    assert folders[0] == "day=2026-03-01/probe_cc=DE"
    assert len(folders) == 7 * 3
    dataset = ds.dataset(parquet / "endpoints", format="parquet", partitioning="hive")
    table = dataset.to_table(filter=(ds.field("probe_cc") == "RU"))
    assert set(dataset.schema.names) >= {"day", "probe_cc", "endpoint_id", "verdict", "method"}
    rows = loaded.execute("SELECT count(*) FROM endpoints WHERE probe_cc = 'RU'").fetchall()[0][0]
    assert table.num_rows == rows


def test_the_export_holds_every_row_and_column_sorted_in_each_file(parquet, loaded):
    def rows(table):
        return sorted(
            tuple(sorted((k, str(v)) for k, v in row.items())) for row in table.to_pylist()
        )

    for table in export.TABLES:
        dataset = ds.dataset(parquet / table, format="parquet", partitioning=export_layout())
        stored = loaded.sql(f"SELECT * FROM {table}").to_arrow_table()
        assert sorted(dataset.schema.names) == sorted(stored.schema.names)
        assert rows(dataset.to_table()) == rows(stored), table
        for path in (parquet / table).glob("*/*/*.parquet"):
            uids = pq.read_table(path).column("measurement_uid").to_pylist()
            assert uids == sorted(uids), path


def export_layout():
    return ds.partitioning(
        pa.schema([("day", pa.date32()), ("probe_cc", pa.string())]), flavor="hive"
    )


def test_a_second_export_replaces_its_partitions_and_big_ones_roll_over(
    loaded, tmp_path, monkeypatch
):
    monkeypatch.setattr(export, "MAX_ROWS_PER_FILE", 5)
    monkeypatch.setattr(export, "ROW_GROUP_ROWS", 2)
    monkeypatch.setattr(export, "BATCH_ROWS", 7)  # partitions cut across batches
    monkeypatch.setattr(export, "SORT_ROWS", 20)  # days cut by country, several a slice
    first = export.export_parquet(loaded, tmp_path, memory_limit="64MB")
    second = export.export_parquet(loaded, tmp_path, memory_limit="64MB")
    assert first == second == {"measurements": 168, "endpoints": 392}
    dataset = ds.dataset(tmp_path / "endpoints", format="parquet", partitioning="hive")
    assert dataset.count_rows() == 392
    files = list((tmp_path / "endpoints").glob("*/*/*.parquet"))
    assert {p.name for p in files} >= {"part-0.parquet", "part-1.parquet"}
    assert all(pq.ParquetFile(p).metadata.num_rows <= 5 for p in files)
    assert max(pq.ParquetFile(p).metadata.num_row_groups for p in files) >= 2
    # The connection's own settings are given back.
    assert loaded.execute("SELECT current_setting('memory_limit')").fetchall()[0][0] != "64.0 MiB"


def _spark_or_skip():
    if shutil.which("java") is None:
        pytest.skip("Spark needs a Java runtime: apt-get install -y default-jre-headless")
    try:
        import pyspark  # noqa: F401
    except ImportError:
        pytest.skip("pyspark is not installed (pip install pyspark)")


@pytest.fixture(scope="module")
def spark():
    _spark_or_skip()
    session = spark_session("local[2]")
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def test_spark_gives_the_same_tables_as_duckdb(spark, parquet, loaded):
    duck = aggregate(DuckDBEngine(loaded))
    sparked = aggregate(SparkEngine(spark, str(parquet)))
    for name in duck.raw:
        assert sparked.raw[name] == duck.raw[name], name
    assert sparked == duck


def test_cli_engine_spark(spark, parquet, loaded, tmp_path):
    database = loaded.execute("PRAGMA database_list").fetchall()[0][2]
    runner = CliRunner()
    duck = runner.invoke(aggregate_command, ["--db", database, "timeline"])
    assert duck.exit_code == 0, duck.output
    sparked = runner.invoke(
        aggregate_command,
        ["--engine", "spark", "--spark-master", "local[2]", "--parquet", str(parquet), "timeline"],
    )
    assert sparked.exit_code == 0, sparked.output
    assert sparked.output == duck.output
    missing = runner.invoke(aggregate_command, ["--engine", "spark", "timeline"])
    assert missing.exit_code == 2 and "give --parquet DIR" in missing.output


def test_rows_without_a_day_or_country_are_exported_too(tmp_path, monkeypatch):
    import duckdb

    monkeypatch.setattr(export, "SORT_ROWS", 3)
    con = duckdb.connect()
    for table in export.TABLES:
        con.execute(
            f"CREATE TABLE {table} AS SELECT * FROM (VALUES"
            " ('u1', DATE '2026-03-01', 'IR'), ('u2', DATE '2026-03-01', 'IR'),"
            " ('u3', DATE '2026-03-01', 'RU'), ('u4', DATE '2026-03-01', NULL),"
            " ('u5', DATE '2026-03-01', 'CN'), ('u6', NULL, 'IR'), ('u7', DATE '2026-03-02', 'IR'))"
            " t(measurement_uid, day, probe_cc)"
        )
    assert export.export_parquet(con, tmp_path) == {"measurements": 7, "endpoints": 7}
    folders = sorted(
        p.relative_to(tmp_path / "endpoints").as_posix()
        for p in (tmp_path / "endpoints").glob("*/*")
    )
    assert folders == [
        "day=2026-03-01/probe_cc=CN",
        "day=2026-03-01/probe_cc=IR",
        "day=2026-03-01/probe_cc=RU",
        "day=2026-03-01/probe_cc=__HIVE_DEFAULT_PARTITION__",
        "day=2026-03-02/probe_cc=IR",
        "day=__HIVE_DEFAULT_PARTITION__/probe_cc=IR",
    ]
    uids = ds.dataset(tmp_path / "endpoints", format="parquet").to_table().column(
        "measurement_uid"
    )
    assert sorted(uids.to_pylist()) == [f"u{i}" for i in range(1, 8)]


def test_one_country_day_bigger_than_a_sort_is_cut_by_uid_and_stays_sorted(tmp_path, monkeypatch):
    import duckdb

    monkeypatch.setattr(export, "SORT_ROWS", 4)
    monkeypatch.setattr(export, "BATCH_ROWS", 3)
    con = duckdb.connect()
    # 23 rows of one (day, country), uids out of order, two rows sharing a uid, one without
    rows = [(f"u{(i * 7) % 22:02d}",) for i in range(22)] + [("u05",), (None,)]
    for table in export.TABLES:
        con.execute(f"CREATE TABLE {table} (measurement_uid VARCHAR, day DATE, probe_cc VARCHAR)")
        con.executemany(f"INSERT INTO {table} VALUES (?, DATE '2026-03-01', 'IR')", rows)
    slices = export._slices(con, "endpoints")
    assert len(slices) >= 6  # cut into uid ranges, not one sort of 24 rows
    assert export.export_parquet(con, tmp_path) == {"measurements": 24, "endpoints": 24}
    files = sorted((tmp_path / "endpoints" / "day=2026-03-01" / "probe_cc=IR").glob("*.parquet"))
    uids = [u for f in files for u in pq.read_table(f).column("measurement_uid").to_pylist()]
    assert uids == sorted(u for u, in rows if u is not None) + [None]
