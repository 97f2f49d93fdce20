"""Discovering the volunteer's own addresses: the control helper's echo and the host's.

The only part of scrubbing that does I/O (:func:`interface_addresses` reads
the kernel's interface tables). It decides which addresses are the
volunteer's; it never looks for them in a measurement.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .forms import _parse_address


def volunteer_addresses(
    echoed: str | None, local: Iterable[str] = (), routable: Iterable[Any] = ()
) -> list[str]:
    """The addresses to scrub: the control helper's echo, plus the host's public ones.

    ``echoed`` is kept whatever its range (in the lab it is a documentation
    address); of ``local`` only globally routable ones are kept, as private
    (RFC 1918, ULA) and link-local addresses are never seen by servers.
    ``routable`` networks count as global (a test network such as the lab, whose
    targets file declares its documentation ranges public).
    """
    routable = [n for n in routable]
    found: list[str] = []
    echoed_address = _parse_address(echoed) if echoed else None
    if echoed_address is not None and not (
        echoed_address.is_loopback or echoed_address.is_unspecified
    ):
        found.append(str(echoed_address))
    for text in local:
        address = _parse_address(text)
        public = address is not None and (
            address.is_global
            or any(address.version == n.version and address in n for n in routable)
        )
        if public and str(address) not in found:
            found.append(str(address))
    return found


def interface_addresses() -> list[str]:
    """The host's own addresses, from the kernel's tables (Linux; [] elsewhere).

    Needed because the control helper echoes only the address it saw: with
    IPv6 the host has several (SLAAC, privacy addresses), and a blockpage
    reached over IPv6 echoes one of those.
    """
    found: list[str] = []
    try:  # /proc/net/if_inet6: "20010db8...0001 02 40 00 80 eth0"
        for row in Path("/proc/net/if_inet6").read_text().splitlines():
            hexa = row.split()[0]
            found.append(str(ipaddress.IPv6Address(int(hexa, 16))))
    except (OSError, ValueError, IndexError):
        pass
    try:  # /proc/net/fib_trie lists "|-- 198.51.100.2" then "/32 host LOCAL"
        previous = ""
        for row in Path("/proc/net/fib_trie").read_text().splitlines():
            stripped = row.strip()
            if stripped.startswith("/32 host LOCAL") and previous and previous not in found:
                found.append(previous)
            if stripped.startswith("|--"):
                previous = stripped[3:].strip()
            elif not stripped.startswith("/"):
                previous = ""
    except OSError:
        pass
    return found
