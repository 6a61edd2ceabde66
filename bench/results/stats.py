"""Summaries of measured distributions (latency windows), with units in the names."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class LatencySummary:
    """Per-inference latency over all windows, plus the median of the window means (the
    primary figure: robust to one disturbed window)."""

    count: int
    windows: int
    median_of_window_means_us: float
    p50_us: float
    p90_us: float
    p99_us: float
    mean_us: float
    std_us: float
    min_us: float
    max_us: float

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def summarize_latencies(windows: Sequence[Sequence[int]]) -> LatencySummary:
    """Summarize per-window latency lists given in nanoseconds."""
    if not windows or any(len(w) == 0 for w in windows):
        raise ValueError("every window needs at least one latency")
    all_ns = np.concatenate([np.asarray(w, dtype=np.float64) for w in windows])
    us = all_ns / 1e3
    p50, p90, p99 = np.percentile(us, [50, 90, 99])
    window_means = [float(np.mean(w)) / 1e3 for w in windows]
    return LatencySummary(
        count=int(us.size),
        windows=len(windows),
        median_of_window_means_us=float(np.median(window_means)),
        p50_us=float(p50),
        p90_us=float(p90),
        p99_us=float(p99),
        mean_us=float(us.mean()),
        std_us=float(us.std(ddof=1)) if us.size > 1 else 0.0,
        min_us=float(us.min()),
        max_us=float(us.max()),
    )
