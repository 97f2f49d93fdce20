"""Certificate-chain verification as a pure function, so replays judge it again.

The TLS step records the chain a server presented; this module decides whether
that chain is valid for the name, against one trust store: the endpoint's pinned
CA (Signal pins its own root), the run's ``--ca-bundle``, or the system store.
The failure strings are those of ``probe.net.failures``. Verification uses
cryptography's RFC 5280 path builder; when it refuses a chain we explain why in
OONI's terms: wrong name, expired/malformed, or an authority we do not trust
(the signature of interception, as in Kazakhstan 2019).
"""

from __future__ import annotations

import base64
import datetime
import functools
import ipaddress
import re
import ssl
import warnings
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509 import DNSName, IPAddress
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from probe.net import failures

_PEM_BLOCK = re.compile(
    rb"-----BEGIN CERTIFICATE-----\s+.+?\s+-----END CERTIFICATE-----", re.DOTALL
)


def parse_pem_bundle(pem: str | bytes) -> list[x509.Certificate]:
    """Every certificate of a PEM bundle that parses; broken ones are skipped."""
    data = pem.encode() if isinstance(pem, str) else pem
    certificates = []
    for block in _PEM_BLOCK.findall(data):
        try:
            with warnings.catch_warnings():  # old roots with non-positive serials
                warnings.simplefilter("ignore")
                certificates.append(x509.load_pem_x509_certificate(block))
        except ValueError:
            continue
    return certificates


def system_trust_pem() -> bytes:
    """The system's CA bundle (Debian/Fedora/macOS via OpenSSL paths, else certifi)."""
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile):
        if candidate and Path(candidate).is_file():
            return Path(candidate).read_bytes()
    try:
        import certifi

        return Path(certifi.where()).read_bytes()
    except ImportError:  # pragma: no cover - depends on the platform
        return b""


@functools.lru_cache(maxsize=32)
def _store(trust_pem: str | None) -> Store | None:
    roots = parse_pem_bundle(trust_pem if trust_pem is not None else system_trust_pem())
    return Store(roots) if roots else None


def _name_matches(certificate: x509.Certificate, server_name: str) -> bool:
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError):
        return False
    try:
        address = ipaddress.ip_address(server_name)
    except ValueError:
        address = None
    if address is not None:
        return address in san.get_values_for_type(x509.IPAddress)
    name = server_name.rstrip(".").lower()
    for pattern in san.get_values_for_type(x509.DNSName):
        pattern = pattern.lower()
        if pattern == name:
            return True
        if pattern.startswith("*.") and "." in name:
            if name.split(".", 1)[1] == pattern[2:]:
                return True
    return False


def verify_chain(
    chain_b64: tuple[str, ...] | list[str],
    server_name: str,
    trust_pem: str | None,
    at: datetime.datetime,
) -> str | None:
    """None when the chain is valid for ``server_name`` at time ``at``, else a failure.

    ``trust_pem`` is the PEM text of the trusted roots; None means the system store.
    """
    if not chain_b64:
        return failures.SSL_INVALID_CERTIFICATE
    try:
        chain = [x509.load_der_x509_certificate(base64.b64decode(c)) for c in chain_b64]
    except ValueError:
        return failures.SSL_INVALID_CERTIFICATE
    leaf, intermediates = chain[0], chain[1:]
    store = _store(trust_pem)
    if store is None:
        return failures.SSL_UNKNOWN_AUTHORITY
    subject: IPAddress | DNSName
    try:
        subject = IPAddress(ipaddress.ip_address(server_name))
    except ValueError:
        subject = DNSName(server_name.rstrip("."))
    if at.tzinfo is None:
        at = at.replace(tzinfo=datetime.timezone.utc)
    try:
        verifier = PolicyBuilder().store(store).time(at).build_server_verifier(subject)
        verifier.verify(leaf, intermediates)
        return None
    except (VerificationError, ValueError):
        pass
    try:
        if not _name_matches(leaf, server_name):
            return failures.SSL_INVALID_HOSTNAME
        if not (leaf.not_valid_before_utc <= at <= leaf.not_valid_after_utc):
            return failures.SSL_INVALID_CERTIFICATE
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType):
        return failures.SSL_INVALID_CERTIFICATE  # a leaf too broken to even explain
    return failures.SSL_UNKNOWN_AUTHORITY


def chain_summary(chain_b64: tuple[str, ...] | list[str]) -> list[dict[str, str]]:
    """Subject, issuer and SHA-256 of each certificate, for reports and tables."""
    summary = []
    for c in chain_b64:
        try:
            cert = x509.load_der_x509_certificate(base64.b64decode(c))
        except ValueError:
            summary.append({"error": "unparseable certificate"})
            continue
        summary.append({
            "subject": cert.subject.rfc4514_string(),
            "issuer": cert.issuer.rfc4514_string(),
            "sha256": cert.fingerprint(hashes.SHA256()).hex(),
        })
    return summary
