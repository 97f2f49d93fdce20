"""Benchmark: `probe run` over 2,000 and 10,000 TLS endpoints, and its overhead
over bare asyncio TLS handshakes against the same servers.

Two network namespaces joined by one veth pair, nothing else:

    pscale-cli-PID  198.51.100.1    2001:db8:ffff::1   (the probe)
          | veth
    pscale-svc-PID  198.51.100.2    2001:db8:ffff::2   (DNS on 198.51.100.2:53)
                    local 203.0.113.0/24 and 2001:db8:5::/64 on lo ("AnyIP")

The AnyIP routes make every address of both ranges local to the services
namespace, so an HTTPS server listening on 0.0.0.0 and :: answers TLS on 254
IPv4 and 2,000 IPv6 addresses. The servers are ``python -m probe.lab.servers``
(two processes, two ports each, a wildcard ``*.scale.test`` leaf from a fresh
root; the first also runs the DNS). The targets files spread IP-literal
endpoints ([tcp, tls], ``sni: xN.scale.test``) over those addresses and four
ports, in services of 20 endpoints; one endpoint in ten is a name ([dns, tcp,
tls], one A and one AAAA, so two handshakes).

For each size and concurrency the real CLI runs in the client namespace
(``--rate 0 --timeout 5 --no-system-resolver --json``). Recorded: wall time,
the child's CPU (user+sys) and max RSS (wait4), its peak open descriptors, the
servers' CPU, listen-queue overflows on the services side, and that every
summary row is ``ok``. Sampling /proc every 50 ms also splits the run into
start-up, event loop (the child has sockets open: measuring and analysing) and
report (scrub, sign, write, print). Then, in the same run, a bare asyncio
client (``open_connection(ssl=CERT_NONE)``, fetch the peer chain, close) does
the same handshakes at the same concurrency: its rate over the probe's is our
overhead. Last, one run at --concurrency 1024 under ``ulimit -n 1024`` (a
common soft limit on volunteers' machines) shows what the descriptor limit does.

    sudo .venv/bin/python benchmarks/scale.py            # ~3.5 minutes on 2 cores
    sudo .venv/bin/python benchmarks/scale.py --sizes 2000 --concurrency 256 --profile 30

Namespaces are deleted and every process started is stopped on exit, errors
included. Nothing leaves the two namespaces (no default route, no NAT).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pstats
import resource
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from probe.lab.pki import create_root_ca, issue_leaf  # noqa: E402

CLIENT = f"pscale-cli-{os.getpid()}"
SERVICES = f"pscale-svc-{os.getpid()}"
CLIENT_V4, SERVICES_V4 = "198.51.100.1", "198.51.100.2"
CLIENT_V6, SERVICES_V6 = "2001:db8:ffff::1", "2001:db8:ffff::2"
ANYIP_V4, ANYIP_V6 = "203.0.113.0/24", "2001:db8:5::/64"
RESOLVER = f"{SERVICES_V4}:53"
PORTS = (443, 8443, 9443, 10443)
V6_ADDRESSES = 2000  # 2001:db8:5::1 .. ::7d0
NAMES_EVERY = 10  # one endpoint in ten is a name ([dns, tcp, tls], A + AAAA)
SERVICE_SIZE = 20  # endpoints per service, i.e. per report line (targets.yaml: 3 to 20)
TIMEOUT = 5.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def sh(*args: str) -> None:
    subprocess.run(args, check=True)


def in_namespace(namespace: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", namespace, *args]


# --------------------------------------------------------------------------- #
# The lab: namespaces, PKI, servers                                            #
# --------------------------------------------------------------------------- #


def build_namespaces() -> None:
    sh("ip", "netns", "add", CLIENT)
    sh("ip", "netns", "add", SERVICES)
    client = ["ip", "netns", "exec", CLIENT]
    services = ["ip", "netns", "exec", SERVICES]
    sh(
        "ip",
        "link",
        "add",
        "psc0",
        "netns",
        CLIENT,
        "type",
        "veth",
        "peer",
        "name",
        "pss0",
        "netns",
        SERVICES,
    )
    for prefix, device in ((client, "psc0"), (services, "pss0")):
        sh(*prefix, "ip", "link", "set", "lo", "up")
        sh(*prefix, "ip", "link", "set", device, "up")
    sh(*client, "ip", "addr", "add", f"{CLIENT_V4}/30", "dev", "psc0")
    sh(*services, "ip", "addr", "add", f"{SERVICES_V4}/30", "dev", "pss0")
    sh(*client, "ip", "-6", "addr", "add", f"{CLIENT_V6}/64", "dev", "psc0", "nodad")
    sh(*services, "ip", "-6", "addr", "add", f"{SERVICES_V6}/64", "dev", "pss0", "nodad")
    sh(*client, "ip", "route", "add", ANYIP_V4, "via", SERVICES_V4)
    sh(*client, "ip", "-6", "route", "add", ANYIP_V6, "via", SERVICES_V6)
    # AnyIP: every address of both ranges is local here, so a listener on
    # 0.0.0.0 / :: accepts connections to all of them.
    sh(*services, "ip", "route", "add", "local", ANYIP_V4, "dev", "lo")
    sh(*services, "ip", "-6", "route", "add", "local", ANYIP_V6, "dev", "lo")
    # 10,000 handshakes in a minute: keep the client's ports and the servers'
    # accept queues from being what we measure.
    sh(*client, "sysctl", "-qw", "net.ipv4.ip_local_port_range=10000 65000")
    sh(*services, "sysctl", "-qw", "net.core.somaxconn=8192")


def delete_namespaces() -> None:
    for namespace in (CLIENT, SERVICES):
        subprocess.run(["ip", "netns", "delete", namespace], check=False, stderr=subprocess.DEVNULL)


def write_pki(work: Path) -> tuple[Path, Path, Path]:
    root = create_root_ca("probe scale root")
    leaf = issue_leaf(root, ["*.scale.test"])
    paths = work / "root.pem", work / "leaf.pem", work / "leaf.key"
    paths[0].write_bytes(root.certificate_pem)
    paths[1].write_bytes(leaf.certificate_pem)
    paths[2].touch(mode=0o600)
    paths[2].write_bytes(leaf.key_pem)
    return paths


def server_configs(work: Path, names: dict[str, tuple[str, str]]) -> list[Path]:
    """Two server processes (one per core), each serving two of the four ports on
    0.0.0.0 and ::; the first also runs the DNS server."""
    limits = {"max_connections": 8192, "idle_timeout": 15, "lifetime": 60, "handshake_timeout": 10}
    https = {
        "kind": "https",
        "certificates": {"*.scale.test": {"cert": "leaf.pem", "key": "leaf.key"}},
    }
    zone = {name: {"A": v4, "AAAA": v6} for name, (v4, v6) in names.items()}
    dns = {"kind": "dns", "listen": [RESOLVER], "zone": zone, "ttl": 300}
    paths = []
    for index, ports in enumerate((PORTS[:2], PORTS[2:])):
        listen = [f"0.0.0.0:{p}" for p in ports] + [f"[::]:{p}" for p in ports]
        servers = [{**https, "listen": listen}] + ([dns] if index == 0 else [])
        path = work / f"servers-{index}.json"
        path.write_text(json.dumps({"limits": limits, "servers": servers}))
        paths.append(path)
    return paths


def start_servers(configs: list[Path], processes: list[subprocess.Popen]) -> None:
    """Start one server process per configuration, appending each to ``processes``
    as soon as it exists (so the caller stops it whatever happens next)."""
    for config in configs:
        processes.append(
            subprocess.Popen(
                in_namespace(
                    SERVICES,
                    sys.executable,
                    "-m",
                    "probe.lab.servers",
                    "--config",
                    str(config),
                    "--duration",
                    "3600",
                    "--ready-file",
                    str(config.with_suffix(".ready")),
                ),
                stdout=subprocess.DEVNULL,
                cwd=ROOT,
            )
        )
    deadline = time.monotonic() + 30
    for config, process in zip(configs, processes, strict=True):
        while not config.with_suffix(".ready").exists():
            if process.poll() is not None:
                raise RuntimeError(f"server {config.name} exited with {process.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"server {config.name} not ready after 30 s")
            time.sleep(0.05)


def stop_processes(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


# --------------------------------------------------------------------------- #
# Targets                                                                      #
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class Workload:
    size: int
    targets: Path
    handshakes: list[tuple[str, int, str]]  # (address, port, sni): what the probe will do


def v4_address(index: int) -> str:
    return f"203.0.113.{index % 254 + 1}"


def v6_address(index: int) -> str:
    return f"2001:db8:5::{index % V6_ADDRESSES + 1:x}"


def name_addresses(size: int, every: int) -> dict[str, tuple[str, str]]:
    """Every name a workload of up to ``size`` endpoints uses -> (A, AAAA)."""
    if not every:
        return {}
    return {
        f"n{i}.scale.test": (v4_address(i * 7), v6_address(i * 7)) for i in range(0, size, every)
    }


def write_targets(work: Path, size: int, ca: Path, names_every: int) -> Workload:
    """``size`` endpoints: IP literals alternating IPv4 / IPv6 over four ports, and
    every ``names_every``-th a name resolved by the lab DNS (0: none)."""
    names = name_addresses(size, names_every)
    services: list[dict] = []
    handshakes: list[tuple[str, int, str]] = []
    for i in range(size):
        if i % SERVICE_SIZE == 0:
            number = i // SERVICE_SIZE
            services.append(
                {
                    "id": f"s{number:04d}",
                    "name": f"Scale {number}",
                    "test_name": "scale",
                    "baseline": number == 0,
                    "endpoints": [],
                }
            )
        port = PORTS[(i // 2) % len(PORTS)]
        if names_every and i % names_every == 0:
            host = f"n{i}.scale.test"
            endpoint = {"id": f"e{i}", "host": host, "port": port, "checks": ["dns", "tcp", "tls"]}
            handshakes += [(address, port, host) for address in names[host]]
        else:
            host = v4_address(i) if i % 2 else v6_address(i)
            sni = f"x{i}.scale.test"
            endpoint = {
                "id": f"e{i}",
                "host": host,
                "port": port,
                "checks": ["tcp", "tls"],
                "sni": sni,
            }
            handshakes.append((host, port, sni))
        services[-1]["endpoints"].append(endpoint)
    path = work / f"targets-{size}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "version": 1,
                "ca_bundle": str(ca),
                # 198.51.100.0/24 too: the client's own address then counts as
                # public, so the report is scrubbed of it as a volunteer's would be
                "routable_networks": [ANYIP_V4, "198.51.100.0/24", "2001:db8::/32"],
                "services": services,
            },
            sort_keys=False,
        )
    )
    return Workload(size, path, handshakes)


# --------------------------------------------------------------------------- #
# Running a child in the client namespace and measuring it                     #
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class ChildRun:
    returncode: int
    stdout: str
    stderr: str
    wall: float
    cpu: float  # user + sys seconds of the child (wait4)
    max_rss_mib: float  # the child's max RSS (wait4)
    peak_fds: int
    startup: float  # seconds before the event loop started (imports, targets file)
    startup_cpu: float  # the child's CPU seconds by then
    loop_wall: float  # first to last moment the child had a socket open (its event loop)
    loop_cpu: float  # the child's CPU seconds spent in that window
    loop_end_rss_mib: float  # RSS when the last socket closed: the measurements held
    peak_before_exit: float  # seconds between the highest RSS sample and the exit
    server_cpu: float  # user + sys seconds of the server processes during the run
    listen_overflows: int  # services namespace, TcpExtListenOverflows delta


def process_cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def process_rss_mib(pid: int) -> float:
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def open_descriptors(pid: int) -> tuple[int, int]:
    """(open descriptors, of which sockets) of a live process."""
    descriptors = sockets = 0
    with contextlib.suppress(OSError), os.scandir(f"/proc/{pid}/fd") as entries:
        for entry in entries:
            descriptors += 1
            with contextlib.suppress(OSError):
                sockets += os.readlink(entry.path).startswith("socket:")
    return descriptors, sockets


def listen_overflows() -> int:
    out = subprocess.run(
        in_namespace(SERVICES, "nstat", "-az", "TcpExtListenOverflows"),
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    for line in out.splitlines():
        if line.startswith("TcpExtListenOverflows"):
            return int(line.split()[1])
    return 0


def run_child(
    argv: list[str],
    servers: list[subprocess.Popen],
    work: Path,
    label: str,
    timeout: float,
    fd_limit: int | None = None,
) -> ChildRun:
    """Run argv in the client namespace, sampling it every 50 ms.

    wait4 gives this child's own CPU and max RSS. The samples find its event
    loop from outside: asyncio's self-pipe is a socket pair, so the child has
    sockets open exactly while asyncio.run() is running (measuring and
    analysing); before is start-up (imports, the targets file), after is the
    report (scrub, sign, write)."""
    out, err = work / f"{label}.out", work / f"{label}.err"

    def limit_fds() -> None:
        if fd_limit is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, fd_limit))

    server_before = sum(process_cpu(s.pid) for s in servers)
    overflows_before = listen_overflows()
    started = time.monotonic()
    with out.open("w") as stdout, err.open("w") as stderr:
        process = subprocess.Popen(
            in_namespace(CLIENT, *argv),
            stdout=stdout,
            stderr=stderr,
            cwd=work,
            preexec_fn=limit_fds,
        )
    peak_fds = 0
    loop_start = loop_end = None  # (monotonic time, child CPU seconds, RSS MiB)
    peak_rss, peak_at = 0.0, started
    command_started = False
    try:
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            # `ip netns exec` execs the command, which keeps the pid; before that
            # the pid is `ip` itself, with netlink sockets of its own
            if not command_started:
                with contextlib.suppress(OSError):
                    command_started = Path(f"/proc/{process.pid}/comm").read_text() != "ip\n"
            if command_started:
                descriptors, sockets = open_descriptors(process.pid)
                peak_fds = max(peak_fds, descriptors)
                now, rss = time.monotonic(), process_rss_mib(process.pid)
                if rss > peak_rss:
                    peak_rss, peak_at = rss, now
                if sockets:
                    sample = (now, process_cpu(process.pid), rss)
                    loop_start = loop_start or sample
                    loop_end = sample
            if time.monotonic() - started > timeout:
                raise RuntimeError(f"{label}: still running after {timeout:.0f} s")
            time.sleep(0.05)
    except BaseException:
        process.kill()
        os.waitpid(process.pid, 0)
        process.returncode = -9
        raise
    wall = time.monotonic() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    loop_start = loop_start or (started, 0.0, 0.0)
    loop_end = loop_end or loop_start
    return ChildRun(
        returncode=process.returncode,
        stdout=out.read_text(),
        stderr=err.read_text(),
        wall=wall,
        cpu=usage.ru_utime + usage.ru_stime,
        max_rss_mib=usage.ru_maxrss / 1024,
        peak_fds=peak_fds,
        startup=loop_start[0] - started,
        startup_cpu=loop_start[1],
        loop_wall=loop_end[0] - loop_start[0],
        loop_cpu=loop_end[1] - loop_start[1],
        loop_end_rss_mib=loop_end[2],
        peak_before_exit=started + wall - peak_at,
        server_cpu=sum(process_cpu(s.pid) for s in servers) - server_before,
        listen_overflows=listen_overflows() - overflows_before,
    )


# --------------------------------------------------------------------------- #
# The bare-handshake client (runs as `scale.py --bare FILE`, in the namespace)  #
# --------------------------------------------------------------------------- #


async def bare_handshakes(
    items: list[tuple[str, int, str]], concurrency: int, timeout: float
) -> Counter:
    """What a minimal client does: connect, TLS without verification, take the
    peer's chain, close. One context, one semaphore, one task per handshake."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["http/1.1"])
    slots = asyncio.Semaphore(concurrency)

    async def one(address: str, port: int, sni: str) -> str:
        async with slots:
            try:
                async with asyncio.timeout(timeout):
                    _, writer = await asyncio.open_connection(
                        address, port, ssl=context, server_hostname=sni
                    )
            except Exception as exc:  # noqa: BLE001 - counted by type, not handled
                return type(exc).__name__
            chain = writer.get_extra_info("ssl_object")._sslobj.get_unverified_chain()
            der = [certificate.public_bytes(ssl._ssl.ENCODING_DER) for certificate in chain]
            writer.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1):
                    await writer.wait_closed()
            return "ok" if der else "no_chain"

    return Counter(await asyncio.gather(*(one(*item) for item in items)))


def bare_main(path: Path, concurrency: int) -> int:
    items = [tuple(item) for item in json.loads(path.read_text())]
    counts = asyncio.run(bare_handshakes(items, concurrency, TIMEOUT))
    print(json.dumps(dict(counts)))
    return 0


# --------------------------------------------------------------------------- #
# The benchmark                                                                #
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class Row:
    client: str  # "probe", "bare", or "probe*" (under ulimit -n 1024)
    endpoints: int
    concurrency: int
    handshakes: int
    run: ChildRun
    ok: int
    rows: int
    not_ok: str  # the commonest verdicts and failures of the rows that are not ok
    report_mib: float = 0.0

    @property
    def rate(self) -> float:
        return self.handshakes / self.run.wall


def probe_row(
    workload: Workload,
    concurrency: int,
    servers,
    work: Path,
    fd_limit: int | None = None,
    profile: Path | None = None,
) -> Row:
    label = f"probe-{workload.size}-{concurrency}" + (f"-fd{fd_limit}" if fd_limit else "")
    out = work / label
    python = [sys.executable] + (["-m", "cProfile", "-o", str(profile)] if profile else [])
    argv = [
        *python,
        "-m",
        "probe",
        "run",
        "--targets",
        str(workload.targets),
        "--resolver",
        RESOLVER,
        "--no-system-resolver",
        "--timeout",
        str(TIMEOUT),
        "--rate",
        "0",
        "--concurrency",
        str(concurrency),
        "--ephemeral-key",
        "--out",
        str(out),
        "--json",
    ]
    run = run_child(argv, servers, work, label, timeout=600, fd_limit=fd_limit)
    if run.returncode != 0 or not run.stdout.strip():
        raise RuntimeError(f"{label}: probe run exited {run.returncode}:\n{run.stderr[-2000:]}")
    rows = json.loads(run.stdout)["endpoints"]
    bad = [row for row in rows if row["verdict"] != "ok"]
    not_ok = Counter(row["verdict"] for row in bad) + Counter(row["failure"] for row in bad)
    report_mib = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / (1 << 20)
    shutil.rmtree(out, ignore_errors=True)
    return Row(
        "probe*" if fd_limit else "probe",
        workload.size,
        concurrency,
        len(workload.handshakes),
        run,
        len(rows) - len(bad),
        len(rows),
        ", ".join(f"{k} x{v}" for k, v in not_ok.most_common(4)),
        report_mib,
    )


BARE_REPEATS = 3  # the bare client runs for seconds only: other work on the machine shows


def bare_row(workload: Workload, concurrency: int, servers, work: Path) -> Row:
    """The median (by wall time) of BARE_REPEATS bare-handshake runs."""
    rows = sorted(
        (bare_once(workload, concurrency, servers, work, n) for n in range(BARE_REPEATS)),
        key=lambda row: row.run.wall,
    )
    return rows[len(rows) // 2]


def bare_once(workload: Workload, concurrency: int, servers, work: Path, attempt: int) -> Row:
    label = f"bare-{workload.size}-{concurrency}-{attempt}"
    items = work / f"{label}.json"
    items.write_text(json.dumps(workload.handshakes))
    argv = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--bare",
        str(items),
        "--concurrency",
        str(concurrency),
    ]
    run = run_child(argv, servers, work, label, timeout=600)
    if run.returncode != 0:
        raise RuntimeError(f"{label}: exited {run.returncode}:\n{run.stderr[-2000:]}")
    counts = Counter(json.loads(run.stdout))
    not_ok = ", ".join(f"{k} x{v}" for k, v in counts.most_common() if k != "ok")
    return Row(
        "bare",
        workload.size,
        concurrency,
        len(workload.handshakes),
        run,
        counts["ok"],
        sum(counts.values()),
        not_ok,
    )


# --------------------------------------------------------------------------- #
# Printing                                                                     #
# --------------------------------------------------------------------------- #

RESOURCES = (
    f"{'client':<6} {'endpoints':>9} {'conc':>5} {'handshakes':>10} {'wall s':>7} "
    f"{'hs/s':>5} {'CPU s':>6} {'CPU ms/endpoint':>15} {'CPU %':>5} {'max RSS MiB':>11} "
    f"{'peak fds':>8} {'servers CPU %':>13} {'ok/rows':>13}"
)
PHASES = (
    f"{'client':<6} {'endpoints':>9} {'conc':>5} {'start s':>7} {'loop s':>6} "
    f"{'report s':>8} {'loop hs/s':>9} {'loop CPU %':>10} {'CPU s start/loop/report':>23} "
    f"{'RSS at loop end MiB':>19} {'RSS peak s before exit':>22} {'report MiB':>10}"
)


def resources_line(row: Row) -> str:
    run = row.run
    line = (
        f"{row.client:<6} {row.endpoints:>9,} {row.concurrency:>5} {row.handshakes:>10,} "
        f"{run.wall:>7.1f} {row.rate:>5.0f} {run.cpu:>6.1f} "
        f"{1000 * run.cpu / row.endpoints:>15.2f} {100 * run.cpu / run.wall:>5.0f} "
        f"{run.max_rss_mib:>11.0f} {run.peak_fds:>8} "
        f"{100 * run.server_cpu / run.wall:>13.0f} {f'{row.ok:,}/{row.rows:,}':>13}"
    )
    extras = [f"not ok: {row.not_ok}"] if row.not_ok else []
    if run.listen_overflows:
        extras.append(f"listen overflows: {run.listen_overflows}")
    return line + (f"   ({'; '.join(extras)})" if extras else "")


def phases_line(row: Row) -> str:
    run = row.run
    report_wall = run.wall - run.startup - run.loop_wall
    report_cpu = run.cpu - run.startup_cpu - run.loop_cpu
    cpu = f"{run.startup_cpu:.1f} / {run.loop_cpu:.1f} / {report_cpu:.1f}"
    return (
        f"{row.client:<6} {row.endpoints:>9,} {row.concurrency:>5} {run.startup:>7.1f} "
        f"{run.loop_wall:>6.1f} {report_wall:>8.1f} "
        f"{row.handshakes / max(run.loop_wall, 0.05):>9.0f} "
        f"{100 * run.loop_cpu / max(run.loop_wall, 0.05):>10.0f} {cpu:>23} "
        f"{run.loop_end_rss_mib:>19.0f} {run.peak_before_exit:>22.1f} "
        f"{row.report_mib:>10.1f}"
    )


def print_summary(rows: list[Row], largest: int) -> None:
    print(f"bare: median of {BARE_REPEATS} runs")
    if any(row.client == "probe*" for row in rows):
        print("probe*: --concurrency 1024 under ulimit -n 1024 (a common default)")
    print("\nphases (seen from outside: the event loop is when the child has a socket open)")
    print(PHASES)
    for row in rows:
        print(phases_line(row))
    probe = {(r.endpoints, r.concurrency): r for r in rows if r.client == "probe"}
    print()
    for baseline in (r for r in rows if r.client == "bare"):
        measured = probe.get((largest, baseline.concurrency))
        if measured is None:
            continue
        loop_probe = measured.handshakes / measured.run.loop_wall
        loop_bare = baseline.handshakes / baseline.run.loop_wall
        cpu_probe = measured.run.cpu / measured.handshakes
        cpu_bare = baseline.run.cpu / baseline.handshakes
        print(
            f"overhead, {largest:,} endpoints ({measured.handshakes:,} handshakes) at "
            f"concurrency {baseline.concurrency}:"
        )
        print(
            f"  TCP+TLS per second of wall time: bare {baseline.rate:.0f}/s, probe "
            f"{measured.rate:.0f}/s -> ratio {baseline.rate / measured.rate:.1f}"
        )
        print(
            f"  event loop only (without start-up and report): bare {loop_bare:.0f}/s, "
            f"probe {loop_probe:.0f}/s -> ratio {loop_bare / loop_probe:.1f}"
        )
        print(
            f"  client CPU per handshake: bare {1000 * cpu_bare:.2f} ms, probe "
            f"{1000 * cpu_probe:.2f} ms -> ratio {cpu_probe / cpu_bare:.1f}"
        )
    sizes = sorted({size for size, _ in probe})
    for concurrency in sorted({c for _, c in probe}):
        small, large = probe.get((sizes[0], concurrency)), probe.get((sizes[-1], concurrency))
        if small is None or large is None or small is large:
            continue
        per_thousand = 1000 / (large.endpoints - small.endpoints)
        growth = (large.run.max_rss_mib - small.run.max_rss_mib) * per_thousand
        held = (large.run.loop_end_rss_mib - small.run.loop_end_rss_mib) * per_thousand
        print(
            f"memory at concurrency {concurrency}: max RSS {small.run.max_rss_mib:.0f} MiB "
            f"({small.endpoints:,} endpoints) -> {large.run.max_rss_mib:.0f} MiB "
            f"({large.endpoints:,}): {growth:+.1f} MiB per 1,000 endpoints "
            f"({'flat' if abs(growth) < 1 else 'not flat'}); at the end of measuring "
            f"{held:+.1f} MiB per 1,000"
        )


def write_json(path: Path, rows: list[Row]) -> None:
    """The rows as JSON, for benchmarks/speed.py and the README's figures."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"benchmark": "scale", "rows": [{
        "client": row.client, "endpoints": row.endpoints, "concurrency": row.concurrency,
        "handshakes": row.handshakes, "wall_s": round(row.run.wall, 2),
        "handshakes_per_s": round(row.rate, 1), "loop_wall_s": round(row.run.loop_wall, 2),
        "cpu_s": round(row.run.cpu, 2), "max_rss_mib": round(row.run.max_rss_mib, 1),
        "ok": row.ok, "rows": row.rows,
    } for row in rows]}, indent=2) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 10000])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[256, 1024])
    parser.add_argument(
        "--names-every",
        type=int,
        default=NAMES_EVERY,
        metavar="N",
        help=f"every Nth endpoint is a name (default {NAMES_EVERY}; 0: none)",
    )
    parser.add_argument("--no-bare", action="store_true", help="skip the bare-handshake runs")
    parser.add_argument(
        "--no-fd-limit-run", action="store_true", help="skip the run under ulimit -n 1024"
    )
    parser.add_argument(
        "--profile",
        type=int,
        metavar="N",
        default=0,
        help="also run the smallest size under cProfile and print the top N",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument("--bare", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare is not None:
        return bare_main(args.bare, args.concurrency[0])
    if os.geteuid() != 0:
        print("needs root (it creates network namespaces)", file=sys.stderr)
        return 2
    # SIGTERM (and SIGINT, even when a non-interactive shell started us with it
    # ignored) ends the run through the finally below: namespaces and servers go.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.default_int_handler)
    work = Path(tempfile.mkdtemp(prefix="pscale-"))
    os.chmod(work, 0o755)
    servers: list[subprocess.Popen] = []
    rows: list[Row] = []
    try:
        root, _, _ = write_pki(work)
        sizes = sorted(args.sizes)
        workloads = [write_targets(work, size, root, args.names_every) for size in sizes]
        build_namespaces()
        names = name_addresses(sizes[-1], args.names_every)
        start_servers(server_configs(work, names), servers)
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        share = f"1 in {args.names_every}" if args.names_every else "no"
        print(
            f"{os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.2f} before), "
            f"ulimit -n {nofile}, --timeout {TIMEOUT:.0f} --rate 0; {share} endpoints a "
            f"name (A + AAAA: two handshakes), the rest IP literals; services of "
            f"{SERVICE_SIZE} endpoints"
        )
        print(RESOURCES, flush=True)

        def add(row: Row) -> None:
            rows.append(row)
            print(resources_line(row), flush=True)

        for workload in workloads:
            for concurrency in args.concurrency:
                add(probe_row(workload, concurrency, servers, work))
        if not args.no_bare:
            for concurrency in args.concurrency:
                add(bare_row(workloads[-1], concurrency, servers, work))
        if not args.no_fd_limit_run:
            add(probe_row(workloads[0], 1024, servers, work, fd_limit=1024))
        print_summary(rows, sizes[-1])
        if args.json is not None:
            write_json(args.json, rows)
        print(
            f"load average {os.getloadavg()[0]:.2f} at the end (other work on the machine "
            f"skews wall times; CPU per handshake much less)"
        )
        if args.profile:
            profile = work / "probe.prof"
            probe_row(workloads[0], args.concurrency[0], servers, work, profile=profile)
            print(
                f"\nwhere the probe's CPU goes ({workloads[0].size:,} endpoints, "
                f"concurrency {args.concurrency[0]}, under cProfile):"
            )
            stats = pstats.Stats(str(profile)).sort_stats("cumulative")
            stats.print_stats(r"/probe/(?!lab/)", args.profile)
    finally:
        stop_processes(servers)
        delete_namespaces()
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
