"""What an attacker gets from the control helper, and what a probe sees meanwhile.

    .venv/bin/python benchmarks/control_access.py [--seconds 20]

Serves, in one process on loopback, a control helper enrolling two keys (the
attacker's and the probe's) with its default budgets, and a TCP target that
accepts and closes every connection (counted). Then:

1. anonymous: 200 requests of the issue's scan (2,000 endpoints x 8 ports,
   ``tcp``, 243 KB each) to the default helper: connections it made, bytes it
   answered per byte received, refusals a second;
2. unknown key: 200 requests announcing a 1 MB body, 16 bytes of it sent:
   time to the 401 (the body is never waited for);
3. enrolled attacker: the same scan, signed, sent in a loop for ``--seconds``
   (each new request as soon as the previous answer came): connections made,
   answers by status; meanwhile a probe from another address (127.0.0.2) with
   its own key measures one endpoint every 0.5 s: its answers and latencies.

Loopback only, bounded in time; nothing is left running.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from probe.bogons import parse_networks  # noqa: E402 - after sys.path
from probe.control.auth import Access, ControlCredentials  # noqa: E402
from probe.control.server import ControlHelper  # noqa: E402
from probe.report.keys import generate_ephemeral  # noqa: E402

LOOPBACK = "127.0.0.1"
PROBE_SOURCE = "127.0.0.2"


def scan_body(port: int, endpoints: int = 2000, timeout: float = 1.0) -> bytes:
    ports = [port] * 8
    return json.dumps({"version": 1, "timeout": timeout, "endpoints": [
        {"id": f"e{i}", "service": "s", "host": LOOPBACK, "ports": ports, "checks": ["tcp"]}
        for i in range(endpoints)]}).encode()


async def post(url: str, body: bytes, headers: dict[str, str], source: str = LOOPBACK):
    connector = aiohttp.TCPConnector(local_addr=(source, 0), force_close=True)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=120)) as client:
        async with client.post(url, data=body, headers={
                "Content-Type": "application/json", **headers}) as response:
            return response.status, await response.read()


async def main(seconds: float) -> None:
    attacker, probe = generate_ephemeral(), generate_ephemeral()
    connections = 0

    async def accept(reader, writer):
        nonlocal connections
        connections += 1
        writer.close()

    target = await asyncio.start_server(accept, LOOPBACK, 0)
    port = target.sockets[0].getsockname()[1]
    helper = ControlHelper(None, routable=parse_networks(["127.0.0.0/8"]),
                           access=Access(frozenset({attacker.key_id, probe.key_id})))
    runner = web.AppRunner(helper.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, LOOPBACK, 0)
    await site.start()
    url = f"http://{LOOPBACK}:{runner.addresses[0][1]}/measure"
    try:
        scan = scan_body(port)
        print(f"scan request: {len(scan):,} bytes, 16,000 connections asked")

        started, answered = time.monotonic(), 0
        statuses: Counter[int] = Counter()
        for _ in range(200):
            status, answer = await post(url, scan, {})
            statuses[status] += 1
            answered += len(answer)
        elapsed = time.monotonic() - started
        print(f"1. anonymous x200: {dict(statuses)}, {connections} connections made, "
              f"{answered / (200 * len(scan)):.5f} answer bytes per request byte, "
              f"{200 / elapsed:.0f} refusals/s")

        stranger = ControlCredentials(generate_ephemeral()).authorization("POST", "/measure",
                                                                          scan)
        latencies = []
        host, helper_port = LOOPBACK, runner.addresses[0][1]
        for _ in range(200):
            reader, writer = await asyncio.open_connection(host, helper_port)
            t0 = time.monotonic()
            writer.write(f"POST /measure HTTP/1.1\r\nHost: h\r\nContent-Length: 1000000\r\n"
                         f"Authorization: {stranger}\r\n\r\n".encode() + scan[:16])
            await writer.drain()
            async with asyncio.timeout(20):
                head = await reader.read()
            latencies.append(time.monotonic() - t0)
            writer.close()
            assert head.startswith(b"HTTP/1.1 401"), head[:40]
        print(f"2. unknown key, 1 MB announced x200: 401 after median "
              f"{statistics.median(latencies) * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms, "
              f"{connections} connections made")

        before = connections
        attack: Counter[int] = Counter()
        probe_answers: list[tuple[int, float]] = []
        stop = time.monotonic() + seconds

        async def attacker_loop():
            while time.monotonic() < stop:
                credentials = ControlCredentials(attacker)
                body = scan_body(port, timeout=round(1.0 - (time.monotonic() % 1) / 10, 6))
                status, _ = await post(url, body, {
                    "Authorization": credentials.authorization("POST", "/measure", body) or ""})
                attack[status] += 1

        async def probe_loop():
            while time.monotonic() < stop:
                timeout = round(1.0 - len(probe_answers) / 1e4, 6)  # a new signature each
                body = scan_body(port, endpoints=1, timeout=timeout)
                t0 = time.monotonic()
                status, _ = await post(url, body, {"Authorization": ControlCredentials(
                    probe).authorization("POST", "/measure", body) or ""}, source=PROBE_SOURCE)
                probe_answers.append((status, time.monotonic() - t0))
                await asyncio.sleep(0.5)

        await asyncio.gather(attacker_loop(), probe_loop())
        made = connections - before
        latencies = sorted(t for s, t in probe_answers if s == 200)
        print(f"3. enrolled attacker for {seconds:.0f} s: answers {dict(attack)}, {made:,} "
              f"connections made ({made / seconds:,.0f}/s)")
        print(f"   probe meanwhile: {Counter(s for s, _ in probe_answers)}, latency median "
              f"{statistics.median(latencies) * 1000:.0f} ms, max {latencies[-1] * 1000:.0f} ms")
    finally:
        await runner.cleanup()
        target.close()
        await target.wait_closed()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    asyncio.run(main(min(args.seconds, 120.0)))
