"""Scrubbing a text or a binary payload: every occurrence becomes ``[scrubbed]``.

Text is searched as decoded (``decoders``) for the address's forms
(``forms``), and the original characters of each occurrence are replaced;
base64 runs are decoded, scrubbed and re-encoded; bytes are searched for the
packed address, inside gzip, and through their Latin-1, UTF-8 and UTF-16
views; a STUN message has its address attributes rewritten (``stun``). Pure.
It does not check its own work: ``checker`` does, independently.
"""

from __future__ import annotations

import base64
import functools
import gzip
import re
from collections.abc import Iterable

from .decoders import (
    _B64_RUN,
    _B64URL_RUN,
    _UTF16_RUNS,
    _WHOLE_B64,
    MAX_DEPTH,
    _b64_decode,
    _decode_view,
    _gunzip,
    _is_utf8_text,
    _looks_encoded,
)
from .forms import _find, _Targets
from .stun import is_stun, placeholder_test, rewrite

SCRUBBED = "[scrubbed]"
_SCRUBBED_BYTES = SCRUBBED.encode("ascii")


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
            text = regex.sub(functools.partial(replace, urlsafe=urlsafe), text)
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
    if is_stun(data):
        # A STUN answer hides the address XORed with the magic cookie (no search
        # sees it): its address attributes become the placeholder first, so the
        # datagram still parses; replacing packed bytes with "[scrubbed]" below
        # would break its framing.
        data = rewrite(data, placeholder_test(targets))
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
        cleaned_text = scrub_text(text, targets, depth=depth)
        if cleaned_text != text:
            data = cleaned_text.encode(encoding, "surrogateescape")
    return _scrub_utf16_runs(data, targets, depth)
