"""The control protocol's messages: what the probe asks, what the helper answers.

Version 1, JSON over HTTP POST to ``<helper>/measure``. The request lists the
endpoints the probe measured, with the addresses the probe resolved, so the
helper measures those very addresses (a stale or forged address is then told
apart from a blocked one). The answer carries the helper's own observations in
the same shapes the probe records, and the address the request came from.
Parsing never trusts the peer: sizes and counts are capped and every field is
type-checked; a bad message is a ``ProtocolError`` with a reason.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from probe.net.network import from_json, to_json
from probe.observations import EndpointObservation
from probe.targets import CHECKS, Endpoint

VERSION = 1
MAX_ENDPOINTS = 2000
MAX_ADDRESSES = 16
MAX_PORTS = 8
MAX_TEXT = 4096
MAX_PEM = 64 * 1024


class ProtocolError(ValueError):
    """A control message that does not follow the protocol."""


# The targets file's rule for names (probe.targets): LDH labels of 1 to 63 chars.
_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)\Z")


def _host(data: dict, key: str, required: bool = True) -> str | None:
    """An IP address or a host name: anything else would only reach the resolver
    (or the TLS library) as garbage a hostile requester chose."""
    value = _text(data, key, required=required, limit=255)
    if value is None:
        return None
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    labels = value.removesuffix(".").split(".")
    if len(value) > 253 or labels[-1].isdigit() or not all(_LABEL.match(x) for x in labels):
        raise ProtocolError(f"field {key!r} is neither an IP address nor a host name")
    return value


@dataclass(frozen=True)
class ControlEndpoint:
    endpoint: Endpoint
    addresses: tuple[str, ...]  # the probe's resolved addresses, to measure too


def _text(data: dict, key: str, required: bool = True, limit: int = MAX_TEXT) -> str | None:
    value = data.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value or len(value) > limit:
        raise ProtocolError(f"field {key!r} must be a non-empty string of at most {limit} chars")
    return value


def endpoint_to_request(endpoint: Endpoint, addresses: tuple[str, ...]) -> dict[str, Any]:
    return {
        "id": endpoint.id, "service": endpoint.service, "host": endpoint.host,
        "ports": list(endpoint.ports), "checks": list(endpoint.checks), "sni": endpoint.sni,
        "ca_pem": endpoint.ca_pem, "path": endpoint.path, "addresses": list(addresses),
    }


def build_request(
    items: list[ControlEndpoint], timeout: float, trust_pem: str | None = None
) -> dict[str, Any]:
    """``trust_pem``: the probe's run-wide trust store (--ca-bundle), so the helper
    judges certificates against the same roots as the probe (None: its system's)."""
    return {
        "version": VERSION,
        "timeout": timeout,
        "trust_pem": trust_pem,
        "endpoints": [endpoint_to_request(i.endpoint, i.addresses) for i in items],
    }


@dataclass(frozen=True)
class ControlQuery:
    items: list[ControlEndpoint]
    timeout: float
    trust_pem: str | None


def parse_request(body: Any) -> ControlQuery:
    if not isinstance(body, dict) or body.get("version") != VERSION:
        raise ProtocolError("expected a JSON object with version 1")
    timeout = body.get("timeout", 10)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 60:
        raise ProtocolError("timeout must be a number in (0, 60]")
    raw = body.get("endpoints")
    if not isinstance(raw, list) or not 0 < len(raw) <= MAX_ENDPOINTS:
        raise ProtocolError(f"endpoints must be a list of 1 to {MAX_ENDPOINTS} items")
    items = []
    for data in raw:
        if not isinstance(data, dict):
            raise ProtocolError("every endpoint must be an object")
        ports = data.get("ports")
        if (
            not isinstance(ports, list) or not 0 < len(ports) <= MAX_PORTS
            or not all(isinstance(p, int) and not isinstance(p, bool) and 0 < p < 65536
                       for p in ports)
        ):
            raise ProtocolError("ports must be a list of 1 to 8 port numbers")
        checks = data.get("checks")
        if (
            not isinstance(checks, list) or not checks
            or not all(isinstance(c, str) and c in CHECKS for c in checks)
        ):
            raise ProtocolError(f"checks must be a non-empty list drawn from {', '.join(CHECKS)}")
        addresses = data.get("addresses", [])
        if not isinstance(addresses, list) or len(addresses) > MAX_ADDRESSES:
            raise ProtocolError(f"addresses must be a list of at most {MAX_ADDRESSES}")
        for address in addresses:
            try:
                if not isinstance(address, str):  # ip_address(3232235777) is 192.168.1.1
                    raise TypeError
                ipaddress.ip_address(address)
            except (ValueError, TypeError):
                raise ProtocolError(f"not an IP address: {str(address)[:60]!r}") from None
        path = _text(data, "path", required=False) or "/"
        if not path.startswith("/"):
            raise ProtocolError("path must start with /")
        endpoint = Endpoint(
            id=_text(data, "id"), service=_text(data, "service"), host=_host(data, "host"),
            ports=tuple(ports), checks=tuple(checks), sni=_host(data, "sni", required=False),
            ca_pem=_text(data, "ca_pem", required=False, limit=MAX_PEM), path=path,
        )
        items.append(ControlEndpoint(endpoint, tuple(addresses)))
    trust = body.get("trust_pem")
    if trust is not None and (not isinstance(trust, str) or len(trust) > MAX_PEM * 4):
        raise ProtocolError("trust_pem must be PEM text of at most 256 KiB")
    return ControlQuery(items, float(timeout), trust)


def build_response(
    observations: dict[str, EndpointObservation],
    probe_address: str | None,
    helper: dict,
    measured_at: str,
    sign: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """One entry per endpoint, each signed on its own when the helper has a key,
    so a report line can embed (and a verifier check) just its service's entries.
    The probe's address travels outside every signed entry: the probe must be
    able to drop it without breaking a signature."""
    entries = {}
    for endpoint_id, observation in observations.items():
        entry = {
            "endpoint_id": endpoint_id, "measured_at": measured_at, "helper": helper,
            "observation": to_json(observation),
        }
        entries[endpoint_id] = sign(entry) if sign is not None else entry
    return {"version": VERSION, "helper": helper, "probe_address": probe_address,
            "endpoints": entries}


@dataclass(frozen=True)
class ParsedResponse:
    observations: dict[str, EndpointObservation]
    entries: dict[str, dict[str, Any]]  # as received (signed entries keep their signature)
    probe_address: str | None


def parse_response(body: Any) -> ParsedResponse:
    """The helper's observations by endpoint id, the raw entries, the address it saw.

    Signed entries are checked for integrity (the signature matches the entry's
    own key); whether that key is trusted is for ``probe verify`` to say."""
    from probe.report.signing import SignatureError, verify_object

    if not isinstance(body, dict) or body.get("version") != VERSION:
        raise ProtocolError("control response is not a version 1 object")
    endpoints = body.get("endpoints")
    if not isinstance(endpoints, dict):
        raise ProtocolError("control response has no endpoints object")
    if len(endpoints) > MAX_ENDPOINTS:
        # No request asks for more, and checking each signed entry costs ~0.5 ms:
        # a hostile helper's 32 MiB of entries would hold the probe for seconds.
        raise ProtocolError(f"control response has more than {MAX_ENDPOINTS} endpoints")
    observations = {}
    entries = {}
    for key, value in endpoints.items():
        entry = value
        if isinstance(value, dict) and "signature" in value:
            try:
                verify_object(value)
            except (SignatureError, ValueError) as exc:
                raise ProtocolError(f"endpoint {key[:60]!r}: bad signature: {exc}"[:300]) from None
            entry = value.get("response")
        if not isinstance(entry, dict) or entry.get("endpoint_id") != key:
            raise ProtocolError(f"endpoint {key[:60]!r}: malformed entry")
        try:
            observations[key] = from_json(EndpointObservation, entry.get("observation"))
        except (ValueError, TypeError) as exc:
            raise ProtocolError(f"endpoint {key[:60]!r}: {exc}"[:300]) from None
        entries[key] = value
    address = body.get("probe_address")
    return ParsedResponse(observations, entries, address if isinstance(address, str) else None)
