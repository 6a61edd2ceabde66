"""A fault timeline: faults applied and removed at set times, every change recorded.

``timeline.schedule(fault, at_s=5, for_s=10)`` applies ``fault`` 5 s after the timeline's
t0 and removes it 10 s later (``for_s=None``: at :meth:`FaultTimeline.close`), each on its
own thread. Every apply, remove and transition (a flapping link's "down"/"up") becomes a
:class:`FaultEvent`, kept in :attr:`FaultTimeline.events` and handed to the optional sink
(e.g. a function that writes it to the run's RunStore). :meth:`FaultTimeline.close` (and
leaving a ``with`` block, on an exception or KeyboardInterrupt too) stops the threads and
removes every fault still on; the process-wide hooks of :mod:`bench.faults.cleanup`
cover an exit without close, and :func:`~bench.faults.stale.clear_stale` a SIGKILL.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

from bench.errors import BenchError
from bench.faults import cleanup
from bench.faults.base import Fault, FaultError, Observable
from bench.faults.owner import set_run_id

__all__ = ["FaultEvent", "FaultTimeline", "Sink"]

Sink = Callable[[dict[str, Any]], None]
_JOIN_S = 30.0


@dataclass(frozen=True)
class FaultEvent:
    """One change of a fault: ``action`` is apply, remove, down, up, apply_failed,
    remove_failed or skipped (closed before its time came). An apply's ``details`` hold
    ``at_s`` (planned), ``started_s`` (when apply() began) and ``took_s``."""

    t_s: float  # seconds since the timeline's t0
    wall: str  # UTC, ISO 8601
    action: str
    kind: str
    target: str
    params: dict[str, Any]
    backend: str
    details: dict[str, Any] = field(default_factory=dict)
    message: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class FaultTimeline:
    """Schedules faults against a t0 (``time.monotonic()``) and records what happened."""

    def __init__(
        self, sink: Sink | None = None, *, run_id: str | None = None, t0: float | None = None
    ) -> None:
        if run_id is not None:
            set_run_id(run_id)
        cleanup.install_hooks()
        self.t0 = time.monotonic() if t0 is None else t0
        self._sink = sink
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._bounded: list[threading.Thread] = []  # those of faults with a duration
        self._active: dict[int, Fault] = {}
        self._events: list[FaultEvent] = []
        self._errors: list[str] = []
        self._closed = False

    @property
    def events(self) -> list[FaultEvent]:
        """Every event so far, in the order they happened."""
        with self._lock:
            return list(self._events)

    @property
    def errors(self) -> list[str]:
        """One line per failed apply/remove or sink call."""
        with self._lock:
            return list(self._errors)

    def elapsed(self) -> float:
        """Seconds since t0."""
        return time.monotonic() - self.t0

    def schedule(self, fault: Fault, at_s: float, for_s: float | None = None) -> None:
        """Apply ``fault`` at t0 + ``at_s``, remove it ``for_s`` later (None: at close)."""
        if not math.isfinite(at_s) or at_s < 0:
            raise FaultError(f"schedule: at_s {at_s!r} must be a finite number >= 0")
        if for_s is not None and (not math.isfinite(for_s) or for_s <= 0):
            raise FaultError(f"schedule: for_s {for_s!r} must be a finite number > 0, or None")
        with self._lock:
            if self._closed:
                raise FaultError("schedule: this timeline is closed; make a new one")
            thread = threading.Thread(
                target=self._run,
                args=(fault, at_s, for_s),
                name=f"fault-{fault.describe()['kind']}@{at_s:g}",
                daemon=True,
            )
            self._threads.append(thread)
            if for_s is not None:
                self._bounded.append(thread)
        thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every scheduled fault with a duration has ended; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            threads = list(self._bounded)
        for thread in threads:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            thread.join(left)
        return not any(t.is_alive() for t in threads)

    def close(self, *, raise_errors: bool = True) -> None:
        """Stop every thread and remove every fault still on; then raise if anything failed."""
        with self._lock:
            self._closed = True
            threads = list(self._threads)
        self._stop.set()
        deadline = time.monotonic() + _JOIN_S
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            leftover = list(self._active.values())
        for fault in leftover:
            self._remove(fault)
        errors = self.errors
        if errors and raise_errors:
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            raise FaultError(f"fault timeline: {errors[0]}{more}")

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(raise_errors=exc_type is None)

    # --- threads -------------------------------------------------------------------------

    def _run(self, fault: Fault, at_s: float, for_s: float | None) -> None:
        if self._stop.wait(max(0.0, self.t0 + at_s - time.monotonic())):
            self._emit("skipped", fault, {"at_s": at_s})
            return
        if isinstance(fault, Observable):
            fault.set_observer(lambda action, details: self._emit(action, fault, details))
        started = time.monotonic()
        try:
            fault.apply()
        except BaseException as exc:
            self._fail("apply_failed", fault, exc)
            return
        with self._lock:
            self._active[id(fault)] = fault
        # started_s: when apply() began (a power cut takes effect before it returns)
        details = {"at_s": at_s, "started_s": round(started - self.t0, 6),
                   "took_s": time.monotonic() - started}  # fmt: skip
        self._emit("apply", fault, details)
        if for_s is None:
            self._stop.wait()
        else:
            self._stop.wait(max(0.0, self.t0 + at_s + for_s - time.monotonic()))
        self._remove(fault)

    def _remove(self, fault: Fault) -> None:
        with self._lock:
            if self._active.pop(id(fault), None) is None:
                return  # not on, or another thread is removing it
        started = time.monotonic()
        try:
            fault.remove()
        except BaseException as exc:
            self._fail("remove_failed", fault, exc)
            return
        finally:
            if isinstance(fault, Observable):
                fault.set_observer(None)
        self._emit("remove", fault, {"took_s": time.monotonic() - started})

    def _fail(self, action: str, fault: Fault, exc: BaseException) -> None:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        with self._lock:
            self._errors.append(f"{action} {fault.describe()['kind']}: {message}")
        self._emit(action, fault, message=message)

    def _emit(
        self,
        action: str,
        fault: Fault,
        details: dict[str, Any] | None = None,
        message: str | None = None,
    ) -> None:
        info = fault.describe()
        now = datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
        event = FaultEvent(
            t_s=round(self.elapsed(), 6),
            wall=now,
            action=action,
            kind=str(info.get("kind")),
            target=str(info.get("target")),
            params=dict(info.get("params", {})),
            backend=str(info.get("backend")),
            details=details or {},
            message=message,
        )
        with self._lock:
            self._events.append(event)
        if self._sink is not None:
            try:
                self._sink(event.to_dict())
            except (BenchError, OSError, ValueError, TypeError) as exc:
                with self._lock:
                    self._errors.append(f"sink failed on {action} {event.kind}: {exc}")
