"""A run's outcome -> its report: one OONI measurement per service, written atomically.

The measurement shapes live in ``probe.report.ooni``; this module only decides
what goes into each line of a run (which control data, which annotations) and
hands the lines to the atomic writer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from probe.report import ooni
from probe.report.signing import ReportSigner
from probe.report.writer import report_path, write_report_atomic
from probe.session import RunOutcome
from probe.targets import Targets


def control_summary(outcome: RunOutcome, endpoint_ids: set[str]) -> dict[str, Any] | None:
    """What the report says about the control for one service (None: no control)."""
    control = outcome.control
    if not control.available:
        return None
    ids = sorted(endpoint_ids & set(control.observations or {}))
    entries = control.entries or {}
    attested = [entries[i] for i in ids if i in entries and "signature" in entries[i]]
    summary: dict[str, Any] = {"source": control.source, "endpoints": ids}
    if attested:
        summary["attestation"] = attested  # the helper's own signed words, untouched
    return summary


def build_lines(outcome: RunOutcome, targets: Targets) -> list[dict[str, Any]]:
    annotations = {"complete": "true" if outcome.complete else "false"}
    if not outcome.control.available and outcome.control.problems:
        annotations["control_problem"] = "; ".join(outcome.control.problems)[:500]
    if outcome.network_down:
        annotations["network"] = "down"
    meta = ooni.RunMetadata(
        report_id=outcome.report_id,
        started_at=outcome.started_at,
        resolver_ip=outcome.resolver,
        interrupted=not outcome.complete,
        test_helpers={"control": [{"address": outcome.control.source}]}
        if outcome.control.available else None,
        annotations=annotations,
    )
    observations = list(outcome.observations.values())
    verdicts = [v for rows in outcome.verdicts.values() for v in rows]
    lines = []
    for service in targets.services:
        ids = {e.id for e in service.endpoints}
        lines.append(
            ooni.build_measurement(
                meta, service, observations, verdicts, outcome.services[service.id],
                control_summary(outcome, ids), outcome.runtime,
            )
        )
    return lines


def sign_lines(lines: list[dict[str, Any]], key, complete: bool) -> list[bytes]:
    """Each measurement signed and chained, then the end-of-run record."""
    signer = ReportSigner(key)
    signed = [signer.sign(line).line for line in lines]
    signed.append(signer.finish(interrupted=not complete).line)
    return signed


def write_run_report(outcome: RunOutcome, targets: Targets, out_dir: Path, key) -> Path:
    lines = build_lines(outcome, targets)
    outcome.lines = lines
    path = report_path(out_dir, outcome.started_at, outcome.report_id)
    return write_report_atomic(path, sign_lines(lines, key, outcome.complete))
