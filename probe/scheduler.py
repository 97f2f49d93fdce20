"""The one scheduler of endpoint measurements, used by the probe's run and the control helper.

It holds the order in which endpoints are measured, not how: every endpoint is a
task that calls ``Measurer.measure`` (so every check, TCP or UDP, runs under the
same budget), throughput transfers run last and one at a time, and an endpoint
that could not finish (a bug in one measurement, or Ctrl-C) gets an
``interrupted`` placeholder instead of disappearing. It also cuts a run into
batches of whole services (:func:`plan_batches`), fixed by the targets file so that
a replay draws the same batches as the live run.

It refuses to analyse, to ask the control or to touch the network itself: those
are the session's, the analysis' and the network seam's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Protocol

from probe.observations import EndpointObservation, PortObservation
from probe.targets import Endpoint, Service
from probe.vocabulary import Check

log = logging.getLogger("probe.scheduler")

# Endpoints per batch: a smaller batch keeps a streamed run's memory flat. A batch
# is asked of the helper in as many requests as its caps need (split_by_cost:
# 200 endpoints, 2,000 connections, 400 HTTP requests, 10,000 datagrams each).
CONTROL_BATCH = 500

Gate = Callable[[Endpoint], Awaitable[None]]
Reporter = Callable[[EndpointObservation], None]


class Measurer(Protocol):
    """What the scheduler needs of ``probe.runner.Measurer`` (which imports this
    module for ``run_endpoints``, so this module names the shape, not the class)."""

    async def measure(
        self, endpoint: Endpoint, extra_addresses: Iterable[str] = ()
    ) -> EndpointObservation: ...

    async def download(self, endpoint: Endpoint, port: PortObservation) -> PortObservation: ...


def transfers(endpoint: Endpoint) -> bool:
    """Whether ``endpoint`` has a throughput transfer (measured last, one at a time)."""
    return Check.DOWNLOAD in endpoint.checks


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


def interrupted(endpoint: Endpoint) -> EndpointObservation:
    """The placeholder of an endpoint whose measurement did not finish."""
    return EndpointObservation(
        endpoint.id, endpoint.service, endpoint.host, None, (), (), (), (), interrupted=True
    )


class Scheduler:
    """Measures endpoints concurrently, then their transfers one at a time.

    ``results`` holds every observation measured and not yet taken by the caller
    (the session pops each service's once it is analysed). ``on_result`` sees each
    endpoint once, with its final observation: right after measuring, or after its
    transfer for an endpoint that has one. ``on_measured`` is the caller's own
    bookkeeping, called right after each measurement (transfer or not).
    """

    def __init__(
        self,
        measurer: Measurer,
        *,
        window: int | None = None,
        on_result: Reporter | None = None,
        on_measured: Callable[[Endpoint, EndpointObservation], None] | None = None,
        extra_addresses: Mapping[str, tuple[str, ...]] | None = None,
        results: dict[str, EndpointObservation] | None = None,
    ) -> None:
        self.measurer = measurer
        # endpoints in flight at once (None: all); each holds at least one operation
        self.window = window
        self.on_result = on_result
        self.on_measured = on_measured
        self.extra_addresses = extra_addresses or {}
        self.results: dict[str, EndpointObservation] = {} if results is None else results

    async def measure_all(self, endpoints: Iterable[Endpoint], gate: Gate | None = None) -> None:
        """Measure ``endpoints`` concurrently, started in the given order; ``gate``
        is awaited before each one starts (the session holds a batch back until
        the one two places before it was handed on)."""
        window = asyncio.Semaphore(self.window) if self.window is not None else None
        try:
            async with asyncio.TaskGroup() as group:
                for endpoint in endpoints:
                    if gate is not None:
                        await gate(endpoint)
                    if window is not None:
                        await window.acquire()
                    group.create_task(self._measure_one(endpoint, window))
        except BaseExceptionGroup as failed:
            # a caller's callback failed: say which, as is, not wrapped in a group
            raise failed.exceptions[0] from None

    async def _measure_one(self, endpoint: Endpoint, window: asyncio.Semaphore | None) -> None:
        try:
            observation = await self.measurer.measure(
                endpoint, self.extra_addresses.get(endpoint.id, ())
            )
        except Exception:  # a bug must not lose the other endpoints' measurements
            log.exception("measuring %s failed", endpoint.id)
            observation = interrupted(endpoint)
        finally:
            if window is not None:
                window.release()
        self.results[endpoint.id] = observation
        if self.on_result is not None and not transfers(endpoint):
            self.on_result(observation)  # the others are reported after their transfer
        if self.on_measured is not None:
            self.on_measured(endpoint, observation)

    async def transfer_all(self, endpoints: Iterable[Endpoint]) -> None:
        """Every throughput transfer of ``endpoints``, one at a time: a transfer
        saturates a slow link and would make other endpoints' steps time out (which
        would read as blocking). Run it after every other step."""
        for endpoint in endpoints:
            if not transfers(endpoint):
                continue
            observation = self.results.get(endpoint.id)
            if observation is not None and not observation.interrupted:
                ports = []
                for port in observation.ports:
                    ports.append(await self.measurer.download(endpoint, port))
                observation = dataclasses.replace(observation, ports=tuple(ports))
                self.results[endpoint.id] = observation
            if self.on_result is not None and observation is not None:
                self.on_result(observation)

    def fill_interrupted(self, endpoints: Iterable[Endpoint]) -> None:
        """A placeholder for every endpoint of ``endpoints`` without an observation."""
        for endpoint in endpoints:
            self.results.setdefault(endpoint.id, interrupted(endpoint))
