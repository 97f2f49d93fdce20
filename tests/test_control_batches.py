"""A run larger than one control request is asked in batches, and every endpoint
gets its control observation (a helper takes at most 2,000 endpoints a request)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time

from servers import start_tcp

from probe import session
from probe.bogons import parse_networks
from probe.control.auth import Access
from probe.control.server import ControlHelper, serve
from probe.net.live import LiveNetwork
from probe.runner import RunOptions, run_endpoints
from probe.targets import parse_targets

TARGETS = """\
version: 1
services:
  - id: svc
    endpoints:
{endpoints}
"""


def test_control_is_asked_in_batches_and_covers_every_endpoint():
    with start_tcp("echo") as server:
        lines = "\n".join(
            f"      - {{id: e{i}, host: 127.0.0.1, port: {server.port}, checks: [tcp]}}"
            for i in range(5)
        )
        targets = parse_targets(TARGETS.format(endpoints=lines))
        routable = parse_networks(["127.0.0.0/8"])
        options = RunOptions(timeout=2, routable=routable, rate=None, use_system_resolver=False)

        async def go():
            helper = ControlHelper(None, routable=routable, access=Access.anyone(),
                                   targets=targets.endpoints())
            stop = asyncio.Event()
            ready = asyncio.get_running_loop().create_future()
            server_task = asyncio.create_task(
                serve(helper, "127.0.0.1", 0, ready=ready.set_result, stop=stop))
            url = "http://" + (await ready).rsplit(" ", 1)[1]
            try:
                network = LiveNetwork()
                observations = await run_endpoints(network, targets.endpoints(), options)
                config = session.ControlConfig(urls=(url,), timeout=20)
                # 5 endpoints, 2 a batch: 3 requests
                return await session.ask_control(network, targets, observations, config, 2,
                                                 batch_size=2)
            finally:
                stop.set()
                await server_task

        outcome = asyncio.run(go())
    assert outcome.problems == []
    assert sorted(outcome.observations) == [f"e{i}" for i in range(5)]
    assert all(o.ports[0].connect.failure is None for o in outcome.observations.values())


class _CountingNetwork(LiveNetwork):
    """The live network, counting the calls made to control helpers."""

    def __init__(self) -> None:
        super().__init__()
        self.control_calls: list[str] = []

    async def control_call(self, request, timeout):
        self.control_calls.append(request.url)
        return await super().control_call(request, timeout)


@contextlib.contextmanager
def _silent_helper():
    """A helper address that never completes a connect: a listener whose accept
    queue is full, so the kernel drops further SYNs (as a censor dropping it would)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port), timeout=2)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        filler.close()
        listener.close()


def _unreachable_run(reference_flow: bool):
    with start_tcp("echo") as server, _silent_helper() as url:
        lines = "\n".join(
            f"      - {{id: e{i}, host: 127.0.0.1, port: {server.port}, checks: [tcp]}}"
            for i in range(5)
        )
        targets = parse_targets(TARGETS.format(endpoints=lines))
        options = RunOptions(timeout=0.5, routable=parse_networks(["127.0.0.0/8"]), rate=None,
                             use_system_resolver=False)
        config = session.ControlConfig(urls=(url,), timeout=30, reference_flow=reference_flow)
        network = _CountingNetwork()
        started = time.monotonic()
        # 5 endpoints, 2 a batch: 3 batches, each would wait for the helper
        outcome = asyncio.run(session.run(network, targets, options, config, batch_size=2))
        return outcome, network.control_calls, time.monotonic() - started, url


def test_an_unreachable_helper_costs_one_connect_timeout_not_the_control_timeout():
    outcome, calls, wall, url = _unreachable_run(reference_flow=False)
    # the first batch's request gives up after one step timeout (0.5 s), not the
    # 30 s answer deadline; the two later batches do not ask the helper again
    assert calls == [url + "/measure"]
    assert wall < 2 * 0.5 + 1
    assert not outcome.control.available
    assert outcome.control.problems == [f"{url}: generic_timeout_error"]
    assert {r.service for r in outcome.results} == {"svc"}
    assert all(v.verdict == "ok" for vs in outcome.verdicts.values() for v in vs)


def test_a_helper_unreachable_for_its_udp_echo_is_not_asked_for_the_control():
    outcome, calls, wall, url = _unreachable_run(reference_flow=True)
    assert calls == [url + "/info"]  # known unreachable before measuring
    assert wall < 2 * 0.5 + 1
    assert outcome.control.problems == [f"{url}: generic_timeout_error"]
