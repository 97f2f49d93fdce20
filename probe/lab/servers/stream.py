"""Accepted TCP connections, optionally TLS, and the bounded server handing them out.

Every lab server is a :class:`StreamServer` subclass whose ``handle`` gets a
:class:`Connection`. The server owns the limits: at most ``max_connections``
at once (more are reset on accept), every read waits at most ``idle_timeout``,
every connection lives at most ``lifetime``, and ``stop()`` cancels them all.

TLS is done by hand over memory BIOs rather than with asyncio's built-in TLS
because asyncio aborts the socket when a handshake fails server-side, so the
alert OpenSSL wrote (e.g. ``unrecognized_name`` from an SNI callback) never
reaches the client; the engine must see that alert for real.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, Self

Endpoint = tuple[str, int]

_CHUNK = 65536


IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)  # Linux; applies to IPv6 sockets too


def bind_socket(host: str, port: int, kind: socket.SocketKind) -> socket.socket:
    """A bound, non-blocking socket for a server endpoint.

    IP_FREEBIND lets a server start before its address is usable: inside a lab
    namespace an IPv6 address stays "tentative" for a second or two after
    ``ip addr add`` (duplicate address detection) and a plain bind fails with
    EADDRNOTAVAIL. IPv6 sockets are V6ONLY so that ``[::]`` and ``0.0.0.0`` can
    be bound side by side.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, kind)
    try:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
        sock.bind((host, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


@dataclass(frozen=True)
class Limits:
    """Bounds every lab server enforces; seconds and counts."""

    max_connections: int = 256
    idle_timeout: float = 15.0  # longest wait for the peer's next bytes
    lifetime: float = 120.0  # longest life of one connection
    handshake_timeout: float = 10.0  # longest TLS handshake
    max_request: int = 1 << 20  # largest request (headers, body, DNS message) we read


class Connection:
    """One accepted connection: bounded reads with push-back, writes, TLS, reset."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limits: Limits
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.limits = limits
        self._buffer = bytearray()
        self._tls: ssl.SSLObject | None = None
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._closed = False

    @property
    def peer(self) -> Endpoint:
        return self._writer.get_extra_info("peername")[:2]

    @property
    def local(self) -> Endpoint:
        return self._writer.get_extra_info("sockname")[:2]

    @property
    def tls(self) -> ssl.SSLObject | None:
        """The TLS session once :meth:`start_tls` succeeded."""
        return self._tls

    @property
    def socket(self) -> socket.socket | None:
        return self._writer.get_extra_info("socket")

    # -- reading ------------------------------------------------------------ #

    async def _read_transport(self) -> bytes:
        async with asyncio.timeout(self.limits.idle_timeout):
            return await self._reader.read(_CHUNK)

    async def _read_raw(self) -> bytes:
        if self._tls is None:
            return await self._read_transport()
        while True:
            try:
                return self._tls.read(_CHUNK)
            except ssl.SSLWantReadError:
                await self._flush_tls()
                data = await self._read_transport()
                if not data:
                    return b""
                self._incoming.write(data)
            except ssl.SSLZeroReturnError:
                return b""

    async def recv(self, max_bytes: int = _CHUNK) -> bytes:
        """Up to ``max_bytes``; b"" at end of stream; TimeoutError when idle too long."""
        if not self._buffer:
            self._buffer += await self._read_raw()
        data = bytes(self._buffer[:max_bytes])
        del self._buffer[:max_bytes]
        return data

    async def recv_exactly(self, count: int) -> bytes:
        """Exactly ``count`` bytes, or asyncio.IncompleteReadError at end of stream."""
        while len(self._buffer) < count:
            data = await self._read_raw()
            if not data:
                raise asyncio.IncompleteReadError(bytes(self._buffer), count)
            self._buffer += data
        data = bytes(self._buffer[:count])
        del self._buffer[:count]
        return data

    async def recv_until(self, separator: bytes, limit: int) -> bytes:
        """Bytes up to and including ``separator``; ValueError past ``limit`` bytes,
        IncompleteReadError at end of stream."""
        start = 0
        while True:
            index = self._buffer.find(separator, start)
            if index >= 0:
                end = index + len(separator)
                if end > limit:
                    raise ValueError(f"no {separator!r} within {limit} bytes")
                data = bytes(self._buffer[:end])
                del self._buffer[:end]
                return data
            if len(self._buffer) > limit:
                raise ValueError(f"no {separator!r} within {limit} bytes")
            start = max(0, len(self._buffer) - len(separator) + 1)
            data = await self._read_raw()
            if not data:
                raise asyncio.IncompleteReadError(bytes(self._buffer), None)
            self._buffer += data

    def unread(self, data: bytes) -> None:
        """Push bytes back, to be read again first (protocol sniffing)."""
        self._buffer[:0] = data

    # -- writing ------------------------------------------------------------ #

    async def _flush_tls(self) -> None:
        if self._outgoing.pending:
            self._writer.write(self._outgoing.read())
            await self._writer.drain()

    async def send(self, data: bytes) -> None:
        """Write ``data`` and wait until the kernel took it (backpressure)."""
        if self._tls is None:
            self._writer.write(data)
            await self._writer.drain()
            return
        for start in range(0, len(data), _CHUNK):
            self._tls.write(data[start : start + _CHUNK])
            await self._flush_tls()

    async def send_eof(self) -> None:
        """Half-close: TLS close_notify, or a TCP FIN (reads stay possible)."""
        if self._tls is not None:
            with contextlib.suppress(ssl.SSLError):
                self._tls.unwrap()
            await self._flush_tls()
            return
        if self._writer.can_write_eof():
            self._writer.write_eof()

    # -- TLS ---------------------------------------------------------------- #

    async def start_tls(self, context: ssl.SSLContext) -> ssl.SSLObject:
        """Server-side TLS handshake. On failure the alert OpenSSL produced is
        sent before the ssl.SSLError propagates."""
        if self._buffer:
            self._incoming.write(bytes(self._buffer))
            self._buffer.clear()
        tls = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        async with asyncio.timeout(self.limits.handshake_timeout):
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    await self._flush_tls()
                    data = await self._reader.read(_CHUNK)
                    if not data:
                        raise ConnectionAbortedError("EOF during the TLS handshake") from None
                    self._incoming.write(data)
                except ssl.SSLError:
                    with contextlib.suppress(OSError):
                        await self._flush_tls()
                    raise
        self._tls = tls
        await self._flush_tls()  # TLS 1.3 session tickets
        return tls

    # -- closing ------------------------------------------------------------ #

    def reset(self) -> None:
        """Close with a TCP RST (SO_LINGER 0), like a censor's or a crashed server's reset."""
        sock = self.socket
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._closed = True
        self._writer.transport.abort()

    async def close(self) -> None:
        """Orderly close (close_notify for TLS, then FIN), bounded in time."""
        if self._closed:
            return
        self._closed = True
        try:
            async with asyncio.timeout(1.0):
                if self._tls is not None:
                    await self.send_eof()
                self._writer.close()
                await self._writer.wait_closed()
        except (OSError, TimeoutError, ssl.SSLError):
            self._writer.transport.abort()


class StreamServer:
    """A TCP server on one or more endpoints handing connections to ``handle``.

    Use as ``async with Server(...) as server`` or ``await start()`` / ``await
    stop()``; ``endpoints`` are the addresses actually bound (port 0 picks one).
    """

    kind = "stream"

    def __init__(self, listen: Sequence[Endpoint], limits: Limits | None = None) -> None:
        if not listen:
            raise ValueError(f"{self.kind} server: nothing to listen on")
        self.listen = [(host, int(port)) for host, port in listen]
        self.limits = limits or Limits()
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.endpoints: list[Endpoint] = []
        self.accepted = 0  # connections handled since start
        self.turned_away = 0  # connections reset because the server was full

    async def start(self) -> None:
        try:
            for host, port in self.listen:
                sock = bind_socket(host, port, socket.SOCK_STREAM)
                server = await asyncio.start_server(self._accept, sock=sock, limit=_CHUNK)
                self._servers.append(server)
                self.endpoints.append(sock.getsockname()[:2])
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
        for server in self._servers:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await server.wait_closed()
        self._servers.clear()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        """The port of the first endpoint (handy with port 0 in tests)."""
        return self.endpoints[0][1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = Connection(reader, writer, self.limits)
        if len(self._tasks) >= self.limits.max_connections:
            self.turned_away += 1
            connection.reset()
            return
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.accepted += 1
        try:
            async with asyncio.timeout(self.limits.lifetime):
                await self.handle(connection)
        except (
            OSError,
            TimeoutError,
            ssl.SSLError,
            asyncio.IncompleteReadError,
            ValueError,
        ):
            pass  # the peer went away, stalled or sent nonsense: nothing to report
        except asyncio.CancelledError:
            # stop() cancelled us. This task is the connection's top level, so it
            # ends here; letting CancelledError out makes asyncio 3.11's stream
            # callback print a spurious traceback.
            connection.reset()
        finally:
            self._tasks.discard(task)
            await connection.close()

    async def handle(self, connection: Connection) -> None:
        raise NotImplementedError


class Server(Protocol):
    """What every lab server offers, stream-based or not (the DNS server is both UDP and TCP)."""

    kind: str
    endpoints: list[Endpoint]

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


async def serve_until(server: Server, stop: asyncio.Event) -> None:
    """Run ``server`` until ``stop`` is set, then stop it."""
    await server.start()
    try:
        await stop.wait()
    finally:
        await server.stop()
