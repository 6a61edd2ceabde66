"""Power sampling: the sampler's rate against a bare pyvisa query loop, and integration
accuracy on synthetic traces with a known answer.

Both loops talk to the same virtual supply over pyvisa-py on 127.0.0.1, interleaved in
rounds. Targets: the sampler loses no more than 5 % of the bare loop's rate; integrated
energy within 1 % of the exact answer at the sampler's achieved rate.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Iterator

import numpy as np
import pytest

from bench.instruments.meter import SupplyChannelMeter
from bench.instruments.psu import ScpiPsu, open_psu
from bench.lab.scpi_server import ResistiveLoad, ScpiPsuServer
from bench.power.energy import integrate_joules
from bench.power.sampler import Sampler
from tests.helpers import supply_rig

SECONDS = 1.0


@pytest.fixture(scope="module")
def psu() -> Iterator[ScpiPsu]:
    with ScpiPsuServer(backend=ResistiveLoad(10.0)) as server:
        rig = supply_rig(server.port)
        supply = open_psu("psu", rig.instruments["psu"])
        supply.output(1, True)
        yield supply
        supply.close()


def bare_loop_rate(psu: ScpiPsu) -> float:
    """Queries per second of the same measurement in a plain loop, no thread, no bookkeeping."""
    count, end = 0, time.monotonic() + SECONDS
    while time.monotonic() < end:
        psu.measure_power(1)
        count += 1
    return count / SECONDS


def sampler_rate(psu: ScpiPsu) -> float:
    with Sampler(SupplyChannelMeter(psu, 1)) as trace:
        time.sleep(SECONDS)
    return trace.rate_hz


def test_sampler_keeps_the_bare_loops_rate(psu: ScpiPsu) -> None:
    bare, sampled = [], []
    for _ in range(3):
        bare.append(bare_loop_rate(psu))
        sampled.append(sampler_rate(psu))
    ratio = statistics.median(sampled) / statistics.median(bare)
    print(f"\nsampler {statistics.median(sampled):.0f} Hz vs bare pyvisa loop "
          f"{statistics.median(bare):.0f} Hz: {ratio:.3f}")  # fmt: skip
    assert ratio >= 0.95


def test_integration_accuracy_at_the_achieved_rate(psu: ScpiPsu) -> None:
    rate = sampler_rate(psu)
    rng = np.random.default_rng(1)
    errors = []
    for _ in range(20):
        duration = 1.0
        n = max(3, int(rate * duration))
        # sample instants with the sampler's own jitter, a bursty load of known energy
        t = np.sort(np.concatenate(([0.0, duration], rng.uniform(0, duration, n - 2))))
        base, amp, freq = rng.uniform(2, 6), rng.uniform(0.2, 2), rng.uniform(0.5, 3)
        watts = base + amp * np.sin(2 * math.pi * freq * t)
        exact = base * duration + amp * (1 - math.cos(2 * math.pi * freq * duration)) / (
            2 * math.pi * freq
        )
        got = integrate_joules((t * 1e9).astype(np.int64), watts, 0, int(duration * 1e9))
        errors.append(abs(got - exact) / exact)
    print(f"\nintegration at {rate:.0f} Hz: worst relative error {max(errors):.2e}")
    assert max(errors) <= 0.01
