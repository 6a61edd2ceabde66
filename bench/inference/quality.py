"""The accuracy gate: a fast wrong answer is a failure of the device, not a number."""

from __future__ import annotations

from bench.errors import DeviceFailure
from bench.inference.manifest import ModelEntry
from bench.inference.runner import InferenceRun


class QualityGateFailed(DeviceFailure):
    """The model's quality on the board fell below the manifest's value minus tolerance."""


def check_quality(model: ModelEntry, run: InferenceRun) -> float:
    """The measured quality, or QualityGateFailed naming model, gateway, runtime and numbers."""
    accuracy = run.raw["accuracy"]
    value = float(accuracy["value"])
    if accuracy["metric"] != model.quality.metric:
        raise ValueError(f"{model.id}: measured {accuracy['metric']}, manifest has "
                         f"{model.quality.metric}")  # fmt: skip
    if value < model.quality.floor:
        raise QualityGateFailed(
            f"{model.id} on {run.gateway}: {accuracy['metric']} {value:.4f} is below "
            f"{model.quality.value:.4f} - {model.quality.tolerance} over {accuracy['samples']} "
            f"samples ({run.stack['runtime']} {run.stack['runtime_version']}, "
            f"delegate {run.stack['delegate']})"
        )
    return value
