"""The scrubber's short cuts never change a result: the same output as before them on
a fixed hostile corpus, and caches that cannot hand back a stale or foreign answer."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from probe.report.scrub import SCRUBBED, find_leaks, scrub_text

from . import scrub_corpus
from .test_scrub import ADDRESSES

GOLDEN = Path(__file__).parent / "data" / "scrub_golden.json"


def test_results_on_the_hostile_corpus_are_exactly_as_before():
    expected = json.loads(GOLDEN.read_text())
    # through JSON, as the golden file went: tuples become lists
    actual = json.loads(json.dumps(scrub_corpus.results(), sort_keys=True))
    assert actual.keys() == expected.keys()
    for name in expected:
        assert actual[name] == expected[name], name


def test_a_utf8_sequence_cut_by_the_latin1_pass_does_not_crash_the_scrubber():
    # "\xc2\xb9" (superscript one) reads as "Â¹" in Latin-1, where "¹98.51.100.7" is
    # the address: its replacement leaves a lone "\xc2", which is no UTF-8 any more.
    planted = base64.b64encode("¹98.51.100.7".encode()).decode()
    cleaned = scrub_text(f"seen={planted}", ADDRESSES)
    assert base64.b64decode(cleaned.removeprefix("seen=")) == b"\xc2" + SCRUBBED.encode()
    assert find_leaks({"cookie": cleaned}, ADDRESSES) == []
