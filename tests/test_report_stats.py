"""Statistics behind `fieldrig report`: Mann-Whitney U against published values, the
bootstrap interval, change points, and the regression decision rule."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from bench.report.changepoint import ChangePointInputError, change_points
from bench.report.compare import Settings, decide, direction_of
from bench.report.load import SampleSet, SeriesKey
from bench.report.stats import (
    StatsInputError,
    bootstrap_ratio,
    mann_whitney_u,
    midranks,
)

# Shier (2004), "Statistics: 2.3 The Mann-Whitney U Test", the example in the
# scipy.stats.mannwhitneyu documentation: ages at diagnosis.
MALES = [19, 22, 16, 29, 24]
FEMALES = [20, 11, 17, 12]


def test_exact_small_sample_matches_the_published_example() -> None:
    result = mann_whitney_u(MALES, FEMALES)
    assert result.method == "exact" and result.u == 17.0 and not result.ties
    assert result.p == pytest.approx(0.1111, abs=5e-5)  # 2 * 7 / 126
    one_sided = mann_whitney_u(FEMALES, MALES, alternative="less")
    assert one_sided.u == 3.0
    assert one_sided.p == pytest.approx(0.05555555555555555)


def test_normal_approximation_matches_the_published_values() -> None:
    with_correction = mann_whitney_u(MALES, FEMALES, method="asymptotic")
    assert with_correction.p == pytest.approx(0.11134688653314041, rel=1e-12)
    without = mann_whitney_u(MALES, FEMALES, method="asymptotic", continuity=False)
    assert without.p == pytest.approx(0.0864107329737, rel=1e-10)


def test_ties_use_the_tie_corrected_variance() -> None:
    # R: wilcox.test(x, y, correct = FALSE) on grouped counts, W = 10756, p-value = 0.2123
    # (the uncorrected variance would give 0.2858)
    x = np.repeat(np.arange(1, 7), [60, 21, 11, 4, 3, 1])
    y = np.repeat(np.arange(1, 7), [130, 50, 10, 6, 4, 0])
    result = mann_whitney_u(x, y, continuity=False)
    assert result.method == "asymptotic" and result.ties and result.u == 10756
    assert result.p == pytest.approx(0.2123, abs=5e-5)
    # ClickHouse's mannWhitneyUTest regression test (ties, continuity correction):
    # U = 223, p = 0.5426959774289482
    left = [
        310,
        195,
        530,
        155,
        530,
        245,
        385,
        450,
        465,
        545,
        170,
        180,
        125,
        180,
        230,
        75,
        430,
        480,
        495,
        295,
    ]
    right = [
        116,
        171,
        176,
        421,
        111,
        326,
        481,
        111,
        346,
        441,
        261,
        411,
        206,
        521,
        456,
        446,
        296,
        51,
        426,
        261,
    ]
    tied = mann_whitney_u(left, right, method="asymptotic")
    assert tied.u == 223.0
    assert tied.p == pytest.approx(0.5426959774289482, rel=1e-12)


def test_exact_with_ties_equals_full_enumeration() -> None:
    x, y = [1.0, 2, 2, 3, 5, 7], [2.0, 3, 3, 4, 6, 6, 8]
    ranks, _ = midranks(np.array(x + y))
    observed = ranks[: len(x)].sum()
    sums = [ranks[list(c)].sum() for c in itertools.combinations(range(len(ranks)), len(x))]
    upper = np.mean([s >= observed - 1e-9 for s in sums])
    lower = np.mean([s <= observed + 1e-9 for s in sums])
    result = mann_whitney_u(x, y, method="exact")
    assert result.ties
    assert result.p == pytest.approx(min(1.0, 2 * min(upper, lower)), rel=1e-12)
    assert mann_whitney_u(x, y, method="exact", alternative="greater").p == pytest.approx(upper)


def test_bad_samples_are_refused_with_one_line() -> None:
    with pytest.raises(StatsInputError, match="sample x is empty"):
        mann_whitney_u([], [1.0])
    with pytest.raises(StatsInputError, match="NaN"):
        mann_whitney_u([1.0, float("nan")], [1.0])
    with pytest.raises(StatsInputError, match="at least 100"):
        bootstrap_ratio([1.0], [1.0], resamples=10)


def test_identical_values_give_no_evidence() -> None:
    assert mann_whitney_u([3.0] * 60, [3.0] * 60).p == 1.0


def test_bootstrap_interval_covers_the_true_ratio_about_95_percent() -> None:
    rng = np.random.default_rng(7)
    trials, covered = 200, 0
    for seed in range(trials):
        base = rng.lognormal(0.0, 0.4, 60)
        new = 1.2 * rng.lognormal(0.0, 0.4, 60)  # true ratio of medians: 1.2
        interval = bootstrap_ratio(base, new, resamples=1000, seed=seed)
        covered += interval.low <= 1.2 <= interval.high
    assert 0.88 <= covered / trials <= 0.995


def test_bootstrap_of_a_proportion_uses_the_mean() -> None:
    base = np.array([1.0] * 90 + [0.0] * 10)
    new = np.array([1.0] * 60 + [0.0] * 40)
    interval = bootstrap_ratio(base, new, statistic="mean", seed=1)
    assert interval.ratio == pytest.approx(0.6 / 0.9)
    assert interval.low < interval.ratio < interval.high < 0.8


def test_change_point_found_at_a_step_and_not_without_one() -> None:
    hits, false_alarms = 0, 0
    for seed in range(100):
        rng = np.random.default_rng(seed)
        flat = 100 * (1 + 0.02 * rng.standard_normal(20))
        stepped = flat.copy()
        stepped[12:] *= 1.2
        hits += [c.index for c in change_points(stepped)] == [12]
        false_alarms += bool(change_points(flat))
    assert hits >= 95
    assert false_alarms <= 2


def test_change_points_details_and_limits() -> None:
    (change,) = change_points([10, 10, 10, 13, 13, 13])
    assert (change.index, change.before, change.after) == (3, 10.0, 13.0)
    assert change.relative_shift == pytest.approx(0.3)
    two = change_points([10] * 5 + [20] * 5 + [10] * 5)
    assert [c.index for c in two] == [5, 10]
    assert change_points([10, 10, 10.2, 10.2]) == []  # below the 5 % minimum shift
    assert change_points([10, 30]) == []  # one value per side is never enough
    with pytest.raises(ChangePointInputError):
        change_points([1.0, float("inf")])


def _samples(values: np.ndarray, statistic: str = "median") -> SampleSet:
    key = SeriesKey("inference", "test_latency", "latency.per_inference", "us", "gw1")
    return SampleSet.of(key, values, statistic, "test", 5000)  # type: ignore[arg-type]


def test_decision_rule_flags_a_20_percent_slowdown() -> None:
    rng = np.random.default_rng(3)
    base = _samples(rng.lognormal(np.log(200), 0.2, 400))
    slow = _samples(1.2 * rng.lognormal(np.log(200), 0.2, 400))
    result = decide(base, slow, "up is worse", Settings())
    assert result.verdict == "regression"
    assert result.p is not None and result.p < 0.002
    assert result.ci_low is not None and result.ci_low > 1.05
    assert "entirely outside" in result.reason
    assert decide(slow, base, "up is worse", Settings()).verdict == "improvement"
    assert decide(base, slow, "unknown", Settings()).verdict == "changed"


def test_decision_rule_rarely_flags_one_distribution() -> None:
    flagged = 0
    for seed in range(40):
        rng = np.random.default_rng(100 + seed)
        a = _samples(rng.lognormal(np.log(200), 0.3, 300))
        b = _samples(rng.lognormal(np.log(200), 0.3, 300))
        flagged += decide(a, b, "up is worse", Settings(resamples=500)).verdict != "unchanged"
    assert flagged <= 1


def test_significant_but_small_shifts_and_small_samples_are_not_regressions() -> None:
    rng = np.random.default_rng(5)
    base = _samples(rng.normal(100, 1, 3000))
    shifted = _samples(rng.normal(102, 1, 3000))  # p tiny, effect 2 % < 5 %
    result = decide(base, shifted, "up is worse", Settings())
    assert result.p is not None and result.p < 1e-10 and result.verdict == "unchanged"
    few = decide(
        _samples(np.array([1.0] * 5)), _samples(np.array([9.0] * 5)), "up is worse", Settings()
    )
    assert few.verdict == "not tested" and "fewer than 6" in few.reason


def test_delivery_down_is_worse() -> None:
    assert direction_of("mesh.probe.delivered") == "down is worse"
    assert direction_of("latency.per_inference") == "up is worse"
    assert direction_of("energy.inferences_per_joule") == "down is worse"
    assert direction_of("power.sampling_rate") == "unknown"
    base = _samples(np.array([1.0] * 190 + [0.0] * 10), "mean")
    worse = _samples(np.array([1.0] * 120 + [0.0] * 80), "mean")
    assert decide(base, worse, "down is worse", Settings()).verdict == "regression"
