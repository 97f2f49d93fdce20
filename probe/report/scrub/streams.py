"""Scrubbing what the probe logs and prints: log records, stdout and stderr.

For output the probe does not build itself (rich tables, click echoes,
tracebacks). The addresses are learned during a run, so the filter can be
told them late; the stream holds text until its line ends so that an address
split over two writes is still found. No decision about what an address is.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from .forms import _Targets
from .text import scrub_text


class ScrubbingLogFilter(logging.Filter):
    """Rewrites each log record with the volunteer's addresses scrubbed.

    The addresses are learned during a run (the control helper's echo comes
    last): call :meth:`set_addresses` when they change. Attach it to handlers
    (``install_log_scrubbing``), since filters on a logger do not see records
    propagated from its children.
    """

    def __init__(self, addresses: Iterable[str] = (), *, ipv6_prefix: int = 64) -> None:
        super().__init__()
        self.ipv6_prefix = ipv6_prefix
        self._targets = _Targets.of(list(addresses), ipv6_prefix)

    def set_addresses(self, addresses: Iterable[str]) -> None:
        self._targets = _Targets.of(list(addresses), self.ipv6_prefix)

    def filter(self, record: logging.LogRecord) -> bool:
        targets = self._targets
        if not targets:
            return True
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            message = str(record.msg)
        record.msg, record.args = scrub_text(message, targets), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub_text(record.exc_text, targets)
        if record.stack_info:
            record.stack_info = scrub_text(record.stack_info, targets)
        return True


def install_log_scrubbing(
    addresses: Iterable[str] = (), logger: logging.Logger | None = None
) -> ScrubbingLogFilter:
    """Attach one :class:`ScrubbingLogFilter` to every handler of ``logger`` (root)."""
    target = logger or logging.getLogger()
    log_filter = ScrubbingLogFilter(addresses)
    for handler in target.handlers:
        handler.addFilter(log_filter)
    return log_filter


class ScrubbingStream:
    """A text stream (stderr, stdout) that scrubs what is written to it, line by line.

    For terminal output the probe does not build itself (rich tables, click
    echoes): ``sys.stderr = ScrubbingStream(sys.stderr, log_filter)``. Text is held
    until its line ends (an address split over two writes is still found) or
    :meth:`flush`. ``addresses`` is a :class:`ScrubbingLogFilter` so the two
    learn the addresses together.
    """

    def __init__(self, stream: Any, addresses: ScrubbingLogFilter) -> None:
        self._stream = stream
        self._filter = addresses
        self._pending = ""

    def write(self, text: str) -> int:
        self._pending += text
        if "\n" in self._pending:
            complete, _, self._pending = self._pending.rpartition("\n")
            # one line at a time: scrubbing a 3 MB summary in one piece takes 235 MiB
            for line in complete.split("\n"):
                self._stream.write(self._scrub(line + "\n"))
        return len(text)

    def _scrub(self, text: str) -> str:
        targets = self._filter._targets
        return scrub_text(text, targets) if targets else text

    def flush(self) -> None:
        if self._pending:
            self._stream.write(self._scrub(self._pending))
            self._pending = ""
        self._stream.flush()

    def isatty(self) -> bool:
        return bool(getattr(self._stream, "isatty", lambda: False)())

    def __getattr__(self, name: str) -> Any:  # encoding, fileno, ... of the real stream
        return getattr(self._stream, name)
