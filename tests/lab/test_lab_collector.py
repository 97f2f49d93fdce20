"""End to end: the probe in the lab uploads to a real collector, which
verifies and stores; a tampered line is refused, a duplicate is not stored twice;
`probe aggregate` over the collector's store agrees with the scenario's truth."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ooni_loadable import assert_ooni_loadable

from probe.lab import plan
from probe.lab.demo import run_probe
from probe.lab.processes import in_ns
from probe.lab.scenarios import get

pytestmark = pytest.mark.lab


def _load_independent_verifier():
    """The second verifier lives with the report tests; load it by path (no shared code)."""
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "report" / "independent_verifier.py"
    spec = importlib.util.spec_from_file_location("independent_verifier", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


independent_verifier = _load_independent_verifier()

COLLECTOR = f"{plan.CONTROL_V4}:8781"  # in the control namespace, reached through the censor
PROBE = [sys.executable, "-m", "probe"]


@pytest.fixture
def collector(clean_lab, tmp_path):
    data = tmp_path / "store"
    process = subprocess.Popen(
        in_ns(plan.CONTROL, [*PROBE, "collector", "serve", "--listen", COLLECTOR,
                             "--data", str(data), "--duration", "300", "--check-workers", "0"]),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            probe = subprocess.run(
                in_ns(plan.CLIENT, [sys.executable, "-c",
                                    f"import urllib.request; urllib.request.urlopen("
                                    f"'http://{COLLECTOR}/health', timeout=1)"]),
                capture_output=True, check=False)
            if probe.returncode == 0:
                break
            assert process.poll() is None, process.stderr.read()
            time.sleep(0.3)
        else:
            pytest.fail("the collector did not come up")
        yield data
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def post(lines: bytes) -> dict:
    """POST report lines to the collector from the client namespace."""
    script = (
        "import sys, urllib.request, urllib.error\n"
        f"r = urllib.request.Request('http://{COLLECTOR}/v1/measurements',"
        " data=sys.stdin.buffer.read(),"
        " headers={'Content-Type': 'application/x-ndjson'})\n"
        "try:\n    print(urllib.request.urlopen(r, timeout=20).read().decode())\n"
        "except urllib.error.HTTPError as e:\n    print(e.read().decode())\n"
    )
    done = subprocess.run(in_ns(plan.CLIENT, [sys.executable, "-c", script]), input=lines,
                          capture_output=True, check=True, timeout=60)
    return json.loads(done.stdout)


def stored_lines(data: Path) -> list[bytes]:
    return [line for path in sorted(data.rglob("*.jsonl"))
            for line in path.read_bytes().splitlines() if line]


def test_lab_run_uploads_and_aggregates_to_the_ground_truth(clean_lab, collector, tmp_path):
    scenario = get("ip-blackhole-partial")  # Telegram dc1-dc3 blackholed: partially blocked
    clean_lab.apply(scenario)
    reports = tmp_path / "reports"
    summary = run_probe(clean_lab, reports, control_url=clean_lab.control_url(),
                        extra=("--upload", f"http://{COLLECTOR}"))
    assert summary["complete"]
    report = Path(summary["report"])
    sent = report.read_bytes().splitlines()
    stored = stored_lines(collector)
    assert sorted(stored) == sorted(sent)  # exactly the signed bytes, each once

    # the report verifies with probe verify and with the independent verifier written
    # from docs/signing.md alone (control attestations included, the helper's key pinned)
    verify = subprocess.run([*PROBE, "verify", "--require-complete", str(report)],
                            capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    attested = [json.loads(line)["test_keys"]["control"]["attestation"][0]["signature"]
                for line in sent if b'"attestation"' in line]
    assert attested, "the lab's control helper attested nothing"
    helper_keys = {attested[0]["public_key"]}
    second = independent_verifier.verify(report.read_bytes(), None, helper_keys)
    assert second.ok, second.problems
    assert assert_ooni_loadable(report) == len(sent)  # the sealed last line included

    # a duplicate upload is acknowledged, not stored again
    again = post(sent[0] + b"\n")
    assert [r["status"] for r in again["results"]] == ["duplicate"]
    # a tampered line is refused with a reason, and nothing is stored
    tampered = sent[1].replace(b'"telegram"', b'"telegrum"', 1)
    assert tampered != sent[1]
    refused = post(tampered + b"\n")
    assert refused["results"][0]["status"] == "rejected" and refused["results"][0]["reason"]
    assert len(stored_lines(collector)) == len(stored)

    # the NGO side: aggregate the collector's store and read the tables
    db = tmp_path / "agg.duckdb"
    ingest = subprocess.run([*PROBE, "aggregate", "--db", str(db), "ingest", str(collector)],
                            capture_output=True, text=True)
    assert ingest.returncode == 0, ingest.stdout + ingest.stderr
    table = subprocess.run([*PROBE, "aggregate", "--db", str(db), "endpoints"],
                           capture_output=True, text=True)
    assert table.returncode == 0, table.stderr
    rows = [line for line in table.stdout.splitlines() if "telegram-dc" in line]
    blocked = {f"telegram-dc{i}" for i in (1, 2, 3)}
    for line in rows:
        endpoint = next(word for word in line.split() if word.startswith("telegram-dc"))
        assert ("tcp.timeout" in line) == (endpoint in blocked), line
    assert {w for line in rows for w in line.split() if w.startswith("telegram-dc")} >= blocked
    summary_table = subprocess.run([*PROBE, "aggregate", "--db", str(db), "summary",
                                    "--service", "telegram"], capture_output=True, text=True)
    assert summary_table.returncode == 0 and "telegram" in summary_table.stdout
