"""Load test of the collector: many probes uploading at once on loopback, with a crash.

    .venv/bin/python benchmarks/collector_load.py [--uploaders 50] [--runs 3000]

Starts ``python -m probe.collector serve`` on 127.0.0.1 (a free port), then
``--uploaders`` concurrent clients (one asyncio process, aiohttp) each upload
their share of ``--runs`` signed runs (3 lines each: three measurements, the
last one sealed) in batches of ``--batch`` lines, retrying a batch until it is
acknowledged, as the probe's spool does. Halfway through, the collector is
killed with SIGKILL and started again on the same folder. Reports sustained
lines per second, request latency percentiles, and checks that every line
acknowledged is stored exactly once and nothing sent is missing.

Loopback only, bounded in count (``--runs``) and time (``--max-seconds``); the
collector is stopped by its PID.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from probe.aggregate.synthetic import NETWORKS, SERVICES, START, measurement, sign_run  # noqa: E402 - after sys.path
from probe.report.keys import generate_ephemeral  # noqa: E402 - after sys.path


def make_runs(count: int) -> list[list[bytes]]:
    keys = [generate_ephemeral() for _ in range(50)]  # 50 volunteers
    runs = []
    for number in range(count):
        network = NETWORKS[number % len(NETWORKS)]
        started = START.replace(hour=number % 24, minute=number % 60)
        records = [
            measurement(
                service, network.cc, network.asn, started, {}, f"r{number}", secrets.token_hex(8)
            )
            for service in SERVICES
        ]
        runs.append([line.rstrip(b"\n") for line in sign_run(keys[number % 50], records)])
    return runs


class Collector:
    def __init__(self, data: Path, workers: int) -> None:
        self.data = data
        self.workers = workers
        self.process: subprocess.Popen | None = None
        self.url = ""

    def start(self) -> str:
        log = self.data.parent / "collector.log"
        stream = open(log, "a")  # noqa: SIM115 - kept for the process's life
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "probe.collector",
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--data",
                str(self.data),
                "--check-workers",
                str(self.workers),
                "--quiet",
                "--address-rate",
                "100000",
                "--address-burst",
                "100000",
                "--key-rate",
                "100000",
                "--max-concurrent",
                "64",
                # Every uploader here is one loopback address with thousands of fresh keys:
                # lift the per-client limits that stop exactly that on the Internet.
                "--max-uploads-per-client",
                "64",
                "--new-keys-per-client-hour",
                "1000000",
                "--new-keys-per-hour",
                "100000000",
                "--client-mib-per-day",
                "1000000",
                "--duration",
                "900",
            ],
            stdout=subprocess.DEVNULL,
            stderr=stream,
            cwd=REPO,
        )
        start = log.stat().st_size if log.exists() else 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = re.findall(r"collector listening on (http://\S+)", log.read_text()[start:])
            if found:
                self.url = found[-1]
                return self.url
            time.sleep(0.05)
        raise RuntimeError("collector did not start")

    def kill(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        os.kill(self.process.pid, signal.SIGTERM)
        self.process.wait(30)


async def uploader(batches, state, session) -> None:
    while batches:
        batch = batches[0]
        started = time.perf_counter()
        try:
            async with session.post(
                state["url"] + "/v1/measurements",
                data=b"\n".join(batch) + b"\n",
                headers={"Content-Type": "application/x-ndjson"},
                timeout=aiohttp.ClientTimeout(total=30),
            ) as response:
                payload = await response.json(content_type=None)
                status = response.status
        except (TimeoutError, aiohttp.ClientError, ValueError):
            state["errors"] += 1
            await asyncio.sleep(0.1)
            continue
        if status != 200:
            state["errors"] += 1
            await asyncio.sleep(0.1)
            continue
        state["latencies"].append(time.perf_counter() - started)
        for line, result in zip(batch, payload["results"], strict=False):
            if result["status"] not in ("stored", "duplicate"):
                raise AssertionError(f"line refused: {result}")
            state["acknowledged"].append(line)
        batches.pop(0)


async def load(args, collector: Collector, runs) -> dict:
    lines = [line for run in runs for line in run]
    batches = [lines[i : i + args.batch] for i in range(0, len(lines), args.batch)]
    shares = [batches[i :: args.uploaders] for i in range(args.uploaders)]
    state = {"url": collector.url, "errors": 0, "latencies": [], "acknowledged": []}
    connector = aiohttp.TCPConnector(limit=args.uploaders)
    async with aiohttp.ClientSession(connector=connector) as session:
        tasks = [asyncio.create_task(uploader(share, state, session)) for share in shares]
        started = time.perf_counter()
        deadline = time.monotonic() + args.max_seconds
        while len(state["acknowledged"]) < len(lines) // 2:
            failed = [t for t in tasks if t.done() and t.exception()]
            if failed:
                raise failed[0].exception()
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(state['acknowledged'])} lines acknowledged")
            await asyncio.sleep(0.01)
        halfway = time.perf_counter() - started
        acknowledged_before = set(state["acknowledged"])
        collector.kill()
        killed_at = time.perf_counter()
        on_disk = stored(collector.data)
        lost = acknowledged_before - set(on_disk)
        state["url"] = await asyncio.to_thread(collector.start)
        restart_seconds = time.perf_counter() - killed_at
        await asyncio.wait_for(asyncio.gather(*tasks), args.max_seconds)
        elapsed = time.perf_counter() - started
    return {
        "lines": lines,
        "state": state,
        "elapsed": elapsed,
        "halfway": halfway,
        "restart_seconds": restart_seconds,
        "lost_at_kill": lost,
    }


def stored(data: Path) -> list[bytes]:
    lines = []
    for path in sorted(data.glob("*/*.jsonl")):
        content = path.read_bytes()
        lines += content[: content.rfind(b"\n") + 1].split(b"\n")[:-1]
    return lines


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--uploaders", type=int, default=50)
    parser.add_argument("--runs", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=20, help="lines per request")
    parser.add_argument("--workers", type=int, default=2, help="collector --check-workers")
    parser.add_argument("--max-seconds", type=float, default=600)
    args = parser.parse_args()

    print(f"signing {args.runs} runs ({args.runs * 3} lines)...", flush=True)
    runs = make_runs(args.runs)
    size = sum(len(line) + 1 for run in runs for line in run)
    with tempfile.TemporaryDirectory(prefix="collector-load-") as folder:
        collector = Collector(Path(folder) / "data", args.workers)
        collector.start()
        try:
            outcome = asyncio.run(load(args, collector, runs))
        finally:
            collector.stop()
        state = outcome["state"]
        lines = outcome["lines"]
        counts = Counter(stored(collector.data))
        twice = sum(1 for n in counts.values() if n > 1)
        missing = len(set(lines) - set(counts))
        unacknowledged_stored = len(set(counts) - set(state["acknowledged"]))
        latencies = state["latencies"]
        print(
            f"machine: {os.cpu_count()} cores; collector --check-workers {args.workers}; "
            f"client and collector on the same machine"
        )
        print(
            f"{len(lines)} lines ({size / 1e6:.1f} MB, {size / len(lines):.0f} B/line) from "
            f"{args.uploaders} concurrent uploaders, {args.batch} lines per request"
        )
        print(
            f"sustained: {len(lines) / outcome['elapsed']:.0f} lines/s over "
            f"{outcome['elapsed']:.1f} s, including a kill -9 and restart "
            f"({outcome['restart_seconds']:.1f} s down); first half: "
            f"{len(lines) / 2 / outcome['halfway']:.0f} lines/s"
        )
        print(
            f"request latency: p50 {statistics.median(latencies) * 1000:.0f} ms, "
            f"p90 {percentile(latencies, 0.9) * 1000:.0f} ms, "
            f"p99 {percentile(latencies, 0.99) * 1000:.0f} ms, "
            f"max {max(latencies) * 1000:.0f} ms ({len(latencies)} requests, "
            f"{state['errors']} failed and retried)"
        )
        print(
            f"exactly once: {len(counts)} distinct lines stored, {twice} stored twice, "
            f"{missing} missing, {len(outcome['lost_at_kill'])} acknowledged lines lost at "
            f"the kill, {unacknowledged_stored} stored but never acknowledged"
        )
        if twice or missing or outcome["lost_at_kill"]:
            sys.exit("FAILED: the store is not exactly-once")


if __name__ == "__main__":
    main()
