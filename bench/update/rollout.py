"""Staged rollouts of one update over many devices, with the semantics of AWS IoT Jobs.

What is taken from AWS IoT Jobs (API reference: JobExecutionsRolloutConfig,
ExponentialRolloutRate, RateIncreaseCriteria, AbortConfig/AbortCriteria, TimeoutConfig,
JobExecutionsRetryConfig/RetryCriteria; developer guide "How job configurations work"):

- execution states QUEUED, IN_PROGRESS, SUCCEEDED, FAILED, TIMED_OUT, REJECTED, CANCELED;
- ``maximumPerMinute`` (1..1000, default 1000) caps how many executions start per minute;
  ``exponentialRate`` starts at ``baseRatePerMinute`` and multiplies the rate by
  ``incrementFactor`` (1.1..5) once ``numberOfNotifiedThings`` or ``numberOfSucceededThings``
  (exactly one of them) is reached, never above ``maximumPerMinute``;
- abort criteria ``failureType`` FAILED | REJECTED | TIMED_OUT | ALL, ``action`` CANCEL,
  ``thresholdPercentage`` (<= 100), ``minNumberOfExecutedThings`` (>= 1): once met, nothing
  new starts, QUEUED executions become CANCELED, IN_PROGRESS ones finish or time out;
- ``inProgressTimeoutInMinutes``: an execution IN_PROGRESS for longer ends as TIMED_OUT;
- retry criteria ``failureType`` FAILED | TIMED_OUT | ALL with ``numberOfRetries`` 0..10.

Choices of this module where the AWS documents leave room (the invariant checker in
:mod:`bench.update.invariants` checks the same rules, written independently):

- times are seconds on a :class:`Clock` (a bench needs timeouts far below AWS's 1 minute);
- the exponential rate is ``base * factor**k`` with ``k = count // threshold``: it rises
  again each time another ``threshold`` things are notified/succeeded (the developer
  guide's example starts at 50/min until 1,000 things, then doubles; that it keeps
  rising every further 1,000 is this module's reading); "notified" counts distinct
  devices ever started, "succeeded" devices whose execution is SUCCEEDED now;
- every start, retries included, counts against the rate: in every 60 s window
  ``(t - 60, t]`` ending at a start, the starts are at most the rate in force then;
- the abort criteria are evaluated after every state change on the devices whose
  execution is in SUCCEEDED, FAILED, TIMED_OUT or REJECTED at that moment ("executed"),
  so a failure that will be retried counts while it stands; met when
  ``executed >= min`` and ``100 * matching / executed >= threshold``;
- a retry puts the execution back to QUEUED (``FAILED -> QUEUED``) and takes its turn and
  its rate slot again; REJECTED is never retried; nothing is retried after an abort; a
  retry of type T needs ``used[T] < retries(T)`` when T has a criterion and
  ``sum(used) < retries(ALL)`` when ALL has one (no criterion for T and none for ALL: none);
- a device call that outlives its timeout keeps running (the orchestrator cannot kill an
  update client mid-flight): the execution is TIMED_OUT, the attempt is marked still
  running, and when the call returns its outcome is recorded as a ``late`` event. A retry
  after TIMED_OUT waits (up to one more timeout) for that call, so one device never runs
  two updates at once.

Every state change is a :class:`RolloutEvent` handed to the sink (e.g. the run store).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

from bench.errors import BenchError

__all__ = [
    "EXECUTED",
    "MARK_DETECTED",
    "MARK_RECOVERED",
    "MARK_ROLLED_BACK",
    "TERMINAL",
    "AbortCriterion",
    "AbortDecision",
    "AttemptContext",
    "AttemptRecord",
    "Clock",
    "Device",
    "ExecutionRecord",
    "ExecutionStatus",
    "ExponentialRate",
    "FailureType",
    "Job",
    "Outcome",
    "RealClock",
    "RetryCriterion",
    "Rollout",
    "RolloutConfig",
    "RolloutError",
    "RolloutEvent",
    "RolloutRate",
    "RolloutResult",
    "ScaledClock",
    "Sink",
]

Sink = Callable[[dict[str, Any]], None]

WINDOW_S = 60.0
# device-side marks (AttemptContext.mark) that the metrics in bench.update.invariants read
MARK_DETECTED = "failure_detected"
MARK_ROLLED_BACK = "rolled_back"
MARK_RECOVERED = "recovered"  # a later attempt rolled back an install a fault left pending


class RolloutError(BenchError):
    """A rollout was configured or driven wrongly (bad rate, duplicate device, run twice)."""


class ExecutionStatus(StrEnum):
    """The state of one device's job execution (AWS IoT Jobs names)."""

    QUEUED = "QUEUED"
    IN_PROGRESS = "IN_PROGRESS"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    TIMED_OUT = "TIMED_OUT"
    REJECTED = "REJECTED"
    CANCELED = "CANCELED"


S = ExecutionStatus
TERMINAL = frozenset({S.SUCCEEDED, S.FAILED, S.TIMED_OUT, S.REJECTED, S.CANCELED})
EXECUTED = frozenset({S.SUCCEEDED, S.FAILED, S.TIMED_OUT, S.REJECTED})
_DEVICE_RESULTS = frozenset({S.SUCCEEDED, S.FAILED, S.REJECTED})


class FailureType(StrEnum):
    """Which failures an abort or retry criterion counts."""

    FAILED = "FAILED"
    REJECTED = "REJECTED"
    TIMED_OUT = "TIMED_OUT"
    ALL = "ALL"

    def matches(self, status: str) -> bool:
        """Whether an execution in ``status`` is a failure of this type."""
        if self is FailureType.ALL:
            return status in (S.FAILED, S.REJECTED, S.TIMED_OUT)
        return status == self.value


# --- clocks --------------------------------------------------------------------------------


class Clock(Protocol):
    """Seconds for the orchestrator; real time unless a unit test scales it."""

    def now(self) -> float:
        """A monotonic reading in seconds."""
        ...

    def real_seconds(self, seconds: float) -> float:
        """How long to block in real time to let ``seconds`` of this clock pass."""
        ...


class RealClock:
    """``time.monotonic()``: the clock of every real rollout."""

    def now(self) -> float:
        return time.monotonic()

    def real_seconds(self, seconds: float) -> float:
        return max(0.0, seconds)


class ScaledClock:
    """A clock running ``speed`` times faster than real time (unit tests of rate/timeout)."""

    def __init__(self, speed: float) -> None:
        if not speed > 0:
            raise RolloutError(f"ScaledClock: speed {speed!r} must be > 0")
        self.speed = float(speed)
        self._t0 = time.monotonic()

    def now(self) -> float:
        return (time.monotonic() - self._t0) * self.speed

    def real_seconds(self, seconds: float) -> float:
        return max(0.0, seconds) / self.speed

    def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` of this clock."""
        time.sleep(self.real_seconds(seconds))


# --- configuration -------------------------------------------------------------------------


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise RolloutError(message)


@dataclass(frozen=True)
class ExponentialRate:
    """``exponentialRate``: base rate, factor, and one rate-increase criterion."""

    base_per_minute: int
    increment_factor: float
    notified_things: int | None = None
    succeeded_things: int | None = None

    def __post_init__(self) -> None:
        _check(
            1 <= self.base_per_minute <= 1000,
            f"exponential rate: base_per_minute {self.base_per_minute!r} must be 1..1000",
        )
        _check(
            1.1 <= self.increment_factor <= 5,
            f"exponential rate: increment_factor {self.increment_factor!r} must be 1.1..5",
        )
        given = [n for n in (self.notified_things, self.succeeded_things) if n is not None]
        _check(
            len(given) == 1 and given[0] >= 1,
            "exponential rate: give exactly one of notified_things / succeeded_things, >= 1",
        )


@dataclass(frozen=True)
class RolloutRate:
    """``jobExecutionsRolloutConfig``: a constant cap, optionally an exponential ramp."""

    maximum_per_minute: int = 1000
    exponential: ExponentialRate | None = None

    def __post_init__(self) -> None:
        _check(
            1 <= self.maximum_per_minute <= 1000,
            f"rollout rate: maximum_per_minute {self.maximum_per_minute!r} must be 1..1000",
        )
        if self.exponential is not None:
            _check(
                self.exponential.base_per_minute <= self.maximum_per_minute,
                "rollout rate: exponential base_per_minute must not exceed maximum_per_minute",
            )

    def per_minute(self, notified: int, succeeded: int) -> int:
        """Starts allowed per minute once ``notified`` devices started, ``succeeded`` succeeded."""
        exp = self.exponential
        if exp is None:
            return self.maximum_per_minute
        if exp.notified_things is not None:
            steps = notified // exp.notified_things
        else:
            assert exp.succeeded_things is not None
            steps = succeeded // exp.succeeded_things
        rate = float(exp.base_per_minute)
        for _ in range(steps):
            rate *= exp.increment_factor
            if rate >= self.maximum_per_minute:
                break
        return min(self.maximum_per_minute, int(rate))


@dataclass(frozen=True)
class AbortCriterion:
    """One entry of ``abortConfig.criteriaList`` (the only action is CANCEL)."""

    failure_type: FailureType
    threshold_percent: float
    min_executed: int
    action: str = "CANCEL"

    def __post_init__(self) -> None:
        _check(
            isinstance(self.failure_type, FailureType),
            f"abort criterion: failure_type {self.failure_type!r} must be a FailureType",
        )
        _check(
            0 <= self.threshold_percent <= 100,
            f"abort criterion: threshold_percent {self.threshold_percent!r} must be 0..100",
        )
        _check(
            self.min_executed >= 1,
            f"abort criterion: min_executed {self.min_executed!r} must be >= 1",
        )
        _check(self.action == "CANCEL", f"abort criterion: action {self.action!r} must be CANCEL")

    def describe(self) -> str:
        return (
            f"{self.failure_type.value} >= {self.threshold_percent:g}% "
            f"after {self.min_executed} executed"
        )


@dataclass(frozen=True)
class RetryCriterion:
    """One entry of ``jobExecutionsRetryConfig.criteriaList``."""

    failure_type: FailureType
    retries: int

    def __post_init__(self) -> None:
        _check(
            self.failure_type in (FailureType.FAILED, FailureType.TIMED_OUT, FailureType.ALL),
            f"retry criterion: failure_type {self.failure_type!r} must be FAILED, TIMED_OUT or ALL",
        )
        _check(0 <= self.retries <= 10, f"retry criterion: retries {self.retries!r} must be 0..10")


@dataclass(frozen=True)
class RolloutConfig:
    """Rate, abort and retry criteria, the in-progress timeout, and the worker count."""

    in_progress_timeout_s: float
    rate: RolloutRate = field(default_factory=RolloutRate)
    abort: tuple[AbortCriterion, ...] = ()
    retry: tuple[RetryCriterion, ...] = ()
    max_concurrent: int = 8

    def __post_init__(self) -> None:
        _check(
            self.in_progress_timeout_s > 0,
            f"rollout: in_progress_timeout_s {self.in_progress_timeout_s!r} must be > 0",
        )
        _check(
            self.max_concurrent >= 1,
            f"rollout: max_concurrent {self.max_concurrent!r} must be >= 1",
        )
        types = [c.failure_type for c in self.retry]
        _check(
            len(types) == len(set(types)) and len(types) <= 2,
            "rollout: at most 2 retry criteria, one per failure type",
        )

    def retry_limit(self, failure_type: FailureType) -> int | None:
        """``numberOfRetries`` of the criterion for exactly this type, or None."""
        for criterion in self.retry:
            if criterion.failure_type is failure_type:
                return criterion.retries
        return None

    def may_retry(self, used: Mapping[str, int], status: str) -> bool:
        """Whether one more retry is allowed after an attempt ended in ``status``."""
        if status not in (S.FAILED, S.TIMED_OUT):
            return False
        own = self.retry_limit(FailureType(status))
        overall = self.retry_limit(FailureType.ALL)
        if own is None and overall is None:
            return False
        if own is not None and used.get(status, 0) >= own:
            return False
        return overall is None or sum(used.values()) < overall

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Job:
    """What to install: the new artifact's name and where the device gets it."""

    job_id: str
    artifact_name: str
    url: str


# --- devices -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What one update attempt on a device ended in, as the device reports it.

    ``status`` is SUCCEEDED, FAILED or REJECTED; ``rolled_back`` says the client rolled
    back; ``installed`` is the artifact name the device says it runs afterwards.
    """

    status: ExecutionStatus
    detail: str = ""
    rolled_back: bool = False
    installed: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check(
            self.status in _DEVICE_RESULTS,
            f"Outcome: status {self.status!r} must be SUCCEEDED, FAILED or REJECTED",
        )
        object.__setattr__(self, "status", ExecutionStatus(self.status))


class AttemptContext:
    """Handed to :meth:`Device.run_update`: the job, the attempt, marks, cancellation."""

    def __init__(self, rollout: Rollout, device: str, job: Job, attempt: int) -> None:
        self._rollout = rollout
        self.device = device
        self.job = job
        self.attempt = attempt
        self.clock = rollout.clock
        # set once the orchestrator has given up on this attempt (TIMED_OUT)
        self.cancelled = threading.Event()

    def mark(self, name: str, detail: str = "", data: Mapping[str, Any] | None = None) -> None:
        """Record a device-side step (e.g. MARK_DETECTED, MARK_ROLLED_BACK) as an event."""
        self._rollout._mark(self, name, detail, dict(data or {}))

    def sleep(self, seconds: float) -> bool:
        """Sleep ``seconds`` of the rollout's clock; True (early) if the attempt was given up."""
        return self.cancelled.wait(self.clock.real_seconds(seconds))


class Device(Protocol):
    """A device the orchestrator can update: one full attempt per call, never two at once."""

    @property
    def name(self) -> str: ...

    def run_update(self, ctx: AttemptContext) -> Outcome:
        """Install ``ctx.job``, health-check, commit or roll back; report what happened."""
        ...


# --- records -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RolloutEvent:
    """One thing that happened. ``kind``: state (``from_state -> to_state``), mark (a
    device-side step), late (a device call returned after its TIMED_OUT), abort, note."""

    seq: int
    t_s: float  # seconds since the rollout's t0, on its clock
    wall: str  # UTC, ISO 8601
    kind: str
    device: str  # "" for rollout-wide events
    from_state: str | None
    to_state: str | None
    attempt: int
    detail: str
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        """One line for people and run records, e.g. ``gw1 QUEUED -> IN_PROGRESS ...``."""
        what = f"{self.from_state} -> {self.to_state}" if self.kind == "state" else self.kind
        who = f"{self.device} " if self.device else ""
        return f"t={self.t_s:.3f}s {who}{what} (attempt {self.attempt}): {self.detail}"


@dataclass(frozen=True)
class AttemptRecord:
    """One attempt of one device: when it ran, how it ended, what the device said."""

    number: int
    started_s: float
    ended_s: float | None
    status: ExecutionStatus
    detail: str
    outcome: Outcome | None  # the device's answer, in time or late
    returned_s: float | None  # when the device call returned
    late: bool  # the answer came after the attempt had TIMED_OUT
    still_running: bool  # the device call had not returned when this record was taken


@dataclass(frozen=True)
class ExecutionRecord:
    """The orchestrator's view of one device: status, attempts, retries used per type."""

    device: str
    status: ExecutionStatus
    attempts: tuple[AttemptRecord, ...]
    retries: dict[str, int]

    @property
    def known_status(self) -> ExecutionStatus:
        """The status, or the late answer of a TIMED_OUT last attempt once it came."""
        last = self.attempts[-1] if self.attempts else None
        if self.status == S.TIMED_OUT and last is not None and last.late and last.outcome:
            return last.outcome.status
        return self.status


@dataclass(frozen=True)
class AbortDecision:
    """When and why the rollout stopped widening (``criterion`` None: cancelled by hand)."""

    t_s: float
    seq: int
    reason: str
    criterion: AbortCriterion | None


@dataclass(frozen=True)
class RolloutResult:
    """A snapshot of a rollout: config, events, and the final view per device."""

    job: Job
    config: RolloutConfig
    devices: tuple[str, ...]
    t0: float  # the clock's reading at t_s = 0 (time.monotonic() for a RealClock)
    finished_s: float | None
    events: tuple[RolloutEvent, ...]
    executions: dict[str, ExecutionRecord]
    aborted: AbortDecision | None
    errors: tuple[str, ...]

    def view(self) -> dict[str, ExecutionStatus]:
        """Final status per device."""
        return {name: record.status for name, record in self.executions.items()}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- the orchestrator ----------------------------------------------------------------------


@dataclass
class _Attempt:
    number: int
    started_s: float
    ctx: AttemptContext
    ended_s: float | None = None
    status: ExecutionStatus = S.IN_PROGRESS
    detail: str = ""
    outcome: Outcome | None = None
    returned_s: float | None = None
    late: bool = False
    call_done: threading.Event = field(default_factory=threading.Event)


@dataclass
class _Execution:
    device: Device
    name: str
    status: ExecutionStatus = S.QUEUED
    attempts: list[_Attempt] = field(default_factory=list)
    retries: dict[str, int] = field(default_factory=dict)


class Rollout:
    """Runs ``job`` over ``devices`` under ``config``; :meth:`run` blocks until every
    execution is terminal and returns the :class:`RolloutResult`.

    The sink is called with each event's dict under the rollout's lock, in event order:
    keep it quick (append a line) and do not call back into the rollout from it."""

    def __init__(
        self,
        devices: Sequence[Device],
        job: Job,
        config: RolloutConfig,
        *,
        sink: Sink | None = None,
        clock: Clock | None = None,
    ) -> None:
        names = [d.name for d in devices]
        if not names:
            raise RolloutError("rollout: no devices; pass at least one")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise RolloutError(f"rollout: device names must be unique; repeated: {dupes}")
        self.job = job
        self.config = config
        self.clock: Clock = clock or RealClock()
        self._sink = sink
        self._cond = threading.Condition(threading.RLock())
        self._execs = [_Execution(device=d, name=d.name) for d in devices]
        self._queue: deque[_Execution] = deque()
        self._events: list[RolloutEvent] = []
        self._errors: list[str] = []
        self._starts: list[float] = []
        self._notified: set[str] = set()
        self._calls: list[_Attempt] = []
        self._active = 0
        self._t0: float | None = None
        self._finished_s: float | None = None
        self._abort: AbortDecision | None = None
        self._pending_cancel: str | None = None
        self._ran = False

    # --- public ----------------------------------------------------------------------------

    def run(self) -> RolloutResult:
        """Start executions within the rate, wait until all are terminal, return the result."""
        with self._cond:
            if self._ran:
                raise RolloutError("rollout: run() was already called; make a new Rollout")
            self._ran = True
            self._t0 = self.clock.now()
            for ex in self._execs:
                self._emit("state", ex.name, None, S.QUEUED, 0, "queued")
                self._queue.append(ex)
            if self._pending_cancel is not None:
                self._abort_locked(self._pending_cancel, None)
            try:
                self._dispatch_locked()
            except BaseException as exc:
                if self._abort is None:
                    self._abort_locked(f"interrupted: {type(exc).__name__}", None)
                raise
            self._finished_s = self._elapsed()
        return self.result()

    def cancel(self, reason: str = "cancelled by the bench") -> None:
        """Stop widening now, as an abort does: nothing new starts, QUEUED become CANCELED."""
        with self._cond:
            if self._t0 is None:
                self._pending_cancel = reason
            elif self._abort is None:
                self._abort_locked(reason, None)

    def result(self) -> RolloutResult:
        """A snapshot (late answers that arrive afterwards show in a later snapshot)."""
        with self._cond:
            return RolloutResult(
                job=self.job,
                config=self.config,
                devices=tuple(ex.name for ex in self._execs),
                t0=self._t0 if self._t0 is not None else self.clock.now(),
                finished_s=self._finished_s,
                events=tuple(self._events),
                executions={ex.name: self._record(ex) for ex in self._execs},
                aborted=self._abort,
                errors=tuple(self._errors),
            )

    def wait_stragglers(self, timeout_s: float | None = None) -> bool:
        """Wait (real seconds) for device calls still running after TIMED_OUT; False if any
        still runs. Read the devices' truth after this."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            calls = list(self._calls)
        for att in calls:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            att.call_done.wait(left)
        return all(att.call_done.is_set() for att in calls)

    # --- dispatcher (the run() thread, lock held except while waiting) ----------------------

    def _dispatch_locked(self) -> None:
        while True:
            if self._abort is None and self._queue and self._active < self.config.max_concurrent:
                now = self._elapsed()
                rate = self._rate_locked()
                recent = [s for s in self._starts if s > now - WINDOW_S]
                if len(recent) < rate:
                    self._start_locked(self._queue.popleft(), now, rate)
                    continue
                self._cond.wait(self.clock.real_seconds(min(recent) + WINDOW_S - now))
                continue
            if not self._queue and self._active == 0:
                return
            self._cond.wait(1.0)

    def _rate_locked(self) -> int:
        succeeded = sum(1 for ex in self._execs if ex.status is S.SUCCEEDED)
        return self.config.rate.per_minute(len(self._notified), succeeded)

    def _start_locked(self, ex: _Execution, now: float, rate: int) -> None:
        att = _Attempt(
            number=len(ex.attempts) + 1,
            started_s=now,
            ctx=AttemptContext(self, ex.name, self.job, len(ex.attempts) + 1),
        )
        ex.attempts.append(att)
        self._calls.append(att)
        self._starts.append(now)
        self._notified.add(ex.name)
        self._set_state(
            ex, S.IN_PROGRESS, att.number, f"started at {rate}/min", {"rate_per_minute": rate}, now
        )
        self._active += 1
        threading.Thread(
            target=self._attempt,
            args=(ex, att),
            name=f"rollout-{ex.name}-{att.number}",
            daemon=True,
        ).start()

    # --- one attempt (its own thread; the device call on another) ---------------------------

    def _attempt(self, ex: _Execution, att: _Attempt) -> None:
        try:
            threading.Thread(
                target=self._call,
                args=(ex, att),
                name=f"update-{ex.name}-{att.number}",
                daemon=True,
            ).start()
            timeout = self.config.in_progress_timeout_s
            self._wait_call(att, att.started_s + timeout)
            with self._cond:
                if att.outcome is not None:
                    out = att.outcome
                    self._end_locked(ex, att, out.status, out.detail, _outcome_data(out))
                else:
                    att.ctx.cancelled.set()
                    self._end_locked(
                        ex, att, S.TIMED_OUT, f"no result after {timeout:g} s; call still running"
                    )
                wait_for_call = self._retry_locked(ex, att)
            if wait_for_call:
                self._wait_call(att, self._elapsed() + timeout)
                with self._cond:
                    if not att.call_done.is_set():
                        self._emit(
                            "note", ex.name, None, None, att.number,
                            f"no retry: attempt {att.number} still running {timeout:g} s after "
                            "its timeout",
                        )  # fmt: skip
                    else:
                        self._retry_locked(ex, att)
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify_all()

    def _wait_call(self, att: _Attempt, until_s: float) -> None:
        while not att.call_done.is_set():
            left = until_s - self._elapsed()
            if left <= 0:
                return
            att.call_done.wait(self.clock.real_seconds(left))

    def _call(self, ex: _Execution, att: _Attempt) -> None:
        error: str | None = None
        try:
            outcome = ex.device.run_update(att.ctx)
            if not isinstance(outcome, Outcome) or outcome.status not in _DEVICE_RESULTS:
                error = f"{ex.name}: run_update returned {outcome!r}, not an Outcome ending in "
                error += "SUCCEEDED, FAILED or REJECTED"
                outcome = Outcome(S.FAILED, detail=error)
        except Exception as exc:
            first = str(exc).splitlines()[0] if str(exc) else ""
            error = f"{ex.name}: run_update raised {type(exc).__name__}: {first}"
            outcome = Outcome(S.FAILED, detail=error)
        with self._cond:
            att.outcome = outcome
            att.returned_s = self._elapsed()
            if error is not None:
                self._errors.append(error)
            if att.status is S.TIMED_OUT:
                att.late = True
                self._emit(
                    "late", ex.name, None, None, att.number,
                    f"device answered {outcome.status} after TIMED_OUT: {outcome.detail}",
                    {"status": outcome.status.value, **_outcome_data(outcome)},
                )  # fmt: skip
            att.call_done.set()
            self._cond.notify_all()

    def _end_locked(
        self,
        ex: _Execution,
        att: _Attempt,
        status: ExecutionStatus,
        detail: str,
        data: dict[str, Any] | None = None,
    ) -> None:
        att.status = status
        att.detail = detail
        att.ended_s = self._elapsed()
        self._set_state(ex, status, att.number, detail, data or {}, att.ended_s)

    def _retry_locked(self, ex: _Execution, att: _Attempt) -> bool:
        """Requeue ``ex`` if allowed; True when the retry must first wait for the call."""
        status = att.status
        if self._abort is not None or not self.config.may_retry(ex.retries, status):
            return False
        if not att.call_done.is_set():
            return True
        ex.retries[status] = ex.retries.get(status, 0) + 1
        self._queue.append(ex)  # before the state change: an abort it triggers cancels it
        self._set_state(
            ex, S.QUEUED, att.number, f"retry {sum(ex.retries.values())} after {status}"
        )
        self._cond.notify_all()
        return False

    # --- abort ------------------------------------------------------------------------------

    def _check_abort_locked(self) -> None:
        if self._abort is not None or not self.config.abort:
            return
        executed = [ex.status for ex in self._execs if ex.status in EXECUTED]
        for criterion in self.config.abort:
            failed = sum(1 for s in executed if criterion.failure_type.matches(s))
            if (
                len(executed) >= criterion.min_executed
                and 100.0 * failed / len(executed) >= criterion.threshold_percent
            ):
                reason = (
                    f"{criterion.describe()}: {failed} of {len(executed)} executed "
                    f"({100.0 * failed / len(executed):.1f}%)"
                )
                self._abort_locked(reason, criterion)
                return

    def _abort_locked(self, reason: str, criterion: AbortCriterion | None) -> None:
        data = {"criterion": asdict(criterion)} if criterion is not None else {}
        event = self._emit("abort", "", None, None, 0, reason, data)
        self._abort = AbortDecision(event.t_s, event.seq, reason, criterion)
        while self._queue:
            ex = self._queue.popleft()
            self._set_state(ex, S.CANCELED, len(ex.attempts), "rollout aborted")
        self._cond.notify_all()

    # --- events -----------------------------------------------------------------------------

    def _mark(self, ctx: AttemptContext, name: str, detail: str, data: dict[str, Any]) -> None:
        with self._cond:
            text = f"{name}: {detail}" if detail else name
            self._emit("mark", ctx.device, None, None, ctx.attempt, text, {"mark": name, **data})

    def _set_state(
        self,
        ex: _Execution,
        status: ExecutionStatus,
        attempt: int,
        detail: str,
        data: dict[str, Any] | None = None,
        t_s: float | None = None,
    ) -> None:
        before = ex.status
        ex.status = status
        self._emit("state", ex.name, before, status, attempt, detail, data, t_s)
        self._check_abort_locked()  # after every state change, as the checker does

    def _elapsed(self) -> float:
        assert self._t0 is not None
        return round(self.clock.now() - self._t0, 6)

    def _emit(
        self,
        kind: str,
        device: str,
        from_state: str | None,
        to_state: str | None,
        attempt: int,
        detail: str,
        data: dict[str, Any] | None = None,
        t_s: float | None = None,
    ) -> RolloutEvent:
        with self._cond:
            event = RolloutEvent(
                seq=len(self._events),
                t_s=self._elapsed() if t_s is None else t_s,
                wall=datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z"),
                kind=kind,
                device=device,
                from_state=None if from_state is None else str(from_state),
                to_state=None if to_state is None else str(to_state),
                attempt=attempt,
                detail=detail,
                data=dict(data or {}),
            )
            self._events.append(event)
            if self._sink is not None:
                try:
                    self._sink(event.to_dict())
                except (BenchError, OSError, ValueError, TypeError) as exc:
                    self._errors.append(f"sink failed on event {event.seq} ({kind}): {exc}")
            return event

    def _record(self, ex: _Execution) -> ExecutionRecord:
        return ExecutionRecord(
            device=ex.name,
            status=ex.status,
            attempts=tuple(
                AttemptRecord(
                    number=a.number,
                    started_s=a.started_s,
                    ended_s=a.ended_s,
                    status=a.status,
                    detail=a.detail,
                    outcome=a.outcome,
                    returned_s=a.returned_s,
                    late=a.late,
                    still_running=not a.call_done.is_set(),
                )
                for a in ex.attempts
            ),
            retries=dict(ex.retries),
        )


def _outcome_data(outcome: Outcome) -> dict[str, Any]:
    return {"rolled_back": outcome.rolled_back, "installed": outcome.installed, **outcome.data}
