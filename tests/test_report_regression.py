"""A regression found end to end on the virtual lab: the inference suite runs twice on two
gateways, the second time with the Coral's CPU quota halved (the same model, made slower by
throttling the board that runs it), and `fieldrig report --baseline` flags exactly that:
the slowed gateway's latency with its statistics, not the other gateway's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd

from bench.boards import BOARDS
from bench.lab import cgroups
from bench.lab.virtual import VirtualLab
from bench.rig import Rig

REPO = Path(__file__).resolve().parents[1]
SELECT = "test_latency and meter_anomaly-int8 and t1"


def _suite(runs: Path) -> Path:
    before = set(runs.iterdir()) if runs.exists() else set()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "suites/test_inference.py", "--rig=virtual",
         "--gateway=gw2", "--gateway=gw3", "-k", SELECT, "--inference-windows=3",
         "--inference-min-secs=0.3", "--inference-min-count=50", f"--runs-dir={runs}",
         "-p", "no:cacheprovider", "-q"],
        cwd=REPO, capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    (run,) = set(runs.iterdir()) - before
    return run


def test_slowed_model_is_flagged_and_the_rest_is_not(
    lab: VirtualLab, virtual_rig: Rig, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    baseline = _suite(runs)
    coral = BOARDS[virtual_rig.gateway("gw3").board].cpu_quota
    cgroups.create(lab.plan.lab_id, "gw3", coral / 2)
    try:
        slowed = _suite(runs)
    finally:
        cgroups.create(lab.plan.lab_id, "gw3", coral)
    out = tmp_path / "report"
    result = subprocess.run(
        [sys.executable, "-m", "bench.cli", "report", str(slowed), "--baseline", str(baseline),
         "--out", str(out), "--runs-dir", str(runs), "--no-index", "--fail-on-regression"],
        cwd=REPO, capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr  # a regression was found
    table = pd.read_csv(out / "data" / "comparison.csv")
    latency = table[table["metric"].str.startswith("latency.")]
    flagged = latency[latency["verdict"] == "regression"]
    assert set(flagged["gateway"]) == {"gw3"}, flagged[["gateway", "metric", "verdict"]]
    tested = flagged[flagged["p"].notna()]
    assert not tested.empty
    assert (tested["p"] < 0.002).all() and (tested["ci_low"] > 1.05).all()
    gw2 = latency[(latency["gateway"] == "gw2") & latency["p"].notna()]
    assert not gw2.empty and (gw2["verdict"] != "regression").all()
    summary = (out / "summary.md").read_text()
    assert "gw3" in summary and "regression" in summary.lower()
