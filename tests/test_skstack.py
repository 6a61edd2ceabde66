"""SkstackDriver against SkstackEmulator over real pseudo-terminals."""

from __future__ import annotations

import ast
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.radio.skstack_driver import (
    EVENT_SESSION_EXPIRED,
    DataFormat,
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
from bench.radio.skstack_stream import RawErxudp, SkstackStream
from bench.transport.ptyport import PtyDevice
from bench.transport.serial import SerialPort


@pytest.fixture
def dongle(device: PtyDevice) -> Iterator[SkstackEmulator]:
    """A factory-fresh dongle: ERXUDP data as raw bytes (ROPT 00)."""
    with SkstackEmulator(device, seed=1, data_format="binary") as emulator:
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


@pytest.mark.parametrize("data_format", ["binary", "hex"])
def test_udp_request_response(
    driver: SkstackDriver, dongle: SkstackEmulator, data_format: DataFormat
) -> None:
    dongle.option = 0 if data_format == "binary" else 1
    assert driver.ensure_data_format() == data_format
    dongle.responder = lambda port, data: b"\x10\x81" + data[::-1]
    driver.join(dongle.meter.ipv6, timeout=2.0)
    payload = bytes(range(256)) + b"\r\n raw\r\n"
    answer = driver.request(dongle.meter.ipv6, 0x0E1A, payload, timeout=2.0)
    assert answer == b"\x10\x81" + payload[::-1]
    assert dongle.commands[-1].startswith("SKSENDTO 1 ")
    raw = f" {len(answer):04X} ".encode() + answer[:4] in _rx_bytes(driver.port)
    assert raw == (data_format == "binary")  # the bytes themselves, not hex text
    assert driver.stats["udp_received"] == 1 and not driver.events


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


def test_timeout_names_its_deadline_in_one_line(
    driver: SkstackDriver, dongle: SkstackEmulator
) -> None:
    dongle.silent = True
    with pytest.raises(SkstackTimeout) as err:
        driver.version(timeout=0.3)
    message = str(err.value)
    assert "\n" not in message
    assert driver.port.label in message and "SKVER" in message and "within 0.3 s" in message
    dongle.silent = False  # the dongle answers again: the driver was not left waiting
    assert driver.version() == "1.2.10"


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
    stranger = "FE80:0000:0000:0000:0000:0000:0000:0001"
    assert driver.ping(stranger, timeout=0.3) is False
    assert dongle.commands[-1] == f"SKPING {stranger}"  # sent, accepted, never answered
    assert not driver.events
    assert driver.version() == "1.2.10"  # and the driver is free for the next command


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
        assert drv.send_udp(emu.meter.ipv6, 0x0E1A, b"late", 2.0) is True
        assert drv.version() == "1.2.10"
        assert not any(isinstance(i, UdpDatagram) for i in drv.events)  # not yet answered
        item = drv.wait_for(lambda i: isinstance(i, UdpDatagram), 2.0, "-", "ERXUDP")
        assert isinstance(item, UdpDatagram) and item.data == b"late"
        received = _rx_bytes(port)
        assert 0 <= received.index(b"EVER 1.2.10") < received.index(b"ERXUDP")  # SKVER first


# -- ERXUDP data as raw bytes (ROPT 00) or hex text (ROPT 01) ---------------------------------

METER_IP = "FE80:0000:0000:0000:021D:1290:1234:5678"
SELF_IP = "FE80:0000:0000:0000:021D:1290:0000:3C89"
TRICKY = b"\x10\x81\r\nERXUDP " + METER_IP.encode() + b" 0E1A\r\nOK\r\nEVENT 21 \n\r\x00\xff"


def _erxudp(data: bytes, data_format: DataFormat, side: str = "") -> bytes:
    body = data if data_format == "binary" else data.hex().upper().encode()
    head = f"ERXUDP {METER_IP} {SELF_IP} 0E1A 0E1A 001D129012345678 1{side} {len(data):04X} "
    return head.encode() + body + b"\r\n"


def _items(stream: SkstackStream) -> list[str | RawErxudp]:
    items: list[str | RawErxudp] = []
    while (item := stream.next()) is not None:
        items.append(item)
    return items


@pytest.mark.parametrize(("data_format", "side"), [("binary", ""), ("hex", ""), ("binary", " 0")])
def test_stream_erxudp_split_at_every_byte_boundary(data_format: DataFormat, side: str) -> None:
    wire = b"EVENT 21 " + METER_IP.encode() + b" 00\r\n" + _erxudp(TRICKY, data_format, side)
    wire += b"OK\r\n"
    fields = ("0E1A", "0E1A", "001D129012345678", "1") + ((side.strip(),) if side else ())
    want = [
        f"EVENT 21 {METER_IP} 00",
        RawErxudp((METER_IP, SELF_IP, *fields), TRICKY, data_format == "binary"),
        "OK",
    ]
    for cut in range(len(wire) + 1):
        stream = SkstackStream(7 if side else 6)
        stream.feed(wire[:cut])
        got = _items(stream)
        stream.feed(wire[cut:])
        assert got + _items(stream) == want, cut
        assert stream.pending == 0
    stream = SkstackStream(7 if side else 6)  # one byte at a time
    got = []
    for byte in wire:
        stream.feed(bytes([byte]))
        got += _items(stream)
    assert got == want


def test_stream_the_same_bytes_read_by_their_datalen() -> None:
    """The bytes "ABCD" CR LF are 2 bytes of hex text after datalen 0002, 4 raw bytes after 0004."""
    stream = SkstackStream(6)
    head = f"ERXUDP {METER_IP} {SELF_IP} 0E1A 0E1A 001D129012345678 1 "
    stream.feed(f"{head}0002 ABCD\r\n{head}0004 ABCD\r\n".encode())
    hex_item, raw_item = _items(stream)
    assert isinstance(hex_item, RawErxudp) and isinstance(raw_item, RawErxudp)
    assert (hex_item.data, hex_item.binary) == (b"\xab\xcd", False)
    assert (raw_item.data, raw_item.binary) == (b"ABCD", True)


def test_stream_malformed_erxudp_is_handed_on_as_text() -> None:
    head = f"ERXUDP {METER_IP} {SELF_IP} 0E1A 0E1A 001D129012345678 1"
    stream = SkstackStream(6)
    stream.feed(f"{head}\r\n{head} 04D1 00\r\n".encode())  # no datalen; datalen > 0x4D0
    stream.feed(f"{head} 0003 abcd\r\nOK\r\n".encode())  # 4 bytes where 3 were announced
    assert _items(stream) == [head, f"{head} 04D1 00", f"{head} 0003 abcd", "OK"]
    stream.hex_only = True  # ROPT said 01: a raw-shaped line is not waited on
    stream.feed(f"{head} 0010 \r\nOK\r\n".encode())
    assert _items(stream) == [f"{head} 0010 ", "OK"]


def test_ropt_binary_reads_raw_data_and_never_writes_flash(
    driver: SkstackDriver, dongle: SkstackEmulator
) -> None:
    assert driver.data_format is None
    assert driver.ensure_data_format() == "binary" and driver.data_format == "binary"
    assert driver.ensure_data_format() == "binary"  # asked once
    dongle.responder = lambda port, data: TRICKY
    answer = driver.request(dongle.meter.ipv6, 0x0E1A, b"get", timeout=2.0)
    assert answer == TRICKY
    assert driver.version() == "1.2.10"  # the OK inside the data was no reply
    assert [c for c in dongle.commands if "OPT" in c] == ["ROPT"]
    assert dongle.flash_writes == 0 and driver.stats["wopt_written"] == 0
    assert not driver.events and driver.stats["erxudp_malformed"] == 0


@pytest.mark.parametrize("dialect", ["bp35a1", "bp35c0"])
def test_write_ascii_option_writes_once_and_only_when_binary(
    device: PtyDevice, tmp_path: Path, dialect: Dialect
) -> None:
    with SkstackEmulator(device, dialect=dialect, responder=echo_responder) as emu:
        for opening in range(2):
            with _open(device, tmp_path, f"sk{opening}") as port:
                drv = SkstackDriver(port, dialect=dialect, write_ascii_option=True)
                assert drv.ensure_data_format() == "hex"
                assert drv.ensure_data_format() == "hex"
                assert drv.stats["wopt_written"] == (1 if opening == 0 else 0)
                assert drv.request(emu.meter.ipv6, 0x0E1A, TRICKY, 2.0) == TRICKY
                hex_text = f" {len(TRICKY):04X} {TRICKY.hex().upper()}\r\n".encode()
                assert hex_text in _rx_bytes(port)  # the dongle now sends hex text
        assert emu.flash_writes == 1 and emu.option == 1
        assert [c for c in emu.commands if "OPT" in c] == ["ROPT", "WOPT 01", "ROPT", "ROPT"]
        emu.device.replug()  # the option is in flash: a power cycle keeps it
        with _open(device, tmp_path, "sk2") as port:
            assert SkstackDriver(port, dialect=dialect).ensure_data_format() == "hex"


def test_firmware_without_ropt_is_read_as_hex(
    device: PtyDevice, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        SkstackEmulator(
            device, opt_commands=False, data_format="hex", responder=echo_responder
        ) as emu,
        _open(device, tmp_path) as port,
    ):
        drv = SkstackDriver(port, write_ascii_option=True)
        with caplog.at_level(logging.INFO, logger="bench.radio.skstack"):
            assert drv.ensure_data_format() == "hex"
        assert "no ROPT (FAIL ER04)" in caplog.text and port.label in caplog.text
        assert drv.stats["ropt_unsupported"] == 1 and drv.stats["wopt_written"] == 0
        assert not any("WOPT" in ln for ln in _tx(port))
        answer = drv.request(emu.meter.ipv6, 0x0E1A, b"\x10\x81\r\n", 2.0)
        assert answer == b"\x10\x81\r\n"
    with pytest.raises(SkstackUsageError, match="hex only"):
        SkstackEmulator(device, opt_commands=False)


def test_datagram_in_the_other_shape_is_read_and_counted(
    driver: SkstackDriver, dongle: SkstackEmulator
) -> None:
    assert driver.ensure_data_format() == "binary"
    dongle.responder = echo_responder
    dongle.option = 1  # another program wrote WOPT 01 behind the driver's back
    assert driver.request(dongle.meter.ipv6, 0x0E1A, b"\r\nabc", timeout=2.0) == b"\r\nabc"
    assert driver.stats["erxudp_unexpected_format"] == 1


@pytest.mark.parametrize(
    "where", ["header", "before datalen's space", "data start", "data CR", "data LF", "trailer LF"]
)
def test_binary_erxudp_in_two_writes_over_a_pty(
    driver: SkstackDriver, dongle: SkstackEmulator, where: str
) -> None:
    wire = _erxudp(TRICKY, "binary")
    start = len(wire) - len(TRICKY) - 2
    cut = {
        "header": 20,
        "before datalen's space": start - 1,
        "data start": start,
        "data CR": start + 2,
        "data LF": start + 3,
        "trailer LF": len(wire) - 1,
    }[where]
    dongle.send_raw(wire[:cut])
    assert not [i for i in driver.poll(0.1) if isinstance(i, UdpDatagram)]
    dongle.send_raw(wire[cut:] + b"EVENT 22 " + SELF_IP.encode() + b"\r\n")
    item = driver.wait_for(lambda i: isinstance(i, UdpDatagram), 2.0, "-", "ERXUDP")
    assert isinstance(item, UdpDatagram) and item.binary
    assert (item.sender, item.rport, item.data) == (METER_IP, 0x0E1A, TRICKY)
    assert driver.poll(0.1) == [SkEvent(0x22, SELF_IP)]
