"""Live QUIC: a handshake (ALPN h3, with SNI) to a fixed address, then one HTTP/3 GET.

QUIC and HTTP/3 are aioquic's (no QUIC is written by hand here); this module
drives one client connection on its own connected UDP socket, so that an ICMP
error (a closed port, a filter's "prohibited") is seen and read from the
error queue, and records what the handshake showed: version, handshake time,
ALPN, the peer's certificate chain (base64 DER, leaf first; the handshake does
not verify it, verification is ``probe.certificates``'s pure step), then the
response's status, headers and a capped body. It never raises for network
trouble: every way the exchange fails becomes one failure string of
``probe.net.failures`` with the phase (handshake or http) where it happened.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import ssl
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3Connection
from aioquic.h3.events import DataReceived, H3Event, HeadersReceived
from aioquic.h3.exceptions import H3Error
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import (
    ConnectionTerminated,
    HandshakeCompleted,
    QuicEvent,
    StreamReset,
)
from cryptography.hazmat.primitives.serialization import Encoding

from probe.net import failures, icmp
from probe.net.network import QuicRequest, QuicResult, Timing

HANDSHAKE = "handshake"
HTTP = "http"
MAX_HEADERS = 100
MAX_HEADER_BYTES = 16384
USER_AGENT = b"probe"


def _version(value: int | None) -> str | None:
    return None if value is None else f"0x{value:08x}"


class _Client(QuicConnectionProtocol):
    """One client connection: counts what came back and turns events into state."""

    def __init__(self, quic: QuicConnection, sock: socket.socket, request: QuicRequest) -> None:
        super().__init__(quic)
        self.sock = sock
        self.request = request
        self.packets_received = 0
        self.version_negotiation = False
        self.network_failure: str | None = None  # an ICMP error, a failed send
        self.handshake_at: float | None = None
        self.terminated: ConnectionTerminated | None = None
        self.http: H3Connection | None = None
        self.stream_id: int | None = None
        self.stream_reset = False
        self.http_error = False
        self.status: int | None = None
        self.headers: list[tuple[str, str]] = []
        self.body = bytearray()
        self.body_length = 0
        self.done = False
        self.changed = asyncio.Event()

    # -- datagrams and errors ------------------------------------------------ #

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        self.packets_received += 1
        # A long header (first bit set) with version 0 is a Version Negotiation
        # packet (RFC 9000 section 17.2.1): the server speaks none of our versions.
        if isinstance(data, bytes) and len(data) >= 5 and data[0] & 0x80 and not any(data[1:5]):
            self.version_negotiation = True
        super().datagram_received(data, addr)
        self.changed.set()

    def error_received(self, exc: Exception) -> None:
        error = icmp.read_error(self.sock)
        while icmp.read_error(self.sock) is not None:
            pass  # drained: a queued error keeps the socket readable
        if self.network_failure is None:
            if error is not None:
                self.network_failure = failures.icmp_error_failure(
                    error.errno, error.version, error.icmp_type, error.icmp_code
                )
            else:
                self.network_failure = failures.classify(exc)
        self.changed.set()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- QUIC and HTTP/3 events ---------------------------------------------- #

    def quic_event_received(self, event: QuicEvent) -> None:
        # The base class's asyncio streams are not used: HTTP/3 reads the events.
        if isinstance(event, HandshakeCompleted):
            self.handshake_at = self._loop.time()
        elif isinstance(event, ConnectionTerminated):
            self.terminated = event
        elif isinstance(event, StreamReset) and event.stream_id == self.stream_id:
            self.stream_reset = True
        if self.http is not None:
            try:
                for h3_event in self.http.handle_event(event):
                    self._h3_event(h3_event)
            except H3Error:
                self.http_error = True
        self.changed.set()

    def _h3_event(self, event: H3Event) -> None:
        if getattr(event, "stream_id", None) != self.stream_id:
            return
        if isinstance(event, HeadersReceived) and self.status is None:
            size = 0
            for name, value in event.headers[:MAX_HEADERS]:
                size += len(name) + len(value)
                if size > MAX_HEADER_BYTES:
                    break
                if name == b":status":
                    self.status = int(value) if value.isdigit() else None
                    if self.status is None:
                        self.http_error = True
                elif not name.startswith(b":"):
                    self.headers.append((name.decode("latin-1"), value.decode("latin-1")))
            if not any(name == b":status" for name, _ in event.headers):
                self.http_error = True
        elif isinstance(event, DataReceived):
            self.body_length += len(event.data)
            room = self.request.max_body - len(self.body)
            self.body += event.data[: max(0, room)]
            if len(self.body) >= self.request.max_body:
                self.done = True  # capped: the rest is not ours to wait for
        if getattr(event, "stream_ended", False):
            self.done = True

    def send_get(self) -> None:
        url = urlsplit(self.request.url)
        path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        self.http = H3Connection(self._quic)
        self.stream_id = self._quic.get_next_available_stream_id()
        self.http.send_headers(
            self.stream_id,
            [
                (b":method", b"GET"),
                (b":scheme", b"https"),
                (b":authority", (url.netloc or self.request.address).encode()),
                (b":path", path.encode()),
                (b"user-agent", USER_AGENT),
            ],
            end_stream=True,
        )
        self.transmit()

    def peer_certificates(self) -> tuple[str, ...]:
        context = getattr(self._quic, "tls", None)
        leaf = getattr(context, "_peer_certificate", None)
        if leaf is None:
            return ()
        chain = [leaf, *getattr(context, "_peer_certificate_chain", [])]
        return tuple(base64.b64encode(c.public_bytes(Encoding.DER)).decode() for c in chain)


def _open(address: str, port: int) -> tuple[socket.socket, Any]:
    family, kind, proto, _, sockaddr = socket.getaddrinfo(
        address, port, type=socket.SOCK_DGRAM, flags=socket.AI_NUMERICHOST
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setblocking(False)
        icmp.enable(sock)
        sock.connect(sockaddr)
    except BaseException:
        sock.close()
        raise
    return sock, sockaddr


def _configuration(request: QuicRequest, timeout: float) -> QuicConfiguration:
    configuration = QuicConfiguration(
        is_client=True,
        alpn_protocols=list(request.alpn),
        server_name=request.sni,
        idle_timeout=max(timeout, 0.1),
        verify_mode=ssl.CERT_NONE,  # the chain is recorded, then verified apart
    )
    return configuration


async def quic_exchange(request: QuicRequest, timeout: float, clock: Callable[[], float]) -> (
    QuicResult
):
    loop = asyncio.get_running_loop()
    t0 = clock()
    client: _Client | None = None
    transport = None
    failure: str | None = None
    phase: str | None = None
    started = loop.time()
    try:
        sock, sockaddr = _open(request.address, request.port)
    except (OSError, ValueError) as exc:
        return _result(request, None, failures.classify(exc), HANDSHAKE, None, t0, clock())
    try:
        connection = QuicConnection(configuration=_configuration(request, timeout))
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: _Client(connection, sock, request), sock=sock
        )
        client = protocol
        started = loop.time()
        client.connect(sockaddr, transmit=True)
        async with asyncio.timeout(timeout):
            failure, phase = await _run(client)
    except TimeoutError:
        failure = failures.GENERIC_TIMEOUT
        phase = HTTP if client is not None and client.handshake_at is not None else HANDSHAKE
    except Exception as exc:  # aioquic raising on hostile input: one failure, never a crash
        failure = failures.classify(exc)
        phase = HTTP if client is not None and client.handshake_at is not None else HANDSHAKE
    finally:
        ended = clock()
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()  # CONNECTION_CLOSE, sent once; no draining wait
        if transport is not None:
            transport.close()
        else:
            sock.close()
    handshake_time = None
    if client is not None and client.handshake_at is not None:
        handshake_time = round(client.handshake_at - started, 6)
    return _result(request, client, failure, phase, handshake_time, t0, ended)


async def _run(client: _Client) -> tuple[str | None, str | None]:
    """Wait for the handshake, send the GET, wait for its answer: (failure, phase)."""
    while True:
        if client.network_failure is not None and client.handshake_at is None:
            return client.network_failure, HANDSHAKE
        if client.version_negotiation and client.handshake_at is None:
            return failures.QUIC_VERSION_NEGOTIATION, HANDSHAKE
        if client.handshake_at is not None and client.http is None:
            client.send_get()
            continue
        if client.http is not None:
            if client.stream_reset:
                return failures.QUIC_STREAM_RESET, HTTP
            if client.http_error:
                return failures.HTTP3_INVALID_RESPONSE, HTTP
            if client.done:
                if client.status is None:
                    return failures.HTTP3_INVALID_RESPONSE, HTTP
                return None, None
        if client.terminated is not None:
            event = client.terminated
            phase = HTTP if client.handshake_at is not None else HANDSHAKE
            if client.packets_received == 0:
                return client.network_failure or failures.GENERIC_TIMEOUT, phase
            failure = failures.quic_close_failure(
                event.error_code, event.frame_type, event.reason_phrase
            )
            return failure, phase
        if client.network_failure is not None:
            return client.network_failure, HTTP
        client.changed.clear()
        await client.changed.wait()


def _result(
    request: QuicRequest,
    client: _Client | None,
    failure: str | None,
    phase: str | None,
    handshake_time: float | None,
    t0: float,
    t: float,
) -> QuicResult:
    handshaken = client is not None and client.handshake_at is not None
    quic = client._quic if client is not None else None
    return QuicResult(
        request=request,
        failure=failure,
        failed_phase=phase if failure is not None else None,
        quic_version=_version(quic._version) if quic is not None and handshaken else None,
        handshake_time=handshake_time,
        tls_version="TLSv1.3" if handshaken else None,
        negotiated_protocol=(quic.tls.alpn_negotiated if quic is not None and handshaken
                             else None),
        peer_certificates=client.peer_certificates() if client is not None else (),
        status=client.status if client is not None else None,
        headers=tuple(client.headers) if client is not None else (),
        body=base64.b64encode(bytes(client.body)).decode() if client is not None else "",
        body_length=client.body_length if client is not None else 0,
        packets_received=client.packets_received if client is not None else 0,
        timing=Timing(t0, t),
    )
