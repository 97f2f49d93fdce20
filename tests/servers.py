"""Lab servers on loopback for tests: helpers and pytest fixtures.

Servers run in a private event loop on a background thread (:func:`running`),
so the same helper serves synchronous tests and tests that run their own
``asyncio.run``; or as a real subprocess through the CLI
(:func:`servers_subprocess`). Everything binds 127.0.0.1 or ::1 on ephemeral
ports and is stopped when the ``with`` block or the fixture ends.

Import from a conftest (the tests directory is on ``sys.path`` there)::

    from servers import *  # noqa: F403  (fixtures: lab_pki, https_server, ...)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from probe.lab.pki import KeyPair, PkiPaths, write_pki
from probe.lab.servers import (
    DnsServer,
    HttpServer,
    HttpSite,
    HttpsServer,
    Limits,
    MitmProxy,
    MtprotoServer,
    Server,
    TcpServer,
)

LOOPBACK = "127.0.0.1"
LOOPBACK6 = "::1"

# Names every test PKI has certificates for; chat.signal.org is under the pinned root.
PKI_NAMES = ("example.org", "www.example.org", "web.whatsapp.com", "*.whatsapp.net", LOOPBACK)
PINNED_NAMES = ("chat.signal.org",)

# Short limits so that a forgotten connection never holds a test for long.
TEST_LIMITS = Limits(max_connections=32, idle_timeout=5.0, lifetime=20.0, handshake_timeout=5.0)

S = TypeVar("S", bound=Server)

__all__ = [
    "LOOPBACK",
    "LOOPBACK6",
    "PINNED_NAMES",
    "PKI_NAMES",
    "TEST_LIMITS",
    "RunningServers",
    "closed_port",
    "dns_server",
    "eof_server",
    "http_server",
    "https_server",
    "lab_pki",
    "make_pki",
    "mtproto_server",
    "refused_port",
    "reset_server",
    "running",
    "servers_subprocess",
    "silent_server",
    "start_dns",
    "start_http",
    "start_https",
    "start_mitm",
    "start_mtproto",
    "start_tcp",
]


# --------------------------------------------------------------------------- #
# Running servers                                                              #
# --------------------------------------------------------------------------- #


@contextlib.contextmanager
def running(factory: Callable[[], S], timeout: float = 5.0) -> Iterator[S]:
    """Build ``factory()`` in a private event loop on a daemon thread, start it,
    yield it (``.endpoints``, ``.port``), and stop it and the loop on exit."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="lab-server", daemon=True)
    thread.start()

    async def create() -> S:
        server = factory()
        await server.start()
        return server

    async def shutdown(server: S | None) -> None:
        if server is not None:
            await server.stop()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    server: S | None = None
    try:
        server = asyncio.run_coroutine_threadsafe(create(), loop).result(timeout)
        yield server
    finally:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shutdown(server), loop).result(timeout)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        if not thread.is_alive():
            loop.close()


@contextlib.contextmanager
def refused_port(host: str = LOOPBACK) -> Iterator[int]:
    """A port where connections are refused: bound (so nobody else takes it) but
    not listening, so the kernel answers SYN with RST."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        yield sock.getsockname()[1]


def make_pki(directory: Path) -> PkiPaths:
    """The test PKI: leaves (and expired and censor-signed twins) for PKI_NAMES
    under the lab root, and chat.signal.org under the pinned root."""
    return write_pki(directory, PKI_NAMES, pinned_names=PINNED_NAMES)


def start_https(
    pki: PkiPaths,
    names: tuple[str, ...] = ("example.org", "www.example.org"),
    *,
    certificates: str = "leaves",
    unknown_sni: str = "default",
    site: HttpSite | None = None,
    host: str = LOOPBACK,
) -> contextlib.AbstractContextManager[HttpsServer]:
    """An HTTPS origin on ``host`` with per-SNI leaves from ``pki.<certificates>``
    ("leaves", "expired" or "censor"); the first name is the default."""
    chosen: Mapping[str, KeyPair] = getattr(pki, certificates)
    default = names[0] if unknown_sni == "default" else None
    return running(
        lambda: HttpsServer(
            [(host, 0)],
            {name: chosen[name] for name in names},
            default=default,
            unknown_sni=unknown_sni,
            site=site,
            limits=TEST_LIMITS,
        )
    )


def start_http(
    site: HttpSite | None = None, host: str = LOOPBACK
) -> contextlib.AbstractContextManager[HttpServer]:
    return running(lambda: HttpServer([(host, 0)], site, TEST_LIMITS))


def start_dns(
    zone: Mapping[str, Any],
    behaviours: Mapping[str, Any] | None = None,
    *,
    behaviour_file: Path | None = None,
    host: str = LOOPBACK,
) -> contextlib.AbstractContextManager[DnsServer]:
    """UDP and TCP DNS on the same ephemeral port of ``host``."""
    return running(
        lambda: DnsServer(
            [(host, 0)], zone, behaviours, behaviour_file=behaviour_file, limits=TEST_LIMITS
        )
    )


def start_mtproto(host: str = LOOPBACK) -> contextlib.AbstractContextManager[MtprotoServer]:
    return running(lambda: MtprotoServer([(host, 0)], limits=TEST_LIMITS))


def start_tcp(
    mode: str = "echo", host: str = LOOPBACK, limits: Limits = TEST_LIMITS
) -> contextlib.AbstractContextManager[TcpServer]:
    """A TcpServer in ``mode``: echo, silent, reset, reset_on_accept or eof."""
    return running(lambda: TcpServer([(host, 0)], mode, limits))


def start_mitm(
    pki: PkiPaths, upstream: tuple[str, int], host: str = LOOPBACK
) -> contextlib.AbstractContextManager[MitmProxy]:
    """The interception proxy, signing with the censor root, relaying to ``upstream``
    (whose certificate it checks against the lab root)."""
    return running(
        lambda: MitmProxy(
            [(host, 0)],
            pki.censor_root,
            upstream=upstream,
            upstream_ca=pki.lab_root.cert,
            limits=TEST_LIMITS,
        )
    )


@dataclass
class RunningServers:
    process: subprocess.Popen[str]
    ready: dict[str, Any]  # the ready file: {"pid": ..., "servers": [{"kind", "endpoints"}]}

    def endpoint(self, index: int, which: int = 0) -> tuple[str, int]:
        host, _, port = self.ready["servers"][index]["endpoints"][which].rpartition(":")
        return host.strip("[]"), int(port)


@contextlib.contextmanager
def servers_subprocess(
    config: Mapping[str, Any], directory: Path, duration: float = 30.0, timeout: float = 10.0
) -> Iterator[RunningServers]:
    """``python -m probe.lab.servers`` on ``config``; yields once it is listening
    and terminates it (SIGTERM, then SIGKILL) on exit."""
    config_path = directory / "servers.json"
    ready_path = directory / "ready.json"
    config_path.write_text(json.dumps(config))
    ready_path.unlink(missing_ok=True)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "probe.lab.servers",
            "--config",
            str(config_path),
            "--duration",
            str(duration),
            "--ready-file",
            str(ready_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + timeout
        while not ready_path.exists():
            if process.poll() is not None:
                raise RuntimeError(
                    f"lab servers exited {process.returncode}: {process.stderr.read()}"
                )  # type: ignore[union-attr]
            if time.monotonic() > deadline:
                raise TimeoutError("lab servers did not become ready")
            time.sleep(0.02)
        yield RunningServers(process, json.loads(ready_path.read_text()))
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        process.communicate()


# --------------------------------------------------------------------------- #
# Pytest fixtures                                                              #
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="session")
def lab_pki(tmp_path_factory: pytest.TempPathFactory) -> PkiPaths:
    """The test PKI (see :func:`make_pki`), made once per session."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def https_server(lab_pki: PkiPaths) -> Iterator[HttpsServer]:
    """HTTPS for example.org (default) and www.example.org, trusted by ``lab_pki.lab_root``."""
    with start_https(lab_pki) as server:
        yield server


@pytest.fixture
def http_server() -> Iterator[HttpServer]:
    with start_http() as server:
        yield server


@pytest.fixture
def dns_server() -> Iterator[DnsServer]:
    """www.example.org A/AAAA, example.org CNAME-free A, blocked.example NXDOMAIN,
    forged.example forged to 10.10.34.35, dropped.example never answered."""
    zone = {
        "example.org": {"A": ["127.0.0.1"]},
        "www.example.org": {"A": ["127.0.0.1"], "AAAA": ["::1"]},
        "alias.example.org": {"CNAME": "www.example.org"},
    }
    behaviours = {
        "blocked.example": "nxdomain",
        "forged.example": {"forge": ["10.10.34.35"]},
        "dropped.example": "drop",
    }
    with start_dns(zone, behaviours) as server:
        yield server


@pytest.fixture
def mtproto_server() -> Iterator[MtprotoServer]:
    """A fake Telegram datacenter (MTProto intermediate/abridged and HTTP) on one port."""
    with start_mtproto() as server:
        yield server


@pytest.fixture
def reset_server() -> Iterator[TcpServer]:
    """Accepts, then resets (RST) when the first bytes arrive."""
    with start_tcp("reset") as server:
        yield server


@pytest.fixture
def silent_server() -> Iterator[TcpServer]:
    """Accepts and never sends a byte."""
    with start_tcp("silent") as server:
        yield server


@pytest.fixture
def eof_server() -> Iterator[TcpServer]:
    """Accepts and closes its side at once (clean EOF for the client)."""
    with start_tcp("eof") as server:
        yield server


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections."""
    with refused_port() as port:
        yield port
