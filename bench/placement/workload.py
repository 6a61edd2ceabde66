"""Workload files: the decision a system must make, where its data is, how far each tier is.

Problems are reported as ONE line, ``<file>:<line>: <key.path>: <what is wrong>; <fix>``,
using the line-tracking YAML composer of :mod:`bench.rig`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bench.errors import BenchError, RigError
from bench.rig import _Composer, _line

TIERS = ("device", "gateway", "edge", "cloud")
Tier = Literal["device", "gateway", "edge", "cloud"]
Loc = tuple[str | int, ...]
PositiveNumber = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Distance = Annotated[float, Field(ge=0, le=40_000, allow_inf_nan=False)]


class WorkloadError(BenchError):
    """A workload file is missing or invalid; the message names file, line and key."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelRef(_Model):
    """A model of models/manifest.yaml: its id and variant, and the threads it runs with."""

    name: str
    variant: str
    threads: Annotated[int, Field(ge=1, le=64)] = 1


class Reduction(_Model):
    """The gateway sends events instead of raw telemetry."""

    event_rate_per_s: PositiveNumber
    event_bytes: Annotated[int, Field(gt=0)]


class StandIn(_Model):
    """Which run (and which of its gateways) stands for a tier's hardware."""

    run: str
    gateway: str


class TierSpec(_Model):
    """One tier: its distance from where the data originates, and who measured it."""

    distance_km: Distance
    runs_model: bool = True
    measured_by: StandIn | None = None


class Tiers(_Model):
    device: TierSpec = TierSpec(distance_km=0)
    gateway: TierSpec
    edge: TierSpec
    cloud: TierSpec


class Workload(_Model):
    """A decision: data rate and payload, model, latency budget, origin, tiers, runs."""

    name: str
    description: str = ""
    rate_per_s: PositiveNumber
    payload_bytes: Annotated[int, Field(gt=0)]
    model: ModelRef
    budget_ms: PositiveNumber
    origin: Literal["device", "gateway"]
    board: str | None = None
    gateway: str | None = None
    tiers: Tiers
    reduction: Reduction | None = None
    runs: list[str] = []

    def tier(self, name: str) -> TierSpec:
        spec: TierSpec = getattr(self.tiers, name)
        return spec


def _loc_text(loc: Loc) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _message(error: Any) -> str:
    kind, loc = error["type"], tuple(error["loc"])
    if kind == "missing":
        return "required key is missing"
    if kind == "extra_forbidden":
        return "unknown key; remove it or check its spelling"
    detail = str(error["msg"]).splitlines()[0]
    if kind.startswith("literal") and loc and loc[-1] == "origin":
        return f"{detail}, got {error.get('input')!r}"
    return f"{detail}, got {error.get('input')!r}" if "input" in error else detail


def _line_of(loc: Loc, lines: dict[Loc, int]) -> int:
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return 1


def parse_workload(text: str, source: str) -> Workload:
    """Validate workload YAML given as text; ``source`` names it in messages."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise WorkloadError(f"{source}:1: the file is empty; a workload needs name:, ...")
        composer = _Composer(loader, source)
        composer.lines[()] = _line(node)
        data = composer.build(node, ())
        lines = composer.lines
    except RigError as exc:
        raise WorkloadError(str(exc).replace("rig file", "workload file")) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}" if mark else source
        raise WorkloadError(
            f"{where}: YAML syntax error: {exc.problem or exc.context}; check the indentation"
        ) from None
    except yaml.YAMLError as exc:
        raise WorkloadError(f"{source}: invalid YAML: {' '.join(str(exc).split())}") from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise WorkloadError(
            f"{source}:1: the top level must be a mapping (name:, rate_per_s:, ...)"
        )
    try:
        return Workload.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        first = min(errors, key=lambda e: _line_of(tuple(e["loc"]), lines))
        loc = tuple(first["loc"])
        text_ = f"{source}:{_line_of(loc, lines)}: {_loc_text(loc)}: {_message(first)}"
        raise WorkloadError(" ".join(text_.splitlines())) from None


def load_workload(path: Path) -> Workload:
    """Load and validate a workload file; any problem is a one-line :class:`WorkloadError`."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise WorkloadError(f"{path}: no such file; give a workload .yaml file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise WorkloadError(f"{path}: cannot read it ({exc}); give a UTF-8 .yaml file") from None
    return parse_workload(text, str(path))
