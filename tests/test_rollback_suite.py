"""`pytest suites/test_rollback.py` on two virtual gateways, end to end with the real Mender
client: a model failing its health check, a power cut between install and commit, a link
that never comes back and a canary wave past its abort threshold each end in a verdict
with evidence, and the run holds the timings, the fault timeline and the rollout events."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.faults import find_stale
from bench.lab.virtual import VirtualLab

REPO = Path(__file__).resolve().parents[1]
CASES = "health_check or between_install or never_restored or canary"


def test_rollback_suite_records_verdicts_timings_and_faults(
    lab: VirtualLab, tmp_path: Path
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "suites/test_rollback.py", "--rig=virtual",
         "--gateway=gw1", "--gateway=gw2", "-k", CASES, f"--runs-dir={tmp_path / 'runs'}",
         "-p", "no:cacheprovider", "-q"],
        cwd=REPO, capture_output=True, text=True, check=False, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    (run_dir,) = (tmp_path / "runs").iterdir()
    records = [json.loads(line) for line in (run_dir / "measurements.jsonl").open()]
    events = [json.loads(line) for line in (run_dir / "events.jsonl").open()]

    executions = [r for r in records if r["metric"] == "rollout.execution"]
    by_artifact: dict[str, list[str]] = {}
    for r in executions:
        by_artifact.setdefault(r["parameters"]["artifact"], []).append(r["value"])
    # health check (2 FAILED) + canary (1 FAILED, 1 CANCELED); power cut (2 SUCCEEDED) and
    # never-restored link (2 FAILED or TIMED_OUT) on model-v2
    assert sorted(by_artifact["model-bad"]) == ["CANCELED", "FAILED", "FAILED", "FAILED"]
    assert by_artifact["model-v2"].count("SUCCEEDED") == 2
    assert {r["metric"] for r in records} >= {
        "rollout.time_to_detect", "rollout.time_to_know", "rollout.completion_time",
        "rollout.stranded", "rollout.false_rollbacks", "rollout.bytes_over_size",
    }  # fmt: skip
    assert all(r["value"] == 0 for r in records if r["metric"] == "rollout.stranded")

    verdicts = [json.loads(e["message"]) for e in events if e["kind"] == "rollout_invariants"]
    assert len(verdicts) == 4
    assert all(v["summary"].endswith("hold") for v in verdicts)
    faults = [e for e in events if e["kind"].startswith("fault_")]
    kinds = {json.loads(e["message"])["kind"] for e in faults}
    assert kinds == {"partition", "power_cut"}
    assert all(e["gateway"] in ("gw1", "gw2") for e in faults)
    rollout_events = [e for e in events if e["kind"] == "rollout"]
    assert any("CANCELED" in e["message"] for e in rollout_events)
    assert len(list((run_dir / "rollback").glob("*.json"))) == 4  # evidence per rollout
    assert not find_stale(["fr-virtual-gw1", "fr-virtual-gw2"])
    assert lab.status().healthy  # power restored, every gateway back
