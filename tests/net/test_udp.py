"""Live UDP flows, STUN and TURN against real servers on loopback (127.0.0.1 and ::1).

Every failure of a UDP check is produced here for real: a silent port (a bound
socket that never answers), a closed port (the kernel's ICMP port unreachable,
read from the error queue), a forged second answer, an Allocate answered
without a challenge, and a flow cut after N datagrams.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest
from servers import LOOPBACK, LOOPBACK6, TEST_LIMITS, running
from udp_ports import closed_udp_port as closed_port
from udp_ports import silent_udp_port as silent_port

from probe import stun
from probe.lab.servers.stun import StunServer
from probe.net import failures as F
from probe.net.live import LiveNetwork
from probe.net.network import UdpRequest, UdpResult


def exchange(request: UdpRequest, timeout: float = 2.0) -> UdpResult:
    return asyncio.run(LiveNetwork().udp_exchange(request, timeout))


@pytest.mark.parametrize("host", [LOOPBACK, LOOPBACK6])
def test_stun_success_with_mapped_address(host: str) -> None:
    with running(lambda: StunServer([(host, 0)], limits=TEST_LIMITS)) as server:
        request = stun.stun_request(host, server.port, 2.0, linger=0.2)
        started = time.monotonic()
        result = exchange(request)
        elapsed = time.monotonic() - started
    check = stun.judge_stun(result)
    assert check.failure is None, check
    assert check.mapped_address is not None and host in check.mapped_address
    # answered at once: one send, no retransmission, then only the linger
    assert [s.index for s in result.sent] == [0]
    assert elapsed < 1.0


def test_silent_port_is_a_timeout_after_retransmissions() -> None:
    with silent_port() as port:
        request = stun.stun_request(LOOPBACK, port, 1.2)
        started = time.monotonic()
        result = exchange(request, 1.2)
        elapsed = time.monotonic() - started
    assert result.failure == F.GENERIC_TIMEOUT and not result.received and not result.icmp
    assert [round(s.t - result.sent[0].t, 1) for s in result.sent] == [0.0, 0.5]
    assert stun.judge_stun(result).failure == F.GENERIC_TIMEOUT
    assert 1.1 < elapsed < 1.6


@pytest.mark.parametrize("host", [LOOPBACK, LOOPBACK6])
def test_closed_port_is_refused_by_icmp(host: str) -> None:
    with closed_port(host) as port:
        result = exchange(stun.stun_request(host, port, 2.0, linger=0.2))
    assert result.failure == F.CONNECTION_REFUSED, result
    error = result.icmp[0]
    assert (error.icmp_type, error.icmp_code) == ((3, 3) if host == LOOPBACK else (1, 4))
    assert error.offender == host
    assert stun.judge_stun(result).failure == F.CONNECTION_REFUSED
    assert len(result.sent) == 1  # an ICMP error answers: no retransmissions


def test_forged_second_answer_is_injection() -> None:
    with running(lambda: StunServer([(LOOPBACK, 0)], forge="203.0.113.66",
                                    limits=TEST_LIMITS)) as server:
        result = exchange(stun.stun_request(LOOPBACK, server.port, 2.0, linger=0.3))
    assert len(result.received) == 2
    check = stun.judge_stun(result)
    assert check.failure == F.STUN_INJECTED and check.error == stun.CONFLICTING_ANSWERS


@pytest.mark.parametrize(("mode", "failure"), [("challenge", None),
                                               ("open", F.TURN_NO_CHALLENGE),
                                               ("silent", F.GENERIC_TIMEOUT)])
def test_turn_allocate(mode: str, failure: str | None) -> None:
    with running(lambda: StunServer([(LOOPBACK, 0)], turn=mode, limits=TEST_LIMITS)) as server:
        result = exchange(stun.turn_request(LOOPBACK, server.port, 1.0, linger=0.2), 1.0)
    assert stun.judge_turn(result).failure == failure


@pytest.mark.parametrize("payload", ["stun", "echo"])
def test_flow_cut_after_n_datagrams(payload: str) -> None:
    with running(lambda: StunServer([(LOOPBACK, 0)], answer_first=6,
                                    limits=TEST_LIMITS)) as server:
        request = stun.flow_request(LOOPBACK, server.port, payload, 20, 0.02, linger=0.3)
        result = exchange(request)
    assert len(result.sent) == 20 and len(result.received) == 6
    check = stun.judge_flow(payload, result)
    assert check.failure == F.UDP_FLOW_CUTOFF
    assert check.last_answered == 5


@pytest.mark.parametrize(("payload", "host"), [("stun", LOOPBACK6), ("echo", LOOPBACK)])
def test_flow_answered_to_the_end(payload: str, host: str) -> None:
    with running(lambda: StunServer([(host, 0)], limits=TEST_LIMITS)) as server:
        request = stun.flow_request(host, server.port, payload, 20, 0.02, linger=0.3)
        result = exchange(request)
    check = stun.judge_flow(payload, result)
    assert check.failure is None and check.answered == tuple(range(20))


def test_flood_is_capped() -> None:
    with running(lambda: StunServer([(LOOPBACK, 0)], limits=TEST_LIMITS)) as server:
        request = stun.flow_request(LOOPBACK, server.port, "echo", 30, 0.0, linger=0.3)
        request = UdpRequest(request.address, request.port, request.datagrams, request.schedule,
                             linger=0.3, max_received=10, max_bytes=100)
        result = exchange(request)
    assert len(result.received) == 10
    assert all(r.length >= len(r.data) * 3 // 4 > 0 for r in result.received)
    assert stun.judge_flow("echo", result).answered  # cut copies still match what we sent


def test_a_flow_longer_than_its_timeout_is_cut_short_by_it() -> None:
    with running(lambda: StunServer([(LOOPBACK, 0)], limits=TEST_LIMITS)) as server:
        request = stun.flow_request(LOOPBACK, server.port, "echo", 100, 0.1, linger=1.0)
        started = time.monotonic()
        result = exchange(request, 0.55)
        elapsed = time.monotonic() - started
    assert elapsed < 0.9 and len(result.sent) == 6
    assert result.failure is None and result.timing.t - result.timing.t0 < 0.9


def test_a_silent_flow_gives_up_but_a_cut_flow_still_shows_its_cut() -> None:
    # A blackholed flow stops once `give_up` seconds passed with nothing back (a
    # blackholed run then costs one step timeout, not the flow's whole schedule);
    # a flow that was answered, then cut, runs its schedule to the end.
    with silent_port() as port:
        request = stun.flow_request(LOOPBACK, port, "echo", 50, 0.05, linger=0.3)
        given_up = exchange(dataclasses.replace(request, give_up=0.4), 5.0)
    assert given_up.failure == F.GENERIC_TIMEOUT and 6 <= len(given_up.sent) <= 12
    with running(lambda: StunServer([(LOOPBACK, 0)], answer_first=4,
                                    limits=TEST_LIMITS)) as server:
        request = stun.flow_request(LOOPBACK, server.port, "echo", 30, 0.05, linger=0.3)
        cut = exchange(dataclasses.replace(request, give_up=0.4), 5.0)
    assert len(cut.sent) == 30
    assert stun.judge_flow("echo", cut).failure == F.UDP_FLOW_CUTOFF
