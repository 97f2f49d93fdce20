"""Serving one NFQUEUE for a bounded time: the loop every lab censor process shares.

The on-path censors (the DNS injector, the QUIC SNI filter, the STUN forger) each
decide what to do with one queued packet; this module binds their handler to a
queue number and serves it until the lab's duration runs out, never longer.
"""

from __future__ import annotations

import select
import sys
import time
from collections.abc import Callable
from typing import Any


def serve_queue(number: int, handle: Callable[[Any], None], duration: float, banner: str) -> None:
    """Bind ``handle`` to NFQUEUE ``number`` and serve it for ``duration`` seconds;
    ``banner`` is printed (stderr) once the queue is bound."""
    from netfilterqueue import NetfilterQueue  # the lab extra; imported where used

    queue = NetfilterQueue()
    queue.bind(number, handle)
    stop_at = time.monotonic() + duration
    print(banner, file=sys.stderr, flush=True)
    try:
        while time.monotonic() < stop_at:
            readable, _, _ = select.select([queue.get_fd()], [], [], 0.5)
            if readable:
                queue.run(block=False)
    finally:
        queue.unbind()
