"""Verified report lines -> an embedded DuckDB database the aggregation queries.

:func:`ingest` reads report files (a collector's data folder, a probe's
``reports/`` folder, or single files), checks every line exactly as the
collector does (:func:`probe.collector.lines.check_and_parse`: signature,
canonical bytes, trusted keys, control attestations) and keeps only the lines
that pass. Every other line is counted and listed, with its file, line number
and reason, in the ``rejected`` table. Measurements are deduplicated on
``measurement_uid`` per probe key, so ingesting the same files twice changes nothing.

Tables: ``measurements`` (one row per measurement: where, when, which service,
its service status, which key and run signed it, and where its line is),
``endpoints`` (one row per endpoint verdict of a measurement, with the
measurement's country, network, service and day), ``run_ends`` (one row per
sealed measurement, the last line of its run: its run, seq and whether the run
was interrupted; the same line is also in ``measurements``) and ``rejected``.
The line rules are those of :mod:`probe.report.rules`, the ones ``probe
verify`` applies; of the run rules, "nothing after the run's sealed line" is
applied once all files are in (such lines move to ``rejected``).
:func:`integrity` reports gaps, broken links and missing seals in each run's
chain: lines of a run may arrive in any order and in several files, so the
chain is checked here, by ``seq``, not in file order.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import multiprocessing
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from probe.collector.lines import LinePolicy, check_and_parse, split_lines
from probe.report.rules import after_end_reason

BLOCKED_VERDICTS = (
    "dns_blocked",
    "tcp_blocked",
    "tls_blocked",
    "http_blocked",
    "protocol_blocked",
    "throttled",
)
CHUNK_LINES = 2000

MEASUREMENT_COLUMNS = (
    ("measurement_uid", pa.string(), "VARCHAR"),
    ("report_id", pa.string(), "VARCHAR"),
    ("service", pa.string(), "VARCHAR"),
    ("probe_cc", pa.string(), "VARCHAR"),
    ("probe_asn", pa.string(), "VARCHAR"),
    ("network_name", pa.string(), "VARCHAR"),
    ("start_time", pa.timestamp("s"), "TIMESTAMP"),
    ("day", pa.date32(), "DATE"),
    ("status", pa.string(), "VARCHAR"),
    ("analysis", pa.string(), "VARCHAR"),
    ("incomplete", pa.bool_(), "BOOLEAN"),
    ("control_attested", pa.bool_(), "BOOLEAN"),
    ("key_id", pa.string(), "VARCHAR"),
    ("run", pa.string(), "VARCHAR"),
    ("seq", pa.int64(), "BIGINT"),
    ("line_hash", pa.string(), "VARCHAR"),
    ("prev", pa.string(), "VARCHAR"),
    ("source", pa.string(), "VARCHAR"),
    ("line", pa.int64(), "BIGINT"),
)
ENDPOINT_COLUMNS = (
    ("measurement_uid", pa.string(), "VARCHAR"),
    ("service", pa.string(), "VARCHAR"),
    ("probe_cc", pa.string(), "VARCHAR"),
    ("probe_asn", pa.string(), "VARCHAR"),
    ("start_time", pa.timestamp("s"), "TIMESTAMP"),
    ("day", pa.date32(), "DATE"),
    ("endpoint_id", pa.string(), "VARCHAR"),
    ("host", pa.string(), "VARCHAR"),
    ("address", pa.string(), "VARCHAR"),
    ("port", pa.int64(), "BIGINT"),
    ("verdict", pa.string(), "VARCHAR"),
    ("method", pa.string(), "VARCHAR"),
    ("failure", pa.string(), "VARCHAR"),
    ("source", pa.string(), "VARCHAR"),
    ("line", pa.int64(), "BIGINT"),
)
RUN_END_COLUMNS = (
    ("run", pa.string(), "VARCHAR"),
    ("key_id", pa.string(), "VARCHAR"),
    ("seq", pa.int64(), "BIGINT"),
    ("interrupted", pa.bool_(), "BOOLEAN"),
    ("line_hash", pa.string(), "VARCHAR"),
    ("prev", pa.string(), "VARCHAR"),
    ("source", pa.string(), "VARCHAR"),
    ("line", pa.int64(), "BIGINT"),
)
REJECTED_COLUMNS = (
    ("source", pa.string(), "VARCHAR"),
    ("line", pa.int64(), "BIGINT"),
    ("measurement_uid", pa.string(), "VARCHAR"),
    ("reason", pa.string(), "VARCHAR"),
)
TABLES = {
    "measurements": MEASUREMENT_COLUMNS,
    "endpoints": ENDPOINT_COLUMNS,
    "run_ends": RUN_END_COLUMNS,
    "rejected": REJECTED_COLUMNS,
}


class IngestError(Exception):
    """An input cannot be read at all (missing, not a report)."""


@dataclass
class IngestResult:
    files: int = 0
    lines: int = 0
    measurements: int = 0  # new measurements stored
    duplicates: int = 0  # measurements already in the database (or twice in the input)
    run_ends: int = 0  # new sealed lines: runs whose end arrived
    rejected: int = 0
    rejections: list[tuple[str, int, str]] = field(default_factory=list)  # first ones


def connect(path: str | os.PathLike[str] = ":memory:") -> duckdb.DuckDBPyConnection:
    """Open (or create) the database and make sure its tables exist."""
    con = duckdb.connect(str(path))
    for name, columns in TABLES.items():
        body = ", ".join(f"{column} {sql_type}" for column, _, sql_type in columns)
        con.execute(f"CREATE TABLE IF NOT EXISTS {name} ({body})")
    return con


def report_files(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """The ``.jsonl`` files named, or found under the folders named, in a stable order."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*.jsonl") if p.is_file())
        elif path.is_file():
            found.append(path)
        else:
            raise IngestError(f"{path}: no such file or folder")
    return found


# --------------------------------------------------------------------------- #
# one chunk of lines -> rows (runs in worker processes)                        #
# --------------------------------------------------------------------------- #


@dataclass
class _Rows:
    measurements: list[tuple] = field(default_factory=list)
    endpoints: list[tuple] = field(default_factory=list)
    run_ends: list[tuple] = field(default_factory=list)
    rejected: list[tuple] = field(default_factory=list)


def _rows_of_chunk(
    source: str, first_line: int, lines: Sequence[bytes], policy: LinePolicy
) -> _Rows:
    rows = _Rows()
    for offset, line in enumerate(lines):
        number = first_line + offset
        checked, record = check_and_parse(line, policy)
        if record is None:
            rows.rejected.append((source, number, checked.measurement_uid, checked.reason))
            continue
        problem = _measurement_rows(record, checked, source, number, rows)
        if problem:
            rows.rejected.append((source, number, checked.measurement_uid, problem))
        elif checked.sealed:
            rows.run_ends.append(
                (
                    checked.run,
                    checked.key_id,
                    checked.seq,
                    checked.interrupted,
                    checked.digest,
                    checked.prev,
                    source,
                    number,
                )
            )
    return rows


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _measurement_rows(
    record: dict[str, Any], checked: Any, source: str, number: int, rows: _Rows
) -> str:
    """Append the rows of one verified measurement; a reason if it cannot be counted."""
    try:
        started = datetime.datetime.strptime(
            str(record.get("measurement_start_time")), "%Y-%m-%d %H:%M:%S"
        )
    except ValueError:
        return "measurement_start_time is not 'YYYY-MM-DD HH:MM:SS'"
    service = _text(record.get("test_name"))
    test_keys = record.get("test_keys")
    if not service or not isinstance(test_keys, dict):
        return "no test_name or test_keys: not a probe measurement"
    status_object = test_keys.get("service_status")
    status = _text(status_object.get("status")) if isinstance(status_object, dict) else None
    endpoints = test_keys.get("endpoints")
    if status is None or not isinstance(endpoints, list):
        return "no test_keys.service_status or test_keys.endpoints: not a probe measurement"
    found = record.get("annotations")
    annotations: dict[str, Any] = found if isinstance(found, dict) else {}
    control = test_keys.get("control")
    cc = _text(record.get("probe_cc")) or "ZZ"
    asn = _text(record.get("probe_asn")) or "AS0"
    day = started.date()
    uid = checked.measurement_uid
    rows.measurements.append(
        (
            uid,
            _text(record.get("report_id")),
            service,
            cc,
            asn,
            _text(record.get("probe_network_name")),
            started,
            day,
            status,
            _text(annotations.get("analysis")),
            annotations.get("incomplete") == "true",
            isinstance(control, dict) and "attestation" in control,
            checked.key_id,
            checked.run,
            checked.seq,
            checked.digest,
            checked.prev,
            source,
            number,
        )
    )
    for entry in endpoints:
        if not isinstance(entry, dict):
            continue
        port = entry.get("port")
        rows.endpoints.append(
            (
                uid,
                service,
                cc,
                asn,
                started,
                day,
                _text(entry.get("id")) or "?",
                _text(entry.get("host")),
                _text(entry.get("address")),
                port if isinstance(port, int) and not isinstance(port, bool) else None,
                _text(entry.get("verdict")) or "inconclusive",
                _text(entry.get("method")),
                _text(entry.get("failure")),
                source,
                number,
            )
        )
    return ""


def _read_chunks(paths: Sequence[Path]) -> Iterator[tuple[str, int, list[bytes]]]:
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError as error:
            raise IngestError(f"cannot read {path}: {error.strerror or error}") from None
        lines = split_lines(data)
        for start in range(0, len(lines), CHUNK_LINES):
            yield str(path), start + 1, lines[start : start + CHUNK_LINES]


# --------------------------------------------------------------------------- #
# the shell: files -> tables                                                   #
# --------------------------------------------------------------------------- #


def ingest(
    con: duckdb.DuckDBPyConnection,
    paths: Iterable[str | os.PathLike[str]],
    policy: LinePolicy | None = None,
    workers: int = 0,
    keep_rejections: int = 1000,
) -> IngestResult:
    """Check and load every line of the report files under ``paths``.

    ``workers`` > 0 checks signatures in that many processes (the slow part).
    """
    policy = policy or LinePolicy()
    files = report_files(paths)
    result = IngestResult(files=len(files))
    staged: dict[str, list[pa.Table]] = {name: [] for name in TABLES}
    staged_rows = 0

    def take(rows: _Rows, lines: int) -> None:
        nonlocal staged_rows
        result.lines += lines
        for name, columns in TABLES.items():
            part = getattr(rows, name)
            if part:
                staged[name].append(_arrow(part, columns))
                staged_rows += len(part)
        for source, number, _uid, reason in rows.rejected:
            if len(result.rejections) < keep_rejections:
                result.rejections.append((source, number, reason))
        result.rejected += len(rows.rejected)
        if staged_rows > 200_000:
            _flush(con, staged, result)
            staged_rows = 0

    chunks = _read_chunks(files)
    if workers > 0:
        context = multiprocessing.get_context("forkserver")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
            pending: list[tuple[concurrent.futures.Future[_Rows], int]] = []
            for source, first, lines in chunks:
                pending.append(
                    (pool.submit(_rows_of_chunk, source, first, lines, policy), len(lines))
                )
                if len(pending) >= workers * 4:  # bounded memory: a few chunks in flight
                    future, count = pending.pop(0)
                    take(future.result(), count)
            for future, count in pending:
                take(future.result(), count)
    else:
        for source, first, lines in chunks:
            take(_rows_of_chunk(source, first, lines, policy), len(lines))
    _flush(con, staged, result)
    _reject_after_end(con, result)
    return result


AFTER_END_SQL = """
WITH ends AS (SELECT run, key_id, min(seq) AS end_seq FROM run_ends GROUP BY run, key_id)
SELECT m.source, m.line, m.measurement_uid, m.run, m.seq, e.end_seq,
       EXISTS (SELECT 1 FROM run_ends r WHERE r.source = m.source AND r.line = m.line) AS sealed
FROM measurements m JOIN ends e ON e.run = m.run AND e.key_id = m.key_id AND m.seq > e.end_seq
ORDER BY 1, 2
"""


def _reject_after_end(con: duckdb.DuckDBPyConnection, result: IngestResult) -> None:
    """Move the lines that follow their run's sealed line into ``rejected``.

    A run's key holder could append correctly chained records after sealing it;
    the rule set forbids any (:func:`probe.report.rules.check_runs`). Each line
    is checked alone, so this rule is applied here, once every file is in.
    """
    found = con.execute(AFTER_END_SQL).fetchall()
    if not found:
        return
    rows = [
        (source, line, uid, after_end_reason(seq, run, end_seq, "a sealed line"))
        for source, line, uid, run, seq, end_seq, _ in found
    ]
    con.register("after_end", _arrow(rows, REJECTED_COLUMNS))
    try:
        for table in ("measurements", "endpoints", "run_ends"):
            con.execute(f"""
                DELETE FROM {table} t WHERE EXISTS (
                    SELECT 1 FROM after_end a WHERE a.source = t.source AND a.line = t.line)
            """)
        con.execute("""
            INSERT INTO rejected SELECT * FROM after_end a
            WHERE NOT EXISTS (SELECT 1 FROM rejected r WHERE r.source = a.source
                              AND r.line = a.line AND r.reason = a.reason)
        """)
    finally:
        con.unregister("after_end")
    result.measurements -= len(found)
    result.run_ends -= sum(1 for *_, sealed in found if sealed)
    result.rejected += len(found)
    result.rejections += [(source, line, reason) for source, line, _, reason in rows]


def _arrow(rows: list[tuple], columns: tuple) -> pa.Table:
    names = [name for name, _, _ in columns]
    schema = pa.schema([(name, arrow_type) for name, arrow_type, _ in columns])
    return (
        pa.Table.from_arrays(
            [
                pa.array(values, type=arrow_type)
                for values, (_, arrow_type, _) in zip(zip(*rows, strict=True), columns, strict=True)
            ],
            schema=schema,
        )
        if rows
        else pa.Table.from_pylist([], schema=schema).select(names)
    )


def _flush(
    con: duckdb.DuckDBPyConnection, staged: dict[str, list[pa.Table]], result: IngestResult
) -> None:
    """Move staged rows into the tables, keeping the first copy of each measurement."""
    tables = {
        name: pa.concat_tables(parts) if parts else _arrow([], TABLES[name])
        for name, parts in staged.items()
    }
    for name in staged:
        staged[name] = []
    for name, table in tables.items():
        con.register(f"staged_{name}", table)
    try:
        before = _count(con, "measurements")
        con.execute("""
            CREATE OR REPLACE TEMP TABLE chosen AS
            SELECT * FROM staged_measurements s
            WHERE NOT EXISTS (SELECT 1 FROM measurements m
                              WHERE m.measurement_uid = s.measurement_uid
                                AND m.key_id = s.key_id)
            QUALIFY row_number() OVER (PARTITION BY key_id, measurement_uid
                                       ORDER BY source, line) = 1
        """)
        # The same measurement_uid with other bytes is not the same measurement. A uid
        # is the probe's own name for its measurement: another key's line with the
        # same uid is another measurement, never a duplicate or a conflict.
        conflicts = con.execute("""
            SELECT s.source, s.line, s.measurement_uid,
                   'measurement_uid already ingested from ' || c.source || ' line ' ||
                   CAST(c.line AS VARCHAR) || ' with different content' AS reason
            FROM staged_measurements s
            JOIN (SELECT measurement_uid, key_id, line_hash, source, line FROM measurements
                  UNION ALL
                  SELECT measurement_uid, key_id, line_hash, source, line FROM chosen) c
              ON c.measurement_uid = s.measurement_uid AND c.key_id = s.key_id
                 AND c.line_hash <> s.line_hash
            QUALIFY row_number() OVER (PARTITION BY s.source, s.line ORDER BY c.source, c.line) = 1
        """).fetchall()
        con.execute("INSERT INTO measurements SELECT * FROM chosen")
        con.execute("""
            INSERT INTO endpoints
            SELECT e.* FROM staged_endpoints e
            JOIN chosen c ON c.measurement_uid = e.measurement_uid AND c.source = e.source
                          AND c.line = e.line
        """)
        added = _count(con, "measurements") - before
        result.measurements += added
        conflict_lines = {(source, line) for source, line, _, _ in conflicts}
        result.duplicates += tables["measurements"].num_rows - added - len(conflict_lines)
        before_ends = _count(con, "run_ends")
        # A seal counts only with its measurement: a sealed line refused as a
        # conflict, or already ingested, adds no run end.
        con.execute("""
            INSERT INTO run_ends
            SELECT s.* FROM staged_run_ends s
            JOIN chosen c ON c.source = s.source AND c.line = s.line
            WHERE NOT EXISTS (SELECT 1 FROM run_ends r WHERE r.run = s.run AND r.seq = s.seq)
            QUALIFY row_number() OVER (PARTITION BY s.run, s.seq ORDER BY s.source, s.line) = 1
        """)
        result.run_ends += _count(con, "run_ends") - before_ends
        if conflicts:
            con.register("staged_conflicts", _arrow(conflicts, REJECTED_COLUMNS))
            con.execute("INSERT INTO rejected SELECT * FROM staged_conflicts")
            con.unregister("staged_conflicts")
            result.rejected += len(conflicts)
            result.rejections += [(s, n, r) for s, n, _, r in conflicts]
        con.execute("""
            INSERT INTO rejected
            SELECT DISTINCT * FROM staged_rejected s
            WHERE NOT EXISTS (SELECT 1 FROM rejected r WHERE r.source = s.source
                              AND r.line = s.line AND r.reason = s.reason)
        """)
        con.execute("DROP TABLE IF EXISTS chosen")
    finally:
        for name in tables:
            con.unregister(f"staged_{name}")


def _count(con: duckdb.DuckDBPyConnection, table: str) -> int:
    return con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]


# --------------------------------------------------------------------------- #
# chains                                                                       #
# --------------------------------------------------------------------------- #


INTEGRITY_SQL = """
WITH lines AS (SELECT run, key_id, seq, line_hash, prev FROM measurements),
runs AS (
    SELECT l.run, min(l.key_id) AS key_id, count(*) AS present, max(l.seq) AS highest,
           max(e.seq) AS sealed_at
    FROM lines l LEFT JOIN run_ends e ON e.run = l.run
    GROUP BY l.run
),
broken AS (
    SELECT l.run, count(*) AS broken_links
    FROM lines l JOIN lines p ON p.run = l.run AND p.seq = l.seq - 1
    WHERE l.prev <> p.line_hash
    GROUP BY l.run
)
SELECT r.run, r.key_id, r.present, coalesce(r.sealed_at, r.highest) + 1 AS expected,
       r.sealed_at IS NOT NULL AS sealed, coalesce(b.broken_links, 0) AS broken_links
FROM runs r LEFT JOIN broken b ON b.run = r.run
WHERE r.sealed_at IS NULL OR r.present <> r.sealed_at + 1 OR b.broken_links IS NOT NULL
ORDER BY r.run
"""


def integrity(con: duckdb.DuckDBPyConnection) -> list[str]:
    """One sentence per run whose chain is not whole (lines never received, or forged)."""
    findings = []
    for run, key_id, present, expected, sealed, broken in con.execute(INTEGRITY_SQL).fetchall():
        where = f"run {run[:8]} (key {key_id})"
        if broken:
            findings.append(
                f"{where}: {broken} line(s) do not link to the line before them "
                "(the run was forked or spliced)"
            )
        if present < expected:
            findings.append(f"{where}: {expected - present} of {expected} line(s) never received")
        if not sealed:
            findings.append(
                f"{where}: not sealed, no line says it is the run's last (the probe "
                "was killed, or the end of the run was not uploaded)"
            )
    return findings
