"""What one client may make the control helper do: in flight, and per minute.

A client is counted twice, by its credential (a key or a token name) and by its
network (an IPv4 address or an IPv6 /64, ``probe.control.auth.client_key``):
a request must fit the budgets of both, so a stolen key used from many
networks, or many keys used from one network, get no more than one client.
Anonymous requests (``--open``) are counted by their network only.

Each client has at most ``in_flight`` measurement running (a second request
gets 429 at once: one client cannot hold every measurement slot), and three
token buckets refilled per minute: endpoints measured, TCP connections (a
request's worst case, ``protocol.tcp_connections``, is reserved before it
runs, what it did not open is given back after) and measurement seconds (the
request's deadline is reserved, the unused part given back). Over budget is a
429 with Retry-After before anything is measured, never a queue.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from probe.serving.buckets import TokenBuckets

# Defaults, per client (per credential and per network, each). A probe asks one
# request per batch of 500 endpoints, one batch at a time: the bundled targets
# (100 endpoints) cost one request, an NGO feed of 2,000 endpoints four.
IN_FLIGHT = 1
ENDPOINTS_PER_MINUTE = 1_000
ENDPOINTS_BURST = 2_000  # one request of protocol.MAX_ENDPOINTS
# Worst case counts every name at 6 addresses and every port's second connection;
# a real run opens a fraction of it, and is charged only what it opened.
CONNECTIONS_PER_MINUTE = 6_000
CONNECTIONS_BURST = 12_000
# Seconds of measuring: a client may hold a measurement slot half of the time
# sustained, and two full-deadline requests back to back.
SECONDS_PER_MINUTE = 30.0
SECONDS_BURST = 90.0
MAX_TRACKED = 50_000  # clients remembered per bucket table (least recently used dropped)


@dataclass(frozen=True)
class ClientBudgets:
    in_flight: int = IN_FLIGHT
    endpoints_per_minute: float = ENDPOINTS_PER_MINUTE
    endpoints_burst: float = ENDPOINTS_BURST
    connections_per_minute: float = CONNECTIONS_PER_MINUTE
    connections_burst: float = CONNECTIONS_BURST
    seconds_per_minute: float = SECONDS_PER_MINUTE
    seconds_burst: float = SECONDS_BURST


@dataclass(frozen=True)
class Cost:
    endpoints: float
    connections: float
    seconds: float


class ClientLimits:
    """The helper's per-client state: who is measuring, and what each has left."""

    def __init__(
        self, budgets: ClientBudgets | None = None,
        clock: Callable[[], float] = time.monotonic, max_tracked: int = MAX_TRACKED,
    ) -> None:
        self.budgets = b = budgets or ClientBudgets()
        self._running: dict[str, int] = {}
        self._buckets = {
            "endpoints": TokenBuckets(b.endpoints_per_minute / 60, b.endpoints_burst,
                                      max_tracked, clock),
            "connections": TokenBuckets(b.connections_per_minute / 60, b.connections_burst,
                                        max_tracked, clock),
            "seconds": TokenBuckets(b.seconds_per_minute / 60, b.seconds_burst,
                                    max_tracked, clock),
        }

    def enter(self, name: str) -> bool:
        """Count one more measurement of ``name`` in flight; False (nothing counted)
        if it already has ``in_flight``."""
        if self._running.get(name, 0) >= self.budgets.in_flight:
            return False
        self._running[name] = self._running.get(name, 0) + 1
        return True

    def leave(self, name: str) -> None:
        left = self._running.get(name, 0) - 1
        if left > 0:
            self._running[name] = left
        else:
            self._running.pop(name, None)

    def take(self, names: Iterable[str], cost: Cost) -> float:
        """Charge ``cost`` to every name, all or nothing: 0 if charged, else the
        seconds to wait before it could be."""
        taken: list[tuple[str, str, float]] = []
        for kind, amount in (("endpoints", cost.endpoints), ("connections", cost.connections),
                             ("seconds", cost.seconds)):
            for name in names:
                if amount <= 0:
                    continue
                wait = self._buckets[kind].take(name, amount)
                if wait:
                    for kind_taken, name_taken, amount_taken in taken:
                        self._buckets[kind_taken].give_back(name_taken, amount_taken)
                    return wait
                taken.append((kind, name, amount))
        return 0.0

    def give_back(self, names: Iterable[str], connections: float, seconds: float) -> None:
        """Return the part of a reservation the measurement did not use."""
        for name in names:
            if connections > 0:
                self._buckets["connections"].give_back(name, connections)
            if seconds > 0:
                self._buckets["seconds"].give_back(name, seconds)
