"""Shared by the collector tests: signed runs, a blocking HTTP client, a collector subprocess."""

from __future__ import annotations

import gzip as gzip_module
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from probe.aggregate.synthetic import START, measurement, sign_run
from probe.report.keys import generate_ephemeral

REPO = Path(__file__).resolve().parents[2]


def signed_run(
    key=None,
    services=("telegram", "whatsapp", "signal", "telegram"),
    cc="IR",
    asn="AS197207",
    verdicts=None,
    day=0,
    finish=True,
):
    """One run's signed lines (bytes ending with newline), and its key: by default
    four measurements, the last one sealed (``finish=False``: none sealed)."""
    import datetime
    import secrets

    key = key or generate_ephemeral()
    started = START + datetime.timedelta(days=day)
    records = [
        measurement(
            service,
            cc,
            asn,
            started,
            verdicts or {},
            "r" + secrets.token_hex(6),
            secrets.token_hex(8),
        )
        for service in services
    ]
    return key, sign_run(key, records, finish=finish)


def post(
    url: str,
    body: bytes,
    *,
    gzip: bool = False,
    content_type="application/x-ndjson",
    headers=None,
    timeout: float = 30.0,
    source_address=None,
):
    """POST body to url; (status, headers, parsed JSON or text)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    connection = http.client.HTTPConnection(
        parts.hostname, parts.port, timeout=timeout, source_address=source_address
    )
    all_headers = {"Content-Type": content_type}
    if gzip:
        body = gzip_module.compress(body)
        all_headers["Content-Encoding"] = "gzip"
    all_headers.update(headers or {})
    try:
        connection.request("POST", parts.path or "/", body=body, headers=all_headers)
        response = connection.getresponse()
        data = response.read()
        try:
            payload = json.loads(data)
        except ValueError:
            payload = data.decode(errors="replace")
        return response.status, dict(response.getheaders()), payload
    finally:
        connection.close()


def upload(base: str, lines, key=None, **kwargs):
    """POST lines to the collector at base; ``key`` (a SigningKey) names the uploader's key."""
    if key is not None:
        kwargs["headers"] = {"X-Probe-Key": key.public_key_b64, **kwargs.get("headers", {})}
    return post(base + "/v1/measurements", b"".join(lines), **kwargs)


class CollectorProcess:
    """``python -m probe.collector serve`` on a free loopback port, stopped by PID."""

    def __init__(self, data: Path, *extra: str, check_workers: int = 1) -> None:
        self.data = data
        self.extra = extra
        self.check_workers = check_workers
        self.process: subprocess.Popen | None = None
        self.url = ""
        self.stderr_path = data.parent / f"collector-{os.getpid()}-{time.monotonic_ns()}.log"

    def start(self, timeout: float = 30.0) -> str:
        argv = [
            sys.executable,
            "-m",
            "probe.collector",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data",
            str(self.data),
            "--check-workers",
            str(self.check_workers),
            "--duration",
            "300",
            *self.extra,
        ]
        self._log = open(self.stderr_path, "w+")  # noqa: SIM115 - lives as long as the process
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=self._log, cwd=REPO)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.stderr_path.read_text()
            found = re.search(r"collector listening on (http://\S+)", text)
            if found:
                self.url = found.group(1)
                return self.url
            if self.process.poll() is not None:
                raise RuntimeError(f"collector exited {self.process.returncode}:\n{text}")
            time.sleep(0.05)
        self.kill()
        raise RuntimeError("collector did not start in time:\n" + self.stderr_path.read_text())

    def log(self) -> str:
        return self.stderr_path.read_text()

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> int:
        if self.process and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            return self.process.wait(30)
        return self.process.returncode if self.process else 0
