"""The aggregation: named SQL queries, and the tables they make.

Every query is written once, in the SQL that DuckDB and Spark SQL both run,
over two tables: ``measurements`` and ``endpoints`` (see
:mod:`probe.aggregate.database`). An engine only has to run a query and
return plain rows (:class:`Engine`), so DuckDB on one machine and PySpark on a
cluster compute the same tables from the same SQL, and the HTML report shows
each figure's query as it ran. Shares are computed here, in Python, from the
integer counts the engines return, so both engines give identical results.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

BLOCKED = (
    "('dns_blocked', 'tcp_blocked', 'tls_blocked', 'http_blocked', 'protocol_blocked', 'throttled')"
)
STATUSES = ("blocked", "partially_blocked", "down", "inconclusive", "ok")
TOP_METHODS = 3

SUMMARY = """
SELECT probe_cc, probe_asn, service, CAST(day AS STRING) AS day,
       count(*) AS measurements,
       sum(CASE WHEN status = 'blocked' THEN 1 ELSE 0 END) AS blocked,
       sum(CASE WHEN status = 'partially_blocked' THEN 1 ELSE 0 END) AS partially_blocked,
       sum(CASE WHEN status = 'down' THEN 1 ELSE 0 END) AS down,
       sum(CASE WHEN status = 'inconclusive' THEN 1 ELSE 0 END) AS inconclusive,
       sum(CASE WHEN status = 'ok' THEN 1 ELSE 0 END) AS ok
FROM measurements
GROUP BY probe_cc, probe_asn, service, day
ORDER BY probe_cc, probe_asn, service, day
""".strip()

METHODS = f"""
WITH counted AS (
    SELECT probe_cc, probe_asn, service, day, method,
           count(DISTINCT measurement_uid) AS measurements
    FROM endpoints
    WHERE verdict IN {BLOCKED} AND method IS NOT NULL
    GROUP BY probe_cc, probe_asn, service, day, method
), ranked AS (
    SELECT *, row_number() OVER (PARTITION BY probe_cc, probe_asn, service, day
                                 ORDER BY measurements DESC, method) AS position
    FROM counted
)
SELECT probe_cc, probe_asn, service, CAST(day AS STRING) AS day, method, measurements
FROM ranked
WHERE position <= {TOP_METHODS}
ORDER BY probe_cc, probe_asn, service, day, position
""".strip()

ENDPOINTS = f"""
SELECT probe_cc, probe_asn, service, endpoint_id,
       count(*) AS observations,
       sum(CASE WHEN verdict IN {BLOCKED} THEN 1 ELSE 0 END) AS blocked,
       sum(CASE WHEN verdict = 'down' THEN 1 ELSE 0 END) AS down,
       sum(CASE WHEN verdict = 'inconclusive' THEN 1 ELSE 0 END) AS inconclusive,
       sum(CASE WHEN verdict = 'ok' THEN 1 ELSE 0 END) AS ok,
       CAST(min(CASE WHEN verdict IN {BLOCKED} THEN start_time END) AS STRING) AS first_blocked,
       CAST(max(CASE WHEN verdict IN {BLOCKED} THEN start_time END) AS STRING) AS last_blocked,
       min(CASE WHEN verdict IN {BLOCKED} THEN method END) AS a_method
FROM endpoints
GROUP BY probe_cc, probe_asn, service, endpoint_id
ORDER BY probe_cc, probe_asn, service, endpoint_id
""".strip()

TIMELINE = """
SELECT probe_cc, probe_asn, service,
       count(*) AS measurements,
       sum(CASE WHEN status IN ('blocked', 'partially_blocked') THEN 1 ELSE 0 END) AS blocked,
       CAST(min(CASE WHEN status IN ('blocked', 'partially_blocked') THEN start_time END)
            AS STRING) AS first_blocked,
       CAST(max(CASE WHEN status IN ('blocked', 'partially_blocked') THEN start_time END)
            AS STRING) AS last_blocked,
       CAST(min(start_time) AS STRING) AS first_measured,
       CAST(max(start_time) AS STRING) AS last_measured
FROM measurements
GROUP BY probe_cc, probe_asn, service
ORDER BY probe_cc, probe_asn, service
""".strip()

MATRIX = """
SELECT probe_cc, service,
       count(*) AS measurements,
       count(DISTINCT probe_asn) AS networks,
       sum(CASE WHEN status = 'blocked' THEN 1 ELSE 0 END) AS blocked,
       sum(CASE WHEN status = 'partially_blocked' THEN 1 ELSE 0 END) AS partially_blocked,
       sum(CASE WHEN status = 'ok' THEN 1 ELSE 0 END) AS ok
FROM measurements
GROUP BY probe_cc, service
ORDER BY probe_cc, service
""".strip()

QUERIES = {
    "summary": SUMMARY,
    "methods": METHODS,
    "endpoints": ENDPOINTS,
    "timeline": TIMELINE,
    "matrix": MATRIX,
}


class Engine(Protocol):
    """Runs one query over ``measurements`` and ``endpoints``; rows of plain values."""

    name: str

    def rows(self, sql: str) -> list[tuple[Any, ...]]: ...


def share(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0


@dataclass(frozen=True)
class Results:
    """Every table of the aggregation, as plain rows (dicts), in a stable order."""

    summary: list[dict[str, Any]]
    endpoints: list[dict[str, Any]]
    timeline: list[dict[str, Any]]
    matrix: list[dict[str, Any]]
    raw: dict[str, list[tuple[Any, ...]]] = field(default_factory=dict, compare=False)

    @property
    def empty(self) -> bool:
        return not self.summary


def _dicts(names: list[str], rows: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    return [dict(zip(names, row, strict=False)) for row in rows]


def aggregate(engine: Engine) -> Results:
    """Run every query on ``engine`` and shape the tables."""
    raw = {name: [tuple(row) for row in engine.rows(sql)] for name, sql in QUERIES.items()}
    methods: dict[tuple, list[str]] = {}
    for cc, asn, service, day, method, count in raw["methods"]:
        methods.setdefault((cc, asn, service, day), []).append(f"{method} ({int(count)})")
    summary = []
    for row in _dicts(
        ["probe_cc", "probe_asn", "service", "day", "measurements", *STATUSES], raw["summary"]
    ):
        total = row["measurements"]
        for status in STATUSES:
            row[f"share_{status}"] = share(row[status], total)
        row["methods"] = methods.get(
            (row["probe_cc"], row["probe_asn"], row["service"], row["day"]), []
        )
        summary.append(row)
    endpoints = _dicts(
        [
            "probe_cc",
            "probe_asn",
            "service",
            "endpoint_id",
            "observations",
            "blocked",
            "down",
            "inconclusive",
            "ok",
            "first_blocked",
            "last_blocked",
            "a_method",
        ],
        raw["endpoints"],
    )
    for row in endpoints:
        row["share_blocked"] = share(row["blocked"], row["observations"])
    timeline = _dicts(
        [
            "probe_cc",
            "probe_asn",
            "service",
            "measurements",
            "blocked",
            "first_blocked",
            "last_blocked",
            "first_measured",
            "last_measured",
        ],
        raw["timeline"],
    )
    for row in timeline:
        row["share_blocked"] = share(row["blocked"], row["measurements"])
    matrix = _dicts(
        ["probe_cc", "service", "measurements", "networks", "blocked", "partially_blocked", "ok"],
        raw["matrix"],
    )
    for row in matrix:
        row["share_blocked"] = share(row["blocked"] + row["partially_blocked"], row["measurements"])
    return Results(summary, endpoints, timeline, matrix, raw)


# --------------------------------------------------------------------------- #
# the engines                                                                  #
# --------------------------------------------------------------------------- #


class DuckDBEngine:
    name = "duckdb"

    def __init__(self, con) -> None:
        self.con = con

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        return self.con.execute(sql).fetchall()


class SparkEngine:
    """The same queries in Spark SQL over the Parquet dataset of ``probe aggregate export``."""

    name = "spark"

    def __init__(self, session, parquet_dir: str) -> None:
        self.session = session
        for table in ("measurements", "endpoints"):
            frame = session.read.parquet(f"{parquet_dir}/{table}")
            frame.createOrReplaceTempView(table)

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in self.session.sql(sql).collect()]


def spark_session(master: str = "local[*]", app_name: str = "probe-aggregate"):
    """A SparkSession; ``local[*]`` runs in this machine's JVM, bound to loopback only."""
    import os

    from pyspark.sql import SparkSession

    builder = SparkSession.builder.master(master).appName(app_name)
    if master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        builder = (
            builder.config("spark.driver.host", "127.0.0.1")
            .config("spark.driver.bindAddress", "127.0.0.1")
            .config("spark.sql.shuffle.partitions", "8")
        )
    return (
        builder.config("spark.ui.enabled", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.showConsoleProgress", "false")
        .getOrCreate()
    )
