"""Benchmark: a run where every endpoint is blackholed takes one step timeout, not their sum.

Builds a network namespace whose only way out is a veth link to a second,
"sink" namespace that silently drops every packet sent to 203.0.113.0/24 and
2001:db8::/32 (a blackhole: SYNs vanish, connects time out). A DNS server on
the namespace's loopback answers every name with 203.0.113.77. The bundled
targets.yaml is rewritten into that world: the same services, endpoints, ports
and checks, its literal addresses moved into 203.0.113.0/24 / 2001:db8::/32.
Nothing can leave the namespace.

For each per-step timeout it runs `probe run` and reports the wall time, the
endpoints measured, and the probe's peak memory (max RSS). It first compiles the
probe's bytecode, as `pip install` does: a checkout run with
PYTHONDONTWRITEBYTECODE set would otherwise compile every module on every run.

`--control-unreachable` adds a control helper at 203.0.113.250:8080, which the
sink drops like everything else (a censor blocking the helper): the run should
learn that after one connect timeout, not wait out `--control-timeout` (60 s).
`--endpoints N` keeps the first N endpoints of the bundled targets.

    sudo .venv/bin/python benchmarks/blackhole.py [--timeouts 2 5 10] [--rate 0]
    sudo .venv/bin/python benchmarks/blackhole.py --timeouts 2 --endpoints 30 --control-unreachable
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _netns import in_namespace, rewrite_targets, sh  # noqa: E402

NAMESPACE = f"probe-bench-{os.getpid()}"
SINK = f"probe-sink-{os.getpid()}"
CONTROL_URL = "http://203.0.113.250:8080"  # in the blackholed range: nothing answers


def ns(*args: str) -> list[str]:
    return in_namespace(NAMESPACE, *args)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeouts", type=float, nargs="+", default=[2.0, 5.0, 10.0])
    parser.add_argument("--rate", type=float, default=None,
                        help="--rate for probe run (default: the CLI's own)")
    parser.add_argument("--record", type=Path, default=None,
                        help="also record each run's trace to PATH.TIMEOUT.jsonl (profiling)")
    parser.add_argument("--endpoints", type=int, default=None,
                        help="keep only the first N endpoints of the bundled targets")
    parser.add_argument("--control-unreachable", action="store_true",
                        help="ask a control helper whose address is blackholed too")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--profile", type=Path, default=None,
                        help="run the probe under cProfile, stats to PATH.TIMEOUT.prof")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (it creates a network namespace)", file=sys.stderr)
        return 2
    compileall.compile_dir(ROOT / "probe", quiet=1)
    work = Path(tempfile.mkdtemp(prefix="probe-bench-"))
    kept: list[str] = []

    def keep(endpoint) -> bool:
        if args.endpoints is not None and len(kept) >= args.endpoints:
            return False
        kept.append(endpoint.id)
        return True

    targets, endpoints = rewrite_targets(work, keep)
    count = len(endpoints)
    control = ["--control", CONTROL_URL] if args.control_unreachable else []
    runs = []
    config = {"servers": [{"kind": "dns", "listen": ["127.0.0.1:53"], "zone": {},
                           "behaviours": {"*": {"forge": ["203.0.113.77"]}}}]}
    (work / "dns.json").write_text(json.dumps(config))
    sh("ip", "netns", "add", NAMESPACE)
    sh("ip", "netns", "add", SINK)
    dns = None
    sink = ["ip", "netns", "exec", SINK]
    try:
        sh(*ns("ip", "link", "set", "lo", "up"))
        sh("ip", "link", "add", "bh0", "netns", NAMESPACE, "type", "veth",
           "peer", "name", "bh1", "netns", SINK)
        sh(*ns("ip", "link", "set", "bh0", "up"))
        sh(*sink, "ip", "link", "set", "bh1", "up")
        sh(*ns("ip", "addr", "add", "198.51.100.1/30", "dev", "bh0"))
        sh(*sink, "ip", "addr", "add", "198.51.100.2/30", "dev", "bh1")
        sh(*ns("ip", "-6", "addr", "add", "2001:db8:ffff::1/64", "dev", "bh0", "nodad"))
        sh(*sink, "ip", "-6", "addr", "add", "2001:db8:ffff::2/64", "dev", "bh1", "nodad")
        sh(*ns("ip", "route", "add", "203.0.113.0/24", "via", "198.51.100.2"))
        sh(*ns("ip", "-6", "route", "add", "2001:db8::/32", "via", "2001:db8:ffff::2"))
        # the sink forwards nothing and answers nothing: every packet just disappears
        sh(*sink, "sysctl", "-qw", "net.ipv4.ip_forward=0")
        sh(*sink, "nft", "add table inet hole; add chain inet hole in "
           "{ type filter hook prerouting priority -300; policy drop; }")
        dns = subprocess.Popen(ns(sys.executable, "-m", "probe.lab.servers", "--config",
                                  str(work / "dns.json"), "--duration", "600"),
                               stdout=subprocess.DEVNULL)
        time.sleep(1.0)
        print(f"{count} endpoints (the bundled targets.yaml's shape), every address blackholed"
              + (f", control helper {CONTROL_URL} too" if control else ""))
        print(f"{'timeout':>8} {'wall s':>8} {'wall/timeout':>13} {'rows':>6} {'max RSS MiB':>12}")
        for timeout in args.timeouts:
            before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            started = time.monotonic()
            result = subprocess.run(
                ns(sys.executable,
                   *(["-m", "cProfile", "-o", f"{args.profile}.{timeout:g}.prof"]
                     if args.profile else []),
                   "-m", "probe", "run", "--targets", str(targets),
                   "--resolver", "127.0.0.1", "--no-system-resolver", "--ephemeral-key",
                   "--timeout", str(timeout), "--out", str(work / "reports"), "--json", *control,
                   *(["--rate", str(args.rate)] if args.rate is not None else []),
                   *(["--record", f"{args.record}.{timeout:g}.jsonl"] if args.record else [])),
                capture_output=True, text=True, timeout=timeout * 20 + 60,
            )
            wall = time.monotonic() - started
            rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            if result.returncode != 0:
                print(result.stderr, file=sys.stderr)
                return 1
            summary = json.loads(result.stdout)
            print(f"{timeout:>8.1f} {wall:>8.2f} {wall / timeout:>13.2f} "
                  f"{len(summary['endpoints']):>6} {max(rss, before) / 1024:>12.1f}")
            runs.append({"timeout": timeout, "wall_s": round(wall, 2),
                         "rows": len(summary["endpoints"]),
                         "max_rss_mib": round(max(rss, before) / 1024, 1)})
    finally:
        if dns is not None:
            dns.terminate()
            dns.wait(10)
        subprocess.run(["ip", "netns", "delete", NAMESPACE], check=False)
        subprocess.run(["ip", "netns", "delete", SINK], check=False)
        shutil.rmtree(work, ignore_errors=True)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "benchmark": "blackhole", "endpoints": count, "rate": args.rate,
            "control": "unreachable" if control else None, "runs": runs,
        }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
