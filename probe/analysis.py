"""Observations (+ control) -> verdicts. Pure functions: no I/O, no clock.

The rules, in the order they are applied to one endpoint:

1. DNS (names only). Conclusive from local evidence alone: two different replies
   to one UDP query (``dns.injected``: no honest resolver answers twice, the
   Great Firewall does), a CNAME to a known national or ISP blockpage host
   (``dns.blockpage``: Indonesia's Internet Positif; not when the control's
   answer has the same CNAME) and bogon answers (``dns.bogon``: Iran's
   10.10.34.34-36, Turkmenistan's 127.0.0.1). NXDOMAIN, SERVFAIL, REFUSED, no answer and
   timeouts are ``dns_blocked`` only when the control resolves the name; when
   the control fails the same way the name is ``down``; without a control they
   are ``inconclusive``. Answers that share no address with the control's and
   that no TLS handshake or MTProto exchange could validate (probe's or the
   control's, on those very addresses) are ``dns.inconsistent``, judged on all
   the answers and on each way of asking apart (UDP, TCP, the system resolver:
   a transparent proxy may divert only UDP). A blocked DNS
   gives the endpoint one row (address None): apps using that resolver cannot
   reach the service, whatever the addresses do. A chosen resolver that sends no
   reply at all (UDP and TCP) while the system resolver answers is a closed path
   to that resolver (DNS allowed only to the ISP's resolver), not evidence about
   the name: the system resolver's answers are judged instead.
2. Per address x port, the first step that failed (connect, TLS handshake,
   certificate, MTProto, HTTP) is compared with the control's same step on the
   same address: control succeeded -> ``<step>_blocked``; control failed too ->
   ``down`` (a dead endpoint or stale address is never "blocked"); no usable
   control -> ``inconclusive``, except for conclusive local evidence (a
   certificate that fails the endpoint's pin, a known blockpage).
3. All steps succeeded: a known blockpage, or a response that differs from
   the control's in status class, is ``http_blocked``; a transfer under a tenth
   of the control's and under ``THROTTLE_FLOOR_BPS`` is ``throttled``.
4. Failures of IPv6 addresses when the vantage has no IPv6 connectivity at all
   are ``inconclusive`` (OONI reports these as TCP blocking), and when the
   volunteer's network is down (every baseline endpoint and the control
   unreachable) every failure is ``inconclusive``.

5. UDP endpoints (ports are UDP ports) follow rule 2: each STUN, TURN and udp-flow
   check is compared with the control's same check (``udp_blocked``), the QUIC
   handshake, certificate and HTTP/3 request with the control's (``quic_blocked``).
   Two different answers to one STUN transaction are conclusive alone
   (``udp.injected``, as ``dns.injected``); a flow answered and then cut
   (``udp.cutoff``) is blocking only next to the control's flow answered to its end.
6. The network as a whole (``network_findings``): whether it drops every UDP flow
   or every QUIC handshake (blocking rows then say so: calls fail for every app,
   not only this one), and whether it is in allowlist mode (TCP opens everywhere,
   data passes to a few destinations), which is a restricted network, not a down one.

A control that is missing or itself failing can only make a verdict
``inconclusive`` or ``down``, never turn a failure into ``ok`` nor a success
into ``blocked``.
"""

from __future__ import annotations

import base64
import dataclasses
import ipaddress
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from probe import blockpages
from probe.bogons import IPNetwork, is_bogon
from probe.net import failures
from probe.net.network import DnsExchange, HttpResult, QuicResult
from probe.observations import (
    BLOCKED_VERDICTS,
    DNS_BLOCKED,
    DOWN,
    HTTP_BLOCKED,
    INCONCLUSIVE,
    OK,
    THROTTLED,
    EndpointObservation,
    FunctionVerdict,
    NetworkFindings,
    PortObservation,
    UdpCheck,
    Verdict,
)
from probe.vocabulary import (
    BLOCKED,
    Check,
    Function,
    ServiceStatus,
    Step,
    UdpNetwork,
    VerdictName,
)

THROTTLE_RATIO = 0.1  # probe throughput below a tenth of the control's...
THROTTLE_FLOOR_BPS = 250_000  # ...and below 2 Mbit/s (Russia 2021 held Twitter at ~150 kbit/s)
BASELINE_RATIO = 0.25  # and below a quarter of the volunteer's own baseline transfer


@dataclass(frozen=True)
class Context:
    """What analysis knows about the run beyond one endpoint."""

    control: Mapping[str, EndpointObservation] | None  # None: no usable control
    probe_has_ipv6: bool = True
    control_has_ipv6: bool = True
    network_down: bool = False
    routable: tuple[IPNetwork, ...] = ()
    baseline_throughput_bps: float | None = None
    pinned: frozenset[str] = frozenset()  # endpoint ids with a pinned CA
    tls_checked: frozenset[str] = frozenset()  # endpoint ids whose checks include tls/https
    # the chosen resolver replied to the baseline's names: its silence for one name is
    # then about that name, not about the path to the resolver
    resolver_reachable: bool = False
    # what the run learned about UDP as a whole (network_findings): a UDP or QUIC
    # blocking says so when the network drops every flow, not only this service's
    udp_network: str = UdpNetwork.UNKNOWN


class _ReadsAsTuple:
    """Unpacks like the tuple a result replaced (``status, explanation = ...``) so
    that callers written before it had names keep working; new code reads names."""

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, f.name) for f in dataclasses.fields(self))  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[object]:
        return iter(self._values())

    def __len__(self) -> int:
        return len(self._values())

    def __getitem__(self, index: int) -> object:
        return self._values()[index]


@dataclass(frozen=True)
class DnsDecision(_ReadsAsTuple):
    """What DNS alone decides for an endpoint (one row, address None)."""

    verdict: VerdictName
    method: str
    failure: str | None
    explanation: str


@dataclass(frozen=True)
class Judgement(_ReadsAsTuple):
    """A failing step's verdict after comparing it with the control."""

    verdict: VerdictName
    explanation: str


@dataclass(frozen=True)
class StatusSummary(_ReadsAsTuple):
    """The status of a service, or of one function of it, and why in one sentence."""

    status: ServiceStatus
    explanation: str


# --------------------------------------------------------------------------- #
# helpers                                                                      #
# --------------------------------------------------------------------------- #

# The stages a port observation goes through, each with the step it belongs to
# (the method's prefix) and the verdict its blocking gives. A TCP port runs
# connect -> TLS -> certificate -> MTProto -> HTTP; a UDP port runs its STUN, TURN
# and udp-flow checks (each on its own) and a QUIC handshake -> certificate -> HTTP/3.
_STEP_PREFIX = {
    "connect": Step.TCP,
    "tls_handshake": Step.TLS,
    "tls_verify": Step.TLS,
    "mtproto": Step.PROTOCOL,
    "http_transaction": Step.HTTP,
    "stun": Step.UDP,
    "turn": Step.UDP,
    "udp": Step.UDP,
    "quic_handshake": Step.QUIC,
    "quic_verify": Step.QUIC,
    "quic_http": Step.QUIC,
}
_STEP_VERDICT = {
    "connect": VerdictName.TCP_BLOCKED,
    "tls_handshake": VerdictName.TLS_BLOCKED,
    "tls_verify": VerdictName.TLS_BLOCKED,
    "mtproto": VerdictName.PROTOCOL_BLOCKED,
    "http_transaction": VerdictName.HTTP_BLOCKED,
    "stun": VerdictName.UDP_BLOCKED,
    "turn": VerdictName.UDP_BLOCKED,
    "udp": VerdictName.UDP_BLOCKED,
    "quic_handshake": VerdictName.QUIC_BLOCKED,
    "quic_verify": VerdictName.QUIC_BLOCKED,
    "quic_http": VerdictName.QUIC_BLOCKED,
}
_TCP_STAGES = ("connect", "tls_handshake", "tls_verify", "mtproto", "http_transaction")
_UDP_STAGES = ("stun", "turn", "udp")  # each a check of its own: none depends on another
_QUIC_STAGES = ("quic_handshake", "quic_verify", "quic_http")
_VERIFY_STAGES = ("tls_verify", "quic_verify")
_FAILURE_SUFFIX = {
    failures.GENERIC_TIMEOUT: "timeout",
    failures.CONNECTION_RESET: "reset",
    failures.CONNECTION_ABORTED: "reset",
    failures.CONNECTION_REFUSED: "refused",
    failures.EOF_ERROR: "eof",
    failures.HOST_UNREACHABLE: "unreachable",
    failures.NETWORK_UNREACHABLE: "unreachable",
    failures.ADDRESS_FAMILY_NOT_SUPPORTED: "unreachable",
    failures.ADMINISTRATIVELY_PROHIBITED: "prohibited",
    failures.SSL_FAILED_HANDSHAKE: "alert",
    failures.SSL_UNKNOWN_AUTHORITY: "mitm",
    failures.SSL_INVALID_HOSTNAME: "invalid_hostname",
    failures.SSL_INVALID_CERTIFICATE: "invalid_certificate",
    failures.MTPROTO_INVALID_RESPONSE: "invalid",
    failures.HTTP_INVALID_RESPONSE: "invalid",
    failures.HTTP_TOO_MANY_REDIRECTS: "redirect_loop",
}
# Where a UDP or QUIC failure reads differently from the same string over TCP.
_STEP_FAILURE_SUFFIX: dict[Step, dict[str, str]] = {
    Step.UDP: {
        # an ICMP port unreachable answering a datagram: UDP has no RST to refuse with
        failures.CONNECTION_REFUSED: "unreachable",
        failures.UDP_FLOW_CUTOFF: "cutoff",
        failures.STUN_INJECTED: "injected",
        failures.STUN_INVALID_RESPONSE: "invalid",
        failures.TURN_NO_CHALLENGE: "invalid",
    },
    Step.QUIC: {
        failures.CONNECTION_REFUSED: "unreachable",
        failures.ADMINISTRATIVELY_PROHIBITED: "unreachable",
        failures.SSL_FAILED_HANDSHAKE: "handshake",
        failures.QUIC_CONNECTION_CLOSED: "handshake",
        failures.QUIC_VERSION_NEGOTIATION: "version",
        failures.QUIC_STREAM_RESET: "reset",
        failures.HTTP3_INVALID_RESPONSE: "http",
    },
}
_DNS_METHOD = {
    failures.DNS_NXDOMAIN: "dns.nxdomain",
    failures.DNS_SERVFAIL: "dns.servfail",
    failures.DNS_NON_RECOVERABLE: "dns.servfail",
    failures.DNS_REFUSED: "dns.refused",
    failures.DNS_NO_ANSWER: "dns.no_answer",
    failures.GENERIC_TIMEOUT: "dns.timeout",
    failures.DNS_TEMPORARY: "dns.timeout",
    failures.NETWORK_UNREACHABLE: "dns.unreachable",
    failures.HOST_UNREACHABLE: "dns.unreachable",
    failures.ADMINISTRATIVELY_PROHIBITED: "dns.prohibited",
    failures.CONNECTION_REFUSED: "dns.connection_refused",
    failures.CONNECTION_RESET: "dns.reset",
}


def method_for(step: str, failure: str | None) -> str:
    prefix = _STEP_PREFIX[step]
    if step == "quic_http" and failure != failures.QUIC_STREAM_RESET:
        return f"{prefix}.http"  # the handshake worked: whatever failed is HTTP/3's
    suffix = _STEP_FAILURE_SUFFIX.get(prefix, {}).get(failure or "")
    return f"{prefix}.{suffix or _FAILURE_SUFFIX.get(failure or '', 'failure')}"


def is_ipv6(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).version == 6
    except ValueError:
        return False


@dataclass(frozen=True)
class StepOutcome:
    """The first failing step of a port observation (step None: all passed)."""

    step: str | None
    failure: str | None
    failed_operation: str | None


def first_failure(port: PortObservation) -> StepOutcome:
    if port.connect is None:
        return _udp_first_failure(port)
    if port.connect.failure is not None:
        return StepOutcome("connect", port.connect.failure, "tcp_connect")
    if port.tls is not None:
        if port.tls.failure is not None:
            return StepOutcome("tls_handshake", port.tls.failure, "tls_handshake")
        if port.tls_verification is not None:
            return StepOutcome("tls_verify", port.tls_verification, "tls_handshake")
    if port.mtproto:
        last = port.mtproto[-1]
        if not last.valid:
            failure = last.result.failure or failures.MTPROTO_INVALID_RESPONSE
            return StepOutcome("mtproto", failure, "mtproto")
    for http in port.http:
        if http.failure is not None:
            return StepOutcome("http_transaction", http.failure, "http_transaction")
    return StepOutcome(None, None, None)


def _udp_first_failure(port: PortObservation) -> StepOutcome:
    """A UDP port: its STUN, TURN and flow checks in the order they ran, then QUIC."""
    for check in port.udp:
        if check.failure is not None:
            return StepOutcome(check.check, check.failure, "udp_exchange")
    if port.quic is not None:
        return _quic_outcome(port.quic, port.quic_verification)
    return StepOutcome(None, None, None)


def _quic_outcome(quic: QuicResult, verification: str | None) -> StepOutcome:
    if quic.failure is not None and quic.failed_phase != "http":
        return StepOutcome("quic_handshake", quic.failure, "quic_handshake")
    if verification is not None:
        return StepOutcome("quic_verify", verification, "quic_handshake")
    if quic.failure is not None:
        return StepOutcome("quic_http", quic.failure, "http_transaction")
    return StepOutcome(None, None, None)


def _udp_check(port: PortObservation | None, check: str) -> UdpCheck | None:
    if port is None:
        return None
    return next((c for c in port.udp if c.check == check), None)


def step_succeeded(port: PortObservation, step: str) -> bool | None:
    """Did ``step`` succeed in this observation? None when it was not run."""
    if step in _UDP_STAGES:
        check = _udp_check(port, step)
        return None if check is None else check.failure is None
    order: tuple[str, ...]
    if step in _QUIC_STAGES:
        if port.quic is None:
            return None
        outcome, order = _quic_outcome(port.quic, port.quic_verification), _QUIC_STAGES
    else:
        outcome, order = first_failure(port), _TCP_STAGES
        if outcome.step not in order:
            outcome = StepOutcome(None, None, None)
    ran = {
        "connect": port.connect is not None,
        "tls_handshake": port.tls is not None,
        "tls_verify": port.tls is not None,
        "mtproto": bool(port.mtproto),
        "http_transaction": bool(port.http),
        "quic_handshake": port.quic is not None,
        "quic_verify": port.quic is not None,
        "quic_http": port.quic is not None
        and (port.quic.status is not None or port.quic.failed_phase == "http"),
    }
    if outcome.step is None:
        return True if ran[step] else None
    if order.index(step) < order.index(outcome.step):
        return True if ran[step] else None
    if step == outcome.step:
        return False
    return None  # never reached: an earlier step failed


def answers_of(exchanges: Iterable[DnsExchange]) -> list[str]:
    out: list[str] = []
    for exchange in exchanges:
        for reply in exchange.replies:
            if reply.failure:
                continue
            for answer in reply.answers:
                if answer.rrtype in ("A", "AAAA") and answer.value not in out:
                    out.append(answer.value)
    return out


def injected(exchanges: Iterable[DnsExchange]) -> bool:
    """Two valid replies with different answers to one UDP query."""
    for exchange in exchanges:
        if exchange.query.transport != "udp":
            continue
        seen = {
            frozenset(a.value for a in r.answers if a.rrtype in ("A", "AAAA"))
            for r in exchange.replies
            if r.failure is None
        }
        if len(seen) > 1:
            return True
    return False


def resolver_silent(observation: EndpointObservation, resolver_reachable: bool = False) -> bool:
    """The resolver the probe was told to ask sent no reply at all, over UDP or TCP,
    while the system resolver answered.

    Networks that let DNS out only to the ISP's own resolver (Iran, China at times:
    UDP and TCP port 53 to foreign resolvers dropped) make a chosen foreign resolver
    silent for every name, the baseline's too: that is the path to one resolver, not
    evidence about this name, and apps on this network resolve with the system resolver.
    A resolver that answers but lies or errs is never "silent", and neither is one
    that replied to the baseline's names (``resolver_reachable``): a resolver that
    answers everything but this name is dropping it."""
    system = observation.getaddrinfo
    if resolver_reachable or not observation.dns or system is None or not system.addresses:
        return False
    return all(
        not exchange.replies and exchange.failure is not None
        and exchange.failure not in failures.LOCAL
        for exchange in observation.dns
    )


def resolver_failure(
    observation: EndpointObservation, resolver_reachable: bool = False
) -> str | None:
    """How name resolution failed for an app on this vantage (None: it worked).

    Judged as a stub resolver would: the UDP answers, except that a truncated
    UDP reply is retried over TCP (RFC 7766), so then the TCP answers count. When
    the chosen resolver is silent (``resolver_silent``), the system resolver's
    answer is what apps here get."""
    if resolver_silent(observation, resolver_reachable):
        return None
    udp = [e for e in observation.dns if e.query.transport == "udp"]
    truncated = {e.query.qtype for e in udp if e.failure == failures.DNS_TRUNCATED}
    if truncated:
        udp = [e for e in udp if e.query.qtype not in truncated] + [
            e for e in observation.dns if e.query.transport == "tcp" and e.query.qtype in truncated
        ]
    if udp:
        if answers_of(udp):
            return None
        for exchange in udp:
            if exchange.query.qtype == "A" and exchange.failure:
                return exchange.failure
        return next((e.failure for e in udp if e.failure), failures.DNS_NO_ANSWER)
    if observation.getaddrinfo is not None:
        if observation.getaddrinfo.addresses:
            return None
        return observation.getaddrinfo.failure or failures.DNS_NO_ANSWER
    return None


def resolved_addresses(observation: EndpointObservation) -> list[str]:
    addresses = answers_of(observation.dns)
    if observation.getaddrinfo is not None:
        addresses += [a for a in observation.getaddrinfo.addresses if a not in addresses]
    return addresses


def _validated(port: PortObservation) -> bool:
    """Did this address prove to be the real service (valid TLS, QUIC or resPQ)?"""
    if port.quic is not None and port.quic.failed_phase != "handshake" and (
        port.quic.peer_certificates and port.quic_verification is None
    ):
        return True
    if port.connect is None or port.connect.failure is not None:
        return False
    if port.tls is not None and port.tls.failure is None and port.tls_verification is None:
        return True
    return any(check.valid for check in port.mtproto)


# --------------------------------------------------------------------------- #
# DNS                                                                          #
# --------------------------------------------------------------------------- #


def dns_verdict(
    observation: EndpointObservation, control: EndpointObservation | None, context: Context
) -> DnsDecision | None:
    """The verdict when DNS decides the endpoint, else None."""
    probe_answers = resolved_addresses(observation)
    control_answers = resolved_addresses(control) if control is not None else []
    control_real = [a for a in control_answers if not is_bogon(a, context.routable)]
    # judged like the probe: the control "resolves" when its own stub-resolver view
    # (UDP, TCP after truncation, or getaddrinfo) succeeds with real addresses
    control_resolves = (
        control is not None and resolver_failure(control) is None and bool(control_real)
    )

    if injected(observation.dns):
        return DnsDecision(
            DNS_BLOCKED, "dns.injected", None,
            "More than one different reply arrived for one DNS query: someone on the path "
            "forged an answer that raced the resolver's.",
        )
    blockpage_host = _cname_to_blockpage(observation.dns)
    if blockpage_host is not None and (
        control is None or _cname_to_blockpage(control.dns) != blockpage_host
    ):
        return DnsDecision(
            DNS_BLOCKED, "dns.blockpage", None,
            f"The resolver sent the name to {blockpage_host.name}, a known blockpage host "
            f"({blockpage_host.country}; {blockpage_host.source}).",
        )
    bogons = [a for a in probe_answers if is_bogon(a, context.routable)]
    if bogons and not (set(bogons) & set(control_answers)):
        return DnsDecision(
            DNS_BLOCKED, "dns.bogon", failures.DNS_BOGON,
            f"The resolver answered {', '.join(bogons[:3])}, an address no public service can "
            "have (a typical censor answer).",
        )
    failure = resolver_failure(observation, context.resolver_reachable)
    if failure is not None:
        method = _DNS_METHOD.get(failure, "dns.failure")
        if failure in failures.LOCAL or failure.startswith(failures.UNKNOWN_PREFIX):
            return DnsDecision(INCONCLUSIVE, method, failure,
                               "The probe itself failed to resolve the name, not the network.")
        if context.network_down:
            return DnsDecision(INCONCLUSIVE, method, failure,
                               "Name resolution failed, but your network seems to be down.")
        if control is None:
            return DnsDecision(INCONCLUSIVE, method, failure,
                               "Name resolution failed and there is no control measurement "
                               "to compare with.")
        if control_resolves:
            return DnsDecision(DNS_BLOCKED, method, failure,
                               f"Your resolver failed ({failure}) while the control resolved "
                               "the name.")
        return DnsDecision(DOWN, method, failure,
                           "The name does not resolve from the control either: the service "
                           "looks down or the name is stale, not blocked.")
    if not control_resolves or control is None:
        return None
    for view, answers in answer_views(observation):
        if answers and not (set(answers) & set(control_answers)) and _unproven_answers(
            observation, control, answers, control_answers, context, whole=not view
        ):
            where = f" ({view}, while other queries got real addresses)" if view else ""
            return DnsDecision(
                DNS_BLOCKED, "dns.inconsistent", None,
                f"Your resolver's addresses{where} share nothing with the control's and none "
                "of them proved to be the real service.",
            )
    return None


def _cname_to_blockpage(exchanges: Iterable[DnsExchange]) -> blockpages.BlockpageHost | None:
    """A known national or ISP blockpage host that a CNAME in these replies points to
    (Indonesia's ISPs CNAME blocked names to their Internet Positif pages)."""
    for exchange in exchanges:
        for reply in exchange.replies:
            if reply.failure:
                continue
            for answer in reply.answers:
                if answer.rrtype == "CNAME":
                    host = blockpages.known_host(answer.value)
                    if host is not None:
                        return host
    return None


def answer_views(observation: EndpointObservation) -> list[tuple[str, list[str]]]:
    """The addresses as a whole (view ""), then as each way of asking saw them.

    A transparent DNS proxy diverts only UDP port 53 (or only the system
    resolver's queries) to a lying resolver, while DNS over TCP still reaches the
    resolver asked (Liu et al., USENIX Security 2018): the lie must be judged on
    its own, not hidden in the union with the honest answers."""
    views: list[tuple[str, list[str]]] = [("", resolved_addresses(observation))]
    for transport in ("udp", "tcp"):
        exchanges = [e for e in observation.dns if e.query.transport == transport]
        views.append((f"over {transport.upper()}", answers_of(exchanges)))
    if observation.getaddrinfo is not None:
        views.append(("from the system resolver", list(observation.getaddrinfo.addresses)))
    return views


def _unproven_answers(
    observation: EndpointObservation, control: EndpointObservation, answers: list[str],
    control_answers: list[str], context: Context, whole: bool,
) -> bool:
    """Do these answers (sharing nothing with the control's) look forged? Only when
    no TLS handshake or MTProto exchange on them proved the real service (a CDN's
    other addresses do), and some evidence says they are not it: the endpoint is
    checkable by TLS or MTProto, or the control cannot reach them while it reaches
    its own, or they serve a blockpage next to the control's page. ``whole``: the
    answers are all the probe's, any of its measured ports may prove them."""
    ports = [p for p in observation.ports if whole or p.address in answers]
    if not whole and not ports:
        return False  # one way of asking, none of its addresses measured: no evidence
    validated = any(_validated(p) for p in ports)
    validated |= any(_validated(p) for p in control.ports if p.address in answers)
    checkable = observation.endpoint_id in context.tls_checked or any(
        p.mtproto or p.quic is not None for p in observation.ports
    )
    # Without TLS or MTProto to prove an address, the control's reachability does:
    # the control reaches the addresses its resolver gave and cannot reach the ones
    # yours gave (a forged public address, as the Great Firewall returns).
    probe_side = [p for p in control.ports if p.address in answers and p.connect]
    own_side = [p for p in control.ports if p.address in control_answers and p.connect]
    unreachable_forgery = (
        bool(probe_side)
        and all(p.connect is not None and p.connect.failure is not None for p in probe_side)
        and any(p.connect is not None and p.connect.failure is None for p in own_side)
    )
    # The same for UDP endpoints (a call relay's STUN server): the control's STUN or
    # flow is answered at its own resolver's addresses, never at yours.
    probe_udp = [p for p in control.ports if p.address in answers and p.udp]
    own_udp = [p for p in control.ports if p.address in control_answers and p.udp]
    unanswered_forgery = (
        bool(probe_udp)
        and not any(_udp_answered(c) for p in probe_udp for c in p.udp)
        and any(_udp_answered(c) for p in own_udp for c in p.udp)
    )
    return not validated and (
        checkable or unreachable_forgery or unanswered_forgery
        or _serves_another_page(ports, own_side)
    )


def _serves_another_page(
    probe_ports: Iterable[PortObservation], control_own: Iterable[PortObservation]
) -> bool:
    """Plain-HTTP evidence for a forged answer: the page your resolver's address
    serves you is a blockpage next to the one the control gets from its own
    resolver's addresses (a known fingerprint, another status class, a redirect
    elsewhere, a third of the size with another title).

    Indonesia's and Turkey's resolvers answer with their blockpage server's public
    address, or a CNAME to it; that server also answers the control (which is
    asked to measure your addresses too), so only the control's *own* addresses
    tell. A CDN answering other addresses serves the same page: no evidence."""
    control_pages = [
        http for port in control_own for http in port.http
        if http.failure is None and http.status is not None
        and not http.request.measure_throughput
    ]
    if not control_pages:
        return False
    for port in probe_ports:
        for http in port.http:
            if http.failure is not None or http.status is None or http.request.measure_throughput:
                continue
            if all(blockpage_evidence(http, page) is not None for page in control_pages):
                return True
    return False


# --------------------------------------------------------------------------- #
# per address x port                                                           #
# --------------------------------------------------------------------------- #


def _control_port(
    control: EndpointObservation | None, address: str, port: int
) -> PortObservation | None:
    if control is None:
        return None
    for candidate in control.ports:
        if candidate.address == address and candidate.port == port:
            return candidate
    return None


def _body(http: HttpResult) -> bytes:
    try:
        return base64.b64decode(http.body)
    except ValueError:
        return b""


def _redirect_host(http: HttpResult) -> str | None:
    """The host a 3xx response sends the client to, when it is another host."""
    if http.status is None or http.status // 100 != 3:
        return None
    location = next((v for k, v in http.headers if k.lower() == "location"), None)
    if not location:
        return None
    target = urlsplit(urljoin(http.request.url, location)).hostname
    origin = urlsplit(http.request.url).hostname
    return target if target and target != origin else None


_TITLE = re.compile(rb"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)


def page_title(body: bytes) -> str:
    match = _TITLE.search(body[:65536])
    return match.group(1).decode("utf-8", "replace").strip()[:200] if match else ""


def blockpage_evidence(
    http: HttpResult, control_http: HttpResult | None
) -> str | None:
    """Why this response is a blockpage, or None."""
    body = _body(http)
    fingerprint = blockpages.match(http.status, http.headers, body)
    if fingerprint is not None:
        return f"The page matches the known blockpage fingerprint '{fingerprint}'."
    if control_http is None or control_http.failure is not None or control_http.status is None:
        return None
    if http.status is None:
        return None
    probe_class, control_class = http.status // 100, control_http.status // 100
    if probe_class in (4, 5) and control_class in (2, 3):
        return (
            f"The server answered {http.status} to you but {control_http.status} to the control."
        )
    # ISPs in Russia, Indonesia, South Korea... redirect blocked sites to a warning
    # page on another host: a redirect elsewhere that the control does not get.
    probe_target = _redirect_host(http)
    if probe_target is not None and probe_target != _redirect_host(control_http):
        return f"You were redirected to {probe_target}; the control was not."
    control_body = _body(control_http)
    if (
        http.status == control_http.status and control_body and body
        and not http.body_truncated
    ):
        # Symmetric, as OONI's body proportion (min/max): a blockpage can be larger
        # than the real page as well as smaller. With the title it must differ too.
        declared = _declared_length(control_http)
        if control_http.body_truncated and declared is not None:
            ratio = min(len(body), declared) / max(len(body), declared, 1)
        elif control_http.body_truncated:
            # A helper keeps only the first KiB of a page (protocol.MAX_HTTP_BODY): its
            # page is at least what it received, so only "yours is under a third" tells.
            control_size = max(len(control_body), control_http.body_length)
            ratio = len(body) / control_size if len(body) < control_size else 1.0
        else:
            ratio = min(len(body), len(control_body)) / max(len(body), len(control_body))
        if ratio < 0.3 and page_title(body) != page_title(control_body):
            return ("The page differs from the control's: another title, and under a third "
                    "(or over three times) its size.")
    return None


def _declared_length(http: HttpResult) -> int | None:
    """The page's whole length as its Content-Length says, when that is its decoded
    length (no Content-Encoding) and no less than what arrived; else None."""
    headers = {k.lower(): v for k, v in http.headers}
    if headers.get("content-encoding", "identity").strip().lower() != "identity":
        return None
    value = headers.get("content-length", "").strip()
    if not value.isdigit() or len(value) > 15 or int(value) < http.body_length:
        return None
    return int(value)


def _down_or_inconclusive(
    step: str, failure: str, address: str, control_port: PortObservation | None, context: Context
) -> Judgement:
    if failure in failures.LOCAL or failure.startswith(failures.UNKNOWN_PREFIX):
        # the probe's own trouble (out of file descriptors, a bug): not evidence
        return Judgement(INCONCLUSIVE,
                         f"The probe itself failed here ({failure[:80]}), not the network.")
    if context.network_down:
        return Judgement(INCONCLUSIVE,
                         "Your network seems to be down (the baseline and the control fail).")
    if is_ipv6(address) and not context.probe_has_ipv6:
        return Judgement(INCONCLUSIVE,
                         "Your network has no IPv6 connectivity, so IPv6 failures say nothing.")
    if context.control is None:
        return Judgement(INCONCLUSIVE,
                         "There is no control measurement to tell blocking from an outage.")
    if control_port is None:
        return Judgement(INCONCLUSIVE, "The control did not measure this address.")
    if is_ipv6(address) and not context.control_has_ipv6:
        return Judgement(INCONCLUSIVE, "The control has no IPv6 connectivity to compare with.")
    control_step = step_succeeded(control_port, step)
    if control_step is True:
        return Judgement(_STEP_VERDICT[step],
                         f"This step failed for you ({failure}) but worked from the control.")
    if control_step is False:
        return Judgement(DOWN,
                         "The control fails at the same step: the endpoint is down, not blocked.")
    if step_succeeded(control_port, "connect") is False:
        return Judgement(DOWN,
                         "The control cannot connect either: the endpoint is down, not blocked.")
    if step in _QUIC_STAGES and step_succeeded(control_port, "quic_handshake") is False:
        return Judgement(DOWN, "The control's QUIC handshake fails too: the endpoint is down, "
                               "not blocked.")
    return Judgement(INCONCLUSIVE,
                     "The control did not reach this step, so there is nothing to compare.")


def _cutoff(
    port: PortObservation, control_port: PortObservation | None, step: str
) -> Judgement | None:
    """A flow answered at first, then cut, is blocking only next to the control's
    same flow answered to its last datagram (mobile DPI in Russia, 2025, cut
    unrecognised UDP flows after their first packets; a relay that rate-limits
    answers everyone the same way)."""
    mine, theirs = _udp_check(port, step), _udp_check(control_port, step)
    if mine is None:
        return None
    sent = len(mine.result.request.datagrams)
    if theirs is None or theirs.last_answered is None or theirs.last_answered < sent - 1:
        return Judgement(INCONCLUSIVE,
                         "Your UDP flow stopped being answered, but the control's same flow "
                         "was not answered to its end either, so a cut cannot be told from "
                         "a relay that stops answering.")
    answered = "no datagram" if mine.last_answered is None else (
        f"datagram {mine.last_answered + 1} of {sent}")
    return Judgement(VerdictName.UDP_BLOCKED,
                     f"Your UDP flow was answered up to {answered}, then no more, while the "
                     "control's was answered to the end: the flow is cut after its first "
                     "datagrams.")


def _network_note(verdict: str, udp_network: str) -> str:
    """What a UDP or QUIC blocking means when the whole network drops UDP or QUIC."""
    if udp_network == UdpNetwork.ALL_UDP_DROPPED and verdict in (
        VerdictName.UDP_BLOCKED, VerdictName.QUIC_BLOCKED
    ):
        return (" Your network drops all UDP, not only this service's: calls and QUIC fail "
                "for every app here.")
    if udp_network == UdpNetwork.ALL_QUIC_DROPPED and verdict == VerdictName.QUIC_BLOCKED:
        return (" Your network drops every QUIC handshake, not only this service's "
                "(apps fall back to TCP where they can).")
    return ""


def port_verdict(
    observation: EndpointObservation,
    port: PortObservation,
    control: EndpointObservation | None,
    context: Context,
) -> Verdict:
    control_port = _control_port(control, port.address, port.port)
    outcome = first_failure(port)

    def row(verdict: str, method: str | None, explanation: str) -> Verdict:
        explanation += _network_note(verdict, context.udp_network)
        return Verdict(
            observation.endpoint_id, observation.service, observation.host, port.address,
            port.port, verdict, method, outcome.failure, outcome.failed_operation, explanation,
        )

    if outcome.step is not None:
        method = method_for(outcome.step, outcome.failure)
        # Conclusive without a control: a certificate failing the endpoint's own pin
        # for the right name (an interception certificate), a known blockpage, two
        # different answers to one STUN transaction (like DNS injection: no server
        # answers one transaction twice with different contents).
        if (
            outcome.step in _VERIFY_STAGES
            and outcome.failure == failures.SSL_UNKNOWN_AUTHORITY
            and observation.endpoint_id in context.pinned
        ):
            return row(_STEP_VERDICT[outcome.step], method,
                       "The certificate is for the right name but not from the service's own "
                       "pinned authority: the connection is being intercepted.")
        if outcome.failure == failures.STUN_INJECTED:
            return row(VerdictName.UDP_BLOCKED, method,
                       "More than one different answer arrived for one STUN request: someone "
                       "on the path forged an answer that raced the server's.")
        judgement = _down_or_inconclusive(
            outcome.step, outcome.failure or "", port.address, control_port, context
        )
        if judgement.verdict in BLOCKED and outcome.failure == failures.UDP_FLOW_CUTOFF:
            judgement = _cutoff(port, control_port, outcome.step) or judgement
        return row(judgement.verdict, method, judgement.explanation)

    # Every step passed: look at the content and the speed.
    for index, http in enumerate(port.http):
        control_http = None
        if control_port is not None and index < len(control_port.http):
            control_http = control_port.http[index]
        evidence = blockpage_evidence(http, control_http)
        if evidence is not None:
            return row(HTTP_BLOCKED, "http.blockpage", evidence)
    throttle = throttling(port, control_port, context)
    if throttle is not None:
        return row(THROTTLED, Step.THROTTLE.value, throttle)
    return row(OK, None, "Every step worked.")


def throttling(
    port: PortObservation, control_port: PortObservation | None, context: Context
) -> str | None:
    # 0 is a measurement (a frozen flow: nothing arrived in the whole window), None is not
    probe_rates = [h.throughput_bps for h in port.http if h.throughput_bps is not None]
    if not probe_rates or control_port is None:
        return None
    control_rates = [h.throughput_bps for h in control_port.http if h.throughput_bps]
    if not control_rates:
        return None
    probe_rate, control_rate = max(probe_rates), max(control_rates)
    if probe_rate >= THROTTLE_RATIO * control_rate or probe_rate >= THROTTLE_FLOOR_BPS:
        return None
    baseline = context.baseline_throughput_bps
    if baseline is not None and probe_rate >= BASELINE_RATIO * baseline:
        return None  # the volunteer's link is this slow for everything
    return (
        f"The transfer ran at {probe_rate * 8 / 1000:.0f} kbit/s for you and "
        f"{control_rate * 8 / 1000:.0f} kbit/s from the control."
    )


# --------------------------------------------------------------------------- #
# endpoints, services, the run                                                 #
# --------------------------------------------------------------------------- #


def endpoint_verdicts(
    observation: EndpointObservation, context: Context
) -> list[Verdict]:
    control = context.control.get(observation.endpoint_id) if context.control else None
    if observation.interrupted:
        return [Verdict(observation.endpoint_id, observation.service, observation.host, None,
                        None, INCONCLUSIVE, None, failures.INTERRUPTED, None,
                        "The run was interrupted before this endpoint was measured.")]
    dns = None
    if observation.dns or observation.getaddrinfo is not None:
        dns = dns_verdict(observation, control, context)
    if dns is not None:
        return [Verdict(observation.endpoint_id, observation.service, observation.host, None,
                        None, dns.verdict, dns.method, dns.failure,
                        "resolve" if dns.failure else None, dns.explanation)]
    if not observation.ports:
        rows = [Verdict(observation.endpoint_id, observation.service, observation.host, None,
                        None, OK, None, None, None, "The name resolves consistently.")]
    else:
        rows = [port_verdict(observation, port, control, context) for port in observation.ports]
    if resolver_silent(observation, context.resolver_reachable):
        resolver = observation.dns[0].query.resolver
        note = (f" (The resolver you chose, {resolver}, never answered, over UDP or TCP; the "
                "system resolver did, so these addresses are its answers. Networks that "
                "allow DNS only to the ISP's resolver do this to every name.)")
        rows = [dataclasses.replace(r, explanation=r.explanation + note) for r in rows]
    return rows


def has_ipv6(observations: Iterable[EndpointObservation]) -> bool:
    """False when the vantage clearly has no IPv6: no IPv6 connect ever worked and at
    least one failed as unreachable, or every one failed."""
    evidence = Ipv6Evidence()
    evidence.add(observations)
    return evidence.has_ipv6


@dataclass
class Ipv6Evidence:
    """IPv6 connects seen so far: a run analysed in batches keeps counting across them
    without holding the observations."""

    worked: int = 0
    failed: int = 0

    def add(self, observations: Iterable[EndpointObservation]) -> None:
        for observation in observations:
            for port in observation.ports:
                if not is_ipv6(port.address):
                    continue
                if port.connect is None:
                    self._add_udp(port)
                elif port.connect.failure is None:
                    self.worked += 1
                else:
                    self.failed += 1

    def _add_udp(self, port: PortObservation) -> None:
        """A UDP port: an answer proves IPv6 works; only "no route" proves it does not
        (an unanswered datagram may be a filter, which TCP would also have met)."""
        checks = [check.result for check in port.udp]
        if any(result.received for result in checks) or (
            port.quic is not None and port.quic.packets_received
        ):
            self.worked += 1
        elif any(result.failure in failures.UNREACHABLE for result in checks) or (
            port.quic is not None and port.quic.failure in failures.UNREACHABLE
        ):
            self.failed += 1

    @property
    def has_ipv6(self) -> bool:
        return bool(self.worked) or not self.failed


def service_status(verdicts: Iterable[Verdict]) -> StatusSummary:
    verdicts = list(verdicts)
    kinds = {v.verdict for v in verdicts}
    blocked = kinds & BLOCKED_VERDICTS
    counts = f"{sum(v.verdict in BLOCKED_VERDICTS for v in verdicts)} of {len(verdicts)}"
    if blocked and OK in kinds:
        return StatusSummary(ServiceStatus.PARTIALLY_BLOCKED,
                             f"{counts} measurements blocked, others work.")
    if blocked:
        return StatusSummary(ServiceStatus.BLOCKED, f"{counts} measurements blocked, none works.")
    if OK in kinds:
        return StatusSummary(ServiceStatus.OK, "Reachable.")
    if kinds == {DOWN}:
        return StatusSummary(ServiceStatus.DOWN,
                             "Down for the control too: an outage, not blocking.")
    return StatusSummary(ServiceStatus.INCONCLUSIVE,
                         "Not enough evidence to tell blocking from an outage.")


# What most of a function's blocked measurements met, in a user's words.
_METHOD_WORDS = {
    "udp.timeout": "UDP to the call relays unanswered",
    "udp.cutoff": "UDP flows cut after their first datagrams",
    "udp.injected": "forged STUN answers",
    "udp.unreachable": "UDP refused with ICMP errors",
    "udp.prohibited": "UDP refused by a filter",
    "udp.invalid": "UDP answered with something else",
    "quic.timeout": "QUIC handshakes unanswered",
    "quic.handshake": "QUIC handshakes broken",
    "quic.version": "QUIC version negotiation forced",
    "quic.mitm": "QUIC certificates intercepted",
    "quic.reset": "HTTP/3 requests reset",
    "quic.unreachable": "QUIC refused with ICMP errors",
    "quic.http": "HTTP/3 failing after the handshake",
    "tcp.timeout": "TCP connections time out",
    "tcp.reset": "TCP connections reset",
    "tcp.refused": "TCP connections refused",
    "tls.timeout": "TLS handshakes time out",
    "tls.reset": "TLS handshakes reset",
    "tls.mitm": "TLS certificates intercepted",
    "http.blockpage": "a blockpage instead of the service",
    "throttle": "transfers throttled",
}


def _blocked_reason(verdicts: list[Verdict]) -> str:
    methods = [v.method or v.verdict for v in verdicts if v.verdict in BLOCKED_VERDICTS]
    if not methods:
        return ""
    common = max(dict.fromkeys(methods), key=methods.count)  # first of the most frequent
    if common in _METHOD_WORDS:
        return f" ({_METHOD_WORDS[common]})"
    if common.startswith("dns."):
        return " (name resolution blocked)"
    return f" ({common})"


def function_statuses(
    verdicts: Iterable[Verdict], functions: Mapping[str, str | None]
) -> tuple[FunctionVerdict, ...]:
    """One status per function present among a service's endpoints, in Function order.

    ``functions`` maps an endpoint id to its function (``Endpoint.function``);
    endpoints without one contribute to none. Each function's rows aggregate as a
    service's do (``service_status``), so "calls blocked, messaging ok" reads the
    same way as a service's status: users describe blocking per function ("calls
    do not go through, messages do": Russia, August 2025)."""
    rows: dict[str, list[Verdict]] = {}
    for verdict in verdicts:
        function = functions.get(verdict.endpoint_id)
        if function is not None:
            rows.setdefault(function, []).append(verdict)
    out = []
    for function in Function:
        if function not in rows:
            continue
        summary = service_status(rows[function])
        name = function.value.capitalize()
        blocked = sum(v.verdict in BLOCKED_VERDICTS for v in rows[function])
        counts = f"{blocked} of {len(rows[function])}"
        reason = _blocked_reason(rows[function])
        if summary.status == ServiceStatus.PARTIALLY_BLOCKED:
            explanation = f"{name}: {counts} measurements blocked{reason}, others work."
        elif summary.status == ServiceStatus.BLOCKED:
            explanation = f"{name}: {counts} measurements blocked{reason}."
        else:
            explanation = f"{name}: {summary.explanation[0].lower()}{summary.explanation[1:]}"
        out.append(FunctionVerdict(function.value, summary.status.value, explanation))
    return tuple(out)


def network_down(
    baseline: Iterable[EndpointObservation], control_available: bool
) -> bool:
    """True when nothing of the baseline works and no control answered.

    A resolver that answered the baseline's name over the network is not "down":
    under a national shutdown with a domestic whitelist (Iran, November 2019) the
    ISP's resolver still answers while everything abroad, the control included, is
    unreachable. Those failures stay inconclusive, but "your network is down" would
    be false. Not when the resolver is on this machine (a cache answers with the
    uplink down) or when connects found no route at all (the client's own link).
    Nor is a network where TCP connections to the baseline open: allowlist mode
    (Russian mobile networks, 2025) completes every handshake and drops the data
    that follows to all but a list of destinations (``NetworkEvidence``)."""
    if control_available:
        return False
    baseline = list(baseline)
    for observation in baseline:
        if any(
            p.connect is not None and p.connect.failure is None and not _is_loopback(p.address)
            for p in observation.ports
        ):
            return False
        if _resolver_answered_over_the_network(observation) and not any(
            p.connect is not None and p.connect.failure == failures.NETWORK_UNREACHABLE
            for p in observation.ports
        ):
            return False
        if resolver_failure(observation) is None and any(
            first_failure(p).step is None and p.connect is not None for p in observation.ports
        ):
            return False
        if resolver_failure(observation) is None and not observation.ports:
            return False
    return True


def resolver_replied(baseline: Iterable[EndpointObservation]) -> bool:
    """Did the chosen resolver send any reply (even an error) for a baseline name?"""
    return any(exchange.replies for o in baseline for exchange in o.dns)


def _resolver_answered_over_the_network(observation: EndpointObservation) -> bool:
    for exchange in observation.dns:
        try:
            if ipaddress.ip_address(exchange.query.resolver).is_loopback:
                continue
        except ValueError:
            continue
        if any(
            reply.failure is None and any(a.rrtype in ("A", "AAAA") for a in reply.answers)
            for reply in exchange.replies
        ):
            return True
    return False


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


# --------------------------------------------------------------------------- #
# the network as a whole                                                       #
# --------------------------------------------------------------------------- #

# Allowlist mode: TCP opens to (nearly) every destination...
RESTRICTED_CONNECT_RATIO = 0.9
# ...and the first data exchange times out to (nearly) every one that opened...
RESTRICTED_SILENT_RATIO = 0.75
# ...over at least this many destinations (a few dead servers are not a policy).
RESTRICTED_MIN_DESTINATIONS = 3
_DATA_STAGES = ("tls_handshake", "mtproto", "http_transaction")


@dataclass
class NetworkEvidence:
    """What the run's destinations said so far about the network as a whole, for
    ``network_findings``. For allowlist mode: the TCP destinations that opened,
    and of those the ones that passed their first data exchange (TLS handshake,
    MTProto, HTTP) or timed out on it, and whether the control's same exchange
    worked. For UDP: the destinations where any UDP datagram or QUIC handshake
    was answered (UDP passing anywhere means the network does not drop it all).
    Counted per address; a run analysed in batches adds each batch (with the
    control's observations of it) and keeps no observation."""

    attempted: set[str] = dataclasses.field(default_factory=set)
    connected: set[str] = dataclasses.field(default_factory=set)
    passed: set[str] = dataclasses.field(default_factory=set)
    silent: set[str] = dataclasses.field(default_factory=set)
    control_passed: set[str] = dataclasses.field(default_factory=set)  # of the silent ones
    control_silent: set[str] = dataclasses.field(default_factory=set)
    baseline_silent: set[str] = dataclasses.field(default_factory=set)
    udp_answered: set[str] = dataclasses.field(default_factory=set)
    quic_worked: set[str] = dataclasses.field(default_factory=set)

    def add(
        self,
        observations: Iterable[EndpointObservation],
        control: Mapping[str, EndpointObservation] | None = None,
        baseline: bool = False,
    ) -> None:
        for observation in observations:
            control_observation = control.get(observation.endpoint_id) if control else None
            for port in observation.ports:
                if any(_udp_answered(check) for check in port.udp):
                    self.udp_answered.add(port.address)
                if port.quic is not None and port.quic.packets_received:
                    self.udp_answered.add(port.address)
                    if port.quic.failed_phase != "handshake":
                        self.quic_worked.add(port.address)
                if port.connect is None or port.connect.failure in failures.LOCAL:
                    continue
                self.attempted.add(port.address)
                if port.connect.failure is not None:
                    continue
                self.connected.add(port.address)
                outcome = first_failure(port)
                if outcome.step is None or outcome.step not in _DATA_STAGES + ("tls_verify",):
                    if _has_data_stage(port):
                        self.passed.add(port.address)
                    continue
                if outcome.step == "tls_verify" or outcome.failure not in failures.TIMEOUTS:
                    self.passed.add(port.address)  # something came back: data passes
                    continue
                self.silent.add(port.address)
                if baseline:
                    self.baseline_silent.add(port.address)
                theirs = _control_port(control_observation, port.address, port.port)
                if theirs is not None:
                    worked = step_succeeded(theirs, outcome.step)
                    if worked is True:
                        self.control_passed.add(port.address)
                    elif worked is False:
                        self.control_silent.add(port.address)

    def restricted(self, control_available: bool) -> str | None:
        """The explanation when this is an allowlist-mode network, else None."""
        silent = self.silent - self.passed  # an address that passed once is not filtered
        data = len(silent) + len(self.passed)
        if data < RESTRICTED_MIN_DESTINATIONS or not self.attempted:
            return None
        if len(self.connected) < RESTRICTED_CONNECT_RATIO * len(self.attempted):
            return None
        if len(silent) < RESTRICTED_SILENT_RATIO * data or not (self.baseline_silent & silent):
            return None
        # The control's same exchange worked to those destinations (they are up); with
        # no control at all, the few destinations that do pass show the link carries
        # data, which a dead link or an overloaded one would not do selectively.
        confirmed = self.control_passed & silent
        if control_available:
            if not confirmed or len(confirmed) < len(self.control_silent & silent):
                return None
        elif not self.passed:
            return None
        return (
            f"TCP connections open everywhere ({len(self.connected)} of "
            f"{len(self.attempted)} destinations), but data passes to only "
            f"{len(self.passed)} of {data} destinations: this network allows only a list "
            "of destinations."
        )


def _has_data_stage(port: PortObservation) -> bool:
    return port.tls is not None or bool(port.mtproto) or bool(port.http)


def _udp_answered(check: UdpCheck) -> bool:
    return bool(check.answered) or bool(check.result.received)


def network_findings(
    baseline: Iterable[EndpointObservation],
    control: Mapping[str, EndpointObservation] | None,
    reference: Iterable[UdpCheck] = (),
    evidence: NetworkEvidence | None = None,
) -> NetworkFindings:
    """What the run learned about the volunteer's network as a whole.

    ``baseline``: the baseline service's observations (TCP and UDP endpoints);
    ``control``: the control's observations by endpoint id (None: no control);
    ``reference``: UDP flows to the control helper's own echo service (it answered
    the control call, so it is up); ``evidence``: every destination of the run
    (``NetworkEvidence``): any UDP answer or QUIC handshake anywhere means the
    network does not drop them all.

    UDP: every baseline STUN/UDP flow and reference flow unanswered while a baseline
    TCP/TLS measurement worked is ``all_udp_dropped`` (Iran and mobile networks have
    black-holed UDP wholesale: calls fail for every app, a finding, not an error);
    a baseline flow the control could not get answered either is a dead relay and
    says nothing. UDP answered and every baseline QUIC handshake failing is
    ``all_quic_dropped`` (Russia's TSPU, 2022, to foreign addresses); UDP answered
    and QUIC working (or not measured) is ``ok``; no reference UDP at all is
    ``unknown``."""
    baseline = list(baseline)
    tcp_works = any(
        p.connect is not None and first_failure(p).step is None
        for o in baseline for p in o.ports
    )
    flows: list[tuple[UdpCheck, bool | None]] = [(c, True) for c in reference]
    quic: list[tuple[QuicResult, bool | None]] = []
    for observation in baseline:
        theirs = control.get(observation.endpoint_id) if control else None
        for port in observation.ports:
            control_port = _control_port(theirs, port.address, port.port)
            for check in port.udp:
                if check.check in (Check.STUN, Check.UDP) and check.failure not in failures.LOCAL:
                    other = _udp_check(control_port, check.check)
                    flows.append((check, None if other is None else _udp_answered(other)))
            if port.quic is not None and port.quic.failure not in failures.LOCAL:
                quic.append((port.quic, None if control_port is None
                             else step_succeeded(control_port, "quic_handshake")))
    answered = any(_udp_answered(c) for c, _ in flows) or bool(evidence and evidence.udp_answered)
    quic_worked = bool(evidence and evidence.quic_worked)
    udp = UdpNetwork.UNKNOWN
    if answered:
        # a handshake the control could not do either is a dead server, not a policy
        failed = [theirs for q, theirs in quic
                  if q.failure is not None and q.failed_phase != "http"]
        if quic and not quic_worked and len(failed) == len(quic) and any(
            theirs is not False for theirs in failed
        ):
            udp, words = UdpNetwork.ALL_QUIC_DROPPED, (
                "UDP passes, but no QUIC handshake does: this network drops QUIC "
                "(browsers and apps fall back to TCP where they can).")
        else:
            udp, words = UdpNetwork.OK, "UDP passes" + (
                " and QUIC handshakes work." if quic else " (QUIC was not measured).")
    elif flows and tcp_works:
        # unanswered flows the control got answered (or to the helper itself); with
        # no control, two destinations unanswered at once
        confirmed = [c for c, theirs in flows if theirs is True]
        unknown = [c for c, theirs in flows if theirs is None]
        destinations = {c.result.request.address for c in unknown}
        if confirmed or (control is None and len(destinations) >= 2):
            udp, words = UdpNetwork.ALL_UDP_DROPPED, (
                f"No UDP flow was answered ({len(flows)} tried) while TCP works: this "
                "network drops all UDP, so calls fail for every app here, not only for "
                "one service.")
        else:
            words = ("The baseline's UDP flows were not answered, but not for the control "
                     "either: nothing to say about UDP on this network.")
    elif flows:
        words = "Neither UDP nor TCP to the baseline worked: nothing to say about UDP."
    else:
        words = "No reference UDP flow was measured."
    restricted = None
    if evidence is not None:
        restricted = evidence.restricted(control is not None)
    explanation = words if restricted is None else f"{restricted} {words}"
    return NetworkFindings(udp=udp.value, restricted=restricted is not None,
                           explanation=explanation)
