"""One value per series and run, across a series of runs, with change points flagged.

A run's value of a series is the centre of its raw samples (median, or mean for 0/1
outcomes) where it has them, else the median of its records. Change points come from
:func:`bench.report.changepoint.change_points` over the runs that have the series.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import pandas as pd

from bench.report.changepoint import ChangePoint, change_points
from bench.report.compare import direction_of
from bench.report.load import RunData, SeriesKey, numeric_value, series_key

#: metrics an index follows (the rest are stack details or summaries of these)
HEADLINE: Final = re.compile(
    r"^(latency\.(p50|p99|per_inference)$|energy\.(per_inference|inferences_per_joule)$"
    r"|power\.(idle|boot_to_ssh)$|mesh\.(delivery|attenuation|delivery_backhaul_down)\.loss$"
    r"|mesh\.recovery_time_max$|liveness\.|quality\.|rollout\.|update\.)"
)


@dataclass
class Trend:
    key: SeriesKey
    runs: list[str]  # run ids, oldest first (all runs of the series, with or without it)
    values: list[float | None]
    changes: list[ChangePoint] = field(default_factory=list)  # indices into ``values``

    @property
    def direction(self) -> str:
        return direction_of(self.key.metric)

    @property
    def last(self) -> float | None:
        known = [v for v in self.values if v is not None]
        return known[-1] if known else None


def run_values(run: RunData, *, headline_only: bool = False) -> dict[SeriesKey, float]:
    """Each series' value in one run (see the module docstring)."""
    values: dict[SeriesKey, list[float]] = {}
    for _, row in run.measurements.iterrows():
        value = numeric_value(row["value"])
        if value is None or (headline_only and not HEADLINE.search(str(row["metric"]))):
            continue
        params = row["parameters"] if isinstance(row["parameters"], dict) else {}
        key = series_key(
            row["suite"], row["test"], row["metric"], row["unit"], row["gateway"], params
        )
        values.setdefault(key, []).append(value)
    out = {k: float(statistics.median(v)) for k, v in values.items() if k not in run.samples}
    for key, samples in run.samples.items():
        if not headline_only or HEADLINE.search(key.metric):
            out[key] = samples.center
    return out


def trends(
    runs: Sequence[RunData],
    *,
    headline_only: bool = False,
    min_shift: float = 0.05,
    min_runs: int = 2,
) -> list[Trend]:
    """Series found in at least ``min_runs`` of ``runs`` (oldest first), with change points."""
    per_run = [run_values(r, headline_only=headline_only) for r in runs]
    keys = sorted({k for values in per_run for k in values})
    ids = [r.run_id for r in runs]
    found = []
    for key in keys:
        values = [v.get(key) for v in per_run]
        present = [(i, v) for i, v in enumerate(values) if v is not None]
        if len(present) < max(min_runs, 1):
            continue
        trend = Trend(key, ids, values)
        for change in change_points([v for _, v in present], min_shift=min_shift):
            index = present[change.index][0]
            trend.changes.append(
                ChangePoint(index, change.before, change.after, change.relative_shift, change.score)
            )
        found.append(trend)
    return found


def trends_table(found: Sequence[Trend]) -> pd.DataFrame:
    rows = []
    for trend in found:
        starts = {c.index for c in trend.changes}
        for run, value, i in zip(trend.runs, trend.values, range(len(trend.values)), strict=True):
            if value is None:
                continue
            rows.append(
                {
                    "suite": trend.key.suite, "test": trend.key.test,
                    "metric": trend.key.metric, "unit": trend.key.unit,
                    "gateway": trend.key.gateway, "context": trend.key.context, "run": run,
                    "value": value, "change_point": i in starts,
                }
            )  # fmt: skip
    columns = [
        "suite",
        "test",
        "metric",
        "unit",
        "gateway",
        "context",
        "run",
        "value",
        "change_point",
    ]
    return pd.DataFrame(rows, columns=columns)


def changes_table(found: Sequence[Trend]) -> pd.DataFrame:
    rows = [
        {
            "metric": t.key.metric, "unit": t.key.unit, "gateway": t.key.gateway,
            "context": t.key.context, "test": t.key.test, "direction": t.direction,
            "run_before": next(t.runs[i] for i in range(c.index - 1, -1, -1)
                               if t.values[i] is not None),
            "run_after": t.runs[c.index], "before": c.before, "after": c.after,
            "relative_shift": c.relative_shift, "score": c.score,
        }
        for t in found
        for c in t.changes
    ]  # fmt: skip
    columns = ["metric", "unit", "gateway", "context", "test", "direction", "run_before",
               "run_after", "before", "after", "relative_shift", "score"]  # fmt: skip
    return pd.DataFrame(rows, columns=columns)
