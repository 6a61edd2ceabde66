"""Inference: latency distributions and accuracy of every manifest model on every gateway.

Each run deploys the runner and the model over SFTP, measures on the board with the board's
own runtime, and records the distribution, the stack that produced it, and a pytest-benchmark
entry (so `--benchmark-json` / `--benchmark-compare` work across nights). Boards tagged
`edgetpu` ask for the Edge TPU delegate and record whether they fell back to the CPU.
"""

from __future__ import annotations

import gzip
import json
from typing import Any

import pytest

from bench.gateway import ConnectedGateway
from bench.inference.benchmark_feed import feed_benchmark
from bench.inference.manifest import ModelEntry, load_manifest
from bench.inference.quality import check_quality
from bench.inference.runner import InferenceOptions, measure_accuracy, measure_latency
from bench.plugin import Recorder
from bench.session import BenchSession

MODELS = load_manifest()
EDGETPU_DELEGATE = "libedgetpu.so.1"


def options_for(gateway: ConnectedGateway, config: pytest.Config, threads: int) -> InferenceOptions:
    edgetpu = "edgetpu" in gateway.spec.tags
    return InferenceOptions(
        threads=threads,
        delegate=EDGETPU_DELEGATE if edgetpu else None,
        delegate_fallback="cpu",
        windows=config.getoption("inference_windows"),
        min_secs=config.getoption("inference_min_secs"),
        min_inferences=config.getoption("inference_min_count"),
    )


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.id)
def test_latency(
    gateway: ConnectedGateway,
    model: ModelEntry,
    threads: int,
    rig: BenchSession,
    results: Recorder,
    benchmark: Any,
    request: pytest.FixtureRequest,
) -> None:
    run = measure_latency(gateway, model, options_for(gateway, request.config, threads))
    summary = run.summary
    assert summary is not None
    raw = run.raw
    context = {**run.stack, "model": model.name, "variant": model.variant}
    for name in ("median_of_window_means", "p50", "p90", "p99", "mean", "std", "min", "max"):
        results.record(f"latency.{name}", getattr(summary, f"{name}_us"), "us", **context)
    results.record("latency.count", summary.count, "count", **context)
    results.record("latency.init", raw["init_ns"] / 1e3, "us", **context)
    results.record("latency.first_inference", raw["first_inference_ns"] / 1e3, "us", **context)
    results.record("latency.throttled_windows", len(run.throttled_windows), "count", **context)
    raw_path = rig.store.run_dir / "inference" / f"{gateway.name}-{model.id}-t{threads}.json.gz"
    raw_path.parent.mkdir(parents=True, exist_ok=True)
    raw_path.write_bytes(gzip.compress(json.dumps(raw).encode()))
    feed_benchmark(
        benchmark,
        (ns for window in run.window_latencies_ns for ns in window),
        {**context, "gateway": gateway.name, "virtual": rig.virtual,
         "device_fingerprint": rig.inventory[gateway.name]["fingerprint"]},
    )  # fmt: skip
    assert summary.count >= len(run.window_latencies_ns) * request.config.getoption(
        "inference_min_count"
    )


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.id)
def test_accuracy(gateway: ConnectedGateway, model: ModelEntry, results: Recorder) -> None:
    """A fast wrong answer is a failure: quality on the evaluation set, on the board."""
    run = measure_accuracy(gateway, model, InferenceOptions(delegate_fallback="cpu"))
    accuracy = run.raw["accuracy"]
    results.record(
        f"quality.{accuracy['metric']}", accuracy["value"], "1",
        expected=model.quality.value, tolerance=model.quality.tolerance,
        samples=accuracy["samples"], **{**run.stack, "model": model.name,
                                        "variant": model.variant},
    )  # fmt: skip
    check_quality(model, run)


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.id)
@pytest.mark.parametrize("tier", ["edge", "cloud"])
def test_tier_latency(
    tier: str,
    model: ModelEntry,
    rig: BenchSession,
    results: Recorder,
    request: pytest.FixtureRequest,
) -> None:
    """The same runner on a compute tier of the virtual lab (``virtual.tiers``): this host's
    CPU in the tier's namespace stands for the edge / cloud server, labelled as such."""
    spec = rig.spec.virtual
    if spec is None or tier not in spec.tiers:
        pytest.skip(f"rig '{rig.spec.name}' has no {tier} tier (virtual.tiers.{tier})")
    from bench.lab.tier_host import TierHost

    options = InferenceOptions(
        threads=1,
        windows=request.config.getoption("inference_windows"),
        min_secs=request.config.getoption("inference_min_secs"),
        min_inferences=request.config.getoption("inference_min_count"),
    )
    run = measure_latency(TierHost(rig.spec, tier), model, options)
    summary = run.summary
    assert summary is not None
    context = {**run.stack, "model": model.name, "variant": model.variant, "tier": tier,
               "hardware": "virtual lab host CPU"}  # fmt: skip
    for name in ("p50", "p90", "p99", "mean"):
        results.record(f"latency.{name}", getattr(summary, f"{name}_us"), "us", **context)
    results.record("latency.count", summary.count, "count", **context)
    assert summary.count >= len(run.window_latencies_ns) * options.min_inferences
