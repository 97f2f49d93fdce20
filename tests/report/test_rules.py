"""The one rule set: each gap an independent verifier found is produced for real (signed
with real keys) and refused by `probe verify`, by the collector's check_line, by the
aggregation's ingest where the rule applies, and by the independent verifier."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from probe.aggregate import database, synthetic
from probe.collector.lines import LinePolicy, check_line
from probe.report.canonical import canonical_bytes
from probe.report.keys import (
    SMALL_ORDER_PUBLIC_KEYS,
    KeyFormatError,
    decode_public_key,
    fingerprint,
    generate_ephemeral,
    public_key_problem,
    verify_raw,
)
from probe.report.rules import REPORT_LINE_CONTEXT, untrusted_line_reason
from probe.report.signing import (
    ReportSigner,
    SignatureError,
    attest_control_response,
    sign_object,
    verify_object,
)
from probe.report.verify import TrustedKeysError, parse_trusted_keys, verify_bytes

from . import independent_verifier

PROBE_KEY = generate_ephemeral()
HELPER_KEY = generate_ephemeral()
IDENTITY = bytes([1]) + bytes(31)
#: R = identity, S = 0: [S]B = R + [k]A holds for every message when A is the identity.
IDENTITY_FORGERY = IDENTITY + bytes(32)


def probe_measurement(number: int, control: object = None) -> dict:
    """A measurement the aggregation can count (synthetic shape), with optional control."""
    record = synthetic.measurement(
        "telegram", "IR", "AS197207", synthetic.START, {}, "r1", f"{number:016x}"
    )
    if control is not None:
        record["test_keys"]["control"] = control
    return record


def line_of(record: dict, key=PROBE_KEY) -> bytes:
    """One measurement signed as seq 0 of a fresh run (no end record), without newline."""
    return ReportSigner(key).sign(record).line.rstrip(b"\n")


def ingest_bytes(tmp_path: Path, data: bytes, policy: LinePolicy | None = None):
    path = tmp_path / "report.jsonl"
    path.write_bytes(data)
    con = database.connect()
    return con, database.ingest(con, [path], policy)


def refused_everywhere(tmp_path: Path, line: bytes, fragment: str, **trust) -> None:
    """The single line is refused by check_line, probe verify, ingest and the independent one."""
    policy = LinePolicy(
        trusted_keys=trust.get("keys"), trusted_control_keys=trust.get("control")
    )
    checked = check_line(line, policy)
    assert not checked.ok and fragment in checked.reason, checked.reason
    result = verify_bytes(line + b"\n", "r.jsonl", trust.get("keys"), trust.get("control"))
    assert [p.line for p in result.problems] == [1], result.problems
    assert fragment in result.problems[0].reason
    con, ingested = ingest_bytes(tmp_path, line + b"\n", policy)
    assert (ingested.measurements, ingested.rejected) == (0, 1)
    assert fragment in ingested.rejections[0][2]
    assert con.execute("SELECT count(*) FROM measurements").fetchall() == [(0,)]
    theirs = independent_verifier.verify(
        line + b"\n", trust.get("keys") and set(trust["keys"]),
        trust.get("control") and set(trust["control"]),
    )
    assert [n for n, _ in theirs.problems] == [1], theirs.problems


def test_an_honest_line_passes_everywhere(tmp_path):
    # The baseline the refusals below are measured against.
    attestation = attest_control_response({"endpoints": {"a": "ok"}}, HELPER_KEY)
    line = line_of(probe_measurement(1, {"attestation": [attestation]}))
    policy = LinePolicy(frozenset({PROBE_KEY.key_id}), frozenset({HELPER_KEY.key_id}))
    checked = check_line(line, policy)
    assert checked.ok and checked.control_key_ids == {HELPER_KEY.key_id}
    assert verify_bytes(line + b"\n", trusted_keys={PROBE_KEY.key_id}).ok
    _, ingested = ingest_bytes(tmp_path, line + b"\n", policy)
    assert (ingested.measurements, ingested.rejected) == (1, 0)


# --------------------------------------------------------------------------- #
# nothing after the sealed line                                               #
# --------------------------------------------------------------------------- #


def sealed_then_extended() -> bytes:
    """A sealed run to which its own key appends one more, correctly chained record."""
    signer = ReportSigner(PROBE_KEY)
    lines = [signer.sign(probe_measurement(0)).line, signer.sign_last(probe_measurement(1)).line]
    signer.finished = False  # what a key holder can do: keep signing after the seal
    lines.append(signer.sign(probe_measurement(2)).line)
    return b"".join(lines)


def test_record_after_the_sealed_line_is_refused(tmp_path):
    data = sealed_then_extended()
    last = json.loads(data.splitlines()[-1])
    assert last["signature"]["prev"] == hashlib.sha256(data.splitlines()[1]).hexdigest()
    # Each line alone is fine: a line cannot know what follows its run's seal.
    assert all(check_line(line).ok for line in data.splitlines())

    ours = verify_bytes(data, "r.jsonl")
    assert [p.line for p in ours.problems] == [3]
    assert "record after the end of the run: seq 2" in ours.problems[0].reason
    assert ours.runs[0].sealed
    theirs = independent_verifier.verify(data)
    assert [n for n, _ in theirs.problems] == [3]

    con, ingested = ingest_bytes(tmp_path, data)
    assert (ingested.measurements, ingested.run_ends, ingested.rejected) == (2, 1, 1)
    assert "record after the end of the run" in ingested.rejections[0][2]
    uids = con.execute("SELECT measurement_uid FROM measurements ORDER BY seq").fetchall()
    assert uids == [(json.loads(line)["measurement_uid"],) for line in data.splitlines()[:2]]
    assert database.integrity(con) == []  # the sealed run itself is whole
    again = database.ingest(con, [tmp_path / "report.jsonl"])
    assert again.measurements == 0
    assert con.execute("SELECT count(*) FROM rejected").fetchall() == [(1,)]


def test_a_second_sealed_line_is_refused(tmp_path):
    signer = ReportSigner(PROBE_KEY)
    lines = [signer.sign_last(probe_measurement(1)).line]
    signer.finished = False
    lines.append(signer.sign_last(probe_measurement(2)).line)  # well formed: measurements 2
    data = b"".join(lines)
    ours = verify_bytes(data)
    assert [p.line for p in ours.problems] == [2]
    assert "record after the end of the run: seq 1" in ours.problems[0].reason
    assert not independent_verifier.verify(data).ok
    con, ingested = ingest_bytes(tmp_path, data)
    assert (ingested.measurements, ingested.run_ends, ingested.rejected) == (1, 1, 1)
    assert con.execute("SELECT seq FROM run_ends").fetchall() == [(0,)]


def test_another_keys_seal_cannot_truncate_a_run(tmp_path):
    # Run ids are public: a stranger's sealed line claiming seq 0 of the
    # victim's run must not make the victim's measurements "after the end".
    victim = ReportSigner(PROBE_KEY)
    lines = [signed.line for signed in victim.sign_run(probe_measurement(n) for n in range(2))]
    stranger = ReportSigner(generate_ephemeral(), run_id=victim.run_id)
    intruder = stranger.sign_last(probe_measurement(9)).line
    con, ingested = ingest_bytes(tmp_path, intruder + b"".join(lines))
    assert (ingested.measurements, ingested.rejected) == (3, 0)
    kept = con.execute("SELECT count(*) FROM measurements WHERE key_id = ?",
                       [PROBE_KEY.key_id]).fetchall()
    assert kept == [(2,)]


def test_a_malformed_seal_is_refused_everywhere(tmp_path):
    from probe.report.keys import b64encode

    record = json.loads(ReportSigner(PROBE_KEY).sign_last(probe_measurement(1)).line)
    signature = {k: v for k, v in record["signature"].items() if k != "value"}
    signature["seal"] = {"measurements": 1, "interrupted": "false"}
    signature["value"] = b64encode(PROBE_KEY.sign(
        REPORT_LINE_CONTEXT + canonical_bytes({**record, "signature": {
            k: v for k, v in signature.items() if k != "value"}})))
    line = canonical_bytes({**record, "signature": signature})
    refused_everywhere(tmp_path, line, "malformed seal")


# --------------------------------------------------------------------------- #
# attestations: never empty, exactly response and signature                    #
# --------------------------------------------------------------------------- #


def test_empty_attestation_list_is_refused(tmp_path):
    line = line_of(probe_measurement(1, {"source": "x", "attestation": []}))
    refused_everywhere(tmp_path, line, "control attestation list is empty")
    refused_everywhere(
        tmp_path, line, "control attestation list is empty", control=frozenset({HELPER_KEY.key_id})
    )


def test_attestation_with_extra_signed_members_is_refused(tmp_path):
    # The helper's key really signed the extra member: only the shape is wrong.
    attestation = sign_object({"response": {"a": "ok"}, "note": "unread by anyone"}, HELPER_KEY)
    with pytest.raises(SignatureError, match="other than response and signature: 'note'"):
        verify_object(attestation)
    for control in ({"attestation": attestation}, {"attestation": [attestation]}):
        line = line_of(probe_measurement(1, control))
        refused_everywhere(tmp_path, line, "has member(s) other than response and signature")


def test_attestation_without_response_is_refused(tmp_path):
    attestation = sign_object({"answer": {"a": "ok"}}, HELPER_KEY)
    line = line_of(probe_measurement(1, {"attestation": attestation}))
    refused_everywhere(tmp_path, line, "control attestation: has member(s) other than")


# --------------------------------------------------------------------------- #
# small-order public keys                                                      #
# --------------------------------------------------------------------------- #


def test_the_blocklist_is_exactly_the_small_order_points_and_their_other_spellings():
    canonical, other = set(), set()
    for raw in SMALL_ORDER_PUBLIC_KEYS:
        try:
            point = independent_verifier._decode_point(raw)
        except independent_verifier.Invalid:
            other.add(raw)  # RFC 8032 decoding refuses it; lenient decoders do not
            continue
        canonical.add(point)
        with pytest.raises(independent_verifier.Invalid, match="small order"):
            independent_verifier.check_public_key(raw)
    # The 8-torsion subgroup of Curve25519 has exactly eight points.
    assert len(canonical) == 8 and len(other) == 6
    for raw in other:  # each is a small-order point once y is reduced mod p and x's sign dropped
        value = int.from_bytes(raw, "little") & ((1 << 255) - 1)
        reduced = (value % independent_verifier.P).to_bytes(32, "little")
        assert any(reduced[:31] == k[:31] and reduced[31] == k[31] & 0x7F
                   for k in SMALL_ORDER_PUBLIC_KEYS - other)


def test_the_identity_key_signs_everything_below_us_but_not_in_probe():
    # The forgery is real: the library underneath accepts it for any message.
    for message in (b"", b"any message", REPORT_LINE_CONTEXT + b'{"x":1}'):
        Ed25519PublicKey.from_public_bytes(IDENTITY).verify(IDENTITY_FORGERY, message)
        assert not verify_raw(IDENTITY, IDENTITY_FORGERY, message)
    for raw in SMALL_ORDER_PUBLIC_KEYS:
        assert not verify_raw(raw, IDENTITY_FORGERY, b"any message")
        assert "small order" in public_key_problem(raw) or "canonical" in public_key_problem(raw)
        text = base64.b64encode(raw).decode()
        with pytest.raises(KeyFormatError):
            decode_public_key(text)
        with pytest.raises(KeyFormatError):
            fingerprint(text)
        with pytest.raises(TrustedKeysError, match="line 1"):
            parse_trusted_keys(text + "\n")
    # An honest key still works.
    assert not public_key_problem(PROBE_KEY.public_key_raw)
    assert verify_raw(PROBE_KEY.public_key_raw, PROBE_KEY.sign(b"m"), b"m")


def forged_line(raw_key: bytes, record: dict) -> bytes:
    """A report line 'signed' by a small-order key: R = identity, S = 0."""
    record = dict(record)
    record["signature"] = {
        "alg": "ed25519",
        "key_id": hashlib.sha256(raw_key).hexdigest()[:16],
        "prev": None,
        "public_key": base64.b64encode(raw_key).decode(),
        "run": "00" * 16,
        "seq": 0,
        "value": base64.b64encode(IDENTITY_FORGERY).decode(),
        "version": 1,
    }
    return canonical_bytes(record)


def test_report_line_signed_by_the_identity_key_is_refused(tmp_path):
    line = forged_line(IDENTITY, probe_measurement(1))
    record = json.loads(line)
    unsigned = {**record, "signature": {
        k: v for k, v in record["signature"].items() if k != "value"}}
    # Underneath, the forged signature verifies over exactly what the line signs.
    Ed25519PublicKey.from_public_bytes(IDENTITY).verify(
        IDENTITY_FORGERY, REPORT_LINE_CONTEXT + canonical_bytes(unsigned))
    refused_everywhere(tmp_path, line, "small order")
    # Even a trusted-keys file cannot name it, so "trusted" can never include it.
    with pytest.raises(TrustedKeysError):
        parse_trusted_keys(record["signature"]["public_key"])
    key_id = record["signature"]["key_id"]
    refused_everywhere(tmp_path, line, "small order", keys=frozenset({key_id}))


def test_attestation_signed_by_the_identity_key_is_refused(tmp_path):
    attestation = {"response": {"a": "ok"}}
    attestation["signature"] = {
        "alg": "ed25519",
        "key_id": hashlib.sha256(IDENTITY).hexdigest()[:16],
        "public_key": base64.b64encode(IDENTITY).decode(),
        "value": base64.b64encode(IDENTITY_FORGERY).decode(),
        "version": 1,
    }
    line = line_of(probe_measurement(1, {"attestation": attestation}))
    refused_everywhere(tmp_path, line, "control attestation: public key is a point of small order")


def test_non_canonical_spelling_of_an_honest_key_is_refused():
    # y + p is above 2**255 for every real key but y < 19: build one from the rule itself.
    raw = (2**255 - 19 + 5).to_bytes(32, "little")
    assert "not canonically encoded" in public_key_problem(raw)


# --------------------------------------------------------------------------- #
# trust first                                                                  #
# --------------------------------------------------------------------------- #


def test_an_untrusted_line_is_refused_before_it_is_parsed_or_canonicalised():
    stranger = generate_ephemeral()
    trusted = LinePolicy(trusted_keys=frozenset({PROBE_KEY.key_id}))
    # A huge line, signed by a stranger, that cannot even be canonicalised (a
    # lone surrogate) and whose floats would send canonicalisation to the slow path.
    record = probe_measurement(1)
    record["junk"] = [0.1 * n for n in range(150_000)]
    line = line_of(record, stranger)
    line = line.replace(b'"junk":[', b'"junk":["\\ud800",', 1)
    assert len(line) > 1_000_000
    assert "not canonical JSON" in check_line(line, LinePolicy(max_line_bytes=None)).reason
    refused = check_line(line, LinePolicy(trusted.trusted_keys, max_line_bytes=None))
    assert refused.reason == f"key {stranger.key_id} is not in the trusted keys"
    # Not even parsed: broken JSON around a stranger's signature is refused as untrusted.
    broken = line[: len(line) // 2] + b"{{{" + line[len(line) // 2 :]
    assert check_line(broken, LinePolicy(max_line_bytes=None)).reason.startswith("not valid JSON")
    assert check_line(broken, LinePolicy(trusted.trusted_keys, max_line_bytes=None)).reason == (
        f"key {stranger.key_id} is not in the trusted keys"
    )
    assert untrusted_line_reason(b"x" * 1000, {PROBE_KEY.key_id}).startswith("not signed by")
    result = verify_bytes(broken + b"\n", trusted_keys={PROBE_KEY.key_id})
    assert [p.reason for p in result.problems] == [
        f"key {stranger.key_id} is not in the trusted keys"
    ]


def test_a_decoy_trusted_key_inside_the_record_does_not_let_a_line_in():
    stranger = generate_ephemeral()
    honest = json.loads(line_of(probe_measurement(1)))
    decoy = probe_measurement(2)
    decoy["test_keys"]["decoy"] = {"signature": honest["signature"]}
    line = line_of(decoy, stranger)
    assert untrusted_line_reason(line, {PROBE_KEY.key_id}) == ""  # the scan is fooled...
    refused = check_line(line, LinePolicy(trusted_keys=frozenset({PROBE_KEY.key_id})))
    assert refused.reason == f"key {stranger.key_id} is not in the trusted keys"  # ...not the rule


def test_trusted_lines_pass_the_scan_whatever_list_form():
    line = line_of(probe_measurement(1))
    for entry in (PROBE_KEY.key_id, PROBE_KEY.public_key_b64):
        assert untrusted_line_reason(line, {entry}) == ""
        assert check_line(line, LinePolicy(trusted_keys=frozenset({entry}))).ok


def test_reasons_are_bounded_whatever_the_line_quotes():
    # The reference canonicaliser names the path of what it cannot write: here a
    # member name of the sender's choosing, 50,000 characters long.
    line = line_of(probe_measurement(1))
    line = line[:1] + b'"' + b"k" * 50_000 + b'":"\\ud800",' + line[1:]
    reason = check_line(line, LinePolicy(max_line_bytes=None)).reason
    assert reason.startswith("not canonical JSON: cannot canonicalise kkk"), reason[:80]
    assert len(reason) == 303 and reason.endswith("...")
    assert len(verify_bytes(line + b"\n").problems[0].reason) == 303


def test_signature_with_a_small_order_r_is_refused():
    # A signer who knows its secret scalar a can sign with R = identity and
    # S = k * a mod L (RFC 8032 5.1.7: [S]B = R + [k]A holds). OpenSSL accepts
    # it, libsodium does not: a line signed so must fail here too.
    seed = bytes(range(32))
    key = Ed25519PrivateKey.from_private_bytes(seed)
    public = key.public_key().public_bytes_raw()
    digest = bytearray(hashlib.sha512(seed).digest()[:32])
    digest[0] &= 248
    digest[31] = (digest[31] & 127) | 64
    scalar = int.from_bytes(digest, "little")
    order = 2**252 + 27742317777372353535851937790883648493
    message = b"any message"
    k = int.from_bytes(hashlib.sha512(IDENTITY + public + message).digest(), "little") % order
    forged = IDENTITY + (k * scalar % order).to_bytes(32, "little")
    Ed25519PublicKey.from_public_bytes(public).verify(forged, message)  # accepted below us
    assert not verify_raw(public, forged, message)
    assert verify_raw(public, key.sign(message), message)
    with pytest.raises(independent_verifier.Invalid, match="R has small order"):
        independent_verifier.check_r(forged)
    independent_verifier.check_r(key.sign(message))


def test_two_measurements_with_one_uid_are_refused(tmp_path):
    # Two runs of one file, each honestly signed, reuse a measurement_uid for
    # different content: collectors and aggregations would keep only one.
    first, second = ReportSigner(PROBE_KEY), ReportSigner(PROBE_KEY)
    twin = probe_measurement(7)
    other = dict(twin, probe_cc="DE")
    data = first.sign_last(twin).line + second.sign_last(other).line
    ours = verify_bytes(data)
    assert [p.line for p in ours.problems] == [2]
    assert f"measurement_uid {twin['measurement_uid']} is also that of line 1" in (
        ours.problems[0].reason)
    assert [n for n, _ in independent_verifier.verify(data).problems] == [2]
    _, ingested = ingest_bytes(tmp_path, data)
    assert (ingested.measurements, ingested.rejected) == (1, 1)
    assert "with different content" in ingested.rejections[0][2]
