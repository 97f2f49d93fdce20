"""The signed targets feed: an NGO signs a targets file, volunteers update from it.

A feed is one JSON object (docs/targets.md, "The signed targets feed", is its
specification): the targets file's text, the CA files it names, a version that
only grows, the signing date, and an Ed25519 signature over the RFC 8785 form
with a context string of its own, so a feed signature is never a report line's
or a control attestation's. The pure part checks a feed against the pinned key,
refuses downgrades and lists what changed; :class:`FeedStore` keeps the current
and the previous copy under the user's config folder, replaced atomically (temp
file, fsync, rename) so a kill at any moment leaves a usable copy. The download
goes through the network seam (``Network.fetch``). This module never trusts a
feed it has not verified: nothing of it is parsed as YAML, nor written to disk,
before its signature checks against the pinned key.
"""

from __future__ import annotations

import datetime
import errno
import ipaddress
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import platformdirs

from probe.net import failures
from probe.net.network import FetchRequest, Network
from probe.report.canonical import (
    MAX_SAFE_INTEGER,
    CanonicalizationError,
    canonical_bytes,
    parse_json_strict,
)
from probe.report.keys import (
    SIGNATURE_BYTES,
    KeyFormatError,
    SigningKey,
    b64decode_strict,
    b64encode,
    decode_public_key,
    fingerprint,
    verify_raw,
)
from probe.targets import Endpoint, Targets, TargetsError, parse_targets

FEED_FORMAT = "probe-targets-feed"
FORMAT_VERSION = 1
#: Prepended to the canonical bytes before signing (see probe.report.rules for the
#: report line's and the control response's): a feed signature proves nothing else.
FEED_CONTEXT = b"probe/targets-feed/v1\n"
MAX_FEED_BYTES = 4 * 1024 * 1024
SIGNATURE_FIELD = "signature"
FEED_FIELDS = frozenset(
    {"format", "format_version", "version", "signed_at", "targets", "ca_files", SIGNATURE_FIELD})
SIGNATURE_FIELDS = frozenset({"version", "alg", "key_id", "public_key", "value"})
DATE_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
DEFAULT_MAX_AGE_DAYS = 30

PIN_FILE = "targets-feed.json"  # in the config folder: {"url": ..., "public_key": ...}
STORE_DIR = "targets"  # in the config folder: the current and previous feeds
CURRENT_FILE = "feed.json"
PREVIOUS_FILE = "feed.prev.json"


class FeedError(Exception):
    """A feed, a download or a pin that cannot be used; the message is one line."""


# --------------------------------------------------------------------------- #
# the feed: build, sign, check (pure)                                          #
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class Feed:
    """A verified feed and its targets."""

    version: int
    signed_at: datetime.datetime
    targets_text: str
    ca_files: Mapping[str, str]
    public_key: str  # base64
    key_id: str
    targets: Targets
    content: bytes  # RFC 8785 form of what was signed minus the signature: "same feed?"

    def age_days(self, now: datetime.datetime) -> float:
        return (now - self.signed_at).total_seconds() / 86400


class _CaFilesFromDisk(Mapping[str, bytes]):
    """The CA files a targets file names, read from disk as the loader would, and noted."""

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = base_dir
        self.read: dict[str, bytes] = {}

    def __getitem__(self, name: str) -> bytes:
        found = self.get(name)
        if found is None:
            raise KeyError(name)
        return found

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        path = Path(name) if Path(name).is_absolute() else self.base_dir / name
        try:
            with open(path, "rb") as handle:
                raw = handle.read(MAX_FEED_BYTES + 1)
        except (OSError, ValueError):
            return default  # the loader then says the CA file is missing
        self.read[name] = raw
        return raw

    def __iter__(self):  # noqa: ANN204
        return iter(self.read)

    def __len__(self) -> int:
        return len(self.read)


def sign_feed(
    targets_text: str, source: str, base_dir: Path, key: SigningKey, version: int,
    signed_at: datetime.datetime,
) -> bytes:
    """The feed file's bytes for a targets file (validated first, CA files carried).

    Raises FeedError (a TargetsError's message) when the targets do not load.
    """
    if not 1 <= version <= MAX_SAFE_INTEGER:
        raise FeedError(f"--version {version}: must be between 1 and {MAX_SAFE_INTEGER}")
    disk = _CaFilesFromDisk(base_dir)
    try:
        parse_targets(targets_text, source=source, base_dir=base_dir, ca_files=disk)
    except TargetsError as exc:
        raise FeedError(str(exc)) from None
    ca_files = {}
    for name, raw in disk.read.items():
        try:
            ca_files[name] = raw.decode("ascii")
        except UnicodeDecodeError:
            raise FeedError(f"{source}: CA file {name} is not ASCII PEM text") from None
    feed: dict[str, Any] = {
        "format": FEED_FORMAT,
        "format_version": FORMAT_VERSION,
        "version": version,
        "signed_at": signed_at.astimezone(datetime.UTC).strftime(DATE_FORMAT),
        "targets": targets_text,
        "ca_files": ca_files,
    }
    signature: dict[str, Any] = {"version": 1, "alg": "ed25519", "key_id": key.key_id,
                                 "public_key": key.public_key_b64}
    feed[SIGNATURE_FIELD] = signature
    signature["value"] = b64encode(key.sign(FEED_CONTEXT + canonical_bytes(feed)))
    raw = canonical_bytes(feed) + b"\n"
    if len(raw) > MAX_FEED_BYTES:
        raise FeedError(f"the feed would be {len(raw)} bytes, over the {MAX_FEED_BYTES} "
                        "bytes volunteers accept")
    return raw


def check_feed(raw: bytes, pinned_key: str, source: str = "the feed") -> Feed:
    """Verify a feed against the pinned base64 public key; its targets are loaded last.

    Every refusal is a FeedError naming what is wrong, in one line.
    """
    if len(raw) > MAX_FEED_BYTES:
        raise FeedError(f"{source} is over {MAX_FEED_BYTES} bytes; refused")
    try:
        obj = parse_json_strict(raw)
    except (ValueError, RecursionError):  # JsonSyntaxError, bad UTF-8
        raise FeedError(f"{source} is not a complete JSON feed (truncated or damaged "
                        "download?)") from None
    if not isinstance(obj, dict) or obj.get("format") != FEED_FORMAT:
        raise FeedError(f"{source} is not a probe targets feed")
    if obj.get("format_version") != FORMAT_VERSION:
        raise FeedError(f"{source} has format_version {obj.get('format_version')!r}; this "
                        f"probe reads version {FORMAT_VERSION} (upgrade probe?)")
    if set(obj) != FEED_FIELDS:
        odd = sorted(set(obj) ^ FEED_FIELDS)
        raise FeedError(f"{source} has missing or unknown fields: {', '.join(odd)}")
    signature = obj[SIGNATURE_FIELD]
    if not isinstance(signature, dict) or set(signature) != SIGNATURE_FIELDS:
        raise FeedError(f"{source}: the signature object is malformed")
    if signature["version"] != 1 or signature["alg"] != "ed25519":
        raise FeedError(f"{source}: unsupported signature version or algorithm")
    try:
        public_key = decode_public_key(signature["public_key"])
        value = b64decode_strict(signature["value"], SIGNATURE_BYTES, "signature value")
        pinned = decode_public_key(pinned_key)
    except KeyFormatError as exc:
        raise FeedError(f"{source}: {exc}") from None
    if public_key != pinned:
        raise FeedError(f"{source} is signed by key {fingerprint(public_key)}, not by the "
                        f"pinned feed key {fingerprint(pinned)}; refused")
    if signature["key_id"] != fingerprint(public_key):
        raise FeedError(f"{source}: the signature's key_id does not match its public key")
    unsigned = {k: v for k, v in signature.items() if k != "value"}
    try:
        message = FEED_CONTEXT + canonical_bytes({**obj, SIGNATURE_FIELD: unsigned})
        content = canonical_bytes({k: v for k, v in obj.items() if k != SIGNATURE_FIELD})
    except CanonicalizationError as exc:
        raise FeedError(f"{source}: {exc}") from None
    if not verify_raw(pinned, value, message):
        raise FeedError(f"{source}: the signature does not verify (the feed was changed "
                        "after signing); refused")
    version, text, ca_files = obj["version"], obj["targets"], obj["ca_files"]
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise FeedError(f"{source}: version must be a positive integer")
    try:
        signed_at = datetime.datetime.strptime(str(obj["signed_at"]), DATE_FORMAT).replace(
            tzinfo=datetime.UTC)
    except ValueError:
        raise FeedError(f"{source}: signed_at is not a date like 2026-12-03T20:00:00Z") from None
    if not isinstance(text, str) or not isinstance(ca_files, dict) or not all(
            isinstance(v, str) for v in ca_files.values()):
        raise FeedError(f"{source}: targets must be text and ca_files an object of texts")
    label = f"{source} (version {version})"
    try:
        targets = parse_targets(text, source=label, base_dir=Path("/nonexistent"),
                                ca_files={k: v.encode("ascii", "replace")
                                          for k, v in ca_files.items()})
    except TargetsError as exc:
        raise FeedError(f"invalid targets in the feed: {exc}") from None
    return Feed(version, signed_at, text, dict(ca_files), b64encode(public_key),
                fingerprint(public_key), targets, content)


def check_upgrade(current: Feed | None, new: Feed) -> bool:
    """True when ``new`` replaces ``current``, False when it is the same feed; a
    downgrade raises FeedError. Same version with other content is refused too:
    a replayed old feed or a key holder's equivocation must never go unnoticed."""
    if current is None:
        return True
    if new.version < current.version:
        raise FeedError(f"the feed offers version {new.version}, older than your version "
                        f"{current.version}; refused (downgrade)")
    if new.version == current.version:
        if new.content == current.content:
            return False
        raise FeedError(f"the feed's version {new.version} differs from your copy of the same "
                        "version; refused (a feed version is never re-signed with other content)")
    if new.signed_at < current.signed_at:
        raise FeedError(f"the feed was signed {new.signed_at:%Y-%m-%d %H:%M:%S}Z, before your "
                        f"copy ({current.signed_at:%Y-%m-%d %H:%M:%S}Z); refused (downgrade)")
    return True


_COMPARED = tuple(f.name for f in fields(Endpoint) if f.name not in ("id", "service"))


def describe_changes(old: Targets | None, new: Targets) -> list[str]:
    """What changed between two targets lists, one line each: services and endpoints
    added (+), removed (-) and changed (~, with the fields that changed)."""
    before = {s.id: s for s in old.services} if old is not None else {}
    after = {s.id: s for s in new.services}
    lines = []
    for sid in sorted(after.keys() - before.keys()):
        lines.append(f"+ service {sid} ({len(after[sid].endpoints)} endpoints)")
    for sid in sorted(before.keys() - after.keys()):
        lines.append(f"- service {sid} ({len(before[sid].endpoints)} endpoints)")
    old_endpoints = {(e.service, e.id): e for s in before.values() for e in s.endpoints}
    for sid in sorted(before.keys() & after.keys()):
        now = {e.id: e for e in after[sid].endpoints}
        then = {e.id: e for e in before[sid].endpoints}
        for eid in sorted(now.keys() - then.keys()):
            lines.append(f"+ endpoint {sid}/{eid}")
        for eid in sorted(then.keys() - now.keys()):
            lines.append(f"- endpoint {sid}/{eid}")
        for eid in sorted(now.keys() & then.keys()):
            changed = [name.replace("_pem", "") for name in _COMPARED
                       if getattr(now[eid], name) != getattr(old_endpoints[(sid, eid)], name)]
            if changed:
                lines.append(f"~ endpoint {sid}/{eid}: {', '.join(changed)}")
    return lines


def check_url(url: str) -> str:
    """An https URL, or http to a loopback address (tests); else FeedError."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url
    if parts.scheme == "http" and parts.hostname:
        try:
            loopback = parts.hostname == "localhost" or ipaddress.ip_address(
                parts.hostname).is_loopback
        except ValueError:
            loopback = False
        if loopback:
            return url
    raise FeedError(f"feed URL {url!r}: expected https:// (http:// only to a loopback "
                    "address, for tests)")


# --------------------------------------------------------------------------- #
# the download, through the network seam                                      #
# --------------------------------------------------------------------------- #


async def download(network: Network, url: str, timeout: float,
                   trust_pem: str | None = None) -> bytes:
    """The feed's bytes, or FeedError saying why the download failed."""
    import base64

    result = await network.fetch(
        FetchRequest(check_url(url), MAX_FEED_BYTES, trust_pem), timeout)
    if result.failure is None:
        return base64.b64decode(result.body)
    reason = result.failure
    if reason == failures.FETCH_TOO_LARGE:
        raise FeedError(f"{url}: the feed is over {MAX_FEED_BYTES} bytes; refused")
    if reason.startswith("http_status_"):
        raise FeedError(f"{url}: the server answered HTTP {result.status}")
    if reason in failures.TIMEOUTS:
        raise FeedError(f"{url}: no complete answer within {timeout:g} s")
    if reason in (failures.EOF_ERROR, *failures.RESETS):
        raise FeedError(f"{url}: the connection ended before the whole feed arrived ({reason})")
    raise FeedError(f"{url}: the download failed ({reason})")


# --------------------------------------------------------------------------- #
# where the pin and the copies live                                            #
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class FeedPin:
    """The feed a volunteer follows: where from, and the only key it may be signed by."""

    url: str
    public_key: str


@dataclass(frozen=True)
class Update:
    """What ``probe targets update`` did."""

    previous: Feed | None
    current: Feed
    replaced: bool  # False: the feed was the copy already held
    changes: list[str]


class FeedStore:
    """The pin (``targets-feed.json``) and the copies (``targets/feed.json`` and
    ``targets/feed.prev.json``) under one config folder."""

    def __init__(self, config_dir: Path) -> None:
        self.config_dir = Path(config_dir)
        self.pin_path = self.config_dir / PIN_FILE
        self.current_path = self.config_dir / STORE_DIR / CURRENT_FILE
        self.previous_path = self.config_dir / STORE_DIR / PREVIOUS_FILE

    @classmethod
    def default(cls) -> FeedStore:
        return cls(Path(platformdirs.user_config_dir("probe")))

    # -- the pin ------------------------------------------------------------------

    def pin(self) -> FeedPin | None:
        try:
            raw = self.pin_path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise FeedError(f"{self.pin_path}: cannot read it ({exc.strerror})") from None
        try:
            data = json.loads(raw)
            pin = FeedPin(str(data["url"]), str(data["public_key"]))
            decode_public_key(pin.public_key)
        except (ValueError, KeyError, TypeError, KeyFormatError):
            raise FeedError(f"{self.pin_path} is damaged; run `probe targets update --from URL "
                            "--feed-key KEY` again") from None
        return pin

    def save_pin(self, pin: FeedPin) -> None:
        data = json.dumps({"url": pin.url, "public_key": pin.public_key}, indent=1) + "\n"
        write_atomic(self.pin_path, data.encode())

    # -- the copies ---------------------------------------------------------------

    def load(self, pin: FeedPin, which: str = "current") -> Feed | None:
        """The stored feed (``current`` or ``previous``), verified; None when absent."""
        path = self.current_path if which == "current" else self.previous_path
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise FeedError(f"{path}: cannot read it ({exc.strerror})") from None
        return check_feed(raw, pin.public_key, source=str(path))

    def install(self, raw: bytes) -> None:
        """Make ``raw`` the current copy, the current one the previous: two atomic
        renames, in that order, so every moment leaves a verified current copy."""
        try:
            old = self.current_path.read_bytes()
        except FileNotFoundError:
            old = None
        except OSError as exc:
            raise FeedError(f"{self.current_path}: cannot read it ({exc.strerror})") from None
        if old is not None:
            write_atomic(self.previous_path, old)
        write_atomic(self.current_path, raw)


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data``: temp file, fsync, rename, fsync of the folder."""
    temporary = None
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
        temporary = None
        _fsync_directory(path.parent)
    except OSError as exc:
        raise FeedError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        if temporary is not None:
            try:
                os.unlink(temporary)
            except OSError:
                pass


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- #
# the two things the command line does                                         #
# --------------------------------------------------------------------------- #


def resolve_pin(store: FeedStore, url: str | None, feed_key: str | None,
                replace_key: bool = False) -> FeedPin:
    """The pin this update uses: the stored one, with ``--from``/``--feed-key`` applied.

    A different key than the pinned one needs ``replace_key``: a key is the root
    of trust, never changed by accident or by someone who only controls the URL.
    """
    pinned = store.pin()
    if feed_key is not None:
        try:
            feed_key = b64encode(decode_public_key(feed_key.strip()))
        except KeyFormatError as exc:
            raise FeedError(f"--feed-key: {exc} (expected the base64 key `probe key show` "
                            "prints)") from None
    if pinned is None:
        if url is None or feed_key is None:
            raise FeedError("no feed is configured: the first update needs --from URL and "
                            "--feed-key KEY (your NGO gives you both)")
        return FeedPin(check_url(url), feed_key)
    if feed_key is not None and feed_key != pinned.public_key and not replace_key:
        raise FeedError(f"--feed-key {fingerprint(feed_key)} differs from the pinned feed key "
                        f"{fingerprint(pinned.public_key)}; pass --replace-feed-key to change it")
    return FeedPin(check_url(url or pinned.url), feed_key or pinned.public_key)


async def update(store: FeedStore, network: Network, pin: FeedPin, timeout: float,
                 trust_pem: str | None = None, bundled: Targets | None = None) -> Update:
    """Download, verify, refuse a downgrade, then pin and install; FeedError otherwise.

    Nothing is written before the new feed is verified and its targets load. The
    changes are counted from the copy held, or from ``bundled`` on a first update.
    """
    raw = await download(network, pin.url, timeout, trust_pem)
    new = check_feed(raw, pin.public_key, source=f"the feed at {pin.url}")
    current = held_feed(store, pin)
    replaced = check_upgrade(current, new)
    store.save_pin(pin)
    if replaced:
        store.install(raw)
    changes = describe_changes(current.targets if current else bundled, new.targets)
    return Update(current, new, replaced, changes if replaced else [])


def held_feed(store: FeedStore, pin: FeedPin) -> Feed | None:
    """The copy a new feed must not go back from: the current one, else the previous
    one (a damaged current copy must not open the door to a downgrade), each checked
    with the key that was pinned when it was installed (versions go on growing
    across a change of feed key)."""
    try:
        stored = store.pin()
    except FeedError:
        stored = None
    for which in ("current", "previous"):
        try:
            feed = store.load(stored or pin, which)
        except FeedError:
            continue
        if feed is not None:
            return feed
    return None


@dataclass(frozen=True)
class ActiveFeed:
    feed: Feed
    pin: FeedPin
    path: Path
    warning: str | None = None  # the current copy was unusable and the previous is used


def active_feed(store: FeedStore) -> ActiveFeed | None:
    """The updated targets to use (None: none, use the bundled ones).

    A current copy that does not verify (a disk error: renames never leave half a
    file) falls back to the previous copy, and says so; FeedError if neither loads.
    """
    pin = store.pin()
    if pin is None:
        return None
    try:
        feed = store.load(pin)
    except FeedError as exc:
        previous = store.load(pin, "previous")
        if previous is None:
            raise
        return ActiveFeed(previous, pin, store.previous_path,
                          f"{exc}; using the previous copy")
    if feed is None:
        return None
    return ActiveFeed(feed, pin, store.current_path)
