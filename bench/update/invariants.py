"""Invariants and metrics of a finished rollout, checked against the devices' own truth.

:func:`check_rollout` takes a :class:`~bench.update.rollout.RolloutResult`, one
:class:`DeviceTruth` per device (read back from the device after the rollout) and the
expected payload sha256 per artifact name, and returns an :class:`InvariantReport`:

1. ``committed_version`` - each device ends on a committed version, old or new, whose
   payload matches its name: never "new payload under old name", nothing left pending;
2. ``view_matches_device`` - the orchestrator's view (its events, its record, a late
   answer it got) equals what the device runs, and the device's report equals its truth;
3. ``rollback_is_failure`` - an attempt that rolled back is never SUCCEEDED;
4. ``terminal_in_time`` - every attempt reaches a terminal state within its timeout plus
   ``grace_s``, through legal transitions only, and every execution ends terminal;
5. ``stops_widening`` - no execution starts after the abort criteria are met (recomputed
   from the events, not taken from the orchestrator) or after its abort decision, and in
   every window ``(t - 60 s, t]`` ending at a start the starts stay within the rate in
   force then (the exponential schedule recomputed from the events);
6. ``retries_bounded`` - retries per failure type within the retry criteria, one start per
   retry, none after REJECTED; download resumes within ``max_resumes`` when given.

The rules are those of :mod:`bench.update.rollout`, re-derived here from the event stream
so that a bug in the orchestrator's bookkeeping shows up as a violation. A violated
invariant is a finding about the system under test: :meth:`InvariantReport.assert_all`
raises :class:`InvariantViolation` (a DeviceFailure) with a one-line summary and the path
of a JSON evidence file (state sequences, device reports, verdicts, metrics).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.errors import BenchError, DeviceFailure
from bench.update.rollout import (
    EXECUTED,
    MARK_DETECTED,
    MARK_ROLLED_BACK,
    TERMINAL,
    WINDOW_S,
    ExecutionRecord,
    ExecutionStatus,
    FailureType,
    RolloutEvent,
    RolloutResult,
)

__all__ = [
    "INVARIANTS",
    "DeviceMetrics",
    "DeviceTruth",
    "InvariantInputError",
    "InvariantReport",
    "InvariantViolation",
    "RolloutMetrics",
    "Verdict",
    "Violation",
    "check_rollout",
    "state_sequence",
]

S = ExecutionStatus
INVARIANTS: tuple[str, ...] = (
    "committed_version",
    "view_matches_device",
    "rollback_is_failure",
    "terminal_in_time",
    "stops_widening",
    "retries_bounded",
)
_LEGAL: dict[str | None, frozenset[str]] = {
    None: frozenset({S.QUEUED}),
    S.QUEUED: frozenset({S.IN_PROGRESS, S.CANCELED}),
    S.IN_PROGRESS: frozenset({S.SUCCEEDED, S.FAILED, S.TIMED_OUT, S.REJECTED}),
    S.FAILED: frozenset({S.QUEUED}),
    S.TIMED_OUT: frozenset({S.QUEUED}),
}
_FAILURES = frozenset({S.FAILED, S.TIMED_OUT, S.REJECTED})


class InvariantInputError(BenchError):
    """The checker was given incomplete input (a device without truth, an unknown sha)."""


class InvariantViolation(DeviceFailure):
    """A rollout broke an invariant: a finding about the system under test."""


@dataclass(frozen=True)
class DeviceTruth:
    """What a device itself says after the rollout (read back from it, not from the
    orchestrator). ``before``: artifact installed before the rollout; ``installed``: the
    committed artifact name now; ``payload_sha256``: sha256 of the payload file on the
    device; ``pending``: an installed but uncommitted artifact; ``files``: evidence."""

    device: str
    before: str | None
    installed: str | None
    payload_sha256: str | None
    pending: str | None = None
    rolled_back: bool = False
    resumes: int | None = None
    files: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Violation:
    """One broken invariant on one device ("" for the rollout as a whole)."""

    invariant: str
    device: str
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        return f"{self.device}: {self.message}" if self.device else self.message


@dataclass(frozen=True)
class Verdict:
    """The outcome of one invariant: what was checked and every violation found."""

    invariant: str
    checked: int
    violations: tuple[Violation, ...]

    @property
    def ok(self) -> bool:
        return not self.violations


@dataclass(frozen=True)
class DeviceMetrics:
    """Timings of one device, in seconds from its reference: the fault's time when one was
    given for it, else the start of the attempt that failed (or of the first attempt)."""

    device: str
    final_status: str
    attempts: int
    reference_s: float | None  # rollout time the timings count from
    time_to_detect_s: float | None
    time_to_roll_back_s: float | None
    time_to_know_s: float | None  # until the orchestrator recorded the status it ends with
    rolled_back: bool
    false_rollback: bool
    stranded: bool


@dataclass(frozen=True)
class RolloutMetrics:
    """Rollout-wide figures and the per-device timings."""

    completion_s: float | None  # first start to last terminal state
    stranded: tuple[str, ...]
    false_rollbacks: tuple[str, ...]
    statuses: dict[str, int]
    devices: tuple[DeviceMetrics, ...]

    def measurements(self) -> list[dict[str, Any]]:
        """``{gateway, metric, value, unit}`` rows for :meth:`RunStore.record`."""
        rows: list[tuple[str | None, str, float | None, str]] = [
            (None, "rollout.stranded", len(self.stranded), "count"),
            (None, "rollout.false_rollbacks", len(self.false_rollbacks), "count"),
            (None, "rollout.completion_time", self.completion_s, "s"),
        ]
        for dev in self.devices:
            rows += [
                (dev.device, "rollout.time_to_detect", dev.time_to_detect_s, "s"),
                (dev.device, "rollout.time_to_roll_back", dev.time_to_roll_back_s, "s"),
                (dev.device, "rollout.time_to_know", dev.time_to_know_s, "s"),
            ]
        keys = ("gateway", "metric", "value", "unit")
        return [dict(zip(keys, row, strict=True)) for row in rows if row[2] is not None]


@dataclass(frozen=True)
class InvariantReport:
    """Every verdict, the metrics, and the evidence they rest on."""

    verdicts: tuple[Verdict, ...]
    metrics: RolloutMetrics
    evidence: dict[str, Any]
    evidence_path: Path | None = None

    @property
    def ok(self) -> bool:
        return all(v.ok for v in self.verdicts)

    @property
    def violations(self) -> list[Violation]:
        return [x for v in self.verdicts for x in v.violations]

    def verdict(self, invariant: str) -> Verdict:
        """The verdict of one invariant by name (see INVARIANTS)."""
        for v in self.verdicts:
            if v.invariant == invariant:
                return v
        raise InvariantInputError(f"no invariant {invariant!r}; known: {', '.join(INVARIANTS)}")

    def summary(self) -> str:
        """One line: which invariants failed, with the first violation of each."""
        failed = [v for v in self.verdicts if not v.ok]
        if not failed:
            return f"rollout invariants: all {len(self.verdicts)} hold"
        parts = []
        for v in failed:
            more = f" (+{len(v.violations) - 1} more)" if len(v.violations) > 1 else ""
            parts.append(f"{v.invariant}: {v.violations[0].line()}{more}")
        return f"rollout invariants: {len(failed)} of {len(self.verdicts)} violated - " + "; ".join(
            parts
        )

    def write_evidence(self, path: Path) -> Path:
        """Write the evidence, verdicts and metrics as JSON to ``path``; return it."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "summary": self.summary(),
            "verdicts": [asdict(v) | {"ok": v.ok} for v in self.verdicts],
            "metrics": asdict(self.metrics),
            **self.evidence,
        }
        path.write_text(json.dumps(doc, indent=1, default=str) + "\n")
        return path

    def assert_all(self, evidence_path: Path | None = None) -> None:
        """Raise InvariantViolation (summary + evidence file) unless every invariant holds.

        The evidence goes to ``evidence_path``, else to the report's own path, else to a new
        file in the temp directory."""
        if self.ok:
            return
        target = evidence_path or self.evidence_path
        if target is None:
            with tempfile.NamedTemporaryFile(
                prefix="fieldrig-rollout-evidence-", suffix=".json", delete=False
            ) as handle:
                target = Path(handle.name)
        written = self.write_evidence(target)
        raise InvariantViolation(f"{self.summary()} [evidence: {written}]")


# --- entry point ---------------------------------------------------------------------------


def check_rollout(
    result: RolloutResult,
    truths: Iterable[DeviceTruth],
    expected_sha256: Mapping[str, str],
    *,
    grace_s: float = 5.0,
    max_resumes: int | None = None,
    new_payload_good: bool | None = None,
    fault_at_s: Mapping[str, float] | None = None,
    deadline_s: float | None = None,
    evidence_path: Path | None = None,
) -> InvariantReport:
    """Check all six invariants and compute the metrics.

    ``expected_sha256`` maps artifact names (the new one and every device's old one) to
    the payload's sha256. ``new_payload_good`` is the ground truth for false rollbacks;
    ``fault_at_s`` (per device, rollout seconds) the reference for the timings;
    ``deadline_s`` (rollout seconds, default the rollout's end) the stranded cut-off.
    A FaultTimeline event at ``t_s`` is at ``timeline.t0 + t_s - result.t0`` rollout
    seconds (both are ``time.monotonic()`` readings with the default RealClock). Read the
    devices back after :meth:`Rollout.wait_stragglers`, so no update is still running.
    With ``evidence_path`` the evidence JSON is written there at once.
    """
    by_device = _truths(result, truths)
    _check_expected(result, by_device, expected_sha256)
    if grace_s < 0:
        raise InvariantInputError(f"check_rollout: grace_s {grace_s!r} must be >= 0")
    verdicts = (
        _committed_version(result, by_device, expected_sha256),
        _view_matches_device(result, by_device),
        _rollback_is_failure(result, by_device),
        _terminal_in_time(result, grace_s),
        _stops_widening(result),
        _retries_bounded(result, by_device, max_resumes),
    )
    metrics = _metrics(result, by_device, new_payload_good, dict(fault_at_s or {}), deadline_s)
    evidence = {
        "job": asdict(result.job),
        "config": result.config.to_dict(),
        "aborted": None if result.aborted is None else asdict(result.aborted),
        "errors": list(result.errors),
        "expected_sha256": dict(expected_sha256),
        "devices": {
            name: {
                "state_sequence": state_sequence(result, name),
                "orchestrator": asdict(result.executions[name]),
                "truth": asdict(by_device[name]),
            }
            for name in result.devices
        },
        "events": [e.to_dict() for e in result.events],
    }
    report = InvariantReport(verdicts, metrics, evidence, evidence_path)
    if evidence_path is not None:
        report.write_evidence(evidence_path)
    return report


def state_sequence(result: RolloutResult, device: str) -> list[str]:
    """The device's states in order, e.g. ``[QUEUED, IN_PROGRESS, FAILED, QUEUED, ...]``."""
    return [str(e.to_state) for e in result.events if e.kind == "state" and e.device == device]


def _truths(result: RolloutResult, truths: Iterable[DeviceTruth]) -> dict[str, DeviceTruth]:
    by_device = {t.device: t for t in truths}
    missing = [name for name in result.devices if name not in by_device]
    if missing:
        raise InvariantInputError(
            f"check_rollout: no DeviceTruth for {', '.join(missing)}; read every device back "
            "before checking"
        )
    unknown = [name for name in result.devices if name not in result.executions]
    if unknown:
        raise InvariantInputError(f"check_rollout: no execution record for {', '.join(unknown)}")
    return by_device


def _check_expected(
    result: RolloutResult, truths: Mapping[str, DeviceTruth], expected: Mapping[str, str]
) -> None:
    names = {result.job.artifact_name} | {t.before for t in truths.values() if t.before is not None}
    missing = sorted(n for n in names if n not in expected)
    if missing:
        raise InvariantInputError(
            f"check_rollout: expected_sha256 lacks {', '.join(missing)}; give the sha256 of "
            "the new artifact's payload and of every device's old one"
        )


# --- the six invariants --------------------------------------------------------------------


class _Findings:
    """Collects the violations of one invariant."""

    def __init__(self, invariant: str) -> None:
        self.invariant = invariant
        self.items: list[Violation] = []

    def add(self, device: str, message: str, evidence: dict[str, Any]) -> None:
        self.items.append(Violation(self.invariant, device, message, evidence))

    def verdict(self, checked: int) -> Verdict:
        return Verdict(self.invariant, checked, tuple(self.items))


def _committed_version(
    result: RolloutResult, truths: Mapping[str, DeviceTruth], expected: Mapping[str, str]
) -> Verdict:
    new = result.job.artifact_name
    found = _Findings("committed_version")
    for name in result.devices:
        truth = truths[name]
        ev = {"truth": asdict(truth), "expected_sha256": dict(expected)}
        if truth.pending is not None:
            found.add(name, f"update {truth.pending!r} installed but not committed (pending)", ev)
        if truth.installed is None:
            if truth.before is not None:
                found.add(name, "no installed artifact reported", ev)
            continue
        if truth.installed not in (truth.before, new):
            found.add(name, f"runs {truth.installed!r}, neither the old {truth.before!r} nor "
                      f"the new {new!r}", ev)  # fmt: skip
            continue
        want = expected[truth.installed]
        sha = truth.payload_sha256
        if sha is None:
            found.add(name, f"payload of {truth.installed!r} missing or unreadable", ev)
        elif sha != want:
            owners = sorted(n for n, s in expected.items() if s == sha)
            if truth.installed == truth.before and new in owners:
                message = f"new payload under old name: {truth.installed!r} holds {new!r}'s payload"
            elif owners:
                message = f"payload of {owners[0]!r} under the name {truth.installed!r}"
            else:
                message = (f"payload sha256 {sha[:12]} matches no known artifact (expected "
                           f"{want[:12]} for {truth.installed!r})")  # fmt: skip
            found.add(name, message, ev)
    return found.verdict(len(result.devices))


def _view_matches_device(result: RolloutResult, truths: Mapping[str, DeviceTruth]) -> Verdict:
    new = result.job.artifact_name
    found = _Findings("view_matches_device")
    for name in result.devices:
        record = result.executions[name]
        truth = truths[name]
        seq = state_sequence(result, name)
        ev = {"state_sequence": seq, "orchestrator": asdict(record), "truth": asdict(truth)}
        if not seq or seq[-1] != record.status:
            last_state = seq[-1] if seq else None
            found.add(name, f"record says {record.status}, the events end at {last_state}", ev)
        known = record.known_status
        should_run = new if known == S.SUCCEEDED else truth.before
        if truth.installed != should_run and known == S.TIMED_OUT:
            found.add(name, f"orchestrator has TIMED_OUT with no answer, device runs "
                      f"{truth.installed!r}", ev)  # fmt: skip
        elif truth.installed != should_run:
            found.add(name, f"orchestrator says {known}, so the device should run "
                      f"{should_run!r}, but it runs {truth.installed!r}", ev)  # fmt: skip
        last = record.attempts[-1] if record.attempts else None
        if last is not None and last.outcome is not None:
            reported = last.outcome.installed
            if reported is not None and reported != truth.installed:
                found.add(name, f"device reported {reported!r} after attempt {last.number} "
                          f"but runs {truth.installed!r}", ev)  # fmt: skip
    return found.verdict(len(result.devices))


def _rollback_is_failure(result: RolloutResult, truths: Mapping[str, DeviceTruth]) -> Verdict:
    new = result.job.artifact_name
    found = _Findings("rollback_is_failure")
    ended = {
        (e.device, e.attempt): str(e.to_state)
        for e in result.events
        if e.kind == "state" and e.to_state in EXECUTED
    }
    for name in result.devices:
        record = result.executions[name]
        truth = truths[name]
        marks = [e for e in result.events if e.device == name and e.kind == "mark"]
        ev = {
            "state_sequence": state_sequence(result, name),
            "marks": [m.to_dict() for m in marks],
            "orchestrator": asdict(record),
            "truth": asdict(truth),
        }
        for att in record.attempts:
            out = att.outcome
            if out is not None and out.rolled_back and out.status == S.SUCCEEDED:
                found.add(name, f"attempt {att.number} rolled back, device reported SUCCEEDED", ev)
        for mark in marks:
            rolled = mark.data.get("mark") == MARK_ROLLED_BACK
            if rolled and ended.get((name, mark.attempt)) == S.SUCCEEDED:
                found.add(name, f"attempt {mark.attempt} marked a rollback, ended SUCCEEDED", ev)
        if truth.rolled_back and record.known_status == S.SUCCEEDED and truth.installed != new:
            found.add(name, f"device rolled back to {truth.installed!r}, execution SUCCEEDED", ev)
    return found.verdict(len(result.devices))


def _terminal_in_time(result: RolloutResult, grace_s: float) -> Verdict:
    limit = result.config.in_progress_timeout_s + grace_s
    found = _Findings("terminal_in_time")
    for name in result.devices:
        events = [e for e in result.events if e.kind == "state" and e.device == name]
        ev = {"state_sequence": [str(e.to_state) for e in events], "limit_s": limit}
        state: str | None = None
        started: dict[int, float] = {}
        for e in events:
            if e.from_state != state:
                found.add(name, f"event {e.seq} goes {e.from_state} -> {e.to_state} but the "
                          f"state was {state}", ev)  # fmt: skip
            elif e.to_state not in _LEGAL.get(state, frozenset()):
                found.add(name, f"illegal transition {state} -> {e.to_state} (event {e.seq})", ev)
            state = e.to_state
            if state == S.IN_PROGRESS:
                started[e.attempt] = e.t_s
            elif state in EXECUTED and e.attempt in started:
                took = e.t_s - started.pop(e.attempt)
                if took > limit:
                    found.add(name, f"attempt {e.attempt} took {took:.3f} s to reach {state}, "
                              f"over {limit:g} s (timeout + grace)", ev)  # fmt: skip
        for attempt, t_s in started.items():
            found.add(name, f"attempt {attempt} started at {t_s:.3f} s never ended", ev)
        if state not in TERMINAL:
            found.add(name, f"execution ends in {state}, not a terminal state", ev)
        if result.executions[name].status not in TERMINAL:
            found.add(name, f"orchestrator's record ends {result.executions[name].status}", ev)
    return found.verdict(len(result.devices))


def _stops_widening(result: RolloutResult) -> Verdict:
    found = _Findings("stops_widening")
    state: dict[str, str] = {}
    notified: set[str] = set()
    starts: list[float] = []
    met: RolloutEvent | None = None  # the event after which the abort criteria held
    decided = next((e for e in result.events if e.kind == "abort"), None)
    for e in result.events:
        if e.kind != "state":
            continue
        if e.to_state == S.IN_PROGRESS:
            succeeded = sum(1 for s in state.values() if s == S.SUCCEEDED)
            rate = result.config.rate.per_minute(len(notified), succeeded)
            window = [t for t in starts if t > e.t_s - WINDOW_S] + [e.t_s]
            ev = {"t_s": e.t_s, "window_starts_s": window, "rate_per_minute": rate,
                  "notified": len(notified), "succeeded": succeeded}  # fmt: skip
            if len(window) > rate:
                found.add(e.device, f"{len(window)} starts in the 60 s up to {e.t_s:.3f} s, "
                          f"the rate allows {rate}/min", ev)  # fmt: skip
            if met is not None:
                found.add(e.device, f"started at {e.t_s:.3f} s after the abort criteria held "
                          f"at {met.t_s:.3f} s (event {met.seq})", ev)  # fmt: skip
            elif decided is not None and e.seq > decided.seq:
                found.add(e.device, f"started at {e.t_s:.3f} s after the abort decision at "
                          f"{decided.t_s:.3f} s", ev)  # fmt: skip
            starts.append(e.t_s)
            notified.add(e.device)
        if e.to_state is not None:
            state[e.device] = e.to_state
        if met is None and _abort_met(result, state):
            met = e
    return found.verdict(len(starts))


def _abort_met(result: RolloutResult, state: Mapping[str, str]) -> bool:
    executed = [s for s in state.values() if s in EXECUTED]
    for c in result.config.abort:
        if c.failure_type is FailureType.ALL:
            failed = sum(1 for s in executed if s in _FAILURES)
        else:
            failed = sum(1 for s in executed if s == c.failure_type.value)
        enough = len(executed) >= c.min_executed
        if enough and failed * 100.0 >= c.threshold_percent * len(executed):
            return True
    return False


def _retries_bounded(
    result: RolloutResult, truths: Mapping[str, DeviceTruth], max_resumes: int | None
) -> Verdict:
    limits = {c.failure_type.value: c.retries for c in result.config.retry}
    overall = limits.get("ALL")
    found = _Findings("retries_bounded")
    for name in result.devices:
        events = [e for e in result.events if e.kind == "state" and e.device == name]
        used: dict[str, int] = {}
        starts = 0
        previous: str | None = None
        for e in events:
            if e.to_state == S.QUEUED and previous is not None:
                used[previous] = used.get(previous, 0) + 1
            starts += e.to_state == S.IN_PROGRESS
            previous = e.to_state
        ev = {"retries": used, "starts": starts, "retry_config": limits,
              "state_sequence": [str(e.to_state) for e in events]}  # fmt: skip
        for kind, count in sorted(used.items()):
            own = limits.get(kind)
            if kind not in (S.FAILED, S.TIMED_OUT):
                found.add(name, f"retried {count} time(s) after {kind}, never retried", ev)
            elif own is None and overall is None:
                found.add(name, f"retried {count} time(s) after {kind}, no criterion for it", ev)
            elif own is not None and count > own:
                found.add(name, f"retried {count} time(s) after {kind}, allowed {own}", ev)
        total = sum(used.values())
        if overall is not None and total > overall:
            found.add(name, f"retried {total} time(s) in all, criterion ALL allows {overall}", ev)
        if starts > total + 1:
            found.add(name, f"started {starts} times but only {total} retries were decided", ev)
        resumes = truths[name].resumes
        if max_resumes is not None and resumes is not None and resumes > max_resumes:
            found.add(name, f"download resumed {resumes} times, more than {max_resumes}", ev)
    return found.verdict(len(result.devices))


# --- metrics -------------------------------------------------------------------------------


def _metrics(
    result: RolloutResult,
    truths: Mapping[str, DeviceTruth],
    new_payload_good: bool | None,
    fault_at_s: dict[str, float],
    deadline_s: float | None,
) -> RolloutMetrics:
    events = result.events
    states = [e for e in events if e.kind == "state"]
    start_times = [e.t_s for e in states if e.to_state == S.IN_PROGRESS]
    end_times = [e.t_s for e in states if e.to_state in EXECUTED]
    completion = max(end_times) - min(start_times) if start_times and end_times else None
    if deadline_s is None:
        deadline_s = result.finished_s if result.finished_s is not None else float("inf")
    devices = [
        _device_metrics(
            result, name, truths[name], new_payload_good, fault_at_s.get(name), deadline_s
        )
        for name in result.devices
    ]
    statuses: dict[str, int] = {}
    for record in result.executions.values():
        statuses[record.status.value] = statuses.get(record.status.value, 0) + 1
    return RolloutMetrics(
        completion_s=None if completion is None else round(completion, 6),
        stranded=tuple(d.device for d in devices if d.stranded),
        false_rollbacks=tuple(d.device for d in devices if d.false_rollback),
        statuses=statuses,
        devices=tuple(devices),
    )


def _device_metrics(
    result: RolloutResult,
    name: str,
    truth: DeviceTruth,
    new_payload_good: bool | None,
    fault_at: float | None,
    deadline_s: float,
) -> DeviceMetrics:
    record: ExecutionRecord = result.executions[name]
    mine = [e for e in result.events if e.device == name]
    states = [e for e in mine if e.kind == "state"]
    after = fault_at if fault_at is not None else float("-inf")
    marks = [e for e in mine if e.kind == "mark" and e.t_s >= after]
    failures = [e for e in states if e.to_state in _FAILURES and e.t_s >= after]
    detected = next((e for e in marks if e.data.get("mark") == MARK_DETECTED), None)
    if detected is None and failures:
        detected = failures[0]
    rolled = next((e for e in marks if e.data.get("mark") == MARK_ROLLED_BACK), None)

    reference = fault_at
    if reference is None:
        anchor = detected.attempt if detected is not None else 1
        reference = next(
            (e.t_s for e in states if e.to_state == S.IN_PROGRESS and e.attempt == anchor), None
        )
    late = [e for e in mine if e.kind == "late"]
    terminal = [e for e in states if e.to_state in TERMINAL]
    known_at = late[-1].t_s if record.known_status != record.status and late else None
    if known_at is None and terminal:
        known_at = terminal[-1].t_s

    def since(t: float | None) -> float | None:
        return None if t is None or reference is None else round(t - reference, 6)

    rolled_back = (
        truth.rolled_back
        or rolled is not None
        or any(a.outcome is not None and a.outcome.rolled_back for a in record.attempts)
    )
    at_deadline = [e for e in states if e.t_s <= deadline_s]
    stranded = (not at_deadline or at_deadline[-1].to_state not in TERMINAL) or (
        truth.pending is not None
    )
    return DeviceMetrics(
        device=name,
        final_status=record.status.value,
        attempts=len(record.attempts),
        reference_s=reference,
        time_to_detect_s=since(detected.t_s if detected is not None else None),
        time_to_roll_back_s=since(rolled.t_s if rolled is not None else None),
        time_to_know_s=since(known_at),
        rolled_back=rolled_back,
        false_rollback=rolled_back and new_payload_good is True,
        stranded=stranded,
    )
