"""Flapping: a link that goes down and up with exponentially distributed times.

Down and up periods are drawn from a seeded ``random.Random``: ``expovariate(1 / mean)``,
so a seed gives the same plan every run (:meth:`Flapping.plan`). :meth:`Flapping.apply`
makes the first transition itself (down, unless ``start_down=False``), then a thread
toggles a :class:`~bench.faults.kinds.Partition`. Every transition is logged (logger
``bench.faults``), kept in :attr:`Flapping.transitions` and passed to the observer a
timeline sets. :meth:`Flapping.remove` stops the thread and leaves the link up.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Any

from bench.faults import cleanup
from bench.faults.base import AppliedWhileInside, Fault, FaultError, Observer
from bench.faults.guard import Protection
from bench.faults.kinds import Partition
from bench.faults.target import LinkTarget

__all__ = ["Flapping", "Transition"]

log = logging.getLogger("bench.faults")
_JOIN_S = 30.0


@dataclass(frozen=True)
class Transition:
    """The link went ``state`` ("down"/"up") at ``t`` (time.monotonic), planned to stay
    that way ``planned_s`` (None for the final "up" at removal)."""

    t: float
    state: str
    planned_s: float | None


class Flapping(AppliedWhileInside):
    """Partition on, off, on... with exponential up and down times (seeded)."""

    kind = "flapping"

    def __init__(
        self,
        target: LinkTarget,
        mean_up_s: float,
        mean_down_s: float,
        seed: int = 0,
        *,
        start_down: bool = True,
        protect: Protection | None = None,
    ) -> None:
        for name, value in (("mean_up_s", mean_up_s), ("mean_down_s", mean_down_s)):
            if not isinstance(value, int | float) or not 0.001 <= value <= 86400:
                raise FaultError(f"flapping on {target}: {name} {value!r} must be 0.001-86400 s")
        self.mean_up_s = float(mean_up_s)
        self.mean_down_s = float(mean_down_s)
        self.seed = seed
        self.start_down = start_down
        self._partition = Partition(target, protect=protect)
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._observer: Observer | None = None
        self._error: BaseException | None = None
        self._active = False
        self._checked = False
        self.transitions: list[Transition] = []

    @property
    def target(self) -> LinkTarget:
        return self._partition.target

    def params(self) -> dict[str, Any]:
        return {
            "mean_up_s": self.mean_up_s,
            "mean_down_s": self.mean_down_s,
            "seed": self.seed,
            "start_down": self.start_down,
        }

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "target": self.target.label,
            "params": self.params(),
            "backend": f"toggled {self._partition.backend}",
        }

    def set_observer(self, observer: Observer | None) -> None:
        self._observer = observer

    def parts(self) -> list[Fault]:
        """The partition this flapping toggles (removed with it)."""
        return [self._partition]

    def plan(self, count: int) -> list[tuple[str, float]]:
        """The first ``count`` (state, seconds) periods this seed gives."""
        rng = random.Random(self.seed)
        down = self.start_down
        periods = []
        for _ in range(count):
            mean = self.mean_down_s if down else self.mean_up_s
            periods.append(("down" if down else "up", rng.expovariate(1.0 / mean)))
            down = not down
        return periods

    def apply(self) -> None:
        with self._lock:
            if self._active:
                raise FaultError(f"flapping on {self.target}: already applied; remove it first")
            self._active = True
            self._stop.clear()
            self._error = None
            self.transitions = []
            self._checked = False
            cleanup.register(self)
            rng = random.Random(self.seed)
            try:
                first = self._enter(self.start_down, rng)
            except BaseException:
                self._active = False
                cleanup.unregister(self)
                raise
            self._thread = threading.Thread(
                target=self._run, args=(rng, first), name=f"flapping-{self.target}", daemon=True
            )
            self._thread.start()

    def remove(self) -> None:
        with self._lock:
            if not self._active:
                return
            self._stop.set()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(_JOIN_S)
        with self._lock:
            if not self._active:
                return
            if self._partition.active:
                self._partition.remove()
                self._record("up", None)
            self._active = False
            self._thread = None
            cleanup.unregister(self)
            error, self._error = self._error, None
        if error is not None:
            raise FaultError(f"flapping on {self.target} stopped early: {error}")

    def _enter(self, down: bool, rng: random.Random) -> float:
        """Go down or up now; returns how long to stay."""
        hold = rng.expovariate(1.0 / (self.mean_down_s if down else self.mean_up_s))
        if down:
            # target and guard are checked at the first down of each application only
            self._partition._apply(checks=not self._checked)
            self._checked = True
        else:
            self._partition.remove()
        self._record("down" if down else "up", hold)
        return hold

    def _run(self, rng: random.Random, hold: float) -> None:
        down = self.start_down
        deadline = time.monotonic() + hold
        while not self._stop.wait(max(0.0, deadline - time.monotonic())):
            down = not down
            with self._lock:
                if self._stop.is_set():
                    return
                try:
                    hold = self._enter(down, rng)
                except BaseException as exc:
                    self._error = exc
                    log.error("flapping on %s stopped: %s", self.target, exc)
                    return
            deadline += hold  # from the plan, so command latency does not accumulate

    def _record(self, state: str, planned_s: float | None) -> None:
        transition = Transition(time.monotonic(), state, planned_s)
        self.transitions.append(transition)
        log.info("flapping %s: link %s (for %s s)", self.target, state, planned_s)
        observer = self._observer
        if observer is not None:
            observer(state, {"planned_s": planned_s, "n": len(self.transitions)})
