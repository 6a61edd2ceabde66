"""The virtual lab's border-router dongle (Spinel emulator + mesh simulator) driven by
SpinelRadio over a real pseudo-terminal: identity, counters, RPL tables, ICMPv6 probes whose
host-measured round trips match the simulator's, faults."""

from __future__ import annotations

import collections
import statistics
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.lab.mesh_ncp import NCP_VERSION, MeshNcp
from bench.lab.radio import RadioLab
from bench.lab.radio_plan import CONTROL_SOCKET, radio_dir
from bench.mesh.airtime import frame_airtime_s
from bench.mesh.control import MeshControl
from bench.mesh.loss import summarize
from bench.mesh.probing import Prober, periodic_schedule
from bench.mesh.sim import MeshConfig
from bench.radio.icmpv6 import ECHO_REQUEST, Echo
from bench.radio.spinel import Prop, Status, pack_data_wlen
from bench.radio.spinel_driver import SpinelStatusError
from bench.radio.spinel_radio import SpinelRadio
from bench.rig import parse_rig
from bench.transport.ptyport import PtyDevice
from bench.transport.serial import SerialPort

SCALE = 10.0


@pytest.fixture
def ncp(tmp_path: Path) -> Iterator[MeshNcp]:
    device = PtyDevice(tmp_path, "br0")
    ncp = MeshNcp(device, MeshConfig(meters=60, seed=3), time_scale=SCALE)
    ncp.start()
    try:
        yield ncp
    finally:
        ncp.stop()
        device.unplug()


@pytest.fixture
def radio(ncp: MeshNcp) -> Iterator[SpinelRadio]:
    port = SerialPort(str(ncp.emulator.device.path), name="br0")
    port.open()
    radio = SpinelRadio(port)
    try:
        yield radio
    finally:
        radio.close()


def test_identity_and_state(radio: SpinelRadio) -> None:
    identity = radio.identify()
    assert identity.firmware == NCP_VERSION
    assert identity.protocol == "spinel 4.3 wisun"
    assert identity.hwaddr == "18b4300000000001"
    state = radio.state()
    assert state.role == "leader" and state.joined
    assert state.counters["tx_total"] > 0  # meter traffic ran during warm-up
    assert state.counters["tx_acked"] <= state.counters["tx_total"]


def test_topology_matches_the_simulated_mesh(radio: SpinelRadio, ncp: MeshNcp) -> None:
    topology = radio.topology()
    sim = ncp.sim
    with ncp.lock:
        expected = {sim.address(n): sim.hop_count(n) for n in range(1, sim.meters + 1)}
        neighbours = {sim.address(n.node) for n in sim.neighbours(0)}
    routed = {r.destination: r.hops for r in topology.routes}
    assert routed == {a: h for a, h in expected.items() if h is not None}
    assert len(routed) >= 0.9 * sim.meters
    assert {n.address for n in topology.neighbours} <= neighbours
    assert all(n.etx is not None and n.etx >= 1.0 for n in topology.neighbours)
    for route in topology.routes:
        assert (route.hops == 1) == (route.next_hop == route.destination)
        assert route.hops > 1 or route.parent == radio.local_address()


def test_probe_round_trips_match_the_simulator(radio: SpinelRadio, ncp: MeshNcp) -> None:
    topology = radio.topology()
    by_hops = collections.defaultdict(list)
    for route in topology.routes:
        by_hops[route.hops].append(route.destination)
    targets = [(by_hops[h][0], h) for h in sorted(by_hops)]
    prober = Prober(radio, tmax_s=8.0, time_scale=SCALE)
    records = prober.run(targets, periodic_schedule(0.5, 6 * len(targets)))
    assert len(records) == 6 * len(targets)
    delivered = [r for r in records if not r.lost]
    assert len(delivered) >= len(records) // 2
    sim_rtts = sorted(r.rtt_s for r in ncp.history if r.delivered and r.rtt_s is not None)
    host_rtts = sorted(r.rtt_s for r in delivered if r.rtt_s is not None)
    assert len(sim_rtts) == len(host_rtts) == ncp.counters["echoes_sent"]
    extra = [host - sim for host, sim in zip(host_rtts, sim_rtts, strict=True)]
    # never faster than the simulated radio; the host adds serial and scheduling time
    # (scaled into mesh time), typically a few ms of wall time, more on a loaded machine
    assert min(extra) >= -0.001
    assert statistics.median(extra) <= 0.02 * SCALE
    one_hop = [r for r in delivered if r.hops == 1]
    assert all(r.rtt_s is not None and r.rtt_s >= 2 * frame_airtime_s(40) for r in one_hop)
    assert not prober.strays


def test_sequence_numbers_survive_the_16_bit_wrap(radio: SpinelRadio) -> None:
    """ICMPv6 carries 16 bits of the sequence number; the radio maps echoes back."""
    target = next(r for r in radio.topology().routes if r.hops == 1)
    prober = Prober(radio, tmax_s=4.0, time_scale=SCALE, first_seq=0xFFFE)
    records = prober.run([(target.destination, 1)], periodic_schedule(0.3, 5))
    assert [r.seq for r in records] == list(range(0xFFFE, 0xFFFE + 5))
    assert sum(not r.lost for r in records) >= 3
    assert not prober.strays


def test_probe_to_an_unknown_meter_is_lost(radio: SpinelRadio, ncp: MeshNcp) -> None:
    records = Prober(radio, tmax_s=2.0, time_scale=SCALE).run(
        [("fd00:db8:0:1::fff0", None)], periodic_schedule(0.1, 3)
    )
    assert [r.lost for r in records] == [True, True, True]
    assert ncp.counters["no_route"] == 3


def test_malformed_stream_packet_is_refused(radio: SpinelRadio, ncp: MeshNcp) -> None:
    with pytest.raises(SpinelStatusError, match="PARSE_ERROR") as caught:
        radio.driver.set(Prop.STREAM_NET, pack_data_wlen(b"\x60garbage"))
    assert caught.value.status == Status.PARSE_ERROR
    good = Echo(ECHO_REQUEST, radio.local_address(), "fd00:db8:0:1::fff1", 1, 1).encode()
    radio.driver.set(Prop.STREAM_NET, pack_data_wlen(good))  # still serving
    assert ncp.counters["host_bad_packets"] == 1


def test_attenuation_raises_loss_on_the_first_hop(radio: SpinelRadio, ncp: MeshNcp) -> None:
    first_hop = [(r.destination, r.hops) for r in radio.topology().routes if r.hops == 1][:5]
    assert first_hop
    prober = Prober(radio, tmax_s=4.0, time_scale=SCALE)
    clean = summarize(prober.run(first_hop, periodic_schedule(0.3, 40)))
    ncp.set_attenuation_db(50)
    faded = summarize(prober.run(first_hop, periodic_schedule(0.3, 40)))
    ncp.set_attenuation_db(0)
    assert faded.ci_low > clean.ci_high


RADIO_RIG = """
name: t54
virtual:
  state_dir: {state_dir}
  management_subnet: 10.213.54.0/24
  backhaul_subnet: 10.214.54.0/24
  lab_id: t54
  mesh: {{meters: 40, seed: 3, time_scale: 10}}
ssh_defaults:
  user: root
  auth: {{identity_file: "{{state_dir}}/id_ed25519"}}
  host_key: {{known_hosts: "{{state_dir}}/known_hosts"}}
gateways:
  - name: gw1
    board: rpi4
    radio: {{port: "{{state_dir}}/radio/gw1", driver: spinel}}
"""


def test_interference_bursts_and_link_faults_through_the_control_socket(tmp_path: Path) -> None:
    """The lab's real control socket in front of a running MeshNcp: bursts start and stop on
    request, the answer places them on the mesh clock, and probes sent through the dongle
    inside bursts are lost more than those clear of them (95 % intervals)."""
    rig = parse_rig(RADIO_RIG.format(state_dir=tmp_path), "t54.yaml")
    lab = RadioLab(rig)
    lab.start()
    try:
        control = MeshControl(radio_dir(rig) / CONTROL_SOCKET, "gw1")
        port = SerialPort(str(radio_dir(rig) / "gw1"), name="gw1")
        port.open()
        radio = SpinelRadio(port)
        try:
            routes = radio.topology().routes
            targets = [(r.destination, r.hops) for r in routes if r.hops <= 2][:8]
            plan = control.interference_start(
                rate_per_s=0.1, mean_burst_s=4.0, penalty_db=12.0, duration_s=200.0, seed=5
            )
            assert plan["bursts"] and all(b["penalty_db"] == 12.0 for b in plan["bursts"])
            tmax = 4.0
            records = Prober(radio, tmax_s=tmax, time_scale=SCALE).run(
                targets, periodic_schedule(0.25, 320)
            )
            stopped = control.interference_stop()
            # a degraded link through the same socket: listed, then restored
            a, b = routes[0].destination, routes[0].next_hop
            if a == b:
                b = radio.local_address()
            degraded = control.degrade_link(a, b, 6.0)["degraded_links"]
            assert [(d["db"]) for d in degraded] == [6.0]
            assert control.degrade_link(a, b, 0.0)["degraded_links"] == []
        finally:
            radio.close()
    finally:
        lab.stop()
    bursts = [(x["start_s"], x["end_s"]) for x in stopped["bursts"]]
    assert bursts and stopped["now_s"] >= bursts[-1][1]
    clock = stopped["clock"]

    def mesh_time(ns: int) -> float:
        return float(clock["sim_s"] + (ns - clock["monotonic_ns"]) * SCALE / 1e9)

    inside, outside = [], []
    for record in records:
        start = mesh_time(record.sent_ns)
        end = start + (record.rtt_s if record.rtt_s is not None else tmax)
        if any(s <= start and end <= e for s, e in bursts):
            inside.append(record)
        elif not any(start <= e and s <= end for s, e in bursts):
            outside.append(record)
    assert len(inside) >= 30 and len(outside) >= 100, (len(inside), len(outside))
    during, clear = summarize(inside), summarize(outside)
    assert during.ci_low > clear.ci_high, (during.interval, clear.interval)
