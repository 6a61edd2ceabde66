"""Kill tests: SIGKILL a real `pytest suites/...` run at a chosen moment (during a link
fault, during a power-off, during a rollout), then `fieldrig lab doctor --fix` must find and
remove what it left, a second doctor run must be clean, no supply output or attenuator may
stay outside its safe state, and the next run must start clean and pass.

Everything runs against a scratch copy of rigs/virtual.yaml: lab "tkill" (10.213.47.0/24,
10.214.47.0/24, supply 127.0.0.1:5047, attenuator 127.0.0.1:5048). CI runs one kill per
moment; ``FIELDRIG_KILLS=20 pytest tests/test_kill.py -k random`` runs 20 kills at random
moments (``FIELDRIG_KILL_SEED`` picks the sequence).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bench.faults import find_stale
from bench.faults.kinds import TABLE_PREFIX
from bench.instruments.registry import open_attenuator, open_supply
from bench.lab import system
from bench.lab.virtual import VirtualLab
from bench.rig import Rig, load_rig
from tests.test_lab import leftovers

REPO = Path(__file__).resolve().parents[1]
LAB_ID = "tkill"
STATE_DIR = Path("/var/lib/fieldrig/tkill")
REPLACE = {
    "name: virtual": "name: tkill",
    "/var/lib/fieldrig/virtual": str(STATE_DIR),
    "10.213.0.0/24": "10.213.47.0/24",
    "10.214.0.0/24": "10.214.47.0/24",
    "lab_id: virtual": "lab_id: tkill",
    "fr-virtual-": "fr-tkill-",
    "127.0.0.1::5025": "127.0.0.1::5047",
    "127.0.0.1::5026": "127.0.0.1::5048",
}
TRIGGER_TIMEOUT_S = 120.0


def scratch_rig(directory: Path) -> Path:
    """A copy of the shipped virtual rig as lab "tkill" (its own ids, subnets and ports)."""
    text = (REPO / "rigs" / "virtual.yaml").read_text()
    for old, new in REPLACE.items():
        assert old in text, f"rigs/virtual.yaml no longer contains {old!r}"
        text = text.replace(old, new)
    path = directory / "tkill.yaml"
    path.write_text(text)
    return path


def pytest_argv(rig_path: Path, runs_dir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "pytest", *args, f"--rig={rig_path}",
            f"--runs-dir={runs_dir}", "-p", "no:cacheprovider", "-q"]  # fmt: skip


def doctor(rig_path: Path, *flags: str) -> tuple[int, dict[str, Any]]:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.cli", "lab", "doctor", f"--rig={rig_path}", "--json",
         *flags],
        cwd=REPO, capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert proc.stdout.strip(), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def fault_tables(namespace: str) -> list[str]:
    out = system.run(["ip", "netns", "exec", namespace, "nft", "list", "tables"], check=False)
    return [line.split()[-1] for line in out.splitlines() if TABLE_PREFIX in line]


def latest_events(runs_dir: Path) -> list[dict[str, object]]:
    events = []
    for path in runs_dir.glob("*/events.jsonl"):
        for line in path.read_text().splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                continue  # a torn last line
    return events


@dataclass(frozen=True)
class Moment:
    """Where to kill: the suite selection, the condition that says the moment has come,
    whether the lab is up by hand (else the killed run owns it) and what doctor must find."""

    name: str
    args: tuple[str, ...]
    trigger: Callable[[Path], bool]
    lab_by_hand: bool
    expect: frozenset[str]


def _in_fault(runs_dir: Path) -> bool:
    return bool(fault_tables("fr-tkill-gw1")) if "fr-tkill-gw1" in system.netns_list() else False


def _powered_off(runs_dir: Path) -> bool:
    path = STATE_DIR / "power" / "gw1"
    return path.exists() and path.read_text().strip() == "off"


def _in_rollout(runs_dir: Path) -> bool:
    return any(e.get("kind") == "rollout" for e in latest_events(runs_dir))


MOMENTS = {
    "fault": Moment("fault", ("suites/test_liveness.py", "-k", "partition", "--gateway=gw1"),
                    _in_fault, False, frozenset({"stale-fault", "lab"})),
    "power": Moment("power", ("suites/test_power.py", "-k", "boot_time", "--gateway=gw1"),
                    _powered_off, True, frozenset({"instrument"})),
    "rollout": Moment("rollout", ("suites/test_rollback.py", "-k", "health_check",
                                  "--gateway=gw1", "--gateway=gw2"),
                      _in_rollout, True, frozenset({"helper-process"})),
}  # fmt: skip


@pytest.fixture(scope="module")
def rig_path(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The tkill rig; its lab is taken down and purged at the end, leaving nothing."""
    path = scratch_rig(tmp_path_factory.mktemp("tkill"))
    lab = VirtualLab(load_rig(path))
    lab.down()
    try:
        yield path
    finally:
        lab.down(purge=True)
    assert leftovers(lab) == []


def _assert_safe(rig: Rig) -> None:
    """Every supply output and attenuator channel of the rig in its declared safe state."""
    for name, instrument in rig.instruments.items():
        psu = open_supply(name, instrument)
        try:
            for channel, spec in instrument.channels.items():
                assert psu.output_state(channel) == (spec.safe_state == "on"), (name, channel)
        finally:
            psu.detach()
    for name, spec in rig.attenuators.items():
        attenuator = open_attenuator(name, spec)
        try:
            for channel, limits in spec.channels.items():
                assert attenuator.get_db(channel) == limits.safe_db, (name, channel)
        finally:
            attenuator.detach()


def kill_and_recover(
    rig_path: Path, moment: Moment, runs_dir: Path, rng: random.Random
) -> dict[str, Any]:
    """One kill at ``moment`` (plus a random 0-0.5 s), then doctor, then a clean next run."""
    rig = load_rig(rig_path)
    lab = VirtualLab(rig)
    if moment.lab_by_hand:
        lab.up()
    else:
        lab.down()
    killed_dir = runs_dir / "killed"
    argv = pytest_argv(rig_path, killed_dir, *moment.args)
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + TRIGGER_TIMEOUT_S
        while not moment.trigger(killed_dir):
            if proc.poll() is not None or time.monotonic() > deadline:
                output = proc.communicate(timeout=60)[0] if proc.poll() is not None else ""
                pytest.fail(f"{moment.name}: the moment never came (rc {proc.poll()}):\n"
                            f"{output[-3000:]}")  # fmt: skip
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.5))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)

    code, found = doctor(rig_path)
    kinds = {f["kind"] for f in found["findings"]}
    assert code == 1 and moment.expect <= kinds, json.dumps(found, indent=1)
    code, fixed = doctor(rig_path, "--fix")
    assert code == 0 and fixed["clean"] is True, json.dumps(fixed, indent=1)
    assert all(f["fixed"] for f in fixed["findings"]), fixed
    code, again = doctor(rig_path)
    assert code == 0 and again["findings"] == [], json.dumps(again, indent=1)

    spaces = [n for n in system.netns_list() if n.startswith(f"fr-{LAB_ID}-")]
    assert find_stale([None, *spaces]) == []
    if moment.lab_by_hand:
        assert lab.status().healthy
        _assert_safe(rig)
    else:
        assert spaces == [] and leftovers(lab) == []

    next_dir = runs_dir / "next"
    result = subprocess.run(
        pytest_argv(rig_path, next_dir, "suites/test_smoke.py", "-k", "reachable"),
        cwd=REPO, capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:]
    (run_dir,) = next_dir.iterdir()
    assert json.loads((run_dir / "run.json").read_text())["status"] == "complete"
    events = latest_events(next_dir)
    assert not [e for e in events if e["kind"] == "stale_fault_removed"], events
    return fixed


@pytest.mark.parametrize("name", list(MOMENTS))
def test_kill_then_doctor(rig_path: Path, tmp_path: Path, name: str) -> None:
    fixed = kill_and_recover(rig_path, MOMENTS[name], tmp_path, random.Random(name))
    assert fixed["findings"]


@pytest.mark.skipif(not os.environ.get("FIELDRIG_KILLS"), reason="set FIELDRIG_KILLS=N")
def test_random_kills(rig_path: Path, tmp_path: Path) -> None:
    """FIELDRIG_KILLS kills, each at a random moment of a random kind."""
    seed = int(os.environ.get("FIELDRIG_KILL_SEED", "1"))
    rng = random.Random(seed)
    for i in range(int(os.environ["FIELDRIG_KILLS"])):
        moment = MOMENTS[rng.choice(sorted(MOMENTS))]
        print(f"kill {i + 1}: {moment.name} (seed {seed})", flush=True)
        kill_and_recover(rig_path, moment, tmp_path / f"kill{i}", rng)
