"""The live network: the real implementation of the seam, over the host's sockets.

It holds the probe's control credentials (``control_auth``): they are added to
control calls on the wire, and never appear in what the seam records.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from probe.net import dns, http, quic, tcp, tls, udp
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


class LiveNetwork:
    """Talks to the real network; every method returns a result, never raises."""

    def __init__(self, control_auth: ControlCredentials | None = None) -> None:
        self._start = time.monotonic()
        self.control_auth = control_auth

    def clock(self) -> float:
        return round(time.monotonic() - self._start, 6)

    async def getaddrinfo(self, host: str, timeout: float) -> GetaddrinfoResult:
        return await dns.getaddrinfo(host, timeout, self.clock)

    async def dns_exchange(self, query: DnsQuery, timeout: float, linger: float) -> DnsExchange:
        if query.transport == "tcp":
            return await dns.tcp_exchange(query, timeout, self.clock)
        return await dns.udp_exchange(query, timeout, linger, self.clock)

    async def tcp_connect(self, address: str, port: int, timeout: float) -> ConnectResult:
        return await tcp.connect(address, port, timeout, self.clock)

    async def tls_handshake(self, request: TlsRequest, timeout: float) -> TlsResult:
        return await tls.handshake(request, timeout, self.clock)

    async def http_request(self, request: HttpRequest, timeout: float) -> HttpResult:
        return await http.request(request, timeout, self.clock)

    async def mtproto_exchange(self, request: MtprotoRequest, timeout: float) -> MtprotoResult:
        return await tcp.mtproto_exchange(request, timeout, self.clock)

    async def udp_exchange(self, request: UdpRequest, timeout: float) -> UdpResult:
        return await udp.udp_exchange(request, timeout, self.clock)

    async def quic_exchange(self, request: QuicRequest, timeout: float) -> QuicResult:
        return await quic.quic_exchange(request, timeout, self.clock)

    async def control_call(self, request: ControlRequest, timeout: float) -> ControlResult:
        return await http.control_call(request, timeout, self.clock, self.control_auth)

    async def fetch(self, request: FetchRequest, timeout: float) -> FetchResult:
        return await http.fetch(request, timeout, self.clock)

    async def aclose(self) -> None:
        return None
