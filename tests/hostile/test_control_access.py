"""Who the control helper measures for, and how much: on real loopback servers.

A helper started without ``--open`` refuses anonymous requests (401) without
measuring anything; a signed request that is replayed, stale or whose body was
changed is refused; an unknown key is refused before its body is read; an
enrolled probe (by key or by token) is measured. Each client (its credential,
and its address) has one measurement in flight and per-minute budgets: beyond
them, 429 at once, while another client is still served. On the probe side, an
enrolled key gets a control answer, an unknown one a clear reason, and no
credential lands in a recorded trace.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import aiohttp
from click.testing import CliRunner

from probe import session
from probe.bogons import parse_networks
from probe.cli import main
from probe.control import auth
from probe.control.auth import Access, ControlCredentials
from probe.control.budgets import ClientBudgets
from probe.control.server import ControlHelper
from probe.net.live import LiveNetwork
from probe.report.keys import create_key, generate_ephemeral
from probe.runner import RunOptions, run_endpoints
from probe.serving import clients
from probe.targets import Endpoint, parse_targets
from probe.trace import RunInfo, finish_recording, start_recording

from .harness import LOOPBACK_NET
from .servers import HelperServer, StreamPeer, hold, serve

LOOPBACK = "127.0.0.1"
OTHER_CLIENT = "127.0.0.2"  # another address on loopback: another client to the helper

PROBE_KEY = generate_ephemeral()
STRANGER_KEY = generate_ephemeral()
TOKEN = auth.new_token()


# Who may ask is these tests' subject, not what (tests/hostile/test_control_scope.py):
# their helpers' targets are every TCP check on every port of the loopback address.
ANY_LOOPBACK_PORT = (Endpoint(id="loopback", service="s", host=LOOPBACK,
                              ports=tuple(range(1, 65536)), sni=None, ca_pem=None,
                              checks=("tcp", "tls", "https", "http", "mtproto")),)


def enrolled(**more) -> ControlHelper:
    """A helper for the probes of ``PROBE_KEY`` (by key id) and of ``TOKEN``."""
    access = Access(frozenset({PROBE_KEY.key_id}),
                    {auth.token_digest(TOKEN).removeprefix("sha256:"): "volunteer-1"})
    more.setdefault("targets", ANY_LOOPBACK_PORT)
    return ControlHelper(resolver=None, routable=LOOPBACK_NET, access=access, **more)


def measure_body(port: int, *, count: int = 1, checks: tuple[str, ...] = ("tcp",),
                 timeout: float = 1.0) -> bytes:
    return json.dumps({
        "version": 1, "timeout": timeout,
        "endpoints": [
            {"id": f"e{i}", "service": "s", "host": LOOPBACK, "ports": [port],
             "checks": list(checks)} for i in range(count)],
    }).encode()


def signed(body: bytes, key=PROBE_KEY, clock=time.time) -> dict[str, str]:
    header = ControlCredentials(key, clock=clock).authorization("POST", "/measure", body)
    assert header is not None
    return {"Authorization": header}


async def post(port: int, body: bytes, headers: dict[str, str] | None = None, *,
               source: str = LOOPBACK) -> tuple[int, dict, dict]:
    """(status, JSON answer, response headers) of one POST /measure from ``source``."""
    connector = aiohttp.TCPConnector(local_addr=(source, 0), force_close=True)
    async with (
        aiohttp.ClientSession(connector=connector,
                              timeout=aiohttp.ClientTimeout(total=30)) as client,
        client.post(f"http://{LOOPBACK}:{port}/measure", data=body,
                    headers={"Content-Type": "application/json", **(headers or {})}) as response,
    ):
        return response.status, await response.json(), dict(response.headers)


def call(port: int, body: bytes, headers: dict[str, str] | None = None, **more):
    return asyncio.run(post(port, body, headers, **more))


def connections_after(peer: StreamPeer, settle: float = 0.3) -> int:
    time.sleep(settle)  # the peer's own thread counts an accepted connection
    return peer.connections


# --- who is served ------------------------------------------------------------- #


def test_an_anonymous_request_is_refused_without_measuring_anything():
    with serve(lambda: StreamPeer(hold)) as target, \
            serve(lambda: HelperServer(enrolled())) as server, \
            serve(lambda: HelperServer(ControlHelper(None, routable=LOOPBACK_NET))) as bare:
        for port in (server.port, bare.port):
            status, answer, headers = call(port, measure_body(target.port))
            assert status == 401, answer
            assert answer["reason"] == auth.MISSING and "enrolled" in answer["error"]
            assert headers.get("Connection", "").lower() == "close"
        assert connections_after(target) == 0


def test_an_enrolled_key_and_a_token_are_measured():
    with serve(lambda: StreamPeer(hold)) as target, \
            serve(lambda: HelperServer(enrolled())) as server:
        body = measure_body(target.port)
        status, answer, _ = call(server.port, body, signed(body))
        assert status == 200, answer
        assert answer["endpoints"]["e0"]["observation"]["ports"][0]["connect"]["failure"] is None
        status, answer, _ = call(server.port, body, {"Authorization": f"Bearer {TOKEN}"})
        assert status == 200, answer
        assert connections_after(target) == 2
        status, answer, _ = call(server.port, body, {"Authorization": "Bearer " + "x" * 43})
        assert (status, answer["reason"]) == (401, auth.UNKNOWN_TOKEN)
        assert connections_after(target) == 2


def test_an_open_helper_serves_anyone_even_with_a_key_it_does_not_know():
    helper = ControlHelper(None, routable=LOOPBACK_NET, access=Access.anyone(),
                           targets=ANY_LOOPBACK_PORT)
    with serve(lambda: StreamPeer(hold)) as target, serve(lambda: HelperServer(helper)) as server:
        body = measure_body(target.port)
        assert call(server.port, body)[0] == 200
        assert call(server.port, body, signed(body, key=STRANGER_KEY))[0] == 200
        assert call(server.port, body, {"Authorization": "Bearer " + "x" * 43})[0] == 200
        assert connections_after(target) == 3


def test_replayed_stale_and_tampered_signed_requests_are_refused():
    with serve(lambda: StreamPeer(hold)) as target, \
            serve(lambda: HelperServer(enrolled())) as server:
        body = measure_body(target.port)
        headers = signed(body)
        assert call(server.port, body, headers)[0] == 200
        measured = connections_after(target)
        assert measured == 1

        status, answer, _ = call(server.port, body, headers)  # the same bytes again
        assert (status, answer["reason"]) == (401, auth.REPLAYED)

        stale = signed(body, clock=lambda: time.time() - 600)
        status, answer, _ = call(server.port, body, stale)
        assert (status, answer["reason"]) == (401, auth.CLOCK_SKEW)
        future = signed(body, clock=lambda: time.time() + 600)
        assert call(server.port, body, future)[1]["reason"] == auth.CLOCK_SKEW

        # the signature of one body, sent with another (a wider scan, say)
        other = measure_body(target.port, count=2)
        status, answer, _ = call(server.port, other, signed(body))
        assert (status, answer["reason"]) == (401, auth.BAD_SIGNATURE)

        # signed for /info, replayed to /measure
        info = ControlCredentials(PROBE_KEY).authorization("POST", "/info", body)
        status, answer, _ = call(server.port, body, {"Authorization": info or ""})
        assert (status, answer["reason"]) == (401, auth.BAD_SIGNATURE)

        for garbage in ("Probe-Ed25519 key=AAAA, time=1, signature=AAAA", "Basic dTpw",
                        "Probe-Ed25519 " + "k=v, " * 400):
            status, answer, _ = call(server.port, body, {"Authorization": garbage})
            assert (status, answer["reason"]) == (401, auth.MALFORMED), garbage
        assert connections_after(target) == measured


def test_an_unknown_key_is_refused_before_its_body_is_read():
    """Headers announcing 1 MB, 16 bytes of it sent: the helper answers 401 and closes
    at once, where reading the body would have waited its 30 s body timeout."""
    body = measure_body(9)
    header = signed(body, key=STRANGER_KEY)["Authorization"]

    async def scenario(port: int) -> tuple[bytes, float]:
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        started = time.monotonic()
        writer.write(
            f"POST /measure HTTP/1.1\r\nHost: helper\r\nContent-Type: application/json\r\n"
            f"Content-Length: 1000000\r\nAuthorization: {header}\r\n\r\n".encode()
            + body[:16])
        await writer.drain()
        try:
            async with asyncio.timeout(20):
                answer = await reader.read()  # to the end: the helper closes
        finally:
            writer.close()
        return answer, time.monotonic() - started

    with serve(lambda: HelperServer(enrolled(body_timeout=30.0))) as server:
        answer, seconds = asyncio.run(scenario(server.port))
    assert answer.startswith(b"HTTP/1.1 401"), answer[:100]
    assert auth.UNKNOWN_KEY.encode() in answer and STRANGER_KEY.key_id.encode() in answer
    assert seconds < 10  # well before the body timeout


# --- how much ------------------------------------------------------------------ #


def test_over_budget_is_429_with_retry_after_before_measuring():
    budgets = ClientBudgets(endpoints_per_minute=1, endpoints_burst=3)
    with serve(lambda: StreamPeer(hold)) as target, \
            serve(lambda: HelperServer(enrolled(budgets=budgets))) as server:
        body = measure_body(target.port, count=2)
        assert call(server.port, body, signed(body))[0] == 200
        measured = connections_after(target)
        assert measured == 2
        body = measure_body(target.port, count=2, timeout=0.9)  # another signature
        status, answer, headers = call(server.port, body, signed(body))
        assert status == 429 and "budget" in answer["error"]
        assert int(headers["Retry-After"]) >= 1
        # the key's budget is spent whatever the address it comes from
        body = measure_body(target.port, count=2, timeout=0.8)
        assert call(server.port, body, signed(body), source=OTHER_CLIENT)[0] == 429
        assert connections_after(target) == measured


def closed_ports(count: int) -> list[int]:
    """Loopback ports nothing listens on (bound, then closed): a connect is refused."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((LOOPBACK, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def test_the_connection_budget_counts_the_worst_case_of_mtproto():
    """mtproto may open two connections per port: 8 ports reserve 16 of a budget
    of 24; a refused port opens one, and the 8 not opened come back."""
    budgets = ClientBudgets(connections_per_minute=1, connections_burst=24)
    ports = closed_ports(8)
    with serve(lambda: HelperServer(enrolled(budgets=budgets))) as server:
        statuses = []
        for timeout in (1.0, 0.9, 0.8):  # three signatures
            body = json.dumps({"version": 1, "timeout": timeout, "endpoints": [
                {"id": "dc", "service": "telegram", "host": LOOPBACK, "ports": ports,
                 "checks": ["mtproto"]}]}).encode()
            statuses.append(call(server.port, body, signed(body))[0])
    # 24 - 16 + 8 = 16 left; 16 - 16 + 8 = 8 left: not enough for a third
    assert statuses == [200, 200, 429]


def test_one_client_cannot_hold_every_measurement_slot():
    """Four mtproto requests to a silent port from one client: the first measures
    (two framings, 2 s each), the three others get 429 at once, and another
    client is measured meanwhile. The first client's key from another address
    is still one client."""
    async def scenario(helper_port: int, silent: int, open_port: int):
        slow = measure_body(silent, checks=("mtproto",), timeout=2.0)
        first = asyncio.create_task(post(helper_port, slow, signed(slow)))
        await asyncio.sleep(0.5)
        more = []
        for n in range(3):
            body = measure_body(silent, count=n + 2, checks=("mtproto",), timeout=2.0)
            started = time.monotonic()
            more.append((await post(helper_port, body, signed(body)),
                         time.monotonic() - started))
        same_key = measure_body(open_port, timeout=1.9)
        elsewhere = await post(helper_port, same_key, signed(same_key), source=OTHER_CLIENT)
        quick = measure_body(open_port)
        other = await post(helper_port, quick, {"Authorization": f"Bearer {TOKEN}"},
                           source=OTHER_CLIENT)
        first_still_running = not first.done()
        return await first, more, elsewhere, other, first_still_running

    with serve(lambda: StreamPeer(hold)) as silent, serve(lambda: StreamPeer(hold)) as target, \
            serve(lambda: HelperServer(enrolled())) as server:
        first, more, elsewhere, other, first_still_running = asyncio.run(
            scenario(server.port, silent.port, target.port))
    assert first[0] == 200
    for (status, answer, headers), seconds in more:
        assert status == 429 and "one measurement at a time" in answer["error"]
        assert headers["Retry-After"] == "1" and seconds < 3
    assert elsewhere[0] == 429
    assert other[0] == 200, other[1]
    assert first_still_running  # the other client did not wait for the silent port


# --- the probe's side ------------------------------------------------------------ #

TARGETS = """\
version: 1
services:
  - id: svc
    endpoints:
      - {{id: e0, host: 127.0.0.1, port: {port}, checks: [tcp]}}
"""


def probe_asks(helper_port: int, target_port: int, credentials: ControlCredentials,
               network_for=None) -> session.ControlOutcome:
    targets = parse_targets(TARGETS.format(port=target_port))
    options = RunOptions(timeout=2, routable=LOOPBACK_NET, rate=None, use_system_resolver=False)
    config = session.ControlConfig(urls=(f"http://{LOOPBACK}:{helper_port}",), timeout=20,
                                   enrolment=credentials.enrolment())

    async def go():
        network = (network_for or LiveNetwork)(credentials)
        try:
            observations = await run_endpoints(network, targets.endpoints(), options)
            return await session.ask_control(network, targets, observations, config, 2)
        finally:
            await network.aclose()

    return asyncio.run(go())


def test_the_probe_with_an_enrolled_key_gets_a_control_answer():
    with serve(lambda: StreamPeer(hold)) as target, \
            serve(lambda: HelperServer(enrolled())) as server:
        outcome = probe_asks(server.port, target.port, ControlCredentials(PROBE_KEY))
    assert outcome.available and outcome.problems == []
    assert outcome.observations["e0"].ports[0].connect.failure is None


def test_the_probe_with_an_unknown_key_gets_a_clear_reason(tmp_path):
    volunteer = create_key(tmp_path / "probe.key")  # a volunteer's own key, not enrolled
    with serve(lambda: StreamPeer(hold)) as target, \
            serve(lambda: HelperServer(enrolled())) as server:
        outcome = probe_asks(server.port, target.port, ControlCredentials(volunteer))
        throw_away = probe_asks(server.port, target.port, ControlCredentials(STRANGER_KEY))
        wrong_token = probe_asks(server.port, target.port,
                                 ControlCredentials(PROBE_KEY, token="not-the-ngo-token"))
    assert not outcome.available
    [problem] = outcome.problems
    assert problem.endswith(f"the control helper does not know this probe's key: ask the NGO "
                            f"to enrol key {volunteer.key_id} (probe key show)")
    assert "\n" not in problem and "Traceback" not in problem
    assert not throw_away.available and "--ephemeral-key" in throw_away.problems[0]
    assert not wrong_token.available
    assert "ask the NGO for a valid one" in wrong_token.problems[0]


def test_a_probe_sharing_its_address_waits_its_turn():
    """Two volunteers behind one NAT are one network to the helper: the second
    probe's request gets "one at a time" (429, Retry-After: 1) while the first
    measures a silent port, waits and asks again, and gets its answer."""
    async def first_probe(helper_port: int, silent: int):
        body = measure_body(silent, checks=("mtproto",), timeout=1.0)
        return await post(helper_port, body, signed(body))

    with serve(lambda: StreamPeer(hold)) as silent, serve(lambda: StreamPeer(hold)) as target, \
            serve(lambda: HelperServer(enrolled())) as server:
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(asyncio.run, first_probe(server.port, silent.port))
            time.sleep(0.3)
            second = probe_asks(server.port, target.port, ControlCredentials(None, token=TOKEN))
            assert first.result(timeout=30)[0] == 200
    assert second.available and second.problems == []


def test_no_credential_lands_in_a_recorded_trace(tmp_path):
    path = tmp_path / "run.jsonl"

    def recording(credentials):
        targets = parse_targets(TARGETS.format(port=9))
        info = RunInfo.from_run(targets, RunOptions(), session.ControlConfig())
        return start_recording(path, info, inner=LiveNetwork(credentials))

    with serve(lambda: StreamPeer(hold)) as target, \
            serve(lambda: HelperServer(enrolled())) as server:
        network = None

        def network_for(credentials):
            nonlocal network
            network = recording(credentials)
            return network

        credentials = ControlCredentials(None, token=TOKEN)
        outcome = probe_asks(server.port, target.port, credentials, network_for)
        finish_recording(network, None)
    assert outcome.available
    text = path.read_text()
    assert '"control_call"' in text
    assert TOKEN not in text and "Bearer" not in text and auth.SCHEME not in text


def test_a_helper_told_nobody_to_serve_does_not_start(tmp_path):
    result = CliRunner().invoke(
        main, ["control", "serve", "--listen", "127.0.0.1:0", "--duration", "1"],
        env={"XDG_CONFIG_HOME": str(tmp_path)})
    assert result.exit_code == 2
    assert "--trusted-keys FILE" in result.output and "--open" in result.output
    assert "Traceback" not in result.output
    bad = tmp_path / "tokens"
    bad.write_text(f"volunteer-1 {TOKEN}\n")
    result = CliRunner().invoke(
        main, ["control", "serve", "--listen", "127.0.0.1:0", "--tokens", str(bad)],
        env={"XDG_CONFIG_HOME": str(tmp_path)})
    assert result.exit_code == 2 and "line 1" in result.output and TOKEN not in result.output


def test_a_token_made_by_the_cli_is_accepted_by_a_helper_reading_its_line(tmp_path):
    result = CliRunner().invoke(main, ["control", "token", "volunteer-7"])
    assert result.exit_code == 0, result.output
    token = result.output.split("only once): ", 1)[1].split("\n", 1)[0]
    line = result.output.rstrip("\n").rsplit("\n", 1)[1]
    tokens = auth.parse_tokens(line)
    gate = auth.Gatekeeper(Access(tokens=tokens))
    assert gate.check_header(f"Bearer {token}").name == "token volunteer-7"
    assert token not in line


# --- behind the NGO's reverse proxy ---------------------------------------------- #


def test_a_client_behind_a_trusted_proxy_is_its_forwarded_address():
    proxies = parse_networks(["127.0.0.1/32", "::1/128"])
    assert clients.client_address("127.0.0.1", "10.1.1.1, 198.51.100.7", proxies) == "198.51.100.7"
    assert clients.client_address("127.0.0.2", "198.51.100.7", proxies) == "127.0.0.2"
    assert clients.client_address("127.0.0.1", "not an address", proxies) is None
    assert clients.client_address("127.0.0.1", "198.51.100.7", ()) == "127.0.0.1"
    assert clients.client_key("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
    assert clients.client_key("::ffff:198.51.100.7") == "198.51.100.7"


def test_two_probes_behind_the_proxy_are_two_clients():
    """Both come from the proxy (127.0.0.1): counted by their forwarded addresses,
    they measure at the same time, and each is told its own address; a peer
    that is not the proxy cannot choose its address with the header."""
    async def scenario(helper_port: int, silent: int):
        first_body = measure_body(silent, checks=("mtproto",), timeout=1.0)
        first = asyncio.create_task(post(helper_port, first_body, {
            **signed(first_body), "X-Forwarded-For": "198.51.100.7"}))
        await asyncio.sleep(0.3)
        second_body = measure_body(silent, checks=("tcp",))
        second = await post(helper_port, second_body, {
            "Authorization": f"Bearer {TOKEN}", "X-Forwarded-For": "203.0.113.9"})
        third_body = measure_body(silent, checks=("tcp",), timeout=0.9)
        third = await post(helper_port, third_body, {
            "Authorization": f"Bearer {TOKEN}", "X-Forwarded-For": "203.0.113.10"},
            source=OTHER_CLIENT)
        return await first, second, third

    proxy = parse_networks(["127.0.0.1/32"])
    with serve(lambda: StreamPeer(hold)) as silent, \
            serve(lambda: HelperServer(enrolled(trusted_proxies=proxy))) as server:
        first, second, third = asyncio.run(scenario(server.port, silent.port))
    assert first[0] == 200 and first[1]["probe_address"] == "198.51.100.7"
    assert second[0] == 200 and second[1]["probe_address"] == "203.0.113.9"
    assert third[0] == 200 and third[1]["probe_address"] == OTHER_CLIENT
