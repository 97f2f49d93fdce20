"""Every scenario really does what it says (independent observations from the
client and the control), and the lab reverts and recovers completely."""

from __future__ import annotations

import json

import pytest

from probe.lab import plan, processes, topology
from probe.lab.scenarios import SCENARIOS, get
from probe.lab.selftest import run_checks, selftest

from .conftest import needs_missing_netfilterqueue

pytestmark = pytest.mark.lab


@pytest.mark.parametrize("name", [s.name for s in SCENARIOS])
def test_scenario_selftest(clean_lab, name):
    scenario = get(name)
    if needs_missing_netfilterqueue(scenario):
        pytest.skip("its NFQUEUE process needs NetfilterQueue (pip install NetfilterQueue)")
    clean_lab.apply(scenario)
    assert clean_lab.current_scenario() == name
    results = selftest(scenario)
    failed = [str(r) for r in results if not r.ok]
    assert not failed, "the lab does not do what the scenario says:\n" + "\n".join(failed)


def test_reset_reverts_every_scenario_completely(clean_lab):
    """Apply the scenarios that leave the most state, reset, and look for any trace."""
    for name in ("tls-mitm", "throttle", "service-down", "endpoint-down", "client-offline",
                 "ipv6-no-route", "http-blockpage", "dns-nxdomain", "throttle-sni-late",
                 "dns-cname-blockpage", "mtproto-dpi", "dns-blockpage-https", "dns-lossy-link",
                 "quic-sni-filter", "stun-forged", "udp-flow-cutoff", "allowlist-mode",
                 "all-udp-drop"):
        clean_lab.apply(name)
    clean_lab.reset()
    assert clean_lab.censor_rules() == ""
    qdisc = processes.run(processes.in_ns(plan.CENSOR, ["tc", "qdisc", "show", "dev",
                                                        plan.CENSOR_CLIENT_DEV])).stdout
    assert "htb" not in qdisc
    assert json.loads(clean_lab.behaviour_file.read_text()) == {}
    assert not [n for n in processes.recorded(clean_lab.state) if n.startswith("scenario-")]
    assert all(clean_lab.status()["processes"].values())
    assert clean_lab.current_scenario() is None
    results = selftest(get("none"))
    assert all(r.ok for r in results), [str(r) for r in results if not r.ok]


def test_second_up_recovers_from_a_crashed_lab(lab):
    """Forget the state directory (as a crash would), then `up` again: the old
    processes and namespaces are found and removed, the new lab works."""
    old = {name: json.loads((lab.state / "pids" / f"{name}.json").read_text())["pid"]
           for name in processes.recorded(lab.state)}
    lab.apply("ip-blackhole")
    for path in (lab.state / "pids").glob("*.json"):
        path.unlink()
    lab.up(duration=600)
    for pid in old.values():
        assert processes._start_time(pid) is None or not _in_lab(pid), f"pid {pid} survived"
    assert set(topology.existing_namespaces()) == set(plan.NAMESPACES)
    assert lab.censor_rules() == ""
    results = run_checks(get("none").checks)
    assert all(r.ok for r in results), [str(r) for r in results if not r.ok]


def _in_lab(pid: int) -> bool:
    out = processes.run(["ip", "netns", "identify", str(pid)], check=False).stdout.strip()
    return out.startswith(plan.PREFIX)
