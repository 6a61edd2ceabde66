"""The radio capability: what the bench asks of any gateway's radio dongle.

Drivers (Spinel NCP, SKSTACK-IP Route-B) implement :class:`Radio`; suites and the prober
(:mod:`bench.mesh.probing`) only use this protocol. Probes are pipelined: ``send_probe``
returns at once and ``collect`` hands back the echoes that have arrived, so the probe
rate is limited by the radio, not by a request/response round trip over the serial line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class DongleIdentity:
    """Who the dongle says it is."""

    driver: str
    """The driver's registry name (``spinel``, ``skstack``)."""
    firmware: str
    """The firmware / stack version string the dongle reports."""
    hwaddr: str
    """Its EUI-64 / MAC as lowercase hex without separators."""
    protocol: str
    """Protocol and version, e.g. ``spinel 4.3 wisun`` or ``skstack``."""


@dataclass(frozen=True)
class DongleState:
    """The dongle's network state and its counters."""

    role: str
    """``border-router``, ``router``, ``joined``, ``detached`` ..."""
    joined: bool
    counters: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class MeshNeighbour:
    """A node the dongle hears directly."""

    address: str
    """IPv6 address of the neighbour."""
    rssi_dbm: float | None
    etx: float | None
    """Expected transmission count the dongle estimates for the link (None if unknown)."""


@dataclass(frozen=True)
class MeshRoute:
    """A downward route the dongle (mesh root) knows: destination, next hop, hop count and
    the destination's parent as its last DAO said (RPL non-storing mode)."""

    destination: str
    next_hop: str
    parent: str
    hops: int


@dataclass(frozen=True)
class Topology:
    """The mesh as the dongle knows it."""

    neighbours: list[MeshNeighbour]
    routes: list[MeshRoute]

    def hops_to(self, destination: str) -> int | None:
        """Hop count to ``destination`` from the route table, None when unknown."""
        for route in self.routes:
            if route.destination == destination:
                return route.hops
        return None


@dataclass(frozen=True)
class ProbeEcho:
    """An echo answering probe ``seq`` sent to ``source``, with the host's receive time."""

    source: str
    seq: int
    received_ns: int
    """``time.monotonic_ns()`` when the host decoded the echo."""


@runtime_checkable
class Radio(Protocol):
    """A gateway's radio dongle, whatever protocol it speaks."""

    driver_name: str

    def identify(self) -> DongleIdentity:
        """Ask the dongle who it is (raises on timeout / protocol error)."""
        ...

    def state(self) -> DongleState:
        """Its network role and counters."""
        ...

    def topology(self) -> Topology:
        """The neighbours and routes it knows (hop counts included)."""
        ...

    def send_probe(self, destination: str, seq: int, payload_len: int = 32) -> int:
        """Send one echo request to ``destination``; returns ``time.monotonic_ns()`` of the
        moment it was handed to the serial port. Never waits for the answer."""
        ...

    def collect(self, timeout_s: float) -> list[ProbeEcho]:
        """Echoes that arrived within ``timeout_s`` (an empty list when none did)."""
        ...

    def close(self) -> None:
        """Release the serial port."""
        ...
