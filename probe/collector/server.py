"""The collector's HTTP server: the upload protocol of docs/upload-protocol.md over aiohttp.

``POST /v1/measurements`` takes signed report lines (JSON Lines, gzip allowed),
checks each one (:mod:`probe.collector.lines`, in a pool of worker processes so
the event loop stays responsive), stores the good ones durably
(:mod:`probe.collector.store`, group-committed by one writer thread) and answers
one result per line. ``GET /health`` answers ``ok``.

It is built to face the Internet: every request is bounded in bytes, lines and
time, uploads in flight are bounded (more get 503 at once, never a queue),
connections are bounded in number and must start a request within seconds,
and uploads are rate-limited per address and per probe key. The uploader's
address is used for the per-address rate limit, in memory, and nowhere else:
it is never logged (aiohttp's access log is off; our own log line has none)
and never stored.
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
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from probe import __version__
from probe.collector.limits import Limits
from probe.collector.lines import CheckedLine, LinePolicy, check_line, split_lines
from probe.collector.store import DUPLICATE, REJECTED, STORED, Accepted, Outcome, Store, StoreError
from probe.serving.buckets import TokenBuckets, retry_after_seconds
from probe.serving.connections import ConnectionLimits, serving
from probe.serving.logs import install

log = logging.getLogger("probe.collector")

UPLOAD_PATH = "/v1/measurements"
CONTENT_TYPES = frozenset({"application/x-ndjson", "application/jsonl", "application/json"})
CHUNK_LINES = 200  # lines per task sent to a checking worker
MAX_GROUP_LINES = 50_000  # lines committed (and fsynced) together at most


class RequestRefused(Exception):
    """A whole request is refused: ``status`` and a reason for the uploader."""

    def __init__(self, status: int, reason: str, retry_after: int | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.retry_after = retry_after


def _to_store(checked: CheckedLine, line: bytes) -> Accepted:
    """An accepted line with the facts its checks established (an accepted line has all)."""
    key, digest, key_id, run = checked.dedupe_key, checked.digest, checked.key_id, checked.run
    if key is None or digest is None or key_id is None or run is None:
        raise ValueError(f"line not accepted, or accepted without its facts: {checked}")
    return Accepted(key, digest, key_id, run, line)


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
    """The upload endpoint's state: store, policy, limits, rate-limit buckets."""

    def __init__(
        self,
        store: Store,
        policy: LinePolicy | None = None,
        limits: Limits | None = None,
        check_workers: int = 2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        policy = policy or LinePolicy()
        limits = limits or Limits()
        self.store = store
        self.limits = limits
        self.policy = LinePolicy(
            policy.trusted_keys, policy.trusted_control_keys, limits.max_line_bytes
        )
        self.check_workers = check_workers
        self.address_buckets = TokenBuckets(
            limits.address_rate, limits.address_burst, limits.max_tracked, clock
        )
        self.key_buckets = TokenBuckets(
            limits.key_rate, limits.key_burst, limits.max_tracked, clock
        )
        self.writer = GroupWriter(store)
        self.uploads_in_flight = 0
        self._pool: concurrent.futures.Executor | None = None
        self.totals: Counter[str] = Counter()

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

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.limits.max_body_bytes)
        app.router.add_get("/health", self.health)
        app.router.add_post(UPLOAD_PATH, self.upload)
        return app

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def upload(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        try:
            if self.uploads_in_flight >= self.limits.max_concurrent_uploads:
                raise RequestRefused(503, "busy: too many uploads at once, retry later", 1)
            wait = self.address_buckets.take(request.remote or "unknown")
            if wait:
                raise RequestRefused(
                    429, "too many requests from your address", retry_after_seconds(wait)
                )
            self.uploads_in_flight += 1
            try:
                results = await self._upload(request)
            finally:
                self.uploads_in_flight -= 1
        except RequestRefused as refused:
            self.totals[f"http_{refused.status}"] += 1
            log.info("upload refused (%d): %s", refused.status, refused.reason)
            return _error(refused)
        counts = Counter(r["status"] for r in results)
        self.totals.update(counts)
        log.info(
            "upload: %d line(s): %d stored, %d duplicate, %d rejected in %.0f ms",
            len(results),
            counts[STORED],
            counts[DUPLICATE],
            counts[REJECTED],
            (time.perf_counter() - started) * 1000,
        )
        return web.json_response({"results": results})

    async def _upload(self, request: web.Request) -> list[dict[str, Any]]:
        if request.content_type not in CONTENT_TYPES:
            raise RequestRefused(
                400, f"Content-Type {request.content_type!r} is not application/x-ndjson"
            )
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("identity", "gzip", ""):
            raise RequestRefused(400, f"Content-Encoding {encoding!r}: only gzip is accepted")
        length = request.content_length
        if length is not None and length > self.limits.max_body_bytes:
            raise RequestRefused(413, self._too_large())
        try:
            async with asyncio.timeout(self.limits.body_timeout):
                body = await self._read_body(request, encoding == "gzip")
        except TimeoutError:
            raise RequestRefused(
                408, f"the body did not arrive within {self.limits.body_timeout:g} seconds"
            ) from None
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
        checked = await self._check(lines)
        accepted = [
            _to_store(c, line) for c, line in zip(checked, lines, strict=False) if c.ok
        ]
        new_by_key = Counter(a.key_id for a in accepted if not self.store.known(a.dedupe_key))
        self._charge_keys(new_by_key)
        try:
            outcomes = iter(await self.writer.submit(accepted))
        except StoreError:
            for key_id, count in new_by_key.items():
                self.key_buckets.give_back(key_id, count)
            raise RequestRefused(
                503, "the collector cannot store right now, retry later", 30
            ) from None
        results = []
        for number, item in enumerate(checked, start=1):
            if item.ok:
                outcome = next(outcomes)
                status, reason = outcome.status, outcome.reason
            else:
                status, reason = REJECTED, item.reason
            if status == REJECTED:
                log.info("rejected line %d (key %s): %s", number, item.key_id or "?", reason)
            results.append(
                {
                    "line": number,
                    "measurement_uid": item.measurement_uid,
                    "status": status,
                    "reason": reason,
                }
            )
        return results

    def _charge_keys(self, new_by_key: Counter[str]) -> None:
        taken: list[tuple[str, int]] = []
        for key_id, count in new_by_key.items():
            wait = self.key_buckets.take(key_id, count)
            if wait:
                for done_key, done_count in taken:
                    self.key_buckets.give_back(done_key, done_count)
                raise RequestRefused(
                    429, f"probe key {key_id} is uploading too fast", retry_after_seconds(wait)
                )
            taken.append((key_id, count))

    def _too_large(self) -> str:
        return f"the body is larger than {self.limits.max_body_bytes} bytes (after gunzip)"

    async def _read_body(self, request: web.Request, gzipped: bool) -> bytes:
        limit = self.limits.max_body_bytes
        received = 0
        body = bytearray()
        inflater = zlib.decompressobj(wbits=31) if gzipped else None
        try:
            async for chunk in request.content.iter_any():
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

    async def _check(self, lines: list[bytes]) -> list[CheckedLine]:
        loop = asyncio.get_running_loop()
        chunks = [lines[i : i + CHUNK_LINES] for i in range(0, len(lines), CHUNK_LINES)]
        try:
            done = await asyncio.gather(
                *(
                    loop.run_in_executor(self._pool, check_lines, chunk, self.policy)
                    for chunk in chunks
                )
            )
        except concurrent.futures.BrokenExecutor:
            raise RequestRefused(503, "the collector is restarting its checkers", 5) from None
        return [item for chunk in done for item in chunk]


def _error(refused: RequestRefused) -> web.Response:
    headers = {}
    if refused.retry_after is not None:
        headers["Retry-After"] = str(refused.retry_after)
    response = web.json_response({"error": refused.reason}, status=refused.status, headers=headers)
    if refused.status in (408, 413, 400):
        response.force_close()  # the rest of that body is not worth reading
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
