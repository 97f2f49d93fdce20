"""Scrubbing a whole measurement, then refusing it if the checker still finds the address.

JSON strings, keys and numbers are scrubbed (STUN answers kept as base64
included: ``text``); certificates
(``peer_certificates``) are third-party evidence, checked but never changed;
a control-helper attestation that contains the address is withheld (listed
under ``control.attestation_withheld``) since altering it would break its
signature. A measurement the checker still finds the address in raises
:class:`ScrubError`: it must not be signed or written. Pure.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from .checker import ScrubError, _leaks_in, assert_clean
from .forms import _Targets
from .text import SCRUBBED, scrub_text

#: Where OONI keeps certificates: third-party evidence, checked but never changed.
CERTIFICATES_KEY = "peer_certificates"
ATTESTATION_PATH = ("test_keys", "control", "attestation")
WITHHELD_KEY = "attestation_withheld"


def _scrub_value(value: Any, targets: _Targets) -> Any:
    if isinstance(value, str):
        return scrub_text(value, targets)
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return SCRUBBED if value in targets.v4 or value in targets.v6 else value
    if isinstance(value, float):
        if value.is_integer() and (int(value) in targets.v4 or int(value) in targets.v6):
            return SCRUBBED
        return value
    if isinstance(value, list):
        return [_scrub_value(item, targets) for item in value]
    if isinstance(value, dict):
        result: dict[str, Any] = {}
        for key, item in value.items():
            new_key = scrub_text(str(key), targets)
            suffix = 2
            while new_key in result:  # two keys that differed only by the address
                new_key = f"{scrub_text(str(key), targets)} #{suffix}"
                suffix += 1
            if key == CERTIFICATES_KEY:
                result[new_key] = copy.deepcopy(item)  # evidence: checked, never changed
            else:
                result[new_key] = _scrub_value(item, targets)
        return result
    return copy.deepcopy(value)  # a type JSON does not have: kept, as a copy


def _withhold_attestations(measurement: dict[str, Any], targets: _Targets) -> None:
    """Drop control attestations that contain the address (altering them breaks them)."""
    node: Any = measurement
    for name in ATTESTATION_PATH[:-1]:
        if not isinstance(node, dict) or not isinstance(node.get(name), dict):
            return
        node = node[name]
    attestations = node.get(ATTESTATION_PATH[-1])
    if attestations is None:
        return
    as_list = attestations if isinstance(attestations, list) else [attestations]
    kept, withheld = [], []
    for attestation in as_list:
        if _leaks_in(attestation, targets, "control attestation"):
            response = attestation.get("response") if isinstance(attestation, dict) else None
            endpoint = response.get("endpoint_id") if isinstance(response, dict) else None
            withheld.append(str(endpoint) if endpoint is not None else "?")
        else:
            kept.append(attestation)
    if not withheld:
        return
    if kept:
        node[ATTESTATION_PATH[-1]] = kept if isinstance(attestations, list) else kept[0]
    else:
        del node[ATTESTATION_PATH[-1]]
    node[WITHHELD_KEY] = [scrub_text(w, targets) for w in withheld]


def scrub_measurement(
    measurement: dict[str, Any], addresses: Iterable[str] | _Targets, *, ipv6_prefix: int = 64
) -> dict[str, Any]:
    """A scrubbed copy of ``measurement``; raises :class:`ScrubError` if not clean.

    ``addresses`` are the volunteer's (see :func:`volunteer_addresses`); loopback
    and unspecified ones are ignored. With no address at all there is nothing
    to scrub and the copy is returned unchanged: the caller must say so.
    """
    targets = _Targets.of(addresses, ipv6_prefix)
    if not targets:
        return copy.deepcopy(measurement)
    # _scrub_value builds a new measurement: only the attestation's path is copied
    # here, to take the attestation out without touching the caller's dict.
    without, attestation = _pop_path_copy(measurement, ATTESTATION_PATH)
    result = _scrub_value(without, targets)
    if attestation is not _MISSING:
        _put_path(result, ATTESTATION_PATH, copy.deepcopy(attestation))
        _withhold_attestations(result, targets)
    assert_clean(result, targets)
    return result


def scrub_lines(
    lines: Iterable[dict[str, Any]], addresses: Iterable[str], *, ipv6_prefix: int = 64
) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """Scrub each measurement of a run: (clean ones, [(service, reason)] dropped).

    Call between ``build_lines`` and signing: a dropped measurement must not be
    signed or written, and the user must be told (the reason never contains
    the address).
    """
    targets = _Targets.of(addresses, ipv6_prefix)
    clean: list[dict[str, Any]] = []
    dropped: list[tuple[str, str]] = []
    for number, line in enumerate(lines, 1):
        service = str(line.get("test_name") or f"measurement {number}")
        try:
            clean.append(scrub_measurement(line, targets))
        except ScrubError as error:
            dropped.append((service, str(error)))
    return clean, dropped


_MISSING = object()


def _pop_path_copy(data: dict[str, Any], path: tuple[str, ...]) -> tuple[Any, Any]:
    """(``data`` without the value at ``path``, that value or _MISSING); ``data``
    itself is left as it was (the dicts along the path are copied)."""
    node: Any = data
    for name in path[:-1]:
        if not isinstance(node, dict) or not isinstance(node.get(name), dict):
            return data, _MISSING
        node = node[name]
    if not isinstance(node, dict) or path[-1] not in node:
        return data, _MISSING
    top = dict(data)
    node = top
    for name in path[:-1]:
        node[name] = dict(node[name])
        node = node[name]
    return top, node.pop(path[-1])


def _put_path(data: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = data
    for name in path[:-1]:
        node = node[name]
    node[path[-1]] = value
