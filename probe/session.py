"""One run of the probe, end to end: measure, ask the control, analyse, report.

Data flows one way: targets -> runner (through the network seam) ->
observations -> control -> analysis -> report lines. This module wires those
steps and owns nothing else: every network operation goes through the
``Network`` it is given (live, recording or replaying), and the only file it
writes is the report, atomically, through ``probe.report.writer``.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import platform
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from probe import __version__, analysis
from probe.control import protocol
from probe.net.network import ControlRequest, Network
from probe.observations import EndpointObservation, ServiceVerdict, Verdict
from probe.runner import RunOptions, run_endpoints
from probe.targets import Targets


@dataclass(frozen=True)
class ControlConfig:
    urls: tuple[str, ...] = ()
    file: Path | None = None
    timeout: float = 60.0


@dataclass
class ControlOutcome:
    """Which control was used, or why none could be."""

    observations: dict[str, EndpointObservation] | None = None
    source: str | None = None  # the helper URL or file the data came from
    problems: list[str] = field(default_factory=list)
    entries: dict[str, Any] | None = None  # the helper's per-endpoint (signed) entries
    probe_address: str | None = None  # never written anywhere; used for scrubbing

    @property
    def available(self) -> bool:
        return self.observations is not None


@dataclass
class RunOutcome:
    started_at: datetime.datetime
    report_id: str
    observations: dict[str, EndpointObservation]
    verdicts: dict[str, list[Verdict]]  # by endpoint id
    services: dict[str, ServiceVerdict]  # by service id
    control: ControlOutcome
    network_down: bool
    complete: bool
    runtime: float
    resolver: str | None


def new_report_id(started_at: datetime.datetime) -> str:
    return f"{started_at:%Y%m%dT%H%M%SZ}_probe_{uuid.uuid4().hex[:12]}"


async def ask_control(
    network: Network,
    targets: Targets,
    observations: dict[str, EndpointObservation],
    config: ControlConfig,
    step_timeout: float,
    trust_pem: str | None = None,
) -> ControlOutcome:
    """Query every helper in parallel, batch by batch; the first good answer wins."""
    outcome = ControlOutcome()
    if config.file is not None:
        try:
            parsed = protocol.parse_response(json.loads(config.file.read_text()))
            outcome.observations, outcome.entries = parsed.observations, parsed.entries
            outcome.source = str(config.file)
        except (OSError, ValueError) as exc:
            outcome.problems.append(f"{config.file}: {exc}"[:300])
        return outcome
    if not config.urls:
        outcome.problems.append("no control helper configured (--control URL)")
        return outcome
    items = [
        protocol.ControlEndpoint(e, observations[e.id].addresses)
        for e in targets.endpoints()
        if e.id in observations and not observations[e.id].interrupted
    ]
    if not items:
        outcome.problems.append("nothing was measured")
        return outcome
    # Large runs ask in batches: a helper accepts at most protocol.MAX_ENDPOINTS per
    # request, and smaller answers keep the probe's memory and the helper's deadline low.
    for first in range(0, len(items), CONTROL_BATCH):
        batch = items[first:first + CONTROL_BATCH]
        answer = await _ask_batch(network, batch, config, step_timeout, trust_pem, outcome)
        if answer is None:
            continue
        url, parsed = answer
        if outcome.observations is None:
            outcome.observations, outcome.entries, outcome.source = {}, {}, url
            outcome.probe_address = parsed.probe_address
        outcome.observations.update(parsed.observations)
        outcome.entries.update(parsed.entries)
    return outcome


CONTROL_BATCH = 500  # endpoints per control request


async def _ask_batch(network, items, config, step_timeout, trust_pem, outcome):
    """Query every helper in parallel for one batch; the first good answer wins."""
    body = protocol.build_request(items, step_timeout, trust_pem)

    async def one(url: str):
        target = url.rstrip("/") + "/measure"
        # an answer is a few KiB per endpoint: a helper sending far more is hostile
        # (parsing 30 MiB of nested lists can take more than 600 MiB of memory)
        cap = min(32 << 20, (256 << 10) * max(1, len(items)))
        request = ControlRequest(target, body, max_bytes=cap)
        result = await network.control_call(request, config.timeout)
        if result.failure is not None or result.body is None:
            raise RuntimeError(f"{url}: {result.failure or 'empty answer'}")
        return url, protocol.parse_response(result.body)

    tasks = [asyncio.ensure_future(one(url)) for url in config.urls]
    try:
        for next_done in asyncio.as_completed(tasks):
            try:
                return await next_done
            except (RuntimeError, ValueError) as exc:
                outcome.problems.append(str(exc)[:300])
    finally:
        for task in tasks:
            task.cancel()
    return None


def analyse(
    targets: Targets,
    observations: dict[str, EndpointObservation],
    control: ControlOutcome,
    routable,
) -> tuple[dict[str, list[Verdict]], dict[str, ServiceVerdict], bool]:
    endpoints = targets.endpoints()
    baseline_ids = {e.id for s in targets.services if s.baseline for e in s.endpoints}
    baseline = [observations[i] for i in baseline_ids if i in observations]
    down = analysis.network_down(baseline or list(observations.values()), control.available)
    control_obs = control.observations
    baseline_rates = [
        h.throughput_bps
        for o in baseline
        for p in o.ports
        for h in p.http
        if h.throughput_bps
    ]
    context = analysis.Context(
        control=control_obs,
        probe_has_ipv6=analysis.has_ipv6(observations.values()),
        control_has_ipv6=analysis.has_ipv6(control_obs.values()) if control_obs else True,
        network_down=down,
        routable=routable,
        baseline_throughput_bps=max(baseline_rates) if baseline_rates else None,
        pinned=frozenset(e.id for e in endpoints if e.ca_pem),
        tls_checked=frozenset(e.id for e in endpoints if {"tls", "https"} & set(e.checks)),
    )
    verdicts = {
        e.id: analysis.endpoint_verdicts(observations[e.id], context)
        for e in endpoints
        if e.id in observations
    }
    services = {}
    for service in targets.services:
        rows = [v for e in service.endpoints for v in verdicts.get(e.id, [])]
        status, explanation = analysis.service_status(rows)
        if down and status == "inconclusive":
            explanation = "Your network seems down: nothing, not even the baseline, answered."
        services[service.id] = ServiceVerdict(service.id, status, explanation)
    return verdicts, services, down


async def run(
    network: Network,
    targets: Targets,
    options: RunOptions,
    control_config: ControlConfig,
    on_endpoint: Callable[[EndpointObservation], None] | None = None,
    report_id: str | None = None,
) -> RunOutcome:
    """Measure everything; on cancellation, still return an (incomplete) outcome."""
    started = time.monotonic()
    observations: dict[str, EndpointObservation] = {}
    complete = True
    try:
        await run_endpoints(
            network, targets.endpoints(), options, on_endpoint, results=observations
        )
    except asyncio.CancelledError:
        complete = False
    # the targets file's order, not completion order: reports must not depend on timing
    observations = {e.id: observations[e.id] for e in targets.endpoints() if e.id in observations}
    if complete:
        control = await ask_control(
            network, targets, observations, control_config, options.timeout, options.trust_pem
        )
    else:
        control = ControlOutcome(problems=["run interrupted before the control was asked"])
        for e in targets.endpoints():
            if e.id not in observations:
                observations[e.id] = EndpointObservation(
                    e.id, e.service, e.host, None, (), (), (), (), interrupted=True
                )
    verdicts, services, down = analyse(targets, observations, control, options.routable)
    return RunOutcome(
        started_at=options.started_at,
        report_id=report_id or new_report_id(options.started_at),
        observations=observations,
        verdicts=verdicts,
        services=services,
        control=control,
        network_down=down,
        complete=complete,
        runtime=time.monotonic() - started,
        resolver=f"{options.resolver[0]}" if options.resolver else None,
    )


def platform_annotations() -> dict[str, str]:
    return {
        "engine_name": "probe",
        "engine_version": __version__,
        "platform": platform.system().lower() or "unknown",
    }
