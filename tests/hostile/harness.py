"""What every hostile-peer test checks, in one place: time, memory and verdict.

``bounded`` runs one operation of the live network against a hostile peer and
measures how long it took and the peak of Python memory allocated meanwhile
(tracemalloc; the peer's own thread is counted too, so peers precompute what
they send). ``probe_and_control`` measures an endpoint twice through the
runner, once as the probe and once as a control that sees the very same
hostile peer, and returns analysis' verdicts: a hostile endpoint must come out
``down`` or ``inconclusive``, never blocked, since the control does not disagree.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from probe import analysis
from probe.net.live import LiveNetwork
from probe.observations import BLOCKED_VERDICTS, EndpointObservation, Verdict
from probe.runner import RunOptions, run_endpoints
from probe.targets import Endpoint

LOOPBACK_NET = (ipaddress.ip_network("127.0.0.0/8"),)
SLACK = 2.0  # seconds an operation may overrun its timeout (a loaded 2-core CI box)
MIB = 1 << 20


@dataclass(frozen=True)
class Bounded:
    value: Any
    elapsed: float  # seconds
    peak: int  # bytes of Python memory at the peak, tracemalloc


def bounded(operation: Callable[[LiveNetwork], Awaitable[Any]]) -> Bounded:
    """Run ``operation(LiveNetwork())`` in a fresh event loop, timed and traced."""
    tracemalloc.start()
    start = time.monotonic()
    try:
        value = asyncio.run(operation(LiveNetwork()))
        elapsed = time.monotonic() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return Bounded(value, elapsed, peak)


def check_bounds(outcome: Bounded, timeout: float, memory: int = 8 * MIB) -> None:
    assert outcome.elapsed < timeout + SLACK, f"took {outcome.elapsed:.1f}s (timeout {timeout}s)"
    assert outcome.peak < memory, f"peak {outcome.peak / MIB:.1f} MiB (bound {memory / MIB} MiB)"


def endpoint(
    host: str, port: int, checks: tuple[str, ...], sni: str | None = None, path: str = "/"
) -> Endpoint:
    return Endpoint(
        id="hostile", service="hostile", host=host, ports=(port,), checks=checks,
        sni=sni, ca_pem=None, path=path,
    )


def options(timeout: float = 1.0, resolver: tuple[str, int] | None = None, **more) -> RunOptions:
    """Run options for loopback: loopback is routable, no system resolver."""
    return RunOptions(
        resolver=resolver, use_system_resolver=False, timeout=timeout, dns_linger=0.2,
        routable=LOOPBACK_NET, **more,
    )


@dataclass(frozen=True)
class Judged:
    probe: EndpointObservation
    control: EndpointObservation
    verdicts: list[Verdict]
    elapsed: float


def probe_and_control(target: Endpoint, run_options: RunOptions) -> Judged:
    """Measure ``target`` as the probe and as the control, concurrently, and judge."""

    async def both() -> tuple[EndpointObservation, EndpointObservation]:
        probe, control = await asyncio.gather(
            run_endpoints(LiveNetwork(), [target], run_options),
            run_endpoints(LiveNetwork(), [target], run_options),
        )
        return probe[target.id], control[target.id]

    start = time.monotonic()
    probe, control = asyncio.run(both())
    elapsed = time.monotonic() - start
    context = analysis.Context(
        control={target.id: control},
        routable=run_options.routable,
        tls_checked=frozenset({target.id}) if {"tls", "https"} & set(target.checks)
        else frozenset(),
    )
    return Judged(probe, control, analysis.endpoint_verdicts(probe, context), elapsed)


def assert_never_blocked(judged: Judged) -> None:
    """The probe measured (no crash turned it into ``interrupted``) and no verdict
    says blocked: the control saw the same hostile peer."""
    assert not judged.probe.interrupted, "measuring crashed (see the log)"
    assert not judged.control.interrupted, "measuring crashed (see the log)"
    blocked = [v for v in judged.verdicts if v.verdict in BLOCKED_VERDICTS]
    assert not blocked, blocked
