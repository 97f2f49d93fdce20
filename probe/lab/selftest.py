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


def observe_from(vantage: str, checks: list[Check]) -> list[dict]:
    """Run ``checks`` inside the vantage's namespace; one result per check."""
    if not checks:
        return []
    payload = json.dumps([asdict(c) for c in checks])
    budget = max(c.timeout + c.seconds for c in checks) + 15
    proc = subprocess.run(
        in_ns(VANTAGES[vantage], [sys.executable, "-m", "probe.lab.observe"]),
        input=payload, capture_output=True, text=True, timeout=budget, check=False,
    )
    if proc.returncode != 0:
        raise LabError(f"observing from {vantage} failed: {proc.stderr.strip()[-1500:]}")
    return json.loads(proc.stdout)


def run_checks(checks: tuple[Check, ...] | list[Check]) -> list[CheckResult]:
    results: list[CheckResult] = []
    for vantage in VANTAGES:
        mine = [c for c in checks if c.vantage == vantage]
        for check, result in zip(mine, observe_from(vantage, mine)):
            results.append(CheckResult(check, result["outcome"], matches(check, result)))
    return results


def selftest(scenario: Scenario) -> list[CheckResult]:
    """Observe the scenario's effects; the scenario must already be applied."""
    return run_checks(self_checks(scenario))
