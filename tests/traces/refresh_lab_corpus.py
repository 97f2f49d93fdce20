"""Re-record the lab part of the replay corpus, ``tests/traces/lab/``, from the lab.

Runs the probe (``probe run --record``) in every lab scenario, or those named,
writes each trace and the verdicts its run reached (``<scenario>.expected.json``)
next to this file, whatever the working directory, and checks each run against
the scenario's ground truth. Needs root and the lab (the ``lab`` extra); review
the diff before committing::

    sudo .venv/bin/python tests/traces/refresh_lab_corpus.py [SCENARIO...]

Exit codes: 0 every scenario agrees with its truth, 1 some do not (or could not
be recorded), 2 the lab cannot run here.

A test tool, not a command of the product: the product never imports the lab.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import click

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run as a script from any working directory

LAB_CORPUS = Path(__file__).resolve().parent / "lab"
EXIT_OK, EXIT_CHANGED, EXIT_USAGE = 0, 1, 2


def expected_from_footer(trace, scenario_name: str | None = None) -> dict:
    """The expected.json of a recorded trace: the verdicts its own run reached."""
    footer = trace.footer or {}
    return {
        "trace": trace.path.name,
        "scenario": scenario_name,
        "endpoints": [
            {"id": v.get("endpoint_id"), "address": v.get("address"), "port": v.get("port"),
             "verdict": v.get("verdict"), "method": v.get("method")}
            for v in footer.get("verdicts", [])
        ],
        "services": {s.get("service"): s.get("status") for s in footer.get("services", [])},
    }


def refresh_lab_corpus(names: list[str], out_dir: Path, timeout: float, echo=click.echo) -> int:
    """Record the probe in every lab scenario (``--record``), write traces and expected
    verdicts to ``out_dir``, and check each against the scenario's ground truth.

    Needs root and the lab. Returns the number of scenarios whose recording or
    truth check failed.
    """
    from probe.lab.demo import evaluate, probe_command
    from probe.lab.lab import Lab, require_root
    from probe.lab.scenarios import SCENARIOS
    from probe.trace import TraceError, load_trace

    require_root()
    selected = [s for s in SCENARIOS if not names or s.name in names]
    unknown = set(names) - {s.name for s in SCENARIOS}
    if unknown:
        raise click.UsageError(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    out_dir.mkdir(parents=True, exist_ok=True)
    failed = 0
    lab = Lab()
    lab.up(duration=max(600.0, 120.0 * len(selected)))
    scratch = tempfile.TemporaryDirectory(prefix="probe-lab-corpus-")  # reports: not kept
    try:
        for scenario in selected:
            trace_path = out_dir / f"{scenario.name}.jsonl.gz"
            report_dir = Path(scratch.name) / scenario.name
            lab.apply(scenario)
            argv = probe_command(lab, report_dir, timeout, lab.control_url())
            argv += ["--record", str(trace_path.resolve())]
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
            try:
                summary = json.loads(proc.stdout)
                trace = load_trace(trace_path)
            except (ValueError, TraceError) as exc:
                echo(f"{scenario.name}: recording failed ({exc}); stderr: {proc.stderr[-500:]}")
                failed += 1
                lab.reset()
                continue
            mismatches = evaluate(scenario, summary)
            expected = expected_from_footer(trace, scenario.name)
            expected["truth_mismatches"] = [str(m) for m in mismatches]
            expected_path = out_dir / f"{scenario.name}.expected.json"
            expected_path.write_text(json.dumps(expected, indent=2) + "\n")
            status = "ok" if not mismatches else f"{len(mismatches)} differ from the truth"
            echo(f"{scenario.name}: {trace_path} ({status})")
            for mismatch in mismatches:
                echo(f"    {mismatch}")
            failed += bool(mismatches)
            lab.reset()
    finally:
        lab.down()
        scratch.cleanup()
    return failed


@click.command()
@click.argument("names", nargs=-1)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=str(LAB_CORPUS),
              show_default=True)
@click.option("--timeout", type=click.FloatRange(0.5, 30), default=2.0, show_default=True)
def main(names: tuple[str, ...], out_dir: str, timeout: float) -> None:
    """Re-record tests/traces/lab/ from the lab (root; review the diff before committing)."""
    try:
        from probe.lab.processes import LabError
    except ImportError as exc:
        click.echo(f"the lab is not available here (install the lab extra): {exc}", err=True)
        sys.exit(EXIT_USAGE)
    try:
        failed = refresh_lab_corpus(list(names), Path(out_dir), timeout)
    except (LabError, OSError, subprocess.SubprocessError) as exc:
        click.echo(f"{type(exc).__name__}: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    sys.exit(EXIT_CHANGED if failed else EXIT_OK)


if __name__ == "__main__":
    main()
