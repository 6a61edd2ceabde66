"""Link model of the emulated mesh: calibration with intervals, burstiness, airtime."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from bench.mesh import airtime
from bench.mesh.links import (
    calibrated_link,
    delivery_probability,
    gilbert_params,
    link_from_margin,
    path_loss_db,
)
from bench.mesh.loss import wilson_interval


def test_first_attempt_delivery_interval_contains_085() -> None:
    link = calibrated_link(np.random.default_rng(20240501))
    ok = link.transmit_many(200_000)
    lo, hi = wilson_interval(int(ok.sum()), ok.size)
    assert lo <= 0.85 <= hi, (lo, hi)


def test_delivery_within_three_attempts_interval_contains_094() -> None:
    link = calibrated_link(np.random.default_rng(7))
    n, delivered = 60_000, 0
    for _ in range(n):
        link.forget()
        if any(link.transmit() for _ in range(3)):
            delivered += 1
    lo, hi = wilson_interval(delivered, n)
    assert lo <= 0.94 <= hi
    assert link.delivery_within(3) == pytest.approx(0.94)
    assert link.delivery_within(1) == pytest.approx(0.85)
    assert 1 - 0.15**3 > 0.996 > link.delivery_within(4)


def test_losses_are_bursty() -> None:
    ok = calibrated_link(np.random.default_rng(3)).transmit_many(200_000)
    lost = ~ok
    after_loss = lost[1:][lost[:-1]]
    p_cond = after_loss.mean()
    assert p_cond > 3 * lost.mean()
    assert p_cond == pytest.approx(1 - gilbert_params(0.85, 0.94)[1], abs=0.01)


def test_seeded_runs_are_identical() -> None:
    a = calibrated_link(np.random.default_rng(11)).transmit_many(5000)
    b = calibrated_link(np.random.default_rng(11)).transmit_many(5000)
    assert np.array_equal(a, b)
    c = calibrated_link(np.random.default_rng(11))
    assert np.array_equal(a[:100], np.array([c.transmit() for _ in range(100)]))


def test_airtime_by_hand() -> None:
    # (8 preamble + 2 SFD + 2 PHR + 100 PSDU) octets * 8 bit * 20 us
    assert airtime.frame_airtime_s(100) == pytest.approx(112 * 8 * 20e-6)
    assert airtime.frame_airtime_s(2047) == pytest.approx(2059 * 8 / 50_000)
    assert airtime.frame_airtime_s(10, preamble_octets=4) == pytest.approx(18 * 8 * 20e-6)
    assert airtime.ack_airtime_s() == pytest.approx((8 + 2 + 2 + 7) * 8 * 20e-6)
    assert airtime.frame_airtime_s(100, 100_000) == pytest.approx(112 * 8 / 100_000)
    with pytest.raises(ValueError):
        airtime.frame_airtime_s(2048)
    assert airtime.unit_backoff_period_s() == pytest.approx(1.16e-3)
    assert [airtime.backoff_exponent(i) for i in range(5)] == [3, 4, 5, 5, 5]
    assert airtime.mean_backoff_s(0) == pytest.approx(3.5 * 1.16e-3)
    rng = np.random.default_rng(0)
    draws = [airtime.random_backoff_s(0, rng) for _ in range(2000)]
    assert max(draws) <= 7 * 1.16e-3 + 1e-12
    assert airtime.MAX_ATTEMPTS == 4


def test_path_loss_monotonic_on_average() -> None:
    rng = np.random.default_rng(5)
    means = [
        np.mean([path_loss_db(d, 40.0, 3.0, 8.0, rng) for _ in range(2000)])
        for d in (10, 50, 100, 200, 400, 800)
    ]
    assert all(a < b for a, b in itertools.pairwise(means))


def test_budget_mapping() -> None:
    assert delivery_probability(10.0) == pytest.approx(0.85)
    assert delivery_probability(0.0) < 0.1 < 0.99 < delivery_probability(25.0)
    link = link_from_margin(10.0, np.random.default_rng(1))
    assert link.delivery_within(1) == pytest.approx(0.85)


def test_wilson_known_value() -> None:
    lo, hi = wilson_interval(85, 100)
    assert lo == pytest.approx(0.7672, abs=1e-3)
    assert hi == pytest.approx(0.9069, abs=1e-3)
    assert wilson_interval(0, 10)[0] == 0.0
