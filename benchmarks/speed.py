"""Benchmark: every speed row of the project's goals in one run, next to its bare baseline.

Calls the benchmarks that measure each row (each builds its own network
namespaces: run it as root, alone on the machine), has each write its figures to
``benchmarks/results/<name>.json``, and prints one table: row, now, baseline,
goal, met? The README's figures are rendered from those files by
``benchmarks/readme_figures.py``.

The defaults are small enough for a few minutes on 2 cores; ``--full`` uses the
real sizes (10,000 endpoints for the scale row instead of 2,000, and 2,000
endpoints for the report phase instead of 500).

    sudo .venv/bin/python benchmarks/speed.py [--full] [--only blackhole control]

Rows not measured here: a clean run of 30 lab endpoints with a control (the netns
lab), the Parquet export and the collector's start (``aggregate_million.py`` and
``collector_load.py``, run on their own).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
TIMEOUT = 2.0  # the step timeout the goals are stated at


@dataclass(frozen=True)
class Row:
    name: str  # a results file's stem, and the row's key
    what: str
    now: str
    baseline: str
    goal: str
    met: bool | None  # None: not measured


def run(script: str, *args: str) -> None:
    command = [sys.executable, str(HERE / script), *args]
    print("$", " ".join(command[1:]), flush=True)
    started = time.monotonic()
    subprocess.run(command, check=True)
    print(f"  ({time.monotonic() - started:.0f} s)", flush=True)


def load(name: str) -> dict:
    return json.loads((RESULTS / f"{name}.json").read_text())


def wall_at(result: dict, timeout: float) -> float:
    return next(r["wall_s"] for r in result["runs"] if r["timeout"] == timeout)


# one function a row: run its benchmark(s), read their results, judge -------- #


def scale_row(full: bool) -> Row:
    size = "10000" if full else "2000"
    run("scale.py", "--sizes", size, "--concurrency", "256", "--no-fd-limit-run",
        "--json", str(RESULTS / "scale.json"))
    rows = load("scale")["rows"]
    probe = next(r for r in rows if r["client"] == "probe")
    bare = next(r for r in rows if r["client"] == "bare")
    ratio = bare["handshakes_per_s"] / probe["handshakes_per_s"]
    return Row("scale", f"{probe['endpoints']:,} TLS endpoints, probe vs bare asyncio",
               f"{probe['handshakes_per_s']:,.0f}/s (ratio {ratio:.2f})",
               f"{bare['handshakes_per_s']:,.0f}/s", "ratio <= 2.0", ratio <= 2.0)


def blackhole_row(full: bool) -> Row:
    # 30 s for the three timeouts the README's table shows, whatever the size
    run("blackhole.py", "--timeouts", "2", "5", "10", "--json", str(RESULTS / "blackhole.json"))
    wall = wall_at(load("blackhole"), TIMEOUT)
    return Row("blackhole", "bundled targets all blackholed, default options, --timeout 2",
               f"{wall:.2f} s", f"{TIMEOUT:.1f} s (one step)", f"<= {TIMEOUT + 1:.0f} s",
               wall <= TIMEOUT + 1)


def control_row(full: bool) -> Row:
    common = ("--timeouts", "2", "--endpoints", "30")
    run("blackhole.py", *common, "--control-unreachable",
        "--json", str(RESULTS / "control_unreachable.json"))
    run("blackhole.py", *common, "--json", str(RESULTS / "control_unreachable_bare.json"))
    wall = wall_at(load("control_unreachable"), TIMEOUT)
    bare = wall_at(load("control_unreachable_bare"), TIMEOUT)
    return Row("control_unreachable", "control helper dropped, 30 endpoints, --timeout 2",
               f"{wall:.2f} s", f"{bare:.2f} s (no control)", f"<= {2 * TIMEOUT + 1:.0f} s",
               wall <= 2 * TIMEOUT + 1)


def report_row(full: bool) -> Row:
    endpoints = "2000" if full else "500"
    repeat = "3" if full else "1"
    # the default (serial) path, and the same with one scrubbing worker per core
    run("report_cost.py", "--endpoints", endpoints, "--repeat", repeat,
        "--json", str(RESULTS / "report_cost.json"))
    run("report_cost.py", "--endpoints", endpoints, "--repeat", repeat, "--workers", "2",
        "--json", str(RESULTS / "report_cost_workers.json"))
    result, workers = load("report_cost"), load("report_cost_workers")
    return Row("report_cost", f"report phase, {result['endpoints']:,} endpoints",
               f"{result['report_wall_s']:.2f} s wall, "
               f"{result['report_cpu_with_workers_ms_per_endpoint']:.2f} ms CPU/endpoint",
               f"{workers['report_wall_s']:.2f} s, "
               f"{workers['report_cpu_with_workers_ms_per_endpoint']:.2f} ms (2 workers)",
               "spread over the cores", None)


ROWS: dict[str, Callable[[bool], Row]] = {
    "scale": scale_row,
    "blackhole": blackhole_row,
    "control": control_row,
    "report": report_row,
}


def table(rows: list[Row]) -> str:
    lines = ["| row | now | baseline | goal | met? |", "|---|---:|---:|---|---|"]
    for row in rows:
        met = "—" if row.met is None else ("yes" if row.met else "no")
        lines.append(f"| {row.what} | {row.now} | {row.baseline or '—'} | {row.goal} | {met} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the real sizes (longer)")
    parser.add_argument("--only", nargs="+", choices=sorted(ROWS), default=None,
                        help="run only these rows (the others keep their recorded results)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (the benchmarks create network namespaces)", file=sys.stderr)
        return 2
    RESULTS.mkdir(exist_ok=True)
    summary_path = RESULTS / "speed.json"
    recorded = {}
    if summary_path.exists():
        recorded = {r["name"]: r for r in json.loads(summary_path.read_text())["rows"]}
    for key in args.only or list(ROWS):
        row = ROWS[key](args.full)
        recorded[row.name] = asdict(row)
    order = ["scale", "blackhole", "control_unreachable", "report_cost"]
    rows = [Row(**recorded[name]) for name in order if name in recorded]
    summary_path.write_text(json.dumps({"benchmark": "speed", "full": args.full,
                                        "rows": [asdict(r) for r in rows]}, indent=2) + "\n")
    print()
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
