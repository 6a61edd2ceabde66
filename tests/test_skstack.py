"""SkstackDriver against SkstackEmulator over real pseudo-terminals."""

from __future__ import annotations

import ast
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.radio.skstack_driver import (
    EVENT_SESSION_EXPIRED,
    Dialect,
    SkEvent,
    SkstackDriver,
    SkstackError,
    SkstackTimeout,
    SkstackUsageError,
    UdpDatagram,
    link_local_address,
)
from bench.radio.skstack_emulator import SkstackEmulator, datagram_airtime_s, echo_responder
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


# -- BP35C0 dialect, SKPING, transmit-time limit, credentials ---------------------------------


def _open(device: PtyDevice, tmp_path: Path, name: str = "sk") -> SerialPort:
    port = SerialPort(str(device.path), name=name, transcript=tmp_path / f"{name}.log")
    port.open()
    return port


def _tx(port: SerialPort) -> list[str]:
    assert port.transcript is not None
    return [ln for ln in port.transcript.read_text().splitlines() if " TX " in ln]


def _rx_bytes(port: SerialPort) -> bytes:
    """Everything received, joined: read boundaries depend on timing, the stream does not."""
    assert port.transcript is not None
    chunks = [
        ln.split(" RX ", 1)[1] for ln in port.transcript.read_text().splitlines() if " RX " in ln
    ]
    return b"".join(ast.literal_eval(chunk) for chunk in chunks)


def test_link_local_address_flips_the_ul_bit() -> None:
    assert link_local_address("001D129012345678") == "FE80:0000:0000:0000:021D:1290:1234:5678"
    with pytest.raises(SkstackUsageError, match="16 hex digits"):
        link_local_address("00:1D")


def test_unknown_dialect_is_refused(device: PtyDevice) -> None:
    with SerialPort(str(device.path)) as port, pytest.raises(SkstackUsageError, match="bp35c0"):
        SkstackDriver(port, dialect="bp35x9")  # type: ignore[arg-type]
    with pytest.raises(SkstackUsageError, match="dialect"):
        SkstackEmulator(device, dialect="bp35x9")  # type: ignore[arg-type]


def test_bp35c0_dialect_end_to_end(device: PtyDevice, tmp_path: Path) -> None:
    with SkstackEmulator(device, dialect="bp35c0", seed=1) as emu, _open(device, tmp_path) as port:
        emu.responder = lambda port, data: data[::-1]
        drv = SkstackDriver(port, dialect="bp35c0")
        assert drv.version() == "1.2.10"
        pans = drv.scan(duration=4, timeout=3.0)
        assert [(p.pan_id, p.side, p.pair_id) for p in pans] == [(0x8888, 0, "00AABBCC")]
        drv.join(pans[0].ipv6, timeout=2.0)
        assert drv.session_peer == emu.meter.ipv6
        answer = drv.request(emu.meter.ipv6, 0x0E1A, b"\x10\x81abc", timeout=2.0)
        assert answer == b"cba\x81\x10"
        emu.send_fail_probability = 1.0
        assert drv.send_udp(emu.meter.ipv6, 0x0E1A, b"x", timeout=2.0) is False
        assert drv.stats["udp_sent"] == 1 and drv.stats["udp_send_failed"] == 1
        sent = _tx(port)
        assert any("SKSCAN 2 FFFFFFFF 4 0\\r\\n" in ln for ln in sent)
        assert any(f"SKSENDTO 1 {emu.meter.ipv6} 0E1A 1 0 0005 " in ln for ln in sent)
        emu.expire_session()
        drv.poll(0.3)
        assert SkEvent(EVENT_SESSION_EXPIRED, emu.meter.ipv6, None, 0) in drv.events
        assert drv.session_peer is None


def test_bp35c0_without_echo_answers_sendto_after_an_empty_line(
    device: PtyDevice, tmp_path: Path
) -> None:
    with SkstackEmulator(device, dialect="bp35c0") as emu, _open(device, tmp_path) as port:
        drv = SkstackDriver(port, dialect="bp35c0")
        drv.set_echo(False)
        assert drv.send_udp(emu.meter.ipv6, 0x0E1A, b"abc", timeout=2.0) is True
        assert port.transcript is not None
        assert b"SFE 0\r\nOK\r\n\r\nEVENT 21" in _rx_bytes(port)  # the empty line first


@pytest.mark.parametrize(
    ("driver_dialect", "dongle_dialect"), [("bp35a1", "bp35c0"), ("bp35c0", "bp35a1")]
)
def test_dialect_mismatch_names_the_other_dialect(
    device: PtyDevice, tmp_path: Path, driver_dialect: Dialect, dongle_dialect: Dialect
) -> None:
    with SkstackEmulator(device, dialect=dongle_dialect), _open(device, tmp_path) as port:
        drv = SkstackDriver(port, dialect=driver_dialect)
        with pytest.raises(SkstackError) as err:
            drv.scan(duration=2, timeout=2.0)
        message = str(err.value)
        assert err.value.code == 5 and f"dialect={dongle_dialect!r}" in message
        assert "\n" not in message
        assert drv.version() == "1.2.10"


def test_ping_bp35a1(driver: SkstackDriver, dongle: SkstackEmulator) -> None:
    assert driver.ping(dongle.meter.ipv6, timeout=2.0) is True
    start = time.monotonic()
    assert driver.ping("FE80:0000:0000:0000:0000:0000:0000:0001", timeout=0.3) is False
    assert time.monotonic() - start < 1.0
    assert not driver.events


def test_ping_not_in_bp35c0(device: PtyDevice, tmp_path: Path) -> None:
    with SkstackEmulator(device, dialect="bp35c0") as emu, _open(device, tmp_path) as port:
        drv = SkstackDriver(port, dialect="bp35c0")
        with pytest.raises(SkstackUsageError, match="SKPING"):
            drv.ping(emu.meter.ipv6)
        assert not any("SKPING" in ln for ln in _tx(port))  # refused before writing
        with pytest.raises(SkstackError) as err:
            drv.command(f"SKPING {emu.meter.ipv6}")
        assert err.value.code == 4


@pytest.mark.parametrize("dialect", ["bp35a1", "bp35c0"])
def test_transmit_limit_on_refuse_and_off(
    device: PtyDevice, tmp_path: Path, dialect: Dialect
) -> None:
    payload = bytes(100)
    budget = 2.5 * datagram_airtime_s(len(payload))
    with (
        SkstackEmulator(
            device, dialect=dialect, responder=None, airtime_budget_s=budget, limit_window_s=0.8
        ) as emu,
        _open(device, tmp_path) as port,
    ):
        drv = SkstackDriver(port, dialect=dialect)
        meter = emu.meter.ipv6
        assert [drv.send_udp(meter, 0x0E1A, payload, 2.0) for _ in range(2)] == [True, True]
        assert not drv.transmit_limited and drv.read_register("SFB") == "0"
        assert drv.send_udp(meter, 0x0E1A, payload, 2.0) is True  # uses up the budget
        drv.poll(0.1)
        assert drv.transmit_limited and drv.stats["transmit_limit_on"] == 1
        assert drv.read_register("SFB") == "1"
        assert int(drv.read_register("SFD"), 16) == round(3 * datagram_airtime_s(100) * 1000)
        assert drv.send_udp(meter, 0x0E1A, payload, 2.0) is False  # cancelled, not FAIL
        assert drv.stats["udp_send_failed"] == 1
        deadline = time.monotonic() + 3.0
        while drv.transmit_limited and time.monotonic() < deadline:
            drv.poll(0.1)
        assert not drv.transmit_limited and drv.stats["transmit_limit_off"] == 1
        assert drv.send_udp(meter, 0x0E1A, payload, 2.0) is True


def test_credentials_gate_the_join(device: PtyDevice, tmp_path: Path) -> None:
    rbid, password = "0123456789ABCDEF0123456789ABCDEF", "SECRETPWD123"
    with (
        SkstackEmulator(device, rbid=rbid, password=password) as emu,
        _open(device, tmp_path) as port,
    ):
        drv = SkstackDriver(port)
        with pytest.raises(SkstackUsageError, match="32 letters"):
            drv.set_credentials("short", password)
        assert not any("SKSETRBID" in ln for ln in _tx(port))
        drv.set_credentials(rbid, "WRONG")
        with pytest.raises(SkstackError, match="EVENT 24"):
            drv.join(emu.meter.ipv6, timeout=2.0)
        drv.set_credentials(rbid, password)
        assert emu.credentials == (rbid, password)
        assert any("SKSETPWD C <secret>" in ln for ln in _tx(port))
        drv.join(emu.meter.ipv6, timeout=2.0)
        assert emu.joined == emu.meter.ipv6
        assert port.transcript is not None
        transcript = port.transcript.read_text()
        assert "SKSETRBID <secret>" in transcript  # sent and echoed, both masked
        assert password not in transcript and rbid not in transcript


def test_delayed_answer_does_not_hold_up_commands(device: PtyDevice, tmp_path: Path) -> None:
    with (
        SkstackEmulator(device, responder=echo_responder, answer_delay_s=0.4) as emu,
        _open(device, tmp_path) as port,
    ):
        drv = SkstackDriver(port)
        start = time.monotonic()
        assert drv.send_udp(emu.meter.ipv6, 0x0E1A, b"late", 2.0) is True
        assert drv.version() == "1.2.10"
        assert time.monotonic() - start < 0.3
        assert not any(isinstance(i, UdpDatagram) for i in drv.events)
        item = drv.wait_for(lambda i: isinstance(i, UdpDatagram), 2.0, "-", "ERXUDP")
        assert isinstance(item, UdpDatagram) and item.data == b"late"
        assert time.monotonic() - start >= 0.35
