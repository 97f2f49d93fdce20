"""Hostile HTTP servers on loopback against the live HTTP client.

Bodies that never end (capped and time-bounded), a gzip bomb (decoded size
bounded), a same-host redirect loop, enormous headers, invalid status lines,
and a throughput transfer that trickles forever (measured for its time budget
instead of lost to a timeout).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import zlib

import pytest

from probe.net import failures as F
from probe.net.network import HttpRequest

from .harness import (
    MIB,
    assert_never_blocked,
    bounded,
    check_bounds,
    endpoint,
    options,
    probe_and_control,
)
from .servers import StreamPeer, serve

LOOPBACK = "127.0.0.1"
TIMEOUT = 2.0
CHUNK = b"x" * 65536


async def read_head(reader: asyncio.StreamReader) -> tuple[str, str]:
    """(method, path) of the request whose head we read (its body is ignored)."""
    head = await reader.readuntil(b"\r\n\r\n")
    method, path, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
    return method, path


def http(respond):
    """A handler answering each request on the connection with ``respond(writer, path)``."""

    async def handler(reader, writer):
        while True:
            _, path = await read_head(reader)
            await respond(writer, path)

    return handler


def raw(data: bytes, *, then_hold: bool = True):
    async def respond(writer, path):
        writer.write(data)
        await writer.drain()
        if not then_hold:
            writer.close()
        await asyncio.sleep(3600)

    return http(respond)


def request(port: int, path: str = "/", timeout: float = TIMEOUT, **more):
    req = HttpRequest(f"http://example.org:{port}{path}", LOOPBACK, **more)
    return bounded(lambda net: net.http_request(req, timeout))


# --- bodies ------------------------------------------------------------------ #


async def _endless(writer, path):
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nConnection: close\r\n\r\n")
    while True:
        writer.write(CHUNK)
        await writer.drain()


async def _endless_chunked(writer, path):
    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    while True:
        writer.write(b"10000\r\n" + CHUNK + b"\r\n")
        await writer.drain()


@pytest.mark.parametrize("respond", [_endless, _endless_chunked], ids=["until-close", "chunked"])
def test_infinite_body_is_capped(respond):
    with serve(lambda: StreamPeer(http(respond))) as peer:
        outcome = request(peer.port, max_body=MIB)
    check_bounds(outcome, TIMEOUT, memory=12 * MIB)
    result = outcome.value
    assert result.failure is None and result.status == 200
    assert result.body_truncated
    assert len(base64.b64decode(result.body)) == MIB
    assert outcome.elapsed < 1.0  # capped by size, not by the timeout


def test_infinite_body_on_a_throughput_transfer_is_capped_too():
    with serve(lambda: StreamPeer(http(_endless))) as peer:
        outcome = request(peer.port, max_body=256 * 1024, measure_throughput=True,
                          transfer_bytes=8 * MIB, transfer_seconds=1.0)
    check_bounds(outcome, TIMEOUT, memory=12 * MIB)
    result = outcome.value
    assert result.failure is None
    assert result.body_truncated and len(base64.b64decode(result.body)) == 256 * 1024
    assert result.body_length <= 8 * MIB + 16384  # counted, never kept
    assert result.throughput_bps and result.throughput_bps > 0


@functools.cache
def gzip_bomb(decoded: int = 256 * MIB) -> bytes:
    """~250 KB on the wire, 256 MiB decoded (made once, when first needed)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(MIB)
    parts = [compressor.compress(block) for _ in range(decoded // MIB)]
    return b"".join(parts) + compressor.flush()


@pytest.mark.parametrize("measure", [False, True], ids=["page", "throughput"])
def test_gzip_bomb_is_decoded_only_up_to_the_cap(measure):
    bomb = gzip_bomb()

    async def respond(writer, path):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\n"
                     + f"Content-Length: {len(bomb)}\r\n\r\n".encode() + bomb)
        await writer.drain()

    with serve(lambda: StreamPeer(http(respond))) as peer:
        outcome = request(peer.port, max_body=MIB, measure_throughput=measure)
    check_bounds(outcome, TIMEOUT, memory=12 * MIB)
    result = outcome.value
    assert result.failure is None
    assert result.body_truncated
    assert base64.b64decode(result.body) == bytes(MIB)  # decoded, and no more


# --- redirects, headers, status lines --------------------------------------------- #


def test_same_host_redirect_loop():
    seen: list[str] = []

    async def respond(writer, path):
        seen.append(path)
        target = "/b" if path == "/a" else "/a"
        writer.write(f"HTTP/1.1 302 Found\r\nLocation: {target}\r\n"
                     "Content-Length: 0\r\n\r\n".encode())
        await writer.drain()

    with serve(lambda: StreamPeer(http(respond))) as peer:
        outcome = request(peer.port, "/a", max_redirects=5)
    check_bounds(outcome, TIMEOUT)
    assert outcome.value.failure == F.HTTP_TOO_MANY_REDIRECTS
    assert len(outcome.value.redirects) == 5
    assert len(seen) == 6  # the first request and five redirects, then we stopped


@pytest.mark.parametrize("head", [
    pytest.param(b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (100 * 1024) + b"\r\n\r\n",
                 id="one-100KiB"),
    pytest.param(b"HTTP/1.1 200 OK\r\n" + b"".join(
        b"X-%d: %s\r\n" % (i, b"b" * 90) for i in range(20_000)) + b"\r\n", id="20000-headers"),
    pytest.param(b"HTTP/1.1 200 OK\r\nLocation: /" + b"c" * (1 << 20) + b"\r\n\r\n",
                 id="1MiB-location"),
    pytest.param(b"HTTP/1.1 200 OK\r\nX-Never-Ends: " + b"d" * (4 << 20), id="endless-line"),
])
def test_enormous_headers(head):
    with serve(lambda: StreamPeer(raw(head))) as peer:
        outcome = request(peer.port)
    check_bounds(outcome, TIMEOUT, memory=16 * MIB)
    assert outcome.value.failure == F.HTTP_INVALID_RESPONSE
    assert len(outcome.value.headers) <= 200


@pytest.mark.parametrize("head", [
    pytest.param(b"HTTP/1.1 abc OK\r\n\r\n", id="non-numeric"),
    pytest.param(b"HTTP/1.1 99999 Too Big\r\n\r\n", id="five-digits"),
    pytest.param(b"garbage\r\n\r\n", id="garbage"),
    pytest.param(b"\x16\x03\x03\x00\x02\x02\x28", id="tls-alert"),
    pytest.param(b"<html>HTTP/0.9 style body</html>\r\n\r\n", id="no-status-line"),
    pytest.param(b"HTTP/1.1 200 OK\r\nBad Header Without Colon\r\n\r\n", id="bad-header"),
])
def test_invalid_status_line_or_head(head):
    with serve(lambda: StreamPeer(raw(head))) as peer:
        outcome = request(peer.port)
    check_bounds(outcome, TIMEOUT)
    assert outcome.value.failure == F.HTTP_INVALID_RESPONSE
    assert outcome.value.status is None


# --- a throughput transfer that trickles forever ------------------------------------ #


async def _trickling(writer, path):
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n")
    while True:
        writer.write(b"t" * 100)
        await writer.drain()
        await asyncio.sleep(0.1)


def test_trickling_throughput_transfer_is_measured_for_its_time_budget():
    """Russia held Twitter at ~150 kbit/s in 2021: a throttled transfer does not finish
    in time. What arrived by the deadline is the measurement, not a timeout."""
    with serve(lambda: StreamPeer(http(_trickling))) as peer:
        outcome = request(peer.port, max_body=MIB, measure_throughput=True,
                          transfer_bytes=8 * MIB, transfer_seconds=1.0)
    check_bounds(outcome, TIMEOUT)
    result = outcome.value
    assert result.failure is None and result.status == 200
    assert result.body_truncated
    assert 500 <= result.body_length < 5_000
    assert result.throughput_bps is not None and 200 < result.throughput_bps < 5000


def test_page_that_trickles_forever_times_out():
    """Not a throughput transfer: a page that never completes is a timeout."""
    with serve(lambda: StreamPeer(http(_trickling))) as peer:
        outcome = request(peer.port, max_body=MIB)
    check_bounds(outcome, TIMEOUT)
    assert outcome.value.failure == F.GENERIC_TIMEOUT


# --- a control that sees the same server never says "blocked" --------------------------- #


async def _loop(writer, path):
    writer.write(b"HTTP/1.1 302 Found\r\nLocation: /\r\nContent-Length: 0\r\n\r\n")
    await writer.drain()


CASES = {
    "infinite-body": (lambda: http(_endless), ("http",)),
    "gzip-bomb": (lambda: raw(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: "
                              + str(len(gzip_bomb())).encode() + b"\r\n\r\n" + gzip_bomb()),
                  ("http",)),
    "redirect-loop": (lambda: http(_loop), ("http",)),
    "enormous-header": (
        lambda: raw(b"HTTP/1.1 200 OK\r\nX: " + b"a" * (100 * 1024) + b"\r\n\r\n"), ("http",)),
    "invalid-status": (lambda: raw(b"HTTP/1.1 abc\r\n\r\n"), ("http",)),
    "trickling-download": (lambda: http(_trickling), ("download",)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_http_server_is_never_blocked_when_the_control_sees_it_too(case):
    make_handler, checks = CASES[case]
    handler = make_handler()
    timeout = 1.0
    with serve(lambda: StreamPeer(handler)) as peer:
        judged = probe_and_control(endpoint(LOOPBACK, peer.port, checks), options(timeout))
    assert judged.elapsed < 3 * timeout + 2  # a download has three step timeouts
    assert_never_blocked(judged)
