"""Live TLS handshakes: record what the server presents, verify nothing here.

The handshake runs without certificate verification so the peer's whole chain
is recorded even when it is a censor's interception certificate: that chain is
the evidence. ``probe.certificates`` verifies it afterwards, as a pure function
that a replay can run again.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import ssl

from probe.net import failures, pacing
from probe.net.network import Timing, TlsRequest, TlsResult
from probe.net.tcp import close_stream, open_stream

MAX_CHAIN = 10


@functools.lru_cache(maxsize=16)
def unverified_context(alpn: tuple[str, ...]) -> ssl.SSLContext:
    """One context per ALPN list, shared by handshakes (creating one costs 0.1 ms).
    Sharing does not resume sessions: a client resumes only when handed a session."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if alpn:
        context.set_alpn_protocols(list(alpn))
    return context


def peer_chain(ssl_object) -> tuple[str, ...]:
    """The chain as sent by the peer, leaf first, base64 DER."""
    chain: list[bytes] = []
    inner = getattr(ssl_object, "_sslobj", None)
    getter = getattr(inner, "get_unverified_chain", None)
    if getter is not None:  # CPython >= 3.10 exposes the unverified chain privately
        try:
            for cert in getter() or []:
                chain.append(cert.public_bytes(ssl._ssl.ENCODING_DER))  # type: ignore[attr-defined]
        except Exception:  # fall back to the leaf alone
            chain = []
    if not chain:
        leaf = ssl_object.getpeercert(binary_form=True)
        if leaf:
            chain.append(leaf)
    return tuple(base64.b64encode(der).decode() for der in chain[:MAX_CHAIN])


async def handshake(request: TlsRequest, timeout: float, clock) -> TlsResult:
    t0 = clock()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    connect, reader, writer = await open_stream(request.address, request.port, timeout, clock)
    if connect.failure is not None:
        return TlsResult(
            request, connect, connect.failure, None, None, None, (), Timing(t0, clock())
        )
    failure = version = cipher = protocol = None
    chain: tuple[str, ...] = ()
    try:
        # the ClientHello starts the bytes (the server's chain): paced from here on
        deadline += await pacing.before_payload()
        async with asyncio.timeout_at(deadline):
            await writer.start_tls(
                unverified_context(request.alpn), server_hostname=request.sni or None
            )
        ssl_object = writer.get_extra_info("ssl_object")
        version = ssl_object.version()
        cipher = (ssl_object.cipher() or (None,))[0]
        protocol = ssl_object.selected_alpn_protocol()
        chain = peer_chain(ssl_object)
    except Exception as exc:
        failure = failures.classify(exc)
    ended = clock()  # before closing: a silent peer may keep close() waiting
    await close_stream(writer)
    return TlsResult(request, connect, failure, version, cipher, protocol, chain, Timing(t0, ended))
