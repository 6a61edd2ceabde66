"""Units and metric names accepted in run records.

Every measurement carries a unit from a small fixed set, and a slug-like metric name, so
that reports can compare runs without guessing what a number means.
"""

from __future__ import annotations

import re
from typing import Final

#: fibre propagation one way, ms per km: light in glass travels at about c/1.47, ~5 us/km
PROPAGATION_MS_PER_KM: Final = 0.005

UNITS: Final[tuple[str, ...]] = (
    "s",
    "ms",
    "us",
    "ns",
    "W",
    "mW",
    "J",
    "mJ",
    "V",
    "A",
    "mA",
    "%",
    "1",  # dimensionless
    "count",
    "B",
    "bit/s",
    "dBm",
    "dB",
    "Hz",
    "degC",
    "inf/J",
    "km",
)
_UNIT_SET: Final[frozenset[str]] = frozenset(UNITS)

METRIC_PATTERN: Final[str] = r"^[a-z][a-z0-9_.]*$"
_METRIC_RE: Final = re.compile(r"[a-z][a-z0-9_.]*")


def check_unit(unit: str) -> str:
    """Return ``unit`` if it is a known unit, else raise ValueError listing the valid ones."""
    if not isinstance(unit, str) or unit not in _UNIT_SET:
        valid = ", ".join(repr(u) for u in UNITS)
        raise ValueError(f"unknown unit {unit!r}; valid units are: {valid}")
    return unit


def check_metric(metric: str) -> str:
    """Return ``metric`` if it is slug-like (``^[a-z][a-z0-9_.]*$``), else raise ValueError."""
    if not isinstance(metric, str) or _METRIC_RE.fullmatch(metric) is None:
        raise ValueError(
            f"bad metric name {metric!r}: it must match {METRIC_PATTERN} "
            "(a lower-case letter, then lower-case letters, digits, '_' or '.'), "
            "e.g. 'latency.p50' or 'energy_per_inference'"
        )
    return metric
