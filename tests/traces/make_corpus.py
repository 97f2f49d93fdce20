"""Generate the handcrafted part of the replay corpus: documented censor behaviours.

Each case below describes, with its public sources, what a volunteer's network
did (the censor's DNS answers, resets, interception certificate, throttled
transfer...) and what the control helper saw. The real runner and session run
over a scripted network of that world (``scripted.py``), recorded by the real
``RecordingNetwork``; the resulting trace goes to ``tests/traces/<name>.jsonl``
and the verdicts we expect, written here by hand, to ``<name>.expected.json``.
Generation fails if the analysis does not reach the expected verdicts, so a
committed trace always agrees with its expectations.

    .venv/bin/python tests/traces/make_corpus.py            # every case
    .venv/bin/python tests/traces/make_corpus.py kazakhstan-2019-interception

Certificates are made at generation time, valid around the case's date (the
trace records that date as the run's start, which is what chain verification
uses), so the traces stay valid for ever.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scripted import Authority, Http, Reply, ScriptedNetwork, World

from probe import session
from probe.net import failures
from probe.net.network import DnsQuery, HttpRequest, TlsRequest
from probe.runner import RunOptions
from probe.targets import parse_targets
from probe.trace import ControlSettings, RunInfo, finish_recording, start_recording

HERE = Path(__file__).resolve().parent
CONTROL_URL = "https://control.probe.example"


@dataclass
class Case:
    name: str
    title: str
    description: str
    sources: tuple[str, ...]
    started_at: datetime.datetime
    targets: str  # targets.yaml text
    probe_world: Callable[[Authority, dict], World]
    zone: dict[str, tuple[str, ...]]
    expected: list[tuple[str, str | None, int | None, str, str | None]]
    services: dict[str, str]
    resolver: tuple[str, int] = ("192.0.2.53", 53)  # the ISP's resolver (never contacted)
    extra_roots: dict[str, str] = field(default_factory=dict)


def utc(*args: int) -> datetime.datetime:
    return datetime.datetime(*args, tzinfo=datetime.UTC)


BASELINE = """
  - id: baseline
    name: Baseline
    test_name: baseline
    baseline: true
    endpoints:
      - {id: baseline-web, host: www.wikipedia.org, port: 443, checks: [dns, tcp, tls]}
"""
BASELINE_ZONE = {"www.wikipedia.org": ("185.15.59.224",)}
BASELINE_OK = [("baseline-web", "185.15.59.224", 443, "ok", None)]


# --------------------------------------------------------------------------- #
# Iran                                                                         #
# --------------------------------------------------------------------------- #

# The iframe page Iranian ISPs serve for blocked sites (as OONI's fingerprint records it).
IRAN_BLOCKPAGE = (
    b'<html><head><meta http-equiv="Content-Type" content="text/html; charset=windows-1256">'
    b"<title>M1-6</title></head><body><iframe "
    b'src="http://10.10.34.34?type=Invalid Site&policy=MainPolicy" style="width: 100%; '
    b'height: 100%" scrolling="no" marginwidth="0" marginheight="0" frameborder="0" '
    b'vspace="0" hspace="0"></iframe></body></html>'
)


class IranWorld(World):
    poisoned: ClassVar[dict[str, str]] = {
        "www.facebook.com": "10.10.34.35", "www.instagram.com": "10.10.34.36"
    }

    def dns(self, query: DnsQuery) -> list[Reply]:
        if query.qname in self.poisoned:
            forged = (self.poisoned[query.qname],) if query.qtype == "A" else ()
            return [Reply(forged)]
        return super().dns(query)

    def http(self, request: HttpRequest) -> Http:
        if request.url.startswith("http://www.bbc.com"):
            return Http(status=403, body=IRAN_BLOCKPAGE)
        return super().http(request)


IRAN = Case(
    name="iran-2018-dns-bogon-and-blockpage",
    title="Iran: DNS answers in 10.10.34.0/24 and the HTTP 403 iframe blockpage",
    description=(
        "Iranian ISPs answer DNS queries for blocked names with addresses of the private "
        "10.10.34.0/24 filtering network (10.10.34.34-36), and answer plain HTTP requests for "
        "blocked sites with a 403 page that is only an iframe to http://10.10.34.34 "
        "(peyvandha.ir). Here Facebook and Instagram resolve to 10.10.34.35/36 and "
        "http://www.bbc.com/ returns the iframe page; the control resolves and fetches them."
    ),
    sources=(
        ("OONI, 'Internet Censorship in Iran: Network Measurement Findings from 2014-2017' "
        "(2017): https://ooni.org/post/iran-internet-censorship/"),
        ("OONI, 'Iran Protests: OONI data confirms censorship events' (January 2018): "
        "https://ooni.org/post/2018-iran-protests/"),
        "probe/blockpages.py fingerprint ir.peyvandha",
    ),
    started_at=utc(2018, 1, 2, 9, 30),
    targets="""
version: 1
services:
  - id: facebook
    name: Facebook
    endpoints:
      - {id: facebook-web, host: www.facebook.com, port: 443, checks: [dns, tcp, tls, https]}
  - id: instagram
    name: Instagram
    endpoints:
      - {id: instagram-web, host: www.instagram.com, port: 443, checks: [dns, tcp, tls, https]}
  - id: news
    name: BBC
    endpoints:
      - {id: news-http, host: www.bbc.com, port: 80, checks: [dns, tcp, http]}
""" + BASELINE,
    probe_world=IranWorld,
    zone={"www.facebook.com": ("157.240.1.35",), "www.instagram.com": ("157.240.1.174",),
          "www.bbc.com": ("151.101.0.81",), **BASELINE_ZONE},
    expected=[
        ("facebook-web", None, None, "dns_blocked", "dns.bogon"),
        ("instagram-web", None, None, "dns_blocked", "dns.bogon"),
        ("news-http", "151.101.0.81", 80, "http_blocked", "http.blockpage"),
        *BASELINE_OK,
    ],
    services={"facebook": "blocked", "instagram": "blocked", "news": "blocked",
              "baseline": "ok"},
)


# --------------------------------------------------------------------------- #
# China                                                                        #
# --------------------------------------------------------------------------- #


class GreatFirewallWorld(World):
    # an unrelated public address, as observed
    injected: ClassVar[dict[str, str]] = {"www.google.com": "31.13.94.37"}
    sni_reset: ClassVar[set[str]] = {"www.bbc.com"}

    def dns(self, query: DnsQuery) -> list[Reply]:
        honest = super().dns(query)
        if query.qname in self.injected and query.transport == "udp":
            forged = (self.injected[query.qname],) if query.qtype == "A" else ()
            # The injector is on path, nearer than the resolver: its forgery arrives
            # first, the real answer a few tens of milliseconds later.
            return [Reply(forged, delay=0.008, ttl=227), Reply(honest[0].addresses,
                                                               honest[0].rcode, delay=0.064)]
        return honest

    def system(self, host: str):
        if host in self.injected:
            return (self.injected[host],)  # the stub resolver takes the first reply
        return super().system(host)

    def tls(self, request: TlsRequest):
        if request.sni in self.sni_reset:
            return failures.CONNECTION_RESET
        return super().tls(request)

    def connect(self, address: str, port: int):
        if address in self.injected.values():
            return failures.GENERIC_TIMEOUT
        return None


CHINA = Case(
    name="gfw-dns-injection-and-sni-reset",
    title="China: the Great Firewall's racing DNS injection and SNI-triggered resets",
    description=(
        "The Great Firewall watches DNS queries on the path and injects a forged answer that "
        "arrives before the resolver's real one; a client that keeps listening receives both. "
        "For TLS it reads the server name in the ClientHello and injects RSTs. Here the UDP "
        "queries for www.google.com get a forged then the real answer, and handshakes with "
        "SNI www.bbc.com are reset while the control completes them."
    ),
    sources=(
        ("Anonymous, 'Towards a Comprehensive Picture of the Great Firewall's DNS Censorship', "
        "FOCI 2014: https://www.usenix.org/conference/foci14/workshop-program/presentation/anonymous"),
        ("Hoang et al., 'How Great is the Great Firewall? Measuring China's DNS Censorship', "
        "USENIX Security 2021: https://www.usenix.org/conference/usenixsecurity21/presentation/hoang"),
        ("Chai et al., 'On the Importance of Encrypted-SNI (ESNI) to Censorship Circumvention', "
        "FOCI 2019: https://www.usenix.org/conference/foci19/presentation/chai"),
    ),
    started_at=utc(2020, 8, 9, 2, 15),
    targets="""
version: 1
services:
  - id: google
    name: Google
    endpoints:
      - {id: google-web, host: www.google.com, port: 443, checks: [dns, tcp, tls, https]}
  - id: news
    name: BBC
    endpoints:
      - {id: news-web, host: www.bbc.com, port: 443, checks: [dns, tcp, tls, https]}
""" + BASELINE.replace("www.wikipedia.org", "www.baidu.com"),
    probe_world=GreatFirewallWorld,
    zone={"www.google.com": ("142.250.4.100",), "www.bbc.com": ("151.101.0.81",),
          "www.baidu.com": ("110.242.68.66",)},
    expected=[
        ("google-web", None, None, "dns_blocked", "dns.injected"),
        ("news-web", "151.101.0.81", 443, "tls_blocked", "tls.reset"),
        ("baseline-web", "110.242.68.66", 443, "ok", None),
    ],
    services={"google": "blocked", "news": "blocked", "baseline": "ok"},
)


# --------------------------------------------------------------------------- #
# Russia                                                                       #
# --------------------------------------------------------------------------- #


class RussiaThrottleWorld(World):
    throttled_sni = ("twimg.com", "twitter.com", "t.co")

    def http(self, request: HttpRequest) -> Http:
        host = request.url.split("/")[2]
        if request.measure_throughput and host.endswith(self.throttled_sni):
            # ~130 kbit/s: the transfer stalls far below the link's capacity.
            return Http(body=b"\0" * 4096, throughput_bps=16_250, transfer_bytes=260_000,
                        duration=16.0)
        return super().http(request)


RUSSIA = Case(
    name="russia-2021-twitter-throttling",
    title="Russia, March 2021: Twitter throttled by SNI to about 130 kbit/s",
    description=(
        "From 10 March 2021 Russian ISPs, on Roskomnadzor's order, throttled connections "
        "whose TLS server name matched Twitter's domains (*.twimg.com, twitter.com, t.co) to "
        "roughly 130 kbit/s, without blocking them. Here a transfer from abs.twimg.com runs "
        "at 16 kB/s while the control downloads the same object at 6 MB/s and the "
        "volunteer's baseline transfer also runs at full speed."
    ),
    sources=(
        ("Xue et al., 'Throttling Twitter: An Emerging Censorship Technique in Russia', IMC 2021: "
        "https://censoredplanet.org/throttling"),
        ("RFE/RL, 'Russia Slows Down Twitter Speed Over Banned Content' (10 March 2021): "
        "https://www.rferl.org/a/russia-twitter-banned-material-slowing-speed/31143163.html"),
    ),
    started_at=utc(2021, 3, 12, 11, 0),
    targets="""
version: 1
services:
  - id: twitter
    name: Twitter
    endpoints:
      - {id: twitter-media, host: abs.twimg.com, port: 443,
         path: /responsive-web/client-web/main.js, checks: [dns, tcp, tls, download]}
  - id: baseline
    name: Baseline
    test_name: baseline
    baseline: true
    endpoints:
      - {id: baseline-media, host: upload.wikimedia.org, port: 443,
         path: /wikipedia/commons/a/a9/Example.jpg, checks: [dns, tcp, tls, download]}
""",
    probe_world=RussiaThrottleWorld,
    zone={"abs.twimg.com": ("152.199.21.141",), "upload.wikimedia.org": ("185.15.59.240",)},
    expected=[
        ("twitter-media", "152.199.21.141", 443, "throttled", "throttle"),
        ("baseline-media", "185.15.59.240", 443, "ok", None),
    ],
    services={"twitter": "blocked", "baseline": "ok"},
)


# --------------------------------------------------------------------------- #
# Kazakhstan                                                                   #
# --------------------------------------------------------------------------- #


class KazakhstanWorld(World):
    intercepted: ClassVar[set[str]] = {"www.facebook.com", "twitter.com"}

    def __init__(self, authority: Authority, zone: dict) -> None:
        super().__init__(authority, zone)
        # The interception root users were asked to install; nobody's trust store has it.
        self.qaznet = Authority("Qaznet Trust Network", authority.at)

    def tls(self, request: TlsRequest):
        if request.sni in self.intercepted:
            # A leaf for the right name, minted on the fly, chaining to the state root.
            return self.qaznet.chain(request.sni)
        return super().tls(request)


KAZAKHSTAN = Case(
    name="kazakhstan-2019-interception",
    title="Kazakhstan, July 2019: HTTPS interception with the 'Qaznet Trust Network' root",
    description=(
        "In July 2019 Kazakhtelecom intercepted TLS connections to a list of about 37 "
        "domains (Facebook, Twitter, Google, VK...) chosen by SNI, presenting certificates for "
        "the right names issued by the 'Qaznet Trust Network' root that users were told to "
        "install. Here the probe receives such a chain for www.facebook.com and twitter.com "
        "while the control receives the sites' real chains; the baseline is not intercepted."
    ),
    sources=(
        ("Censored Planet, 'Kazakhstan's HTTPS Interception' (2019): "
        "https://censoredplanet.org/kazakhstan"),
        "Raman et al., 'Investigating Large Scale HTTPS Interception in Kazakhstan', IMC 2020",
    ),
    started_at=utc(2019, 7, 20, 8, 0),
    targets="""
version: 1
services:
  - id: facebook
    name: Facebook
    endpoints:
      - {id: facebook-web, host: www.facebook.com, port: 443, checks: [dns, tcp, tls, https]}
  - id: twitter
    name: Twitter
    endpoints:
      - {id: twitter-web, host: twitter.com, port: 443, checks: [dns, tcp, tls, https]}
""" + BASELINE,
    probe_world=KazakhstanWorld,
    zone={"www.facebook.com": ("157.240.1.35",), "twitter.com": ("104.244.42.1",),
          **BASELINE_ZONE},
    expected=[
        ("facebook-web", "157.240.1.35", 443, "tls_blocked", "tls.mitm"),
        ("twitter-web", "104.244.42.1", 443, "tls_blocked", "tls.mitm"),
        *BASELINE_OK,
    ],
    services={"facebook": "blocked", "twitter": "blocked", "baseline": "ok"},
)


# --------------------------------------------------------------------------- #
# Turkmenistan                                                                 #
# --------------------------------------------------------------------------- #


class TurkmenistanWorld(World):
    localhost: ClassVar[set[str]] = {"www.azathabar.com"}
    trigger_sni: ClassVar[set[str]] = {"www.youtube.com"}

    def __init__(self, authority: Authority, zone: dict) -> None:
        super().__init__(authority, zone)
        self.penalty: set[tuple[str, int]] = set()

    def dns(self, query: DnsQuery) -> list[Reply]:
        if query.qname in self.localhost:
            return [Reply(("127.0.0.1",) if query.qtype == "A" else ())]
        return super().dns(query)

    def tls(self, request: TlsRequest):
        pair = (request.address, request.port)
        if request.sni in self.trigger_sni:
            self.penalty.add(pair)  # residual: the server's address:port stays blocked
            return failures.CONNECTION_RESET
        if pair in self.penalty:
            return failures.CONNECTION_RESET
        return super().tls(request)


TURKMENISTAN = Case(
    name="turkmenistan-localhost-and-residual-resets",
    title="Turkmenistan: 127.0.0.1 DNS answers, SNI resets and residual blocking",
    description=(
        "Turkmenistan's resolvers answer blocked names with 127.0.0.1, and its middleboxes "
        "reset TLS connections whose SNI is on the blocklist. Here www.azathabar.com "
        "(RFE/RL's Turkmen service) resolves to 127.0.0.1; a handshake for www.youtube.com "
        "is reset and, the censor keeping the server's address and port blocked for a "
        "while after a trigger (residual censorship), a second name hosted on the same "
        "address (www.youtube-nocookie.com), measured after it, is reset too. The control "
        "completes both."
    ),
    sources=(
        ("Nourin et al., 'Measuring and Evading Turkmenistan's Internet Censorship: A Case Study "
        "in Large-Scale Measurements of a Low-Penetration Country', WWW 2023 (127.0.0.1 DNS "
        "answers, RST-based HTTP/HTTPS blocking): https://ntc.party/t/4902"),
        ("Residual censorship (a client-server pair stays blocked after a trigger) as described "
        "by Bock et al., 'Come as You Are: Helping Unmodified Clients Bypass Censorship with "
        "Server-side Evasion', SIGCOMM 2020; the length of Turkmenistan's window is not "
        "modelled here"),
    ),
    started_at=utc(2022, 6, 1, 7, 45),
    targets="""
version: 1
services:
  - id: news
    name: Azathabar (RFE/RL)
    endpoints:
      - {id: news-web, host: www.azathabar.com, port: 443, checks: [dns, tcp, tls, https]}
  - id: youtube
    name: YouTube
    endpoints:
      - {id: youtube-web, host: www.youtube.com, port: 443, checks: [dns, tcp, tls]}
  - id: video
    name: YouTube (no-cookie)
    endpoints:
      - {id: video-web, host: www.youtube-nocookie.com, port: 443, checks: [dns, tcp, tls]}
""" + BASELINE,
    probe_world=TurkmenistanWorld,
    zone={"www.azathabar.com": ("23.62.101.196",), "www.youtube.com": ("142.250.180.14",),
          "www.youtube-nocookie.com": ("142.250.180.14",), **BASELINE_ZONE},
    expected=[
        ("news-web", None, None, "dns_blocked", "dns.bogon"),
        ("youtube-web", "142.250.180.14", 443, "tls_blocked", "tls.reset"),
        ("video-web", "142.250.180.14", 443, "tls_blocked", "tls.reset"),
        *BASELINE_OK,
    ],
    services={"news": "blocked", "youtube": "blocked", "video": "blocked", "baseline": "ok"},
)


# --------------------------------------------------------------------------- #
# Telegram                                                                     #
# --------------------------------------------------------------------------- #

TELEGRAM_DCS = ("149.154.175.50", "149.154.167.51", "149.154.175.100", "149.154.167.91",
                "149.154.171.5")


class TelegramBlackholeWorld(World):
    def connect(self, address: str, port: int):
        if address.startswith("149.154."):
            return failures.GENERIC_TIMEOUT  # packets dropped: no RST, no answer
        return None


TELEGRAM = Case(
    name="telegram-datacenter-blackhole",
    title="Telegram: every datacenter address blackholed (Russia, April 2018)",
    description=(
        "When Roskomnadzor ordered Telegram blocked on 16 April 2018, ISPs dropped all traffic "
        "to Telegram's address ranges (and then to millions of cloud addresses). Connections "
        "to the datacenters and to web.telegram.org time out, while the control connects "
        "and receives a valid resPQ for its own nonce from every datacenter."
    ),
    sources=(
        ("Meduza, 'Russia's federal censor blocks millions of IP addresses in crackdown on "
        "Telegram' (17 April 2018): https://meduza.io/en/news/2018/04/17/"
        "russia-s-federal-censor-blocks-millions-of-ip-addresses-in-crackdown-on-telegram-"
        "disrupting-internet-services-across-the-country"),
        ("OONI test specification ts-020 (telegram): "
        "https://github.com/ooni/spec/blob/master/nettests/ts-020-telegram.md"),
    ),
    started_at=utc(2018, 4, 17, 10, 0),
    targets="""
version: 1
services:
  - id: telegram
    name: Telegram
    test_name: telegram
    endpoints:
""" + "".join(
        f"      - {{id: telegram-dc{i}, host: {a}, ports: [80, 443], checks: [tcp, mtproto, http],"
        " role: datacenter}\n" for i, a in enumerate(TELEGRAM_DCS, 1)
    ) + (
        "      - {id: telegram-web, host: web.telegram.org, port: 443,"
        " checks: [dns, tcp, tls, https]}\n"
    ) + BASELINE,
    probe_world=TelegramBlackholeWorld,
    zone={"web.telegram.org": ("149.154.167.99",), **BASELINE_ZONE},
    expected=[
        *[(f"telegram-dc{i}", a, port, "tcp_blocked", "tcp.timeout")
          for i, a in enumerate(TELEGRAM_DCS, 1) for port in (80, 443)],
        ("telegram-web", "149.154.167.99", 443, "tcp_blocked", "tcp.timeout"),
        *BASELINE_OK,
    ],
    services={"telegram": "blocked", "baseline": "ok"},
)

CASES = {case.name: case for case in (IRAN, CHINA, RUSSIA, KAZAKHSTAN, TURKMENISTAN, TELEGRAM)}


# --------------------------------------------------------------------------- #
# Generation                                                                   #
# --------------------------------------------------------------------------- #


def expected_json(case: Case) -> dict:
    return {
        "trace": f"{case.name}.jsonl",
        "title": case.title,
        "endpoints": [
            {"id": i, "address": a, "port": p, "verdict": v, "method": m}
            for i, a, p, v, m in case.expected
        ],
        "services": case.services,
    }


def observed(outcome) -> tuple[list[dict], dict[str, str]]:
    rows = [
        {"id": v.endpoint_id, "address": v.address, "port": v.port, "verdict": v.verdict,
         "method": v.method}
        for rows in outcome.verdicts.values() for v in rows
    ]
    return rows, {s.service: s.status for s in outcome.services.values()}


def generate(case: Case, directory: Path = HERE) -> Path:
    authority = Authority("Probe Corpus Public Root", case.started_at)
    targets = parse_targets(case.targets, source=f"{case.name}/targets.yaml")
    options = RunOptions(
        resolver=case.resolver, timeout=10.0, concurrency=32, dns_linger=1.0,
        trust_pem=authority.pem, started_at=case.started_at,
    )
    control_world = World(authority, case.zone)
    world = case.probe_world(authority, case.zone)
    network = ScriptedNetwork(world, control_world, options)
    path = directory / f"{case.name}.jsonl"
    info = RunInfo(targets, options, ControlSettings(urls=(CONTROL_URL,), timeout=60.0))
    header = {
        "source": list(case.sources),
        "corpus": {"name": case.name, "title": case.title, "description": case.description,
                   "generated_by": "tests/traces/make_corpus.py",
                   "expected": f"{case.name}.expected.json"},
    }
    recording = start_recording(path, info, inner=network, extra_header=header)

    async def go():
        return await session.run(recording, targets, options,
                                 session.ControlConfig((CONTROL_URL,), None, 60.0),
                                 report_id=recording.run_info.report_id)

    outcome = asyncio.run(go())
    finish_recording(recording, outcome)
    expected = expected_json(case)
    rows, services = observed(outcome)
    if rows != expected["endpoints"] or services != expected["services"]:
        path.unlink()
        raise SystemExit(
            f"{case.name}: the analysis does not reach the expected verdicts\n"
            f"  expected {json.dumps(expected['endpoints'])} {expected['services']}\n"
            f"  observed {json.dumps(rows)} {services}"
        )
    (directory / f"{case.name}.expected.json").write_text(json.dumps(expected, indent=2) + "\n")
    return path


def main(argv: list[str]) -> int:
    names = argv or list(CASES)
    for name in names:
        if name not in CASES:
            print(f"unknown case {name!r}; known: {', '.join(CASES)}", file=sys.stderr)
            return 2
        print(generate(CASES[name]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
