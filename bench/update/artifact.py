"""Build Mender artifacts for model updates on the bench host with ``mender-artifact``.

A model artifact is a ``single-file`` update-module image (the module Debian's
mender-client ships in /usr/share/mender/modules/v3): its payload is the ``.tflite`` file
plus the module's ``dest_dir`` and ``filename`` files, so the device copies the model to
``<dest_dir>/<filename>``, keeping a backup for roll back. With ``health_check=True`` the
artifact also carries an ``ArtifactCommit_Enter`` state script that runs the new model once
through fieldrig's inference runner (:mod:`bench.update.health_remote` driving
``bench/inference/runner_remote.py``, both embedded in the script since a board has no
bench checkout) with the board's python3: sha256 and model checks, the runtime proved on
the runner's probe model, one timed invoke on random inputs; it exits 1 on a runner error,
output shapes other than the expected ones, a non-finite output or an invoke over the time
limit, and ``mender commit`` then rolls the update back by itself (Mender state scripts,
docs.mender.io "State scripts"). With ``signing_key`` the artifact is signed
(``mender-artifact write -k``), for devices configured with a verification key.

Names are deterministic: the artifact file is ``<artifact name>.mender``, and
:func:`default_artifact_name` derives a name from the model's stem and sha256.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

from bench.errors import BenchError
from bench.inference.manifest import load_manifest
from bench.inference.runner import RUNNER_SOURCE
from bench.update.capability import UpdateError

__all__ = [
    "HEALTH_SCRIPT_NAME",
    "ArtifactBuildError",
    "ModelArtifact",
    "build_model_artifact",
    "default_artifact_name",
    "health_check_script",
    "manifest_output_shapes",
    "truncated_model",
]

HEALTH_SCRIPT_NAME = "ArtifactCommit_Enter_50_fieldrig_health"
WRITE_TIME_SCRIPT_NAME = "ArtifactInstall_Enter_50_fieldrig_write_time"
MAX_WRITE_TIME_S = 600.0
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
_FILENAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
_DEST = re.compile(r"^/[A-Za-z0-9._+/-]{1,255}$")
BUILD_TIMEOUT_S = 120.0

# The on-device check (bench/update/health_remote.py) and the runner it drives
# (bench/inference/runner_remote.py, the inference suite's own code), embedded in the script.
HEALTH_SOURCE = (Path(__file__).parent / "health_remote.py").read_text()
DEFAULT_MAX_INVOKE_MS = 5000.0


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
    output_shapes: tuple[tuple[int, ...], ...] | None = None  # what the health check expects
    max_invoke_ms: float = DEFAULT_MAX_INVOKE_MS
    signed: bool = False
    write_time_s: float = 0.0  # the install step's emulated storage write time

    @property
    def file_name(self) -> str:
        """The artifact's file name, as served (``<name>.mender``)."""
        return self.path.name


def default_artifact_name(model: Path, prefix: str = "") -> str:
    """``[prefix-]<model stem>-<first 12 hex of its sha256>``: same model, same name."""
    digest = hashlib.sha256(model.read_bytes()).hexdigest()[:12]
    stem = re.sub(r"[^A-Za-z0-9._+-]", "-", model.stem)
    return f"{prefix}-{stem}-{digest}" if prefix else f"{stem}-{digest}"


def manifest_output_shapes(model: Path) -> list[list[int]] | None:
    """The output shapes models/manifest.yaml records for ``model`` (matched by sha256),
    or None when the manifest cannot be read or does not list it."""
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    try:
        entries = load_manifest()
    except BenchError:
        return None
    for entry in entries:
        if entry.sha256 == digest:
            return [[int(v) for v in out["shape"]] for out in entry.outputs]
    return None


def health_check_script(
    destination: str,
    model_sha256: str,
    python: str = "python3",
    *,
    output_shapes: Sequence[Sequence[int]] | None = None,
    max_invoke_ms: float = DEFAULT_MAX_INVOKE_MS,
) -> str:
    """The ArtifactCommit_Enter script: run the model at ``destination`` once through the
    runner (``output_shapes`` None: shapes unchecked; ``max_invoke_ms`` 0: no limit)."""
    shapes = None if output_shapes is None else [[int(v) for v in s] for s in output_shapes]
    argv = [python, "-c", HEALTH_SOURCE, RUNNER_SOURCE.read_text(), destination, model_sha256,
            json.dumps(shapes), f"{max_invoke_ms:g}"]  # fmt: skip
    return (
        "#!/bin/sh\n"
        "# fieldrig health check: run the new model once through fieldrig's inference\n"
        "# runner; a non-zero exit makes the commit roll back.\n"
        f"exec {shlex.join(argv)}\n"
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
    output_shapes: Sequence[Sequence[int]] | Literal["manifest"] | None = "manifest",
    max_invoke_ms: float = DEFAULT_MAX_INVOKE_MS,
    signing_key: Path | None = None,
    write_time_s: float = 0.0,
    tool: str = "mender-artifact",
) -> ModelArtifact:
    """Write ``<out_dir>/<artifact_name>.mender`` installing ``model`` to
    ``<dest_dir>/<filename>`` (filename defaults to the model's name) on ``device_type``.

    The health check expects ``output_shapes``: by default those models/manifest.yaml
    records for the model (unchecked when it is not listed), None: unchecked.
    ``signing_key``: a PEM private key (RSA or ECDSA) to sign the artifact with.
    ``write_time_s``: how long the install step takes on the device, emulated by an
    ``ArtifactInstall_Enter`` script that waits that long. A 100 KB model is written in
    milliseconds, a real rootfs or a large model on slow flash in seconds to minutes; a
    bench that must land a fault inside the install step needs a step that long.
    """
    if not model.is_file():
        raise ArtifactBuildError(f"artifact: model {model} does not exist; build it first")
    if signing_key is not None and not signing_key.is_file():
        raise ArtifactBuildError(
            f"artifact: signing key {signing_key} does not exist; give a PEM private key"
        )
    if not 0 <= write_time_s <= MAX_WRITE_TIME_S:
        raise ArtifactBuildError(
            f"artifact: write_time_s={write_time_s} must be between 0 and {MAX_WRITE_TIME_S:g} s"
        )
    if max_invoke_ms < 0:
        raise ArtifactBuildError(f"artifact: max_invoke_ms={max_invoke_ms} must be >= 0 (0: none)")
    shapes = manifest_output_shapes(model) if isinstance(output_shapes, str) else output_shapes
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
            script.write_text(health_check_script(
                destination, model_sha, python, output_shapes=shapes, max_invoke_ms=max_invoke_ms
            ))  # fmt: skip
            script.chmod(0o755)
            argv += ["-s", str(script)]
        if write_time_s > 0:
            hold = stage / WRITE_TIME_SCRIPT_NAME
            hold.write_text(f"#!/bin/sh\n# fieldrig: the storage write time of the install\n"
                            f"sleep {write_time_s:g}\n")  # fmt: skip
            hold.chmod(0o755)
            argv += ["-s", str(hold)]
        if signing_key is not None:
            argv += ["-k", str(signing_key)]
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
        output_shapes=None if shapes is None else tuple(tuple(int(v) for v in s) for s in shapes),
        max_invoke_ms=max_invoke_ms,
        signed=signing_key is not None,
        write_time_s=write_time_s,
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
