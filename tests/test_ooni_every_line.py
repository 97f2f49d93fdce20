"""Every line of every report is an OONI measurement that OONI's own models load.

Reports of real runs on loopback servers are checked where they are produced
(tests/test_cli_run.py, tests/test_app.py), the lab's where its runs write them
(tests/lab/test_lab_probe.py); here, the report of a replay of each trace of
the corpus (tests/traces/, hand-made cases and runs recorded in the netns lab),
through ``probe replay`` as an analyst runs it, and the synthetic runs the
aggregation's tests and benchmarks are made of. Each report must also verify
as one sealed run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from ooni_loadable import assert_ooni_loadable

from probe.aggregate import synthetic
from probe.replay import replay_trace
from probe.report.keys import generate_ephemeral
from probe.report.verify import verify_file
from probe.trace_cli import replay as replay_command

TRACES = Path(__file__).resolve().parent / "traces"
CORPUS = sorted(TRACES.rglob("*.expected.json"))


def _trace_of(expected_path: Path) -> Path:
    return expected_path.parent / json.loads(expected_path.read_text())["trace"]


def _sealed_and_whole(report: Path, lines: int) -> None:
    result = verify_file(report, require_end=True)
    assert result.ok and not result.warnings, [str(p) for p in result.problems + result.warnings]
    [run] = result.runs
    assert run.sealed and run.lines == lines


def test_the_corpus_is_there():
    assert len(CORPUS) >= 50, CORPUS  # hand-made cases and the lab's recorded scenarios


@pytest.mark.parametrize("expected_path", CORPUS, ids=lambda p: p.name.split(".")[0])
def test_every_line_of_a_corpus_replay_loads_with_oonis_models(expected_path, tmp_path):
    replayed = replay_trace(_trace_of(expected_path), out_dir=tmp_path)
    services = len(replayed.outcome.services)
    assert services and replayed.report_path is not None  # every trace measured something
    assert assert_ooni_loadable(replayed.report_path) == services
    _sealed_and_whole(replayed.report_path, services)


def test_probe_replay_writes_a_report_oonidata_loads(tmp_path):
    trace = _trace_of(TRACES / "iran-2018-dns-bogon-and-blockpage.expected.json")
    result = CliRunner().invoke(replay_command, [str(trace), "--out", str(tmp_path),
                                             "--json"])
    assert result.exit_code == 0, result.output
    report = Path(json.loads(result.output)["report"])
    assert report.parent == tmp_path
    lines = assert_ooni_loadable(report)
    assert lines == 4  # facebook, instagram, news, baseline
    _sealed_and_whole(report, lines)


@pytest.mark.parametrize("finish", [True, False])
def test_every_line_of_a_synthetic_run_loads_with_oonis_models(finish, tmp_path):
    key = generate_ephemeral()
    records = [
        synthetic.measurement(service, "IR", "AS197207", synthetic.START, {}, "r1", f"{n:016x}")
        for n, service in enumerate(synthetic.SERVICES)
    ]
    report = tmp_path / "synthetic.jsonl"
    report.write_bytes(b"".join(synthetic.sign_run(key, records, finish=finish)))
    assert assert_ooni_loadable(report) == len(records)
    assert verify_file(report, require_end=True).ok is finish
