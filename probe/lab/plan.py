"""The lab's address plan and its fake Internet, as plain data.

Everything the lab builds is derived from this module: the namespaces and the
veth links between them, the addresses of every fake service, the DNS zone the
honest and the ISP resolvers serve, and which server process runs which
listener. Only documentation ranges are used (198.51.100.0/24, 203.0.113.0/24,
2001:db8::/32); 192.0.2.0/24 is left alone because the host may use it.

Nothing here touches the system; ``probe.lab.topology`` turns it into kernels'
state. ``docs/lab.md`` draws the same picture: keep both true together.
"""

from __future__ import annotations

from dataclasses import dataclass

# --------------------------------------------------------------------------- #
# Namespaces and links                                                         #
# --------------------------------------------------------------------------- #

PREFIX = "plab-"
CLIENT = PREFIX + "client"  # the volunteer running the probe
CENSOR = PREFIX + "censor"  # the router in the client's path where censorship happens
ISP = PREFIX + "isp"  # the ISP's recursive resolver, behind the censor
INTERNET = PREFIX + "inet"  # every fake service plus the honest DNS
CONTROL = PREFIX + "control"  # uncensored vantage: reaches the Internet directly

NAMESPACES = (CLIENT, CENSOR, ISP, INTERNET, CONTROL)
# The names the CLI accepts for `probe lab exec --ns NAME`.
SHORT_NAMES = {"client": CLIENT, "censor": CENSOR, "isp": ISP, "inet": INTERNET, "control": CONTROL}


@dataclass(frozen=True)
class Link:
    """A veth pair: ``a``'s end is called ``a_dev`` and carries ``a_v4``/``a_v6``."""

    a: str
    a_dev: str
    a_v4: str
    a_v6: str
    b: str
    b_dev: str
    b_v4: str
    b_v6: str
    prefix_v4: int = 30
    prefix_v6: int = 64


LINKS = (
    Link(CENSOR, "to-client", "198.51.100.1", "2001:db8:100:1::1",
         CLIENT, "to-censor", "198.51.100.2", "2001:db8:100:1::2"),
    Link(CENSOR, "to-isp", "198.51.100.5", "2001:db8:100:2::1",
         ISP, "to-censor", "198.51.100.6", "2001:db8:100:2::2"),
    Link(CENSOR, "to-inet", "198.51.100.9", "2001:db8:100:3::1",
         INTERNET, "to-censor", "198.51.100.10", "2001:db8:100:3::2"),
    Link(INTERNET, "to-control", "198.51.100.13", "2001:db8:100:4::1",
         CONTROL, "to-inet", "198.51.100.14", "2001:db8:100:4::2"),
)

CLIENT_V4 = "198.51.100.2"
CLIENT_V6 = "2001:db8:100:1::2"
CLIENT_DEV = "to-censor"
CENSOR_CLIENT_DEV = "to-client"  # where the censor shapes traffic towards the client
ISP_RESOLVER = "198.51.100.6"  # what the probe is told to use: `--resolver`
HONEST_RESOLVER = "198.51.100.53"  # authoritative for lab.test, never lies
ISP_BLOCKPAGE_HOST = "blocked.isp.lab.test"  # the ISP's own blockpage server (ISP_RESOLVER)
CONTROL_V4 = "198.51.100.14"
CONTROL_PORT = 8080
CONTROL_URL = f"http://{CONTROL_V4}:{CONTROL_PORT}"
# An OONI-protocol test helper (probe.lab.servers.oohelperd) next to ours, so the
# lab can compare `probe run --control-protocol oohelperd` with our own control.
OOHELPERD_PORT = 8081
OOHELPERD_URL = f"http://{CONTROL_V4}:{OOHELPERD_PORT}/"
CONTROL_UDP_ECHO_PORTS = (443, 596, 1400, 3478)  # `probe control serve --udp-echo`
SERVICES_DEV = "lo"  # the Internet namespace holds every service address on its loopback

# Static routes; there is no default route anywhere in the lab, so an address
# that is only DNS data (10.10.34.34, 127.0.0.1 of another host...) is
# unreachable from the client and no packet can leave for a real network.
ROUTES: dict[str, tuple[tuple[str, str], ...]] = {
    CLIENT: (
        ("198.51.100.0/24", "198.51.100.1"),
        ("203.0.113.0/24", "198.51.100.1"),
        ("2001:db8::/32", "2001:db8:100:1::1"),
    ),
    ISP: (
        ("198.51.100.0/24", "198.51.100.5"),
        ("203.0.113.0/24", "198.51.100.5"),
        ("2001:db8::/32", "2001:db8:100:2::1"),
    ),
    CENSOR: (
        ("198.51.100.12/30", "198.51.100.10"),
        ("198.51.100.53/32", "198.51.100.10"),
        ("203.0.113.0/24", "198.51.100.10"),
        ("2001:db8:100:4::/64", "2001:db8:100:3::2"),
        ("2001:db8:113::/64", "2001:db8:100:3::2"),
    ),
    INTERNET: (
        ("198.51.100.0/29", "198.51.100.9"),
        ("2001:db8:100:1::/64", "2001:db8:100:3::1"),
        ("2001:db8:100:2::/64", "2001:db8:100:3::1"),
    ),
    CONTROL: (
        ("198.51.100.0/24", "198.51.100.13"),
        ("203.0.113.0/24", "198.51.100.13"),
        ("2001:db8::/32", "2001:db8:100:4::1"),
    ),
}
# Addresses of the service range that nothing holds are dropped silently by
# the Internet namespace, like a stale address of a real service: connects
# time out instead of failing fast with an ICMP error.
BLACKHOLES = {INTERNET: ("203.0.113.0/24", "2001:db8:113::/64")}
FORWARDING = (CENSOR, INTERNET)

# --------------------------------------------------------------------------- #
# The fake Internet                                                            #
# --------------------------------------------------------------------------- #

ZONE = "lab.test"  # RFC 6761 reserves .test: these names can never be real


@dataclass(frozen=True)
class Host:
    """One address pair of a fake service and what listens on it.

    ``listeners`` are (kind, port) with kind one of: https, http, mtproto
    (Telegram DC: MTProto and HTTP POST on the same port), tcp (accepts and
    stays silent, like WhatsApp's chat ports), and on UDP ports (``UDP_KINDS``):
    stun (answers Binding Requests, a call reflector or relay), turn (answers an
    Allocate without credentials with 401 and a REALM and NONCE), udp-echo
    (sends every datagram back, a relay's media port) and quic (HTTP/3 over QUIC,
    a web front end). ``name`` is None for hosts the targets address by literal
    IP (Telegram datacenters and call reflectors).
    """

    service: str
    name: str | None
    v4: str
    v6: str | None
    listeners: tuple[tuple[str, int], ...]
    pki: str = "lab"  # which root signs its certificate: "lab" or "signal"
    download_bytes: int = 0  # size of /download on https listeners, 0 for none


def _host(service: str, name: str | None, last: int, listeners, **kw) -> Host:
    """203.0.113.<last>, and 2001:db8:113::<last> (same digits) for named hosts."""
    v6 = f"2001:db8:113::{last}" if name is not None else None
    return Host(service, name, f"203.0.113.{last}", v6, tuple(listeners), **kw)


UDP_KINDS = frozenset({"stun", "turn", "udp-echo", "quic"})
HTTPS = (("https", 443),)
QUIC = (("quic", 443),)
# Telegram's call reflectors answer STUN on UDP 596-599 and 1400 (tdlib's
# phoneConnection entries; Russia dropped exactly these in August 2025).
TELEGRAM_REFLECTOR_PORTS = (596, 597, 598, 599, 1400)
TELEGRAM_REFLECTOR = "203.0.113.17"
# The media datacenter sits on a prefix of its own, as Telegram's DC 203 does
# (Russia blackholed that prefix alone in February 2026).
TELEGRAM_MEDIA_DC = "203.0.113.205"
TELEGRAM_MEDIA_PREFIX = "203.0.113.204/30"
WHATSAPP_RELAY_ECHO_PORT = 3480  # the relay's media port: the echo of a call-like flow
SIGNAL_SFU_PORT = 10000  # Signal's calling SFU takes ICE (STUN) and media on one UDP port
HOSTS: tuple[Host, ...] = (
    # The baseline: what the probe uses to tell "my network works" from "blocked".
    _host("baseline", "www.baseline.lab.test", 100,
          HTTPS + (("http", 80),) + QUIC + (("stun", 3478),)),
    # Telegram: datacenters by literal IPv4 as in Telegram's own config, MTProto
    # and HTTP transport on 80 and 443; the web client by name.
    *(
        _host("telegram", None, 10 + dc, (("mtproto", 80), ("mtproto", 443)))
        for dc in range(1, 6)
    ),
    _host("telegram", "web.telegram.lab.test", 16, HTTPS),
    _host("telegram", None, 17, tuple(("stun", p) for p in TELEGRAM_REFLECTOR_PORTS)),
    Host("telegram", None, TELEGRAM_MEDIA_DC, None, (("mtproto", 80), ("mtproto", 443))),
    # WhatsApp: chat servers speak their own protocol on 443 and 5222: a TCP
    # connect is all a probe can check (as OONI's whatsapp test does).
    _host("whatsapp", "e1.whatsapp.lab.test", 21, (("tcp", 443), ("tcp", 5222))),
    _host("whatsapp", "e2.whatsapp.lab.test", 22, (("tcp", 443), ("tcp", 5222))),
    _host("whatsapp", "web.whatsapp.lab.test", 23, HTTPS),
    _host("whatsapp", "v.whatsapp.lab.test", 24, HTTPS),
    _host("whatsapp", "relay.whatsapp.lab.test", 25,
          (("stun", 3478), ("udp-echo", WHATSAPP_RELAY_ECHO_PORT))),
    # Signal pins its own root CA: a web-PKI-valid MITM still fails.
    _host("signal", "chat.signal.lab.test", 31, HTTPS, pki="signal"),
    _host("signal", "storage.signal.lab.test", 32, HTTPS, pki="signal"),
    _host("signal", "sfu.signal.lab.test", 33, (("stun", SIGNAL_SFU_PORT),)),
    _host("facebook", "www.facebook.lab.test", 41, HTTPS + QUIC),
    _host("facebook", "graph.facebook.lab.test", 42, HTTPS),
    _host("facebook", "edge-chat.facebook.lab.test", 43, HTTPS),
    _host("facebook", "stun.facebook.lab.test", 44, (("stun", 3478),)),
    _host("twitter", "www.twitter.lab.test", 51, HTTPS + QUIC),
    _host("twitter", "media.twitter.lab.test", 52, HTTPS, download_bytes=4 << 20),
    # A news site on plain HTTP and HTTPS (HTTP blockpages need port 80).
    _host("news", "www.news.lab.test", 61, HTTPS + (("http", 80),)),
    # SimpleX: its STUN and TURN servers listen on UDP 443 (stun.simplex.im,
    # turn.simplex.im in the apps' defaults).
    _host("simplex", "stun.simplex.lab.test", 71, (("stun", 443),)),
    _host("simplex", "turn.simplex.lab.test", 72, (("turn", 443),)),
)

SERVICES = tuple(dict.fromkeys(h.service for h in HOSTS))


def udp_ports(host: Host) -> set[int]:
    return {port for kind, port in host.listeners if kind in UDP_KINDS}


def hosts_of(service: str) -> tuple[Host, ...]:
    return tuple(h for h in HOSTS if h.service == service)


def host_named(name: str) -> Host:
    for h in HOSTS:
        if h.name == name:
            return h
    raise KeyError(name)


def host_at(address: str) -> Host:
    for h in HOSTS:
        if address in (h.v4, h.v6):
            return h
    raise KeyError(address)


def addresses(hosts: tuple[Host, ...] | list[Host], family: int | None = None) -> list[str]:
    """The IPv4 (family 4), IPv6 (6) or all addresses of ``hosts``."""
    out = []
    for h in hosts:
        if family in (None, 4):
            out.append(h.v4)
        if family in (None, 6) and h.v6:
            out.append(h.v6)
    return out


def zone_records() -> dict[str, dict[str, list[str]]]:
    """name -> {"A": [...], "AAAA": [...]} for every named host."""
    records: dict[str, dict[str, list[str]]] = {}
    for h in HOSTS:
        if h.name:
            entry = records.setdefault(h.name, {"A": [], "AAAA": []})
            entry["A"].append(h.v4)
            if h.v6:
                entry["AAAA"].append(h.v6)
    return {name: {k: v for k, v in rr.items() if v} for name, rr in records.items()}
