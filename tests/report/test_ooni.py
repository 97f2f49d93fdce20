"""OONI-format measurements from hand-built observations.

Observations go through the real analysis (probe.analysis) to verdicts, then
through build_measurement; every measurement must load with OONI's own data
models (the ``oonidata`` package) with the exact field types those models
declare, and OONI's per-service keys must agree with our verdicts.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import ipaddress
import json
import re

import dns.message
import dns.rrset
import pytest
from ooni_loadable import check_fields  # tests/: OONI's models, with their exact types

from probe import analysis
from probe.net import failures
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
from probe.observations import (
    BLOCKED_VERDICTS,
    EndpointObservation,
    MtprotoCheck,
    PortObservation,
    ServiceVerdict,
    Verdict,
)
from probe.report.canonical import canonical_bytes
from probe.report.ooni import OONI_TEST_NAMES, RunMetadata, build_measurement, ooni_time
from probe.targets import Endpoint, Service

try:  # OONI's own data models: the point of these tests, so never skipped
    from oonidata.models.nettests import NETTEST_MODELS, BaseMeasurement
except ImportError as error:  # pragma: no cover - a missing test dependency
    raise ImportError(
        "tests/report/test_ooni.py needs OONI's data models: "
        "pip install --no-deps oonidata==0.3.0 && pip install mashumaro pyopenssl"
    ) from error

STARTED = datetime.datetime(2026, 11, 28, 2, 15, 0, 123456, tzinfo=datetime.UTC)
RESOLVER = ("192.0.2.53", 53)
CERT = base64.b64encode(b"\x30\x82\x01\x00fake-der").decode()


# --------------------------------------------------------------------------- #
# targets                                                                      #
# --------------------------------------------------------------------------- #


def endpoint(id, service, host, ports, checks, role=None, ca=None):
    sni = None if ":" in host or host.replace(".", "").isdigit() else host
    return Endpoint(id, service, host, tuple(ports), tuple(checks), sni, ca, role=role)


WEB = ("dns", "tcp", "tls", "https")
DC = ("tcp", "mtproto", "http")

TELEGRAM = Service("telegram", "Telegram", "telegram", False, "", (
    endpoint("telegram-dc1", "telegram", "149.154.175.50", (80, 443), DC, "datacenter"),
    endpoint("telegram-dc2", "telegram", "149.154.167.51", (80, 443), DC, "datacenter"),
    endpoint("telegram-web", "telegram", "web.telegram.org", (443,), WEB, "web"),
    endpoint("telegram-org", "telegram", "telegram.org", (443,), WEB, "website"),
))
WHATSAPP = Service("whatsapp", "WhatsApp", "whatsapp", False, "", (
    endpoint("whatsapp-e1", "whatsapp", "e1.whatsapp.net", (443, 5222), ("dns", "tcp"), "endpoint"),
    endpoint("whatsapp-e2", "whatsapp", "e2.whatsapp.net", (443, 5222), ("dns", "tcp"), "endpoint"),
    endpoint("whatsapp-registration", "whatsapp", "v.whatsapp.net", (443,), WEB, "registration"),
    endpoint("whatsapp-web", "whatsapp", "web.whatsapp.com", (443,), WEB, "web"),
))
SIGNAL = Service("signal", "Signal", "signal", False, "", (
    endpoint("signal-chat", "signal", "chat.signal.org", (443,), WEB, "chat", ca="PEM"),
    endpoint("signal-storage", "signal", "storage.signal.org", (443,), WEB, "storage", ca="PEM"),
))
FACEBOOK = Service("facebook_messenger", "Facebook Messenger", "facebook_messenger", False, "", (
    endpoint("fb-b-api", "facebook_messenger", "b-api.facebook.com", (443,),
             ("dns", "tcp", "tls"), "b_api"),
    endpoint("fb-b-graph", "facebook_messenger", "b-graph.facebook.com", (443,),
             ("dns", "tcp", "tls"), "b_graph"),
    endpoint("fb-edge", "facebook_messenger", "edge-mqtt.facebook.com", (443,),
             ("dns", "tcp", "tls"), "edge"),
    endpoint("fb-external", "facebook_messenger", "external.xx.fbcdn.net", (443,),
             ("dns", "tcp", "tls"), "external_cdn"),
    endpoint("fb-scontent", "facebook_messenger", "scontent.xx.fbcdn.net", (443,),
             ("dns", "tcp", "tls"), "scontent_cdn"),
    endpoint("fb-star", "facebook_messenger", "star.c10r.facebook.com", (443,),
             ("dns", "tcp", "tls"), "star"),
    endpoint("fb-stun", "facebook_messenger", "stun.fbsbx.com", (3478,), ("dns",), "stun"),
))
THREEMA = Service("threema", "Threema", "threema", False, "", (
    endpoint("threema-chat", "threema", "g-00.0.threema.ch", (5222,), ("dns", "tcp"), "chat"),
    endpoint("threema-website", "threema", "threema.ch", (443,), WEB, "website"),
))
SERVICES = {s.id: s for s in (TELEGRAM, WHATSAPP, SIGNAL, FACEBOOK, THREEMA)}

# One real-looking address per named host (none of them a bogon).
ADDRESS = {
    "web.telegram.org": "149.154.167.99", "telegram.org": "149.154.167.9",
    "e1.whatsapp.net": "157.240.1.53", "e2.whatsapp.net": "157.240.2.53",
    "v.whatsapp.net": "157.240.3.53", "web.whatsapp.com": "157.240.4.53",
    "chat.signal.org": "13.248.212.111", "storage.signal.org": "142.250.1.1",
    "b-api.facebook.com": "157.240.5.1", "b-graph.facebook.com": "157.240.5.2",
    "edge-mqtt.facebook.com": "157.240.5.3", "external.xx.fbcdn.net": "157.240.5.4",
    "scontent.xx.fbcdn.net": "157.240.5.5", "star.c10r.facebook.com": "157.240.5.6",
    "stun.fbsbx.com": "157.240.5.7", "g-00.0.threema.ch": "185.88.236.1",
    "threema.ch": "185.88.236.2",
}


# --------------------------------------------------------------------------- #
# observations                                                                 #
# --------------------------------------------------------------------------- #


def timing(t0: float, duration: float = 0.05) -> Timing:
    return Timing(t0, t0 + duration)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def wire_reply(host: str, qtype: str, addresses: tuple[str, ...]) -> str:
    query = dns.message.make_query(host, qtype)
    response = dns.message.make_response(query)
    if addresses:
        response.answer.append(dns.rrset.from_text(host + ".", 300, "IN", qtype, *addresses))
    return b64(response.to_wire())


def dns_exchange(host: str, *answer_sets: tuple[str, ...], failure=None, rcode="NOERROR"):
    """One UDP A query; each answer set is one reply (two sets: an injector raced)."""
    query = DnsQuery(RESOLVER[0], RESOLVER[1], host, "A", "udp")
    replies = tuple(
        DnsReply(
            0.10 + 0.01 * index, rcode,
            tuple(DnsAnswer("A", host, a, 300) for a in answers),
            wire_reply(host, "A", answers),
        )
        for index, answers in enumerate(answer_sets)
    )
    return DnsExchange(query, replies, failure, Timing(0.1, 1.1))


def connect(address, port, failure=None, t0=1.0):
    return ConnectResult(
        address, port, failure, timing(t0, 5.0 if failure == failures.GENERIC_TIMEOUT else 0.05)
    )


def port_observation(ep: Endpoint, address: str, port: int, step=None, failure=None):
    """Every check of ``ep`` on address:port, as the runner would record it; ``step``
    ("connect", "tls", "verify", "mtproto", "http") fails with ``failure``."""
    checks = set(ep.checks)
    tcp = connect(address, port, failure if step == "connect" else None)
    if tcp.failure is not None:
        tls_result = None
        if checks & {"tls", "https"} and port != 80:
            tls_result = TlsResult(TlsRequest(address, port, ep.sni), tcp, tcp.failure,
                                   None, None, None, (), timing(1.0))
        return PortObservation(address, port, tcp, tls_result, None, (), ())
    tls_result = verification = None
    mtproto_checks: tuple[MtprotoCheck, ...] = ()
    http: list[HttpResult] = []
    if "mtproto" in checks:
        ok = step != "mtproto"
        result = MtprotoResult(
            MtprotoRequest(address, port, b64(b"\xee" * 44)), tcp,
            None if ok else failure, b64(b"resPQ-bytes" if ok else b""), timing(1.1),
        )
        mtproto_checks = (MtprotoCheck(result, ok, None),)
        if not ok:
            return PortObservation(address, port, tcp, None, None, mtproto_checks, ())
    elif checks & {"tls", "https"}:
        handshake_failure = failure if step == "tls" else None
        tls_result = TlsResult(
            TlsRequest(address, port, ep.sni), tcp, handshake_failure,
            None if handshake_failure else "TLSv1.3",
            None if handshake_failure else "TLS_AES_128_GCM_SHA256",
            None if handshake_failure else "h2",
            () if handshake_failure else (CERT,), timing(1.0, 0.1),
        )
        if handshake_failure:
            return PortObservation(address, port, tcp, tls_result, None, (), ())
        if step == "verify":
            return PortObservation(address, port, tcp, tls_result, failure, (), ())
    scheme = None
    if "http" in checks and port == 80:
        scheme, method, body = "http", "POST", b64(b"probe")
    elif "https" in checks:
        scheme, method, body = "https", "GET", ""
    if scheme is not None:
        ok = step != "http"
        page = b"<html><title>ok</title></html>" if ok else b""
        http.append(HttpResult(
            HttpRequest(f"{scheme}://{ep.host}/", address, method,
                        (("User-Agent", "probe/test"),), body),
            None if ok else failure, 200 if ok else None,
            (("Content-Type", "text/html"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"))
            if ok else (),
            b64(page), len(page), False, (), None, timing(1.2, 0.2),
        ))
    return PortObservation(
        address, port, tcp, tls_result, verification, mtproto_checks, tuple(http)
    )


def observe(ep: Endpoint, step=None, failure=None, *, dns=None, addresses=None, bogons=()):
    """The observation of one endpoint: every port of every address."""
    if ep.host_is_address:
        exchanges, gai, measured = (), None, (ep.host,)
    else:
        default = ADDRESS[ep.host]
        measured = tuple(addresses) if addresses is not None else (default,)
        exchanges = (dns,) if dns is not None else (dns_exchange(ep.host, (default,)),)
        gai = GetaddrinfoResult(ep.host, (default,), None, Timing(0.1, 0.2))
    ports = ()
    if set(ep.checks) - {"dns"}:
        ports = tuple(
            port_observation(ep, address, port, step, failure)
            for address in measured for port in ep.ports
        )
    return EndpointObservation(ep.id, ep.service, ep.host, gai, exchanges, measured, bogons, ports)


def judge(service: Service, observations, control=None):
    """Our verdicts and service status for these observations (the real analysis)."""
    context = analysis.Context(
        control=control,
        pinned=frozenset(e.id for e in service.endpoints if e.ca_pem),
        tls_checked=frozenset(e.id for e in service.endpoints if {"tls", "https"} & set(e.checks)),
    )
    rows = [row for o in observations for row in analysis.endpoint_verdicts(o, context)]
    status, explanation = analysis.service_status(rows)
    return rows, ServiceVerdict(service.id, status, explanation)


def healthy_control(service: Service) -> dict[str, EndpointObservation]:
    return {ep.id: observe(ep) for ep in service.endpoints}


def meta(**changes) -> RunMetadata:
    values = {
        "report_id": "20261128T021500Z_probe_3f9c2a1b7d4e", "started_at": STARTED,
        "probe_asn": "AS64500", "probe_cc": "DE", "probe_network_name": "Example Net",
        "resolver_ip": "192.0.2.53", "resolver_asn": 64500, "clock_origin": 0.0,
    }
    values.update(changes)
    return RunMetadata(**values)


def measure(service: Service, observations, control=None, **meta_changes):
    rows, status = judge(service, observations, control)
    control_dict = None if control is None else {"source": "https://control.example/"}
    measurement = build_measurement(
        meta(**meta_changes), service, observations, rows, status, control_dict, 4.2
    )
    check_loads_with_oonidata(measurement)
    check_extension_matches(measurement, rows, status)
    return measurement, rows, status


# --------------------------------------------------------------------------- #
# OONI compatibility: load with oonidata, with the types its models declare    #
# --------------------------------------------------------------------------- #


def check_loads_with_oonidata(measurement: dict) -> None:
    model = NETTEST_MODELS.get(measurement["test_name"], BaseMeasurement)
    if measurement["test_name"] in OONI_TEST_NAMES:
        assert model is NETTEST_MODELS[measurement["test_name"]]
    line = json.loads(json.dumps(measurement, allow_nan=False))  # as read back from a file
    assert line == measurement
    check_fields(model, line, measurement["test_name"])
    loaded = model.from_dict(line)
    assert loaded.report_id == measurement["report_id"]
    assert loaded.test_name == measurement["test_name"]
    canonical_bytes(measurement)  # signable: RFC 8785 has a form for every value


def check_extension_matches(measurement: dict, rows: list[Verdict], status: ServiceVerdict):
    entries = measurement["test_keys"]["endpoints"]
    assert [(e["id"], e["address"], e["port"], e["verdict"], e["method"], e["failure"])
            for e in entries] == [
        (r.endpoint_id, r.address, r.port, r.verdict, r.method, r.failure) for r in rows
    ]
    assert measurement["test_keys"]["service_status"] == {
        "status": status.status, "explanation": status.explanation,
    }


def ooni_keys(measurement: dict, prefix: str) -> dict:
    return {k: v for k, v in measurement["test_keys"].items() if k.startswith(prefix)}


# --------------------------------------------------------------------------- #
# base keys                                                                    #
# --------------------------------------------------------------------------- #


def test_base_keys_follow_df_000():
    m, _, _ = measure(TELEGRAM, [observe(ep) for ep in TELEGRAM.endpoints])
    assert m["data_format_version"] == "0.2.0"
    assert m["measurement_start_time"] == m["test_start_time"] == "2026-11-28 02:15:00"
    assert m["test_name"] == "telegram" and m["input"] is None
    assert m["software_name"] == "probe" and m["annotations"]["engine_name"] == "probe"
    assert m["probe_ip"] == "127.0.0.1"
    assert (m["probe_asn"], m["probe_cc"], m["resolver_asn"]) == ("AS64500", "DE", "AS64500")
    assert m["test_runtime"] == 4.2
    assert m["annotations"]["analysis"] == "local-only"
    assert "incomplete" not in m["annotations"]
    assert all(isinstance(v, str) for v in m["annotations"].values())
    assert re.fullmatch(r"20261128021500\.123456_DE_telegram_[0-9a-f]{16}", m["measurement_uid"])


def test_unknown_location_is_ooni_unknown():
    m, _, _ = measure(THREEMA, [observe(ep) for ep in THREEMA.endpoints],
                      probe_asn=None, probe_cc=None, resolver_asn=None)
    assert (m["probe_asn"], m["probe_cc"], m["resolver_asn"]) == ("AS0", "ZZ", "AS0")


def test_measurement_uids_are_fresh():
    observations = [observe(ep) for ep in THREEMA.endpoints]
    rows, status = judge(THREEMA, observations)
    uids = {
        build_measurement(meta(), THREEMA, observations, rows, status, None, 1.0)["measurement_uid"]
        for _ in range(50)
    }
    assert len(uids) == 50


@pytest.mark.parametrize("changes, message", [
    ({"started_at": datetime.datetime(2026, 11, 28, 2, 15)}, "time zone"),
    ({"probe_asn": "Deutsche Telekom"}, "AS number"),
    ({"probe_cc": "DEU"}, "country code"),
])
def test_bad_metadata_is_refused(changes, message):
    observations = [observe(ep) for ep in THREEMA.endpoints]
    rows, status = judge(THREEMA, observations)
    with pytest.raises(ValueError, match=message):
        build_measurement(meta(**changes), THREEMA, observations, rows, status, None, 1.0)


def test_ooni_time_is_utc():
    tokyo = datetime.timezone(datetime.timedelta(hours=9))
    assert (
        ooni_time(datetime.datetime(2026, 11, 28, 11, 15, 0, tzinfo=tokyo)) == "2026-11-28 02:15:00"
    )


def test_times_are_relative_to_the_measurement_start():
    m, _, _ = measure(THREEMA, [observe(ep) for ep in THREEMA.endpoints], clock_origin=1.0)
    connects = m["test_keys"]["tcp_connect"]
    assert connects and all(c["t0"] == 0.0 and c["t"] == 0.05 for c in connects)


# --------------------------------------------------------------------------- #
# test_keys in OONI's data formats                                             #
# --------------------------------------------------------------------------- #


def test_queries_keep_every_reply_for_injection_evidence():
    ep = FACEBOOK.endpoints[0]
    injected = dns_exchange(ep.host, ("31.13.64.1",), ("157.240.5.1",))
    observation = observe(ep, dns=injected, addresses=("31.13.64.1", "157.240.5.1"))
    m, rows, _ = measure(FACEBOOK, [observation] + [observe(e) for e in FACEBOOK.endpoints[1:]])
    assert rows[0].method == "dns.injected"
    (query,) = [q for q in m["test_keys"]["queries"]
                if q["engine"] == "udp" and q["hostname"] == ep.host]
    assert query["resolver_address"] == "192.0.2.53:53"
    assert query["answers"] == [{"answer_type": "A", "ipv4": "31.13.64.1", "ttl": 300}]
    assert query["rcode"] == 0 and base64.b64decode(query["raw_response"])
    assert [(r["t"], r["answers"][0]["ipv4"]) for r in query["replies"]] == [
        (0.1, "31.13.64.1"), (0.11, "157.240.5.1"),
    ]
    assert query["t0"] == 0.1 and query["t"] == 0.1 and query["listened_until"] == 1.1
    reads = [e for e in m["test_keys"]["network_events"]
             if e["operation"] == "read_from" and "endpoint:fb-b-api" in e["tags"]]
    assert [e["t"] for e in reads] == [0.1, 0.11]
    system = [q for q in m["test_keys"]["queries"]
              if q["engine"] == "getaddrinfo" and q["hostname"] == ep.host]
    assert system[0]["query_type"] == "ANY" and system[0]["answers"][0]["ipv4"] == "157.240.5.1"


def test_dns_failure_is_recorded_as_a_query_failure():
    ep = THREEMA.endpoints[1]
    nxdomain = dns_exchange(ep.host, (), failure=failures.DNS_NXDOMAIN, rcode="NXDOMAIN")
    m, _rows, _ = measure(THREEMA, [observe(THREEMA.endpoints[0]),
                                   observe(ep, dns=nxdomain, addresses=())])
    query = next(q for q in m["test_keys"]["queries"]
                 if q["engine"] == "udp" and q["hostname"] == "threema.ch")
    assert query["failure"] == "dns_nxdomain_error" and query["rcode"] == 3
    assert query["answers"] == []


def test_tls_handshakes_carry_the_chain_and_the_verification_failure():
    chat, storage = SIGNAL.endpoints
    observations = [observe(chat, "verify", failures.SSL_UNKNOWN_AUTHORITY), observe(storage)]
    m, _rows, _ = measure(SIGNAL, observations)
    mitm, ok = m["test_keys"]["tls_handshakes"]
    assert mitm["server_name"] == "chat.signal.org"
    assert mitm["address"] == "13.248.212.111:443"
    assert mitm["failure"] == "ssl_unknown_authority" and mitm["no_tls_verify"] is False
    assert mitm["peer_certificates"] == [{"format": "base64", "data": CERT}]
    assert ok["failure"] is None and ok["tls_version"] == "TLSv1.3"
    assert ok["cipher_suite"] == "TLS_AES_128_GCM_SHA256" and ok["negotiated_protocol"] == "h2"


def test_requests_follow_df_001():
    m, _, _ = measure(THREEMA, [observe(ep) for ep in THREEMA.endpoints])
    (transaction,) = m["test_keys"]["requests"]
    assert transaction["request"]["url"] == "https://threema.ch/"
    assert transaction["request"]["headers"] == {"User-Agent": "probe/test"}
    response = transaction["response"]
    assert response["code"] == 200 and response["body"] == "<html><title>ok</title></html>"
    assert response["headers"]["Set-Cookie"] == "a=1"
    assert response["headers_list"][-2:] == [["Set-Cookie", "a=1"], ["Set-Cookie", "b=2"]]
    assert response["body_is_truncated"] is False
    assert transaction["address"] == "185.88.236.2:443"


def test_binary_bodies_are_base64_objects_and_failed_requests_have_code_zero():
    dc1 = TELEGRAM.endpoints[0]
    observation = observe(dc1)
    port80 = observation.ports[0]
    binary = dataclasses.replace(port80.http[0], body=b64(b"\xff\xfe\x00binary"))
    failed = dataclasses.replace(port80.http[0], failure=failures.CONNECTION_RESET,
                                 status=None, headers=(), body="")
    observation = dataclasses.replace(
        observation,
        ports=(dataclasses.replace(port80, http=(binary, failed)),) + observation.ports[1:],
    )
    m, _, _ = measure(TELEGRAM, [observation] + [observe(e) for e in TELEGRAM.endpoints[1:]])
    first, second = [r for r in m["test_keys"]["requests"] if r["address"] == "149.154.175.50:80"]
    assert first["request"]["method"] == "POST" and first["request"]["body"] == "probe"
    assert first["response"]["body"] == {"format": "base64", "data": b64(b"\xff\xfe\x00binary")}
    assert second["failure"] == "connection_reset" and second["response"]["code"] == 0


def test_tcp_connect_marks_blocked_only_with_evidence():
    e1, _e2 = WHATSAPP.endpoints[:2]
    timeout = failures.GENERIC_TIMEOUT
    local, _, _ = measure(WHATSAPP, [observe(e1, "connect", timeout)]
                          + [observe(e) for e in WHATSAPP.endpoints[1:]])
    controlled, _, _ = measure(WHATSAPP, [observe(e1, "connect", timeout)]
                               + [observe(e) for e in WHATSAPP.endpoints[1:]],
                               control=healthy_control(WHATSAPP))

    def statuses(m):
        return {(c["ip"], c["port"]): c["status"] for c in m["test_keys"]["tcp_connect"]}

    assert statuses(local)[("157.240.1.53", 443)] == {
        "success": False, "failure": "generic_timeout_error", "blocked": None}
    assert statuses(controlled)[("157.240.1.53", 443)]["blocked"] is True
    assert statuses(controlled)[("157.240.2.53", 5222)] == {
        "success": True, "failure": None, "blocked": False}


def test_one_tcp_connect_per_real_connection():
    # The runner stores the TLS handshake's connect as the port's connect: one entry.
    m, _, _ = measure(SIGNAL, [observe(ep) for ep in SIGNAL.endpoints])
    assert len(m["test_keys"]["tcp_connect"]) == 2
    connects = [e for e in m["test_keys"]["network_events"] if e["operation"] == "connect"]
    assert len(connects) == 2 and connects[0]["address"] == "13.248.212.111:443"


def test_network_events_are_time_ordered_df_008():
    m, _, _ = measure(TELEGRAM, [observe(ep) for ep in TELEGRAM.endpoints])
    events = m["test_keys"]["network_events"]
    assert events == sorted(events, key=lambda e: e["t"])
    assert {e["operation"] for e in events} >= {
        "resolve_start", "resolve_done", "read_from", "connect",
        "tls_handshake_start", "tls_handshake_done",
        "http_transaction_start", "http_transaction_done",
    }


def test_mtproto_exchanges_are_kept():
    m, _, _ = measure(TELEGRAM, [observe(ep) for ep in TELEGRAM.endpoints])
    exchanges = m["test_keys"]["mtproto"]
    assert len(exchanges) == 4 and all(e["valid"] for e in exchanges)
    assert exchanges[0]["address"] == "149.154.175.50:80" and exchanges[0]["sent_bytes"] == 44


def test_endpoints_extension_has_checks_and_roles():
    m, rows, _ = measure(TELEGRAM, [observe(ep) for ep in TELEGRAM.endpoints])
    entry = m["test_keys"]["endpoints"][0]
    assert entry == {
        "id": "telegram-dc1", "host": "149.154.175.50", "address": "149.154.175.50",
        "port": 80, "transport": "tcp", "role": "datacenter", "function": None,
        "checks": ["tcp", "mtproto", "http"],
        "verdict": "ok", "method": None, "failure": None, "failed_operation": None,
        "explanation": rows[0].explanation,
    }


def test_control_is_passed_through_and_never_mixed_into_the_probes_keys():
    control = healthy_control(THREEMA)
    observations = [observe(THREEMA.endpoints[0], "connect", failures.GENERIC_TIMEOUT),
                    observe(THREEMA.endpoints[1])]
    rows, status = judge(THREEMA, observations, control)
    given = {"source": "https://control.example/", "observations": {"threema-chat": "..."}}
    m = build_measurement(meta(), THREEMA, observations, rows, status, given, 1.0)
    assert m["test_keys"]["control"] == given
    assert m["annotations"]["analysis"] == "control"
    assert all(c["status"]["success"] is False for c in m["test_keys"]["tcp_connect"]
               if c["port"] == 5222)


def test_other_services_observations_are_ignored():
    observations = [observe(ep) for ep in THREEMA.endpoints + SIGNAL.endpoints]
    rows, status = judge(THREEMA, observations)
    m = build_measurement(meta(), THREEMA, observations, rows, status, None, 1.0)
    assert {e["id"] for e in m["test_keys"]["endpoints"]} == {"threema-chat", "threema-website"}
    assert all("signal" not in q["hostname"] for q in m["test_keys"]["queries"])


def test_no_local_address_anywhere():
    observations = [observe(ep) for ep in TELEGRAM.endpoints]
    m, _, _ = measure(TELEGRAM, observations)
    remote = {"127.0.0.1", RESOLVER[0], *ADDRESS.values(), *(e.host for e in TELEGRAM.endpoints)}
    text = json.dumps(m)
    for candidate in set(re.findall(r"\d{1,3}(?:\.\d{1,3}){3}", text)):
        ipaddress.ip_address(candidate)
        assert candidate in remote, f"{candidate} is not an address the probe measured"


def test_interrupted_runs_are_marked_incomplete():
    observations = [observe(THREEMA.endpoints[0]),
                    EndpointObservation("threema-website", "threema", "threema.ch",
                                        None, (), (), (), (), interrupted=True)]
    m, rows, _ = measure(THREEMA, observations)
    assert m["annotations"]["incomplete"] == "true"
    assert m["test_keys"]["failure"] is None
    assert rows[-1].failure == "interrupted"
    nothing = [EndpointObservation(e.id, e.service, e.host, None, (), (), (), (), interrupted=True)
               for e in SIGNAL.endpoints]
    m, _, _ = measure(SIGNAL, nothing)
    assert m["test_keys"]["failure"] == "interrupted"
    assert m["test_keys"]["signal_backend_status"] is None


# --------------------------------------------------------------------------- #
# OONI's per-service keys, consistent with our verdicts                        #
# --------------------------------------------------------------------------- #


def test_telegram_ok():
    m, _rows, status = measure(TELEGRAM, [observe(ep) for ep in TELEGRAM.endpoints])
    assert status.status == "ok"
    assert ooni_keys(m, "telegram_") == {
        "telegram_tcp_blocking": False, "telegram_http_blocking": False,
        "telegram_web_status": "ok", "telegram_web_failure": None,
    }


def test_telegram_one_datacenter_blocked_is_blocking_unlike_ooni():
    dc1 = TELEGRAM.endpoints[0]
    observations = [observe(dc1, "connect", failures.GENERIC_TIMEOUT)]
    observations += [observe(ep) for ep in TELEGRAM.endpoints[1:]]
    m, rows, status = measure(TELEGRAM, observations, control=healthy_control(TELEGRAM))
    assert status.status == "partially_blocked"
    assert {r.verdict for r in rows if r.endpoint_id == "telegram-dc1"} == {"tcp_blocked"}
    assert ooni_keys(m, "telegram_") == {
        "telegram_tcp_blocking": True, "telegram_http_blocking": True,
        "telegram_web_status": "ok", "telegram_web_failure": None,
    }


def test_telegram_blocked():
    dcs, web, org = TELEGRAM.endpoints[:2], TELEGRAM.endpoints[2], TELEGRAM.endpoints[3]
    observations = [observe(ep, "connect", failures.CONNECTION_RESET) for ep in dcs]
    observations += [observe(web, "tls", failures.CONNECTION_RESET),
                     observe(org, "tls", failures.CONNECTION_RESET)]
    m, _rows, status = measure(TELEGRAM, observations, control=healthy_control(TELEGRAM))
    assert status.status == "blocked"
    assert ooni_keys(m, "telegram_") == {
        "telegram_tcp_blocking": True, "telegram_http_blocking": True,
        "telegram_web_status": "blocked", "telegram_web_failure": "connection_reset",
    }


def test_telegram_mtproto_blocked_is_http_not_tcp_blocking():
    observations = [observe(ep, "mtproto", failures.CONNECTION_RESET)
                    for ep in TELEGRAM.endpoints[:2]]
    observations += [observe(ep) for ep in TELEGRAM.endpoints[2:]]
    m, rows, _status = measure(TELEGRAM, observations, control=healthy_control(TELEGRAM))
    assert {r.verdict for r in rows[:4]} == {"protocol_blocked"}
    assert m["test_keys"]["telegram_tcp_blocking"] is False
    assert m["test_keys"]["telegram_http_blocking"] is True


def test_telegram_without_control_is_inconclusive_not_blocked():
    observations = [observe(ep, "connect", failures.GENERIC_TIMEOUT) for ep in TELEGRAM.endpoints]
    m, _rows, status = measure(TELEGRAM, observations)
    assert status.status == "inconclusive"
    assert ooni_keys(m, "telegram_") == {
        "telegram_tcp_blocking": None, "telegram_http_blocking": None,
        "telegram_web_status": None, "telegram_web_failure": None,
    }


def test_telegram_down_for_everyone_is_not_blocking():
    observations = [observe(ep, "connect", failures.CONNECTION_REFUSED)
                    for ep in TELEGRAM.endpoints]
    control = {ep.id: observe(ep, "connect", failures.CONNECTION_REFUSED)
               for ep in TELEGRAM.endpoints}
    m, _rows, status = measure(TELEGRAM, observations, control=control)
    assert status.status == "down"
    assert ooni_keys(m, "telegram_") == {
        "telegram_tcp_blocking": False, "telegram_http_blocking": False,
        "telegram_web_status": None, "telegram_web_failure": None,
    }


def test_whatsapp_ok():
    m, _, status = measure(WHATSAPP, [observe(ep) for ep in WHATSAPP.endpoints])
    assert status.status == "ok"
    assert ooni_keys(m, "whatsapp_") | ooni_keys(m, "registration_") == {
        "whatsapp_endpoints_status": "ok", "whatsapp_endpoints_blocked": [],
        "whatsapp_endpoints_dns_inconsistent": [],
        "registration_server_status": "ok", "registration_server_failure": None,
        "whatsapp_web_status": "ok", "whatsapp_web_failure": None,
    }


def test_whatsapp_partially_blocked():
    e1, e2, registration, web = WHATSAPP.endpoints
    bogon = dns_exchange(e1.host, ("10.10.34.35",))
    observations = [
        observe(e1, dns=bogon, addresses=(), bogons=("10.10.34.35",)),
        observe(e2),
        observe(registration, "connect", failures.GENERIC_TIMEOUT),
        observe(web),
    ]
    m, rows, status = measure(WHATSAPP, observations, control=healthy_control(WHATSAPP))
    assert status.status == "partially_blocked"
    assert rows[0].method == "dns.bogon"
    assert ooni_keys(m, "whatsapp_") | ooni_keys(m, "registration_") == {
        "whatsapp_endpoints_status": "blocked",
        "whatsapp_endpoints_blocked": ["e1.whatsapp.net"],
        "whatsapp_endpoints_dns_inconsistent": ["e1.whatsapp.net"],
        "registration_server_status": "blocked",
        "registration_server_failure": "generic_timeout_error",
        "whatsapp_web_status": "ok", "whatsapp_web_failure": None,
    }


def test_whatsapp_inconclusive():
    observations = [observe(ep, "connect", failures.GENERIC_TIMEOUT) for ep in WHATSAPP.endpoints]
    m, _, status = measure(WHATSAPP, observations)
    assert status.status == "inconclusive"
    assert m["test_keys"]["whatsapp_endpoints_status"] is None
    assert m["test_keys"]["whatsapp_endpoints_blocked"] == []
    assert m["test_keys"]["registration_server_status"] is None
    assert m["test_keys"]["whatsapp_web_status"] is None


def test_signal_ok():
    m, _, status = measure(SIGNAL, [observe(ep) for ep in SIGNAL.endpoints])
    assert status.status == "ok"
    assert ooni_keys(m, "signal_") == {
        "signal_backend_status": "ok", "signal_backend_failure": None
    }


def test_signal_interception_is_blocked_without_control():
    chat, storage = SIGNAL.endpoints
    m, rows, status = measure(SIGNAL, [observe(chat, "verify", failures.SSL_UNKNOWN_AUTHORITY),
                                       observe(storage)])
    assert rows[0].method == "tls.mitm" and status.status == "partially_blocked"
    assert ooni_keys(m, "signal_") == {
        "signal_backend_status": "blocked", "signal_backend_failure": "ssl_unknown_authority",
    }


def test_signal_inconclusive():
    m, _, status = measure(SIGNAL, [observe(ep, "tls", failures.GENERIC_TIMEOUT)
                                    for ep in SIGNAL.endpoints])
    assert status.status == "inconclusive"
    assert ooni_keys(m, "signal_") == {
        "signal_backend_status": None, "signal_backend_failure": None
    }


def test_facebook_ok():
    m, _, status = measure(FACEBOOK, [observe(ep) for ep in FACEBOOK.endpoints])
    assert status.status == "ok"
    keys = ooni_keys(m, "facebook_")
    for role in ("b_api", "b_graph", "edge", "external_cdn", "scontent_cdn", "star"):
        assert keys[f"facebook_{role}_dns_consistent"] is True
        assert keys[f"facebook_{role}_reachable"] is True
    assert keys["facebook_stun_dns_consistent"] is True
    assert keys["facebook_stun_reachable"] is None  # UDP: only resolved, as in OONI
    assert keys["facebook_dns_blocking"] is False and keys["facebook_tcp_blocking"] is False


def test_facebook_dns_and_tcp_blocking():
    b_api, b_graph, edge, *rest = FACEBOOK.endpoints
    injected = dns_exchange(b_api.host, ("31.13.64.1",), ("157.240.5.1",))
    observations = [
        observe(b_api, dns=injected, addresses=("31.13.64.1", "157.240.5.1")),
        observe(b_graph, "tls", failures.CONNECTION_RESET),
        observe(edge, "connect", failures.GENERIC_TIMEOUT),
        *(observe(ep) for ep in rest),
    ]
    m, _rows, status = measure(FACEBOOK, observations, control=healthy_control(FACEBOOK))
    assert status.status == "partially_blocked"
    keys = ooni_keys(m, "facebook_")
    assert keys["facebook_b_api_dns_consistent"] is False
    assert keys["facebook_b_api_reachable"] is False
    assert keys["facebook_b_graph_dns_consistent"] is True
    assert keys["facebook_b_graph_reachable"] is False  # TLS reset: blocked after TCP
    assert keys["facebook_edge_dns_consistent"] is True
    assert keys["facebook_edge_reachable"] is False
    assert keys["facebook_star_reachable"] is True
    assert keys["facebook_dns_blocking"] is True and keys["facebook_tcp_blocking"] is True


def test_facebook_inconclusive():
    observations = [observe(ep, "connect", failures.GENERIC_TIMEOUT) for ep in FACEBOOK.endpoints]
    m, _, _status = measure(FACEBOOK, observations)
    keys = ooni_keys(m, "facebook_")
    # DNS worked (and passed the local checks); the connects say nothing without a control.
    assert keys["facebook_edge_dns_consistent"] is True and keys["facebook_edge_reachable"] is None
    assert keys["facebook_dns_blocking"] is False and keys["facebook_tcp_blocking"] is None


@pytest.mark.parametrize("step, expected", [
    (None, "ok"), ("connect", "blocked"),
    ("tls", "partially_blocked"),  # the chat host speaks no TLS: only the website fails
])
def test_other_services_load_as_base_measurements(step, expected):
    observations = [observe(ep, step, failures.CONNECTION_RESET) for ep in THREEMA.endpoints]
    m, _rows, status = measure(THREEMA, observations, control=healthy_control(THREEMA))
    assert m["test_name"] == "threema" and "threema" not in NETTEST_MODELS
    assert status.status == expected
    assert not [k for k in m["test_keys"] if k.startswith(OONI_TEST_NAMES)]


# A property over many mixes: OONI's keys flag blocking exactly when our verdicts
# for the hosts OONI's test covers contain a blocked one.
_COVERED = {
    "telegram": ("datacenter", "web"),
    "whatsapp": ("endpoint", "registration", "web"),
    "signal": None,  # every host
    "facebook_messenger": None,
}


def _ooni_flags_blocking(m: dict) -> bool:
    keys = m["test_keys"]
    return any(
        value is True if name.endswith("_blocking") else
        value is False if name.endswith(("_reachable", "_dns_consistent")) else
        value == "blocked" if name.endswith("_status") else False
        for name, value in keys.items()
        if name.startswith(("telegram_", "whatsapp_", "registration_", "signal_", "facebook_"))
    )


@pytest.mark.parametrize("service", [TELEGRAM, WHATSAPP, SIGNAL, FACEBOOK], ids=lambda s: s.id)
@pytest.mark.parametrize("failing", range(4))
@pytest.mark.parametrize("with_control", [True, False])
def test_ooni_keys_flag_blocking_exactly_when_we_do(service, failing, with_control):
    steps = [("connect", failures.GENERIC_TIMEOUT), ("tls", failures.CONNECTION_RESET),
             ("connect", failures.CONNECTION_REFUSED)]
    observations = []
    for index, ep in enumerate(service.endpoints):
        step, failure = steps[index % len(steps)] if index < failing else (None, None)
        observations.append(observe(ep, step, failure))
    control = healthy_control(service) if with_control else None
    m, rows, status = measure(service, observations, control=control)
    roles = _COVERED[service.id]
    roles_of = {e.id: e.role for e in service.endpoints}
    covered = [r for r in rows if roles is None or roles_of[r.endpoint_id] in roles]
    assert _ooni_flags_blocking(m) == any(r.verdict in BLOCKED_VERDICTS for r in covered)
    if status.status in ("ok", "inconclusive", "down"):
        assert not _ooni_flags_blocking(m)
