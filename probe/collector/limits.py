"""The collector's limits (enforced with ``probe.serving.buckets``), and who a client is.

A collector is exposed to the Internet and to whoever wants it down: every
resource a request can consume has a bound here (bytes, lines, requests in
flight per client and in all, open connections, seconds, the body's arrival
rate) and every resource an uploader can make it keep has a quota (bytes a day
per probe key and per client network, new probe keys an hour, a floor of free
disk). Rate-limit and quota state lives in memory only, in tables of bounded
size: a client network is kept only as long as its bucket is not full again,
and is never written to disk or to a log. docs/collector.md lists every limit
with its default and the attack it answers.
"""

from __future__ import annotations

from dataclasses import dataclass

KIB = 1024
MIB = 1024 * 1024
DAY = 86400.0
HOUR = 3600.0


@dataclass(frozen=True)
class Limits:
    """Every bound of the collector; the defaults suit a small NGO's server."""

    max_body_bytes: int = 8 * MIB  # after decompression (and before: gzip never grows past it)
    max_line_bytes: int = 1 * MIB
    max_lines: int = 5000  # per request
    max_concurrent_uploads: int = 16  # uploads being processed at once; more get 503
    max_uploads_per_client: int = 2  # uploads in flight from one client network; more get 429
    max_connections: int = 1024  # open TCP connections; more are closed at once
    max_connections_per_address: int = 32  # from one address (IPv6: one /64); more closed
    connection_rate: float = 4.0  # new connections per second per address, sustained
    connection_burst: float = 64.0  # new connections per address at once
    header_timeout: float = 10.0  # seconds for a new connection to send its first request
    body_timeout: float = 60.0  # seconds to receive a whole request body
    min_body_rate: float = 8 * KIB  # bytes a second a body must keep up after the grace
    body_rate_grace: float = 10.0  # seconds before the body rate is enforced
    idle_timeout: float = 15.0  # keep-alive: seconds from a response to the next request head
    address_rate: float = 5.0  # upload requests per second per client network, sustained
    address_burst: float = 60.0
    key_rate: float = 200.0  # new lines per second per probe key, sustained
    key_burst: float = 20000.0  # a probe coming back online uploads its spool at once
    key_bytes_per_day: int = 256 * MIB  # new bytes stored per probe key a day
    client_bytes_per_day: int = 512 * MIB  # new bytes stored per client network a day
    new_keys_per_client_hour: int = 10  # probe keys first seen, per client network an hour
    new_keys_per_hour: int = 1000  # probe keys first seen an hour, all clients together
    min_free_bytes: int = 1024 * MIB  # refuse uploads (507) below this much free disk...
    min_free_percent: float = 5.0  # ...or below this share of the data filesystem
    max_logged_rejections: int = 3  # rejected-line log records per upload, then a summary
    max_tracked: int = 100_000  # client networks or keys held in memory for rate limiting
