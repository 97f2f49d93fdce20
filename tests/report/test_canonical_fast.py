"""canonical_bytes writes most values with the standard library's C encoder: it must
give exactly the bytes of the ``rfc8785`` package, and fall back to it for the rest."""

from __future__ import annotations

import struct

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from probe.report import canonical
from probe.report.canonical import CanonicalizationError, canonical_bytes

floats = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(0, 2**64 - 1).map(lambda n: struct.unpack("<d", struct.pack("<Q", n))[0]),
    st.integers(-(2**54), 2**54).map(float),
    st.sampled_from([0.0, -0.0, 1e-4, 9.999e-05, 1e-7, 1e16, 1e21, 2.0**53, 0.1, 5e-324]),
)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**53) + 1, 2**53 - 1), floats,
    st.text(), st.text(st.characters(min_codepoint=0, max_codepoint=0x3F)),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.lists(children, max_size=3).map(tuple),
        st.dictionaries(st.text(max_size=6), children, max_size=5),
    ),
    max_leaves=30,
)


@settings(max_examples=600, deadline=None)
@given(values)
def test_same_bytes_as_rfc8785(value):
    try:
        expected = rfc8785.dumps(value)
    except rfc8785.CanonicalizationError:
        with pytest.raises(CanonicalizationError):
            canonical_bytes(value)
        return
    assert canonical_bytes(value) == expected


def test_every_character_is_written_as_rfc8785_writes_it():
    text = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF)
    bmp = text[:0xF800]  # keys beyond U+FFFF sort differently in UTF-16: slow path
    value = {bmp: text, "\x7f\x00\u2028": [text[:300]], "\ufb33": 2}
    assert canonical._fast_canonical_bytes(value) == rfc8785.dumps(value)
    value["\U0001f600"] = 1  # RFC 8785 section 3.2.3's example: sorts before U+FB33
    assert canonical_bytes(value) == rfc8785.dumps(value)


@pytest.mark.parametrize("value", [
    {"t0": 0.5123, "t": 12.0, "runtime": 3.25, "n": [1, -0.0, 2.5e-3]},
    {"plain": ["text", True, None, 12, {"nested": ("a", 1)}]},
])
def test_usual_measurements_take_the_fast_path(value, monkeypatch):
    monkeypatch.setattr(rfc8785, "dumps", lambda _: pytest.fail("took the slow path"))
    assert canonical_bytes(value)


def test_a_string_subclass_is_its_string():
    # StrEnum members (verdicts, checks) are strings: the fast path writes RFC 8785's
    # bytes for them, whatever their class says of itself
    from probe.vocabulary import VerdictName

    odd = type("Str", (str,), {"__str__": lambda self: "not this"})("subclass")
    for value in (VerdictName.UDP_BLOCKED, odd, {"v": [VerdictName.OK, odd]}):
        assert canonical._fast_canonical_bytes(value) == rfc8785.dumps(value)


@pytest.mark.parametrize("value", [
    1e-05, 1e16, 1e21, 2.0**60, float("nan"), 2**53, {"\U0001f600": 1, "\ufb33": 2},
    "\ud800", {1: "x"}, {"x": b"bytes"},
])
def test_unusual_values_go_to_rfc8785(value):
    with pytest.raises(canonical._NotPlain):
        canonical._fast_canonical_bytes(value)
