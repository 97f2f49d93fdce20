"""Every process the lab starts: launched inside a namespace, bounded in time,
recorded by PID in the state directory, and stopped by that PID only.

A pid file holds the PID and the process's start time (from /proc), so a PID
reused by an unrelated process after a crash is never killed by mistake.
Nothing here looks processes up by name.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

STATE_DIR = Path(os.environ.get("PROBE_LAB_STATE", "/run/probe-lab"))


class LabError(Exception):
    """The lab could not do what was asked; the message says what and why."""


@dataclass(frozen=True)
class Started:
    name: str
    pid: int
    namespace: str
    log: Path


def run(
    argv: list[str], check: bool = True, timeout: float = 30, **kw
) -> subprocess.CompletedProcess:
    """Run a short command; raise LabError with its stderr when it fails."""
    try:
        proc = subprocess.run(
            argv, check=False, capture_output=True, text=True, timeout=timeout, **kw
        )
    except FileNotFoundError as exc:
        raise LabError(f"{argv[0]} is not installed ({exc})") from exc
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"{' '.join(argv)} took longer than {timeout}s") from exc
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def in_ns(namespace: str, argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", namespace, *argv]


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22 (starttime); the command name in field 2 may contain spaces.
    return stat.rsplit(")", 1)[1].split()[19]


def _pid_dir(state: Path) -> Path:
    return state / "pids"


def start(
    name: str, namespace: str, argv: list[str], state: Path = STATE_DIR
) -> Started:
    """Start ``argv`` in ``namespace`` in its own session (so a Ctrl-C reaches
    the lab's teardown, not the servers first) and record its PID."""
    pids = _pid_dir(state)
    pids.mkdir(parents=True, exist_ok=True)
    log = state / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:  # a fresh log: readiness is read from it
        # `ip netns exec` execs the command, so the PID is the server's own.
        proc = subprocess.Popen(
            in_ns(namespace, argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    record = {"pid": proc.pid, "start": _start_time(proc.pid), "ns": namespace, "argv": argv}
    (pids / f"{name}.json").write_text(json.dumps(record))
    return Started(name, proc.pid, namespace, log)


def is_running(name: str, state: Path = STATE_DIR) -> bool:
    record = _read(name, state)
    return record is not None and _alive(record)


def _read(name: str, state: Path) -> dict | None:
    try:
        return json.loads((_pid_dir(state) / f"{name}.json").read_text())
    except (OSError, ValueError):
        return None


def _alive(record: dict) -> bool:
    start_time = _start_time(record["pid"])
    if start_time is None or start_time != record.get("start"):
        return False
    # A zombie (exited, not yet reaped by us) counts as stopped.
    try:
        state = Path(f"/proc/{record['pid']}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def stop(name: str, state: Path = STATE_DIR, grace: float = 2.0) -> bool:
    """Stop the process recorded as ``name``; True if it was running."""
    path = _pid_dir(state) / f"{name}.json"
    record = _read(name, state)
    if record is None:
        return False
    was_running = _alive(record)
    if was_running:
        _kill(record["pid"], grace)
    path.unlink(missing_ok=True)
    return was_running


def _kill(pid: int, grace: float) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        _reap(pid)
        if _start_time(pid) is None:
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    _reap(pid)


def _reap(pid: int) -> None:
    """Collect our own child's exit status so it does not linger as a zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def stop_all(state: Path = STATE_DIR) -> list[str]:
    stopped = []
    pids = _pid_dir(state)
    if pids.is_dir():
        for path in sorted(pids.glob("*.json")):
            if stop(path.stem, state):
                stopped.append(path.stem)
    return stopped


def recorded(state: Path = STATE_DIR) -> list[str]:
    pids = _pid_dir(state)
    return sorted(p.stem for p in pids.glob("*.json")) if pids.is_dir() else []


def kill_namespace_processes(namespace: str) -> list[int]:
    """Stop whatever still runs inside one of the lab's own namespaces (left by
    a crashed run whose state directory is gone), by the PIDs the kernel lists."""
    proc = run(["ip", "netns", "pids", namespace], check=False)
    pids = [int(p) for p in proc.stdout.split() if p.isdigit() and int(p) != os.getpid()]
    for pid in pids:
        _kill(pid, grace=1.0)
    return pids


def wait_for_listeners(
    namespace: str, tcp: set[tuple[str, int]], udp: set[tuple[str, int]], timeout: float,
    name: str | None = None, state: Path = STATE_DIR,
) -> None:
    """Wait until every (address, port) listens inside ``namespace``."""
    deadline = time.monotonic() + timeout
    missing: set = set()
    while True:
        missing = set()
        for proto, wanted in (("-t", tcp), ("-u", udp)):
            if not wanted:
                continue
            out = run(in_ns(namespace, ["ss", "-Hln", proto]), check=False).stdout
            have = set()
            for line in out.splitlines():
                fields = line.split()
                if len(fields) >= 4:
                    local = fields[3]
                    addr, _, port = local.rpartition(":")
                    have.add((addr.strip("[]").split("%")[0], int(port)))
            for address, port in wanted:
                anywhere = "::" if ":" in address else "0.0.0.0"
                if not {(address, port), (anywhere, port), ("*", port), ("::", port)} & have:
                    missing.add((proto, address, port))
        if not missing:
            return
        if name is not None and not is_running(name, state):
            log = state / "logs" / f"{name}.log"
            tail = log.read_text(errors="replace")[-800:] if log.exists() else ""
            raise LabError(f"{name} exited while starting in {namespace}; its log ends:\n{tail}")
        if time.monotonic() > deadline:
            raise LabError(
                f"{name or namespace}: not listening after {timeout}s on {sorted(missing)}"
            )
        time.sleep(0.1)
