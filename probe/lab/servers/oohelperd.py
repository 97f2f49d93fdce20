"""A web_connectivity test helper speaking OONI's ``oohelperd`` protocol.

Built from OONI's published description of the protocol (ooni/spec's
web_connectivity test helper, and the request and response shapes of
ooni/probe-cli's ``model.THRequest``/``THResponse``), not from its code: the
probe POSTs ``{"http_request": URL, "http_request_headers": {...},
"tcp_connect": ["ip:port", ...]}``; the helper resolves the URL's host with its
own resolver, connects to every non-bogon address (the probe's and its own) on
the URL's port (or 443 for https and 80 and 443 for http when the URL has none),
handshakes TLS with the URL's host as SNI where the port is 443 (its trust
store decides the certificate), fetches the URL, and answers ``dns``,
``tcp_connect``, ``tls_handshake``, ``http_request`` and ``ip_info``, with the
legacy helper's failure strings (``dns_name_error``, ``connection_refused_error``,
``connect_error``).

It lets the tests and the lab check ``probe run --control-protocol oohelperd``
against a real server on a real network; every measurement goes through probe's
own network seam (``LiveNetwork``). ``tls_ports`` widens "TLS on 443" for
loopback tests, whose servers cannot bind 443.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import json
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from probe.analysis import page_title
from probe.bogons import IPNetwork, is_bogon
from probe.certificates import verify_chain
from probe.lab.servers.stream import Endpoint
from probe.net import failures
from probe.net.live import LiveNetwork
from probe.net.network import DnsQuery, HttpRequest, TlsRequest

MAX_REQUEST = 64 * 1024
MAX_ENDPOINTS = 64
DNS_TIMEOUT = 4.0  # as OONI's helper bounds its lookup
STEP_TIMEOUT = 10.0
HTTP_TIMEOUT = 15.0


def _dns_failure(failure: str | None) -> str | None:
    """The legacy helper's DNS failure strings."""
    if failure is None or failure == failures.DNS_NO_ANSWER:
        return None  # the legacy helper answered an empty list, without a failure
    if failure == failures.DNS_NXDOMAIN:
        return "dns_name_error"
    if failure in (failures.DNS_SERVFAIL, failures.DNS_REFUSED, failures.DNS_TEMPORARY,
                   failures.DNS_NON_RECOVERABLE):
        return "dns_server_failure"
    return "unknown_error"


def _connect_failure(failure: str | None) -> str | None:
    if failure is None or failure == failures.GENERIC_TIMEOUT:
        return failure
    if failure == failures.CONNECTION_REFUSED:
        return "connection_refused_error"
    return "connect_error"


def _join(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


class OohelperdServer:
    """``POST /`` as OONI's helpers answer it, on ``endpoints``."""

    kind = "oohelperd"

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        resolver: tuple[str, int],
        trust_pem: str | None = None,
        routable: Iterable[IPNetwork] = (),
        tls_ports: Iterable[int] = (443,),
    ) -> None:
        self.endpoints = list(endpoints)
        self.resolver = resolver
        self.trust_pem = trust_pem
        self.routable = tuple(routable)
        self.tls_ports = frozenset(tls_ports)
        self.requests = 0  # answered, for tests
        self._runner: web.AppRunner | None = None

    @property
    def port(self) -> int:
        return self.endpoints[0][1]

    async def start(self) -> None:
        app = web.Application(client_max_size=MAX_REQUEST)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        bound = []
        for host, port in self.endpoints:
            site = web.TCPSite(self._runner, host, port)
            await site.start()
            server = site._server
            sockets = getattr(server, "sockets", None) or []
            bound.append((host, sockets[0].getsockname()[1] if sockets else port))
        self.endpoints = bound

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        if request.method != "POST":
            return web.Response(status=400)
        try:
            body = json.loads(await request.read())
            url, addresses = _parse(body)
        except (ValueError, web.HTTPException):
            return web.Response(status=400)
        answer = await measure(url, addresses, self.resolver, self.trust_pem, self.routable,
                               self.tls_ports)
        self.requests += 1
        return web.json_response(answer)


def _parse(body: Any) -> tuple[str, list[str]]:
    if not isinstance(body, dict) or not isinstance(body.get("http_request"), str):
        raise ValueError("no http_request")
    url = body["http_request"]
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("not an http(s) URL")
    endpoints = body.get("tcp_connect") or []
    if not isinstance(endpoints, list) or len(endpoints) > MAX_ENDPOINTS:
        raise ValueError("tcp_connect")
    addresses = []
    for text in endpoints:
        if not isinstance(text, str):
            raise ValueError("tcp_connect")
        host = text.rpartition(":")[0].strip("[]")
        try:
            addresses.append(str(ipaddress.ip_address(host)))
        except ValueError:
            continue  # as OONI's helper: an endpoint that is not ip:port is skipped
    return url, addresses


async def measure(
    url: str,
    probe_addresses: list[str],
    resolver: tuple[str, int],
    trust_pem: str | None,
    routable: tuple[IPNetwork, ...],
    tls_ports: frozenset[int],
) -> dict[str, Any]:
    network = LiveNetwork()
    parts = urlsplit(url)
    host = parts.hostname or ""
    is_address = True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        is_address = False
    dns: dict[str, Any] = {"failure": None, "addrs": []}
    own: list[str] = []
    if not is_address:
        exchanges = await asyncio.gather(*(
            network.dns_exchange(DnsQuery(resolver[0], resolver[1], host, qtype), DNS_TIMEOUT, 0.0)
            for qtype in ("A", "AAAA")
        ))
        for exchange in exchanges:
            for reply in exchange.replies[:1]:
                own += [a.value for a in reply.answers if a.rrtype in ("A", "AAAA")]
        failure = None if own else next((e.failure for e in exchanges if e.failure), None)
        dns = {"failure": _dns_failure(failure), "addrs": own}
    flags: dict[str, int] = {}
    for address in probe_addresses:
        flags[address] = flags.get(address, 0) | 1
    for address in own:
        flags[address] = flags.get(address, 0) | 2
    if is_address:
        flags[host] = flags.get(host, 0) | 1
    ip_info = {}
    for address, flag in flags.items():
        if is_bogon(address, routable):
            flag |= 4
        ip_info[address] = {"asn": 0, "flags": flag}
    if parts.port:
        ports = [parts.port]
    else:
        ports = [443] if parts.scheme == "https" else [80, 443]
    measured = [(a, p) for a, info in ip_info.items() if not info["flags"] & 4 for p in ports]

    async def connect(address: str, port: int) -> tuple[str, dict, dict | None]:
        key = _join(address, port)
        tls_port = port in tls_ports
        if not tls_port:
            result = await network.tcp_connect(address, port, STEP_TIMEOUT)
            tcp = {"status": result.failure is None, "failure": _connect_failure(result.failure)}
            return key, tcp, None
        handshake = await network.tls_handshake(TlsRequest(address, port, host), STEP_TIMEOUT)
        failure = handshake.connect.failure
        tcp = {"status": failure is None, "failure": _connect_failure(failure)}
        if failure is not None:
            return key, tcp, None
        tls_failure = handshake.failure or verify_chain(
            handshake.peer_certificates, host, trust_pem,
            datetime.datetime.now(datetime.timezone.utc))
        return key, tcp, {"server_name": host, "status": tls_failure is None,
                          "failure": tls_failure}

    # the fetch runs next to the connects, as OONI's helper does: an answer takes
    # the longest of them, not their sum
    fetch = asyncio.ensure_future(_fetch(network, url, host if is_address else next(
        (a for a in own if not is_bogon(a, routable)), None)))
    results = await asyncio.gather(*(connect(a, p) for a, p in measured))
    tcp_connect = {key: tcp for key, tcp, _ in results}
    tls_handshake = {key: tls for key, _, tls in results if tls is not None}
    http = await fetch
    return {
        "tcp_connect": tcp_connect, "tls_handshake": tls_handshake, "quic_handshake": {},
        "http_request": http, "http3_request": None, "dns": dns, "ip_info": ip_info,
    }


async def _fetch(network: LiveNetwork, url: str, address: str | None) -> dict[str, Any]:
    if address is None:
        return {"body_length": -1, "failure": "dns_lookup_error", "title": "", "headers": {},
                "status_code": -1}
    result = await network.http_request(
        HttpRequest(url, address, max_body=1 << 20, max_redirects=10), HTTP_TIMEOUT)
    if result.failure is not None or result.status is None:
        return {"body_length": -1, "failure": result.failure or "unknown_error", "title": "",
                "headers": {}, "status_code": -1}
    body = base64.b64decode(result.body)
    headers: dict[str, str] = {}
    for name, value in result.headers:
        headers.setdefault(name, value)
    return {"body_length": result.body_length, "failure": None, "title": page_title(body),
            "headers": headers, "status_code": result.status}
