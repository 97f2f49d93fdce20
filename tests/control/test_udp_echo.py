"""The control helper's UDP echo on loopback: it echoes, and it is no reflector.

Every test sends real datagrams to a real ``UdpEcho`` and counts what comes
back: the same bytes, never more; a burst cut by the per-source and global
buckets; nothing for a privileged or reflector source port, an oversized
datagram, or a datagram already echoed (two echoes looped by one forged
datagram stop after one round); and no log line naming a client.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
import time

import pytest
from servers import running

from probe.control.udp_echo import EchoLimits, EchoPolicy, UdpEcho, parse_ports, source_key

V4 = "127.0.0.1"
V6 = "::1"


def client(host: str = V4, port: int = 0) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((host, port))
    sock.settimeout(0.5)
    return sock


def exchange(sock: socket.socket, host: str, port: int, datagrams: list[bytes],
             wait: float = 0.5) -> list[bytes]:
    """Send every datagram at once, then collect answers until ``wait`` passes quietly."""
    for data in datagrams:
        sock.sendto(data, (host, port))
    answers = []
    sock.settimeout(wait)
    with contextlib.suppress(TimeoutError):
        while len(answers) < 10_000:
            answer, sender = sock.recvfrom(4096)
            assert sender[1] == port  # answered from the port it was sent to
            answers.append(answer)
    return answers


def distinct(count: int, size: int = 160) -> list[bytes]:
    """Random-looking, all different: what a probe's echo flow sends."""
    return [os.urandom(size) for _ in range(count)]


@pytest.mark.parametrize("host", [V4, V6])
def test_echo_answers_each_datagram_with_its_own_bytes(host):
    sent = [os.urandom(size) for size in (1, 60, 160, 900, 1200, 1472)]
    with running(lambda: UdpEcho([0, 0], host)) as echo, client(host) as sock:
        assert len(echo.ports) == 2 and 0 not in echo.ports
        for port in echo.ports:
            answers = exchange(sock, host, port, sent)
            assert sorted(answers) == sorted(sent)  # the same bytes: never larger
    assert echo.counters.echoed == 2 * len(sent)


def test_a_wildcard_echo_serves_ipv4_and_ipv6():
    with running(lambda: UdpEcho([0], "::")) as echo:
        for host in (V4, V6):
            with client(host) as sock:
                data = os.urandom(100)
                assert exchange(sock, host, echo.ports[0], [data]) == [data]


def test_a_burst_from_one_source_is_cut_at_its_bucket():
    """500 datagrams at once: the default bucket (200, then 20/s) echoes about
    200 of them, and the source keeps its small sustained rate afterwards."""
    with running(lambda: UdpEcho([0], V4)) as echo, client() as sock:
        start = time.monotonic()
        answers = exchange(sock, V4, echo.ports[0], distinct(500))
        elapsed = time.monotonic() - start
        assert 195 <= len(answers) <= 200 + 20 * elapsed + 1, (len(answers), elapsed)
        # (the kernel may drop some of the burst before the echo reads it)
        assert echo.counters.ignored_rate == echo.counters.received - len(answers)
        time.sleep(0.5)  # ~10 tokens come back
        later = exchange(sock, V4, echo.ports[0], distinct(50))
        assert 5 <= len(later) <= 10 + 20 * 1.5


def test_every_source_together_is_cut_at_the_global_bucket():
    limits = EchoLimits(burst=50, per_second=1, total_burst=80, total_per_second=1)
    with running(lambda: UdpEcho([0], V4, limits)) as echo:
        counts = []
        for host in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
            with client(host) as sock:
                counts.append(len(exchange(sock, V4, echo.ports[0], distinct(60), wait=0.3)))
    assert counts[0] == 50  # its own bucket
    assert sum(counts) <= 80 + 3  # the global one (plus a token a second)
    assert counts[2] <= 3
    assert echo.counters.ignored_total >= 60 - counts[2] - 1


def _free_low_port() -> int | None:
    for port in (123, 1023, 161, 19, 53):
        with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((V4, port))
            return port
    return None


@pytest.mark.parametrize("kind", ["privileged", "memcached", "ssdp"])
def test_datagrams_from_reflection_ports_are_ignored(kind):
    """A forged source of port 123 (NTP) or 11211 (memcached) is where a reflection
    attack aims: nothing is sent there."""
    with running(lambda: UdpEcho([0], V4)) as echo:
        if kind == "privileged":
            port = _free_low_port()
            if port is None or os.geteuid() != 0:
                pytest.skip("needs a free port below 1024 and root to bind it")
        else:
            port = {"memcached": 11211, "ssdp": 1900}[kind]
        try:
            sock = client(V4, port)
        except OSError:
            pytest.skip(f"port {port} is taken on this machine")
        with sock:
            assert exchange(sock, V4, echo.ports[0], distinct(5), wait=0.3) == []
        with client() as other:  # an ordinary source is still answered
            assert len(exchange(other, V4, echo.ports[0], distinct(2))) == 2
    assert echo.counters.ignored_port == 5


def test_empty_and_oversized_datagrams_are_ignored():
    with running(lambda: UdpEcho([0], V4)) as echo, client() as sock:
        assert exchange(sock, V4, echo.ports[0], [b"", os.urandom(1473), os.urandom(4000)],
                        wait=0.3) == []
        assert len(exchange(sock, V4, echo.ports[0], [os.urandom(1472)])) == 1
    assert echo.counters.ignored_size == 3


def test_a_repeated_datagram_is_echoed_once():
    data = os.urandom(200)
    with running(lambda: UdpEcho([0], V4)) as echo, client() as sock:
        assert exchange(sock, V4, echo.ports[0], [data, data, data]) == [data]
        # the same bytes from another source port are another flow
        with client() as other:
            assert exchange(other, V4, echo.ports[0], [data]) == [data]
    assert echo.counters.ignored_repeat == 2


def _forged_udp(source: tuple[str, int], destination: tuple[str, int], payload: bytes) -> bytes:
    length = 8 + len(payload)
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + length, 0, 0, 64, socket.IPPROTO_UDP, 0,
                         socket.inet_aton(source[0]), socket.inet_aton(destination[0]))
    return header + struct.pack("!HHHH", source[1], destination[1], length, 0) + payload


def test_a_datagram_from_one_of_its_own_echo_ports_is_ignored():
    """Another helper's echo on the same conventional port (3478, 443...) is a
    loop waiting for one forged datagram."""
    if os.geteuid() != 0:
        pytest.skip("forging a source address needs a raw socket (root)")
    with running(lambda: UdpEcho([0, 0], V4)) as echo:
        with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as raw:
            raw.sendto(_forged_udp((V4, echo.ports[1]), (V4, echo.ports[0]), os.urandom(100)),
                       (V4, 0))
        time.sleep(0.3)
    assert echo.counters.received == 1 and echo.counters.ignored_port == 1
    assert echo.counters.echoed == 0


def test_two_echoes_looped_by_one_forged_datagram_stop_after_one_round():
    """One datagram forged from echo B's port to echo A: A answers B, B answers A,
    and A, seeing the bytes it already echoed, stops the loop (without it, the two
    would bounce the datagram at the rate of their buckets for ever)."""
    if os.geteuid() != 0:
        pytest.skip("forging a source address needs a raw socket (root)")
    with running(lambda: UdpEcho([0], V4)) as a, running(lambda: UdpEcho([0], V4)) as b:
        with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as raw:
            raw.sendto(_forged_udp((V4, b.ports[0]), (V4, a.ports[0]), os.urandom(100)),
                       (V4, 0))
        time.sleep(0.5)
    assert a.counters.echoed == 1 and b.counters.echoed == 1
    assert a.counters.ignored_repeat == 1


def test_nothing_logged_names_a_client(caplog):
    """Traffic of every kind (answered, rate-limited, refused port, oversized,
    repeated), then a stop that logs the counters: no record holds the address."""
    caplog.set_level(logging.DEBUG)
    limits = EchoLimits(burst=5, per_second=1)
    with running(lambda: UdpEcho([0], "::", limits)) as echo:
        for host in (V4, "127.0.0.9", V6):
            with client(host) as sock:
                data = distinct(10)
                exchange(sock, host, echo.ports[0], [*data, data[0], os.urandom(2000)], wait=0.2)
        with client(V4, 11211) as sock:
            exchange(sock, V4, echo.ports[0], distinct(2), wait=0.1)
    logged = "\n".join(
        f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert "echoed=" in logged  # the counters are logged at stop...
    for address in (V4, "127.0.0.9", V6, "::ffff:127", "11211"):
        assert address not in logged  # ...and nothing that names a client


def test_memory_is_bounded_whatever_the_number_of_sources():
    clock = [0.0]
    policy = EchoPolicy(EchoLimits(max_sources=100, max_remembered=500, total_burst=10**9,
                                   total_per_second=10**9), clock=lambda: clock[0])
    for i in range(10_000):
        assert policy.admit(b"x%d" % i, f"198.51.100.{i % 250}" if i % 2 else f"2001:db8:{i:x}::1",
                            40000 + i % 7)
    assert policy.sources == 100
    assert len(policy._remembered) == 500


def test_sources_are_limited_by_address_and_by_ipv6_prefix():
    assert source_key("2001:db8::1") == source_key("2001:db8::ffff:1")  # one /64
    assert source_key("2001:db8::1") != source_key("2001:db8:0:1::1")
    assert source_key("::ffff:198.51.100.1") == source_key("198.51.100.1")
    assert source_key("198.51.100.1") != source_key("198.51.100.2")
    assert source_key("::1") != source_key("0.0.0.1")  # no family collides with the other


def test_udp_echo_ports_as_the_command_line_gives_them():
    assert parse_ports(["3478", "443,596-599", "1400", "443"]) == (3478, 443, 596, 597, 598, 599,
                                                                  1400)
    for bad, reason in (["0"], "1 to 65535"), (["70000"], "1 to 65535"), (["x"], "not a port"), \
            (["1-100"], "at most 8"), (["1,2,3,4,5,6,7,8,9"], "at most 8"), (["9-3"], "1 to"):
        with pytest.raises(ValueError, match=reason):
            parse_ports(bad)
