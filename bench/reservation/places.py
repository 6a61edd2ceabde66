"""The labgrid places of one bench session: taken at start, watched, given back at close."""

from __future__ import annotations

import atexit
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from bench.errors import ReservationError
from bench.reservation.capability import Reservations
from bench.reservation.labgrid import LabgridReservations

if TYPE_CHECKING:
    from bench.session import BenchSession

Lost = Callable[[str, str], None]
"""Called with (gateway, reason) once when the lock on a gateway's place is lost."""


class GatewayPlaces:
    """Gateways' places held through a reservation system for one session.

    ``watch()`` checks every ``poll_s`` seconds (one question for all places) that they are
    still ours and reports each lost one once. ``release()`` runs at most once; it is also
    registered with :mod:`atexit`, so a session that dies before its ``close()`` still gives
    its places back when the interpreter exits (not after SIGKILL). With ``owner=False``
    (a pytest-xdist worker following the one that took them) it only stops watching.
    """

    def __init__(
        self,
        backend: Reservations,
        places: Mapping[str, str],
        *,
        poll_s: float,
        on_lost: Lost,
        owner: bool = True,
    ) -> None:
        self.backend = backend
        self.places = dict(places)  # gateway -> place
        self.held: set[str] = set()  # gateways whose place we hold
        self.lost: dict[str, str] = {}
        self._poll_s = poll_s
        self._on_lost = on_lost
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._released = not owner
        if owner:
            atexit.register(self.release)

    def take(self, timeout_s: float, priority: int) -> dict[str, str]:
        """Reserve and acquire every place, waiting up to ``timeout_s``; why each gateway
        whose place could not be had is unavailable."""
        by_place = {place: gateway for gateway, place in self.places.items()}
        failed = self.backend.acquire(list(by_place), timeout_s=timeout_s, priority=priority)
        self.held = {gw for gw, place in self.places.items() if place not in failed}
        return {by_place[place]: reason for place, reason in failed.items()}

    def follow(self) -> dict[str, str]:
        """Take as held the places this bench's identity holds now (another worker of the
        run took them); why each other gateway is unavailable."""
        holders = self.backend.holders()
        self.held = {g for g, p in self.places.items() if holders.get(p) == self.backend.identity}
        return {
            gateway: f"labgrid place {place} is not held by this run (its first worker could "
            "not take it)"
            for gateway, place in self.places.items()
            if gateway not in self.held
        }

    def check(self) -> dict[str, str]:
        """One look at the coordinator: the gateways whose place we lost since last time."""
        with self._lock:
            if not self.held:
                return {}
            holders = self.backend.holders()
            found: dict[str, str] = {}
            for gateway in sorted(self.held):
                place = self.places[gateway]
                if place not in holders:
                    found[gateway] = f"labgrid place {place} was deleted while this run held it"
                elif holders[place] != self.backend.identity:
                    now = f"now held by {holders[place]}" if holders[place] else "released"
                    found[gateway] = (
                        f"lock on labgrid place {place} lost ({now}, not by this run); "
                        "the bench stopped using this gateway"
                    )
            for gateway, reason in found.items():
                self.held.discard(gateway)
                self.lost[gateway] = reason
        for gateway, reason in found.items():
            self._on_lost(gateway, reason)
        return found

    def watch(self) -> None:
        """Check in a background thread until :meth:`release`."""
        if self._thread is None and self.held:
            self._thread = threading.Thread(target=self._watch, name="place-watch", daemon=True)
            self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(self._poll_s):
            try:
                self.check()
            except ReservationError:
                continue  # coordinator briefly away: the locks themselves live on there

    def release(self) -> list[str]:
        """Stop watching and give every held place back; the errors, one line each."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=60)
        errors: list[str] = []
        with self._lock:
            if self._released:
                return errors
            self._released = True
            for gateway in sorted(self.places):
                try:  # a place this bench no longer holds is left alone by the backend
                    self.backend.release(self.places[gateway])
                except ReservationError as exc:
                    errors.append(f"{gateway}: {exc}")
            self.held.clear()
        atexit.unregister(self.release)
        return errors


def hold_places(
    session: BenchSession, say: Callable[[str], None], *, follow: bool = False
) -> GatewayPlaces | None:
    """Take the places of the session's gateways when its rig names a coordinator; a
    gateway whose place cannot be had becomes unavailable (an infrastructure error), as
    does one whose lock is lost later. With ``follow`` (a pytest-xdist worker joining the
    run) take nothing: use what the run's first worker holds, watch it, never release it."""
    coordinator = session.spec.coordinator
    places = {
        name: place for name in session.gateways if (place := session.spec.gateway(name).place)
    }
    if coordinator is None or not places:
        return None

    def unavailable(gateway: str, reason: str, kind: str) -> None:
        session.unavailable[gateway] = reason
        session.store.record_event(gateway=gateway, kind=kind, message=reason)

    try:
        backend = LabgridReservations(coordinator.address)
    except ReservationError as exc:
        for gateway in places:
            unavailable(gateway, str(exc), "place_unavailable")
            say(f"fieldrig: INFRASTRUCTURE ERROR gateway {gateway} unavailable: {exc}")
        return None
    held = GatewayPlaces(
        backend,
        places,
        poll_s=coordinator.poll_s,
        on_lost=(
            session.unavailable.__setitem__  # the first worker records the event
            if follow
            else lambda gateway, reason: unavailable(gateway, reason, "place_lost")
        ),
        owner=not follow,
    )
    if follow:
        try:
            failed = held.follow()
        except ReservationError as exc:
            failed = dict.fromkeys(places, str(exc))
        for gateway, reason in failed.items():
            session.unavailable[gateway] = reason  # the first worker recorded the event
        held.watch()
        return held
    say(
        f"fieldrig: taking labgrid places {', '.join(sorted(places.values()))} from "
        f"{backend.address} as {backend.identity} (waiting up to {coordinator.wait_timeout_s:g} s)"
    )
    try:
        failed = held.take(coordinator.wait_timeout_s, coordinator.priority)
    except ReservationError as exc:
        failed = dict.fromkeys(places, str(exc))
    for gateway, reason in failed.items():
        unavailable(gateway, reason, "place_unavailable")
        say(f"fieldrig: INFRASTRUCTURE ERROR gateway {gateway} unavailable: {reason}")
    held.watch()
    return held


def release_places(session: BenchSession, say: Callable[[str], None]) -> None:
    """Give the session's places back (its ``close()``), recording what could not be."""
    held = session.places
    if held is None:
        return
    for error in held.release():
        session.store.record_event(gateway=None, kind="place_release_failed", message=error)
        say(f"fieldrig: INFRASTRUCTURE ERROR {error}")
