"""Small independent observations for the lab's self-tests.

A scenario's self-test must not trust the code it is there to check, so this
module uses none of the probe's network code: raw dnspython messages over a
UDP socket (collecting every reply, so an injected answer and the real one are
both seen), blocking socket connects, an unverified ``ssl`` handshake that
reports the issuer of the peer's certificate, a hand-written HTTP/1.1 GET, a
timed download, STUN Binding and TURN Allocate requests built here by hand
(RFC 5389, RFC 5766) on a connected UDP socket, a counted UDP flow, and a QUIC
handshake with an HTTP/3 GET straight from aioquic. Each observation turns into
one short outcome string ("nxdomain", "injected", "answer 203.0.113.21",
"refused", "timeout", "issuer probe lab censor root", "403", "kbit 143",
"mapped 198.51.100.2", "cut 20/40", "h3 200"...).

It runs inside a lab namespace: ``ip netns exec plab-client python -m
probe.lab.observe`` reads a JSON list of checks on stdin and prints a JSON list
of outcomes, each check with its own short deadline, all in parallel.
"""

from __future__ import annotations

import json
import socket
import ssl
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

LINGER = 0.6  # seconds to wait for more replies after the first (injector hold: 0.3)


@dataclass(frozen=True)
class Check:
    """One observation and the outcome the scenario expects of it.

    kind: dns (``target`` is a name, ``qtype`` A/AAAA, asked to ``resolver``), dnsloss
    (the same, asked twenty times: "lossy" when some went unanswered),
    connect, tls (``sni``), http (GET ``path`` with Host ``host``), download
    (over TLS, measured for ``seconds``), mtproto (one req_pq_multi), stun (one
    Binding Request on UDP ``port``), turn (one Allocate), udpflow (``count``
    datagrams, ``sni`` "stun" for Binding Requests or "" for echo payloads), quic
    (handshake with ``sni`` and an HTTP/3 GET of ``path``). ``expect``
    is compared with the outcome: an exact string, or for "kbit" outcomes ``kbit<N`` / ``kbit>N``.
    ``contains`` must also appear in an http response (head or body).
    """

    kind: str
    target: str
    expect: str
    port: int = 0
    qtype: str = "A"
    resolver: str = ""
    sni: str = ""
    host: str = ""
    path: str = "/"
    contains: str = ""
    vantage: str = "client"
    timeout: float = 1.5
    seconds: float = 2.0
    count: int = 40  # udpflow: datagrams in the flow, one every 0.05 s

    def label(self) -> str:
        where = f"{self.target}:{self.port}" if self.port else self.target
        extra = f" {self.qtype} @{self.resolver}" if self.kind == "dns" else ""
        return f"[{self.vantage}] {self.kind} {where}{extra}"


def _family(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def _socket_error(exc: OSError) -> str:
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, ConnectionResetError):
        return "reset"
    if isinstance(exc, ssl.SSLEOFError):
        return "eof"
    if getattr(exc, "errno", None) in (101, 113, 99):
        return "unreachable"
    if getattr(exc, "errno", None) == 13:  # EACCES: ICMPv6 administratively prohibited
        return "prohibited"
    return f"error {exc}"


DNS_LOSS_QUERIES = 20


def observe_dns_loss(check: Check) -> str:
    """``DNS_LOSS_QUERIES`` queries for ``target``, one after another, each waiting
    ``timeout`` for its answer: "no loss", "lossy" (some unanswered) or "timeout"."""
    lost = 0
    for _ in range(DNS_LOSS_QUERIES):
        outcome = observe_dns(check)
        if outcome == "timeout":
            lost += 1
        elif not outcome.startswith("answer"):
            return outcome
    if lost == DNS_LOSS_QUERIES:
        return "timeout"
    return "lossy" if lost else "no loss"


def observe_dns(check: Check) -> str:
    import dns.message
    import dns.rcode
    import dns.rdatatype

    query = dns.message.make_query(check.target, check.qtype)
    sock = socket.socket(_family(check.resolver), socket.SOCK_DGRAM)
    replies: list[str] = []
    try:
        sock.sendto(query.to_wire(), (check.resolver, 53))
        deadline = time.monotonic() + check.timeout
        while (left := deadline - time.monotonic()) > 0:
            if replies:  # linger after the first reply for a later, different one
                left = min(left, LINGER)
            sock.settimeout(left)
            try:
                data = sock.recv(4096)
            except TimeoutError:
                break
            reply = dns.message.from_wire(data)
            if reply.id != query.id:
                continue
            if reply.rcode() != dns.rcode.NOERROR:
                replies.append(dns.rcode.to_text(reply.rcode()).lower())
                continue
            values = sorted(
                item.to_text()
                for rrset in reply.answer
                if rrset.rdtype == dns.rdatatype.from_text(check.qtype)
                for item in rrset
            )
            replies.append("answer " + " ".join(values) if values else "empty")
    except OSError as exc:
        return _socket_error(exc)
    finally:
        sock.close()
    if not replies:
        return "timeout"
    if len(set(replies)) > 1:
        return "injected " + " | ".join(replies)
    return replies[0]


def _connect(address: str, port: int, timeout: float) -> socket.socket:
    sock = socket.socket(_family(address), socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect((address, port))
    except BaseException:
        sock.close()
        raise
    return sock


def observe_connect(check: Check) -> str:
    try:
        _connect(check.target, check.port, check.timeout).close()
    except OSError as exc:
        return _socket_error(exc)
    return "ok"


def _tls(check: Check) -> ssl.SSLSocket:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    raw = _connect(check.target, check.port or 443, check.timeout)
    try:
        return context.wrap_socket(raw, server_hostname=check.sni or None)
    except BaseException:
        raw.close()
        raise


def observe_tls(check: Check) -> str:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        tls = _tls(check)
    except (OSError, ssl.SSLError) as exc:
        if isinstance(exc, ssl.SSLError) and not isinstance(exc, ssl.SSLEOFError):
            return f"tls-error {exc.reason}"
        return _socket_error(exc)
    try:
        der = tls.getpeercert(binary_form=True)
    finally:
        tls.close()
    if der is None:
        return "no certificate"
    issuer = x509.load_der_x509_certificate(der).issuer
    names = issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    return "issuer " + (str(names[0].value) if names else issuer.rfc4514_string())


def observe_mtproto(check: Check) -> str:
    """Send one req_pq_multi in the intermediate transport, built here by hand from
    the MTProto documentation (auth_key_id 0, message id, length, constructor
    0xbe7e8ef1, a 16-byte nonce): "answer" when anything comes back."""
    import os
    import struct

    message = struct.pack("<qqi", 0, int(time.time()) << 32, 20) + struct.pack(
        "<I", 0xBE7E8EF1) + os.urandom(16)
    payload = b"\xee\xee\xee\xee" + struct.pack("<I", len(message)) + message
    try:
        with _connect(check.target, check.port, check.timeout) as sock:
            sock.sendall(payload)
            data = sock.recv(4096)
    except OSError as exc:
        return _socket_error(exc)
    return "answer" if data else "eof"


def _read_all(sock: socket.socket, limit: int = 1 << 16) -> bytes:
    data = b""
    while len(data) < limit:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            if not data:
                raise  # not one byte before the deadline: a timeout, not an EOF
            break
        if not chunk:
            break
        data += chunk
    return data


def observe_http(check: Check) -> tuple[str, str]:
    request = (
        f"GET {check.path} HTTP/1.1\r\nHost: {check.host or check.target}\r\n"
        "User-Agent: probe-lab-selftest\r\nConnection: close\r\n\r\n"
    ).encode()
    try:
        sock = _connect(check.target, check.port or 80, check.timeout)
        with sock:
            sock.sendall(request)
            data = _read_all(sock)
    except OSError as exc:
        return _socket_error(exc), ""
    if not data:
        return "eof", ""
    status_line = data.split(b"\r\n", 1)[0].decode(errors="replace")
    parts = status_line.split()
    status = parts[1] if len(parts) > 1 else "invalid"
    return status, data.decode(errors="replace")


def observe_download(check: Check) -> str:
    try:
        tls = _tls(check)
    except (OSError, ssl.SSLError) as exc:
        return _socket_error(exc)
    received = 0
    with tls:
        tls.sendall(
            f"GET {check.path} HTTP/1.1\r\nHost: {check.sni or check.target}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        start = time.monotonic()
        tls.settimeout(0.5)
        while time.monotonic() - start < check.seconds:
            try:
                chunk = tls.recv(65536)
            except TimeoutError:
                continue
            except OSError as exc:
                return _socket_error(exc)
            if not chunk:
                break
            received += len(chunk)
        elapsed = max(time.monotonic() - start, 1e-3)
    return f"kbit {round(received * 8 / elapsed / 1000)}"


STUN_COOKIE = b"\x21\x12\xa4\x42"


def _stun_request(kind: int, transaction: bytes) -> bytes:
    """A STUN request without attributes (RFC 5389 6): type, length 0, cookie, id."""
    return kind.to_bytes(2, "big") + b"\x00\x00" + STUN_COOKIE + transaction


def _stun_attributes(message: bytes) -> dict[int, bytes]:
    attributes: dict[int, bytes] = {}
    offset = 20
    while offset + 4 <= len(message):
        kind = int.from_bytes(message[offset:offset + 2], "big")
        length = int.from_bytes(message[offset + 2:offset + 4], "big")
        attributes.setdefault(kind, message[offset + 4:offset + 4 + length])
        offset += 4 + (length + 3) // 4 * 4
    return attributes


def _mapped(message: bytes) -> str:
    """The XOR-MAPPED-ADDRESS of a Binding Success, as text."""
    import ipaddress

    value = _stun_attributes(message).get(0x0020, b"")
    if len(value) not in (8, 20):
        return "none"
    key = STUN_COOKIE + message[8:20]
    packed = bytes(a ^ b for a, b in zip(value[4:], key, strict=False))
    return str(ipaddress.ip_address(packed))


def _udp_socket(check: Check) -> socket.socket:
    sock = socket.socket(_family(check.target), socket.SOCK_DGRAM)
    sock.connect((check.target, check.port))  # connected: ICMP errors reach recv()
    return sock


def _stun_exchange(check: Check, kind: int) -> list[bytes]:
    """Every answer to one request with our transaction id, within the timeout
    (lingering after the first for a second, different one)."""
    import os

    transaction = os.urandom(12)
    answers: list[bytes] = []
    with _udp_socket(check) as sock:
        sock.send(_stun_request(kind, transaction))
        deadline = time.monotonic() + check.timeout
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(min(left, LINGER) if answers else left)
            try:
                data = sock.recv(2048)
            except TimeoutError:
                break
            if data[4:8] == STUN_COOKIE and data[8:20] == transaction:
                answers.append(data)
    return answers


def observe_stun(check: Check) -> str:
    """"mapped ADDRESS" for one Binding Success, "injected A | B" for two
    different ones, "timeout", "refused" (ICMP port unreachable)..."""
    try:
        answers = _stun_exchange(check, 0x0001)
    except OSError as exc:
        return _socket_error(exc)
    mapped = list(dict.fromkeys(
        _mapped(a) for a in answers if a[:2] == b"\x01\x01"))
    if not answers:
        return "timeout"
    if not mapped:
        return "invalid"
    if len(mapped) > 1:
        return "injected " + " | ".join(mapped)
    return f"mapped {mapped[0]}"


def observe_turn(check: Check) -> str:
    """"challenge" for a 401 carrying REALM and NONCE (RFC 5766 6.2, without
    credentials nothing is allocated), else what came back."""
    try:
        answers = _stun_exchange(check, 0x0003)
    except OSError as exc:
        return _socket_error(exc)
    if not answers:
        return "timeout"
    attributes = _stun_attributes(answers[0])
    error = attributes.get(0x0009, b"")
    code = error[2] * 100 + error[3] if len(error) >= 4 else 0
    if answers[0][:2] == b"\x01\x13" and code == 401 and 0x0014 in attributes \
            and 0x0015 in attributes:
        return "challenge"
    return f"answer {answers[0][:2].hex()} {code}"


def observe_udp_flow(check: Check) -> str:
    """``count`` datagrams on one socket, one every 0.05 s; "all N" when every
    one was answered, "cut K/N" when the first K were and then none, "none",
    "some K/N" for holes that are not a cut, "refused all" when (nearly) every
    datagram drew an ICMP port unreachable (none lost to the kernel's ICMP rate
    limit), "refused K/N" when only some did, or another socket error."""
    import os

    stun = check.sni == "stun"
    answered: set[int] = set()
    tokens: dict[bytes, int] = {}
    refused = 0
    with _udp_socket(check) as sock:
        sock.settimeout(0.05)
        try:
            end = time.monotonic() + 0.05 * check.count + check.timeout
            sent = 0
            while time.monotonic() < end:
                if sent < check.count:
                    token = os.urandom(12)
                    tokens[token] = sent
                    try:
                        sock.send(_stun_request(0x0001, token) if stun else
                                  b"probe-lab-flow " + token + os.urandom(160))
                    except ConnectionRefusedError:  # the previous datagram's ICMP error
                        refused += 1
                    sent += 1
                try:
                    data = sock.recv(2048)
                except TimeoutError:
                    continue
                except ConnectionRefusedError:
                    refused += 1
                    continue
                key = data[8:20] if stun else data[15:27]
                if key in tokens:
                    answered.add(tokens[key])
        except OSError as exc:
            return _socket_error(exc)
    count = check.count
    if refused and not answered:
        return "refused all" if refused >= count * 0.9 else f"refused {refused}/{count}"
    if len(answered) == count:
        return f"all {count}"
    if not answered:
        return "none"
    if answered == set(range(len(answered))):
        return f"cut {len(answered)}/{count}"
    return f"some {len(answered)}/{count}"


def observe_quic(check: Check) -> str:
    """A QUIC handshake (SNI ``sni``, ALPN h3, no verification) and an HTTP/3
    GET of ``path``: "h3 STATUS", "timeout", or "error ..."."""
    import asyncio

    return asyncio.run(_quic(check))


async def _quic(check: Check) -> str:
    import asyncio

    from aioquic.asyncio.client import connect
    from aioquic.asyncio.protocol import QuicConnectionProtocol
    from aioquic.h3.connection import H3_ALPN, H3Connection
    from aioquic.h3.events import HeadersReceived
    from aioquic.quic.configuration import QuicConfiguration

    status: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    class Client(QuicConnectionProtocol):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.h3 = H3Connection(self._quic)

        def quic_event_received(self, event) -> None:
            for h3_event in self.h3.handle_event(event):
                if isinstance(h3_event, HeadersReceived) and not status.done():
                    status.set_result(dict(h3_event.headers).get(b":status", b"?").decode())

    configuration = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN,
                                      server_name=check.sni or None,
                                      verify_mode=ssl.CERT_NONE, idle_timeout=check.timeout)
    try:
        async with asyncio.timeout(check.timeout):
            async with connect(check.target, check.port or 443, configuration=configuration,
                               create_protocol=Client) as client:
                assert isinstance(client, Client)
                stream = client._quic.get_next_available_stream_id()
                client.h3.send_headers(
                    stream, [(b":method", b"GET"), (b":scheme", b"https"),
                             (b":authority", (check.sni or check.target).encode()),
                             (b":path", check.path.encode())], end_stream=True)
                client.transmit()
                return f"h3 {await status}"
    except TimeoutError:
        return "timeout"
    except ConnectionError as exc:
        return f"error {exc}"


def observe(check: Check) -> dict:
    started = time.monotonic()
    detail = ""
    if check.kind == "dns":
        outcome = observe_dns(check)
    elif check.kind == "dnsloss":
        outcome = observe_dns_loss(check)
    elif check.kind == "connect":
        outcome = observe_connect(check)
    elif check.kind == "tls":
        outcome = observe_tls(check)
    elif check.kind == "http":
        outcome, detail = observe_http(check)
    elif check.kind == "download":
        outcome = observe_download(check)
    elif check.kind == "mtproto":
        outcome = observe_mtproto(check)
    elif check.kind == "stun":
        outcome = observe_stun(check)
    elif check.kind == "turn":
        outcome = observe_turn(check)
    elif check.kind == "udpflow":
        outcome = observe_udp_flow(check)
    elif check.kind == "quic":
        outcome = observe_quic(check)
    else:
        outcome = f"unknown check kind {check.kind}"
    return {"outcome": outcome, "detail": detail[:4096], "seconds": time.monotonic() - started}


def matches(check: Check, result: dict) -> bool:
    outcome = result["outcome"]
    if check.expect.startswith(("kbit<", "kbit>")) and outcome.startswith("kbit "):
        value, bound = float(outcome.split()[1]), float(check.expect[5:])
        return value < bound if check.expect[4] == "<" else value > bound
    if check.expect.endswith("*"):
        ok = outcome.startswith(check.expect[:-1])
    else:
        ok = outcome == check.expect
    return ok and (not check.contains or check.contains in result.get("detail", ""))


def main() -> int:
    checks = [Check(**item) for item in json.load(sys.stdin)]
    with ThreadPoolExecutor(max_workers=max(1, len(checks))) as pool:
        results = list(pool.map(observe, checks))
    json.dump([{"check": asdict(c), **r} for c, r in zip(checks, results, strict=True)], sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
