"""The failure table's HTTP branch, produced for real: aiohttp on loopback servers.

Each test names the real case behind one branch of
``probe.net.failures.classify_http`` (aiohttp wraps socket and TLS errors in
its own exceptions) and makes a loopback server behave that way. The other
branches of the table are produced by tests/net/test_live.py, tests/hostile/
and the lab's scenarios (see the table's docstring).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from servers import LOOPBACK, refused_port, start_https

from probe.net import failures as F
from probe.net.live import LiveNetwork
from probe.net.network import ControlRequest, HttpRequest

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
TIMEOUT = 2.0


@contextlib.asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[int]:
    """A loopback TCP server running ``handler`` per connection, for one test (bounded)."""

    async def bounded(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(TIMEOUT + 1):
                await handler(reader, writer)
        writer.close()

    server = await asyncio.start_server(bounded, LOOPBACK, 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def read_head(reader: asyncio.StreamReader) -> str:
    """The request's path (its head is read whole)."""
    head = await reader.readuntil(b"\r\n\r\n")
    return head.split(b" ", 2)[1].decode()


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0), as an on-path injector or a crashed server does."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def http_failure(handler: Handler, scheme: str = "http", **more: object) -> str | None:
    async def measure() -> str | None:
        async with serving(handler) as port:
            request = HttpRequest(f"{scheme}://example.org:{port}/", LOOPBACK, **more)
            result = await LiveNetwork().http_request(request, TIMEOUT)
        return result.failure

    return asyncio.run(measure())


# --- the server ends the exchange ------------------------------------------------- #


async def close_before_answering(reader, writer):
    await read_head(reader)
    writer.close()


async def reset_before_answering(reader, writer):
    await read_head(reader)
    reset(writer)


async def cut_body_with_fin(reader, writer):
    await read_head(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.close()


async def cut_body_with_rst(reader, writer):
    await read_head(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
    await writer.drain()
    await asyncio.sleep(0.05)
    reset(writer)


@pytest.mark.parametrize("handler,failure", [
    # A blockpage box that reads the request and hangs up without a word
    # (aiohttp: ServerDisconnectedError).
    pytest.param(close_before_answering, F.EOF_ERROR, id="closed-before-answer"),
    # An injector resetting the connection once it saw the Host header
    # (GFW-style keyword resets; aiohttp: ClientOSError with ECONNRESET).
    pytest.param(reset_before_answering, F.CONNECTION_RESET, id="reset-before-answer"),
    # A download cut mid-body by a FIN (aiohttp: ClientPayloadError, no socket error).
    pytest.param(cut_body_with_fin, F.EOF_ERROR, id="body-cut-by-fin"),
    # A download cut mid-body by a RST, as throttling boxes that give up on a flow
    # do (aiohttp: ClientPayloadError caused by ConnectionResetError).
    pytest.param(cut_body_with_rst, F.CONNECTION_RESET, id="body-cut-by-rst"),
])
def test_server_ending_the_exchange(handler, failure):
    assert http_failure(handler) == failure


# --- what the server says ------------------------------------------------------------ #


async def redirect_loop(reader, writer):
    while True:
        path = await read_head(reader)
        target = "/b" if path == "/a" else "/a"
        writer.write(f"HTTP/1.1 302 Found\r\nLocation: {target}\r\n"
                     "Content-Length: 0\r\n\r\n".encode())
        await writer.drain()


async def garbage_status_line(reader, writer):
    await read_head(reader)
    writer.write(b"HTTP/1.1 abc OK\r\n\r\n")
    await writer.drain()
    await reader.read()  # until the client gives up


async def plain_http_on_https_port(reader, writer):
    # A transparent proxy that answers port 443 with a plaintext HTTP redirect to
    # its warning page, whatever the client sent (a TLS ClientHello here).
    await reader.read(1024)
    writer.write(b"HTTP/1.1 302 Found\r\nLocation: http://warning.example/\r\n\r\n")
    await writer.drain()
    await reader.read()  # until the client gives up


async def silent(reader, writer):
    await reader.read()  # a blackhole after the handshake: never answers, until the client leaves


def test_same_host_redirect_loop_is_too_many_redirects():
    # aiohttp: TooManyRedirects (raised by our own same-host redirect loop).
    assert http_failure(redirect_loop, max_redirects=3) == F.HTTP_TOO_MANY_REDIRECTS


def test_unparseable_status_line_is_invalid_response():
    # aiohttp: ClientResponseError (its parser refused the status line).
    assert http_failure(garbage_status_line) == F.HTTP_INVALID_RESPONSE


def test_plaintext_answer_to_a_client_hello_is_failed_handshake():
    # aiohttp: ClientConnectorSSLError wrapping ssl.SSLError (wrong version number).
    assert http_failure(plain_http_on_https_port, scheme="https") == F.SSL_FAILED_HANDSHAKE


def test_silent_server_is_timeout():
    assert http_failure(silent) == F.GENERIC_TIMEOUT


def test_refused_connection_is_unwrapped():
    # aiohttp: ClientConnectorError whose os_error is ConnectionRefusedError.
    with refused_port() as port:
        request = HttpRequest(f"http://example.org:{port}/", LOOPBACK)
        result = asyncio.run(LiveNetwork().http_request(request, TIMEOUT))
    assert result.failure == F.CONNECTION_REFUSED


def test_control_helper_with_an_untrusted_certificate_is_unknown_authority(lab_pki):
    # The control call verifies certificates (page requests do not: the TLS step
    # judged them). A helper behind an intercepting proxy presents a chain to a
    # root the system does not trust. aiohttp: ClientConnectorCertificateError.
    with start_https(lab_pki) as server:
        request = ControlRequest(f"https://127.0.0.1:{server.port}/measure", {})
        result = asyncio.run(LiveNetwork().control_call(request, TIMEOUT))
    assert result.failure == F.SSL_UNKNOWN_AUTHORITY
