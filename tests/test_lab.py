"""The virtual lab itself: real namespaces, veths, sshd; idempotent up, complete down."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.boards import BOARDS
from bench.gateway import ConnectedGateway
from bench.lab import system
from bench.lab.virtual import VirtualLab
from bench.rig import Rig, load_rig

STATE_ROOT = Path("/var/lib/fieldrig/tests")


def small_rig(tmp_path: Path, lab_id: str, octet: int, gateways: int = 2) -> Path:
    """A virtual rig of its own (own lab id and subnets) so it can be killed and rebuilt."""
    boards = ["rpi4", "jetson-orin-nano", "coral-devboard"]
    gws = "\n".join(f"  - name: g{i}\n    board: {boards[i % 3]}" for i in range(gateways))
    path = tmp_path / f"{lab_id}.yaml"
    path.write_text(
        textwrap.dedent(f"""\
        name: {lab_id}
        virtual:
          lab_id: {lab_id}
          state_dir: {STATE_ROOT / lab_id}
          management_subnet: 10.213.{octet}.0/24
          backhaul_subnet: 10.214.{octet}.0/24
        ssh_defaults:
          auth: {{identity_file: "{{state_dir}}/id_ed25519"}}
          host_key: {{known_hosts: "{{state_dir}}/known_hosts"}}
        gateways:
        """)
        + gws
        + "\n"
    )
    return path


def leftovers(lab: VirtualLab) -> list[str]:
    """Every trace of the lab on the host: namespaces, links, processes, mounts."""
    plan = lab.plan
    found = [f"netns {n}" for n in system.netns_list() if n.startswith(plan.prefix)]
    found += [
        f"link {link}"
        for link in system.link_names()
        if link == plan.bridge or link.startswith(f"frm-{plan.lab_id}-")
    ]
    for pid_dir in Path("/proc").iterdir():
        if pid_dir.name.isdigit():
            try:
                cmdline = (pid_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            ours = str(plan.state_dir) in cmdline or (
                "bench.lab." in cmdline and f"--rig {lab.rig.source_path} " in f"{cmdline} "
            )
            if ours and int(pid_dir.name) != os.getpid():
                found.append(f"process {pid_dir.name}: {cmdline}")
    if (plan.state_dir / "radio").exists():
        found.append(f"directory {plan.state_dir / 'radio'}")
    mounts = Path("/proc/self/mountinfo").read_text()
    found += [
        f"mount {line}" for line in mounts.splitlines() if f"/run/netns/{plan.prefix}" in line
    ]
    return found


@pytest.fixture
def scratch_lab(tmp_path: Path) -> Iterator[tuple[VirtualLab, Path]]:
    rig_path = small_rig(tmp_path, "tscratch", 40)
    lab = VirtualLab(load_rig(rig_path))
    yield lab, rig_path
    lab.down(purge=True)
    assert leftovers(lab) == []


def test_shipped_lab_is_healthy_and_up_is_idempotent(lab: VirtualLab) -> None:
    status = lab.status()
    assert status.healthy, status
    assert [g.name for g in status.gateways] == ["gw1", "gw2", "gw3"]
    start = time.monotonic()
    assert lab.up() is False  # already up: left alone
    assert time.monotonic() - start < 5
    assert lab.status().healthy


@pytest.mark.parametrize("name", ["gw1", "gw2", "gw3"])
def test_gateway_identity_is_the_boards(lab: VirtualLab, virtual_rig: Rig, name: str) -> None:
    spec = virtual_rig.gateway(name)
    board = BOARDS[spec.board]
    gw = ConnectedGateway(spec)
    try:
        model = gw.run(["cat", "/sys/firmware/devicetree/base/model"]).stdout
        assert model == board.model.encode() + b"\0"
        os_release = gw.run(["cat", "/etc/os-release"]).text
        assert f'PRETTY_NAME="{board.os_pretty_name}"' in os_release
        assert gw.run(["hostname"]).text == f"{name}\n"
        addrs = gw.run(["ip", "-4", "-o", "addr", "show"]).text
        assert "mgmt0" in addrs and "wan0" in addrs
    finally:
        gw.close()


def test_backhaul_reaches_cloud_namespace(lab: VirtualLab, virtual_rig: Rig) -> None:
    """A gateway reaches the cloud namespace over wan0, and only through it."""
    cloud = lab.plan.cloud_namespace
    server = subprocess.Popen(
        ["ip", "netns", "exec", cloud, sys.executable, "-c",
         "import socket;s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);"
         f"s.bind(('{lab.plan.cloud_address}',18080));s.listen();c,_=s.accept();"
         "c.sendall(b'cloud-hello');c.close()"],
    )  # fmt: skip
    gw = ConnectedGateway(virtual_rig.gateway("gw2"))
    try:
        probe = (
            "import socket,time\n"
            "for _ in range(50):\n"
            "    try:\n"
            f"        s=socket.create_connection(('{lab.plan.cloud_address}',18080),1);break\n"
            "    except OSError: time.sleep(0.05)\n"
            "print(s.recv(64).decode())"
        )
        assert gw.run(["python3", "-c", probe], timeout=10).text == "cloud-hello\n"
        route = gw.run(["ip", "route", "get", lab.plan.cloud_address]).text
        assert "dev wan0" in route
    finally:
        gw.close()
        server.kill()
        server.wait()


def test_down_leaves_nothing_and_up_again_works(scratch_lab: tuple[VirtualLab, Path]) -> None:
    lab, _ = scratch_lab
    assert lab.up() is True
    assert lab.status().healthy
    assert leftovers(lab) != []  # the check sees a live lab
    lab.down()
    assert leftovers(lab) == []
    assert lab.up() is True
    assert lab.status().healthy


def test_up_after_sigkilled_up_cleans_stale_pieces(scratch_lab: tuple[VirtualLab, Path]) -> None:
    """Kill `fieldrig lab up` half way with SIGKILL; the next up removes the debris first."""
    lab, rig_path = scratch_lab
    lab.down()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.cli", "lab", "up", "--rig", str(rig_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if any(n.startswith(lab.plan.prefix) for n in system.netns_list()):
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    debris = lab.status()
    assert debris.anything_present
    assert lab.up() is True
    assert lab.status().healthy
    gw = ConnectedGateway(lab.rig.gateway("g1"))
    try:
        assert gw.run(["hostname"]).text == "g1\n"
    finally:
        gw.close()


def test_lab_built_from_another_rig_is_rebuilt(scratch_lab: tuple[VirtualLab, Path]) -> None:
    lab, _ = scratch_lab
    assert lab.up() is True
    assert lab.up() is False
    (lab.plan.state_dir / "lab.json").write_text('{"digest": "from-an-older-rig"}')
    status = lab.status()
    assert not status.healthy and all(g.healthy for g in status.gateways)
    assert lab.up() is True
    assert lab.status().healthy


def test_gateways_run_the_board_python(lab: VirtualLab, virtual_rig: Rig) -> None:
    """python3 on a gateway is the rig's board_python, with the inference runtime in it."""
    assert virtual_rig.virtual is not None and virtual_rig.virtual.board_python is not None
    gw = ConnectedGateway(virtual_rig.gateway("gw1"))
    try:
        probe = "import sys, ai_edge_litert, numpy; print(sys.executable)"
        assert gw.run(["python3", "-c", probe]).text.strip() == str(
            virtual_rig.virtual.board_python
        )
    finally:
        gw.close()


def test_session_adopts_lab_of_a_killed_session(scratch_lab: tuple[VirtualLab, Path]) -> None:
    """A lab whose owning session died is taken over (and so taken down) by the next one."""
    lab, _ = scratch_lab
    lab.up()
    dead = subprocess.Popen(["true"])
    dead.wait()
    lab._set_owner(dead.pid)
    assert lab.acquire() is True
    lab._set_owner(None)  # as after `fieldrig lab up`: a person's lab is left alone
    assert lab.acquire() is False


def test_twenty_gateways_come_up(tmp_path: Path) -> None:
    lab = VirtualLab(load_rig(small_rig(tmp_path, "ttwenty", 41, gateways=20)))
    try:
        assert lab.up() is True
        status = lab.status()
        assert status.healthy and len(status.gateways) == 20
    finally:
        lab.down(purge=True)
    assert leftovers(lab) == []


def test_lab_needs_root_message(tmp_path_factory: pytest.TempPathFactory) -> None:
    """As an unprivileged user `fieldrig lab up` explains itself in one line."""
    public = Path(tempfile.mkdtemp(prefix="fieldrig-noroot-"))
    try:
        public.chmod(0o755)
        rig_path = small_rig(public, "tnoroot", 42)
        rig_path.chmod(0o644)
        # Import as root (the interpreter may live under /root), then really drop to nobody.
        script = (
            "import os, sys, bench.cli, bench.lab.virtual\n"
            "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
            f"sys.exit(bench.cli.main(['lab', 'up', '--rig', '{rig_path}']))\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=False
        )
    finally:
        shutil.rmtree(public)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("fieldrig: error: `fieldrig lab up` needs root")
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1


def test_board_profiles_set_cpu_quotas(lab: VirtualLab, virtual_rig: Rig) -> None:
    """Each gateway's processes run in a cgroup limited to its board's share of the CPUs."""
    from bench.lab import cgroups

    parent = cgroups.lab_cgroup(lab.plan.lab_id)
    if parent is None:
        pytest.skip("this kernel has no cpu cgroup controller")
    gw = ConnectedGateway(virtual_rig.gateway("gw3"))  # coral-devboard: half a CPU
    try:
        agent_pid = str(gw.connect().hello["pid"])  # the agent lives as long as the session
        assert agent_pid in (parent / "gw3" / "cgroup.procs").read_text().split()
        stat = parent / "gw3" / "cpu.stat"
        before = int(stat.read_text().split("nr_throttled")[1].split()[0])
        gw.run(["python3", "-c", "import time\nt=time.time()\nwhile time.time()-t<0.3: pass"])
        after = int(stat.read_text().split("nr_throttled")[1].split()[0])
        assert after > before  # a busy loop on half a CPU gets throttled
    finally:
        gw.close()
    before_ns = cgroups.cpu_usage_ns(lab.plan.lab_id, "gw3")
    assert before_ns is not None
    gw = ConnectedGateway(virtual_rig.gateway("gw3"))
    try:
        gw.run(
            [
                "python3",
                "-c",
                "import time\nt=time.process_time()\nwhile time.process_time()-t<0.3: pass",
            ]
        )
    finally:
        gw.close()
    used_ns = (cgroups.cpu_usage_ns(lab.plan.lab_id, "gw3") or 0) - before_ns
    assert used_ns >= 0.3e9  # the gateway's CPU time is accounted (the power model reads it)
    quota_file = parent / "gw2" / "cpu.cfs_quota_us"
    if quota_file.exists():
        quota = int(quota_file.read_text())
        period = int((parent / "gw2" / "cpu.cfs_period_us").read_text())
    else:
        quota, period = map(int, (parent / "gw2" / "cpu.max").read_text().split())
    assert quota / period == pytest.approx(BOARDS["jetson-orin-nano"].cpu_quota)
