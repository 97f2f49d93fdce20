"""What a control helper does per byte of request: the amplification an attacker gets.

    .venv/bin/python benchmarks/control_amplification.py [--max-seconds 120]

Starts ``python -m probe control serve --open`` on 127.0.0.1 (a free port, ``--allow-network
127.0.0.0/8`` so loopback stands in for public hosts, ``--resolver`` a closed
loopback port so no query leaves the machine, ``--targets`` a generated file of
loopback stand-ins), one fresh helper per row, and sends it one request:

- ``scan-2000x8``: finding 1 of the control's threat review, 2,000 endpoints x 8
  ports, ``tcp`` check, at names the helper does not know (the old helper made
  16,000 connections for it);
- ``scan-200x8-loopback``: the same scan cut to the endpoint cap, at 127.0.0.1
  ports the helper's targets do not list (each endpoint refused on its own);
- ``proxy-path``: an ``http`` GET of a requester-chosen path on a host the
  helper does measure (refused: not the targets' path);
- ``pages-1mib``: finding 2, a ~7 KB request of ``tcp``+``http`` on 8 ports per
  endpoint at a stand-in the helper does measure, serving 1 MiB pages (the old
  helper answered 427 MiB);
- ``legit-bundled``: the bundled targets' TCP endpoints as a probe asks for them,
  every host replaced by 127.0.0.1 (one address where a name has up to six)
  and every port by a loopback listener (one per distinct port); UDP endpoints
  are left out (no UDP stand-ins here).

For each row it counts, at its own loopback listeners, the connections the
helper opened and the bytes it sent them and they wrote back (written, not
necessarily read: the kernel buffers the rest), the answer's status and bytes,
and the helper process's peak resident memory (VmHWM). Loopback only, every
helper bounded by ``--duration`` and stopped by its PID.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from probe.control import protocol  # noqa: E402 - after sys.path
from probe.targets import default_targets_path, load_targets  # noqa: E402 - after sys.path
from probe.vocabulary import UDP_CHECKS  # noqa: E402 - after sys.path

LOOPBACK = "127.0.0.1"
PAGE = b"<html><head><title>big</title></head><body>" + b"x" * (1 << 20) + b"</body></html>"
SMALL = b"<html><head><title>ok</title></head><body>ok</body></html>"


class Listeners:
    """Loopback TCP listeners counting connections and bytes in both directions.

    Each answers an HTTP request with ``page`` and closes (a TLS ClientHello gets
    the same bytes: the handshake fails, and that is all the count needs)."""

    def __init__(self, page: bytes) -> None:
        self.page = page
        self.connections = 0
        self.received = 0
        self.sent = 0
        self.servers: list[asyncio.Server] = []

    async def open(self, count: int) -> list[int]:
        opened = [await asyncio.start_server(self._handle, LOOPBACK, 0) for _ in range(count)]
        self.servers.extend(opened)
        return [s.sockets[0].getsockname()[1] for s in opened]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            async with asyncio.timeout(10):
                head = await reader.read(65536)
                self.received += len(head)
                if not head:
                    return
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nConnection: close"
                             + f"\r\nContent-Length: {len(self.page)}\r\n\r\n".encode())
                for start in range(0, len(self.page), 65536):
                    piece = self.page[start:start + 65536]
                    writer.write(piece)
                    await writer.drain()
                    self.sent += len(piece)
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    def reset(self) -> None:
        self.connections = self.received = self.sent = 0

    async def close(self) -> None:
        for server in self.servers:
            server.close()
            await server.wait_closed()


def yaml_endpoint(id: str, host: str, ports: list[int], checks: list[str],
                  path: str = "/", sni: str | None = None) -> str:
    more = f", sni: {sni}" if sni else ""
    return (f"      - {{id: {id}, host: {host}, ports: {json.dumps(ports)}, "
            f"checks: {json.dumps(checks)}, path: {json.dumps(path)}{more}}}\n")


def targets_file(endpoints: list[str]) -> str:
    return ("version: 1\nroutable_networks: [127.0.0.0/8]\nservices:\n"
            "  - id: stand-ins\n    name: Loopback stand-ins\n    endpoints:\n"
            + "".join(endpoints))


def legit_endpoints(ports: dict[int, int]) -> list[dict]:
    """The bundled targets' TCP endpoints, at 127.0.0.1 and loopback listener ports."""
    bundled = load_targets(default_targets_path()).endpoints()
    chosen = []
    for e in bundled:
        if set(e.checks) & UDP_CHECKS:
            continue
        checks = [c for c in e.checks if c != "dns"]
        chosen.append({"id": e.id, "service": e.service, "host": LOOPBACK,
                       "ports": [ports[p] for p in e.ports], "checks": checks,
                       "path": e.path, "sni": e.sni or "stand-in.test"})
    return chosen


async def start_helper(targets: Path, key: Path, seconds: float) -> tuple[subprocess.Popen, int]:
    process = subprocess.Popen(
        [sys.executable, "-m", "probe", "control", "serve", "--listen", f"{LOOPBACK}:0",
         "--allow-network", "127.0.0.0/8", "--resolver", f"{LOOPBACK}:1", "--open",
         "--targets", str(targets), "--key", str(key), "--duration", str(seconds)],
        cwd=REPO, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert process.stderr is not None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = await asyncio.to_thread(process.stderr.readline)
        match = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        if match:
            return process, int(match.group(1))
        if not line and process.poll() is not None:
            break
    process.kill()
    raise RuntimeError("the helper did not start")


def peak_rss(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", text).group(1)) * 1024  # type: ignore[union-attr]


async def row(name: str, body: dict, listeners: Listeners, targets: Path, key: Path,
              seconds: float) -> dict:
    process, port = await start_helper(targets, key, seconds)
    try:
        await asyncio.sleep(0.3)
        before = peak_rss(process.pid)
        listeners.reset()
        payload = json.dumps(body).encode()
        start = time.monotonic()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=seconds)) as session:
            async with session.post(f"http://{LOOPBACK}:{port}/measure", data=payload,
                                    headers={"Content-Type": "application/json"}) as response:
                answer = await response.read()
                status = response.status
        elapsed = time.monotonic() - start
        await asyncio.sleep(0.5)  # let the listeners count the last connections
        refused = json.loads(answer).get("refused", {}) if status == 200 else {}
        if status != 200:
            print(f"{name}: {status} {answer[:200].decode(errors='replace')}", file=sys.stderr)
        return {"name": name, "request": len(payload), "status": status,
                "refused": len(refused), "connections": listeners.connections,
                "to_targets": listeners.received, "from_targets": listeners.sent,
                "answer": len(answer), "rss_before": before, "rss_peak": peak_rss(process.pid),
                "seconds": elapsed}
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def show(rows: list[dict]) -> None:
    print(f"{'request':<22}{'bytes':>9}{'status':>7}{'refused':>8}{'conns':>7}"
          f"{'conns/KB':>9}{'sent B':>9}{'got B':>11}{'answer B':>11}{'ans/req':>8}"
          f"{'RSS MiB':>14}{'s':>6}")
    for r in rows:
        kb = r["request"] / 1024
        print(f"{r['name']:<22}{r['request']:>9}{r['status']:>7}{r['refused']:>8}"
              f"{r['connections']:>7}{r['connections'] / kb:>9.2f}{r['to_targets']:>9}"
              f"{r['from_targets']:>11}{r['answer']:>11}{r['answer'] / r['request']:>8.2f}"
              f"{r['rss_before'] / 2**20:>7.0f}->{r['rss_peak'] / 2**20:<5.0f}"
              f"{r['seconds']:>6.1f}")


async def main(seconds: float) -> None:
    bundled_ports = sorted({p for e in load_targets(default_targets_path()).endpoints()
                            if not set(e.checks) & UDP_CHECKS for p in e.ports})
    small, big = Listeners(SMALL), Listeners(PAGE)
    stand_in_ports = await small.open(len(bundled_ports))
    outside = await small.open(8)  # listed by no target: a scan's destinations
    (page_port,) = await big.open(1)
    port_map = dict(zip(bundled_ports, stand_in_ports, strict=True))
    legit = legit_endpoints(port_map)
    lines = [yaml_endpoint(e["id"], e["host"], e["ports"], e["checks"], e["path"], e["sni"])
             for e in legit]
    lines.append(yaml_endpoint("page", LOOPBACK, [page_port], ["tcp", "http"]))
    with tempfile.TemporaryDirectory() as folder:
        targets = Path(folder) / "targets.yaml"
        targets.write_text(targets_file(lines))
        key = Path(folder) / "control-key.pem"

        def tcp(id: str, host: str, ports: list[int], checks: list[str], **more) -> dict:
            return {"id": id, "service": "s", "host": host, "ports": ports, "checks": checks,
                    **more}

        def request(endpoints: list[dict], timeout: float = 2.0) -> dict:
            return {"version": 1, "timeout": timeout, "endpoints": endpoints}

        cases = [
            ("scan-2000x8", request([tcp(f"e{i}", f"h{i}.example", outside, ["tcp"])
                                     for i in range(2000)]), small),
            ("scan-200x8-loopback", request([tcp(f"e{i}", LOOPBACK, outside, ["tcp"])
                                             for i in range(protocol.MAX_ENDPOINTS)]), small),
            ("proxy-path", request([tcp("p", LOOPBACK, [page_port], ["tcp", "http"],
                                        path="/admin/secret")]), big),
            ("pages-1mib", request([tcp(f"p{i}", LOOPBACK, [page_port] * 8, ["tcp", "http"])
                                    for i in range(50)], timeout=5.0), big),
            ("legit-bundled", request(legit), small),
        ]
        rows = []
        for name, body, listeners in cases:
            rows.append(await row(name, body, listeners, targets, key, seconds))
    for listeners in (small, big):
        await listeners.close()
    show(rows)
    print(f"caps: {protocol.MAX_ENDPOINTS} endpoints, {protocol.MAX_REQUEST_CONNECTIONS} "
          f"connections, {protocol.MAX_REQUEST_FETCHES} HTTP requests per request; "
          f"{protocol.MAX_HTTP_BODY} B of body kept per HTTP request")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-seconds", type=float, default=120.0,
                        help="life of each helper and of each request")
    asyncio.run(main(parser.parse_args().max_seconds))
