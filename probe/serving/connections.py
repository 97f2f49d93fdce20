"""How many connections a server holds, from whom, and for how long: one guard for both servers.

The control helper and the collector serve an ``aiohttp.web.Application``
through :func:`serving`, which puts a :class:`ConnectionGuard` in front of
aiohttp. The guard bounds open connections in total and per client
(:func:`probe.serving.clients.client_key`: an IPv4 address or an IPv6 /64),
rate-limits a client's new connections, and closes a connection that does not
send a complete request head in time: from accept (slowloris trickles its head a
byte at a time, which aiohttp alone tolerates), and again after each response
(an idle or trickling keep-alive connection). A refused connection is closed
in the very call that accepted it (:class:`Listener`, our own accept loop),
before anything is read from it. Enough file descriptors are reserved at start
for the total cap, so an accept() does not fail for want of one (the storm of
"accept() out of system resource" log lines). Handlers are not this module's
business: a request body's pace is bounded by the handler that reads it. Client
addresses are kept in memory for counting only, never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import resource
import socket
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from probe.serving.buckets import TokenBuckets
from probe.serving.clients import client_key

log = logging.getLogger("probe.serving")

# Descriptors kept for everything but client connections: files, workers, the
# listening sockets, connections evicted but not yet closed (released on the
# next turn of the loop).
FD_RESERVE = 64
FD_COMFORT = 65536  # the soft limit asked for when the hard one allows: outgoing sockets too


@dataclass(frozen=True)
class ConnectionLimits:
    """Every connection-level bound of a server facing the Internet."""

    max_connections: int = 1024  # open client connections in all; more are closed at once
    max_per_client: int = 32  # open connections from one client (an IPv4 address, an IPv6 /64)
    client_rate: float = 4.0  # new connections per second per client, sustained
    client_burst: float = 64.0  # new connections per client at once
    header_timeout: float = 10.0  # seconds from accept to a complete request head
    idle_timeout: float = 15.0  # seconds from a response to the next complete request head
    lifetime: float = 600.0  # no connection lives longer, between requests
    max_tracked: int = 100_000  # clients held in memory for the rate limit

    def __post_init__(self) -> None:
        if self.max_connections < 1 or self.max_per_client < 1:
            raise ValueError("connection caps must be at least 1")
        if min(self.header_timeout, self.idle_timeout, self.lifetime) <= 0:
            raise ValueError("connection timeouts must be positive")
        if self.client_rate <= 0 or self.client_burst < 1:
            raise ValueError("a connection rate needs client_rate > 0 and client_burst >= 1")


class _Connection:
    """One admitted connection: its aiohttp handler, its client and its clock.

    Its transport is set once asyncio has made it (``None`` before, and again
    once the guard has forgotten it).
    """

    __slots__ = ("guard", "handler", "client", "transport", "opened", "idle_since",
                 "requests", "active", "buffered")

    def __init__(self, guard: ConnectionGuard, handler: asyncio.Protocol) -> None:
        self.guard = guard
        self.handler = handler
        self.client = ""
        self.transport: asyncio.Transport | None = None
        self.opened = self.idle_since = time.monotonic()
        self.requests = 0  # request heads received so far
        self.active = 0  # requests being handled now
        self.buffered = 0  # bytes of response not yet taken by the kernel, at the last sweep


class _Gate(asyncio.Protocol):
    """The protocol asyncio calls for an admitted connection.

    It hands every event on to aiohttp's request handler, so the guard learns of
    a close the moment it happens.
    """

    def __init__(self, guard: ConnectionGuard, connection: _Connection) -> None:
        self.guard = guard
        self.connection: _Connection | None = connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        connection = self.connection
        assert connection is not None
        if not isinstance(transport, asyncio.Transport):  # a stream server's always is
            self.connection = None
            self.guard.forget(connection)
            transport.close()
            return
        if self.guard.connections.get(id(connection.handler)) is not connection:
            self.connection = None  # made room for a newcomer before it was even made
            transport.abort()
            return
        connection.transport = transport
        connection.handler.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.connection is not None:
            self.connection.handler.data_received(data)

    def eof_received(self) -> bool | None:
        if self.connection is not None:
            return self.connection.handler.eof_received()
        return None

    def pause_writing(self) -> None:
        if self.connection is not None:
            self.connection.handler.pause_writing()

    def resume_writing(self) -> None:
        if self.connection is not None:
            self.connection.handler.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.connection is not None:
            self.guard.forget(self.connection)
            self.connection.handler.connection_lost(exc)


class IdleConnections:
    """Connections with no request being handled, grouped by client.

    ``victim()`` is the one to close when the server is full: the longest idle
    connection of the client that holds the most idle connections, found in
    constant time. To push out a client holding one connection, an attacker must
    first bring every client down to one, which takes as many addresses as the
    server has places.
    """

    def __init__(self) -> None:
        self.by_client: dict[str, OrderedDict[int, _Connection]] = {}
        self._clients_holding: dict[int, dict[str, None]] = {}  # count -> clients, in order
        self._most = 0

    def __len__(self) -> int:
        return sum(len(held) for held in self.by_client.values())

    def __contains__(self, connection: _Connection) -> bool:
        return id(connection.handler) in self.by_client.get(connection.client, ())

    def add(self, connection: _Connection) -> None:
        """Mark idle (again): last in its client's line."""
        held = self.by_client.setdefault(connection.client, OrderedDict())
        key = id(connection.handler)
        if key in held:
            held.move_to_end(key)
            return
        self._move(connection.client, len(held), len(held) + 1)
        held[key] = connection
        self._most = max(self._most, len(held))

    def discard(self, connection: _Connection) -> None:
        held = self.by_client.get(connection.client)
        key = id(connection.handler)
        if held is None or key not in held:
            return
        self._move(connection.client, len(held), len(held) - 1)
        del held[key]
        if not held:
            del self.by_client[connection.client]

    def victim(self) -> _Connection | None:
        while self._most and not self._clients_holding.get(self._most):
            self._most -= 1
        if not self._most:
            return None
        client = next(iter(self._clients_holding[self._most]))
        return next(iter(self.by_client[client].values()))

    def _move(self, client: str, old: int, new: int) -> None:
        if old:
            clients = self._clients_holding[old]
            del clients[client]
            if not clients:
                del self._clients_holding[old]
        if new:
            self._clients_holding.setdefault(new, {})[client] = None


class ConnectionGuard:
    """Admits, counts and times out the connections of one listening server."""

    def __init__(
        self, limits: ConnectionLimits, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limits = limits
        self.clock = clock
        self.connections: dict[int, _Connection] = {}  # id(aiohttp handler) -> connection
        self.idle = IdleConnections()  # when the server is full, a newcomer replaces one
        self.per_client: Counter[str] = Counter()
        self.rate = TokenBuckets(
            limits.client_rate, limits.client_burst, limits.max_tracked, clock
        )
        self.refused: Counter[str] = Counter()  # why connections were refused, for stats
        self.closed: Counter[str] = Counter()  # why the guard closed connections
        self._make_handler: Callable[[], asyncio.Protocol] | None = None

    def attach(self, server: web.Server) -> None:
        """The aiohttp server whose request handlers serve admitted connections."""
        self._make_handler = server  # type: ignore[assignment]  # web.Server() makes handlers

    def admit(self, peer: Any) -> _Connection | None:
        """A new connection to serve, or None to close it at once (and why, in ``refused``).

        A client over its own cap or rate is refused. When the server is full,
        an idle connection (still trickling its first request head, or between
        requests) is closed to make room, the longest idle of the client holding
        the most (:class:`IdleConnections`): otherwise slow connections from
        enough addresses would hold every place and nobody new could get in.
        Only with every connection busy is a newcomer refused.
        """
        client = client_key(peer[0] if isinstance(peer, tuple) and peer else None)
        if self.per_client[client] >= self.limits.max_per_client:
            self.refused["per_client"] += 1
            return None
        if self.rate.take(client):
            self.refused["rate"] += 1
            return None
        if len(self.connections) >= self.limits.max_connections:
            victim = self.idle.victim()
            if victim is None:
                self.refused["total"] += 1
                return None
            self.closed["evicted"] += 1
            self._close(victim)
        assert self._make_handler is not None, "attach() first"
        connection = _Connection(self, self._make_handler())
        connection.client = client
        connection.opened = connection.idle_since = self.clock()
        self.connections[id(connection.handler)] = connection
        self.idle.add(connection)
        self.per_client[client] += 1
        return connection

    def _close(self, connection: _Connection) -> None:
        """Close a connection and stop counting it now (its close completes later)."""
        transport = connection.transport
        self.forget(connection)
        if transport is None:
            return
        if transport.get_write_buffer_size():
            transport.abort()  # a reader that stopped reading: close() would wait on it
        else:
            transport.close()

    def forget(self, connection: _Connection) -> None:
        if self.connections.pop(id(connection.handler), None) is None:
            return
        self.idle.discard(connection)
        self.per_client[connection.client] -= 1
        if self.per_client[connection.client] <= 0:
            del self.per_client[connection.client]
        connection.transport = None

    @web.middleware
    async def middleware(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        """Marks a connection busy while a request it sent is handled."""
        connection = self.connections.get(id(request.protocol))
        if connection is None:
            return await handler(request)
        connection.requests += 1
        connection.active += 1
        self.idle.discard(connection)
        try:
            return await handler(request)
        finally:
            connection.active -= 1
            connection.idle_since = self.clock()
            if not connection.active and connection.transport is not None:
                self.idle.add(connection)  # the most recently idle last

    def sweep(self) -> None:
        """Close connections past their deadline for a request head, or past their life."""
        now = self.clock()
        for connection in list(self.connections.values()):
            transport = connection.transport
            if transport is None or transport.is_closing():
                continue
            if connection.active:
                connection.idle_since = now
                continue
            buffered = transport.get_write_buffer_size()
            if buffered and buffered != connection.buffered:
                connection.idle_since = now  # the client is still reading its response
                if connection in self.idle:
                    self.idle.add(connection)
            connection.buffered = buffered
            deadline = (
                self.limits.idle_timeout if connection.requests else self.limits.header_timeout
            )
            if now - connection.idle_since > deadline:
                self.closed["idle" if connection.requests else "header"] += 1
            elif now - connection.opened > self.limits.lifetime:
                self.closed["lifetime"] += 1
            else:
                continue
            self._close(connection)

    def tick(self) -> float:
        """Seconds between sweeps: a deadline is kept to within a quarter of itself."""
        return min(1.0, self.limits.header_timeout / 4, self.limits.idle_timeout / 4)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.tick())
            self.sweep()


def reserve_descriptors(wanted: int) -> int:
    """Raise the soft limit on open files to hold ``wanted`` connections (and a reserve);
    returns how many connections the limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = wanted + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < max(needed, FD_COMFORT):
        target = max(needed, FD_COMFORT)
        raised = target if hard == resource.RLIM_INFINITY else min(target, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, soft - FD_RESERVE))


ACCEPT_BATCH = 256  # connections accepted per turn of the loop, at most
BACKLOG = 256  # connections the kernel holds for us between turns
PAUSE_WHEN_OUT_OF_DESCRIPTORS = 1.0  # seconds, as asyncio's own accept loop


async def listening_sockets(host: str | None, port: int) -> list[socket.socket]:
    """Bound, listening, non-blocking sockets for ``host`` (every address it names;
    every interface if empty) and ``port``, as ``loop.create_server`` would make."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(
            (i[0], i[1], i[2], "", i[4]) for i in infos
        ):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    if not sockets:
        raise OSError(f"no address to listen on for {host!r}")
    return sockets


class Listener:
    """Accepts connections on one socket and lets the guard decide, before any transport.

    asyncio's own accept loop hands a connection to the protocol only two or three
    turns of the loop after accepting it, so a refused one would hold its
    descriptor that long while hundreds more are accepted: a flood then runs the
    server out of descriptors, and asyncio logs "accept() out of system resource"
    for each failed accept. Here a refused connection is closed within the very
    call that accepted it, unread; an admitted one becomes a transport through
    ``loop.connect_accepted_socket``. Out of descriptors anyway, accepting pauses
    for a second, counted and not logged.
    """

    def __init__(self, sock: socket.socket, guard: ConnectionGuard) -> None:
        self.sock = sock
        self.guard = guard
        self.loop = asyncio.get_running_loop()
        self._starting: set[asyncio.Task[Any]] = set()
        self._resume: asyncio.TimerHandle | None = None
        self._closed = False

    def start(self) -> None:
        if not self._closed:
            self._resume = None
            self.loop.add_reader(self.sock.fileno(), self._accept)

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, peer = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # gone before we got to it
            except OSError as error:
                if error.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    raise
                self.guard.refused["descriptors"] += 1
                self.loop.remove_reader(self.sock.fileno())
                self._resume = self.loop.call_later(PAUSE_WHEN_OUT_OF_DESCRIPTORS, self.start)
                return
            connection = self.guard.admit(peer)
            if connection is None:
                sock.close()  # at once: nothing read
                continue
            sock.setblocking(False)
            task = self.loop.create_task(self._start(sock, connection))
            self._starting.add(task)
            task.add_done_callback(self._starting.discard)

    async def _start(self, sock: socket.socket, connection: _Connection) -> None:
        try:
            await self.loop.connect_accepted_socket(lambda: _Gate(self.guard, connection), sock)
        except OSError:  # the peer went away meanwhile
            self.guard.forget(connection)
            sock.close()
        except asyncio.CancelledError:  # the server is stopping
            self.guard.forget(connection)
            sock.close()
            raise

    def close(self) -> None:
        self._closed = True
        if self._resume is not None:
            self._resume.cancel()
        self.loop.remove_reader(self.sock.fileno())
        for task in self._starting:
            task.cancel()
        self.sock.close()


@dataclass
class Serving:
    """A server listening through a guard: where it is bound, and its guard."""

    address: tuple[str, int]  # the bound host and port (port 0 asked: the port given)
    guard: ConnectionGuard

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@contextlib.asynccontextmanager
async def serving(
    app: web.Application,
    host: str,
    port: int,
    limits: ConnectionLimits,
    **runner_kwargs: Any,
) -> AsyncIterator[Serving]:
    """Serve ``app`` on ``host``:``port`` through a connection guard, while in the block.

    ``runner_kwargs`` go to ``aiohttp.web.AppRunner`` (``handler_cancellation``,
    ``auto_decompress``, ``shutdown_timeout``...); aiohttp's access log is always
    off, since it would write every client's address. On leaving the block the
    listening socket closes and requests in flight get ``shutdown_timeout`` to end.
    """
    allowed = reserve_descriptors(limits.max_connections)
    if allowed < limits.max_connections:
        log.warning(
            "open-file limit too low for %d connections: serving at most %d",
            limits.max_connections, allowed,
        )
        limits = dataclasses.replace(limits, max_connections=allowed)
    guard = ConnectionGuard(limits)
    app.middlewares.append(guard.middleware)
    runner_kwargs["access_log"] = None
    # aiohttp's own keep-alive timer closes an idle connection too; the guard's
    # deadlines are the tighter ones.
    runner_kwargs.setdefault("keepalive_timeout", max(limits.header_timeout, limits.idle_timeout))
    runner = web.AppRunner(app, **runner_kwargs)
    await runner.setup()
    try:
        if runner.server is None:  # setup() creates it
            raise RuntimeError("aiohttp's AppRunner has no server after setup()")
        guard.attach(runner.server)
        loop = asyncio.get_running_loop()
        listeners = [Listener(sock, guard) for sock in await listening_sockets(host, port)]
        sweeper = loop.create_task(guard.run(), name="connection-guard")
        try:
            for listener in listeners:
                listener.start()
            bound = listeners[0].sock.getsockname()
            yield Serving((str(bound[0]), int(bound[1])), guard)
        finally:
            sweeper.cancel()
            for listener in listeners:
                listener.close()
    finally:
        await runner.cleanup()
