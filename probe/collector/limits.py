"""The collector's limits, and the token buckets that enforce its rate limits.

A collector is exposed to the Internet and to whoever wants it down: every
resource a request can consume has a bound here (bytes, lines, requests in
flight, open connections, seconds) and rate limits per uploader address and per
probe key. Rate-limit state lives in memory only, in tables of bounded size: an
address is kept only as long as its bucket is not full again, and is never
written to disk or to a log.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

MIB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """Every bound of the collector; the defaults suit a small NGO's server."""

    max_body_bytes: int = 8 * MIB  # after decompression (and before: gzip never grows past it)
    max_line_bytes: int = 1 * MIB
    max_lines: int = 5000  # per request
    max_concurrent_uploads: int = 16  # uploads being processed at once; more get 503
    max_connections: int = 1024  # open TCP connections; more are closed at once
    header_timeout: float = 10.0  # seconds for a new connection to send its first request
    body_timeout: float = 60.0  # seconds to receive a whole request body
    idle_timeout: float = 15.0  # keep-alive: seconds a connection may sit idle
    address_rate: float = 5.0  # upload requests per second per address, sustained
    address_burst: float = 60.0
    key_rate: float = 200.0  # new lines per second per probe key, sustained
    key_burst: float = 20000.0  # a probe coming back online uploads its spool at once
    max_tracked: int = 100_000  # addresses or keys held in memory for rate limiting


class TokenBuckets:
    """One token bucket per name (an address, a key id), in bounded memory.

    ``take(name, n)`` returns 0 if ``n`` tokens were available (and takes them),
    else the seconds to wait until they will be. A bucket that has refilled is
    the same as no bucket, so buckets are dropped once full; when the table is
    full anyway, the least recently used bucket is dropped (its owner gets a
    full bucket back: the bound on memory wins over precision).
    """

    def __init__(
        self,
        rate: float,
        burst: float,
        max_tracked: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a rate limit needs rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self.max_tracked = max_tracked
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # name -> (tokens, t)

    def __len__(self) -> int:
        return len(self._buckets)

    def available(self, name: str) -> float:
        now = self.clock()
        tokens, then = self._buckets.get(name, (self.burst, now))
        return min(self.burst, tokens + (now - then) * self.rate)

    def take(self, name: str, amount: float = 1.0) -> float:
        """Take ``amount`` tokens or say how long to wait; never takes part of them."""
        now = self.clock()
        tokens = self.available(name)
        if amount > self.burst:
            # More than a full bucket can ever hold: wait for a full bucket, then
            # let it through, so a big but legitimate upload is slowed, not refused.
            if tokens < self.burst:
                return (self.burst - tokens) / self.rate
            tokens = amount
        if tokens < amount:
            return (amount - tokens) / self.rate
        self._remember(name, tokens - amount, now)
        return 0.0

    def give_back(self, name: str, amount: float) -> None:
        """Return tokens taken for work that was then not done."""
        now = self.clock()
        self._remember(name, min(self.burst, self.available(name) + amount), now)

    def _remember(self, name: str, tokens: float, now: float) -> None:
        self._buckets[name] = (tokens, now)
        self._buckets.move_to_end(name)
        self._prune(now)

    def _prune(self, now: float) -> None:
        # Oldest first: a bucket untouched for burst/rate seconds is full again.
        refill = self.burst / self.rate
        while self._buckets:
            name, (_tokens, then) = next(iter(self._buckets.items()))
            if len(self._buckets) > self.max_tracked or now - then >= refill:
                del self._buckets[name]
            else:
                break


def retry_after_seconds(wait: float) -> int:
    """A Retry-After header value: whole seconds, at least 1."""
    return max(1, math.ceil(wait))
