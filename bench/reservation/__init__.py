"""Shared labs: gateways locked for one bench at a time through a reservation system.

The bench talks to :class:`~bench.reservation.capability.Reservations`; the one backend is
a labgrid coordinator (:mod:`bench.reservation.labgrid`). :mod:`bench.reservation.places`
holds a session's places from its start to its close. See docs/shared-labs.md.
"""

from bench.reservation.capability import Reservations
from bench.reservation.labgrid import LabgridReservations, PlaceState
from bench.reservation.places import GatewayPlaces, hold_places, release_places

__all__ = [
    "GatewayPlaces",
    "LabgridReservations",
    "PlaceState",
    "Reservations",
    "hold_places",
    "release_places",
]
