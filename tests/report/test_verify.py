"""Verifying signed reports: tampering of every kind fails, in probe's verifier and in
the independent one written from docs/signing.md; arbitrary bytes never crash."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from probe.report.canonical import canonical_bytes
from probe.report.keys import SigningKey, generate_ephemeral
from probe.report.signing import ReportSigner, attest_control_response, sign_object
from probe.report.verify import (
    TrustedKeysError,
    load_trusted_keys,
    parse_trusted_keys,
    verify_bytes,
    verify_command,
    verify_file,
    verify_files,
)

from . import independent_verifier

DOC = Path(__file__).resolve().parents[2] / "docs" / "signing.md"

PROBE_KEY = generate_ephemeral()
CONTROL_KEY = generate_ephemeral()


def measurement(index: int, control_key: SigningKey = CONTROL_KEY) -> dict:
    """An OONI-shaped measurement with the awkward values real ones have."""
    host = ["web.telegram.org", "api.whatsapp.com", "signal.org", "www.facebook.com"][index % 4]
    control = {
        "version": 1,
        "helper": {"name": "helper-eu-1"},
        "endpoints": {host: {"tcp": [{"address": "149.154.167.99", "port": 443,
                                      "failure": None, "t": 0.031}]}},
    }
    return {
        "annotations": {"engine_name": "probe", "platform": "linux"},
        "data_format_version": "0.2.0",
        "input": f"https://{host}/",
        "measurement_start_time": f"2024-05-0{index % 9 + 1} 10:00:0{index % 10}",
        "measurement_uid": f"20240501T100000Z_webconnectivity_ZZ_{index:04d}",
        "probe_asn": "AS64496",
        "probe_cc": "ZZ",
        "probe_ip": "127.0.0.1",
        "report_id": "20240501T100000Z_webconnectivity_ZZ_64496_n1_abcdef",
        "resolver_asn": "AS64496",
        "software_name": "probe",
        "software_version": "0.1.0",
        "test_name": "web_connectivity",
        "test_runtime": 1.25 + index / 1000,
        "test_start_time": "2024-05-01 10:00:00",
        "test_keys": {
            "queries": [
                {"hostname": host, "query_type": "A", "t": 0.0123,
                 "answers": [{"answer_type": "A", "ipv4": "10.10.34.35", "ttl": None}],
                 "failure": None},
            ],
            "tcp_connect": [{"ip": "10.10.34.35", "port": 443,
                             "status": {"success": False, "failure": "connection_reset"}}],
            "requests": [{
                "request": {"method": "GET", "url": f"https://{host}/",
                            "headers": {"User-Agent": "Mozilla/5.0"}},
                "response": {"code": 200, "body": {
                    "format": "base64",
                    "data": base64.b64encode(
                        b"<html>\x00\xff blocked \xe2\x80\x94</html>"
                    ).decode(),
                }, "headers": {"X-Note": 'quote " backslash \\ tab \t newline \n \u2028'}},
            }],
            "blockpage_title": "Доступ ограничен — 访问受限 🚫",
            "tiny": 1e-9, "huge": 1.5e300, "negative": -0.5, "whole_float": 3.0,
            "big_int": 2**53 - 1, "empty_list": [], "empty_object": {},
            "control": {"attestation": attest_control_response(control, control_key)},
        },
    }


def make_report(count: int = 6, key: SigningKey = PROBE_KEY, *, end: bool = True) -> bytes:
    """``count`` measurements, the last one sealed if ``end``."""
    signer = ReportSigner(key)
    if end:
        signed = signer.sign_run(measurement(i) for i in range(count))
        return b"".join(line.line for line in signed)
    return b"".join(signer.sign(measurement(i)).line for i in range(count))


REPORT = make_report()
LINES = REPORT.splitlines(keepends=True)


def both(data: bytes, trusted=None, control=None, require_end=False):
    ours = verify_bytes(data, "report.jsonl", trusted, control, require_end=require_end)
    theirs = independent_verifier.verify(
        data, None if trusted is None else set(trusted), None if control is None else set(control)
    )
    return ours, theirs


def reasons(result) -> str:
    return "\n".join(str(p) for p in result.problems)


# --------------------------------------------------------------------------- #
# intact reports                                                               #
# --------------------------------------------------------------------------- #


def test_intact_report_verifies_in_both_verifiers():
    ours, theirs = both(REPORT, {PROBE_KEY.public_key_b64}, {CONTROL_KEY.key_id})
    assert ours.ok, reasons(ours)
    assert theirs.ok, theirs.problems
    assert ours.warnings == () and theirs.warnings == []
    assert ours.lines == 6
    [run] = ours.runs
    assert run.sealed and not run.interrupted and run.lines == 6
    assert run.key_id == PROBE_KEY.key_id and ours.key_ids == {PROBE_KEY.key_id}
    assert ours.control_key_ids == {CONTROL_KEY.key_id}


def test_worked_example_in_the_document_verifies_and_is_reproducible():
    text = DOC.read_text(encoding="utf-8")
    block = re.search(r"```jsonl\n(.*?)```", text, re.DOTALL).group(1).encode()
    ours, theirs = both(block)
    assert ours.ok and theirs.ok, (reasons(ours), theirs.problems)
    # Ed25519 is deterministic: the documented keys and run id give these very bytes.
    probe_key = SigningKey(Ed25519PrivateKey.from_private_bytes(bytes.fromhex(
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")))
    control_key = SigningKey(Ed25519PrivateKey.from_private_bytes(bytes.fromhex(
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb")))
    first, second = (json.loads(line) for line in block.splitlines())
    assert "seal" not in first["signature"] and second["signature"]["seal"] == {
        "measurements": 2, "interrupted": False}
    del first["signature"], second["signature"]
    attestation = first["test_keys"]["control"]["attestation"]
    first["test_keys"]["control"]["attestation"] = attest_control_response(
        attestation["response"], control_key)
    signer = ReportSigner(probe_key, run_id="000102030405060708090a0b0c0d0e0f")
    assert signer.sign(first).line + signer.sign_last(second).line == block
    assert control_key.key_id == "39f713d0a644253f"
    assert "6660adfcd82e10938aa9c61d2972fc10a4e4444ee3d0075513c20d2f854f32a1" in text


def test_trusted_keys_file_example_in_the_document_parses():
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## Trusted-keys files", 1)[1].split("An entry that", 1)[0]
    example = "\n".join(line[4:] for line in section.splitlines() if line.startswith("    "))
    assert parse_trusted_keys(example) == {
        "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=", "3d4017c3da5f1f0b"}


def test_several_runs_and_keys_in_one_file_interleaved():
    other_key = generate_ephemeral()
    first, second = ReportSigner(PROBE_KEY), ReportSigner(other_key)
    lines = []
    for i in range(3):
        lines.append(first.sign(measurement(i)).line)
        lines.append(second.sign(measurement(10 + i)).line)
    lines += [second.sign_last(measurement(13)).line, first.sign_last(measurement(3)).line]
    data = b"".join(lines)
    ours, theirs = both(data, {PROBE_KEY.key_id, other_key.public_key_b64})
    assert ours.ok and theirs.ok, (reasons(ours), theirs.problems)
    assert len(ours.runs) == 2 and all(r.sealed for r in ours.runs)
    ours, theirs = both(data, {PROBE_KEY.key_id})
    assert len(ours.problems) == 4
    assert all(f"key {other_key.key_id} is not in the trusted keys" in p.reason
               for p in ours.problems)
    assert not theirs.ok


# --------------------------------------------------------------------------- #
# tampering                                                                    #
# --------------------------------------------------------------------------- #


SMALL_REPORT = make_report(2)  # two measurements, the second sealed


def test_every_single_byte_change_fails_in_both_verifiers():
    # Every position of a whole report, each changed to a neighbouring value or
    # to a byte that means something in JSON, base64 or JSON Lines.
    special = b' "\\0e.\n1A\xff{}:,-+='
    for position, byte in enumerate(SMALL_REPORT):
        value = byte ^ 0x01 if position % 2 else special[position // 2 % len(special)]
        if value == byte:
            value = byte ^ 0x20
        data = SMALL_REPORT[:position] + bytes([value]) + SMALL_REPORT[position + 1:]
        ours = verify_bytes(data)
        assert not ours.ok, f"byte {position} -> {value:#04x} went unnoticed"
        line = SMALL_REPORT.count(b"\n", 0, position) + 1
        # The first problem names the changed line (or, if a newline was added
        # or removed, the line it split or joined with its neighbour).
        assert ours.problems[0].line in (line, line + 1), (position, ours.problems)
        assert ours.problems[0].reason
        assert not independent_verifier.verify(data).ok, (position, value)


def test_content_change_says_signature_does_not_match():
    line = LINES[2]
    tampered = line.replace(b'"connection_reset"', b'"connection_refus"')
    assert tampered != line
    ours, theirs = both(b"".join([*LINES[:2], tampered, *LINES[3:]]))
    assert [str(p) for p in ours.problems] == [
        "report.jsonl:3: signature does not match (content changed after signing)"]
    assert [n for n, _ in theirs.problems][:1] == [3]


@pytest.mark.parametrize("index", range(len(LINES)))
def test_removed_line_is_detected(index):
    data = b"".join(LINES[:index] + LINES[index + 1:])
    ours, theirs = both(data)
    if index == len(LINES) - 1:
        # The sealed last line itself: indistinguishable from a crash, so a
        # warning, and a failure for whoever requires complete runs.
        assert ours.ok and "is not sealed" in ours.warnings[0].reason
        assert theirs.ok and theirs.warnings
        assert not verify_bytes(data, require_end=True).ok
        return
    assert not ours.ok and not theirs.ok
    [problem] = ours.problems
    if index == 0:
        assert problem.line == 1 and "first 1 line(s)" in problem.reason
    else:
        assert problem.line == index + 1
        assert "1 line(s)" in problem.reason and "missing" in problem.reason


@pytest.mark.parametrize(("a", "b"), [(0, 1), (1, 2), (3, 4), (4, 5), (1, 4), (0, 5)])
def test_swapped_lines_are_detected(a, b):
    lines = list(LINES)
    lines[a], lines[b] = lines[b], lines[a]
    ours, theirs = both(b"".join(lines))
    assert not ours.ok and not theirs.ok
    assert {a + 1, b + 1} <= ours.bad_lines | {p.line + 1 for p in ours.problems}
    assert any("out of order" in p.reason or "first" in p.reason for p in ours.problems)


def test_truncated_head_is_detected():
    ours, theirs = both(b"".join(LINES[2:]))
    assert [str(p) for p in ours.problems] == [
        f"report.jsonl:1: chain broken: the first 2 line(s) of run {ours.runs[0].run[:8]} are "
        + "missing (its first line here has seq 2): the start of the report was removed"]
    assert theirs.problems[0][0] == 1


def test_truncated_tail_is_detected_through_the_seal():
    ours, theirs = both(b"".join(LINES[:3] + LINES[-1:]))
    assert not ours.ok and not theirs.ok
    assert ours.problems[0].line == 4 and "2 line(s)" in ours.problems[0].reason
    unsealed, _ = both(b"".join(LINES[:3]))
    assert unsealed.ok and not unsealed.runs[0].sealed
    assert "cut from the end" in unsealed.warnings[0].reason


def test_duplicated_line_is_detected():
    ours, theirs = both(b"".join([*LINES[:3], LINES[2], *LINES[3:]]))
    assert [p.line for p in ours.problems] == [4]
    assert "duplicate of line 3" in ours.problems[0].reason
    assert not theirs.ok


def test_interrupted_run_is_a_warning():
    signer = ReportSigner(PROBE_KEY)
    data = signer.sign_last(measurement(0), interrupted=True).line
    ours, theirs = both(data)
    assert ours.ok and theirs.ok
    assert "interrupted" in ours.warnings[0].reason and ours.runs[0].interrupted


def _resigned(record: dict, key: SigningKey = PROBE_KEY) -> bytes:
    """``record`` signed again by ``key`` with its signature object as it is: what a
    key holder can make of any record, seal included."""
    from probe.report.keys import b64encode
    from probe.report.rules import REPORT_LINE_CONTEXT

    signature = {k: v for k, v in record["signature"].items() if k != "value"}
    unsigned = {**record, "signature": signature}
    signature["value"] = b64encode(key.sign(REPORT_LINE_CONTEXT + canonical_bytes(unsigned)))
    return canonical_bytes({**record, "signature": signature}) + b"\n"


def test_only_the_last_line_is_sealed_and_its_seal_counts_the_run():
    records = [json.loads(line) for line in LINES]
    assert ["seal" in r["signature"] for r in records] == [False] * 5 + [True]
    assert records[-1]["signature"]["seal"] == {"measurements": 6, "interrupted": False}
    assert all("test_keys" in r and "measurement_uid" in r for r in records)


def test_tampered_seal_is_detected():
    record = json.loads(LINES[-1])
    for seal, reason in (({"measurements": 7, "interrupted": False}, "malformed seal"),
                         ({"measurements": 6, "interrupted": True}, "signature does not match")):
        record["signature"]["seal"] = seal
        data = b"".join([*LINES[:-1], canonical_bytes(record) + b"\n"])
        ours, theirs = both(data)
        assert [p.line for p in ours.problems] == [6]
        assert reason in ours.problems[0].reason
        assert [n for n, _ in theirs.problems] == [6]
    # Removing the seal is a change of the signed bytes too, not a shorter run.
    del record["signature"]["seal"]
    ours, theirs = both(b"".join([*LINES[:-1], canonical_bytes(record) + b"\n"]))
    assert [p.line for p in ours.problems] == [6] and not theirs.ok


@pytest.mark.parametrize("seal", [
    {"measurements": 5, "interrupted": False},  # not seq + 1
    {"measurements": 6},
    {"measurements": 6, "interrupted": "no"},
    {"measurements": True, "interrupted": False},
    {"measurements": 6, "interrupted": False, "extra": 1},
    [6, False],
])
def test_malformed_seal_signed_by_the_key_is_refused(seal):
    record = json.loads(LINES[-1])
    record["signature"]["seal"] = seal
    ours, theirs = both(b"".join([*LINES[:-1], _resigned(record)]))
    assert [p.line for p in ours.problems] == [6]
    assert "malformed seal" in ours.problems[0].reason
    assert [n for n, _ in theirs.problems] == [6]


def test_records_after_the_sealed_line_are_refused():
    # The key holder extends a finished run with a correctly chained line.
    extra = measurement(99)
    extra["signature"] = {**json.loads(LINES[-1])["signature"], "seq": 6,
                          "prev": hashlib.sha256(LINES[-1].rstrip(b"\n")).hexdigest()}
    del extra["signature"]["seal"]
    ours, theirs = both(REPORT + _resigned(extra))
    assert [p.line for p in ours.problems] == [7]
    assert "record after the end of the run" in ours.problems[0].reason
    assert [n for n, _ in theirs.problems] == [7]
    # A seal on a line that is not the run's last: the same.
    early = json.loads(LINES[2])
    early["signature"]["seal"] = {"measurements": 3, "interrupted": False}
    ours, theirs = both(b"".join([*LINES[:2], _resigned(early)]) + b"".join(LINES[3:]))
    assert 4 in {p.line for p in ours.problems}
    assert any("record after the end of the run" in p.reason for p in ours.problems)
    assert not theirs.ok


def test_end_of_run_record_of_the_earlier_format_is_refused_with_a_clear_reason():
    signer = ReportSigner(PROBE_KEY)
    first = signer.sign(measurement(0)).line
    old = {"end_of_run": {"measurements": 1, "interrupted": False},
           "signature": {**json.loads(first)["signature"], "seq": 1,
                         "prev": hashlib.sha256(first.rstrip(b"\n")).hexdigest()}}
    ours, theirs = both(first + _resigned(old))
    assert [p.line for p in ours.problems] == [2]
    assert "report format before the seal" in ours.problems[0].reason
    assert not ours.runs[0].sealed
    assert [n for n, _ in theirs.problems] == [2]


def test_signing_an_empty_run_gives_no_line():
    assert list(ReportSigner(PROBE_KEY).sign_run([])) == []


def _attestation_of(line: bytes) -> tuple[dict, dict]:
    record = json.loads(line)
    return record, record["test_keys"]["control"]["attestation"]


def test_control_attestation_changed_after_signing_breaks_the_line():
    record, attestation = _attestation_of(LINES[1])
    attestation["response"]["endpoints"] = {}
    data = b"".join([LINES[0], canonical_bytes(record) + b"\n", *LINES[2:]])
    ours, theirs = both(data, control={CONTROL_KEY.key_id})
    assert [p.line for p in ours.problems] == [2]
    assert "signature does not match" in ours.problems[0].reason
    assert [n for n, _ in theirs.problems][:1] == [2]


def test_control_data_forged_by_the_probe_itself_is_detected():
    # A dishonest probe edits the helper's answer, then signs the line properly.
    signer = ReportSigner(PROBE_KEY)
    forged = measurement(0)
    forged["test_keys"]["control"]["attestation"]["response"]["endpoints"] = {}
    data = signer.sign_last(forged).line
    ours, theirs = both(data, control={CONTROL_KEY.public_key_b64})
    assert [str(p) for p in ours.problems] == [
        "report.jsonl:1: control attestation: signature does not match (control response "
        + "changed after the helper signed it)"]
    assert theirs.problems[0][0] == 1 and "control attestation" in theirs.problems[0][1]
    # Without a trusted control key the forgery is caught all the same.
    assert not both(data)[0].ok


def test_control_response_signed_by_another_helper_is_not_trusted():
    impostor = generate_ephemeral()
    signer = ReportSigner(PROBE_KEY)
    data = signer.sign_last(measurement(0, control_key=impostor)).line
    ours, theirs = both(data, control={CONTROL_KEY.key_id})
    assert [p.reason for p in ours.problems] == [
        f"control attestation: key {impostor.key_id} is not in the trusted control keys"]
    assert not theirs.ok
    assert both(data)[0].ok  # self-consistent; trust is the caller's question


def test_unattested_control_data_fails_when_control_keys_are_trusted():
    signer = ReportSigner(PROBE_KEY)
    plain = measurement(0)
    plain["test_keys"]["control"] = {"endpoints": {}}
    data = signer.sign_last(plain).line
    ours, theirs = both(data, control={CONTROL_KEY.key_id})
    assert [p.line for p in ours.problems] == [1]
    assert "not attested" in ours.problems[0].reason
    assert theirs.problems[0][0] == 1
    assert both(data)[0].ok and both(data)[1].ok  # nobody said which helper to trust
    signer = ReportSigner(PROBE_KEY)
    plain["test_keys"]["control"] = None  # no control at all: nothing to attest
    data = signer.sign_last(plain).line
    assert verify_bytes(data, trusted_control_keys={CONTROL_KEY.key_id}).warnings == ()


def test_reserialised_line_is_not_canonical():
    record = json.loads(LINES[1])
    pretty = json.dumps(record, ensure_ascii=True, indent=None).encode() + b"\n"
    ours, theirs = both(b"".join([LINES[0], pretty, *LINES[2:]]))
    assert [p.line for p in ours.problems] == [2]
    assert "not in canonical form" in ours.problems[0].reason
    assert not theirs.ok


def test_sloppy_base64_in_the_last_signature_is_detected():
    # Unused low bits of the last base64 character: the same 64 bytes to a
    # lenient decoder, and nothing later in the chain covers the last line.
    record = json.loads(LINES[-1])
    value = record["signature"]["value"]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = alphabet.index(value[-3])
    record["signature"]["value"] = value[:-3] + alphabet[last ^ 1] + "=="
    assert base64.b64decode(record["signature"]["value"]) == base64.b64decode(value)
    ours, theirs = both(b"".join([*LINES[:-1], canonical_bytes(record) + b"\n"]))
    assert "canonical base64" in reasons(ours) and not theirs.ok


def test_line_spliced_from_another_run_is_detected():
    other = make_report(3)
    spliced = b"".join([*LINES[:2], other.splitlines(keepends=True)[1], *LINES[2:]])
    ours, theirs = both(spliced)
    # Line 3 starts a foreign run mid-way, and reuses line 2's measurement_uid.
    assert {p.line for p in ours.problems} == {3} and not theirs.ok


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "file is empty"),
        (REPORT[:-1], "no newline at the end"),
        (LINES[0] + b"\n" + b"".join(LINES[1:]), "empty line"),
        (b"[1, 2]\n", "not a JSON object"),
        (b'{"a": 1}\n', "no signature"),
        (b"\xff\xfe\n", "not valid UTF-8"),
        (b'{"a":1,"a":1}\n', "duplicate object key"),
        (b'{"n":1e999}\n', "too large for a double"),
        (b'{"n":1' + b"0" * 500 + b"}\n", "too long"),
    ],
)
def test_malformed_files_are_problems_with_reasons(data, fragment):
    result = verify_bytes(data, "f.jsonl")
    assert not result.ok
    assert fragment in reasons(result)
    assert not independent_verifier.verify(data).ok


# --------------------------------------------------------------------------- #
# properties                                                                   #
# --------------------------------------------------------------------------- #


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=3000) | st.builds(lambda b, i: REPORT[:i] + b + REPORT[i:],
                                             st.binary(max_size=40),
                                             st.integers(0, len(REPORT))))
def test_arbitrary_bytes_never_raise(data):
    result = verify_bytes(data)
    assert isinstance(result.ok, bool)
    for problem in result.problems:
        assert isinstance(problem.reason, str) and problem.reason
        assert "internal error" not in problem.reason


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=500))
def test_verify_file_on_arbitrary_bytes_never_raises(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("fuzz") / "r.jsonl"
    path.write_bytes(data)
    result = verify_file(path)
    assert result.ok == (data != b"" and verify_bytes(data).ok)


json_values = st.recursive(
    st.none() | st.booleans()
    | st.integers(-(2**53) + 1, 2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_categories=["Cs"])),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(st.characters(exclude_categories=["Cs"]), max_size=8), children,
                      max_size=4),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.dictionaries(st.text(max_size=10).filter(
    lambda k: k not in ("signature", "end_of_run")), json_values, max_size=5),
    min_size=1, max_size=3))
def test_any_json_measurement_signs_and_verifies_in_both(measurements):
    signer = ReportSigner(PROBE_KEY)
    lines = [signed.line for signed in signer.sign_run(
        {**m, "measurement_uid": f"uid-{n}"} for n, m in enumerate(measurements))]
    data = b"".join(lines)
    ours, theirs = both(data)
    assert ours.ok, reasons(ours)
    assert theirs.ok, theirs.problems
    for line in lines:  # the two canonicalisations agree byte for byte
        assert independent_verifier.jcs(independent_verifier.parse_line(line[:-1])) == line[:-1]


@settings(max_examples=150, deadline=None)
@given(st.integers(0, len(REPORT) - 1), st.integers(1, 255))
def test_random_single_byte_change_fails(position, delta):
    data = REPORT[:position] + bytes([(REPORT[position] + delta) % 256]) + REPORT[position + 1:]
    assert not verify_bytes(data).ok
    assert not independent_verifier.verify(data).ok


# --------------------------------------------------------------------------- #
# files, trusted keys, the command                                             #
# --------------------------------------------------------------------------- #


def test_trusted_keys_file_format(tmp_path):
    path = tmp_path / "trusted.txt"
    path.write_text(
        "# enrolled volunteers\n\n"
        f"{PROBE_KEY.public_key_b64}   # volunteer 17\n"
        f"  {CONTROL_KEY.key_id.upper()}\n",
        encoding="utf-8",
    )
    assert load_trusted_keys(path) == {PROBE_KEY.public_key_b64, CONTROL_KEY.key_id}
    path.write_text("# ok\nnot-a-key\n", encoding="utf-8")
    with pytest.raises(TrustedKeysError, match=r"trusted.txt line 2: 'not-a-key' is neither"):
        load_trusted_keys(path)
    path.write_text("# nothing\n", encoding="utf-8")
    with pytest.raises(TrustedKeysError, match="no keys"):
        load_trusted_keys(path)
    with pytest.raises(TrustedKeysError, match="cannot read"):
        load_trusted_keys(tmp_path / "missing.txt")


def test_unreadable_file_is_a_problem(tmp_path):
    [result] = verify_files([tmp_path / "missing.jsonl"])
    assert not result.ok and "cannot read the file" in result.problems[0].reason


def test_verify_command_output_and_exit_codes(tmp_path, capsys):
    good = tmp_path / "good.jsonl"
    good.write_bytes(REPORT)
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"".join(LINES[:1] + LINES[2:]))
    trusted = tmp_path / "trusted.txt"
    trusted.write_text(PROBE_KEY.public_key_b64 + "\n", encoding="utf-8")
    control = tmp_path / "control.txt"
    control.write_text(CONTROL_KEY.public_key_b64 + "\n", encoding="utf-8")

    assert verify_command([good], trusted, control) == 0
    out = capsys.readouterr().out
    assert f"{good}: OK, 6 line(s)" in out and "OK: 1 file(s) verified" in out
    assert PROBE_KEY.key_id in out and CONTROL_KEY.key_id in out

    assert verify_command([good, bad], trusted) == 1
    out = capsys.readouterr().out
    assert f"{bad}:2: chain broken" in out
    assert "FAILED: 1 of 2 file(s) did not verify" in out

    assert verify_command([good]) == 0
    assert "no --trusted-keys" in capsys.readouterr().out

    stranger = tmp_path / "stranger.txt"
    stranger.write_text(generate_ephemeral().key_id + "\n", encoding="utf-8")
    assert verify_command([good], stranger) == 1
    assert "is not in the trusted keys" in capsys.readouterr().out

    broken = tmp_path / "broken.txt"
    broken.write_text("zzz\n", encoding="utf-8")
    assert verify_command([good], broken) == 2
    assert "broken.txt line 1" in capsys.readouterr().err

    unsealed = tmp_path / "unsealed.jsonl"
    unsealed.write_bytes(b"".join(LINES[:-1]))
    assert verify_command([unsealed]) == 0
    assert "warning:" in capsys.readouterr().out
    assert verify_command([unsealed], require_end=True) == 1


def test_key_file_and_report_are_not_world_readable_by_accident(tmp_path):
    # The report itself is public by design; only the key must stay private.
    from probe.report.keys import load_or_create_key

    key = load_or_create_key(tmp_path / "k" / "probe-key.pem")
    assert os.stat(key.path).st_mode & 0o077 == 0
    assert verify_bytes(make_report(2, key), trusted_keys={key.key_id}).ok


def test_sign_object_is_not_a_report_line():
    # A signed control response pasted as a report line must not verify.
    line = canonical_bytes(sign_object({"response": {"a": 1}}, PROBE_KEY)) + b"\n"
    ours, theirs = both(line)
    assert "signature lacks field(s) prev, run, seq" in reasons(ours)
    assert not theirs.ok
