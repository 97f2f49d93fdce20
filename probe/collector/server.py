"""The collector's HTTP server: the upload protocol of docs/upload-protocol.md over aiohttp.

``POST /v1/measurements`` takes signed report lines (JSON Lines, gzip allowed),
checks each one (:mod:`probe.collector.lines`, in a pool of worker processes so
the event loop stays responsive), stores the good ones durably
(:mod:`probe.collector.store`, group-committed by one writer thread) and answers
one result per line. ``GET /health`` answers ``ok``.

It is built to face the Internet: every request is bounded in bytes, lines and
time, uploads in flight are bounded in all and per client (more get 503 or
429 at once, never a queue), a body must keep up a minimum rate, connections
are bounded in number and must start a request within seconds, and uploads
are rate-limited and get disk quotas per client network and per probe key.
Trust comes before work: the uploader names its key in ``X-Probe-Key``, and a
collector with trusted keys refuses a stranger before reading its body; every
line must then be signed by that key. The uploader's address (its /64 for
IPv6) is used for the per-client limits, in memory, and nowhere else: it is
never logged (aiohttp's access log is off; our own log lines have none) and
never stored. Text an uploader controls is truncated and escaped in logs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import multiprocessing
import os
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from aiohttp import web

from probe import __version__
from probe.bogons import IPNetwork
from probe.collector.limits import DAY, HOUR, Limits
from probe.collector.lines import CheckedLine, LinePolicy, check_line, split_lines
from probe.collector.store import DUPLICATE, REJECTED, STORED, Accepted, Outcome, Store, StoreError
from probe.report.keys import KeyFormatError, decode_public_key, fingerprint
from probe.serving.buckets import TokenBucket, TokenBuckets, retry_after_seconds
from probe.serving.clients import client_address, client_key
from probe.serving.connections import ConnectionLimits, serving
from probe.serving.logs import install

log = logging.getLogger("probe.collector")

UPLOAD_PATH = "/v1/measurements"
CONTENT_TYPES = frozenset({"application/x-ndjson", "application/jsonl", "application/json"})
CHUNK_LINES = 200  # lines per task sent to a checking worker
MAX_GROUP_LINES = 50_000  # lines committed (and fsynced) together at most
KEY_HEADER = "X-Probe-Key"  # the uploader's probe key (base64), docs/upload-protocol.md
UNCHECKED = "unchecked"  # a line the collector did not look at: send it again
MAX_REJECTED_LINES = 400  # rejected lines after which the rest of an upload is not checked
MAX_REASON_CHARS = 300  # of a rejection reason in an answer
MAX_LOGGED_CHARS = 120  # of any text an uploader controls, in a log record
DISK_RETRY = 600  # seconds an uploader waits when the disk is nearly full


class RequestRefused(Exception):
    """A whole request is refused: ``status`` and a reason for the uploader."""

    def __init__(self, status: int, reason: str, retry_after: int | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.retry_after = retry_after


def check_lines(lines: Sequence[bytes], policy: LinePolicy) -> list[CheckedLine]:
    """Check a chunk of lines (runs in a worker process)."""
    return [check_line(line, policy) for line in lines]


def _exit_with(collector_pid: int) -> None:
    """Worker initializer: exit when the collector is gone (kill -9 leaves no orphans)."""

    def watch() -> None:
        while True:
            time.sleep(1.0)
            try:
                os.kill(collector_pid, 0)
            except ProcessLookupError:
                os._exit(0)
            except PermissionError:
                pass  # alive, owned by someone else: cannot happen for our parent

    threading.Thread(target=watch, name="watch-collector", daemon=True).start()


# --------------------------------------------------------------------------- #
# group commit: one writer thread, many uploads per fsync                      #
# --------------------------------------------------------------------------- #


@dataclass
class _Pending:
    items: list[Accepted]
    future: asyncio.Future[list[Outcome]]


class GroupWriter:
    """Hands accepted lines to :meth:`Store.commit`, many uploads per call.

    While one commit (write + fsync) runs in the writer thread, new uploads
    queue up and go together into the next one: under load, one fsync per
    file serves many uploads.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="store")
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="store-writer")

    async def submit(self, items: list[Accepted]) -> list[Outcome]:
        if not items:
            return []
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(items, future))
        return await asyncio.shield(future)  # a gone client does not cancel a commit

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            group = [await self._queue.get()]
            size = len(group[0].items)
            while not self._queue.empty() and size < MAX_GROUP_LINES:
                pending = self._queue.get_nowait()
                group.append(pending)
                size += len(pending.items)
            try:
                outcomes = await loop.run_in_executor(
                    self._thread, self.store.commit, [p.items for p in group]
                )
            except Exception as error:  # noqa: BLE001 - the writer must outlive any one group
                if not isinstance(error, StoreError):
                    log.exception("store: unexpected error")
                    error = StoreError(f"{type(error).__name__}: {error}")
                log.error("store: %s (%d upload(s) answered 503)", error, len(group))
                for pending in group:
                    if not pending.future.done():
                        pending.future.set_exception(error)
                continue
            for pending, result in zip(group, outcomes, strict=False):
                if not pending.future.done():
                    pending.future.set_result(result)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._thread.shutdown(wait=True)


# --------------------------------------------------------------------------- #
# the collector                                                                #
# --------------------------------------------------------------------------- #


class Collector:
    """The upload endpoint's state: store, policy, limits, rate-limit and quota buckets."""

    def __init__(
        self,
        store: Store,
        policy: LinePolicy | None = None,
        limits: Limits | None = None,
        check_workers: int = 2,
        clock: Callable[[], float] = time.monotonic,
        proxies: tuple[IPNetwork, ...] = (),
    ) -> None:
        policy = policy or LinePolicy()
        self.proxies = proxies  # reverse proxies whose X-Forwarded-For names the client
        limits = limits or Limits()
        self.store = store
        self.limits = limits
        self.policy = LinePolicy(
            policy.trusted_keys, policy.trusted_control_keys, limits.max_line_bytes
        )
        self.check_workers = check_workers
        tracked = limits.max_tracked
        self.address_buckets = TokenBuckets(
            limits.address_rate, limits.address_burst, tracked, clock
        )
        self.key_buckets = TokenBuckets(limits.key_rate, limits.key_burst, tracked, clock)
        self.key_bytes = _daily(limits.key_bytes_per_day, tracked, clock)
        self.client_bytes = _daily(limits.client_bytes_per_day, tracked, clock)
        per_client_hour = max(1, limits.new_keys_per_client_hour)
        self.client_new_keys = TokenBuckets(per_client_hour / HOUR, per_client_hour, tracked, clock)
        per_hour = max(1, limits.new_keys_per_hour)
        self.new_keys = TokenBucket(per_hour, per_hour / HOUR, clock)
        self.writer = GroupWriter(store)
        self.uploads_in_flight = 0
        self.client_uploads: Counter[str] = Counter()  # uploads in flight per client network
        self._pool: concurrent.futures.Executor | None = None
        self.totals: Counter[str] = Counter()
        self.refusal_log = _LogBudget(clock)

    async def start(self) -> None:
        self.writer.start()
        if self.check_workers > 0:
            # forkserver: workers never inherit the event loop, threads or sockets.
            context = multiprocessing.get_context("forkserver")
            self._pool = concurrent.futures.ProcessPoolExecutor(
                self.check_workers,
                mp_context=context,
                initializer=_exit_with,
                initargs=(os.getpid(),),
            )
            # Start the workers now, so the first upload does not pay for it.
            await asyncio.get_running_loop().run_in_executor(
                self._pool, check_lines, [], self.policy
            )
        else:
            self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="check")

    async def close(self) -> None:
        await self.writer.close()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self.store.close()

    # `--targets-feed FILE`: the NGO's signed targets feed, served at GET /targets
    # (docs/targets.md); the file is re-read when it changes, cached otherwise.
    targets_feed: str | None = None
    _targets_feed_cache: tuple[tuple[int, int, int], bytes] | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.limits.max_body_bytes)
        app.router.add_get("/health", self.health)
        app.router.add_post(UPLOAD_PATH, self.upload)
        if self.targets_feed is not None:
            app.router.add_get("/targets", self.serve_targets_feed)
        return app

    async def serve_targets_feed(self, request: web.Request) -> web.Response:
        max_bytes = 4 * 1024 * 1024  # probes refuse a larger feed anyway
        path = str(self.targets_feed)  # the route exists only when it is set
        try:
            info = os.stat(path)
            version = (info.st_ino, info.st_mtime_ns, info.st_size)
            if self._targets_feed_cache is None or self._targets_feed_cache[0] != version:
                with open(path, "rb") as stream:
                    self._targets_feed_cache = (version, stream.read(max_bytes + 1))
        except OSError:
            raise web.HTTPServiceUnavailable(text="no targets feed now") from None
        body = self._targets_feed_cache[1]
        if len(body) > max_bytes:
            raise web.HTTPServiceUnavailable(text="the targets feed is too large")
        return web.Response(body=body, content_type="application/json")

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def upload(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        client = client_key(self._client_address(request))
        try:
            # Everything that can refuse a request without reading its body comes first.
            if self.uploads_in_flight >= self.limits.max_concurrent_uploads:
                raise RequestRefused(503, "busy: too many uploads at once, retry later", 1)
            if self.client_uploads[client] >= self.limits.max_uploads_per_client:
                raise RequestRefused(
                    429,
                    f"at most {self.limits.max_uploads_per_client} uploads at once from "
                    "your network; wait for one to end",
                    1,
                )
            wait = self.address_buckets.take(client)
            if wait:
                raise RequestRefused(
                    429, "too many requests from your address", retry_after_seconds(wait)
                )
            self.uploads_in_flight += 1
            self.client_uploads[client] += 1
            try:
                results = await self._upload(request, client)
            finally:
                self.uploads_in_flight -= 1
                self.client_uploads[client] -= 1
                if not self.client_uploads[client]:
                    del self.client_uploads[client]
        except RequestRefused as refused:
            self.totals[f"http_{refused.status}"] += 1
            self.refusal_log.info(
                "upload refused (%d): %s", refused.status, _loggable(refused.reason)
            )
            return _error(refused)
        counts = Counter(r["status"] for r in results)
        self.totals.update(counts)
        log.info(
            "upload: %d line(s): %d stored, %d duplicate, %d rejected%s in %.0f ms",
            len(results),
            counts[STORED],
            counts[DUPLICATE],
            counts[REJECTED],
            f", {counts[UNCHECKED]} unchecked" if counts[UNCHECKED] else "",
            (time.perf_counter() - started) * 1000,
        )
        return web.json_response({"results": results})

    def _client_address(self, request: web.Request) -> str | None:
        """The uploader's address: the peer's, or what our own reverse proxy says it is
        (``probe.serving.clients.client_address``: only a listed proxy is believed)."""
        return client_address(request.remote, request.headers.get("X-Forwarded-For"),
                              self.proxies)

    def _request_policy(self, request: web.Request) -> tuple[LinePolicy, str | None]:
        """The policy for this upload's lines, from its X-Probe-Key header; refuses untrusted.

        One upload, one key: with the header, every line must be signed by the
        key it names. With ``--trusted-keys`` the header is required, so an
        untrusted uploader is refused before its body is read or a line is checked.
        """
        named = request.headers.get(KEY_HEADER)
        if named is None:
            if self.policy.trusted_keys is not None:
                raise RequestRefused(
                    403,
                    f"this collector accepts only enrolled probe keys: name yours in the "
                    f"{KEY_HEADER} header (probe upload does; update probe)",
                )
            return self.policy, None
        named = named.strip()
        try:
            key_id = fingerprint(decode_public_key(named))
        except KeyFormatError as error:
            raise RequestRefused(
                400, f"{KEY_HEADER} is not a base64 Ed25519 public key ({error})"
            ) from None
        trusted = self.policy.trusted_keys
        if trusted is not None and named not in trusted and key_id not in trusted:
            raise RequestRefused(
                403,
                f"probe key {key_id} is not enrolled at this collector: ask its operator to "
                "add it to the trusted keys (probe key show prints it)",
            )
        return replace(self.policy, trusted_keys=frozenset({named})), key_id

    def _refuse_when_disk_full(self, writing: int = 0) -> None:
        """507 when the data filesystem would have less than the floor free after ``writing``."""
        free, size = self.store.free_space()
        floor = max(self.limits.min_free_bytes, size * self.limits.min_free_percent / 100)
        if free - writing < floor:
            raise RequestRefused(
                507, "the collector's disk is nearly full; retry later", DISK_RETRY
            )

    def _refuse_when_out_of_room(self, key_id: str | None, client: str) -> None:
        """Refuse at once when a quota or the disk is already exhausted (nothing read yet)."""
        self._refuse_when_disk_full()
        if self.client_bytes.available(client) < 1:
            wait = self.client_bytes.take(client, 1)
            raise RequestRefused(
                429, "your network has used its storage quota for today", retry_after_seconds(wait)
            )
        if key_id is not None and self.key_bytes.available(key_id) < 1:
            wait = self.key_bytes.take(key_id, 1)
            raise RequestRefused(
                429,
                f"probe key {key_id} has used its storage quota for today",
                retry_after_seconds(wait),
            )

    async def _upload(self, request: web.Request, client: str) -> list[dict[str, Any]]:
        if request.content_type not in CONTENT_TYPES:
            raise RequestRefused(
                400, f"Content-Type {_loggable(request.content_type)!r} is not application/x-ndjson"
            )
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("identity", "gzip", ""):
            raise RequestRefused(
                400, f"Content-Encoding {_loggable(encoding)!r}: only gzip is accepted"
            )
        length = request.content_length
        if length is not None and length > self.limits.max_body_bytes:
            raise RequestRefused(413, self._too_large())
        policy, named_key = self._request_policy(request)
        self._refuse_when_out_of_room(named_key, client)
        body = await self._read_body(request, encoding == "gzip")
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as error:
            raise RequestRefused(400, f"the body is not UTF-8 (byte {error.start})") from None
        lines = split_lines(body)
        if not lines:
            raise RequestRefused(400, "the body holds no line")
        if len(lines) > self.limits.max_lines:
            raise RequestRefused(
                413, f"{len(lines)} lines in one request; at most {self.limits.max_lines}"
            )
        checked = await self._check(lines, policy)
        accepted = [
            Accepted.from_checked(c, line)
            for c, line in zip(checked, lines, strict=False)
            if c is not None and c.ok
        ]
        new = [a for a in accepted if not self.store.known(a.dedupe_key)]
        self._refuse_when_disk_full(sum(item.size for item in new))
        refunds = self._charge(new, client)
        try:
            outcomes = iter(await self.writer.submit(accepted))
        except StoreError:
            for refund in refunds:
                refund()
            raise RequestRefused(
                503, "the collector cannot store right now, retry later", 30
            ) from None
        results = []
        logged = rejected = 0
        for number, item in enumerate(checked, start=1):
            if item is None:
                results.append(
                    {
                        "line": number,
                        "measurement_uid": None,
                        "status": UNCHECKED,
                        "reason": "not checked: too many lines of this upload were rejected; "
                        "send it again",
                    }
                )
                continue
            if item.ok:
                outcome = next(outcomes)
                status, reason = outcome.status, outcome.reason
            else:
                status, reason = REJECTED, item.reason
            if status == REJECTED:
                rejected += 1
                if logged < self.limits.max_logged_rejections:
                    logged += 1
                    self.refusal_log.info(
                        "rejected line %d (key %s): %s",
                        number,
                        _loggable(item.key_id or "?", 16),
                        _loggable(reason or ""),
                    )
            results.append(
                {
                    "line": number,
                    "measurement_uid": item.measurement_uid,
                    "status": status,
                    "reason": reason if reason is None else reason[:MAX_REASON_CHARS],
                }
            )
        if rejected > logged:
            self.refusal_log.info(
                "... and %d more rejected line(s) in that upload", rejected - logged
            )
        return results

    def _charge(self, new: list[Accepted], client: str) -> list[Callable[[], None]]:
        """Charge the rate limits and quotas for lines not stored before; all or none.

        Returns how to give everything back (when the store then fails). Quotas
        count new lines only: a retried upload costs nothing.
        """
        refunds: list[Callable[[], None]] = []

        def take(buckets: TokenBuckets, name: str, amount: float, refusal: str) -> None:
            if amount <= 0:
                return
            # TokenBuckets lets a request larger than a whole bucket through once the
            # bucket is full (a big spool is slowed, not refused): right for bytes and
            # lines, bounded by the body limit, but not for new keys.
            if buckets is self.client_new_keys and amount > buckets.burst:
                wait = HOUR
            else:
                wait = buckets.take(name, amount)
            if wait:
                for refund in refunds:
                    refund()
                raise RequestRefused(429, refusal, retry_after_seconds(wait))
            refunds.append(lambda: buckets.give_back(name, amount))

        lines_by_key = Counter(a.key_id for a in new)
        bytes_by_key: Counter[str] = Counter()
        for item in new:
            bytes_by_key[item.key_id] += item.size
        new_keys = {k for k in lines_by_key if not self.store.known_key(k)}
        take(
            self.client_new_keys,
            client,
            len(new_keys),
            f"this upload brings {len(new_keys)} probe key(s) new to this collector; at most "
            f"{self.limits.new_keys_per_client_hour} new keys an hour from one network",
        )
        if new_keys:
            if not self.new_keys.take(len(new_keys)):
                for refund in refunds:
                    refund()
                raise RequestRefused(
                    429, "too many new probe keys at this collector this hour; retry later", 600
                )
            count = len(new_keys)
            refunds.append(lambda: self.new_keys.give_back(count))
        take(
            self.client_bytes,
            client,
            sum(bytes_by_key.values()),
            "your network has used its storage quota for today",
        )
        for key_id in sorted(lines_by_key):
            take(
                self.key_bytes,
                key_id,
                bytes_by_key[key_id],
                f"probe key {key_id} has used its storage quota for today",
            )
            take(
                self.key_buckets,
                key_id,
                lines_by_key[key_id],
                f"probe key {key_id} is uploading too fast",
            )
        return refunds

    def _too_large(self) -> str:
        return f"the body is larger than {self.limits.max_body_bytes} bytes (after gunzip)"

    async def _read_body(self, request: web.Request, gzipped: bool) -> bytes:
        """The whole body, inflated; refused as soon as it is too big or too slow.

        Two clocks run while it arrives: the whole body within ``body_timeout``,
        and, after ``body_rate_grace`` seconds, at least ``min_body_rate`` bytes a
        second on average since then: a client that trickles a byte every few
        seconds loses its upload slot within seconds, not at the body timeout.
        """
        limits = self.limits
        limit = limits.max_body_bytes
        received = 0
        body = bytearray()
        inflater = zlib.decompressobj(wbits=31) if gzipped else None
        started = time.monotonic()
        give_up = started + limits.body_timeout
        try:
            while True:
                # The moment the bytes received so far stop being enough.
                too_slow = started + limits.body_rate_grace + received / limits.min_body_rate
                deadline = min(give_up, too_slow)
                now = time.monotonic()
                if now >= deadline:
                    if deadline == give_up:
                        raise RequestRefused(
                            408,
                            f"the body did not arrive within {limits.body_timeout:g} seconds",
                        )
                    raise RequestRefused(
                        408,
                        f"the body arrives slower than {limits.min_body_rate / 1024:g} KiB/s",
                    )
                try:
                    async with asyncio.timeout(deadline - now):
                        chunk = await request.content.readany()
                except TimeoutError:
                    continue  # the loop says which clock ran out
                if not chunk:
                    break
                received += len(chunk)
                if received > limit:
                    raise RequestRefused(413, self._too_large())
                if inflater is None:
                    body += chunk
                    continue
                if inflater.eof:
                    raise RequestRefused(400, "data after the end of the gzip stream")
                # Never inflate more than the limit, whatever the ratio (gzip bombs).
                body += inflater.decompress(chunk, limit + 1 - len(body))
                if len(body) > limit or inflater.unconsumed_tail:
                    raise RequestRefused(413, self._too_large())
                if inflater.unused_data:
                    raise RequestRefused(400, "data after the end of the gzip stream")
        except zlib.error as error:
            raise RequestRefused(400, f"the body is not valid gzip ({error})") from None
        if inflater is not None and not inflater.eof:
            raise RequestRefused(400, "the gzip stream is cut short")
        return bytes(body)

    async def _check(self, lines: list[bytes], policy: LinePolicy) -> list[CheckedLine | None]:
        """Check lines in waves, one chunk per worker; None for lines never checked.

        Waves keep one upload from queueing all its chunks ahead of everyone
        else's, and let an upload of junk stop costing CPU once
        ``MAX_REJECTED_LINES`` of its lines were rejected.
        """
        loop = asyncio.get_running_loop()
        chunks = [lines[i : i + CHUNK_LINES] for i in range(0, len(lines), CHUNK_LINES)]
        wave = max(1, self.check_workers)
        checked: list[CheckedLine | None] = []
        rejected = 0
        for start in range(0, len(chunks), wave):
            if rejected >= MAX_REJECTED_LINES:
                checked += [None] * sum(len(chunk) for chunk in chunks[start:])
                break
            try:
                done = await asyncio.gather(
                    *(
                        loop.run_in_executor(self._pool, check_lines, chunk, policy)
                        for chunk in chunks[start : start + wave]
                    )
                )
            except concurrent.futures.BrokenExecutor:
                raise RequestRefused(503, "the collector is restarting its checkers", 5) from None
            for chunk_result in done:
                self.totals["lines_checked"] += len(chunk_result)
                rejected += sum(1 for item in chunk_result if not item.ok)
                checked += chunk_result
        return checked


def _daily(per_day: int, tracked: int, clock: Callable[[], float]) -> TokenBuckets:
    """A quota of ``per_day`` a day, as a bucket that refills continuously."""
    return TokenBuckets(max(per_day, 1) / DAY, max(per_day, 1), tracked, clock)


def _loggable(text: str, limit: int = MAX_LOGGED_CHARS) -> str:
    """Attacker-controlled text made safe for one log line: escaped, truncated."""
    head = text[: limit + 1]
    escaped = "".join(c if c.isprintable() else repr(c)[1:-1] for c in head)
    if len(escaped) > limit or len(text) > limit:
        return escaped[:limit] + f"...({len(text)} chars)"
    return escaped


class _LogBudget:
    """At most a burst of log records, then a few a second; says how many were dropped.

    Used for every record an uploader can cause at will (refusals, rejected
    lines), so no flood of requests turns into a flood of log.
    """

    def __init__(
        self, clock: Callable[[], float], burst: float = 20, per_second: float = 2
    ) -> None:
        self.bucket = TokenBucket(burst, per_second, clock)
        self.dropped = 0

    def info(self, message: str, *args: Any) -> None:
        if not log.isEnabledFor(logging.INFO):
            return
        if not self.bucket.take():
            self.dropped += 1
            return
        if self.dropped:
            message += " (and %d similar record(s) not logged)"
            args = (*args, self.dropped)
            self.dropped = 0
        log.info(message, *args)


def _error(refused: RequestRefused) -> web.Response:
    headers = {}
    if refused.retry_after is not None:
        headers["Retry-After"] = str(refused.retry_after)
    response = web.json_response({"error": refused.reason}, status=refused.status, headers=headers)
    # Whatever is left of a refused body is not worth reading: close the connection.
    response.force_close()
    return response


# --------------------------------------------------------------------------- #
# connections: how many, from whom, and how long before they must send a request #
# --------------------------------------------------------------------------- #


def connection_limits(limits: Limits) -> ConnectionLimits:
    """The collector's bounds on connections, for the shared guard (probe.serving)."""
    return ConnectionLimits(
        max_connections=limits.max_connections,
        max_per_client=limits.max_connections_per_address,
        client_rate=limits.connection_rate,
        client_burst=limits.connection_burst,
        header_timeout=limits.header_timeout,
        idle_timeout=limits.idle_timeout,
        lifetime=max(600.0, limits.body_timeout * 10),  # between requests
        max_tracked=limits.max_tracked,
    )


# --------------------------------------------------------------------------- #
# serving                                                                      #
# --------------------------------------------------------------------------- #


async def serve(
    collector: Collector,
    host: str,
    port: int,
    *,
    ready: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until ``stop`` is set (or forever); ``ready`` gets the listening URL."""
    hygiene = install("probe.collector")
    try:
        await collector.start()
        try:
            async with serving(
                collector.app(),
                host,
                port,
                connection_limits(collector.limits),
                auto_decompress=False,  # we inflate gzip ourselves, with a limit
                handler_cancellation=False,
                shutdown_timeout=10.0,  # lets uploads in flight finish
            ) as server:
                log.info(
                    "collector %s listening on %s, storing in %s",
                    __version__, server.url, collector.store.root,
                )
                if ready is not None:
                    ready(server.url)
                await (stop or asyncio.Event()).wait()
        finally:
            await collector.close()
            log.info("collector stopped: %s", json.dumps(dict(collector.totals), sort_keys=True))
    finally:
        hygiene.uninstall()
