"""The targets file's UDP checks (stun, turn, udp, quic) and per-endpoint functions:
every new key is read alike by every parsing path (libyaml streamed, libyaml composed,
PyYAML), and every mistake gives an error naming the file, line and field."""

from __future__ import annotations

import pytest

from probe import targets as targets_module
from probe.targets import CHECKS, FUNCTIONS, Endpoint, TargetsError, parse_targets
from probe.vocabulary import Check, Function

UDP_FILE = """\
version: 1
services:
  - id: calls
    name: Calls
    endpoints:
      - id: calls-web
        host: web.example.org
        port: 443
        checks: [dns, tcp, tls, https]
        function: web
      - id: calls-stun
        host: stun.example.org
        ports: [3478, 596]
        checks: [dns, stun, turn]
        function: calls
      - id: calls-flow
        host: 198.51.100.7
        port: 1400
        checks: [udp]
        function: calls
        payload: echo
        datagrams: 120
        interval: 0.05
      - id: calls-flow-default
        host: 198.51.100.8
        port: 599
        checks: [udp]
      - id: calls-quic
        host: 203.0.113.9
        port: 443
        checks: [quic]
        sni: web.example.org
        path: /status
        function: status
"""


def every_path(text: str):
    """The outcome of each parsing path: streamed, composed by libyaml, PyYAML alone."""

    def outcome():
        try:
            return parse_targets(text, source="t.yaml")
        except TargetsError as error:
            return str(error)

    saved = targets_module._compose_fast, targets_module._parse_streaming
    results = [outcome()]
    try:
        targets_module._parse_streaming = lambda *_: None
        results.append(outcome())
        targets_module._compose_fast = lambda _: targets_module._FAST_FAILED
        results.append(outcome())
    finally:
        targets_module._compose_fast, targets_module._parse_streaming = saved
    return results


def test_the_checks_and_functions_come_from_the_vocabulary():
    assert CHECKS == tuple(c.value for c in Check)
    assert {"stun", "turn", "udp", "quic"} <= set(CHECKS)
    assert FUNCTIONS == tuple(f.value for f in Function)


def test_udp_keys_load_identically_on_every_path():
    streamed, composed, pyyaml = every_path(UDP_FILE)
    assert streamed == composed == pyyaml
    assert targets_module._parse_streaming(UDP_FILE, targets_module._Parser("t.yaml", None)) \
        == streamed  # the streamed path did read it
    web, stun, flow, default, quic = streamed.endpoints()
    assert (web.function, web.checks) == ("web", ("dns", "tcp", "tls", "https"))
    assert (stun.function, stun.checks, stun.ports) == ("calls", ("dns", "stun", "turn"),
                                                         (3478, 596))
    assert (flow.function, flow.payload, flow.datagrams, flow.interval) == (
        "calls", "echo", 120, 0.05)
    assert (default.function, default.payload, default.datagrams, default.interval) == (
        None, "stun", 50, 0.1)
    assert (quic.checks, quic.sni, quic.path, quic.function) == (
        ("quic",), "web.example.org", "/status", "status")
    assert isinstance(flow.interval, float) and isinstance(streamed.endpoints()[0], Endpoint)


def test_a_whole_number_interval_is_seconds():
    text = UDP_FILE.replace("interval: 0.05", "interval: 1")
    assert {e.interval for e in parse_targets(text).endpoints()} == {1.0, 0.1}


def edit(old: str, new: str) -> str:
    assert old in UDP_FILE, old
    return UDP_FILE.replace(old, new, 1)


INVALID = [
    pytest.param(edit("function: calls", "function: voice"), 15,
                 "services[0].endpoints[1].function",
                 "unknown function 'voice'; choose from messaging, media, calls, "
                 "registration, web, status", id="unknown-function"),
    pytest.param(edit("function: web", "function: [web]"), 10,
                 "services[0].endpoints[0].function", "expected a single value, got a list",
                 id="function-not-text"),
    pytest.param(edit("checks: [dns, stun, turn]", "checks: [dns, tcp, stun]"), 14,
                 "services[0].endpoints[1].checks",
                 "mixes TCP checks (tcp) with UDP checks (stun); its ports cannot be both, "
                 "so split it into two endpoints", id="tcp-and-udp-mixed"),
    pytest.param(edit("checks: [dns, tcp, tls, https]", "checks: [tls, quic, https]"), 9,
                 "services[0].endpoints[0].checks",
                 "mixes TCP checks (tls, https) with UDP checks (quic)", id="tls-and-quic"),
    pytest.param(edit("checks: [dns, stun, turn]", "checks: [dns, stun, sip]"), 14,
                 "services[0].endpoints[1].checks[2]", "unknown check 'sip'; choose from dns, "
                 "tcp, tls, https, http, mtproto, download, stun, turn, udp, quic",
                 id="unknown-check"),
    pytest.param(edit("payload: echo", "payload: rtp"), 21,
                 "services[0].endpoints[2].payload",
                 "unknown payload 'rtp'; choose from stun, echo", id="unknown-payload"),
    pytest.param(edit("datagrams: 120", "datagrams: 501"), 22,
                 "services[0].endpoints[2].datagrams",
                 "501 is out of range (1-500 datagrams)", id="too-many-datagrams"),
    pytest.param(edit("datagrams: 120", "datagrams: 0"), 22,
                 "services[0].endpoints[2].datagrams",
                 "0 is out of range (1-500 datagrams)", id="no-datagrams"),
    pytest.param(edit("datagrams: 120", "datagrams: many"), 22,
                 "services[0].endpoints[2].datagrams",
                 "expected a whole number, got text", id="datagrams-not-a-number"),
    pytest.param(edit("interval: 0.05", "interval: 2.5"), 23,
                 "services[0].endpoints[2].interval",
                 "2.5 is out of range (0.01-1.0 seconds)", id="interval-too-long"),
    pytest.param(edit("interval: 0.05", "interval: 0.001"), 23,
                 "services[0].endpoints[2].interval",
                 "0.001 is out of range (0.01-1.0 seconds)", id="interval-too-short"),
    pytest.param(edit("interval: 0.05", "interval: yes"), 23,
                 "services[0].endpoints[2].interval",
                 "expected a number of seconds, got true", id="interval-not-a-number"),
    pytest.param(edit("        function: web\n", "        function: web\n        payload: stun\n"),
                 11, "services[0].endpoints[0].payload",
                 "'payload' sets the udp check's flow, but this endpoint has no udp check; "
                 "add 'udp' to its checks or remove the key", id="payload-without-udp"),
    pytest.param(edit("        function: calls\n        payload: echo\n",
                      "        function: calls\n        payload: echo\n        bogus: 1\n"),
                 22, "services[0].endpoints[2].bogus", "unknown key 'bogus'",
                 id="unknown-key-lists-new-keys"),
    pytest.param(edit("        sni: web.example.org\n", ""), 31,
                 "services[0].endpoints[4].checks",
                 "the quic check on the address 203.0.113.9 needs an 'sni'",
                 id="quic-on-an-address-without-sni"),
]


@pytest.mark.parametrize(("text", "line", "field", "message"), INVALID)
def test_invalid_udp_endpoints(text, line, field, message):
    with pytest.raises(TargetsError) as caught:
        parse_targets(text, source="targets.yaml")
    error = caught.value
    assert (error.line, error.field) == (line, field), str(error)
    assert message in error.message, str(error)
    assert str(error).startswith(f"targets.yaml line {line}, {field}: ")
    streamed, composed, pyyaml = every_path(text)
    assert streamed == composed == pyyaml


def test_unknown_key_error_lists_the_new_keys():
    with pytest.raises(TargetsError) as caught:
        parse_targets(edit("        function: web\n", "        functions: web\n"))
    assert "function, payload, datagrams, interval" in caught.value.message


def test_dns_goes_with_udp_checks_and_a_named_quic_host_is_its_own_sni():
    text = edit("        host: 203.0.113.9\n", "        host: h3.example.org\n")
    text = text.replace("        sni: web.example.org\n", "", 1)
    text = text.replace("checks: [quic]", "checks: [dns, quic]")
    quic = parse_targets(text).endpoints()[-1]
    assert (quic.checks, quic.sni) == (("dns", "quic"), "h3.example.org")
