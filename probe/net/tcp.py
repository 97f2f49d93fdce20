"""Live TCP operations: connect, and the framed request/response exchange MTProto needs."""

from __future__ import annotations

import asyncio
import base64
import socket
import struct

from probe import mtproto
from probe.net import failures, icmp, pacing
from probe.net.network import ConnectResult, MtprotoRequest, MtprotoResult, Timing

MAX_MTPROTO_REPLY = 64 * 1024
# After a length no resPQ can have, what the peer already sent is kept as evidence
# (an HTTP block page's status line) for this long, up to this many bytes.
EVIDENCE_GRACE = 0.2
EVIDENCE_BYTES = 4096


_UNREACHABLE_LIKE = failures.UNREACHABLE | {failures.ADMINISTRATIVELY_PROHIBITED}


def _icmp_reason(sock: socket.socket) -> str | None:
    """What the queued ICMP error says, when it is more precise than errno
    (EHOSTUNREACH is a dead host and a censor's "administratively prohibited" alike)."""
    error = icmp.read_error(sock)
    if error is None:
        return None
    return failures.icmp_failure(error.version, error.icmp_type, error.icmp_code)


async def _open(address: str, port: int):
    """asyncio.open_connection on a socket that records ICMP errors while connecting."""
    try:
        family, kind, proto, _, sockaddr = socket.getaddrinfo(
            address, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST
        )[0]
    except socket.gaierror:  # not a literal address: let asyncio resolve it
        return await asyncio.open_connection(address, port)
    sock = socket.socket(family, kind, proto)
    try:
        sock.setblocking(False)
        level_option = icmp.RECVERR.get(family) if icmp.enable(sock) else None
        try:
            await asyncio.get_running_loop().sock_connect(sock, sockaddr)
        except OSError as exc:
            failure = failures.classify(exc)
            if level_option is not None and failure in _UNREACHABLE_LIKE:
                precise = _icmp_reason(sock)
                if precise is not None:
                    raise IcmpError(precise) from exc
            raise
        if level_option is not None:
            # Once connected, ICMP errors go back to being soft errors as usual.
            sock.setsockopt(*level_option, 0)
        return await asyncio.open_connection(sock=sock)
    except BaseException:
        sock.close()
        raise


class IcmpError(OSError):
    """A connect refused by an ICMP error whose code names the failure precisely."""

    def __init__(self, failure: str) -> None:
        super().__init__(failure)
        self.failure = failure


async def open_stream(address: str, port: int, timeout: float, clock):
    """Connect; returns (ConnectResult, reader, writer) with reader/writer None on failure."""
    t0 = clock()
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await _open(address, port)
    except IcmpError as exc:
        return ConnectResult(address, port, exc.failure, Timing(t0, clock())), None, None
    except Exception as exc:
        return ConnectResult(address, port, failures.classify(exc), Timing(t0, clock())), None, None
    return ConnectResult(address, port, None, Timing(t0, clock())), reader, writer


async def close_stream(writer) -> None:
    if writer is None:
        return
    if writer.transport.is_closing():
        # Already closed under the stream: by the peer, or by asyncio when start_tls
        # failed (it closes the socket, and this stream never hears of it, so
        # wait_closed() would only burn the second below on every TLS timeout).
        writer.close()
        return
    writer.close()
    try:
        async with asyncio.timeout(1):
            await writer.wait_closed()
    except Exception:  # closing a reset or timed-out stream may raise; nothing to record
        pass


async def connect(address: str, port: int, timeout: float, clock) -> ConnectResult:
    result, _, writer = await open_stream(address, port, timeout, clock)
    await close_stream(writer)
    return result


async def _read_frame(reader: asyncio.StreamReader, transport: str, received: bytearray) -> None:
    """Read one transport frame into ``received`` (capped); the codec judges it later.

    A length beyond what a resPQ can be (``mtproto.MAX_PACKET``) ends the read
    after a short grace: garbage, an HTTP answer or a hostile prefix announcing
    gigabytes is not a resPQ whatever follows, and waiting for the announced
    bytes would cost the whole timeout."""
    if transport == "abridged":
        head = await reader.readexactly(1)
        received += head
        length = head[0]
        if length == 0x7F:
            more = await reader.readexactly(3)
            received += more
            length = int.from_bytes(more, "little")
        length *= 4
    else:
        head = await reader.readexactly(4)
        received += head
        (length,) = struct.unpack("<I", head)
    if length > mtproto.MAX_PACKET:
        await _read_evidence(reader, received)
        return
    length = min(length & 0x7FFFFFFF, MAX_MTPROTO_REPLY - len(received))
    while length > 0:
        chunk = await reader.read(min(length, 4096))
        if not chunk:
            raise asyncio.IncompleteReadError(bytes(received), None)
        received += chunk
        length -= len(chunk)


async def _read_evidence(reader: asyncio.StreamReader, received: bytearray) -> None:
    """Add what arrives within EVIDENCE_GRACE (up to EVIDENCE_BYTES in all) to ``received``."""
    try:
        async with asyncio.timeout(EVIDENCE_GRACE):
            while len(received) < EVIDENCE_BYTES:
                chunk = await reader.read(EVIDENCE_BYTES - len(received))
                if not chunk:
                    return
                received += chunk
    except TimeoutError:
        pass  # the grace is over: what came is the evidence


async def mtproto_exchange(request: MtprotoRequest, timeout: float, clock) -> MtprotoResult:
    t0 = clock()
    received = bytearray()
    failure = None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    connect_result, reader, writer = await open_stream(
        request.address, request.port, timeout, clock
    )
    if connect_result.failure is None:
        try:
            deadline += await pacing.before_payload()
            async with asyncio.timeout_at(deadline):
                writer.write(base64.b64decode(request.payload))
                await writer.drain()
                await _read_frame(reader, request.transport, received)
        except Exception as exc:
            failure = failures.classify(exc)
    else:
        failure = connect_result.failure
    ended = clock()
    await close_stream(writer)
    return MtprotoResult(
        request, connect_result, failure, base64.b64encode(bytes(received)).decode(),
        Timing(t0, ended),
    )
