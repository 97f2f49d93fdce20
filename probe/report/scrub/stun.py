"""STUN datagrams: where the volunteer's address hides XORed, and rewriting it out.

A STUN Binding Success carries the address the server saw, which *is* the
volunteer's public address: in XOR-MAPPED-ADDRESS it is XORed with the magic
cookie (and, for IPv6, the transaction id; RFC 5389 section 15.2), so no text
or byte search can see it. This module reads the address attributes of a
STUN message (RFC 5389, RFC 5766 and the RFC 3489 ones old servers still
send), tells which addresses they carry, and rewrites each attribute whose
address is the volunteer's into a placeholder address (same family and port),
recomputing FINGERPRINT, so that a report or trace keeps a datagram that still
parses and replays. Two different addresses get two different placeholders
(``0.0.0.1``, ``0.0.0.2``... by rank among the volunteer's addresses): an
injected answer next to the real one stays a *different* answer, so the
evidence of injection survives scrubbing and a replay judges it the same way.

Pure. It does not decide which addresses are the volunteer's (``addresses``
does) and does not judge STUN answers (``probe.stun`` does). MESSAGE-INTEGRITY
cannot be recomputed (we hold no key): probe never sends credentials, so the
answers it keeps have none; a rewritten one would no longer verify.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

# Hand-written, not aioice.stun: aioice re-encodes, a rewrite keeps every other byte.
MAGIC_COOKIE = 0x2112A442
HEADER = 20
#: The placeholders a volunteer address is rewritten to: 0.0.0.k and ::1:0:0:k
#: (nobody's address), the k-th of the volunteer's addresses becoming number k;
#: an address matched by its IPv6 prefix alone becomes the first.
PLACEHOLDER_V4 = ipaddress.IPv4Address("0.0.0.0")
PLACEHOLDER_V6 = ipaddress.IPv6Address("::1:0:0:0")
PLACEHOLDERS = 255

# Attributes holding an address, and whether it is XORed (RFC 5389 section 15,
# RFC 5766 section 14, RFC 5780 section 7, RFC 3489 section 11.2).
ADDRESS_ATTRIBUTES: dict[int, tuple[str, bool]] = {
    0x0001: ("MAPPED-ADDRESS", False),
    0x0002: ("RESPONSE-ADDRESS", False),
    0x0004: ("SOURCE-ADDRESS", False),
    0x0005: ("CHANGED-ADDRESS", False),
    0x000B: ("REFLECTED-FROM", False),
    0x0012: ("XOR-PEER-ADDRESS", True),
    0x0016: ("XOR-RELAYED-ADDRESS", True),
    0x0020: ("XOR-MAPPED-ADDRESS", True),
    # The pre-RFC 5389 code point of XOR-MAPPED-ADDRESS: some deployed servers
    # (old reTurn and Vovida builds) still answer with it.
    0x8020: ("XOR-MAPPED-ADDRESS", True),
    0x8023: ("ALTERNATE-SERVER", False),
    0x802B: ("RESPONSE-ORIGIN", False),
    0x802C: ("OTHER-ADDRESS", False),
}
# The attributes that say where the *client* was seen from: the volunteer.
MAPPED_ATTRIBUTES = frozenset({0x0001, 0x0020, 0x8020})
FINGERPRINT = 0x8028
_FINGERPRINT_XOR = 0x5354554E

# base64 of a STUN message: its first byte is 0b00xxxxxx, so its first
# character is A-P; at most a few kilobytes (a datagram).
_STUN_B64 = re.compile(r"[A-P][A-Za-z0-9+/]{26,4000}={0,2}\Z")


@dataclass(frozen=True)
class AddressAttribute:
    """One address-carrying attribute of a STUN message, decoded."""

    offset: int  # where the attribute's value starts in the message
    code: int
    name: str
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int


def volunteer_test(targets: Any) -> Callable[[Any], bool]:
    """``address -> bool``: whether an address is one the scrubber's targets
    (``forms._Targets``) remove: an IPv4 one, or an IPv6 one in the volunteer's
    prefix or embedding their IPv4 address."""

    def check(address: Any) -> bool:
        value = int(address)
        if address.version == 4:
            return value in targets.v4
        return targets.v6_hit(value) is not None

    return check


def placeholder_test(targets: Any) -> Callable[[Any], Any]:
    """``address -> placeholder or None``: what a volunteer's address (per
    ``volunteer_test``) is rewritten to, distinct for distinct addresses."""
    is_volunteer = volunteer_test(targets)
    ranks = {4: {v: n for n, v in enumerate(sorted(targets.v4), 1)},
             6: {v: n for n, v in enumerate(sorted(targets.v6), 1)}}

    def placeholder(address: Any) -> Any:
        if not is_volunteer(address):
            return None
        rank = min(ranks[address.version].get(int(address), 1), PLACEHOLDERS)
        base = PLACEHOLDER_V4 if address.version == 4 else PLACEHOLDER_V6
        return base + rank

    return placeholder


def is_placeholder(address: Any) -> bool:
    base = PLACEHOLDER_V4 if address.version == 4 else PLACEHOLDER_V6
    return 0 <= int(address) - int(base) <= PLACEHOLDERS


def is_stun(data: bytes) -> bool:
    """A STUN message: two zero top bits, the magic cookie, a length that fits."""
    if len(data) < HEADER or data[0] & 0xC0:
        return False
    length, cookie = struct.unpack_from("!HI", data, 2)
    return cookie == MAGIC_COOKIE and length % 4 == 0 and HEADER + length <= len(data)


def _attributes(data: bytes) -> Iterator[tuple[int, int, int]]:
    """(code, value offset, value length) of each attribute, in order."""
    (length,) = struct.unpack_from("!H", data, 2)
    end = HEADER + length
    offset = HEADER
    while offset + 4 <= end:
        code, size = struct.unpack_from("!HH", data, offset)
        if offset + 4 + size > end:
            return
        yield code, offset + 4, size
        offset += 4 + size + (-size % 4)


def _xor_key(data: bytes, family: int) -> bytes:
    cookie = struct.pack("!I", MAGIC_COOKIE)
    return cookie + data[8:20] if family == 2 else cookie


def address_attributes(data: bytes) -> list[AddressAttribute]:
    """Every address attribute of a STUN message (none when ``data`` is not STUN)."""
    if not is_stun(data):
        return []
    found: list[AddressAttribute] = []
    for code, offset, size in _attributes(data):
        if code not in ADDRESS_ATTRIBUTES or size < 8:
            continue
        name, xored = ADDRESS_ATTRIBUTES[code]
        family = data[offset + 1]
        width = {1: 4, 2: 16}.get(family)
        if width is None or size < 4 + width:
            continue
        port = struct.unpack_from("!H", data, offset + 2)[0]
        raw = data[offset + 4: offset + 4 + width]
        if xored:
            port ^= MAGIC_COOKIE >> 16
            raw = bytes(a ^ b for a, b in zip(raw, _xor_key(data, family), strict=True))
        address: ipaddress.IPv4Address | ipaddress.IPv6Address = (
            ipaddress.IPv4Address(raw) if family == 1 else ipaddress.IPv6Address(raw)
        )
        found.append(AddressAttribute(offset, code, name, address, port))
    return found


def mapped_addresses(data: bytes) -> list[str]:
    """The addresses a STUN answer says the client was seen from (the volunteer's)."""
    return [
        str(attribute.address) for attribute in address_attributes(data)
        if attribute.code in MAPPED_ATTRIBUTES
        and not (is_placeholder(attribute.address) or attribute.address.is_loopback)
    ]


def _encode(attribute: AddressAttribute, data: bytes, address: Any) -> bytes:
    raw = address.packed
    family = data[attribute.offset + 1]
    _, xored = ADDRESS_ATTRIBUTES[attribute.code]
    if xored:
        raw = bytes(a ^ b for a, b in zip(raw, _xor_key(data, family), strict=True))
    return raw


def _refresh_fingerprint(message: bytearray) -> None:
    # FINGERPRINT is the CRC-32 of the message up to it, XORed (RFC 5389 section 15.5)
    for code, offset, size in _attributes(bytes(message)):
        if code == FINGERPRINT and size == 4:
            crc = zlib.crc32(bytes(message[: offset - 4])) ^ _FINGERPRINT_XOR
            struct.pack_into("!I", message, offset, crc)


def rewrite(data: bytes, placeholder_of: Any) -> bytes:
    """``data`` with every address attribute for which ``placeholder_of(address)``
    names a placeholder rewritten to it (port kept). Not STUN, or nothing to
    rewrite: ``data`` itself."""
    message: bytearray | None = None
    for attribute in address_attributes(data):
        placeholder = placeholder_of(attribute.address)
        if placeholder is None:
            continue
        if message is None:
            message = bytearray(data)
        raw = _encode(attribute, data, placeholder)
        message[attribute.offset + 4: attribute.offset + 4 + len(raw)] = raw
    if message is None:
        return data
    _refresh_fingerprint(message)
    return bytes(message)


def decode_base64_stun(text: str) -> bytes | None:
    """The STUN message a base64 string holds, or None (most strings: cheaply)."""
    if len(text) < 28 or not _STUN_B64.match(text):
        return None
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return data if is_stun(data) else None


def rewrite_base64(text: str, placeholder_of: Any) -> str:
    """A base64 string holding a STUN message, with the volunteer's address rewritten."""
    data = decode_base64_stun(text)
    if data is None:
        return text
    cleaned = rewrite(data, placeholder_of)
    return text if cleaned is data else base64.b64encode(cleaned).decode("ascii")


def mapped_addresses_in(values: Iterable[Any]) -> list[str]:
    """Every mapped address in the STUN messages found (base64) anywhere in
    ``values`` (JSON-like data: a report line, a trace line, a ServiceResult
    serialised with ``to_json``), in order of first appearance."""
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, str):
            data = decode_base64_stun(value)
            if data is not None:
                for address in mapped_addresses(data):
                    if address not in found:
                        found.append(address)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)

    for value in values:
        walk(value)
    return found
