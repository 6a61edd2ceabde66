"""The "meter" capability: something that reads a board's power draw now.

A bench supply channel is one meter; a board's own power monitor (Jetson's INA3221 through
hwmon, read over SSH) is another. A Joulescope, Otii or NVML reader is one more class with
the same two members.
"""

from __future__ import annotations

import time
from typing import Protocol

from bench.gateway import CommandRunner
from bench.instruments.psu import PowerSupply


class PowerMeter(Protocol):
    """Reads instantaneous power, stamped with the bench's wall clock."""

    name: str

    def read(self) -> tuple[int, float]:
        """(bench wall-clock ns at the reading, watts)."""
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
