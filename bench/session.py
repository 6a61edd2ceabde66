"""One bench session: the rig, its lab, connected gateways, their health and the run store."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.fleet.inventory import collect_inventory
from bench.gateway import ConnectedGateway
from bench.instruments.meter import ArraySupplyMeter, SupplyChannelMeter, supply_meter
from bench.instruments.psu import PowerSupply, SafeExitGuard, safe_on_exit
from bench.instruments.registry import open_supply
from bench.lab.virtual import VirtualLab
from bench.results import RunStore
from bench.rig import Rig
from bench.transport.serial import SerialPort

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
    booting: set[str] = field(default_factory=set)  # gateways this session powered on
    _guards: dict[str, SafeExitGuard] = field(default_factory=dict)
    _ports: list[SerialPort] = field(default_factory=list)

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
        """Bring the lab up (virtual rigs), open the run, health-check and inventory gateways."""
        lab, owns = None, False
        if spec.is_virtual:
            lab = VirtualLab(spec)
            owns = lab.acquire()
            say(f"fieldrig: virtual lab '{lab.plan.lab_id}' " + ("up" if owns else "already up"))
        store = RunStore.create(
            runs_dir,
            rig_name=spec.name,
            rig_path=spec.source_path,
            rig_sha256=spec.file_sha256,
            virtual=spec.is_virtual,
            argv=argv,
        )
        gateways = {name: ConnectedGateway(spec.gateway(name)) for name in selected}
        session = cls(spec=spec, store=store, gateways=gateways, lab=lab, owns_lab=owns)
        session.power_up(say)
        session.check_health(say)
        return session

    def power_up(self, say: Callable[[str], None]) -> None:
        """Open every supply, clear what a crashed run left (trips, stray outputs), and power
        the selected gateways at the rig's set-points with protections configured."""
        wired = {
            (gw.power.instrument, gw.power.channel): name
            for name in self.gateways
            if (gw := self.spec.gateway(name)).power is not None
        }
        for name, instrument in self.spec.instruments.items():
            if not instrument.is_psu:
                continue
            try:
                psu = open_supply(name, instrument)
                self._guards[name] = safe_on_exit(psu)
                was_on = {channel: psu.output_state(channel) for channel in instrument.channels}
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
            futures = {name: pool.submit(probe, gw) for name, gw in self.gateways.items()}
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
        """Finish the run, close connections, take down a lab this session brought up."""
        for port in self._ports:
            port.close()
        for gw in self.gateways.values():
            gw.close()
        for name, psu in self.supplies.items():
            try:
                psu.close()  # the rig's declared safe state
            except BenchError as exc:
                self.store.record_event(gateway=None, kind="safe_state_failed", message=str(exc))
                say(f"fieldrig: INFRASTRUCTURE ERROR supply {name}: {exc}")
            self._guards.pop(name).remove()
        for guard in self._guards.values():  # supplies that failed while being set up
            guard.remove()
        for warning in self.store.finish(status):
            say(f"fieldrig: {warning}")
        if self.lab is not None and self.owns_lab and not keep_lab:
            self.lab.down()
            say(f"fieldrig: virtual lab '{self.lab.plan.lab_id}' down")
