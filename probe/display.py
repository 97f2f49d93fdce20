"""What a volunteer sees at the end of a run: a progress bar while measuring, then
tables on the terminal, or the machine-readable summary of ``--json``.

rich draws the bar and the tables; when the output is not a terminal the progress
bar stays quiet. The volunteer's own address is never printed here (the verdicts
carry the services' addresses only).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

STATUS_STYLE = {
    "ok": "green", "blocked": "bold red", "partially_blocked": "yellow",
    "down": "blue", "inconclusive": "magenta",
}


class Display:
    def __init__(self, targets, enabled: bool) -> None:
        self.console = Console(stderr=True)
        self.out = Console()
        self.enabled = enabled
        self.total = len(targets.endpoints())
        self.progress = None
        self.task = None

    def __enter__(self) -> Display:
        if self.enabled:
            self.progress = Progress(
                TextColumn("measuring"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                console=self.console, transient=True,
            )
            self.progress.__enter__()
            self.task = self.progress.add_task("endpoints", total=self.total)
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def advance(self, observation) -> None:
        if self.progress is not None:
            self.progress.advance(self.task)

    def print_summary(self, outcome, path: Path) -> None:
        out = self.out
        if outcome.network_down:
            out.print(
                "[bold]No network:[/bold] neither the baseline sites nor a control helper could "
                "be reached. Every result below is inconclusive; check your connection."
            )
        if outcome.control.available:
            out.print(f"Control: compared with {outcome.control.source}")
        else:
            problems = "; ".join(outcome.control.problems) or "none"
            out.print(
                f"Control: none usable ({problems}). Failures stay inconclusive unless the "
                "evidence alone is conclusive."
            )
        services = Table(title="Services")
        services.add_column("service")
        services.add_column("status")
        services.add_column("why")
        for status in outcome.services.values():
            style = STATUS_STYLE.get(status.status, "")
            services.add_row(status.service, f"[{style}]{status.status}[/]", status.explanation)
        endpoints = Table(title="Endpoints")
        for column in ("service", "endpoint", "address", "port", "verdict", "method"):
            endpoints.add_column(column)
        for rows in outcome.verdicts.values():
            for v in rows:
                endpoints.add_row(
                    v.service, v.endpoint_id, v.address or "-", str(v.port or "-"),
                    v.verdict, v.method or v.failure or "",
                )
        out.print(endpoints)
        out.print(services)
        out.print(f"Report: {path}")


def iter_summary_json(outcome, path: Path) -> Iterator[str]:
    """``json.dumps(summary_json(outcome, path), indent=1)``, a few lines at a time."""
    summary = summary_json(outcome, path, endpoints=False)
    head = json.dumps(summary, indent=1)
    yield head[: -len("\n}")] + ',\n "endpoints": ['
    previous = None
    for row in _endpoint_rows(outcome):
        if previous is not None:
            yield previous + ","
        previous = "\n".join("  " + line for line in json.dumps(row, indent=1).splitlines())
    if previous is not None:
        yield previous
    yield " ]\n}"


def _endpoint_rows(outcome) -> Iterator[dict]:
    for rows in outcome.verdicts.values():
        for v in rows:
            yield {
                "service": v.service, "id": v.endpoint_id, "host": v.host, "address": v.address,
                "port": v.port, "verdict": v.verdict, "method": v.method, "failure": v.failure,
                "failed_operation": v.failed_operation, "explanation": v.explanation,
            }


def summary_json(outcome, path: Path, endpoints: bool = True) -> dict:
    return {
        "complete": outcome.complete,
        "report": str(path),
        "network_down": outcome.network_down,
        "control": {"source": outcome.control.source, "problems": outcome.control.problems},
        "services": [
            {"id": s.service, "status": s.status, "explanation": s.explanation}
            for s in outcome.services.values()
        ],
        **({"endpoints": list(_endpoint_rows(outcome))} if endpoints else {}),
    }
