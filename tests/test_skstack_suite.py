"""`pytest suites/test_mesh.py` on a virtual gateway whose dongle is an emulated Route-B one
(SKSTACK-IP, BP35C0 dialect), end to end on scratch lab t53: the session joins the meter with
the credentials from the environment variables the rig names, delivery is measured to that
one meter at hop 1, the tests that need a mesh, an attenuator or a backhaul skip with their
reasons, and the credentials reach none of the run's files.

With ``FIELDRIG_FULL_BENCH=1`` also: a wrong password is one infrastructure error (reported
once, the radio tests skipped), not a failed test. CI covers that path without a lab in
tests/test_skstack_radio.py (the session's radio() against an emulator on a pty)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.lab.radio import RadioLab
from bench.lab.virtual import VirtualLab
from bench.radio.skstack_driver import SkstackError, link_local_address
from bench.radio.skstack_radio import SkstackRadio
from bench.rig import load_rig
from bench.transport.serial import SerialPort
from tests.test_lab import leftovers

REPO = Path(__file__).resolve().parents[1]
LAB_ID = "t53"
RBID = "00112233445566778899AABBCCDDEEFF"
PASSWORD = "T53ROUTEBPWD"
CREDENTIALS = {"T53_ROUTE_B_ID": RBID, "T53_ROUTE_B_PASSWORD": PASSWORD}
METER_MAC = "001D129100000001"  # the lab's meter behind its first gateway's dongle

RIG = textwrap.dedent(f"""\
    name: {LAB_ID}
    virtual:
      lab_id: {LAB_ID}
      state_dir: /var/lib/fieldrig/{LAB_ID}
      management_subnet: 10.213.53.0/24
      backhaul_subnet: 10.214.53.0/24
    ssh_defaults:
      auth: {{identity_file: "{{state_dir}}/id_ed25519"}}
      host_key: {{known_hosts: "{{state_dir}}/known_hosts"}}
    gateways:
      - name: m1
        board: rpi4
        radio:
          port: "{{state_dir}}/radio/m1"
          driver: skstack
          dialect: bp35c0
          route_b:
            id_env: T53_ROUTE_B_ID
            password_env: T53_ROUTE_B_PASSWORD
            scan_duration: 2
    """)


@pytest.fixture(scope="module")
def route_b_rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The scratch lab up, its meter taking CREDENTIALS (the lab reads them when it starts)."""
    path = tmp_path_factory.mktemp(LAB_ID) / f"{LAB_ID}.yaml"
    path.write_text(RIG)
    lab = VirtualLab(load_rig(path))
    try:
        with pytest.MonkeyPatch.context() as env:
            for name, value in CREDENTIALS.items():
                env.setenv(name, value)
            lab.up()
        yield path
    finally:
        lab.down(purge=True)
        assert leftovers(lab) == []


def _suite(rig: Path, runs: Path, env: dict[str, str], *args: str) -> tuple[str, Path]:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "suites/test_mesh.py", f"--rig={rig}",
         f"--runs-dir={runs}", "-p", "no:cacheprovider", "-q", "-rs", *args],
        cwd=REPO, capture_output=True, text=True, check=False, timeout=300,
        env={**os.environ, **env},
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    (run_dir,) = runs.iterdir()
    return output, run_dir


def _records(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.open()]


def _outcomes(run_dir: Path) -> dict[str, tuple[str, str]]:
    """test name -> (outcome, message)."""
    return {
        str(o["test"]).split("::")[-1].split("[")[0]: (str(o["outcome"]), str(o["message"]))
        for o in _records(run_dir / "outcomes.jsonl")
    }


def _leaked(run_dir: Path, secrets: list[str]) -> list[str]:
    return [
        str(f.relative_to(run_dir))
        for f in run_dir.rglob("*")
        if f.is_file() and any(s.encode() in f.read_bytes() for s in secrets)
    ]


def test_mesh_suite_measures_delivery_to_the_joined_meter(
    route_b_rig: Path, tmp_path: Path
) -> None:
    output, run_dir = _suite(route_b_rig, tmp_path / "runs", CREDENTIALS,
                             "--mesh-probes=40", "--mesh-probe-rate=20")  # fmt: skip
    outcomes = _outcomes(run_dir)
    assert outcomes["test_delivery_by_hop_count"][0] == "passed", output[-3000:]
    outcome, why = outcomes["test_recovery_after_parent_dies"]
    assert outcome == "skipped" and "not a mesh: there is no parent meter to kill" in why
    outcome, why = outcomes["test_attenuation_sweep"]
    assert outcome == "skipped" and "gateway m1 has no attenuator" in why
    outcome, why = outcomes["test_mesh_delivery_with_backhaul_down"]
    assert outcome == "skipped" and "no backhaul capability" in why

    meter = link_local_address(METER_MAC)
    by_metric: dict[str, list[dict[str, object]]] = {}
    for record in _records(run_dir / "measurements.jsonl"):
        by_metric.setdefault(str(record["metric"]), []).append(record)
    routes = [r["value"] for r in by_metric["mesh.routes"]]
    assert routes and set(routes) == {1}  # each test that opened the radio saw one route
    probes = [r["parameters"] for r in by_metric["mesh.probe.delivered"]]
    assert len(probes) == 40
    assert all(isinstance(p, dict) and (p["destination"], p["hops"]) == (meter, 1) for p in probes)
    delivered = sum(1 for r in by_metric["mesh.probe.delivered"] if r["value"])
    assert 0 < delivered <= 40
    sent = {r["parameters"]["hops"]: r["value"] for r in by_metric["mesh.delivery.sent"]}
    assert sent == {1: 40, "all": 40}

    transcript = (run_dir / "serial" / "m1.log").read_text()
    assert "SKSETRBID <secret>" in transcript and "SKJOIN " in transcript
    assert "SKSCAN 2 FFFFFFFF 2 0" in transcript  # bp35c0 dialect, scan_duration from the rig
    assert _leaked(run_dir, [RBID, PASSWORD]) == []


@pytest.mark.skipif(
    os.environ.get("FIELDRIG_FULL_BENCH") != "1",
    reason="a second suite run (about 11 s): FIELDRIG_FULL_BENCH=1",
)
def test_wrong_route_b_password_is_one_infrastructure_error(
    route_b_rig: Path, tmp_path: Path
) -> None:
    wrong = {**CREDENTIALS, "T53_ROUTE_B_PASSWORD": "NOTTHEPASSWORD"}
    output, run_dir = _suite(route_b_rig, tmp_path / "runs", wrong,
                             "-k", "delivery_by_hop_count or recovery")  # fmt: skip
    assert output.count("INFRASTRUCTURE ERROR radio of gateway m1 unavailable") == 1
    events = [e for e in _records(run_dir / "events.jsonl") if e["kind"] == "radio_failed"]
    assert len(events) == 1
    message = str(events[0]["message"])
    assert f"{route_b_rig}: gateway m1: Route-B join failed:" in message and "EVENT 24" in message
    outcomes = _outcomes(run_dir)
    assert set(outcomes) == {"test_delivery_by_hop_count", "test_recovery_after_parent_dies"}
    for outcome, why in outcomes.values():
        assert outcome == "skipped" and "Route-B join failed" in why
    assert _leaked(run_dir, [RBID, PASSWORD, "NOTTHEPASSWORD"]) == []


def test_lab_radio_service_serves_a_route_b_dongle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lab's radio service in-process (no namespaces): a Route-B dongle of the rig's
    dialect on the pty the rig names, its meter taking only the credentials the lab's
    environment held, and a control socket that says there is no mesh to act on."""
    path = tmp_path / f"{LAB_ID}.yaml"
    path.write_text(RIG.replace(f"/var/lib/fieldrig/{LAB_ID}", str(tmp_path / "state")))
    rig = load_rig(path)
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    lab = RadioLab(rig)
    lab.start()
    try:
        link = rig.gateway("m1").radio
        assert link is not None
        with SerialPort(link.port, name="m1-radio") as port:
            radio = SkstackRadio(port, dialect="bp35c0")
            with pytest.raises(SkstackError, match="EVENT 24"):
                radio.join(RBID, "NOTTHEPASSWORD", scan_duration=2, scan_timeout_s=3.0)
            meter = radio.join(RBID, PASSWORD, scan_duration=2, scan_timeout_s=3.0)
            assert (meter.mac, radio.identify().protocol) == (METER_MAC, "skstack bp35c0")
        answer = lab.handle(b'{"gateway": "m1", "op": "power_off", "address": "x"}')
        assert answer["ok"] is False and "Route-B dongle with one meter" in answer["error"]
    finally:
        lab.stop()
    assert not Path(link.port).exists()  # unplugged
