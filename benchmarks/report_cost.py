"""Benchmark: the CPU cost of a run's report phase, without any network.

Builds the outcome of a run like ``scale.py``'s (services of 20 TLS endpoints;
IP literals alternating IPv4 and IPv6 over four ports, and one endpoint in ten
a name resolved to one A and one AAAA, so two handshakes and two DNS
exchanges with their raw replies), every handshake returning the same real
two-certificate chain from ``probe.lab.pki``. Verdicts come from the real
analysis (no control, as in ``scale.py``). Then it times, in CPU seconds of
this process:

- the report phase: ``write_run_report`` (build each line, scrub, re-check,
  sign, write), per endpoint;
- ``canonical_bytes`` of one report line (what signing does twice per line);
- ``load_targets`` of the generated targets file.

The volunteer's addresses are the scale client's (198.51.100.1 and
2001:db8:ffff::1), so every line is scrubbed and checked as a volunteer's is.

    .venv/bin/python benchmarks/report_cost.py                    # 2,000 endpoints
    .venv/bin/python benchmarks/report_cost.py --endpoints 500 --profile 25

Each figure is the best of ``--repeat`` runs (default 3), because the machine
is shared. Nothing is sent on any network; files go to a temporary folder.
"""

from __future__ import annotations

import argparse
import base64
import cProfile
import datetime
import hashlib
import json
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

import dns.message
import dns.rrset
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import load_pem_x509_certificate

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from probe import analysis  # noqa: E402
from probe.bogons import parse_networks  # noqa: E402
from probe.lab.pki import create_root_ca, issue_leaf  # noqa: E402
from probe.net.network import (  # noqa: E402
    ConnectResult,
    DnsAnswer,
    DnsExchange,
    DnsQuery,
    DnsReply,
    Timing,
    TlsRequest,
    TlsResult,
)
from probe.observations import (  # noqa: E402
    EndpointObservation,
    PortObservation,
    ServiceResult,
    ServiceVerdict,
)
from probe.report.canonical import canonical_bytes  # noqa: E402
from probe.report.keys import generate_ephemeral  # noqa: E402
from probe.report.measurements import (  # noqa: E402
    RunContext,
    build_lines,
    scrub_workers,
    write_run_report,
)
from probe.session import ControlOutcome, RunOutcome  # noqa: E402
from probe.targets import Targets, load_targets  # noqa: E402

SERVICE_SIZE = 20
NAMES_EVERY = 10
PORTS = (443, 8443, 9443, 10443)
RESOLVER = "198.51.100.2"
VOLUNTEER = ("198.51.100.1", "2001:db8:ffff::1")
ROUTABLE = ("203.0.113.0/24", "198.51.100.0/24", "2001:db8::/32")
STARTED = datetime.datetime(2026, 11, 28, 2, 15, tzinfo=datetime.UTC)


def v4_address(index: int) -> str:
    return f"203.0.113.{index % 254 + 1}"


def v6_address(index: int) -> str:
    return f"2001:db8:5::{index % 2000 + 1:x}"


def write_targets(work: Path, size: int, ca: Path) -> Path:
    services: list[dict] = []
    for i in range(size):
        if i % SERVICE_SIZE == 0:
            number = i // SERVICE_SIZE
            services.append({
                "id": f"s{number:04d}", "name": f"Scale {number}", "test_name": "scale",
                "baseline": number == 0, "endpoints": [],
            })
        port = PORTS[(i // 2) % len(PORTS)]
        if i % NAMES_EVERY == 0:
            endpoint = {"id": f"e{i}", "host": f"n{i}.scale.test", "port": port,
                        "checks": ["dns", "tcp", "tls"]}
        else:
            host = v4_address(i) if i % 2 else v6_address(i)
            endpoint = {"id": f"e{i}", "host": host, "port": port, "checks": ["tcp", "tls"],
                        "sni": f"x{i}.scale.test"}
        services[-1]["endpoints"].append(endpoint)
    path = work / f"targets-{size}.yaml"
    path.write_text(yaml.safe_dump({
        "version": 1, "ca_bundle": str(ca), "routable_networks": list(ROUTABLE),
        "services": services,
    }, sort_keys=False))
    return path


def der_b64(pem: bytes) -> str:
    certificate = load_pem_x509_certificate(pem)
    return base64.b64encode(certificate.public_bytes(serialization.Encoding.DER)).decode()


def dns_exchange(name: str, rrtype: str, address: str, t: float) -> DnsExchange:
    query = dns.message.make_query(name, rrtype)
    query.id = int(t * 1000) & 0xFFFF  # not random: the benchmark's output is compared
    reply = dns.message.make_response(query)
    reply.answer.append(dns.rrset.from_text(name + ".", 300, "IN", rrtype, address))
    raw = base64.b64encode(reply.to_wire()).decode()
    answer = DnsAnswer(rrtype, name, address, 300)
    return DnsExchange(
        DnsQuery(RESOLVER, 53, name, rrtype),
        (DnsReply(t + 0.002, "NOERROR", (answer,), raw),), None, Timing(t, t + 0.002),
    )


def port_observation(address: str, port: int, sni: str, chain: tuple[str, ...], t: float):
    connect = ConnectResult(address, port, None, Timing(t, t + 0.001))
    tls = TlsResult(TlsRequest(address, port, sni), connect, None, "TLSv1.3",
                    "TLS_AES_256_GCM_SHA384", None, chain, Timing(t + 0.001, t + 0.004))
    return PortObservation(address, port, connect, tls, None, (), ())


def observations_for(targets: Targets, chain: tuple[str, ...]) -> dict[str, EndpointObservation]:
    found = {}
    for index, endpoint in enumerate(targets.endpoints()):
        t = 0.5 + index * 0.001
        if "dns" in endpoint.checks:
            a, aaaa = v4_address(index * 7), v6_address(index * 7)
            exchanges = (dns_exchange(endpoint.host, "A", a, t),
                         dns_exchange(endpoint.host, "AAAA", aaaa, t))
            ports = tuple(
                port_observation(address, endpoint.ports[0], endpoint.host, chain, t + 0.01)
                for address in (a, aaaa))
            found[endpoint.id] = EndpointObservation(
                endpoint.id, endpoint.service, endpoint.host, None, exchanges, (a, aaaa), (), ports)
        else:
            sni = endpoint.sni or endpoint.host
            ports = (port_observation(endpoint.host, endpoint.ports[0], sni, chain, t),)
            found[endpoint.id] = EndpointObservation(
                endpoint.id, endpoint.service, endpoint.host, None, (), (endpoint.host,), (), ports)
    return found


def build_outcome(targets: Targets, chain: tuple[str, ...]) -> RunOutcome:
    """What ``session.run`` returns for this run without a control, analysed for real."""
    observations = observations_for(targets, chain)
    problems = ["no control helper configured (--control URL)"]
    control = ControlOutcome(problems=problems)
    context = analysis.Context(control=None, routable=parse_networks(targets.routable_networks))
    verdicts, services, results = {}, {}, []
    for service in targets.services:
        found = tuple(observations[e.id] for e in service.endpoints if e.id in observations)
        rows = []
        for observation in found:
            verdicts[observation.endpoint_id] = analysis.endpoint_verdicts(observation, context)
            rows += verdicts[observation.endpoint_id]
        services[service.id] = ServiceVerdict(service.id, *analysis.service_status(rows))
        results.append(ServiceResult(service.id, found, tuple(rows), services[service.id], None,
                                     tuple(problems)))
    return RunOutcome(STARTED, "20261128T021500Z_probe_3f9c2a1b7d4e", observations, verdicts,
                      services, control, False, True, 3.0, RESOLVER, results)


def best_wall_and_cpu(action, repeat: int) -> tuple[float, float]:
    """(wall s, CPU s of this process and of the worker processes it reaped),
    each the best of ``repeat`` runs."""
    walls, cpus = [], []
    for _ in range(repeat):
        before, started = os.times(), time.perf_counter()
        action()
        walls.append(time.perf_counter() - started)
        after = os.times()
        cpus.append(sum(after[:4]) - sum(before[:4]))
    return min(walls), min(cpus)


def best_cpu(action, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.process_time()
        action()
        times.append(time.process_time() - start)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoints", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0,
                        help="processes scrubbing report lines (default 0: the serial path; "
                             f"this machine's cores: {scrub_workers()})")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="profile one report phase and print its N costliest functions")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    size = args.endpoints
    with tempfile.TemporaryDirectory(prefix="report-cost-") as folder:
        work = Path(folder)
        root = create_root_ca("probe scale root")
        leaf = issue_leaf(root, ["*.scale.test"])
        ca = work / "root.pem"
        ca.write_bytes(root.certificate_pem)
        chain = (der_b64(leaf.certificate_pem), der_b64(root.certificate_pem))
        path = write_targets(work, size, ca)
        load_cpu = best_cpu(lambda: load_targets(path), args.repeat)
        targets = load_targets(path)
        outcome = build_outcome(targets, chain)
        context = RunContext(VOLUNTEER)
        key = generate_ephemeral()
        out = work / "reports"
        written: list[Path] = []

        def report() -> None:
            report_path, dropped = write_run_report(outcome, targets, out, key, context,
                                                    workers=args.workers)
            assert not dropped, dropped
            written.append(report_path)

        if args.profile:
            profiler = cProfile.Profile()
            profiler.runcall(report)
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(args.profile)
        report_cpu = best_cpu(report, args.repeat)
        report_wall, report_cpu_all = best_wall_and_cpu(report, args.repeat)
        line = build_lines(outcome, targets, context)[0]
        rounds = 20
        canonical_cpu = best_cpu(lambda: [canonical_bytes(line) for _ in range(rounds)],
                                 args.repeat) / rounds
        handshakes = sum(len(o.ports) for o in outcome.observations.values())
        # Lines differ between runs only by measurement_uid, the signature and the
        # certificates (a fresh PKI each time): hash the rest, to compare versions.
        digest = hashlib.sha256()
        for raw in written[-1].read_bytes().splitlines():
            record = json.loads(raw)
            record.pop("signature", None)
            record.pop("measurement_uid", None)
            text = json.dumps(record, sort_keys=True)
            for number, certificate in enumerate(chain):
                text = text.replace(certificate, f"certificate {number}")
            digest.update(text.encode())
    print(f"endpoints {size}, handshakes {handshakes}, lines {size // SERVICE_SIZE}")
    print(f"report phase: {report_cpu:.2f} s CPU here, {1000 * report_cpu / size:.2f} ms/endpoint; "
          f"with its workers {report_cpu_all:.2f} s CPU ({1000 * report_cpu_all / size:.2f} "
          f"ms/endpoint), {report_wall:.2f} s wall ({args.workers} workers)")
    print(f"canonical_bytes of one {SERVICE_SIZE}-endpoint line: {1000 * canonical_cpu:.2f} ms")
    print(f"load_targets of {size} endpoints: {1000 * load_cpu:.0f} ms "
          f"({1000 * load_cpu / size:.3f} ms/endpoint)")
    print(f"report content digest (without signatures and uids): {digest.hexdigest()[:16]}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "benchmark": "report_cost", "endpoints": size, "report_cpu_s": round(report_cpu, 3),
            "report_cpu_ms_per_endpoint": round(1000 * report_cpu / size, 3),
            "workers": args.workers,
            "report_cpu_with_workers_s": round(report_cpu_all, 3),
            "report_cpu_with_workers_ms_per_endpoint": round(1000 * report_cpu_all / size, 3),
            "report_wall_s": round(report_wall, 3),
            "canonical_bytes_ms": round(1000 * canonical_cpu, 3),
            "load_targets_ms": round(1000 * load_cpu, 1),
        }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
