"""Measurement fidelity of the on-device runner, on one virtual gateway and one model.

Three measurements of the same model's per-inference latency on gw2 (its profile gets more
than one host CPU, so a single thread is never throttled), interleaved round by round:
fieldrig's runner, a bare invoke() loop in a separate process, and LiteRT's own
benchmark_litert_model tool shipped in ai-edge-litert. Target: the runner's median within
5 % of the bare loop, and 1 us resolution or better (the LiteRT tool prints 10 us steps).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterator

import numpy as np
import pytest

from bench.gateway import ConnectedGateway
from bench.inference.manifest import ModelEntry, load_manifest
from bench.inference.runner import InferenceOptions, deploy, measure_latency
from bench.lab.virtual import VirtualLab
from bench.rig import Rig

ROUNDS = 3
BARE_LOOP = """
import sys, time, numpy as np
from ai_edge_litert.interpreter import Interpreter
interp = Interpreter(model_path=sys.argv[1], num_threads=1)
interp.allocate_tensors()
rng = np.random.default_rng(0)
for d in interp.get_input_details():
    interp.set_tensor(d["index"], rng.standard_normal(d["shape"]).astype(d["dtype"]))
end = time.monotonic() + 0.5
while time.monotonic() < end:
    interp.invoke()
out = []
for _ in range(int(sys.argv[2])):
    t0 = time.perf_counter_ns(); interp.invoke(); out.append(time.perf_counter_ns() - t0)
print(" ".join(map(str, out)))
"""


@pytest.fixture(scope="module")
def gw2(lab: VirtualLab, virtual_rig: Rig) -> Iterator[ConnectedGateway]:
    gateway = ConnectedGateway(virtual_rig.gateway("gw2"))
    yield gateway
    gateway.close()


@pytest.fixture(scope="module")
def model() -> ModelEntry:
    return next(m for m in load_manifest() if m.name == "substation_cam" and m.variant == "float32")


def test_runner_matches_a_bare_loop(gw2: ConnectedGateway, model: ModelEntry) -> None:
    options = InferenceOptions(windows=3, min_secs=0.5, min_inferences=100)
    remote_model = deploy(gw2, model.file)
    runner_medians, bare_medians, tool_medians = [], [], []
    resolution_ns = []
    for _ in range(ROUNDS):
        run = measure_latency(gw2, model, options)
        latencies = [ns for w in run.window_latencies_ns for ns in w]
        runner_medians.append(statistics.median(latencies))
        distinct = np.unique(latencies)
        resolution_ns.append(int(np.diff(distinct).min()))
        bare = gw2.run(["python3", "-c", BARE_LOOP, remote_model, str(len(latencies))], timeout=300)
        bare_medians.append(statistics.median(int(v) for v in bare.text.split()))
        tool = gw2.run(
            ["python3", "-m", "ai_edge_litert.tools.benchmark_litert_model",
             f"--model={remote_model}", "--num_runs=300", "--warmup_runs=20",
             "--result_json=/tmp/fieldrig-litert.json"],
            timeout=300, check=False,
        )  # fmt: skip
        if tool.ok:
            result = json.loads(gw2.run(["cat", "/tmp/fieldrig-litert.json"]).stdout)
            tool_medians.append(float(result["latency"]["median_ms"]) * 1e6)
    runner, bare_loop = statistics.median(runner_medians), statistics.median(bare_medians)
    ratio = runner / bare_loop
    tool_note = (
        f", LiteRT tool {statistics.median(tool_medians) / 1e3:.1f} us"
        if tool_medians
        else ", LiteRT tool did not run"
    )
    print(
        f"\nfidelity on {model.id}: runner {runner / 1e3:.1f} us, bare loop "
        f"{bare_loop / 1e3:.1f} us (ratio {ratio:.3f}){tool_note}; "
        f"finest step between latencies {min(resolution_ns)} ns"
    )
    assert abs(ratio - 1) <= 0.05
    assert min(resolution_ns) <= 1000
