"""A bounded UDP echo: the reference flow a probe compares a messenger's UDP with.

``probe control serve --udp-echo 3478 443 596`` answers datagrams on those
ports with their own bytes, so a probe can run a ``udp`` flow (payload
``echo``) to an uncensored destination that no censor allowlists: if that flow
is cut after a few packets too, the volunteer's network cuts every UDP flow,
not only the messenger's.

It faces the Internet, and UDP sources are forged at will, so it is built to be
worthless as a reflector and never an amplifier:

* the answer is the datagram's own bytes, never more, from the port it came to;
* datagrams from source ports below 1024, or from well-known UDP service ports
  (SSDP 1900, mDNS 5353, memcached 11211, STUN 3478...: where reflection attacks
  aim), or from one of its own echo ports, are ignored;
* empty datagrams and datagrams over ``max_bytes`` are ignored;
* a token bucket per source (an IPv4 address, an IPv6 /64) and one for every
  source together bound what any victim can receive;
* a datagram it has already echoed to the same source and port is not echoed
  again: two echo services pointed at each other by one forged datagram (the
  "Loop DoS" of application-layer loops, CISPA 2024) stop after one round;
* memory is bounded: at most ``max_sources`` sources (least recently seen
  forgotten first), ``max_remembered`` digests, a capped send buffer;
* it never logs a client's address, only counters.

What it refuses to do: say anything of its own, keep anything but the
bounded state above, or log where a datagram came from. Its UDP sockets are
opened by asyncio (``create_datagram_endpoint``), never by hand.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import ipaddress
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from probe.serving.buckets import TokenBucket

log = logging.getLogger("probe.control.udp_echo")

# Source ports of UDP services that answer unsolicited datagrams, the usual
# targets (and sources) of reflection attacks, above the privileged range (every
# port below 1024 is refused anyway: DNS 53, NTP 123, SNMP 161, CLDAP 389...).
# US-CERT TA14-017A and the memcached (2018) and WS-Discovery (2019) attacks.
REFLECTOR_PORTS = frozenset({
    1194,  # OpenVPN
    1434,  # MS SQL browser
    1900,  # SSDP
    3283,  # Apple Remote Desktop
    3478, 3479, 5349,  # STUN/TURN servers answer Binding Requests
    3702,  # WS-Discovery
    5060,  # SIP
    5353,  # mDNS
    5683,  # CoAP
    10001,  # Ubiquiti discovery
    11211,  # memcached
    17185,  # VxWorks debug
    27015,  # game server queries (A2S)
    32414,  # Plex discovery
    37810,  # DVR discovery
})

WILDCARDS = ("", "0.0.0.0", "::")
MAX_ECHO_PORTS = 8  # what one baseline endpoint can hold (probe.control.protocol.MAX_PORTS)


def parse_ports(values: Sequence[str]) -> tuple[int, ...]:
    """``--udp-echo`` values: ports, comma lists and ranges ("3478", "443,596-599").

    Raises ValueError with a sentence for the user on anything else."""
    ports: list[int] = []
    for value in values:
        for part in str(value).replace(" ", ",").split(","):
            if not part:
                continue
            first, _, last = part.partition("-")
            try:
                low, high = int(first), int(last or first)
            except ValueError:
                raise ValueError(f"{part!r} is not a port or a range of ports") from None
            if not 0 < low <= high < 65536:
                raise ValueError(f"{part!r}: ports go from 1 to 65535")
            if high - low >= MAX_ECHO_PORTS:
                raise ValueError(f"{part!r}: at most {MAX_ECHO_PORTS} ports")
            ports.extend(p for p in range(low, high + 1) if p not in ports)
    if len(ports) > MAX_ECHO_PORTS:
        raise ValueError(f"at most {MAX_ECHO_PORTS} UDP echo ports, got {len(ports)}")
    return tuple(ports)


@dataclass(frozen=True)
class EchoLimits:
    """What one source, and all of them together, may get out of the echo."""

    burst: int = 200  # datagrams one source may have echoed at once
    per_second: float = 20.0  # and then per second, sustained
    total_burst: int = 4000  # every source together
    total_per_second: float = 2000.0
    max_bytes: int = 1472  # a 1500-byte IPv4 packet; call media is smaller
    max_sources: int = 16384  # sources remembered (each a bucket: ~200 bytes)
    max_remembered: int = 65536  # digests of echoed datagrams (loop detection)
    max_buffered: int = 256 * 1024  # bytes waiting in a socket's send buffer

    def advertised(self) -> dict[str, float | int]:
        """What a probe needs to size its flows so that they are never cut by us."""
        return {"burst": self.burst, "per_second": self.per_second, "max_bytes": self.max_bytes}


DEFAULT_LIMITS = EchoLimits()


@dataclass
class EchoCounters:
    """How many datagrams went where; the only thing the echo ever reports."""

    received: int = 0
    echoed: int = 0
    ignored_port: int = 0  # privileged or reflector source port
    ignored_size: int = 0  # empty or over max_bytes
    ignored_repeat: int = 0  # already echoed to that source and port (a loop)
    ignored_rate: int = 0  # the source's bucket is empty
    ignored_total: int = 0  # the bucket of every source together is empty
    ignored_busy: int = 0  # the socket's send buffer is full
    send_errors: int = 0  # ICMP errors and failed sends (not logged: they name addresses)

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def source_key(host: str) -> int:
    """The unit a source is limited by: an IPv4 address, or an IPv6 /64 (one
    subscriber's prefix: a host picks any address inside it)."""
    address = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped  # an IPv4 client of a dual-stack socket
        if mapped is None:
            return (int(address) >> 64) | (1 << 64)  # tagged: never equal to an IPv4 key
        address = mapped
    return int(address)


class EchoPolicy:
    """Decides, datagram by datagram, whether to echo; pure state, no sockets."""

    def __init__(
        self,
        limits: EchoLimits = DEFAULT_LIMITS,
        own_ports: Sequence[int] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits
        self.clock = clock
        self.denied_ports = REFLECTOR_PORTS | frozenset(own_ports)
        self.counters = EchoCounters()
        self._total = TokenBucket(limits.total_burst, limits.total_per_second, clock)
        self._sources: OrderedDict[int, TokenBucket] = OrderedDict()
        self._remembered: OrderedDict[int, None] = OrderedDict()

    def admit(
        self, data: bytes, host: str, port: int, buffered: int = 0, local_port: int = 0
    ) -> bool:
        """Whether to echo ``data`` from ``host``:``port`` that came to ``local_port``."""
        counters, limits = self.counters, self.limits
        counters.received += 1
        if port < 1024 or port in self.denied_ports:
            counters.ignored_port += 1
            return False
        if not data or len(data) > limits.max_bytes:
            counters.ignored_size += 1
            return False
        if buffered + len(data) > limits.max_buffered:
            counters.ignored_busy += 1
            return False
        try:
            key = source_key(host)
        except ValueError:
            counters.ignored_port += 1
            return False
        # Python's hash of bytes is keyed per process (SipHash): a requester cannot
        # craft collisions to make the echo drop someone else's datagrams
        digest = hash((key, port, local_port, data))
        if digest in self._remembered:
            counters.ignored_repeat += 1
            return False
        if self._total.available() < 1:
            counters.ignored_total += 1
            return False
        bucket = self._sources.get(key)
        if bucket is None:
            bucket = TokenBucket(limits.burst, limits.per_second, self.clock)
            self._sources[key] = bucket
            if len(self._sources) > limits.max_sources:
                self._sources.popitem(last=False)
        else:
            self._sources.move_to_end(key)
        if not bucket.take():
            counters.ignored_rate += 1
            return False
        self._total.take()
        self._remembered[digest] = None
        if len(self._remembered) > limits.max_remembered:
            self._remembered.popitem(last=False)
        counters.echoed += 1
        return True

    @property
    def sources(self) -> int:
        return len(self._sources)


class _EchoProtocol(asyncio.DatagramProtocol):
    def __init__(self, policy: EchoPolicy) -> None:
        self.policy = policy
        self.transport: asyncio.DatagramTransport | None = None
        self.local_port = 0

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport
        self.local_port = transport.get_extra_info("sockname")[1]

    def datagram_received(self, data: bytes, addr) -> None:  # type: ignore[override]
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        # the selector transport has a send buffer (typeshed omits it on DatagramTransport)
        buffered = transport.get_write_buffer_size()  # type: ignore[attr-defined]
        if self.policy.admit(data, addr[0], addr[1], buffered, self.local_port):
            transport.sendto(data, addr)  # the same bytes: never larger than what came

    def error_received(self, exc: Exception) -> None:
        self.policy.counters.send_errors += 1  # an ICMP error names an address: count only


class UdpEcho:
    """The echo on ``ports`` of ``host`` (a wildcard serves IPv4 and IPv6)."""

    def __init__(
        self,
        ports: Sequence[int],
        host: str = "0.0.0.0",
        limits: EchoLimits = DEFAULT_LIMITS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        for port in ports:
            if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port < 65536:
                raise ValueError(f"UDP echo port {port!r} is not a port number (1-65535)")
        # a port named twice is bound once; 0 (any free port: tests) may repeat
        self.requested = tuple(p for i, p in enumerate(ports) if p == 0 or p not in ports[:i])
        self.host = host
        self.policy = EchoPolicy(limits, [p for p in self.requested if p], clock)
        self.ports: tuple[int, ...] = ()  # as bound (port 0 asks for any free port)
        self._transports: list[asyncio.DatagramTransport] = []

    @property
    def counters(self) -> EchoCounters:
        return self.policy.counters

    async def _bind(self, host: str, port: int) -> int:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _EchoProtocol(self.policy), local_addr=(host, port)
        )
        self._transports.append(transport)
        return transport.get_extra_info("sockname")[1]

    async def _bind_port(self, port: int) -> int:
        if self.host not in WILDCARDS:
            return await self._bind(self.host, port)
        try:
            # "::" also receives IPv4 (as ::ffff:a.b.c.d) unless the system makes
            # IPv6 sockets v6-only (net.ipv6.bindv6only=1): then the IPv4 bind below works
            port = await self._bind("::", port)
        except OSError:
            return await self._bind("0.0.0.0", port)  # no IPv6 on this host
        try:
            await self._bind("0.0.0.0", port)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
        return port

    async def start(self) -> None:
        """Bind every port; on any failure nothing stays bound and OSError says why."""
        try:
            self.ports = tuple([await self._bind_port(port) for port in self.requested])
        except OSError:
            await self.stop()
            raise
        self.policy.denied_ports |= frozenset(self.ports)

    async def stop(self) -> None:
        for transport in self._transports:
            transport.close()
        self._transports.clear()
        if self.counters.received:
            counts = " ".join(f"{k}={v}" for k, v in self.counters.as_dict().items())
            log.info("udp echo: %s", counts)
