"""Change points in a series of runs: binary segmentation on medians with a minimum shift.

Method (one value per run, in run order):

1. Of every split ``k`` of a segment with at least ``min_size`` values on each side, take
   the one with the least total absolute deviation of the values from their own side's
   median (the L1 cost of a two-piece constant fit).
2. At that split the shift is ``d = median(right) - median(left)`` and the noise ``s`` is
   the median absolute deviation from the sides' medians times 1.4826 (normal-consistent).
   The score is ``|d| / (1.2533 s sqrt(1/n_left + 1/n_right))``: the shift in standard
   errors of a difference of two medians (1.2533 = sqrt(pi / 2), the median's efficiency
   under normal noise); a segment without noise scores infinity for any non-zero shift.
   The split is a change point when the score is at least ``threshold`` and ``|d|`` is
   at least ``min_shift`` times ``|median(left)|`` (a relative minimum effect).
3. Accepted splits cut the segment in two, and both halves are searched again.
4. A segment without an accepted split is searched once more for a level that goes and
   comes back (a regression fixed later, which no single split sees): the two splits of
   the least three-piece L1 cost, accepted when the middle piece against the outer two
   passes the test of step 2; each of its edges that passes on its own is a change point.

The minimum segment length (default 2) means one odd night is never a change point on its
own; comparing the newest run to a baseline is the test for that. The default threshold
(5 standard errors) is set by simulation, since the best of many splits is chosen and a
MAD of few values is itself noisy: on 20-value series with normal noise of 2 % (5 %) of the
level and no step, about 0 % (4 %) of series show a change point; a 20 % step is found in
all (about 80 %) of them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np

from bench.errors import BenchError

_MAD_SCALE: Final = 1.4826
_MEDIAN_SE: Final = math.sqrt(math.pi / 2)
#: longest segment searched for a level that goes and comes back (O(n^2) pieces)
_PAIR_MAX_N: Final = 120


class ChangePointInputError(BenchError):
    """A series or setting change-point detection cannot use."""


@dataclass(frozen=True)
class ChangePoint:
    """The series changes between ``index - 1`` and ``index``."""

    index: int
    before: float  # median of the segment before
    after: float  # median of the segment after
    relative_shift: float  # (after - before) / |before|; inf when before is 0
    score: float


def _split_score(left: np.ndarray, right: np.ndarray) -> tuple[float, float, float]:
    """(shift, score, cost); cost: the total absolute deviation from the sides' medians."""
    med_l, med_r = float(np.median(left)), float(np.median(right))
    shift = med_r - med_l
    deviations = np.abs(np.concatenate([left - med_l, right - med_r]))
    noise = _MAD_SCALE * float(np.median(deviations))
    se = _MEDIAN_SE * noise * math.sqrt(1 / left.size + 1 / right.size)
    cost = float(deviations.sum())
    if se == 0:
        return shift, math.inf if shift != 0 else 0.0, cost
    return shift, abs(shift) / se, cost


def _l1(values: np.ndarray) -> float:
    return float(np.abs(values - np.median(values)).sum())


def _best_pair(values: np.ndarray, min_size: int) -> tuple[int, int] | None:
    """The two splits of the least three-piece L1 cost (a level that goes and comes back)."""
    n = values.size
    if n < 3 * min_size or n > _PAIR_MAX_N:
        return None
    cost = {(i, j): _l1(values[i:j]) for i in range(n) for j in range(i + min_size, n + 1)}
    best: tuple[float, int, int] | None = None
    for k1 in range(min_size, n - 2 * min_size + 1):
        for k2 in range(k1 + min_size, n - min_size + 1):
            total = cost[(0, k1)] + cost[(k1, k2)] + cost[(k2, n)]
            if best is None or total < best[0]:
                best = (total, k1, k2)
    return None if best is None else (best[1], best[2])


def change_points(
    values: Sequence[float],
    *,
    min_shift: float = 0.05,
    min_size: int = 2,
    threshold: float = 5.0,
) -> list[ChangePoint]:
    """Change points of ``values`` (see the module docstring), in index order."""
    if min_size < 1:
        raise ChangePointInputError(f"min_size must be at least 1, not {min_size}")
    if min_shift < 0 or threshold <= 0:
        raise ChangePointInputError("min_shift must be >= 0 and threshold > 0")
    series = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(series)):
        raise ChangePointInputError("the series has NaN or infinite values: drop those runs")
    found: list[ChangePoint] = []
    pending = [(0, series.size)]

    def accept(left: np.ndarray, right: np.ndarray) -> tuple[float, float, float, float] | None:
        """(before, after, relative shift, score) when the split passes both tests."""
        shift, score, _ = _split_score(left, right)
        before = float(np.median(left))
        relative = shift / abs(before) if before != 0 else (math.inf if shift else 0.0)
        if score >= threshold and abs(relative) >= min_shift and shift != 0:
            return before, float(np.median(right)), relative, score
        return None

    while pending:
        lo, hi = pending.pop()
        splits = [
            (_split_score(series[lo:k], series[k:hi])[2], k)
            for k in range(lo + min_size, hi - min_size + 1)
        ]
        if not splits:
            continue
        k = min(splits)[1]
        single = accept(series[lo:k], series[k:hi])
        if single is not None:
            found.append(ChangePoint(k, *single))
            pending += [(lo, k), (k, hi)]
            continue
        pair = _best_pair(series[lo:hi], min_size)
        if pair is None:
            continue
        k1, k2 = lo + pair[0], lo + pair[1]
        outer = np.concatenate([series[lo:k1], series[k2:hi]])
        if accept(outer, series[k1:k2]) is None:
            continue
        for a, b, at in ((lo, k1, k1), (k1, k2, k2)):
            edge = accept(series[a:b], series[b : (k2 if at == k1 else hi)])
            if edge is not None:
                found.append(ChangePoint(at, *edge))
        pending += [(lo, k1), (k1, k2), (k2, hi)]
    return sorted(found, key=lambda c: c.index)
