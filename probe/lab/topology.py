"""Build and tear down the lab's network: namespaces, veth pairs, addresses, routes.

The lab is five network namespaces named ``plab-*`` joined by veth pairs among
themselves only: no link into the host's namespace, no default route, no NAT.
``teardown`` removes every ``plab-*`` namespace (and so every rule and qdisc in
it) after stopping the processes inside, so it also recovers from a crash.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from probe.lab import plan
from probe.lab.processes import LabError, in_ns, kill_namespace_processes, run

NETNS_ETC = Path("/etc/netns")  # `ip netns exec` bind-mounts resolv.conf from here
RESOLV_CONF = {
    plan.CLIENT: plan.ISP_RESOLVER,  # the volunteer uses the ISP's resolver
    plan.CONTROL: plan.HONEST_RESOLVER,
    plan.ISP: plan.HONEST_RESOLVER,
    plan.CENSOR: plan.HONEST_RESOLVER,
    plan.INTERNET: plan.HONEST_RESOLVER,
}


def check_tools() -> None:
    """Raise LabError naming the first missing tool the lab needs."""
    for tool, package in (("ip", "iproute2"), ("tc", "iproute2"), ("ss", "iproute2"),
                          ("iptables", "iptables"), ("ip6tables", "iptables")):
        if shutil.which(tool) is None:
            raise LabError(f"`{tool}` is missing: apt-get install -y {package}")


def existing_namespaces() -> list[str]:
    out = run(["ip", "netns", "list"], check=False).stdout
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    return [n for n in names if n.startswith(plan.PREFIX)]


def teardown() -> list[str]:
    """Remove every plab-* namespace and its processes; return what was removed."""
    removed = []
    for namespace in existing_namespaces():
        kill_namespace_processes(namespace)
        run(["ip", "netns", "delete", namespace], check=False)
        removed.append(namespace)
    for namespace in plan.NAMESPACES:
        shutil.rmtree(NETNS_ETC / namespace, ignore_errors=True)
    return removed


def _sysctl(namespace: str, key: str, value: str) -> None:
    run(in_ns(namespace, ["sysctl", "-qw", f"{key}={value}"]))


def build() -> None:
    """Create the namespaces and wire them as in ``plan``; the caller tears down
    whatever is left before (``teardown``)."""
    for namespace in plan.NAMESPACES:
        run(["ip", "netns", "add", namespace])
        run(in_ns(namespace, ["ip", "link", "set", "lo", "up"]))
        # No router advertisements or DAD delays: addresses are static.
        _sysctl(namespace, "net.ipv6.conf.all.accept_ra", "0")
        _sysctl(namespace, "net.ipv6.conf.default.accept_dad", "0")
        _sysctl(namespace, "net.ipv6.conf.all.accept_dad", "0")
        etc = NETNS_ETC / namespace
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text(
            f"# probe lab: {namespace}\nnameserver {RESOLV_CONF[namespace]}\n"
            "options timeout:2 attempts:1\n"
        )
        (etc / "hosts").write_text("127.0.0.1 localhost\n::1 localhost\n")
    for link in plan.LINKS:
        run(["ip", "link", "add", link.a_dev, "netns", link.a, "type", "veth",
             "peer", "name", link.b_dev, "netns", link.b])
        for ns, dev, v4, v6 in ((link.a, link.a_dev, link.a_v4, link.a_v6),
                                (link.b, link.b_dev, link.b_v4, link.b_v6)):
            run(in_ns(ns, ["ip", "addr", "add", f"{v4}/{link.prefix_v4}", "dev", dev]))
            run(in_ns(ns, ["ip", "-6", "addr", "add", f"{v6}/{link.prefix_v6}", "dev", dev,
                           "nodad"]))
            run(in_ns(ns, ["ip", "link", "set", dev, "up"]))
    for namespace in plan.FORWARDING:
        _sysctl(namespace, "net.ipv4.ip_forward", "1")
        _sysctl(namespace, "net.ipv6.conf.all.forwarding", "1")
    add_service_addresses()
    for namespace, routes in plan.ROUTES.items():
        for prefix, via in routes:
            run(in_ns(namespace, ["ip", "route", "add", prefix, "via", via]))
    for namespace, prefixes in plan.BLACKHOLES.items():
        for prefix in prefixes:
            run(in_ns(namespace, ["ip", "route", "add", "blackhole", prefix]))


def add_service_addresses() -> None:
    ns = plan.INTERNET
    run(in_ns(ns, ["ip", "addr", "add", f"{plan.HONEST_RESOLVER}/32", "dev", plan.SERVICES_DEV]))
    for address in plan.addresses(plan.HOSTS):
        set_service_address(address, present=True)


def set_service_address(address: str, present: bool) -> None:
    """Add or remove one service address (removing makes it a stale endpoint)."""
    suffix = "/128" if ":" in address else "/32"
    argv = ["ip", "addr", "add" if present else "del", address + suffix, "dev", plan.SERVICES_DEV]
    if ":" in address and present:
        argv.append("nodad")
    proc = run(in_ns(plan.INTERNET, argv), check=False)
    already = ("File exists", "already assigned")
    if proc.returncode != 0 and present and not any(s in proc.stderr for s in already):
        raise LabError(f"cannot add {address}: {proc.stderr.strip()}")


def set_client_ipv6(enabled: bool) -> None:
    """Give the client IPv6 connectivity, or none at all (no address, no route)."""
    ns, dev = plan.CLIENT, plan.CLIENT_DEV
    v6_routes = [(prefix, via) for prefix, via in plan.ROUTES[ns] if ":" in prefix]
    if enabled:
        run(in_ns(ns, ["ip", "-6", "addr", "replace", f"{plan.CLIENT_V6}/64", "dev", dev,
                       "nodad"]))
        for prefix, via in v6_routes:
            run(in_ns(ns, ["ip", "-6", "route", "replace", prefix, "via", via]))
    else:
        for prefix, _ in v6_routes:
            run(in_ns(ns, ["ip", "-6", "route", "del", prefix]), check=False)
        run(in_ns(ns, ["ip", "-6", "addr", "del", f"{plan.CLIENT_V6}/64", "dev", dev]),
            check=False)


def set_client_online(online: bool) -> None:
    """Bring the client's only link down (offline) or back up with its
    addresses and routes (IPv6 addresses do not survive a link going down)."""
    ns, dev = plan.CLIENT, plan.CLIENT_DEV
    run(in_ns(ns, ["ip", "link", "set", dev, "up" if online else "down"]))
    if online:
        set_client_ipv6(True)
        for prefix, via in plan.ROUTES[ns]:
            if ":" not in prefix:
                run(in_ns(ns, ["ip", "route", "replace", prefix, "via", via]))


def describe() -> str:
    """Addresses and routes of every lab namespace, for `probe lab status`."""
    lines = []
    for namespace in existing_namespaces():
        lines.append(f"== {namespace}")
        out = run(in_ns(namespace, ["ip", "-br", "addr"]), check=False).stdout
        lines += ["  " + line for line in out.splitlines() if not line.startswith("lo ")]
    return "\n".join(lines)
