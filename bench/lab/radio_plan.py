"""Which dongles the virtual lab emulates for a rig, and where (see :mod:`bench.lab.radio`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench.mesh.sim import MeshConfig
from bench.rig import Rig

CONTROL_SOCKET = "control.sock"


@dataclass(frozen=True)
class VirtualRadio:
    """One emulated dongle: its gateway, pty path, mesh and attenuator channel."""

    gateway: str
    path: Path
    config: MeshConfig
    attenuator_channel: int | None


def radio_dir(rig: Rig) -> Path:
    return rig.state_dir / "radio"


def virtual_radios(rig: Rig) -> list[VirtualRadio]:
    """The dongles the virtual lab emulates for ``rig`` (none for a real rig)."""
    if rig.virtual is None:
        return []
    directory = radio_dir(rig)
    mesh = rig.virtual.mesh
    out: list[VirtualRadio] = []
    for i, gw in enumerate(rig.gateways):
        radio = gw.radio
        if radio is None or radio.driver != "spinel" or Path(radio.port).parent != directory:
            continue
        channel = radio.attenuator.channel if radio.attenuator is not None else None
        config = MeshConfig(meters=mesh.meters_for(gw.name), seed=mesh.seed + i)
        out.append(VirtualRadio(gw.name, Path(radio.port), config, channel))
    return out


def attenuator_of(rig: Rig) -> tuple[str, int] | None:
    """(name, port) of the attenuator the rig expects on 127.0.0.1 (the virtual one)."""
    for name, attenuator in rig.attenuators.items():
        parts = attenuator.resource.split("::")
        if len(parts) >= 3 and parts[1] in ("127.0.0.1", "localhost"):
            return name, int(parts[2])
    return None
