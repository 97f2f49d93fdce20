"""A scripted network: a described world answering the runner's operations, for traces.

The handcrafted corpus (``make_corpus.py``) and the replay benchmark need traces
of situations nobody can reproduce on loopback (a censor in Iran, a throttled
transfer in Russia). Rather than writing trace lines by hand, each case
describes its world (:class:`World`: honest DNS zone, and what the censor does to
DNS, connects, TLS, HTTP and MTProto) and the real runner and session run over a
:class:`ScriptedNetwork` of it, recorded by the real ``RecordingNetwork``. The
trace therefore holds exactly the operations the runner asks for, with results
built from the same code paths as live ones (DNS replies are real wire messages
parsed by ``probe.net.dns``; certificates are real X.509).

The control helper is simulated the way the real one works: it parses the
probe's request with ``probe.control.protocol`` and measures the requested
endpoints with the same ``run_endpoints`` over the control's own world.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass, field

import dns.message
import dns.rcode
import dns.rrset
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from probe import mtproto
from probe.control import protocol
from probe.lab.servers.stun import StunServer
from probe.net import dns as netdns
from probe.net import failures
from probe.net.network import (
    ConnectResult,
    ControlRequest,
    ControlResult,
    DnsExchange,
    DnsQuery,
    GetaddrinfoResult,
    HttpRequest,
    HttpResult,
    MtprotoRequest,
    MtprotoResult,
    QuicRequest,
    QuicResult,
    Timing,
    TlsRequest,
    TlsResult,
    UdpReceived,
    UdpRequest,
    UdpResult,
    UdpSent,
)
from probe.runner import RunOptions, run_endpoints

# --------------------------------------------------------------------------- #
# Certificates made at generation time                                         #
# --------------------------------------------------------------------------- #


@dataclass
class Authority:
    """A root CA that issues leaves on demand, valid around a fixed date."""

    name: str
    at: datetime.datetime
    key: ec.EllipticCurvePrivateKey = field(init=False)
    certificate: x509.Certificate = field(init=False)
    _leaves: dict[str, str] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.name)])
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self.at - datetime.timedelta(days=3650))
            .not_valid_after(self.at + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()),
                           critical=False)
            .sign(self.key, hashes.SHA256())
        )

    @property
    def pem(self) -> str:
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode()

    @property
    def der_b64(self) -> str:
        return base64.b64encode(self.certificate.public_bytes(serialization.Encoding.DER)).decode()

    def leaf(self, name: str) -> str:
        """Base64 DER of a leaf for ``name`` (cached: one certificate per name)."""
        if name not in self._leaves:
            key = ec.generate_private_key(ec.SECP256R1())
            try:
                san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(name))
            except ValueError:
                san = x509.DNSName(name)
            certificate = (
                x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name[:64])]))
                .issuer_name(self.certificate.subject)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(self.at - datetime.timedelta(days=30))
                .not_valid_after(self.at + datetime.timedelta(days=365))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                               critical=False)
                .add_extension(x509.SubjectAlternativeName([san]), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    self.key.public_key()), critical=False)
                .sign(self.key, hashes.SHA256())
            )
            self._leaves[name] = base64.b64encode(
                certificate.public_bytes(serialization.Encoding.DER)).decode()
        return self._leaves[name]

    def chain(self, name: str) -> tuple[str, ...]:
        return (self.leaf(name), self.der_b64)


# --------------------------------------------------------------------------- #
# The world                                                                    #
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class Reply:
    """One DNS reply a world sends: after ``delay`` seconds, with these addresses."""

    addresses: tuple[str, ...] = ()
    rcode: str = "NOERROR"
    delay: float = 0.02
    ttl: int = 300


@dataclass
class Http:
    status: int = 200
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = (("Content-Type", "text/html; charset=utf-8"),)
    failure: str | None = None
    throughput_bps: float | None = None  # for transfers (measure_throughput)
    transfer_bytes: int = 0  # bytes a transfer received (kept body is capped)
    duration: float = 0.2


class World:
    """What one vantage sees. Subclasses override the methods to add a censor."""

    def __init__(self, authority: Authority, zone: dict[str, Iterable[str]]) -> None:
        self.authority = authority
        self.zone = {name: tuple(addresses) for name, addresses in zone.items()}

    # DNS -------------------------------------------------------------------
    def honest(self, name: str, qtype: str) -> Reply:
        if name not in self.zone:
            return Reply(rcode="NXDOMAIN")
        family = 6 if qtype == "AAAA" else 4
        return Reply(tuple(a for a in self.zone[name]
                           if ipaddress.ip_address(a).version == family))

    def dns(self, query: DnsQuery) -> list[Reply]:
        """Replies to a direct query, in arrival order; [] is a timeout."""
        return [self.honest(query.qname, query.qtype)]

    def system(self, host: str) -> tuple[str, ...] | str:
        """The system resolver's addresses for ``host``, or a failure string."""
        addresses: list[str] = []
        for qtype in ("A", "AAAA"):
            replies = self.dns(DnsQuery("system", 53, host, qtype))
            if not replies:
                return failures.GENERIC_TIMEOUT
            if replies[0].rcode == "NXDOMAIN":
                return failures.DNS_NXDOMAIN
            addresses += replies[0].addresses
        return tuple(addresses) or failures.DNS_NO_ANSWER

    # TCP, TLS ----------------------------------------------------------------
    def connect(self, address: str, port: int) -> str | None:
        return None

    def tls(self, request: TlsRequest) -> str | tuple[str, ...]:
        """A handshake failure, or the chain (base64 DER, leaf first) the peer sends."""
        return self.authority.chain(request.sni or request.address)

    # HTTP, MTProto -----------------------------------------------------------
    def http(self, request: HttpRequest) -> Http:
        host = request.url.split("/")[2]
        if request.measure_throughput:
            return Http(body=b"\0" * 4096, throughput_bps=6_000_000, transfer_bytes=8 << 20,
                        duration=1.5)
        return Http(body=f"<html><head><title>{host}</title></head><body>{host}</body></html>"
                    .encode())

    def mtproto(self, request: MtprotoRequest) -> bytes | str:
        """The bytes a datacenter answers (a valid resPQ), or a failure string."""
        sent = base64.b64decode(request.payload)
        nonce = sent[-16:]
        answer = mtproto.res_pq(nonce, os.urandom(16), b"\x17\xed\x48\x94\x1a\x08\xf9\x81",
                                (0xC3B42B026CE86B21,))
        return mtproto.frame(answer, request.transport, initial=False)


    # UDP, QUIC -----------------------------------------------------------------
    def udp(self, request: UdpRequest) -> list[list[bytes]] | str:
        """Per datagram sent, the datagrams answering it (a STUN/TURN server that
        echoes anything else); or a failure string for the whole flow."""
        server = StunServer([("0.0.0.0", 0)])
        source = (self.probe_address, 40000)
        return [server.replies(base64.b64decode(d), source, ("flow",))
                for d in request.datagrams]

    def quic(self, request: QuicRequest) -> str | tuple[int, tuple[str, ...]]:
        """A handshake failure, or the HTTP/3 status and the chain the peer sends."""
        return 200, self.authority.chain(request.sni or request.address)

    probe_address = "192.0.2.77"


# --------------------------------------------------------------------------- #
# The network                                                                  #
# --------------------------------------------------------------------------- #


class ScriptedNetwork:
    """The Network seam over a World, on a virtual clock (nothing waits)."""

    def __init__(self, world: World, control: World | None = None,
                 control_options: RunOptions | None = None,
                 probe_address: str = "192.0.2.77") -> None:
        self.world = world
        self.control = control
        # The helper's trust store and clock: the case's root and date, so that its
        # chain verification agrees with the world it measures.
        self.control_options = control_options or RunOptions()
        self.probe_address = probe_address
        self.now = 0.0

    def clock(self) -> float:
        return round(self.now, 6)

    def _span(self, duration: float) -> Timing:
        t0 = self.clock()
        self.now += 0.0005  # operations are distinct in time, like real ones
        return Timing(t0, round(t0 + duration, 6))

    async def getaddrinfo(self, host: str, timeout: float) -> GetaddrinfoResult:
        answer = self.world.system(host)
        if isinstance(answer, str):
            duration = timeout if answer == failures.GENERIC_TIMEOUT else 0.03
            return GetaddrinfoResult(host, (), answer, self._span(duration))
        return GetaddrinfoResult(host, answer, None, self._span(0.03))

    async def dns_exchange(
        self, query: DnsQuery, timeout: float, linger: float, on_first=None
    ) -> DnsExchange:  # the whole exchange at once: on_first is never called
        planned = self.world.dns(query)
        if query.transport == "tcp":
            planned = planned[-1:]  # an injector races UDP; TCP gets the resolver's answer
        sent = netdns.build_query(query)
        timing = self._span(timeout if not planned else planned[0].delay +
                            (linger if query.transport == "udp" else 0.0))
        replies = []
        for reply in planned:
            response = dns.message.make_response(sent)
            response.set_rcode(dns.rcode.from_text(reply.rcode))
            if reply.addresses:
                response.answer.append(dns.rrset.from_text_list(
                    query.qname + ".", reply.ttl, "IN", query.qtype, list(reply.addresses)))
            replies.append(netdns.parse_reply(response.to_wire(), sent,
                                              round(timing.t0 + reply.delay, 6)))
        failure = netdns.exchange_failure(query, tuple(replies)) if replies else \
            failures.GENERIC_TIMEOUT
        return DnsExchange(query, tuple(replies), failure, timing)

    async def tcp_connect(self, address: str, port: int, timeout: float) -> ConnectResult:
        failure = self.world.connect(address, port)
        duration = timeout if failure == failures.GENERIC_TIMEOUT else 0.04
        return ConnectResult(address, port, failure, self._span(duration))

    async def tls_handshake(self, request: TlsRequest, timeout: float) -> TlsResult:
        connect = await self.tcp_connect(request.address, request.port, timeout)
        if connect.failure is not None:
            return TlsResult(request, connect, connect.failure, None, None, None, (),
                             connect.timing)
        answer = self.world.tls(request)
        if isinstance(answer, str):
            duration = timeout if answer == failures.GENERIC_TIMEOUT else 0.05
            return TlsResult(request, connect, answer, None, None, None, (),
                             self._span(duration))
        return TlsResult(request, connect, None, "TLSv1.3", "TLS_AES_128_GCM_SHA256",
                         "h2" if "h2" in request.alpn else None, answer, self._span(0.08))

    async def http_request(self, request: HttpRequest, timeout: float) -> HttpResult:
        answer = self.world.http(request)
        if answer.failure is not None:
            duration = timeout if answer.failure == failures.GENERIC_TIMEOUT else 0.1
            return HttpResult(request, answer.failure, None, (), "", 0, False, (), None,
                              self._span(duration))
        kept = answer.body[: request.max_body]
        length = max(answer.transfer_bytes, len(answer.body))
        return HttpResult(
            request, None, answer.status, answer.headers, base64.b64encode(kept).decode(),
            length, length > len(kept), (),
            answer.throughput_bps if request.measure_throughput else None,
            self._span(answer.duration),
        )

    async def mtproto_exchange(self, request: MtprotoRequest, timeout: float) -> MtprotoResult:
        connect = await self.tcp_connect(request.address, request.port, timeout)
        if connect.failure is not None:
            return MtprotoResult(request, connect, connect.failure, "", connect.timing)
        answer = self.world.mtproto(request)
        if isinstance(answer, str):
            duration = timeout if answer == failures.GENERIC_TIMEOUT else 0.05
            return MtprotoResult(request, connect, answer, "", self._span(duration))
        return MtprotoResult(request, connect, None, base64.b64encode(answer).decode(),
                             self._span(0.06))

    async def udp_exchange(self, request: UdpRequest, timeout: float) -> UdpResult:
        answers = self.world.udp(request)
        if isinstance(answers, str):
            span = self._span(timeout if answers == failures.GENERIC_TIMEOUT else 0.05)
            sent = (UdpSent(span.t0, 0),)
            return UdpResult(request, sent, (), (), answers, span)
        t0 = self.clock()
        sent, received = [], []
        for index, replies in enumerate(answers):
            sent.append(UdpSent(round(t0 + request.schedule[index], 6), index))
            for reply in replies:
                received.append(UdpReceived(round(t0 + request.schedule[index] + 0.04, 6),
                                            base64.b64encode(reply).decode(), len(reply)))
            if request.stop_on_reply and replies:
                break
        last = sent[-1].t - t0 if sent else 0.0
        span = self._span(min(timeout, last + request.linger))
        failure = None if received else failures.GENERIC_TIMEOUT
        return UdpResult(request, tuple(sent), tuple(received), (), failure, span)

    async def quic_exchange(self, request: QuicRequest, timeout: float) -> QuicResult:
        answer = self.world.quic(request)
        if isinstance(answer, str):
            span = self._span(timeout if answer == failures.GENERIC_TIMEOUT else 0.05)
            return QuicResult(request, answer, "handshake", None, None, None, None, (), None,
                              (), "", 0, 0, span)
        status, chain = answer
        body = b"<html><title>h3</title></html>"
        return QuicResult(request, None, None, "0x00000001", 0.05, "TLSv1.3", "h3", chain,
                          status, (("content-type", "text/html"),),
                          base64.b64encode(body).decode(), len(body), 6, self._span(0.1))

    async def control_call(self, request: ControlRequest, timeout: float) -> ControlResult:
        if self.control is None:
            return ControlResult(request, failures.CONNECTION_REFUSED, None, None,
                                 self._span(0.01))
        query = protocol.parse_request(request.body)
        items, step_timeout = query.items, query.timeout
        helper = ScriptedNetwork(self.control)
        base = self.control_options
        options = RunOptions(resolver=("9.9.9.9", 53), timeout=step_timeout, rate=None,
                             routable=base.routable, trust_pem=base.trust_pem,
                             started_at=base.started_at)
        observations = await run_endpoints(
            helper, [i.endpoint for i in items], options,
            extra_addresses={i.endpoint.id: i.addresses for i in items},
        )
        measured_at = base.started_at + datetime.timedelta(seconds=30)
        body = protocol.build_response(
            observations, self.probe_address,
            {"software_name": "probe-control", "software_version": "scripted"},
            measured_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
        return ControlResult(request, None, 200, body, self._span(2.0))

    async def aclose(self) -> None:
        return None
