"""Known blockpage fingerprints: short, public facts about what censors serve.

Each fingerprint names the country and practice it comes from and a public
source describing it (OONI's explorer and reports, Citizen Lab, the censors'
own pages). A match is conclusive evidence of blocking even without a control.
Matching is by small byte strings in the body or a header, never by whole pages.
To add one: a name, where it comes from, and the narrowest string that is
specific to the blockpage.

``BLOCKPAGE_HOSTS`` names the hosts that national and ISP filters send blocked
names to (a CNAME in the resolver's answer, or a redirect's Location): reaching
one of them is the same evidence as its page.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit


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


@dataclass(frozen=True)
class BlockpageHost:
    name: str  # the host; its subdomains match too
    country: str  # ISO 3166 code of where it is used
    source: str


# OONI's DNS fingerprints (github.com/ooni/blocking-fingerprints, fingerprints_dns.csv,
# each row citing an OONI explorer measurement) list these as CNAME targets of
# Indonesian ISPs' resolvers for blocked names; the others are the hosts the
# fingerprints above already name.
_OONI_DNS = "OONI blocking-fingerprints, fingerprints_dns.csv"
BLOCKPAGE_HOSTS: tuple[BlockpageHost, ...] = (
    BlockpageHost("trustpositif.kominfo.go.id", "ID", f"{_OONI_DNS} ooni.id_95 (TrustPositif)"),
    BlockpageHost("internet-positif.org", "ID", f"{_OONI_DNS} ooni.id_44 (Telkom)"),
    BlockpageHost("internet-positif.info", "ID", "Internet Positif (OONI Indonesia report, 2017)"),
    BlockpageHost("internetpositif.uzone.id", "ID", "Telkom Uzone (OONI Indonesia report)"),
    BlockpageHost("restricted.tri.co.id", "ID", f"{_OONI_DNS} ooni.id_41 (Tri)"),
    BlockpageHost("mypage.blocked.bltsel", "ID", f"{_OONI_DNS} ooni.id_45 (Telkomsel)"),
    BlockpageHost("internetsehataman.cbn.net.id", "ID", f"{_OONI_DNS} ooni.id_50 (CBN)"),
    BlockpageHost("blockpage.xl.co.id", "ID", f"{_OONI_DNS} ooni.id_51 (XL)"),
    BlockpageHost("netsafe.indosatm2.com", "ID", f"{_OONI_DNS} ooni.id_68 (Indosat)"),
    BlockpageHost("internetpositif3.firstmedia.com", "ID", f"{_OONI_DNS} ooni.id_72 (First Media)"),
    BlockpageHost("filter.melsa.net.id", "ID", f"{_OONI_DNS} ooni.id_73 (Melsa)"),
    BlockpageHost("block.centrin.net.id", "ID", f"{_OONI_DNS} ooni.id_74 (Centrin)"),
    BlockpageHost("trustpositif.iforte.net.id", "ID", f"{_OONI_DNS} ooni.id_79 (iForte)"),
    BlockpageHost("xblock.gmedia.net.id", "ID", f"{_OONI_DNS} ooni.id_90 (GMedia)"),
    BlockpageHost("internetsehat.smartfren.com", "ID", f"{_OONI_DNS} ooni.id_92 (Smartfren)"),
    BlockpageHost("internetpositif.mncplaymedia.com", "ID", f"{_OONI_DNS} ooni.id_93 (MNC Play)"),
    BlockpageHost("warning.or.kr", "KR", "South Korea's KCSC warning page (OONI)"),
    BlockpageHost("warning.rt.ru", "RU", "Rostelecom's Roskomnadzor warning page (OONI Russia)"),
)


def known_host(hostname: str | None) -> BlockpageHost | None:
    """The known blockpage host ``hostname`` is (or is under), or None."""
    name = (hostname or "").lower().rstrip(".")
    for host in BLOCKPAGE_HOSTS:
        if name == host.name or name.endswith("." + host.name):
            return host
    return None


def match(status: int | None, headers, body: bytes) -> str | None:
    """The name of the first fingerprint this response matches, or None."""
    if status == 451:
        return "generic.451"
    lowered = [(k.lower(), v) for k, v in headers]
    if status is not None and status // 100 == 3:
        location = next((v for k, v in lowered if k == "location"), "")
        host = known_host(urlsplit(location.strip()).hostname)
        if host is not None:
            return f"{host.country.lower()}.redirect:{host.name}"
    for fingerprint in FINGERPRINTS:
        if any(needle in body for needle in fingerprint.body):
            return fingerprint.name
        for name, needle in fingerprint.header:
            if any(k == name.lower() and needle in v for k, v in lowered):
                return fingerprint.name
    return None
