"""Self-test: does the lab really do what a scenario says, before the probe is judged by it?

Runs the scenario's independent observations (``probe.lab.observe``) from the
client's and the control's namespaces and compares each outcome with the
expected one. A failing self-test means the lab is broken, not the probe.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict, dataclass

from probe.lab import plan
from probe.lab.observe import Check, matches
from probe.lab.processes import LabError, in_ns
from probe.lab.scenarios import Scenario, self_checks

VANTAGES = {"client": plan.CLIENT, "control": plan.CONTROL}


@dataclass(frozen=True)
class CheckResult:
    check: Check
    outcome: str
    ok: bool

    def __str__(self) -> str:
        mark = "ok  " if self.ok else "FAIL"
        return f"{mark} {self.check.label()}: expected {self.check.expect}, got {self.outcome}"


def observe_from(vantages: dict[str, list[Check]]) -> dict[str, list[dict]]:
    """Run each vantage's checks inside its namespace, all vantages at once."""
    running = {}
    for vantage, checks in vantages.items():
        if checks:
            proc = subprocess.Popen(
                in_ns(VANTAGES[vantage], [sys.executable, "-m", "probe.lab.observe"]),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
            budget = max(c.timeout + c.seconds for c in checks) + 15
            running[vantage] = (proc, json.dumps([asdict(c) for c in checks]), budget)
    results: dict[str, list[dict]] = {v: [] for v in vantages}
    for vantage, (proc, payload, budget) in running.items():
        try:
            out, err = proc.communicate(payload, timeout=budget)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise LabError(f"observing from {vantage} took longer than {budget}s") from None
        if proc.returncode != 0:
            raise LabError(f"observing from {vantage} failed: {err.strip()[-1500:]}")
        results[vantage] = json.loads(out)
    return results


def run_checks(checks: tuple[Check, ...] | list[Check]) -> list[CheckResult]:
    by_vantage = {v: [c for c in checks if c.vantage == v] for v in VANTAGES}
    observed = observe_from(by_vantage)
    results: list[CheckResult] = []
    for vantage, mine in by_vantage.items():
        for check, result in zip(mine, observed[vantage], strict=False):
            results.append(CheckResult(check, result["outcome"], matches(check, result)))
    return results


def selftest(scenario: Scenario) -> list[CheckResult]:
    """Observe the scenario's effects; the scenario must already be applied."""
    return run_checks(self_checks(scenario))
