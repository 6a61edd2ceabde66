"""Hand on-device latencies to pytest-benchmark, so its JSON, --benchmark-compare and
--benchmark-histogram work on numbers measured on the board, not on the host.

pytest-benchmark has no public API for externally measured samples; this uses its
fixture's stats object the way its own timing loop does (tested against pytest-benchmark
5.x in tests/test_inference_suite.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def feed_benchmark(
    benchmark: Any, latencies_ns: Iterable[int], extra_info: Mapping[str, Any]
) -> None:
    """Record every latency (ns) as one round of one iteration, plus the device stack."""
    if benchmark.disabled:
        return
    benchmark._mode = "fieldrig on-device latencies"
    stats = benchmark._make_stats(1)
    for ns in latencies_ns:
        stats.update(ns / 1e9)
    benchmark.extra_info.update(extra_info)
