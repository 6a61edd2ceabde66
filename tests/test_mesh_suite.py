"""`pytest suites/test_mesh.py` on one virtual gateway, end to end: every probe's fate, loss
with intervals by hop count, the attenuation sweep, recovery time and the backhaul
partition are in the run's records, and no fault or attenuation outlives the run. Delivery
with the backhaul down is measured on the gateway itself (origin=gateway), with the bench's
own handle on the dongle released meanwhile (tests/test_remote_probe.py checks that part)."""

from __future__ import annotations

import collections
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
    fields = {"seq", "destination", "hops", "sent_ns", "rtt_s", "lost", "late", "hops_source"}
    assert all(fields <= set(p["parameters"]) for p in probes)
    probing = {
        "test_delivery_by_hop_count",
        "test_attenuation_sweep",
        "test_recovery_after_parent_dies",
        "test_mesh_delivery_with_backhaul_down",
    }
    assert probing <= {str(r["test"]) for r in by_metric["mesh.tmax"]}  # Tmax wherever it probes

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
    (confirmed,) = by_metric["mesh.recovery_confirmed_time_max"]
    assert confirmed["value"] >= worst["value"]  # the streak's first answer comes first
    firsts = {r["parameters"]["child"]: r["value"] for r in by_metric["mesh.recovery_time"]}
    thirds = {
        r["parameters"]["child"]: r["value"] for r in by_metric["mesh.recovery_confirmed_time"]
    }
    assert firsts.keys() == thirds.keys() and all(firsts[c] <= thirds[c] for c in firsts)
    (children,) = by_metric["mesh.recovery_children"]
    assert len(by_metric["mesh.recovery_hops"]) == children["value"]  # re-read after recovery

    down = {r["parameters"]["hops"]: r for r in by_metric["mesh.delivery_backhaul_down.sent"]}
    assert down["all"]["value"] == 120 and down["all"]["parameters"]["origin"] == "gateway"
    assert set(down) - {"all"} <= {1, 2, 3}  # the meters the delivery floor is for
    from_gateway = [p for p in probes if p["parameters"].get("origin") == "gateway"]
    assert len(from_gateway) >= 120
    assert all(p["parameters"]["backhaul"] == "down" for p in from_gateway)

    events = [json.loads(line) for line in (run_dir / "events.jsonl").open()]
    faults = [(e["kind"], json.loads(e["message"])["kind"]) for e in events
              if e["kind"].startswith("fault_")]  # fmt: skip
    partition = [action for action, kind in faults if kind == "partition"]
    assert partition == ["fault_apply", "fault_remove"]  # the backhaul-down test's
    bursts = collections.Counter(action for action, kind in faults if kind == "interference_burst")
    assert bursts["fault_apply"] == bursts["fault_remove"] >= 1, faults  # the interference test's
    assert {kind for _, kind in faults} == {"partition", "interference_burst"}
    loss = {(r["parameters"]["bursts"], r["parameters"]["hops"]): r["value"]
            for r in by_metric["mesh.interference.loss"]}  # fmt: skip
    assert loss[("inside", "all")] > loss[("outside", "all")], loss  # by hops too
    assert not find_stale(["fr-virtual-gw1"])
    attenuator = open_attenuator("att1", virtual_rig.attenuators["att1"])
    try:
        assert attenuator.get_db(1) == 0.0  # back at safe_db
    finally:
        attenuator.close()
