"""The control protocol's messages: what the probe asks, what the helper answers.

Version 1, JSON over HTTP POST to ``<helper>/measure``. The request lists the
endpoints the probe measured, with the addresses the probe resolved, so the
helper measures those very addresses (a stale or forged address is then told
apart from a blocked one). The answer carries the helper's own observations in
the same shapes the probe records, and the address the request came from.
Parsing never trusts the peer: sizes and counts are capped and every field is
type-checked; a bad message is a ``ProtocolError`` with a reason.

UDP checks (stun, turn, udp, quic) make the helper send datagrams to a
destination the requester chose, so a request's UDP cost is bounded before
anything is measured: at most ``MAX_FLOW_DATAGRAMS`` per flow, no faster than
one datagram per ``MIN_INTERVAL`` (a call's pace, not a flood's), and at most
``MAX_REQUEST_DATAGRAMS`` over the whole request (``udp_datagrams``), counted
for the worst case. Beyond that the request is refused (``RequestTooCostly``,
HTTP 413), never silently cut: a cut flow would read as a censor's cutoff.

TCP checks are bounded the same way: at most ``MAX_REQUEST_CONNECTIONS``
connections (``tcp_connections``) and ``MAX_REQUEST_FETCHES`` HTTP requests
(``http_fetches``) per request, counted for the worst case, or 413. What a
helper keeps and answers of an HTTP response is at most ``MAX_HTTP_BODY``
(8 KiB) of body plus ``MAX_HTTP_HEAD`` (8 KiB) of headers and redirects, with
the body's real length read so far and whether it was cut: at most
400 x 16 KiB = 6.25 MiB of HTTP content per answer (8.4 MiB in base64),
whatever the targets serve. Which endpoints a helper measures at all is
``probe.control.scope``'s decision.
"""

from __future__ import annotations

import base64
import dataclasses
import ipaddress
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from probe.net.network import HttpResult, QuicResult, from_json, to_json
from probe.observations import EndpointObservation
from probe.targets import Endpoint
from probe.vocabulary import TCP_CHECKS, UDP_CHECKS, Check, Function, UdpPayload

VERSION = 1
# The bundled targets have 100 endpoints; the probe cuts a bigger run into
# several requests (split_by_cost), so a request never needs more than this.
MAX_ENDPOINTS = 200
MAX_ADDRESSES = 16
MAX_PORTS = 8
MAX_TEXT = 4096
MAX_PEM = 64 * 1024

# --- the cost of UDP checks ---------------------------------------------------- #
MAX_FLOW_DATAGRAMS = 100  # one `udp` flow; the probe's default is 50
MIN_INTERVAL = 0.02  # 50 datagrams/s per flow: a voice call's 20 ms packetisation
MAX_INTERVAL = 5.0
MAX_REQUEST_DATAGRAMS = 10_000  # worst case over one request (see udp_datagrams)
# A Binding Request (or an Allocate) is sent at most 7 times (RFC 5389 7.2.1, Rc = 7).
STUN_TRANSMISSIONS = 7
# A QUIC handshake and one HTTP/3 GET: Initials (padded to 1200 bytes, RFC 9000
# 14.1), their retransmissions and the client's acknowledgements, bounded generously.
QUIC_DATAGRAMS = 24
# Addresses the helper may measure per endpoint named by a host name: its own
# answers plus the probe's, at most 3 per family (probe.runner.RunOptions).
ADDRESSES_PER_NAME = 6

# --- the cost of TCP checks ------------------------------------------------------ #
# Connections one request may make the helper open, counted for the worst case
# (``tcp_connections``: every port of every address a name may resolve to, each
# check that connects). The bundled targets cost 762; a request costing more is
# refused (413) before anything is measured. Queries to the helper's own
# resolver are not counted: they go where the helper, not the requester, chose.
MAX_REQUEST_CONNECTIONS = 2000
# HTTP requests (http, https, download) one request may make the helper send,
# counted the same way; the bundled targets cost 162.
MAX_REQUEST_FETCHES = 400

# --- the size of what a helper answers ------------------------------------------- #
MAX_QUIC_BODY = 16 * 1024  # the helper keeps this much of an HTTP/3 body
# The helper reads and keeps this much of an HTTP body (its length and whether it
# was cut are kept too): a requester cannot make it hold or send a target's pages.
MAX_HTTP_BODY = 8 * 1024
MAX_HTTP_HEAD = 8 * 1024  # response headers and redirect URLs kept, per HTTP request
# So the HTTP part of one answer is at most MAX_REQUEST_FETCHES x (MAX_HTTP_BODY +
# MAX_HTTP_HEAD) = 6.25 MiB before base64, whatever the targets serve; the helper
# reads at most MAX_HTTP_BODY plus one 16 KiB chunk of each body (probe.net.http).
MAX_UDP_CHECKS_PER_PORT = 4
MAX_UDP_EVENTS = 4 * MAX_FLOW_DATAGRAMS  # sent, received or ICMP records of one flow
MAX_DATAGRAM_BYTES = 2048  # probe.net.network.UdpRequest.max_bytes
MAX_CERTIFICATES = 16
MAX_PORTS_ANSWERED = MAX_ADDRESSES * MAX_PORTS


class ProtocolError(ValueError):
    """A control message that does not follow the protocol."""


class RequestTooCostly(ProtocolError):
    """A well-formed request that would make the helper send too many datagrams
    or open too many connections."""


# The targets file's rule for names (probe.targets): LDH labels of 1 to 63 chars.
_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)\Z")


def _host(data: dict, key: str, required: bool = True) -> str | None:
    """An IP address or a host name: anything else would only reach the resolver
    (or the TLS library) as garbage a hostile requester chose."""
    value = _text(data, key, required=required, limit=255)
    if value is None:
        return None
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    labels = value.removesuffix(".").split(".")
    if len(value) > 253 or labels[-1].isdigit() or not all(_LABEL.match(x) for x in labels):
        raise ProtocolError(f"field {key!r} is neither an IP address nor a host name")
    return value


@dataclass(frozen=True)
class ControlEndpoint:
    endpoint: Endpoint
    addresses: tuple[str, ...]  # the probe's resolved addresses, to measure too


def _text(data: dict, key: str, required: bool = True, limit: int = MAX_TEXT) -> str | None:
    value = data.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value or len(value) > limit:
        raise ProtocolError(f"field {key!r} must be a non-empty string of at most {limit} chars")
    _utf8(value, key)
    return value


def _utf8(value: str, key: str) -> None:
    """JSON lets ``"\\ud800"`` through as a lone surrogate, which no answer can
    encode: refused here, before anything is measured."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ProtocolError(f"field {key!r} is not valid Unicode (a lone surrogate)") from None


def _required(data: dict, key: str, limit: int = MAX_TEXT) -> str:
    value = _text(data, key, limit=limit)
    assert value is not None  # _text raises for a missing required field
    return value


def endpoint_to_request(endpoint: Endpoint, addresses: tuple[str, ...]) -> dict[str, Any]:
    return {
        "id": endpoint.id, "service": endpoint.service, "host": endpoint.host,
        "ports": list(endpoint.ports), "checks": list(endpoint.checks), "sni": endpoint.sni,
        "ca_pem": endpoint.ca_pem, "path": endpoint.path, "addresses": list(addresses),
        "function": endpoint.function, "payload": endpoint.payload,
        "datagrams": endpoint.datagrams, "interval": endpoint.interval,
    }


def udp_datagrams(endpoint: Endpoint) -> int:
    """The most datagrams measuring ``endpoint`` can send, over every address and port.

    Counted for the worst case (every STUN request retransmitted, every address a
    name may resolve to), so that the bound holds whatever the network answers."""
    per_port = 0
    for check in endpoint.checks:
        if check in (Check.STUN, Check.TURN):
            per_port += STUN_TRANSMISSIONS
        elif check == Check.UDP:
            per_port += endpoint.datagrams
        elif check == Check.QUIC:
            per_port += QUIC_DATAGRAMS
    addresses = 1 if endpoint.host_is_address else ADDRESSES_PER_NAME
    return per_port * len(endpoint.ports) * addresses


def tcp_connections(endpoint: Endpoint) -> int:
    """The most TCP connections measuring ``endpoint`` can open, over every address
    and port: ``mtproto`` tries two framings, a TLS or TCP step opens one, and an
    HTTP(S) request or a transfer one more (the helper's per-client budget is
    charged this, and a request costing more than ``MAX_REQUEST_CONNECTIONS`` is
    refused). Same-host redirects, each a connection more, are not counted."""
    checks = set(endpoint.checks)
    if not checks & TCP_CHECKS:
        return 0
    per_port = 2 if Check.MTPROTO in checks else 1
    per_port += len(checks & {Check.HTTP, Check.HTTPS, Check.DOWNLOAD})
    addresses = 1 if endpoint.host_is_address else ADDRESSES_PER_NAME
    return per_port * len(endpoint.ports) * addresses


def http_fetches(endpoint: Endpoint) -> int:
    """The most HTTP requests measuring ``endpoint`` can send, over every address and port."""
    per_port = len(set(endpoint.checks) & {Check.HTTP, Check.HTTPS, Check.DOWNLOAD})
    addresses = 1 if endpoint.host_is_address else ADDRESSES_PER_NAME
    return per_port * len(endpoint.ports) * addresses


def tcp_connections_made(observations: dict[str, EndpointObservation]) -> int:
    """The TCP connections a measurement opened (each redirect counted as one more)."""
    made = 0
    for observation in observations.values():
        for port in observation.ports:
            made += len(port.mtproto) or (port.connect is not None)
            made += sum(1 + len(h.redirects) for h in port.http)
    return made


def _number(data: dict, key: str, kind: type | tuple[type, ...]) -> Any:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, kind) or (
            isinstance(value, float) and not math.isfinite(value)):
        raise ProtocolError(f"field {key!r} must be a {'whole ' if kind is int else ''}number")
    return value


def datagrams_sent(observations: dict[str, EndpointObservation]) -> int:
    """The datagrams a measurement sent (a QUIC handshake counted as ``QUIC_DATAGRAMS``)."""
    sent = 0
    for observation in observations.values():
        for port in observation.ports:
            sent += sum(len(check.result.sent) for check in port.udp)
            sent += QUIC_DATAGRAMS if port.quic is not None else 0
    return sent


def split_by_cost(
    items: list[ControlEndpoint], limit: int = MAX_REQUEST_DATAGRAMS,
    connection_limit: int = MAX_REQUEST_CONNECTIONS,
) -> list[list[ControlEndpoint]]:
    """``items`` in order, cut into requests whose UDP cost is at most ``limit`` each,
    whose connections are at most ``connection_limit`` (and at most ``MAX_ENDPOINTS``
    endpoints and ``MAX_REQUEST_FETCHES`` HTTP requests); an endpoint costing more
    alone is a request of its own, which the helper refuses (413) without failing
    the others."""
    requests: list[list[ControlEndpoint]] = []
    current: list[ControlEndpoint] = []
    cost = opened = fetched = 0
    for item in items:
        one, more = udp_datagrams(item.endpoint), tcp_connections(item.endpoint)
        fetches = http_fetches(item.endpoint)
        if current and (cost + one > limit or opened + more > connection_limit
                        or fetched + fetches > MAX_REQUEST_FETCHES
                        or len(current) >= MAX_ENDPOINTS):
            requests.append(current)
            current, cost, opened, fetched = [], 0, 0, 0
        current.append(item)
        cost += one
        opened += more
        fetched += fetches
    if current:
        requests.append(current)
    return requests


def _udp_fields(data: dict) -> dict[str, Any]:
    """The optional function and the `udp` flow's shape, checked; absent means default.

    A value of the wrong type is a ``ProtocolError``; a flow denser or longer than
    the helper sends for anyone is ``RequestTooCostly``."""
    fields: dict[str, Any] = {}
    function = data.get("function")
    if function is not None:
        if not isinstance(function, str) or function not in set(Function):
            raise ProtocolError(f"function must be one of {', '.join(Function)}")
        fields["function"] = function
    payload = data.get("payload")
    if payload is not None:
        if not isinstance(payload, str) or payload not in set(UdpPayload):
            raise ProtocolError(f"payload must be one of {', '.join(UdpPayload)}")
        fields["payload"] = payload
    datagrams = _number(data, "datagrams", int)
    if datagrams is not None:
        if datagrams < 1:
            raise ProtocolError("datagrams must be at least 1")
        if datagrams > MAX_FLOW_DATAGRAMS:
            raise RequestTooCostly(f"datagrams: at most {MAX_FLOW_DATAGRAMS} per flow")
        fields["datagrams"] = datagrams
    interval = _number(data, "interval", (int, float))
    if interval is not None:
        if not 0 < interval <= MAX_INTERVAL:
            raise ProtocolError(f"interval must be more than 0 and at most {MAX_INTERVAL} s")
        if interval < MIN_INTERVAL:
            raise RequestTooCostly(
                f"interval: at least {MIN_INTERVAL} s between two datagrams of a flow")
        fields["interval"] = float(interval)
    return fields


def build_request(
    items: list[ControlEndpoint], timeout: float, trust_pem: str | None = None
) -> dict[str, Any]:
    """``trust_pem``: the probe's run-wide trust store (--ca-bundle), so the helper
    judges certificates against the same roots as the probe (None: its system's)."""
    return {
        "version": VERSION,
        "timeout": timeout,
        "trust_pem": trust_pem,
        "endpoints": [endpoint_to_request(i.endpoint, i.addresses) for i in items],
    }


@dataclass(frozen=True)
class ControlQuery:
    items: list[ControlEndpoint]
    timeout: float
    trust_pem: str | None
    udp_datagrams: int = 0  # the most datagrams its UDP checks can send (udp_datagrams)


def parse_request(body: Any) -> ControlQuery:
    if not isinstance(body, dict) or body.get("version") != VERSION:
        raise ProtocolError("expected a JSON object with version 1")
    timeout = body.get("timeout", 10)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 60:
        raise ProtocolError("timeout must be a number in (0, 60]")
    raw = body.get("endpoints")
    if not isinstance(raw, list) or not 0 < len(raw) <= MAX_ENDPOINTS:
        raise ProtocolError(f"endpoints must be a list of 1 to {MAX_ENDPOINTS} items")
    items = []
    for data in raw:
        if not isinstance(data, dict):
            raise ProtocolError("every endpoint must be an object")
        ports = data.get("ports")
        if (
            not isinstance(ports, list) or not 0 < len(ports) <= MAX_PORTS
            or not all(isinstance(p, int) and not isinstance(p, bool) and 0 < p < 65536
                       for p in ports)
        ):
            raise ProtocolError("ports must be a list of 1 to 8 port numbers")
        checks = data.get("checks")
        if (
            not isinstance(checks, list) or not checks
            or not all(isinstance(c, str) and c in set(Check) for c in checks)
        ):
            raise ProtocolError(f"checks must be a non-empty list drawn from {', '.join(Check)}")
        if set(checks) & TCP_CHECKS and set(checks) & UDP_CHECKS:
            # an endpoint's ports are UDP ports when its checks are UDP checks
            raise ProtocolError("an endpoint mixes TCP checks and UDP checks; split it in two")
        addresses = data.get("addresses", [])
        if not isinstance(addresses, list) or len(addresses) > MAX_ADDRESSES:
            raise ProtocolError(f"addresses must be a list of at most {MAX_ADDRESSES}")
        for address in addresses:
            try:
                if not isinstance(address, str):  # ip_address(3232235777) is 192.168.1.1
                    raise TypeError
                ipaddress.ip_address(address)
            except (ValueError, TypeError):
                raise ProtocolError(f"not an IP address: {str(address)[:60]!r}") from None
        path = _text(data, "path", required=False) or "/"
        if not path.startswith("/"):
            raise ProtocolError("path must start with /")
        endpoint = Endpoint(
            id=_required(data, "id"), service=_required(data, "service"),
            host=_host(data, "host") or "",
            ports=tuple(ports), checks=tuple(checks), sni=_host(data, "sni", required=False),
            ca_pem=_text(data, "ca_pem", required=False, limit=MAX_PEM), path=path,
            **_udp_fields(data),
        )
        items.append(ControlEndpoint(endpoint, tuple(addresses)))
    cost = sum(udp_datagrams(item.endpoint) for item in items)
    if cost > MAX_REQUEST_DATAGRAMS:
        raise RequestTooCostly(
            f"the UDP checks of this request could send {cost} datagrams, more than "
            f"{MAX_REQUEST_DATAGRAMS}: send fewer endpoints, ports or datagrams per request")
    opened = sum(tcp_connections(item.endpoint) for item in items)
    if opened > MAX_REQUEST_CONNECTIONS:
        raise RequestTooCostly(
            f"the checks of this request could open {opened} connections, more than "
            f"{MAX_REQUEST_CONNECTIONS}: send fewer endpoints or ports per request")
    fetches = sum(http_fetches(item.endpoint) for item in items)
    if fetches > MAX_REQUEST_FETCHES:
        raise RequestTooCostly(
            f"the checks of this request could send {fetches} HTTP requests, more than "
            f"{MAX_REQUEST_FETCHES}: send fewer endpoints or ports per request")
    trust = body.get("trust_pem")
    if trust is not None and (not isinstance(trust, str) or len(trust) > MAX_PEM * 4):
        raise ProtocolError("trust_pem must be PEM text of at most 256 KiB")
    if trust is not None:
        _utf8(trust, "trust_pem")
    return ControlQuery(items, float(timeout), trust, cost)


def _decoded_length(text: str) -> int:
    """The bytes a base64 text stands for, without decoding it."""
    return len(text) * 3 // 4 - text[-2:].count("=")


def _capped_quic(result: QuicResult | None) -> QuicResult | None:
    if result is None or _decoded_length(result.body) <= MAX_QUIC_BODY:
        return result
    body = base64.b64encode(base64.b64decode(result.body)[:MAX_QUIC_BODY]).decode()
    return dataclasses.replace(result, body=body)  # body_length keeps the real size


def _capped_http(result: HttpResult) -> HttpResult:
    """At most ``MAX_HTTP_BODY`` bytes of body, and ``MAX_HTTP_HEAD`` of headers and
    redirect URLs (in order, the first ones: a Location comes early)."""
    headers, redirects, room = [], [], MAX_HTTP_HEAD
    for name, value in result.headers:
        room -= len(name) + len(value)
        if room < 0:
            break
        headers.append((name, value))
    for url in result.redirects:
        room -= len(url)
        if room < 0:
            break
        redirects.append(url)
    result = dataclasses.replace(result, headers=tuple(headers), redirects=tuple(redirects))
    if _decoded_length(result.body) <= MAX_HTTP_BODY:
        return result
    body = base64.b64encode(base64.b64decode(result.body)[:MAX_HTTP_BODY]).decode()
    return dataclasses.replace(result, body=body, body_truncated=True)


def cap_observation(observation: EndpointObservation) -> EndpointObservation:
    """What the helper answers of an observation: HTTP/3 bodies cut to
    ``MAX_QUIC_BODY`` and HTTP bodies to ``MAX_HTTP_BODY`` (their length is kept),
    so that an answer stays small whatever the page a requester pointed it at."""
    ports = tuple(
        dataclasses.replace(
            port, quic=_capped_quic(port.quic) if port.quic else None,
            http=tuple(_capped_http(h) for h in port.http),
        )
        for port in observation.ports
    )
    return dataclasses.replace(observation, ports=ports)


def requested_addresses(observation: EndpointObservation) -> list[str]:
    """The measured addresses that came from the requester only: neither the host
    itself nor an answer of the helper's own resolution (its DNS exchanges)."""
    own = {observation.host}
    for exchange in observation.dns:
        for reply in exchange.replies:
            own.update(a.value for a in reply.answers if a.rrtype in ("A", "AAAA"))
    if observation.getaddrinfo is not None:
        own.update(observation.getaddrinfo.addresses)
    return [a for a in observation.addresses if a not in own]


def _check_sizes(observation: EndpointObservation) -> None:
    """Refuse an answer whose UDP and QUIC parts are larger than any request can
    produce: the probe keeps control observations for the whole run."""
    if len(observation.ports) > MAX_PORTS_ANSWERED:
        raise ValueError(f"more than {MAX_PORTS_ANSWERED} ports")
    for port in observation.ports:
        if len(port.udp) > MAX_UDP_CHECKS_PER_PORT:
            raise ValueError(f"more than {MAX_UDP_CHECKS_PER_PORT} UDP checks on one port")
        for check in port.udp:
            if check.check not in (Check.STUN, Check.TURN, Check.UDP):
                raise ValueError(f"unknown UDP check {check.check[:20]!r}")
            flow = check.result
            events = (len(flow.sent), len(flow.received), len(flow.icmp), len(check.answered),
                      len(flow.request.datagrams))
            if max(events) > MAX_UDP_EVENTS:
                raise ValueError(f"a UDP flow with more than {MAX_UDP_EVENTS} events")
            if any(_decoded_length(d.data) > MAX_DATAGRAM_BYTES for d in flow.received) or any(
                    _decoded_length(d) > MAX_DATAGRAM_BYTES for d in flow.request.datagrams):
                raise ValueError(f"a UDP datagram larger than {MAX_DATAGRAM_BYTES} bytes")
        quic = port.quic
        if quic is not None:
            if _decoded_length(quic.body) > MAX_QUIC_BODY:
                raise ValueError(f"an HTTP/3 body larger than {MAX_QUIC_BODY} bytes")
            if len(quic.peer_certificates) > MAX_CERTIFICATES or len(quic.headers) > 256:
                raise ValueError("a QUIC handshake with too many certificates or headers")


def build_response(
    observations: dict[str, EndpointObservation],
    probe_address: str | None,
    helper: dict,
    measured_at: str,
    sign: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    refused: dict[str, str] | None = None,
) -> dict[str, Any]:
    """One entry per endpoint, each signed on its own when the helper has a key,
    so a report line can embed (and a verifier check) just its service's entries.
    The probe's address travels outside every signed entry: the probe must be
    able to drop it without breaking a signature. So do the endpoints the helper
    refused (``refused``: endpoint id -> reason): nothing was measured for them.

    Each entry names, in ``requested_addresses``, the measured addresses that came
    from the requester and not from the helper's own resolution: the helper's
    signature says what it saw there, never that the name has that address."""
    entries = {}
    for endpoint_id, observation in observations.items():
        entry = {
            "endpoint_id": endpoint_id, "measured_at": measured_at, "helper": helper,
            "requested_addresses": requested_addresses(observation),
            "observation": to_json(cap_observation(observation)),
        }
        entries[endpoint_id] = sign(entry) if sign is not None else entry
    response = {"version": VERSION, "helper": helper, "probe_address": probe_address,
                "endpoints": entries}
    if refused:
        response["refused"] = dict(refused)
    return response


@dataclass(frozen=True)
class ParsedResponse:
    observations: dict[str, EndpointObservation]
    entries: dict[str, dict[str, Any]]  # as received (signed entries keep their signature)
    probe_address: str | None
    refused: dict[str, str] = dataclasses.field(default_factory=dict)  # id -> the helper's reason


def parse_response(body: Any) -> ParsedResponse:
    """The helper's observations by endpoint id, the raw entries, the address it saw.

    Signed entries are checked for integrity (the signature matches the entry's
    own key); whether that key is trusted is for ``probe verify`` to say."""
    from probe.report.signing import SignatureError, verify_object

    if not isinstance(body, dict) or body.get("version") != VERSION:
        raise ProtocolError("control response is not a version 1 object")
    endpoints = body.get("endpoints")
    if not isinstance(endpoints, dict):
        raise ProtocolError("control response has no endpoints object")
    if len(endpoints) > MAX_ENDPOINTS:
        # No request asks for more, and checking each signed entry costs ~0.5 ms:
        # a hostile helper's 32 MiB of entries would hold the probe for seconds.
        raise ProtocolError(f"control response has more than {MAX_ENDPOINTS} endpoints")
    observations = {}
    entries = {}
    for key, value in endpoints.items():
        entry = value
        if isinstance(value, dict) and "signature" in value:
            try:
                verify_object(value)
            except (SignatureError, ValueError) as exc:
                raise ProtocolError(f"endpoint {key[:60]!r}: bad signature: {exc}"[:300]) from None
            entry = value.get("response")
        if not isinstance(entry, dict) or entry.get("endpoint_id") != key:
            raise ProtocolError(f"endpoint {key[:60]!r}: malformed entry")
        try:
            observations[key] = from_json(EndpointObservation, entry.get("observation"))
            _check_sizes(observations[key])
        except (ValueError, TypeError) as exc:
            raise ProtocolError(f"endpoint {key[:60]!r}: {exc}"[:300]) from None
        entries[key] = value
    address = body.get("probe_address")
    return ParsedResponse(observations, entries, address if isinstance(address, str) else None,
                          _refused(body.get("refused")))


def _refused(value: Any) -> dict[str, str]:
    """The endpoints a helper refused, with its reasons (unsigned: used only to say
    why there is no control for them); anything malformed reads as none."""
    if not isinstance(value, dict) or len(value) > MAX_ENDPOINTS:
        return {}
    return {
        str(key)[:MAX_TEXT]: reason[:200] for key, reason in value.items()
        if isinstance(reason, str)
    }
