"""The runner's UDP checks over the live network on loopback: an endpoint of
stun/turn/udp/quic checks yields one PortObservation per address and UDP port
with its UdpChecks, QUIC result and chain verification; a blackholed port costs
about one step timeout for all four checks together.
"""

from __future__ import annotations

import asyncio
import time

from servers import LOOPBACK, TEST_LIMITS, running
from udp_ports import silent_udp_port

from probe.lab.servers.quic import QuicHttpServer
from probe.lab.servers.stun import StunServer
from probe.net import failures as F
from probe.net.live import LiveNetwork
from probe.runner import Measurer, RunOptions
from probe.targets import Endpoint


def endpoint(port: int, checks: tuple[str, ...], **fields) -> Endpoint:
    return Endpoint(f"ep-{port}", "svc", LOOPBACK, (port,), checks, fields.pop("sni", None),
                    fields.pop("ca_pem", None), **fields)


def measure(ep: Endpoint, **options):
    measurer = Measurer(LiveNetwork(), RunOptions(rate=None, **options))
    return asyncio.run(measurer.measure(ep))


def test_stun_turn_and_a_cut_flow() -> None:
    with running(lambda: StunServer([(LOOPBACK, 0)], answer_first=8,
                                    limits=TEST_LIMITS)) as server:
        ep = endpoint(server.port, ("stun", "turn", "udp"), function="calls", payload="echo",
                      datagrams=20, interval=0.02)
        observation = measure(ep, timeout=1.5)
    (port,) = observation.ports
    assert port.connect is None and port.tls is None and port.quic is None
    stun_check, turn_check, flow = port.udp
    assert (stun_check.check, turn_check.check, flow.check) == ("stun", "turn", "udp")
    # each check has its own socket (5-tuple): the cut counts the flow's datagrams only
    assert stun_check.failure is None and stun_check.mapped_address.startswith(LOOPBACK)
    assert turn_check.failure is None
    assert flow.failure == F.UDP_FLOW_CUTOFF and flow.last_answered == 7


def test_quic_check_verifies_the_chain(lab_pki) -> None:
    trust = lab_pki.lab_root.cert.read_text()
    with running(lambda: QuicHttpServer([(LOOPBACK, 0)], lab_pki.censor["www.example.org"],
                                        limits=TEST_LIMITS)) as server:
        ep = endpoint(server.port, ("quic",), sni="www.example.org")
        observation = measure(ep, timeout=2.0, trust_pem=trust)
    (port,) = observation.ports
    assert port.quic.failure is None and port.quic.status == 200
    assert port.quic.request.url == f"https://127.0.0.1:{server.port}/"
    assert port.quic_verification == F.SSL_UNKNOWN_AUTHORITY


def test_blackholed_udp_costs_one_step_timeout() -> None:
    with silent_udp_port() as port:
        ep = endpoint(port, ("stun", "turn", "udp", "quic"), sni="www.example.org",
                      datagrams=10, interval=0.05)
        started = time.monotonic()
        observation = measure(ep, timeout=1.0)
        elapsed = time.monotonic() - started
    (observed,) = observation.ports
    assert [c.failure for c in observed.udp] == [F.GENERIC_TIMEOUT] * 3
    assert observed.quic.failure == F.GENERIC_TIMEOUT and observed.quic_verification is None
    assert elapsed < 2.0
