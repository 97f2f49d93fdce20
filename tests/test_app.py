"""``probe run`` without its command line: ``app.run_probe`` over a loopback world
writes the signed report and the trace, tells the volunteer what happened through
``say``, and hands back a typed result; a folder that cannot hold reports is a
usage problem raised before anything is measured."""

from __future__ import annotations

import json

import pytest
from ooni_loadable import assert_ooni_loadable
from servers import start_tcp

from probe.app import RunConfig, RunUsageError, run_probe, scrub_streams
from probe.bogons import parse_networks
from probe.report.keys import generate_ephemeral
from probe.runner import RunOptions
from probe.session import ControlConfig
from probe.targets import parse_targets
from probe.trace import load_trace

ROUTABLE = parse_networks(["127.0.0.0/8"])


def config_for(port: int, out_dir: str, record_path: str | None = None) -> RunConfig:
    targets = parse_targets(
        "version: 1\nservices:\n"
        "  - id: baseline\n    baseline: true\n    endpoints:\n"
        f"      - {{id: base, host: 127.0.0.1, port: {port}, checks: [tcp]}}\n"
        "  - id: chat\n    endpoints:\n"
        f"      - {{id: chat-tcp, host: 127.0.0.1, port: {port}, checks: [tcp]}}\n"
    )
    return RunConfig(
        targets=targets,
        options=RunOptions(timeout=2, routable=ROUTABLE, rate=None, use_system_resolver=False),
        control=ControlConfig(),
        out_dir=out_dir,
        key=generate_ephemeral(),
        scrubbing=scrub_streams(show_ip=True),  # the test's own streams stay as they are
        record_path=record_path,
    )


def test_run_probe_writes_the_report_and_the_trace(tmp_path):
    said: list[str] = []
    trace = tmp_path / "run.jsonl"
    with start_tcp("echo") as echo:
        config = config_for(echo.port, str(tmp_path / "reports"), str(trace))
        result = run_probe(config, say=said.append)
    assert result.complete and not result.interrupted
    assert {s: v.status for s, v in result.outcome.services.items()} == {
        "baseline": "ok", "chat": "ok"}
    lines = [json.loads(line) for line in result.report_path.read_text().splitlines()]
    assert len(lines) == 2  # one measurement a service, the last one sealed
    assert "seal" not in lines[0]["signature"]
    assert lines[-1]["signature"]["seal"] == {"measurements": 2, "interrupted": False}
    assert assert_ooni_loadable(result.report_path) == 2
    assert load_trace(trace).run.report_id == lines[0]["report_id"]
    # the host's loopback address counts as public here (routable 127.0.0.0/8), so
    # the report could be checked for it: the only line said is where the trace is
    assert said == [f"trace: {trace}"]


def test_a_run_without_measurements_writes_no_report(tmp_path, capsys):
    # Every report line is a measurement: with none, there is no line to seal, so
    # no file (an empty one would not verify), and the summary says so.
    from probe.display import NO_REPORT, Display, summary_json
    from probe.report.measurements import write_run_report

    with start_tcp("echo") as echo:
        config = config_for(echo.port, str(tmp_path / "reports"))
        result = run_probe(config, say=lambda _: None)
    empty = tmp_path / "empty"
    path, dropped = write_run_report(
        result.outcome, config.targets, empty, config.key, results=[])
    assert (path, dropped) == (None, [])
    assert not empty.exists() or not list(empty.iterdir())
    assert summary_json(result.outcome, None)["report"] is None
    Display(config.targets, enabled=False).print_summary(result.outcome, None)
    assert NO_REPORT in capsys.readouterr().out


def test_an_unusable_report_folder_is_a_usage_error(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the reports folder should be")
    with start_tcp("echo") as echo:
        with pytest.raises(RunUsageError, match="--out"):
            run_probe(config_for(echo.port, str(blocker)), say=lambda line: None)
