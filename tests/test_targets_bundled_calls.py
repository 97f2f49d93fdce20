"""The bundled targets.yaml as a list of calls, UDP and QUIC endpoints, and their functions.

These tests read the shipped file only (nothing is sent anywhere): every endpoint says
which function it serves, the calls infrastructure taken from the clients' sources is
there with UDP checks on UDP ports, each such endpoint cites its source, and the baseline
holds enough UDP and QUIC references on separate networks to tell "this network drops
all UDP / all QUIC" from one service's calls being blocked.
"""

import pytest

from probe.targets import Targets, default_targets_path, load_targets
from probe.vocabulary import TCP_CHECKS, UDP_CHECKS, Check, Function


@pytest.fixture(scope="module")
def bundled() -> Targets:
    return load_targets(default_targets_path())


def by_id(targets: Targets) -> dict:
    return {endpoint.id: endpoint for endpoint in targets.endpoints()}


def test_every_bundled_endpoint_names_its_function(bundled):
    for endpoint in bundled.endpoints():
        assert endpoint.function in set(Function), endpoint.id


def test_no_bundled_endpoint_mixes_tcp_and_udp_checks(bundled):
    for endpoint in bundled.endpoints():
        checks = set(endpoint.checks)
        assert not (checks & TCP_CHECKS and checks & UDP_CHECKS), endpoint.id


def test_udp_endpoints_cite_their_source_and_check_date(bundled):
    # A relay address that nobody can trace back to a client's source is a guess; a
    # stale guess reads as blocking everywhere. Each one says where it comes from.
    for service in bundled.services:
        for endpoint in service.endpoints:
            if set(endpoint.checks) & UDP_CHECKS:
                notes = endpoint.notes or service.notes
                assert "Checked 2026-12-03" in notes, endpoint.id


def test_every_messaging_service_with_fixed_call_relays_has_a_calls_endpoint(bundled):
    for service_id in ("telegram", "facebook_messenger", "session", "simplex", "signal"):
        functions = {e.function for e in bundled.service(service_id).endpoints}
        assert Function.CALLS in functions, service_id


def test_services_that_hand_out_relays_at_call_time_say_so(bundled):
    # WhatsApp, Signal and Wire give the client its relays during call setup; the file
    # says so instead of listing guessed addresses.
    assert "call time" in bundled.service("whatsapp").notes
    assert "/v2/calling/relays" in bundled.service("signal").notes
    assert "/calls/config/v2" in bundled.service("wire").notes
    for service_id in ("whatsapp", "wire"):
        assert all(
            not set(e.checks) & UDP_CHECKS for e in bundled.service(service_id).endpoints
        )


def test_telegram_call_relays(bundled):
    relays = [e for e in bundled.service("telegram").endpoints if e.role == "call_relay"]
    assert relays
    for relay in relays:
        # Telegram's WebRTC call servers listen on UDP 1400 and answer plain STUN
        assert relay.ports == (1400,) and Check.STUN in relay.checks
        assert relay.host.startswith("91.108.") and relay.host_is_address
        assert relay.function == Function.CALLS
    flows = [relay for relay in relays if Check.UDP in relay.checks]
    assert flows and all(flow.payload == "stun" for flow in flows)


def test_facebook_messenger_stun_is_a_udp_stun_check(bundled):
    stun = by_id(bundled)["fbmessenger-stun"]
    assert stun.host == "stun.fbsbx.com" and stun.ports == (3478,)
    assert stun.checks == ("dns", "stun") and stun.function == Function.CALLS


def test_session_turn_servers(bundled):
    turns = [e for e in bundled.service("session").endpoints if e.role == "turn"]
    assert sorted(e.host for e in turns) == sorted(
        f"{name}.getsession.org" for name in ("freyr", "angus", "hereford", "holstein", "brahman")
    )
    for endpoint in turns:
        # the clients write turn:<name> without a port: TURN over UDP 3478
        assert endpoint.ports == (3478,) and endpoint.checks == ("dns", "turn")


def test_simplex_default_routers_and_call_servers(bundled):
    simplex = bundled.service("simplex")
    routers = {e.host for e in simplex.endpoints if e.role == "smp_router"}
    enabled = {f"smp{n}.simplex.im" for n in (8, 9, 10, 11, 12, 14, 15, 16, 17, 18, 19)}
    assert routers == enabled  # smp4-6 are preset but disabled in the apps
    endpoints = by_id(bundled)
    assert endpoints["simplex-stun"].checks == ("dns", "stun")
    assert endpoints["simplex-stun"].ports == (443,)
    # TURN is TLS over TCP 443 in the apps' defaults: a TCP endpoint, not a UDP one
    assert endpoints["simplex-turn-tls"].checks == ("dns", "tcp", "tls")


def test_baseline_tells_all_udp_and_all_quic_dropped_apart(bundled):
    baseline = bundled.service("baseline")
    stun_hosts = {e.host for e in baseline.endpoints if Check.STUN in e.checks}
    quic_hosts = {e.host for e in baseline.endpoints if Check.QUIC in e.checks}
    flows = [e for e in baseline.endpoints if Check.UDP in e.checks]
    # two operators each, so one of them being blocked is not "all UDP dropped"
    assert len(stun_hosts) >= 2 and len(quic_hosts) >= 2
    assert len({host.split(".")[-2] for host in stun_hosts}) >= 2
    assert len({host.split(".")[-2] for host in quic_hosts}) >= 2
    assert flows and all(flow.payload == "stun" for flow in flows)
    # each QUIC reference has a TCP twin on the same name: "TCP works, QUIC does not"
    tcp_hosts = {e.host for e in baseline.endpoints if Check.TLS in e.checks}
    assert quic_hosts <= tcp_hosts
