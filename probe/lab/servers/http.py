"""A tiny HTTP/1.1 origin for the fake Internet, plain or under TLS.

Every page is an HTML document whose ``<title>`` depends on the Host header (so
the engine can tell the real page from a block page); ``/download`` streams a
configured number of bytes for throughput; configured paths redirect. POST
answers like Telegram's datacenters, which run an old nginx on ports 80 and 443:
``501 Not Implemented`` when the request has a length and ``411 Length
Required`` when it has none (OONI's telegram test saw both, see
https://github.com/ooni/probe/issues/756). Anything the server cannot parse
gets a 400 and the connection is closed; nothing is buffered beyond
``Limits.max_request``.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import formatdate
from urllib.parse import parse_qs, urlsplit

from probe.lab.servers.stream import Connection, Endpoint, Limits, StreamServer

MAX_HEADER = 16 * 1024
MAX_REQUESTS_PER_CONNECTION = 100
MAX_DOWNLOAD = 64 << 20
_DOWNLOAD_BLOCK = bytes(range(256)) * 256  # 64 KiB, incompressible enough for a lab

REASONS = {
    200: "OK",
    301: "Moved Permanently",
    302: "Found",
    400: "Bad Request",
    404: "Not Found",
    405: "Not Allowed",
    411: "Length Required",
    413: "Request Entity Too Large",
    501: "Not Implemented",
}


@dataclass(frozen=True)
class HttpSite:
    """What an HTTP(S) server serves.

    ``titles`` maps a host (no port) to its page title; other hosts get
    ``default_title``. ``redirects`` maps a path to a Location answered with 302.
    """

    titles: Mapping[str, str] = field(default_factory=dict)
    default_title: str = "probe lab"
    download_size: int = 4 << 20
    redirects: Mapping[str, str] = field(default_factory=dict)
    server_header: str = "nginx"

    def title_for(self, host: str) -> str:
        return self.titles.get(host, self.default_title)


# Telegram datacenters' HTTP personality (nginx/0.3.33 answered OONI in 2017-2019).
TELEGRAM_SITE = HttpSite(default_title="Telegram datacenter", server_header="nginx/0.3.33")


@dataclass
class Request:
    method: str
    target: str
    version: str
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "

    @property
    def host(self) -> str:
        host = self.headers.get("host", "")
        if host.startswith("["):  # [2001:db8::1]:8080
            return host[1 : host.find("]")] if "]" in host else host
        return host.rsplit(":", 1)[0] if host.count(":") == 1 else host

    @property
    def keep_alive(self) -> bool:
        connection = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.0":
            return connection == "keep-alive"
        return connection != "close"


class BadRequest(ValueError):
    pass


def parse_request_head(head: bytes) -> Request:
    """A request line and headers (ending with the blank line); raises BadRequest."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[0].isalpha() or not parts[2].startswith("HTTP/1."):
        raise BadRequest(f"bad request line {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise BadRequest(f"bad header line {line[:80]!r}")
        key = name.lower()
        headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    return Request(parts[0], parts[1], parts[2], headers)


def error_page(status: int, server_header: str) -> bytes:
    """nginx's error page layout, as Telegram's datacenters send it."""
    line = f"{status} {REASONS.get(status, 'Error')}"
    return (
        f'<html>\r\n<head><title>{line}</title></head>\r\n<body bgcolor="white">\r\n'
        f"<center><h1>{line}</h1></center>\r\n<hr><center>{server_header}</center>\r\n"
        "</body>\r\n</html>\r\n"
    ).encode()


def page(title: str, host: str) -> bytes:
    title, host = html.escape(title), html.escape(host)
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>{title}</title></head>\n<body><h1>{title}</h1>\n"
        f"<p>A page of the probe lab's fake Internet, served for {host or 'no host'}.</p>\n"
        "</body></html>\n"
    ).encode()


def _head(
    status: int,
    site: HttpSite,
    length: int,
    *,
    content_type: str = "text/html",
    keep_alive: bool,
    extra: Sequence[tuple[str, str]] = (),
) -> bytes:
    headers = [
        ("Server", site.server_header),
        ("Date", formatdate(usegmt=True)),
        ("Content-Type", content_type),
        ("Content-Length", str(length)),
        ("Connection", "keep-alive" if keep_alive else "close"),
        *extra,
    ]
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}"]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _discard_body(connection: Connection, request: Request) -> bool:
    """Read and drop a Content-Length body; False when it is over the size limit."""
    raw = request.headers.get("content-length", "0")
    if not raw.isdigit():
        raise BadRequest(f"bad Content-Length {raw[:20]!r}")
    remaining = int(raw)
    if remaining > connection.limits.max_request:
        return False
    while remaining:
        chunk = await connection.recv(min(remaining, 65536))
        if not chunk:
            raise BadRequest("body ended early")
        remaining -= len(chunk)
    return True


async def _send_download(
    connection: Connection, site: HttpSite, request: Request, keep_alive: bool
) -> None:
    query = parse_qs(urlsplit(request.target).query)
    size = site.download_size
    if query.get("bytes", [""])[0].isdigit():
        size = min(int(query["bytes"][0]), MAX_DOWNLOAD)
    await connection.send(
        _head(200, site, size, content_type="application/octet-stream", keep_alive=keep_alive)
    )
    if request.method == "HEAD":
        return
    remaining = size
    while remaining:
        block = _DOWNLOAD_BLOCK[: min(remaining, len(_DOWNLOAD_BLOCK))]
        await connection.send(block)
        remaining -= len(block)


async def respond(connection: Connection, site: HttpSite, request: Request) -> bool:
    """Answer one parsed request; True when the connection may serve another."""
    keep_alive = request.keep_alive
    chunked = "transfer-encoding" in request.headers
    if chunked:
        keep_alive = False  # we never read chunked bodies, so the stream is unusable after
        body_fits = True
    else:
        body_fits = await _discard_body(connection, request)
    path = urlsplit(request.target).path or "/"

    async def send(status: int, body: bytes, extra: Sequence[tuple[str, str]] = ()) -> None:
        head = _head(status, site, len(body), keep_alive=keep_alive, extra=extra)
        await connection.send(head if request.method == "HEAD" else head + body)

    if not body_fits:
        keep_alive = False
        await send(413, error_page(413, site.server_header))
    elif request.method == "POST":
        status = 501 if chunked or "content-length" in request.headers else 411
        await send(status, error_page(status, site.server_header))
    elif request.method not in ("GET", "HEAD"):
        await send(405, error_page(405, site.server_header))
    elif path in site.redirects:
        location = site.redirects[path]
        await send(302, error_page(302, site.server_header), [("Location", location)])
    elif path == "/download":
        await _send_download(connection, site, request, keep_alive)
    else:
        await send(200, page(site.title_for(request.host), request.host))
    return keep_alive


async def serve_http(connection: Connection, site: HttpSite) -> None:
    """Serve HTTP/1.1 requests on ``connection`` until close, error or the request cap."""
    for _ in range(MAX_REQUESTS_PER_CONNECTION):
        try:
            head = await connection.recv_until(b"\r\n\r\n", MAX_HEADER)
        except ValueError:  # headers beyond MAX_HEADER: answer and close
            body = error_page(400, site.server_header)
            await connection.send(_head(400, site, len(body), keep_alive=False) + body)
            return
        try:
            request = parse_request_head(head)
            if not await respond(connection, site, request):
                return
        except BadRequest:
            body = error_page(400, site.server_header)
            await connection.send(_head(400, site, len(body), keep_alive=False) + body)
            return


class HttpServer(StreamServer):
    """Plain HTTP (port 80 in the lab) serving an :class:`HttpSite`."""

    kind = "http"

    def __init__(
        self,
        listen: Sequence[Endpoint],
        site: HttpSite | None = None,
        limits: Limits | None = None,
    ) -> None:
        super().__init__(listen, limits)
        self.site = site or HttpSite()

    async def handle(self, connection: Connection) -> None:
        await serve_http(connection, self.site)
