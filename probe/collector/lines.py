"""One uploaded report line, checked on its own, as the collector and aggregation see it.

The rules themselves live in :mod:`probe.report.rules`, the one rule set that
``probe verify`` applies too: this module re-exports its :class:`LinePolicy`,
:class:`CheckedLine`, :func:`check_line` and :func:`check_and_parse` under the
names the collector's server, its store and the aggregation's ingest import,
and adds :func:`split_lines` for request bodies. Rules that need a line's
neighbours (the chain, nothing after a run's sealed last line) cannot be checked
on one line: :mod:`probe.aggregate.database` checks them across files.
"""

from __future__ import annotations

from probe.report.rules import (
    DEFAULT_MAX_LINE_BYTES,
    MAX_UID_CHARS,
    CheckedLine,
    LinePolicy,
    check_and_parse,
    check_line,
)

__all__ = [
    "DEFAULT_MAX_LINE_BYTES",
    "MAX_UID_CHARS",
    "CheckedLine",
    "LinePolicy",
    "check_and_parse",
    "check_line",
    "split_lines",
]


def split_lines(body: bytes) -> list[bytes]:
    """A JSON Lines body -> its lines without newlines; a final newline is optional."""
    lines = body.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return lines
