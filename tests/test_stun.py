"""The STUN/TURN codec and the judges of UDP flows, on constructed results (pure).

Each failure the judges give is made here from the datagrams that would cause
it; tests/net/test_udp.py makes the same ones for real over loopback.
"""

from __future__ import annotations

import base64
import struct

import pytest
from aioice import stun as aioice_stun
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from probe import stun
from probe.net import failures
from probe.net.network import (
    IcmpError,
    Timing,
    UdpReceived,
    UdpRequest,
    UdpResult,
    UdpSent,
    from_json,
    to_json,
)
from probe.report.scrub import scrub_measurement


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def transaction(request: UdpRequest, index: int = 0) -> bytes:
    return base64.b64decode(request.datagrams[index])[8:20]


def success(tid: bytes, address: str = "198.51.100.7", port: int = 40000) -> bytes:
    message = aioice_stun.Message(aioice_stun.Method.BINDING, aioice_stun.Class.RESPONSE, tid,
                                  {"XOR-MAPPED-ADDRESS": (address, port)})
    message.add_fingerprint()
    return bytes(message)


def challenge(tid: bytes, nonce: bytes = b"abc", realm: str | None = "example.org") -> bytes:
    attributes = {"ERROR-CODE": (401, "Unauthorized"), "NONCE": nonce}
    if realm is not None:
        attributes["REALM"] = realm
    message = aioice_stun.Message(aioice_stun.Method.ALLOCATE, aioice_stun.Class.ERROR, tid,
                                  attributes)
    return bytes(message)


def result(request: UdpRequest, received: list[bytes], *, sent: int | None = None,
           icmp: tuple[IcmpError, ...] = (), failure: str | None = None) -> UdpResult:
    count = len(request.datagrams) if sent is None else sent
    return UdpResult(
        request,
        tuple(UdpSent(request.schedule[i], i) for i in range(count)),
        tuple(UdpReceived(0.1 + i / 100, b64(d), len(d)) for i, d in enumerate(received)),
        icmp,
        failure if failure or received else failures.GENERIC_TIMEOUT,
        Timing(0.0, 2.0),
    )


def test_binding_request_is_what_a_stun_server_parses() -> None:
    raw = stun.binding_request()
    message = aioice_stun.parse_message(raw)  # also checks our FINGERPRINT
    assert message.message_method == aioice_stun.Method.BINDING
    assert message.message_class == aioice_stun.Class.REQUEST
    assert len(message.transaction_id) == 12
    assert stun.binding_request()[8:20] != raw[8:20]  # a fresh transaction each time
    allocate = aioice_stun.parse_message(stun.allocate_request())
    assert allocate.message_method == aioice_stun.Method.ALLOCATE
    assert allocate.attributes["REQUESTED-TRANSPORT"] == 17 << 24


def test_parse_reads_the_mapped_address_v4_and_v6() -> None:
    tid = b"t" * 12
    assert stun.parse(success(tid)).mapped_address() == "198.51.100.7:40000"
    assert stun.parse(success(tid, "2001:db8::5", 9)).mapped_address() == "[2001:db8::5]:9"


def append_attribute(raw: bytes, kind: int, value: bytes) -> bytes:
    """``raw`` (a message without FINGERPRINT) with one more attribute, length fixed."""
    body = raw[20:] + struct.pack("!HH", kind, len(value)) + value + b"\0" * (-len(value) % 4)
    return raw[:2] + struct.pack("!H", len(body)) + raw[4:20] + body


def bare_success(tid: bytes) -> bytes:
    return bytes(aioice_stun.Message(aioice_stun.Method.BINDING, aioice_stun.Class.RESPONSE, tid,
                                     {"XOR-MAPPED-ADDRESS": ("198.51.100.7", 40000)}))


def fingerprint_not_last(tid: bytes) -> bytes:
    # aioice accepts this (it checks the CRC over what precedes FINGERPRINT);
    # RFC 5389 section 15.5 says FINGERPRINT is the last attribute.
    message = aioice_stun.Message(aioice_stun.Method.BINDING, aioice_stun.Class.RESPONSE, tid,
                                  {"XOR-MAPPED-ADDRESS": ("198.51.100.7", 40000)})
    message.add_fingerprint()
    message.attributes["SOFTWARE"] = "x"
    return bytes(message)


DAMAGES = {
    "cookie": lambda raw: raw[:4] + bytes([raw[4] ^ 1]) + raw[5:],
    "length": lambda raw: raw[:3] + bytes([raw[3] + 4]) + raw[4:],
    "fingerprint": lambda raw: raw[:-1] + bytes([raw[-1] ^ 1]),
    "short": lambda raw: raw[:10],
    "rtp": lambda raw: b"\x80" + raw[1:],
    # attribute that claims more bytes than the message holds
    "truncated": lambda raw: raw[:22] + b"\x00\xff" + raw[24:],
    "fingerprint_not_last": lambda raw: fingerprint_not_last(raw[8:20]),
    # two mapped addresses in one answer: the first counts (RFC 8489 section 14),
    # aioice would keep the last
    "repeated_address": lambda raw: append_attribute(
        bare_success(raw[8:20]), 0x0020, aioice_stun.pack_xor_address(("10.0.0.1", 1), raw[8:20])),
    "unknown_method": lambda raw: raw[:1] + b"\x0b" + raw[2:],  # aioice: ValueError
    "address_family": lambda raw: append_attribute(raw[:20], 0x0020, b"\x00\x07" + b"\0" * 6),
    "realm_not_utf8": lambda raw: append_attribute(bare_success(raw[8:20]), 0x0014, b"\xff\xfe"),
    "error_code_short": lambda raw: append_attribute(raw[:20], 0x0009, b"\x00\x00"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_parse_refuses_what_is_not_stun(damage: str) -> None:
    raw = success(b"t" * 12)
    assert stun.parse(raw).mapped_address() == "198.51.100.7:40000"
    with pytest.raises(stun.StunError):
        stun.parse(DAMAGES[damage](raw))


def test_a_damaged_answer_is_not_an_answer() -> None:
    request = stun.stun_request("203.0.113.1", 3478, 2.0)
    tid = transaction(request)
    for damage, damaged in DAMAGES.items():
        check = stun.judge_stun(result(request, [damaged(success(tid))]))
        assert check.failure == failures.STUN_INVALID_RESPONSE, damage
        assert check.answered == () and check.error == stun.NOT_STUN, damage


# --------------------------------------------------------------------------- #
# Hostile input, at random: parsing never raises anything but StunError, and  #
# judging never raises nor takes a datagram for a valid answer unless it is.  #
# --------------------------------------------------------------------------- #

HYPOTHESIS = settings(max_examples=300, deadline=None,
                      suppress_health_check=[HealthCheck.too_slow])
KNOWN_ATTRIBUTES = sorted(aioice_stun.ATTRIBUTES_BY_TYPE)
TID = b"q" * 12


@st.composite
def stun_like(draw: st.DrawFn) -> bytes:
    """A datagram with a good header (cookie, length) and random attributes,
    mostly of the types aioice decodes, with random values: what drives a
    decoder into its corners."""
    attributes = draw(st.lists(st.tuples(
        st.one_of(st.sampled_from(KNOWN_ATTRIBUTES), st.integers(0, 0xFFFF)),
        st.binary(max_size=24)), max_size=6))
    method_class = draw(st.one_of(st.sampled_from([0x0101, 0x0111, 0x0113, 0x0103, 0x0001]),
                                  st.integers(0, 0x3FFF)))
    tid = draw(st.one_of(st.just(TID), st.binary(min_size=12, max_size=12)))
    raw = struct.pack("!HHI12s", method_class, 0, 0x2112A442, tid)
    for kind, value in attributes:
        raw = append_attribute(raw, kind, value)
    if draw(st.booleans()):
        # a correct FINGERPRINT (aioice counts it in the length it covers)
        raw = append_attribute(raw, 0x8028, struct.pack("!I", aioice_stun.message_fingerprint(raw)))
    return raw


def parses_or_refuses(data: bytes) -> stun.StunMessage | None:
    try:
        return stun.parse(data)
    except stun.StunError:
        return None


@HYPOTHESIS
@given(st.one_of(st.binary(max_size=120), stun_like()))
def test_parse_never_raises_but_stun_error(data: bytes) -> None:
    message = parses_or_refuses(data)
    if message is not None:
        assert message.transaction_id == data[8:20]
        message.mapped_address()  # readable, whatever it holds
        assert message.error_code is None or isinstance(message.error_code, int)


@HYPOTHESIS
@given(st.lists(st.one_of(st.binary(max_size=120), stun_like()), min_size=1, max_size=4))
def test_random_datagrams_are_never_an_answer(datagrams: list[bytes]) -> None:
    request = stun.stun_request("203.0.113.1", 3478, 2.0)
    # random transaction ids: nothing random can be an answer to ours
    assert stun.judge_stun(result(request, datagrams)).answered == ()
    assert stun.judge_turn(result(stun.turn_request("203.0.113.1", 3478, 2.0),
                                  datagrams)).answered == ()
    flow_request = flow("stun", 5)
    assert stun.judge_flow("stun", result(flow_request, datagrams)).answered == ()


def fingerprinted_challenge(tid: bytes) -> bytes:
    message = aioice_stun.Message(aioice_stun.Method.ALLOCATE, aioice_stun.Class.ERROR, tid,
                                  {"ERROR-CODE": (401, "Unauthorized"), "NONCE": b"abc",
                                   "REALM": "example.org"})
    message.add_fingerprint()
    return bytes(message)


mutations = st.lists(st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 200), st.integers(1, 255)),
    st.tuples(st.just("cut"), st.integers(0, 200), st.just(0)),
    st.tuples(st.just("append"), st.integers(1, 8), st.integers(0, 255)),
), min_size=1, max_size=4)


def mutate(raw: bytes, steps) -> bytes:
    for kind, where, value in steps:
        if kind == "flip" and raw:
            where %= len(raw)
            raw = raw[:where] + bytes([raw[where] ^ value]) + raw[where + 1:]
        elif kind == "cut":
            raw = raw[:where % (len(raw) + 1)]
        elif kind == "append":
            raw = raw + bytes([value]) * where
    return raw


@HYPOTHESIS
@given(mutations, st.booleans())
def test_a_mutated_answer_is_valid_only_if_it_is_one(steps, turn: bool) -> None:
    request = (stun.turn_request if turn else stun.stun_request)("203.0.113.1", 3478, 2.0)
    tid = transaction(request)
    original = fingerprinted_challenge(tid) if turn else success(tid)
    mutated = mutate(original, steps)
    judge = stun.judge_turn if turn else stun.judge_stun
    check = judge(result(request, [mutated]))
    assert (check.failure is None) == (check.answered == (0,))
    if check.failure is None and mutated != original:
        # FINGERPRINT (a CRC-32) catches every change of up to 32 bits and every
        # change of length: a changed answer passes only if the change also
        # took FINGERPRINT away (its type byte flipped into an unknown optional
        # attribute), leaving a well-formed answer without one, which
        # RFC 5389 allows and any forger could have sent as it is.
        message = aioice_stun.parse_message(mutated)
        assert "FINGERPRINT" not in message.attributes
        assert mutated[4:8] == original[4:8] and message.transaction_id == tid
        assert (message.message_method, message.message_class) == (
            (aioice_stun.Method.ALLOCATE, aioice_stun.Class.ERROR) if turn
            else (aioice_stun.Method.BINDING, aioice_stun.Class.RESPONSE))
    if parses_or_refuses(mutated) is None:
        # next to the genuine answer, bytes that are not STUN are an injector's
        both = judge(result(request, [original, mutated]))
        assert both.failure == failures.STUN_INJECTED
        assert both.error == stun.FORGED_NEXT_TO_VALID


def test_retransmission_schedule_follows_rfc_5389_within_the_budget() -> None:
    assert stun.retransmission_schedule(10.0) == (0.0, 0.5, 1.5, 3.5, 7.5)
    assert stun.retransmission_schedule(2.0) == (0.0, 0.5, 1.5)
    assert stun.retransmission_schedule(100.0) == (0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5)
    request = stun.stun_request("203.0.113.1", 3478, 4.0)
    assert request.stop_on_reply and len(set(request.datagrams)) == 1  # same transaction


def test_stun_success_records_the_mapped_address() -> None:
    request = stun.stun_request("203.0.113.1", 3478, 4.0)
    tid = transaction(request)
    # a duplicate answer to a retransmission says the same thing: still success
    check = stun.judge_stun(result(request, [success(tid), success(tid)], sent=2))
    assert check.failure is None
    assert check.mapped_address == "198.51.100.7:40000"
    assert check.answered == (0,)


def test_silence_and_icmp() -> None:
    request = stun.stun_request("203.0.113.1", 3478, 2.0)
    assert stun.judge_stun(result(request, [])).failure == failures.GENERIC_TIMEOUT
    icmp = (IcmpError(0.01, failures.CONNECTION_REFUSED, 3, 3, "203.0.113.1"),)
    refused = result(request, [], icmp=icmp, failure=failures.CONNECTION_REFUSED)
    assert stun.judge_stun(refused).failure == failures.CONNECTION_REFUSED


def test_two_different_answers_are_injection() -> None:
    request = stun.stun_request("203.0.113.1", 3478, 2.0)
    tid = transaction(request)
    forged = result(request, [success(tid, "10.10.34.35"), success(tid)])
    check = stun.judge_stun(forged)
    assert check.failure == failures.STUN_INJECTED and check.error == stun.CONFLICTING_ANSWERS
    garbage = result(request, [b"\x00\x01\x00\x00" + b"\0" * 16, success(tid)])
    assert stun.judge_stun(garbage).failure == failures.STUN_INJECTED


def test_answers_that_are_not_ours_are_invalid() -> None:
    request = stun.stun_request("203.0.113.1", 3478, 2.0)
    check = stun.judge_stun(result(request, [success(b"x" * 12)]))
    assert check.failure == failures.STUN_INVALID_RESPONSE
    assert check.error == stun.WRONG_TRANSACTION
    assert stun.judge_stun(result(request, [b"HTTP/1.1 400\r\n"])).error == stun.NOT_STUN
    error = aioice_stun.Message(aioice_stun.Method.BINDING, aioice_stun.Class.ERROR,
                                transaction(request), {"ERROR-CODE": (400, "Bad")})
    assert stun.judge_stun(result(request, [bytes(error)])).error == stun.ERROR_RESPONSE


def test_turn_challenge_and_its_absence() -> None:
    request = stun.turn_request("203.0.113.1", 3478, 2.0)
    tid = transaction(request)
    # two challenges to two sends carry two nonces: that is one answer, not a forgery
    ok = stun.judge_turn(result(request, [challenge(tid, b"n1"), challenge(tid, b"n2")], sent=2))
    assert ok.failure is None and ok.answered == (0,)
    bare = stun.judge_turn(result(request, [challenge(tid, realm=None)]))
    assert bare.failure == failures.TURN_NO_CHALLENGE
    assert stun.judge_turn(result(request, [success(tid)])).failure == failures.TURN_NO_CHALLENGE


def flow(payload: str, count: int = 20) -> UdpRequest:
    return stun.flow_request("203.0.113.1", 3478, payload, count, 0.05)


def stun_answers(request: UdpRequest, indices) -> list[bytes]:
    return [success(transaction(request, i)) for i in indices]


def echo_answers(request: UdpRequest, indices) -> list[bytes]:
    return [base64.b64decode(request.datagrams[i]) for i in indices]


@pytest.mark.parametrize("answers", [stun_answers, echo_answers])
def test_flow_cut_after_n_datagrams(answers) -> None:
    payload = "stun" if answers is stun_answers else "echo"
    request = flow(payload)
    check = stun.judge_flow(payload, result(request, answers(request, range(7))))
    assert check.failure == failures.UDP_FLOW_CUTOFF
    assert check.last_answered == 6 and check.answered == tuple(range(7))


@pytest.mark.parametrize("answers", [stun_answers, echo_answers])
def test_flow_with_ordinary_loss_is_answered(answers) -> None:
    payload = "stun" if answers is stun_answers else "echo"
    request = flow(payload)
    lossy = [i for i in range(20) if i not in (3, 9, 10, 18, 19)]  # last two lost too
    check = stun.judge_flow(payload, result(request, answers(request, lossy)))
    assert check.failure is None and check.answered == tuple(lossy)


def test_echo_datagrams_look_like_rtp_of_call_sizes() -> None:
    request = flow("echo", 50)
    raws = [base64.b64decode(d) for d in request.datagrams]
    assert {len(r) for r in raws} <= set(stun.ECHO_SIZES) and len({len(r) for r in raws}) > 2
    assert [struct.unpack("!H", r[2:4])[0] for r in raws] == list(range(50))
    assert all(r[0] == 0x80 for r in raws) and len(set(raws)) == 50
    noise = stun.judge_flow("echo", result(request, [b"not ours"]))
    assert noise.failure == failures.UDP_INVALID_RESPONSE


def test_flow_with_a_forged_mapping_is_injection() -> None:
    request = flow("stun", 10)
    answers = stun_answers(request, range(10))
    answers[4] = success(transaction(request, 4), "10.10.34.35")
    check = stun.judge_flow("stun", result(request, answers))
    assert check.failure == failures.STUN_INJECTED


def test_scrubbing_hides_the_volunteer_but_keeps_a_forged_mapping() -> None:
    # The reports' and traces' scrubber, with both mapped addresses taken for the
    # volunteer's (without a control nobody knows which is real): each becomes its
    # own placeholder, so a replay still sees two different answers.
    request = stun.stun_request("203.0.113.1", 3478, 2.0)
    tid = transaction(request)
    volunteer = success(tid, "203.0.113.77", 40000)
    forged = success(tid, "198.51.100.99")
    both = ["203.0.113.77", "198.51.100.99"]
    scrubbed = from_json(UdpResult, scrub_measurement(
        to_json(result(request, [volunteer, forged])), both))
    for received in scrubbed.received:
        data = base64.b64decode(received.data)
        assert bytes([203, 0, 113, 77]) not in data and bytes([198, 51, 100, 99]) not in data
    assert stun.judge_stun(scrubbed).failure == failures.STUN_INJECTED
    alone = stun.judge_stun(from_json(UdpResult, scrub_measurement(
        to_json(result(request, [volunteer])), ["203.0.113.77"])))
    assert alone.failure is None and alone.mapped_address == "0.0.0.1:40000"
