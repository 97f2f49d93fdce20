"""The upload protocol end to end, against a collector on loopback (docs/upload-protocol.md)."""

from __future__ import annotations

import gzip
import json
import logging
import socket
import time
from urllib.parse import urlsplit

from probe.collector.limits import Limits
from probe.collector.lines import LinePolicy
from probe.report.verify import verify_file

from .helpers import post, signed_run, upload

UPLOADER = ("127.0.0.2", 0)  # a loopback address of its own, to look for in logs


def statuses(payload):
    return [r["status"] for r in payload["results"]]


def test_upload_store_duplicate_and_tampered(start_collector, tmp_path):
    collector = start_collector()
    key, lines = signed_run()
    status, _, payload = upload(collector.url, lines)
    assert status == 200 and statuses(payload) == ["stored"] * 4
    assert [r["line"] for r in payload["results"]] == [1, 2, 3, 4]
    assert payload["results"][0]["measurement_uid"] == json.loads(lines[0])["measurement_uid"]
    # The sealed last line is a measurement too: every result names its uid.
    assert payload["results"][3]["measurement_uid"] == json.loads(lines[3])["measurement_uid"]
    (stored,) = (tmp_path / "data" / key.key_id).glob("*.jsonl")
    assert stored.read_bytes() == b"".join(lines)
    assert verify_file(stored, require_end=True).ok

    _, more = signed_run(key)
    tampered = more[0].replace(b'"probe_asn":"AS197207"', b'"probe_asn":"AS1"')
    status, _, payload = upload(collector.url, [lines[1], tampered, more[1]])
    assert status == 200
    assert statuses(payload) == ["duplicate", "rejected", "stored"]
    assert payload["results"][1]["reason"] == (
        "signature does not match (content changed after signing)"
    )
    assert payload["results"][1]["measurement_uid"] == json.loads(more[0])["measurement_uid"]
    assert stored.read_bytes() == b"".join(lines)  # the tampered one is nowhere


def test_gzip_and_a_single_measurement(start_collector):
    collector = start_collector()
    _, lines = signed_run()
    status, _, payload = upload(collector.url, lines, gzip=True)
    assert status == 200 and statuses(payload) == ["stored"] * 4
    _, other = signed_run()
    single = other[0].rstrip(b"\n")  # one JSON object, no trailing newline
    status, _, payload = post(
        collector.url + "/v1/measurements", single, content_type="application/json"
    )
    assert status == 200 and statuses(payload) == ["stored"]


def test_whole_request_errors(start_collector):
    collector = start_collector(Limits(max_body_bytes=64 * 1024, max_lines=10))
    url = collector.url + "/v1/measurements"
    _, lines = signed_run()

    def error(status, body, **kwargs):
        got, headers, payload = post(url, body, **kwargs)
        assert got == status, payload
        assert headers["Content-Type"].startswith("application/json")
        return payload["error"]

    assert "not valid gzip" in error(400, b"plain text", headers={"Content-Encoding": "gzip"})
    assert "only gzip" in error(400, lines[0], headers={"Content-Encoding": "br"})
    assert "not application/x-ndjson" in error(400, lines[0], content_type="text/plain")
    assert "not UTF-8" in error(400, b'{"a":"\xff"}\n')
    assert "cut short" in error(
        400, gzip.compress(b"".join(lines))[:-10], headers={"Content-Encoding": "gzip"}
    )
    assert "larger than 65536" in error(413, b"x" * 70_000)
    bomb = gzip.compress(b"\n" * (50 * 1024 * 1024))  # 50 MiB of newlines in ~50 KiB
    assert len(bomb) < 65536
    assert "after gunzip" in error(413, bomb, headers={"Content-Encoding": "gzip"})
    assert "11 lines in one request" in error(413, b"{}\n" * 11)
    assert "no line" in error(400, b"")
    # The collector is still fine.
    assert upload(collector.url, lines)[0] == 200


def test_line_too_long_is_a_rejected_line(start_collector):
    _, lines = signed_run()
    sizes = [len(line.rstrip(b"\n")) for line in lines]
    limit = max(sizes) - 1  # the longest line is over it, shorter ones (two endpoints) not
    collector = start_collector(Limits(max_line_bytes=limit))
    status, _, payload = upload(collector.url, lines)
    assert status == 200
    expected = ["rejected" if size > limit else "stored" for size in sizes]
    assert statuses(payload) == expected and "stored" in expected
    longest = sizes.index(max(sizes))
    assert f"over the limit of {limit}" in payload["results"][longest]["reason"]


def test_trusted_keys_only(start_collector):
    key, lines = signed_run()
    stranger, theirs = signed_run()
    collector = start_collector(policy=LinePolicy(trusted_keys=frozenset({key.key_id})))
    assert statuses(upload(collector.url, lines, key=key)[2]) == ["stored"] * 4
    # A stranger naming their own key is refused before the body is read.
    status, _, payload = upload(collector.url, theirs, key=stranger)
    assert status == 403 and f"probe key {stranger.key_id} is not enrolled" in payload["error"]
    # No key named at all: refused too, when the collector enrols its probes.
    status, _, payload = upload(collector.url, theirs)
    assert status == 403 and "X-Probe-Key" in payload["error"]
    # Naming a trusted key does not let other keys' lines in: one upload, one key.
    payload = upload(collector.url, theirs, key=key)[2]
    assert statuses(payload) == ["rejected"] * 4
    assert "not in the trusted keys" in payload["results"][0]["reason"]
    status, _, payload = upload(collector.url, lines, headers={"X-Probe-Key": "not base64!"})
    assert status == 400 and "not a base64 Ed25519 public key" in payload["error"]


def test_the_named_key_must_sign_every_line_without_a_trusted_list(start_collector):
    key, lines = signed_run()
    other, theirs = signed_run()
    collector = start_collector()
    payload = upload(collector.url, [lines[0], theirs[0]], key=key)[2]
    assert statuses(payload) == ["stored", "rejected"]
    # Older uploaders name no key: still accepted when no trusted list is configured.
    assert statuses(upload(collector.url, theirs)[2]) == ["stored"] * 4


def test_rate_limit_per_address(start_collector):
    collector = start_collector(Limits(address_rate=0.5, address_burst=2))
    _, lines = signed_run()
    assert upload(collector.url, lines[:1])[0] == 200
    assert upload(collector.url, lines[1:2])[0] == 200
    status, headers, payload = upload(collector.url, lines[2:3])
    assert status == 429 and int(headers["Retry-After"]) == 2
    assert payload["error"] == "too many requests from your address"
    # Another address has its own budget.
    assert upload(collector.url, lines[2:3], source_address=UPLOADER)[0] == 200


def test_rate_limit_per_key_counts_new_lines_only(start_collector):
    collector = start_collector(Limits(key_rate=1, key_burst=5))
    key, lines = signed_run()  # 4 lines
    assert upload(collector.url, lines)[0] == 200
    assert upload(collector.url, lines)[0] == 200  # duplicates cost nothing
    _, more = signed_run(key)
    status, headers, payload = upload(collector.url, more)
    assert status == 429 and headers["Retry-After"] == "3"
    assert payload["error"] == f"probe key {key.key_id} is uploading too fast"
    assert upload(collector.url, more[:1])[0] == 200  # the refused request took nothing


def _raw_connection(url: str) -> socket.socket:
    parts = urlsplit(url)
    return socket.create_connection((parts.hostname, parts.port), timeout=10)


def _partial_upload(url: str, body: bytes) -> socket.socket:
    sock = _raw_connection(url)
    head = (
        f"POST /v1/measurements HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ndjson\r\n"
        f"Content-Length: {len(body) + 100}\r\n\r\n"
    ).encode()
    sock.sendall(head + body)
    return sock


def _response_status(sock: socket.socket) -> int:
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return int(data.split(b" ", 2)[1]) if data else 0


def test_busy_collector_answers_503_at_once_and_slow_bodies_time_out(start_collector):
    collector = start_collector(Limits(max_concurrent_uploads=1, body_timeout=1.0))
    _, lines = signed_run()
    slow = _partial_upload(collector.url, lines[0])
    time.sleep(0.2)
    started = time.monotonic()
    status, headers, payload = upload(collector.url, lines)
    assert status == 503 and headers["Retry-After"] == "1" and "busy" in payload["error"]
    assert time.monotonic() - started < 0.5
    assert _response_status(slow) == 408  # the slow body ran out of time
    slow.close()
    assert upload(collector.url, lines)[0] == 200


def test_silent_connections_are_closed_and_their_number_bounded(start_collector):
    collector = start_collector(Limits(header_timeout=0.5, max_connections=3))
    silent = [_raw_connection(collector.url) for _ in range(3)]
    time.sleep(0.1)
    extra = _raw_connection(collector.url)  # over the limit: closed at once
    assert extra.recv(10) == b""
    for sock in silent:
        sock.settimeout(5)
        started = time.monotonic()
        assert sock.recv(10) == b""  # closed by the collector after ~0.5 s
        assert time.monotonic() - started < 3
        sock.close()
    time.sleep(1.2)  # the guard forgets closed connections
    _, lines = signed_run()
    assert upload(collector.url, lines)[0] == 200


def test_health(start_collector):
    collector = start_collector()
    parts = urlsplit(collector.url)
    sock = _raw_connection(collector.url)
    sock.sendall(
        f"GET /health HTTP/1.1\r\nHost: {parts.hostname}\r\nConnection: close\r\n\r\n".encode()
    )
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"\r\n\r\nok")


def test_the_uploader_address_is_never_logged_or_stored(start_collector, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    collector = start_collector(Limits(address_rate=0.1, address_burst=1))
    _, lines = signed_run()
    bad = [lines[0].replace(b"IR", b"DE")] + lines[1:]
    assert upload(collector.url, bad, source_address=UPLOADER)[0] == 200
    assert upload(collector.url, lines, source_address=UPLOADER)[0] == 429
    collector.stop()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "rejected line 1" in logged and "429" in logged
    assert "127.0.0.2" not in logged
    for path in (tmp_path / "data").rglob("*"):
        if path.is_file():
            assert b"127.0.0.2" not in path.read_bytes()
