"""Run the real probe inside the lab and compare its verdicts with the ground truth.

Used by ``probe lab demo`` and by the lab tests. The probe runs as a normal
user of the client namespace would run it: the ``probe run`` CLI in a
subprocess under ``ip netns exec plab-client``, with the ISP resolver, the
lab's targets file and, when the control helper runs, its URL.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from probe.lab import plan
from probe.lab.lab import PYTHON, Lab
from probe.lab.processes import in_ns
from probe.lab.scenarios import BY_NAME, SCENARIOS, Scenario, get
from probe.lab.selftest import CheckResult, selftest
from probe.lab.truth import Mismatch, compare, compare_functions, compare_network, expectation

PROBE_TIMEOUT = 2.0  # seconds per step: the lab answers in milliseconds
CONTROL_TIMEOUT = 20.0


class ProbeUnavailable(Exception):
    """`probe run` cannot run in this checkout yet (engine or CLI incomplete)."""


def _resolver(lab: Lab) -> str:
    """The resolver the probe asks: the applied scenario's (the ISP's by default)."""
    name = lab.current_scenario()
    return get(name).resolver if name and name in BY_NAME else plan.ISP_RESOLVER


def probe_command(
    lab: Lab, out_dir: Path, timeout: float = PROBE_TIMEOUT, control_url: str | None = None
) -> list[str]:
    """The exact command line that runs the probe in the client namespace."""
    argv = [PYTHON, "-c", "from probe.cli import main; main()", "run",
            "--targets", str(lab.targets_path), "--resolver", _resolver(lab),
            "--timeout", str(timeout), "--out", str(out_dir), "--json"]
    if control_url:
        argv += ["--control", control_url, "--control-timeout", str(CONTROL_TIMEOUT)]
    return in_ns(plan.CLIENT, argv)


def run_probe(
    lab: Lab, out_dir: Path, timeout: float = PROBE_TIMEOUT, control_url: str | None = None,
    extra: tuple[str, ...] = (), logs: Path | None = None,
) -> dict:
    """Run the probe once; its --json summary. Raises ProbeUnavailable when the
    CLI cannot run at all (import errors), RuntimeError on any other failure.
    ``extra`` arguments go after the others; ``logs`` keeps stderr in that file."""
    argv = probe_command(lab, out_dir, timeout, control_url) + list(extra)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    if logs is not None:
        logs.write_text(proc.stderr)
    try:
        return json.loads(proc.stdout)
    except ValueError:
        pass
    if "ModuleNotFoundError" in proc.stderr or "ImportError" in proc.stderr:
        last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
        raise ProbeUnavailable(f"probe run not available yet: {last}")
    raise RuntimeError(
        f"probe run exited {proc.returncode} without JSON: {proc.stderr.strip()[-2000:]}"
    )


@dataclass
class Outcome:
    scenario: Scenario
    selftest: list[CheckResult] = field(default_factory=list)
    result: dict | None = None
    mismatches: list[Mismatch] = field(default_factory=list)
    unchecked: list[Mismatch] = field(default_factory=list)  # the summary lacks the field
    error: str | None = None
    seconds: float = 0.0

    @property
    def selftest_ok(self) -> bool:
        return all(r.ok for r in self.selftest)


def unreported(result: dict, mismatches: list[Mismatch]) -> list[Mismatch]:
    """The function and network expectations that could not be compared because
    the summary carries no such field at all (an older probe): unchecked, which
    is neither agreement nor a wrong value."""
    def reports(what: str) -> bool:
        if what == "function":
            return any("functions" in service for service in result.get("services", []))
        return "network" in result

    return [m for m in mismatches if m.what in ("function", "network")
            and m.observed == "not reported" and not reports(m.what)]


def evaluate(scenario: Scenario, result: dict) -> list[Mismatch]:
    services = result.get("services", [])
    return (compare(scenario.truth, result.get("endpoints", []), scenario.services, services)
            + compare_functions(scenario.functions, services)
            + compare_network(scenario.network, {**(result.get("network") or {}),
                                                 "network_down": result.get("network_down")}))


def run_scenario(lab: Lab, scenario: Scenario, out_root: Path, with_probe: bool = True,
                 timeout: float = PROBE_TIMEOUT) -> Outcome:
    started = time.monotonic()
    outcome = Outcome(scenario)
    try:
        lab.apply(scenario)
        outcome.selftest = selftest(scenario)
        if with_probe:
            out_dir = out_root / scenario.name
            out_dir.mkdir(parents=True, exist_ok=True)
            outcome.result = run_probe(lab, out_dir, timeout, lab.control_url())
            mismatches = evaluate(scenario, outcome.result)
            outcome.unchecked = unreported(outcome.result, mismatches)
            outcome.mismatches = [m for m in mismatches if m not in outcome.unchecked]
    except ProbeUnavailable as exc:
        outcome.error = str(exc)
    except Exception as exc:  # noqa: BLE001  (the demo reports and goes on)
        outcome.error = f"{type(exc).__name__}: {exc}"
    finally:
        outcome.seconds = time.monotonic() - started
    return outcome


def _pairs(outcome: Outcome) -> dict[tuple[str, str, bool], list[str]]:
    """(expected, observed, agree) -> endpoint ids, for the table."""
    groups: dict[tuple[str, str, bool], list[str]] = {}
    for row in (outcome.result or {}).get("endpoints", []):
        rule = expectation(outcome.scenario.truth, row)
        expected = f"{rule.verdict}/{rule.method}" if rule.method else rule.verdict
        observed = f"{row.get('verdict')}/{row.get('method')}" if row.get("method") else str(
            row.get("verdict"))
        agree = not compare((rule,), [row]) if rule.matches(row) else observed == "ok"
        groups.setdefault((expected, observed, agree), []).append(str(row.get("id")))
    return groups


def table(outcomes: list[Outcome]) -> str:
    lines = [f"{'scenario':28} {'self-test':9} {'probe':7} expected -> observed (endpoints)"]
    for outcome in outcomes:
        selftest_text = "ok" if outcome.selftest_ok else "FAIL"
        if outcome.error:
            lines.append(f"{outcome.scenario.name:28} {selftest_text:9} {'-':7} {outcome.error}")
            continue
        if outcome.result is None:
            lines.append(f"{outcome.scenario.name:28} {selftest_text:9} {'-':7}")
            continue
        verdict = "ok" if not outcome.mismatches else f"{len(outcome.mismatches)} off"
        first = True
        for (expected, observed, agree), ids in sorted(_pairs(outcome).items()):
            mark = "  " if agree else "!="
            prefix = (f"{outcome.scenario.name:28} {selftest_text:9} {verdict:7}" if first
                      else " " * 46)
            names = ", ".join(sorted(set(ids)))
            lines.append(f"{prefix} {mark} {expected} -> {observed} ({len(ids)}: {names})")
            first = False
        for mismatch in outcome.mismatches:
            if mismatch.what != "endpoint":
                lines.append(" " * 46 + f" != {mismatch.what} {mismatch}")
        if outcome.unchecked:
            kinds = sorted({m.what for m in outcome.unchecked})
            lines.append(" " * 46 + f" ?? {len(outcome.unchecked)} {' and '.join(kinds)} "
                         "expectations unchecked: the --json summary does not report them")
    return "\n".join(lines)


def demo(
    names: list[str] | None = None, timeout: float = PROBE_TIMEOUT, duration: float = 1800,
    echo=print,
) -> list[Outcome]:
    """Bring the lab up, run every scenario (self-test, then the probe), tear down."""
    lab = Lab()
    selected = [s for s in SCENARIOS if not names or s.name in names]
    outcomes: list[Outcome] = []
    echo("bringing the lab up...")
    lab.up(duration=duration)
    try:
        echo(f"control helper: {lab.control_url() or 'not available (probe.control missing)'}")
        with tempfile.TemporaryDirectory(prefix="probe-lab-demo-") as out:
            for scenario in selected:
                outcome = run_scenario(lab, scenario, Path(out), timeout=timeout)
                outcomes.append(outcome)
                status = "error" if outcome.error else (
                    "ok" if outcome.selftest_ok and not outcome.mismatches else "differs")
                echo(f"  {scenario.name}: {status} ({outcome.seconds:.1f}s)")
                for check in outcome.selftest:
                    if not check.ok:
                        echo(f"    self-test {check}")
            lab.reset()
    finally:
        lab.down()
    echo("")
    echo(table(outcomes))
    return outcomes


if __name__ == "__main__":
    demo(sys.argv[1:] or None)
