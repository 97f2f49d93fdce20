"""Render the README's benchmark figures from the recorded results, or check them.

Each figure lives in README.md between ``<!-- figures:NAME -->`` and
``<!-- /figures:NAME -->``; its text is a pure function of
``benchmarks/results/*.json`` (written by ``benchmarks/speed.py`` and the
benchmarks it calls). ``--check`` exits 1 when the README says anything else
(a hand-edited figure), ``--write`` rewrites the marked blocks. Text outside the
markers is never touched.

    .venv/bin/python benchmarks/readme_figures.py --check
    .venv/bin/python benchmarks/readme_figures.py --write
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from speed import Row, table  # noqa: E402

README = HERE.parent / "README.md"
RESULTS = HERE / "results"


def _load(results: Path, name: str) -> dict:
    return json.loads((results / f"{name}.json").read_text())


def blackhole(results: Path) -> str:
    data = _load(results, "blackhole")
    lines = ["| per-step timeout | wall time | wall / timeout | peak memory (max RSS) |",
             "|---|---|---|---|"]
    for run in data["runs"]:
        timeout = run["timeout"]
        lines.append(f"| {timeout:g} s | {run['wall_s']:.2f} s | "
                     f"{run['wall_s'] / timeout:.2f} | {run['max_rss_mib']:.0f} MiB |")
    return "\n".join(lines)


def control_unreachable(results: Path) -> str:
    helper = _load(results, "control_unreachable")
    bare = _load(results, "control_unreachable_bare")
    lines = ["| 30 endpoints blackholed, --timeout 2 | wall time |", "|---|---|"]
    for label, data in (("without control", bare),
                        ("with a control helper the censor drops", helper)):
        for run in data["runs"]:
            lines.append(f"| {label} | {run['wall_s']:.2f} s |")
    return "\n".join(lines)


def speed(results: Path) -> str:
    rows = [Row(**row) for row in _load(results, "speed")["rows"]]
    return table(rows)


FIGURES: dict[str, Callable[[Path], str]] = {
    "blackhole": blackhole,
    "control-unreachable": control_unreachable,
    "speed": speed,
}

_BLOCK = re.compile(
    r"(<!-- figures:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /figures:(?P=name) -->)", re.DOTALL)


def render(text: str, results: Path) -> str:
    """``text`` with every marked block rendered from ``results``; pure."""

    def block(match: re.Match[str]) -> str:
        name = match.group("name")
        if name not in FIGURES:
            raise KeyError(f"README: no renderer for the figures block {name!r}")
        return f"{match.group(1)}{FIGURES[name](results)}\n{match.group(4)}"

    return _BLOCK.sub(block, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="exit 1 if the README differs")
    mode.add_argument("--write", action="store_true", help="rewrite the README's blocks")
    parser.add_argument("--readme", type=Path, default=README)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    text = args.readme.read_text()
    try:
        rendered = render(text, args.results)
    except (OSError, KeyError, ValueError) as exc:
        print(f"cannot render the figures: {exc}", file=sys.stderr)
        return 1
    if args.write:
        args.readme.write_text(rendered)
        return 0
    if rendered != text:
        names = [m.group("name") for m in _BLOCK.finditer(text)
                 if m.group(0) not in rendered]
        print(f"{args.readme}: figures differ from {args.results} ({', '.join(names)}): "
              "run benchmarks/readme_figures.py --write", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
