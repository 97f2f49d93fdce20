"""Live UDP flows: datagrams sent on a schedule over one connected socket, and
everything that came back, ICMP errors included.

One socket per flow keeps one 5-tuple, as a call's media does, so a censor
that cuts flows after their first packets cuts ours. Datagrams are sent at
their scheduled times (the remaining ones skipped after the first answer for
STUN retransmissions), every datagram that arrives is kept (capped in number
and size), and ICMP errors are read from the socket's error queue
(``probe.net.icmp``). This module judges nothing: whether the answers were the
right ones is ``probe.stun``'s business. It never raises for network trouble,
and the whole flow ends within its timeout.
"""

from __future__ import annotations

import asyncio
import base64
import socket
from collections.abc import Callable

from probe.net import failures, icmp
from probe.net.network import IcmpError, Timing, UdpReceived, UdpRequest, UdpResult, UdpSent

MAX_DATAGRAM = 65535
MAX_ICMP_ERRORS = 64
_DRAIN_LIMIT = 256  # datagrams read per wake-up, so a flood cannot starve the loop


def _open(address: str, port: int) -> socket.socket:
    info = socket.getaddrinfo(
        address, port, type=socket.SOCK_DGRAM, flags=socket.AI_NUMERICHOST
    )[0]
    family, kind, proto, _, sockaddr = info
    sock = socket.socket(family, kind, proto)
    try:
        sock.setblocking(False)
        icmp.enable(sock)
        sock.connect(sockaddr)
    except BaseException:
        sock.close()
        raise
    return sock


class _Flow:
    """What the socket delivered so far; filled by the event loop's reader callback."""

    def __init__(self, sock: socket.socket, request: UdpRequest, clock: Callable[[], float],
                 loop: asyncio.AbstractEventLoop) -> None:
        self.sock = sock
        self.request = request
        self.clock = clock
        self.loop = loop
        self.received: list[UdpReceived] = []
        self.icmp: list[IcmpError] = []
        self.first_reply: float | None = None  # loop time of the first datagram or ICMP error
        self.arrived = asyncio.Event()

    def _note_reply(self) -> None:
        if self.first_reply is None:
            self.first_reply = self.loop.time()
        self.arrived.set()

    def drain_errors(self) -> None:
        while len(self.icmp) < MAX_ICMP_ERRORS:
            error = icmp.read_error(self.sock)
            if error is None:
                return
            failure = failures.icmp_error_failure(
                error.errno, error.version, error.icmp_type, error.icmp_code
            )
            self.icmp.append(
                IcmpError(self.clock(), failure, error.icmp_type, error.icmp_code, error.offender)
            )
            self._note_reply()

    def on_readable(self) -> None:
        self.drain_errors()
        for _ in range(_DRAIN_LIMIT):
            try:
                data = self.sock.recv(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                # The pending error of an ICMP message (ECONNREFUSED...): its
                # details are on the error queue.
                self.drain_errors()
                continue
            if len(self.received) < self.request.max_received:
                kept = data[: self.request.max_bytes]
                self.received.append(
                    UdpReceived(self.clock(), base64.b64encode(kept).decode(), len(data))
                )
            self._note_reply()


async def udp_exchange(request: UdpRequest, timeout: float, clock: Callable[[], float]) -> (
    UdpResult
):
    loop = asyncio.get_running_loop()
    t0 = clock()
    start = loop.time()
    deadline = start + timeout
    try:
        sock = _open(request.address, request.port)
    except (OSError, ValueError) as exc:  # no route, no address of that family, bad literal
        return UdpResult(request, (), (), (), failures.classify(exc), Timing(t0, clock()))
    flow = _Flow(sock, request, clock, loop)
    datagrams = [base64.b64decode(d) for d in request.datagrams]
    sent: list[UdpSent] = []
    loop.add_reader(sock.fileno(), flow.on_readable)
    try:
        index, last_send = 0, start
        while True:
            now = loop.time()
            if now >= deadline:
                break
            replied = flow.first_reply is not None
            silent_until = start + request.give_up
            if request.give_up and not flow.received and now >= silent_until:
                break  # nothing ever came back: the rest of the schedule proves nothing
            if request.stop_on_reply and replied:
                index = len(datagrams)  # RFC 5389 7.2.1: no retransmission once answered
            if index < len(datagrams):
                due = start + request.schedule[index]
                if due <= now:
                    sent.append(_send(sock, datagrams[index], index, clock))
                    flow.drain_errors()
                    index, last_send = index + 1, now
                    continue
                wake = min(due, deadline)
                if request.give_up and not flow.received:
                    wake = min(wake, max(now, silent_until))
            else:
                if request.stop_on_reply and flow.first_reply is not None:
                    wake = min(deadline, flow.first_reply + request.linger)
                elif request.stop_on_reply:
                    wake = deadline  # unanswered: a late answer is still an answer
                else:
                    wake = min(deadline, last_send + request.linger)
                if now >= wake:
                    break
            flow.arrived.clear()
            try:
                async with asyncio.timeout(max(0.0, wake - now)):
                    await flow.arrived.wait()
            except TimeoutError:
                pass
        flow.on_readable()
    finally:
        loop.remove_reader(sock.fileno())
        sock.close()
    failure: str | None
    if flow.received:
        failure = None
    elif flow.icmp:
        failure = flow.icmp[0].failure
    else:
        failure = next((s.failure for s in sent if s.failure), failures.GENERIC_TIMEOUT)
    return UdpResult(request, tuple(sent), tuple(flow.received), tuple(flow.icmp), failure,
                     Timing(t0, clock()))


def _send(sock: socket.socket, data: bytes, index: int, clock: Callable[[], float]) -> UdpSent:
    t = clock()
    try:
        sock.send(data)
    except OSError as exc:
        # ECONNREFUSED here is an earlier datagram's ICMP error reported on this
        # send (the datagram did not leave); ENETUNREACH is no route at all.
        return UdpSent(t, index, failures.classify(exc))
    return UdpSent(t, index)
