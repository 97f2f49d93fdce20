"""The database -> a Parquet dataset partitioned by day and country (hive layout).

``<dir>/measurements/day=2026-03-01/probe_cc=IR/part-0.parquet`` and the same
for ``endpoints``: the format Spark, pandas, Polars, BigQuery and DuckDB itself
read, and the input of ``probe aggregate --engine spark``. Each file holds its
partition's rows sorted by ``measurement_uid``; the partition columns are in
the folder names only, as hive readers expect.

Memory stays bounded whatever the size: rows are exported a few days at a
time (about SORT_ROWS rows; a bigger day country by country), each slice
sorted by DuckDB under a memory limit (it spills to its temp_directory beyond),
the sorted rows stream out in record batches, and one partition's file is open
at a time (a partition's rows arrive together), its rows buffered up to one row
group. Holding every partition's rows open until the end, as a generic dataset
writer does with rows in no particular order, cost 1.77 GB for a million
measurements. One country's day bigger than the memory limit can hold is the
limit of this design (DuckDB 2.0's sort of wide rows does not spill far enough).
"""

from __future__ import annotations

import datetime
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

PARTITION_COLUMNS = ("day", "probe_cc")
TABLES = ("measurements", "endpoints")
MEMORY_LIMIT = "64MB"  # DuckDB's share; beyond it the sort spills to disk
SORT_ROWS = 50_000  # rows sorted at a time (whole days; a bigger day by country)
BATCH_ROWS = 50_000
ROW_GROUP_ROWS = 100_000
MAX_ROWS_PER_FILE = 1_000_000
_NULL_PARTITION = "__HIVE_DEFAULT_PARTITION__"  # what hive readers take for a null value


def export_parquet(
    con, out_dir: str | os.PathLike[str], *, memory_limit: str = MEMORY_LIMIT
) -> dict[str, int]:
    """Write both tables; replaces the partitions it writes. Rows written, per table."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    with _bounded_memory(con, memory_limit):
        for table in TABLES:
            written[table] = _export_table(con, table, out / table)
    return written


@contextmanager
def _bounded_memory(con, memory_limit: str) -> Iterator[None]:
    """DuckDB under ``memory_limit`` (it spills to its temp_directory beyond); restored after."""
    (before,) = con.execute("SELECT current_setting('memory_limit')").fetchall()[0]
    try:
        con.execute("SET memory_limit = ?", [memory_limit])
        yield
    finally:
        con.execute("SET memory_limit = ?", [before])


def _slices(con, table: str) -> list[tuple[str, list]]:
    """(SQL condition, its parameters) for slices of about SORT_ROWS rows, in export order.

    Whole days where they fit; a day bigger than that alone is cut by country.
    """
    counts = con.execute(
        f"SELECT day, probe_cc, count(*) FROM {table} GROUP BY day, probe_cc"
        " ORDER BY day NULLS LAST, probe_cc NULLS LAST"
    ).fetchall()
    by_day: dict = {}
    for day, country, count in counts:
        by_day.setdefault(day, []).append((country, count))
    slices: list[tuple[str, list]] = []
    first = last = None
    rows = 0

    def flush_days() -> None:
        nonlocal first, rows
        if first is not None:
            slices.append(("day BETWEEN ? AND ?", [first, last]))
        first, rows = None, 0

    for day, countries in by_day.items():
        total = sum(count for _, count in countries)
        if day is None:
            flush_days()
            slices.append(("day IS NULL", []))
        elif total > SORT_ROWS:
            flush_days()
            slices += _country_slices(con, table, day, countries)
        else:
            if rows + total > SORT_ROWS:
                flush_days()
            first = day if first is None else first
            last = day
            rows += total
    flush_days()
    return slices


def _country_slices(con, table: str, day, countries: list) -> list[tuple[str, list]]:
    """One big day's rows cut by country; a country too big alone, by uid ranges."""
    slices: list[tuple[str, list]] = []
    low = high = None
    rows = 0
    for country, count in countries:
        if country is None:
            continue
        if count > SORT_ROWS:
            if low is not None:
                slices.append(("day = ? AND probe_cc BETWEEN ? AND ?", [day, low, high]))
                low, rows = None, 0
            slices += _uid_slices(con, table, day, country, count)
            continue
        if low is not None and rows + count > SORT_ROWS:
            slices.append(("day = ? AND probe_cc BETWEEN ? AND ?", [day, low, high]))
            low, rows = None, 0
        low = country if low is None else low
        high = country
        rows += count
    if low is not None:
        slices.append(("day = ? AND probe_cc BETWEEN ? AND ?", [day, low, high]))
    if any(country is None for country, _ in countries):
        slices.append(("day = ? AND probe_cc IS NULL", [day]))
    return slices


def _uid_slices(con, table: str, day, country, count: int) -> list[tuple[str, list]]:
    """One country's day in measurement_uid ranges of about SORT_ROWS rows, in uid
    order (the rows of one uid stay together): its files stay sorted, and no sort
    holds more than a range."""
    parts = -(-count // SORT_ROWS)
    fractions = [k / parts for k in range(1, parts)]
    (bounds,) = con.execute(
        f"SELECT quantile_disc(measurement_uid, {fractions!r}) FROM {table}"
        " WHERE day = ? AND probe_cc = ?", [day, country]).fetchone()
    edges = sorted({b for b in bounds or [] if b is not None})
    where = "day = ? AND probe_cc = ? AND "
    slices: list[tuple[str, list]] = []
    low = None
    for edge in edges:
        if low is None:
            slices.append((where + "measurement_uid < ?", [day, country, edge]))
        else:
            slices.append((where + "measurement_uid >= ? AND measurement_uid < ?",
                           [day, country, low, edge]))
        low = edge
    if low is None:
        slices.append((where + "measurement_uid IS NOT NULL", [day, country]))
    else:
        slices.append((where + "measurement_uid >= ?", [day, country, low]))
    slices.append((where + "measurement_uid IS NULL", [day, country]))
    return slices


def _export_table(con, table: str, target: Path) -> int:
    # A slice at a time: each sort holds about SORT_ROWS rows, not the table.
    names = [n for n in con.table(table).columns if n not in PARTITION_COLUMNS]
    writer: _PartitionWriter | None = None
    try:
        for condition, parameters in _slices(con, table):
            cursor = con.cursor()  # a result being streamed needs a connection of its own
            try:
                reader = cursor.sql(
                    f"SELECT * FROM {table} WHERE {condition}"
                    " ORDER BY day, probe_cc, measurement_uid",
                    params=parameters or None,
                ).to_arrow_reader(BATCH_ROWS)
                if writer is None:
                    schema = pa.schema([reader.schema.field(n) for n in names])
                    writer = _PartitionWriter(target, schema)
                for batch in reader:
                    for key, rows in _partition_runs(batch):
                        writer.write(key, rows.select(names))
            finally:
                cursor.close()
    finally:
        if writer is not None:
            writer.close()
    return writer.rows if writer is not None else 0


def _partition_runs(batch: pa.RecordBatch) -> Iterator[tuple[tuple, pa.RecordBatch]]:
    """The batch cut where (day, probe_cc) changes: rows arrive sorted by them."""
    count = batch.num_rows
    if count == 0:
        return
    starts = [0]
    if count > 1:
        changed = None
        for name in PARTITION_COLUMNS:
            column = batch.column(name)
            differs = pc.fill_null(pc.not_equal(column.slice(1), column.slice(0, count - 1)), True)
            changed = differs if changed is None else pc.or_(changed, differs)
        starts += [i + 1 for i in pc.indices_nonzero(changed).to_pylist()]
    starts.append(count)
    columns = [batch.column(name) for name in PARTITION_COLUMNS]
    for start, end in zip(starts, starts[1:], strict=False):
        key = tuple(column[start].as_py() for column in columns)
        yield key, batch.slice(start, end - start)


class _PartitionWriter:
    """Writes one partition's file at a time, in row groups of up to ROW_GROUP_ROWS."""

    def __init__(self, target: Path, schema: pa.Schema) -> None:
        self.target = target
        self.schema = schema
        self.rows = 0
        self._key: tuple | None = None
        self._folder: Path | None = None
        self._writer: pq.ParquetWriter | None = None
        self._file_number = 0
        self._file_rows = 0
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0

    def write(self, key: tuple, rows: pa.RecordBatch) -> None:
        if key != self._key:
            self._close_file()
            self._key = key
            self._folder = self.target.joinpath(*map(_segment, PARTITION_COLUMNS, key))
            if self._folder.exists():  # replace what an earlier export left there
                shutil.rmtree(self._folder)
            self._folder.mkdir(parents=True)
            self._file_number = 0
        while rows.num_rows:
            room = MAX_ROWS_PER_FILE - self._file_rows - self._pending_rows
            if room == 0:
                self._close_file()
                self._file_number += 1
                continue
            piece, rows = rows.slice(0, room), rows.slice(room)
            self._pending.append(piece)
            self._pending_rows += piece.num_rows
            self.rows += piece.num_rows
            if self._pending_rows >= ROW_GROUP_ROWS:
                self._flush()

    def _flush(self) -> None:
        if not self._pending_rows:
            return
        if self._writer is None:
            assert self._folder is not None
            path = self._folder / f"part-{self._file_number}.parquet"
            self._writer = pq.ParquetWriter(path, self.schema)
        table = pa.Table.from_batches(self._pending, self.schema)
        self._writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
        self._file_rows += self._pending_rows
        self._pending, self._pending_rows = [], 0

    def _close_file(self) -> None:
        self._flush()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._file_rows = 0

    def close(self) -> None:
        self._close_file()


def _segment(name: str, value: object) -> str:
    """A hive folder name, its value escaped as pyarrow and Spark do."""
    if value is None:
        return f"{name}={_NULL_PARTITION}"
    text = value.isoformat() if isinstance(value, datetime.date) else str(value)
    return f"{name}={quote(text, safe='')}"
