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
   retry, none after REJECTED; download resumes within ``max_resumes`` when given, both as
   the device reports them (``DeviceTruth.resumes``) and as the artifact server saw them
   (Range requests in its log, :class:`DeviceDownload`).

Metrics (:class:`RolloutMetrics`) count from each device's fault START (the moment the
bench began to apply it, so a power cut that kills the device before ``apply()`` returns
is still before its detection): time to detect, to roll back (the client's rollback, or a
later attempt rolling back the install a fault left pending), until the orchestrator
knows; completion time; stranded devices; false rollbacks; and bytes the artifact server
sent each device for its own artifact over that artifact's size (:func:`device_download`
reads them from the server's log). :func:`fault_phase` says, from the server's log and the
device's step marks, in which phase of the update a fault landed.

The rules are those of :mod:`bench.update.rollout`, re-derived here from the event stream
so that a bug in the orchestrator's bookkeeping shows up as a violation. A violated
invariant is a finding about the system under test: :meth:`InvariantReport.assert_all`
raises :class:`InvariantViolation` (a DeviceFailure) with a one-line summary and the path
of a JSON evidence file (state sequences, device reports and files, the fault timeline,
verdicts, metrics, downloads).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.errors import BenchError, DeviceFailure
from bench.update.rollout import (
    EXECUTED,
    MARK_DETECTED,
    MARK_RECOVERED,
    MARK_ROLLED_BACK,
    TERMINAL,
    WINDOW_S,
    ExecutionRecord,
    ExecutionStatus,
    FailureType,
    RolloutEvent,
    RolloutResult,
)
from bench.update.server import RequestRecord

__all__ = [
    "INVARIANTS",
    "PHASES",
    "DeviceDownload",
    "DeviceMetrics",
    "DeviceTruth",
    "FaultPhase",
    "InvariantInputError",
    "InvariantReport",
    "InvariantViolation",
    "RolloutMetrics",
    "Transfer",
    "Verdict",
    "Violation",
    "check_rollout",
    "device_download",
    "fault_phase",
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
    device; ``pending``: an installed but uncommitted artifact; ``resumes``: how often the
    download resumed (None: the backend cannot tell); ``files``: the device files that
    prove the state (they go into the evidence file)."""

    device: str
    before: str | None
    installed: str | None
    payload_sha256: str | None
    pending: str | None = None
    rolled_back: bool = False
    resumes: int | None = None
    files: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Transfer:
    """One GET of a device's artifact as the artifact server logged it; times in rollout
    seconds (``end_s``: its last byte was written, or it broke off)."""

    start_s: float
    end_s: float
    offset: int  # first byte sent: 0, or where a Range request resumed
    sent: int
    expected: int
    error: str | None = None

    @property
    def complete(self) -> bool:
        return self.sent == self.expected


@dataclass(frozen=True)
class DeviceDownload:
    """Every transfer of one device's own artifact (``path`` on the server, ``size``
    bytes) during one rollout, in the order the server logged them."""

    device: str
    path: str
    size: int
    transfers: tuple[Transfer, ...] = ()

    @property
    def bytes_sent(self) -> int:
        return sum(t.sent for t in self.transfers)

    @property
    def unique_bytes(self) -> int:
        """Distinct bytes of the artifact sent at least once (the union of the spans)."""
        spans = sorted((t.offset, t.offset + t.sent) for t in self.transfers if t.sent)
        total, reach = 0, 0
        for lo, hi in spans:
            lo = max(lo, reach)
            if hi > lo:
                total, reach = total + hi - lo, hi
        return total

    @property
    def resent_bytes(self) -> int:
        """Bytes sent more than once (a restart or an overlapping resume)."""
        return self.bytes_sent - self.unique_bytes

    @property
    def range_requests(self) -> int:
        """Transfers that resumed with a Range (the server's count of resumes)."""
        return sum(1 for t in self.transfers if t.offset > 0)

    @property
    def ratio(self) -> float | None:
        """Bytes sent over the artifact's size (1.0: each byte once); None before any."""
        return self.bytes_sent / self.size if self.transfers and self.size else None


PHASES: tuple[str, ...] = ("before_download", "download", "install", "commit", "after_commit")


@dataclass(frozen=True)
class FaultPhase:
    """Where a fault landed in a device's update, and the evidence: ``phase`` is one of
    PHASES or ``ambiguous`` (the install call returned while the fault was being applied).
    ``served_by_start`` bounds the bytes the server had sent this device's transfer when
    the fault began (an upper bound: the log has each transfer's total)."""

    device: str
    phase: str
    start_s: float
    applied_s: float
    attempt: int | None
    install_s: float | None
    installed_s: float | None
    committed_s: float | None
    transfer: Transfer | None
    served_by_start: int | None
    size: int


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
    time_to_roll_back_s: float | None  # client rollback, or a pending install rolled back
    time_to_know_s: float | None  # until the orchestrator recorded the status it ends with
    rolled_back: bool  # the client rolled the update back (a recovery does not count)
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
    downloads: tuple[DeviceDownload, ...] = ()

    @property
    def bytes_over_size(self) -> float | None:
        """Fleet figure: all bytes sent over the sizes of the artifacts of the devices that
        asked for theirs (a device that never started does not dilute it)."""
        asked = [d for d in self.downloads if d.transfers]
        size = sum(d.size for d in asked)
        return sum(d.bytes_sent for d in asked) / size if size else None

    def measurements(self) -> list[dict[str, Any]]:
        """``{gateway, metric, value, unit}`` rows for :meth:`RunStore.record`."""
        rows: list[tuple[str | None, str, float | None, str]] = [
            (None, "rollout.stranded", len(self.stranded), "count"),
            (None, "rollout.false_rollbacks", len(self.false_rollbacks), "count"),
            (None, "rollout.completion_time", self.completion_s, "s"),
            (None, "rollout.bytes_over_size", self.bytes_over_size, "1"),
        ]
        for dev in self.devices:
            rows += [
                (dev.device, "rollout.time_to_detect", dev.time_to_detect_s, "s"),
                (dev.device, "rollout.time_to_roll_back", dev.time_to_roll_back_s, "s"),
                (dev.device, "rollout.time_to_know", dev.time_to_know_s, "s"),
            ]
        for down in self.downloads:
            rows += [
                (down.device, "rollout.bytes_over_size", down.ratio, "1"),
                (down.device, "rollout.bytes_resent", down.resent_bytes, "B"),
                (down.device, "rollout.download_resumes", down.range_requests, "count"),
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
    downloads: Iterable[DeviceDownload] | None = None,
    faults: Sequence[Mapping[str, Any]] | None = None,
    extra_evidence: Mapping[str, Any] | None = None,
) -> InvariantReport:
    """Check all six invariants and compute the metrics.

    ``expected_sha256`` maps artifact names (the new one and every device's old one) to
    the payload's sha256. ``new_payload_good`` is the ground truth for false rollbacks;
    ``fault_at_s`` (per device, rollout seconds) the START of the device's first fault
    (taken before it was applied; for a flapping link its first down), the reference for
    the timings; ``deadline_s`` (rollout seconds, default the rollout's end) the stranded
    cut-off. A FaultTimeline event at ``t_s`` is at ``timeline.t0 + t_s - result.t0``
    rollout seconds (both are ``time.monotonic()`` readings with the default RealClock).
    ``downloads`` (one per device, from the artifact server's log) give the bytes figures
    and the server's count of resumes; with ``max_resumes`` the device's own count and the
    server's are both bounded. ``faults`` (the case's fault timeline events) and
    ``extra_evidence`` (e.g. fault phases) go into the evidence. Read the devices back
    after :meth:`Rollout.wait_stragglers`, so no update is still running. With
    ``evidence_path`` the evidence JSON is written there at once.
    """
    by_device = _truths(result, truths)
    _check_expected(result, by_device, expected_sha256)
    if grace_s < 0:
        raise InvariantInputError(f"check_rollout: grace_s {grace_s!r} must be >= 0")
    fetched = _downloads(result, downloads)
    if max_resumes is not None:
        blind = [n for n in result.devices if by_device[n].resumes is None and n not in fetched]
        if blind:
            raise InvariantInputError(
                f"check_rollout: max_resumes given but no resume count for {', '.join(blind)}; "
                "pass the server's downloads or a DeviceTruth with resumes"
            )
    verdicts = (
        _committed_version(result, by_device, expected_sha256),
        _view_matches_device(result, by_device),
        _rollback_is_failure(result, by_device),
        _terminal_in_time(result, grace_s),
        _stops_widening(result),
        _retries_bounded(result, by_device, max_resumes, fetched),
    )
    metrics = _metrics(result, by_device, new_payload_good, dict(fault_at_s or {}), deadline_s)
    metrics = replace(metrics, downloads=tuple(fetched[n] for n in result.devices if n in fetched))
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
                "files": dict(by_device[name].files),
                "download": asdict(fetched[name]) if name in fetched else None,
            }
            for name in result.devices
        },
        "faults": [dict(f) for f in faults or ()],
        "events": [e.to_dict() for e in result.events],
        **dict(extra_evidence or {}),
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


def _downloads(
    result: RolloutResult, downloads: Iterable[DeviceDownload] | None
) -> dict[str, DeviceDownload]:
    found: dict[str, DeviceDownload] = {}
    for down in downloads or ():
        if down.device not in result.executions:
            raise InvariantInputError(f"check_rollout: a download for {down.device!r}, which "
                                      "is not in the rollout")  # fmt: skip
        if down.device in found:
            raise InvariantInputError(f"check_rollout: two downloads for {down.device!r}")
        found[down.device] = down
    return found


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
    result: RolloutResult,
    truths: Mapping[str, DeviceTruth],
    max_resumes: int | None,
    downloads: Mapping[str, DeviceDownload],
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
        if max_resumes is None:
            continue
        resumes = truths[name].resumes
        if resumes is not None and resumes > max_resumes:
            found.add(name, f"download resumed {resumes} times, more than {max_resumes} "
                      "(the device's count)", ev)  # fmt: skip
        down = downloads.get(name)
        if down is not None and down.range_requests > max_resumes:
            ev = {**ev, "transfers": [asdict(t) for t in down.transfers]}
            found.add(name, f"download resumed {down.range_requests} times, more than "
                      f"{max_resumes} (Range requests the server saw)", ev)  # fmt: skip
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
    rolled = next(
        (e for e in marks if e.data.get("mark") in (MARK_ROLLED_BACK, MARK_RECOVERED)), None
    )

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
        or any(e.data.get("mark") == MARK_ROLLED_BACK for e in mine if e.kind == "mark")
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


# --- downloads and fault phases ------------------------------------------------------------


def device_download(
    device: str,
    records: Iterable[RequestRecord],
    *,
    client: str,
    path: str,
    size: int,
    wall_t0: float,
) -> DeviceDownload:
    """The GETs of ``path`` (e.g. ``/model-v2--rpi4.mender``, ``size`` bytes) that the
    server logged for the address ``client`` (exact match), with times in rollout seconds:
    ``wall_t0`` is the wall-clock (``time.time()``) reading at the rollout's t0. Give it
    only the records logged since the rollout started."""
    transfers = []
    for r in records:
        if r.method != "GET" or r.client != client or urlsplit(r.path).path != path:
            continue
        start = r.time - wall_t0
        transfers.append(
            Transfer(
                start_s=round(start, 6),
                end_s=round(start + r.duration_s, 6),
                offset=r.start or 0,
                sent=r.sent,
                expected=r.expected,
                error=r.error,
            )
        )
    return DeviceDownload(device, path, size, tuple(transfers))


_CLOCK_SLACK_S = 0.05  # server wall clock vs the rollout's monotonic clock


def fault_phase(
    result: RolloutResult,
    download: DeviceDownload,
    start_s: float,
    applied_s: float,
) -> FaultPhase:
    """In which phase of ``download.device``'s update a fault that began at ``start_s``
    and was in place at ``applied_s`` (rollout seconds) landed.

    The attempt is the last one whose ``install`` step came before the fault. Then:
    ``after_commit`` / ``commit`` when its ``committed`` / ``installed`` step came before
    the fault; ``ambiguous`` when ``installed`` came while the fault was being applied;
    ``install`` when the server had written the artifact's last byte before the fault
    (and ``installed`` had not come); ``download`` when a transfer of the attempt was
    under way (its last byte written after the fault began, or never); else
    ``before_download``."""
    name = download.device
    steps = [e for e in result.events if e.device == name and e.kind == "mark"]
    installs = [e for e in steps if e.data.get("mark") == "install" and e.t_s <= start_s]
    attempt = installs[-1].attempt if installs else None

    def step(mark: str) -> float | None:
        found = [e.t_s for e in steps if e.data.get("mark") == mark and e.attempt == attempt]
        return found[0] if found else None

    install_s = installs[-1].t_s if installs else None
    installed_s, committed_s = step("installed"), step("committed")
    transfer: Transfer | None = None
    served: int | None = None
    if install_s is None:
        phase = "before_download"
    elif committed_s is not None and committed_s <= start_s:
        phase = "after_commit"
    elif installed_s is not None and installed_s <= start_s:
        phase = "commit"
    elif installed_s is not None and installed_s <= applied_s:
        phase = "ambiguous"
    else:
        mine = [
            t for t in download.transfers
            if install_s - _CLOCK_SLACK_S <= t.start_s <= start_s
        ]  # fmt: skip
        transfer = mine[-1] if mine else None
        if transfer is None:
            phase = "before_download"
        elif transfer.end_s <= start_s and transfer.offset + transfer.sent >= download.size:
            phase, served = "install", transfer.offset + transfer.sent
        else:
            phase = "download"
            reach = transfer.offset + transfer.sent
            # written after the fault began: the last byte was not out yet when it did
            served = reach if transfer.end_s <= start_s or reach < download.size else reach - 1
    return FaultPhase(
        device=name, phase=phase, start_s=start_s, applied_s=applied_s, attempt=attempt,
        install_s=install_s, installed_s=installed_s, committed_s=committed_s,
        transfer=transfer, served_by_start=served, size=download.size,
    )  # fmt: skip
