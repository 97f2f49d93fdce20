"""The network (AS number and name) and country of an address, from an offline MMDB file.

Reports say which network and country a measurement comes from (``probe_asn``,
``probe_cc``, ``resolver_asn``), never the address itself. The lookup is local:
:class:`GeoDatabase` reads MaxMind DB files (``--asn-db FILE``) with the
``maxminddb`` reader and sends nothing anywhere. It understands the common
layouts, so a volunteer can use whichever free database they can get:

- MaxMind GeoLite2-ASN and DB-IP's ``dbip-asn-lite``: ``autonomous_system_number``
  and ``autonomous_system_organization`` at the top level;
- GeoLite2-Country/City and DB-IP's ``dbip-country-lite``/``dbip-city-lite``:
  ``country.iso_code`` (else ``registered_country.iso_code``);
- combined files such as IPinfo's ``country_asn``: ``asn`` ("AS13335" or a
  number), ``as_name``/``as_org``, ``country``/``country_code`` as a code;
- GeoIP2 ISP/Enterprise: ``traits.autonomous_system_number``, ``isp``.

Several files can be opened together (an ASN file and a country file): each
field comes from the first file that has it. See docs/privacy.md for where to
get one.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from typing import Any, NamedTuple, Self

__all__ = ["GeoDatabase", "GeoDatabaseError", "GeoInfo"]

_CC = re.compile(r"[A-Za-z]{2}\Z")
_ASN = re.compile(r"(?:AS)?(\d{1,10})\Z", re.IGNORECASE)


class GeoDatabaseError(Exception):
    """A database file cannot be used; ``str()`` says which and what to do."""


class GeoInfo(NamedTuple):
    """What a database says about an address; None where it says nothing."""

    asn: str | None  # "AS64500"
    cc: str | None  # "DE" (ISO 3166-1 alpha-2, upper case)
    network_name: str | None  # "Lab ISP"


UNKNOWN = GeoInfo(None, None, None)


class GeoDatabase:
    """One or more open MMDB files. Use :meth:`open`; close it (or use ``with``)."""

    def __init__(self, readers: list[Any], paths: list[str]) -> None:
        self._readers = readers
        self.paths = paths

    @classmethod
    def open(cls, path: str | os.PathLike[str], *more: str | os.PathLike[str]) -> GeoDatabase:
        """Open ``path`` (and ``more`` files); raise :class:`GeoDatabaseError` if unusable."""
        try:
            import maxminddb
        except ImportError as error:  # pragma: no cover - a declared dependency
            raise GeoDatabaseError(
                "the maxminddb package is missing: pip install maxminddb"
            ) from error
        readers, paths = [], []
        try:
            for each in (path, *more):
                name = os.fspath(each)
                try:
                    readers.append(maxminddb.open_database(name))
                except FileNotFoundError:
                    raise GeoDatabaseError(
                        f"{name}: no such file; see docs/privacy.md for where to get a database"
                    ) from None
                except (OSError, ValueError, maxminddb.InvalidDatabaseError) as error:
                    raise GeoDatabaseError(
                        f"{name}: not a MaxMind DB (.mmdb) file ({error}); "
                        "download the .mmdb format, not CSV"
                    ) from None
                paths.append(name)
        except GeoDatabaseError:
            for reader in readers:
                reader.close()
            raise
        return cls(readers, paths)

    def lookup(self, address: str | None) -> GeoInfo:
        """(asn, cc, network_name) for ``address``; all None for unknown or private ones."""
        if not address:
            return UNKNOWN
        try:
            ip = ipaddress.ip_address(str(address).strip().strip("[]").split("%", 1)[0])
        except ValueError:
            return UNKNOWN
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        asn = cc = name = None
        for reader in self._readers:
            if ip.version == 6 and reader.metadata().ip_version == 4:
                continue  # an IPv4-only file cannot answer (and would raise)
            try:
                record = reader.get(ip)
            except ValueError:
                continue
            if not isinstance(record, Mapping):
                continue
            found_asn, found_name = _asn_of(record)
            asn = asn or found_asn
            name = name or found_name
            cc = cc or _cc_of(record)
            if asn and cc and name:
                break
        return GeoInfo(asn, cc, name)

    def close(self) -> None:
        for reader in self._readers:
            reader.close()
        self._readers = []

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _asn_of(record: Mapping[str, Any]) -> tuple[str | None, str | None]:
    found = record.get("traits")
    traits: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
    number = (
        record.get("autonomous_system_number")
        or record.get("asn")
        or traits.get("autonomous_system_number")
    )
    name = (
        record.get("autonomous_system_organization")
        or record.get("as_name")
        or record.get("as_org")
        or traits.get("autonomous_system_organization")
        or record.get("isp")
        or traits.get("isp")
    )
    asn = None
    if isinstance(number, int) and not isinstance(number, bool) and number > 0:
        asn = f"AS{number}"
    elif isinstance(number, str):
        match = _ASN.match(number.strip())
        if match and int(match.group(1)) > 0:
            asn = f"AS{int(match.group(1))}"
    return asn, name if isinstance(name, str) and name.strip() else None


def _cc_of(record: Mapping[str, Any]) -> str | None:
    for key in ("country", "registered_country", "country_code"):
        value = record.get(key)
        if isinstance(value, Mapping):
            value = value.get("iso_code")
        if isinstance(value, str) and _CC.match(value):
            return value.upper()
    return None
