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
- STUN answers (base64 in ``udp_flows`` and traces): their XOR-MAPPED-ADDRESS
  is the volunteer's address XORed with the magic cookie, which no search can
  see; the attribute is rewritten to a placeholder (``0.0.0.k``/``::1:0:0:k``,
  one per address, same port) and the datagram still parses. Every mapped
  address a run sees is one of the volunteer's addresses (``volunteer_addresses(mapped=...)``).

Numbers inside a token are never split: ``198.51.100.70`` is not
``198.51.100.7``. Certificates (``peer_certificates``) are evidence signed by
a third party: they are never modified, but they are checked, and a
certificate that contains the address fails the measurement. Control-helper
attestations are signed by the helper: one that contains the address is
withheld (listed under ``control.attestation_withheld``) rather than altered.

What no scrubber can promise: a server that *wants* to identify the volunteer
can hide the address in an encoding nobody anticipates (encrypted, XOR-ed
with a key of its own: STUN's fixed cookie is the one XOR we undo).
docs/privacy.md says so to volunteers.

One concept per module:

- ``addresses``: which addresses are the volunteer's (the only I/O:
  :func:`interface_addresses` reads the kernel's interface tables);
- ``forms``: the forms an address takes, and finding them in decoded text;
- ``decoders``: escapes, folded digits, base64, UTF-16 and gzip, for the scrubber;
- ``text``: :func:`scrub_text` and :func:`scrub_bytes`;
- ``checker``: :func:`find_leaks` and :func:`assert_clean`, with their own decoders;
- ``measurement``: :func:`scrub_measurement` and :func:`scrub_lines`;
- ``streams``: log records and terminal output;
- ``stun``: STUN datagrams, whose address attributes hide the address XORed;
- ``memo``: the bounded memory of results shared by the scrubber and the checker.

Import from ``probe.report.scrub``: the names below are its public interface
(the underscored ones are re-exported for the tests that measure the memo).
"""

from __future__ import annotations

from .addresses import interface_addresses, mapped_addresses_seen, volunteer_addresses
from .checker import Leak, ScrubError, assert_clean, find_leaks
from .decoders import MAX_DEPTH, MAX_GUNZIP
from .forms import _Targets
from .measurement import (
    ATTESTATION_PATH,
    CERTIFICATES_KEY,
    WITHHELD_KEY,
    scrub_lines,
    scrub_measurement,
)
from .memo import MEMO_BUDGET, MEMO_TEXT, _Memo
from .streams import ScrubbingLogFilter, ScrubbingStream, install_log_scrubbing
from .text import SCRUBBED, scrub_bytes, scrub_text

__all__ = [
    "ATTESTATION_PATH",
    "CERTIFICATES_KEY",
    "MAX_DEPTH",
    "MAX_GUNZIP",
    "MEMO_BUDGET",
    "MEMO_TEXT",
    "SCRUBBED",
    "WITHHELD_KEY",
    "Leak",
    "ScrubError",
    "ScrubbingLogFilter",
    "ScrubbingStream",
    "_Memo",
    "_Targets",
    "assert_clean",
    "find_leaks",
    "install_log_scrubbing",
    "interface_addresses",
    "mapped_addresses_seen",
    "scrub_bytes",
    "scrub_lines",
    "scrub_measurement",
    "scrub_text",
    "volunteer_addresses",
]
