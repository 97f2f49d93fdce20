"""What a run saw and what we concluded: plain frozen dataclasses, no behaviour.

Observations are the network results of one endpoint, grouped the way analysis
needs them; the control helper returns the same shapes from its own vantage.
Verdicts are analysis output. Both serialise with ``probe.net.network.to_json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from probe.net.network import (
    ConnectResult,
    DnsExchange,
    GetaddrinfoResult,
    HttpResult,
    MtprotoResult,
    TlsResult,
)

# The closed verdict vocabulary (per endpoint x address x port).
OK = "ok"
DNS_BLOCKED = "dns_blocked"
TCP_BLOCKED = "tcp_blocked"
TLS_BLOCKED = "tls_blocked"
HTTP_BLOCKED = "http_blocked"
PROTOCOL_BLOCKED = "protocol_blocked"
THROTTLED = "throttled"
DOWN = "down"
INCONCLUSIVE = "inconclusive"
VERDICTS = (
    OK, DNS_BLOCKED, TCP_BLOCKED, TLS_BLOCKED, HTTP_BLOCKED, PROTOCOL_BLOCKED,
    THROTTLED, DOWN, INCONCLUSIVE,
)
BLOCKED_VERDICTS = frozenset(
    {DNS_BLOCKED, TCP_BLOCKED, TLS_BLOCKED, HTTP_BLOCKED, PROTOCOL_BLOCKED, THROTTLED}
)

# Per-service status.
SERVICE_OK = "ok"
SERVICE_BLOCKED = "blocked"
SERVICE_PARTIALLY_BLOCKED = "partially_blocked"
SERVICE_DOWN = "down"
SERVICE_INCONCLUSIVE = "inconclusive"
SERVICE_STATUSES = (
    SERVICE_OK, SERVICE_BLOCKED, SERVICE_PARTIALLY_BLOCKED, SERVICE_DOWN, SERVICE_INCONCLUSIVE,
)


@dataclass(frozen=True)
class MtprotoCheck:
    """One MTProto attempt and whether its reply was a valid resPQ for our nonce."""

    result: MtprotoResult
    valid: bool
    error: str | None  # codec reason when not valid ("nonce_mismatch", "truncated"...)


@dataclass(frozen=True)
class PortObservation:
    """Every step run against one address and port of an endpoint, in order."""

    address: str
    port: int
    connect: ConnectResult | None
    tls: TlsResult | None
    tls_verification: str | None  # failure of chain verification; None = valid or not run
    mtproto: tuple[MtprotoCheck, ...]
    http: tuple[HttpResult, ...]


@dataclass(frozen=True)
class EndpointObservation:
    endpoint_id: str
    service: str
    host: str
    getaddrinfo: GetaddrinfoResult | None
    dns: tuple[DnsExchange, ...]
    addresses: tuple[str, ...]  # the addresses that were measured
    unroutable_answers: tuple[str, ...]  # answers not connected to (bogons)
    ports: tuple[PortObservation, ...]
    interrupted: bool = False


@dataclass(frozen=True)
class Verdict:
    """The conclusion for one endpoint x address x port (address None: before DNS)."""

    endpoint_id: str
    service: str
    host: str
    address: str | None
    port: int | None
    verdict: str
    method: str | None
    failure: str | None
    failed_operation: str | None
    explanation: str  # one plain sentence for volunteers and NGOs


@dataclass(frozen=True)
class ServiceVerdict:
    service: str
    status: str
    explanation: str


@dataclass(frozen=True)
class ServiceResult:
    """Everything a report line says about one service: what was measured, what we
    concluded, and which control it was compared with."""

    service: str
    observations: tuple[EndpointObservation, ...]
    verdicts: tuple[Verdict, ...]
    status: ServiceVerdict
    control: dict[str, Any] | None  # the report's test_keys.control; None: no control
    control_problems: tuple[str, ...] = ()  # why there was no control
    network_down: bool = False
