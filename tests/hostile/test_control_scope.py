"""What a control helper agrees to measure, and how big its answers get, against
hostile requesters on loopback.

A helper measures only its own targets (``probe.control.scope``): anything else
a request names is refused on its own, with a reason, before a single connection
or DNS query; a port scan the size of the one found against the old helper is
refused at parse time; a target serving 1 MiB pages gives a small answer and
bounded memory; an address the requester supplied is measured but signed as the
requester's, never as the name's; bogon forms (IPv4-compatible, SIIT, site-local,
mapped/6to4/NAT64 of loopback) are refused even with ``--allow-network
127.0.0.0/8``; names are never resolved through the helper's /etc/hosts; a lone
surrogate is a 400 before anything is measured. Loopback stands in for public
hosts (``routable`` 127.0.0.0/8), as in test_control.py.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import ipaddress
import json
import time
import tracemalloc

import dns.message
import pytest

from probe import analysis
from probe.bogons import is_bogon
from probe.control import protocol
from probe.control.auth import Access
from probe.control.scope import Scope
from probe.control.server import ControlHelper
from probe.net.live import LiveNetwork
from probe.net.network import HttpRequest, HttpResult, Timing
from probe.observations import EndpointObservation
from probe.report.keys import generate_ephemeral
from probe.report.signing import verify_object
from probe.session import ControlConfig, ask_control
from probe.targets import Endpoint, parse_targets

from .harness import LOOPBACK_NET, MIB
from .servers import DatagramPeer, DnsPeer, HelperServer, StreamPeer, dns_answer, hold, serve
from .test_control import call, connections_seen

LOOPBACK = "127.0.0.1"


def target(host: str, port: int, checks: tuple[str, ...] = ("tcp",), *, path: str = "/",
           sni: str | None = None, id: str = "t") -> Endpoint:
    return Endpoint(id=id, service="s", host=host, ports=(port,), checks=checks, sni=sni,
                    ca_pem=None, path=path)


def request(*endpoints: dict, timeout: float = 1.0) -> dict:
    return {"version": 1, "timeout": timeout, "endpoints": list(endpoints)}


def ask(id: str, host: str, ports: list[int], checks: tuple[str, ...] = ("tcp",), **more) -> dict:
    return {"id": id, "service": "s", "host": host, "ports": ports, "checks": list(checks),
            **more}


def helper(targets: list[Endpoint], **more) -> ControlHelper:
    """A helper serving anyone (who may ask is tests/hostile/test_control_access.py's
    subject), measuring ``targets``."""
    more.setdefault("resolver", None)
    return ControlHelper(routable=LOOPBACK_NET, targets=targets, access=Access.anyone(), **more)


# --- the scope, as a pure function ------------------------------------------------ #


def query(*endpoints: dict) -> protocol.ControlQuery:
    return protocol.parse_request(request(*endpoints))


def test_scope_matches_host_ports_checks_path_and_sni_not_ids():
    scope = Scope.from_targets([
        target("Example.ORG.", 443, ("tcp", "tls", "https"), path="/a", sni="example.org"),
        target("2001:0db8::0001", 80, ("tcp",)),
    ])
    admitted, refused = scope.admit(query(
        ask("other-id", "example.org", [443], ("tls", "https"), path="/a", sni="EXAMPLE.org"),
        ask("v6", "2001:db8::1", [80]),
        ask("port", "example.org", [443, 8443], ("tls",), path="/a", sni="example.org"),
        ask("check", "example.org", [443], ("mtproto",), path="/a", sni="example.org"),
        ask("path", "example.org", [443], ("tls",), path="/b", sni="example.org"),
        ask("sni", "example.org", [443], ("tls",), path="/a", sni="evil.example"),
        ask("host", "example.net", [443], ("tls",)),
    ))
    assert [item.endpoint.id for item in admitted.items] == ["other-id"]
    assert "host not in" in refused["host"]
    assert "port 8443" in refused["port"] and "mtproto" in refused["check"]
    assert "path" in refused["path"] and "SNI" in refused["sni"]
    # 2001:db8:: is a documentation network: in the targets, but never measured
    assert "bogon" in refused["v6"]
    assert len(refused) == 6


def test_scope_keeps_two_public_requester_addresses_per_family():
    scope = Scope.from_targets([target("svc.test", 443)], routable=LOOPBACK_NET)
    admitted, refused = scope.admit(query(ask(
        "a", "svc.test", [443], addresses=["127.0.0.3", "10.0.0.1", "127.0.0.4", "127.0.0.5",
                                           "::1", "fec0::1", "::127.0.0.1"])))
    assert refused == {}
    assert admitted.items[0].addresses == ("127.0.0.3", "127.0.0.4")


# --- bogons ------------------------------------------------------------------------ #

BOGON_FORMS = {
    "ipv4-compatible": "::127.0.0.1",
    "siit": "::ffff:0:7f00:1",
    "site-local": "fec0::1",
    "mapped": "::ffff:7f00:1",
    "6to4": "2002:7f00:1::",
    "nat64": "64:ff9b::7f00:1",
    "teredo": "2001:0:4136:e378:8000:63bf:3fff:fdd2",
    "documentation-3fff": "3fff::1",
    "srv6": "5f00::1",
    "6to4-relay": "192.88.99.1",
}


@pytest.mark.parametrize("form", sorted(BOGON_FORMS))
def test_each_bogon_form_is_a_bogon_even_with_loopback_allowed(form):
    address = BOGON_FORMS[form]
    assert is_bogon(address)
    assert is_bogon(address, LOOPBACK_NET)  # --allow-network 127.0.0.0/8


def test_allow_network_is_checked_after_unwrapping():
    v6_all = (ipaddress.ip_network("::/0"),)
    for wrapped in ("::ffff:7f00:1", "2002:7f00:1::", "64:ff9b::7f00:1", "2002:a00:1::"):
        assert is_bogon(wrapped, v6_all), wrapped  # an IPv6 exemption never unwraps
    meant = (*LOOPBACK_NET, ipaddress.ip_network("::ffff:127.0.0.0/104"))
    assert not is_bogon("::ffff:7f00:1", meant)  # both forms exempted: meant
    # an IPv4 exemption alone does not exempt the mapped form of its addresses
    assert is_bogon("::ffff:198.51.100.7", (ipaddress.ip_network("198.51.100.0/24"),))
    assert not is_bogon("::ffff:8.8.8.8") and not is_bogon("2a00:1450::1")
    assert not is_bogon("127.0.0.1", LOOPBACK_NET)


@pytest.mark.parametrize("form", ["ipv4-compatible", "siit", "site-local", "mapped", "6to4",
                                  "nat64"])
def test_each_bogon_form_is_refused_by_a_helper_whose_targets_name_it(form):
    address = BOGON_FORMS[form]
    with serve(lambda: StreamPeer(hold)) as listener, serve(
        lambda: HelperServer(helper([target(address, listener.port)]))
    ) as server:
        status, _, text = call(server.port, request(ask("b", address, [listener.port])))
        connections = connections_seen(listener, settle=0.3)
    assert status == 200, text
    answer = json.loads(text)
    assert answer["endpoints"] == {} and "bogon" in answer["refused"]["b"]
    assert connections == 0


# --- what a hostile requester asks ----------------------------------------------- #


def counting_resolver(queries: list[str], answer: tuple[str, ...] = ()) -> DnsPeer:
    """A loopback resolver recording every name asked, answering ``answer`` (A)."""

    def udp(data: bytes, addr, peer: DatagramPeer) -> None:
        queries.append(str(dns.message.from_wire(data).question[0].name))
        peer.send(dns_answer(data, answer), addr)

    return DnsPeer(udp, tcp_answer=answer)


def test_out_of_scope_endpoints_make_no_connection_and_no_query():
    """In scope: one port of one address. A port next to it, a name and a path
    the targets lack are refused with a reason; the scoped endpoint is measured."""
    queries: list[str] = []
    with serve(lambda: StreamPeer(hold)) as scoped, serve(
        lambda: StreamPeer(hold)
    ) as unscoped, serve(lambda: counting_resolver(queries, ("127.0.0.1",))) as resolver:
        targets = [target(LOOPBACK, scoped.port)]
        with serve(lambda: HelperServer(
                helper(targets, resolver=(LOOPBACK, resolver.port)))) as server:
            status, _, text = call(server.port, request(
                ask("in", LOOPBACK, [scoped.port]),
                ask("port", LOOPBACK, [unscoped.port]),
                ask("name", "localhost", [unscoped.port], ("dns", "tcp"),
                    addresses=[LOOPBACK]),
                ask("path", LOOPBACK, [scoped.port], ("tcp", "http"), path="/admin"),
            ))
            scoped_connections = connections_seen(scoped)
            unscoped_connections = connections_seen(unscoped, settle=0.3)
    assert status == 200, text
    answer = json.loads(text)
    assert sorted(answer["endpoints"]) == ["in"]
    assert set(answer["refused"]) == {"port", "name", "path"}
    assert all(0 < len(reason) <= 200 for reason in answer["refused"].values())
    assert scoped_connections >= 1
    assert unscoped_connections == 0
    assert queries == []  # an out-of-scope name is never even resolved


def test_the_port_scan_of_the_finding_is_refused_cheaply():
    """2,000 endpoints x 8 ports (16,000 connections from one 243 KB request):
    refused at parse time, and so is a scan that fits the endpoint cap."""
    with serve(lambda: StreamPeer(hold)) as listener, serve(
        lambda: HelperServer(helper([target(LOOPBACK, listener.port)]))
    ) as server:
        ports = [listener.port] + list(range(20001, 20008))
        scan = request(*(ask(f"e{i}", f"h{i}.example", ports) for i in range(2000)))
        status, seconds, text = call(server.port, scan)
        assert status == 400 and "endpoints" in text and seconds < 3
        names = request(*(ask(f"e{i}", f"h{i}.example", ports) for i in range(200)))
        status, seconds, text = call(server.port, names)
        assert status == 413 and "connections" in text and seconds < 3
        connections = connections_seen(listener, settle=0.3)
    assert connections == 0


def test_a_lone_surrogate_is_400_before_anything_is_measured():
    with serve(lambda: StreamPeer(hold)) as listener, serve(
        lambda: HelperServer(helper([target(LOOPBACK, listener.port)]))
    ) as server:
        body = json.dumps(request(ask("\ud800", LOOPBACK, [listener.port]))).encode()
        assert b"\\ud800" in body
        status, seconds, text = call(server.port, body)
        connections = connections_seen(listener, settle=0.3)
    assert status == 400 and "surrogate" in text and seconds < 2
    assert connections == 0


def test_names_are_never_resolved_through_the_helpers_etc_hosts():
    """``localhost`` is in /etc/hosts; in scope, the helper asks only its DNS
    resolver (which knows nothing) and so measures nothing."""
    queries: list[str] = []
    with serve(lambda: StreamPeer(hold)) as listener, serve(
        lambda: counting_resolver(queries)
    ) as resolver, serve(lambda: HelperServer(helper(
            [target("localhost", listener.port, ("dns", "tcp"))],
            resolver=(LOOPBACK, resolver.port)))) as server:
        status, _, text = call(server.port, request(
            ask("l", "localhost", [listener.port], ("dns", "tcp"))))
        connections = connections_seen(listener, settle=0.3)
    assert status == 200, text
    observation = json.loads(text)["endpoints"]["l"]["observation"]
    assert observation["getaddrinfo"] is None and observation["addresses"] == []
    assert "localhost." in queries
    assert connections == 0


# --- what a helper signs ---------------------------------------------------------- #


def test_a_requester_supplied_address_is_signed_as_the_requesters():
    """The finding: a signed entry said the name lives at the requester's address.
    Now the entry lists it in ``requested_addresses``; the helper's own DNS
    answer (127.0.0.2) is not listed there."""
    key = generate_ephemeral()
    queries: list[str] = []
    with serve(lambda: StreamPeer(hold, host="127.0.0.2")) as own, serve(
        lambda: counting_resolver(queries, ("127.0.0.2",))
    ) as resolver:
        targets = [target("svc.test", own.port, ("dns", "tcp"))]
        with serve(lambda: HelperServer(helper(
                targets, resolver=(LOOPBACK, resolver.port), key=key))) as server:
            status, _, text = call(server.port, request(ask(
                "x", "svc.test", [own.port], ("dns", "tcp"),
                addresses=["127.0.0.3", "127.0.0.4", "127.0.0.5", "10.0.0.1"])))
    assert status == 200, text
    signed = json.loads(text)["endpoints"]["x"]
    assert verify_object(signed) == key.key_id
    entry = signed["response"]
    assert entry["requested_addresses"] == ["127.0.0.3", "127.0.0.4"]
    assert entry["observation"]["addresses"] == ["127.0.0.2", "127.0.0.3", "127.0.0.4"]


def test_the_probe_treats_a_refused_endpoint_as_no_control_for_it():
    targets = parse_targets("""\
version: 1
services:
  - id: example
    name: Example
    endpoints:
      - {id: kept, host: 127.0.0.1, port: PORT, checks: [tcp]}
      - {id: dropped, host: 127.0.0.1, port: 9, checks: [tcp]}
""".replace("PORT", "8"))
    observations = {
        e.id: EndpointObservation(e.id, e.service, e.host, None, (), (e.host,), (), ())
        for e in targets.endpoints()
    }
    with serve(lambda: HelperServer(helper([targets.endpoints()[0]]))) as server:
        config = ControlConfig(urls=(f"http://{LOOPBACK}:{server.port}",), timeout=10)
        outcome = asyncio.run(ask_control(LiveNetwork(), targets, observations, config, 0.5))
    assert outcome.available
    assert set(outcome.observations or {}) == {"kept"}
    assert any("dropped" in p and "port 9" in p for p in outcome.problems), outcome.problems


# --- how big an answer gets ------------------------------------------------------- #

PAGE = b"<html><head><title>big</title></head><body>" + b"x" * MIB + b"</body></html>"
HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nConnection: close\r\n"
        + f"Content-Length: {len(PAGE)}\r\n\r\n".encode())


async def one_mib_page(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """An HTTP server whose every page is 1 MiB, written in 64 KiB pieces."""
    try:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(HEAD)
        for start in range(0, len(PAGE), 65536):
            writer.write(PAGE[start:start + 65536])
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass  # the helper read what it keeps and hung up


def test_one_mib_pages_give_a_small_answer_and_bounded_memory():
    """The finding: a 7 KB request against 1 MiB pages gave a 427 MiB answer.
    Here 8 endpoints x 8 ports fetch 64 pages of 1 MiB: the answer keeps 8 KiB
    of each, with the length read so far and a cut mark."""
    with serve(lambda: StreamPeer(one_mib_page)) as site, serve(
        lambda: HelperServer(helper([target(LOOPBACK, site.port, ("tcp", "http"))]))
    ) as server:
        body = request(*(ask(f"p{i}", LOOPBACK, [site.port] * 8, ("tcp", "http"))
                         for i in range(8)), timeout=5.0)
        tracemalloc.start()
        try:
            start = time.monotonic()
            status, _, text = call(server.port, body, timeout=30)
            elapsed = time.monotonic() - start
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert status == 200, text[:300]
    pages = [http for entry in json.loads(text)["endpoints"].values()
             for port in entry["observation"]["ports"] for http in port["http"]]
    assert len(pages) == 64
    for page in pages:
        kept = base64.b64decode(page["body"])
        assert len(kept) == protocol.MAX_HTTP_BODY and page["body_truncated"]
        assert page["body_length"] >= protocol.MAX_HTTP_BODY
        assert kept.startswith(PAGE[:100])
    assert len(text) < 64 * 16 * 1024  # 64 pages of 1 MiB: under 1 MiB of answer
    assert peak < 48 * MIB, f"peak {peak / MIB:.1f} MiB"
    assert elapsed < 20


def test_a_cut_control_page_still_tells_a_small_blockpage():
    """The helper keeps 8 KiB of a page: a probe's complete 2 KiB page with another
    title, next to a control page cut after 100 KiB, is still under a third."""
    def page(body: bytes, length: int, cut: bool) -> HttpResult:
        return HttpResult(HttpRequest("http://x.test/", LOOPBACK), None, 200, (),
                          base64.b64encode(body).decode(), length, cut, (), None, Timing(0, 1))

    control = page(b"<title>News</title>" + b"n" * 8000, 100_000, True)
    blockpage = page(b"<title>Blocked</title>" + b"b" * 2000, 2022, False)
    same_size = page(b"<title>Blocked</title>" + b"b" * 60_000, 60_022, False)
    assert analysis.blockpage_evidence(blockpage, control) is not None
    assert analysis.blockpage_evidence(same_size, control) is None  # cannot tell: none
    # with its Content-Length the cut page's size is known: a page 3x larger tells too
    declared = dataclasses.replace(control, headers=(("Content-Length", "20000"),),
                                   body_length=12_000)
    larger = page(b"<title>Blocked</title>" + b"b" * 70_000, 70_022, False)
    assert analysis.blockpage_evidence(larger, declared) is not None
    assert analysis.blockpage_evidence(larger, control) is None
    assert analysis.blockpage_evidence(same_size, declared) is None  # 60 KB vs 20 KB: no


def test_the_helpers_own_udp_echo_is_in_its_scope_as_the_probe_names_it():
    """The probe's reference flow goes to the echo at the helper's address: measured,
    though no targets file lists it; another UDP port of that address is refused."""
    from probe.control.reference import ENDPOINT_ID, reference_endpoints
    from probe.control.server import serve as serve_helper
    from probe.net.network import ControlRequest

    async def go():
        helper = ControlHelper(None, routable=LOOPBACK_NET, udp_echo_ports=(0,), targets=(),
                               access=Access.anyone())
        stop = asyncio.Event()
        ready = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(serve_helper(helper, LOOPBACK, 0, ready=ready.set_result,
                                                stop=stop))
        url = "http://" + (await asyncio.wait_for(ready, 5)).split(",")[0].rsplit(" ", 1)[1]
        network = LiveNetwork()
        try:
            (echo,) = await reference_endpoints(network, [url], 2.0)
            echo = dataclasses.replace(echo, datagrams=3, interval=0.05)
            other = dataclasses.replace(echo, id="other", ports=(echo.ports[0] + 1,))
            body = protocol.build_request(
                [protocol.ControlEndpoint(e, ()) for e in (echo, other)], 2.0)
            result = await network.control_call(ControlRequest(url + "/measure", body), 15)
            return result.body
        finally:
            await network.aclose()
            stop.set()
            await task

    answer = asyncio.run(go())
    assert sorted(answer["endpoints"]) == [ENDPOINT_ID]
    assert set(answer["refused"]) == {"other"}


def test_a_big_run_is_cut_into_requests_the_helper_accepts():
    """500 names with TLS and HTTPS on two ports (12 HTTP requests each in the worst
    case): split_by_cost cuts them within every cap, in order, nothing lost."""
    items = [
        protocol.ControlEndpoint(
            Endpoint(id=f"n{i}", service="s", host=f"n{i}.example", ports=(443, 8443),
                     checks=("dns", "tcp", "tls", "https"), sni=f"n{i}.example", ca_pem=None),
            ())
        for i in range(500)
    ]
    requests = protocol.split_by_cost(items)
    assert len(requests) > 1
    assert [item for request in requests for item in request] == items
    for part in requests:
        parsed = protocol.parse_request(json.loads(json.dumps(protocol.build_request(part, 5))))
        assert len(parsed.items) <= protocol.MAX_ENDPOINTS
        assert sum(protocol.http_fetches(i.endpoint) for i in part) <= protocol.MAX_REQUEST_FETCHES


def test_serve_with_a_missing_targets_file_is_a_clear_error(tmp_path):
    from click.testing import CliRunner

    from probe.cli import main

    missing = tmp_path / "nowhere.yaml"
    result = CliRunner().invoke(main, ["control", "serve", "--listen", "127.0.0.1:0", "--open",
                                       "--targets", str(missing), "--duration", "1"])
    assert result.exit_code != 0
    assert "no such file" in result.output and "Traceback" not in result.output
