"""What a control helper agrees to measure: the endpoints of its own targets, no others.

A helper on a public address that measured whatever a requester named would be
a port scanner and a GET proxy for anyone, and would sign "this host at this
address works" for addresses a requester chose. So a helper measures only what
its own targets list (``probe control serve --targets``, by default the bundled
targets.yaml that ``probe run`` uses) plus its own reference endpoints (its UDP
echo): an endpoint of a request is admitted when the helper's targets have its
host (name or address, compared in canonical form) with every one of its
(port, check) pairs, its path and its SNI. Ids are not compared: a probe's ids
may differ from the helper's. Anything else is refused on its own, with a
short reason; the rest of the request is still measured.

A name's requester-supplied addresses (the ones the probe resolved) are kept,
at most ``REQUESTED_PER_FAMILY`` per address family and only public ones
(``probe.bogons``): the helper measures them next to its own answers, and its
signed entries say which measured addresses came from the requester
(``protocol.build_response``), so they are never attested as the name's.

Everything here is pure: no resolution, no I/O.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, replace

from probe.bogons import IPNetwork, is_bogon
from probe.control.protocol import ControlEndpoint, ControlQuery, udp_datagrams
from probe.targets import Endpoint

# The probe measures at most 3 addresses per family (RunOptions.max_addresses_per_family)
# and the helper's own answers come first: 2 of the probe's per family are enough to
# cover a resolver that answers a probe other addresses than the helper (a CDN).
REQUESTED_PER_FAMILY = 2
MAX_REASON = 200


def canonical_host(host: str) -> str:
    """A host as compared by the scope: an address in its compressed form
    (``0:0::1`` is ``::1``), a name in lower case without its final dot."""
    try:
        return ipaddress.ip_address(host).compressed
    except ValueError:
        return host.lower().removesuffix(".")


def _sni(endpoint: Endpoint) -> str | None:
    return canonical_host(endpoint.sni) if endpoint.sni else None


@dataclass(frozen=True)
class _Place:
    """Where a target lets the helper go: a host, a path and an SNI."""

    host: str
    path: str
    sni: str | None
    payload: str | None  # a UDP flow's payload (echo, stun...), None for other checks


def _place(endpoint: Endpoint) -> _Place:
    payload = endpoint.payload if "udp" in endpoint.checks else None
    return _Place(canonical_host(endpoint.host), endpoint.path, _sni(endpoint), payload)


def _pairs(endpoint: Endpoint) -> set[tuple[int, str]]:
    return {(port, check) for port in endpoint.ports for check in endpoint.checks}


@dataclass(frozen=True)
class Scope:
    """The (port, check) pairs a helper may measure, by host, path and SNI."""

    allowed: dict[_Place, frozenset[tuple[int, str]]]
    routable: tuple[IPNetwork, ...] = ()  # bogon exemptions (test labs only)

    @classmethod
    def from_targets(
        cls, targets: Iterable[Endpoint], extra: Iterable[Endpoint] = (),
        routable: tuple[IPNetwork, ...] = (),
    ) -> Scope:
        """The scope of a helper whose targets are ``targets``, plus ``extra``
        endpoints of its own (its reference endpoints)."""
        allowed: dict[_Place, set[tuple[int, str]]] = {}
        for endpoint in (*targets, *extra):
            allowed.setdefault(_place(endpoint), set()).update(_pairs(endpoint))
        return cls({place: frozenset(pairs) for place, pairs in allowed.items()}, routable)

    def with_extra(self, extra: Iterable[Endpoint]) -> Scope:
        """This scope and ``extra`` endpoints (a request's view of the helper's own echo)."""
        allowed = {place: set(pairs) for place, pairs in self.allowed.items()}
        for endpoint in extra:
            allowed.setdefault(_place(endpoint), set()).update(_pairs(endpoint))
        return Scope({p: frozenset(v) for p, v in allowed.items()}, self.routable)

    def refusal(self, endpoint: Endpoint) -> str | None:
        """Why the helper does not measure ``endpoint`` (None: it does)."""
        place = _place(endpoint)
        pairs = self.allowed.get(place)
        if pairs is None:
            if not any(p.host == place.host for p in self.allowed):
                return "host not in this helper's targets"
            return "path, SNI or UDP payload not in this helper's targets for this host"
        missing = sorted(_pairs(endpoint) - pairs)
        if missing:
            port, check = missing[0]
            return f"{check} on port {port} not in this helper's targets for this host"
        return None

    def requested_addresses(self, item: ControlEndpoint) -> tuple[str, ...]:
        """The requester's addresses the helper measures for a name: public ones
        only, at most ``REQUESTED_PER_FAMILY`` per family, in the requester's order."""
        if item.endpoint.host_is_address:
            return ()  # an address is measured as itself, nothing else
        kept: list[str] = []
        per_family: dict[int, int] = {}
        for address in item.addresses:
            if is_bogon(address, self.routable):
                continue
            ip = ipaddress.ip_address(address.split("%", 1)[0])
            if ip.compressed in kept or per_family.get(ip.version, 0) >= REQUESTED_PER_FAMILY:
                continue
            per_family[ip.version] = per_family.get(ip.version, 0) + 1
            kept.append(ip.compressed)
        return tuple(kept)

    def admit(self, query: ControlQuery) -> tuple[ControlQuery, dict[str, str]]:
        """(the query cut to what this helper measures, {endpoint id: reason} of the rest).

        An address host in a bogon network is refused here too: the helper never
        measures into a private network on anyone's behalf."""
        admitted: list[ControlEndpoint] = []
        refused: dict[str, str] = {}
        for item in query.items:
            endpoint = item.endpoint
            reason = self.refusal(endpoint)
            if reason is None and endpoint.host_is_address and is_bogon(
                    endpoint.host, self.routable):
                reason = "a bogon address (private, loopback, reserved): never measured"
            if reason is not None:
                refused[endpoint.id] = reason[:MAX_REASON]
                continue
            admitted.append(replace(item, addresses=self.requested_addresses(item)))
        cost = sum(udp_datagrams(item.endpoint) for item in admitted)
        return replace(query, items=admitted, udp_datagrams=cost), refused
