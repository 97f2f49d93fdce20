"""Service results between analysis and the report: staged on disk, not in memory.

A streamed run (``probe.session.stream``) hands on each service's result as
soon as its batch is analysed. The report cannot be written yet: the
volunteer's address (to scrub) and the run's own end (complete or not) are
known only when the run is over. So results wait here, one JSON line each, in
a temporary file of the report folder that is unlinked from the start: a crash
or kill -9 leaves nothing behind, and memory stays flat however large the run.

Lines are read back in the targets file's order, whatever the order they
were staged in. While staging, the addresses STUN servers said they saw us
from are noted (:attr:`StagedResults.mapped_addresses`): they are the
volunteer's public address, to scrub even when no control answered.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from probe.net.network import from_json, to_json
from probe.observations import ServiceResult
from probe.report.scrub import mapped_addresses_seen
from probe.report.writer import ReportWriteError, describe_os_error


class StagedResults:
    """Add results as they come; iterate them back in a given service order."""

    def __init__(
        self, directory: Path, on_mapped_address: Callable[[str], None] | None = None
    ) -> None:
        """``on_mapped_address`` is called with each new address a STUN server
        saw us from, as soon as its service is staged (e.g. to scrub logs)."""
        self.directory = Path(directory)
        self.mapped_addresses: list[str] = []
        self._on_mapped_address = on_mapped_address
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._file = tempfile.TemporaryFile(dir=self.directory, prefix=".staging-")
        except OSError as error:
            raise ReportWriteError(self.directory, describe_os_error(error)) from None
        self._where: dict[str, tuple[int, int]] = {}
        self._end = 0

    def add(self, result: ServiceResult) -> None:
        serialised = to_json(result)
        # only the probe's own answers: the control's observations (in its signed
        # attestation) carry the address STUN servers saw the *helper* from
        for address in mapped_addresses_seen([serialised["observations"]]):
            if address not in self.mapped_addresses:
                self.mapped_addresses.append(address)
                if self._on_mapped_address is not None:
                    self._on_mapped_address(address)
        data = json.dumps(serialised, separators=(",", ":")).encode("ascii") + b"\n"
        try:
            self._file.seek(self._end)
            self._file.write(data)
        except OSError as error:
            raise ReportWriteError(self.directory, describe_os_error(error)) from None
        self._where[result.service] = (self._end, len(data))
        self._end += len(data)

    def __len__(self) -> int:
        return len(self._where)

    def in_order(self, services: Iterable[str]) -> Iterator[ServiceResult]:
        """The staged results of ``services``, in that order (unknown ids are skipped)."""
        try:
            self._file.flush()
        except OSError as error:
            raise ReportWriteError(self.directory, describe_os_error(error)) from None
        for service in services:
            if service not in self._where:
                continue
            offset, size = self._where[service]
            self._file.seek(offset)
            yield from_json(ServiceResult, json.loads(self._file.read(size)))

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> StagedResults:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
