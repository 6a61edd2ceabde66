"""The soak in a mode CI can afford: `scripts/soak 2` over a small subset of the suites on
the scratch lab "tkill" (see tests/test_kill.py), with random faults every ~2 s; and the
soak's leak check catching a process left in the lab. The full soak is
``scripts/soak`` (10 runs of ``pytest suites/ --rig=virtual``)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.lab import system
from bench.lab.soak import Soak
from bench.lab.virtual import VirtualLab
from bench.rig import load_rig
from tests.test_kill import REPO, scratch_rig
from tests.test_lab import leftovers

SUBSET = [
    "suites/test_smoke.py",
    "suites/test_backhaul.py",
    "-k",
    "reachable or test_rtt or test_loss",
]


@pytest.fixture
def rig_path(tmp_path: Path) -> Iterator[Path]:
    path = scratch_rig(tmp_path)
    lab = VirtualLab(load_rig(path))
    lab.down()
    yield path
    lab.down(purge=True)
    assert leftovers(lab) == []


def test_soak_two_runs_with_random_faults(rig_path: Path, tmp_path: Path) -> None:
    runs = tmp_path / "soak"
    proc = subprocess.run(
        ["scripts/soak", "2", f"--rig={rig_path}", f"--runs-dir={runs}", "--seed=7",
         "--fault-mean-s=1.5", "--", *SUBSET],
        cwd=REPO, capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "no leaks, every run complete" in proc.stdout
    run_dirs = sorted(d for d in runs.glob("run*/*") if (d / "run.json").exists())
    assert len(run_dirs) == 2
    chaos = []
    for run_dir in run_dirs:
        assert json.loads((run_dir / "run.json").read_text())["status"] == "complete"
        events = [json.loads(line) for line in (run_dir / "events.jsonl").open()]
        assert any(e["kind"] == "random_faults" for e in events)
        chaos += [
            json.loads(e["message"]) for e in events if e["kind"] in ("fault_apply", "fault_down")
        ]
    assert any(c["details"].get("chaos") is True for c in chaos), chaos
    assert not [n for n in system.netns_list() if n.startswith("fr-tkill-")]


def test_leak_check_catches_a_process_left_on_a_gateway(rig_path: Path, tmp_path: Path) -> None:
    lab = VirtualLab(load_rig(rig_path))
    lab.up()
    checker = Soak(lab, tmp_path, [])
    checker.processes = checker.lab_processes()
    stray = subprocess.Popen(
        ["ip", "netns", "exec", "fr-tkill-gw2", "sleep", "300"], start_new_session=True
    )
    try:
        checker.check_leaks(0)
    finally:
        system.stop_process(stray)
    assert any("process left in the lab" in p and "sleep 300" in p for p in checker.problems)
    assert any("gateway-process" in p and "sleep 300" in p for p in checker.problems)
