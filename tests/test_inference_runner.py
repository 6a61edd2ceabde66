"""The on-device runner on real virtual gateways with the real LiteRT interpreter."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.gateway import ConnectedGateway
from bench.inference.runner import (
    InferenceError,
    InferenceOptions,
    measure_latency,
    run_runner,
)
from bench.inference.runner_remote import PROBE_MODEL
from bench.lab.virtual import VirtualLab
from bench.rig import Rig

FAKES = Path(__file__).parent / "fake_runtimes"
QUICK = InferenceOptions(windows=3, min_secs=0.1, min_inferences=20)


@pytest.fixture
def unseen_model(tmp_path: Path) -> Path:
    """A model the runner has never seen and no manifest lists."""
    path = tmp_path / "never_seen.tflite"
    path.write_bytes(PROBE_MODEL)
    return path


@pytest.fixture
def gw3(lab: VirtualLab, virtual_rig: Rig) -> Iterator[ConnectedGateway]:
    gateway = ConnectedGateway(virtual_rig.gateway("gw3"))
    yield gateway
    gateway.close()


def test_latency_of_an_unseen_model(gw1: ConnectedGateway, unseen_model: Path) -> None:
    run = measure_latency(gw1, unseen_model, QUICK)
    raw = run.raw
    assert run.stack["runtime"] == "ai-edge-litert" and run.stack["runtime_version"] == "2.3.0"
    assert run.stack["threads"] == 1 and run.stack["delegate"] is None
    assert raw["model"]["inputs"][0]["shape"] == [1, 4]
    assert raw["init_ns"] > 0 and raw["first_inference_ns"] > 0
    assert raw["warmup"]["runs"] >= 1 and raw["warmup"]["ns"] >= 0.5e9
    assert len(raw["windows"]) == 3
    previous_end = 0
    for window in raw["windows"]:
        assert len(window["latencies_ns"]) >= 20
        assert window["end_mono_ns"] - window["start_mono_ns"] >= 0.1e9
        assert window["start_mono_ns"] >= previous_end
        assert window["end_wall_ns"] > window["start_wall_ns"]
        previous_end = window["end_mono_ns"]
    summary = run.summary
    assert summary is not None and summary.count == sum(len(w) for w in run.window_latencies_ns)
    assert 0 < summary.min_us <= summary.p50_us <= summary.p90_us <= summary.p99_us
    # every latency is an integer count of nanoseconds: 1 ns resolution, not LiteRT's 10 us
    assert all(isinstance(ns, int) for ns in run.window_latencies_ns[0])


def test_corrupt_and_truncated_models_are_named(
    gw1: ConnectedGateway, unseen_model: Path, tmp_path: Path
) -> None:
    truncated = tmp_path / "truncated.tflite"
    truncated.write_bytes(PROBE_MODEL[: len(PROBE_MODEL) // 2])
    with pytest.raises(InferenceError) as info:
        measure_latency(gw1, truncated, QUICK)
    assert info.value.kind == "model"
    assert str(info.value).startswith("gateway gw1, model truncated.tflite: ai-edge-litert 2.3.0")
    garbage = tmp_path / "garbage.tflite"
    garbage.write_bytes(b"PK\x03\x04 this is a zip, not a model")
    with pytest.raises(InferenceError, match=r"not a TFLite model.*truncated or corrupt"):
        measure_latency(gw1, garbage, QUICK)


def test_hash_mismatch_is_refused(gw1: ConnectedGateway, unseen_model: Path) -> None:
    with pytest.raises(InferenceError) as info:
        run_runner(gw1, unseen_model, label="probe", args=["--mode", "latency"],
                   expect_sha256="0" * 64, timeout=60)  # fmt: skip
    assert info.value.kind == "hash"
    assert "the manifest says 0000000000000000" in str(info.value)


def test_missing_delegate_fails_or_falls_back(gw3: ConnectedGateway, unseen_model: Path) -> None:
    strict = dataclasses.replace(QUICK, delegate="libedgetpu.so.1")
    with pytest.raises(InferenceError) as info:
        measure_latency(gw3, unseen_model, strict)
    assert info.value.kind == "delegate"
    assert "gateway gw3" in str(info.value) and "libedgetpu.so.1" in str(info.value)
    lenient = dataclasses.replace(strict, delegate_fallback="cpu")
    run = measure_latency(gw3, unseen_model, lenient)
    assert run.stack["delegate"] is None
    assert run.stack["delegate_requested"] == "libedgetpu.so.1"
    assert run.stack["delegate_fallback"] is True
    assert "did not load" in run.raw["delegate"]["error"]


def fake_path(gw: ConnectedGateway, *scenarios: str) -> str:
    """Upload fake runtime packages and return a PYTHONPATH that puts them first."""
    dirs = []
    for scenario in scenarios:
        for local in sorted((FAKES / scenario).rglob("*.py")):
            gw.put(local, f".cache/fieldrig-fakes/{local.relative_to(FAKES)}")
        dirs.append(f".cache/fieldrig-fakes/{scenario}")
    home = gw.run(["sh", "-c", "echo $HOME"]).text.strip()
    return ":".join(f"{home}/{d}" for d in dirs)


def test_runtime_fallback_order_and_numpy2_trap(gw1: ConnectedGateway, unseen_model: Path) -> None:
    path = fake_path(gw1, "broken_litert", "numpy2_tflite", "working_tensorflow")
    runner = ".cache/fieldrig/runner_remote.py"
    measure_latency(gw1, unseen_model, QUICK)  # deploys runner and model
    result = gw1.run(
        ["python3", runner, "--model", ".cache/fieldrig/never_seen.tflite", "--windows", "1",
         "--min-secs", "0.05"],
        env={"PYTHONPATH": path},
    )  # fmt: skip
    raw = json.loads(result.stdout)
    tried = raw["runtimes_tried"]
    assert [t["name"] for t in tried] == ["ai-edge-litert", "tflite-runtime", "tensorflow"]
    assert [t["ok"] for t in tried] == [False, False, True]
    assert "broken build" in tried[0]["error"]
    assert (
        tried[1]["error"].startswith("tflite-runtime 2.14.0 imports under numpy 2.")
        and "install ai-edge-litert" in tried[1]["error"]
    )
    assert raw["runtime"] == {"name": "tensorflow", "version": "2.21.0-fake"}


def test_no_usable_runtime_lists_every_reason(gw1: ConnectedGateway, unseen_model: Path) -> None:
    path = fake_path(gw1, "broken_litert", "numpy2_tflite")
    measure_latency(gw1, unseen_model, QUICK)
    result = gw1.run(
        ["python3", ".cache/fieldrig/runner_remote.py", "--model",
         ".cache/fieldrig/never_seen.tflite", "--runtime", "tflite-runtime"],
        env={"PYTHONPATH": path}, check=False,
    )  # fmt: skip
    assert result.exit_status == 2
    error = json.loads(result.stdout)["error"]
    assert error["kind"] == "runtime"
    assert "built for numpy 1.x" in error["message"]
    assert error["message"].endswith("install one: pip install ai-edge-litert")
