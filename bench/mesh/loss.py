"""Loss statistics over sequence-numbered probes, in the vocabulary of RFC 7680 / 6673 / 3357.

A probe is lost when no echo came back within the loss threshold Tmax (RFC 7680 section 2.8
"loss threshold"; for round trips RFC 6673). An echo after Tmax still counts as lost; it is
kept with ``late=True`` and its RTT. Loss is reported as a ratio with a 95 % interval: the
Wilson score interval, or the exact Clopper-Pearson interval where Wilson is least
trustworthy (no loss at all, or nothing delivered). Assert on the interval's bound
(:attr:`LossSummary.delivery_low`), not on the point estimate. Burst metrics follow
RFC 3357: a *loss period* is a run of consecutive lost probes, a *loss distance* is the
difference in sequence numbers between two successive losses.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from statistics import NormalDist

from bench.errors import BenchError
from bench.results.stats import summarize_latencies

__all__ = [
    "LossStatsError",
    "LossSummary",
    "ProbeRecord",
    "by_hops",
    "clopper_pearson",
    "loss_distances",
    "loss_periods",
    "summarize",
    "wilson_interval",
]

_BISECT_MAX = 200
_TAIL_EPS = 1e-18  # a tail sum stops once its next term is this small relative to the sum


class LossStatsError(BenchError, ValueError):
    """Input the loss statistics cannot use (counts out of range, no probes, bad records)."""


def _check_counts(successes: int, n: int, confidence: float) -> None:
    if n <= 0 or not 0 <= successes <= n:
        raise LossStatsError(
            f"a binomial interval needs 0 <= successes <= n and n > 0, got {successes}/{n}"
        )
    if not 0 < confidence < 1:
        raise LossStatsError(f"confidence must be in (0, 1), got {confidence}")


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion.

    With p = successes / n and z the two-sided normal quantile for ``confidence``:
    centre = (p + z**2 / (2n)) / (1 + z**2 / n),
    half   = z / (1 + z**2 / n) * sqrt(p (1 - p) / n + z**2 / (4 n**2)).
    """
    _check_counts(successes, n, confidence)
    z = NormalDist().inv_cdf((1 + confidence) / 2)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi


def _tail(start: int, step: int, n: int, p: float) -> float:
    """Sum of the binomial pmf from ``start`` walking by ``step`` (+1 or -1) to the end.

    The caller starts on the far side of the mode, so terms only shrink: the walk stops when
    they no longer matter. Terms are computed in log space (lgamma for the first, then the
    pmf ratio), so huge n and tiny p neither overflow nor underflow before they must.
    """
    log_p, log_q = math.log(p), math.log1p(-p)
    log_first = (
        math.lgamma(n + 1)
        - math.lgamma(start + 1)
        - math.lgamma(n - start + 1)
        + start * log_p
        + (n - start) * log_q
    )
    total, rel, k = 0.0, 0.0, start  # rel: log(term / first term)
    while 0 <= k <= n:
        term = math.exp(rel)
        total += term
        if term < _TAIL_EPS * total:
            break
        if step < 0:
            rel += math.log(k) - math.log(n - k + 1) + log_q - log_p if k > 0 else 0.0
        else:
            rel += math.log(n - k) - math.log(k + 1) + log_p - log_q if k < n else 0.0
        k += step
    return math.exp(log_first + math.log(total))


def _binomial_cdf(x: int, n: int, p: float) -> float:
    """P(X <= x) for X ~ Binomial(n, p)."""
    if x < 0:
        return 0.0
    if x >= n or p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    mode = math.floor((n + 1) * p)  # pmf(k) >= pmf(k - 1) exactly when k <= (n + 1) p
    if x <= mode:
        return min(1.0, _tail(x, -1, n, p))
    return max(0.0, 1.0 - _tail(x + 1, +1, n, p))


def _bisect_decreasing(f_target: float, x: int, n: int) -> float:
    """The p in (0, 1) where the binomial CDF at ``x`` (decreasing in p) equals the target."""
    lo, hi = 0.0, 1.0
    for _ in range(_BISECT_MAX):
        mid = (lo + hi) / 2
        if _binomial_cdf(x, n, mid) > f_target:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-15 * hi:
            break
    return (lo + hi) / 2


def clopper_pearson(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) two-sided interval for the proportion ``successes / n``.

    With alpha = 1 - confidence, the lower bound is the p with P(X >= successes | p) =
    alpha/2 and the upper bound the p with P(X <= successes | p) = alpha/2 (equivalently the
    Beta quantiles B(alpha/2; x, n-x+1) and B(1-alpha/2; x+1, n-x)), found by bisection on
    the binomial CDF. The edges are closed forms: successes = 0 gives [0, 1 - (alpha/2)**(1/n)]
    and successes = n gives [(alpha/2)**(1/n), 1].

    It bounds whichever proportion is passed: with ``successes`` = lost probes it bounds the
    loss ratio, so zero loss in n probes reads "loss at most 1 - (alpha/2)**(1/n)"
    (about 3.7/n at 95 %, two-sided).
    """
    _check_counts(successes, n, confidence)
    half_alpha = (1 - confidence) / 2
    if successes == 0:
        lo = 0.0
    elif successes == n:
        lo = half_alpha ** (1 / n)
    else:  # P(X >= x) = 1 - CDF(x - 1) = alpha/2
        lo = _bisect_decreasing(1 - half_alpha, successes - 1, n)
    if successes == n:
        hi = 1.0
    elif successes == 0:
        hi = 1 - half_alpha ** (1 / n)
    else:
        hi = _bisect_decreasing(half_alpha, successes, n)
    return lo, hi


@dataclass(frozen=True)
class ProbeRecord:
    """The fate of one probe (one row of the results)."""

    seq: int
    destination: str
    hops: int | None
    """Hop count to the destination when the probe was sent (None: unknown)."""
    sent_ns: int
    """Host ``time.monotonic_ns()`` when the probe was handed to the radio."""
    rtt_s: float | None
    """Round-trip time (None when no echo came back at all)."""
    lost: bool
    """No echo within Tmax (a late echo is a loss too)."""
    late: bool = False
    """An echo came back, but after Tmax (``rtt_s`` holds its RTT)."""

    def to_row(self) -> dict[str, int | float | str | bool | None]:
        """A flat dict for the results store (units in the names)."""
        return {
            "seq": self.seq,
            "destination": self.destination,
            "hops": self.hops,
            "sent_ns": self.sent_ns,
            "rtt_s": self.rtt_s,
            "lost": self.lost,
            "late": self.late,
        }


def loss_periods(lost: Sequence[bool]) -> list[int]:
    """Lengths of the runs of consecutive losses, in stream order (RFC 3357 loss periods)."""
    periods: list[int] = []
    run = 0
    for flag in lost:
        if flag:
            run += 1
        elif run:
            periods.append(run)
            run = 0
    if run:
        periods.append(run)
    return periods


def loss_distances(lost: Sequence[bool], seqs: Sequence[int] | None = None) -> list[int]:
    """Differences in sequence number between successive losses (RFC 3357 loss distance).

    ``seqs`` are the probes' sequence numbers (the positions 0, 1, 2 ... when omitted).
    """
    if seqs is None:
        seqs = range(len(lost))
    elif len(seqs) != len(lost):
        raise LossStatsError(f"{len(lost)} loss flags but {len(seqs)} sequence numbers")
    lost_seqs = [s for s, flag in zip(seqs, lost, strict=True) if flag]
    return [b - a for a, b in pairwise(lost_seqs)]


@dataclass(frozen=True)
class LossSummary:
    """Loss ratio with its 95 % interval, burst metrics and the RTTs of delivered probes."""

    sent: int
    received: int
    lost: int
    loss_ratio: float
    ci_low: float
    """Lower bound of the loss ratio's interval."""
    ci_high: float
    """Upper bound of the loss ratio's interval."""
    interval: str
    """``wilson`` or ``clopper-pearson``."""
    loss_periods: tuple[int, ...]
    mean_loss_period: float | None
    max_loss_period: int
    mean_loss_distance: float | None
    """None with fewer than two losses."""
    rtt_p50_s: float | None
    rtt_p90_s: float | None
    rtt_p99_s: float | None
    rtt_max_s: float | None

    @property
    def delivery_low(self) -> float:
        """The interval's lower bound on delivery (1 - ci_high): assert on this."""
        return 1.0 - self.ci_high


def _ordered(records: Iterable[ProbeRecord]) -> list[ProbeRecord]:
    """Records by seq; a late record replaces the lost one reported for its seq at Tmax."""
    by_seq: dict[int, ProbeRecord] = {}
    for record in records:
        earlier = by_seq.get(record.seq)
        if earlier is not None and not (
            earlier.lost
            and record.lost
            and record.late
            and earlier.destination == record.destination
        ):
            raise LossStatsError(
                f"two records for probe seq {record.seq}; sequence numbers must be unique "
                "(only a late echo may re-report a lost probe)"
            )
        by_seq[record.seq] = record
    return [by_seq[seq] for seq in sorted(by_seq)]


def summarize(records: Iterable[ProbeRecord], confidence: float = 0.95) -> LossSummary:
    """Summarize probe records (ordered by seq) into a :class:`LossSummary`."""
    ordered = _ordered(records)
    if not ordered:
        raise LossStatsError("no probe records to summarize; run some probes first")
    flags = [r.lost for r in ordered]
    sent, lost = len(ordered), sum(flags)
    if lost in (0, sent):
        interval = "clopper-pearson"
        ci_low, ci_high = clopper_pearson(lost, sent, confidence)
    else:
        interval = "wilson"
        ci_low, ci_high = wilson_interval(lost, sent, confidence)
    periods = loss_periods(flags)
    distances = loss_distances(flags, [r.seq for r in ordered])
    rtts_ns = [round(r.rtt_s * 1e9) for r in ordered if not r.lost and r.rtt_s is not None]
    p50 = p90 = p99 = top = None
    if rtts_ns:
        rtt = summarize_latencies([rtts_ns])
        p50, p90, p99, top = (v / 1e6 for v in (rtt.p50_us, rtt.p90_us, rtt.p99_us, rtt.max_us))
    return LossSummary(
        sent=sent,
        received=sent - lost,
        lost=lost,
        loss_ratio=lost / sent,
        ci_low=ci_low,
        ci_high=ci_high,
        interval=interval,
        loss_periods=tuple(periods),
        mean_loss_period=sum(periods) / len(periods) if periods else None,
        max_loss_period=max(periods, default=0),
        mean_loss_distance=sum(distances) / len(distances) if distances else None,
        rtt_p50_s=p50,
        rtt_p90_s=p90,
        rtt_p99_s=p99,
        rtt_max_s=top,
    )


def by_hops(
    records: Iterable[ProbeRecord], confidence: float = 0.95
) -> dict[int | None, LossSummary]:
    """One :class:`LossSummary` per hop count (None: hop count unknown), keys sorted."""
    groups: dict[int | None, list[ProbeRecord]] = {}
    for record in records:
        groups.setdefault(record.hops, []).append(record)
    keys = sorted(groups, key=lambda h: (h is None, h or 0))
    return {hops: summarize(groups[hops], confidence) for hops in keys}
