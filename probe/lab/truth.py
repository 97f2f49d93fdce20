"""Ground truth: what the probe must conclude under a scenario, and the comparison.

A scenario's truth is a list of :class:`Expect` rules matched against the
``endpoints`` of ``probe run --json``, first match wins, and an endpoint no
rule matches must be ``ok`` (with no method). Globs (``fnmatch``) select the
endpoint id and optionally the address; a port narrows further. Expected
service statuses work the same way: unlisted services must be ``ok``, ``"*"``
asserts nothing. Per-function statuses ("telegram: messaging ok, calls
blocked") are checked only for the services and functions a scenario names,
against each service row's ``functions`` (``{function: {"status": ...}}`` as
``probe run --json`` writes it, ``{function: status}``, or a list of
``{"function", "status"}``); network-wide findings (``{"udp":
"all_udp_dropped", "restricted": true}``) against the summary's ``network``.

Some conclusions need the control vantage: a timeout or an RST is
"blocked" only if the control succeeds, and "down" only if it fails the same
way. Rules carry ``needs_control`` (derived from verdict and method unless
given), so a test run without a control can tell a real regression from a
conclusion the probe cannot reach yet. Pure functions only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

ANY = "*"
# Conclusions the probe reaches from its own evidence, without a control.
LOCAL_METHODS = frozenset({"dns.bogon", "dns.injected", "dns.blockpage", "tls.mitm",
                           "http.blockpage"})


@dataclass(frozen=True)
class Expect:
    endpoint: str  # glob on the endpoint id
    verdict: str
    method: str | None = None  # None: no method; "*": any
    address: str | None = None  # glob; None matches any (also a null address)
    port: int | None = None
    needs_control: bool | None = None

    def matches(self, row: Mapping[str, Any]) -> bool:
        if not fnmatchcase(str(row.get("id", "")), self.endpoint):
            return False
        if self.address is not None and not fnmatchcase(str(row.get("address")), self.address):
            return False
        return self.port is None or row.get("port") == self.port

    @property
    def control_needed(self) -> bool:
        if self.needs_control is not None:
            return self.needs_control
        if self.verdict == "ok":
            return False
        if self.verdict == "inconclusive":
            return False
        return self.method not in LOCAL_METHODS


OK = Expect("*", "ok")


@dataclass(frozen=True)
class Mismatch:
    what: str  # "endpoint", "service", "function" or "network"
    key: str  # "telegram-dc1 203.0.113.11:443" or "telegram"
    expected: str
    observed: str
    needs_control: bool

    def __str__(self) -> str:
        return f"{self.key}: expected {self.expected}, observed {self.observed}"


def expectation(rules: Sequence[Expect], row: Mapping[str, Any]) -> Expect:
    for rule in rules:
        if rule.matches(row):
            return rule
    return OK


def _show(verdict: str | None, method: str | None) -> str:
    return f"{verdict}/{method}" if method else str(verdict)


def row_key(row: Mapping[str, Any]) -> str:
    where = row.get("address") or "-"
    if row.get("port") is not None:
        where = f"{where}:{row['port']}"
    return f"{row.get('id')} {where}"


def compare(
    rules: Sequence[Expect],
    endpoints: Iterable[Mapping[str, Any]],
    services: Mapping[str, str] | None = None,
    observed_services: Iterable[Mapping[str, Any]] = (),
) -> list[Mismatch]:
    """Every disagreement between the truth and the probe's --json output."""
    mismatches = []
    for row in endpoints:
        rule = expectation(rules, row)
        verdict, method = row.get("verdict"), row.get("method")
        method_ok = rule.method == ANY or rule.method == method
        if verdict != rule.verdict or not method_ok:
            mismatches.append(
                Mismatch("endpoint", row_key(row), _show(rule.verdict, rule.method),
                         _show(verdict, method), rule.control_needed)
            )
    expected_services = services or {}
    for service in observed_services:
        wanted = expected_services.get(service["id"], "ok")
        if wanted != ANY and service.get("status") != wanted:
            needs = wanted not in ("ok", "inconclusive") or any(
                r.control_needed for r in rules if r.endpoint.startswith(service["id"])
            )
            mismatches.append(
                Mismatch("service", service["id"], wanted, str(service.get("status")), needs)
            )
    return mismatches


def _functions(service: Mapping[str, Any]) -> dict[str, str]:
    value = service.get("functions")
    if isinstance(value, Mapping):  # {function: status} or {function: {"status": ...}}
        return {str(k): str(v.get("status") if isinstance(v, Mapping) else v)
                for k, v in value.items()}
    if isinstance(value, list):
        return {str(item.get("function")): str(item.get("status")) for item in value
                if isinstance(item, Mapping)}
    return {}


def compare_functions(
    expected: Mapping[str, Mapping[str, str]], observed_services: Iterable[Mapping[str, Any]],
) -> list[Mismatch]:
    """Every named function whose status differs (a missing one reads "not reported")."""
    observed = {str(s.get("id")): _functions(s) for s in observed_services}
    mismatches = []
    for service, functions in expected.items():
        for function, status in functions.items():
            got = observed.get(service, {}).get(function, "not reported")
            if status != ANY and got != status:
                mismatches.append(Mismatch("function", f"{service} {function}", status, got,
                                           status not in ("ok", "inconclusive")))
    return mismatches


def compare_network(
    expected: Mapping[str, Any], observed: Mapping[str, Any] | None,
) -> list[Mismatch]:
    """Every expected network-wide finding the summary does not state."""
    observed = observed or {}
    return [
        Mismatch("network", key, str(value), str(observed.get(key, "not reported")), True)
        for key, value in expected.items() if observed.get(key) != value
    ]


def confusion(
    pairs: Iterable[tuple[str, str]],
) -> dict[tuple[str, str], int]:
    """Counts of (expected verdict, observed verdict)."""
    counts: dict[tuple[str, str], int] = {}
    for pair in pairs:
        counts[pair] = counts.get(pair, 0) + 1
    return counts


def verdict_pairs(
    rules: Sequence[Expect], endpoints: Iterable[Mapping[str, Any]]
) -> list[tuple[str, str]]:
    return [(expectation(rules, row).verdict, str(row.get("verdict"))) for row in endpoints]
