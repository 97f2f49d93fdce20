"""OONI's test helper as a control: real answers mapped, hostile answers refused,
and `probe run --control-protocol oohelperd` end to end against a helper speaking
the protocol on loopback, with a real resolver and real servers behind it.

The real answers are `test_keys.control` of OONI measurements kept by
ooni/probe-cli (tests/control/data/README.md says which); the loopback helper is
``probe.lab.servers.oohelperd``, built from OONI's description of the protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from servers import (
    make_pki,
    refused_port,
    running,
    start_dns,
    start_https,
    start_mtproto,
    start_tcp,
)

from probe import analysis
from probe.control import oohelper
from probe.control.protocol import ControlEndpoint, ProtocolError
from probe.lab.servers.oohelperd import OohelperdServer
from probe.net import failures
from probe.net.live import LiveNetwork
from probe.replay import replay_trace
from probe.session import ControlConfig, ask_control_batch, control_summary
from probe.targets import Endpoint

DATA = Path(__file__).parent / "data"
PROBE = [sys.executable, "-m", "probe"]
LOOPBACK = "127.0.0.1"


def endpoint(host: str, ports: tuple[int, ...], checks=("dns", "tcp", "tls", "https"),
             **extra) -> Endpoint:
    return Endpoint(id=extra.pop("id", "e"), service="s", host=host, ports=ports,
                    checks=tuple(checks), sni=extra.pop("sni", None), ca_pem=None, **extra)


# --------------------------------------------------------------------------- #
# real answers of OONI's helpers                                               #
# --------------------------------------------------------------------------- #


def real(name: str) -> tuple[oohelper.Question, Endpoint, dict]:
    """A fixture's answer, with the question the OONI probe asked (its URL, and the
    addresses its ip_info marks as resolved by the probe)."""
    data = json.loads((DATA / f"oohelperd_{name}.json").read_text())
    control, url = data["control"], data["input"]
    probe_addresses = tuple(a for a, info in (control.get("ip_info") or {}).items()
                            if info["flags"] & 1)
    host = url.split("//", 1)[1].split("/", 1)[0]
    ports = oohelper.helper_ports(url)
    question = oohelper.Question("e", url, ports[0], probe_addresses, True, True)
    return question, endpoint(host, ports), control


def test_real_answer_with_timeouts_on_80_and_tls_on_443():
    question, ep, control = real("dnsgoogle80")
    answer = oohelper.parse_answer(question, ep.host, control)
    assert answer.getaddrinfo is not None and answer.getaddrinfo.failure is None
    assert set(answer.getaddrinfo.addresses) == {
        "8.8.4.4", "8.8.8.8", "2001:4860:4860::8844", "2001:4860:4860::8888"}
    by = {(p.address, p.port): p for p in answer.ports}
    assert len(by) == 8
    for address in answer.getaddrinfo.addresses:
        closed, tls = by[address, 80], by[address, 443]
        assert closed.connect.failure == failures.GENERIC_TIMEOUT and closed.tls is None
        assert tls.connect.failure is None
        assert tls.tls is not None and tls.tls.failure is None and tls.tls_verification is None
        assert tls.tls.request.sni == "dns.google"
        # the helper's fetch of http://dns.google timed out: on port 80 of its addresses
        assert closed.http[0].failure == failures.GENERIC_TIMEOUT and not tls.http
    # analysis reads it as our helper's: 80 unreachable from the control, 443 fine
    assert analysis.step_succeeded(by["8.8.8.8", 80], "connect") is False
    assert analysis.step_succeeded(by["8.8.8.8", 443], "tls_verify") is True


def test_real_answer_http_page_and_both_ports():
    question, ep, control = real("firefoxcom")
    answer = oohelper.parse_answer(question, ep.host, control)
    assert answer.getaddrinfo.addresses == ("44.235.246.155", "44.236.72.93", "44.236.48.31")
    assert {p.port for p in answer.ports} == {80, 443}
    port80 = next(p for p in answer.ports if p.port == 80 and p.address == "44.236.48.31")
    (page,) = port80.http
    assert page.status == 200 and page.body_length == 114526 and page.failure is None
    assert page.body == "" and page.body_truncated  # the helper sends no body
    assert all(p.tls.failure is None for p in answer.ports if p.port == 443)


def test_real_answer_for_an_address_url_has_no_dns():
    question, ep, control = real("8844")
    answer = oohelper.parse_answer(question, ep.host, control)
    assert answer.getaddrinfo is None
    (port,) = answer.ports
    assert (port.address, port.port, port.connect.failure) == ("8.8.4.4", 443, None)
    assert port.tls.failure is None and port.http[0].status == 200


def test_real_answer_with_many_addresses_both_families():
    question, ep, control = real("youtube")
    answer = oohelper.parse_answer(question, ep.host, control)
    assert len(answer.ports) == 24
    assert any(":" in p.address for p in answer.ports)
    assert all(p.connect.failure is None and p.tls.failure is None for p in answer.ports)
    observation = oohelper.observation(ControlEndpoint(ep, question.addresses), [answer])
    assert analysis.resolver_failure(observation) is None
    assert len(analysis.resolved_addresses(observation)) == 10


def test_real_nxdomain_answer_maps_to_our_vocabulary():
    question, ep, control = real("websiteDownNXDOMAIN")
    answer = oohelper.parse_answer(question, ep.host, control)
    assert answer.getaddrinfo.failure == failures.DNS_NXDOMAIN
    assert answer.getaddrinfo.addresses == () and answer.ports == ()
    observation = oohelper.observation(ControlEndpoint(ep, ()), [answer])
    assert analysis.resolver_failure(observation) == failures.DNS_NXDOMAIN


def test_questions_name_the_port_and_the_probes_addresses():
    items = [
        ControlEndpoint(endpoint("example.org", (443, 8443)), ("203.0.113.5", "2001:db8::5")),
        ControlEndpoint(endpoint("203.0.113.11", (80, 443), ("tcp", "mtproto"), id="dc"),
                        ("203.0.113.11",)),
        ControlEndpoint(endpoint("stun.example", (3478,), ("stun",), id="calls"), ()),
    ]
    plan = oohelper.plan(items)
    bodies = [oohelper.build_request(q) for q in plan.questions]
    assert [b["http_request"] for b in bodies] == [
        "https://example.org:443/", "https://example.org:8443/",
        "http://203.0.113.11:80/", "http://203.0.113.11:443/"]
    assert bodies[0]["tcp_connect"] == ["203.0.113.5:443", "[2001:db8::5]:443"]
    assert set(bodies[0]) == {"http_request", "http_request_headers", "tcp_connect"}
    assert plan.uncovered == {"calls": "the OONI test helper does not measure STUN"}
    assert plan.partial == {"dc": "MTProto"}


# --------------------------------------------------------------------------- #
# hostile answers                                                              #
# --------------------------------------------------------------------------- #


@contextlib.asynccontextmanager
async def answering(payload: bytes) -> AsyncIterator[str]:
    """A loopback HTTP server answering every POST with ``payload``."""

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=payload, content_type="application/json")

    app = web.Application()
    app.router.add_post("/", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, LOOPBACK, 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://{LOOPBACK}:{port}/"
    finally:
        await runner.cleanup()


GOOD = {"dns": {"failure": None, "addrs": ["203.0.113.5"]},
        "tcp_connect": {"203.0.113.5:443": {"status": True, "failure": None}},
        "tls_handshake": {"203.0.113.5:443": {"server_name": "example.org", "status": True,
                                              "failure": None}},
        "http_request": {"body_length": 10, "failure": None, "title": "", "headers": {},
                         "status_code": 200}}


def _with(**changes) -> bytes:
    return json.dumps({**GOOD, **changes}).encode()


HOSTILE = {
    "truncated": json.dumps(GOOD).encode()[:50],
    "wrong types": _with(tcp_connect=["203.0.113.5:443"]),
    "status not a bool": _with(tcp_connect={"203.0.113.5:443": {"status": "yes"}}),
    "10 MB": b'{"dns": {"addrs": [' + b'"203.0.113.5",' * ((10 << 20) // 14) + b'""]}}',
    "address not asked about": _with(tcp_connect={
        "203.0.113.5:443": {"status": True, "failure": None},
        "198.51.100.99:443": {"status": True, "failure": None}}),
    "another port": _with(tcp_connect={"203.0.113.5:22": {"status": True, "failure": None}}),
    "huge map": _with(tcp_connect={f"203.0.113.{i}:443": {"status": True, "failure": None}
                                   for i in range(200)}),
    "not an object": b"[1, 2, 3]",
    "nested": b"[" * 100000,
}
WHY = {
    "truncated": "json_parse_error", "wrong types": "tcp_connect must be an object",
    "status not a bool": "boolean status", "10 MB": "control_response_too_large",
    "address not asked about": "'198.51.100.99:443' was not asked about",
    "another port": "'203.0.113.5:22' was not asked about",
    "huge map": "more than 64 entries", "not an object": "json_parse_error",
    "nested": "json_parse_error",
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_answer_is_no_control_with_one_line(name):
    items = [ControlEndpoint(endpoint("example.org", (443,)), ("203.0.113.5",))]
    config = ControlConfig(timeout=5, protocol=oohelper.PROTOCOL)

    async def main():
        async with answering(HOSTILE[name]) as url:
            config_with = ControlConfig((url,), None, 5, protocol=oohelper.PROTOCOL)
            return await ask_control_batch(LiveNetwork(), items, config_with, 2)

    assert config.protocol == "oohelperd"
    outcome = asyncio.run(asyncio.wait_for(main(), 20))
    assert not outcome.available
    (problem,) = outcome.problems
    assert "\n" not in problem and len(problem) <= 300
    assert "no usable answer from the OONI test helper" in problem
    assert WHY[name] in problem


def test_good_answer_from_the_same_server_is_a_control():
    items = [ControlEndpoint(endpoint("example.org", (443,)), ("203.0.113.5",))]

    async def main():
        async with answering(json.dumps(GOOD).encode()) as url:
            config = ControlConfig((url,), None, 5, protocol=oohelper.PROTOCOL)
            return url, await ask_control_batch(LiveNetwork(), items, config, 2)

    url, outcome = asyncio.run(asyncio.wait_for(main(), 20))
    assert outcome.available and outcome.source == url and not outcome.problems
    (port,) = outcome.observations["e"].ports
    assert port.tls.failure is None and port.http[0].status == 200
    summary = control_summary(outcome, ["e"])
    assert summary["protocol"] == "oohelperd" and "attestation" not in summary
    assert "unsigned" in summary["helper"]


def test_parse_answer_refuses_bad_failure_types():
    question = oohelper.Question("e", "https://example.org:443/", 443, ("203.0.113.5",),
                                 True, True)
    bad = {**GOOD, "dns": {"failure": 7, "addrs": []}}
    with pytest.raises(ProtocolError, match="dns: failure"):
        oohelper.parse_answer(question, "example.org", bad)


# --------------------------------------------------------------------------- #
# probe run against a loopback oohelperd                                       #
# --------------------------------------------------------------------------- #

TARGETS = """\
version: 1
routable_networks: [127.0.0.0/8, "::1/128"]
services:
  - id: baseline
    baseline: true
    endpoints:
      - {{id: base, host: example.org, port: {https}, checks: [dns, tcp, tls, https]}}
  - id: telegram
    test_name: telegram
    endpoints:
      - {{id: tg-dc1, host: 127.0.0.1, ports: [{mtproto}], checks: [tcp, mtproto],
          role: datacenter}}
      - {{id: tg-dead, host: 127.0.0.1, ports: [{silent}], checks: [tcp, mtproto],
          role: datacenter}}
      - {{id: tg-web, host: www.example.org, port: {https}, checks: [dns, tcp, tls, https],
          role: web}}
  - id: web
    endpoints:
      - {{id: web-nx, host: blocked.example, port: {https}, checks: [dns, tcp, tls]}}
      - {{id: web-forged, host: forged.example, port: {https}, checks: [dns, tcp, tls]}}
      - {{id: web-elsewhere, host: elsewhere.example, port: {https}, checks: [dns, tcp, tls]}}
      - {{id: web-down, host: down.example, port: {closed}, checks: [dns, tcp, tls]}}
"""

ZONE = {name: {"A": ["127.0.0.1"]} for name in (
    "example.org", "www.example.org", "blocked.example", "forged.example", "elsewhere.example",
    "down.example")}
# the probe's resolver lies: NXDOMAIN, a bogon, and a loopback address where nothing
# listens (a forged answer that looks routable)
LYING = {"blocked.example": "nxdomain", "forged.example": {"forge": ["10.10.34.35"]},
         "elsewhere.example": {"forge": ["127.0.0.2"]}}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    directory = tmp_path_factory.mktemp("oohelperd")
    pki = make_pki(directory)
    with (
        refused_port() as closed,
        start_dns(ZONE, LYING) as lying,
        start_dns(ZONE) as honest,
        start_https(pki) as https,
        start_mtproto() as mtproto,
        start_tcp("silent") as silent,
        running(lambda: OohelperdServer(
            [(LOOPBACK, 0)], (LOOPBACK, honest.port), pki.lab_root.cert.read_text(),
            [ipaddress.ip_network("127.0.0.0/8")], tls_ports=[https.port])) as helper,
    ):
        targets = directory / "targets.yaml"
        targets.write_text(TARGETS.format(https=https.port, mtproto=mtproto.port,
                                          silent=silent.port, closed=closed))
        yield {"pki": pki, "targets": targets, "lying": lying.port,
               "url": f"http://{LOOPBACK}:{helper.port}/", "helper": helper}


def probe_run(world, tmp: Path, *extra: str) -> dict:
    command = [
        *PROBE, "run", "--targets", str(world["targets"]),
        "--resolver", f"{LOOPBACK}:{world['lying']}", "--no-system-resolver",
        "--ca-bundle", str(world["pki"].lab_root.cert), "--timeout", "1",
        "--out", str(tmp / "reports"), "--json", *extra,
    ]
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp / "config"), "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=90, env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_probe_run_with_an_oohelperd_control(world, tmp_path):
    trace = tmp_path / "trace.jsonl"
    summary = probe_run(world, tmp_path, "--control-protocol", "oohelperd",
                        "--control", world["url"], "--record", str(trace))
    verdicts = {e["id"]: (e["verdict"], e["method"]) for e in summary["endpoints"]}
    assert summary["control"]["source"] == world["url"], summary["control"]
    assert world["helper"].requests > 0
    # both see the same: ok
    assert verdicts["base"] == ("ok", None)
    assert verdicts["tg-web"] == ("ok", None)
    assert verdicts["tg-dc1"] == ("ok", None)
    # the helper resolves what the probe's resolver denies: blocked, not down
    assert verdicts["web-nx"] == ("dns_blocked", "dns.nxdomain")
    assert verdicts["web-forged"] == ("dns_blocked", "dns.bogon")
    # the probe's answer is unreachable from the helper too, the helper's own works
    assert verdicts["web-elsewhere"] == ("dns_blocked", "dns.inconsistent")
    # refused from both vantages: down, never blocked
    assert verdicts["web-down"][0] == "down"
    # the helper connects to the silent port but has no MTProto question: that step
    # cannot be compared, so it stays inconclusive (our own helper says down)
    assert verdicts["tg-dead"] == ("inconclusive", "protocol.timeout")
    problems = " ".join(summary["control"]["problems"])
    assert "does not measure MTProto" in problems
    report = Path(summary["report"]).read_text().splitlines()
    web = next(json.loads(line) for line in report if '"web"' in line
               and json.loads(line).get("test_name") == "web")
    control = web["test_keys"]["control"]
    assert control["protocol"] == "oohelperd" and "attestation" not in control
    # the helper's answers went through the seam: a replay draws the same conclusions
    replayed = replay_trace(trace)
    assert not replayed.network.missing, replayed.network.missing[:3]
    again = {v.endpoint_id: (v.verdict, v.method)
             for vs in replayed.outcome.verdicts.values() for v in vs}
    assert again == verdicts


def test_probe_run_help_names_the_protocols():
    result = subprocess.run([*PROBE, "run", "--help"], capture_output=True, text=True,
                            timeout=30)
    assert "--control-protocol [probe|oohelperd]" in result.stdout


def test_oohelperd_without_a_url_is_a_usage_error(tmp_path):
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "config")}
    result = subprocess.run([*PROBE, "run", "--control-protocol", "oohelperd"],
                            capture_output=True, text=True, timeout=30, env=env)
    assert result.returncode == 2
    assert "--control-protocol oohelperd needs --control URL" in result.stderr
    assert "Traceback" not in result.stderr
