"""``python -m probe.lab.servers --config FILE.json --duration SECONDS``.

Starts the servers of a configuration (see ``probe.lab.servers``), reports the
bound endpoints once listening (a JSON line on stdout starting with ``ready``,
and ``--ready-file`` written atomically), and exits 0 by itself after
``--duration`` seconds or on SIGTERM/SIGINT. SIGHUP re-reads the DNS behaviour
files. Exit status 2 is a configuration error, 1 a server that could not start
(an address not configured in this namespace, a port in use).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path

from probe.lab.servers.config import ConfigError
from probe.lab.servers.fleet import Fleet

MAX_DURATION = 7 * 24 * 3600


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(text)
    temporary.replace(path)


async def run(fleet: Fleet, duration: float, ready_file: Path | None) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, fleet.reload)
    try:
        await fleet.start()
    except OSError as exc:
        print(f"probe.lab.servers: cannot listen: {exc}", file=sys.stderr)
        return 1
    try:
        ready = json.dumps({"pid": os.getpid(), "servers": fleet.describe()})
        if ready_file is not None:
            _write_atomically(ready_file, ready + "\n")
        print(f"ready {ready}", flush=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(duration):
                await stop.wait()
    finally:
        await fleet.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m probe.lab.servers", description="Run the lab's fake Internet servers."
    )
    parser.add_argument("--config", required=True, type=Path, help="JSON configuration file")
    parser.add_argument(
        "--duration", required=True, type=float, help="seconds to run before exiting by itself"
    )
    parser.add_argument("--ready-file", type=Path, help="write the bound endpoints here (JSON)")
    args = parser.parse_args(argv)
    if not 0 < args.duration <= MAX_DURATION:
        parser.error(f"--duration must be between 0 and {MAX_DURATION} seconds")
    try:
        fleet = Fleet.from_file(args.config)
    except ConfigError as exc:
        print(f"probe.lab.servers: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(run(fleet, args.duration, args.ready_file))


if __name__ == "__main__":
    sys.exit(main())
