"""The server configurations of the fake Internet, derived from ``plan``.

One server process (a ``probe.lab.servers`` fleet) per lab service, so a
scenario can stop exactly one service; one for the honest DNS in the Internet
namespace; one for the ISP resolver, whose lies come from a behaviour file the
lab rewrites per scenario. Pure: paths in, JSON-ready dictionaries out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from probe.lab import plan
from probe.lab.pki import PkiPaths


def _endpoint(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def certificate_names() -> list[str]:
    # the ISP's blockpage host has a valid certificate for its own name (a blockpage
    # served over HTTPS: right chain, wrong name for the site asked)
    return [h.name for h in plan.HOSTS if h.name] + [plan.ISP_BLOCKPAGE_HOST]


def pinned_names() -> list[str]:
    return [h.name for h in plan.HOSTS if h.name and h.pki == "signal"]


def service_fleet(service: str, pki: PkiPaths) -> dict[str, Any]:
    """Every listener of one lab service."""
    hosts = plan.hosts_of(service)
    servers: list[dict[str, Any]] = []
    https = [h for h in hosts if ("https", 443) in h.listeners]
    if https:
        names = [h.name for h in https if h.name]
        servers.append({
            "kind": "https",
            "listen": [_endpoint(a, 443) for a in plan.addresses(https)],
            "certificates": {n: pki.leaves[n].to_json() for n in names},
            "default_certificate": names[0],
            "titles": {n: f"{n} ({service}, probe lab)" for n in names},
            "download_size": max([h.download_bytes for h in https] + [1 << 20]),
        })
    # One STUN server answers every STUN, TURN and echo port of the service (it
    # answers Binding and unauthenticated Allocate, and echoes other datagrams).
    udp = [_endpoint(a, port) for h in hosts for kind, port in h.listeners
           if kind in ("stun", "turn", "udp-echo") for a in plan.addresses([h])]
    if udp:
        servers.append({"kind": "stun", "listen": sorted(set(udp)), "echo": True})
    # One QUIC server per name: the HTTP/3 origin presents one certificate.
    for h in hosts:
        if ("quic", 443) in h.listeners and h.name:
            servers.append({
                "kind": "quic",
                "listen": [_endpoint(a, 443) for a in plan.addresses([h])],
                "certificate": pki.leaves[h.name].to_json(),
                "title": f"{h.name} ({service}, probe lab, HTTP/3)",
            })
    for kind, port in sorted({listener for h in hosts for listener in h.listeners}):
        if kind == "https" or kind in plan.UDP_KINDS:
            continue
        listen = [_endpoint(a, port) for h in hosts if (kind, port) in h.listeners
                  for a in plan.addresses([h])]
        if kind == "http":
            names = [h.name for h in hosts if h.name]
            servers.append({"kind": "http", "listen": listen,
                            "titles": {n: f"{n} ({service}, probe lab)" for n in names}})
        elif kind == "mtproto":
            servers.append({"kind": "mtproto", "listen": listen})
        elif kind == "tcp":
            servers.append({"kind": "tcp", "listen": listen, "mode": "echo"})
        else:
            raise ValueError(f"plan: unknown listener kind {kind!r}")
    return {"servers": servers}


def honest_dns_fleet() -> dict[str, Any]:
    return {"servers": [{
        "kind": "dns",
        "listen": [_endpoint(plan.HONEST_RESOLVER, 53)],
        "zone": plan.zone_records(),
    }]}


def isp_dns_fleet(behaviour_file: Path) -> dict[str, Any]:
    return {"servers": [{
        "kind": "dns",
        "listen": [_endpoint(plan.ISP_RESOLVER, 53)],
        "zone": plan.zone_records(),
        "behaviour_file": str(behaviour_file),
    }]}


def mitm_fleet(pki: PkiPaths, port: int) -> dict[str, Any]:
    """The censor's interception proxy, reached by REDIRECT: it dials the
    address the client meant (SO_ORIGINAL_DST) and relays."""
    censor_side = next(link for link in plan.LINKS if link.b == plan.CLIENT)
    return {"servers": [{
        "kind": "mitm",
        "listen": [_endpoint(censor_side.a_v4, port), _endpoint(censor_side.a_v6, port)],
        "ca": pki.censor_root.to_json(),
        "original_destination": True,
        "upstream_tls": True,
        "upstream_ca": str(pki.lab_root.cert),
    }]}


def listeners(fleet: dict[str, Any]) -> tuple[set[tuple[str, int]], set[tuple[str, int]]]:
    """(tcp, udp) endpoints a fleet listens on, to wait for."""
    tcp: set[tuple[str, int]] = set()
    udp: set[tuple[str, int]] = set()
    for server in fleet["servers"]:
        for value in server["listen"]:
            host, _, port = value.rpartition(":")
            endpoint = (host.strip("[]"), int(port))
            if server["kind"] in ("stun", "quic"):
                udp.add(endpoint)
                continue
            tcp.add(endpoint)
            if server["kind"] == "dns":
                udp.add(endpoint)
    return tcp, udp
