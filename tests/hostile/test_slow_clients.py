"""Slow and greedy clients against both servers that face the Internet, on loopback.

The control helper and the collector run in this process through their own
``serve()`` (port 0), behind the shared connection guard (probe.serving). Each
test is an attack a stranger can make with no key and a few addresses: a
slowloris from many addresses trickling request heads, one address opening
more connections than its share, or opening them too fast, a head that never
ends, a keep-alive connection left idle, malformed and cut-off requests. What
must hold: a legitimate client is still answered, refused connections are
closed at once and unanswered, deadlines close what overstays, and nothing in
the logs names the attacker or dumps a traceback.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from probe.collector.limits import Limits
from probe.collector.lines import LinePolicy
from probe.collector.server import Collector
from probe.collector.server import serve as serve_collector
from probe.collector.store import Store
from probe.control.server import CONNECTION_LIMITS, ControlHelper
from probe.control.server import serve as serve_control

KINDS = ("control", "collector")
HEALTH = {"control": "/", "collector": "/health"}
UPLOAD = {"control": "/measure", "collector": "/v1/measurements"}
COLLECTOR_NAMES = {  # ConnectionLimits field -> the collector's Limits field
    "max_connections": "max_connections",
    "max_per_client": "max_connections_per_address",
    "client_rate": "connection_rate",
    "client_burst": "connection_burst",
    "header_timeout": "header_timeout",
    "idle_timeout": "idle_timeout",
}
LEGIT = "127.0.0.1"


# --------------------------------------------------------------------------- #
# a server on its own loop thread                                              #
# --------------------------------------------------------------------------- #


class Server:
    """One server's ``serve()`` on a loop thread of its own, until ``stop()``."""

    def __init__(self, kind: str, host: str, serve: Callable[..., object]) -> None:
        self.kind = kind
        self.host = host
        self.port = 0
        self._serve = serve
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop = asyncio.new_event_loop()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"{kind}-server", daemon=True)

    @property
    def health(self) -> str:
        return HEALTH[self.kind]

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def main() -> None:
            self._stop = asyncio.Event()

            def ready(text: str) -> None:
                # "...listening on [::1]:8080, UDP echo on ..." or "http://[::1]:8080"
                self.port = int(re.search(r":(\d+)$", text.split(",")[0])[1])
                self._ready.set()

            await self._serve(ready, self._stop)

        try:
            self._loop.run_until_complete(main())
        except BaseException as error:  # noqa: BLE001 - reported by start()
            self._error = error
            self._ready.set()
        finally:
            self._loop.close()

    def start(self) -> Server:
        self._thread.start()
        assert self._ready.wait(30), f"{self.kind} did not start"
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self._thread.is_alive() and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        assert not self._thread.is_alive(), f"{self.kind} did not stop"


@pytest.fixture
def start(tmp_path):
    """``start(kind, host=..., **connection_limits)``: a running server, stopped after."""
    started: list[Server] = []

    def run(kind: str, host: str = "127.0.0.1", **limits) -> Server:
        if kind == "control":
            helper = ControlHelper(resolver=None)
            connections = dataclasses.replace(CONNECTION_LIMITS, **limits)

            async def serve(ready, stop):
                await serve_control(helper, host, 0, ready=ready, stop=stop,
                                    connections=connections)
        else:
            store = Store(tmp_path / f"data{len(started)}")
            store.open()
            collector = Collector(
                store, LinePolicy(), Limits(**{COLLECTOR_NAMES[k]: v for k, v in limits.items()}),
                check_workers=0,
            )

            async def serve(ready, stop):
                await serve_collector(collector, host, 0, ready=ready, stop=stop)

        server = Server(kind, host, serve).start()
        started.append(server)
        return server

    yield run
    for server in started:
        server.stop()


# --------------------------------------------------------------------------- #
# clients                                                                      #
# --------------------------------------------------------------------------- #


def connect(server: Server, source: str = LEGIT, timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection((server.host, server.port), timeout, (source, 0))
    sock.settimeout(timeout)
    return sock


def request(server: Server, path: str, *, keep_alive: bool = False) -> bytes:
    connection = "keep-alive" if keep_alive else "close"
    return f"GET {path} HTTP/1.1\r\nHost: probe.test\r\nConnection: {connection}\r\n\r\n".encode()


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    """The status and body of one response (0 if the connection ends before one)."""
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return 0, data
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
        while length and len(body) < int(length[1]):
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    except (ConnectionError, TimeoutError):
        return 0, data
    return int(head.split(b" ", 2)[1]), body


def get(server: Server, source: str = LEGIT, path: str | None = None) -> tuple[int, float]:
    """One GET on a new connection: (status, seconds); status 0 if not answered."""
    started = time.monotonic()
    try:
        with connect(server, source) as sock:
            sock.sendall(request(server, path or server.health))
            status, _ = read_response(sock)
    except (ConnectionError, TimeoutError):
        status = 0
    return status, time.monotonic() - started


def closed_within(sock: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closes ``sock`` (None if still open after ``seconds``);
    what the server sends before closing is read and dropped."""
    started = time.monotonic()
    sock.settimeout(0.1)
    while time.monotonic() - started < seconds:
        try:
            if not sock.recv(4096):
                return time.monotonic() - started
        except TimeoutError:
            continue
        except ConnectionError:
            return time.monotonic() - started
    return None


def refused_at_once(server: Server, source: str) -> bool:
    """A new connection from ``source`` is closed at once, its request unanswered."""
    try:
        sock = connect(server, source)
    except ConnectionError:
        return True
    with sock:
        try:
            sock.sendall(request(server, server.health))
        except ConnectionError:
            return True
        started = time.monotonic()
        status, data = read_response(sock)
        return status == 0 and data == b"" and time.monotonic() - started < 3.0


class Slowloris:
    """Connections that trickle a request head a byte per round and never finish it,
    from ``addresses`` loopback addresses; one closed by the server is opened again
    at the next round (as a real slowloris does). Runs in a thread for ``seconds``."""

    HEAD = b"GET / HTTP/1.1\r\nHost: probe.test\r\n"

    def __init__(self, server: Server, sources: list[str], per_source: int, seconds: float):
        self.server = server
        self.slots = [source for source in sources for _ in range(per_source)]
        self.seconds = seconds
        self.opened = 0
        self.closed_by_server = 0
        self._sockets: list[socket.socket | None] = [None] * len(self.slots)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slowloris", daemon=True)

    @property
    def running(self) -> bool:
        return not self._done.is_set()

    def _open(self, index: int) -> None:
        try:
            sock = socket.create_connection(
                (self.server.host, self.server.port), 2.0, (self.slots[index], 0)
            )
            sock.sendall(self.HEAD)
        except (ConnectionError, TimeoutError):
            return
        sock.setblocking(False)
        self._sockets[index] = sock
        self.opened += 1

    def _round(self) -> None:
        for index, sock in enumerate(self._sockets):
            if self._done.is_set():
                return
            if sock is None:
                self._open(index)
                continue
            try:
                if sock.recv(4096) == b"":
                    raise ConnectionResetError
            except BlockingIOError:
                try:
                    sock.send(b"X")  # one more byte of a header name that never ends
                    continue
                except (BlockingIOError, ConnectionError):
                    pass
            except ConnectionError:
                pass
            sock.close()
            self._sockets[index] = None
            self.closed_by_server += 1

    def _run(self) -> None:
        deadline = time.monotonic() + self.seconds
        while time.monotonic() < deadline and not self._done.is_set():
            started = time.monotonic()
            self._round()
            time.sleep(max(0.0, 0.5 - (time.monotonic() - started)))
        self._done.set()

    def __enter__(self) -> Slowloris:
        for index in range(len(self.slots)):
            self._open(index)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join(30)
        for sock in self._sockets:
            if sock is not None:
                sock.close()


def sources(count: int, third: int = 1) -> list[str]:
    """``count`` loopback addresses 127.0.<third>.1, .2, ... (not the legitimate client's)."""
    return [f"127.0.{third + i // 250}.{1 + i % 250}" for i in range(count)]


# --------------------------------------------------------------------------- #
# connection attacks                                                           #
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("kind", KINDS)
def test_slowloris_from_many_addresses_does_not_starve_legitimate_clients(start, kind):
    # 1,100 trickling connections (the helper had none of its own and stopped
    # answering), from 110 addresses so per-address caps alone do not stop them:
    # more than either server's total, so the longest idle give way to newcomers.
    server = start(kind, header_timeout=3.0)
    answers = []
    with Slowloris(server, sources(110), per_source=10, seconds=8.0) as attack:
        time.sleep(1.0)
        while attack.running and len(answers) < 40:
            answers.append(get(server))
            time.sleep(0.3)
    statuses = [status for status, _ in answers]
    worst = max(seconds for _, seconds in answers)
    assert len(answers) >= 5, "the attack ended before the legitimate client could try"
    assert statuses == [200] * len(statuses), statuses
    assert worst < 5.0, f"a legitimate request took {worst:.1f} s during the attack"
    assert attack.opened >= 1100
    assert attack.closed_by_server >= 500  # deadlines and evictions really closed them


@pytest.mark.parametrize("kind", KINDS)
def test_one_address_gets_its_share_of_connections_and_no_more(start, kind):
    # One address holding 1,024 half-sent heads blocked the collector's /health.
    server = start(kind, max_per_client=4, header_timeout=30.0)
    attacker = "127.0.0.9"
    held = [connect(server, attacker) for _ in range(4)]
    try:
        for sock in held:
            sock.sendall(b"GET / HTTP/1.1\r\n")  # half a head each
        time.sleep(0.2)
        assert refused_at_once(server, attacker)  # the 5th: closed, unanswered
        assert all(closed_within(sock, 0.3) is None for sock in held)  # the 4 stay
        assert get(server)[0] == 200  # everyone else is served
        assert get(server, "127.0.0.10")[0] == 200
        held.pop().close()
        time.sleep(0.3)  # the server notices the close
        assert get(server, attacker)[0] == 200  # a place is free again
    finally:
        for sock in held:
            sock.close()


@pytest.mark.parametrize("kind", KINDS)
def test_new_connections_per_address_are_rate_limited(start, kind):
    server = start(kind, client_rate=0.5, client_burst=3.0)
    attacker = "127.0.0.21"
    assert [get(server, attacker)[0] for _ in range(3)] == [200, 200, 200]
    assert refused_at_once(server, attacker)  # the burst is spent
    assert get(server, "127.0.0.22")[0] == 200  # a bucket per address
    time.sleep(2.5)  # 0.5 a second: one new connection again
    assert get(server, attacker)[0] == 200


@pytest.mark.parametrize("kind", KINDS)
def test_a_head_that_never_completes_is_closed_after_the_deadline(start, kind):
    server = start(kind, header_timeout=1.0, idle_timeout=30.0)
    with connect(server, "127.0.0.31") as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: probe.test\r\n")
        started = time.monotonic()
        closed = None
        while closed is None and time.monotonic() - started < 6.0:
            try:
                sock.sendall(b"X-Slow: 1\r\n")  # a header more, never the blank line
            except ConnectionError:
                closed = time.monotonic() - started
                break
            closed = closed_within(sock, 0.3)
            if closed is not None:
                closed = time.monotonic() - started
        assert closed is not None, "a head trickled for 6 s was not cut off"
        assert 0.8 <= closed < 4.0, closed
    assert get(server)[0] == 200


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("trickle", [False, True], ids=["idle", "trickling"])
def test_a_keep_alive_connection_is_closed_when_no_next_request_comes(start, kind, trickle):
    server = start(kind, header_timeout=30.0, idle_timeout=1.0)
    with connect(server, "127.0.0.41") as sock:
        for _ in range(2):  # keep-alive works: two requests on one connection
            sock.sendall(request(server, server.health, keep_alive=True))
            assert read_response(sock)[0] == 200
        started = time.monotonic()
        if trickle:
            sock.sendall(b"GET / HTTP/1.1\r\n")  # the next head starts, never ends
        closed = closed_within(sock, 6.0)
        assert closed is not None, "an idle keep-alive connection was kept 6 s"
        assert 0.8 <= time.monotonic() - started < 4.0


# --------------------------------------------------------------------------- #
# logs                                                                         #
# --------------------------------------------------------------------------- #


class Everything(logging.Handler):
    """Every record any logger emits, formatted as a log file would have it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def all_logs():
    root = logging.getLogger()
    handler = Everything()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def attack_everything(server: Server, attacker: str) -> None:
    """Every connection-level attack and ill-formed request, from ``attacker``."""
    def send(data: bytes, *, read: bool = True) -> None:
        try:
            with connect(server, attacker) as sock:
                sock.sendall(data)
                if read:
                    read_response(sock)
        except (ConnectionError, TimeoutError):
            pass

    send(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n")  # malformed header
    send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64))  # TLS to a plain port
    send(b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\n\r\n")  # request line too long
    send(b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"b" * 20_000 + b"\r\n\r\n")  # header too long
    send(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n")
    send(f"GET /{attacker} HTTP/1.1\r\nHost: {attacker}\r\n\r\n".encode())  # 404 with it
    for _ in range(3):  # connections dropped mid-body: Content-Length 1000, 10 bytes sent
        send(
            f"POST {UPLOAD[server.kind]} HTTP/1.1\r\nHost: x\r\n"
            "Content-Type: application/x-ndjson\r\nContent-Length: 1000\r\n\r\n".encode()
            + b"0123456789",
            read=False,
        )
    for _ in range(60):  # past the per-address cap and rate: refused connections
        send(b"", read=False)
    with Slowloris(server, [attacker], per_source=8, seconds=2.5):
        time.sleep(2.5)  # deadlines of 1 s: closed while trickling
    time.sleep(0.5)


@pytest.mark.parametrize(
    ("kind", "family"),
    [(kind, family) for family in ("ipv4", "ipv6") for kind in KINDS],
)
def test_no_attack_puts_an_address_or_a_traceback_in_the_logs(start, all_logs, kind, family):
    if family == "ipv6":
        if not socket.has_ipv6:
            pytest.skip("no IPv6 here")
        try:
            socket.socket(socket.AF_INET6).bind(("::1", 0))
        except OSError:
            pytest.skip("no IPv6 loopback here")
    host = attacker = "::1" if family == "ipv6" else "127.0.0.1"
    server = start(kind, host=host, max_per_client=8, client_rate=5.0, client_burst=20.0,
                   header_timeout=1.0, idle_timeout=1.0)
    attack_everything(server, attacker)
    server.stop()
    lines = all_logs.lines
    logged = "\n".join(lines)
    # The capture works: aiohttp did complain about the malformed requests.
    assert "Error handling request from <address>" in logged, logged[:2000]
    for needle in ({"127.0.0.1", "::ffff:127.0.0.1"} if family == "ipv4" else {"::1"}):
        assert not [line for line in lines if needle in line.replace("<address>", "")], needle
    assert "Traceback" not in logged
    assert all(len(line) < 500 for line in lines)
    assert len(lines) < 300, f"{len(lines)} log lines for one attacker"


@pytest.mark.parametrize("kind", KINDS)
def test_a_flood_of_bad_requests_writes_a_bounded_number_of_lines(start, all_logs, kind):
    # Connection limits high enough that every request reaches aiohttp: the log
    # filter alone must bound what they write.
    server = start(kind, max_per_client=64, client_rate=500.0, client_burst=500.0)
    for _ in range(200):
        with connect(server, "127.0.0.51") as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n")
            assert read_response(sock)[0] == 400
    server.stop()
    complaints = [line for line in all_logs.lines if line.startswith("aiohttp.server ")]
    assert 25 <= len(complaints) <= 31, len(complaints)  # 30 a minute per logger


def test_out_of_descriptors_the_helper_neither_storms_its_log_nor_stops_answering(tmp_path):
    # The helper at a hard limit of 300 open files, 600 trickling connections
    # from 60 addresses: it once wrote 295,480 "accept() out of system resource"
    # lines in 45 s. Now its cap fits its descriptors (one warning at start).
    def limit_files() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (300, 300))

    log = tmp_path / "helper.log"
    with open(log, "wb") as stream:
        process = subprocess.Popen(
            [sys.executable, "-m", "probe", "control", "serve", "--listen", "127.0.0.1:0",
             "--resolver", "127.0.0.1:53", "--key", str(tmp_path / "helper.key"),
             "--duration", "60", "--open"],
            stdout=subprocess.DEVNULL, stderr=stream, preexec_fn=limit_files,
            env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2])),
        )
    try:
        deadline = time.monotonic() + 30
        while not (found := re.search(rb"listening on [\d.]+:(\d+)", log.read_bytes())):
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        server = Server("control", "127.0.0.1", serve=lambda *_: None)
        server.port = int(found[1])
        answers = []
        with Slowloris(server, sources(60, third=2), per_source=10, seconds=4.0) as attack:
            time.sleep(1.0)
            while attack.running:
                answers.append(get(server)[0])
                time.sleep(0.5)
        assert attack.opened >= 600
        assert answers and answers == [200] * len(answers), answers
        text = log.read_text()
        assert "out of system resource" not in text and "accept" not in text
        assert "serving at most 236" in text  # 300 descriptors, 64 kept for the rest
        assert len(text.splitlines()) < 10, text[-2000:]
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_the_collector_command_takes_a_per_address_cap(tmp_path):
    log = tmp_path / "collector.log"
    with open(log, "wb") as stream:
        process = subprocess.Popen(
            [sys.executable, "-m", "probe.collector", "serve", "--listen", "127.0.0.1:0",
             "--data", str(tmp_path / "data"), "--check-workers", "0",
             "--max-connections-per-address", "2", "--duration", "30"],
            stdout=subprocess.DEVNULL, stderr=stream,
            env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2])),
        )
    try:
        deadline = time.monotonic() + 30
        while not (found := re.search(rb"listening on http://[\d.]+:(\d+)", log.read_bytes())):
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        server = Server("collector", "127.0.0.1", serve=lambda *_: None)
        server.port = int(found[1])
        held = [connect(server, "127.0.0.61") for _ in range(2)]
        try:
            time.sleep(0.2)
            assert refused_at_once(server, "127.0.0.61")
            assert get(server, "127.0.0.62")[0] == 200
        finally:
            for sock in held:
                sock.close()
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
