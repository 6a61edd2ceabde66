"""Command round trip on one virtual gateway: fieldrig's agent vs the usual ways.

Baselines: a new `ssh` process and connection per command; OpenSSH ControlMaster (what
labgrid uses); paramiko exec (one SSH channel per command). All run `true` on gw1.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from bench.gateway import ConnectedGateway
from bench.lab.virtual import VirtualLab
from bench.rig import Rig
from benchmarks.conftest import interleaved_medians, remember


@pytest.fixture(scope="module")
def gw1(lab: VirtualLab, virtual_rig: Rig) -> Iterator[ConnectedGateway]:
    gateway = ConnectedGateway(virtual_rig.gateway("gw1"))
    gateway.run(["true"])
    yield gateway
    gateway.close()


def ssh_argv(lab: VirtualLab, options: list[str], command: str) -> list[str]:
    """An OpenSSH client command line to gw1 with the lab's key and pinned host keys."""
    return [
        "ssh", "-i", str(lab.plan.client_key), "-o", f"UserKnownHostsFile={lab.plan.known_hosts}",
        "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", *options,
        f"root@{lab.plan.gateways[0].mgmt_address}", *([command] if command else []),
    ]  # fmt: skip


def test_fieldrig_run(benchmark: Any, gw1: ConnectedGateway) -> None:
    result = benchmark(gw1.run, ["true"])
    assert result.exit_status == 0
    remember("fieldrig_run", benchmark)


def test_fieldrig_agent_round_trip(benchmark: Any, gw1: ConnectedGateway) -> None:
    """The agent's own round trip (no process started): the floor of any command."""
    before, _board, after = benchmark(gw1.ping)
    assert before <= after
    remember("fieldrig_agent_round_trip", benchmark)


def test_paramiko_exec(benchmark: Any, gw1: ConnectedGateway) -> None:
    gw1.connect()
    transport = gw1._transport
    assert transport is not None

    def exec_true() -> int:
        channel = transport.open_session()
        channel.exec_command("true")
        status = channel.recv_exit_status()
        channel.close()
        return status

    assert benchmark(exec_true) == 0
    remember("paramiko_exec", benchmark)


@pytest.fixture(scope="module")
def controlmaster(lab: VirtualLab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """A running ControlMaster; yields the client command line that reuses it."""
    control = tmp_path_factory.mktemp("cm") / "cm.sock"
    master = ssh_argv(lab, ["-o", "ControlMaster=yes", "-o", f"ControlPath={control}", "-N"], "")
    proc = subprocess.Popen(master)
    try:
        for _ in range(100):
            if control.exists():
                break
            time.sleep(0.05)
        yield ssh_argv(lab, ["-o", "ControlMaster=no", "-o", f"ControlPath={control}"], "true")
    finally:
        proc.terminate()
        proc.wait()


def test_ssh_controlmaster(benchmark: Any, controlmaster: list[str]) -> None:
    result = benchmark(subprocess.run, controlmaster, check=True)
    assert result.returncode == 0
    remember("ssh_controlmaster", benchmark)


def test_ssh_new_connection(benchmark: Any, lab: VirtualLab) -> None:
    argv = ssh_argv(lab, [], "true")
    result = benchmark.pedantic(subprocess.run, args=(argv,), kwargs={"check": True}, rounds=10)
    assert result.returncode == 0
    remember("ssh_new_connection", benchmark)


def test_round_trip_ratios(
    gw1: ConnectedGateway, controlmaster: list[str], lab: VirtualLab
) -> None:
    """fieldrig against each per-command baseline, interleaved in one loop."""
    transport = gw1._transport
    assert transport is not None

    def paramiko_exec() -> None:
        channel = transport.open_session()
        channel.exec_command("true")
        channel.recv_exit_status()
        channel.close()

    medians = interleaved_medians(
        {
            "fieldrig": lambda: gw1.run(["true"]),
            "controlmaster": lambda: subprocess.run(controlmaster, check=True),
            "paramiko_exec": paramiko_exec,
        },
        rounds=40,
    )
    new_connection = interleaved_medians(
        {
            "fieldrig": lambda: gw1.run(["true"]),
            "new_connection": lambda: subprocess.run(ssh_argv(lab, [], "true"), check=True),
        },
        rounds=5,
    )
    ratios = {
        "controlmaster": medians["controlmaster"] / medians["fieldrig"],
        "paramiko_exec": medians["paramiko_exec"] / medians["fieldrig"],
        "new_connection": new_connection["new_connection"] / new_connection["fieldrig"],
    }
    print(f"interleaved ratios (baseline / fieldrig): {ratios}")
    assert ratios["controlmaster"] >= 3
    assert ratios["paramiko_exec"] >= 1.3
    assert ratios["new_connection"] >= 50
