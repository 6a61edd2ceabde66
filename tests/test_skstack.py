"""SkstackDriver against SkstackEmulator over real pseudo-terminals."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.radio.skstack_driver import (
    EVENT_SESSION_EXPIRED,
    SkEvent,
    SkstackDriver,
    SkstackError,
    SkstackTimeout,
)
from bench.radio.skstack_emulator import SkstackEmulator
from bench.transport.ptyport import PtyDevice
from bench.transport.serial import SerialPort


@pytest.fixture
def dongle(device: PtyDevice) -> Iterator[SkstackEmulator]:
    with SkstackEmulator(device, seed=1) as emulator:
        yield emulator


@pytest.fixture
def driver(device: PtyDevice, dongle: SkstackEmulator, tmp_path: Path) -> Iterator[SkstackDriver]:
    with SerialPort(
        str(device.path), name="wisun", transcript=tmp_path / "sk.log", reopen_deadline_s=3.0
    ) as port:
        yield SkstackDriver(port)


def test_version_and_info(driver: SkstackDriver, dongle: SkstackEmulator) -> None:
    assert driver.version() == "1.2.10"
    info = driver.info()
    assert info.ipv6 == dongle.ipv6
    assert info.mac == dongle.mac
    assert (info.channel, info.pan_id, info.addr16) == (0x21, 0x8888, 0xFFFE)


def test_echo_on_and_off(driver: SkstackDriver, dongle: SkstackEmulator) -> None:
    log = driver.port.transcript
    assert log is not None
    assert driver.version() == "1.2.10"
    rx_on = [ln for ln in log.read_text().splitlines() if " RX " in ln]
    assert any("SKVER" in ln for ln in rx_on)  # echoed, yet the reply was still parsed
    driver.set_echo(False)
    assert dongle.registers["SFE"] == "0"
    before = len(log.read_text())
    assert driver.version() == "1.2.10"
    rx = [ln for ln in log.read_text()[before:].splitlines() if " RX " in ln]
    assert not any("SKVER" in ln for ln in rx)
    driver.set_echo(True)
    assert driver.info().mac == dongle.mac


def test_scan_finds_meter_pan(driver: SkstackDriver, dongle: SkstackEmulator) -> None:
    pans = driver.scan(duration=4, timeout=3.0)
    assert len(pans) == 1
    pan = pans[0]
    assert (pan.channel, pan.channel_page, pan.pan_id) == (0x21, 0x09, 0x8888)
    assert pan.addr == dongle.meter.mac
    assert pan.lqi == 0xE1
    assert pan.pair_id == "00AABBCC"
    assert not driver.events  # beacons and scan-done consumed


def test_join_success_and_failure(driver: SkstackDriver, dongle: SkstackEmulator) -> None:
    driver.join(dongle.meter.ipv6, timeout=2.0)
    assert dongle.joined == dongle.meter.ipv6
    dongle.join_ok = False
    with pytest.raises(SkstackError, match="EVENT 24") as err:
        driver.join(dongle.meter.ipv6, timeout=2.0)
    assert "\n" not in str(err.value)


def test_udp_request_response(driver: SkstackDriver, dongle: SkstackEmulator) -> None:
    dongle.responder = lambda port, data: b"\x10\x81" + data[::-1]
    driver.join(dongle.meter.ipv6, timeout=2.0)
    payload = bytes(range(256)) + b"\r\n raw\r\n"
    answer = driver.request(dongle.meter.ipv6, 0x0E1A, payload, timeout=2.0)
    assert answer == b"\x10\x81" + payload[::-1]
    assert dongle.commands[-1].startswith("SKSENDTO 1 ")


def test_send_failure_event(driver: SkstackDriver, dongle: SkstackEmulator) -> None:
    dongle.send_fail_probability = 1.0
    assert driver.send_udp(dongle.meter.ipv6, 0x0E1A, b"hello", timeout=2.0) is False
    assert driver.request(dongle.meter.ipv6, 0x0E1A, b"hello", timeout=1.0) is None
    dongle.send_fail_probability = 0.0
    assert driver.send_udp(dongle.meter.ipv6, 0x0E1A, b"hello", timeout=2.0) is True


def test_send_failures_follow_seed(device: PtyDevice, tmp_path: Path) -> None:
    outcomes = []
    for _ in range(2):
        with (
            SkstackEmulator(device, seed=7, send_fail_probability=0.5, responder=None) as emu,
            SerialPort(str(device.path)) as port,
        ):
            drv = SkstackDriver(port)
            outcomes.append([drv.send_udp(emu.meter.ipv6, 1, b"x", 2.0) for _ in range(8)])
    assert outcomes[0] == outcomes[1]
    assert True in outcomes[0] and False in outcomes[0]


@pytest.mark.parametrize(
    ("command", "code", "meaning"),
    [
        ("SKBOGUS", 4, "unsupported"),
        ("SKVER 1", 5, "wrong argument count"),
        ("SKSCAN 2 FFFFFFFF 1F", 6, "out of range"),
        ("SKJOIN nonsense", 6, "out of range"),
    ],
)
def test_fail_codes(driver: SkstackDriver, command: str, code: int, meaning: str) -> None:
    with pytest.raises(SkstackError) as err:
        driver.command(command, timeout=2.0)
    assert err.value.code == code
    message = str(err.value)
    assert command.split()[0] in message and f"ER{code:02d}" in message and meaning in message
    assert "\n" not in message
    assert driver.version() == "1.2.10"  # still in step afterwards


def test_session_expiry_event_queued(driver: SkstackDriver, dongle: SkstackEmulator) -> None:
    driver.join(dongle.meter.ipv6, timeout=2.0)
    dongle.expire_session()
    assert driver.version() == "1.2.10"
    assert SkEvent(EVENT_SESSION_EXPIRED, dongle.meter.ipv6) in driver.events


def test_unplug_replug(driver: SkstackDriver, device: PtyDevice) -> None:
    assert driver.version() == "1.2.10"
    device.unplug()
    time.sleep(0.1)
    device.replug()
    assert driver.version(timeout=3.0) == "1.2.10"
    assert driver.info().channel == 0x21


def test_timeout_is_fast_and_one_line(driver: SkstackDriver, dongle: SkstackEmulator) -> None:
    dongle.silent = True
    start = time.monotonic()
    with pytest.raises(SkstackTimeout) as err:
        driver.version(timeout=0.3)
    assert time.monotonic() - start < 1.0
    message = str(err.value)
    assert "\n" not in message
    assert driver.port.label in message and "SKVER" in message
