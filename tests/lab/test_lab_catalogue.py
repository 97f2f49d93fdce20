"""The lab's data without the lab: plan, targets, scenarios, ground truth, CLI guard.

These run everywhere (no root): they catch a scenario whose rules match no
endpoint, a targets file that drifted from the address plan, or server
configurations the servers would refuse, before anyone brings the lab up.
"""

from __future__ import annotations

import ipaddress
import shutil
from fnmatch import fnmatchcase
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from probe.lab import plan, services
from probe.lab.cli import lab as lab_cli
from probe.lab.lab import TARGETS_TEMPLATE
from probe.lab.scenarios import SCENARIOS, self_checks
from probe.lab.truth import ANY, Expect, compare, expectation

VERDICTS = {"ok", "dns_blocked", "tcp_blocked", "tls_blocked", "http_blocked",
            "protocol_blocked", "udp_blocked", "quic_blocked", "throttled", "down",
            "inconclusive"}
METHODS = {"dns.nxdomain", "dns.bogon", "dns.injected", "dns.inconsistent", "dns.timeout",
           "dns.servfail", "tcp.timeout", "tcp.reset", "tcp.refused", "tls.reset", "tls.timeout",
           "tls.eof", "tls.mitm", "http.blockpage", "http.reset", "http.timeout",
           "protocol.timeout", "protocol.invalid", "throttle",
           "dns.blockpage",  # a CNAME to a known blockpage host
           # ICMP rejects, resolver error codes, forged TLS alerts
           "tcp.prohibited", "dns.refused", "dns.no_answer", "tls.alert",
           # calls, UDP flows and QUIC
           "udp.timeout", "udp.cutoff", "udp.injected", "udp.unreachable", "udp.prohibited",
           "udp.invalid", "quic.timeout", "quic.handshake", "quic.version", "quic.mitm",
           "quic.reset", "quic.unreachable", "quic.http"}
FUNCTIONS = {"messaging", "media", "calls", "registration", "web", "status"}
NETWORK_FINDINGS = {"udp": {"ok", "all_udp_dropped", "all_quic_dropped", "unknown"},
                    "restricted": {True, False}, "network_down": {True, False}}
SERVICE_STATUSES = {"ok", "blocked", "partially_blocked", "down", "inconclusive", ANY}


@pytest.fixture(scope="module")
def lab_directory(tmp_path_factory):
    """The lab targets file next to freshly made CA files, as `probe lab up` writes them."""
    from probe.lab.pki import write_pki

    directory = tmp_path_factory.mktemp("lab-targets")
    pki = write_pki(directory / "pki", services.certificate_names(),
                    pinned_names=services.pinned_names())
    (directory / "ca").mkdir()
    shutil.copyfile(pki.lab_root.cert, directory / "ca" / "lab-root.pem")
    shutil.copyfile(pki.pinned_root.cert, directory / "ca" / "signal-root.pem")
    shutil.copyfile(TARGETS_TEMPLATE, directory / "targets.yaml")
    return directory, pki


@pytest.fixture(scope="module")
def lab_endpoints():
    """Every endpoint of the lab's targets file as written (service id added)."""
    data = yaml.safe_load(TARGETS_TEMPLATE.read_text())
    return [{**endpoint, "service": service["id"]} for service in data["services"]
            for endpoint in service["endpoints"]]


def test_the_real_loader_accepts_the_lab_targets(lab_directory):
    from probe.targets import TargetsError, load_targets

    directory, _ = lab_directory
    try:
        targets = load_targets(directory / "targets.yaml")
    except TargetsError as exc:
        if any(word in str(exc) for word in ("'stun'", "'quic'", "'udp'", "'turn'", "function")):
            pytest.skip(f"the targets loader does not know the UDP checks yet: {exc}")
        raise
    assert {s.id for s in targets.services} == set(plan.SERVICES)
    assert all(endpoint.function for endpoint in targets.endpoints())


def test_targets_file_matches_the_address_plan(lab_endpoints):
    assert {e["service"] for e in lab_endpoints} == set(plan.SERVICES)
    udp_checks = {"stun", "turn", "udp", "quic"}
    for endpoint in lab_endpoints:
        assert endpoint.get("function"), f"{endpoint['id']}: every lab endpoint names its function"
        try:
            ipaddress.ip_address(endpoint["host"])
            host = plan.host_at(endpoint["host"])
        except ValueError:
            host = plan.host_named(endpoint["host"])
        assert host.service == endpoint["service"], endpoint["id"]
        checks = set(endpoint["checks"]) - {"dns"}
        is_udp = bool(checks & udp_checks)
        assert not (is_udp and checks - udp_checks), f"{endpoint['id']} mixes TCP and UDP checks"
        ports = plan.udp_ports(host) if is_udp else {
            port for kind, port in host.listeners if kind not in plan.UDP_KINDS}
        wanted = set(endpoint.get("ports") or [endpoint["port"]])
        assert wanted <= ports, f"{endpoint['id']}: nothing listens on {sorted(wanted - ports)}"


def test_addresses_are_documentation_ranges_only():
    allowed = [ipaddress.ip_network(n) for n in ("198.51.100.0/24", "203.0.113.0/24",
                                                 "2001:db8::/32")]
    seen = plan.addresses(plan.HOSTS) + [plan.HONEST_RESOLVER, plan.ISP_RESOLVER]
    for link in plan.LINKS:
        seen += [link.a_v4, link.a_v6, link.b_v4, link.b_v6]
    for routes in plan.ROUTES.values():
        for prefix, via in routes:
            seen.append(via)
            network = ipaddress.ip_network(prefix)
            assert any(network.subnet_of(a) for a in allowed if a.version == network.version)
    for address in seen:
        ip = ipaddress.ip_address(address)
        assert any(ip in a for a in allowed if a.version == ip.version), address
    assert all(ns.startswith("plab-") for ns in plan.NAMESPACES)


def test_every_scenario_is_well_formed(lab_endpoints):
    from probe.control.reference import ENDPOINT_ID

    # the control helper's UDP echo joins the baseline as an endpoint of its own
    ids = [e["id"] for e in lab_endpoints] + [ENDPOINT_ID]
    assert len({s.name for s in SCENARIOS}) == len(SCENARIOS)
    for scenario in SCENARIOS:
        assert scenario.description and scenario.title, scenario.name
        assert scenario.name == "none" or scenario.actions, scenario.name
        assert self_checks(scenario), f"{scenario.name} has no self-test"
        for rule in scenario.truth:
            assert rule.verdict in VERDICTS, (scenario.name, rule)
            assert rule.method in METHODS | {None, ANY}, (scenario.name, rule)
            assert any(fnmatchcase(i, rule.endpoint) for i in ids), (scenario.name, rule)
        for service, status in scenario.services.items():
            assert service in plan.SERVICES and status in SERVICE_STATUSES, scenario.name
        functions_of = {}
        for endpoint in lab_endpoints:
            functions_of.setdefault(endpoint["service"], set()).add(endpoint["function"])
        for service, functions in scenario.functions.items():
            for function, status in functions.items():
                assert function in FUNCTIONS & functions_of[service], (scenario.name, function)
                assert status in SERVICE_STATUSES, (scenario.name, service, function)
        for key, value in scenario.network.items():
            assert value in NETWORK_FINDINGS[key], (scenario.name, key, value)


def test_server_configurations_are_accepted_by_the_servers(lab_directory, tmp_path):
    from probe.lab.servers import Fleet

    _, pki = lab_directory
    for service in plan.SERVICES:
        Fleet.from_config(services.service_fleet(service, pki), service)
    Fleet.from_config(services.honest_dns_fleet(), "honest")
    Fleet.from_config(services.isp_dns_fleet(tmp_path / "behaviours.json"), "isp")
    Fleet.from_config(services.mitm_fleet(pki, 8443), "mitm")


ROWS = [
    {"service": "telegram", "id": "telegram-dc1", "address": "203.0.113.11", "port": 443,
     "verdict": "tcp_blocked", "method": "tcp.timeout"},
    {"service": "telegram", "id": "telegram-dc4", "address": "203.0.113.14", "port": 443,
     "verdict": "ok", "method": None},
    {"service": "whatsapp", "id": "whatsapp-e1", "address": None, "port": None,
     "verdict": "dns_blocked", "method": "dns.nxdomain"},
]


def test_truth_first_matching_rule_wins_and_default_is_ok():
    rules = (Expect("telegram-dc1", "tcp_blocked", "tcp.timeout", address="203.0.113.*"),
             Expect("telegram-*", "down", ANY))
    assert expectation(rules, ROWS[0]).verdict == "tcp_blocked"
    assert expectation(rules, ROWS[1]).verdict == "down"
    assert expectation(rules, {"id": "news-http"}).verdict == "ok"


def test_truth_comparison_reports_each_difference():
    rules = (Expect("telegram-dc[1]", "tcp_blocked", "tcp.timeout"),
             Expect("whatsapp-*", "dns_blocked", "dns.nxdomain"))
    assert compare(rules, ROWS) == []
    wrong = compare((Expect("telegram-dc1", "tcp_blocked", "tcp.reset"),), ROWS)
    assert [m.key for m in wrong] == ["telegram-dc1 203.0.113.11:443", "whatsapp-e1 -"]
    # Claiming blocking where the truth says ok is a bug with or without a control.
    assert wrong[0].needs_control and not wrong[1].needs_control
    local = compare(
        (), [{"id": "news-http", "verdict": "http_blocked", "method": "http.blockpage"}]
    )
    assert local[0].expected == "ok" and not local[0].needs_control
    services = compare((), [], {"telegram": "blocked"}, [{"id": "telegram", "status": "ok"},
                                                          {"id": "news", "status": "ok"}])
    assert [str(m) for m in services] == ["telegram: expected blocked, observed ok"]


def test_cli_without_root_says_so_in_one_line(monkeypatch):
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    result = CliRunner().invoke(lab_cli, ["up"])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0 and "root" in result.output


def test_cli_lists_scenarios_without_root(monkeypatch):
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    result = CliRunner().invoke(lab_cli, ["scenarios"])
    assert result.exit_code == 0
    for scenario in SCENARIOS:
        assert scenario.name in result.output


def test_docs_list_every_scenario():
    docs = Path(__file__).parents[2] / "docs" / "lab.md"
    text = docs.read_text()
    for scenario in SCENARIOS:
        assert f"`{scenario.name}`" in text, f"docs/lab.md does not describe {scenario.name}"
