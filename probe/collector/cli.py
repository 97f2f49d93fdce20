"""``probe collector serve``: run the collector. Parse, build, serve; no logic here."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
import sys

import click

from probe.bogons import parse_networks
from probe.collector.limits import KIB, MIB, Limits

DEFAULTS = Limits()


def parse_listen(value: str) -> tuple[str, int]:
    """'127.0.0.1:8080', '[::1]:8080', '0.0.0.0:8080' -> (host, port); port 0 picks one."""
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port_text = value.rpartition(":")
    try:
        ipaddress.ip_address(host)
        port = int(port_text)
        if not 0 <= port < 65536:
            raise ValueError
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not IP:PORT (for example 127.0.0.1:8080 or [::1]:8080)"
        ) from None
    return host, port


def _trusted(path: str | None, what: str) -> frozenset[str] | None:
    from probe.report.verify import TrustedKeysError, load_trusted_keys

    if not path:
        return None
    try:
        return load_trusted_keys(path)
    except TrustedKeysError as error:
        raise click.BadParameter(str(error), param_hint=what) from None


@click.group()
def collector() -> None:
    """Receive signed reports from probes (run this on the NGO's server)."""


@collector.command("serve")
@click.option(
    "--listen",
    default="127.0.0.1:8080",
    show_default=True,
    metavar="IP:PORT",
    help="Address to listen on; port 0 picks a free one.",
)
@click.option(
    "--data",
    "data_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Folder of the stored reports (created if missing).",
)
@click.option(
    "--trusted-keys",
    type=click.Path(dir_okay=False),
    help="Accept only uploads by these probe keys (one base64 key or key id a line; "
    "'probe key show' on a volunteer's machine prints its key). Others get 403 "
    "before their body is read.",
)
@click.option(
    "--trusted-control-keys",
    type=click.Path(dir_okay=False),
    help="Control helpers whose attestations count; unattested control data is then refused.",
)
@click.option(
    "--trusted-proxy",
    "proxies",
    multiple=True,
    metavar="CIDR",
    help="A reverse proxy in front of the collector (repeatable): for its requests the "
    "client is the last X-Forwarded-For address, for per-client limits.",
)
@click.option(
    "--max-concurrent",
    type=click.IntRange(1, 4096),
    default=DEFAULTS.max_concurrent_uploads,
    show_default=True,
    help="Uploads processed at once; more get 503.",
)
@click.option(
    "--max-uploads-per-client",
    type=click.IntRange(1, 4096),
    default=DEFAULTS.max_uploads_per_client,
    show_default=True,
    help="Uploads in flight from one client (an IPv4 address or an IPv6 /64); more get 429.",
)
@click.option(
    "--min-body-rate",
    type=click.FloatRange(0.001),
    default=DEFAULTS.min_body_rate / KIB,
    show_default=True,
    metavar="KIB_PER_S",
    help="A body slower than this (after --body-rate-grace seconds) is cut with 408.",
)
@click.option(
    "--body-rate-grace",
    type=click.FloatRange(0, 3600),
    default=DEFAULTS.body_rate_grace,
    show_default=True,
    help="Seconds before --min-body-rate applies.",
)
@click.option(
    "--key-mib-per-day",
    type=click.IntRange(1, 1 << 30),
    default=DEFAULTS.key_bytes_per_day // MIB,
    show_default=True,
    help="New data stored per probe key a day; over it, 429.",
)
@click.option(
    "--client-mib-per-day",
    type=click.IntRange(1, 1 << 30),
    default=DEFAULTS.client_bytes_per_day // MIB,
    show_default=True,
    help="New data stored per client (IPv4 address or IPv6 /64) a day; over it, 429.",
)
@click.option(
    "--new-keys-per-client-hour",
    type=click.IntRange(1, 1_000_000),
    default=DEFAULTS.new_keys_per_client_hour,
    show_default=True,
    help="Probe keys new to this collector that one client may bring in an hour.",
)
@click.option(
    "--new-keys-per-hour",
    type=click.IntRange(1, 100_000_000),
    default=DEFAULTS.new_keys_per_hour,
    show_default=True,
    help="Probe keys new to this collector in an hour, all clients together.",
)
@click.option(
    "--min-free-mib",
    type=click.IntRange(0, 1 << 30),
    default=DEFAULTS.min_free_bytes // MIB,
    show_default=True,
    help="Refuse uploads (507) when the data filesystem has less free space than this...",
)
@click.option(
    "--min-free-percent",
    type=click.FloatRange(0, 100),
    default=DEFAULTS.min_free_percent,
    show_default=True,
    help="...or less than this share of its size free.",
)
@click.option(
    "--max-connections",
    type=click.IntRange(1, 100_000),
    default=DEFAULTS.max_connections,
    show_default=True,
)
@click.option(
    "--max-connections-per-address",
    type=click.IntRange(1, 100_000),
    default=DEFAULTS.max_connections_per_address,
    show_default=True,
    help="Open connections from one address (an IPv6 /64 is one); raise it for "
    "many probes behind one NAT.",
)
@click.option(
    "--address-rate",
    type=click.FloatRange(0.001),
    default=DEFAULTS.address_rate,
    show_default=True,
    help="Upload requests per second per address.",
)
@click.option(
    "--address-burst", type=click.FloatRange(1), default=DEFAULTS.address_burst, show_default=True
)
@click.option(
    "--key-rate",
    type=click.FloatRange(0.001),
    default=DEFAULTS.key_rate,
    show_default=True,
    help="New lines per second per probe key.",
)
@click.option(
    "--key-burst", type=click.FloatRange(1), default=DEFAULTS.key_burst, show_default=True
)
@click.option(
    "--max-body-mib",
    type=click.IntRange(1, 1024),
    default=DEFAULTS.max_body_bytes // MIB,
    show_default=True,
)
@click.option(
    "--body-timeout",
    type=click.FloatRange(0.1, 3600),
    default=DEFAULTS.body_timeout,
    show_default=True,
    help="Seconds to receive a request body.",
)
@click.option(
    "--header-timeout",
    type=click.FloatRange(0.1, 3600),
    default=DEFAULTS.header_timeout,
    show_default=True,
    help="Seconds for a new connection to send its request.",
)
@click.option(
    "--check-workers",
    type=click.IntRange(0, 64),
    default=2,
    show_default=True,
    help="Processes checking signatures (0: a thread of the server).",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=0),
    default=0,
    help="Stop after this many seconds (0: never).",
)
@click.option("--targets-feed", type=click.Path(dir_okay=False), help="Also serve this signed targets feed (probe targets sign) at GET /targets.")
@click.option("-q", "--quiet", is_flag=True, help="Log only problems, not every upload.")
def serve(
    listen,
    data_dir,
    trusted_keys,
    trusted_control_keys,
    proxies,
    max_concurrent,
    max_uploads_per_client,
    min_body_rate,
    body_rate_grace,
    key_mib_per_day,
    client_mib_per_day,
    new_keys_per_client_hour,
    new_keys_per_hour,
    min_free_mib,
    min_free_percent,
    max_connections,
    max_connections_per_address,
    address_rate,
    address_burst,
    key_rate,
    key_burst,
    max_body_mib,
    body_timeout,
    header_timeout,
    check_workers,
    duration,
    targets_feed,
    quiet,
) -> None:
    """Serve POST /v1/measurements and GET /health (see docs/upload-protocol.md)."""
    from probe.collector.lines import LinePolicy
    from probe.collector.server import Collector
    from probe.collector.server import serve as serve_collector
    from probe.collector.store import Store

    host, port = parse_listen(listen)
    try:
        trusted_proxies = parse_networks(proxies)
    except ValueError as error:
        raise click.BadParameter(str(error)[:200], param_hint="--trusted-proxy") from None
    policy = LinePolicy(
        _trusted(trusted_keys, "--trusted-keys"),
        _trusted(trusted_control_keys, "--trusted-control-keys"),
    )
    limits = Limits(
        max_body_bytes=max_body_mib * MIB,
        max_concurrent_uploads=max_concurrent,
        max_uploads_per_client=max_uploads_per_client,
        min_body_rate=min_body_rate * KIB,
        body_rate_grace=body_rate_grace,
        key_bytes_per_day=key_mib_per_day * MIB,
        client_bytes_per_day=client_mib_per_day * MIB,
        new_keys_per_client_hour=new_keys_per_client_hour,
        new_keys_per_hour=new_keys_per_hour,
        min_free_bytes=min_free_mib * MIB,
        min_free_percent=min_free_percent,
        max_connections=max_connections,
        max_connections_per_address=max_connections_per_address,
        header_timeout=header_timeout,
        body_timeout=body_timeout,
        address_rate=address_rate,
        address_burst=address_burst,
        key_rate=key_rate,
        key_burst=key_burst,
    )
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("probe.collector").setLevel(logging.WARNING if quiet else logging.INFO)
    store = Store(data_dir)
    try:
        recovery = store.open()
    except OSError as error:
        click.echo(
            f"probe collector: cannot use --data {data_dir}: {error.strerror or error}", err=True
        )
        sys.exit(2)
    message = f"store {data_dir}: {recovery.lines} line(s) in {recovery.files} run file(s)"
    if recovery.torn_files:
        message += (
            f"; cut {recovery.torn_bytes} byte(s) of unacknowledged torn tail from "
            f"{', '.join(recovery.torn_files)}"
        )
    if recovery.unreadable_lines:
        message += f"; {recovery.unreadable_lines} unreadable line(s) left in place"
    click.echo(message, err=True)
    if policy.trusted_keys is not None:
        click.echo(f"accepting only the {len(policy.trusted_keys)} trusted probe key(s)", err=True)
    else:
        click.echo(
            "warning: no --trusted-keys: any probe key may upload (within the quotas)", err=True
        )
    app = Collector(store, policy, limits, check_workers=check_workers, proxies=trusted_proxies)
    app.targets_feed = targets_feed

    async def go() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for number in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(number, stop.set)
        if duration:
            loop.call_later(duration, stop.set)
        await serve_collector(
            app,
            host,
            port,
            stop=stop,
            ready=lambda url: click.echo(f"collector listening on {url}", err=True),
        )

    try:
        asyncio.run(go())
    except OSError as error:
        click.echo(
            f"probe collector: cannot listen on {listen}: {error.strerror or error}", err=True
        )
        sys.exit(1)
