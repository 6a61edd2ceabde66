"""Which dongles the virtual lab emulates for a rig, and where (see :mod:`bench.lab.radio`).

A gateway whose ``radio.port`` lies in ``<state_dir>/radio/`` gets an emulated dongle of its
``driver``: a Spinel border router fronting a simulated mesh (:class:`VirtualRadio`) or a
SKSTACK-IP Route-B dongle in its ``dialect`` with one smart meter (:class:`VirtualRouteB`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench.mesh.sim import MeshConfig
from bench.radio.skstack_driver import Dialect
from bench.rig import Rig

CONTROL_SOCKET = "control.sock"


@dataclass(frozen=True)
class VirtualRadio:
    """One emulated dongle: its gateway, pty path, mesh and attenuator channel."""

    gateway: str
    path: Path
    config: MeshConfig
    attenuator_channel: int | None


@dataclass(frozen=True)
class VirtualRouteB:
    """One emulated Route-B dongle: its gateway, pty path, dialect, the seed of its link's
    losses and the environment variables that hold the credentials its meter accepts."""

    gateway: str
    path: Path
    dialect: Dialect
    seed: int
    id_env: str
    password_env: str


EmulatedDongle = VirtualRadio | VirtualRouteB


def radio_dir(rig: Rig) -> Path:
    return rig.state_dir / "radio"


def virtual_radios(rig: Rig) -> list[EmulatedDongle]:
    """The dongles the virtual lab emulates for ``rig``, in gateway order (none for a real
    rig)."""
    if rig.virtual is None:
        return []
    directory = radio_dir(rig)
    mesh = rig.virtual.mesh
    out: list[EmulatedDongle] = []
    for i, gw in enumerate(rig.gateways):
        radio = gw.radio
        if radio is None or Path(radio.port).parent != directory:
            continue
        if radio.driver == "spinel":
            channel = radio.attenuator.channel if radio.attenuator is not None else None
            config = MeshConfig(
                meters=mesh.meters_for(gw.name), seed=mesh.seed + i, contention=mesh.contention
            )
            out.append(VirtualRadio(gw.name, Path(radio.port), config, channel))
        elif radio.route_b is not None and radio.dialect is not None:
            route_b = radio.route_b
            out.append(VirtualRouteB(gw.name, Path(radio.port), radio.dialect, mesh.seed + i,
                                     route_b.id_env, route_b.password_env))  # fmt: skip
    return out


def virtual_meshes(rig: Rig) -> list[VirtualRadio]:
    """The emulated Spinel dongles, each in front of its own simulated mesh."""
    return [r for r in virtual_radios(rig) if isinstance(r, VirtualRadio)]


def attenuator_of(rig: Rig) -> tuple[str, int] | None:
    """(name, port) of the attenuator the rig expects on 127.0.0.1 (the virtual one)."""
    for name, attenuator in rig.attenuators.items():
        parts = attenuator.resource.split("::")
        if len(parts) >= 3 and parts[1] in ("127.0.0.1", "localhost"):
            return name, int(parts[2])
    return None
