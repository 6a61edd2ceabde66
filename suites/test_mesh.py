"""Mesh: delivery by hop count, loss against RF attenuation, recovery after a parent meter
dies, and delivery inside the mesh while the gateway's backhaul is down.

Probes are ICMPv6 echoes (Spinel dongles) or ECHONET Lite Gets (Route-B dongles) sent
through the gateway's radio on a Poisson schedule (RFC 2330) with a stated loss threshold
Tmax; every probe's fate is a record of the run (``mesh.probe``), and loss is reported with
a 95 % interval (Wilson; Clopper-Pearson at zero or total loss), RFC 3357 loss periods and
round-trip percentiles, broken down by hop count. Times are mesh time: on the virtual lab the
mesh runs ``time_scale`` times faster than the wall clock. Every probing test records its Tmax
(``mesh.tmax``); each probe's ``hops`` is the route's hop count as the dongle last reported
it, and ``hops_source`` says when that was read (``topology_at_start`` of the test,
``topology_at_step`` of a sweep step, ``topology_before_round`` of a recovery round).

Delivery with the backhaul down is measured FROM THE GATEWAY: fieldrig's prober and radio
driver run on the board against the dongle as the board sees it
(:mod:`bench.mesh.remote_probe`), so a local path that needs the cloud fails the test.

A Route-B (SKSTACK-IP) dongle holds one PANA session with one smart meter, not a mesh: the
session joins it when a test opens the radio, its topology is that meter at hop 1, delivery
is measured to it, and the test that needs a parent meter to kill skips.

Assertions use the interval's bound, never the point estimate.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import pytest

from bench.errors import BenchError
from bench.faults import FaultTimeline, Partition
from bench.gateway import ConnectedGateway
from bench.mesh.airtime import ack_airtime_s, frame_airtime_s, max_csma_delay_s
from bench.mesh.loss import LossSummary, ProbeRecord, by_hops, summarize
from bench.mesh.probing import Prober, periodic_schedule, poisson_schedule
from bench.mesh.remote_probe import GatewayProber, RemoteProbeError, driver_class
from bench.plugin import Recorder
from bench.radio.capability import Radio, Topology
from bench.radio.registry import forms_mesh
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


def _keeper(
    results: Recorder, hops_source: str = "topology_at_start", **params: object
) -> Callable[[ProbeRecord], None]:
    """Every probe's fate into the run (``mesh.probe.delivered``) as soon as it is known;
    ``hops_source`` says when the hop counts of the targets were read."""

    def keep(record: ProbeRecord) -> None:
        results.record("mesh.probe.delivered", not record.lost, "1", **record.to_row(),
                       hops_source=hops_source, **params)  # fmt: skip

    return keep


def _first_seq() -> int:
    return int(time.monotonic_ns() // 1000) & 0xFFFF


def _prober(
    radio: Radio,
    rig: BenchSession,
    gateway: str,
    results: Recorder,
    tmax_s: float,
    hops_source: str = "topology_at_start",
    **params: object,
) -> Prober:
    return Prober(
        radio,
        tmax_s=tmax_s,
        time_scale=rig.mesh_time_scale(gateway),
        on_record=_keeper(results, hops_source, **params),
        payload_len=PROBE_BYTES,
        first_seq=_first_seq(),
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
    results.record("mesh.tmax", tmax, "s")
    records = _prober(gateway_radio, rig, gateway.name, results, tmax).run(targets, schedule)
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
    results.record("mesh.tmax", tmax, "s")
    summaries: dict[float, LossSummary] = {}
    try:
        for db in [d for d in SWEEP_DB if d <= limits.max_db]:
            attenuator.set_db(channel, db)
            now = gateway_radio.topology()  # the same meters; their hop counts at this step
            step = [(dest, now.hops_to(dest)) for dest, _ in targets]
            prober = _prober(gateway_radio, rig, gateway.name, results, tmax, attenuation_db=db,
                             hops_source="topology_at_step")  # fmt: skip
            records = prober.run(step, periodic_schedule(0.25, 80))
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
    """A child has recovered once RECOVERY_STREAK probes in a row are answered. Its recovery
    time is the arrival of the FIRST answer of that streak (mesh seconds after the parent
    died); the arrival of the answer that confirmed it is kept as a second figure."""
    if not forms_mesh(gateway_radio.driver_name):
        pytest.skip(f"{gateway.name}: its {gateway_radio.driver_name} dongle talks to one meter "
                    "in one hop, not a mesh: there is no parent meter to kill")  # fmt: skip
    try:
        control = rig.mesh_control(gateway.name)
    except BenchError as exc:
        pytest.skip(str(exc))
    parent, children = _children_of(topology)
    hops_before = dict(children)
    scale = rig.mesh_time_scale(gateway.name)
    deadline_s = request.config.getoption("mesh_recovery_max_s")
    tmax = tmax_for(8)
    results.record("mesh.tmax", tmax, "s")
    prober = _prober(gateway_radio, rig, gateway.name, results, tmax, phase="recovery",
                     hops_source="topology_before_round")  # fmt: skip
    streak = dict.fromkeys(hops_before, 0)
    streak_start: dict[str, float] = {}
    recovered_at: dict[str, tuple[float, float]] = {}  # child -> (first answer, confirmation)
    control.power_off(parent)
    killed_ns = time.monotonic_ns()

    def since_kill(record: ProbeRecord) -> float:
        """Mesh seconds from the parent's death to this probe's answer."""
        return (record.sent_ns - killed_ns) * scale / 1e9 + (record.rtt_s or 0.0)

    try:
        while len(recovered_at) < len(children):
            if (time.monotonic_ns() - killed_ns) * scale / 1e9 > deadline_s:
                break
            routes = gateway_radio.topology()  # hop counts as the dongle routes this round
            pending = [(c, routes.hops_to(c)) for c in hops_before if c not in recovered_at]
            for record in prober.run(pending, periodic_schedule(0.2, len(pending))):
                child = record.destination
                if record.lost:
                    streak[child] = 0
                    continue
                if streak[child] == 0:
                    streak_start[child] = since_kill(record)
                streak[child] += 1
                if streak[child] >= RECOVERY_STREAK:
                    recovered_at[child] = (streak_start[child], since_kill(record))
        after = gateway_radio.topology()
    finally:
        control.power_on(parent)
    for child, (first, confirmed) in recovered_at.items():
        results.record("mesh.recovery_time", first, "s", child=child, parent=parent)
        results.record("mesh.recovery_confirmed_time", confirmed, "s", child=child,
                       parent=parent, streak=RECOVERY_STREAK)  # fmt: skip
    for child, hops in hops_before.items():
        results.record("mesh.recovery_hops", after.hops_to(child), "count", child=child,
                       parent=parent, hops_before=hops)  # fmt: skip
    results.record("mesh.recovery_children", len(children), "count", parent=parent)
    stranded = sorted(set(streak) - set(recovered_at))
    assert not stranded, (
        f"{gateway.name}: {len(stranded)} of {len(children)} children of dead meter {parent} "
        f"had no {RECOVERY_STREAK} answered probes in a row within {deadline_s:g} s: {stranded}"
    )
    results.record("mesh.recovery_time_max", max(f for f, _ in recovered_at.values()), "s",
                   parent=parent)  # fmt: skip
    results.record("mesh.recovery_confirmed_time_max",
                   max(c for _, c in recovered_at.values()), "s", parent=parent)  # fmt: skip
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


@pytest.fixture
def gateway_side(gateway: ConnectedGateway, rig: BenchSession) -> tuple[str, str, int]:
    """(port, driver, baud rate) of the gateway's dongle as the gateway itself sees it;
    skipped where the rig does not say or the gateway side cannot drive that dongle."""
    link = rig.spec.gateway(gateway.name).radio
    if link is None:
        pytest.skip(f"gateway {gateway.name} has no radio")
    try:
        port = rig.radio_gateway_port(gateway.name)
        driver_class(link.driver)  # one the gateway side can drive
    except BenchError as exc:
        pytest.skip(f"no gateway-side probing: {exc}")
    return port, link.driver, link.baudrate


@pytest.mark.needs("radio", "backhaul")
def test_mesh_delivery_with_backhaul_down(
    gateway: ConnectedGateway,
    gateway_radio: Radio,
    topology: Topology,
    gateway_side: tuple[str, str, int],
    rig: BenchSession,
    results: Recorder,
    backhaul_down: str | None,
    request: pytest.FixtureRequest,
) -> None:
    """Delivery inside the mesh, measured on the gateway while its backhaul is cut: the probes
    run where the gateway's local decisions run, so a local path that needs the cloud fails."""
    if backhaul_down is not None:
        assert not cloud_reachable(gateway, backhaul_down), (
            f"{gateway.name} still reaches {backhaul_down}: the partition did not take"
        )
    port, driver, baudrate = gateway_side
    near = Topology(topology.neighbours, [r for r in topology.routes if r.hops <= 3])
    targets = _hop_targets(near, TARGETS_PER_HOP)  # the meters --mesh-min-delivery is for
    if not targets:
        pytest.fail(f"{gateway.name}: the dongle routes to no meter within 3 hops")
    tmax = tmax_for(max(h or 1 for _, h in targets))
    results.record("mesh.tmax", tmax, "s")
    schedule = poisson_schedule(request.config.getoption("mesh_probe_rate"), 120,
                                np.random.default_rng(11))  # fmt: skip
    keep = _keeper(results, origin="gateway", backhaul="down", hops_source="topology_at_start")
    prober = GatewayProber(
        gateway,
        port=port,
        driver=driver,
        baudrate=baudrate,
        tmax_s=tmax,
        time_scale=rig.mesh_time_scale(gateway.name),
        on_record=keep,
        payload_len=PROBE_BYTES,
        first_seq=_first_seq(),
    )
    try:
        with rig.released_radio(gateway.name):  # one opener: the gateway drives the dongle
            records = prober.run(targets, schedule)
    except RemoteProbeError as exc:
        pytest.fail(f"{exc}; with the backhaul down the gateway could not measure its own "
                    "mesh: local traffic must not depend on the cloud")  # fmt: skip
    for hops, by_hop in by_hops(records).items():
        _record_summary(results, "mesh.delivery_backhaul_down", by_hop, origin="gateway", hops=hops)
    summary = summarize(records)
    _record_summary(results, "mesh.delivery_backhaul_down", summary, origin="gateway", hops="all")
    floor = request.config.getoption("mesh_min_delivery")
    assert summary.delivery_low >= floor, (
        f"{gateway.name}: with the backhaul down, delivery to meters within 3 hops measured on "
        f"the gateway is {1 - summary.loss_ratio:.1%} (95 % lower bound "
        f"{summary.delivery_low:.1%}, {summary.sent} probes) below the required {floor:.0%}; "
        "local traffic must not depend on the cloud"
    )


BURST_RATE_PER_S = 0.15
BURST_MEAN_S = 4.0
BURST_PENALTY_DB = 12.0
BURST_GUARD_S = 1.0
"""A probe counts as clear of the bursts when none starts within this long after it."""


@pytest.mark.needs("radio")
def test_delivery_under_interference_bursts(
    gateway: ConnectedGateway,
    gateway_radio: Radio,
    topology: Topology,
    rig: BenchSession,
    results: Recorder,
    request: pytest.FixtureRequest,
) -> None:
    """Interference bursts (a Poisson process in mesh time, each lowering every link's
    margin by BURST_PENALTY_DB): delivery inside bursts against delivery clear of them, by
    hops, with 95 % intervals; each burst goes on the run's fault timeline."""
    try:
        control = rig.mesh_control(gateway.name)
    except BenchError as exc:
        pytest.skip(
            f"{exc}; with a real dongle the interferer is a signal generator the rig would "
            "name, and no driver for one is built"
        )
    targets = _hop_targets(topology, 2)
    tmax = tmax_for(max(h or 1 for _, h in targets))
    count = request.config.getoption("mesh_probes")
    rate = request.config.getoption("mesh_probe_rate")
    window_s = count / rate + 2 * tmax
    prober = _prober(gateway_radio, rig, gateway.name, results, tmax, phase="interference")
    plan = control.interference_start(rate_per_s=BURST_RATE_PER_S, mean_burst_s=BURST_MEAN_S,
                                      penalty_db=BURST_PENALTY_DB, duration_s=window_s,
                                      seed=13)  # fmt: skip
    try:
        records = prober.run(targets, poisson_schedule(rate, count, np.random.default_rng(13)))
    finally:
        answer = control.interference_stop()
    clock, scale = answer["clock"], float(answer["time_scale"])
    bursts = [(float(b["start_s"]), float(b["end_s"])) for b in answer["bursts"]]
    t0 = float(plan["clock"]["sim_s"])
    for start, end in bursts:  # mesh seconds since the interferer started
        for action, at in (("apply", start), ("remove", end)):
            rig.record_fault(gateway.name, {
                "t_s": at - t0, "wall": "", "action": action, "kind": "interference_burst",
                "target": gateway.name, "params": {"penalty_db": BURST_PENALTY_DB},
                "backend": "mesh-control", "details": {"mesh_time_s": at}, "message": None,
            })  # fmt: skip

    def mesh_time(ns: int) -> float:
        return float(clock["sim_s"]) + (ns - int(clock["monotonic_ns"])) * scale / 1e9

    inside: list[ProbeRecord] = []
    outside: list[ProbeRecord] = []
    for record in records:  # by send time (not by fate, which would bias the groups)
        start = mesh_time(record.sent_ns)
        if any(s <= start < e for s, e in bursts):
            inside.append(record)
        elif not any(start <= e and s <= start + BURST_GUARD_S for s, e in bursts):
            outside.append(record)  # probes just before a burst count in neither
    results.record("mesh.interference.bursts", len(bursts), "count",
                   rate_per_s=BURST_RATE_PER_S, mean_burst_s=BURST_MEAN_S,
                   penalty_db=BURST_PENALTY_DB)  # fmt: skip
    for where, group in (("inside", inside), ("outside", outside)):
        if group:
            _record_summary(results, "mesh.interference", summarize(group), bursts=where,
                            hops="all")  # fmt: skip
        for hops, summary in by_hops(group).items():
            _record_summary(results, "mesh.interference", summary, bursts=where, hops=hops)
    if len(inside) < 20 or len(outside) < 20:
        pytest.fail(f"{gateway.name}: too few probes to compare ({len(inside)} inside bursts, "
                    f"{len(outside)} clear of them); raise --mesh-probes")  # fmt: skip
    during, clear = summarize(inside), summarize(outside)
    assert during.ci_low > clear.ci_high, (
        f"{gateway.name}: loss inside interference bursts ({during.loss_ratio:.1%}, 95 % CI from "
        f"{during.ci_low:.1%}, {during.sent} probes) is not clearly above loss outside them "
        f"({clear.loss_ratio:.1%}, CI up to {clear.ci_high:.1%}): the bursts do not reach the "
        "radio links"
    )
