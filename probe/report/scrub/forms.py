"""The forms a volunteer's address takes, and finding them in decoded text.

:class:`_Targets` compiles the volunteer's addresses once into what is
searched for: the IPv4 and IPv6 values, the /64 prefixes, the 4- and 16-byte
packed forms, their base64 fragments at every alignment. :func:`_find` then
returns the spans of a text (already decoded: see ``decoders``) that read as
one of them: dotted, dashed or reversed IPv4, WHATWG URL host forms (octal,
hexadecimal, one 32-bit number), IPv6 in any RFC 4291/5952 text form,
``ip6.arpa`` nibbles, IPv4 inside IPv6 (mapped, NAT64, 6to4, Teredo).
Numbers inside a token are never split: ``198.51.100.70`` is not
``198.51.100.7``. Pure: no I/O, no replacing (``text`` does that).
"""

from __future__ import annotations

import base64
import functools
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .memo import _Memo


@dataclass(frozen=True)
class _Targets:
    v4: frozenset[int]
    v6: frozenset[int]
    v6_prefixes: frozenset[int]  # the top bits of each IPv6 address (its /64)
    prefix_len: int
    packed: tuple[bytes, ...] = field(default=())  # 4 and 16 byte forms
    packed_prefixes: tuple[bytes, ...] = field(default=())
    first_octets: frozenset[int] = field(default=frozenset())
    b64_fragments: tuple[str, ...] = field(default=())
    anchor: re.Pattern[str] = field(default=re.compile(r"(?!)"))
    # What scrub_text returned, and which texts the checker found clean, for these
    # targets only. Two memos, so the re-check never trusts the scrubber's work.
    scrubbed: _Memo = field(default_factory=_Memo, compare=False, repr=False)
    checked_clean: _Memo = field(default_factory=_Memo, compare=False, repr=False)
    # The spans _v6_in_run found in a run, relative to it: a pure function of the
    # run's text, the same for the scrubber and the checker. Reports repeat their
    # IPv6 addresses thousands of times, each a few dozen address parses.
    v6_runs: _Memo = field(default_factory=_Memo, compare=False, repr=False)

    def __bool__(self) -> bool:
        return bool(self.v4 or self.v6)

    @classmethod
    def of(cls, addresses: Iterable[str] | _Targets, ipv6_prefix: int = 64) -> _Targets:
        if isinstance(addresses, _Targets):
            return addresses
        if isinstance(addresses, str):
            addresses = [addresses]
        addresses = tuple(addresses)
        try:
            return _targets_of(addresses, ipv6_prefix)
        except TypeError:  # an unhashable address: build it without remembering
            return cls._build(addresses, ipv6_prefix)

    @classmethod
    def _build(cls, addresses: tuple[Any, ...], ipv6_prefix: int) -> _Targets:
        if not 0 < ipv6_prefix <= 128 or ipv6_prefix % 8:
            raise ValueError("ipv6_prefix must be a multiple of 8 between 8 and 128")
        v4: set[int] = set()
        v6: set[int] = set()
        for text in addresses:
            address = _parse_address(text)
            if address is None or address.is_loopback or address.is_unspecified:
                continue  # 127.0.0.1 is probe_ip in every report, and identifies nobody
            if address.version == 4:
                v4.add(int(address))
            else:
                v6.add(int(address))
        shift = 128 - ipv6_prefix
        prefixes = frozenset(a >> shift for a in v6)
        packed = tuple(a.to_bytes(4, "big") for a in sorted(v4)) + tuple(
            a.to_bytes(16, "big") for a in sorted(v6)
        )
        packed_prefixes = tuple(p.to_bytes(ipv6_prefix // 8, "big") for p in sorted(prefixes))
        first_octets = frozenset(a >> 24 for a in v4)
        forms = list(packed)
        for a in v4:
            forms.append(str(ipaddress.IPv4Address(a)).encode())
        for a in v6:
            forms += [str(ipaddress.IPv6Address(a)).encode(),
                      ipaddress.IPv6Address(a).exploded.encode()]
        return cls(
            frozenset(v4), frozenset(v6), prefixes, ipv6_prefix, packed, packed_prefixes,
            first_octets, _b64_fragments(forms), _anchor_regex(first_octets),
        )

    def v6_hit(self, value: int) -> str | None:
        if value in self.v6:
            return "IPv6 address"
        if self.v6 and value >> (128 - self.prefix_len) in self.v6_prefixes:
            return f"IPv6 address in your /{self.prefix_len}"
        if not self.v4:
            return None
        if value & 0xFFFFFFFF in self.v4:
            return "IPv4 address inside an IPv6 address (mapped, NAT64, ...)"
        if value >> 112 == 0x2002 and (value >> 80) & 0xFFFFFFFF in self.v4:
            return "IPv4 address inside a 6to4 address"
        if value >> 96 == 0x20010000 and (~value) & 0xFFFFFFFF in self.v4:
            return "IPv4 address inside a Teredo address"
        return None


@functools.lru_cache(maxsize=8)
def _targets_of(addresses: tuple[Any, ...], ipv6_prefix: int) -> _Targets:
    # One _Targets, hence one pair of memos, for each set of addresses: a run
    # scrubs each of its lines with the same addresses.
    return _Targets._build(addresses, ipv6_prefix)


def _parse_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(str(text).strip().strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


_PART = r"(?:0[xX][0-9A-Fa-f]+|[0-9]+)"
# One regex per separator: dotted, dashed (host names), underscored. A run's
# separator is consistent; runs are split into windows of 1-4 parts so that
# "1.198.51.100.7" still yields the address but no number is ever split.
_V4_RUNS = tuple(
    re.compile(rf"(?<![0-9]){_PART}(?:{re.escape(sep)}{_PART})*", re.ASCII) for sep in ".-_"
)
_PART_SPLIT = re.compile(_PART, re.ASCII)
_HEX_RUN = re.compile(r"(?<![0-9A-Fa-f])(?:[0-9A-Fa-f]{32}|[0-9A-Fa-f]{8})(?![0-9A-Fa-f])")
# Runs of hex digits, dots and at least two colons, matched from the run's start only.
_V6_RUN = re.compile(r"(?<![0-9A-Fa-f.:])[0-9A-Fa-f.]*:[0-9A-Fa-f.]*:[0-9A-Fa-f.:]*")
_ARPA6 = re.compile(r"(?<![0-9A-Za-z])(?:[0-9A-Fa-f]\.){15,31}[0-9A-Fa-f](?![0-9A-Za-z])")


def _whatwg_ipv4(parts: list[str]) -> int | None:
    """The WHATWG URL standard's IPv4 parser (what a browser connects to)."""
    numbers = []
    for part in parts:
        try:
            if part[:2] in ("0x", "0X"):
                number = int(part[2:] or "0", 16)
            elif len(part) > 1 and part[0] == "0":
                number = int(part[1:], 8)
            else:
                number = int(part, 10)
        except ValueError:
            return None
        numbers.append(number)
    if any(n > 255 for n in numbers[:-1]) or numbers[-1] >= 256 ** (5 - len(numbers)):
        return None
    value = numbers[-1]
    for index, number in enumerate(numbers[:-1]):
        value += number << (8 * (3 - index))
    return value


def _v4_values(parts: list[str]) -> set[int]:
    values: set[int] = set()
    if all(p.isdigit() for p in parts):
        numbers = [int(p) for p in parts]
        if len(parts) == 4 and all(n <= 255 for n in numbers):
            values.add(int.from_bytes(bytes(numbers), "big"))
            values.add(int.from_bytes(bytes(reversed(numbers)), "big"))  # in-addr.arpa
        if len(parts) == 1:
            values.add(numbers[0])  # decimal integer, leading zeros read as decimal
    whatwg = _whatwg_ipv4(parts)
    if whatwg is not None:
        values.add(whatwg)
    return values


def _numeric_spans(text: str, targets: _Targets) -> list[tuple[int, int, str]]:
    """IPv4 texts: every window of 1 to 4 parts of each dotted/dashed run of numbers.

    Only runs around an *anchor* (a number that reads as one of the targets'
    first bytes, or a long number) are examined, so that text full of small
    numbers costs one regex search.
    """
    spans: set[tuple[int, int, str]] = set()
    examined: set[tuple[int, int]] = set()
    for anchor in targets.anchor.finditer(text):
        left, right = anchor.start(), anchor.end()
        while left > 0 and text[left - 1] in _RUN_CHARS and anchor.start() - left < 128:
            left -= 1
        while right < len(text) and text[right] in _RUN_CHARS and right - anchor.end() < 128:
            right += 1
        if (left, right) in examined:
            continue
        examined.add((left, right))
        segment = text[left:right]
        for regex in _V4_RUNS:
            for run in regex.finditer(segment):
                spans.update(_run_spans(run, left, targets))
    return sorted(spans)


_RUN_CHARS = frozenset("0123456789abcdefABCDEFxX.-_")


def _run_spans(run: re.Match[str], offset: int, targets: _Targets) -> list[tuple[int, int, str]]:
    spans = []
    parts = list(_PART_SPLIT.finditer(run.group()))
    texts = [m.group() for m in parts]
    base = offset + run.start()
    for first in range(len(parts)):
        for last in range(first, min(first + 4, len(parts))):
            window = texts[first:last + 1]
            if not _may_be_target(window, targets):
                continue
            form = None
            if _v4_values(window) & targets.v4:
                form = "IPv4 address" if len(window) == 4 else "IPv4 address as a number"
            elif len(window) == 1 and window[0].isdigit() and int(window[0]) in targets.v6:
                form = "IPv6 address as a number"
            if form:
                spans.append((base + parts[first].start(), base + parts[last].end(), form))
    return spans


def _anchor_regex(first_octets: Iterable[int]) -> re.Pattern[str]:
    """Numbers that can start (or end, reversed) a target's text, and long numbers."""
    decimal, octal, hexa = [], [], []
    for octet in sorted(first_octets):
        decimal.append(f"0*{octet}")
        if octet:
            octal.append(f"0+{octet:o}")
        hexa.append(f"0*{octet:x}")
    alternatives = [r"(?<![0-9])[0-9]{7,}", r"0[xX][0-9A-Fa-f]{6,}"]
    if decimal:
        alternatives.append(rf"(?<![0-9])(?:{'|'.join(decimal + octal)})(?![0-9])")
        alternatives.append(rf"0[xX](?:{'|'.join(hexa)})(?![0-9A-Fa-f])")
    return re.compile("|".join(alternatives), re.ASCII | re.IGNORECASE)


def _part_value(part: str) -> set[int]:
    values = set()
    try:
        if part[:2] in ("0x", "0X"):
            values.add(int(part[2:] or "0", 16))
        else:
            values.add(int(part, 10))
            if len(part) > 1 and part[0] == "0":
                values.add(int(part[1:], 8))
    except ValueError:
        pass
    return values


def _may_be_target(window: list[str], targets: _Targets) -> bool:
    """False when no reading of ``window`` can start (or end, reversed) like a target."""
    if len(window) == 1:
        return len(window[0]) >= 7  # a public address as one number has 8+ digits
    return bool(
        _part_value(window[0]) & targets.first_octets
        or (len(window) == 4 and _part_value(window[3]) & targets.first_octets)
    )


def _find(text: str, targets: _Targets) -> list[tuple[int, int, str]]:
    """Spans of ``text`` (already decoded) that are one of the targets, with their form."""
    spans = _numeric_spans(text, targets)
    for match in _HEX_RUN.finditer(text):
        value = int(match.group(), 16)
        if len(match.group()) == 8 and value in targets.v4:
            spans.append((match.start(), match.end(), "IPv4 address in hexadecimal"))
        elif len(match.group()) == 32 and targets.v6_hit(value):
            spans.append((match.start(), match.end(), "IPv6 address in hexadecimal"))
    if ":" in text:
        for run in _V6_RUN.finditer(text):
            spans += _v6_in_run(run.group(), run.start(), targets)
    for match in _ARPA6.finditer(text):
        nibbles = "".join(match.group().split(".")[::-1])  # most significant first
        form = None
        if len(nibbles) == 32:
            form = targets.v6_hit(int(nibbles, 16))
        elif targets.v6 and targets.prefix_len <= 4 * len(nibbles):
            prefix = int(nibbles, 16) >> (4 * len(nibbles) - targets.prefix_len)
            form = "IPv6 prefix" if prefix in targets.v6_prefixes else None
        if form:
            spans.append((match.start(), match.end(), form + " (reverse DNS nibbles)"))
    return spans


def _v6_in_run(run: str, base: int, targets: _Targets) -> list[tuple[int, int, str]]:
    """Every window of a run of hex digits, colons and dots that is a target IPv6 text."""
    key = (run, 0)
    relative = targets.v6_runs.get(key)
    if relative is None:
        relative = _v6_windows(run, targets)
        targets.v6_runs.put(key, relative)
    return [(base + start, base + end, form) for start, end, form in relative]


def _v6_windows(run: str, targets: _Targets) -> tuple[tuple[int, int, str], ...]:
    starts = {0} | {i for i in range(1, len(run)) if run[i - 1] in ":."}
    starts |= {i for i in range(len(run) - 1) if run[i:i + 2] == "::"}
    ends = {len(run)} | {i for i in range(len(run)) if run[i] in ":."}
    ends |= {i for i in range(2, len(run) + 1) if run[i - 2:i] == "::"}
    ordered_ends = sorted(ends)
    spans = []
    for start in sorted(starts):
        for end in ordered_ends:
            if end - start < 2:
                continue
            if end - start > 45:
                break
            candidate = run[start:end]
            if candidate.count(":") < 2:
                continue
            try:
                value = int(ipaddress.IPv6Address(candidate))
            except ValueError:
                continue
            form = targets.v6_hit(value)
            if form:
                spans.append((start, end, form))
    return tuple(spans)


def _b64_fragments(forms: Iterable[bytes]) -> tuple[str, ...]:
    """The base64 characters that ``form`` always produces, at each of the 3 alignments."""
    fragments = set()
    for form in forms:
        for offset in range(3):
            encoded = base64.b64encode(b"\0" * offset + form + b"\0\0").decode("ascii")
            first = -(-offset * 4 // 3)
            last = (offset + len(form)) * 8 // 6
            fragment = encoded[first:last]
            if len(fragment) >= 6:
                fragments.add(fragment)
                fragments.add(fragment.translate(str.maketrans("+/", "-_")))
    return tuple(sorted(fragments))
