"""Fleet liveness: the state machine on synthetic heartbeat times, then the whole chain
(agent on a board, collector in the cloud namespace, supply current, management link) on a
scratch virtual lab of its own ("tlive": never the shipped lab, supply on port 5045), and
the liveness suite run against that lab in a subprocess.
"""

from __future__ import annotations

import ast
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.faults import LinkTarget, Partition, Protection
from bench.fleet.collector import Collector, lab_collector
from bench.fleet.liveness import (
    AGENT_SOURCE,
    CollectorClient,
    FleetMonitor,
    GatewayProbes,
    GatewayTracker,
    Heartbeat,
    HeartbeatAgent,
    Liveness,
    LivenessError,
    LivenessPolicy,
    Signals,
    classify,
    probes_for,
)
from bench.gateway import ConnectedGateway
from bench.instruments.psu import open_psu
from bench.lab.virtual import VirtualLab
from bench.results.store import read_jsonl
from bench.rig import Rig, load_rig
from tests.test_lab import STATE_ROOT, leftovers

REPO = Path(__file__).resolve().parent.parent
ONLINE, OFFLINE, DEAD = Liveness.ONLINE, Liveness.OFFLINE, Liveness.DEAD
H = 0.5
POLICY = LivenessPolicy(interval_s=H, missed=3, dead_after_s=4.0)  # offline after 1.5 s

RIG = f"""\
name: tlive
virtual:
  lab_id: tlive
  state_dir: {STATE_ROOT / "tlive"}
  management_subnet: 10.213.42.0/24
  backhaul_subnet: 10.214.42.0/24
  board_python: /opt/fieldrig/board-python/bin/python3
ssh_defaults:
  auth: {{identity_file: "{{state_dir}}/id_ed25519"}}
  host_key: {{known_hosts: "{{state_dir}}/known_hosts"}}
gateways:
  - name: g0
    board: rpi4
    power: {{instrument: psu1, channel: 1}}
    backhaul: {{netns: {{namespace: fr-tlive-g0, interface: wan0}}}}
  - name: g1
    board: jetson-orin-nano
    power: {{instrument: psu1, channel: 2}}
    backhaul: {{netns: {{namespace: fr-tlive-g1, interface: wan0}}}}
instruments:
  psu1:
    driver: keysight-e36300
    resource: TCPIP::127.0.0.1::5045::SOCKET
    channels:
      1: {{max_voltage: 5.5, max_current: 3.5, voltage: 5.1, current_limit: 3.0, safe_state: on}}
      2: {{max_voltage: 20.0, max_current: 2.0, voltage: 19.0, current_limit: 1.5, safe_state: on}}
      3: {{max_voltage: 5.3, max_current: 2.0, voltage: 5.0, current_limit: 2.0, safe_state: on}}
"""


# --- the state machine, on synthetic times ------------------------------------------------


def beat(gateway: str, seq: int, at: float, agent: str = "a1") -> Heartbeat:
    return Heartbeat(gateway, seq, agent, "boot", 100.0 + at, H, 0, at, 1e9 + at, "10.0.0.2:1")


def signals(at: float, powered: bool | None, reachable: bool | None) -> Signals:
    current = None if powered is None else (0.5 if powered else 0.0)
    return Signals(at, powered, current, 0.16, reachable)


def tracker_with_beats(until: float) -> GatewayTracker:
    """Heartbeats every H from 0 to ``until`` inclusive."""
    tracker = GatewayTracker("gw", POLICY, started_at=0.0)
    for seq in range(int(until / H) + 1):
        tracker.heartbeat(beat("gw", seq, seq * H))
        tracker.evaluate(seq * H + 0.01)
    return tracker


def states(tracker: GatewayTracker) -> list[tuple[Liveness, float]]:
    return [(v.state, round(v.at, 2)) for v in tracker.history]


def test_partition_is_offline_after_k_intervals_and_never_dead() -> None:
    t = tracker_with_beats(2.0)  # last heartbeat at 2.0: offline from 3.5
    assert not t.late(3.4) and t.late(3.5)
    assert t.evaluate(3.4, None) is None  # still online: no change
    for now in (3.5, 6.0, 30.0, 300.0):  # far beyond the dead deadline
        t.evaluate(now, signals(now, powered=True, reachable=True))
    assert states(t) == [(ONLINE, 0.01), (OFFLINE, 3.5)]
    assert "partitioned" in t.history[-1].rule
    evidence = t.history[-1].evidence
    assert evidence["reachable"] is True and evidence["last_seq"] == 4
    assert evidence["heartbeat_age_s"] == 1.5
    t.heartbeat(beat("gw", 5, 300.1))
    t.evaluate(300.2)
    assert t.current is not None and t.current.state == ONLINE
    assert t.lost == 0 and t.longest_gap_s == pytest.approx(298.1)


def test_power_off_is_dead_at_the_dead_deadline_not_before() -> None:
    t = tracker_with_beats(2.0)
    for now in (3.5, 5.9):
        t.evaluate(now, signals(now, powered=False, reachable=False))
    assert t.current is not None and t.current.state == OFFLINE  # no current, not yet dead
    t.evaluate(6.0, signals(6.0, powered=False, reachable=False))  # silent for 4.0 s
    assert states(t) == [(ONLINE, 0.01), (OFFLINE, 3.5), (DEAD, 6.0)]
    assert t.history[-1].evidence["powered"] is False
    assert t.history[-1].evidence["current_a"] == 0.0


def test_planned_reboot_restarts_the_dead_clock_when_current_returns() -> None:
    t = tracker_with_beats(2.0)
    t.evaluate(3.5, signals(3.5, powered=False, reachable=False))  # power cut at ~2.2
    t.evaluate(4.5, signals(4.5, powered=True, reachable=False))  # power back, booting
    assert t.current is not None and t.current.rule.startswith("rebooting")
    t.evaluate(8.4, signals(8.4, powered=True, reachable=False))  # silent 6.4 s > 4 s
    assert t.current.state == OFFLINE  # but only 3.9 s since the current came back
    t.evaluate(8.6, signals(8.6, powered=True, reachable=True))  # sshd up: offline for good
    t.evaluate(60.0, signals(60.0, powered=True, reachable=True))
    assert [s for s, _ in states(t)] == [ONLINE, OFFLINE]
    t.heartbeat(beat("gw", 0, 61.0, agent="a2"))  # the bench restarted the agent
    t.evaluate(61.1)
    assert [s for s, _ in states(t)] == [ONLINE, OFFLINE, ONLINE]
    assert t.agent_starts == 2 and t.lost == 0


def test_a_board_that_never_boots_is_dead_a_deadline_after_power_returned() -> None:
    t = tracker_with_beats(2.0)
    t.evaluate(3.5, signals(3.5, powered=False, reachable=False))
    t.evaluate(4.5, signals(4.5, powered=True, reachable=False))
    t.evaluate(8.5, signals(8.5, powered=True, reachable=False))
    assert states(t)[-1] == (DEAD, 8.5)
    assert t.history[-1].rule.startswith("powered, silent and unreachable")


def test_without_second_signals_it_is_a_two_deadline_classifier() -> None:
    t = tracker_with_beats(2.0)
    for now in (3.49, 3.5, 5.99, 6.0):
        t.evaluate(now, None)
    assert states(t) == [(ONLINE, 0.01), (OFFLINE, 3.5), (DEAD, 6.0)]


def test_sequence_gaps_and_restarts_are_counted() -> None:
    t = GatewayTracker("gw", POLICY, started_at=0.0)
    for seq, at, agent in ((0, 0.0, "a"), (1, 0.5, "a"), (4, 2.0, "a"), (0, 9.0, "b")):
        t.heartbeat(beat("gw", seq, at, agent))
    assert (t.heartbeats, t.lost, t.agent_starts) == (4, 2, 2)
    assert t.longest_gap_s == pytest.approx(7.0)


@pytest.mark.parametrize(
    ("heard", "silent", "clock", "powered", "reachable", "expected"),
    [
        (True, 1.4, 1.4, None, None, ONLINE),
        (False, 0.1, 0.1, None, None, OFFLINE),  # never heard from: not online
        (True, 99.0, 99.0, False, True, OFFLINE),  # management answers: never dead
        (True, 3.9, 3.9, False, False, OFFLINE),
        (True, 4.0, 1.0, False, False, DEAD),  # unpowered: the silence decides
        (True, 9.0, 3.9, True, False, OFFLINE),  # powered, booting: the dead clock decides
        (True, 9.0, 4.0, True, None, DEAD),
        (True, 4.0, 4.0, None, None, DEAD),
    ],
)
def test_classify_rules(
    heard: bool,
    silent: float,
    clock: float,
    powered: bool | None,
    reachable: bool | None,
    expected: Liveness,
) -> None:
    sig = signals(0.0, powered, reachable)
    state, rule = classify(POLICY, heard=heard, silent_s=silent, dead_clock_s=clock, signals=sig)
    assert state == expected, rule


def test_policy_rejects_a_dead_deadline_inside_the_offline_one() -> None:
    with pytest.raises(LivenessError, match=r"dead_after_s 1\.0 must exceed the offline deadline"):
        LivenessPolicy(interval_s=0.5, missed=3, dead_after_s=1.0)
    with pytest.raises(LivenessError, match="missed 0"):
        LivenessPolicy(interval_s=0.5, missed=0)
    assert LivenessPolicy(interval_s=2.0).dead_deadline_s == 20.0


def test_collector_client_reads_whole_lines_only(tmp_path: Path) -> None:
    log = tmp_path / "hb.jsonl"
    line = json.dumps({"gateway": "gw", "seq": 3, "agent_id": "a", "recv_mono": 5.0,
                       "recv_wall": 1.0, "from": "x"})  # fmt: skip
    log.write_text('{"event": "listening", "port": 1}\n' + line[:20])
    client = CollectorClient(log)
    assert client.read() == []
    with open(log, "a") as fh:
        fh.write(line[20:] + "\nnot json\n" + json.dumps({"gateway": "gw"}) + "\n")
    (hb,) = client.read()
    assert (hb.gateway, hb.seq, hb.recv_mono) == ("gw", 3, 5.0)
    assert client.invalid == 2
    assert CollectorClient(log, from_end=True).read() == []


def test_monitor_polls_the_log_and_reports_changes(tmp_path: Path) -> None:
    """The monitor on a synthetic clock, fed through a real collector log file."""
    log = tmp_path / "hb.jsonl"
    log.touch()
    now = [0.0]
    seen: list[tuple[str, Liveness]] = []
    monitor = FleetMonitor(
        CollectorClient(log),
        {"gw": GatewayProbes()},  # no second signal: heartbeats alone
        POLICY,
        on_verdict=lambda v: seen.append((v.gateway, v.state)),
        clock=lambda: now[0],
    )

    def append(seq: int, at: float, gateway: str = "gw") -> None:
        record = {"gateway": gateway, "seq": seq, "agent_id": "a", "recv_mono": at,
                  "recv_wall": at, "from": "x"}  # fmt: skip
        with open(log, "a") as fh:
            fh.write(json.dumps(record) + "\n")

    append(0, 0.0)
    append(0, 0.0, gateway="stranger")
    assert monitor.poll()["gw"].state == ONLINE
    now[0] = 1.6
    assert monitor.poll()["gw"].state == OFFLINE
    now[0] = 4.0
    assert monitor.poll()["gw"].state == DEAD
    append(0, 4.1)
    now[0] = 4.2
    monitor.poll()
    assert seen == [("gw", ONLINE), ("gw", OFFLINE), ("gw", DEAD), ("gw", ONLINE)]
    assert monitor.unknown_gateways == {"stranger"}
    found = monitor.wait_for("gw", DEAD, timeout=0.1, since=0.0)
    assert found is not None and found.at == 4.0
    assert monitor.wait_for("gw", DEAD, timeout=0.1, since=4.1) is None
    with pytest.raises(LivenessError, match="not watching gateway 'nope'"):
        monitor.current("nope")


def test_agent_is_python38_stdlib_only() -> None:
    """The agent runs on the boards' own python3 (3.8+), with nothing but the stdlib."""
    tree = ast.parse(AGENT_SOURCE.read_text(), feature_version=(3, 8))
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
         and node.module}  # fmt: skip
    assert imported - {"__future__"} <= sys.stdlib_module_names


def gone(pid: int) -> bool:
    """The process ended (a zombie left for an init that does not reap counts as ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_agent_keeps_its_schedule_stops_at_its_ttl_and_on_request(tmp_path: Path) -> None:
    """The board script run on this host against a local collector."""
    pidfile = str(tmp_path / "hb.pid")
    with Collector(tmp_path / "hb.jsonl", bind="127.0.0.1") as collector:
        base = [sys.executable, str(AGENT_SOURCE), "--pidfile", pidfile]
        args = ["--gateway", "gw", "--collector", "127.0.0.1", "--port", str(collector.port),
                "--interval", "0.1"]  # fmt: skip
        # in the foreground with a ttl: about ttl / interval heartbeats, then it exits
        subprocess.run([*base, *args, "--ttl", "0.55"], check=True, timeout=10)
        beats = CollectorClient(collector.out).read()
        assert [b.seq for b in beats] == [0, 1, 2, 3, 4, 5]
        gaps = [b.recv_mono - a.recv_mono for a, b in itertools.pairwise(beats)]
        assert all(0.05 < gap < 0.2 for gap in gaps), gaps
        # as a daemon: --status sees it, --stop ends it, a second --stop is harmless
        started = subprocess.run([*base, *args, "--detach"], capture_output=True, text=True)
        pid = int(started.stdout)
        assert subprocess.run([*base, "--status"]).returncode == 0
        stopped = subprocess.run([*base, "--stop"], capture_output=True, text=True)
        assert stopped.stdout.strip() == "stopped" and gone(pid)
        assert subprocess.run([*base, "--status"]).returncode == 1
        again = subprocess.run([*base, "--stop"], capture_output=True, text=True)
        assert again.stdout.strip() == "not running"


def test_collector_exits_when_the_bench_that_started_it_is_killed(tmp_path: Path) -> None:
    out = tmp_path / "hb.jsonl"
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from bench.fleet.collector import Collector\n"
        f"c = Collector(Path({str(out)!r}), bind='127.0.0.1').start()\n"
        "print(c._proc.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    bench = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert bench.stdout is not None
        collector_pid = int(bench.stdout.readline())
        assert Path(f"/proc/{collector_pid}").exists()
    finally:
        bench.kill()
        bench.wait()
    deadline = time.monotonic() + 5
    while not gone(collector_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(collector_pid)


# --- end to end on a scratch lab -----------------------------------------------------------


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Rig, VirtualLab]]:
    """The "tlive" lab, up for this module, then down and purged."""
    path = tmp_path_factory.mktemp("tlive") / "tlive.yaml"
    path.write_text(RIG)
    rig = load_rig(path)
    lab = VirtualLab(rig)
    try:
        lab.up()
        yield rig, lab
    finally:
        lab.down(purge=True)
    assert leftovers(lab) == []


def test_collector_runs_in_the_cloud_namespace(
    scratch: tuple[Rig, VirtualLab], tmp_path: Path
) -> None:
    rig, _ = scratch
    collector = lab_collector(rig, tmp_path / "hb.jsonl")
    assert collector.namespace == "fr-tlive-cloud" and collector.bind == "10.214.42.1"
    with collector:
        assert collector.running and collector.port > 0
        gw = ConnectedGateway(rig.gateway("g0"))
        try:
            send = (
                "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                f"s.sendto(b'hello', ('10.214.42.1', {collector.port}))"
            )
            gw.run(["python3", "-c", send])
        finally:
            gw.close()
        deadline = time.monotonic() + 5
        lines: list[dict[str, object]] = []
        while time.monotonic() < deadline and len(lines) < 2:
            lines = read_jsonl(collector.out)
            time.sleep(0.05)
    assert not collector.running
    assert lines[1]["invalid"] == "hello" and str(lines[1]["from"]).startswith("10.214.42.11:")


def test_partition_offline_power_off_dead_restore_online(
    scratch: tuple[Rig, VirtualLab], tmp_path: Path
) -> None:
    rig, _ = scratch
    psu = open_psu("psu1", rig.instruments["psu1"])
    gateways = {name: ConnectedGateway(rig.gateway(name)) for name in ("g0", "g1")}
    try:
        with lab_collector(rig, tmp_path / "hb.jsonl") as collector:
            probes = {name: probes_for(rig, name, psu) for name in gateways}
            monitor = FleetMonitor(CollectorClient(collector.out), probes, POLICY)
            agents = {
                name: HeartbeatAgent(gw, collector.address, H, ttl_s=120)
                for name, gw in gateways.items()
            }
            with monitor:
                for agent in agents.values():
                    agent.start()
                for name in gateways:
                    assert monitor.wait_for(name, ONLINE, timeout=10) is not None, name
                assert agents["g0"].running()

                # partition g0's backhaul: offline (not dead) past the dead deadline
                target = LinkTarget("fr-tlive-g0", "wan0")
                with Partition(target, protect=Protection.for_rig(rig)):
                    cut = time.monotonic()
                    offline = monitor.wait_for("g0", OFFLINE, timeout=10, since=cut)
                    assert offline is not None
                    assert offline.at - cut <= POLICY.offline_after_s + 1.0
                    assert offline.evidence["reachable"] is True
                    assert offline.evidence["powered"] is True
                    time.sleep(max(0.0, cut + POLICY.dead_deadline_s + 1.0 - time.monotonic()))
                    assert [v.state for v in monitor.history("g0", since=cut)] == [OFFLINE]
                    current = monitor.current("g1")
                    assert current is not None and current.state == ONLINE  # g1 unaffected
                assert monitor.wait_for("g0", ONLINE, timeout=10, since=cut) is not None

                # power g1 off: offline, then dead at the deadline, on no current draw
                cut = time.monotonic()
                psu.output(2, False)
                gateways["g1"].close()
                dead = monitor.wait_for("g1", DEAD, timeout=10, since=cut)
                assert dead is not None, monitor.history("g1", since=cut)
                assert [v.state for v in monitor.history("g1", since=cut)] == [OFFLINE, DEAD]
                assert dead.evidence["powered"] is False and dead.evidence["reachable"] is False
                assert dead.evidence["current_a"] < dead.evidence["threshold_a"]
                assert POLICY.dead_deadline_s - H - 0.1 <= dead.at - cut
                old_agent = dead.evidence["agent_id"]

                # restore: rebooting (offline), then online once the bench restarts the agent
                on = time.monotonic()
                psu.output(2, True)
                gateways["g1"].connect(deadline_s=30)
                assert not agents["g1"].running()  # the power cut killed it
                agents["g1"].start()
                online = monitor.wait_for("g1", ONLINE, timeout=10, since=on)
                assert online is not None
                back = monitor.history("g1", since=on)
                assert [v.state for v in back] == [OFFLINE, ONLINE]
                assert back[0].rule.startswith("rebooting")
                assert online.evidence["agent_id"] != old_agent
                assert monitor.tracker("g1").agent_starts == 2
            for agent in agents.values():
                agent.stop()
                assert not agent.running()
    finally:
        psu.output(2, True)
        psu.close()
        for gw in gateways.values():
            gw.close()


def test_liveness_suite_against_the_scratch_rig(
    scratch: tuple[Rig, VirtualLab], tmp_path: Path
) -> None:
    """suites/test_liveness.py, run by pytest in a subprocess with --rig=<scratch rig>."""
    rig, lab = scratch
    runs = tmp_path / "runs"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "suites/test_liveness.py", f"--rig={rig.source_path}",
         "--gateway=g1", f"--runs-dir={runs}", "-p", "no:cacheprovider", "-q"],
        cwd=REPO, capture_output=True, text=True, timeout=170, check=False,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    (run_dir,) = runs.iterdir()
    outcomes = read_jsonl(run_dir / "outcomes.jsonl")
    # one gateway (g1, the second: its supply channel is not the first); CI time is
    # bounded, and the suite treats every gateway alike
    assert len(outcomes) == 4 and {o["outcome"] for o in outcomes} == {"passed"}
    records = read_jsonl(run_dir / "measurements.jsonl")
    measured = {
        (r["gateway"], r["metric"], r["parameters"]["scenario"]): float(r["value"]) for r in records
    }
    params = records[0]["parameters"]
    offline_s = params["heartbeat_s"] * params["missed"]
    dead_s, slack = params["dead_after_s"], 2.0
    for gw in ("g1",):
        for scenario in ("partition", "planned_reboot", "flapping"):
            assert measured[gw, "liveness.false_dead", scenario] == 0
        assert 0 < measured[gw, "liveness.time_to_offline", "partition"] <= offline_s + slack
        assert 0 < measured[gw, "liveness.time_to_offline", "power_cut"] <= offline_s + slack
        time_to_dead = measured[gw, "liveness.time_to_dead", "power_cut"]
        assert dead_s - params["heartbeat_s"] - 0.1 <= time_to_dead <= dead_s + slack
        assert measured[gw, "liveness.partition_silence", "partition"] >= dead_s
        # a heartbeat-only classifier would have called the flapping gateway dead
        assert measured[gw, "liveness.longest_silence", "flapping"] > dead_s
    events = read_jsonl(run_dir / "events.jsonl")
    kinds = {e["kind"] for e in events}
    assert {"liveness_verdict", "fault_apply", "fault_remove", "fault_down"} <= kinds
    dead = [json.loads(e["message"]) for e in events if e["kind"] == "liveness_verdict"]
    assert any(v["state"] == "dead" and v["evidence"]["powered"] is False for v in dead)
    heartbeats = read_jsonl(run_dir / "liveness" / "heartbeats.jsonl")[1:]
    for gw in ("g1",):  # the log is kept: one agent per test, and a heartbeat after
        agents = {str(h["agent_id"]) for h in heartbeats if h["gateway"] == gw}  # each fault
        assert len(agents) == 4 + 2  # the power cut and reboot tests restart theirs
    assert lab.status().healthy  # the run left the lab as it found it, boards powered
