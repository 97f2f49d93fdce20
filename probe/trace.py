"""Traces: a recording of everything the network seam did during one run.

A trace is a versioned JSON Lines file (gzip when its name ends in ``.gz``):
one ``header`` line with everything needed to run the same run again (options,
the full targets with their CA PEMs, the control configuration), one ``op`` line
per network operation as it completes (request, arguments, result, monotonic
times), and an ``end`` line with the verdicts the run concluded. Each line is
flushed as it is written, so a trace cut short by a crash still loads up to its
last complete line. docs/traces.md describes the format field by field.

:class:`RecordingNetwork` wraps any ``Network`` and writes the trace;
``probe.replay`` reads it back and answers the same operations offline. This
module never opens a socket itself and never judges what it records.
"""

from __future__ import annotations

import dataclasses
import datetime
import gzip
import ipaddress
import json
import os
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from probe import __version__
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
    Network,
    QuicRequest,
    QuicResult,
    TlsRequest,
    TlsResult,
    UdpRequest,
    UdpResult,
    from_json,
    to_json,
)
from probe.runner import RunOptions
from probe.targets import Targets

if TYPE_CHECKING:  # session imports the runner this module records; types only
    from probe.session import RunOutcome

FORMAT = "probe-trace"
VERSION = 1

# The operations of the seam, the class of their results, and the arguments
# (besides the request) each one takes. Replay relies on this table too.
RESULT_TYPES: dict[str, type] = {
    "getaddrinfo": GetaddrinfoResult,
    "dns_exchange": DnsExchange,
    "tcp_connect": ConnectResult,
    "tls_handshake": TlsResult,
    "http_request": HttpResult,
    "mtproto_exchange": MtprotoResult,
    "udp_exchange": UdpResult,
    "quic_exchange": QuicResult,
    "control_call": ControlResult,
    "fetch": FetchResult,
}
REQUEST_TYPES: dict[str, type | None] = {
    "getaddrinfo": None,  # request is {"host": ...}
    "dns_exchange": DnsQuery,
    "tcp_connect": None,  # request is {"address": ..., "port": ...}
    "tls_handshake": TlsRequest,
    "http_request": HttpRequest,
    "mtproto_exchange": MtprotoRequest,
    "udp_exchange": UdpRequest,
    "quic_exchange": QuicRequest,
    "control_call": ControlRequest,
    "fetch": FetchRequest,
}


class TraceError(Exception):
    """A trace that cannot be used, with the file (and line) and what to do."""


# --------------------------------------------------------------------------- #
# What a run needs to be run again                                             #
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class ControlSettings:
    """The control configuration of a run, as recorded (``session.ControlConfig``
    plus the content of a ``--control-file``, since replay cannot rely on the file
    still being there)."""

    urls: tuple[str, ...] = ()
    file: str | None = None
    file_content: str | None = None
    timeout: float = 60.0
    # whether the run asked the helpers for a reference UDP flow to their echo; traces
    # recorded before probes did lack it, and replay as they were recorded
    reference_flow: bool = False
    protocol: str = "probe"  # what the helpers speak: "probe" or "oohelperd"


@dataclass(frozen=True)
class RunInfo:
    """Everything of a run that is not network traffic: what the header holds."""

    targets: Targets
    options: RunOptions
    control: ControlSettings = ControlSettings()
    report_id: str = ""  # empty: made from options.started_at by start_recording

    @classmethod
    def from_run(cls, targets: Targets, options: RunOptions, control_config: Any,
                 report_id: str | None = None) -> RunInfo:
        """Build from the objects ``session.run`` takes (its ``ControlConfig``)."""
        file = getattr(control_config, "file", None)
        content = None
        if file is not None:
            try:
                content = Path(file).read_text()
            except (OSError, UnicodeDecodeError):
                content = None  # the session will report the unreadable file itself
        control = ControlSettings(
            tuple(getattr(control_config, "urls", ())),
            None if file is None else str(file),
            content,
            float(getattr(control_config, "timeout", 60.0)),
            bool(getattr(control_config, "reference_flow", False)),
            str(getattr(control_config, "protocol", "probe")),
        )
        return cls(targets, options, control, report_id or "")


def options_to_json(options: RunOptions) -> dict[str, Any]:
    """Every field of RunOptions, so a new option is recorded without touching this."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(options):
        value = getattr(options, f.name)
        if isinstance(value, datetime.datetime):
            value = value.isoformat()
        elif f.name == "routable":
            value = [str(network) for network in value]
        else:
            value = to_json(value)
        out[f.name] = value
    return out


def options_from_json(data: dict[str, Any]) -> tuple[RunOptions, list[str]]:
    """(options, notes on fields this probe does not know and ignored)."""
    known = {f.name for f in dataclasses.fields(RunOptions)}
    notes = [f"option {k!r} is unknown to this probe and was ignored"
             for k in data if k not in known]
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        if name not in known:
            continue
        if name == "started_at":
            value = datetime.datetime.fromisoformat(value)
        elif name == "routable":
            value = tuple(ipaddress.ip_network(v, strict=False) for v in value)
        elif name == "resolver":
            value = None if value is None else (str(value[0]), int(value[1]))
        kwargs[name] = value
    return RunOptions(**kwargs), notes


def run_info_to_json(info: RunInfo) -> dict[str, Any]:
    return {
        "report_id": info.report_id,
        "started_at": info.options.started_at.isoformat(),
        "options": options_to_json(info.options),
        "targets": to_json(info.targets),
        "control_config": to_json(info.control),
    }


def run_info_from_json(data: dict[str, Any]) -> tuple[RunInfo, list[str]]:
    options, notes = options_from_json(data["options"])
    targets = from_json(Targets, data["targets"])
    control = from_json(ControlSettings, data.get("control_config") or {})
    return RunInfo(targets, options, control, str(data.get("report_id", ""))), notes


# --------------------------------------------------------------------------- #
# Writing                                                                      #
# --------------------------------------------------------------------------- #


def scrub_trace_file(path: str | os.PathLike, addresses: list[str]) -> int:
    """Rewrite a finished trace without the volunteer's ``addresses``.

    The public address is only known once the control has answered, so traces
    are scrubbed when the run is over: every line goes through the reports'
    scrubber, the header then says ``"scrubbed": true``, and the file is replaced
    atomically. A line the scrubber cannot clean is left out (its operation then
    replays as missing) and counted in the header's ``scrub_dropped``. Returns the
    number of lines left out. With no address known, the trace stays as it is.
    """
    from probe.report.scrub import ScrubError, scrub_measurement

    path = Path(path)
    if not addresses:
        return 0
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as stream:
            raw_lines = stream.read().splitlines()
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise TraceError(f"{path}: cannot read it back to scrub it ({exc})") from None
    lines: list[dict[str, Any]] = []
    dropped = 0
    for raw in raw_lines:
        try:
            lines.append(scrub_measurement(json.loads(raw), addresses))
        except ScrubError:
            dropped += 1
        except ValueError:
            continue  # a torn last line
    if lines and lines[0].get("type") == "header":
        lines[0]["scrubbed"] = True
        lines[0]["scrub_dropped"] = dropped
    temporary = path.with_name(f".{path.name}.scrub.tmp")
    try:
        with opener(temporary, "wt", encoding="utf-8") as stream:
            for line in lines:
                stream.write(json.dumps(line, separators=(",", ":")) + "\n")
        with open(temporary, "rb+") as raw_file:
            os.fsync(raw_file.fileno())
        os.replace(temporary, path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise TraceError(f"{path}: cannot write the scrubbed trace ({exc})") from None
    return dropped


class TraceWriter:
    """Appends trace lines to a file, flushing each one (gzip when ``.gz``).

    Gzip output is flushed with Z_SYNC_FLUSH after every line, so ``zcat`` of a
    trace whose writer crashed shows every line written so far.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        scrub: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        self.path = Path(path)
        self.scrub = scrub
        self.lines = 0
        self.error: str | None = None  # why writing stopped (disk full...), if it did
        self._raw: IO[bytes] = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        self._gzip: gzip.GzipFile | None = None
        if self.path.name.endswith(".gz"):
            self._gzip = gzip.GzipFile(fileobj=self._raw, mode="wb", mtime=0)

    @property
    def closed(self) -> bool:
        return self._raw.closed

    def write(self, line: dict[str, Any]) -> None:
        if self.closed:
            return  # a late operation after the footer: nothing to append to
        if self.scrub is not None:
            line = self.scrub(line)
        try:
            data = (json.dumps(line, separators=(",", ":"), ensure_ascii=False) + "\n").encode()
        except (TypeError, ValueError) as exc:  # a result that is not plain data: a bug
            self.error = self.error or f"{self.path}: a {line.get('op', line.get('type'))} " \
                f"line could not be written ({exc})"
            return
        try:
            if self._gzip is not None:
                self._gzip.write(data)
                self._gzip.flush(zlib.Z_SYNC_FLUSH)
            else:
                self._raw.write(data)
            self._raw.flush()
        except OSError as exc:
            # A trace that cannot be written must not break the measurement it
            # records: stop writing, remember why, and let finish_recording say so.
            self.error = f"{self.path}: writing stopped after {self.lines} lines " \
                f"({exc.strerror or exc})"
            self._close_quietly()
            return
        self.lines += 1

    def _close_quietly(self) -> None:
        for stream in (self._gzip, self._raw):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass

    def close(self) -> None:
        if self.closed:
            return
        if self._gzip is not None:
            self._gzip.close()
        self._raw.close()


def header_line(info: RunInfo, extra: dict[str, Any] | None = None,
                scrubbed: bool = False) -> dict[str, Any]:
    line: dict[str, Any] = {
        "type": "header",
        "format": FORMAT,
        "version": VERSION,
        "probe_version": __version__,
        "created_at": datetime.datetime.now(datetime.UTC)
        .replace(microsecond=0).isoformat(),
        "scrubbed": scrubbed,
        "run": run_info_to_json(info),
    }
    if extra:
        line.update(extra)
    return line


def footer_line(outcome: RunOutcome, operations: int) -> dict[str, Any]:
    """The ``end`` line from a ``session.RunOutcome``."""
    return {
        "type": "end",
        "complete": bool(outcome.complete),
        "operations": operations,
        "network_down": bool(outcome.network_down),
        "control": {"source": outcome.control.source, "problems": list(outcome.control.problems)},
        "verdicts": [to_json(v) for rows in outcome.verdicts.values() for v in rows],
        "services": [to_json(s) for s in outcome.services.values()],
    }


# --------------------------------------------------------------------------- #
# The recording network                                                        #
# --------------------------------------------------------------------------- #


class RecordingNetwork:
    """A Network that forwards to ``inner`` and writes one trace line per operation.

    Lines are written when an operation completes (``seq`` counts completions);
    an operation cancelled mid-way (Ctrl-C) leaves no line.
    """

    def __init__(
        self, inner: Network, writer: TraceWriter, run_info: RunInfo | None = None
    ) -> None:
        self.inner = inner
        self.writer = writer
        self.run_info = run_info
        self.operations = 0

    def clock(self) -> float:
        return self.inner.clock()

    def _record(self, op: str, t0: float, args: dict[str, Any], request: Any, result: Any) -> None:
        self.writer.write({
            "type": "op",
            "op": op,
            "seq": self.operations,
            "t0": t0,
            "t": self.inner.clock(),
            "args": args,
            "request": request,
            "result": to_json(result),
        })
        self.operations += 1

    async def getaddrinfo(self, host: str, timeout: float) -> GetaddrinfoResult:
        t0 = self.inner.clock()
        result = await self.inner.getaddrinfo(host, timeout)
        self._record("getaddrinfo", t0, {"timeout": timeout}, {"host": host}, result)
        return result

    async def dns_exchange(
        self, query: DnsQuery, timeout: float, linger: float,
        on_first: Callable[[DnsExchange], None] | None = None,
    ) -> DnsExchange:
        t0 = self.inner.clock()
        # the first answer is not recorded apart: replay derives it from the replies
        result = await self.inner.dns_exchange(query, timeout, linger, on_first)
        self._record("dns_exchange", t0, {"timeout": timeout, "linger": linger},
                     to_json(query), result)
        return result

    async def tcp_connect(self, address: str, port: int, timeout: float) -> ConnectResult:
        t0 = self.inner.clock()
        result = await self.inner.tcp_connect(address, port, timeout)
        self._record("tcp_connect", t0, {"timeout": timeout},
                     {"address": address, "port": port}, result)
        return result

    async def tls_handshake(self, request: TlsRequest, timeout: float) -> TlsResult:
        t0 = self.inner.clock()
        result = await self.inner.tls_handshake(request, timeout)
        self._record("tls_handshake", t0, {"timeout": timeout}, to_json(request), result)
        return result

    async def http_request(self, request: HttpRequest, timeout: float) -> HttpResult:
        t0 = self.inner.clock()
        result = await self.inner.http_request(request, timeout)
        self._record("http_request", t0, {"timeout": timeout}, to_json(request), result)
        return result

    async def mtproto_exchange(self, request: MtprotoRequest, timeout: float) -> MtprotoResult:
        t0 = self.inner.clock()
        result = await self.inner.mtproto_exchange(request, timeout)
        self._record("mtproto_exchange", t0, {"timeout": timeout}, to_json(request), result)
        return result

    async def udp_exchange(self, request: UdpRequest, timeout: float) -> UdpResult:
        t0 = self.inner.clock()
        result = await self.inner.udp_exchange(request, timeout)
        self._record("udp_exchange", t0, {"timeout": timeout}, to_json(request), result)
        return result

    async def quic_exchange(self, request: QuicRequest, timeout: float) -> QuicResult:
        t0 = self.inner.clock()
        result = await self.inner.quic_exchange(request, timeout)
        self._record("quic_exchange", t0, {"timeout": timeout}, to_json(request), result)
        return result

    async def control_call(self, request: ControlRequest, timeout: float) -> ControlResult:
        t0 = self.inner.clock()
        result = await self.inner.control_call(request, timeout)
        self._record("control_call", t0, {"timeout": timeout}, to_json(request), result)
        return result

    async def fetch(self, request: FetchRequest, timeout: float) -> FetchResult:
        t0 = self.inner.clock()
        result = await self.inner.fetch(request, timeout)
        self._record("fetch", t0, {"timeout": timeout}, to_json(request), result)
        return result

    async def aclose(self) -> None:
        await self.inner.aclose()


def start_recording(
    path: str | os.PathLike,
    run_info: RunInfo,
    inner: Network | Callable[[], Network] | None = None,
    extra_header: dict[str, Any] | None = None,
) -> RecordingNetwork:
    """Open ``path``, write the header and return a network that records into it.

    ``inner`` is the network to record (or a factory); by default a new
    ``LiveNetwork``. When ``run_info.report_id`` is empty one is made, and the
    caller must pass ``network.run_info.report_id`` to ``session.run`` so the
    trace and the report agree. Raises TraceError when the file cannot be created.
    """
    from probe.session import new_report_id

    if inner is None:
        from probe.net.live import LiveNetwork

        inner = LiveNetwork()
    elif isinstance(inner, type) or not hasattr(inner, "tls_handshake"):
        inner = inner()  # a factory (or the class itself)
    if not run_info.report_id:
        run_info = dataclasses.replace(
            run_info, report_id=new_report_id(run_info.options.started_at)
        )
    try:
        writer = TraceWriter(path)  # scrubbed when finished: scrub_trace_file
    except OSError as exc:
        raise TraceError(f"{path}: cannot create the trace ({exc.strerror or exc})") from None
    writer.write(header_line(run_info, extra_header))
    if writer.error:
        raise TraceError(f"cannot record: {writer.error}")
    return RecordingNetwork(inner, writer, run_info)  # type: ignore[arg-type]


def finish_recording(network: RecordingNetwork, outcome: RunOutcome | None) -> Path:
    """Write the ``end`` line (the verdicts of ``outcome``) and close the trace.

    With ``outcome`` None (the run died before it had one) the trace is closed
    without an end line: it still replays, but cannot be diffed. Raises
    TraceError when the trace could not be written completely (disk full...):
    call it after the report is safely written.
    """
    writer = network.writer
    if outcome is not None:
        writer.write(footer_line(outcome, network.operations))
    try:
        writer.close()
    except OSError as exc:
        writer.error = writer.error or f"{writer.path}: cannot finish ({exc.strerror or exc})"
    if writer.error:
        raise TraceError(f"the trace is incomplete: {writer.error}")
    return writer.path


# --------------------------------------------------------------------------- #
# Reading                                                                      #
# --------------------------------------------------------------------------- #


@dataclass
class Trace:
    """A loaded trace. ``ops`` keep their JSON form; replay decodes them on demand."""

    path: Path
    header: dict[str, Any]
    run: RunInfo
    ops: list[dict[str, Any]]
    footer: dict[str, Any] | None
    truncated: bool = False  # the file ended mid-line (the recorder crashed)
    notes: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.footer is not None and bool(self.footer.get("complete"))


def _read_bytes(path: Path) -> tuple[bytes, bool]:
    """The decompressed content and whether a gzip stream was cut short."""
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw, False
    out = []
    cut = False
    data = raw
    while data:  # concatenated gzip members are one stream (as zcat reads them)
        decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            out.append(decompressor.decompress(data))
        except zlib.error:
            cut = True
            break
        if not decompressor.eof:
            cut = True
            break
        data = decompressor.unused_data
    return b"".join(out), cut


def iter_lines(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
    """(line number, parsed line or None, raw text) for every line of a trace file."""
    content, _ = _read_bytes(Path(path))
    for number, text in enumerate(content.decode("utf-8", "replace").split("\n"), 1):
        if not text:
            continue
        try:
            yield number, json.loads(text), text
        except json.JSONDecodeError:
            yield number, None, text


def load_trace(path: str | os.PathLike) -> Trace:
    """Read a trace; a last line cut short is dropped and flagged ``truncated``."""
    path = Path(path)
    try:
        content, cut = _read_bytes(path)
    except OSError as exc:
        raise TraceError(f"{path}: cannot read ({exc.strerror or exc})") from None
    text = content.decode("utf-8", "replace")
    lines = text.split("\n")
    truncated = cut
    if lines and lines[-1] != "":
        truncated = True  # no newline after the last line: it was being written
    lines = lines[:-1]  # the text after the last newline (empty or cut short)
    if not lines:
        raise TraceError(f"{path}: empty, or not even the header line was written")
    try:
        header = json.loads(lines[0])
    except json.JSONDecodeError:
        raise TraceError(f"{path} line 1: not JSON; is this a probe trace?") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise TraceError(f"{path} line 1: not a probe trace header (format {FORMAT!r} expected)")
    version = header.get("version")
    if version != VERSION:
        raise TraceError(
            f"{path}: trace format version {version}, this probe reads version {VERSION}; "
            "use a probe at least as new as the one that recorded it"
        )
    try:
        run, notes = run_info_from_json(header["run"])
    except (KeyError, TypeError, ValueError) as exc:
        raise TraceError(f"{path} line 1: the run description is unusable: {exc}"[:400]) from None
    ops: list[dict[str, Any]] = []
    footer = None
    for number, line_text in enumerate(lines[1:], 2):
        if not line_text:
            continue
        try:
            line = json.loads(line_text)
        except json.JSONDecodeError:
            if number == len(lines):
                truncated = True  # cut inside a gzip block: the last line is partial
                break
            raise TraceError(f"{path} line {number}: not JSON (the file is damaged)") from None
        kind = line.get("type") if isinstance(line, dict) else None
        if kind == "op":
            if line.get("op") in RESULT_TYPES:
                ops.append(line)
            else:
                notes.append(f"line {number}: unknown operation {line.get('op')!r} ignored")
        elif kind == "end":
            footer = line
        else:
            notes.append(f"line {number}: unknown line type {kind!r} ignored")
    if truncated:
        notes.append("the trace ends mid-line (the recording was cut short); "
                     "it was read up to its last complete line")
    return Trace(path, header, run, ops, footer, truncated, notes)


def decode_result(op: str, data: Any) -> Any:
    """A recorded result back as its dataclass (ValueError on bad data)."""
    return from_json(RESULT_TYPES[op], data)
