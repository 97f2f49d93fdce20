"""The Docker image built and exercised: the compose stack as an NGO runs it, end to end.

The test starts its own Docker daemon (vfs storage, its own data root, socket and
pidfile in a temporary folder; no default bridge, no iptables rules, so nothing of
the machine's own networking changes), builds the image from docker/Dockerfile (on a
stand-in base from docker/standin-base.sh when the real base image is not in the
daemon: no container registry is reachable here), then:

- starts the control helper and the collector with the commands, volumes and
  healthchecks that docker/compose.yaml declares, on an ``internal`` network in a
  documentation range (no packet can leave the bridge), and waits until both are healthy;
- runs a probe container against targets inside that network (the helper and the
  collector themselves) with ``--control`` and ``--upload``;
- checks that the collector stored the lines and that the compose file's ``aggregate``
  service ingests them;
- stops the stack, starts it again, and checks that the volumes kept the stored lines,
  the aggregate database and the helper's key;
- checks that every container runs as a non-root user.

Needs root and Docker's packages (docker.io, docker-compose, mmdebstrap: .ci/run
installs them); skipped with the reason otherwise. PROBE_TEST_DOCKER_HOST reuses a
running daemon instead of starting one (faster while iterating on the test).
"""

from __future__ import annotations

import copy
import fnmatch
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[1]
DOCKER_DIR = ROOT / "docker"
REAL_BASE = "python:3.11-slim-bookworm"
STANDIN_BASE = "probe-standin-base:bookworm"
PROJECT = "probetest"
# Documentation ranges only (never a private range): the compose network, and the pool
# the daemon draws any other network from. Other tests use lower 198.51.100.x addresses.
SUBNET = "198.51.100.128/28"
POOL = "198.51.100.144/28"
# In-container paths of the files this test mounts.
TARGETS_IN_CONTAINER = "/etc/probe-test/targets.yaml"
# Fixed addresses, so the targets (the helper's scope too) are written before `up`.
ADDRESSES = {"control": "198.51.100.130", "collector": "198.51.100.131"}


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root to start its own Docker daemon"
    for tool, package in (("dockerd", "docker.io"), ("docker", "docker.io")):
        if shutil.which(tool) is None:
            return f"{tool} is missing: apt-get install {package} (.ci/run does)"
    if _compose_command() is None:
        return "neither `docker compose` nor docker-compose: apt-get install docker-compose"
    return None


def _compose_command() -> list[str] | None:
    docker = shutil.which("docker")
    if docker is not None:
        plugin = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30)
        if plugin.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


@dataclass
class Docker:
    """The docker CLI bound to one daemon, with a log of how long each step took."""

    env: dict[str, str]
    config: pytest.Config
    started: float = field(default_factory=time.monotonic)
    timings: list[tuple[str, float]] = field(default_factory=list)

    def say(self, message: str) -> None:
        # Straight to the terminal, past pytest's capture: the test takes minutes, and
        # CI's log should show where they went.
        line = f"[docker {time.monotonic() - self.started:6.1f}s] {message}"
        capture = self.config.pluginmanager.get_plugin("capturemanager")
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if capture is None or reporter is None:
            print(line, flush=True)
            return
        with capture.global_and_fixture_disabled():
            reporter.write_line(line)

    def run(self, *args: str, timeout: float = 120, check: bool = True,
            stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        try:
            result = subprocess.run(list(args), capture_output=True, text=True, env=self.env,
                                    timeout=timeout, input=stdin)
        except subprocess.TimeoutExpired as error:
            pytest.fail(f"{' '.join(args)}: still running after {timeout:.0f}s: {error.stderr!r}")
        if check and result.returncode != 0:
            pytest.fail(f"{' '.join(args)} exited {result.returncode}:\n"
                        f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result

    def docker(self, *args: str, **kwargs) -> subprocess.CompletedProcess[str]:
        return self.run("docker", *args, **kwargs)

    def step(self, name: str, since: float) -> None:
        took = time.monotonic() - since
        self.timings.append((name, took))
        self.say(f"{name}: {took:.1f}s")


def _wait_for_daemon(docker: Docker, process: subprocess.Popen[bytes] | None,
                     log: Path | None, limit: float = 90) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if docker.docker("version", check=False, timeout=20).returncode == 0:
            return
        if process is not None and process.poll() is not None:
            break
        time.sleep(1)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    pytest.fail(f"the Docker daemon did not answer within {limit:.0f}s:\n{tail}")


@pytest.fixture(scope="module")
def docker(request) -> Iterator[Docker]:
    why = _why_not()
    if why:
        pytest.skip(why)
    # A short path: the daemon's sockets live under it (108 bytes at most).
    base = Path(tempfile.mkdtemp(prefix="probe-dockerd-", dir="/tmp"))
    env = {**os.environ, "DOCKER_CONFIG": str(base / "client"), "DOCKER_BUILDKIT": "0",
           "COMPOSE_PROJECT_NAME": PROJECT}
    existing = os.environ.get("PROBE_TEST_DOCKER_HOST")
    process = None
    try:
        if existing:
            env["DOCKER_HOST"] = existing
            handle = Docker(env, request.config)
            _wait_for_daemon(handle, None, None, limit=20)
            yield handle
            return
        env["DOCKER_HOST"] = f"unix://{base}/docker.sock"
        log = base / "dockerd.log"
        with open(log, "wb") as output:
            process = subprocess.Popen(
                [
                    "dockerd", "--storage-driver=vfs",
                    "--data-root", str(base / "data"), "--exec-root", str(base / "exec"),
                    "--pidfile", str(base / "dockerd.pid"), "--host", env["DOCKER_HOST"],
                    # the machine's networking stays as it is: no docker0, no NAT, no
                    # iptables rules; builds use the host's network, the stack an
                    # internal bridge of its own
                    "--bridge=none", "--iptables=false", "--ip-forward=false",
                    "--ip-masq=false", "--default-address-pool", f"base={POOL},size=28",
                ],
                stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
            )
        handle = Docker(env, request.config)
        since = time.monotonic()
        _wait_for_daemon(handle, process, log)
        handle.step("dockerd started", since)
        yield handle
    finally:
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        _unmount_under(base)
        shutil.rmtree(base, ignore_errors=True)


def _unmount_under(base: Path) -> None:
    """Mounts the daemon leaves behind (its network namespace's nsfs bind), deepest
    first, so that the folder can be removed."""
    with open("/proc/self/mounts") as mounts:
        points = [line.split()[1] for line in mounts]
    for point in sorted((p for p in points if p.startswith(f"{base}/")), reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, timeout=30)


def _ignored(relative: str, patterns: list[str]) -> bool:
    parts = relative.split("/")
    for pattern in patterns:
        if pattern.startswith("**/"):
            if any(fnmatch.fnmatch(part, pattern[3:]) for part in parts):
                return True
        elif fnmatch.fnmatch(relative, pattern) or fnmatch.fnmatch(parts[0], pattern):
            return True
    return False


def build_context(destination: Path) -> Path:
    """The checkout as docker/Dockerfile.dockerignore trims it, whichever builder runs.

    The legacy builder (Debian's docker.io has no BuildKit client) reads only a
    .dockerignore at the context's root: without this copy it would send and COPY a
    CI checkout's .venv too.
    """
    patterns = [
        line.strip()
        for line in (DOCKER_DIR / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    assert not any(p.startswith("!") for p in patterns), "exceptions are not handled here"

    def ignore(directory: str, names: list[str]) -> set[str]:
        relative = Path(directory).relative_to(ROOT)
        return {n for n in names if _ignored(str(relative / n).removeprefix("./"), patterns)}

    shutil.copytree(ROOT, destination, ignore=ignore, symlinks=True)
    return destination


@pytest.fixture(scope="module")
def image(docker: Docker, tmp_path_factory) -> str:
    tag = compose_file()["services"]["control"]["image"]
    base = REAL_BASE
    if docker.docker("image", "inspect", REAL_BASE, check=False).returncode != 0:
        base = STANDIN_BASE
        if docker.docker("image", "inspect", STANDIN_BASE, check=False).returncode != 0:
            if shutil.which("mmdebstrap") is None:
                pytest.skip(f"{REAL_BASE} is not in the daemon and mmdebstrap is missing "
                            "to build a stand-in: apt-get install mmdebstrap")
            since = time.monotonic()
            docker.say(f"{REAL_BASE} is not here (no registry): building {STANDIN_BASE}")
            docker.run(str(DOCKER_DIR / "standin-base.sh"), STANDIN_BASE, timeout=960)
            docker.step(f"stand-in base {STANDIN_BASE} built", since)
    context = build_context(tmp_path_factory.mktemp("image") / "context")
    since = time.monotonic()
    docker.say(f"building {tag} on {base} (minutes with the vfs driver)")
    # --network host: pip reaches the package index as this machine does; the
    # daemon has no bridge of its own to offer a build.
    docker.docker("build", "--network", "host", "--build-arg", f"BASE={base}",
                  "-f", str(DOCKER_DIR / "Dockerfile"), "-t", tag, str(context), timeout=1500)
    docker.step(f"image {tag} built on {base}", since)
    return tag


def compose_file() -> dict:
    return yaml.safe_load((DOCKER_DIR / "compose.yaml").read_text())


def _option(command: list[str], name: str) -> str | None:
    for index, token in enumerate(command):
        if token == name and index + 1 < len(command):
            return command[index + 1]
        if token.startswith(name + "="):
            return token.split("=", 1)[1]
    return None


KEY_OPTIONS = ("--trusted-keys", "--trusted-control-keys")


def _absolute_source(volume: str | dict) -> str | dict:
    """A bind mount's relative source, made absolute from docker/ (the derived file
    lives elsewhere); named volumes stay as they are."""
    if isinstance(volume, dict):
        if volume.get("type") == "bind" and not str(volume["source"]).startswith("/"):
            return {**volume, "source": str((DOCKER_DIR / volume["source"]).resolve())}
        return volume
    source, _, rest = volume.partition(":")
    if rest and source.startswith("."):
        return f"{(DOCKER_DIR / source).resolve()}:{rest}"
    return volume


def derive_compose(trusted: dict[str, Path], targets: Path | None = None) -> dict:
    """docker/compose.yaml as this test runs it: the same commands, volumes and checks.

    What changes, and why: no published ports and an ``internal`` network in a
    documentation range (no traffic leaves the bridge, nothing binds on the host); the
    image is built beforehand (no ``build``); healthchecks every 2 s instead of 30 s (the
    first check only runs after one interval); the helper may measure the test network
    (``--allow-network``: its targets sit in a documentation range, which a real helper
    refuses); the keys files that a command names (``--trusted-keys FILE``,
    ``--trusted-control-keys FILE``) are mounted read-only from ``trusted``, in place of
    whatever the file mounts there; each service gets a fixed address, and with
    ``targets`` the helper measures those targets (``--targets``: a helper measures
    only what its own targets list, and the bundled ones are not in this network).
    """
    spec = compose_file()
    spec.pop("name", None)  # docker-compose 1.x predates it; the project is named by -p
    for name, service in spec["services"].items():
        service.pop("ports", None)
        service.pop("build", None)
        command = list(service.get("command", []))
        if name == "control" and targets is not None:
            command += ["--targets", TARGETS_IN_CONTAINER]
        if name == "control" and "--allow-network" not in command:
            command += ["--allow-network", SUBNET]
        if name in ADDRESSES:
            service["networks"] = {"default": {"ipv4_address": ADDRESSES[name]}}
        service["command"] = command
        if "healthcheck" in service:
            service["healthcheck"] = {**service["healthcheck"], "interval": "2s",
                                      "timeout": "10s", "retries": 30}
        volumes = [_absolute_source(v) for v in service.get("volumes", [])]
        for option in KEY_OPTIONS:
            path = _option(command, option)
            if path is None:
                continue
            volumes = [v for v in volumes
                       if not (isinstance(v, str) and v.split(":")[1:2] == [path])
                       and not (isinstance(v, dict) and v.get("target") == path)]
            volumes.append(f"{trusted[option]}:{path}:ro")
        if name == "control" and targets is not None:
            volumes.append(f"{targets}:{TARGETS_IN_CONTAINER}:ro")
        if volumes:
            service["volumes"] = volumes
    for kind in ("secrets", "configs"):  # file-based ones, relative to docker/
        for entry in (spec.get(kind) or {}).values():
            if isinstance(entry, dict) and "file" in entry:
                entry["file"] = str((DOCKER_DIR / entry["file"]).resolve())
    spec["networks"] = {"default": {"internal": True,
                                    "ipam": {"config": [{"subnet": SUBNET}]}}}
    return spec


@dataclass
class Stack:
    docker: Docker
    compose: list[str]
    file: Path

    def __call__(self, *args: str, **kwargs) -> subprocess.CompletedProcess[str]:
        return self.docker.run(*self.compose, "-p", PROJECT, "-f", str(self.file), *args,
                               **kwargs)

    def container(self, service: str) -> str:
        found = self("ps", "-q", service).stdout.split()
        assert len(found) == 1, f"{service}: {found}"
        return found[0]

    def address(self, service: str) -> str:
        return self.docker.docker(
            "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            self.container(service)).stdout.strip()

    def up_healthy(self, services: tuple[str, ...], limit: float = 240) -> None:
        self("up", "-d", "--no-build", timeout=limit)
        deadline = time.monotonic() + limit
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            states = {
                s: self.docker.docker("inspect", "-f", "{{.State.Health.Status}}",
                                      self.container(s)).stdout.strip()
                for s in services
            }
            if all(state == "healthy" for state in states.values()):
                return
            time.sleep(2)
        logs = self("logs", "--tail", "40", check=False).stdout
        pytest.fail(f"not healthy within {limit:.0f}s: {states}\n{logs}")

    def stored_lines(self) -> list[dict]:
        """The lines in the collector's store, read inside the collector container."""
        script = (
            "import glob, json, sys\n"
            "files = sorted(glob.glob('/data/*/*.jsonl'))\n"
            "lines = [line for f in files for line in open(f) if line.strip()]\n"
            "json.dump([json.loads(line) for line in lines], sys.stdout)\n"
        )
        out = self.docker.docker("exec", self.container("collector"), "python", "-c", script)
        return json.loads(out.stdout)


def public_key(output: str) -> str:
    for line in output.splitlines():
        if line.startswith("public key:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no public key in {output!r}")


TARGETS = """\
version: 1
routable_networks: [{subnet}]
services:
  - id: baseline
    baseline: true
    endpoints:
      - {{id: collector-health, host: {collector}, port: 8080, checks: [tcp, http],
          path: /health, function: status}}
  - id: inside
    name: Services inside the test network
    endpoints:
      - {{id: helper-health, host: {control}, port: 8780, checks: [tcp, http], path: /,
          function: status}}
      - {{id: nothing-listens, host: {collector}, port: 9, checks: [tcp], function: status}}
"""


def test_compose_stack_end_to_end(docker: Docker, image: str, tmp_path: Path):
    compose = _compose_command()
    assert compose is not None
    tmp_path.chmod(0o755)
    keys_volume = f"{PROJECT}_probe-keys"
    docker.docker("volume", "create", keys_volume)
    stack = None
    try:
        # The probe's key, enrolled where the stack's commands expect trusted keys; the
        # same container shows the image's user (one container less: on vfs each costs
        # a copy of the image).
        since = time.monotonic()
        shown = docker.docker("run", "--rm", "--network", "none", "-v",
                              f"{keys_volume}:/home/probe/.config/probe", "--entrypoint", "sh",
                              image, "-c", "id -u && probe key show").stdout
        assert shown.split()[0] == "10001", f"the image runs as {shown.split()[0]}, not probe"
        probe_key = public_key(shown)
        docker.say(f"probe key {probe_key}")
        trusted = {}
        for option in KEY_OPTIONS:
            path = tmp_path / option.strip("-")
            path.write_text(probe_key + "\n" if option == "--trusted-keys" else "")
            path.chmod(0o644)
            trusted[option] = path
        control, collector = ADDRESSES["control"], ADDRESSES["collector"]
        targets = tmp_path / "targets.yaml"
        targets.write_text(TARGETS.format(subnet=SUBNET, control=control, collector=collector))
        targets.chmod(0o644)
        file = tmp_path / "compose.yaml"
        file.write_text(yaml.safe_dump(derive_compose(trusted, targets), sort_keys=False))
        stack = Stack(docker, compose, file)
        docker.say(f"starting the stack with {' '.join(compose)}")
        stack.up_healthy(("control", "collector"))
        docker.step(f"stack up and healthy ({' '.join(Path(c).name for c in compose)})", since)
        assert (stack.address("control"), stack.address("collector")) == (control, collector)

        for service in ("control", "collector"):
            uid = docker.docker("exec", stack.container(service), "id", "-u").stdout.strip()
            assert uid not in ("", "0"), f"{service} runs as root"
        helper_key = public_key(docker.docker("exec", stack.container("control"), "probe",
                                              "key", "show", "--control").stdout)

        # A probe container measures the stack itself, with the helper as its control
        # (whose scope is the same targets), and uploads to the collector.
        since = time.monotonic()
        run = docker.docker(
            "run", "--rm", "--network", f"{PROJECT}_default",
            "-v", f"{keys_volume}:/home/probe/.config/probe",
            "-v", f"{targets}:{TARGETS_IN_CONTAINER}:ro",
            image, "run", "--targets", TARGETS_IN_CONTAINER, "--timeout", "3",
            "--control", f"http://{control}:8780", "--upload", f"http://{collector}:8080",
            "--json", timeout=300,
        )
        docker.step("probe run with --control and --upload", since)
        summary = json.loads(run.stdout)
        docker.say("verdicts: " + ", ".join(f"{e['id']}={e['verdict']}"
                                            for e in summary["endpoints"]))
        assert summary["control"]["source"] == f"http://{control}:8780"
        verdicts = {e["id"]: e["verdict"] for e in summary["endpoints"]}
        assert verdicts["collector-health"] == "ok", summary["endpoints"]
        assert verdicts["helper-health"] == "ok", summary["endpoints"]
        # refused for the probe and for the helper alike: down, not blocked
        assert verdicts["nothing-listens"] == "down", summary["endpoints"]
        assert "uploaded to" in run.stderr, run.stderr

        stored = stack.stored_lines()
        measurements = [line for line in stored if "test_keys" in line]
        assert {m["test_name"] for m in measurements} >= {"baseline", "inside"}
        ingest = stack("run", "--rm", "aggregate", timeout=180).stdout
        assert f"{len(measurements)} new measurement(s)" in ingest, ingest
        assert " 0 rejected" in ingest, ingest
        docker.say(f"collector stored {len(stored)} line(s); aggregate: {ingest.strip()}")

        # Down and up again: the named volumes keep the store, the aggregate database
        # and the helper's key.
        since = time.monotonic()
        stack("down", timeout=120)
        stack.up_healthy(("control", "collector"))
        docker.step("stack down, up and healthy again", since)
        assert stack.stored_lines() == stored
        assert public_key(docker.docker("exec", stack.container("control"), "probe", "key",
                                        "show", "--control").stdout) == helper_key
        again = stack("run", "--rm", "aggregate", timeout=180).stdout
        assert "0 new measurement(s)" in again, again
        assert f"{len(measurements)} already known" in again, again
    finally:
        if stack is not None:
            stack("down", "-v", "--timeout", "10", check=False, timeout=120)
        docker.docker("volume", "rm", keys_volume, check=False)
        total = sum(took for _, took in docker.timings)
        for name, took in docker.timings:
            docker.say(f"timing: {name}: {took:.1f}s")
        docker.say(f"timing: total of the steps above: {total:.1f}s")


def test_derived_compose_keeps_commands_and_mounts_the_keys_they_name(monkeypatch, tmp_path):
    # Runs without Docker: how the smoke test adapts docker/compose.yaml, including a
    # compose file whose services read --trusted-keys from a bind-mounted file.
    real = compose_file()

    def with_keys() -> dict:
        spec = copy.deepcopy(real)
        spec["services"]["control"]["command"] += ["--trusted-keys", "/etc/probe/trusted-keys"]
        spec["services"]["control"]["volumes"].append("./keys:/etc/probe/trusted-keys:ro")
        spec["services"]["collector"]["command"] += ["--trusted-keys=/etc/probe/trusted-keys"]
        return spec

    monkeypatch.setattr(f"{__name__}.compose_file", with_keys)
    keys = {option: tmp_path / option.strip("-") for option in KEY_OPTIONS}
    derived = derive_compose(keys)
    services = derived["services"]
    for name in ("control", "collector"):
        assert services[name]["command"][:4] == real["services"][name]["command"][:4]
        assert "ports" not in services[name]
        assert f"{keys['--trusted-keys']}:/etc/probe/trusted-keys:ro" in services[name]["volumes"]
    assert not any(v.startswith("./") for v in services["control"]["volumes"])
    assert services["control"]["command"][-2:] == ["--allow-network", SUBNET]
    assert services["control"]["networks"]["default"]["ipv4_address"] == ADDRESSES["control"]
    with_targets = derive_compose(keys, tmp_path / "targets.yaml")["services"]["control"]
    assert with_targets["command"][-4:-2] == ["--targets", TARGETS_IN_CONTAINER]
    assert f"{tmp_path / 'targets.yaml'}:{TARGETS_IN_CONTAINER}:ro" in with_targets["volumes"]
    assert services["aggregate"]["command"] == real["services"]["aggregate"]["command"]
    assert derived["networks"]["default"]["internal"] is True
    assert "name" not in derived and derived["volumes"] == real["volumes"]
