"""The censor's TLS alert injector: a transparent interceptor on port 443.

Some filters answer a ClientHello naming a blocked server with a forged TLS
alert record (handshake_failure, unrecognized_name...) and close the
connection, instead of resetting it or dropping it. The lab's censor redirects
TLS to the blocked service's addresses here (iptables REDIRECT); this process
reads the ClientHello, and when its SNI is one of ``--block NAME=ALERT`` sends
that alert (a TLS 1.2 record, as a middlebox forging it does) and closes with a
FIN; any other SNI is spliced to the original destination (SO_ORIGINAL_DST), so
innocuous names to the same addresses keep working.

Run as ``python -m probe.lab.tls_alert --port N --block web.example=40 --duration S``;
it exits by itself after ``--duration`` seconds, and bounds every connection in time.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import struct
import sys

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h; IP6T_SO_ORIGINAL_DST has the same value
ALERT_HANDSHAKE_FAILURE = 40  # RFC 8446 6.2 / RFC 5246 7.2.2
ALERT_UNRECOGNIZED_NAME = 112  # RFC 6066 3
CONNECTION_SECONDS = 30.0


def alert_record(description: int) -> bytes:
    """A fatal alert in a TLS 1.2 record (content type 21, level 2)."""
    return bytes([21, 3, 3, 0, 2, 2, description])


def client_hello_sni(data: bytes) -> str | None:
    """The server_name of a ClientHello in its first record (None: not one, or absent)."""
    try:
        if data[0] != 22 or data[5] != 1:
            return None
        at = 9 + 2 + 32  # record header 5, handshake header 4, version 2, random 32
        at += 1 + data[at]  # session id
        at += 2 + struct.unpack_from("!H", data, at)[0]  # cipher suites
        at += 1 + data[at]  # compression methods
        end = at + 2 + struct.unpack_from("!H", data, at)[0]
        at += 2
        while at + 4 <= end:
            kind, length = struct.unpack_from("!HH", data, at)
            at += 4
            if kind == 0:  # server_name: list length, type 0 (host_name), length, name
                name_length = struct.unpack_from("!H", data, at + 3)[0]
                return data[at + 5:at + 5 + name_length].decode("ascii", "replace").lower()
            at += length
    except (IndexError, struct.error):
        return None
    return None


def original_destination(sock: socket.socket) -> tuple[str, int]:
    if sock.family == socket.AF_INET6:
        raw = sock.getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, 28)
        port = struct.unpack_from("!H", raw, 2)[0]
        address = socket.inet_ntop(socket.AF_INET6, raw[8:24])
        if address.startswith("::ffff:"):
            raw = sock.getsockopt(socket.IPPROTO_IP, SO_ORIGINAL_DST, 16)
            return socket.inet_ntoa(raw[4:8]), struct.unpack_from("!H", raw, 2)[0]
        return address, port
    raw = sock.getsockopt(socket.IPPROTO_IP, SO_ORIGINAL_DST, 16)
    return socket.inet_ntoa(raw[4:8]), struct.unpack_from("!H", raw, 2)[0]


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


async def _serve(port: int, blocked: dict[str, int], duration: float) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(CONNECTION_SECONDS):
                hello = await asyncio.wait_for(reader.read(16 * 1024), 5)
                sni = client_hello_sni(hello)
                if sni in blocked:
                    writer.write(alert_record(blocked[sni]))
                    await writer.drain()
                    return
                host, dport = original_destination(writer.get_extra_info("socket"))
                up_reader, up_writer = await asyncio.open_connection(host, dport)
                up_writer.write(hello)
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except (TimeoutError, OSError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, host=None, port=port)  # IPv4 and IPv6
    async with server:
        print(f"tls-alert: listening on {port}", file=sys.stderr, flush=True)
        await asyncio.sleep(duration)


def _block(text: str) -> tuple[str, int]:
    name, _, alert = text.partition("=")
    return name.lower(), int(alert or ALERT_HANDSHAKE_FAILURE)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--block", type=_block, action="append", default=[],
                        help="NAME=ALERT: answer a ClientHello naming NAME with alert ALERT")
    parser.add_argument("--duration", type=float, required=True)
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.port, dict(args.block), args.duration))
    return 0


if __name__ == "__main__":
    sys.exit(main())
