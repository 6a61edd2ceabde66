"""The mesh simulator: determinism, topology, routing repair, fault controls, calibration.

Loss figures are compared through 95 % Wilson intervals (bounds, never point estimates).
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np
import pytest

from bench.mesh.links import (
    TYPICAL_FIRST_ATTEMPT,
    TYPICAL_WITHIN_THREE,
    delivery_probability,
    gilbert_from_margin,
    link_from_margin,
    link_margin_db,
    path_loss_db,
)
from bench.mesh.loss import wilson_interval
from bench.mesh.sim import (
    MeshConfig,
    MeshError,
    MeshSimulator,
    ProbeResult,
    UnknownNode,
    ack_wait_s,
)

RECOVERY_BOUND_S = 75.0
"""Parent death to working probes: at most one routing round (dio_interval_s 30 s + 10 %
jitter) to notice, DAO delay (1 s), one DAO retry (5 s) and slack for a second round."""


@pytest.fixture(scope="module")
def warm_sim() -> MeshSimulator:
    """The default 200-meter mesh after warm-up (tests that only read it share it)."""
    sim = MeshSimulator(MeshConfig())
    sim.warm_up()
    return sim


def fresh(**overrides: int | float) -> MeshSimulator:
    sim = MeshSimulator(MeshConfig(**overrides))  # type: ignore[arg-type]
    sim.warm_up()
    return sim


def probe(
    sim: MeshSimulator, nodes: Sequence[int], spacing_s: float = 0.1, rounds: int = 1
) -> list[ProbeResult]:
    """Probe ``nodes`` round-robin, one probe every ``spacing_s``; wait for every answer."""
    results: list[ProbeResult] = []
    sent = 0
    for _ in range(rounds):
        for node in nodes:
            sim.send_probe(node)
            sent += 1
            results += sim.run_until(sim.now + spacing_s)
    deadline = sim.now + 60.0
    while len(results) < sent and sim.now < deadline:
        results += sim.run_until(sim.now + 1.0)
    assert len(results) == sent, "every probe ends, delivered or lost"
    return results


def interval(results: Iterable[ProbeResult]) -> tuple[float, float]:
    outcomes = [r.delivered for r in results]
    return wilson_interval(sum(outcomes), len(outcomes))


def chain(sim: MeshSimulator, node: int) -> list[int]:
    """The node's own path to the root along parent pointers, checking ranks fall each hop."""
    path = [node]
    while path[-1] != 0:
        parent = sim.parent(path[-1])
        assert parent is not None, f"{path} ends at a detached node"
        assert sim.rank(parent) < sim.rank(path[-1]), f"rank does not fall along {path}"
        assert parent not in path, f"loop {[*path, parent]}"
        path.append(parent)
    return path[::-1]


def assert_loop_free(sim: MeshSimulator) -> None:
    """Parent pointers: rank falls strictly at every step, so no walk can loop."""
    for node in range(1, sim.meters + 1):
        walk = [node]
        parent = sim.parent(node)
        while parent is not None:
            assert sim.rank(parent) < sim.rank(walk[-1]), f"rank does not fall along {walk}"
            assert parent not in walk, f"parent loop {[*walk, parent]}"
            walk.append(parent)
            parent = sim.parent(parent)


# ------------------------------------------------------------------ configuration


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("meters", 0),
        ("meters", 70_000),
        ("density_per_km2", 0.0),
        ("sigma_db", -1.0),
        ("rate_bps", 0),
        ("max_frame_retries", 8),
        ("report_interval_s", 0.0),
        ("report_bytes", 0),
        ("dio_interval_s", 0.0),
        ("queue_limit", 0),
        ("max_neighbours", 0),
        ("boot_s", -1.0),
        ("parent_switch_threshold", -0.5),
        ("channel_memory_s", 0.0),
        ("channels", 0),
        ("dwell_s", 0.0),
    ],
)
def test_bad_config_raises_value_error_naming_the_field(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=rf"MeshConfig\.{field} = "):
        MeshConfig(**{field: value})  # type: ignore[arg-type]


def test_bad_calls_raise_clear_errors(warm_sim: MeshSimulator) -> None:
    with pytest.raises(MeshError, match="root"):
        warm_sim.send_probe(0)
    with pytest.raises(UnknownNode, match="not in this mesh"):
        warm_sim.parent(201)
    with pytest.raises(UnknownNode, match="not an address of this mesh"):
        warm_sim.node_of("fe80::1")
    with pytest.raises(UnknownNode, match=r"this mesh has 0\.\.200"):
        warm_sim.node_of("fd00:db8:0:1:0:ff:fe00:ff")
    with pytest.raises(MeshError, match="forward"):
        warm_sim.run_until(warm_sim.now - 1.0)
    with pytest.raises(MeshError, match="attenuation"):
        warm_sim.set_attenuation_db(-3.0)


def test_addresses_round_trip(warm_sim: MeshSimulator) -> None:
    assert warm_sim.address(0) == "fd00:db8:0:1:0:ff:fe00:0"
    assert warm_sim.address(17) == "fd00:db8:0:1:0:ff:fe00:11"
    addresses = [warm_sim.address(n) for n in range(warm_sim.meters + 1)]
    assert len(set(addresses)) == len(addresses)
    assert [warm_sim.node_of(a) for a in addresses] == list(range(warm_sim.meters + 1))


# ------------------------------------------------------------------ determinism


def scripted_run(seed: int) -> tuple[list[ProbeResult], dict[str, int], list[int | None]]:
    sim = MeshSimulator(MeshConfig(seed=seed))
    sim.warm_up(60.0)
    nodes = list(range(1, 201, 7))
    results = probe(sim, nodes, spacing_s=0.05, rounds=3)
    sim.power_off(nodes[3])
    sim.interference(10.0, 6.0)
    results += probe(sim, nodes, spacing_s=0.05)
    return results, dict(sim.counters), [sim.parent(n) for n in range(1, 201)]


def test_same_seed_same_results_different_seed_differs() -> None:
    first, second, other = scripted_run(11), scripted_run(11), scripted_run(12)
    assert first == second
    assert first[0] != other[0]
    assert first[1] != other[1]


# ------------------------------------------------------------------ topology


def test_topology_hops_reachability_and_loop_free_routes(warm_sim: MeshSimulator) -> None:
    sim = warm_sim
    counts = [sim.hop_count(n) for n in range(1, sim.meters + 1)]
    hops = Counter(h for h in counts if h is not None)
    assert len(hops) and sum(hops.values()) == sim.meters, "every meter is reachable"
    assert min(hops) == 1
    assert max(hops) <= 7
    assert sum(hops[h] for h in (2, 3, 4)) >= 0.6 * sim.meters
    assert sim.routes_consistent()
    for node in range(1, sim.meters + 1):
        route = sim.route(node)
        assert route is not None
        assert route[0] == 0 and route[-1] == node
        assert len(set(route)) == len(route), f"loop in the root's route {route}"
        assert route == chain(sim, node), "root's view equals the parent pointers"
        for a, b in itertools.pairwise(route):
            assert b in {nb.node for nb in sim.neighbours(a)}


def test_links_are_symmetric_capped_and_typical(warm_sim: MeshSimulator) -> None:
    sim = warm_sim
    margins = []
    degrees = []
    for node in range(sim.meters + 1):
        table = sim.neighbours(node)
        degrees.append(len(table))
        for nb in table:
            back = {x.node: x for x in sim.neighbours(nb.node)}
            assert back[node].margin_db == nb.margin_db, "one shadowing draw per pair"
            assert nb.rssi_dbm == pytest.approx(nb.margin_db - 95.0)
            assert nb.margin_db >= sim.config.link_floor_db
            margins.append(nb.margin_db)
    assert min(degrees) >= 1
    # a link is kept when among the 20 strongest of either end: the median degree is near 20
    assert 15 <= statistics.median(degrees) <= 30
    assert abs(statistics.median(margins) - 10.0) <= 3.0


def test_margins_and_channel_follow_the_links_formulas() -> None:
    cfg = MeshConfig(meters=30, sigma_db=0.0, seed=4)
    sim = MeshSimulator(cfg)
    pos = sim.positions_m
    for node in (0, 5, 17):
        for nb in sim.neighbours(node):
            d = float(np.hypot(*(pos[node] - pos[nb.node])))
            loss = path_loss_db(max(d, 1e-9), cfg.pl0_db, cfg.path_loss_exponent, 0.0)
            assert nb.margin_db == pytest.approx(link_margin_db(cfg.tx_power_dbm, loss))
    margins = np.array([-40.0, -5.0, 0.0, 5.0, 10.0, 20.0, 40.0])
    p_gb, p_bg, p_bad = gilbert_from_margin(margins)
    for m, p, r, pb in zip(margins, p_gb, p_bg, p_bad, strict=True):
        link = link_from_margin(float(m), np.random.default_rng(0))
        assert p == pytest.approx(link.p_good_to_bad)
        assert r == pytest.approx(link.p_bad_to_good)
        assert pb == pytest.approx(link.stationary_bad)
        assert 1 - link.marginal_loss == pytest.approx(max(delivery_probability(float(m)), 0.001))


def test_construction_places_stranded_meters_again() -> None:
    # sparse: many meters start out of reach and must be placed again until all are reachable
    sim = MeshSimulator(MeshConfig(meters=150, density_per_km2=120.0, seed=2))
    assert all(sim.hop_count(n) is not None for n in range(1, 151))


# ------------------------------------------------------------------ calibration


@pytest.mark.parametrize("contention", [False, True])
def test_single_link_at_typical_margin_delivers_85_then_94_percent(contention: bool) -> None:
    """Calibration through the simulator's own MAC (CSMA-CA, ACKs, retries) at low load: a
    typical link delivers ~85 % of frames at the first attempt and ~94 % within three, with
    contention modelled or not (alone on the air, there is none)."""
    sim = MeshSimulator(
        MeshConfig(meters=1, seed=5, report_interval_s=math.inf, contention=contention)
    )
    (link,) = sim.neighbours(0)
    sim.set_attenuation_db(link.margin_db - 10.0)
    assert sim.neighbours(1)[0].margin_db == pytest.approx(10.0)
    before = dict(sim.counters)
    acked_before = list(sim.acked_at_attempt)
    # probes 2 s apart (longer than channel_memory_s): each frame starts on a fresh channel
    results = probe(sim, [1] * 1500, spacing_s=2.0)
    frames = sim.counters["frames_sent"] - before["frames_sent"]
    first = sim.counters["first_attempt_acks"] - before["first_attempt_acks"]
    acked = [now - then for now, then in zip(sim.acked_at_attempt, acked_before, strict=True)]
    assert frames >= 2 * 1400
    assert acked[1] == first
    lo, hi = wilson_interval(first, frames)
    assert lo <= TYPICAL_FIRST_ATTEMPT <= hi, (lo, hi)
    lo3, hi3 = wilson_interval(sum(acked[1:4]), frames)
    assert lo3 <= TYPICAL_WITHIN_THREE <= hi3, (lo3, hi3)
    assert hi < lo3, "retries help, but only as much as bursty loss allows"
    assert {r.hops for r in results} == {1}
    # alone on the air: no busy CCA, no collision
    assert sim.counters["cca_busy"] == sim.counters["collisions"] == 0


def test_attempt_timing_matches_airtime_constants() -> None:
    sim = MeshSimulator(MeshConfig(meters=1, seed=3, report_interval_s=math.inf))
    sim.set_attenuation_db(max(0.0, sim.neighbours(0)[0].margin_db - 30.0))
    results = probe(sim, [1] * 50, spacing_s=2.0)
    rtts = [r.rtt_s for r in results if r.rtt_s is not None]
    assert len(rtts) == 50  # 30 dB margin: every first attempt gets through
    assert ack_wait_s() == pytest.approx(1.16e-3 + 1e-3 + 19 * 8 * 20e-6)
    # down: SHR+PHR 12 + PSDU 80 (payload 32, overhead 40, source route 8); up: 12 + 72.
    # Each frame also has CCA (8 symbols), two turnarounds and an ACK, plus a backoff of
    # 0..7 unit periods.
    floor = (12 + 80 + 12 + 72) * 8 * 20e-6 + 2 * (8 * 20e-6 + 2e-3 + 19 * 8 * 20e-6)
    assert min(rtts) >= floor - 1e-9
    assert max(rtts) <= floor + 2 * 7 * 1.16e-3 + 1e-9


# ------------------------------------------------------------------ delivery and faults


def test_delivery_falls_with_hop_count() -> None:
    sim = fresh(seed=3)
    # 5 probes a second: every probe crosses the root's half-duplex radio twice, so much
    # faster probing measures the root's congestion rather than the links
    results = probe(sim, list(range(1, 201)), spacing_s=0.2, rounds=16)
    by_hops: dict[int, list[ProbeResult]] = {}
    for r in results:
        if r.hops is not None:
            by_hops.setdefault(min(r.hops, 4), []).append(r)
    assert sum(len(v) for v in by_hops.values()) >= 0.95 * len(results), "routes stay known"
    near, far = interval(by_hops[1]), interval(by_hops[4])
    assert far[1] < near[0], f"1 hop {near} vs 4+ hops {far}"
    assert all(r.rtt_s is not None and r.rtt_s > 0 for r in results if r.delivered)
    assert all(r.lost_at for r in results if not r.delivered)


def test_attenuation_hurts_one_hop_probes_and_recovers() -> None:
    sim = fresh(seed=2)
    one_hop = [n for n in range(1, 201) if sim.hop_count(n) == 1]
    assert len(one_hop) >= 5
    levels: dict[str, tuple[float, float]] = {}
    # at each level routing and DAOs settle first; after the attenuation is gone the ETX
    # estimates it inflated must age out (etx_freshness_s) before routes come back
    steps = (("0 dB", 0.0, 90.0), ("12 dB", 12.0, 90.0), ("20 dB", 20.0, 90.0))
    for label, db, settle_s in (*steps, ("back to 0", 0.0, 700.0)):
        sim.set_attenuation_db(db)
        sim.run_until(sim.now + settle_s)
        levels[label] = interval(
            probe(sim, one_hop, spacing_s=0.2, rounds=max(1, 600 // len(one_hop)))
        )
    assert levels["12 dB"][1] < levels["0 dB"][0], levels
    assert levels["20 dB"][1] < levels["12 dB"][0], levels
    assert levels["back to 0"][0] > levels["20 dB"][1], levels
    assert levels["back to 0"][1] >= levels["0 dB"][0], levels


def test_power_off_parent_then_children_recover_by_rerouting() -> None:
    sim = fresh(seed=8)
    children: dict[int, list[int]] = {}
    for node in range(1, 201):
        parent = sim.parent(node)
        if parent:
            children.setdefault(parent, []).append(node)
    dead, kids = max(children.items(), key=lambda item: (len(item[1]), -item[0]))
    child = kids[0]
    t0 = sim.now
    sim.power_off(dead)
    assert not sim.is_powered(dead)
    recovered_at = None
    lost_reasons = []
    while sim.now < t0 + 3 * RECOVERY_BOUND_S and recovered_at is None:
        for r in probe(sim, [child], spacing_s=1.0):
            if r.delivered:
                recovered_at = r.sent_at
            else:
                lost_reasons.append(r.lost_at)
    assert lost_reasons, "probes through the dead parent fail first"
    assert f"node {dead} powered off" in str(lost_reasons[0])
    assert recovered_at is not None
    recovery = recovered_at - t0
    assert 0 < recovery < RECOVERY_BOUND_S
    assert sim.parent(child) != dead
    assert dead not in (sim.route(child) or [])
    assert_loop_free(sim)

    # power it back on: deaf while booting, joins at a routing round, answers again
    t1 = sim.now
    sim.power_on(dead)
    assert sim.parent(dead) is None
    rejoined_at = None
    while sim.now < t1 + 3 * RECOVERY_BOUND_S and rejoined_at is None:
        for r in probe(sim, [dead], spacing_s=1.0):
            if r.delivered:
                rejoined_at = r.sent_at
    assert rejoined_at is not None
    assert sim.config.boot_s <= rejoined_at - t1 < RECOVERY_BOUND_S
    assert sim.parent(dead) is not None


def test_probe_to_a_powered_off_meter_is_lost() -> None:
    sim = MeshSimulator(MeshConfig(seed=1))
    sim.warm_up(30.0)
    two_hops = [n for n in range(1, 201) if sim.hop_count(n) == 2]

    def first_hop_margin(node: int) -> float:  # the strongest way in: losses happen at the end
        route = sim.route(node)
        assert route is not None
        return next(nb.margin_db for nb in sim.neighbours(0) if nb.node == route[1])

    target = max(two_hops, key=first_hop_margin)
    sim.power_off(target)
    results = probe(sim, [target] * 5, spacing_s=1.0)
    assert not any(r.delivered for r in results)
    assert all(f"node {target} powered off" in str(r.lost_at) for r in results)
    assert all(r.rtt_s is None and r.completed_at >= r.sent_at for r in results)


def test_interference_raises_loss_only_during_the_window() -> None:
    sim = fresh(seed=9)
    nodes = list(range(1, 201, 4))
    before = interval(probe(sim, nodes, spacing_s=0.1, rounds=5))
    start = sim.now
    sim.interference(60.0, 7.0)
    during = interval(probe(sim, nodes, spacing_s=0.1, rounds=5))
    assert sim.now - start < 60.0, "all of these probes ran inside the window"
    sim.run_until(sim.now + 120.0)  # window over, routing settles again
    after = interval(probe(sim, nodes, spacing_s=0.1, rounds=5))
    assert during[1] < before[0], (before, during)
    assert during[1] < after[0], (during, after)


def test_queue_overflows_when_probes_outpace_airtime() -> None:
    sim = fresh(seed=2)
    target = next(n for n in range(1, 201) if sim.hop_count(n) == 1)
    slow = probe(sim, [target] * 40, spacing_s=0.5)
    assert not any(r.lost_at == "queue full at 0" for r in slow)
    drops = sim.counters["queue_drops"]
    fast = probe(sim, [target] * 200, spacing_s=0.001)
    full = [r for r in fast if r.lost_at == "queue full at 0"]
    assert len(full) >= 100
    assert sim.counters["queue_drops"] - drops >= len(full)


def test_routing_stays_loop_free_under_churn() -> None:
    sim = fresh(seed=4)
    rng = np.random.default_rng(0)
    off: list[int] = []
    for step in range(40):
        if step % 3 == 0:
            node = int(rng.integers(1, 201))
            sim.power_off(node)
            off.append(node)
        if step % 5 == 0 and off:
            sim.power_on(off.pop(0))
        if step % 7 == 0:
            sim.interference(5.0, 6.0)
        sim.run_until(sim.now + float(rng.uniform(1.0, 15.0)))
        assert_loop_free(sim)
    for node in off:
        sim.power_on(node)
    sim.warm_up(120.0)
    assert sim.routes_consistent()
    # children of dead meters left them: detached and joined again (or switched at once)
    assert sim.counters["detaches"] + sim.counters["parent_switches"] > 0
    assert sim.counters["joins"] > 200  # every meter once, then the rejoins
    assert sim.counters["daos_received"] > 0


# ------------------------------------------------------------------ CSMA-CA and collisions


def quiet_mesh(seed: int = 6) -> MeshSimulator:
    """A formed 200-meter mesh with contention modelled and no background traffic."""
    sim = MeshSimulator(MeshConfig(seed=seed, report_interval_s=math.inf, contention=True))
    sim.warm_up(60.0)
    return sim


def root_children(sim: MeshSimulator) -> list[int]:
    """Meters whose parent is the root, strongest root link first."""
    margin = {nb.node: nb.margin_db for nb in sim.neighbours(0)}
    kids = [n for n in range(1, sim.meters + 1) if sim.parent(n) == 0]
    return sorted(kids, key=lambda n: -margin[n])


def send_together(sim: MeshSimulator, nodes: Sequence[int]) -> dict[str, int]:
    """Queue one reading at each node at the same instant; the counters that moved."""
    before = dict(sim.counters)
    for node in nodes:
        sim.send_report(node)
    sim.run_until(sim.now + 2.0)
    return {k: v - before[k] for k, v in sim.counters.items() if v != before[k]}


def test_hidden_nodes_collide_at_their_common_receiver_and_alone_they_do_not() -> None:
    sim = quiet_mesh()
    kids = root_children(sim)
    a, b = next((x, y) for x, y in itertools.combinations(kids, 2) if not sim.hears(x, y))
    assert sim.hears(a, 0) and sim.hears(b, 0) and not sim.hears(b, a)
    for node in (a, b):  # alone: straight through, first attempt or not, never a collision
        alone = send_together(sim, [node])
        assert alone.get("collisions", 0) == 0 and alone.get("cca_busy", 0) == 0, alone
        assert alone["reports_delivered"] == 1
    both = send_together(sim, [a, b])
    # both backoffs end within 8 unit periods (9.3 ms), frames last 17.9 ms: the first
    # attempts overlap at the root; neither sender can hear the other, so both CCAs pass
    assert both.get("cca_busy", 0) == 0, both
    assert both["collisions"] >= 2, both


def test_csma_defers_when_the_other_sender_is_audible() -> None:
    sim = quiet_mesh()
    kids = root_children(sim)
    pairs = [(x, y) for x, y in itertools.combinations(kids, 2) if sim.hears(x, y)]
    assert pairs
    busy = collisions = delivered = 0
    for round_ in range(20):
        a, b = pairs[round_ % len(pairs)]
        moved = send_together(sim, [a, b])
        busy += moved.get("cca_busy", 0)
        collisions += moved.get("collisions", 0)
        delivered += moved.get("reports_delivered", 0)
    # the later backoff finds the earlier frame on the air (busy CCA, BE + 1, back off);
    # only CCAs within one turnaround of each other still collide
    assert busy >= 10, (busy, collisions)
    assert collisions < busy
    assert delivered >= 30


def test_channel_hopping_keeps_unrelated_frames_apart() -> None:
    sim = MeshSimulator(MeshConfig(meters=20, seed=2, channels=129))
    seen = {sim.channel(node, t) for node in range(21) for t in np.arange(0.0, 30.0, 0.255)}
    assert len(seen) > 100 and max(seen) < 129 and min(seen) >= 0
    assert sim.channel(5, 1.05) == sim.channel(5, 1.1)  # one dwell (0.255 s): one channel
    one = MeshSimulator(MeshConfig(meters=20, seed=2, channels=1))
    assert {one.channel(node, 7.3) for node in range(21)} == {0}
    # the same mesh and traffic (a reading every 15 s, a heavy load) on one shared channel:
    # frames to different receivers collide
    collisions = {}
    for channels in (1, 129):
        mesh = MeshSimulator(
            MeshConfig(seed=4, channels=channels, report_interval_s=15.0, contention=True)
        )
        mesh.warm_up(60.0)
        collisions[channels] = mesh.counters["collisions"] / mesh.counters["attempts"]
    assert collisions[129] < collisions[1] / 3, collisions


# ------------------------------------------------------------------ link degradation


def test_degraded_parent_link_alone_makes_the_child_switch_parent() -> None:
    sim = fresh(seed=5)
    threshold = sim.config.parent_switch_threshold

    def has_alternative(node: int) -> bool:
        parent = sim.parent(node)
        return any(
            nb.node not in (parent, node) and sim.rank(nb.node) < sim.rank(node)
            for nb in sim.neighbours(node)
        )

    child = next(n for n in range(1, 201) if (sim.parent(n) or 0) > 0 and has_alternative(n))
    parent = sim.parent(child)
    assert parent is not None
    other = next(nb for nb in sim.neighbours(child) if nb.node != parent)
    before = {nb.node: nb.margin_db for nb in sim.neighbours(child)}
    sim.degrade_link(child, parent, 9.0)
    after = {nb.node: nb.margin_db for nb in sim.neighbours(child)}
    assert after[parent] == pytest.approx(before[parent] - 9.0)
    assert after[other.node] == before[other.node], "only that one link changes"
    assert sim.degraded_links() == [(min(child, parent), max(child, parent), 9.0)]
    start = sim.now
    for _ in range(60):  # readings one a second: the child's ETX to its parent learns
        sim.send_report(child)
        sim.run_until(sim.now + 1.0)
        if sim.parent(child) != parent:
            break
    sim.run_until(sim.now + 2 * sim.config.dio_interval_s)
    assert sim.parent(child) != parent
    assert all(sim.is_powered(n) for n in range(1, 201)), "no meter was powered off"
    switch = next(c for c in sim.parent_changes if c.node == child and c.t_s >= start)
    assert switch.old == parent and switch.reason in ("mrhof", "local_repair")
    for change in sim.parent_changes:  # MRHOF hysteresis: only a clearly better path wins
        if change.reason == "mrhof":
            assert change.old_cost > change.new_cost + threshold, change
    etx = {nb.node: nb.etx for nb in sim.neighbours(child)}
    assert etx[parent] > 2.0, "the child measured the degraded link"
    sim.degrade_link(child, parent, 0.0)
    assert sim.degraded_links() == []
    with pytest.raises(MeshError, match="not neighbours"):
        sim.degrade_link(child, child, 3.0)


def test_small_degradation_stays_within_the_hysteresis() -> None:
    sim = fresh(seed=5)
    children = [n for n in range(1, 201) if (sim.parent(n) or 0) > 0][:10]
    parents = {c: sim.parent(c) for c in children}
    start = sim.now
    for c in children:
        sim.degrade_link(c, parents[c] or 0, 0.5)
    sim.run_until(sim.now + 3 * sim.config.dio_interval_s)
    mrhof = [ch for ch in sim.parent_changes if ch.t_s >= start and ch.reason == "mrhof"]
    moved = [ch for ch in mrhof if ch.node in parents and ch.old == parents[ch.node]]
    assert len(moved) <= 1, moved


# ------------------------------------------------------------------ interference bursts


def test_interference_bursts_are_seeded_poisson_and_stop_on_request() -> None:
    sim = MeshSimulator(MeshConfig(meters=20, seed=1))
    t0 = sim.now
    bursts = sim.start_interference(0.1, 3.0, 8.0, 2000.0, seed=42)
    again = MeshSimulator(MeshConfig(meters=20, seed=1)).start_interference(
        0.1, 3.0, 8.0, 2000.0, seed=42
    )
    assert bursts == again
    assert all(t0 <= b.start_s < b.end_s <= t0 + 2000.0 for b in bursts)
    assert all(x.end_s < y.start_s for x, y in itertools.pairwise(bursts)), "merged, ordered"
    # about rate * window arrivals (fewer after merging); gaps between bursts ~ 1 / rate
    assert 120 <= len(bursts) <= 200
    on = sum(b.end_s - b.start_s for b in bursts) / 2000.0
    assert 0.15 <= on <= 0.35  # 1 - exp(-rate * mean) = 0.26 of the time inside a burst
    first = bursts[0]
    sim.run_until((first.start_s + first.end_s) / 2)
    assert sim.in_burst(sim.now) is True
    happened = sim.stop_interference()
    assert happened[-1].end_s == pytest.approx(sim.now) and len(happened) == 1
    assert sim.in_burst(sim.now + 1.0) is False
    with pytest.raises(MeshError, match="rate_per_s"):
        sim.start_interference(0.0, 1.0, 5.0, 10.0)
    with pytest.raises(MeshError, match="radius_m"):
        sim.start_interference(1.0, 1.0, 5.0, 10.0, center=3)


def test_loss_rises_inside_bursts_only_and_only_in_their_region() -> None:
    sim = fresh(seed=9)
    near = [n for n in range(1, 201) if sim.hop_count(n) in (1, 2)][:20]
    sim.start_interference(0.1, 4.0, 10.0, 400.0, seed=7)
    results = probe(sim, near, spacing_s=0.25, rounds=max(1, 1600 // len(near)))
    inside = [r for r in results if sim.in_burst(r.sent_at, r.completed_at) is True]
    outside = [r for r in results if sim.in_burst(r.sent_at, r.completed_at) is False]
    assert len(inside) >= 100 and len(outside) >= 300
    in_lo, in_hi = interval(inside)
    out_lo, out_hi = interval(outside)
    assert in_hi < out_lo, ((in_lo, in_hi), (out_lo, out_hi))
    # a region: only links with an end within the radius lose margin
    sim.stop_interference()
    far = max(range(1, 201), key=lambda n: float(np.hypot(*sim.positions_m[n])))
    at_root = {nb.node: nb.margin_db for nb in sim.neighbours(0)}
    at_far = {nb.node: nb.margin_db for nb in sim.neighbours(far)}
    sim.start_interference(1000.0, 1000.0, 10.0, 50.0, center=far, radius_m=50.0, seed=1)
    sim.run_until(sim.now + 1.0)
    assert sim.in_burst(sim.now) is True
    assert {nb.node: nb.margin_db for nb in sim.neighbours(0)} == at_root, "root is far away"
    for nb in sim.neighbours(far):
        assert nb.margin_db == pytest.approx(at_far[nb.node] - 10.0)


def test_without_contention_heavy_traffic_never_collides() -> None:
    """The default (calibrated links, contention off): the same heavy load as above gives
    no busy CCA and no collision, so losses are the calibrated links' alone."""
    mesh = MeshSimulator(MeshConfig(seed=4, channels=1, report_interval_s=15.0))
    mesh.warm_up(60.0)
    assert mesh.counters["attempts"] > 1000
    assert mesh.counters["collisions"] == mesh.counters["cca_busy"] == 0
