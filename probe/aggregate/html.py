"""The aggregation as one self-contained HTML page an NGO can publish.

No script, no web font, no CDN: inline CSS and inline SVG only, so the page
shows the same offline, in a mail attachment, or archived years later. It
holds the country x service matrix, a timeline chart per service and network,
the summary, timeline and endpoint tables, and the data-quality notes
(rejected lines, incomplete runs). Every figure carries the SQL that produced
it, as it ran. Pure: :func:`render` returns a string.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from html import escape
from typing import Any

from probe.aggregate.queries import QUERIES, STATUSES, Results

COLOURS = {
    "blocked": "#c0392b",
    "partially_blocked": "#e67e22",
    "down": "#7f8c8d",
    "inconclusive": "#bdc3c7",
    "ok": "#27ae60",
}
MAX_CHARTS = 200
MAX_ROWS = 2000

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;
max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
th,td{border:1px solid #ddd;padding:.25em .5em;text-align:left}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
details{margin:.3em 0 1em}pre{background:#f7f7f7;padding:.6em;overflow-x:auto;font-size:.8em}
.legend span{display:inline-block;margin-right:1em}.swatch{display:inline-block;width:.9em;
height:.9em;margin-right:.3em;vertical-align:middle}
.chart{display:inline-block;width:370px;margin:0 1em 1em 0;vertical-align:top}
.note{color:#555;font-size:.9em}
"""


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f'<td class="num">{value:.1%}</td>'
    if isinstance(value, int) and not isinstance(value, bool):
        return f'<td class="num">{value}</td>'
    if isinstance(value, list):
        return f"<td>{escape(', '.join(map(str, value)))}</td>"
    return f"<td>{escape('' if value is None else str(value))}</td>"


def _table(table_id: str, columns: Sequence[tuple[str, str]], rows: list[dict[str, Any]]) -> str:
    head = "".join(f"<th>{escape(title)}</th>" for _, title in columns)
    body = "".join(
        "<tr>" + "".join(_cell(row.get(key)) for key, _ in columns) + "</tr>"
        for row in rows[:MAX_ROWS]
    )
    more = (
        f'<p class="note">First {MAX_ROWS} of {len(rows)} rows; the CLI and the Parquet '
        "export have them all.</p>"
        if len(rows) > MAX_ROWS
        else ""
    )
    return (
        f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{more}'
    )


def _query(*names: str) -> str:
    text = "\n\n".join(QUERIES[name] for name in names)
    return f"<details><summary>Query</summary><pre><code>{escape(text)}</code></pre></details>"


def _matrix(results: Results) -> str:
    countries = sorted({r["probe_cc"] for r in results.matrix})
    services = sorted({r["service"] for r in results.matrix})
    cells = {(r["probe_cc"], r["service"]): r for r in results.matrix}
    head = "<th>country</th>" + "".join(f"<th>{escape(s)}</th>" for s in services)
    rows = []
    for cc in countries:
        tds = [f"<th>{escape(cc)}</th>"]
        for service in services:
            row = cells.get((cc, service))
            if row is None:
                tds.append('<td class="num">-</td>')
                continue
            level = row["share_blocked"]
            colour = f"rgba(192,57,43,{0.1 + 0.8 * level:.2f})" if level else "#eafaf1"
            title = (
                f"{row['blocked']} blocked, {row['partially_blocked']} partially blocked of "
                f"{row['measurements']} measurements in {row['networks']} network(s)"
            )
            tds.append(
                f'<td class="num" style="background:{colour}" title="{escape(title)}" '
                f'data-service="{escape(service)}" data-country="{escape(cc)}">'
                f"{level:.0%}</td>"
            )
        rows.append("<tr>" + "".join(tds) + "</tr>")
    return (
        f'<table id="matrix"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    )


def _days(first: str, last: str) -> list[str]:
    start = datetime.date.fromisoformat(first)
    end = datetime.date.fromisoformat(last)
    return [(start + datetime.timedelta(days=n)).isoformat() for n in range((end - start).days + 1)]


def _chart(
    key: tuple[str, str, str],
    rows: list[dict[str, Any]],
    days: list[str],
    timeline: dict[tuple, dict[str, Any]],
) -> str:
    """Stacked daily bars of service status shares for one service in one network."""
    cc, asn, service = key
    width, height, left, bottom = 360, 120, 30, 18
    plot_width = width - left - 5
    bar = plot_width / max(1, len(days))
    by_day = {r["day"]: r for r in rows}
    parts = []
    for index, day in enumerate(days):
        row = by_day.get(day)
        if row is None:
            continue
        y = 5.0
        for status in STATUSES:  # blocked on top, ok at the bottom
            size = row[f"share_{status}"] * (height - bottom - 5)
            if size:
                parts.append(
                    f'<rect x="{left + index * bar:.1f}" y="{y:.1f}" width="{max(bar - 1, 1):.1f}" '
                    f'height="{size:.1f}" fill="{COLOURS[status]}"><title>{escape(day)}: '
                    f"{row[status]} {status.replace('_', ' ')} of {row['measurements']}"
                    "</title></rect>"
                )
            y += size
    axis = (
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - 5}" y2="{height - bottom}" '
        'stroke="#999"/>'
        f'<text x="0" y="12" font-size="9">100%</text>'
        f'<text x="0" y="{height - bottom}" font-size="9">0%</text>'
        f'<text x="{left}" y="{height - 4}" font-size="9">{escape(days[0])}</text>'
        f'<text x="{width - 5}" y="{height - 4}" font-size="9" text-anchor="end">'
        f"{escape(days[-1])}</text>"
    )
    info = timeline.get(key, {})
    seen = (
        "never seen blocked"
        if not info.get("first_blocked")
        else f"blocked from {info['first_blocked']} to {info['last_blocked']}"
    )
    title = f"{service} in {cc} {asn}"
    return (
        f'<figure class="chart" data-service="{escape(service)}" data-country="{escape(cc)}" '
        f'data-asn="{escape(asn)}"><svg xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" role="img" aria-label="{escape(title)}"><title>{escape(title)}'
        f"</title>{axis}{''.join(parts)}</svg><figcaption>{escape(title)}: "
        f"{escape(seen)}</figcaption></figure>"
    )


def _charts(results: Results) -> str:
    if not results.summary:
        return "<p>No measurements.</p>"
    days = _days(min(r["day"] for r in results.summary), max(r["day"] for r in results.summary))
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in results.summary:
        groups.setdefault((row["probe_cc"], row["probe_asn"], row["service"]), []).append(row)
    timeline = {(r["probe_cc"], r["probe_asn"], r["service"]): r for r in results.timeline}
    # Networks where something was blocked first: they are what the reader came for.
    order = sorted(groups, key=lambda k: (not timeline.get(k, {}).get("blocked"), k))
    charts = [_chart(key, groups[key], days, timeline) for key in order[:MAX_CHARTS]]
    legend = "".join(
        f'<span><i class="swatch" style="background:{colour}"></i>{status.replace("_", " ")}</span>'
        for status, colour in COLOURS.items()
    )
    more = (
        f'<p class="note">First {MAX_CHARTS} of {len(groups)} charts.</p>'
        if len(groups) > MAX_CHARTS
        else ""
    )
    return f'<p class="legend">{legend}</p><div id="charts">{"".join(charts)}</div>{more}'


def render(
    results: Results,
    *,
    rejected: int = 0,
    rejections: Sequence[tuple] = (),
    integrity: Sequence[str] = (),
    engine: str = "duckdb",
    generated: datetime.datetime | None = None,
) -> str:
    generated = generated or datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    total = sum(r["measurements"] for r in results.summary)
    days = sorted({r["day"] for r in results.summary})
    period = f"{days[0]} to {days[-1]}" if days else "no data"
    countries = len({r["probe_cc"] for r in results.summary})
    networks = len({(r["probe_cc"], r["probe_asn"]) for r in results.summary})
    summary_columns = [
        ("probe_cc", "country"),
        ("probe_asn", "network"),
        ("service", "service"),
        ("day", "day"),
        ("measurements", "measurements"),
        ("share_blocked", "blocked"),
        ("share_partially_blocked", "partially blocked"),
        ("share_down", "down"),
        ("share_inconclusive", "inconclusive"),
        ("methods", "dominant methods"),
    ]
    timeline_columns = [
        ("probe_cc", "country"),
        ("probe_asn", "network"),
        ("service", "service"),
        ("measurements", "measurements"),
        ("share_blocked", "blocked or partially"),
        ("first_blocked", "first seen blocked"),
        ("last_blocked", "last seen blocked"),
        ("last_measured", "last measured"),
    ]
    endpoint_columns = [
        ("probe_cc", "country"),
        ("probe_asn", "network"),
        ("service", "service"),
        ("endpoint_id", "endpoint"),
        ("observations", "observations"),
        ("share_blocked", "blocked"),
        ("a_method", "method"),
        ("first_blocked", "first blocked"),
        ("last_blocked", "last blocked"),
    ]
    quality = ""
    if rejected or integrity:
        items = "".join(f"<li>{escape(f'{s}:{n}: {r}')}</li>" for s, n, r in rejections[:100])
        findings = "".join(f"<li>{escape(f)}</li>" for f in integrity[:100])
        quality = (
            f'<h2 id="quality">Data quality</h2><p>{rejected} line(s) were rejected and '
            f'are not counted.</p><ul id="rejected">{items}</ul>'
            f'<ul id="integrity">{findings}</ul>'
        )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Messaging services blocked: {escape(period)}</title><style>{CSS}</style></head>
<body>
<h1>Blocking of messaging services, {escape(period)}</h1>
<p id="overview">{total} verified measurements from {networks} network(s) in {countries}
country(ies). Every measurement was signed by the probe that made it and verified before it was
counted. Generated {escape(generated.isoformat())} with {escape(engine)}.</p>
<h2 id="matrix-title">Country x service</h2>
<p class="note">Share of measurements in which the service was blocked or partially blocked.</p>
{_matrix(results)}{_query("matrix")}
<h2 id="timelines">Timeline per service and network</h2>
<p class="note">Each bar is one day: the share of that day's measurements per service status.</p>
{_charts(results)}{_query("summary")}
<h2 id="first-last">First and last seen blocked</h2>
{_table("timeline", timeline_columns, results.timeline)}{_query("timeline")}
<h2 id="summary-title">Per country, network, service and day</h2>
{_table("summary", summary_columns, results.summary)}{_query("summary", "methods")}
<h2 id="endpoints-title">Per endpoint</h2>
{_table("endpoints", endpoint_columns, results.endpoints)}{_query("endpoints")}
{quality}
</body></html>
"""
