"""A run's results -> its report: one OONI measurement per service, written atomically.

The measurement shapes live in ``probe.report.ooni``; this module only decides
what goes into each line of a run (which control data, which annotations) and
hands the lines to the atomic writer.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

from probe.observations import ServiceResult
from probe.report import ooni
from probe.report.scrub import scrub_lines
from probe.report.signing import ReportSigner
from probe.report.writer import report_path, write_report_atomic
from probe.session import RunOutcome
from probe.targets import Targets


@dataclass(frozen=True)
class RunContext:
    """What the report needs beyond the outcome: who measured, from where (coarsely)."""

    addresses: tuple[str, ...] = ()  # the volunteer's, to scrub; never written
    probe_asn: str | None = None
    probe_cc: str | None = None
    probe_network_name: str | None = None
    resolver_asn: str | None = None
    resolver_cc: str | None = None
    resolver_network_name: str | None = None

    @classmethod
    def build(cls, outcome: RunOutcome, addresses, geo) -> RunContext:
        """``geo``: a probe.geo.GeoDatabase or None (offline lookups only)."""
        if geo is None:
            return cls(tuple(addresses))
        probe = geo.lookup(addresses[0]) if addresses else None
        resolver = geo.lookup(outcome.resolver) if outcome.resolver else None
        return cls(
            tuple(addresses),
            probe.asn if probe else None, probe.cc if probe else None,
            probe.network_name if probe else None,
            resolver.asn if resolver else None, resolver.cc if resolver else None,
            resolver.network_name if resolver else None,
        )


def run_metadata(
    outcome: RunOutcome, context: RunContext, result: ServiceResult
) -> ooni.RunMetadata:
    """The run's metadata as one service's line states it (its batch's control)."""
    annotations = {"complete": "true" if outcome.complete else "false"}
    if result.control is None and result.control_problems:
        annotations["control_problem"] = "; ".join(result.control_problems)[:500]
    if result.network_down:
        annotations["network"] = "down"
    return ooni.RunMetadata(
        report_id=outcome.report_id,
        started_at=outcome.started_at,
        resolver_ip=outcome.resolver,
        probe_asn=context.probe_asn,
        probe_cc=context.probe_cc,
        probe_network_name=context.probe_network_name,
        resolver_asn=context.resolver_asn,
        resolver_cc=context.resolver_cc,
        resolver_network_name=context.resolver_network_name,
        interrupted=not outcome.complete,
        test_helpers={"control": [{"address": result.control.get("source")}]}
        if result.control is not None else None,
        annotations=annotations,
    )


def iter_lines(
    outcome: RunOutcome,
    targets: Targets,
    context: RunContext | None = None,
    results: Iterable[ServiceResult] | None = None,
) -> Iterator[dict[str, Any]]:
    """One OONI measurement per service result, built one at a time (a large run
    never holds its report lines in memory). ``results``: a streamed run's staged
    results; by default those ``session.run`` kept in the outcome."""
    context = context or RunContext()
    services = {s.id: s for s in (outcome.targets or targets).services}
    for result in outcome.results if results is None else results:
        yield ooni.build_measurement(
            run_metadata(outcome, context, result), services[result.service],
            result.observations, result.verdicts, result.status, result.control,
            outcome.runtime, functions=result.functions, network=outcome.network,
        )


def build_lines(
    outcome: RunOutcome, targets: Targets, context: RunContext | None = None
) -> list[dict[str, Any]]:
    return list(iter_lines(outcome, targets, context))


def sign_lines(lines: Iterable[dict[str, Any]], key, complete: bool) -> Iterator[bytes]:
    """Each measurement signed and chained; the last one carries the run's seal."""
    for signed in ReportSigner(key).sign_run(lines, interrupted=not complete):
        yield signed.line


# Scrubbing and its re-check are most of a report's CPU, and pure per line: with
# workers, lines from this many on are scrubbed in forked processes while this
# process builds, signs and writes, in the same order. Off by default: workers
# lose the memos this process shares between lines and pickle every line twice,
# and on the shared 2-core machine they cost 50% more CPU for no steady gain in
# wall time (benchmarks/README.md); a machine with idle cores may pass workers.
PARALLEL_SCRUB_LINES = 64
# lines handed to the workers ahead of the one being signed (memory stays bounded)
_SCRUB_AHEAD = 4


def scrub_workers() -> int:
    """Worker processes for scrubbing: one per core where processes fork cheaply
    (Linux), none elsewhere (spawning would import the whole probe again)."""
    if sys.platform != "linux":
        return 0
    cores = len(os.sched_getaffinity(0))
    return cores if cores > 1 else 0


def scrub_stream(
    lines: Iterable[dict[str, Any]], addresses: tuple[str, ...], workers: int = 0
) -> Iterator[tuple[list[dict[str, Any]], list[tuple[str, str]]]]:
    """``scrub_lines([line], addresses)`` of each line, in order.

    With ``workers`` > 1 the lines from the ``PARALLEL_SCRUB_LINES``-th on are
    scrubbed in that many forked processes: a pure function of the line and the
    addresses, so the results are the serial path's. The signing key never
    reaches them beyond the copy fork makes of this process's memory."""
    lines = iter(lines)
    head = []
    for line in lines:
        head.append(line)
        if len(head) >= PARALLEL_SCRUB_LINES:
            break
    if workers <= 1 or len(head) < PARALLEL_SCRUB_LINES or not addresses:
        for line in chain(head, lines):
            yield scrub_lines([line], addresses)
        return
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        window: deque[Future] = deque()
        for line in chain(head, lines):
            window.append(pool.submit(scrub_lines, [line], addresses))
            if len(window) > workers * _SCRUB_AHEAD:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()


def write_run_report(
    outcome: RunOutcome,
    targets: Targets,
    out_dir: Path,
    key,
    context: RunContext | None = None,
    results: Iterable[ServiceResult] | None = None,
    workers: int = 0,
) -> tuple[Path | None, list[tuple[str, str]]]:
    """Build, scrub, sign and write each line in turn. Returns the path and the
    measurements not written because the volunteer's address could not be removed
    from them (each reason says which service; none contains the address).

    A run with no measurement to write has no report: every line of a report is
    a measurement, the last one sealed. The path is then None and no file is made.
    ``workers``: processes scrubbing lines (0: here; see :func:`scrub_workers`).
    """
    context = context or RunContext()
    dropped: list[tuple[str, str]] = []

    def scrubbed() -> Iterator[dict[str, Any]]:
        lines = iter_lines(outcome, targets, context, results)
        for clean, lost in scrub_stream(lines, context.addresses, workers):
            dropped.extend(lost)
            yield from clean

    path = report_path(out_dir, outcome.started_at, outcome.report_id)
    signed = sign_lines(scrubbed(), key, outcome.complete)
    first = next(signed, None)
    if first is None:
        return None, dropped
    return write_report_atomic(path, chain([first], signed)), dropped
