"""Token buckets: how much a source, or the whole helper, may still cost right now.

A bucket holds up to ``burst`` tokens and refills at ``per_second``; spending
more than it holds is refused, never queued (a helper facing the Internet must
not accumulate work on an attacker's behalf). The clock is a parameter so that
tests and the UDP echo share one monotonic time. Nothing here touches the network.
"""

from __future__ import annotations

import time
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
