"""A set of lab servers built from one JSON configuration, started and stopped together.

This is what ``python -m probe.lab.servers`` runs inside a lab namespace; the
lab may also build a :class:`Fleet` in-process from the same dictionary. The
format is documented in ``probe/lab/servers/__init__.py``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from probe.lab.pki import KeyPair
from probe.lab.servers.config import (
    ConfigError,
    format_endpoint,
    optional,
    parse_endpoint,
    parse_limits,
    require,
)
from probe.lab.servers.dns import DnsServer
from probe.lab.servers.http import HttpServer, HttpSite
from probe.lab.servers.https import HttpsServer
from probe.lab.servers.mitm import MitmProxy
from probe.lab.servers.mtproto import MtprotoServer
from probe.lab.servers.quic import RESPONSES, QuicHttpServer
from probe.lab.servers.stream import Limits, Server
from probe.lab.servers.stun import TURN_MODES, StunServer
from probe.lab.servers.tcp import TcpServer

_COMMON = {"kind", "listen", "limits", "name"}
_SITE_KEYS = {"titles", "default_title", "download_size", "redirects", "server_header"}


def _check_keys(spec: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = set(spec) - allowed - _COMMON
    if unknown:
        raise ConfigError(
            f"{where}: unknown keys {sorted(unknown)} (allowed: {sorted(allowed | _COMMON)})"
        )


def _path(value: str | None, base: Path) -> Path | None:
    """Relative paths are relative to the configuration file's directory."""
    return None if value is None else base / value


def _key_pair(value: Any, where: str, base: Path) -> KeyPair:
    if not isinstance(value, dict) or set(value) != {"cert", "key"}:
        raise ConfigError(f'{where}: expected {{"cert": PATH, "key": PATH}}')
    pair = KeyPair(base / value["cert"], base / value["key"])
    for path in (pair.cert, pair.key):
        if not path.is_file():
            raise ConfigError(f"{where}: {path} does not exist")
    return pair


def _strings(spec: dict[str, Any], key: str, where: str) -> dict[str, str]:
    value = optional(spec, key, dict, where, {})
    for name, item in value.items():
        if not isinstance(item, str):
            raise ConfigError(f"{where}.{key}[{name!r}]: expected a string, got {item!r:.40}")
    return value


def _site(spec: dict[str, Any], where: str, base: HttpSite | None = None) -> HttpSite:
    base = base or HttpSite()
    size = optional(spec, "download_size", int, where, base.download_size)
    if size < 0:
        raise ConfigError(f"{where}.download_size: must be >= 0")
    return HttpSite(
        titles=_strings(spec, "titles", where) or base.titles,
        default_title=optional(spec, "default_title", str, where, base.default_title),
        download_size=size,
        redirects=_strings(spec, "redirects", where) or base.redirects,
        server_header=optional(spec, "server_header", str, where, base.server_header),
    )


def _dns(spec: dict[str, Any], listen: list[Any], limits: Limits, where: str, base: Path) -> Server:
    _check_keys(spec, {"zone", "behaviours", "behaviour_file", "ttl"}, where)
    return DnsServer(
        listen,
        optional(spec, "zone", dict, where, {}),
        optional(spec, "behaviours", dict, where, {}),
        behaviour_file=_path(optional(spec, "behaviour_file", str, where), base),
        ttl=optional(spec, "ttl", int, where, 300),
        limits=limits,
    )


def _https(
    spec: dict[str, Any], listen: list[Any], limits: Limits, where: str, base: Path
) -> Server:
    _check_keys(spec, {"certificates", "default_certificate", "unknown_sni"} | _SITE_KEYS, where)
    certificates = require(spec, "certificates", dict, where)
    return HttpsServer(
        listen,
        {
            name: _key_pair(pair, f"{where}.certificates[{name!r}]", base)
            for name, pair in certificates.items()
        },
        default=optional(spec, "default_certificate", str, where),
        unknown_sni=optional(spec, "unknown_sni", str, where, "default"),
        site=_site(spec, where),
        limits=limits,
    )


def _http(
    spec: dict[str, Any], listen: list[Any], limits: Limits, where: str, base: Path
) -> Server:
    _check_keys(spec, _SITE_KEYS, where)
    return HttpServer(listen, _site(spec, where), limits)


def _mtproto(
    spec: dict[str, Any], listen: list[Any], limits: Limits, where: str, base: Path
) -> Server:
    _check_keys(spec, set(), where)
    return MtprotoServer(listen, limits=limits)


def _tcp(spec: dict[str, Any], listen: list[Any], limits: Limits, where: str, base: Path) -> Server:
    _check_keys(spec, {"mode"}, where)
    return TcpServer(listen, optional(spec, "mode", str, where, "echo"), limits)


def _mitm(
    spec: dict[str, Any], listen: list[Any], limits: Limits, where: str, base: Path
) -> Server:
    allowed = {"ca", "upstream", "upstreams", "original_destination", "upstream_tls"}
    _check_keys(spec, allowed | {"upstream_ca", "default_name"}, where)
    upstream = optional(spec, "upstream", str, where)
    upstreams = optional(spec, "upstreams", dict, where, {})
    return MitmProxy(
        listen,
        _key_pair(require(spec, "ca", dict, where), f"{where}.ca", base),
        upstream=parse_endpoint(upstream, f"{where}.upstream") if upstream else None,
        upstreams={
            name: parse_endpoint(value, f"{where}.upstreams[{name!r}]")
            for name, value in upstreams.items()
        },
        original_destination=optional(spec, "original_destination", bool, where, False),
        upstream_tls=optional(spec, "upstream_tls", bool, where, True),
        upstream_ca=_path(optional(spec, "upstream_ca", str, where), base),
        default_name=optional(spec, "default_name", str, where, "localhost"),
        limits=limits,
    )


def _stun(
    spec: dict[str, Any], listen: list[Any], limits: Limits, where: str, base: Path
) -> Server:
    _check_keys(spec, {"echo", "answer_first", "forge", "turn"}, where)
    turn = optional(spec, "turn", str, where, "challenge")
    if turn not in TURN_MODES:
        raise ConfigError(f"{where}.turn: {turn!r} is not one of {list(TURN_MODES)}")
    answer_first = optional(spec, "answer_first", int, where)
    if answer_first is not None and answer_first < 0:
        raise ConfigError(f"{where}.answer_first: must be >= 0")
    forge = optional(spec, "forge", str, where)
    if forge is not None:
        forge = parse_endpoint(f"[{forge}]:0" if ":" in forge else f"{forge}:0",
                               f"{where}.forge")[0]
    return StunServer(
        listen,
        echo=optional(spec, "echo", bool, where, True),
        answer_first=answer_first,
        forge=forge,
        turn=turn,
        limits=limits,
    )


def _quic(
    spec: dict[str, Any], listen: list[Any], limits: Limits, where: str, base: Path
) -> Server:
    _check_keys(spec, {"certificate", "title", "body_size", "respond"}, where)
    respond = optional(spec, "respond", str, where, "answer")
    if respond not in RESPONSES:
        raise ConfigError(f"{where}.respond: {respond!r} is not one of {list(RESPONSES)}")
    body_size = optional(spec, "body_size", int, where)
    if body_size is not None and body_size < 0:
        raise ConfigError(f"{where}.body_size: must be >= 0")
    return QuicHttpServer(
        listen,
        _key_pair(require(spec, "certificate", dict, where), f"{where}.certificate", base),
        title=optional(spec, "title", str, where, "HTTP/3 works"),
        body_size=body_size,
        respond=respond,
        limits=limits,
    )


def _oohelperd(
    spec: dict[str, Any], listen: list[Any], limits: Limits, where: str, base: Path
) -> Server:
    from probe.bogons import parse_networks
    from probe.lab.servers.oohelperd import OohelperdServer

    _check_keys(spec, {"resolver", "trust", "routable", "tls_ports"}, where)
    resolver = parse_endpoint(require(spec, "resolver", str, where), f"{where}.resolver")
    trust = optional(spec, "trust", str, where)
    return OohelperdServer(
        listen, resolver, (base / trust).read_text() if trust else None,
        parse_networks(optional(spec, "routable", list, where, [])),
        optional(spec, "tls_ports", list, where, [443]),
    )


BUILDERS: dict[str, Callable[[dict[str, Any], list[Any], Limits, str, Path], Server]] = {
    "dns": _dns,
    "https": _https,
    "http": _http,
    "mtproto": _mtproto,
    "tcp": _tcp,
    "mitm": _mitm,
    "stun": _stun,
    "quic": _quic,
    "oohelperd": _oohelperd,
}


def build_server(
    spec: Any, where: str, limits: Limits | None = None, base: Path | None = None
) -> Server:
    """One server from its configuration object; raises ConfigError. Relative
    paths are taken from ``base`` (default: the current directory)."""
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected an object with a 'kind'")
    kind = require(spec, "kind", str, where)
    if kind not in BUILDERS:
        raise ConfigError(f"{where}.kind: {kind!r} is not one of {sorted(BUILDERS)}")
    listen = require(spec, "listen", list, where)
    if not listen:
        raise ConfigError(f"{where}.listen: give at least one ADDRESS:PORT")
    endpoints = [parse_endpoint(value, f"{where}.listen[{i}]") for i, value in enumerate(listen)]
    server_limits = parse_limits(spec.get("limits"), f"{where}.limits", limits)
    try:
        return BUILDERS[kind](spec, endpoints, server_limits, where, base or Path())
    except ConfigError:
        raise
    except (ValueError, OSError) as exc:  # e.g. a certificate the ssl module refuses
        raise ConfigError(f"{where}: {exc}") from exc


class Fleet:
    """Servers started and stopped together."""

    def __init__(self, servers: list[Server]) -> None:
        self.servers = servers

    @classmethod
    def from_config(cls, data: Any, where: str = "config", base: Path | None = None) -> Fleet:
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected an object with 'servers'")
        unknown = set(data) - {"servers", "limits"}
        if unknown:
            raise ConfigError(f"{where}: unknown keys {sorted(unknown)} (allowed: limits, servers)")
        limits = parse_limits(data.get("limits"), f"{where}.limits")
        specs = require(data, "servers", list, where)
        return cls(
            [build_server(s, f"{where}.servers[{i}]", limits, base) for i, s in enumerate(specs)]
        )

    @classmethod
    def from_file(cls, path: str | Path) -> Fleet:
        try:
            data = json.loads(Path(path).read_text())
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path} line {exc.lineno}: invalid JSON: {exc.msg}") from exc
        return cls.from_config(data, str(path), Path(path).parent)

    async def start(self) -> None:
        started: list[Server] = []
        try:
            for server in self.servers:
                await server.start()
                started.append(server)
        except BaseException:
            for server in reversed(started):
                with contextlib.suppress(Exception):
                    await server.stop()
            raise

    async def stop(self) -> None:
        for server in reversed(self.servers):
            with contextlib.suppress(Exception):
                await server.stop()

    def reload(self) -> None:
        """Re-read reloadable state (the DNS behaviour files)."""
        for server in self.servers:
            if isinstance(server, DnsServer):
                server.reload()

    def describe(self) -> list[dict[str, Any]]:
        """Each server's kind and bound endpoints, for the ready file."""
        return [
            {"kind": s.kind, "endpoints": [format_endpoint(e) for e in s.endpoints]}
            for s in self.servers
        ]
