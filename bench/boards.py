"""Board profiles: what a kind of gateway is, as the virtual lab emulates it.

The identity strings are the ones the real boards expose (device-tree model, os-release),
so inventory code reads a virtual board exactly as it reads a real one. ``cpu_quota`` is the
share of the host's CPUs a virtual gateway gets, so boards differ in speed the way real ones
do in kind (Orin Nano's Cortex-A78AE > Pi 4's Cortex-A72 > Coral's Cortex-A53); it does not
claim to reproduce their absolute speed. Power figures are typical published values for the
board at the wall (used by the virtual PSU later).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BoardProfile:
    """Identity and resources of one kind of board."""

    id: str
    model: str  # /sys/firmware/devicetree/base/model on the real board
    model_family: str  # every revision's model string contains this
    os_pretty_name: str
    os_id: str
    os_version_id: str
    os_version_codename: str
    cpus: int
    cpu_quota: float  # host CPUs a virtual gateway of this kind may use
    idle_watts: float
    watts_per_busy_core: float
    boot_delay_s: float


BOARDS: dict[str, BoardProfile] = {
    p.id: p
    for p in (
        BoardProfile(
            id="rpi4",
            model="Raspberry Pi 4 Model B Rev 1.5",
            model_family="Raspberry Pi 4",
            os_pretty_name="Debian GNU/Linux 12 (bookworm)",
            os_id="debian",
            os_version_id="12",
            os_version_codename="bookworm",
            cpus=4,
            cpu_quota=0.8,
            idle_watts=2.7,
            watts_per_busy_core=0.9,
            boot_delay_s=2.0,
        ),
        BoardProfile(
            id="jetson-orin-nano",
            model="NVIDIA Jetson Orin Nano Developer Kit",
            model_family="Jetson Orin Nano",
            os_pretty_name="Ubuntu 22.04.4 LTS",
            os_id="ubuntu",
            os_version_id="22.04",
            os_version_codename="jammy",
            cpus=6,
            cpu_quota=1.6,
            idle_watts=4.5,
            watts_per_busy_core=1.1,
            boot_delay_s=3.0,
        ),
        BoardProfile(
            id="coral-devboard",
            model="Freescale i.MX8MQ Phanbell",
            model_family="i.MX8MQ Phanbell",
            os_pretty_name="Mendel GNU/Linux 5 (Eagle)",
            os_id="mendel",
            os_version_id="5",
            os_version_codename="eagle",
            cpus=4,
            cpu_quota=0.5,
            idle_watts=2.9,
            watts_per_busy_core=0.8,
            boot_delay_s=2.5,
        ),
    )
}


def board_ids() -> list[str]:
    """The known board ids, sorted, for error messages."""
    return sorted(BOARDS)
