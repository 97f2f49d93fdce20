"""The ``probe replay`` command: run the analysis again over a recorded trace.

``replay`` is registered by ``probe.cli`` as ``probe replay``; the module also runs
on its own (``python -m probe.trace_cli replay TRACE``). Parse, call
``probe.replay``, print: no replay logic here. (Re-recording the lab corpus is a
test tool, ``tests/traces/refresh_lab_corpus.py``, not a command of the product.)

Exit codes as for ``probe run``: 0 done (for ``--diff``: no verdict changed),
1 ``--diff`` found changes, 2 the trace (or the usage) is unusable.
"""

from __future__ import annotations

import json
import sys

import click

from probe.display import Display, summary_json

EXIT_OK, EXIT_CHANGED, EXIT_USAGE = 0, 1, 2


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
    # the analysis and report stack is imported when a replay runs, not for `probe --help`
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

    report_path = replayed.report_path  # None when the replay measured nothing
    if as_json:
        click.echo(json.dumps({**summary_json(replayed.outcome, report_path),
                               "replay": info}))
        return
    for note in notes:
        _warn(note)
    Display(replayed.trace.run.targets, enabled=False).print_summary(
        replayed.outcome, report_path
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Trace tools (also available as `probe replay`)."""


main.add_command(replay)

if __name__ == "__main__":
    main()
