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


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "threads" in metafunc.fixturenames:
        metafunc.parametrize("threads", [1, 2], ids=lambda t: f"t{t}")
