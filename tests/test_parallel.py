"""One session per rig on a host, and ``pytest -n N`` sharing one run across workers.

Builds its own lab "tpar" (octet 44, three gateways) and runs real pytest subprocesses with
pytest-xdist against it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.lab.virtual import VirtualLab
from bench.locks import RigBusy, lock_dir, take_rig
from bench.results.store import read_jsonl
from bench.rig import load_rig
from tests.test_lab import leftovers, small_rig

HOLD = textwrap.dedent("""\
    import sys, time
    from bench.locks import take_rig
    lock = take_rig(sys.argv[1])
    print("held", flush=True)
    time.sleep(60)
""")

SUITE = textwrap.dedent("""\
    import json, os, time
    from pathlib import Path

    import pytest

    LOG = Path(os.environ["PAR_LOG"])


    def _log(test, gateway, start):
        line = {"test": test, "gateway": gateway, "start": start, "end": time.time(),
                "worker": os.environ.get("PYTEST_XDIST_WORKER", "serial"), "pid": os.getpid()}
        with LOG.open("a") as f:
            f.write(json.dumps(line) + "\\n")


    @pytest.mark.parametrize("step", range(3))
    def test_on_gateway(gateway, results, step):
        start = time.time()
        name = gateway.run(["hostname"]).text.strip()
        time.sleep(0.4)
        results.record("par.hostname_matches", name == gateway.name, "1")
        _log("gateway", gateway.name, start)
        assert name == gateway.name


    def test_whole_fleet(rig, gateways, results):
        start = time.time()
        names = sorted(gw.run(["hostname"]).text.strip() for gw in gateways)
        rig.progress(f"fleet of {len(names)} checked")
        time.sleep(0.4)
        results.record("par.fleet_size", len(names), "count")
        _log("fleet", None, start)
        assert names == sorted(gw.name for gw in gateways)
""")


@pytest.fixture(scope="module")
def rig_path(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = small_rig(tmp_path_factory.mktemp("tpar"), "tpar", 44, gateways=3)
    yield path
    lab = VirtualLab(load_rig(path))
    lab.down(purge=True)
    assert leftovers(lab) == []


def test_a_second_session_on_a_rig_is_refused_until_the_first_dies(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, "tlock"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(RigBusy) as busy:
            take_rig("tlock")
        message = str(busy.value)
        assert f"pid {holder.pid}" in message and "\n" not in message
        take_rig("tother").release()  # another rig is free
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    take_rig("tlock").release()  # the kernel dropped the dead holder's lock


def _pytest(args: list[str], tmp_path: Path, log: Path) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"PAR_LOG": str(log)}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def test_xdist_workers_share_one_run_and_never_overlap_the_fleet(
    rig_path: Path, tmp_path: Path
) -> None:
    (tmp_path / "test_par.py").write_text(SUITE)
    log, runs = tmp_path / "log.jsonl", tmp_path / "runs"
    locks_before = set(lock_dir().glob("xdist-*.lock"))
    result = _pytest(
        ["test_par.py", f"--rig={rig_path}", f"--runs-dir={runs}", "-n", "3"], tmp_path, log
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    run_dirs = [p.parent for p in runs.glob("*/run.json")]
    assert len(run_dirs) == 1, run_dirs  # one run for all workers
    run_dir = run_dirs[0]
    assert f"fieldrig run {run_dir.name}" in result.stdout
    assert json.loads((run_dir / "run.json").read_text())["status"] == "complete"
    outcomes = read_jsonl(run_dir / "outcomes.jsonl")
    assert len(outcomes) == 10 and {o["outcome"] for o in outcomes} == {"passed"}
    assert len(read_jsonl(run_dir / "measurements.jsonl")) == 10
    assert (run_dir / "measurements.parquet").is_file()

    entries = read_jsonl(log)
    by_gateway: dict[str, set[str]] = {}
    for e in entries:
        if e["gateway"]:
            by_gateway.setdefault(e["gateway"], set()).add(e["worker"])
    assert sorted(by_gateway) == ["g0", "g1", "g2"]
    assert all(len(workers) == 1 for workers in by_gateway.values()), by_gateway
    assert len({e["worker"] for e in entries}) >= 2, entries  # it did run in parallel
    fleet = next(e for e in entries if e["test"] == "fleet")
    for e in entries:
        if e["test"] == "gateway":
            assert e["end"] <= fleet["start"] or e["start"] >= fleet["end"], (e, fleet)
    assert set(lock_dir().glob("xdist-*.lock")) <= locks_before  # the run's locks removed
    lab = VirtualLab(load_rig(rig_path))
    assert leftovers(lab) == []  # the leader took the lab down after every worker let go


def test_pytest_refuses_a_second_session_on_the_same_rig(rig_path: Path, tmp_path: Path) -> None:
    (tmp_path / "test_par.py").write_text(SUITE)
    rig = load_rig(rig_path)
    lock = take_rig(rig.name)
    try:
        result = _pytest(["test_par.py", f"--rig={rig_path}"], tmp_path, tmp_path / "log")
    finally:
        lock.release()
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, result.stdout + result.stderr
    lines = [ln for ln in result.stderr.splitlines() if "in use by another session" in ln]
    assert len(lines) == 1 and f"pid {os.getpid()}" in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert leftovers(VirtualLab(rig)) == []  # refused before touching the lab
    again = _pytest(["test_par.py", f"--rig={rig_path}", "-k", "fleet"], tmp_path, tmp_path / "l")
    assert again.returncode == 0, again.stdout[-2000:]  # free once the holder let go
    assert "fieldrig: fleet of 3 checked" in again.stdout  # progress reaches the terminal
