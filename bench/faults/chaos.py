"""Random background faults for soak runs: ``FIELDRIG_RANDOM_FAULTS=SEED pytest suites/``.

While the run lasts, a thread waits an exponentially distributed time (mean
``FIELDRIG_RANDOM_FAULTS_MEAN_S``, default 20 s), picks a healthy gateway with a backhaul
and puts a short fault on it through a :class:`~bench.faults.timeline.FaultTimeline`:
loss of 5-30 % for 1-4 s, or a link flapping (mean up 1 s, down 0.5 s) for 2-4 s. Every
change goes into the run's events (``fault_apply``/``fault_remove``/``fault_down``/...,
``"chaos": true`` in the message's details), like a suite's own faults. The management
link is never touched (the session's fault protection). Stopping removes what is on.
"""

from __future__ import annotations

import os
import random
import threading
import weakref
from typing import TYPE_CHECKING, Any

from bench.errors import BenchError
from bench.faults.base import Fault
from bench.faults.flapping import Flapping
from bench.faults.kinds import Loss
from bench.faults.timeline import FaultTimeline

if TYPE_CHECKING:
    from bench.session import BenchSession

__all__ = ["ENV", "RandomFaults", "from_env"]

ENV = "FIELDRIG_RANDOM_FAULTS"
MEAN_ENV = "FIELDRIG_RANDOM_FAULTS_MEAN_S"
DEFAULT_MEAN_S = 20.0


class RandomFaults:
    """Short random backhaul faults on a session's gateways until :meth:`stop`."""

    def __init__(self, session: BenchSession, seed: int, mean_s: float = DEFAULT_MEAN_S) -> None:
        self.session = session
        self.seed = seed
        self.mean_s = mean_s
        self._rng = random.Random(seed)
        self._stop = threading.Event()
        self._gateway_of: dict[str, str] = {}
        self._made: weakref.WeakSet[Fault] = weakref.WeakSet()
        self.timeline = FaultTimeline(sink=self._record)
        self._thread = threading.Thread(target=self._loop, name="random-faults", daemon=True)

    def start(self) -> RandomFaults:
        self._thread.start()
        return self

    def owns(self, fault: Fault) -> bool:
        """Whether ``fault`` is one of these random faults (not a test's own)."""
        return fault in self._made

    def stop(self) -> None:
        """Stop scheduling and remove every fault still on (errors become events)."""
        self._stop.set()
        self._thread.join(timeout=30)
        self.timeline.close(raise_errors=False)

    def _record(self, event: dict[str, Any]) -> None:
        event = {**event, "details": {**event.get("details", {}), "chaos": True}}
        self.session.record_fault(self._gateway_of.get(str(event["target"])), event)

    def _candidates(self) -> list[str]:
        return sorted(
            gw.name
            for gw in self.session.healthy
            if self.session.spec.gateway(gw.name).backhaul is not None
        )

    def _loop(self) -> None:
        while not self._stop.wait(self._rng.expovariate(1.0 / self.mean_s)):
            names = self._candidates()
            if not names:
                return
            name = self._rng.choice(names)
            target = self.session.backhaul(name)
            protect = self.session.fault_protection()
            fault: Fault
            if self._rng.random() < 0.5:
                fault = Loss(target, round(self._rng.uniform(5, 30), 1), protect=protect)
                duration = self._rng.uniform(1.0, 4.0)
            else:
                seed = self._rng.randrange(1 << 30)
                fault = Flapping(target, 1.0, 0.5, seed, protect=protect)
                duration = self._rng.uniform(2.0, 4.0)
            self._gateway_of[str(fault.describe()["target"])] = name
            self._made.add(fault)
            self.timeline.schedule(fault, at_s=self.timeline.elapsed(), for_s=duration)


def from_env(session: BenchSession) -> RandomFaults | None:
    """Started random faults when ``$FIELDRIG_RANDOM_FAULTS`` holds a seed, else None."""
    seed = os.environ.get(ENV, "").strip()
    if not seed:
        return None
    mean_text = os.environ.get(MEAN_ENV) or str(DEFAULT_MEAN_S)
    try:
        mean = float(mean_text)
        number = int(seed)
    except ValueError:
        raise BenchError(f"{ENV}={seed!r} / {MEAN_ENV}={mean_text!r}: give an integer seed "
                         "and a number of seconds") from None  # fmt: skip
    if not 0 < mean < 1e6:
        raise BenchError(f"{MEAN_ENV}={mean_text}: give seconds > 0")
    session.store.record_event(
        gateway=None, kind="random_faults", message=f"seed {seed}, mean interval {mean:g} s"
    )
    return RandomFaults(session, number, mean).start()
