"""A big virtual fleet: lab bring-up time and memory for 3, 20 and 50 gateways, 5,000 meters
behind one gateway, heartbeat agents on all 50, fan-out over 50, and a Mender rollout over 50.

Rigs: benchmarks/rigs/fleet{3,20,50}.yaml (lab ids fleet3/fleet20/fleet50). Memory is the
sum of PSS (:mod:`bench.lab.footprint`) of every process in the lab's namespaces plus its
helper services. Targets, checked as recorded figures here (never in tests/): 50 gateways up
in under 30 s, the lab under 2 GB, also with a heartbeat agent and a bench agent on each.
CI runs the bring-up of 3 and 20 gateways; the 50-gateway bring-up, the 5,000-meter mesh,
the agents, fan-out and rollout over 50 run with ``FIELDRIG_FULL_BENCH=1`` (about 3 minutes).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.fleet.collector import lab_collector
from bench.fleet.liveness import CollectorClient, HeartbeatAgent
from bench.gateway import ConnectedGateway
from bench.lab import bulk
from bench.lab.footprint import Footprint, footprint
from bench.lab.virtual import VirtualLab
from bench.mesh.probing import Prober, periodic_schedule
from bench.radio.capability import Radio
from bench.radio.registry import open_radio
from bench.rig import load_rig
from bench.transport.fanout import fan_out
from bench.transport.serial import SerialPort
from bench.update import create_client
from bench.update.artifact import build_model_artifact
from bench.update.device import UpdateDevice
from bench.update.rollout import ExecutionStatus, Job, Rollout, RolloutConfig
from bench.update.server import ServerProcess
from benchmarks.conftest import RIGS_DIR, interleaved_medians, remember

SIZES = (3, 20, 50)
UP_TARGET_S = 30.0
MEMORY_TARGET_MB = 2048.0
BIG_MESH_GATEWAY, BIG_MESH_METERS = "f01", 5000
PROBE_TMAX_S = 10.0  # mesh seconds; beyond a 30-hop path's retries
HEARTBEAT_S = 1.0
MODEL = Path(__file__).resolve().parents[1] / "models" / "meter_anomaly_int8.tflite"
FULL = os.environ.get("FIELDRIG_FULL_BENCH") == "1"


def fleet_lab(size: int) -> VirtualLab:
    return VirtualLab(load_rig(RIGS_DIR / f"fleet{size}.yaml"))


def check_memory(where: str, memory: Footprint) -> None:
    assert memory.pss_mb < MEMORY_TARGET_MB, (
        f"{where}: the lab uses {memory.pss_mb:.0f} MB (PSS of {memory.processes} processes), "
        f"over the {MEMORY_TARGET_MB:.0f} MB target"
    )


@pytest.mark.parametrize("size", SIZES)
def test_lab_bring_up(benchmark: Any, size: int) -> None:
    """From nothing (state directory purged, so host keys are generated too) to healthy."""
    if size == max(SIZES) and not FULL:
        pytest.skip(f"{size} gateways (about 25 s): FIELDRIG_FULL_BENCH=1")
    lab = fleet_lab(size)
    try:
        benchmark.pedantic(lab.up, setup=lambda: lab.down(purge=True), rounds=2, iterations=1)
        assert lab.status().healthy, f"fleet{size} is not healthy after up"
        memory = footprint(lab.processes())
        phases = dict(lab.phases)
        start = time.perf_counter()
        lab.down()
        down_s = time.perf_counter() - start
    finally:
        lab.down()
    median = remember(f"lab_up_{size}", benchmark)
    benchmark.extra_info.update(
        gateways=size, up_s=median, down_s=down_s, phases_s=phases,
        memory_pss_mb=memory.pss_mb, memory_rss_mb=memory.rss_mb, processes=memory.processes,
    )  # fmt: skip
    steps = ", ".join(f"{k} {v:.2f}" for k, v in phases.items())
    print(
        f"\nfleet{size}: up {median:.2f} s ({steps}),"
        f" {memory.pss_mb:.0f} MB PSS / {memory.rss_mb:.0f} MB RSS in {memory.processes} "
        f"processes, down {down_s:.2f} s"
    )
    if size == 50:
        assert median < UP_TARGET_S, f"50 gateways took {median:.1f} s, target {UP_TARGET_S} s"
        check_memory("fleet50 after bring-up", memory)


@pytest.fixture(scope="module")
def fleet50() -> Iterator[VirtualLab]:
    if not FULL:
        pytest.skip("the 50-gateway fleet's mesh, agents and fan-out: FIELDRIG_FULL_BENCH=1")
    lab = fleet_lab(50)
    owns = lab.acquire()
    yield lab
    if owns:
        lab.down()


@pytest.fixture(scope="module")
def gateways50(fleet50: VirtualLab) -> Iterator[list[ConnectedGateway]]:
    gateways = [ConnectedGateway(fleet50.rig.gateway(n)) for n in fleet50.rig.gateway_names()]
    try:
        warm = fan_out(gateways, ["true"])
        assert warm.ok, warm.errors
        yield gateways
    finally:
        for gw in gateways:
            gw.close()


def test_five_thousand_meters_behind_one_gateway(benchmark: Any, fleet50: VirtualLab) -> None:
    """f01's dongle fronts 5,000 meters, f02's the rig's default; probes reach f01's meters."""
    rig = fleet50.rig
    assert rig.virtual is not None
    radios: dict[str, Radio] = {}
    try:
        for name in ("f01", "f02"):
            link = rig.gateway(name).radio
            assert link is not None
            port = SerialPort(link.port, name=f"{name}-radio")
            port.open()
            radios[name] = open_radio(link, port)
        start = time.perf_counter()
        topology = radios[BIG_MESH_GATEWAY].topology()
        read_s = time.perf_counter() - start
        sizes = {
            BIG_MESH_GATEWAY: len(topology.routes),
            "f02": len(radios["f02"].topology().routes),
        }
        routes = sorted(topology.routes, key=lambda r: r.hops)
        targets = [(r.destination, r.hops) for r in (*routes[:3], *routes[-3:])]
        prober = Prober(
            radios[BIG_MESH_GATEWAY], tmax_s=PROBE_TMAX_S, time_scale=rig.virtual.mesh.time_scale
        )
        records = benchmark.pedantic(
            prober.run, args=(targets, periodic_schedule(0.25, 12)), rounds=1, iterations=1
        )
    finally:
        for radio in radios.values():
            radio.close()
    assert sizes == {BIG_MESH_GATEWAY: BIG_MESH_METERS, "f02": rig.virtual.mesh.meters}
    echoed = [r for r in records if not r.lost]
    deepest = routes[-1].hops
    reached = max((r.hops or 0 for r in echoed), default=0)
    benchmark.extra_info.update(
        meters=BIG_MESH_METERS, deepest_hops=deepest, deepest_answered_hops=reached,
        topology_read_s=read_s, probes=len(records), echoed=len(echoed),
        radio_start_s=fleet50.phases.get("radios"),
    )  # fmt: skip
    print(
        f"\n5,000-meter mesh: routes read in {read_s:.2f} s, deepest meter {deepest} hops, "
        f"{len(echoed)}/{len(records)} probes answered (deepest answer {reached} hops): "
        + ", ".join(f"{r.hops}h {'lost' if r.lost else f'{r.rtt_s:.2f}s'}" for r in records)
    )
    assert echoed, f"no probe through {BIG_MESH_GATEWAY}'s dongle reached a meter: {records}"


def test_heartbeat_agents_on_50(
    benchmark: Any, fleet50: VirtualLab, gateways50: list[ConnectedGateway], tmp_path: Path
) -> None:
    """A heartbeat agent on every gateway (started over SSH), all seen by the collector in
    the cloud namespace; the lab's memory with them (and the bench agents) running."""
    names = {gw.name for gw in gateways50}
    with lab_collector(fleet50.rig, tmp_path / "heartbeats.jsonl") as collector:
        agents = [
            HeartbeatAgent(gw, collector.address, HEARTBEAT_S, ttl_s=300) for gw in gateways50
        ]
        client = CollectorClient(collector.out)
        seen: set[str] = set()

        def start_all() -> float:
            start = time.perf_counter()
            bulk.each(agents, lambda agent: agent.start())
            deadline = time.monotonic() + 10 * HEARTBEAT_S + 10
            while seen != names and time.monotonic() < deadline:
                seen.update(hb.gateway for hb in client.read())
                time.sleep(0.05)
            return time.perf_counter() - start

        try:
            took = benchmark.pedantic(start_all, rounds=1, iterations=1)
            memory = footprint(fleet50.processes())
        finally:
            bulk.each(agents, lambda agent: agent.stop())
    assert seen == names, f"no heartbeat from {sorted(names - seen)}"
    benchmark.extra_info.update(
        gateways=len(names), all_seen_s=took, memory_pss_mb=memory.pss_mb,
        memory_rss_mb=memory.rss_mb, processes=memory.processes,
    )  # fmt: skip
    print(
        f"\n50 heartbeat agents: all seen after {took:.2f} s; lab {memory.pss_mb:.0f} MB PSS / "
        f"{memory.rss_mb:.0f} MB RSS in {memory.processes} processes"
    )
    check_memory("fleet50 with heartbeat and bench agents", memory)


def test_fanout_50(benchmark: Any, gateways50: list[ConnectedGateway]) -> None:
    outcome = benchmark(fan_out, gateways50, ["uname", "-n"])
    assert sorted(r.text.strip() for r in outcome.results.values()) == sorted(
        gw.name for gw in gateways50
    )
    remember("fanout_50", benchmark)


def test_sequential_50(benchmark: Any, gateways50: list[ConnectedGateway]) -> None:
    def loop() -> list[str]:
        return [gw.run(["uname", "-n"]).text for gw in gateways50]

    assert len(benchmark.pedantic(loop, rounds=5, iterations=1)) == 50
    remember("sequential_50", benchmark)


def test_fanout_ratio_50(gateways50: list[ConnectedGateway]) -> None:
    """Fan-out against the sequential loop over 50 gateways, interleaved in one loop."""
    medians = interleaved_medians(
        {
            "fanout": lambda: fan_out(gateways50, ["uname", "-n"]),
            "sequential": lambda: [gw.run(["uname", "-n"]) for gw in gateways50],
        },
        rounds=7,
    )
    ratio = medians["sequential"] / medians["fanout"]
    print(f"\ninterleaved over 50: {medians}, sequential / fan-out {ratio:.1f}x")
    assert ratio >= 1.3


@pytest.mark.skipif(not FULL, reason="the 50-gateway rollout runs with FIELDRIG_FULL_BENCH=1")
def test_rollout_over_50(
    benchmark: Any, fleet50: VirtualLab, gateways50: list[ConnectedGateway], tmp_path: Path
) -> None:
    """One small model artifact to all 50 gateways through Mender (standalone) under the
    orchestrator: install, health check at commit, report; every execution must succeed."""
    rig = fleet50.rig
    served = tmp_path / "artifacts"
    boards = sorted({rig.gateway(gw.name).board for gw in gateways50})
    for board in boards:
        art = build_model_artifact(MODEL, tmp_path / board, device_type=board,
                                   dest_dir="/root/models", artifact_name="fleet-model",
                                   filename="model.tflite")  # fmt: skip
        served.mkdir(exist_ok=True)
        art.path.rename(served / f"fleet-model--{board}.mender")
    plan = fleet50.plan
    clients = [
        create_client(
            "mender",
            gw,
            device_type=rig.gateway(gw.name).board,
            install_timeout_s=60.0,
            commit_timeout_s=60.0,
        )
        for gw in gateways50
    ]
    bulk.each(clients, lambda client: client.reset())
    devices = [
        UpdateDevice(c, "/root/models/model.tflite", device_type=c.device_type) for c in clients
    ]
    with ServerProcess(served, tmp_path / "server.jsonl", plan.cloud_address, 18181,
                       namespace=plan.cloud_namespace) as server:  # fmt: skip
        job = Job(f"fleet50-{int(time.time())}", "fleet-model",
                  server.url("fleet-model--{device_type}.mender"))  # fmt: skip
        config = RolloutConfig(in_progress_timeout_s=90.0, max_concurrent=8)
        rollout = Rollout(devices, job, config)
        result = benchmark.pedantic(rollout.run, rounds=1, iterations=1)
    statuses = {name: rec.status for name, rec in result.executions.items()}
    failed = {n: s for n, s in statuses.items() if s != ExecutionStatus.SUCCEEDED}
    installed = bulk.each(clients, lambda client: client.status().installed)
    benchmark.extra_info.update(gateways=len(devices), completion_s=result.finished_s)
    print(f"\nrollout over 50: complete in {result.finished_s:.1f} s")
    assert not failed, f"executions that did not succeed: {failed}"
    assert set(installed) == {"fleet-model"}, installed
