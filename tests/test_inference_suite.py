"""The inference suite and its accuracy gate, against the virtual lab with the shipped models."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.gateway import ConnectedGateway
from bench.inference.manifest import ModelEntry, load_manifest
from bench.inference.quality import QualityGateFailed, check_quality
from bench.inference.runner import InferenceOptions, measure_accuracy
from bench.lab.virtual import VirtualLab

REPO = Path(__file__).resolve().parent.parent


def scramble_largest_weights(model: bytes) -> bytes:
    """The same model with its largest constant tensor shuffled: it loads, runs and is wrong
    (as after a bad training run or bit rot in a weights file)."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=model)
    interp.allocate_tensors()
    best: np.ndarray | None = None
    for detail in interp.get_tensor_details():
        try:
            tensor = interp.get_tensor(detail["index"])
        except ValueError:
            continue
        raw = tensor.tobytes()
        if (
            tensor.size >= 256
            and model.count(raw) == 1
            and (best is None or tensor.size > best.size)
        ):
            best = tensor.copy()
    assert best is not None, "no constant tensor found to scramble"
    raw = best.tobytes()
    shuffled = np.random.default_rng(0).permutation(best.reshape(-1)).tobytes()
    offset = model.index(raw)
    return model[:offset] + shuffled + model[offset + len(raw) :]


def classifier(variant: str) -> ModelEntry:
    return next(m for m in load_manifest() if m.task == "classification" and m.variant == variant)


@pytest.mark.parametrize("variant", ["float32", "int8"])
def test_accuracy_gate_passes_the_model_and_fails_a_broken_one(
    gw1: ConnectedGateway, tmp_path: Path, variant: str
) -> None:
    model = classifier(variant)
    good = measure_accuracy(gw1, model, InferenceOptions())
    assert check_quality(model, good) >= model.quality.floor
    broken_file = tmp_path / f"broken_{model.file.name}"
    broken_file.write_bytes(scramble_largest_weights(model.file.read_bytes()))
    broken = dataclasses.replace(
        model, file=broken_file, sha256=hashlib.sha256(broken_file.read_bytes()).hexdigest()
    )
    run = measure_accuracy(gw1, broken, InferenceOptions())
    with pytest.raises(QualityGateFailed) as info:
        check_quality(broken, run)
    assert f"{model.id} on gw1: accuracy" in str(info.value)
    assert "ai-edge-litert 2.3.0" in str(info.value)


def test_suite_records_latency_accuracy_and_benchmark_json(lab: VirtualLab, tmp_path: Path) -> None:
    """`pytest suites/test_inference.py` on one gateway, shortened, end to end."""
    bench_json = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "suites/test_inference.py", "--rig=virtual",
         "--gateway=gw3", "-k", "int8 and not tier", "--inference-windows=2",
         "--inference-min-secs=0.1", "--inference-min-count=20", f"--runs-dir={tmp_path / 'runs'}",
         f"--benchmark-json={bench_json}", "-p", "no:cacheprovider", "-q"],
        cwd=REPO, capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    int8_models = [m for m in load_manifest() if m.variant == "int8"]
    (run_dir,) = (tmp_path / "runs").iterdir()
    records = [
        json.loads(line) for line in (run_dir / "measurements.jsonl").read_text().splitlines()
    ]
    medians = [r for r in records if r["metric"] == "latency.median_of_window_means"]
    assert len(medians) == len(int8_models) * 2  # two thread counts
    for record in medians:
        params = record["parameters"]
        assert record["gateway"] == "gw3" and record["unit"] == "us" and record["value"] > 0
        assert params["runtime"] == "ai-edge-litert" and params["runtime_version"] == "2.3.0"
        assert params["delegate_requested"] == "libedgetpu.so.1"  # gw3 is tagged edgetpu
        assert params["delegate_fallback"] is True and params["delegate"] is None
        assert params["threads"] in (1, 2)
    qualities = [r for r in records if r["metric"].startswith("quality.")]
    assert len(qualities) == len(int8_models)
    assert list((run_dir / "inference").glob("gw3-*-t1.json.gz"))
    report = json.loads(bench_json.read_text())
    assert report["machine_info"]["fieldrig"]["devices"]["gw3"]["board_model"] == (
        "Freescale i.MX8MQ Phanbell"
    )
    entries = report["benchmarks"]
    assert len(entries) == len(int8_models) * 2
    for entry in entries:
        assert entry["extra_info"]["runtime"] == "ai-edge-litert"
        assert entry["extra_info"]["virtual"] is True
        assert entry["stats"]["rounds"] >= 2 * 20
        assert 0 < entry["stats"]["min"] <= entry["stats"]["median"] < 1.0  # seconds
