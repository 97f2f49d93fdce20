"""The application behind ``probe run``: one function, :func:`run_probe`, from a typed
run configuration to a written report.

It stages each service's result on disk, records the trace when asked, writes
the signed report, scrubs the trace of the volunteer's address and uploads;
:func:`scrub_streams` installs the scrubbing of the terminal and the logs before
anything is printed. It refuses to parse options or to print on its own: what
the volunteer should read goes through the ``say`` callback it is given, the
summary is the caller's to print from the :class:`RunResult`, and what stops a
run is raised as :class:`RunUsageError` (nothing was measured) or
:class:`RunFailed` (the run itself failed).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from probe.control.auth import ControlCredentials
from probe.geo import GeoDatabase
from probe.net.live import LiveNetwork, preload_in_background
from probe.net.network import Network
from probe.observations import EndpointObservation
from probe.report import scrub
from probe.report.keys import SigningKey
from probe.report.measurements import RunContext, write_run_report
from probe.report.staging import StagedResults
from probe.report.writer import ReportWriteError
from probe.runner import RunOptions
from probe.session import ControlConfig, RunOutcome, stream
from probe.spool import UploadSummary, upload_pending
from probe.targets import Targets
from probe.trace import (
    RecordingNetwork,
    RunInfo,
    TraceError,
    finish_recording,
    scrub_trace_file,
    start_recording,
)

Say = Callable[[str], None]


class RunUsageError(Exception):
    """The configuration cannot be used (nothing was measured): exit code 2."""


class RunFailed(Exception):
    """The run itself failed (nothing usable was written): exit code 1."""


@dataclass(frozen=True)
class StreamScrubbing:
    """The host's own addresses, and the filter that scrubs the volunteer's public
    address from logs, stdout and stderr (None: ``--show-ip``)."""

    local_addresses: tuple[str, ...]
    log_filter: scrub.ScrubbingLogFilter | None


def scrub_streams(show_ip: bool) -> StreamScrubbing:
    """Scrub stdout, stderr and the logs from now on, unless ``show_ip``.

    Call it before anything prints: rich and click capture the streams, and a
    usage error may quote an address of the volunteer.
    """
    local = tuple(scrub.interface_addresses())
    if show_ip:
        return StreamScrubbing(local, None)
    log_filter = scrub.install_log_scrubbing(local)
    sys.stderr = scrub.ScrubbingStream(sys.stderr, log_filter)
    sys.stdout = scrub.ScrubbingStream(sys.stdout, log_filter)
    return StreamScrubbing(local, log_filter)


def fit_concurrency_to_descriptors(concurrency: int, say: Say) -> int:
    """Raise the soft file-descriptor limit as far as allowed, and keep the
    operations in flight (connections plus DNS queries, two budgets) under it:
    running out of descriptors would fail measurements for a local reason."""
    try:
        import resource  # POSIX only

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = 2 * concurrency + 128
        if soft != resource.RLIM_INFINITY and soft < wanted:
            target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    except (ImportError, ValueError, OSError):
        return concurrency  # not POSIX, or not allowed: keep the user's choice
    if soft == resource.RLIM_INFINITY:
        return concurrency
    fitted = max(1, min(concurrency, (soft - 128) // 2))
    if fitted < concurrency:
        say(f"probe: --concurrency {concurrency} lowered to {fitted} to stay within "
            f"the open-file limit ({soft})")
    return fitted


@dataclass(frozen=True)
class RunConfig:
    """Everything one run needs, checked: built by the command line from its options."""

    targets: Targets
    options: RunOptions
    control: ControlConfig
    out_dir: str  # as typed on the command line, which messages quote
    key: SigningKey
    scrubbing: StreamScrubbing
    geo: GeoDatabase | None = None
    record_path: str | None = None
    upload_url: str | None = None
    # How control requests are authenticated: the NGO's token when given, else a
    # signature by ``key`` (the report signing key) unless ``sign_control`` is off.
    control_token: str | None = field(default=None, repr=False)
    sign_control: bool = True

    def control_credentials(self) -> ControlCredentials:
        return ControlCredentials(self.key if self.sign_control else None, self.control_token)


@dataclass(frozen=True)
class RunResult:
    """What a run produced, for the caller to print."""

    outcome: RunOutcome
    report_path: Path | None  # None: no measurement, so no report was written
    interrupted: bool  # Ctrl-C reached the run (the report is marked incomplete)

    @property
    def complete(self) -> bool:
        return not self.interrupted and self.outcome.complete


class Progress(Protocol):
    """The terminal's progress display, open for the measuring part of the run."""

    def __enter__(self) -> Any: ...

    def __exit__(self, *exc: object) -> Any: ...

    def advance(self, observation: EndpointObservation) -> None: ...


class _NoProgress:
    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def advance(self, observation: EndpointObservation) -> None:
        return None


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr)


def run_probe(
    config: RunConfig, progress: Progress | None = None, say: Say = _to_stderr
) -> RunResult:
    """Measure, write the signed report, finish the trace and upload.

    ``progress`` is open while measuring and advanced once per endpoint. ``say``
    receives each line meant for the volunteer (warnings, where the trace is,
    the upload's result), in order, as it happens.
    """
    progress = progress if progress is not None else _NoProgress()
    log_filter = config.scrubbing.log_filter

    def learned_address(_: str) -> None:
        # a STUN answer's mapped address is the volunteer's: scrubbed from logs at once
        if log_filter is not None:
            log_filter.set_addresses(
                [*config.scrubbing.local_addresses, *staged.mapped_addresses])

    try:
        # each service's result waits on disk for the run's end, not in memory
        staged = StagedResults(Path(config.out_dir), on_mapped_address=learned_address)
    except ReportWriteError as exc:
        raise RunUsageError(f"--out {config.out_dir}: {exc.reason}") from None
    recording = _start_recording(config)
    interrupted = False
    measured = _Measured()
    with staged, progress:
        try:
            asyncio.run(measured.run(config, recording, staged, progress))
        except KeyboardInterrupt:
            interrupted = True
        except ReportWriteError as exc:
            raise RunFailed(str(exc)) from None
        outcome = measured.outcome
        if outcome is None:
            raise RunFailed("interrupted before anything was measured; no report written")
        addresses = scrub.volunteer_addresses(
            outcome.control.probe_address, config.scrubbing.local_addresses,
            config.options.routable, mapped=staged.mapped_addresses,
        )
        if config.scrubbing.log_filter is not None:
            config.scrubbing.log_filter.set_addresses(addresses)
        context = RunContext.build(outcome, addresses, config.geo)
        if not addresses:
            say("probe: warning: your public address is unknown (no control answered), "
                "so reports could not be checked for it; see docs/privacy.md")
        try:
            results = staged.in_order(s.id for s in config.targets.services)
            path, dropped = write_run_report(
                outcome, config.targets, Path(config.out_dir), config.key, context, results
            )
        except ReportWriteError as exc:
            raise RunFailed(str(exc)) from None
    for service, reason in dropped:
        say(f"probe: the {service} measurement was not written: {reason}")
    if recording is not None:
        try:
            trace_path = finish_recording(recording, outcome)
            scrub_trace_file(trace_path, addresses)
            say(f"trace: {trace_path}")
        except TraceError as exc:
            say(f"probe: the trace is incomplete: {exc}")
    if config.upload_url:
        summary = upload(config.out_dir, config.upload_url)
        if summary.drained:
            say(f"uploaded to {config.upload_url}")
        else:
            say(f"probe: upload incomplete ({summary.problem}); `probe upload` retries")
    return RunResult(outcome, path, interrupted)


def _start_recording(config: RunConfig) -> RecordingNetwork | None:
    if config.record_path is None:
        return None
    info = RunInfo.from_run(config.targets, config.options, config.control)
    try:
        return start_recording(
            config.record_path, info, inner=LiveNetwork(config.control_credentials()))
    except (TraceError, OSError) as exc:
        raise RunUsageError(f"--record {config.record_path}: {exc}") from None


class _Measured:
    """The outcome of the measuring part. On Ctrl-C the session concludes what was
    measured and returns an outcome, then ``asyncio.run`` raises KeyboardInterrupt
    anyway: the outcome is kept here, not lost with the return value."""

    def __init__(self) -> None:
        self.outcome: RunOutcome | None = None

    async def run(
        self,
        config: RunConfig,
        recording: RecordingNetwork | None,
        staged: StagedResults,
        progress: Progress,
    ) -> None:
        # HTTP and QUIC support load while the first DNS queries and connects wait
        preload = preload_in_background()
        credentials = config.control_credentials()
        network: Network = recording if recording is not None else LiveNetwork(credentials)
        info = recording.run_info if recording is not None else None
        control = replace(config.control, enrolment=credentials.enrolment())
        try:
            self.outcome = await stream(
                network, config.targets, config.options, control, staged.add,
                on_endpoint=progress.advance, report_id=info.report_id if info else None,
            )
        finally:
            await network.aclose()
            preload.join()


def upload(out_dir: str, url: str) -> UploadSummary:
    """Send the pending lines of ``out_dir`` to the collector at ``url``."""
    return asyncio.run(upload_pending(Path(out_dir), url))
