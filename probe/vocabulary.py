"""The closed vocabularies of probe, each defined once as a string enum.

Checks, functions, steps, verdicts and service statuses are words that other
tools read in our reports, so every member's value is the exact string that
appears there; a ``StrEnum`` member compares equal to its string, which keeps
old reports and traces readable. Failure strings (what the network said) live
in ``probe.net.failures``, not here: these words are conclusions and requests.
"""

from __future__ import annotations

from enum import StrEnum


class Check(StrEnum):
    """What a targets file may ask to run on an endpoint."""

    DNS = "dns"
    TCP = "tcp"
    TLS = "tls"
    HTTPS = "https"
    HTTP = "http"
    MTPROTO = "mtproto"
    DOWNLOAD = "download"
    # UDP checks: an endpoint's ports are then UDP ports
    STUN = "stun"  # RFC 5389 Binding Request; answered by a Binding Success
    TURN = "turn"  # RFC 5766 Allocate without credentials; answered by 401 + REALM/NONCE
    UDP = "udp"  # a flow of datagrams on one 5-tuple, answered one by one
    QUIC = "quic"  # QUIC handshake (ALPN h3) and an HTTP/3 GET


TCP_CHECKS = frozenset({Check.TCP, Check.TLS, Check.HTTPS, Check.HTTP, Check.MTPROTO,
                        Check.DOWNLOAD})
UDP_CHECKS = frozenset({Check.STUN, Check.TURN, Check.UDP, Check.QUIC})


class Function(StrEnum):
    """What a user does with the service that an endpoint serves."""

    MESSAGING = "messaging"  # sending and receiving text
    MEDIA = "media"  # photos, videos, voice notes, files
    CALLS = "calls"  # voice and video calls (STUN/TURN, relays, SFUs)
    REGISTRATION = "registration"  # signing up, SMS codes, account recovery
    WEB = "web"  # the web client and public web pages
    STATUS = "status"  # status/uptime pages, updates


class UdpPayload(StrEnum):
    """What a ``udp`` check sends in its flow."""

    STUN = "stun"  # a train of Binding Requests to a STUN-speaking relay
    ECHO = "echo"  # call-sized random-looking datagrams to an echo service


class Step(StrEnum):
    """The steps a measurement runs, in the order they can fail."""

    DNS = "dns"
    TCP = "tcp"
    TLS = "tls"
    PROTOCOL = "protocol"  # an application handshake on an open port (MTProto)
    HTTP = "http"
    STUN = "stun"
    TURN = "turn"
    UDP = "udp"
    QUIC = "quic"
    THROTTLE = "throttle"


class VerdictName(StrEnum):
    """The conclusion for one endpoint x address x port."""

    OK = "ok"
    DNS_BLOCKED = "dns_blocked"
    TCP_BLOCKED = "tcp_blocked"
    TLS_BLOCKED = "tls_blocked"
    HTTP_BLOCKED = "http_blocked"
    PROTOCOL_BLOCKED = "protocol_blocked"
    UDP_BLOCKED = "udp_blocked"
    QUIC_BLOCKED = "quic_blocked"
    THROTTLED = "throttled"
    DOWN = "down"
    INCONCLUSIVE = "inconclusive"


BLOCKED = frozenset({
    VerdictName.DNS_BLOCKED, VerdictName.TCP_BLOCKED, VerdictName.TLS_BLOCKED,
    VerdictName.HTTP_BLOCKED, VerdictName.PROTOCOL_BLOCKED, VerdictName.UDP_BLOCKED,
    VerdictName.QUIC_BLOCKED, VerdictName.THROTTLED,
})


class ServiceStatus(StrEnum):
    """The conclusion for a service, or for one function of it."""

    OK = "ok"
    BLOCKED = "blocked"
    PARTIALLY_BLOCKED = "partially_blocked"
    DOWN = "down"
    INCONCLUSIVE = "inconclusive"


class UdpNetwork(StrEnum):
    """What the run learned about the volunteer's network and UDP as a whole."""

    OK = "ok"  # a reference UDP flow and QUIC handshake worked
    ALL_UDP_DROPPED = "all_udp_dropped"  # no UDP flow anywhere was answered
    ALL_QUIC_DROPPED = "all_quic_dropped"  # UDP works, but no QUIC handshake does
    UNKNOWN = "unknown"  # no reference UDP measurement was made
