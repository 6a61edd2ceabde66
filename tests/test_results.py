"""Run records on real files: round trips, parquet, threads, a SIGKILLed writer, git."""

from __future__ import annotations

import hashlib
import json
import math
import re
import signal
import subprocess
import sys
import textwrap
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import bench
from bench.results import RunStore, new_run_id
from bench.results.units import UNITS


def _store(root: Path, **kwargs: Any) -> RunStore:
    args: dict[str, Any] = {
        "rig_name": "virtual",
        "rig_path": None,
        "rig_sha256": None,
        "virtual": True,
        "argv": ["pytest", "suites/"],
        "repo_dir": root,
    }
    args.update(kwargs)
    return RunStore.create(root / "runs", **args)


def _strict_lines(path: Path) -> list[dict[str, Any]]:
    """Parse every line with NaN/Infinity rejected, as any JSON reader would."""

    def reject(name: str) -> None:
        raise AssertionError(f"non-JSON constant {name} in {path}")

    text = path.read_text(encoding="utf-8")
    assert text == "" or text.endswith("\n")
    return [json.loads(line, parse_constant=reject) for line in text.splitlines()]


def test_new_run_id_is_sortable_and_slugged() -> None:
    now = datetime(2026, 11, 27, 8, 23, 0, tzinfo=UTC)
    assert re.fullmatch(r"20261127T082300Z-virtual-[0-9a-f]{4}", new_run_id("virtual", now))
    assert re.fullmatch(r"20261127T082300Z-lab-1-[0-9a-f]{4}", new_run_id("Lab 1", now))
    assert re.fullmatch(r"\d{8}T\d{6}Z-rig-[0-9a-f]{4}", new_run_id("///"))


def test_records_round_trip(tmp_path: Path) -> None:
    store = _store(tmp_path)
    assert store.run_dir == tmp_path / "runs" / store.run_id
    made = [
        store.record(
            gateway="gw1",
            suite="inference",
            test="t::a",
            metric="latency.p50",
            value=1.25,
            unit="ms",
            parameters={"model": "mnv2", "threads": 4},
        ),
        store.record(
            gateway=None, suite="mesh", test="t::b", metric="probes", value=7, unit="count"
        ),
        store.record(
            gateway="gw2", suite="stack", test="t::c", metric="runtime", value="x", unit="1"
        ),
        store.record(
            gateway="gw2", suite="stack", test="t::c", metric="throttled", value=False, unit="1"
        ),
    ]
    store.record_outcome(test="t::a", gateway="gw1", outcome="passed", duration_s=0.5)
    store.record_outcome(
        test="t::b", gateway=None, outcome="failed", duration_s=1, message="assert 1 == 2\nmore"
    )
    store.record_event(gateway="gw1", kind="health_check_failed", message="ssh: timed out")
    store.set_inventory({"gw1": {"board": "rpi4", "kernel": "6.1"}})

    lines = _strict_lines(store.run_dir / "measurements.jsonl")
    assert lines == [m.to_dict() for m in made]
    assert set(lines[0]) == {
        *("run", "time", "gateway", "suite", "test", "metric", "value", "unit", "parameters"),
    }
    assert all(line["run"] == store.run_id for line in lines)
    assert lines[0]["time"].endswith("+00:00") and "." in lines[0]["time"]

    frame = store.measurements()
    assert len(frame) == 4
    assert list(frame["metric"]) == ["latency.p50", "probes", "runtime", "throttled"]
    assert list(frame["value"]) == [1.25, 7, "x", False]
    assert frame["gateway"][0] == "gw1" and pd.isna(frame["gateway"][1])
    assert frame["parameters"][0] == {"model": "mnv2", "threads": 4}
    assert str(frame["time"].dt.tz) == "UTC"

    outcomes = store.outcomes()
    assert list(outcomes["outcome"]) == ["passed", "failed"]
    assert list(outcomes["message"]) == ["", "assert 1 == 2"]
    assert list(outcomes["duration_s"]) == [0.5, 1.0]

    events = _strict_lines(store.run_dir / "events.jsonl")
    assert [(e["gateway"], e["kind"], e["message"]) for e in events] == [
        ("gw1", "health_check_failed", "ssh: timed out")
    ]
    inventory = json.loads((store.run_dir / "inventory.json").read_text())
    assert inventory == {"gw1": {"board": "rpi4", "kernel": "6.1"}}

    reopened = RunStore.open_existing(store.run_dir)
    assert reopened.run_id == store.run_id
    pd.testing.assert_frame_equal(reopened.measurements(), frame)
    with pytest.raises(RuntimeError, match="read-only"):
        reopened.record(gateway=None, suite="s", test="t", metric="m", value=1, unit="s")


def test_parquet_written_and_equal_to_jsonl(tmp_path: Path) -> None:
    store = _store(tmp_path)
    for i in range(20):
        store.record(
            gateway=f"gw{i % 3}",
            suite="inference",
            test=f"t::{i}",
            metric="latency.mean",
            value=i * 0.5 if i % 2 else i,
            unit="ms",
            parameters={"window": i},
        )
    store.record(gateway=None, suite="s", test="t", metric="runtime", value="tflite", unit="1")
    store.record(gateway=None, suite="s", test="t", metric="throttled", value=True, unit="1")
    store.record_outcome(test="t::0", gateway="gw0", outcome="xfailed", duration_s=0.1)
    store.record_outcome(test="t::1", gateway=None, outcome="skipped", duration_s=0.0)

    assert store.finish() == []
    jsonl = store.measurements()
    parquet = pd.read_parquet(store.run_dir / "measurements.parquet")
    assert len(parquet) == len(jsonl) == 22
    for column in ("run", "gateway", "suite", "test", "metric", "unit"):
        assert parquet[column].tolist() == jsonl[column].tolist(), column
    assert (parquet["time"] == jsonl["time"]).all()
    assert [json.loads(p) for p in parquet["parameters"]] == jsonl["parameters"].tolist()
    assert [json.loads(v) for v in parquet["value_json"]] == jsonl["value"].tolist()
    assert parquet["value"].tolist()[:20] == [float(v) for v in jsonl["value"][:20]]
    assert parquet["value"][20:].isna().all()  # str and bool values live in value_json

    outcomes = pd.read_parquet(store.run_dir / "outcomes.parquet")
    expected = store.outcomes()
    for column in ("run", "test", "gateway", "outcome", "duration_s", "message"):
        assert outcomes[column].tolist() == expected[column].tolist(), column
    assert (outcomes["time"] == expected["time"]).all()

    info = json.loads((store.run_dir / "run.json").read_text())
    assert info["status"] == "complete"
    assert datetime.fromisoformat(info["end"]) >= datetime.fromisoformat(info["start"])
    with pytest.raises(RuntimeError):
        store.record(gateway=None, suite="s", test="t", metric="m", value=1, unit="s")


def test_empty_run_finishes_with_empty_parquet(tmp_path: Path) -> None:
    store = _store(tmp_path)
    assert store.measurements().empty
    assert store.finish("interrupted") == []
    assert pd.read_parquet(store.run_dir / "measurements.parquet").empty
    assert store.run_info()["status"] == "interrupted"
    with pytest.raises(ValueError, match="unknown status"):
        _store(tmp_path).finish("done")


def test_parquet_failure_is_a_warning_and_keeps_jsonl(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.record(gateway=None, suite="s", test="t", metric="power", value=3.1, unit="W")
    (store.run_dir / "measurements.parquet").mkdir()  # os.replace onto a directory fails
    problems = store.finish()
    assert len(problems) == 1 and "measurements.parquet" in problems[0]
    assert (store.run_dir / "outcomes.parquet").is_file()
    assert RunStore.open_existing(store.run_dir).measurements()["value"].tolist() == [3.1]
    assert store.run_info()["status"] == "complete"
    assert not list(store.run_dir.glob(".*.tmp"))


def test_thread_safety(tmp_path: Path) -> None:
    store = _store(tmp_path)
    threads, per_thread = 8, 300
    start = threading.Barrier(threads)

    def work(n: int) -> None:
        start.wait()
        for i in range(per_thread):
            store.record(
                gateway=f"gw{n}",
                suite="load",
                test="t",
                metric="seq",
                value=i,
                unit="count",
                parameters={"thread": n, "pad": "x" * (i % 50) * 40},
            )

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    lines = _strict_lines(store.run_dir / "measurements.jsonl")
    assert len(lines) == threads * per_thread
    seen = {(line["parameters"]["thread"], line["value"]) for line in lines}
    assert seen == {(n, i) for n in range(threads) for i in range(per_thread)}
    assert len(store.measurements()) == threads * per_thread


_CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from bench.results import RunStore

    store = RunStore.create(
        Path(sys.argv[1]), rig_name="virtual", rig_path=None, rig_sha256=None, virtual=True
    )
    print("dir", store.run_dir, flush=True)
    for i in range(int(sys.argv[2])):
        store.record(gateway="gw1", suite="s", test="t", metric="latency",
                     value=float(i), unit="ms", parameters={"i": i})
        print("recorded", i, flush=True)
        time.sleep(0.002)
    time.sleep(120)
    """
)


def test_killed_run_keeps_every_recorded_measurement(tmp_path: Path) -> None:
    wanted = 100
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(tmp_path / "runs"), "100000"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        text=True,
    )
    watchdog = threading.Timer(60, proc.kill)
    watchdog.start()
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline().split(maxsplit=1)
        assert first[0] == "dir", first
        run_dir = Path(first[1].strip())
        confirmed: list[int] = []
        while len(confirmed) < wanted:
            line = proc.stdout.readline()
            assert line, "child exited before recording enough"
            confirmed.append(int(line.split()[1]))
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        watchdog.cancel()
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    assert confirmed == list(range(wanted))
    raw = (run_dir / "measurements.jsonl").read_text().splitlines()
    assert len(raw) >= wanted
    for line in raw:
        json.loads(line)
    frame = RunStore.open_existing(run_dir).measurements()
    assert set(range(wanted)) <= {int(v) for v in frame["value"]}
    assert RunStore.open_existing(run_dir).run_info()["status"] == "running"
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "running" and info["end"] is None


def test_torn_last_line_is_skipped(tmp_path: Path) -> None:
    store = _store(tmp_path)
    for i in range(3):
        store.record(gateway=None, suite="s", test="t", metric="m", value=i, unit="s")
    with (store.run_dir / "measurements.jsonl").open("a") as f:
        f.write(f'{{"run": "{store.run_id}", "time": "2026-11-27T08:2')
    with (store.run_dir / "outcomes.jsonl").open("a") as f:
        f.write('{"run": "x", "outc')
    reopened = RunStore.open_existing(store.run_dir)
    assert reopened.measurements()["value"].tolist() == [0, 1, 2]
    assert reopened.outcomes().empty


def test_corrupt_middle_line_is_skipped_with_a_warning(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.record(gateway=None, suite="s", test="t", metric="m", value=1, unit="s")
    with (store.run_dir / "measurements.jsonl").open("a") as f:
        f.write("garbage\n")
    store.record(gateway=None, suite="s", test="t", metric="m", value=2, unit="s")
    with pytest.warns(UserWarning, match=r"measurements.jsonl:2"):
        assert store.measurements()["value"].tolist() == [1, 2]


def test_unknown_unit_and_bad_metric_are_rejected(tmp_path: Path) -> None:
    store = _store(tmp_path)
    with pytest.raises(ValueError, match="unknown unit 'furlong'") as info:
        store.record(gateway=None, suite="s", test="t", metric="m", value=1, unit="furlong")
    assert all(repr(unit) in str(info.value) for unit in UNITS)
    for metric in ("Latency", "1st", "lat-ms", "", "lat ms", "_x"):
        with pytest.raises(ValueError, match=r"bad metric name .*\^\[a-z\]"):
            store.record(gateway=None, suite="s", test="t", metric=metric, value=1, unit="ms")
    with pytest.raises(ValueError, match="unknown outcome 'ok'"):
        store.record_outcome(test="t", gateway=None, outcome="ok", duration_s=0.1)
    with pytest.raises(ValueError, match="duration_s"):
        store.record_outcome(test="t", gateway=None, outcome="passed", duration_s=-1)
    with pytest.raises(ValueError, match="event kind"):
        store.record_event(gateway=None, kind="Health Check", message="x")
    with pytest.raises(ValueError, match="parameters"):
        store.record(
            gateway=None, suite="s", test="t", metric="m", value=1, unit="s", parameters={"o": {1}}
        )
    with pytest.raises(TypeError, match="value must be"):
        store.record(gateway=None, suite="s", test="t", metric="m", value=[1], unit="s")  # type: ignore[arg-type]
    assert (store.run_dir / "measurements.jsonl").read_text() == ""
    assert (store.run_dir / "outcomes.jsonl").read_text() == ""


def test_nonfinite_values_are_stored_as_null(tmp_path: Path) -> None:
    store = _store(tmp_path)
    params = {"window": 1}
    nan = store.record(
        gateway=None, suite="s", test="t", metric="m", value=math.nan, unit="J", parameters=params
    )
    inf = store.record(gateway=None, suite="s", test="t", metric="m", value=math.inf, unit="J")
    ninf = store.record(gateway=None, suite="s", test="t", metric="m", value=-math.inf, unit="dB")
    store.record(gateway=None, suite="s", test="t", metric="m", value=2.5, unit="J")
    assert params == {"window": 1}  # the caller's dict is not changed
    assert (nan.value, nan.parameters) == (None, {"window": 1, "nonfinite": "nan"})
    assert (inf.value, inf.parameters) == (None, {"nonfinite": "inf"})
    assert (ninf.value, ninf.parameters) == (None, {"nonfinite": "-inf"})

    lines = _strict_lines(store.run_dir / "measurements.jsonl")
    assert [line["value"] for line in lines] == [None, None, None, 2.5]

    values = store.measurements()["value"].tolist()
    assert math.isnan(values[0]) and values[1:] == [math.inf, -math.inf, 2.5]
    with pytest.raises(ValueError, match="parameters"):
        store.record(
            gateway=None,
            suite="s",
            test="t",
            metric="m",
            value=1,
            unit="J",
            parameters={"x": math.nan},
        )
    assert store.finish() == []
    parquet = pd.read_parquet(store.run_dir / "measurements.parquet")
    assert math.isnan(parquet["value"][0]) and parquet["value"].tolist()[1:] == values[1:]
    assert parquet["value_json"].tolist() == ["null", "null", "null", "2.5"]


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def test_run_json_in_a_git_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    repo = tmp_path / "repo"
    repo.mkdir()
    rig = repo / "lab1.yaml"
    rig.write_text("name: lab1\n")
    _git(repo, "init", "-q")
    _git(repo, "add", "lab1.yaml")
    _git(repo, "commit", "-q", "-m", "init")
    head = _git(repo, "rev-parse", "HEAD")

    store = RunStore.create(
        tmp_path / "runs",
        rig_name="lab1",
        rig_path=rig,
        rig_sha256=None,
        virtual=False,
        argv=["pytest", "suites/", "--rig=lab1"],
        repo_dir=repo,
    )
    info = json.loads((store.run_dir / "run.json").read_text())
    assert info == store.run_info()
    assert info["run_id"] == store.run_id
    assert re.fullmatch(r"\d{8}T\d{6}Z-lab1-[0-9a-f]{4}", store.run_id)
    assert info["rig_name"] == "lab1"
    assert info["rig_path"] == str(rig.resolve())
    assert info["rig_sha256"] == hashlib.sha256(rig.read_bytes()).hexdigest()
    assert info["virtual"] is False
    assert (info["git_commit"], info["git_dirty"]) == (head, False)
    assert info["fieldrig_version"] == bench.__version__
    assert info["python_version"] == ".".join(map(str, sys.version_info[:3]))
    assert info["platform"] and info["hostname"]
    assert datetime.fromisoformat(info["start"]).tzinfo is not None
    assert info["end"] is None
    assert info["argv"] == ["pytest", "suites/", "--rig=lab1"]
    assert info["status"] == "running"

    rig.write_text("name: lab1\nchanged: true\n")
    dirty = RunStore.create(
        tmp_path / "runs",
        rig_name="lab1",
        rig_path=rig,
        rig_sha256="given",
        virtual=False,
        repo_dir=repo,
    )
    assert (dirty.run_info()["git_commit"], dirty.run_info()["git_dirty"]) == (head, True)
    assert dirty.run_info()["rig_sha256"] == "given"
    assert dirty.run_info()["argv"] == sys.argv


def test_run_json_outside_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    plain = tmp_path / "plain"
    plain.mkdir()
    info = _store(tmp_path, repo_dir=plain).run_info()
    assert (info["git_commit"], info["git_dirty"]) == (None, None)

    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))  # git missing altogether
    info = _store(tmp_path, repo_dir=plain).run_info()
    assert (info["git_commit"], info["git_dirty"]) == (None, None)


def test_open_existing_rejects_a_non_run_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        RunStore.open_existing(tmp_path)
