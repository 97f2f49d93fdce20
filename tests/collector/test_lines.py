"""One received line checked on its own: the same verdict as the reference verifier."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from probe.collector.lines import LinePolicy, check_line
from probe.report.canonical import CanonicalizationError, canonical_bytes
from probe.report.keys import generate_ephemeral
from probe.report.rules import _canonical, _parse
from probe.report.signing import attest_control_response, sign_lines
from probe.report.verify import verify_bytes

from .helpers import signed_run


def lines_of(data: bytes) -> list[bytes]:
    return data.rstrip(b"\n").split(b"\n")


def test_a_signed_run_passes_every_check():
    key, lines = signed_run()
    checked = [check_line(line.rstrip(b"\n")) for line in lines]
    assert [c.reason for c in checked] == [None] * 4
    assert [c.seq for c in checked] == [0, 1, 2, 3]
    assert [c.sealed for c in checked] == [False, False, False, True]
    # The sealed line is a measurement like the others, deduplicated by its uid.
    assert checked[-1].dedupe_key == "m:" + json.loads(lines[-1])["measurement_uid"]
    assert checked[0].dedupe_key == "m:" + json.loads(lines[0])["measurement_uid"]
    assert {c.key_id for c in checked} == {key.key_id}


def test_tampering_is_caught_with_a_reason():
    _, lines = signed_run()
    line = lines[0].rstrip(b"\n")
    edited = line.replace(b'"probe_cc":"IR"', b'"probe_cc":"DE"')
    assert check_line(edited).reason == "signature does not match (content changed after signing)"
    assert check_line(edited).measurement_uid  # the uploader can tell which one
    spaced = line.replace(b'{"', b'{ "', 1)
    assert "not in canonical form" in check_line(spaced).reason
    assert check_line(b"{not json").reason.startswith("not valid JSON")
    assert check_line(b"[1,2]").reason == "not a JSON object"
    assert check_line(b"").reason == "empty line"
    assert check_line(b'{"a":1,"a":2}').reason == "not valid JSON: duplicate object key 'a'"
    assert check_line(b'{"a":NaN}').reason == "not valid JSON: NaN is not JSON"
    assert check_line(b"\xff").reason == "not valid JSON: not valid UTF-8 (byte 0)"
    unsigned = json.loads(line)
    del unsigned["signature"]
    assert check_line(canonical_bytes(unsigned)).reason == "no signature"
    assert "over the limit" in check_line(line, LinePolicy(max_line_bytes=100)).reason


def test_trusted_keys():
    key, lines = signed_run()
    other = generate_ephemeral()
    line = lines[0].rstrip(b"\n")
    assert check_line(line, LinePolicy(frozenset({key.key_id}))).ok
    assert check_line(line, LinePolicy(frozenset({key.public_key_b64}))).ok
    refused = check_line(line, LinePolicy(frozenset({other.key_id})))
    assert refused.reason == f"key {key.key_id} is not in the trusted keys"


def _attested_run(control_key, tamper=False, attest=True):
    measurement = json.loads(signed_run(finish=False)[1][0])
    del measurement["signature"]
    attestation = attest_control_response({"endpoints": {"telegram-dc1": "ok"}}, control_key)
    if tamper:
        attestation["response"]["endpoints"]["telegram-dc1"] = "blocked"
    measurement["test_keys"]["control"] = (
        {"source": "https://control.example/", "attestation": [attestation]}
        if attest
        else {"source": "https://control.example/"}
    )
    return sign_lines(generate_ephemeral(), [measurement])


def test_control_attestations():
    helper, stranger = generate_ephemeral(), generate_ephemeral()
    good = lines_of(_attested_run(helper))[0]
    assert check_line(good).ok
    assert check_line(good, LinePolicy(trusted_control_keys=frozenset({helper.key_id}))).ok
    untrusted = check_line(good, LinePolicy(trusted_control_keys=frozenset({stranger.key_id})))
    assert untrusted.reason == (
        f"control attestation #1: key {helper.key_id} is not in the trusted control keys"
    )
    tampered = check_line(lines_of(_attested_run(helper, tamper=True))[0])
    assert tampered.reason.startswith("control attestation #1: signature does not match")
    unattested = lines_of(_attested_run(helper, attest=False))[0]
    assert check_line(unattested).ok  # nobody said which helper to trust
    refused = check_line(unattested, LinePolicy(trusted_control_keys=frozenset({helper.key_id})))
    assert "not attested" in refused.reason


def test_malformed_seal_and_earlier_end_of_run_record_are_refused():
    from probe.report.signing import ReportSigner

    key, lines = signed_run()
    record = json.loads(lines[-1])
    del record["signature"]
    signer = ReportSigner(key)
    # the key holder signs what it likes: a seal that miscounts the run
    signer.seq, signer.previous_hash = 3, json.loads(lines[-1])["signature"]["prev"]
    bad = signer._sign_record(record, {"measurements": 7, "interrupted": False})
    assert check_line(bad.line.rstrip(b"\n")).reason.startswith("malformed seal")
    # The earlier format's end-of-run record, signed as its signers did.
    from probe.report.keys import b64encode
    from probe.report.rules import REPORT_LINE_CONTEXT

    signature = {k: v for k, v in json.loads(lines[-1])["signature"].items()
                 if k not in ("value", "seal")}
    old = {"end_of_run": {"measurements": 3, "interrupted": False}, "signature": signature}
    signature["value"] = b64encode(key.sign(REPORT_LINE_CONTEXT + canonical_bytes(old)))
    old_line = canonical_bytes(old)
    assert "report format before the seal" in check_line(old_line).reason


def test_agrees_with_probe_verify_line_by_line():
    _, lines = signed_run()
    variants = [line.rstrip(b"\n") for line in lines]
    variants.append(variants[0].replace(b'"IR"', b'"DE"'))
    variants.append(variants[1].replace(b"{", b"{ ", 1))
    for variant in variants:
        result = verify_bytes(variant + b"\n", "x")
        line_problems = [
            p for p in result.problems if "chain" not in p.reason and "first" not in p.reason
        ]
        assert check_line(variant).ok == (not line_problems), variant[:80]


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**60), 2**60)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_fast_canonical_form_equals_rfc8785(value):
    """json.dumps is used only where it gives the very bytes of RFC 8785."""
    try:
        reference = canonical_bytes(value)
    except CanonicalizationError:
        return
    parsed = _parse(reference)
    assert not isinstance(parsed, str)
    record, safe = parsed
    assert _canonical(record, safe) == reference
    # and a non-canonical spelling of the same value is never taken for canonical
    loose = json.dumps(value).encode()
    parsed_loose = _parse(loose)
    if not isinstance(parsed_loose, str):
        assert _canonical(*parsed_loose) == canonical_bytes(parsed_loose[0])
