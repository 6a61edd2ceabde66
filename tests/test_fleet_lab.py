"""Building the virtual lab in bulk (``ip -batch``, parallel sshd), per-gateway mesh sizes, and
the memory footprint of a lab. Real namespaces, sshd and radio service, on lab id fleet3."""

from __future__ import annotations

import os
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.errors import LabError, RigError
from bench.lab import bulk, system
from bench.lab.footprint import footprint
from bench.lab.radio_plan import virtual_radios
from bench.lab.virtual import VirtualLab
from bench.radio.registry import open_radio
from bench.rig import load_rig, parse_rig
from bench.transport.serial import SerialPort
from tests.test_lab import leftovers

LAB_ID = "fleet3"
NETNS = f"fr-{LAB_ID}-scratch"  # a lone namespace of this lab's prefix, for the bulk helpers


def fleet_rig(mesh: str = "", radios: int = 0, gateways: int = 3) -> str:
    boards = ["rpi4", "jetson-orin-nano", "coral-devboard"]
    lines = []
    for i in range(gateways):
        radio = (
            f', radio: {{port: "{{state_dir}}/radio/f{i}", driver: spinel}}' if i < radios else ""
        )
        lines.append(f"  - {{name: f{i}, board: {boards[i % 3]}{radio}}}")
    return (
        textwrap.dedent(f"""\
        name: {LAB_ID}
        virtual:
          lab_id: {LAB_ID}
          state_dir: /var/lib/fieldrig/{LAB_ID}
          management_subnet: 10.213.50.0/24
          backhaul_subnet: 10.214.50.0/24
        """)
        + textwrap.indent(mesh, "  ")
        + textwrap.dedent("""\
        ssh_defaults:
          auth: {identity_file: "{state_dir}/id_ed25519"}
          host_key: {known_hosts: "{state_dir}/known_hosts"}
        gateways:
        """)
        + "\n".join(lines)
        + "\n"
    )


# --- per-gateway mesh size: validation ---------------------------------------------------


def test_per_gateway_meters_override_the_default(tmp_path: Path) -> None:
    mesh = "mesh:\n  meters: 40\n  per_gateway:\n    f0: {meters: 5000}\n"
    rig = parse_rig(fleet_rig(mesh, radios=2), "fleet.yaml")
    assert rig.virtual is not None
    assert [rig.virtual.mesh.meters_for(n) for n in ("f0", "f1", "f2")] == [5000, 40, 40]
    assert [(r.gateway, r.config.meters) for r in virtual_radios(rig)] == [
        ("f0", 5000),
        ("f1", 40),
    ]


def test_mesh_contention_reaches_every_simulated_mesh() -> None:
    default = parse_rig(fleet_rig("mesh:\n  meters: 40\n", radios=2), "fleet.yaml")
    assert {r.config.contention for r in virtual_radios(default)} == {False}
    rig = parse_rig(fleet_rig("mesh:\n  meters: 40\n  contention: true\n", radios=2), "f.yaml")
    assert {r.config.contention for r in virtual_radios(rig)} == {True}
    with pytest.raises(RigError, match=r"virtual.mesh.contention: .*true or false"):
        parse_rig(fleet_rig("mesh:\n  contention: maybe\n", radios=2), "f.yaml")


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            "f9: {meters: 10}",
            "fleet.yaml:9: virtual.mesh.per_gateway.f9: no gateway 'f9' in this rig; "
            "gateways are: f0, f1, f2",
        ),
        (
            "f2: {meters: 10}",
            "fleet.yaml:9: virtual.mesh.per_gateway.f2: gateway 'f2' has no emulated Spinel "
            'dongle, so no mesh to size; give it radio: {port: "{state_dir}/radio/f2", '
            "driver: spinel} or remove this entry",
        ),
        (
            "f0: {meters: 5001}",
            "fleet.yaml:9: virtual.mesh.per_gateway.f0.meters: must be a number of meters from "
            "1 to 5000, got 5001",
        ),
        (
            "f0: 300",
            "fleet.yaml:9: virtual.mesh.per_gateway.f0: must be a mapping with keys meters, "
            "got 300",
        ),
    ],
)
def test_per_gateway_mistakes_are_one_line(tmp_path: Path, entry: str, message: str) -> None:
    mesh = f"mesh:\n  per_gateway:\n    {entry}\n"
    with pytest.raises(RigError) as caught:
        parse_rig(fleet_rig(mesh, radios=2), "fleet.yaml")
    assert str(caught.value) == message


# --- bulk helpers, on a real namespace ---------------------------------------------------


@pytest.fixture
def scratch_netns() -> Iterator[str]:
    system.run(["ip", "netns", "add", NETNS])
    try:
        yield NETNS
    finally:
        system.kill_all(system.netns_pids(NETNS))
        system.run(["ip", "netns", "del", NETNS], check=False)


def test_ip_batch_runs_in_the_namespace_and_names_the_failing_command(scratch_netns: str) -> None:
    bulk.ip_batch(["link set lo up", "link add br7 type bridge"], scratch_netns)
    assert set(system.link_names(scratch_netns)) == {"lo", "br7"}
    with pytest.raises(LabError) as caught:
        bulk.ip_batch(["link set lo up", "link add br7 type bridge"], scratch_netns)
    assert str(caught.value) == (
        f"`ip -n {scratch_netns} link add br7 type bridge` failed: RTNETLINK answers: File exists"
    )
    bulk.ip_batch(["link del br7", "link del br7", "link add br8 type bridge"],
                  scratch_netns, force=True)  # fmt: skip
    assert set(system.link_names(scratch_netns)) == {"lo", "br8"}


def test_pids_by_netns_agrees_with_ip_netns_pids(scratch_netns: str) -> None:
    sleepers = [
        subprocess.Popen(["ip", "netns", "exec", scratch_netns, "sleep", "30"]) for _ in range(2)
    ]
    try:
        deadline = time.monotonic() + 5
        while len(system.netns_pids(scratch_netns)) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        found = bulk.pids_by_netns([scratch_netns, f"fr-{LAB_ID}-absent"])
        assert sorted(found[scratch_netns]) == sorted(system.netns_pids(scratch_netns))
        assert sorted(found[scratch_netns]) == sorted(p.pid for p in sleepers)
        assert found[f"fr-{LAB_ID}-absent"] == []
        assert os.getpid() not in found[scratch_netns]
    finally:
        for proc in sleepers:
            proc.kill()
            proc.wait()


def test_each_keeps_order_and_raises_the_first_error() -> None:
    assert bulk.each(list(range(20)), lambda i: i * i) == [i * i for i in range(20)]

    def work(i: int) -> int:
        if i in (3, 7):
            raise ValueError(f"item {i}")
        return i

    with pytest.raises(ValueError, match="item 3"):
        bulk.each(list(range(10)), work)


def test_footprint_counts_live_processes_only() -> None:
    proc = subprocess.Popen(["sleep", "30"])
    try:
        mine = footprint([os.getpid(), proc.pid])
    finally:
        proc.kill()
        proc.wait()
    assert mine.processes == 2
    assert 0 < mine.pss_bytes <= mine.rss_bytes
    assert footprint([proc.pid]).processes == 0  # gone now


# --- a lab built in bulk -----------------------------------------------------------------

# From inside a namespace, TCP to port 9 (discard) of an address where nothing listens: a
# reset ("refused") proves the address answered over the link; no route or silence does not.
_REACH = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], 9), timeout=2)
except ConnectionRefusedError:
    sys.exit(0)
except OSError as exc:
    sys.exit(str(exc))
"""


def backhaul_answers(namespace: str, address: str) -> bool:
    argv = ["ip", "netns", "exec", namespace, "python3", "-c", _REACH, address]
    return subprocess.run(argv, capture_output=True, check=False, timeout=10).returncode == 0


@pytest.fixture
def fleet3(tmp_path: Path) -> Iterator[VirtualLab]:
    mesh = "mesh:\n  meters: 20\n  per_gateway:\n    f0: {meters: 60}\n"
    path = tmp_path / "fleet3.yaml"
    path.write_text(fleet_rig(mesh, radios=2))
    lab = VirtualLab(load_rig(path))
    try:
        yield lab
    finally:
        lab.down()
        assert leftovers(lab) == []


def test_bulk_built_lab_is_wired_as_planned(fleet3: VirtualLab) -> None:
    lab, plan = fleet3, fleet3.plan
    assert lab.up()
    assert lab.status().healthy
    assert set(lab.phases) >= {"keys", "network", "sshd", "radios"}
    bridge_ports = system.run(["ip", "-o", "link", "show", "master", plan.bridge])
    cloud_ports = system.run(["ip", "-n", plan.cloud_namespace, "-o", "link", "show",
                              "master", "wanbr"])  # fmt: skip
    for gw in plan.gateways:
        assert f" {gw.root_veth}@" in bridge_ports
        assert f" {gw.cloud_veth}@" in cloud_ports
        addrs = system.run(["ip", "-n", gw.namespace, "-o", "-4", "addr", "show"])
        assert f"mgmt0    inet {gw.mgmt_address}/24" in addrs
        assert f"wan0    inet {gw.wan_address}/24" in addrs
        assert "lo    inet 127.0.0.1/8" in addrs
        assert backhaul_answers(gw.namespace, plan.cloud_address)
    pids = lab.processes()
    sshds = [g.sshd_pid for g in lab.status().gateways]
    assert all(pid in pids for pid in sshds)
    assert footprint(pids).processes == len(pids)


def test_per_gateway_mesh_size_reaches_the_dongles(fleet3: VirtualLab) -> None:
    fleet3.up()
    sizes = {}
    for name in ("f0", "f1"):
        link = fleet3.rig.gateway(name).radio
        assert link is not None
        port = SerialPort(link.port, name=f"{name}-radio")
        port.open()
        radio = open_radio(link, port)
        try:
            sizes[name] = len(radio.topology().routes)
        finally:
            radio.close()
    assert sizes == {"f0": 60, "f1": 20}
