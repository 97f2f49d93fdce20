"""The control helper against hostile requesters, and the probe against a hostile helper.

The helper is built to face the Internet: oversized bodies get 413, malformed
or ill-typed requests 400, a client trickling its body 408 (while everyone else
is served), a flood of measurements 503 at once (``GET /`` still answers), and
it never measures loopback, private or link-local addresses for anyone unless
started with --allow-network. UDP checks that could send more datagrams than a
request may (a flood on demand) get 413 before a datagram leaves, and once the
helper's budget of datagrams is spent, 429. On the probe side, a helper that
answers garbage, too much (UDP flows or HTTP/3 bodies larger than any request
produces), or entries whose signature does not match is simply an unavailable
control: the run goes on without it.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import time
import tracemalloc

import aiohttp
import pytest

from probe.control import protocol
from probe.control.auth import Access
from probe.control.budgets import ClientBudgets
from probe.control.server import ControlHelper
from probe.net import failures as F
from probe.net.live import LiveNetwork
from probe.net.network import (
    QuicRequest,
    QuicResult,
    Timing,
    UdpReceived,
    UdpRequest,
    UdpResult,
    UdpSent,
    to_json,
)
from probe.observations import EndpointObservation, PortObservation, UdpCheck
from probe.report.keys import generate_ephemeral
from probe.report.signing import attest_control_response
from probe.serving.buckets import TokenBucket
from probe.session import ControlConfig, ask_control
from probe.targets import Endpoint, parse_targets

from .harness import LOOPBACK_NET, MIB
from .servers import DatagramPeer, HelperServer, StreamPeer, hold, serve

LOOPBACK = "127.0.0.1"
# Every requester here is 127.0.0.1, one client to the helper: tests of its
# helper-wide guards (slots, the UDP budget) lift the one-measurement-per-client
# rule, which tests/hostile/test_control_access.py tests.
MANY_IN_FLIGHT = ClientBudgets(in_flight=64)


def helper(**more) -> ControlHelper:
    """A helper that serves anyone (``--open``): these tests are about what a
    request may make it do, whoever sends it (tests/hostile/test_control_access.py
    is about who may). Its targets are ``targets`` (default: none, so it measures
    nothing but what a test names: see ``targets_of``)."""
    more.setdefault("targets", ())
    return ControlHelper(resolver=None, **{"access": Access.anyone(), **more})


def targets_of(*bodies: dict) -> list[Endpoint]:
    """The endpoints of these requests, as a helper's own targets: in its scope."""
    return [item.endpoint for body in bodies for item in protocol.parse_request(body).items]


def measure_body(host: str = "198.51.100.7", port: int = 443, *, count: int = 1,
                 checks: tuple[str, ...] = ("tcp",), addresses: tuple[str, ...] = (),
                 timeout: float = 1.0) -> dict:
    return {
        "version": 1, "timeout": timeout,
        "endpoints": [
            {"id": f"e{i}", "service": "s", "host": host, "ports": [port],
             "checks": list(checks), "addresses": list(addresses), "sni": "example.org"}
            for i in range(count)
        ],
    }


async def post(port: int, data, *, path: str = "/measure", timeout: float = 10.0):
    """(status, seconds, text) of one POST; ``data`` is bytes, a dict (JSON) or an
    async iterator (sent chunked)."""
    start = time.monotonic()
    payload = json.dumps(data).encode() if isinstance(data, dict) else data
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
        session.post(f"http://{LOOPBACK}:{port}{path}", data=payload,
                     headers={"Content-Type": "application/json"}) as response,
    ):
        text = await response.text()
        return response.status, time.monotonic() - start, text


async def health(port: int) -> tuple[int, float]:
    start = time.monotonic()
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
        session.get(f"http://{LOOPBACK}:{port}/") as response,
    ):
        await response.text()
        return response.status, time.monotonic() - start


def call(port: int, data, **more):
    return asyncio.run(post(port, data, **more))


def connections_seen(peer: StreamPeer, settle: float = 0.5) -> int:
    """The peer's accepted connections, once its own thread has caught up (an
    accepted connection is counted when the peer's loop runs its handler)."""
    deadline = time.monotonic() + settle
    while not peer.connections and time.monotonic() < deadline:
        time.sleep(0.02)
    return peer.connections


# --- what a hostile requester sends ---------------------------------------------- #


def test_oversized_body_is_413():
    with serve(lambda: HelperServer(helper())) as server:
        status, seconds, _ = call(server.port, b"[" + b" " * (3 * MIB) + b"]")
        assert status == 413 and seconds < 2

        async def chunked():  # no Content-Length: the cap holds while reading
            for _ in range(48):
                yield b" " * 65536

        status, seconds, _ = call(server.port, chunked())
        assert status == 413 and seconds < 2
        assert asyncio.run(health(server.port))[0] == 200


@pytest.mark.parametrize("body", [
    pytest.param(b"{not json", id="not-json"),
    pytest.param(b"", id="empty"),
    pytest.param(b"\xff\xfe\x00garbage", id="not-utf8"),
    pytest.param(b'{"version": 1, "endpoints": [', id="cut-off"),
    pytest.param(b"[" * 200_000 + b"]" * 200_000, id="nested-200k-deep"),
    pytest.param(b'{"version": 1, "timeout": NaN, "endpoints": []}', id="nan"),
])
def test_malformed_json_is_400(body):
    with serve(lambda: HelperServer(helper())) as server:
        status, seconds, text = call(server.port, body)
    assert status == 400, text
    assert seconds < 2


def _mutate(path: tuple, value):
    body = measure_body()
    target = body
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return body


WRONG_TYPES = {
    "version-string": (("version",), "1"),
    "endpoints-object": (("endpoints",), {"a": 1}),
    "endpoint-number": (("endpoints", 0), 1),
    "timeout-string": (("timeout",), "10"),
    "timeout-bool": (("timeout",), True),
    "timeout-huge": (("timeout",), 1e308),
    "port-string": (("endpoints", 0, "ports"), ["443"]),
    "port-bool": (("endpoints", 0, "ports"), [True]),
    "port-zero": (("endpoints", 0, "ports"), [0]),
    "port-float": (("endpoints", 0, "ports"), [443.0]),
    "check-unknown": (("endpoints", 0, "checks"), ["rm -rf /"]),
    "check-object": (("endpoints", 0, "checks"), [{"tcp": 1}]),
    "check-list": (("endpoints", 0, "checks"), [["tcp"]]),
    "checks-string": (("endpoints", 0, "checks"), "tcp"),
    "address-number": (("endpoints", 0, "addresses"), [3232235777]),
    "address-bool": (("endpoints", 0, "addresses"), [True]),
    "address-object": (("endpoints", 0, "addresses"), [{"ip": "1.2.3.4"}]),
    "address-text": (("endpoints", 0, "addresses"), ["not an address"]),
    "host-number": (("endpoints", 0, "host"), 5),
    "host-empty": (("endpoints", 0, "host"), ""),
    "host-not-a-name": (("endpoints", 0, "host"), "a..b"),
    "host-label-too-long": (("endpoints", 0, "host"), "a" * 64 + ".example"),
    "id-null": (("endpoints", 0, "id"), None),
    "sni-number": (("endpoints", 0, "sni"), 7),
    "path-relative": (("endpoints", 0, "path"), "no-slash"),
    "ca-pem-number": (("endpoints", 0, "ca_pem"), 5),
    "function-unknown": (("endpoints", 0, "function"), "spying"),
    "function-list": (("endpoints", 0, "function"), ["calls"]),
    "payload-unknown": (("endpoints", 0, "payload"), "dns"),
    "datagrams-bool": (("endpoints", 0, "datagrams"), True),
    "datagrams-string": (("endpoints", 0, "datagrams"), "50"),
    "datagrams-float": (("endpoints", 0, "datagrams"), 50.0),
    "datagrams-zero": (("endpoints", 0, "datagrams"), 0),
    "interval-string": (("endpoints", 0, "interval"), "0.1"),
    "interval-negative": (("endpoints", 0, "interval"), -1),
    "interval-huge": (("endpoints", 0, "interval"), 1e308),
    "check-udp-unknown": (("endpoints", 0, "checks"), ["sctp"]),
    # an endpoint's ports are either TCP ports or UDP ports
    "checks-mix-tcp-and-udp": (("endpoints", 0, "checks"), ["tcp", "udp"]),
    "checks-mix-tls-and-quic": (("endpoints", 0, "checks"), ["tls", "quic"]),
}


@pytest.mark.parametrize("case", sorted(WRONG_TYPES))
def test_wrong_types_are_400(case):
    path, value = WRONG_TYPES[case]
    with serve(lambda: HelperServer(helper())) as server:
        status, seconds, text = call(server.port, _mutate(path, value))
    assert status == 400, text
    assert seconds < 2


def test_interval_nan_is_400():
    body = json.dumps(measure_body()).replace('"timeout": 1.0', '"timeout": 1.0').encode()
    body = body.replace(b'"checks": ["tcp"]', b'"checks": ["udp"], "interval": NaN')
    with serve(lambda: HelperServer(helper())) as server:
        status, _, text = call(server.port, body)
    assert status == 400 and "interval" in text, text


def test_the_new_checks_and_fields_are_accepted():
    """stun, turn, udp and quic endpoints with a function and a flow's shape: 200."""
    with serve(lambda: DatagramPeer(lambda data, addr, peer: None)) as target:
        body = measure_body(LOOPBACK, target.port, checks=("stun", "turn", "udp"), timeout=0.5)
        body["endpoints"][0].update(function="calls", payload="echo", datagrams=5,
                                    interval=0.02)
        body["endpoints"].append({**body["endpoints"][0], "id": "q", "checks": ["dns", "quic"],
                                  "function": "web"})
        with serve(lambda: HelperServer(
                helper(routable=LOOPBACK_NET, targets=targets_of(body)))) as server:
            status, _, text = call(server.port, body)
    assert status == 200, text
    assert sorted(json.loads(text)["endpoints"]) == ["e0", "q"]


# (what the request asks) -> what the answer says
COSTLY = {
    "flow-too-long": ({"datagrams": protocol.MAX_FLOW_DATAGRAMS + 1}, 1, "per flow"),
    "flow-too-dense": ({"interval": 0.001}, 1, "between two datagrams"),
    "too-many-flows": ({"datagrams": 100}, 40, "send fewer"),
}


@pytest.mark.parametrize("case", sorted(COSTLY))
def test_udp_checks_that_would_flood_are_413_and_send_nothing(case):
    """A 2 KB request must not make the helper send 32,000 datagrams (40 endpoints x
    8 ports x 100) at a destination the requester chose: refused before any is sent."""
    fields, count, reason = COSTLY[case]
    with serve(lambda: DatagramPeer(lambda data, addr, peer: None)) as target, serve(
        lambda: HelperServer(helper(routable=LOOPBACK_NET))
    ) as server:
        body = measure_body(LOOPBACK, target.port, count=count, checks=("udp",))
        for endpoint in body["endpoints"]:
            endpoint.update(ports=[target.port] * 8, payload="echo", **fields)
        status, seconds, text = call(server.port, body)
        time.sleep(0.2)
        received = target.received
    assert status == 413 and reason in text, text
    assert seconds < 2
    assert received == 0


def test_the_helpers_udp_budget_is_shared_by_every_request():
    """One budget of datagrams for all requests: a request reserves its worst case
    while it runs, so a second one at the same time gets 429 at once; what was
    not sent comes back afterwards. A request without UDP checks is never refused."""
    budget = TokenBucket(100, 0.001)  # room for one request of 7 x 8 STUN transmissions

    def bodies(silent: int, stalling: int) -> tuple[dict, dict]:
        stun = measure_body(LOOPBACK, silent, checks=("stun",), timeout=1.0)
        stun["endpoints"][0]["ports"] = [silent] * 8
        slow = copy.deepcopy(stun)  # the same, with a TLS handshake that stalls 1 s
        slow["endpoints"].append({**measure_body(LOOPBACK, stalling, checks=("tls",))[
            "endpoints"][0], "id": "slow"})
        return stun, slow

    async def scenario(helper_port: int, silent: int, stalling: int):
        stun, slow = bodies(silent, stalling)
        first = asyncio.create_task(post(helper_port, slow))
        await asyncio.sleep(0.3)
        second = await post(helper_port, stun)
        tcp = await post(helper_port, measure_body())
        return await first, second, tcp, await post(helper_port, stun)

    with serve(lambda: DatagramPeer(lambda data, addr, peer: None)) as silent, serve(
        lambda: StreamPeer(hold)) as stalling, serve(
        lambda: HelperServer(helper(routable=LOOPBACK_NET, udp_budget=budget,
                                    budgets=MANY_IN_FLIGHT,
                                    targets=targets_of(*bodies(silent.port, stalling.port))))
    ) as server:
        first, second, tcp, third = asyncio.run(
            scenario(server.port, silent.port, stalling.port))
    assert first[0] == 200, first
    assert second[0] == 429 and second[1] < 0.5 and "budget" in second[2]
    assert tcp[0] == 200
    # 8 ports x 7 sends reserved, at most 8 x 3 sent within 1 s (RFC 5389: 0, 0.5, 1.5 s)
    assert third[0] == 200, third


def test_ten_thousand_endpoints_is_400():
    body = measure_body(count=10_000)
    with serve(lambda: HelperServer(helper())) as server:
        status, seconds, text = call(server.port, body)
    assert status == 400 and "endpoints" in text
    assert seconds < 2


def test_slow_client_times_out_and_others_are_served_meanwhile():
    """One byte of body every 0.2 s: the helper gives up on it after its body
    timeout (408), and meanwhile answers GET / and measures for someone else,
    even with a single measurement slot."""
    body = json.dumps(measure_body()).encode()

    async def slowly(port: int) -> tuple[bytes, float]:
        start = time.monotonic()
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        writer.write(b"POST /measure HTTP/1.1\r\nHost: helper\r\nContent-Type: application/json"
                     + f"\r\nContent-Length: {len(body)}\r\n\r\n".encode())
        answer = asyncio.create_task(reader.readline())
        try:
            for byte in body:
                if answer.done():
                    break  # the helper has given up on us
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.2)
        except ConnectionError:
            pass  # the helper hung up on us: expected
        status_line = await asyncio.wait_for(answer, 5)
        writer.close()
        return status_line, time.monotonic() - start

    async def scenario(port: int):
        slow = asyncio.create_task(slowly(port))
        await asyncio.sleep(0.3)  # the slow client has started its body
        other = await post(port, measure_body())  # bogon-free, unroutable: quick
        alive = await health(port)
        return await slow, other, alive

    with serve(lambda: HelperServer(helper(max_concurrent=1, body_timeout=1.0,
                                                       budgets=MANY_IN_FLIGHT))) as server:
        (status_line, slow_seconds), other, alive = asyncio.run(scenario(server.port))
    assert status_line.startswith(b"HTTP/1.1 408"), status_line
    assert slow_seconds < 1.0 + 2
    assert other[0] == 200 and other[1] < 1.0 + 2
    assert alive[0] == 200 and alive[1] < 0.5


def test_flood_of_concurrent_measurements_is_bounded():
    """40 measurements at once of a server that stalls TLS for the whole timeout:
    four run, the others get 503 at once, and the health check still answers."""
    async def flood(helper_port: int, target_port: int):
        body = measure_body(LOOPBACK, target_port, checks=("tls",), timeout=1.0)
        calls = [asyncio.create_task(post(helper_port, body)) for _ in range(40)]
        await asyncio.sleep(0.2)
        alive = await health(helper_port)
        return await asyncio.gather(*calls), alive

    with serve(lambda: StreamPeer(hold)) as target, serve(
        lambda: HelperServer(helper(max_concurrent=4, routable=LOOPBACK_NET,
                                    budgets=MANY_IN_FLIGHT, targets=targets_of(
                                        measure_body(LOOPBACK, target.port, checks=("tls",)))))
    ) as server:
        results, alive = asyncio.run(flood(server.port, target.port))
    statuses = [status for status, _, _ in results]
    assert 1 <= statuses.count(200) <= 4
    assert statuses.count(200) + statuses.count(503) == 40
    assert all(seconds < 0.5 for status, seconds, _ in results if status == 503)
    assert all(seconds < 1.0 + 2 for status, seconds, _ in results if status == 200)
    assert alive[0] == 200 and alive[1] < 0.5


BOGON_HOSTS = ["127.0.0.1", "10.0.0.1", "169.254.169.254", "::1", "::ffff:127.0.0.1",
               "0.0.0.0", "192.168.1.1", "fe80::1", "100.64.0.1"]


def test_bogon_addresses_are_never_measured_on_a_requesters_behalf():
    """Not as the host, not as an address the "probe" claims to have resolved,
    not as what a name (localhost) resolves to."""

    def body(port: int) -> dict:
        endpoints = [
            {"id": f"b{i}", "service": "s", "host": host, "ports": [port], "checks": ["tcp"]}
            for i, host in enumerate(BOGON_HOSTS)
        ]
        endpoints.append({"id": "name", "service": "s", "host": "localhost", "ports": [port],
                          "checks": ["tcp"], "addresses": ["127.0.0.1", "10.1.2.3", "::1"]})
        return {"version": 1, "timeout": 1, "endpoints": endpoints}

    with serve(lambda: StreamPeer(hold)) as target, serve(
        # in the helper's targets: what refuses them is the bogon rule, not the scope
        lambda: HelperServer(helper(targets=targets_of(body(target.port))))
    ) as server:
        status, _, text = call(server.port, body(target.port))
        connections = connections_seen(target)
    assert status == 200, text
    assert connections == 0  # nothing reached the loopback server
    answered = json.loads(text)["endpoints"]
    assert not set(answered) & {f"b{i}" for i in range(len(BOGON_HOSTS))}
    if "name" in answered:
        observation = answered["name"]["observation"]
        assert observation["addresses"] == [] and observation["ports"] == []


def test_allow_network_lets_a_lab_through():
    body = measure_body(LOOPBACK, 0)
    with serve(lambda: StreamPeer(hold)) as target:
        body["endpoints"][0]["ports"] = [target.port]
        with serve(lambda: HelperServer(
                helper(routable=LOOPBACK_NET, targets=targets_of(body)))) as server:
            status, _, _ = call(server.port, body)
        connections = connections_seen(target)
    assert status == 200 and connections >= 1


# --- what a hostile helper answers to the probe ---------------------------------------- #

TARGETS = parse_targets("""\
version: 1
services:
  - id: example
    name: Example
    endpoints:
      - id: example-tcp
        host: 198.51.100.7
        port: 443
        checks: [tcp]
""")
OBSERVATION = EndpointObservation(
    "example-tcp", "example", "198.51.100.7", None, (), ("198.51.100.7",), (), ())


def _entry(observation: EndpointObservation = OBSERVATION) -> dict:
    return {"endpoint_id": observation.endpoint_id, "measured_at": "2026-01-01T00:00:00Z",
            "helper": {"software_name": "hostile"}, "observation": to_json(observation)}


def _tampered_signature() -> dict:
    signed = attest_control_response(_entry(), generate_ephemeral())
    signed = copy.deepcopy(signed)
    signed["response"]["observation"]["addresses"] = ["203.0.113.66"]  # after signing
    return {"version": 1, "probe_address": None, "helper": {},
            "endpoints": {"example-tcp": signed}}


def _response(body: bytes, status: str = "200 OK", length: int | None = None) -> bytes:
    size = len(body) if length is None else length
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {size}\r\n\r\n").encode() + body


def _answering(head_and_body: bytes):
    async def handler(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        await reader.readexactly(length)
        writer.write(head_and_body)
        await writer.drain()
        await hold(reader, writer)

    return handler


async def _huge(reader, writer):
    await reader.readuntil(b"\r\n\r\n")
    size = 40 * MIB
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: " + str(size).encode() + b"\r\n\r\n[")
    chunk = b"0," * (MIB // 2)
    for _ in range(size // len(chunk)):
        writer.write(chunk)
        await writer.drain()
    await hold(reader, writer)


async def _trickle(reader, writer):
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n{")
    while True:
        await asyncio.sleep(0.2)
        writer.write(b" ")
        await writer.drain()


VALID = {"version": 1, "probe_address": None, "helper": {},
         "endpoints": {"example-tcp": _entry()}}


def _udp_observation(received: int = 3, body: bytes = b"<html>ok</html>",
                     check: str = "udp") -> EndpointObservation:
    """A control observation with a UDP flow and a QUIC handshake, as a helper answers."""
    timing = Timing(0.0, 1.0)
    datagrams = ("AAAA",) * 5
    flow = UdpResult(
        UdpRequest("198.51.100.7", 3478, datagrams, (0.0, 0.1, 0.2, 0.3, 0.4)),
        tuple(UdpSent(0.1 * i, i) for i in range(5)),
        tuple(UdpReceived(0.1 * i + 0.05, "AAAA", 3) for i in range(received)),
        (), None, timing,
    )
    quic = QuicResult(
        QuicRequest("https://example.org/", "198.51.100.7", 443, "example.org"), None, None,
        "0x00000001", 0.05, "TLSv1.3", "h3", ("MIIB",), 200, ((":status", "200"),),
        base64.b64encode(body).decode(), len(body), 7, timing,
    )
    udp = PortObservation("198.51.100.7", 3478, None, None, None, (), (),
                          udp=(UdpCheck(check, flow, tuple(range(min(received, 5))), None),))
    h3 = PortObservation("198.51.100.7", 443, None, None, None, (), (), quic=quic)
    return EndpointObservation("example-tcp", "example", "198.51.100.7", None, (),
                               ("198.51.100.7",), (), (udp, h3))


def _udp_answer(observation: EndpointObservation) -> bytes:
    return json.dumps({**VALID, "endpoints": {"example-tcp": _entry(observation)}}).encode()


def test_an_answer_with_udp_and_quic_parts_round_trips():
    """What a helper answers of a UDP flow and a QUIC handshake is what the probe reads."""
    observation = _udp_observation()
    with serve(lambda: StreamPeer(_answering(_response(_udp_answer(observation))))) as peer:
        outcome = asyncio.run(ask_control(
            LiveNetwork(), TARGETS, {OBSERVATION.endpoint_id: OBSERVATION},
            ControlConfig(urls=(f"http://{LOOPBACK}:{peer.port}",), timeout=2.0), 1.0))
    assert outcome.available, outcome.problems
    assert outcome.observations == {"example-tcp": observation}


def test_the_helper_answers_at_most_a_small_http3_body():
    big = _udp_observation(body=b"x" * (1 << 20))
    answered = protocol.parse_response(json.loads(json.dumps(protocol.build_response(
        {"example-tcp": big}, None, {}, "2026-01-01T00:00:00Z"))))
    quic = answered.observations["example-tcp"].ports[1].quic
    assert len(base64.b64decode(quic.body)) == protocol.MAX_QUIC_BODY
    assert quic.body_length == 1 << 20  # the real size is still told

# case -> (the hostile helper, what the probe's problem list says)
HOSTILE_ANSWERS = {
    "garbage": (_answering(_response(b"\x00\xffnot json at all")), F.JSON_PARSE_ERROR),
    "json-array": (_answering(_response(b"[1, 2, 3]")), F.JSON_PARSE_ERROR),
    "nested-100k": (_answering(_response(b"[" * 100_000 + b"]" * 100_000)), F.JSON_PARSE_ERROR),
    "wrong-version": (_answering(_response(json.dumps({**VALID, "version": 2}).encode())),
                      "not a version 1 object"),
    "no-endpoints": (_answering(_response(b'{"version": 1, "endpoints": []}')),
                     "no endpoints object"),
    "entry-for-another-id": (_answering(_response(json.dumps(
        {**VALID, "endpoints": {"example-tcp": {**_entry(), "endpoint_id": "other"}}}).encode())),
        "malformed entry"),
    "observation-wrong-types": (_answering(_response(json.dumps(
        {**VALID, "endpoints": {"example-tcp": {**_entry(), "observation": {"ports": 5}}}}
    ).encode())), "endpoint 'example-tcp'"),
    "signature-mismatch": (_answering(_response(json.dumps(_tampered_signature()).encode())),
                           "signature does not match"),
    "signature-garbage": (_answering(_response(json.dumps(
        {**VALID, "endpoints": {"example-tcp": {"response": _entry(), "signature": {
            "version": 1, "alg": "ed25519", "key_id": "x", "public_key": "!!", "value": 5}}}}
    ).encode())), "bad signature"),
    "status-500": (_answering(_response(b'{"error": "no"}', "500 Internal Server Error")),
                   "http_status_500"),
    "invalid-status-line": (_answering(b"HTTP/1.1 two hundred\r\n\r\n{}"),
                            F.HTTP_INVALID_RESPONSE),
    "length-lie": (_answering(_response(b"{}", length=1000)), F.GENERIC_TIMEOUT),
    "more-entries-than-asked": (_answering(_response(json.dumps({**VALID, "endpoints": {
        f"e{i}": {**_entry(), "endpoint_id": f"e{i}"} for i in range(2001)}}).encode())),
        # the answer's size cap follows the request (one endpoint asked): cut before parsing
        F.CONTROL_RESPONSE_TOO_LARGE),
    "huge": (_huge, F.CONTROL_RESPONSE_TOO_LARGE),
    "udp-flow-too-long": (_answering(_response(_udp_answer(_udp_observation(received=401)))),
                          "UDP flow with more than"),
    "http3-body-too-large": (_answering(_response(_udp_answer(_udp_observation(
        body=b"x" * (protocol.MAX_QUIC_BODY + 1))))), "HTTP/3 body larger"),
    "udp-check-unknown": (_answering(_response(_udp_answer(_udp_observation(check="sctp")))),
                          "unknown UDP check"),
    "trickle": (_trickle, F.GENERIC_TIMEOUT),
}


def test_the_valid_answer_is_accepted():
    """The other cases fail for the reason they test, not for a broken fixture."""
    with serve(lambda: StreamPeer(_answering(_response(json.dumps(VALID).encode())))) as peer:
        outcome = asyncio.run(ask_control(
            LiveNetwork(), TARGETS, {OBSERVATION.endpoint_id: OBSERVATION},
            ControlConfig(urls=(f"http://{LOOPBACK}:{peer.port}",), timeout=2.0), 1.0))
    assert outcome.available, outcome.problems


@pytest.mark.parametrize("case", sorted(HOSTILE_ANSWERS))
def test_hostile_control_answer_makes_the_control_unavailable(case):
    timeout = 2.0
    handler, problem = HOSTILE_ANSWERS[case]
    with serve(lambda: StreamPeer(handler)) as peer:
        config = ControlConfig(urls=(f"http://{LOOPBACK}:{peer.port}",), timeout=timeout)
        tracemalloc.start()
        start = time.monotonic()
        try:
            outcome = asyncio.run(ask_control(
                LiveNetwork(), TARGETS, {OBSERVATION.endpoint_id: OBSERVATION}, config, 1.0))
            elapsed = time.monotonic() - start
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert not outcome.available
    assert len(outcome.problems) == 1 and len(outcome.problems[0]) <= 300
    assert problem in outcome.problems[0]
    assert elapsed < timeout + 2
    assert peak < 100 * MIB  # bounded by the response cap (32 MiB), whatever is sent
