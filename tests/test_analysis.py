"""The pure analysis, on hand-built observations: every verdict and method, and the
places where we deliberately differ from OONI."""

from __future__ import annotations

import base64

import pytest

from probe import analysis
from probe.net import failures as F
from probe.net.network import (
    ConnectResult,
    DnsAnswer,
    DnsExchange,
    DnsQuery,
    DnsReply,
    GetaddrinfoResult,
    HttpRequest,
    HttpResult,
    MtprotoRequest,
    MtprotoResult,
    Timing,
    TlsRequest,
    TlsResult,
)
from probe.observations import EndpointObservation, MtprotoCheck, PortObservation

T = Timing(0.0, 0.1)
LAB = ("198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")
ROUTABLE = tuple(__import__("ipaddress").ip_network(n) for n in LAB)


def reply(*addresses: str, rcode: str = "NOERROR", t: float = 0.05) -> DnsReply:
    answers = tuple(
        DnsAnswer("AAAA" if ":" in a else "A", "x.test.", a, 60) for a in addresses
    )
    return DnsReply(t, rcode, answers, "")


def exchange(*replies: DnsReply, qtype: str = "A", transport: str = "udp",
             failure: str | None = None) -> DnsExchange:
    if failure is None and replies:
        failure = F.dns_rcode_failure(replies[0].rcode)
        if failure is None and not replies[0].answers:
            failure = F.DNS_NO_ANSWER
    if not replies and failure is None:
        failure = F.GENERIC_TIMEOUT
    return DnsExchange(DnsQuery("198.51.100.6", 53, "x.test", qtype, transport), replies,
                       failure, T)


def connect(address: str, port: int = 443, failure: str | None = None) -> ConnectResult:
    return ConnectResult(address, port, failure, T)


def tls_port(address: str, port: int = 443, connect_failure=None, handshake=None,
             verification=None, http: tuple = ()) -> PortObservation:
    c = connect(address, port, connect_failure)
    tls = None
    if connect_failure is None:
        tls = TlsResult(TlsRequest(address, port, "x.test"), c, handshake, "TLSv1.3",
                        "TLS_AES_128_GCM_SHA256", None, ("AA==",), T)
    return PortObservation(address, port, c, tls, verification, (), http)


def tcp_port(address: str, port: int = 5222, failure=None) -> PortObservation:
    return PortObservation(address, port, connect(address, port, failure), None, None, (), ())


def mtproto_port(address: str, port: int = 443, valid=True, failure=None,
                 connect_failure=None) -> PortObservation:
    c = connect(address, port, connect_failure)
    result = MtprotoResult(MtprotoRequest(address, port, "AAAA"), c, failure, "", T)
    return PortObservation(address, port, c, None, None,
                           (MtprotoCheck(result, valid, None if valid else "garbage"),), ())


def http_result(status=200, body=b"<title>Home</title>hello world " * 20, failure=None,
                throughput=None) -> HttpResult:
    return HttpResult(HttpRequest("http://x.test/", "203.0.113.1"), failure,
                      None if failure else status, (), base64.b64encode(body).decode(),
                      len(body), False, (), throughput, T)


def observe(ports=(), dns=(), addresses=None, getaddrinfo=None, host="x.test",
            endpoint="ep") -> EndpointObservation:
    if addresses is None:
        addresses = tuple(dict.fromkeys(p.address for p in ports))
    return EndpointObservation(endpoint, "svc", host, getaddrinfo, tuple(dns), tuple(addresses),
                               (), tuple(ports))


def context(control=None, **kwargs) -> analysis.Context:
    kwargs.setdefault("routable", ROUTABLE)
    kwargs.setdefault("tls_checked", frozenset({"ep"}))
    return analysis.Context(control=control, **kwargs)


def one(observation, ctx) -> tuple[str, str | None]:
    rows = analysis.endpoint_verdicts(observation, ctx)
    assert len(rows) == 1, rows
    return rows[0].verdict, rows[0].method


GOOD_DNS = (exchange(reply("203.0.113.1")),)
GOOD = observe([tls_port("203.0.113.1")], GOOD_DNS)


# --- DNS --------------------------------------------------------------------


def test_ok_everywhere():
    assert one(GOOD, context({"ep": GOOD})) == ("ok", None)


def test_success_is_ok_without_control():
    assert one(GOOD, context(None)) == ("ok", None)


def test_injected_dns_is_conclusive_without_control():
    # the Great Firewall: a forged answer wins the race, the real one arrives later
    dns = (exchange(reply("203.0.113.99", t=0.01), reply("203.0.113.1", t=0.08)),)
    observation = observe(
        [tls_port("203.0.113.1"), tls_port("203.0.113.99", handshake=F.GENERIC_TIMEOUT)], dns
    )
    assert one(observation, context(None)) == ("dns_blocked", "dns.injected")


@pytest.mark.parametrize("bogon", ["10.10.34.35", "127.0.0.1", "0.0.0.0", "::1", "fd00::1"])
def test_bogon_answer_is_conclusive_without_control(bogon):
    observation = observe([], (exchange(reply(bogon)),), addresses=())
    assert one(observation, context(None)) == ("dns_blocked", "dns.bogon")


def test_bogon_that_the_control_also_sees_is_not_blocking():
    observation = observe([], (exchange(reply("10.1.1.1")),), addresses=())
    control = observe([], (exchange(reply("10.1.1.1")),), addresses=())
    rows = analysis.endpoint_verdicts(observation, context({"ep": control}))
    assert all(r.verdict != "dns_blocked" for r in rows)


@pytest.mark.parametrize(
    "failure,method",
    [(F.DNS_NXDOMAIN, "dns.nxdomain"), (F.GENERIC_TIMEOUT, "dns.timeout"),
     (F.DNS_SERVFAIL, "dns.servfail"), (F.DNS_REFUSED, "dns.refused"),
     (F.DNS_NO_ANSWER, "dns.no_answer")],
)
def test_resolver_failures_need_a_control(failure, method):
    rcode = {F.DNS_NXDOMAIN: "NXDOMAIN", F.DNS_SERVFAIL: "SERVFAIL", F.DNS_REFUSED: "REFUSED"}
    if failure in rcode:
        dns = (exchange(reply(rcode=rcode[failure])),)
    elif failure == F.DNS_NO_ANSWER:
        dns = (exchange(reply()),)
    else:
        dns = (exchange(failure=F.GENERIC_TIMEOUT),)
    probe = observe([], dns, addresses=())
    assert one(probe, context(None)) == ("inconclusive", method)
    assert one(probe, context({"ep": GOOD})) == ("dns_blocked", method)
    dead = observe([], (exchange(reply(rcode="NXDOMAIN")),), addresses=())
    assert one(probe, context({"ep": dead})) == ("down", method)


def test_inconsistent_answers_not_validated_are_dns_blocked():
    probe = observe([tls_port("203.0.113.50", verification=F.SSL_INVALID_HOSTNAME)],
                    (exchange(reply("203.0.113.50")),))
    control = observe([tls_port("203.0.113.1"),
                       tls_port("203.0.113.50", verification=F.SSL_INVALID_HOSTNAME)],
                      GOOD_DNS)
    assert one(probe, context({"ep": control})) == ("dns_blocked", "dns.inconsistent")


def test_different_answers_that_validate_are_a_cdn_not_blocking():
    probe = observe([tls_port("203.0.113.70")], (exchange(reply("203.0.113.70")),))
    assert one(probe, context({"ep": GOOD})) == ("ok", None)


def test_network_down_makes_dns_failures_inconclusive():
    probe = observe([], (exchange(failure=F.NETWORK_UNREACHABLE),), addresses=())
    assert one(probe, context(None, network_down=True))[0] == "inconclusive"


def test_getaddrinfo_used_when_no_direct_resolver():
    probe = observe([], (), addresses=(),
                    getaddrinfo=GetaddrinfoResult("x.test", (), F.DNS_NXDOMAIN, T))
    assert one(probe, context({"ep": GOOD})) == ("dns_blocked", "dns.nxdomain")


# --- TCP / TLS / protocol / HTTP ---------------------------------------------


@pytest.mark.parametrize(
    "failure,method",
    [(F.GENERIC_TIMEOUT, "tcp.timeout"), (F.CONNECTION_RESET, "tcp.reset"),
     (F.CONNECTION_REFUSED, "tcp.refused"),
     # a router's REJECT with ICMP "administratively prohibited" (lab: icmp-prohibited)
     (F.ADMINISTRATIVELY_PROHIBITED, "tcp.prohibited")],
)
def test_connect_failures(failure, method):
    probe = observe([tls_port("203.0.113.1", connect_failure=failure)], GOOD_DNS)
    assert one(probe, context({"ep": GOOD})) == ("tcp_blocked", method)
    assert one(probe, context(None)) == ("inconclusive", method)
    dead = observe([tls_port("203.0.113.1", connect_failure=failure)], GOOD_DNS)
    assert one(probe, context({"ep": dead})) == ("down", method)


@pytest.mark.parametrize(
    "failure,method",
    [(F.CONNECTION_RESET, "tls.reset"), (F.GENERIC_TIMEOUT, "tls.timeout"),
     (F.EOF_ERROR, "tls.eof"), (F.SSL_FAILED_HANDSHAKE, "tls.alert")],
)
def test_tls_handshake_failures(failure, method):
    probe = observe([tls_port("203.0.113.1", handshake=failure)], GOOD_DNS)
    assert one(probe, context({"ep": GOOD})) == ("tls_blocked", method)


def test_mitm_certificate_with_control_is_tls_blocked():
    # Kazakhstan 2019: a certificate for the right name from a root nobody trusts
    probe = observe([tls_port("203.0.113.1", verification=F.SSL_UNKNOWN_AUTHORITY)], GOOD_DNS)
    assert one(probe, context({"ep": GOOD})) == ("tls_blocked", "tls.mitm")
    assert one(probe, context(None)) == ("inconclusive", "tls.mitm")


def test_pin_failure_is_conclusive_without_control():
    probe = observe([tls_port("203.0.113.1", verification=F.SSL_UNKNOWN_AUTHORITY)], GOOD_DNS)
    assert one(probe, context(None, pinned=frozenset({"ep"}))) == ("tls_blocked", "tls.mitm")


def test_mtproto_valid_is_ok_and_invalid_is_protocol_blocked():
    probe_ok = observe([mtproto_port("203.0.113.11")], host="203.0.113.11")
    assert one(probe_ok, context({"ep": probe_ok})) == ("ok", None)
    probe_bad = observe([mtproto_port("203.0.113.11", valid=False, failure=F.GENERIC_TIMEOUT)],
                        host="203.0.113.11")
    assert one(probe_bad, context({"ep": probe_ok})) == ("protocol_blocked", "protocol.timeout")
    assert one(probe_bad, context({"ep": probe_bad})) == ("down", "protocol.timeout")


def test_open_port_without_valid_res_pq_is_not_ok():
    # an open port is not proof of Telegram: a valid resPQ is
    probe = observe([mtproto_port("203.0.113.11", valid=False)], host="203.0.113.11")
    control = observe([mtproto_port("203.0.113.11")], host="203.0.113.11")
    assert one(probe, context({"ep": control})) == ("protocol_blocked", "protocol.invalid")


def test_known_blockpage_is_conclusive():
    page = b'<html><iframe src="http://10.10.34.34?type=Invalid Site"></iframe></html>'
    port = tls_port("203.0.113.1", http=(http_result(403, page),))
    probe = observe([port], GOOD_DNS)
    assert one(probe, context(None)) == ("http_blocked", "http.blockpage")


def test_status_differing_from_control_is_blockpage():
    probe = observe([tls_port("203.0.113.1", http=(http_result(403, b"denied"),))], GOOD_DNS)
    control = observe([tls_port("203.0.113.1", http=(http_result(200),))], GOOD_DNS)
    assert one(probe, context({"ep": control})) == ("http_blocked", "http.blockpage")
    # the same 403 for the control: that's the site, not a censor
    control_403 = observe([tls_port("203.0.113.1", http=(http_result(403, b"denied"),))], GOOD_DNS)
    assert one(probe, context({"ep": control_403})) == ("ok", None)


def test_http_reset_with_control_ok():
    probe = observe([tls_port("203.0.113.1", http=(http_result(failure=F.CONNECTION_RESET),))],
                    GOOD_DNS)
    control = observe([tls_port("203.0.113.1", http=(http_result(),))], GOOD_DNS)
    assert one(probe, context({"ep": control})) == ("http_blocked", "http.reset")


# --- throttling ---------------------------------------------------------------


def test_throttled_needs_both_ratio_and_floor():
    slow = observe([tls_port("203.0.113.1", http=(http_result(throughput=18_000),))], GOOD_DNS)
    fast = observe([tls_port("203.0.113.1", http=(http_result(throughput=5_000_000),))], GOOD_DNS)
    assert one(slow, context({"ep": fast})) == ("throttled", "throttle")
    # the control is slow too: not throttling
    assert one(slow, context({"ep": slow})) == ("ok", None)
    # the volunteer's whole link is this slow: not throttling of the service
    assert one(slow, context({"ep": fast}, baseline_throughput_bps=20_000)) == ("ok", None)
    # the volunteer's own baseline transfer froze (0 bytes in its window): the link,
    # not the service, is what is slow
    assert one(slow, context({"ep": fast}, baseline_throughput_bps=0.0)) == ("ok", None)


# --- IPv6, network down, control failures --------------------------------------


def test_ipv6_failure_without_ipv6_connectivity_is_inconclusive():
    probe = observe([tls_port("2001:db8::1", connect_failure=F.NETWORK_UNREACHABLE)],
                    (exchange(reply("2001:db8::1"), qtype="AAAA"),))
    control = observe([tls_port("2001:db8::1")], (exchange(reply("2001:db8::1"), qtype="AAAA"),))
    assert one(probe, context({"ep": control}, probe_has_ipv6=False)) == (
        "inconclusive", "tcp.unreachable")
    assert one(probe, context({"ep": control}, probe_has_ipv6=True)) == (
        "tcp_blocked", "tcp.unreachable")


def test_has_ipv6():
    v6_fail = observe([tls_port("2001:db8::1", connect_failure=F.NETWORK_UNREACHABLE)])
    v6_ok = observe([tls_port("2001:db8::2")])
    assert analysis.has_ipv6([v6_fail]) is False
    assert analysis.has_ipv6([v6_fail, v6_ok]) is True
    assert analysis.has_ipv6([GOOD]) is True  # no IPv6 attempted: nothing to say


def test_network_down_makes_everything_inconclusive():
    probe = observe([tls_port("203.0.113.1", connect_failure=F.GENERIC_TIMEOUT)], GOOD_DNS)
    assert one(probe, context({"ep": GOOD}, network_down=True))[0] == "inconclusive"


def test_network_down_detection():
    dead_baseline = observe([tls_port("203.0.113.1", connect_failure=F.NETWORK_UNREACHABLE)],
                            GOOD_DNS)
    assert analysis.network_down([dead_baseline], control_available=False)
    assert not analysis.network_down([dead_baseline], control_available=True)
    assert not analysis.network_down([GOOD], control_available=False)


def test_failing_control_never_turns_success_into_blocked():
    dead_control = observe([tls_port("203.0.113.1", connect_failure=F.GENERIC_TIMEOUT)], GOOD_DNS)
    assert one(GOOD, context({"ep": dead_control})) == ("ok", None)


def test_control_missing_the_endpoint_is_inconclusive():
    probe = observe([tls_port("203.0.113.1", connect_failure=F.GENERIC_TIMEOUT)], GOOD_DNS)
    assert one(probe, context({}))[0] == "inconclusive"


def test_interrupted_endpoint_is_inconclusive():
    observation = EndpointObservation("ep", "svc", "x.test", None, (), (), (), (), True)
    rows = analysis.endpoint_verdicts(observation, context(None))
    assert [(r.verdict, r.failure) for r in rows] == [("inconclusive", "interrupted")]


# --- services -------------------------------------------------------------------


def rows(*verdicts):
    return [analysis.Verdict("e", "s", "h", None, None, v, None, None, None, "") for v in verdicts]


@pytest.mark.parametrize(
    "verdicts,status",
    [
        (("ok", "ok"), "ok"),
        (("tcp_blocked", "tcp_blocked"), "blocked"),
        (("tcp_blocked", "down"), "blocked"),
        # OONI calls Telegram "ok" when a single datacenter answers; we say partially
        (("tcp_blocked", "ok"), "partially_blocked"),
        (("down", "down"), "down"),
        (("inconclusive", "down"), "inconclusive"),
        (("ok", "inconclusive"), "ok"),
        (("throttled", "ok"), "partially_blocked"),
    ],
)
def test_service_status(verdicts, status):
    assert analysis.service_status(rows(*verdicts))[0] == status


def test_forged_public_answer_for_a_tcp_only_endpoint_is_inconsistent():
    # the Great Firewall answers with someone else's public address: nothing listens
    # there for the control either, while the control's own answer works
    probe = observe([tcp_port("203.0.113.99", failure=F.GENERIC_TIMEOUT)],
                    (exchange(reply("203.0.113.99")),), endpoint="wa")
    control = observe([tcp_port("203.0.113.5"),
                       tcp_port("203.0.113.99", failure=F.GENERIC_TIMEOUT)],
                      (exchange(reply("203.0.113.5")),), endpoint="wa")
    ctx = context({"wa": control}, tls_checked=frozenset())
    assert one(probe, ctx) == ("dns_blocked", "dns.inconsistent")
    # a CDN giving the probe another address that works for the control: not DNS blocking
    cdn = observe([tcp_port("203.0.113.99")], (exchange(reply("203.0.113.99")),), endpoint="wa")
    control_cdn = observe([tcp_port("203.0.113.5"), tcp_port("203.0.113.99")],
                          (exchange(reply("203.0.113.5")),), endpoint="wa")
    assert one(cdn, context({"wa": control_cdn}, tls_checked=frozenset())) == ("ok", None)


def test_redirect_to_another_host_that_the_control_does_not_get_is_a_blockpage():
    def redirect(location):
        return HttpResult(HttpRequest("http://x.test/", "203.0.113.1"), None, 302,
                          (("Location", location),), "", 0, False, (), None, T)

    probe = observe([tls_port("203.0.113.1", http=(redirect("http://warning.isp.example/"),))],
                    GOOD_DNS)
    control = observe([tls_port("203.0.113.1", http=(http_result(),))], GOOD_DNS)
    assert one(probe, context({"ep": control})) == ("http_blocked", "http.blockpage")
    # the site itself redirects everyone the same way: not blocking
    same = observe([tls_port("203.0.113.1", http=(redirect("https://www.x.test/"),))], GOOD_DNS)
    assert one(same, context({"ep": same})) == ("ok", None)


def test_the_probes_own_failures_are_never_blocking():
    # out of file descriptors (EMFILE), or a bug: the control succeeding proves nothing
    for failure in (F.LOCAL_RESOURCE_ERROR, F.UNKNOWN_PREFIX + "OSError: [Errno 24]"):
        probe = observe([tls_port("203.0.113.1", connect_failure=failure)], GOOD_DNS)
        assert one(probe, context({"ep": GOOD}))[0] == "inconclusive"
    probe = observe([], (exchange(failure=F.LOCAL_RESOURCE_ERROR),), addresses=())
    assert one(probe, context({"ep": GOOD}))[0] == "inconclusive"


def http_port(address: str, response: HttpResult, port: int = 80) -> PortObservation:
    return PortObservation(address, port, connect(address, port), None, None, (), (response,))


BLOCKPAGE_200 = b"<title>Access denied</title>This site is blocked."


def test_resolver_address_serving_a_blockpage_is_dns_inconsistent():
    # Indonesia / Turkey: the resolver answers (or CNAMEs to) its blockpage server's
    # public address. The server answers the control too when asked at that address,
    # so only the control's own addresses tell: another page there.
    probe = observe([http_port("203.0.113.250", http_result(body=BLOCKPAGE_200))],
                    (exchange(reply("203.0.113.250")),), endpoint="news")
    control = observe([http_port("203.0.113.61", http_result()),
                       http_port("203.0.113.250", http_result(body=BLOCKPAGE_200))],
                      (exchange(reply("203.0.113.61")),), endpoint="news")
    ctx = context({"news": control}, tls_checked=frozenset())
    assert one(probe, ctx) == ("dns_blocked", "dns.inconsistent")
    # without a control the unknown page proves nothing
    assert one(probe, context(None, tls_checked=frozenset())) == ("ok", None)


def test_cdn_address_serving_the_same_page_is_not_dns_blocking():
    probe = observe([http_port("203.0.113.99", http_result())],
                    (exchange(reply("203.0.113.99")),), endpoint="news")
    control = observe([http_port("203.0.113.61", http_result()),
                       http_port("203.0.113.99", http_result())],
                      (exchange(reply("203.0.113.61")),), endpoint="news")
    assert one(probe, context({"news": control}, tls_checked=frozenset())) == ("ok", None)
    # the control's own page failing gives no evidence either way
    failing = observe([http_port("203.0.113.61", http_result(failure=F.GENERIC_TIMEOUT))],
                      (exchange(reply("203.0.113.61")),), endpoint="news")
    assert one(probe, context({"news": failing}, tls_checked=frozenset())) == ("ok", None)


def test_a_frozen_transfer_is_throttled_and_a_frozen_server_is_not():
    # Russia's TSPU freezes flows inside their first TLS record: not one body byte in
    # the whole window (rate 0) while the control downloads fast
    def port(rate):
        return tls_port("203.0.113.1", http=(http_result(throughput=rate),))

    ctx = context({"ep": observe([port(50_000_000.0)], GOOD_DNS)},
                  baseline_throughput_bps=50_000_000.0)
    assert one(observe([port(0.0)], GOOD_DNS), ctx) == ("throttled", "throttle")
    # the server freezes everyone's transfers: the control's rate is 0 too
    frozen = context({"ep": observe([port(0.0)], GOOD_DNS)})
    assert one(observe([port(0.0)], GOOD_DNS), frozen) == ("ok", None)


def test_udp_lie_next_to_honest_tcp_answers_is_inconsistent():
    # a transparent DNS proxy diverts UDP port 53 to a lying resolver; DNS over TCP
    # still reaches the resolver asked (lab: dns-transparent-intercept). The union of
    # the answers shares the real address with the control; the UDP view does not.
    dns = (exchange(reply("203.0.113.200")), exchange(reply("203.0.113.1"), transport="tcp"))
    probe = observe([tls_port("203.0.113.200", connect_failure=F.GENERIC_TIMEOUT),
                     tls_port("203.0.113.1")], dns)
    control = observe([tls_port("203.0.113.1"),
                       tls_port("203.0.113.200", connect_failure=F.GENERIC_TIMEOUT)], GOOD_DNS)
    assert one(probe, context({"ep": control})) == ("dns_blocked", "dns.inconsistent")
    # without a control, nothing says which answer is true
    rows = analysis.endpoint_verdicts(probe, context(None))
    assert {r.verdict for r in rows} <= {"ok", "inconclusive"}


def test_a_cdn_answering_other_addresses_over_udp_is_not_blocking():
    # the same resolver rotating a CDN's pool: UDP and TCP differ, both are real
    dns = (exchange(reply("203.0.113.70")), exchange(reply("203.0.113.1"), transport="tcp"))
    probe = observe([tls_port("203.0.113.70"), tls_port("203.0.113.1")], dns)
    assert one_kind(probe, context({"ep": GOOD})) == {("ok", None)}
    # a view whose addresses were never measured (over the per-family cap) is no evidence
    unmeasured = observe([tls_port("203.0.113.1")], dns)
    assert one_kind(unmeasured, context({"ep": GOOD})) == {("ok", None)}


def test_a_udp_answer_that_is_down_for_the_control_too_is_not_evidence_alone():
    # an HTTP-only endpoint: the UDP-only address is unreachable for everyone but so is
    # the control's own address (the service is down): not a forged answer
    dns = (exchange(reply("203.0.113.99")), exchange(reply("203.0.113.5"), transport="tcp"))
    probe = observe([tcp_port("203.0.113.99", failure=F.GENERIC_TIMEOUT),
                     tcp_port("203.0.113.5", failure=F.GENERIC_TIMEOUT)], dns, endpoint="wa")
    control = observe([tcp_port("203.0.113.5", failure=F.GENERIC_TIMEOUT),
                       tcp_port("203.0.113.99", failure=F.GENERIC_TIMEOUT)],
                      (exchange(reply("203.0.113.5")),), endpoint="wa")
    rows = analysis.endpoint_verdicts(probe, context({"wa": control}, tls_checked=frozenset()))
    assert {r.verdict for r in rows} == {"down"}


def one_kind(observation, ctx) -> set[tuple[str, str | None]]:
    return {(r.verdict, r.method) for r in analysis.endpoint_verdicts(observation, ctx)}


def cname_reply(target: str, *addresses: str) -> DnsReply:
    answers = (DnsAnswer("CNAME", "x.test.", target, 60),) + reply(*addresses).answers
    return DnsReply(0.05, "NOERROR", answers, "")


def test_cname_to_a_known_blockpage_host_is_conclusive_without_control():
    # Indonesia: ISP resolvers CNAME blocked names to their Internet Positif host
    # (OONI blocking-fingerprints); the forged address may look like any server
    dns = (exchange(cname_reply("trustpositif.kominfo.go.id.", "203.0.113.250")),)
    probe = observe([tls_port("203.0.113.250", verification=F.SSL_INVALID_HOSTNAME)], dns)
    assert one(probe, context(None)) == ("dns_blocked", "dns.blockpage")
    sub = (exchange(cname_reply("a.b.internet-positif.org.", "203.0.113.250")),)
    assert one(observe([], sub, addresses=()), context(None)) == ("dns_blocked", "dns.blockpage")
    # a look-alike name is not the host
    other = (exchange(cname_reply("notwarning.or.kr.", "203.0.113.1")),)
    assert one(observe([tls_port("203.0.113.1")], other), context(None)) == ("ok", None)


def test_cname_to_a_blockpage_host_that_the_control_also_gets_is_not_blocking():
    # a hostile or odd name that points there for everyone: the control agrees, so
    # nothing blocks it here (the other rules still judge its addresses)
    dns = (exchange(cname_reply("warning.or.kr.", "203.0.113.1")),)
    probe = observe([tls_port("203.0.113.1")], dns)
    control = observe([tls_port("203.0.113.1")], dns)
    assert one(probe, context({"ep": control})) == ("ok", None)


def test_redirect_to_a_known_blockpage_host_is_conclusive_without_control():
    def redirect(location):
        return HttpResult(HttpRequest("http://x.test/", "203.0.113.1"), None, 302,
                          (("Location", location),), "", 0, False, (), None, T)

    probe = observe([tls_port("203.0.113.1", http=(redirect("http://warning.rt.ru/?id=1"),))],
                    GOOD_DNS)
    assert one(probe, context(None)) == ("http_blocked", "http.blockpage")
    # the same host named in a page's body link, without a redirect, is not a redirect
    fine = observe([tls_port("203.0.113.1", http=(http_result(
        body=b"<title>News</title>see https://warning.rt.ru/ for " + b"x" * 400),))], GOOD_DNS)
    assert one(fine, context(None)) == ("ok", None)


# --- third red-team round ------------------------------------------------------


def silent(qtype="A", transport="udp") -> DnsExchange:
    return exchange(qtype=qtype, transport=transport)  # no reply: a timeout


def system_answer(*addresses: str, failure=None) -> GetaddrinfoResult:
    return GetaddrinfoResult("x.test", addresses, failure, T)


def test_a_silent_foreign_resolver_is_not_dns_blocking_when_the_system_resolver_works():
    # Iran, China at times: UDP and TCP port 53 to foreign resolvers dropped, only the
    # ISP's resolver allowed (lab: dns-foreign-resolver-dropped). Every name, the
    # baseline's too, times out at the chosen resolver; apps resolve with the system's.
    dns = (silent(), silent("AAAA"), silent(transport="tcp"), silent("AAAA", "tcp"))
    probe = observe([tls_port("203.0.113.1")], dns, getaddrinfo=system_answer("203.0.113.1"))
    rows = analysis.endpoint_verdicts(probe, context({"ep": GOOD}))
    assert [(r.verdict, r.method) for r in rows] == [("ok", None)]
    assert "never answered" in rows[0].explanation
    # the system resolver's answers are judged like any other: a lie is still caught
    lying = observe([tls_port("203.0.113.200", handshake=F.GENERIC_TIMEOUT)], dns,
                    getaddrinfo=system_answer("203.0.113.200"))
    assert one(lying, context({"ep": GOOD})) == ("dns_blocked", "dns.inconsistent")
    # the system resolver fails too (one resolver dropping the name): dns_blocked as before
    both = observe([], dns, addresses=(), getaddrinfo=system_answer(failure=F.GENERIC_TIMEOUT))
    assert one(both, context({"ep": GOOD})) == ("dns_blocked", "dns.timeout")
    # the chosen resolver answered the baseline's names: its silence for this one name
    # is the name being dropped (a system resolver elsewhere that answers changes nothing)
    assert one(probe, context({"ep": GOOD}, resolver_reachable=True)) == (
        "dns_blocked", "dns.timeout")
    # a resolver that answers, even with an error, is not silent
    refused = (exchange(reply(rcode="REFUSED")),)
    answered = observe([tls_port("203.0.113.1")], refused,
                       getaddrinfo=system_answer("203.0.113.1"))
    assert one(answered, context({"ep": GOOD})) == ("dns_blocked", "dns.refused")


def test_a_resolver_answering_the_baseline_is_not_a_network_down():
    # Iran, November 2019: everything abroad unreachable, the ISP's resolver answers
    # (lab: whitelist-shutdown). Failures stay inconclusive; "network down" is false.
    abroad = observe([tls_port("203.0.113.1", connect_failure=F.GENERIC_TIMEOUT)], GOOD_DNS)
    assert not analysis.network_down([abroad], control_available=False)
    rows = analysis.endpoint_verdicts(abroad, context(None))
    assert {r.verdict for r in rows} == {"inconclusive"}
    # a resolver on this machine (a cache) proves nothing about the uplink
    cached = (DnsExchange(DnsQuery("127.0.0.53", 53, "x.test", "A", "udp"),
                          (reply("203.0.113.1"),), None, T),)
    local = observe([tls_port("203.0.113.1", connect_failure=F.GENERIC_TIMEOUT)], cached)
    assert analysis.network_down([local], control_available=False)
    # nothing answers at all: down
    dead = observe([], (silent(),), addresses=())
    assert analysis.network_down([dead], control_available=False)
    assert analysis.resolver_replied([abroad]) and not analysis.resolver_replied([dead])
