"""`fieldrig summary`: the Markdown a person reads after a run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench.report.summary import render_summary
from bench.results import RunStore


def test_summary_shows_label_inventory_outcomes_and_measurements(tmp_path: Path) -> None:
    store = RunStore.create(tmp_path, rig_name="virtual", rig_path=None, rig_sha256=None,
                            virtual=True, argv=["pytest"])  # fmt: skip
    store.set_inventory({"gw1": {"board_model": "Raspberry Pi 4 Model B Rev 1.5",
                                 "os": "Debian", "fingerprint": "abc123def456"}})  # fmt: skip
    store.record(gateway="gw1", suite="inference", test="test_latency", metric="latency.p50",
                 value=12.5, unit="us", parameters={"model": "cam", "variant": "int8"})  # fmt: skip
    store.record_outcome(test="suites/x.py::test_a[gw1]", gateway="gw1", outcome="failed",
                         duration_s=0.1, message="AssertionError: too slow")  # fmt: skip
    store.record_outcome(test="suites/x.py::test_b[gw1]", gateway="gw1", outcome="passed",
                         duration_s=0.1)  # fmt: skip
    store.finish()
    text = render_summary(store.run_dir)
    assert "VIRTUAL LAB (tests the bench, not silicon)" in text
    assert "| gw1 | Raspberry Pi 4 Model B Rev 1.5 | Debian |" in text
    assert "1 failed, 1 passed" in text
    assert "- failed: `suites/x.py::test_a[gw1]`: AssertionError: too slow" in text
    assert "| gw1 | inference | latency.p50 | model=cam, variant=int8 | 12.5 | us |" in text


def test_summary_of_no_run_is_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.cli", "summary", str(tmp_path / "nothing")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert (
        result.stderr == f"fieldrig: error: {tmp_path / 'nothing'} is not a run directory "
        "(no run.json in it)\n"
    )
