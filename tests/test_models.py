"""models/: the manifest contract, the committed files, and their quality re-measured here.

Runs in the project's environment (numpy, pyyaml, ai-edge-litert; no TensorFlow). The
evaluation below is written from the manifest's contract, independently of models/build.py,
so a runner implemented from the same contract gets the same numbers.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import yaml
from ai_edge_litert.interpreter import Interpreter

MODELS = Path(__file__).resolve().parent.parent / "models"
MANIFEST = MODELS / "manifest.yaml"

ENTRY_KEYS = {"name", "variant", "file", "sha256", "task", "eval", "inputs", "outputs", "quality"}
TENSOR_KEYS = {"name", "shape", "dtype", "quantization"}
METRIC = {"anomaly": "auc", "classification": "accuracy"}
FLOAT_FLOOR = {"auc": 0.9, "accuracy": 0.85}


def _load_verify() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fieldrig_models_verify", MODELS / "verify.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _manifest() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(MANIFEST.read_text())
    return data


ENTRIES = _manifest()["models"]
IDS = [f"{m['name']}-{m['variant']}" for m in ENTRIES]
INT8 = [m for m in ENTRIES if m["variant"] == "int8"]


def _eval_set(entry: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    with np.load(MODELS / entry["eval"], allow_pickle=False) as data:
        assert sorted(data.files) == ["x", "y"]
        return data["x"], data["y"]


def _interpreter(entry: dict[str, Any]) -> Interpreter:
    interp = Interpreter(model_path=str(MODELS / entry["file"]), num_threads=1)
    interp.allocate_tensors()
    return interp


def _measure(entry: dict[str, Any]) -> float:
    """The manifest's quality metric, measured on the .tflite with one invoke per sample."""
    x, y = _eval_set(entry)
    interp = _interpreter(entry)
    (inp,), (out,) = interp.get_input_details(), interp.get_output_details()
    in_q, out_q = entry["inputs"][0]["quantization"], entry["outputs"][0]["quantization"]
    results = []
    for sample in x:
        batch = sample[None]
        if in_q is not None:
            q = np.round(batch / in_q["scale"] + in_q["zero_point"])
            batch = np.clip(q, -128, 127).astype(np.int8)
        interp.set_tensor(inp["index"], batch)
        interp.invoke()
        result = interp.get_tensor(out["index"])[0].astype(np.float64)
        if out_q is not None:
            result = (result - out_q["zero_point"]) * out_q["scale"]
        results.append(result)
    outputs = np.stack(results)
    if entry["quality"]["metric"] == "accuracy":
        return float(np.mean(np.argmax(outputs, axis=1) == y))
    score = np.mean((outputs - x.astype(np.float64)) ** 2, axis=tuple(range(1, x.ndim)))
    return _auc(score, y)


def _auc(score: np.ndarray, label: np.ndarray) -> float:
    """ROC AUC as the probability that an anomaly outscores a normal window (ties count 1/2)."""
    pos, neg = score[label == 1], score[label == 0]
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def test_auc_helper_on_known_cases() -> None:
    assert _auc(np.array([0.1, 0.2, 0.9, 0.8]), np.array([0, 0, 1, 1])) == 1.0
    assert _auc(np.array([0.9, 0.8, 0.1, 0.2]), np.array([0, 0, 1, 1])) == 0.0
    assert _auc(np.array([0.5, 0.5, 0.5, 0.5]), np.array([0, 1, 0, 1])) == 0.5
    assert _auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75


def test_manifest_is_well_formed() -> None:
    manifest = _manifest()
    assert set(manifest) == {"format", "models"}
    assert manifest["format"] == 1
    seen = set()
    for m in manifest["models"]:
        expected = ENTRY_KEYS | ({"classes"} if m.get("task") == "classification" else set())
        assert set(m) == expected, m.get("file")
        assert (m["name"], m["variant"]) not in seen
        seen.add((m["name"], m["variant"]))
        assert m["variant"] in ("float32", "int8")
        assert m["file"] == f"{m['name']}_{m['variant']}.tflite"
        assert m["eval"] == f"eval/{m['name']}.npz"
        assert len(m["sha256"]) == 64 and int(m["sha256"], 16) >= 0
        assert m["task"] in METRIC
        quality = m["quality"]
        assert set(quality) == {"metric", "value", "tolerance"}
        assert quality["metric"] == METRIC[m["task"]]
        assert 0.0 <= quality["value"] <= 1.0
        assert 0.0 < quality["tolerance"] <= 0.05
        if m["task"] == "classification":
            assert m["classes"] and len(set(m["classes"])) == len(m["classes"])
            assert all(isinstance(c, str) for c in m["classes"])
        for tensor in m["inputs"] + m["outputs"]:
            assert set(tensor) == TENSOR_KEYS
            assert isinstance(tensor["name"], str) and tensor["name"]
            assert tensor["shape"][0] == 1 and all(isinstance(d, int) for d in tensor["shape"])
            assert tensor["dtype"] == m["variant"]
            q = tensor["quantization"]
            if m["variant"] == "float32":
                assert q is None
            else:
                assert set(q) == {"scale", "zero_point"}
                assert isinstance(q["scale"], float) and q["scale"] > 0
                assert isinstance(q["zero_point"], int) and -128 <= q["zero_point"] <= 127
        assert len(m["inputs"]) == 1 and len(m["outputs"]) == 1
    names = {name for name, _ in seen}
    assert names == {"meter_anomaly", "substation_cam"}
    assert seen == {(n, v) for n in names for v in ("float32", "int8")}


def test_files_exist_with_their_sha256() -> None:
    assert _load_verify().verify(MANIFEST) == []
    for m in ENTRIES:
        assert (MODELS / m["file"]).stat().st_size < 1_000_000, m["file"]
        assert (MODELS / m["eval"]).stat().st_size < 1_500_000, m["eval"]


def test_verify_script_passes_and_catches_a_changed_model(tmp_path: Path) -> None:
    ok = subprocess.run(
        [sys.executable, str(MODELS / "verify.py")], capture_output=True, text=True, check=False
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "OK" in ok.stdout

    copy = tmp_path / "models"
    shutil.copytree(MODELS, copy, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    victim = copy / ENTRIES[0]["file"]
    victim.write_bytes(victim.read_bytes()[:-1] + b"\x00")
    (copy / ENTRIES[-1]["file"]).unlink()
    bad = subprocess.run(
        [sys.executable, str(MODELS / "verify.py"), str(copy / "manifest.yaml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 1
    assert f"{ENTRIES[0]['file']} has sha256" in bad.stdout
    assert f"{ENTRIES[-1]['file']} is missing" in bad.stdout


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_eval_set_matches_the_declared_input(entry: dict[str, Any]) -> None:
    x, y = _eval_set(entry)
    assert x.dtype == np.float32 and y.dtype == np.int64
    assert list(x.shape[1:]) == entry["inputs"][0]["shape"][1:]
    assert y.shape == (len(x),) and 200 <= len(x) <= 400
    assert np.isfinite(x).all()
    if entry["task"] == "classification":
        assert set(np.unique(y)) == set(range(len(entry["classes"])))
    else:
        assert set(np.unique(y)) == {0, 1}


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_tflite_tensors_match_the_manifest(entry: dict[str, Any]) -> None:
    interp = _interpreter(entry)
    for declared, actual in (
        (entry["inputs"], interp.get_input_details()),
        (entry["outputs"], interp.get_output_details()),
    ):
        assert len(declared) == len(actual)
        for d, a in zip(declared, actual, strict=True):
            assert d["name"] == a["name"]
            assert d["shape"] == [int(s) for s in a["shape"]]
            assert d["dtype"] == np.dtype(a["dtype"]).name
            scale, zero_point = a["quantization"]
            if d["quantization"] is None:
                assert scale == 0.0 and zero_point == 0
            else:
                assert np.float32(d["quantization"]["scale"]) == np.float32(scale)
                assert d["quantization"]["zero_point"] == zero_point


@pytest.mark.parametrize("entry", INT8, ids=[m["name"] for m in INT8])
def test_int8_models_are_full_integer(entry: dict[str, Any]) -> None:
    interp = _interpreter(entry)
    for detail in interp.get_input_details() + interp.get_output_details():
        assert detail["dtype"] == np.int8
        assert detail["quantization"][0] > 0
    # what an Edge TPU compiler needs: no float tensor anywhere (int32 holds the biases)
    dtypes = {np.dtype(t["dtype"]).name for t in interp.get_tensor_details()}
    assert dtypes <= {"int8", "int32"}, dtypes


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_quality_reproduces_on_the_interpreter(entry: dict[str, Any]) -> None:
    measured = _measure(entry)
    quality = entry["quality"]
    assert abs(measured - quality["value"]) <= 1e-6, (measured, quality)
    if entry["variant"] == "float32":
        assert measured >= FLOAT_FLOOR[quality["metric"]]


@pytest.mark.parametrize("name", ["meter_anomaly", "substation_cam"])
def test_int8_keeps_the_float_quality(name: str) -> None:
    by_variant = {m["variant"]: m["quality"] for m in ENTRIES if m["name"] == name}
    assert by_variant["int8"]["value"] >= by_variant["float32"]["value"] - 0.02
