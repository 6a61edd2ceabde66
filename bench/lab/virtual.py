"""Bring the virtual lab up, inspect it, and tear it down completely.

Each gateway is a named network namespace plus a private mount and UTS namespace in which a
real OpenSSH sshd runs. The gateway's "disk" is a directory under the lab's state_dir that is
bind-mounted over /root and /tmp, its identity (os-release, hostname, device-tree model) is
mounted where a real board exposes it. Management: a veth from each gateway to a bridge in
the root namespace. Backhaul: a veth from each gateway's ``wan0`` to a bridge in the
``cloud`` namespace.

Every piece is named from the lab id, so ``down`` (and ``up``, before building) can find and
remove whatever a killed run left behind without trusting any state file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bench.boards import BOARDS
from bench.errors import LabError
from bench.faults.delay_relay import READY as RELAY_READY
from bench.faults.probe import probe
from bench.faults.relay import RELAY_MARK
from bench.lab import bulk, cgroups, system
from bench.lab.radio_plan import CONTROL_SOCKET, attenuator_of, radio_dir, virtual_radios
from bench.results.units import PROPAGATION_MS_PER_KM
from bench.rig import Rig

TIER_RELAY_PORT = 39999  # the tiers' delay relays, inside their own namespaces
TIER_TABLE = "lab_tier_delay"  # not "fieldrig_*": it is the lab's, not a fault

# Bump when the way a lab is built changes, so labs built the old way are rebuilt.
LAB_FORMAT = 8
SERVICE_START_S = 30


@dataclass(frozen=True)
class LabService:
    """A helper process of the lab: ``python -m <module> --rig <file>``, pid in state_dir."""

    name: str
    module: str
    title: str


SUPPLY = LabService("supply", "bench.lab.power", "virtual supply")
RADIOS = LabService("radio", "bench.lab.radio", "virtual radios")

# Directories each gateway gets its own copy of (bind mounts from its disk).
PRIVATE_DIRS = (Path("/root"), Path("/tmp"))


@dataclass(frozen=True)
class GatewayPlan:
    """Names and addresses one virtual gateway gets."""

    index: int
    name: str
    board: str
    namespace: str
    mgmt_address: str
    wan_address: str
    root_veth: str  # the management veth's end in the root namespace
    cloud_veth: str  # the backhaul veth's end in the cloud namespace
    disk: Path


@dataclass(frozen=True)
class TierPlan:
    """A compute tier (edge, cloud) on the backhaul: a namespace ``distance_km`` away."""

    name: str
    namespace: str
    address: str
    cloud_veth: str  # its veth's end on the cloud namespace's backhaul bridge
    distance_km: float

    @property
    def one_way_ms(self) -> float:
        """Fibre propagation one way: 5 us per km (light in glass, about c/1.47)."""
        return self.distance_km * PROPAGATION_MS_PER_KM


@dataclass(frozen=True)
class LabPlan:
    """Everything the lab is made of, derived from the rig alone."""

    lab_id: str
    state_dir: Path
    bridge: str
    bridge_address: str
    mgmt_prefix: int
    cloud_namespace: str
    cloud_address: str
    wan_prefix: int
    gateways: tuple[GatewayPlan, ...]
    tiers: tuple[TierPlan, ...] = ()

    @property
    def namespaces(self) -> set[str]:
        """Every namespace the plan has: gateways, cloud, tiers."""
        return (
            {g.namespace for g in self.gateways}
            | {self.cloud_namespace}
            | {t.namespace for t in self.tiers}
        )

    def tier(self, name: str) -> TierPlan:
        for tier in self.tiers:
            if tier.name == name:
                return tier
        raise LabError(f"virtual lab '{self.lab_id}' has no {name} tier (virtual.tiers)")

    @property
    def prefix(self) -> str:
        """Namespace name prefix shared by every namespace of this lab."""
        return f"fr-{self.lab_id}-"

    @property
    def client_key(self) -> Path:
        return self.state_dir / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.state_dir / "known_hosts"


def plan_for(rig: Rig) -> LabPlan:
    """Derive the lab's names and addresses from a virtual rig."""
    spec = rig.virtual
    if spec is None:
        raise LabError(f"rig '{rig.name}' is not a virtual lab (it has no `virtual:` section)")
    state_dir = Path(spec.state_dir)
    for private in PRIVATE_DIRS:
        if state_dir.is_relative_to(private):
            raise LabError(
                f"rig '{rig.name}': virtual.state_dir {state_dir} is under {private}, which every "
                "gateway replaces with its own; choose a directory outside /tmp and /root, "
                f"e.g. /var/lib/fieldrig/{rig.name}"
            )
    lab_id = spec.lab_id
    gateways = tuple(
        GatewayPlan(
            index=i,
            name=gw.name,
            board=gw.board,
            namespace=f"fr-{lab_id}-{gw.name}",
            mgmt_address=str(spec.gateway_address(i)),
            wan_address=str(spec.backhaul_address(i)),
            root_veth=f"frm-{lab_id}-{i}",
            cloud_veth=f"wan{i}",
            disk=state_dir / "gateways" / gw.name,
        )
        for i, gw in enumerate(rig.gateways)
    )
    return LabPlan(
        lab_id=lab_id,
        state_dir=state_dir,
        bridge=f"frb-{lab_id}",
        bridge_address=str(spec.bridge_address),
        mgmt_prefix=spec.management_subnet.prefixlen,
        cloud_namespace=f"fr-{lab_id}-cloud",
        cloud_address=str(spec.cloud_address),
        wan_prefix=spec.backhaul_subnet.prefixlen,
        gateways=gateways,
        tiers=tuple(
            TierPlan(
                name=name,
                namespace=f"fr-{lab_id}-tier-{name}",
                address=str(spec.tier_address(name)),
                cloud_veth=f"tier-{name}",
                distance_km=float(tier.distance_km),
            )
            for name, tier in sorted(spec.tiers.items())
        ),
    )


@dataclass
class GatewayStatus:
    name: str
    namespace: str
    address: str
    namespace_present: bool
    sshd_pid: int | None
    ssh_answers: bool
    power: str = "on"  # "off" or "booting" while the virtual supply has it down

    @property
    def healthy(self) -> bool:
        """Up and answering, or deliberately powered down by the bench supply."""
        if self.power != "on":
            return self.namespace_present
        return self.namespace_present and self.sshd_pid is not None and self.ssh_answers


@dataclass
class LabStatus:
    lab_id: str
    bridge_present: bool
    cloud_present: bool
    gateways: list[GatewayStatus] = field(default_factory=list)
    stray_namespaces: list[str] = field(default_factory=list)
    built_as_planned: bool = True
    supply: str | None = None  # the virtual supply's resource, when the rig has one
    supply_running: bool = True
    radios: list[str] = field(default_factory=list)  # gateways with an emulated dongle
    radios_running: bool = True
    tiers_running: bool = True  # every compute tier's namespace up, delayed as planned

    @property
    def healthy(self) -> bool:
        """Everything the rig describes is up, as it describes it, and nothing else is left."""
        return (
            self.built_as_planned
            and self.supply_running
            and self.radios_running
            and self.tiers_running
            and self.bridge_present
            and self.cloud_present
            and bool(self.gateways)
            and all(g.healthy for g in self.gateways)
            and not self.stray_namespaces
        )

    @property
    def anything_present(self) -> bool:
        return (
            self.bridge_present
            or self.cloud_present
            or any(g.namespace_present for g in self.gateways)
            or bool(self.stray_namespaces)
        )


def ssh_banner(address: str, port: int = 22, timeout: float = 0.5) -> bool:
    """True when an SSH server answers with its identification string."""
    try:
        with socket.create_connection((address, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            return sock.recv(64).startswith(b"SSH-")
    except OSError:
        return False


class VirtualLab:
    """Up, down and status of the virtual lab a rig describes."""

    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        self.plan = plan_for(rig)
        self.phases: dict[str, float] = {}
        """Seconds each phase of the last build here took (disks, network, sshd, ...)."""

    # ------------------------------------------------------------------ status
    def status(self) -> LabStatus:
        plan = self.plan
        namespaces = set(system.netns_list())
        ours = plan.namespaces
        status = LabStatus(
            lab_id=plan.lab_id,
            built_as_planned=self._built_digest() == self.digest(),
            bridge_present=plan.bridge in system.link_names(),
            cloud_present=plan.cloud_namespace in namespaces,
            stray_namespaces=sorted(
                n for n in namespaces if n.startswith(plan.prefix) and n not in ours
            ),
        )
        present_gws = [g for g in plan.gateways if g.namespace in namespaces]
        pids = bulk.pids_by_netns(g.namespace for g in present_gws)
        answering = bulk.each(present_gws, lambda g: ssh_banner(g.mgmt_address))
        answers = {g.name for g, ok in zip(present_gws, answering, strict=True) if ok}
        for gw in plan.gateways:
            present = gw.namespace in namespaces
            status.gateways.append(
                GatewayStatus(
                    name=gw.name,
                    namespace=gw.namespace,
                    address=gw.mgmt_address,
                    namespace_present=present,
                    sshd_pid=self._sshd_pid(gw, pids[gw.namespace]) if present else None,
                    ssh_answers=gw.name in answers,
                    power=self._power_state(gw.name),
                )
            )
        status.tiers_running = all(self._tier_ready(t, namespaces) for t in plan.tiers)
        supply = power_supply_of(self.rig)
        if supply is not None:
            status.supply = f"TCPIP::127.0.0.1::{supply[1]}::SOCKET"
            status.supply_running = self._service_pid(SUPPLY) is not None
        radios = virtual_radios(self.rig)
        if radios:
            status.radios = [r.gateway for r in radios]
            status.radios_running = self._service_pid(RADIOS) is not None and all(
                r.path.exists() for r in radios
            )
        return status

    def digest(self) -> str:
        """Identifies what the lab should be; a lab built from another rig is rebuilt."""
        spec = self.rig.virtual
        profiles = [BOARDS[gw.board] for gw in self.plan.gateways]
        extra = (spec.board_python, spec.mesh) if spec else None
        text = repr((LAB_FORMAT, self.plan, extra, profiles, virtual_radios(self.rig)))
        return hashlib.sha256(text.encode()).hexdigest()

    def _built_digest(self) -> str | None:
        try:
            return str(json.loads((self.plan.state_dir / "lab.json").read_text())["digest"])
        except (OSError, ValueError, KeyError):
            return None

    def _sshd_pid(self, gw: GatewayPlan, netns_pids: list[int] | None = None) -> int | None:
        """The gateway's sshd, if it runs (``netns_pids``: its namespace's pids, if known)."""
        try:
            pid = int((gw.disk / "run" / "sshd.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        if netns_pids is None:
            netns_pids = system.netns_pids(gw.namespace)
        return pid if system.pid_alive(pid) and pid in netns_pids else None

    # ------------------------------------------------------------------ up / down
    def up(self) -> bool:
        """Bring the lab up; returns False when it was already up and healthy (left alone)."""
        system.require_root("`fieldrig lab up`")
        for tool in system.REQUIRED_TOOLS:
            system.find_tool(tool)
        with self._locked():
            if self.status().healthy:
                return False
            self._teardown()  # stale pieces of a killed run, or a half-built lab
            try:
                self._build()
            except BaseException:
                self._teardown()
                raise
            self._set_owner(None)
            return True

    def acquire(self) -> bool:
        """Make the lab usable for a test session; True when this session must take it down.

        A healthy lab started by `fieldrig lab up` or by another live session is left alone.
        One whose owning session died (SIGKILL, crash) is adopted, and a broken or absent
        one is rebuilt; in both cases this process becomes the owner.
        """
        if self.status().healthy:
            owner = self._owner()
            if owner is None or system.pid_alive(owner):
                return False
        else:
            self.up()
        self._set_owner(os.getpid())
        return True

    def _owner(self) -> int | None:
        """Pid of the session that owns the lab; None when it was started by hand."""
        try:
            pid = json.loads((self.plan.state_dir / "owner.json").read_text())["pid"]
        except (OSError, ValueError, KeyError):
            return None
        return int(pid) if pid is not None else None

    def _set_owner(self, pid: int | None) -> None:
        (self.plan.state_dir / "owner.json").write_text(json.dumps({"pid": pid}) + "\n")

    def down(self, purge: bool = False) -> None:
        """Remove every namespace, link and process of the lab; `purge` also deletes state_dir."""
        system.require_root("`fieldrig lab down`")
        with self._locked():
            self._teardown()
            (self.plan.state_dir / "owner.json").unlink(missing_ok=True)
            (self.plan.state_dir / "lab.json").unlink(missing_ok=True)
        if purge:
            shutil.rmtree(self.plan.state_dir, ignore_errors=True)

    def processes(self) -> list[int]:
        """Every process of the lab: those in its namespaces, and its helper services."""
        namespaces = [n for n in system.netns_list() if n.startswith(self.plan.prefix)]
        pids = {pid for found in bulk.pids_by_netns(namespaces).values() for pid in found}
        services = (self._service_pid(service) for service in (SUPPLY, RADIOS))
        return sorted(pids | {pid for pid in services if pid is not None})

    def stop_sshd(self, gateway: str) -> None:
        """Kill one gateway's sshd and every session it serves (the link stays up)."""
        gw = self._gateway(gateway)
        pid = self._sshd_pid(gw)
        sessions = [p for p in system.netns_pids(gw.namespace) if _is_sshd(p)]
        system.kill_all(sessions + ([pid] if pid else []))

    def start_sshd(self, gateway: str) -> None:
        """(Re)start one gateway's sshd in its namespaces and wait until it answers."""
        gw = self._gateway(gateway)
        self._start_sshd(gw)
        self._wait_for_ssh([gw])

    # ------------------------------------------------------------------ power
    def power_off(self, gateway: str) -> None:
        """Cut a gateway's power: every process in it dies, its disk stays."""
        gw = self._gateway(gateway)
        self._set_power_state(gateway, "off")
        system.kill_all(system.netns_pids(gw.namespace), grace_s=0.0)

    def power_on(self, gateway: str) -> None:
        """Boot a gateway (its sshd starts); the supply calls this after the boot delay."""
        gw = self._gateway(gateway)
        self._set_power_state(gateway, "booting")
        self._start_sshd(gw)
        self._wait_for_ssh([gw])
        self._set_power_state(gateway, "on")

    def _power_file(self, gateway: str) -> Path:
        return self.plan.state_dir / "power" / gateway

    def _power_state(self, gateway: str) -> str:
        try:
            return self._power_file(gateway).read_text().strip() or "on"
        except OSError:
            return "on"

    def _set_power_state(self, gateway: str, state: str) -> None:
        path = self._power_file(gateway)
        if state == "on":
            path.unlink(missing_ok=True)
        else:
            path.parent.mkdir(exist_ok=True)
            path.write_text(state + "\n")

    def _service_pid(self, service: LabService) -> int | None:
        try:
            pid = int((self.plan.state_dir / f"{service.name}.pid").read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        return pid if service.module.encode() in cmdline and system.pid_alive(pid) else None

    def _start_service(self, service: LabService, ready: Callable[[], bool]) -> None:
        """Start ``python -m <module> --rig <file>`` detached; wait until ``ready()``."""
        self._await_service(service, self._spawn_service(service), ready)

    def _spawn_service(self, service: LabService) -> subprocess.Popen[bytes]:
        """Start ``python -m <module> --rig <file>`` detached, recording its pid."""
        if self.rig.source_path is None:
            raise LabError(f"rig '{self.rig.name}': the {service.title} needs the rig as a file")
        log_path = self.plan.state_dir / f"{service.name}.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", service.module, "--rig", str(self.rig.source_path)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            )  # fmt: skip
        (self.plan.state_dir / f"{service.name}.pid").write_text(f"{proc.pid}\n")
        return proc

    def _await_service(
        self, service: LabService, proc: subprocess.Popen[bytes], ready: Callable[[], bool]
    ) -> None:
        """Wait until a spawned service is ``ready()``; a LabError if it exits or hangs."""
        log_path = self.plan.state_dir / f"{service.name}.log"
        deadline = time.monotonic() + SERVICE_START_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise LabError(f"the {service.title} exited ({proc.returncode}); see {log_path}")
            if ready():
                return
            time.sleep(0.05)
        raise LabError(
            f"the {service.title} was not ready within {SERVICE_START_S} s; see {log_path}"
        )

    def _stop_service(self, service: LabService) -> None:
        pid = self._service_pid(service)
        if pid is not None:
            system.kill_all([pid])
        (self.plan.state_dir / f"{service.name}.pid").unlink(missing_ok=True)

    def _start_supply(self) -> None:
        supply = power_supply_of(self.rig)
        if supply is not None:
            self._start_service(SUPPLY, lambda: _listens(supply[1]))

    def _radios_ready(self) -> Callable[[], bool] | None:
        """How to tell the radio service is ready; None when the rig emulates no dongle."""
        radios = virtual_radios(self.rig)
        if not radios:
            return None
        attenuator = attenuator_of(self.rig)
        control = radio_dir(self.rig) / CONTROL_SOCKET

        def ready() -> bool:
            ports = all(r.path.exists() for r in radios) and control.exists()
            return ports and (attenuator is None or _listens(attenuator[1]))

        return ready

    def _gateway(self, name: str) -> GatewayPlan:
        for gw in self.plan.gateways:
            if gw.name == name:
                return gw
        raise LabError(f"virtual lab '{self.plan.lab_id}' has no gateway '{name}'")

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.plan.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.plan.state_dir / ".lock", "w", encoding="ascii") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _teardown(self) -> None:
        plan = self.plan
        self._stop_service(SUPPLY)
        self._stop_service(RADIOS)
        shutil.rmtree(plan.state_dir / "power", ignore_errors=True)
        shutil.rmtree(plan.state_dir / "radio", ignore_errors=True)
        namespaces = [n for n in system.netns_list() if n.startswith(plan.prefix)]
        system.kill_all([pid for pids in bulk.pids_by_netns(namespaces).values() for pid in pids])
        bulk.ip_batch([f"netns del {ns}" for ns in namespaces], force=True)
        links = [
            link
            for link in system.link_names()
            if link == plan.bridge or link.startswith(f"frm-{plan.lab_id}-")
        ]
        bulk.ip_batch([f"link del {link}" for link in links], force=True)
        cgroups.remove(plan.lab_id)
        leftovers = [n for n in system.netns_list() if n.startswith(plan.prefix)]
        if leftovers:
            raise LabError(f"could not remove namespaces {leftovers}; see `ip netns pids`")

    def _build(self) -> None:
        plan = self.plan
        self.phases = {}
        # The radio service builds its meshes (seconds for 5,000 meters) while the
        # gateways come up: it needs nothing from them.
        radios_ready = self._radios_ready()
        radios = self._spawn_service(RADIOS) if radios_ready is not None else None
        radios_spawned = time.perf_counter()
        with self._phase("keys"):
            self._prepare_keys()
            self._check_subnet_free()
            bulk.each(plan.gateways, self._prepare_disk)  # ssh-keygen per gateway, in parallel
        with self._phase("network"):
            self._build_network()
        with self._phase("sshd"):
            bulk.each(plan.gateways, self._start_sshd)
            self._write_known_hosts()
            self._wait_for_ssh(plan.gateways)
        with self._phase("supply"):
            self._start_supply()
        if radios is not None and radios_ready is not None:
            with self._phase("radios_wait"):
                self._await_service(RADIOS, radios, radios_ready)
            self.phases["radios"] = time.perf_counter() - radios_spawned
        (plan.state_dir / "lab.json").write_text(json.dumps({"digest": self.digest()}) + "\n")

    @contextmanager
    def _phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.phases[name] = time.perf_counter() - start

    def _build_network(self) -> None:
        """Bridge, namespaces and veths: one ``ip -batch`` in the root namespace creates
        every link straight in its namespace, then one batch per namespace configures it."""
        plan = self.plan
        cloud = plan.cloud_namespace
        root = [
            f"link add {plan.bridge} type bridge",
            f"addr add {plan.bridge_address}/{plan.mgmt_prefix} dev {plan.bridge}",
            f"link set {plan.bridge} up",
            f"netns add {cloud}",
        ]
        in_cloud = [
            "link set lo up",
            "link add wanbr type bridge",
            f"addr add {plan.cloud_address}/{plan.wan_prefix} dev wanbr",
            "link set wanbr up",
        ]
        inside: dict[str, list[str]] = {}
        for gw in plan.gateways:
            ns = gw.namespace
            root += [
                f"netns add {ns}",
                f"link add {gw.root_veth} type veth peer name mgmt0 netns {ns}",
                f"link set {gw.root_veth} master {plan.bridge} up",
                f"link add name wan0 netns {ns} type veth peer name {gw.cloud_veth} netns {cloud}",
            ]
            in_cloud.append(f"link set {gw.cloud_veth} master wanbr up")
            inside[ns] = [
                "link set lo up",
                f"addr add {gw.mgmt_address}/{plan.mgmt_prefix} dev mgmt0",
                "link set mgmt0 up",
                f"addr add {gw.wan_address}/{plan.wan_prefix} dev wan0",
                "link set wan0 up",
            ]
        for tier in plan.tiers:
            root += [
                f"netns add {tier.namespace}",
                f"link add name wan0 netns {tier.namespace} type veth peer name "
                f"{tier.cloud_veth} netns {cloud}",
            ]
            in_cloud.append(f"link set {tier.cloud_veth} master wanbr up")
            inside[tier.namespace] = [
                "link set lo up",
                f"addr add {tier.address}/{plan.wan_prefix} dev wan0",
                "link set wan0 up",
            ]
        bulk.ip_batch(root)
        bulk.ip_batch(in_cloud, cloud)
        bulk.each(list(inside.items()), lambda item: bulk.ip_batch(item[1], item[0]))
        for tier in plan.tiers:
            self._delay_tier(tier)

    @staticmethod
    def _tier_ready(tier: TierPlan, namespaces: set[str]) -> bool:
        if tier.namespace not in namespaces:
            return False
        relayed = tier.one_way_ms > 0 and not probe().netem
        return not relayed or bool(system.netns_pids(tier.namespace))

    def _delay_tier(self, tier: TierPlan) -> None:
        """Put the tier ``distance_km`` away: netem on both ends of its veth where the kernel
        has it, else every TCP connection into the tier goes through a delay relay in its
        namespace (UDP then crosses undelayed: measure tiers over TCP)."""
        if tier.one_way_ms <= 0:
            return
        if probe().netem:
            delay = f"{tier.one_way_ms:.4f}ms"
            system.run(["tc", "-n", tier.namespace, "qdisc", "add", "dev", "wan0", "root",
                        "netem", "delay", delay])  # fmt: skip
            system.run(["tc", "-n", self.plan.cloud_namespace, "qdisc", "add", "dev",
                        tier.cloud_veth, "root", "netem", "delay", delay])  # fmt: skip
            return
        argv = [sys.executable, "-m", "bench.faults.delay_relay", "--port", str(TIER_RELAY_PORT),
                "--delay-ms", f"{tier.one_way_ms:.4f}", "--mark", str(RELAY_MARK),
                "--bind", tier.address,
                "--parent-pid", "1"]  # fmt: skip  # lives as long as the lab's namespace
        relay = subprocess.Popen(
            system.in_namespace(tier.namespace, argv), stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True, env=system.bench_python_env(),
            start_new_session=True,
        )  # fmt: skip
        assert relay.stdout is not None
        line = relay.stdout.readline()
        relay.stdout.close()
        if not line.startswith(RELAY_READY):
            raise LabError(f"the delay relay of the {tier.name} tier did not start")
        nft = "\n".join(
            [
                f"table ip {TIER_TABLE} {{",
                "  chain pre {",
                "    type nat hook prerouting priority -100; policy accept;",
                f'    iifname "wan0" meta l4proto tcp redirect to :{TIER_RELAY_PORT}',
                "  }",
                "}",
                "",
            ]
        )
        system.run(["ip", "netns", "exec", tier.namespace, "nft", "-f", "-"], input_text=nft)

    def _check_subnet_free(self) -> None:
        wanted = ipaddress.IPv4Network(f"{self.plan.bridge_address}/{self.plan.mgmt_prefix}", False)
        for line in system.run(["ip", "-o", "-4", "addr", "show"], check=False).splitlines():
            parts = line.split()
            if "inet" not in parts:
                continue
            net = ipaddress.IPv4Interface(parts[parts.index("inet") + 1]).network
            if net.overlaps(wanted):
                raise LabError(
                    f"management subnet {wanted} of lab '{self.plan.lab_id}' overlaps {net} on "
                    f"interface {parts[1]}; pick another virtual.management_subnet in the rig file"
                )

    # ------------------------------------------------------------------ files
    def _prepare_keys(self) -> None:
        key = self.plan.client_key
        if not key.exists():
            system.run([system.find_tool("ssh-keygen"), "-q", "-t", "ed25519", "-N", "",
                        "-C", f"fieldrig-{self.plan.lab_id}", "-f", str(key)])  # fmt: skip

    def _prepare_disk(self, gw: GatewayPlan) -> None:
        board = BOARDS[gw.board]
        disk = gw.disk
        for sub in ("root", "tmp", "etc/ssh", "run", "var/log"):
            (disk / sub).mkdir(parents=True, exist_ok=True)
        (disk / "root").chmod(0o700)
        (disk / "tmp").chmod(0o1777)
        hostkey = disk / "etc/ssh/ssh_host_ed25519_key"
        if not hostkey.exists():
            system.run([system.find_tool("ssh-keygen"), "-q", "-t", "ed25519", "-N", "",
                        "-C", f"{gw.name}", "-f", str(hostkey)])  # fmt: skip
        pub = self.plan.client_key.with_suffix(".pub").read_text()
        (disk / "etc/ssh/authorized_keys").write_text(pub)
        (disk / "etc/os-release").write_text(
            f'PRETTY_NAME="{board.os_pretty_name}"\nID={board.os_id}\n'
            f'VERSION_ID="{board.os_version_id}"\nVERSION_CODENAME={board.os_version_codename}\n'
            f"FIELDRIG_VIRTUAL_BOARD={board.id}\n"
        )
        (disk / "etc/hostname").write_text(f"{gw.name}\n")
        (disk / "etc/ssh/sshd_config").write_text(
            "\n".join(
                [
                    f"ListenAddress {gw.mgmt_address}",
                    "Port 22",
                    f"HostKey {hostkey}",
                    f"PidFile {disk / 'run/sshd.pid'}",
                    f"AuthorizedKeysFile {disk / 'etc/ssh/authorized_keys'}",
                    "PermitRootLogin prohibit-password",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM yes",  # as the boards' images ship it
                    "PrintMotd no",
                    "PrintLastLog no",
                    "StrictModes no",
                    "UseDNS no",
                    "MaxSessions 64",
                    "MaxStartups 200:30:400",
                    "Subsystem sftp internal-sftp",
                    f"SetEnv PATH={self._board_path()}",
                    "",
                ]
            )
        )

    def _write_known_hosts(self) -> None:
        lines = []
        for gw in self.plan.gateways:
            key = (gw.disk / "etc/ssh/ssh_host_ed25519_key.pub").read_text().split()
            lines.append(f"{gw.mgmt_address} {key[0]} {key[1]}\n")
        tmp = self.plan.known_hosts.with_suffix(".tmp")
        tmp.write_text("".join(lines))
        os.replace(tmp, self.plan.known_hosts)

    # ------------------------------------------------------------------ sshd
    def _start_sshd(self, gw: GatewayPlan) -> None:
        board = BOARDS[gw.board]
        disk = gw.disk
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation dir
        (disk / "run/sshd.pid").unlink(missing_ok=True)
        procs = cgroups.create(self.plan.lab_id, gw.name, board.cpu_quota)
        script = "\n".join(
            [
                "set -e",
                f"mount --bind {disk}/root /root",
                f"mount --bind {disk}/tmp /tmp",
                f"mount --bind {disk}/etc/os-release /etc/os-release",
                f"mount --bind {disk}/etc/hostname /etc/hostname",
                "mount -t tmpfs -o size=64k,mode=755 fieldrig-firmware /sys/firmware",
                "mkdir -p /sys/firmware/devicetree/base",
                f"printf '%s\\0' '{board.model}' > /sys/firmware/devicetree/base/model",
                f"hostname {gw.name}",
                f"exec {system.find_tool('sshd')} -f {disk}/etc/ssh/sshd_config "
                f"-E {disk}/var/log/sshd.log",
            ]
        )
        argv = ["ip", "netns", "exec", gw.namespace, "unshare", "--mount", "--uts",
                "--propagation", "private", "/bin/sh", "-c", script]  # fmt: skip
        joins = cgroups.procs_files(self.plan.lab_id, gw.name) if procs is not None else []
        if joins:  # join the cgroups first: `ip netns exec` hides /sys/fs/cgroup
            join = " && ".join(f"echo $$ > {f}" for f in joins)
            argv = ["/bin/sh", "-c", f'{join} && exec "$@"', "sh", *argv]
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
        if proc.returncode != 0:
            raise LabError(
                f"sshd of gateway {gw.name} did not start: {proc.stderr.strip() or proc.stdout}; "
                f"see {disk}/var/log/sshd.log"
            )

    def _board_path(self) -> str:
        """PATH of sessions on the gateways: the rig's board_python first, the way a board
        image ships its own interpreter and inference runtime."""
        default = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        python = self.rig.virtual.board_python if self.rig.virtual else None
        if python is None:
            return default
        if not python.exists():
            raise LabError(
                f"rig '{self.rig.name}': virtual.board_python {python} does not exist; run "
                "scripts/setup (it creates the boards' Python with numpy and ai-edge-litert)"
            )
        return f"{python.parent}:{default}"

    def _wait_for_ssh(self, gateways: tuple[GatewayPlan, ...] | list[GatewayPlan]) -> None:
        deadline = time.monotonic() + 15.0
        pending = list(gateways)
        while pending and time.monotonic() < deadline:
            answered = bulk.each(pending, lambda gw: ssh_banner(gw.mgmt_address))
            pending = [gw for gw, ok in zip(pending, answered, strict=True) if not ok]
            if pending:
                time.sleep(0.05)
        if pending:
            names = ", ".join(gw.name for gw in pending)
            raise LabError(f"sshd of {names} did not answer within 15 s; see var/log/sshd.log")


def _listens(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        return True
    return False


def seen_from_gateway(path: Path) -> Path | None:
    """``path`` as a process in a virtual gateway sees it (its mount namespace is a copy of
    the host's), or None where the gateway has its own copy of the directory instead
    (``PRIVATE_DIRS``): the gateway-side prober opens an emulated dongle's pty this way."""
    if any(path == d or d in path.parents for d in PRIVATE_DIRS):
        return None
    return path


def power_supply_of(rig: Rig) -> tuple[str, int] | None:
    """(instrument name, port) of the PSU the rig expects on 127.0.0.1 (the virtual supply)."""
    for name, instrument in rig.instruments.items():
        parts = instrument.resource.split("::")
        if instrument.is_psu and len(parts) >= 3 and parts[1] in ("127.0.0.1", "localhost"):
            return name, int(parts[2])
    return None


def _is_sshd(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip().startswith("sshd")
    except OSError:
        return False
