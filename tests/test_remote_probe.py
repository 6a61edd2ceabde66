"""The gateway-side prober (bench/mesh/remote_probe.py): fieldrig's own prober and Spinel driver
shipped to a gateway in a zip archive, run there with the board's python against the dongle
as the gateway sees it, every probe's fate streamed back over SSH.

The archive is checked on its own with the board python against a real pty dongle; then on
gw1 of the virtual lab through a real sshd, once with the backhaul up and once partitioned
under a launcher that contacts the cloud first: the second run must fail, which is what lets
the mesh suite's backhaul-down test catch a local path that needs the cloud.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.errors import BenchError, RigError
from bench.faults import LinkTarget, Partition, Protection
from bench.gateway import ConnectedGateway
from bench.lab.mesh_ncp import MeshNcp
from bench.lab.virtual import VirtualLab, seen_from_gateway
from bench.mesh.loss import ProbeRecord, summarize
from bench.mesh.probing import periodic_schedule
from bench.mesh.remote_probe import (
    BOARD_MODULE,
    GatewayProber,
    RemoteProbeError,
    build_bundle,
    bundle_modules,
)
from bench.mesh.sim import MeshConfig
from bench.radio.capability import Radio
from bench.results import RunStore
from bench.rig import Rig, load_rig, parse_rig
from bench.session import BenchSession
from bench.transport.ptyport import PtyDevice

SPINEL = "bench.radio.spinel_radio"
# What a gateway application that needs its cloud broker before deciding anything does
# first; then it runs the real command (the prober). A refused connection is an answer.
NEEDS_CLOUD = (
    "import os, socket, sys\n"
    "try:\n"
    "    socket.create_connection((sys.argv[1], 9), 2).close()\n"
    "except ConnectionRefusedError:\n"
    "    pass\n"
    "except OSError as exc:\n"
    "    sys.exit(f'cannot reach the cloud broker at {sys.argv[1]}: {exc}')\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


def test_bundle_ships_the_driver_and_prober_but_not_the_host_side() -> None:
    shipped, empty = bundle_modules([BOARD_MODULE, SPINEL])
    assert {BOARD_MODULE, SPINEL, "bench.mesh.probing", "bench.radio.spinel_driver",
            "bench.transport.serial", "bench.errors"} <= set(shipped)  # fmt: skip
    # host-only modules (pydantic, paramiko, the simulator) never reach the board
    assert not {"bench.rig", "bench.gateway", "bench.mesh.sim", "bench.mesh"} & set(shipped)
    assert {"bench", "bench.mesh", "bench.radio"} <= set(empty)
    bundle = build_bundle([BOARD_MODULE, SPINEL])
    assert bundle == build_bundle([BOARD_MODULE, SPINEL])  # same sources, same bytes
    with zipfile.ZipFile(io.BytesIO(bundle)) as archive:
        assert "import" not in archive.read("bench/mesh/__init__.py").decode()
        assert "__main__.py" in archive.namelist()


def test_board_side_probes_a_real_pty_dongle_from_the_archive(
    tmp_path: Path, virtual_rig: Rig
) -> None:
    """The archive alone, with the board python in isolated mode (no fieldrig installed)."""
    board_python = virtual_rig.virtual.board_python if virtual_rig.virtual else None
    assert board_python is not None and board_python.exists(), "run scripts/setup"
    device = PtyDevice(tmp_path, "dongle")
    ncp = MeshNcp(device, MeshConfig(meters=30, seed=5), time_scale=10.0)
    ncp.start()
    try:
        nearest = sorted(range(1, ncp.sim.meters + 1), key=lambda n: ncp.sim.hop_count(n) or 99)
        targets = [[ncp.sim.address(n), ncp.sim.hop_count(n)] for n in nearest[:3]]
        archive = tmp_path / "probe.pyz"
        archive.write_bytes(build_bundle([BOARD_MODULE, SPINEL]))
        job = {"radio": f"{SPINEL}:SpinelRadio", "port": str(device.path), "baudrate": 115200,
               "tmax_s": 3.0, "time_scale": 10.0, "payload_len": 16, "first_seq": 100,
               "targets": targets, "schedule": periodic_schedule(0.2, 12)}  # fmt: skip
        proc = subprocess.run(
            [str(board_python), "-I", str(archive), json.dumps(job)],
            cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    finally:
        ncp.stop()
        device.unplug()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert lines[0]["kind"] == "ready" and lines[0]["hwaddr"] == ncp.emulator.hwaddr.hex()
    probes = {m["seq"]: m for m in lines if m["kind"] == "probe"}
    assert sorted(probes) == list(range(100, 112))
    assert sum(not m["lost"] for m in probes.values()) >= 6  # a 30-meter mesh answers
    assert lines[-1] == {"kind": "done", "sent": 12, "strays": 0}


def test_gateway_port_in_the_rig_and_in_the_virtual_lab(virtual_rig: Rig, tmp_path: Path) -> None:
    text = (Path(__file__).parents[1] / "rigs" / "virtual.yaml").read_text()
    mine = text.replace("      driver: spinel\n", "      driver: spinel\n"
                        "      gateway_port: /dev/ttyACM0\n", 1)  # fmt: skip
    radio = parse_rig(mine, "v.yaml").gateway("gw1").radio
    assert radio is not None and radio.gateway_port == "/dev/ttyACM0"
    bad = mine.replace("gateway_port: /dev/ttyACM0", "gateway_port: ttyACM0")
    with pytest.raises(RigError, match=r"^v.yaml:\d+: gateways\[0\].radio.gateway_port: must be"):
        parse_rig(bad, "v.yaml")
    store = RunStore.create(tmp_path, rig_name="virtual", rig_path=None, rig_sha256=None,
                            virtual=True)  # fmt: skip
    session = BenchSession(spec=virtual_rig, store=store, gateways={})
    assert session.radio_gateway_port("gw1") == str(virtual_rig.state_dir / "radio" / "gw1")
    real = BenchSession(spec=load_rig("lab1"), store=store, gateways={})
    with pytest.raises(BenchError, match=r"gateway pi1: radio\.gateway_port is not set, so the"):
        real.radio_gateway_port("pi1")  # a real lab must say where its board sees the dongle
    assert seen_from_gateway(Path("/tmp/lab/radio/gw1")) is None  # each gateway has its own /tmp
    assert seen_from_gateway(Path("/var/lib/fieldrig/x")) == Path("/var/lib/fieldrig/x")
    with pytest.raises(RemoteProbeError, match="drives spinel dongles, not 'skstack'"):
        GatewayProber(ConnectedGateway(virtual_rig.gateway("gw1")), port="/dev/ttyUSB0",
                      driver="skstack", tmax_s=1.0)  # fmt: skip


@pytest.fixture
def session(lab: VirtualLab, virtual_rig: Rig, tmp_path: Path) -> Iterator[BenchSession]:
    store = RunStore.create(tmp_path / "runs", rig_name=virtual_rig.name, rig_path=None,
                            rig_sha256=None, virtual=True)  # fmt: skip
    yield BenchSession(spec=virtual_rig, store=store, gateways={})


def _pty_held_here(port: str) -> bool:
    """Whether this process has the dongle's pty open."""
    target = os.path.realpath(port)
    fds = Path("/proc/self/fd")
    return any(os.path.realpath(fd) == target for fd in fds.iterdir() if fd.is_symlink())


def _prober(
    session: BenchSession, gw1: ConnectedGateway, seen: list[ProbeRecord], cloud: str
) -> GatewayProber:
    port = session.radio_gateway_port("gw1")

    def keep(record: ProbeRecord) -> None:
        assert not _pty_held_here(port), "the bench kept its handle on the dongle"
        seen.append(record)

    return GatewayProber(
        gw1, port=port, driver="spinel", tmax_s=4.0, on_record=keep, first_seq=500,
        time_scale=session.mesh_time_scale("gw1"),
        launcher=["python3", "-c", NEEDS_CLOUD, cloud],
    )  # fmt: skip


def test_gateway_side_run_streams_every_probe_back(
    session: BenchSession, gw1: ConnectedGateway, virtual_rig: Rig
) -> None:
    radio: Radio = session.radio("gw1")
    try:
        identity = radio.identify()
        targets = [(r.destination, r.hops) for r in radio.topology().routes if r.hops <= 2][:4]
        seen: list[ProbeRecord] = []
        assert virtual_rig.virtual is not None
        prober = _prober(session, gw1, seen, str(virtual_rig.virtual.cloud_address))
        with session.released_radio("gw1"):
            records = prober.run(targets, periodic_schedule(0.25, 24))
        assert radio.identify() == identity  # the bench has its dongle back
    finally:
        radio.close()
    assert prober.identity["hwaddr"] == identity.hwaddr  # the gateway drove the same dongle
    assert [r.seq for r in records] == list(range(500, 524))
    assert {r.seq for r in seen} == {r.seq for r in records}  # streamed as they came
    assert summarize(records).delivery_low > 0.5


def test_gateway_side_run_that_needs_the_cloud_fails_under_partition(
    session: BenchSession, gw1: ConnectedGateway, virtual_rig: Rig
) -> None:
    link = virtual_rig.gateway("gw1").backhaul
    assert link is not None and virtual_rig.virtual is not None
    cloud = str(virtual_rig.virtual.cloud_address)
    seen: list[ProbeRecord] = []
    prober = _prober(session, gw1, seen, cloud)
    partition = Partition(LinkTarget.from_backhaul(link), protect=Protection.for_rig(virtual_rig))
    with partition, pytest.raises(RemoteProbeError) as failed:
        prober.run([("fd00::1", 1)], periodic_schedule(0.25, 4))
    message = str(failed.value)
    assert message.startswith("gateway gw1: the gateway-side prober on ")
    assert f"failed (exit status 1): cannot reach the cloud broker at {cloud}" in message
    assert "\n" not in message and not seen
