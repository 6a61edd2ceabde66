"""Numbers for placement, pulled from recorded runs (read with :mod:`bench.report.load`).

Every number keeps where it came from: run id, metric, gateway and identifying parameters,
so a placement's output traces back to measurements.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.report.load import RunData, load_run, newest_first, numeric_value, param_text


class MeasuredError(BenchError):
    """Runs for placement cannot be found or read."""


@dataclass(frozen=True)
class Number:
    """One measured value and its source."""

    value: float
    unit: str
    run: str
    metric: str
    gateway: str | None
    params: dict[str, str] = field(default_factory=dict)

    @property
    def source(self) -> str:
        """``<run> <metric> [gateway] k=v,...`` (what to look up in the run's records)."""
        params = ",".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        parts = [self.run, self.metric, self.gateway or "", params]
        return " ".join(p for p in parts if p)

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "unit": self.unit,
            "run": self.run,
            "metric": self.metric,
            "gateway": self.gateway,
            "params": dict(self.params),
        }


def _board_names(run: RunData, gateway: str) -> set[str]:
    inv = run.inventory.get(gateway) or {}
    return {str(inv[k]).lower() for k in ("virtual_board", "board_model") if inv.get(k)}


class Measurements:
    """Runs to take numbers from, newest first; :meth:`find` returns the newest match."""

    def __init__(self, runs: Iterable[RunData]) -> None:
        self.runs = newest_first(runs)

    @classmethod
    def load(cls, runs_dir: Path, run_ids: Iterable[str] = ()) -> Measurements:
        """Every run under ``runs_dir``, or only ``run_ids`` (ids under it, or paths)."""
        wanted = list(run_ids)
        if wanted:
            dirs = []
            for rid in wanted:
                path = Path(rid) if "/" in rid else runs_dir / rid
                if not (path / "run.json").is_file():
                    raise MeasuredError(f"run {rid!r}: no {path}/run.json; give a run id in "
                                        f"{runs_dir} or a run directory")  # fmt: skip
                dirs.append(path)
        else:
            dirs = sorted(p.parent for p in runs_dir.glob("*/run.json"))
            if not dirs:
                raise MeasuredError(f"no runs in {runs_dir}; run the suites first or give "
                                    "--runs-dir")  # fmt: skip
        return cls(load_run(d, raw_latencies=False) for d in dirs)

    def find(
        self,
        metric: str,
        *,
        run: str | None = None,
        gateway: str | None = None,
        board: str | None = None,
        **params: Any,
    ) -> Number | None:
        """The newest record of ``metric`` matching run, gateway, board and ``params``."""
        wanted = {k: param_text(v) for k, v in params.items()}
        for data in self.runs:
            if run is not None and data.run_id != run:
                continue
            frame = data.measurements
            rows = frame[frame["metric"] == metric]
            for _, row in rows.iloc[::-1].iterrows():
                gw = row["gateway"] if isinstance(row["gateway"], str) else None  # None/NaN
                if gateway is not None and gw != gateway:
                    continue
                if board is not None and (
                    gw is None or board.lower() not in _board_names(data, gw)
                ):
                    continue
                rec_params = row["parameters"] or {}
                if any(param_text(rec_params.get(k)) != v for k, v in wanted.items()):
                    continue
                value = numeric_value(row["value"])
                if value is None:
                    continue
                return Number(value, str(row["unit"]), data.run_id, metric, gw, wanted)
        return None
