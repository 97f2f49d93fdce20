"""Ed25519 key pairs for the probe and for the control helper, and where they live.

A probe's key is created on first use in the user's config directory
(``platformdirs.user_config_dir("probe")``): the directory is made 0700 and the
key file 0600, and a key file that other users can read is refused, as ssh does,
because a leaked key lets anyone sign reports in the volunteer's name. The
control helper uses the same code with another file name. An ephemeral key
(:func:`generate_ephemeral`) never touches the disk. See docs/signing.md for the
key id and the privacy trade-off between the two kinds of key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

import platformdirs
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

PROBE_KEY_FILE = "probe-key.pem"
CONTROL_KEY_FILE = "control-key.pem"

#: Hex characters of SHA-256(raw public key) that make a key id (64 bits).
KEY_ID_HEX_CHARS = 16
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64

#: The field prime of Curve25519, p = 2**255 - 19 (RFC 8032 section 5.1).
_FIELD_PRIME = 2**255 - 19

#: Encodings of the eight points of small order (1, 2, 4 or 8) on Ed25519, and
#: the other spellings of them that lenient decoders accept. A "public key" that
#: is one of them has no secret behind it: with the identity point (order 1) the
#: signature R = identity, S = 0 verifies for *every* message, and the others
#: sign every message with probability 1/8 or more. OpenSSL (hence
#: ``cryptography``) and Go accept them, libsodium refuses them
#: (``has_small_order`` in crypto_sign/ed25519/ref10/open.c blocks the same
#: encodings); a report verified by one must not fail in another, so probe
#: refuses them everywhere a key is read. The eight canonical encodings are the
#: 8-torsion subgroup (points P with 8P = identity), derived from the curve
#: equation of RFC 8032 section 5.1 and checked by
#: tests/report/test_signing.py; the six others set the sign bit of x where x
#: is 0 (RFC 8032 5.1.3 step 4 forbids it) or write y as y + p (step 1).
SMALL_ORDER_PUBLIC_KEYS = frozenset(
    bytes.fromhex(text)
    for text in (
        # order 1: the identity point (x = 0, y = 1)
        "0100000000000000000000000000000000000000000000000000000000000000",
        # order 2: (0, -1)
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        # order 4: (+/-sqrt(-1), 0)
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0000000000000000000000000000000000000000000000000000000000000080",
        # order 8: the four points P with 2P of order 4
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
        # non-canonical: identity and (0, -1) with the sign bit of x = 0 set
        "0100000000000000000000000000000000000000000000000000000000000080",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        # non-canonical: y = p (that is 0, order 4) and y = p + 1 (that is 1, the identity)
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    )
)


class KeyFileError(Exception):
    """A key file cannot be created or used; the message says what to do."""


class KeyFormatError(ValueError):
    """A public key, key id or signature string is not in the documented encoding."""


@dataclass(frozen=True, eq=False)
class SigningKey:
    """An Ed25519 private key with its public identity; ``path`` is None if ephemeral."""

    private_key: Ed25519PrivateKey
    path: Path | None = None

    @property
    def public_key_raw(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @property
    def public_key_b64(self) -> str:
        return public_key_b64(self.public_key_raw)

    @property
    def key_id(self) -> str:
        return fingerprint(self.public_key_raw)

    @property
    def ephemeral(self) -> bool:
        return self.path is None

    def sign(self, message: bytes) -> bytes:
        return self.private_key.sign(message)

    def __repr__(self) -> str:  # never print key material
        where = "ephemeral" if self.path is None else str(self.path)
        return f"SigningKey(key_id={self.key_id!r}, {where})"


# --------------------------------------------------------------------------- #
# encodings                                                                    #
# --------------------------------------------------------------------------- #


def b64encode(raw: bytes) -> str:
    """Standard base64 (RFC 4648 section 4) with padding, as used in every signature."""
    return base64.b64encode(raw).decode("ascii")


def b64decode_strict(text: str, length: int, what: str) -> bytes:
    """Decode canonical padded base64 of exactly ``length`` bytes, or raise KeyFormatError.

    Re-encoding and comparing rejects strings whose unused low bits are not zero:
    such a string decodes to the same bytes as the canonical one, so accepting it
    would let someone change a line's bytes without touching what is signed.
    """
    if not isinstance(text, str):
        raise KeyFormatError(f"{what} is not a string")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise KeyFormatError(f"{what} is not valid base64") from None
    if len(raw) != length:
        raise KeyFormatError(f"{what} is {len(raw)} bytes, expected {length}")
    if b64encode(raw) != text:
        raise KeyFormatError(f"{what} is not in canonical base64")
    return raw


def public_key_b64(public_key_raw: bytes) -> str:
    """The base64 form of a 32-byte raw Ed25519 public key."""
    return b64encode(public_key_raw)


def fingerprint(public_key: bytes | str) -> str:
    """Key id: the first 16 lowercase hex chars of SHA-256 over the 32 raw public key bytes.

    Accepts the raw bytes or their base64 form.
    """
    raw = public_key if isinstance(public_key, bytes) else decode_public_key(public_key)
    if len(raw) != PUBLIC_KEY_BYTES:
        raise KeyFormatError(f"public key is {len(raw)} bytes, expected {PUBLIC_KEY_BYTES}")
    return hashlib.sha256(raw).hexdigest()[:KEY_ID_HEX_CHARS]


def decode_public_key(text: str) -> bytes:
    """Raw bytes of a base64 public key; raises KeyFormatError.

    Refuses, besides bad base64, every key :func:`public_key_problem` refuses.
    """
    raw = b64decode_strict(text, PUBLIC_KEY_BYTES, "public key")
    problem = public_key_problem(raw)
    if problem:
        raise KeyFormatError(problem)
    return raw


def public_key_problem(public_key_raw: bytes) -> str:
    """Why 32 bytes are not an acceptable Ed25519 public key, or "" if they are.

    Refused: a y coordinate written as y + p (RFC 8032 section 5.1.3 says decoding
    fails; OpenSSL decodes it anyway) and the small-order points of
    :data:`SMALL_ORDER_PUBLIC_KEYS`, whatever their spelling. Whether the bytes
    are a point at all is left to the signature check, which then fails.
    """
    if len(public_key_raw) != PUBLIC_KEY_BYTES:
        return f"public key is {len(public_key_raw)} bytes, expected {PUBLIC_KEY_BYTES}"
    if public_key_raw in SMALL_ORDER_PUBLIC_KEYS:
        return (
            "public key is a point of small order, which has no private key and "
            "verifies forged signatures; refused, as libsodium does"
        )
    y = int.from_bytes(public_key_raw, "little") & ((1 << 255) - 1)
    if y >= _FIELD_PRIME:
        return "public key is not canonically encoded (its y coordinate is not below 2**255 - 19)"
    return ""


def is_key_id(text: str) -> bool:
    return len(text) == KEY_ID_HEX_CHARS and all(c in "0123456789abcdef" for c in text)


def verify_raw(public_key_raw: bytes, signature: bytes, message: bytes) -> bool:
    """True if ``signature`` is a valid Ed25519 signature of ``message`` by that key.

    A key :func:`public_key_problem` refuses (small order, non-canonical) never
    verifies anything, whatever the library below would say, and neither does a
    signature whose R is a small-order point.
    """
    if public_key_problem(public_key_raw):
        return False
    if signature[:PUBLIC_KEY_BYTES] in SMALL_ORDER_PUBLIC_KEYS:
        # R of small order: only a signer who chose it makes one (R = identity,
        # S = k * a verifies under OpenSSL). libsodium refuses it; so do we, so
        # that no line verifies here and fails there.
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key_raw).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


# --------------------------------------------------------------------------- #
# key files                                                                    #
# --------------------------------------------------------------------------- #


def default_key_dir() -> Path:
    return Path(platformdirs.user_config_dir("probe"))


def default_key_path() -> Path:
    """Where the probe's long-lived key lives unless ``--key FILE`` says otherwise."""
    return default_key_dir() / PROBE_KEY_FILE


def default_control_key_path() -> Path:
    """Where the control helper's key lives unless told otherwise."""
    return default_key_dir() / CONTROL_KEY_FILE


def generate_ephemeral() -> SigningKey:
    """A fresh key that lives only in memory (``--ephemeral-key``)."""
    return SigningKey(Ed25519PrivateKey.generate())


def load_or_create_key(path: str | os.PathLike[str] | None = None) -> SigningKey:
    """Load the probe's key from ``path`` (default: the config dir), creating it if absent."""
    return _load_or_create(Path(path) if path is not None else default_key_path())


def load_or_create_control_key(path: str | os.PathLike[str] | None = None) -> SigningKey:
    """Same as :func:`load_or_create_key`, for the control helper's own key."""
    return _load_or_create(Path(path) if path is not None else default_control_key_path())


def create_key(path: str | os.PathLike[str] | None = None) -> SigningKey:
    """Create a new key file (``probe keygen``); refuses to overwrite an existing one."""
    target = Path(path) if path is not None else default_key_path()
    key = SigningKey(Ed25519PrivateKey.generate(), target)
    if not _write_new_key_file(target, key.private_key):
        raise KeyFileError(
            f"{target} already exists; refusing to replace a key that may have signed "
            "reports (move it away first if you really want a new one)"
        )
    return key


def load_key(path: str | os.PathLike[str]) -> SigningKey:
    """Load an existing key file; raises KeyFileError with a reason and a remedy."""
    target = Path(path)
    try:
        info = target.stat()
    except FileNotFoundError:
        raise KeyFileError(f"{target} does not exist (create it with `probe keygen`)") from None
    except OSError as error:
        raise KeyFileError(f"cannot read key file {target}: {error.strerror}") from None
    if os.name == "posix" and info.st_mode & 0o077:
        raise KeyFileError(
            f"key file {target} can be read by other users (mode "
            f"{stat.S_IMODE(info.st_mode):04o}); run `chmod 600 {target}`, and consider the "
            "key leaked if others had access"
        )
    try:
        data = target.read_bytes()
    except OSError as error:
        raise KeyFileError(f"cannot read key file {target}: {error.strerror}") from None
    try:
        private_key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as error:
        raise KeyFileError(
            f"{target} is not an unencrypted PEM private key ({error})"
        ) from None
    if not isinstance(private_key, Ed25519PrivateKey):
        raise KeyFileError(f"{target} holds a {type(private_key).__name__}, not an Ed25519 key")
    return SigningKey(private_key, target)


def _load_or_create(target: Path) -> SigningKey:
    if not target.exists():
        key = SigningKey(Ed25519PrivateKey.generate(), target)
        if _write_new_key_file(target, key.private_key):
            return key
        # Another process created it between our check and our write: use theirs.
    return load_key(target)


def _write_new_key_file(target: Path, private_key: Ed25519PrivateKey) -> bool:
    """Write ``private_key`` to ``target`` atomically, 0600, never replacing a file.

    Returns False if ``target`` already exists. The key is written to a temporary
    file in the same directory, fsynced, then hard-linked into place: a crash
    never leaves a half-written key, and two probes starting at once agree on
    one key instead of each signing with a key the other overwrote.
    """
    pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    directory = target.parent
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as error:
        raise KeyFileError(f"cannot create key directory {directory}: {error.strerror}") from None
    if target.exists():
        return False
    try:
        # mkstemp creates the file 0600 from the start: never readable by others.
        handle, temporary = tempfile.mkstemp(prefix=".key-", dir=directory)
    except OSError as error:
        raise KeyFileError(f"cannot write in {directory}: {error.strerror}") from None
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(pem)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o600)
        try:
            os.link(temporary, target)
        except FileExistsError:
            return False
        except OSError:
            # Filesystems without hard links: rename is still atomic, though it
            # could replace a key another process created in the same instant.
            if target.exists():
                return False
            os.replace(temporary, target)
        _fsync_directory(directory)
        return True
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def _fsync_directory(directory: Path) -> None:
    if os.name != "posix":
        return
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
