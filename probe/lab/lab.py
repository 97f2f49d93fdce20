"""The running lab: bring it up, apply a scenario, reset, bring it down.

``Lab`` ties the pieces together: ``topology`` builds the namespaces,
``services`` says which servers run where, ``pki`` makes this run's
certificates, ``censor`` actions change the censor, ``processes`` starts and
stops every process by PID. All state lives in one directory
(``/run/probe-lab`` unless ``PROBE_LAB_STATE`` says otherwise), so ``down``
and a second ``up`` can clean up after a crashed run.

A lab has a lifetime (``up --duration``): every process it starts is told to
exit by itself by then, so a forgotten lab does not serve forever.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from probe.lab import plan, processes, services, topology
from probe.lab.censor import Runtime
from probe.lab.processes import STATE_DIR, LabError, in_ns, run
from probe.lab.scenarios import Scenario, get

PYTHON = sys.executable
TARGETS_TEMPLATE = Path(__file__).with_name("targets.yaml")
SERVICE_PREFIX = "service-"
SCENARIO_PREFIX = "scenario-"
CONTROL_HELPER = "control-helper"
OOHELPERD = "oohelperd"
LAB_NETWORKS = ("198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")


def require_root() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces, firewall rules): run it with sudo")
    topology.check_tools()


def control_helper_available() -> bool:
    try:
        import probe.control.server  # noqa: F401
    except ImportError:
        return False
    return True


def _control_serve_has(param: str) -> bool:
    try:
        from probe.cli import main
    except ImportError:
        return False
    control = getattr(main, "commands", {}).get("control")
    serve = getattr(control, "commands", {}).get("serve")
    return serve is not None and any(p.name == param for p in serve.params)


def control_serves_udp_echo() -> bool:
    """Whether this checkout's `probe control serve` has ``--udp-echo``."""
    return _control_serve_has("udp_echo")


def control_serve_needs_open() -> bool:
    """Whether this checkout's `probe control serve` serves only enrolled probes
    unless given ``--open``."""
    return _control_serve_has("open_access")


class Lab(Runtime):
    def __init__(self, state: Path = STATE_DIR) -> None:
        self.state = Path(state)

    # ------------------------------------------------------------------ paths
    @property
    def targets_path(self) -> Path:
        return self.state / "targets.yaml"

    @property
    def behaviour_file(self) -> Path:
        return self.state / "isp-behaviours.json"

    def _meta(self) -> dict:
        try:
            return json.loads((self.state / "lab.json").read_text())
        except (OSError, ValueError):
            return {}

    def remaining(self) -> float:
        """Seconds left in the lab's lifetime (processes are bounded by it)."""
        deadline = self._meta().get("deadline")
        if deadline is None:
            raise LabError("the lab is not up: run `probe lab up` first")
        left = deadline - time.time()
        if left <= 1:
            raise LabError("the lab's lifetime is over: run `probe lab up` again")
        return left

    def is_up(self) -> bool:
        return bool(self._meta()) and set(plan.NAMESPACES) <= set(topology.existing_namespaces())

    # -------------------------------------------------------------- lifecycle
    def up(self, duration: float = 3600.0, control: bool | None = None) -> None:
        """Tear down leftovers, build the network, start every server.

        ``control``: run the control helper in the control namespace (default:
        when ``probe.control`` is installed)."""
        require_root()
        self.down()
        self.state.mkdir(parents=True, exist_ok=True)
        meta = {"started": time.time(), "deadline": time.time() + duration}
        (self.state / "lab.json").write_text(json.dumps(meta))
        try:
            topology.build()
            self._write_pki_and_targets()
            self.behaviour_file.write_text("{}\n")
            self._start_fleet("dns-honest", plan.INTERNET, services.honest_dns_fleet())
            self._start_fleet("dns-isp", plan.ISP, services.isp_dns_fleet(self.behaviour_file))
            for service in plan.SERVICES:
                self._start_service(service, wait=False)
            for service in plan.SERVICES:
                self._wait_fleet(SERVICE_PREFIX + service)
            self._wait_fleet("dns-honest")
            self._wait_fleet("dns-isp")
            if control if control is not None else control_helper_available():
                self.start_control_helper()
                self.start_oohelperd()
        except BaseException:
            self.down()
            raise

    def down(self) -> list[str]:
        """Stop every process, remove every plab-* namespace and the state."""
        stopped = processes.stop_all(self.state)
        removed = topology.teardown()
        if self.state.exists():
            shutil.rmtree(self.state, ignore_errors=True)
        return stopped + removed

    def _write_pki_and_targets(self) -> None:
        from probe.lab.pki import write_pki

        pki = write_pki(self.state / "pki", services.certificate_names(),
                        pinned_names=services.pinned_names())
        ca = self.state / "ca"
        ca.mkdir(exist_ok=True)
        shutil.copyfile(pki.lab_root.cert, ca / "lab-root.pem")
        shutil.copyfile(pki.pinned_root.cert, ca / "signal-root.pem")
        shutil.copyfile(TARGETS_TEMPLATE, self.targets_path)

    def _pki(self):
        from probe.lab.pki import load_pki

        return load_pki(self.state / "pki")

    def _start_fleet(self, name: str, namespace: str, fleet: dict) -> None:
        config = self.state / "servers" / f"{name}.json"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(json.dumps(fleet, indent=1))
        ready = self.state / "ready" / f"{name}.json"
        ready.parent.mkdir(parents=True, exist_ok=True)
        ready.unlink(missing_ok=True)
        processes.start(
            name, namespace,
            [PYTHON, "-m", "probe.lab.servers", "--config", str(config),
             "--duration", str(int(self.remaining())), "--ready-file", str(ready)],
            self.state,
        )

    def _wait_fleet(self, name: str, timeout: float = 20.0) -> None:
        ready = self.state / "ready" / f"{name}.json"
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if not processes.is_running(name, self.state):
                log = self.state / "logs" / f"{name}.log"
                tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
                raise LabError(f"server {name} exited while starting; its log ends:\n{tail}")
            if time.monotonic() > deadline:
                raise LabError(f"server {name} not ready after {timeout}s")
            time.sleep(0.05)

    def _start_service(self, service: str, wait: bool = True) -> None:
        name = SERVICE_PREFIX + service
        self._start_fleet(name, plan.INTERNET, services.service_fleet(service, self._pki()))
        if wait:
            self._wait_fleet(name)

    def start_control_helper(self) -> None:
        argv = [PYTHON, "-c", "from probe.cli import main; main()", "control", "serve",
                "--listen", f"{plan.CONTROL_V4}:{plan.CONTROL_PORT}",
                "--resolver", plan.HONEST_RESOLVER, "--max-concurrent", "64",
                "--duration", str(int(self.remaining())),
                # the helper measures only its targets: the lab's, as the probes do
                "--targets", str(self.targets_path)]
        for network in LAB_NETWORKS:
            argv += ["--allow-network", network]
        if control_serve_needs_open():
            # The lab's helper is reachable only inside the lab's namespaces, and its
            # probes sign with keys made per run: it measures for anyone there.
            argv.append("--open")
        echo = set()
        if control_serves_udp_echo():
            # The volunteer's reference UDP flows: an uncensored destination that is
            # on no allowlist, on the ports call relays and QUIC use.
            for port in plan.CONTROL_UDP_ECHO_PORTS:
                argv += ["--udp-echo", str(port)]
                echo.add((plan.CONTROL_V4, port))
        processes.start(CONTROL_HELPER, plan.CONTROL, argv, self.state)
        processes.wait_for_listeners(plan.CONTROL, {(plan.CONTROL_V4, plan.CONTROL_PORT)}, echo,
                                     timeout=20, name=CONTROL_HELPER, state=self.state)

    def start_oohelperd(self) -> None:
        """An OONI-protocol test helper in the control namespace, on the honest
        resolver and trusting the lab's root, as a self-hosted oohelperd would."""
        self._start_fleet(OOHELPERD, plan.CONTROL, {"servers": [{
            "kind": "oohelperd", "listen": [f"{plan.CONTROL_V4}:{plan.OOHELPERD_PORT}"],
            "resolver": f"{plan.HONEST_RESOLVER}:53",
            "trust": str(self.state / "ca" / "lab-root.pem"), "routable": list(LAB_NETWORKS),
        }]})
        self._wait_fleet(OOHELPERD)

    def oohelperd_url(self) -> str | None:
        if processes.is_running(OOHELPERD, self.state):
            return plan.OOHELPERD_URL
        return None

    def control_url(self) -> str | None:
        if processes.is_running(CONTROL_HELPER, self.state):
            return plan.CONTROL_URL
        return None

    # -------------------------------------------------------------- scenarios
    def current_scenario(self) -> str | None:
        path = self.state / "scenario"
        return path.read_text().strip() if path.exists() else None

    def apply(self, scenario: Scenario | str) -> Scenario:
        """Reset, then apply ``scenario``'s actions."""
        if isinstance(scenario, str):
            scenario = get(scenario)
        self.reset()
        try:
            for action in scenario.actions:
                action.apply(self)
        except BaseException:
            self.reset()
            raise
        (self.state / "scenario").write_text(scenario.name + "\n")
        return scenario

    def reset(self) -> None:
        """Back to no censorship: flush the censor, stop scenario processes,
        restore the resolver, the services and the client."""
        self.remaining()  # fails clearly when the lab is not up
        for name in processes.recorded(self.state):
            if name.startswith(SCENARIO_PREFIX):
                processes.stop(name, self.state)
        self._flush_censor()
        self.set_resolver_behaviours({})
        for address in plan.addresses(plan.HOSTS):
            topology.set_service_address(address, present=True)
        for service in plan.SERVICES:
            if not processes.is_running(SERVICE_PREFIX + service, self.state):
                self._start_service(service)
        self.set_client_online(True)
        (self.state / "scenario").unlink(missing_ok=True)

    def _flush_censor(self) -> None:
        ns = plan.CENSOR
        if shutil.which("nft"):
            run(in_ns(ns, ["nft", "flush", "ruleset"]))
        for tool in ("iptables", "ip6tables"):
            for table in ("filter", "nat", "mangle"):
                run(in_ns(ns, [tool, "-t", table, "-F"]), check=False)
                run(in_ns(ns, [tool, "-t", table, "-X"]), check=False)
        run(in_ns(ns, ["tc", "qdisc", "del", "dev", plan.CENSOR_CLIENT_DEV, "root"]), check=False)
        # per-flow packet counting (flow cutoff, allowlist mode) back to the default
        run(in_ns(ns, ["sysctl", "-qw", "net.netfilter.nf_conntrack_acct=0"]), check=False)
        run(in_ns(ns, ["sysctl", "-qw", "net.ipv4.icmp_ratelimit=1000"]), check=False)
        run(in_ns(ns, ["sysctl", "-qw", "net.ipv6.icmp.ratelimit=1000"]), check=False)

    def censor_rules(self) -> str:
        """The censor's firewall as nft prints it ('' when clean)."""
        if shutil.which("nft"):
            out = run(in_ns(plan.CENSOR, ["nft", "list", "ruleset"]), check=False).stdout
            rules = [line for line in out.splitlines()
                     if line.strip() and not line.strip().startswith(("table", "chain", "type",
                                                                      "}", "#"))]
            return "\n".join(rules)
        out = run(in_ns(plan.CENSOR, ["iptables-save"]), check=False).stdout
        return "\n".join(line for line in out.splitlines() if line.startswith("-A"))

    # ------------------------------------------------ Runtime (for actions)
    def firewall(self, family: int, args: list[str]) -> None:
        tool = "iptables" if family == 4 else "ip6tables"
        run(in_ns(plan.CENSOR, [tool, "-w", *args]))

    def censor_command(self, argv: list[str]) -> None:
        run(in_ns(plan.CENSOR, argv))

    def nft(self, script: str) -> None:
        run(in_ns(plan.CENSOR, ["nft", "-f", "-"]), input=script)

    def start_scenario_process(self, name: str, namespace: str, argv: list[str]) -> None:
        full = SCENARIO_PREFIX + name
        started = processes.start(
            full, namespace, [PYTHON, *argv, "--duration", str(int(self.remaining()))], self.state
        )
        # Give it a moment to bind its queue or socket; fail loudly if it died.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            text = started.log.read_text(errors="replace") if started.log.exists() else ""
            if any(word in text for word in ("listening", "queue")):
                return
            if not processes.is_running(full, self.state):
                raise LabError(f"{full} exited at start; its log ends:\n{text[-1500:]}")
            time.sleep(0.05)
        raise LabError(f"{full} did not report ready within 10s")

    def start_mitm_proxy(self, port: int) -> None:
        name = SCENARIO_PREFIX + "mitm"
        self._start_fleet(name, plan.CENSOR, services.mitm_fleet(self._pki(), port))
        self._wait_fleet(name)

    def set_resolver_behaviours(self, behaviours: dict[str, str | dict]) -> None:
        temporary = self.behaviour_file.with_suffix(".tmp")
        temporary.write_text(json.dumps(behaviours))
        temporary.replace(self.behaviour_file)
        record = processes.recorded(self.state)
        if "dns-isp" in record and processes.is_running("dns-isp", self.state):
            pid = json.loads((self.state / "pids" / "dns-isp.json").read_text())["pid"]
            os.kill(pid, signal.SIGHUP)  # reload now, not at the next query's stat
            time.sleep(0.05)

    def stop_service(self, service: str) -> None:
        if service not in plan.SERVICES:
            raise LabError(f"no lab service {service!r}")
        processes.stop(SERVICE_PREFIX + service, self.state)

    def set_service_address(self, address: str, present: bool) -> None:
        topology.set_service_address(address, present)

    def set_client_ipv6(self, enabled: bool) -> None:
        topology.set_client_ipv6(enabled)

    def set_client_online(self, online: bool) -> None:
        topology.set_client_online(online)

    # ------------------------------------------------------------------ other
    def exec(self, namespace: str, argv: list[str]) -> int:
        return subprocess.call(in_ns(namespace, argv))

    def status(self) -> dict:
        meta = self._meta()
        return {
            "up": self.is_up(),
            "state": str(self.state),
            "namespaces": topology.existing_namespaces(),
            "scenario": self.current_scenario(),
            "seconds_left": max(0, int(meta["deadline"] - time.time())) if meta else 0,
            "processes": {
                name: processes.is_running(name, self.state)
                for name in processes.recorded(self.state)
            },
            "targets": str(self.targets_path) if self.targets_path.exists() else None,
            "resolver": plan.ISP_RESOLVER,
            "control": self.control_url(),
            "censor_rules": self.censor_rules().splitlines() if self.is_up() else [],
        }
