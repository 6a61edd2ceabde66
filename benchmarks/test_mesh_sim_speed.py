"""Speed of the mesh simulator: simulated seconds per wall second at 200, 2,000 and 5,000 meters.

Construction and warm-up stay outside the timed region (construction time is recorded in
``extra_info``); each round times ``run_until(now + SPAN_S)`` with the default traffic (every
meter reports every 60 s, routing rounds every 30 s) plus one probe a second. Targets: 5,000
meters at least 10x faster than real time and built in under about 5 s; smaller meshes much
faster. Only the ratio "faster than real time" is asserted.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from bench.mesh.sim import MeshConfig, MeshSimulator
from benchmarks.conftest import remember

SPAN_S = 60.0
ROUNDS = 3


@pytest.mark.parametrize("meters", [200, 2000, 5000])
def test_mesh_sim_runs_faster_than_real_time(benchmark: Any, meters: int) -> None:
    start = time.perf_counter()
    sim = MeshSimulator(MeshConfig(meters=meters))
    construction_s = time.perf_counter() - start
    sim.warm_up()
    targets = iter(range(10**9))

    def span() -> int:
        completed = 0
        end = sim.now + SPAN_S
        while sim.now < end:
            sim.send_probe(1 + next(targets) % meters)
            completed += len(sim.run_until(min(end, sim.now + 1.0)))
        return completed

    benchmark.pedantic(span, rounds=ROUNDS, iterations=1)
    median = remember(f"mesh_sim_{meters}_meters_{SPAN_S:.0f}s", benchmark)
    ratio = SPAN_S / median
    benchmark.extra_info["meters"] = meters
    benchmark.extra_info["sim_seconds_per_wall_second"] = ratio
    benchmark.extra_info["construction_s"] = construction_s
    benchmark.extra_info["frames_sent"] = sim.counters["frames_sent"]
    print(
        f"\n{meters} meters: built in {construction_s:.2f} s, "
        f"{ratio:.0f} sim s per wall s ({sim.counters['frames_sent']} frames so far)"
    )
    assert ratio > 1.0, f"{meters} meters run slower than real time ({ratio:.2f}x)"
