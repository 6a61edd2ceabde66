"""Run records: durable, append-as-you-measure storage of measurements and outcomes."""

from bench.results.store import (
    FINISH_STATUSES,
    OUTCOMES,
    Measurement,
    RunStore,
    Value,
    git_state,
    new_run_id,
    read_jsonl,
)
from bench.results.units import UNITS, check_metric, check_unit

__all__ = [
    "FINISH_STATUSES",
    "OUTCOMES",
    "UNITS",
    "Measurement",
    "RunStore",
    "Value",
    "check_metric",
    "check_unit",
    "git_state",
    "new_run_id",
    "read_jsonl",
]
