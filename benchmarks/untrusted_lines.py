"""What a line from an untrusted key costs the collector's checker, with and without a trust list.

    .venv/bin/python benchmarks/untrusted_lines.py [--lines 5000]

Signs ``--lines`` realistic measurements (about 1.5 KB each, 7.7 MiB in all for
5,000: one full upload request) with a stranger's key, and one 0.77 MiB line of
60,000 small floats (the slow path of RFC 8785 canonicalisation), then times
:func:`probe.collector.lines.check_line` on them with no trust list (every rule
runs: parse, canonical form, Ed25519) and with a trust list that does not name
the stranger (refused by a scan of the raw bytes, before any parsing). Pure
CPU, no network.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from probe.aggregate import synthetic  # noqa: E402 - after sys.path
from probe.collector.lines import LinePolicy, check_line  # noqa: E402
from probe.report.keys import generate_ephemeral  # noqa: E402
from probe.report.signing import ReportSigner  # noqa: E402


def timed(lines: list[bytes], policy: LinePolicy) -> tuple[float, set[bool]]:
    started = time.perf_counter()
    outcomes = {check_line(line, policy).ok for line in lines}
    return time.perf_counter() - started, outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=5000)
    args = parser.parse_args()
    stranger, enrolled = generate_ephemeral(), generate_ephemeral()
    record = synthetic.measurement("telegram", "IR", "AS1", synthetic.START, {}, "r", "0" * 16)
    signer = ReportSigner(stranger)
    lines = [
        signer.sign({**record, "measurement_uid": f"u{n}"}).line.rstrip(b"\n")
        for n in range(args.lines)
    ]
    junk = ReportSigner(stranger).sign({**record, "junk": [1e-7 * n for n in range(60_000)]})
    big = [junk.line.rstrip(b"\n")]
    anyone = LinePolicy(max_line_bytes=None)
    trusted = LinePolicy(trusted_keys=frozenset({enrolled.key_id}), max_line_bytes=None)
    size = sum(map(len, lines)) / 2**20
    for label, batch in ((f"{len(lines)} lines, {size:.1f} MiB", lines),
                         (f"1 line of {len(big[0]) / 2**20:.2f} MiB", big)):
        full, accepted = timed(batch, anyone)
        refused, outcomes = timed(batch, trusted)
        assert accepted == {True} and outcomes == {False}
        print(f"{label}: no trust list {full * 1000:.0f} ms (accepted), "
              f"trust list without the key {refused * 1000:.1f} ms (refused), "
              f"{full / refused:.0f}x less CPU")


if __name__ == "__main__":
    main()
