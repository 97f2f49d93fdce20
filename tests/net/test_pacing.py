"""``--rate`` paces what moves bytes, not SYNs: a TLS handshake waits for its turn
after its connect succeeded, a connect that never completes waits for nobody."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time

from probe.bogons import parse_networks
from probe.net.live import LiveNetwork
from probe.runner import RunOptions, run_endpoints
from probe.targets import parse_targets

TARGETS = """\
version: 1
services:
  - id: svc
    endpoints:
{endpoints}
"""


@contextlib.contextmanager
def _dropping_port():
    """A port whose connects time out: a listener whose accept queue is full, so
    the kernel drops further SYNs, as a blackhole does."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port), timeout=2)
    try:
        yield port
    finally:
        filler.close()
        listener.close()


def _run(port: int, count: int, rate: float, timeout: float, sni: str = "example.org"):
    lines = "\n".join(
        f"      - {{id: e{i}, host: 127.0.0.1, port: {port}, checks: [tcp, tls], sni: {sni}}}"
        for i in range(count)
    )
    targets = parse_targets(TARGETS.format(endpoints=lines))
    options = RunOptions(timeout=timeout, rate=rate, use_system_resolver=False,
                         routable=parse_networks(["127.0.0.0/8"]))
    started = time.monotonic()
    observations = asyncio.run(run_endpoints(LiveNetwork(), targets.endpoints(), options))
    return observations, time.monotonic() - started


def test_blackholed_handshakes_are_not_paced():
    # 8 handshakes at 2 a second would take 3.5 s to start: their SYNs all go at once
    with _dropping_port() as port:
        observations, wall = _run(port, 8, rate=2, timeout=0.5)
    failures = {o.ports[0].connect.failure for o in observations.values()}
    assert failures == {"generic_timeout_error"}
    assert wall < 1.5


def test_handshakes_that_connect_are_still_paced(https_server):
    # 4 handshakes at 4 a second: the last one starts its ClientHello 0.75 s in, and
    # the wait is not taken from its step timeout (0.5 s): every handshake succeeds
    observations, wall = _run(https_server.port, 4, rate=4, timeout=0.5)
    assert all(o.ports[0].tls.failure is None for o in observations.values())
    assert wall >= 0.7
