"""The payload-reading censors of UDP and QUIC, on real packets, without the lab.

The QUIC filter must find the server name in the Initial a real QUIC client
(aioquic) sends, and nothing in anything else; the STUN injector's forged
answer must be a Binding Success a real STUN parser (aioice) accepts, for the
request's transaction, mapping to the forged address. The ground truth's
per-function and network comparisons are checked on constructed summaries.
No root needed.
"""

from __future__ import annotations

import os

import pytest
from aioice import stun
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from probe.lab.quic_filter import client_hello_sni, quic_sni
from probe.lab.stun_injector import forged_packet, forged_success
from probe.lab.truth import compare_functions, compare_network


def _client_initial(server_name: str, version: int | None = None) -> bytes:
    configuration = QuicConfiguration(is_client=True, server_name=server_name,
                                      alpn_protocols=["h3"])
    if version is not None:
        configuration.original_version = version
        configuration.supported_versions = [version]
    connection = QuicConnection(configuration=configuration)
    connection.connect(("203.0.113.41", 443), now=0.0)
    return connection.datagrams_to_send(now=0.0)[0][0]


@pytest.mark.parametrize("version", [None, 0x6B3343CF])  # QUIC v1 (default) and v2
def test_quic_filter_reads_the_sni_of_a_real_initial(version):
    assert quic_sni(_client_initial("www.facebook.lab.test", version)) == \
        "www.facebook.lab.test"


def test_quic_filter_reads_nothing_in_other_datagrams():
    initial = bytearray(_client_initial("www.facebook.lab.test"))
    assert quic_sni(b"") is None
    assert quic_sni(b"\x40" + os.urandom(40)) is None  # a short-header packet
    for _ in range(50):
        quic_sni(os.urandom(1200))  # random bytes never raise
    initial[100] ^= 0xFF  # a corrupted packet fails authentication: no name
    assert quic_sni(bytes(initial)) is None
    # the same datagram with another name reads that name (the decryption is real)
    assert quic_sni(_client_initial("www.twitter.lab.test")) == "www.twitter.lab.test"


def test_client_hello_without_server_name():
    hello = bytes([1, 0, 0, 41, 3, 3]) + bytes(32) + bytes([0]) + bytes([0, 2, 0x13, 0x01]) + \
        bytes([1, 0]) + bytes([0, 0])
    assert client_hello_sni(hello) is None


def test_forged_stun_answer_is_a_valid_binding_success_for_the_request():
    request = stun.Message(message_method=stun.Method.BINDING,
                           message_class=stun.Class.REQUEST)
    answer = forged_success(bytes(request), "203.0.113.254", 40000)
    parsed = stun.parse_message(answer)
    assert parsed.message_method == stun.Method.BINDING
    assert parsed.message_class == stun.Class.RESPONSE
    assert parsed.transaction_id == request.transaction_id
    assert parsed.attributes["XOR-MAPPED-ADDRESS"] == ("203.0.113.254", 40000)
    v6 = stun.parse_message(forged_success(bytes(request), "2001:db8:113::254", 1))
    assert v6.attributes["XOR-MAPPED-ADDRESS"] == ("2001:db8:113::254", 1)


def test_stun_injector_ignores_everything_but_binding_requests():
    allocate = stun.Message(message_method=stun.Method.ALLOCATE,
                            message_class=stun.Class.REQUEST)
    assert forged_success(bytes(allocate), "203.0.113.254", 1) is None
    assert forged_success(b"probe-lab-flow " + os.urandom(40), "203.0.113.254", 1) is None


def test_forged_packet_comes_from_the_relay_to_the_client():
    from scapy.layers.inet import IP, UDP

    request = stun.Message(message_method=stun.Method.BINDING,
                           message_class=stun.Class.REQUEST)
    packet = bytes(IP(src="198.51.100.2", dst="203.0.113.17") / UDP(sport=40000, dport=1400)
                   / bytes(request))
    forged = IP(forged_packet(packet, "203.0.113.254"))
    assert (forged.src, forged.dst) == ("203.0.113.17", "198.51.100.2")
    assert (forged[UDP].sport, forged[UDP].dport) == (1400, 40000)
    parsed = stun.parse_message(bytes(forged[UDP].payload))
    assert parsed.attributes["XOR-MAPPED-ADDRESS"] == ("203.0.113.254", 40000)


def test_truth_compares_named_functions_only():
    expected = {"telegram": {"messaging": "ok", "calls": "blocked"}}
    right = [{"id": "telegram", "functions": {"messaging": "ok", "calls": "blocked",
                                              "media": "partially_blocked"}}]
    assert compare_functions(expected, right) == []
    as_run_writes_it = [{"id": "telegram", "functions": {
        "messaging": {"status": "ok", "explanation": "..."},
        "calls": {"status": "blocked", "explanation": "..."}}}]
    assert compare_functions(expected, as_run_writes_it) == []
    as_list = [{"id": "telegram", "functions": [{"function": "messaging", "status": "ok"},
                                                {"function": "calls", "status": "ok"}]}]
    assert [str(m) for m in compare_functions(expected, as_list)] == [
        "telegram calls: expected blocked, observed ok"]
    missing = compare_functions(expected, [{"id": "telegram", "status": "ok"}])
    assert {m.observed for m in missing} == {"not reported"}


def test_truth_compares_network_findings():
    assert compare_network({"udp": "all_udp_dropped"}, {"udp": "all_udp_dropped"}) == []
    wrong = compare_network({"udp": "all_udp_dropped", "restricted": True}, {"udp": "ok"})
    assert [str(m) for m in wrong] == ["udp: expected all_udp_dropped, observed ok",
                                       "restricted: expected True, observed not reported"]
