"""Known blockpage fingerprints: short, public facts about what censors serve.

Each fingerprint names the country and practice it comes from and a public
source describing it (OONI's explorer and reports, Citizen Lab, the censors'
own pages). A match is conclusive evidence of blocking even without a control.
Matching is by small byte strings in the body or a header, never by whole pages.
To add one: a name, where it comes from, and the narrowest string that is
specific to the blockpage.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Fingerprint:
    name: str
    source: str  # where the behaviour is documented
    body: tuple[bytes, ...] = ()  # any of these in the body
    header: tuple[tuple[str, str], ...] = ()  # (header name, substring of its value)


FINGERPRINTS: tuple[Fingerprint, ...] = (
    Fingerprint(
        "ir.peyvandha",
        "Iran: blocked sites are replaced by an iframe to 10.10.34.34 / peyvandha.ir "
        "(OONI reports on Iran, 2017-2023)",
        body=(b"peyvandha.ir", b'src="http://10.10.34.34', b'src="http://10.10.34.35',
              b'src="http://10.10.34.36'),
    ),
    Fingerprint(
        "ru.rkn-warning",
        "Russia: ISPs redirect blocked URLs to warning pages citing the Roskomnadzor registry "
        "(OONI, Roskomsvoboda)",
        body=(b"eais.rkn.gov.ru", b"blocklist.rkn.gov.ru"),
    ),
    Fingerprint(
        "id.internet-positif",
        "Indonesia: Internet Positif / Trust+ blockpage (OONI Indonesia report, 2017)",
        body=(b"internet-positif.info", b"internetpositif.uzone.id"),
        header=(("Location", "internet-positif"),),
    ),
    Fingerprint(
        "tr.btk",
        "Turkey: BTK notice served for blocked sites (OONI Turkey reports)",
        body=(b"Bilgi Teknolojileri ve Ileti", b"5651 say"),
    ),
    Fingerprint(
        "kr.warning",
        "South Korea: warning.or.kr blockpage (KCSC; OONI)",
        body=(b"warning.or.kr",),
        header=(("Location", "warning.or.kr"),),
    ),
    Fingerprint(
        "generic.451",
        "RFC 7725: HTTP 451 Unavailable For Legal Reasons, used by some ISPs' blockpages",
    ),
)


def match(status: int | None, headers, body: bytes) -> str | None:
    """The name of the first fingerprint this response matches, or None."""
    if status == 451:
        return "generic.451"
    lowered = [(k.lower(), v) for k, v in headers]
    for fingerprint in FINGERPRINTS:
        if any(needle in body for needle in fingerprint.body):
            return fingerprint.name
        for name, needle in fingerprint.header:
            if any(k == name.lower() and needle in v for k, v in lowered):
                return fingerprint.name
    return None
