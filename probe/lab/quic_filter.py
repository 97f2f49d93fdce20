"""A QUIC SNI filter, run by the lab's censor router (Great Firewall style, 2024).

The censor's nftables rule hands every UDP datagram from the client to port 443
to this process through NFQUEUE. A QUIC Initial packet is protected only with
keys derived from its own Destination Connection ID (RFC 9001 5.2), so an
on-path box can decrypt it: this one does so with aioquic's crypto, reads the
ClientHello in its CRYPTO frames and takes the server name. A flow (5-tuple)
whose Initial names a blocked server is dropped, that packet and every later
one, for ``--residual`` seconds; any other datagram passes untouched. The Great
Firewall does this since April 2024 (Zohaib et al., "Exposing and
Circumventing SNI-based QUIC Censorship of the Great Firewall of China", USENIX
Security 2025).

It refuses to do anything else: it never answers, never forges a packet, and
a datagram it cannot parse passes (as the GFW's filter lets unparseable ones
through). A ClientHello split over several Initial packets (large post-quantum
key shares) is not reassembled: only the first packet's CRYPTO data at offset 0
is read, which is what aioquic's clients send.

Run as ``python -m probe.lab.quic_filter --queue N --name NAME... --duration S``.
"""

from __future__ import annotations

import argparse
import struct
import sys
import time

from probe.lab.nfqueue import serve_queue

Flow = tuple[bytes, bytes, int, int]  # source, destination, source port, destination port

QUIC_V1 = 0x00000001
QUIC_V2 = 0x6B3343CF


def _udp_payload(packet: bytes) -> tuple[Flow, bytes] | None:
    """(flow, UDP payload) of an IPv4 or IPv6 packet carrying UDP, else None."""
    if not packet:
        return None
    version = packet[0] >> 4
    if version == 4:
        header = (packet[0] & 0x0F) * 4
        if len(packet) < header + 8 or packet[9] != 17:
            return None
        source, destination = packet[12:16], packet[16:20]
    elif version == 6:
        header = 40
        if len(packet) < header + 8 or packet[6] != 17:  # no extension headers in the lab
            return None
        source, destination = packet[8:24], packet[24:40]
    else:
        return None
    sport, dport = struct.unpack("!HH", packet[header:header + 4])
    return (source, destination, sport, dport), packet[header + 8:]


def _varint(data: bytes, offset: int) -> tuple[int, int]:
    """A QUIC variable-length integer at ``offset``: (value, next offset)."""
    first = data[offset]
    length = 1 << (first >> 6)
    value = first & 0x3F
    for byte in data[offset + 1:offset + length]:
        value = (value << 8) | byte
    if offset + length > len(data):
        raise ValueError("truncated varint")
    return value, offset + length


def initial_crypto_data(datagram: bytes) -> bytes | None:
    """The CRYPTO data at offset 0 of the first Initial packet in ``datagram``
    (decrypted with the client's Initial keys), or None when it is not one."""
    from aioquic.buffer import Buffer
    from aioquic.quic.crypto import CryptoPair
    from aioquic.quic.packet import QuicPacketType, pull_quic_header

    if len(datagram) < 7 or not datagram[0] & 0x80:
        return None  # short header: not an Initial
    buf = Buffer(data=datagram)
    header = pull_quic_header(buf, host_cid_length=8)
    if header.packet_type != QuicPacketType.INITIAL or header.version not in (QUIC_V1, QUIC_V2):
        return None
    crypto = CryptoPair()
    # The censor derives the *client's* Initial keys, as the server would.
    crypto.setup_initial(header.destination_cid, is_client=False, version=header.version)
    end = header.packet_length
    _, payload, _ = crypto.decrypt_packet(datagram[:end], buf.tell(), 0)
    offset, chunks = 0, {}
    while offset < len(payload):
        frame, offset = _varint(payload, offset)
        if frame in (0x00, 0x01):  # PADDING, PING
            continue
        if frame in (0x02, 0x03):  # ACK: skip its fields
            _, offset = _varint(payload, offset)  # largest acknowledged
            _, offset = _varint(payload, offset)  # delay
            ranges, offset = _varint(payload, offset)
            _, offset = _varint(payload, offset)  # first range
            for _ in range(ranges * 2):
                _, offset = _varint(payload, offset)
            if frame == 0x03:
                for _ in range(3):
                    _, offset = _varint(payload, offset)
            continue
        if frame == 0x06:  # CRYPTO
            start, offset = _varint(payload, offset)
            length, offset = _varint(payload, offset)
            chunks[start] = payload[offset:offset + length]
            offset += length
            continue
        break  # CONNECTION_CLOSE or anything else: stop reading
    data = b""
    while len(data) in chunks:  # contiguous from offset 0
        data += chunks[len(data)]
    return data or None


def client_hello_sni(hello: bytes) -> str | None:
    """The server_name of a TLS ClientHello handshake message, or None."""
    if len(hello) < 4 or hello[0] != 1:
        return None
    offset = 4 + 2 + 32  # handshake header, legacy_version, random
    offset += 1 + hello[offset]  # legacy_session_id
    (suites,) = struct.unpack("!H", hello[offset:offset + 2])
    offset += 2 + suites
    offset += 1 + hello[offset]  # legacy_compression_methods
    (total,) = struct.unpack("!H", hello[offset:offset + 2])
    offset += 2
    end = min(len(hello), offset + total)
    while offset + 4 <= end:
        kind, length = struct.unpack("!HH", hello[offset:offset + 4])
        offset += 4
        if kind == 0:  # server_name: list length, name type 0, name length, name
            (name_length,) = struct.unpack("!H", hello[offset + 3:offset + 5])
            return hello[offset + 5:offset + 5 + name_length].decode("ascii", "replace")
        offset += length
    return None


def quic_sni(datagram: bytes) -> str | None:
    """The SNI of the QUIC Initial in ``datagram``, or None for anything else."""
    try:
        hello = initial_crypto_data(datagram)
        return client_hello_sni(hello) if hello else None
    except (ValueError, IndexError, struct.error):
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queue", type=int, required=True)
    parser.add_argument("--name", action="append", required=True)
    parser.add_argument("--residual", type=float, default=60.0,
                        help="seconds a blocked flow stays dropped")
    parser.add_argument("--duration", type=float, required=True)
    args = parser.parse_args(argv)
    names = {n.rstrip(".").lower() for n in args.name}
    blocked: dict[Flow, float] = {}  # flow -> until when it is dropped

    def handle(packet) -> None:
        parsed = _udp_payload(packet.get_payload())
        if parsed is None:
            packet.accept()
            return
        flow, datagram = parsed
        now = time.monotonic()
        if blocked.get(flow, 0.0) > now:
            packet.drop()
            return
        sni = quic_sni(datagram)
        if sni is not None and sni.rstrip(".").lower() in names:
            if len(blocked) > 4096:
                blocked.clear()
            blocked[flow] = now + args.residual
            print(f"quic_filter: dropped a QUIC flow naming {sni}", file=sys.stderr, flush=True)
            packet.drop()
            return
        packet.accept()

    serve_queue(args.queue, handle, args.duration,
                f"quic_filter: queue {args.queue}, names {sorted(names)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
