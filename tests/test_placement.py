"""Placement advice: the per-tier arithmetic on runs with known numbers, budget marking,
recommendations, "unmeasured" tiers, one-line workload errors, the CLI on the shipped
workloads, and the backhaul suite + nft counters on a scratch lab of its own ("tplace",
octet 45; never the shipped lab).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.placement.measured import Measurements
from bench.placement.model import advise, propagation_ms
from bench.placement.workload import WorkloadError, load_workload, parse_workload
from bench.results import RunStore
from bench.results.store import read_jsonl

REPO = Path(__file__).resolve().parent.parent
STATE_ROOT = Path("/var/lib/fieldrig/tests")
INVENTORY = {"g0": {"virtual_board": "rpi4", "board_model": "Raspberry Pi 4 Model B"}}

WORKLOAD = """\
name: feeder
rate_per_s: 10
payload_bytes: 1000
model: {name: meter_anomaly, variant: int8}
budget_ms: 20
origin: device
board: rpi4
tiers:
  device: {distance_km: 0, runs_model: false}
  gateway: {distance_km: 2}
  edge: {distance_km: 30%s}
  cloud: {distance_km: 800, measured_by: {run: RUN, gateway: host}}
reduction: {event_rate_per_s: 0.5, event_bytes: 40}
"""


def make_run(
    root: Path, records: list[tuple[str | None, str, str, float, str, dict[str, Any]]]
) -> str:
    store = RunStore.create(root, rig_name="t", rig_path=None, rig_sha256=None, virtual=True)
    store.set_inventory(INVENTORY)
    for gateway, suite, metric, value, unit, params in records:
        store.record(gateway=gateway, suite=suite, test="t", metric=metric, value=value,
                     unit=unit, parameters=params)  # fmt: skip
    store.finish()
    return store.run_id


M = {"model": "meter_anomaly", "variant": "int8", "threads": 1}


@pytest.fixture
def runs(tmp_path: Path) -> tuple[Path, str, str]:
    root = tmp_path / "runs"
    gateway_run = make_run(root, [
        ("g0", "inference", "latency.p50", 1000.0, "us", M),
        ("g0", "inference", "latency.p99", 4000.0, "us", M),
        ("g0", "power", "energy.per_inference", 2.5, "mJ", M),
        ("g0", "backhaul", "backhaul.rtt.p50", 300.0, "us", {}),
        ("g0", "backhaul", "backhaul.rtt.p99", 900.0, "us", {}),
        ("g0", "backhaul", "backhaul.bandwidth", 8e6, "bit/s", {}),
        ("g0", "backhaul", "backhaul.overhead_per_message", 42.0, "B", {}),
        ("g0", "backhaul", "backhaul.loss", 0.0, "1", {}),
        ("g0", "backhaul", "backhaul.loss_ci_high", 0.01, "1", {}),
    ])  # fmt: skip
    host_run = make_run(root, [
        ("host", "inference", "latency.p50", 100.0, "us", M),
        ("host", "inference", "latency.p99", 200.0, "us", M),
    ])  # fmt: skip
    return root, gateway_run, host_run


def test_per_tier_arithmetic_budget_and_recommendation(runs: tuple[Path, str, str]) -> None:
    root, gateway_run, host_run = runs
    workload = parse_workload((WORKLOAD % "").replace("RUN", host_run), "w.yaml")
    advice = advise(workload, Measurements.load(root))
    assert propagation_ms(800) == pytest.approx(8.0)  # 5 us/km each way
    device, gateway, edge, cloud = advice.tiers
    assert device.status == "not possible" and device.p99_ms is None
    # gateway: inference + 2 km of fibre both ways, no backhaul
    assert gateway.p50_ms == pytest.approx(1.0 + 0.02)
    assert gateway.p99_ms == pytest.approx(4.0 + 0.02)
    assert gateway.energy_mj is not None and gateway.energy_mj.value == 2.5
    assert gateway.meets_budget is True
    # cloud: the host run's inference + 8 ms propagation + 1000 B at 8 Mbit/s + backhaul RTT
    assert cloud.p50_ms == pytest.approx(0.1 + 8.0 + 1.0 + 0.3)
    assert cloud.p99_ms == pytest.approx(0.2 + 8.0 + 1.0 + 0.9)
    assert cloud.meets_budget is True and cloud.energy_mj is None
    assert edge.status == "unmeasured" and edge.meets_budget is None
    assert "tiers.edge.measured_by" in edge.notes[0]
    # bytes per day: payload + measured overhead, raw vs events
    assert advice.backhaul["raw"] == pytest.approx(10 * 1042 * 86400)
    assert advice.backhaul["reduced"] == pytest.approx(0.5 * 82 * 86400)
    assert gateway.backhaul_bytes_per_day == advice.backhaul["reduced"]
    assert cloud.backhaul_bytes_per_day == advice.backhaul["raw"]
    # both meet the budget; the gateway sends far less over the backhaul
    assert advice.recommended == "gateway"
    assert advice.reasons[0] == "gateway: p99 4.020 ms meets the 20 ms budget"
    assert any(r.startswith("cloud: meets the budget but sends") for r in advice.reasons)
    assert any(r.startswith("edge: unmeasured") for r in advice.reasons)
    sources = {n.source for n in advice.sources}
    assert f"{gateway_run} latency.p99 g0 model=meter_anomaly,threads=1,variant=int8" in sources
    assert f"{host_run} latency.p99 host model=meter_anomaly,threads=1,variant=int8" in sources
    assert any("loss" in n for n in cloud.notes)


def test_tight_budget_and_slow_gateway(runs: tuple[Path, str, str]) -> None:
    root, _, host_run = runs
    text = (WORKLOAD % "").replace("RUN", host_run).replace("budget_ms: 20", "budget_ms: 3")
    advice = advise(parse_workload(text, "w.yaml"), Measurements.load(root))
    assert advice.tier("gateway").meets_budget is False  # p99 4.02 ms > 3
    assert advice.tier("cloud").meets_budget is False
    assert advice.recommended is None
    assert advice.reasons[0] == "no tier is known to meet the 3 ms budget at p99"
    assert "gateway: p99 4.020 ms exceeds the 3 ms budget" in advice.reasons
    fast = text.replace("rate_per_s: 10", "rate_per_s: 2000").replace(
        "budget_ms: 3", "budget_ms: 99"
    )
    slow = advise(parse_workload(fast, "w.yaml"), Measurements.load(root))
    assert slow.tier("gateway").meets_budget is False  # 2000/s x 1 ms: cannot keep up
    assert any(r.startswith("gateway: cannot keep up") for r in slow.reasons)


def test_a_measured_tier_replaces_the_local_rtt_and_its_distance(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    edge = {"tier": "edge"}
    make_run(root, [
        ("g0", "inference", "latency.p50", 1000.0, "us", M),
        ("g0", "inference", "latency.p99", 4000.0, "us", M),
        (None, "inference", "latency.p50", 100.0, "us", {**M, **edge}),
        (None, "inference", "latency.p99", 300.0, "us", {**M, **edge}),
        ("g0", "backhaul", "backhaul.rtt.p50", 300.0, "us", {}),
        ("g0", "backhaul", "backhaul.rtt.p99", 900.0, "us", {}),
        ("g0", "backhaul", "backhaul.bandwidth", 8e6, "bit/s", {}),
        ("g0", "backhaul", "tier.rtt.p50", 700.0, "us", {**edge, "distance_km": 20.0}),
        ("g0", "backhaul", "tier.rtt.p99", 1500.0, "us", {**edge, "distance_km": 20.0}),
        ("g0", "backhaul", "tier.distance", 20.0, "km", edge),
    ])  # fmt: skip
    workload = parse_workload(WORKLOAD % "", "w.yaml")  # edge 30 km from the meters
    advice = advise(workload, Measurements.load(root))
    tier = advice.tier("edge")
    assert tier.status == "ok", tier.notes
    terms = {t.name: t for t in tier.terms}
    # meters -> gateway (2 km) by physics, gateway -> edge measured over the lab's 20 km,
    # and the 8 km the lab did not cover by physics again
    assert terms["propagation 2 km"].p50_ms == pytest.approx(propagation_ms(2))
    assert terms["propagation +8 km to correct the measured 20 km"].p50_ms == pytest.approx(
        propagation_ms(8)
    )
    assert terms["rtt to the edge tier (20 km)"].p99_ms == pytest.approx(1.5)
    assert "backhaul rtt" not in terms
    assert terms["inference"].p50_ms == pytest.approx(0.1)  # the tier's own run
    assert terms["inference"].sources[0].gateway is None  # a tier, not a gateway
    assert tier.p50_ms == pytest.approx(0.1 + 0.02 + 0.08 + 1.0 + 0.7)  # + 1000 B at 8 Mbit/s
    assert advice.tier("cloud").status == "unmeasured"  # its measured_by run is absent


def test_data_from_the_meters_crosses_the_measured_mesh(runs: tuple[Path, str, str]) -> None:
    root, _, host_run = runs
    workload = parse_workload((WORKLOAD % "").replace("RUN", host_run), "w.yaml")
    before = advise(workload, Measurements.load(root)).tier("gateway")
    assert any("mesh is counted as fibre" in n for n in before.notes)
    make_run(root, [
        ("g0", "mesh", "mesh.delivery.rtt_p50", 0.35, "s", {"hops": "all"}),
        ("g0", "mesh", "mesh.delivery.rtt_p99", 1.8, "s", {"hops": "all"}),
        ("g0", "mesh", "mesh.delivery.rtt_p50", 0.1, "s", {"hops": 1}),
    ])  # fmt: skip
    advice = advise(workload, Measurements.load(root))
    gateway, cloud = advice.tier("gateway"), advice.tier("cloud")
    terms = {t.name: t for t in gateway.terms}
    assert terms["mesh rtt (meters to gateway)"].p99_ms == pytest.approx(1800.0)
    assert not any(t.name.startswith("propagation") for t in gateway.terms)  # radio, not fibre
    assert gateway.p50_ms == pytest.approx(1.0 + 350.0)
    assert gateway.meets_budget is False  # a 20 ms budget cannot cross this mesh
    assert {t.name for t in cloud.terms} >= {"mesh rtt (meters to gateway)", "propagation 798 km"}
    assert advice.recommended is None


def test_no_backhaul_run_leaves_crossing_tiers_unmeasured(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    host = make_run(root, [("host", "inference", "latency.p50", 1.0, "us", M),
                           ("host", "inference", "latency.p99", 2.0, "us", M)])  # fmt: skip
    advice = advise(parse_workload((WORKLOAD % "").replace("RUN", host), "w"),
                    Measurements.load(root))  # fmt: skip
    assert advice.tier("cloud").status == "unmeasured"
    assert advice.tier("gateway").status == "unmeasured"  # no rpi4 in that run
    assert advice.recommended is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: x\n  bad: [\n", "w.yaml:2: YAML syntax error"),
        ("", "w.yaml:1: the file is empty"),
        ((WORKLOAD % "").replace("budget_ms: 20", "budget_ms: -1"), "w.yaml:5: budget_ms:"),
        ((WORKLOAD % "").replace("origin: device", "origin: moon"), "w.yaml:6: origin:"),
        ((WORKLOAD % ", colour: red"), "w.yaml:11: tiers.edge.colour: unknown key"),
        ((WORKLOAD % "").replace("rate_per_s: 10\n", ""), "w.yaml:1: rate_per_s: required"),
        ((WORKLOAD % "").replace("name: feeder", "name: a\nname: b"), "w.yaml:2: name:"),
    ],
)
def test_bad_workloads_are_one_line_with_file_and_line(text: str, expected: str) -> None:
    with pytest.raises(WorkloadError) as info:
        parse_workload(text, "w.yaml")
    message = str(info.value)
    assert message.startswith(expected), message
    assert "\n" not in message


def test_missing_workload_file(tmp_path: Path) -> None:
    with pytest.raises(WorkloadError, match="no such file"):
        load_workload(tmp_path / "nope.yaml")


def test_cli_answers_both_shipped_workloads(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    jetson = {"model": "substation_cam", "variant": "int8", "threads": 1}
    store = RunStore.create(root, rig_name="t", rig_path=None, rig_sha256=None, virtual=True)
    store.set_inventory({"gw1": {"virtual_board": "rpi4"},
                         "gw2": {"virtual_board": "jetson-orin-nano"}})  # fmt: skip
    for gw, params, p50, p99, mj in (
        ("gw1", M, 3.0, 5.0, 0.01),
        ("gw2", jetson, 450.0, 700.0, 2.6),
    ):
        for metric, value, unit in (("latency.p50", p50, "us"), ("latency.p99", p99, "us"),
                                    ("energy.per_inference", mj, "mJ")):  # fmt: skip
            store.record(gateway=gw, suite="inference", test="t", metric=metric, value=value,
                         unit=unit, parameters=params)  # fmt: skip
        backhaul = (("backhaul.rtt.p50", 60.0, "us"), ("backhaul.rtt.p99", 150.0, "us"),
                    ("backhaul.bandwidth", 2e9, "bit/s"),
                    ("backhaul.overhead_per_message", 42.0, "B"))  # fmt: skip
        for metric, value, unit in backhaul:
            store.record(gateway=gw, suite="backhaul", test="t", metric=metric, value=value,
                         unit=unit, parameters={})  # fmt: skip
    store.finish()
    out = tmp_path / "advice.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.placement.cli", "workloads/feeder_fault.yaml",
         "workloads/camera_analytics.yaml", "--runs-dir", str(root), "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "== feeder_fault" in proc.stdout and "== camera_analytics" in proc.stdout
    assert proc.stdout.count("recommended: gateway") == 2
    data = json.loads(out.read_text())
    feeder, camera = data["workloads"]
    assert feeder["recommended"] == "gateway" and camera["recommended"] == "gateway"
    tiers = {t["tier"]: t for t in feeder["tiers"]}
    assert tiers["device"]["status"] == "not possible"
    assert tiers["edge"]["status"] == tiers["cloud"]["status"] == "unmeasured"
    assert tiers["gateway"]["latency_p99_ms"] == pytest.approx(0.005 + propagation_ms(1.5))
    assert feeder["backhaul"]["raw"] == pytest.approx(50 * (256 + 42) * 86400)
    for advice in (feeder, camera):  # every number traces to the run
        assert advice["sources"] and {s["run"] for s in advice["sources"]} == {store.run_id}
    cam = {t["tier"]: t for t in camera["tiers"]}
    assert cam["gateway"]["energy_source"].endswith("gw2 model=substation_cam,variant=int8")
    bad = subprocess.run([sys.executable, "-m", "bench.placement.cli", str(tmp_path / "x.yaml")],
                         cwd=REPO, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


# --- the backhaul suite and the counters on a scratch lab ------------------------------------

RIG = f"""\
name: tplace
virtual:
  lab_id: tplace
  state_dir: {STATE_ROOT / "tplace"}
  management_subnet: 10.213.45.0/24
  backhaul_subnet: 10.214.45.0/24
  board_python: /opt/fieldrig/board-python/bin/python3
  tiers:
    edge: {{distance_km: 30}}
    cloud: {{distance_km: 800}}
ssh_defaults:
  auth: {{identity_file: "{{state_dir}}/id_ed25519"}}
  host_key: {{known_hosts: "{{state_dir}}/known_hosts"}}
gateways:
  - name: g0
    board: rpi4
    backhaul: {{netns: {{namespace: fr-tplace-g0, interface: wan0}}}}
  - name: g1
    board: jetson-orin-nano
    backhaul: {{netns: {{namespace: fr-tplace-g1, interface: wan0}}}}
"""


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    from bench.lab.virtual import VirtualLab
    from bench.rig import load_rig

    path = tmp_path_factory.mktemp("tplace") / "tplace.yaml"
    path.write_text(RIG)
    lab = VirtualLab(load_rig(path))
    try:
        lab.up()
        assert lab.status().tiers_running
        yield path
    finally:
        lab.down(purge=True)
    from tests.test_lab import leftovers

    assert leftovers(lab) == []  # the tiers' namespaces and relays went with the lab


def test_backhaul_suite_on_a_scratch_lab(scratch: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "suites/test_backhaul.py", "suites/test_inference.py",
         "-k", "not test_latency and not test_accuracy and not substation_cam",
         f"--rig={scratch}",
         f"--runs-dir={runs}", "-p", "no:cacheprovider", "-q", "--inference-windows=2",
         "--inference-min-secs=0.2", "--inference-min-count=20"],
        cwd=REPO, capture_output=True, text=True, timeout=240, check=False,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    (run_dir,) = runs.iterdir()
    outcomes = read_jsonl(run_dir / "outcomes.jsonl")
    assert len(outcomes) == 16 and {o["outcome"] for o in outcomes} == {"passed"}
    got = {(r["gateway"], r["metric"]): r for r in read_jsonl(run_dir / "measurements.jsonl")}
    for gw in ("g0", "g1"):
        assert 0 < got[gw, "backhaul.rtt.p50"]["value"] <= got[gw, "backhaul.rtt.p99"]["value"]
        assert got[gw, "backhaul.rtt.p99"]["unit"] == "us"
        assert got[gw, "backhaul.bandwidth"]["value"] > 1e6
        assert got[gw, "backhaul.loss"]["value"] == 0.0  # an unimpaired veth
        assert got[gw, "backhaul.loss_ci_high"]["value"] < 0.02
        assert got[gw, "backhaul.loss"]["parameters"]["interval"] == "clopper-pearson"
        raw, events = got[gw, "backhaul.bytes.raw"], got[gw, "backhaul.bytes.events"]
        # 3000 datagrams of 64 B vs 30 of 48 B, each + UDP/IPv4/Ethernet headers (42 B)
        assert raw["value"] >= 3000 * (64 + 42) and events["value"] >= 30 * (48 + 42)
        assert events["value"] < 0.02 * raw["value"]
        assert 42 <= got[gw, "backhaul.overhead_per_message"]["value"] < 60
    # the lab's tiers are as far away as configured: 2 x 5 us/km of fibre at least, and
    # the cloud (800 km) further than the edge (30 km)
    records = read_jsonl(run_dir / "measurements.jsonl")
    tiers = {
        (r["gateway"], r["parameters"].get("tier"), r["metric"]): r["value"]
        for r in records
        if r["metric"].startswith("tier.")
    }
    for gw in ("g0", "g1"):
        edge, cloud = tiers[gw, "edge", "tier.rtt.p50"], tiers[gw, "cloud", "tier.rtt.p50"]
        assert 300 <= edge < cloud and cloud >= 8000, (edge, cloud)
        assert tiers[gw, "cloud", "tier.distance"] == 800
    # the measured run feeds placement: every tier measured, the tiers' own RTT used
    advice = advise(load_workload(REPO / "workloads/feeder_fault.yaml"), Measurements.load(runs))
    assert advice.backhaul["overhead_per_message"] is not None
    assert {n.run for n in advice.sources} == {run_dir.name}
    for name in ("edge", "cloud"):
        tier = advice.tier(name)
        assert tier.status == "ok", tier.notes
        terms = {t.name: t for t in tier.terms}
        rtt = terms[f"rtt to the {name} tier ({30 if name == 'edge' else 800} km)"]
        assert rtt.basis == "measured" and rtt.p50_ms >= propagation_ms(30)
        assert "backhaul rtt" not in terms  # the tier's own measurement, not the local link
        assert any(s.metric == "latency.p50" and s.params.get("tier") == name
                   for s in advice.sources)  # fmt: skip
    leftover = subprocess.run(["ip", "netns", "exec", "fr-tplace-g0", "nft", "list", "tables"],
                              capture_output=True, text=True, check=False).stdout  # fmt: skip
    assert "fieldrig_counter" not in leftover
