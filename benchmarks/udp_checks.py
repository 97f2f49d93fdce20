"""Benchmark: what the UDP and QUIC checks add to a clean run, and that a run
whose UDP is blackholed still ends in about one step timeout.

Two network namespaces joined by one veth pair, nothing else (no default
route, no NAT):

    pudp-cli-PID  198.51.100.1   the probe; DNS on 127.0.0.1:53
          | veth
    pudp-svc-PID  198.51.100.2   local 203.0.113.0/24 on lo ("AnyIP")

The bundled targets.yaml is rewritten as blackhole.py does (``_netns``): its
literal addresses move into 203.0.113.0/24, and every name gets its own
address in 203.0.113.100-250 from the client's DNS server. One
``probe.lab.servers`` process in the services namespace answers every
(address, port) the targets use, with the server the checks expect: the
Telegram-like MTProto/HTTP server on the datacenters' 80 and 443, HTTPS on 443
(one leaf naming every host, from a fresh root given as ``--ca-bundle``), a
TCP echo on the other TCP ports, the STUN/TURN server (STUN, TURN 401, echo)
on the UDP ports of stun/turn/udp endpoints and the HTTP/3 server on those of
quic endpoints.

Runs of the real CLI (no control, ``--resolver 127.0.0.1
--no-system-resolver --ephemeral-key --json``), once each because the machine
is shared:
- clean, TCP endpoints only (endpoints with a stun/turn/udp/quic check
  dropped) and clean, all endpoints, at each ``--clean-timeouts``;
- UDP blackholed: the same world, all endpoints, with every UDP datagram
  silently dropped as it enters the services namespace (nft, prerouting; DNS
  stays on the client's loopback and answers), at each ``--timeouts``.

Pinned CAs (Signal's) are left out of the rewritten targets: every server
here holds the one lab leaf, which a pin would rightly call interception.

It prints a markdown table: wall time, rows, rows ok, and the verdicts of
the rows that are not ok. ``--rate`` is passed to ``probe run`` (default: the
CLI's 30 new connections a second, which paces TCP connects and QUIC
handshakes but not STUN or UDP flows); ``--record`` keeps a trace of each run,
whose operation timings say where the time went. Namespaces and the server
processes it started are removed on exit, errors included; every run is
bounded in time.

    sudo .venv/bin/python benchmarks/udp_checks.py [--clean-timeouts 2 5] [--timeouts 2 5 10]
    sudo .venv/bin/python benchmarks/udp_checks.py --rate 0 --record
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _netns import in_namespace, rewrite_targets, sh  # noqa: E402

from probe.lab.pki import create_root_ca, issue_leaf  # noqa: E402
from probe.targets import Endpoint  # noqa: E402
from probe.vocabulary import UDP_CHECKS  # noqa: E402

CLIENT = f"pudp-cli-{os.getpid()}"
SERVICES = f"pudp-svc-{os.getpid()}"
CLIENT_V4, SERVICES_V4 = "198.51.100.1", "198.51.100.2"
ANYIP_V4 = "203.0.113.0/24"
FIRST_NAME_ADDRESS = 100  # names get 203.0.113.100 and up; literals stay below


def is_udp(endpoint: Endpoint) -> bool:
    return any(check in UDP_CHECKS for check in endpoint.checks)


@dataclass(frozen=True)
class Run:
    world: str
    endpoints: str
    timeout: float
    wall: float
    rows: int
    ok: int
    others: str


# --------------------------------------------------------------------------- #
# The world                                                                   #
# --------------------------------------------------------------------------- #


def build_namespaces() -> None:
    sh("ip", "netns", "add", CLIENT)
    sh("ip", "netns", "add", SERVICES)
    client, services = in_namespace(CLIENT), in_namespace(SERVICES)
    sh("ip", "link", "add", "pudc0", "netns", CLIENT, "type", "veth",
       "peer", "name", "puds0", "netns", SERVICES)
    for prefix, device in ((client, "pudc0"), (services, "puds0")):
        sh(*prefix, "ip", "link", "set", "lo", "up")
        sh(*prefix, "ip", "link", "set", device, "up")
    sh(*client, "ip", "addr", "add", f"{CLIENT_V4}/30", "dev", "pudc0")
    sh(*services, "ip", "addr", "add", f"{SERVICES_V4}/30", "dev", "puds0")
    sh(*client, "ip", "route", "add", ANYIP_V4, "via", SERVICES_V4)
    # AnyIP: every address of the range is local in the services namespace
    sh(*services, "ip", "route", "add", "local", ANYIP_V4, "dev", "lo")


def delete_namespaces() -> None:
    for namespace in (CLIENT, SERVICES):
        subprocess.run(["ip", "netns", "delete", namespace], check=False,
                       stderr=subprocess.DEVNULL)


def blackhole_udp() -> None:
    """Every UDP datagram entering the services namespace vanishes: no answer,
    no ICMP, as on a network that drops all UDP (Iran's UDP 443, mobile DPI)."""
    sh(*in_namespace(SERVICES), "nft", "add table inet udphole; add chain inet udphole in "
       "{ type filter hook prerouting priority -300; policy accept; }; "
       "add rule inet udphole in meta l4proto udp drop")


def name_addresses(endpoints: list[Endpoint]) -> dict[str, str]:
    names = sorted({e.host for e in endpoints if not e.host_is_address})
    if len(names) > 250 - FIRST_NAME_ADDRESS:
        raise RuntimeError(f"{len(names)} names do not fit in 203.0.113.100-250")
    return {name: f"203.0.113.{FIRST_NAME_ADDRESS + i}" for i, name in enumerate(names)}


def listeners(endpoints: list[Endpoint], zone: dict[str, str]) -> dict[str, list[str]]:
    """Server kind -> ADDRESS:PORT list, each (address, port, transport) served once."""
    chosen: dict[tuple[str, int, bool], str] = {}
    for e in endpoints:
        address = zone.get(e.host, e.host)
        for port in e.ports:
            if is_udp(e):
                kind = "quic" if "quic" in e.checks else "stun"
            elif "mtproto" in e.checks:
                kind = "mtproto"  # it also answers the http check, as a datacenter does
            elif {"tls", "https", "download"} & set(e.checks) or port == 443:
                kind = "https"
            elif "http" in e.checks:
                kind = "http"
            else:
                kind = "tcp"
            key = (address, port, is_udp(e))
            if chosen.setdefault(key, kind) != kind:
                raise RuntimeError(f"{address}:{port} needs both {chosen[key]} and {kind}")
    by_kind: dict[str, list[str]] = {}
    for (address, port, _), kind in sorted(chosen.items()):
        by_kind.setdefault(kind, []).append(f"{address}:{port}")
    return by_kind


def write_world(work: Path, endpoints: list[Endpoint]) -> tuple[Path, Path, Path]:
    """The root (for --ca-bundle), the services' and the DNS server's configurations."""
    zone = name_addresses(endpoints)
    root = create_root_ca("probe udp-checks root")
    leaf = issue_leaf(root, sorted(zone))
    (work / "root.pem").write_bytes(root.certificate_pem)
    (work / "leaf.pem").write_bytes(leaf.certificate_pem)
    (work / "leaf.key").touch(mode=0o600)
    (work / "leaf.key").write_bytes(leaf.key_pem)
    certificate = {"cert": str(work / "leaf.pem"), "key": str(work / "leaf.key")}
    limits = {"max_connections": 1024, "idle_timeout": 15, "lifetime": 120,
              "handshake_timeout": 10}
    servers = []
    for kind, listen in listeners(endpoints, zone).items():
        spec: dict = {"kind": kind, "listen": listen}
        if kind == "https":
            spec.update(certificates={"lab": certificate}, default_certificate="lab")
        elif kind == "tcp":
            spec["mode"] = "echo"
        elif kind == "stun":
            spec.update(echo=True, turn="challenge")
        elif kind == "quic":
            spec["certificate"] = certificate
        servers.append(spec)
    services = work / "services.json"
    services.write_text(json.dumps({"limits": limits, "servers": servers}))
    dns = work / "dns.json"
    dns.write_text(json.dumps({"servers": [{
        "kind": "dns", "listen": ["127.0.0.1:53"], "ttl": 300,
        "zone": {name: {"A": [address]} for name, address in zone.items()},
    }]}))
    return work / "root.pem", services, dns


def start(namespace: str, config: Path, processes: list[subprocess.Popen]) -> None:
    ready = config.with_suffix(".ready")
    process = subprocess.Popen(
        in_namespace(namespace, sys.executable, "-m", "probe.lab.servers", "--config",
                     str(config), "--duration", "1800", "--ready-file", str(ready)),
        stdout=subprocess.DEVNULL, cwd=ROOT,
    )
    processes.append(process)
    deadline = time.monotonic() + 30
    while not ready.exists():
        if process.poll() is not None:
            raise RuntimeError(f"{config.name}: servers exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{config.name}: servers not ready after 30 s")
        time.sleep(0.05)


def stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


# --------------------------------------------------------------------------- #
# The runs                                                                    #
# --------------------------------------------------------------------------- #


def probe_run(work: Path, targets: Path, root: Path, timeout: float, rate: float | None,
              record: Path | None = None) -> tuple[float, dict]:
    command = [sys.executable, "-m", "probe", "run", "--targets", str(targets),
               "--resolver", "127.0.0.1", "--no-system-resolver", "--ephemeral-key",
               "--ca-bundle", str(root), "--timeout", str(timeout),
               "--out", str(work / "reports"), "--json"]
    if rate is not None:
        command += ["--rate", str(rate)]
    if record is not None:
        command += ["--record", str(record)]
    started = time.monotonic()
    result = subprocess.run(in_namespace(CLIENT, *command), capture_output=True, text=True,
                            timeout=timeout * 20 + 120, cwd=ROOT)
    wall = time.monotonic() - started
    if result.returncode != 0:
        raise RuntimeError(f"probe run exited {result.returncode}: {result.stderr[-2000:]}")
    return wall, json.loads(result.stdout)


def tally(world: str, label: str, timeout: float, wall: float, summary: dict) -> Run:
    rows = summary["endpoints"]
    verdicts = Counter(
        f"{row['verdict']} ({row['method']})" if row["method"] else row["verdict"]
        for row in rows if row["verdict"] != "ok"
    )
    others = ", ".join(f"{count} {what}" for what, count in verdicts.most_common()) or "-"
    network = summary.get("network", {})
    if network.get("udp") not in (None, "", "None"):
        others += f"; network udp: {network['udp']}"
    return Run(world, label, timeout, wall, len(rows),
               sum(row["verdict"] == "ok" for row in rows), others)


def table(runs: list[Run]) -> str:
    lines = ["| world | endpoints | --timeout s | wall s | wall/timeout | rows | ok | other rows |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in runs:
        lines.append(f"| {r.world} | {r.endpoints} | {r.timeout:g} | {r.wall:.1f} | "
                     f"{r.wall / r.timeout:.2f} | {r.rows} | {r.ok} | {r.others} |")
    clean = {(r.endpoints, r.timeout): r.wall for r in runs if r.world == "clean"}
    added = [f"--timeout {t:g}: +{clean[('all', t)] - clean[('TCP only', t)]:.1f} s"
             for (label, t) in clean if label == "all" and ("TCP only", t) in clean]
    if added:
        lines += ["", "UDP/QUIC checks add to a clean run: " + "; ".join(added)]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clean-timeouts", type=float, nargs="+", default=[2.0, 5.0])
    parser.add_argument("--timeouts", type=float, nargs="+", default=[2.0, 5.0, 10.0],
                        help="per-step timeouts of the UDP-blackholed runs")
    parser.add_argument("--rate", type=float, default=None,
                        help="--rate for probe run (default: the CLI's own)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--record", action="store_true",
                        help="record a trace of each run in the work folder (implies --keep)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (it creates network namespaces)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="probe-udp-bench-"))
    all_targets, endpoints = rewrite_targets(work, name="all.yaml", keep_pins=False)
    tcp_targets, tcp_endpoints = rewrite_targets(work, keep=lambda e: not is_udp(e),
                                                 name="tcp.yaml", keep_pins=False)
    root, services_config, dns_config = write_world(work, endpoints)
    print(f"{len(endpoints)} endpoints ({len(endpoints) - len(tcp_endpoints)} with UDP checks), "
          f"work folder {work}", flush=True)
    processes: list[subprocess.Popen] = []
    runs: list[Run] = []
    build_namespaces()
    try:
        start(SERVICES, services_config, processes)
        start(CLIENT, dns_config, processes)
        for timeout in args.clean_timeouts:
            for label, targets in (("TCP only", tcp_targets), ("all", all_targets)):
                trace = work / f"clean-{label.split()[0].lower()}-{timeout:g}.jsonl"
                wall, summary = probe_run(work, targets, root, timeout, args.rate,
                                          trace if args.record else None)
                runs.append(tally("clean", label, timeout, wall, summary))
                print(f"  clean, {label}, --timeout {timeout:g}: {wall:.1f} s", flush=True)
        blackhole_udp()
        for timeout in args.timeouts:
            trace = work / f"blackholed-{timeout:g}.jsonl"
            wall, summary = probe_run(work, all_targets, root, timeout, args.rate,
                                      trace if args.record else None)
            runs.append(tally("UDP blackholed", "all", timeout, wall, summary))
            print(f"  UDP blackholed, --timeout {timeout:g}: {wall:.1f} s", flush=True)
            (work / f"blackholed-{timeout:g}.json").write_text(json.dumps(summary, indent=1))
    finally:
        stop(processes)
        delete_namespaces()
    print()
    print(table(runs))
    if not (args.keep or args.record):
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
