"""A run larger than one control request is asked in batches, and every endpoint
gets its control observation (a helper takes at most 2,000 endpoints a request)."""

from __future__ import annotations

import asyncio

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
