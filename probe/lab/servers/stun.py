"""A STUN/TURN server on UDP, and the UDP echo a call-like flow is measured against.

It answers an RFC 5389 Binding Request with a Binding Success carrying the
source's XOR-MAPPED-ADDRESS, and a TURN Allocate (RFC 5766) with a 401
Unauthorized carrying REALM and NONCE, as every real TURN server answers a
request without credentials; nothing is ever allocated and no credentials are
checked. Datagrams that are not STUN are echoed back (``echo``), as the
control helper's UDP echo does.

Options model what tests and lab scenarios need: ``answer_first`` answers only
the first N datagrams of each 5-tuple and then goes silent (the flow "cut after
a few packets" of mobile DPI), ``forge`` sends a second, different Binding
Success for every request (an on-path injector's forged answer next to the real
one), ``turn`` says how Allocate is answered (``challenge``, ``open`` for a
success without any challenge, or ``silent``). State is one counter per
5-tuple, capped at ``limits.max_connections`` flows (the oldest is forgotten),
and a datagram larger than ``limits.max_request`` is ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Self

from aioice import stun

from probe.lab.servers.stream import Endpoint, Limits, bind_socket

TURN_MODES = ("challenge", "open", "silent")
REALM = "lab.example"
MAX_DATAGRAM = 65535


def _parse(data: bytes) -> stun.Message | None:
    """A STUN message (magic cookie and all), or None for anything else."""
    if len(data) < stun.HEADER_LENGTH or data[0] & 0xC0:
        return None
    try:
        return stun.parse_message(data)
    except Exception:  # noqa: BLE001 - untrusted bytes; the parser raises many kinds
        return None


class StunServer:
    """STUN Binding, unauthenticated TURN Allocate and UDP echo on each endpoint."""

    kind = "stun"

    def __init__(
        self,
        listen: Sequence[Endpoint],
        *,
        echo: bool = True,
        answer_first: int | None = None,
        forge: str | None = None,
        turn: str = "challenge",
        limits: Limits | None = None,
    ) -> None:
        if not listen:
            raise ValueError("stun server: nothing to listen on")
        if turn not in TURN_MODES:
            raise ValueError(f"turn must be one of {TURN_MODES}, not {turn!r}")
        if answer_first is not None and answer_first < 0:
            raise ValueError("answer_first must be >= 0")
        self.listen = [(host, int(port)) for host, port in listen]
        self.echo = echo
        self.answer_first = answer_first
        self.forge = forge
        self.turn = turn
        self.limits = limits or Limits()
        self.endpoints: list[Endpoint] = []
        self.received = 0  # datagrams seen since start
        self._flows: OrderedDict[tuple[Any, ...], int] = OrderedDict()
        self._transports: list[asyncio.DatagramTransport] = []

    # -- what to answer (pure but for the flow counter) ---------------------- #

    def _count(self, flow: tuple[Any, ...]) -> int:
        """How many datagrams this 5-tuple sent before this one."""
        seen = self._flows.pop(flow, 0)
        self._flows[flow] = seen + 1
        while len(self._flows) > self.limits.max_connections:
            self._flows.popitem(last=False)
        return seen

    def replies(self, data: bytes, source: tuple[str, int], flow: tuple[Any, ...]) -> list[bytes]:
        """The datagrams to send back for one received datagram."""
        self.received += 1
        if len(data) > self.limits.max_request:
            return []
        seen = self._count(flow)
        if self.answer_first is not None and seen >= self.answer_first:
            return []
        message = _parse(data)
        if message is None:
            return [data] if self.echo else []
        if message.message_class != stun.Class.REQUEST:
            return []
        if message.message_method == stun.Method.BINDING:
            answers = [self._binding_success(message, source)]
            if self.forge is not None:
                answers.append(self._binding_success(message, (self.forge, source[1])))
            return answers
        if message.message_method == stun.Method.ALLOCATE:
            return self._allocate(message, source)
        return [self._error(message, 400, "Bad Request")]

    def _binding_success(self, request: stun.Message, mapped: tuple[str, int]) -> bytes:
        response = stun.Message(
            stun.Method.BINDING, stun.Class.RESPONSE, request.transaction_id,
            {"XOR-MAPPED-ADDRESS": mapped, "SOFTWARE": "probe lab stun"},
        )
        response.add_fingerprint()
        return bytes(response)

    def _error(
        self, request: stun.Message, code: int, reason: str, extra: dict[str, Any] | None = None
    ) -> bytes:
        attributes: dict[str, Any] = {"ERROR-CODE": (code, reason), **(extra or {})}
        response = stun.Message(
            request.message_method, stun.Class.ERROR, request.transaction_id, attributes
        )
        response.add_fingerprint()
        return bytes(response)

    def _allocate(self, request: stun.Message, source: tuple[str, int]) -> list[bytes]:
        if self.turn == "silent":
            return []
        if self.turn == "open":
            # What a TURN server that asks for nothing would say; a DPI box or
            # a STUN-only server answering Allocate like this is not a TURN relay.
            response = stun.Message(
                stun.Method.ALLOCATE, stun.Class.RESPONSE, request.transaction_id,
                {"XOR-RELAYED-ADDRESS": source, "XOR-MAPPED-ADDRESS": source, "LIFETIME": 600},
            )
            response.add_fingerprint()
            return [bytes(response)]
        nonce = os.urandom(8).hex().encode()
        return [self._error(request, 401, "Unauthorized", {"REALM": REALM, "NONCE": nonce})]

    # -- sockets --------------------------------------------------------------- #

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            for host, port in self.listen:
                sock = bind_socket(host, port, socket.SOCK_DGRAM)
                local = sock.getsockname()[:2]
                transport, _ = await loop.create_datagram_endpoint(
                    functools.partial(_Protocol, self, local), sock=sock
                )
                self._transports.append(transport)
                self.endpoints.append(local)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        for transport in self._transports:
            transport.close()
        self._transports.clear()
        self._flows.clear()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        return self.endpoints[0][1]


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, server: StunServer, local: Endpoint) -> None:
        self.server = server
        self.local = local
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        source = (str(addr[0]), int(addr[1]))
        for reply in self.server.replies(data, source, (*source, *self.local)):
            if self.transport is not None:
                with contextlib.suppress(OSError):
                    self.transport.sendto(reply, addr)

    def error_received(self, exc: Exception) -> None:
        pass  # an ICMP error about an earlier answer: the client went away
