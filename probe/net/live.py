"""The live network: the real implementation of the seam, over the host's sockets.

It holds the probe's control credentials (``control_auth``): they are added to
control calls on the wire, and never appear in what the seam records.

HTTP (aiohttp) and QUIC (aioquic) are imported on first use, or by a background
thread started with the network: together they are about a quarter of a second
of start-up, which a run then spends while its first connects are in flight
instead of before them, and which a run whose TCP steps all fail never waits for.
"""

from __future__ import annotations

import importlib
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from probe.net import dns, tcp, tls, udp
from probe.net.network import (
    ConnectResult,
    ControlRequest,
    ControlResult,
    DnsExchange,
    DnsQuery,
    FetchRequest,
    FetchResult,
    GetaddrinfoResult,
    HttpRequest,
    HttpResult,
    MtprotoRequest,
    MtprotoResult,
    QuicRequest,
    QuicResult,
    TlsRequest,
    TlsResult,
    UdpRequest,
    UdpResult,
)

if TYPE_CHECKING:  # the seam does not import the control package at run time
    from probe.control.auth import ControlCredentials

# the modules behind the seam that are slow to import and not needed by every step
_SLOW_MODULES = ("probe.net.http", "probe.net.quic")


def _import_slow_modules() -> None:
    for name in _SLOW_MODULES:
        importlib.import_module(name)


def preload_in_background() -> threading.Thread:
    """Import HTTP and QUIC support in a daemon thread while the run starts.

    Python's per-module import locks make a step that needs the module before the
    thread is done wait for it, never see it half initialised.
    """
    thread = threading.Thread(target=_import_slow_modules, name="probe-preload", daemon=True)
    thread.start()
    return thread


class LiveNetwork:
    """Talks to the real network; every method returns a result, never raises."""

    def __init__(self, control_auth: ControlCredentials | None = None) -> None:
        self._start = time.monotonic()
        self.control_auth = control_auth

    def clock(self) -> float:
        return round(time.monotonic() - self._start, 6)

    async def getaddrinfo(self, host: str, timeout: float) -> GetaddrinfoResult:
        return await dns.getaddrinfo(host, timeout, self.clock)

    async def dns_exchange(
        self, query: DnsQuery, timeout: float, linger: float,
        on_first: Callable[[DnsExchange], None] | None = None,
    ) -> DnsExchange:
        if query.transport == "tcp":
            return await dns.tcp_exchange(query, timeout, self.clock)
        return await dns.udp_exchange(query, timeout, linger, self.clock, on_first)

    async def tcp_connect(self, address: str, port: int, timeout: float) -> ConnectResult:
        return await tcp.connect(address, port, timeout, self.clock)

    async def tls_handshake(self, request: TlsRequest, timeout: float) -> TlsResult:
        return await tls.handshake(request, timeout, self.clock)

    async def http_request(self, request: HttpRequest, timeout: float) -> HttpResult:
        from probe.net import http

        return await http.request(request, timeout, self.clock)

    async def mtproto_exchange(self, request: MtprotoRequest, timeout: float) -> MtprotoResult:
        return await tcp.mtproto_exchange(request, timeout, self.clock)

    async def udp_exchange(self, request: UdpRequest, timeout: float) -> UdpResult:
        return await udp.udp_exchange(request, timeout, self.clock)

    async def quic_exchange(self, request: QuicRequest, timeout: float) -> QuicResult:
        from probe.net import quic

        return await quic.quic_exchange(request, timeout, self.clock)

    async def control_call(self, request: ControlRequest, timeout: float) -> ControlResult:
        from probe.net import http

        return await http.control_call(request, timeout, self.clock, self.control_auth)

    async def fetch(self, request: FetchRequest, timeout: float) -> FetchResult:
        from probe.net import http

        return await http.fetch(request, timeout, self.clock)

    async def aclose(self) -> None:
        return None
