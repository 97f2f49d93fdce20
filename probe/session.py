"""One run of the probe, end to end: measure, ask the control, analyse, hand on.

Data flows one way: targets -> runner (through the network seam) ->
observations -> control -> analysis -> one :class:`ServiceResult` per service.
A run is a pipeline over batches of whole services (at most ``CONTROL_BATCH``
endpoints each, in the targets file's order): while the next batch is being
measured, the previous one is compared with the control, analysed, handed to
``emit`` and forgotten, so a run's memory does not grow with its number of
endpoints. Batches are fixed by the targets file, never by timing, so a replay
draws the same conclusions as the live run.

Services with a throughput transfer are the exception: transfers run one at a
time after every other step (a transfer saturates a slow link and would make
other endpoints time out), so those services are held and analysed last.

Every network operation goes through the ``Network`` this module is given
(live, recording or replaying); it writes no file itself.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import logging
import platform
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from probe import __version__, analysis
from probe.control import protocol
from probe.net.network import ControlRequest, Network
from probe.observations import (
    EndpointObservation,
    FunctionVerdict,
    NetworkFindings,
    ServiceResult,
    ServiceVerdict,
    Verdict,
)
from probe.runner import Measurer, RunOptions
from probe.targets import Endpoint, Service, Targets

log = logging.getLogger("probe.session")

CONTROL_BATCH = 500  # endpoints per batch, and so per control request
NETWORK_DOWN = "Your network seems down: nothing, not even the baseline, answered."
INTERRUPTED = "run interrupted before the control was asked"


@dataclass(frozen=True)
class ControlConfig:
    urls: tuple[str, ...] = ()
    file: Path | None = None
    timeout: float = 60.0


@dataclass
class ControlOutcome:
    """Which control was used, or why none could be.

    In the outcome of a streamed run (:func:`stream`) ``observations`` and
    ``entries`` are empty dicts when a control answered: they were handed on
    batch by batch and released.
    """

    observations: dict[str, EndpointObservation] | None = None
    source: str | None = None  # the helper URL or file the data came from
    problems: list[str] = field(default_factory=list)
    entries: dict[str, Any] | None = None  # the helper's per-endpoint (signed) entries
    probe_address: str | None = None  # never written anywhere; used for scrubbing

    @property
    def available(self) -> bool:
        return self.observations is not None

    def merge(self, other: ControlOutcome) -> None:
        """Add one batch's answer (or problems) to this run-wide view."""
        for problem in other.problems:
            if problem not in self.problems:
                self.problems.append(problem)
        if not other.available:
            return
        if self.observations is None:
            self.observations, self.entries = {}, {}
            self.source = other.source
        self.probe_address = self.probe_address or other.probe_address
        self.observations.update(other.observations or {})
        self.entries.update(other.entries or {})


@dataclass
class RunOutcome:
    started_at: datetime.datetime
    report_id: str
    observations: dict[str, EndpointObservation]  # empty for a streamed run
    verdicts: dict[str, list[Verdict]]  # by endpoint id
    services: dict[str, ServiceVerdict]  # by service id
    control: ControlOutcome
    network_down: bool
    complete: bool
    runtime: float
    resolver: str | None
    results: list[ServiceResult] = field(default_factory=list)  # kept by run(), not stream()
    network: NetworkFindings = field(default_factory=NetworkFindings)
    # by service id: each service's per-function status, as its ServiceResult has it
    functions: dict[str, tuple[FunctionVerdict, ...]] = field(default_factory=dict)


def new_report_id(started_at: datetime.datetime) -> str:
    return f"{started_at:%Y%m%dT%H%M%SZ}_probe_{uuid.uuid4().hex[:12]}"


def plan_batches(services: Sequence[Service], limit: int) -> list[tuple[Service, ...]]:
    """Whole services in file order, grouped into batches of at most ``limit``
    endpoints (a larger service is a batch of its own)."""
    batches: list[tuple[Service, ...]] = []
    current: list[Service] = []
    size = 0
    for service in services:
        if current and size + len(service.endpoints) > limit:
            batches.append(tuple(current))
            current, size = [], 0
        current.append(service)
        size += len(service.endpoints)
    if current:
        batches.append(tuple(current))
    return batches


def _transfers(service: Service) -> bool:
    return any("download" in e.checks for e in service.endpoints)


def _interrupted(endpoint: Endpoint) -> EndpointObservation:
    return EndpointObservation(
        endpoint.id, endpoint.service, endpoint.host, None, (), (), (), (), interrupted=True
    )


def control_summary(control: ControlOutcome, endpoint_ids: Sequence[str]) -> dict[str, Any] | None:
    """What the report says about the control for one service (None: no control)."""
    if not control.available:
        return None
    ids = sorted(set(endpoint_ids) & set(control.observations or {}))
    entries = control.entries or {}
    attested = [entries[i] for i in ids if i in entries and "signature" in entries[i]]
    summary: dict[str, Any] = {"source": control.source, "endpoints": ids}
    if attested:
        summary["attestation"] = attested  # the helper's own signed words, untouched
    return summary


# --------------------------------------------------------------------------- #
# asking the control                                                           #
# --------------------------------------------------------------------------- #


def _control_file(config: ControlConfig) -> ControlOutcome | None:
    """The recorded control response of ``--control-file`` (None: none configured)."""
    if config.file is None:
        return None
    outcome = ControlOutcome()
    try:
        parsed = protocol.parse_response(json.loads(config.file.read_text()))
        outcome.observations, outcome.entries = parsed.observations, parsed.entries
        outcome.source = str(config.file)
    except (OSError, ValueError) as exc:
        outcome.problems.append(f"{config.file}: {exc}"[:300])
    return outcome


async def ask_control_batch(
    network: Network,
    items: Sequence[protocol.ControlEndpoint],
    config: ControlConfig,
    step_timeout: float,
    trust_pem: str | None = None,
) -> ControlOutcome:
    """Ask every helper about one batch, in parallel; the first good answer wins."""
    outcome = ControlOutcome()
    if not config.urls:
        outcome.problems.append("no control helper configured (--control URL)")
        return outcome
    if not items:
        outcome.problems.append("nothing was measured")
        return outcome
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
                url, parsed = await next_done
            except (RuntimeError, ValueError) as exc:
                outcome.problems.append(str(exc)[:300])
                continue
            outcome.observations, outcome.entries = parsed.observations, parsed.entries
            outcome.source, outcome.probe_address = url, parsed.probe_address
            return outcome
    finally:
        for task in tasks:
            task.cancel()
    return outcome


async def ask_control(
    network: Network,
    targets: Targets,
    observations: dict[str, EndpointObservation],
    config: ControlConfig,
    step_timeout: float,
    trust_pem: str | None = None,
) -> ControlOutcome:
    """The control for a whole measured run, asked batch by batch."""
    recorded = _control_file(config)
    if recorded is not None:
        return recorded
    outcome = ControlOutcome()
    for batch in plan_batches(targets.services, CONTROL_BATCH):
        items = _control_items(batch, observations)
        if items:
            outcome.merge(await ask_control_batch(network, items, config, step_timeout, trust_pem))
    if not outcome.available and not outcome.problems:
        outcome.problems.append("nothing was measured")
    return outcome


def _control_items(
    batch: Sequence[Service], observations: dict[str, EndpointObservation]
) -> list[protocol.ControlEndpoint]:
    return [
        protocol.ControlEndpoint(e, observations[e.id].addresses)
        for service in batch
        for e in service.endpoints
        if e.id in observations and not observations[e.id].interrupted
    ]


# --------------------------------------------------------------------------- #
# the pipeline                                                                 #
# --------------------------------------------------------------------------- #


class _Pipeline:
    """The state of one streamed run: what is measured, held, and concluded."""

    def __init__(
        self,
        network: Network,
        targets: Targets,
        options: RunOptions,
        control_config: ControlConfig,
        emit: Callable[[ServiceResult], None],
        on_endpoint: Callable[[EndpointObservation], None] | None,
        on_control: Callable[[ControlOutcome], None] | None,
    ) -> None:
        self.network, self.targets, self.options = network, targets, options
        self.control_config = control_config
        self.emit, self.on_endpoint, self.on_control = emit, on_endpoint, on_control
        self.measurer = Measurer(network, options)
        self.recorded_control = _control_file(control_config)
        self.batches = plan_batches(targets.services, CONTROL_BATCH)
        self.batch_of = {
            e.id: number
            for number, batch in enumerate(self.batches)
            for service in batch
            for e in service.endpoints
        }
        self.unmeasured = [sum(len(s.endpoints) for s in batch) for batch in self.batches]
        self.measured = [asyncio.Event() for _ in self.batches]
        self.analysed = [asyncio.Event() for _ in self.batches]
        baseline = [e for s in targets.services if s.baseline for e in s.endpoints]
        self.baseline_ids = {e.id for e in baseline}
        self.baseline_unmeasured = len(baseline)
        self.baseline_measured = asyncio.Event()
        if not baseline:
            self.baseline_measured.set()
        self.baseline: dict[str, EndpointObservation] = {}
        self.results: dict[str, EndpointObservation] = {}  # measured, not yet handed on
        self.held = [s for s in targets.services if _transfers(s)]  # analysed last
        self.held_ids = {s.id for s in self.held}
        self.held_control = ControlOutcome()
        self.probe_ipv6 = analysis.Ipv6Evidence()
        self.control_ipv6 = analysis.Ipv6Evidence()
        self.pinned = frozenset(e.id for e in targets.endpoints() if e.ca_pem)
        self.tls_checked = frozenset(
            e.id for e in targets.endpoints() if {"tls", "https"} & set(e.checks)
        )
        self.emitted: set[str] = set()
        self.verdicts: dict[str, list[Verdict]] = {}
        self.services: dict[str, ServiceVerdict] = {}
        self.functions: dict[str, tuple[FunctionVerdict, ...]] = {}
        self.control = ControlOutcome()  # the run-wide view: source, problems, address
        self.down: list[bool] = []

    # measuring ------------------------------------------------------------ #

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._measure_all(group))
                group.create_task(self._analyse_all())
        except BaseExceptionGroup as failed:
            # one step failed (e.g. the report folder's disk is full): say which, as is
            raise failed.exceptions[0] from None

    async def _measure_all(self, group: asyncio.TaskGroup) -> None:
        # One task per endpoint in flight at most ``concurrency`` (each holds at least
        # one operation), the baseline first: every batch's analysis needs it. A
        # batch starts once the one two places before it was handed on, so at most
        # two batches of observations are in memory.
        window = asyncio.Semaphore(self.options.concurrency)
        baseline = [e for s in self.targets.services if s.baseline for e in s.endpoints]
        rest = [e for e in self.targets.endpoints() if e.id not in self.baseline_ids]
        for endpoint in (*baseline, *rest):
            number = self.batch_of[endpoint.id]
            if endpoint.id not in self.baseline_ids and number >= 2:
                await self.analysed[number - 2].wait()
            await window.acquire()
            group.create_task(self._measure_one(endpoint, window))

    async def _measure_one(self, endpoint: Endpoint, window: asyncio.Semaphore) -> None:
        try:
            observation = await self.measurer.measure(endpoint)
        except Exception:  # a bug must not lose the other endpoints' measurements
            log.exception("measuring %s failed", endpoint.id)
            observation = _interrupted(endpoint)
        finally:
            window.release()
        self.results[endpoint.id] = observation
        if self.on_endpoint is not None and "download" not in endpoint.checks:
            self.on_endpoint(observation)  # the others are reported after their transfer
        number = self.batch_of[endpoint.id]
        self.unmeasured[number] -= 1
        if not self.unmeasured[number]:
            self.measured[number].set()
        if endpoint.id in self.baseline_ids:
            self.baseline[endpoint.id] = observation
            self.baseline_unmeasured -= 1
            if not self.baseline_unmeasured:
                self.baseline_measured.set()

    async def _transfers(self) -> None:
        """Every throughput transfer, one at a time, after every other step."""
        for service in self.held:
            for endpoint in service.endpoints:
                if "download" not in endpoint.checks:
                    continue
                observation = self.results.get(endpoint.id)
                if observation is not None and not observation.interrupted:
                    ports = []
                    for port in observation.ports:
                        ports.append(await self.measurer.download(endpoint, port))
                    observation = dataclasses.replace(observation, ports=tuple(ports))
                    self.results[endpoint.id] = observation
                    if endpoint.id in self.baseline_ids:
                        self.baseline[endpoint.id] = observation
                if self.on_endpoint is not None and observation is not None:
                    self.on_endpoint(observation)

    # analysing ------------------------------------------------------------ #

    async def _analyse_all(self) -> None:
        await self.baseline_measured.wait()
        for number, batch in enumerate(self.batches):
            await self.measured[number].wait()
            observations = {e.id: self.results[e.id] for s in batch for e in s.endpoints}
            control = await self._ask(batch, observations)
            self.probe_ipv6.add(observations.values())
            if control.available:
                self.control_ipv6.add((control.observations or {}).values())
            down = self._network_down(observations.values(), control.available)
            for service in batch:
                if service.id in self.held_ids:
                    self.held_control.merge(_only(control, service))
                else:
                    self._conclude(service, control, down)
            self.analysed[number].set()
        await self._transfers()
        down = self._network_down(self.results.values(), self.held_control.available)
        # 0 is a measurement (the volunteer's own baseline froze), None is not
        bps = [
            h.throughput_bps
            for o in self.baseline.values()
            for p in o.ports
            for h in p.http
            if h.throughput_bps is not None
        ]
        for service in self.held:
            self._conclude(service, self.held_control, down, max(bps) if bps else None)

    async def _ask(
        self, batch: Sequence[Service], observations: dict[str, EndpointObservation]
    ) -> ControlOutcome:
        if self.recorded_control is not None:
            control = self.recorded_control
        else:
            o = self.options
            control = await ask_control_batch(
                self.network, _control_items(batch, observations), self.control_config,
                o.timeout, o.trust_pem,
            )
        self.control.merge(dataclasses.replace(control, observations=None if not
                                               control.available else {}, entries=None))
        if self.on_control is not None:
            self.on_control(control)
        return control

    def _network_down(self, observations, control_available: bool) -> bool:
        down = analysis.network_down(
            list(self.baseline.values()) or list(observations), control_available
        )
        self.down.append(down)
        return down

    def _conclude(
        self,
        service: Service,
        control: ControlOutcome,
        down: bool,
        baseline_bps: float | None = None,
    ) -> None:
        """Analyse one service, hand its result on and forget its observations."""
        context = analysis.Context(
            control=control.observations,
            probe_has_ipv6=self.probe_ipv6.has_ipv6,
            control_has_ipv6=self.control_ipv6.has_ipv6 if control.available else True,
            network_down=down,
            routable=self.options.routable,
            baseline_throughput_bps=baseline_bps,
            pinned=self.pinned,
            tls_checked=self.tls_checked,
            resolver_reachable=analysis.resolver_replied(self.baseline.values()),
        )
        observations = tuple(
            self.results.pop(e.id) for e in service.endpoints if e.id in self.results
        )
        rows: list[Verdict] = []
        for observation in observations:
            verdicts = analysis.endpoint_verdicts(observation, context)
            self.verdicts[observation.endpoint_id] = verdicts
            rows += verdicts
        status, explanation = analysis.service_status(rows)
        if down and status == "inconclusive":
            explanation = NETWORK_DOWN
        verdict = ServiceVerdict(service.id, status, explanation)
        self.services[service.id] = verdict
        self.emitted.add(service.id)
        result = ServiceResult(
            service.id, observations, tuple(rows), verdict,
            control_summary(control, [e.id for e in service.endpoints]),
            () if control.available else tuple(control.problems), down,
        )
        if result.functions:  # kept for the summary (the result itself is handed on)
            self.functions[service.id] = result.functions
        self.emit(result)

    def conclude_interrupted(self) -> None:
        """After Ctrl-C: every service not yet handed on, with what was measured."""
        self.control.merge(ControlOutcome(problems=[INTERRUPTED]))
        for service in self.targets.services:
            if service.id in self.emitted:
                continue
            for endpoint in service.endpoints:
                self.results.setdefault(endpoint.id, _interrupted(endpoint))
            control = self.held_control if service.id in self.held_ids else ControlOutcome(
                problems=[INTERRUPTED])
            observations = [self.results[e.id] for e in service.endpoints]
            down = self._network_down(observations, control.available)
            self._conclude(service, control, down)

    def outcome(self, report_id: str, complete: bool, runtime: float) -> RunOutcome:
        order = [e.id for e in self.targets.endpoints()]
        o = self.options
        return RunOutcome(
            started_at=o.started_at,
            report_id=report_id,
            observations={},
            verdicts={i: self.verdicts[i] for i in order if i in self.verdicts},
            services={s.id: self.services[s.id] for s in self.targets.services
                      if s.id in self.services},
            control=self.control,
            network_down=bool(self.down) and all(self.down),
            complete=complete,
            runtime=runtime,
            resolver=f"{o.resolver[0]}" if o.resolver else None,
            functions={s.id: self.functions[s.id] for s in self.targets.services
                       if s.id in self.functions},
        )


def _only(control: ControlOutcome, service: Service) -> ControlOutcome:
    """The part of one batch's control answer about ``service``."""
    if not control.available:
        return dataclasses.replace(control, problems=list(control.problems))
    ids = {e.id for e in service.endpoints}
    return dataclasses.replace(
        control,
        observations={k: v for k, v in (control.observations or {}).items() if k in ids},
        entries={k: v for k, v in (control.entries or {}).items() if k in ids},
        problems=list(control.problems),
    )


async def stream(
    network: Network,
    targets: Targets,
    options: RunOptions,
    control_config: ControlConfig,
    emit: Callable[[ServiceResult], None],
    on_endpoint: Callable[[EndpointObservation], None] | None = None,
    report_id: str | None = None,
    on_control: Callable[[ControlOutcome], None] | None = None,
) -> RunOutcome:
    """Measure, compare and analyse batch by batch; each service's result goes to
    ``emit`` (exactly once, in an order set by the targets file) and is not kept.

    The outcome holds the verdicts and the control's run-wide view, not the
    observations. On cancellation (Ctrl-C) every service not yet handed on is
    analysed with what was measured, without control, and the outcome says
    ``complete=False``.
    """
    started = time.monotonic()
    pipeline = _Pipeline(network, targets, options, control_config, emit, on_endpoint,
                         on_control)
    complete = True
    try:
        await pipeline.run()
    except asyncio.CancelledError:
        complete = False
        pipeline.conclude_interrupted()
    return pipeline.outcome(report_id or new_report_id(options.started_at), complete,
                            time.monotonic() - started)


async def run(
    network: Network,
    targets: Targets,
    options: RunOptions,
    control_config: ControlConfig,
    on_endpoint: Callable[[EndpointObservation], None] | None = None,
    report_id: str | None = None,
) -> RunOutcome:
    """:func:`stream`, keeping everything: observations, control, each service's result
    (for replays, tests and small runs; ``probe run`` streams)."""
    results: list[ServiceResult] = []
    control = ControlOutcome()
    outcome = await stream(network, targets, options, control_config, results.append,
                           on_endpoint, report_id, on_control=control.merge)
    by_id = {o.endpoint_id: o for r in results for o in r.observations}
    outcome.observations = {e.id: by_id[e.id] for e in targets.endpoints() if e.id in by_id}
    control.problems = list(outcome.control.problems)  # with the run's own (Ctrl-C)
    outcome.control = control
    order = {s.id: n for n, s in enumerate(targets.services)}
    outcome.results = sorted(results, key=lambda r: order[r.service])
    return outcome


def platform_annotations() -> dict[str, str]:
    return {
        "engine_name": "probe",
        "engine_version": __version__,
        "platform": platform.system().lower() or "unknown",
    }
