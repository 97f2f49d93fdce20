"""One run of the probe, end to end: measure, ask the control, analyse, hand on.

Data flows one way: targets -> runner (through the network seam) ->
observations -> control -> analysis -> one :class:`ServiceResult` per service.
A run is a pipeline over batches of whole services (at most ``batch_size``
endpoints each, ``CONTROL_BATCH`` by default, in the targets file's order):
while the next batch is being measured, the previous one is compared with the
control, analysed, handed to ``emit`` and forgotten, so a run's memory does not
grow with its number of endpoints. Batches are fixed by the targets file, never
by timing, so a replay draws the same conclusions as the live run.

Services with a throughput transfer are the exception: transfers run one at a
time after every other step (a transfer saturates a slow link and would make
other endpoints time out), so those services are held and analysed last.

The order of measurements (concurrently, transfers last and one at a time,
placeholders for what was interrupted) is ``probe.scheduler``'s, the same the
control helper uses. Every network operation goes through the ``Network`` this
module is given (live, recording or replaying); it writes no file itself.
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
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from probe import __version__, analysis
from probe.control import auth, oohelper, protocol, reference
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
from probe.scheduler import CONTROL_BATCH, Scheduler, plan_batches, transfers
from probe.targets import Endpoint, Service, Targets
from probe.vocabulary import ServiceStatus

log = logging.getLogger("probe.session")

NETWORK_DOWN = "Your network seems down: nothing, not even the baseline, answered."
INTERRUPTED = "run interrupted before the control was asked"
# A helper measures one request at a time per client, and a client includes its
# network: volunteers behind one carrier-grade NAT share an IPv4 address, so a
# "one at a time" 429 is waited out (as the helper's Retry-After says, when short)
# a few times before the batch goes without control.
CONTROL_RETRIES = 3
CONTROL_RETRY_WAIT = 5.0  # longest Retry-After waited for, in seconds


@dataclass(frozen=True)
class ControlConfig:
    urls: tuple[str, ...] = ()
    file: Path | None = None
    timeout: float = 60.0
    reference_flow: bool = True  # ask the helpers for their UDP echo (``with_reference``)
    # what the probe may say of its credentials in a refusal's message (public: the
    # credentials themselves live in the live network, never in a config or trace)
    enrolment: auth.Enrolment | None = None
    # "probe" (our helper, signed answers) or "oohelperd" (an OONI web_connectivity
    # test helper: DNS, TCP, TLS and HTTP status only, unsigned)
    protocol: str = "probe"


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
    protocol: str = "probe"  # which protocol the source speaks (ControlConfig.protocol)

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
            self.source, self.protocol = other.source, other.protocol
        if self.entries is None:
            self.entries = {}
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
    # what was measured: the targets plus the run's reference endpoints (the control
    # helper's UDP echo); None: the targets as given
    targets: Targets | None = None
    # by service id: each service's per-function status, as its ServiceResult has it
    functions: dict[str, tuple[FunctionVerdict, ...]] = field(default_factory=dict)


def new_report_id(started_at: datetime.datetime) -> str:
    return f"{started_at:%Y%m%dT%H%M%SZ}_probe_{uuid.uuid4().hex[:12]}"


def _transfers(service: Service) -> bool:
    return any(transfers(e) for e in service.endpoints)


def control_summary(control: ControlOutcome, endpoint_ids: Sequence[str]) -> dict[str, Any] | None:
    """What the report says about the control for one service (None: no control)."""
    if not control.available:
        return None
    ids = sorted(set(endpoint_ids) & set(control.observations or {}))
    entries = control.entries or {}
    attested = [entries[i] for i in ids if i in entries and "signature" in entries[i]]
    summary: dict[str, Any] = {"source": control.source, "endpoints": ids}
    if control.protocol == oohelper.PROTOCOL:
        summary["protocol"], summary["helper"] = oohelper.PROTOCOL, oohelper.SOURCE_NOTE
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
    unreachable: dict[str, str] | None = None,
) -> ControlOutcome:
    """Ask every helper about one batch, in parallel; the first good answer wins.

    Connecting to a helper gets one ``step_timeout``, answering gets ``config.timeout``.
    ``unreachable`` (by URL, the problem seen) is the run's memory of the helpers
    that could not be connected to: they are not asked again, and those that fail
    to connect now are added to it."""
    outcome = ControlOutcome()
    if not config.urls:
        outcome.problems.append("no control helper configured (--control URL)")
        return outcome
    if not items:
        outcome.problems.append("nothing was measured")
        return outcome
    if config.protocol == oohelper.PROTOCOL:
        return await _ask_oohelpers(network, items, config, step_timeout,
                                    {} if unreachable is None else unreachable)
    # a batch whose UDP flows cost more datagrams than one request may is asked in
    # parts (the helper refuses a costlier request rather than flood anyone), one
    # after the other: a helper measures one request per client at a time
    parts = protocol.split_by_cost(list(items))
    unreachable = {} if unreachable is None else unreachable
    if len(parts) == 1:
        return await _ask_helpers(network, parts[0], config, step_timeout, trust_pem,
                                  unreachable)
    for part in parts:
        outcome.merge(await _ask_helpers(network, part, config, step_timeout, trust_pem,
                                         unreachable))
    return outcome


async def _ask_helpers(
    network: Network,
    items: Sequence[protocol.ControlEndpoint],
    config: ControlConfig,
    step_timeout: float,
    trust_pem: str | None,
    unreachable: dict[str, str],
) -> ControlOutcome:
    """One request to every helper, in parallel; the first good answer wins."""
    outcome = ControlOutcome()
    body = protocol.build_request(list(items), step_timeout, trust_pem)

    async def one(url: str):
        if url in unreachable:  # it did not take our connection earlier in this run
            raise RuntimeError(unreachable[url])
        target = url.rstrip("/") + "/measure"
        # an answer is a few KiB per endpoint: a helper sending far more is hostile
        # (parsing 30 MiB of nested lists can take more than 600 MiB of memory)
        cap = min(32 << 20, (256 << 10) * max(1, len(items)))
        request = ControlRequest(target, body, max_bytes=cap, connect_timeout=step_timeout)
        for attempt in range(CONTROL_RETRIES + 1):
            result = await network.control_call(request, config.timeout)
            wait = _retry_after(result.body) if result.status == 429 else None
            if wait is None or wait > CONTROL_RETRY_WAIT or attempt == CONTROL_RETRIES:
                break
            await asyncio.sleep(wait)
        if result.status in (401, 403):
            reason = (result.body or {}).get("reason")
            raise RuntimeError(f"{url}: {auth.refusal_message(reason, config.enrolment)}")
        if result.status == 429:
            raise RuntimeError(f"{url}: the control helper's budget for this probe is "
                               "spent for now: run again later")
        if result.failure is not None or result.body is None:
            problem = f"{url}: {result.failure or 'empty answer'}"
            if not result.connected:
                unreachable[url] = problem
            raise RuntimeError(problem)
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
            outcome.problems.extend(_refusals(url, parsed.refused))
            return outcome
    finally:
        for task in tasks:
            task.cancel()
    return outcome


async def _ask_oohelpers(
    network: Network, items: Sequence[protocol.ControlEndpoint], config: ControlConfig,
    step_timeout: float, unreachable: dict[str, str],
) -> ControlOutcome:
    """The same batch asked of OONI test helpers, in parallel; the first good answer
    wins. Endpoints the protocol cannot cover are refused, as our helper refuses
    endpoints out of its scope."""
    outcome = ControlOutcome(protocol=oohelper.PROTOCOL)

    async def one(url: str):
        if url in unreachable:  # it did not take our connections earlier in this run
            raise RuntimeError(unreachable[url])
        try:
            return url, await oohelper.ask(network, url, items, config.timeout, step_timeout)
        except oohelper.HelperUnreachable as exc:
            unreachable[url] = str(exc)
            raise

    tasks = [asyncio.ensure_future(one(url)) for url in config.urls]
    try:
        for next_done in asyncio.as_completed(tasks):
            try:
                url, answers = await next_done
            except RuntimeError as exc:
                outcome.problems.append(str(exc)[:300])
                continue
            outcome.observations, outcome.entries, outcome.source = answers.observations, {}, url
            outcome.problems.extend(_refusals(url, answers.refused))
            outcome.problems.extend(_refusals(url, {
                k: f"the OONI test helper does not measure {v}" for k, v in answers.partial.items()
            }, what="no control for some steps of"))
            return outcome
    finally:
        for task in tasks:
            task.cancel()
    return outcome


def _refusals(url: str, refused: dict[str, str], what: str = "no control for") -> list[str]:
    """Why the helper measured no control for some endpoints, one line per reason
    (analysis then has no control for them, as for a helper that did not answer)."""
    by_reason: dict[str, list[str]] = {}
    for endpoint_id, reason in refused.items():
        by_reason.setdefault(reason, []).append(endpoint_id[:80])
    lines = []
    for reason, ids in by_reason.items():
        more = f" and {len(ids) - 5} more" if len(ids) > 5 else ""
        lines.append(f"{url}: {what} {', '.join(ids[:5])}{more}: {reason}"[:300])
    return lines


def _retry_after(body: dict[str, Any] | None) -> float | None:
    """The seconds a helper's 429 asks to wait (None: it did not say)."""
    wait = (body or {}).get("retry_after")
    if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not 0 <= wait < 3600:
        return None
    return float(wait)


async def ask_control(
    network: Network,
    targets: Targets,
    observations: dict[str, EndpointObservation],
    config: ControlConfig,
    step_timeout: float,
    trust_pem: str | None = None,
    batch_size: int = CONTROL_BATCH,
) -> ControlOutcome:
    """The control for a whole measured run, asked batch by batch."""
    recorded = _control_file(config)
    if recorded is not None:
        return recorded
    outcome = ControlOutcome()
    unreachable: dict[str, str] = {}
    for batch in plan_batches(targets.services, batch_size):
        items = _control_items(batch, observations)
        if items:
            outcome.merge(await ask_control_batch(network, items, config, step_timeout, trust_pem,
                                                  unreachable))
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


class _Batches:
    """The run's batches of whole services (fixed by the targets file) and how far
    each one has got: measured, then analysed and handed on."""

    def __init__(self, services: Sequence[Service], size: int) -> None:
        self.plan = plan_batches(services, size)
        self.number_of = {
            e.id: number
            for number, batch in enumerate(self.plan)
            for service in batch
            for e in service.endpoints
        }
        self._unmeasured = [sum(len(s.endpoints) for s in batch) for batch in self.plan]
        self.measured = [asyncio.Event() for _ in self.plan]
        self.analysed = [asyncio.Event() for _ in self.plan]

    def count_measured(self, endpoint_id: str) -> None:
        number = self.number_of[endpoint_id]
        self._unmeasured[number] -= 1
        if not self._unmeasured[number]:
            self.measured[number].set()


class _Baseline:
    """The volunteer's own baseline: measured first, as every batch's analysis needs it."""

    def __init__(self, services: Sequence[Service]) -> None:
        self.endpoints = tuple(e for s in services if s.baseline for e in s.endpoints)
        self.ids = frozenset(e.id for e in self.endpoints)
        self.observations: dict[str, EndpointObservation] = {}
        self._unmeasured = len(self.endpoints)
        self.measured = asyncio.Event()
        if not self.endpoints:
            self.measured.set()

    def add(self, endpoint_id: str, observation: EndpointObservation) -> None:
        if endpoint_id not in self.ids:
            return
        self.observations[endpoint_id] = observation
        self._unmeasured -= 1
        if not self._unmeasured:
            self.measured.set()

    def throughput_bps(self) -> float | None:
        """The best transfer rate of the baseline (0 is a measurement: the volunteer's
        own baseline froze; None is not)."""
        bps = [
            h.throughput_bps
            for o in self.observations.values()
            for p in o.ports
            for h in p.http
            if h.throughput_bps is not None
        ]
        return max(bps) if bps else None


class _RunEvidence:
    """Run-wide facts the analysis of each endpoint needs, gathered batch by batch."""

    def __init__(self, targets: Targets) -> None:
        self.probe_ipv6 = analysis.Ipv6Evidence()
        self.control_ipv6 = analysis.Ipv6Evidence()
        self.pinned = frozenset(e.id for e in targets.endpoints() if e.ca_pem)
        self.tls_checked = frozenset(
            e.id for e in targets.endpoints() if {"tls", "https", "quic"} & set(e.checks)
        )
        self.functions = {e.id: e.function for e in targets.endpoints()}
        # the network as a whole (UDP dropped everywhere, allowlist mode), service by service
        self.network = analysis.NetworkEvidence()
        self.baseline_control: dict[str, EndpointObservation] = {}


class _Conclusions:
    """What the run has concluded so far: the outcome's content."""

    def __init__(self) -> None:
        self.emitted: set[str] = set()
        self.verdicts: dict[str, list[Verdict]] = {}
        self.services: dict[str, ServiceVerdict] = {}
        self.functions: dict[str, tuple[FunctionVerdict, ...]] = {}
        self.control = ControlOutcome()  # the run-wide view: source, problems, address
        self.down: list[bool] = []


class _Pipeline:
    """One streamed run: the scheduler measures, batches are compared with the
    control and analysed as they complete, services are handed on."""

    def __init__(
        self,
        network: Network,
        targets: Targets,
        options: RunOptions,
        control_config: ControlConfig,
        emit: Callable[[ServiceResult], None],
        on_endpoint: Callable[[EndpointObservation], None] | None,
        on_control: Callable[[ControlOutcome], None] | None,
        batch_size: int,
        unreachable: dict[str, str] | None = None,
        reference: Callable[[], Awaitable[tuple[Endpoint, ...]]] | None = None,
    ) -> None:
        self.network, self.targets, self.options = network, targets, options
        self.control_config = control_config
        # helpers that did not take our connection: not waited for again this run
        self.unreachable = {} if unreachable is None else unreachable
        self.recorded_control = _control_file(control_config)
        self.emit, self.on_control = emit, on_control
        self.batch_size = batch_size
        self._plan(targets, {})
        self.held_control = ControlOutcome()
        # The reference endpoints (the helper's UDP echo) are asked for while the
        # targets are measured, not before: an unreachable helper then costs one
        # connect timeout in parallel with the run. Analysis, and batches after the
        # first, wait for the answer (the batches include the reference).
        self.reference = reference
        self.referenced = asyncio.Event()
        if reference is None:
            self.referenced.set()
        self.concluded = _Conclusions()
        # One task per endpoint in flight at most ``concurrency`` (each holds at least
        # one operation).
        self.scheduler = Scheduler(
            Measurer(network, options), window=options.concurrency, on_result=on_endpoint,
            on_measured=self._measured,
        )

    def _plan(self, targets: Targets, measured: dict[str, EndpointObservation]) -> None:
        """Batches, baseline and run-wide evidence of ``targets``, counting what
        is measured already (before analysis starts: nothing was handed on yet)."""
        self.targets = targets
        self.batches = _Batches(targets.services, self.batch_size)
        self.baseline = _Baseline(targets.services)
        self.held = [s for s in targets.services if _transfers(s)]  # analysed last
        self.held_ids = {s.id for s in self.held}
        self.evidence = _RunEvidence(targets)
        for endpoint_id, observation in measured.items():
            self.batches.count_measured(endpoint_id)
            self.baseline.add(endpoint_id, observation)

    @property
    def results(self) -> dict[str, EndpointObservation]:
        """Measured, not yet handed on."""
        return self.scheduler.results

    # measuring ------------------------------------------------------------ #

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._measure_all())
                group.create_task(self._analyse_all())
        except BaseExceptionGroup as failed:
            # one step failed (e.g. the report folder's disk is full): say which, as is
            raise failed.exceptions[0] from None

    async def _measure_all(self) -> None:
        # The baseline first: every batch's analysis needs it. A batch starts once
        # the one two places before it was handed on, so at most two batches of
        # observations are in memory.
        rest = [e for e in self.targets.endpoints() if e.id not in self.baseline.ids]
        targets = self.scheduler.measure_all((*self.baseline.endpoints, *rest), gate=self._turn)
        if self.reference is None:
            await targets
            return
        async with asyncio.TaskGroup() as group:
            group.create_task(targets)
            group.create_task(self._measure_reference(self.reference))

    async def _measure_reference(
        self, reference: Callable[[], Awaitable[tuple[Endpoint, ...]]]
    ) -> None:
        extended = self.targets.with_baseline(await reference())
        added = [e for e in extended.endpoints() if e.id not in self.batches.number_of]
        if added:
            self._plan(extended, self.results)
        self.referenced.set()
        await self.scheduler.measure_all(added)

    async def _turn(self, endpoint: Endpoint) -> None:
        if endpoint.id in self.baseline.ids:
            return
        if self.batches.number_of[endpoint.id] >= 1:
            # the reference may move a service to a later batch: know it first
            await self.referenced.wait()
        number = self.batches.number_of[endpoint.id]
        if number >= 2:
            await self.batches.analysed[number - 2].wait()

    def _measured(self, endpoint: Endpoint, observation: EndpointObservation) -> None:
        self.batches.count_measured(endpoint.id)
        self.baseline.add(endpoint.id, observation)

    async def _transfers(self) -> None:
        """Every throughput transfer, one at a time, after every other step."""
        held = [e for service in self.held for e in service.endpoints]
        await self.scheduler.transfer_all(held)
        for endpoint in held:
            if endpoint.id in self.baseline.ids and endpoint.id in self.results:
                self.baseline.observations[endpoint.id] = self.results[endpoint.id]

    # analysing ------------------------------------------------------------ #

    async def _analyse_all(self) -> None:
        await self.referenced.wait()
        await self.baseline.measured.wait()
        for number, batch in enumerate(self.batches.plan):
            await self.batches.measured[number].wait()
            observations = {e.id: self.results[e.id] for s in batch for e in s.endpoints}
            control = await self._ask(batch, observations)
            self.evidence.probe_ipv6.add(observations.values())
            if control.available:
                self.evidence.control_ipv6.add((control.observations or {}).values())
            down = self._network_down(observations.values(), control.available)
            for service in batch:
                if service.id in self.held_ids:
                    self.held_control.merge(_only(control, service))
                else:
                    self._conclude(service, control, down)
            self.batches.analysed[number].set()
        await self._transfers()
        down = self._network_down(self.results.values(), self.held_control.available)
        bps = self.baseline.throughput_bps()
        for service in self.held:
            self._conclude(service, self.held_control, down, bps)

    async def _ask(
        self, batch: Sequence[Service], observations: dict[str, EndpointObservation]
    ) -> ControlOutcome:
        if self.recorded_control is not None:
            control = self.recorded_control
        else:
            o = self.options
            control = await ask_control_batch(
                self.network, _control_items(batch, observations), self.control_config,
                o.timeout, o.trust_pem, self.unreachable,
            )
        self.concluded.control.merge(dataclasses.replace(
            control, observations=None if not control.available else {}, entries=None))
        for endpoint_id, theirs in (control.observations or {}).items():
            if endpoint_id in self.baseline.ids:
                self.evidence.baseline_control[endpoint_id] = theirs
        if self.on_control is not None:
            self.on_control(control)
        return control

    def _network_down(self, observations, control_available: bool) -> bool:
        down = analysis.network_down(
            list(self.baseline.observations.values()) or list(observations), control_available
        )
        self.concluded.down.append(down)
        return down

    def _conclude(
        self,
        service: Service,
        control: ControlOutcome,
        down: bool,
        baseline_bps: float | None = None,
    ) -> None:
        """Analyse one service, hand its result on and forget its observations."""
        observations = tuple(
            self.results.pop(e.id) for e in service.endpoints if e.id in self.results
        )
        self.evidence.network.add(observations, control.observations, baseline=service.baseline)
        context = analysis.Context(
            control=control.observations,
            probe_has_ipv6=self.evidence.probe_ipv6.has_ipv6,
            control_has_ipv6=self.evidence.control_ipv6.has_ipv6 if control.available else True,
            network_down=down,
            routable=self.options.routable,
            baseline_throughput_bps=baseline_bps,
            pinned=self.evidence.pinned,
            tls_checked=self.evidence.tls_checked,
            resolver_reachable=analysis.resolver_replied(self.baseline.observations.values()),
            udp_network=self.network_findings().udp,
        )
        rows: list[Verdict] = []
        for observation in observations:
            verdicts = analysis.endpoint_verdicts(observation, context)
            self.concluded.verdicts[observation.endpoint_id] = verdicts
            rows += verdicts
        summary = analysis.service_status(rows)
        explanation = summary.explanation
        if down and summary.status == ServiceStatus.INCONCLUSIVE:
            explanation = NETWORK_DOWN
        verdict = ServiceVerdict(service.id, summary.status, explanation)
        self.concluded.services[service.id] = verdict
        self.concluded.emitted.add(service.id)
        result = ServiceResult(
            service.id, observations, tuple(rows), verdict,
            control_summary(control, [e.id for e in service.endpoints]),
            () if control.available else tuple(control.problems), down,
            functions=analysis.function_statuses(rows, self.evidence.functions),
            network=self.network_findings(),
        )
        if result.functions:  # kept for the summary (the result itself is handed on)
            self.concluded.functions[service.id] = result.functions
        self.emit(result)

    def network_findings(self) -> NetworkFindings:
        """What the run has learned so far about the network as a whole: from the
        baseline (measured first), the reference flows to the control helper's echo,
        and every service concluded so far."""
        baseline = [o for i, o in self.baseline.observations.items()
                    if i != reference.ENDPOINT_ID]
        echo = self.baseline.observations.get(reference.ENDPOINT_ID)
        flows = () if echo is None else tuple(c for p in echo.ports for c in p.udp)
        return analysis.network_findings(
            baseline, self.evidence.baseline_control or None, flows, self.evidence.network)

    def conclude_interrupted(self) -> None:
        """After Ctrl-C: every service not yet handed on, with what was measured."""
        self.concluded.control.merge(ControlOutcome(problems=[INTERRUPTED]))
        for service in self.targets.services:
            if service.id in self.concluded.emitted:
                continue
            self.scheduler.fill_interrupted(service.endpoints)
            control = self.held_control if service.id in self.held_ids else ControlOutcome(
                problems=[INTERRUPTED])
            observations = [self.results[e.id] for e in service.endpoints]
            down = self._network_down(observations, control.available)
            self._conclude(service, control, down)

    def outcome(self, report_id: str, complete: bool, runtime: float) -> RunOutcome:
        order = [e.id for e in self.targets.endpoints()]
        o = self.options
        concluded = self.concluded
        return RunOutcome(
            started_at=o.started_at,
            report_id=report_id,
            observations={},
            verdicts={i: concluded.verdicts[i] for i in order if i in concluded.verdicts},
            services={s.id: concluded.services[s.id] for s in self.targets.services
                      if s.id in concluded.services},
            control=concluded.control,
            network_down=bool(concluded.down) and all(concluded.down),
            complete=complete,
            runtime=runtime,
            resolver=f"{o.resolver[0]}" if o.resolver else None,
            functions={s.id: concluded.functions[s.id] for s in self.targets.services
                       if s.id in concluded.functions},
            network=self.network_findings(),
            targets=self.targets,
        )


REFERENCE_TIMEOUT = 2.0  # asking a helper for its UDP echo: one round trip, never longer


async def with_reference(
    network: Network, targets: Targets, options: RunOptions, config: ControlConfig,
    unreachable: dict[str, str] | None = None,
) -> Targets:
    """The targets plus a reference UDP flow to the control helper's echo, when a
    helper offers one: it tells a network that drops every UDP flow (calls fail for
    every app) from one that drops a messenger's. Costs one round trip to the helper
    before measuring (at most ``REFERENCE_TIMEOUT``); never fails the run. A helper
    that cannot be connected to is added to ``unreachable``: the run's control
    requests then do not wait for it."""
    if (not config.urls or config.file is not None or not config.reference_flow
            or config.protocol != "probe"):  # OONI's helpers have no UDP echo
        return targets
    extra = await reference.reference_endpoints(
        network, config.urls, min(REFERENCE_TIMEOUT, options.timeout), unreachable)
    return targets.with_baseline(tuple(extra))


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
    batch_size: int = CONTROL_BATCH,
) -> RunOutcome:
    """Measure, compare and analyse batch by batch; each service's result goes to
    ``emit`` (exactly once, in an order set by the targets file) and is not kept.

    The outcome holds the verdicts and the control's run-wide view, not the
    observations. On cancellation (Ctrl-C) every service not yet handed on is
    analysed with what was measured, without control, and the outcome says
    ``complete=False``. ``batch_size`` bounds the endpoints of a batch (and of a
    control request).
    """
    started = time.monotonic()
    unreachable: dict[str, str] = {}

    async def reference_endpoints() -> tuple[Endpoint, ...]:
        extended = await with_reference(network, targets, options, control_config, unreachable)
        return tuple(e for s in extended.services if s.baseline for e in s.endpoints)

    pipeline = _Pipeline(network, targets, options, control_config, emit, on_endpoint,
                         on_control, batch_size, unreachable, reference_endpoints)
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
    batch_size: int = CONTROL_BATCH,
) -> RunOutcome:
    """:func:`stream`, keeping everything: observations, control, each service's result
    (for replays, tests and small runs; ``probe run`` streams)."""
    results: list[ServiceResult] = []
    control = ControlOutcome()
    outcome = await stream(network, targets, options, control_config, results.append,
                           on_endpoint, report_id, on_control=control.merge,
                           batch_size=batch_size)
    by_id = {o.endpoint_id: o for r in results for o in r.observations}
    measured = outcome.targets or targets
    outcome.observations = {e.id: by_id[e.id] for e in measured.endpoints() if e.id in by_id}
    control.problems = list(outcome.control.problems)  # with the run's own (Ctrl-C)
    outcome.control = control
    order = {s.id: n for n, s in enumerate(measured.services)}
    outcome.results = sorted(results, key=lambda r: order[r.service])
    return outcome


def platform_annotations() -> dict[str, str]:
    return {
        "engine_name": "probe",
        "engine_version": __version__,
        "platform": platform.system().lower() or "unknown",
    }
