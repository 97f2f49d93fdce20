"""Live DNS operations: the system resolver and direct queries over UDP and TCP.

Over UDP we keep listening for ``linger`` seconds after the first reply and keep
every reply that arrives: on-path injectors (the Great Firewall, Iran) race the
real resolver, so two different replies to one query are the evidence. While no
reply at all has arrived, a UDP query is sent again (same ID) at a third and two
thirds of the timeout, as stub resolvers retransmit. Replies
are kept raw (base64) next to their parsed answers. Nothing here judges whether
an answer is a lie; that is analysis.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import struct
from collections.abc import Callable

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype

from probe.net import failures
from probe.net.network import (
    DnsAnswer,
    DnsExchange,
    DnsQuery,
    DnsReply,
    GetaddrinfoResult,
    Timing,
    first_answer,
)

MAX_REPLIES = 16  # a flood of valid replies to one query is recorded only this far
# Replies that do not parse or answer another query are evidence too, but an
# injector sending many of them must neither fill the record nor end the
# listening window before the resolver's own answer arrives.
MAX_INVALID_REPLIES = 8
MAX_ANSWERS = 64  # per reply: more than any service publishes (the raw message keeps all)
MAX_QUEUED_DATAGRAMS = 64  # datagrams waiting to be parsed; a flood beyond is dropped
MAX_TCP_REPLY = 65535
UDP_TRANSMISSIONS = 3  # a query and two retransmissions within the timeout


async def getaddrinfo(host: str, timeout: float, clock) -> GetaddrinfoResult:
    loop = asyncio.get_running_loop()
    t0 = clock()
    addresses: list[str] = []
    failure = None
    try:
        async with asyncio.timeout(timeout):
            infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        for family, _, _, _, sockaddr in infos:
            address = sockaddr[0]
            if family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, str) \
                    and address not in addresses:
                addresses.append(address)
    except Exception as exc:  # every failure becomes a failure string
        failure = failures.classify(exc)
    return GetaddrinfoResult(host, tuple(addresses), failure, Timing(t0, clock()))


def build_query(query: DnsQuery) -> dns.message.Message:
    message = dns.message.make_query(query.qname, query.qtype)
    message.flags |= dns.flags.RD
    return message


def parse_reply(wire: bytes, sent: dns.message.Message, t: float) -> DnsReply:
    raw = base64.b64encode(wire).decode()
    try:
        reply = dns.message.from_wire(wire, ignore_trailing=True)
    except Exception:  # hostile bytes: compression loops, truncation, garbage
        return DnsReply(t, "", (), raw, failures.DNS_INVALID_REPLY)
    if reply.id != sent.id or reply.question != sent.question:
        return DnsReply(t, "", (), raw, failures.DNS_WRONG_QUERY)
    answers: list[DnsAnswer] = []
    for rrset in reply.answer:
        if rrset.rdclass != dns.rdataclass.IN:
            # A stub ignores records of another class; dnspython parses an "A" in
            # class CH as generic data with no address (found by a property test).
            continue
        for rr in rrset:
            if len(answers) >= MAX_ANSWERS:
                break
            if rr.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                value = rr.address
            elif rr.rdtype == dns.rdatatype.CNAME:
                value = rr.target.to_text()
            else:
                value = rr.to_text()
            answers.append(
                DnsAnswer(dns.rdatatype.to_text(rr.rdtype), rrset.name.to_text(), value, rrset.ttl)
            )
    return DnsReply(t, dns.rcode.to_text(reply.rcode()), tuple(answers), raw)


def exchange_failure(query: DnsQuery, replies: tuple[DnsReply, ...]) -> str | None:
    """What a stub resolver would report: judged on the first parseable reply."""
    for reply in replies:
        if reply.failure:
            continue
        failure = failures.dns_rcode_failure(reply.rcode)
        if failure:
            return failure
        if not any(a.rrtype == query.qtype for a in reply.answers):
            return failures.DNS_TRUNCATED if _truncated(reply) else failures.DNS_NO_ANSWER
        return None
    if replies:
        return replies[0].failure
    return None


def _truncated(reply: DnsReply) -> bool:
    """The TC bit of the reply's header (RFC 1035 4.1.1)."""
    header = base64.b64decode(reply.raw)[:4]
    return len(header) == 4 and bool(header[2] & 0x02)


class _Collector(asyncio.DatagramProtocol):
    """Queues what the connected socket receives. The socket is connected, so the
    kernel already dropped datagrams from any other source (udp(7)); the queue is
    bounded so a flood costs no memory while we parse."""

    def __init__(self) -> None:
        # a datagram, or the error (an ICMP unreachable) the socket reported instead
        self.datagrams: asyncio.Queue[bytes | BaseException] = asyncio.Queue(
            MAX_QUEUED_DATAGRAMS
        )

    def datagram_received(self, data: bytes, addr) -> None:  # noqa: ANN001
        if not self.datagrams.full():
            self.datagrams.put_nowait(data)

    def error_received(self, exc: Exception) -> None:
        if not self.datagrams.full():
            self.datagrams.put_nowait(exc)


async def udp_exchange(
    query: DnsQuery, timeout: float, linger: float, clock,
    on_first: Callable[[DnsExchange], None] | None = None,
) -> DnsExchange:
    loop = asyncio.get_running_loop()
    sent = build_query(query)
    t0 = clock()
    replies: list[DnsReply] = []
    failure: str | None = None
    transport = None
    try:
        async with asyncio.timeout(timeout):
            transport, collector = await loop.create_datagram_endpoint(
                _Collector, remote_addr=(query.resolver, query.port)
            )
            wire = sent.to_wire()
            transport.sendto(wire)
            # While nothing at all has come back, the same query (same ID) is sent again
            # at a third and two thirds of the timeout, as stub resolvers retransmit
            # (RFC 1035 4.2.1; glibc's `attempts`): one datagram lost on a lossy link
            # must not read as a resolver that never answers.
            resends = [loop.time() + timeout * k / (UDP_TRANSMISSIONS)
                       for k in range(1, UDP_TRANSMISSIONS)]
            deadline = None
            valid = invalid = 0
            while valid < MAX_REPLIES:
                if deadline is not None:
                    wait = max(0.0, deadline - loop.time())
                elif resends:
                    wait = max(0.0, resends[0] - loop.time())
                else:
                    wait = None
                try:
                    received = await asyncio.wait_for(collector.datagrams.get(), wait)
                except TimeoutError:
                    if deadline is None and resends:
                        resends.pop(0)
                        if not replies:  # datagrams came back: the path is not losing them
                            transport.sendto(wire)
                        continue
                    break  # the linger window after the first valid reply is over
                if isinstance(received, BaseException):
                    if not replies:
                        raise received
                    continue
                reply = parse_reply(received, sent, clock())
                if reply.failure is None:
                    valid += 1
                    if deadline is None:
                        deadline = loop.time() + linger
                        replies.append(reply)
                        first = first_answer(DnsExchange(query, tuple(replies), None,
                                                         Timing(t0, t0)))
                        if on_first is not None and first is not None:
                            on_first(first)  # keep listening: the runner may start
                        continue
                elif invalid < MAX_INVALID_REPLIES:
                    invalid += 1
                else:
                    continue  # enough of those recorded: keep listening for the answer
                replies.append(reply)
    except Exception as exc:
        if not any(r.failure is None for r in replies):
            failure = failures.classify(exc)
    finally:
        if transport is not None:
            transport.close()
    result = tuple(replies)
    if failure is None:
        failure = exchange_failure(query, result)
        if failure is None and not any(r.failure is None for r in result):
            failure = failures.GENERIC_TIMEOUT
    return DnsExchange(query, result, failure, Timing(t0, clock()))


async def tcp_exchange(query: DnsQuery, timeout: float, clock) -> DnsExchange:
    sent = build_query(query)
    t0 = clock()
    replies: list[DnsReply] = []
    failure: str | None = None
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(query.resolver, query.port)
            wire = sent.to_wire()
            writer.write(struct.pack("!H", len(wire)) + wire)
            await writer.drain()
            (length,) = struct.unpack("!H", await reader.readexactly(2))
            data = await reader.readexactly(min(length, MAX_TCP_REPLY))
            replies.append(parse_reply(data, sent, clock()))
    except Exception as exc:
        failure = failures.classify(exc)
    finally:
        if writer is not None:
            writer.close()
    result = tuple(replies)
    if failure is None:
        failure = exchange_failure(query, result)
    return DnsExchange(query, result, failure, Timing(t0, clock()))


def system_nameserver() -> tuple[str, int] | None:
    """The first nameserver the system is configured with (read, never queried)."""
    import dns.resolver

    try:
        resolver = dns.resolver.Resolver(configure=True)
    except Exception:  # no resolv.conf, unreadable registry...
        return None
    for nameserver in resolver.nameservers:
        if isinstance(nameserver, str):
            return nameserver, 53
    return None
