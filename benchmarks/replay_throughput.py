"""Replay throughput on a large synthetic trace.

Builds a run of N endpoints (default 2,000: a fifth blackholed, a tenth behind
an SNI reset, the rest fine; names with DNS, TLS and HTTPS, plus Telegram-like
MTProto datacenters), records it through the real RecordingNetwork over the
scripted network of tests/traces/scripted.py, then replays it with the real
runner, control comparison and analysis, and reports:

- the trace: operations, size on disk, and the time the recorded run spent
  on its (virtual) network clock;
- loading: seconds to read and index the trace;
- replay: wall seconds for the whole session and operations per second.

    .venv/bin/python benchmarks/replay_throughput.py [--endpoints 2000] [--gzip] [--repeat 3]

No socket is opened: the trace is synthetic and replay never touches the network.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "traces"))

from scripted import Authority, ScriptedNetwork, World

from probe import session
from probe.net import failures
from probe.replay import replay_trace
from probe.runner import RunOptions
from probe.targets import parse_targets
from probe.trace import ControlSettings, RunInfo, finish_recording, load_trace, start_recording

CONTROL = "https://control.probe.example"
STARTED = datetime.datetime(2024, 1, 1, 12, 0, tzinfo=datetime.UTC)


def address(i: int) -> str:
    return f"45.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255 or 1}"


class SyntheticCensor(World):
    def connect(self, address_: str, port: int):
        last = int(address_.rsplit(".", 1)[1])
        return failures.GENERIC_TIMEOUT if last % 5 == 0 else None

    def tls(self, request):
        last = int(request.address.rsplit(".", 1)[1])
        return failures.CONNECTION_RESET if last % 10 == 3 else super().tls(request)


def build(endpoints: int) -> tuple[str, dict[str, tuple[str, ...]]]:
    lines = ["version: 1", "services:"]
    zone: dict[str, tuple[str, ...]] = {}
    per_service = 100
    for s in range(0, endpoints, per_service):
        lines += [f"  - id: svc{s // per_service}", "    endpoints:"]
        for i in range(s, min(s + per_service, endpoints)):
            if i % 20 == 19:  # a datacenter by literal address
                lines.append(f"      - {{id: e{i}, host: {address(i + 1)}, ports: [80, 443], "
                             "checks: [tcp, mtproto, http]}")
            else:
                name = f"h{i}.example.net"
                zone[name] = (address(i + 1),)
                lines.append(f"      - {{id: e{i}, host: {name}, port: 443, "
                             "checks: [dns, tcp, tls, https]}")
    return "\n".join(lines) + "\n", zone


def record(path: Path, endpoints: int) -> float:
    text, zone = build(endpoints)
    authority = Authority("Benchmark Root", STARTED)
    targets = parse_targets(text, source="synthetic.yaml")
    options = RunOptions(resolver=("192.0.2.53", 53), timeout=10.0, concurrency=256,
                         trust_pem=authority.pem, started_at=STARTED)
    network = ScriptedNetwork(SyntheticCensor(authority, zone), World(authority, zone), options)
    recording = start_recording(path, RunInfo(targets, options, ControlSettings((CONTROL,))),
                                inner=network)
    started = time.perf_counter()
    outcome = asyncio.run(session.run(recording, targets, options,
                                      session.ControlConfig((CONTROL,)),
                                      report_id=recording.run_info.report_id))
    finish_recording(recording, outcome)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoints", type=int, default=2000)
    parser.add_argument("--gzip", action="store_true", help="record to .jsonl.gz")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="probe-replay-bench-") as scratch:
        path = Path(scratch) / ("synthetic.jsonl.gz" if args.gzip else "synthetic.jsonl")
        record_seconds = record(path, args.endpoints)
        loads, replays = [], []
        for _ in range(args.repeat):
            started = time.perf_counter()
            trace = load_trace(path)
            loads.append(time.perf_counter() - started)
            started = time.perf_counter()
            replayed = replay_trace(trace)
            replays.append(time.perf_counter() - started)
            assert not replayed.network.missing, replayed.network.missing[:3]
        operations = len(trace.ops)
        recorded_span = max(op["result"]["timing"]["t"] for op in trace.ops)
        verdicts = sum(len(v) for v in replayed.outcome.verdicts.values())
        replay_s = statistics.median(replays)
        load_s = statistics.median(loads)
        print(f"command:     {' '.join([os.path.relpath(sys.executable, REPO), *sys.argv])}")
        print(f"python:      {sys.version.split()[0]} on {os.uname().sysname} "
              f"{os.uname().machine}, {os.cpu_count()} CPUs")
        print(f"trace:       {args.endpoints} endpoints, {operations} operations, "
              f"{verdicts} verdicts, {path.stat().st_size / 1e6:.1f} MB ({path.suffix})")
        print(f"recorded:    {recorded_span:.0f} s on the recorded network clock "
              f"(scripted run took {record_seconds:.1f} s to generate)")
        print(f"load:        {load_s:.2f} s (median of {args.repeat})")
        print(f"replay:      {replay_s:.2f} s wall for the whole session, "
              f"{operations / replay_s:,.0f} operations/s (median of {args.repeat})")
        print(f"load+replay: {operations / (load_s + replay_s):,.0f} operations/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
