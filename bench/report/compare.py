"""A run against a baseline: which metrics regressed, with the statistics that say so.

Per series present in both runs (:class:`bench.report.load.SeriesKey`) with raw samples:
Mann-Whitney U (two-sided) on the samples, and a bootstrap 95 % interval of the ratio
new / baseline of the median (of the mean for 0/1 outcomes such as probe delivery). The
decision rule, after asv's (p < 0.002 with at least 6 + 6 samples) plus a minimum effect:

- regression: p < alpha, at least ``min_samples`` on each side, and the whole interval of
  the ratio beyond the minimum effect in the bad direction (above ``1 + min_effect`` when
  up is worse, below ``1 - min_effect`` when down is worse);
- improvement: the same in the good direction; changed: the same for a metric without a
  known direction; otherwise unchanged;
- not tested: too few samples, a series in one run only, a zero baseline (no ratio), or
  a metric recorded as one summary value per run (the reason says which).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Final, Literal

import pandas as pd

from bench.errors import BenchError
from bench.report.load import (
    LATENCY_SERIES,
    RunData,
    SampleSet,
    SeriesKey,
    numeric_value,
    series_key,
)
from bench.report.stats import bootstrap_ratio, mann_whitney_u

Direction = Literal["up is worse", "down is worse", "unknown"]
Verdict = Literal["regression", "improvement", "changed", "unchanged", "not tested"]

_UP_IS_WORSE: Final = re.compile(
    r"^(latency\.|energy\.per_inference|energy\.average_power|power\.idle(_baseline)?$"
    r"|power\.boot|mesh\.probe\.rtt|mesh\..*\.rtt_|mesh\..*\.loss$|mesh\.recovery_time"
    r"|liveness\.(time_to_|false_)|clock\.rtt|command\.duration"
    r"|rollout\.(time_to_|stranded|false_rollbacks|completion_time|bytes_over_size))"
)
_DOWN_IS_WORSE: Final = re.compile(
    r"^(energy\.inferences_per_joule|mesh\.probe\.delivered|quality\.)"
)
#: summaries of raw samples that are tested themselves (listing them again adds nothing)
_SUMMARY_OF_TESTED: Final = re.compile(
    r"^(latency\.|mesh\.delivery\.|mesh\.attenuation\.|mesh\.delivery_backhaul_down\."
    r"|mesh\.recovery_time_max)"
)
_WHY_ONE_VALUE: Final = (
    (re.compile(r"^energy\."), "one value per run: the median over the trusted windows "
     "(per-window energies are not recorded)"),
    (re.compile(r"^power\.idle"), "one value per run: the mean of the idle trace (its samples "
     "are not recorded)"),
    (re.compile(r"^power\.boot"), "one boot per gateway per run"),
    (re.compile(r"^quality\."), "one evaluation per run (per-input results are not recorded)"),
)  # fmt: skip


class CompareInputError(BenchError):
    """Settings a comparison cannot use."""


def direction_of(metric: str) -> Direction:
    """Which way a metric gets worse (latency and energy up, delivery down)."""
    if _UP_IS_WORSE.search(metric):
        return "up is worse"
    if _DOWN_IS_WORSE.search(metric):
        return "down is worse"
    return "unknown"


@dataclass(frozen=True)
class Settings:
    """The decision rule (see the module docstring)."""

    alpha: float = 0.002
    min_effect: float = 0.05
    min_samples: int = 6
    resamples: int = 2000
    confidence: float = 0.95

    def check(self) -> Settings:
        if not 0 < self.alpha < 1:
            raise CompareInputError(f"alpha must be between 0 and 1, not {self.alpha}")
        if not 0 <= self.min_effect < 1:
            raise CompareInputError(f"min effect must be in [0, 1), not {self.min_effect}")
        if self.min_samples < 2:
            raise CompareInputError(f"min samples must be at least 2, not {self.min_samples}")
        return self


@dataclass(frozen=True)
class Comparison:
    """One series, baseline against new."""

    key: SeriesKey
    direction: Direction
    verdict: Verdict
    reason: str
    statistic: str  # "median", "mean" or "value" (one summary value per run)
    n_base: int
    n_new: int
    base: float | None
    new: float | None
    ratio: float | None
    ci_low: float | None = None
    ci_high: float | None = None
    p: float | None = None
    u: float | None = None
    method: str | None = None

    def as_row(self) -> dict[str, object]:
        return {
            "suite": self.key.suite, "test": self.key.test, "metric": self.key.metric,
            "unit": self.key.unit, "gateway": self.key.gateway, "context": self.key.context,
            "direction": self.direction, "verdict": self.verdict, "reason": self.reason,
            "statistic": self.statistic, "n_base": self.n_base, "n_new": self.n_new,
            "base": self.base, "new": self.new, "ratio": self.ratio, "ci_low": self.ci_low,
            "ci_high": self.ci_high, "p": self.p, "u": self.u, "method": self.method,
        }  # fmt: skip


def _ratio_verdict(low: float, high: float, direction: Direction, m: float) -> Verdict:
    above, below = low > 1 + m, high < 1 - m
    if not (above or below):
        return "unchanged"
    if direction == "unknown":
        return "changed"
    worse = above if direction == "up is worse" else below
    return "regression" if worse else "improvement"


def decide(base: SampleSet, new: SampleSet, direction: Direction, settings: Settings) -> Comparison:
    """Test one series (both sample sets share ``base.key``)."""
    ratio = new.center / base.center if base.center != 0 else None
    untested = Comparison(base.key, direction, "not tested", "", base.statistic, base.count,
                          new.count, base.center, new.center, ratio)  # fmt: skip
    if min(base.count, new.count) < settings.min_samples:
        why = f"fewer than {settings.min_samples} samples (baseline {base.count}, new {new.count})"
        return replace(untested, reason=why)
    test = mann_whitney_u(new.values, base.values)
    tested = replace(untested, p=test.p, u=test.u, method=test.method)
    if base.center == 0:
        return replace(tested, reason="the baseline is 0: no ratio to judge")
    interval = bootstrap_ratio(
        base.values, new.values, statistic=base.statistic, resamples=settings.resamples,
        confidence=settings.confidence, seed=base.key.seed(),
    )  # fmt: skip
    low, high = interval.low, interval.high
    verdict: Verdict = "unchanged"
    band = f"1 \u00b1 {settings.min_effect:g}"
    ci = f"{settings.confidence:.0%} CI of the {base.statistic} ratio [{low:.3g}, {high:.3g}]"
    if math.isnan(low):
        reason = "the bootstrap found no ratio (baseline resamples all 0)"
    elif test.p >= settings.alpha:
        reason = f"p = {test.p:.2g} \u2265 {settings.alpha:g}; {ci}"
    else:
        verdict = _ratio_verdict(low, high, direction, settings.min_effect)
        where = "inside or across" if verdict == "unchanged" else "entirely outside"
        reason = f"p = {test.p:.2g} < {settings.alpha:g}; {ci} {where} {band}"
    if max(base.values.size, new.values.size) < max(base.count, new.count):
        reason += f" (tested on random subsets of {base.values.size} and {new.values.size})"
    return replace(tested, verdict=verdict, reason=reason, ci_low=low, ci_high=high)


def _single_values(run: RunData) -> dict[SeriesKey, float]:
    """Series recorded once in the run, with a direction, that are not summaries of raw
    samples tested on their own."""
    found: dict[SeriesKey, list[float]] = {}
    for _, row in run.measurements.iterrows():
        metric = str(row["metric"])
        if _SUMMARY_OF_TESTED.search(metric) or direction_of(metric) == "unknown":
            continue
        value = numeric_value(row["value"])
        if value is None:
            continue
        params = row["parameters"] if isinstance(row["parameters"], dict) else {}
        key = series_key(row["suite"], row["test"], metric, row["unit"], row["gateway"], params)
        found.setdefault(key, []).append(value)
    return {k: v[0] for k, v in found.items() if len(v) == 1 and k not in run.samples}


def _why_one_value(metric: str) -> str:
    for pattern, why in _WHY_ONE_VALUE:
        if pattern.search(metric):
            return why
    return "one value per run: no raw samples are recorded"


def compare_runs(
    base: RunData,
    new: RunData,
    settings: Settings | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[Comparison]:
    """Every comparable series of ``new`` against ``base``, regressions first."""
    rule = (settings or Settings()).check()
    out: list[Comparison] = []
    keys = sorted(set(base.samples) | set(new.samples))
    if progress is not None:
        progress(f"comparing {len(keys)} series with raw samples against {base.run_id}")
    for key in keys:
        direction = direction_of(key.metric)
        b, n = base.samples.get(key), new.samples.get(key)
        if b is not None and n is not None:
            out.append(decide(b, n, direction, rule))
            continue
        only = b or n
        assert only is not None
        where = "baseline" if n is None else "new run"
        missing = (
            " (its raw samples are missing in the other run)"
            if key.metric == LATENCY_SERIES
            else ""
        )
        out.append(Comparison(key, direction, "not tested", f"only in the {where}{missing}",
                              only.statistic, b.count if b else 0, n.count if n else 0,
                              b.center if b else None, n.center if n else None, None))  # fmt: skip
    singles_b, singles_n = _single_values(base), _single_values(new)
    for key in sorted(set(singles_b) & set(singles_n)):
        vb, vn = singles_b[key], singles_n[key]
        why = _why_one_value(key.metric)
        ratio = vn / vb if vb else None
        out.append(Comparison(key, direction_of(key.metric), "not tested", why, "value", 1, 1,
                              vb, vn, ratio))  # fmt: skip
    rank = {"regression": 0, "improvement": 1, "changed": 2, "unchanged": 3, "not tested": 4}
    return sorted(out, key=lambda c: (rank[c.verdict], c.key))


def comparison_table(comparisons: list[Comparison]) -> pd.DataFrame:
    columns = list(Comparison(SeriesKey("", "", "", "", ""), "unknown", "not tested", "", "", 0, 0,
                              None, None, None).as_row())  # fmt: skip
    return pd.DataFrame([c.as_row() for c in comparisons], columns=columns)
