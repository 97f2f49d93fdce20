"""The targets file (targets.yaml) and its loader: which services and endpoints to measure.

`load_targets` turns a version-1 targets file into frozen, typed `Targets`; every problem
in the file becomes one `TargetsError` naming the file, the line and the field, with a
sentence that tells the volunteer what to fix. This module only reads local files: it never
resolves a name or opens a connection, and it never lets a YAML, OS or Unicode error escape.
The libyaml fast paths (composing and streaming) live in ``probe.targets_fast``; every rule
and every message lives here.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from probe import targets_fast
from probe.targets_fast import MAP_TAG as _MAP_TAG
from probe.targets_fast import SEQ_TAG as _SEQ_TAG
from probe.vocabulary import TCP_CHECKS, UDP_CHECKS, Check, Function, UdpPayload

__all__ = [
    "CHECKS",
    "FUNCTIONS",
    "PAYLOADS",
    "Endpoint",
    "Service",
    "Source",
    "Targets",
    "TargetsError",
    "default_targets_path",
    "load_targets",
    "parse_targets",
]

CHECKS = tuple(check.value for check in Check)
FUNCTIONS = tuple(function.value for function in Function)
PAYLOADS = tuple(payload.value for payload in UdpPayload)

SUPPORTED_VERSION = 1

# Checks that need a TLS server name; on a literal IP host the file must say which one.
_CHECKS_NEEDING_SNI = (Check.TLS, Check.HTTPS, Check.QUIC)

# The udp check's flow: enough datagrams to see a flow cut after its first few
# (Russian mobile DPI, 2025, cut unrecognised UDP flows after about a dozen), and
# short enough to stay within one step timeout.
DATAGRAMS_RANGE = (1, 500)
INTERVAL_RANGE = (0.01, 1.0)
DEFAULT_DATAGRAMS = 50
DEFAULT_INTERVAL = 0.1

_SERVICE_ID = re.compile(r"[a-z0-9_-]+\Z")
_ENDPOINT_ID = re.compile(r"[a-z0-9_.-]+\Z")
_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)\Z")
_PATH_FORBIDDEN = re.compile(r"[\s\x00-\x1f\x7f#]")
# A source: a file of a public repository at one commit, or a vendor's page.
_REPOSITORY_REF = re.compile(r"github:[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+ \S+@[0-9a-f]{40}\Z")
_URL_REF = re.compile(r"https://[^\s/]+\.[^\s/]+(/\S*)?\Z")

# A CA file larger than this is not a CA file (and reading /dev/zero must end).
_MAX_CA_BYTES = 1024 * 1024

_TOP_KEYS = ("version", "require_sources", "ca_bundle", "routable_networks", "services")
_SERVICE_KEYS = ("id", "name", "test_name", "baseline", "ca", "notes", "source", "endpoints")
_ENDPOINT_KEYS = (
    "id", "host", "port", "ports", "checks", "sni", "ca", "path", "role", "expected_asns",
    "notes", "source", "function", "payload", "datagrams", "interval",
)
_SOURCE_KEYS = ("ref", "checked")


class TargetsError(Exception):
    """A targets file that cannot be used, with where (file, line, field) and why."""

    def __init__(
        self, source: str, line: int | None, field: str | None, message: str
    ) -> None:
        self.source = source
        self.line = line
        self.field = field
        self.message = message
        super().__init__(self._format())

    def _format(self) -> str:
        where = self.source if self.line is None else f"{self.source} line {self.line}"
        if self.field:
            where = f"{where}, {self.field}"
        return f"{where}: {self.message}"

    def __str__(self) -> str:
        return self._format()

    def __reduce__(self):  # keep the error picklable despite the 4-argument constructor
        return (type(self), (self.source, self.line, self.field, self.message))


@dataclass(frozen=True)
class Source:
    """Where an endpoint's host, port and protocol come from, and when that was read.

    ``ref`` is a repository, path and commit (``github:owner/repo path@<40 hex>``) or
    a vendor's URL; ``checked`` is the day someone last read it and found the
    endpoint there. A source ages: a client moves hosts, and the endpoint goes stale.
    """

    ref: str
    checked: str
    """The day, as YYYY-MM-DD (text, so traces and feeds carry it as JSON)."""

    def age_days(self, today: datetime.date) -> int:
        return (today - datetime.date.fromisoformat(self.checked)).days


@dataclass(frozen=True)
class Endpoint:
    """One host of a service and what to measure on it."""

    id: str
    service: str
    host: str
    ports: tuple[int, ...]
    checks: tuple[str, ...]
    sni: str | None
    """Effective TLS server name: the explicit `sni`, else the host if it is a name."""
    ca_pem: str | None
    """Pinned CA certificates (PEM) for this endpoint, else None for the default trust."""
    path: str = "/"
    role: str | None = None
    expected_asns: tuple[int, ...] = ()
    notes: str = ""
    function: str | None = None  # probe.vocabulary.Function: what users do with it
    payload: str = UdpPayload.STUN.value  # udp check: probe.vocabulary.UdpPayload
    datagrams: int = DEFAULT_DATAGRAMS  # udp check: datagrams in the flow
    interval: float = DEFAULT_INTERVAL  # udp check: seconds between two datagrams
    sources: tuple[Source, ...] = ()
    """Its own `source`, else its service's; empty when the file cites none."""

    @property
    def host_is_address(self) -> bool:
        return _is_address(self.host)


@dataclass(frozen=True)
class Service:
    """A messaging service (or the baseline group) and its endpoints."""

    id: str
    name: str
    test_name: str
    baseline: bool
    notes: str
    endpoints: tuple[Endpoint, ...]
    sources: tuple[Source, ...] = ()


@dataclass(frozen=True)
class Targets:
    """Everything a targets file asks to measure."""

    source: str
    services: tuple[Service, ...]
    ca_bundle_pem: str | None
    """PEM bundle to use instead of the system trust store, if the file names one."""
    routable_networks: tuple[str, ...] = ()
    """Networks exempted from the bogon list (test labs use documentation ranges)."""
    require_sources: bool = False
    """The file declares `require_sources: true`: every endpoint has a `source`."""

    def endpoints(self) -> tuple[Endpoint, ...]:
        return tuple(endpoint for service in self.services for endpoint in service.endpoints)

    def with_baseline(self, extra: tuple[Endpoint, ...]) -> Targets:
        """These targets with ``extra`` endpoints added to the baseline service (made
        when there is none): a run's reference measurements chosen at run time."""
        ids = {e.id for e in self.endpoints()}
        extra = tuple(e for e in extra if e.id not in ids)
        if not extra:
            return self
        services = list(self.services)
        for index, service in enumerate(services):
            if service.baseline:
                services[index] = replace(service, endpoints=(*service.endpoints, *extra))
                break
        else:
            services.append(Service(extra[0].service, "Baseline references", "baseline",
                                    True, "", extra))
        return replace(self, services=tuple(services))

    def service(self, service_id: str) -> Service:
        for service in self.services:
            if service.id == service_id:
                return service
        raise KeyError(service_id)

    def select(self, service_ids: Iterable[str]) -> Targets:
        """The named services plus the baseline group, in file order.

        The baseline always stays: without it a failure cannot be told apart from the
        probe's own network being down.
        """
        # A bare string is one id, not an iterable of one-letter ids.
        wanted = {service_ids} if isinstance(service_ids, str) else set(service_ids)
        known = [service.id for service in self.services]
        unknown = sorted(wanted.difference(known))
        if unknown:
            raise TargetsError(
                self.source,
                None,
                None,
                f"unknown service {', '.join(repr(u) for u in unknown)}; "
                f"known services: {', '.join(known)}",
            )
        kept = tuple(s for s in self.services if s.baseline or s.id in wanted)
        return replace(self, services=kept)


PACKAGE_DIR = Path(__file__).resolve().parent


def default_targets_path() -> Path:
    """The targets.yaml that ships with probe, as package data (``probe/targets.yaml``).

    In a checkout that file is a link to the repository's top-level targets.yaml,
    which readers find first: one file, not two copies that drift. A wheel holds
    its content, so an installed probe finds it wherever pip put the package.
    """
    return PACKAGE_DIR / "targets.yaml"


def _base_dir(path: Path) -> Path:
    """Where a targets file's relative CA paths start: its own folder, except for the
    bundled file, which names its CA files from the repository root (probe/ca/...),
    the package's parent both in a checkout and once installed."""
    try:
        if path.resolve() == default_targets_path().resolve():
            return PACKAGE_DIR.parent
    except (OSError, RuntimeError):  # a link loop: the plain rule, and the open fails
        pass
    return path.parent


def load_targets(path: str | os.PathLike) -> Targets:
    """Read and validate a targets file; CA paths in it are relative to its folder
    (the bundled file's to the repository root: ``_base_dir``)."""
    source = os.fspath(path)
    try:
        raw = Path(source).read_bytes()
    except FileNotFoundError:
        raise TargetsError(source, None, None, "no such file") from None
    except IsADirectoryError:
        raise TargetsError(source, None, None, "is a folder, not a targets file") from None
    except OSError as err:
        raise TargetsError(source, None, None, f"cannot read it ({err.strerror})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise TargetsError(
            source, line, None, "is not UTF-8 text; save it as UTF-8"
        ) from None
    return parse_targets(text, source=source, base_dir=_base_dir(Path(source)))


def parse_targets(
    text: str, source: str = "<string>", base_dir: Path | None = None,
    ca_files: Mapping[str, bytes] | None = None,
) -> Targets:
    """Validate targets given as YAML text.

    `source` names the text in error messages; relative CA paths are resolved against
    `base_dir` (the current directory when None). With `ca_files`, CA paths are
    looked up there, by the path as written, and never on disk: a signed targets
    feed carries its CA files, and must not make probe read the volunteer's files.
    """
    base = base_dir if base_dir is not None else Path.cwd()
    streamed = _parse_streaming(text, _Parser(source, base, ca_files))
    if streamed is not None:
        return streamed
    root = _compose_fast(text)
    if root is not _FAST_FAILED and root is not None:
        return _Parser(source, base, ca_files).targets(root)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = err.problem or err.context or "not valid YAML"
        raise TargetsError(source, line, None, f"YAML syntax error: {problem}") from None
    except yaml.reader.ReaderError as err:
        line = text[: err.position].count("\n") + 1
        character = err.character if isinstance(err.character, str) else chr(err.character)
        raise TargetsError(
            source, line, None,
            f"character U+{ord(character):04X} is not allowed in YAML; remove it",
        ) from None
    except yaml.YAMLError as err:
        raise TargetsError(source, None, None, f"YAML error: {err}") from None
    except RecursionError:
        raise TargetsError(source, None, None, "YAML nested too deeply") from None
    if root is None:
        raise TargetsError(
            source, 1, None,
            "the file is empty; it needs 'version: 1' and a 'services' list",
        )
    return _Parser(source, base, ca_files).targets(root)


_FAST_FAILED = targets_fast.FAST_FAILED
_compose_fast = targets_fast.compose_fast


def _parse_streaming(text: str, parser: _Parser) -> Targets | None:
    """Targets validated service by service from libyaml's events
    (``targets_fast.stream_document``), or None: then the whole tree is parsed the
    usual way, whose errors name the line (a file with an error never streams)."""
    service_ids: dict[str, int] = {}
    endpoint_ids: dict[str, int] = {}

    def read_service(node: yaml.Node, number: int) -> Service:
        return parser.service(node, f"services[{number}]", service_ids, endpoint_ids)

    try:
        return targets_fast.stream_document(
            text, read_service, lambda root, services: parser.targets(root, services=services)
        )
    except TargetsError:
        return None


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _is_host_name(name: str) -> bool:
    name = name.removesuffix(".")
    if not name or len(name) > 253:
        return False
    labels = name.split(".")
    # An all-numeric last label would be a mistyped IPv4 address, not a name.
    if labels[-1].isdigit():
        return False
    return all(_HOST_LABEL.match(label) for label in labels)


def _describe(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"{'true' if value else 'false'} (a yes/no value)"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, str):
        return "text"
    return f"a {type(value).__name__} value"


class _Parser:
    """Walks the composed YAML node tree, so every value keeps its line number."""

    def __init__(
        self, source: str, base_dir: Path, ca_files: Mapping[str, bytes] | None = None
    ) -> None:
        self.source = source
        self.base_dir = base_dir
        self.ca_files = ca_files
        self.constructor = yaml.constructor.SafeConstructor()
        self.ca_cache: dict[Path, str] = {}
        # endpoints citing no source, own or inherited: (line, field, id), for
        # `require_sources`, which the file may declare after its services
        self.unsourced: list[tuple[int, str, str]] = []

    # -- generic helpers -------------------------------------------------------------

    def error(self, node: yaml.Node | None, field: str | None, message: str) -> TargetsError:
        line = node.start_mark.line + 1 if node is not None and node.start_mark else None
        return TargetsError(self.source, line, field, message)

    def scalar(self, node: yaml.Node, field: str) -> object:
        if isinstance(node, yaml.MappingNode):
            raise self.error(node, field, "expected a single value, got a mapping")
        if isinstance(node, yaml.SequenceNode):
            raise self.error(node, field, "expected a single value, got a list")
        try:
            return self.constructor.construct_object(node)
        except (yaml.YAMLError, ValueError, TypeError, OverflowError) as err:
            problem = getattr(err, "problem", None) or str(err)
            raise self.error(node, field, f"cannot read this value: {problem}") from None
        finally:
            # the constructor remembers every node it built (for a document's
            # aliases): forget them, or the whole file's nodes stay alive
            self.constructor.constructed_objects.clear()

    def mapping(
        self,
        node: yaml.Node,
        field: str,
        allowed: tuple[str, ...],
        required: tuple[str, ...],
    ) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        """Keys to (key node, value node); rejects unknown, duplicate and missing keys."""
        if not isinstance(node, yaml.MappingNode) or node.tag != _MAP_TAG:
            raise self.error(
                node, field or None, f"expected a mapping of keys, got {self.kind(node, field)}"
            )
        prefix = f"{field}." if field else ""
        entries: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            key = self.scalar(key_node, f"{prefix}<key>")
            if not isinstance(key, str):
                raise self.error(
                    key_node, f"{prefix}{key}", f"keys must be text, got {_describe(key)}"
                )
            if key not in allowed:
                raise self.error(
                    key_node,
                    f"{prefix}{key}",
                    f"unknown key '{key}'; allowed keys here: {', '.join(allowed)}",
                )
            if key in entries:
                first = entries[key][0].start_mark.line + 1
                raise self.error(
                    key_node, f"{prefix}{key}", f"key given twice (first on line {first})"
                )
            entries[key] = (key_node, value_node)
        for key in required:
            if key not in entries:
                raise self.error(node, f"{prefix}{key}", "missing required key")
        return entries

    def kind(self, node: yaml.Node, field: str) -> str:
        """What a node holds, in words, for "expected X, got Y" messages."""
        if isinstance(node, yaml.MappingNode):
            return "a mapping" if node.tag == _MAP_TAG else f"a mapping tagged {node.tag}"
        if isinstance(node, yaml.SequenceNode):
            return "a list" if node.tag == _SEQ_TAG else f"a list tagged {node.tag}"
        return _describe(self.scalar(node, field))

    def sequence(self, node: yaml.Node, field: str) -> list[yaml.Node]:
        if not isinstance(node, yaml.SequenceNode) or node.tag != _SEQ_TAG:
            raise self.error(node, field, f"expected a list, got {self.kind(node, field)}")
        return list(node.value)

    def text(self, node: yaml.Node, field: str, *, allow_empty: bool = False) -> str:
        value = self.scalar(node, field)
        if not isinstance(value, str):
            hint = " (put quotes around it if it is meant as text)" if value is not None else ""
            raise self.error(node, field, f"expected text, got {_describe(value)}{hint}")
        if not allow_empty and not value.strip():
            raise self.error(node, field, "must not be empty")
        return value

    def integer(self, node: yaml.Node, field: str) -> int:
        value = self.scalar(node, field)
        # bool is an int in Python, but `port: yes` is a mistake, not port 1.
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.error(node, field, f"expected a whole number, got {_describe(value)}")
        return value

    def boolean(self, node: yaml.Node, field: str) -> bool:
        value = self.scalar(node, field)
        if not isinstance(value, bool):
            raise self.error(node, field, f"expected true or false, got {_describe(value)}")
        return value

    # -- the document ----------------------------------------------------------------

    def targets(self, root: yaml.Node, services: list[Service] | None = None) -> Targets:
        """``services``: already validated one by one (``_parse_streaming``), whose
        ``services`` node is then an empty placeholder."""
        if not isinstance(root, yaml.MappingNode) or root.tag != _MAP_TAG:
            raise self.error(
                root,
                None,
                "expected a mapping with 'version' and 'services' at the top, "
                f"got {self.kind(root, 'file')}",
            )
        entries = self.mapping(root, "", _TOP_KEYS, ("version", "services"))

        version_node = entries["version"][1]
        version = self.scalar(version_node, "version")
        if isinstance(version, bool) or version != SUPPORTED_VERSION:
            raise self.error(
                version_node,
                "version",
                f"unsupported version {version!r}; this probe reads version "
                f"{SUPPORTED_VERSION} (upgrade probe, or write 'version: 1')",
            )

        require_sources = False
        if "require_sources" in entries:
            require_sources = self.boolean(entries["require_sources"][1], "require_sources")

        ca_bundle_pem = None
        if "ca_bundle" in entries:
            ca_bundle_pem = self.ca(entries["ca_bundle"][1], "ca_bundle")

        routable: list[str] = []
        if "routable_networks" in entries:
            # Test networks (the lab) live in documentation ranges that are bogons
            # in the real world; this exempts them. Never needed for real targets.
            for i, node in enumerate(
                self.sequence(entries["routable_networks"][1], "routable_networks")
            ):
                field = f"routable_networks[{i}]"
                text = self.text(node, field)
                try:
                    routable.append(str(ipaddress.ip_network(text, strict=False)))
                except ValueError:
                    raise self.error(
                        node, field, f"{text!r} is not a network like 198.51.100.0/24"
                    ) from None

        services_node = entries["services"][1]
        service_nodes = self.sequence(services_node, "services")
        if not service_nodes and not services:
            raise self.error(services_node, "services", "the list is empty; add a service")

        if services is None:
            services = []
            service_ids: dict[str, int] = {}
            endpoint_ids: dict[str, int] = {}
            for index, service_node in enumerate(service_nodes):
                services.append(
                    self.service(service_node, f"services[{index}]", service_ids, endpoint_ids)
                )
        if require_sources and self.unsourced:
            line, field, endpoint_id = self.unsourced[0]
            more = len(self.unsourced) - 1
            others = f" ({more} more endpoints lack one too)" if more else ""
            raise TargetsError(
                self.source, line, field,
                f"endpoint '{endpoint_id}' cites no source, and this file declares "
                "'require_sources: true'; add 'source: {ref: ..., checked: YYYY-MM-DD}' "
                f"to it or to its service{others}",
            )
        return Targets(
            source=self.source, services=tuple(services), ca_bundle_pem=ca_bundle_pem,
            routable_networks=tuple(routable), require_sources=require_sources,
        )

    def sources(self, node: yaml.Node, field: str) -> tuple[Source, ...]:
        """A `source` value: one {ref, checked} mapping, or a list of them when several
        sources agree."""
        if isinstance(node, yaml.SequenceNode):
            items = [(n, f"{field}[{i}]") for i, n in enumerate(self.sequence(node, field))]
            if not items:
                raise self.error(node, field, "the list is empty; cite at least one source")
        else:
            items = [(node, field)]
        found = []
        for item, item_field in items:
            if not isinstance(item, yaml.MappingNode):
                raise self.error(
                    item, item_field,
                    f"expected a mapping {{ref: ..., checked: YYYY-MM-DD}}, "
                    f"got {self.kind(item, item_field)}",
                )
            entries = self.mapping(item, item_field, _SOURCE_KEYS, _SOURCE_KEYS)
            ref_node = entries["ref"][1]
            ref = self.text(ref_node, f"{item_field}.ref").strip()
            if not (_REPOSITORY_REF.match(ref) or _URL_REF.match(ref)):
                raise self.error(
                    ref_node, f"{item_field}.ref",
                    f"'{ref}' is neither 'github:owner/repo path@<40-hex commit>' nor an "
                    "https:// URL; cite the file at the commit you read, or the vendor's page",
                )
            day = self.day(entries["checked"][1], f"{item_field}.checked")
            found.append(Source(ref, day.isoformat()))
        return tuple(found)

    def day(self, node: yaml.Node, field: str) -> datetime.date:
        """A calendar day written YYYY-MM-DD (YAML reads it as a date), not in the future."""
        value = self.scalar(node, field)
        if isinstance(value, str):
            try:
                value = datetime.date.fromisoformat(value) if len(value) == 10 else value
            except ValueError:
                pass
        if isinstance(value, datetime.datetime) or not isinstance(value, datetime.date):
            raise self.error(
                node, field, f"expected a day written YYYY-MM-DD, got {_describe(value)}"
            )
        # one day of slack: the person who checked may live east of this clock
        if value > datetime.date.today() + datetime.timedelta(days=1):
            raise self.error(node, field, f"{value.isoformat()} is in the future")
        return value

    def service(
        self,
        node: yaml.Node,
        field: str,
        service_ids: dict[str, int],
        endpoint_ids: dict[str, int],
    ) -> Service:
        """One service; `service_ids` and `endpoint_ids` map ids seen so far to lines."""
        entries = self.mapping(node, field, _SERVICE_KEYS, ("id", "endpoints"))
        id_node = entries["id"][1]
        service_id = self.text(id_node, f"{field}.id")
        if not _SERVICE_ID.match(service_id):
            raise self.error(
                id_node,
                f"{field}.id",
                f"bad service id '{service_id}': use lowercase letters, digits, '_' and '-'",
            )
        if service_id in service_ids:
            raise self.error(
                id_node,
                f"{field}.id",
                f"duplicate service id '{service_id}' "
                f"(first used on line {service_ids[service_id]})",
            )
        service_ids[service_id] = id_node.start_mark.line + 1

        name = service_id
        if "name" in entries:
            name = self.text(entries["name"][1], f"{field}.name")
        test_name = service_id
        if "test_name" in entries:
            test_name = self.text(entries["test_name"][1], f"{field}.test_name")
            if not _SERVICE_ID.match(test_name):
                raise self.error(
                    entries["test_name"][1],
                    f"{field}.test_name",
                    f"bad test_name '{test_name}': use lowercase letters, digits, '_' and '-'",
                )
        baseline = False
        if "baseline" in entries:
            baseline = self.boolean(entries["baseline"][1], f"{field}.baseline")
        notes = ""
        if "notes" in entries:
            notes = self.text(entries["notes"][1], f"{field}.notes", allow_empty=True)
        service_ca = None
        if "ca" in entries:
            service_ca = self.ca(entries["ca"][1], f"{field}.ca")
        service_sources: tuple[Source, ...] = ()
        if "source" in entries:
            service_sources = self.sources(entries["source"][1], f"{field}.source")

        endpoints_node = entries["endpoints"][1]
        endpoint_nodes = self.sequence(endpoints_node, f"{field}.endpoints")
        if not endpoint_nodes:
            raise self.error(
                endpoints_node, f"{field}.endpoints", "the list is empty; add an endpoint"
            )
        endpoints = []
        for index, endpoint_node in enumerate(endpoint_nodes):
            endpoint_field = f"{field}.endpoints[{index}]"
            endpoints.append(
                self.endpoint(endpoint_node, endpoint_field, service_id, service_ca, endpoint_ids,
                              service_sources)
            )
        return Service(
            id=service_id,
            name=name,
            test_name=test_name,
            baseline=baseline,
            notes=notes,
            endpoints=tuple(endpoints),
            sources=service_sources,
        )

    def endpoint(
        self,
        node: yaml.Node,
        field: str,
        service_id: str,
        service_ca: str | None,
        endpoint_ids: dict[str, int],
        service_sources: tuple[Source, ...] = (),
    ) -> Endpoint:
        entries = self.mapping(node, field, _ENDPOINT_KEYS, ("id", "host", "checks"))

        id_node = entries["id"][1]
        endpoint_id = self.text(id_node, f"{field}.id")
        if not _ENDPOINT_ID.match(endpoint_id):
            raise self.error(
                id_node,
                f"{field}.id",
                f"bad endpoint id '{endpoint_id}': use lowercase letters, digits, "
                "'_', '-' and '.'",
            )
        if endpoint_id in endpoint_ids:
            raise self.error(
                id_node,
                f"{field}.id",
                f"duplicate endpoint id '{endpoint_id}' "
                f"(first used on line {endpoint_ids[endpoint_id]}); "
                "endpoint ids must be unique in the whole file",
            )
        endpoint_ids[endpoint_id] = id_node.start_mark.line + 1

        host_node = entries["host"][1]
        host = self.text(host_node, f"{field}.host")
        host_is_address = _is_address(host)
        if not host_is_address and not _is_host_name(host):
            raise self.error(
                host_node,
                f"{field}.host",
                f"'{host}' is neither a DNS name nor an IP address "
                "(write IPv6 addresses without brackets)",
            )

        ports = self.ports(node, field, entries)
        checks = self.checks(entries["checks"][1], f"{field}.checks")
        tcp = [check for check in checks if check in TCP_CHECKS]
        udp = [check for check in checks if check in UDP_CHECKS]
        if tcp and udp:
            # An endpoint's ports are TCP ports or UDP ports: 443 may be HTTPS over
            # TCP and QUIC over UDP, two measurements with two verdicts.
            raise self.error(
                entries["checks"][1],
                f"{field}.checks",
                f"mixes TCP checks ({', '.join(tcp)}) with UDP checks ({', '.join(udp)}); "
                "its ports cannot be both, so split it into two endpoints, one with the "
                "TCP checks and one with the UDP checks",
            )

        if host_is_address and "dns" in checks:
            raise self.error(
                entries["checks"][1],
                f"{field}.checks",
                f"the dns check needs a host name, but host is the address {host}; "
                "remove 'dns' or use a name",
            )

        sni = None
        if "sni" in entries:
            sni_node = entries["sni"][1]
            sni = self.text(sni_node, f"{field}.sni")
            if _is_address(sni) or not _is_host_name(sni):
                raise self.error(
                    sni_node, f"{field}.sni", f"'{sni}' is not a DNS name; sni must be a name"
                )
        elif host_is_address:
            needing = [check for check in checks if check in _CHECKS_NEEDING_SNI]
            if needing:
                raise self.error(
                    entries["checks"][1],
                    f"{field}.checks",
                    f"the {' and '.join(needing)} check on the address {host} needs "
                    "an 'sni' (the TLS server name to send)",
                )
        else:
            sni = host

        ca_pem = service_ca
        if "ca" in entries:
            ca_pem = self.ca(entries["ca"][1], f"{field}.ca")

        path = "/"
        if "path" in entries:
            path_node = entries["path"][1]
            path = self.text(path_node, f"{field}.path")
            if not path.startswith("/"):
                raise self.error(path_node, f"{field}.path", f"'{path}' must start with '/'")
            if _PATH_FORBIDDEN.search(path):
                raise self.error(
                    path_node,
                    f"{field}.path",
                    "must not contain spaces, control characters or '#'; "
                    "percent-encode them",
                )

        role = None
        if "role" in entries:
            role = self.text(entries["role"][1], f"{field}.role")

        expected_asns: tuple[int, ...] = ()
        if "expected_asns" in entries:
            asns_field = f"{field}.expected_asns"
            asns = []
            for index, asn_node in enumerate(
                self.sequence(entries["expected_asns"][1], asns_field)
            ):
                asn = self.integer(asn_node, f"{asns_field}[{index}]")
                if not 0 < asn < 2**32:
                    raise self.error(
                        asn_node, f"{asns_field}[{index}]", f"{asn} is not an AS number"
                    )
                asns.append(asn)
            expected_asns = tuple(asns)

        notes = ""
        if "notes" in entries:
            notes = self.text(entries["notes"][1], f"{field}.notes", allow_empty=True)

        sources = service_sources
        if "source" in entries:
            sources = self.sources(entries["source"][1], f"{field}.source")
        elif not sources:
            self.unsourced.append((id_node.start_mark.line + 1, f"{field}.source", endpoint_id))

        function = None
        if "function" in entries:
            function = self.choice(entries["function"][1], f"{field}.function", FUNCTIONS,
                                   "function")

        payload, datagrams, interval = self.udp_flow(field, entries, checks)

        return Endpoint(
            id=endpoint_id,
            service=service_id,
            host=host,
            ports=ports,
            checks=checks,
            sni=sni,
            ca_pem=ca_pem,
            path=path,
            role=role,
            expected_asns=expected_asns,
            notes=notes,
            function=function,
            payload=payload,
            datagrams=datagrams,
            interval=interval,
            sources=sources,
        )

    def udp_flow(
        self, field: str, entries: dict[str, tuple[yaml.Node, yaml.Node]], checks: tuple[str, ...]
    ) -> tuple[str, int, float]:
        """The udp check's knobs (payload, datagrams, interval): only with that check."""
        payload = UdpPayload.STUN.value
        datagrams, interval = DEFAULT_DATAGRAMS, DEFAULT_INTERVAL
        for key in ("payload", "datagrams", "interval"):
            if key in entries and Check.UDP not in checks:
                raise self.error(
                    entries[key][0], f"{field}.{key}",
                    f"'{key}' sets the udp check's flow, but this endpoint has no udp check; "
                    "add 'udp' to its checks or remove the key",
                )
        if "payload" in entries:
            payload = self.choice(entries["payload"][1], f"{field}.payload", PAYLOADS,
                                          "payload")
        if "datagrams" in entries:
            node = entries["datagrams"][1]
            datagrams = self.integer(node, f"{field}.datagrams")
            low, high = DATAGRAMS_RANGE
            if not low <= datagrams <= high:
                raise self.error(node, f"{field}.datagrams",
                                 f"{datagrams} is out of range ({low}-{high} datagrams)")
        if "interval" in entries:
            node = entries["interval"][1]
            value = self.scalar(node, f"{field}.interval")
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise self.error(node, f"{field}.interval",
                                 f"expected a number of seconds, got {_describe(value)}")
            low_s, high_s = INTERVAL_RANGE
            if not low_s <= value <= high_s:
                raise self.error(node, f"{field}.interval",
                                 f"{value} is out of range ({low_s}-{high_s} seconds)")
            interval = float(value)
        return payload, datagrams, interval

    def choice(
        self, node: yaml.Node, field: str, allowed: tuple[str, ...], what: str
    ) -> str:
        value = self.text(node, field)
        if value not in allowed:
            raise self.error(
                node, field, f"unknown {what} '{value}'; choose from {', '.join(allowed)}"
            )
        return value

    def ports(
        self, node: yaml.Node, field: str, entries: dict[str, tuple[yaml.Node, yaml.Node]]
    ) -> tuple[int, ...]:
        if "port" in entries and "ports" in entries:
            raise self.error(
                entries["ports"][0], f"{field}.ports", "give either 'port' or 'ports', not both"
            )
        if "port" in entries:
            items = [(entries["port"][1], f"{field}.port")]
        elif "ports" in entries:
            ports_node = entries["ports"][1]
            port_nodes = self.sequence(ports_node, f"{field}.ports")
            if not port_nodes:
                raise self.error(ports_node, f"{field}.ports", "the list is empty; add a port")
            items = [(n, f"{field}.ports[{i}]") for i, n in enumerate(port_nodes)]
        else:
            raise self.error(node, f"{field}.port", "missing required key (give port or ports)")
        ports: list[int] = []
        for port_node, port_field in items:
            port = self.integer(port_node, port_field)
            if not 1 <= port <= 65535:
                raise self.error(port_node, port_field, f"{port} is out of range (1-65535)")
            if port in ports:
                raise self.error(port_node, port_field, f"port {port} is listed twice")
            ports.append(port)
        return tuple(ports)

    def checks(self, node: yaml.Node, field: str) -> tuple[str, ...]:
        check_nodes = self.sequence(node, field)
        if not check_nodes:
            raise self.error(
                node, field, f"the list is empty; choose from {', '.join(CHECKS)}"
            )
        checks: list[str] = []
        for index, check_node in enumerate(check_nodes):
            check = self.text(check_node, f"{field}[{index}]")
            if check not in CHECKS:
                raise self.error(
                    check_node,
                    f"{field}[{index}]",
                    f"unknown check '{check}'; choose from {', '.join(CHECKS)}",
                )
            if check in checks:
                raise self.error(check_node, f"{field}[{index}]", f"'{check}' is listed twice")
            checks.append(check)
        return tuple(checks)

    def ca(self, node: yaml.Node, field: str) -> str:
        """PEM text of the certificates a `ca`/`ca_bundle` value names or holds inline."""
        value = self.text(node, field)
        if "-----BEGIN" in value:
            return self.certificates(value.encode("utf-8", "replace"), node, field, "inline PEM")
        if self.ca_files is not None:
            carried = self.ca_files.get(value)
            if carried is None:
                raise self.error(node, field, f"CA file {value} is not among the feed's CA files")
            if len(carried) > _MAX_CA_BYTES:
                raise self.error(node, field, f"CA file {value} is too large to be a PEM file")
            return self.certificates(carried, node, field, f"CA file {value}")
        path = Path(value)
        if not path.is_absolute():
            path = self.base_dir / path
        if path in self.ca_cache:
            return self.ca_cache[path]
        try:
            with open(path, "rb") as handle:
                raw = handle.read(_MAX_CA_BYTES + 1)
        except FileNotFoundError:
            raise self.error(node, field, f"CA file {path} does not exist") from None
        except IsADirectoryError:
            raise self.error(node, field, f"CA file {path} is a folder") from None
        except (OSError, ValueError) as err:  # ValueError: a NUL byte in the path
            reason = getattr(err, "strerror", None) or str(err)
            raise self.error(node, field, f"cannot read CA file {path} ({reason})") from None
        if len(raw) > _MAX_CA_BYTES:
            raise self.error(node, field, f"CA file {path} is too large to be a PEM file")
        pem = self.certificates(raw, node, field, f"CA file {path}")
        self.ca_cache[path] = pem
        return pem

    def certificates(self, raw: bytes, node: yaml.Node, field: str, what: str) -> str:
        # Re-serialise what parsed, so consumers get certificates only (no keys, no junk).
        try:
            certificates = x509.load_pem_x509_certificates(raw)
        except ValueError:
            raise self.error(
                node, field, f"{what} holds no PEM X.509 certificate that can be parsed"
            ) from None
        return "".join(cert.public_bytes(Encoding.PEM).decode("ascii") for cert in certificates)
