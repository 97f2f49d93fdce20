"""Canonicalisation, key files and the signer (probe.report.canonical, keys, signing)."""

from __future__ import annotations

import math
import os
import stat
import threading

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from probe.report import keys
from probe.report.canonical import (
    CanonicalizationError,
    JsonSyntaxError,
    canonical_bytes,
    parse_json_strict,
)
from probe.report.keys import (
    KeyFileError,
    SigningKey,
    create_key,
    fingerprint,
    generate_ephemeral,
    load_key,
    load_or_create_control_key,
    load_or_create_key,
)
from probe.report.signing import (
    CONTROL_RESPONSE_CONTEXT,
    REPORT_LINE_CONTEXT,
    ReportSigner,
    SignatureError,
    SigningError,
    attest_control_response,
    line_hash,
    sign_object,
    verify_object,
    without_value,
)

# RFC 8032 section 7.1, test 1.
RFC8032_SECRET = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC8032_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")


def rfc8032_key() -> SigningKey:
    return SigningKey(Ed25519PrivateKey.from_private_bytes(RFC8032_SECRET))


# --------------------------------------------------------------------------- #
# canonical                                                                    #
# --------------------------------------------------------------------------- #


def test_canonical_sorts_members_by_utf16_code_units_rfc8785_3_2_3():
    # The example of RFC 8785 section 3.2.3: U+1F600 sorts before U+FB33 in
    # UTF-16 (surrogate 0xD83D < 0xFB33) although it is after it in code points.
    obj = {
        "\u20ac": "Euro Sign",
        "\r": "Carriage Return",
        "\ufb33": "Hebrew Letter Dalet With Dagesh",
        "1": "One",
        "\U0001f600": "Emoji: Grinning Face",
        "\u0080": "Control",
        "\u00f6": "Latin Small Letter O With Diaeresis",
    }
    text = canonical_bytes(obj).decode("utf-8")
    order = ["\\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"]
    positions = [text.index(f'"{key}":') for key in order]
    assert positions == sorted(positions)


@pytest.mark.parametrize(
    ("number", "expected"),
    [
        (0.0, b"0"),
        (-0.0, b"0"),
        (1.0, b"1"),
        (4.50, b"4.5"),
        (2e-3, b"0.002"),
        (1e-7, b"1e-7"),
        (1e21, b"1e+21"),
        (1e20, b"100000000000000000000"),
        (1e30, b"1e+30"),
        (0.000001, b"0.000001"),
        (333333333.33333329, b"333333333.3333333"),
        (-1.7976931348623157e308, b"-1.7976931348623157e+308"),
        (5e-324, b"5e-324"),
        (9007199254740991, b"9007199254740991"),
    ],
)
def test_canonical_numbers_follow_ecmascript(number, expected):
    assert canonical_bytes(number) == expected


def test_canonical_strings_escape_only_what_jcs_requires():
    text = 'a"b\\c\n\t\x01\x7f\u2028\u00e9\U0001f600/'
    assert canonical_bytes(text) == (
        '"a\\"b\\\\c\\n\\t\\u0001\x7f\u2028\u00e9\U0001f600/"'.encode()
    )


@pytest.mark.parametrize(
    ("obj", "path", "fragment"),
    [
        ({"test_keys": {"queries": [{"t": 1.0}, {"t": math.nan}]}}, "test_keys.queries[1].t",
         "finite"),
        ({"a": [float("inf")]}, "a[0]", "finite"),
        ({"t_ns": 2**53}, "t_ns", "store it as a string"),
        ({"n": -(2**60)}, "n", "outside"),
        ({"s": "\ud800"}, "s", "surrogate"),
        ({"x": {1: "a"}}, "x", "not a string"),
        ({"x": {1, 2}}, "x", "set"),
        ({"x": b"bytes"}, "x", "bytes"),
    ],
)
def test_canonical_errors_name_the_field(obj, path, fragment):
    with pytest.raises(CanonicalizationError) as caught:
        canonical_bytes(obj)
    assert caught.value.path == path
    assert fragment in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_canonical_deep_nesting_is_a_typed_error():
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(CanonicalizationError):
        canonical_bytes(deep)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b'{"a":1,"a":2}', "duplicate"),
        (b'{"a":NaN}', "NaN"),
        (b'{"a":-Infinity}', "Infinity"),
        (b'{"a":1e400}', "too large"),
        (b'{"a":"\xff"}', "UTF-8"),
        (b'{"a":', "column"),
        (b"[" * 100_000, "deep"),
    ],
)
def test_strict_parser_rejects(data, fragment):
    with pytest.raises(JsonSyntaxError) as caught:
        parse_json_strict(data)
    assert fragment in str(caught.value)


# --------------------------------------------------------------------------- #
# keys                                                                         #
# --------------------------------------------------------------------------- #


def test_key_id_is_sha256_prefix_of_raw_public_key():
    key = rfc8032_key()
    assert key.public_key_raw == RFC8032_PUBLIC
    assert key.key_id == "21fe31dfa154a261"
    assert fingerprint(RFC8032_PUBLIC) == fingerprint(key.public_key_b64) == key.key_id
    assert key.public_key_b64 == "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="


def test_key_created_on_first_use_owner_only(tmp_path):
    path = tmp_path / "conf" / "probe" / "probe-key.pem"
    key = load_or_create_key(path)
    assert key.path == path and not key.ephemeral
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    again = load_or_create_key(path)
    assert again.public_key_raw == key.public_key_raw
    assert [p.name for p in path.parent.iterdir()] == ["probe-key.pem"]  # no temp file left


def test_default_locations_are_in_the_user_config_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    probe_key = load_or_create_key()
    control_key = load_or_create_control_key()
    assert probe_key.path == tmp_path / "probe" / "probe-key.pem"
    assert control_key.path == tmp_path / "probe" / "control-key.pem"
    assert probe_key.key_id != control_key.key_id
    assert stat.S_IMODE((tmp_path / "probe").stat().st_mode) == 0o700
    assert stat.S_IMODE(control_key.path.stat().st_mode) == 0o600


def test_key_readable_by_others_is_refused(tmp_path):
    path = tmp_path / "key.pem"
    load_or_create_key(path)
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_key(path)


def test_bad_key_files_are_refused_with_a_reason(tmp_path):
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"not a key")
    os.chmod(garbage, 0o600)
    with pytest.raises(KeyFileError, match="not an unencrypted PEM"):
        load_key(garbage)
    other = tmp_path / "ec.pem"
    other.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    os.chmod(other, 0o600)
    with pytest.raises(KeyFileError, match="not an Ed25519 key"):
        load_key(other)
    with pytest.raises(KeyFileError, match="probe keygen"):
        load_key(tmp_path / "missing.pem")


def test_keygen_never_overwrites(tmp_path):
    path = tmp_path / "k.pem"
    first = create_key(path)
    with pytest.raises(KeyFileError, match="already exists"):
        create_key(path)
    assert load_key(path).public_key_raw == first.public_key_raw


def test_concurrent_first_use_agrees_on_one_key(tmp_path):
    path = tmp_path / "shared.pem"
    results: list[bytes] = []
    barrier = threading.Barrier(8)

    def worker():
        barrier.wait()
        results.append(load_or_create_key(path).public_key_raw)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(results) == 8 and len(set(results)) == 1
    assert results[0] == load_key(path).public_key_raw


def test_ephemeral_key_stays_in_memory(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    key = generate_ephemeral()
    assert key.ephemeral and key.path is None
    assert generate_ephemeral().key_id != key.key_id
    assert list(tmp_path.iterdir()) == []
    assert "ephemeral" in repr(key) and "PRIVATE" not in repr(key)


def test_decoders_reject_non_canonical_base64():
    canonical = keys.b64encode(bytes(64))
    assert canonical.endswith("==")
    sloppy = canonical[:-3] + "B=="  # same 64 bytes in lenient decoders
    with pytest.raises(keys.KeyFormatError, match="canonical"):
        keys.b64decode_strict(sloppy, 64, "signature value")


# --------------------------------------------------------------------------- #
# signer                                                                       #
# --------------------------------------------------------------------------- #


def test_signature_object_shape_and_chain():
    key = rfc8032_key()
    signer = ReportSigner(key, run_id="000102030405060708090a0b0c0d0e0f")
    measurement = {"measurement_uid": "m1", "test_keys": {"t": 0.5}}
    first = signer.sign(measurement)
    second = signer.sign_last({"measurement_uid": "m2"})
    assert "signature" not in measurement  # the caller's dict is not changed
    signature = first.record["signature"]
    assert set(signature) == {"version", "alg", "key_id", "public_key", "run", "seq", "prev",
                              "value"}
    assert signature["version"] == 1 and signature["alg"] == "ed25519"
    assert signature["key_id"] == key.key_id and signature["public_key"] == key.public_key_b64
    assert signature["run"] == "000102030405060708090a0b0c0d0e0f"
    assert (signature["seq"], signature["prev"]) == (0, None)
    assert second.record["signature"]["prev"] == line_hash(first.line) == first.line_hash
    assert second.record["signature"]["seq"] == 1
    # The last measurement carries the seal, inside what is signed; it is a
    # measurement like the others (no line of the report is anything else).
    assert second.record["signature"]["seal"] == {"measurements": 2, "interrupted": False}
    assert set(second.record) == {"measurement_uid", "signature"}
    for signed in (first, second):
        assert signed.line.endswith(b"\n") and signed.line.count(b"\n") == 1
        assert signed.line[:-1] == canonical_bytes(signed.record)
        message = REPORT_LINE_CONTEXT + canonical_bytes(without_value(signed.record))
        public = key.private_key.public_key()
        public.verify(keys.b64decode_strict(signed.record["signature"]["value"], 64, "v"),
                      message)


def test_signer_refuses_reserved_fields_and_signing_after_the_seal():
    signer = ReportSigner(generate_ephemeral())
    with pytest.raises(SigningError, match="signature"):
        signer.sign({"signature": "forged"})
    with pytest.raises(SigningError, match="end_of_run"):
        signer.sign_last({"end_of_run": {}})
    last = signer.sign_last({"a": 0}, interrupted=True)
    assert last.record["signature"]["seal"] == {"measurements": 1, "interrupted": True}
    with pytest.raises(SigningError, match="sealed"):
        signer.sign({"a": 1})
    with pytest.raises(SigningError, match="sealed"):
        signer.sign_last({"a": 1})
    with pytest.raises(ValueError):
        ReportSigner(generate_ephemeral(), run_id="not hex")


def test_unsignable_measurement_leaves_the_chain_intact():
    signer = ReportSigner(generate_ephemeral())
    first = signer.sign({"a": 1})
    with pytest.raises(CanonicalizationError, match="test_keys.t"):
        signer.sign({"test_keys": {"t": math.inf}})
    second = signer.sign({"a": 2})
    assert second.record["signature"]["seq"] == 1
    assert second.record["signature"]["prev"] == first.line_hash


def test_sign_object_roundtrip_and_tamper():
    helper = generate_ephemeral()
    attestation = attest_control_response({"dns": ["149.154.167.51"]}, helper)
    assert set(attestation) == {"response", "signature"}
    assert set(attestation["signature"]) == {"version", "alg", "key_id", "public_key", "value"}
    assert verify_object(attestation) == helper.key_id
    assert verify_object(attestation, {helper.public_key_b64}) == helper.key_id
    assert verify_object(attestation, {helper.key_id}) == helper.key_id
    with pytest.raises(SignatureError, match="not in the trusted control keys"):
        verify_object(attestation, {generate_ephemeral().key_id})
    tampered = {**attestation, "response": {"dns": ["10.10.34.35"]}}
    with pytest.raises(SignatureError, match="does not match"):
        verify_object(tampered)
    with pytest.raises(SigningError):
        sign_object(attestation, helper)


def test_signature_contexts_are_not_interchangeable():
    key = generate_ephemeral()
    obj = sign_object({"response": 1}, key)
    unsigned = without_value(obj)
    wrong = key.sign(REPORT_LINE_CONTEXT + canonical_bytes(unsigned))
    forged = {**obj, "signature": {**obj["signature"], "value": keys.b64encode(wrong)}}
    with pytest.raises(SignatureError):
        verify_object(forged)
    right = key.sign(CONTROL_RESPONSE_CONTEXT + canonical_bytes(unsigned))
    assert keys.b64encode(right) == obj["signature"]["value"]
