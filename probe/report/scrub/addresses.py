"""Discovering the volunteer's own addresses: the control helper's echo, the
addresses STUN servers saw the volunteer from, and the host's.

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
from .stun import mapped_addresses_in

#: The key under which observations (``UdpCheck``) and reports keep a STUN
#: answer's mapped address.
MAPPED_ADDRESS_KEY = "mapped_address"


def volunteer_addresses(
    echoed: str | None,
    local: Iterable[str] = (),
    routable: Iterable[Any] = (),
    mapped: Iterable[str] = (),
) -> list[str]:
    """The addresses to scrub: the control helper's echo, the addresses STUN
    servers saw us from, plus the host's public ones.

    ``echoed`` and ``mapped`` are kept whatever their range (in the lab they are
    documentation addresses): a STUN answer's XOR-MAPPED-ADDRESS is the
    volunteer's public address, so a run with STUN checks knows it even without
    a control. Of ``local`` only globally routable ones are kept, as private
    (RFC 1918, ULA) and link-local addresses are never seen by servers.
    ``routable`` networks count as global (a test network such as the lab, whose
    targets file declares its documentation ranges public).
    """
    routable = [n for n in routable]
    found: list[str] = []
    for text in (echoed, *mapped):
        address = _parse_address(text) if text else None
        if address is not None and not (address.is_loopback or address.is_unspecified):
            if str(address) not in found:
                found.append(str(address))
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


def mapped_addresses_seen(values: Iterable[Any]) -> list[str]:
    """Every address a STUN server said it saw us from, in JSON-like ``values``
    (a ServiceResult through ``to_json``, a report or trace line): the
    ``mapped_address`` the STUN check judged, and the mapped addresses of every
    STUN answer kept (a forged answer next to the real one may carry another)."""
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if key == MAPPED_ADDRESS_KEY and isinstance(item, str) and item not in found:
                    found.append(item)
                else:
                    walk(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)

    values = list(values)
    for value in values:
        walk(value)
    for address in mapped_addresses_in(values):
        if address not in found:
            found.append(address)
    return found
