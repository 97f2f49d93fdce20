"""Property tests: arbitrary input gives a clean error or a valid result, never a crash.

- ``probe.net.dns.parse_reply`` over arbitrary bytes (and mutated real replies)
  always returns a DnsReply;
- ``probe.analysis``'s DNS functions over arbitrary exchanges, replies and
  answers (any strings) return a verdict or None;
- ``probe.control.protocol.parse_request`` and ``parse_response`` over
  arbitrary JSON (and near-valid messages with one field replaced) return a
  value or raise ProtocolError, and what they return holds only checked values.
"""

from __future__ import annotations

import copy
import ipaddress

import dns.message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from probe import analysis
from probe.control import protocol
from probe.net import dns as live_dns
from probe.net import failures as F
from probe.net.network import (
    DnsAnswer,
    DnsExchange,
    DnsQuery,
    DnsReply,
    GetaddrinfoResult,
    Timing,
    to_json,
)
from probe.observations import BLOCKED_VERDICTS, VERDICTS, EndpointObservation
from probe.targets import CHECKS

from .harness import LOOPBACK_NET
from .servers import dns_answer

FAST = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# --- DNS wire -------------------------------------------------------------------- #

SENT = dns.message.make_query("hostile.example", "A")


REAL_REPLY = dns_answer(SENT.to_wire(), ["127.0.0.1", "127.0.0.2"])


@st.composite
def mutated_replies(draw) -> bytes:
    """A real reply to SENT with bytes flipped, cut, or appended: close enough to
    valid to reach deep into the parser."""
    wire = bytearray(REAL_REPLY)
    for _ in range(draw(st.integers(1, 6))):
        position = draw(st.integers(0, len(wire) - 1))
        wire[position] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        wire = wire[: draw(st.integers(0, len(wire)))]
    return bytes(wire) + draw(st.binary(max_size=16))


@FAST
@given(st.one_of(st.binary(max_size=600), mutated_replies()))
def test_parse_reply_never_raises(wire):
    reply = live_dns.parse_reply(wire, SENT, 1.0)
    assert isinstance(reply, DnsReply)
    assert reply.failure in (None, F.DNS_INVALID_REPLY, F.DNS_WRONG_QUERY)
    assert len(reply.answers) <= live_dns.MAX_ANSWERS
    if reply.failure is not None:
        assert reply.answers == ()
    query = DnsQuery("127.0.0.1", 53, "hostile.example", "A")
    failure = live_dns.exchange_failure(query, (reply,))
    assert failure is None or isinstance(failure, str)


# --- analysis over arbitrary DNS observations ------------------------------------------ #

ADDRESSES = st.sampled_from([
    "127.0.0.1", "10.10.34.35", "0.0.0.0", "8.8.8.8", "149.154.167.51", "203.0.113.9",
    "::1", "::ffff:10.0.0.1", "2001:67c:4e8:f004::9", "fe80::1%eth0", "fe80::1%",
    "1.2.3.4.5", "", "not an address", "%", "256.1.1.1",
])
TEXT = st.one_of(st.text(max_size=12), ADDRESSES)
FLOATS = st.floats(allow_nan=True, allow_infinity=True)
FAILURES = st.one_of(st.none(), st.sampled_from([
    F.DNS_NXDOMAIN, F.DNS_SERVFAIL, F.DNS_REFUSED, F.DNS_NO_ANSWER, F.GENERIC_TIMEOUT,
    F.DNS_INVALID_REPLY, F.DNS_WRONG_QUERY, F.DNS_TRUNCATED, F.DNS_TEMPORARY,
]), st.text(max_size=12))

answers = st.builds(
    DnsAnswer,
    rrtype=st.one_of(st.sampled_from(["A", "AAAA", "CNAME", "TXT"]), st.text(max_size=5)),
    name=TEXT, value=TEXT, ttl=st.integers(-(2**31), 2**32),
)
replies = st.builds(
    DnsReply, t=FLOATS, rcode=st.one_of(st.sampled_from(["NOERROR", "NXDOMAIN", "SERVFAIL"]), TEXT),
    answers=st.lists(answers, max_size=4).map(tuple), raw=TEXT, failure=FAILURES,
)
queries = st.builds(
    DnsQuery, resolver=TEXT, port=st.integers(0, 65535), qname=TEXT,
    qtype=st.one_of(st.sampled_from(["A", "AAAA"]), st.text(max_size=5)),
    transport=st.one_of(st.sampled_from(["udp", "tcp"]), st.text(max_size=5)),
)
timings = st.builds(Timing, t0=FLOATS, t=FLOATS)
exchanges = st.builds(
    DnsExchange, query=queries, replies=st.lists(replies, max_size=4).map(tuple),
    failure=FAILURES, timing=timings,
)
getaddrinfo_results = st.one_of(st.none(), st.builds(
    GetaddrinfoResult, host=TEXT, addresses=st.lists(TEXT, max_size=3).map(tuple),
    failure=FAILURES, timing=timings,
))


@st.composite
def dns_observations(draw) -> EndpointObservation:
    return EndpointObservation(
        endpoint_id="e", service="s", host=draw(TEXT),
        getaddrinfo=draw(getaddrinfo_results),
        dns=tuple(draw(st.lists(exchanges, max_size=4))),
        addresses=tuple(draw(st.lists(TEXT, max_size=3))),
        unroutable_answers=tuple(draw(st.lists(TEXT, max_size=2))),
        ports=(),
    )


CONTEXTS = st.builds(
    lambda routable, down, ipv6: (routable, down, ipv6),
    st.sampled_from([(), LOOPBACK_NET, (ipaddress.ip_network("10.0.0.0/8"),)]),
    st.booleans(), st.booleans(),
)


@FAST
@given(dns_observations(), st.one_of(st.none(), dns_observations()), CONTEXTS)
def test_dns_analysis_gives_a_verdict_or_none(probe, control, context_args):
    routable, down, ipv6 = context_args
    context = analysis.Context(
        control=None if control is None else {"e": control}, routable=routable,
        network_down=down, probe_has_ipv6=ipv6, tls_checked=frozenset({"e"}),
    )
    for exchanges_ in (probe.dns, (control.dns if control else ())):
        assert isinstance(analysis.answers_of(exchanges_), list)
        assert analysis.injected(exchanges_) in (True, False)
    assert analysis.resolver_failure(probe) is None or isinstance(
        analysis.resolver_failure(probe), str)
    assert isinstance(analysis.resolved_addresses(probe), list)
    verdict = analysis.dns_verdict(probe, control, context)
    assert verdict is None or (len(verdict) == 4 and verdict[0] in VERDICTS)
    rows = analysis.endpoint_verdicts(probe, context)
    assert rows and all(row.verdict in VERDICTS for row in rows)


@settings(FAST)
@given(dns_observations())
def test_a_control_identical_to_the_probe_never_makes_dns_blocked(probe):
    """When the control saw exactly what the probe saw, it does not disagree: only
    conclusive local evidence (an injected second reply, a bogon answer) may block."""
    context = analysis.Context(control={"e": probe}, tls_checked=frozenset({"e"}))
    verdict = analysis.dns_verdict(probe, probe, context)
    if verdict is not None and verdict[0] in BLOCKED_VERDICTS:
        assert verdict[1] in ("dns.injected", "dns.bogon"), verdict


# --- the control protocol over arbitrary JSON ------------------------------------------ #

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)

VALID_REQUEST = {
    "version": 1, "timeout": 5, "trust_pem": None,
    "endpoints": [{
        "id": "e", "service": "s", "host": "example.org", "ports": [443],
        "checks": ["dns", "tls"], "sni": "example.org", "ca_pem": None, "path": "/",
        "addresses": ["149.154.167.51", "2001:67c:4e8:f004::9"],
    }],
}
REQUEST_PATHS = [("version",), ("timeout",), ("trust_pem",), ("endpoints",), ("endpoints", 0)] + [
    ("endpoints", 0, key) for key in VALID_REQUEST["endpoints"][0]
] + [("endpoints", 0, "ports", 0), ("endpoints", 0, "checks", 0),
     ("endpoints", 0, "addresses", 0)]

OBSERVATION = EndpointObservation(
    "e", "s", "example.org",
    GetaddrinfoResult("example.org", ("149.154.167.51",), None, Timing(0.0, 0.1)),
    (DnsExchange(DnsQuery("9.9.9.9", 53, "example.org", "A"),
                 (DnsReply(0.05, "NOERROR", (DnsAnswer("A", "example.org.", "149.154.167.51",
                                                       60),), "AAAA"),),
                 None, Timing(0.0, 0.1)),),
    ("149.154.167.51",), (), (),
)
VALID_RESPONSE = {
    "version": 1, "probe_address": "198.51.100.1", "helper": {"software_name": "probe-control"},
    "endpoints": {"e": {"endpoint_id": "e", "measured_at": "2026-01-01T00:00:00Z",
                        "helper": {}, "observation": to_json(OBSERVATION)}},
}
RESPONSE_PATHS = [("version",), ("probe_address",), ("endpoints",), ("endpoints", "e"),
                  ("endpoints", "e", "endpoint_id"), ("endpoints", "e", "observation")] + [
    ("endpoints", "e", "observation", key) for key in VALID_RESPONSE["endpoints"]["e"]
    ["observation"]
] + [("endpoints", "e", "observation", "dns", 0, "replies", 0, "answers", 0, "value"),
     ("endpoints", "e", "observation", "getaddrinfo", "timing", "t"),
     ("endpoints", "e", "signature")]


def _replace(message: dict, path: tuple, value) -> dict:
    changed = copy.deepcopy(message)
    target = changed
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return changed


def near_valid(message: dict, paths: list[tuple]):
    return st.builds(_replace, st.just(message), st.sampled_from(paths), JSON)


def _checked(query) -> None:
    """What parse_request returns holds only values it checked."""
    items = query.items if hasattr(query, "items") else query[0]
    for item in items:
        endpoint = item.endpoint
        assert all(isinstance(c, str) and c in CHECKS for c in endpoint.checks)
        assert all(isinstance(p, int) and 0 < p < 65536 for p in endpoint.ports)
        for address in item.addresses:
            assert isinstance(address, str)
            ipaddress.ip_address(address)
        assert isinstance(endpoint.host, str) and endpoint.host


def test_the_near_valid_messages_start_valid():
    _checked(protocol.parse_request(VALID_REQUEST))
    assert protocol.parse_response(VALID_RESPONSE).observations["e"] == OBSERVATION


@FAST
@given(st.one_of(JSON, near_valid(VALID_REQUEST, REQUEST_PATHS)))
def test_parse_request_returns_checked_values_or_protocol_error(body):
    try:
        query = protocol.parse_request(body)
    except protocol.ProtocolError:
        return
    _checked(query)


@FAST
@given(st.one_of(JSON, near_valid(VALID_RESPONSE, RESPONSE_PATHS)))
def test_parse_response_returns_a_value_or_protocol_error(body):
    try:
        parsed = protocol.parse_response(body)
    except protocol.ProtocolError:
        return
    assert all(isinstance(o, EndpointObservation) for o in parsed.observations.values())
    assert parsed.probe_address is None or isinstance(parsed.probe_address, str)
