"""``probe upload`` and ``probe status``: click commands for the spool (probe/spool.py).

The collector URL comes from ``--url`` or, when it is not given, from the
``[upload]`` table of the probe's config file (``probe/config.toml`` in the
user's config folder, e.g. ``~/.config/probe/config.toml`` on Linux)::

    [upload]
    url = "https://collector.example.org"

Exit codes, as for the other commands: 0 done (for ``upload``: nothing left
pending), 1 something is left pending (``upload``), 2 bad usage.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tomllib
from pathlib import Path

import click
import platformdirs

# probe.spool (the uploader, with aiohttp) is imported when a command runs: it
# costs every `probe` invocation a fifth of a second otherwise.

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
CONFIG_NAME = "config.toml"


def default_config_path() -> Path:
    return Path(platformdirs.user_config_dir("probe")) / CONFIG_NAME


def configured_upload_url(path: Path | None = None) -> str | None:
    """``upload.url`` from the config file, None when there is no file or no such key.

    Raises click.UsageError when the file exists but cannot be used.
    """
    path = path or default_config_path()
    try:
        with open(path, "rb") as stream:
            config = tomllib.load(stream)
    except FileNotFoundError:
        return None
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise click.UsageError(f"{path}: cannot read the config file ({error})") from None
    upload = config.get("upload", {})
    url = upload.get("url") if isinstance(upload, dict) else None
    if url is not None and not isinstance(url, str):
        raise click.UsageError(f"{path}: upload.url must be a string like \"https://...\"")
    return url


def _check_url(url: str) -> str:
    if not url.startswith(("http://", "https://")):
        raise click.UsageError(f"collector URL {url!r}: expected an http:// or https:// URL")
    return url


@click.command("upload")
@click.option("--url", metavar="URL",
              help="Collector base URL (default: upload.url in the config file).")
@click.option("--reports", "reports_dir", type=click.Path(file_okay=False), default="reports",
              show_default=True, help="Folder of reports (as given to 'probe run --out').")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="Another config file.")
@click.option("--max-time", type=click.FloatRange(1, 86400), default=600, show_default=True,
              help="Give up retrying after this many seconds (what is left stays pending).")
def upload(url, reports_dir, config_path, max_time) -> None:
    """Send pending report lines to the collector; exit 0 once nothing is pending."""
    from probe.spool import RetryPolicy, SpoolBusy, upload_pending

    url = url or configured_upload_url(Path(config_path) if config_path else None)
    if not url:
        where = config_path or default_config_path()
        raise click.UsageError(f"no collector URL: pass --url or set upload.url in {where}")
    _check_url(url)
    if not Path(reports_dir).is_dir():
        click.echo(f"probe: {reports_dir}: no such folder; nothing to upload", err=True)
        sys.exit(EXIT_OK)
    try:
        policy = RetryPolicy(deadline=max_time)
        summary = asyncio.run(upload_pending(reports_dir, url, policy=policy))
    except SpoolBusy as error:
        click.echo(f"probe: {error}", err=True)
        sys.exit(EXIT_FAILED)
    except KeyboardInterrupt:
        click.echo("probe: upload interrupted; what was not confirmed is still pending", err=True)
        sys.exit(EXIT_FAILED)
    click.echo(
        f"uploaded: {summary.stored} stored, {summary.duplicate} already there, "
        f"{summary.rejected} rejected (quarantined); {summary.pending} pending"
    )
    if summary.rejected:
        click.echo(f"see 'probe status --reports {reports_dir}' for why lines were rejected")
    if not summary.drained:
        click.echo(f"probe: {summary.problem}", err=True)
        sys.exit(EXIT_FAILED)


@click.command("status")
@click.option("--reports", "reports_dir", type=click.Path(file_okay=False), default="reports",
              show_default=True, help="Folder of reports.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(reports_dir, as_json) -> None:
    """Show what is pending upload, per report, and which lines were quarantined."""
    from probe.spool import pending_status

    state = pending_status(reports_dir)
    if as_json:
        click.echo(json.dumps({
            "pending": state.pending,
            "reports": [vars(r) for r in state.reports],
            "quarantined": [vars(q) for q in state.quarantined],
        }))
        return
    if not state.reports:
        click.echo(f"no reports in {reports_dir}")
        return
    for report in state.reports:
        flags = f", {report.quarantined} quarantined" if report.quarantined else ""
        word = "pending" if report.pending else "uploaded"
        count = report.pending if report.pending else report.confirmed
        click.echo(f"{report.name}  {count:>5} of {report.lines} lines {word}{flags}")
    click.echo(f"{state.pending} line(s) pending in {len(state.reports)} report(s)")
    if state.quarantined:
        click.echo("\nquarantined (the collector refused them; they are not sent again):")
        for line in state.quarantined:
            uid = f" {line.measurement_uid}" if line.measurement_uid else ""
            click.echo(f"  {line.report} line {line.number}{uid}: {line.reason}")
