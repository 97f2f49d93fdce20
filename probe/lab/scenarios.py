"""The catalogue of censorship scenarios: real-world censor behaviours as data.

Each :class:`Scenario` names the case it models and where it was documented,
lists the censor actions that reproduce it (``probe.lab.censor``), states the
ground truth the probe must reach (``probe.lab.truth``), and carries the
self-test observations (``probe.lab.observe``) that prove the lab really does
it before anyone judges the probe by it.

To add a scenario: append one to ``SCENARIOS`` (docs/lab.md walks through an
example); the self-test and probe tests pick it up by name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from probe.lab import plan
from probe.lab.censor import (
    Action,
    AllowlistMode,
    AllUdpDrop,
    ClientOffline,
    ClientWithoutIpv6,
    DnsInjection,
    DnsOnlyTo,
    DomesticOnly,
    DropTraffic,
    HttpBlockpage,
    HttpResponseDrop,
    IcmpReject,
    InterceptDns,
    IspBlockpageServer,
    KeywordReset,
    LossyDns,
    PayloadDrop,
    QuicSniFilter,
    QuicVersionDrop,
    RemoveAddresses,
    ResetConnections,
    ResolverAnswers,
    ResolverLies,
    SniDrop,
    SniFlowLimit,
    SniReset,
    StopService,
    StunInjection,
    Throttle,
    TlsAlert,
    TlsInterception,
    TurnDrop,
    Udp443Drop,
    UdpDrop,
    UdpFlowCutoff,
    UdpReject,
)
from probe.lab.observe import Check
from probe.lab.truth import ANY, Expect

LAB_ROOT = "issuer probe lab root"
PINNED_ROOT = "issuer probe lab pinned root"
CENSOR_ROOT = "issuer probe lab censor root"
INJECTED_A = "203.0.113.254"  # nothing holds it: a "random" public-looking address
INJECTED_AAAA = "2001:db8:113::254"


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    description: str  # the real-world case, in a few sentences
    sources: tuple[str, ...]
    actions: tuple[Action, ...]
    truth: tuple[Expect, ...]  # endpoint rules; unmatched endpoints must be ok
    services: Mapping[str, str] = field(default_factory=dict)  # unlisted: ok; "*": any
    checks: tuple[Check, ...] = ()
    baseline_reachable: bool = True  # add the baseline self-checks
    client_address_must_not_leak: bool = False  # the client-address leak check applies
    # service -> function -> status the probe must give ("telegram": {"calls": "blocked"})
    functions: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    # network-wide findings the summary must state: udp, restricted, network_down
    network: Mapping[str, object] = field(default_factory=dict)
    resolver: str = plan.ISP_RESOLVER  # what the probe is told to ask (`--resolver`)


def _names(service: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(h.name for h in plan.hosts_of(service) if h.name))


def _addrs(service: str, family: int | None = None) -> tuple[str, ...]:
    return tuple(plan.addresses(plan.hosts_of(service), family))


def dns(name: str, expect: str, qtype: str = "A", resolver: str = plan.ISP_RESOLVER,
        vantage: str = "client") -> Check:
    return Check("dns", name, expect, qtype=qtype, resolver=resolver, vantage=vantage)


def connect(address: str, port: int, expect: str, vantage: str = "client") -> Check:
    return Check("connect", address, expect, port=port, vantage=vantage)


def tls(address: str, sni: str, expect: str, vantage: str = "client") -> Check:
    return Check("tls", address, expect, port=443, sni=sni, vantage=vantage)


def http(
    address: str, host: str, expect: str, contains: str = "", vantage: str = "client"
) -> Check:
    return Check("http", address, expect, port=80, host=host, contains=contains, vantage=vantage)


def mtproto(address: str, port: int, expect: str, vantage: str = "client") -> Check:
    return Check("mtproto", address, expect, port=port, vantage=vantage)


def download(address: str, sni: str, expect: str, vantage: str = "client") -> Check:
    return Check("download", address, expect, port=443, sni=sni, path="/download",
                 vantage=vantage, timeout=2.0, seconds=2.0)


def stun(address: str, port: int, expect: str, vantage: str = "client") -> Check:
    return Check("stun", address, expect, port=port, vantage=vantage)


def turn(address: str, port: int, expect: str, vantage: str = "client") -> Check:
    return Check("turn", address, expect, port=port, vantage=vantage)


def udp_flow(address: str, port: int, expect: str, payload: str = "echo",
             vantage: str = "client") -> Check:
    """A flow of 40 datagrams, one every 0.05 s (``payload`` "stun": Binding Requests)."""
    return Check("udpflow", address, expect, port=port, sni="stun" if payload == "stun" else "",
                 vantage=vantage, timeout=1.0)


# A QUIC handshake and HTTP/3 GET cross the censor's NFQUEUE filter, a Python process
# that decrypts every Initial: on a loaded 2-core CI machine 1.5 s was not always enough
# for a flow the filter lets through.
QUIC_CHECK_TIMEOUT = 4.0


def quic(address: str, sni: str, expect: str, vantage: str = "client") -> Check:
    return Check("quic", address, expect, port=443, sni=sni, vantage=vantage,
                 timeout=QUIC_CHECK_TIMEOUT)


BASELINE_CHECKS = (
    dns("www.baseline.lab.test", "answer 203.0.113.100"),
    tls("203.0.113.100", "www.baseline.lab.test", LAB_ROOT),
)

TELEGRAM = _addrs("telegram")
TELEGRAM_DC = tuple(f"203.0.113.{10 + dc}" for dc in range(1, 6))
FACEBOOK = _addrs("facebook")
NEWS = _addrs("news")
TWITTER = _addrs("twitter")
WHATSAPP_CHAT = ("203.0.113.21", "2001:db8:113::21", "203.0.113.22", "2001:db8:113::22")
REQ_PQ_MULTI_HEX = "|f18e7ebe|"  # req_pq_multi#be7e8ef1, little-endian on the wire
ISP_BLOCKPAGE_HOST = plan.ISP_BLOCKPAGE_HOST
WHATSAPP_WEB = ("203.0.113.23", "2001:db8:113::23", "203.0.113.24", "2001:db8:113::24")
# TCP-only censors of Facebook leave its HTTP/3 front end and its STUN server alone.
FACEBOOK_UDP_OK = (Expect("facebook-quic", "ok"), Expect("facebook-stun", "ok"))
REFLECTOR = plan.TELEGRAM_REFLECTOR
REFLECTOR_PORTS = plan.TELEGRAM_REFLECTOR_PORTS
WHATSAPP_RELAY = tuple(plan.addresses([plan.host_named("relay.whatsapp.lab.test")]))
WHATSAPP_RELAY_PORTS = (3478, plan.WHATSAPP_RELAY_ECHO_PORT)
CALL_RELAYS = (REFLECTOR, *WHATSAPP_RELAY)
CLIENT_MAPPED = f"mapped {plan.CLIENT_V4}"  # a STUN answer telling the client its own address
CONTROL_MAPPED = f"mapped {plan.CONTROL_V4}"
FORGED_MAPPED = "203.0.113.254"  # nothing holds it
FLOW_CUTOFF = 16  # datagrams of a flow that pass; a QUIC handshake and GET take 5
# The ISP and the control helper: a probe must still reach its control to say anything.
ALLOWLIST = ("198.51.100.4/30", "198.51.100.12/30", "2001:db8:100:4::/64")
ALL_SERVICE_ADDRESSES = tuple(
    a for service in ("baseline", "telegram", "whatsapp", "signal", "facebook", "twitter", "news")
    for a in _addrs(service)
)

SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        name="none",
        title="No censorship",
        description="Nothing is censored: every endpoint must read ok. Catches a probe that "
        "sees censorship everywhere.",
        sources=(),
        actions=(),
        truth=(),
        checks=(
            dns("e1.whatsapp.lab.test", "answer 203.0.113.21"),
            dns("web.telegram.lab.test", "answer 2001:db8:113::16", qtype="AAAA"),
            connect("203.0.113.11", 443, "ok"),
            connect("203.0.113.21", 5222, "ok"),
            tls("203.0.113.31", "chat.signal.lab.test", PINNED_ROOT),
            tls("203.0.113.41", "www.facebook.lab.test", LAB_ROOT),
            http("203.0.113.61", "www.news.lab.test", "200"),
            download("203.0.113.52", "media.twitter.lab.test", "kbit>5000"),
            tls("2001:db8:113::100", "www.baseline.lab.test", LAB_ROOT),
            connect("2001:db8:113::21", 443, "ok"),
            stun(REFLECTOR, 1400, CLIENT_MAPPED),
            stun("2001:db8:113::44", 3478, f"mapped {plan.CLIENT_V6}"),
            turn("203.0.113.72", 443, "challenge"),
            udp_flow("203.0.113.25", plan.WHATSAPP_RELAY_ECHO_PORT, "all 40"),
            quic("203.0.113.41", "www.facebook.lab.test", "h3 200"),
            quic("2001:db8:113::100", "www.baseline.lab.test", "h3 200"),
        ),
    ),
    Scenario(
        name="dns-nxdomain",
        title="ISP resolver answers NXDOMAIN",
        description="The ISP's resolver claims WhatsApp's names do not exist. Resolver-level "
        "NXDOMAIN is among the most common DNS blocking methods OONI and Censored Planet "
        "record.",
        sources=("OONI glossary, 'DNS tampering': https://ooni.org/support/glossary/",),
        actions=(ResolverAnswers(_names("whatsapp"), "nxdomain"),),
        truth=(Expect("whatsapp-*", "dns_blocked", "dns.nxdomain"),),
        services={"whatsapp": "blocked"},
        checks=(
            dns("e1.whatsapp.lab.test", "nxdomain"),
            dns("web.whatsapp.lab.test", "nxdomain", qtype="AAAA"),
            dns("e1.whatsapp.lab.test", "answer 203.0.113.21", resolver=plan.HONEST_RESOLVER,
                vantage="control"),
        ),
    ),
    Scenario(
        name="dns-forged-public",
        title="Resolver answers an unrelated public address (Great Firewall style)",
        description="The Great Firewall's forged DNS answers are routable public addresses "
        "that belong to someone else (nothing of the service listens there), so a bogon "
        "check alone misses them; only the control's answers and reachability tell.",
        sources=(("Hoang et al., 'How Great is the Great Firewall? Measuring China's DNS "
                  "Censorship', USENIX Security 2021 (GFWatch)"),
                 "Anonymous, 'Towards a Comprehensive Picture of the Great Firewall's DNS "
                 "Censorship', FOCI 2014"),
        actions=(ResolverAnswers(_names("whatsapp"), "address", ("203.0.113.200",)),),
        truth=(Expect("whatsapp-*", "dns_blocked", "dns.inconsistent"),),
        services={"whatsapp": "blocked"},
        checks=(dns("e1.whatsapp.lab.test", "answer 203.0.113.200"),),
    ),
    Scenario(
        name="dns-bogon-iran",
        title="Resolver answers a private blockpage address (Iran)",
        description="Iran's resolvers answer 10.10.34.34-36 for blocked names, an address of "
        "the national blockpage server that is private and unreachable from abroad.",
        sources=(("OONI, 'Iran Protests: OONI data confirms censorship events' (2018), and OONI's "
                 "blockpage fingerprints (10.10.34.34-36)"),),
        actions=(ResolverAnswers(_names("facebook"), "address", ("10.10.34.34",)),),
        truth=(Expect("facebook-*", "dns_blocked", "dns.bogon"),),
        services={"facebook": "blocked"},
        checks=(
            dns("www.facebook.lab.test", "answer 10.10.34.34"),
            dns("graph.facebook.lab.test", "empty", qtype="AAAA"),
        ),
    ),
    Scenario(
        name="dns-injection",
        title="On-path DNS injection races the real answer (Great Firewall)",
        description="An on-path injector answers queries for Twitter's names with forged "
        "addresses before the resolver does; the genuine answer arrives too, later. Two "
        "different replies to one query are the signature of injection.",
        sources=(
            ("Anonymous, 'The Collateral Damage of Internet Censorship by DNS Injection', SIGCOMM "
            "CCR 2012; Hoang et al., 'How Great is the Great Firewall? Measuring China's DNS "
            "Censorship', USENIX Security 2021"),
        ),
        actions=(DnsInjection(_names("twitter"), INJECTED_A, INJECTED_AAAA),),
        truth=(Expect("twitter-*", "dns_blocked", "dns.injected"),),
        services={"twitter": "blocked"},
        checks=(
            dns("www.twitter.lab.test", f"injected answer {INJECTED_A} | answer 203.0.113.51"),
            dns("media.twitter.lab.test",
                f"injected answer {INJECTED_AAAA} | answer 2001:db8:113::52", qtype="AAAA"),
            dns("www.facebook.lab.test", "answer 203.0.113.41"),
        ),
    ),
    Scenario(
        name="dns-localhost-turkmenistan",
        title="Resolver answers 127.0.0.1 (Turkmenistan)",
        description="Turkmenistan's resolvers answer 127.0.0.1 for blocked names, so the "
        "client connects to itself.",
        sources=(("Nourin et al., 'Measuring and Evading Turkmenistan's Internet Censorship', "
                  "WWW 2023"),),
        actions=(ResolverAnswers(_names("news"), "address", ("127.0.0.1",)),),
        truth=(Expect("news-*", "dns_blocked", "dns.bogon"),),
        services={"news": "blocked"},
        checks=(dns("www.news.lab.test", "answer 127.0.0.1"),),
    ),
    Scenario(
        name="dns-drop",
        title="Resolver silently drops queries for one service",
        description="The resolver never answers queries for Signal's names: the client's "
        "lookups time out while every other name resolves.",
        sources=(("Censored Planet's Satellite/Iris measurements classify resolver timeouts for "
                 "single names as DNS interference"),),
        actions=(ResolverAnswers(_names("signal"), "drop"),),
        truth=(Expect("signal-*", "dns_blocked", "dns.timeout"),),
        services={"signal": "blocked"},
        checks=(
            dns("chat.signal.lab.test", "timeout"),
            dns("chat.signal.lab.test", "answer 203.0.113.31", resolver=plan.HONEST_RESOLVER,
                vantage="control"),
        ),
    ),
    Scenario(
        name="ip-blackhole",
        title="Every address of Telegram is blackholed (Russia 2018)",
        description="In April 2018 Roskomnadzor ordered Telegram's addresses blocked; ISPs "
        "null-routed its datacenter prefixes. Connects time out.",
        sources=(("Roskomnadzor's April 2018 order to block Telegram: ISPs blocked millions of "
                 "addresses (OONI and Roskomsvoboda documented it)"),),
        actions=(DropTraffic(TELEGRAM),),
        truth=(Expect("telegram-calls*", "udp_blocked", "udp.timeout"),
               Expect("telegram-*", "tcp_blocked", "tcp.timeout")),
        services={"telegram": "blocked"},
        checks=(
            connect("203.0.113.11", 443, "timeout"),
            connect("2001:db8:113::16", 443, "timeout"),
            connect("203.0.113.11", 443, "ok", vantage="control"),
            connect("203.0.113.21", 443, "ok"),
        ),
    ),
    Scenario(
        name="ip-blackhole-partial",
        title="Some of Telegram's datacenters are blackholed",
        description="Only three of five datacenters are unreachable: the service is partly "
        "blocked (OONI's telegram test calls it ok as soon as one datacenter answers).",
        sources=("OONI spec ts-020 (telegram): https://github.com/ooni/spec",),
        actions=(DropTraffic(TELEGRAM_DC[:3]),),
        truth=(Expect("telegram-dc[123]", "tcp_blocked", "tcp.timeout"),),
        services={"telegram": "partially_blocked"},
        checks=(
            connect("203.0.113.12", 80, "timeout"),
            connect("203.0.113.14", 80, "ok"),
        ),
    ),
    Scenario(
        name="tcp-reset",
        title="RST injection for one address and port",
        description="The censor answers SYNs to one WhatsApp chat address on port 5222 with a "
        "forged RST; 443 on the same address still works. To the client's socket this reads "
        "as 'connection refused', so only the control tells it from a closed port.",
        sources=("OONI glossary, 'TCP/IP blocking' and 'RST injection'",),
        actions=(ResetConnections("203.0.113.21", 5222),),
        truth=(Expect("whatsapp-e1", "tcp_blocked", "tcp.refused", "203.0.113.21", 5222),),
        services={"whatsapp": "partially_blocked"},
        checks=(
            connect("203.0.113.21", 5222, "refused"),
            connect("203.0.113.21", 443, "ok"),
            connect("2001:db8:113::21", 5222, "ok"),
            connect("203.0.113.21", 5222, "ok", vantage="control"),
        ),
    ),
    Scenario(
        name="tls-sni-reset",
        title="ClientHello SNI filtering by RST (Great Firewall)",
        description="DPI reads the server name in the TLS ClientHello and resets the "
        "connection when it names Signal. TCP connects succeed; the handshake is reset.",
        sources=(("Chai et al., 'On the Importance of Encrypted-SNI (ESNI) to Censorship "
                 "Circumvention', FOCI 2019"),),
        actions=(SniReset(_names("signal")),),
        truth=(Expect("signal-sfu", "ok"),  # UDP: no ClientHello to match
               Expect("signal-*", "tls_blocked", "tls.reset")),
        services={"signal": "partially_blocked"},
        checks=(
            connect("203.0.113.31", 443, "ok"),
            tls("203.0.113.31", "chat.signal.lab.test", "reset"),
            tls("2001:db8:113::32", "storage.signal.lab.test", "reset"),
            tls("203.0.113.31", "chat.signal.lab.test", PINNED_ROOT, vantage="control"),
        ),
    ),
    Scenario(
        name="tls-sni-drop",
        title="ClientHello SNI filtering by dropping the flow",
        description="DPI drops a ClientHello naming Facebook and every later packet of that "
        "connection: the TLS handshake times out (Iran; Russia's TSPU).",
        sources=("Xue et al., 'TSPU: Russia's Decentralized Censorship System', IMC 2022",),
        actions=(SniDrop(_names("facebook")),),
        truth=(*FACEBOOK_UDP_OK, Expect("facebook-*", "tls_blocked", "tls.timeout")),
        services={"facebook": "partially_blocked"},
        checks=(
            connect("203.0.113.41", 443, "ok"),
            tls("203.0.113.41", "www.facebook.lab.test", "timeout"),
            tls("203.0.113.41", "www.baseline.lab.test", LAB_ROOT),
        ),
    ),
    Scenario(
        name="tls-mitm",
        title="TLS interception with an untrusted root (Kazakhstan 2019)",
        description="In 2019 Kazakhstan's ISPs intercepted TLS to Facebook, Google, Twitter and "
        "others with certificates for the right names from a government root users were told "
        "to install.",
        sources=(("Raman et al., 'Investigating Large Scale HTTPS Interception in Kazakhstan', "
                 "IMC 2020"),),
        actions=(TlsInterception(FACEBOOK),),
        truth=(*FACEBOOK_UDP_OK, Expect("facebook-*", "tls_blocked", "tls.mitm")),
        services={"facebook": "partially_blocked"},
        checks=(
            tls("203.0.113.41", "www.facebook.lab.test", CENSOR_ROOT),
            tls("2001:db8:113::43", "edge-chat.facebook.lab.test", CENSOR_ROOT),
            tls("203.0.113.41", "www.facebook.lab.test", LAB_ROOT, vantage="control"),
        ),
    ),
    Scenario(
        name="http-blockpage",
        title="HTTP blockpage injected on port 80 (Iran)",
        description="Plain HTTP to the news site gets Iran's 403 page with an iframe to "
        "10.10.34.34; HTTPS to the same site is untouched.",
        sources=("OONI, 'Iran Protests: OONI data confirms censorship events' (2018)",),
        actions=(HttpBlockpage(NEWS),),
        truth=(Expect("news-http", "http_blocked", "http.blockpage"),),
        services={"news": "partially_blocked"},
        checks=(
            http("203.0.113.61", "www.news.lab.test", "403", contains="10.10.34.34"),
            http("2001:db8:113::61", "www.news.lab.test", "403", contains="10.10.34.34"),
            http("203.0.113.100", "www.baseline.lab.test", "200"),
            tls("203.0.113.61", "www.news.lab.test", LAB_ROOT),
        ),
    ),
    Scenario(
        name="http-redirect-warning",
        title="HTTP redirected to the ISP's warning page (Russia)",
        description="Russian ISPs answer plain HTTP requests for blocked sites with a 302 to "
        "their own warning page citing the Roskomnadzor registry; the control is not "
        "redirected. No blockpage fingerprint is needed: the control tells.",
        sources=("OONI, 'Russia started blocking Tor' (2021) and OONI Explorer's Russian "
                 "web_connectivity measurements (ISP warning-page redirects)",
                 "Roskomsvoboda, documentation of ISP blocking stubs"),
        actions=(HttpBlockpage(NEWS, redirect=True),),
        truth=(Expect("news-http", "http_blocked", "http.blockpage"),),
        services={"news": "partially_blocked"},
        checks=(
            http("203.0.113.61", "www.news.lab.test", "302", contains="warning.isp.lab.test"),
            http("203.0.113.100", "www.baseline.lab.test", "200"),
        ),
    ),
    Scenario(
        name="throttle",
        title="Twitter throttled to 150 kbit/s (Russia 2021)",
        description="In March 2021 Russia throttled Twitter's traffic to about 130-150 kbit/s "
        "with its TSPU boxes; connections work, transfers crawl.",
        sources=(("Xue et al., 'Throttling Twitter: an emerging censorship technique in Russia', "
                 "IMC 2021"),),
        actions=(Throttle(TWITTER),),
        truth=(Expect("twitter-media", "throttled", "throttle"),),
        services={"twitter": ANY},
        checks=(
            download("203.0.113.52", "media.twitter.lab.test", "kbit<300"),
            download("203.0.113.52", "media.twitter.lab.test", "kbit>5000", vantage="control"),
            download("203.0.113.100", "www.baseline.lab.test", "kbit>5000"),
        ),
    ),
    Scenario(
        name="slow-link",
        title="The volunteer's whole link is slow, nothing is censored",
        description="A slow home connection (1.2 Mbit/s with a deep buffer, as on congested "
        "mobile or rural links) makes every transfer slow, the baseline's included. A slow "
        "transfer is throttling only when the volunteer's own baseline transfer is fast.",
        sources=("Our own rule: throttling is judged against the control and the baseline, "
                 "so a slow link is not a throttled service",),
        actions=(Throttle(ALL_SERVICE_ADDRESSES, kbit=1200, queue_bytes=100_000),),
        truth=(),
        checks=(
            download("203.0.113.100", "www.baseline.lab.test", "kbit<2000"),
            download("203.0.113.52", "media.twitter.lab.test", "kbit>5000", vantage="control"),
        ),
    ),
    Scenario(
        name="service-down",
        title="The service's server is down, nothing is censored",
        description="The news site's server is not running: everyone, the control included, "
        "gets 'connection refused'. It must read down, never blocked.",
        sources=("Our own rule: a dead endpoint is never reported as blocked (the control "
                 "fails the same way)",),
        actions=(StopService("news"),),
        truth=(Expect("news-*", "down", "tcp.refused"),),
        services={"news": "down"},
        checks=(
            connect("203.0.113.61", 80, "refused"),
            connect("203.0.113.61", 443, "refused", vantage="control"),
        ),
    ),
    # --- decisions the control makes possible (blocked, down, inconclusive) -------
    Scenario(
        name="control-unreachable",
        title="The censor blocks Telegram and the control helper",
        description="Telegram is blackholed and the control helper cannot be reached either: "
        "without a control, the probe must not call Telegram ok, nor claim more than it knows.",
        sources=(),
        actions=(DropTraffic(TELEGRAM), DropTraffic((plan.CONTROL_V4,))),
        truth=(Expect("telegram-*", "inconclusive", ANY),),
        services={"telegram": "inconclusive"},
        checks=(
            connect(plan.CONTROL_V4, plan.CONTROL_PORT, "timeout"),
            connect("203.0.113.11", 443, "timeout"),
        ),
    ),
    Scenario(
        name="client-offline",
        title="The client is offline",
        description="The volunteer's own link is down: everything fails, the baseline and the "
        "control included. Nothing may be reported as blocked.",
        sources=(),
        actions=(ClientOffline(),),
        truth=(Expect("*", "inconclusive", ANY),),
        services={service: "inconclusive" for service in plan.SERVICES},
        checks=(
            connect("203.0.113.100", 443, "unreachable"),
            dns("www.baseline.lab.test", "unreachable"),
        ),
        baseline_reachable=False,
    ),
    Scenario(
        name="endpoint-down",
        title="One endpoint is down for everyone (stale address)",
        description="One WhatsApp chat address no longer exists: connects time out from the "
        "client and from the control alike. OONI's stale endpoint lists produced false "
        "positives this way; it must read down.",
        sources=("OONI's stale Signal and WhatsApp endpoint lists gave false positives "
                 "(ooni/probe#2344, #2627)",),
        actions=(RemoveAddresses(("203.0.113.22", "2001:db8:113::22")),),
        truth=(Expect("whatsapp-e2", "down", "tcp.timeout"),),
        services={"whatsapp": ANY},
        checks=(
            connect("203.0.113.22", 443, "timeout"),
            connect("203.0.113.22", 443, "timeout", vantage="control"),
        ),
    ),
    Scenario(
        name="ipv6-no-route",
        title="AAAA answers, but the client has no IPv6",
        description="Names resolve to IPv6 addresses too, but the client has no IPv6 "
        "connectivity: IPv6 failures are inconclusive, not blocking (OONI misreads them as TCP "
        "blocking).",
        sources=("IPv6 failures on a client without IPv6 connectivity are easily misread as "
                 "TCP blocking",),
        actions=(ClientWithoutIpv6(),),
        truth=(Expect("*", "inconclusive", ANY, address="*:*"),),
        checks=(
            connect("2001:db8:113::100", 443, "unreachable"),
            dns("www.baseline.lab.test", "answer 2001:db8:113::100", qtype="AAAA"),
        ),
    ),
    # --- privacy: the client's address never reaches a report ---------------------
    Scenario(
        name="blockpage-echoes-address",
        title="A blockpage that repeats the client's address",
        description="Like the Iranian blockpage, but the page shows the client's address in "
        "its body and in a header: no report may contain that address, in any encoding.",
        sources=(),
        actions=(HttpBlockpage(NEWS, echo_client=True),),
        truth=(Expect("news-http", "http_blocked", "http.blockpage"),),
        services={"news": "partially_blocked"},
        checks=(
            http("203.0.113.61", "www.news.lab.test", "403", contains=plan.CLIENT_V4),
            http("2001:db8:113::61", "www.news.lab.test", "403", contains=plan.CLIENT_V6),
        ),
        client_address_must_not_leak=True,
    ),
    # --- DPI on payloads, flow freezing, ICMP rejects, resolver error codes ---------
    Scenario(
        name="mtproto-dpi",
        title="Telegram's MTProto recognised by DPI and dropped (Iran, Russia 2018)",
        description="DPI recognises Telegram's unobfuscated MTProto in the first payload of "
        "a connection to the datacenters and drops it and the rest of the flow; the TCP "
        "handshake passes and plain HTTP to the same addresses still works. Only the MTProto "
        "exchange fails: protocol_blocked, not tcp_blocked.",
        sources=("TelegramMessenger/MTProxy issue #35 (2018): Iran's DPI identifies MTProto "
                 "and blocks it while the servers stay reachable",
                 "TelegramMessenger/MTProxy issue #138 (2018): MTProto's fixed packet sizes "
                 "matched by a DPI rule; tested by Rostelecom"),
        actions=(PayloadDrop(TELEGRAM_DC, (REQ_PQ_MULTI_HEX,)),),
        truth=(Expect("telegram-dc*", "protocol_blocked", "protocol.timeout"),),
        services={"telegram": "partially_blocked"},
        checks=(
            connect("203.0.113.11", 443, "ok"),
            mtproto("203.0.113.11", 443, "timeout"),
            mtproto("203.0.113.14", 80, "timeout"),
            http("203.0.113.14", "203.0.113.14", "200"),
            mtproto("203.0.113.11", 443, "answer", vantage="control"),
        ),
    ),
    Scenario(
        name="tls-freeze-16k",
        title="TLS flows frozen after their first 16 KB (Russia's TSPU, 2024-2025)",
        description="Connections to some hosts (Cloudflare, Hetzner, DigitalOcean) complete "
        "their TLS handshake and the first ~16 KB, then hang for good: every later packet is "
        "dropped. Small pages load; a transfer stops. Over the transfer's window the rate is "
        "near zero while the control's is fast: throttled.",
        sources=("net4people/bbs issue #417 (2025): sites behind Cloudflare, Hetzner and "
                 "DigitalOcean hang after about 16 KB of transferred data",
                 "net4people/bbs issue #490 (2025): Russia's new method, connections frozen "
                 "after 16-20 KB"),
        actions=(SniFlowLimit(("media.twitter.lab.test",), after_bytes=16_000),),
        truth=(Expect("twitter-media", "throttled", "throttle"),),
        services={"twitter": "partially_blocked"},
        checks=(
            tls("203.0.113.52", "media.twitter.lab.test", LAB_ROOT),
            download("203.0.113.52", "media.twitter.lab.test", "kbit<300"),
            download("203.0.113.52", "media.twitter.lab.test", "kbit>5000", vantage="control"),
            download("203.0.113.100", "www.baseline.lab.test", "kbit>5000"),
        ),
    ),
    Scenario(
        name="throttle-sni-late",
        title="Per-flow throttling by SNI after a first burst (Russia 2021 style)",
        description="Flows whose ClientHello names Twitter's media host are shaped to 150 "
        "kbit/s once their first 100 KB have passed at full speed, so a short test looks "
        "fast at first. The other Twitter host and every other flow are untouched.",
        sources=(("Xue et al., 'Throttling Twitter: an emerging censorship technique in "
                  "Russia', IMC 2021 (throttling keyed on the SNI, per flow); the initial "
                  "allowance is our variation, to catch probes that measure only the start"),),
        actions=(SniFlowLimit(("media.twitter.lab.test",), after_bytes=100_000, kbit=150),),
        truth=(Expect("twitter-media", "throttled", "throttle"),),
        services={"twitter": "partially_blocked"},
        checks=(
            download("203.0.113.52", "media.twitter.lab.test", "kbit<1500"),
            download("203.0.113.52", "media.twitter.lab.test", "kbit>5000", vantage="control"),
            download("203.0.113.100", "www.baseline.lab.test", "kbit>5000"),
        ),
    ),
    Scenario(
        name="icmp-prohibited",
        title="Connections rejected with ICMP 'administratively prohibited'",
        description="Instead of dropping SYNs silently, the filtering router rejects them "
        "with an ICMP destination unreachable, 'communication administratively prohibited' "
        "(a REJECT rule, as firewalld configures by default). Connects fail at once; the "
        "method must say so, not 'timeout' nor a local error.",
        sources=("RFC 1812 5.2.7.1 and RFC 4443 3.1 (the ICMP codes a filter answers with)",
                 "firewalld/firewalld issue #1204: a filtering router answering 'unreachable "
                 "- admin prohibited filter'"),
        actions=(IcmpReject(WHATSAPP_CHAT),),
        truth=(Expect("whatsapp-e[12]", "tcp_blocked", "tcp.prohibited"),),
        services={"whatsapp": "partially_blocked"},
        checks=(
            connect("203.0.113.21", 443, "unreachable"),
            connect("2001:db8:113::22", 5222, "prohibited"),
            connect("203.0.113.21", 443, "ok", vantage="control"),
            connect("203.0.113.23", 443, "ok"),
        ),
    ),
    Scenario(
        name="dns-error-codes",
        title="Resolver errors only for blocked names: SERVFAIL, REFUSED, NODATA",
        description="Several ISPs' resolvers fail instead of lying: SERVFAIL for Signal, "
        "REFUSED for WhatsApp, an empty NOERROR answer (NODATA) for Facebook, while every "
        "other name resolves and the control resolves these. Each must be dns_blocked with "
        "its own method.",
        sources=("OONI's failure vocabulary (data format df-007): dns_server_failure, "
                 "dns_refused_error, dns_no_answer are recorded for blocked names",
                 "RFC 2308 section 2.2 (NODATA: NOERROR with no answer)"),
        actions=(ResolverLies((
            ResolverAnswers(_names("signal"), "servfail"),
            ResolverAnswers(_names("whatsapp"), "refused"),
            ResolverAnswers(_names("facebook"), "nodata"),
        )),),
        truth=(Expect("signal-*", "dns_blocked", "dns.servfail"),
               Expect("whatsapp-*", "dns_blocked", "dns.refused"),
               Expect("facebook-*", "dns_blocked", "dns.no_answer")),
        services={"signal": "blocked", "whatsapp": "blocked", "facebook": "blocked"},
        checks=(
            dns("chat.signal.lab.test", "servfail"),
            dns("e1.whatsapp.lab.test", "refused"),
            dns("www.facebook.lab.test", "empty"),
            dns("www.facebook.lab.test", "answer 203.0.113.41", resolver=plan.HONEST_RESOLVER,
                vantage="control"),
        ),
    ),
    Scenario(
        name="dns-cname-blockpage",
        title="Resolver CNAMEs blocked names to the ISP's blockpage host (Indonesia, Turkey)",
        description="The ISP's resolver answers the news site's names with a CNAME to its "
        "own blockpage host, whose public address serves a 200 page no fingerprint knows, "
        "to anyone (the control too, when asked at that address). Only the page the "
        "control gets from its own resolver's address tells the lie.",
        sources=("OONI, 'Indonesia: Internet Positif' reports (DNS-based blocking redirecting "
                 "to the ISPs' blockpages)",
                 "Internet Positif / TrustPositif: ISP resolvers redirect blocked domains to "
                 "their blockpage (e.g. IndiHome's block address)"),
        actions=(ResolverAnswers(_names("news"), "address", (plan.ISP_RESOLVER,),
                                 cname=ISP_BLOCKPAGE_HOST),
                 IspBlockpageServer()),
        truth=(Expect("news-*", "dns_blocked", "dns.inconsistent"),),
        services={"news": "blocked"},
        checks=(
            dns("www.news.lab.test", f"answer {plan.ISP_RESOLVER}"),
            http(plan.ISP_RESOLVER, "www.news.lab.test", "200", contains="Access denied"),
            http(plan.ISP_RESOLVER, "www.news.lab.test", "200", contains="Access denied",
                 vantage="control"),
            http("203.0.113.61", "www.news.lab.test", "200", vantage="control"),
        ),
    ),
    Scenario(
        name="http-host-reset",
        title="Plain HTTP reset when the request names a blocked host (Great Firewall)",
        description="A keyword filter sees 'Host: www.news.lab.test' in a request to port 80 "
        "and answers with an RST after the TCP handshake; HTTPS to the same site works. "
        "The request is cut: http_blocked, http.reset.",
        sources=("Clayton, Murdoch, Watson, 'Ignoring the Great Firewall of China', PET 2006 "
                 "(RSTs after a request carrying a blocked keyword)",),
        actions=(KeywordReset("Host: www.news.lab.test"),),
        truth=(Expect("news-http", "http_blocked", "http.reset"),),
        services={"news": "partially_blocked"},
        checks=(
            connect("203.0.113.61", 80, "ok"),
            http("203.0.113.61", "www.news.lab.test", "reset"),
            http("203.0.113.100", "www.baseline.lab.test", "200"),
            http("203.0.113.61", "www.news.lab.test", "200", vantage="control"),
        ),
    ),
    Scenario(
        name="http-unknown-blockpage",
        title="HTTP answered with a blockpage no fingerprint knows",
        description="Port-80 requests for the news site get a 200 page of the ISP's own, "
        "matching no known fingerprint. Against the control's page (another title, several "
        "times the size) it is http_blocked; without a control nothing could tell it from the "
        "site, so the rule needs the control.",
        sources=("OONI web_connectivity (spec ts-017): HTTP diff by body length proportion and "
                 "title against the control",),
        actions=(HttpBlockpage(NEWS, page="unknown"),),
        truth=(Expect("news-http", "http_blocked", "http.blockpage", needs_control=True),),
        services={"news": "partially_blocked"},
        checks=(
            http("203.0.113.61", "www.news.lab.test", "200", contains="Access denied"),
            http("203.0.113.61", "www.news.lab.test", "200", vantage="control"),
        ),
    ),
)

SCENARIOS += (
    # --- TLS alerts, transparent DNS proxies, known blockpage hosts, per-family blocks
    Scenario(
        name="tls-alert",
        title="A forged TLS alert answers a ClientHello naming a blocked server",
        description="A middlebox reads the SNI of ClientHellos to WhatsApp's web hosts and "
        "answers a blocked name with a forged fatal TLS alert record (handshake_failure for "
        "web, unrecognized_name for registration), then closes with a FIN: no RST, no "
        "timeout. Other names to the same addresses pass. The control completes the "
        "handshake: tls_blocked, tls.alert.",
        sources=("ooni/probe issue #2419 (2023): 'tls: unrecognized name' alerts seen in "
                 "OONI data for blocked sites, which the engine did not classify",
                 "RFC 8446 6.2 and RFC 6066 3: handshake_failure (40) and unrecognized_name "
                 "(112), the alerts a filter forges to look like the server"),
        actions=(TlsAlert(WHATSAPP_WEB, (("web.whatsapp.lab.test", 40),
                                         ("v.whatsapp.lab.test", 112))),),
        truth=(Expect("whatsapp-web", "tls_blocked", "tls.alert"),
               Expect("whatsapp-registration", "tls_blocked", "tls.alert")),
        services={"whatsapp": "partially_blocked"},
        checks=(
            connect("203.0.113.23", 443, "ok"),
            tls("203.0.113.23", "web.whatsapp.lab.test",
                "tls-error SSLV3_ALERT_HANDSHAKE_FAILURE"),
            tls("2001:db8:113::24", "v.whatsapp.lab.test", "tls-error TLSV1_UNRECOGNIZED_NAME"),
            tls("203.0.113.23", "www.baseline.lab.test", LAB_ROOT),
            tls("203.0.113.23", "web.whatsapp.lab.test", LAB_ROOT, vantage="control"),
        ),
    ),
    Scenario(
        name="dns-transparent-intercept",
        title="Every DNS query over UDP answered by the ISP's lying resolver (transparent proxy)",
        description="The probe asks a 'foreign' resolver (the honest one); the censor diverts "
        "every UDP query to port 53 leaving the client to the ISP's resolver, whose reply "
        "comes back as if from the resolver asked. That resolver forges an unrelated public "
        "address for Twitter's names. DNS over TCP is not diverted. Asking another resolver "
        "does not escape: dns_blocked, dns.inconsistent.",
        sources=("Liu et al., 'Who Is Answering My Queries: Understanding and Characterizing "
                 "Interception of the DNS Resolution Path', USENIX Security 2018",
                 "Weinstein, 'ISP DNS diversion' (2008): ISPs intercepting port 53 UDP and TCP "
                 "and rerouting it to their own servers, so changing resolver does not help"),
        actions=(InterceptDns(),
                 ResolverAnswers(_names("twitter"), "address", ("203.0.113.200",))),
        truth=(Expect("twitter-*", "dns_blocked", "dns.inconsistent"),),
        services={"twitter": "blocked"},
        checks=(
            dns("www.twitter.lab.test", "answer 203.0.113.200", resolver=plan.HONEST_RESOLVER),
            dns("www.baseline.lab.test", "answer 203.0.113.100", resolver="203.0.113.100"),
            dns("www.twitter.lab.test", "answer 203.0.113.51", resolver=plan.HONEST_RESOLVER,
                vantage="control"),
        ),
        resolver=plan.HONEST_RESOLVER,
    ),
    Scenario(
        name="dns-cname-known-blockpage",
        title="Resolver CNAMEs blocked names to a known national blockpage host (Indonesia)",
        description="The ISP's resolver answers the news site's names with a CNAME to "
        "trustpositif.kominfo.go.id, the host of Indonesia's TrustPositif filter, then the "
        "ISP blockpage server's address. The name is a known blockpage host: dns_blocked, "
        "dns.blockpage, conclusive without a control. (The name is only data in a DNS reply "
        "inside the lab: no packet leaves it.)",
        sources=("OONI blocking-fingerprints, fingerprints_dns.csv: ooni.id_95 (a CNAME to "
                 "TrustPositif) and a dozen Indonesian ISPs' CNAME targets, each with an "
                 "OONI explorer measurement",),
        actions=(ResolverAnswers(_names("news"), "address", (plan.ISP_RESOLVER,),
                                 cname="trustpositif.kominfo.go.id"),
                 IspBlockpageServer()),
        truth=(Expect("news-*", "dns_blocked", "dns.blockpage", needs_control=False),),
        services={"news": "blocked"},
        checks=(
            dns("www.news.lab.test", f"answer {plan.ISP_RESOLVER}"),
            http(plan.ISP_RESOLVER, "www.news.lab.test", "200", contains="Access denied"),
            http("203.0.113.61", "www.news.lab.test", "200", vantage="control"),
        ),
    ),
    Scenario(
        name="ipv6-only-blackhole",
        title="A service's IPv6 addresses blackholed, its IPv4 and everyone's IPv6 fine",
        description="The censor drops every packet to Signal's IPv6 addresses only; Signal "
        "over IPv4 and every other service over IPv6 work, so the volunteer does have IPv6. "
        "The IPv6 rows are tcp_blocked (not 'no IPv6 here'), the service partially_blocked.",
        sources=("lennylxx/ipv6-hosts issue #34 (2015): the Great Firewall blocking some of "
                 "Google's IPv6 addresses one by one, while others stay open",
                 "RFC 9505 section 4.2.1 (IRTF-PEARG/rfc-censorship-tech issue #72): IP "
                 "blocklists hold IPv4 and IPv6 addresses separately (/32 and /128 routes)"),
        actions=(DropTraffic(_addrs("signal", 6)),),
        truth=(Expect("signal-sfu", "udp_blocked", "udp.timeout", address="2001:db8:*"),
               Expect("signal-*", "tcp_blocked", "tcp.timeout", address="2001:db8:*")),
        services={"signal": "partially_blocked"},
        checks=(
            connect("2001:db8:113::31", 443, "timeout"),
            connect("203.0.113.31", 443, "ok"),
            connect("2001:db8:113::41", 443, "ok"),
            connect("2001:db8:113::31", 443, "ok", vantage="control"),
        ),
    ),
    Scenario(
        name="ipv4-only-blackhole",
        title="A service's IPv4 addresses blackholed, its IPv6 fine",
        description="The opposite of ipv6-only-blackhole: Facebook's IPv4 addresses are "
        "dropped, its IPv6 addresses work (a filter list holding only IPv4 prefixes). The IPv4 "
        "rows are tcp_blocked, the IPv6 rows ok, the service partially_blocked.",
        sources=("ValdikSS/blockcheck issue #43 (2016): Russia's registry listed only IPv4 "
                 "addresses, and blocked sites opened over IPv6",),
        actions=(DropTraffic(_addrs("facebook", 4)),),
        truth=(Expect("facebook-stun", "udp_blocked", "udp.timeout", address="203.0.113.*"),
               Expect("facebook-quic", "quic_blocked", "quic.timeout", address="203.0.113.*"),
               Expect("facebook-*", "tcp_blocked", "tcp.timeout", address="203.0.113.*")),
        services={"facebook": "partially_blocked"},
        checks=(
            connect("203.0.113.41", 443, "timeout"),
            connect("2001:db8:113::41", 443, "ok"),
            connect("203.0.113.41", 443, "ok", vantage="control"),
        ),
    ),
)

SCENARIOS += (
    # --- DNS only to the ISP, HTTP responses dropped, domestic-only shutdowns, loss --
    Scenario(
        name="dns-foreign-resolver-dropped",
        title="DNS allowed only to the ISP's resolver: a foreign resolver times out",
        description="The probe is told to ask a foreign resolver (the honest one); the "
        "network drops every DNS query, UDP and TCP, to any resolver but the ISP's. The "
        "foreign resolver is silent for every name, the baseline's too, while the system "
        "resolver (the ISP's, which does not lie here) answers and every service works. "
        "Nothing is censored: everything ok, each row saying the chosen resolver never "
        "answered.",
        sources=("Liu et al., 'Who Is Answering My Queries: Understanding and Characterizing "
                 "Interception of the DNS Resolution Path', USENIX Security 2018 (networks "
                 "that block or divert DNS to resolvers other than their own)",
                 "Iran and China have at times let DNS out only to domestic resolvers; our "
                 "model keeps only the dropping, not any lie"),
        actions=(DnsOnlyTo((plan.ISP_RESOLVER,)),),
        truth=(),
        checks=(
            dns("www.twitter.lab.test", "timeout", resolver=plan.HONEST_RESOLVER),
            dns("www.baseline.lab.test", "timeout", resolver=plan.HONEST_RESOLVER),
            dns("www.twitter.lab.test", "answer 203.0.113.51"),
            dns("www.twitter.lab.test", "answer 203.0.113.51", resolver=plan.HONEST_RESOLVER,
                vantage="control"),
        ),
        resolver=plan.HONEST_RESOLVER,
    ),
    Scenario(
        name="dns-tcp-intercept",
        title="Every DNS query, UDP and TCP, answered by the ISP's lying resolver",
        description="As dns-transparent-intercept, but the censor diverts DNS over TCP too: "
        "no way of asking the foreign resolver reaches it, and the ISP's resolver forges an "
        "unrelated public address for Twitter. dns_blocked, dns.inconsistent.",
        sources=("Liu et al., 'Who Is Answering My Queries', USENIX Security 2018 (interception "
                 "of both UDP and TCP port 53)",
                 "Weinstein, 'ISP DNS diversion' (2008): ISPs rerouting port 53, UDP and TCP, "
                 "to their own servers"),
        actions=(InterceptDns(tcp=True),
                 ResolverAnswers(_names("twitter"), "address", ("203.0.113.200",))),
        truth=(Expect("twitter-*", "dns_blocked", "dns.inconsistent"),),
        services={"twitter": "blocked"},
        checks=(
            dns("www.twitter.lab.test", "answer 203.0.113.200", resolver=plan.HONEST_RESOLVER),
            dns("www.twitter.lab.test", "answer 203.0.113.51", resolver=plan.HONEST_RESOLVER,
                vantage="control"),
        ),
        resolver=plan.HONEST_RESOLVER,
    ),
    Scenario(
        name="http-response-drop",
        title="Plain HTTP: the request passes, the response never arrives",
        description="A filter lets a request naming the news site through and marks its "
        "flow, then drops every packet of the server's response: the TCP handshake works, "
        "the request is sent, no byte comes back (no RST, no blockpage). HTTPS to the same "
        "site works, and the control gets the page: http_blocked, http.timeout.",
        sources=("Nourin et al., 'Measuring and Evading Turkmenistan's Internet Censorship', "
                 "WWW 2023, and Qurium / turkmen.news (2019): Turkmentelecom filters HTTP by "
                 "the Host header",
                 "OONI web_connectivity (spec ts-017): generic_timeout_error after the request "
                 "as an HTTP failure; the silent drop of the response is our model of it"),
        actions=(HttpResponseDrop("Host: www.news.lab.test"),),
        truth=(Expect("news-http", "http_blocked", "http.timeout"),),
        services={"news": "partially_blocked"},
        checks=(
            connect("203.0.113.61", 80, "ok"),
            http("203.0.113.61", "www.news.lab.test", "timeout"),
            http("203.0.113.100", "www.baseline.lab.test", "200"),
            http("203.0.113.61", "www.news.lab.test", "200", vantage="control"),
            tls("203.0.113.61", "www.news.lab.test", LAB_ROOT),
        ),
    ),
    Scenario(
        name="whitelist-shutdown",
        title="National shutdown: only the domestic network reachable (Iran, November 2019)",
        description="Everything abroad is dropped, the baseline and the control helper "
        "included; the ISP's (domestic) resolver still answers. Nothing can be compared with "
        "a control: every row inconclusive. But the network is not down (the resolver "
        "answers over it), so the run must not say 'your network is down'.",
        sources=("ARTICLE 19, 'Tightening the Net 2020: After Blood and Shutdowns' (Iran's "
                 "November 2019 shutdown: users left with the National Information Network)",
                 "Wikipedia, '2019 Internet blackout in Iran'"),
        actions=(DomesticOnly(),),
        truth=(Expect("*", "inconclusive", ANY),),
        services={service: "inconclusive" for service in plan.SERVICES},
        checks=(
            connect("203.0.113.100", 443, "timeout"),
            connect(plan.CONTROL_V4, plan.CONTROL_PORT, "timeout"),
            dns("www.baseline.lab.test", "answer 203.0.113.100"),
            connect("203.0.113.100", 443, "ok", vantage="control"),
        ),
        baseline_reachable=False,
    ),
    Scenario(
        name="dns-blockpage-https",
        title="Resolver sends the site to the ISP's blockpage host, which speaks HTTPS",
        description="The ISP's resolver answers the news site's names with the address of "
        "its blockpage server (no CNAME), which serves its page over HTTP and over HTTPS "
        "with a certificate valid for its own name (blocked.isp.lab.test, from the trusted "
        "root). HTTPS sees a hostname mismatch, not an unknown authority nor a timeout: "
        "the forged answer is the cause, dns_blocked, dns.inconsistent (the answer shares "
        "nothing with the control's and proved nothing).",
        sources=("OONI, 'Indonesia: Internet Positif' reports and Turkey's BTK pages: DNS "
                 "redirection to an ISP blockpage server, whose HTTPS presents the blockpage "
                 "host's own certificate (OONI records ssl_invalid_hostname)",
                 "OONI web_connectivity (spec ts-017): an answer inconsistent with the control "
                 "whose TLS fails is DNS blocking, not TLS blocking"),
        actions=(ResolverAnswers(_names("news"), "address", (plan.ISP_RESOLVER,)),
                 IspBlockpageServer(tls_port=443)),
        truth=(Expect("news-*", "dns_blocked", "dns.inconsistent"),),
        services={"news": "blocked"},
        checks=(
            dns("www.news.lab.test", f"answer {plan.ISP_RESOLVER}"),
            tls(plan.ISP_RESOLVER, "www.news.lab.test", LAB_ROOT),
            http(plan.ISP_RESOLVER, "www.news.lab.test", "200", contains="Access denied"),
            tls("203.0.113.61", "www.news.lab.test", LAB_ROOT, vantage="control"),
        ),
    ),
    Scenario(
        name="dns-lossy-link",
        title="A lossy link loses a quarter of the DNS datagrams, nothing censored",
        description="Each UDP packet from the client to port 53 is dropped with probability "
        "0.25 (a congested or mobile link), whatever the name; the resolver never lies. A "
        "probe that sends each query once loses both A and AAAA for one endpoint in "
        "sixteen, and with the control resolving the name reads dns_blocked. Everything "
        "must be ok: queries are retransmitted, as stub resolvers do. (Random loss: with "
        "three transmissions a run still fails about once in 250.)",
        sources=("RFC 1035 4.2.1 (retransmission of queries over UDP) and glibc's "
                 "resolv.conf `attempts`: stubs send a query again before giving up",
                 "OONI web_connectivity data: DNS generic_timeout_error on poor mobile links "
                 "is a known source of false DNS anomalies (we model the loss only)"),
        actions=(LossyDns(0.25),),
        truth=(),
        checks=(
            Check("dnsloss", "www.baseline.lab.test", "lossy", resolver=plan.ISP_RESOLVER,
                  timeout=0.4),
            Check("dnsloss", "www.baseline.lab.test", "no loss",
                  resolver=plan.HONEST_RESOLVER, vantage="control", timeout=0.4),
            connect("203.0.113.21", 443, "ok"),
            tls("203.0.113.100", "www.baseline.lab.test", LAB_ROOT),
        ),
        baseline_reachable=False,  # its DNS check would lose one query in four
    ),
)


# --- calls, UDP flows and QUIC (2022-2026) --------------------------------------
SCENARIOS += (
    Scenario(
        name="calls-reflector-drop",
        title="Call relays dropped, text untouched (Russia, August 2025)",
        description="From 10 August 2025 WhatsApp and Telegram voice calls failed in Russia "
        "while messages kept working (Roskomnadzor confirmed 'partial restrictions' of calls "
        "on 13 August). Telegram's STUN Binding Requests to its call reflectors (UDP 596-599 "
        "and 1400) went unanswered. Here every datagram to Telegram's reflector and to "
        "WhatsApp's relay ports is dropped; TCP to the same services works.",
        sources=("net4people/bbs #546 (August 2025): Telegram and WhatsApp calls failing in "
                 "Russia, STUN to the reflectors unanswered",
                 "telegramdesktop/tdesktop #31045 (2025): calls stuck at 'connecting' in Russia",
                 "Reuters, 13 August 2025: 'Russia restricts some WhatsApp and Telegram calls'"),
        actions=(UdpDrop((REFLECTOR,), REFLECTOR_PORTS), UdpDrop(WHATSAPP_RELAY,
                                                                 WHATSAPP_RELAY_PORTS)),
        truth=(Expect("telegram-calls*", "udp_blocked", "udp.timeout"),
               Expect("whatsapp-calls*", "udp_blocked", "udp.timeout")),
        services={"telegram": "partially_blocked", "whatsapp": "partially_blocked"},
        functions={"telegram": {"messaging": "ok", "calls": "blocked", "media": "ok",
                                "web": "ok"},
                   "whatsapp": {"messaging": "ok", "calls": "blocked"}},
        network={"udp": "ok"},
        checks=(
            stun(REFLECTOR, 596, "timeout"),
            stun(REFLECTOR, 1400, "timeout"),
            stun("2001:db8:113::25", 3478, "timeout"),
            udp_flow("203.0.113.25", plan.WHATSAPP_RELAY_ECHO_PORT, "none"),
            stun("203.0.113.44", 3478, CLIENT_MAPPED),
            mtproto("203.0.113.11", 443, "answer"),
            stun(REFLECTOR, 1400, CONTROL_MAPPED, vantage="control"),
        ),
    ),
    Scenario(
        name="udp-flow-cutoff",
        title="Every UDP flow cut after its first packets (Russian mobile networks, 2025)",
        description=f"On Russian mobile networks in 2025 unrecognised UDP flows to foreign "
        f"destinations stopped being carried after their first packets. Here conntrack "
        f"counts each flow's datagrams from the client and drops everything after the "
        f"{FLOW_CUTOFF}th: a single STUN exchange and a QUIC handshake pass, a call's media "
        f"flow (40 datagrams on one 5-tuple) is answered {FLOW_CUTOFF} times, then never.",
        sources=("net4people/bbs #546 (2025): on mobile networks UDP flows dropped after "
                 "their first packets while short exchanges pass",
                 "nftables wiki, 'Matching connection tracking stateful metainformation' "
                 "(ct original packets): the per-flow counter this model uses"),
        actions=(UdpFlowCutoff(after=FLOW_CUTOFF),),
        truth=(Expect("telegram-calls-flow", "udp_blocked", "udp.cutoff"),
               Expect("whatsapp-calls-flow", "udp_blocked", "udp.cutoff"),
               # the control helper's echo is a foreign destination too
               Expect("control-udp-echo", "udp_blocked", "udp.cutoff")),
        services={"telegram": "partially_blocked", "whatsapp": "partially_blocked",
                  "baseline": "partially_blocked"},
        functions={"telegram": {"messaging": "ok", "calls": "partially_blocked"},
                   "whatsapp": {"messaging": "ok", "calls": "partially_blocked"}},
        checks=(
            udp_flow("203.0.113.25", plan.WHATSAPP_RELAY_ECHO_PORT, f"cut {FLOW_CUTOFF}/40"),
            udp_flow(REFLECTOR, 1400, f"cut {FLOW_CUTOFF}/40", payload="stun"),
            stun(REFLECTOR, 596, CLIENT_MAPPED),
            quic("203.0.113.100", "www.baseline.lab.test", "h3 200"),
            udp_flow("203.0.113.25", plan.WHATSAPP_RELAY_ECHO_PORT, "all 40", vantage="control"),
        ),
    ),
    Scenario(
        name="quic-sni-filter",
        title="QUIC Initial decrypted and filtered by SNI (Great Firewall, since April 2024)",
        description="Since 7 April 2024 the Great Firewall decrypts QUIC Initial packets "
        "(their keys derive from the packet's own connection id), reads the ClientHello's "
        "server name and drops the flow when the name is blocked. Here the censor drops "
        "QUIC flows naming Facebook; QUIC to the same address naming another server, and "
        "Facebook over TCP, pass.",
        sources=("Zohaib et al., 'Exposing and Circumventing SNI-based QUIC Censorship of the "
                 "Great Firewall of China', USENIX Security 2025 (gfw.report)",
                 "RFC 9001 section 5.2: Initial packets are protected with keys derived from "
                 "the Destination Connection ID, so any on-path observer can read them"),
        actions=(QuicSniFilter(("www.facebook.lab.test",)),),
        truth=(Expect("facebook-quic", "quic_blocked", "quic.timeout"),),
        services={"facebook": "partially_blocked"},
        functions={"facebook": {"web": "partially_blocked", "messaging": "ok", "calls": "ok"}},
        network={"udp": "ok"},
        checks=(
            quic("203.0.113.41", "www.facebook.lab.test", "timeout"),
            quic("2001:db8:113::41", "www.facebook.lab.test", "timeout"),
            quic("203.0.113.41", "www.twitter.lab.test", "h3 200"),
            quic("203.0.113.51", "www.twitter.lab.test", "h3 200"),
            tls("203.0.113.41", "www.facebook.lab.test", LAB_ROOT),
            quic("203.0.113.41", "www.facebook.lab.test", "h3 200", vantage="control"),
        ),
    ),
    Scenario(
        name="udp-443-drop",
        title="Every datagram to UDP 443 dropped: no QUIC anywhere (Iran, 2022)",
        description="During the September 2022 protests Iran's networks dropped QUIC "
        "(UDP port 443) to every destination; browsers fell back to TCP. Every HTTP/3 "
        "endpoint, the baseline's included, times out, and so do SimpleX's STUN and TURN "
        "servers, which listen on UDP 443. STUN on 3478 and every TCP service work: the "
        "network drops all QUIC, which is a finding about the network, not one service.",
        sources=("OONI, 'Iran blocks social media, app stores and encrypted DNS amid Mahsa "
                 "Amini protests' (September 2022)",
                 "Elmenhorst et al., 'Web Censorship Measurements of HTTP/3 over QUIC', IMC "
                 "2021 (UDP 443 blocking by port; kelmenhorst/quic-censorship)"),
        actions=(Udp443Drop(),),
        truth=(Expect("*-quic", "quic_blocked", "quic.timeout"),
               Expect("simplex-*", "udp_blocked", "udp.timeout"),
               Expect("control-udp-echo", "udp_blocked", "udp.timeout", port=443)),
        services={"baseline": ANY, "facebook": "partially_blocked",
                  "twitter": "partially_blocked", "simplex": "blocked"},
        functions={"simplex": {"calls": "blocked"}, "facebook": {"web": "partially_blocked"}},
        network={"udp": "all_quic_dropped"},
        checks=(
            quic("203.0.113.100", "www.baseline.lab.test", "timeout"),
            quic("203.0.113.41", "www.facebook.lab.test", "timeout"),
            stun("203.0.113.71", 443, "timeout"),
            stun("203.0.113.100", 3478, CLIENT_MAPPED),
            quic("203.0.113.100", "www.baseline.lab.test", "h3 200", vantage="control"),
        ),
    ),
    Scenario(
        name="stun-forged",
        title="Forged STUN answers race the call relays' real ones",
        description="An on-path injector answers each STUN Binding Request to Telegram's "
        "reflector and WhatsApp's relay with a forged Binding Success (same transaction id, "
        "a wrong XOR-MAPPED-ADDRESS) ahead of the relay's real answer, which still arrives: "
        "two different answers to one request, the signature of injection as for DNS. An app "
        "believes its relay answered and learns a wrong public address. WhatsApp's media "
        "port (no STUN) is untouched.",
        sources=("RFC 5389 section 16.1.1: an on-path attacker can forge Binding responses "
                 "with a wrong mapped address (the threat modelled; no public measurement "
                 "documents it yet)",
                 "Anonymous, 'The Collateral Damage of Internet Censorship by DNS Injection', "
                 "SIGCOMM CCR 2012: the same race, for DNS"),
        actions=(StunInjection((REFLECTOR, *WHATSAPP_RELAY), (*REFLECTOR_PORTS, 3478),
                               forged=FORGED_MAPPED),),
        truth=(Expect("telegram-calls*", "udp_blocked", "udp.injected"),
               Expect("whatsapp-calls", "udp_blocked", "udp.injected")),
        services={"telegram": "partially_blocked", "whatsapp": "partially_blocked"},
        functions={"telegram": {"messaging": "ok", "calls": "blocked"},
                   "whatsapp": {"messaging": "ok", "calls": "partially_blocked"}},
        checks=(
            stun(REFLECTOR, 596, f"injected {FORGED_MAPPED} | {plan.CLIENT_V4}"),
            stun("203.0.113.25", 3478, f"injected {FORGED_MAPPED} | {plan.CLIENT_V4}"),
            stun("203.0.113.44", 3478, CLIENT_MAPPED),
            udp_flow("203.0.113.25", plan.WHATSAPP_RELAY_ECHO_PORT, "all 40"),
            stun(REFLECTOR, 596, CONTROL_MAPPED, vantage="control"),
        ),
    ),
    Scenario(
        name="udp-icmp-unreachable",
        title="Call ports rejected with ICMP port unreachable",
        description="The censor's router rejects datagrams to the call relays' ports with an "
        "ICMP port unreachable (a firewall's reject rule instead of a silent drop): the "
        "client's socket reads 'connection refused' at once. Only the control tells it from "
        "a relay that does not listen.",
        sources=("RFC 792 and RFC 4443 (destination unreachable, port unreachable); nftables "
                 "'reject with icmpx type port-unreachable', the default answer of a reject "
                 "rule in operators' firewalls",
                 "OONI stunreachability (spec ts-025): connection_refused is among the "
                 "failures it records for STUN servers"),
        actions=(UdpReject((REFLECTOR,), REFLECTOR_PORTS), UdpReject(WHATSAPP_RELAY,
                                                                     WHATSAPP_RELAY_PORTS)),
        truth=(Expect("telegram-calls*", "udp_blocked", "udp.unreachable"),
               Expect("whatsapp-calls*", "udp_blocked", "udp.unreachable")),
        services={"telegram": "partially_blocked", "whatsapp": "partially_blocked"},
        functions={"telegram": {"messaging": "ok", "calls": "blocked"},
                   "whatsapp": {"messaging": "ok", "calls": "blocked"}},
        checks=(
            stun(REFLECTOR, 597, "refused"),
            stun("2001:db8:113::25", 3478, "refused"),
            # every datagram of two flows rejected: the router's ICMP is not rate-limited
            udp_flow("203.0.113.25", plan.WHATSAPP_RELAY_ECHO_PORT, "refused all"),
            udp_flow(REFLECTOR, 1400, "refused all", payload="stun"),
            stun("203.0.113.44", 3478, CLIENT_MAPPED),
            stun(REFLECTOR, 597, CONTROL_MAPPED, vantage="control"),
        ),
    ),
    Scenario(
        name="all-udp-drop",
        title="No UDP at all but DNS to the ISP's resolver",
        description="The network carries no UDP except DNS to the ISP's resolver: every "
        "STUN, TURN, UDP flow and QUIC handshake times out, for every service and for the "
        "baseline, while everything over TCP works. Calls fail for every app; that is a "
        "finding about the network ('this network drops all UDP'), not an error.",
        sources=("Iran's tiered access (2026, net4people/bbs #630) and mobile operators' "
                 "'TCP only' policies: UDP other than DNS not carried",
                 "ooni/probe #1677: STUN/TURN cannot be measured by OONI yet, so such "
                 "networks go unseen"),
        actions=(AllUdpDrop(),),
        truth=(Expect("*-quic", "quic_blocked", "quic.timeout"),
               Expect("*-calls*", "udp_blocked", "udp.timeout"),
               Expect("*-stun", "udp_blocked", "udp.timeout"),
               Expect("simplex-turn", "udp_blocked", "udp.timeout"),
               Expect("signal-sfu", "udp_blocked", "udp.timeout"),
               Expect("control-udp-echo", "udp_blocked", "udp.timeout")),
        services={"baseline": ANY, "telegram": "partially_blocked",
                  "whatsapp": "partially_blocked", "signal": "partially_blocked",
                  "facebook": "partially_blocked", "twitter": "partially_blocked",
                  "simplex": "blocked"},
        functions={"telegram": {"messaging": "ok", "calls": "blocked"},
                   "signal": {"messaging": "ok", "calls": "blocked"},
                   "simplex": {"calls": "blocked"}},
        network={"udp": "all_udp_dropped", "network_down": False},
        checks=(
            stun("203.0.113.100", 3478, "timeout"),
            quic("203.0.113.100", "www.baseline.lab.test", "timeout"),
            dns("www.baseline.lab.test", "answer 203.0.113.100"),
            dns("www.baseline.lab.test", "timeout", resolver=plan.HONEST_RESOLVER),
            stun("203.0.113.100", 3478, CONTROL_MAPPED, vantage="control"),
        ),
    ),
    Scenario(
        name="allowlist-mode",
        title="Allowlist mode: TCP connects everywhere, data only to a few destinations",
        description="Russian mobile networks since about September 2025: SYN and SYN-ACK "
        "pass to everyone, but the first data segment is dropped unless the destination is "
        "allowlisted (domestic services). Here the ISP and the control helper are "
        "allowlisted; everything else, the baseline (a foreign reference site) included, "
        "connects and then times out (the TLS handshake, MTProto, the HTTP request). A "
        "connect-only check (WhatsApp's chat ports) cannot see it. The network is "
        "restricted, not down.",
        sources=("net4people/bbs #516 and #579 (2025): 'whitelists' on Russian mobile "
                 "networks, handshakes pass and data does not",
                 "ARTICLE 19 / Roskomsvoboda reporting on mobile internet 'white lists' in "
                 "Russian regions (2025)"),
        actions=(AllowlistMode(ALLOWLIST),),
        baseline_reachable=False,  # its TLS check would time out, as everyone's
        truth=(Expect("telegram-dc*", "protocol_blocked", "protocol.timeout"),
               Expect("telegram-media", "protocol_blocked", "protocol.timeout"),
               Expect("news-http", "http_blocked", "http.timeout"),
               Expect("*-calls*", "ok"), Expect("*-stun", "ok"), Expect("*-quic", "ok"),
               Expect("signal-sfu", "ok"), Expect("simplex-*", "ok"),
               Expect("whatsapp-e[12]", "ok"),  # connect only: the handshake passes
               Expect("control-udp-echo", "ok"),
               Expect("*", "tls_blocked", "tls.timeout")),
        services={"baseline": ANY, "telegram": "partially_blocked",
                  "whatsapp": "partially_blocked", "signal": "partially_blocked",
                  "facebook": "partially_blocked", "twitter": "partially_blocked",
                  "news": "blocked"},
        functions={"telegram": {"messaging": "blocked", "calls": "ok"},
                   "signal": {"messaging": "blocked"}},
        network={"restricted": True, "network_down": False},
        checks=(
            connect("203.0.113.41", 443, "ok"),
            tls("203.0.113.41", "www.facebook.lab.test", "timeout"),
            mtproto("203.0.113.11", 443, "timeout"),
            http("203.0.113.61", "www.news.lab.test", "timeout"),
            # the allowlisted control helper gets data through: its health line
            Check("http", plan.CONTROL_V4, "200", port=plan.CONTROL_PORT),
            connect("203.0.113.100", 443, "ok"),
            tls("203.0.113.100", "www.baseline.lab.test", "timeout"),
            tls("203.0.113.41", "www.facebook.lab.test", LAB_ROOT, vantage="control"),
        ),
    ),
    Scenario(
        name="media-dc-blocked",
        title="Only Telegram's media datacenter blackholed (Russia, February 2026)",
        description="In February 2026 Russian users could send and read Telegram messages "
        "while photos and videos stopped loading: the prefix of Telegram's media datacenter "
        "was blackholed while DC1-DC5 answered. A per-service verdict that is 'ok as soon as "
        "one datacenter answers' misses it; per function: messaging ok, media blocked.",
        sources=("telegramdesktop/tdesktop #30274 (2026): media not loading in Russia while "
                 "messages work",
                 "ooni/probe #2466: OONI's telegram test is ok if any DC answers, which missed "
                 "a partial block in Brazil 2023"),
        actions=(DropTraffic((plan.TELEGRAM_MEDIA_PREFIX,)),),
        truth=(Expect("telegram-media", "tcp_blocked", "tcp.timeout"),),
        services={"telegram": "partially_blocked"},
        functions={"telegram": {"messaging": "ok", "media": "blocked", "calls": "ok"}},
        checks=(
            connect(plan.TELEGRAM_MEDIA_DC, 443, "timeout"),
            connect("203.0.113.11", 443, "ok"),
            mtproto("203.0.113.12", 443, "answer"),
            mtproto(plan.TELEGRAM_MEDIA_DC, 443, "answer", vantage="control"),
        ),
    ),
)


SCENARIOS += (
    Scenario(
        name="turn-blocked",
        title="TURN Allocate dropped, STUN Binding on the same port passes",
        description="A filter reads the STUN message type and drops TURN Allocate requests "
        "(0x0003) on UDP 443 while Binding Requests pass: relayed calls fail, direct ICE "
        "still works. SimpleX's TURN server times out; its STUN server, and a Binding "
        "Request to the TURN server's own address and port, are answered.",
        sources=("RFC 5766 section 6.1 (Allocate is message type 0x0003) and RFC 5389 "
                 "section 6: the type is in the clear in the first two bytes",
                 "ooni/probe #1677 and ooni/probe-engine #134: blocking of VoIP relays is "
                 "not measured today; firewall application signatures tell TURN from STUN"),
        actions=(TurnDrop((443, 3478)),),
        truth=(Expect("simplex-turn", "udp_blocked", "udp.timeout"),),
        services={"simplex": "partially_blocked"},
        functions={"simplex": {"calls": "partially_blocked"}},
        checks=(
            turn("203.0.113.72", 443, "timeout"),
            stun("203.0.113.72", 443, CLIENT_MAPPED),
            stun("203.0.113.71", 443, CLIENT_MAPPED),
            turn("203.0.113.72", 443, "challenge", vantage="control"),
        ),
    ),
    Scenario(
        name="quic-v1-foreign-drop",
        title="QUIC version 1 dropped to foreign servers (Russia, March 2022)",
        description="From March 2022 Russia's TSPU dropped QUIC version 1 packets to foreign "
        "addresses while domestic servers kept HTTP/3. Here long-header packets carrying "
        "version 0x00000001 to anything but the baseline (a domestic site) are dropped: "
        "Facebook's and Twitter's HTTP/3 time out, the baseline's works, TCP is untouched. "
        "Not a network that drops all QUIC: a block of foreign QUIC.",
        sources=("net4people/bbs #108 (March 2022): QUIC to foreign hosts blocked in Russia",
                 "Xue et al., 'TSPU: Russia's Decentralized Censorship System', IMC 2022"),
        actions=(QuicVersionDrop(),),
        truth=(Expect("facebook-quic", "quic_blocked", "quic.timeout"),
               Expect("twitter-quic", "quic_blocked", "quic.timeout")),
        services={"facebook": "partially_blocked", "twitter": "partially_blocked"},
        functions={"facebook": {"web": "partially_blocked"}},
        network={"udp": "ok"},
        checks=(
            quic("203.0.113.41", "www.facebook.lab.test", "timeout"),
            quic("2001:db8:113::51", "www.twitter.lab.test", "timeout"),
            quic("203.0.113.100", "www.baseline.lab.test", "h3 200"),
            stun("203.0.113.44", 3478, CLIENT_MAPPED),
            quic("203.0.113.41", "www.facebook.lab.test", "h3 200", vantage="control"),
        ),
    ),
)

BY_NAME = {scenario.name: scenario for scenario in SCENARIOS}


def get(name: str) -> Scenario:
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(
            f"no scenario {name!r}; choose one of: {', '.join(BY_NAME)}"
        ) from None


def self_checks(scenario: Scenario) -> tuple[Check, ...]:
    extra = BASELINE_CHECKS if scenario.baseline_reachable else ()
    return tuple(scenario.checks) + extra
