"""The virtual lab's bench supply: a SCPI server whose outputs power the virtual gateways.

Each channel wired to a gateway in the rig (``power: {instrument, channel}``) draws the
current the gateway's board profile says it would: idle watts plus watts per busy core,
where "busy" is the gateway's real CPU time from its cgroup, plus measurement noise. Output
off powers the gateway off (every process in it dies; its disk survives); output on boots
it: after the profile's boot delay its sshd starts again.

Run by the lab as ``python -m bench.lab.power --rig PATH`` on 127.0.0.1 only.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from bench.boards import BOARDS, BoardProfile
from bench.errors import LabError
from bench.lab import cgroups
from bench.lab.scpi_server import ScpiPsuServer
from bench.lab.service import Started, run_service
from bench.lab.virtual import VirtualLab, power_supply_of
from bench.rig import Rig

NOISE_FRACTION = 0.01  # 1 % of the idle current, Gaussian


@dataclass
class _Sample:
    at: float
    usage_ns: int
    busy_cores: float = 0.0


class GatewayLoad:
    """The load on each channel: the virtual gateway wired to it."""

    def __init__(self, lab: VirtualLab, wiring: dict[int, str], seed: int = 0) -> None:
        self.lab = lab
        self.wiring = wiring
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._samples: dict[int, _Sample] = {}
        self._powered = dict.fromkeys(wiring, True)
        self.armed = True  # False while the lab sets the supply to the state it booted in

    def _profile(self, channel: int) -> BoardProfile:
        return BOARDS[self.lab.rig.gateway(self.wiring[channel]).board]

    def _busy_cores(self, channel: int, now: float) -> float:
        usage = cgroups.cpu_usage_ns(self.lab.plan.lab_id, self.wiring[channel])
        if usage is None:
            return 0.0
        last = self._samples.get(channel)
        if last is None or usage < last.usage_ns:
            self._samples[channel] = _Sample(now, usage)
            return 0.0
        elapsed = now - last.at
        if elapsed < 0.02:  # too short to tell; keep the previous estimate
            return last.busy_cores
        busy = (usage - last.usage_ns) / 1e9 / elapsed
        self._samples[channel] = _Sample(now, usage, busy)
        return busy

    def current(self, channel: int, volts: float, now: float) -> float:
        if channel not in self.wiring or volts <= 0:
            return 0.0
        profile = self._profile(channel)
        with self._lock:
            busy = self._busy_cores(channel, now) if self._powered[channel] else 0.0
            noise = self._random.gauss(0.0, NOISE_FRACTION * profile.idle_watts)
        watts = profile.idle_watts + profile.watts_per_busy_core * busy + noise
        return max(0.0, watts / volts)

    def on_output(self, channel: int, on: bool) -> None:
        gateway = self.wiring.get(channel)
        if gateway is None or not self.armed:
            return
        with self._lock:
            self._powered[channel] = on
            self._samples.pop(channel, None)
        if on:
            delay = self._profile(channel).boot_delay_s
            threading.Timer(delay, self._boot, args=(channel, gateway)).start()
        else:
            self.lab.power_off(gateway)

    def _boot(self, channel: int, gateway: str) -> None:
        with self._lock:
            if not self._powered[channel]:  # switched off again while booting
                return
        self.lab.power_on(gateway)


def serve(rig: Rig) -> ScpiPsuServer:
    """Start the supply for a virtual rig, outputs on at their set-points (boards running)."""
    supply = power_supply_of(rig)
    if supply is None:
        raise LabError(f"rig '{rig.name}' has no supply on 127.0.0.1 to emulate")
    name, port = supply
    instrument = rig.instruments[name]
    lab = VirtualLab(rig)
    wiring = {
        gw.power.channel: gw.name
        for gw in rig.gateways
        if gw.power is not None and gw.power.instrument == name
    }
    load = GatewayLoad(lab, wiring)
    server = ScpiPsuServer(
        port=port, dialect="keysight-e36300", channels=max(instrument.channels), backend=load
    ).start()
    # The lab's gateways are running: their outputs start on, at the rig's set-points.
    load.armed = False
    for number, spec in instrument.channels.items():
        for line in (f"VOLT {spec.voltage},(@{number})", f"CURR {spec.current_limit},(@{number})",
                     f"OUTP {'ON' if number in wiring else 'OFF'},(@{number})"):  # fmt: skip
            server.psu.execute(line)
    load.armed = True
    return server


def _start(rig: Rig) -> Started:
    server = serve(rig)
    return f"on {server.resource}", server.stop


def main(argv: Sequence[str] | None = None) -> int:
    return run_service(
        "python -m bench.lab.power", "fieldrig virtual supply", __doc__, argv, _start
    )


if __name__ == "__main__":
    raise SystemExit(main())
