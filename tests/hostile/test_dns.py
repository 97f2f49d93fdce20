"""Hostile DNS resolvers on loopback against the live network's DNS exchanges.

Each case is a real resolver that misbehaves (tests/hostile/servers.py); each
test checks the exchange ends within its timeout, with bounded memory and the
failure a stub resolver would report, and that a control seeing the same
resolver never turns it into a "blocked" verdict.
"""

from __future__ import annotations

import socket
import struct

import pytest

from probe.net import dns as live_dns
from probe.net import failures as F
from probe.net.network import DnsQuery

from .harness import (
    assert_never_blocked,
    bounded,
    check_bounds,
    endpoint,
    options,
    probe_and_control,
)
from .servers import (
    DatagramPeer,
    DnsPeer,
    compression_loop,
    dns_answer,
    hold,
    read_dns_query,
    serve,
)

LOOPBACK = "127.0.0.1"
NAME = "hostile.example"
TIMEOUT = 1.0


def exchange(port: int, transport: str = "udp", timeout: float = TIMEOUT, linger: float = 0.2):
    query = DnsQuery(LOOPBACK, port, NAME, "A", transport)
    return bounded(lambda net: net.dns_exchange(query, timeout, linger))


# --- the hostile resolvers ---------------------------------------------------- #


def udp_reply(make):
    """A UDP handler answering each query with ``make(query_wire)``."""
    return lambda data, addr, peer: peer.send(make(data), addr)


def tcp_reply(make, *, close: bool = False):
    """A TCP handler answering each query with ``make(query_wire)`` (raw bytes,
    length prefix included when ``make`` returns a tuple (prefix, body))."""

    async def handler(reader, writer):
        while True:
            query = await read_dns_query(reader)
            data = make(query)
            if not isinstance(data, tuple):
                data = (struct.pack("!H", len(data)), data)
            writer.write(b"".join(data))
            await writer.drain()
            if close:
                return

    return handler


def cut_off(wire: bytes) -> bytes:
    return wire[: len(wire) - 3]  # ends inside the last A record's address


def huge(query: bytes, count: int) -> bytes:
    return dns_answer(query, [f"127.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}"
                              for i in range(1, count + 1)])


async def _length_lie(reader, writer):
    query = await read_dns_query(reader)
    writer.write(struct.pack("!H", 65535) + dns_answer(query))
    await writer.drain()
    await hold(reader, writer)


def _other_class(query: bytes) -> bytes:
    """An A record in class HS inserted before the real (class IN) answer; the
    reply repeats the query's question, so the answers start at len(query)."""
    wire = dns_answer(query, ["127.0.0.7"])
    hesiod = b"\xc0\x0c" + struct.pack("!HHIH", 1, 4, 60, 4) + bytes([127, 6, 6, 6])
    (count,) = struct.unpack("!H", wire[6:8])
    return (wire[:6] + struct.pack("!H", count + 1) + wire[8:len(query)] + hesiod
            + wire[len(query):])


# --- truncation ----------------------------------------------------------------- #


def test_tc_bit_without_answers_is_a_truncated_reply_not_no_answer():
    """RFC 1035 4.1.1 / RFC 7766: a TC reply tells a stub to retry over TCP. It
    says nothing about whether the name has addresses, so "dns_no_answer" would
    be a false statement about the name."""
    with serve(lambda: DnsPeer(udp_reply(lambda q: dns_answer(q, (), truncated=True)))) as resolver:
        outcome = exchange(resolver.port)
    check_bounds(outcome, TIMEOUT)
    assert outcome.value.failure == F.DNS_TRUNCATED
    assert outcome.value.replies[0].answers == ()


def test_tc_bit_with_partial_answers_keeps_them():
    def partial(query: bytes) -> bytes:
        return dns_answer(query, ["127.0.0.9"], truncated=True)

    with serve(lambda: DnsPeer(udp_reply(partial))) as resolver:
        outcome = exchange(resolver.port)
    check_bounds(outcome, TIMEOUT)
    assert outcome.value.failure is None
    assert [a.value for a in outcome.value.replies[0].answers] == ["127.0.0.9"]


def test_cut_off_udp_reply_is_recorded_and_the_stub_keeps_waiting():
    """A reply that stops inside a record does not parse: it is kept as evidence
    (dns_invalid_reply) and, as a stub resolver would, we wait for a valid one."""
    with serve(lambda: DnsPeer(udp_reply(lambda q: cut_off(dns_answer(q))))) as resolver:
        outcome = exchange(resolver.port)
    check_bounds(outcome, TIMEOUT)
    assert outcome.elapsed >= TIMEOUT * 0.9  # nothing valid came: the whole window
    assert outcome.value.failure == F.GENERIC_TIMEOUT
    assert [r.failure for r in outcome.value.replies] == [F.DNS_INVALID_REPLY]


def test_cut_off_tcp_reply_then_close_is_eof():
    def cut(query: bytes) -> tuple[bytes, bytes]:
        return struct.pack("!H", len(dns_answer(query))), cut_off(dns_answer(query))

    with serve(lambda: DnsPeer(None, tcp_reply(cut, close=True))) as resolver:
        outcome = exchange(resolver.port, "tcp")
    check_bounds(outcome, TIMEOUT)
    assert outcome.value.failure == F.EOF_ERROR


def test_tcp_length_prefix_larger_than_the_data_times_out():
    """The prefix announces 65535 bytes, a few dozen come, the connection stays open."""
    with serve(lambda: DnsPeer(None, _length_lie)) as resolver:
        outcome = exchange(resolver.port, "tcp")
    check_bounds(outcome, TIMEOUT)
    assert outcome.value.failure == F.GENERIC_TIMEOUT
    assert outcome.value.replies == ()


# --- replies for another query ------------------------------------------------------ #


@pytest.mark.parametrize("lie", [
    pytest.param(lambda q: dns_answer(q, id_offset=1), id="wrong-id"),
    pytest.param(lambda q: dns_answer(q, qname="other.example"), id="wrong-question"),
])
def test_reply_for_another_query(lie):
    """Over UDP a stub ignores it (RFC 5452 9.1) and times out; over TCP it is the answer
    that came, and it is the wrong one."""
    with serve(lambda: DnsPeer(udp_reply(lie), tcp_reply(lie))) as resolver:
        udp = exchange(resolver.port)
        tcp = exchange(resolver.port, "tcp")
    check_bounds(udp, TIMEOUT)
    check_bounds(tcp, TIMEOUT)
    assert udp.value.failure == F.GENERIC_TIMEOUT
    assert [r.failure for r in udp.value.replies] == [F.DNS_WRONG_QUERY]
    assert udp.value.replies[0].answers == ()  # its answers are never data
    assert tcp.value.failure == F.DNS_WRONG_QUERY


def test_compression_pointer_loop():
    """An owner name that points at itself (RFC 1035 4.1.4): a clean parse error."""
    with serve(lambda: DnsPeer(udp_reply(compression_loop),
                               tcp_reply(compression_loop))) as resolver:
        udp = exchange(resolver.port)
        tcp = exchange(resolver.port, "tcp")
    check_bounds(udp, TIMEOUT)
    check_bounds(tcp, TIMEOUT)
    assert [r.failure for r in udp.value.replies] == [F.DNS_INVALID_REPLY]
    assert udp.value.failure == F.GENERIC_TIMEOUT
    assert tcp.value.failure == F.DNS_INVALID_REPLY


def test_an_answer_of_another_class_is_ignored():
    """An A record in class HS (RFC 1035 3.2.4) next to one in class IN: a stub
    ignores the former. It used to escape the parser as an AttributeError and
    turn the whole exchange into an unknown_failure."""

    with serve(lambda: DnsPeer(udp_reply(_other_class), tcp_reply(_other_class))) as resolver:
        udp = exchange(resolver.port)
        tcp = exchange(resolver.port, "tcp")
    for outcome in (udp, tcp):
        check_bounds(outcome, TIMEOUT)
        assert outcome.value.failure is None
        assert [a.value for a in outcome.value.replies[0].answers] == ["127.0.0.7"]


# --- too much ------------------------------------------------------------------------ #


def test_huge_answer_sets_are_capped():
    """500 A records over UDP, 4,000 (64 KiB) over TCP: valid replies, their answers
    kept only up to MAX_ANSWERS (the raw message keeps the rest)."""
    with serve(lambda: DnsPeer(udp_reply(lambda q: huge(q, 500)),
                               tcp_reply(lambda q: huge(q, 4000)))) as resolver:
        # building and parsing 4,000 records takes a while on a busy 2-core machine:
        # a generous timeout, the bounds below are what this test is about
        udp = exchange(resolver.port, timeout=5.0)
        tcp = exchange(resolver.port, "tcp", timeout=5.0)
    for outcome in (udp, tcp):
        check_bounds(outcome, 5.0, memory=4 << 20)
        assert outcome.value.failure is None
        assert len(outcome.value.replies[0].answers) == live_dns.MAX_ANSWERS
    assert len(tcp.value.replies[0].raw) > 64000  # base64 of the whole 64 KiB message


def test_flood_of_replies_to_one_query_is_capped():
    with serve(lambda: DnsPeer(
        lambda data, addr, peer: peer.repeat(2000, lambda: peer.send(dns_answer(data), addr))
    )) as resolver:
        outcome = exchange(resolver.port, timeout=2.0, linger=1.0)
    check_bounds(outcome, 2.0)
    assert outcome.value.failure is None
    assert len(outcome.value.replies) == live_dns.MAX_REPLIES


def test_flood_of_bogus_replies_does_not_hide_the_real_answer():
    """An injector sending 100 replies for another id first must not end the
    listening window: the resolver's answer, arriving after them, is recorded."""

    def handler(data, addr, peer):
        peer.repeat(100, lambda: peer.send(dns_answer(data, id_offset=1), addr))
        peer.later(0.3, lambda: peer.send(dns_answer(data, ["127.0.0.7"]), addr))

    with serve(lambda: DnsPeer(handler)) as resolver:
        outcome = exchange(resolver.port, timeout=2.0)
    check_bounds(outcome, 2.0)
    assert outcome.value.failure is None
    valid = [r for r in outcome.value.replies if r.failure is None]
    assert [a.value for a in valid[0].answers] == ["127.0.0.7"]
    assert len(outcome.value.replies) <= live_dns.MAX_REPLIES + live_dns.MAX_INVALID_REPLIES


# --- replies from elsewhere ------------------------------------------------------------ #


@pytest.mark.parametrize("source", ["127.0.0.1", "127.0.0.2"], ids=["other-port", "other-address"])
def test_reply_from_a_wrong_source_is_never_accepted(source):
    """A forged answer sent to the probe's port from another port or address
    arrives first; the resolver's own answer 0.3 s later. Only the latter counts."""
    sent_from: list[int] = []

    def handler(data, addr, peer):
        sent_from.append(peer.send_from(source, dns_answer(data, ["127.6.6.6"]), addr))
        peer.later(0.3, lambda: peer.send(dns_answer(data, ["127.0.0.7"]), addr))

    with serve(lambda: DnsPeer(handler)) as resolver:
        outcome = exchange(resolver.port, timeout=2.0)
    check_bounds(outcome, 2.0)
    assert sent_from  # the forgery was really sent
    assert [[a.value for a in r.answers] for r in outcome.value.replies] == [["127.0.0.7"]]


def test_a_connected_udp_socket_filters_other_sources_in_the_kernel():
    """Why the test above holds: connect(2) on a UDP socket makes the kernel drop
    datagrams whose source is not the connected peer (udp(7)); an unconnected
    socket on the same kind of port receives them."""
    resolver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    resolver.bind((LOOPBACK, 0))
    connected = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    connected.connect(resolver.getsockname())
    unconnected = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    unconnected.bind((LOOPBACK, 0))
    try:
        for target in (connected, unconnected):
            DatagramPeer.send_from("127.0.0.2", b"forged", target.getsockname())
            DatagramPeer.send_from(LOOPBACK, b"forged", target.getsockname())
        resolver.sendto(b"genuine", connected.getsockname())
        connected.settimeout(1)
        unconnected.settimeout(1)
        assert connected.recv(100) == b"genuine"  # the two forgeries were dropped
        assert unconnected.recv(100) == b"forged"
        assert unconnected.recv(100) == b"forged"
    finally:
        for sock in (resolver, connected, unconnected):
            sock.close()


# --- a control that sees the same resolver never says "blocked" ---------------------------- #

CASES = {
    "tcp-length-lie": lambda: DnsPeer(udp_reply(dns_answer), _length_lie),
    "other-class": lambda: DnsPeer(udp_reply(_other_class), tcp_reply(_other_class)),
    "tc-bit": lambda: DnsPeer(udp_reply(lambda q: dns_answer(q, (), truncated=True))),
    "cut-off": lambda: DnsPeer(udp_reply(lambda q: cut_off(dns_answer(q))),
                               tcp_reply(lambda q: cut_off(dns_answer(q)))),
    "wrong-id": lambda: DnsPeer(udp_reply(lambda q: dns_answer(q, id_offset=7)),
                                tcp_reply(lambda q: dns_answer(q, id_offset=7))),
    "wrong-question": lambda: DnsPeer(udp_reply(lambda q: dns_answer(q, qname="x.example")),
                                      tcp_reply(lambda q: dns_answer(q, qname="x.example"))),
    "compression-loop": lambda: DnsPeer(udp_reply(compression_loop),
                                        tcp_reply(compression_loop)),
    "huge": lambda: DnsPeer(udp_reply(lambda q: huge(q, 500)), tcp_reply(lambda q: huge(q, 4000))),
    "flood": lambda: DnsPeer(
        lambda data, addr, peer: peer.repeat(500, lambda: peer.send(dns_answer(data), addr))),
    "wrong-source": lambda: DnsPeer(lambda data, addr, peer: (
        peer.send_from("127.0.0.2", dns_answer(data, ["127.6.6.6"]), addr),
        peer.later(0.1, lambda: peer.send(dns_answer(data), addr)))),
}


# A resolver that sets TC over UDP (as any does for a large answer set) and answers
# over TCP is not blocking: a stub retries over TCP (RFC 7766) and so does analysis.
@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_resolver_is_never_blocked_when_the_control_sees_it_too(case):
    with serve(CASES[case]) as resolver:
        judged = probe_and_control(
            endpoint(NAME, 443, ("dns",)), options(TIMEOUT, (LOOPBACK, resolver.port))
        )
    assert judged.elapsed < TIMEOUT + 2
    assert_never_blocked(judged)
