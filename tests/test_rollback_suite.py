"""`pytest suites/test_rollback.py` on two virtual gateways, end to end with the real Mender
client: a model failing its health check, power cuts during install and between install
and commit, a canary wave past its abort threshold and a real exponential rollout rate each
end in a verdict with evidence, and the run holds the values: where each cut landed, bytes
over artifact size per device, time to detect for a cut install, the rates in force.
``FIELDRIG_FULL_BENCH=1`` runs every case of the suite (about 4 minutes more)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.faults import find_stale
from bench.lab.virtual import VirtualLab

REPO = Path(__file__).resolve().parents[1]
FULL = os.environ.get("FIELDRIG_FULL_BENCH") == "1"
CASES = "health_check or between_install or during_install or canary or rollout_rate"
GATEWAYS = ("gw1", "gw2")


def _values(records: list[dict[str, Any]], test: str, metric: str) -> dict[str, Any]:
    """``{device: value}`` of one metric of one test ("fleet" for the rollout-wide one)."""
    return {
        r["parameters"]["device"]: r["value"]
        for r in records
        if r["test"] == test and r["metric"] == metric
    }


def test_rollback_suite_records_verdicts_timings_and_faults(
    lab: VirtualLab, tmp_path: Path
) -> None:
    select = [] if FULL else ["-k", CASES]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "suites/test_rollback.py", "--rig=virtual",
         *(f"--gateway={gw}" for gw in GATEWAYS), *select, f"--runs-dir={tmp_path / 'runs'}",
         "-p", "no:cacheprovider", "-q"],
        cwd=REPO, capture_output=True, text=True, check=False, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    (run_dir,) = (tmp_path / "runs").iterdir()
    records = [json.loads(line) for line in (run_dir / "measurements.jsonl").open()]
    events = [json.loads(line) for line in (run_dir / "events.jsonl").open()]

    def status(test: str) -> list[str]:
        return sorted(_values(records, test, "rollout.execution").values())

    assert status("test_model_failing_its_health_check_rolls_back") == ["FAILED", "FAILED"]
    assert status("test_canary_wave_failing_past_the_abort_threshold") == ["CANCELED", "FAILED"]
    for test in ("test_power_cut_during_install", "test_power_cut_between_install_and_commit",
                 "test_rollout_rate_rises_exponentially_on_real_gateways"):  # fmt: skip
        assert status(test) == ["SUCCEEDED", "SUCCEEDED"], test
    assert all(r["value"] == 0 for r in records if r["metric"] == "rollout.stranded")

    # where each cut landed, as the server's log and the device's steps show it
    cut = "test_power_cut_during_install"
    assert _values(records, cut, "rollout.fault_phase") == dict.fromkeys(GATEWAYS, "install")
    between = "test_power_cut_between_install_and_commit"
    assert _values(records, between, "rollout.fault_phase") == dict.fromkeys(GATEWAYS, "commit")
    # the cut install died under the running command: detected, from the cut's start
    detect = _values(records, cut, "rollout.time_to_detect")
    assert set(detect) == set(GATEWAYS) and all(t >= 0 for t in detect.values()), detect

    # bytes over size, per device from the server's log: one clean download each is 1.0;
    # a cut after the last byte makes the retry fetch it all again: 2.0
    for test in ("test_model_failing_its_health_check_rolls_back",
                 "test_rollout_rate_rises_exponentially_on_real_gateways"):  # fmt: skip
        ratios = _values(records, test, "rollout.bytes_over_size")
        assert set(ratios) == {*GATEWAYS, "fleet"}, ratios
        assert all(0.99 <= v <= 1.01 for v in ratios.values()), (test, ratios)
    ratios = _values(records, cut, "rollout.bytes_over_size")
    assert set(ratios) == {*GATEWAYS, "fleet"} and all(v >= 1.99 for v in ratios.values()), ratios
    canary = _values(records, "test_canary_wave_failing_past_the_abort_threshold",
                     "rollout.bytes_over_size")  # fmt: skip
    assert len(canary) == 2 and 0.99 <= canary["fleet"] <= 1.01, canary  # CANCELED: no figure

    verdicts = [json.loads(e["message"]) for e in events if e["kind"] == "rollout_invariants"]
    assert len(verdicts) == (12 if FULL else 5)
    assert all(v["summary"].endswith("hold") for v in verdicts)
    faults = [e for e in events if e["kind"].startswith("fault_")]
    kinds = {json.loads(e["message"])["kind"] for e in faults}
    assert "power_cut" in kinds and (FULL or kinds == {"power_cut"}), kinds
    assert all(e["gateway"] in GATEWAYS for e in faults)
    rollout_events = [json.loads(e["message"]) for e in events if e["kind"] == "rollout"]
    assert any(e["to_state"] == "CANCELED" for e in rollout_events)
    starts = [
        e["data"]["rate_per_minute"] for e in rollout_events if e["to_state"] == "IN_PROGRESS"
    ]
    assert [r for r in starts if r < 1000] == [1, 2], starts  # only the rate case: 1/min, then x2

    evidence = {p.stem: json.loads(p.read_text()) for p in (run_dir / "rollback").glob("*.json")}
    assert len(evidence) == len(verdicts)
    doc = evidence[cut]
    assert {f["kind"] for f in doc["faults"]} == {"power_cut"}
    assert all("started_s" in f["details"] for f in doc["faults"] if f["action"] == "apply")
    assert set(doc["fault_phases"]) == set(GATEWAYS)
    for name in GATEWAYS:
        assert doc["devices"][name]["files"].get("status"), doc["devices"][name]["files"]
        assert doc["devices"][name]["download"]["transfers"]
    assert not find_stale([f"fr-virtual-{gw}" for gw in GATEWAYS])
    assert lab.status().healthy  # power restored, every gateway back
