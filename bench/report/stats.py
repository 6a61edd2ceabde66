"""Tests for comparing two runs: Mann-Whitney U and a bootstrap interval of a ratio.

Mann-Whitney U (Mann & Whitney 1947) with mid-ranks for ties. ``exact`` uses the
permutation distribution of the rank sum conditional on the observed ranks (exact with or
without ties, counted by dynamic programming); ``asymptotic`` uses the normal approximation
with the tie-corrected variance ``n1 n2 / 12 * ((N + 1) - sum(t^3 - t) / (N (N - 1)))`` and
an optional continuity correction of 1/2, as in scipy.stats.mannwhitneyu and R's
wilcox.test. A two-sided p-value is twice the smaller tail, capped at 1.

The bootstrap resamples each sample with replacement and takes the percentile interval of
``statistic(new) / statistic(baseline)`` (Efron & Tibshirani 1993, ch. 13).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
import numpy.typing as npt

from bench.errors import BenchError

Alternative = Literal["two-sided", "greater", "less"]
Method = Literal["auto", "exact", "asymptotic"]
Statistic = Literal["median", "mean"]
FloatArray = npt.NDArray[np.float64]

#: ``method="auto"`` counts the exact distribution up to this many observations in all
EXACT_MAX_N: Final = 50
#: resampled values handled per numpy call in the bootstrap (bounds memory)
_BOOTSTRAP_CHUNK: Final = 4_000_000


class StatsInputError(BenchError):
    """Samples a test cannot use (empty, non-finite, unknown option)."""


@dataclass(frozen=True)
class MannWhitneyResult:
    """``u``: U of the first sample (pairs where it is larger, ties counting 1/2)."""

    u: float
    p: float
    method: Literal["exact", "asymptotic"]
    n_x: int
    n_y: int
    ties: bool
    z: float | None  # the normal deviate (asymptotic only)


@dataclass(frozen=True)
class RatioInterval:
    """``statistic(new) / statistic(base)`` and its bootstrap percentile interval."""

    ratio: float
    low: float
    high: float
    confidence: float
    resamples: int
    statistic: Statistic


def _sample(values: Sequence[float] | npt.ArrayLike, name: str) -> FloatArray:
    array = np.asarray(values, dtype=np.float64).ravel()
    if array.size == 0:
        raise StatsInputError(f"sample {name} is empty: a test needs at least one value")
    if not np.all(np.isfinite(array)):
        raise StatsInputError(f"sample {name} has NaN or infinite values: drop them first")
    return array


def midranks(values: FloatArray) -> tuple[FloatArray, npt.NDArray[np.int64]]:
    """Ranks 1..N with ties given their mean rank, and the size of every tie group."""
    unique, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    del unique
    upper = np.cumsum(counts).astype(np.float64)
    ranks_of_unique = upper - (counts - 1) / 2.0
    return ranks_of_unique[inverse], counts.astype(np.int64)


def _normal_sf(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def _exact_tails(ranks: FloatArray, n_x: int, observed_sum: float) -> tuple[float, float]:
    """P(S >= observed) and P(S <= observed) for S the sum of ranks of ``n_x`` of the
    ranks chosen at random (all C(N, n_x) subsets equally likely)."""
    scores = np.rint(ranks * 2).astype(np.int64)  # mid-ranks are multiples of 1/2
    total = int(scores.sum())
    ways = np.zeros((n_x + 1, total + 1), dtype=np.float64)
    ways[0, 0] = 1.0
    for score in scores:
        # numpy computes the right-hand side before writing when operands overlap
        ways[1:, score:] += ways[:-1, : total + 1 - score]
    dist = ways[n_x]
    dist = dist / dist.sum()
    observed = round(observed_sum * 2)
    return float(dist[observed:].sum()), float(dist[: observed + 1].sum())


def mann_whitney_u(
    x: Sequence[float] | npt.ArrayLike,
    y: Sequence[float] | npt.ArrayLike,
    *,
    alternative: Alternative = "two-sided",
    method: Method = "auto",
    continuity: bool = True,
) -> MannWhitneyResult:
    """Mann-Whitney U test of ``x`` against ``y``.

    ``greater``: x tends to be larger than y. ``auto`` is exact up to ``EXACT_MAX_N``
    observations, asymptotic above. ``continuity`` only affects the asymptotic method.
    """
    if alternative not in ("two-sided", "greater", "less"):
        raise StatsInputError(f"unknown alternative {alternative!r}: two-sided, greater, less")
    if method not in ("auto", "exact", "asymptotic"):
        raise StatsInputError(f"unknown method {method!r}: auto, exact or asymptotic")
    a, b = _sample(x, "x"), _sample(y, "y")
    n_x, n_y = a.size, b.size
    n = n_x + n_y
    ranks, tie_counts = midranks(np.concatenate([a, b]))
    rank_sum = float(ranks[:n_x].sum())
    u_x = rank_sum - n_x * (n_x + 1) / 2.0
    ties = bool(np.any(tie_counts > 1))
    use = ("exact" if n <= EXACT_MAX_N else "asymptotic") if method == "auto" else method
    if use == "exact":
        upper, lower = _exact_tails(ranks, n_x, rank_sum)
        if alternative == "greater":
            p = upper
        elif alternative == "less":
            p = lower
        else:
            p = 2.0 * min(upper, lower)
        return MannWhitneyResult(u_x, min(p, 1.0), "exact", n_x, n_y, ties, None)
    mean = n_x * n_y / 2.0
    tie_term = float(np.sum(tie_counts.astype(np.float64) ** 3 - tie_counts))
    variance = n_x * n_y / 12.0 * ((n + 1) - tie_term / (n * (n - 1)))
    if variance <= 0:  # every value equal: no evidence either way
        return MannWhitneyResult(u_x, 1.0, "asymptotic", n_x, n_y, ties, 0.0)
    correction = 0.5 if continuity else 0.0
    sd = math.sqrt(variance)
    if alternative == "greater":
        z = (u_x - mean - correction) / sd
        p = _normal_sf(z)
    elif alternative == "less":
        z = (mean - u_x - correction) / sd
        p = _normal_sf(z)
    else:
        z = (abs(u_x - mean) - correction) / sd
        p = 2.0 * _normal_sf(z)
    return MannWhitneyResult(u_x, min(p, 1.0), "asymptotic", n_x, n_y, ties, z)


def _statistic_rows(statistic: Statistic) -> Callable[[FloatArray], FloatArray]:
    if statistic == "median":
        return lambda rows: np.median(rows, axis=1)
    if statistic == "mean":
        return lambda rows: np.mean(rows, axis=1)
    raise StatsInputError(f"unknown statistic {statistic!r}: median or mean")


def bootstrap_statistic(
    values: FloatArray, resamples: int, rng: np.random.Generator, statistic: Statistic
) -> FloatArray:
    """``statistic`` of ``resamples`` bootstrap resamples of ``values``."""
    of_rows = _statistic_rows(statistic)
    out = np.empty(resamples, dtype=np.float64)
    per_chunk = max(1, _BOOTSTRAP_CHUNK // values.size)
    for start in range(0, resamples, per_chunk):
        stop = min(resamples, start + per_chunk)
        picks = rng.integers(0, values.size, size=(stop - start, values.size))
        out[start:stop] = of_rows(values[picks])
    return out


def bootstrap_ratio(
    base: Sequence[float] | npt.ArrayLike,
    new: Sequence[float] | npt.ArrayLike,
    *,
    statistic: Statistic = "median",
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int | None = 0,
) -> RatioInterval:
    """Percentile bootstrap interval of ``statistic(new) / statistic(base)``.

    The ratio is NaN when the baseline statistic is 0 (no ratio to speak of); resamples
    whose baseline statistic is 0 are dropped from the interval.
    """
    if not 0 < confidence < 1:
        raise StatsInputError(f"confidence must be between 0 and 1, not {confidence}")
    if resamples < 100:
        raise StatsInputError(f"use at least 100 bootstrap resamples, not {resamples}")
    a, b = _sample(base, "base"), _sample(new, "new")
    rng = np.random.default_rng(seed)
    of_rows = _statistic_rows(statistic)
    base_stat = float(of_rows(a[np.newaxis, :])[0])
    new_stat = float(of_rows(b[np.newaxis, :])[0])
    ratio = new_stat / base_stat if base_stat != 0 else math.nan
    boot_a = bootstrap_statistic(a, resamples, rng, statistic)
    boot_b = bootstrap_statistic(b, resamples, rng, statistic)
    ok = boot_a != 0
    if not np.any(ok):
        return RatioInterval(ratio, math.nan, math.nan, confidence, resamples, statistic)
    ratios = boot_b[ok] / boot_a[ok]
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(ratios, [tail, 100 - tail])
    return RatioInterval(ratio, float(low), float(high), confidence, resamples, statistic)
