"""One bench session: the rig, its lab, connected gateways, their health and the run store."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.errors import BenchError
from bench.faults import (
    LinkTarget,
    Protection,
    Router,
    backend_report,
    clear_stale,
    routers_of,
)
from bench.fleet.inventory import collect_inventory
from bench.gateway import ConnectedGateway
from bench.instruments.meter import ArraySupplyMeter, SupplyChannelMeter, supply_meter
from bench.instruments.psu import PowerSupply, SafeExitGuard, safe_on_exit
from bench.instruments.registry import open_supply
from bench.lab.radio_plan import CONTROL_SOCKET, radio_dir, virtual_meshes, virtual_radios
from bench.lab.virtual import VirtualLab, seen_from_gateway
from bench.locks import FileLock, take_rig
from bench.mesh.control import MeshControl
from bench.radio.capability import Radio
from bench.radio.registry import RadioSetupError, open_radio
from bench.reservation import GatewayPlaces, hold_places, release_places
from bench.results import RunStore
from bench.rig import AttenuatorChannel, Rig
from bench.transport.serial import SerialPort

if TYPE_CHECKING:
    from bench.instruments.attenuator import Attenuator
    from bench.radio.skstack_radio import MeterLink

HEALTH_DEADLINE_S = 20.0


@dataclass
class BenchSession:
    """Everything a run needs once, shared by all tests (the `rig` fixture)."""

    spec: Rig
    store: RunStore
    gateways: dict[str, ConnectedGateway]
    lab: VirtualLab | None = None
    owns_lab: bool = False
    unavailable: dict[str, str] = field(default_factory=dict)
    inventory: dict[str, dict[str, Any]] = field(default_factory=dict)
    supplies: dict[str, PowerSupply] = field(default_factory=dict)
    attenuators: dict[str, Attenuator] = field(default_factory=dict)
    booting: set[str] = field(default_factory=set)  # gateways this session powered on
    joined: bool = False  # a pytest-xdist worker in a run another worker leads
    say: Callable[[str], None] = print  # the terminal, through the plugin
    rig_lock: FileLock | None = None
    places: GatewayPlaces | None = None  # labgrid places held (rig has a coordinator)
    _guards: dict[str, SafeExitGuard] = field(default_factory=dict)
    _ports: list[SerialPort] = field(default_factory=list)
    _meters: dict[str, MeterLink] = field(default_factory=dict)  # Route-B: port -> meter joined
    _radio_failed: dict[str, str] = field(default_factory=dict)  # gateway -> why its radio failed

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def virtual(self) -> bool:
        return self.spec.is_virtual

    def gateway(self, name: str) -> ConnectedGateway:
        """A healthy gateway by name (BenchError naming the reason otherwise)."""
        if name in self.unavailable:
            raise BenchError(f"gateway {name} is unavailable: {self.unavailable[name]}")
        return self.gateways[name]

    def own_path(self, relative: str) -> Path:
        """A file under the run directory that only this process writes: under
        pytest-xdist each worker gets its own (``liveness/heartbeats.gw1.jsonl``)."""
        path = self.store.run_dir / relative
        worker = os.environ.get("PYTEST_XDIST_WORKER")
        return path if worker is None else path.with_name(f"{path.stem}.{worker}{path.suffix}")

    def progress(self, text: str) -> None:
        """One line of progress on the terminal while long work runs (deployments,
        rollouts, sweeps): ``fieldrig: <text>``."""
        self.say(f"fieldrig: {text}")

    def radio(self, name: str) -> Radio:
        """The gateway's radio dongle through its driver (port transcript kept in the run),
        ready to probe: a Route-B dongle has joined its meter. A dongle that cannot be made
        ready is an infrastructure error, reported once; later calls repeat it at once."""
        link = self.spec.gateway(name).radio
        if link is None:
            raise BenchError(f"gateway {name} has no radio in rig '{self.spec.name}'")
        if name in self._radio_failed:
            raise RadioSetupError(self._radio_failed[name])
        where = f"{self.spec.source_path or self.spec.name}: gateway {name}"
        port = self.radio_port(name)
        try:
            return open_radio(link, port, where=where, meters=self._meters)
        except RadioSetupError as exc:
            port.close()
            self._radio_failed[name] = str(exc)
            self.store.record_event(gateway=name, kind="radio_failed", message=str(exc))
            self.say(f"fieldrig: INFRASTRUCTURE ERROR radio of gateway {name} unavailable: {exc}")
            raise

    def mesh_time_scale(self, name: str) -> float:
        """Mesh seconds per wall second behind the gateway's dongle: the virtual mesh's
        ``time_scale`` for an emulated dongle, 1 for a real one."""
        if self.spec.virtual is not None and any(
            r.gateway == name for r in virtual_meshes(self.spec)
        ):
            return float(self.spec.virtual.mesh.time_scale)
        return 1.0

    def mesh_control(self, name: str) -> MeshControl:
        """Meter power and interference for the gateway's emulated mesh (virtual lab only)."""
        if not any(r.gateway == name for r in virtual_meshes(self.spec)):
            raise BenchError(
                f"gateway {name} has no emulated mesh; meter power control exists only in "
                "the virtual lab"
            )
        return MeshControl(radio_dir(self.spec) / CONTROL_SOCKET, name)

    def attenuator(self, name: str) -> tuple[Attenuator, int, AttenuatorChannel]:
        """The attenuator channel in line with the gateway's dongle, with its limits."""
        radio = self.spec.gateway(name).radio
        link = radio.attenuator if radio is not None else None
        if link is None:
            raise BenchError(f"gateway {name} has no attenuator in rig '{self.spec.name}'")
        attenuator = self.attenuators.get(link.instrument)
        if attenuator is None:
            raise BenchError(f"attenuator {link.instrument} of gateway {name} is unavailable")
        limits = self.spec.attenuators[link.instrument].channels[link.channel]
        return attenuator, link.channel, limits

    def radio_port(self, name: str) -> SerialPort:
        """An open serial port to the gateway's radio dongle, with its transcript kept in
        the run (``serial/<gateway>.log``)."""
        link = self.spec.gateway(name).radio
        if link is None:
            raise BenchError(f"gateway {name} has no radio in rig '{self.spec.name}'")
        port = SerialPort(
            link.port,
            baudrate=link.baudrate,
            name=f"{name}-radio",
            transcript=self.store.run_dir / "serial" / f"{name}.log",
        )
        port.open()
        self._ports.append(port)
        return port

    def radio_gateway_port(self, name: str) -> str:
        """Where the gateway itself sees its dongle: the rig's ``radio.gateway_port``, or the
        pty of a dongle the virtual lab emulates, as the gateway's mount namespace shows it."""
        link = self.spec.gateway(name).radio
        if link is None:
            raise BenchError(f"gateway {name} has no radio in rig '{self.spec.name}'")
        if link.gateway_port is not None:
            return link.gateway_port
        emulated = next((r.path for r in virtual_radios(self.spec) if r.gateway == name), None)
        if emulated is None:
            raise BenchError(
                f"rig '{self.spec.name}', gateway {name}: radio.gateway_port is not set, so the "
                "bench cannot tell where the gateway sees its dongle; add it (e.g. "
                "gateway_port: /dev/ttyACM0)"
            )
        seen = seen_from_gateway(emulated)
        if seen is None:
            raise BenchError(
                f"rig '{self.spec.name}': the emulated dongle {emulated} lies where each gateway "
                "has a private directory; move virtual.state_dir out of /root and /tmp"
            )
        return str(seen)

    @contextlib.contextmanager
    def released_radio(self, name: str) -> Iterator[None]:
        """The bench's own handles on the gateway's dongle closed while the block runs (a
        dongle has one opener: the gateway drives it meanwhile), reopened after it."""
        ports = [p for p in self._ports if p.name == f"{name}-radio" and p.is_open]
        for port in ports:
            port.close()
        try:
            yield
        finally:
            for port in ports:
                port.open()

    @property
    def healthy(self) -> list[ConnectedGateway]:
        return [gw for name, gw in self.gateways.items() if name not in self.unavailable]

    @classmethod
    def start(
        cls,
        spec: Rig,
        *,
        selected: Iterable[str],
        runs_dir: Path,
        argv: list[str] | None = None,
        say: Callable[[str], None] = print,
    ) -> BenchSession:
        """Hold the rig on this host, bring the lab up (virtual rigs), open the run,
        health-check and inventory gateways."""
        rig_lock = take_rig(spec.name)  # a second session on this rig is refused here
        try:
            lab, owns = None, False
            if spec.is_virtual:
                lab = VirtualLab(spec)
                owns = lab.acquire()
                state = "up" if owns else "already up"
                say(f"fieldrig: virtual lab '{lab.plan.lab_id}' {state}")
            store = RunStore.create(
                runs_dir,
                rig_name=spec.name,
                rig_path=spec.source_path,
                rig_sha256=spec.file_sha256,
                virtual=spec.is_virtual,
                argv=argv,
            )
        except BaseException:
            rig_lock.release()
            raise
        gateways = {name: ConnectedGateway(spec.gateway(name)) for name in selected}
        session = cls(
            spec=spec, store=store, gateways=gateways, lab=lab, owns_lab=owns, rig_lock=rig_lock,
            say=say,
        )  # fmt: skip
        session.places = hold_places(session, say)  # before touching any gateway
        session.clear_stale_faults(say)
        session.power_up(say)
        session.open_attenuators(say)
        session.check_health(say)
        return session

    @classmethod
    def join(
        cls,
        spec: Rig,
        run_dir: Path,
        *,
        selected: Iterable[str],
        say: Callable[[str], None] = print,
    ) -> BenchSession:
        """Join the run another pytest-xdist worker of this pytest run started: its lab, its
        run directory, its instruments as they are (only the leader resets and safes them)."""
        store = RunStore.join(run_dir)
        gateways = {name: ConnectedGateway(spec.gateway(name)) for name in selected}
        lab = VirtualLab(spec) if spec.is_virtual else None
        session = cls(spec=spec, store=store, gateways=gateways, lab=lab, joined=True, say=say)
        session.places = hold_places(session, say, follow=True)  # what the leader took
        session.open_supplies(say)
        session.open_attenuators(say)
        session.check_health(say)
        return session

    def power_up(self, say: Callable[[str], None]) -> None:
        """Open every supply, clear what a crashed run left (trips, stray outputs), and power
        the selected gateways at the rig's set-points with protections configured."""
        self.open_supplies(say, reset=True)

    def open_supplies(self, say: Callable[[str], None], *, reset: bool = False) -> None:
        """Open every supply; with ``reset``, safe it first and power the selected gateways
        (a joining xdist worker leaves the supplies as the leader set them)."""
        wired = {
            (gw.power.instrument, gw.power.channel): name
            for name in self.gateways
            if (gw := self.spec.gateway(name)).power is not None and name not in self.unavailable
        }
        for name, instrument in self.spec.instruments.items():
            if not instrument.is_psu:
                continue
            try:
                psu = open_supply(name, instrument)
                if reset:
                    self._guards[name] = safe_on_exit(psu)
                    was_on = {ch: psu.output_state(ch) for ch in instrument.channels}
                    psu.safe_state()
                    for channel in instrument.channels:
                        gateway = wired.get((name, channel))
                        if gateway is not None:
                            psu.output(channel, True)
                            if not was_on[channel]:
                                self.booting.add(gateway)
            except BenchError as exc:
                self.store.record_event(gateway=None, kind="instrument_failed", message=str(exc))
                say(f"fieldrig: INFRASTRUCTURE ERROR supply {name} unavailable: {exc}")
                continue
            self.supplies[name] = psu

    def clear_stale_faults(self, say: Callable[[str], None]) -> None:
        """Remove link faults a killed run left on this rig's backhauls (owner mark dead)."""
        namespaces: list[str | None] = sorted(
            {
                gw.backhaul.netns.namespace if gw.backhaul.netns else None
                for gw in self.spec.gateways
                if gw.backhaul is not None and gw.backhaul.router is None
            },
            key=lambda ns: ns or "",
        )
        places: list[tuple[str | None, list[Router]]] = [(None, [])] if namespaces else []
        places += [(router.label, [router]) for router in routers_of(self.spec)]
        for label, routers in places:  # the bench host, then each router over SSH
            try:
                report = backend_report(routers[0] if routers else None)
            except BenchError as exc:  # e.g. not root: faults will say so when used
                report = {"error": str(exc), "where": label or "bench host"}
            self.store.record_event(
                gateway=None, kind="link_fault_backends", message=json.dumps(report)
            )
            try:
                removed = clear_stale(namespaces if label is None else [], routers)
            except BenchError as exc:  # an unreachable router: its faults fail when used
                if label is None:
                    raise
                self.store.record_event(
                    gateway=None, kind="stale_fault_check_failed", message=str(exc)
                )
                say(f"fieldrig: INFRASTRUCTURE ERROR stale faults not checked: {exc}")
                continue
            for stale in removed:
                self.store.record_event(
                    gateway=None, kind="stale_fault_removed", message=str(stale)
                )
                say(f"fieldrig: removed a stale fault left by a killed run: {stale}")

    def backhaul(self, name: str) -> LinkTarget:
        """Where the gateway's backhaul can be impaired (never its management link)."""
        link = self.spec.gateway(name).backhaul
        if link is None:
            raise BenchError(f"gateway {name} has no backhaul in rig '{self.spec.name}'")
        return LinkTarget.from_backhaul(link)

    def fault_protection(self) -> Protection:
        """The management paths no fault may touch: every gateway's SSH host."""
        return Protection.for_rig(self.spec)

    def record_fault(self, gateway: str | None, event: dict[str, Any]) -> None:
        """A fault timeline event into the run's records (a FaultTimeline sink)."""
        self.store.record_event(
            gateway=gateway, kind=f"fault_{event['action']}", message=json.dumps(event)
        )

    def open_attenuators(self, say: Callable[[str], None]) -> None:
        """Open every attenuator and put each channel at its safe setting (which also clears
        what a crashed run left behind); a joining xdist worker leaves them as they are."""
        if not self.spec.attenuators:
            return
        from bench.instruments.registry import open_attenuator

        for name, spec in self.spec.attenuators.items():
            try:
                attenuator = open_attenuator(name, spec)
                if not self.joined:
                    attenuator.safe_state()
            except BenchError as exc:
                self.store.record_event(gateway=None, kind="instrument_failed", message=str(exc))
                say(f"fieldrig: INFRASTRUCTURE ERROR attenuator {name} unavailable: {exc}")
                continue
            self.attenuators[name] = attenuator

    def power(self, gateway: str) -> tuple[PowerSupply, int, SupplyChannelMeter | ArraySupplyMeter]:
        """The supply and channel that power a gateway, and a meter on that channel (the
        supply's datalogger where its dialect has one, point queries otherwise)."""
        link = self.spec.gateway(gateway).power
        if link is None:
            raise BenchError(f"gateway {gateway} has no power channel in rig '{self.spec.name}'")
        psu = self.supplies.get(link.instrument)
        if psu is None:
            raise BenchError(f"supply {link.instrument} of gateway {gateway} is unavailable")
        return (
            psu,
            link.channel,
            supply_meter(psu, link.channel, f"{link.instrument} ch{link.channel}"),
        )

    def check_health(self, say: Callable[[str], None]) -> None:
        """Connect to every gateway in parallel and take its inventory; failures are reported
        once as infrastructure events and the gateway's tests are skipped."""

        def probe(gw: ConnectedGateway) -> dict[str, Any]:
            deadline = gw.params.reconnect_deadline_s  # a board just powered on is booting
            if gw.name not in self.booting:
                deadline = min(HEALTH_DEADLINE_S, deadline)
            gw.connect(deadline_s=deadline)
            return collect_inventory(gw)

        if not self.gateways:
            return
        with ThreadPoolExecutor(max_workers=min(32, len(self.gateways))) as pool:
            futures = {
                name: pool.submit(probe, gw)
                for name, gw in self.gateways.items()
                if name not in self.unavailable  # e.g. its labgrid place is someone else's
            }
        for name, future in futures.items():
            try:
                self.inventory[name] = future.result()
            except BenchError as exc:
                self.unavailable[name] = str(exc)
                self.store.record_event(gateway=name, kind="health_check_failed", message=str(exc))
                say(f"fieldrig: INFRASTRUCTURE ERROR gateway {name} unavailable: {exc}")
        self.store.set_inventory(self.inventory)

    def close(
        self, status: str, *, keep_lab: bool = False, say: Callable[[str], None] = print
    ) -> None:
        """Finish the run, close connections, take down a lab this session brought up.

        A joined xdist worker only closes its connections and leaves instruments, lab and
        run to the leader."""
        for port in self._ports:
            port.close()
        for gw in self.gateways.values():
            gw.close()
        if self.joined:
            for psu in self.supplies.values():
                psu.detach()
            for attenuator in self.attenuators.values():
                attenuator.detach()
            self.store.detach()
            return
        for name, psu in self.supplies.items():
            try:
                psu.close()  # the rig's declared safe state
            except BenchError as exc:
                self.store.record_event(gateway=None, kind="safe_state_failed", message=str(exc))
                say(f"fieldrig: INFRASTRUCTURE ERROR supply {name}: {exc}")
            self._guards.pop(name).remove()
        for guard in self._guards.values():  # supplies that failed while being set up
            guard.remove()
        for name, attenuator in self.attenuators.items():
            try:
                attenuator.close()  # every channel back to its safe setting
            except BenchError as exc:
                self.store.record_event(gateway=None, kind="safe_state_failed", message=str(exc))
                say(f"fieldrig: INFRASTRUCTURE ERROR attenuator {name}: {exc}")
        release_places(self, say)
        for warning in self.store.finish(status):
            say(f"fieldrig: {warning}")
        try:
            if self.lab is not None and self.owns_lab and not keep_lab:
                self.lab.down()
                say(f"fieldrig: virtual lab '{self.lab.plan.lab_id}' down")
        finally:
            if self.rig_lock is not None:
                self.rig_lock.release()
