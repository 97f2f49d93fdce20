"""An on-path DNS injector, run by the lab's censor router (Great Firewall style).

The censor's firewall hands DNS queries for the blocked names to this process
through NFQUEUE. For each one it sends a forged reply straight back to the
client (scapy crafts it, with the resolver's source address, the query's id and
question) and lets the real query go on to the resolver after a short hold, so
the genuine answer still arrives, later: the client sees two different replies
to one query, as with the GFW's injection (Anonymous, "The Collateral Damage of
Internet Censorship by DNS Injection", SIGCOMM CCR 2012; GFWatch, USENIX
Security 2021). The hold stands in for the real resolver being farther away
than the injector, which makes the race deterministic.

Run as ``python -m probe.lab.injector --queue N --name NAME... --forged-a A
--forged-aaaa AAAA --hold S --duration S``; it exits by itself after
``--duration`` seconds.
"""

from __future__ import annotations

import argparse
import sys
import threading

from probe.lab.nfqueue import serve_queue


def _forge(payload: bytes, names: set[str], forged_a: str, forged_aaaa: str) -> bytes | None:
    """The forged reply packet (IP layer up) for a query in ``payload``, or None."""
    from scapy.layers.dns import DNS, DNSQR, DNSRR
    from scapy.layers.inet import IP, UDP
    from scapy.layers.inet6 import IPv6

    version = payload[0] >> 4
    packet = IP(payload) if version == 4 else IPv6(payload)
    if not packet.haslayer(DNS) or not packet.haslayer(UDP):
        return None
    dns = packet[DNS]
    if dns.qr != 0 or dns.qdcount < 1 or not dns.qd:
        return None
    question = dns.qd[0] if isinstance(dns.qd, list) else dns.qd
    qname = question.qname.decode(errors="replace").rstrip(".").lower()
    if qname not in names:
        return None
    qtype = question.qtype
    if qtype == 1:
        answer = DNSRR(rrname=question.qname, type="A", ttl=300, rdata=forged_a)
    elif qtype == 28:
        answer = DNSRR(rrname=question.qname, type="AAAA", ttl=300, rdata=forged_aaaa)
    else:
        return None
    udp = packet[UDP]
    ip_layer = IP(src=packet.dst, dst=packet.src) if version == 4 else IPv6(
        src=packet.dst, dst=packet.src
    )
    reply = (
        ip_layer
        / UDP(sport=udp.dport, dport=udp.sport)
        / DNS(id=dns.id, qr=1, aa=0, rd=dns.rd, ra=1, qd=DNSQR(qname=question.qname, qtype=qtype),
              an=answer)
    )
    return bytes(reply)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queue", type=int, required=True)
    parser.add_argument("--name", action="append", required=True)
    parser.add_argument("--forged-a", required=True)
    parser.add_argument("--forged-aaaa", required=True)
    parser.add_argument("--hold", type=float, default=0.3)
    parser.add_argument("--duration", type=float, required=True)
    args = parser.parse_args(argv)

    import socket

    from scapy.layers import dns as _warm_up  # noqa: F401  (import before the first query)

    names = {n.rstrip(".").lower() for n in args.name}
    raw4 = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    raw6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)

    def handle(packet) -> None:
        payload = packet.get_payload()
        try:
            forged = _forge(payload, names, args.forged_a, args.forged_aaaa)
        except Exception as exc:  # noqa: BLE001  (a malformed packet must not stop the censor)
            print(f"injector: cannot parse a queued packet: {exc}", file=sys.stderr)
            forged = None
        if forged is None:
            packet.accept()
            return
        if forged[0] >> 4 == 4:
            raw4.sendto(forged, (socket.inet_ntop(socket.AF_INET, forged[16:20]), 0))
        else:
            raw6.sendto(forged, (socket.inet_ntop(socket.AF_INET6, forged[24:40]), 0))
        print(f"injector: forged a reply to {len(payload)}-byte query", file=sys.stderr, flush=True)
        # Let the real query go on later: the genuine answer loses the race.
        threading.Timer(args.hold, packet.accept).start()

    serve_queue(args.queue, handle, args.duration,
                f"injector: queue {args.queue}, names {sorted(names)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
