"""``fieldrig report``: runs in, report.html + summary.md + data/ out."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from bench.report.compare import Settings, compare_runs, comparison_table
from bench.report.drift import (
    drift_table,
    fingerprint_failures,
    fingerprint_failures_table,
    fleet_drift,
)
from bench.report.html import render_html
from bench.report.load import DEFAULT_MAX_SAMPLES, Progress, ReportInputError, RunData, load_run
from bench.report.markdown import render_markdown
from bench.report.model import Report
from bench.report.summary import DEFAULT_RUNS_DIR, resolve_run
from bench.report.tables import (
    collapsed_measurements,
    energy_table,
    events_table,
    inventory_table,
    latency_plot_tables,
    latency_table,
    mesh_attenuation_table,
    mesh_delivery_table,
    outcomes_table,
    power_table,
    problems_table,
    runs_table,
)
from bench.report.tidy import write_tables
from bench.report.timeline import build_timeline, invariants_table, timeline_table
from bench.report.trend import changes_table, trends, trends_table

_MESH_SUMMARIES = ("mesh.delivery.", "mesh.attenuation.", "mesh.probe.")


@dataclass(frozen=True)
class ReportFiles:
    out_dir: Path
    html: Path
    summary: Path
    data: list[Path]
    regressions: int
    failures: int


def stderr_progress(line: str) -> None:
    print(f"fieldrig report: {line}", file=sys.stderr, flush=True)


def _fingerprints_table(run: RunData) -> pd.DataFrame:
    """Outcomes grouped by device fingerprint."""
    rows: dict[str, dict[str, object]] = {}
    gateways: dict[str, set[str]] = {}
    for gateway in sorted(run.inventory):
        fp = run.fingerprint_of(gateway)
        gateways.setdefault(fp, set()).add(gateway)
        rows.setdefault(
            fp,
            {
                "run": run.run_id,
                "fingerprint": fp,
                "board": run.board_of(gateway),
                "passed": 0,
                "failed": 0,
                "skipped": 0,
            },
        )
    for _, row in run.outcomes.iterrows():
        if not isinstance(row["gateway"], str):
            continue
        fp = run.fingerprint_of(row["gateway"])
        entry = rows.setdefault(
            fp,
            {
                "run": run.run_id,
                "fingerprint": fp,
                "board": "unknown",
                "passed": 0,
                "failed": 0,
                "skipped": 0,
            },
        )
        gateways.setdefault(fp, set()).add(row["gateway"])
        bucket = {
            "passed": "passed",
            "xpassed": "passed",
            "skipped": "skipped",
            "xfailed": "skipped",
        }.get(str(row["outcome"]), "failed")
        entry[bucket] = int(str(entry[bucket])) + 1
    for fp, entry in rows.items():
        entry["gateways"] = ", ".join(sorted(gateways.get(fp, set())))
    columns = ["run", "fingerprint", "board", "gateways", "passed", "failed", "skipped"]
    return pd.DataFrame(list(rows.values()), columns=columns)


def assemble(
    runs: Sequence[RunData],
    baseline: RunData | None = None,
    settings: Settings | None = None,
    progress: Progress | None = None,
) -> Report:
    """Compute everything a report shows from loaded runs (the newest is the subject)."""
    if not runs:
        raise ReportInputError("no run to report on: give a run directory or 'latest'")
    ordered = sorted(runs, key=lambda r: (str(r.info.get("start")), r.run_id))
    subject = ordered[-1]
    rule = (settings or Settings()).check()
    say = progress or (lambda _line: None)
    say(f"building tables for {subject.run_id}")
    roles = {r.run_id: "series" for r in ordered}
    roles[subject.run_id] = "subject"
    if baseline is not None:
        roles[baseline.run_id] = "baseline"
    box, points = latency_plot_tables(subject)
    timeline = build_timeline(subject)
    all_runs = [*ordered, *([baseline] if baseline and baseline not in ordered else [])]
    tables = {
        "runs": runs_table(all_runs, roles),
        "outcomes": outcomes_table(subject),
        "inventory": inventory_table(subject),
        "latency": latency_table(subject),
        "latency_box": box,
        "latency_points": points,
        "energy": energy_table(subject),
        "power": power_table(subject),
        "mesh_delivery": mesh_delivery_table(subject),
        "mesh_attenuation": mesh_attenuation_table(subject),
        "mesh_other": collapsed_measurements(subject, ["mesh."], exclude=_MESH_SUMMARIES),
        "liveness": collapsed_measurements(subject, ["liveness."]),
        "rollouts": collapsed_measurements(subject, ["rollout.", "update."]),
        "other": collapsed_measurements(subject, []),
        "timeline": timeline_table(subject, timeline),
        "invariants": invariants_table(subject, timeline),
        "events": events_table(subject),
        "drift": drift_table(subject),
        "fingerprints": _fingerprints_table(subject),
        "fingerprint_failures": fingerprint_failures_table(subject),
        "problems": problems_table(all_runs),
    }
    report = Report(subject, list(ordered), baseline, rule, tables)
    report.timeline = timeline
    report.drift = fleet_drift(subject)
    report.fingerprint_failures = fingerprint_failures(subject)
    if baseline is not None:
        report.comparisons = compare_runs(baseline, subject, rule, say)
        tables["comparison"] = comparison_table(report.comparisons)
    if len(ordered) > 1:
        say(f"following {len(ordered)} runs for change points")
        report.trends = trends(ordered, min_shift=rule.min_effect)
        tables["series"] = trends_table(report.trends)
        tables["change_points"] = changes_table(report.trends)
    report.generated_at = datetime.now(UTC).isoformat(timespec="seconds")
    return report


def write_report(report: Report, out_dir: Path, progress: Progress | None = None) -> ReportFiles:
    """Write report.html, summary.md and data/ into ``out_dir``."""
    say = progress or (lambda _line: None)
    out_dir.mkdir(parents=True, exist_ok=True)
    say(f"writing data tables to {out_dir / 'data'}")
    data = write_tables(report.tables, out_dir / "data")
    say(f"writing {out_dir / 'report.html'} and summary.md")
    html_path, summary_path = out_dir / "report.html", out_dir / "summary.md"
    for path, text in ((html_path, render_html(report)), (summary_path, render_markdown(report))):
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    return ReportFiles(
        out_dir, html_path, summary_path, data, len(report.regressions), len(report.failures)
    )


def build_report(
    runs: Sequence[str | Path],
    *,
    baseline: str | Path | None = None,
    out: Path | None = None,
    runs_dir: Path = DEFAULT_RUNS_DIR,
    settings: Settings | None = None,
    max_samples: int = DEFAULT_MAX_SAMPLES,
    progress: Progress | None = stderr_progress,
) -> ReportFiles:
    """Load ``runs`` (directories or 'latest') and an optional baseline, and write the
    report to ``out`` (default: ``<runs_dir>/../<newest run id>/``)."""
    dirs = list(dict.fromkeys(resolve_run(r, runs_dir).resolve() for r in runs or ["latest"]))
    loaded = [load_run(d, max_samples=max_samples, progress=progress) for d in dirs]
    base = None
    if baseline is not None:
        base_dir = resolve_run(baseline, runs_dir).resolve()
        if base_dir in dirs:
            raise ReportInputError(
                f"{base_dir} is both a run and the baseline: give another baseline"
            )
        base = load_run(base_dir, max_samples=max_samples, progress=progress)
    report = assemble(loaded, base, settings, progress)
    out_dir = out if out is not None else runs_dir.parent / report.subject.run_id
    return write_report(report, out_dir, progress)
