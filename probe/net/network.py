"""The one seam between probe and the network.

Every network operation the probe performs is one method of :class:`Network`,
taking a plain request and returning a plain, frozen, JSON-serialisable result.
The live network (``probe.net.live``), a recording network and a replaying
network are interchangeable implementations; the runner, the control helper and
the analysis never touch sockets themselves.

Results never raise for network trouble: a failed operation is a result whose
``failure`` is one of the strings of ``probe.net.failures``. Times are seconds on
the network's own monotonic clock (``Network.clock()``), so a replayed run
reproduces the recorded timings exactly.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


# --------------------------------------------------------------------------- #
# (de)serialisation of the plain dataclasses below, used by traces and control #
# --------------------------------------------------------------------------- #


def to_json(value: Any) -> Any:
    """Turn a result dataclass (or nested containers of them) into JSON data."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    return value


def from_json(cls: type[T], data: Any) -> T:
    """Rebuild ``cls`` from :func:`to_json` output; raises ValueError on bad data."""
    return _convert(cls, data)  # type: ignore[return-value]


@functools.cache
def _type_hints(tp: type) -> dict[str, Any]:
    return typing.get_type_hints(tp)


def _convert(tp: Any, data: Any) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return data
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if data is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, data)
            except (ValueError, TypeError) as exc:
                errors.append(str(exc))
        raise ValueError(f"no variant of {tp} accepts {data!r:.80}: {errors}")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(data, list):
            raise ValueError(f"expected a list, got {type(data).__name__}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v) for v in data)
        if len(args) != len(data):
            raise ValueError(f"expected {len(args)} items, got {len(data)}")
        return tuple(_convert(a, v) for a, v in zip(args, data, strict=True))
    if origin is list:
        (arg,) = typing.get_args(tp)
        if not isinstance(data, list):
            raise ValueError(f"expected a list, got {type(data).__name__}")
        return [_convert(arg, v) for v in data]
    if origin is dict:
        _, varg = typing.get_args(tp)
        if not isinstance(data, dict):
            raise ValueError(f"expected an object, got {type(data).__name__}")
        return {str(k): _convert(varg, v) for k, v in data.items()}
    if origin is typing.Literal:
        if data not in typing.get_args(tp):
            raise ValueError(f"{data!r} is not one of {typing.get_args(tp)}")
        return data
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(data, dict):
            raise ValueError(f"expected an object for {tp.__name__}, got {type(data).__name__}")
        hints = _type_hints(tp)
        kwargs = {}
        for f in dataclasses.fields(tp):
            if f.name in data:
                kwargs[f.name] = _convert(hints[f.name], data[f.name])
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ValueError(f"{tp.__name__}: missing field {f.name!r}")
        return tp(**kwargs)
    if tp is float:
        if isinstance(data, bool) or not isinstance(data, (int, float)):
            raise ValueError(f"expected a number, got {data!r:.40}")
        return float(data)
    if tp in (int, str, bool):
        if not isinstance(data, tp) or (tp is int and isinstance(data, bool)):
            raise ValueError(f"expected {tp.__name__}, got {data!r:.40}")
        return data
    raise TypeError(f"cannot convert to {tp!r}")


# --------------------------------------------------------------------------- #
# Requests and results                                                         #
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class Timing:
    """When an operation started (``t0``) and ended (``t``), on the network clock."""

    t0: float
    t: float


@dataclass(frozen=True)
class GetaddrinfoResult:
    """The system resolver's answer for ``host`` (what ordinary apps would get)."""

    host: str
    addresses: tuple[str, ...]
    failure: str | None
    timing: Timing


@dataclass(frozen=True)
class DnsQuery:
    """One direct DNS query to ``resolver``:``port`` over ``transport``."""

    resolver: str
    port: int
    qname: str
    qtype: str  # "A", "AAAA", ...
    transport: str = "udp"  # "udp" or "tcp"


@dataclass(frozen=True)
class DnsAnswer:
    rrtype: str  # "A", "AAAA", "CNAME", ...
    name: str
    value: str  # address for A/AAAA, target for CNAME, text form otherwise
    ttl: int


@dataclass(frozen=True)
class DnsReply:
    """One reply that arrived for a query; on-path injectors make several."""

    t: float  # network clock at arrival
    rcode: str  # "NOERROR", "NXDOMAIN", "SERVFAIL", "REFUSED", ...
    answers: tuple[DnsAnswer, ...]
    raw: str  # base64 of the wire message
    failure: str | None = None  # set when this reply could not be parsed


@dataclass(frozen=True)
class DnsExchange:
    """Every reply received for one query within the listening window.

    ``failure`` is the outcome of the query as a stub resolver would see it
    from the first valid reply (``dns_nxdomain_error``, ``generic_timeout_error``...).
    """

    query: DnsQuery
    replies: tuple[DnsReply, ...]
    failure: str | None
    timing: Timing


def first_answer(exchange: DnsExchange) -> DnsExchange | None:
    """The exchange as it stood when its first valid reply arrived (``failure``
    None, ending at that reply), or None when no reply was valid. What
    ``Network.dns_exchange`` hands ``on_first``, live and in replay alike."""
    for index, reply in enumerate(exchange.replies):
        if reply.failure is None:
            return DnsExchange(exchange.query, exchange.replies[:index + 1], None,
                               Timing(exchange.timing.t0, reply.t))
    return None


@dataclass(frozen=True)
class ConnectResult:
    address: str
    port: int
    failure: str | None
    timing: Timing


@dataclass(frozen=True)
class TlsRequest:
    address: str
    port: int
    sni: str | None
    alpn: tuple[str, ...] = ("h2", "http/1.1")


@dataclass(frozen=True)
class TlsResult:
    """A TLS handshake on a fresh connection.

    The handshake is done without verification so that the peer's chain is
    always recorded (a MITM certificate is evidence); verification is a pure
    step afterwards (``probe.certificates``). ``failure`` here is only about the
    handshake itself (reset, timeout, eof, alert).
    """

    request: TlsRequest
    connect: ConnectResult
    failure: str | None
    tls_version: str | None
    cipher_suite: str | None
    negotiated_protocol: str | None
    peer_certificates: tuple[str, ...]  # base64 DER, leaf first
    timing: Timing


@dataclass(frozen=True)
class HttpRequest:
    """One HTTP(S) request sent to a fixed ``address`` (no resolution happens)."""

    url: str
    address: str
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()
    body: str = ""  # base64
    max_body: int = 1 << 20
    max_redirects: int = 5
    measure_throughput: bool = False
    # A throughput transfer reads up to transfer_bytes (keeping only max_body of
    # them) and stops after transfer_seconds: a throttled link (Russia held
    # Twitter at ~150 kbit/s) must yield a rate, not a timeout.
    transfer_bytes: int = 0
    transfer_seconds: float = 0.0


@dataclass(frozen=True)
class HttpResult:
    request: HttpRequest
    failure: str | None
    status: int | None
    headers: tuple[tuple[str, str], ...]
    body: str  # base64, at most request.max_body bytes
    body_length: int  # bytes received (capped body plus what was discarded)
    body_truncated: bool
    redirects: tuple[str, ...]  # the URLs that were followed, in order
    throughput_bps: float | None  # bytes/s of the body transfer when measured
    timing: Timing


@dataclass(frozen=True)
class MtprotoRequest:
    address: str
    port: int
    payload: str  # base64 of one framed transport packet (see probe.mtproto)
    transport: str = "intermediate"  # or "abridged"


@dataclass(frozen=True)
class MtprotoResult:
    request: MtprotoRequest
    connect: ConnectResult
    failure: str | None
    received: str  # base64 of what arrived (capped)
    timing: Timing


@dataclass(frozen=True)
class UdpRequest:
    """A flow of datagrams to ``address``:``port`` on one connected socket (one 5-tuple).

    Datagram ``i`` (base64 in ``datagrams``) is sent ``schedule[i]`` seconds after
    the start. With ``stop_on_reply`` (STUN retransmissions, RFC 5389 7.2.1) the
    remaining sends are skipped once anything has arrived. After the last send,
    or the first reply with ``stop_on_reply``, the socket keeps listening
    ``linger`` seconds (injected second answers, late replies), all within the
    step's timeout. At most ``max_received`` datagrams are kept, each cut to
    ``max_bytes``: a hostile peer may flood. A flow with ``give_up`` stops once
    that many seconds passed with nothing at all back: a blackholed flow then
    costs one step timeout, not its whole schedule (a cut after N datagrams
    needs answers first, so nothing is lost).
    """

    address: str
    port: int
    datagrams: tuple[str, ...]
    schedule: tuple[float, ...]
    stop_on_reply: bool = False
    linger: float = 1.0
    max_received: int = 256
    max_bytes: int = 2048
    give_up: float = 0.0  # seconds of total silence after which the flow stops (0: never)


@dataclass(frozen=True)
class UdpSent:
    """One datagram that left (or failed to leave) the socket."""

    t: float
    index: int  # which datagram of the request (retransmissions repeat an index)
    failure: str | None = None  # sendto failed (no route, ICMP error reported on send)


@dataclass(frozen=True)
class UdpReceived:
    """One datagram that arrived on the flow's socket, in arrival order."""

    t: float
    data: str  # base64, at most request.max_bytes
    length: int  # its real length


@dataclass(frozen=True)
class IcmpError:
    """An ICMP error about the flow, read from the socket's error queue (IP_RECVERR)."""

    t: float
    failure: str  # connection_refused (port unreachable), host_unreachable, ...
    icmp_type: int
    icmp_code: int
    offender: str | None  # who sent it (the destination, or a router on the path)


@dataclass(frozen=True)
class UdpResult:
    """Everything that happened on one UDP flow.

    ``failure`` is the network's answer as a whole: None when any datagram came
    back, else the first ICMP error's failure, else ``generic_timeout_error``.
    Whether the datagrams that came back were the right answers is judged
    afterwards by pure code (``probe.stun``).
    """

    request: UdpRequest
    sent: tuple[UdpSent, ...]
    received: tuple[UdpReceived, ...]
    icmp: tuple[IcmpError, ...]
    failure: str | None
    timing: Timing


@dataclass(frozen=True)
class QuicRequest:
    """A QUIC handshake with ``address``:``port`` then an HTTP/3 GET of ``url``."""

    url: str  # its host is the :authority, its path the :path
    address: str
    port: int
    sni: str | None
    alpn: tuple[str, ...] = ("h3",)
    max_body: int = 1 << 16


@dataclass(frozen=True)
class QuicResult:
    """A QUIC handshake and HTTP/3 request on a fresh connection.

    As for TLS over TCP, the handshake is done without verification so that the
    peer's chain is always recorded; verification is the same pure step
    (``probe.certificates``). ``failed_phase`` says where a failure happened:
    ``handshake`` or ``http``. ``packets_received`` tells "nothing came back"
    (a blackhole, an SNI filter dropping the Initial) from a handshake that started.
    """

    request: QuicRequest
    failure: str | None
    failed_phase: str | None
    quic_version: str | None  # e.g. "0x00000001" (RFC 9000)
    handshake_time: float | None  # seconds from the first Initial to handshake completion
    tls_version: str | None
    negotiated_protocol: str | None
    peer_certificates: tuple[str, ...]  # base64 DER, leaf first
    status: int | None
    headers: tuple[tuple[str, str], ...]
    body: str  # base64, at most request.max_body bytes
    body_length: int
    packets_received: int
    timing: Timing


@dataclass(frozen=True)
class FetchRequest:
    """A GET of ``url`` as any client would make it: the name is resolved by the
    system, the certificate verified (against ``trust_pem`` when given, else the
    system's store), redirects followed to https only. Used for files probe needs,
    not to measure (the signed targets feed): a failure is the download's, and the
    body is refused as a whole past ``max_bytes``."""

    url: str
    max_bytes: int = 4 * 1024 * 1024
    trust_pem: str | None = None


@dataclass(frozen=True)
class FetchResult:
    """The downloaded body (base64), complete, or a failure and no body.

    ``failure`` is ``fetch_too_large`` past the request's cap, ``http_status_<n>``
    for any answer but 200, else the failure vocabulary of the transport.
    """

    request: FetchRequest
    failure: str | None
    status: int | None
    body: str
    body_length: int
    timing: Timing


@dataclass(frozen=True)
class ControlRequest:
    url: str
    body: dict[str, Any] = field(default_factory=dict)
    max_bytes: int = 32 * 1024 * 1024  # the answer's cap; callers size it to the request
    # Seconds allowed to connect to the helper (TCP and TLS), apart from the call's
    # deadline: a helper the censor drops is known after one step timeout, while an
    # answering helper may take its measurements' time. None: the deadline only.
    connect_timeout: float | None = None
    # False: sent without the probe's credentials (a third party's helper, e.g. OONI's,
    # has no use for them, and a signature would link the volunteer's requests)
    authenticate: bool = True


@dataclass(frozen=True)
class ControlResult:
    request: ControlRequest
    failure: str | None
    status: int | None
    body: dict[str, Any] | None
    timing: Timing
    # False: no connection to the helper was made (refused, unreachable, the connect
    # timed out); asking it again in the same run would only wait again. Results
    # recorded before this field existed read as connected, as they were treated.
    connected: bool = True


# --------------------------------------------------------------------------- #
# The interface                                                                #
# --------------------------------------------------------------------------- #


class Network(Protocol):
    """What the probe may ask of the network; nothing else touches sockets."""

    def clock(self) -> float:
        """Monotonic seconds since this network was created."""
        ...

    async def getaddrinfo(self, host: str, timeout: float) -> GetaddrinfoResult: ...

    async def dns_exchange(
        self, query: DnsQuery, timeout: float, linger: float,
        on_first: Callable[[DnsExchange], None] | None = None,
    ) -> DnsExchange:
        """Send ``query`` and collect replies until ``linger`` seconds after the
        first one (UDP) or until the answer (TCP), all within ``timeout``.

        ``on_first``, when given, is called once with :func:`first_answer` of the
        exchange as soon as its first valid reply arrived, while the exchange keeps
        listening: the runner starts measuring those addresses meanwhile. An
        implementation may skip the call; the returned exchange is what counts."""
        ...

    async def tcp_connect(self, address: str, port: int, timeout: float) -> ConnectResult: ...

    async def tls_handshake(self, request: TlsRequest, timeout: float) -> TlsResult: ...

    async def http_request(self, request: HttpRequest, timeout: float) -> HttpResult: ...

    async def mtproto_exchange(self, request: MtprotoRequest, timeout: float) -> MtprotoResult: ...

    async def udp_exchange(self, request: UdpRequest, timeout: float) -> UdpResult:
        """Run one UDP flow (see :class:`UdpRequest`) within ``timeout``."""
        ...

    async def quic_exchange(self, request: QuicRequest, timeout: float) -> QuicResult:
        """A QUIC handshake and one HTTP/3 GET within ``timeout``."""
        ...

    async def control_call(self, request: ControlRequest, timeout: float) -> ControlResult: ...

    async def fetch(self, request: FetchRequest, timeout: float) -> FetchResult:
        """Download a file probe needs (not a measurement) within ``timeout``."""
        ...

    async def aclose(self) -> None: ...
