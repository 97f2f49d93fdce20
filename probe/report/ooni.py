"""One run's observations and verdicts for a service -> one OONI measurement (a dict).

:func:`build_measurement` writes a service's results in OONI's data format
(data_format_version 0.2.0): the df-000 base keys, and test_keys holding
``queries`` (df-002), ``tcp_connect`` (df-005), ``tls_handshakes`` (df-006),
``requests`` (df-001, HTTP/3 ones with ``x_transport: "quic"``),
``quic_handshakes`` (df-006 entries with ``network: "quic"``, as OONI's
urlgetter writes them) and ``network_events`` (df-008), plus OONI's own
per-service keys for telegram, whatsapp, signal and facebook_messenger, filled
from our verdicts. Every measurement loads with OONI's data models (the
``oonidata`` package); ``tests/report/test_ooni.py`` checks that for each test.

This module is pure: no clock, no I/O. It reads only the probe's own
observations (never the control's, which is passed through as ``control``)
and adds no local socket address: ``probe_ip`` is always ``127.0.0.1``, as in
OONI's own reports. Network times (``t0``, ``t``) are seconds since
``measurement_start_time``.

Our extensions
==============
In test_keys: ``endpoints`` (one entry per verdict: endpoint x address x port),
``service_status``, ``control`` (the control's answer, as given) and ``mtproto``
(every MTProto exchange). In each UDP/TCP DNS query: ``replies``, every reply
that arrived for the query with its arrival time (two different replies are
the evidence of injection; OONI's dnsping keeps the same evidence as
``delayed_responses``). In each request: ``redirects``, ``body_length`` and
``throughput_bps``. Most entries carry ``tags: ["endpoint:<id>"]``.

UDP and the run's findings: ``udp_flows`` holds every ``stun``, ``turn`` and
``udp`` flow (each datagram sent with its time and index, each one received
with its time, length and, for STUN and TURN, its bytes; ICMP errors; the
indices answered and the last one: a flow cut after N datagrams shows there;
the network's failure and our judgement); each datagram is also a df-008
``write_to``/``read_from`` event, an ICMP error a failed ``read_from``.
``function_status`` maps each function present (calls, messaging, media...) to
its status, with ``function_explanations``; ``udp_network``,
``restricted_network`` and ``network_explanation`` say what the run learned
about the volunteer's network as a whole (all UDP dropped, allowlist mode).
A STUN answer's mapped address is the volunteer's: ``mapped_address`` and the
raw answers are scrubbed like every other occurrence before a line is written.

Where we differ from OONI
=========================
OONI's per-service keys are filled from our verdicts, not from OONI's own rules,
so they can disagree with what OONI Probe would have written on the same network:

- Blocked needs evidence. OONI calls a failure "blocked"; we call it blocked
  only when the control reached the same address and step, or the evidence
  alone is conclusive (a bogon or injected DNS answer, a certificate failing
  the service's pinned root, a known blockpage). A failure the control saw too
  is ``down``: ``*_blocking`` is ``false`` and ``*_status`` is ``null``. A
  failure without a usable control is ``inconclusive``: the keys are ``null``.
  Neither is ever ``"blocked"`` or ``true``. Without any control the report is
  marked ``annotations.analysis = "local-only"``.
- One blocked address is blocking. OONI's telegram test reports no blocking
  when a single datacenter answers, and its whatsapp test calls the endpoints
  ``"ok"`` when one endpoint answers. We set ``telegram_tcp_blocking`` when any
  datacenter address/port is ``tcp_blocked``, ``telegram_http_blocking`` when
  any is blocked at any step (TCP, HTTP POST or MTProto: as in OONI, TCP
  blocking implies HTTP blocking), and every ``*_status`` to ``"blocked"`` when
  any of its measurements is blocked; ``service_status.status`` then says
  ``partially_blocked`` where some of them still work.
- ``"ok"`` needs a success. ``*_status`` is ``"ok"`` only when at least one of
  its measurements succeeded and none is blocked; ``*_blocking`` is ``false``
  when none is blocked and at least one gave a conclusive result (ok or down).
  Everything else is ``null``.
- Failure strings. ``*_failure`` is the df-007 failure of the first blocked
  measurement; blocking seen without an error (a blockpage, an injected DNS
  reply) has a ``null`` failure. The method (``http.blockpage``,
  ``dns.injected``...) is in ``endpoints``.
- WhatsApp. ``whatsapp_endpoints_blocked`` lists every e*.whatsapp.net host with
  a blocked address or port (OONI: both ports failed). OONI always writes an
  empty ``whatsapp_endpoints_dns_inconsistent``; we list the hosts whose DNS is
  blocked (NXDOMAIN, bogon, injected or inconsistent with the control).
- Signal. ``signal_backend_status`` summarises every Signal host we measure,
  with certificates checked against Signal's pinned root, like OONI; unlike
  OONI, a host that fails for the control too does not make it "blocked".
- Facebook Messenger. ``facebook_<role>_dns_consistent`` is ``false`` when our
  DNS verdict is ``dns_blocked`` and ``true`` when the name resolved and passed
  our DNS checks (comparison with the control, and bogon and injection checks;
  OONI compares with Facebook's AS32934 only). ``facebook_<role>_reachable`` is
  ``false`` for any blocked verdict (DNS included), and ``null`` for hosts we do
  not connect to (stun). We also measure TLS on these hosts (OONI does only
  TCP), and set ``facebook_tcp_blocking`` for blocking at TCP or TLS, so that
  tools reading OONI's keys see it.
- OONI's per-service keys are about TCP: UDP and QUIC endpoints (call relays,
  HTTP/3 front ends) count in ``service_status``, ``function_status`` and
  ``endpoints`` only, except Facebook's ``stun`` role, whose STUN check sets
  ``facebook_stun_reachable``.
- STUN. OONI's ``stunreachability`` writes one measurement per STUN server
  (``endpoint``, ``failure``, ``network_events``). Our STUN checks are part of
  their service's measurement: each flow is in ``udp_flows`` and its datagrams
  are ``write_to``/``read_from`` events as stunreachability writes them.
- Hosts OONI's tests do not have (telegram.org, t.me, api.telegram.org,
  WhatsApp's gateway and media hosts) count in ``service_status`` and
  ``endpoints`` only; OONI's keys summarise the hosts OONI measures.
- Our ``tcp_connect[].status.blocked`` is ``true`` only for a failed connect
  whose verdict is ``tcp_blocked``, ``null`` when the verdict is inconclusive.
- Failed HTTP transactions carry a ``response`` with ``code`` 0 and an empty
  body, as OONI Probe writes them.
- ``measurement_start_time`` equals ``test_start_time``: all services of a run
  are measured at the same time, not one after another as OONI Probe does.
"""

from __future__ import annotations

import base64
import binascii
import copy
import datetime
import ipaddress
import math
import platform
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import dns.exception
import dns.rcode

from probe import __version__, analysis
from probe.net import failures
from probe.net.network import (
    ConnectResult,
    DnsAnswer,
    DnsExchange,
    GetaddrinfoResult,
    HttpResult,
    QuicResult,
    Timing,
    UdpResult,
)
from probe.observations import (
    BLOCKED_VERDICTS,
    DNS_BLOCKED,
    INCONCLUSIVE,
    OK,
    SERVICE_BLOCKED,
    SERVICE_OK,
    SERVICE_PARTIALLY_BLOCKED,
    TCP_BLOCKED,
    EndpointObservation,
    FunctionVerdict,
    NetworkFindings,
    PortObservation,
    ServiceVerdict,
    UdpCheck,
    Verdict,
)
from probe.targets import Endpoint, Service
from probe.vocabulary import UDP_CHECKS, Check, Function, ServiceStatus, UdpPayload

__all__ = [
    "DATA_FORMAT_VERSION",
    "FACEBOOK_ROLES",
    "OONI_TEST_NAMES",
    "SOFTWARE_NAME",
    "TEST_VERSION",
    "RunMetadata",
    "build_measurement",
    "ooni_time",
]

DATA_FORMAT_VERSION = "0.2.0"
SOFTWARE_NAME = "probe"
# The version of our measurement method, the same for every test_name; bump it when
# what is measured or how verdicts are reached changes, so data users can split by it.
TEST_VERSION = "0.1.0"
OONI_TEST_NAMES = ("telegram", "whatsapp", "signal", "facebook_messenger")
# The endpoint names of OONI's facebook_messenger test (ts-019), as targets.yaml roles.
FACEBOOK_ROLES = ("b_api", "b_graph", "edge", "external_cdn", "scontent_cdn", "star", "stun")

_ASN = re.compile(r"(?:AS)?(\d{1,10})\Z", re.IGNORECASE)
_CC = re.compile(r"[A-Za-z]{2}\Z")
_ROLE_KEY = re.compile(r"[a-z0-9_]+\Z")
_STATUS_KEY: dict[str, str] = {
    SERVICE_OK: "ok",
    SERVICE_BLOCKED: "blocked",
    SERVICE_PARTIALLY_BLOCKED: "blocked",
}


def _default_platform() -> str:
    name = platform.system().lower()
    return {"darwin": "macos"}.get(name, name or "unknown")


@dataclass(frozen=True)
class RunMetadata:
    """What a run knows about itself, for the measurements' df-000 base keys.

    ``started_at`` is the (timezone-aware) wall-clock time at which the run's
    network clock read ``clock_origin``; observation times are reported relative
    to it. ``probe_asn`` takes ``"AS1234"``, ``"1234"`` or ``1234``; unknown
    values become OONI's ``"AS0"`` and ``"ZZ"``.
    """

    report_id: str
    started_at: datetime.datetime
    software_version: str = __version__
    test_version: str = TEST_VERSION
    probe_asn: str | int | None = None
    probe_cc: str | None = None
    probe_network_name: str | None = None
    resolver_ip: str | None = None
    resolver_asn: str | int | None = None
    resolver_cc: str | None = None
    resolver_network_name: str | None = None
    platform: str = field(default_factory=_default_platform)
    clock_origin: float = 0.0
    interrupted: bool = False  # the run was cut short (Ctrl-C)
    test_helpers: dict[str, Any] | None = None  # e.g. {"control": [{"address": url, ...}]}
    annotations: dict[str, str] = field(default_factory=dict)  # extra, e.g. architecture


# --------------------------------------------------------------------------- #
# small formatters                                                             #
# --------------------------------------------------------------------------- #


def _utc(moment: datetime.datetime) -> datetime.datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(
            f"started_at {moment.isoformat()} has no time zone; "
            "pass an aware datetime, e.g. datetime.now(timezone.utc)"
        )
    return moment.astimezone(datetime.UTC)


def ooni_time(moment: datetime.datetime) -> str:
    """OONI's ``YYYY-MM-DD HH:MM:SS`` form of an aware datetime, in UTC."""
    return f"{_utc(moment):%Y-%m-%d %H:%M:%S}"


def _asn(value: str | int | None, what: str) -> str:
    if value is None or value == "":
        return "AS0"
    match = _ASN.match(str(value).strip())
    if match is None:
        raise ValueError(f"{what} {value!r} is not an AS number like 'AS3320'")
    return f"AS{int(match.group(1))}"


def _cc(value: str | None, what: str) -> str:
    if value is None or value == "":
        return "ZZ"
    if not _CC.match(value):
        raise ValueError(f"{what} {value!r} is not a two-letter country code")
    return value.upper()


def _host_port(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _family_key(address: str) -> tuple[str, str]:
    """("A", "ipv4") or ("AAAA", "ipv6") for an address (scope ids allowed)."""
    try:
        version = ipaddress.ip_address(address.split("%", 1)[0]).version
    except ValueError:
        version = 6 if ":" in address else 4
    return ("AAAA", "ipv6") if version == 6 else ("A", "ipv4")


def _rcode(text: str) -> int | None:
    try:
        return int(dns.rcode.from_text(text))
    except (dns.exception.DNSException, ValueError):  # an unknown rcode name
        return None


def _binary_or_text(encoded: str) -> str | dict[str, str]:
    """A body as OONI stores it: text when it is UTF-8, else {format: base64, data}."""
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return {"format": "base64", "data": encoded}
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return {"format": "base64", "data": encoded}


def _byte_length(encoded: str) -> int:
    try:
        return len(base64.b64decode(encoded))
    except (binascii.Error, ValueError):
        return 0


def _headers(pairs: Iterable[tuple[str, str]]) -> tuple[dict[str, str], list[list[str]]]:
    """OONI's ``headers`` (first value of each name) and ``headers_list`` (all, in order)."""
    first: dict[str, str] = {}
    every: list[list[str]] = []
    for name, value in pairs:
        first.setdefault(name, value)
        every.append([name, value])
    return first, every


class _Clock:
    """Network-clock seconds -> seconds since measurement_start_time."""

    def __init__(self, origin: float) -> None:
        self.origin = origin

    def __call__(self, t: float) -> float:
        value = round(t - self.origin, 6)
        if not math.isfinite(value):
            raise ValueError(f"a recorded time is not a finite number: {t!r}")
        return value

    def span(self, timing: Timing) -> dict[str, float]:
        return {"t0": self(timing.t0), "t": self(timing.t)}


def _tags(endpoint_id: str) -> list[str]:
    return [f"endpoint:{endpoint_id}"]


# --------------------------------------------------------------------------- #
# df-002 queries                                                               #
# --------------------------------------------------------------------------- #


def _answer(answer: DnsAnswer) -> dict[str, Any]:
    entry: dict[str, Any] = {"answer_type": answer.rrtype}
    if answer.rrtype == "A":
        entry["ipv4"] = answer.value
    elif answer.rrtype == "AAAA":
        entry["ipv6"] = answer.value
    elif answer.rrtype in ("CNAME", "NS", "PTR"):
        entry["hostname"] = answer.value
    entry["ttl"] = answer.ttl
    return entry


def _getaddrinfo_query(
    result: GetaddrinfoResult, endpoint_id: str, clock: _Clock
) -> dict[str, Any]:
    # df-002: getaddrinfo is one lookup, written as a single "ANY" query.
    answers = []
    for address in result.addresses:
        answer_type, key = _family_key(address)
        answers.append({"answer_type": answer_type, key: address, "ttl": None})
    return {
        "engine": "getaddrinfo",
        "resolver_address": "",
        "query_type": "ANY",
        "hostname": result.host,
        "answers": answers or None,
        "failure": result.failure,
        **clock.span(result.timing),
        "tags": _tags(endpoint_id),
    }


def _dns_query(exchange: DnsExchange, endpoint_id: str, clock: _Clock) -> dict[str, Any]:
    query = exchange.query
    # What a stub resolver would have used: the first reply that parses.
    first = next((r for r in exchange.replies if r.failure is None), None)
    replies = [
        {
            "t": clock(reply.t),
            "rcode": _rcode(reply.rcode) if reply.rcode else None,
            "answers": [_answer(a) for a in reply.answers],
            "raw_response": reply.raw,
            "failure": reply.failure,
        }
        for reply in exchange.replies
    ]
    return {
        "engine": query.transport,
        "resolver_address": _host_port(query.resolver, query.port),
        "query_type": query.qtype,
        "hostname": query.qname,
        "answers": [_answer(a) for a in first.answers] if first else None,
        "rcode": _rcode(first.rcode) if first else None,
        "raw_response": first.raw if first else None,
        "failure": exchange.failure,
        "t0": clock(exchange.timing.t0),
        # When the answer was known; the listening window (for late, injected
        # replies) ends at listened_until.
        "t": clock(first.t) if first else clock(exchange.timing.t),
        "listened_until": clock(exchange.timing.t),
        "replies": replies,
        "tags": _tags(endpoint_id),
    }


# --------------------------------------------------------------------------- #
# df-005, df-006, df-001 per address x port                                    #
# --------------------------------------------------------------------------- #


def _connects(port: PortObservation) -> list[ConnectResult]:
    """Every TCP connect of this address x port (the runner may share one object)."""
    found: list[ConnectResult] = []
    candidates = [port.connect]
    if port.tls is not None:
        candidates.append(port.tls.connect)
    candidates += [check.result.connect for check in port.mtproto]
    for connect in candidates:
        if connect is not None and connect not in found:
            found.append(connect)
    return found


def _tcp_connect(
    connect: ConnectResult, verdict: Verdict | None, endpoint_id: str, clock: _Clock
) -> dict[str, Any]:
    if connect.failure is None:
        blocked: bool | None = False
    elif verdict is None or verdict.verdict == INCONCLUSIVE:
        blocked = None
    else:
        blocked = verdict.verdict == TCP_BLOCKED
    return {
        "ip": connect.address,
        "port": connect.port,
        "status": {
            "success": connect.failure is None,
            "failure": connect.failure,
            "blocked": blocked,
        },
        **clock.span(connect.timing),
        "tags": _tags(endpoint_id),
    }


def _tls_handshake(port: PortObservation, endpoint_id: str, clock: _Clock) -> dict[str, Any]:
    tls = port.tls
    assert tls is not None
    return {
        "network": "tcp",
        "address": _host_port(tls.request.address, tls.request.port),
        "server_name": tls.request.sni,
        "alpn": list(tls.request.alpn),
        **clock.span(tls.timing),
        "tls_version": tls.tls_version,
        "cipher_suite": tls.cipher_suite,
        "negotiated_protocol": tls.negotiated_protocol,
        "peer_certificates": [{"format": "base64", "data": c} for c in tls.peer_certificates],
        # The chain is verified after the handshake (so a forged chain is always
        # recorded); a verification failure is the handshake's failure, as in OONI.
        "failure": tls.failure or port.tls_verification,
        "no_tls_verify": False,
        "tags": _tags(endpoint_id),
    }


def _request(
    http: HttpResult, port: PortObservation, endpoint_id: str, clock: _Clock
) -> dict[str, Any]:
    request_headers, request_headers_list = _headers(http.request.headers)
    response_headers, response_headers_list = _headers(http.headers)
    return {
        "network": "tcp",
        "address": _host_port(http.request.address, port.port),
        "failure": http.failure,
        **clock.span(http.timing),
        "request": {
            "url": http.request.url,
            "method": http.request.method,
            "headers": request_headers,
            "headers_list": request_headers_list,
            "body": _binary_or_text(http.request.body),
            "body_is_truncated": False,
            "x_transport": "tcp",
        },
        "response": {
            "code": http.status if http.status is not None else 0,
            "headers": response_headers,
            "headers_list": response_headers_list,
            "body": _binary_or_text(http.body),
            "body_is_truncated": http.body_truncated,
        },
        "redirects": list(http.redirects),
        "body_length": http.body_length,
        "throughput_bps": http.throughput_bps,
        "tags": _tags(endpoint_id),
    }


def _mtproto(check, endpoint_id: str, clock: _Clock) -> dict[str, Any]:
    result = check.result
    return {
        "address": _host_port(result.request.address, result.request.port),
        "transport": result.request.transport,
        **clock.span(result.timing),
        "failure": result.failure,
        "valid": check.valid,
        "error": check.error,
        "sent_bytes": _byte_length(result.request.payload),
        "received": {"format": "base64", "data": result.received},
        "tags": _tags(endpoint_id),
    }


# --------------------------------------------------------------------------- #
# QUIC, HTTP/3 and UDP flows                                                   #
# --------------------------------------------------------------------------- #


def _quic_handshake_failure(port: PortObservation) -> str | None:
    quic = port.quic
    assert quic is not None
    if quic.failure is not None and quic.failed_phase != "http":
        return quic.failure
    # As for TLS over TCP: a chain that fails verification fails the handshake.
    return port.quic_verification


def _quic_handshake(port: PortObservation, endpoint_id: str, clock: _Clock) -> dict[str, Any]:
    """A urlgetter-style ``quic_handshakes`` entry (df-006 fields, network "quic")."""
    quic = port.quic
    assert quic is not None
    return {
        "network": "quic",
        "address": _host_port(quic.request.address, quic.request.port),
        "server_name": quic.request.sni,
        "alpn": list(quic.request.alpn),
        **clock.span(quic.timing),
        "tls_version": quic.tls_version,
        "cipher_suite": None,
        "negotiated_protocol": quic.negotiated_protocol,
        "peer_certificates": [{"format": "base64", "data": c} for c in quic.peer_certificates],
        "failure": _quic_handshake_failure(port),
        "no_tls_verify": False,
        # ours: what tells a silent blackhole from a handshake that started
        "quic_version": quic.quic_version,
        "handshake_time": quic.handshake_time,
        "packets_received": quic.packets_received,
        "tags": _tags(endpoint_id),
    }


def _http3_request(quic: QuicResult, endpoint_id: str, clock: _Clock) -> dict[str, Any]:
    """The HTTP/3 GET sent once the QUIC handshake completed, in df-001's shape."""
    response_headers, response_headers_list = _headers(quic.headers)
    return {
        "network": "quic",
        "address": _host_port(quic.request.address, quic.request.port),
        "alpn": quic.negotiated_protocol or "h3",
        "failure": quic.failure if quic.failed_phase == "http" else None,
        **clock.span(quic.timing),
        "request": {
            "url": quic.request.url,
            "method": "GET",
            "headers": {},
            "headers_list": [],
            "body": "",
            "body_is_truncated": False,
            "x_transport": "quic",
        },
        "response": {
            "code": quic.status if quic.status is not None else 0,
            "headers": response_headers,
            "headers_list": response_headers_list,
            "body": _binary_or_text(quic.body),
            "body_is_truncated": quic.body_length > _byte_length(quic.body),
        },
        "body_length": quic.body_length,
        "tags": _tags(endpoint_id),
    }


def _keeps_answer_bytes(check: UdpCheck, endpoint: Endpoint | None) -> bool:
    """STUN and TURN answers are evidence (a forged one next to the real one), and
    small: kept. An echo flow's answers are our own random bytes coming back:
    their lengths and times say everything, and fifty of them would bloat a line."""
    if check.check != Check.UDP:
        return True
    return endpoint is None or endpoint.payload != UdpPayload.ECHO


def _udp_flow(
    check: UdpCheck, endpoint: Endpoint | None, endpoint_id: str, clock: _Clock
) -> dict[str, Any]:
    """One ``stun``, ``turn`` or ``udp`` flow: what was sent when, what came back."""
    result: UdpResult = check.result
    request = result.request
    keep = _keeps_answer_bytes(check, endpoint)
    return {
        "check": check.check,
        "payload": endpoint.payload if endpoint is not None and check.check == Check.UDP
        else None,
        "address": _host_port(request.address, request.port),
        "proto": "udp",
        **clock.span(result.timing),
        "datagrams": len(request.datagrams),
        "sent": [
            {"t": clock(s.t), "index": s.index,
             "num_bytes": _byte_length(request.datagrams[s.index])
             if 0 <= s.index < len(request.datagrams) else None,
             "failure": s.failure}
            for s in result.sent
        ],
        "received": [
            {"t": clock(r.t), "num_bytes": r.length,
             "data": {"format": "base64", "data": r.data} if keep else None}
            for r in result.received
        ],
        "icmp_errors": [
            {"t": clock(i.t), "failure": i.failure, "icmp_type": i.icmp_type,
             "icmp_code": i.icmp_code, "offender": i.offender}
            for i in result.icmp
        ],
        "answered": list(check.answered),
        "last_answered": check.last_answered,
        "mapped_address": check.mapped_address,  # the volunteer's: scrubbed before writing
        # the network's answer as a whole, then what the answers prove
        "network_failure": result.failure,
        "failure": check.failure,
        "error": check.error,
        "tags": _tags(endpoint_id),
    }


# --------------------------------------------------------------------------- #
# df-008 network events                                                        #
# --------------------------------------------------------------------------- #


def _event(operation: str, t: float, endpoint_id: str, **fields: Any) -> dict[str, Any]:
    return {"operation": operation, "t": t, "failure": None, **fields, "tags": _tags(endpoint_id)}


def _datagram_events(result: UdpResult, endpoint_id: str, clock: _Clock) -> list[dict[str, Any]]:
    """df-008 ``write_to``/``read_from`` for each datagram of a flow; an ICMP error
    is a failed ``read_from``, as a connected UDP socket reports it to a reader."""
    request = result.request
    address = _host_port(request.address, request.port)
    events = [
        _event("write_to", clock(sent.t), endpoint_id, address=address, proto="udp",
               num_bytes=_byte_length(request.datagrams[sent.index])
               if 0 <= sent.index < len(request.datagrams) else 0,
               failure=sent.failure)
        for sent in result.sent
    ]
    events += [
        _event("read_from", clock(received.t), endpoint_id, address=address, proto="udp",
               num_bytes=received.length)
        for received in result.received
    ]
    events += [
        _event("read_from", clock(icmp.t), endpoint_id, address=address, proto="udp",
               num_bytes=0, failure=icmp.failure)
        for icmp in result.icmp
    ]
    return events


def _network_events(
    observations: Sequence[EndpointObservation], clock: _Clock
) -> list[dict[str, Any]]:
    """The events our results record times for, in time order.

    We do not trace TCP reads and writes (the network seam returns results,
    not byte streams), so this holds resolves, DNS replies, connects, TLS and
    QUIC handshakes and HTTP transactions, and, for UDP flows, every datagram
    sent and received (the seam records each); TCP reads and writes are not
    invented.
    """
    events: list[dict[str, Any]] = []
    for observation in observations:
        eid = observation.endpoint_id
        if observation.getaddrinfo is not None:
            timing = observation.getaddrinfo.timing
            events.append(_event("resolve_start", clock(timing.t0), eid))
            events.append(_event("resolve_done", clock(timing.t), eid,
                                 failure=observation.getaddrinfo.failure))
        for exchange in observation.dns:
            query = exchange.query
            address = _host_port(query.resolver, query.port)
            events.append(_event("resolve_start", clock(exchange.timing.t0), eid))
            for reply in exchange.replies:
                # Every reply, with its arrival time: injection shows as two reads.
                events.append(_event(
                    "read_from" if query.transport == "udp" else "read", clock(reply.t), eid,
                    address=address, proto=query.transport, num_bytes=_byte_length(reply.raw),
                    failure=reply.failure,
                ))
            events.append(_event("resolve_done", clock(exchange.timing.t), eid,
                                 failure=exchange.failure))
        for port in observation.ports:
            for connect in _connects(port):
                events.append(_event(
                    "connect", clock(connect.timing.t), eid, t0=clock(connect.timing.t0),
                    address=_host_port(connect.address, connect.port), proto="tcp",
                    failure=connect.failure,
                ))
            if port.tls is not None:
                events.append(_event("tls_handshake_start", clock(port.tls.timing.t0), eid))
                events.append(_event("tls_handshake_done", clock(port.tls.timing.t), eid,
                                     failure=port.tls.failure or port.tls_verification))
            for http in port.http:
                events.append(_event("http_transaction_start", clock(http.timing.t0), eid))
                events.append(_event("http_transaction_done", clock(http.timing.t), eid,
                                     failure=http.failure))
            for check in port.udp:
                events += _datagram_events(check.result, eid, clock)
            if port.quic is not None:
                quic = port.quic
                events.append(_event("quic_handshake_start", clock(quic.timing.t0), eid,
                                     address=_host_port(quic.request.address, quic.request.port),
                                     proto="quic"))
                done = (quic.timing.t if quic.handshake_time is None
                        else quic.timing.t0 + quic.handshake_time)
                events.append(_event("quic_handshake_done", clock(done), eid,
                                     failure=_quic_handshake_failure(port)))
    events.sort(key=lambda e: e["t"])
    return events


# --------------------------------------------------------------------------- #
# OONI's per-service keys, from our verdicts                                   #
# --------------------------------------------------------------------------- #


def _group_status(rows: Sequence[Verdict]) -> str | None:
    """"blocked" / "ok" / None for a group of verdicts, by our service rules."""
    if not rows:
        return None
    return _STATUS_KEY.get(analysis.service_status(rows).status)


def _group_failure(rows: Sequence[Verdict]) -> str | None:
    return next((r.failure for r in rows if r.verdict in BLOCKED_VERDICTS), None)


def _blocking(rows: Sequence[Verdict], kinds: Iterable[str]) -> bool | None:
    kinds = frozenset(kinds)
    if any(r.verdict in kinds for r in rows):
        return True
    if any(r.verdict != INCONCLUSIVE for r in rows):
        return False
    return None


def _hosts(rows: Iterable[Verdict], kinds: Iterable[str]) -> list[str]:
    kinds = frozenset(kinds)
    hosts: list[str] = []
    for row in rows:
        if row.verdict in kinds and row.host not in hosts:
            hosts.append(row.host)
    return hosts


def _telegram_keys(by_role: Mapping[str | None, list[Verdict]]) -> dict[str, Any]:
    datacenters = by_role.get("datacenter", [])
    web = by_role.get("web", [])
    web_status = _group_status(web)
    return {
        "telegram_tcp_blocking": _blocking(datacenters, {TCP_BLOCKED}),
        "telegram_http_blocking": _blocking(datacenters, BLOCKED_VERDICTS),
        "telegram_web_status": web_status,
        "telegram_web_failure": _group_failure(web) if web_status == "blocked" else None,
    }


def _whatsapp_keys(by_role: Mapping[str | None, list[Verdict]]) -> dict[str, Any]:
    endpoints = by_role.get("endpoint", [])
    registration = by_role.get("registration", [])
    web = by_role.get("web", [])
    registration_status = _group_status(registration)
    web_status = _group_status(web)
    return {
        "whatsapp_endpoints_status": _group_status(endpoints),
        "whatsapp_endpoints_blocked": _hosts(endpoints, BLOCKED_VERDICTS),
        "whatsapp_endpoints_dns_inconsistent": _hosts(endpoints, {DNS_BLOCKED}),
        "registration_server_status": registration_status,
        "registration_server_failure": (
            _group_failure(registration) if registration_status == "blocked" else None
        ),
        "whatsapp_web_status": web_status,
        "whatsapp_web_failure": _group_failure(web) if web_status == "blocked" else None,
    }


def _signal_keys(rows: Sequence[Verdict], status: ServiceVerdict) -> dict[str, Any]:
    backend_status = _STATUS_KEY.get(status.status)
    return {
        "signal_backend_status": backend_status,
        "signal_backend_failure": _group_failure(rows) if backend_status == "blocked" else None,
    }


def _dns_consistent(rows: Sequence[Verdict]) -> bool | None:
    if any(r.verdict == DNS_BLOCKED for r in rows):
        return False
    # Rows per address exist only when the name resolved and passed the DNS checks;
    # a DNS-only endpoint that resolved consistently has one "ok" row.
    if any(r.address is not None or r.verdict == OK for r in rows):
        return True
    return None


def _reachable(rows: Sequence[Verdict], connects: bool) -> bool | None:
    if not connects or not rows:
        return None  # e.g. stun: UDP, only resolved (OONI writes null too)
    if any(r.verdict in BLOCKED_VERDICTS for r in rows):
        return False
    if any(r.verdict == OK and r.port is not None for r in rows):
        return True
    return None


def _facebook_keys(
    service: Service, by_role: Mapping[str | None, list[Verdict]], rows: Sequence[Verdict]
) -> dict[str, Any]:
    roles = list(FACEBOOK_ROLES)
    roles += [
        e.role for e in service.endpoints
        if e.role and e.role not in roles and _ROLE_KEY.match(e.role)
    ]
    keys: dict[str, Any] = {}
    consistent: list[bool | None] = []
    for role in roles:
        role_rows = by_role.get(role, [])
        connects = any(
            set(e.checks) - {"dns"} for e in service.endpoints if e.role == role
        )
        dns_consistent = _dns_consistent(role_rows)
        consistent.append(dns_consistent)
        keys[f"facebook_{role}_dns_consistent"] = dns_consistent
        keys[f"facebook_{role}_reachable"] = _reachable(role_rows, connects)
    if False in consistent:
        keys["facebook_dns_blocking"] = True
    elif True in consistent:
        keys["facebook_dns_blocking"] = False
    else:
        keys["facebook_dns_blocking"] = None
    port_rows = [r for r in rows if r.port is not None]
    keys["facebook_tcp_blocking"] = _blocking(port_rows, BLOCKED_VERDICTS - {DNS_BLOCKED})
    return keys


def _service_keys(
    service: Service, rows: Sequence[Verdict], status: ServiceVerdict,
    endpoints: Mapping[str, Endpoint],
) -> dict[str, Any]:
    by_role: dict[str | None, list[Verdict]] = {}
    for row in rows:
        endpoint = endpoints.get(row.endpoint_id)
        by_role.setdefault(endpoint.role if endpoint else None, []).append(row)
    # OONI's keys are about TCP (its telegram, whatsapp and signal tests have no
    # UDP): a call relay dropping STUN does not make telegram_tcp_blocking true.
    # Facebook's "stun" role is OONI's own name for its STUN host: kept.
    tcp_rows = [r for r in rows if not _is_udp(endpoints.get(r.endpoint_id))]
    if len(tcp_rows) != len(rows):
        rows = tcp_rows
        if rows:
            status = ServiceVerdict(status.service, *analysis.service_status(rows))
        else:
            status = ServiceVerdict(status.service, ServiceStatus.INCONCLUSIVE, "")
    by_role = {
        role: [r for r in role_rows if role == "stun" or not _is_udp(endpoints.get(r.endpoint_id))]
        for role, role_rows in by_role.items()
    }
    if service.test_name == "telegram":
        return _telegram_keys(by_role)
    if service.test_name == "whatsapp":
        return _whatsapp_keys(by_role)
    if service.test_name == "signal":
        return _signal_keys(rows, status)
    if service.test_name == "facebook_messenger":
        return _facebook_keys(service, by_role, rows)
    return {}


# --------------------------------------------------------------------------- #
# per-function status and the network as a whole                               #
# --------------------------------------------------------------------------- #


def _function_keys(functions: Sequence[FunctionVerdict]) -> dict[str, Any]:
    """``function_status`` (function -> status, in the vocabulary's order) and the
    sentence behind each under ``function_explanations``."""
    order: dict[str, int] = {str(name): index for index, name in enumerate(Function)}
    ranked = sorted(functions, key=lambda f: order.get(f.function, len(order)))
    return {
        "function_status": {str(f.function): str(f.status) for f in ranked},
        "function_explanations": {str(f.function): f.explanation for f in ranked},
    }


def _network_keys(network: NetworkFindings) -> dict[str, Any]:
    """The run's findings about the volunteer's network, on every line of the run:
    a network that drops every UDP flow blocks calls for every app."""
    return {
        "udp_network": str(network.udp),
        "restricted_network": network.restricted,
        "network_explanation": network.explanation,
    }


# --------------------------------------------------------------------------- #
# the measurement                                                              #
# --------------------------------------------------------------------------- #


def _measurement_uid(started_at: datetime.datetime, cc: str, test_name: str) -> str:
    # OONI's collector form (time-sortable, then random): 20261128021500.123456_IT_telegram_<hex>
    moment = _utc(started_at)
    name = re.sub(r"[^a-z0-9]", "", test_name.lower()) or "probe"
    return f"{moment:%Y%m%d%H%M%S}.{moment.microsecond:06d}_{cc}_{name}_{secrets.token_hex(8)}"


def _is_udp(endpoint: Endpoint | None) -> bool:
    """An endpoint whose ports are UDP ports (its checks are stun, turn, udp, quic)."""
    return endpoint is not None and any(check in UDP_CHECKS for check in endpoint.checks)


def _endpoint_entry(row: Verdict, endpoint: Endpoint | None) -> dict[str, Any]:
    return {
        "id": row.endpoint_id,
        "host": row.host,
        "address": row.address,
        "port": row.port,
        "transport": "udp" if _is_udp(endpoint) else "tcp",
        "role": endpoint.role if endpoint else None,
        "function": endpoint.function if endpoint else None,
        "checks": list(endpoint.checks) if endpoint else [],
        "verdict": row.verdict,
        "method": row.method,
        "failure": row.failure,
        "failed_operation": row.failed_operation,
        "explanation": row.explanation,
    }


def build_measurement(
    meta: RunMetadata,
    service: Service,
    observations: Sequence[EndpointObservation],
    verdicts: Sequence[Verdict],
    status: ServiceVerdict,
    control: dict | None,
    runtime: float,
    *,
    functions: Sequence[FunctionVerdict] = (),
    network: NetworkFindings | None = None,
) -> dict:
    """One OONI measurement (a JSON-ready dict) for ``service`` in this run.

    Observations and verdicts of other services are ignored, so a caller may pass
    the whole run's. ``control`` is written as given under ``test_keys.control``;
    None marks the measurement ``annotations.analysis = "local-only"``.
    ``functions`` (the service's per-function status) and ``network`` (what the
    run learned about the volunteer's network) come from the ServiceResult.
    """
    if not math.isfinite(runtime) or runtime < 0:
        raise ValueError(f"runtime must be a non-negative number of seconds, not {runtime!r}")
    observations = [o for o in observations if o.service == service.id]
    rows = [v for v in verdicts if v.service == service.id]
    endpoints = {e.id: e for e in service.endpoints}
    clock = _Clock(meta.clock_origin)
    probe_cc = _cc(meta.probe_cc, "probe_cc")
    started = ooni_time(meta.started_at)
    interrupted = meta.interrupted or any(o.interrupted for o in observations)
    nothing_measured = bool(observations) and all(o.interrupted for o in observations)

    row_at = {(r.endpoint_id, r.address, r.port): r for r in rows}
    queries: list[dict[str, Any]] = []
    tcp_connect: list[dict[str, Any]] = []
    tls_handshakes: list[dict[str, Any]] = []
    requests: list[dict[str, Any]] = []
    mtproto: list[dict[str, Any]] = []
    quic_handshakes: list[dict[str, Any]] = []
    udp_flows: list[dict[str, Any]] = []
    for observation in observations:
        eid = observation.endpoint_id
        if observation.getaddrinfo is not None:
            queries.append(_getaddrinfo_query(observation.getaddrinfo, eid, clock))
        queries += [_dns_query(exchange, eid, clock) for exchange in observation.dns]
        for port in observation.ports:
            row = row_at.get((eid, port.address, port.port))
            tcp_connect += [_tcp_connect(c, row, eid, clock) for c in _connects(port)]
            if port.tls is not None:
                tls_handshakes.append(_tls_handshake(port, eid, clock))
            requests += [_request(http, port, eid, clock) for http in port.http]
            mtproto += [_mtproto(check, eid, clock) for check in port.mtproto]
            udp_flows += [
                _udp_flow(check, endpoints.get(eid), eid, clock) for check in port.udp
            ]
            if port.quic is not None:
                quic_handshakes.append(_quic_handshake(port, eid, clock))
                if port.quic.failed_phase != "handshake" and (
                    port.quic.failure is None or port.quic.failed_phase == "http"
                ):
                    requests.append(_http3_request(port.quic, eid, clock))

    test_keys: dict[str, Any] = {
        "failure": failures.INTERRUPTED if nothing_measured else None,
        "failed_operation": None,
        "queries": queries,
        "tcp_connect": tcp_connect,
        "tls_handshakes": tls_handshakes,
        "requests": requests,
        "network_events": _network_events(observations, clock),
        **_service_keys(service, rows, status, endpoints),
        "endpoints": [_endpoint_entry(r, endpoints.get(r.endpoint_id)) for r in rows],
        "service_status": {"status": status.status, "explanation": status.explanation},
        **_function_keys(functions),
        **_network_keys(network or NetworkFindings()),
        "quic_handshakes": quic_handshakes,
        "udp_flows": udp_flows,
        "mtproto": mtproto,
        "control": copy.deepcopy(control),
    }

    annotations = {str(k): str(v) for k, v in meta.annotations.items()}
    annotations.update({
        "engine_name": SOFTWARE_NAME,
        "engine_version": meta.software_version,
        "platform": meta.platform,
        "analysis": "local-only" if control is None else "control",
    })
    if interrupted:
        annotations["incomplete"] = "true"

    measurement: dict[str, Any] = {
        "data_format_version": DATA_FORMAT_VERSION,
        "report_id": meta.report_id,
        "measurement_uid": _measurement_uid(meta.started_at, probe_cc, service.test_name),
        "measurement_start_time": started,
        "test_start_time": started,
        "test_name": service.test_name,
        "test_version": meta.test_version,
        "test_runtime": float(runtime),
        "software_name": SOFTWARE_NAME,
        "software_version": meta.software_version,
        "probe_asn": _asn(meta.probe_asn, "probe_asn"),
        "probe_cc": probe_cc,
        "probe_network_name": meta.probe_network_name,
        "probe_ip": "127.0.0.1",  # never the volunteer's address
        "resolver_ip": meta.resolver_ip,
        "resolver_asn": _asn(meta.resolver_asn, "resolver_asn"),
        "resolver_network_name": meta.resolver_network_name,
        "annotations": annotations,
        "input": None,
        "test_helpers": copy.deepcopy(meta.test_helpers),
        "extensions": {"dnst": 0, "httpt": 0, "netevents": 0, "tcpconnect": 0, "tlshandshake": 0},
        "test_keys": test_keys,
    }
    if meta.resolver_cc is not None:
        measurement["resolver_cc"] = _cc(meta.resolver_cc, "resolver_cc")
    return measurement
