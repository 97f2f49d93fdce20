"""Replay: run the same runner and analysis again, answering the network from a trace.

:class:`ReplayNetwork` implements the network seam without opening a socket:
every operation is looked up in the trace and answered at once with the
recorded result (recorded timings included). Under :class:`VirtualTimeLoop`
each answer also takes its recorded duration on a virtual clock that jumps
instead of waiting, so
operations complete in the recorded order (what finished first live finishes
first in replay) while a run that spent minutes in timeouts replays in
milliseconds. Operations are matched by a key that leaves
out the random parts of requests (the MTProto nonce, the addresses in a control
request); identical operations are answered first in, first out. An operation
the trace does not hold gets a result whose failure is
``replay_missing_operation``; replay never raises for it.

``replay`` re-derives the verdicts (and the report) from a trace; ``diff``
compares them with the verdicts recorded in the trace's ``end`` line, which is
how a changed analysis rule shows up.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import selectors
import tempfile
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from probe.net import failures
from probe.net.network import (
    ConnectResult,
    ControlRequest,
    ControlResult,
    DnsExchange,
    DnsQuery,
    FetchRequest,
    FetchResult,
    GetaddrinfoResult,
    HttpRequest,
    HttpResult,
    MtprotoRequest,
    MtprotoResult,
    QuicRequest,
    QuicResult,
    Timing,
    TlsRequest,
    TlsResult,
    UdpRequest,
    UdpResult,
    first_answer,
    to_json,
)
from probe.trace import Trace, TraceError, decode_result, load_trace

if TYPE_CHECKING:
    from _typeshed import FileDescriptorLike

    from probe.session import RunOutcome

# The failure of an operation the trace does not hold. It belongs in
# probe.net.failures' table once that table takes non-OONI strings of replay.
REPLAY_MISSING_OPERATION = failures.REPLAY_MISSING_OPERATION


def operation_key(op: str, request: dict[str, Any]) -> tuple:
    """What identifies an operation across runs, leaving out random request parts."""
    if op == "getaddrinfo":
        return (op, request["host"])
    if op == "dns_exchange":
        return (op, request["resolver"], request["port"], request["qname"], request["qtype"],
                request.get("transport", "udp"))
    if op == "tcp_connect":
        return (op, request["address"], request["port"])
    if op == "tls_handshake":
        return (op, request["address"], request["port"], request.get("sni"))
    if op == "http_request":
        return (op, request["url"], request["address"], request.get("method", "GET"))
    if op == "mtproto_exchange":  # the payload carries a fresh random nonce each run
        return (op, request["address"], request["port"], request.get("transport", "intermediate"))
    if op == "udp_exchange":
        # STUN transaction ids and echo payloads are random each run: what the flow
        # is (its length, retransmitted or not, and the first datagram's leading
        # bytes: STUN method or RTP header) tells a Binding from an Allocate.
        datagrams = request.get("datagrams") or [""]
        return (op, request["address"], request["port"], len(datagrams),
                bool(request.get("stop_on_reply")), _leading_bytes(datagrams[0]))
    if op == "quic_exchange":
        return (op, request["url"], request["address"], request["port"], request.get("sni"),
                tuple(request.get("alpn", ("h3",))))
    if op == "control_call":  # the body lists the addresses this run resolved
        return (op, request["url"])
    if op == "fetch":
        return (op, request["url"])
    raise KeyError(op)


def _leading_bytes(datagram: Any) -> str:
    try:
        return base64.b64decode(str(datagram))[:2].hex()
    except (binascii.Error, ValueError):
        return ""


class _VirtualSelector(selectors.BaseSelector):
    """Wraps a selector: where the loop would sleep until its next timer, the
    virtual clock jumps there instead (real I/O ready now is still served)."""

    def __init__(self, selector: selectors.BaseSelector, loop: VirtualTimeLoop) -> None:
        self._selector = selector
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        events = self._selector.select(0)
        if events or timeout == 0:
            return events
        if timeout is None:  # no timer at all: only real I/O can wake the loop
            return self._selector.select(None)
        self._loop._virtual_now += timeout
        return []

    # everything else is the wrapped selector's
    def register(
        self, fileobj: FileDescriptorLike, events: int, data: Any = None
    ) -> selectors.SelectorKey:
        return self._selector.register(fileobj, events, data)

    def unregister(self, fileobj: FileDescriptorLike) -> selectors.SelectorKey:
        return self._selector.unregister(fileobj)

    def modify(
        self, fileobj: FileDescriptorLike, events: int, data: Any = None
    ) -> selectors.SelectorKey:
        return self._selector.modify(fileobj, events, data)

    def get_key(self, fileobj: FileDescriptorLike) -> selectors.SelectorKey:
        return self._selector.get_key(fileobj)

    def get_map(self) -> Mapping[FileDescriptorLike, selectors.SelectorKey]:
        return self._selector.get_map()

    def close(self) -> None:
        self._selector.close()


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An asyncio loop on a virtual clock: ``asyncio.sleep(10)`` returns at once,
    with ``loop.time()`` 10 s later, and timers fire in their order."""

    virtual_time = True

    def __init__(self) -> None:
        self._virtual_now = 0.0  # before the loop's set-up, which may ask the time
        super().__init__(_VirtualSelector(selectors.DefaultSelector(), self))

    def time(self) -> float:
        return self._virtual_now


class ReplayNetwork:
    """A Network answered entirely from a trace; opens no socket, never waits."""

    def __init__(self, trace: Trace) -> None:
        self._queues: dict[tuple, deque[dict[str, Any]]] = {}
        for record in trace.ops:
            try:
                key = operation_key(record["op"], record["request"])
            except (KeyError, TypeError):
                continue  # a damaged line: its operation will be reported missing
            self._queues.setdefault(key, deque()).append(record)
        self._now = 0.0
        self.replayed = 0
        self.missing: list[tuple] = []  # keys asked for that the trace did not hold
        self.problems: list[str] = []

    def clock(self) -> float:
        """The recorded clock: the end time of the latest operation replayed."""
        return self._now

    def unused(self) -> int:
        """Recorded operations nobody asked for (the runner changed, or a bug)."""
        return sum(len(q) for q in self._queues.values())

    async def _take(self, op: str, request: dict[str, Any]) -> Any | None:
        result = self._lookup(op, request)
        if result is not None and getattr(asyncio.get_running_loop(), "virtual_time", False):
            # Take the recorded time, on the virtual clock only: never really wait.
            await asyncio.sleep(max(0.0, result.timing.t - result.timing.t0))
        return result

    def _lookup(self, op: str, request: dict[str, Any]) -> Any | None:
        key = operation_key(op, request)
        queue = self._queues.get(key)
        if not queue:
            self.missing.append(key)
            return None
        record = None
        for index, candidate in enumerate(queue):
            # Prefer the very same request (a page fetch and a download share a key).
            if candidate["request"] == request:
                record = candidate
                del queue[index]
                break
        if record is None:
            record = queue.popleft()
        try:
            result = decode_result(op, record["result"])
        except (KeyError, TypeError, ValueError) as exc:
            self.problems.append(
                f"operation {record.get('seq')} ({op}): unreadable result: {exc}"[:300]
            )
            self.missing.append(key)
            return None
        self._now = max(self._now, float(record.get("t", 0.0)), result.timing.t)
        self.replayed += 1
        return result

    def _timing(self) -> Timing:
        return Timing(self._now, self._now)

    async def getaddrinfo(self, host: str, timeout: float) -> GetaddrinfoResult:
        result = await self._take("getaddrinfo", {"host": host})
        if result is None:
            return GetaddrinfoResult(host, (), REPLAY_MISSING_OPERATION, self._timing())
        return result

    async def dns_exchange(
        self, query: DnsQuery, timeout: float, linger: float,
        on_first: Callable[[DnsExchange], None] | None = None,
    ) -> DnsExchange:
        if on_first is None:
            result = await self._take("dns_exchange", to_json(query))
        else:
            # The first answer is handed over when it arrived live (on the virtual
            # clock), the rest of the window is taken after it, as live does.
            result = self._lookup("dns_exchange", to_json(query))
            first = first_answer(result) if result is not None else None
            virtual = getattr(asyncio.get_running_loop(), "virtual_time", False)
            if result is not None and first is not None:
                if virtual:
                    await asyncio.sleep(max(0.0, first.timing.t - first.timing.t0))
                on_first(first)
                if virtual:
                    await asyncio.sleep(max(0.0, result.timing.t - first.timing.t))
            elif result is not None and virtual:
                await asyncio.sleep(max(0.0, result.timing.t - result.timing.t0))
        if result is None:
            return DnsExchange(query, (), REPLAY_MISSING_OPERATION, self._timing())
        return result

    async def tcp_connect(self, address: str, port: int, timeout: float) -> ConnectResult:
        result = await self._take("tcp_connect", {"address": address, "port": port})
        if result is None:
            return ConnectResult(address, port, REPLAY_MISSING_OPERATION, self._timing())
        return result

    async def tls_handshake(self, request: TlsRequest, timeout: float) -> TlsResult:
        result = await self._take("tls_handshake", to_json(request))
        if result is None:
            t = self._timing()
            connect = ConnectResult(request.address, request.port, REPLAY_MISSING_OPERATION, t)
            return TlsResult(request, connect, REPLAY_MISSING_OPERATION, None, None, None, (), t)
        return result

    async def http_request(self, request: HttpRequest, timeout: float) -> HttpResult:
        result = await self._take("http_request", to_json(request))
        if result is None:
            return HttpResult(request, REPLAY_MISSING_OPERATION, None, (), "", 0, False, (), None,
                              self._timing())
        return result

    async def mtproto_exchange(self, request: MtprotoRequest, timeout: float) -> MtprotoResult:
        # The recorded result carries the recorded request (and so the recorded
        # nonce), which is what the analysis checks the reply against.
        result = await self._take("mtproto_exchange", to_json(request))
        if result is None:
            t = self._timing()
            connect = ConnectResult(request.address, request.port, REPLAY_MISSING_OPERATION, t)
            return MtprotoResult(request, connect, REPLAY_MISSING_OPERATION, "", t)
        return result

    async def udp_exchange(self, request: UdpRequest, timeout: float) -> UdpResult:
        # The recorded result carries the recorded request (its transaction ids and
        # payloads), which is what probe.stun judges the answers against.
        result = await self._take("udp_exchange", to_json(request))
        if result is None:
            return UdpResult(request, (), (), (), REPLAY_MISSING_OPERATION, self._timing())
        return result

    async def quic_exchange(self, request: QuicRequest, timeout: float) -> QuicResult:
        result = await self._take("quic_exchange", to_json(request))
        if result is None:
            return QuicResult(request, REPLAY_MISSING_OPERATION, "handshake", None, None, None,
                              None, (), None, (), "", 0, 0, self._timing())
        return result

    async def control_call(self, request: ControlRequest, timeout: float) -> ControlResult:
        result = await self._take("control_call", to_json(request))
        if result is None:
            return ControlResult(request, REPLAY_MISSING_OPERATION, None, None, self._timing())
        return result

    async def fetch(self, request: FetchRequest, timeout: float) -> FetchResult:
        result = await self._take("fetch", to_json(request))
        if result is None:
            return FetchResult(request, REPLAY_MISSING_OPERATION, None, "", 0, self._timing())
        return result

    async def aclose(self) -> None:
        return None


# --------------------------------------------------------------------------- #
# Replaying a run                                                              #
# --------------------------------------------------------------------------- #


@dataclass
class Replayed:
    outcome: RunOutcome
    report_path: Path | None
    network: ReplayNetwork
    trace: Trace


async def replay_run(
    trace: Trace, on_endpoint: Callable[[Any], None] | None = None
) -> tuple[Any, ReplayNetwork]:
    """Run the session again over a ReplayNetwork; returns (RunOutcome, network)."""
    from probe.session import ControlConfig, run

    info = trace.run
    network = ReplayNetwork(trace)
    with tempfile.TemporaryDirectory(prefix="probe-replay-") as scratch:
        control_file = None
        if info.control.file is not None:
            control_file = Path(info.control.file)
            if info.control.file_content is not None:
                # The recorded --control-file, restored under its own name.
                control_file = Path(scratch) / (control_file.name or "control.json")
                control_file.write_text(info.control.file_content)
        config = ControlConfig(info.control.urls, control_file, info.control.timeout,
                               info.control.reference_flow, protocol=info.control.protocol)
        outcome = await run(network, info.targets, info.options, config,
                            on_endpoint=on_endpoint, report_id=info.report_id or None)
    return outcome, network


def replay_trace(
    trace: Trace | str | Path, out_dir: str | Path | None = None, key: Any = None
) -> Replayed:
    """Replay a trace (path or loaded); write the report into ``out_dir`` if given.

    The replayed report is signed with ``key`` (a ``probe.report.keys.SigningKey``),
    by default a throw-away key: a replay is the analyst's statement, not the
    volunteer's, and must never be mistaken for the original report.
    """
    if not isinstance(trace, Trace):
        trace = load_trace(trace)
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        outcome, network = runner.run(replay_run(trace))
    report_path = None
    if out_dir is not None:
        from probe.report.keys import generate_ephemeral
        from probe.report.measurements import write_run_report
        from probe.report.writer import ReportWriteError

        try:
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            report_path, _ = write_run_report(outcome, trace.run.targets, Path(out_dir),
                                              key if key is not None else generate_ephemeral())
        except (OSError, ReportWriteError) as exc:
            raise TraceError(f"cannot write the replayed report into {out_dir}: {exc}") from None
    return Replayed(outcome, report_path, network, trace)


def replay(trace_path: str | Path, out_dir: str | Path | None = None) -> tuple[Any, Path | None]:
    """(RunOutcome, report path or None) of replaying ``trace_path``."""
    replayed = replay_trace(trace_path, out_dir)
    return replayed.outcome, replayed.report_path


# --------------------------------------------------------------------------- #
# Diffing verdicts                                                             #
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class VerdictChange:
    """One endpoint x address x port whose verdict or method is not what was recorded.

    ``old_*`` is None for a row the recorded run did not have, ``new_*`` for a
    row the replay no longer produces.
    """

    endpoint_id: str
    host: str | None
    address: str | None
    port: int | None
    old_verdict: str | None
    old_method: str | None
    new_verdict: str | None
    new_method: str | None

    def __str__(self) -> str:
        where = self.address or "-"
        if self.port is not None:
            where = f"{where}:{self.port}"

        def show(verdict: str | None, method: str | None) -> str:
            if verdict is None:
                return "(no row)"
            return f"{verdict}/{method}" if method else verdict

        return (f"{self.endpoint_id} {where}: {show(self.old_verdict, self.old_method)} -> "
                f"{show(self.new_verdict, self.new_method)}")


def verdict_rows(outcome: RunOutcome) -> list[dict[str, Any]]:
    """The verdicts of a RunOutcome in the footer's form."""
    return [to_json(v) for rows in outcome.verdicts.values() for v in rows]


def compare_verdicts(
    recorded: list[dict[str, Any]], derived: list[dict[str, Any]]
) -> list[VerdictChange]:
    """Changes from ``recorded`` to ``derived`` rows, in the recorded order."""

    def key(row: dict[str, Any]) -> tuple:
        return (row.get("endpoint_id"), row.get("address"), row.get("port"))

    old = {key(r): r for r in recorded}
    new = {key(r): r for r in derived}
    changes = []
    for k in [*old, *(k for k in new if k not in old)]:
        a, b = old.get(k), new.get(k)
        if a is not None and b is not None and (
            a.get("verdict"), a.get("method")) == (b.get("verdict"), b.get("method")
        ):
            continue
        row = a or b or {}
        changes.append(VerdictChange(
            str(row.get("endpoint_id")), row.get("host"), row.get("address"), row.get("port"),
            _row_value(a, "verdict"), _row_value(a, "method"),
            _row_value(b, "verdict"), _row_value(b, "method"),
        ))
    return changes


def _row_value(row: dict[str, Any] | None, key: str) -> Any:
    """A verdict row's field; None where the row is absent from one side."""
    return None if row is None else row.get(key)


def _recorded_verdicts(trace: Trace) -> list[dict[str, Any]]:
    if trace.footer is None:
        raise TraceError(
            f"{trace.path}: no end line, so no recorded verdicts to compare with "
            "(the recording was cut short); replay it without --diff"
        )
    return list(trace.footer.get("verdicts", []))


def diff_replayed(replayed: Replayed) -> list[VerdictChange]:
    return compare_verdicts(_recorded_verdicts(replayed.trace), verdict_rows(replayed.outcome))


def diff(trace_path: str | Path) -> list[VerdictChange]:
    """The verdicts that differ between the trace's recorded run and a replay now."""
    trace = load_trace(trace_path)
    _recorded_verdicts(trace)  # fail before replaying when there is nothing to compare
    return diff_replayed(replay_trace(trace))


def as_dict(change: VerdictChange) -> dict[str, Any]:
    return dataclasses.asdict(change)
