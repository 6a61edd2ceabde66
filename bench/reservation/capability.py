"""What the bench needs from a lab's reservation system (a labgrid coordinator today)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class Reservations(Protocol):
    """Places (one gateway and what belongs to it) locked for one user at a time.

    ``identity`` is how the reservation system names this bench (labgrid: ``host/user``).
    Every method raises :class:`~bench.errors.ReservationError` (one line) when the system
    itself cannot be used, e.g. its coordinator is unreachable.
    """

    identity: str

    def acquire(
        self, places: Sequence[str], *, timeout_s: float, priority: int = 0
    ) -> dict[str, str]:
        """Reserve every place (higher ``priority`` is served first) and lock each as soon
        as it is ours, waiting at most ``timeout_s`` in all. Returns why each place that
        could not be had was not (its reservation is withdrawn); the others are held."""
        ...

    def held(self, place: str) -> bool:
        """Whether this bench still holds the lock on ``place`` (False once someone kicked
        it, released it or the place was deleted)."""
        ...

    def holders(self) -> dict[str, str | None]:
        """Every place and who holds it now (None: nobody), in one question."""
        ...

    def release(self, place: str) -> None:
        """Unlock ``place`` (only if this bench still holds it) and withdraw its
        reservation; a place this bench does not hold is left alone."""
        ...
