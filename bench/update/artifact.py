"""Build Mender artifacts for model updates on the bench host with ``mender-artifact``.

A model artifact is a ``single-file`` update-module image (the module Debian's
mender-client ships in /usr/share/mender/modules/v3): its payload is the ``.tflite`` file
plus the module's ``dest_dir`` and ``filename`` files, so the device copies the model to
``<dest_dir>/<filename>``, keeping a backup for roll back. With ``health_check=True`` the
artifact also carries an ``ArtifactCommit_Enter`` state script that loads the new model
with LiteRT's Interpreter on the board's python3, checks its sha256, invokes it once on
zeros and exits 1 on any exception or a non-finite output: ``mender commit`` then rolls
the update back by itself (Mender state scripts, docs.mender.io "State scripts").

Names are deterministic: the artifact file is ``<artifact name>.mender``, and
:func:`default_artifact_name` derives a name from the model's stem and sha256.
"""

from __future__ import annotations

import hashlib
import re
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from bench.update.capability import UpdateError

__all__ = [
    "HEALTH_SCRIPT_NAME",
    "ArtifactBuildError",
    "ModelArtifact",
    "build_model_artifact",
    "default_artifact_name",
    "health_check_script",
    "truncated_model",
]

HEALTH_SCRIPT_NAME = "ArtifactCommit_Enter_50_fieldrig_health"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
_FILENAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
_DEST = re.compile(r"^/[A-Za-z0-9._+/-]{1,255}$")
BUILD_TIMEOUT_S = 120.0

# Runs on the board (python 3.8+ with numpy and ai-edge-litert): argv = model path, sha256.
HEALTH_CHECK_PY = """\
import hashlib, sys
path, want = sys.argv[1], sys.argv[2]
try:
    with open(path, "rb") as f:
        got = hashlib.sha256(f.read()).hexdigest()
    if got != want:
        raise ValueError("sha256 %s, expected %s" % (got[:16], want[:16]))
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter
    it = Interpreter(model_path=path)
    it.allocate_tensors()
    for d in it.get_input_details():
        it.set_tensor(d["index"], np.zeros(d["shape"], dtype=d["dtype"]))
    it.invoke()
    for d in it.get_output_details():
        y = it.get_tensor(d["index"])
        if y.dtype.kind in "fc" and not np.isfinite(y).all():
            raise ValueError("output %s is not finite" % d["name"])
except Exception as exc:
    print("fieldrig health check failed for %s: %s: %s" % (path, type(exc).__name__, exc),
          file=sys.stderr)
    sys.exit(1)
print("fieldrig health check passed for %s" % path, file=sys.stderr)
"""


class ArtifactBuildError(UpdateError):
    """An artifact could not be built (bad name, missing tool, mender-artifact failed)."""


@dataclass(frozen=True)
class ModelArtifact:
    """A built artifact and what it installs where."""

    path: Path
    name: str
    device_type: str
    destination: str  # absolute path of the model on the device
    model_sha256: str
    sha256: str
    size: int
    health_check: bool

    @property
    def file_name(self) -> str:
        """The artifact's file name, as served (``<name>.mender``)."""
        return self.path.name


def default_artifact_name(model: Path, prefix: str = "") -> str:
    """``[prefix-]<model stem>-<first 12 hex of its sha256>``: same model, same name."""
    digest = hashlib.sha256(model.read_bytes()).hexdigest()[:12]
    stem = re.sub(r"[^A-Za-z0-9._+-]", "-", model.stem)
    return f"{prefix}-{stem}-{digest}" if prefix else f"{stem}-{digest}"


def health_check_script(destination: str, model_sha256: str, python: str = "python3") -> str:
    """The ArtifactCommit_Enter script: run the model at ``destination`` once."""
    return (
        "#!/bin/sh\n"
        "# fieldrig health check: run the new model once; a non-zero exit makes the\n"
        "# commit roll back.\n"
        f"exec {shlex.quote(python)} -c {shlex.quote(HEALTH_CHECK_PY)} "
        f"{shlex.quote(destination)} {shlex.quote(model_sha256)}\n"
    )


def build_model_artifact(
    model: Path,
    out_dir: Path,
    *,
    device_type: str,
    dest_dir: str,
    artifact_name: str | None = None,
    filename: str | None = None,
    health_check: bool = True,
    python: str = "python3",
    tool: str = "mender-artifact",
) -> ModelArtifact:
    """Write ``<out_dir>/<artifact_name>.mender`` installing ``model`` to
    ``<dest_dir>/<filename>`` (filename defaults to the model's name) on ``device_type``.
    """
    if not model.is_file():
        raise ArtifactBuildError(f"artifact: model {model} does not exist; build it first")
    name = artifact_name or default_artifact_name(model)
    filename = filename or model.name
    for what, value, pattern in (
        ("artifact name", name, _NAME),
        ("device type", device_type, _NAME),
        ("filename", filename, _FILENAME),
        ("dest_dir", dest_dir, _DEST),
    ):
        if not pattern.match(value) or ".." in value.split("/"):
            raise ArtifactBuildError(
                f"artifact: {what} {value!r} is not allowed; use letters, digits, '.', '_', "
                "'+', '-' (dest_dir: an absolute path of those and '/')"
            )
    exe = shutil.which(tool)
    if exe is None:
        raise ArtifactBuildError(
            f"artifact: {tool} not found; install it (apt-get install mender-artifact)"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{name}.mender"
    model_sha = hashlib.sha256(model.read_bytes()).hexdigest()
    destination = str(PurePosixPath(dest_dir) / filename)
    with tempfile.TemporaryDirectory(prefix="fieldrig-artifact-") as tmp:
        stage = Path(tmp)
        # the single-file module reads these two files from the payload
        (stage / "dest_dir").write_text(dest_dir + "\n")
        (stage / "filename").write_text(filename + "\n")
        payload = stage / "payload"
        payload.mkdir()
        shutil.copyfile(model, payload / filename)
        argv = [exe, "write", "module-image", "-T", "single-file", "-t", device_type,
                "-n", name, "-o", str(out), "-f", str(stage / "dest_dir"),
                "-f", str(stage / "filename"), "-f", str(payload / filename)]  # fmt: skip
        if health_check:
            script = stage / HEALTH_SCRIPT_NAME
            script.write_text(health_check_script(destination, model_sha, python))
            script.chmod(0o755)
            argv += ["-s", str(script)]
        try:
            proc = subprocess.run(
                argv, capture_output=True, text=True, check=False, timeout=BUILD_TIMEOUT_S
            )
        except subprocess.TimeoutExpired:
            raise ArtifactBuildError(
                f"artifact {name}: mender-artifact hung for {BUILD_TIMEOUT_S:g} s"
            ) from None
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        raise ArtifactBuildError(
            f"artifact {name}: mender-artifact failed: {lines[-1] if lines else proc.returncode}"
        )
    data = out.read_bytes()
    return ModelArtifact(
        path=out,
        name=name,
        device_type=device_type,
        destination=destination,
        model_sha256=model_sha,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        health_check=health_check,
    )


def truncated_model(model: Path, out_dir: Path, keep: float = 0.5) -> Path:
    """A deliberately broken copy of ``model`` (its first ``keep`` fraction): LiteRT refuses
    it, so its health check fails. Written to ``<out_dir>/<stem>-truncated.tflite``."""
    if not 0 < keep < 1:
        raise ArtifactBuildError(f"truncated_model: keep={keep} must be between 0 and 1")
    data = model.read_bytes()
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{model.stem}-truncated{model.suffix}"
    out.write_bytes(data[: max(1, int(len(data) * keep))])
    return out
