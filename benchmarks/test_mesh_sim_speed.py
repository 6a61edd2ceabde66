"""Speed of the mesh simulator: simulated seconds per wall second at 200, 2,000 and 5,000 meters.

Construction and warm-up stay outside the timed region (construction time is recorded in
``extra_info``); each round times ``run_until(now + SPAN_S)`` with the default traffic (every
meter sends a reading every 15 min, the most frequent of the usual AMI intervals; Trickle DIO
timers; DAOs on parent changes) plus one probe a second, with the default calibrated links
and with contention (CCA, collisions, half-duplex) modelled. Targets: 5,000 meters at least 5x
faster than real time (aim 20x) and built in under about 5 s; smaller meshes much faster.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from bench.mesh.sim import MeshConfig, MeshSimulator
from benchmarks.conftest import remember

SPAN_S = 60.0
ROUNDS = 3


@pytest.mark.parametrize("contention", [False, True], ids=["calibrated", "contention"])
@pytest.mark.parametrize("meters", [200, 2000, 5000])
def test_mesh_sim_runs_faster_than_real_time(benchmark: Any, meters: int, contention: bool) -> None:
    start = time.perf_counter()
    sim = MeshSimulator(MeshConfig(meters=meters, contention=contention))
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
    mode = "_contention" if contention else ""
    median = remember(f"mesh_sim_{meters}_meters{mode}_{SPAN_S:.0f}s", benchmark)
    ratio = SPAN_S / median
    benchmark.extra_info["meters"] = meters
    benchmark.extra_info["contention"] = contention
    benchmark.extra_info["sim_seconds_per_wall_second"] = ratio
    benchmark.extra_info["construction_s"] = construction_s
    benchmark.extra_info["frames_sent"] = sim.counters["frames_sent"]
    print(
        f"\n{meters} meters{' (contention)' if contention else ''}: "
        f"built in {construction_s:.2f} s, "
        f"{ratio:.0f} sim s per wall s ({sim.counters['frames_sent']} frames so far)"
    )
    assert ratio >= 5.0, f"{meters} meters run under 5x real time ({ratio:.2f}x)"
