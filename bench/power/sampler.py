"""Sample a power meter in the background while something runs."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np

from bench.errors import BenchError
from bench.instruments.meter import BlockPowerMeter, PowerMeter
from bench.instruments.psu import InstrumentError


@dataclass
class Trace:
    """Timestamped power samples (bench wall clock, ns) and what sampling achieved."""

    meter: str
    times_ns: list[int] = field(default_factory=list)
    watts: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    fallback: str | None = None  # why array reads were abandoned for point queries

    @property
    def rate_hz(self) -> float:
        if len(self.times_ns) < 2:
            return 0.0
        return (len(self.times_ns) - 1) / ((self.times_ns[-1] - self.times_ns[0]) / 1e9)

    @property
    def jitter_ms(self) -> float:
        """Standard deviation of the intervals between samples."""
        if len(self.times_ns) < 3:
            return 0.0
        return float(np.std(np.diff(self.times_ns)) / 1e6)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(self.times_ns, dtype=np.int64), np.asarray(self.watts, dtype=np.float64)


class Sampler:
    """Reads `meter` as fast as it answers (or at `rate_hz`) until stopped.

    A meter with blocks (:class:`~bench.instruments.meter.BlockPowerMeter`, e.g. a supply's
    datalogger) is read block after block at the instrument's own rate; each reading is
    stamped ``block.start_ns + i * block.interval_s`` and ``rate_hz`` does not apply. The
    sampler stops between blocks. Use as a context manager around the measurement; the
    trace survives a failing body.
    """

    def __init__(self, meter: PowerMeter, rate_hz: float | None = None) -> None:
        self.meter = meter
        self.period_s = 1.0 / rate_hz if rate_hz else 0.0
        self.trace = Trace(meter=meter.name)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, name=f"sampler-{meter.name}", daemon=True
        )

    def _loop(self) -> None:
        if isinstance(self.meter, BlockPowerMeter) and self._block_loop(self.meter):
            return
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                at, watts = self.meter.read()
            except BenchError as exc:
                self.trace.errors.append(str(exc))
                if len(self.trace.errors) > 10:
                    return
                continue
            self.trace.times_ns.append(at)
            self.trace.watts.append(watts)
            if self.period_s:
                next_at += self.period_s
                delay = next_at - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)

    def _block_loop(self, meter: BlockPowerMeter) -> bool:
        """Read blocks until stopped; False when the very first block fails (an instrument
        whose datalogger does not answer as its dialect says), so point queries take over."""
        while not self._stop.is_set():
            try:
                block = meter.read_block()
            except BenchError as exc:
                if isinstance(exc, InstrumentError) and not self.trace.times_ns:
                    self.trace.fallback = f"datalogger failed, point queries instead: {exc}"
                    return False
                self.trace.errors.append(str(exc))
                if len(self.trace.errors) > 10:
                    return True
                continue
            self.trace.times_ns.extend(block.times_ns())
            self.trace.watts.extend(block.watts)
        return True

    def __enter__(self) -> Trace:
        self._thread.start()
        return self.trace

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def sample_for(meter: PowerMeter, seconds: float, rate_hz: float | None = None) -> Trace:
    """Sample for a fixed time (e.g. an idle baseline)."""
    with Sampler(meter, rate_hz) as trace:
        time.sleep(seconds)
    return trace
