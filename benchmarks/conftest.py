"""Benchmarks of fieldrig itself, against the real virtual lab.

Every comparison runs the baseline and fieldrig in the same process on the same lab, and
the results are printed as ratios at the end of the session.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.lab.virtual import VirtualLab
from bench.rig import load_rig
from tests.conftest import lab, virtual_rig

MEDIANS: dict[str, float] = {}
RIGS_DIR = Path(__file__).parent / "rigs"
__all__ = ["lab", "virtual_rig"]  # the virtual lab fixtures of the project's tests


def remember(name: str, benchmark: Any) -> float:
    """Store the median (seconds) of a finished benchmark under `name` and return it."""
    median = float(benchmark.stats.stats.median)
    MEDIANS[name] = median
    return median


def interleaved_medians(calls: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median seconds of each call, measured round-robin so load drift hits all alike."""
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


@pytest.fixture(scope="session")
def lab20() -> Iterator[VirtualLab]:
    """A lab of twenty gateways (rigs in benchmarks/rigs/)."""
    lab = VirtualLab(load_rig(RIGS_DIR / "bench20.yaml"))
    owns = lab.acquire()
    yield lab
    if owns:
        lab.down()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not MEDIANS:
        return
    terminalreporter.section("fieldrig benchmark medians and ratios")
    for name, median in MEDIANS.items():
        terminalreporter.write_line(f"{name:<40} {median * 1e3:9.3f} ms")
    pairs = [
        ("ssh_new_connection", "fieldrig_run"),
        ("ssh_controlmaster", "fieldrig_run"),
        ("paramiko_exec", "fieldrig_run"),
        ("ssh_controlmaster", "fieldrig_agent_round_trip"),
        ("sequential_20", "fanout_20"),
    ]
    for slow, fast in pairs:
        if slow in MEDIANS and fast in MEDIANS:
            ratio = MEDIANS[slow] / MEDIANS[fast]
            terminalreporter.write_line(f"{slow} / {fast}: {ratio:.1f}x")
