"""Removing the volunteer's own address from everything the probe writes or shows.

A censor's blockpage, an injected DNS answer or a hostile server can echo the
volunteer's address back, and reports are published. :func:`scrub_measurement`
replaces every occurrence of the volunteer's addresses with ``[scrubbed]``: in
JSON strings, keys and numbers, inside base64 payloads (decoded, scrubbed,
re-encoded), in gzip payloads, and in the textual disguises a page may use;
then :func:`assert_clean` searches the result again, through different
decoders, and raises :class:`ScrubError` if anything is left. The caller must
then not write that measurement, and tell the user.

What counts as an occurrence, and why (each a real way an address gets echoed):

- IPv4 dotted (``198.51.100.7``), also with leading zeros, and the WHATWG URL
  host forms browsers accept in links (``0xc6.0x33.0x64.7``, octal parts,
  ``198.51.25607``, the 32-bit integer ``3325256711``, ``0xc6336407``).
- Reversed and dashed forms: reverse-DNS names (``7.100.51.198.in-addr.arpa``)
  and ISP host names that embed the address (``c-198-51-100-7.isp.example``).
- IPv6 in any RFC 4291/5952 text form (compressed, expanded, upper case,
  mixed with a dotted tail), 32 hex digits, ``ip6.arpa`` nibbles. Any address
  in the volunteer's /64 counts: with SLAAC privacy addresses the interface
  part changes but the /64 is the household's (RFC 8981 section 1); the home
  router (often the resolver) sits in it too.
- IPv4 inside IPv6: any IPv6 address whose low 32 bits are the IPv4 address
  (IPv4-mapped ``::ffff:198.51.100.7`` is how dual-stack servers print an IPv4
  client; NAT64 ``64:ff9b::/96``, SIIT, ISATAP), 6to4 ``2002::/16`` and Teredo
  (whose client address is the volunteer's, inverted: RFC 4380 section 4).
- Escapes of any character: percent-encoding (URLs, query strings), HTML
  numeric and the relevant named entities, JavaScript ``\\u0031``/``\\x31``,
  CSS ``\\31 ``, nested up to three layers (``&amp;#49;``); and characters
  that render as ASCII digits: full-width, superscript, circled (Unicode
  NFKC), Arabic-Indic and Persian digits (Iranian blockpages write numbers in
  Persian digits), Unicode dashes.
- Binary payloads (raw DNS replies, MTProto bytes): the 4- or 16-byte address
  in network order (a lying resolver can answer with the volunteer's address),
  and the text views of the bytes: Latin-1, UTF-8 and UTF-16.
- Base64 inside text (cookies, ``data:`` URLs): decoded, scrubbed, re-encoded.

Numbers inside a token are never split: ``198.51.100.70`` is not
``198.51.100.7``. Certificates (``peer_certificates``) are evidence signed by
a third party: they are never modified, but they are checked, and a
certificate that contains the address fails the measurement. Control-helper
attestations are signed by the helper: one that contains the address is
withheld (listed under ``control.attestation_withheld``) rather than altered.

What no scrubber can promise: a server that *wants* to identify the volunteer
can hide the address in an encoding nobody anticipates (encrypted, XOR-ed).
docs/privacy.md says so to volunteers.

This module is pure (no I/O), except :func:`interface_addresses`, which reads
the operating system's interface table.
"""

from __future__ import annotations

import base64
import binascii
import copy
import functools
import gzip
import html
import ipaddress
import json
import logging
import re
import unicodedata
import urllib.parse
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "SCRUBBED",
    "Leak",
    "ScrubError",
    "ScrubbingLogFilter",
    "ScrubbingStream",
    "assert_clean",
    "find_leaks",
    "install_log_scrubbing",
    "interface_addresses",
    "scrub_bytes",
    "scrub_lines",
    "scrub_measurement",
    "scrub_text",
    "volunteer_addresses",
]

SCRUBBED = "[scrubbed]"
_SCRUBBED_BYTES = SCRUBBED.encode("ascii")

#: How many layers of encoding (base64 in text in base64 ...) are looked into.
MAX_DEPTH = 3
#: gzip payloads are looked into up to this many decompressed bytes.
MAX_GUNZIP = 16 << 20
#: Where OONI keeps certificates: third-party evidence, checked but never changed.
CERTIFICATES_KEY = "peer_certificates"
ATTESTATION_PATH = ("test_keys", "control", "attestation")
WITHHELD_KEY = "attestation_withheld"


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


# --------------------------------------------------------------------------- #
# the addresses to look for                                                    #
# --------------------------------------------------------------------------- #


class _Memo:
    """Results of a pure function of a text, emptied whenever it holds too much.

    Reports repeat most of their strings (keys, failure strings, above all the
    peer certificate chain, the same for thousands of endpoints), so scrubbing
    and checking remember their results per :class:`_Targets`. Only texts up to
    :data:`MEMO_TEXT` characters are kept, and at most :data:`MEMO_BUDGET`
    characters of keys and results in all (plus a small charge per entry).
    """

    def __init__(self) -> None:
        self._results: dict[tuple[str, int], Any] = {}
        self._size = 0

    def get(self, key: tuple[str, int]) -> Any:
        return self._results.get(key)

    def put(self, key: tuple[str, int], result: Any) -> None:
        size = len(key[0]) + (len(result) if isinstance(result, str) else 0) + 64
        if len(key[0]) > MEMO_TEXT:
            return
        if self._size + size > MEMO_BUDGET:
            self._results.clear()
            self._size = 0
        self._results[key] = result
        self._size += size


#: Texts longer than this are never memoised (pages, large payloads).
MEMO_TEXT = 64 << 10
#: Characters (keys and results) one memo holds before it is emptied.
MEMO_BUDGET = 4 << 20


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


def volunteer_addresses(
    echoed: str | None, local: Iterable[str] = (), routable: Iterable[Any] = ()
) -> list[str]:
    """The addresses to scrub: the control helper's echo, plus the host's public ones.

    ``echoed`` is kept whatever its range (in the lab it is a documentation
    address); of ``local`` only globally routable ones are kept, as private
    (RFC 1918, ULA) and link-local addresses are never seen by servers.
    ``routable`` networks count as global (a test network such as the lab, whose
    targets file declares its documentation ranges public).
    """
    routable = [n for n in routable]
    found: list[str] = []
    echoed_address = _parse_address(echoed) if echoed else None
    if echoed_address is not None and not (
        echoed_address.is_loopback or echoed_address.is_unspecified
    ):
        found.append(str(echoed_address))
    for text in local:
        address = _parse_address(text)
        public = address is not None and (
            address.is_global
            or any(address.version == n.version and address in n for n in routable)
        )
        if public and str(address) not in found:
            found.append(str(address))
    return found


def interface_addresses() -> list[str]:
    """The host's own addresses, from the kernel's tables (Linux; [] elsewhere).

    Needed because the control helper echoes only the address it saw: with
    IPv6 the host has several (SLAAC, privacy addresses), and a blockpage
    reached over IPv6 echoes one of those.
    """
    found: list[str] = []
    try:  # /proc/net/if_inet6: "20010db8...0001 02 40 00 80 eth0"
        for row in Path("/proc/net/if_inet6").read_text().splitlines():
            hexa = row.split()[0]
            found.append(str(ipaddress.IPv6Address(int(hexa, 16))))
    except (OSError, ValueError, IndexError):
        pass
    try:  # /proc/net/fib_trie lists "|-- 198.51.100.2" then "/32 host LOCAL"
        previous = ""
        for row in Path("/proc/net/fib_trie").read_text().splitlines():
            stripped = row.strip()
            if stripped.startswith("/32 host LOCAL") and previous and previous not in found:
                found.append(previous)
            if stripped.startswith("|--"):
                previous = stripped[3:].strip()
            elif not stripped.startswith("/"):
                previous = ""
    except OSError:
        pass
    return found


# --------------------------------------------------------------------------- #
# recognising addresses in plain text                                           #
# --------------------------------------------------------------------------- #

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
                spans.append((base + start, base + end, form))
    return spans


# --------------------------------------------------------------------------- #
# decoding escapes while remembering where each character came from            #
# --------------------------------------------------------------------------- #

_ESCAPE = re.compile(
    r"%(?P<pct>[0-9A-Fa-f]{2})"
    r"|&#[xX](?P<hexent>[0-9A-Fa-f]{1,6});?"
    r"|&#(?P<decent>[0-9]{1,7});?"
    r"|&(?P<named>period|colon|hyphen|dash|minus|amp|percnt|bsol|num);"
    r"|\\u\{(?P<jsbrace>[0-9A-Fa-f]{1,6})\}"
    r"|\\u(?P<js4>[0-9A-Fa-f]{4})"
    r"|\\x(?P<js2>[0-9A-Fa-f]{2})"
    r"|\\(?P<css>[0-9A-Fa-f]{1,6})[ \t\n]?"
)
_NAMED = {
    "period": ".", "colon": ":", "hyphen": "-", "dash": "-", "minus": "-",
    "amp": "&", "percnt": "%", "bsol": "\\", "num": "#",
}
_DASHES = frozenset("\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe63\uff0d")


def _fold(char: str) -> str:
    """A character as a reader would type it, when it looks like one we search for."""
    if char.isascii():
        return char
    if char in _DASHES:
        return "-"
    digit = unicodedata.decimal(char, None)  # Arabic-Indic, Persian, full-width ... digits
    if digit is not None:
        return str(digit)
    folded = unicodedata.normalize("NFKC", char)  # superscripts, circled, full-width stops
    return folded if len(folded) == 1 and folded.isascii() else char


class _FoldTable(dict):
    """``str.translate`` table for :func:`_fold`, filled as characters are met."""

    def __missing__(self, code: int) -> str:
        folded = _fold(chr(code))
        self[code] = folded
        return folded


_FOLD_TABLE = _FoldTable()


def _fold_text(text: str) -> str:
    return text if text.isascii() else text.translate(_FOLD_TABLE)


def _escape_char(match: re.Match[str]) -> str | None:
    kind = match.lastgroup
    value = match.group(kind)
    if kind == "named":
        return _NAMED[value]
    code = int(value, 10 if kind == "decent" else 16)
    if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
        return None
    return chr(code)


def _decode_view(text: str) -> tuple[str, list[int], list[int]]:
    """``text`` with escapes decoded (up to three layers) and characters folded.

    Returns the decoded text and, for each of its characters, the start and end
    of what it came from in ``text``.
    """
    starts = list(range(len(text)))
    ends = list(range(1, len(text) + 1))
    current = text
    for _ in range(MAX_DEPTH):
        if current.isascii() and not _ESCAPE.search(current):
            break
        decoded, starts, ends, changed = _decode_layer(current, starts, ends)
        if not changed:
            break
        current = decoded
    return current, starts, ends


def _decode_layer(
    text: str, starts: list[int], ends: list[int]
) -> tuple[str, list[int], list[int], bool]:
    chars: list[str] = []
    new_starts: list[int] = []
    new_ends: list[int] = []
    changed = False
    position = 0

    def copy_plain(upto: int) -> None:
        nonlocal changed
        segment = text[position:upto]
        if not segment.isascii():
            folded = _fold_text(segment)  # one character for one
            changed |= folded != segment
            segment = folded
        chars.append(segment)
        new_starts.extend(starts[position:upto])
        new_ends.extend(ends[position:upto])

    for match in _ESCAPE.finditer(text):
        decoded = _escape_char(match)
        if decoded is None:
            continue
        copy_plain(match.start())
        chars.append(_fold(decoded))
        new_starts.append(starts[match.start()])
        new_ends.append(ends[match.end() - 1])
        position = match.end()
        changed = True
    copy_plain(len(text))
    return "".join(chars), new_starts, new_ends, changed


def _merge(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def _scrub_tokens(text: str, targets: _Targets) -> str:
    decoded, starts, ends = _decode_view(text)
    spans = _find(decoded, targets)
    if not spans:
        return text
    original = _merge((starts[s], ends[e - 1]) for s, e, _ in spans)
    pieces = []
    position = 0
    for start, end in original:
        pieces.append(text[position:start])
        pieces.append(SCRUBBED)
        position = end
    pieces.append(text[position:])
    return "".join(pieces)


# --------------------------------------------------------------------------- #
# base64 inside text, and bytes                                                #
# --------------------------------------------------------------------------- #

_WHOLE_B64 = re.compile(r"[A-Za-z0-9+/_-]{2,}={0,2}")
_B64_RUN = re.compile(r"[A-Za-z0-9+/]{8,}={0,2}")
_B64URL_RUN = re.compile(r"[A-Za-z0-9_-]{8,}={0,2}")


def _b64_decode(run: str, urlsafe: bool) -> tuple[bytes, bool] | None:
    """(bytes, padded) if ``run`` is the canonical base64 of some bytes, else None."""
    body = run.rstrip("=")
    padded = body != run
    if len(body) % 4 == 1:
        return None
    full = body + "=" * (-len(body) % 4)
    try:
        data = (base64.urlsafe_b64decode if urlsafe else base64.b64decode)(full.encode("ascii"))
    except (binascii.Error, ValueError):
        return None
    encoder = base64.urlsafe_b64encode if urlsafe else base64.b64encode
    if encoder(data).decode("ascii").rstrip("=") != body:
        return None  # not canonical: unused low bits set, so not really base64
    return data, padded


def _scrub_base64_runs(text: str, targets: _Targets, depth: int) -> str:
    if _WHOLE_B64.fullmatch(text):  # a payload of any length, e.g. 4 bytes: "xjNkBw=="
        for urlsafe in (False, True):
            cleaned = _scrub_base64_run(text, urlsafe, targets, depth)
            if cleaned != text:
                return cleaned
    done: dict[str, str] = {}  # pages repeat their words: decode each once

    def replace(match: re.Match[str], urlsafe: bool) -> str:
        run = match.group()
        whole = match.start() == 0 and match.end() == len(text)
        if not (whole or _looks_encoded(run) or any(f in run for f in targets.b64_fragments)):
            return run  # a word of prose, not an encoding
        if run not in done:
            done[run] = _scrub_base64_run(run, urlsafe, targets, depth)
        return done[run]

    for regex, urlsafe in ((_B64_RUN, False), (_B64URL_RUN, True)):
        if regex.search(text):
            text = regex.sub(lambda m, u=urlsafe: replace(m, u), text)
            done.clear()
    return text


def _scrub_base64_run(run: str, urlsafe: bool, targets: _Targets, depth: int) -> str:
    decoded = _b64_decode(run, urlsafe)
    if decoded is None:
        return run
    data, padded = decoded
    cleaned = scrub_bytes(data, targets, depth=depth - 1)
    if cleaned == data:
        return run
    encoder = base64.urlsafe_b64encode if urlsafe else base64.b64encode
    encoded = encoder(cleaned).decode("ascii")
    return encoded if padded or len(run) % 4 == 0 else encoded.rstrip("=")


def scrub_text(
    text: str, addresses: Iterable[str] | _Targets, *, ipv6_prefix: int = 64, depth: int = MAX_DEPTH
) -> str:
    """``text`` with every occurrence of ``addresses`` replaced by ``[scrubbed]``.

    Use it for anything shown on the terminal or logged (unless ``--show-ip``).
    """
    targets = _Targets.of(addresses, ipv6_prefix)
    if not targets or not text:
        return text
    key = (text, depth)
    cleaned = targets.scrubbed.get(key)
    if cleaned is None:
        cleaned = _scrub_tokens(_scrub_base64_runs(text, targets, depth) if depth > 0 else text,
                                targets)
        targets.scrubbed.put(key, cleaned)
    return cleaned


# Runs of ASCII text in UTF-16 (a page served as UTF-16, or text inside binary).
_UTF16_RUNS = (
    (re.compile(rb"(?:[\t\n\r\x20-\x7e]\x00){4,}"), "utf-16-le"),
    (re.compile(rb"(?:\x00[\t\n\r\x20-\x7e]){4,}"), "utf-16-be"),
)


def _is_utf8_text(data: bytes) -> bool:
    if data.isascii():
        return False  # the Latin-1 view already reads ASCII
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _scrub_utf16_runs(data: bytes, targets: _Targets, depth: int) -> bytes:
    for regex, encoding in _UTF16_RUNS:
        if b"\x00" not in data:
            break

        def replace(match: re.Match[bytes], encoding: str = encoding) -> bytes:
            text = match.group().decode(encoding)
            cleaned = scrub_text(text, targets, depth=depth)
            return match.group() if cleaned == text else cleaned.encode(encoding)

        data = regex.sub(replace, data)
    return data


def _replace_packed(data: bytes, targets: _Targets) -> bytes:
    for packed in targets.packed:
        if packed in data:
            data = data.replace(packed, _SCRUBBED_BYTES)
    for prefix in targets.packed_prefixes:
        position = data.find(prefix)
        while position != -1:
            # an AAAA record or sockaddr of an address in the volunteer's /64
            data = data[:position] + _SCRUBBED_BYTES + data[position + 16:]
            position = data.find(prefix, position + len(_SCRUBBED_BYTES))
    return data


def scrub_bytes(
    data: bytes,
    addresses: Iterable[str] | _Targets,
    *,
    ipv6_prefix: int = 64,
    depth: int = MAX_DEPTH,
) -> bytes:
    """Binary payload with the addresses replaced (binary and textual occurrences)."""
    targets = _Targets.of(addresses, ipv6_prefix)
    if not targets or not data:
        return data
    data = _replace_packed(data, targets)
    if data[:2] == b"\x1f\x8b" and depth > 0:
        inner = _gunzip(data)
        if inner is not None:
            cleaned = scrub_bytes(inner, targets, depth=depth - 1)
            if cleaned != inner:
                return gzip.compress(cleaned, mtime=0)
    encodings = ["latin-1"] + (["utf-8"] if _is_utf8_text(data) else [])
    for encoding in encodings:
        # surrogateescape: the Latin-1 pass may have cut a UTF-8 sequence in two
        # ("\xc2" + "[scrubbed]" from a superscript "\xc2\xb9" that began the
        # address); the UTF-8 view must still be scrubbed, and the bytes kept.
        text = data.decode(encoding, "surrogateescape")
        cleaned = scrub_text(text, targets, depth=depth)
        if cleaned != text:
            data = cleaned.encode(encoding, "surrogateescape")
    return _scrub_utf16_runs(data, targets, depth)


def _gunzip(data: bytes) -> bytes | None:
    try:
        decompressor = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        inner = decompressor.decompress(data, MAX_GUNZIP)
    except zlib.error:
        return None
    return inner if not decompressor.unconsumed_tail else None


# --------------------------------------------------------------------------- #
# measurements                                                                 #
# --------------------------------------------------------------------------- #


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
    measurement: dict[str, Any], addresses: Iterable[str], *, ipv6_prefix: int = 64
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


# --------------------------------------------------------------------------- #
# the checker: another look, through the standard library's decoders           #
# --------------------------------------------------------------------------- #

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


def _looks_encoded(chunk: str) -> bool:
    """Words of prose are not worth decoding: base64 of 9+ bytes mixes cases or digits."""
    return len(chunk) >= 12 and not (chunk.isalpha() and (chunk.islower() or chunk.isupper()))


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
    measurement: Any, addresses: Iterable[str], *, ipv6_prefix: int = 64
) -> list[Leak]:
    """Every place and form in which ``addresses`` still appear in ``measurement``."""
    targets = _Targets.of(addresses, ipv6_prefix)
    if not targets:
        return []
    return _leaks_in(measurement, targets)


def assert_clean(measurement: Any, addresses: Iterable[str], *, ipv6_prefix: int = 64) -> None:
    """Raise :class:`ScrubError` if the addresses appear anywhere in ``measurement``."""
    leaks = find_leaks(measurement, addresses, ipv6_prefix=ipv6_prefix)
    if leaks:
        raise ScrubError(leaks)


# --------------------------------------------------------------------------- #
# logs                                                                         #
# --------------------------------------------------------------------------- #


class ScrubbingLogFilter(logging.Filter):
    """Rewrites each log record with the volunteer's addresses scrubbed.

    The addresses are learned during a run (the control helper's echo comes
    last): call :meth:`set_addresses` when they change. Attach it to handlers
    (``install_log_scrubbing``), since filters on a logger do not see records
    propagated from its children.
    """

    def __init__(self, addresses: Iterable[str] = (), *, ipv6_prefix: int = 64) -> None:
        super().__init__()
        self.ipv6_prefix = ipv6_prefix
        self._targets = _Targets.of(list(addresses), ipv6_prefix)

    def set_addresses(self, addresses: Iterable[str]) -> None:
        self._targets = _Targets.of(list(addresses), self.ipv6_prefix)

    def filter(self, record: logging.LogRecord) -> bool:
        targets = self._targets
        if not targets:
            return True
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            message = str(record.msg)
        record.msg, record.args = scrub_text(message, targets), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub_text(record.exc_text, targets)
        if record.stack_info:
            record.stack_info = scrub_text(record.stack_info, targets)
        return True


def install_log_scrubbing(
    addresses: Iterable[str] = (), logger: logging.Logger | None = None
) -> ScrubbingLogFilter:
    """Attach one :class:`ScrubbingLogFilter` to every handler of ``logger`` (root)."""
    target = logger or logging.getLogger()
    log_filter = ScrubbingLogFilter(addresses)
    for handler in target.handlers:
        handler.addFilter(log_filter)
    return log_filter


class ScrubbingStream:
    """A text stream (stderr, stdout) that scrubs what is written to it, line by line.

    For terminal output the probe does not build itself (rich tables, click
    echoes): ``sys.stderr = ScrubbingStream(sys.stderr, log_filter)``. Text is held
    until its line ends (an address split over two writes is still found) or
    :meth:`flush`. ``addresses`` is a :class:`ScrubbingLogFilter` so the two
    learn the addresses together.
    """

    def __init__(self, stream: Any, addresses: ScrubbingLogFilter) -> None:
        self._stream = stream
        self._filter = addresses
        self._pending = ""

    def write(self, text: str) -> int:
        self._pending += text
        if "\n" in self._pending:
            complete, _, self._pending = self._pending.rpartition("\n")
            # one line at a time: scrubbing a 3 MB summary in one piece takes 235 MiB
            for line in complete.split("\n"):
                self._stream.write(self._scrub(line + "\n"))
        return len(text)

    def _scrub(self, text: str) -> str:
        targets = self._filter._targets
        return scrub_text(text, targets) if targets else text

    def flush(self) -> None:
        if self._pending:
            self._stream.write(self._scrub(self._pending))
            self._pending = ""
        self._stream.flush()

    def isatty(self) -> bool:
        return bool(getattr(self._stream, "isatty", lambda: False)())

    def __getattr__(self, name: str) -> Any:  # encoding, fileno, ... of the real stream
        return getattr(self._stream, name)
