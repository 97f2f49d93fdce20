"""What a legitimate client sees while strangers attack the two servers' connections.

    .venv/bin/python benchmarks/hostile_servers.py [--seconds 6] [--servers control,collector]
    .venv/bin/python benchmarks/hostile_servers.py --checkout /path/to/an/older/probe

Starts ``probe control serve`` and ``python -m probe.collector serve`` as their
own processes on 127.0.0.1 (a free port each, with a soft limit of
``--nofile`` open files, 1,024 as systemd gives a service unless told
otherwise), then runs each connection-level attack for ``--seconds`` while a
legitimate client asks for the health page (``GET /`` of the helper,
``GET /health`` of the collector) five times a second, on a new connection
each time, from five loopback addresses in turn:

- ``none``: no attack, the baseline;
- ``slowloris, 110 addresses``: 1,100 connections from 127.0.1.1-110 that send
  a request line and then one byte of a header every half second, never the end
  of the head; one the server closes is opened again at the next tick;
- ``slowloris, 1 address``: the same 1,100 connections, all from 127.0.0.9;
- ``connect flood, 1 address``: 16 loops opening and closing connections from
  127.0.0.10 as fast as they can, sending nothing.

It prints, per server and attack, the legitimate requests made, how many failed
(no ``200`` within 10 s), their median and worst latency, the attacker
connections opened and closed by the server, and what the server spent: log
lines written meanwhile (the helper once wrote 295,480 "accept() out of system
resource" lines in 45 s), its peak of open descriptors and of resident memory.
``--checkout`` runs the servers of another checkout (e.g. the main branch
before the connection guard) for a before/after table. The attacker and the
legitimate client share one event loop in this process, so latencies include
its own load. Loopback only; every server is stopped by its PID.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
LEGIT = [f"127.0.0.{n}" for n in range(1, 6)]


# --------------------------------------------------------------------------- #
# servers                                                                      #
# --------------------------------------------------------------------------- #


class Server:
    """One server process, its stderr in a file, found by the line saying where it listens."""

    def __init__(self, kind: str, checkout: Path, folder: Path, nofile: int) -> None:
        self.kind = kind
        self.checkout = checkout
        self.folder = folder
        self.nofile = nofile
        self.log = folder / f"{kind}.log"
        self.process: subprocess.Popen | None = None
        self.port = 0

    @property
    def health(self) -> str:
        return "/" if self.kind == "control" else "/health"

    def command(self) -> list[str]:
        if self.kind == "control":
            return [sys.executable, "-m", "probe", "control", "serve", "--listen", f"{HOST}:0",
                    "--resolver", "127.0.0.1:53", "--key", str(self.folder / "control.key"),
                    "--duration", "900", "--open"]
        return [sys.executable, "-m", "probe.collector", "serve", "--listen", f"{HOST}:0",
                "--data", str(self.folder / "data"), "--check-workers", "1",
                "--duration", "900"]

    def start(self) -> None:
        nofile = self.nofile

        def limit_files() -> None:
            _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(nofile, hard), hard))

        environment = dict(os.environ, PYTHONPATH=str(self.checkout), PYTHONDONTWRITEBYTECODE="1")
        stream = open(self.log, "wb")  # noqa: SIM115 - kept for the process's life
        self.process = subprocess.Popen(
            self.command(), stdout=subprocess.DEVNULL, stderr=stream, cwd=self.folder,
            env=environment, preexec_fn=limit_files,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = re.search(rb"listening on \S*?:(\d+)\b", self.log.read_bytes())
            if found:
                self.port = int(found[1])
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.kind} did not start: {self.log.read_text()[-2000:]}")

    def log_lines(self) -> int:
        with open(self.log, "rb") as stream:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: stream.read(1 << 20), b""))

    def usage(self) -> tuple[int, int]:
        """Open descriptors and resident KiB now (0, 0 once gone)."""
        assert self.process is not None
        try:
            fds = len(os.listdir(f"/proc/{self.process.pid}/fd"))
            status = Path(f"/proc/{self.process.pid}/status").read_text()
        except OSError:
            return 0, 0
        rss = re.search(r"VmRSS:\s+(\d+)", status)
        return fds, int(rss[1]) if rss else 0

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()


# --------------------------------------------------------------------------- #
# clients                                                                      #
# --------------------------------------------------------------------------- #


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    failures: int = 0
    opened: int = 0  # attacker connections opened
    closed: int = 0  # attacker connections the server closed (or refused)


async def legitimate(server: Server, until: float, tally: Tally) -> None:
    """A GET of the health page five times a second, from five addresses in turn."""
    request = (f"GET {server.health} HTTP/1.1\r\nHost: probe.test\r\n"
               "Connection: close\r\n\r\n").encode()
    turn = 0
    while time.monotonic() < until:
        started = time.monotonic()
        try:
            async with asyncio.timeout(10):
                reader, writer = await asyncio.open_connection(
                    HOST, server.port, local_addr=(LEGIT[turn % len(LEGIT)], 0))
                writer.write(request)
                answer = await reader.read()
                writer.close()
            ok = answer.startswith(b"HTTP/1.1 200")
        except (OSError, TimeoutError):
            ok = False
        if ok:
            tally.latencies.append(time.monotonic() - started)
        else:
            tally.failures += 1
        turn += 1
        await asyncio.sleep(max(0.0, 0.2 - (time.monotonic() - started)))


async def trickler(server: Server, source: str, until: float, tally: Tally) -> None:
    """One slowloris connection, opened again whenever the server closes it."""
    while time.monotonic() < until:
        try:
            reader, writer = await asyncio.open_connection(
                HOST, server.port, local_addr=(source, 0))
        except OSError:
            tally.closed += 1
            await asyncio.sleep(0.5)
            continue
        tally.opened += 1
        try:
            writer.write(b"GET / HTTP/1.1\r\nHost: probe.test\r\n")
            while time.monotonic() < until:
                await asyncio.sleep(0.5)
                if reader.at_eof() or writer.is_closing():
                    raise ConnectionResetError
                writer.write(b"X")
                await writer.drain()
        except OSError:
            tally.closed += 1
        finally:
            writer.close()
        await asyncio.sleep(0.5)


async def flooder(server: Server, source: str, until: float, tally: Tally) -> None:
    """Open and close connections from ``source`` as fast as the loop allows."""
    while time.monotonic() < until:
        try:
            _, writer = await asyncio.open_connection(HOST, server.port, local_addr=(source, 0))
            tally.opened += 1
            writer.close()
        except OSError:
            tally.closed += 1
        await asyncio.sleep(0)


def attackers(name: str, server: Server, until: float, tally: Tally) -> list:
    if name == "slowloris, 110 addresses":
        return [trickler(server, f"127.0.1.{1 + n // 10}", until, tally) for n in range(1100)]
    if name == "slowloris, 1 address":
        return [trickler(server, "127.0.0.9", until, tally) for _ in range(1100)]
    if name == "connect flood, 1 address":
        return [flooder(server, "127.0.0.10", until, tally) for _ in range(16)]
    return []


ATTACKS = ("none", "slowloris, 110 addresses", "slowloris, 1 address", "connect flood, 1 address")


async def run_attack(name: str, server: Server, seconds: float) -> dict:
    lines_before = server.log_lines()
    attack, legit = Tally(), Tally()
    until = time.monotonic() + seconds
    peak_fds = peak_rss = 0

    async def sample() -> None:
        nonlocal peak_fds, peak_rss
        while time.monotonic() < until:
            fds, rss = server.usage()
            peak_fds, peak_rss = max(peak_fds, fds), max(peak_rss, rss)
            await asyncio.sleep(0.1)

    async def legit_after_warmup() -> None:
        await asyncio.sleep(min(1.0, seconds / 4))  # the attack is in place first
        await legitimate(server, until, legit)

    await asyncio.gather(
        sample(), legit_after_warmup(), *attackers(name, server, until, attack)
    )
    await asyncio.sleep(1.0)  # what the server logs about the attack's end counts too
    latencies = sorted(legit.latencies) or [float("nan")]
    return {
        "server": server.kind, "attack": name,
        "requests": len(legit.latencies) + legit.failures, "failed": legit.failures,
        "median ms": statistics.median(latencies) * 1000, "worst ms": latencies[-1] * 1000,
        "attacker conns": attack.opened, "closed by server": attack.closed,
        "log lines": server.log_lines() - lines_before,
        "peak fds": peak_fds, "peak RSS MiB": peak_rss / 1024,
    }


def table(rows: list[dict]) -> str:
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |",
             "|" + "|".join("---" if c in ("server", "attack") else "---:" for c in columns) + "|"]
    for row in rows:
        cells = []
        for column in columns:
            value = row[column]
            cells.append(f"{value:,.0f}" if isinstance(value, float) else
                         f"{value:,}" if isinstance(value, int) else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="per attack (default 6)")
    parser.add_argument("--servers", default="control,collector")
    parser.add_argument("--attacks", default=",".join(ATTACKS),
                        help=f"among: {'; '.join(ATTACKS)} (comma-separated)")
    parser.add_argument("--nofile", type=int, default=1024,
                        help="the servers' soft limit of open files (default 1024)")
    parser.add_argument("--checkout", type=Path, default=REPO,
                        help="serve from this checkout of probe (default: this one)")
    options = parser.parse_args()
    wanted = [a for a in ATTACKS if a.split(",")[0] in options.attacks or a in options.attacks]
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # 1,100 attacker sockets here
    rows = []
    with tempfile.TemporaryDirectory(prefix="hostile-servers-") as folder:
        for kind in options.servers.split(","):
            server = Server(kind, options.checkout.resolve(), Path(folder), options.nofile)
            server.start()
            try:
                for name in wanted:
                    rows.append(asyncio.run(run_attack(name, server, options.seconds)))
                    print(f"{kind}: {name}: done", file=sys.stderr)
                    time.sleep(1.0)  # closed connections drain before the next attack
            finally:
                server.stop()
    print(f"checkout {options.checkout.resolve()}, {options.seconds:g} s per attack, "
          f"servers' soft open-file limit {options.nofile}")
    print(table(rows))


if __name__ == "__main__":
    main()
