"""What the namespace benchmarks share: running commands, and the bundled targets
moved into documentation ranges.

``rewrite_targets`` keeps the bundled targets.yaml's shape (services, endpoints,
ports, checks, functions, UDP flow settings) and moves its literal addresses
into 203.0.113.0/24 / 2001:db8::/32, so a benchmark measures the real workload
without a single packet able to reach a real address. It refuses nothing and
builds no namespace: each script owns its topology and its cleanup.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import subprocess
from collections.abc import Callable
from pathlib import Path

import yaml

from probe.targets import Endpoint, default_targets_path, load_targets


def sh(*args: str) -> None:
    subprocess.run(args, check=True)


def in_namespace(namespace: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", namespace, *args]


def documentation_address(address: str, service_index: int, endpoint_index: int) -> str:
    """Where a literal address of the bundled targets goes: one per endpoint."""
    if ipaddress.ip_address(address).version == 4:
        return f"203.0.113.{(service_index * 16 + endpoint_index) % 250 + 1}"
    return f"2001:db8::{service_index:x}:{endpoint_index:x}"


def rewrite_targets(
    directory: Path,
    keep: Callable[[Endpoint], bool] = lambda endpoint: True,
    name: str = "targets.yaml",
    keep_pins: bool = True,
) -> tuple[Path, list[Endpoint]]:
    """The bundled targets, literal addresses moved to documentation ranges,
    only the endpoints ``keep`` accepts (a service left empty is dropped).
    ``keep_pins=False`` drops the endpoints' pinned CAs (Signal pins its own
    root), for a world whose servers all hold one lab certificate.

    Returns the file and the endpoints written, with their rewritten hosts."""
    targets = load_targets(default_targets_path())
    services = []
    written: list[Endpoint] = []
    for s_index, service in enumerate(targets.services):
        endpoints = []
        for e_index, endpoint in enumerate(service.endpoints):
            if not keep(endpoint):
                continue
            host = endpoint.host
            if endpoint.host_is_address:
                host = documentation_address(host, s_index, e_index)
            entry: dict = {"id": endpoint.id, "host": host, "ports": list(endpoint.ports),
                           "checks": list(endpoint.checks), "path": endpoint.path}
            if endpoint.sni and endpoint.sni != endpoint.host:
                entry["sni"] = endpoint.sni
            if endpoint.ca_pem and keep_pins:
                entry["ca"] = endpoint.ca_pem
            if endpoint.function:
                entry["function"] = endpoint.function
            if "udp" in endpoint.checks:
                # the flow's shape is what a UDP run's wall time is made of
                entry.update(payload=endpoint.payload, datagrams=endpoint.datagrams,
                             interval=endpoint.interval)
            endpoints.append(entry)
            written.append(dataclasses.replace(
                endpoint, host=host, ca_pem=endpoint.ca_pem if keep_pins else None))
        if endpoints:
            services.append({"id": service.id, "name": service.name,
                             "test_name": service.test_name, "baseline": service.baseline,
                             "endpoints": endpoints})
    path = directory / name
    path.write_text(yaml.safe_dump({
        "version": 1, "routable_networks": ["203.0.113.0/24", "2001:db8::/32"],
        "services": services,
    }, sort_keys=False))
    return path, written
