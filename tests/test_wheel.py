"""probe as users install it: a wheel in a fresh virtualenv, run from outside the checkout.

The README's editable install hides whatever the package itself lacks (a data
file found only next to the sources). This builds the wheel, installs it with its
dependencies into a new virtualenv in a temporary folder, and runs the main
commands from there, with the checkout nowhere on the path: the bundled targets
and CA files must come from the installed package.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _run(argv: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["HOME"] = str(cwd)  # keys and config land in the temporary folder
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin folder of a fresh virtualenv holding only the wheel and its dependencies."""
    work = tmp_path_factory.mktemp("wheel")
    built = _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                  str(work / "dist"), str(REPO)], work)
    assert built.returncode == 0, built.stderr[-2000:]
    wheels = list((work / "dist").glob("probe-*.whl"))
    assert len(wheels) == 1, wheels
    venv = work / "venv"
    made = _run([sys.executable, "-m", "venv", str(venv)], work)
    assert made.returncode == 0, made.stderr[-2000:]
    pip = _run([str(venv / "bin" / "pip"), "install", "-q", str(wheels[0])], work, timeout=600)
    if pip.returncode != 0 and "No matching distribution" in pip.stderr:
        pytest.skip(f"no package registry reachable to install the wheel's dependencies: "
                    f"{pip.stderr.strip().splitlines()[-1][:200]}")
    assert pip.returncode == 0, pip.stderr[-2000:]
    return venv / "bin"


def test_the_installed_package_is_not_the_checkout(installed: Path, tmp_path: Path) -> None:
    shown = _run([str(installed / "python"), "-c", "import probe, probe.targets as t; "
                  "print(probe.__file__); print(t.default_targets_path())"], tmp_path)
    assert shown.returncode == 0, shown.stderr
    module, targets = shown.stdout.split()
    assert not Path(module).is_relative_to(REPO) and "site-packages" in module
    assert Path(targets).is_file() and "site-packages" in targets


def test_targets_check_and_list_use_the_bundled_file(installed: Path, tmp_path: Path) -> None:
    checked = _run([str(installed / "probe"), "targets", "check"], tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert "site-packages" in checked.stdout and ": ok," in checked.stdout
    listed = _run([str(installed / "probe"), "targets", "list"], tmp_path)
    assert listed.returncode == 0, listed.stderr
    # Signal's endpoints pin a root shipped as package data (probe/ca/): found too
    assert "signal" in listed.stdout and "telegram" in listed.stdout


def test_control_serve_and_collector_help(installed: Path, tmp_path: Path) -> None:
    for command in (["control", "serve", "--help"], ["collector", "serve", "--help"],
                    ["verify", "--help"]):
        shown = _run([str(installed / "probe"), *command], tmp_path)
        assert shown.returncode == 0 and "Usage:" in shown.stdout, (command, shown.stderr)


def test_a_run_with_no_network_writes_a_report_that_verifies(
    installed: Path, tmp_path: Path
) -> None:
    """`probe run` in an empty network namespace: no interface, so nothing leaves the
    machine; every step fails at once and the run still writes a signed report."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) for an empty network namespace")
    out = tmp_path / "reports"
    ran = _run(["unshare", "-n", str(installed / "probe"), "run", "--service", "telegram",
                "--timeout", "1", "--ephemeral-key", "--out", str(out), "--json"], tmp_path)
    assert ran.returncode == 0, ran.stderr[-2000:]
    summary = json.loads(ran.stdout)
    assert summary  # a machine-readable summary, not a traceback
    reports = list(out.glob("*.jsonl"))
    assert len(reports) == 1
    verified = _run([str(installed / "probe"), "verify", str(reports[0])], tmp_path)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "OK: 1 file(s) verified" in verified.stdout


def test_a_missing_extra_is_one_line_not_a_traceback(installed: Path, tmp_path: Path) -> None:
    """The wheel alone has no [aggregate] extra (duckdb): aggregation says what to install."""
    probed = _run([str(installed / "python"), "-c", "import duckdb"], tmp_path)
    if probed.returncode == 0:
        pytest.skip("duckdb is importable in the fresh virtualenv")
    shown = _run([str(installed / "probe"), "aggregate", "--db", str(tmp_path / "a.duckdb"),
                  "ingest", str(tmp_path)], tmp_path)
    assert shown.returncode == 1
    assert "Traceback" not in shown.stderr
    assert "pip install 'probe[aggregate]'" in shown.stderr
    assert len(shown.stderr.strip().splitlines()) == 1
