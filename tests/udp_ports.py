"""UDP ports for tests on loopback: one that swallows datagrams, one the kernel refuses.

Import from a test (the tests directory is on ``sys.path``)::

    from udp_ports import closed_udp_port, silent_udp_port
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator


@contextlib.contextmanager
def silent_udp_port(host: str = "127.0.0.1") -> Iterator[int]:
    """A bound UDP socket nobody reads: datagrams vanish, no ICMP comes back
    (a blackhole, or a filter dropping the flow)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        yield sock.getsockname()[1]


@contextlib.contextmanager
def closed_udp_port(host: str = "127.0.0.1") -> Iterator[int]:
    """A UDP port nobody listens on (bound, then closed): the kernel answers ICMP
    port unreachable. Another process taking it meanwhile is very unlikely on
    an ephemeral port, and would only make the test fail loudly."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        port = sock.getsockname()[1]
    yield port
