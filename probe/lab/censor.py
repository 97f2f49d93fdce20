"""The censor's techniques: small actions a scenario applies to the running lab.

Each action does what a documented censor does, with the tool its effect
requires: iptables/ip6tables rules in the censor router's namespace (packet
drops, RST injection, ClientHello SNI matching, redirection to a blockpage
server or an interception proxy), nftables rules in the ``inet lab`` table for
UDP and per-flow packet counting (call ports dropped or rejected, flows cut
after N packets, allowlist mode), tc shaping on the censor's client-facing
link, per-name behaviours of the ISP resolver, NFQUEUE processes that read
payloads (a DNS injector, a QUIC Initial decryptor filtering on the SNI, a
forged-STUN injector), or changes to the fake Internet itself (a stopped
server, a stale address, a client without IPv6 or offline).

Actions only apply. Reverting is one complete operation, ``Lab.reset``:
flush every table and qdisc of the censor, stop every scenario process, give
the resolver and the Internet back their normal state. That is simpler to get
right than a per-action undo, and ``reset`` is checked by the tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from probe.lab import plan


class Runtime(Protocol):
    """What actions may ask of the running lab (implemented by ``probe.lab.lab.Lab``)."""

    state: Path  # the lab's state directory (its PKI under pki/)

    def firewall(self, family: int, args: list[str]) -> None:
        """Run ``iptables`` (4) or ``ip6tables`` (6) with ``args`` in the censor."""

    def censor_command(self, argv: list[str]) -> None:
        """Run one command (tc...) in the censor's namespace."""

    def nft(self, script: str) -> None:
        """Run an ``nft -f -`` script in the censor's namespace."""

    def start_scenario_process(self, name: str, namespace: str, argv: list[str]) -> None: ...

    def set_resolver_behaviours(self, behaviours: dict[str, str | dict]) -> None: ...

    def start_mitm_proxy(self, port: int) -> None: ...

    def stop_service(self, service: str) -> None: ...

    def set_service_address(self, address: str, present: bool) -> None: ...

    def set_client_ipv6(self, enabled: bool) -> None: ...

    def set_client_online(self, online: bool) -> None: ...


def _family(address: str) -> int:
    return 6 if ":" in address else 4


def _hex_name(name: str) -> str:
    """A DNS name in wire format, as an iptables --hex-string: |03|www|..."""
    return "".join(f"|{len(label):02x}|{label}" for label in name.rstrip(".").split(".")) + "|00|"


class Action(Protocol):
    def apply(self, lab: Runtime) -> None: ...

    def describe(self) -> str: ...


@dataclass(frozen=True)
class DropTraffic:
    """Blackhole: silently drop every packet towards ``addresses`` (optionally
    only some TCP ports). Russia's 2018 block of Telegram null-routed its
    datacenter prefixes; connects time out."""

    addresses: tuple[str, ...]
    ports: tuple[int, ...] = ()

    def apply(self, lab: Runtime) -> None:
        for address in self.addresses:
            match = ["-d", address]
            if not self.ports:
                lab.firewall(_family(address), ["-A", "FORWARD", *match, "-j", "DROP"])
            for port in self.ports:
                lab.firewall(
                    _family(address),
                    ["-A", "FORWARD", *match, "-p", "tcp", "--dport", str(port), "-j", "DROP"],
                )

    def describe(self) -> str:
        ports = f" ports {','.join(map(str, self.ports))}" if self.ports else ""
        return f"drop all packets to {', '.join(self.addresses)}{ports}"


@dataclass(frozen=True)
class ResetConnections:
    """Answer the SYN towards one address and port with a forged RST: the
    client's connect fails at once ("connection refused" to the socket),
    indistinguishable locally from a closed port, hence the control."""

    address: str
    port: int

    def apply(self, lab: Runtime) -> None:
        lab.firewall(
            _family(self.address),
            ["-A", "FORWARD", "-d", self.address, "-p", "tcp", "--dport", str(self.port),
             "--syn", "-j", "REJECT", "--reject-with", "tcp-reset"],
        )

    def describe(self) -> str:
        return f"RST answers every SYN to {self.address}:{self.port}"


@dataclass(frozen=True)
class SniReset:
    """DPI on the TLS ClientHello: a packet carrying a blocked server name is
    answered with an RST (the Great Firewall's SNI filtering; Chai et al.,
    "On the Importance of Encrypted-SNI Deployment", FOCI 2019)."""

    names: tuple[str, ...]
    port: int = 443

    def apply(self, lab: Runtime) -> None:
        for family in (4, 6):
            for name in self.names:
                lab.firewall(
                    family,
                    ["-A", "FORWARD", "-p", "tcp", "--dport", str(self.port), "-m", "string",
                     "--algo", "bm", "--string", name, "-j", "REJECT", "--reject-with",
                     "tcp-reset"],
                )

    def describe(self) -> str:
        return f"RST on a ClientHello naming {', '.join(self.names)}"


def _drop_marked_flows(lab: Runtime, family: int, mark: int) -> None:
    """Drop every packet of a flow once it carries connmark ``mark``."""
    lab.firewall(family, ["-A", "FORWARD", "-m", "connmark", "--mark", hex(mark), "-j", "DROP"])


def _drop_flow_from(lab: Runtime, family: int, hit: list[str], mark: int) -> None:
    """The packet matching ``hit`` is dropped and marks its flow, so that the rule of
    ``_drop_marked_flows`` drops the rest of it too."""
    lab.firewall(family, [*hit, "-j", "CONNMARK", "--set-mark", hex(mark)])
    lab.firewall(family, [*hit, "-j", "DROP"])


@dataclass(frozen=True)
class SniDrop:
    """DPI on the ClientHello that drops it and every later packet of the flow
    (connmark), so the handshake times out: Iran's and Russia's TSPU behaviour
    for blocked SNIs (Xue et al., "TSPU: Russia's Decentralized Censorship
    System", IMC 2022)."""

    names: tuple[str, ...]
    port: int = 443
    mark: int = 0x5D

    def apply(self, lab: Runtime) -> None:
        for family in (4, 6):
            _drop_marked_flows(lab, family, self.mark)
            for name in self.names:
                hit = ["-A", "FORWARD", "-p", "tcp", "--dport", str(self.port), "-m", "string",
                       "--algo", "bm", "--string", name]
                _drop_flow_from(lab, family, hit, self.mark)

    def describe(self) -> str:
        return f"drop a ClientHello naming {', '.join(self.names)} and the rest of its flow"


@dataclass(frozen=True)
class ResolverAnswers:
    """The ISP resolver lies for ``names``: ``behaviour`` is nxdomain, drop,
    servfail, refused, nodata, or address (answer ``values`` instead of the real
    addresses, behind a CNAME to ``cname`` when given)."""

    names: tuple[str, ...]
    behaviour: str
    values: tuple[str, ...] = ()
    cname: str | None = None  # address only: a CNAME to this name first

    def behaviours(self) -> dict[str, str | dict]:
        # The format of probe.lab.servers.dns behaviours: "nxdomain", {"forge": [...]}.
        spec: str | dict = self.behaviour
        if self.behaviour == "address":
            spec = {"forge": list(self.values)}
            if self.cname is not None:
                spec["cname"] = self.cname
        return {name: spec for name in self.names}

    def apply(self, lab: Runtime) -> None:
        lab.set_resolver_behaviours(self.behaviours())

    def describe(self) -> str:
        what = f"{self.behaviour} {' '.join(self.values)}".strip()
        if self.cname is not None:
            what = f"a CNAME to {self.cname} then {' '.join(self.values)}"
        return f"ISP resolver answers {what} for {', '.join(self.names)}"


@dataclass(frozen=True)
class ResolverLies:
    """Several ``ResolverAnswers`` at once (the resolver's behaviour file is one)."""

    answers: tuple[ResolverAnswers, ...]

    def apply(self, lab: Runtime) -> None:
        merged: dict[str, str | dict] = {}
        for answer in self.answers:
            merged.update(answer.behaviours())
        lab.set_resolver_behaviours(merged)

    def describe(self) -> str:
        return "; ".join(answer.describe() for answer in self.answers)


@dataclass(frozen=True)
class DnsInjection:
    """An on-path injector races the real resolver with forged answers (see
    ``probe.lab.injector``). Only queries naming ``names`` are queued (string
    match on the wire-format name), the rest pass untouched."""

    names: tuple[str, ...]
    forged_a: str
    forged_aaaa: str
    hold: float = 0.3
    queue: int = 3

    def apply(self, lab: Runtime) -> None:
        for family in (4, 6):
            for name in self.names:
                lab.firewall(
                    family,
                    ["-A", "FORWARD", "-p", "udp", "--dport", "53", "-m", "string", "--algo",
                     "bm", "--hex-string", _hex_name(name), "-j", "NFQUEUE", "--queue-num",
                     str(self.queue)],
                )
        argv = ["-m", "probe.lab.injector", "--queue", str(self.queue), "--forged-a",
                self.forged_a, "--forged-aaaa", self.forged_aaaa, "--hold", str(self.hold)]
        for name in self.names:
            argv += ["--name", name]
        lab.start_scenario_process("injector", plan.CENSOR, argv)

    def describe(self) -> str:
        return (f"inject {self.forged_a}/{self.forged_aaaa} for {', '.join(self.names)} "
                f"ahead of the real answer (held {self.hold}s)")


@dataclass(frozen=True)
class HttpBlockpage:
    """Port-80 connections to ``addresses`` are diverted to the censor's own
    blockpage server (``probe.lab.blockpage``), which answers Iran's 403 page
    with its iframe to 10.10.34.34. ``echo_client`` makes the page also show
    the client's address in its body and a header (for the scrubbing tests)."""

    addresses: tuple[str, ...]
    echo_client: bool = False
    port: int = 80
    redirect: bool = False  # a 302 to the ISP's warning page instead (Russia)
    page: str = "iran"  # or "unknown": a 200 page that matches no known fingerprint

    def apply(self, lab: Runtime) -> None:
        for address in self.addresses:
            lab.firewall(
                _family(address),
                ["-t", "nat", "-A", "PREROUTING", "-d", address, "-p", "tcp", "--dport",
                 str(self.port), "-j", "REDIRECT", "--to-ports", str(BLOCKPAGE_PORT)],
            )
        argv = ["-m", "probe.lab.blockpage", "--port", str(BLOCKPAGE_PORT)]
        if self.echo_client:
            argv.append("--echo-client")
        if self.redirect:
            argv.append("--redirect")
        argv += ["--page", self.page]
        lab.start_scenario_process("blockpage", plan.CENSOR, argv)

    def describe(self) -> str:
        echo = " echoing the client's address" if self.echo_client else ""
        kind = "a redirect to a warning page" if self.redirect else "a blockpage"
        return f"HTTP to {', '.join(self.addresses)}:{self.port} gets {kind}{echo}"


BLOCKPAGE_PORT = 8080
MITM_PORT = 8443


@dataclass(frozen=True)
class TlsInterception:
    """TLS to ``addresses`` is diverted to a man-in-the-middle proxy presenting
    certificates for the right names from the censor's root, which nobody
    trusts (Kazakhstan 2019: Raman et al., "Investigating Large Scale HTTPS
    Interception in Kazakhstan", IMC 2020)."""

    addresses: tuple[str, ...]
    port: int = 443

    def apply(self, lab: Runtime) -> None:
        for address in self.addresses:
            lab.firewall(
                _family(address),
                ["-t", "nat", "-A", "PREROUTING", "-d", address, "-p", "tcp", "--dport",
                 str(self.port), "-j", "REDIRECT", "--to-ports", str(MITM_PORT)],
            )
        lab.start_mitm_proxy(MITM_PORT)

    def describe(self) -> str:
        return f"TLS to {', '.join(self.addresses)} intercepted with the censor's root"


def _shaper(lab: Runtime, kbit: int, queue_bytes: int) -> None:
    """An HTB class 1:20 of ``kbit`` on the censor's client link; packets put in it
    (iptables CLASSIFY --set-class 1:20) are shaped, the rest pass at line rate."""
    dev = plan.CENSOR_CLIENT_DEV
    lab.censor_command(["tc", "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb",
                        "default", "10"])
    lab.censor_command(["tc", "class", "add", "dev", dev, "parent", "1:", "classid", "1:10",
                        "htb", "rate", "10gbit", "quantum", "60000"])
    lab.censor_command(["tc", "class", "add", "dev", dev, "parent", "1:", "classid", "1:20",
                        "htb", "rate", f"{kbit}kbit", "ceil", f"{kbit}kbit",
                        "burst", "2k", "cburst", "2k", "quantum", "1514"])
    # A short queue: excess packets are dropped (a policer, as the TSPU's was)
    # instead of queueing for seconds, which would also starve new handshakes.
    lab.censor_command(["tc", "qdisc", "add", "dev", dev, "parent", "1:20", "handle", "20:",
                        "bfifo", "limit", str(queue_bytes)])


@dataclass(frozen=True)
class Throttle:
    """Traffic from ``addresses`` to the client is shaped to ``kbit`` kbit/s
    (Russia's 2021 throttling of Twitter to about 130-150 kbit/s: Xue et al.,
    "Throttling Twitter: an emerging censorship technique in Russia", IMC 2021).
    iptables CLASSIFY puts the packets into an HTB class on the client link."""

    addresses: tuple[str, ...]
    kbit: int = 150
    queue_bytes: int = 6000  # about 0.3 s at 150 kbit/s

    def apply(self, lab: Runtime) -> None:
        dev = plan.CENSOR_CLIENT_DEV
        _shaper(lab, self.kbit, self.queue_bytes)
        for address in self.addresses:
            lab.firewall(
                _family(address),
                ["-t", "mangle", "-A", "POSTROUTING", "-o", dev, "-s", address, "-j",
                 "CLASSIFY", "--set-class", "1:20"],
            )

    def describe(self) -> str:
        return f"traffic from {', '.join(self.addresses)} shaped to {self.kbit} kbit/s"


@dataclass(frozen=True)
class StopService:
    """The service's own server is not running: nothing is censored, it is down."""

    service: str

    def apply(self, lab: Runtime) -> None:
        lab.stop_service(self.service)

    def describe(self) -> str:
        return f"the {self.service} server is stopped"


@dataclass(frozen=True)
class RemoveAddresses:
    """The addresses disappear from the Internet (a stale endpoint list): every
    vantage, control included, times out."""

    addresses: tuple[str, ...]

    def apply(self, lab: Runtime) -> None:
        for address in self.addresses:
            lab.set_service_address(address, present=False)

    def describe(self) -> str:
        return f"{', '.join(self.addresses)} no longer exist"


@dataclass(frozen=True)
class ClientWithoutIpv6:
    """The client has no IPv6 address or route, though AAAA answers exist."""

    def apply(self, lab: Runtime) -> None:
        lab.set_client_ipv6(False)

    def describe(self) -> str:
        return "the client has no IPv6 connectivity"


@dataclass(frozen=True)
class ClientOffline:
    """The client's only link is down: nothing at all is reachable."""

    def apply(self, lab: Runtime) -> None:
        lab.set_client_online(False)

    def describe(self) -> str:
        return "the client's link is down"


@dataclass(frozen=True)
class PayloadDrop:
    """DPI on a connection's payload: once a packet to ``addresses`` carries one of
    ``hex_strings`` (iptables --hex-string), that packet and the rest of its flow
    are dropped; the TCP handshake itself passes. Telegram's unobfuscated MTProto
    was identified this way by Iranian and Russian DPI in 2018 (TelegramMessenger/
    MTProxy issues #35 and #138); here the marker is req_pq_multi's constructor."""

    addresses: tuple[str, ...]
    hex_strings: tuple[str, ...]
    mark: int = 0x5E

    def apply(self, lab: Runtime) -> None:
        for family in (4, 6):
            _drop_marked_flows(lab, family, self.mark)
        for address in self.addresses:
            for needle in self.hex_strings:
                hit = ["-A", "FORWARD", "-d", address, "-p", "tcp", "-m", "string", "--algo",
                       "bm", "--hex-string", needle]
                _drop_flow_from(lab, _family(address), hit, self.mark)

    def describe(self) -> str:
        return (f"drop flows to {', '.join(self.addresses)} once their payload carries "
                f"{' or '.join(self.hex_strings)}")


@dataclass(frozen=True)
class IcmpReject:
    """A router's REJECT rule: SYNs to ``addresses`` are answered with an ICMP
    "communication administratively prohibited" (IPv4 type 3 code 13, RFC 1812;
    ICMPv6 type 1 code 1, RFC 4443) instead of being dropped silently."""

    addresses: tuple[str, ...]

    def apply(self, lab: Runtime) -> None:
        for address in self.addresses:
            kind = "icmp-admin-prohibited" if _family(address) == 4 else "adm-prohibited"
            lab.firewall(_family(address), ["-A", "FORWARD", "-d", address, "-p", "tcp",
                                            "-j", "REJECT", "--reject-with", kind])

    def describe(self) -> str:
        return f"ICMP administratively prohibited for TCP to {', '.join(self.addresses)}"


@dataclass(frozen=True)
class KeywordReset:
    """Keyword filtering of plain HTTP: a packet to port ``port`` carrying
    ``keyword`` (here a Host header) is answered with an RST, after the TCP
    handshake, when the request goes out (the Great Firewall: Clayton et al.,
    "Ignoring the Great Firewall of China", PET 2006)."""

    keyword: str
    port: int = 80

    def apply(self, lab: Runtime) -> None:
        for family in (4, 6):
            lab.firewall(family, ["-A", "FORWARD", "-p", "tcp", "--dport", str(self.port),
                                  "-m", "string", "--algo", "bm", "--string", self.keyword,
                                  "-j", "REJECT", "--reject-with", "tcp-reset"])

    def describe(self) -> str:
        return f"RST when a packet to port {self.port} carries {self.keyword!r}"


@dataclass(frozen=True)
class SniFlowLimit:
    """Per-flow limits keyed on the ClientHello's SNI, after the flow's first
    ``after_bytes`` (server to client): ``kbit`` None freezes the flow (every later
    packet dropped: Russia's TSPU since 2024, sites behind Cloudflare, Hetzner,
    DigitalOcean hang after ~16 KB, net4people/bbs #417 and #490), a number shapes it
    (Russia 2021 throttled Twitter's flows matched by SNI: Xue et al., IMC 2021).
    iptables CONNMARKs the flow whose ClientHello names one of ``names``; connbytes
    counts the reply direction (it turns on conntrack accounting by itself)."""

    names: tuple[str, ...]
    after_bytes: int = 16_000
    kbit: int | None = None
    mark: int = 0x5F

    def apply(self, lab: Runtime) -> None:
        dev = plan.CENSOR_CLIENT_DEV
        if self.kbit is not None:
            _shaper(lab, self.kbit, 6000)
        for family in (4, 6):
            for name in self.names:
                lab.firewall(family, ["-A", "FORWARD", "-p", "tcp", "--dport", "443", "-m",
                                      "string", "--algo", "bm", "--string", name, "-j",
                                      "CONNMARK", "--set-mark", hex(self.mark)])
            over = ["-m", "connmark", "--mark", hex(self.mark), "-m", "connbytes",
                    "--connbytes", f"{self.after_bytes}:", "--connbytes-dir", "reply",
                    "--connbytes-mode", "bytes"]
            if self.kbit is None:
                lab.firewall(family, ["-A", "FORWARD", "-o", dev, *over, "-j", "DROP"])
            else:
                lab.firewall(family, ["-t", "mangle", "-A", "POSTROUTING", "-o", dev, *over,
                                      "-j", "CLASSIFY", "--set-class", "1:20"])

    def describe(self) -> str:
        what = "frozen" if self.kbit is None else f"shaped to {self.kbit} kbit/s"
        return (f"TLS flows naming {', '.join(self.names)} {what} after their first "
                f"{self.after_bytes} bytes")


@dataclass(frozen=True)
class IspBlockpageServer:
    """The ISP's own blockpage server, a public host anyone can reach (the
    resolver's lies point here): a 200 page matching no known fingerprint."""

    address: str = plan.ISP_RESOLVER
    port: int = 80
    tls_port: int | None = None  # also over HTTPS, with a valid certificate for its own name

    def apply(self, lab: Runtime) -> None:
        lab.start_scenario_process(
            "isp-blockpage", plan.ISP,
            ["-m", "probe.lab.blockpage", "--host", self.address, "--port", str(self.port),
             "--page", "unknown"],
        )
        if self.tls_port is not None:
            lab.start_scenario_process(
                "isp-blockpage-tls", plan.ISP,
                ["-m", "probe.lab.blockpage", "--host", self.address, "--port",
                 str(self.tls_port), "--page", "unknown", "--tls-pki", str(lab.state / "pki"),
                 "--tls-name", plan.ISP_BLOCKPAGE_HOST],
            )

    def describe(self) -> str:
        tls = f" and HTTPS on {self.tls_port} as {plan.ISP_BLOCKPAGE_HOST}" if self.tls_port else ""
        return f"the ISP's blockpage server answers on {self.address}:{self.port}{tls}"


TLS_ALERT_PORT = 8444


@dataclass(frozen=True)
class TlsAlert:
    """TLS to ``addresses`` goes through the censor's interceptor
    (``probe.lab.tls_alert``): a ClientHello naming one of ``alerts``' names is
    answered with that forged TLS alert and a FIN, other names pass. Filters
    that refuse a blocked SNI with an alert instead of an RST do this (e.g.
    Russia's TSPU on ECH-bearing ClientHellos; enterprise DPI's 'block page' for
    TLS, Fortinet and Palo Alto documenting an alert answer)."""

    addresses: tuple[str, ...]
    alerts: tuple[tuple[str, int], ...]  # (server name, alert description)
    port: int = 443

    def apply(self, lab: Runtime) -> None:
        for address in self.addresses:
            lab.firewall(
                _family(address),
                ["-t", "nat", "-A", "PREROUTING", "-d", address, "-p", "tcp", "--dport",
                 str(self.port), "-j", "REDIRECT", "--to-ports", str(TLS_ALERT_PORT)],
            )
        argv = ["-m", "probe.lab.tls_alert", "--port", str(TLS_ALERT_PORT)]
        for name, alert in self.alerts:
            argv += ["--block", f"{name}={alert}"]
        lab.start_scenario_process("tls-alert", plan.CENSOR, argv)

    def describe(self) -> str:
        named = ", ".join(f"{name} (alert {alert})" for name, alert in self.alerts)
        return f"a forged TLS alert answers ClientHellos naming {named}"


@dataclass(frozen=True)
class InterceptDns:
    """Every DNS query leaving the client over UDP (whatever resolver it asks) is
    answered by the ISP's resolver instead: a DNAT on the censor's client-facing
    side, so the reply still seems to come from the resolver asked (Iran, Turkey,
    many ISPs' transparent DNS proxies). ``tcp`` also diverts DNS over TCP."""

    tcp: bool = False

    def apply(self, lab: Runtime) -> None:
        protocols = ("udp", "tcp") if self.tcp else ("udp",)
        for protocol in protocols:
            lab.firewall(4, ["-t", "nat", "-A", "PREROUTING", "-i", plan.CENSOR_CLIENT_DEV,
                             "-p", protocol, "--dport", "53", "-j", "DNAT",
                             "--to-destination", plan.ISP_RESOLVER])

    def describe(self) -> str:
        over = "UDP and TCP" if self.tcp else "UDP (TCP passes)"
        return f"DNS over {over} to any resolver answered by the ISP's resolver"


@dataclass(frozen=True)
class DnsOnlyTo:
    """DNS (UDP and TCP port 53) from the client may go only to ``allowed``; every
    query to another resolver is dropped silently. Iran and China have at times let
    DNS out only to domestic resolvers, so a foreign resolver times out for every
    name while the system (ISP) resolver answers."""

    allowed: tuple[str, ...] = (plan.ISP_RESOLVER,)

    def apply(self, lab: Runtime) -> None:
        for family in (4, 6):
            allowed = [a for a in self.allowed if _family(a) == family]
            for protocol in ("udp", "tcp"):
                base = ["-A", "FORWARD", "-i", plan.CENSOR_CLIENT_DEV, "-p", protocol,
                        "--dport", "53"]
                for address in allowed:
                    lab.firewall(family, [*base, "-d", address, "-j", "ACCEPT"])
                lab.firewall(family, [*base, "-j", "DROP"])

    def describe(self) -> str:
        return f"DNS from the client only to {', '.join(self.allowed)}; other resolvers dropped"


@dataclass(frozen=True)
class HttpResponseDrop:
    """A request naming a blocked host passes, the flow is marked, and the server's
    response (every packet of that flow carrying ``HTTP/1.``) is dropped: the request
    is sent, the first application data never arrives (OONI's Turkmenistan and India
    reports: HTTP requests for blocked sites time out after the request)."""

    keyword: str
    port: int = 80
    mark: int = 0x60

    def apply(self, lab: Runtime) -> None:
        for family in (4, 6):
            lab.firewall(family, ["-A", "FORWARD", "-p", "tcp", "--dport", str(self.port),
                                  "-m", "string", "--algo", "bm", "--string", self.keyword,
                                  "-j", "CONNMARK", "--set-mark", hex(self.mark)])
            lab.firewall(family, ["-A", "FORWARD", "-p", "tcp", "--sport", str(self.port),
                                  "-m", "connmark", "--mark", hex(self.mark), "-m", "string",
                                  "--algo", "bm", "--string", "HTTP/1.", "-j", "DROP"])

    def describe(self) -> str:
        return (f"the response to a port-{self.port} request carrying {self.keyword!r} "
                "is dropped")


@dataclass(frozen=True)
class DomesticOnly:
    """A national shutdown with a domestic whitelist (Iran, November 2019): from the
    client only ``domestic`` networks are reachable (here the ISP's resolver);
    everything abroad, the control helper and the baseline included, is dropped."""

    domestic: tuple[str, ...] = ("198.51.100.4/30",)

    def apply(self, lab: Runtime) -> None:
        for network in self.domestic:
            lab.firewall(4, ["-A", "FORWARD", "-i", plan.CENSOR_CLIENT_DEV, "-d", network,
                             "-j", "ACCEPT"])
        for family in (4, 6):
            lab.firewall(family, ["-A", "FORWARD", "-i", plan.CENSOR_CLIENT_DEV, "-j", "DROP"])

    def describe(self) -> str:
        return f"only {', '.join(self.domestic)} reachable from the client; the rest dropped"


@dataclass(frozen=True)
class LossyDns:
    """A lossy link for DNS datagrams: each UDP packet from the client to port 53 is
    dropped with probability ``loss`` (iptables statistic, random mode), whatever the
    name. Nothing is censored; a probe that sends each query once reads a lost
    datagram as a resolver that never answers. (Random, not every n-th packet: a
    probe sends A and AAAA back to back, and n-th dropping never loses both.)"""

    loss: float = 0.25

    def apply(self, lab: Runtime) -> None:
        for family in (4, 6):
            lab.firewall(family, ["-A", "FORWARD", "-i", plan.CENSOR_CLIENT_DEV, "-p", "udp",
                                  "--dport", "53", "-m", "statistic", "--mode", "random",
                                  "--probability", f"{self.loss:.2f}", "-j", "DROP"])

    def describe(self) -> str:
        return f"{self.loss:.0%} of the client's DNS datagrams lost, whatever the name"


# --------------------------------------------------------------------------- #
# UDP, STUN and QUIC: nftables in the censor's "inet lab" table               #
# --------------------------------------------------------------------------- #

NFT_TABLE = "inet lab"
FROM_CLIENT = f'iifname "{plan.CENSOR_CLIENT_DEV}"'


def _nft_rules(lab: Runtime, rules: list[str]) -> None:
    """Append ``rules`` to the ``censor`` chain (hook forward) of the censor's ``inet lab`` table
    (created on first use; ``Lab.reset`` flushes the whole ruleset)."""
    script = [f"add table {NFT_TABLE}",
              f"add chain {NFT_TABLE} censor {{ type filter hook forward priority 0; "
              "policy accept; }"]
    script += [f"add rule {NFT_TABLE} censor {rule}" for rule in rules]
    lab.nft("\n".join(script) + "\n")


def _count_flow_packets(lab: Runtime) -> None:
    """``ct original packets`` needs conntrack accounting (per namespace)."""
    lab.censor_command(["sysctl", "-qw", "net.netfilter.nf_conntrack_acct=1"])


def _daddr(addresses: tuple[str, ...], negate: bool = False) -> list[str]:
    """One nft match per family present: 'ip daddr { ... }', 'ip6 daddr { ... }'."""
    matches = []
    for family, keyword in ((4, "ip"), (6, "ip6")):
        mine = [a for a in addresses if _family(a) == family]
        if mine:
            matches.append(f"{keyword} daddr {'!= ' if negate else ''}{{ {', '.join(mine)} }}")
    return matches


def _ports(ports: tuple[int, ...]) -> str:
    return "{ " + ", ".join(map(str, ports)) + " }"


@dataclass(frozen=True)
class UdpDrop:
    """Datagrams from the client to ``addresses`` on UDP ``ports`` are dropped: calls
    fail while text (TCP) works. Russia, August 2025: Telegram's STUN Binding
    Requests to its reflectors (UDP 596-599 and 1400) and WhatsApp's call relays
    went unanswered (net4people/bbs #546; telegramdesktop/tdesktop #31045)."""

    addresses: tuple[str, ...]
    ports: tuple[int, ...]

    def apply(self, lab: Runtime) -> None:
        _nft_rules(lab, [f"{FROM_CLIENT} {match} udp dport {_ports(self.ports)} drop"
                         for match in _daddr(self.addresses)])

    def describe(self) -> str:
        return (f"drop UDP to {', '.join(self.addresses)} ports "
                f"{','.join(map(str, self.ports))}")


@dataclass(frozen=True)
class UdpReject:
    """As ``UdpDrop``, but answered with an ICMP port unreachable (a router's
    ``reject`` rule; nft's icmpx picks ICMP type 3 code 3 or ICMPv6 type 1 code 4):
    the client's connected socket reads "connection refused" at once."""

    addresses: tuple[str, ...]
    ports: tuple[int, ...]

    def apply(self, lab: Runtime) -> None:
        # The kernel sends at most ~1 ICMP error per second to one host after a small
        # burst; a probe's flows of 40 datagrams would leave its STUN requests without
        # an answer. Real routers limit too, but the lab must answer every datagram.
        lab.censor_command(["sysctl", "-qw", "net.ipv4.icmp_ratelimit=0"])
        lab.censor_command(["sysctl", "-qw", "net.ipv6.icmp.ratelimit=0"])
        _nft_rules(lab, [f"{FROM_CLIENT} {match} udp dport {_ports(self.ports)} "
                         "reject with icmpx type port-unreachable"
                         for match in _daddr(self.addresses)])

    def describe(self) -> str:
        return (f"ICMP port unreachable for UDP to {', '.join(self.addresses)} ports "
                f"{','.join(map(str, self.ports))}")


@dataclass(frozen=True)
class UdpFlowCutoff:
    """Every UDP flow from the client to a foreign destination is cut after its
    first ``after`` datagrams (conntrack's per-flow counter, ``ct original
    packets``): a single STUN exchange or a QUIC handshake passes, a call's media
    flow stops. Russian mobile networks, 2025 (net4people/bbs #546: unrecognised
    UDP flows dropped after their first packets). ``domestic`` is exempt."""

    after: int = 20
    domestic: tuple[str, ...] = ("198.51.100.4/30",)

    def apply(self, lab: Runtime) -> None:
        _count_flow_packets(lab)
        rules = [f"{FROM_CLIENT} {match} meta l4proto udp ct original packets > {self.after} drop"
                 for match in _daddr(self.domestic, negate=True)]
        if not any(_family(a) == 6 for a in self.domestic):
            rules.append(f"{FROM_CLIENT} meta nfproto ipv6 meta l4proto udp "
                         f"ct original packets > {self.after} drop")
        _nft_rules(lab, rules)

    def describe(self) -> str:
        return f"UDP flows from the client cut after their first {self.after} datagrams"


@dataclass(frozen=True)
class Udp443Drop:
    """Every datagram to UDP port 443 is dropped, so no QUIC handshake ever starts
    and browsers fall back to TCP (Iran, September 2022: UDP 443 black-holed;
    Elmenhorst et al., IMC 2021, on QUIC blocking by port)."""

    def apply(self, lab: Runtime) -> None:
        _nft_rules(lab, [f"{FROM_CLIENT} udp dport 443 drop"])

    def describe(self) -> str:
        return "drop every UDP datagram to port 443 (QUIC)"


@dataclass(frozen=True)
class AllUdpDrop:
    """The network carries no UDP at all except DNS to the ISP's resolver: every
    call fails for every app (a mobile network's "TCP only" policy; Iran's
    tiered access, 2026). ``resolvers`` keep their DNS."""

    resolvers: tuple[str, ...] = (plan.ISP_RESOLVER,)

    def apply(self, lab: Runtime) -> None:
        rules = [f"{FROM_CLIENT} {match} udp dport 53 accept" for match in _daddr(self.resolvers)]
        rules.append(f"{FROM_CLIENT} meta l4proto udp drop")
        _nft_rules(lab, rules)

    def describe(self) -> str:
        return f"drop every UDP datagram from the client except DNS to {', '.join(self.resolvers)}"


@dataclass(frozen=True)
class AllowlistMode:
    """Allowlist mode: TCP connects everywhere (SYN and the handshake's ACK pass),
    but the first data segment, and every later packet of the flow, is dropped
    unless the destination is on the allowlist (Russian mobile networks since
    about September 2025: net4people/bbs #516, #579). UDP is left alone here. The
    third packet of a flow from the client is its first data segment."""

    allowed: tuple[str, ...]

    def apply(self, lab: Runtime) -> None:
        _count_flow_packets(lab)
        rules = [f"{FROM_CLIENT} {match} meta l4proto tcp ct original packets > 2 drop"
                 for match in _daddr(self.allowed, negate=True)]
        _nft_rules(lab, rules)

    def describe(self) -> str:
        return (f"TCP data dropped after the handshake except to {', '.join(self.allowed)}")


QUIC_FILTER_QUEUE = 4
STUN_INJECTOR_QUEUE = 5


@dataclass(frozen=True)
class QuicSniFilter:
    """QUIC Initial packets whose ClientHello names a blocked server are dropped,
    and the rest of that flow with them (``probe.lab.quic_filter`` decrypts each
    Initial with the keys anyone can derive from its Destination Connection ID,
    RFC 9001 5.2). The Great Firewall does this since April 2024 (Zohaib et al.,
    "Exposing and Circumventing SNI-based QUIC Censorship of the Great Firewall
    of China", USENIX Security 2025); Russia's TSPU since 2023."""

    names: tuple[str, ...]
    queue: int = QUIC_FILTER_QUEUE

    def apply(self, lab: Runtime) -> None:
        # iptables' NFQUEUE target (nft's queue expression needs nft_queue, which not
        # every kernel has loaded; xt_NFQUEUE is what the DNS injector uses too).
        for family in (4, 6):
            lab.firewall(family, ["-A", "FORWARD", "-i", plan.CENSOR_CLIENT_DEV, "-p", "udp",
                                  "--dport", "443", "-j", "NFQUEUE", "--queue-num",
                                  str(self.queue)])
        argv = ["-m", "probe.lab.quic_filter", "--queue", str(self.queue)]
        for name in self.names:
            argv += ["--name", name]
        lab.start_scenario_process("quic-filter", plan.CENSOR, argv)

    def describe(self) -> str:
        return f"drop QUIC flows whose Initial names {', '.join(self.names)}"


@dataclass(frozen=True)
class StunInjection:
    """An on-path injector answers STUN Binding Requests to ``addresses`` with a
    forged Binding Success (same transaction id, XOR-MAPPED-ADDRESS ``forged``)
    before the relay's real answer, which still arrives (``probe.lab.stun_injector``):
    two different answers to one request, as for DNS injection."""

    addresses: tuple[str, ...]
    ports: tuple[int, ...]
    forged: str = "203.0.113.254"
    queue: int = STUN_INJECTOR_QUEUE

    def apply(self, lab: Runtime) -> None:
        ports = ",".join(map(str, self.ports))
        for address in self.addresses:
            lab.firewall(_family(address), [
                "-A", "FORWARD", "-i", plan.CENSOR_CLIENT_DEV, "-d", address, "-p", "udp",
                "-m", "multiport", "--dports", ports, "-j", "NFQUEUE", "--queue-num",
                str(self.queue)])
        lab.start_scenario_process(
            "stun-injector", plan.CENSOR,
            ["-m", "probe.lab.stun_injector", "--queue", str(self.queue),
             "--forged", self.forged])

    def describe(self) -> str:
        return (f"forged Binding Success ({self.forged}) injected ahead of the answers of "
                f"{', '.join(self.addresses)}")


@dataclass(frozen=True)
class TurnDrop:
    """DPI on the STUN message type: TURN Allocate requests (type 0x0003, the first
    two bytes of the UDP payload, RFC 5766 6.1) to ``ports`` are dropped, while
    Binding Requests on the same port pass. Relay-only calls (TURN) fail while
    direct ICE still finds a path; firewalls that classify TURN apart from STUN
    (application signatures keyed on the message type) can do exactly this."""

    ports: tuple[int, ...]

    def apply(self, lab: Runtime) -> None:
        _nft_rules(lab, [f"{FROM_CLIENT} udp dport {_ports(self.ports)} "
                         "@th,64,16 0x0003 drop"])

    def describe(self) -> str:
        return f"drop TURN Allocate requests to UDP ports {','.join(map(str, self.ports))}"


@dataclass(frozen=True)
class QuicVersionDrop:
    """QUIC long-header packets of ``version`` (RFC 9000 17.2: the four bytes after
    the first) to destinations outside ``domestic`` are dropped, so handshakes with
    foreign servers never complete; other versions and domestic servers pass.
    Russia's TSPU blocked QUIC v1 to foreign addresses from March 2022 (net4people/
    bbs #108; Xue et al., 'TSPU', IMC 2022)."""

    version: int = 0x00000001
    domestic: tuple[str, ...] = ("203.0.113.100", "2001:db8:113::100")

    def apply(self, lab: Runtime) -> None:
        rules = [f"{FROM_CLIENT} {match} udp dport 443 @th,64,1 1 "
                 f"@th,72,32 {self.version:#010x} drop"
                 for match in _daddr(self.domestic, negate=True)]
        _nft_rules(lab, rules)

    def describe(self) -> str:
        return (f"drop QUIC version {self.version:#010x} packets except to "
                f"{', '.join(self.domestic)}")
