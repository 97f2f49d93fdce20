"""Commands for traces: ``probe replay`` and the lab corpus refresher.

``replay`` is registered by ``probe.cli`` as ``probe replay``; the module also runs
on its own (``python -m probe.trace_cli replay TRACE``, ``python -m probe.trace_cli
refresh-lab-corpus``). Parse, call ``probe.replay``, print: no replay logic here.

Exit codes as for ``probe run``: 0 done (for ``--diff``: no verdict changed),
1 ``--diff`` found changes (or the corpus refresh disagrees with a scenario's
truth), 2 the trace (or the usage) is unusable.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import click

EXIT_OK, EXIT_CHANGED, EXIT_USAGE = 0, 1, 2
LAB_CORPUS = Path("tests") / "traces" / "lab"


def _warn(message: str) -> None:
    click.echo(f"probe: {message}", err=True)


def _replay_notes(replayed) -> list[str]:
    notes = list(replayed.trace.notes)
    network = replayed.network
    if network.missing:
        notes.append(
            f"{len(network.missing)} operations were not in the trace and failed as "
            "replay_missing_operation (the runner now asks for something the recorded run "
            "did not do); their verdicts are not comparable"
        )
    if network.unused():
        notes.append(f"{network.unused()} recorded operations were never asked for")
    notes += network.problems
    return notes


@click.command("replay")
@click.argument("trace", type=click.Path(dir_okay=False))
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Folder for the replayed report (default: replays; none with --diff).")
@click.option("--diff", "show_diff", is_flag=True,
              help="Print the verdicts that differ from those recorded in the trace; exit 1 if any.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def replay(trace: str, out_dir: str | None, show_diff: bool, as_json: bool) -> None:
    """Run the analysis again over a recorded TRACE, without any network."""
    from probe.replay import as_dict, diff_replayed, replay_trace
    from probe.trace import TraceError

    if out_dir is None and not show_diff:
        out_dir = "replays"
    try:
        replayed = replay_trace(trace, out_dir, key=None)
        changes = diff_replayed(replayed) if show_diff else []
    except TraceError as exc:
        _warn(str(exc))
        sys.exit(EXIT_USAGE)
    notes = _replay_notes(replayed)
    info = {
        "trace": trace,
        "report_id": replayed.trace.run.report_id,
        "recorded_complete": replayed.trace.complete,
        "truncated": replayed.trace.truncated,
        "operations_replayed": replayed.network.replayed,
        "operations_missing": len(replayed.network.missing),
        "notes": notes,
    }
    if show_diff:
        if as_json:
            click.echo(json.dumps({**info, "changes": [as_dict(c) for c in changes]}))
        else:
            for note in notes:
                _warn(note)
            if not changes:
                click.echo(f"{trace}: no verdict changed")
            for change in changes:
                click.echo(str(change))
        sys.exit(EXIT_CHANGED if changes else EXIT_OK)

    from probe.display import summary_json

    if as_json:
        click.echo(json.dumps({**summary_json(replayed.outcome, replayed.report_path),
                               "replay": info}))
        return
    for note in notes:
        _warn(note)
    from probe.display import Display

    Display(replayed.trace.run.targets, enabled=False).print_summary(
        replayed.outcome, replayed.report_path
    )


# --------------------------------------------------------------------------- #
# The lab-recorded corpus                                                      #
# --------------------------------------------------------------------------- #


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

    Needs root, the lab (issue 3) and ``probe run --record`` in the CLI. Returns the
    number of scenarios whose recording or truth check failed.
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


@click.command("refresh-lab-corpus")
@click.argument("names", nargs=-1)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=str(LAB_CORPUS),
              show_default=True)
@click.option("--timeout", type=click.FloatRange(0.5, 30), default=2.0, show_default=True)
def refresh_lab_corpus_command(names: tuple[str, ...], out_dir: str, timeout: float) -> None:
    """Re-record tests/traces/lab/ from the lab (root; review the diff before committing)."""
    try:
        from probe.lab.processes import LabError
    except ImportError as exc:
        _warn(f"the lab is not available in this checkout: {exc}")
        sys.exit(EXIT_USAGE)
    try:
        failed = refresh_lab_corpus(list(names), Path(out_dir), timeout)
    except (LabError, OSError, subprocess.SubprocessError) as exc:
        _warn(f"{type(exc).__name__}: {exc}")
        sys.exit(EXIT_USAGE)
    sys.exit(EXIT_CHANGED if failed else EXIT_OK)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Trace tools (also available as `probe replay`)."""


main.add_command(replay)
main.add_command(refresh_lab_corpus_command)

if __name__ == "__main__":
    main()
