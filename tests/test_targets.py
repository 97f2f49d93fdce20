"""Tests for probe.targets: the bundled targets.yaml, every validation rule, CA handling.

Nothing here touches the network: an autouse fixture makes any socket use fail loudly.
"""

import pickle
import socket
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from probe.targets import (
    CHECKS,
    Targets,
    TargetsError,
    default_targets_path,
    load_targets,
    parse_targets,
)

DATA = Path(__file__).parent / "data" / "targets"
REPO_ROOT = Path(__file__).resolve().parent.parent
SIGNAL_ROOT = REPO_ROOT / "probe" / "ca" / "signal-root.pem"
LAB_CA = (DATA / "lab-ca.pem").read_text()
OTHER_CA = (DATA / "other-ca.pem").read_text()


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Loading targets must never resolve or connect: fail the test if anything tries."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network use during a targets test: {args!r}")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "gethostbyname", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


def subject(pem: str) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem.encode())


# ---------------------------------------------------------------------------------------
# The bundled targets.yaml

@pytest.fixture(scope="module")
def bundled() -> Targets:
    return load_targets(default_targets_path())


def test_default_path_is_the_checkout_file():
    assert default_targets_path().resolve() == (REPO_ROOT / "targets.yaml").resolve()


def test_bundled_services_and_counts(bundled):
    counts = {service.id: len(service.endpoints) for service in bundled.services}
    assert counts["telegram"] == 18
    assert counts["whatsapp"] == 20
    assert counts["signal"] == 12
    assert counts["facebook_messenger"] == 8
    assert counts["baseline"] >= 3
    others = [
        s for s in bundled.services
        if not s.baseline
        and s.id not in {"telegram", "whatsapp", "signal", "facebook_messenger"}
    ]
    assert len(others) >= 5
    for service in others:
        assert service.test_name == service.id
    assert [s.id for s in bundled.services if s.baseline] == ["baseline"]
    assert len(bundled.endpoints()) == sum(counts.values())


def test_bundled_telegram(bundled):
    telegram = bundled.service("telegram")
    assert telegram.test_name == "telegram"
    datacenters = [e for e in telegram.endpoints if e.role == "datacenter"]
    assert [e.host for e in datacenters] == [
        "149.154.175.50", "149.154.167.51", "149.154.175.100",
        "149.154.167.91", "149.154.171.5", "95.161.76.100",
    ]
    for endpoint in datacenters:
        assert endpoint.ports == (80, 443)
        assert endpoint.checks == ("tcp", "mtproto", "http")
        assert endpoint.host_is_address and endpoint.sni is None
        assert 62041 in endpoint.expected_asns
    web = next(e for e in telegram.endpoints if e.host == "web.telegram.org")
    assert web.role == "web" and web.checks == ("dns", "tcp", "tls", "https")
    https_hosts = {e.host for e in telegram.endpoints if "https" in e.checks}
    assert {"telegram.org", "t.me", "api.telegram.org"} <= https_hosts


def test_bundled_whatsapp(bundled):
    whatsapp = bundled.service("whatsapp")
    numbered = [e for e in whatsapp.endpoints if e.role == "endpoint"]
    assert [e.host for e in numbered] == [f"e{n}.whatsapp.net" for n in range(1, 17)]
    for endpoint in numbered:
        assert endpoint.ports == (443, 5222) and endpoint.checks == ("dns", "tcp")
    by_role = {e.role: e for e in whatsapp.endpoints}
    assert by_role["registration"].host == "v.whatsapp.net"
    assert by_role["web"].host == "web.whatsapp.com"
    for role in ("registration", "web", "gateway", "media"):
        assert "https" in by_role[role].checks


def test_bundled_signal_pins_only_signal_root_hosts(bundled):
    signal = bundled.service("signal")
    by_host = {e.host: e for e in signal.endpoints}
    assert set(by_host) == {
        "chat.signal.org", "cdsi.signal.org", "storage.signal.org", "sfu.voip.signal.org",
        "cdn.signal.org", "cdn2.signal.org", "updates.signal.org", "svr2.signal.org",
        "cdn3.signal.org", "contentproxy.signal.org", "updates2.signal.org",
        "uptime.signal.org",
    }
    # hosts whose root no client source states are measured without TLS, never pinned
    unsettled = {"cdn3.signal.org", "contentproxy.signal.org", "updates2.signal.org",
                 "uptime.signal.org"}
    root = x509.load_pem_x509_certificate(SIGNAL_ROOT.read_bytes())
    for host, endpoint in by_host.items():
        if host == "updates.signal.org":
            assert endpoint.ca_pem is None  # public CA: keeps the system trust store
        elif host in unsettled:
            assert endpoint.ca_pem is None and "tls" not in endpoint.checks
        else:
            assert subject(endpoint.ca_pem) == [root]


def test_signal_root_certificate():
    root = x509.load_pem_x509_certificate(SIGNAL_ROOT.read_bytes())
    assert root.subject == root.issuer  # a self-signed root
    assert root.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == (
        "Signal Messenger"
    )
    assert root.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == (
        "Signal Messenger, LLC"
    )
    assert root.not_valid_after_utc.year == 2032


def test_bundled_facebook_messenger(bundled):
    messenger = bundled.service("facebook_messenger")
    roles = {e.host: e.role for e in messenger.endpoints}
    assert roles == {
        "b-api.facebook.com": "b_api",
        "b-graph.facebook.com": "b_graph",
        "edge-mqtt.facebook.com": "edge",
        "external.xx.fbcdn.net": "external_cdn",
        "scontent.xx.fbcdn.net": "scontent_cdn",
        "star.c10r.facebook.com": "star",
        "stun.fbsbx.com": "stun",
        "www.facebook.com": "web_quic",
    }
    for endpoint in messenger.endpoints:
        if endpoint.role == "stun":
            # STUN over UDP 3478, as the apps send it (OONI only resolves the name)
            assert endpoint.checks == ("dns", "stun") and endpoint.ports == (3478,)
        elif endpoint.role == "web_quic":
            assert endpoint.checks == ("dns", "quic") and endpoint.ports == (443,)
        else:
            assert endpoint.checks == ("dns", "tcp", "tls") and endpoint.ports == (443,)


def test_bundled_baseline(bundled):
    baseline = bundled.service("baseline")
    assert baseline.baseline
    assert {"www.wikipedia.org", "www.google.com", "www.cloudflare.com"} <= {
        e.host for e in baseline.endpoints
    }
    for endpoint in baseline.endpoints:
        udp = set(endpoint.checks) & {"stun", "turn", "udp", "quic"}
        assert {"dns", "tcp", "tls"} <= set(endpoint.checks) or (udp and "dns" in endpoint.checks)
    # one baseline transfer, so a slow home link is not read as throttling
    assert [e.id for e in baseline.endpoints if "download" in e.checks] == ["baseline-download"]


# ---------------------------------------------------------------------------------------
# The typed API

MINIMAL = """\
version: 1
services:
  - id: example
    name: Example
    endpoints:
      - id: example-web
        host: www.example.org
        port: 443
        checks: [dns, tcp, tls]
"""


def test_minimal_defaults():
    targets = parse_targets(MINIMAL)
    assert targets.source == "<string>"
    assert targets.ca_bundle_pem is None
    (service,) = targets.services
    assert (service.id, service.name, service.test_name) == ("example", "Example", "example")
    assert service.baseline is False and service.notes == ""
    (endpoint,) = service.endpoints
    assert endpoint.service == "example"
    assert endpoint.ports == (443,)
    assert endpoint.checks == ("dns", "tcp", "tls")
    assert endpoint.sni == "www.example.org"
    assert endpoint.ca_pem is None
    assert endpoint.path == "/"
    assert endpoint.role is None
    assert endpoint.expected_asns == ()
    assert endpoint.notes == ""
    assert not endpoint.host_is_address


def test_every_field():
    text = """\
version: 1
services:
  - id: full
    name: Full Service
    test_name: full_service
    baseline: true
    notes: service notes
    endpoints:
      - id: full.v6
        host: "2001:db8::1"
        ports: [443, 8443]
        checks: [tcp, tls, https, download]
        sni: front.example.org
        path: /files/big.bin?x=1
        role: download
        expected_asns: [64496, 64511]
        notes: endpoint notes
"""
    (service,) = parse_targets(text).services
    assert (service.name, service.test_name, service.baseline) == (
        "Full Service", "full_service", True
    )
    (endpoint,) = service.endpoints
    assert endpoint.host_is_address
    assert endpoint.ports == (443, 8443)
    assert endpoint.sni == "front.example.org"
    assert endpoint.path == "/files/big.bin?x=1"
    assert endpoint.expected_asns == (64496, 64511)
    assert endpoint.notes == "endpoint notes"


def test_ip_host_with_sni_allows_tls():
    text = MINIMAL.replace("www.example.org", "192.0.2.7").replace(
        "checks: [dns, tcp, tls]", "checks: [tcp, tls]\n        sni: www.example.org"
    )
    (endpoint,) = parse_targets(text).endpoints()
    assert endpoint.host_is_address and endpoint.sni == "www.example.org"


def test_objects_are_frozen():
    targets = parse_targets(MINIMAL)
    with pytest.raises(AttributeError):
        targets.services[0].endpoints[0].host = "elsewhere.example.org"


def test_service_lookup():
    targets = parse_targets(MINIMAL)
    assert targets.service("example").name == "Example"
    with pytest.raises(KeyError):
        targets.service("nope")


TWO_SERVICES_AND_BASELINE = """\
version: 1
services:
  - id: alpha
    endpoints:
      - {id: alpha-1, host: alpha.example.org, port: 443, checks: [tcp]}
  - id: refs
    baseline: true
    endpoints:
      - {id: refs-1, host: ref.example.org, port: 443, checks: [tcp]}
  - id: beta
    endpoints:
      - {id: beta-1, host: beta.example.org, port: 443, checks: [tcp]}
      - {id: beta-2, host: beta2.example.org, port: 443, checks: [tcp]}
"""


def test_select_keeps_baseline_and_file_order():
    targets = parse_targets(TWO_SERVICES_AND_BASELINE, source="t.yaml")
    chosen = targets.select(["beta"])
    assert [s.id for s in chosen.services] == ["refs", "beta"]
    assert [e.id for e in chosen.endpoints()] == ["refs-1", "beta-1", "beta-2"]
    assert chosen.source == "t.yaml"
    assert [s.id for s in targets.select(["beta", "alpha", "beta"]).services] == [
        "alpha", "refs", "beta"
    ]
    assert [s.id for s in targets.select([]).services] == ["refs"]
    assert [s.id for s in targets.select("alpha").services] == ["alpha", "refs"]
    assert len(targets.services) == 3  # select does not change the original


def test_select_unknown_service_lists_known_ids():
    targets = parse_targets(TWO_SERVICES_AND_BASELINE, source="t.yaml")
    with pytest.raises(TargetsError) as caught:
        targets.select(["alpha", "gamma"])
    assert str(caught.value) == (
        "t.yaml: unknown service 'gamma'; known services: alpha, refs, beta"
    )


def test_error_attributes_and_exact_message():
    # The port is on line 14, as in the example the error format is specified with.
    text = """\
version: 1
services:
  - id: example
    endpoints:
      - id: one
        host: one.example.org
        port: 443
        checks: [tcp]
      - id: two
        host: two.example.org
        port: 443
        checks: [tcp]
      - id: three
        port: 70000
        host: three.example.org
        checks: [tcp]
"""
    with pytest.raises(TargetsError) as caught:
        parse_targets(text, source="targets.yaml")
    error = caught.value
    assert str(error) == (
        "targets.yaml line 14, services[0].endpoints[2].port: 70000 is out of range (1-65535)"
    )
    assert (error.source, error.line, error.field) == (
        "targets.yaml", 14, "services[0].endpoints[2].port"
    )
    assert error.message == "70000 is out of range (1-65535)"
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == str(error) and copy.line == 14


# ---------------------------------------------------------------------------------------
# Validation rules: each bad file gives the right line, field and message.

def edit(old: str, new: str, text: str = MINIMAL) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


INVALID = [
    # unknown keys, at every level
    pytest.param(MINIMAL + "colour: blue\n", 10, "colour", "unknown key 'colour'",
                 id="unknown-top-key"),
    pytest.param(edit("    name: Example", "    nmae: Example"), 4, "services[0].nmae",
                 "unknown key 'nmae'", id="unknown-service-key"),
    pytest.param(edit("        port: 443", "        prot: 443"), 8,
                 "services[0].endpoints[0].prot", "unknown key 'prot'",
                 id="unknown-endpoint-key"),
    pytest.param(edit("    name: Example", "    name: Example\n    name: Again"), 5,
                 "services[0].name", "key given twice (first on line 4)", id="duplicate-key"),
    # missing required keys
    pytest.param(edit("version: 1\n", ""), 1, "version", "missing required key",
                 id="missing-version"),
    pytest.param("version: 1\n", 1, "services", "missing required key",
                 id="missing-services"),
    pytest.param(edit("  - id: example\n    name: Example", "  - name: Example"), 3,
                 "services[0].id", "missing required key", id="missing-service-id"),
    pytest.param(edit("      - id: example-web\n        host", "      - host"), 6,
                 "services[0].endpoints[0].id", "missing required key",
                 id="missing-endpoint-id"),
    pytest.param(edit("        host: www.example.org\n", ""), 6,
                 "services[0].endpoints[0].host", "missing required key", id="missing-host"),
    pytest.param(edit("        port: 443\n", ""), 6, "services[0].endpoints[0].port",
                 "missing required key (give port or ports)", id="missing-port"),
    pytest.param(edit("        checks: [dns, tcp, tls]\n", ""), 6,
                 "services[0].endpoints[0].checks", "missing required key",
                 id="missing-checks"),
    pytest.param(edit("    endpoints:\n", "    endpoints_: []\n").split("      - id")[0], 5,
                 "services[0].endpoints_", "unknown key", id="misspelt-endpoints"),
    # wrong types
    pytest.param(edit("port: 443", 'port: "443"'), 8, "services[0].endpoints[0].port",
                 "expected a whole number, got text", id="port-as-text"),
    pytest.param(edit("port: 443", "port: true"), 8, "services[0].endpoints[0].port",
                 "expected a whole number, got true", id="port-as-bool"),
    pytest.param(edit("port: 443", "ports: 443"), 8, "services[0].endpoints[0].ports",
                 "expected a list, got the number 443", id="ports-not-a-list"),
    pytest.param(edit("checks: [dns, tcp, tls]", "checks: tcp"), 9,
                 "services[0].endpoints[0].checks", "expected a list, got text",
                 id="checks-not-a-list"),
    pytest.param(edit("host: www.example.org", "host: 42"), 7,
                 "services[0].endpoints[0].host", "expected text, got the number 42",
                 id="host-as-number"),
    pytest.param(edit("    name: Example", "    baseline: maybe"), 4,
                 "services[0].baseline", "expected true or false, got text",
                 id="baseline-not-bool"),
    pytest.param("version: 1\nservices: {}\n", 2, "services", "expected a list, got a mapping",
                 id="services-as-mapping"),
    pytest.param("version: 1\nservices:\n  - just-a-name\n", 3, "services[0]",
                 "expected a mapping of keys, got text", id="service-as-text"),
    pytest.param(edit("    name: Example", "    name: [a, b]"), 4, "services[0].name",
                 "expected a single value, got a list", id="name-as-list"),
    pytest.param(edit("port: 443", "port: 2001-13-45"), 8, "services[0].endpoints[0].port",
                 "cannot read this value", id="impossible-date"),
    # bad ids
    pytest.param(edit("id: example\n", "id: Example\n"), 3, "services[0].id",
                 "bad service id 'Example'", id="uppercase-service-id"),
    pytest.param(edit("id: example-web", "id: example/web"), 6,
                 "services[0].endpoints[0].id", "bad endpoint id 'example/web'",
                 id="slash-in-endpoint-id"),
    pytest.param(edit("    name: Example", "    test_name: Web Connectivity"), 4,
                 "services[0].test_name", "bad test_name", id="bad-test-name"),
    # duplicates
    pytest.param(MINIMAL + MINIMAL.split("services:\n")[1], 10, "services[1].id",
                 "duplicate service id 'example' (first used on line 3)",
                 id="duplicate-service-id"),
    pytest.param(MINIMAL + edit("id: example\n", "id: other\n").split("services:\n")[1], 13,
                 "services[1].endpoints[0].id",
                 "duplicate endpoint id 'example-web' (first used on line 6)",
                 id="duplicate-endpoint-id-across-services"),
    # ports
    pytest.param(edit("port: 443", "port: 70000"), 8, "services[0].endpoints[0].port",
                 "70000 is out of range (1-65535)", id="port-too-big"),
    pytest.param(edit("port: 443", "port: 0"), 8, "services[0].endpoints[0].port",
                 "0 is out of range (1-65535)", id="port-zero"),
    pytest.param(edit("port: 443", "ports:\n          - 80\n          - 443\n          - 80"),
                 11, "services[0].endpoints[0].ports[2]", "port 80 is listed twice",
                 id="duplicate-port"),
    pytest.param(edit("port: 443", "ports: []"), 8, "services[0].endpoints[0].ports",
                 "the list is empty", id="empty-ports"),
    pytest.param(edit("port: 443", "port: 443\n        ports: [80]"), 9,
                 "services[0].endpoints[0].ports", "give either 'port' or 'ports', not both",
                 id="port-and-ports"),
    # checks
    pytest.param(edit("[dns, tcp, tls]", "[dns, ping]"), 9,
                 "services[0].endpoints[0].checks[1]", "unknown check 'ping'; choose from",
                 id="unknown-check"),
    pytest.param(edit("[dns, tcp, tls]", "[]"), 9, "services[0].endpoints[0].checks",
                 "the list is empty", id="empty-checks"),
    pytest.param(edit("[dns, tcp, tls]", "[tcp, tcp]"), 9,
                 "services[0].endpoints[0].checks[1]", "'tcp' is listed twice",
                 id="duplicate-check"),
    pytest.param(edit("www.example.org", "192.0.2.1"), 9, "services[0].endpoints[0].checks",
                 "the dns check needs a host name, but host is the address 192.0.2.1",
                 id="dns-on-ip"),
    pytest.param(edit("www.example.org\n        port: 443\n        checks: [dns, tcp, tls]",
                      "192.0.2.1\n        port: 443\n        checks: [tcp, tls, https]"), 9,
                 "services[0].endpoints[0].checks",
                 "the tls and https check on the address 192.0.2.1 needs an 'sni'",
                 id="tls-on-ip-without-sni"),
    pytest.param(edit("www.example.org\n        port: 443\n        checks: [dns, tcp, tls]",
                      "'2001:db8::1'\n        port: 443\n        checks: [https]"), 9,
                 "services[0].endpoints[0].checks", "needs an 'sni'",
                 id="https-on-ipv6-without-sni"),
    # hosts and sni
    pytest.param(edit("www.example.org", "www.exa mple.org"), 7,
                 "services[0].endpoints[0].host", "is neither a DNS name nor an IP address",
                 id="space-in-host"),
    pytest.param(edit("www.example.org", "'[::1]'"), 7, "services[0].endpoints[0].host",
                 "without brackets", id="bracketed-ipv6"),
    pytest.param(edit("port: 443", "port: 443\n        sni: 192.0.2.1"), 9,
                 "services[0].endpoints[0].sni", "sni must be a name", id="sni-is-ip"),
    # CA files and inline PEM
    pytest.param(edit("port: 443", "port: 443\n        ca: missing.pem"), 9,
                 "services[0].endpoints[0].ca", "does not exist", id="ca-missing-file"),
    pytest.param(edit("port: 443", "port: 443\n        ca: ~nosuchuser/ca.pem"), 9,
                 "services[0].endpoints[0].ca", "does not exist", id="ca-tilde-path"),
    pytest.param(edit("port: 443", "port: 443\n        ca: not-a-cert.pem"), 9,
                 "services[0].endpoints[0].ca", "holds no PEM X.509 certificate",
                 id="ca-not-pem"),
    pytest.param(edit("port: 443", "port: 443\n        ca: nested"), 9,
                 "services[0].endpoints[0].ca", "is a folder", id="ca-is-folder"),
    pytest.param(edit("    name: Example", "    ca: |\n      -----BEGIN CERTIFICATE-----\n"
                      "      AAAA\n      -----END CERTIFICATE-----"), 4, "services[0].ca",
                 "inline PEM holds no PEM X.509 certificate", id="ca-inline-garbage"),
    pytest.param(edit("version: 1\n", "version: 1\nca_bundle: not-a-cert.pem\n"), 2,
                 "ca_bundle", "holds no PEM X.509 certificate", id="ca-bundle-not-pem"),
    pytest.param(edit("version: 1\n", "version: 1\nca_bundle: gone.pem\n"), 2,
                 "ca_bundle", "does not exist", id="ca-bundle-missing"),
    # version
    pytest.param(edit("version: 1", "version: 2"), 1, "version", "unsupported version 2",
                 id="version-2"),
    pytest.param(edit("version: 1", 'version: "1"'), 1, "version", "unsupported version '1'",
                 id="version-as-text"),
    pytest.param(edit("version: 1", "version: true"), 1, "version", "unsupported version",
                 id="version-as-bool"),
    # path
    pytest.param(edit("port: 443", "port: 443\n        path: index.html"), 9,
                 "services[0].endpoints[0].path", "'index.html' must start with '/'",
                 id="relative-path"),
    pytest.param(edit("port: 443", "port: 443\n        path: /a b"), 9,
                 "services[0].endpoints[0].path", "must not contain spaces",
                 id="space-in-path"),
    # empty collections and expected_asns
    pytest.param("version: 1\nservices: []\n", 2, "services", "the list is empty",
                 id="no-services"),
    pytest.param(MINIMAL.split("      - id")[0].replace("endpoints:\n", "endpoints: []\n"), 5,
                 "services[0].endpoints", "the list is empty", id="no-endpoints"),
    pytest.param(edit("port: 443", "port: 443\n        expected_asns: [13335, -1]"), 9,
                 "services[0].endpoints[0].expected_asns[1]", "-1 is not an AS number",
                 id="negative-asn"),
    # the document itself
    pytest.param("", 1, None, "the file is empty", id="empty-file"),
    pytest.param("# nothing but a comment\n\n", 1, None, "the file is empty",
                 id="only-comments"),
    pytest.param("- version: 1\n", 1, None,
                 "expected a mapping with 'version' and 'services' at the top, got a list",
                 id="top-level-list"),
    pytest.param("just text\n", 1, None, "expected a mapping with 'version'",
                 id="top-level-text"),
    pytest.param("version: 1\nservices: [\n  {id: x\n", 4, None, "YAML syntax error",
                 id="unclosed-flow"),
    pytest.param("version: 1\n services: []\n", 2, None, "YAML syntax error",
                 id="bad-indentation"),
    pytest.param("version: 1\n---\nversion: 1\n", 2, None, "YAML syntax error",
                 id="two-documents"),
    pytest.param("version: 1\nservices: !!python/object:os.system []\n", 2, "services",
                 "expected a list, got a list tagged", id="python-tag"),
    pytest.param("version: 1\nservices: *nowhere\n", 2, None, "YAML syntax error",
                 id="unknown-alias"),
    pytest.param("version: 1\x00\n", 1, None, "not allowed in YAML", id="nul-character"),
]


@pytest.mark.parametrize(("text", "line", "field", "message"), INVALID)
def test_invalid_files(text, line, field, message):
    with pytest.raises(TargetsError) as caught:
        parse_targets(text, source="targets.yaml", base_dir=DATA)
    error = caught.value
    assert (error.line, error.field) == (line, field), str(error)
    assert message in error.message, str(error)
    assert str(error).startswith(f"targets.yaml line {line}")
    if field:
        assert f", {field}: " in str(error)


# ---------------------------------------------------------------------------------------
# CAs: inline PEM, paths relative to the targets file, overrides

def indented(pem: str, spaces: int) -> str:
    return "".join(" " * spaces + line + "\n" for line in pem.splitlines())


def test_inline_pem_on_service_and_endpoint():
    text = (
        "version: 1\n"
        "services:\n"
        "  - id: inline\n"
        "    ca: |\n" + indented(LAB_CA, 6) +
        "    endpoints:\n"
        "      - {id: from-service, host: a.example.org, port: 443, checks: [tls]}\n"
        "      - id: own-ca\n"
        "        host: b.example.org\n"
        "        port: 443\n"
        "        checks: [tls]\n"
        "        ca: |\n" + indented(OTHER_CA, 10)
    )
    from_service, own_ca = parse_targets(text).endpoints()
    assert subject(from_service.ca_pem) == subject(LAB_CA)
    assert subject(own_ca.ca_pem) == subject(OTHER_CA)


def test_inline_bundle_with_two_certificates_and_extra_text():
    bundle = "comment lines are ignored\n" + LAB_CA + OTHER_CA
    text = "version: 1\nca_bundle: |\n" + indented(bundle, 2) + MINIMAL.split("\n", 1)[1]
    targets = parse_targets(text)
    assert subject(targets.ca_bundle_pem) == subject(LAB_CA) + subject(OTHER_CA)
    assert "comment lines" not in targets.ca_bundle_pem


def test_ca_paths_are_relative_to_the_targets_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative path must not be read from here
    targets = load_targets(DATA / "ca-paths.yaml")
    inherits, overrides = targets.endpoints()
    assert subject(targets.ca_bundle_pem) == subject(LAB_CA)
    assert subject(inherits.ca_pem) == subject(LAB_CA)
    assert subject(overrides.ca_pem) == subject(OTHER_CA)


def test_ca_path_climbing_out_of_the_file_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (endpoint,) = load_targets(DATA / "nested" / "targets.yaml").endpoints()
    assert subject(endpoint.ca_pem) == subject(LAB_CA)


def test_parse_targets_resolves_ca_against_base_dir_or_cwd(monkeypatch):
    text = edit("port: 443", "port: 443\n        ca: lab-ca.pem")
    (endpoint,) = parse_targets(text, base_dir=DATA).endpoints()
    assert subject(endpoint.ca_pem) == subject(LAB_CA)
    monkeypatch.chdir(DATA)
    (endpoint,) = parse_targets(text).endpoints()
    assert subject(endpoint.ca_pem) == subject(LAB_CA)


def test_absolute_ca_path():
    text = edit("port: 443", f"port: 443\n        ca: '{DATA / 'other-ca.pem'}'")
    (endpoint,) = parse_targets(text, base_dir=Path("/nonexistent")).endpoints()
    assert subject(endpoint.ca_pem) == subject(OTHER_CA)


# ---------------------------------------------------------------------------------------
# load_targets: files that cannot be read

def test_missing_file():
    with pytest.raises(TargetsError) as caught:
        load_targets("no/such/targets.yaml")
    assert str(caught.value) == "no/such/targets.yaml: no such file"
    assert caught.value.line is None


def test_folder_instead_of_file():
    with pytest.raises(TargetsError) as caught:
        load_targets(DATA)
    assert "is a folder" in str(caught.value)


def test_not_utf8(tmp_path):
    path = tmp_path / "targets.yaml"
    path.write_bytes(b"version: 1\nservices:\n  - id: caf\xe9\n")
    with pytest.raises(TargetsError) as caught:
        load_targets(path)
    assert caught.value.line == 3
    assert "is not UTF-8" in str(caught.value)


def test_load_from_file_names_it_in_errors(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(edit("port: 443", "port: 99999"))
    with pytest.raises(TargetsError) as caught:
        load_targets(path)
    assert str(caught.value).startswith(f"{path} line 8, services[0].endpoints[0].port: ")


def test_minimal_fixture_file():
    targets = load_targets(DATA / "minimal.yaml")
    assert targets.source == str(DATA / "minimal.yaml")
    assert [e.id for e in targets.endpoints()] == ["example-web"]


# ---------------------------------------------------------------------------------------
# Property tests: anything in gives Targets or TargetsError, never another exception.

def parses_or_explains(text: str) -> None:
    try:
        result = parse_targets(text, source="fuzz.yaml", base_dir=DATA)
    except TargetsError as error:
        assert str(error).startswith("fuzz.yaml")
    else:
        assert isinstance(result, Targets)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text())
def test_arbitrary_text(text):
    parses_or_explains(text)


keys = st.sampled_from(
    ["version", "services", "ca_bundle", "id", "name", "test_name", "baseline", "ca", "notes",
     "endpoints", "host", "port", "ports", "checks", "sni", "path", "role", "expected_asns",
     "other"]
)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10, 70000), st.floats(allow_nan=False),
    st.sampled_from(
        ["1", "x", "a.example.org", "192.0.2.1", "::1", "/", "lab-ca.pem", "not-a-cert.pem",
         "missing.pem", "nested", "-----BEGIN CERTIFICATE-----", *CHECKS]
    ),
    st.text(max_size=10),
)
documents = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=6)
    ),
    max_leaves=30,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_arbitrary_yaml_structures(document):
    parses_or_explains(yaml.safe_dump(document))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_bundled_file(data):
    text = default_targets_path().read_text()
    start = data.draw(st.integers(0, len(text)))
    end = data.draw(st.integers(start, min(len(text), start + 40)))
    insert = data.draw(st.text(alphabet=st.sampled_from(" \n:-[]{},#'\"x1&*!|>"), max_size=8))
    mutated = text[:start] + insert + text[end:]
    try:
        result = parse_targets(mutated, source="fuzz.yaml", base_dir=REPO_ROOT)
    except TargetsError as error:
        assert str(error).startswith("fuzz.yaml")
    else:
        assert isinstance(result, Targets)
