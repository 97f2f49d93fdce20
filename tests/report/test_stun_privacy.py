"""A STUN answer's mapped address is the volunteer's public address: it must reach
no report, trace or log, in any encoding, even when no control helper answered.

A real STUN server on loopback answers Binding Requests, as a NAT'd volunteer
would be answered, with a documentation address standing for the volunteer's
public address (in XOR-MAPPED-ADDRESS, which hides it XORed with the magic
cookie, and in the old MAPPED-ADDRESS). Its answers are encoded by aioice,
not by our code, and the rewritten datagrams must still parse with aioice
(FINGERPRINT included), so that a scrubbed trace still replays.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import io
import ipaddress
import json
import logging
import re
import struct
from pathlib import Path

import pytest
from aioice import stun as aioice_stun

from probe.net.network import Timing, UdpReceived, UdpRequest, UdpResult, UdpSent, to_json
from probe.observations import (
    EndpointObservation,
    FunctionVerdict,
    NetworkFindings,
    PortObservation,
    ServiceResult,
    ServiceVerdict,
    UdpCheck,
    Verdict,
)
from probe.report.keys import generate_ephemeral
from probe.report.measurements import RunContext, write_run_report
from probe.report.scrub import (
    SCRUBBED,
    ScrubbingLogFilter,
    find_leaks,
    mapped_addresses_seen,
    scrub_text,
    volunteer_addresses,
)
from probe.report.scrub import stun as stun_scrub
from probe.report.staging import StagedResults
from probe.session import ControlOutcome, RunOutcome
from probe.targets import Endpoint, Service, Targets
from probe.trace import scrub_trace_file

MAPPED_PORT = 40001
SERVER_ADDRESS = "198.51.100.3"  # the server's own, in RESPONSE-ORIGIN: not the volunteer's


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class StunServer(asyncio.DatagramProtocol):
    """Answers each Binding Request with a Binding Success saying it saw ``public``."""

    def __init__(self, public: str) -> None:
        self.public = public
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        request = aioice_stun.parse_message(data)
        answer = aioice_stun.Message(
            aioice_stun.Method.BINDING, aioice_stun.Class.RESPONSE, request.transaction_id,
            {
                "XOR-MAPPED-ADDRESS": (self.public, MAPPED_PORT),
                "MAPPED-ADDRESS": (self.public, MAPPED_PORT),
                "RESPONSE-ORIGIN": (SERVER_ADDRESS, 3478),
                "SOFTWARE": "lab stun",
            },
        )
        answer.add_fingerprint()
        assert self.transport is not None
        self.transport.sendto(bytes(answer), addr)


class Client(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.answers: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr) -> None:
        self.answers.put_nowait((asyncio.get_running_loop().time(), data))


async def binding_exchange(public: str) -> tuple[UdpCheck, int, bytes]:
    """One real Binding Request to a STUN server on loopback; the check as
    ``probe.stun`` would judge it (answered, mapped address recorded)."""
    loop = asyncio.get_running_loop()
    server, _ = await loop.create_datagram_endpoint(
        lambda: StunServer(public), local_addr=("127.0.0.1", 0))
    port = server.get_extra_info("sockname")[1]
    client, protocol = await loop.create_datagram_endpoint(
        Client, remote_addr=("127.0.0.1", port))
    try:
        request = aioice_stun.Message(aioice_stun.Method.BINDING, aioice_stun.Class.REQUEST)
        request.add_fingerprint()
        sent_at = loop.time()
        client.sendto(bytes(request))
        received_at, answer = await asyncio.wait_for(protocol.answers.get(), timeout=2.0)
    finally:
        client.close()
        server.close()
    udp_request = UdpRequest("127.0.0.1", port, (b64(bytes(request)),), (0.0,),
                             stop_on_reply=True)
    result = UdpResult(udp_request, (UdpSent(sent_at, 0),),
                       (UdpReceived(received_at, b64(answer), len(answer)),), (), None,
                       Timing(sent_at, received_at))
    return UdpCheck("stun", result, (0,), None, mapped_address=public), port, answer


def forms_of(public: str, answer: bytes) -> list[bytes]:
    """Every byte form of the address: packed, and XORed as STUN carries it."""
    address = ipaddress.ip_address(public)
    key = struct.pack("!I", stun_scrub.MAGIC_COOKIE)
    if address.version == 6:
        key += answer[8:20]  # IPv6: XORed with the cookie and the transaction id
    xored = bytes(a ^ b for a, b in zip(address.packed, key, strict=True))
    return [address.packed, xored]


def base64_payloads(text: str) -> list[bytes]:
    found = []
    for run in re.findall(r"[A-Za-z0-9+/]{16,}={0,2}", text):
        try:
            found.append(base64.b64decode(run + "=" * (-len(run) % 4)))
        except ValueError:
            continue
    return found


def assert_nowhere(text: str, public: str, answer: bytes) -> None:
    assert public not in text
    assert str(ipaddress.ip_address(public).exploded) not in text
    for payload in base64_payloads(text):
        for form in forms_of(public, answer):
            assert form not in payload
    for line in text.splitlines():
        if line.strip():
            assert find_leaks(json.loads(line) if line.startswith("{") else line, [public]) == []


def stun_answers_in(line: dict) -> list[aioice_stun.Message]:
    """Every STUN datagram kept (base64) in a JSON line, parsed by aioice."""
    messages = []

    def walk(value) -> None:
        if isinstance(value, str):
            data = stun_scrub.decode_base64_stun(value)
            if data is not None:
                messages.append(aioice_stun.parse_message(data))  # FINGERPRINT checked
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(line)
    return messages


@pytest.mark.parametrize("public", ["198.51.100.77", "2001:db8:77::5"])
def test_a_stun_mapped_address_reaches_no_report_trace_or_log(tmp_path: Path, public: str):
    check, port, answer = asyncio.run(binding_exchange(public))
    # the test's premise: the raw answer does carry the address, XORed and plain
    assert all(form in answer for form in forms_of(public, answer))

    endpoint = Endpoint("lab-stun", "lab", "127.0.0.1", (port,), ("stun",), None, None,
                        function="calls")
    service = Service("lab", "Lab", "lab", False, "", (endpoint,))
    targets = Targets("test", (service,), None)
    observation = EndpointObservation(
        endpoint.id, "lab", "127.0.0.1", None, (), ("127.0.0.1",), (),
        (PortObservation("127.0.0.1", port, None, None, None, (), (), udp=(check,)),),
    )
    result = ServiceResult(
        "lab", (observation,),
        (Verdict(endpoint.id, "lab", "127.0.0.1", "127.0.0.1", port, "ok", None, None, None,
                 f"STUN answered, saw you from {public}"),),
        ServiceVerdict("lab", "ok", "the STUN server answered"), None,
        ("no control helper answered",), False,
        functions=(FunctionVerdict("calls", "ok", "the STUN server answered"),),
        network=NetworkFindings("ok", False, ""),
    )

    # Logs: nothing is known of the volunteer at the start (no control, no public
    # interface address); the STUN answer teaches it as soon as it is staged.
    log_stream = io.StringIO()
    handler = logging.StreamHandler(log_stream)
    log_filter = ScrubbingLogFilter([])
    handler.addFilter(log_filter)
    logger = logging.getLogger("probe.tests.stun_privacy")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with StagedResults(tmp_path / "reports", on_mapped_address=lambda _: (
            log_filter.set_addresses(staged.mapped_addresses)
        )) as staged:
            staged.add(result)
            logger.info("STUN %s:%d saw us from %s:%d, answer %s", "127.0.0.1", port, public,
                        MAPPED_PORT, b64(answer))
            addresses = volunteer_addresses(None, [], (), mapped=staged.mapped_addresses)
            assert addresses == [str(ipaddress.ip_address(public))]
            outcome = RunOutcome(
                started_at=datetime.datetime(2026, 12, 3, 14, tzinfo=datetime.UTC),
                report_id="20261203T140000Z_probe_5f0a1b2c3d4e", observations={},
                verdicts={endpoint.id: list(result.verdicts)}, services={"lab": result.status},
                control=ControlOutcome(problems=["no control helper answered"]),
                network_down=False, complete=True, runtime=1.0, resolver=None,
            )
            report, dropped = write_run_report(
                outcome, targets, tmp_path / "reports", generate_ephemeral(),
                RunContext(tuple(addresses)), staged.in_order(["lab"]),
            )
    finally:
        logger.removeHandler(handler)
    assert dropped == []

    # The trace: the same flow, as the recording network would keep it.
    trace = tmp_path / "run.trace.jsonl"
    trace.write_text("\n".join(json.dumps(line) for line in (
        {"type": "header", "report_id": outcome.report_id},
        {"type": "operation", "op": "udp_exchange", "result": to_json(check.result)},
        {"type": "check", "check": to_json(check)},
    )) + "\n")
    assert scrub_trace_file(trace, addresses) == 0

    report_text, trace_text, log_text = report.read_text(), trace.read_text(), log_stream.getvalue()
    for text in (report_text, trace_text, log_text):
        assert_nowhere(text, public, answer)

    # What is kept still says what happened: the answer parses, with the placeholder
    # in place of the volunteer's address, the port and the server's own address kept.
    placeholder = "0.0.0.1" if ":" not in public else "::1:0:0:1"  # the first of one
    line = json.loads(report_text.splitlines()[0])
    (flow,) = line["test_keys"]["udp_flows"]
    assert flow["mapped_address"] == SCRUBBED and flow["answered"] == [0]
    for kept in [line, *map(json.loads, trace_text.splitlines()[1:])]:
        (message,) = [m for m in stun_answers_in(kept) if m.message_class.name == "RESPONSE"]
        assert message.attributes["XOR-MAPPED-ADDRESS"] == (placeholder, MAPPED_PORT)
        assert message.attributes["MAPPED-ADDRESS"] == (placeholder, MAPPED_PORT)
        assert message.attributes["RESPONSE-ORIGIN"] == (SERVER_ADDRESS, 3478)
        assert message.attributes["SOFTWARE"] == "lab stun"
    assert SCRUBBED in log_text and str(port) in log_text


def test_without_the_stun_answer_nothing_would_be_scrubbed():
    # The mapped address is the only source here: no control, no public interface.
    assert volunteer_addresses(None, ["10.0.0.2", "fe80::1"], ()) == []
    assert volunteer_addresses(None, [], (), mapped=["198.51.100.77", "127.0.0.1", "::"]) == [
        "198.51.100.77"]


def test_mapped_addresses_are_found_in_raw_answers_too():
    # A forged answer racing the real one may say another address: both are
    # where a STUN server saw "us" from, and both are scrubbed.
    check, _, answer = asyncio.run(binding_exchange("198.51.100.77"))
    forged = aioice_stun.Message(
        aioice_stun.Method.BINDING, aioice_stun.Class.RESPONSE, answer[8:20],
        {"XOR-MAPPED-ADDRESS": ("203.0.113.9", 5000)},
    )
    data = to_json(check)
    data["result"]["received"].append({"t": 0.0, "data": b64(bytes(forged)), "length": 32})
    assert mapped_addresses_seen([data]) == ["198.51.100.77", "203.0.113.9"]


def test_rewrite_keeps_what_is_not_the_volunteers_and_a_valid_fingerprint():
    message = aioice_stun.Message(
        aioice_stun.Method.BINDING, aioice_stun.Class.RESPONSE, None,
        {"XOR-MAPPED-ADDRESS": ("2001:db8:77::5", 40001),
         "OTHER-ADDRESS": (SERVER_ADDRESS, 3479)},
    )
    message.add_fingerprint()
    data = bytes(message)
    assert stun_scrub.rewrite(data, lambda address: None) is data
    placeholder = stun_scrub.PLACEHOLDER_V6 + 1
    cleaned = stun_scrub.rewrite(
        data, lambda address: placeholder if str(address) == "2001:db8:77::5" else None)
    parsed = aioice_stun.parse_message(cleaned)
    assert parsed.attributes["XOR-MAPPED-ADDRESS"] == ("::1:0:0:1", 40001)
    assert parsed.attributes["OTHER-ADDRESS"] == (SERVER_ADDRESS, 3479)
    assert len(cleaned) == len(data)


def test_a_dns_reply_or_text_is_not_mistaken_for_stun():
    assert not stun_scrub.is_stun(b"\x12\x34\x81\x80" + b"\x00" * 40)
    assert stun_scrub.decode_base64_stun("SGVsbG8gd29ybGQsIHRoaXMgaXMgbm90IFNUVU4h") is None
    text = "plain words about 198.51.100.77"
    assert scrub_text(text, ["198.51.100.77"]) == f"plain words about {SCRUBBED}"


def test_the_controls_own_stun_answers_are_not_the_volunteers(tmp_path: Path):
    # The control helper measures the same STUN servers: their answers (kept in its
    # signed attestation) name the helper's public address, which must stay in the
    # report as it is, not be scrubbed as if it were the volunteer's.
    ours, _, _ = asyncio.run(binding_exchange("198.51.100.77"))
    theirs, _, _ = asyncio.run(binding_exchange("198.51.100.14"))
    port = PortObservation("127.0.0.1", 3478, None, None, None, (), (), udp=(ours,))
    observation = EndpointObservation("e", "s", "127.0.0.1", None, (), ("127.0.0.1",), (),
                                      (port,))
    control = {"source": "http://198.51.100.14:8080", "endpoints": ["e"],
               "attestation": [{"observation": to_json(theirs)}]}
    result = ServiceResult("s", (observation,), (), ServiceVerdict("s", "ok", ""), control)
    with StagedResults(tmp_path) as staged:
        staged.add(result)
        assert staged.mapped_addresses == ["198.51.100.77"]
