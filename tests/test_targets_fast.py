"""Targets files are composed by libyaml when it reads them as PyYAML does (streamed
service by service when the file is valid): the same Targets, or the same error
(file, line, field, words), whichever path runs."""

from __future__ import annotations

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_targets import DATA, REPO_ROOT, documents

from probe import targets as targets_module
from probe.targets import TargetsError, default_targets_path, parse_targets


def outcome(text: str, base_dir=DATA):
    try:
        return parse_targets(text, source="fuzz.yaml", base_dir=base_dir)
    except TargetsError as error:
        return str(error)


def both(text: str, base_dir=DATA):
    fast = outcome(text, base_dir)
    saved = targets_module._compose_fast, targets_module._parse_streaming
    targets_module._compose_fast = lambda _: targets_module._FAST_FAILED
    targets_module._parse_streaming = lambda *_: None
    try:
        slow = outcome(text, base_dir)
    finally:
        targets_module._compose_fast, targets_module._parse_streaming = saved
    return fast, slow


def streamed(text: str, base_dir=DATA):
    return targets_module._parse_streaming(
        text, targets_module._Parser("fuzz.yaml", base_dir))


def large(services: int, per_service: int = 20) -> str:
    lines = ["version: 1", "routable_networks: [203.0.113.0/24]", "services:"]
    for s in range(services):
        lines += [f"  - id: s{s}", "    endpoints:"]
        lines += [f"      - {{id: e{s}-{e}, host: 203.0.113.{e + 1}, port: 443, "
                  "checks: [tcp, tls], sni: x.example.net}" for e in range(per_service)]
    return "\n".join(lines) + "\n"


def test_valid_files_are_streamed_service_by_service_to_the_same_targets():
    bundled = default_targets_path().read_text()
    assert streamed(bundled, REPO_ROOT) is not None
    text = large(50)
    assert streamed(text) is not None
    fast, slow = both(text)
    assert fast == slow and len(fast.endpoints()) == 1000
    # top-level keys after the services list, and aliases across services
    tail = "version: 1\nservices:\n- id: a\n  endpoints: &eps\n  - {id: x, host: 203.0.113.1, "
    tail += "port: 443, checks: [tcp]}\n- id: b\n  endpoints: *eps\nrouteable: 1\n"
    fast, slow = both(tail)
    assert fast == slow and "routeable" in fast


def test_the_bundled_file_is_read_alike_and_by_libyaml():
    text = default_targets_path().read_text()
    assert targets_module._compose_fast(text) is not targets_module._FAST_FAILED
    fast, slow = both(text, REPO_ROOT)
    assert fast == slow


@pytest.mark.parametrize("text", [
    "", "# nothing\n", "version: 1\nservices: [\n", "version: 1\n\tservices: []\n",
    "version: 1\nservices:\n- id: a\n  id: b\n", "version: 1\x07\n", "&a [*a]",
    "%YAML 1.2\n---\nversion: 1\n", "version: 1\nservices: " + "[" * 2000,
    "version: !!binary aGk=\n", "? [a]\n: 1\n",
])
def test_odd_files_give_the_same_error(text):
    fast, slow = both(text)
    assert fast == slow


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_structures_are_read_alike(document):
    fast, slow = both(yaml.safe_dump(document))
    assert fast == slow


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_bundled_file_is_read_alike(data):
    text = default_targets_path().read_text()
    start = data.draw(st.integers(0, len(text)))
    end = data.draw(st.integers(start, min(len(text), start + 40)))
    insert = data.draw(st.text(alphabet=st.sampled_from(" \t\n:-[]{},#'\"x1&*!|>?%@`\\"),
                               max_size=8))
    fast, slow = both(text[:start] + insert + text[end:], REPO_ROOT)
    assert fast == slow


def test_the_fast_paths_live_apart_from_the_rules():
    """probe.targets_fast decides only whether libyaml reads a text as PyYAML does; it
    imports nothing of probe, so every rule and message stays in probe.targets."""
    import ast
    import inspect

    from probe import targets_fast

    tree = ast.parse(inspect.getsource(targets_fast))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert imported == {"__future__", "collections", "typing", "yaml"}
    assert targets_module._compose_fast is targets_fast.compose_fast
