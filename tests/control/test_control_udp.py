"""The control protocol carries UDP endpoints, and the helper measures them as the probe does.

The request keeps every field the helper needs to run the very same flow
(function, payload, datagrams, interval), its UDP cost is counted for the worst
case, and a real helper on loopback runs a ``udp`` flow to a real UDP echo and
answers what came back.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from probe.bogons import parse_networks
from probe.control import protocol
from probe.control.auth import Access
from probe.control.server import ControlHelper, serve
from probe.control.udp_echo import UdpEcho
from probe.net.live import LiveNetwork
from probe.net.network import ControlRequest
from probe.targets import Endpoint

LOOPBACK = "127.0.0.1"


def udp_endpoint(host: str = "198.51.100.7", ports: tuple[int, ...] = (3478,),
                 checks: tuple[str, ...] = ("udp",), **more) -> Endpoint:
    return Endpoint(id="calls-relay", service="example", host=host, ports=ports, checks=checks,
                    sni=None, ca_pem=None, **more)


def test_a_udp_endpoint_round_trips_through_the_request():
    endpoint = udp_endpoint(ports=(596, 597, 1400), checks=("dns", "stun", "udp"),
                            function="calls", payload="echo", datagrams=80, interval=0.02,
                            path="/")
    quic = Endpoint(id="web-h3", service="example", host="example.org", ports=(443,),
                    checks=("quic",), sni="example.org", ca_pem=None, path="/index.html",
                    function="web")
    body = json.loads(json.dumps(protocol.build_request(
        [protocol.ControlEndpoint(endpoint, ()),
         protocol.ControlEndpoint(quic, ("198.51.100.8", "2001:db8::8"))], 5.0)))
    query = protocol.parse_request(body)
    assert [i.endpoint for i in query.items] == [endpoint, quic]
    assert query.items[1].addresses == ("198.51.100.8", "2001:db8::8")
    # 3 ports x (7 STUN transmissions + 80 datagrams), one address; QUIC on 6 addresses
    assert query.udp_datagrams == 3 * (7 + 80) + protocol.QUIC_DATAGRAMS * 6


def test_a_request_from_an_older_probe_keeps_the_defaults():
    body = {"version": 1, "timeout": 5, "endpoints": [
        {"id": "a", "service": "s", "host": "198.51.100.7", "ports": [443], "checks": ["tcp"]}]}
    (item,) = protocol.parse_request(body).items
    assert item.endpoint.function is None and item.endpoint.payload == "stun"
    assert protocol.parse_request(body).udp_datagrams == 0


def test_the_worst_case_counts_every_address_a_name_may_resolve_to():
    flow = udp_endpoint(ports=(3478,), datagrams=100)
    named = udp_endpoint(host="relay.example.org", ports=(3478,), datagrams=100)
    assert protocol.udp_datagrams(flow) == 100
    assert protocol.udp_datagrams(named) == 100 * protocol.ADDRESSES_PER_NAME
    many = [protocol.ControlEndpoint(named, ())] * 16  # 9,600 datagrams: under the cap
    assert protocol.parse_request(protocol.build_request(many, 5)).udp_datagrams == 9600
    with pytest.raises(protocol.RequestTooCostly, match="10200 datagrams"):
        protocol.parse_request(protocol.build_request(many + [many[0]], 5))


def test_a_batch_is_split_into_requests_the_helper_accepts():
    named = protocol.ControlEndpoint(
        udp_endpoint(host="relay.example.org", ports=(3478,), datagrams=100), ())
    tcp = protocol.ControlEndpoint(udp_endpoint(checks=("tcp",)), ())
    items = [tcp, *[named] * 40, tcp]
    requests = protocol.split_by_cost(items)
    assert [len(r) for r in requests] == [17, 16, 9]  # 16 x 600 datagrams fit in 10,000
    assert [i for r in requests for i in r] == items  # nothing lost, order kept
    for request in requests:
        protocol.parse_request(json.loads(json.dumps(protocol.build_request(request, 5))))


@pytest.mark.skipif(not hasattr(LiveNetwork, "udp_exchange"),
                    reason="the live network cannot run UDP flows yet")
def test_the_helper_runs_a_udp_flow_to_an_echo_and_answers_it():
    """A real helper measures a `udp` echo flow to a real echo: every datagram answered."""
    routable = parse_networks(["127.0.0.0/8"])

    async def go():
        echo = UdpEcho([0], LOOPBACK)
        await echo.start()
        endpoint = udp_endpoint(LOOPBACK, echo.ports, payload="echo", datagrams=10,
                                interval=0.02)
        helper = ControlHelper(None, routable=routable, access=Access.anyone(),
                               targets=[endpoint])
        stop = asyncio.Event()
        ready = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(serve(helper, LOOPBACK, 0, ready=ready.set_result, stop=stop))
        url = "http://" + (await ready).rsplit(" ", 1)[1]
        try:
            body = protocol.build_request([protocol.ControlEndpoint(endpoint, ())], 3.0)
            network = LiveNetwork()
            result = await network.control_call(ControlRequest(url + "/measure", body), 15)
            await network.aclose()
            return result
        finally:
            stop.set()
            await task
            await echo.stop()

    result = asyncio.run(go())
    assert result.failure is None, result
    (port,) = protocol.parse_response(result.body).observations["calls-relay"].ports
    (flow,) = port.udp
    assert flow.check == "udp" and flow.failure is None
    assert flow.answered == tuple(range(10))
