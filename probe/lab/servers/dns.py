"""The lab's DNS: an authoritative zone behind the behaviours of a lying resolver.

One server answers UDP and TCP on the same port from a zone of A, AAAA and
CNAME records. Per-name behaviours make it the ISP resolver of a censorship
scenario: ``answer`` normally, ``nxdomain``, ``servfail``, ``refused``, ``nodata`` (NOERROR
with an empty answer), ``drop`` (never answer, as resolvers that silently discard
blocked names do), or ``forge`` a fixed address (Iran's 10.10.34.34-style block
pages, or 127.0.0.1), optionally behind a ``cname`` (Indonesia's and Turkey's
resolvers CNAME blocked names to their blockpage host).
Names match exactly, then by ``*.parent`` wildcard (closest first), then the
``"*"`` default.

Behaviours reload without a restart: the behaviour file is stat'ed on each
query and re-read when it changed (or on :meth:`DnsServer.reload`, which the
CLI calls on SIGHUP); a file that does not parse leaves the previous
behaviours in place. Deciding an answer is a pure function
(:func:`answer_query`) over the zone and behaviours.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import socket
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import dns.exception
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from probe.lab.servers.config import ConfigError
from probe.lab.servers.stream import Connection, Endpoint, Limits, StreamServer, bind_socket

ACTIONS = ("answer", "nxdomain", "servfail", "refused", "nodata", "drop", "forge")
RECORD_TYPES = ("A", "AAAA", "CNAME")
MAX_CNAME_CHAIN = 8
MAX_TCP_QUERIES = 100

Zone = dict[str, dict[str, tuple[str, ...]]]


@dataclass(frozen=True)
class DnsBehaviour:
    """What the resolver does for a name; ``addresses`` only for ``forge``."""

    action: str = "answer"
    addresses: tuple[str, ...] = ()
    ttl: int | None = None
    cname: str | None = None  # forge only: answer a CNAME to this name, then the addresses


ANSWER = DnsBehaviour()


def parse_behaviour(value: Any, where: str) -> DnsBehaviour:
    """``"nxdomain"`` (any action but forge) or ``{"forge": ADDRESS or [ADDRESS...], "ttl": N}``."""
    if isinstance(value, str):
        if value not in ACTIONS or value == "forge":
            actions = ", ".join(a for a in ACTIONS if a != "forge")
            raise ConfigError(f"{where}: {value!r} is not a behaviour (use {actions} or {{forge}})")
        return DnsBehaviour(value)
    if isinstance(value, dict) and "forge" in value:
        unknown = set(value) - {"forge", "ttl", "cname"}
        if unknown:
            raise ConfigError(
                f"{where}: unknown keys {sorted(unknown)} (allowed: forge, ttl, cname)")
        cname = value.get("cname")
        if cname is not None and (not isinstance(cname, str) or not cname.strip(".")):
            raise ConfigError(f"{where}.cname: {cname!r} is not a name")
        addresses = value["forge"]
        addresses = [addresses] if isinstance(addresses, str) else addresses
        if not isinstance(addresses, list) or not addresses:
            raise ConfigError(f"{where}: forge needs an address or a list of addresses")
        for address in addresses:
            _check_address(address, f"{where}.forge")
        ttl = value.get("ttl")
        if ttl is not None and (not isinstance(ttl, int) or ttl < 0):
            raise ConfigError(f"{where}.ttl: {ttl!r} is not a non-negative integer")
        return DnsBehaviour("forge", tuple(addresses), ttl,
                            _normal(cname) if cname is not None else None)
    raise ConfigError(f"{where}: {value!r:.60} is not a behaviour (a string or {{'forge': ...}})")


def parse_behaviours(data: Any, where: str = "behaviours") -> dict[str, DnsBehaviour]:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected an object mapping names to behaviours")
    return {
        _normal(name): parse_behaviour(value, f"{where}[{name!r}]") for name, value in data.items()
    }


def _check_address(address: Any, where: str) -> str:
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        raise ConfigError(f"{where}: {address!r} is not an IP address") from None


def _normal(name: str) -> str:
    return name.rstrip(".").lower() if name != "*" else name


def parse_zone(data: Any, where: str = "zone") -> Zone:
    """``{NAME: {"A": [...], "AAAA": [...], "CNAME": TARGET}}``; a single value may
    stand for a one-item list. NAME may be ``*.parent``."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected an object mapping names to records")
    zone: Zone = {}
    for name, records in data.items():
        here = f"{where}[{name!r}]"
        if not isinstance(records, dict):
            raise ConfigError(f'{here}: expected an object like {{"A": ["192.0.2.1"]}}')
        entry: dict[str, tuple[str, ...]] = {}
        for rrtype, values in records.items():
            if rrtype not in RECORD_TYPES:
                raise ConfigError(f"{here}: record type {rrtype!r} is not one of {RECORD_TYPES}")
            values = [values] if isinstance(values, str) else values
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                raise ConfigError(f"{here}.{rrtype}: expected a string or a list of strings")
            if rrtype == "CNAME":
                if len(values) != 1:
                    raise ConfigError(f"{here}.CNAME: exactly one target")
                entry[rrtype] = (_normal(values[0]),)
                continue
            for value in values:
                version = ipaddress.ip_address(_check_address(value, f"{here}.{rrtype}")).version
                if version != (4 if rrtype == "A" else 6):
                    raise ConfigError(f"{here}.{rrtype}: {value} is not an IPv{version} address")
            entry[rrtype] = tuple(values)
        if "CNAME" in entry and len(entry) > 1:
            raise ConfigError(f"{here}: a CNAME cannot have other records (RFC 1034 3.6.2)")
        zone[_normal(name)] = entry
    return zone


def _lookup(table: Mapping[str, Any], name: str) -> Any | None:
    """Exact name, then the closest ``*.ancestor`` wildcard."""
    if name in table:
        return table[name]
    labels = name.split(".")
    for index in range(1, len(labels)):
        wildcard = "*." + ".".join(labels[index:])
        if wildcard in table:
            return table[wildcard]
    return None


def behaviour_for(behaviours: Mapping[str, DnsBehaviour], name: str) -> DnsBehaviour:
    found = _lookup(behaviours, _normal(name))
    if found is None:
        found = behaviours.get("*", ANSWER)
    return found


def _rrset(owner: str, ttl: int, rrtype: str, values: Sequence[str]) -> dns.rrset.RRset:
    if rrtype == "CNAME":
        values = [v if v.endswith(".") else v + "." for v in values]
    return dns.rrset.from_text_list(owner + ".", ttl, "IN", rrtype, list(values))


def answer_query(
    query: dns.message.Message,
    zone: Zone,
    behaviours: Mapping[str, DnsBehaviour],
    ttl: int = 300,
) -> dns.message.Message | None:
    """The response to ``query``, or None when the behaviour is to drop it."""
    response = dns.message.make_response(query)
    response.flags |= dns.flags.RA
    if query.opcode() != dns.opcode.QUERY:
        response.set_rcode(dns.rcode.NOTIMP)
        return response
    if len(query.question) != 1:
        response.set_rcode(dns.rcode.FORMERR)
        return response
    question = query.question[0]
    name = _normal(question.name.to_text(omit_final_dot=True))
    qtype = dns.rdatatype.to_text(question.rdtype)
    behaviour = behaviour_for(behaviours, name)
    if behaviour.action == "drop":
        return None
    if behaviour.action in ("nxdomain", "servfail", "refused"):
        response.set_rcode(dns.rcode.from_text(behaviour.action.upper()))
        return response
    if question.rdclass != dns.rdataclass.IN:
        response.set_rcode(dns.rcode.REFUSED)
        return response
    if behaviour.action == "nodata":
        return response
    if behaviour.action == "forge":
        version = {"A": 4, "AAAA": 6}.get(qtype)
        matching = [a for a in behaviour.addresses if ipaddress.ip_address(a).version == version]
        forged_ttl = ttl if behaviour.ttl is None else behaviour.ttl
        owner = name
        if behaviour.cname is not None:
            response.answer.append(_rrset(name, forged_ttl, "CNAME", [behaviour.cname]))
            owner = behaviour.cname
        if matching:
            response.answer.append(_rrset(owner, forged_ttl, qtype, matching))
        return response
    response.flags |= dns.flags.AA
    current = name
    for _ in range(MAX_CNAME_CHAIN):
        records = _lookup(zone, current)
        if records is None:
            if not response.answer:
                response.set_rcode(dns.rcode.NXDOMAIN)
            break
        if "CNAME" in records and qtype != "CNAME":
            response.answer.append(_rrset(current, ttl, "CNAME", records["CNAME"]))
            current = records["CNAME"][0]
            continue
        if qtype in records:
            response.answer.append(_rrset(current, ttl, qtype, records[qtype]))
        break
    return response


class BehaviourFile:
    """A JSON behaviour file re-read whenever its (inode, size, mtime) change."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._stamp: tuple[int, int, int] | None = None
        self.behaviours: dict[str, DnsBehaviour] = {}

    def refresh(self, force: bool = False) -> dict[str, DnsBehaviour]:
        try:
            stat = os.stat(self.path)
        except OSError:
            self._stamp, self.behaviours = None, {}
            return self.behaviours
        stamp = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if force or stamp != self._stamp:
            self._stamp = stamp
            try:
                self.behaviours = parse_behaviours(
                    json.loads(self.path.read_text()), str(self.path)
                )
            except (OSError, ValueError) as exc:
                print(f"dns: keeping previous behaviours: {exc}", file=sys.stderr)
        return self.behaviours


class _DatagramProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        reply = self.server.reply(data, udp=True)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


class _TcpDns(StreamServer):
    kind = "dns-tcp"

    def __init__(self, server: DnsServer, listen: Sequence[Endpoint], limits: Limits) -> None:
        super().__init__(listen, limits)
        self.server = server

    async def handle(self, connection: Connection) -> None:
        for _ in range(MAX_TCP_QUERIES):
            head = await connection.recv(2)
            if not head:
                return
            if len(head) == 1:
                head += await connection.recv_exactly(1)
            message = await connection.recv_exactly(int.from_bytes(head, "big"))
            reply = self.server.reply(message, udp=False)
            if reply is not None:
                await connection.send(len(reply).to_bytes(2, "big") + reply)


class DnsServer:
    """UDP and TCP DNS on each endpoint (same port for both; port 0 picks one)."""

    kind = "dns"

    def __init__(
        self,
        listen: Sequence[Endpoint],
        zone: Zone | Mapping[str, Any],
        behaviours: Mapping[str, DnsBehaviour | Any] | None = None,
        *,
        behaviour_file: str | Path | None = None,
        ttl: int = 300,
        limits: Limits | None = None,
    ) -> None:
        if not listen:
            raise ValueError("dns server: nothing to listen on")
        self.listen = [(host, int(port)) for host, port in listen]
        self.zone = parse_zone(dict(zone))
        self.behaviours = {
            _normal(name): value
            if isinstance(value, DnsBehaviour)
            else parse_behaviour(value, name)
            for name, value in (behaviours or {}).items()
        }
        self.behaviour_file = BehaviourFile(behaviour_file) if behaviour_file else None
        self.ttl = ttl
        self.limits = limits or Limits()
        self.endpoints: list[Endpoint] = []
        self.queries = 0
        self._transports: list[asyncio.DatagramTransport] = []
        self._tcp: list[_TcpDns] = []

    def current_behaviours(self) -> dict[str, DnsBehaviour]:
        if self.behaviour_file is None:
            return self.behaviours
        return {**self.behaviours, **self.behaviour_file.refresh()}

    def reload(self) -> None:
        """Re-read the behaviour file now (the CLI calls this on SIGHUP)."""
        if self.behaviour_file is not None:
            self.behaviour_file.refresh(force=True)

    def reply(self, wire: bytes, *, udp: bool) -> bytes | None:
        """The wire reply to a wire query, or None (drop, unparseable, or not a query)."""
        self.queries += 1
        try:
            query = dns.message.from_wire(wire)
        except Exception:  # noqa: BLE001 - untrusted bytes; dnspython raises many kinds
            return None
        if query.flags & dns.flags.QR:
            return None
        response = answer_query(query, self.zone, self.current_behaviours(), self.ttl)
        if response is None:
            return None
        max_size = max(512, query.payload) if udp and query.edns >= 0 else 512 if udp else 65535
        try:
            return response.to_wire(max_size=max_size)
        except dns.exception.TooBig:
            response.answer.clear()
            response.flags |= dns.flags.TC
            return response.to_wire(max_size=max_size)

    async def start(self) -> None:
        try:
            for host, port in self.listen:
                await self._start_endpoint(host, port)
        except BaseException:
            await self.stop()
            raise

    async def _start_endpoint(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        for attempt in range(5):
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _DatagramProtocol(self), sock=bind_socket(host, port, socket.SOCK_DGRAM)
            )
            bound = transport.get_extra_info("sockname")[:2]
            tcp = _TcpDns(self, [bound], self.limits)
            try:
                await tcp.start()
            except OSError:
                transport.close()
                if port != 0 or attempt == 4:
                    raise
                continue  # the UDP port's TCP twin was taken: pick another port
            self._transports.append(transport)  # type: ignore[arg-type]
            self._tcp.append(tcp)
            self.endpoints.append(bound)
            return

    async def stop(self) -> None:
        for transport in self._transports:
            transport.close()
        for tcp in self._tcp:
            with contextlib.suppress(Exception):
                await tcp.stop()
        self._transports.clear()
        self._tcp.clear()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        return self.endpoints[0][1]
