"""The censor's techniques: small actions a scenario applies to the running lab.

Each action does what a documented censor does, with the tool its effect
requires: iptables/ip6tables rules in the censor router's namespace (packet
drops, RST injection, ClientHello SNI matching, redirection to a blockpage
server or an interception proxy), tc shaping on the censor's client-facing
link, per-name behaviours of the ISP resolver, an NFQUEUE+scapy DNS injector,
or changes to the fake Internet itself (a stopped server, a stale address, a
client without IPv6 or offline).

Actions only apply. Reverting is one complete operation, ``Lab.reset``:
flush every table and qdisc of the censor, stop every scenario process, give
the resolver and the Internet back their normal state. That is simpler to get
right than a per-action undo, and ``reset`` is checked by the tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from probe.lab import plan


class Runtime(Protocol):
    """What actions may ask of the running lab (implemented by ``probe.lab.lab.Lab``)."""

    def firewall(self, family: int, args: list[str]) -> None:
        """Run ``iptables`` (4) or ``ip6tables`` (6) with ``args`` in the censor."""

    def censor_command(self, argv: list[str]) -> None:
        """Run one command (tc...) in the censor's namespace."""

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
            lab.firewall(
                family,
                ["-A", "FORWARD", "-m", "connmark", "--mark", hex(self.mark), "-j", "DROP"],
            )
            for name in self.names:
                hit = ["-A", "FORWARD", "-p", "tcp", "--dport", str(self.port), "-m", "string",
                       "--algo", "bm", "--string", name]
                lab.firewall(family, [*hit, "-j", "CONNMARK", "--set-mark", hex(self.mark)])
                lab.firewall(family, [*hit, "-j", "DROP"])

    def describe(self) -> str:
        return f"drop a ClientHello naming {', '.join(self.names)} and the rest of its flow"


@dataclass(frozen=True)
class ResolverAnswers:
    """The ISP resolver lies for ``names``: ``behaviour`` is nxdomain, drop,
    servfail, or address (answer ``values`` instead of the real addresses)."""

    names: tuple[str, ...]
    behaviour: str
    values: tuple[str, ...] = ()

    def apply(self, lab: Runtime) -> None:
        # The format of probe.lab.servers.dns behaviours: "nxdomain", {"forge": [...]}.
        spec: str | dict = {"forge": list(self.values)} if self.behaviour == "address" else (
            self.behaviour
        )
        lab.set_resolver_behaviours({name: spec for name in self.names})

    def describe(self) -> str:
        what = f"{self.behaviour} {' '.join(self.values)}".strip()
        return f"ISP resolver answers {what} for {', '.join(self.names)}"


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
        lab.censor_command(["tc", "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb",
                            "default", "10"])
        lab.censor_command(["tc", "class", "add", "dev", dev, "parent", "1:", "classid", "1:10",
                            "htb", "rate", "10gbit", "quantum", "60000"])
        lab.censor_command(["tc", "class", "add", "dev", dev, "parent", "1:", "classid", "1:20",
                            "htb", "rate", f"{self.kbit}kbit", "ceil", f"{self.kbit}kbit",
                            "burst", "2k", "cburst", "2k", "quantum", "1514"])
        # A short queue: excess packets are dropped (a policer, as the TSPU's was)
        # instead of queueing for seconds, which would also starve new handshakes.
        lab.censor_command(["tc", "qdisc", "add", "dev", dev, "parent", "1:20", "handle", "20:",
                            "bfifo", "limit", str(self.queue_bytes)])
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
