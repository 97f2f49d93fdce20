"""HTTPS origin choosing its certificate by SNI, as a shared hosting front does.

Each configured name has its own leaf; a ClientHello for another name (or
without SNI) gets the default certificate, or, when configured so, a fatal
``unrecognized_name`` or ``handshake_failure`` alert: what many real fronts
answer for a name they do not host, and what the engine must classify as an
alert rather than a reset. A server given a leaf from the censor root is the
"wrong CA" server; one given an expired leaf is the expired server.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping, Sequence
from pathlib import Path

from probe.lab.pki import KeyPair
from probe.lab.servers.http import HttpSite, serve_http
from probe.lab.servers.stream import Connection, Endpoint, Limits, StreamServer

UNKNOWN_SNI = {
    "default": None,
    "unrecognized_name": ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME,
    "handshake_failure": ssl.ALERT_DESCRIPTION_HANDSHAKE_FAILURE,
}


def server_context(pair: KeyPair | None, alpn: Sequence[str] = ("http/1.1",)) -> ssl.SSLContext:
    """A TLS 1.2+ server context for one certificate (or none, for a context
    whose SNI callback always switches away or alerts)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if pair is not None:
        context.load_cert_chain(pair.cert, pair.key)
    if alpn:
        context.set_alpn_protocols(list(alpn))
    return context


def as_key_pair(value: KeyPair | tuple[str | Path, str | Path]) -> KeyPair:
    if isinstance(value, KeyPair):
        return value
    cert, key = value
    return KeyPair(Path(cert), Path(key))


class SniContexts:
    """Picks a context per server name: exact name, then ``*.parent``, then default."""

    def __init__(
        self,
        certificates: Mapping[str, KeyPair | tuple[str | Path, str | Path]],
        default: str | None,
        unknown_sni: str,
        alpn: Sequence[str],
    ) -> None:
        if unknown_sni not in UNKNOWN_SNI:
            raise ValueError(
                f"unknown_sni must be one of {sorted(UNKNOWN_SNI)}, not {unknown_sni!r}"
            )
        if default is not None and default not in certificates:
            raise ValueError(f"default certificate {default!r} is not among {sorted(certificates)}")
        self.contexts = {
            name.lower(): server_context(as_key_pair(pair), alpn)
            for name, pair in certificates.items()
        }
        self.default = self.contexts[default.lower()] if default is not None else None
        self.alert = UNKNOWN_SNI[unknown_sni] or ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        self.fallback_to_default = UNKNOWN_SNI[unknown_sni] is None
        base_pair = as_key_pair(certificates[default]) if default is not None else None
        self.base = server_context(base_pair, alpn)
        self.base.sni_callback = self._choose

    def lookup(self, server_name: str | None) -> ssl.SSLContext | None:
        if server_name is None:
            return self.default
        name = server_name.rstrip(".").lower()
        if name in self.contexts:
            return self.contexts[name]
        if "." in name and f"*.{name.split('.', 1)[1]}" in self.contexts:
            return self.contexts[f"*.{name.split('.', 1)[1]}"]
        return self.default if self.fallback_to_default else None

    def _choose(self, tls: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> int | None:
        context = self.lookup(server_name)
        if context is None:
            return self.alert
        tls.context = context
        return None


class HttpsServer(StreamServer):
    """HTTP/1.1 over TLS with per-SNI certificates; see the module docstring."""

    kind = "https"

    def __init__(
        self,
        listen: Sequence[Endpoint],
        certificates: Mapping[str, KeyPair | tuple[str | Path, str | Path]],
        *,
        default: str | None = None,
        unknown_sni: str = "default",
        site: HttpSite | None = None,
        alpn: Sequence[str] = ("http/1.1",),
        limits: Limits | None = None,
    ) -> None:
        super().__init__(listen, limits)
        if default is None and unknown_sni == "default" and len(certificates) == 1:
            default = next(iter(certificates))
        self.sni = SniContexts(certificates, default, unknown_sni, alpn)
        self.site = site or HttpSite()

    async def handle(self, connection: Connection) -> None:
        await connection.start_tls(self.sni.base)
        await serve_http(connection, self.site)
