"""``probe aggregate ...``: ingest verified reports, print tables, write HTML and Parquet.

Parse, call, print. ``--engine spark`` runs the same queries in PySpark over a
Parquet dataset written by ``probe aggregate export``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

DEFAULT_DB = "probe-aggregate.duckdb"


def _need_duckdb() -> None:
    try:
        import duckdb  # noqa: F401
        import pyarrow  # noqa: F401
    except ImportError:
        click.echo("probe aggregate needs duckdb and pyarrow: pip install duckdb pyarrow", err=True)
        sys.exit(2)


def _connect(ctx: click.Context):
    _need_duckdb()
    from probe.aggregate.database import connect

    path = ctx.obj["db"]
    return connect(path)


def _results(ctx: click.Context):
    """The aggregation on the chosen engine."""
    from probe.aggregate.queries import DuckDBEngine, aggregate

    if ctx.obj["engine"] == "spark":
        parquet = ctx.obj["parquet"]
        if not parquet:
            raise click.UsageError(
                "--engine spark reads a Parquet dataset: give --parquet DIR "
                "(written by `probe aggregate export --parquet DIR`)"
            )
        if not Path(parquet, "measurements").is_dir():
            raise click.UsageError(f"--parquet {parquet}: no measurements/ dataset in it")
        try:
            from probe.aggregate.queries import SparkEngine, spark_session
        except ImportError:
            raise click.UsageError("--engine spark needs pyspark: pip install pyspark") from None
        try:
            session = spark_session(ctx.obj["spark_master"])
        except ImportError:
            raise click.UsageError("--engine spark needs pyspark: pip install pyspark") from None
        except Exception as error:  # noqa: BLE001 - Java missing shows up here
            raise click.ClickException(
                f"cannot start Spark ({type(error).__name__}: {str(error)[:300]}); Spark needs a "
                "Java runtime (apt-get install default-jre-headless)"
            ) from None
        try:
            return aggregate(SparkEngine(session, parquet))
        finally:
            if ctx.obj["spark_master"].startswith("local"):
                session.stop()
    return aggregate(DuckDBEngine(_connect(ctx)))


def format_table(columns: list[tuple[str, str]], rows: list[dict[str, Any]]) -> str:
    """A plain text table (no colours: it goes into mails and issue trackers)."""

    def show(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.0%}"
        if isinstance(value, list):
            return ", ".join(map(str, value)) or "-"
        return "-" if value is None else str(value)

    cells = [[show(row.get(key)) for key, _ in columns] for row in rows]
    widths = [
        max([len(title)] + [len(r[i]) for r in cells]) for i, (_, title) in enumerate(columns)
    ]
    titles = [title for _, title in columns]
    lines = ["  ".join(t.ljust(w) for t, w in zip(titles, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    return "\n".join(lines)


def _filter(rows: list[dict[str, Any]], country: str | None, service: str | None):
    return [
        r
        for r in rows
        if (not country or r["probe_cc"] == country.upper())
        and (not service or r["service"] == service)
    ]


@click.group()
@click.option(
    "--db",
    default=DEFAULT_DB,
    show_default=True,
    type=click.Path(dir_okay=False),
    help="The DuckDB database file.",
)
@click.option(
    "--engine",
    type=click.Choice(["duckdb", "spark"]),
    default="duckdb",
    show_default=True,
    help="Where the queries run.",
)
@click.option(
    "--parquet",
    type=click.Path(file_okay=False),
    help="Parquet dataset for --engine spark (from `export`).",
)
@click.option(
    "--spark-master",
    default="local[*]",
    show_default=True,
    metavar="URL",
    help="Spark master, e.g. spark://host:7077.",
)
@click.pass_context
def aggregate(ctx, db, engine, parquet, spark_master) -> None:
    """Turn verified reports into tables, an HTML report and a Parquet dataset."""
    ctx.obj = {"db": db, "engine": engine, "parquet": parquet, "spark_master": spark_master}


@aggregate.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option(
    "--trusted-keys",
    type=click.Path(dir_okay=False),
    help="Count only lines signed by these probe keys.",
)
@click.option(
    "--trusted-control-keys",
    type=click.Path(dir_okay=False),
    help="Count only control data attested by these helpers.",
)
@click.option(
    "--workers",
    type=click.IntRange(0, 64),
    default=0,
    help="Processes checking signatures (0: this one).",
)
@click.pass_context
def ingest(ctx, paths, trusted_keys, trusted_control_keys, workers) -> None:
    """Check and load report files or folders (a collector's --data folder, reports/)."""
    from probe.aggregate.database import IngestError, integrity
    from probe.aggregate.database import ingest as run_ingest
    from probe.collector.lines import LinePolicy
    from probe.report.verify import TrustedKeysError, load_trusted_keys

    try:
        policy = LinePolicy(
            load_trusted_keys(trusted_keys) if trusted_keys else None,
            load_trusted_keys(trusted_control_keys) if trusted_control_keys else None,
        )
    except TrustedKeysError as error:
        raise click.UsageError(str(error)) from None
    con = _connect(ctx)
    try:
        result = run_ingest(con, list(paths), policy, workers=workers)
    except IngestError as error:
        raise click.ClickException(str(error)) from None
    for source, line, reason in result.rejections[:50]:
        click.echo(f"rejected {source}:{line}: {reason}")
    if result.rejected > 50:
        click.echo(f"... and {result.rejected - 50} more (probe aggregate rejected)")
    for finding in integrity(con)[:50]:
        click.echo(f"warning: {finding}")
    click.echo(
        f"{result.files} file(s), {result.lines} line(s): {result.measurements} new "
        f"measurement(s), {result.duplicates} already known, {result.run_ends} sealed "
        f"run(s), {result.rejected} rejected"
    )


@aggregate.command()
@click.option("--country", metavar="CC", help="Only this country.")
@click.option("--service", metavar="NAME", help="Only this service (test_name).")
@click.pass_context
def summary(ctx, country, service) -> None:
    """Per country x network x service x day: measurements, shares, dominant methods."""
    rows = _filter(_results(ctx).summary, country, service)
    click.echo(
        format_table(
            [
                ("probe_cc", "cc"),
                ("probe_asn", "network"),
                ("service", "service"),
                ("day", "day"),
                ("measurements", "n"),
                ("share_blocked", "blocked"),
                ("share_partially_blocked", "partial"),
                ("share_down", "down"),
                ("share_inconclusive", "inconcl."),
                ("methods", "dominant methods"),
            ],
            rows,
        )
    )


@aggregate.command()
@click.option("--country", metavar="CC")
@click.option("--service", metavar="NAME")
@click.pass_context
def endpoints(ctx, country, service) -> None:
    """Per endpoint: how often blocked, how, first and last time."""
    rows = _filter(_results(ctx).endpoints, country, service)
    click.echo(
        format_table(
            [
                ("probe_cc", "cc"),
                ("probe_asn", "network"),
                ("service", "service"),
                ("endpoint_id", "endpoint"),
                ("observations", "n"),
                ("share_blocked", "blocked"),
                ("a_method", "method"),
                ("first_blocked", "first blocked"),
                ("last_blocked", "last blocked"),
            ],
            rows,
        )
    )


@aggregate.command()
@click.option("--country", metavar="CC")
@click.option("--service", metavar="NAME")
@click.pass_context
def timeline(ctx, country, service) -> None:
    """First and last time each service was seen blocked, per network."""
    rows = _filter(_results(ctx).timeline, country, service)
    click.echo(
        format_table(
            [
                ("probe_cc", "cc"),
                ("probe_asn", "network"),
                ("service", "service"),
                ("measurements", "n"),
                ("share_blocked", "blocked"),
                ("first_blocked", "first seen blocked"),
                ("last_blocked", "last seen blocked"),
                ("last_measured", "last measured"),
            ],
            rows,
        )
    )


@aggregate.command()
@click.option("--limit", type=click.IntRange(1), default=100, show_default=True)
@click.pass_context
def rejected(ctx, limit) -> None:
    """Lines that were not counted, with the reason."""
    con = _connect(ctx)
    total = con.execute("SELECT count(*) FROM rejected").fetchall()[0][0]
    for source, line, reason in con.execute(
        "SELECT source, line, reason FROM rejected ORDER BY source, line LIMIT ?", [limit]
    ).fetchall():
        click.echo(f"{source}:{line}: {reason}")
    click.echo(f"{total} rejected line(s)")


@aggregate.command()
@click.option(
    "--html",
    "html_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="Where to write the page.",
)
@click.pass_context
def report(ctx, html_path) -> None:
    """Write a self-contained HTML report (tables, charts, matrix, each with its SQL)."""
    from probe.aggregate.database import integrity
    from probe.aggregate.html import render

    results = _results(ctx)
    rejected_count, rejections, findings = 0, [], []
    if Path(ctx.obj["db"]).exists():
        con = _connect(ctx)
        rejected_count = con.execute("SELECT count(*) FROM rejected").fetchall()[0][0]
        rejections = con.execute(
            "SELECT source, line, reason FROM rejected ORDER BY source, line LIMIT 100"
        ).fetchall()
        findings = integrity(con)
    page = render(
        results,
        rejected=rejected_count,
        rejections=rejections,
        integrity=findings,
        engine=ctx.obj["engine"],
    )
    Path(html_path).write_text(page, encoding="utf-8")
    click.echo(f"wrote {html_path} ({len(results.summary)} summary rows)")


@aggregate.command()
@click.option(
    "--parquet",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Dataset folder to write.",
)
@click.pass_context
def export(ctx, out_dir) -> None:
    """Write the Parquet dataset, partitioned by day and country."""
    from probe.aggregate.export import export_parquet

    written = export_parquet(_connect(ctx), out_dir)
    click.echo(f"wrote {out_dir}: " + ", ".join(f"{n} {t} rows" for t, n in written.items()))
