"""Liveness: how fast the fleet monitor tells an offline gateway from a dead one, and that it
never calls a partitioned, flapping or rebooting gateway dead.

Each test starts the heartbeat agent on its gateway (every HEARTBEAT_S over the backhaul to
a collector in the lab's cloud namespace) and a fleet monitor (offline after MISSED silent
intervals, dead after DEAD_AFTER_S, second signals: the supply channel's current and the
management link), then injects one fault on a timeline that goes into the run's records.
Every change of verdict is recorded as a ``liveness_verdict`` event with its evidence; the
heartbeat log is kept in the run directory (``liveness/heartbeats.jsonl``). Times are from
the moment the fault was in place (the timeline's apply event) to the verdict.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from bench.faults import FaultEvent, FaultTimeline, Flapping, Partition, PowerCut
from bench.fleet.collector import Collector, CollectorError, lab_collector
from bench.fleet.liveness import (
    CollectorClient,
    FleetMonitor,
    HeartbeatAgent,
    Liveness,
    LivenessPolicy,
    Verdict,
    probes_for,
)
from bench.gateway import ConnectedGateway
from bench.instruments.meter import ArraySupplyMeter, SupplyChannelMeter
from bench.instruments.psu import PowerSupply
from bench.plugin import Recorder
from bench.session import BenchSession

pytestmark = pytest.mark.needs("psu", "backhaul")

HEARTBEAT_S = 0.5
MISSED = 3
DEAD_AFTER_S = 6.0  # beyond the virtual boards' boot (2-3 s) with margin for a loaded host
POLICY = LivenessPolicy(interval_s=HEARTBEAT_S, missed=MISSED, dead_after_s=DEAD_AFTER_S)
SLACK_S = 2.0  # poll period + signal age + scheduling, beyond a deadline
BOOT_DEADLINE_S = 60.0
REBOOT_OFF_S = 1.0
# seed 27: down 2.1 s, up 1.2 s, down 6.3 s (> DEAD_AFTER_S), up ... within FLAP_S
FLAP_UP_S, FLAP_DOWN_S, FLAP_SEED = 1.0, 2.0, 27
FLAP_S = 10.0
Power = tuple[PowerSupply, int, SupplyChannelMeter | ArraySupplyMeter]


@pytest.fixture(scope="module")
def collector(rig: BenchSession) -> Iterator[Collector]:
    """The heartbeat collector in the lab's cloud namespace, logging into the run."""
    try:
        found = lab_collector(rig.spec, rig.own_path("liveness/heartbeats.jsonl"))
    except CollectorError as exc:
        pytest.skip(str(exc))
    with found:
        yield found


@dataclass
class Watch:
    """One gateway under watch: its agent, the monitor, and its supply channel."""

    gateway: ConnectedGateway
    agent: HeartbeatAgent
    monitor: FleetMonitor
    psu: PowerSupply
    channel: int

    @property
    def name(self) -> str:
        return self.gateway.name

    def verdicts(self, since: float, state: Liveness | None = None) -> list[Verdict]:
        found = self.monitor.history(self.name, since=since)
        return [v for v in found if state is None or v.state == state]

    def states(self, since: float) -> str:
        """The verdicts since ``since`` as text, for failure messages."""
        return ", ".join(f"{v.state}@{v.at - since:+.2f}s ({v.rule})" for v in self.verdicts(since))

    def restart_agent(self) -> None:
        """After a power cut: reconnect once the board booted and start the agent again."""
        self.gateway.connect(deadline_s=BOOT_DEADLINE_S)
        self.agent.start()


@pytest.fixture
def watch(
    gateway: ConnectedGateway, gateway_power: Power, rig: BenchSession, collector: Collector
) -> Iterator[Watch]:
    psu, channel, _ = gateway_power
    name = gateway.name

    def record(verdict: Verdict) -> None:
        rig.store.record_event(
            gateway=verdict.gateway, kind="liveness_verdict", message=json.dumps(verdict.to_dict())
        )

    monitor = FleetMonitor(
        CollectorClient(collector.out, from_end=True),
        {name: probes_for(rig.spec, name, psu)},
        POLICY,
        on_verdict=record,
    )
    agent = HeartbeatAgent(gateway, collector.address, HEARTBEAT_S, ttl_s=600)
    with monitor:
        agent.start()
        try:
            online = monitor.wait_for(name, Liveness.ONLINE, timeout=10 * HEARTBEAT_S + SLACK_S)
            assert online is not None, f"{name}: no heartbeat reached the collector"
            yield Watch(gateway, agent, monitor, psu, channel)
        finally:
            if not psu.output_state(channel):  # a test that failed mid-cut
                psu.output(channel, True)
            gateway.connect(deadline_s=BOOT_DEADLINE_S)
            agent.stop()


def _sink(rig: BenchSession, name: str) -> FaultTimeline:
    return FaultTimeline(sink=lambda event: rig.record_fault(name, event))


def _event_at(timeline: FaultTimeline, action: str, timeout: float) -> float:
    """time.monotonic() of the timeline's first ``action`` event (apply: the fault is in
    place; remove: it is gone)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events: list[FaultEvent] = timeline.events
        for event in events:
            if event.action == action:
                return timeline.t0 + event.t_s
            if event.action == f"{action}_failed":
                pytest.fail(f"fault {action} failed: {event.message}")
        time.sleep(0.01)
    pytest.fail(f"no fault {action} event within {timeout} s: {timeline.events}")


def test_partition_is_offline_never_dead(
    watch: Watch, rig: BenchSession, results: Recorder
) -> None:
    """Backhaul cut both ways: offline within the offline deadline, still offline (the board
    answers on its management link) well past the dead deadline, online once healed."""
    name, monitor = watch.name, watch.monitor
    held_until = POLICY.dead_deadline_s + POLICY.offline_after_s + 2 * HEARTBEAT_S
    with _sink(rig, name) as timeline:
        timeline.schedule(Partition(rig.backhaul(name), protect=rig.fault_protection()), 0.0)
        cut_at = _event_at(timeline, "apply", timeout=30)
        offline = monitor.wait_for(
            name, Liveness.OFFLINE, timeout=POLICY.offline_after_s + SLACK_S, since=cut_at
        )
        time.sleep(max(0.0, cut_at + held_until - time.monotonic()))
        silent_s = monitor.tracker(name).silence(time.monotonic())
    healed_at = _event_at(timeline, "remove", timeout=1)
    online = monitor.wait_for(name, Liveness.ONLINE, timeout=10 * HEARTBEAT_S, since=healed_at)
    false_dead = watch.verdicts(cut_at, Liveness.DEAD)
    params = {"scenario": "partition", "heartbeat_s": HEARTBEAT_S, "missed": MISSED,
              "dead_after_s": DEAD_AFTER_S}  # fmt: skip
    results.record("liveness.false_dead", len(false_dead), "count", **params)
    results.record("liveness.partition_silence", silent_s, "s", **params)
    assert offline is not None, f"{name}: never offline under a partition: {watch.states(cut_at)}"
    results.record("liveness.time_to_offline", offline.at - cut_at, "s", **params)
    assert offline.evidence.get("reachable") is True, offline
    assert not false_dead, f"{name}: partitioned gateway declared dead: {false_dead[0]}"
    assert silent_s >= POLICY.dead_deadline_s, "the partition did not outlast the dead deadline"
    assert online is not None, f"{name}: not online after the partition healed"
    results.record("liveness.time_to_online", online.at - healed_at, "s", **params)


def test_power_cut_is_dead(watch: Watch, rig: BenchSession, results: Recorder) -> None:
    """Supply channel off: offline first, dead at the dead deadline (no current draw); online
    again once power is back, the board booted and the bench restarted its agent."""
    name, monitor = watch.name, watch.monitor
    with _sink(rig, name) as timeline:
        timeline.schedule(PowerCut(watch.psu, watch.channel), 0.0)
        cut_at = _event_at(timeline, "apply", timeout=30)
        watch.gateway.close()  # a board without power never closes its connection itself
        dead = monitor.wait_for(
            name, Liveness.DEAD, timeout=POLICY.dead_deadline_s + SLACK_S, since=cut_at
        )
    restored_at = _event_at(timeline, "remove", timeout=1)
    watch.restart_agent()
    online = monitor.wait_for(name, Liveness.ONLINE, timeout=10 * HEARTBEAT_S, since=restored_at)
    offline = watch.verdicts(cut_at, Liveness.OFFLINE)
    params = {"scenario": "power_cut", "heartbeat_s": HEARTBEAT_S, "missed": MISSED,
              "dead_after_s": DEAD_AFTER_S}  # fmt: skip
    assert offline, f"{name}: never offline after a power cut: {watch.states(cut_at)}"
    results.record("liveness.time_to_offline", offline[0].at - cut_at, "s", **params)
    assert dead is not None, f"{name}: never dead while unpowered: {watch.states(cut_at)}"
    results.record("liveness.time_to_dead", dead.at - cut_at, "s", **params)
    assert offline[0].at < dead.at
    assert dead.evidence.get("powered") is False, dead
    # dead counts from the last heartbeat, which came at most one interval before the cut
    assert dead.at - cut_at >= POLICY.dead_deadline_s - HEARTBEAT_S - 0.1
    assert online is not None, f"{name}: not online after power came back"
    results.record("liveness.time_to_online", online.at - restored_at, "s", **params)


def test_planned_reboot_is_never_dead(watch: Watch, rig: BenchSession, results: Recorder) -> None:
    """Power off for REBOOT_OFF_S, on, board boots, agent restarted: offline, never dead."""
    name, monitor = watch.name, watch.monitor
    with _sink(rig, name) as timeline:
        timeline.schedule(PowerCut(watch.psu, watch.channel), 0.0, for_s=REBOOT_OFF_S)
        cut_at = _event_at(timeline, "apply", timeout=30)
        watch.gateway.close()
        assert timeline.wait(REBOOT_OFF_S + 30), "the power cut did not end"
    restored_at = _event_at(timeline, "remove", timeout=1)
    watch.restart_agent()
    online = monitor.wait_for(name, Liveness.ONLINE, timeout=10 * HEARTBEAT_S, since=restored_at)
    false_dead = watch.verdicts(cut_at, Liveness.DEAD)
    offline = watch.verdicts(cut_at, Liveness.OFFLINE)
    params = {"scenario": "planned_reboot", "off_s": REBOOT_OFF_S, "heartbeat_s": HEARTBEAT_S,
              "missed": MISSED, "dead_after_s": DEAD_AFTER_S}  # fmt: skip
    results.record("liveness.false_dead", len(false_dead), "count", **params)
    assert online is not None, f"{name}: not online after the reboot: {watch.states(cut_at)}"
    results.record("liveness.time_to_online", online.at - restored_at, "s", **params)
    if offline:
        results.record("liveness.offline_duration", online.at - offline[0].at, "s", **params)
    assert not false_dead, f"{name}: declared dead during a planned reboot: {false_dead[0]}"
    assert offline, f"{name}: the reboot went unnoticed: {watch.states(cut_at)}"


def test_link_flaps_are_never_dead(watch: Watch, rig: BenchSession, results: Recorder) -> None:
    """Backhaul flapping for FLAP_S (one down period outlasts the dead deadline): offline
    while down, never dead, online at the end."""
    name, monitor = watch.name, watch.monitor
    flapping = Flapping(
        rig.backhaul(name), FLAP_UP_S, FLAP_DOWN_S, FLAP_SEED, protect=rig.fault_protection()
    )
    with _sink(rig, name) as timeline:
        timeline.schedule(flapping, 0.0, for_s=FLAP_S)
        start = _event_at(timeline, "apply", timeout=30)
        assert timeline.wait(FLAP_S + 30), "the flapping did not end"
    online = monitor.wait_for(name, Liveness.ONLINE, timeout=10 * HEARTBEAT_S + SLACK_S)
    false_dead = watch.verdicts(start, Liveness.DEAD)
    offline = watch.verdicts(start, Liveness.OFFLINE)
    longest_gap = monitor.tracker(name).longest_gap_s
    params = {"scenario": "flapping", "mean_up_s": FLAP_UP_S, "mean_down_s": FLAP_DOWN_S,
              "seed": FLAP_SEED, "flap_s": FLAP_S, "heartbeat_s": HEARTBEAT_S, "missed": MISSED,
              "dead_after_s": DEAD_AFTER_S}  # fmt: skip
    results.record("liveness.false_dead", len(false_dead), "count", **params)
    results.record("liveness.offline_verdicts", len(offline), "count", **params)
    results.record("liveness.link_transitions", len(flapping.transitions), "count", **params)
    # a heartbeat-only classifier would have called the gateway dead if this passed the deadline
    results.record("liveness.longest_silence", longest_gap, "s", **params)
    assert not false_dead, f"{name}: declared dead while its link flapped: {false_dead[0]}"
    assert offline, f"{name}: the flaps went unnoticed: {watch.states(start)}"
    assert online is not None, f"{name}: not online after the flapping ended"
