"""Link faults on a router reached over SSH, and the plugin's leftover-fault check.

One module-scoped scratch lab, "t57" (10.213.57.0/24, 10.214.57.0/24), with one gateway,
g0. Its real sshd (in namespace fr-t57-g0) plays the router: the rig names it in g0's
``backhaul: {router: {ssh: ..., interface: wan0}}``, so every nft and tc command of a fault
goes over SSH and lands in that namespace, where wan0 carries g0's traffic to the lab's
cloud namespace (measured with real UDP). mgmt0 there is the interface the bench's own SSH
session to the router uses. Never touches the shared virtual lab.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.errors import RigError
from bench.faults import (
    LinkTarget,
    Loss,
    ManagementLinkRefused,
    Partition,
    Protection,
    backend_report,
    find_stale,
    routers_of,
)
from bench.faults.owner import STATE_DIR
from bench.lab.virtual import VirtualLab
from bench.results.store import read_jsonl
from bench.rig import Rig, load_rig, parse_rig
from tests.test_faults import udp, wilson_interval
from tests.test_lab import leftovers

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="link faults and labs need root")

LAB = "t57"
STATE = Path(f"/var/lib/fieldrig/{LAB}")
ROUTER_NS, CLOUD_NS = f"fr-{LAB}-g0", f"fr-{LAB}-cloud"
WAN_G0, WAN_CLOUD = "10.214.57.11", "10.214.57.1"
REPO = Path(__file__).resolve().parent.parent

RIG = textwrap.dedent(f"""\
    name: {LAB}
    virtual:
      lab_id: {LAB}
      state_dir: {STATE}
      management_subnet: 10.213.57.0/24
      backhaul_subnet: 10.214.57.0/24
    ssh_defaults:
      auth: {{identity_file: "{{state_dir}}/id_ed25519"}}
      host_key: {{known_hosts: "{{state_dir}}/known_hosts"}}
    gateways:
      - name: g0
        board: rpi4
        backhaul:
          router:
            ssh:
              host: 10.213.57.11
              auth: {{identity_file: {STATE}/id_ed25519}}
              host_key: {{known_hosts: {STATE}/known_hosts}}
            interface: wan0
    """)


@pytest.fixture(scope="module")
def rig_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp(LAB) / f"{LAB}.yaml"
    path.write_text(RIG)
    return path


@pytest.fixture(scope="module")
def lab(rig_file: Path) -> Iterator[Rig]:
    rig = load_rig(rig_file)
    lab = VirtualLab(rig)
    try:
        lab.up()
        yield rig
    finally:
        for router in routers_of(rig):
            router.close()
        lab.down()
        for path in STATE_DIR.glob("*.json") if STATE_DIR.is_dir() else []:
            if "10.213.57.11" in path.read_text():
                path.unlink()
        assert leftovers(lab) == []


@pytest.fixture
def target(lab: Rig) -> LinkTarget:
    backhaul = lab.gateway("g0").backhaul
    assert backhaul is not None
    return LinkTarget.from_backhaul(backhaul)


def sh_out(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def router_pieces() -> list[str]:
    """fieldrig nft tables and tc qdiscs in the router's namespace (looked at locally)."""
    tables = subprocess.run(["ip", "netns", "exec", ROUTER_NS, "nft", "list", "tables"],
                            capture_output=True, text=True, check=True).stdout  # fmt: skip
    qdiscs = subprocess.run(["tc", "-n", ROUTER_NS, "qdisc", "show"], capture_output=True,
                            text=True, check=True).stdout  # fmt: skip
    return [ln for ln in tables.splitlines() if "fieldrig_" in ln] + [
        ln for ln in qdiscs.splitlines() if " f1e" in ln
    ]


@pytest.fixture(autouse=True)
def nothing_left_on_the_router(request: pytest.FixtureRequest) -> Iterator[None]:
    if "lab" not in request.fixturenames:
        yield
        return
    request.getfixturevalue("lab")
    assert router_pieces() == []
    yield
    left = router_pieces()
    if left:  # whatever a failed test left, so the next one starts clean
        subprocess.run(["ip", "netns", "exec", ROUTER_NS, "nft", "flush", "ruleset"], check=False)
        subprocess.run(["tc", "-n", ROUTER_NS, "qdisc", "del", "dev", "wan0", "root"],
                       capture_output=True, check=False)  # fmt: skip
    assert left == []


# --- the rig -----------------------------------------------------------------------------


def test_rig_names_a_router_backhaul_with_its_ssh_block() -> None:
    rig = parse_rig(RIG, "t57.yaml")
    backhaul = rig.gateway("g0").backhaul
    assert backhaul is not None and backhaul.router is not None
    target = LinkTarget.from_backhaul(backhaul)
    assert target.router is not None and target.namespace is None
    assert target.label == "router:root@10.213.57.11:wan0"
    assert routers_of(rig) == [target.router]
    both = RIG.replace("    backhaul:\n", "    backhaul:\n      local: {interface: e0}\n")
    with pytest.raises(RigError) as caught:
        parse_rig(both, "t57.yaml")
    assert str(caught.value) == (
        "t57.yaml:13: gateways[0].backhaul: set exactly one of netns, local, router; "
        "got local and router"
    )
    no_auth = RIG.replace(f"          auth: {{identity_file: {STATE}/id_ed25519}}\n", "")
    with pytest.raises(RigError, match=r"gateways\[0\]\.backhaul\.router\.ssh\.auth"):
        parse_rig(no_auth, "t57.yaml")


# --- faults over SSH ---------------------------------------------------------------------


def test_partition_and_loss_on_the_router_cut_traffic_across_wan0(target: LinkTarget) -> None:
    assert target.router is not None
    report = backend_report(target.router)  # probed on the router, over SSH
    assert report["where"] == "router:root@10.213.57.11"
    assert report["backends"]["partition"] == "nftables netdev ingress+egress drop"
    assert report["backends"]["delay_relay"] is None  # the relay runs on the bench host only
    with Partition(target, protect=Protection.default()) as fault:
        assert fault.describe()["target"] == "router:root@10.213.57.11:wan0"
        assert len(router_pieces()) == 1  # the router's namespace got it, over SSH
        out = udp(ROUTER_NS, CLOUD_NS, WAN_CLOUD, n=200)
        back = udp(CLOUD_NS, ROUTER_NS, WAN_G0, n=200)
        assert out.count == 0 and back.count == 0
    assert router_pieces() == []
    healed = udp(ROUTER_NS, CLOUD_NS, WAN_CLOUD, n=200)
    assert healed.count == healed.sent == 200
    with Loss(target, 50, protect=Protection.default()):
        lossy = udp(ROUTER_NS, CLOUD_NS, WAN_CLOUD, n=400)
    low, high = wilson_interval(lossy.count, lossy.sent)
    assert low > 0 and high < 1 and low <= 0.6 and high >= 0.4, (lossy, low, high)


def test_guard_refuses_the_interface_of_the_benchs_ssh_session(
    lab: Rig, target: LinkTarget
) -> None:
    assert target.router is not None
    management = LinkTarget(None, "mgmt0", target.router)
    with pytest.raises(ManagementLinkRefused) as caught:
        Partition(management, protect=Protection())  # no hosts named: the session rule
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("router:root@10.213.57.11:mgmt0: refusing to fault the bench's")
    assert "it holds 10.213.57.11, where the bench's SSH session" in message
    with pytest.raises(ManagementLinkRefused):
        Loss(management, 5, protect=Protection.for_rig(lab))
    Partition(target, protect=Protection.for_rig(lab))  # wan0 is allowed
    assert router_pieces() == []  # refusals and construction change nothing


CHILD = textwrap.dedent("""
    import sys, time
    from bench.faults import LinkTarget, Partition, RateLimit, set_run_id
    from bench.rig import load_rig
    set_run_id("t57-crash")
    if sys.argv[2] == "exit":  # a local fault first: its exit hook is older than paramiko's
        Partition(LinkTarget("fr-t57-cloud", "wanbr")).apply()
    target = LinkTarget.from_backhaul(load_rig(sys.argv[1]).gateway("g0").backhaul)
    Partition(target).apply()
    if sys.argv[2] == "rate":
        RateLimit(target, 1000).apply()
    print("applied", flush=True)
    if sys.argv[2] == "exit":
        sys.exit(0)
    time.sleep(60)
    """)


def sigkilled_child(rig_file: Path, kinds: str) -> int:
    """A process that applies router faults and is SIGKILLed: its pid."""
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(rig_file), kinds], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "applied"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return proc.pid


# --- the session's stale sweep and the per-test leftover check ---------------------------

MODULE_FAULT = """
import pytest
from bench.faults import Loss

@pytest.fixture(scope="module")
def module_loss(rig):
    with Loss(rig.backhaul("g0"), 5, protect=rig.fault_protection()):
        yield

def test_one(module_loss):
    pass

def test_two(module_loss):
    pass
"""

LEAK = """
import subprocess
from bench.faults import Loss, cleanup

def test_leaks(rig):
    Loss(rig.backhaul("g0"), 10, protect=rig.fault_protection()).apply()

def test_next(rig):
    assert cleanup.active() == []
    tables = subprocess.run(["ip", "netns", "exec", "fr-t57-g0", "nft", "list", "tables"],
                            capture_output=True, text=True, check=True).stdout
    assert "fieldrig_" not in tables
"""


def test_sigkilled_router_faults_are_swept_and_a_leaked_fault_fails_its_test(
    lab: Rig,
    rig_file: Path,
    target: LinkTarget,
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A SIGKILLed process's router faults are found over SSH and removed by the next
    session's start; in that session a test that leaks a fault gets a teardown error."""
    monkeypatch.setenv("FIELDRIG_LOCK_DIR", os.environ.get("FIELDRIG_LOCK_DIR", "/tmp/locks-t57"))
    exiting = subprocess.run([sys.executable, "-c", CHILD, str(rig_file), "exit"], cwd=REPO,
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    assert exiting.stdout.strip() == "applied" and exiting.returncode == 0, exiting.stderr
    assert router_pieces() == [] and exiting.stderr == ""  # its exit removed both, over SSH
    assert "fieldrig_" not in sh_out("ip", "netns", "exec", CLOUD_NS, "nft", "list", "tables")
    pid = sigkilled_child(rig_file, "rate")
    assert len(router_pieces()) == 3  # partition table, rate-limit table and its tbf
    assert find_stale([None]) == []  # not on the bench host, and the router's not asked
    stale = find_stale([], routers_of(lab))
    assert sorted((s.kind, s.resource.split()[0]) for s in stale) == [
        ("partition", "nft"), ("rate_limit", "nft"), ("rate_limit", "tc")
    ]  # fmt: skip
    assert all(s.router == target.router and f"pid {pid} is dead" in s.reason for s in stale)
    assert all(str(s).split(" in ")[1].startswith("router:root@10.213.57.11 host") for s in stale)
    assert all(s.owner is not None and s.owner.run == "t57-crash" for s in stale)
    pytester.makepyfile(test_a_module=MODULE_FAULT, test_b_leak=LEAK)
    runs = pytester.path / "runs"
    result = pytester.runpytest_inprocess(  # in-process: seconds, not a fresh interpreter
        f"--rig={rig_file}", f"--runs-dir={runs}", "-p", "no:hypothesispytest"
    )
    result.assert_outcomes(passed=4, errors=1)
    result.stdout.fnmatch_lines([
        "*removed a stale fault left by a killed run: nft table netdev fieldrig_partition_*"
        " in router:root@10.213.57.11 host (partition)*",
        "*ERROR at teardown of test_leaks*",
        "*FaultLeaked: test_b_leak.py::test_leaks: 1 fault(s) outlived the test and were "
        "removed: loss on router:root@10.213.57.11:wan0;*",
    ])  # fmt: skip
    assert "test_one" not in result.stdout.str().split("short test summary")[-1]
    events = read_jsonl(next(runs.glob("*/events.jsonl")))
    swept = [e["message"] for e in events if e["kind"] == "stale_fault_removed"]
    assert sorted(swept) == sorted(map(str, stale))  # the session's sweep took all three
    leaked = [json.loads(e["message"]) for e in events if e["kind"] == "fault_leaked"]
    assert leaked == [
        {
            "test": "test_b_leak.py::test_leaks",
            "fault": {
                "kind": "loss",
                "target": "router:root@10.213.57.11:wan0",
                "params": {"percent": 10.0},
                "backend": "nftables netdev ingress+egress numgen",
            },
            "error": None,
        }
    ]
    backends = [json.loads(e["message"]) for e in events if e["kind"] == "link_fault_backends"]
    assert [b["where"] for b in backends] == ["router:root@10.213.57.11"]
    assert router_pieces() == [] and find_stale([], routers_of(lab)) == []
