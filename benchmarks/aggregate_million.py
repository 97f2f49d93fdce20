"""Ingest and summarise a million synthetic signed measurements: DuckDB, then Spark.

    .venv/bin/python benchmarks/aggregate_million.py [--measurements 1000000] [--workers 2]

Signs ``--measurements`` synthetic measurements (``probe.aggregate.synthetic``:
8 countries x 3 networks x 3 services x ``--days`` days, 3 lines per run, the last sealed) into
report files, in worker processes. Then, timing each step and the peak memory
(maximum resident set size) of this process and of the checking workers:

1. ``ingest``: every line checked (signature, canonical form) and loaded into DuckDB;
2. ``summarise``: every query of the aggregation on DuckDB;
3. ``export``: the Parquet dataset, partitioned by day and country;
4. ``spark``: the same queries in PySpark local mode over that dataset (skipped
   with ``--no-spark`` or without Java), and whether its tables equal DuckDB's.

Needs about 2 GB of disk in the temporary folder for a million measurements.
``--keep DIR --reuse`` reuses the reports and the database a previous ``--keep DIR``
run left there (generation and ingest skipped): the peak memory printed after the
export is then that of the summary and the export alone, not the ingest's.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import os
import random
import resource
import shutil
import sys
import tempfile
import time
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from probe.aggregate import database, export, queries, synthetic  # noqa: E402 - after sys.path
from probe.report.keys import generate_ephemeral  # noqa: E402 - after sys.path

COUNTRIES = ("IR", "RU", "CN", "TR", "EG", "PK", "VE", "BY")
METHODS_BY_VERDICT = ("dns_blocked", "tcp_blocked", "tls_blocked", "http_blocked")


def write_file(args: tuple[int, Path, int, int, int]) -> int:
    """Write ``runs`` runs into one report file; returns the measurements written."""
    index, path, runs, days, seed = args
    rng = random.Random(seed)
    keys = [generate_ephemeral() for _ in range(8)]
    services = list(synthetic.SERVICES)
    written = 0
    with open(path, "wb") as out:
        for number in range(runs):
            cc = COUNTRIES[rng.randrange(len(COUNTRIES))]
            asn = f"AS{64500 + COUNTRIES.index(cc) * 3 + rng.randrange(3)}"
            day = rng.randrange(days)
            started = synthetic.START + datetime.timedelta(days=day, seconds=rng.randrange(86400))
            records = []
            for service in services:
                endpoints = [e[0] for e in synthetic.SERVICES[service]]
                blocked = {}
                # Blocking that depends on country, network and service, with noise.
                if (
                    zlib.crc32(f"{cc}{asn}{service}".encode()) % 3 == 0 and day > days // 3
                ) or rng.random() < 0.05:
                    for endpoint in endpoints[: 1 + rng.randrange(len(endpoints))]:
                        blocked[endpoint] = METHODS_BY_VERDICT[rng.randrange(4)]
                records.append(
                    synthetic.measurement(
                        service,
                        cc,
                        asn,
                        started,
                        blocked,
                        f"r{index}-{number}",
                        f"{rng.getrandbits(64):016x}",
                    )
                )
            out.write(
                b"".join(
                    synthetic.sign_run(keys[number % 8], records, f"{rng.getrandbits(128):032x}")
                )
            )
            written += len(records)
    return written


def peak_mib(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # kilobytes on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--measurements", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--no-spark", action="store_true")
    parser.add_argument("--keep", metavar="DIR", help="work in DIR and keep it")
    parser.add_argument(
        "--reuse", action="store_true", help="with --keep: reuse the reports and database in DIR"
    )
    parser.add_argument(
        "--export-only", action="store_true", help="skip the summary and Spark (export's own peak)"
    )
    args = parser.parse_args()
    if args.reuse and not args.keep:
        parser.error("--reuse needs --keep DIR")

    folder = Path(args.keep or tempfile.mkdtemp(prefix="aggregate-million-"))
    folder.mkdir(parents=True, exist_ok=True)
    reports = folder / "reports"
    reports.mkdir(exist_ok=True)
    figures: dict[str, float] = {}
    reuse_reports = args.reuse and any(reports.glob("*.jsonl"))
    reuse_database = args.reuse and (folder / "aggregate.duckdb").exists()
    try:
        if reuse_reports:
            print(f"reports: reused {reports}", flush=True)
        else:
            generate(reports, args)
        con = database.connect(folder / "aggregate.duckdb")
        if reuse_database:
            (count,) = con.execute("SELECT count(*) FROM measurements").fetchall()[0]
            print(f"ingest: reused {folder / 'aggregate.duckdb'} ({count} measurements)")
        else:
            ingest(con, reports, args, figures)
        summarise_export_spark(con, folder, args, figures)
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


def generate(reports: Path, args: argparse.Namespace) -> None:
    runs_per_file = max(1, args.measurements // len(synthetic.SERVICES) // args.files)
    started = time.perf_counter()
    jobs = [
        (i, reports / f"report-{i:04d}.jsonl", runs_per_file, args.days, i)
        for i in range(args.files)
    ]
    with concurrent.futures.ProcessPoolExecutor(args.workers) as pool:
        total = sum(pool.map(write_file, jobs))
    size = sum(p.stat().st_size for p in reports.iterdir())
    print(
        f"generated and signed {total} measurements ({size / 1e9:.2f} GB in {args.files} "
        f"files) in {time.perf_counter() - started:.0f} s",
        flush=True,
    )


def ingest(con, reports: Path, args: argparse.Namespace, figures: dict) -> None:
    started = time.perf_counter()
    result = database.ingest(con, [reports], workers=args.workers)
    figures["ingest"] = time.perf_counter() - started
    print(
        f"ingest: {figures['ingest']:.1f} s ({result.lines / figures['ingest']:.0f} "
        f"lines/s, {result.measurements} measurements, {result.rejected} rejected); peak "
        f"memory {peak_mib(resource.RUSAGE_SELF):.0f} MiB here, "
        f"{peak_mib(resource.RUSAGE_CHILDREN):.0f} MiB per checking worker",
        flush=True,
    )


def summarise_export_spark(con, folder: Path, args: argparse.Namespace, figures: dict) -> None:
    if not args.export_only:
        started = time.perf_counter()
        duck = queries.aggregate(queries.DuckDBEngine(con))
        figures["summarise"] = time.perf_counter() - started
        print(
            f"summarise (DuckDB, {len(queries.QUERIES)} queries): "
            f"{figures['summarise']:.2f} s, {len(duck.summary)} summary rows; peak memory "
            f"{peak_mib(resource.RUSAGE_SELF):.0f} MiB",
            flush=True,
        )

    before = peak_mib(resource.RUSAGE_SELF)
    started = time.perf_counter()
    written = export.export_parquet(con, folder / "parquet")
    figures["export"] = time.perf_counter() - started
    parquet_size = sum(p.stat().st_size for p in (folder / "parquet").rglob("*.parquet"))
    print(
        f"export Parquet: {figures['export']:.1f} s, {written['measurements']} + "
        f"{written['endpoints']} rows, {parquet_size / 1e6:.0f} MB; peak memory "
        f"{peak_mib(resource.RUSAGE_SELF):.0f} MiB (before the export: {before:.0f} MiB)",
        flush=True,
    )
    con.close()

    if not (args.no_spark or args.export_only):
        if shutil.which("java") is None:
            print("spark: skipped, no Java runtime (apt-get install default-jre-headless)")
            return
        started = time.perf_counter()
        session = queries.spark_session("local[*]")
        session.sparkContext.setLogLevel("ERROR")
        startup = time.perf_counter() - started
        started = time.perf_counter()
        spark = queries.aggregate(queries.SparkEngine(session, str(folder / "parquet")))
        figures["spark"] = time.perf_counter() - started
        session.stop()
        print(
            f"spark local[*] ({os.cpu_count()} cores): {figures['spark']:.1f} s for the "
            f"same queries (+ {startup:.1f} s session start); identical to DuckDB: "
            f"{spark == duck}",
            flush=True,
        )


if __name__ == "__main__":
    main()
