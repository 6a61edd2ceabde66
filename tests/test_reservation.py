"""Shared labs: gateways locked through a REAL labgrid coordinator (and exporter) on loopback.

Every test starts its own ``labgrid-coordinator`` on 127.0.0.1 (ports 20400-20499) in a
temporary directory and kills it at the end. Other bench users are other labgrid identities
(``LG_USERNAME``) on the same coordinator.
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bench.errors import ReservationError
from bench.lab.system import stop_process
from bench.reservation import GatewayPlaces, LabgridReservations
from bench.reservation.labgrid import find_client
from bench.results.store import read_jsonl
from bench.rig import load_rig

_PORTS = itertools.count(20400)
UNUSED_PORT = 20499  # nothing listens here: the unreachable coordinator (and 20497-8: sshd)


def _wait_listening(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            assert proc.poll() is None, f"{what} exited with {proc.returncode}"
            assert time.monotonic() < deadline, f"{what} did not listen within 30 s"
            time.sleep(0.1)


class Lab:
    """A coordinator of our own and a labgrid-client to drive it as anyone."""

    def __init__(self, address: str) -> None:
        self.address = address

    def client(self, *args: str, user: str = "admin", check: bool = True) -> str:
        proc = subprocess.run(
            [find_client(), "-x", self.address, *args],
            capture_output=True,
            text=True,
            env={**os.environ, "LG_USERNAME": user},
            timeout=60,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"labgrid-client {args}: {proc.stderr.strip()}")
        return proc.stdout

    def create(self, *places: str) -> None:
        for place in places:
            self.client("-p", place, "create")

    def user(self, name: str) -> LabgridReservations:
        return LabgridReservations(self.address, env={"LG_USERNAME": name})

    def holder(self, place: str) -> str | None:
        return self.user("observer").holders()[place]

    def reservation_owners(self) -> list[str]:
        out = self.client("reservations")
        return [line.split(":", 1)[1].strip() for line in out.splitlines() if "owner:" in line]


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    port = next(_PORTS)
    assert port < UNUSED_PORT - 2
    workdir = tmp_path / "coordinator"
    workdir.mkdir()
    proc = subprocess.Popen(
        [str(Path(find_client()).with_name("labgrid-coordinator")), "-l", f"127.0.0.1:{port}"],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_listening(port, proc, "labgrid-coordinator")
        yield Lab(f"127.0.0.1:{port}")
    finally:
        stop_process(proc)


def _in_thread(call: Callable[[], dict[str, str]]) -> tuple[threading.Thread, list[object]]:
    result: list[object] = []
    thread = threading.Thread(target=lambda: result.append(call()), daemon=True)
    thread.start()
    return thread, result


def _until(predicate: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.2)


def test_waiting_users_get_the_place_after_release_higher_priority_first(lab: Lab) -> None:
    """One coordinator, three users: alice holds the place; low (priority 0) and then high
    (priority 10) wait; alice's release goes to high although low waited longer, high's to
    low; nothing is left behind."""
    lab.create("pa")
    alice, low, high = lab.user("alice"), lab.user("low"), lab.user("high")
    assert alice.acquire(["pa"], timeout_s=20) == {}
    assert alice.held("pa") and not low.held("pa")
    assert lab.holder("pa") == alice.identity

    low_wait, low_result = _in_thread(lambda: low.acquire(["pa"], timeout_s=90, priority=0))
    _until(lambda: low.identity in lab.reservation_owners())
    high_wait, high_result = _in_thread(lambda: high.acquire(["pa"], timeout_s=90, priority=10))
    _until(lambda: high.identity in lab.reservation_owners())
    time.sleep(2)
    assert low_wait.is_alive() and high_wait.is_alive()  # both wait while alice holds it
    assert lab.holder("pa") == alice.identity

    alice.release("pa")
    high_wait.join(timeout=30)
    assert high_result == [{}] and high.held("pa") and not alice.held("pa")
    assert low_wait.is_alive()  # older, but lower priority: still waiting

    high.release("pa")
    low_wait.join(timeout=30)
    assert low_result == [{}] and low.held("pa")
    low.release("pa")
    assert lab.holder("pa") is None
    assert lab.reservation_owners() == []  # nothing left behind


def test_timeout_is_one_line_and_leaves_no_reservation(lab: Lab) -> None:
    lab.create("pa", "pb")
    alice, bob = lab.user("alice"), lab.user("bob")
    assert alice.acquire(["pa"], timeout_s=20) == {}
    failed = bob.acquire(["pa", "pb"], timeout_s=4)
    assert list(failed) == ["pa"]
    assert failed["pa"] == (
        f"labgrid place pa not free within 4 s (acquired by {alice.identity}); raise "
        "coordinator.wait_timeout_s in the rig or free the place"
    )
    assert bob.held("pb")  # what could be had is held
    assert lab.reservation_owners().count(bob.identity) == 1  # pb's; pa's was withdrawn
    bob.release("pb")
    alice.release("pa")


def test_unknown_place_and_unreachable_coordinator_are_one_line(lab: Lab) -> None:
    failed = lab.user("bob").acquire(["nosuch"], timeout_s=5)
    assert failed == {
        "nosuch": f"labgrid place nosuch does not exist on coordinator {lab.address}; create "
        f"it with `labgrid-client -x {lab.address} -p nosuch create` or fix the rig's place"
    }
    nowhere = LabgridReservations(f"127.0.0.1:{UNUSED_PORT}")
    with pytest.raises(ReservationError) as caught:
        nowhere.acquire(["pa"], timeout_s=5)
    assert str(caught.value) == (
        f"labgrid coordinator 127.0.0.1:{UNUSED_PORT} unreachable; start labgrid-coordinator "
        "there or fix coordinator.address in the rig"
    )


def test_lost_lock_is_noticed_once(lab: Lab) -> None:
    lab.create("pa", "pb")
    lost: list[tuple[str, str]] = []
    places = GatewayPlaces(
        lab.user("bench"),
        {"g1": "pa", "g2": "pb"},
        poll_s=0.3,
        on_lost=lambda gateway, reason: lost.append((gateway, reason)),
    )
    assert places.take(timeout_s=20, priority=0) == {}
    places.watch()
    time.sleep(1)
    assert lost == []  # still ours: nothing reported
    lab.client("-p", "pa", "release", "--kick", user="mallory")
    _until(lambda: bool(lost))
    time.sleep(1)
    assert lost == [
        ("g1", "lock on labgrid place pa lost (released, not by this run); the bench "
         "stopped using this gateway"),
    ]  # fmt: skip
    assert places.held == {"g2"}
    assert places.release() == []
    assert lab.holder("pb") is None
    assert lab.reservation_owners() == []


# --- the bench: rig -> session -> plugin ----------------------------------------------------


def _rig(path: Path, address: str, gateways: dict[str, str], *, timeout_s: float = 3) -> Path:
    """A rig whose gateways nobody answers for (closed loopback ports), each on a labgrid
    place: its reservation is checked before the health check."""
    lines = "\n".join(
        f"  - {{name: {name}, board: rpi4, place: {place}, "
        f"ssh: {{host: 127.0.0.1, port: {UNUSED_PORT - 1 - i}}}}}"
        for i, (name, place) in enumerate(gateways.items())
    )
    path.write_text(
        textwrap.dedent(f"""\
        name: tres
        coordinator: {{address: "{address}", wait_timeout_s: {timeout_s}, poll_s: 0.5}}
        ssh_defaults:
          auth: {{agent: true}}
          host_key: {{known_hosts: {path.parent}/known_hosts}}
          connect_timeout_s: 0.5
          reconnect_deadline_s: 1
        gateways:
        """)
        + lines
        + "\n"
    )
    return path


def _events(root: Path) -> list[tuple[object, object]]:
    (run,) = (root / "reports" / "runs").iterdir()
    return [(e["gateway"], e["kind"]) for e in read_jsonl(run / "events.jsonl")]


def test_plugin_takes_places_before_health_check_and_gives_them_back(
    pytester: pytest.Pytester, lab: Lab
) -> None:
    lab.create("tres-g1", "tres-g2")
    other = lab.user("alice")
    assert other.acquire(["tres-g2"], timeout_s=20) == {}
    rig = _rig(pytester.path / "tres.yaml", lab.address, {"g1": "tres-g1", "g2": "tres-g2"})
    me = LabgridReservations(lab.address)
    pytester.makepyfile(
        test_one=f"""
        from bench.reservation import LabgridReservations

        def test_places_held_during_the_run(rig):
            holders = LabgridReservations("{lab.address}").holders()
            assert holders == {{"tres-g1": "{me.identity}", "tres-g2": "{other.identity}"}}
            assert "g2" in rig.unavailable

        def test_x(gateway):
            pass
        """
    )
    result = pytester.runpytest_subprocess(f"--rig={rig}", "-rs")
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.fnmatch_lines(
        [
            "*INFRASTRUCTURE ERROR gateway g2 unavailable: labgrid place tres-g2 not free "
            f"within 3 s (acquired by {other.identity})*",
            "*g2 unavailable (infrastructure): labgrid place tres-g2 not free within 3 s*",
        ]
    )
    assert _events(pytester.path) == [("g2", "place_unavailable"), ("g1", "health_check_failed")]
    assert lab.holder("tres-g1") is None  # given back at close
    assert lab.holder("tres-g2") == other.identity  # someone else's: untouched
    assert lab.reservation_owners() == [other.identity]
    other.release("tres-g2")


def test_lost_lock_skips_the_gateways_later_tests(pytester: pytest.Pytester, lab: Lab) -> None:
    lab.create("tres-g1")
    rig = _rig(pytester.path / "tres.yaml", lab.address, {"g1": "tres-g1"})
    pytester.makepyfile(
        test_two=f"""
        import os, subprocess, time
        from bench.reservation.labgrid import find_client

        def test_1_someone_kicks_us(rig):
            subprocess.run(
                [find_client(), "-x", "{lab.address}", "-p", "tres-g1", "release", "--kick"],
                env={{**os.environ, "LG_USERNAME": "mallory"}}, check=True,
            )
            deadline = time.monotonic() + 20
            while "g1" not in rig.unavailable or "lost" not in rig.unavailable["g1"]:
                assert time.monotonic() < deadline
                time.sleep(0.1)

        def test_2_later(gateway):
            pass
        """
    )
    result = pytester.runpytest_subprocess(f"--rig={rig}", "-rs")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(
        ["*g1 unavailable (infrastructure): lock on labgrid place tres-g1 lost (released*"]
    )
    assert ("g1", "place_lost") in _events(pytester.path)
    assert lab.holder("tres-g1") is None
    assert lab.reservation_owners() == []


def test_xdist_workers_share_the_places_the_first_one_took(
    pytester: pytest.Pytester, lab: Lab
) -> None:
    lab.create("tres-g1", "tres-g2")
    other = lab.user("alice")
    assert other.acquire(["tres-g2"], timeout_s=20) == {}
    rig = _rig(pytester.path / "tres.yaml", lab.address, {"g1": "tres-g1", "g2": "tres-g2"})
    me = LabgridReservations(lab.address)
    body = f"""
        from bench.reservation import LabgridReservations

        def check(rig):
            assert "labgrid place tres-g2" in rig.unavailable["g2"]
            assert "labgrid place" not in rig.unavailable.get("g1", "")
            holder = LabgridReservations("{lab.address}").holders()["tres-g1"]
            assert holder == "{me.identity}"
    """
    tests = "".join(f"\ndef test_{i}(rig):\n    check(rig)\n" for i in range(4))
    pytester.makepyfile(test_four=textwrap.dedent(body) + tests)
    result = pytester.runpytest_subprocess(f"--rig={rig}", "-n", "2", "-p", "xdist")
    result.assert_outcomes(passed=4)
    assert lab.holder("tres-g1") is None
    assert lab.reservation_owners() == [other.identity]
    other.release("tres-g2")


def test_unreachable_coordinator_makes_gateways_unavailable(pytester: pytest.Pytester) -> None:
    rig = _rig(pytester.path / "tres.yaml", f"127.0.0.1:{UNUSED_PORT}", {"g1": "tres-g1"})
    pytester.makepyfile(test_three="def test_x(gateway):\n    pass\n")
    result = pytester.runpytest_subprocess(f"--rig={rig}", "-rs")
    result.assert_outcomes(skipped=1)
    line = (
        f"labgrid coordinator 127.0.0.1:{UNUSED_PORT} unreachable; start labgrid-coordinator "
        "there or fix coordinator.address in the rig"
    )
    result.stdout.fnmatch_lines([f"fieldrig: INFRASTRUCTURE ERROR gateway g1 unavailable: {line}"])
    assert _events(pytester.path) == [("g1", "place_unavailable")]


def test_places_are_given_back_when_the_session_dies(tmp_path: Path, lab: Lab) -> None:
    """A session that raises before close() (here: right after start) still releases its
    places when the interpreter exits."""
    lab.create("tres-g1")
    rig = _rig(tmp_path / "tres.yaml", lab.address, {"g1": "tres-g1"})
    script = textwrap.dedent(f"""
        from pathlib import Path
        from bench.reservation import LabgridReservations
        from bench.rig import load_rig
        from bench.session import BenchSession

        session = BenchSession.start(
            load_rig("{rig}"), selected=["g1"], runs_dir=Path("{tmp_path}/runs"), say=print
        )
        holder = LabgridReservations("{lab.address}").holders()["tres-g1"]
        assert holder == session.places.backend.identity, holder
        print("HELD", flush=True)
        raise RuntimeError("the session dies")
    """)
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert "HELD" in proc.stdout, proc.stdout + proc.stderr
    assert proc.returncode == 1 and "RuntimeError: the session dies" in proc.stderr
    assert lab.holder("tres-g1") is None
    assert lab.reservation_owners() == []


def test_doctor_releases_the_places_of_a_killed_session(tmp_path: Path, lab: Lab) -> None:
    """SIGKILL leaves no chance to release: `fieldrig lab doctor --fix` does it afterwards."""
    from bench.lab.doctor import Doctor

    lab.create("tres-g1", "other")
    rig_path = _rig(tmp_path / "tres.yaml", lab.address, {"g1": "tres-g1"})
    script = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from bench.rig import load_rig
        from bench.session import BenchSession

        BenchSession.start(
            load_rig("{rig_path}"), selected=["g1"], runs_dir=Path("{tmp_path}/runs"), say=print
        )
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120,
                          check=False)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL
    me = LabgridReservations(lab.address).identity
    assert lab.holder("tres-g1") == me  # the killed session's, never released
    lab.user("someone").acquire(["other"], timeout_s=10)  # not ours: left alone
    report = Doctor(load_rig(rig_path)).run(fix=True)
    assert [(f.kind, f.fixed) for f in report.findings] == [("labgrid-place", True)], report
    assert report.clean
    assert lab.holder("tres-g1") is None
    assert str(lab.holder("other")).endswith("/someone")
    assert Doctor(load_rig(rig_path)).run(fix=False).clean


# --- serial over the exporter -----------------------------------------------------------------


def test_radio_dongle_through_the_exporter(tmp_path: Path, lab: Lab) -> None:
    """An emulated border router on a pty, exported by a real labgrid-exporter (which runs
    ser2net as a NetworkSerialPort over RFC 2217 while the place is acquired), found through
    the place and driven by our SerialPort and Spinel driver."""
    from bench.lab.mesh_ncp import MeshNcp
    from bench.mesh.sim import MeshConfig
    from bench.radio.spinel_radio import SpinelRadio
    from bench.transport.ptyport import PtyDevice
    from bench.transport.serial import SerialPort

    device = PtyDevice(tmp_path / "by-id", "br0")
    ncp = MeshNcp(device, MeshConfig(meters=5, seed=3), time_scale=10.0)
    ncp.start()
    config = tmp_path / "exporter.yaml"
    config.write_text(f"radio:\n  RawSerialPort:\n    port: {device.tty_name}\n    speed: 115200\n")
    exporter = subprocess.Popen(
        [
            str(Path(find_client()).with_name("labgrid-exporter")),
            *("-c", lab.address, "-n", "bench-host", "--hostname", "127.0.0.1", str(config)),
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    bench = lab.user("bench")
    radio: SpinelRadio | None = None
    try:
        _until(lambda: "bench-host/radio/NetworkSerialPort" in lab.client("resources"))
        lab.create("tres-g1")
        lab.client("-p", "tres-g1", "add-match", "bench-host/radio/NetworkSerialPort")
        assert bench.acquire(["tres-g1"], timeout_s=20) == {}
        urls: dict[str, str] = {}

        def exported() -> bool:
            urls.update(bench.serial_ports("tres-g1"))
            return bool(urls)

        _until(exported)
        (url,) = urls.values()
        assert url.startswith("rfc2217://127.0.0.1:") and url.endswith("?ign_set_control")
        port = SerialPort(f"{url}&timeout=3", name="br0-exported")
        port.open()
        radio = SpinelRadio(port)
        assert radio.identify().protocol == "spinel 4.3 wisun"
        assert len(radio.topology().routes) == 5
    finally:
        if radio is not None:
            radio.close()
        bench.release("tres-g1")
        stop_process(exporter)
        ncp.stop()
        device.unplug()
    assert lab.holder("tres-g1") is None


# --- rig keys -----------------------------------------------------------------------------------

_RIG = """\
name: shared
coordinator:
  address: labhost:20408
  priority: 5
gateways:
  - name: g1
    board: rpi4
    place: lab-g1
    ssh: {host: 192.168.10.11, auth: {agent: true}, host_key: {known_hosts: /etc/kh}}
"""


def test_rig_coordinator_and_place_keys() -> None:
    from bench.rig import parse_rig

    rig = parse_rig(_RIG, "shared.yaml")
    assert rig.coordinator is not None
    assert (rig.coordinator.address, rig.coordinator.priority) == ("labhost:20408", 5)
    assert (rig.coordinator.wait_timeout_s, rig.coordinator.poll_s) == (600.0, 10.0)
    assert rig.gateway("g1").place == "lab-g1"


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "labhost:20408",
            "labhost",
            "shared.yaml:3: coordinator.address: must be host:port of a labgrid coordinator, "
            "such as labhost:20408, got 'labhost'",
        ),
        (
            "priority: 5",
            "wait: 5",
            "shared.yaml:4: coordinator.wait: unknown key; valid keys here: address, priority, "
            "wait_timeout_s, poll_s",
        ),
        (
            "place: lab-g1",
            "place: 'lab g1'",
            "shared.yaml:8: gateways[0].place: must be a labgrid place name (letters, digits, "
            "'_', '.', '-'; up to 64), got 'lab g1'",
        ),
        (
            "coordinator:\n  address: labhost:20408\n  priority: 5\n",
            "",
            "shared.yaml:5: gateways[0].place: a place is locked through a labgrid coordinator; "
            "add a top-level coordinator: {address: HOST:20408} or remove this place",
        ),
    ],
)
def test_rig_coordinator_mistakes_are_one_line(old: str, new: str, message: str) -> None:
    from bench.errors import RigError
    from bench.rig import parse_rig

    with pytest.raises(RigError) as caught:
        parse_rig(_RIG.replace(old, new), "shared.yaml")
    assert str(caught.value) == message


def test_rig_place_belongs_to_one_gateway() -> None:
    from bench.errors import RigError
    from bench.rig import parse_rig

    second = (
        "  - name: g2\n    board: rpi4\n    place: lab-g1\n"
        "    ssh: {host: 192.168.10.12, auth: {agent: true}, host_key: {known_hosts: /etc/kh}}\n"
    )
    text = _RIG + second
    with pytest.raises(RigError) as caught:
        parse_rig(text, "shared.yaml")
    assert str(caught.value).endswith(
        "gateways[1].place: place 'lab-g1' is already gateway g1's; give each gateway its own "
        "labgrid place"
    )
