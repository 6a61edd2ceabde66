"""The SSH transport and remote agent against a real sshd in a virtual gateway."""

from __future__ import annotations

import base64
import dataclasses
import json
import threading
import time
from pathlib import Path

import paramiko
import pytest

from bench.errors import CommandTimeout, HostKeyMismatch, TransportError
from bench.gateway import ConnectedGateway
from bench.lab.virtual import VirtualLab
from bench.rig import Rig
from bench.transport.agent import CommandFailed
from bench.transport.fanout import fan_out
from bench.transport.hostkeys import fingerprint


def test_exit_status_and_separate_streams(gw1: ConnectedGateway) -> None:
    result = gw1.run("printf out; printf err >&2; exit 7", check=False)
    assert (result.exit_status, result.stdout, result.stderr) == (7, b"out", b"err")
    with pytest.raises(CommandFailed, match=r"gateway gw1: `exit 4` failed with exit status 4"):
        gw1.run("exit 4")


def test_argv_is_not_shell_interpreted(gw1: ConnectedGateway) -> None:
    assert gw1.run(["echo", "$HOME; rm -rf /"]).text == "$HOME; rm -rf /\n"


def test_stdin_env_cwd_and_binary_output(gw1: ConnectedGateway) -> None:
    payload = bytes(range(256)) * 64
    assert gw1.run(["cat"], stdin=payload).stdout == payload
    assert gw1.run("echo $FIELDRIG_X", env={"FIELDRIG_X": "y"}).text == "y\n"
    assert gw1.run(["pwd"], cwd="/etc").text == "/etc\n"


def test_output_that_looks_like_protocol_is_just_output(gw1: ConnectedGateway) -> None:
    """Frames, JSON and a length header printed by a command come back as plain bytes."""
    fake = json.dumps({"op": "result", "id": 1, "rc": 0}).encode()
    forged = len(fake).to_bytes(4, "big") + fake
    encoded = base64.b64encode(forged).decode()
    script = f"import sys,base64; sys.stdout.buffer.write(base64.b64decode('{encoded}'))"
    result = gw1.run(["python3", "-c", script])
    assert result.stdout == forged
    assert gw1.run(["echo", "still in sync"]).text == "still in sync\n"


def test_large_output(gw1: ConnectedGateway) -> None:
    result = gw1.run(["head", "-c", str(8 * 1024 * 1024), "/dev/zero"])
    assert len(result.stdout) == 8 * 1024 * 1024


def test_missing_program_is_exit_127(gw1: ConnectedGateway) -> None:
    result = gw1.run(["no-such-program-fieldrig"], check=False)
    assert result.exit_status == 127


def test_timeout_kills_the_whole_process_group(gw1: ConnectedGateway) -> None:
    start = time.monotonic()
    result = gw1.run("sleep 31.4159 & sleep 27.1828; echo never", timeout=0.5, check=False)
    assert result.timed_out
    assert time.monotonic() - start < 5
    assert result.stdout == b""
    survivors = gw1.run("pgrep -f 'sleep (31.4159|27.1828)' || true").text
    assert survivors == ""
    with pytest.raises(CommandTimeout, match="timed out after"):
        gw1.run(["sleep", "5"], timeout=0.2)


def test_timeout_does_not_hang_on_a_process_that_left_the_group(gw1: ConnectedGateway) -> None:
    """A daemon started with setsid keeps the command's pipes open; the timeout still ends
    the command within a bounded time instead of waiting for the daemon forever."""
    start = time.monotonic()
    result = gw1.run("setsid sleep 37.1 & echo started", timeout=0.5, check=False)
    assert result.timed_out and result.stdout == b"started\n"
    assert time.monotonic() - start < 6
    gw1.run("pkill -f '[s]leep 37.1' || true")


def test_concurrent_commands_share_one_channel(gw1: ConnectedGateway) -> None:
    gw1.run(["true"])
    results: dict[int, str] = {}

    def work(i: int) -> None:
        results[i] = gw1.run(["sh", "-c", f"sleep 0.2; echo {i}"]).text

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: f"{i}\n" for i in range(16)}
    assert time.monotonic() - start < 3.2  # 16 sequential sleeps would take 3.2 s
    assert gw1.connects == 1


def test_background_process_streams_signal_and_wait(gw1: ConnectedGateway) -> None:
    proc = gw1.spawn("for i in 1 2 3; do echo line $i; sleep 0.05; done; echo done >&2")
    lines = list(proc.iter_lines(timeout=10))
    assert lines == [
        ("out", "line 1\n"),
        ("out", "line 2\n"),
        ("out", "line 3\n"),
        ("err", "done\n"),
    ]
    assert proc.wait(5) == 0

    sleeper = gw1.spawn(["sleep", "60"])
    assert sleeper.pid is not None
    sleeper.send_signal(15)
    assert sleeper.wait(5) is None and sleeper.signal_number == 15

    cat = gw1.spawn(["cat"])
    cat.write(b"hello\n", eof=True)
    assert list(cat.iter_lines(timeout=5)) == [("out", "hello\n")]
    assert cat.wait(5) == 0


def test_put_skips_identical_files(gw1: ConnectedGateway, tmp_path: Path) -> None:
    local = tmp_path / "model.bin"
    local.write_bytes(b"\x00weights" * 1000)
    remote = "/tmp/fieldrig-test/model.bin"
    gw1.run(["rm", "-rf", "/tmp/fieldrig-test"])
    assert gw1.put(local, remote) is True
    assert gw1.put(local, remote) is False
    local.write_bytes(b"changed")
    assert gw1.put(local, remote) is True
    assert gw1.run(["cat", remote]).stdout == b"changed"
    back = tmp_path / "back.bin"
    gw1.get(remote, back)
    assert back.read_bytes() == b"changed"


def test_gateway_disk_is_private(lab: VirtualLab, virtual_rig: Rig) -> None:
    """Each gateway's /root and /tmp are its own, as on separate boards."""
    gws = [ConnectedGateway(virtual_rig.gateway(n)) for n in ("gw1", "gw2")]
    try:
        gws[0].run("echo one > /tmp/fieldrig-private")
        assert gws[1].run("cat /tmp/fieldrig-private", check=False).exit_status != 0
        assert gws[0].run(["hostname"]).text == "gw1\n"
        assert gws[1].run(["hostname"]).text == "gw2\n"
    finally:
        for gw in gws:
            gw.close()


def test_host_key_mismatch_is_refused(lab: VirtualLab, virtual_rig: Rig) -> None:
    spec = virtual_rig.gateway("gw1")
    wrong_pub = (lab.plan.gateways[1].disk / "etc/ssh/ssh_host_ed25519_key.pub").read_text()
    gw = ConnectedGateway(spec)
    gw.params = dataclasses.replace(
        gw.params, known_hosts=None, pinned=[" ".join(wrong_pub.split()[:2])]
    )
    with pytest.raises(HostKeyMismatch) as info:
        gw.connect()
    message = str(info.value)
    assert "gateway gw1 (10.213.0.11:22): host key mismatch" in message
    real = paramiko.PKey.from_path(lab.plan.gateways[0].disk / "etc/ssh/ssh_host_ed25519_key")
    assert fingerprint(real) in message
    assert "\n" not in message
    assert gw.connects == 0


def test_unknown_host_refused_then_tofu_records(
    lab: VirtualLab, virtual_rig: Rig, tmp_path: Path
) -> None:
    spec = virtual_rig.gateway("gw1")
    gw = ConnectedGateway(spec)
    gw.params = dataclasses.replace(gw.params, known_hosts=tmp_path / "empty_known_hosts")
    with pytest.raises(TransportError, match="no host key for it in known_hosts"):
        gw.connect(deadline_s=0)
    record = tmp_path / "tofu_known_hosts"
    gw.params = dataclasses.replace(gw.params, known_hosts=None, tofu=record)
    assert gw.run(["true"]).ok
    gw.close()
    recorded = record.read_text().split()
    pub = (lab.plan.gateways[0].disk / "etc/ssh/ssh_host_ed25519_key.pub").read_text().split()
    assert recorded == ["10.213.0.11", pub[0], pub[1]]


def test_reconnects_after_sshd_stopped_mid_session(lab: VirtualLab, gw1: ConnectedGateway) -> None:
    assert gw1.run(["true"]).ok
    patient = gw1.params
    gw1.params = dataclasses.replace(patient, reconnect_deadline_s=1.0)
    lab.stop_sshd("gw1")
    give_up = time.monotonic() + 5
    while gw1.connected and time.monotonic() < give_up:  # the agent notices its channel closed
        time.sleep(0.01)
    assert not gw1.connected
    start = time.monotonic()
    with pytest.raises(TransportError, match="cannot connect"):
        gw1.run(["true"], timeout=5)
    assert 0.9 <= time.monotonic() - start < 5  # it kept trying until its deadline
    gw1.params = dataclasses.replace(patient, reconnect_deadline_s=20.0)
    restarter = threading.Timer(1.0, lab.start_sshd, args=("gw1",))
    restarter.start()
    try:
        start = time.monotonic()
        assert gw1.run(["echo", "back"]).text == "back\n"
        assert time.monotonic() - start >= 0.5  # it really waited for sshd to come back
        assert gw1.connects == 2
    finally:
        restarter.join()
        lab.start_sshd("gw1")


def test_unreachable_gateway_is_one_line_error(lab: VirtualLab, virtual_rig: Rig) -> None:
    gw = ConnectedGateway(virtual_rig.gateway("gw1"))
    gw.params = dataclasses.replace(gw.params, host="10.213.0.99", connect_timeout_s=0.3)
    start = time.monotonic()
    with pytest.raises(TransportError) as info:
        gw.connect(deadline_s=1.0)
    assert time.monotonic() - start < 5
    assert str(info.value).startswith("gateway gw1 (root@10.213.0.99:22): cannot connect")
    assert "\n" not in str(info.value)


def test_fan_out_reports_per_gateway(lab: VirtualLab, virtual_rig: Rig) -> None:
    gws = [ConnectedGateway(virtual_rig.gateway(n)) for n in virtual_rig.gateway_names()]
    ghost = ConnectedGateway(virtual_rig.gateway("gw3"))
    ghost.name = "ghost"
    ghost.params = dataclasses.replace(
        ghost.params, gateway="ghost", host="10.213.0.99", connect_timeout_s=0.3,
        reconnect_deadline_s=0.5,
    )  # fmt: skip
    try:
        outcome = fan_out([*gws, ghost], ["hostname"])
        assert {n: r.text for n, r in outcome.results.items()} == {
            "gw1": "gw1\n", "gw2": "gw2\n", "gw3": "gw3\n"
        }  # fmt: skip
        assert list(outcome.errors) == ["ghost"]
        assert "cannot connect" in str(outcome.errors["ghost"])
        assert not outcome.ok
        again = fan_out(gws, "exit 1", check=True)
        assert set(again.errors) == {"gw1", "gw2", "gw3"}
    finally:
        for gw in gws:
            gw.close()


def test_agent_source_is_python38_compatible() -> None:
    """The agent runs on the board's own python3; Jetson's Ubuntu 20.04 ships 3.8."""
    import ast

    from bench.transport.agent import AGENT_SOURCE

    tree = ast.parse(AGENT_SOURCE, feature_version=(3, 8))
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in (
            node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")]
        )
    }
    assert "bench" not in imported
