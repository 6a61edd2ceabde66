"""Read a run directory for a report: records, raw samples, and what is missing.

Raw samples (what a comparison between runs can test) come from two places:

- ``inference/<gateway>-<model>-<variant>-t<threads>.json.gz``: every timed inference of
  the latency windows (``windows[].latencies_ns``), as series ``latency.per_inference``;
- measurements recorded more than once for one series (a series is suite, test, metric,
  unit, gateway and the identifying parameters :data:`IDENTITY_KEYS`): per-probe mesh
  fates (``mesh.probe.delivered``, 0/1), per-child recovery times, and the round-trip
  times of delivered probes (``rtt_s``, as series ``mesh.probe.rtt``).

Everything else is one summary value per series and run (e.g. energy per inference, the
median over the trusted windows): shown, but not testable between runs.

Probes of ``test_attenuation_sweep`` carry no attenuation: it is taken from the summary
(``mesh.attenuation.sent``) recorded right after each level's probes, in record order.

Every value read is passed through :func:`bench.report.redact.redact`.
"""

from __future__ import annotations

import gzip
import json
import math
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd

from bench.errors import BenchError
from bench.report.redact import redact
from bench.report.stats import FloatArray, Statistic
from bench.results import RunStore
from bench.results.store import (
    EVENTS_JSONL,
    INVENTORY_JSON,
    MEASUREMENTS_JSONL,
    MEASUREMENTS_PARQUET,
    OUTCOMES_JSONL,
    OUTCOMES_PARQUET,
    read_jsonl,
)

#: parameters that tell two series of one metric apart (the rest describe the stack)
IDENTITY_KEYS: Final = (
    *("model", "variant", "threads", "delegate"),
    *("hops", "attenuation_db", "phase", "backhaul"),
    *("device", "artifact"),
)
LATENCY_SERIES: Final = "latency.per_inference"
RTT_SERIES: Final = "mesh.probe.rtt"
#: raw samples kept per series (a uniform random subset beyond this; quantiles use all)
DEFAULT_MAX_SAMPLES: Final = 2000
#: points per series kept for strip plots
STRIP_POINTS: Final = 150
QUANTILES: Final = {"p1": 1, "p25": 25, "p50": 50, "p75": 75, "p90": 90, "p99": 99}
#: suites a full nightly run has; one absent is said to be "not in this run"
KNOWN_SUITES: Final = ("smoke", "inference", "power", "mesh", "liveness", "rollback")

Progress = Callable[[str], None]


class ReportInputError(BenchError):
    """A run directory a report cannot read."""


def param_text(value: Any) -> str:
    """A parameter value as text: ``1.0`` -> ``1``, ``None`` -> ``none``."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, float):
        return f"{value:g}"
    return "none" if value is None else str(value)


@dataclass(frozen=True, order=True)
class SeriesKey:
    """What one series of values measures; equal keys are comparable across runs."""

    suite: str
    test: str
    metric: str
    unit: str
    gateway: str
    params: tuple[tuple[str, str], ...] = ()

    @property
    def context(self) -> str:
        """The identifying parameters as ``k=v, ...``."""
        return ", ".join(f"{k}={v}" for k, v in self.params)

    @property
    def label(self) -> str:
        parts = [self.metric, self.gateway or "-", self.context]
        return " | ".join(p for p in parts if p)

    def param(self, name: str) -> str | None:
        return dict(self.params).get(name)

    def seed(self) -> int:
        """A stable seed for resampling this series (reports are reproducible)."""
        return zlib.crc32(repr(self).encode())


def series_key(
    suite: str, test: str, metric: str, unit: str, gateway: Any, params: dict[str, Any]
) -> SeriesKey:
    identity = tuple((k, param_text(params[k])) for k in IDENTITY_KEYS if k in params)
    return SeriesKey(suite, test, metric, unit, "" if gateway is None else str(gateway), identity)


@dataclass
class SampleSet:
    """Raw samples of one series in one run (a seeded random subset when there are many)."""

    key: SeriesKey
    values: FloatArray
    count: int  # samples in the run, before subsetting
    statistic: Statistic
    source: str
    quantiles: dict[str, float]
    mean: float

    @classmethod
    def of(
        cls, key: SeriesKey, values: FloatArray, statistic: Statistic, source: str, limit: int
    ) -> SampleSet:
        count = int(values.size)
        quantiles = dict(
            zip(QUANTILES, np.percentile(values, list(QUANTILES.values())), strict=True)
        )
        mean = float(values.mean())
        if count > limit:
            rng = np.random.default_rng(key.seed())
            values = rng.choice(values, size=limit, replace=False)
        return cls(
            key, values, count, statistic, source, {k: float(v) for k, v in quantiles.items()}, mean
        )

    @property
    def center(self) -> float:
        """The statistic that comparisons use: median, or mean for 0/1 outcomes."""
        return self.quantiles["p50"] if self.statistic == "median" else self.mean


@dataclass
class RunData:
    """One run as a report sees it (secrets already redacted)."""

    run_dir: Path
    info: dict[str, Any]
    measurements: pd.DataFrame  # MEASUREMENT_COLUMNS + "order"; parameters are dicts
    outcomes: pd.DataFrame
    events: list[dict[str, Any]]
    inventory: dict[str, dict[str, Any]]
    samples: dict[SeriesKey, SampleSet] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # what is missing or partial

    @property
    def run_id(self) -> str:
        return str(self.info.get("run_id"))

    @property
    def virtual(self) -> bool:
        return bool(self.info.get("virtual"))

    @property
    def complete(self) -> bool:
        return self.info.get("status") == "complete" and self.info.get("end") is not None

    @property
    def suites(self) -> list[str]:
        return sorted({str(s) for s in self.measurements["suite"].dropna()})

    @property
    def absent_suites(self) -> list[str]:
        """Suites of a full run that recorded nothing in this one."""
        return [s for s in KNOWN_SUITES if s not in self.suites]

    def board_of(self, gateway: str | None) -> str:
        inv = self.inventory.get(str(gateway)) or {}
        return str(inv.get("board_model") or inv.get("virtual_board") or "unknown board")

    def fingerprint_of(self, gateway: str | None) -> str:
        inv = self.inventory.get(str(gateway)) or {}
        return str(inv.get("fingerprint") or "unknown")


def _torn(path: Path) -> bool:
    """The file's last line has no newline: the writer was killed in the middle of it."""
    try:
        size = path.stat().st_size
        if size == 0:
            return False
        with path.open("rb") as f:
            f.seek(-1, 2)
            return f.read(1) != b"\n"
    except OSError:
        return False


def _read_json(path: Path, problems: list[str]) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        problems.append(f"{path.name} is unreadable ({exc}); reported without it")
        return None


def numeric_value(value: Any) -> float | None:
    """A finite number (bools as 0/1) as float, else None."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def _infer_sweep_levels(records: list[dict[str, Any]]) -> None:
    """Give sweep probes the attenuation of the summary recorded right after them."""
    pending: dict[str | None, list[dict[str, Any]]] = {}
    for rec in records:
        if rec.get("test") != "test_attenuation_sweep":
            continue
        params = rec["parameters"]
        if rec.get("metric") == "mesh.probe.delivered" and "attenuation_db" not in params:
            pending.setdefault(rec.get("gateway"), []).append(params)
        elif rec.get("metric") == "mesh.attenuation.sent" and "attenuation_db" in params:
            for probe in pending.pop(rec.get("gateway"), []):
                probe["attenuation_db"] = params["attenuation_db"]
                probe["attenuation_db_inferred"] = True


def _measurement_samples(
    records: Iterable[dict[str, Any]], limit: int
) -> dict[SeriesKey, SampleSet]:
    groups: dict[SeriesKey, list[float]] = {}
    binary: dict[SeriesKey, bool] = {}
    for rec in records:
        value = numeric_value(rec.get("value"))
        if value is None:
            continue
        params = rec["parameters"]
        key = series_key(
            rec["suite"], rec["test"], rec["metric"], rec["unit"], rec["gateway"], params
        )
        groups.setdefault(key, []).append(value)
        binary[key] = binary.get(key, True) and isinstance(rec.get("value"), bool)
        rtt = params.get("rtt_s")
        if rec["metric"] == "mesh.probe.delivered" and rec.get("value") is True and rtt is not None:
            rtt_key = series_key(rec["suite"], rec["test"], RTT_SERIES, "s", rec["gateway"], params)
            if (rtt_value := numeric_value(rtt)) is not None:
                groups.setdefault(rtt_key, []).append(rtt_value)
                binary[rtt_key] = False
    return {
        key: SampleSet.of(
            key,
            np.asarray(values, dtype=np.float64),
            "mean" if binary[key] else "median",
            f"{MEASUREMENTS_JSONL}: {len(values)} records",
            limit,
        )
        for key, values in groups.items()
        if len(values) >= 2
    }


def latency_file(gateway: str, model: str, variant: str, threads: str) -> str:
    """The raw latency file the inference suite writes for one configuration."""
    return f"inference/{gateway}-{model}-{variant}-t{threads}.json.gz"


def _latency_samples(
    run_dir: Path, measurements: pd.DataFrame, limit: int, problems: list[str]
) -> dict[SeriesKey, SampleSet]:
    found: dict[SeriesKey, SampleSet] = {}
    rows = measurements[measurements["metric"] == "latency.p50"]
    for _, row in rows.iterrows():
        params = row["parameters"]
        key = series_key(row["suite"], row["test"], LATENCY_SERIES, "us", row["gateway"], params)
        name = latency_file(
            str(row["gateway"]),
            *(param_text(params.get(k)) for k in ("model", "variant", "threads")),
        )
        path = run_dir / name
        try:
            raw = json.loads(gzip.decompress(path.read_bytes()))
            latencies = [ns for window in raw["windows"] for ns in window["latencies_ns"]]
        except FileNotFoundError:
            problems.append(f"raw latencies {name} missing: {key.label} cannot be tested")
            continue
        except (OSError, EOFError, ValueError, KeyError, TypeError, zlib.error) as exc:
            problems.append(f"raw latencies {name} unreadable ({exc}): {key.label} not tested")
            continue
        values = np.asarray(latencies, dtype=np.float64) / 1e3
        if values.size == 0 or not np.all(np.isfinite(values)):
            problems.append(f"raw latencies {name} hold no usable values")
            continue
        found[key] = SampleSet.of(key, values, "median", name, limit)
    return found


def _check_files(run_dir: Path, info: dict[str, Any], problems: list[str]) -> None:
    status, end = info.get("status"), info.get("end")
    if status == "running" or end is None:
        problems.append(
            f"the run did not finish (status {status}, no end time): it was killed mid-way "
            "or is still running; what it recorded before that is reported"
        )
    elif status != "complete":
        problems.append(f"the run ended with status {status}: it may lack later tests")
    for name in (MEASUREMENTS_JSONL, OUTCOMES_JSONL, EVENTS_JSONL):
        path = run_dir / name
        if not path.exists():
            problems.append(f"{name} is missing")
        elif _torn(path):
            problems.append(
                f"{name} ends in a torn line (killed while writing): that record is lost"
            )
    if status == "complete":
        for name in (MEASUREMENTS_PARQUET, OUTCOMES_PARQUET):
            if not (run_dir / name).exists():
                problems.append(f"{name} is missing (the tidy jsonl was used)")
    if not (run_dir / INVENTORY_JSON).exists():
        problems.append(f"{INVENTORY_JSON} is missing: no stacks or fingerprints for gateways")


def load_run(
    run_dir: Path,
    *,
    max_samples: int = DEFAULT_MAX_SAMPLES,
    raw_latencies: bool = True,
    progress: Progress | None = None,
) -> RunData:
    """Read ``run_dir`` (finished, killed or still running) for a report; without
    ``raw_latencies`` the per-inference files are not read (an index needs no samples)."""
    try:
        store = RunStore.open_existing(run_dir)
    except (FileNotFoundError, ValueError) as exc:
        raise ReportInputError(f"{exc}; give a run directory or 'latest'") from None
    info: dict[str, Any] = redact(store.run_info())
    problems: list[str] = []
    if progress is not None:
        progress(f"reading run {info.get('run_id')} ({run_dir})")
    _check_files(run_dir, info, problems)
    records = read_jsonl(run_dir / MEASUREMENTS_JSONL)
    for order, rec in enumerate(records):
        rec["order"] = order
        rec["parameters"] = redact(rec.get("parameters") or {})
        if rec.get("value") is None and rec["parameters"].get("nonfinite"):
            rec["value"] = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}.get(
                str(rec["parameters"]["nonfinite"])
            )
        if isinstance(rec.get("value"), str):
            rec["value"] = redact(rec["value"])
    _infer_sweep_levels(records)
    columns = ["run", "time", "gateway", "suite", "test", "metric", "value", "unit", "parameters"]
    measurements = pd.DataFrame.from_records(records, columns=[*columns, "order"])
    measurements["time"] = pd.to_datetime(measurements["time"], utc=True, format="ISO8601")
    outcomes = store.outcomes()
    outcomes["message"] = [redact(str(m)) if isinstance(m, str) else m for m in outcomes["message"]]
    events = [redact(e) for e in read_jsonl(run_dir / EVENTS_JSONL)]
    inventory_raw = _read_json(run_dir / INVENTORY_JSON, problems)
    inventory = redact(inventory_raw) if isinstance(inventory_raw, dict) else {}
    run = RunData(run_dir, info, measurements, outcomes, events, inventory, problems=problems)
    run.samples = _measurement_samples(records, max_samples)
    if raw_latencies and len(measurements):
        run.samples.update(_latency_samples(run_dir, measurements, max_samples, problems))
    return run


def newest_first(runs: Iterable[RunData]) -> list[RunData]:
    """Runs by start time (run ids sort by time), newest first."""
    return sorted(runs, key=lambda r: (str(r.info.get("start")), r.run_id), reverse=True)
