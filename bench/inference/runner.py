"""Deploy the on-device runner and a model to a gateway (or a lab tier), run it, parse what
it measured."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from bench.errors import BenchError
from bench.gateway import Commands, ConnectedGateway
from bench.inference.manifest import ModelEntry
from bench.results.stats import LatencySummary, summarize_latencies

RUNNER_SOURCE = Path(__file__).parent / "runner_remote.py"
REMOTE_DIR = ".cache/fieldrig"  # relative to the login's home: private to each board


class InferenceError(BenchError):
    """The runner could not measure: runtime, model, hash, delegate or evaluation problem."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class InferenceOptions:
    """How the runner measures (see runner_remote.py for each option's meaning)."""

    threads: int = 1
    runtime: str = "auto"
    delegate: str | None = None
    delegate_fallback: str = "fail"  # or "cpu": run on the CPU and record the fallback
    warmup_runs: int = 1
    warmup_secs: float = 0.5
    windows: int = 5
    min_secs: float = 1.0
    min_inferences: int = 50
    seed: int = 0

    def argv(self) -> list[str]:
        args = [
            "--threads", str(self.threads), "--runtime", self.runtime,
            "--delegate-fallback", self.delegate_fallback,
            "--warmup-runs", str(self.warmup_runs), "--warmup-secs", str(self.warmup_secs),
            "--windows", str(self.windows), "--min-secs", str(self.min_secs),
            "--min-inferences", str(self.min_inferences), "--seed", str(self.seed),
        ]  # fmt: skip
        return args + (["--delegate", self.delegate] if self.delegate else [])

    def time_budget_s(self) -> float:
        """A generous upper bound for one run, for the command timeout."""
        return 120.0 + self.warmup_secs + self.windows * self.min_secs * 4


@dataclass
class InferenceRun:
    """What the runner reported, plus the latency summary for latency runs."""

    gateway: str
    model: str
    raw: dict[str, Any]
    summary: LatencySummary | None = None
    stack: dict[str, Any] = field(default_factory=dict)

    @property
    def window_latencies_ns(self) -> list[list[int]]:
        return [w["latencies_ns"] for w in self.raw.get("windows", [])]

    @property
    def throttled_windows(self) -> list[int]:
        return [i for i, w in enumerate(self.raw.get("windows", [])) if w.get("throttled")]


def stack_of(raw: dict[str, Any]) -> dict[str, Any]:
    """What produced the numbers: runtime, version, delegate, threads, board software."""
    delegate = raw.get("delegate") or {}
    return {
        "runtime": raw["runtime"]["name"],
        "runtime_version": raw["runtime"]["version"],
        "delegate": delegate.get("used"),
        "delegate_requested": delegate.get("requested"),
        "delegate_fallback": delegate.get("fallback", False),
        "threads": raw["threads"],
        "model_sha256": raw["model"]["sha256"],
        **{f"board_{k}": v for k, v in raw.get("board", {}).items()},
    }


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class RunnerHost(Commands, Protocol):
    """Where the runner runs: a gateway over SSH, or a virtual lab tier (TierHost)."""

    def put(self, local: Path, remote: str, mode: int | None = None) -> bool: ...


def deploy(gateway: RunnerHost, local: Path) -> str:
    """Put a file into the gateway's fieldrig directory (skipped when identical)."""
    remote = f"{REMOTE_DIR}/{local.name}"
    gateway.put(local, remote)
    return remote


def run_runner(
    gateway: RunnerHost,
    model: Path,
    *,
    label: str,
    args: list[str],
    expect_sha256: str | None,
    timeout: float,
) -> dict[str, Any]:
    """Deploy runner and model, run one measurement, return the runner's JSON."""
    runner = deploy(gateway, RUNNER_SOURCE)
    remote_model = deploy(gateway, model)
    argv = ["python3", runner, "--model", remote_model, *args]
    if expect_sha256:
        argv += ["--expect-sha256", expect_sha256]
    result = gateway.run(argv, timeout=timeout, check=False)
    try:
        payload: dict[str, Any] = json.loads(result.stdout)
    except ValueError:
        err = result.stderr.decode("utf-8", "replace").strip().splitlines()
        cause = err[-1] if err else f"exit status {result.exit_status}, no output"
        raise InferenceError(
            f"gateway {gateway.name}, model {label}: the runner failed: {cause}", "runner"
        ) from None
    if "error" in payload:
        error = payload["error"]
        raise InferenceError(
            f"gateway {gateway.name}, model {label}: {error['message']}", error["kind"]
        )
    return payload


def measure_latency(
    gateway: RunnerHost,
    model: ModelEntry | Path,
    options: InferenceOptions | None = None,
) -> InferenceRun:
    """Latency windows of a manifest model, or of any .tflite file (no manifest needed)."""
    options = options or InferenceOptions()
    if isinstance(model, ModelEntry):
        model.verify()
        path, label, sha = model.file, model.id, model.sha256
    else:
        path, label, sha = model, model.name, _sha256(model)
    raw = run_runner(gateway, path, label=label, args=["--mode", "latency", *options.argv()],
                     expect_sha256=sha, timeout=options.time_budget_s())  # fmt: skip
    run = InferenceRun(gateway=gateway.name, model=label, raw=raw, stack=stack_of(raw))
    run.summary = summarize_latencies(run.window_latencies_ns)
    return run


def measure_accuracy(
    gateway: ConnectedGateway, model: ModelEntry, options: InferenceOptions | None = None
) -> InferenceRun:
    """Evaluate a manifest model on its evaluation set, on the board."""
    options = options or InferenceOptions()
    model.verify()
    remote_eval = deploy(gateway, model.eval)
    args = ["--mode", "accuracy", "--eval", remote_eval, "--metric", model.quality.metric,
            *options.argv()]  # fmt: skip
    raw = run_runner(gateway, model.file, label=model.id, args=args, expect_sha256=model.sha256,
                     timeout=options.time_budget_s())  # fmt: skip
    return InferenceRun(gateway=gateway.name, model=model.id, raw=raw, stack=stack_of(raw))
