"""The virtual lab's radios: a Spinel border router per gateway on a pty, each in front of
its own simulated mesh, the attenuator wired to them, and the meter control socket."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.errors import LabError
from bench.instruments.registry import open_attenuator
from bench.lab.radio_plan import CONTROL_SOCKET, radio_dir, virtual_radios
from bench.lab.virtual import VirtualLab
from bench.mesh.control import MeshControl
from bench.mesh.loss import summarize
from bench.mesh.probing import Prober, periodic_schedule
from bench.radio.registry import open_radio
from bench.radio.spinel_radio import SpinelRadio
from bench.rig import Rig
from bench.transport.serial import SerialPort


@pytest.fixture
def radios(lab: VirtualLab, virtual_rig: Rig) -> Iterator[dict[str, SpinelRadio]]:
    opened: dict[str, SpinelRadio] = {}
    for gw in virtual_rig.gateways:
        assert gw.radio is not None
        port = SerialPort(gw.radio.port, name=f"{gw.name}-radio")
        port.open()
        radio = open_radio(gw.radio, port)
        assert isinstance(radio, SpinelRadio)
        opened[gw.name] = radio
    yield opened
    for radio in opened.values():
        radio.close()


def test_every_gateway_has_its_own_dongle_and_mesh(
    lab: VirtualLab, virtual_rig: Rig, radios: dict[str, SpinelRadio]
) -> None:
    status = lab.status()
    assert status.radios == ["gw1", "gw2", "gw3"] and status.radios_running
    assert [r.gateway for r in virtual_radios(virtual_rig)] == ["gw1", "gw2", "gw3"]
    meters = virtual_rig.virtual.mesh.meters if virtual_rig.virtual else 0
    hwaddrs, tables = set(), []
    for radio in radios.values():
        hwaddrs.add(radio.identify().hwaddr)
        topology = radio.topology()  # several pages: 200 routes do not fit one frame
        assert len(topology.routes) == meters
        tables.append(sorted((r.destination, r.hops) for r in topology.routes))
    assert len(hwaddrs) == 3
    assert tables[0] != tables[1] != tables[2]  # seed + index: three different meshes


def test_attenuator_channel_fades_only_its_own_mesh(
    virtual_rig: Rig, radios: dict[str, SpinelRadio]
) -> None:
    def first_hop_delivery(name: str) -> tuple[float, float]:
        radio = radios[name]
        targets = [(r.destination, r.hops) for r in radio.topology().routes if r.hops == 1][:4]
        prober = Prober(radio, tmax_s=3.0, time_scale=virtual_rig.virtual.mesh.time_scale)
        summary = summarize(prober.run(targets, periodic_schedule(0.25, 24)))
        return 1 - summary.ci_high, 1 - summary.ci_low  # delivery interval

    attenuator = open_attenuator("att1", virtual_rig.attenuators["att1"])
    try:
        attenuator.set_db(2, 60.0)
        faded_high = first_hop_delivery("gw2")[1]
        other_low = first_hop_delivery("gw3")[0]
    finally:
        attenuator.close()  # back to safe_db (0 dB)
    assert faded_high < 0.2  # 60 dB silences gw2's root links
    assert other_low > 0.5  # gw3's mesh is on channel 3, untouched
    assert first_hop_delivery("gw2")[0] > 0.5  # and gw2 recovers at the safe setting


def test_mesh_control_powers_meters_and_names_mistakes(
    virtual_rig: Rig, radios: dict[str, SpinelRadio]
) -> None:
    control = MeshControl(radio_dir(virtual_rig) / CONTROL_SOCKET, "gw1")
    meter = radios["gw1"].topology().routes[0].destination
    before = control.stats()["counters"]
    control.power_off(meter)
    control.power_on(meter)
    after = control.stats()
    assert after["meters"] == 200 and after["time_scale"] == 5
    assert after["counters"]["attempts"] >= before["attempts"]
    with pytest.raises(LabError, match="no virtual radio for gateway 'gw9'"):
        MeshControl(control.path, "gw9").stats()
    with pytest.raises(LabError, match="power_off failed"):
        control.power_off("fd00:db8::dead")
    with pytest.raises(LabError, match="unknown mesh control operation"):
        control._call("explode")
