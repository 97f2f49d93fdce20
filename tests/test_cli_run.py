"""`probe run` end to end, as a user runs it: the real CLI in a subprocess against real
servers on loopback (and a real control helper), then the report it wrote."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ooni_loadable import assert_ooni_loadable
from servers import make_pki, start_dns, start_https, start_mtproto, start_tcp

PROBE = [sys.executable, "-m", "probe"]

TARGETS = """\
version: 1
routable_networks: [127.0.0.0/8, "::1/128"]
services:
  - id: baseline
    baseline: true
    endpoints:
      - {{id: base, host: example.org, port: {https}, checks: [dns, tcp, tls, https]}}
  - id: telegram
    test_name: telegram
    endpoints:
      - {{id: tg-dc1, host: 127.0.0.1, ports: [{mtproto}], checks: [tcp, mtproto],
          role: datacenter}}
      - {{id: tg-dead, host: 127.0.0.1, ports: [{silent}], checks: [tcp, mtproto],
          role: datacenter}}
      - {{id: tg-web, host: www.example.org, port: {https}, checks: [dns, tcp, tls, https],
          role: web}}
  - id: web
    endpoints:
      - {{id: web-nx, host: blocked.example, port: {https}, checks: [dns, tcp, tls]}}
      - {{id: web-forged, host: forged.example, port: {https}, checks: [dns, tcp, tls]}}
"""

ZONE = {"example.org": {"A": ["127.0.0.1"]}, "www.example.org": {"A": ["127.0.0.1"]},
        "blocked.example": {"A": ["127.0.0.1"]}, "forged.example": {"A": ["127.0.0.1"]}}
LYING = {"blocked.example": "nxdomain", "forged.example": {"forge": ["10.10.34.35"]}}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Loopback servers, a lying resolver for the probe, an honest one for the control."""
    directory = tmp_path_factory.mktemp("world")
    pki = make_pki(directory)
    with (
        start_dns(ZONE, LYING) as lying,
        start_dns(ZONE) as honest,
        start_https(pki) as https,
        start_mtproto() as mtproto,
        start_tcp("silent") as silent,
    ):
        targets = directory / "targets.yaml"
        targets.write_text(TARGETS.format(https=https.port, mtproto=mtproto.port,
                                          silent=silent.port))
        yield {"dir": directory, "pki": pki, "targets": targets, "lying": lying.port,
               "honest": honest.port}


def env(tmp: Path) -> dict[str, str]:
    return {**os.environ, "XDG_CONFIG_HOME": str(tmp / "config"), "PYTHONUNBUFFERED": "1"}


def probe_run(world, tmp: Path, *extra: str, timeout: float = 60) -> subprocess.CompletedProcess:
    command = [
        *PROBE, "run", "--targets", str(world["targets"]),
        "--resolver", f"127.0.0.1:{world['lying']}", "--no-system-resolver",
        "--ca-bundle", str(world["pki"].lab_root.cert), "--timeout", "1",
        "--out", str(tmp / "reports"), "--json", *extra,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env(tmp))


def rows(summary) -> dict[str, tuple[str, str | None]]:
    return {e["id"]: (e["verdict"], e["method"]) for e in summary["endpoints"]}


def test_run_without_control(world, tmp_path):
    result = probe_run(world, tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    verdicts = rows(summary)
    assert verdicts["base"] == ("ok", None)
    assert verdicts["tg-dc1"] == ("ok", None)
    assert verdicts["tg-web"] == ("ok", None)
    # failures without a control stay inconclusive unless conclusive on their own
    assert verdicts["tg-dead"] == ("inconclusive", "protocol.timeout")
    assert verdicts["web-nx"] == ("inconclusive", "dns.nxdomain")
    assert verdicts["web-forged"] == ("dns_blocked", "dns.bogon")
    report = Path(summary["report"])
    assert report.parent == tmp_path / "reports"
    lines = [json.loads(line) for line in report.read_text().splitlines()]
    measurements = lines  # every line is a measurement, the last one sealed
    assert [m["test_name"] for m in measurements] == ["baseline", "telegram", "web"]
    assert [m["signature"].get("seal") for m in measurements] == [
        None, None, {"measurements": 3, "interrupted": False}]
    assert all(m["probe_ip"] == "127.0.0.1" for m in measurements)
    assert measurements[1]["annotations"]["analysis"] == "local-only"
    verify = subprocess.run([*PROBE, "verify", str(report)], capture_output=True, text=True,
                            env=env(tmp_path))
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_every_report_line_loads_with_oonis_models(world, tmp_path):
    summary = json.loads(probe_run(world, tmp_path).stdout)
    assert assert_ooni_loadable(summary["report"]) == 3  # all of them, none skipped


@pytest.fixture(scope="module")
def control_helper(world, tmp_path_factory):
    """A real control helper process on loopback using the honest resolver."""
    tmp = tmp_path_factory.mktemp("control")
    process = subprocess.Popen(
        [*PROBE, "control", "serve", "--listen", "127.0.0.1:0", "--allow-network", "127.0.0.0/8",
         "--resolver", f"127.0.0.1:{world['honest']}", "--duration", "120", "--open",
         "--targets", str(world["targets"])],  # the helper measures what the probe does
        stderr=subprocess.PIPE, text=True, env=env(tmp),
    )
    url = None
    deadline = time.monotonic() + 20
    while url is None and time.monotonic() < deadline:
        line = process.stderr.readline()
        if "listening on" in line:
            url = "http://" + line.rsplit(" ", 1)[1].strip()
        elif not line and process.poll() is not None:
            break
    try:
        assert url, "control helper did not start"
        yield url, tmp
    finally:
        process.terminate()
        process.wait(10)


def test_run_with_control(world, control_helper, tmp_path):
    url, control_tmp = control_helper
    result = probe_run(world, tmp_path, "--control", url)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["control"]["source"] == url, summary["control"]
    verdicts = rows(summary)
    assert verdicts["base"] == ("ok", None)
    # the control resolves what the probe's resolver denies: blocked
    assert verdicts["web-nx"] == ("dns_blocked", "dns.nxdomain")
    assert verdicts["web-forged"] == ("dns_blocked", "dns.bogon")
    # the silent endpoint fails for the control too: down, never blocked
    assert verdicts["tg-dead"] == ("down", "protocol.timeout")
    services = {s["id"]: s["status"] for s in summary["services"]}
    assert services["web"] == "blocked"
    assert services["telegram"] == "ok"
    lines = [json.loads(x) for x in Path(summary["report"]).read_text().splitlines()]
    telegram = next(x for x in lines if x.get("test_name") == "telegram")
    attestation = telegram["test_keys"]["control"]["attestation"]
    assert {a["response"]["endpoint_id"] for a in attestation} == {"tg-dc1", "tg-dead", "tg-web"}
    # the helper's key, as an NGO would pin it
    key = subprocess.run([*PROBE, "key", "show", "--control"], capture_output=True, text=True,
                         env=env(control_tmp)).stdout.split()[2]
    trusted = tmp_path / "helpers.txt"
    trusted.write_text(key + "\n")
    verify = subprocess.run(
        [*PROBE, "verify", summary["report"], "--trusted-control-keys", str(trusted)],
        capture_output=True, text=True, env=env(tmp_path),
    )
    assert verify.returncode == 0, verify.stdout


def test_unreachable_control_leaves_failures_inconclusive(world, tmp_path):
    # a port where nothing listens: the helper is "blocked"
    result = probe_run(world, tmp_path, "--control", "http://127.0.0.1:9", "--control-timeout", "2")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["control"]["source"] is None and summary["control"]["problems"]
    verdicts = rows(summary)
    assert verdicts["web-nx"][0] == "inconclusive"
    assert verdicts["base"] == ("ok", None)


def test_bad_targets_is_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "targets.yaml"
    bad.write_text("version: 1\nservices:\n  - id: x\n    endpoints:\n"
                   "      - {id: a, host: example.org, port: 70000, checks: [tcp]}\n")
    result = subprocess.run([*PROBE, "run", "--targets", str(bad), "--out", str(tmp_path / "r")],
                            capture_output=True, text=True, env=env(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "line 5" in result.stderr and "70000" in result.stderr
    assert not (tmp_path / "r").exists()  # nothing was measured
    check = subprocess.run([*PROBE, "targets", "check", str(bad)], capture_output=True, text=True)
    assert check.returncode == 2


def test_bad_options_exit_2(tmp_path):
    result = subprocess.run([*PROBE, "run", "--resolver", "not-an-ip"], capture_output=True,
                            text=True, env=env(tmp_path))
    assert result.returncode == 2 and "--resolver" in result.stderr


def test_targets_list_and_check_bundled():
    listed = subprocess.run([*PROBE, "targets", "list"], capture_output=True, text=True)
    assert listed.returncode == 0 and "telegram" in listed.stdout and "baseline" in listed.stdout
    checked = subprocess.run([*PROBE, "targets", "check"], capture_output=True, text=True)
    assert checked.returncode == 0 and "ok" in checked.stdout


def test_ctrl_c_writes_a_partial_report_marked_incomplete(world, tmp_path):
    command = [
        *PROBE, "run", "--targets", str(world["targets"]),
        "--resolver", f"127.0.0.1:{world['lying']}", "--no-system-resolver",
        "--ca-bundle", str(world["pki"].lab_root.cert), "--timeout", "30",
        "--out", str(tmp_path / "reports"), "--json", "--record", str(tmp_path / "run.jsonl"),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=env(tmp_path))
    # Ctrl-C once the baseline's page was fetched and its four DNS exchanges ended
    # (the page can come before the UDP queries stop listening for injected
    # replies; the trace is flushed line by line), while the silent datacenter keeps
    # the run waiting for 30 s: never a fixed sleep, which a busy machine outruns
    trace, deadline = tmp_path / "run.jsonl", time.monotonic() + 25
    while time.monotonic() < deadline and process.poll() is None:
        recorded = trace.read_text(errors="replace").splitlines() if trace.exists() else []
        exchanges = [x for x in recorded
                     if '"op":"dns_exchange"' in x and '"qname":"example.org"' in x]
        if any('"op":"http_request"' in x for x in recorded) and len(exchanges) >= 4:
            break
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 1, stderr
    assert "Traceback" not in stderr and "interrupted" in stderr
    summary = json.loads(stdout)
    assert summary["complete"] is False
    verdicts = rows(summary)
    assert verdicts["base"] == ("ok", None)  # measured before Ctrl-C: kept
    assert verdicts["tg-dead"][0] == "inconclusive"
    report = Path(summary["report"])
    lines = [json.loads(x) for x in report.read_text().splitlines()]
    assert lines[-1]["signature"]["seal"] == {"measurements": len(lines), "interrupted": True}
    assert all(x["annotations"]["complete"] == "false" for x in lines)
    assert assert_ooni_loadable(report) == len(lines)
    assert not [p for p in report.parent.iterdir() if p.name.startswith(".")]  # no temp file
    verify = subprocess.run([*PROBE, "verify", str(report)], capture_output=True, text=True,
                            env=env(tmp_path))
    assert verify.returncode == 0, verify.stdout


def test_kill_9_mid_run_leaves_nothing_in_the_report_folder(world, tmp_path):
    """The staged, unscrubbed results have no name on disk: a killed run leaves none."""
    command = [
        *PROBE, "run", "--targets", str(world["targets"]),
        "--resolver", f"127.0.0.1:{world['lying']}", "--no-system-resolver",
        "--ca-bundle", str(world["pki"].lab_root.cert), "--timeout", "30",
        "--out", str(tmp_path / "reports"), "--json",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=env(tmp_path))
    deadline = time.monotonic() + 20
    while not (tmp_path / "reports").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(3)  # the staging file exists from the start; the silent endpoint holds the run
    process.kill()
    process.wait(timeout=10)
    assert (tmp_path / "reports").is_dir()
    assert list((tmp_path / "reports").iterdir()) == []


OFFLINE_TARGETS = """\
version: 1
services:
  - id: baseline
    baseline: true
    endpoints:
      - {id: base, host: www.baseline.lab.test, port: 443, checks: [dns, tcp, tls, https]}
  - id: telegram
    endpoints:
      - {id: dc1, host: 203.0.113.11, ports: [80, 443], checks: [tcp, mtproto, http]}
      - {id: web, host: web.telegram.lab.test, port: 443, checks: [dns, tcp, tls, https]}
      - {id: v6, host: "2001:db8::11", port: 443, checks: [tcp]}
"""


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("ip"),
                    reason="needs root and iproute2 to make an empty network namespace")
def test_no_network_at_all_is_quick_and_inconclusive(tmp_path):
    """A namespace with no interface up: nothing can leave, everything fails at once."""
    name = f"probe-offline-{os.getpid()}"
    targets = tmp_path / "targets.yaml"
    targets.write_text(OFFLINE_TARGETS)
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        started = time.monotonic()
        result = subprocess.run(
            ["ip", "netns", "exec", name, *PROBE, "run", "--targets", str(targets),
             "--resolver", "198.51.100.53", "--timeout", "5", "--out", str(tmp_path / "r")],
            capture_output=True, text=True, timeout=60, env=env(tmp_path),
        )
        elapsed = time.monotonic() - started
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "No network" in result.stdout
    assert "network seems down" in result.stdout  # said per service too, in plain words
    assert elapsed < 15  # unreachable fails at once; nothing waits for the 5 s timeouts
    report = next((tmp_path / "r").glob("*.jsonl"))
    for line in report.read_text().splitlines():
        data = json.loads(line)
        for row in data.get("test_keys", {}).get("endpoints", []):
            assert row["verdict"] == "inconclusive", row
