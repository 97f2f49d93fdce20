"""A fake Telegram datacenter: the first MTProto step, and HTTP on the same ports.

A client's first bytes pick the protocol, as on a real datacenter: ``0xef``
is the abridged transport, ``0xeeeeeeee`` the intermediate one, and an HTTP
method is plain HTTP (Telegram serves its nginx personality on 80 and 443 alike;
OONI's telegram test POSTs there). Each ``req_pq_multi`` gets a valid ``resPQ``
echoing its nonce; any other MTProto message gets transport error -404 and the
connection is closed, as a datacenter does for an unknown auth key. Other
first bytes (the obfuscated transports) are not supported: the connection is
closed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from probe import mtproto
from probe.lab.servers.http import TELEGRAM_SITE, HttpSite, serve_http
from probe.lab.servers.stream import Connection, Endpoint, Limits, StreamServer

# A pq and fingerprints of the form real datacenters send (values from
# https://core.telegram.org/mtproto/samples-auth_key); the lab never goes further.
PQ = bytes.fromhex("17ED48941A08F981")
FINGERPRINTS = (0xC3B42B026CE86B21,)
HTTP_METHODS = (b"GET ", b"POST", b"HEAD", b"PUT ", b"OPTI", b"DELE", b"PATC", b"CONN")
MAX_PACKETS_PER_CONNECTION = 16


class MtprotoServer(StreamServer):
    kind = "mtproto"

    def __init__(
        self,
        listen: Sequence[Endpoint],
        site: HttpSite = TELEGRAM_SITE,
        limits: Limits | None = None,
    ) -> None:
        super().__init__(listen, limits)
        self.site = site

    async def handle(self, connection: Connection) -> None:
        first = await connection.recv_exactly(1)
        if first == mtproto.ABRIDGED_MARKER:
            transport = "abridged"
        else:
            start = first + await connection.recv_exactly(3)
            if start == mtproto.INTERMEDIATE_MARKER:
                transport = "intermediate"
            elif start in HTTP_METHODS:
                connection.unread(start)
                await serve_http(connection, self.site)
                return
            else:
                return
        for _ in range(MAX_PACKETS_PER_CONNECTION):
            payload = await self._read_packet(connection, transport)
            if payload is None:
                return
            try:
                nonce = mtproto.parse_req_pq_multi(payload)
            except mtproto.MtprotoError:
                error = mtproto.transport_error(-404)
                await connection.send(mtproto.frame(error, transport, initial=False))
                return
            reply = mtproto.res_pq(nonce, os.urandom(16), PQ, FINGERPRINTS)
            await connection.send(mtproto.frame(reply, transport, initial=False))

    @staticmethod
    async def _read_packet(connection: Connection, transport: str) -> bytes | None:
        """The next packet's payload; None at end of stream or for an oversized packet."""
        if transport == "intermediate":
            head = await _exact_or_none(connection, 4)
            if head is None:
                return None
            length = int.from_bytes(head, "little") & 0x7FFFFFFF  # top bit: quick-ack request
        else:
            head = await _exact_or_none(connection, 1)
            if head is None:
                return None
            if head[0] & 0x7F == 0x7F:
                rest = await connection.recv_exactly(3)
                length = int.from_bytes(rest, "little") * 4
            else:
                length = (head[0] & 0x7F) * 4
        if length > mtproto.MAX_PACKET:
            return None
        return await connection.recv_exactly(length)


async def _exact_or_none(connection: Connection, count: int) -> bytes | None:
    """``count`` bytes, or None when the stream ends cleanly before any of them."""
    first = await connection.recv(count)
    if not first:
        return None
    if len(first) < count:
        first += await connection.recv_exactly(count - len(first))
    return first
