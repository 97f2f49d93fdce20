"""Token buckets: how much a client, a key, or a whole server may still cost right now.

``TokenBucket`` is one bucket (the UDP echo's per-source and global budgets, the
control helper's datagram budget); ``TokenBuckets`` is one bucket per name (an
address, a key id) in bounded memory. Spending more than a bucket holds is
refused or answered with a wait, never queued: a server facing the Internet must
not accumulate work on an attacker's behalf. The clock is a parameter, so tests
share one monotonic time. Nothing here touches the network, and a name is only
ever held in memory.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable


class TokenBucket:
    """``burst`` tokens at most, ``per_second`` more every second."""

    __slots__ = ("burst", "per_second", "tokens", "updated", "clock")

    def __init__(
        self, burst: float, per_second: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.burst = float(burst)
        self.per_second = float(per_second)
        self.clock = clock
        self.tokens = float(burst)
        self.updated = clock()

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.per_second)
        self.updated = now

    def available(self) -> float:
        self._refill()
        return self.tokens

    def take(self, cost: float = 1.0) -> bool:
        """Spend ``cost`` tokens if the bucket holds them; False (nothing spent) if not."""
        self._refill()
        if cost > self.tokens:
            return False
        self.tokens -= cost
        return True

    def give_back(self, amount: float) -> None:
        """Return tokens taken for a worst case that did not happen (never above ``burst``)."""
        self._refill()
        self.tokens = min(self.burst, self.tokens + max(0.0, amount))


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
