"""The virtual lab's bench supply: a real pyvisa-py session to the lab's SCPI server, whose
outputs power the virtual gateways (real processes killed and sshd restarted)."""

from __future__ import annotations

import dataclasses
import socket
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.boards import BOARDS
from bench.errors import TransportError
from bench.gateway import ConnectedGateway
from bench.instruments.psu import ScpiPsu, SetpointRefused, open_psu
from bench.lab.virtual import VirtualLab
from bench.rig import Rig


@pytest.fixture
def psu(lab: VirtualLab, virtual_rig: Rig) -> Iterator[ScpiPsu]:
    supply = open_psu("psu1", virtual_rig.instruments["psu1"])
    yield supply
    for channel in (1, 2, 3):  # whatever a test did, every board ends powered
        supply.output(channel, True)
    supply.close()
    for name in ("gw1", "gw2", "gw3"):
        ConnectedGateway(virtual_rig.gateway(name)).connect(deadline_s=30)


def mean_power(psu: ScpiPsu, channel: int, seconds: float) -> float:
    samples = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        samples.append(psu.measure_power(channel))
        time.sleep(0.02)
    return statistics.mean(samples)


def test_supply_is_a_keysight_at_the_rigs_set_points(psu: ScpiPsu, virtual_rig: Rig) -> None:
    assert psu.identify().startswith("Keysight Technologies,E36313A")
    for channel, spec in virtual_rig.instruments["psu1"].channels.items():
        assert psu.output_state(channel) is True
        assert psu.measure_voltage(channel) == pytest.approx(spec.voltage, abs=0.01)


def test_current_follows_the_gateways_cpu(psu: ScpiPsu, virtual_rig: Rig) -> None:
    profile = BOARDS["jetson-orin-nano"]
    idle = mean_power(psu, 2, 1.0)
    assert profile.idle_watts * 0.95 < idle < profile.idle_watts + profile.watts_per_busy_core
    gw = ConnectedGateway(virtual_rig.gateway("gw2"))
    try:
        spinner = gw.spawn(["python3", "-c", "while True: pass"])
        time.sleep(0.3)
        busy = mean_power(psu, 2, 1.0)
        spinner.send_signal(9)
    finally:
        gw.close()
    # one spinning core adds about watts_per_busy_core (Jetson's quota is above one CPU)
    assert busy - idle == pytest.approx(profile.watts_per_busy_core, rel=0.25)


def test_set_point_beyond_the_rigs_limit_is_refused(psu: ScpiPsu) -> None:
    with pytest.raises(SetpointRefused, match=r"max_voltage 5\.5"):
        psu.set_voltage(1, 6.0)
    assert psu.measure_voltage(1) == pytest.approx(5.1, abs=0.01)


def test_power_cut_and_boot(psu: ScpiPsu, lab: VirtualLab, virtual_rig: Rig) -> None:
    gw = ConnectedGateway(virtual_rig.gateway("gw3"))
    try:
        assert gw.run(["hostname"]).text == "gw3\n"
        gw.run("echo survives > /root/fieldrig-disk")
        psu.output(3, False)
        assert psu.measure_power(3) == 0.0
        status = lab.status()
        (gw3,) = [g for g in status.gateways if g.name == "gw3"]
        assert gw3.power == "off" and gw3.sshd_pid is None and not gw3.ssh_answers
        assert status.healthy  # a board the bench switched off is not a broken lab
        gw.params = dataclasses.replace(gw.params, reconnect_deadline_s=1.0)
        with pytest.raises(TransportError):
            gw.run(["true"], timeout=5)
        on_at = time.monotonic()
        psu.output(3, True)
        gw.params = dataclasses.replace(gw.params, reconnect_deadline_s=30.0)
        assert gw.run(["cat", "/root/fieldrig-disk"]).text == "survives\n"  # the disk survived
        boot_s = time.monotonic() - on_at
        assert boot_s >= BOARDS["coral-devboard"].boot_delay_s
        assert gw.connects == 2
    finally:
        gw.close()


def test_lab_down_stops_the_supply(lab: VirtualLab) -> None:
    """Down leaves no supply process and no listener; up brings both back."""

    def supply_processes() -> list[str]:
        found = []
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    cmdline = (proc / "cmdline").read_bytes()
                except OSError:
                    continue
                if b"bench.lab.power" in cmdline:
                    found.append(proc.name)
        return found

    assert supply_processes()
    lab.down()
    try:
        assert supply_processes() == []
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", 5025), timeout=0.5).close()
    finally:
        assert lab.up() is True
    assert lab.status().healthy and supply_processes()
