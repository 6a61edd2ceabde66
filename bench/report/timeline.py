"""Fault windows, rollout states and liveness verdicts on one time axis, from events.

Events the report understands (``events.jsonl``; ``message`` is JSON where noted):

- ``fault_apply`` / ``fault_remove`` (and ``*_failed``): a :class:`bench.faults` timeline
  event with ``kind``, ``target`` and ``wall``; an apply without a remove lasts to the end;
- ``liveness_verdict``: a liveness ``Verdict`` (``gateway``, ``state``, ``rule``, ``wall``);
- kinds starting ``rollout`` or ``update``: a ``RolloutEvent`` (``device``, ``kind``,
  ``to_state``, ``wall``, ``detail``); state changes become segments per device;
- kinds containing ``invariant``, and measurements named ``*.invariant.<name>``: invariant
  verdicts (``invariant``, ``ok`` or ``violations``, ``checked``; or ``{"verdicts": [...]}``).

Any other event is a mark on its gateway's row (or the bench's).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Final

import pandas as pd

from bench.report.load import RunData

BENCH_ROW: Final = "(bench)"
_INVARIANT_METRIC: Final = re.compile(r"(?:^|\.)invariants?\.(?P<name>[a-z0-9_]+)$")


@dataclass(frozen=True)
class Span:
    row: str
    lane: str  # fault, liveness, rollout
    start: datetime
    end: datetime | None  # None: still open when the records end
    label: str
    detail: str


@dataclass(frozen=True)
class Mark:
    row: str
    lane: str
    at: datetime
    label: str
    detail: str


@dataclass(frozen=True)
class InvariantResult:
    source: str
    invariant: str
    ok: bool | None
    checked: int | None
    violations: str


@dataclass
class Timeline:
    spans: list[Span] = field(default_factory=list)
    marks: list[Mark] = field(default_factory=list)
    invariants: list[InvariantResult] = field(default_factory=list)
    start: datetime | None = None
    end: datetime | None = None

    @property
    def rows(self) -> list[str]:
        return sorted({s.row for s in self.spans} | {m.row for m in self.marks})

    def lanes(self) -> set[str]:
        return {s.lane for s in self.spans} | {m.lane for m in self.marks}


def _time(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def _payload(event: dict[str, Any]) -> dict[str, Any] | None:
    message = event.get("message")
    if isinstance(message, dict):
        return message
    try:
        value = json.loads(str(message))
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _invariants_from(payload: dict[str, Any], source: str) -> list[InvariantResult]:
    items = payload.get("verdicts")
    entries = items if isinstance(items, list) else [payload]
    found = []
    for entry in entries:
        if not isinstance(entry, dict) or "invariant" not in entry:
            continue
        violations = entry.get("violations")
        ok = entry.get("ok")
        if ok is None and isinstance(violations, list):
            ok = not violations
        text = "; ".join(str(v) for v in violations) if isinstance(violations, list) else ""
        checked = entry.get("checked")
        found.append(
            InvariantResult(
                source,
                str(entry["invariant"]),
                None if ok is None else bool(ok),
                checked if isinstance(checked, int) else None,
                text,
            )
        )
    return found


def build_timeline(run: RunData) -> Timeline:
    """Everything in the run's events that has a place on the time axis."""
    t = Timeline()
    open_faults: dict[tuple[str, str, str], tuple[datetime, str]] = {}
    state_of: dict[tuple[str, str], tuple[datetime, str, str]] = {}  # (row, lane) -> open span
    times: list[datetime] = []

    def close(row: str, lane: str, at: datetime) -> None:
        opened = state_of.pop((row, lane), None)
        if opened is not None:
            t.spans.append(Span(row, lane, opened[0], at, opened[1], opened[2]))

    for event in run.events:
        kind = str(event.get("kind"))
        payload = _payload(event)
        data = payload or {}
        at = _time(data.get("wall")) or _time(event.get("time"))
        if at is None:
            continue
        times.append(at)
        gateway = event.get("gateway")
        row = str(gateway) if gateway else BENCH_ROW
        if kind.startswith("fault_"):
            ident = (row, str(data.get("kind")), str(data.get("target")))
            action = str(data.get("action") or kind.removeprefix("fault_"))
            if action == "apply":
                open_faults[ident] = (at, f"{ident[1]} {ident[2]} ({data.get('backend', '')})")
            elif action == "remove" and ident in open_faults:
                start, detail = open_faults.pop(ident)
                t.spans.append(Span(row, "fault", start, at, ident[1], detail))
            else:
                t.marks.append(Mark(row, "fault", at, action, str(data.get("message") or kind)))
        elif kind == "liveness_verdict" and payload is not None:
            row = str(data.get("gateway") or row)
            close(row, "liveness", at)
            state_of[(row, "liveness")] = (at, str(data.get("state")), str(data.get("rule") or ""))
        elif "invariant" in kind and payload is not None:
            t.invariants += _invariants_from(payload, f"event {kind}")
            t.marks.append(Mark(row, "rollout", at, "invariants", kind))
        elif kind.startswith(("rollout", "update")) and payload is not None:
            device = str(data.get("device") or row) or BENCH_ROW
            step = str(data.get("kind") or kind)
            detail = str(data.get("detail") or "")
            if data.get("to_state"):
                close(device, "rollout", at)
                state_of[(device, "rollout")] = (at, str(data["to_state"]), detail)
            else:
                t.marks.append(Mark(device, "rollout", at, step, detail))
        else:
            t.marks.append(Mark(row, "event", at, kind, str(event.get("message") or "")))
    for _, rec in run.measurements.iterrows():
        match = _INVARIANT_METRIC.search(str(rec["metric"]))
        if match is not None and isinstance(rec["value"], bool | int | float):
            t.invariants.append(InvariantResult(f"measurement {rec['metric']}", match["name"],
                                                bool(rec["value"]), None, ""))  # fmt: skip
    end = _time(run.info.get("end"))
    if times:
        t.start, t.end = min(times), max([*times, *([end] if end else [])])
    for (row, lane), (start, label, detail) in state_of.items():
        t.spans.append(Span(row, lane, start, None, label, detail))
    for (row, kind, _target), (start, detail) in open_faults.items():
        t.spans.append(Span(row, "fault", start, None, kind, detail + " (never removed)"))
    rows = {row: _gateway_row(row, run.inventory) for row in t.rows}
    t.spans = [replace(s, row=rows[s.row]) for s in t.spans]
    t.marks = [replace(m, row=rows[m.row]) for m in t.marks]
    return t


def _gateway_row(row: str, gateways: Iterable[str]) -> str:
    """The gateway a row is about: a fault target such as ``fr-virtual-gw2:wan0`` belongs
    on gw2's row, beside its update states and liveness verdicts."""
    if row in gateways:
        return row
    found = [
        g for g in gateways if re.search(rf"(?<![A-Za-z0-9]){re.escape(g)}(?![A-Za-z0-9])", row)
    ]
    return found[0] if len(found) == 1 else row


def timeline_table(run: RunData, t: Timeline) -> pd.DataFrame:
    rows = [
        {"run": run.run_id, "row": s.row, "lane": s.lane, "start": s.start.isoformat(),
         "end": None if s.end is None else s.end.isoformat(), "label": s.label, "detail": s.detail}
        for s in t.spans
    ] + [
        {"run": run.run_id, "row": m.row, "lane": m.lane, "start": m.at.isoformat(), "end": None,
         "label": m.label, "detail": m.detail}
        for m in t.marks
    ]  # fmt: skip
    columns = ["run", "row", "lane", "start", "end", "label", "detail"]
    return pd.DataFrame(rows, columns=columns).sort_values(["start", "row"]).reset_index(drop=True)


def invariants_table(run: RunData, t: Timeline) -> pd.DataFrame:
    rows = [
        {"run": run.run_id, "source": i.source, "invariant": i.invariant, "ok": i.ok,
         "checked": i.checked, "violations": i.violations}
        for i in t.invariants
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=["run", "source", "invariant", "ok", "checked", "violations"])
