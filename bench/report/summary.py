"""A plain Markdown summary of one run: what ran where, what was measured, what failed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.results import RunStore

DEFAULT_RUNS_DIR = Path("reports/runs")
VIRTUAL_LABEL = "VIRTUAL LAB (tests the bench, not silicon)"
# parameters that tell two records of one metric apart, shown in the summary
CONTEXT_KEYS = (
    *("model", "variant", "threads", "delegate"),
    *("hops", "attenuation_db", "phase", "backhaul", "parent"),
)
# more rows than this for one metric in one context (per-probe fates) become one line
COLLAPSE_ROWS = 10


def resolve_run(run: str | Path, runs_dir: Path = DEFAULT_RUNS_DIR) -> Path:
    """A run directory from a path, or 'latest' (the newest run in runs_dir)."""
    if str(run) == "latest":
        runs = sorted(p for p in runs_dir.glob("*/run.json"))
        if not runs:
            raise BenchError(f"no runs in {runs_dir}; run `pytest suites/` first")
        return max(runs, key=lambda p: p.stat().st_mtime).parent
    path = Path(run)
    if not (path / "run.json").exists():
        raise BenchError(f"{path} is not a run directory (no run.json in it)")
    return path


def _fmt(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def run_header(info: dict[str, Any]) -> list[str]:
    """Markdown bullets saying what ran where: rig and label, versions, commit, times."""
    label = VIRTUAL_LABEL if info.get("virtual") else "hardware"
    return [
        f"- rig: {info['rig_name']} ({label}), rig file sha256 {str(info.get('rig_sha256'))[:12]}",
        f"- fieldrig {info['fieldrig_version']}, Python {info['python_version']}, "
        f"commit {str(info.get('git_commit'))[:12]}{' (dirty)' if info.get('git_dirty') else ''}",
        f"- from {info['start']} to {info.get('end')}; status {info['status']}",
    ]


def render_summary(run_dir: Path) -> str:
    """The Markdown text of a run's summary."""
    store = RunStore.open_existing(run_dir)
    info = store.run_info()
    lines = [f"# fieldrig run {info['run_id']}", "", *run_header(info), ""]
    inventory_path = run_dir / "inventory.json"
    inventory = json.loads(inventory_path.read_text()) if inventory_path.exists() else {}
    if inventory:
        lines += ["## Gateways", "", "| gateway | board | OS | kernel | Python | runtime | "
                  "fingerprint |", "|---|---|---|---|---|---|---|"]  # fmt: skip
        for name, inv in sorted(inventory.items()):
            runtime = inv.get("inference_runtime") or {}
            rt = f"{runtime.get('name')} {runtime.get('version')}" if runtime else "none"
            lines.append(
                f"| {name} | {inv.get('board_model')} | {inv.get('os')} | {inv.get('kernel')} | "
                f"{inv.get('python')} | {rt} | {inv.get('fingerprint')} |"
            )
        lines.append("")
    outcomes = store.outcomes()
    if len(outcomes):
        counts = outcomes["outcome"].value_counts().to_dict()
        lines += ["## Outcomes", "", ", ".join(f"{v} {k}" for k, v in sorted(counts.items())), ""]
        bad = outcomes[outcomes["outcome"].isin(["failed", "error"])]
        for _, row in bad.iterrows():
            lines.append(f"- {row['outcome']}: `{row['test']}`: {row['message']}")
        if len(bad):
            lines.append("")
    measurements = store.measurements()
    if len(measurements):
        lines += ["## Measurements", "", "| gateway | suite | metric | for | value | unit |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        groups: dict[tuple[str, str, str, str, str], list[Any]] = {}
        for _, row in measurements.iterrows():
            params = row["parameters"] if isinstance(row["parameters"], dict) else {}
            context = ", ".join(f"{k}={params[k]}" for k in CONTEXT_KEYS if k in params)
            key = (str(row["gateway"]), row["suite"], row["metric"], context, row["unit"])
            groups.setdefault(key, []).append(row["value"])
        for (gateway, suite, metric, context, unit), values in groups.items():
            shown = [_fmt(v) for v in values]
            if len(values) > COLLAPSE_ROWS:
                numbers = [float(v) for v in values if isinstance(v, int | float | bool)]
                mean = f", mean {sum(numbers) / len(numbers):.4g}" if numbers else ""
                shown = [f"{len(values)} records{mean}"]
            for value in shown:
                lines.append(f"| {gateway} | {suite} | {metric} | {context} | {value} | {unit} |")
        lines.append("")
    return "\n".join(lines)


def write_summary(run: str | Path, runs_dir: Path = DEFAULT_RUNS_DIR) -> Path:
    """Write summary.md into the run directory and return its path."""
    run_dir = resolve_run(run, runs_dir)
    path = run_dir / "summary.md"
    path.write_text(render_summary(run_dir))
    return path
