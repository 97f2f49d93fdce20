"""Every lab server against real clients on loopback, and the lab PKI against
the strict verifier the probe uses. No mocks: what the engine will see is what
these sockets do."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import signal
import socket
import ssl
import struct
import time
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import DNSName, IPAddress
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError
from hypothesis import given, settings
from hypothesis import strategies as st

# The fixtures (lab_pki, dns_server, mtproto_server, ...) come from tests/servers.py
# through tests/conftest.py; the helpers are imported here.
from servers import (
    LOOPBACK,
    LOOPBACK6,
    TEST_LIMITS,
    refused_port,
    running,
    servers_subprocess,
    start_dns,
    start_http,
    start_https,
    start_mitm,
    start_tcp,
)

from probe import mtproto
from probe.lab import pki as lab_pki_module
from probe.lab.pki import PkiPaths
from probe.lab.servers import (
    ConfigError,
    DnsServer,
    Fleet,
    HttpServer,
    HttpSite,
    Limits,
    MitmProxy,
    TcpServer,
    answer_query,
)
from probe.lab.servers.config import parse_endpoint
from probe.lab.servers.http import parse_request_head

# --------------------------------------------------------------------------- #
# Clients                                                                      #
# --------------------------------------------------------------------------- #


def tls_client(
    port: int,
    sni: str | None,
    cafile: Path | None = None,
    host: str = LOOPBACK,
    request: bytes | None = None,
) -> tuple[x509.Certificate, bytes]:
    """Handshake (verifying against ``cafile`` when given), optionally send a
    request; returns the peer's leaf and everything read until EOF."""
    context = ssl.create_default_context(cafile=str(cafile) if cafile else None)
    if cafile is None:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif sni is None:
        context.check_hostname = False
    with (
        socket.create_connection((host, port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=sni) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        data = b""
        if request is not None:
            tls.sendall(request)
            while chunk := tls.recv(65536):
                data += chunk
        return x509.load_der_x509_certificate(der), data


def http_exchange(port: int, request: bytes, host: str = LOOPBACK) -> bytes:
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        return data


def get(host_header: str, path: str = "/") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host_header}\r\nConnection: close\r\n\r\n".encode()


def verify(leaf_pem: bytes, root: Path, name: str) -> str | None:
    leaf = x509.load_pem_x509_certificate(leaf_pem)
    store = Store([x509.load_pem_x509_certificate(root.read_bytes())])
    try:
        subject = IPAddress(ipaddress.ip_address(name))
    except ValueError:
        subject = DNSName(name)
    try:
        PolicyBuilder().store(store).build_server_verifier(subject).verify(leaf, [])
        return None
    except VerificationError as exc:
        return str(exc)


def dns_query(port: int, name: str, rdtype: str = "A", tcp: bool = False) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype)
    if tcp:
        return dns.query.tcp(query, LOOPBACK, port=port, timeout=2)
    return dns.query.udp(query, LOOPBACK, port=port, timeout=2)


def addresses(response: dns.message.Message) -> list[str]:
    return [item.to_text() for rrset in response.answer for item in rrset]


# --------------------------------------------------------------------------- #
# PKI                                                                          #
# --------------------------------------------------------------------------- #


def test_pki_leaves_verify_with_the_strict_path_builder(lab_pki: PkiPaths) -> None:
    lab, pinned = lab_pki.lab_root.cert, lab_pki.pinned_root.cert
    leaf = lab_pki.leaves
    assert verify(leaf["www.example.org"].cert.read_bytes(), lab, "www.example.org") is None
    assert verify(leaf["*.whatsapp.net"].cert.read_bytes(), lab, "g.whatsapp.net") is None
    assert verify(leaf[LOOPBACK].cert.read_bytes(), lab, LOOPBACK) is None
    # The pinned service chains to its own root only, as Signal's servers do.
    assert verify(leaf["chat.signal.org"].cert.read_bytes(), pinned, "chat.signal.org") is None
    assert verify(leaf["chat.signal.org"].cert.read_bytes(), lab, "chat.signal.org")
    # Expired, censor-signed and wrong-name leaves are refused.
    assert "not valid" in verify(
        lab_pki.expired["example.org"].cert.read_bytes(), lab, "example.org"
    )  # type: ignore[operator]
    assert verify(lab_pki.censor["example.org"].cert.read_bytes(), lab, "example.org")
    assert verify(leaf["example.org"].cert.read_bytes(), lab, "other.example.org")


def test_pki_leaf_profile_and_manifest(lab_pki: PkiPaths) -> None:
    leaf = x509.load_pem_x509_certificate(lab_pki.leaves["example.org"].cert.read_bytes())
    root = x509.load_pem_x509_certificate(lab_pki.lab_root.cert.read_bytes())
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.oid.ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert lab_pki_module.load_pki(lab_pki.directory) == lab_pki
    assert lab_pki.leaves["*.whatsapp.net"].cert.name == "_wildcard.whatsapp.net.pem"
    assert oct(lab_pki.leaves["example.org"].key.stat().st_mode & 0o777) == "0o600"


def test_pki_is_fast_and_leaves_can_expire_now(tmp_path: Path) -> None:
    started = time.monotonic()
    paths = lab_pki_module.write_pki(tmp_path, [f"host{i}.example" for i in range(20)])
    assert time.monotonic() - started < 2.0
    assert len(paths.leaves) == len(paths.expired) == len(paths.censor) == 20
    ca = lab_pki_module.create_root_ca("test")
    expired = lab_pki_module.issue_leaf(ca, ["a.example"], expired=True).certificate
    assert expired.not_valid_after_utc < datetime.datetime.now(datetime.UTC)
    with pytest.raises(ValueError):
        lab_pki_module.issue_leaf(ca, [])


# --------------------------------------------------------------------------- #
# DNS                                                                          #
# --------------------------------------------------------------------------- #


def test_dns_answers_from_the_zone_over_udp_and_tcp(dns_server: DnsServer) -> None:
    port = dns_server.port
    for tcp in (False, True):
        reply = dns_query(port, "www.example.org", "A", tcp)
        assert reply.rcode() == dns.rcode.NOERROR and addresses(reply) == ["127.0.0.1"]
        assert reply.flags & dns.flags.AA
    assert addresses(dns_query(port, "www.example.org", "AAAA")) == ["::1"]
    chained = dns_query(port, "alias.example.org", "A")
    assert addresses(chained) == ["www.example.org.", "127.0.0.1"]
    assert dns_query(port, "nowhere.example.org").rcode() == dns.rcode.NXDOMAIN
    nodata = dns_query(port, "example.org", "AAAA")
    assert nodata.rcode() == dns.rcode.NOERROR and nodata.answer == []


def test_dns_lying_resolver_behaviours(dns_server: DnsServer) -> None:
    port = dns_server.port
    assert dns_query(port, "blocked.example").rcode() == dns.rcode.NXDOMAIN
    assert addresses(dns_query(port, "forged.example")) == ["10.10.34.35"]
    assert addresses(dns_query(port, "forged.example", "AAAA")) == []  # nothing of that family
    with pytest.raises(dns.exception.Timeout):
        dns.query.udp(dns.message.make_query("dropped.example", "A"), LOOPBACK, port=port,
                      timeout=0.3)  # fmt: skip


@pytest.mark.parametrize(
    ("behaviour", "rcode", "answer"),
    [
        ("servfail", dns.rcode.SERVFAIL, []),
        ("refused", dns.rcode.REFUSED, []),
        ({"forge": "127.0.0.1", "ttl": 5}, dns.rcode.NOERROR, ["127.0.0.1"]),
        ("answer", dns.rcode.NOERROR, ["192.0.2.1"]),
    ],
)
def test_dns_answer_query_is_pure(behaviour: object, rcode: int, answer: list[str]) -> None:
    from probe.lab.servers.dns import parse_behaviours, parse_zone

    zone = parse_zone({"*.example.net": {"A": "192.0.2.1"}})
    behaviours = parse_behaviours({"*.example.net": behaviour, "*": "refused"})
    reply = answer_query(dns.message.make_query("a.b.example.net", "A"), zone, behaviours)
    assert reply is not None and reply.rcode() == rcode and addresses(reply) == answer
    other = answer_query(dns.message.make_query("example.com", "A"), zone, behaviours)
    assert other is not None and other.rcode() == dns.rcode.REFUSED  # the "*" default


def test_dns_behaviour_file_reloads_without_restart(tmp_path: Path) -> None:
    path = tmp_path / "behaviours.json"
    zone = {"www.example.org": {"A": "127.0.0.1"}}
    with start_dns(zone, {}, behaviour_file=path) as server:
        assert addresses(dns_query(server.port, "www.example.org")) == ["127.0.0.1"]
        staged = tmp_path / "staged.json"
        staged.write_text(json.dumps({"www.example.org": {"forge": "10.10.34.35"}}))
        staged.replace(path)  # atomic, as the lab switches scenarios
        assert addresses(dns_query(server.port, "www.example.org")) == ["10.10.34.35"]
        staged.write_text(json.dumps({"www.example.org": "nxdomain"}))
        staged.replace(path)
        assert dns_query(server.port, "www.example.org").rcode() == dns.rcode.NXDOMAIN
        path.write_text("{not json")  # a broken file keeps the previous behaviours
        assert dns_query(server.port, "www.example.org").rcode() == dns.rcode.NXDOMAIN
        path.unlink()
        assert addresses(dns_query(server.port, "www.example.org")) == ["127.0.0.1"]


def test_dns_ignores_garbage_and_serves_ipv6() -> None:
    with start_dns({"x.example": {"A": "192.0.2.7"}}, host=LOOPBACK6) as server:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.settimeout(0.3)
            sock.sendto(b"\x00\x01garbage", (LOOPBACK6, server.port))
            with pytest.raises(TimeoutError):
                sock.recv(512)
        query = dns.message.make_query("x.example", "A")
        reply = dns.query.udp(query, LOOPBACK6, port=server.port, timeout=2)
        assert addresses(reply) == ["192.0.2.7"]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_dns_server_survives_arbitrary_datagrams(data: bytes) -> None:
    server = DnsServer([(LOOPBACK, 0)], {"a.example": {"A": "192.0.2.1"}}, {"*": "answer"})
    for udp in (True, False):
        reply = server.reply(data, udp=udp)
        assert reply is None or dns.message.from_wire(reply).flags & dns.flags.QR


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(["A", "AAAA", "CNAME", "TXT", "ANY", "MX"]), st.booleans())
def test_dns_every_query_type_gets_an_answer(rdtype: str, edns: bool) -> None:
    server = DnsServer([(LOOPBACK, 0)], {"a.example": {"CNAME": "b.example"}, "b.example": {}})
    query = dns.message.make_query("a.example", rdtype, use_edns=edns)
    reply = server.reply(query.to_wire(), udp=True)
    assert reply is not None and dns.message.from_wire(reply).rcode() == dns.rcode.NOERROR


def test_dns_config_errors_say_where() -> None:
    with pytest.raises(ConfigError, match=r"zone\['a.example'\].A: ::1 is not an IPv6|IPv4"):
        DnsServer([(LOOPBACK, 0)], {"a.example": {"A": "::1"}})
    with pytest.raises(ConfigError, match="is not a behaviour"):
        DnsServer([(LOOPBACK, 0)], {}, {"a.example": "lie"})


# --------------------------------------------------------------------------- #
# HTTPS and HTTP                                                               #
# --------------------------------------------------------------------------- #


def test_https_picks_the_certificate_by_sni_and_serves_titles(lab_pki: PkiPaths) -> None:
    site = HttpSite(titles={"www.example.org": "Example WWW"})
    with start_https(lab_pki, site=site) as server:
        root = lab_pki.lab_root.cert
        leaf, body = tls_client(
            server.port, "www.example.org", root, request=get("www.example.org")
        )
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.DNSName) == ["www.example.org"]
        assert b"200 OK" in body and b"<title>Example WWW</title>" in body
        leaf, _ = tls_client(server.port, "example.org", root)
        assert leaf.subject.rfc4514_string() == "CN=example.org"
        # Unknown and absent SNI fall back to the default certificate.
        for sni in ("unknown.example", None):
            leaf, _ = tls_client(server.port, sni)
            assert leaf.subject.rfc4514_string() == "CN=example.org"


@pytest.mark.parametrize(
    ("unknown_sni", "reason"),
    [("unrecognized_name", "TLSV1_UNRECOGNIZED_NAME"),
     ("handshake_failure", "SSLV3_ALERT_HANDSHAKE_FAILURE")],
)  # fmt: skip
def test_https_sends_a_real_alert_for_unknown_sni(
    lab_pki: PkiPaths, unknown_sni: str, reason: str
) -> None:
    with start_https(lab_pki, unknown_sni=unknown_sni) as server:
        with pytest.raises(ssl.SSLError) as caught:
            tls_client(server.port, "blocked.example")
        assert caught.value.reason == reason
        tls_client(server.port, "www.example.org", lab_pki.lab_root.cert)  # known names work


def test_https_wrong_ca_and_expired_certificates_fail_verification(lab_pki: PkiPaths) -> None:
    for kind, message in (("censor", "unable to get local issuer"), ("expired", "expired")):
        with start_https(lab_pki, certificates=kind) as server:
            with pytest.raises(ssl.SSLCertVerificationError, match=message):
                tls_client(server.port, "example.org", lab_pki.lab_root.cert)
            tls_client(server.port, "example.org")  # the handshake itself succeeds


def test_https_download_and_ipv6(lab_pki: PkiPaths) -> None:
    site = HttpSite(download_size=1 << 20)
    with start_https(lab_pki, site=site, host=LOOPBACK6) as server:
        _, body = tls_client(server.port, "example.org", host=LOOPBACK6,
                             request=get("example.org", "/download"))  # fmt: skip
        head, _, payload = body.partition(b"\r\n\r\n")
        assert b"Content-Length: 1048576" in head and len(payload) == 1 << 20


def test_http_pages_redirects_post_and_errors() -> None:
    site = HttpSite(titles={"a.example": "Page A"}, redirects={"/old": "http://a.example/new"})
    with start_http(site) as server:
        port = server.port
        assert b"<title>Page A</title>" in http_exchange(port, get("a.example:80"))
        assert b"<title>probe lab</title>" in http_exchange(port, get("b.example"))
        redirect = http_exchange(port, get("a.example", "/old"))
        assert (
            redirect.startswith(b"HTTP/1.1 302") and b"Location: http://a.example/new" in redirect
        )
        download = http_exchange(port, get("a.example", "/download?bytes=1000"))
        assert download.endswith(b"\r\n\r\n" + (bytes(range(256)) * 4)[:1000])
        # Telegram-like POST handling: 501 with a length, 411 without.
        post = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nConnection: close\r\n\r\nabcd"
        assert http_exchange(port, post).startswith(b"HTTP/1.1 501 Not Implemented")
        bare = b"POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        assert http_exchange(port, bare).startswith(b"HTTP/1.1 411 Length Required")
        assert http_exchange(port, b"NONSENSE\r\n\r\n").startswith(b"HTTP/1.1 400")
        head = http_exchange(port, b"HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert head.endswith(b"\r\n\r\n") and b"Content-Length: " in head


def test_http_bounds_headers_and_bodies() -> None:
    limits = Limits(max_request=1000, idle_timeout=2)
    with running(lambda: HttpServer([(LOOPBACK, 0)], limits=limits)) as server:
        big = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n"
        assert http_exchange(server.port, big).startswith(b"HTTP/1.1 413")
        huge_head = b"GET / HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n"
        assert http_exchange(server.port, huge_head).startswith(b"HTTP/1.1 400")
    request = parse_request_head(b"GET / HTTP/1.1\r\nHost: [2001:db8::1]:8080\r\n\r\n")
    assert request.host == "2001:db8::1"


def test_http_keep_alive_serves_several_requests(http_server: object) -> None:
    port = http_server.port  # type: ignore[attr-defined]
    request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection((LOOPBACK, port), timeout=5) as sock:
        sock.sendall(request * 2 + get("x"))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.count(b"HTTP/1.1 200 OK") == 3


# --------------------------------------------------------------------------- #
# MTProto                                                                      #
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("transport", mtproto.TRANSPORTS)
def test_mtproto_round_trip(mtproto_server: object, transport: str) -> None:
    port = mtproto_server.port  # type: ignore[attr-defined]
    with socket.create_connection((LOOPBACK, port), timeout=5) as sock:
        for initial in (True, False):  # two exchanges on one connection
            nonce = mtproto.new_nonce()
            sock.sendall(mtproto.frame(mtproto.req_pq_multi(nonce), transport, initial=initial))
            data = b""
            while True:
                data += sock.recv(4096)
                try:
                    result = mtproto.parse_res_pq(data, transport, nonce)
                    break
                except mtproto.MtprotoError as exc:
                    assert exc.reason == "truncated"
            assert result.nonce == nonce and result.fingerprints


def test_mtproto_port_also_speaks_http_and_rejects_other_messages(mtproto_server: object) -> None:
    port = mtproto_server.port  # type: ignore[attr-defined]
    post = b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    answer = http_exchange(port, post)
    assert answer.startswith(b"HTTP/1.1 501") and b"nginx/0.3.33" in answer
    wrong = mtproto.frame_intermediate(mtproto.res_pq(bytes(16), bytes(16), b"", []))
    reply = http_exchange(port, wrong)
    assert reply == mtproto.frame_intermediate(mtproto.transport_error(-404), initial=False)
    assert http_exchange(port, b"\x16\x03\x01garbage-obfuscated") == b""


# --------------------------------------------------------------------------- #
# TCP and hostile peers                                                        #
# --------------------------------------------------------------------------- #


def test_tcp_echo() -> None:
    with start_tcp("echo") as server, socket.create_connection((LOOPBACK, server.port)) as sock:
        sock.sendall(b"ping")
        assert sock.recv(16) == b"ping"


def test_reset_server_really_resets(reset_server: object) -> None:
    port = reset_server.port  # type: ignore[attr-defined]
    with socket.create_connection((LOOPBACK, port), timeout=5) as sock:
        sock.sendall(b"\x16\x03\x01 a ClientHello")
        with pytest.raises(ConnectionResetError):
            sock.recv(16)


def test_reset_on_accept() -> None:
    # On loopback the RST can beat connect() back to user space, so the reset
    # shows up either there or on the first read.
    with (
        start_tcp("reset_on_accept") as server,
        pytest.raises(ConnectionResetError),
        socket.create_connection((LOOPBACK, server.port), timeout=5) as sock,
    ):
        sock.recv(16)


def test_silent_server_never_sends(silent_server: object) -> None:
    port = silent_server.port  # type: ignore[attr-defined]
    with socket.create_connection((LOOPBACK, port), timeout=0.3) as sock:
        sock.sendall(b"hello")
        with pytest.raises(TimeoutError):
            sock.recv(16)


def test_eof_server_closes_cleanly(eof_server: object) -> None:
    port = eof_server.port  # type: ignore[attr-defined]
    with socket.create_connection((LOOPBACK, port), timeout=5) as sock:
        sock.sendall(b"\x16\x03\x01 a ClientHello")
        assert sock.recv(16) == b""  # EOF, not a reset


def test_eof_server_gives_tls_clients_an_eof_not_a_reset(eof_server: object) -> None:
    port = eof_server.port  # type: ignore[attr-defined]
    with (
        socket.create_connection((LOOPBACK, port), timeout=5) as raw,
        pytest.raises(ssl.SSLEOFError),
    ):
        ssl.create_default_context().wrap_socket(raw, server_hostname="x.example")


def test_closed_port_refuses(closed_port: int) -> None:
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((LOOPBACK, closed_port), timeout=2)
    with refused_port(LOOPBACK6) as port, pytest.raises(ConnectionRefusedError):
        socket.create_connection((LOOPBACK6, port), timeout=2)


def test_limits_turn_away_extra_connections_and_idle_ones() -> None:
    limits = Limits(max_connections=1, idle_timeout=0.3, lifetime=5)
    with (
        start_tcp("echo", limits=limits) as server,
        socket.create_connection((LOOPBACK, server.port), timeout=5) as first,
    ):
        first.sendall(b"a")
        assert first.recv(1) == b"a"
        with (
            socket.create_connection((LOOPBACK, server.port), timeout=5) as second,
            pytest.raises(ConnectionResetError),
        ):
            second.recv(1)
        assert server.turned_away == 1
        first.settimeout(2)
        assert first.recv(1) == b""  # closed by the idle timeout


# --------------------------------------------------------------------------- #
# MITM                                                                         #
# --------------------------------------------------------------------------- #


def test_mitm_forges_a_censor_certificate_and_relays(lab_pki: PkiPaths) -> None:
    site = HttpSite(titles={"www.example.org": "The real page"})
    with (
        start_https(lab_pki, site=site) as origin,
        start_mitm(lab_pki, (LOOPBACK, origin.port)) as proxy,
    ):
        with pytest.raises(ssl.SSLCertVerificationError):
            tls_client(proxy.port, "www.example.org", lab_pki.lab_root.cert)
        leaf, body = tls_client(
            proxy.port, "www.example.org", lab_pki.censor_root.cert, request=get("www.example.org")
        )
        root = x509.load_pem_x509_certificate(lab_pki.censor_root.cert.read_bytes())
        assert leaf.issuer == root.subject
        assert b"<title>The real page</title>" in body
        pem = leaf.public_bytes(Encoding.PEM)
        assert verify(pem, lab_pki.censor_root.cert, "www.example.org") is None
        again, _ = tls_client(proxy.port, "www.example.org")
        assert again == leaf  # cached per name
        assert proxy.intercepted[-3:] == ["www.example.org"] * 3


def test_mitm_without_an_upstream_closes_after_the_handshake(lab_pki: PkiPaths) -> None:
    # original_destination without netfilter state has nowhere to go: no loop, no hang.
    def factory() -> MitmProxy:
        return MitmProxy(
            [(LOOPBACK, 0)], lab_pki.censor_root, original_destination=True, limits=TEST_LIMITS
        )

    with running(factory) as proxy:
        leaf, body = tls_client(proxy.port, "chat.example", request=get("chat.example"))
        assert body == b"" and "chat.example" in leaf.subject.rfc4514_string()


def test_binding_in_use_fails_cleanly_and_freebind_allows_lab_addresses() -> None:
    with start_tcp("echo") as server:
        with pytest.raises(OSError), running(lambda: TcpServer([(LOOPBACK, server.port)])):
            pass
        # DNS needs UDP and TCP on one port; TCP is taken here, so it must not start.
        with pytest.raises(OSError), running(lambda: DnsServer([(LOOPBACK, server.port)], {})):
            pass
    # A lab address not configured (yet) on any interface can still be bound.
    with running(lambda: TcpServer([("198.51.100.77", 0), ("2001:db8::77", 0)])) as server:
        assert [host for host, _ in server.endpoints] == ["198.51.100.77", "2001:db8::77"]


# --------------------------------------------------------------------------- #
# Configuration and the CLI                                                    #
# --------------------------------------------------------------------------- #


def test_endpoints_and_config_errors(tmp_path: Path, lab_pki: PkiPaths) -> None:
    assert parse_endpoint("[2001:db8::1]:53", "x") == ("2001:db8::1", 53)
    assert parse_endpoint("198.51.100.7:443", "x") == ("198.51.100.7", 443)
    for bad, message in (
        ("2001:db8::1:53", "brackets"),
        ("host:80", "not an IP"),
        ("127.0.0.1:70000", "out of range"),
    ):
        with pytest.raises(ConfigError, match=message):
            parse_endpoint(bad, "x")
    cases = [
        ({"servers": [{"kind": "ftp", "listen": ["127.0.0.1:0"]}]}, r"servers\[0\].kind"),
        ({"servers": [{"kind": "tcp", "listen": ["127.0.0.1:0"], "mdoe": "x"}]}, "mdoe"),
        ({"servers": [{"kind": "https", "listen": ["127.0.0.1:0"]}]}, "missing 'certificates'"),
        ({"servers": [{"kind": "tcp", "listen": []}]}, "at least one"),
        ({"servers": [], "limits": {"idle_timeout": -1}}, "positive"),
        ({"servers": [{"kind": "tcp", "listen": ["127.0.0.1:0"], "mode": "x"}]}, "mode"),
    ]
    for config, message in cases:
        with pytest.raises(ConfigError, match=message):
            Fleet.from_config(config)
    relative = {"servers": [{"kind": "https", "listen": ["127.0.0.1:0"],
                             "certificates": {"a": {"cert": "leaves/a.pem",
                                                    "key": "a.key"}}}]}  # fmt: skip
    with pytest.raises(ConfigError, match="does not exist"):
        Fleet.from_config(relative, base=tmp_path)


def test_cli_runs_a_fleet_reloads_on_sighup_and_stops_on_sigterm(
    tmp_path: Path, lab_pki: PkiPaths
) -> None:
    behaviours = tmp_path / "behaviours.json"
    config = {
        "limits": {"idle_timeout": 5, "lifetime": 20},
        "servers": [
            {"kind": "dns", "listen": ["127.0.0.1:0"], "zone": {"a.example": {"A": "127.0.0.1"}},
             "behaviour_file": "behaviours.json"},
            {"kind": "https", "listen": ["127.0.0.1:0", "[::1]:0"],
             "certificates": {"example.org": lab_pki.leaves["example.org"].to_json()},
             "unknown_sni": "unrecognized_name"},
            {"kind": "mtproto", "listen": ["127.0.0.1:0"]},
            {"kind": "tcp", "listen": ["127.0.0.1:0"], "mode": "reset"},
        ],
    }  # fmt: skip
    with servers_subprocess(config, tmp_path) as running:
        kinds = [server["kind"] for server in running.ready["servers"]]
        assert kinds == ["dns", "https", "mtproto", "tcp"]
        dns_port = running.endpoint(0)[1]
        assert addresses(dns_query(dns_port, "a.example")) == ["127.0.0.1"]
        # Same mtime tick is possible: the size change alone makes the reload happen.
        behaviours.write_text(json.dumps({"a.example": "refused"}))
        os.kill(running.process.pid, signal.SIGHUP)
        assert dns_query(dns_port, "a.example").rcode() == dns.rcode.REFUSED
        host, port = running.endpoint(1, 1)
        leaf, _ = tls_client(port, "example.org", lab_pki.lab_root.cert, host=host)
        assert leaf.subject.rfc4514_string() == "CN=example.org"
        running.process.send_signal(signal.SIGTERM)
        assert running.process.wait(5) == 0


def test_cli_exits_by_itself_and_reports_config_errors(tmp_path: Path) -> None:
    config = {"servers": [{"kind": "tcp", "listen": ["127.0.0.1:0"]}]}
    with servers_subprocess(config, tmp_path, duration=0.5) as running:
        assert running.process.wait(5) == 0
    import subprocess
    import sys

    (tmp_path / "bad.json").write_text('{"servers": [{"kind": "tcp", "listen": ["nowhere"]}]}')
    result = subprocess.run(
        [sys.executable, "-m", "probe.lab.servers", "--config", str(tmp_path / "bad.json"),
         "--duration", "5"],
        check=False, capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    assert result.returncode == 2
    assert "servers[0].listen[0]" in result.stderr and "ADDRESS:PORT" in result.stderr


def test_struct_sizes_used_by_the_reset_helper() -> None:
    assert len(struct.pack("ii", 1, 0)) == 8  # struct linger on Linux
