"""Hostile TLS servers on loopback against the live TLS handshake and chain verification.

Garbage instead of a ServerHello, silence after the ClientHello, a server that
trickles one byte a second, chains of fifty certificates (small, and 1 MB),
and a certificate OpenSSL serves but a strict parser refuses. The handshake has
one deadline for the whole exchange, so trickling cannot stretch it; the chain
kept is capped; verification classifies what it cannot parse.
"""

from __future__ import annotations

import base64
import datetime
import os

import pytest

from probe.certificates import verify_chain
from probe.net import failures as F
from probe.net import tls as live_tls
from probe.net.network import TlsRequest

from .harness import (
    MIB,
    assert_never_blocked,
    bounded,
    check_bounds,
    endpoint,
    options,
    probe_and_control,
)
from .servers import (
    StreamPeer,
    duplicate_extension_leaf,
    hold,
    long_chain,
    no_fd_leak,
    send_then_hold,
    serve,
    trickle,
)

LOOPBACK = "127.0.0.1"
TIMEOUT = 1.0
NOW = datetime.datetime.now(datetime.UTC)

GARBAGE = os.urandom(4096)
# A TLS handshake record header announcing 16 KiB, then nothing useful: the
# client has every reason to keep waiting for the rest.
RECORD_HEADER = b"\x16\x03\x03\x40\x00" + b"\x02" * 64


@pytest.fixture(scope="module")
def chains(tmp_path_factory):
    directory = tmp_path_factory.mktemp("hostile-chains")
    return {
        "fifty": long_chain(directory, 50),
        "megabyte": long_chain(directory, 50, padding=20_000),
        "duplicate": duplicate_extension_leaf(directory),
    }


def handshake(port: int, timeout: float = TIMEOUT):
    request = TlsRequest(LOOPBACK, port, "example.org")
    return bounded(lambda net: net.tls_handshake(request, timeout))


def tls_peer(credentials):
    return lambda: StreamPeer(hold, ssl_context=credentials.context())


# --- the handshake ------------------------------------------------------------ #


@pytest.mark.parametrize("reply", [
    pytest.param(GARBAGE, id="random-bytes"),
    pytest.param(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n", id="http-answer"),
    pytest.param(b"\x15\x03\x03\x00\x02\x02\x28" + GARBAGE[:100], id="alert-then-garbage"),
])
def test_garbage_instead_of_a_server_hello(reply):
    with serve(lambda: StreamPeer(send_then_hold(reply))) as peer:
        outcome = handshake(peer.port)
    check_bounds(outcome, TIMEOUT)
    assert outcome.value.connect.failure is None
    assert outcome.value.failure == F.SSL_FAILED_HANDSHAKE
    assert outcome.value.peer_certificates == ()


def test_stall_after_the_client_hello_times_out():
    with serve(lambda: StreamPeer(hold)) as peer, no_fd_leak():
        outcome = handshake(peer.port)
    check_bounds(outcome, TIMEOUT)
    assert TIMEOUT * 0.9 <= outcome.elapsed < TIMEOUT + 0.5  # no hidden wait after it
    timing = outcome.value.timing
    assert timing.t - timing.t0 < TIMEOUT + 0.5
    assert outcome.value.failure == F.GENERIC_TIMEOUT


def test_slowloris_one_byte_a_second_cannot_stretch_the_deadline():
    """Every byte arrives before any per-read timeout would fire; only a deadline
    for the whole handshake ends it."""
    timeout = 2.5
    with serve(lambda: StreamPeer(trickle(RECORD_HEADER, 0.5))) as peer:
        outcome = handshake(peer.port, timeout)
    check_bounds(outcome, timeout)
    assert outcome.value.failure == F.GENERIC_TIMEOUT


# --- chains ----------------------------------------------------------------------- #


def test_fifty_certificate_chain_is_recorded_capped(chains):
    assert chains["fifty"].chain_bytes < 64 * 1024  # under OpenSSL's max_cert_list
    with serve(tls_peer(chains["fifty"])) as peer:
        outcome = handshake(peer.port)
    check_bounds(outcome, TIMEOUT, memory=4 * MIB)
    assert outcome.value.failure is None
    assert len(outcome.value.peer_certificates) == live_tls.MAX_CHAIN
    verdict = verify_chain(outcome.value.peer_certificates, "example.org", None, NOW)
    assert verdict == F.SSL_UNKNOWN_AUTHORITY


def test_megabyte_chain_is_refused_by_the_client(chains):
    """OpenSSL's default max_cert_list (100 KiB) refuses a 1 MB Certificate message."""
    assert chains["megabyte"].chain_bytes > 1_000_000
    with serve(tls_peer(chains["megabyte"])) as peer:
        outcome = handshake(peer.port)
    check_bounds(outcome, TIMEOUT)
    assert outcome.value.failure == F.SSL_FAILED_HANDSHAKE
    assert outcome.value.peer_certificates == ()


def test_certificate_with_a_duplicate_extension_is_classified(chains):
    """OpenSSL serves it (it ignores duplicates of unknown extensions); cryptography
    refuses it when reading its extensions. Verification must say invalid, not raise."""
    with serve(tls_peer(chains["duplicate"])) as peer:
        outcome = handshake(peer.port)
    check_bounds(outcome, TIMEOUT)
    assert outcome.value.failure is None
    assert len(outcome.value.peer_certificates) == 1
    verdict = verify_chain(outcome.value.peer_certificates, "example.org", None, NOW)
    assert verdict == F.SSL_INVALID_CERTIFICATE


def _der(chain_credentials) -> bytes:
    pem = chain_credentials.certfile.read_text()
    body = pem.split("-----BEGIN CERTIFICATE-----", 2)[1].split("-----END", 1)[0]
    return base64.b64decode(body)


@pytest.mark.parametrize("mangle", [
    pytest.param(lambda der: b"", id="empty"),
    pytest.param(lambda der: b"\x30\x03\x02\x01\x01", id="not-a-certificate"),
    pytest.param(lambda der: der[: len(der) // 2], id="cut-in-half"),
    pytest.param(lambda der: der[:4] + os.urandom(len(der) - 4), id="random-body"),
    pytest.param(lambda der: der + b"\x00" * 16, id="trailing-bytes"),
])
def test_malformed_certificate_bytes_are_classified(chains, mangle):
    leaf = base64.b64encode(mangle(_der(chains["fifty"]))).decode()
    assert verify_chain((leaf,), "example.org", None, NOW) == F.SSL_INVALID_CERTIFICATE
    # a malformed intermediate after a good leaf: the chain is untrusted, not a crash
    good = base64.b64encode(_der(chains["fifty"])).decode()
    assert verify_chain((good, leaf), "example.org", None, NOW) in (
        F.SSL_INVALID_CERTIFICATE, F.SSL_UNKNOWN_AUTHORITY)


def test_chain_that_is_not_base64_is_classified():
    assert verify_chain(("not base64!",), "example.org", None, NOW) == F.SSL_INVALID_CERTIFICATE


# --- a control that sees the same server never says "blocked" ------------------------ #


def _cases():
    return {
        "garbage": lambda chains: StreamPeer(send_then_hold(GARBAGE)),
        "stall": lambda chains: StreamPeer(hold),
        "slowloris": lambda chains: StreamPeer(trickle(RECORD_HEADER, 0.3)),
        "fifty-certificates": lambda chains: tls_peer(chains["fifty"])(),
        "megabyte-chain": lambda chains: tls_peer(chains["megabyte"])(),
        "duplicate-extension": lambda chains: tls_peer(chains["duplicate"])(),
    }


CASES = _cases()


@pytest.mark.parametrize("case", [
    c for c in sorted(CASES)
])
def test_hostile_tls_server_is_never_blocked_when_the_control_sees_it_too(chains, case):
    with serve(lambda: CASES[case](chains)) as peer:
        judged = probe_and_control(
            endpoint(LOOPBACK, peer.port, ("tls",), sni="example.org"), options(TIMEOUT)
        )
    assert judged.elapsed < TIMEOUT + 2
    assert_never_blocked(judged)
