"""Live QUIC and HTTP/3 against real servers on loopback, each failure produced for real.

The HTTP/3 origin is the lab's (aioquic) with the test PKI; a silent port, a
closed port (ICMP port unreachable), a server answering Version Negotiation
with an unknown version only, a server under another root, a server speaking
another ALPN, a server resetting the request stream and one answering without
``:status`` make the failures.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import socket
import struct
import threading
from collections.abc import Iterator

import pytest
from servers import LOOPBACK, LOOPBACK6, TEST_LIMITS, running
from udp_ports import closed_udp_port as closed_port
from udp_ports import silent_udp_port as silent_port

from probe.certificates import verify_chain
from probe.lab.servers.quic import QuicHttpServer
from probe.net import failures as F
from probe.net.live import LiveNetwork
from probe.net.network import QuicRequest, QuicResult

NOW = datetime.datetime.now(datetime.timezone.utc)
NAME = "www.example.org"


def exchange(address: str, port: int, timeout: float = 2.0, **options) -> QuicResult:
    request = QuicRequest(f"https://{NAME}/", address, port, sni=NAME, **options)
    return asyncio.run(LiveNetwork().quic_exchange(request, timeout))


@pytest.mark.parametrize("host", [LOOPBACK, LOOPBACK6])
def test_http3_get_and_a_chain_that_verifies(lab_pki, host: str) -> None:
    leaf = lab_pki.leaves[NAME]
    with running(lambda: QuicHttpServer([(host, 0)], leaf, title="h3 ok",
                                        limits=TEST_LIMITS)) as server:
        result = exchange(host, server.port)
    assert result.failure is None, result
    assert result.status == 200 and b"h3 ok" in base64.b64decode(result.body)
    assert result.quic_version == "0x00000001" and result.negotiated_protocol == "h3"
    assert result.tls_version == "TLSv1.3" and 0 < result.handshake_time < 1
    assert ("server", "probe-lab-h3") in result.headers
    trust = lab_pki.lab_root.cert.read_text()
    assert verify_chain(result.peer_certificates, NAME, trust, NOW) is None


def test_wrong_root_fails_verification(lab_pki) -> None:
    with running(lambda: QuicHttpServer([(LOOPBACK, 0)], lab_pki.censor[NAME],
                                        limits=TEST_LIMITS)) as server:
        result = exchange(LOOPBACK, server.port)
    assert result.failure is None  # the handshake never verifies: the chain is evidence
    trust = lab_pki.lab_root.cert.read_text()
    assert verify_chain(result.peer_certificates, NAME, trust, NOW) == F.SSL_UNKNOWN_AUTHORITY


def test_body_is_capped(lab_pki) -> None:
    with running(lambda: QuicHttpServer([(LOOPBACK, 0)], lab_pki.leaves[NAME], body_size=50_000,
                                        limits=TEST_LIMITS)) as server:
        result = exchange(LOOPBACK, server.port, max_body=1000)
    assert result.failure is None and result.status == 200
    assert len(base64.b64decode(result.body)) == 1000 and result.body_length >= 1000


def test_silent_port_is_a_timeout() -> None:
    with silent_port() as port:
        result = exchange(LOOPBACK, port, timeout=1.0)
    assert result.failure == F.GENERIC_TIMEOUT and result.failed_phase == "handshake"
    assert result.packets_received == 0


@pytest.mark.parametrize("host", [LOOPBACK, LOOPBACK6])
def test_closed_port_is_refused(host: str) -> None:
    with closed_port(host) as port:
        result = exchange(host, port)
    assert result.failure == F.CONNECTION_REFUSED and result.packets_received == 0


@contextlib.contextmanager
def version_negotiation_server() -> Iterator[int]:
    """Answers every Initial with a Version Negotiation listing one unknown version
    (RFC 9000 section 17.2.1), as a middlebox or a server of another QUIC would."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOOPBACK, 0))
    sock.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(2048)
            except (TimeoutError, OSError):
                continue
            if len(data) < 7 or not data[0] & 0x80:
                continue
            dcid_len = data[5]
            dcid = data[6 : 6 + dcid_len]
            scid_len = data[6 + dcid_len]
            scid = data[7 + dcid_len : 7 + dcid_len + scid_len]
            answer = (bytes([0xC0]) + b"\0\0\0\0" + bytes([len(scid)]) + scid
                      + bytes([len(dcid)]) + dcid + struct.pack("!I", 0x1A2A3A4A))
            sock.sendto(answer, peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1]
    finally:
        stop.set()
        thread.join(2)
        sock.close()


def test_version_negotiation() -> None:
    with version_negotiation_server() as port:
        result = exchange(LOOPBACK, port)
    assert result.failure == F.QUIC_VERSION_NEGOTIATION
    assert result.packets_received >= 1 and result.quic_version is None


def test_wrong_alpn_is_a_failed_handshake(lab_pki) -> None:
    with running(lambda: QuicHttpServer([(LOOPBACK, 0)], lab_pki.leaves[NAME],
                                        limits=TEST_LIMITS)) as server:
        result = exchange(LOOPBACK, server.port, alpn=("hq-interop",))
    assert result.failure == F.SSL_FAILED_HANDSHAKE and result.failed_phase == "handshake"


@pytest.mark.parametrize(("respond", "failure"), [("reset", F.QUIC_STREAM_RESET),
                                                  ("no_status", F.HTTP3_INVALID_RESPONSE)])
def test_http3_failures_after_the_handshake(lab_pki, respond: str, failure: str) -> None:
    with running(lambda: QuicHttpServer([(LOOPBACK, 0)], lab_pki.leaves[NAME], respond=respond,
                                        limits=TEST_LIMITS)) as server:
        result = exchange(LOOPBACK, server.port)
    assert result.failure == failure and result.failed_phase == "http"
    assert result.peer_certificates  # the handshake itself went through
