"""The signed targets feed, end to end over a real loopback HTTP server.

The server below speaks raw HTTP/1.1 so that each failure is exactly the one a
volunteer meets: a body cut before its Content-Length, a server that stalls
mid-body, an oversize answer, an error status. Every refusal must leave the
volunteer's current copy as it was, byte for byte, and still used by
``probe targets list``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from probe.net.live import LiveNetwork
from probe.net.network import FetchRequest
from probe.report import keys
from probe.report.canonical import canonical_bytes
from probe.targets import PACKAGE_DIR, default_targets_path, load_targets
from probe.targets_feed import (
    FEED_CONTEXT,
    MAX_FEED_BYTES,
    FeedError,
    FeedPin,
    FeedStore,
    active_feed,
    check_feed,
    check_url,
    describe_changes,
    resolve_pin,
    sign_feed,
    update,
)

PROBE = [sys.executable, "-m", "probe"]
ROOT_PEM = PACKAGE_DIR / "ca" / "signal-root.pem"

TARGETS = """\
version: 1
services:
  - id: alpha
    name: Alpha
    endpoints:
      - {{id: alpha-web, host: 127.0.0.1, port: {port}, checks: [tcp, tls],
         sni: alpha.example.org, ca: ca/root.pem}}
      - {{id: alpha-api, host: 127.0.0.1, port: {port}, checks: [tcp]}}
"""

TARGETS_V2 = TARGETS + """\
  - id: beta
    name: Beta
    endpoints:
      - {{id: beta-web, host: 127.0.0.1, port: 9, checks: [tcp]}}
"""


# --------------------------------------------------------------------------- #
# a scripted HTTP server on loopback                                           #
# --------------------------------------------------------------------------- #


@dataclass
class Answer:
    body: bytes
    status: int = 200
    length: int | None = None  # Content-Length sent (None: the body's; -1: none)
    cut: int | None = None  # send only this many body bytes, then close
    stall: float = 0.0  # after what is sent, wait this long before closing (bounded)


class FeedServer:
    """Answers GET <path> with the scripted :class:`Answer`; counts requests."""

    def __init__(self) -> None:
        self.answers: dict[str, Answer] = {}
        self.requests: list[str] = []
        self.sent_partial = threading.Event()
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(30):
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1].decode()
                self.requests.append(path)
                answer = self.answers.get(path, Answer(b"not found", status=404))
                length = len(answer.body) if answer.length is None else answer.length
                lines = [f"HTTP/1.1 {answer.status} X", "Connection: close"]
                if length >= 0:
                    lines.append(f"Content-Length: {length}")
                writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
                body = answer.body if answer.cut is None else answer.body[: answer.cut]
                for start in range(0, len(body), 65536):
                    writer.write(body[start:start + 65536])
                    await writer.drain()
                if answer.cut is not None:
                    self.sent_partial.set()
                if answer.stall:
                    await asyncio.sleep(min(answer.stall, 25))
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            writer.close()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@contextlib.contextmanager
def feed_server() -> Iterator[FeedServer]:
    server = FeedServer()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    started = asyncio.run_coroutine_threadsafe(
        asyncio.start_server(server.handle, "127.0.0.1", 0), loop).result(5)
    server.port = started.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        async def stop() -> None:
            started.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


# --------------------------------------------------------------------------- #
# fixtures                                                                     #
# --------------------------------------------------------------------------- #


@dataclass
class Ngo:
    dir: Path
    key: keys.SigningKey
    key_path: Path

    def targets_file(self, text: str, name: str = "targets.yaml") -> Path:
        path = self.dir / name
        path.write_text(text)
        return path

    def sign(self, text: str, version: int, signed_at: datetime.datetime | None = None,
             key: keys.SigningKey | None = None) -> bytes:
        return sign_feed(text, "targets.yaml", self.dir, key or self.key, version,
                         signed_at or datetime.datetime.now(datetime.UTC).replace(microsecond=0))


@pytest.fixture
def ngo(tmp_path: Path) -> Ngo:
    directory = tmp_path / "ngo"
    (directory / "ca").mkdir(parents=True)
    (directory / "ca" / "root.pem").write_bytes(ROOT_PEM.read_bytes())
    key_path = directory / "feed-key.pem"
    return Ngo(directory, keys.create_key(key_path), key_path)


@pytest.fixture
def store(tmp_path: Path) -> FeedStore:
    return FeedStore(tmp_path / "config" / "probe")


def env(tmp: Path) -> dict[str, str]:
    return {**os.environ, "XDG_CONFIG_HOME": str(tmp / "config"), "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}


def probe(tmp: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*PROBE, *args], capture_output=True, text=True, timeout=timeout,
                          env=env(tmp))


def do_update(store: FeedStore, pin: FeedPin, timeout: float = 10):
    async def go():
        network = LiveNetwork()
        try:
            return await update(store, network, pin, timeout)
        finally:
            await network.aclose()

    return asyncio.run(go())


def installed(ngo: Ngo, store: FeedStore, server: FeedServer, version: int = 5) -> FeedPin:
    """A volunteer who already holds version ``version`` of the feed."""
    server.answers["/feed"] = Answer(ngo.sign(TARGETS.format(port=443), version))
    pin = FeedPin(server.url("/feed"), ngo.key.public_key_b64)
    assert do_update(store, pin).replaced
    return pin


def unchanged(store: FeedStore, pin: FeedPin, before: bytes, version: int) -> None:
    assert store.current_path.read_bytes() == before
    active = active_feed(store)
    assert active is not None and active.feed.version == version


# --------------------------------------------------------------------------- #
# the format                                                                   #
# --------------------------------------------------------------------------- #


def independent_sign(feed: dict, key: keys.SigningKey) -> bytes:
    """Signs as docs/targets.md says, without probe's signer (the spec, checked)."""
    signature = {"version": 1, "alg": "ed25519", "key_id": key.key_id,
                 "public_key": key.public_key_b64}
    message = FEED_CONTEXT + canonical_bytes({**feed, "signature": signature})
    signature["value"] = base64.b64encode(key.sign(message)).decode()
    return json.dumps({**feed, "signature": signature}, indent=2).encode()


def test_a_feed_signed_from_the_documentation_alone_verifies(ngo):
    feed = {"format": "probe-targets-feed", "format_version": 1, "version": 3,
            "signed_at": "2026-12-01T10:00:00Z", "targets": TARGETS.format(port=443),
            "ca_files": {"ca/root.pem": ROOT_PEM.read_text()}}
    checked = check_feed(independent_sign(feed, ngo.key), ngo.key.public_key_b64)
    assert checked.version == 3
    assert checked.targets.service("alpha").endpoints[0].ca_pem == load_targets(
        ngo.targets_file(TARGETS.format(port=443))).service("alpha").endpoints[0].ca_pem


def test_the_feed_carries_its_ca_files_and_never_reads_the_disk(ngo):
    raw = ngo.sign(TARGETS.format(port=443), 1)
    (ngo.dir / "ca" / "root.pem").unlink()  # the volunteer has no such file
    feed = check_feed(raw, ngo.key.public_key_b64)
    assert "BEGIN CERTIFICATE" in (feed.targets.service("alpha").endpoints[0].ca_pem or "")
    # a CA path the feed does not carry is refused, not looked up on disk
    obj = json.loads(raw)
    obj["targets"] = obj["targets"].replace("ca/root.pem", str(ROOT_PEM))
    del obj["signature"]
    with pytest.raises(FeedError, match="not among the feed's CA files"):
        check_feed(independent_sign(obj, ngo.key), ngo.key.public_key_b64)


def test_a_feed_signature_is_not_a_report_or_control_signature(ngo):
    from probe.report.rules import CONTROL_RESPONSE_CONTEXT, REPORT_LINE_CONTEXT

    assert FEED_CONTEXT not in (REPORT_LINE_CONTEXT, CONTROL_RESPONSE_CONTEXT)
    obj = json.loads(ngo.sign(TARGETS.format(port=443), 1))
    unsigned = {**obj, "signature": {k: v for k, v in obj["signature"].items() if k != "value"}}
    value = base64.b64decode(obj["signature"]["value"])
    raw_key = base64.b64decode(ngo.key.public_key_b64)
    assert keys.verify_raw(raw_key, value, FEED_CONTEXT + canonical_bytes(unsigned))
    assert not keys.verify_raw(raw_key, value, REPORT_LINE_CONTEXT + canonical_bytes(unsigned))


def test_changes_name_services_and_endpoints_added_removed_changed(ngo):
    old = load_targets(ngo.targets_file(TARGETS.format(port=443)))
    text = "".join(line for line in TARGETS_V2.format(port=8443).splitlines(keepends=True)
                   if "alpha-api" not in line)
    new = load_targets(ngo.targets_file(text, "v2.yaml"))
    assert describe_changes(old, new) == [
        "+ service beta (1 endpoints)",
        "- endpoint alpha/alpha-api",
        "~ endpoint alpha/alpha-web: ports",
    ]


def test_plain_http_only_to_loopback():
    assert check_url("https://ngo.example.org/feed.json")
    assert check_url("http://127.0.0.1:8000/feed.json")
    assert check_url("http://[::1]:8000/feed.json")
    for url in ("http://203.0.113.5/feed.json", "ftp://127.0.0.1/x", "feed.json"):
        with pytest.raises(FeedError, match="expected https://"):
            check_url(url)


def test_the_first_update_needs_the_url_and_the_key(store, ngo):
    with pytest.raises(FeedError, match="needs --from URL and --feed-key"):
        resolve_pin(store, "http://127.0.0.1:1/feed", None)
    with pytest.raises(FeedError, match="--feed-key"):
        resolve_pin(store, "http://127.0.0.1:1/feed", "not a key")
    store.save_pin(FeedPin("http://127.0.0.1:1/feed", ngo.key.public_key_b64))
    assert resolve_pin(store, None, None).public_key == ngo.key.public_key_b64
    other = keys.generate_ephemeral().public_key_b64
    with pytest.raises(FeedError, match="--replace-feed-key"):
        resolve_pin(store, None, other)
    assert resolve_pin(store, None, other, replace_key=True).public_key == other


# --------------------------------------------------------------------------- #
# updates over a real HTTP server                                              #
# --------------------------------------------------------------------------- #


def test_a_newer_feed_replaces_the_copy_and_keeps_the_previous(ngo, store):
    with feed_server() as server:
        pin = installed(ngo, store, server, version=5)
        first = store.current_path.read_bytes()
        server.answers["/feed"] = Answer(ngo.sign(TARGETS_V2.format(port=443), 6))
        done = do_update(store, pin)
        assert done.replaced and done.previous.version == 5 and done.current.version == 6
        assert done.changes == ["+ service beta (1 endpoints)"]
        assert store.previous_path.read_bytes() == first
        assert active_feed(store).feed.version == 6
        again = do_update(store, pin)  # the same feed again: nothing to do
        assert not again.replaced and active_feed(store).feed.version == 6


@pytest.mark.parametrize("case", ["wrong-key", "tampered", "older-version", "same-version",
                                  "older-date", "invalid-targets"])
def test_refused_feeds_leave_the_copy_alone(ngo, store, case):
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    with feed_server() as server:
        pin = installed(ngo, store, server, version=5)
        before = store.current_path.read_bytes()
        text = TARGETS_V2.format(port=443)
        if case == "wrong-key":
            body, reason = ngo.sign(text, 6, key=keys.generate_ephemeral()), "not by the pinned"
        elif case == "tampered":
            body = ngo.sign(text, 6).replace(b"beta-web", b"beta-wex")
            reason = "signature does not verify"
        elif case == "older-version":
            body, reason = ngo.sign(text, 4), "older than your version 5"
        elif case == "same-version":
            body, reason = ngo.sign(text, 5), "differs from your copy of the same version"
        elif case == "older-date":
            body, reason = ngo.sign(text, 6, now - datetime.timedelta(days=2)), "before your copy"
        else:
            obj = json.loads(ngo.sign(text, 6))
            del obj["signature"]
            obj["targets"] = obj["targets"].replace("port: 9,", "port: 70000,")
            body, reason = independent_sign(obj, ngo.key), "invalid targets in the feed.*70000"
        server.answers["/feed"] = Answer(body)
        with pytest.raises(FeedError, match=reason):
            do_update(store, pin)
        unchanged(store, pin, before, 5)


@pytest.mark.parametrize("case", ["cut-with-length", "cut-without-length", "http-error",
                                  "oversize-declared", "oversize-streamed", "stalled"])
def test_failed_downloads_leave_the_copy_alone(ngo, store, case):
    with feed_server() as server:
        pin = installed(ngo, store, server, version=5)
        before = store.current_path.read_bytes()
        body = ngo.sign(TARGETS_V2.format(port=443), 6)
        answer, reason, timeout = {
            "cut-with-length": (Answer(body, cut=len(body) // 2),
                                "ended before the whole feed arrived", 10),
            "cut-without-length": (Answer(body, length=-1, cut=len(body) // 2),
                                   "not a complete JSON feed", 10),
            "http-error": (Answer(b"busy", status=503), "answered HTTP 503", 10),
            "oversize-declared": (Answer(b"x" * 10, length=MAX_FEED_BYTES + 1),
                                  "over 4194304 bytes", 10),
            "oversize-streamed": (Answer(b" " * (MAX_FEED_BYTES + 65536), length=-1),
                                  "over 4194304 bytes", 10),
            "stalled": (Answer(body, cut=100, stall=10), "no complete answer within 1 s", 1),
        }[case]
        server.answers["/feed"] = answer
        with pytest.raises(FeedError, match=reason):
            do_update(store, pin, timeout)
        unchanged(store, pin, before, 5)


def test_fetch_is_recorded_and_replayed_like_every_operation(tmp_path, ngo):
    from probe.replay import ReplayNetwork
    from probe.runner import RunOptions
    from probe.trace import RunInfo, load_trace, start_recording

    body = ngo.sign(TARGETS.format(port=443), 1)
    with feed_server() as server:
        server.answers["/feed"] = Answer(body)
        request = FetchRequest(server.url("/feed"))
        info = RunInfo(load_targets(default_targets_path()), RunOptions())
        recording = start_recording(tmp_path / "t.jsonl", info, inner=LiveNetwork())

        async def record():
            result = await recording.fetch(request, 5)
            recording.writer.close()
            return result

        live = asyncio.run(record())
    assert base64.b64decode(live.body) == body
    replayed = asyncio.run(ReplayNetwork(load_trace(tmp_path / "t.jsonl")).fetch(request, 5))
    assert replayed == live


# --------------------------------------------------------------------------- #
# the command line                                                             #
# --------------------------------------------------------------------------- #


def test_cli_sign_update_list_check_and_run(tmp_path, ngo):
    ngo.targets_file(TARGETS.format(port=1))
    signed = probe(tmp_path, "targets", "sign", str(ngo.dir / "targets.yaml"), "--key",
                   str(ngo.key_path), "--version", "7", "--out", str(ngo.dir / "feed.json"))
    assert signed.returncode == 0, signed.stderr
    with feed_server() as server:
        server.answers["/feed.json"] = Answer((ngo.dir / "feed.json").read_bytes())
        first = probe(tmp_path, "targets", "update", "--from", server.url("/feed.json"),
                      "--feed-key", ngo.key.public_key_b64)
        assert first.returncode == 0, first.stderr
        assert "to feed version 7" in first.stdout and "+ service alpha" in first.stdout
        listed = probe(tmp_path, "targets", "list")
        assert listed.returncode == 0 and listed.stdout.split()[0] == "alpha"
        assert "feed version 7" in listed.stderr
        explicit = probe(tmp_path, "targets", "list", str(default_targets_path()))
        assert "alpha" not in explicit.stdout and "feed version" not in explicit.stderr
        # a later update needs no flags; an older re-signing is refused, copy kept
        ngo.targets_file(TARGETS_V2.format(port=1))
        older = probe(tmp_path, "targets", "sign", str(ngo.dir / "targets.yaml"), "--key",
                      str(ngo.key_path), "--version", "6", "--out", str(ngo.dir / "old.json"))
        assert older.returncode == 0, older.stderr
        server.answers["/feed.json"] = Answer((ngo.dir / "old.json").read_bytes())
        refused = probe(tmp_path, "targets", "update")
        assert refused.returncode == 1
        assert refused.stderr.strip().splitlines() == [
            "probe: targets not updated: the feed offers version 6, older than your version "
            "7; refused (downgrade)"]
        assert probe(tmp_path, "targets", "list").stdout.split()[0] == "alpha"
    # probe run uses the copy, says its age, and warns past --max-targets-age
    run = probe(tmp_path, "run", "--timeout", "1", "--out", str(tmp_path / "reports"),
                "--json", "--max-targets-age", "0", "--no-system-resolver", "--resolver",
                "127.0.0.1:1", timeout=120)
    assert run.returncode == 0, run.stderr
    assert "targets: feed version 7" in run.stderr
    assert "over --max-targets-age 0" in run.stderr
    assert '"alpha-api"' in run.stdout


def test_cli_sign_refuses_a_version_not_above_the_last(tmp_path, ngo):
    ngo.targets_file(TARGETS.format(port=1))
    args = ["targets", "sign", str(ngo.dir / "targets.yaml"), "--key", str(ngo.key_path),
            "--out", str(ngo.dir / "feed.json")]
    assert probe(tmp_path, *args, "--version", "3").returncode == 0
    again = probe(tmp_path, *args, "--version", "3")
    assert again.returncode == 2 and "already holds version 3" in again.stderr
    bad = ngo.targets_file("version: 1\nservices: []\nbogus: 1\n", "bad.yaml")
    broken = probe(tmp_path, "targets", "sign", str(bad), "--key", str(ngo.key_path))
    assert broken.returncode == 2 and len(broken.stderr.strip().splitlines()) == 1


# --------------------------------------------------------------------------- #
# kill -9 during an update                                                     #
# --------------------------------------------------------------------------- #


def listed_version(tmp: Path) -> str:
    result = probe(tmp, "targets", "list")
    assert result.returncode == 0, result.stderr
    return result.stderr


def test_kill_9_while_the_body_stalls_keeps_the_old_copy(tmp_path, ngo):
    store = FeedStore(tmp_path / "config" / "probe")
    with feed_server() as server:
        installed(ngo, store, server, version=5)
        body = ngo.sign(TARGETS_V2.format(port=443), 6)
        server.answers["/feed"] = Answer(body, cut=len(body) // 2, stall=20)
        process = subprocess.Popen([*PROBE, "targets", "update"], env=env(tmp_path),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            assert server.sent_partial.wait(30)
            time.sleep(0.2)
            process.send_signal(signal.SIGKILL)
        finally:
            process.wait(10)
        assert process.returncode == -signal.SIGKILL
    assert "feed version 5" in listed_version(tmp_path)


# A real SIGKILL at an exact point of the update: the child kills itself just
# before its n-th call of os.fsync or os.replace (the temp file written but not
# synced; synced but not renamed; between the previous copy's and the current
# copy's renames ...).
KILLER = """
import os, signal, sys
what, when = sys.argv[1], int(sys.argv[2])
original = getattr(os, what)
calls = [0]
def killing(*args, **kwargs):
    calls[0] += 1
    if calls[0] == when:
        os.kill(os.getpid(), signal.SIGKILL)
    return original(*args, **kwargs)
setattr(os, what, killing)
sys.argv = ["probe", "targets", "update"]
from probe.cli import main
main()
"""


@pytest.mark.parametrize("what,when", [("fsync", n) for n in range(1, 7)]
                         + [("replace", n) for n in range(1, 4)])
def test_kill_9_at_each_step_of_the_write_leaves_a_usable_copy(tmp_path, ngo, what, when):
    store = FeedStore(tmp_path / "config" / "probe")
    with feed_server() as server:
        installed(ngo, store, server, version=5)
        server.answers["/feed"] = Answer(ngo.sign(TARGETS_V2.format(port=443), 6))
        killed = subprocess.run([sys.executable, "-c", KILLER, what, str(when)],
                                env=env(tmp_path), capture_output=True, timeout=60)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        # the update writes the pin, then the previous copy, then the current one
        # (each: fsync the temp file, rename, fsync the folder): only the last
        # folder fsync comes after the new copy is in place
        expected = 6 if (what, when) == ("fsync", 6) else 5
        seen = listed_version(tmp_path)
        assert f"feed version {expected} " in seen and "warning" not in seen
        # and the next update completes
        finished = probe(tmp_path, "targets", "update")
        assert finished.returncode == 0, finished.stderr
    assert "feed version 6" in listed_version(tmp_path)


def test_the_collector_serves_the_current_feed(tmp_path, ngo):
    feed_file = ngo.dir / "feed.json"
    feed_file.write_bytes(ngo.sign(TARGETS.format(port=1), 3))
    collector = subprocess.Popen(
        [*PROBE, "collector", "serve", "--listen", "127.0.0.1:0", "--data", str(tmp_path / "store"),
         "--check-workers", "0", "--duration", "60", "--targets-feed", str(feed_file)],
        env=env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        url = None
        deadline = time.monotonic() + 30
        while url is None and time.monotonic() < deadline:
            line = collector.stderr.readline()
            if "collector listening on" in line:
                url = line.rsplit(" ", 1)[1].strip()
        assert url, "the collector did not start"
        first = probe(tmp_path, "targets", "update", "--from", f"{url}/targets",
                      "--feed-key", ngo.key.public_key_b64)
        assert first.returncode == 0 and "to feed version 3" in first.stdout, first.stderr
        # the NGO signs a new version into the same file: the collector serves it at once
        feed_file.write_bytes(ngo.sign(TARGETS_V2.format(port=1), 4))
        second = probe(tmp_path, "targets", "update")
        assert second.returncode == 0, second.stderr
        assert "to feed version 4" in second.stdout and "+ service beta" in second.stdout
    finally:
        collector.terminate()
        collector.wait(15)
    assert "feed version 4" in listed_version(tmp_path)


def test_https_is_verified(lab_pki):
    from servers import start_https

    with start_https(lab_pki, names=("127.0.0.1",)) as server:
        url = f"https://127.0.0.1:{server.port}/"

        async def fetch(trust_pem):
            return await LiveNetwork().fetch(FetchRequest(url, trust_pem=trust_pem), 5)

        trusted = asyncio.run(fetch(lab_pki.lab_root.cert.read_text()))
        untrusted = asyncio.run(fetch(None))  # the system's store knows no lab root
    assert trusted.failure is None and trusted.status == 200 and trusted.body_length > 0
    assert untrusted.failure == "ssl_unknown_authority" and untrusted.body == ""


def test_a_new_feed_key_does_not_reset_the_version(ngo, store):
    new_key = keys.generate_ephemeral()
    with feed_server() as server:
        installed(ngo, store, server, version=5)
        text = TARGETS_V2.format(port=443)
        pin = resolve_pin(store, None, new_key.public_key_b64, replace_key=True)
        server.answers["/feed"] = Answer(ngo.sign(text, 2, key=new_key))
        with pytest.raises(FeedError, match="older than your version 5"):
            do_update(store, pin)
        server.answers["/feed"] = Answer(ngo.sign(text, 6, key=new_key))
        assert do_update(store, pin).current.version == 6
    assert store.pin().public_key == new_key.public_key_b64
    assert active_feed(store).feed.key_id == new_key.key_id


def test_a_damaged_copy_falls_back_to_the_previous_one_and_still_refuses_downgrades(ngo, store):
    with feed_server() as server:
        pin = installed(ngo, store, server, version=5)
        server.answers["/feed"] = Answer(ngo.sign(TARGETS_V2.format(port=443), 6))
        do_update(store, pin)
        store.current_path.write_bytes(store.current_path.read_bytes()[:100])  # a bad disk
        active = active_feed(store)
        assert active.feed.version == 5 and "using the previous copy" in active.warning
        server.answers["/feed"] = Answer(ngo.sign(TARGETS.format(port=443), 4))
        with pytest.raises(FeedError, match="older than your version 5"):
            do_update(store, pin)
