"""Link faults on real namespaces with real nft and tc, and power cuts on the virtual PSU.

The module makes its own pair of namespaces, ``frt-fa`` and ``frt-fb``, joined by a veth
pair (10.250.0.1/30 - 10.250.0.2/30) with static neighbour entries (so a lost ARP frame
cannot turn into a lost datagram), and deletes them afterwards. Traffic is counted with
real UDP sockets in both namespaces. Every test must leave no fieldrig table or qdisc
behind (checked after each test). Never touches the shared virtual lab.
"""

from __future__ import annotations

import importlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import count, pairwise
from pathlib import Path

import pytest

from bench.faults import (
    FaultError,
    FaultTimeline,
    FaultUnsupported,
    Flapping,
    LinkTarget,
    Loss,
    ManagementLinkRefused,
    Partition,
    PowerCut,
    Protection,
    RateLimit,
    RelayDelay,
    backend_report,
    clear_stale,
    delay,
    find_stale,
    loss,
    partition,
    probe,
)
from bench.faults.kinds import Delay
from bench.faults.owner import STATE_DIR
from bench.instruments import open_psu
from bench.lab.scpi_server import ResistiveLoad, ScpiPsuServer
from bench.rig import Instrument

try:  # the Wilson interval is moving from bench.mesh.links to bench.mesh.loss
    wilson_interval = importlib.import_module("bench.mesh.loss").wilson_interval
except (ImportError, AttributeError):
    wilson_interval = importlib.import_module("bench.mesh.links").wilson_interval

NS_A, NS_B = "frt-fa", "frt-fb"
IF_A, IF_B = "frt-a0", "frt-b0"
IP_A, IP_B = "10.250.0.1", "10.250.0.2"
A = LinkTarget(NS_A, IF_A)
B = LinkTarget(NS_B, IF_B)
REPO = Path(__file__).resolve().parent.parent
_ports = count(40100)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="link faults need root")


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def mac(namespace: str, interface: str) -> str:
    return str(json.loads(sh("ip", "-n", namespace, "-j", "link", "show", interface))[0]["address"])


def teardown_link() -> None:
    for namespace in (NS_A, NS_B):
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True, check=False)
    for path in STATE_DIR.glob("*.json") if STATE_DIR.is_dir() else []:
        if json.loads(path.read_text()).get("namespace") in (NS_A, NS_B):
            path.unlink()


@pytest.fixture(scope="module")
def link() -> Iterator[None]:
    """frt-fa <-veth-> frt-fb, leftovers of a crashed earlier run removed first."""
    teardown_link()
    sh("ip", "netns", "add", NS_A)
    sh("ip", "netns", "add", NS_B)
    try:
        sh("ip", "link", "add", IF_A, "netns", NS_A, "type", "veth", "peer", "name", IF_B,
           "netns", NS_B)  # fmt: skip
        for ns, dev, ip in ((NS_A, IF_A, IP_A), (NS_B, IF_B, IP_B)):
            sh("ip", "-n", ns, "addr", "add", f"{ip}/30", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", NS_A, "neigh", "replace", IP_B, "lladdr", mac(NS_B, IF_B), "dev", IF_A,
           "nud", "permanent")  # fmt: skip
        sh("ip", "-n", NS_B, "neigh", "replace", IP_A, "lladdr", mac(NS_A, IF_A), "dev", IF_B,
           "nud", "permanent")  # fmt: skip
        yield
    finally:
        teardown_link()


def fieldrig_pieces() -> list[str]:
    """Every fieldrig nft table and tc qdisc in the two namespaces."""
    found = []
    for ns in (NS_A, NS_B):
        tables = sh("ip", "netns", "exec", ns, "nft", "list", "tables")
        found += [f"{ns}: {line}" for line in tables.splitlines() if "fieldrig_" in line]
        qdiscs = sh("tc", "-n", ns, "qdisc", "show")
        found += [f"{ns}: {line}" for line in qdiscs.splitlines() if " f1e" in line]
    return found


@pytest.fixture(autouse=True)
def no_fault_outlives_its_test(link: None) -> Iterator[None]:
    assert fieldrig_pieces() == []
    yield
    leftovers = fieldrig_pieces()
    clear_stale([NS_A, NS_B])
    for ns in (NS_A, NS_B):  # whatever a failed test left, so the next one starts clean
        for line in sh("ip", "netns", "exec", ns, "nft", "list", "tables").splitlines():
            if "fieldrig_" in line:
                sh("ip", "netns", "exec", ns, "nft", "delete", "table", *line.split()[1:])
        subprocess.run(["tc", "-n", ns, "qdisc", "del", "dev", IF_A if ns == NS_A else IF_B,
                        "root"], capture_output=True, check=False)  # fmt: skip
    assert leftovers == []


# --- UDP in the namespaces ---------------------------------------------------------------

RECEIVER = textwrap.dedent(
    """
    import json, select, socket, sys, time
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.bind((sys.argv[1], int(sys.argv[2])))
    print("ready", flush=True)
    seqs, nbytes, times, end = set(), 0, [], None
    while end is None or time.monotonic() < end:
        ready, _, _ = select.select([s, sys.stdin], [], [], 0.05)
        if sys.stdin in ready and end is None:
            sys.stdin.read()
            end = time.monotonic() + 0.3  # stdin closed: the sender is done; drain
        if s in ready:
            data = s.recv(65535)
            times.append(time.monotonic())
            nbytes += len(data)
            seqs.add(int.from_bytes(data[:4], "big"))
    print(json.dumps({"count": len(seqs), "bytes": nbytes, "times": times}))
    """
)
SENDER = textwrap.dedent(
    """
    import socket, sys, time
    dst, port, n, size, gap, secs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), \\
        int(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    pad = bytes(size - 4)
    end = time.monotonic() + secs
    seq = 0
    while (n and seq < n) or (not n and time.monotonic() < end):
        try:
            s.sendto(seq.to_bytes(4, "big") + pad, (dst, port))
        except OSError:
            pass  # ENOBUFS from a full qdisc is a drop, as on a real link
        seq += 1
        if gap:
            time.sleep(gap)
    print(seq)
    """
)


@dataclass
class Received:
    sent: int
    count: int
    nbytes: int
    times: list[float]

    def rate_bytes_per_s(self, after_s: float = 0.0) -> float:
        """Bytes per second from ``after_s`` past the first arrival to the last one."""
        assert self.times and self.count
        size = self.nbytes / len(self.times)
        late = [t for t in self.times if t >= self.times[0] + after_s]
        assert len(late) > 10 and late[-1] > late[0], self
        return size * (len(late) - 1) / (late[-1] - late[0])


def udp(
    src: str,
    dst: str,
    dst_ip: str,
    *,
    n: int = 0,
    size: int = 64,
    gap_s: float = 0.0003,
    seconds: float = 0.0,
    during: Callable[[], None] | None = None,
) -> Received:
    """Send ``n`` datagrams (or for ``seconds``) from namespace ``src`` to ``dst_ip``."""
    port = next(_ports)
    py = sys.executable
    receiver = subprocess.Popen(
        ["ip", "netns", "exec", dst, py, "-c", RECEIVER, dst_ip, str(port)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert receiver.stdout is not None and receiver.stdin is not None
        assert receiver.stdout.readline().strip() == "ready"
        sender = subprocess.Popen(
            ["ip", "netns", "exec", src, py, "-c", SENDER, dst_ip, str(port), str(n), str(size),
             str(gap_s), str(seconds)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        if during is not None:
            during()
        out, _ = sender.communicate(timeout=30)
        receiver.stdin.close()
        result = json.loads(receiver.stdout.readline())
        receiver.wait(timeout=10)
    finally:
        receiver.kill()
        receiver.wait()
    return Received(int(out), result["count"], result["bytes"], result["times"])


# --- backends and input checks -----------------------------------------------------------


def test_backend_report_names_a_backend_per_kind_and_is_json() -> None:
    report = backend_report()
    json.dumps(report)
    support = probe()
    assert report["nft"] is support.nft and report["netem"] is support.netem
    assert set(report["backends"]) == {
        "loss", "partition", "rate_limit", "flapping", "delay", "delay_relay"
    }  # fmt: skip
    assert report["backends"]["loss"] == "nftables netdev ingress+egress numgen"
    assert (report["backends"]["delay"] is None) is (not support.netem)
    assert probe() is support  # probed once per process


def test_delay_without_netem_raises_one_line_error() -> None:
    if probe().netem:
        pytest.skip("this kernel has netem: Delay works here")
    with pytest.raises(FaultUnsupported) as caught:
        Delay(A, 50, 5)
    message = str(caught.value)
    assert "\n" not in message
    assert "netem" in message and "relay" in message
    assert isinstance(delay(A, 50, 5), Delay if probe().netem else RelayDelay)


def test_bad_input_is_refused_in_one_line() -> None:
    cases: list[tuple[Callable[[], object], str]] = [
        (lambda: Loss(A, 150), "0-100"),
        (lambda: RateLimit(A, 0), ">= 8"),
        (lambda: RateLimit(A, 1000, burst_bytes=100), "burst_bytes"),
        (lambda: Flapping(A, 0, 1), "mean_up_s"),
        (lambda: LinkTarget(NS_A, "no such interface"), "not an interface name"),
        (lambda: LinkTarget("bad/ns", IF_A), "not a network namespace name"),
    ]
    for make, words in cases:
        with pytest.raises(FaultError) as caught:
            make()
        assert words in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(FaultError, match="no interface 'nosuch0'"):
        Partition(LinkTarget(NS_A, "nosuch0")).apply()
    with pytest.raises(FaultError, match="no network namespace 'frt-nope'"):
        Partition(LinkTarget("frt-nope", IF_A)).apply()


def test_guard_refuses_the_management_path() -> None:
    with pytest.raises(ManagementLinkRefused, match="protected management interface"):
        Partition(A, protect=Protection(interfaces=frozenset({IF_A})))
    with pytest.raises(ManagementLinkRefused, match="protected management interface"):
        Partition(A, protect=Protection(interfaces=frozenset({f"{NS_A}:{IF_A}"})))
    with pytest.raises(ManagementLinkRefused, match=r"route to management host 10\.250\.0\.2"):
        Loss(A, 10, protect=Protection(hosts=frozenset({IP_B})))
    with pytest.raises(ManagementLinkRefused, match=r"it holds 10\.250\.0\.1"):
        Loss(A, 10, protect=Protection(hosts=frozenset({IP_A})))
    with pytest.raises(ManagementLinkRefused, match="cannot resolve"):
        Loss(A, 10, protect=Protection(hosts=frozenset({"no-such-host.invalid"})))
    spared = Protection(hosts=frozenset({"127.0.0.1"}), interfaces=frozenset({"mgmt0", IF_B}))
    with Partition(A, protect=spared):  # loopback and other interfaces are not this path
        assert len(fieldrig_pieces()) == 1


# --- the fault kinds ---------------------------------------------------------------------


def test_loss_50_percent_each_direction() -> None:
    with loss(A, 50) as fault:
        assert fault.describe()["params"] == {"percent": 50.0}
        results = [udp(NS_A, NS_B, IP_B, n=400), udp(NS_B, NS_A, IP_A, n=400)]
    for got in results:
        low, high = wilson_interval(got.count, got.sent)
        assert low > 0 and high < 1, (got, low, high)
        assert low <= 0.6 and high >= 0.4, (got, low, high)
    after = udp(NS_A, NS_B, IP_B, n=200)
    assert after.count == after.sent


def test_partition_drops_everything_both_ways_until_removed() -> None:
    with partition(A):
        assert udp(NS_A, NS_B, IP_B, n=200).count == 0
        assert udp(NS_B, NS_A, IP_A, n=200).count == 0
    for src, dst, ip in ((NS_A, NS_B, IP_B), (NS_B, NS_A, IP_A)):
        got = udp(src, dst, ip, n=200)
        assert got.count == got.sent == 200


def test_rate_limit_caps_throughput_both_ways() -> None:
    kbit, seconds = 2000, 2.5
    rate = kbit * 1000 / 8
    with RateLimit(A, kbit) as fault:
        assert fault.describe()["params"] == {"kbit": kbit, "burst_bytes": 5000}
        egress = udp(NS_A, NS_B, IP_B, size=1200, gap_s=0, seconds=seconds)  # tbf shapes
        ingress = udp(NS_B, NS_A, IP_A, size=1200, gap_s=0, seconds=seconds)  # nft polices
        with pytest.raises(FaultError, match="already has a fieldrig fault's root qdisc tbf"):
            RateLimit(A, 500).apply()
    # nft's byte bucket holds 1 s at the rate plus the burst: judge ingress after it drained
    measured = {"egress": egress.rate_bytes_per_s(), "ingress": ingress.rate_bytes_per_s(1.2)}
    print(f"\nrate limit {rate:.0f} B/s: measured {measured} B/s")
    for direction, got in measured.items():
        assert 0.7 * rate < got < 1.3 * rate, (direction, got)
    assert ingress.nbytes < rate * (seconds + 1.5) + 5000  # the bucket is bounded
    free = udp(NS_A, NS_B, IP_B, size=1200, gap_s=0, seconds=0.3)
    assert free.rate_bytes_per_s() > 5 * rate  # the cap went with the fault


def test_flapping_toggles_with_the_planned_exponential_times() -> None:
    mean = 0.12
    flap = Flapping(A, mean_up_s=mean, mean_down_s=mean, seed=11)
    with FaultTimeline() as timeline:
        timeline.schedule(flap, at_s=0.0, for_s=2.0)
        got = udp(NS_A, NS_B, IP_B, n=1000, gap_s=0.0015)
        timeline.wait(10)
    assert 0 < got.count < got.sent  # the link was cut some of the time, not all of it
    moves = flap.transitions
    states = [m.state for m in moves]
    assert states[0] == "down" and states[-1] == "up" and len(states) >= 8
    assert all(a != b for a, b in pairwise(states))  # alternating
    planned = [duration for _, duration in flap.plan(len(moves) - 1)]
    assert [m.planned_s for m in moves[:-1]] == pytest.approx(planned)
    assert min(planned) < 0.5 * mean and max(planned) > 1.5 * mean  # exponential, not fixed
    # the recorded timeline follows the plan: each transition at (never before) its
    # planned time, and as many transitions as the plan fits into the fault's 2 s (no
    # drift: a schedule that slipped would fit fewer)
    ahead = [duration for _, duration in flap.plan(len(moves) + 5)]
    starts = [sum(ahead[:i]) for i in range(len(ahead))]  # planned, from the first "down"
    changes = [e for e in timeline.events if e.action in ("down", "up")]
    assert [e.action for e in changes] == states
    assert [e.details["n"] for e in changes] == list(range(1, len(moves) + 1))
    first = changes[0].t_s
    planned_moves = zip(moves[:-1], changes[:-1], starts, strict=False)  # not the final "up"
    assert all(
        m.t - moves[0].t >= start - 1e-3 and e.t_s - first >= start - 1e-3
        for m, e, start in planned_moves
    )
    fits = sum(start < 2.0 for start in starts)
    assert fits - 1 <= len(moves) - 1 <= fits + 1, (len(moves), starts)
    logged = [e.action for e in timeline.events]
    assert logged[:2] == ["down", "apply"] and logged[-2:] == ["up", "remove"]
    assert logged.count("down") + logged.count("up") == len(moves)


# --- timeline ----------------------------------------------------------------------------


def tables_in(namespace: str) -> list[str]:
    out = sh("ip", "netns", "exec", namespace, "nft", "list", "tables")
    return [line.split()[2] for line in out.splitlines() if "fieldrig_" in line]


def test_timeline_applies_and_removes_in_order_and_feeds_the_sink() -> None:
    sunk: list[dict[str, object]] = []
    on_at_partition: list[tuple[int, int]] = []

    def sink(event: dict[str, object]) -> None:
        sunk.append(event)
        if (event["action"], event["kind"]) == ("apply", "partition"):  # loss still on?
            on_at_partition.append((len(tables_in(NS_A)), len(tables_in(NS_B))))

    with FaultTimeline(sink, run_id="test-timeline") as timeline:
        timeline.schedule(Partition(A), at_s=0.3, for_s=0.8)
        timeline.schedule(Loss(B, 30), at_s=0.1, for_s=0.8)
        timeline.schedule(Loss(A, 1), at_s=60.0)  # open-ended: wait() does not wait for it
        assert timeline.wait(10)
    assert on_at_partition == [(1, 1)]  # both on at once, each in its own namespace
    events = timeline.events
    order = [(e.action, e.kind) for e in events]
    assert order == [
        ("apply", "loss"),
        ("apply", "partition"),
        ("remove", "loss"),
        ("remove", "partition"),
        ("skipped", "loss"),
    ]
    events = events[:4]
    for event, expected in zip(events, (0.1, 0.3, 0.9, 1.1), strict=True):
        assert event.t_s >= expected, events  # never early
    assert [e.details["at_s"] for e in events[:2]] == [0.1, 0.3]
    assert sunk == [e.to_dict() for e in timeline.events]
    first = sunk[0]
    assert first["target"] == f"{NS_B}:{IF_B}" and first["params"] == {"percent": 30.0}
    assert first["backend"] == "nftables netdev ingress+egress numgen"
    assert str(first["wall"]).endswith("Z")


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_timeline_removes_everything_on_an_exception(error: type[BaseException]) -> None:
    applied = threading.Event()

    def sink(event: dict[str, object]) -> None:
        if event["action"] == "apply":
            applied.set()

    with pytest.raises(error), FaultTimeline(sink) as timeline:
        timeline.schedule(Partition(A), at_s=0.0)
        timeline.schedule(Loss(B, 100), at_s=60.0, for_s=1.0)  # never comes
        assert applied.wait(10), timeline.events
        assert len(tables_in(NS_A)) == 1
        raise error("stop")
    assert fieldrig_pieces() == []
    assert sorted(e.action for e in timeline.events) == ["apply", "remove", "skipped"]
    got = udp(NS_A, NS_B, IP_B, n=100)
    assert got.count == 100


def test_power_cut_on_the_timeline_switches_the_supply_output() -> None:
    server = ScpiPsuServer(backend=ResistiveLoad({1: 10.0})).start()  # ephemeral port
    try:
        assert server.port != 5025
        channel = {"max_voltage": 5.5, "max_current": 3.5, "voltage": 5.1, "current_limit": 3.0}
        instrument = Instrument.model_validate(
            {"driver": "keysight-e36300", "resource": server.resource, "channels": {1: channel}}
        )
        with open_psu("psu1", instrument) as psu:
            psu.output(1, True)
            states = [server.channel(1).output]  # before the cut

            def sink(event: dict[str, object]) -> None:  # the output as each event lands
                states.append(server.channel(1).output)

            with FaultTimeline(sink) as timeline:
                timeline.schedule(PowerCut(psu, 1), at_s=0.1, for_s=0.8)
                assert timeline.wait(10)
            assert states == [True, False, True]
            assert server.channel(1).output is True
            actions = [(e.action, e.kind, e.target) for e in timeline.events]
            assert actions == [
                ("apply", "power_cut", "psu1:ch1"),
                ("remove", "power_cut", "psu1:ch1"),
            ]
    finally:
        server.stop()


# --- exit paths and stale faults ---------------------------------------------------------

CHILD = textwrap.dedent(
    f"""
    import sys, time
    sys.path.insert(0, {str(REPO)!r})
    from bench.faults import LinkTarget, Loss, Partition, RateLimit, set_run_id
    set_run_id("test-crash")
    target = LinkTarget({NS_A!r}, {IF_A!r})
    faults = [Loss(target, 20), RateLimit(target, 1000)]
    if sys.argv[1] == "partition":
        faults = [Partition(target)]
    for fault in faults:
        fault.apply()
    print("applied", flush=True)
    if sys.argv[2] == "exit":
        sys.exit(0)
    time.sleep(60)
    """
)


def child(kinds: str, then: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, kinds, then], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "applied"
    return proc


@pytest.mark.parametrize("how", ["sigterm", "exit"])
def test_a_process_that_dies_normally_removes_its_faults(how: str) -> None:
    proc = child("partition", "exit" if how == "exit" else "sleep")
    if how == "sigterm":
        assert len(tables_in(NS_A)) == 1
        proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == (-signal.SIGTERM if how == "sigterm" else 0)
    assert fieldrig_pieces() == []


def test_sigkilled_owner_leaves_stale_faults_that_clear_stale_removes() -> None:
    proc = child("loss+rate", "sleep")
    with Partition(B):  # a live owner's fault: never stale
        proc.kill()
        proc.wait(timeout=10)
        stale = find_stale([NS_A, NS_B])
        kinds = sorted((s.kind, s.resource.split()[0]) for s in stale)
        assert kinds == [("loss", "nft"), ("rate_limit", "nft"), ("rate_limit", "tc")]
        assert all(s.owner is not None and s.owner.pid == proc.pid for s in stale)
        assert all(s.owner is not None and s.owner.run == "test-crash" for s in stale)
        assert all(s.namespace == NS_A and f"pid {proc.pid} is dead" in s.reason for s in stale)
        removed = clear_stale([NS_A, NS_B])
        assert sorted(map(str, removed)) == sorted(map(str, stale))
        assert tables_in(NS_A) == [] and " f1e1:" not in sh("tc", "-n", NS_A, "qdisc", "show")
        assert len(tables_in(NS_B)) == 1  # the live one stays
        assert find_stale([NS_A, NS_B]) == []
        state_files = [json.loads(p.read_text()) for p in STATE_DIR.glob("*.json")]
        assert not [s for s in state_files if s.get("namespace") == NS_A]
    assert fieldrig_pieces() == []


# --- delay through the userspace relay (kernels without netem) ---------------------------

ECHO_SERVER = """
import socket, sys
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], int(sys.argv[2]))); srv.listen(8); print("ready", flush=True)
while True:
    conn, _ = srv.accept()
    while data := conn.recv(4096):
        conn.sendall(data)
    conn.close()
"""

ECHO_CLIENT = """
import socket, sys, time, json
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
rtts = []
for i in range(int(sys.argv[3])):
    start = time.perf_counter(); sock.sendall(b"x" * 32); got = b""
    while len(got) < 32:
        got += sock.recv(64)
    rtts.append(time.perf_counter() - start)
print(json.dumps(rtts))
"""


def _echo_rtts(port: int, count: int = 10) -> list[float]:
    out = sh("ip", "netns", "exec", NS_A, sys.executable, "-c", ECHO_CLIENT, IP_B, str(port),
             str(count))  # fmt: skip
    return [float(x) for x in json.loads(out)]


# one 32-byte exchange on each of argv[3] fresh connections: each gets its own relay draws
ECHO_CONNECTIONS = """
import socket, sys, time, json
rtts = []
for i in range(int(sys.argv[3])):
    sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
    start = time.perf_counter(); sock.sendall(b"x" * 32); got = b""
    while len(got) < 32:
        got += sock.recv(64)
    rtts.append(time.perf_counter() - start)
    sock.close()
print(json.dumps(rtts))
"""


def _connection_rtts(port: int, count: int) -> list[float]:
    out = sh("ip", "netns", "exec", NS_A, sys.executable, "-c", ECHO_CONNECTIONS, IP_B,
             str(port), str(count))  # fmt: skip
    return [float(x) for x in json.loads(out)]


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _ranks(values: list[float]) -> list[int]:
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0] * len(values)
    for rank, index in enumerate(order):
        ranks[index] = rank
    return ranks


def _spearman(xs: list[float], ys: list[float]) -> float:
    rx, ry = _ranks(xs), _ranks(ys)
    n = len(xs)
    return 1 - 6 * sum((a - b) ** 2 for a, b in zip(rx, ry, strict=True)) / (n * (n * n - 1))


@pytest.fixture
def echo_server() -> Iterator[int]:
    port = next(_ports)
    proc = subprocess.Popen(["ip", "netns", "exec", NS_B, sys.executable, "-c", ECHO_SERVER,
                             IP_B, str(port)], stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline().startswith("ready")
    yield port
    proc.kill()
    proc.wait()


def _fault_relays() -> list[str]:
    """Delay relays of faults; not the virtual lab's own tier relays (parent pid 1)."""
    return [
        line
        for line in sh("ps", "-ww", "-eo", "args").splitlines()  # -ww: never cut lines
        if "bench.faults.delay_relay" in line and not re.search(r"--parent-pid 1\b", line)
    ]


def test_relay_delays_tcp_both_ways_and_goes_away(echo_server: int) -> None:
    if probe().netem:
        pytest.skip("this kernel has netem: delay() uses it, not the relay")
    before = _echo_rtts(echo_server)
    with RelayDelay(A, 40.0, protect=Protection.default()) as fault:
        assert fault.describe()["backend"].startswith("userspace TCP relay")
        delayed = _echo_rtts(echo_server)
        assert any("fieldrig_delay" in p for p in fieldrig_pieces())
    after = _echo_rtts(echo_server)
    assert min(delayed) >= 0.080, delayed  # held 40 ms each way: never less than 80 ms
    # nothing of it before or after: most round trips there beat even one relayed leg
    assert _median(before) < 0.040 and _median(after) < 0.040, (before, after)
    assert _fault_relays() == []


def test_relay_jitter_spreads_each_connections_delays_as_configured(echo_server: int) -> None:
    """Each relayed chunk waits delay +- jitter (uniform, seeded): one request/response per
    connection then takes 2 * delay + jitter * (u1 + u2), u ~ U(-1, 1), a spread of
    4 * jitter around 2 * delay. Checked as intervals and orders, not absolute latencies."""
    if probe().netem:
        pytest.skip("this kernel has netem: delay() uses it, not the relay")
    delay_ms, jitter_ms, n, seed = 20.0, 15.0, 30, 7
    with RelayDelay(A, delay_ms, jitter_ms, protect=Protection.default(), seed=seed) as fault:
        assert fault.describe()["params"] == {"delay_ms": delay_ms, "jitter_ms": jitter_ms}
        jittered = _connection_rtts(echo_server, n)
    floor = 2 * (delay_ms - jitter_ms) / 1e3
    assert min(jittered) >= floor, jittered  # never less than the smallest configured delay
    # the spread is the configured one: the middle 80 % of a sum of two U(-j, j) spans
    # 2.21 j (33 ms here)
    spread = _quantile(jittered, 0.9) - _quantile(jittered, 0.1)
    assert 0.5 * 2.21 * jitter_ms / 1e3 <= spread <= 1.6 * 2.21 * jitter_ms / 1e3, jittered
    # and it is the relay's own seeded draws, not scheduling noise: connection k (from 1)
    # draws from Random(seed + k), first the request's delay, then the response's
    planned = []
    for k in range(1, n + 1):
        rng = random.Random(seed + k)
        planned.append(rng.uniform(-1, 1) + rng.uniform(-1, 1))
    assert _spearman(planned, jittered) > 0.8, list(zip(planned, jittered, strict=True))


def test_relay_of_a_killed_owner_is_found_and_cleared(echo_server: int) -> None:
    if probe().netem:
        pytest.skip("this kernel has netem: delay() uses it, not the relay")
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from bench.faults import Protection, RelayDelay, LinkTarget
            RelayDelay(LinkTarget({NS_A!r}, {IF_A!r}), 30.0, protect=Protection.default()).apply()
            print("applied", flush=True)
            time.sleep(60)
        """)],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert child.stdout is not None and child.stdout.readline().startswith("applied")
    child.send_signal(signal.SIGKILL)
    child.wait()
    deadline = time.monotonic() + 5  # the relay notices its owner is gone within a second
    while _fault_relays() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _fault_relays() == []
    stale = find_stale([NS_A])
    assert [(s.kind, s.family) for s in stale] == [("delay", "ip")]
    assert [s.kind for s in clear_stale([NS_A])] == ["delay"]
    assert _median(_echo_rtts(echo_server)) < 0.030  # the redirect (>= 60 ms) went with it
