"""On-device health check of a model update: run the new model once through fieldrig's
inference runner and exit non-zero if it fails.

A board has no bench checkout, so :mod:`bench.update.artifact` embeds this source and the
runner's (``bench/inference/runner_remote.py``, the code the inference suite runs) in the
artifact's ArtifactCommit_Enter state script; it runs as
``python3 -c SOURCE RUNNER_SOURCE MODEL SHA256 OUTPUT_SHAPES MAX_INVOKE_MS``.

The check uses the runner's own steps: model file and sha256 check, runtime choice proved
on the built-in probe model, model load, random inputs; then one timed ``invoke()``. It
fails (exit 1, one line on stderr starting ``fieldrig health check failed``) on a runner
error (missing runtime, unloadable model, wrong sha256), an output whose shapes differ from
``OUTPUT_SHAPES`` (JSON list of shapes; ``null``: not checked), a non-finite output, or an
invoke slower than ``MAX_INVOKE_MS`` (``0``: no limit). On success it prints one line
``fieldrig health check passed ...`` and a JSON record on stderr (Mender logs a state
script's stderr). Python 3.8+, standard library + numpy; must not import ``bench``.
"""

from __future__ import annotations

import json
import sys
import time
import types
from typing import Any, Dict, List, Optional

EXIT_FAILED = 1
PASSED = "fieldrig health check passed"
FAILED = "fieldrig health check failed"


class HealthFailure(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def load_runner(source: str) -> Any:
    """The runner's source as a module (its ``__main__`` block does not run)."""
    module = types.ModuleType("fieldrig_runner")
    exec(compile(source, "fieldrig_runner", "exec"), module.__dict__)
    return module


def check(runner: Any, path: str, sha256: str, shapes: Optional[List[List[int]]],
          max_invoke_ms: float) -> Dict[str, Any]:  # fmt: skip
    """Run the model at ``path`` once; the record of what ran, or HealthFailure."""
    np = runner.np
    if np is None:
        raise HealthFailure("runtime", "numpy is not installed on the board")
    try:
        runner.check_model_file(path, sha256)
        runtime, _ = runner.choose_runtime("auto")
        interp, _, init_ns = runner.load_model(runtime, path, 1, None, "fail")
    except runner.RunnerError as exc:
        raise HealthFailure(exc.kind, str(exc)) from None
    rng = np.random.default_rng(0)
    for detail in interp.get_input_details():
        interp.set_tensor(detail["index"], runner.random_input(detail, rng))
    start = time.perf_counter_ns()
    interp.invoke()
    invoke_ns = time.perf_counter_ns() - start
    got: List[List[int]] = []
    for detail in interp.get_output_details():
        y = interp.get_tensor(detail["index"])
        got.append([int(v) for v in y.shape])
        if not np.isfinite(runner.dequantize(y, detail)).all():
            raise HealthFailure("output", "output %s is not finite (NaN or Inf)" % detail["name"])
    if shapes is not None and got != shapes:
        raise HealthFailure("shape", "output shapes %s, expected %s" % (got, shapes))
    invoke_ms = invoke_ns / 1e6
    if max_invoke_ms > 0 and invoke_ms > max_invoke_ms:
        raise HealthFailure(
            "time", "one invoke took %.3f ms, over the limit of %g ms" % (invoke_ms, max_invoke_ms)
        )
    return {"runtime": runtime["name"], "runtime_version": runtime["version"],
            "init_ms": init_ns / 1e6, "invoke_ms": invoke_ms, "outputs": got}  # fmt: skip


def main(argv: List[str]) -> int:
    if len(argv) != 6:
        print("%s: usage: RUNNER_SOURCE MODEL SHA256 OUTPUT_SHAPES MAX_INVOKE_MS" % FAILED,
              file=sys.stderr)  # fmt: skip
        return EXIT_FAILED
    source, path, sha256, shapes_json, limit = argv[1:]
    try:
        runner = load_runner(source)
        record = check(runner, path, sha256, json.loads(shapes_json), float(limit))
    except HealthFailure as exc:
        print("%s for %s: %s: %s" % (FAILED, path, exc.kind, exc), file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:  # anything the runtime throws is a failed check
        print("%s for %s: %s: %s" % (FAILED, path, type(exc).__name__, exc), file=sys.stderr)
        return EXIT_FAILED
    print("%s for %s %s" % (PASSED, path, json.dumps(record, sort_keys=True)), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
