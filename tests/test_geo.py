"""Offline ASN and country lookup, against small MMDB files built here for the lab ranges.

The files are written with the ``mmdb-writer`` package (a test dependency) in the
layouts of the databases volunteers actually download, and read back with the
same ``maxminddb`` reader the probe uses.
"""

from __future__ import annotations

import pytest

from probe.geo import GeoDatabase, GeoDatabaseError, GeoInfo

try:  # builds the test databases: the point of these tests, so never skipped
    import mmdb_writer
    from netaddr import IPSet  # installed with mmdb-writer
except ImportError as error:  # pragma: no cover - a missing test dependency
    raise ImportError(
        "tests/test_geo.py builds MMDB files with mmdb-writer: pip install -e '.[test]' "
        "(or pip install mmdb-writer)"
    ) from error

LAB_ISP = "198.51.100.0/24"
LAB_NET = "203.0.113.0/24"
LAB_V6 = "2001:db8:100::/48"


def write_mmdb(path, database_type, entries, ip_version=6):
    writer = mmdb_writer.MMDBWriter(
        ip_version=ip_version, database_type=database_type,
        ipv4_compatible=ip_version == 6, description="probe test database",
    )
    for network, record in entries:
        writer.insert_network(IPSet([network]), record)
    writer.to_db_file(str(path))
    return path


@pytest.fixture
def asn_db(tmp_path):
    """The layout of GeoLite2-ASN and DB-IP's dbip-asn-lite."""
    return write_mmdb(tmp_path / "asn.mmdb", "GeoLite2-ASN", [
        (LAB_ISP, {"autonomous_system_number": 64500, "autonomous_system_organization": "Lab ISP"}),
        (LAB_NET, {"autonomous_system_number": 64496, "autonomous_system_organization": "Lab Net"}),
        (LAB_V6, {"autonomous_system_number": 64501,
                  "autonomous_system_organization": "Lab ISP v6"}),
    ])


@pytest.fixture
def country_db(tmp_path):
    """The layout of GeoLite2-Country and dbip-country-lite."""
    return write_mmdb(tmp_path / "country.mmdb", "GeoLite2-Country", [
        (LAB_ISP, {"country": {"iso_code": "DE", "names": {"en": "Germany"}}}),
        (LAB_NET, {"registered_country": {"iso_code": "br"}}),
        (LAB_V6, {"country": {"iso_code": "FR"}}),
    ])


def test_asn_and_country_files_together(asn_db, country_db):
    with GeoDatabase.open(asn_db, country_db) as geo:
        assert geo.lookup("198.51.100.7") == GeoInfo("AS64500", "DE", "Lab ISP")
        assert geo.lookup("203.0.113.9") == GeoInfo("AS64496", "BR", "Lab Net")
        assert geo.lookup("2001:db8:100:1::2") == GeoInfo("AS64501", "FR", "Lab ISP v6")
        assert geo.lookup("::ffff:198.51.100.7") == GeoInfo("AS64500", "DE", "Lab ISP")
        assert geo.lookup("[2001:db8:100:1::2]") == GeoInfo("AS64501", "FR", "Lab ISP v6")


def test_unknown_private_and_malformed_addresses_give_nothing(asn_db):
    with GeoDatabase.open(asn_db) as geo:
        for address in ("192.168.1.1", "10.0.0.1", "2001:db8:999::1", "not an ip", "", None):
            assert geo.lookup(address) == GeoInfo(None, None, None)


def test_one_file_answers_what_it_knows(asn_db):
    with GeoDatabase.open(asn_db) as geo:
        assert geo.lookup("198.51.100.7") == GeoInfo("AS64500", None, "Lab ISP")


def test_combined_layout_like_ipinfo_country_asn(tmp_path):
    path = write_mmdb(tmp_path / "country_asn.mmdb", "ipinfo country_asn.mmdb", [
        (LAB_ISP, {"asn": "AS64500", "as_name": "Lab ISP", "country": "DE",
                   "country_name": "Germany"}),
        (LAB_NET, {"asn": "64496", "as_org": "Lab Net", "country_code": "nl"}),
    ])
    with GeoDatabase.open(path) as geo:
        assert geo.lookup("198.51.100.1") == GeoInfo("AS64500", "DE", "Lab ISP")
        assert geo.lookup("203.0.113.1") == GeoInfo("AS64496", "NL", "Lab Net")


def test_enterprise_layout_with_traits(tmp_path):
    path = write_mmdb(tmp_path / "enterprise.mmdb", "GeoIP2-Enterprise", [
        (LAB_ISP, {"traits": {"autonomous_system_number": 64500, "isp": "Lab ISP"},
                   "country": {"iso_code": "DE"}}),
    ])
    with GeoDatabase.open(path) as geo:
        assert geo.lookup("198.51.100.1") == GeoInfo("AS64500", "DE", "Lab ISP")


def test_ipv4_only_file_is_not_asked_about_ipv6(tmp_path):
    path = write_mmdb(tmp_path / "v4.mmdb", "GeoLite2-ASN", [
        (LAB_ISP, {"autonomous_system_number": 64500, "autonomous_system_organization": "Lab ISP"}),
    ], ip_version=4)
    with GeoDatabase.open(path) as geo:
        assert geo.lookup("198.51.100.1").asn == "AS64500"
        assert geo.lookup("2001:db8:100::1") == GeoInfo(None, None, None)


def test_missing_and_wrong_files_say_what_to_do(tmp_path):
    with pytest.raises(GeoDatabaseError, match="no such file.*privacy.md"):
        GeoDatabase.open(tmp_path / "nothing.mmdb")
    csv = tmp_path / "dbip-asn-lite.csv"
    csv.write_text("198.51.100.0,198.51.100.255,64500,Lab ISP\n")
    with pytest.raises(GeoDatabaseError, match="not a MaxMind DB"):
        GeoDatabase.open(csv)
