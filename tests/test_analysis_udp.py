"""The pure analysis of UDP and QUIC endpoints, per-function status and the network-wide
findings (all UDP dropped, allowlist mode), on hand-built observations: each method with
the control succeeding, failing and absent."""

from __future__ import annotations

import dataclasses

import pytest
from test_analysis import GOOD, GOOD_DNS, ROUTABLE, T, observe, tls_port

from probe import analysis
from probe.net import failures as F
from probe.net.network import (
    IcmpError,
    QuicRequest,
    QuicResult,
    UdpReceived,
    UdpRequest,
    UdpResult,
    UdpSent,
)
from probe.observations import PortObservation, UdpCheck, Verdict
from probe.vocabulary import ServiceStatus, UdpNetwork, VerdictName

RELAY = "198.51.100.20"


def flow(check="stun", failure=None, answered=None, sent=1, address=RELAY, port=3478,
         received=None, icmp=()) -> UdpCheck:
    """A STUN/TURN exchange or a udp flow of ``sent`` datagrams, ``answered`` of them."""
    if answered is None:
        answered = () if failure in (F.GENERIC_TIMEOUT, F.CONNECTION_REFUSED,
                                     F.HOST_UNREACHABLE, F.NETWORK_UNREACHABLE,
                                     F.ADMINISTRATIVELY_PROHIBITED) else tuple(range(sent))
    request = UdpRequest(address, port, ("AAAA",) * sent, tuple(0.1 * i for i in range(sent)))
    if received is None:
        received = tuple(UdpReceived(0.1 * i + 0.05, "AAAA", 3) for i in answered)
    silence = failure if failure in F.UNREACHABLE else F.GENERIC_TIMEOUT
    network_failure = None if received else (icmp[0].failure if icmp else silence)
    result = UdpResult(request, tuple(UdpSent(0.1 * i, i) for i in range(sent)), received,
                       tuple(icmp), network_failure, T)
    return UdpCheck(check, result, tuple(answered), failure,
                    "192.0.2.1:4000" if check == "stun" and answered else None)


def udp_port(*checks: UdpCheck, address=RELAY, port=3478) -> PortObservation:
    return PortObservation(address, port, None, None, None, (), (), udp=tuple(checks))


def quic(failure=None, phase=None, packets=3, address="203.0.113.30", status=200,
         verification=None) -> PortObservation:
    if failure is not None and phase is None:
        phase = "handshake"
    handshake_done = phase != "handshake"
    result = QuicResult(
        QuicRequest("https://h3.example.org/", address, 443, "h3.example.org"), failure, phase,
        "0x00000001" if handshake_done else None, 0.05 if handshake_done else None,
        "TLSv1.3" if handshake_done else None, "h3" if handshake_done else None,
        ("AA==",) if handshake_done else (), status if failure is None else None, (), "", 0,
        packets if failure != F.GENERIC_TIMEOUT else 0, T)
    return PortObservation(address, 443, None, None, None, (), (), quic=result,
                           quic_verification=verification)


def ctx(control=None, **kwargs) -> analysis.Context:
    kwargs.setdefault("routable", ROUTABLE)
    return analysis.Context(control=control, **kwargs)


def judge(probe_port: PortObservation, control_port: PortObservation | None | str = "same",
          **kwargs) -> Verdict:
    """The verdict of one port; control ``"absent"``: no control at all."""
    probe = observe([probe_port], host=probe_port.address, addresses=(probe_port.address,))
    if control_port == "absent":
        control = None
    else:
        ports = [] if control_port is None else [control_port]
        control = {"ep": observe(ports, host=probe_port.address,
                                 addresses=(probe_port.address,))}
    (row,) = analysis.endpoint_verdicts(probe, ctx(control, **kwargs))
    return row


OK_STUN = udp_port(flow())
TIMEOUT_STUN = udp_port(flow(failure=F.GENERIC_TIMEOUT))


# --- UDP verdicts: the control rule ------------------------------------------


def test_stun_answered_is_ok():
    row = judge(OK_STUN, OK_STUN)
    assert (row.verdict, row.method, row.failure) == ("ok", None, None)


@pytest.mark.parametrize(("check", "failure", "method"), [
    ("stun", F.GENERIC_TIMEOUT, "udp.timeout"),
    ("turn", F.GENERIC_TIMEOUT, "udp.timeout"),
    ("stun", F.CONNECTION_REFUSED, "udp.unreachable"),  # ICMP port unreachable
    ("stun", F.HOST_UNREACHABLE, "udp.unreachable"),
    ("stun", F.ADMINISTRATIVELY_PROHIBITED, "udp.prohibited"),
    ("stun", F.STUN_INVALID_RESPONSE, "udp.invalid"),
    ("turn", F.TURN_NO_CHALLENGE, "udp.invalid"),
])
def test_udp_failures_need_the_control(check, failure, method):
    failing = udp_port(flow(check, failure=failure))
    working = udp_port(flow(check))
    row = judge(failing, working)
    assert (row.verdict, row.method, row.failure) == ("udp_blocked", method, failure)
    assert row.failed_operation == "udp_exchange"
    assert judge(failing, failing).verdict == "down"  # the relay is dead for the control too
    assert judge(failing, "absent").verdict == "inconclusive"
    assert judge(failing, None).verdict == "inconclusive"  # control did not measure it


def test_each_udp_check_is_compared_with_the_same_check():
    """STUN answered, TURN unanswered: TURN is judged against the control's TURN."""
    probe = udp_port(flow("stun"), flow("turn", failure=F.GENERIC_TIMEOUT))
    control_turn_dead = udp_port(flow("stun"), flow("turn", failure=F.GENERIC_TIMEOUT))
    control_ok = udp_port(flow("stun"), flow("turn"))
    assert (judge(probe, control_ok).verdict, judge(probe, control_ok).method) == (
        "udp_blocked", "udp.timeout")
    assert judge(probe, control_turn_dead).verdict == "down"
    assert judge(probe, udp_port(flow("stun"))).verdict == "inconclusive"  # no TURN there


def test_a_forged_stun_answer_is_conclusive_without_a_control():
    forged = udp_port(flow(failure=F.STUN_INJECTED, answered=(0,),
                           received=(UdpReceived(0.01, "AAAA", 3), UdpReceived(0.05, "BBBB", 3))))
    for control in ("absent", OK_STUN, None):
        row = judge(forged, control)
        assert (row.verdict, row.method) == ("udp_blocked", "udp.injected"), control
        assert "forged" in row.explanation


def test_a_flow_cut_after_its_first_datagrams_needs_the_control_answered_to_the_end():
    cut = udp_port(flow("udp", failure=F.UDP_FLOW_CUTOFF, answered=tuple(range(8)), sent=50),
                   port=1400)
    whole = udp_port(flow("udp", sent=50), port=1400)
    row = judge(cut, whole)
    assert (row.verdict, row.method, row.failure) == ("udp_blocked", "udp.cutoff",
                                                      F.UDP_FLOW_CUTOFF)
    assert "up to datagram 8 of 50" in row.explanation
    # the control's flow shorter than ours: it was not answered to our end
    short = udp_port(flow("udp", sent=20), port=1400)
    assert (judge(cut, short).verdict, judge(cut, short).method) == ("inconclusive",
                                                                      "udp.cutoff")
    # the control's flow cut too: the relay stops answering everyone
    assert judge(cut, cut).verdict == "down"
    assert judge(cut, "absent").verdict == "inconclusive"


def test_local_failures_and_network_down_stay_inconclusive():
    local = udp_port(flow(failure=F.LOCAL_RESOURCE_ERROR))
    assert judge(local, OK_STUN).verdict == "inconclusive"
    assert judge(TIMEOUT_STUN, OK_STUN, network_down=True).verdict == "inconclusive"


def test_ipv6_udp_without_ipv6_is_inconclusive():
    v6 = udp_port(flow(failure=F.NETWORK_UNREACHABLE, address="2001:db8::20"),
                  address="2001:db8::20")
    ok6 = udp_port(flow(address="2001:db8::20"), address="2001:db8::20")
    assert judge(v6, ok6, probe_has_ipv6=False).verdict == "inconclusive"
    assert judge(v6, ok6).method == "udp.unreachable"


# --- QUIC verdicts ------------------------------------------------------------


@pytest.mark.parametrize(("failure", "phase", "method"), [
    (F.GENERIC_TIMEOUT, "handshake", "quic.timeout"),
    (F.SSL_FAILED_HANDSHAKE, "handshake", "quic.handshake"),
    (F.QUIC_CONNECTION_CLOSED, "handshake", "quic.handshake"),
    (F.QUIC_VERSION_NEGOTIATION, "handshake", "quic.version"),
    (F.CONNECTION_REFUSED, "handshake", "quic.unreachable"),
    (F.HOST_UNREACHABLE, "handshake", "quic.unreachable"),
    (F.QUIC_STREAM_RESET, "http", "quic.reset"),
    (F.HTTP3_INVALID_RESPONSE, "http", "quic.http"),
    (F.GENERIC_TIMEOUT, "http", "quic.http"),
])
def test_quic_failures_need_the_control(failure, phase, method):
    failing = quic(failure, phase)
    row = judge(failing, quic())
    assert (row.verdict, row.method, row.failure) == ("quic_blocked", method, failure)
    assert row.failed_operation == ("http_transaction" if phase == "http" else "quic_handshake")
    assert judge(failing, failing).verdict == "down"
    assert judge(failing, "absent").verdict == "inconclusive"


def test_quic_http_failure_when_the_control_cannot_handshake_is_down():
    assert judge(quic(F.QUIC_STREAM_RESET, "http"), quic(F.GENERIC_TIMEOUT)).verdict == "down"


def test_quic_certificate_interception_is_the_tls_mitm_rule():
    mitm = quic(verification=F.SSL_UNKNOWN_AUTHORITY)
    row = judge(mitm, quic())
    assert (row.verdict, row.method) == ("quic_blocked", "quic.mitm")
    assert row.failed_operation == "quic_handshake"
    assert judge(mitm, "absent").verdict == "inconclusive"
    # against the service's own pinned root: conclusive without a control, as tls.mitm
    pinned = judge(mitm, "absent", pinned=frozenset({"ep"}))
    assert (pinned.verdict, pinned.method) == ("quic_blocked", "quic.mitm")
    assert "pinned" in pinned.explanation
    tls_pinned = judge(tls_port("203.0.113.1", verification=F.SSL_UNKNOWN_AUTHORITY), "absent",
                       pinned=frozenset({"ep"}))
    assert (tls_pinned.verdict, tls_pinned.method) == ("tls_blocked", "tls.mitm")


def test_quic_working_is_ok():
    assert judge(quic(), quic()).verdict == "ok"
    assert judge(quic(), "absent").verdict == "ok"


def test_a_valid_quic_handshake_proves_an_address():
    assert analysis._validated(quic())
    assert not analysis._validated(quic(verification=F.SSL_INVALID_HOSTNAME))
    assert not analysis._validated(quic(F.GENERIC_TIMEOUT))


# --- the whole network drops UDP: the explanation says so ----------------------


def test_udp_blocking_on_a_network_dropping_all_udp_says_so():
    row = judge(TIMEOUT_STUN, OK_STUN, udp_network=UdpNetwork.ALL_UDP_DROPPED)
    assert row.verdict == "udp_blocked"
    assert "drops all UDP, not only this service's" in row.explanation
    plain = judge(TIMEOUT_STUN, OK_STUN)
    assert "drops all UDP" not in plain.explanation
    # the control failing too is still down, whatever the network does
    down = judge(TIMEOUT_STUN, TIMEOUT_STUN, udp_network=UdpNetwork.ALL_UDP_DROPPED)
    assert down.verdict == "down" and "drops all UDP" not in down.explanation
    quic_row = judge(quic(F.GENERIC_TIMEOUT), quic(), udp_network=UdpNetwork.ALL_QUIC_DROPPED)
    assert "drops every QUIC handshake" in quic_row.explanation
    assert "QUIC" not in judge(TIMEOUT_STUN, OK_STUN,
                               udp_network=UdpNetwork.ALL_QUIC_DROPPED).explanation


# --- named results ---------------------------------------------------------------


def test_results_have_names_and_still_unpack():
    summary = analysis.service_status([judge(TIMEOUT_STUN, OK_STUN)])
    assert summary.status is ServiceStatus.BLOCKED
    status, explanation = summary
    assert (status, explanation) == (summary.status, summary.explanation)
    with pytest.raises(dataclasses.FrozenInstanceError):
        summary.status = ServiceStatus.OK  # type: ignore[misc]
    decision = analysis.dns_verdict(
        observe([], (), addresses=(), getaddrinfo=None), None, ctx(None))
    assert decision is None
    judgement = analysis._down_or_inconclusive("stun", F.GENERIC_TIMEOUT, RELAY, OK_STUN,
                                               ctx({}))
    assert judgement.verdict is VerdictName.UDP_BLOCKED and len(judgement) == 2


# --- per-function status -------------------------------------------------------


def row(endpoint: str, verdict: str, method: str | None = None) -> Verdict:
    return Verdict(endpoint, "svc", "h", RELAY, 3478, verdict, method, None, None, "")


FUNCTIONS = {"web": "web", "msg": "messaging", "call1": "calls", "call2": "calls",
             "media": "media", "plain": None}


def test_function_statuses_in_function_order_with_the_service_aggregation():
    rows = [
        row("call1", "udp_blocked", "udp.timeout"), row("call1", "udp_blocked", "udp.timeout"),
        row("call2", "udp_blocked", "udp.timeout"), row("call2", "udp_blocked", "udp.cutoff"),
        row("call2", "udp_blocked", "udp.timeout"), row("call2", "udp_blocked", "udp.timeout"),
        row("msg", "ok"), row("msg", "ok"),
        row("media", "ok"), row("media", "tls_blocked", "tls.timeout"),
        row("web", "down"),
        row("plain", "tcp_blocked", "tcp.timeout"),  # no function: counts for none
    ]
    verdicts = analysis.function_statuses(rows, FUNCTIONS)
    assert [(v.function, v.status) for v in verdicts] == [
        ("messaging", "ok"), ("media", "partially_blocked"), ("calls", "blocked"),
        ("web", "down"),
    ]
    calls = verdicts[2]
    assert calls.explanation == (
        "Calls: 6 of 6 measurements blocked (UDP to the call relays unanswered).")
    assert verdicts[1].explanation == (
        "Media: 1 of 2 measurements blocked (TLS handshakes time out), others work.")
    assert verdicts[0].explanation == "Messaging: reachable."
    assert verdicts[3].explanation.startswith("Web: down for the control too")
    assert analysis.function_statuses([row("plain", "ok")], FUNCTIONS) == ()
    only_inconclusive = analysis.function_statuses([row("msg", "inconclusive")], FUNCTIONS)
    assert [v.status for v in only_inconclusive] == ["inconclusive"]


# --- network-wide findings: UDP ---------------------------------------------------


BASE_STUN = "base-stun"


def baseline(*udp_ports: PortObservation, tcp_ok=True):
    web = observe([tls_port("203.0.113.1", connect_failure=None if tcp_ok
                            else F.GENERIC_TIMEOUT)], GOOD_DNS, endpoint="base-web")
    udp = observe(list(udp_ports), host=RELAY, addresses=(RELAY,), endpoint=BASE_STUN)
    return [web, udp]


def control_of(*udp_ports: PortObservation):
    return {"base-web": GOOD,
            BASE_STUN: observe(list(udp_ports), host=RELAY, addresses=(RELAY,),
                               endpoint=BASE_STUN)}


def test_all_udp_dropped_when_the_baseline_flows_go_unanswered_and_tcp_works():
    findings = analysis.network_findings(baseline(TIMEOUT_STUN), control_of(OK_STUN))
    assert findings.udp == UdpNetwork.ALL_UDP_DROPPED and not findings.restricted
    assert "drops all UDP" in findings.explanation
    # the control's own echo flow unanswered from here is enough
    reference = flow("udp", failure=F.GENERIC_TIMEOUT, sent=10, address="203.0.113.200")
    assert analysis.network_findings(baseline(), None, [reference]).udp == "all_udp_dropped"


def test_a_baseline_relay_dead_for_the_control_too_says_nothing():
    findings = analysis.network_findings(baseline(TIMEOUT_STUN), control_of(TIMEOUT_STUN))
    assert findings.udp == UdpNetwork.UNKNOWN


def test_without_a_control_two_silent_destinations_are_needed():
    other = udp_port(flow(failure=F.GENERIC_TIMEOUT, address="198.51.100.21"),
                     address="198.51.100.21")
    assert analysis.network_findings(baseline(TIMEOUT_STUN), None).udp == "unknown"
    assert analysis.network_findings(baseline(TIMEOUT_STUN, other), None).udp == \
        "all_udp_dropped"


def test_udp_unanswered_while_tcp_fails_too_is_not_a_udp_finding():
    findings = analysis.network_findings(baseline(TIMEOUT_STUN, tcp_ok=False),
                                         control_of(OK_STUN))
    assert findings.udp == UdpNetwork.UNKNOWN


def test_all_quic_dropped_and_ok():
    dropped = analysis.network_findings(baseline(OK_STUN, quic(F.GENERIC_TIMEOUT)),
                                        control_of(OK_STUN, quic()))
    assert dropped.udp == UdpNetwork.ALL_QUIC_DROPPED and "drops QUIC" in dropped.explanation
    # the control cannot handshake either: a dead server, not a policy
    dead = analysis.network_findings(baseline(OK_STUN, quic(F.GENERIC_TIMEOUT)),
                                     control_of(OK_STUN, quic(F.GENERIC_TIMEOUT)))
    assert dead.udp == UdpNetwork.OK
    working = analysis.network_findings(baseline(OK_STUN, quic()), control_of(OK_STUN, quic()))
    assert working.udp == UdpNetwork.OK and "QUIC handshakes work" in working.explanation
    assert analysis.network_findings(baseline(OK_STUN), None).udp == UdpNetwork.OK


def test_no_udp_measured_is_unknown():
    findings = analysis.network_findings(baseline(), control_of())
    assert findings == analysis.NetworkFindings(
        udp="unknown", restricted=False, explanation="No reference UDP flow was measured.")


def test_icmp_unreachable_flows_count_as_unanswered():
    icmp = IcmpError(0.01, F.CONNECTION_REFUSED, 3, 3, RELAY)
    refused = udp_port(flow(failure=F.CONNECTION_REFUSED, icmp=(icmp,)))
    assert analysis.network_findings(baseline(refused), control_of(OK_STUN)).udp == \
        "all_udp_dropped"


# --- network-wide findings: allowlist mode ------------------------------------------


def silent_tls(address: str) -> PortObservation:
    return tls_port(address, handshake=F.GENERIC_TIMEOUT)


def allowlist(evidence: analysis.NetworkEvidence, control=True, domestic=1, foreign=5):
    base = observe([silent_tls("203.0.113.1")], GOOD_DNS, endpoint="base-web")
    services = [observe([silent_tls(f"203.0.113.{10 + i}")], GOOD_DNS, endpoint=f"f{i}")
                for i in range(foreign)]
    services += [observe([tls_port(f"198.51.100.{50 + i}")], GOOD_DNS, endpoint=f"d{i}")
                 for i in range(domestic)]
    control_map = None
    if control:
        control_map = {"base-web": observe([tls_port("203.0.113.1")], GOOD_DNS)}
        control_map |= {f"f{i}": observe([tls_port(f"203.0.113.{10 + i}")], GOOD_DNS)
                        for i in range(foreign)}
    evidence.add([base], control_map, baseline=True)
    evidence.add(services, control_map)
    return base, services, control_map


def test_allowlist_mode_is_a_restricted_network_not_a_down_one():
    evidence = analysis.NetworkEvidence()
    base, services, control_map = allowlist(evidence)
    findings = analysis.network_findings([base], control_map, evidence=evidence)
    assert findings.restricted
    assert findings.explanation.startswith(
        "TCP connections open everywhere (7 of 7 destinations), but data passes to only 1 "
        "of 7 destinations: this network allows only a list of destinations.")
    # the rows stay what they are today: tls_blocked, tls.timeout
    rows = analysis.endpoint_verdicts(services[0], ctx(control_map))
    assert [(r.verdict, r.method) for r in rows] == [("tls_blocked", "tls.timeout")]
    # and with the control unreachable too, the baseline's open connects are not "down"
    assert not analysis.network_down([base], control_available=False)


def test_allowlist_mode_without_a_control_needs_some_destination_to_pass():
    evidence = analysis.NetworkEvidence()
    base, _, _ = allowlist(evidence, control=False)
    assert analysis.network_findings([base], None, evidence=evidence).restricted
    nothing_passes = analysis.NetworkEvidence()
    base, _, _ = allowlist(nothing_passes, control=False, domestic=0)
    assert not analysis.network_findings([base], None, evidence=nothing_passes).restricted


def test_a_few_silent_servers_are_not_an_allowlist():
    evidence = analysis.NetworkEvidence()
    base, _, control_map = allowlist(evidence, domestic=5, foreign=2)
    assert not analysis.network_findings([base], control_map, evidence=evidence).restricted
    # the baseline passing: a censor blocking many services, not an allowlist
    evidence = analysis.NetworkEvidence()
    evidence.add([GOOD], {"ep": GOOD}, baseline=True)
    foreign = [observe([silent_tls(f"203.0.113.{10 + i}")], GOOD_DNS, endpoint=f"f{i}")
               for i in range(6)]
    evidence.add(foreign, {o.endpoint_id: observe([tls_port(o.ports[0].address)], GOOD_DNS)
                           for o in foreign})
    assert len(evidence.control_passed) == 6 and evidence.restricted(True) is None
    evidence.add([observe([silent_tls("203.0.113.1")], GOOD_DNS)], None, baseline=True)
    assert evidence.restricted(True) is None  # it passed once: not filtered


def test_allowlist_needs_the_control_to_pass_where_we_time_out():
    evidence = analysis.NetworkEvidence()
    base = observe([silent_tls("203.0.113.1")], GOOD_DNS, endpoint="base-web")
    foreign = [observe([silent_tls(f"203.0.113.{10 + i}")], GOOD_DNS, endpoint=f"f{i}")
               for i in range(5)]
    dead = {o.endpoint_id: o for o in [base, *foreign]}  # the control times out too
    evidence.add([base], dead, baseline=True)
    evidence.add(foreign, dead)
    assert evidence.restricted(control_available=True) is None


def test_connects_failing_is_not_an_allowlist():
    evidence = analysis.NetworkEvidence()
    evidence.add([observe([tls_port(f"203.0.113.{i}", connect_failure=F.GENERIC_TIMEOUT)],
                          GOOD_DNS, endpoint=f"e{i}") for i in range(1, 6)], None,
                 baseline=True)
    assert evidence.restricted(False) is None


def test_a_loopback_connect_is_no_proof_the_network_is_up():
    local = observe([tls_port("127.0.0.1", handshake=F.GENERIC_TIMEOUT)],
                    (), addresses=("127.0.0.1",))
    assert analysis.network_down([local], control_available=False)


def test_udp_answered_by_any_service_means_udp_is_not_all_dropped():
    evidence = analysis.NetworkEvidence()
    service = observe([OK_STUN], host=RELAY, addresses=(RELAY,), endpoint="svc-stun")
    evidence.add([service], None)
    findings = analysis.network_findings(baseline(TIMEOUT_STUN), control_of(OK_STUN),
                                         evidence=evidence)
    assert findings.udp == UdpNetwork.OK
    # a QUIC handshake that worked anywhere: QUIC is not dropped wholesale
    evidence.add([observe([quic(address="203.0.113.31")], endpoint="svc-h3")], None)
    findings = analysis.network_findings(baseline(OK_STUN, quic(F.GENERIC_TIMEOUT)),
                                         control_of(OK_STUN, quic()), evidence=evidence)
    assert findings.udp == UdpNetwork.OK
    assert evidence.quic_worked == {"203.0.113.31"}


def test_ipv6_evidence_from_udp_flows():
    no_route = udp_port(flow(failure=F.NETWORK_UNREACHABLE, address="2001:db8::20"),
                        address="2001:db8::20")
    answered = udp_port(flow(address="2001:db8::21"), address="2001:db8::21")
    silent = udp_port(flow(failure=F.GENERIC_TIMEOUT, address="2001:db8::22"),
                      address="2001:db8::22")
    assert analysis.has_ipv6([observe([no_route])]) is False
    assert analysis.has_ipv6([observe([no_route]), observe([answered])]) is True
    assert analysis.has_ipv6([observe([silent])]) is True  # a filter, not a missing route
    assert analysis.has_ipv6([observe([quic(address="2001:db8::23")])]) is True


def test_a_quic_endpoint_can_prove_or_disprove_its_dns_answers():
    """A forged answer on a QUIC-only endpoint: no certificate for the name came back
    from the resolver's address, so it is dns.inconsistent; a valid one proves it."""
    from test_analysis import exchange, reply

    forged = observe([quic(F.GENERIC_TIMEOUT, address="203.0.113.66")],
                     (exchange(reply("203.0.113.66")),), host="h3.example.org")
    control = {"ep": observe([quic(address="203.0.113.30")], (exchange(reply("203.0.113.30")),),
                             host="h3.example.org")}
    (row,) = analysis.endpoint_verdicts(forged, ctx(control))
    assert (row.verdict, row.method) == ("dns_blocked", "dns.inconsistent")
    cdn = observe([quic(address="203.0.113.66")], (exchange(reply("203.0.113.66")),),
                  host="h3.example.org")
    assert [r.verdict for r in analysis.endpoint_verdicts(cdn, ctx(control))] == ["ok"]


def test_a_forged_public_answer_for_a_call_relay_is_dns_inconsistent():
    # The Great Firewall's forged public address for a STUN-only endpoint: nothing
    # answers STUN there for the control either, while the control's own answer
    # does. Nothing on UDP proves an address (no certificate), so the control's
    # reachability decides, as for a TCP-only endpoint.
    from test_analysis import exchange, one, reply

    probe = observe([udp_port(flow(failure=F.GENERIC_TIMEOUT), address="203.0.113.99")],
                    (exchange(reply("203.0.113.99")),), endpoint="relay")
    control = observe([udp_port(flow(), address=RELAY),
                       udp_port(flow(failure=F.GENERIC_TIMEOUT), address="203.0.113.99")],
                      (exchange(reply(RELAY)),), endpoint="relay")
    assert one(probe, ctx({"relay": control})) == ("dns_blocked", "dns.inconsistent")
    # another address of the relay that answers the control too: not DNS blocking
    other = observe([udp_port(flow(), address="203.0.113.99")],
                    (exchange(reply("203.0.113.99")),), endpoint="relay")
    control_other = observe([udp_port(flow(), address=RELAY),
                             udp_port(flow(), address="203.0.113.99")],
                            (exchange(reply(RELAY)),), endpoint="relay")
    assert one(other, ctx({"relay": control_other})) == ("ok", None)
