"""`fieldrig report` built from run directories written through RunStore (and from a copy
of a real virtual-lab run when the checkout has one)."""

from __future__ import annotations

import gzip
import json
import math
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from bench.fleet.inventory import fingerprint
from bench.mesh.loss import ProbeRecord, summarize
from bench.report.build import ReportFiles, assemble, build_report
from bench.report.compare import Settings, compare_runs
from bench.report.index import build_index
from bench.report.load import load_run
from bench.results import RunStore
from bench.results.stats import summarize_latencies

REPO = Path(__file__).resolve().parents[1]
SCRIPT = "<script>alert(1)</script>"
SECRETS = ("hunter2", "abc123token", "s3cr3t-key")
PI = {
    "board_model": "Raspberry Pi 4 Model B Rev 1.5",
    "os": "Debian GNU/Linux 12 (bookworm)",
    "kernel": "6.1.0-rpi7",
    "arch": "aarch64",
    "libc": "glibc 2.36",
    "python": "3.11.2",
    "inference_runtime": {"name": "ai-edge-litert", "version": "2.3.0"},
}
INVENTORY = {
    "gw1": {**PI, "api_token": SECRETS[2]},
    "gw2": {**PI, "kernel": "6.6.20-rpi-drift"},  # differs from the other Pis
    "gw3": dict(PI),
    "gw4": {**PI, "board_model": "NVIDIA Jetson Orin Nano Developer Kit", "os": SCRIPT},
}
MODELS = (("meter_anomaly", "int8", 40.0), ("substation_cam", "int8", 400.0))
SECTIONS = (
    "Run",
    "Outcomes",
    "Inference latency",
    "Energy and power",
    "Mesh delivery",
    "Faults, rollouts and liveness",
    "Fleet drift",
    "Comparison with baseline",
    "Series and change points",
    "Missing and partial",
)


def _inventory(gateways: Sequence[str]) -> dict[str, dict[str, Any]]:
    out = {}
    for name in gateways:
        inv = {k: v for k, v in INVENTORY[name].items() if k != "api_token"}
        out[name] = {**INVENTORY[name], "hostname": name, "fingerprint": fingerprint(inv)}
    return out


def _record_latency(
    store: RunStore,
    rng: np.random.Generator,
    gateway: str,
    model: str,
    variant: str,
    base_us: float,
    scale: float,
) -> None:
    windows = [
        [int(ns) for ns in rng.lognormal(math.log(base_us * 1e3 * scale), 0.15, 300)]
        for _ in range(5)
    ]
    summary = summarize_latencies(windows)
    context = {
        "model": model,
        "variant": variant,
        "threads": 1,
        "delegate": None,
        "runtime": "ai-edge-litert",
        "runtime_version": "2.3.0",
    }
    for name in ("median_of_window_means", "p50", "p90", "p99", "mean", "std", "min", "max"):
        store.record(
            gateway=gateway,
            suite="inference",
            test="test_latency",
            metric=f"latency.{name}",
            value=getattr(summary, f"{name}_us"),
            unit="us",
            parameters=context,
        )
    store.record(
        gateway=gateway,
        suite="inference",
        test="test_latency",
        metric="latency.count",
        value=summary.count,
        unit="count",
        parameters=context,
    )
    raw = {
        "init_ns": 400_000,
        "first_inference_ns": 50_000,
        "windows": [{"latencies_ns": w} for w in windows],
    }
    path = store.run_dir / "inference" / f"{gateway}-{model}-{variant}-t1.json.gz"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(gzip.compress(json.dumps(raw).encode()))


def _probes(
    rng: np.random.Generator, first_seq: int, hops: int, n: int, delivery: float
) -> list[ProbeRecord]:
    out = []
    for i in range(n):
        lost = bool(rng.random() > delivery)
        rtt = None if lost else float(0.2 * hops * rng.uniform(0.9, 1.3))
        out.append(ProbeRecord(first_seq + i, f"fd00::{hops}:{i % 4}", hops, i * 10**8, rtt, lost))
    return out


def _record_summary(
    store: RunStore, gateway: str, test: str, prefix: str, records: list[ProbeRecord], **params: Any
) -> None:
    s = summarize(records)
    for name, unit, value in (
        ("sent", "count", s.sent),
        ("loss", "1", s.loss_ratio),
        ("loss_ci_low", "1", s.ci_low),
        ("loss_ci_high", "1", s.ci_high),
    ):
        extra = {"interval": s.interval} if name == "loss" else {}
        store.record(
            gateway=gateway,
            suite="mesh",
            test=test,
            metric=f"{prefix}.{name}",
            value=value,
            unit=unit,
            parameters={**extra, **params},
        )


def _record_mesh(store: RunStore, rng: np.random.Generator) -> None:
    seq = 100
    for hops, delivery in ((1, 0.97), (2, 0.9), (3, 0.8)):
        records = _probes(rng, seq, hops, 60, delivery)
        seq += 60
        for r in records:
            store.record(
                gateway="gw1",
                suite="mesh",
                test="test_delivery_by_hop_count",
                metric="mesh.probe.delivered",
                value=not r.lost,
                unit="1",
                parameters=r.to_row(),
            )
        _record_summary(
            store, "gw1", "test_delivery_by_hop_count", "mesh.delivery", records, hops=hops
        )
    for db, delivery in ((0.0, 0.97), (20.0, 0.6), (40.0, 0.05)):
        records = _probes(rng, seq, 1, 40, delivery)
        seq += 40
        for r in records:  # the suite records sweep probes without their attenuation
            store.record(
                gateway="gw1",
                suite="mesh",
                test="test_attenuation_sweep",
                metric="mesh.probe.delivered",
                value=not r.lost,
                unit="1",
                parameters=r.to_row(),
            )
        _record_summary(
            store, "gw1", "test_attenuation_sweep", "mesh.attenuation", records, attenuation_db=db
        )


def _event(store: RunStore, gateway: str | None, kind: str, payload: dict[str, Any]) -> None:
    store.record_event(gateway=gateway, kind=kind, message=json.dumps(payload))


def _record_events(store: RunStore) -> None:
    wall = "2026-11-27T10:00:{:02d}.000000Z"
    _event(
        store,
        "gw1",
        "fault_apply",
        {
            "t_s": 0.1,
            "wall": wall.format(2),
            "action": "apply",
            "kind": "partition",
            "target": "fr-virtual-gw1:wan0",
            "params": {},
            "backend": "nftables",
            "details": {},
            "message": None,
        },
    )
    _event(
        store,
        "gw1",
        "fault_remove",
        {
            "t_s": 6.0,
            "wall": wall.format(8),
            "action": "remove",
            "kind": "partition",
            "target": "fr-virtual-gw1:wan0",
            "params": {},
            "backend": "nftables",
            "details": {},
            "message": None,
        },
    )
    for second, state in ((1, "online"), (5, "offline"), (10, "online")):
        _event(
            store,
            "gw1",
            "liveness_verdict",
            {
                "gateway": "gw1",
                "state": state,
                "at": second,
                "wall": wall.format(second),
                "rule": "heartbeats",
                "evidence": {},
            },
        )
    for device, states in (
        ("gw1", ("QUEUED", "IN_PROGRESS", "SUCCEEDED")),
        ("gw2", ("QUEUED", "IN_PROGRESS", "FAILED")),
    ):
        before = None
        for i, state in enumerate(states):
            _event(
                store,
                None,
                "rollout_event",
                {
                    "seq": i,
                    "t_s": i * 3.0,
                    "wall": wall.format(3 + i * 3),
                    "kind": "state",
                    "device": device,
                    "from_state": before,
                    "to_state": state,
                    "attempt": 1,
                    "detail": "",
                    "data": {},
                },
            )
            before = state
    _event(
        store,
        None,
        "rollout_invariants",
        {
            "verdicts": [
                {"invariant": "committed_version", "checked": 2, "violations": []},
                {
                    "invariant": "rollback_is_failure",
                    "checked": 2,
                    "violations": ["gw2 rolled back and was reported SUCCEEDED"],
                },
            ]
        },
    )
    store.record_event(gateway="gw3", kind="health_check_failed", message="login: password=hunter2")


def make_run(
    root: Path,
    *,
    seed: int,
    slow: dict[str, float] | None = None,
    gateways: Sequence[str] = ("gw1", "gw2", "gw3", "gw4"),
    models: Sequence[tuple[str, str, float]] = MODELS,
    extras: bool = True,
    finish: bool = True,
) -> Path:
    """A run recorded through RunStore with sampled numbers; ``slow`` scales a model's
    latencies (e.g. {"substation_cam": 1.3})."""
    rng = np.random.default_rng(seed)
    store = RunStore.create(
        root,
        rig_name="virtual",
        rig_path=None,
        rig_sha256=None,
        virtual=True,
        argv=["pytest", "suites/", "--api-key", SECRETS[2]],
        repo_dir=REPO,
    )
    store.set_inventory(_inventory(gateways))
    for gateway in gateways:
        for model, variant, base_us in models:
            _record_latency(
                store, rng, gateway, model, variant, base_us, (slow or {}).get(model, 1.0)
            )
            store.record_outcome(
                test=f"suites/test_inference.py::test_latency[t1-{gateway}-{model}-{variant}]",
                gateway=gateway,
                outcome="passed",
                duration_s=1.0,
            )
    if extras:
        for gateway in gateways:
            params = {"model": "meter_anomaly", "variant": "int8", "threads": 1, "delegate": None}
            store.record(
                gateway=gateway,
                suite="power",
                test="test_energy_per_inference",
                metric="energy.per_inference",
                value=float(rng.normal(0.012, 0.0005)),
                unit="mJ",
                parameters=params,
            )
            store.record(
                gateway=gateway,
                suite="power",
                test="test_energy_per_inference",
                metric="energy.inferences_per_joule",
                value=float(rng.normal(85000, 900)),
                unit="inf/J",
                parameters=params,
            )
            store.record(
                gateway=gateway,
                suite="power",
                test="test_idle_power",
                metric="power.idle",
                value=float(rng.normal(2.7, 0.02)),
                unit="W",
                parameters={"meter": "psu1"},
            )
            store.record(
                gateway=gateway,
                suite="power",
                test="test_boot_time",
                metric="power.boot_to_ssh",
                value=float(rng.normal(3.2, 0.1)),
                unit="s",
            )
            failed = gateway == "gw4"  # the only Jetson: a minority of fingerprints
            store.record_outcome(
                test=f"suites/test_smoke.py::test_reachable[{gateway}]",
                gateway=gateway,
                outcome="failed" if failed else "passed",
                duration_s=0.5,
                message=f"AssertionError: {SCRIPT} token={SECRETS[1]}" if failed else "",
            )
        if "gw1" in gateways:
            _record_mesh(store, rng)
        _record_events(store)
        store.record(
            gateway=None,
            suite="smoke",
            test="test_clock_offset",
            metric="clock.offset",
            value=0.04,
            unit="ms",
            parameters={"samples": 32},
        )
    if finish:
        assert store.finish() == []
    return store.run_dir


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, ReportFiles]:
    """A baseline and a new run whose substation_cam is 1.3x slower, and their report."""
    root = tmp_path_factory.mktemp("runs") / "runs"
    base = make_run(root, seed=1)
    new = make_run(root, seed=2, slow={"substation_cam": 1.3})
    files = build_report(
        [new], baseline=base, out=root.parent / "report", runs_dir=root, progress=None
    )
    return base, new, files


def test_report_has_the_main_sections_and_escapes_device_text(
    pair: tuple[Path, Path, ReportFiles],
) -> None:
    text = pair[2].html.read_text()
    for heading in SECTIONS:
        assert f"<h2>{heading}</h2>" in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "<script" not in text.lower()
    assert "VIRTUAL LAB (tests the bench, not silicon)" in text
    assert re.search(r"<svg class=\"plot\"", text)
    assert "http://" not in text.replace("http://www.w3.org/2000/svg", "")  # nothing to fetch
    assert "https://" not in text


def test_secrets_never_appear_anywhere_in_the_output(pair: tuple[Path, Path, ReportFiles]) -> None:
    files = pair[2]
    for path in [files.html, files.summary, *files.data]:
        content = path.read_bytes()
        for secret in SECRETS:
            assert secret.encode() not in content, f"{secret} leaked into {path.name}"
    assert "[redacted]" in files.html.read_text()


def test_slowed_model_is_a_regression_and_nothing_else_is(
    pair: tuple[Path, Path, ReportFiles],
) -> None:
    base, new = load_run(pair[0]), load_run(pair[1])
    comparisons = compare_runs(base, new, Settings())
    flagged = {
        (c.key.metric, c.key.gateway, c.key.param("model"))
        for c in comparisons
        if c.verdict == "regression"
    }
    expected = {("latency.per_inference", g, "substation_cam") for g in INVENTORY}
    assert flagged == expected
    for c in comparisons:
        if c.key.metric == "latency.per_inference" and c.key.param("model") == "substation_cam":
            assert c.p is not None and c.p < 0.002
            assert (
                c.ci_low is not None
                and c.ci_low > 1.2
                and c.ci_high is not None
                and c.ci_high < 1.4
            )
        elif c.key.metric == "latency.per_inference":
            assert c.verdict == "unchanged", c
    # one summary value per run is shown, with the reason it cannot be tested
    energy = [c for c in comparisons if c.key.metric == "energy.per_inference"]
    assert energy and all(c.verdict == "not tested" and "per-window" in c.reason for c in energy)
    summary = pair[2].summary.read_text()
    assert "## Regressions (4)" in summary
    assert summary.count("| latency.per_inference |") == 4
    assert pair[2].regressions == 4


def test_summary_is_short_and_renders(pair: tuple[Path, Path, ReportFiles]) -> None:
    text = pair[2].summary.read_text()
    assert len(text.splitlines()) <= 60 and len(text) < 8000
    assert text.startswith("# fieldrig report ")
    assert "## Failures (1)" in text and "## Fleet drift" in text
    assert SCRIPT not in text and "&lt;script&gt;" in text
    tables = [line for line in text.splitlines() if line.startswith("|")]
    assert tables and len({line.count("|") - line.count("\\|") for line in tables}) == 1
    assert re.fullmatch(r"(\|---)+\|", tables[1])
    try:
        from markdown_it import MarkdownIt
    except ImportError:  # no Markdown library installed: the table syntax was checked above
        return
    rendered = MarkdownIt("commonmark").enable("table").render(text)
    assert "<table>" in rendered and "<h2>Regressions (4)</h2>" in rendered
    assert "<script>" not in rendered


def test_data_files_round_trip(pair: tuple[Path, Path, ReportFiles]) -> None:
    data = pair[2].out_dir / "data"
    names = sorted(p.stem for p in data.glob("*.csv"))
    assert {
        "latency",
        "latency_box",
        "latency_points",
        "energy",
        "power",
        "mesh_delivery",
        "mesh_attenuation",
        "timeline",
        "drift",
        "comparison",
        "outcomes",
    } <= set(names)
    for name in names:
        parquet = pd.read_parquet(data / f"{name}.parquet")
        csv = pd.read_csv(data / f"{name}.csv")
        assert list(parquet.columns) == list(csv.columns), name
        assert len(parquet) == len(csv), name
        for column in parquet.columns:
            if pd.api.types.is_numeric_dtype(parquet[column]) and not pd.api.types.is_bool_dtype(
                parquet[column]
            ):
                assert np.allclose(
                    parquet[column].astype(float), csv[column].astype(float), equal_nan=True
                ), (name, column)
    latency = pd.read_parquet(data / "latency.parquet")
    recorded = load_run(pair[1]).measurements
    p50 = recorded[recorded["metric"] == "latency.p50"]["value"].astype(float)
    assert sorted(latency["p50_us"]) == pytest.approx(sorted(p50))
    sweep = pd.read_csv(data / "mesh_attenuation.csv")
    assert list(sweep["attenuation_db"]) == [0, 20, 40]


def test_fleet_drift_and_minority_failure_are_named(pair: tuple[Path, Path, ReportFiles]) -> None:
    text = pair[2].html.read_text()
    assert "gw2 (Raspberry Pi 4 Model B Rev 1.5) differs from the other" in text
    assert "kernel 6.6.20-rpi-drift (others: 6.1.0-rpi7)" in text
    assert "gw1 (" not in text.split("differs from the other")[0][-40:]
    assert "test_reachable[*] fails only on a minority of device fingerprints (1 of 3" in text


def test_timeline_shows_faults_rollouts_liveness_and_invariants(
    pair: tuple[Path, Path, ReportFiles],
) -> None:
    data = pair[2].out_dir / "data"
    timeline = pd.read_csv(data / "timeline.csv")
    assert set(timeline["lane"]) >= {"fault", "liveness", "rollout", "event"}
    fault = timeline[timeline["lane"] == "fault"].iloc[0]
    assert fault["label"] == "partition" and fault["row"] == "gw1"
    rollout = timeline[(timeline["lane"] == "rollout") & (timeline["row"] == "gw2")]
    assert list(rollout["label"]) == ["QUEUED", "IN_PROGRESS", "FAILED"]
    invariants = pd.read_csv(data / "invariants.csv")
    assert dict(zip(invariants["invariant"], invariants["ok"], strict=True)) == {
        "committed_version": True,
        "rollback_is_failure": False,
    }


def test_partial_run_is_reported_with_what_is_missing(tmp_path: Path) -> None:
    run = make_run(
        tmp_path / "runs", seed=3, gateways=("gw1",), models=MODELS[:1], extras=False, finish=False
    )
    with (run / "measurements.jsonl").open("a") as f:
        f.write('{"run": "x", "metric": "latency.p5')  # killed mid-line
    (run / "inference" / "gw1-meter_anomaly-int8-t1.json.gz").unlink()
    files = build_report([run], out=tmp_path / "out", runs_dir=tmp_path / "runs", progress=None)
    html = files.html.read_text()
    summary = files.summary.read_text()
    assert "the run did not finish (status running, no end time)" in html
    assert "measurements.jsonl ends in a torn line" in html
    assert "raw latencies inference/gw1-meter_anomaly-int8-t1.json.gz missing" in html
    assert "suite mesh: not in this run" in html
    assert "## Missing" in summary and "did not finish" in summary
    latency = pd.read_csv(files.out_dir / "data" / "latency.csv")
    assert len(latency) == 1 and latency["raw_samples"][0] == "missing"


def test_series_of_runs_flags_the_change_point(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    dirs = [
        make_run(
            root,
            seed=10 + i,
            gateways=("gw1",),
            models=MODELS[:1],
            extras=False,
            slow={"meter_anomaly": 1.3 if i >= 3 else 1.0},
        )
        for i in range(6)
    ]
    report = assemble([load_run(d) for d in dirs])
    flagged = {t.key.metric: [c.index for c in t.changes] for t in report.trends}
    assert flagged["latency.per_inference"] == [3]
    assert flagged["latency.p50"] == [3]
    assert flagged["latency.count"] == []


def test_index_links_every_run_relatively(tmp_path: Path) -> None:
    root = tmp_path / "reports" / "runs"
    dirs = [
        make_run(root, seed=20 + i, gateways=("gw1",), models=MODELS[:1], extras=False)
        for i in range(3)
    ]
    build_report([dirs[-1]], runs_dir=root, progress=None)  # default out: reports/<run id>/
    index = build_index(root)
    assert index == tmp_path / "reports" / "index.html"
    text = index.read_text()
    links = re.findall(r'href="([^"]+)"', text)
    for run_dir in dirs:
        mine = [link for link in links if run_dir.name in link]
        assert mine, f"{run_dir.name} is not linked"
        assert all((index.parent / link).exists() for link in mine)
    assert f'href="{dirs[-1].name}/report.html"' in text
    assert all(not link.startswith(("/", "file:", "http")) for link in links)
    assert (index.parent / "index-data" / "trends.csv").exists()


def test_cli_report_fails_on_regression_and_shows_progress(
    pair: tuple[Path, Path, ReportFiles], tmp_path: Path
) -> None:
    base, new, _ = pair
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.cli",
            "report",
            str(new),
            "--baseline",
            str(base),
            "--out",
            str(tmp_path / "out"),
            "--runs-dir",
            str(new.parent),
            "--no-index",
            "--fail-on-regression",
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 1, result.stderr
    assert "4 regression(s), 1 failed test(s)" in result.stdout
    stages = [line for line in result.stderr.splitlines() if line.startswith("fieldrig report: ")]
    assert len(stages) >= 5 and any("comparing" in line for line in stages)
    bad = subprocess.run(
        [sys.executable, "-m", "bench.cli", "report", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2
    assert bad.stderr.startswith("fieldrig: error: ") and len(bad.stderr.splitlines()) == 1


REAL_RUN = REPO / "reports" / "runs" / "20261127T094322Z-virtual-ab22"


def _real_run() -> Path | None:
    runs = REPO / "reports" / "runs"
    if REAL_RUN.exists():
        return REAL_RUN
    found = sorted(p.parent for p in runs.glob("*/inference/*.json.gz")) if runs.exists() else []
    return found[-1] if found else None


def test_report_from_a_copy_of_a_real_virtual_lab_run(tmp_path: Path) -> None:
    source = _real_run()
    if source is None:
        pytest.skip("no real virtual-lab run with inference results in reports/runs")
    copy = tmp_path / "runs" / source.name
    shutil.copytree(source, copy)
    files = build_report([copy], out=tmp_path / "out", runs_dir=copy.parent, progress=None)
    text = files.html.read_text()
    for heading in SECTIONS:
        assert f"<h2>{heading}</h2>" in text
    latency = pd.read_csv(files.out_dir / "data" / "latency.csv")
    assert len(latency) > 0 and not (latency["raw_samples"] == "missing").any()
    box = pd.read_csv(files.out_dir / "data" / "latency_box.csv")
    recorded = load_run(copy).measurements
    p50 = recorded[recorded["metric"] == "latency.p50"]
    # the quantiles over every raw sample agree with what the suite recorded
    assert sorted(box["p50"]) == pytest.approx(sorted(p50["value"].astype(float)), rel=1e-6)


def test_sweep_probes_take_the_attenuation_of_their_summary(
    pair: tuple[Path, Path, ReportFiles],
) -> None:
    run = load_run(pair[1])
    sweep = {
        key.param("attenuation_db"): samples.count
        for key, samples in run.samples.items()
        if key.test == "test_attenuation_sweep" and key.metric == "mesh.probe.delivered"
    }
    assert sweep == {"0": 40, "20": 40, "40": 40}
