"""OONI-format measurements of UDP flows, STUN/TURN, QUIC and per-function status.

Built from constructed observations and verdicts (report formatting is pure):
each measurement must load with OONI's own data models, QUIC handshakes must
sit in ``quic_handshakes`` as urlgetter writes them, HTTP/3 requests in
``requests`` marked as carried by QUIC, and every datagram of a flow must be
in ``udp_flows`` and ``network_events``.
"""

from __future__ import annotations

import base64

from probe.net import failures
from probe.net.network import (
    IcmpError,
    QuicRequest,
    QuicResult,
    Timing,
    UdpReceived,
    UdpRequest,
    UdpResult,
    UdpSent,
)
from probe.observations import (
    EndpointObservation,
    FunctionVerdict,
    NetworkFindings,
    PortObservation,
    ServiceVerdict,
    UdpCheck,
    Verdict,
)
from probe.report.ooni import build_measurement
from probe.targets import Endpoint, Service

from .test_ooni import CERT, TELEGRAM, check_loads_with_oonidata, meta

RELAY = "91.108.8.1"
FRONT = "149.154.167.99"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


REFLECTOR = Endpoint("telegram-reflector", "telegram", RELAY, (596, 1400), ("stun",), None,
                     None, role="reflector", function="calls")
FLOW = Endpoint("telegram-flow", "telegram", RELAY, (1400,), ("udp",), None, None,
                role="reflector", function="calls", payload="echo", datagrams=4)
WEB_QUIC = Endpoint("telegram-web-quic", "telegram", "web.telegram.org", (443,), ("quic",),
                    "web.telegram.org", None, role="web", function="web")
SERVICE = Service("telegram", "Telegram", "telegram", False, "",
                  TELEGRAM.endpoints + (REFLECTOR, FLOW, WEB_QUIC))

BINDING_REQUEST = b64(b"\x00\x01\x00\x00\x21\x12\xa4\x42" + b"t" * 12)
BINDING_SUCCESS = b64(b"\x01\x01\x00\x00\x21\x12\xa4\x42" + b"t" * 12)


def stun_port(port: int, answered: bool) -> PortObservation:
    request = UdpRequest(RELAY, port, (BINDING_REQUEST,), (0.0, 0.5, 1.5), stop_on_reply=True)
    if answered:
        result = UdpResult(request, (UdpSent(2.0, 0),), (UdpReceived(2.03, BINDING_SUCCESS, 20),),
                           (), None, Timing(2.0, 3.03))
        check = UdpCheck("stun", result, (0,), None, mapped_address="203.0.113.77")
    else:  # an ICMP port unreachable: the relay's port is closed, or a firewall says so
        result = UdpResult(
            request, (UdpSent(2.0, 0),), (),
            (IcmpError(2.01, failures.CONNECTION_REFUSED, 3, 3, RELAY),),
            failures.CONNECTION_REFUSED, Timing(2.0, 2.01),
        )
        check = UdpCheck("stun", result, (), failures.CONNECTION_REFUSED)
    return PortObservation(RELAY, port, None, None, None, (), (), udp=(check,))


def flow_port() -> PortObservation:
    """Four echo datagrams, the first two answered, then the flow is cut."""
    datagrams = tuple(b64(bytes([i]) * 160) for i in range(4))
    request = UdpRequest(RELAY, 1400, datagrams, (0.0, 0.1, 0.2, 0.3))
    sent = tuple(UdpSent(3.0 + 0.1 * i, i) for i in range(4))
    received = (UdpReceived(3.02, datagrams[0], 160), UdpReceived(3.12, datagrams[1], 160))
    result = UdpResult(request, sent, received, (), None, Timing(3.0, 4.3))
    check = UdpCheck("udp", result, (0, 1), failures.UDP_FLOW_CUTOFF)
    return PortObservation(RELAY, 1400, None, None, None, (), (), udp=(check,))


def quic_port(failure: str | None = None, phase: str | None = None) -> PortObservation:
    request = QuicRequest("https://web.telegram.org/", FRONT, 443, "web.telegram.org")
    handshake_ok = failure is None or phase == "http"
    body = b"<html>telegram</html>" if failure is None else b""
    result = QuicResult(
        request, failure, phase,
        "0x00000001" if handshake_ok else None, 0.045 if handshake_ok else None,
        "TLSv1.3" if handshake_ok else None, "h3" if handshake_ok else None,
        (CERT,) if handshake_ok else (), 200 if failure is None else None,
        (("content-type", "text/html"),) if failure is None else (),
        b64(body), len(body), 7 if handshake_ok else 0, Timing(5.0, 5.2),
    )
    return PortObservation(FRONT, 443, None, None, None, (), (), quic=result)


def observations(quic: PortObservation | None = None) -> list[EndpointObservation]:
    return [
        EndpointObservation(REFLECTOR.id, "telegram", RELAY, None, (), (RELAY,), (),
                            (stun_port(596, answered=False), stun_port(1400, answered=True))),
        EndpointObservation(FLOW.id, "telegram", RELAY, None, (), (RELAY,), (), (flow_port(),)),
        EndpointObservation(WEB_QUIC.id, "telegram", "web.telegram.org", None, (), (FRONT,), (),
                            (quic or quic_port(),)),
    ]


def verdict(endpoint: Endpoint, address: str, port: int, name: str, method=None, failure=None):
    return Verdict(endpoint.id, "telegram", endpoint.host, address, port, name, method, failure,
                   None if failure is None else "udp", f"{endpoint.id} {port}: {name}")


VERDICTS = [
    verdict(REFLECTOR, RELAY, 596, "udp_blocked", "udp.unreachable", failures.CONNECTION_REFUSED),
    verdict(REFLECTOR, RELAY, 1400, "ok"),
    verdict(FLOW, RELAY, 1400, "udp_blocked", "udp.cutoff", failures.UDP_FLOW_CUTOFF),
    verdict(WEB_QUIC, FRONT, 443, "ok"),
]
STATUS = ServiceVerdict("telegram", "partially_blocked", "calls are blocked")
FUNCTIONS = (
    FunctionVerdict("web", "ok", "the web front end answers over QUIC"),
    FunctionVerdict("calls", "blocked", "the call reflectors do not answer"),
)
NETWORK = NetworkFindings("ok", False, "a reference UDP flow and QUIC handshake worked")


def build(obs=None, rows=VERDICTS, functions=FUNCTIONS, network=NETWORK) -> dict:
    measurement = build_measurement(
        meta(), SERVICE, obs if obs is not None else observations(), rows, STATUS,
        None, 4.2, functions=functions, network=network,
    )
    check_loads_with_oonidata(measurement)
    return measurement


def test_quic_handshake_is_written_as_urlgetter_writes_it():
    handshakes = build()["test_keys"]["quic_handshakes"]
    assert handshakes == [{
        "network": "quic", "address": f"{FRONT}:443", "server_name": "web.telegram.org",
        "alpn": ["h3"], "t0": 5.0, "t": 5.2, "tls_version": "TLSv1.3", "cipher_suite": None,
        "negotiated_protocol": "h3",
        "peer_certificates": [{"format": "base64", "data": CERT}],
        "failure": None, "no_tls_verify": False, "quic_version": "0x00000001",
        "handshake_time": 0.045, "packets_received": 7, "tags": ["endpoint:telegram-web-quic"],
    }]


def test_http3_request_is_in_requests_marked_as_quic():
    requests = build()["test_keys"]["requests"]
    (http3,) = [r for r in requests if r["request"]["x_transport"] == "quic"]
    assert http3["network"] == "quic" and http3["alpn"] == "h3"
    assert http3["request"]["url"] == "https://web.telegram.org/"
    assert http3["response"]["code"] == 200
    assert http3["response"]["body"] == "<html>telegram</html>"
    assert http3["failure"] is None
    assert all(r["request"]["x_transport"] == "tcp" for r in requests if r is not http3)


def test_quic_certificate_failure_fails_the_handshake_and_sends_no_request():
    port = quic_port()
    forged = PortObservation(port.address, port.port, None, None, None, (), (),
                             quic=port.quic, quic_verification=failures.SSL_UNKNOWN_AUTHORITY)
    m = build(observations(forged))
    (handshake,) = m["test_keys"]["quic_handshakes"]
    assert handshake["failure"] == failures.SSL_UNKNOWN_AUTHORITY
    assert handshake["peer_certificates"] == [{"format": "base64", "data": CERT}]


def test_quic_silence_writes_a_failed_handshake_and_no_request():
    m = build(observations(quic_port(failures.GENERIC_TIMEOUT, "handshake")))
    (handshake,) = m["test_keys"]["quic_handshakes"]
    assert handshake["failure"] == failures.GENERIC_TIMEOUT
    assert handshake["packets_received"] == 0 and handshake["quic_version"] is None
    assert not [r for r in m["test_keys"]["requests"] if r["request"]["x_transport"] == "quic"]
    events = [e for e in m["test_keys"]["network_events"] if e["operation"].startswith("quic")]
    assert [(e["operation"], e["failure"]) for e in events] == [
        ("quic_handshake_start", None), ("quic_handshake_done", failures.GENERIC_TIMEOUT),
    ]


def test_http3_stream_reset_is_the_requests_failure_not_the_handshakes():
    m = build(observations(quic_port(failures.QUIC_STREAM_RESET, "http")))
    (handshake,) = m["test_keys"]["quic_handshakes"]
    assert handshake["failure"] is None
    (http3,) = [r for r in m["test_keys"]["requests"] if r["request"]["x_transport"] == "quic"]
    assert http3["failure"] == failures.QUIC_STREAM_RESET and http3["response"]["code"] == 0


def test_udp_flows_record_what_was_sent_what_came_back_and_the_judgement():
    flows = build()["test_keys"]["udp_flows"]
    assert [(f["check"], f["address"], f["failure"]) for f in flows] == [
        ("stun", f"{RELAY}:596", failures.CONNECTION_REFUSED),
        ("stun", f"{RELAY}:1400", None),
        ("udp", f"{RELAY}:1400", failures.UDP_FLOW_CUTOFF),
    ]
    closed, answered, cut = flows
    assert closed["icmp_errors"] == [{"t": 2.01, "failure": failures.CONNECTION_REFUSED,
                                      "icmp_type": 3, "icmp_code": 3, "offender": RELAY}]
    assert closed["network_failure"] == failures.CONNECTION_REFUSED
    assert answered["received"] == [
        {"t": 2.03, "num_bytes": 20, "data": {"format": "base64", "data": BINDING_SUCCESS}}]
    assert answered["answered"] == [0] and answered["last_answered"] == 0
    assert answered["sent"] == [{"t": 2.0, "index": 0, "num_bytes": 20, "failure": None}]
    assert answered["mapped_address"] == "203.0.113.77"  # scrubbed before writing
    # the "cut after N datagrams" signature: answered at first, then no more
    assert cut["payload"] == "echo" and cut["datagrams"] == 4
    assert cut["answered"] == [0, 1] and cut["last_answered"] == 1
    assert [s["index"] for s in cut["sent"]] == [0, 1, 2, 3]
    # an echo flow's answers are our own bytes back: lengths and times, not the bytes
    assert [r["data"] for r in cut["received"]] == [None, None]
    assert [r["num_bytes"] for r in cut["received"]] == [160, 160]


def test_every_datagram_is_a_network_event():
    events = build()["test_keys"]["network_events"]
    udp = [e for e in events if e.get("proto") == "udp"]
    flow = [e for e in udp if e["tags"] == ["endpoint:telegram-flow"]]
    assert [e["operation"] for e in flow] == ["write_to", "read_from"] * 2 + ["write_to"] * 2
    assert all(e["address"] == f"{RELAY}:1400" and e["num_bytes"] == 160 for e in flow)
    refused = [e for e in udp if e["failure"] == failures.CONNECTION_REFUSED]
    assert [(e["operation"], e["address"]) for e in refused] == [("read_from", f"{RELAY}:596")]
    assert [e["t"] for e in events] == sorted(e["t"] for e in events)


def test_function_status_one_per_function_in_vocabulary_order():
    keys = build()["test_keys"]
    assert keys["function_status"] == {"calls": "blocked", "web": "ok"}
    assert list(keys["function_status"]) == ["calls", "web"]
    assert keys["function_explanations"]["calls"] == "the call reflectors do not answer"
    assert keys["service_status"] == {"status": "partially_blocked",
                                      "explanation": "calls are blocked"}


def test_network_findings_are_on_the_line():
    dropped = NetworkFindings("all_udp_dropped", False,
                              "This network drops all UDP: calls fail for every app")
    keys = build(network=dropped)["test_keys"]
    assert keys["udp_network"] == "all_udp_dropped"
    assert keys["restricted_network"] is False
    assert keys["network_explanation"].startswith("This network drops all UDP")
    restricted = NetworkFindings("ok", True, "Restricted network: data passes to 2 of 40 sites")
    keys = build(network=restricted)["test_keys"]
    assert keys["restricted_network"] is True and keys["udp_network"] == "ok"


def test_endpoints_extension_says_transport_and_function():
    entries = {(e["id"], e["port"]): e for e in build()["test_keys"]["endpoints"]}
    reflector = entries[("telegram-reflector", 596)]
    assert reflector["transport"] == "udp" and reflector["function"] == "calls"
    assert (reflector["verdict"], reflector["method"]) == ("udp_blocked", "udp.unreachable")
    assert entries[("telegram-web-quic", 443)]["transport"] == "udp"


def test_udp_verdicts_do_not_set_oonis_tcp_keys():
    # Calls blocked on the reflectors, every TCP datacenter fine: OONI's telegram
    # keys are about TCP and must say so.
    keys = build()["test_keys"]
    assert keys["telegram_tcp_blocking"] is None and keys["telegram_http_blocking"] is None
    tcp_rows = [
        Verdict(e.id, "telegram", e.host, e.host, 443, "ok", None, None, None, "ok")
        for e in TELEGRAM.endpoints if e.role == "datacenter"
    ]
    keys = build(rows=tcp_rows + VERDICTS)["test_keys"]
    assert keys["telegram_tcp_blocking"] is False and keys["telegram_http_blocking"] is False


def test_defaults_without_functions_or_findings():
    keys = build(functions=(), network=None)["test_keys"]
    assert keys["function_status"] == {}
    assert (keys["udp_network"], keys["restricted_network"]) == ("unknown", False)


def test_facebook_stun_role_is_reachability_not_tcp_blocking():
    # Facebook's STUN host (OONI's "stun" role) now measured with a real STUN
    # check: its drop says facebook_stun_reachable false, never TCP blocking.
    stun = Endpoint("fb-stun", "facebook_messenger", "157.240.5.7", (3478,), ("stun",), None,
                    None, role="stun", function="calls")
    service = Service("facebook_messenger", "Facebook Messenger", "facebook_messenger", False,
                      "", (stun,))
    row = Verdict(stun.id, "facebook_messenger", stun.host, stun.host, 3478, "udp_blocked",
                  "udp.timeout", failures.GENERIC_TIMEOUT, "udp", "no answer")
    m = build_measurement(meta(), service, [], [row],
                          ServiceVerdict(service.id, "blocked", "calls"), None, 1.0)
    check_loads_with_oonidata(m)
    keys = m["test_keys"]
    assert keys["facebook_stun_reachable"] is False
    assert keys["facebook_tcp_blocking"] is None


def test_staged_results_keep_udp_quic_functions_and_findings(tmp_path):
    # The report is written from results staged on disk: nothing new may be lost there.
    from probe.observations import ServiceResult
    from probe.report.staging import StagedResults

    result = ServiceResult("telegram", tuple(observations()), tuple(VERDICTS), STATUS, None, (),
                           False, functions=FUNCTIONS, network=NETWORK)
    with StagedResults(tmp_path) as staged:
        staged.add(result)
        (back,) = staged.in_order(["telegram"])
        assert staged.mapped_addresses == ["203.0.113.77"]  # the STUN check's, to scrub
    assert back == result
