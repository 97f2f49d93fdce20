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
    QuicResult,
    TlsResult,
    UdpResult,
)
from probe.vocabulary import BLOCKED, ServiceStatus, UdpNetwork, VerdictName

# The closed verdict vocabulary (per endpoint x address x port), defined once in
# probe.vocabulary; these names stay for the modules that spell them this way.
OK = VerdictName.OK
DNS_BLOCKED = VerdictName.DNS_BLOCKED
TCP_BLOCKED = VerdictName.TCP_BLOCKED
TLS_BLOCKED = VerdictName.TLS_BLOCKED
HTTP_BLOCKED = VerdictName.HTTP_BLOCKED
PROTOCOL_BLOCKED = VerdictName.PROTOCOL_BLOCKED
UDP_BLOCKED = VerdictName.UDP_BLOCKED
QUIC_BLOCKED = VerdictName.QUIC_BLOCKED
THROTTLED = VerdictName.THROTTLED
DOWN = VerdictName.DOWN
INCONCLUSIVE = VerdictName.INCONCLUSIVE
VERDICTS = tuple(VerdictName)
BLOCKED_VERDICTS = BLOCKED

# Per-service (and per-function) status.
SERVICE_OK = ServiceStatus.OK
SERVICE_BLOCKED = ServiceStatus.BLOCKED
SERVICE_PARTIALLY_BLOCKED = ServiceStatus.PARTIALLY_BLOCKED
SERVICE_DOWN = ServiceStatus.DOWN
SERVICE_INCONCLUSIVE = ServiceStatus.INCONCLUSIVE
SERVICE_STATUSES = tuple(ServiceStatus)


@dataclass(frozen=True)
class MtprotoCheck:
    """One MTProto attempt and whether its reply was a valid resPQ for our nonce."""

    result: MtprotoResult
    valid: bool
    error: str | None  # codec reason when not valid ("nonce_mismatch", "truncated"...)


@dataclass(frozen=True)
class UdpCheck:
    """One ``stun``, ``turn`` or ``udp`` flow and what its answers prove (``probe.stun``).

    ``failure`` is the check's judgement: None when every datagram that should
    be answered was answered correctly; else a failure of ``probe.net.failures``
    (``generic_timeout_error``, ``connection_refused`` for an ICMP port
    unreachable, ``udp_flow_cutoff``, ``stun_injected_response``...).
    """

    check: str  # probe.vocabulary.Check: stun, turn or udp
    result: UdpResult
    answered: tuple[int, ...]  # indices of the datagrams correctly answered
    failure: str | None
    mapped_address: str | None = None  # XOR-MAPPED-ADDRESS: the volunteer's address (scrubbed)
    error: str | None = None  # codec detail ("wrong_transaction", "no_realm"...)

    @property
    def last_answered(self) -> int | None:
        return max(self.answered) if self.answered else None


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
    # UDP endpoints: their ports are UDP ports, and connect/tls above stay None
    udp: tuple[UdpCheck, ...] = ()
    quic: QuicResult | None = None
    quic_verification: str | None = None  # chain verification of the QUIC handshake


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
class FunctionVerdict:
    """The status of one function of a service ("calls", "messaging"...), from the
    verdicts of the endpoints that serve it (same vocabulary as a service's)."""

    function: str  # probe.vocabulary.Function
    status: str  # probe.vocabulary.ServiceStatus
    explanation: str


@dataclass(frozen=True)
class NetworkFindings:
    """What a run learned about the volunteer's network as a whole, not one service.

    ``udp``: whether UDP and QUIC pass at all (a network dropping every UDP flow
    blocks calls for every app: a finding, not an error). ``restricted``: TCP
    connects everywhere but data passes only to a few destinations (allowlist
    mode, Russian mobile networks since 2025), which is not "your network is down".
    """

    udp: str = UdpNetwork.UNKNOWN  # probe.vocabulary.UdpNetwork
    restricted: bool = False
    explanation: str = ""


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
    functions: tuple[FunctionVerdict, ...] = ()  # one per function present, in Function order
    network: NetworkFindings = NetworkFindings()
