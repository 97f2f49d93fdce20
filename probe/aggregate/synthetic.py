"""Synthetic signed reports with a known truth, for tests and benchmarks.

:func:`measurement` writes one OONI-shaped measurement with the fields the
aggregation reads (the same keys ``probe.report.ooni.build_measurement``
writes: ``test_keys.endpoints`` and ``test_keys.service_status``), and
:func:`sign_run` signs a run's measurements into report lines byte for byte
identical to :class:`probe.report.signing.ReportSigner`'s (a test checks it),
only faster, because these records hold no value whose RFC 8785 form differs
from ``json.dumps``'s. :func:`scenario` makes many runs over countries,
networks, services and days with a blocking pattern chosen so that a test can
compute the expected tables by hand. Never used on real measurements.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import random
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from probe.report.keys import SigningKey, b64encode
from probe.report.signing import (
    ALGORITHM,
    FORMAT_VERSION,
    REPORT_LINE_CONTEXT,
    SEAL_FIELD,
    new_run_id,
)

# service -> endpoints (id, host, address, port); small, like the real targets.
SERVICES: dict[str, tuple[tuple[str, str, str | None, int | None], ...]] = {
    "telegram": (
        ("telegram-dc1", "149.154.175.50", "149.154.175.50", 443),
        ("telegram-dc2", "149.154.167.51", "149.154.167.51", 443),
        ("telegram-web", "web.telegram.org", "149.154.167.99", 443),
    ),
    "whatsapp": (
        ("whatsapp-e1", "e1.whatsapp.net", "157.240.1.53", 5222),
        ("whatsapp-web", "web.whatsapp.com", "157.240.4.53", 443),
    ),
    "signal": (
        ("signal-chat", "chat.signal.org", "13.248.212.111", 443),
        ("signal-storage", "storage.signal.org", "142.250.1.1", 443),
    ),
}

# How a blocked endpoint was blocked, by verdict: (method, failure, failed operation).
METHODS = {
    "dns_blocked": ("dns.nxdomain", "dns_nxdomain_error", "resolve"),
    "tcp_blocked": ("tcp.timeout", "generic_timeout_error", "connect"),
    "tls_blocked": ("tls.reset", "connection_reset", "tls_handshake"),
    "http_blocked": ("http.blockpage", None, "http_transaction"),
    "down": (None, "generic_timeout_error", "connect"),
    "inconclusive": (None, "generic_timeout_error", "connect"),
    "ok": (None, None, None),
}
BLOCKED = {
    "dns_blocked",
    "tcp_blocked",
    "tls_blocked",
    "http_blocked",
    "protocol_blocked",
    "throttled",
}


def service_status(verdicts: Iterable[str]) -> str:
    """The service status our analysis gives for these endpoint verdicts (simplified)."""
    verdicts = list(verdicts)
    blocked = sum(v in BLOCKED for v in verdicts)
    if blocked and blocked == len(verdicts):
        return "blocked"
    if blocked:
        return "partially_blocked"
    if verdicts and all(v == "down" for v in verdicts):
        return "down"
    if any(v == "ok" for v in verdicts):
        return "ok"
    return "inconclusive"


def measurement(
    service: str,
    cc: str,
    asn: str,
    started: datetime.datetime,
    verdicts: Mapping[str, str],
    report_id: str,
    uid_random: str,
) -> dict[str, Any]:
    """One measurement of ``service``; ``verdicts`` maps endpoint id -> verdict (default ok)."""
    rows: list[dict[str, Any]] = []
    for endpoint_id, host, address, port in SERVICES[service]:
        verdict = verdicts.get(endpoint_id, "ok")
        method, failure, operation = METHODS.get(verdict, ("other", "unknown_failure", None))
        dns_failed = verdict == "dns_blocked"
        rows.append(
            {
                "id": endpoint_id,
                "host": host,
                "address": None if dns_failed else address,
                "port": None if dns_failed else port,
                "role": None,
                "checks": ["dns", "tcp", "tls"],
                "verdict": verdict,
                "method": method,
                "failure": failure,
                "failed_operation": operation,
                "explanation": f"{endpoint_id} is {verdict}",
            }
        )
    status = service_status(r["verdict"] for r in rows)
    moment = f"{started:%Y-%m-%d %H:%M:%S}"
    return {
        "annotations": {"analysis": "control", "engine_name": "probe", "platform": "linux"},
        "data_format_version": "0.2.0",
        "input": None,
        "measurement_start_time": moment,
        "measurement_uid": f"{started:%Y%m%d%H%M%S}.000000_{cc}_{service}_{uid_random}",
        "probe_asn": asn,
        "probe_cc": cc,
        "probe_ip": "127.0.0.1",
        "probe_network_name": f"Network {asn}",
        "report_id": report_id,
        "software_name": "probe",
        "software_version": "0.1.0",
        "test_keys": {
            "control": None,
            "endpoints": rows,
            "service_status": {"status": status, "explanation": f"{service} is {status}"},
        },
        "test_name": service,
        "test_runtime": 2.5,
        "test_start_time": moment,
        "test_version": "0.1.0",
    }


def _dumps(record: Mapping[str, Any]) -> bytes:
    # The RFC 8785 form for records of strings, safe integers, null, bool and
    # non-integral floats written without exponent (what this module produces).
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sign_run(
    key: SigningKey,
    measurements: Iterable[Mapping[str, Any]],
    run_id: str | None = None,
    *,
    finish: bool = True,
    interrupted: bool = False,
) -> list[bytes]:
    """A run's report lines (each ending with a newline), as ReportSigner writes them.

    ``finish``: seal the last measurement, as the probe does at the end of a run
    (False: a run whose end is missing, as after a kill or a cut-off upload).
    """
    run = run_id or new_run_id()
    previous: str | None = None
    lines = []
    records = [dict(m) for m in measurements]
    for seq, record in enumerate(records):
        signature = {
            "version": FORMAT_VERSION,
            "alg": ALGORITHM,
            "key_id": key.key_id,
            "public_key": key.public_key_b64,
            "run": run,
            "seq": seq,
            "prev": previous,
        }
        if finish and seq == len(records) - 1:
            signature[SEAL_FIELD] = {"measurements": len(records), "interrupted": interrupted}
        record["signature"] = signature
        signature["value"] = b64encode(
            key.sign(
                REPORT_LINE_CONTEXT
                + _dumps(
                    {**record, "signature": {k: v for k, v in signature.items() if k != "value"}}
                )
            )
        )
        line = _dumps(record)
        previous = hashlib.sha256(line).hexdigest()
        lines.append(line + b"\n")
    return lines


@dataclass(frozen=True)
class Network:
    cc: str
    asn: str
    # service -> (first day index, last day index, verdicts while blocked)
    blocking: Mapping[str, tuple[int, int, Mapping[str, str]]]


# Blocking patterns per (country, network); the rest of the time every endpoint is ok.
NETWORKS = (
    Network(
        "IR",
        "AS197207",
        {
            "telegram": (
                0,
                10**6,
                {
                    "telegram-dc1": "tcp_blocked",
                    "telegram-dc2": "tcp_blocked",
                    "telegram-web": "dns_blocked",
                },
            ),
            "whatsapp": (2, 4, {"whatsapp-web": "tls_blocked"}),
        },
    ),
    Network(
        "IR",
        "AS44244",
        {
            "telegram": (1, 10**6, {"telegram-web": "dns_blocked"}),
            "signal": (0, 10**6, {"signal-chat": "tls_blocked", "signal-storage": "tls_blocked"}),
        },
    ),
    Network(
        "RU",
        "AS12389",
        {
            "telegram": (3, 5, {"telegram-web": "http_blocked"}),
        },
    ),
    Network(
        "DE",
        "AS3320",
        {
            "whatsapp": (1, 1, {"whatsapp-e1": "down", "whatsapp-web": "down"}),
        },
    ),
)
START = datetime.datetime(2026, 3, 1, tzinfo=datetime.UTC)


def verdicts_for(network: Network, service: str, day: int) -> dict[str, str]:
    first, last, verdicts = network.blocking.get(service, (1, 0, {}))
    return dict(verdicts) if first <= day <= last else {}


def scenario(
    days: int = 7,
    runs_per_day: int = 2,
    keys: list[SigningKey] | None = None,
    seed: int = 7,
    networks: tuple[Network, ...] = NETWORKS,
) -> Iterator[tuple[SigningKey, list[bytes]]]:
    """Runs over every network and day, each measuring every service: (key, lines)."""
    rng = random.Random(seed)
    from probe.report.keys import generate_ephemeral

    keys = keys or [generate_ephemeral() for _ in networks]
    for day in range(days):
        for number in range(runs_per_day):
            for index, network in enumerate(networks):
                started = START + datetime.timedelta(days=day, hours=2 + 8 * number, minutes=index)
                report_id = f"{started:%Y%m%dT%H%M%SZ}_probe_{rng.getrandbits(48):012x}"
                run = [
                    measurement(
                        service,
                        network.cc,
                        network.asn,
                        started,
                        verdicts_for(network, service, day),
                        report_id,
                        f"{rng.getrandbits(64):016x}",
                    )
                    for service in SERVICES
                ]
                key = keys[index % len(keys)]
                yield key, sign_run(key, run, f"{rng.getrandbits(128):032x}")
