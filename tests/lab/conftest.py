"""The lab, brought up once per test session for the tests marked ``lab``.

Skips with the reason when the machine cannot run it (not root, or iproute2 /
iptables / nftables missing). The lab's lifetime is bounded (every process it
starts exits by itself after ``LAB_DURATION`` seconds) and teardown checks
that no namespace, rule or process is left behind.
"""

from __future__ import annotations

import os
import shutil

import pytest

LAB_DURATION = 1200  # seconds: a hard upper bound on every lab process


def _cannot_run_lab() -> str | None:
    if os.geteuid() != 0:
        return "the lab needs root (network namespaces, firewall rules)"
    for tool, package in (
        ("ip", "iproute2"),
        ("tc", "iproute2"),
        ("ss", "iproute2"),
        ("iptables", "iptables"),
        ("ip6tables", "iptables"),
        ("nft", "nftables"),
    ):
        if shutil.which(tool) is None:
            return f"`{tool}` is missing (apt-get install -y {package})"
    return None


@pytest.fixture(scope="session")
def lab():
    reason = _cannot_run_lab()
    if reason:
        pytest.skip(reason)
    from probe.lab import topology
    from probe.lab.lab import Lab

    the_lab = Lab()
    the_lab.up(duration=LAB_DURATION)
    try:
        yield the_lab
    finally:
        stopped_pids = the_lab.down()
        assert not topology.existing_namespaces(), "plab-* namespaces left after down"
        assert not the_lab.state.exists(), f"{the_lab.state} left after down"
        del stopped_pids


@pytest.fixture
def clean_lab(lab):
    """The lab with no scenario applied, reset again afterwards."""
    lab.reset()
    yield lab
    lab.reset()


def netfilterqueue_missing() -> bool:
    try:
        import netfilterqueue  # noqa: F401
    except ImportError:
        return True
    return False


QUEUEING_ACTIONS = {"DnsInjection", "QuicSniFilter", "StunInjection"}  # NFQUEUE processes


def needs_missing_netfilterqueue(scenario) -> bool:
    """Whether ``scenario`` runs an NFQUEUE process and NetfilterQueue is missing."""
    uses_queue = any(type(a).__name__ in QUEUEING_ACTIONS for a in scenario.actions)
    return uses_queue and netfilterqueue_missing()
