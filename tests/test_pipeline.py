"""A run is a pipeline over batches of services: measured ahead, compared with a real
control helper batch by batch, analysed and handed on exactly once, never more than
two batches of observations in memory; results staged on disk come back unchanged."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import pytest
from servers import start_tcp

from probe import session
from probe.bogons import parse_networks
from probe.control.auth import Access
from probe.control.server import ControlHelper, serve
from probe.net.live import LiveNetwork
from probe.report.measurements import build_lines, iter_lines
from probe.report.staging import StagedResults
from probe.report.writer import ReportWriteError
from probe.runner import RunOptions
from probe.targets import parse_targets

ROUTABLE = parse_networks(["127.0.0.0/8"])
SERVICES = 6


def closed_ports(count: int) -> list[int]:
    """Ports with nothing listening on loopback: a connect is refused at once."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def targets_text(echo_port: int, refused: list[int]) -> str:
    lines = ["version: 1", "services:"]
    for number in range(SERVICES):
        lines += [f"  - id: s{number}", "    endpoints:"]
        # one endpoint that answers, one refused: each endpoint has its own port
        lines.append(f"      - {{id: s{number}-up, host: 127.0.0.1, port: {echo_port}, "
                     "checks: [tcp]}")
        lines.append(f"      - {{id: s{number}-x, host: 127.0.0.1, port: {refused[number]}, "
                     "checks: [tcp]}")
    return "\n".join(lines) + "\n"


class LoggingNetwork:
    """The live network, noting the order of connects and control calls."""

    def __init__(self, events: list) -> None:
        self.inner = LiveNetwork()
        self.events = events

    def __getattr__(self, name):
        return getattr(self.inner, name)

    async def tcp_connect(self, address, port, timeout):
        self.events.append(("connect", port))
        return await self.inner.tcp_connect(address, port, timeout)

    async def control_call(self, request, timeout):
        self.events.append(("control", request.url))
        return await self.inner.control_call(request, timeout)


@contextlib.asynccontextmanager
async def control_helper(targets):
    """A real helper on loopback, serving anyone, whose scope is ``targets``."""
    helper = ControlHelper(None, routable=ROUTABLE, access=Access.anyone(),
                           targets=targets.endpoints())
    stop = asyncio.Event()
    ready = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(helper, "127.0.0.1", 0, ready=ready.set_result, stop=stop))
    try:
        yield "http://" + (await ready).rsplit(" ", 1)[1]
    finally:
        stop.set()
        await task


@pytest.fixture
def world():
    with start_tcp("echo") as echo:
        refused = closed_ports(SERVICES)
        yield parse_targets(targets_text(echo.port, refused)), echo.port, refused


OPTIONS = RunOptions(timeout=2, routable=ROUTABLE, rate=None, use_system_resolver=False)


def test_batches_are_measured_ahead_compared_and_handed_on_once(world):
    targets, echo_port, refused = world
    events: list = []

    async def go():
        async with control_helper(targets) as url:
            config = session.ControlConfig(urls=(url,), timeout=20)
            network = LoggingNetwork(events)
            try:
                return await session.stream(
                    network, targets, OPTIONS, config,
                    emit=lambda result: events.append(("emit", result)),
                    batch_size=2,  # one service (2 endpoints) a batch
                )
            finally:
                await network.aclose()

    outcome = asyncio.run(go())
    emitted = [e[1] for e in events if e[0] == "emit"]
    assert [r.service for r in emitted] == [f"s{n}" for n in range(SERVICES)]  # once, in order
    calls = [e[1] for e in events if e[0] == "control"]
    assert sum(1 for u in calls if u.endswith("/measure")) == SERVICES  # one request a batch
    assert calls[0].endswith("/info")  # asked first for a UDP echo (this helper has none)
    for result in emitted:
        assert result.control is not None and result.control["source"].startswith("http://")
        assert result.control["endpoints"] == sorted(f"{result.service}-{k}" for k in ("up", "x"))
        verdicts = {v.endpoint_id: v.verdict for v in result.verdicts}
        assert verdicts[f"{result.service}-up"] == "ok"
        assert verdicts[f"{result.service}-x"] == "down"  # refused for the control too
    # Batch k is not started before batch k-2 was handed on: at most two batches of
    # observations are ever held.
    position = {("emit", r.service): i for i, (kind, r) in enumerate(events) if kind == "emit"}
    for number in range(2, SERVICES):
        first_connect = events.index(("connect", refused[number]))
        assert first_connect > position[("emit", f"s{number - 2}")], events
    # and the pipeline does run ahead: batch 1 is measured before batch 0 is handed on
    assert events.index(("connect", refused[1])) < position[("emit", "s0")]
    assert outcome.complete and outcome.control.available and outcome.observations == {}
    assert len(outcome.verdicts) == 2 * SERVICES


def test_staged_results_come_back_unchanged_in_targets_order(world, tmp_path):
    targets, _, _ = world
    outcome = asyncio.run(session.run(LiveNetwork(), targets, OPTIONS, session.ControlConfig()))
    assert [r.service for r in outcome.results] == [s.id for s in targets.services]
    with StagedResults(tmp_path) as staged:
        for result in reversed(outcome.results):
            staged.add(result)
        again = list(staged.in_order(s.id for s in targets.services))
        assert again == outcome.results
        staged_lines = list(iter_lines(outcome, targets, results=staged.in_order(
            s.id for s in targets.services)))
    held_lines = build_lines(outcome, targets)
    for line in (*staged_lines, *held_lines):
        assert line.pop("measurement_uid")  # random by design
    assert staged_lines == held_lines
    assert not list(tmp_path.iterdir())  # the staging file was never visible


def test_a_failing_hand_on_is_raised_as_itself(world, tmp_path):
    targets, _, _ = world

    def full_disk(result):
        raise ReportWriteError(tmp_path / "report.jsonl", "the disk is full")

    with pytest.raises(ReportWriteError, match="the disk is full"):
        asyncio.run(session.stream(LiveNetwork(), targets, OPTIONS, session.ControlConfig(),
                                   emit=full_disk))


def test_json_summary_printed_row_by_row_is_the_whole_summary(world, tmp_path):
    import json

    from probe.display import iter_summary_json, summary_json

    targets, _, _ = world
    outcome = asyncio.run(session.run(LiveNetwork(), targets, OPTIONS, session.ControlConfig()))
    pieces = list(iter_summary_json(outcome, tmp_path / "r.jsonl"))
    assert len(pieces) > len(outcome.verdicts)  # row by row, not one string
    assert json.loads("\n".join(pieces)) == summary_json(outcome, tmp_path / "r.jsonl")
    outcome.verdicts = {}
    empty = json.loads("\n".join(iter_summary_json(outcome, tmp_path / "r.jsonl")))
    assert empty["endpoints"] == []
