"""The one table of failures: every error the network layer meets becomes one string.

The strings are OONI's failure vocabulary (data format df-007) so that our
reports read like OONI's and tools built for OONI data understand them. Nothing
outside this module decides what an exception "means"; the rest of probe only
compares strings from here. Each branch names the real case behind it; the
tests that produce each failure for real are:

- tests/net/test_live.py: DNS rcodes and timeouts, TCP refused/reset/timeout/EOF,
  TLS alerts and certificate failures, HTTP on a reset/silent/closing server,
  local resource exhaustion;
- tests/net/test_failures.py: :func:`classify_http` (aiohttp's wrappers), branch
  by branch;
- tests/hostile/: what hostile peers send (invalid, truncated or mismatched DNS
  replies, invalid HTTP heads, redirect loops, MTProto garbage, oversized or
  malformed control answers);
- the lab's scenarios (tests/lab): ICMP prohibited and unreachable, which need a
  namespace with a filtering router.
"""

from __future__ import annotations

import asyncio
import errno
import re
import socket
import ssl

# --- the vocabulary ------------------------------------------------------- #
CONNECTION_REFUSED = "connection_refused"  # RST answering our SYN (closed port)
CONNECTION_RESET = "connection_reset"  # RST on an established connection (injectors)
CONNECTION_ABORTED = "connection_aborted"
GENERIC_TIMEOUT = "generic_timeout_error"  # nothing came back in time (blackholes)
EOF_ERROR = "eof_error"  # the peer closed cleanly mid-exchange
HOST_UNREACHABLE = "host_unreachable"
# ours: an ICMP "communication administratively prohibited" answered our SYN (a
# router's REJECT rule: iptables icmp-admin-prohibited / icmp-host-prohibited,
# firewalld's default). Linux reports it as EHOSTUNREACH for IPv4 and EACCES for
# IPv6; the ICMP code itself is read from the socket's error queue (tcp.py).
# Test: lab scenario icmp-prohibited (tests/lab).
ADMINISTRATIVELY_PROHIBITED = "administratively_prohibited"
NETWORK_UNREACHABLE = "network_unreachable"  # no route (e.g. no IPv6 connectivity)
ADDRESS_FAMILY_NOT_SUPPORTED = "address_family_not_supported"
DNS_NXDOMAIN = "dns_nxdomain_error"
DNS_NO_ANSWER = "dns_no_answer"
DNS_SERVFAIL = "dns_servfail_error"
DNS_REFUSED = "dns_refused_error"
DNS_TEMPORARY = "dns_temporary_failure"  # getaddrinfo EAI_AGAIN
DNS_NON_RECOVERABLE = "dns_non_recoverable_failure"  # getaddrinfo EAI_FAIL
DNS_INVALID_REPLY = "dns_invalid_reply"  # a reply that does not parse (ours; hostile peers)
DNS_WRONG_QUERY = "dns_reply_with_wrong_query_id"  # reply for another id or question
# ours: the first valid reply has the TC bit and no answer (RFC 7766: a stub retries over
# TCP); "no answer" would be false about the name. Test: tests/hostile/test_dns.py (tc-bit).
DNS_TRUNCATED = "dns_truncated_reply"
SSL_INVALID_HOSTNAME = "ssl_invalid_hostname"  # certificate not valid for the name
SSL_UNKNOWN_AUTHORITY = "ssl_unknown_authority"  # chain to an untrusted root (MITM)
SSL_INVALID_CERTIFICATE = "ssl_invalid_certificate"  # expired, malformed, not yet valid
SSL_FAILED_HANDSHAKE = "ssl_failed_handshake"  # TLS alert or protocol error
HTTP_INVALID_RESPONSE = "http_invalid_response"  # ours: unparseable status line/headers
HTTP_TOO_MANY_REDIRECTS = "http_too_many_redirects"  # ours
MTPROTO_INVALID_RESPONSE = "mtproto_invalid_response"  # ours: bytes that are not resPQ
# ours: UDP flows and STUN/TURN (judged by probe.stun from what came back).
# A flow answered at first, then no more: mobile DPI cutting unrecognised UDP
# flows after their first packets (Russia, 2025).
UDP_FLOW_CUTOFF = "udp_flow_cutoff"
# Two different STUN answers to one transaction, or an answer whose
# XOR-MAPPED-ADDRESS disagrees with the others: an on-path injector.
STUN_INJECTED = "stun_injected_response"
STUN_INVALID_RESPONSE = "stun_invalid_response"  # bytes that are not our transaction's answer
TURN_NO_CHALLENGE = "turn_no_challenge"  # an Allocate answered without 401 + REALM + NONCE
# An echo service answered the flow with bytes it was never sent (a middlebox
# answering for it, a port that is not an echo). Test: tests/test_stun.py.
UDP_INVALID_RESPONSE = "udp_invalid_response"
# ours: QUIC (probe.net.quic, over aioquic)
QUIC_VERSION_NEGOTIATION = "quic_version_negotiation"  # the server offered no version we speak
QUIC_CONNECTION_CLOSED = "quic_connection_closed"  # CONNECTION_CLOSE with a transport error
QUIC_STREAM_RESET = "quic_stream_reset"  # the HTTP/3 request stream was reset
HTTP3_INVALID_RESPONSE = "http3_invalid_response"  # no :status, or unparseable frames
JSON_PARSE_ERROR = "json_parse_error"
# ours: a control helper's answer beyond MAX_CONTROL_RESPONSE (a hostile or broken
# helper). Test: tests/hostile/test_control.py (huge).
CONTROL_RESPONSE_TOO_LARGE = "control_response_too_large"
FETCH_TOO_LARGE = "fetch_too_large"  # ours: a downloaded file past its cap (targets feed)
DNS_BOGON = "dns_bogon_error"  # OONI's: an answer no public host can have
REPLAY_MISSING_OPERATION = "replay_missing_operation"  # ours: a trace lacks this operation
INTERRUPTED = "interrupted"  # the run was cancelled (Ctrl-C) during the operation
# ours: the probe's own machine ran out of something (file descriptors, memory):
# says nothing about the network, so analysis never reads it as blocking
LOCAL_RESOURCE_ERROR = "local_resource_error"
UNKNOWN_PREFIX = "unknown_failure: "

TIMEOUTS = frozenset({GENERIC_TIMEOUT})
# failures that come from the probe itself, never from the network
LOCAL = frozenset({LOCAL_RESOURCE_ERROR, INTERRUPTED, REPLAY_MISSING_OPERATION})
RESETS = frozenset({CONNECTION_RESET, CONNECTION_ABORTED})
UNREACHABLE = frozenset({HOST_UNREACHABLE, NETWORK_UNREACHABLE, ADDRESS_FAMILY_NOT_SUPPORTED})

_ERRNO = {
    errno.ECONNREFUSED: CONNECTION_REFUSED,
    errno.ECONNRESET: CONNECTION_RESET,
    errno.EPIPE: CONNECTION_RESET,  # write after the peer reset us
    errno.ECONNABORTED: CONNECTION_ABORTED,
    errno.ETIMEDOUT: GENERIC_TIMEOUT,
    errno.EHOSTUNREACH: HOST_UNREACHABLE,  # ICMP host unreachable (prohibited: icmp_failure)
    errno.EACCES: ADMINISTRATIVELY_PROHIBITED,  # ICMPv6 administratively prohibited (Linux)
    errno.ENETUNREACH: NETWORK_UNREACHABLE,  # no route: typical of IPv6 on v4-only homes
    errno.EADDRNOTAVAIL: NETWORK_UNREACHABLE,  # no source address of that family
    errno.EAFNOSUPPORT: ADDRESS_FAMILY_NOT_SUPPORTED,
    errno.EMFILE: LOCAL_RESOURCE_ERROR,  # too many open files (--concurrency too high)
    errno.ENFILE: LOCAL_RESOURCE_ERROR,
    errno.ENOBUFS: LOCAL_RESOURCE_ERROR,
    errno.ENOMEM: LOCAL_RESOURCE_ERROR,
}

_GAI = {
    socket.EAI_NONAME: DNS_NXDOMAIN,
    socket.EAI_AGAIN: DNS_TEMPORARY,
    socket.EAI_FAIL: DNS_NON_RECOVERABLE,
}
if hasattr(socket, "EAI_NODATA"):
    _GAI[socket.EAI_NODATA] = DNS_NO_ANSWER  # type: ignore[attr-defined]

# OpenSSL X509 verify codes (x509_vfy.h) for a handshake done with verification.
_X509_CODES = {
    62: SSL_INVALID_HOSTNAME,  # X509_V_ERR_HOSTNAME_MISMATCH
    64: SSL_INVALID_HOSTNAME,  # X509_V_ERR_IP_ADDRESS_MISMATCH
    18: SSL_UNKNOWN_AUTHORITY,  # self-signed leaf
    19: SSL_UNKNOWN_AUTHORITY,  # self-signed certificate in chain
    20: SSL_UNKNOWN_AUTHORITY,  # unable to get local issuer (e.g. Kazakhstan 2019 root)
    21: SSL_UNKNOWN_AUTHORITY,  # unable to verify the first certificate
    9: SSL_INVALID_CERTIFICATE,  # not yet valid
    10: SSL_INVALID_CERTIFICATE,  # expired (https://expired.badssl.com/)
}

# ICMP "destination unreachable" codes meaning a filter refused the packet:
# RFC 1812 5.2.7.1 (IPv4 type 3: 9 network, 10 host, 13 communication administratively
# prohibited) and RFC 4443 3.1 (ICMPv6 type 1: 1 administratively prohibited, 5 source
# address failed ingress/egress policy, 6 reject route to destination).
_ICMP_PROHIBITED = {(4, 3): frozenset({9, 10, 13}), (6, 1): frozenset({1, 5, 6})}


def icmp_failure(version: int, icmp_type: int, code: int) -> str | None:
    """The failure an ICMP error names more precisely than errno does (None: errno's)."""
    if code in _ICMP_PROHIBITED.get((version, icmp_type), ()):
        return ADMINISTRATIVELY_PROHIBITED
    return None


def icmp_error_failure(error: int, version: int, icmp_type: int, code: int) -> str:
    """The failure of an ICMP error read from a socket's error queue (a UDP flow's):
    the precise ICMP reading first, then the errno the kernel gave it. A closed
    UDP port answers ICMP port unreachable (IPv4 type 3 code 3, ICMPv6 type 1
    code 4), which Linux reports as ECONNREFUSED: ``connection_refused``.
    Test: tests/net/test_udp.py (closed port)."""
    precise = icmp_failure(version, icmp_type, code)
    if precise is not None:
        return precise
    if error in _ERRNO:
        return _ERRNO[error]
    return f"{UNKNOWN_PREFIX}icmp type {icmp_type} code {code}"


# QUIC CONNECTION_CLOSE (RFC 9000 section 20): a transport close (it names a
# frame type) with 0x100-0x1ff carries a TLS alert, as a TCP handshake's alert
# does; an application close (no frame type) with 0x101-0x110 is an HTTP/3
# error (RFC 9114 section 8.1) about what we or the server sent.
_QUIC_CRYPTO_ERRORS = range(0x100, 0x200)
_H3_ERRORS = range(0x101, 0x111)


def quic_close_failure(error_code: int, frame_type: int | None, reason: str) -> str:
    """The failure of a QUIC connection that ended before our request was answered.
    Test: tests/net/test_quic.py (wrong ALPN: no_application_protocol alert)."""
    if reason == "Idle timeout":  # aioquic's own close: nothing more came back
        return GENERIC_TIMEOUT
    if frame_type is not None and error_code in _QUIC_CRYPTO_ERRORS:
        return SSL_FAILED_HANDSHAKE
    if frame_type is None and error_code in _H3_ERRORS:
        return HTTP3_INVALID_RESPONSE
    return QUIC_CONNECTION_CLOSED


DNS_RCODES = {
    "NXDOMAIN": DNS_NXDOMAIN,
    "SERVFAIL": DNS_SERVFAIL,
    "REFUSED": DNS_REFUSED,
}


def classify(exc: BaseException) -> str:
    """Map an exception raised by a network operation to a failure string."""
    if isinstance(exc, asyncio.CancelledError):
        return INTERRUPTED
    if isinstance(exc, MemoryError):
        return LOCAL_RESOURCE_ERROR
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError, socket.timeout)):
        return GENERIC_TIMEOUT
    if isinstance(exc, ssl.SSLCertVerificationError):
        return _X509_CODES.get(getattr(exc, "verify_code", -1), SSL_INVALID_CERTIFICATE)
    if isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError, asyncio.IncompleteReadError)):
        return EOF_ERROR  # peer closed the TLS/TCP stream without a proper close
    if isinstance(exc, ssl.SSLError):
        # A TLS alert from the peer or garbage instead of a ServerHello.
        return SSL_FAILED_HANDSHAKE
    if isinstance(exc, socket.gaierror):
        if exc.errno is not None and exc.errno in _GAI:
            return _GAI[exc.errno]
        return UNKNOWN_PREFIX + f"getaddrinfo: {exc}"
    if isinstance(exc, ConnectionResetError) and exc.errno is None:
        # asyncio's SSL layer reports a FIN during the handshake as a bare
        # ConnectionResetError() ("Connection lost"): the peer closed, no RST.
        return EOF_ERROR
    if isinstance(exc, OSError) and exc.errno in _ERRNO:
        return _ERRNO[exc.errno]
    if isinstance(exc, ConnectionRefusedError):
        return CONNECTION_REFUSED
    if isinstance(exc, ConnectionResetError):
        return CONNECTION_RESET
    if isinstance(exc, ConnectionAbortedError):
        return CONNECTION_ABORTED
    if isinstance(exc, (EOFError, BrokenPipeError)):
        return EOF_ERROR
    name = type(exc).__name__
    return f"{UNKNOWN_PREFIX}{name}: {exc}"[:200]


def dns_rcode_failure(rcode: str) -> str | None:
    """The failure a stub resolver reports for a reply's rcode (None for NOERROR)."""
    if rcode == "NOERROR":
        return None
    return DNS_RCODES.get(rcode, UNKNOWN_PREFIX + f"dns rcode {rcode}")


def http_status_failure(status: int) -> str:
    """A control helper (or collector) answering with an HTTP error status."""
    return f"http_status_{status}"


# --- HTTP through aiohttp ----------------------------------------------------- #
# aiohttp wraps socket and TLS errors in its own exceptions; this unwraps them so
# that an HTTP request meets the same vocabulary as a bare TCP or TLS step.
# Each branch is produced by tests/net/test_failures.py.

# aiohttp (3.10 and later) keeps the socket error that cut a response body only in
# the message of its ClientPayloadError: "... ConnectionResetError(104, '...')".
_PAYLOAD_SOCKET_ERROR = re.compile(r"\b[A-Za-z]*Error\((\d+), '[^']*'\)\s*$")


def classify_http(exc: BaseException) -> str:
    """The failure of an HTTP request made with aiohttp (pages and the control helper)."""
    # Imported here, not at the top: pure analysis and reports import this table for
    # its strings and must not pay for aiohttp; an aiohttp exception means it is loaded.
    import aiohttp

    if isinstance(exc, aiohttp.TooManyRedirects):
        # A same-host redirect loop (a captive portal sending every path to itself).
        return HTTP_TOO_MANY_REDIRECTS
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        # The server (or a box on the path) read the request and closed without an
        # answer: a FIN, not a RST.
        return EOF_ERROR
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        # The control helper's chain does not verify (an intercepting proxy's root).
        return classify(exc.certificate_error)
    if isinstance(exc, aiohttp.ClientConnectorError) and exc.os_error is not None:
        # Connecting failed: refused, unreachable, or the TLS handshake failed (a
        # plaintext blockpage answering our ClientHello on port 443).
        return classify(exc.os_error)
    if isinstance(exc, aiohttp.ClientResponseError):
        # aiohttp's parser refused the head: a garbage status line, enormous headers.
        return HTTP_INVALID_RESPONSE
    if isinstance(exc, aiohttp.ClientPayloadError):
        # The body was cut short: by a RST (a censor or throttler giving up on the
        # flow) or by a FIN before Content-Length bytes arrived.
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, OSError):
            return classify(cause)
        match = _PAYLOAD_SOCKET_ERROR.search(str(exc))
        if match and int(match.group(1)) in _ERRNO:
            return _ERRNO[int(match.group(1))]
        return EOF_ERROR
    # Everything else is a socket error (aiohttp's ClientOSError is an OSError with
    # the errno: a RST before the answer) or a timeout (asyncio.timeout, and
    # aiohttp's ServerTimeoutError, a TimeoutError): the table above decides.
    return classify(exc)
