"""The lab's UDP servers on loopback: STUN/TURN/echo answers, flow cuts, forged
answers, and the HTTP/3 origin, each started from the same JSON as the lab uses."""

from __future__ import annotations

import asyncio
import socket
import ssl

import pytest
from aioice import stun
from aioquic.asyncio import connect
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import StreamDataReceived
from servers import LOOPBACK, LOOPBACK6, TEST_LIMITS, running

from probe.lab.servers import ConfigError, build_server
from probe.lab.servers.quic import QuicHttpServer
from probe.lab.servers.stun import StunServer


def exchange(host: str, port: int, datagrams: list[bytes], wait: float = 0.3) -> list[bytes]:
    """Send each datagram on one socket; every datagram received within ``wait``
    after the last send."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.connect((host, port))
        for data in datagrams:
            sock.send(data)
        sock.settimeout(wait)
        answers = []
        while True:
            try:
                answers.append(sock.recv(4096))
            except TimeoutError:
                return answers


def binding() -> stun.Message:
    return stun.Message(stun.Method.BINDING, stun.Class.REQUEST)


@pytest.mark.parametrize("host", [LOOPBACK, LOOPBACK6])
def test_binding_success_carries_the_source_address(host: str) -> None:
    with running(lambda: StunServer([(host, 0)], limits=TEST_LIMITS)) as server:
        request = binding()
        (answer,) = exchange(host, server.port, [bytes(request)])
    message = stun.parse_message(answer)
    assert message.message_class == stun.Class.RESPONSE
    assert message.transaction_id == request.transaction_id
    assert message.attributes["XOR-MAPPED-ADDRESS"][0] == host


def test_allocate_is_challenged_with_realm_and_nonce() -> None:
    with running(lambda: StunServer([(LOOPBACK, 0)], limits=TEST_LIMITS)) as server:
        request = stun.Message(stun.Method.ALLOCATE, stun.Class.REQUEST,
                               attributes={"REQUESTED-TRANSPORT": 17 << 24})
        (answer,) = exchange(LOOPBACK, server.port, [bytes(request)])
    message = stun.parse_message(answer)
    assert message.message_class == stun.Class.ERROR
    assert message.error_code == 401
    assert message.attributes["REALM"] and message.attributes["NONCE"]


def test_cut_flow_echo_and_forged_second_answer() -> None:
    with running(lambda: StunServer([(LOOPBACK, 0)], answer_first=3, limits=TEST_LIMITS)) as cut:
        answers = exchange(LOOPBACK, cut.port, [b"x%d" % i for i in range(6)])
    assert answers == [b"x0", b"x1", b"x2"]
    with running(lambda: StunServer([(LOOPBACK, 0)], forge="203.0.113.99",
                                    limits=TEST_LIMITS)) as forged:
        answers = exchange(LOOPBACK, forged.port, [bytes(binding())])
    mapped = {stun.parse_message(a).attributes["XOR-MAPPED-ADDRESS"][0] for a in answers}
    assert mapped == {LOOPBACK, "203.0.113.99"}


def test_config_builds_stun_and_quic(lab_pki) -> None:
    server = build_server({"kind": "stun", "listen": ["127.0.0.1:0"], "answer_first": 5,
                           "turn": "open", "forge": "2001:db8::9"}, "s")
    assert isinstance(server, StunServer) and server.forge == "2001:db8::9"
    leaf = lab_pki.leaves["www.example.org"]
    server = build_server({"kind": "quic", "listen": ["[::1]:0"], "body_size": 100,
                           "certificate": {"cert": str(leaf.cert), "key": str(leaf.key)}}, "q")
    assert isinstance(server, QuicHttpServer)
    with pytest.raises(ConfigError, match="turn"):
        build_server({"kind": "stun", "listen": ["127.0.0.1:0"], "turn": "maybe"}, "s")


async def h3_get(port: int, cafile: str) -> tuple[dict[bytes, bytes], bytes]:
    configuration = QuicConfiguration(is_client=True, alpn_protocols=list(H3_ALPN),
                                      server_name="www.example.org")
    configuration.load_verify_locations(cafile)
    configuration.verify_mode = ssl.CERT_REQUIRED
    async with asyncio.timeout(3), connect(LOOPBACK, port, configuration=configuration) as client:
        http = H3Connection(client._quic)
        headers: dict[bytes, bytes] = {}
        body = bytearray()
        done = asyncio.Event()
        original = client.quic_event_received

        def on_event(event):
            for h3 in http.handle_event(event):
                if isinstance(h3, HeadersReceived):
                    headers.update(h3.headers)
                if isinstance(h3, DataReceived):
                    body.extend(h3.data)
                if getattr(h3, "stream_ended", False):
                    done.set()
            if not isinstance(event, StreamDataReceived):  # no asyncio streams here
                original(event)

        client.quic_event_received = on_event  # type: ignore[method-assign]
        stream = client._quic.get_next_available_stream_id()
        http.send_headers(stream, [(b":method", b"GET"), (b":scheme", b"https"),
                                   (b":authority", b"www.example.org"), (b":path", b"/")],
                          end_stream=True)
        client.transmit()
        await done.wait()
    return headers, bytes(body)


@pytest.mark.parametrize("body_size", [None, 300_000])
def test_http3_get(lab_pki, body_size) -> None:
    leaf = lab_pki.leaves["www.example.org"]
    with running(lambda: QuicHttpServer([(LOOPBACK, 0)], leaf, body_size=body_size,
                                        limits=TEST_LIMITS)) as server:
        headers, body = asyncio.run(h3_get(server.port, str(lab_pki.lab_root.cert)))
    assert headers[b":status"] == b"200"
    assert len(body) == (body_size or len(body)) and body
