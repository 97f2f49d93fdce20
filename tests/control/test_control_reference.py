"""The helper advertises its UDP echo, and the probe turns it into a baseline flow.

A real helper served with ``--udp-echo`` on loopback says which ports it echoes
on (``GET``/``POST /info``); ``reference_endpoints`` asks through the live
network seam and returns the baseline endpoint. A missing, refusing, silent or
hostile helper gives no endpoint, within the timeout, and never an exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import aiohttp
import pytest
from hostile.servers import StreamPeer, hold, serve
from servers import refused_port

from probe.bogons import parse_networks
from probe.control.auth import Access
from probe.control.reference import ENDPOINT_ID, endpoints_from_info, reference_endpoints
from probe.control.server import ControlHelper
from probe.control.server import serve as serve_helper
from probe.net.live import LiveNetwork
from probe.runner import RunOptions, run_endpoints

LOOPBACK = "127.0.0.1"


@contextlib.asynccontextmanager
async def helper_at(host: str = LOOPBACK, echo_ports: tuple[int, ...] = (0, 0)):
    """A helper on ``host`` with a UDP echo on ``echo_ports`` (0: any free port)."""
    helper = ControlHelper(None, udp_echo_ports=echo_ports, access=Access.anyone())
    stop = asyncio.Event()
    ready = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve_helper(helper, host, 0, ready=ready.set_result, stop=stop))
    message = await asyncio.wait_for(ready, 5)
    port = message.split(",")[0].rsplit(":", 1)[1]
    shown = f"[{host}]" if ":" in host else host
    try:
        yield f"http://{shown}:{port}", helper
    finally:
        stop.set()
        await task


def test_the_helper_advertises_its_echo_ports():
    async def go():
        async with helper_at() as (url, helper), aiohttp.ClientSession() as session:
            async with session.get(url + "/info") as response:
                return helper.echo.ports, response.status, await response.json()

    ports, status, info = asyncio.run(go())
    assert status == 200 and len(ports) == 2
    assert info["udp_echo"] == list(ports)
    assert info["udp_echo_limits"] == {"burst": 200, "per_second": 20.0, "max_bytes": 1472}


@pytest.mark.parametrize("host", [LOOPBACK, "::1"])
def test_reference_endpoints_come_from_the_helpers_echo(host):
    async def go():
        async with helper_at(host) as (url, helper):
            endpoints = await reference_endpoints(LiveNetwork(), [url], 2.0)
            return helper.echo.ports, endpoints

    ports, (endpoint,) = asyncio.run(go())
    assert endpoint.id == ENDPOINT_ID and endpoint.service == "baseline"
    assert endpoint.host == host and endpoint.ports == ports
    assert endpoint.checks == ("udp",) and endpoint.payload == "echo"
    assert endpoint.function is None
    # both flows fit in half the burst the echo grants one source
    assert endpoint.datagrams * len(ports) <= 100


def test_the_first_helper_that_answers_is_used():
    async def go():
        with refused_port() as closed:
            async with helper_at() as (url, helper):
                endpoints = await reference_endpoints(
                    LiveNetwork(), [f"http://{LOOPBACK}:{closed}", url], 2.0)
                return helper.echo.ports, endpoints

    ports, (endpoint,) = asyncio.run(go())
    assert endpoint.ports == ports


def test_a_helper_without_an_echo_gives_no_reference():
    async def go():
        async with helper_at(echo_ports=()) as (url, helper):
            assert helper.echo is None
            return await reference_endpoints(LiveNetwork(), [url], 2.0)

    assert asyncio.run(go()) == ()
    assert asyncio.run(reference_endpoints(LiveNetwork(), [], 2.0)) == ()


def _answer(body: bytes):
    async def handler(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        await writer.drain()
        await hold(reader, writer)

    return handler


HOSTILE = {
    "silent": hold,
    "garbage": _answer(b"\x00\xff not json"),
    "array": _answer(b"[3478]"),
    "too-many-ports": _answer(json.dumps({"udp_echo": list(range(1000, 1100))}).encode()),
    "port-out-of-range": _answer(b'{"udp_echo": [70000]}'),
    "port-bool": _answer(b'{"udp_echo": [true]}'),
    "huge": _answer(b'{"udp_echo": [3478], "x": "' + b"a" * (1 << 20) + b'"}'),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_or_silent_helper_gives_no_reference_in_time(case):
    timeout = 1.0
    with serve(lambda: StreamPeer(HOSTILE[case])) as peer:
        start = time.monotonic()
        endpoints = asyncio.run(reference_endpoints(
            LiveNetwork(), [f"http://{LOOPBACK}:{peer.port}"], timeout))
        elapsed = time.monotonic() - start
    assert endpoints == ()
    assert elapsed < timeout + 1


def test_flows_are_sized_to_the_echos_burst():
    info = {"udp_echo": [3478, 443, 596, 597, 598, 599, 1400, 5000],
            "udp_echo_limits": {"burst": 200}}
    (endpoint,) = endpoints_from_info("http://helper.example.org:8780", info)
    assert endpoint.host == "helper.example.org" and endpoint.datagrams == 12
    assert endpoints_from_info("http://helper.example.org", {"udp_echo": [3478]})[0].datagrams \
        == 50


@pytest.mark.skipif(not hasattr(LiveNetwork, "udp_exchange"),
                    reason="the live network cannot run UDP flows yet")
def test_the_reference_flow_is_answered_in_full_by_the_echo():
    """The probe's own reference flows, run by the runner, are never cut by the
    echo's rate limit (a cut would read as the network cutting UDP)."""
    async def go():
        async with helper_at(echo_ports=(0, 0, 0)) as (url, _):
            network = LiveNetwork()
            endpoints = await reference_endpoints(network, [url], 2.0)
            options = RunOptions(timeout=5, routable=parse_networks(["127.0.0.0/8"]),
                                 use_system_resolver=False, rate=None)
            observations = await run_endpoints(network, endpoints, options)
            await network.aclose()
            return observations[ENDPOINT_ID]

    observation = asyncio.run(go())
    assert len(observation.ports) == 3
    for port in observation.ports:
        (flow,) = port.udp
        assert flow.failure is None and len(flow.answered) == len(flow.result.request.datagrams)
