"""Plain TCP endpoints: an echo/hold listener and the hostile peers of failure tests.

WhatsApp's chat endpoints (443, 5222) only need to accept and talk back, so
``echo`` stands for them. The other modes are what the engine's failure table
must classify from real sockets, never from mocks:

- ``silent``: accepts, reads, never sends (a black-holing middlebox after the
  handshake; the client's read times out);
- ``reset``: resets (RST, SO_LINGER 0) when the first bytes arrive, as an
  on-path censor does on a ClientHello (``connection_reset``);
- ``reset_on_accept``: resets right after accepting;
- ``eof``: sends FIN right after accepting but keeps reading, so the client
  sees a clean end of stream, not a reset (``eof_error``).
"""

from __future__ import annotations

from collections.abc import Sequence

from probe.lab.servers.stream import Connection, Endpoint, Limits, StreamServer

MODES = ("echo", "silent", "reset", "reset_on_accept", "eof")


class TcpServer(StreamServer):
    kind = "tcp"

    def __init__(
        self, listen: Sequence[Endpoint], mode: str = "echo", limits: Limits | None = None
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"tcp mode must be one of {MODES}, not {mode!r}")
        super().__init__(listen, limits)
        self.mode = mode

    async def handle(self, connection: Connection) -> None:
        if self.mode == "reset_on_accept":
            connection.reset()
            return
        if self.mode == "eof":
            await connection.send_eof()
        while data := await connection.recv():
            if self.mode == "reset":
                connection.reset()
                return
            if self.mode == "echo":
                await connection.send(data)
