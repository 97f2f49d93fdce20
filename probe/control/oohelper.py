"""OONI's web_connectivity test helper (``oohelperd``) as a control.

OONI runs test helpers (and NGOs self-host ``oohelperd`` from ooni/probe-cli)
that measure one URL from an uncensored network: the probe POSTs a JSON object
naming the URL (``http_request``), its headers and the ``ip:port`` endpoints it
resolved (``tcp_connect``); the helper resolves the URL's host itself, connects
to every address (the probe's and its own) on the URL's port, handshakes TLS
with the URL's host as SNI on port 443 only, fetches the URL (following
redirects) and answers ``dns`` {failure, addrs}, ``tcp_connect`` and
``tls_handshake`` maps keyed by ``ip:port`` ({status, failure}) and
``http_request`` {status_code, body_length, title, headers, failure}.

This module asks such a helper one question per endpoint and port, and maps each
answer onto the same ``EndpointObservation`` shape our own helper answers
(``probe.control.protocol``), so analysis compares the steps the protocol covers
(DNS, TCP connect, TLS handshake and certificate on port 443, HTTP status)
exactly as it compares our helper's. What it does not cover (MTProto,
throughput, UDP, STUN/TURN, QUIC) gets no control, said in one line per reason.
Answers are unsigned: nothing here is an attestation.

The mapping is pure; the requests go through the network seam's
``control_call`` (unauthenticated: an OONI helper has no use for the probe's
key, and a signature would link the volunteer's requests). Answers are capped
in size and checked field by field; an answer that does not follow the
protocol (wrong types, huge maps, addresses that were not asked about) gives
no control for that endpoint, with the reason.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from probe.control.protocol import ControlEndpoint, ProtocolError
from probe.net import failures
from probe.net.network import (
    ConnectResult,
    ControlRequest,
    GetaddrinfoResult,
    HttpRequest,
    HttpResult,
    Network,
    Timing,
    TlsRequest,
    TlsResult,
)
from probe.observations import EndpointObservation, PortObservation
from probe.vocabulary import TCP_CHECKS, Check

PROTOCOL = "oohelperd"
PROTOCOLS = ("probe", PROTOCOL)
SOURCE_NOTE = "OONI web_connectivity test helper (unsigned: no attestation)"

# A real answer for a name with 20 addresses is about 9 KiB (www.youtube.com);
# 256 KiB leaves room for long headers, and stops a hostile helper early.
MAX_ANSWER_BYTES = 256 * 1024
MAX_ENTRIES = 64  # tcp_connect / tls_handshake / ip_info entries, and DNS addresses
MAX_HEADERS = 64
MAX_TEXT = 4096
# Questions per batch, and how many are in flight at once: one per endpoint and
# port (the bundled targets ask about 200), a few at a time to be a polite client
# of a helper that OONI or an NGO runs for many probes.
MAX_QUESTIONS = 400
IN_FLIGHT = 8
# The only header a probe sends: OONI's own probes send a browser-like set, and the
# helper fetches the URL with what it is given.
REQUEST_HEADERS = {
    "Accept": ["text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"],
    "Accept-Language": ["en-US;q=0.8,en;q=0.5"],
    "User-Agent": ["Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:128.0) Gecko/20100101 "
                   "Firefox/128.0"],
}

# Steps the protocol has no question for, by check.
_UNCOVERED_CHECKS: dict[str, str] = {
    Check.MTPROTO: "MTProto",
    Check.DOWNLOAD: "throughput",
    Check.STUN: "STUN",
    Check.TURN: "TURN",
    Check.UDP: "UDP flows",
    Check.QUIC: "QUIC",
}
# The helper's TLS failures about the certificate (its handshake verifies against
# its own roots); the probe records these as a verification step after a handshake.
_VERIFICATION_FAILURES = {
    failures.SSL_UNKNOWN_AUTHORITY, failures.SSL_INVALID_HOSTNAME,
    failures.SSL_INVALID_CERTIFICATE,
}
# The legacy helper's failure strings (kept by oohelperd for compatibility) in
# probe's vocabulary; anything else is kept as the helper said it.
_DNS_FAILURES = {
    "dns_name_error": failures.DNS_NXDOMAIN,
    "dns_nxdomain_error": failures.DNS_NXDOMAIN,
    "dns_server_failure": failures.DNS_SERVFAIL,
}
_CONNECT_FAILURES = {
    "connection_refused_error": failures.CONNECTION_REFUSED,
    "connect_error": "connect_error",
}
_NO_TIME = Timing(0.0, 0.0)  # the protocol carries no timings


@dataclass(frozen=True)
class Question:
    """One request to the helper: an endpoint's URL on one port, with the
    addresses the probe resolved for it."""

    endpoint_id: str
    url: str
    port: int
    addresses: tuple[str, ...]
    tls_comparable: bool  # the helper's SNI (the URL's host) is the endpoint's
    http: bool  # the endpoint's own check fetches this URL


@dataclass
class Plan:
    questions: list[Question] = field(default_factory=list)
    uncovered: dict[str, str] = field(default_factory=dict)  # endpoint id -> why no control
    partial: dict[str, str] = field(default_factory=dict)  # endpoint id -> steps not covered


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _endpoint_text(address: str, port: int) -> str:
    """Go's net.JoinHostPort, which the helper's keys follow."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def helper_ports(url: str) -> tuple[int, ...]:
    """The ports a helper measures for ``url``: its own, else 443 for https and
    80 and 443 for http (the second to learn whether an address is valid for the
    name). The probe always names the port; real answers may not have."""
    parts = urlsplit(url)
    if parts.port:
        return (parts.port,)
    return (443,) if parts.scheme == "https" else (80, 443)


def _url_port(url: str) -> int:
    parts = urlsplit(url)
    return parts.port or (443 if parts.scheme == "https" else 80)


def plan(items: Sequence[ControlEndpoint]) -> Plan:
    """The questions for a batch, and what the protocol cannot cover."""
    out = Plan()
    for item in items:
        endpoint = item.endpoint
        checks = set(endpoint.checks)
        missing = sorted({_UNCOVERED_CHECKS[c] for c in checks if c in _UNCOVERED_CHECKS})
        if not checks & TCP_CHECKS or checks <= {Check.MTPROTO, Check.DOWNLOAD, Check.DNS}:
            out.uncovered[endpoint.id] = (
                f"the OONI test helper does not measure {' or '.join(missing) or 'this'}")
            continue
        tls = bool(checks & {Check.TLS, Check.HTTPS})
        host = endpoint.host
        sni = endpoint.sni or host
        tls_comparable = True
        if sni != host:
            if endpoint.host_is_address and not _is_address(sni):
                host = sni  # the helper's SNI is the URL's host; it is sent our addresses
            else:
                tls_comparable = False
        steps = list(missing)
        if tls and not tls_comparable:
            steps.append("TLS with another SNI than the host")
        if steps:
            out.partial[endpoint.id] = ", ".join(steps)
        http = bool(checks & {Check.HTTP, Check.HTTPS}) and Check.DOWNLOAD not in checks
        path = endpoint.path if http else "/"
        scheme = "https" if tls else "http"
        for port in endpoint.ports:
            out.questions.append(Question(
                endpoint.id, f"{scheme}://{_url_host(host)}:{port}{path}", port,
                tuple(item.addresses), tls_comparable, http,
            ))
    return out


def build_request(question: Question) -> dict[str, Any]:
    """The JSON body OONI's probes POST to a helper (ooni/spec, web_connectivity)."""
    return {
        "http_request": question.url,
        "http_request_headers": REQUEST_HEADERS,
        "tcp_connect": [_endpoint_text(a, question.port) for a in question.addresses],
    }


# --------------------------------------------------------------------------- #
# parsing an answer                                                            #
# --------------------------------------------------------------------------- #


def _failure(value: Any, where: str, table: dict[str, str] | None = None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > 200:
        raise ProtocolError(f"{where}: failure must be null or a short string")
    return (table or {}).get(value, value)


def _map(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProtocolError(f"{where} must be an object")
    if len(value) > MAX_ENTRIES:
        raise ProtocolError(f"{where} has more than {MAX_ENTRIES} entries")
    return value


def _split_endpoint(key: str, where: str) -> tuple[str, int]:
    host, sep, port = key.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not port.isdigit() or len(port) > 5 or not _is_address(host) or (
            ":" in host and not key.startswith("[")):
        raise ProtocolError(f"{where}: {key[:60]!r} is not an ip:port endpoint")
    return str(ipaddress.ip_address(host)), int(port)


def _status(entry: Any, where: str) -> tuple[bool, str | None]:
    if not isinstance(entry, dict) or not isinstance(entry.get("status"), bool):
        raise ProtocolError(f"{where}: expected an object with a boolean status")
    return entry["status"], entry.get("failure")


@dataclass(frozen=True)
class Answer:
    """What the helper said about one question, in probe's shapes."""

    getaddrinfo: GetaddrinfoResult | None
    ports: tuple[PortObservation, ...]


def parse_answer(question: Question, host: str, body: Any) -> Answer:
    """One helper answer as probe observations; ``ProtocolError`` when it does not
    follow the protocol. ``host``: the endpoint's host (the name resolved)."""
    if not isinstance(body, dict):
        raise ProtocolError("the answer is not a JSON object")
    url_host = urlsplit(question.url).hostname or ""
    getaddrinfo = None
    own: list[str] = []
    dns = body.get("dns")
    if not _is_address(url_host):
        if not isinstance(dns, dict):
            raise ProtocolError("dns must be an object")
        addrs = dns.get("addrs")
        if addrs is None:
            addrs = []
        if not isinstance(addrs, list) or len(addrs) > MAX_ENTRIES:
            raise ProtocolError(f"dns.addrs must be a list of at most {MAX_ENTRIES}")
        if not all(isinstance(a, str) and len(a) <= 255 for a in addrs):
            raise ProtocolError("dns.addrs must be strings")
        # the legacy helper listed CNAME targets among the addresses
        own = [str(ipaddress.ip_address(a)) for a in addrs if _is_address(a)]
        failure = _failure(dns.get("failure"), "dns", _DNS_FAILURES)
        if url_host == host:  # a URL on the endpoint's SNI says nothing of its host
            getaddrinfo = GetaddrinfoResult(host, tuple(own), failure, _NO_TIME)
    asked = {str(ipaddress.ip_address(a)) for a in question.addresses} | set(own)
    if _is_address(url_host):
        asked.add(str(ipaddress.ip_address(url_host)))
    allowed = helper_ports(question.url)
    connects: dict[tuple[str, int], ConnectResult] = {}
    for key, entry in _map(body.get("tcp_connect"), "tcp_connect").items():
        address, port = _split_endpoint(key, "tcp_connect")
        if address not in asked or port not in allowed:
            raise ProtocolError(f"tcp_connect: {key[:60]!r} was not asked about")
        ok, failure = _status(entry, f"tcp_connect {key[:60]!r}")
        failure = _failure(failure, f"tcp_connect {key[:60]!r}", _CONNECT_FAILURES)
        if not ok and failure is None:
            failure = "connect_error"
        connects[address, port] = ConnectResult(address, port, None if ok else failure, _NO_TIME)
    tls: dict[tuple[str, int], tuple[TlsResult | None, str | None]] = {}
    for key, entry in _map(body.get("tls_handshake"), "tls_handshake").items():
        address, port = _split_endpoint(key, "tls_handshake")
        if (address, port) not in connects:
            raise ProtocolError(f"tls_handshake: {key[:60]!r} was not asked about")
        ok, failure = _status(entry, f"tls_handshake {key[:60]!r}")
        failure = _failure(failure, f"tls_handshake {key[:60]!r}")
        if not ok and failure is None:
            failure = failures.SSL_FAILED_HANDSHAKE
        verification = failure if failure in _VERIFICATION_FAILURES else None
        handshake_failure = None if ok or verification else failure
        result = TlsResult(
            TlsRequest(address, port, url_host), connects[address, port], handshake_failure,
            None, None, None, (), _NO_TIME,
        )
        if question.tls_comparable:
            tls[address, port] = (result, verification)
    http = _http(question, body.get("http_request")) if question.http else None
    ports = []
    for (address, port), connect in connects.items():
        handshake, verified = tls.get((address, port), (None, None))
        # the helper fetched the URL from an address of its own resolution (any of
        # them): its page stands for those, not for addresses only the probe had
        fetched = http is not None and port == _url_port(question.url) and (
            address in own or _is_address(url_host))
        ports.append(PortObservation(
            address, port, connect, handshake, verified, (),
            (_for_address(http, address),) if fetched and http is not None else (),
        ))
    return Answer(getaddrinfo, tuple(ports))


def _http(question: Question, value: Any) -> HttpResult | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ProtocolError("http_request must be an object")
    status, length = value.get("status_code", -1), value.get("body_length", -1)
    for name, number in (("status_code", status), ("body_length", length)):
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(
                number) or abs(number) > 1 << 53:
            raise ProtocolError(f"http_request.{name} must be a number")
    headers = value.get("headers") or {}
    if not isinstance(headers, dict) or len(headers) > MAX_HEADERS or not all(
            isinstance(k, str) and isinstance(v, str) and len(k) + len(v) <= MAX_TEXT
            for k, v in headers.items()):
        raise ProtocolError(f"http_request.headers must map at most {MAX_HEADERS} names to text")
    failure = _failure(value.get("failure"), "http_request")
    if failure is None and not 100 <= status <= 599:
        raise ProtocolError("http_request: a status_code out of 100-599 without a failure")
    return HttpResult(
        HttpRequest(question.url, ""), failure, None if failure else int(status),
        tuple(headers.items()), "", max(0, int(length)),
        True,  # the helper sends no body: analysis must not compare page contents
        (), None, _NO_TIME,
    )


def _for_address(http: HttpResult, address: str) -> HttpResult:
    return HttpResult(
        HttpRequest(http.request.url, address), http.failure, http.status, http.headers,
        http.body, http.body_length, http.body_truncated, http.redirects, None, http.timing,
    )


def observation(item: ControlEndpoint, answers: Sequence[Answer]) -> EndpointObservation:
    """An endpoint's control observation from the answers about its ports."""
    getaddrinfo = next((a.getaddrinfo for a in answers if a.getaddrinfo is not None), None)
    ports = tuple(p for a in answers for p in a.ports)
    addresses: list[str] = []
    for port in ports:
        if port.address not in addresses:
            addresses.append(port.address)
    endpoint = item.endpoint
    return EndpointObservation(
        endpoint.id, endpoint.service, endpoint.host, getaddrinfo, (), tuple(addresses), (), ports,
    )


# --------------------------------------------------------------------------- #
# asking                                                                       #
# --------------------------------------------------------------------------- #


@dataclass
class HelperAnswers:
    observations: dict[str, EndpointObservation]
    refused: dict[str, str]  # endpoint id -> why there is no control for it
    partial: dict[str, str]  # endpoint id -> steps the helper did not measure


class HelperUnreachable(RuntimeError):
    """No connection to the helper could be made: the run need not ask it again."""


async def ask(
    network: Network, url: str, items: Sequence[ControlEndpoint], timeout: float,
    connect_timeout: float | None = None,
) -> HelperAnswers:
    """Ask the helper at ``url`` about every endpoint of ``items``, a few questions at
    a time, each within ``timeout`` (connecting within ``connect_timeout``). Raises
    ``RuntimeError`` (one line) when the helper answered nothing usable at all, and
    :class:`HelperUnreachable` when no question could even connect."""
    batch = plan(items)
    refused = dict(batch.uncovered)
    questions = batch.questions
    if len(questions) > MAX_QUESTIONS:
        for question in questions[MAX_QUESTIONS:]:
            refused[question.endpoint_id] = (
                f"more than {MAX_QUESTIONS} questions for one batch of the OONI test helper")
        questions = questions[:MAX_QUESTIONS]
    gate = asyncio.Semaphore(IN_FLIGHT)
    by_id = {item.endpoint.id: item for item in items}
    unconnected: list[str] = []

    async def one(question: Question) -> Answer:
        request = ControlRequest(url, build_request(question), max_bytes=MAX_ANSWER_BYTES,
                                 connect_timeout=connect_timeout, authenticate=False)
        async with gate:
            result = await network.control_call(request, timeout)
        if not result.connected:
            unconnected.append(question.endpoint_id)
        if result.failure is not None or result.body is None:
            raise ProtocolError(result.failure or "empty answer")
        return parse_answer(question, by_id[question.endpoint_id].endpoint.host, result.body)

    results = await asyncio.gather(*(one(q) for q in questions), return_exceptions=True)
    answers: dict[str, list[Answer]] = {}
    for question, result in zip(questions, results, strict=True):
        if isinstance(result, ProtocolError):
            refused[question.endpoint_id] = f"the OONI test helper's answer: {result}"[:200]
        elif isinstance(result, BaseException):
            raise result
        else:
            answers.setdefault(question.endpoint_id, []).append(result)
    observations = {
        endpoint_id: observation(by_id[endpoint_id], found)
        for endpoint_id, found in answers.items() if endpoint_id not in refused
    }
    if not observations and questions:
        reasons = sorted(set(refused.values()))
        if len(unconnected) == len(questions):
            raise HelperUnreachable(f"{url}: {reasons[0] if reasons else 'no connection'}"[:300])
        raise RuntimeError(f"{url}: no usable answer from the OONI test helper"
                           f" ({reasons[0] if reasons else 'nothing asked'})"[:300])
    partial = {k: v for k, v in batch.partial.items() if k in observations}
    for endpoint_id, found in observations.items():
        wants_tls = {Check.TLS, Check.HTTPS} & set(by_id[endpoint_id].endpoint.checks)
        # OONI's helpers handshake on port 443 only
        ports = sorted({p.port for p in found.ports if p.tls is None and p.connect is not None
                        and p.connect.failure is None})
        if wants_tls and ports and "SNI" not in partial.get(endpoint_id, ""):
            steps = [partial[endpoint_id]] if endpoint_id in partial else []
            steps.append(f"TLS on port {', '.join(map(str, ports))}")
            partial[endpoint_id] = ", ".join(steps)
    return HelperAnswers(observations, refused, partial)
