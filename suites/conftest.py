"""Options of the shipped suites (how long and how many ways to measure)."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fieldrig suites")
    group.addoption("--inference-windows", type=int, default=5,
                    help="latency windows per run (default 5)")  # fmt: skip
    group.addoption("--inference-min-secs", type=float, default=1.0,
                    help="minimum seconds per latency window (default 1.0)")  # fmt: skip
    group.addoption("--inference-min-count", type=int, default=50,
                    help="minimum inferences per latency window (default 50)")  # fmt: skip
    group.addoption("--mesh-probes", type=int, default=240,
                    help="probes per gateway for delivery by hop count (default 240)")  # fmt: skip
    group.addoption("--mesh-probe-rate", type=float, default=4.0,
                    help="mean probes per mesh second, Poisson (default 4)")  # fmt: skip
    group.addoption("--mesh-min-delivery", type=float, default=0.7,
                    help="required delivery (95 %% lower bound) to meters within 3 hops "
                         "(default 0.7)")  # fmt: skip
    group.addoption("--mesh-recovery-max-s", type=float, default=600.0,
                    help="mesh seconds the children of a dead meter may take to answer "
                         "again (default 600)")  # fmt: skip


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "threads" in metafunc.fixturenames:
        metafunc.parametrize("threads", [1, 2], ids=lambda t: f"t{t}")
