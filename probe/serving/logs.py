"""Log hygiene for servers facing the Internet: no client address, no traceback, no flood.

Whatever a client sends can end up in a log line: aiohttp writes "Error handling
request from <its address>" with a traceback for a malformed header or a
connection dropped mid-body (an ordinary flaky link), a rejection reason can
quote the request, and an attacker can make a server log as fast as it can
accept. :class:`LogHygiene` is a ``logging.Filter`` that rewrites every record
of the loggers it is installed on: every IPv4 and IPv6 address becomes
``<address>``, a traceback becomes the exception's type name, control characters
are escaped (no forged lines), the message is cut to ``max_chars``, and each
logger may write at most ``per_minute`` records a minute; the next record let
through after a flood says how many were suppressed. :func:`install` puts one
on the aiohttp and asyncio loggers and on a server's own.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import time
from collections.abc import Callable, Iterable

from probe.serving.buckets import TokenBucket

ADDRESS = "<address>"
MAX_CHARS = 300
PER_MINUTE = 30

# aiohttp's loggers (aiohttp/log.py) and asyncio's: the ones that see clients.
SERVER_LOGGERS = (
    "aiohttp.access", "aiohttp.client", "aiohttp.internal", "aiohttp.server",
    "aiohttp.web", "aiohttp.websocket", "asyncio",
)

# Four dotted decimals of 0-255, not inside a longer dotted run (a version 1.2.3.4.5).
_IPV4 = re.compile(
    r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d|0\d{1,2})\.){3}"
    r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d|0\d{1,2})(?!\.?\d)"
)
# Anything made of hex digits, colons and dots with two colons at least, with an
# optional zone; ipaddress then says whether it is an address (a time like
# 12:30:45 is not one; ::1, 2001:db8::5 and ::ffff:127.0.0.1 are).
_IPV6_CANDIDATE = re.compile(
    r"(?<![\w:.])[0-9A-Fa-f.]*:[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*(?:%[\w.-]+)?(?![\w:])"
)
_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)} | {
    ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): " ",
}


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _ipv6_or_not(match: re.Match[str]) -> str:
    text = match.group(0)
    address, zone, _ = text.partition("%")
    address = address.rstrip(".")
    if address == "::":
        return text  # the unspecified address is nobody's, and :: is common in other text
    if _is_ipv6(address):
        return ADDRESS + ("" if zone else text[len(address):])
    host, _, port = address.rpartition(":")  # an address and a port, unbracketed
    if port.isdigit() and _is_ipv6(host):
        return f"{ADDRESS}:{port}"
    return text


def scrub_addresses(text: str) -> str:
    """``text`` with every IPv4 and IPv6 address replaced by ``<address>``."""
    if ":" in text:
        text = _IPV6_CANDIDATE.sub(_ipv6_or_not, text)
    if "." in text:
        text = _IPV4.sub(ADDRESS, text)
    return text


def clean_message(text: str, max_chars: int = MAX_CHARS) -> str:
    """One safe log line: addresses scrubbed, control characters escaped, cut to ``max_chars``.

    Scrubbing comes before cutting, so a cut never leaves half an address behind.
    """
    text = scrub_addresses(text).translate(_CONTROL)
    if len(text) > max_chars:
        cut = len(text) - max_chars
        text = f"{text[:max_chars]}... ({cut} characters cut)"
    return text


class LogHygiene(logging.Filter):
    """Rewrites records as :func:`clean_message` says and rate-limits them per logger."""

    def __init__(
        self,
        max_chars: int = MAX_CHARS,
        per_minute: int = PER_MINUTE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.max_chars = max_chars
        self.per_minute = per_minute
        self.clock = clock
        self._budgets: dict[str, TokenBucket] = {}  # logger name -> its budget
        self._suppressed: dict[str, int] = {}
        self.installed_on: list[logging.Logger] = []

    def filter(self, record: logging.LogRecord) -> bool:
        budget = self._budgets.get(record.name)
        if budget is None:
            budget = TokenBucket(self.per_minute, self.per_minute / 60.0, self.clock)
            self._budgets[record.name] = budget
        if not budget.take():
            self._suppressed[record.name] = self._suppressed.get(record.name, 0) + 1
            return False
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string must not lose the record
            message = f"{record.msg!r} (unformattable arguments)"
        if record.exc_info and record.exc_info[0] is not None:
            message = f"{message} ({record.exc_info[0].__name__})"
        message = clean_message(message, self.max_chars)
        suppressed = self._suppressed.pop(record.name, 0)
        if suppressed:
            message = f"{message} [{suppressed} log lines suppressed before this one]"
        record.msg, record.args = message, None
        record.exc_info = record.exc_text = record.stack_info = None
        return True

    def uninstall(self) -> None:
        """Take this filter off every logger :func:`install` put it on."""
        for logger in self.installed_on:
            logger.removeFilter(self)
        self.installed_on.clear()


def install(
    *own: str, max_chars: int = MAX_CHARS, per_minute: int = PER_MINUTE
) -> LogHygiene:
    """Put one :class:`LogHygiene` on aiohttp's and asyncio's loggers and on ``own``
    (a server's loggers, e.g. ``probe.collector``) and their children known now.

    A filter on a logger sees only the records logged on that very logger, not
    those its children pass up, hence the children. Returns the filter, whose
    ``uninstall()`` a server calls when it stops.
    """
    hygiene = LogHygiene(max_chars, per_minute)
    for name in _with_children((*SERVER_LOGGERS, *own)):
        logger = logging.getLogger(name)
        logger.addFilter(hygiene)
        hygiene.installed_on.append(logger)
    return hygiene


def _with_children(names: Iterable[str]) -> list[str]:
    wanted = list(dict.fromkeys(names))
    known = list(logging.Logger.manager.loggerDict)
    children = [n for n in known if any(n.startswith(f"{w}.") for w in wanted)]
    return list(dict.fromkeys([*wanted, *children]))
