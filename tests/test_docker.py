"""docker/: every command the Dockerfile and compose file run exists in the CLI, with its options.

No Docker engine is needed: the files are parsed and each command line is
resolved through the ``probe`` click group, as the container would run it.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import click
import pytest
import yaml

from probe.cli import main

DOCKER = Path(__file__).resolve().parents[1] / "docker"


def cli_root() -> dict[str, click.Command]:
    commands = dict(main.commands)
    # Until probe.cli registers the NGO groups, resolve them from their modules.
    from probe.aggregate.cli import aggregate
    from probe.collector.cli import collector

    commands.setdefault("collector", collector)
    commands.setdefault("aggregate", aggregate)
    return commands


def resolve(argv: list[str]) -> list[str]:
    """Walk ``probe <argv>`` through the CLI; the problems found (none: it exists)."""
    problems = []
    commands = cli_root()
    chain: list[click.Command] = [main]
    index = 0
    while index < len(argv):
        token = argv[index]
        current = chain[-1]
        if token.startswith("-"):
            name = token.split("=", 1)[0]
            option = next(
                (
                    p
                    for p in current.params
                    if isinstance(p, click.Option) and name in p.opts + p.secondary_opts
                ),
                None,
            )
            if option is None and name not in ("--help", "-h", "--version"):
                problems.append(f"{' '.join(argv)}: {current.name} has no option {name}")
            elif option is not None and not option.is_flag and "=" not in token:
                index += 1  # its value
            index += 1
            continue
        if isinstance(current, click.Group):
            group_commands = commands if current is main else current.commands
            if token not in group_commands:
                problems.append(
                    f"{' '.join(argv)}: no command {token!r} in {current.name or 'probe'}"
                )
                return problems
            chain.append(group_commands[token])
        index += 1  # an argument of a command
    if isinstance(chain[-1], click.Group) and chain[-1] is not main:
        problems.append(f"{' '.join(argv)}: {chain[-1].name} needs a subcommand")
    return problems


def dockerfile_instruction(name: str) -> list[str]:
    text = (DOCKER / "Dockerfile").read_text()
    found = re.findall(rf"^{name}\s+(.+)$", text, re.MULTILINE)
    assert found, f"Dockerfile has no {name}"
    value = found[-1].strip()
    return json.loads(value) if value.startswith("[") else shlex.split(value)


def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def test_the_entry_point_is_the_probe_command():
    assert dockerfile_instruction("ENTRYPOINT") == ["probe"]
    assert resolve(dockerfile_instruction("CMD")) == []


def test_every_compose_command_exists_in_the_cli():
    services = compose()["services"]
    assert {"control", "collector"} <= set(services)
    for name, service in services.items():
        entrypoint = service.get("entrypoint", ["probe"])
        assert entrypoint == ["probe"], name
        command = service.get("command", dockerfile_instruction("CMD"))
        assert isinstance(command, list), f"{name}: write command as a list"
        assert resolve(command) == [], name


def test_the_resolver_catches_what_does_not_exist():
    assert resolve(["control", "serve", "--listen", "0.0.0.0:1"]) == []
    assert "no command 'serv'" in resolve(["control", "serv"])[0]
    assert "has no option --port" in resolve(["collector", "serve", "--port", "1"])[0]
    assert "needs a subcommand" in resolve(["collector"])[0]


def test_services_listen_where_the_ports_and_healthchecks_point():
    services = compose()["services"]
    for name in ("control", "collector"):
        service = services[name]
        command = service["command"]
        listen = command[command.index("--listen") + 1]
        host, port = listen.rsplit(":", 1)
        assert host == "0.0.0.0", f"{name} must listen on every interface of its container"
        assert f"{port}:{port}" in service["ports"]
        assert f"127.0.0.1:{port}/" in " ".join(service["healthcheck"]["test"])


def test_persistent_volumes_and_no_root():
    text = (DOCKER / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users and users[-1] not in ("root", "0")
    assert "pip install '/src[aggregate]'" in text  # the README's steps: venv + pip install
    volumes = compose()["volumes"]
    services = compose()["services"]
    assert any(v.startswith("collector-data:/data") for v in services["collector"]["volumes"])
    assert any(
        v.startswith("control-key:/home/probe/.config/probe")
        for v in services["control"]["volumes"]
    )
    assert {"collector-data", "control-key"} <= set(volumes)
    collector = services["collector"]["command"]
    assert collector[collector.index("--data") + 1] == "/data"


@pytest.mark.parametrize(
    "line",
    [
        line.strip()
        for line in (DOCKER / "README.md").read_text().splitlines()
        if line.strip().startswith("docker compose")
    ],
)
def test_readme_commands_name_the_compose_file(line):
    assert "-f docker/compose.yaml" in line


def test_the_collector_accepts_only_enrolled_probe_keys_by_default():
    collector = compose()["services"]["collector"]
    command = collector["command"]
    keys = command[command.index("--trusted-keys") + 1]
    assert any(v.split(":")[1] == keys for v in collector["volumes"] if v.startswith("./"))
    assert "probe key show" in (DOCKER / "compose.yaml").read_text()
