"""The pytest plugin end to end: real pytest subprocesses against the real virtual lab."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from bench.faults import find_stale
from bench.gateway import ConnectedGateway
from bench.instruments.psu import open_psu
from bench.lab.virtual import VirtualLab
from bench.rig import Rig, load_rig
from bench.transport.ptyport import PtyDevice
from tests.test_lab import leftovers, small_rig

SUITE = """
import pytest

def test_hostname(gateway, results):
    assert gateway.run(["hostname"]).text.strip() == gateway.name
    results.record("probe.value", 1.5, "ms", mode="x")

@pytest.mark.board("coral-devboard")
def test_coral_only(gateway):
    assert gateway.spec.board == "coral-devboard"

@pytest.mark.needs("radio", "psu", "backhaul")
def test_needs_radio(gateway):
    assert gateway.spec.radio is not None and gateway.spec.power is not None

@pytest.mark.tag("cuda")
def test_cuda(gateway):
    assert "cuda" in gateway.spec.tags

def test_all(gateways):
    assert sorted(g.name for g in gateways) == ["gw1", "gw2", "gw3"]

def test_fail(gateway):
    assert gateway.name != "gw2"
"""


def only_run_dir(root: Path) -> Path:
    runs = [p for p in (root / "reports" / "runs").iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def read_jsonl(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_suite_ids_markers_and_records(pytester: pytest.Pytester, lab: VirtualLab) -> None:
    pytester.makepyfile(test_suite=SUITE)
    result = pytester.runpytest_subprocess("--rig=virtual", "-v", "-rs")
    result.assert_outcomes(passed=11, failed=1, skipped=4)
    result.stdout.fnmatch_lines(
        [
            "*test_hostname[[]gw1[]] PASSED*",
            "*test_coral_only[[]gw3[]] PASSED*",
            "*test_fail[[]gw2[]] FAILED*",
            "fieldrig run *-virtual-* (virtual): *reports/runs/*",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*gw1 is a rpi4; test needs board coral-devboard*",
            "*gw1 lacks tag cuda*",
        ]
    )
    run_dir = only_run_dir(pytester.path)
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "complete" and info["virtual"] is True
    assert info["rig_name"] == "virtual" and len(info["rig_sha256"]) == 64
    records = read_jsonl(run_dir / "measurements.jsonl")
    assert sorted((r["gateway"], r["metric"], r["value"], r["unit"]) for r in records) == [
        (gw, "probe.value", 1.5, "ms") for gw in ("gw1", "gw2", "gw3")
    ]
    assert all(r["suite"] == "suite" and r["parameters"] == {"mode": "x"} for r in records)
    outcomes = {
        r["test"].split("::")[-1]: r["outcome"] for r in read_jsonl(run_dir / "outcomes.jsonl")
    }
    assert outcomes["test_fail[gw2]"] == "failed"
    assert outcomes["test_fail[gw1]"] == "passed"
    assert outcomes["test_needs_radio[gw1]"] == "passed"
    assert (run_dir / "measurements.parquet").exists() and (run_dir / "outcomes.parquet").exists()
    inventory = json.loads((run_dir / "inventory.json").read_text())
    assert inventory["gw2"]["board_model"] == "NVIDIA Jetson Orin Nano Developer Kit"
    assert lab.status().healthy  # a lab this run did not bring up is left as it was


def test_gateway_option_restricts_and_rejects_unknown(
    pytester: pytest.Pytester, lab: VirtualLab
) -> None:
    pytester.makepyfile(test_one="def test_name(gateway):\n    assert gateway.name == 'gw2'\n")
    result = pytester.runpytest_subprocess("--rig=virtual", "--gateway=gw2", "-v")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*test_name[[]gw2[]] PASSED*"])
    bad = pytester.runpytest_subprocess("--rig=virtual", "--gateway=gw9")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines(
        ["ERROR: --gateway gw9: rig 'virtual' has no such gateway; it has gw1, gw2, gw3"]
    )
    assert "Traceback" not in bad.stderr.str() + bad.stdout.str()


def test_bad_rig_is_one_line_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_one="def test_x(gateway):\n    pass\n")
    rig = pytester.path / "broken.yaml"
    rig.write_text("name: broken\ngateways:\n  - name: a\n    board: rpi4\n    colour: red\n")
    result = pytester.runpytest_subprocess(f"--rig={rig}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.stderr.lines if line.startswith("ERROR:")]
    assert len(errors) == 1
    assert errors[0].startswith(f"ERROR: {rig}:3: gateways[0].ssh.host: required key is missing")
    assert "Traceback" not in result.stderr.str() + result.stdout.str()


def test_unreachable_gateway_is_infrastructure_not_failure(
    pytester: pytest.Pytester, lab: VirtualLab
) -> None:
    state = lab.plan.state_dir
    rig = pytester.path / "partial.yaml"
    rig.write_text(
        textwrap.dedent(f"""\
        name: partial
        ssh_defaults:
          auth: {{identity_file: {state}/id_ed25519}}
          host_key: {{known_hosts: {state}/known_hosts}}
          connect_timeout_s: 0.5
          reconnect_deadline_s: 1
        gateways:
          - {{name: gw1, board: rpi4, ssh: {{host: 10.213.0.11}}}}
          - {{name: ghost, board: rpi4, ssh: {{host: 10.213.0.99}}}}
        """)
    )
    pytester.makepyfile(test_one="def test_x(gateway):\n    assert gateway.run(['true']).ok\n")
    result = pytester.runpytest_subprocess(f"--rig={rig}", "-rs")
    result.assert_outcomes(passed=1, skipped=1)
    assert result.ret == 0
    out = result.stdout.str()
    assert out.count("INFRASTRUCTURE ERROR gateway ghost unavailable") == 1
    result.stdout.fnmatch_lines(
        [
            "*fieldrig infrastructure errors*",
            "ghost: gateway ghost (root@10.213.0.99:22): cannot connect*",
            "fieldrig run *-partial-* (hardware): *",
            "*ghost unavailable (infrastructure): gateway ghost (root@10.213.0.99:22): cannot*",
        ]
    )
    events = read_jsonl(only_run_dir(pytester.path) / "events.jsonl")
    assert [(e["gateway"], e["kind"]) for e in events] == [("ghost", "health_check_failed")]


def test_killed_run_keeps_its_records(pytester: pytest.Pytester, lab: VirtualLab) -> None:
    marker = pytester.path / "recorded"
    pytester.makepyfile(
        test_slow=f"""
        import pathlib, time
        def test_records_then_hangs(gateway, results):
            if gateway.name != "gw1":
                return
            for i in range(5):
                results.record("probe.count", i, "count")
            pathlib.Path({str(marker)!r}).touch()
            time.sleep(120)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "--rig=virtual", "-p", "no:cacheprovider"],
        cwd=pytester.path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), "the run never got to record"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    run_dir = only_run_dir(pytester.path)
    records = read_jsonl(run_dir / "measurements.jsonl")
    assert [r["value"] for r in records] == [0, 1, 2, 3, 4]
    assert json.loads((run_dir / "run.json").read_text())["status"] == "running"
    assert lab.status().healthy


def test_fault_of_a_sigkilled_run_is_cleared_by_the_next(
    pytester: pytest.Pytester, lab: VirtualLab
) -> None:
    """pytest SIGKILLed while gw1's backhaul is partitioned: the partition outlives it (no
    exit path runs), and the next session finds it by its owner mark and removes it first."""
    marker = pytester.path / "partitioned"
    pytester.makepyfile(
        test_cut=f"""
        import pathlib, time
        from bench.faults import Partition

        def test_partition_then_hang(gateway, rig):
            if gateway.name != "gw1":
                return
            Partition(rig.backhaul("gw1"), protect=rig.fault_protection()).apply()
            pathlib.Path({str(marker)!r}).touch()
            time.sleep(120)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "--rig=virtual", "-p", "no:cacheprovider", "test_cut.py"],
        cwd=pytester.path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), "the run never partitioned gw1"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    left = find_stale(["fr-virtual-gw1"])
    assert [s.kind for s in left] == ["partition"], left
    pytester.makepyfile(test_next="def test_x(gateway):\n    assert gateway.run(['true']).ok\n")
    result = pytester.runpytest_subprocess("--rig=virtual", "--gateway=gw1", "test_next.py")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*removed a stale fault left by a killed run*partition*"])
    assert find_stale(["fr-virtual-gw1"]) == []


def test_plugin_brings_its_own_lab_up_and_down(pytester: pytest.Pytester) -> None:
    rig = small_rig(pytester.path, "tplug", 43)
    own = VirtualLab(load_rig(rig))
    pytester.makepyfile(
        test_one="import pytest\n\n"
        "def test_x(gateway):\n    assert gateway.run(['true']).ok\n\n"
        "@pytest.mark.needs('radio')\n"
        "def test_radio(gateway):\n    raise AssertionError('must be skipped: no radio')\n"
    )
    try:
        result = pytester.runpytest_subprocess(f"--rig={rig}", "-rs")
        result.assert_outcomes(passed=2, skipped=2)
        result.stdout.fnmatch_lines(
            [
                "fieldrig: virtual lab 'tplug' up",
                "fieldrig: virtual lab 'tplug' down",
                "*g0 has no radio capability in the rig*",
            ]
        )
        assert leftovers(own) == []
        kept = pytester.runpytest_subprocess(f"--rig={rig}", "--keep-lab")
        kept.assert_outcomes(passed=2, skipped=2)
        assert own.status().healthy
    finally:
        own.down(purge=True)
    assert leftovers(own) == []


def test_radio_port_transcript_is_kept_with_the_run(
    pytester: pytest.Pytester, lab: VirtualLab
) -> None:
    """A rig's radio (here a real pty standing in for a USB dongle) opens through the session,
    and everything said on it lands in the run's serial/ transcript."""
    state = lab.plan.state_dir
    with PtyDevice(pytester.path) as dongle:
        rig = pytester.path / "radio.yaml"
        rig.write_text(
            textwrap.dedent(f"""\
            name: radio
            ssh_defaults:
              auth: {{identity_file: {state}/id_ed25519}}
              host_key: {{known_hosts: {state}/known_hosts}}
            gateways:
              - name: gw1
                board: rpi4
                ssh: {{host: 10.213.0.11}}
                radio: {{port: {dongle.path}, driver: skstack, dialect: bp35a1,
                         route_b: {{id_env: RB_ID, password_env: RB_PASSWORD}}}}
            """)
        )
        pytester.makepyfile(
            test_radio="""
            def test_version(rig, gateway):
                port = rig.radio_port(gateway.name)
                port.write_line("SKVER")
                assert port.expect(r"^EVER (\\S+)$", timeout=5).group(1) == "1.2.10"
            """
        )

        def answer() -> None:
            if dongle.read_line(timeout=30) == "SKVER":
                dongle.write_line("EVER 1.2.10")
                dongle.write_line("OK")

        responder = threading.Thread(target=answer)
        responder.start()
        result = pytester.runpytest_subprocess(f"--rig={rig}")
        responder.join()
    result.assert_outcomes(passed=1)
    transcript = (only_run_dir(pytester.path) / "serial" / "gw1.log").read_text()
    assert "TX b'SKVER\\r\\n'" in transcript
    assert "EVER 1.2.10" in transcript


def test_same_named_fixture_of_a_project_does_not_start_the_bench(
    pytester: pytest.Pytester,
) -> None:
    """A project's own fixture called `rig` must not bring up a lab or open a run."""
    pytester.makepyfile(
        test_own="""
        import pytest

        @pytest.fixture
        def rig():
            return "my own rig"

        def test_mine(rig):
            assert rig == "my own rig"
        """
    )
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=1)
    assert not (pytester.path / "reports").exists()
    assert "fieldrig run" not in result.stdout.str()


def test_session_powers_on_a_gateway_left_off(
    pytester: pytest.Pytester, lab: VirtualLab, virtual_rig: Rig
) -> None:
    """A board whose supply output a crashed run left off is powered on at session start,
    waited for while it boots, and tested like the others."""
    psu = open_psu("psu1", virtual_rig.instruments["psu1"])
    try:
        psu.output(3, False)
        assert lab.status().gateways[2].power == "off"
        pytester.makepyfile(test_one="def test_x(gateway):\n    assert gateway.run(['true']).ok\n")
        result = pytester.runpytest_subprocess("--rig=virtual", "--gateway=gw3")
        result.assert_outcomes(passed=1)
        assert psu.output_state(3) is True  # and its declared safe state ("on") is kept
    finally:
        psu.output(3, True)
        psu.close()
    ConnectedGateway(virtual_rig.gateway("gw3")).connect(deadline_s=30)
