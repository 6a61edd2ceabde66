"""Loss statistics: exact and score intervals, RFC 3357 burst metrics, summaries."""

from __future__ import annotations

import math

import numpy as np
import pytest

import bench.mesh
from bench.errors import BenchError
from bench.mesh import links
from bench.mesh.loss import (
    LossStatsError,
    ProbeRecord,
    by_hops,
    clopper_pearson,
    loss_distances,
    loss_periods,
    summarize,
    wilson_interval,
)

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


def counts(max_n: int = 400) -> st.SearchStrategy[tuple[int, int]]:
    return st.integers(1, max_n).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n)))


def exact_sf(x: int, n: int, p: float) -> float:
    """P(X >= x), summed term by term with exact binomial coefficients."""
    return math.fsum(math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(x, n + 1))


# --- intervals ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("x", "n", "low", "high"),
    [
        # Published exact 95 % limits (e.g. the Clopper-Pearson tables reproduced in most
        # statistics texts; equal to the Beta quantiles B(.025; x, n-x+1), B(.975; x+1, n-x)).
        (0, 10, 0.0, 0.3085),
        (1, 10, 0.0025, 0.4450),
        (5, 10, 0.1871, 0.8129),
        (10, 10, 0.6915, 1.0),
        (85, 100, 0.7647, 0.9135),
        (1, 1_000_000, 2.532e-8, 5.572e-6),
    ],
)
def test_clopper_pearson_known_values(x: int, n: int, low: float, high: float) -> None:
    lo, hi = clopper_pearson(x, n)
    assert lo == pytest.approx(low, rel=2e-3, abs=1e-4 if low > 1e-3 else 1e-10)
    assert hi == pytest.approx(high, rel=2e-3)


def test_clopper_pearson_edges_are_closed_forms() -> None:
    assert clopper_pearson(0, 100) == (0.0, 1 - 0.025 ** (1 / 100))
    assert clopper_pearson(100, 100) == (0.025 ** (1 / 100), 1.0)
    assert clopper_pearson(0, 100, 0.99)[1] == pytest.approx(1 - 0.005 ** (1 / 100))


@settings(max_examples=200, deadline=None)
@given(counts(120))
def test_clopper_pearson_bounds_solve_the_binomial_tails(xn: tuple[int, int]) -> None:
    x, n = xn
    lo, hi = clopper_pearson(x, n)
    if x > 0:  # P(X >= x | lo) = alpha / 2
        assert exact_sf(x, n, lo) == pytest.approx(0.025, rel=1e-6)
    if x < n:  # P(X <= x | hi) = alpha / 2
        assert 1 - exact_sf(x + 1, n, hi) == pytest.approx(0.025, rel=1e-6)


@settings(max_examples=150, deadline=None)
@given(counts())
def test_intervals_contain_the_estimate(xn: tuple[int, int]) -> None:
    x, n = xn
    p = x / n
    for lo, hi in (clopper_pearson(x, n), wilson_interval(x, n)):
        assert 0.0 <= lo <= p <= hi <= 1.0


@settings(max_examples=150, deadline=None)
@given(counts())
def test_clopper_pearson_is_symmetric(xn: tuple[int, int]) -> None:
    x, n = xn
    lo, hi = clopper_pearson(x, n)
    mirror_lo, mirror_hi = clopper_pearson(n - x, n)
    assert lo == pytest.approx(1 - mirror_hi, abs=1e-12)
    assert hi == pytest.approx(1 - mirror_lo, abs=1e-12)


@settings(max_examples=150, deadline=None)
@given(counts().filter(lambda xn: 0 < xn[0] < xn[1]))
def test_clopper_pearson_is_wider_than_wilson_inside(xn: tuple[int, int]) -> None:
    x, n = xn
    cp_lo, cp_hi = clopper_pearson(x, n)
    w_lo, w_hi = wilson_interval(x, n)
    assert cp_hi - cp_lo > w_hi - w_lo


def test_at_zero_loss_two_sided_clopper_pearson_is_not_wider_than_wilson() -> None:
    # Worth knowing when reading zero-loss claims: from n = 46 on, the exact two-sided upper
    # bound 1 - 0.025**(1/n) (about 3.7/n) is below Wilson's z**2/(n + z**2) (about 3.84/n).
    assert clopper_pearson(0, 45)[1] > wilson_interval(0, 45)[1]
    assert clopper_pearson(0, 46)[1] < wilson_interval(0, 46)[1]


def test_wilson_lives_in_loss_and_is_reexported() -> None:
    assert bench.mesh.wilson_interval is wilson_interval
    assert not hasattr(links, "wilson_interval")
    assert wilson_interval(85, 100) == pytest.approx((0.7672, 0.9069), abs=1e-3)


@pytest.mark.parametrize(
    ("x", "n", "confidence"), [(-1, 10, 0.95), (11, 10, 0.95), (0, 0, 0.95), (3, 10, 1.0)]
)
def test_bad_counts_are_refused(x: int, n: int, confidence: float) -> None:
    for interval in (clopper_pearson, wilson_interval):
        with pytest.raises(LossStatsError) as info:
            interval(x, n, confidence)
        assert isinstance(info.value, BenchError)
        assert "\n" not in str(info.value)


# --- RFC 3357 burst metrics ---------------------------------------------------------------


def flags(pattern: str) -> list[bool]:
    return [c == "x" for c in pattern]


def test_loss_periods_are_runs_of_consecutive_losses() -> None:
    assert loss_periods(flags("..xx.x...xxx")) == [2, 1, 3]
    assert loss_periods(flags("xx..x")) == [2, 1]
    assert loss_periods(flags("....")) == []
    assert loss_periods(flags("xxxx")) == [4]


def test_loss_distances_are_in_sequence_numbers() -> None:
    assert loss_distances(flags("..xx.x...xxx")) == [1, 2, 4, 1, 1]
    assert loss_distances(flags(".x..")) == []
    # the same losses in a stream whose sequence numbers have gaps (a by-hops group)
    assert loss_distances(flags("x.x"), [10, 13, 16]) == [6]
    with pytest.raises(LossStatsError):
        loss_distances(flags("x.x"), [1, 2])


# --- records and summaries ------------------------------------------------------------------


def record(
    seq: int, lost: bool, rtt_s: float | None = 0.1, hops: int | None = 1, late: bool = False
) -> ProbeRecord:
    return ProbeRecord(
        seq=seq,
        destination=f"fd00::{hops}",
        hops=hops,
        sent_ns=seq * 1_000_000,
        rtt_s=None if lost and not late else rtt_s,
        lost=lost,
        late=late,
    )


def test_record_row() -> None:
    row = record(7, False, 0.25).to_row()
    assert row == {
        "seq": 7,
        "destination": "fd00::1",
        "hops": 1,
        "sent_ns": 7_000_000,
        "rtt_s": 0.25,
        "lost": False,
        "late": False,
    }


def test_summary_of_a_lossy_stream() -> None:
    pattern = "..xx.x...xxx" * 5  # 60 probes, 30 lost
    rtts = [0.05 + 0.01 * i for i in range(len(pattern))]
    records = [record(i, c == "x", rtts[i]) for i, c in enumerate(pattern)]
    summary = summarize(reversed(records))  # ordered by seq, not by arrival
    assert (summary.sent, summary.received, summary.lost) == (60, 30, 30)
    assert summary.loss_ratio == 0.5
    assert summary.interval == "wilson"
    assert (summary.ci_low, summary.ci_high) == wilson_interval(30, 60)
    assert summary.delivery_low == 1 - summary.ci_high
    assert summary.loss_periods == (2, 1, 3) * 5
    assert summary.max_loss_period == 3
    assert summary.mean_loss_period == pytest.approx(2.0)
    distances = loss_distances(flags(pattern))
    assert summary.mean_loss_distance == pytest.approx(sum(distances) / len(distances))
    received = [rtts[i] for i, c in enumerate(pattern) if c == "."]
    p50, p90, p99 = np.percentile(received, [50, 90, 99])
    assert summary.rtt_p50_s == pytest.approx(p50)
    assert summary.rtt_p90_s == pytest.approx(p90)
    assert summary.rtt_p99_s == pytest.approx(p99)
    assert summary.rtt_max_s == pytest.approx(max(received))


def test_zero_loss_and_total_loss_use_clopper_pearson() -> None:
    clean = summarize([record(i, False) for i in range(200)])
    assert clean.interval == "clopper-pearson"
    assert (clean.ci_low, clean.ci_high) == clopper_pearson(0, 200)
    assert clean.delivery_low == pytest.approx(0.025 ** (1 / 200))
    assert clean.loss_periods == () and clean.max_loss_period == 0
    assert clean.mean_loss_period is None and clean.mean_loss_distance is None
    dead = summarize([record(i, True) for i in range(20)])
    assert dead.interval == "clopper-pearson"
    assert dead.ci_high == 1.0
    assert dead.rtt_p50_s is None and dead.rtt_max_s is None
    assert dead.loss_periods == (20,)
    one = summarize([record(0, True), *(record(i, False) for i in range(1, 10))])
    assert one.interval == "wilson" and one.mean_loss_distance is None


def test_late_echo_supersedes_the_lost_record_but_stays_lost() -> None:
    records = [record(0, False), record(1, True), record(2, False)]
    records.append(record(1, True, rtt_s=0.9, late=True))
    summary = summarize(records)
    assert (summary.sent, summary.lost) == (3, 1)
    assert summary.rtt_max_s == pytest.approx(0.1)  # a late RTT is no delivered RTT


def test_bad_record_sets_are_refused() -> None:
    with pytest.raises(LossStatsError, match="no probe records"):
        summarize([])
    with pytest.raises(LossStatsError, match="seq 3"):
        summarize([record(3, False), record(3, False)])


def test_by_hops_groups_and_orders() -> None:
    records = [
        record(i, lost=(i % 4 == 0), hops=h)
        for i, h in enumerate([2, None, 1, 2, 1, 3, None, 1, 2, 1, 3, 1])
    ]
    groups = by_hops(records)
    assert list(groups) == [1, 2, 3, None]
    assert sum(s.sent for s in groups.values()) == len(records)
    assert groups[1].sent == 5
    assert groups[2].lost == 2  # seqs 0 and 8
    assert groups[2].mean_loss_distance == 8
