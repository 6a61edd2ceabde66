"""Energy over measurement windows: trapezoid integration of an aligned power trace."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bench.power.sampler import Trace

MIN_SAMPLES_PER_WINDOW = 10


def integrate_joules(times_ns: np.ndarray, watts: np.ndarray, start_ns: int, end_ns: int) -> float:
    """Energy between two instants by the trapezoid rule, interpolating at the bounds."""
    if end_ns <= start_ns:
        raise ValueError("the window must end after it starts")
    if times_ns.size < 2 or start_ns < times_ns[0] or end_ns > times_ns[-1]:
        raise ValueError("the trace does not cover the window")
    inside = (times_ns > start_ns) & (times_ns < end_ns)
    t = np.concatenate(([start_ns], times_ns[inside], [end_ns])).astype(np.float64)
    w = np.interp(t, times_ns.astype(np.float64), watts)
    return float(np.sum((w[1:] + w[:-1]) / 2 * np.diff(t)) / 1e9)


@dataclass(frozen=True)
class WindowEnergy:
    """One latency window's energy: gross (primary) and idle-subtracted (secondary)."""

    inferences: int
    seconds: float
    joules: float
    samples: int
    idle_watts: float

    @property
    def average_watts(self) -> float:
        return self.joules / self.seconds

    @property
    def mj_per_inference(self) -> float:
        return self.joules * 1e3 / self.inferences

    @property
    def net_mj_per_inference(self) -> float:
        return (self.joules - self.idle_watts * self.seconds) * 1e3 / self.inferences

    @property
    def inferences_per_joule(self) -> float:
        return self.inferences / self.joules

    @property
    def trusted(self) -> bool:
        """Enough samples inside the window for the integral to mean something."""
        return self.samples >= MIN_SAMPLES_PER_WINDOW


def window_energies(
    trace: Trace,
    windows: Sequence[dict[str, int | list[int]]],
    *,
    clock_offset_ns: int,
    idle_watts: float,
) -> list[WindowEnergy]:
    """Energy of each runner window. The runner stamps windows with the board's wall clock;
    `clock_offset_ns` (board minus bench, as measured by bench.fleet.clock) maps them onto
    the trace's bench clock."""
    times, watts = trace.arrays()
    out = []
    for window in windows:
        start = int(window["start_wall_ns"]) - clock_offset_ns  # type: ignore[arg-type]
        end = int(window["end_wall_ns"]) - clock_offset_ns  # type: ignore[arg-type]
        latencies = window["latencies_ns"]
        assert isinstance(latencies, list)
        out.append(
            WindowEnergy(
                inferences=len(latencies),
                seconds=(end - start) / 1e9,
                joules=integrate_joules(times, watts, start, end),
                samples=int(np.count_nonzero((times >= start) & (times <= end))),
                idle_watts=idle_watts,
            )
        )
    return out
