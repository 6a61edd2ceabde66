"""Mesh: delivery by hop count, loss against RF attenuation, recovery after a parent meter
dies, and delivery inside the mesh while the gateway's backhaul is down.

Probes are ICMPv6 echoes (Spinel dongles) or ECHONET Lite Gets (Route-B dongles) sent
through the gateway's radio on a Poisson schedule (RFC 2330) with a stated loss threshold
Tmax; every probe's fate is a record of the run (``mesh.probe``), and loss is reported with
a 95 % interval (Wilson; Clopper-Pearson at zero or total loss), RFC 3357 loss periods and
round-trip percentiles, broken down by hop count. Times are mesh time: on the virtual lab the
mesh runs ``time_scale`` times faster than the wall clock.

Assertions use the interval's bound, never the point estimate.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterator, Sequence

import numpy as np
import pytest

from bench.errors import BenchError
from bench.faults import FaultTimeline, Partition
from bench.gateway import ConnectedGateway
from bench.mesh.airtime import ack_airtime_s, frame_airtime_s, max_csma_delay_s
from bench.mesh.loss import LossSummary, ProbeRecord, by_hops, summarize
from bench.mesh.probing import Prober, periodic_schedule, poisson_schedule
from bench.plugin import Recorder
from bench.radio.capability import Radio, Topology
from bench.session import BenchSession

PROBE_BYTES = 32
#: IPv6 + ICMPv6 echo headers uncompressed (a conservative frame size for Tmax)
FRAME_BYTES = 40 + 8 + PROBE_BYTES + 9
MAX_ATTEMPTS = 4  # 1 + macMaxFrameRetries (3)
TARGETS_PER_HOP = 4
SWEEP_DB = (0.0, 15.0, 30.0, 45.0, 60.0)
RECOVERY_STREAK = 3


def worst_hop_s() -> float:
    """Worst-case MAC time of one hop: every attempt at the longest backoff, frame, ACK wait."""
    return MAX_ATTEMPTS * (max_csma_delay_s() + frame_airtime_s(FRAME_BYTES) + 2 * ack_airtime_s())


def tmax_for(max_hops: int) -> float:
    """Loss threshold: at least the worst-case MAC retry time there and back, plus queueing."""
    return 2 * max(max_hops, 1) * worst_hop_s() + 1.0


def _hop_targets(topology: Topology, per_hop: int) -> list[tuple[str, int | None]]:
    """Up to ``per_hop`` destinations of each hop count, interleaved by hop count."""
    by_hop: dict[int, list[str]] = collections.defaultdict(list)
    for route in sorted(topology.routes, key=lambda r: r.destination):
        if len(by_hop[route.hops]) < per_hop:
            by_hop[route.hops].append(route.destination)
    targets: list[tuple[str, int | None]] = []
    for i in range(per_hop):
        targets += [(by_hop[h][i], h) for h in sorted(by_hop) if i < len(by_hop[h])]
    return targets


def _record_summary(results: Recorder, prefix: str, summary: LossSummary, **params: object) -> None:
    results.record(f"{prefix}.sent", summary.sent, "count", **params)
    results.record(f"{prefix}.loss", summary.loss_ratio, "1", interval=summary.interval, **params)
    results.record(f"{prefix}.loss_ci_low", summary.ci_low, "1", **params)
    results.record(f"{prefix}.loss_ci_high", summary.ci_high, "1", **params)
    results.record(f"{prefix}.loss_periods", len(summary.loss_periods), "count", **params)
    results.record(f"{prefix}.max_loss_period", summary.max_loss_period, "count", **params)
    if summary.mean_loss_period is not None:
        results.record(f"{prefix}.mean_loss_period", summary.mean_loss_period, "count", **params)
    for name, value in (
        ("rtt_p50", summary.rtt_p50_s),
        ("rtt_p90", summary.rtt_p90_s),
        ("rtt_p99", summary.rtt_p99_s),
    ):
        if value is not None:
            results.record(f"{prefix}.{name}", value, "s", **params)


def _prober(
    radio: Radio,
    rig: BenchSession,
    gateway: str,
    results: Recorder,
    tmax_s: float,
    **params: object,
) -> Prober:
    def keep(record: ProbeRecord) -> None:
        results.record("mesh.probe.delivered", not record.lost, "1", **record.to_row(), **params)

    return Prober(
        radio,
        tmax_s=tmax_s,
        time_scale=rig.mesh_time_scale(gateway),
        on_record=keep,
        payload_len=PROBE_BYTES,
        first_seq=int(time.monotonic_ns() // 1000) & 0xFFFF,
    )


@pytest.fixture
def topology(gateway_radio: Radio, gateway: ConnectedGateway, results: Recorder) -> Topology:
    """The mesh as the dongle knows it at the start of the test (recorded)."""
    identity = gateway_radio.identify()
    state = gateway_radio.state()
    topo = gateway_radio.topology()
    if not topo.routes:
        pytest.fail(f"{gateway.name}: the dongle ({identity.firmware}) knows no route to any meter")
    results.record("mesh.routes", len(topo.routes), "count", firmware=identity.firmware,
                   role=state.role)  # fmt: skip
    results.record("mesh.neighbours", len(topo.neighbours), "count")
    for hops, count in sorted(collections.Counter(r.hops for r in topo.routes).items()):
        results.record("mesh.meters_at_hops", count, "count", hops=hops)
    return topo


@pytest.mark.needs("radio")
def test_delivery_by_hop_count(
    gateway: ConnectedGateway,
    gateway_radio: Radio,
    topology: Topology,
    rig: BenchSession,
    results: Recorder,
    request: pytest.FixtureRequest,
) -> None:
    targets = _hop_targets(topology, TARGETS_PER_HOP)
    max_hops = max(h for _, h in targets if h is not None)
    tmax = tmax_for(max_hops)
    count = request.config.getoption("mesh_probes")
    rate = request.config.getoption("mesh_probe_rate")
    schedule = poisson_schedule(rate, count, np.random.default_rng(7))
    records = _prober(gateway_radio, rig, gateway.name, results, tmax).run(targets, schedule)
    results.record("mesh.tmax", tmax, "s")
    for hops, summary in by_hops(records).items():
        _record_summary(results, "mesh.delivery", summary, hops=hops)
    overall = summarize(records)
    _record_summary(results, "mesh.delivery", overall, hops="all")
    near = summarize([r for r in records if r.hops is not None and r.hops <= 3])
    floor = request.config.getoption("mesh_min_delivery")
    assert near.delivery_low >= floor, (
        f"{gateway.name}: delivery to meters within 3 hops is {1 - near.loss_ratio:.1%}, whose "
        f"95 % lower bound {near.delivery_low:.1%} is below the required {floor:.0%} "
        f"({near.sent} probes)"
    )


@pytest.mark.needs("radio")
def test_attenuation_sweep(
    gateway: ConnectedGateway,
    gateway_radio: Radio,
    topology: Topology,
    rig: BenchSession,
    results: Recorder,
) -> None:
    try:
        attenuator, channel, limits = rig.attenuator(gateway.name)
    except BenchError as exc:
        pytest.skip(str(exc))
    first_hop = [(r.destination, r.hops) for r in topology.routes if r.hops == 1][:8]
    if not first_hop:
        pytest.fail(f"{gateway.name}: no meter one hop from the dongle to sweep against")
    targets: Sequence[tuple[str, int | None]] = first_hop
    tmax = tmax_for(3)  # routes may lengthen while the first hop fades
    summaries: dict[float, LossSummary] = {}
    try:
        for db in [d for d in SWEEP_DB if d <= limits.max_db]:
            attenuator.set_db(channel, db)
            prober = _prober(gateway_radio, rig, gateway.name, results, tmax, attenuation_db=db)
            records = prober.run(targets, periodic_schedule(0.25, 80))
            summaries[db] = summarize(records)
            _record_summary(results, "mesh.attenuation", summaries[db], attenuation_db=db)
            rig.progress(f"{gateway.name} attenuation sweep {db:g} dB: loss "
                         f"{summaries[db].loss_ratio:.1%} of {len(records)} probes")  # fmt: skip
    finally:
        attenuator.set_db(channel, limits.safe_db)
    low, high = min(summaries), max(summaries)
    assert high > low, f"{gateway.name}: max_db {limits.max_db} leaves no room for a sweep"
    clean, faded = summaries[low], summaries[high]
    assert faded.ci_low > clean.ci_high, (
        f"{gateway.name}: loss at {high:g} dB ({faded.loss_ratio:.1%}, 95 % CI from "
        f"{faded.ci_low:.1%}) is not clearly above loss at {low:g} dB ({clean.loss_ratio:.1%}, "
        f"CI up to {clean.ci_high:.1%}): the attenuator does not reach the radio link"
    )


def _children_of(topology: Topology) -> tuple[str, list[tuple[str, int | None]]]:
    parents = collections.Counter(r.parent for r in topology.routes if r.hops >= 2)
    if not parents:
        pytest.fail("no meter has children in the dongle's route table")
    parent = parents.most_common(1)[0][0]
    children = [(r.destination, r.hops) for r in topology.routes if r.parent == parent]
    return parent, children


@pytest.mark.needs("radio")
def test_recovery_after_parent_dies(
    gateway: ConnectedGateway,
    gateway_radio: Radio,
    topology: Topology,
    rig: BenchSession,
    results: Recorder,
    request: pytest.FixtureRequest,
) -> None:
    try:
        control = rig.mesh_control(gateway.name)
    except BenchError as exc:
        pytest.skip(str(exc))
    parent, children = _children_of(topology)
    scale = rig.mesh_time_scale(gateway.name)
    deadline_s = request.config.getoption("mesh_recovery_max_s")
    prober = _prober(gateway_radio, rig, gateway.name, results, tmax_for(8), phase="recovery")
    streak = dict.fromkeys((c for c, _ in children), 0)
    recovered_at: dict[str, float] = {}
    control.power_off(parent)
    killed = time.monotonic()
    try:
        while len(recovered_at) < len(children):
            elapsed = (time.monotonic() - killed) * scale
            if elapsed > deadline_s:
                break
            pending = [(c, h) for c, h in children if c not in recovered_at]
            for record in prober.run(pending, periodic_schedule(0.2, len(pending))):
                streak[record.destination] = 0 if record.lost else streak[record.destination] + 1
                if streak[record.destination] >= RECOVERY_STREAK:
                    recovered_at[record.destination] = (time.monotonic() - killed) * scale
        after = gateway_radio.topology()
    finally:
        control.power_on(parent)
    for child, at in recovered_at.items():
        results.record("mesh.recovery_time", at, "s", child=child, parent=parent)
    results.record("mesh.recovery_children", len(children), "count", parent=parent)
    stranded = sorted(set(streak) - set(recovered_at))
    assert not stranded, (
        f"{gateway.name}: {len(stranded)} of {len(children)} children of dead meter {parent} "
        f"had no {RECOVERY_STREAK} answered probes in a row within {deadline_s:g} s: {stranded}"
    )
    worst = max(recovered_at.values())
    results.record("mesh.recovery_time_max", worst, "s", parent=parent)
    rerouted = {r.destination for r in after.routes if r.parent != parent}
    assert set(recovered_at) <= rerouted, (
        f"{gateway.name}: children answer again but the dongle still routes "
        f"{sorted(set(recovered_at) - rerouted)} through dead meter {parent}"
    )


CLOUD_PROBE = (
    "import socket,sys\n"
    "try:\n socket.create_connection((sys.argv[1], 9), 2)\n"
    "except ConnectionRefusedError:\n print('reachable')\n"
    "except OSError as e:\n print('unreachable', e)\n"
    "else:\n print('reachable')\n"
)


def cloud_reachable(gateway: ConnectedGateway, address: str) -> bool:
    """A TCP SYN from the gateway to ``address``: refused or accepted means the backhaul
    carries traffic; a timeout means it does not."""
    result = gateway.run(["python3", "-c", CLOUD_PROBE, address], timeout=10)
    return result.stdout.decode().startswith("reachable")


@pytest.fixture
def backhaul_down(gateway: ConnectedGateway, rig: BenchSession) -> Iterator[str | None]:
    """The gateway's backhaul partitioned (both directions) for the duration of the test;
    yields the cloud address to check it against (virtual lab) or None."""
    try:
        target = rig.backhaul(gateway.name)
    except BenchError as exc:
        pytest.skip(str(exc))
    cloud = str(rig.spec.virtual.cloud_address) if rig.spec.virtual is not None else None
    if cloud is not None:
        assert cloud_reachable(gateway, cloud), f"{gateway.name} cannot reach {cloud} to begin with"
    with FaultTimeline(sink=lambda e: rig.record_fault(gateway.name, e)) as timeline:
        timeline.schedule(Partition(target, protect=rig.fault_protection()), at_s=0)
        deadline = time.monotonic() + 10
        while not any(e.action == "apply" for e in timeline.events) and not timeline.errors:
            assert time.monotonic() < deadline, f"{gateway.name}: the partition never applied"
            time.sleep(0.05)
        assert not timeline.errors, f"{gateway.name}: {timeline.errors}"
        yield cloud


@pytest.mark.needs("radio", "backhaul")
def test_mesh_delivery_with_backhaul_down(
    gateway: ConnectedGateway,
    gateway_radio: Radio,
    topology: Topology,
    rig: BenchSession,
    results: Recorder,
    backhaul_down: str | None,
    request: pytest.FixtureRequest,
) -> None:
    if backhaul_down is not None:
        assert not cloud_reachable(gateway, backhaul_down), (
            f"{gateway.name} still reaches {backhaul_down}: the partition did not take"
        )
    targets = _hop_targets(topology, 2)
    tmax = tmax_for(max(h or 1 for _, h in targets))
    schedule = poisson_schedule(request.config.getoption("mesh_probe_rate"), 120,
                                np.random.default_rng(11))  # fmt: skip
    prober = _prober(gateway_radio, rig, gateway.name, results, tmax, backhaul="down")
    records = prober.run(targets, schedule)
    summary = summarize(records)
    _record_summary(results, "mesh.delivery_backhaul_down", summary)
    floor = request.config.getoption("mesh_min_delivery")
    assert summary.delivery_low >= floor, (
        f"{gateway.name}: with the backhaul down, delivery inside the mesh is "
        f"{1 - summary.loss_ratio:.1%} (95 % lower bound {summary.delivery_low:.1%}); local "
        "traffic must not depend on the cloud"
    )
