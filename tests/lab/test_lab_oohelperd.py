"""An OONI test helper as the control gives the same verdicts as ours, in the lab.

The lab runs, next to our control helper, a helper speaking OONI's oohelperd
protocol (``probe.lab.servers.oohelperd``) in the same uncensored namespace, on
the same honest resolver. For each DNS, TCP and TLS scenario the protocol can
express, the real probe runs twice in the client namespace, once with each
control, and every row the protocol covers (DNS, TCP connect, TLS on port 443,
HTTP status: endpoints without MTProto, transfers or UDP) must get the same
verdict and method from both.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

import pytest

from probe.lab import plan
from probe.lab.demo import ProbeUnavailable, run_probe
from probe.lab.scenarios import get

from .conftest import needs_missing_netfilterqueue

pytestmark = pytest.mark.lab

SCENARIOS = ["dns-nxdomain", "dns-bogon-iran", "dns-injection", "ip-blackhole", "tcp-reset",
             "tls-sni-reset", "tls-sni-drop", "tls-mitm", "service-down",
             "dns-forged-public", "dns-localhost-turkmenistan", "dns-error-codes", "dns-drop",
             "endpoint-down", "icmp-prohibited", "tls-alert", "http-blockpage"]
COVERED_CHECKS = {"dns", "tcp", "tls", "https", "http"}


def covered(targets) -> set[tuple[str, int | None]]:
    """(endpoint id, port) pairs whose every step the OONI protocol measures
    (port None: the endpoint's DNS rows)."""
    out: set[tuple[str, int | None]] = set()
    for endpoint in targets.endpoints():
        checks = set(endpoint.checks)
        if not checks <= COVERED_CHECKS:
            continue
        out.add((endpoint.id, None))  # the rows of a name that does not resolve
        for port in endpoint.ports:
            if checks & {"tls", "https"} and port != 443:
                continue  # OONI's helpers handshake on 443 only
            out.add((endpoint.id, port))
    return out


def rows(result: dict) -> dict[tuple[str, str | None, int | None], tuple[str, str | None]]:
    return {(e["id"], e.get("address"), e.get("port")): (e["verdict"], e["method"])
            for e in result["endpoints"]}


@pytest.mark.parametrize("name", SCENARIOS)
def test_oohelperd_control_gives_our_controls_verdicts(clean_lab, tmp_path, name):
    from probe.targets import load_targets

    scenario = get(name)
    if needs_missing_netfilterqueue(scenario):
        pytest.skip("its NFQUEUE process needs NetfilterQueue (pip install NetfilterQueue)")
    ours, theirs = clean_lab.control_url(), clean_lab.oohelperd_url()
    assert ours and theirs, "the lab's control helpers are not running"
    assert theirs == plan.OOHELPERD_URL
    clean_lab.apply(scenario)
    targets = load_targets(clean_lab.targets_path)
    services = sorted(scenario_services(scenario, targets))
    extra: tuple[str, ...] = tuple(a for s in services for a in ("--service", s))
    try:
        with_ours = run_probe(clean_lab, tmp_path / "ours", control_url=ours, extra=extra)
        with_theirs = run_probe(clean_lab, tmp_path / "theirs", control_url=theirs,
                                extra=(*extra, "--control-protocol", "oohelperd"))
    except ProbeUnavailable as exc:
        pytest.skip(str(exc))
    assert with_theirs["control"]["source"] == theirs, with_theirs["control"]
    keep = covered(targets)
    a, b = rows(with_ours), rows(with_theirs)
    compared = sorted(k for k in a if (k[0], k[2]) in keep and k in b)
    assert compared, f"{name}: no row the OONI protocol covers"
    differ = [f"{k[0]} {k[1]}:{k[2]}: ours {a[k]}, oohelperd {b[k]}" for k in compared
              if a[k] != b[k]]
    print(f"\n{name}: {len(compared)} rows compared, "
          f"{sum(1 for k in compared if a[k][0] != 'ok')} not ok")
    assert not differ, f"{name}: the controls disagree:\n" + "\n".join(differ)


def scenario_services(scenario, targets) -> set[str]:
    """The services whose endpoints a scenario expects not ``ok``, and the
    baseline: the rest of the targets adds time, not evidence."""
    named = {e.service for e in targets.endpoints() for rule in scenario.truth
             if rule.verdict != "ok" and fnmatchcase(e.id, rule.endpoint)}
    baseline = {s.id for s in targets.services if s.baseline}
    return named | baseline
