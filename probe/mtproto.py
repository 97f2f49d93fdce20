"""MTProto wire format for the first step of Telegram's key exchange, without I/O.

The probe checks a Telegram datacenter the way the Telegram client starts a
session: it sends an unencrypted ``req_pq_multi`` and expects a ``resPQ`` that
echoes its nonce (https://core.telegram.org/mtproto/auth_key). A middlebox that
lets TCP through but drops, corrupts or answers the exchange itself is caught
here. This module only builds and parses bytes: sockets live in ``probe.net``
(the probe side) and ``probe.lab.servers`` (the fake datacenter side).

Parsing never trusts its input: :func:`parse_res_pq` and :func:`parse_req_pq_multi`
raise :class:`MtprotoError` (and nothing else) on any bytes that are not the
expected message, with a short ``reason`` the analysis can count.
"""

from __future__ import annotations

import os
import struct
import time
from dataclasses import dataclass
from typing import Literal

Transport = Literal["intermediate", "abridged"]
TRANSPORTS: tuple[Transport, ...] = ("intermediate", "abridged")

# TL constructor numbers (https://core.telegram.org/schema/mtproto).
REQ_PQ_MULTI = 0xBE7E8EF1  # req_pq_multi#be7e8ef1 nonce:int128 = ResPQ
RES_PQ = 0x05162463  # resPQ#05162463 nonce server_nonce pq:string fingerprints:Vector<long>
VECTOR = 0x1CB5C415  # vector#1cb5c415 {t:Type} # [ t ] = Vector t

# Transport markers, sent by the client once before its first packet only
# (https://core.telegram.org/mtproto/mtproto-transports). Servers never send them.
INTERMEDIATE_MARKER = b"\xee\xee\xee\xee"
ABRIDGED_MARKER = b"\xef"

# A resPQ is about a hundred bytes; a datacenter's first reply announcing much
# more is not the reply we asked for (and we refuse to wait for it).
MAX_PACKET = 4096

# Failure reasons of MtprotoError, one short word each.
TRUNCATED = "truncated"  # the reply stopped before its announced end
NOT_RES_PQ = "not_res_pq"  # a well-formed MTProto message, but not our resPQ
NONCE_MISMATCH = "nonce_mismatch"  # a resPQ for someone else's nonce
GARBAGE = "garbage"  # bytes that are not an MTProto message at all
OVERSIZED = "oversized"  # a packet length beyond MAX_PACKET

_HTTP_PREFIXES = (b"HTTP/", b"<")  # block pages and proxies answering in HTTP or HTML


class MtprotoError(Exception):
    """Bytes that are not the expected MTProto message; ``reason`` is one word."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ResPQ:
    """A parsed resPQ. Fingerprints are the unsigned 64-bit values of the server keys."""

    nonce: bytes
    server_nonce: bytes
    pq: bytes
    fingerprints: tuple[int, ...]
    message_id: int


def new_nonce() -> bytes:
    """16 random bytes for the nonce of one req_pq_multi."""
    return os.urandom(16)


def message_id(now: float | None = None, *, server: bool = False) -> int:
    """A message id of the valid form: unixtime in the high 32 bits, its
    fraction below, and the low two bits 0 for a client message or 1 for a
    server response (https://core.telegram.org/mtproto/description#message-identifier-msg-id)."""
    nanoseconds = time.time_ns() if now is None else int(now * 1e9)
    seconds, fraction = divmod(nanoseconds, 1_000_000_000)
    value = (seconds << 32) | ((fraction << 32) // 1_000_000_000)
    return (value & ~3) | (1 if server else 0)


def _unencrypted(body: bytes, msg_id: int) -> bytes:
    # auth_key_id = 0 marks a plain-text message; then message_id and the body length.
    return struct.pack("<qQi", 0, msg_id, len(body)) + body


def req_pq_multi(nonce: bytes, *, msg_id: int | None = None) -> bytes:
    """The unencrypted req_pq_multi message (no transport framing)."""
    if len(nonce) != 16:
        raise ValueError(f"the nonce must be 16 bytes, got {len(nonce)}")
    body = struct.pack("<I", REQ_PQ_MULTI) + nonce
    return _unencrypted(body, message_id() if msg_id is None else msg_id)


def _tl_bytes(data: bytes) -> bytes:
    # TL bytes/string: a 1-byte length (<= 253) or 0xfe + 3-byte length, then
    # the data, then zero padding to a multiple of 4 bytes in all.
    if len(data) <= 253:
        head = bytes([len(data)])
    elif len(data) < 1 << 24:
        head = b"\xfe" + len(data).to_bytes(3, "little")
    else:
        raise ValueError("TL bytes longer than 16 MiB")
    encoded = head + data
    return encoded + b"\x00" * (-len(encoded) % 4)


def res_pq(
    nonce: bytes,
    server_nonce: bytes,
    pq: bytes,
    fingerprints: tuple[int, ...] | list[int],
    *,
    msg_id: int | None = None,
) -> bytes:
    """The unencrypted resPQ message a datacenter answers (no transport framing)."""
    if len(nonce) != 16 or len(server_nonce) != 16:
        raise ValueError("nonce and server_nonce must be 16 bytes each")
    body = (
        struct.pack("<I", RES_PQ)
        + nonce
        + server_nonce
        + _tl_bytes(pq)
        + struct.pack("<Ii", VECTOR, len(fingerprints))
        + b"".join(struct.pack("<Q", f) for f in fingerprints)
    )
    return _unencrypted(body, message_id(server=True) if msg_id is None else msg_id)


def transport_error(code: int = -404) -> bytes:
    """A transport error packet body: a negative int32 alone, e.g. -404 for an
    unknown auth key (https://core.telegram.org/mtproto/mtproto-transports#transport-errors)."""
    return struct.pack("<i", code)


# --------------------------------------------------------------------------- #
# Transport framing                                                            #
# --------------------------------------------------------------------------- #


def frame_intermediate(payload: bytes, *, initial: bool = True) -> bytes:
    """One intermediate-transport packet: a 4-byte little-endian length and the
    payload, preceded by the 0xeeeeeeee marker when ``initial`` (the first
    packet a client sends on a connection)."""
    packet = struct.pack("<I", len(payload)) + payload
    return INTERMEDIATE_MARKER + packet if initial else packet


def frame_abridged(payload: bytes, *, initial: bool = True) -> bytes:
    """One abridged-transport packet: the length in 4-byte words as one byte
    (< 0x7f) or 0x7f and three little-endian bytes, then the payload; preceded
    by the 0xef marker when ``initial``."""
    if len(payload) % 4:
        raise ValueError(f"abridged payloads are whole 4-byte words, got {len(payload)} bytes")
    words = len(payload) // 4
    if words < 0x7F:
        head = bytes([words])
    elif words < 1 << 24:
        head = b"\x7f" + words.to_bytes(3, "little")
    else:
        raise ValueError("abridged payload longer than 64 MiB")
    packet = head + payload
    return ABRIDGED_MARKER + packet if initial else packet


def frame(payload: bytes, transport: str, *, initial: bool = True) -> bytes:
    """Frame ``payload`` for ``transport`` ("intermediate" or "abridged")."""
    if transport == "intermediate":
        return frame_intermediate(payload, initial=initial)
    if transport == "abridged":
        return frame_abridged(payload, initial=initial)
    raise ValueError(f"unknown MTProto transport {transport!r} (use one of {TRANSPORTS})")


def unframe(data: bytes, transport: str, *, max_packet: int = MAX_PACKET) -> tuple[bytes, int]:
    """Split the first packet off ``data`` (no marker: the stream after it).

    Returns the payload and the number of bytes it took; raises MtprotoError
    ``truncated`` if more bytes are needed and ``oversized`` past ``max_packet``.
    """
    if transport == "intermediate":
        if len(data) < 4:
            raise MtprotoError(TRUNCATED, f"{len(data)} bytes, no complete length")
        length = int.from_bytes(data[:4], "little")
        start = 4
    elif transport == "abridged":
        if not data:
            raise MtprotoError(TRUNCATED, "empty")
        if data[0] == 0x7F:
            if len(data) < 4:
                raise MtprotoError(TRUNCATED, f"{len(data)} bytes, no complete length")
            length = int.from_bytes(data[1:4], "little") * 4
            start = 4
        else:
            # The top bit is the quick-ack flag of client packets; a server reply has it clear.
            length = (data[0] & 0x7F) * 4
            start = 1
    else:
        raise ValueError(f"unknown MTProto transport {transport!r} (use one of {TRANSPORTS})")
    if length > max_packet:
        raise MtprotoError(OVERSIZED, f"packet of {length} bytes announced")
    if len(data) < start + length:
        raise MtprotoError(TRUNCATED, f"{len(data) - start} of {length} bytes")
    return data[start : start + length], start + length


# --------------------------------------------------------------------------- #
# Parsing                                                                      #
# --------------------------------------------------------------------------- #


class _Reader:
    """Reads little-endian TL values; running short raises ``garbage`` because
    the transport already said the message was complete."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offset = 0

    def take(self, count: int) -> bytes:
        if count < 0 or self.offset + count > len(self.data):
            raise MtprotoError(GARBAGE, f"message ends inside a field at byte {self.offset}")
        chunk = self.data[self.offset : self.offset + count]
        self.offset += count
        return chunk

    def uint32(self) -> int:
        return int.from_bytes(self.take(4), "little")

    def int32(self) -> int:
        return int.from_bytes(self.take(4), "little", signed=True)

    def tl_bytes(self) -> bytes:
        start = self.offset
        first = self.take(1)[0]
        if first == 254:
            length = int.from_bytes(self.take(3), "little")
        elif first == 255:
            raise MtprotoError(GARBAGE, "invalid TL bytes length prefix 0xff")
        else:
            length = first
        value = self.take(length)
        self.take(-(self.offset - start) % 4)
        return value


def _message_body(message: bytes) -> tuple[int, bytes]:
    """(message_id, body) of an unencrypted MTProto message."""
    if len(message) == 4:
        code = int.from_bytes(message, "little", signed=True)
        # A lone negative int32 is a transport error (-404: unknown auth key, -429: flood).
        if code < 0:
            raise MtprotoError(NOT_RES_PQ, f"transport error {code}")
    if len(message) < 20:
        raise MtprotoError(GARBAGE, f"{len(message)} bytes is shorter than an MTProto header")
    auth_key_id, msg_id, length = struct.unpack_from("<qQi", message)
    if auth_key_id != 0:
        raise MtprotoError(GARBAGE, "encrypted message where a plain-text one was expected")
    if length != len(message) - 20:
        raise MtprotoError(
            GARBAGE, f"message_data_length {length} but {len(message) - 20} bytes follow"
        )
    return msg_id, message[20:]


def parse_res_pq(data: bytes, transport: str, nonce: bytes) -> ResPQ:
    """Parse the framed reply to a req_pq_multi sent with ``nonce``.

    ``data`` is what the server sent (no transport marker; bytes after the
    first packet are ignored). Raises MtprotoError with reason ``truncated``,
    ``oversized``, ``garbage``, ``not_res_pq`` or ``nonce_mismatch``; never
    anything else, whatever ``data`` holds.
    """
    if data.startswith(_HTTP_PREFIXES):
        raise MtprotoError(GARBAGE, "an HTTP/HTML answer")
    payload, _ = unframe(data, transport)
    msg_id, body = _message_body(payload)
    reader = _Reader(body)
    if len(body) < 4:
        raise MtprotoError(GARBAGE, "empty message body")
    constructor = reader.uint32()
    if constructor != RES_PQ:
        raise MtprotoError(NOT_RES_PQ, f"constructor {constructor:#010x}")
    got_nonce = reader.take(16)
    server_nonce = reader.take(16)
    pq = reader.tl_bytes()
    if reader.uint32() != VECTOR:
        raise MtprotoError(GARBAGE, "fingerprints are not a TL vector")
    count = reader.int32()
    if count < 0 or count * 8 > len(body) - reader.offset:
        raise MtprotoError(GARBAGE, f"vector of {count} fingerprints does not fit")
    fingerprints = tuple(int.from_bytes(reader.take(8), "little") for _ in range(count))
    if got_nonce != nonce:
        raise MtprotoError(NONCE_MISMATCH, "the resPQ does not echo our nonce")
    return ResPQ(got_nonce, server_nonce, pq, fingerprints, msg_id)


def parse_req_pq_multi(message: bytes) -> bytes:
    """The nonce of an unencrypted req_pq_multi message (unframed); raises MtprotoError."""
    _, body = _message_body(message)
    reader = _Reader(body)
    if len(body) < 4:
        raise MtprotoError(GARBAGE, "empty message body")
    constructor = reader.uint32()
    if constructor != REQ_PQ_MULTI:
        raise MtprotoError(GARBAGE, f"constructor {constructor:#010x} is not req_pq_multi")
    return reader.take(16)
