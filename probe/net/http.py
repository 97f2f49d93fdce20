"""Live HTTP(S) requests with aiohttp, pinned to one address, and control-helper calls.

Requests go to the address the runner measured, never through a new DNS lookup.
Certificates are not verified here: the TLS step on the same address and name
has already judged them, and HTTPS is only attempted after that step validated.
Redirects are followed only within the same host (up to ``max_redirects``); a
redirect elsewhere ends the request and is recorded, since another host is
another endpoint. Bodies are capped and decompressed with a cap (gzip bombs).

Control calls carry the probe's credential (``probe.control.auth``) in a header
computed here from the exact body bytes sent: the recorded ``ControlRequest``
never holds it, so no token or signature reaches a trace.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import ssl
import zlib
from typing import TYPE_CHECKING
from urllib.parse import urljoin, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver

from probe.net import failures
from probe.net.network import (
    ControlRequest,
    ControlResult,
    FetchRequest,
    FetchResult,
    HttpRequest,
    HttpResult,
    Timing,
)

if TYPE_CHECKING:  # the seam does not import the control package at run time
    from probe.control.auth import ControlCredentials

MAX_HEADER_BYTES = 32 * 1024
MAX_CONTROL_RESPONSE = 32 * 1024 * 1024
# A helper's refusal (401, 429) is a small JSON object whose reason code the probe
# reads; anything longer is not one.
MAX_CONTROL_REFUSAL = 4096


class _PinnedResolver(AbstractResolver):
    """Resolves every name to the one address under test."""

    def __init__(self, address: str) -> None:
        self.address = address

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET):  # noqa: ANN201
        family = socket.AF_INET6 if ":" in self.address else socket.AF_INET
        return [{
            "hostname": host, "host": self.address, "port": port,
            "family": family, "proto": 0, "flags": socket.AI_NUMERICHOST,
        }]

    async def close(self) -> None:
        return None


def _no_verify_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _decoder(encoding: str):
    encoding = encoding.strip().lower()
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompressobj()
    return None


class _Transfer:
    """What has arrived of a response body so far (kept when a deadline cuts it)."""

    def __init__(self, started: float) -> None:
        self.started = started  # when the response head arrived
        self.body = bytearray()
        self.received = 0
        self.truncated = False
        self.last = started
        self.window_over = False  # the transfer's window ended before the body did

    def throughput(self) -> float | None:
        elapsed = self.last - self.started
        if not self.received:
            # A whole window without one byte of body (a flow frozen inside the first
            # TLS record) is a rate of zero; an empty body measures nothing.
            return 0.0 if self.window_over else None
        return self.received / elapsed if elapsed > 0 else None


async def _read_body(response: aiohttp.ClientResponse, req: HttpRequest, clock,
                     transfer: _Transfer) -> None:
    """Read at most ``max_body`` decoded bytes; a throughput transfer goes on reading
    (and counting) up to ``transfer_bytes`` or ``transfer_seconds``."""
    cap, measure = req.max_body, req.measure_throughput
    transfer_cap = max(req.transfer_bytes, cap) if measure else cap
    window = req.transfer_seconds if measure else 0.0
    decoder = _decoder(response.headers.get("Content-Encoding", ""))
    if not window:
        await _read_chunks(response, req, clock, transfer, decoder, cap, transfer_cap, 0.0)
        return
    # The window is a deadline, not a check made when a chunk arrives: a flow the
    # censor freezes after its first kilobytes (Russia's TSPU since 2024, net4people/bbs
    # #490) sends nothing more, and its rate is what arrived over the whole window.
    deadline = asyncio.timeout(window)
    try:
        async with deadline:
            await _read_chunks(response, req, clock, transfer, decoder, cap, transfer_cap, window)
    except TimeoutError:
        if not deadline.expired():
            raise
        transfer.truncated = True
        transfer.window_over = True
        transfer.last = clock()


async def _read_chunks(response, req, clock, transfer: _Transfer, decoder, cap: int,
                       transfer_cap: int, window: float) -> None:
    measure = req.measure_throughput
    async for chunk in response.content.iter_chunked(16384):
        transfer.last = clock()
        transfer.received += len(chunk)
        if decoder is not None:
            try:
                chunk = decoder.decompress(chunk, max(0, cap - len(transfer.body)) + 1)
            except zlib.error:
                decoder = None
        room = cap - len(transfer.body)
        if len(chunk) > room:
            transfer.truncated = True
        transfer.body += chunk[:room]
        if transfer.truncated and not measure:
            break
        if measure and (
            transfer.received >= transfer_cap
            or (window and transfer.last - transfer.started >= window)
        ):
            transfer.truncated = transfer.truncated or not response.content.at_eof()
            break


async def request(req: HttpRequest, timeout: float, clock) -> HttpResult:
    t0 = clock()
    status = None
    headers: tuple[tuple[str, str], ...] = ()
    transfer: _Transfer | None = None
    redirects: list[str] = []
    failure = None
    connector = aiohttp.TCPConnector(
        resolver=_PinnedResolver(req.address), ssl=_no_verify_context(),
        force_close=True, limit=1, use_dns_cache=False,
    )
    try:
        async with asyncio.timeout(timeout):
            async with aiohttp.ClientSession(
                connector=connector, auto_decompress=False,
                max_field_size=MAX_HEADER_BYTES, max_line_size=MAX_HEADER_BYTES,
                timeout=aiohttp.ClientTimeout(total=None),
            ) as session:
                url = req.url
                host = urlsplit(url).hostname
                while True:
                    async with session.request(
                        req.method, url, headers=list(req.headers),
                        data=base64.b64decode(req.body) if req.body else None,
                        allow_redirects=False,
                    ) as response:
                        status = response.status
                        headers = tuple((k, v) for k, v in response.headers.items())[:200]
                        location = response.headers.get("Location")
                        if status in (301, 302, 303, 307, 308) and location:
                            target = urljoin(url, location)
                            if urlsplit(target).hostname == host:
                                if len(redirects) >= req.max_redirects:
                                    raise aiohttp.TooManyRedirects(
                                        response.request_info, response.history
                                    )
                                redirects.append(target)
                                url = target
                                continue
                        transfer = _Transfer(clock())
                        await _read_body(response, req, clock, transfer)
                        break
    except Exception as exc:
        failure = failures.classify_http(exc)
        if (
            failure == failures.GENERIC_TIMEOUT and req.measure_throughput
            and transfer is not None and transfer.received
        ):
            # A throughput transfer cut by its deadline after data flowed is a
            # measurement of a slow link, not a failure (throttling looks like this).
            # Its rate counts the time waited for nothing, up to now.
            failure = None
            transfer.truncated = True
            transfer.last = clock()
    finally:
        await connector.close()
    transfer = transfer or _Transfer(t0)
    return HttpResult(
        req, failure, status, headers, base64.b64encode(bytes(transfer.body)).decode(),
        transfer.received, transfer.truncated, tuple(redirects),
        transfer.throughput() if req.measure_throughput else None, Timing(t0, clock()),
    )


async def control_call(
    req: ControlRequest, timeout: float, clock, auth: ControlCredentials | None = None
) -> ControlResult:
    t0 = clock()
    status = None
    body = None
    failure = None
    data = json.dumps(req.body).encode()
    headers = {"Content-Type": "application/json"}
    authorization = (auth.authorization("POST", urlsplit(req.url).path, data)
                     if auth and req.authenticate else None)
    if authorization is not None:
        headers["Authorization"] = authorization
    connected = False

    async def on_connected(*_: object) -> None:
        nonlocal connected
        connected = True  # TCP (and TLS, for https) done: the helper is reachable

    tracing = aiohttp.TraceConfig()
    tracing.on_connection_create_end.append(on_connected)
    timeouts = aiohttp.ClientTimeout(total=None, connect=req.connect_timeout)
    try:
        async with asyncio.timeout(timeout):
            async with aiohttp.ClientSession(timeout=timeouts,
                                             trace_configs=[tracing]) as session:
                async with session.post(req.url, data=data, headers=headers) as response:
                    status = response.status
                    buffer = bytearray()
                    while chunk := await response.content.read(65536):
                        buffer += chunk
                        if len(buffer) > min(req.max_bytes, MAX_CONTROL_RESPONSE):
                            return ControlResult(
                                req, failures.CONTROL_RESPONSE_TOO_LARGE, status, None,
                                Timing(t0, clock()),
                            )
                    raw = bytes(buffer)
    except Exception as exc:
        # Caught before parsing, apart from it: aiohttp's certificate error is a
        # ValueError too, and an untrusted helper is not a JSON parse error.
        return ControlResult(req, failures.classify_http(exc), status, None, Timing(t0, clock()),
                             connected=connected)
    if status != 200:
        failure = failures.http_status_failure(status)
        if status in (401, 403, 429) and len(raw) <= MAX_CONTROL_REFUSAL:
            body = _json_object(raw)  # the refusal's reason, for the volunteer
    else:
        try:
            parsed = json.loads(raw)
        except (ValueError, RecursionError):
            # RecursionError: JSON nested deeper than the parser's stack (a hostile
            # "[[[[..."); ValueError includes UnicodeDecodeError (not UTF-8 at all).
            parsed = None
        if isinstance(parsed, dict):
            body = parsed
        else:
            failure = failures.JSON_PARSE_ERROR  # not JSON, or JSON but not an object
    return ControlResult(req, failure, status, body, Timing(t0, clock()))


MAX_FETCH_REDIRECTS = 3


async def fetch(req: FetchRequest, timeout: float, clock) -> FetchResult:
    """GET ``req.url`` with certificate verification; the whole body or a failure.

    Redirects are followed (at most :data:`MAX_FETCH_REDIRECTS`), never from
    https to http: a box on the path must not be able to turn the download into
    plaintext. A body past ``max_bytes`` is refused as soon as its length says
    so or its bytes pass the cap, without reading the rest.
    """
    t0 = clock()
    status = None
    if req.trust_pem:
        context = ssl.create_default_context(cadata=req.trust_pem)
    else:
        context = ssl.create_default_context()
    url = req.url
    try:
        async with asyncio.timeout(timeout):
            async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=context, force_close=True, limit=1),
                max_field_size=MAX_HEADER_BYTES, max_line_size=MAX_HEADER_BYTES,
                timeout=aiohttp.ClientTimeout(total=None),
            ) as session:
                for _ in range(MAX_FETCH_REDIRECTS + 1):
                    async with session.get(url, allow_redirects=False) as response:
                        status = response.status
                        location = response.headers.get("Location")
                        if status in (301, 302, 303, 307, 308) and location:
                            target = urljoin(url, location)
                            downgrade = urlsplit(target).scheme != "https"
                            if urlsplit(url).scheme == "https" and downgrade:
                                return FetchResult(req, failures.http_status_failure(status),
                                                   status, "", 0, Timing(t0, clock()))
                            url = target
                            continue
                        if status != 200:
                            return FetchResult(req, failures.http_status_failure(status), status,
                                               "", 0, Timing(t0, clock()))
                        if (response.content_length or 0) > req.max_bytes:
                            return FetchResult(req, failures.FETCH_TOO_LARGE, status, "",
                                               response.content_length or 0, Timing(t0, clock()))
                        body = bytearray()
                        while chunk := await response.content.read(65536):
                            body += chunk
                            if len(body) > req.max_bytes:
                                return FetchResult(req, failures.FETCH_TOO_LARGE, status, "",
                                                   len(body), Timing(t0, clock()))
                        return FetchResult(req, None, status, base64.b64encode(body).decode(),
                                           len(body), Timing(t0, clock()))
                raise aiohttp.TooManyRedirects(response.request_info, response.history)
    except Exception as exc:
        return FetchResult(req, failures.classify_http(exc), status, "", 0, Timing(t0, clock()))


def _json_object(raw: bytes) -> dict | None:
    try:
        parsed = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return parsed if isinstance(parsed, dict) else None
