"""Who counts as one client for per-client limits (probe.serving.clients)."""

from __future__ import annotations

import pytest

from probe.serving.clients import UNKNOWN, client_key


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("203.0.113.5", "203.0.113.5"),
        ("127.0.0.1", "127.0.0.1"),
        # one IPv6 subscriber picks any address in its /64: one client
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
        ("[2001:db8::5]", "2001:db8::/64"),
        ("fe80::1%eth0", "fe80::/64"),
        ("::1", "::/64"),
        # IPv6 spellings of an IPv4 host are that host
        ("::ffff:127.0.0.1", "127.0.0.1"),  # a dual-stack socket's IPv4 peer
        ("::ffff:203.0.113.5", "203.0.113.5"),
        ("::ffff:0:cb00:7105", "203.0.113.5"),  # SIIT
        ("::203.0.113.5", "203.0.113.5"),  # IPv4-compatible
        ("2002:cb00:7105::1", "203.0.113.5"),  # 6to4
        ("64:ff9b::cb00:7105", "203.0.113.5"),  # NAT64
        ("64:ff9b:1::cb00:7105", "203.0.113.5"),  # local-use NAT64
        # Teredo, server 198.51.100.1, client 203.0.113.5 (stored inverted)
        ("2001:0:c633:6401:8000:ffff:34ff:8efa", "203.0.113.5"),
        # nothing that parses: one "unknown" client, bounded by the totals
        (None, UNKNOWN),
        ("", UNKNOWN),
        ("/run/probe.sock", UNKNOWN),
        ("not an address", UNKNOWN),
    ],
)
def test_client_key(address, key):
    assert client_key(address) == key


def test_two_addresses_of_one_slash_64_share_a_key_and_neighbours_do_not():
    assert client_key("2001:db8:0:1::a") == client_key("2001:db8:0:1::b")
    assert client_key("2001:db8:0:1::a") != client_key("2001:db8:0:2::a")
    assert client_key("203.0.113.5") != client_key("203.0.113.6")
