"""fieldrig's on-device inference runner: standard library + numpy, one JSON object out.

Pushed to the gateway over SFTP and run there with the board's python3. It picks a TFLite
interpreter (ai-edge-litert, then tflite-runtime, then tensorflow.lite), proves the choice
by running a tiny built-in model, loads the model under test, and measures invoke() alone
with perf_counter_ns: init, first inference, warm-up, then K windows of at least min_secs
and N inferences. It records every latency and each window's monotonic and wall-clock
bounds, and the board's temperature and throttling around each window. In accuracy mode
it evaluates the model on an .npz evaluation set instead.

Exit status 0 with the result on stdout, or 2 with {"error": {"kind", "message"}}.
Python 3.8 compatible; must not import anything from ``bench``.
"""

from __future__ import annotations

import argparse
import base64
import glob
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

RUNNER_VERSION = 1
RUNTIMES = ("ai-edge-litert", "tflite-runtime", "tensorflow")
# A tiny model built by models/build_probe.py (y = x + 1 on float32[1, 4], 856 bytes, sha256
# 04aad787adb6...); it proves an interpreter works before the model under test is blamed.
PROBE_MODEL = base64.b64decode(
    "HAAAAFRGTDMUACAAHAAYABQAEAAMAAAACAAEABQAAAAcAAAAhAAAANwAAACkAQAAtAEAABQDAAADAAAAAQAAABAA"
    "AAAAAAoAEAAMAAgABAAKAAAADAAAABwAAAA0AAAADwAAAHNlcnZpbmdfZGVmYXVsdAABAAAABAAAAKT///8CAAAA"
    "BAAAAAEAAAB5AAAAAQAAAAQAAADm/v//BAAAAAEAAAB4AAAAAgAAADQAAAAEAAAA3P///wUAAAAEAAAAEwAAAENP"
    "TlZFUlNJT05fTUVUQURBVEEACAAMAAgABAAIAAAABAAAAAQAAAATAAAAbWluX3J1bnRpbWVfdmVyc2lvbgAGAAAA"
    "xAAAALwAAACoAAAAmAAAAHQAAAAEAAAAbv///wQAAABgAAAAEAAAAAAAAAAIAA4ACAAEAAgAAAAQAAAAJAAAAAAA"
    "BgAIAAQABgAAAAQAAAAAAAAADAAYABQAEAAMAAQADAAAADpUyLF8t25CAwAAAAIAAAAEAAAABgAAADIuMjEuMAAA"
    "2v///wQAAAAQAAAAMS41LjAAAAAAAAAAAAAAAAQABgAEAAAAAAAGAAgABAAGAAAABAAAAAQAAAAAAIA/eP7//3z+"
    "//8PAAAATUxJUiBDb252ZXJ0ZWQuAAEAAAAUAAAAAAAOABgAFAAQAAwACAAEAA4AAAAUAAAAHAAAAFwAAABgAAAA"
    "ZAAAAAQAAABtYWluAAAAAAEAAAAUAAAAAAAOABQAAAAQAAwACwAEAA4AAAAQAAAAAAAACwwAAAAQAAAA/P7//wEA"
    "AAACAAAAAgAAAAAAAAABAAAAAQAAAAIAAAABAAAAAAAAAAMAAACQAAAASAAAAAQAAACS////AAAAARAAAAAQAAAA"
    "AwAAACAAAABM////EQAAAFBhcnRpdGlvbmVkQ2FsbDowAAAAAgAAAAEAAAAEAAAA0v///wAAAAEQAAAAEAAAAAIA"
    "AAAUAAAAjP///wUAAABDb25zdAAAAAAAAAAAABYAGAAUAAAAEAAMAAgAAAAAAAAABwAWAAAAAAAAARAAAAAQAAAA"
    "AQAAACAAAADQ////EwAAAHNlcnZpbmdfZGVmYXVsdF94OjAAAgAAAAEAAAAEAAAAAQAAAAgAAAAEAAQABAAAAA=="
)

try:
    import numpy as np
except ImportError:  # reported as a runner error below, as JSON
    np = None  # type: ignore[assignment]


class RunnerError(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


# ---------------------------------------------------------------------- runtimes
def import_runtime(name: str) -> Tuple[Any, Any, str]:
    """(Interpreter class, load_delegate function, version) of one runtime."""
    if name == "ai-edge-litert":
        from ai_edge_litert import interpreter as litert

        try:
            from importlib import metadata

            version = metadata.version("ai-edge-litert")
        except Exception:
            version = "unknown"
        return litert.Interpreter, litert.load_delegate, version
    if name == "tflite-runtime":
        import tflite_runtime
        from tflite_runtime import interpreter as tflite

        return tflite.Interpreter, tflite.load_delegate, getattr(tflite_runtime, "__version__", "?")
    if name == "tensorflow":
        import tensorflow as tf

        return tf.lite.Interpreter, tf.lite.experimental.load_delegate, tf.__version__
    raise RunnerError("usage", "unknown runtime %r; choose one of %s" % (name, ", ".join(RUNTIMES)))


def numpy2_trap(name: str, version: str, exc: BaseException) -> Optional[str]:
    """The message for tflite-runtime built for numpy 1.x running under numpy 2."""
    text = "%s: %s" % (type(exc).__name__, exc)
    numpy_major = int(np.__version__.split(".")[0])
    markers = ("_ARRAY_API", "numpy.core.multiarray", "compiled using NumPy 1", "numpy 1.x")
    if name == "tflite-runtime" and numpy_major >= 2 and any(m in text for m in markers):
        return (
            "tflite-runtime %s imports under numpy %s but was built for numpy 1.x and cannot "
            "create an Interpreter (%s); install ai-edge-litert (pip install ai-edge-litert), "
            "or pin numpy<2 for tflite-runtime" % (version, np.__version__, text.splitlines()[0])
        )
    return None


def prove_runtime(interpreter_cls: Any) -> None:
    """Build an interpreter on the built-in probe model and check one inference's answer."""
    interp = interpreter_cls(model_content=PROBE_MODEL)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    x = np.arange(4, dtype=np.float32).reshape(inp["shape"])
    interp.set_tensor(inp["index"], x)
    interp.invoke()
    y = interp.get_tensor(interp.get_output_details()[0]["index"])
    if not np.allclose(y, x + 1):
        raise RuntimeError("the probe model gave %r, expected %r" % (y.tolist(), (x + 1).tolist()))


def choose_runtime(wanted: str) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
    """The first runtime (in fallback order, or the one asked for) that provably works."""
    names = RUNTIMES if wanted == "auto" else (wanted,)
    tried: List[Dict[str, Any]] = []
    for name in names:
        try:
            interpreter_cls, load_delegate, version = import_runtime(name)
        except ImportError as exc:
            tried.append({"name": name, "ok": False, "error": "not installed (%s)" % exc})
            continue
        try:
            prove_runtime(interpreter_cls)
        except Exception as exc:  # anything a broken runtime throws
            message = numpy2_trap(name, version, exc) or "%s: %s" % (type(exc).__name__, exc)
            tried.append({"name": name, "version": version, "ok": False, "error": message})
            continue
        tried.append({"name": name, "version": version, "ok": True, "error": None})
        chosen = {"name": name, "version": version, "cls": interpreter_cls,
                  "load_delegate": load_delegate}  # fmt: skip
        return chosen, tried
    reasons = "; ".join("%s: %s" % (t["name"], t["error"]) for t in tried)
    raise RunnerError(
        "runtime",
        "no usable TFLite runtime (%s); install one: pip install ai-edge-litert" % reasons,
    )


# ---------------------------------------------------------------------- model
def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_model_file(path: str, expect_sha256: Optional[str]) -> str:
    if not os.path.isfile(path):
        raise RunnerError("model", "model file %s does not exist" % path)
    with open(path, "rb") as fh:
        head = fh.read(8)
    if len(head) < 8 or head[4:8] != b"TFL3":
        raise RunnerError(
            "model", "%s is not a TFLite model (no TFL3 identifier): truncated or corrupt" % path
        )
    digest = sha256_of(path)
    if expect_sha256 and digest != expect_sha256:
        raise RunnerError(
            "hash",
            "%s has sha256 %s but the manifest says %s: the file on the board is not the model "
            "that was measured before" % (path, digest[:16], expect_sha256[:16]),
        )
    return digest


def tensor_info(detail: Dict[str, Any]) -> Dict[str, Any]:
    scale, zero_point = detail.get("quantization", (0.0, 0))
    return {
        "name": detail["name"],
        "shape": [int(v) for v in detail["shape"]],
        "dtype": np.dtype(detail["dtype"]).name,
        "quantization": {"scale": float(scale), "zero_point": int(zero_point)} if scale else None,
    }


def load_model(runtime: Dict[str, Any], path: str, threads: int, delegate: Optional[str],
               fallback: str) -> Tuple[Any, Dict[str, Any], int]:  # fmt: skip
    """(interpreter, delegate record, init ns): construction + allocate_tensors, timed."""
    record: Dict[str, Any] = {"requested": delegate, "used": None, "fallback": False,
                              "error": None}  # fmt: skip
    delegates = []
    if delegate:
        try:
            delegates.append(runtime["load_delegate"](delegate))
            record["used"] = delegate
        except Exception as exc:  # load_delegate raises ValueError/OSError/RuntimeError
            message = "delegate %s did not load: %s" % (delegate, exc)
            if fallback != "cpu":
                raise RunnerError(
                    "delegate", message + "; run without it or allow CPU fallback"
                ) from None
            record.update(fallback=True, error=message)
    start = time.perf_counter_ns()
    try:
        interp = runtime["cls"](
            model_path=path, num_threads=threads, experimental_delegates=delegates or None
        )
        interp.allocate_tensors()
    except Exception as exc:
        raise RunnerError(
            "model",
            "%s %s cannot load %s: %s: %s" % (runtime["name"], runtime["version"], path,
                                              type(exc).__name__, exc),
        ) from None  # fmt: skip
    return interp, record, time.perf_counter_ns() - start


def random_input(detail: Dict[str, Any], rng: Any) -> Any:
    dtype = np.dtype(detail["dtype"])
    shape = tuple(int(v) for v in detail["shape"])
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype)
    if dtype.kind == "b":
        return rng.integers(0, 1, size=shape, endpoint=True).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def quantize(x: Any, detail: Dict[str, Any]) -> Any:
    dtype = np.dtype(detail["dtype"])
    scale, zero_point = detail.get("quantization", (0.0, 0))
    if dtype.kind not in "iu" or not scale:
        return x.astype(dtype)
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale + zero_point), info.min, info.max).astype(dtype)


def dequantize(y: Any, detail: Dict[str, Any]) -> Any:
    scale, zero_point = detail.get("quantization", (0.0, 0))
    if np.dtype(detail["dtype"]).kind in "iu" and scale:
        return (y.astype(np.float32) - zero_point) * scale
    return y.astype(np.float32)


# ---------------------------------------------------------------------- the board
def read_text(path: str) -> Optional[str]:
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        return None


def board_state() -> Dict[str, Any]:
    """Temperatures (°C) and throttling flags, where the board exposes them."""
    temps = {}
    for zone in sorted(glob.glob("/sys/class/thermal/thermal_zone*")):
        value = read_text(zone + "/temp")
        if value and value.lstrip("-").isdigit():
            temps[read_text(zone + "/type") or os.path.basename(zone)] = int(value) / 1000.0
    throttled = None
    try:  # Raspberry Pi firmware: bit 2 = throttled now, bit 1 = ARM capped, bit 3 = soft limit
        out = subprocess.run(["vcgencmd", "get_throttled"], capture_output=True, text=True,
                             timeout=2).stdout  # fmt: skip
        if "=" in out:
            throttled = int(out.strip().split("=", 1)[1], 16)
    except (OSError, ValueError, subprocess.SubprocessError):
        pass
    return {"temperature_c": temps, "throttled": throttled}


def throttled_during(before: Dict[str, Any], after: Dict[str, Any]) -> Optional[bool]:
    """True if the firmware reported throttling at either end of the window (None: unknown)."""
    flags = [s["throttled"] for s in (before, after) if s["throttled"] is not None]
    if not flags:
        return None
    now_bits = 0x1 | 0x2 | 0x4 | 0x8  # under-voltage, ARM capped, throttled, soft temp limit
    return any(f & now_bits for f in flags) or flags[0] != flags[-1]


def board_stack() -> Dict[str, Any]:
    governor = read_text("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {"python": platform.python_version(), "numpy": np.__version__,
            "machine": platform.machine(), "kernel": platform.release(),
            "cpus": os.cpu_count(), "affinity": affinity, "governor": governor}  # fmt: skip


# ---------------------------------------------------------------------- measuring
def timed_invokes(interp: Any, min_count: int, min_secs: float) -> Tuple[List[int], int, int]:
    """Invoke until both minima are met; (latencies ns, start mono ns, end mono ns)."""
    invoke = interp.invoke
    clock = time.perf_counter_ns
    latencies: List[int] = []
    start = time.monotonic_ns()
    deadline = start + int(min_secs * 1e9)
    while len(latencies) < min_count or time.monotonic_ns() < deadline:
        t0 = clock()
        invoke()
        latencies.append(clock() - t0)
    return latencies, start, time.monotonic_ns()


def measure_latency(interp: Any, args: argparse.Namespace) -> Dict[str, Any]:
    rng = np.random.default_rng(args.seed)
    for detail in interp.get_input_details():
        interp.set_tensor(detail["index"], random_input(detail, rng))
    t0 = time.perf_counter_ns()
    interp.invoke()
    first = time.perf_counter_ns() - t0
    warm, warm_start, warm_end = timed_invokes(interp, args.warmup_runs, args.warmup_secs)
    windows = []
    for _ in range(args.windows):
        before = board_state()
        wall_start = time.time_ns()
        latencies, start, end = timed_invokes(interp, args.min_inferences, args.min_secs)
        wall_end = time.time_ns()
        after = board_state()
        windows.append({
            "start_mono_ns": start, "end_mono_ns": end,
            "start_wall_ns": wall_start, "end_wall_ns": wall_end,
            "latencies_ns": latencies, "board_before": before, "board_after": after,
            "throttled": throttled_during(before, after),
        })  # fmt: skip
    return {"first_inference_ns": first,
            "warmup": {"runs": len(warm), "ns": warm_end - warm_start},
            "windows": windows}  # fmt: skip


def auc(scores: Any, labels: Any) -> float:
    """ROC AUC by ranks (Mann-Whitney U), ties averaged."""
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1
        i = j + 1
    positives = labels == 1
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if not n_pos or not n_neg:
        raise RunnerError("eval", "AUC needs both classes in the evaluation set")
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def measure_accuracy(interp: Any, args: argparse.Namespace) -> Dict[str, Any]:
    try:
        data = np.load(args.eval)
        xs, ys = data["x"], data["y"]
    except (OSError, KeyError, ValueError) as exc:
        raise RunnerError("eval", "evaluation set %s unusable: %s" % (args.eval, exc)) from None
    inp = interp.get_input_details()[0]
    out = interp.get_output_details()[0]
    outputs = []
    for x in xs:
        interp.set_tensor(inp["index"], quantize(x.reshape(inp["shape"]), inp))
        interp.invoke()
        outputs.append(dequantize(interp.get_tensor(out["index"]), out).reshape(-1))
    outputs_arr = np.stack(outputs)
    if args.metric == "accuracy":
        predicted = outputs_arr.argmax(axis=1)
        value = float((predicted == ys).mean())
    else:
        scores = ((outputs_arr - xs.reshape(len(xs), -1)) ** 2).mean(axis=1)
        value = auc(scores, ys)
    return {"accuracy": {"metric": args.metric, "value": value, "samples": len(xs)}}


# ---------------------------------------------------------------------- main
def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="fieldrig-runner")
    p.add_argument("--model", required=True)
    p.add_argument("--expect-sha256")
    p.add_argument("--mode", choices=("latency", "accuracy"), default="latency")
    p.add_argument("--runtime", choices=("auto", *RUNTIMES), default="auto")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--delegate")
    p.add_argument("--delegate-fallback", choices=("cpu", "fail"), default="fail")
    p.add_argument("--warmup-runs", type=int, default=1)
    p.add_argument("--warmup-secs", type=float, default=0.5)
    p.add_argument("--windows", type=int, default=5)
    p.add_argument("--min-secs", type=float, default=1.0)
    p.add_argument("--min-inferences", type=int, default=50)
    p.add_argument("--eval")
    p.add_argument("--metric", choices=("accuracy", "auc"), default="accuracy")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.warmup_runs < 1 or args.warmup_secs < 0.5:
        raise RunnerError("usage", "warm-up must be at least 1 run and 0.5 s")
    if args.mode == "accuracy" and not args.eval:
        raise RunnerError("usage", "accuracy mode needs --eval")
    return args


def run(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    if np is None:
        raise RunnerError("runtime", "numpy is not installed on the board; pip install numpy")
    digest = check_model_file(args.model, args.expect_sha256)
    runtime, tried = choose_runtime(args.runtime)
    interp, delegate, init_ns = load_model(
        runtime, args.model, args.threads, args.delegate, args.delegate_fallback
    )
    result: Dict[str, Any] = {
        "runner_version": RUNNER_VERSION,
        "runtime": {"name": runtime["name"], "version": runtime["version"]},
        "runtimes_tried": tried,
        "model": {"path": args.model, "sha256": digest,
                  "inputs": [tensor_info(d) for d in interp.get_input_details()],
                  "outputs": [tensor_info(d) for d in interp.get_output_details()]},
        "threads": args.threads,
        "delegate": delegate,
        "init_ns": init_ns,
        "board": board_stack(),
        "mode": args.mode,
    }  # fmt: skip
    measure: Callable[[Any, argparse.Namespace], Dict[str, Any]] = (
        measure_latency if args.mode == "latency" else measure_accuracy
    )
    result.update(measure(interp, args))
    return result


def main() -> int:
    try:
        result = run()
    except RunnerError as exc:
        json.dump({"error": {"kind": exc.kind, "message": str(exc)}}, sys.stdout)
        return 2
    json.dump(result, sys.stdout, separators=(",", ":"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
