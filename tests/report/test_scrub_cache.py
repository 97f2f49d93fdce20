"""The scrubber's short cuts never change a result: the same output as before them on
a fixed hostile corpus, and caches that cannot hand back a stale or foreign answer."""

from __future__ import annotations

import base64
import copy
import gzip
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import load_pem_x509_certificate

from probe.lab.pki import create_root_ca, issue_leaf
from probe.report.scrub import (
    CERTIFICATES_KEY,
    MEMO_BUDGET,
    MEMO_TEXT,
    SCRUBBED,
    Leak,
    ScrubError,
    _Memo,
    _Targets,
    find_leaks,
    scrub_measurement,
    scrub_text,
)

from . import scrub_corpus
from .test_scrub import ADDRESSES, V4, V4_PACKED

GOLDEN = Path(__file__).parent / "data" / "scrub_golden.json"


def test_results_on_the_hostile_corpus_are_exactly_as_before():
    expected = json.loads(GOLDEN.read_text())
    # twice: with the memos as other tests left them, then with every text in them
    for _ in range(2):
        # through JSON, as the golden file went: tuples become lists
        actual = json.loads(json.dumps(scrub_corpus.results(), sort_keys=True))
        assert actual.keys() == expected.keys()
        for name in expected:
            assert actual[name] == expected[name], name


OTHER_V4 = "203.0.113.200"
OTHER_V6 = "2001:db8:77::1"


def test_a_text_clean_for_some_addresses_is_still_scrubbed_for_others():
    text = f"Your address is {V4}, see {base64.b64encode(V4.encode()).decode()}"
    assert scrub_text(text, [OTHER_V4, OTHER_V6]) == text
    assert find_leaks({"page": text}, [OTHER_V4, OTHER_V6]) == []
    assert V4 not in scrub_text(text, ADDRESSES) and SCRUBBED in scrub_text(text, ADDRESSES)
    assert find_leaks({"page": text}, ADDRESSES)
    # and back: the first addresses' memo did not learn the second's answers
    assert scrub_text(text, [OTHER_V4, OTHER_V6]) == text
    assert find_leaks({"page": text}, [OTHER_V4]) == []


def test_a_clean_text_seen_before_does_not_hide_a_leak_next_to_it():
    clean = base64.b64encode(b"\x00\xffharmless payload of a page").decode()
    assert find_leaks({"a": clean, "b": [clean]}, ADDRESSES) == []
    for planted in (f"{clean} {V4}", f"{V4}{clean}", base64.b64encode(
            base64.b64decode(clean) + V4_PACKED).decode()):
        assert find_leaks({"a": planted}, ADDRESSES), planted
        assert V4 not in scrub_text(planted, ADDRESSES)


def test_a_leak_recorded_under_one_field_is_not_remembered_clean_under_another():
    # The same run in two fields: the checker decodes it once, records the leak
    # under the first field and skips it in the second. The second text must not
    # be remembered as clean, or a later measurement holding it alone would pass.
    run = base64.b64encode(gzip.compress(f"client={V4}".encode(), mtime=0)).decode()
    first, second = f"a={run}", f"b={run};"
    assert not any(f in second for f in _Targets.of(ADDRESSES).b64_fragments)
    assert find_leaks({"x": first, "y": second}, ADDRESSES)
    assert find_leaks({"z": second}, ADDRESSES) == [
        Leak("z (base64) (gzip)", "IPv4 address")]


def test_a_certificate_seen_clean_under_other_addresses_still_fails_the_measurement():
    leaf = issue_leaf(create_root_ca("cache test root"), ["web.example.test", V4])
    data = base64.b64encode(
        load_pem_x509_certificate(leaf.certificate_pem).public_bytes(Encoding.DER)).decode()
    measurement = {"test_keys": {"tls_handshakes": [{CERTIFICATES_KEY: [
        {"format": "base64", "data": data}]}]}}
    for _ in range(2):
        assert scrub_measurement(measurement, [OTHER_V4, OTHER_V6]) == measurement
    with pytest.raises(ScrubError) as error:
        scrub_measurement(measurement, ADDRESSES)
    assert V4 not in str(error.value)
    assert any("peer_certificates[0].data (base64)" in leak.where for leak in error.value.leaks)


def test_the_memo_forgets_when_full_and_skips_long_texts():
    memo = _Memo()
    memo.put(("x" * (MEMO_TEXT + 1), 3), "long")
    assert memo.get(("x" * (MEMO_TEXT + 1), 3)) is None
    for number in range(MEMO_BUDGET // 1000 + 10):
        memo.put((f"{number:01000d}", 3), "")
    assert memo._size <= MEMO_BUDGET
    assert len(memo._results) < MEMO_BUDGET // 1000
    assert memo.get((f"{number:01000d}", 3)) == ""


def test_equal_address_lists_share_one_memo_and_different_ones_do_not():
    assert _Targets.of(ADDRESSES) is _Targets.of(list(ADDRESSES))
    assert _Targets.of(ADDRESSES).scrubbed is not _Targets.of([V4]).scrubbed
    assert _Targets.of(ADDRESSES).scrubbed is not _Targets.of(ADDRESSES).checked_clean


def test_a_utf8_sequence_cut_by_the_latin1_pass_does_not_crash_the_scrubber():
    # "\xc2\xb9" (superscript one) reads as "Â¹" in Latin-1, where "¹98.51.100.7" is
    # the address: its replacement leaves a lone "\xc2", which is no UTF-8 any more.
    planted = base64.b64encode("¹98.51.100.7".encode()).decode()
    cleaned = scrub_text(f"seen={planted}", ADDRESSES)
    assert base64.b64decode(cleaned.removeprefix("seen=")) == b"\xc2" + SCRUBBED.encode()
    assert find_leaks({"cookie": cleaned}, ADDRESSES) == []


def test_the_scrubbed_copy_shares_nothing_mutable_with_the_measurement():
    attestation = {"response": {"endpoint_id": "web"}, "signature": {"value": "x"}}
    measurement = {"test_keys": {
        "control": {"attestation": [attestation]},
        CERTIFICATES_KEY: [{"data": "AAAA"}],
        "queries": [{"answers": [V4, "203.0.113.5"]}],
        "odd": {"bytes": bytearray(b"ab")},
    }}
    before = copy.deepcopy(measurement)
    cleaned = scrub_measurement(measurement, ADDRESSES)
    assert measurement == before
    assert cleaned["test_keys"]["queries"][0]["answers"] == [SCRUBBED, "203.0.113.5"]
    cleaned["test_keys"]["control"]["attestation"][0]["response"]["endpoint_id"] = "changed"
    cleaned["test_keys"][CERTIFICATES_KEY][0]["data"] = "changed"
    cleaned["test_keys"]["odd"]["bytes"].append(1)
    assert measurement == before
