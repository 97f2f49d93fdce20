"""An HTTP/3 origin over QUIC (aioquic), the lab's stand-in for a web front speaking h3.

It completes a QUIC handshake (ALPN ``h3``) with one certificate, given as
files or PEM, and answers every GET with a small HTML page, or with
``body_size`` bytes for a transfer. A server given a leaf from another root is
the "wrong certificate" server; ``respond`` makes it reset every request
stream (``reset``) or answer without a ``:status`` (``no_status``). It speaks
QUIC only: no HTTP/1 fallback, no 0-RTT, no Retry. Connections are bounded:
at most ``limits.max_connections`` at once (more are closed at once), each
closed when idle ``limits.idle_timeout``.
"""

from __future__ import annotations

import asyncio
import socket
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import QuicServer
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import H3Event, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, ProtocolNegotiated, QuicEvent

from probe.lab.pki import KeyPair
from probe.lab.servers.stream import Endpoint, Limits, bind_socket

MAX_BODY = 64 << 20
RESPONSES = ("answer", "reset", "no_status")


def page(title: str) -> bytes:
    return f"<!doctype html><title>{title}</title><h1>{title}</h1>\n".encode()


def quic_configuration(
    certificate: KeyPair | tuple[bytes, bytes], idle_timeout: float
) -> QuicConfiguration:
    """A server configuration from a key pair's files, or from (certificate PEM, key PEM)."""
    configuration = QuicConfiguration(
        is_client=False, alpn_protocols=list(H3_ALPN), idle_timeout=idle_timeout
    )
    if isinstance(certificate, KeyPair):
        configuration.load_cert_chain(certificate.cert, certificate.key)
        return configuration
    cert_pem, key_pem = certificate
    # aioquic reads certificates from files only; the PEM lives on disk just long
    # enough to be loaded.
    with tempfile.TemporaryDirectory() as directory:
        cert_path, key_path = Path(directory) / "cert.pem", Path(directory) / "key.pem"
        cert_path.write_bytes(cert_pem)
        key_path.write_bytes(key_pem)
        configuration.load_cert_chain(cert_path, key_path)
    return configuration


class _H3Protocol(QuicConnectionProtocol):
    def __init__(self, *args: Any, server: QuicHttpServer, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.server = server
        self.http: H3Connection | None = None
        self.requests = 0
        server.connections.add(self)
        if len(server.connections) > server.limits.max_connections:
            server.turned_away += 1
            self._quic.close(error_code=0x2, reason_phrase="server full")  # CONNECTION_REFUSED

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, ProtocolNegotiated) and event.alpn_protocol in H3_ALPN:
            self.http = H3Connection(self._quic)
        if isinstance(event, ConnectionTerminated):
            self.server.connections.discard(self)
        if self.http is not None:
            for h3_event in self.http.handle_event(event):
                self._h3_event(h3_event)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        super().connection_lost(exc)

    def _h3_event(self, event: H3Event) -> None:
        if not isinstance(event, HeadersReceived) or self.http is None:
            return
        self.requests += 1
        self.server.requests += 1
        if self.server.respond == "reset":
            # A server (or a gateway in front of it) refusing the request: RESET_STREAM
            # with H3_REQUEST_REJECTED (RFC 9114 section 8.1).
            self._quic.reset_stream(event.stream_id, 0x10B)
            self.transmit()
            return
        headers = dict(event.headers)
        method = headers.get(b":method", b"")
        body = self.server.body if method == b"GET" else b""
        status = b"200" if method == b"GET" else b"405"
        pseudo = [] if self.server.respond == "no_status" else [(b":status", status)]
        self.http.send_headers(
            event.stream_id,
            [
                *pseudo,
                (b"server", b"probe-lab-h3"),
                (b"content-type", b"text/html" if self.server.body_size is None
                 else b"application/octet-stream"),
                (b"content-length", str(len(body)).encode()),
            ],
        )
        self.http.send_data(event.stream_id, body, end_stream=True)
        self.transmit()


class QuicHttpServer:
    """HTTP/3 on each endpoint; see the module docstring."""

    kind = "quic"

    def __init__(
        self,
        listen: Sequence[Endpoint],
        certificate: KeyPair | tuple[bytes, bytes],
        *,
        title: str = "HTTP/3 works",
        body_size: int | None = None,
        respond: str = "answer",
        limits: Limits | None = None,
    ) -> None:
        if not listen:
            raise ValueError("quic server: nothing to listen on")
        if body_size is not None and not 0 <= body_size <= MAX_BODY:
            raise ValueError(f"body_size must be between 0 and {MAX_BODY}")
        if respond not in RESPONSES:
            raise ValueError(f"respond must be one of {RESPONSES}, not {respond!r}")
        self.respond = respond
        self.listen = [(host, int(port)) for host, port in listen]
        self.limits = limits or Limits()
        self.configuration = quic_configuration(certificate, self.limits.idle_timeout)
        self.body_size = body_size
        self.body = page(title) if body_size is None else bytes(body_size)
        self.endpoints: list[Endpoint] = []
        self.connections: set[_H3Protocol] = set()
        self.requests = 0
        self.turned_away = 0
        self._servers: list[QuicServer] = []

    def _protocol(self, *args: Any, **kwargs: Any) -> _H3Protocol:
        return _H3Protocol(*args, server=self, **kwargs)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            for host, port in self.listen:
                sock = bind_socket(host, port, socket.SOCK_DGRAM)
                self.endpoints.append(sock.getsockname()[:2])
                _, server = await loop.create_datagram_endpoint(
                    lambda: QuicServer(
                        configuration=self.configuration, create_protocol=self._protocol
                    ),
                    sock=sock,
                )
                self._servers.append(server)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        self._servers.clear()
        self.connections.clear()
        await asyncio.sleep(0)  # let the transports close

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        return self.endpoints[0][1]
