"""The "meter" capability: something that reads a board's power draw now.

A bench supply channel is one meter; a board's own power monitor (Jetson's INA3221 through
hwmon, read over SSH) is another. A Joulescope, Otii or NVML reader is one more class with
the same two members.

A meter that samples on its own clock (a supply's datalogger, a Joulescope's stream) also
offers ``read_block()`` (:class:`BlockPowerMeter`): a block of evenly spaced readings and
when the first was taken. The sampler then records the instrument's rate instead of one
reading per round trip; a meter without ``read_block`` is read point by point as before.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from bench.gateway import CommandRunner
from bench.instruments.psu import ArraySupply, PowerSupply

__all__ = [
    "ArraySupplyMeter",
    "BlockPowerMeter",
    "Ina3221Meter",
    "PowerBlock",
    "PowerMeter",
    "SupplyChannelMeter",
    "supply_meter",
]


class PowerMeter(Protocol):
    """Reads instantaneous power, stamped with the bench's wall clock."""

    name: str

    def read(self) -> tuple[int, float]:
        """(bench wall-clock ns at the reading, watts)."""
        ...


@dataclass(frozen=True)
class PowerBlock:
    """Readings taken by the instrument every ``interval_s``, the first at ``start_ns``
    (bench wall clock)."""

    start_ns: int
    interval_s: float
    watts: tuple[float, ...]

    def times_ns(self) -> list[int]:
        """Reading ``i`` at ``start_ns + i * interval_s``."""
        return [self.start_ns + round(i * self.interval_s * 1e9) for i in range(len(self.watts))]


@runtime_checkable
class BlockPowerMeter(PowerMeter, Protocol):
    """A meter that can also hand over a block of readings sampled on its own clock."""

    def read_block(self) -> PowerBlock:
        """The next block; blocks for as long as the instrument takes to sample it."""
        ...


class SupplyChannelMeter:
    """A bench supply's output: MEAS:POW? where the dialect has it, else V x I."""

    def __init__(self, psu: PowerSupply, channel: int, name: str = "") -> None:
        self.psu = psu
        self.channel = channel
        self.name = name or f"psu channel {channel}"

    def read(self) -> tuple[int, float]:
        before = time.time_ns()
        watts = self.psu.measure_power(self.channel)
        return (before + time.time_ns()) // 2, watts


class ArraySupplyMeter:
    """A bench supply's output read through its datalogger: ``points`` readings of V x I,
    ``interval_s`` apart, per block (defaults: 1 kHz in 0.5 s blocks).

    ``read()`` stays a single point query, so the meter is also a plain
    :class:`PowerMeter`. A block holds the supply's session for its whole length, and the
    sampler stops between blocks: keep blocks well under the sampler's 10 s join timeout.
    """

    def __init__(
        self,
        psu: ArraySupply,
        channel: int,
        name: str = "",
        *,
        interval_s: float = 0.001,
        points: int = 500,
    ) -> None:
        self.psu = psu
        self.channel = channel
        self.name = name or f"psu channel {channel} (datalogger)"
        self.interval_s = interval_s
        self.points = points

    def read(self) -> tuple[int, float]:
        before = time.time_ns()
        watts = self.psu.measure_power(self.channel)
        return (before + time.time_ns()) // 2, watts

    def read_block(self) -> PowerBlock:
        sweep = self.psu.acquire_array(self.channel, self.points, self.interval_s)
        return PowerBlock(sweep.start_ns, sweep.interval_s, tuple(sweep.watts()))


def supply_meter(
    psu: PowerSupply,
    channel: int,
    name: str = "",
    *,
    interval_s: float = 0.001,
    points: int = 500,
) -> SupplyChannelMeter | ArraySupplyMeter:
    """The datalogger where the supply's driver has one, else point queries."""
    if isinstance(psu, ArraySupply) and psu.has_datalogger:
        return ArraySupplyMeter(psu, channel, name, interval_s=interval_s, points=points)
    return SupplyChannelMeter(psu, channel, name)


class Ina3221Meter:
    """One rail of an INA3221 power monitor, as Jetson boards expose it through hwmon.

    The driver publishes millivolts in ``in<N>_input`` and milliamps in ``curr<N>_input``
    under ``/sys/bus/i2c/drivers/ina3221/<addr>/hwmon/hwmon*/`` (Jetson Linux developer
    guide, "Jetson Orin Nano power monitoring"). Each reading is one agent round trip.
    """

    def __init__(self, gateway: CommandRunner, hwmon_dir: str, rail: int, name: str = "") -> None:
        self.gateway = gateway
        self.rail = rail
        self.name = name or f"{gateway.name} INA3221 rail {rail}"
        self._argv = ["cat", f"{hwmon_dir}/in{rail}_input", f"{hwmon_dir}/curr{rail}_input"]

    def read(self) -> tuple[int, float]:
        before = time.time_ns()
        millivolts, milliamps = (float(v) for v in self.gateway.run(self._argv).text.split())
        return (before + time.time_ns()) // 2, millivolts * milliamps / 1e6
