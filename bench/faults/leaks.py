"""Faults that outlive their test: found after each test's teardown, removed, reported.

A fault a test applies (in its setup, body or teardown) must be gone when its teardown
ends; one applied while setting up a fixture wider than a function (module, session...)
must be gone when that fixture is finalized. What is still on then is a bench bug: the
pytest plugin asks :meth:`LeakCheck.end` after each teardown, which removes every such
fault (oldest first; the parts of a composite fault such as flapping go with it) and says
what it found, and the plugin reports it as an error of that test and records it in the
run's events. Faults of :func:`bench.faults.cleanup.active` only: this process's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.errors import BenchError
from bench.faults import cleanup
from bench.faults.base import Composite, Fault, FaultLeaked

__all__ = ["FaultLeaked", "Leak", "LeakCheck"]


@dataclass(frozen=True)
class Leak:
    """One fault found on after its test: what it was, and whether removing it worked."""

    fault: dict[str, Any]
    error: str | None = None

    def __str__(self) -> str:
        where = f"{self.fault.get('kind')} on {self.fault.get('target')}"
        return where if self.error is None else f"{where} (removal failed: {self.error})"


def _top_level(faults: list[Fault]) -> dict[int, Fault]:
    """The faults that are not parts of another active one, by id (objects kept alive)."""
    parts = {id(p) for f in faults if isinstance(f, Composite) for p in f.parts()}
    return {id(f): f for f in faults if id(f) not in parts}


@dataclass
class LeakCheck:
    """Per-test bookkeeping of applied faults (this process's, through the cleanup registry).

    ``exempt`` spares faults a test does not own (the session's random background faults).
    Fault objects are held while compared, so an id is never reused meanwhile.
    """

    exempt: Callable[[Fault], bool] = lambda fault: False
    _before: dict[int, Fault] = field(default_factory=dict)
    _scoped: dict[int, dict[int, Fault]] = field(default_factory=dict)
    _released: dict[int, Fault] = field(default_factory=dict)

    def snapshot(self) -> dict[int, Fault]:
        """The faults on now."""
        return _top_level(cleanup.active())

    def begin(self) -> None:
        """A test starts (before its setup): what is on now is not its doing."""
        self._before = self.snapshot()
        self._released = {}

    def adopt(self, owner: object, before: dict[int, Fault]) -> None:
        """A fixture wider than a function was set up: the faults it applied (on now,
        not in ``before``) are its own until :meth:`finalized`."""
        new = {k: f for k, f in self.snapshot().items() if k not in before}
        if new:
            self._scoped.setdefault(id(owner), {}).update(new)

    def finalized(self, owner: object) -> None:
        """That fixture was torn down: what it applied and is still on has leaked."""
        mine = self._scoped.pop(id(owner), {})
        self._released.update({k: f for k, f in self.snapshot().items() if k in mine})

    def end(self) -> list[Leak]:
        """After a test's teardown: remove what it left on; one :class:`Leak` each."""
        owned = {k for faults in self._scoped.values() for k in faults}
        now = self.snapshot()
        leaked = [
            f
            for k, f in now.items()
            if (k not in self._before and k not in owned and not self.exempt(f))
            or k in self._released
        ]
        self._before, self._released = {}, {}
        found = []
        for fault in leaked:
            if not any(fault is f for f in cleanup.active()):
                continue  # went with one removed before it
            error = None
            try:
                fault.remove()
            except (BenchError, OSError) as exc:
                error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            found.append(Leak(fault.describe(), error))
        return found
