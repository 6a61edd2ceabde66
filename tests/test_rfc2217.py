"""The remote-serial path: a dongle exported by ser2net over RFC 2217 (Telnet COM port
control, as a lab exports dongles from a gateway or a labgrid exporter) and driven through
a ``rfc2217://`` URL exactly like a local port."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.lab.mesh_ncp import MeshNcp
from bench.mesh.loss import summarize
from bench.mesh.probing import Prober, periodic_schedule
from bench.mesh.sim import MeshConfig
from bench.radio.spinel_radio import SpinelRadio
from bench.transport.ptyport import PtyDevice
from bench.transport.serial import SerialPort

SCALE = 10.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def exported(tmp_path: Path) -> Iterator[str]:
    """A virtual border router on a pty, exported by a real ser2net on loopback."""
    if shutil.which("ser2net") is None:
        pytest.fail("ser2net is missing; scripts/setup installs it")
    device = PtyDevice(tmp_path, "br0")
    ncp = MeshNcp(device, MeshConfig(meters=30, seed=2), time_scale=SCALE)
    ncp.start()
    port = _free_port()
    config = tmp_path / "ser2net.yaml"
    config.write_text(
        "connection: &br0\n"
        f"  accepter: telnet(rfc2217),tcp,127.0.0.1,{port}\n"
        "  enable: on\n"
        "  options:\n"
        "    kickolduser: true\n"
        f"  connector: serialdev,{device.path},115200n81,local\n"
    )
    server = subprocess.Popen(
        ["ser2net", "-n", "-c", str(config), "-P", str(tmp_path / "ser2net.pid")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "ser2net did not listen within 10 s"
            time.sleep(0.05)
    # ign_set_control: a pty has no modem lines, so ser2net refuses SET_CONTROL (as labgrid
    # does, the client ignores that answer)
    yield f"rfc2217://127.0.0.1:{port}?ign_set_control&timeout=3"
    server.kill()
    server.wait(timeout=5)
    ncp.stop()
    device.unplug()


def test_spinel_radio_over_rfc2217(exported: str) -> None:
    port = SerialPort(exported, name="br0-remote")
    port.open()
    radio = SpinelRadio(port)
    try:
        identity = radio.identify()
        assert identity.protocol == "spinel 4.3 wisun"
        topology = radio.topology()
        assert len(topology.routes) == 30
        first_hop = [(r.destination, r.hops) for r in topology.routes if r.hops == 1][:3]
        records = Prober(radio, tmax_s=3.0, time_scale=SCALE).run(
            first_hop, periodic_schedule(0.2, 30)
        )
        assert summarize(records).delivery_low > 0.7
    finally:
        radio.close()
