"""Reading the servers' JSON configuration: one error type and the field checks.

Errors name the place in the file (``servers[2].listen[0]``) and say what is
expected, so whoever writes a lab scenario can fix it without reading code.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from probe.lab.servers.stream import Endpoint, Limits


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message says where and why."""


def parse_endpoint(value: Any, where: str) -> Endpoint:
    """``"198.51.100.1:53"`` or ``"[2001:db8::1]:53"`` -> (address, port)."""
    if not isinstance(value, str) or ":" not in value:
        raise ConfigError(f"{where}: {value!r} is not ADDRESS:PORT (IPv6 as [ADDRESS]:PORT)")
    if value.startswith("["):
        host, _, port = value[1:].partition("]:")
    else:
        host, _, port = value.rpartition(":")
        if ":" in host:
            raise ConfigError(f"{where}: write the IPv6 address in brackets: [{host}]:{port}")
    try:
        address = str(ipaddress.ip_address(host))
    except ValueError:
        raise ConfigError(f"{where}: {host!r} is not an IP address") from None
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{where}: port {port!r} is out of range (0-65535)")
    return address, int(port)


def format_endpoint(endpoint: Endpoint) -> str:
    host, port = endpoint
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def require(spec: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in spec:
        raise ConfigError(f"{where}: missing {key!r}")
    return optional(spec, key, kind, where)


def optional(
    spec: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str, default: Any = None
) -> Any:
    if key not in spec or spec[key] is None:
        return default
    value = spec[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise ConfigError(f"{where}.{key}: expected {names}, got {value!r:.60}")
    return value


def parse_limits(data: Any, where: str, base: Limits | None = None) -> Limits:
    base = base or Limits()
    if data is None:
        return base
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected an object of limits")
    values = {}
    for key, default in vars(base).items():
        kind = int if isinstance(default, int) else (int, float)
        value = optional(data, key, kind, where, default)
        if value <= 0:
            raise ConfigError(f"{where}.{key}: must be positive, got {value}")
        values[key] = value
    unknown = set(data) - set(values)
    if unknown:
        raise ConfigError(f"{where}: unknown limits {sorted(unknown)} (known: {sorted(values)})")
    return Limits(**values)
