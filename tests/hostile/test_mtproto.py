"""Hostile servers on an MTProto port against the live exchange and its judgement.

Garbage, a frame cut short, a length prefix announcing gigabytes, an HTTP answer
(block pages and proxies on Telegram's addresses). The exchange reads one frame,
capped, and stops as soon as the announced length is one no resPQ can have;
``runner.judge_mtproto`` then says why the reply is not Telegram.
"""

from __future__ import annotations

import base64
import os
import struct

import pytest

from probe import mtproto
from probe.net import failures as F
from probe.net import tcp as live_tcp
from probe.net.network import MtprotoRequest
from probe.runner import judge_mtproto

from .harness import (
    assert_never_blocked,
    bounded,
    check_bounds,
    endpoint,
    options,
    probe_and_control,
)
from .servers import StreamPeer, send_then_hold, serve

LOOPBACK = "127.0.0.1"
TIMEOUT = 1.0
HTTP_ANSWER = (b"HTTP/1.1 400 Bad Request\r\nServer: nginx/0.3.33\r\nContent-Length: 0\r\n"
               b"Connection: keep-alive\r\n\r\n")
# Random bytes whose first four, read as a length, announce far more than a resPQ.
GARBAGE = b"\x9c\x41\xe3\x57" + os.urandom(1020)


def exchange(port: int, transport: str = "intermediate", timeout: float = TIMEOUT):
    nonce = mtproto.new_nonce()
    payload = mtproto.frame(mtproto.req_pq_multi(nonce), transport)
    request = MtprotoRequest(LOOPBACK, port, base64.b64encode(payload).decode(), transport)
    return bounded(lambda net: net.mtproto_exchange(request, timeout))


def analysis_failure(result) -> str:
    """The failure analysis records for this exchange (probe.analysis.first_failure)."""
    check = judge_mtproto(result)
    assert not check.valid
    return result.failure or F.MTPROTO_INVALID_RESPONSE


@pytest.mark.parametrize("close", [False, True], ids=["then-hold", "then-close"])
@pytest.mark.parametrize("reply,reason", [
    pytest.param(GARBAGE, mtproto.OVERSIZED, id="garbage"),
    pytest.param(HTTP_ANSWER, mtproto.GARBAGE, id="http-answer"),
    pytest.param(struct.pack("<I", 0x7FFFFFFF) + bytes(8192), mtproto.OVERSIZED,
                 id="oversized-prefix"),
    pytest.param(struct.pack("<I", 1 << 20), mtproto.OVERSIZED, id="oversized-prefix-alone"),
])
def test_replies_no_res_pq_can_be_are_judged_at_once(reply, reason, close):
    """Nothing after a length beyond mtproto.MAX_PACKET can make a resPQ: the
    exchange stops there instead of waiting (up to its timeout) for the rest."""
    with serve(lambda: StreamPeer(send_then_hold(reply, close=close))) as peer:
        outcome = exchange(peer.port)
    check_bounds(outcome, TIMEOUT)
    assert outcome.elapsed < TIMEOUT / 2
    result = outcome.value
    assert result.failure is None
    received = base64.b64decode(result.received)
    assert len(received) <= live_tcp.EVIDENCE_BYTES
    assert received == reply[:live_tcp.EVIDENCE_BYTES]  # what came is kept as evidence
    assert judge_mtproto(result).error == reason
    assert analysis_failure(result) == F.MTPROTO_INVALID_RESPONSE


@pytest.mark.parametrize("close,failure", [(False, F.GENERIC_TIMEOUT), (True, F.EOF_ERROR)],
                         ids=["then-hold", "then-close"])
def test_truncated_frame(close, failure):
    """A frame announcing 120 bytes of which 60 come."""
    with serve(lambda: StreamPeer(send_then_hold(struct.pack("<I", 120) + bytes(60),
                                                 close=close))) as peer:
        outcome = exchange(peer.port)
    check_bounds(outcome, TIMEOUT)
    result = outcome.value
    assert result.failure == failure
    assert len(base64.b64decode(result.received)) == 64  # what came is kept
    assert judge_mtproto(result).error == mtproto.TRUNCATED
    assert analysis_failure(result) == failure


def test_abridged_oversized_length_is_judged_at_once():
    with serve(lambda: StreamPeer(send_then_hold(b"\x7f\xff\xff\xff" + bytes(100)))) as peer:
        outcome = exchange(peer.port, "abridged")
    check_bounds(outcome, TIMEOUT)
    assert outcome.elapsed < TIMEOUT / 2
    assert judge_mtproto(outcome.value).error == mtproto.OVERSIZED


def test_http_answer_on_the_abridged_transport():
    """'H' read as an abridged length announces 288 bytes, a plausible frame: we
    wait for it (bounded by the timeout), and the codec still says garbage."""
    with serve(lambda: StreamPeer(send_then_hold(HTTP_ANSWER))) as peer:
        outcome = exchange(peer.port, "abridged")
    check_bounds(outcome, TIMEOUT)
    assert outcome.value.failure == F.GENERIC_TIMEOUT
    assert judge_mtproto(outcome.value).error == mtproto.GARBAGE


def test_endless_stream_is_capped():
    """A server that streams forever after a huge length prefix: one capped read."""

    async def endless(reader, writer):
        await reader.read(65536)
        writer.write(struct.pack("<I", 0x7FFFFFFF))
        while True:
            writer.write(bytes(65536))
            await writer.drain()

    with serve(lambda: StreamPeer(endless)) as peer:
        outcome = exchange(peer.port)
    check_bounds(outcome, TIMEOUT)
    assert len(base64.b64decode(outcome.value.received)) <= live_tcp.MAX_MTPROTO_REPLY
    assert not judge_mtproto(outcome.value).valid


# --- a control that sees the same server never says "blocked" ------------------------ #

CASES = {
    "garbage": send_then_hold(GARBAGE),
    "truncated": send_then_hold(struct.pack("<I", 120) + bytes(60)),
    "truncated-then-close": send_then_hold(struct.pack("<I", 120) + bytes(60), close=True),
    "oversized-prefix": send_then_hold(struct.pack("<I", 0x7FFFFFFF)),
    "http-answer": send_then_hold(HTTP_ANSWER),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_mtproto_server_is_never_blocked_when_the_control_sees_it_too(case):
    with serve(lambda: StreamPeer(CASES[case])) as peer:
        judged = probe_and_control(endpoint(LOOPBACK, peer.port, ("mtproto",)), options(TIMEOUT))
    # intermediate, then abridged as a fallback: two exchanges at most
    assert judged.elapsed < 2 * TIMEOUT + 2
    assert_never_blocked(judged)
