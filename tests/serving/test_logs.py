"""Log hygiene (probe.serving.logs): no address, no traceback, no forged line, no flood."""

from __future__ import annotations

import logging
import sys

import pytest

from probe.serving.logs import (
    ADDRESS,
    LogHygiene,
    clean_message,
    install,
    scrub_addresses,
)


@pytest.mark.parametrize(
    ("text", "scrubbed"),
    [
        ("Error handling request from 127.0.0.1", f"Error handling request from {ADDRESS}"),
        ("from 203.0.113.5.", f"from {ADDRESS}."),
        ("10.0.0.1/8 and 0.0.0.0", f"{ADDRESS}/8 and {ADDRESS}"),
        ("peer ::1 left", f"peer {ADDRESS} left"),
        ("from 2001:db8::5", f"from {ADDRESS}"),
        ("from 2001:DB8:0:0:1:0:0:1", f"from {ADDRESS}"),
        ("mapped ::ffff:127.0.0.1", f"mapped {ADDRESS}"),
        ("[::1]:8080", f"[{ADDRESS}]:8080"),
        ("::ffff:127.0.0.1:443", f"{ADDRESS}:443"),
        ("2001:db8:1:2:3:4:5:6:443", f"{ADDRESS}:443"),  # unbracketed, with a port
        ("fe80::1%eth0 went away", f"{ADDRESS} went away"),
        ("127.0.0.1,::1", f"{ADDRESS},{ADDRESS}"),
        # not addresses: left alone
        ("python 3.11.2 at 12:30:45", "python 3.11.2 at 12:30:45"),
        ("aiohttp 3.14.5, version 1.2.3.4.5", "aiohttp 3.14.5, version 1.2.3.4.5"),
        ("key ed25519:abcd::", "key ed25519:abcd::"),
        ("Foo::bar and ::", "Foo::bar and ::"),
        ("mac aa:bb:cc:dd:ee:ff", "mac aa:bb:cc:dd:ee:ff"),
        ("999.1.1.1", "999.1.1.1"),
    ],
)
def test_scrub_addresses(text, scrubbed):
    assert scrub_addresses(text) == scrubbed


def test_clean_message_escapes_control_characters_and_cuts_after_scrubbing():
    assert clean_message("bad\nINFO forged line\r\x1b[31m") == "bad\\nINFO forged line\\r\\x1b[31m"
    long = "x" * 295 + " 203.0.113.250"
    cleaned = clean_message(long, max_chars=300)
    assert "203.0" not in cleaned and cleaned.startswith("x" * 295)
    assert cleaned.endswith("... (5 characters cut)")  # 295 + len(" <address>") = 305
    assert len(clean_message("y" * 100_000)) < 330


def record(name="aiohttp.server", msg="Error handling request from %s", args=("127.0.0.1",),
           exc=True):
    exc_info = None
    if exc:
        try:
            raise ConnectionResetError("from 127.0.0.1")
        except ConnectionResetError:
            exc_info = sys.exc_info()
    return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, args, exc_info)


def test_a_record_loses_its_address_and_traceback_but_keeps_the_exception_type():
    hygiene = LogHygiene()
    item = record()
    assert hygiene.filter(item)
    assert item.getMessage() == f"Error handling request from {ADDRESS} (ConnectionResetError)"
    assert item.exc_info is None and item.exc_text is None and item.args is None
    formatted = logging.Formatter().format(item)
    assert "Traceback" not in formatted and "127.0.0.1" not in formatted


def test_a_bad_format_string_is_logged_not_raised():
    hygiene = LogHygiene()
    item = record(msg="%d from %s", args=("x",), exc=False)
    assert hygiene.filter(item)
    assert "unformattable" in item.getMessage()


def test_rate_limit_per_logger_then_one_line_says_how_many_were_suppressed():
    now = [0.0]
    hygiene = LogHygiene(per_minute=30, clock=lambda: now[0])
    passed = [hygiene.filter(record()) for _ in range(100)]
    assert passed.count(True) == 30 and passed[:30] == [True] * 30
    assert hygiene.filter(record(name="probe.collector"))  # another logger: its own budget
    now[0] += 2.0  # 30 a minute: one more record every 2 s
    item = record()
    assert hygiene.filter(item)
    assert item.getMessage().endswith("[70 log lines suppressed before this one]")
    assert not hygiene.filter(record())
    now[0] += 60.0
    assert [hygiene.filter(record()) for _ in range(40)].count(True) == 30


def test_install_covers_aiohttp_asyncio_and_children_and_uninstalls():
    child = logging.getLogger("probe.testserver.part")
    hygiene = install("probe.testserver")
    try:
        for name in ("aiohttp.server", "aiohttp.access", "asyncio", "probe.testserver",
                     "probe.testserver.part"):
            assert hygiene in logging.getLogger(name).filters, name
    finally:
        hygiene.uninstall()
    assert hygiene not in child.filters
    assert hygiene not in logging.getLogger("aiohttp.server").filters
