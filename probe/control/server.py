"""The control helper: an aiohttp server that measures endpoints from its own vantage.

NGOs deploy it on an uncensored network. It answers ``POST /measure`` (see
``probe.control.protocol``) by running the very same steps as the probe
(``probe.runner.Measurer``) over the live network, ``GET /`` with a health
line, and ``GET /info`` (or ``POST /info``, for the probe's network seam, which
only POSTs) with what it offers: the ports of its UDP echo
(``probe.control.udp_echo``), served next to it with ``--udp-echo``.

It measures only what its own targets list (``probe.control.scope``: its
``--targets``, by default the bundled targets.yaml, plus its own UDP echo):
any other endpoint of a request is refused on its own, with a reason, and a
name is resolved only through DNS (its resolver, never its /etc/hosts). It
keeps at most ``protocol.MAX_HTTP_BODY`` bytes of any HTTP body it fetches.
Its echo is in scope under the address a request reached and the name in its
Host header (the name the probe uses); a forged Host header can point an echo
flow elsewhere, which the flow caps and the UDP budget below bound.

It is built to be exposed to the Internet. It measures only for the probes it
serves (``probe.control.auth``: an enrolled key or token, or anyone with
``open``), checks the credential before reading a body, and holds each client
to its budgets (``probe.control.budgets``: one measurement in flight, and
endpoints, connections and seconds per minute; 429 with Retry-After beyond).
Request bodies are capped,
concurrent measurements are bounded (extra requests get 503 at once, never a
hang), every measurement has a deadline, and it refuses to measure bogon
addresses (it must not become a proxy into its own private network). UDP
checks send datagrams where a requester says: a request that could send too
many is refused (413), and a helper-wide budget of datagrams (429 when spent)
bounds what all requests together can make it send. The address a request
came from is echoed to the probe and never stored or logged.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from aiohttp import web

from probe import __version__
from probe.bogons import IPNetwork, is_bogon
from probe.control import auth, protocol, reference
from probe.control.budgets import ClientBudgets, ClientLimits, Cost
from probe.control.scope import Scope
from probe.control.udp_echo import DEFAULT_LIMITS, EchoLimits, UdpEcho
from probe.net.live import LiveNetwork
from probe.runner import RunOptions, run_endpoints
from probe.serving import clients
from probe.serving.buckets import TokenBucket, retry_after_seconds
from probe.serving.connections import ConnectionLimits, serving
from probe.serving.logs import install
from probe.targets import Endpoint, default_targets_path, load_targets

log = logging.getLogger("probe.control")

MAX_BODY = 2 * 1024 * 1024
DEFAULT_MAX_CONCURRENT = 4
# Longest wait for a request body: a client trickling it byte by byte (slowloris)
# gets 408 instead of holding a handler, and never holds a measurement slot.
BODY_TIMEOUT = 10.0
# Datagrams all UDP checks together may send: 100/s sustained, 20,000 at once.
# A request reserves its worst case (protocol.udp_datagrams, at most 10,000) and
# gets 429 when that is more than what is left: the helper must not be a flood
# on demand. A probe's run costs far less than its worst case (a STUN answer on
# the first try is one datagram, not seven), and is charged only what it sent.
UDP_BUDGET_PER_SECOND = 100.0
UDP_BUDGET_BURST = 20_000
# The longest step timeout a request may ask for (the probe's default is 10 s),
# and the deadline of a whole request: DNS, then up to three steps in a row per
# port (mtproto's two framings and an HTTP request), with a margin. A silent
# port holds one client's one slot for at most this long.
MAX_TIMEOUT = 10.0
MAX_DEADLINE = 45.0


def request_deadline(timeout: float) -> float:
    return min(timeout * 4 + 5, MAX_DEADLINE)


class ControlHelper:
    def __init__(
        self,
        resolver: tuple[str, int] | None,
        max_concurrent: int = DEFAULT_MAX_CONCURRENT,
        max_timeout: float = MAX_TIMEOUT,
        routable: tuple[IPNetwork, ...] = (),
        key=None,  # probe.report.keys.SigningKey: attest every answer with it
        network_factory=LiveNetwork,
        body_timeout: float = BODY_TIMEOUT,
        udp_echo_ports: tuple[int, ...] = (),
        echo_limits: EchoLimits = DEFAULT_LIMITS,
        udp_budget: TokenBucket | None = None,
        access: auth.Access | None = None,  # None: serves nobody (see auth.Access)
        budgets: ClientBudgets | None = None,  # None: the defaults of control.budgets
        trusted_proxies: tuple[IPNetwork, ...] = (),  # whose X-Forwarded-For is believed
        targets: Iterable[Endpoint] | None = None,
    ) -> None:
        """``targets``: the endpoints this helper measures for probes (None: the
        bundled targets.yaml's, as ``probe run`` measures by default)."""
        self.resolver = resolver
        self.max_concurrent = max_concurrent
        self.max_timeout = max_timeout
        self.routable = routable
        self.key = key
        self.network_factory = network_factory
        self.body_timeout = body_timeout
        self.udp_echo_ports = udp_echo_ports
        self.echo_limits = echo_limits
        self.udp_budget = udp_budget or TokenBucket(UDP_BUDGET_BURST, UDP_BUDGET_PER_SECOND)
        self.echo: UdpEcho | None = None  # running while served with udp_echo_ports
        self._busy = 0
        self.gate = auth.Gatekeeper(access or auth.Access())
        self.clients = ClientLimits(budgets or ClientBudgets())
        self.trusted_proxies = trusted_proxies
        if targets is None:
            targets = load_targets(default_targets_path()).endpoints()
        self.scope = Scope.from_targets(targets, routable=routable)

    def scope_for(self, request: web.Request) -> Scope:
        """The helper's scope and, when its UDP echo runs, the echo as the probe names
        it: at the address this request reached, or the host name it asked for."""
        if self.echo is None:
            return self.scope
        hosts = {request.url.host}
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        if sockname:
            hosts.add(str(sockname[0]))
        info = {"udp_echo": list(self.echo.ports)}
        extra = [
            endpoint for host in hosts if host
            for endpoint in reference.endpoints_from_info(
                f"http://[{host}]/" if ":" in host else f"http://{host}/", info)
        ]
        return self.scope.with_extra(extra)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_get("/", self.health)
        app.router.add_get("/info", self.info)
        app.router.add_post("/info", self.info)
        app.router.add_post("/measure", self.measure)
        return app

    async def start_udp_echo(self, host: str) -> None:
        """Serve the UDP echo on ``udp_echo_ports`` of ``host`` (OSError if a port is taken)."""
        if self.udp_echo_ports and self.echo is None:
            echo = UdpEcho(self.udp_echo_ports, host, self.echo_limits)
            await echo.start()
            self.echo = echo

    async def stop_udp_echo(self) -> None:
        if self.echo is not None:
            await self.echo.stop()
            self.echo = None

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(text=f"probe control helper {__version__}: ok\n")

    async def info(self, request: web.Request) -> web.Response:
        """What this helper offers a probe, beyond ``/measure`` (the body of a POST is ignored)."""
        body: dict[str, Any] = {
            "version": protocol.VERSION, "software_name": "probe-control",
            "software_version": __version__,
            "udp_echo": list(self.echo.ports) if self.echo is not None else [],
        }
        if self.echo is not None:
            body["udp_echo_limits"] = self.echo_limits.advertised()
        return web.json_response(body)

    def _address(self, request: web.Request) -> str | None:
        return clients.client_address(
            request.remote, request.headers.get("X-Forwarded-For"), self.trusted_proxies)

    async def measure(self, request: web.Request) -> web.Response:
        # The credential first, from the header alone: a request this helper does
        # not serve costs no body read, no parse and no slot.
        try:
            pending = self.gate.check_header(request.headers.get("Authorization"))
        except auth.Refused as exc:
            return await _refused(request, exc)
        if self._busy >= self.max_concurrent:
            return web.json_response({"error": "busy, retry later"}, status=503)
        # One body in flight per network, before any is read: a client cannot hold
        # many handlers by trickling bodies, nor stand in for a key it has not proved.
        network = clients.client_key(self._address(request))
        if not self.clients.enter(f"net {network}"):
            return _one_at_a_time()
        try:
            return await self._measure(request, pending, network)
        finally:
            self.clients.leave(f"net {network}")

    async def _measure(
        self, request: web.Request, pending: auth.Pending, network: str
    ) -> web.Response:
        try:
            async with asyncio.timeout(self.body_timeout):
                raw = await request.read()
        except TimeoutError:
            return web.json_response({"error": "request body too slow"}, status=408)
        except web.HTTPRequestEntityTooLarge:
            return web.json_response({"error": "request too large"}, status=413)
        try:
            client = auth.Client(
                self.gate.check_body(pending, request.method, request.path, raw), network)
        except auth.Refused as exc:
            return await _refused(request, exc)
        try:
            query = protocol.parse_request(json.loads(raw))
        except protocol.RequestTooCostly as exc:
            return web.json_response({"error": str(exc)[:300]}, status=413)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            # RecursionError: JSON nested deeper than the parser's stack ("[[[[...").
            return web.json_response({"error": str(exc)[:300]}, status=400)
        query, refused = self.scope_for(request).admit(query)
        if self._busy >= self.max_concurrent:  # others started while this body arrived
            return web.json_response({"error": "busy, retry later"}, status=503)
        if client.name is not None and not self.clients.enter(client.name):
            return _one_at_a_time()
        try:
            return await self._measure_within_budgets(request, query, client, refused)
        finally:
            if client.name is not None:
                self.clients.leave(client.name)

    async def _measure_within_budgets(
        self, request: web.Request, query: protocol.ControlQuery, client: auth.Client,
        refused: dict[str, str],
    ) -> web.Response:
        timeout = min(query.timeout, self.max_timeout)
        deadline = request_deadline(timeout)
        # The client's worst case is reserved before anything is measured, and
        # what the measurement did not use is given back after
        connections = sum(protocol.tcp_connections(item.endpoint) for item in query.items)
        names = client.budget_names
        wait = self.clients.take(names, Cost(len(query.items), connections, deadline))
        if wait:
            return web.json_response(
                {"error": "this client's budget is spent for now, retry later",
                 "retry_after": retry_after_seconds(wait)},
                status=429, headers={"Retry-After": str(retry_after_seconds(wait))})
        # The request's worst case is reserved while it runs; what it did not send
        # is given back after, so a probe is charged for its real datagrams
        reserved = query.udp_datagrams
        if reserved and not self.udp_budget.take(reserved):
            self.clients.give_back(names, connections, deadline)
            return web.json_response(
                {"error": "this helper's budget of UDP datagrams is spent, retry later"},
                status=429, headers={"Retry-After": "60"})
        self._busy += 1
        started = time.monotonic()
        observations: dict | None = None
        try:
            endpoints = []
            extra: dict[str, tuple[str, ...]] = {}
            for item in query.items:
                if item.endpoint.host_is_address and is_bogon(item.endpoint.host, self.routable):
                    continue  # never measure into private networks on anyone's behalf
                endpoints.append(item.endpoint)
                extra[item.endpoint.id] = tuple(
                    a for a in item.addresses if not is_bogon(a, self.routable)
                )
            options = RunOptions(
                resolver=self.resolver, timeout=timeout, routable=self.routable,
                trust_pem=query.trust_pem,
                rate=None,  # the helper sits on a well-connected network
                # DNS only: getaddrinfo would read the helper's own /etc/hosts
                use_system_resolver=False, body_bytes=protocol.MAX_HTTP_BODY,
            )
            network = self.network_factory()
            try:
                async with asyncio.timeout(deadline):
                    observations = await run_endpoints(
                        network, endpoints, options, extra_addresses=extra
                    )
            except TimeoutError:
                return web.json_response({"error": "measurement deadline exceeded"}, status=504)
            finally:
                await network.aclose()
            sign = None
            if self.key is not None:
                from probe.report.signing import attest_control_response

                def sign(entry: dict[str, Any]) -> dict[str, Any]:
                    return attest_control_response(entry, self.key)

            measured_at = datetime.datetime.now(datetime.timezone.utc).strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            )
            response = protocol.build_response(
                observations, self._address(request),
                {"software_name": "probe-control", "software_version": __version__},
                measured_at, sign, refused,
            )
            return web.json_response(response)
        finally:
            self._busy -= 1
            if reserved and observations is not None:  # (after a deadline: all may be sent)
                self.udp_budget.give_back(reserved - protocol.datagrams_sent(observations))
            # after a deadline every reserved connection may have been opened
            made = connections if observations is None else protocol.tcp_connections_made(
                observations)
            self.clients.give_back(
                names, connections - made, deadline - (time.monotonic() - started))


async def _refused(request: web.Request, exc: auth.Refused) -> web.Response:
    """401 for a request this helper does not serve, then the connection is closed:
    an unread body is never read (aiohttp would read and discard it for 10 s)."""
    response = web.json_response(
        {"error": str(exc)[:300], "reason": exc.reason}, status=401,
        headers={"WWW-Authenticate": f'{auth.SCHEME}, Bearer realm="probe-control"'})
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    request.protocol.force_close()
    return response


def _one_at_a_time() -> web.Response:
    return web.json_response(
        {"error": "one measurement at a time per client: wait for the previous answer",
         "retry_after": 1},
        status=429, headers={"Retry-After": "1"})


# Connections: a probe needs a few at once; a CGNAT address may hide many probes.
CONNECTION_LIMITS = ConnectionLimits(
    max_connections=256, max_per_client=16, client_rate=2.0, client_burst=32.0,
    header_timeout=10.0, idle_timeout=10.0,
)


async def serve(
    helper: ControlHelper, host: str, port: int, ready: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None, connections: ConnectionLimits = CONNECTION_LIMITS,
) -> None:
    """Serve until ``stop`` is set (or forever); ``ready`` gets a line saying where."""
    hygiene = install("probe.control", "probe.runner")
    try:
        async with serving(helper.app(), host, port, connections) as server:
            await helper.start_udp_echo(host)
            try:
                if ready is not None:
                    bound = server.address
                    shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
                    echo = (
                        f", UDP echo on {' '.join(map(str, helper.echo.ports))}"
                        if helper.echo else ""
                    )
                    ready(f"control helper listening on {shown}:{bound[1]}{echo}")
                await (stop.wait() if stop is not None else asyncio.Event().wait())
            finally:
                await helper.stop_udp_echo()
    finally:
        hygiene.uninstall()
