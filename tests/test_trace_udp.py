"""Recording and replaying UDP flows and QUIC exchanges: a trace of real loopback
STUN, TURN, a cut flow, a refused port and an HTTP/3 GET replays to identical
results without a socket, and the judges, given fresh random requests, read the
recorded ones and conclude exactly as the live run did.
"""

from __future__ import annotations

import asyncio
import base64
import json

from aioice import stun as aioice_stun
from servers import LOOPBACK, TEST_LIMITS, running
from udp_ports import closed_udp_port as closed_port

from probe import stun
from probe.lab.servers.quic import QuicHttpServer
from probe.lab.servers.stun import StunServer
from probe.net import failures as F
from probe.net.live import LiveNetwork
from probe.net.network import QuicRequest, Timing, UdpReceived, UdpResult, UdpSent
from probe.replay import REPLAY_MISSING_OPERATION, ReplayNetwork
from probe.runner import RunOptions
from probe.targets import parse_targets
from probe.trace import (
    RunInfo,
    finish_recording,
    load_trace,
    scrub_trace_file,
    start_recording,
)

TARGETS = """\
version: 1
services:
  - id: baseline
    baseline: true
    endpoints:
      - {id: base, host: 127.0.0.1, port: 443, checks: [tcp]}
"""


def requests(stun_port: int, cut_port: int, refused: int, quic_port: int):
    """The operations of one run: fresh transaction ids and payloads every call."""
    return [
        ("stun", stun.stun_request(LOOPBACK, stun_port, 1.0, linger=0.2)),
        ("turn", stun.turn_request(LOOPBACK, stun_port, 1.0, linger=0.2)),
        ("udp", stun.flow_request(LOOPBACK, cut_port, "echo", 12, 0.01, linger=0.2)),
        ("udp-stun", stun.flow_request(LOOPBACK, cut_port, "stun", 12, 0.01, linger=0.2)),
        ("refused", stun.stun_request(LOOPBACK, refused, 1.0, linger=0.2)),
        ("quic", QuicRequest("https://www.example.org/", LOOPBACK, quic_port, "www.example.org")),
    ]


def judge(kind: str, result):
    if kind in ("stun", "refused"):
        return stun.judge_stun(result)
    if kind == "turn":
        return stun.judge_turn(result)
    if kind == "udp":
        return stun.judge_flow("echo", result)
    if kind == "udp-stun":
        return stun.judge_flow("stun", result)
    return result


async def perform(network, plan):
    out = []
    for kind, request in plan:
        if isinstance(request, QuicRequest):
            out.append((kind, await network.quic_exchange(request, 2.0)))
        else:
            out.append((kind, await network.udp_exchange(request, 1.0)))
    return out


def test_udp_and_quic_replay_identically(tmp_path, lab_pki) -> None:
    info = RunInfo(parse_targets(TARGETS), RunOptions())
    with (
        running(lambda: StunServer([(LOOPBACK, 0)], limits=TEST_LIMITS)) as server,
        running(lambda: StunServer([(LOOPBACK, 0)], answer_first=4, limits=TEST_LIMITS)) as cut,
        running(lambda: QuicHttpServer([(LOOPBACK, 0)], lab_pki.leaves["www.example.org"],
                                       limits=TEST_LIMITS)) as h3,
        closed_port() as refused,
    ):
        ports = (server.port, cut.port, refused, h3.port)
        recording = start_recording(tmp_path / "udp.jsonl.gz", info, inner=LiveNetwork())
        live = asyncio.run(perform(recording, requests(*ports)))
        path = finish_recording(recording, None)

    live_checks = {kind: judge(kind, result) for kind, result in live}
    assert live_checks["stun"].failure is None and live_checks["turn"].failure is None
    assert live_checks["udp"].failure == F.UDP_FLOW_CUTOFF
    assert live_checks["udp-stun"].failure == F.UDP_FLOW_CUTOFF
    assert live_checks["refused"].failure == F.CONNECTION_REFUSED
    assert live_checks["quic"].failure is None and live_checks["quic"].status == 200

    network = ReplayNetwork(load_trace(path))
    replayed = asyncio.run(perform(network, requests(*ports)))  # new random requests
    assert [result for _, result in replayed] == [result for _, result in live]
    assert {kind: judge(kind, result) for kind, result in replayed} == live_checks
    assert network.unused() == 0 and not network.missing

    # an operation the trace does not hold is a result, never an exception
    missing = asyncio.run(perform(ReplayNetwork(load_trace(path)), requests(1, 2, 3, 4)))
    assert all(result.failure == REPLAY_MISSING_OPERATION for _, result in missing)


def test_scrubbed_trace_hides_the_mapped_address(tmp_path) -> None:
    """The XOR-MAPPED-ADDRESS of a STUN answer is the volunteer's public address,
    XOR-encoded: scrubbing a trace must find it there too."""
    request = stun.stun_request("203.0.113.5", 3478, 1.0)
    tid = base64.b64decode(request.datagrams[0])[8:20]
    answer = aioice_stun.Message(aioice_stun.Method.BINDING, aioice_stun.Class.RESPONSE, tid,
                                 {"XOR-MAPPED-ADDRESS": ("198.51.100.77", 50000)})
    answer.add_fingerprint()
    raw = bytes(answer)
    live = UdpResult(request, (UdpSent(0.0, 0),),
                     (UdpReceived(0.05, base64.b64encode(raw).decode(), len(raw)),), (), None,
                     Timing(0.0, 1.05))
    info = RunInfo(parse_targets(TARGETS), RunOptions())

    class Canned:
        def clock(self) -> float:
            return 0.0

        async def udp_exchange(self, request, timeout):
            return live

        async def aclose(self) -> None:
            return None

        tls_handshake = None  # start_recording takes objects with it for networks

    recording = start_recording(tmp_path / "t.jsonl", info, inner=Canned())
    asyncio.run(recording.udp_exchange(request, 1.0))
    path = finish_recording(recording, None)
    assert stun.judge_stun(live).mapped_address == "198.51.100.77:50000"
    assert scrub_trace_file(path, ["198.51.100.77"]) == 0
    (op,) = load_trace(path).ops
    replayed = asyncio.run(ReplayNetwork(load_trace(path)).udp_exchange(request, 1.0))
    assert "198.51.100.77" not in json.dumps(op)  # nor in any textual or packed form
    check = stun.judge_stun(replayed)
    assert check.failure is None and check.mapped_address == "0.0.0.1:50000"
