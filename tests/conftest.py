"""Shared fixtures, and a guard that keeps every in-process test on safe addresses.

The guard wraps socket connect/sendto and getaddrinfo for the whole session:
a test may only talk to loopback or to the documentation ranges the lab uses
(198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32), and may only resolve names
that are literal addresses or localhost. Anything else fails the test loudly
instead of leaking a packet to the machine's real network.
"""

from __future__ import annotations

import ipaddress
import socket

import pytest
from servers import *  # noqa: F403  (loopback server fixtures: lab_pki, https_server, ...)

ALLOWED = tuple(
    ipaddress.ip_network(n)
    for n in ("127.0.0.0/8", "::1/128", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")
)


class UnsafeNetworkUse(AssertionError):
    pass


# The probe turns every exception of a network operation into a failure string,
# so a raised guard alone could go unnoticed: violations are also collected here
# and fail the test that made them.
VIOLATIONS: list[str] = []


def _check(address) -> None:
    if not isinstance(address, tuple) or not address:
        return  # AF_UNIX paths and the like
    host = str(address[0]).split("%", 1)[0]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        VIOLATIONS.append(f"reach {host!r}")
        raise UnsafeNetworkUse(f"test tried to reach a name: {host!r}") from None
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if not any(ip.version == n.version and ip in n for n in ALLOWED):
        VIOLATIONS.append(f"reach {ip}")
        raise UnsafeNetworkUse(f"test tried to reach {ip}, outside loopback and the lab ranges")


@pytest.fixture(autouse=True, scope="session")
def network_guard():
    original_connect = socket.socket.connect
    original_connect_ex = socket.socket.connect_ex
    original_sendto = socket.socket.sendto
    original_getaddrinfo = socket.getaddrinfo

    def connect(self, address):
        _check(address)
        return original_connect(self, address)

    def connect_ex(self, address):
        _check(address)
        return original_connect_ex(self, address)

    def sendto(self, data, *args):
        _check(args[-1])
        return original_sendto(self, data, *args)

    def getaddrinfo(host, *args, **kwargs):
        if host not in (None, "localhost"):
            text = host.decode() if isinstance(host, bytes) else str(host)
            try:
                ipaddress.ip_address(text.split("%", 1)[0])
            except ValueError:
                VIOLATIONS.append(f"resolve {text!r}")
                raise UnsafeNetworkUse(f"test tried to resolve {text!r}") from None
        return original_getaddrinfo(host, *args, **kwargs)

    socket.socket.connect = connect
    socket.socket.connect_ex = connect_ex
    socket.socket.sendto = sendto
    socket.getaddrinfo = getaddrinfo
    try:
        yield
    finally:
        socket.socket.connect = original_connect
        socket.socket.connect_ex = original_connect_ex
        socket.socket.sendto = original_sendto
        socket.getaddrinfo = original_getaddrinfo


@pytest.fixture(autouse=True)
def no_unsafe_network_use(network_guard):
    VIOLATIONS.clear()
    yield
    assert not VIOLATIONS, f"unsafe network use: {VIOLATIONS}"
