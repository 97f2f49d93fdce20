"""Who a client is, for per-client limits: one IPv4 address, or one IPv6 /64.

A single IPv6 subscriber usually gets a /64 (often a /56 or /48) and can pick
any address in it, so counting by exact IPv6 address would give an attacker
2^64 fresh budgets. IPv6 spellings of an IPv4 address (mapped ``::ffff:a.b.c.d``,
as a dual-stack socket shows IPv4 peers; SIIT, IPv4-compatible, 6to4, NAT64 and
Teredo) count as that IPv4 address, so one host does not get two budgets by
switching family. The key is held in memory for rate limiting only: never
logged, never stored.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from probe.bogons import IPNetwork

UNKNOWN = "unknown"  # no peer address (a Unix socket, a transport already gone)

_SIIT = ipaddress.ip_network("::ffff:0:0:0/96")  # RFC 6145/7915 IPv4-translated
_COMPATIBLE = ipaddress.ip_network("::/96")  # RFC 4291 2.5.5.1, deprecated
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 host an IPv6 address stands for, if it is one of the IPv4-in-IPv6 forms."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.teredo is not None:
        return ip.teredo[1]  # (server, client): the client is who connects
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _SIIT or any(ip in network for network in _NAT64):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _COMPATIBLE and int(ip) > 1:  # not :: or ::1
        return ipaddress.IPv4Address(int(ip))
    return None


def client_key(address: str | None) -> str:
    """The unit per-client limits count by: ``203.0.113.5`` or ``2001:db8:1:2::/64``.

    Anything that does not parse as an address (None, a Unix socket path) is one
    client, ``unknown``: the total limits still bound it.
    """
    if not address:
        return UNKNOWN
    text = address.strip().removeprefix("[").removesuffix("]").split("%", 1)[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return UNKNOWN
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is None:
            return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
        ip = embedded
    return str(ip)


def client_address(
    peer: str | None, forwarded_for: str | None, trusted_proxies: Iterable[IPNetwork]
) -> str | None:
    """The address a request came from: the TCP peer, or, when the peer is one of
    ``trusted_proxies`` (the NGO's TLS-terminating reverse proxy), the last
    address of its ``X-Forwarded-For`` (the one that proxy appended; earlier ones
    are whatever the client claimed). None when a trusted proxy gave none."""
    trusted_proxies = tuple(trusted_proxies)
    if not trusted_proxies or peer is None:
        return peer
    try:
        ip = ipaddress.ip_address(peer)
    except ValueError:
        return peer
    if not any(ip in network for network in trusted_proxies if ip.version == network.version):
        return peer
    last = (forwarded_for or "")[-200:].rsplit(",", 1)[-1].strip()
    try:
        return str(ipaddress.ip_address(last))
    except ValueError:
        return None
