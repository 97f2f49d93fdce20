"""Every endpoint cites its source: the `source` key, `require_sources`, and
`probe targets list --sources`.

Nothing here touches the network: the files are parsed, and the CLI only lists them.
"""

from __future__ import annotations

import datetime
import subprocess
import sys
from pathlib import Path

import pytest
from test_targets import REPO_ROOT
from test_targets_fast import both

from probe.targets import Source, TargetsError, default_targets_path, load_targets, parse_targets

PROBE = [sys.executable, "-m", "probe"]
COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPO_REF = f"github:example/app src/env.rs@{COMMIT}"


def document(*, top: str = "", service: str = "", first: str = "", second: str = "") -> str:
    """A two-endpoint file; each argument is YAML text inserted at that place."""
    return (
        f"version: 1\n{top}services:\n"
        f"  - id: app\n{service}    endpoints:\n"
        f"      - id: app-api\n        host: api.example.org\n        port: 443\n"
        f"        checks: [dns, tcp]\n{first}"
        f"      - id: app-web\n        host: www.example.org\n        port: 443\n"
        f"        checks: [dns, tcp]\n{second}"
    )


def parse(text: str):
    return parse_targets(text, source="t.yaml")


def test_a_users_file_may_cite_no_source():
    targets = parse(document())
    assert not targets.require_sources
    assert all(e.sources == () for e in targets.endpoints())


def test_a_bundled_file_refuses_an_endpoint_without_source_with_its_line():
    text = document(top="require_sources: true\n",
                    first=f"        source: {{ref: '{REPO_REF}', checked: 2026-12-01}}\n")
    with pytest.raises(TargetsError) as caught:
        parse(text)
    error = caught.value
    assert error.line == text.splitlines().index("      - id: app-web") + 1
    assert error.field == "services[0].endpoints[1].source"
    assert "app-web" in error.message and "require_sources" in error.message
    assert str(error).startswith(f"t.yaml line {error.line}, ")


def test_require_sources_after_the_services_still_applies_on_every_path():
    text = document() + "require_sources: true\n"
    fast, slow = both(text)
    assert fast == slow and "cites no source" in fast and "1 more endpoints" in fast


def test_an_endpoint_inherits_its_services_source_and_may_override_it():
    service_source = ("    source: {ref: 'https://vendor.example.org/servers', "
                      "checked: 2026-11-02}\n")
    own = (f"        source:\n          - {{ref: '{REPO_REF}', checked: 2026-12-01}}\n"
           "          - {ref: 'https://vendor.example.org/api', checked: '2026-12-02'}\n")
    targets = parse(document(top="require_sources: true\n", service=service_source, first=own))
    api, web = targets.endpoints()
    assert api.sources == (Source(REPO_REF, "2026-12-01"),
                           Source("https://vendor.example.org/api", "2026-12-02"))
    assert web.sources == (Source("https://vendor.example.org/servers", "2026-11-02"),)
    assert targets.service("app").sources == web.sources


@pytest.mark.parametrize("value, message", [
    ("{ref: 'github:example/app src/env.rs@abc123', checked: 2026-12-01}",
     "neither 'github:owner/repo path@<40-hex commit>' nor an https:// URL"),
    ("{ref: 'http://vendor.example.org/', checked: 2026-12-01}", "nor an https:// URL"),
    ("{ref: 'see the app', checked: 2026-12-01}", "nor an https:// URL"),
    (f"{{ref: '{REPO_REF}'}}", "checked: missing required key"),
    (f"{{ref: '{REPO_REF}', checked: 'last week'}}", "expected a day written YYYY-MM-DD"),
    (f"{{ref: '{REPO_REF}', checked: 2026-12-01 10:00:00}}", "expected a day written"),
    (f"{{ref: '{REPO_REF}', checked: 2999-01-01}}", "2999-01-01 is in the future"),
    (f"{{ref: '{REPO_REF}', checked: 2026-12-01, by: me}}", "unknown key 'by'"),
    (f"'{REPO_REF}'", "expected a mapping {ref: ..., checked: YYYY-MM-DD}"),
    ("[]", "the list is empty; cite at least one source"),
])
def test_a_malformed_source_is_refused_with_its_line(value, message):
    text = document(first=f"        source: {value}\n")
    fast, slow = both(text)
    assert fast == slow
    with pytest.raises(TargetsError) as caught:
        parse(text)
    assert message in str(caught.value)
    assert caught.value.line == text.splitlines().index(f"        source: {value}") + 1


def test_the_bundled_file_requires_and_has_a_source_for_every_endpoint():
    targets = load_targets(default_targets_path())
    assert targets.require_sources
    endpoints = targets.endpoints()
    assert endpoints and all(endpoint.sources for endpoint in endpoints)
    for endpoint in endpoints:
        for source in endpoint.sources:
            assert source.age_days(datetime.date.today()) >= 0
    # an endpoint cited only by public logs (issue threads) says it has no first-party source
    from_logs = [e for e in endpoints
                 if all(s.ref.startswith("https://github.com/") for s in e.sources)]
    assert from_logs
    assert [e.id for e in from_logs if "No first-party source" not in e.notes] == []


def test_the_bundled_file_without_a_source_fails_targets_check(tmp_path):
    text = default_targets_path().read_text()
    # the baseline has no service-level source to inherit
    marker = "        source: {ref: \"https://speed.cloudflare.com\", checked: 2026-12-03}\n"
    assert marker in text
    broken = tmp_path / "targets.yaml"
    broken.write_text(text.replace(marker, ""))
    (tmp_path / "probe").symlink_to(REPO_ROOT / "probe")  # its CA paths start at the root
    result = subprocess.run([*PROBE, "targets", "check", str(broken)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    line = text.replace(marker, "").splitlines().index("      - id: baseline-download") + 1
    assert f"line {line}" in result.stderr and "baseline-download" in result.stderr
    assert "Traceback" not in result.stderr


def test_targets_list_sources_shows_each_source_and_flags_old_ones(tmp_path):
    old = (datetime.date.today() - datetime.timedelta(days=400)).isoformat()
    recent = (datetime.date.today() - datetime.timedelta(days=10)).isoformat()
    path = tmp_path / "mine.yaml"
    path.write_text(document(
        first=(f"        source:\n          - {{ref: '{REPO_REF}', checked: {old}}}\n"
               f"          - {{ref: 'https://vendor.example.org/api', checked: {recent}}}\n")))
    result = subprocess.run([*PROBE, "targets", "list", "--sources", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["app-api", old, *REPO_REF.split(), "STALE:", "checked",
                                "400", "days", "ago"]
    assert lines[1].split() == [recent, "https://vendor.example.org/api"]
    assert lines[2].split() == ["app-web", "-", "NO", "SOURCE"]
    assert lines[3] == "2 endpoints, 1 without a source, 1 sources checked more than 365 days ago"
    tighter = subprocess.run(
        [*PROBE, "targets", "list", "--sources", "--stale-days", "5", str(path)],
        capture_output=True, text=True, timeout=60)
    assert tighter.stdout.count("STALE") == 2


def test_targets_list_sources_on_the_bundled_file():
    result = subprocess.run(
        [*PROBE, "targets", "list", "--sources", str(default_targets_path())],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    count = len(load_targets(default_targets_path()).endpoints())
    assert result.stdout.splitlines()[-1].startswith(f"{count} endpoints, 0 without a source")
    assert "NO SOURCE" not in result.stdout
    assert Path(default_targets_path()).exists()
