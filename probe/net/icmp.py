"""ICMP errors read from a socket's error queue (Linux IP_RECVERR / IPV6_RECVERR).

With the option set, an ICMP error about a socket's packets is queued on it
with the ICMP type and code and the address of who sent it (ip(7), ipv6(7));
errno alone loses them (EHOSTUNREACH is a dead host and a censor's
"administratively prohibited" alike, and a UDP socket sees nothing at all
without it). This module only reads the queue and parses ``sock_extended_err``;
what an error means is decided by ``probe.net.failures``.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass

RECVERR = {
    socket.AF_INET: (socket.IPPROTO_IP, getattr(socket, "IP_RECVERR", 11)),
    socket.AF_INET6: (socket.IPPROTO_IPV6, getattr(socket, "IPV6_RECVERR", 25)),
}
MSG_ERRQUEUE = getattr(socket, "MSG_ERRQUEUE", 0x2000)
_ORIGIN_VERSION = {2: 4, 3: 6}  # SO_EE_ORIGIN_ICMP, SO_EE_ORIGIN_ICMP6
# struct sock_extended_err: ee_errno, ee_origin, ee_type, ee_code, ee_pad, ee_info, ee_data;
# the offender's sockaddr (SO_EE_OFFENDER) follows it.
_EXTENDED_ERR = struct.Struct("=IBBBBII")


@dataclass(frozen=True)
class QueuedError:
    """One ICMP error from the queue: its errno, IP version, type, code and sender."""

    errno: int
    version: int
    icmp_type: int
    icmp_code: int
    offender: str | None


def enable(sock: socket.socket) -> bool:
    """Ask the kernel to queue ICMP errors on ``sock``; False where it cannot."""
    level_option = RECVERR.get(sock.family)
    if level_option is None:
        return False
    try:
        sock.setsockopt(*level_option, 1)
    except OSError:
        return False
    return True


def _offender(data: bytes) -> str | None:
    if len(data) < 2:
        return None
    (family,) = struct.unpack_from("=H", data)
    try:
        if family == socket.AF_INET and len(data) >= 8:
            return str(ipaddress.IPv4Address(data[4:8]))
        if family == socket.AF_INET6 and len(data) >= 24:
            return str(ipaddress.IPv6Address(data[8:24]))
    except ValueError:
        return None
    return None


def read_error(sock: socket.socket) -> QueuedError | None:
    """Dequeue one ICMP error from ``sock``, or None when nothing is queued."""
    try:
        _, ancillary, _, _ = sock.recvmsg(1, 512, MSG_ERRQUEUE)
    except OSError:  # nothing queued, or no extended errors on this platform
        return None
    for level, kind, data in ancillary:
        if (level, kind) in RECVERR.values() and len(data) >= _EXTENDED_ERR.size:
            error, origin, icmp_type, code, _, _, _ = _EXTENDED_ERR.unpack_from(data)
            version = _ORIGIN_VERSION.get(origin)
            if version is not None:
                offender = _offender(data[_EXTENDED_ERR.size :])
                return QueuedError(error, version, icmp_type, code, offender)
    return None
