"""Atomic report writing: the whole file under its name, or nothing, and no temp left."""

from __future__ import annotations

import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from probe.report import writer
from probe.report.writer import ReportWriteError, report_path, write_report_atomic

STARTED = datetime.datetime(2026, 11, 28, 2, 15, 0, tzinfo=datetime.UTC)
LINES = [{"test_name": "telegram", "n": 1, "text": "Ünïcode ✓"}, {"test_name": "signal", "n": 2}]


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_writes_json_lines(tmp_path):
    path = tmp_path / "run.jsonl"
    assert write_report_atomic(path, iter(LINES)) == path
    raw = path.read_bytes()
    assert raw.endswith(b"\n") and raw.count(b"\n") == 2
    assert [json.loads(line) for line in raw.decode("utf-8").splitlines()] == LINES
    assert leftovers(tmp_path) == ["run.jsonl"]
    assert path.stat().st_mode & 0o777 == 0o600  # the volunteer's network: owner only


def test_creates_the_folder(tmp_path):
    path = tmp_path / "reports" / "nested" / "run.jsonl"
    write_report_atomic(path, LINES)
    assert path.is_file()


def test_empty_report_is_an_empty_file(tmp_path):
    path = write_report_atomic(tmp_path / "run.jsonl", [])
    assert path.read_bytes() == b""


def test_failure_mid_write_leaves_no_file_and_no_temp(tmp_path):
    def lines():
        yield LINES[0]
        raise KeyboardInterrupt  # Ctrl-C while the report is being produced

    path = tmp_path / "run.jsonl"
    with pytest.raises(KeyboardInterrupt):
        write_report_atomic(path, lines())
    assert leftovers(tmp_path) == []


def test_failure_keeps_the_previous_report(tmp_path):
    path = tmp_path / "run.jsonl"
    write_report_atomic(path, LINES)
    before = path.read_bytes()

    def lines():
        yield {"new": True}
        raise RuntimeError("analysis crashed")

    with pytest.raises(RuntimeError, match="analysis crashed"):
        write_report_atomic(path, lines())
    assert path.read_bytes() == before
    assert leftovers(tmp_path) == ["run.jsonl"]


@pytest.mark.parametrize("bad", [{"t": float("nan")}, {"when": datetime.date(2026, 1, 1)},
                                 {"text": "\ud800"}])
def test_a_line_that_is_not_json_is_a_typed_error(tmp_path, bad):
    path = tmp_path / "run.jsonl"
    with pytest.raises(ReportWriteError, match="line 2 is not valid JSON"):
        write_report_atomic(path, [LINES[0], bad])
    assert leftovers(tmp_path) == []


def test_parent_that_is_a_file_is_a_typed_error(tmp_path):
    (tmp_path / "reports").write_text("not a folder")
    with pytest.raises(ReportWriteError) as caught:
        write_report_atomic(tmp_path / "reports" / "run.jsonl", LINES)
    assert caught.value.path == tmp_path / "reports" / "run.jsonl"
    assert "--out" in str(caught.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_unwritable_folder_is_a_typed_error(tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir(mode=0o500)
    try:
        with pytest.raises(ReportWriteError, match="you may not write there"):
            write_report_atomic(folder / "run.jsonl", LINES)
        assert leftovers(folder) == []
    finally:
        folder.chmod(0o700)


def test_disk_full_at_fsync_is_a_typed_error_without_temp(tmp_path, monkeypatch):
    # Delayed allocation often reports ENOSPC only when the data is synced.
    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writer.os, "fsync", full)
    with pytest.raises(ReportWriteError, match="the disk is full"):
        write_report_atomic(tmp_path / "run.jsonl", LINES)
    assert leftovers(tmp_path) == []


_TINY_DISK = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from probe.report.writer import ReportWriteError, write_report_atomic
    folder = Path(sys.argv[1])
    try:
        write_report_atomic(folder / "run.jsonl", ({"pad": "x" * 4096, "n": n} for n in range(64)))
    except ReportWriteError as error:
        print("ERROR", error)
    print("LEFT", sorted(os.listdir(folder)))
""")


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare"
)
@pytest.mark.parametrize("options, advice", [
    ("size=16k", "the disk is full"),
    ("ro", "that disk is read-only"),
])
def test_real_disk_errors_on_a_tmpfs(tmp_path, options, advice):
    folder = tmp_path / "disk"
    folder.mkdir()
    script = tmp_path / "fill.py"
    script.write_text(_TINY_DISK)
    # A private mount namespace: the tmpfs is gone when the child exits.
    command = (
        f"mount -t tmpfs -o {options} tmpfs {folder} || exit 77; "
        f"exec {sys.executable} {script} {folder}"
    )
    result = subprocess.run(
        ["unshare", "-m", "sh", "-c", command],
        check=False, capture_output=True, text=True, timeout=60,
    )
    if result.returncode == 77:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    assert "ERROR cannot write the report" in result.stdout
    assert advice in result.stdout
    assert "LEFT []" in result.stdout


_KILLED = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from probe.report.writer import write_report_atomic
    def lines():
        yield {"n": 1, "pad": "x" * 100000}
        os.kill(os.getpid(), signal.SIGKILL)  # a hard crash half-way through
        yield {"n": 2}
    write_report_atomic(Path(sys.argv[1]) / "run.jsonl", lines())
""")


def test_a_hard_crash_never_leaves_a_partial_report(tmp_path):
    script = tmp_path / "crash.py"
    script.write_text(_KILLED)
    folder = tmp_path / "out"
    result = subprocess.run([sys.executable, str(script), str(folder)], check=False, timeout=60)
    assert result.returncode == -signal.SIGKILL
    assert not (folder / "run.jsonl").exists()
    assert list(folder.glob("*.jsonl")) == []  # a stray temp file never looks like a report
    assert all(p.name.startswith(".run.jsonl.") and p.name.endswith(".tmp")
               for p in folder.iterdir())


def test_report_path_names_the_run():
    path = report_path(Path("reports"), STARTED, "20261128T021500Z_probe_3f9c2a1b7d4e")
    assert path == Path("reports/2026-11-28T021500Z-3f9c2a1b.jsonl")


def test_report_path_is_in_utc():
    tokyo = datetime.timezone(datetime.timedelta(hours=9))
    path = report_path(Path("r"), datetime.datetime(2026, 11, 28, 11, 15, tzinfo=tokyo), "x_ab")
    assert path.name == "2026-11-28T021500Z-ab.jsonl"


@pytest.mark.parametrize("report_id", ["../../etc/passwd", "__", "", "a/b_c\\d/../e"])
def test_report_path_never_leaves_the_folder(report_id):
    path = report_path(Path("reports"), STARTED, report_id)
    assert path.parent == Path("reports")
    assert path.name.startswith("2026-11-28T021500Z-") and path.suffix == ".jsonl"
    short = path.name.removeprefix("2026-11-28T021500Z-").removesuffix(".jsonl")
    assert short.isalnum() and 1 <= len(short) <= 8


def test_report_path_needs_a_time_zone():
    with pytest.raises(ValueError, match="time zone"):
        report_path(Path("r"), datetime.datetime(2026, 11, 28, 2, 15), "x")
