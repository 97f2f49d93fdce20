"""Measures endpoints concurrently through the network seam.

Every endpoint is its own task; each endpoint runs its steps in order (DNS, then
every address x port: connect / TLS / MTProto / HTTP, or, on an endpoint of UDP
checks, STUN / TURN / UDP flow / QUIC side by side), each step under its own
timeout, and a semaphore bounds how many operations are in flight. A run with
every endpoint blackholed therefore takes about one DNS timeout plus one step
timeout, not their sum over endpoints. Cancelling the run (Ctrl-C) keeps what
was measured: unfinished endpoints come back marked ``interrupted``.

The order of endpoints (concurrently, transfers last) is ``probe.scheduler``'s;
the control helper measures through the same scheduler and ``Measurer`` from its
own vantage, so the probe and the control always run the same steps.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime
import ipaddress
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from probe import mtproto, stun
from probe.bogons import IPNetwork, is_bogon
from probe.certificates import verify_chain
from probe.net import pacing
from probe.net.network import (
    DnsExchange,
    DnsQuery,
    GetaddrinfoResult,
    HttpRequest,
    MtprotoRequest,
    Network,
    QuicRequest,
    QuicResult,
    TlsRequest,
)
from probe.observations import EndpointObservation, MtprotoCheck, PortObservation, UdpCheck
from probe.scheduler import Scheduler
from probe.targets import Endpoint
from probe.vocabulary import UDP_CHECKS, Check

log = logging.getLogger("probe.runner")

DEFAULT_TIMEOUT = 10.0
DEFAULT_CONCURRENCY = 256
# Handshakes (TLS, MTProto, QUIC) and HTTP requests started per second. A TLS
# handshake moves ~5-10 KB, so 30/s stays under ~2.5 Mbit/s: a slow home link is
# not saturated by the probe itself (a saturated link would make the probe's own
# timeouts look like blocking). TCP connects (a SYN) and DNS queries, tiny, are not
# paced: a TLS handshake waits for its turn after its connect succeeded.
DEFAULT_RATE = 30.0
USER_AGENT = "Mozilla/5.0 (probe censorship measurement; +https://github.com/)"


@dataclass(frozen=True)
class RunOptions:
    resolver: tuple[str, int] | None = None  # direct DNS queries go here; None: system only
    use_system_resolver: bool = True  # also ask getaddrinfo (what ordinary apps get)
    timeout: float = DEFAULT_TIMEOUT  # per step
    concurrency: int = DEFAULT_CONCURRENCY  # operations in flight
    rate: float | None = DEFAULT_RATE  # handshakes and requests per second (None: no limit)
    dns_linger: float = 1.0  # keep listening this long after a UDP reply (injection)
    max_addresses_per_family: int = 3
    trust_pem: str | None = None  # run-wide trust store (--ca-bundle); None: system
    routable: tuple[IPNetwork, ...] = ()  # bogon exemptions (test networks)
    started_at: datetime.datetime = field(
        default_factory=lambda: datetime.datetime.now(datetime.timezone.utc)
    )
    download_bytes: int = 8 << 20  # cap of a throughput transfer
    body_bytes: int = 1 << 20  # cap of a page body kept in the report


def _family(address: str) -> int:
    return ipaddress.ip_address(address.split("%", 1)[0]).version


def _url(scheme: str, host: str, port: int, path: str) -> str:
    default = 443 if scheme == "https" else 80
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}{'' if port == default else f':{port}'}{path}"


def candidate_addresses(
    endpoint: Endpoint,
    dns: Iterable[DnsExchange],
    system: Iterable[str],
    extra: Iterable[str],
    options: RunOptions,
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(addresses to measure, answers not measured because they are bogons).

    Order: the resolver's answers as they arrived, then the system resolver's,
    then addresses another vantage asked us to test (the control's request).
    """
    seen: list[str] = []
    for exchange in dns:
        for reply in exchange.replies:
            for answer in reply.answers:
                if answer.rrtype in ("A", "AAAA") and answer.value not in seen:
                    seen.append(answer.value)
    for address in (*system, *extra):
        if address not in seen:
            seen.append(address)
    bogons = tuple(a for a in seen if is_bogon(a, options.routable))
    measured: list[str] = []
    per_family: dict[int, int] = {}
    for address in seen:
        if address in bogons:
            continue
        family = _family(address)
        if per_family.get(family, 0) < options.max_addresses_per_family:
            per_family[family] = per_family.get(family, 0) + 1
            measured.append(address)
    return tuple(measured), bogons


class RateLimiter:
    """Spaces starts ``1/rate`` seconds apart (a token bucket with no burst)."""

    def __init__(self, rate: float | None) -> None:
        self.interval = 1.0 / rate if rate else 0.0
        self._next = 0.0

    async def wait(self) -> None:
        if not self.interval:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        start = max(now, self._next)
        self._next = start + self.interval
        if start > now:
            await asyncio.sleep(start - now)


class Measurer:
    """Runs the steps of endpoints over one network, within one concurrency budget
    and one rate of handshakes (paced after their connect: probe.net.pacing)."""

    def __init__(self, network: Network, options: RunOptions) -> None:
        self.network = network
        self.options = options
        self._slots = asyncio.Semaphore(options.concurrency)
        # DNS queries keep listening for a second after the answer (injected second
        # replies): they get slots of their own so that wait never holds up connections
        self._dns_slots = asyncio.Semaphore(options.concurrency)
        self._rate = RateLimiter(options.rate)

    async def _step(self, operation, *args):
        # UDP flows, like DNS, move a few hundred bytes a second and open no
        # connection: no rate pacing, and slots of their own, so that a flow
        # listening for seconds never holds up connections.
        if operation in (self.network.dns_exchange, self.network.getaddrinfo,
                         self.network.udp_exchange):
            async with self._dns_slots:
                return await operation(*args)
        async with self._slots:
            if operation == self.network.tcp_connect:
                return await operation(*args)  # a SYN costs no bandwidth: never paced
            if operation in (self.network.tls_handshake, self.network.mtproto_exchange):
                # paced after the connect, before the first payload byte
                # (probe.net.pacing): a blackholed address waits for nobody
                with pacing.paced(self._rate.wait):
                    return await operation(*args)
            # HTTP follows a handshake that worked: its bytes start at once. A QUIC
            # Initial is a ClientHello padded to 1,200 bytes, answered by the same
            # certificates as TLS: paced like a TLS handshake, before it is sent.
            await self._rate.wait()
            return await operation(*args)

    async def resolve(self, endpoint: Endpoint, on_early: Callable[[tuple[
        tuple[DnsExchange, ...], GetaddrinfoResult | None]], None] | None = None):
        """Every DNS exchange of ``endpoint`` and the system resolver's answer.

        ``on_early``, when given, is called once every exchange has either ended
        or had its first valid reply, with that early view: the UDP exchanges
        still listen for injected second replies (``dns_linger``) meanwhile."""
        o = self.options
        steps: list[tuple] = []
        if o.resolver is not None:
            for transport in ("udp", "tcp"):
                for qtype in ("A", "AAAA"):
                    query = DnsQuery(o.resolver[0], o.resolver[1], endpoint.host, qtype, transport)
                    linger = o.dns_linger if transport == "udp" else 0.0
                    steps.append((self.network.dns_exchange, query, o.timeout, linger))
        if o.use_system_resolver:
            steps.append((self.network.getaddrinfo, endpoint.host, o.timeout))
        early: list = [None] * len(steps)
        waiting = len(steps)

        def arrived(index: int, view) -> None:
            nonlocal waiting
            if early[index] is None:
                early[index] = view
                waiting -= 1
                if waiting == 0 and on_early is not None:
                    try:
                        on_early(self._split(early))
                    except Exception:  # never let it become the DNS step's failure
                        log.exception("starting connects on the first DNS answers failed")

        async def step(index: int, operation, *args):
            if operation == self.network.dns_exchange and args[2] and on_early is not None:
                args = (*args, lambda view: arrived(index, view))
            result = await self._step(operation, *args)
            arrived(index, result)
            return result

        results = await asyncio.gather(*(step(i, *s) for i, s in enumerate(steps)))
        return self._split(results)

    def _split(self, results: list) -> tuple[tuple[DnsExchange, ...], GetaddrinfoResult | None]:
        if self.options.use_system_resolver:
            return tuple(results[:-1]), results[-1]
        return tuple(results), None

    async def measure(
        self, endpoint: Endpoint, extra_addresses: Iterable[str] = ()
    ) -> EndpointObservation:
        """Resolve, then measure every address x port.

        Connects start on the addresses chosen from the first replies while the
        UDP exchanges keep listening for injected second replies; the addresses
        measured are still those chosen from every reply, as if the run had waited
        (``candidate_addresses``). When a late reply changes that choice (more
        addresses of a family than ``max_addresses_per_family``, the order they
        arrived in deciding), the addresses it adds are measured then, and the
        ones it pushes out are measured but left out of the observation."""
        if endpoint.host_is_address:
            dns: tuple[DnsExchange, ...] = ()
            system = None
            addresses: tuple[str, ...] = (endpoint.host,)
            bogons: tuple[str, ...] = ()
        else:
            dns, system, addresses, bogons, started = await self._resolve_and_start(
                endpoint, extra_addresses)
            return EndpointObservation(
                endpoint.id, endpoint.service, endpoint.host, system, dns, addresses, bogons,
                await self._finish_ports(endpoint, addresses, started),
            )
        measured: tuple[PortObservation, ...] = ()
        if set(endpoint.checks) - {"dns"}:
            measured = tuple(
                await asyncio.gather(
                    *(
                        self.measure_port(endpoint, address, port)
                        for address in addresses
                        for port in endpoint.ports
                    )
                )
            )
        return EndpointObservation(
            endpoint.id, endpoint.service, endpoint.host, system, dns, addresses, bogons, measured
        )

    async def _resolve_and_start(self, endpoint: Endpoint, extra_addresses: Iterable[str]):
        extra = tuple(extra_addresses)
        started: dict[tuple[str, int], asyncio.Task] = {}
        measures_ports = bool(set(endpoint.checks) - {"dns"})

        def start(addresses: Iterable[str]) -> None:
            if not measures_ports:
                return
            for address in addresses:
                for port in endpoint.ports:
                    if (address, port) not in started:
                        started[(address, port)] = asyncio.ensure_future(
                            self.measure_port(endpoint, address, port))

        def on_early(view) -> None:
            dns, system = view
            start(candidate_addresses(
                endpoint, (d for d in dns if d is not None),
                system.addresses if system else (), extra, self.options)[0])

        try:
            dns, system = await self.resolve(endpoint, on_early)
            addresses, bogons = candidate_addresses(
                endpoint, dns, system.addresses if system else (), extra, self.options
            )
            start(addresses)
        except BaseException:
            for task in started.values():
                task.cancel()
            raise
        return dns, system, addresses, bogons, started

    async def _finish_ports(
        self, endpoint: Endpoint, addresses: tuple[str, ...],
        started: dict[tuple[str, int], asyncio.Task],
    ) -> tuple[PortObservation, ...]:
        try:
            # measurements pushed out of the choice are awaited too (their operations
            # are recorded, so a replay runs them alike), and then dropped
            done = await asyncio.gather(*started.values())
        except BaseException:
            for task in started.values():
                task.cancel()
            raise
        by_key = dict(zip(started, done, strict=True))
        return tuple(by_key[(address, port)] for address in addresses
                     for port in endpoint.ports if (address, port) in by_key)

    async def measure_port(self, endpoint: Endpoint, address: str, port: int) -> PortObservation:
        if set(endpoint.checks) & UDP_CHECKS:
            return await self.measure_udp_port(endpoint, address, port)
        o = self.options
        checks = set(endpoint.checks)
        connect = tls = None
        verification = None
        mtproto_checks: list[MtprotoCheck] = []
        http = []
        uses_tls = bool(checks & {"tls", "https"}) and port != 80
        if "mtproto" in checks:
            for transport in ("intermediate", "abridged"):
                check = await self.mtproto_check(address, port, transport)
                mtproto_checks.append(check)
                connect = connect or check.result.connect
                if check.valid or check.result.connect.failure is not None:
                    break
                if check.error in ("garbage", "oversized", "not_res_pq", "nonce_mismatch"):
                    break  # something answered, just not MTProto: framing is not the issue
        elif uses_tls:
            request = TlsRequest(address, port, endpoint.sni)
            tls = await self._step(self.network.tls_handshake, request, o.timeout)
            connect = tls.connect
            if tls.failure is None:
                trust = endpoint.ca_pem if endpoint.ca_pem is not None else o.trust_pem
                verification = verify_chain(
                    tls.peer_certificates, endpoint.sni or address, trust, o.started_at
                )
        elif "tcp" in checks or checks & {"http", "download"}:
            connect = await self._step(self.network.tcp_connect, address, port, o.timeout)
        if connect is not None and connect.failure is None:
            tls_ok = tls is not None and tls.failure is None and verification is None
            if "http" in checks and not uses_tls and port != 443:
                http.append(await self.http_check(endpoint, address, port, "http"))
            if "https" in checks and tls_ok:
                http.append(await self.http_check(endpoint, address, port, "https"))
        return PortObservation(
            address, port, connect, tls, verification, tuple(mtproto_checks), tuple(http)
        )

    async def measure_udp_port(
        self, endpoint: Endpoint, address: str, port: int
    ) -> PortObservation:
        """The UDP checks of one address and UDP port, run side by side: each waits
        out its own timeout when UDP is blackholed, so together they take about
        one step timeout, not four."""
        checks = set(endpoint.checks)
        udp_steps = []
        if Check.STUN in checks:
            udp_steps.append(self.stun_check(address, port))
        if Check.TURN in checks:
            udp_steps.append(self.turn_check(address, port))
        if Check.UDP in checks:
            udp_steps.append(self.udp_flow_check(endpoint, address, port))
        quic_step = (self.quic_check(endpoint, address, port) if Check.QUIC in checks
                     else _nothing())
        udp_checks, quic = await asyncio.gather(asyncio.gather(*udp_steps), quic_step)
        verification = None
        if quic is not None and quic.peer_certificates and quic.failed_phase != "handshake":
            trust = endpoint.ca_pem if endpoint.ca_pem is not None else self.options.trust_pem
            verification = verify_chain(
                quic.peer_certificates, endpoint.sni or address, trust, self.options.started_at
            )
        return PortObservation(
            address, port, None, None, None, (), (),
            udp=tuple(udp_checks), quic=quic, quic_verification=verification,
        )

    async def stun_check(self, address: str, port: int) -> UdpCheck:
        """A Binding Request retransmitted on RFC 5389's schedule within the step,
        then a second of listening for a forged second answer."""
        timeout = self.options.timeout
        request = stun.stun_request(address, port, timeout)
        return stun.judge_stun(await self._step(self.network.udp_exchange, request, timeout))

    async def turn_check(self, address: str, port: int) -> UdpCheck:
        """An Allocate without credentials: a TURN server challenges it with a 401."""
        timeout = self.options.timeout
        request = stun.turn_request(address, port, timeout)
        return stun.judge_turn(await self._step(self.network.udp_exchange, request, timeout))

    async def udp_flow_check(self, endpoint: Endpoint, address: str, port: int) -> UdpCheck:
        """``endpoint.datagrams`` datagrams every ``endpoint.interval`` s on one 5-tuple;
        the step lasts the whole flow and its linger, at least one step timeout."""
        request = dataclasses.replace(
            stun.flow_request(address, port, endpoint.payload, endpoint.datagrams,
                              endpoint.interval),
            give_up=self.options.timeout,
        )
        duration = (request.schedule[-1] if request.schedule else 0.0) + request.linger
        timeout = max(self.options.timeout, duration + 0.5)
        result = await self._step(self.network.udp_exchange, request, timeout)
        return stun.judge_flow(endpoint.payload, result)

    async def quic_check(self, endpoint: Endpoint, address: str, port: int) -> QuicResult:
        request = QuicRequest(
            _url("https", endpoint.host, port, endpoint.path), address, port, endpoint.sni,
            max_body=min(self.options.body_bytes, 1 << 16),
        )
        return await self._step(self.network.quic_exchange, request, self.options.timeout)

    async def download(self, endpoint: Endpoint, port: PortObservation) -> PortObservation:
        """The throughput transfer of one address and port, when its steps passed.

        Transfers run after every other step of the run, one at a time
        (``probe.scheduler``): a transfer saturates the link for its duration, and on
        a slow home link it would starve the handshakes and requests of other
        endpoints into timeouts that would read as blocking.
        """
        o = self.options
        uses_tls = port.tls is not None
        if port.connect is None or port.connect.failure is not None:
            return port
        if port.tls is not None and (
            port.tls.failure is not None or port.tls_verification is not None
        ):
            return port
        scheme = "https" if uses_tls else "http"
        request = HttpRequest(
            _url(scheme, endpoint.host, port.port, endpoint.path), port.address,
            headers=(("User-Agent", USER_AGENT),),
            # a transfer measures speed: its content is not evidence, keep little
            max_body=min(o.body_bytes, 16 << 10), measure_throughput=True,
            transfer_bytes=o.download_bytes, transfer_seconds=o.timeout,
        )
        result = await self._step(self.network.http_request, request, o.timeout * 3)
        return dataclasses.replace(port, http=(*port.http, result))

    async def http_check(self, endpoint: Endpoint, address: str, port: int, scheme: str):
        method, body = "GET", ""
        if "mtproto" in endpoint.checks:
            # OONI's telegram test POSTs to the datacenters' port 80: keep comparable.
            method, body = "POST", base64.b64encode(b"probe").decode()
        request = HttpRequest(
            _url(scheme, endpoint.host, port, endpoint.path), address, method,
            headers=(("User-Agent", USER_AGENT),), body=body, max_body=self.options.body_bytes,
        )
        return await self._step(self.network.http_request, request, self.options.timeout)

    async def mtproto_check(self, address: str, port: int, transport: str) -> MtprotoCheck:
        nonce = mtproto.new_nonce()
        message = mtproto.req_pq_multi(nonce)
        payload = (
            mtproto.frame_abridged(message)
            if transport == "abridged"
            else mtproto.frame_intermediate(message)
        )
        request = MtprotoRequest(address, port, base64.b64encode(payload).decode(), transport)
        result = await self._step(self.network.mtproto_exchange, request, self.options.timeout)
        return judge_mtproto(result)


async def _nothing() -> QuicResult | None:
    return None


def sent_nonce(request: MtprotoRequest) -> bytes:
    """The nonce we sent, read back from the recorded request (replay-safe)."""
    payload = base64.b64decode(request.payload)
    return payload[-16:]


def judge_mtproto(result) -> MtprotoCheck:
    if result.failure is not None and not result.received:
        return MtprotoCheck(result, False, None)
    try:
        mtproto.parse_res_pq(
            base64.b64decode(result.received), result.request.transport, sent_nonce(result.request)
        )
    except mtproto.MtprotoError as exc:
        return MtprotoCheck(result, False, getattr(exc, "reason", str(exc)))
    return MtprotoCheck(result, True, None)


async def run_endpoints(
    network: Network,
    endpoints: Iterable[Endpoint],
    options: RunOptions,
    on_result: Callable[[EndpointObservation], None] | None = None,
    extra_addresses: dict[str, tuple[str, ...]] | None = None,
    results: dict[str, EndpointObservation] | None = None,
) -> dict[str, EndpointObservation]:
    """Measure every endpoint concurrently (the scheduler's order: transfers last,
    one at a time); on cancellation, return what is done.

    Unfinished endpoints are returned as ``interrupted`` observations in
    ``results`` and the CancelledError propagates, so the caller can write a
    complete-but-marked report before exiting; pass ``results`` to keep them.
    The control helper measures its batches with this.
    """
    endpoints = list(endpoints)
    schedule = Scheduler(
        Measurer(network, options), on_result=on_result, extra_addresses=extra_addresses,
        results=results,
    )
    try:
        await schedule.measure_all(endpoints)
        await schedule.transfer_all(endpoints)
    except asyncio.CancelledError:
        schedule.fill_interrupted(endpoints)
        raise
    return {e.id: schedule.results[e.id] for e in endpoints}
