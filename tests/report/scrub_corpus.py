"""A fixed corpus of hostile and harmless texts, and what the scrubber made of them.

``tests/report/data/scrub_golden.json`` holds the results of :func:`results`
computed by the scrubber *before* it memoised anything or pre-filtered texts.
``test_scrub_cache.py`` recomputes them and requires the same bytes: a cache or
a short cut must never change what a report says.

Regenerate only when the scrubber's output is meant to change:
``cd tests && ../.venv/bin/python -m report.scrub_corpus > report/data/scrub_golden.json``.
"""

from __future__ import annotations

import base64
import gzip
import json
import random
import sys
from typing import Any

from probe.report import scrub

from .test_scrub import (
    ADDRESSES,
    ENCODINGS,
    FORMS,
    _encode,
    _v4_forms,
    _v6_forms,
    hostile_measurement,
)

NEAR_MISSES = [
    "198.51.100.70", "198.51.100.17", "1198.51.100.7", "198.51.100.77", "98.51.100.7",
    "2001:db8:100:2::2", "2001:db8:100:10::2", "12:30:45", "v1.2.3.4",
    "aa:bb:cc:dd:ee:ff", "3325256712", "sha256:c63364070000", "127.0.0.1",
    "2024-01-15T12:30:45.123456Z", "203.0.113.7", "", "address", "port", "failure",
    "generic_timeout_error", "connection_reset", "tcp", "TLSv1.3", "x12.scale.test",
    "endpoint:e1234", "\u06f1\u06f2\u06f3", "&amp;", "%%", "\\\\", "AAAAAAAAAAAA",
]
# Ways a form is wrapped in a field: the wrapper's text, and how to write it.
WRAPPERS = {
    "plain": lambda t: t,
    "sentence": lambda t: f"Your address is {t}, logged.",
    "base64": lambda t: base64.b64encode(t.encode("utf-8")).decode(),
    "base64 offset": lambda t: "c=" + base64.b64encode(b"\x01" + t.encode("utf-8")).decode(),
    "base64 gzip": lambda t: base64.b64encode(gzip.compress(t.encode("utf-8"), mtime=0)).decode(),
    "base64 utf-16": lambda t: base64.b64encode(t.encode("utf-16-le")).decode(),
}


def _texts() -> list[str]:
    texts = list(NEAR_MISSES)
    for form in FORMS.values():
        texts += [wrap(form) for wrap in WRAPPERS.values()]
    chooser = random.Random(8785)
    for _ in range(120):
        v4 = f"{chooser.randint(11, 223)}.{chooser.randint(0, 255)}.{chooser.randint(0, 255)}." \
             f"{chooser.randint(1, 254)}"
        v6 = f"2001:db8:{chooser.randint(0, 0xffff):x}:{chooser.randint(0, 0xffff):x}::" \
             f"{chooser.randint(1, 0xffff):x}"
        form = chooser.choice(_v4_forms(v4) + _v6_forms(v6) + _v4_forms(ADDRESSES[0]))
        how = chooser.choice(ENCODINGS)
        texts.append(chooser.choice(list(WRAPPERS.values()))(_encode(form, how)))
    return texts


def _leaks(value: Any) -> list[list[str]]:
    return [[leak.where, leak.form] for leak in scrub.find_leaks(value, ADDRESSES)]


def _measurement(value: Any) -> Any:
    try:
        return scrub.scrub_measurement(value, ADDRESSES)
    except scrub.ScrubError as error:
        return {"ScrubError": str(error)}


def _fixed_dns_ids(value: Any) -> None:
    """Set the random DNS message ids of raw replies to 0, so the corpus is fixed."""
    if isinstance(value, list):
        for item in value:
            _fixed_dns_ids(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            if key == "raw_response" and isinstance(item, str):
                value[key] = base64.b64encode(b"\0\0" + base64.b64decode(item)[2:]).decode()
            else:
                _fixed_dns_ids(item)


def results() -> dict[str, Any]:
    texts = _texts()
    hostile = hostile_measurement()
    hostile["measurement_uid"] = "20261128021500.000000_ZZ_svc_0123456789abcdef"
    _fixed_dns_ids(hostile)
    document = {text: text for text in texts}
    certificates = {"test_keys": {f"seen by {ADDRESSES[0]}": {
        scrub.CERTIFICATES_KEY: [{"format": "base64", "data": text} for text in texts[::7]],
    }}}
    return {
        "texts": texts,
        "scrub_text": [scrub.scrub_text(t, ADDRESSES) for t in texts],
        "scrub_bytes": [
            base64.b64encode(scrub.scrub_bytes(t.encode("utf-8"), ADDRESSES)).decode()
            for t in texts
        ],
        "find_leaks": [_leaks({"field": t}) for t in texts],
        "document_leaks": _leaks(document),
        "document": _measurement(document),
        "hostile_leaks": _leaks(hostile),
        "hostile": _measurement(hostile),
        "lines": scrub.scrub_lines([hostile, {"test_name": "x", "k": texts}], ADDRESSES),
        # Certificates are never altered: one holding the address fails its measurement,
        # and the error names each place (the key's own address scrubbed) and form.
        "certificate": _measurement(certificates),
        "certificate_leaks": _leaks(certificates),
    }


if __name__ == "__main__":
    json.dump(results(), sys.stdout, ensure_ascii=True, indent=0, sort_keys=True)
    sys.stdout.write("\n")
