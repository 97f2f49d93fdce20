"""The checker: another look for the address, through the standard library's decoders.

After scrubbing, every string of a measurement (keys included, certificates
included) is decoded again with different decoders than the scrubber's
(``urllib.parse``, ``html``, loose base64, gzip, UTF-16) and searched for the
address's forms, so that a bug in the scrubber's decoding is not repeated
here; binary payloads that are STUN messages have their address attributes
decoded (XOR-MAPPED-ADDRESS hides the address from any byte search). It
reports :class:`Leak` s (field path and form, never the address) and never
changes the measurement. Pure.
"""

from __future__ import annotations

import base64
import binascii
import html
import json
import re
import urllib.parse
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from .decoders import (
    _UTF16_RUNS,
    _WHOLE_B64,
    MAX_DEPTH,
    _fold_text,
    _gunzip,
    _is_utf8_text,
    _looks_encoded,
)
from .forms import _find, _Targets
from .stun import address_attributes, volunteer_test
from .text import scrub_text


class ScrubError(Exception):
    """The volunteer's address is still in a measurement after scrubbing.

    ``str()`` names the fields and forms, never the address itself.
    """

    def __init__(self, leaks: list[Leak]) -> None:
        self.leaks = leaks
        shown = "; ".join(f"{leak.where}: {leak.form}" for leak in leaks[:5])
        more = f" (and {len(leaks) - 5} more)" if len(leaks) > 5 else ""
        super().__init__(f"your address is still in {shown}{more}")


@dataclass(frozen=True)
class Leak:
    """One place the address was found: the field path and the form it had."""

    where: str
    form: str



_JS_ESCAPE = re.compile(r"\\u\{([0-9A-Fa-f]{1,6})\}|\\u([0-9A-Fa-f]{4})|\\x([0-9A-Fa-f]{2})")
_PERCENT_RUN = re.compile(r"(?:%[0-9A-Fa-f]{2})+")


def _unquote_run(match: re.Match[str]) -> str:
    return urllib.parse.unquote(match.group(), errors="surrogateescape")


_CSS_ESCAPE = re.compile(r"\\([0-9A-Fa-f]{1,6})[ \t\n]?")
_B64_LOOSE = re.compile(r"[A-Za-z0-9+/_-]{8,}(?:\r?\n[A-Za-z0-9+/_-]+)*=*")


def _chr_or_keep(match: re.Match[str]) -> str:
    code = int(next(g for g in match.groups() if g is not None), 16)
    if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
        return match.group()
    return chr(code)


def _normalised(text: str) -> Iterator[str]:
    """``text`` as written, then decoded layer by layer with the standard decoders."""
    yield text
    current = text
    for _ in range(MAX_DEPTH + 1):
        decoded = current
        if "%" in decoded:
            decoded = _PERCENT_RUN.sub(_unquote_run, decoded)
        if "&" in decoded:
            decoded = html.unescape(decoded)
        if "\\" in decoded:
            decoded = _CSS_ESCAPE.sub(_chr_or_keep, _JS_ESCAPE.sub(_chr_or_keep, decoded))
        decoded = _fold_text(decoded)
        if decoded == current:
            return
        yield decoded
        current = decoded


class _Checker:
    """Collects :class:`Leak` s; remembers what it decoded so repeated words cost once.

    Texts found clean are remembered in ``targets.checked_clean`` (for these
    targets, at that depth), across measurements: the same certificate chain is
    then decoded once per run, not once per endpoint. A text is remembered only
    when nothing in it was recorded *and* nothing in it was skipped because an
    earlier text already recorded it (see ``_decoded``).
    """

    def __init__(self, targets: _Targets) -> None:
        self.targets = targets
        self.leaks: list[Leak] = []
        # (base64 run, depth) -> whether decoding it found nothing
        self._decoded: dict[tuple[str, int], bool] = {}
        self._findings = 0  # every add(), duplicates included, and skipped dirty runs
        self._safe_paths: dict[str, str] = {}

    def add(self, where: str, form: str) -> None:
        self._findings += 1
        leak = Leak(where, form)
        if leak not in self.leaks:
            self.leaks.append(leak)

    def found(self, path: str, suffix: str, form: str) -> None:
        """Record a leak at ``path`` (scrubbed only now: most paths never need it)."""
        safe = self._safe_paths.get(path)
        if safe is None:
            safe = self._safe_paths[path] = _safe_path(self.targets, path)
        self.add(safe + suffix, form)

    def text(self, text: str, path: str, depth: int, suffix: str = "") -> None:
        key = (text, depth)
        memo = self.targets.checked_clean
        if memo.get(key):
            return
        findings = self._findings
        self._text(text, path, depth, suffix)
        if self._findings == findings:
            memo.put(key, True)

    def _text(self, text: str, path: str, depth: int, suffix: str) -> None:
        for variant in _normalised(text):
            for _, _, form in _find(variant, self.targets):
                self.found(path, suffix, form)
            if depth <= 0:
                continue
            if _WHOLE_B64.fullmatch(variant):
                data = _b64_loose(variant.rstrip("="), minimum=2)
                if data is not None:
                    self.bytes(data, path, depth - 1, f"{suffix} (base64)")
            # The address base64-encoded at any alignment inside a longer run.
            for fragment in self.targets.b64_fragments:
                if fragment in variant:
                    self.found(path, f"{suffix} (base64)", "address encoded in base64")
            for run in _B64_LOOSE.finditer(variant):
                compact = re.sub(r"\s+", "", run.group()).rstrip("=")
                whole = run.start() == 0 and run.end() == len(variant)
                if not whole and not _looks_encoded(compact):
                    continue
                decoded = (compact, depth)
                if decoded in self._decoded:
                    if not self._decoded[decoded]:
                        self._findings += 1  # its leaks were recorded elsewhere: not clean
                    continue
                self._decoded[decoded] = True
                findings = self._findings
                data = _b64_loose(compact)
                if data is not None:
                    self.bytes(data, path, depth - 1, f"{suffix} (base64)")
                self._decoded[decoded] = self._findings == findings

    def bytes(self, data: bytes, path: str, depth: int, suffix: str = "") -> None:
        if not data:
            return
        for packed in self.targets.packed:
            if packed in data:
                self.found(path, suffix, f"address in binary ({len(packed)} bytes)")
        for prefix in self.targets.packed_prefixes:
            if prefix in data:
                self.found(path, suffix, "IPv6 prefix in binary")
        is_volunteer = volunteer_test(self.targets)
        for attribute in address_attributes(data):  # XORed: no byte search sees it
            if is_volunteer(attribute.address):
                self.found(path, suffix, f"address in a STUN {attribute.name}")
        if data[:2] == b"\x1f\x8b" and depth > 0:
            inner = _gunzip(data)
            if inner is not None:
                self.bytes(inner, path, depth - 1, f"{suffix} (gzip)")
        views = [data.decode("latin-1")]
        if _is_utf8_text(data):
            views.append(data.decode("utf-8"))
        if b"\x00" in data:
            for regex, encoding in _UTF16_RUNS:
                views += [match.group().decode(encoding) for match in regex.finditer(data)]
        for view in views:
            self.text(view, path, depth, suffix)


def _b64_loose(chunk: str, minimum: int = 8) -> bytes | None:
    if len(chunk) < minimum:
        return None
    if len(chunk) % 4 == 1:
        chunk = chunk[:-1]
    chunk += "=" * (-len(chunk) % 4)
    urlsafe = "-" in chunk or "_" in chunk
    try:
        if urlsafe:
            return base64.urlsafe_b64decode(chunk.encode("ascii"))
        return base64.b64decode(chunk.encode("ascii"))
    except (binascii.Error, ValueError):
        return None


def _strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _strings(item, f"{path}[{index}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            child = f"{path}.{key}" if path else str(key)
            yield f"{child} (key)", str(key)
            yield from _strings(item, child)


def _leaks_in(value: Any, targets: _Targets, label: str = "") -> list[Leak]:
    checker = _Checker(targets)
    try:
        serialised = json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    except ValueError:
        serialised = repr(value)
    for _, _, form in _find(serialised, targets):
        checker.add(label or "the serialised measurement", form)
    for path, text in _strings(value, label):
        checker.text(text, path, MAX_DEPTH)
    return checker.leaks


def _safe_path(targets: _Targets, path: str) -> str:
    # A key can be the address itself: the message names the place, never the address.
    return scrub_text(path, targets)


def find_leaks(
    measurement: Any, addresses: Iterable[str] | _Targets, *, ipv6_prefix: int = 64
) -> list[Leak]:
    """Every place and form in which ``addresses`` still appear in ``measurement``."""
    targets = _Targets.of(addresses, ipv6_prefix)
    if not targets:
        return []
    return _leaks_in(measurement, targets)


def assert_clean(
    measurement: Any, addresses: Iterable[str] | _Targets, *, ipv6_prefix: int = 64
) -> None:
    """Raise :class:`ScrubError` if the addresses appear anywhere in ``measurement``."""
    leaks = find_leaks(measurement, addresses, ipv6_prefix=ipv6_prefix)
    if leaks:
        raise ScrubError(leaks)
