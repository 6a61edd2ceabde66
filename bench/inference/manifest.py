"""models/manifest.yaml: which models the suites deploy, their hashes, tensors and quality."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench.errors import BenchError

MODELS_DIR = Path(__file__).resolve().parent.parent.parent / "models"


class ManifestError(BenchError):
    """The model manifest or a model file is missing, malformed or does not match."""


@dataclass(frozen=True)
class Quality:
    metric: str  # accuracy | auc
    value: float
    tolerance: float

    @property
    def floor(self) -> float:
        """The lowest value a device may reach and still pass."""
        return self.value - self.tolerance


@dataclass(frozen=True)
class ModelEntry:
    """One model variant of the manifest, with absolute paths."""

    name: str
    variant: str
    file: Path
    sha256: str
    task: str
    eval: Path
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    quality: Quality
    classes: list[str] | None = None

    @property
    def id(self) -> str:
        return f"{self.name}-{self.variant}"

    def verify(self) -> None:
        """Refuse a local model file whose bytes are not the ones the manifest records."""
        if not self.file.exists():
            raise ManifestError(f"{self.file}: missing; rebuild with models/build.py")
        digest = hashlib.sha256(self.file.read_bytes()).hexdigest()
        if digest != self.sha256:
            raise ManifestError(
                f"{self.file}: sha256 {digest[:16]} does not match the manifest's "
                f"{self.sha256[:16]}; rebuild with models/build.py or restore the file"
            )


MANIFEST_ENV = "FIELDRIG_MODELS_MANIFEST"


def load_manifest(path: Path | None = None) -> list[ModelEntry]:
    """Every model variant listed in the manifest: ``path``, else the file named by
    ``$FIELDRIG_MODELS_MANIFEST`` (e.g. a candidate model set), else models/manifest.yaml.
    A model's ``file`` and ``eval`` are relative to the manifest unless absolute."""
    path = path or Path(os.environ.get(MANIFEST_ENV) or MODELS_DIR / "manifest.yaml")
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ManifestError(f"{path}: cannot read the model manifest: {exc}") from None
    base = path.parent
    entries = []
    for i, raw in enumerate((doc or {}).get("models") or []):
        try:
            quality = raw["quality"]
            entries.append(
                ModelEntry(
                    name=raw["name"],
                    variant=raw["variant"],
                    file=base / raw["file"],
                    sha256=raw["sha256"],
                    task=raw["task"],
                    eval=base / raw["eval"],
                    inputs=list(raw["inputs"]),
                    outputs=list(raw["outputs"]),
                    quality=Quality(
                        metric=quality["metric"],
                        value=float(quality["value"]),
                        tolerance=float(quality["tolerance"]),
                    ),
                    classes=raw.get("classes"),
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"{path}: models[{i}]: missing or bad key {exc}") from None
    if not entries:
        raise ManifestError(f"{path}: lists no models")
    return entries
