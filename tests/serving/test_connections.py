"""The connection guard's pure parts: its limits, and which idle connection gives way.

The guard at work, on real sockets against both servers, is tested in
tests/hostile/test_slow_clients.py.
"""

from __future__ import annotations

import pytest

from probe.serving.connections import ConnectionLimits, IdleConnections, _Connection


def connection(client: str) -> _Connection:
    made = _Connection(None, object())  # type: ignore[arg-type]  # no guard, a stand-in handler
    made.client = client
    return made


def test_the_heaviest_client_gives_way_first_its_longest_idle_connection():
    idle = IdleConnections()
    legit = connection("203.0.113.5")
    heavy = [connection("198.51.100.7") for _ in range(3)]
    other = [connection("2001:db8::/64") for _ in range(2)]
    for item in (heavy[0], legit, other[0], heavy[1], other[1], heavy[2]):
        idle.add(item)
    assert len(idle) == 6
    assert idle.victim() is heavy[0]
    idle.add(heavy[0])  # idle again (a response went out): last in its line
    assert idle.victim() is heavy[1]
    idle.discard(heavy[1])
    idle.discard(heavy[2])  # now two clients hold two each: the first to get there
    assert idle.victim() in (heavy[0], other[0])
    for item in (heavy[0], other[0], other[1]):
        idle.discard(item)
    assert idle.victim() is legit  # the last one standing
    idle.discard(legit)
    assert idle.victim() is None and len(idle) == 0
    assert legit not in idle


def test_a_busy_connection_is_never_the_victim():
    idle = IdleConnections()
    busy, waiting = connection("198.51.100.7"), connection("203.0.113.5")
    idle.add(busy)
    idle.add(waiting)
    idle.discard(busy)  # its request is being handled
    assert idle.victim() is waiting
    idle.discard(busy)  # twice: no harm
    assert len(idle) == 1


@pytest.mark.parametrize(
    "bad",
    [
        {"max_connections": 0},
        {"max_per_client": 0},
        {"header_timeout": 0},
        {"idle_timeout": -1},
        {"client_rate": 0},
        {"client_burst": 0.5},
    ],
)
def test_limits_that_cannot_work_are_refused(bad):
    with pytest.raises(ValueError):
        ConnectionLimits(**bad)
