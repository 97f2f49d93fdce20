"""Connects start on the first DNS answer while the query listens for injected replies.

A resolver on loopback answers an A query over UDP twice, as an on-path injector
racing the real resolver does (the first reply wins the race, the second arrives
0.3 s later), and over TCP with a third address. The runner must start
connecting on the first answer, yet measure exactly the addresses chosen from
every reply, in their order, as if it had waited for the whole window.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct

import dns.message
import dns.rrset
from servers import LOOPBACK, refused_port

from probe.net.live import LiveNetwork
from probe.runner import Measurer, RunOptions, candidate_addresses
from probe.targets import Endpoint

NAME = "multi.example"
FIRST = ("127.0.0.2", "127.0.0.3")  # the injected reply: first
LATE = ("127.0.0.4", "127.0.0.5")  # the resolver's: 0.3 s later
OVER_TCP = ("127.0.0.9",)
LATE_DELAY = 0.3


def answer(wire: bytes, addresses: tuple[str, ...]) -> bytes:
    query = dns.message.from_wire(wire)
    response = dns.message.make_response(query)
    if query.question[0].rdtype == dns.rdatatype.A and addresses:
        response.answer.append(dns.rrset.from_text_list(f"{NAME}.", 60, "IN", "A",
                                                        list(addresses)))
    return response.to_wire()


class RacingResolver(asyncio.DatagramProtocol):
    def connection_made(self, transport) -> None:  # noqa: ANN001
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:  # noqa: ANN001
        self.transport.sendto(answer(data, FIRST), addr)
        asyncio.get_running_loop().call_later(
            LATE_DELAY, self.transport.sendto, answer(data, LATE), addr)


async def tcp_resolver(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        (size,) = struct.unpack("!H", await reader.readexactly(2))
        reply = answer(await reader.readexactly(size), OVER_TCP)
        writer.write(struct.pack("!H", len(reply)) + reply)
        await writer.drain()
    finally:
        writer.close()


async def measure(port: int, closed: int):
    loop = asyncio.get_running_loop()
    udp, _ = await loop.create_datagram_endpoint(RacingResolver, local_addr=(LOOPBACK, port))
    tcp = await asyncio.start_server(tcp_resolver, LOOPBACK, port)
    try:
        options = RunOptions(resolver=(LOOPBACK, port), use_system_resolver=False, timeout=2.0,
                             dns_linger=0.8, rate=None, max_addresses_per_family=3,
                             routable=(ipaddress.ip_network("127.0.0.0/8"),))
        endpoint = Endpoint("multi", "svc", NAME, (closed,), ("dns", "tcp"), None, None)
        observation = await Measurer(LiveNetwork(), options).measure(endpoint)
        return observation, options, endpoint
    finally:
        udp.close()
        tcp.close()
        await tcp.wait_closed()


def free_udp_and_tcp_port() -> int:
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind((LOOPBACK, 0))
            port = u.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind((LOOPBACK, port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no port free for both UDP and TCP on loopback")


def test_connects_start_on_the_first_answer_and_measure_what_every_reply_chose():
    with refused_port() as closed:
        observation, options, endpoint = asyncio.run(measure(free_udp_and_tcp_port(), closed))
    udp_a = next(d for d in observation.dns
                 if d.query.transport == "udp" and d.query.qtype == "A")
    first, late = udp_a.replies
    assert {a.value for a in first.answers} == set(FIRST)
    assert {a.value for a in late.answers} == set(LATE)
    # the choice of every reply, in arrival order (UDP first, then TCP), capped at 3:
    # the TCP answer was connected to early, then pushed out by the late UDP reply
    chosen = tuple(a.value for r in (first, late) for a in r.answers)[:3]
    assert observation.addresses == chosen and OVER_TCP[0] not in chosen
    assert candidate_addresses(endpoint, observation.dns, (), (), options)[0] == chosen
    assert [p.address for p in observation.ports] == list(chosen)
    assert all(p.connect.failure == "connection_refused" for p in observation.ports)
    started = {p.address: p.connect.timing.t0 for p in observation.ports}
    # connects to the first answer began before the listening window ended...
    for address in chosen[:2]:
        assert started[address] < late.t < udp_a.timing.t
    # ...and the address only the late reply brought was connected to after it came
    assert started[chosen[2]] >= late.t
