"""A collector served in a thread of the test process, on a free loopback port."""

from __future__ import annotations

import asyncio
import threading

import pytest

from probe.collector.lines import LinePolicy
from probe.collector.server import Collector, serve
from probe.collector.store import Store


class Running:
    def __init__(self, collector: Collector) -> None:
        self.collector = collector
        self.url = ""
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def main():
            self._stop = asyncio.Event()

            def ready(url):
                self.url = url
                self._ready.set()

            await serve(self.collector, "127.0.0.1", 0, ready=ready, stop=self._stop)

        try:
            self._loop.run_until_complete(main())
        except BaseException as error:  # noqa: BLE001 - reported by start()
            self._error = error
            self._ready.set()
        finally:
            pending = asyncio.all_tasks(self._loop)
            for task in pending:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._loop.close()

    def start(self) -> Running:
        self._thread.start()
        assert self._ready.wait(30), "collector did not start"
        if self._error:
            raise self._error
        return self

    def stop(self) -> None:
        if self._thread.is_alive() and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


@pytest.fixture
def start_collector(tmp_path):
    started: list[Running] = []

    def start(limits=None, policy=None, check_workers=0, data=None) -> Running:
        store = Store(data or tmp_path / "data")
        store.open()
        running = Running(Collector(store, policy or LinePolicy(), limits, check_workers))
        started.append(running.start())
        return running

    yield start
    for running in started:
        running.stop()
