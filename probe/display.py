"""What a volunteer sees at the end of a run: a progress bar while measuring, then
tables on the terminal, or the machine-readable summary of ``--json``.

rich draws the bar and the tables; when the output is not a terminal the progress
bar stays quiet. The volunteer's own address is never printed here (the verdicts
carry the services' addresses only).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from probe.observations import FunctionVerdict, NetworkFindings
from probe.vocabulary import Function, UdpNetwork

STATUS_STYLE = {
    "ok": "green", "blocked": "bold red", "partially_blocked": "yellow",
    "down": "blue", "inconclusive": "magenta",
}
FUNCTION_SEPARATOR = " · "
#: A run with no measurement writes no report (every report line is a measurement).
NO_REPORT = "Report: none (nothing was measured, so no report was written)"
# What a network-wide UDP finding means for a volunteer, before the evidence.
UDP_NETWORK_HEADLINE: dict[str, str] = {
    UdpNetwork.ALL_UDP_DROPPED: "This network drops all UDP: calls fail for every app",
    UdpNetwork.ALL_QUIC_DROPPED: (
        "This network drops all QUIC: apps fall back to TCP where they can"
    ),
}


def ordered_functions(functions: Iterable[FunctionVerdict]) -> list[FunctionVerdict]:
    """A service's functions in the vocabulary's order (messaging, media, calls...)."""
    order = {str(name): index for index, name in enumerate(Function)}
    return sorted(functions, key=lambda f: order.get(str(f.function), len(order)))


def function_line(service: str, functions: Iterable[FunctionVerdict]) -> str | None:
    """``telegram: messaging ok · calls blocked · media partially_blocked``; None
    for a service whose endpoints declare no function."""
    ranked = ordered_functions(functions)
    if not ranked:
        return None
    return f"{service}: " + FUNCTION_SEPARATOR.join(f"{f.function} {f.status}" for f in ranked)


def network_lines(network: NetworkFindings) -> list[str]:
    """One sentence per network-wide finding (all UDP or QUIC dropped, allowlist
    mode), each followed by the run's evidence; none for an ordinary network."""
    lines: list[str] = []
    evidence = f" ({network.explanation})" if network.explanation else ""
    headline = UDP_NETWORK_HEADLINE.get(str(network.udp))
    if headline is not None:
        lines.append(headline + ("" if network.restricted else evidence))
    if network.restricted:
        lines.append(
            "Restricted network: connections open everywhere but data passes only to a few "
            "destinations (allowlist mode); this is censorship, not your network being down"
            + evidence
        )
    return lines


class Display:
    def __init__(self, targets, enabled: bool) -> None:
        self.console = Console(stderr=True)
        self.out = Console()
        self.enabled = enabled
        self.total = len(targets.endpoints())
        self.progress: Progress | None = None
        self.task: TaskID | None = None

    def __enter__(self) -> Display:
        if self.enabled:
            progress = Progress(
                TextColumn("measuring"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                console=self.console, transient=True,
            )
            progress.__enter__()
            self.task = progress.add_task("endpoints", total=self.total)
            self.progress = progress
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def advance(self, observation) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.advance(self.task)

    def print_summary(self, outcome, path: Path | None) -> None:
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
        for line in network_lines(outcome.network):
            out.print(f"[bold]{escape(line)}[/bold]")
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
        for service, functions in outcome.functions.items():
            if functions:
                out.print(_styled_function_line(service, functions))
        out.print(f"Report: {path}" if path is not None else NO_REPORT)


def _styled_function_line(service: str, functions: Iterable[FunctionVerdict]) -> str:
    """function_line with each status in its colour (same words, rich markup)."""
    parts = [
        f"{escape(str(f.function))} [{STATUS_STYLE.get(str(f.status), '')}]"
        f"{escape(str(f.status))}[/]"
        for f in ordered_functions(functions)
    ]
    return f"{escape(service)}: " + FUNCTION_SEPARATOR.join(parts)


def iter_summary_json(outcome, path: Path | None) -> Iterator[str]:
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


def summary_json(outcome, path: Path | None, endpoints: bool = True) -> dict:
    return {
        "complete": outcome.complete,
        "report": None if path is None else str(path),
        "network_down": outcome.network_down,
        "control": {"source": outcome.control.source, "problems": outcome.control.problems},
        "network": {
            "udp": str(outcome.network.udp),
            "restricted": outcome.network.restricted,
            "explanation": outcome.network.explanation,
            "findings": network_lines(outcome.network),
        },
        "services": [
            {"id": s.service, "status": s.status, "explanation": s.explanation,
             "functions": {
                 str(f.function): {"status": str(f.status), "explanation": f.explanation}
                 for f in ordered_functions(outcome.functions.get(s.service, ()))
             }}
            for s in outcome.services.values()
        ],
        **({"endpoints": list(_endpoint_rows(outcome))} if endpoints else {}),
    }
