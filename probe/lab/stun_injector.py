"""An on-path STUN injector, run by the lab's censor router.

The censor's nftables rule hands the client's datagrams to the call relays'
ports to this process through NFQUEUE. For each STUN Binding Request (RFC 5389:
message type 0x0001 and the magic cookie) it sends the client a forged Binding
Success with the same transaction id, whose XOR-MAPPED-ADDRESS names
``--forged`` instead of the client, from the relay's address and port; then it
lets the request go on, so the relay's genuine answer arrives second. Two
different answers to one transaction are the injection's signature, as two
replies to one DNS query are (the DNS injector in ``probe.lab.injector``). A
forged answer makes an app believe its request was answered (and learn a wrong
public address), so ICE fails later instead of failing over.

It forges nothing but Binding Successes, never drops a datagram, and lets
anything that is not a Binding Request through untouched.

Run as ``python -m probe.lab.stun_injector --queue N --forged ADDRESS --duration S``.
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
import struct
import sys

from probe.lab.nfqueue import serve_queue

MAGIC_COOKIE = 0x2112A442
BINDING_REQUEST = 0x0001
BINDING_SUCCESS = 0x0101
XOR_MAPPED_ADDRESS = 0x0020


def xor_mapped_address(address: str, port: int, transaction: bytes) -> bytes:
    """The XOR-MAPPED-ADDRESS attribute (RFC 5389 15.2), header included."""
    ip = ipaddress.ip_address(address)
    cookie = struct.pack("!I", MAGIC_COOKIE)
    xport = port ^ (MAGIC_COOKIE >> 16)
    key = cookie if ip.version == 4 else cookie + transaction
    xaddress = bytes(a ^ b for a, b in zip(ip.packed, key, strict=True))
    value = struct.pack("!BBH", 0, 1 if ip.version == 4 else 2, xport) + xaddress
    return struct.pack("!HH", XOR_MAPPED_ADDRESS, len(value)) + value


def forged_success(request: bytes, forged: str, port: int) -> bytes | None:
    """A Binding Success answering ``request`` with ``forged``:``port`` as the
    mapped address, or None when ``request`` is not a Binding Request."""
    if len(request) < 20:
        return None
    kind, _, cookie = struct.unpack("!HHI", request[:8])
    if kind != BINDING_REQUEST or cookie != MAGIC_COOKIE:
        return None
    transaction = request[8:20]
    attribute = xor_mapped_address(forged, port, transaction)
    return struct.pack("!HHI", BINDING_SUCCESS, len(attribute), MAGIC_COOKIE) + transaction + \
        attribute


def forged_packet(packet: bytes, forged: str) -> bytes | None:
    """The whole forged IP packet answering the request in ``packet``, or None."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.inet6 import IPv6

    version = packet[0] >> 4
    ip = IP(packet) if version == 4 else IPv6(packet)
    if not ip.haslayer(UDP):
        return None
    udp = ip[UDP]
    answer = forged_success(bytes(udp.payload), forged, udp.sport)
    if answer is None:
        return None
    reply_ip = IP(src=ip.dst, dst=ip.src) if version == 4 else IPv6(src=ip.dst, dst=ip.src)
    return bytes(reply_ip / UDP(sport=udp.dport, dport=udp.sport) / answer)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queue", type=int, required=True)
    parser.add_argument("--forged", required=True, help="the address the forged answers map to")
    parser.add_argument("--duration", type=float, required=True)
    args = parser.parse_args(argv)


    from scapy.layers import inet as _warm_up  # noqa: F401  (import before the first packet)

    raw4 = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    raw6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)

    def handle(packet) -> None:
        payload = packet.get_payload()
        try:
            forged = forged_packet(payload, args.forged)
        except Exception as exc:  # noqa: BLE001  (a malformed packet must not stop the censor)
            print(f"stun_injector: cannot parse a queued packet: {exc}", file=sys.stderr)
            forged = None
        if forged is not None:
            if forged[0] >> 4 == 4:
                raw4.sendto(forged, (socket.inet_ntop(socket.AF_INET, forged[16:20]), 0))
            else:
                raw6.sendto(forged, (socket.inet_ntop(socket.AF_INET6, forged[24:40]), 0))
        # The request goes on at once: the forged answer left first and wins the race.
        packet.accept()

    serve_queue(args.queue, handle, args.duration,
                f"stun_injector: queue {args.queue}, forging {args.forged}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
