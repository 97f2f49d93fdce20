"""The HTML report, rendered by headless Chromium: what a reader sees, and nothing fetched."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest

from probe.aggregate import synthetic
from probe.aggregate.html import render
from probe.aggregate.queries import QUERIES, DuckDBEngine, aggregate

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CI"):
        pytest.fail("headless Chromium is missing: apt-get install -y chromium")
    pytest.skip("headless Chromium is missing (apt-get install -y chromium)")


class Dom(HTMLParser):
    """The rendered DOM as Chromium dumped it: text, tags, attributes."""

    def __init__(self):
        super().__init__()
        self.text: list[str] = []
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def find(self, tag, **attrs):
        return [
            a for t, a in self.tags if t == tag and all(a.get(k) == v for k, v in attrs.items())
        ]


def test_chromium_shows_the_tables_charts_and_queries(loaded, tmp_path):
    results = aggregate(DuckDBEngine(loaded))
    page = tmp_path / "report.html"
    page.write_text(render(results, rejected=1, rejections=[("x.jsonl", 3, "no signature")]))
    profile = tmp_path / "profile"
    completed = subprocess.run(
        [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    dom = Dom()
    dom.feed(completed.stdout)
    text = " ".join(" ".join(dom.text).split())
    assert "Blocking of messaging services, 2026-03-01 to 2026-03-07" in text
    total = len(synthetic.NETWORKS) * len(synthetic.SERVICES) * 7 * 2
    assert f"{total} verified measurements from 4 network(s) in 3 country(ies)" in text
    # The matrix: telegram in Iran is blocked in 13 of 14 days' runs on average of 2 networks.
    cell = dom.find("td", **{"data-country": "IR", "data-service": "telegram"})
    assert cell and "blocked" in cell[0]["title"]
    assert re.search(r"IR 50% 93% 21%", text), text[:500]
    # One timeline chart per service and network, each an inline SVG with its caption.
    figures = dom.find("figure", **{"class": "chart"})
    assert len(figures) == len(synthetic.NETWORKS) * len(synthetic.SERVICES)
    assert len(dom.find("svg")) == len(figures)
    assert "telegram in RU AS12389: blocked from 2026-03-04 02:02:00 to 2026-03-06 10:02:00" in text
    assert "whatsapp in DE AS3320: never seen blocked" in text
    # Every figure with its query.
    assert len(dom.find("details")) == 5
    for sql in QUERIES.values():
        assert " ".join(sql.split()) in text
    assert "x.jsonl:3: no signature" in text
    # Self-contained: nothing to fetch.
    assert not dom.find("script") and not dom.find("link") and not dom.find("img")
    assert "http://" not in completed.stdout.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_the_page_renders_to_pixels(loaded, tmp_path):
    page = tmp_path / "report.html"
    page.write_text(render(aggregate(DuckDBEngine(loaded))))
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            chromium(),
            *CHROMIUM_FLAGS,
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1200,1600",
            f"--screenshot={shot}",
            page.as_uri(),
        ],
        capture_output=True,
        timeout=90,
        check=False,
    )
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 20_000  # not a blank page
