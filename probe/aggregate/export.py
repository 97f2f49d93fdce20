"""The database -> a Parquet dataset partitioned by day and country (hive layout).

``<dir>/measurements/day=2026-03-01/probe_cc=IR/part-0.parquet`` and the same
for ``endpoints``: the format Spark, pandas, Polars, BigQuery and DuckDB itself
read, and the input of ``probe aggregate --engine spark``. Rows stream from
DuckDB to pyarrow in batches, so memory stays flat whatever the size.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds

PARTITIONING = ds.partitioning(
    pa.schema([("day", pa.date32()), ("probe_cc", pa.string())]), flavor="hive"
)


def export_parquet(con, out_dir: str | os.PathLike[str]) -> dict[str, int]:
    """Write both tables; replaces the partitions it writes. Rows written, per table."""
    written = {}
    for table in ("measurements", "endpoints"):
        target = Path(out_dir) / table
        count = con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]
        cursor = con.cursor()  # a result being streamed needs a connection of its own
        reader = cursor.sql(
            f"SELECT * FROM {table} ORDER BY day, probe_cc, measurement_uid"
        ).to_arrow_reader(100_000)
        ds.write_dataset(
            reader,
            target,
            format="parquet",
            partitioning=PARTITIONING,
            existing_data_behavior="delete_matching",
            basename_template="part-{i}.parquet",
            max_rows_per_file=1_000_000,
            max_rows_per_group=100_000,
        )
        cursor.close()
        written[table] = count
    return written
