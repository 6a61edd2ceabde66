"""Everything one report shows, computed once and rendered as HTML, Markdown and data."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from bench.report.compare import Comparison, Settings
from bench.report.drift import Drift, FingerprintFailure
from bench.report.load import RunData
from bench.report.timeline import Timeline
from bench.report.trend import Trend


@dataclass
class Report:
    subject: RunData  # the newest run given: the one the sections show
    runs: list[RunData]  # every run given, oldest first (the series)
    baseline: RunData | None
    settings: Settings
    tables: dict[str, pd.DataFrame]
    comparisons: list[Comparison] = field(default_factory=list)
    drift: list[Drift] = field(default_factory=list)
    fingerprint_failures: list[FingerprintFailure] = field(default_factory=list)
    timeline: Timeline = field(default_factory=Timeline)
    trends: list[Trend] = field(default_factory=list)
    generated_at: str = ""

    @property
    def regressions(self) -> list[Comparison]:
        return [c for c in self.comparisons if c.verdict == "regression"]

    @property
    def failures(self) -> pd.DataFrame:
        outcomes = self.tables["outcomes"]
        return outcomes[outcomes["outcome"].isin(["failed", "error"])]

    @property
    def missing(self) -> list[str]:
        """What the report could not show, and why (subject first, then the others)."""
        found = [*self.subject.problems]
        found += [f"suite {s}: not in this run" for s in self.subject.absent_suites]
        others = [*([self.baseline] if self.baseline else []), *self.runs]
        for run in others:
            if run is not self.subject:
                found += [f"{run.run_id}: {p}" for p in run.problems]
        return list(dict.fromkeys(found))

    @property
    def changes(self) -> int:
        return sum(len(t.changes) for t in self.trends)
