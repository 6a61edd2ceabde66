"""``reports/index.html``: every run in a runs directory, with a trend per metric.

A static page with relative links only (publishable as a site as it is): each run links to
its report (``<index dir>/<run id>/report.html``) when one was built, else to the run's own
summary.md or run.json. Trends follow the headline metrics (:data:`bench.report.trend.
HEADLINE`) as inline SVG sparklines, with change points marked; the data behind the page is
written to ``index-data/``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

import pandas as pd

from bench import __version__
from bench.report.html import CSS
from bench.report.load import Progress, ReportInputError, RunData, load_run
from bench.report.summary import DEFAULT_RUNS_DIR, VIRTUAL_LABEL
from bench.report.svg import esc, fmt, sparkline
from bench.report.tidy import write_tables
from bench.report.trend import Trend, changes_table, trends, trends_table


def _link(target: Path, index_dir: Path) -> str:
    return quote(Path(os.path.relpath(target, index_dir)).as_posix())


def _run_link(run: RunData, index_dir: Path) -> tuple[str, str]:
    report = index_dir / run.run_id / "report.html"
    if report.exists():
        return _link(report, index_dir), "report"
    for name in ("summary.md", "run.json"):
        if (run.run_dir / name).exists():
            return _link(run.run_dir / name, index_dir), name
    return _link(run.run_dir, index_dir), "run directory"


def _runs_rows(runs: Sequence[RunData], index_dir: Path) -> tuple[pd.DataFrame, list[str]]:
    frame_rows, html_rows = [], []
    for run in reversed(runs):  # newest first
        href, what = _run_link(run, index_dir)
        counts = run.outcomes["outcome"].value_counts().to_dict() if len(run.outcomes) else {}
        failed = int(counts.get("failed", 0)) + int(counts.get("error", 0))
        outcome_text = ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "none"
        lab = VIRTUAL_LABEL if run.virtual else "hardware"
        status = str(run.info.get("status")) + ("" if run.complete else " (partial)")
        frame_rows.append(
            {
                "run": run.run_id,
                "start": run.info.get("start"),
                "rig": run.info.get("rig_name"),
                "lab": lab,
                "status": status,
                "outcomes": outcome_text,
                "failed": failed,
                "suites": ", ".join(run.suites),
                "link": href,
            }
        )
        cls = ' class="regression"' if failed or not run.complete else ""
        html_rows.append(
            f'<tr{cls}><td><a href="{esc(href)}">{esc(run.run_id)}</a> '
            f'<span class="muted">({esc(what)})</span></td><td>{esc(run.info.get("start"))}</td>'
            f"<td>{esc(run.info.get('rig_name'))}</td><td>{esc(lab)}</td><td>{esc(status)}</td>"
            f"<td>{esc(outcome_text)}</td><td>{esc(', '.join(run.suites))}</td></tr>"
        )
    return pd.DataFrame(frame_rows), html_rows


def _trend_rows(found: Sequence[Trend]) -> list[str]:
    rows = []
    for trend in sorted(
        found, key=lambda t: (t.key.suite, t.key.metric, t.key.gateway, t.key.params)
    ):
        flagged = [c.index for c in trend.changes]
        note = "; ".join(
            f"{fmt(c.before)} \u2192 {fmt(c.after)} from {trend.runs[c.index]}"
            for c in trend.changes
        )
        cls = ' class="regression"' if trend.changes else ""
        runs = sum(v is not None for v in trend.values)
        spark = sparkline(trend.values, flagged, trend.key.label)
        rows.append(
            f"<tr{cls}><td>{esc(trend.key.metric)}</td><td>{esc(trend.key.gateway)}</td>"
            f"<td>{esc(trend.key.context)}</td><td>{spark}"
            f'</td><td class="n">{esc(fmt(trend.last))}</td><td>{esc(trend.key.unit)}</td>'
            f'<td class="n">{runs}</td><td>{esc(trend.direction)}</td><td>{esc(note)}</td></tr>'
        )
    return rows


def build_index(
    runs_dir: Path = DEFAULT_RUNS_DIR,
    index_path: Path | None = None,
    *,
    progress: Progress | None = None,
) -> Path:
    """Write the index of every run in ``runs_dir`` (default: ``<runs_dir>/../index.html``)."""
    index_path = index_path or runs_dir.parent / "index.html"
    index_dir = index_path.parent
    run_dirs = sorted(p.parent for p in runs_dir.glob("*/run.json"))
    if not run_dirs:
        raise ReportInputError(f"no runs in {runs_dir}: nothing to index")
    say = progress or (lambda _line: None)
    say(f"indexing {len(run_dirs)} runs in {runs_dir}")
    runs, unreadable = [], []
    for run_dir in run_dirs:
        try:
            runs.append(load_run(run_dir, raw_latencies=False))
        except (ReportInputError, ValueError, OSError) as exc:
            unreadable.append(f"{run_dir.name}: {exc}")
    runs.sort(key=lambda r: (str(r.info.get("start")), r.run_id))
    say("following the headline metrics across runs")
    found = trends(runs, headline_only=True, min_runs=1)
    runs_frame, run_rows = _runs_rows(runs, index_dir)
    data_dir = index_dir / "index-data"
    write_tables(
        {"runs": runs_frame, "trends": trends_table(found), "change_points": changes_table(found)},
        data_dir,
    )
    changes = sum(len(t.changes) for t in found)
    problems = "".join(f"<li>{esc(u)}</li>" for u in unreadable)
    body = [
        f"<header><h1>fieldrig runs</h1><p>{len(runs)} runs in {esc(runs_dir.name)}; "
        f"{len(found)} metric series followed; "
        f'<span class="{"bad" if changes else "good"}">{changes} change point(s)</span>.'
        "</p></header>",
        '<section id="runs"><h2>Runs</h2><table><tr><th>run</th><th>start</th><th>rig</th>'
        "<th>lab</th><th>status</th><th>outcomes</th><th>suites</th></tr>"
        + "".join(run_rows)
        + "</table>"
        + (f"<p>Unreadable runs:</p><ul>{problems}</ul>" if problems else "")
        + "</section>",
        '<section id="trends"><h2>Trends</h2><p class="muted">One value per run: the median of '
        "its records (the mean for 0/1 outcomes); red dots: change points (binary segmentation "
        "on per-run medians).</p><table><tr><th>metric</th><th>gateway</th><th>for</th>"
        "<th>trend</th><th>last</th><th>unit</th><th>runs</th><th>worse when</th>"
        "<th>change points</th></tr>" + "".join(_trend_rows(found)) + "</table>"
        '<p class="data">Data: <a href="index-data/trends.csv">trends.csv</a>, '
        '<a href="index-data/change_points.csv">change_points.csv</a>, '
        '<a href="index-data/runs.csv">runs.csv</a></p></section>',
    ]
    page = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>fieldrig runs</title><style>{CSS}</style></head><body>{''.join(body)}"
        f'<footer><p class="muted">fieldrig {esc(__version__)}</p></footer></body></html>\n'
    )
    index_dir.mkdir(parents=True, exist_ok=True)
    tmp = index_path.with_name(f".{index_path.name}.{os.getpid()}.tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, index_path)
    say(f"wrote {index_path}")
    return index_path
