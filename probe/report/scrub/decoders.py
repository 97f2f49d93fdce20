"""Decoding the disguises an address hides behind, for the scrubber.

Escapes (percent-encoding, HTML numeric and named entities, JavaScript and CSS
escapes, nested up to :data:`MAX_DEPTH` layers) are decoded while remembering
where each decoded character came from, so that the scrubber can replace the
original characters. Characters that render as ASCII digits or dashes
(full-width, superscript, circled, Arabic-Indic and Persian digits, Unicode
dashes) are folded. Also here: strict base64, UTF-16 runs inside bytes, and
bounded gunzip. Pure; it finds no address itself (``forms`` does).
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata
import zlib

#: How many layers of encoding (base64 in text in base64 ...) are looked into.
MAX_DEPTH = 3
#: gzip payloads are looked into up to this many decompressed bytes.
MAX_GUNZIP = 16 << 20


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
    if kind is None:  # every alternative of _ESCAPE is a named group
        return None
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


def _looks_encoded(chunk: str) -> bool:
    """Words of prose are not worth decoding: base64 of 9+ bytes mixes cases or digits."""
    return len(chunk) >= 12 and not (chunk.isalpha() and (chunk.islower() or chunk.isupper()))


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


def _gunzip(data: bytes) -> bytes | None:
    try:
        decompressor = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        inner = decompressor.decompress(data, MAX_GUNZIP)
    except zlib.error:
        return None
    return inner if not decompressor.unconsumed_tail else None
