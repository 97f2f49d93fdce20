"""The live network against real servers on loopback: every failure string of the
failure table that can be produced on loopback is produced here for real.

(network_unreachable and host_unreachable need a namespace without routes: the
lab's tests produce them.)
"""

from __future__ import annotations

import asyncio
import base64
import datetime

import pytest
from servers import (
    LOOPBACK,
    refused_port,
    start_dns,
    start_http,
    start_https,
    start_mtproto,
    start_tcp,
)

from probe import mtproto
from probe.certificates import verify_chain
from probe.net import failures as F
from probe.net.live import LiveNetwork
from probe.net.network import DnsQuery, HttpRequest, MtprotoRequest, TlsRequest

NOW = datetime.datetime.now(datetime.timezone.utc)


def run(coro):
    return asyncio.run(coro)


ZONE = {
    "example.org": {"A": ["127.0.0.1"]},
    "www.example.org": {"A": ["127.0.0.1"], "AAAA": ["::1"]},
}
BEHAVIOURS = {
    "blocked.example": "nxdomain",
    "broken.example": "servfail",
    "refused.example": "refused",
    "dropped.example": "drop",
    "forged.example": {"forge": ["10.10.34.35"]},
}


@pytest.fixture(scope="module")
def dns_port():
    with start_dns(ZONE, BEHAVIOURS) as server:
        yield server.port


def query(port, name, qtype="A", transport="udp", timeout=2.0, linger=0.2):
    net = LiveNetwork()
    return run(net.dns_exchange(DnsQuery(LOOPBACK, port, name, qtype, transport), timeout, linger))


# --- DNS -----------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_dns_answer(dns_port, transport):
    result = query(dns_port, "www.example.org", transport=transport)
    assert result.failure is None
    assert [a.value for a in result.replies[0].answers] == ["127.0.0.1"]
    assert result.replies[0].raw  # the raw wire message is kept
    assert result.timing.t >= result.timing.t0


@pytest.mark.parametrize(
    "name,qtype,failure",
    [
        ("blocked.example", "A", F.DNS_NXDOMAIN),
        ("broken.example", "A", F.DNS_SERVFAIL),
        ("refused.example", "A", F.DNS_REFUSED),
        ("example.org", "AAAA", F.DNS_NO_ANSWER),
    ],
)
@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_dns_failures(dns_port, name, qtype, failure, transport):
    assert query(dns_port, name, qtype, transport).failure == failure


def test_dns_timeout_when_resolver_drops(dns_port):
    result = query(dns_port, "dropped.example", timeout=0.5)
    assert result.failure == F.GENERIC_TIMEOUT
    assert result.replies == ()


def test_dns_forged_answer_is_recorded_as_data(dns_port):
    result = query(dns_port, "forged.example")
    assert result.failure is None
    assert [a.value for a in result.replies[0].answers] == ["10.10.34.35"]


def test_dns_refused_port():
    with refused_port() as port:
        # ICMP port unreachable on loopback surfaces as ECONNREFUSED on the UDP socket
        assert query(port, "example.org").failure == F.CONNECTION_REFUSED
        assert query(port, "example.org", transport="tcp").failure == F.CONNECTION_REFUSED


def test_dns_records_every_reply_of_a_racing_injector():
    """Two answers to one query, as on-path injectors produce: both are kept."""
    import socket
    import threading

    import dns.message

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOOPBACK, 0))
    sock.settimeout(3)
    port = sock.getsockname()[1]

    def injector():
        data, client = sock.recvfrom(512)
        request = dns.message.from_wire(data)
        for address in ("203.0.113.66", "127.0.0.1"):
            response = dns.message.make_response(request)
            response.answer.append(dns.rrset.from_text(
                request.question[0].name, 60, "IN", "A", address))
            sock.sendto(response.to_wire(), client)

    import dns.rrset

    thread = threading.Thread(target=injector, daemon=True)
    thread.start()
    try:
        result = query(port, "example.org", linger=0.3)
    finally:
        thread.join(3)
        sock.close()
    values = [[a.value for a in r.answers] for r in result.replies]
    assert values == [["203.0.113.66"], ["127.0.0.1"]]
    assert result.replies[0].t <= result.replies[1].t


def test_a_lost_udp_query_is_sent_again_within_the_timeout():
    """A lossy link loses the first datagram: the retransmission (same ID, as a stub
    resolver sends it) is answered and the exchange succeeds; a resolver that never
    answers still times out (test_dns_timeout_when_resolver_drops)."""
    import socket
    import threading

    import dns.message
    import dns.rrset

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOOPBACK, 0))
    sock.settimeout(3)
    port = sock.getsockname()[1]
    ids = []

    def lossy_resolver():
        first, _ = sock.recvfrom(512)  # "lost"
        ids.append(dns.message.from_wire(first).id)
        data, client = sock.recvfrom(512)
        request = dns.message.from_wire(data)
        ids.append(request.id)
        response = dns.message.make_response(request)
        response.answer.append(dns.rrset.from_text(
            request.question[0].name, 60, "IN", "A", "127.0.0.1"))
        sock.sendto(response.to_wire(), client)

    thread = threading.Thread(target=lossy_resolver, daemon=True)
    thread.start()
    try:
        result = query(port, "example.org", timeout=1.5, linger=0.1)
    finally:
        thread.join(3)
        sock.close()
    assert result.failure is None
    assert [[a.value for a in r.answers] for r in result.replies] == [["127.0.0.1"]]
    assert len(ids) == 2 and ids[0] == ids[1]
    assert result.timing.t - result.timing.t0 < 1.4  # answered at the first resend (0.5 s)


# --- TCP -----------------------------------------------------------------------


def test_connect_ok_and_refused():
    with start_tcp("echo") as server:
        assert run(LiveNetwork().tcp_connect(LOOPBACK, server.port, 2)).failure is None
    with refused_port() as port:
        assert run(LiveNetwork().tcp_connect(LOOPBACK, port, 2)).failure == F.CONNECTION_REFUSED


# --- TLS -----------------------------------------------------------------------


def handshake(port, sni="example.org", timeout=2.0):
    return run(LiveNetwork().tls_handshake(TlsRequest(LOOPBACK, port, sni), timeout))


def test_tls_ok_and_chain_verifies(lab_pki):
    with start_https(lab_pki) as server:
        result = handshake(server.port)
    assert result.failure is None and result.connect.failure is None
    assert result.tls_version in ("TLSv1.2", "TLSv1.3")
    assert result.peer_certificates
    root = lab_pki.lab_root.cert.read_text()
    assert verify_chain(result.peer_certificates, "example.org", root, NOW) is None


@pytest.mark.parametrize(
    "mode,failure",
    [("reset", F.CONNECTION_RESET), ("silent", F.GENERIC_TIMEOUT), ("eof", F.EOF_ERROR)],
)
def test_tls_handshake_failures(mode, failure):
    with start_tcp(mode) as server:
        result = handshake(server.port, timeout=0.5)
    assert result.connect.failure is None
    assert result.failure == failure


def test_tls_alert_is_failed_handshake(lab_pki):
    with start_https(lab_pki, unknown_sni="handshake_failure") as server:
        result = handshake(server.port, sni="unknown.example")
    assert result.failure == F.SSL_FAILED_HANDSHAKE


def test_certificate_from_another_ca_is_unknown_authority(lab_pki):
    with start_https(lab_pki, certificates="censor") as server:
        result = handshake(server.port)
    assert result.failure is None  # the handshake itself works: the chain is the evidence
    root = lab_pki.lab_root.cert.read_text()
    assert verify_chain(result.peer_certificates, "example.org", root, NOW) == (
        F.SSL_UNKNOWN_AUTHORITY)


def test_wrong_name_and_expired(lab_pki):
    root = lab_pki.lab_root.cert.read_text()
    with start_https(lab_pki) as server:
        result = handshake(server.port)
    assert verify_chain(result.peer_certificates, "web.whatsapp.com", root, NOW) == (
        F.SSL_INVALID_HOSTNAME)
    with start_https(lab_pki, certificates="expired") as server:
        result = handshake(server.port)
    assert verify_chain(result.peer_certificates, "example.org", root, NOW) == (
        F.SSL_INVALID_CERTIFICATE)


def test_pinned_root_rejects_publicly_valid_chain(lab_pki):
    with start_https(lab_pki) as server:
        result = handshake(server.port)
    pinned = lab_pki.pinned_root.cert.read_text()
    assert verify_chain(result.peer_certificates, "example.org", pinned, NOW) == (
        F.SSL_UNKNOWN_AUTHORITY)


# --- HTTP -----------------------------------------------------------------------


def test_http_get_and_post():
    with start_http() as server:
        url = f"http://example.org:{server.port}/"
        get = run(LiveNetwork().http_request(HttpRequest(url, LOOPBACK), 2))
        post = run(LiveNetwork().http_request(
            HttpRequest(url, LOOPBACK, "POST", body=base64.b64encode(b"x").decode()), 2))
    assert get.failure is None and get.status == 200
    assert b"<title>" in base64.b64decode(get.body)
    assert post.failure is None and post.status is not None


def test_https_request_and_download_throughput(lab_pki):
    with start_https(lab_pki) as server:
        url = f"https://example.org:{server.port}/download"
        result = run(LiveNetwork().http_request(
            HttpRequest(url, LOOPBACK, max_body=1 << 16, measure_throughput=True,
                        transfer_bytes=1 << 20, transfer_seconds=5), 5))
    assert result.failure is None and result.status == 200
    # only max_body is kept, but the transfer goes on to transfer_bytes for the rate
    assert result.body_truncated and len(base64.b64decode(result.body)) == 1 << 16
    assert result.body_length >= 1 << 20
    assert result.throughput_bps and result.throughput_bps > 0


def test_a_transfer_that_freezes_is_measured_over_its_whole_window():
    """Russia's TSPU freezes some flows after their first ~16 KB (net4people/bbs #490):
    the first kilobytes arrive at once, then nothing. The rate is what arrived over
    the window, not over the few milliseconds before the freeze."""

    async def scenario(sent):
        async def frozen(reader, writer):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4194304\r\n\r\n" + b"x" * sent)
            await writer.drain()
            await asyncio.sleep(5)  # frozen: nothing more, the connection stays open
            writer.close()

        server = await asyncio.start_server(frozen, LOOPBACK, 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            url = f"http://example.org:{port}/download"
            return await LiveNetwork().http_request(
                HttpRequest(url, LOOPBACK, max_body=1 << 16, measure_throughput=True,
                            transfer_bytes=1 << 22, transfer_seconds=1.0), 3)

    result = run(scenario(16384))
    assert result.failure is None and result.body_truncated
    assert result.body_length == 16384
    assert result.throughput_bps is not None and result.throughput_bps < 20_000  # ~16 KB/s
    assert result.timing.t - result.timing.t0 < 2.5  # the window ends it, not the timeout
    # frozen inside the first TLS record: the head came, not one byte of body
    nothing = run(scenario(0))
    assert nothing.failure is None and nothing.status == 200 and nothing.throughput_bps == 0.0


@pytest.mark.parametrize(
    "mode,failure",
    [("reset", F.CONNECTION_RESET), ("silent", F.GENERIC_TIMEOUT), ("eof", F.EOF_ERROR)],
)
def test_http_failures(mode, failure):
    with start_tcp(mode) as server:
        url = f"http://example.org:{server.port}/"
        result = run(LiveNetwork().http_request(HttpRequest(url, LOOPBACK), 0.5))
    assert result.failure == failure


def test_http_refused():
    with refused_port() as port:
        url = f"http://example.org:{port}/"
        result = run(LiveNetwork().http_request(HttpRequest(url, LOOPBACK), 1))
    assert result.failure == F.CONNECTION_REFUSED


# --- MTProto ----------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["intermediate", "abridged"])
def test_mtproto_res_pq(transport):
    nonce = mtproto.new_nonce()
    message = mtproto.req_pq_multi(nonce)
    framed = (mtproto.frame_abridged if transport == "abridged" else mtproto.frame_intermediate)(
        message)
    with start_mtproto() as server:
        request = MtprotoRequest(LOOPBACK, server.port, base64.b64encode(framed).decode(),
                                 transport)
        result = run(LiveNetwork().mtproto_exchange(request, 2))
    assert result.failure is None
    parsed = mtproto.parse_res_pq(base64.b64decode(result.received), transport, nonce)
    assert parsed.nonce == nonce


def test_mtproto_on_an_echo_server_is_not_telegram():
    from probe.runner import judge_mtproto

    nonce = mtproto.new_nonce()
    framed = mtproto.frame_intermediate(mtproto.req_pq_multi(nonce))
    with start_tcp("echo") as server:
        request = MtprotoRequest(LOOPBACK, server.port, base64.b64encode(framed).decode())
        check = judge_mtproto(run(LiveNetwork().mtproto_exchange(request, 1)))
    assert not check.valid  # an open port that answers is not proof of Telegram


def test_mtproto_silent_is_timeout():
    framed = mtproto.frame_intermediate(mtproto.req_pq_multi(mtproto.new_nonce()))
    with start_tcp("silent") as server:
        request = MtprotoRequest(LOOPBACK, server.port, base64.b64encode(framed).decode())
        result = run(LiveNetwork().mtproto_exchange(request, 0.5))
    assert result.failure == F.GENERIC_TIMEOUT


def test_out_of_file_descriptors_is_a_local_failure(tmp_path):
    """EMFILE for real, in a child process with a tiny open-file limit: the probe's own
    machine ran out of descriptors, which must not read as a network failure."""
    import subprocess
    import sys

    script = """
import asyncio, resource, socket
from probe.net.live import LiveNetwork
listener = socket.socket(); listener.bind(("127.0.0.1", 0)); listener.listen(8)
port = listener.getsockname()[1]
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))

async def main():  # the event loop exists first: then every descriptor is taken
    held = []
    try:
        while True:
            held.append(socket.socket())
    except OSError:
        pass
    print((await LiveNetwork().tcp_connect("127.0.0.1", port, 1)).failure)

asyncio.run(main())
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=30)
    assert done.stdout.strip() == F.LOCAL_RESOURCE_ERROR, done.stdout + done.stderr
