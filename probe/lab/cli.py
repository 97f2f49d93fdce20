"""`probe lab ...`: the censorship lab's commands (click group ``lab``).

Parse, call ``probe.lab.lab.Lab``, print. Everything but ``scenarios`` needs
root; without it the command prints one line on stderr and exits 2.
"""

from __future__ import annotations

import json
import sys

import click

from probe.lab import plan
from probe.lab.processes import LabError

EXIT_USAGE = 2


def _fail(message: str, code: int = EXIT_USAGE) -> None:
    click.echo(f"probe lab: {message}", err=True)
    sys.exit(code)


def _lab():
    from probe.lab.lab import Lab, require_root

    try:
        require_root()
    except LabError as exc:
        _fail(str(exc))
    return Lab()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def lab() -> None:
    """The censorship lab: an emulated censor in Linux network namespaces."""


@lab.command()
@click.option("--duration", type=click.FloatRange(10, 7 * 24 * 3600), default=3600,
              show_default=True, help="Seconds until every lab process exits by itself.")
@click.option("--control/--no-control", default=None,
              help="Run the control helper in the control namespace (default: when installed).")
def up(duration: float, control: bool | None) -> None:
    """Build the lab (tearing down any leftovers first) and start its servers."""
    the_lab = _lab()
    try:
        the_lab.up(duration=duration, control=control)
    except LabError as exc:
        _fail(str(exc), 1)
    from probe.lab.demo import probe_command

    click.echo(f"lab up for {int(duration)}s; targets: {the_lab.targets_path}")
    click.echo(f"resolver: {plan.ISP_RESOLVER}; control: {the_lab.control_url() or 'none'}")
    click.echo("run the probe as the volunteer would:")
    click.echo("  " + " ".join(_quote(a) for a in probe_command(
        the_lab, the_lab.state / "reports", control_url=the_lab.control_url())))


def _quote(arg: str) -> str:
    return f"'{arg}'" if any(c in arg for c in " ;()") else arg


@lab.command()
def down() -> None:
    """Stop every lab process and remove every plab-* namespace."""
    removed = _lab().down()
    click.echo(f"removed: {', '.join(removed) if removed else 'nothing (no lab was up)'}")


@lab.command()
@click.option("--json", "as_json", is_flag=True)
def status(as_json: bool) -> None:
    """Namespaces, processes, current scenario and censor rules."""
    info = _lab().status()
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    if not info["up"]:
        click.echo(f"lab is down (namespaces left: {', '.join(info['namespaces']) or 'none'})")
        return
    click.echo(f"lab is up, {info['seconds_left']}s left; scenario: {info['scenario'] or 'none'}")
    click.echo(f"targets: {info['targets']}  resolver: {info['resolver']}  "
               f"control: {info['control'] or 'none'}")
    for name, running in info["processes"].items():
        click.echo(f"  {name:22} {'running' if running else 'stopped'}")
    rules = info["censor_rules"]
    click.echo(f"censor rules: {len(rules)}")
    for rule in rules:
        click.echo(f"  {rule.strip()}")


@lab.command()
@click.option("--json", "as_json", is_flag=True)
def scenarios(as_json: bool) -> None:
    """List the scenarios with their real-world source and ground truth."""
    from probe.lab.scenarios import SCENARIOS

    if as_json:
        click.echo(json.dumps([
            {"name": s.name, "title": s.title, "description": s.description,
             "sources": list(s.sources), "actions": [a.describe() for a in s.actions],
             "truth": [vars(t) for t in s.truth], "services": dict(s.services),
             "functions": {k: dict(v) for k, v in s.functions.items()},
             "network": dict(s.network)}
            for s in SCENARIOS
        ], indent=2))
        return
    for s in SCENARIOS:
        click.echo(f"{s.name:28} {s.title}")
        for action in s.actions:
            click.echo(f"{'':30}does: {action.describe()}")
        for rule in s.truth:
            where = f" {rule.address}" if rule.address else ""
            where += f":{rule.port}" if rule.port else ""
            method = f"/{rule.method}" if rule.method else ""
            click.echo(f"{'':30}expect: {rule.endpoint}{where} {rule.verdict}{method}")
        for service, functions in s.functions.items():
            said = " · ".join(f"{function} {status}" for function, status in functions.items())
            click.echo(f"{'':30}expect: {service}: {said}")
        if s.network:
            said = ", ".join(f"{key} {value}" for key, value in s.network.items())
            click.echo(f"{'':30}expect: network {said}")


@lab.command()
@click.argument("name")
@click.option("--no-selftest", is_flag=True, help="Do not check the scenario's effect.")
def apply(name: str, no_selftest: bool) -> None:
    """Apply scenario NAME (after a reset) and self-test it."""
    from probe.lab.scenarios import BY_NAME
    from probe.lab.selftest import selftest

    if name not in BY_NAME:
        _fail(f"no scenario {name!r}; see `probe lab scenarios`")
    the_lab = _lab()
    try:
        scenario = the_lab.apply(name)
    except LabError as exc:
        _fail(str(exc), 1)
    click.echo(f"applied {name}: {scenario.title}")
    if no_selftest:
        return
    results = selftest(scenario)
    for result in results:
        click.echo(f"  {result}")
    if not all(r.ok for r in results):
        _fail("self-test failed: the lab does not do what the scenario says", 1)


@lab.command()
def reset() -> None:
    """Revert the current scenario completely (no censorship)."""
    try:
        _lab().reset()
    except LabError as exc:
        _fail(str(exc), 1)
    click.echo("reset: no censorship")


@lab.command("exec", context_settings={"ignore_unknown_options": True})
@click.option("--ns", "namespace", type=click.Choice(sorted(plan.SHORT_NAMES)), default="client",
              show_default=True)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_(namespace: str, command: tuple[str, ...]) -> None:
    """Run COMMAND inside a lab namespace: probe lab exec --ns client -- CMD..."""
    sys.exit(_lab().exec(plan.SHORT_NAMES[namespace], list(command)))


@lab.command()
@click.argument("names", nargs=-1)
def selftest(names: tuple[str, ...]) -> None:
    """Apply each scenario (all by default), check its effect, reset."""
    from probe.lab.scenarios import SCENARIOS
    from probe.lab.selftest import selftest as run_selftest

    the_lab = _lab()
    failed = 0
    for scenario in SCENARIOS:
        if names and scenario.name not in names:
            continue
        the_lab.apply(scenario)
        results = run_selftest(scenario)
        bad = [r for r in results if not r.ok]
        failed += bool(bad)
        click.echo(f"{scenario.name:28} {'ok' if not bad else 'FAIL'}")
        for result in bad:
            click.echo(f"    {result}")
    the_lab.reset()
    if failed:
        _fail(f"{failed} scenario(s) failed their self-test", 1)


@lab.command()
@click.argument("names", nargs=-1)
@click.option("--timeout", type=click.FloatRange(0.5, 30), default=2.0, show_default=True,
              help="The probe's per-step timeout.")
def demo(names: tuple[str, ...], timeout: float) -> None:
    """Bring the lab up, run the probe under every scenario, compare, tear down."""
    _lab()
    from probe.lab.demo import demo as run_demo

    outcomes = run_demo(list(names) or None, timeout=timeout, echo=click.echo)
    bad = [o for o in outcomes if o.error or o.mismatches or not o.selftest_ok]
    if bad:
        sys.exit(1)


def main() -> None:
    lab(prog_name="probe lab")
