"""The collector's limits (enforced with ``probe.serving.buckets``).

A collector is exposed to the Internet and to whoever wants it down: every
resource a request can consume has a bound here (bytes, lines, requests in
flight, open connections, seconds) and rate limits per uploader address and per
probe key. Rate-limit state lives in memory only, in tables of bounded size: an
address is kept only as long as its bucket is not full again, and is never
written to disk or to a log.
"""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """Every bound of the collector; the defaults suit a small NGO's server."""

    max_body_bytes: int = 8 * MIB  # after decompression (and before: gzip never grows past it)
    max_line_bytes: int = 1 * MIB
    max_lines: int = 5000  # per request
    max_concurrent_uploads: int = 16  # uploads being processed at once; more get 503
    max_connections: int = 1024  # open TCP connections; more are closed at once
    max_connections_per_address: int = 32  # from one address (IPv6: one /64); more closed
    connection_rate: float = 4.0  # new connections per second per address, sustained
    connection_burst: float = 64.0  # new connections per address at once
    header_timeout: float = 10.0  # seconds for a new connection to send its first request
    body_timeout: float = 60.0  # seconds to receive a whole request body
    idle_timeout: float = 15.0  # keep-alive: seconds from a response to the next request head
    address_rate: float = 5.0  # upload requests per second per address, sustained
    address_burst: float = 60.0
    key_rate: float = 200.0  # new lines per second per probe key, sustained
    key_burst: float = 20000.0  # a probe coming back online uploads its spool at once
    max_tracked: int = 100_000  # addresses or keys held in memory for rate limiting
