"""Addresses that no public service can have: the "bogon" list, and its exemptions.

A DNS answer in one of these networks is not where a messaging service lives:
censors answer 10.10.34.34-36 (Iran), 127.0.0.1 (Turkmenistan), 0.0.0.0 or a
private blockpage address. The runner never connects to such an answer (that
would send a volunteer's traffic into their own LAN), and analysis reads it as
``dns.bogon``. A test network (the lab) may exempt its documentation ranges with
``routable_networks`` in its targets file.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# The IANA IPv4 and IPv6 Special-Purpose Address Registries' blocks that are not
# globally reachable, plus deprecated ones no service can live in. Left out on
# purpose: anycast blocks that are globally reachable (AS112, AMT), and the
# embeddings of an IPv4 address (mapped, 6to4, NAT64 64:ff9b::/96), which are
# judged as the IPv4 address they reach (``is_bogon``).
BOGON_NETWORKS: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
        "172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24",
        "192.88.99.0/24",  # 6to4 relay anycast, deprecated (RFC 7526)
        "192.168.0.0/16", "198.18.0.0/15",
        "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
        "::/128", "::1/128",
        "::/96",  # IPv4-compatible IPv6, deprecated (RFC 4291 2.5.5.1): ::127.0.0.1
        "::ffff:0:0/96",  # IPv4-mapped (judged as its IPv4 address first)
        "::ffff:0:0:0/96",  # SIIT IPv4-translated (RFC 2765): ::ffff:0:7f00:1
        "64:ff9b:1::/48", "100::/64",
        "2001::/23",  # IETF protocol assignments: Teredo, benchmarking, ORCHID...
        "2001:db8::/32", "3fff::/20",  # documentation (RFC 3849, RFC 9637)
        "5f00::/16",  # SRv6 SIDs (RFC 9602)
        "fc00::/7", "fe80::/10",
        "fec0::/10",  # site-local, deprecated (RFC 3879)
        "ff00::/8",
    )
)


def parse_networks(values: Iterable[str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(v, strict=False) for v in values)


_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052 well-known prefix


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address inside a mapped, 6to4 or NAT64 IPv6 address: a route to it
    is a route to that IPv4 host (10.x through a NAT64 gateway is still 10.x)."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _within(ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
            networks: Iterable[IPNetwork]) -> bool:
    return any(ip.version == n.version and ip in n for n in networks)


def is_bogon(address: str, routable: Iterable[IPNetwork] = ()) -> bool:
    """True for addresses no public endpoint can have (unparseable ones included).

    An IPv6 address embedding an IPv4 one is judged as that IPv4 address, after
    unwrapping: exempting an IPv6 network never lets ``2002:7f00:1::`` (6to4 of
    127.0.0.1) through, and exempting 127.0.0.0/8 lets ``::ffff:7f00:1`` through
    only when its IPv6 form is exempted too (``::ffff:127.0.0.0/104``)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return True
    routable = tuple(routable)
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            if _within(ip, routable) and _within(embedded, routable):
                return False
            return _within(embedded, BOGON_NETWORKS)
    if _within(ip, routable):
        return False
    return _within(ip, BOGON_NETWORKS)
