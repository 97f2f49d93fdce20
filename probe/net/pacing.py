"""Pacing of what costs bandwidth, applied inside an operation where its bytes start.

``--rate`` keeps a slow home link from being saturated by the probe itself. A
SYN to a blackhole costs nothing, a TLS handshake moves 5-10 KB (the server's
certificates): so a TCP connect is never paced, and an operation that connects
and then talks (TLS, MTProto) waits for its turn after the connect succeeded,
right before its first payload byte. The run's pacer travels in a context
variable set by the runner around each step, so it needs no new argument on the
seam and passes through a recording network untouched; a replaying network,
which sends nothing, never waits. The wait does not count against the step's
timeout: it is the probe's own queue, not the network's silence.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar

Pacer = Callable[[], Awaitable[None]]

_PACER: ContextVar[Pacer | None] = ContextVar("probe_pacer", default=None)


@contextlib.contextmanager
def paced(pacer: Pacer | None) -> Iterator[None]:
    """Operations started inside this block wait for ``pacer`` before their bytes."""
    token = _PACER.set(pacer)
    try:
        yield
    finally:
        _PACER.reset(token)


async def before_payload() -> float:
    """Wait for the run's pacer, if any; the seconds waited (to extend a deadline)."""
    pacer = _PACER.get()
    if pacer is None:
        return 0.0
    loop = asyncio.get_running_loop()
    started = loop.time()
    await pacer()
    return loop.time() - started
