"""Traces: the format, recording, replay, diff, the corpus, and equivalence with live runs.

The equivalence test records a real run against servers on loopback (DNS,
HTTPS with a test CA, a silent and a resetting listener, a refused port, an
MTProto responder, and a real control helper) and replays it. The namespace
test replays in a network namespace with no usable interface at all.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import gzip
import ipaddress
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from probe import analysis, session
from probe.net import failures
from probe.net.live import LiveNetwork
from probe.net.network import (
    ControlRequest,
    DnsQuery,
    GetaddrinfoResult,
    HttpRequest,
    MtprotoRequest,
    Timing,
    TlsRequest,
    to_json,
)
from probe.replay import (
    REPLAY_MISSING_OPERATION,
    ReplayNetwork,
    compare_verdicts,
    diff,
    replay,
    replay_trace,
    verdict_rows,
)
from probe.runner import RunOptions
from probe.targets import parse_targets
from probe.trace import (
    FORMAT,
    VERSION,
    ControlSettings,
    RunInfo,
    Trace,
    TraceError,
    finish_recording,
    iter_lines,
    load_trace,
    start_recording,
)
from probe.trace_cli import main as trace_cli_main
from probe.trace_cli import replay as replay_command

TRACES = Path(__file__).resolve().parent / "traces"
sys.path.insert(0, str(TRACES))

import make_corpus
import refresh_lab_corpus
from scripted import Authority, ScriptedNetwork, World

REPO = Path(__file__).resolve().parent.parent


def record_case(case, path: Path, world=None) -> Path:
    """Record a corpus case (make_corpus) into ``path`` (any name, .gz or not);
    ``world`` replaces the case's censor (a World class: no censor)."""
    authority = Authority("Test Root", case.started_at)
    targets = parse_targets(case.targets)
    options = RunOptions(resolver=case.resolver, timeout=10.0, trust_pem=authority.pem,
                         started_at=case.started_at)
    world = (world or case.probe_world)(authority, case.zone)
    network = ScriptedNetwork(world, World(authority, case.zone), options)
    info = RunInfo(targets, options, ControlSettings(urls=(make_corpus.CONTROL_URL,)))
    recording = start_recording(path, info, inner=network)

    async def go():
        return await session.run(recording, targets, options,
                                 session.ControlConfig((make_corpus.CONTROL_URL,)),
                                 report_id=recording.run_info.report_id)

    outcome = asyncio.run(go())
    finish_recording(recording, outcome)
    return path


def rows(outcome) -> list[tuple]:
    return [(v.endpoint_id, v.address, v.port, v.verdict, v.method)
            for vs in outcome.verdicts.values() for v in vs]


# --------------------------------------------------------------------------- #
# The format                                                                   #
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("name", ["run.jsonl", "run.jsonl.gz"])
def test_trace_format_header_ops_and_footer(tmp_path, name):
    path = record_case(make_corpus.CHINA, tmp_path / name)
    if name.endswith(".gz"):
        assert path.read_bytes()[:2] == b"\x1f\x8b"
        text = gzip.decompress(path.read_bytes()).decode()
    else:
        text = path.read_text()
    lines = [json.loads(line) for line in text.splitlines()]
    header, ops, footer = lines[0], lines[1:-1], lines[-1]
    assert header["type"] == "header" and header["format"] == FORMAT
    assert header["version"] == VERSION and header["probe_version"]
    assert header["scrubbed"] is False
    run = header["run"]
    assert run["report_id"] and run["started_at"].startswith("2020-08-09")
    for option in ("resolver", "timeout", "concurrency", "dns_linger", "trust_pem", "routable",
                   "max_addresses_per_family", "started_at"):
        assert option in run["options"]
    assert "BEGIN CERTIFICATE" in run["options"]["trust_pem"]
    assert run["targets"]["services"][0]["endpoints"][0]["host"] == "www.google.com"
    assert run["control_config"]["urls"] == [make_corpus.CONTROL_URL]
    assert {op["op"] for op in ops} >= {"dns_exchange", "getaddrinfo", "tls_handshake",
                                        "control_call"}
    assert [op["seq"] for op in ops] == list(range(len(ops)))
    for op in ops:
        assert op["type"] == "op" and "timeout" in op["args"]
        assert isinstance(op["t"], float) and "request" in op and "result" in op
    udp = [op for op in ops if op["op"] == "dns_exchange" and op["request"]["transport"] == "udp"]
    assert all("linger" in op["args"] for op in udp)
    injected = [op for op in udp if op["request"]["qname"] == "www.google.com"
                and op["request"]["qtype"] == "A"]
    # The racing forgery and the late real answer are both kept, raw bytes included.
    replies = injected[0]["result"]["replies"]
    assert len(replies) == 2 and all(base64.b64decode(r["raw"]) for r in replies)
    assert replies[0]["t"] < replies[1]["t"]
    assert footer["type"] == "end" and footer["complete"] is True
    assert footer["operations"] == len(ops)
    assert {(v["endpoint_id"], v["verdict"]) for v in footer["verdicts"]} >= {
        ("google-web", "dns_blocked"), ("news-web", "tls_blocked")}


def test_gzip_trace_is_readable_by_zcat_while_being_written(tmp_path):
    """Every line is flushed: a reader sees each operation as it completes."""
    case = make_corpus.TELEGRAM
    authority = Authority("Test Root", case.started_at)
    targets = parse_targets(case.targets)
    options = RunOptions(timeout=10.0, started_at=case.started_at)
    network = start_recording(tmp_path / "live.jsonl.gz", RunInfo(targets, options),
                              inner=ScriptedNetwork(World(authority, case.zone)))
    asyncio.run(network.tcp_connect("149.154.175.50", 443, 10.0))
    zcat = shutil.which("zcat")
    if zcat:
        out = subprocess.run([zcat, str(network.writer.path)], capture_output=True, text=True,
                             timeout=10, check=False).stdout
    else:
        out = "\n".join(text for _, _, text in iter_lines(network.writer.path))
    assert [json.loads(line)["type"] for line in out.splitlines()] == ["header", "op"]
    trace = load_trace(network.writer.path)  # no end line yet: still loads
    assert len(trace.ops) == 1 and trace.footer is None and not trace.complete
    network.writer.close()


@pytest.mark.parametrize("name", ["cut.jsonl", "cut.jsonl.gz"])
def test_truncated_trace_loads_up_to_the_last_full_line(tmp_path, name):
    whole = record_case(make_corpus.IRAN, tmp_path / f"whole-{name}")
    content = whole.read_bytes()
    if name.endswith(".gz"):
        content = gzip.decompress(content)
    lines = content.split(b"\n")
    keep = 6
    cut = b"\n".join(lines[:keep]) + b"\n" + lines[keep][: len(lines[keep]) // 2]
    path = tmp_path / name
    if name.endswith(".gz"):
        # A crash mid-write: a gzip stream that stops in the middle of a block.
        compressed = gzip.compress(cut)
        path.write_bytes(compressed[: len(compressed) - 12])
    else:
        path.write_bytes(cut)
    trace = load_trace(path)
    assert trace.truncated and trace.footer is None
    assert 0 < len(trace.ops) <= keep - 1
    assert any("cut short" in note for note in trace.notes)
    replayed = replay_trace(trace)  # what is missing fails as missing, nothing raises
    assert replayed.network.missing
    with pytest.raises(TraceError, match="no end line"):
        diff(path)


def test_unusable_traces_say_why(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(TraceError, match="empty"):
        load_trace(empty)
    other = tmp_path / "report.jsonl"
    other.write_text('{"report_id": "x"}\n')
    with pytest.raises(TraceError, match="not a probe trace"):
        load_trace(other)
    newer = tmp_path / "newer.jsonl"
    newer.write_text(json.dumps({"type": "header", "format": FORMAT, "version": 99}) + "\n")
    with pytest.raises(TraceError, match="version 99"):
        load_trace(newer)
    with pytest.raises(TraceError, match="cannot read"):
        load_trace(tmp_path / "missing.jsonl")
    damaged = tmp_path / "damaged.jsonl"
    good = record_case(make_corpus.RUSSIA, tmp_path / "good.jsonl").read_text().splitlines()
    damaged.write_text("\n".join([good[0], "{not json", *good[1:]]) + "\n")
    with pytest.raises(TraceError, match="line 2: not JSON"):
        load_trace(damaged)


def test_unknown_options_and_line_types_are_noted_not_fatal(tmp_path):
    path = record_case(make_corpus.RUSSIA, tmp_path / "t.jsonl")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    lines[0]["run"]["options"]["future_option"] = 3
    lines.insert(2, {"type": "sample", "what": "a line type from a newer probe"})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    trace = load_trace(path)
    assert any("future_option" in n for n in trace.notes)
    assert any("sample" in n for n in trace.notes)
    assert diff(path) == []


# --------------------------------------------------------------------------- #
# Recording and replaying networks                                             #
# --------------------------------------------------------------------------- #


def empty_trace(tmp_path) -> Trace:
    targets = parse_targets(make_corpus.RUSSIA.targets)
    return Trace(tmp_path / "none.jsonl", {}, RunInfo(targets, RunOptions()), [], None)


def test_missing_operations_return_results_never_raise(tmp_path):
    network = ReplayNetwork(empty_trace(tmp_path))

    async def every_operation():
        return [
            await network.getaddrinfo("example.org", 1),
            await network.dns_exchange(DnsQuery("192.0.2.53", 53, "example.org", "A"), 1, 1),
            await network.tcp_connect("192.0.2.1", 443, 1),
            await network.tls_handshake(TlsRequest("192.0.2.1", 443, "example.org"), 1),
            await network.http_request(HttpRequest("https://example.org/", "192.0.2.1"), 1),
            await network.mtproto_exchange(MtprotoRequest("192.0.2.1", 443, "AAAA"), 1),
            await network.control_call(ControlRequest("https://c.example/measure"), 1),
        ]

    results = asyncio.run(every_operation())
    assert all(r.failure == REPLAY_MISSING_OPERATION for r in results)
    assert results[3].connect.failure == REPLAY_MISSING_OPERATION
    assert len(network.missing) == 7 and network.replayed == 0


def op_line(op: str, request: dict, result, seq: int = 0) -> dict:
    return {"type": "op", "op": op, "seq": seq, "t": result.timing.t, "args": {"timeout": 1},
            "request": request, "result": to_json(result)}


def test_replay_matches_by_key_and_answers_identical_operations_in_order(tmp_path):
    trace = empty_trace(tmp_path)
    first = GetaddrinfoResult("a.example", ("192.0.2.1",), None, Timing(0.1, 0.2))
    second = GetaddrinfoResult("a.example", ("192.0.2.2",), None, Timing(0.3, 0.4))
    trace.ops = [op_line("getaddrinfo", {"host": "a.example"}, first),
                 op_line("getaddrinfo", {"host": "a.example"}, second, 1)]
    network = ReplayNetwork(trace)

    async def go():
        return [await network.getaddrinfo("a.example", 5) for _ in range(3)]

    a, b, c = asyncio.run(go())
    assert (a.addresses, b.addresses) == (("192.0.2.1",), ("192.0.2.2",))
    assert c.failure == REPLAY_MISSING_OPERATION
    assert network.clock() == 0.4  # the recorded clock, not the wall clock


def test_mtproto_replay_uses_the_recorded_nonce(tmp_path):
    """A replayed run sends a new random nonce; the recorded reply still validates,
    because the analysis reads the nonce from the recorded request."""
    path = record_case(make_corpus.TELEGRAM, tmp_path / "t.jsonl", world=World)
    outcome, _ = replay(path)
    checks = [c for o in outcome.observations.values() for p in o.ports for c in p.mtproto]
    assert checks and all(c.valid for c in checks)
    assert {r[3] for r in rows(outcome)} == {"ok"}


def test_replay_of_a_run_that_waited_in_timeouts_is_instant(tmp_path):
    path = TRACES / "telegram-datacenter-blackhole.jsonl"
    trace = load_trace(path)
    waited = sum(op["result"]["timing"]["t"] - op["result"]["timing"]["t0"]
                 for op in trace.ops if op["result"].get("failure") == failures.GENERIC_TIMEOUT)
    assert waited >= 100  # ten connects of 10 s each, and the control's
    started = time.perf_counter()
    outcome, _ = replay(path)
    assert time.perf_counter() - started < 1.0
    assert rows(outcome)[0][3:] == ("tcp_blocked", "tcp.timeout")


def test_recording_passes_results_through_unchanged(tmp_path):
    case = make_corpus.KAZAKHSTAN
    authority = Authority("Test Root", case.started_at)
    targets = parse_targets(case.targets)
    options = RunOptions(resolver=case.resolver, trust_pem=authority.pem,
                         started_at=case.started_at)
    world = case.probe_world(authority, case.zone)

    async def run(network):
        return await session.run(network, targets, options, session.ControlConfig(()),
                                 report_id="r")

    class Twice(ScriptedNetwork):  # same world, same clock: results are comparable
        pass

    plain = asyncio.run(run(Twice(world)))
    recording = start_recording(tmp_path / "t.jsonl", RunInfo(targets, options),
                                inner=lambda: Twice(world))
    recorded = asyncio.run(run(recording))
    finish_recording(recording, recorded)
    assert rows(plain) == rows(recorded)
    assert recording.run_info.report_id  # made when the caller gave none


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_a_trace_that_cannot_be_written_never_breaks_the_run(tmp_path):
    case = make_corpus.KAZAKHSTAN
    authority = Authority("Test Root", case.started_at)
    targets = parse_targets(case.targets)
    options = RunOptions(resolver=case.resolver, trust_pem=authority.pem,
                         started_at=case.started_at)
    info = RunInfo(targets, options)
    world = case.probe_world(authority, case.zone)
    with pytest.raises(TraceError, match="cannot record"):
        start_recording("/dev/full", info, inner=ScriptedNetwork(world))

    async def run(network):
        return await session.run(network, targets, options, session.ControlConfig(()),
                                 report_id="r")

    plain = asyncio.run(run(ScriptedNetwork(world)))
    recording = start_recording(tmp_path / "t.jsonl", info, inner=ScriptedNetwork(world))
    recording.writer._raw.close()
    recording.writer._raw = open("/dev/full", "wb")  # noqa: SIM115 - the disk fills up now
    recorded = asyncio.run(run(recording))
    assert rows(recorded) == rows(plain)  # the measurement is unaffected
    with pytest.raises(TraceError, match="incomplete.*writing stopped after 1 lines"):
        finish_recording(recording, recorded)
    trace = load_trace(tmp_path / "t.jsonl")  # what was written before still loads
    assert trace.ops == [] and trace.footer is None


def test_finishing_without_an_outcome_closes_the_trace(tmp_path):
    case = make_corpus.RUSSIA
    authority = Authority("Test Root", case.started_at)
    recording = start_recording(
        tmp_path / "t.jsonl.gz", RunInfo(parse_targets(case.targets), RunOptions()),
        inner=ScriptedNetwork(World(authority, case.zone)))
    asyncio.run(recording.tcp_connect("152.199.21.141", 443, 10.0))
    assert finish_recording(recording, None) == tmp_path / "t.jsonl.gz"
    trace = load_trace(tmp_path / "t.jsonl.gz")
    assert len(trace.ops) == 1 and trace.footer is None and not trace.truncated


def test_control_file_is_kept_in_the_trace(tmp_path):
    """A run compared with --control-file replays after the file is gone."""
    case = make_corpus.KAZAKHSTAN
    authority = Authority("Test Root", case.started_at)
    targets = parse_targets(case.targets)
    options = RunOptions(resolver=case.resolver, trust_pem=authority.pem,
                         started_at=case.started_at)
    # Make a control response file the way a helper would answer.
    helper = ScriptedNetwork(world=World(authority, case.zone), control=World(authority, case.zone),
                             control_options=options)
    first = asyncio.run(session.run(ScriptedNetwork(World(authority, case.zone)), targets,
                                    options, session.ControlConfig(())))
    request = session.protocol.build_request(
        [session.protocol.ControlEndpoint(e, first.observations[e.id].addresses)
         for e in targets.endpoints()], 10.0)
    answer = asyncio.run(helper.control_call(ControlRequest("x", request), 10))
    control_file = tmp_path / "control.json"
    control_file.write_text(json.dumps(answer.body))

    config = session.ControlConfig((), control_file, 60.0)
    info = RunInfo.from_run(targets, options, config)
    recording = start_recording(tmp_path / "t.jsonl", info,
                                inner=ScriptedNetwork(case.probe_world(authority, case.zone)))
    outcome = asyncio.run(session.run(recording, targets, options, config,
                                      report_id=recording.run_info.report_id))
    finish_recording(recording, outcome)
    assert outcome.control.available
    control_file.unlink()
    replayed, _ = replay(tmp_path / "t.jsonl")
    assert replayed.control.available
    assert rows(replayed) == rows(outcome)
    assert ("facebook-web", "157.240.1.35", 443, "tls_blocked", "tls.mitm") in rows(replayed)


# --------------------------------------------------------------------------- #
# Diff                                                                         #
# --------------------------------------------------------------------------- #


def test_compare_verdicts_reports_changed_added_and_removed_rows():
    base = {"endpoint_id": "e", "host": "h", "address": "192.0.2.1", "port": 443,
            "verdict": "ok", "method": None}
    changed = {**base, "verdict": "tls_blocked", "method": "tls.reset"}
    added = {**base, "address": "192.0.2.2"}
    gone = {**base, "endpoint_id": "f"}
    changes = compare_verdicts([base, gone], [changed, added])
    assert [str(c) for c in changes] == [
        "e 192.0.2.1:443: ok -> tls_blocked/tls.reset",
        "f 192.0.2.1:443: ok -> (no row)",
        "e 192.0.2.2:443: (no row) -> ok",
    ]


def test_a_changed_analysis_rule_shows_up_in_diff(monkeypatch):
    path = TRACES / "russia-2021-twitter-throttling.jsonl"
    assert diff(path) == []
    # A stricter rule: only transfers under 1 kB/s count as throttled.
    monkeypatch.setattr(analysis, "THROTTLE_FLOOR_BPS", 1_000)
    changes = diff(path)
    assert [(c.endpoint_id, c.old_verdict, c.new_verdict) for c in changes] == [
        ("twitter-media", "throttled", "ok")]
    result = CliRunner().invoke(replay_command, [str(path), "--diff"])
    assert result.exit_code == 1
    assert "twitter-media 152.199.21.141:443: throttled/throttle -> ok" in result.output
    result = CliRunner().invoke(replay_command, [str(path), "--diff", "--json"])
    assert result.exit_code == 1
    assert json.loads(result.output)["changes"][0]["new_verdict"] == "ok"


# --------------------------------------------------------------------------- #
# The CLI                                                                      #
# --------------------------------------------------------------------------- #


def test_cli_replay_writes_a_report_and_prints_json(tmp_path):
    path = TRACES / "iran-2018-dns-bogon-and-blockpage.jsonl"
    result = CliRunner().invoke(replay_command, [str(path), "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    report = Path(summary["report"])
    assert report.parent == tmp_path and report.is_file()
    assert summary["replay"]["operations_missing"] == 0
    assert {e["id"]: e["verdict"] for e in summary["endpoints"]}["news-http"] == "http_blocked"
    lines = [json.loads(line) for line in report.read_text().splitlines()]
    assert lines[0]["report_id"] == load_trace(path).run.report_id


def test_cli_replay_exit_codes(tmp_path):
    runner = CliRunner()
    path = TRACES / "kazakhstan-2019-interception.jsonl"
    result = runner.invoke(trace_cli_main, ["replay", str(path), "--diff"])
    assert result.exit_code == 0 and "no verdict changed" in result.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text("hello\n")
    result = runner.invoke(replay_command, [str(bad)])
    assert result.exit_code == 2 and "not JSON" in result.output
    # the lab corpus is re-recorded by a test tool, not by the product's CLI: it needs
    # root and the lab, and says so with exit code 2 when they are not here
    result = runner.invoke(refresh_lab_corpus.main, ["no-such-scenario"])
    assert result.exit_code == 2
    assert "refresh-lab-corpus" not in trace_cli_main.commands


# --------------------------------------------------------------------------- #
# The corpus                                                                   #
# --------------------------------------------------------------------------- #

CORPUS = sorted(TRACES.rglob("*.expected.json"))


def test_corpus_covers_the_documented_behaviours():
    names = {p.name.removesuffix(".expected.json") for p in CORPUS}
    assert set(make_corpus.CASES) <= names
    for name in make_corpus.CASES:
        header = json.loads((TRACES / f"{name}.jsonl").read_text().splitlines()[0])
        assert header["source"] and all(isinstance(s, str) and s for s in header["source"])
        assert header["corpus"]["description"]


@pytest.mark.parametrize("expected_path", CORPUS, ids=lambda p: p.name.split(".")[0])
def test_corpus(expected_path):
    expected = json.loads(expected_path.read_text())
    trace_path = expected_path.parent / expected["trace"]
    replayed = replay_trace(trace_path)
    assert not replayed.network.missing, f"the runner asks for operations the trace lacks: " \
        f"{replayed.network.missing[:3]} (regenerate: tests/traces/make_corpus.py)"
    observed = [
        {"id": v.endpoint_id, "address": v.address, "port": v.port, "verdict": v.verdict,
         "method": v.method}
        for vs in replayed.outcome.verdicts.values() for v in vs
    ]
    assert observed == expected["endpoints"]
    services = {s.service: s.status for s in replayed.outcome.services.values()}
    assert services == expected["services"]


def test_lab_corpus_tells_a_shutdown_from_an_offline_client():
    """Issue 8: under a national whitelist shutdown the ISP's resolver still answers,
    so the run is inconclusive but not "your network is down"; a client whose link is
    down is. A silent chosen resolver is said so in the rows."""
    lab = TRACES / "lab"
    assert replay_trace(lab / "whitelist-shutdown.jsonl.gz").outcome.network_down is False
    assert replay_trace(lab / "client-offline.jsonl.gz").outcome.network_down is True
    foreign = replay_trace(lab / "dns-foreign-resolver-dropped.jsonl.gz").outcome
    rows = [v for vs in foreign.verdicts.values() for v in vs]
    assert rows and all("never answered" in v.explanation for v in rows if v.host != v.address)


# --------------------------------------------------------------------------- #
# Equivalence with a live run on loopback                                      #
# --------------------------------------------------------------------------- #


class HostsFileNetwork(LiveNetwork):
    """The live network with the system resolver answered from a fixed table, so
    the test never asks the machine's resolver (which may be off loopback)."""

    def __init__(self, hosts: dict[str, tuple[str, ...]]) -> None:
        super().__init__()
        self.hosts = hosts

    async def getaddrinfo(self, host: str, timeout: float) -> GetaddrinfoResult:
        t0 = self.clock()
        addresses = self.hosts.get(host)
        if addresses is None:
            return GetaddrinfoResult(host, (), failures.DNS_NXDOMAIN, Timing(t0, self.clock()))
        return GetaddrinfoResult(host, addresses, None, Timing(t0, self.clock()))


@contextlib.contextmanager
def control_helper(hosts: dict[str, tuple[str, ...]], resolver: tuple[str, int], targets):
    """A real control helper (aiohttp, signing with a throw-away key) on 127.0.0.1,
    measuring ``targets``."""
    from aiohttp import web

    from probe.control.auth import Access
    from probe.control.server import ControlHelper
    from probe.report.keys import generate_ephemeral

    helper = ControlHelper(resolver, routable=(ipaddress.ip_network("127.0.0.0/8"),),
                           key=generate_ephemeral(), access=Access.anyone(),
                           network_factory=lambda: HostsFileNetwork(hosts),
                           targets=targets.endpoints())
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start():
        runner = web.AppRunner(helper.app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return runner

    runner = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    try:
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


LOOPBACK_TARGETS = """
version: 1
routable_networks: [127.0.0.0/8]
services:
  - id: web
    name: Web on loopback
    endpoints:
      - {{id: web-ok, host: www.example.org, port: {https}, checks: [dns, tcp, tls, https]}}
  - id: forged
    name: Forged by the resolver
    endpoints:
      - {{id: forged-name, host: forged.example, port: {https}, checks: [dns, tcp, tls]}}
  - id: censored
    name: NXDOMAIN from the probe's resolver only
    endpoints:
      - {{id: censored-name, host: censored.example, port: {https}, checks: [dns, tcp, tls]}}
  - id: hostile
    name: Hostile listeners
    endpoints:
      - {{id: silent, host: 127.0.0.1, port: {silent}, sni: www.example.org, checks: [tcp, tls]}}
      - {{id: reset, host: 127.0.0.1, port: {reset}, sni: www.example.org, checks: [tcp, tls]}}
      - {{id: refused, host: 127.0.0.1, port: {refused}, checks: [tcp]}}
  - id: telegram
    name: MTProto on loopback
    endpoints:
      - {{id: dc-loopback, host: 127.0.0.1, port: {mtproto}, checks: [tcp, mtproto]}}
"""


def canonical_lines(outcome, targets) -> list[bytes]:
    """The report lines, canonical (RFC 8785), minus the documented run metadata."""
    from probe.report.canonical import canonical_bytes
    from probe.report.measurements import build_lines

    out = []
    for line in build_lines(outcome, targets):
        line = dict(line)
        for key in ("measurement_uid", "test_runtime"):
            line.pop(key, None)
        out.append(canonical_bytes(line))
    return out


def test_live_loopback_run_replays_to_the_same_verdicts_and_test_keys(tmp_path, lab_pki):
    from servers import refused_port, start_dns, start_https, start_mtproto, start_tcp

    probe_zone = {"www.example.org": {"A": ["127.0.0.1"]}}
    honest_zone = {"www.example.org": {"A": ["127.0.0.1"]}, "forged.example": {"A": ["127.0.0.1"]},
                   "censored.example": {"A": ["127.0.0.1"]}}
    behaviours = {"forged.example": {"forge": ["10.10.34.35"]}, "censored.example": "nxdomain"}
    probe_hosts = {"www.example.org": ("127.0.0.1",), "forged.example": ("10.10.34.35",)}
    honest_hosts = {name: ("127.0.0.1",) for name in honest_zone}
    with contextlib.ExitStack() as stack:
        censoring_dns = stack.enter_context(start_dns(probe_zone, behaviours))
        honest_dns = stack.enter_context(start_dns(honest_zone))
        https = stack.enter_context(start_https(lab_pki, ("www.example.org", "example.org")))
        silent = stack.enter_context(start_tcp("silent"))
        reset = stack.enter_context(start_tcp("reset"))
        mtproto = stack.enter_context(start_mtproto())
        refused = stack.enter_context(refused_port())
        text = LOOPBACK_TARGETS.format(https=https.port, silent=silent.port, reset=reset.port,
                                       refused=refused, mtproto=mtproto.port)
        targets = parse_targets(text, source="loopback.yaml")
        control_url = stack.enter_context(
            control_helper(honest_hosts, ("127.0.0.1", honest_dns.port), targets))
        options = RunOptions(
            resolver=("127.0.0.1", censoring_dns.port), timeout=1.0, dns_linger=0.2,
            trust_pem=lab_pki.lab_root.cert.read_text(),
            routable=(ipaddress.ip_network("127.0.0.0/8"),),
        )
        config = session.ControlConfig((control_url,), None, 30.0)
        trace_path = tmp_path / "loopback.jsonl.gz"
        recording = start_recording(trace_path, RunInfo.from_run(targets, options, config),
                                    inner=lambda: HostsFileNetwork(probe_hosts))
        live_started = time.perf_counter()
        live = asyncio.run(session.run(recording, targets, options, config,
                                       report_id=recording.run_info.report_id))
        live_seconds = time.perf_counter() - live_started
        finish_recording(recording, live)

    # The run saw what the servers do (so the comparison below means something).
    by_id = {row[0]: row[3:] for row in rows(live)}
    assert by_id["web-ok"] == ("ok", None)
    assert by_id["forged-name"] == ("dns_blocked", "dns.bogon")
    assert by_id["censored-name"] == ("dns_blocked", "dns.nxdomain")
    assert by_id["silent"] == ("down", "tls.timeout")
    assert by_id["reset"][1] in ("tls.reset", "tls.eof")
    assert by_id["refused"] == ("down", "tcp.refused")
    assert by_id["dc-loopback"] == ("ok", None)
    assert live.control.available and live.control.entries

    started = time.perf_counter()
    replayed = replay_trace(trace_path)
    replay_seconds = time.perf_counter() - started
    again = replayed.outcome
    assert not replayed.network.missing and replayed.network.unused() == 0
    assert replay_seconds < min(1.0, live_seconds)
    assert verdict_rows(again) == verdict_rows(live)
    assert [to_json(s) for s in again.services.values()] == \
        [to_json(s) for s in live.services.values()]
    assert to_json(again.observations) == to_json(live.observations)
    assert to_json(again.control.observations) == to_json(live.control.observations)
    assert again.control.entries == live.control.entries  # signed entries, intact
    assert (again.report_id, again.started_at, again.complete, again.network_down) == \
        (live.report_id, live.started_at, live.complete, live.network_down)
    # The report lines (test_keys included), byte for byte once canonical.
    assert canonical_lines(again, targets) == canonical_lines(live, targets)
    assert diff(trace_path) == []


# --------------------------------------------------------------------------- #
# No network at all                                                            #
# --------------------------------------------------------------------------- #

# Runs in the child: fail on any socket use other than asyncio's AF_UNIX self-pipe.
AUDITED_REPLAY = """
import sys
used = []
def audit(event, args):
    if event in ("socket.connect", "socket.sendto", "socket.sendmsg", "socket.bind",
                 "socket.getaddrinfo", "socket.gethostbyname"):
        used.append(event)
    elif event == "socket.__new__" and args[1] != 1:
        used.append(f"socket family {args[1]}")
sys.addaudithook(audit)
from probe.trace_cli import main
try:
    main(sys.argv[1:])
finally:
    if used:
        print("SOCKETS USED:", used, file=sys.stderr)
        sys.stderr.flush()
        import os
        os._exit(3)
"""


def audited_replay(prefix: list[str], trace: Path, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [*prefix, sys.executable, "-c", AUDITED_REPLAY, "replay", str(trace), "--out", str(out),
         "--json"],
        capture_output=True, text=True, timeout=120, check=False, env=env,
    )


def test_replay_opens_no_socket(tmp_path):
    trace = TRACES / "gfw-dns-injection-and-sni-reset.jsonl"
    proc = audited_replay([], trace, tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert {e["id"]: e["method"] for e in summary["endpoints"]}["google-web"] == "dns.injected"


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("ip"),
                    reason="needs root and iproute2 to create a network namespace")
def test_replay_in_a_network_namespace_without_interfaces(tmp_path):
    namespace = f"trace-empty-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", namespace], check=True, timeout=30)
    try:
        links = subprocess.run(["ip", "netns", "exec", namespace, "ip", "-o", "link"],
                               capture_output=True, text=True, check=True, timeout=30).stdout
        assert [line.split(":")[1].strip() for line in links.splitlines()] == ["lo"]
        assert "state DOWN" in links  # not even loopback is up
        for expected_path in CORPUS:
            expected = json.loads(expected_path.read_text())
            out = tmp_path / expected_path.name.split(".")[0]
            proc = audited_replay(["ip", "netns", "exec", namespace],
                                  expected_path.parent / expected["trace"], out)
            assert proc.returncode == 0, proc.stderr
            summary = json.loads(proc.stdout)
            assert [
                {k: e[k] for k in ("id", "address", "port", "verdict", "method")}
                for e in summary["endpoints"]
            ] == expected["endpoints"]
            assert Path(summary["report"]).is_file()
    finally:
        subprocess.run(["ip", "netns", "delete", namespace], check=False, timeout=30)


def test_recording_info_survives_every_run_option(tmp_path):
    """Every RunOptions field goes into the header and comes back equal."""
    from probe.trace import options_from_json, options_to_json

    options = RunOptions(resolver=("192.0.2.53", 5353), timeout=3.5, concurrency=7,
                         dns_linger=0.25, max_addresses_per_family=2, trust_pem="PEM",
                         routable=(ipaddress.ip_network("198.51.100.0/24"),))
    back, notes = options_from_json(json.loads(json.dumps(options_to_json(options))))
    assert back == options and notes == []
    assert {f.name for f in dataclasses.fields(RunOptions)} == set(options_to_json(options))
