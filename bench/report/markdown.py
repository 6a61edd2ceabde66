"""The short Markdown summary of a report: fits a CI job summary or a pull-request comment.

Headline, regressions, failures, fleet drift, change points and missing parts, each list
cut at :data:`MAX_ITEMS` with a pointer to report.html. Device text is made inert: ``<``,
``>`` and ``&`` become entities, ``|`` is escaped, line breaks become spaces.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Final

from bench.report.model import Report
from bench.report.summary import run_header
from bench.report.svg import fmt

MAX_ITEMS: Final = 10
MAX_CELL: Final = 160


def md(text: object, limit: int = MAX_CELL) -> str:
    """``text`` safe in a Markdown table cell or list item."""
    one_line = " ".join(str(text).split())
    if len(one_line) > limit:
        one_line = one_line[: limit - 1] + "\u2026"
    return html.escape(one_line, quote=False).replace("|", "\\|").replace("`", "'")


def _capped(lines: Sequence[str], what: str) -> list[str]:
    if len(lines) <= MAX_ITEMS:
        return list(lines)
    return [*lines[:MAX_ITEMS], f"- \u2026 and {len(lines) - MAX_ITEMS} more {what} in report.html"]


def render_markdown(report: Report) -> str:
    """summary.md of ``report``."""
    run = report.subject
    n_reg, n_fail = len(report.regressions), len(report.failures)
    verdict = []
    if report.baseline is not None:
        verdict.append(f"{n_reg} regression{'s' * (n_reg != 1)}")
    verdict.append(f"{n_fail} failed test{'s' * (n_fail != 1)}")
    if report.changes:
        verdict.append(f"{report.changes} change point(s)")
    lines = [f"# fieldrig report {md(run.run_id)}: {', '.join(verdict)}", ""]
    lines += [md(line, 300) for line in run_header(run.info)]
    if report.baseline is not None:
        s = report.settings
        lines.append(
            f"- baseline {md(report.baseline.run_id)}: regression = Mann-Whitney p < {s.alpha:g} "
            f"and the {s.confidence:.0%} bootstrap CI of the median ratio beyond "
            f"{s.min_effect:.0%}"
        )
    if len(report.runs) > 1:
        lines.append(f"- series of {len(report.runs)} runs: {len(report.trends)} metrics followed")
    lines.append("")
    if report.regressions:
        lines += [
            f"## Regressions ({n_reg})",
            "",
            "| metric | gateway | for | baseline | new | ratio [95 % CI] | p |",
            "|---|---|---|---|---|---|---|",
        ]
        for c in report.regressions[:MAX_ITEMS]:
            lines.append(
                f"| {md(c.key.metric)} | {md(c.key.gateway)} | {md(c.key.context)} | "
                f"{fmt(c.base)} {md(c.key.unit)} | {fmt(c.new)} {md(c.key.unit)} | "
                f"{fmt(c.ratio)} [{fmt(c.ci_low)}, {fmt(c.ci_high)}] | {c.p:.2g} |"
            )
        if n_reg > MAX_ITEMS:
            lines.append(f"\n\u2026 and {n_reg - MAX_ITEMS} more in report.html")
        lines.append("")
    if n_fail:
        lines += [f"## Failures ({n_fail})", ""]
        items = [
            f"- {md(r['outcome'])}: {md(r['test'], 120)}: {md(r['message'])}"
            for _, r in report.failures.iterrows()
        ]
        lines += [*_capped(items, "failures"), ""]
    drift = [f"- {md(d.text, 300)}" for d in report.drift]
    drift += [f"- {md(f.text, 300)}" for f in report.fingerprint_failures]
    if drift:
        lines += ["## Fleet drift", "", *_capped(drift, "findings"), ""]
    changes = [
        f"- {md(t.key.label)}: {fmt(c.before)} \u2192 {fmt(c.after)} {md(t.key.unit)} "
        f"from run {md(t.runs[c.index])}"
        for t in report.trends
        for c in t.changes
    ]
    if changes:
        lines += ["## Change points", "", *_capped(changes, "change points"), ""]
    if report.missing:
        lines += ["## Missing", "", *_capped([f"- {md(m)}" for m in report.missing], "items"), ""]
    lines.append("Full report: report.html; data behind it: data/ (CSV and Parquet).")
    return "\n".join(lines) + "\n"
