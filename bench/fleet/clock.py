"""Clock offset and round trip to a gateway, NTP-style over the control channel.

Each sample brackets the board's wall clock between two local readings; the offset is
board - midpoint and its error is bounded by half the round trip, so the sample with the
smallest round trip wins (as NTP's clock filter does).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass

Probe = Callable[[], tuple[int, int, int]]


@dataclass(frozen=True)
class ClockEstimate:
    """Board clock minus bench clock, with the round trip that bounds its error."""

    offset_ns: int
    rtt_ns: int
    median_rtt_ns: int
    samples: int

    @property
    def error_bound_ns(self) -> int:
        return self.rtt_ns // 2


def estimate_clock(probe: Probe, samples: int = 16) -> ClockEstimate:
    """Take `samples` probes and keep the one with the smallest round trip."""
    if samples < 1:
        raise ValueError("samples must be at least 1")
    taken = []
    for _ in range(samples):
        t0, remote, t1 = probe()
        taken.append((t1 - t0, remote - (t0 + t1) // 2))
    best_rtt, best_offset = min(taken)
    return ClockEstimate(
        offset_ns=best_offset,
        rtt_ns=best_rtt,
        median_rtt_ns=int(statistics.median(rtt for rtt, _ in taken)),
        samples=samples,
    )
