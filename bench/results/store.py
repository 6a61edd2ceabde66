"""Durable run records: one directory per pytest session against a rig.

Layout of ``<root>/<run-id>/``::

    run.json             what ran where: rig, git commit, versions, host, times, status
    measurements.jsonl   one tidy record per measurement, appended as it is recorded
    outcomes.jsonl       one record per test outcome
    events.jsonl         infrastructure events (health check failed, lab restarted, ...)
    inventory.json       {gateway: inventory dict}
    measurements.parquet written by finish() from measurements.jsonl
    outcomes.parquet     written by finish() from outcomes.jsonl

Every jsonl line is written with a single unbuffered ``write`` (so it is in the kernel
before ``record`` returns, and a killed process loses nothing it recorded); ``fsync=True``
also forces it to disk. Readers skip a torn last line.

In ``measurements.parquet`` the ``value`` column is float64 (numbers, with non-finite
values restored; null for str/bool values) and ``value_json`` holds every value exactly as
in the jsonl; ``parameters`` is a JSON string column; ``time`` is timestamp[us, UTC].
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import numbers
import os
import platform
import re
import secrets
import socket
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

import bench
from bench.results.units import check_metric, check_unit

Value = float | int | str | bool
JsonDict = dict[str, Any]

RUN_JSON: Final = "run.json"
MEASUREMENTS_JSONL: Final = "measurements.jsonl"
OUTCOMES_JSONL: Final = "outcomes.jsonl"
EVENTS_JSONL: Final = "events.jsonl"
INVENTORY_JSON: Final = "inventory.json"
MEASUREMENTS_PARQUET: Final = "measurements.parquet"
OUTCOMES_PARQUET: Final = "outcomes.parquet"

OUTCOMES: Final = ("passed", "failed", "skipped", "error", "xfailed", "xpassed")
FINISH_STATUSES: Final = ("complete", "interrupted")
MEASUREMENT_COLUMNS: Final = (
    "run",
    "time",
    "gateway",
    "suite",
    "test",
    "metric",
    "value",
    "unit",
    "parameters",
)
OUTCOME_COLUMNS: Final = ("run", "time", "test", "gateway", "outcome", "duration_s", "message")

_KIND_RE: Final = re.compile(r"[a-z][a-z0-9_.-]*")
_NONFINITE: Final = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
_MESSAGE_LIMIT: Final = 200

_MEASUREMENTS_SCHEMA: Final = pa.schema(
    [
        ("run", pa.string()),
        ("time", pa.timestamp("us", tz="UTC")),
        ("gateway", pa.string()),
        ("suite", pa.string()),
        ("test", pa.string()),
        ("metric", pa.string()),
        ("value", pa.float64()),
        ("value_json", pa.string()),
        ("unit", pa.string()),
        ("parameters", pa.string()),
    ]
)
_OUTCOMES_SCHEMA: Final = pa.schema(
    [
        ("run", pa.string()),
        ("time", pa.timestamp("us", tz="UTC")),
        ("test", pa.string()),
        ("gateway", pa.string()),
        ("outcome", pa.string()),
        ("duration_s", pa.float64()),
        ("message", pa.string()),
    ]
)


@dataclass(frozen=True)
class Measurement:
    """One tidy measurement record, exactly as written to measurements.jsonl."""

    run: str
    time: str  # ISO-8601 UTC with microseconds
    gateway: str | None
    suite: str
    test: str
    metric: str
    value: Value | None  # None only for a non-finite float (see parameters["nonfinite"])
    unit: str
    parameters: dict[str, Any]

    def to_dict(self) -> JsonDict:
        return asdict(self)


def utc_now_iso() -> str:
    """The current time as ISO-8601 UTC with microseconds."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def new_run_id(rig_name: str, now: datetime | None = None) -> str:
    """A sortable, unique run id such as ``20261127T082300Z-virtual-3f9a``."""
    when = datetime.now(UTC) if now is None else now
    when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    slug = re.sub(r"[^a-z0-9]+", "-", rig_name.lower()).strip("-") or "rig"
    return f"{when:%Y%m%dT%H%M%SZ}-{slug}-{secrets.token_hex(2)}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 16), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _git(repo: Path, *args: str) -> str | None:
    try:
        proc = subprocess.run(
            ["git", "-C", str(repo), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def git_state(repo: Path) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the checkout containing ``repo``; (None, None) outside git."""
    commit = _git(repo, "rev-parse", "--verify", "HEAD")
    if commit is None:
        return None, None
    status = _git(repo, "status", "--porcelain")
    return commit.strip(), None if status is None else bool(status.strip())


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, allow_nan=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_parquet_atomic(path: Path, table: pa.Table) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(table, tmp)  # type: ignore[no-untyped-call]  # pyarrow stub gap
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_jsonl(path: Path) -> list[JsonDict]:
    """Records of a jsonl file; a torn last line is skipped silently, other bad lines warned."""
    try:
        lines = path.read_bytes().split(b"\n")
    except FileNotFoundError:
        return []
    records: list[JsonDict] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:  # JSONDecodeError and UnicodeDecodeError
            if number != len(lines):  # not the (torn) last line
                warnings.warn(f"{path}:{number}: skipped an unreadable line", stacklevel=2)
            continue
        if isinstance(obj, dict):
            records.append(obj)
    return records


def _normalise_value(value: Value, parameters: dict[str, Any]) -> tuple[Value | None, JsonDict]:
    if isinstance(value, bool | str):
        return value, parameters
    if isinstance(value, numbers.Integral):
        return int(value), parameters
    if isinstance(value, numbers.Real):
        number = float(value)
        if math.isfinite(number):
            return number, parameters
        kind = "nan" if math.isnan(number) else ("inf" if number > 0 else "-inf")
        return None, {**parameters, "nonfinite": kind}
    raise TypeError(f"value must be float, int, str or bool, not {type(value).__name__}")


def _restored_value(record: JsonDict) -> Any:
    value = record.get("value")
    if value is None:
        params = record.get("parameters")
        if isinstance(params, dict):
            return _NONFINITE.get(str(params.get("nonfinite")))
    return value


def _one_line(message: str) -> str:
    lines = message.strip().splitlines()
    line = lines[0].strip() if lines else ""
    return line if len(line) <= _MESSAGE_LIMIT else line[: _MESSAGE_LIMIT - 1] + "\u2026"


def _frame(records: Iterable[JsonDict], columns: tuple[str, ...]) -> pd.DataFrame:
    frame = pd.DataFrame.from_records(list(records), columns=list(columns))
    frame["time"] = pd.to_datetime(frame["time"], utc=True, format="ISO8601")
    return frame


def _parse_time(text: Any) -> datetime | None:
    return None if text is None else datetime.fromisoformat(str(text))


class _Appender:
    """Appends whole lines to a file with one unbuffered write each (optionally fsynced)."""

    def __init__(self, path: Path, fsync: bool) -> None:
        self._path = path
        self._fsync = fsync
        self._fd: int | None = None

    def append(self, obj: JsonDict) -> None:
        data = memoryview((json.dumps(obj, allow_nan=False) + "\n").encode("utf-8"))
        if self._fd is None:
            self._fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        while data:
            data = data[os.write(self._fd, data) :]
        if self._fsync:
            os.fsync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class RunStore:
    """The record of one run. Create with :meth:`create`, read with :meth:`open_existing`."""

    def __init__(self, run_dir: Path, info: JsonDict, *, writable: bool, fsync: bool) -> None:
        self.run_dir = run_dir
        self.run_id: str = str(info["run_id"])
        self._info = info
        self._writable = writable
        self._lock = threading.Lock()
        self._measurements = _Appender(run_dir / MEASUREMENTS_JSONL, fsync)
        self._outcomes = _Appender(run_dir / OUTCOMES_JSONL, fsync)
        self._events = _Appender(run_dir / EVENTS_JSONL, fsync)

    @classmethod
    def create(
        cls,
        root: Path,
        *,
        rig_name: str,
        rig_path: Path | None,
        rig_sha256: str | None,
        virtual: bool,
        argv: list[str] | None = None,
        repo_dir: Path | None = None,
        fsync: bool = False,
    ) -> RunStore:
        """Make ``root/<run-id>/`` and write run.json with status "running"."""
        root.mkdir(parents=True, exist_ok=True)
        while True:
            run_id = new_run_id(rig_name)
            try:
                (root / run_id).mkdir()
                break
            except FileExistsError:
                continue
        run_dir = root / run_id
        if rig_sha256 is None and rig_path is not None and rig_path.is_file():
            rig_sha256 = sha256_file(rig_path)
        commit, dirty = git_state(Path.cwd() if repo_dir is None else repo_dir)
        info: JsonDict = {
            "format": 1,
            "run_id": run_id,
            "rig_name": rig_name,
            "rig_path": None if rig_path is None else str(rig_path.resolve()),
            "rig_sha256": rig_sha256,
            "virtual": virtual,
            "git_commit": commit,
            "git_dirty": dirty,
            "fieldrig_version": bench.__version__,
            "python_version": platform.python_version(),
            "platform": platform.platform(),
            "hostname": socket.gethostname(),
            "start": utc_now_iso(),
            "end": None,
            "argv": list(sys.argv if argv is None else argv),
            "status": "running",
        }
        for name in (MEASUREMENTS_JSONL, OUTCOMES_JSONL, EVENTS_JSONL):
            (run_dir / name).touch()
        _write_json_atomic(run_dir / RUN_JSON, info)
        return cls(run_dir, info, writable=True, fsync=fsync)

    @classmethod
    def open_existing(cls, run_dir: Path) -> RunStore:
        """Open a run directory (finished, running or killed) for reading."""
        try:
            info = json.loads((run_dir / RUN_JSON).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"{run_dir} is not a run directory (no {RUN_JSON})") from None
        if not isinstance(info, dict) or "run_id" not in info:
            raise ValueError(f"{run_dir / RUN_JSON} is not a fieldrig run record")
        return cls(run_dir, info, writable=False, fsync=False)

    @classmethod
    def join(cls, run_dir: Path) -> RunStore:
        """Append to a running run that another process created and will finish (the
        workers of ``pytest -n``): every record is one ``write`` to an O_APPEND file, so
        records of several processes never mix within a line."""
        store = cls.open_existing(run_dir)
        if store._info.get("status") != "running":
            raise ValueError(f"run {store.run_id} is not running; cannot join it")
        store._writable = True
        return store

    def detach(self) -> None:
        """Stop appending (a joined process leaving); the creator still finishes the run."""
        with self._lock:
            self._writable = False
            for appender in (self._measurements, self._outcomes, self._events):
                appender.close()

    def _check_writable(self) -> None:
        if not self._writable:
            raise RuntimeError(f"run {self.run_id} is read-only (opened or already finished)")

    def record(
        self,
        *,
        gateway: str | None,
        suite: str,
        test: str,
        metric: str,
        value: Value,
        unit: str,
        parameters: dict[str, Any] | None = None,
    ) -> Measurement:
        """Validate, append and flush one measurement; return it as stored."""
        check_metric(metric)
        check_unit(unit)
        params = dict(parameters or {})
        if not all(isinstance(key, str) for key in params):
            raise ValueError(f"parameters of {metric!r} must have str keys")
        stored, params = _normalise_value(value, params)
        try:
            json.dumps(params, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"parameters of {metric!r} must be finite JSON: {exc}") from exc
        measurement = Measurement(
            self.run_id, utc_now_iso(), gateway, suite, test, metric, stored, unit, params
        )
        with self._lock:
            self._check_writable()
            self._measurements.append(measurement.to_dict())
        return measurement

    def record_outcome(
        self,
        *,
        test: str,
        gateway: str | None,
        outcome: str,
        duration_s: float,
        message: str = "",
    ) -> None:
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}; valid outcomes are: {OUTCOMES}")
        if not math.isfinite(duration_s) or duration_s < 0:
            raise ValueError(f"duration_s must be finite and >= 0, not {duration_s!r}")
        record: JsonDict = {
            "run": self.run_id,
            "time": utc_now_iso(),
            "test": test,
            "gateway": gateway,
            "outcome": outcome,
            "duration_s": float(duration_s),
            "message": _one_line(message),
        }
        with self._lock:
            self._check_writable()
            self._outcomes.append(record)

    def record_event(self, *, gateway: str | None, kind: str, message: str) -> None:
        if _KIND_RE.fullmatch(kind) is None:
            raise ValueError(f"bad event kind {kind!r}: use e.g. 'health_check_failed'")
        record: JsonDict = {
            "run": self.run_id,
            "time": utc_now_iso(),
            "gateway": gateway,
            "kind": kind,
            "message": message,
        }
        with self._lock:
            self._check_writable()
            self._events.append(record)

    def set_inventory(self, inventory: dict[str, dict[str, Any]]) -> None:
        """Write inventory.json ({gateway: inventory}), replacing any earlier one."""
        with self._lock:
            self._check_writable()
            _write_json_atomic(self.run_dir / INVENTORY_JSON, inventory)

    def finish(self, status: str = "complete") -> list[str]:
        """Close the jsonl files, write the parquet files and the final run.json.

        Returns warnings (e.g. a parquet file that could not be written); the jsonl files
        are kept whatever happens.
        """
        if status not in FINISH_STATUSES:
            raise ValueError(f"unknown status {status!r}; valid: {FINISH_STATUSES}")
        with self._lock:
            self._check_writable()
            self._writable = False
            for appender in (self._measurements, self._outcomes, self._events):
                appender.close()
        problems: list[str] = []
        for target, build in (
            (MEASUREMENTS_PARQUET, self._measurements_table),
            (OUTCOMES_PARQUET, self._outcomes_table),
        ):
            try:
                _write_parquet_atomic(self.run_dir / target, build())
            except Exception as exc:
                problems.append(f"could not write {target} ({exc}); the jsonl file is kept")
        self._info.update(end=utc_now_iso(), status=status)
        _write_json_atomic(self.run_dir / RUN_JSON, self._info)
        return problems

    def _measurements_table(self) -> pa.Table:
        rows = []
        for rec in read_jsonl(self.run_dir / MEASUREMENTS_JSONL):
            value = _restored_value(rec)
            numeric = isinstance(value, int | float) and not isinstance(value, bool)
            rows.append(
                {
                    **rec,
                    "time": _parse_time(rec.get("time")),
                    "value": float(value) if numeric else None,
                    "value_json": json.dumps(rec.get("value")),
                    "parameters": json.dumps(rec.get("parameters") or {}, sort_keys=True),
                }
            )
        return pa.Table.from_pylist(rows, schema=_MEASUREMENTS_SCHEMA)

    def _outcomes_table(self) -> pa.Table:
        rows = [
            {**rec, "time": _parse_time(rec.get("time"))}
            for rec in read_jsonl(self.run_dir / OUTCOMES_JSONL)
        ]
        return pa.Table.from_pylist(rows, schema=_OUTCOMES_SCHEMA)

    def measurements(self) -> pd.DataFrame:
        """All measurements from measurements.jsonl (non-finite values restored)."""
        records = read_jsonl(self.run_dir / MEASUREMENTS_JSONL)
        for rec in records:
            rec["value"] = _restored_value(rec)
        return _frame(records, MEASUREMENT_COLUMNS)

    def outcomes(self) -> pd.DataFrame:
        return _frame(read_jsonl(self.run_dir / OUTCOMES_JSONL), OUTCOME_COLUMNS)

    def run_info(self) -> JsonDict:
        return copy.deepcopy(self._info)
