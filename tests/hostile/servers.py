"""Hostile peers on loopback: tiny servers that misbehave on purpose.

Each peer is a few lines of asyncio around one handler, so a test reads as the
misbehaviour it provokes (send garbage, stall, trickle, lie about a length).
They bind 127.0.0.1 only, on ephemeral ports, bound every connection's life
(``LIFETIME``) and run through ``servers.running`` (tests/servers.py), which
stops them and cancels every task they started when the test's ``with`` ends.
Nothing here is a fixture of the well-behaved lab: for those see probe.lab.servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import dns.flags
import dns.message
import dns.rrset
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from servers import LOOPBACK, running

LIFETIME = 30.0  # no hostile connection outlives this, whatever a test forgets

StreamHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
DatagramHandler = Callable[[bytes, tuple, "DatagramPeer"], None]


# --------------------------------------------------------------------------- #
# The two kinds of peer                                                        #
# --------------------------------------------------------------------------- #


class StreamPeer:
    """A TCP (or TLS, given ``ssl_context``) listener handing each connection to
    ``handler(reader, writer)``; the connection is closed when the handler returns."""

    def __init__(
        self,
        handler: StreamHandler,
        *,
        ssl_context: ssl.SSLContext | None = None,
        host: str = LOOPBACK,
        port: int = 0,
    ) -> None:
        self.handler = handler
        self.ssl_context = ssl_context
        self.host = host
        self.port = port
        self.connections = 0  # accepted so far (proves a refusal never connected)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, self.host, self.port, ssl=self.ssl_context,
            ssl_handshake_timeout=5.0 if self.ssl_context else None,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            async with asyncio.timeout(LIFETIME):
                await self.handler(reader, writer)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the client gave up first (the point of most tests), or we stopped
        finally:
            self._tasks.discard(task)
            writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()


class _DatagramProtocol(asyncio.DatagramProtocol):
    def __init__(self, peer: DatagramPeer) -> None:
        self.peer = peer

    def datagram_received(self, data: bytes, addr) -> None:
        self.peer.received += 1
        self.peer.handler(data, addr, self.peer)


class DatagramPeer:
    """A UDP listener calling ``handler(data, addr, peer)`` per datagram; the
    handler answers with ``peer.send`` (from the listening socket) or
    ``peer.send_from`` (from another socket: a spoofed-looking source)."""

    def __init__(self, handler: DatagramHandler, *, host: str = LOOPBACK, port: int = 0) -> None:
        self.handler = handler
        self.host = host
        self.port = port
        self.received = 0
        self.transport: asyncio.DatagramTransport | None = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(
            lambda: _DatagramProtocol(self), local_addr=(self.host, self.port)
        )
        self.port = self.transport.get_extra_info("sockname")[1]

    def send(self, data: bytes, addr) -> None:
        assert self.transport is not None
        self.transport.sendto(data, addr)

    @staticmethod
    def send_from(source: str, data: bytes, addr) -> int:
        """Send ``data`` to ``addr`` from a fresh socket on ``source`` (another
        port, or another loopback address); returns the port it was sent from."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
            other.bind((source, 0))
            other.sendto(data, addr)
            return other.getsockname()[1]

    def later(self, delay: float, action: Callable[[], None]) -> None:
        """Run ``action`` after ``delay`` seconds (cancelled by ``stop``)."""

        async def wait_then() -> None:
            await asyncio.sleep(delay)
            action()

        task = asyncio.get_running_loop().create_task(wait_then())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def repeat(self, count: int, action: Callable[[], None]) -> None:
        """Run ``action`` ``count`` times, yielding to the loop in between (a flood)."""

        async def flood() -> None:
            for _ in range(count):
                action()
                await asyncio.sleep(0)

        task = asyncio.get_running_loop().create_task(flood())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.transport is not None:
            self.transport.close()


class DnsPeer:
    """UDP and TCP on the same loopback port, each with its own (hostile) handler.

    ``udp`` is a :data:`DatagramHandler`; ``tcp`` a :data:`StreamHandler` (None:
    answer every TCP query with ``tcp_answer``, like an honest resolver would)."""

    def __init__(
        self,
        udp: DatagramHandler | None,
        tcp: StreamHandler | None = None,
        *,
        tcp_answer: Sequence[str] = ("127.0.0.2",),
    ) -> None:
        self.udp = DatagramPeer(udp or (lambda data, addr, peer: None))
        self.tcp = StreamPeer(tcp or tcp_answering(tcp_answer))

    @property
    def port(self) -> int:
        return self.udp.port

    async def start(self) -> None:
        for _ in range(20):  # the TCP port of the same number may be taken: try again
            await self.udp.start()
            self.tcp.port = self.udp.port
            try:
                await self.tcp.start()
                return
            except OSError:
                await self.udp.stop()
                self.udp.port = 0
        raise RuntimeError("no loopback port free for both UDP and TCP")

    async def stop(self) -> None:
        await self.udp.stop()
        await self.tcp.stop()


def serve(peer_factory: Callable[[], object]):
    """Run a peer on its own loop thread: ``with serve(lambda: StreamPeer(h)) as peer``."""
    return running(peer_factory)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- #
# DNS messages, honest and not                                                 #
# --------------------------------------------------------------------------- #


def dns_answer(
    query_wire: bytes,
    addresses: Sequence[str] = ("127.0.0.2",),
    *,
    id_offset: int = 0,
    qname: str | None = None,
    truncated: bool = False,
) -> bytes:
    """A reply to ``query_wire`` with A records for ``addresses``; optionally for
    another id, another question, or with the TC bit set."""
    query = dns.message.from_wire(query_wire)
    reply = dns.message.make_response(query)
    reply.id = (query.id + id_offset) % 65536
    name = query.question[0].name
    if qname is not None:
        reply.question = [dns.rrset.RRset(dns.name.from_text(qname), 1, 1)]
        name = reply.question[0].name
    if addresses and query.question[0].rdtype == 1:
        reply.answer.append(dns.rrset.from_text_list(name, 60, "IN", "A", list(addresses)))
    if truncated:
        reply.flags |= dns.flags.TC
    return reply.to_wire(max_size=65535)


def compression_loop(query_wire: bytes) -> bytes:
    """A reply whose answer's owner name is a compression pointer to itself
    (RFC 1035 4.1.4 pointers must point backwards; a naive parser loops forever)."""
    header = query_wire[:2] + b"\x81\x80" + struct.pack("!HHHH", 1, 1, 0, 0)
    question = query_wire[12:]
    offset = len(header) + len(question)
    pointer = struct.pack("!H", 0xC000 | offset)
    answer = pointer + struct.pack("!HHIH", 1, 1, 60, 4) + bytes([127, 0, 0, 2])
    return header + question + answer


def tcp_answering(addresses: Sequence[str]) -> StreamHandler:
    """An honest DNS-over-TCP handler answering every query with ``addresses``."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            (length,) = struct.unpack("!H", await reader.readexactly(2))
            query = await reader.readexactly(length)
            reply = dns_answer(query, addresses)
            writer.write(struct.pack("!H", len(reply)) + reply)
            await writer.drain()

    return handler


async def read_dns_query(reader: asyncio.StreamReader) -> bytes:
    (length,) = struct.unpack("!H", await reader.readexactly(2))
    return await reader.readexactly(length)


# --------------------------------------------------------------------------- #
# Certificates, for TLS servers with odd chains                                #
# --------------------------------------------------------------------------- #

_PADDING_OID = x509.ObjectIdentifier("1.3.6.1.4.1.99999.1")  # private arc: ours
_PADDING_OID_TWIN = x509.ObjectIdentifier("1.3.6.1.4.1.99999.2")


@dataclass(frozen=True)
class ServerCredentials:
    certfile: Path  # leaf first, then the chain
    keyfile: Path
    chain_bytes: int  # DER bytes of every certificate together

    def context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.certfile, self.keyfile)
        return context


def _certificate(
    subject: str, issuer: str, public_key, signing_key, *, ca: bool, padding: int,
    extensions: Sequence[x509.ExtensionType] = (),
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False
        )
    if padding:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(_PADDING_OID, b"\x00" * padding), critical=False,
        )
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    return builder.sign(signing_key, hashes.SHA256())


def _write(directory: Path, name: str, chain: list[x509.Certificate], key) -> ServerCredentials:
    certfile, keyfile = directory / f"{name}.pem", directory / f"{name}.key"
    certfile.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain))
    keyfile.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))
    chain_bytes = sum(len(c.public_bytes(serialization.Encoding.DER)) for c in chain)
    return ServerCredentials(certfile, keyfile, chain_bytes)


def long_chain(directory: Path, length: int, padding: int = 0,
               name: str = "example.org") -> ServerCredentials:
    """A leaf for ``name`` under ``length - 1`` intermediates (an untrusted root
    at the top), each certificate padded with ``padding`` bytes of extension."""
    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(length)]
    chain: list[x509.Certificate] = []
    # keys[-1] is the root's; certificate i is signed by key i + 1.
    for index in range(length):
        issuer_key = keys[min(index + 1, length - 1)]
        subject = name if index == 0 else f"hostile intermediate {index}"
        issuer = f"hostile intermediate {index + 1}" if index < length - 1 else subject
        chain.append(_certificate(subject, issuer, keys[index].public_key(), issuer_key,
                                  ca=index > 0, padding=padding))
    return _write(directory, f"chain{length}x{padding}", chain, keys[0])


def duplicate_extension_leaf(directory: Path, name: str = "example.org") -> ServerCredentials:
    """A self-signed leaf carrying one private extension twice (RFC 5280 4.2: "a
    certificate MUST NOT include more than one instance of a particular extension").

    OpenSSL ignores duplicates of extensions it does not know, so it serves this
    certificate; a stricter parser (cryptography's) refuses it. The duplicate is
    made by patching the DER of two distinct private OIDs into one: the signature
    no longer matches, which an unverified handshake does not check.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = _certificate(
        name, name, key.public_key(), key, ca=False, padding=0,
        extensions=(x509.UnrecognizedExtension(_PADDING_OID, b"\x05\x00"),
                    x509.UnrecognizedExtension(_PADDING_OID_TWIN, b"\x05\x00")),
    )
    der = certificate.public_bytes(serialization.Encoding.DER)
    twin = _PADDING_OID_TWIN.dotted_string.rsplit(".", 1)
    assert twin[1] == "2" and der.count(b"\x8d\x1f\x02") == 1  # 99999 = 0x86 0x8d 0x1f
    patched = der.replace(b"\x8d\x1f\x02", b"\x8d\x1f\x01")
    certfile, keyfile = directory / "duplicate.pem", directory / "duplicate.key"
    certfile.write_text(ssl.DER_cert_to_PEM_cert(patched))
    keyfile.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))
    return ServerCredentials(certfile, keyfile, len(patched))


# --------------------------------------------------------------------------- #
# Handlers shared by several tests                                             #
# --------------------------------------------------------------------------- #


async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read and discard until the client leaves (never answer)."""
    while await reader.read(65536):
        pass


def send_then_hold(data: bytes, *, close: bool = False) -> StreamHandler:
    """Wait for the client's first bytes, send ``data``, then hold (or close)."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.write(data)
        await writer.drain()
        if close:
            return
        await hold(reader, writer)

    return handler


def trickle(data: bytes, interval: float = 1.0, *, after_request: bool = True) -> StreamHandler:
    """Slowloris: send ``data`` one byte every ``interval`` seconds, forever
    (``data`` repeats), after the client's first bytes."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if after_request:
            await reader.read(65536)
        position = 0
        while True:
            writer.write(data[position % len(data):][:1])
            await writer.drain()
            position += 1
            await asyncio.sleep(interval)

    return handler


@contextlib.contextmanager
def no_fd_leak():
    """Fail if the block leaves file descriptors open (a socket the probe forgot)."""
    import os

    before = len(os.listdir("/proc/self/fd"))
    yield
    after = len(os.listdir("/proc/self/fd"))
    assert after <= before + 2, f"{after - before} file descriptors left open"


# --------------------------------------------------------------------------- #
# The control helper itself, in-process                                        #
# --------------------------------------------------------------------------- #


class HelperServer:
    """A ``probe.control.server.ControlHelper`` served on loopback (as ``probe
    control serve`` does, without the CLI), for hostile requesters to hit."""

    def __init__(self, helper) -> None:  # a ControlHelper
        self.helper = helper
        self.port = 0
        self._runner = None

    async def start(self) -> None:
        from aiohttp import web

        self._runner = web.AppRunner(self.helper.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, LOOPBACK, 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
