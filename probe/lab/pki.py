"""The lab's certificate authorities and server certificates.

The fake Internet needs three independent roots: the lab root (what the
probe's ``--ca-bundle`` trusts, standing for the public Web PKI), a "pinned"
root (a private root a service pins in its app, as Signal does for its chat
servers) and a "censor" root nobody trusts (the interception root of
Kazakhstan 2019, used by the MITM proxy). Leaves are issued for DNS names or IP
addresses and are strictly RFC 5280-valid, because the probe verifies chains
with cryptography's strict path builder: SAN, serverAuth EKU, AKI/SKI, basic
constraints and key usage on every certificate.

Keys are EC P-256, so a full PKI for tens of names takes well under a second.
This module creates keys and certificates only; it trusts nothing and serves
nothing.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ONE_DAY = datetime.timedelta(days=1)


@dataclass(frozen=True)
class CertificateAuthority:
    """A root CA: its self-signed certificate and private key, both PEM."""

    certificate_pem: bytes
    key_pem: bytes

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.certificate_pem)

    @property
    def private_key(self) -> ec.EllipticCurvePrivateKey:
        key = serialization.load_pem_private_key(self.key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise TypeError("lab CA keys are EC keys")
        return key

    @classmethod
    def load(cls, certificate: str | Path, key: str | Path) -> CertificateAuthority:
        return cls(Path(certificate).read_bytes(), Path(key).read_bytes())


@dataclass(frozen=True)
class LeafCertificate:
    """A server certificate and its private key, both PEM."""

    certificate_pem: bytes
    key_pem: bytes

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.certificate_pem)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """PKCS#8 PEM, unencrypted (lab keys protect nothing real)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def create_root_ca(
    common_name: str, *, organization: str = "probe lab", valid_days: int = 3650
) -> CertificateAuthority:
    """A new self-signed root CA (valid from a year ago, so back-dated leaves chain)."""
    key = new_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    now = _now()
    public_key = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - 365 * ONE_DAY)
        .not_valid_after(now + valid_days * ONE_DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(
        certificate.public_bytes(serialization.Encoding.PEM), private_key_pem(key)
    )


def _subject_alternative_names(names: Sequence[str]) -> list[x509.GeneralName]:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name.rstrip(".").lower()))
    return entries


def issue_leaf(
    ca: CertificateAuthority,
    names: Sequence[str],
    *,
    expired: bool = False,
    valid_days: int = 365,
    key: ec.EllipticCurvePrivateKey | None = None,
) -> LeafCertificate:
    """A server certificate for ``names`` (DNS names, ``*.`` wildcards or IP
    addresses) signed by ``ca``. ``expired`` makes one that ended yesterday;
    ``key`` reuses a key (the MITM proxy signs many leaves for one key)."""
    if not names:
        raise ValueError("a leaf certificate needs at least one name")
    key = key or new_key()
    issuer = ca.certificate
    issuer_key = ca.private_key
    now = _now()
    if expired:
        not_before, not_after = now - 90 * ONE_DAY, now - ONE_DAY
    else:
        not_before, not_after = now - ONE_DAY, now + valid_days * ONE_DAY
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64])])
    public_key = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(_subject_alternative_names(names)), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            ),
            critical=False,
        )
        .sign(issuer_key, hashes.SHA256())
    )
    return LeafCertificate(
        certificate.public_bytes(serialization.Encoding.PEM), private_key_pem(key)
    )


# --------------------------------------------------------------------------- #
# A PKI on disk, for servers (the ssl module loads certificates from files)   #
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class KeyPair:
    """Paths of a PEM certificate and its PEM private key."""

    cert: Path
    key: Path

    def to_json(self) -> dict[str, str]:
        return {"cert": str(self.cert), "key": str(self.key)}


@dataclass(frozen=True)
class PkiPaths:
    """Where :func:`write_pki` put everything.

    ``leaves`` are the certificates real servers present (issued by the lab
    root, or by the pinned root for ``pinned_names``); ``expired`` are the same
    names, issued by the same root, but expired; ``censor`` are the same names
    issued by the untrusted censor root (a "wrong CA" server).
    """

    directory: Path
    lab_root: KeyPair
    pinned_root: KeyPair
    censor_root: KeyPair
    leaves: dict[str, KeyPair] = field(default_factory=dict)
    expired: dict[str, KeyPair] = field(default_factory=dict)
    censor: dict[str, KeyPair] = field(default_factory=dict)
    pinned_names: tuple[str, ...] = ()

    def to_json(self) -> dict[str, object]:
        return {
            "directory": str(self.directory),
            "lab_root": self.lab_root.to_json(),
            "pinned_root": self.pinned_root.to_json(),
            "censor_root": self.censor_root.to_json(),
            "leaves": {n: p.to_json() for n, p in self.leaves.items()},
            "expired": {n: p.to_json() for n, p in self.expired.items()},
            "censor": {n: p.to_json() for n, p in self.censor.items()},
            "pinned_names": list(self.pinned_names),
        }


MANIFEST = "pki.json"


def file_stem(name: str) -> str:
    """A file name for a certificate name: ``*.example.org`` -> ``_wildcard.example.org``,
    ``2001:db8::1`` -> ``2001_db8__1``."""
    return name.rstrip(".").lower().replace("*", "_wildcard").replace(":", "_").replace("/", "_")


def _write(directory: Path, stem: str, certificate_pem: bytes, key_pem: bytes) -> KeyPair:
    directory.mkdir(parents=True, exist_ok=True)
    pair = KeyPair(directory / f"{stem}.pem", directory / f"{stem}.key")
    pair.cert.write_bytes(certificate_pem)
    pair.key.touch(mode=0o600)
    pair.key.write_bytes(key_pem)
    return pair


def write_pki(
    directory: str | Path, names: Iterable[str], *, pinned_names: Iterable[str] = ()
) -> PkiPaths:
    """Create the three roots and, for every name, a leaf, an expired leaf and a
    censor-signed leaf, under ``directory``; also writes ``pki.json`` (see
    :func:`load_pki`). ``pinned_names`` get their leaves from the pinned root.

    Layout: ``roots/{lab,pinned,censor}.{pem,key}``, ``leaves/NAME.{pem,key}``,
    ``expired/NAME.{pem,key}``, ``censor/NAME.{pem,key}``.
    """
    directory = Path(directory)
    pinned = tuple(dict.fromkeys(pinned_names))
    public = tuple(n for n in dict.fromkeys(names) if n not in pinned)
    roots = {
        "lab": create_root_ca("probe lab root"),
        "pinned": create_root_ca("probe lab pinned root", organization="pinned service"),
        "censor": create_root_ca("probe lab censor root", organization="censor"),
    }
    root_paths = {
        label: _write(directory / "roots", label, ca.certificate_pem, ca.key_pem)
        for label, ca in roots.items()
    }
    paths = PkiPaths(
        directory=directory,
        lab_root=root_paths["lab"],
        pinned_root=root_paths["pinned"],
        censor_root=root_paths["censor"],
        pinned_names=pinned,
    )
    for name in public + pinned:
        issuer = roots["pinned"] if name in pinned else roots["lab"]
        stem = file_stem(name)
        for kind, ca, expired in (
            ("leaves", issuer, False),
            ("expired", issuer, True),
            ("censor", roots["censor"], False),
        ):
            leaf = issue_leaf(ca, [name], expired=expired)
            getattr(paths, kind)[name] = _write(
                directory / kind, stem, leaf.certificate_pem, leaf.key_pem
            )
    (directory / MANIFEST).write_text(json.dumps(paths.to_json(), indent=2) + "\n")
    return paths


def load_pki(directory: str | Path) -> PkiPaths:
    """The PkiPaths of a directory made by :func:`write_pki`."""
    data = json.loads((Path(directory) / MANIFEST).read_text())

    def pair(item: dict[str, str]) -> KeyPair:
        return KeyPair(Path(item["cert"]), Path(item["key"]))

    return PkiPaths(
        directory=Path(data["directory"]),
        lab_root=pair(data["lab_root"]),
        pinned_root=pair(data["pinned_root"]),
        censor_root=pair(data["censor_root"]),
        leaves={n: pair(p) for n, p in data["leaves"].items()},
        expired={n: pair(p) for n, p in data["expired"].items()},
        censor={n: pair(p) for n, p in data["censor"].items()},
        pinned_names=tuple(data["pinned_names"]),
    )
