"""The end-of-run summary: per-function status next to each service's, and one
line per network-wide finding, on the terminal and in ``--json`` alike.

The summary is rendered from a run's outcome (plain data), so these tests build
outcomes by hand and read what rich printed, without colours.
"""

from __future__ import annotations

import datetime
import io
import json
from pathlib import Path

from rich.console import Console

from probe.display import (
    Display,
    function_line,
    iter_summary_json,
    network_lines,
    summary_json,
)
from probe.observations import FunctionVerdict, NetworkFindings, ServiceVerdict, Verdict
from probe.session import ControlOutcome, RunOutcome
from probe.targets import Targets

REPORT = Path("/tmp/reports/2026-12-03T140000Z-abc.jsonl")

TELEGRAM_FUNCTIONS = (
    # deliberately out of order: the summary follows the vocabulary's order
    FunctionVerdict("calls", "blocked", "the call reflectors do not answer STUN"),
    FunctionVerdict("media", "partially_blocked", "one media datacenter is blocked"),
    FunctionVerdict("messaging", "ok", "every datacenter answered MTProto"),
)


ORDINARY = NetworkFindings()


def outcome(network: NetworkFindings = ORDINARY, functions=None) -> RunOutcome:
    verdicts = {
        "telegram-reflector": [Verdict("telegram-reflector", "telegram", "91.108.8.1",
                                       "91.108.8.1", 596, "udp_blocked", "udp.timeout",
                                       "generic_timeout_error", "udp", "no STUN answer")],
        "signal-chat": [Verdict("signal-chat", "signal", "chat.signal.org", "13.248.212.111",
                                443, "ok", None, None, None, "fine")],
    }
    return RunOutcome(
        started_at=datetime.datetime(2026, 12, 3, 14, tzinfo=datetime.UTC),
        report_id="20261203T140000Z_probe_abc",
        observations={},
        verdicts=verdicts,
        services={
            "telegram": ServiceVerdict("telegram", "partially_blocked", "calls are blocked"),
            "signal": ServiceVerdict("signal", "ok", "everything answered"),
        },
        control=ControlOutcome(observations={}, source="https://control.example/"),
        network_down=False,
        complete=True,
        runtime=3.0,
        resolver="192.0.2.53",
        network=network,
        functions={"telegram": TELEGRAM_FUNCTIONS} if functions is None else functions,
    )


def printed(run: RunOutcome) -> str:
    display = Display(Targets("test", (), None), enabled=False)
    buffer = io.StringIO()
    display.out = Console(file=buffer, width=300, color_system=None, highlight=False)
    display.print_summary(run, REPORT)
    return buffer.getvalue()


def test_function_line_reads_as_users_describe_blocking():
    assert function_line("telegram", TELEGRAM_FUNCTIONS) == (
        "telegram: messaging ok · media partially_blocked · calls blocked"
    )
    assert function_line("signal", ()) is None


def test_terminal_shows_per_function_status_next_to_the_service():
    text = printed(outcome())
    assert "telegram: messaging ok · media partially_blocked · calls blocked" in text
    assert "signal:" not in text  # no function declared: no line
    assert text.index("telegram: messaging ok") < text.index("Report:")


def test_all_udp_dropped_is_one_line_for_the_whole_network():
    dropped = NetworkFindings("all_udp_dropped", False,
                              "no UDP flow was answered, not even by the control helper")
    assert network_lines(dropped) == [
        "This network drops all UDP: calls fail for every app "
        "(no UDP flow was answered, not even by the control helper)"
    ]
    text = printed(outcome(dropped))
    assert text.count("This network drops all UDP: calls fail for every app") == 1


def test_restricted_network_says_so_with_its_evidence():
    restricted = NetworkFindings("ok", True, "data reached 2 of 40 destinations")
    (line,) = network_lines(restricted)
    assert line.startswith("Restricted network: ")
    assert line.endswith("(data reached 2 of 40 destinations)")
    assert "Restricted network: " in printed(outcome(restricted))


def test_an_ordinary_network_prints_no_finding():
    assert network_lines(NetworkFindings("ok", False, "")) == []
    assert network_lines(NetworkFindings()) == []  # no UDP baseline measured
    text = printed(outcome())
    assert "This network drops" not in text and "Restricted network" not in text


def test_json_summary_has_the_same_functions_and_findings():
    findings = NetworkFindings("all_quic_dropped", False, "no QUIC handshake completed")
    run = outcome(findings)
    summary = summary_json(run, REPORT)
    telegram, signal = summary["services"]
    assert list(telegram["functions"]) == ["messaging", "media", "calls"]
    assert telegram["functions"]["calls"] == {
        "status": "blocked", "explanation": "the call reflectors do not answer STUN"}
    assert signal["functions"] == {}
    assert summary["network"] == {
        "udp": "all_quic_dropped", "restricted": False,
        "explanation": "no QUIC handshake completed",
        "findings": network_lines(findings),
    }
    assert summary["network"]["findings"][0].startswith("This network drops all QUIC")
    # printed row by row, the same data
    assert json.loads("\n".join(iter_summary_json(run, REPORT))) == summary
