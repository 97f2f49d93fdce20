"""Who may ask the control helper to measure: probe credentials and the helper's check.

A helper facing the Internet measures for the probes its NGO serves, not for
anyone (an anonymous helper is a port scanner and a GET proxy with fan-out). A
probe proves it is enrolled with one of two credentials, sent in the
``Authorization`` header of each control request:

- its own Ed25519 report signing key (``probe key show``), enrolled by listing
  it in the NGO's trusted-keys file, the very file the collector reads::

      Authorization: Probe-Ed25519 key=<base64 public key>, time=<unix seconds>,
                     signature=<base64 signature of signed_message(...)>

  The signature covers a context string, the method, the helper operation (the
  path's last segment, so a reverse proxy may mount the helper under a prefix),
  the time and the SHA-256 of the exact body bytes. The helper refuses a time
  more than ``MAX_CLOCK_SKEW`` off its own and a signature it has already
  seen (a bounded replay cache);
- a bearer token the NGO handed out (``Authorization: Bearer <token>``). The
  helper's tokens file holds only each token's SHA-256 (``name sha256:<hex>``),
  so a copy of the helper's configuration (a backup, a leaked volume) lets
  nobody in; the presented token is hashed and compared in constant time.

The key is checked before the body is read (an unknown key costs a header
parse and a set lookup); the signature after (one hash and one verify). This
module is pure apart from the clock and the replay cache: the HTTP server
(``probe.control.server``) maps its refusals to 401 answers, and the probe's
network (``probe.net.live``) adds the header from the bytes it sends, so a
credential never enters a recorded trace.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from probe.report.keys import (
    KeyFormatError,
    SigningKey,
    b64decode_strict,
    b64encode,
    decode_public_key,
    fingerprint,
    verify_raw,
)

SCHEME = "Probe-Ed25519"
CONTEXT = "probe-control-request/1"
# A volunteer's clock may be a few minutes off; a signed request older (or
# newer) than this is refused, and the replay cache only has to remember as long.
MAX_CLOCK_SKEW = 300
# Signatures remembered against replay. Only requests signed by an enrolled key
# enter it, and an entry is dropped once its time is out of the skew window;
# when full anyway, the oldest entries go (a replay of those would still have to
# fit the owner's budgets).
REPLAY_CACHE = 100_000
MAX_HEADER = 1024  # an Authorization header is ~200 characters
MAX_TOKEN = 256
_TOKEN = re.compile(r"[\x21-\x7e]{16,256}\Z")  # printable ASCII, no spaces
_TOKEN_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}\Z")
_DIGEST = re.compile(r"sha256:([0-9a-f]{64})\Z")

# Why a request was refused: the helper's JSON error carries one of these codes,
# and the probe turns it into a sentence of its own (never the helper's text).
MISSING = "credentials_missing"
MALFORMED = "credentials_malformed"
UNKNOWN_KEY = "unknown_key"
UNKNOWN_TOKEN = "unknown_token"
CLOCK_SKEW = "clock_skew"
REPLAYED = "replayed"
BAD_SIGNATURE = "bad_signature"
REASONS = frozenset({MISSING, MALFORMED, UNKNOWN_KEY, UNKNOWN_TOKEN, CLOCK_SKEW, REPLAYED,
                     BAD_SIGNATURE})


class Refused(Exception):
    """A request the helper does not serve; ``reason`` is one of ``REASONS``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class TokensFileError(ValueError):
    """A tokens file that cannot be used (the message names the file and line)."""


# --------------------------------------------------------------------------- #
# both sides                                                                   #
# --------------------------------------------------------------------------- #


def operation(path: str) -> str:
    """What a signature binds a request to: the path's last segment ("/measure")."""
    return "/" + path.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]


def signed_message(method: str, path: str, when: int, body: bytes) -> bytes:
    return "\n".join(
        (CONTEXT, method.upper(), operation(path), str(when), hashlib.sha256(body).hexdigest())
    ).encode()


def token_digest(token: str) -> str:
    """The line a helper's tokens file holds for ``token`` (after its name)."""
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class TokenLine:
    token: str = field(repr=False)  # for the volunteer
    entry: str  # for the helper's tokens file: the name and the token's digest


def tokens_line(name: str, token: str) -> TokenLine:
    if not _TOKEN_NAME.match(name):
        raise ValueError(f"{name[:70]!r}: a token's name is 1 to 64 letters, digits or ._@-")
    return TokenLine(token, f"{name} {token_digest(token)}")


# --------------------------------------------------------------------------- #
# the probe's side                                                             #
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class Enrolment:
    """What the probe may say about its own credentials (public: no secret in it)."""

    key_id: str | None = None
    ephemeral_key: bool = False
    token: bool = False


@dataclass(frozen=True)
class ControlCredentials:
    """How a probe authenticates to control helpers: a token when the NGO gave one,
    else a signature by its report signing key. Lives in the live network only."""

    key: SigningKey | None = None
    token: str | None = field(default=None, repr=False)
    clock: Callable[[], float] = field(default=time.time, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.token is not None and not _TOKEN.match(self.token):
            raise ValueError("a control token is 16 to 256 printable characters, no spaces")

    def authorization(self, method: str, path: str, body: bytes) -> str | None:
        """The ``Authorization`` header for this exact request (None: no credential)."""
        if self.token is not None:
            return f"Bearer {self.token}"
        if self.key is None:
            return None
        when = int(self.clock())
        signature = self.key.sign(signed_message(method, path, when, body))
        return (f"{SCHEME} key={self.key.public_key_b64}, time={when}, "
                f"signature={b64encode(signature)}")

    def enrolment(self) -> Enrolment:
        if self.token is not None:
            return Enrolment(token=True)
        if self.key is None:
            return Enrolment()
        return Enrolment(self.key.key_id, self.key.ephemeral)


def refusal_message(reason: Any, enrolment: Enrolment | None) -> str:
    """One line for the volunteer about a helper's 401: what to do about it.

    ``reason`` is what the helper said (any value: only known codes are used)."""
    enrolment = enrolment or Enrolment()
    if enrolment.token:
        if reason == UNKNOWN_TOKEN:
            return ("the control helper does not accept this probe's token "
                    "(--control-token): ask the NGO for a valid one")
        return "the control helper refused this probe's token (--control-token)"
    if enrolment.key_id is None:
        return ("the control helper serves only enrolled probes: sign with your key "
                "or give --control-token")
    if reason == CLOCK_SKEW:
        return ("the control helper refused the request's time: set this computer's "
                f"clock right (within {MAX_CLOCK_SKEW // 60} minutes)")
    if enrolment.ephemeral_key:
        return ("the control helper cannot know this run's throw-away key "
                "(--ephemeral-key): use your probe key or --control-token")
    if reason in (UNKNOWN_KEY, MISSING, None):
        return ("the control helper does not know this probe's key: ask the NGO to "
                f"enrol key {enrolment.key_id} (probe key show)")
    return f"the control helper refused this probe's signed request ({reason})"[:200]


# --------------------------------------------------------------------------- #
# the helper's side                                                            #
# --------------------------------------------------------------------------- #


def parse_tokens(text: str, path: str = "<tokens>") -> dict[str, str]:
    """A tokens file: ``name sha256:<hex>`` a line, ``#`` comments; digest -> name."""
    tokens: dict[str, str] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2 or not _TOKEN_NAME.match(parts[0]):
            raise TokensFileError(
                f"{path} line {lineno}: expected 'NAME sha256:HEX' (a name of letters, "
                "digits and ._@-, then the token's digest from `probe control token`)")
        match = _DIGEST.match(parts[1])
        if match is None:
            raise TokensFileError(
                f"{path} line {lineno}: {parts[0]}: the token must be given as "
                "sha256:<64 hex digits> (`probe control token NAME` prints the line)")
        tokens[match.group(1)] = parts[0]
    return tokens


def load_tokens(path: str) -> dict[str, str]:
    try:
        with open(path, encoding="utf-8") as stream:
            text = stream.read()
    except (OSError, UnicodeDecodeError) as error:
        raise TokensFileError(f"cannot read tokens file {path}: {error}") from None
    tokens = parse_tokens(text, path)
    if not tokens:
        raise TokensFileError(f"{path} lists no tokens, so nobody could use them")
    return tokens


@dataclass(frozen=True)
class Access:
    """Who a helper serves: enrolled keys (base64 keys or key ids, as in a
    trusted-keys file), token digests (hex -> name), and anonymous requests if
    ``open``. The default serves nobody."""

    trusted_keys: frozenset[str] | None = None
    tokens: Mapping[str, str] | None = None
    open: bool = False

    @classmethod
    def anyone(cls) -> Access:
        return cls(open=True)

    @property
    def serves_anyone(self) -> bool:
        return self.open or bool(self.trusted_keys) or bool(self.tokens)


@dataclass(frozen=True)
class Client:
    """Who is asking: a credential's name (None: anonymous) and its network."""

    name: str | None
    network: str

    @property
    def budget_names(self) -> tuple[str, ...]:
        """The names budgets are charged to: the credential and the network, each."""
        net = f"net {self.network}"
        return (net,) if self.name is None else (self.name, net)


@dataclass(frozen=True)
class Pending:
    """A request whose header passed; a key's signature is checked on the body."""

    name: str | None
    public_key: bytes | None = None
    when: int = 0
    signature: bytes = b""


def _parameters(text: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for part in text.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep or name in params:
            raise Refused(MALFORMED, f"expected {SCHEME} key=..., time=..., signature=...")
        params[name.strip().lower()] = value.strip()
    return params


class Gatekeeper:
    """The helper's check of each request against its ``Access``.

    ``check_header`` runs before the body is read; ``check_body`` after, for
    signed requests. Both raise ``Refused``, except on an ``open`` helper, where
    a credential it cannot accept makes the request anonymous (probes sign by
    default, and an open helper serves them all). The clock is wall time (the
    probe signs with its own wall clock)."""

    def __init__(
        self,
        access: Access,
        clock: Callable[[], float] = time.time,
        max_skew: int = MAX_CLOCK_SKEW,
        replay_cache: int = REPLAY_CACHE,
    ) -> None:
        self.access = access
        self.clock = clock
        self.max_skew = max_skew
        self.replay_cache = replay_cache
        self._seen: OrderedDict[bytes, int] = OrderedDict()  # signature -> its time

    def check_header(self, authorization: str | None) -> Pending:
        try:
            return self._check_header(authorization)
        except Refused:
            if self.access.open:
                return Pending(None)
            raise

    def _check_header(self, authorization: str | None) -> Pending:
        if not authorization:
            if self.access.open:
                return Pending(None)
            raise Refused(MISSING, "this control helper serves only enrolled probes: sign "
                                   "the request with your enrolled key or send your token")
        if len(authorization) > MAX_HEADER:
            raise Refused(MALFORMED, "Authorization header too long")
        scheme, _, rest = authorization.strip().partition(" ")
        if scheme.lower() == "bearer":
            return Pending(self._token_name(rest.strip()))
        if scheme != SCHEME:
            raise Refused(MALFORMED, f"unknown authorization scheme: use {SCHEME} or Bearer")
        params = _parameters(rest)
        try:
            public_key = decode_public_key(params.get("key", ""))
            signature = b64decode_strict(params.get("signature", ""), 64, "signature")
        except KeyFormatError as exc:
            raise Refused(MALFORMED, str(exc)) from None
        when_text = params.get("time", "")
        if not when_text.isascii() or not when_text.isdigit() or len(when_text) > 12:
            raise Refused(MALFORMED, "time must be whole unix seconds")
        key_id = fingerprint(public_key)
        trusted = self.access.trusted_keys or frozenset()
        if params["key"] not in trusted and key_id not in trusted:
            raise Refused(UNKNOWN_KEY, f"this control helper does not know key {key_id}: "
                                       "ask the NGO that runs it to enrol it")
        when = int(when_text)
        if abs(self.clock() - when) > self.max_skew:
            raise Refused(CLOCK_SKEW, f"the request's time is more than {self.max_skew} s "
                                      "off this helper's clock: set your clock right")
        return Pending(f"key {key_id}", public_key, when, signature)

    def _token_name(self, token: str) -> str:
        digest = hashlib.sha256(token.encode("utf-8", "replace")).hexdigest().encode()
        found = None
        # every digest is compared, with no early exit: the time taken does not
        # depend on which (if any) matched
        for known, name in (self.access.tokens or {}).items():
            if hmac.compare_digest(digest, known.encode()):
                found = name
        if found is None:
            raise Refused(UNKNOWN_TOKEN, "this control helper does not know this token")
        return f"token {found}"

    def check_body(self, pending: Pending, method: str, path: str, body: bytes) -> str | None:
        """Check a signed request's signature over its body, once (no replay);
        the name of the client it proves (None: anonymous)."""
        try:
            self._check_body(pending, method, path, body)
        except Refused:
            if self.access.open:
                return None
            raise
        return pending.name

    def _check_body(self, pending: Pending, method: str, path: str, body: bytes) -> None:
        if pending.public_key is None:
            return
        message = signed_message(method, path, pending.when, body)
        if not verify_raw(pending.public_key, pending.signature, message):
            raise Refused(BAD_SIGNATURE, "the signature does not match this request")
        now = self.clock()
        if pending.signature in self._seen:
            raise Refused(REPLAYED, "this signed request was already served")
        self._seen[pending.signature] = pending.when
        while self._seen:
            oldest, when = next(iter(self._seen.items()))
            if len(self._seen) > self.replay_cache or now - when > self.max_skew:
                del self._seen[oldest]
            else:
                break
