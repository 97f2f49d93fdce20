"""The one scheduler (probe/scheduler.py), through both of its users: the control
helper's ``run_endpoints`` and the probe's streamed session. Real servers on
loopback: transfers run after every other step and one at a time, an endpoint
whose measurement fails by a bug or is cut by Ctrl-C comes back as an
``interrupted`` placeholder, and the other endpoints are kept."""

from __future__ import annotations

import asyncio

import pytest
from servers import start_http, start_tcp

from probe import session
from probe.bogons import parse_networks
from probe.lab.servers.http import HttpSite
from probe.net.live import LiveNetwork
from probe.runner import RunOptions, run_endpoints
from probe.targets import parse_targets

OPTIONS = RunOptions(timeout=5, routable=parse_networks(["127.0.0.0/8"]), rate=None,
                     use_system_resolver=False, download_bytes=256 << 10)


class TimingNetwork:
    """The live network, noting when each connect and HTTP request starts and ends."""

    def __init__(self) -> None:
        self.inner = LiveNetwork()
        self.events: list[tuple[str, str, int]] = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    async def tcp_connect(self, address, port, timeout):
        self.events.append(("start", "connect", port))
        try:
            return await self.inner.tcp_connect(address, port, timeout)
        finally:
            self.events.append(("end", "connect", port))

    async def http_request(self, request, timeout):
        kind = "transfer" if request.measure_throughput else "http"
        port = int(request.url.rsplit(":", 1)[1].split("/", 1)[0])
        self.events.append(("start", kind, port))
        try:
            return await self.inner.http_request(request, timeout)
        finally:
            self.events.append(("end", kind, port))


def transfer_targets(http_ports: list[int], echo_port: int) -> str:
    lines = ["version: 1", "services:", "  - id: files", "    endpoints:"]
    for number, port in enumerate(http_ports):
        lines.append(f"      - {{id: dl{number}, host: 127.0.0.1, port: {port}, "
                     "checks: [tcp, http, download], path: /download}")
    lines += ["  - id: chat", "    endpoints:"]
    for number in range(4):
        lines.append(f"      - {{id: c{number}, host: 127.0.0.1, port: {echo_port}, "
                     "checks: [tcp]}")
    return "\n".join(lines) + "\n"


async def _measure_with_helper_path(network, targets, reported):
    return await run_endpoints(network, targets.endpoints(), OPTIONS, on_result=reported.append)


async def _measure_with_session(network, targets, reported):
    outcome = await session.run(network, targets, OPTIONS, session.ControlConfig(),
                                on_endpoint=reported.append)
    return outcome.observations


@pytest.mark.parametrize("measure", [_measure_with_helper_path, _measure_with_session],
                         ids=["run_endpoints", "session"])
def test_transfers_run_last_and_one_at_a_time(measure):
    site = HttpSite(download_size=256 << 10)
    with start_http(site) as first, start_http(site) as second, start_tcp("echo") as echo:
        ports = [first.port, second.port]
        targets = parse_targets(transfer_targets(ports, echo.port))
        network = TimingNetwork()
        reported: list = []

        async def go():
            try:
                return await measure(network, targets, reported)
            finally:
                await network.aclose()

        observations = asyncio.run(go())
    events = network.events
    transfers = [i for i, e in enumerate(events) if e[1] == "transfer"]
    others = [i for i, e in enumerate(events) if e[1] != "transfer"]
    assert len(transfers) == 4, events  # a start and an end for each download endpoint
    assert max(others) < min(transfers), events  # every other step first
    kinds = [events[i][0] for i in transfers]
    assert kinds == ["start", "end", "start", "end"], events  # never two at once
    for number, port in enumerate(ports):
        http = observations[f"dl{number}"].ports[0].http
        assert [h.throughput_bps is not None for h in http] == [False, True]
        assert port in {events[i][2] for i in transfers}
    # each endpoint reported once; a download endpoint only after its transfer
    assert sorted(o.endpoint_id for o in reported) == sorted(observations)
    for observation in reported:
        if observation.endpoint_id.startswith("dl"):
            assert observation.ports[0].http[-1].throughput_bps is not None


class BuggyNetwork:
    """The live network with a bug in one connect (as a broken step would raise)."""

    def __init__(self, broken_port: int) -> None:
        self.inner = LiveNetwork()
        self.broken_port = broken_port

    def __getattr__(self, name):
        return getattr(self.inner, name)

    async def tcp_connect(self, address, port, timeout):
        if port == self.broken_port:
            raise RuntimeError("a bug in this step")
        return await self.inner.tcp_connect(address, port, timeout)


def test_a_bug_in_one_measurement_keeps_the_others():
    with start_tcp("echo") as echo, start_tcp("echo") as broken:
        targets = parse_targets(
            "version: 1\nservices:\n  - id: s\n    endpoints:\n"
            f"      - {{id: good, host: 127.0.0.1, port: {echo.port}, checks: [tcp]}}\n"
            f"      - {{id: bad, host: 127.0.0.1, port: {broken.port}, checks: [tcp]}}\n"
        )
        network = BuggyNetwork(broken.port)

        async def go():
            try:
                return await run_endpoints(network, targets.endpoints(), OPTIONS)
            finally:
                await network.aclose()

        observations = asyncio.run(go())
    assert observations["good"].ports[0].connect.failure is None
    assert observations["bad"].interrupted and observations["bad"].ports == ()


def test_cancelled_run_keeps_what_was_measured_and_marks_the_rest():
    with start_tcp("echo") as echo, start_tcp("silent") as silent:
        # a TLS handshake to a server that never answers waits for its whole timeout
        targets = parse_targets(
            "version: 1\nservices:\n  - id: s\n    endpoints:\n"
            f"      - {{id: quick, host: 127.0.0.1, port: {echo.port}, checks: [tcp]}}\n"
            f"      - {{id: stuck, host: 127.0.0.1, port: {silent.port}, checks: [tcp, tls], "
            "sni: stuck.example}\n"
        )
        options = RunOptions(timeout=30, routable=OPTIONS.routable, rate=None,
                             use_system_resolver=False)
        results: dict = {}

        async def go():
            network = LiveNetwork()
            measured = asyncio.Event()
            task = asyncio.create_task(run_endpoints(
                network, targets.endpoints(), options, results=results,
                on_result=lambda observation: measured.set(),
            ))
            try:
                async with asyncio.timeout(10):
                    await measured.wait()
                await asyncio.sleep(0.2)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            finally:
                await network.aclose()

        asyncio.run(go())
    assert results["quick"].ports[0].connect.failure is None and not results["quick"].interrupted
    assert results["stuck"].interrupted
