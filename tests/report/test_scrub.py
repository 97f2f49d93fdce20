"""Scrubbing the volunteer's address: every form we claim to handle, near misses that
must survive, a full OONI measurement with a hostile blockpage, and property tests
that plant the address in random JSON in random encodings."""

from __future__ import annotations

import base64
import datetime
import gzip
import html
import ipaddress
import json
import logging
import urllib.parse

import dns.message
import dns.rrset
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from probe.net.network import (
    ConnectResult,
    DnsAnswer,
    DnsExchange,
    DnsQuery,
    DnsReply,
    HttpRequest,
    HttpResult,
    MtprotoRequest,
    MtprotoResult,
    Timing,
    TlsRequest,
    TlsResult,
)
from probe.observations import EndpointObservation, MtprotoCheck, PortObservation, ServiceVerdict
from probe.report.keys import generate_ephemeral
from probe.report.ooni import RunMetadata, build_measurement
from probe.report.scrub import (
    SCRUBBED,
    ScrubbingLogFilter,
    ScrubbingStream,
    ScrubError,
    assert_clean,
    find_leaks,
    install_log_scrubbing,
    scrub_bytes,
    scrub_lines,
    scrub_measurement,
    scrub_text,
    volunteer_addresses,
)
from probe.report.signing import sign_object
from probe.targets import Endpoint, Service

V4 = "198.51.100.7"
V6 = "2001:db8:100:1::2"
ADDRESSES = [V4, V6]
V4_INT = int(ipaddress.IPv4Address(V4))
V4_PACKED = ipaddress.IPv4Address(V4).packed
V6_PACKED = ipaddress.IPv6Address(V6).packed


def percent_all(text: str) -> str:
    return "".join(f"%{ord(c):02X}" for c in text)


def entities(text: str) -> str:
    return "".join(f"&#{ord(c)};" for c in text)


# Each form we document in probe/report/scrub.py, as a hostile page could write it.
FORMS = {
    "dotted": V4,
    "leading zeros": "198.051.100.007",
    "reverse dns": "7.100.51.198.in-addr.arpa",
    "isp host name": "c-198-51-100-7.hsd1.isp.example",
    "reversed dashed": "7-100-51-198.dyn.isp.example",
    "underscored": "198_51_100_7",
    "integer": str(V4_INT),
    "url integer": f"http://{V4_INT}/",
    "hex integer": hex(V4_INT),
    "bare hex": f"{V4_INT:08x}",
    "whatwg hex parts": "0xc6.0x33.0x64.0x7",
    "whatwg octal parts": "0306.063.0144.07",
    "whatwg two parts": "198.3367943",
    "whatwg three parts": "198.51.25607",
    "percent all": percent_all(V4),
    "percent dots": V4.replace(".", "%2e"),
    "html decimal": entities(V4),
    "html hex": "".join(f"&#x{ord(c):x};" for c in V4),
    "html no semicolon": "".join(f"&#{ord(c)}" for c in V4) + " ",
    "html double": html.escape(entities(V4)),
    "html named period": V4.replace(".", "&period;"),
    "js unicode": "".join(f"\\u{ord(c):04x}" for c in V4),
    "js hex": "".join(f"\\x{ord(c):02x}" for c in V4),
    "css": "".join(f"\\{ord(c):x} " for c in V4),
    "percent then entity": urllib.parse.quote(entities(V4)),
    "full width": "１９８．５１．１００．７",
    "persian digits": "۱۹۸.۵۱.۱۰۰.۷",
    "arabic-indic digits": "١٩٨.٥١.١٠٠.٧",
    "superscript": "¹98.51.100.7",
    "unicode dashes": "198‐51‐100‐7",
    "ipv4 mapped": "::ffff:198.51.100.7",
    "ipv4 mapped hex": "::ffff:c633:6407",
    "ipv4 mapped expanded": "0000:0000:0000:0000:0000:ffff:c633:6407",
    "nat64": "64:ff9b::198.51.100.7",
    "6to4": "2002:c633:6407::1",
    "teredo": "2001:0:4136:e378:8000:63bf:39cc:9bf8",
    "ipv6 compressed": V6,
    "ipv6 upper": V6.upper(),
    "ipv6 expanded": ipaddress.IPv6Address(V6).exploded,
    "ipv6 no zero compression": "2001:db8:100:1:0:0:0:2",
    "ipv6 bracketed with port": f"[{V6}]:443",
    "ipv6 zone": f"{V6}%eth0",
    "ipv6 same /64": "2001:db8:100:1:a1b2:c3d4:e5f6:1234",
    "ipv6 prefix": "2001:db8:100:1::/64",
    "ipv6 percent": urllib.parse.quote(V6, safe=""),
    "ipv6 hex": f"{int(ipaddress.IPv6Address(V6)):032x}",
    "ipv6 arpa": ".".join(reversed(f"{int(ipaddress.IPv6Address(V6)):032x}")) + ".ip6.arpa",
    "ipv6 full width": "２００１：ｄｂ８：１００：１：：２",
    "base64 in text": "ip=" + base64.b64encode(V4.encode()).decode() + "; path=/",
    "base64 urlsafe jwt": base64.urlsafe_b64encode(
        json.dumps({"ip": V4}).encode()).decode().rstrip("="),
    "sentence end": f"Your address is {V4}.",
    "embedded in longer dotted run": f"1.{V4}.5",
}


@pytest.mark.parametrize("name", sorted(FORMS))
def test_each_form_is_scrubbed_and_detected(name):
    text = f"<p>{FORMS[name]}</p>"
    assert find_leaks({"body": text}, ADDRESSES), f"the checker misses {name}"
    cleaned = scrub_text(text, ADDRESSES)
    assert cleaned != text
    assert find_leaks({"body": cleaned}, ADDRESSES) == []


@pytest.mark.parametrize(
    "text",
    [
        "198.51.100.70", "198.51.100.17", "1198.51.100.7", "198.51.100.77", "98.51.100.7",
        "2001:db8:100:2::2", "2001:db8:100:10::2", "12:30:45", "v1.2.3.4",
        "aa:bb:cc:dd:ee:ff", "3325256712", "sha256:c63364070000", "127.0.0.1",
        "2024-01-15T12:30:45.123456Z", "203.0.113.7",
    ],
)
def test_near_misses_are_kept(text):
    assert scrub_text(text, ADDRESSES) == text
    assert find_leaks({"value": text}, ADDRESSES) == []


def test_binary_payloads_are_scrubbed_without_touching_their_neighbours():
    payload = b"\x00\x01" + V4_PACKED + b"\xff" + V6_PACKED + b"tail " + V4.encode()
    cleaned = scrub_bytes(payload, ADDRESSES)
    assert V4_PACKED not in cleaned and V6_PACKED not in cleaned and V4.encode() not in cleaned
    assert cleaned.startswith(b"\x00\x01[scrubbed]\xff[scrubbed]tail ")


def test_an_address_in_the_volunteers_64_is_scrubbed_in_binary_too():
    neighbour = ipaddress.IPv6Address("2001:db8:100:1::99").packed
    assert neighbour not in scrub_bytes(b"AAAA" + neighbour + b"!", ADDRESSES)


def test_utf16_and_gzip_payloads():
    utf16 = f"<html>your ip {V4}</html>".encode("utf-16-le")
    assert find_leaks({"b": base64.b64encode(utf16).decode()}, ADDRESSES)
    cleaned = scrub_bytes(b"\xff\xfe" + utf16, ADDRESSES)
    assert V4 not in cleaned[2:].decode("utf-16-le")
    zipped = gzip.compress(f"hello {V4}".encode())
    assert find_leaks({"b": base64.b64encode(zipped).decode()}, ADDRESSES)
    assert gzip.decompress(scrub_bytes(zipped, ADDRESSES)) == b"hello [scrubbed]"


def test_keys_numbers_and_nested_structures():
    measurement = {
        V4: {"x": [1, 2, {"seen": f"from {V6}"}]},
        "as_int": V4_INT,
        "as_float": float(V4_INT),
        "ok": [True, None, 1.5, "plain"],
    }
    cleaned = scrub_measurement(measurement, ADDRESSES)
    assert cleaned == {
        SCRUBBED: {"x": [1, 2, {"seen": f"from {SCRUBBED}"}]},
        "as_int": SCRUBBED,
        "as_float": SCRUBBED,
        "ok": [True, None, 1.5, "plain"],
    }
    assert measurement[V4]  # the input is not modified


def test_two_keys_that_differ_only_by_the_address_both_survive():
    cleaned = scrub_measurement({f"a {V4}": 1, f"a {V6}": 2}, ADDRESSES)
    assert sorted(cleaned.values()) == [1, 2]
    assert find_leaks(cleaned, ADDRESSES) == []


def test_without_any_address_nothing_changes():
    measurement = {"body": f"text {V4}"}
    assert scrub_measurement(measurement, []) == measurement
    assert scrub_measurement(measurement, ["127.0.0.1", "::"]) == measurement


def test_error_names_the_field_and_form_but_never_the_address():
    certificate = base64.b64encode(b"0\x82\x01\x00" + V4_PACKED + b"CN=" + V4.encode()).decode()
    measurement = {"test_keys": {"tls_handshakes": [{"peer_certificates": [
        {"format": "base64", "data": certificate}]}]}}
    with pytest.raises(ScrubError) as caught:
        scrub_measurement(measurement, ADDRESSES)
    message = str(caught.value)
    assert "peer_certificates" in message
    for form in (V4, V6, str(V4_INT), base64.b64encode(V4.encode()).decode()):
        assert form not in message


def test_certificates_without_the_address_are_kept_byte_for_byte():
    certificate = base64.b64encode(b"0\x82\x01\x00 a certificate for 203.0.113.7").decode()
    measurement = {"peer_certificates": [{"format": "base64", "data": certificate}],
                   "body": f"hi {V4}"}
    cleaned = scrub_measurement(measurement, ADDRESSES)
    assert cleaned["peer_certificates"][0]["data"] == certificate
    assert cleaned["body"] == f"hi {SCRUBBED}"


def test_attestation_containing_the_address_is_withheld_not_altered():
    key = generate_ephemeral()
    clean = sign_object(
        {"response": {"endpoint_id": "a", "observation": {"x": "203.0.113.1"}}}, key)
    leaky = sign_object({"response": {"endpoint_id": "b", "observation": {"x": V4}}}, key)
    measurement = {"test_keys": {"control": {"source": "c", "attestation": [clean, leaky]}}}
    cleaned = scrub_measurement(measurement, ADDRESSES)
    control = cleaned["test_keys"]["control"]
    assert control["attestation"] == [clean]
    assert control["attestation_withheld"] == ["b"]


def test_scrub_lines_drops_what_cannot_be_cleaned_and_says_why():
    bad_cert = base64.b64encode(b"DER" + V4_PACKED).decode()
    lines = [
        {"test_name": "telegram", "body": f"ip {V4}"},
        {"test_name": "signal", "peer_certificates": [{"format": "base64", "data": bad_cert}]},
    ]
    clean, dropped = scrub_lines(lines, ADDRESSES)
    assert clean == [{"test_name": "telegram", "body": f"ip {SCRUBBED}"}]
    assert [service for service, _ in dropped] == ["signal"]
    assert "peer_certificates" in dropped[0][1] and V4 not in dropped[0][1]


def test_assert_clean_passes_and_fails():
    assert_clean({"a": "203.0.113.9"}, ADDRESSES)
    with pytest.raises(ScrubError):
        assert_clean({"a": [f"x{V6}"]}, ADDRESSES)


def test_volunteer_addresses():
    assert volunteer_addresses(V4, ["192.168.1.10", "fe80::1", "2a00:1450::1", "10.0.0.1"]) == [
        V4, "2a00:1450::1"]
    assert volunteer_addresses(None, ["127.0.0.1"]) == []
    assert volunteer_addresses("::ffff:198.51.100.7") == [V4]


# --------------------------------------------------------------------------- #
# a full measurement: a censor's blockpage echoes the client everywhere         #
# --------------------------------------------------------------------------- #

STARTED = datetime.datetime(2026, 11, 28, 2, 15, 0, tzinfo=datetime.UTC)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def hostile_observation() -> EndpointObservation:
    query = dns.message.make_query("web.example.test", "A")
    reply = dns.message.make_response(query)
    reply.answer.append(dns.rrset.from_text("web.example.test.", 60, "IN", "A", V4))
    dns_exchange = DnsExchange(
        DnsQuery("198.51.100.6", 53, "web.example.test", "A"),
        (DnsReply(0.1, "NOERROR", (DnsAnswer("A", "web.example.test", V4, 60),),
                  b64(reply.to_wire())),),
        None, Timing(0.0, 0.2),
    )
    connect = ConnectResult("203.0.113.16", 443, None, Timing(0.3, 0.4))
    tls = TlsResult(TlsRequest("203.0.113.16", 443, "web.example.test"), connect, None,
                    "TLSv1.3", "TLS_AES_128_GCM_SHA256", "http/1.1",
                    (b64(b"0\x82 plain certificate"),), Timing(0.4, 0.5))
    page = (
        f"<html><body>Access denied. Your address {V4} has been logged."
        f"<!-- {ipaddress.IPv6Address(V6).exploded} -->"
        f"<a href='/report?ip={urllib.parse.quote(V6, safe='')}'>appeal</a>"
        f"<span>{entities(V4)}</span></body></html>"
    )
    http = HttpResult(
        HttpRequest("https://web.example.test/", "203.0.113.16",
                    headers=(("Host", "web.example.test"),)),
        None, 403,
        (("X-Client-IP", V4), ("Set-Cookie", f"seen={b64(V4.encode())}"),
         ("X-Forwarded-For", f"::ffff:{V4}")),
        b64(page.encode()), len(page), False, (), None, Timing(0.5, 0.6),
    )
    mtproto = MtprotoResult(
        MtprotoRequest("203.0.113.11", 443, b64(b"\xee" * 8)), connect, None,
        b64(b"\x00\x00\x00\x10" + V4_PACKED + b"\x00" * 8), Timing(0.6, 0.7),
    )
    port = PortObservation("203.0.113.16", 443, connect, tls, None,
                           (MtprotoCheck(mtproto, False, "nonce_mismatch"),), (http,))
    return EndpointObservation("web", "svc", "web.example.test", None, (dns_exchange,),
                               ("203.0.113.16",), (), (port,))


def hostile_measurement() -> dict:
    service = Service("svc", "Service", "svc", False, "", (
        Endpoint("web", "svc", "web.example.test", (443,), ("dns", "tcp", "tls", "https"),
                 "web.example.test", None),))
    meta = RunMetadata(report_id="20261128T021500Z_probe_abc", started_at=STARTED,
                       resolver_ip="198.51.100.6")
    return build_measurement(meta, service, [hostile_observation()], [],
                             ServiceVerdict("svc", "blocked", "a blockpage"), None, 1.0)


def test_hostile_blockpage_measurement_is_cleaned_everywhere():
    measurement = hostile_measurement()
    assert find_leaks(measurement, ADDRESSES)  # the fixture really is hostile
    cleaned = scrub_measurement(measurement, ADDRESSES)
    serialised = json.dumps(cleaned)
    assert V4 not in serialised and V6 not in serialised
    assert find_leaks(cleaned, ADDRESSES) == []
    request = cleaned["test_keys"]["requests"][0]
    assert request["response"]["headers"]["X-Client-IP"] == SCRUBBED
    assert "Access denied" in request["response"]["body"]
    raw = base64.b64decode(cleaned["test_keys"]["queries"][0]["raw_response"])
    assert V4_PACKED not in raw and b"[scrubbed]" in raw
    # what is not the volunteer's stays as measured
    assert cleaned["resolver_ip"] == "198.51.100.6" and cleaned["probe_ip"] == "127.0.0.1"
    assert cleaned["test_keys"]["tls_handshakes"] == measurement["test_keys"]["tls_handshakes"]


# --------------------------------------------------------------------------- #
# logs and terminal                                                             #
# --------------------------------------------------------------------------- #


def test_log_filter_scrubs_messages_arguments_and_tracebacks(caplog):
    logger = logging.getLogger("probe.test_scrub")
    log_filter = ScrubbingLogFilter()
    caplog.handler.addFilter(log_filter)
    try:
        logger.warning("before: %s", V4)  # address not known yet: shown as is
        log_filter.set_addresses(ADDRESSES)
        logger.warning("connected from %s and %s", V4, V6)
        try:
            raise ValueError(f"bad peer {V4}")
        except ValueError:
            logger.exception("failed")
    finally:
        caplog.handler.removeFilter(log_filter)
    text = caplog.text
    assert f"connected from {SCRUBBED} and {SCRUBBED}" in text
    assert f"bad peer {SCRUBBED}" in text
    assert text.count(V4) == 1  # only the record logged before the address was known


def test_install_log_scrubbing_attaches_to_every_root_handler():
    root = logging.getLogger()
    handler = logging.StreamHandler()
    root.addHandler(handler)
    try:
        log_filter = install_log_scrubbing(ADDRESSES)
        assert log_filter in handler.filters
    finally:
        root.removeHandler(handler)


def test_terminal_stream_scrubs_addresses_split_over_writes():
    import io

    target = io.StringIO()
    log_filter = ScrubbingLogFilter(ADDRESSES)
    stream = ScrubbingStream(target, log_filter)
    stream.write("your address: 198.51")
    stream.write(".100.7\nnext ")
    assert target.getvalue() == f"your address: {SCRUBBED}\n"
    stream.write(V6)
    stream.flush()
    assert target.getvalue().endswith(f"next {SCRUBBED}")
    assert not stream.isatty()


# --------------------------------------------------------------------------- #
# property tests: random JSON, the address planted in random places and forms  #
# --------------------------------------------------------------------------- #

# the volunteer's address is a public one: loopback, private and the like are never
# scrubbed (no server ever sees them), so they are not drawn here
public_v4 = st.integers(0x0B000000, 0xDFFFFFFF).map(ipaddress.IPv4Address).filter(
    lambda ip: ip.is_global).map(str)
public_v6 = st.integers(0x2000 << 112, (0x3FFF << 112) - 1).map(
    lambda n: str(ipaddress.IPv6Address(n)))


def _v4_forms(address: str) -> list:
    ip = ipaddress.IPv4Address(address)
    octets = address.split(".")
    return [
        address, "-".join(octets), ".".join(reversed(octets)) + ".in-addr.arpa",
        str(int(ip)), hex(int(ip)), f"::ffff:{address}", f"64:ff9b::{address}",
        str(ipaddress.IPv6Address((0x2002 << 112) | (int(ip) << 80))),
    ]


def _v6_forms(address: str) -> list:
    ip = ipaddress.IPv6Address(address)
    return [address, address.upper(), ip.exploded, f"[{address}]:443", f"{int(ip):032x}"]


def _encode(form: str, how: str) -> str:
    if how == "percent":
        return percent_all(form)
    if how == "entities":
        return entities(form)
    if how == "js":
        return "".join(f"\\u{ord(c):04x}" for c in form)
    if how == "fullwidth":
        return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in form)
    if how == "base64":
        return base64.b64encode(form.encode()).decode()
    return form


ENCODINGS = ["plain", "percent", "entities", "js", "fullwidth", "base64"]
json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**31), 2**31), st.text(max_size=30),
    st.floats(allow_nan=False, allow_infinity=False),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=10), children, max_size=4),
    ),
    max_leaves=20,
)
SEPARATORS = [" ", "/", "=", "<", ">", '"', ",", ";", "(", "\n", "?ip="]


def _plant(value, text: str, choice: int, as_key: bool):
    """Put ``text`` somewhere in ``value`` (the ``choice``-th slot, wrapping)."""
    slots = []

    def walk(node, setter):
        slots.append(setter)
        if isinstance(node, list):
            for index, item in enumerate(node):
                walk(item, lambda v, node=node, index=index: node.__setitem__(index, v))
        elif isinstance(node, dict):
            for key in list(node):
                walk(node[key], lambda v, node=node, key=key: node.__setitem__(key, v))

    root = {"root": value}
    walk(value, lambda v: root.__setitem__("root", v))
    setter = slots[choice % len(slots)]
    if as_key:
        setter({text: "planted"})
    else:
        setter(text)
    return root


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    value=json_values,
    v4=public_v4,
    v6=public_v6,
    which=st.integers(0, 100),
    family=st.sampled_from(["v4", "v6"]),
    how=st.sampled_from(ENCODINGS),
    prefix=st.text(max_size=8),
    separator=st.sampled_from(SEPARATORS),
    choice=st.integers(0, 50),
    as_key=st.booleans(),
    in_base64_payload=st.booleans(),
)
def test_planted_address_never_survives(value, v4, v6, which, family, how, prefix,
                                         separator, choice, as_key, in_base64_payload):
    forms = _v4_forms(v4) if family == "v4" else _v6_forms(v6)
    planted = prefix + separator + _encode(forms[which % len(forms)], how) + separator
    if in_base64_payload:
        planted = base64.b64encode(b"\x00\xff" + planted.encode("utf-8")).decode()
    measurement = _plant(value, planted, choice, as_key)
    cleaned = scrub_measurement(measurement, [v4, v6])
    assert find_leaks(cleaned, [v4, v6]) == []
    serialised = json.dumps(cleaned, ensure_ascii=False)
    assert v4 not in serialised and v6 not in serialised


@settings(max_examples=100, deadline=None)
@given(value=json_values, v4=public_v4, v6=public_v6, packed=st.booleans(),
       head=st.binary(max_size=20), tail=st.binary(max_size=20))
def test_binary_address_in_payload_never_survives(value, v4, v6, packed, head, tail):
    raw = ipaddress.ip_address(v4 if packed else v6).packed
    measurement = {"payload": {"format": "base64", "data": b64(head + raw + tail)}, "x": value}
    cleaned = scrub_measurement(measurement, [v4, v6])
    assert raw not in base64.b64decode(cleaned["payload"]["data"])


@settings(max_examples=150, deadline=None)
@given(value=json_values, v4=public_v4, v6=public_v6)
def test_measurements_without_the_address_are_unchanged(value, v4, v6):
    measurement = {"x": value}
    assume_clean = find_leaks(measurement, [v4, v6]) == []
    if assume_clean:
        assert scrub_measurement(measurement, [v4, v6]) == measurement
