"""The control helper's UDP echo as a baseline endpoint: the probe's reference UDP flow.

A flow to a messenger's call relay that goes unanswered says little alone: the
volunteer's network may drop every UDP flow (a finding about the network, which
blocks calls for every app), or only the messenger's. A helper started with
``--udp-echo`` answers a ``udp`` flow (payload ``echo``) from an uncensored,
non-allowlisted destination; ``reference_endpoints`` asks the helpers for the
ports of their echo (``POST /info``, through the network seam, so recording and
replay cover it) and turns the first answer into baseline endpoints.

It never fails a run: no helper, a helper without an echo, a slow, hostile or
unreachable helper all give ``()`` within ``timeout``. It never guesses a port.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from probe.control import protocol
from probe.net.network import ControlRequest, Network
from probe.targets import Endpoint
from probe.vocabulary import Check, UdpPayload

log = logging.getLogger("probe.control.reference")

ENDPOINT_ID = "control-udp-echo"
SERVICE = "baseline"
MAX_INFO_BYTES = 16 * 1024  # /info is a few hundred bytes: more is not a helper's answer
DATAGRAMS = 50  # per flow, as a messenger's `udp` endpoint (probe.targets default)
INTERVAL = 0.1
GRACE = 0.5  # seconds past a call's own deadline before it is abandoned unanswered
NOTES = ("The control helper's UDP echo (probe control serve --udp-echo): a flow from an "
         "uncensored destination no censor allowlists, to tell a network that cuts every "
         "UDP flow from one that cuts a messenger's.")


class InfoError(ValueError):
    """A helper's /info answer that cannot be used."""


def _ports(info: dict[str, Any]) -> tuple[int, ...]:
    ports = info.get("udp_echo", [])
    if not isinstance(ports, list) or len(ports) > protocol.MAX_PORTS or not all(
        isinstance(p, int) and not isinstance(p, bool) and 0 < p < 65536 for p in ports
    ):
        raise InfoError(f"udp_echo must be a list of at most {protocol.MAX_PORTS} ports")
    return tuple(dict.fromkeys(ports))


def _datagrams(info: dict[str, Any], ports: int) -> int:
    """Datagrams per flow so that all flows together fit in half the burst the echo
    grants one source: a flow cut by the echo's own limit would read as a cutoff."""
    limits = info.get("udp_echo_limits")
    burst = limits.get("burst") if isinstance(limits, dict) else None
    if isinstance(burst, bool) or not isinstance(burst, (int, float)) or not math.isfinite(burst):
        return DATAGRAMS
    return max(1, min(DATAGRAMS, int(burst) // 2 // max(1, ports)))


def endpoints_from_info(url: str, info: Any) -> tuple[Endpoint, ...]:
    """The baseline endpoints a helper's /info answer offers (``()``: none); pure."""
    if not isinstance(info, dict):
        raise InfoError("the answer is not a JSON object")
    ports = _ports(info)
    host = urlsplit(url).hostname  # without the brackets of an IPv6 literal
    if not ports or not host:
        return ()
    return (
        Endpoint(
            id=ENDPOINT_ID, service=SERVICE, host=host, ports=ports, checks=(Check.UDP.value,),
            sni=None, ca_pem=None, notes=NOTES, function=None, payload=UdpPayload.ECHO.value,
            datagrams=_datagrams(info, len(ports)), interval=INTERVAL,
        ),
    )


async def _ask(
    network: Network, url: str, timeout: float, unreachable: dict[str, str]
) -> tuple[Endpoint, ...]:
    request = ControlRequest(url.rstrip("/") + "/info", {}, max_bytes=MAX_INFO_BYTES,
                             connect_timeout=timeout)
    result = await network.control_call(request, timeout)
    if result.failure is not None or result.body is None:
        if not result.connected:  # the same words as a refused /measure would get
            unreachable[url] = f"{url}: {result.failure or 'empty answer'}"
        raise InfoError(result.failure or "empty answer")
    return endpoints_from_info(url, result.body)


async def reference_endpoints(
    network: Network, control_urls: Sequence[str], timeout: float,
    unreachable: dict[str, str] | None = None,
) -> tuple[Endpoint, ...]:
    """Baseline endpoints for the UDP echo of the first helper that offers one.

    Every helper is asked at once; the first answer with an echo wins, the others
    are cancelled. Whatever happens, this returns within ``timeout`` (and
    ``GRACE``) and never raises (but for cancellation of the caller): a missing
    reference only leaves the run's UDP findings ``unknown``. The helpers that
    could not be connected to are added to ``unreachable`` (by URL: the problem)."""
    unreachable = {} if unreachable is None else unreachable
    tasks = [asyncio.ensure_future(_ask(network, url, timeout, unreachable))
             for url in control_urls]
    if not tasks:
        return ()
    try:
        # each call ends by its own deadline, with its result (and whether it
        # connected); this one only guards against a network that never returns
        async with asyncio.timeout(timeout + GRACE):
            for next_done in asyncio.as_completed(tasks):
                try:
                    endpoints = await next_done
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - a helper's trouble is never the run's
                    log.debug("no UDP echo from a control helper: %s", str(exc)[:200])
                    continue
                if endpoints:
                    return endpoints
    except TimeoutError:
        log.debug("no control helper offered a UDP echo within %.1f s", timeout)
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks, return_exceptions=True)
    return ()
