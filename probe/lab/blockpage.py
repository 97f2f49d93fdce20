"""The censor's HTTP blockpage server (Iran's, as documented by OONI).

Iran's filtering answers blocked HTTP requests with a ``403 Forbidden`` whose
body is an iframe to ``http://10.10.34.34?type=Invalid Site&policy=MainPolicy``
(OONI, "Iran Protests: OONI data confirms censorship events", 2018; the
fingerprint is in OONI's blockpage list). The lab's censor redirects port-80
connections here. With ``--echo-client`` the page also repeats the client's
address in its body and in a header, as some ISPs' pages do, so the privacy
tests can check that no report carries it.

Run as ``python -m probe.lab.blockpage --port N --duration S``; it exits by
itself after ``--duration`` seconds. It listens on every address of the
censor's namespace and reads at most 16 KiB of a request. With ``--tls-pki`` and
``--tls-name`` it speaks HTTPS with the lab PKI's valid leaf for that name (an
ISP's blockpage host with a real certificate for itself, not for the site).
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import sys

IRAN_BLOCKPAGE = (
    '<html><head><meta http-equiv="Content-Type" content="text/html; charset=windows-1256">'
    "<title>M1-6\n</title></head><body>"
    '<iframe src="http://10.10.34.34?type=Invalid Site&policy=MainPolicy " '
    'style="width: 100%; height: 100%" scrolling="no" marginwidth="0" marginheight="0" '
    'frameborder="0" vspace="0" hspace="0"></iframe></body></html>\r\n'
)
ECHO_HEADER = "X-Client-Address"


# Russian ISPs answer blocked HTTP requests with a redirect to their own warning
# page citing the Roskomnadzor registry (e.g. warning.rt.ru; OONI's Russia
# reports). The lab's warning host is a name under lab.test that nobody serves.
WARNING_URL = "http://warning.isp.lab.test/?blocked=1"


# A blockpage no fingerprint knows: a plain 200 page with its own title, as many
# ISPs serve (Indonesia's ISPs each run their own; OONI's web_connectivity tells
# them from the real site by title and body length against its control).
UNKNOWN_BLOCKPAGE = (
    "<!DOCTYPE html><html><head><title>Akses ditolak / Access denied</title></head><body>"
    "<h1>This site cannot be reached from this network</h1>"
    + "<p>Access to this site has been restricted under the regulations in force. "
    "If you believe this is a mistake, contact your provider.</p>" * 8
    + "</body></html>\r\n"
)


def unknown_response() -> bytes:
    body = UNKNOWN_BLOCKPAGE.encode()
    head = ["HTTP/1.1 200 OK", "Content-Type: text/html; charset=utf-8",
            f"Content-Length: {len(body)}", "Connection: close"]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def redirect_response() -> bytes:
    body = b"<html><body>Access restricted</body></html>"
    head = ["HTTP/1.1 302 Found", f"Location: {WARNING_URL}", "Content-Type: text/html",
            f"Content-Length: {len(body)}", "Connection: close"]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def response(client_address: str | None) -> bytes:
    """The blockpage's full HTTP response; with an address, it echoes it."""
    body = IRAN_BLOCKPAGE
    headers = ["HTTP/1.1 403 Forbidden", "Content-Type: text/html; charset=windows-1256"]
    if client_address is not None:
        body = body.replace("</body>", f"<p>Your address: {client_address}</p></body>")
        headers.append(f"{ECHO_HEADER}: {client_address}")
    encoded = body.encode()
    headers += [f"Content-Length: {len(encoded)}", "Connection: close"]
    return ("\r\n".join(headers) + "\r\n\r\n").encode() + encoded


async def _serve(port: int, echo_client: bool, duration: float, redirect: bool = False,
                 page: str = "iran", host: str | None = None,
                 tls: ssl.SSLContext | None = None) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5):
                await reader.readuntil(b"\r\n\r\n")
            peer = writer.get_extra_info("peername")[0]
            peer = peer.removeprefix("::ffff:")
            if redirect:
                writer.write(redirect_response())
            elif page == "unknown":
                writer.write(unknown_response())
            else:
                writer.write(response(peer if echo_client else None))
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, host=host, port=port, limit=16 * 1024,
                                        ssl=tls)
    async with server:
        print(f"blockpage: listening on {port}", file=sys.stderr, flush=True)
        await asyncio.sleep(duration)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--echo-client", action="store_true")
    parser.add_argument("--redirect", action="store_true",
                        help="answer a 302 to a warning page instead (Russian ISPs)")
    parser.add_argument("--page", choices=("iran", "unknown"), default="iran",
                        help="Iran's 403 page, or a 200 page no fingerprint matches")
    parser.add_argument("--host", default=None, help="listen on this address only")
    parser.add_argument("--tls-pki", default=None,
                        help="serve over TLS with this lab PKI's leaf for --tls-name")
    parser.add_argument("--tls-name", default=None)
    parser.add_argument("--duration", type=float, required=True)
    args = parser.parse_args(argv)
    tls = None
    if args.tls_pki:
        from probe.lab.pki import load_pki

        leaf = load_pki(args.tls_pki).leaves[args.tls_name]
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(str(leaf.cert), str(leaf.key))
    asyncio.run(_serve(args.port, args.echo_client, args.duration, args.redirect, args.page,
                       args.host, tls))
    return 0


if __name__ == "__main__":
    sys.exit(main())
