"""`pytest suites/test_mesh.py` on one virtual gateway, end to end: every probe's fate, loss
with intervals by hop count, the attenuation sweep, recovery time and the backhaul
partition are in the run's records, and no fault or attenuation outlives the run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.faults import find_stale
from bench.instruments.registry import open_attenuator
from bench.lab.virtual import VirtualLab
from bench.rig import Rig

REPO = Path(__file__).resolve().parents[1]


def test_mesh_suite_records_loss_sweep_and_recovery(
    lab: VirtualLab, virtual_rig: Rig, tmp_path: Path
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "suites/test_mesh.py", "--rig=virtual",
         "--gateway=gw1", "--mesh-probes=120", f"--runs-dir={tmp_path / 'runs'}",
         "-p", "no:cacheprovider", "-q"],
        cwd=REPO, capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    (run_dir,) = (tmp_path / "runs").iterdir()
    records = [json.loads(line) for line in (run_dir / "measurements.jsonl").open()]
    by_metric: dict[str, list[dict[str, object]]] = {}
    for record in records:
        assert record["gateway"] == "gw1"
        by_metric.setdefault(str(record["metric"]), []).append(record)

    probes = by_metric["mesh.probe.delivered"]
    assert len(probes) >= 120 + 4 * 80  # delivery + sweep steps (+ recovery, backhaul)
    fields = {"seq", "destination", "hops", "sent_ns", "rtt_s", "lost", "late"}
    assert all(fields <= set(p["parameters"]) for p in probes)

    lows = {r["parameters"]["hops"]: r["value"] for r in by_metric["mesh.delivery.loss_ci_low"]}
    highs = {r["parameters"]["hops"]: r["value"] for r in by_metric["mesh.delivery.loss_ci_high"]}
    assert "all" in lows and len(lows) >= 4  # several hop counts and the total
    assert all(lows[h] <= highs[h] for h in lows)

    sweep = {
        r["parameters"]["attenuation_db"]: r["value"] for r in by_metric["mesh.attenuation.loss"]
    }
    assert sorted(sweep) == [0.0, 15.0, 30.0, 45.0, 60.0]
    assert sweep[60.0] > sweep[0.0]

    (worst,) = by_metric["mesh.recovery_time_max"]
    assert 0 < worst["value"] <= 600
    assert by_metric["mesh.delivery_backhaul_down.sent"][0]["value"] == 120

    events = [json.loads(line) for line in (run_dir / "events.jsonl").open()]
    kinds = [e["kind"] for e in events if e["kind"].startswith("fault_")]
    assert kinds == ["fault_apply", "fault_remove"]
    assert not find_stale(["fr-virtual-gw1"])
    attenuator = open_attenuator("att1", virtual_rig.attenuators["att1"])
    try:
        assert attenuator.get_db(1) == 0.0  # back at safe_db
    finally:
        attenuator.close()
