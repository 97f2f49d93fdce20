"""STUN and TURN on the wire, call-like UDP flows, and the judges of what came back; no I/O.

The probe checks a service's call infrastructure the way its call clients
start a call: an RFC 5389 Binding Request to a STUN server (answered by a
Binding Success carrying the volunteer's public address, XOR-MAPPED-ADDRESS),
a TURN Allocate without credentials (RFC 5766: a real relay answers 401
Unauthorized with REALM and NONCE; nothing is ever allocated and no credential
is ever sent), and a flow of datagrams on one 5-tuple, either a train of
Binding Requests or RTP-like datagrams of call sizes to an echo service, to see
whether a flow that starts being answered is cut after its first packets
(mobile DPI in Russia, 2025).

This module builds requests (:class:`probe.net.network.UdpRequest`) and judges
a recorded :class:`probe.net.network.UdpResult` into a
:class:`probe.observations.UdpCheck`. The STUN wire format itself (messages,
attributes, FINGERPRINT) is aioice's (``aioice.stun``): this module does not
encode or decode attributes by hand. What it adds is a client's strictness
(RFC 5389 section 7.3): the magic cookie, the length, attribute bounds and a
FINGERPRINT that must match, checked before and after aioice reads the bytes,
and every exception aioice raises on hostile bytes turned into
:class:`StunError`, the only exception :func:`parse` raises. Judging reads
everything from the result, transaction ids included (they are inside the sent
datagrams), so a replayed trace is judged exactly as the live run was.
"""

from __future__ import annotations

import base64
import binascii
import os
import random
import struct
from dataclasses import dataclass, field
from typing import Any

from aioice import stun as aioice_stun

from probe.net import failures
from probe.net.network import UdpRequest, UdpResult
from probe.observations import UdpCheck
from probe.vocabulary import Check, UdpPayload

HEADER_LENGTH = aioice_stun.HEADER_LENGTH
FINGERPRINT = 0x8028  # the attribute type, to find where FINGERPRINT sits in a message
UDP_TRANSPORT = 17  # REQUESTED-TRANSPORT: protocol number of UDP (RFC 5766 section 14.7)

# RFC 5389 section 7.2.1: the first retransmission after RTO (500 ms), each next
# one after twice the previous wait, at most Rc = 7 sends.
RTO = 0.5
MAX_SENDS = 7

# A flow is "cut" when answers stop for good: at least this many of the last
# datagrams, and at least this share of the flow, went unanswered after the
# last answer. Ordinary loss of one or two datagrams at the end is not a cut.
CUTOFF_MIN_DATAGRAMS = 3
CUTOFF_MIN_SHARE = 0.1

# Echo datagrams look like RTP (RFC 3550: version 2, dynamic payload type), as
# the media of WhatsApp, Telegram and Signal calls do, at Opus-to-video sizes.
RTP_HEADER = struct.Struct("!BBHII")
RTP_PAYLOAD_TYPE = 111  # Opus, as WebRTC offers it
ECHO_SIZES = (60, 120, 160, 200, 320, 640, 900, 1200)

# Judging detail words (UdpCheck.error), one short word each.
NO_ANSWER = "no_answer"
NOT_STUN = "not_stun"  # bytes that are not a STUN message (cookie, length, fingerprint)
WRONG_TRANSACTION = "wrong_transaction"  # a STUN message for a transaction we never sent
CONFLICTING_ANSWERS = "conflicting_answers"  # two different answers to one transaction
FORGED_NEXT_TO_VALID = "forged_next_to_valid"  # non-STUN bytes next to a valid answer
ERROR_RESPONSE = "error_response"  # a Binding answered by an error
NOT_CHALLENGED = "not_challenged"  # an Allocate answered without 401 + REALM + NONCE
NOT_ECHOED = "not_echoed"  # an echo service sent back something we did not send
CUT = "cut"


class StunError(Exception):
    """Bytes that are not a STUN message; ``reason`` is one word."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class StunMessage:
    """A parsed STUN message: aioice's method, class and decoded attributes
    (``{"XOR-MAPPED-ADDRESS": ("198.51.100.7", 40000), "REALM": "...", ...}``)."""

    message_method: aioice_stun.Method
    message_class: aioice_stun.Class
    transaction_id: bytes
    attributes: dict[str, Any] = field(default_factory=dict)

    @property
    def message_type(self) -> int:
        return int(self.message_method) | int(self.message_class)

    @property
    def error_code(self) -> int | None:
        value = self.attributes.get("ERROR-CODE")
        return value[0] if value is not None else None

    def mapped_address(self) -> str | None:
        """XOR-MAPPED-ADDRESS (or the old MAPPED-ADDRESS) as ``address:port``."""
        value = self.attributes.get("XOR-MAPPED-ADDRESS") or self.attributes.get("MAPPED-ADDRESS")
        if value is None:
            return None
        host, port = value
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _check_structure(data: bytes) -> None:
    """What a client checks before reading attributes (RFC 5389 sections 6, 7.3
    and 15), and aioice does not: the two first bits, the magic cookie, a length
    that is a multiple of 4 and matches the datagram, every attribute inside the
    message, FINGERPRINT last, and no attribute aioice reads given twice."""
    if len(data) < HEADER_LENGTH:
        raise StunError(NOT_STUN, "shorter than a STUN header")
    message_type, length, cookie = struct.unpack_from("!HHI", data)
    if message_type & 0xC000:
        raise StunError(NOT_STUN, "the two first bits are not zero")
    if cookie != aioice_stun.COOKIE:
        raise StunError(NOT_STUN, f"magic cookie {cookie:#010x}")
    if length % 4 or HEADER_LENGTH + length != len(data):
        raise StunError(NOT_STUN, f"length {length} for {len(data)} bytes")
    seen: set[int] = set()
    position = HEADER_LENGTH
    while position < len(data):
        if position + 4 > len(data):
            raise StunError(NOT_STUN, "truncated attribute")
        kind, size = struct.unpack_from("!HH", data, position)
        end = position + 4 + size + (-size % 4)
        if end > len(data):
            raise StunError(NOT_STUN, "truncated attribute")
        if kind == FINGERPRINT and end != len(data):
            raise StunError(NOT_STUN, "FINGERPRINT is not the last attribute")
        # RFC 8489 section 14: only the first of a repeated attribute counts,
        # where aioice keeps the last. A server sends each once; an answer with
        # two mapped addresses (or two error codes) says two things: not trusted.
        if kind in aioice_stun.ATTRIBUTES_BY_TYPE and kind in seen:
            raise StunError(NOT_STUN, f"attribute {kind:#06x} given twice")
        seen.add(kind)
        position = end


def parse(data: bytes) -> StunMessage:
    """A STUN message, checked as strictly as a client does (RFC 5389 section 7.3).

    Raises :class:`StunError`, and nothing else, whatever the bytes."""
    _check_structure(data)
    try:
        message = aioice_stun.parse_message(data)
    except Exception as error:
        # Hostile bytes make aioice raise ValueError (unknown method, bad address
        # family, fingerprint mismatch), UnicodeDecodeError (a REALM or reason
        # that is not UTF-8), struct.error (an attribute of the wrong size)...:
        # whatever it is, the datagram is not a STUN message we can read.
        raise StunError(NOT_STUN, f"{type(error).__name__}: {error}") from None
    if "FINGERPRINT" in message.attributes:
        # aioice checks it too; checked here so that no aioice version can let
        # a datagram with a wrong FINGERPRINT through (it is last, see above).
        expected = aioice_stun.message_fingerprint(data[: len(data) - 8])
        if message.attributes["FINGERPRINT"] != expected & 0xFFFFFFFF:
            raise StunError(NOT_STUN, "fingerprint does not match")
    return StunMessage(message.message_method, message.message_class,
                       message.transaction_id, dict(message.attributes))


def new_transaction_id() -> bytes:
    return os.urandom(12)


def _request(method: aioice_stun.Method, transaction_id: bytes | None,
             attributes: dict[str, Any]) -> bytes:
    """A request with FINGERPRINT last, as libwebrtc sends them."""
    transaction_id = transaction_id or new_transaction_id()
    if len(transaction_id) != 12:
        raise ValueError("a STUN transaction id is 96 bits")
    message = aioice_stun.Message(method, aioice_stun.Class.REQUEST, transaction_id, attributes)
    # What Message.add_fingerprint does, which aioice only has since 0.10.
    message.attributes["FINGERPRINT"] = aioice_stun.message_fingerprint(bytes(message))
    return bytes(message)


def binding_request(transaction_id: bytes | None = None) -> bytes:
    """A Binding Request, as a WebRTC client sends to a STUN server."""
    return _request(aioice_stun.Method.BINDING, transaction_id, {})


def allocate_request(transaction_id: bytes | None = None) -> bytes:
    """A TURN Allocate for a UDP relay, without credentials: a TURN server
    challenges it (401) and allocates nothing."""
    # REQUESTED-TRANSPORT is the protocol number then 3 reserved bytes; aioice
    # packs the attribute as one 32-bit number.
    return _request(aioice_stun.Method.ALLOCATE, transaction_id,
                    {"REQUESTED-TRANSPORT": UDP_TRANSPORT << 24})


def echo_datagram(index: int, ssrc: int, rng: random.Random | None = None) -> bytes:
    """An RTP-like datagram whose sequence number is ``index`` and SSRC ``ssrc``,
    of a call-like size, filled with random-looking bytes."""
    rng = rng or random.Random()
    size = rng.choice(ECHO_SIZES)
    header = RTP_HEADER.pack(0x80, RTP_PAYLOAD_TYPE, index & 0xFFFF, index * 960, ssrc)
    return header + rng.randbytes(size - len(header))


def retransmission_schedule(budget: float, rto: float = RTO, max_sends: int = MAX_SENDS) -> (
    tuple[float, ...]
):
    """When to send (and resend) one STUN request: 0, 0.5, 1.5, 3.5, 7.5, ... s,
    only the sends that start before ``budget`` seconds."""
    times: list[float] = []
    t, wait = 0.0, rto
    while len(times) < max_sends and t < budget:
        times.append(t)
        t, wait = t + wait, wait * 2
    return tuple(times) or (0.0,)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def stun_request(address: str, port: int, budget: float, linger: float = 1.0) -> UdpRequest:
    """One Binding Request retransmitted on the RFC schedule until anything
    arrives; the socket then listens ``linger`` s more for a second (forged) answer."""
    schedule = retransmission_schedule(budget)
    return UdpRequest(address, port, (_b64(binding_request()),) * len(schedule), schedule,
                      stop_on_reply=True, linger=linger)


def turn_request(address: str, port: int, budget: float, linger: float = 1.0) -> UdpRequest:
    """One TURN Allocate without credentials, retransmitted like a Binding Request."""
    schedule = retransmission_schedule(budget)
    return UdpRequest(address, port, (_b64(allocate_request()),) * len(schedule), schedule,
                      stop_on_reply=True, linger=linger)


def flow_request(
    address: str, port: int, payload: str, count: int, interval: float, linger: float = 1.0
) -> UdpRequest:
    """``count`` datagrams, one every ``interval`` s, each answered on its own:
    Binding Requests (``stun``) or RTP-like datagrams (``echo``)."""
    if payload == UdpPayload.STUN:
        datagrams = tuple(_b64(binding_request()) for _ in range(count))
    elif payload == UdpPayload.ECHO:
        rng = random.Random(os.urandom(8))
        ssrc = rng.getrandbits(32)
        datagrams = tuple(_b64(echo_datagram(i, ssrc, rng)) for i in range(count))
    else:
        raise ValueError(f"unknown udp payload {payload!r} (stun or echo)")
    schedule = tuple(round(i * interval, 6) for i in range(count))
    return UdpRequest(address, port, datagrams, schedule, stop_on_reply=False, linger=linger,
                      max_received=max(256, 2 * count))


# --------------------------------------------------------------------------- #
# Judges                                                                       #
# --------------------------------------------------------------------------- #


def _decode(data: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return b""


def _silent(check: str, result: UdpResult) -> UdpCheck:
    """Nothing came back: the network's own failure (an ICMP error, a send that
    failed) or a timeout."""
    return UdpCheck(check, result, (), result.failure or failures.GENERIC_TIMEOUT, error=NO_ANSWER)


@dataclass
class _Sorted:
    """The received datagrams of a STUN exchange, sorted by what they are."""

    ours: dict[bytes, list[StunMessage]]  # transaction id -> answers to it
    foreign: int = 0  # STUN messages for a transaction we never sent
    garbage: int = 0  # bytes that are not STUN at all
    truncated: int = 0  # datagrams cut to max_bytes: unjudgeable, never "garbage"


def _sort(result: UdpResult) -> _Sorted:
    transactions = {}
    for data in result.request.datagrams:
        raw = _decode(data)
        if len(raw) >= HEADER_LENGTH:
            transactions[raw[8:20]] = True
    sorted_ = _Sorted({tid: [] for tid in transactions})
    for received in result.received:
        raw = _decode(received.data)
        if received.length > len(raw):
            sorted_.truncated += 1
            continue
        try:
            message = parse(raw)
        except StunError:
            sorted_.garbage += 1
            continue
        if (message.transaction_id not in sorted_.ours
                or message.message_class == aioice_stun.Class.REQUEST):
            sorted_.foreign += 1
            continue
        sorted_.ours[message.transaction_id].append(message)
    return sorted_


def _meaning(message: StunMessage) -> tuple[object, ...]:
    """What an answer says, ignoring what legitimately varies between two
    answers to retransmissions (a TURN server's fresh NONCE, SOFTWARE)."""
    return (message.message_type, message.error_code, message.mapped_address(),
            message.attributes.get("REALM"))


def _valid_binding(message: StunMessage) -> bool:
    return (message.message_method == aioice_stun.Method.BINDING
            and message.message_class == aioice_stun.Class.RESPONSE
            and message.mapped_address() is not None)


def _valid_challenge(message: StunMessage) -> bool:
    return (message.message_method == aioice_stun.Method.ALLOCATE
            and message.message_class == aioice_stun.Class.ERROR
            and message.error_code == 401
            and bool(message.attributes.get("REALM"))
            and bool(message.attributes.get("NONCE")))


def _judge_transaction(check: str, result: UdpResult, *, turn: bool) -> UdpCheck:
    if not result.received:
        return _silent(check, result)
    sorted_ = _sort(result)
    answers = [m for messages in sorted_.ours.values() for m in messages]
    if not answers:
        # Something came back, but nothing about our transaction.
        error = WRONG_TRANSACTION if sorted_.foreign else NOT_STUN
        return UdpCheck(check, result, (), failures.STUN_INVALID_RESPONSE, error=error)
    if len({_meaning(m) for m in answers}) > 1:
        return UdpCheck(check, result, (), failures.STUN_INJECTED, error=CONFLICTING_ANSWERS)
    answer = answers[0]
    valid = _valid_challenge(answer) if turn else _valid_binding(answer)
    if valid and sorted_.garbage:
        # A STUN server never sends non-STUN bytes on a STUN transaction: a
        # second, malformed answer racing the real one is an injector's.
        return UdpCheck(check, result, (), failures.STUN_INJECTED, error=FORGED_NEXT_TO_VALID)
    mapped = answer.mapped_address()
    if turn:
        if valid:
            return UdpCheck(check, result, (0,), None)
        return UdpCheck(check, result, (), failures.TURN_NO_CHALLENGE, mapped, NOT_CHALLENGED)
    if valid:
        return UdpCheck(check, result, (0,), None, mapped)
    error = ERROR_RESPONSE if answer.message_class == aioice_stun.Class.ERROR else NOT_STUN
    return UdpCheck(check, result, (), failures.STUN_INVALID_RESPONSE, mapped, error)


def judge_stun(result: UdpResult) -> UdpCheck:
    """A Binding Request: one valid Binding Success (its XOR-MAPPED-ADDRESS
    recorded), and no second answer that says something else."""
    return _judge_transaction(Check.STUN, result, turn=False)


def judge_turn(result: UdpResult) -> UdpCheck:
    """A TURN Allocate without credentials: a 401 with REALM and NONCE proves
    that a TURN server answered."""
    return _judge_transaction(Check.TURN, result, turn=True)


def _sent_indices(result: UdpResult) -> list[int]:
    return sorted({s.index for s in result.sent if s.failure is None})


def _cut(answered: list[int], sent: list[int]) -> bool:
    """Answers stopped for good: a clear unanswered tail after the last answer."""
    if not answered:
        return False
    tail = [i for i in sent if i > answered[-1]]
    return len(tail) >= max(CUTOFF_MIN_DATAGRAMS, CUTOFF_MIN_SHARE * len(sent))


def judge_flow(payload: str, result: UdpResult) -> UdpCheck:
    """A flow of datagrams answered one by one. Random loss with answers
    continuing is success; answers that stop for good are ``udp_flow_cutoff``
    (the last answered index is recorded)."""
    if not result.received:
        return _silent(Check.UDP, result)
    if payload == UdpPayload.STUN:
        sorted_ = _sort(result)
        order: dict[bytes, int] = {}
        for index, data in enumerate(result.request.datagrams):
            raw = _decode(data)
            order.setdefault(raw[8:20], index)
        answers = [m for messages in sorted_.ours.values() for m in messages]
        mapped = {m.mapped_address() for m in answers if _valid_binding(m)}
        if len(mapped) > 1 or any(
            len({_meaning(m) for m in messages}) > 1 for messages in sorted_.ours.values()
        ):
            # A relay maps one 5-tuple to one public address for the whole flow.
            return UdpCheck(Check.UDP, result, (), failures.STUN_INJECTED,
                            error=CONFLICTING_ANSWERS)
        answered = sorted(order[tid] for tid, messages in sorted_.ours.items()
                          if any(_valid_binding(m) for m in messages))
        mapped_address = next(iter(mapped), None)
        invalid_error = WRONG_TRANSACTION if sorted_.foreign else NOT_STUN
        invalid_failure = failures.STUN_INVALID_RESPONSE
    elif payload == UdpPayload.ECHO:
        sent = {_decode(d): i for i, d in enumerate(result.request.datagrams)}
        found = set()
        for received in result.received:
            raw = _decode(received.data)
            if received.length == len(raw) and raw in sent:
                found.add(sent[raw])
            elif received.length > len(raw):
                # Cut to max_bytes: match on what was kept.
                found.update(i for d, i in sent.items() if d.startswith(raw))
        answered = sorted(found)
        mapped_address = None
        invalid_error, invalid_failure = NOT_ECHOED, failures.UDP_INVALID_RESPONSE
    else:
        raise ValueError(f"unknown udp payload {payload!r} (stun or echo)")
    if not answered:
        return UdpCheck(Check.UDP, result, (), invalid_failure, error=invalid_error)
    if _cut(answered, _sent_indices(result)):
        return UdpCheck(Check.UDP, result, tuple(answered), failures.UDP_FLOW_CUTOFF,
                        mapped_address, CUT)
    return UdpCheck(Check.UDP, result, tuple(answered), None, mapped_address)
