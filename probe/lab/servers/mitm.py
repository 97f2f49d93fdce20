"""A TLS-intercepting proxy, as Kazakhstan deployed in 2019.

It terminates the client's TLS with a leaf for the requested SNI, signed on the
fly by the censor root (cached per name, one key for all, as interception boxes
do), opens its own TLS connection to the real server and relays the plaintext
both ways. The probe must see the chain ending in a root it does not trust
(``ssl_unknown_authority``), record the chain as evidence, and never mistake
the relayed page for a success.

Where to connect upstream: ``upstreams[sni]``, else ``upstream``, else (with
``original_destination``) the address the client dialled before netfilter
redirected it (SO_ORIGINAL_DST). A connection with none of these, or one that
would loop back to the proxy itself, is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import shutil
import socket
import ssl
import struct
import sys
import tempfile
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path

from probe.lab import pki
from probe.lab.pki import CertificateAuthority, KeyPair
from probe.lab.servers.https import server_context
from probe.lab.servers.stream import Connection, Endpoint, Limits, StreamServer

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h, and IP6T_SO_ORIGINAL_DST for IPv6


def original_destination(sock: socket.socket) -> Endpoint | None:
    """Where the client meant to connect before a netfilter REDIRECT/DNAT; None
    without NAT state (or off Linux)."""
    try:
        if sock.family == socket.AF_INET6:
            raw = sock.getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, 28)
            port = struct.unpack_from("!H", raw, 2)[0]
            return str(ipaddress.IPv6Address(raw[8:24])), port
        raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
        port = struct.unpack_from("!H", raw, 2)[0]
        return str(ipaddress.IPv4Address(raw[4:8])), port
    except (OSError, ValueError):
        return None


class MitmProxy(StreamServer):
    kind = "mitm"

    def __init__(
        self,
        listen: Sequence[Endpoint],
        ca: CertificateAuthority | KeyPair,
        *,
        upstream: Endpoint | None = None,
        upstreams: Mapping[str, Endpoint] | None = None,
        original_destination: bool = False,
        upstream_tls: bool = True,
        upstream_ca: str | Path | None = None,
        default_name: str = "localhost",
        connect_timeout: float = 5.0,
        cache_size: int = 256,
        limits: Limits | None = None,
    ) -> None:
        super().__init__(listen, limits)
        if isinstance(ca, KeyPair):
            ca = CertificateAuthority.load(ca.cert, ca.key)
        self.ca = ca
        self.upstream = upstream
        self.upstreams = {name.lower(): ep for name, ep in (upstreams or {}).items()}
        self.use_original_destination = original_destination
        self.upstream_tls = upstream_tls
        self.upstream_ca = upstream_ca
        self.default_name = default_name
        self.connect_timeout = connect_timeout
        self.cache_size = cache_size
        self.intercepted: list[str] = []  # SNIs of ClientHellos seen, most recent last (last 100)
        self._key = pki.new_key()
        self._contexts: OrderedDict[str, ssl.SSLContext] = OrderedDict()
        self._directory: Path | None = None
        self._base = server_context(None, alpn=())
        self._base.sni_callback = self._choose

    async def start(self) -> None:
        self._directory = Path(tempfile.mkdtemp(prefix="probe-mitm-"))
        key_path = self._directory / "leaf.key"
        key_path.touch(mode=0o600)
        key_path.write_bytes(pki.private_key_pem(self._key))
        await super().start()

    async def stop(self) -> None:
        await super().stop()
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None

    def context_for(self, name: str) -> ssl.SSLContext:
        """The server context presenting a censor-signed leaf for ``name`` (LRU-cached)."""
        name = name.rstrip(".").lower()
        if name in self._contexts:
            self._contexts.move_to_end(name)
            return self._contexts[name]
        assert self._directory is not None, "start() the proxy first"
        leaf = pki.issue_leaf(self.ca, [name], key=self._key)
        cert_path = self._directory / "leaf.pem"
        cert_path.write_bytes(leaf.certificate_pem)
        context = server_context(KeyPair(cert_path, self._directory / "leaf.key"))
        cert_path.unlink()
        self._contexts[name] = context
        if len(self._contexts) > self.cache_size:
            self._contexts.popitem(last=False)
        return context

    def _choose(self, tls: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> int | None:
        name = server_name or self.default_name
        try:
            tls.context = self.context_for(name)
        except Exception as exc:  # noqa: BLE001 - an exception here would only print and fail
            print(f"mitm: cannot forge a certificate for {name!r}: {exc}", file=sys.stderr)
            return ssl.ALERT_DESCRIPTION_INTERNAL_ERROR
        tls.probe_sni = server_name  # type: ignore[attr-defined]
        self.intercepted = [*self.intercepted[-99:], server_name or ""]
        return None

    def _upstream_for(self, connection: Connection, sni: str | None) -> Endpoint | None:
        target = self.upstreams.get((sni or "").lower(), self.upstream)
        if target is None and self.use_original_destination and connection.socket is not None:
            target = original_destination(connection.socket)
        if target is None or target in self.endpoints or target == connection.local:
            return None  # nowhere to go, or a loop back into this proxy
        return target

    async def handle(self, connection: Connection) -> None:
        tls = await connection.start_tls(self._base)
        sni: str | None = getattr(tls, "probe_sni", None)
        target = self._upstream_for(connection, sni)
        if target is None:
            return
        context: ssl.SSLContext | None = None
        if self.upstream_tls and self.upstream_ca is not None:
            context = ssl.create_default_context(cafile=str(self.upstream_ca))
            context.check_hostname = sni is not None
        elif self.upstream_tls:  # like the real boxes, trust whatever the server shows
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        async with asyncio.timeout(self.connect_timeout):
            reader, writer = await asyncio.open_connection(
                target[0],
                target[1],
                ssl=context,
                server_hostname=sni if context is not None and sni else None,
            )
        try:
            await _relay(connection, reader, writer, self.limits.idle_timeout)
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()


async def _relay(
    connection: Connection,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    idle_timeout: float,
) -> None:
    """Copy both ways until either side ends; at most one 64 KiB chunk in flight each way."""

    async def client_to_upstream() -> None:
        while data := await connection.recv():
            writer.write(data)
            await writer.drain()

    async def upstream_to_client() -> None:
        while True:
            async with asyncio.timeout(idle_timeout):
                data = await reader.read(65536)
            if not data:
                return
            await connection.send(data)

    tasks = [asyncio.create_task(client_to_upstream()), asyncio.create_task(upstream_to_client())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(
                result, (asyncio.CancelledError, OSError, TimeoutError, ssl.SSLError)
            ):
                raise result
