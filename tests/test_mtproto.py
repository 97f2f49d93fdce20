"""Tests of probe.mtproto: constants against Telegram's published sample, round
trips through both transports, every failure reason, and fuzzing."""

from __future__ import annotations

import struct
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from probe import mtproto
from probe.mtproto import MtprotoError

# The auth key sample of https://core.telegram.org/mtproto/samples-auth_key.
SAMPLE_NONCE = bytes.fromhex("79F0AFB50252E5FC96924BFCECDA4F05")
SAMPLE_MSG_ID = int.from_bytes(bytes.fromhex("60970500EBE57767"), "little")
SAMPLE_REQUEST = bytes.fromhex(
    "0000000000000000"  # auth_key_id
    "60970500EBE57767"  # message_id
    "14000000"  # message_data_length
    "F18E7EBE"  # req_pq_multi
    "79F0AFB50252E5FC96924BFCECDA4F05"  # nonce
)
SERVER_NONCE = bytes(range(16))
PQ = bytes.fromhex("17ED48941A08F981")
FINGERPRINTS = (0xC3B42B026CE86B21, 0x0BC35F3509F7B7A5, 0x15AE5FA8B5529542)


def reply(transport: str, nonce: bytes = SAMPLE_NONCE, **kwargs: object) -> bytes:
    message = mtproto.res_pq(nonce, SERVER_NONCE, PQ, FINGERPRINTS, **kwargs)  # type: ignore[arg-type]
    return mtproto.frame(message, transport, initial=False)


def test_req_pq_multi_matches_telegram_sample() -> None:
    assert mtproto.req_pq_multi(SAMPLE_NONCE, msg_id=SAMPLE_MSG_ID) == SAMPLE_REQUEST


def test_req_pq_multi_has_a_valid_client_message_id() -> None:
    message = mtproto.req_pq_multi(mtproto.new_nonce())
    auth_key_id, msg_id, length = struct.unpack_from("<qQi", message)
    assert auth_key_id == 0 and length == 20 and len(message) == 40
    assert msg_id % 4 == 0
    assert abs((msg_id >> 32) - time.time()) < 5
    assert mtproto.parse_req_pq_multi(message) == message[24:40]


def test_res_pq_size_matches_telegram_sample() -> None:
    # The sample's resPQ has message_length 0x50 with three fingerprints.
    message = mtproto.res_pq(SAMPLE_NONCE, SERVER_NONCE, PQ, FINGERPRINTS)
    assert struct.unpack_from("<i", message, 16)[0] == 0x50
    assert message[20:24] == bytes.fromhex("63241605")
    assert struct.unpack_from("<Q", message, 8)[0] % 4 == 1  # a server response id


def test_new_nonce_is_random_16_bytes() -> None:
    assert len(mtproto.new_nonce()) == 16
    assert mtproto.new_nonce() != mtproto.new_nonce()


@pytest.mark.parametrize("transport", mtproto.TRANSPORTS)
def test_round_trip(transport: str) -> None:
    result = mtproto.parse_res_pq(reply(transport) + b"trailing", transport, SAMPLE_NONCE)
    assert result.nonce == SAMPLE_NONCE
    assert result.server_nonce == SERVER_NONCE
    assert result.pq == PQ
    assert result.fingerprints == FINGERPRINTS


def test_framing() -> None:
    payload = bytes(40)
    assert mtproto.frame_intermediate(payload) == b"\xee\xee\xee\xee" + b"\x28\0\0\0" + payload
    assert mtproto.frame_intermediate(payload, initial=False) == b"\x28\0\0\0" + payload
    assert mtproto.frame_abridged(payload) == b"\xef\x0a" + payload
    big = bytes(4 * 0x7F)
    assert mtproto.frame_abridged(big, initial=False) == b"\x7f\x7f\x00\x00" + big
    with pytest.raises(ValueError):
        mtproto.frame_abridged(b"abc")


def test_long_pq_uses_the_long_tl_bytes_form() -> None:
    message = mtproto.res_pq(SAMPLE_NONCE, SERVER_NONCE, b"x" * 300, (), msg_id=1)
    assert message[20 + 36] == 0xFE
    framed = mtproto.frame_abridged(message, initial=False)
    parsed = mtproto.parse_res_pq(framed, "abridged", SAMPLE_NONCE)
    assert parsed.pq == b"x" * 300 and parsed.fingerprints == ()


def test_unframe_client_packets() -> None:
    request = mtproto.req_pq_multi(SAMPLE_NONCE)
    stream = mtproto.frame_abridged(request)[1:] + b"\x01"
    payload, used = mtproto.unframe(stream, "abridged")
    assert payload == request and used == len(stream) - 1


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "truncated"),
        (b"\x50\x00", "truncated"),
        (reply("intermediate")[:-1], "truncated"),
        (b"\xff\xff\x00\x00" + bytes(64), "oversized"),
        (b"HTTP/1.1 403 Forbidden\r\n\r\n", "garbage"),
        (mtproto.frame_intermediate(bytes(12), initial=False), "garbage"),
        (mtproto.frame_intermediate(struct.pack("<qQi", 7, 1, 0), initial=False), "garbage"),
        (mtproto.frame_intermediate(struct.pack("<qQi", 0, 1, 9), initial=False), "garbage"),
        (mtproto.frame_intermediate(mtproto.transport_error(-404), initial=False), "not_res_pq"),
        (
            mtproto.frame_intermediate(mtproto.req_pq_multi(SAMPLE_NONCE), initial=False),
            "not_res_pq",
        ),
        (reply("intermediate", nonce=bytes(16)), "nonce_mismatch"),
    ],
)
def test_each_failure_reason(data: bytes, reason: str) -> None:
    with pytest.raises(MtprotoError) as caught:
        mtproto.parse_res_pq(data, "intermediate", SAMPLE_NONCE)
    assert caught.value.reason == reason


def test_broken_fingerprint_vector_is_garbage() -> None:
    message = bytearray(mtproto.res_pq(SAMPLE_NONCE, SERVER_NONCE, PQ, FINGERPRINTS))
    message[-28:-24] = struct.pack("<i", 1000)  # a count far beyond the bytes that follow
    with pytest.raises(MtprotoError) as caught:
        mtproto.parse_res_pq(
            mtproto.frame_abridged(bytes(message), initial=False), "abridged", SAMPLE_NONCE
        )
    assert caught.value.reason == "garbage"


def test_unknown_transport_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        mtproto.frame(b"", "obfuscated2")


@given(st.binary(max_size=600), st.sampled_from(mtproto.TRANSPORTS))
def test_arbitrary_bytes_parse_or_raise_mtproto_error(data: bytes, transport: str) -> None:
    try:
        result = mtproto.parse_res_pq(data, transport, SAMPLE_NONCE)
    except MtprotoError as exc:
        assert exc.reason in {"truncated", "not_res_pq", "nonce_mismatch", "garbage", "oversized"}
    else:
        assert result.nonce == SAMPLE_NONCE


@given(st.binary(max_size=120), st.integers(0, 119), st.sampled_from(mtproto.TRANSPORTS))
def test_corrupted_replies_parse_or_raise_mtproto_error(
    noise: bytes, position: int, transport: str
) -> None:
    data = bytearray(reply(transport))
    data[position : position + len(noise)] = noise
    try:
        mtproto.parse_res_pq(bytes(data), transport, SAMPLE_NONCE)
    except MtprotoError:
        pass


@given(st.binary(max_size=200))
def test_arbitrary_client_messages_parse_or_raise_mtproto_error(data: bytes) -> None:
    try:
        assert len(mtproto.parse_req_pq_multi(data)) == 16
    except MtprotoError:
        pass
