"""The ``probe`` command line: parse, call, print. No measuring logic lives here.

Exit codes: 0 the command completed (whatever it found), 2 bad usage or
configuration (nothing was measured), 1 the run itself failed or was
interrupted (a partial report is still written and marked incomplete).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import importlib
import ipaddress
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import click

from probe import __version__
from probe.aggregate.cli import aggregate
from probe.bogons import parse_networks
from probe.collector.cli import collector
from probe.display import Display, iter_summary_json
from probe.geo import GeoDatabase, GeoDatabaseError
from probe.spool_cli import status, upload
from probe.trace_cli import replay

# Each command imports the subsystem it drives when it runs: the measuring stack
# (aiohttp, dnspython, cryptography, yaml) takes most of a second to import, which
# `probe --help` and the quick commands should not pay.

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def fail_usage(message: str) -> NoReturn:
    click.echo(f"probe: {message}", err=True)
    sys.exit(EXIT_USAGE)


def _say(line: str) -> None:
    click.echo(line, err=True)


def parse_hostport(
    value: str, default_port: int, what: str, allow_any_port: bool = False
) -> tuple[str, int]:
    """'1.2.3.4', '1.2.3.4:53', '[2001:db8::1]:53' or '2001:db8::1' -> (address, port)."""
    host, port_text = value, str(default_port)
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        if rest.startswith(":"):
            port_text = rest[1:]
    elif value.count(":") == 1:
        host, port_text = value.split(":")
    try:
        ipaddress.ip_address(host)
        port = int(port_text)
        if not (0 if allow_any_port else 1) <= port < 65536:
            raise ValueError
    except ValueError:
        fail_usage(f"{what} {value!r} is not an IP address with an optional port (1-65535)")
    return host, int(port)


def load_targets_or_exit(path: str | None):
    from probe.targets import TargetsError, default_targets_path, load_targets

    try:
        return load_targets(path or default_targets_path())
    except TargetsError as exc:
        fail_usage(str(exc))


def active_targets_or_exit(path: str | None, max_age_days: float | None = None):
    """An explicit file; else the copy `probe targets update` keeps (its age said on
    stderr, a warning past ``max_age_days``); else the bundled targets."""
    if path:
        return load_targets_or_exit(path)
    from probe.targets_feed import FeedError, FeedStore, active_feed

    try:
        active = active_feed(FeedStore.default())
    except FeedError as exc:
        _say(f"probe: warning: the updated targets cannot be used ({exc}); using the bundled ones")
        active = None
    if active is None:
        return load_targets_or_exit(None)
    if active.warning:
        _say(f"probe: warning: {active.warning}")
    now = datetime.datetime.now(datetime.UTC)
    age = active.feed.age_days(now)
    _say(f"targets: feed version {active.feed.version} from {active.pin.url}, signed "
         f"{active.feed.signed_at:%Y-%m-%d} ({age:.0f} days ago)")
    if max_age_days is not None and age > max_age_days:
        _say(f"probe: warning: the targets are {age:.0f} days old (over --max-targets-age "
             f"{max_age_days:g}); run `probe targets update`")
    return active.feed.targets


class _ProbeGroup(click.Group):
    """``probe``'s root group: ``probe lab`` is loaded by name when it is asked for.

    The product never imports the censorship lab (it needs root, scapy and
    NetfilterQueue, the ``lab`` extra): the lab plugs its commands in here.
    """

    LAB = "lab"

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), self.LAB})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name == self.LAB and cmd_name not in self.commands:
            with _optional_part():
                self.add_command(importlib.import_module("probe.lab.cli").lab)
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> object:
        with _optional_part():
            return super().invoke(ctx)


# The optional parts of probe (setup.cfg's extras), by the module each brings.
EXTRA_OF_MODULE = {"duckdb": "aggregate", "pyarrow": "aggregate", "pyspark": "spark",
                   "scapy": "lab", "netfilterqueue": "lab"}


@contextlib.contextmanager
def _optional_part() -> Iterator[None]:
    """A command that needs an extra nobody installed says which, in one line."""
    try:
        yield
    except ModuleNotFoundError as error:
        module = (error.name or "").split(".")[0]
        extra = EXTRA_OF_MODULE.get(module.lower())
        if extra is None:
            raise
        raise click.ClickException(
            f"this command needs probe's optional part {extra!r} ({module} is not "
            f"installed): pip install 'probe[{extra}]'") from None


@click.group(cls=_ProbeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="probe")
@click.option("-v", "--verbose", is_flag=True, help="Log what happens (to stderr).")
def main(verbose: bool) -> None:
    """probe: measure whether messaging services are blocked from your network."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


# --------------------------------------------------------------------------- #
# probe run                                                                    #
# --------------------------------------------------------------------------- #


@main.command()
@click.option("--targets", "targets_path", metavar="FILE", help="Targets file (default: bundled targets.yaml).")
@click.option("--service", "services", multiple=True, metavar="ID", help="Measure only this service (repeatable); the baseline is always measured.")
@click.option("--resolver", metavar="IP[:PORT]", help="DNS resolver for direct queries (default: the system's first nameserver).")
@click.option("--no-system-resolver", is_flag=True, help="Only query --resolver directly; skip the system resolver (getaddrinfo).")
@click.option("--control", "control_urls", multiple=True, metavar="URL", help="Control helper URL (repeatable: the first good answer wins).")
@click.option("--control-protocol", type=click.Choice(["probe", "oohelperd"]), default="probe", show_default=True, help="What the --control URLs speak: probe's own helper (signed), or an OONI web_connectivity test helper such as https://0.th.ooni.org/ (DNS, TCP, TLS on 443 and HTTP status only; unsigned; see docs/control.md).")
@click.option("--control-file", type=click.Path(dir_okay=False), help="A recorded control response to compare with, offline.")
@click.option("--control-timeout", type=click.FloatRange(1, 600), default=60.0, show_default=True)
@click.option("--control-token", envvar="PROBE_CONTROL_TOKEN", metavar="TOKEN", help="The token your NGO gave you for its control helper (env PROBE_CONTROL_TOKEN); without it, control requests are signed with your probe key.")
@click.option("--ca-bundle", type=click.Path(dir_okay=False), help="PEM bundle to trust instead of the system store.")
@click.option("--timeout", type=click.FloatRange(0.1, 120), default=10.0, show_default=True, help="Seconds allowed for each step.")
@click.option("--concurrency", type=click.IntRange(1, 4096), default=256, show_default=True, help="Network operations in flight (a pending connect costs a socket, not bandwidth).")
@click.option("--rate", type=click.FloatRange(0, 10000), default=30.0, show_default=True, help="Handshakes and requests started per second (0: no limit; TCP connects are never paced); keeps a slow link from being saturated by the probe itself.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="reports", show_default=True, help="Folder for the report.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary instead of tables.")
@click.option("--key", "key_path", type=click.Path(dir_okay=False), help="Signing key file (default: your probe key, created on first use).")
@click.option("--ephemeral-key", is_flag=True, help="Sign this run with a throw-away key (reports cannot be linked to each other).")
@click.option("--record", "record_path", type=click.Path(dir_okay=False), help="Also record every network interaction to this trace (.jsonl or .jsonl.gz).")
@click.option("--asn-db", "asn_dbs", multiple=True, type=click.Path(dir_okay=False), help="Offline MMDB database(s) for your ASN and country (repeatable: ASN file and country file).")
@click.option("--upload", "upload_url", metavar="URL", help="Upload the report to this collector after the run (what fails stays pending: `probe upload`).")
@click.option("--show-ip", is_flag=True, help="Allow your public address on the terminal and in logs (never in reports).")
@click.option("--max-targets-age", type=click.FloatRange(min=0), default=30, show_default=True, metavar="DAYS", help="Warn when the updated targets were signed longer ago than this.")
def run(targets_path, services, resolver, no_system_resolver, control_urls, control_protocol, control_file,
        control_timeout,
        control_token, ca_bundle, timeout, concurrency, rate, out_dir, as_json, key_path, ephemeral_key, record_path,
        asn_dbs, upload_url, show_ip, max_targets_age) -> None:
    """Measure every endpoint of the targets file and write a report."""
    from probe.app import (
        RunConfig,
        RunFailed,
        RunUsageError,
        fit_concurrency_to_descriptors,
        run_probe,
        scrub_streams,
    )
    from probe.certificates import parse_pem_bundle
    from probe.net.dns import system_nameserver
    from probe.runner import RunOptions
    from probe.session import ControlConfig
    from probe.targets import TargetsError

    scrubbing = scrub_streams(show_ip)  # before anything prints, usage errors included
    geo = open_geo_or_exit(asn_dbs)
    if upload_url and not upload_url.startswith(("http://", "https://")):
        fail_usage(f"--upload {upload_url!r}: expected an http:// or https:// URL")
    targets = active_targets_or_exit(targets_path, max_targets_age)
    if key_path and ephemeral_key:
        fail_usage("--key and --ephemeral-key exclude each other")
    key = signing_key_or_exit(key_path, ephemeral_key)
    if services:
        try:
            targets = targets.select(services)
        except TargetsError as exc:
            fail_usage(str(exc))
    trust_pem = targets.ca_bundle_pem
    if ca_bundle:
        try:
            trust_pem = Path(ca_bundle).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            fail_usage(f"--ca-bundle {ca_bundle}: cannot read ({getattr(exc, 'strerror', None) or exc})")
        if not parse_pem_bundle(trust_pem):
            fail_usage(f"--ca-bundle {ca_bundle}: no PEM certificate in the file")
    if control_file and not Path(control_file).is_file():
        fail_usage(f"--control-file {control_file}: no such file")
    for url in control_urls:
        if not url.startswith(("http://", "https://")):
            fail_usage(f"--control {url!r}: expected an http:// or https:// URL")
    if control_protocol == "oohelperd" and not control_urls:
        fail_usage("--control-protocol oohelperd needs --control URL (an OONI test helper, "
                   "e.g. https://0.th.ooni.org/)")
    if control_token is not None:
        from probe.control.auth import ControlCredentials

        try:
            ControlCredentials(token=control_token)
        except ValueError as exc:
            fail_usage(f"--control-token: {exc}")
    resolver_address = parse_hostport(resolver, 53, "--resolver") if resolver else system_nameserver()
    concurrency = fit_concurrency_to_descriptors(concurrency, say=_say)
    if no_system_resolver and resolver_address is None:
        fail_usage("--no-system-resolver needs --resolver (there would be no DNS at all)")
    options = RunOptions(
        resolver=resolver_address,
        use_system_resolver=not no_system_resolver,
        timeout=timeout,
        concurrency=concurrency,
        rate=rate or None,
        dns_linger=min(1.0, timeout / 4),
        trust_pem=trust_pem,
        routable=parse_networks(getattr(targets, "routable_networks", ())),
        started_at=datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0),
    )
    config = RunConfig(
        targets=targets,
        options=options,
        control=ControlConfig(tuple(control_urls), Path(control_file) if control_file else None,
                              control_timeout, protocol=control_protocol),
        out_dir=out_dir,
        key=key,
        scrubbing=scrubbing,
        geo=geo,
        record_path=record_path,
        upload_url=upload_url,
        control_token=control_token,
    )
    display = Display(targets, enabled=not as_json and sys.stderr.isatty())
    try:
        result = run_probe(config, display, say=_say)
    except RunUsageError as exc:
        fail_usage(str(exc))
    except RunFailed as exc:
        click.echo(f"probe: {exc}", err=True)
        sys.exit(EXIT_FAILED)
    if as_json:
        # one row per line (terminal scrubbing works line by line), printed row by row:
        # a 10,000-endpoint summary is never one 3 MB string
        for text in iter_summary_json(result.outcome, result.report_path):
            click.echo(text)
    else:
        display.print_summary(result.outcome, result.report_path)
    if not result.complete:
        if result.report_path is None:
            click.echo("probe: interrupted before any measurement was complete; no report written", err=True)
        else:
            click.echo(f"probe: interrupted; the partial report is marked incomplete: {result.report_path}", err=True)
        sys.exit(EXIT_FAILED)


def open_geo_or_exit(paths):
    if not paths:
        return None
    try:
        return GeoDatabase.open(*paths)
    except GeoDatabaseError as exc:
        fail_usage(str(exc))


def signing_key_or_exit(key_path: str | None, ephemeral: bool, control: bool = False):
    from probe.report import keys

    try:
        if ephemeral:
            return keys.generate_ephemeral()
        if control:
            return keys.load_or_create_control_key(key_path)
        return keys.load_or_create_key(key_path)
    except (keys.KeyFileError, keys.KeyFormatError) as exc:
        fail_usage(str(exc))


# --------------------------------------------------------------------------- #
# probe targets                                                                #
# --------------------------------------------------------------------------- #


@main.group()
def targets() -> None:
    """Check or list a targets file."""


@targets.command("check")
@click.argument("file", required=False)
def targets_check(file: str | None) -> None:
    """Validate a targets file (default: the updated copy, else the bundled one)."""
    loaded = active_targets_or_exit(file)
    count = len(loaded.endpoints())
    click.echo(f"{loaded.source}: ok, {len(loaded.services)} services, {count} endpoints")


@targets.command("list")
@click.argument("file", required=False)
@click.option("--sources", "show_sources", is_flag=True,
              help="Show each endpoint's source and the day it was checked.")
@click.option("--stale-days", type=click.IntRange(min=0), default=365, show_default=True,
              help="With --sources: flag sources checked more than this many days ago.")
def targets_list(file: str | None, show_sources: bool, stale_days: int) -> None:
    """Show the services of a targets file and their endpoint counts."""
    loaded = active_targets_or_exit(file)
    if show_sources:
        _echo_sources(loaded, stale_days)
        return
    for service in loaded.services:
        flag = " (baseline)" if service.baseline else ""
        click.echo(f"{service.id:<22} {len(service.endpoints):>4} endpoints  {service.name}{flag}")


def _echo_sources(loaded, stale_days: int) -> None:
    """One line per endpoint and source: id, checked day, reference; old ones flagged."""
    import datetime

    today = datetime.date.today()
    endpoints = loaded.endpoints()
    width = max((len(e.id) for e in endpoints), default=0)
    unsourced = stale = 0
    for endpoint in endpoints:
        if not endpoint.sources:
            unsourced += 1
            click.echo(f"{endpoint.id:<{width}}  {'-':<10}  NO SOURCE")
        for index, source in enumerate(endpoint.sources):
            name = endpoint.id if index == 0 else ""
            age = source.age_days(today)
            flag = ""
            if age > stale_days:
                stale += 1
                flag = f"  STALE: checked {age} days ago"
            click.echo(f"{name:<{width}}  {source.checked}  {source.ref}{flag}")
    click.echo(
        f"{len(endpoints)} endpoints, {unsourced} without a source, "
        f"{stale} sources checked more than {stale_days} days ago"
    )


@targets.command("sign")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--key", "key_path", required=True, type=click.Path(dir_okay=False), help="The NGO's feed signing key (an Ed25519 PEM, as `probe keygen --key` makes).")
@click.option("--version", "version", type=int, metavar="N", help="The feed's version, higher than every earlier one (default: seconds since 1970, or one more than --out's).")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), help="Where to write the signed feed (default: FILE with .feed.json).")
def targets_sign(file, key_path, version, out_path) -> None:
    """Sign a targets file into a feed that volunteers' `probe targets update` accepts."""
    from probe.report import keys
    from probe.targets import _base_dir
    from probe.targets_feed import FeedError, sign_feed, write_atomic

    try:
        key = keys.load_key(key_path)
    except keys.KeyFileError as exc:
        fail_usage(str(exc))
    try:
        text = Path(file).read_bytes().decode("utf-8-sig")
    except OSError as exc:
        fail_usage(f"{file}: cannot read it ({exc.strerror})")
    except UnicodeDecodeError:
        fail_usage(f"{file}: is not UTF-8 text; save it as UTF-8")
    out = Path(out_path) if out_path else Path(file).with_suffix(".feed.json")
    previous = _previous_feed_version(out, key.public_key_b64)
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    if version is None:
        version = max(int(now.timestamp()), (previous or 0) + 1)
    elif previous is not None and version <= previous:
        fail_usage(f"--version {version}: {out} already holds version {previous}; volunteers "
                   "refuse a version that is not higher")
    try:
        raw = sign_feed(text, file, _base_dir(Path(file)), key, version, now)
        write_atomic(out, raw, mode=0o644)  # served by a web server: others read it
    except FeedError as exc:
        fail_usage(str(exc))
    click.echo(f"{out}: feed version {version}, signed by {key.key_id}")
    click.echo(f"volunteers pin this key: probe targets update --from URL --feed-key {key.public_key_b64}")


def _previous_feed_version(path: Path, public_key: str) -> int | None:
    from probe.targets_feed import FeedError, check_feed

    try:
        return check_feed(path.read_bytes(), public_key, str(path)).version
    except (OSError, FeedError):
        return None


@targets.command("update")
@click.option("--from", "url", metavar="URL", help="The feed's URL (remembered; default: the one used last).")
@click.option("--feed-key", metavar="KEY", help="The NGO's feed key, base64 (pinned on first use).")
@click.option("--replace-feed-key", is_flag=True, help="Accept a --feed-key other than the pinned one (your NGO changed keys).")
@click.option("--ca-bundle", type=click.Path(dir_okay=False), help="PEM bundle to trust for the feed's HTTPS instead of the system store.")
@click.option("--timeout", type=click.FloatRange(1, 600), default=60.0, show_default=True, help="Seconds for the whole download.")
def targets_update(url, feed_key, replace_feed_key, ca_bundle, timeout) -> None:
    """Fetch the NGO's signed targets feed, check it, and keep it for `probe run`."""
    from probe.net.live import LiveNetwork
    from probe.targets_feed import FeedError, FeedStore, resolve_pin, update

    store = FeedStore.default()
    trust_pem = None
    if ca_bundle:
        try:
            trust_pem = Path(ca_bundle).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            fail_usage(f"--ca-bundle {ca_bundle}: cannot read ({getattr(exc, 'strerror', None) or exc})")
    try:
        pin = resolve_pin(store, url, feed_key, replace_feed_key)
    except FeedError as exc:
        fail_usage(str(exc))
    bundled = load_targets_or_exit(None)

    async def go():
        network = LiveNetwork()
        try:
            return await update(store, network, pin, timeout, trust_pem, bundled)
        finally:
            await network.aclose()

    try:
        done = asyncio.run(go())
    except FeedError as exc:
        click.echo(f"probe: targets not updated: {exc}", err=True)
        sys.exit(EXIT_FAILED)
    feed = done.current
    if not done.replaced:
        click.echo(f"targets: up to date (feed version {feed.version}, signed {feed.signed_at:%Y-%m-%d})")
        return
    before = f"version {done.previous.version}" if done.previous else "the bundled targets"
    click.echo(f"targets: updated from {before} to feed version {feed.version} "
               f"(signed {feed.signed_at:%Y-%m-%d}, {len(feed.targets.services)} services, "
               f"{len(feed.targets.endpoints())} endpoints)")
    for line in done.changes or ["no service or endpoint changed"]:
        click.echo(f"  {line}")


# --------------------------------------------------------------------------- #
# probe control                                                                #
# --------------------------------------------------------------------------- #


@main.group()
def control() -> None:
    """Run the control helper (deploy it on an uncensored network)."""


@control.command("serve")
@click.option("--listen", default="127.0.0.1:8780", show_default=True, metavar="HOST:PORT")
@click.option("--resolver", metavar="IP[:PORT]", help="Honest resolver (default: the system's).")
@click.option("--max-concurrent", type=click.IntRange(1, 256), default=4, show_default=True)
@click.option("--allow-network", "allow", multiple=True, metavar="CIDR", help="Treat this network as public (test labs only).")
@click.option("--duration", type=click.FloatRange(min=0), default=0, help="Stop after this many seconds (0: never).")
@click.option("--key", "key_path", type=click.Path(dir_okay=False), help="The helper's signing key (default: its own key, created on first use).")
@click.option("--udp-echo", "udp_echo", multiple=True, metavar="PORTS", help="Also serve a rate-limited UDP echo on these ports (e.g. 3478 or 443,596-599): the probes' reference UDP flow.")
@click.option("--trusted-keys", "trusted_keys", type=click.Path(dir_okay=False), help="Measure for the probes whose keys this file lists (the collector's trusted-keys file).")
@click.option("--tokens", "tokens_path", type=click.Path(dir_okay=False), help="Measure for the holders of these tokens (lines 'NAME sha256:HEX', from `probe control token`).")
@click.option("--open", "open_access", is_flag=True, help="Also measure for anonymous requests (a lab, or a helper nobody else can reach).")
@click.option("--trusted-proxy", "proxies", multiple=True, metavar="CIDR", help="Your reverse proxy's address(es): requests from it are counted by the last X-Forwarded-For address.")
@click.option("--targets", "targets_paths", multiple=True, metavar="FILE", help="Measure only the endpoints of these targets files (repeatable; default: the bundled targets.yaml).")
def control_serve(listen, resolver, max_concurrent, allow, duration, key_path, udp_echo,
                  trusted_keys, tokens_path, open_access, proxies, targets_paths) -> None:
    """Serve POST /measure for probes, GET / for health checks and GET /info."""
    from probe.control import auth
    from probe.control import udp_echo as echo
    from probe.control.server import ControlHelper, serve
    from probe.net.dns import system_nameserver
    from probe.report.verify import TrustedKeysError, load_trusted_keys

    if not (trusted_keys or tokens_path or open_access):
        fail_usage("say whom this helper measures for: --trusted-keys FILE (your volunteers' "
                   "probe keys), --tokens FILE, or --open (anyone: labs only)")
    try:
        access = auth.Access(
            load_trusted_keys(trusted_keys) if trusted_keys else None,
            auth.load_tokens(tokens_path) if tokens_path else None, open_access)
    except (TrustedKeysError, auth.TokensFileError) as exc:
        fail_usage(str(exc))

    try:
        echo_ports = echo.parse_ports(udp_echo)
    except ValueError as exc:
        fail_usage(f"--udp-echo: {exc}")

    host, port = parse_hostport(listen, 8780, "--listen", allow_any_port=True)
    resolver_address = parse_hostport(resolver, 53, "--resolver") if resolver else system_nameserver()
    try:
        routable = parse_networks(allow)
    except ValueError as exc:
        fail_usage(f"--allow-network: {exc}")
    try:
        trusted_proxies = parse_networks(proxies)
    except ValueError as exc:
        fail_usage(f"--trusted-proxy: {exc}")
    scope = [e for path in (targets_paths or (None,)) for e in load_targets_or_exit(path).endpoints()]
    key = signing_key_or_exit(key_path, False, control=True)
    helper = ControlHelper(resolver_address, max_concurrent, routable=routable, key=key,
                           udp_echo_ports=echo_ports, access=access,
                           trusted_proxies=trusted_proxies, targets=scope)
    click.echo(f"control helper key: {key.public_key_b64} (id {key.key_id})", err=True)

    async def go():
        stop = asyncio.Event()
        if duration:
            asyncio.get_running_loop().call_later(duration, stop.set)
        await serve(helper, host, port, ready=lambda m: click.echo(m, err=True), stop=stop)

    try:
        asyncio.run(go())
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        where = listen if not echo_ports else f"{listen} or UDP port(s) {' '.join(map(str, echo_ports))}"
        click.echo(f"probe: cannot listen on {where}: {exc.strerror or exc}", err=True)
        sys.exit(EXIT_FAILED)


@control.command("token")
@click.argument("name")
def control_token(name) -> None:
    """Make a token for one volunteer: give them the token, add the line to --tokens FILE."""
    from probe.control import auth

    try:
        line = auth.tokens_line(name, auth.new_token())
    except ValueError as exc:
        fail_usage(str(exc))
    click.echo(f"token (give it to {name}; it is shown only once): {line.token}")
    click.echo(f"line for the helper's --tokens file:\n{line.entry}")


# --------------------------------------------------------------------------- #
# keys and verification                                                        #
# --------------------------------------------------------------------------- #


@main.command()
@click.option("--key", "key_path", type=click.Path(dir_okay=False), help="Where to create it (default: your config folder).")
def keygen(key_path) -> None:
    """Create your probe's signing key (never overwrites an existing one)."""
    from probe.report import keys

    try:
        key = keys.create_key(key_path)
    except (keys.KeyFileError, keys.KeyFormatError) as exc:
        fail_usage(str(exc))
    click.echo(f"created {key.path}")
    click.echo(f"public key: {key.public_key_b64}\nkey id:     {key.key_id}")


@main.group()
def key() -> None:
    """Show your signing key."""


@key.command("show")
@click.option("--key", "key_path", type=click.Path(dir_okay=False), help="Another key file.")
@click.option("--control", "control", is_flag=True, help="The control helper's key instead.")
def key_show(key_path, control) -> None:
    """Print the public key and its short fingerprint (creating the key if needed)."""
    loaded = signing_key_or_exit(key_path, False, control=control)
    click.echo(f"public key: {loaded.public_key_b64}\nkey id:     {loaded.key_id}\nfile:       {loaded.path}")


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--trusted-keys", type=click.Path(dir_okay=False), help="Only accept reports signed by these keys (one per line).")
@click.option("--trusted-control-keys", type=click.Path(dir_okay=False), help="Control helpers whose attestations you trust.")
@click.option("--require-complete", is_flag=True, help="Fail runs whose last line is not sealed (tail cut off).")
def verify(files, trusted_keys, trusted_control_keys, require_complete) -> None:
    """Check every line's signature and the chain of each run; exit 1 if any fails."""
    from probe.report.verify import verify_command

    sys.exit(verify_command(list(files), trusted_keys, trusted_control_keys,
                            require_end=require_complete))


# Subcommands that live with their subsystem (``probe lab``: see _ProbeGroup).
for _command in (replay, upload, status, collector, aggregate):
    main.add_command(_command)
