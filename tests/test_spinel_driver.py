"""SpinelDriver against SpinelEmulator over real pseudo-terminals."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.radio.hdlc import encode_frame
from bench.radio.spinel import (
    PROTOCOL_TYPE_THREAD,
    Cmd,
    Prop,
    SpinelFrame,
    Status,
    pack_uint,
    pack_utf8,
)
from bench.radio.spinel_driver import (
    SpinelDriver,
    SpinelStatusError,
    SpinelTimeout,
    is_reset_status,
    status_name,
)
from bench.radio.spinel_emulator import SpinelEmulator
from bench.transport.ptyport import PtyDevice
from bench.transport.serial import SerialPort


@pytest.fixture
def ncp(device: PtyDevice) -> Iterator[SpinelEmulator]:
    with SpinelEmulator(device) as emulator:
        yield emulator


@pytest.fixture
def port(device: PtyDevice, tmp_path: Path) -> Iterator[SerialPort]:
    transcript = tmp_path / "ncp.log"
    with SerialPort(
        str(device.path), name="ncp", transcript=transcript, reopen_deadline_s=3.0
    ) as p:
        yield p


@pytest.fixture
def driver(ncp: SpinelEmulator, port: SerialPort) -> SpinelDriver:
    return SpinelDriver(port)


def last_status(status: int, tid: int = 0) -> SpinelFrame:
    return SpinelFrame(Cmd.PROP_VALUE_IS, Prop.LAST_STATUS, pack_uint(status), tid=tid)


def bad_fcs_frame() -> bytes:
    good = encode_frame(SpinelFrame(Cmd.PROP_VALUE_IS, Prop.NCP_VERSION, b"x\0", tid=1).encode())
    return good[:-2] + bytes(((good[-2] ^ 0x01),)) + good[-1:]  # flip a bit of the FCS


def test_status_codes_match_spinel_h() -> None:
    assert Status.PROP_NOT_FOUND == 13
    assert Status.RESET_POWER_ON == 112
    assert Status.INVALID_COMMAND == 5
    assert is_reset_status(112) and is_reset_status(127)
    assert not is_reset_status(111) and not is_reset_status(128)
    assert status_name(13) == "PROP_NOT_FOUND (13)"
    assert status_name(125) == "RESET_13 (125)"


def test_identify_returns_what_the_emulator_holds(
    ncp: SpinelEmulator, driver: SpinelDriver
) -> None:
    ident = driver.identify()
    assert ident == {
        "protocol_version": (4, 3),
        "ncp_version": ncp.ncp_version,
        "interface_type": PROTOCOL_TYPE_THREAD,
        "vendor_id": ncp.vendor_id,
        "caps": list(ncp.caps),
        "hwaddr": ncp.hwaddr.hex(":"),
    }
    assert driver.bad_frames == 0 and driver.stray == 0 and not driver.unsolicited


def test_request_bytes_on_the_wire(ncp: SpinelEmulator, driver: SpinelDriver) -> None:
    driver.get(Prop.PROTOCOL_VERSION)
    assert ncp.requests[-1] == SpinelFrame(Cmd.PROP_VALUE_GET, Prop.PROTOCOL_VERSION, tid=1)
    # the documented example frame, written by hand, is understood by the emulator
    driver.port.write(bytes.fromhex("7E810201C5B27E"))
    time.sleep(0.2)
    replies = driver.port.read_available()
    assert replies.startswith(b"\x7e\x81\x06\x01\x04\x03")  # VALUE_IS PROTOCOL_VERSION 4.3


def test_tids_rotate_1_to_15_and_skip_0(ncp: SpinelEmulator, driver: SpinelDriver) -> None:
    for _ in range(17):
        driver.get(Prop.INTERFACE_TYPE)
    assert [f.tid for f in ncp.requests] == [*range(1, 16), 1, 2]


def test_unsolicited_frame_between_request_and_reply(
    ncp: SpinelEmulator, driver: SpinelDriver
) -> None:
    note = SpinelFrame(Cmd.PROP_VALUE_IS, Prop.NET_ROLE, b"\x01", tid=0)
    # a notification with the very property asked for, and one LAST_STATUS (TID 0)
    same_prop = SpinelFrame(Cmd.PROP_VALUE_IS, Prop.NCP_VERSION, pack_utf8("bogus"), tid=0)
    for frame in (note, same_prop, last_status(Status.RESET_SOFTWARE)):
        ncp.inject_before_next_reply(encode_frame(frame.encode()))
    assert driver.get(Prop.NCP_VERSION) == pack_utf8(ncp.ncp_version)
    assert list(driver.unsolicited) == [note, same_prop, last_status(Status.RESET_SOFTWARE)]


def test_reply_with_another_tid_is_not_taken(ncp: SpinelEmulator, driver: SpinelDriver) -> None:
    late = SpinelFrame(Cmd.PROP_VALUE_IS, Prop.INTERFACE_TYPE, pack_uint(99), tid=7)
    ncp.inject_before_next_reply(encode_frame(late.encode()))
    assert driver.get(Prop.INTERFACE_TYPE) == pack_uint(PROTOCOL_TYPE_THREAD)
    assert driver.stray == 1


def test_line_noise_and_bad_fcs_do_not_break_the_next_exchange(
    ncp: SpinelEmulator, driver: SpinelDriver
) -> None:
    # host -> NCP: garbage and a corrupted frame; the NCP drops them silently
    driver.port.write(b"\x00\xff\x13garbage\x7d")
    driver.port.write(bad_fcs_frame())
    assert driver.identify()["protocol_version"] == (4, 3)
    assert ncp.bad_frames >= 1
    # NCP -> host: noise, a corrupted frame, a runt and an abort right before the reply
    ncp.inject_before_next_reply(b"\x01\x02noise\x7e\x11\x7e")
    ncp.inject_before_next_reply(bad_fcs_frame())
    ncp.inject_before_next_reply(b"\x7e\x81\x06\x7d\x7e")
    assert driver.get(Prop.HWADDR) == ncp.hwaddr
    assert driver.bad_frames >= 2
    # noise emitted while nobody is asking anything
    ncp.send_raw(b"\x7e\xde\xad\xbe\xef")
    time.sleep(0.05)
    assert driver.get(Prop.NCP_VERSION) == pack_utf8(ncp.ncp_version)
    assert driver.bad_frames >= 3
    assert not driver.unsolicited


def test_unknown_property_raises_status_error(driver: SpinelDriver) -> None:
    with pytest.raises(SpinelStatusError) as info:
        driver.get(0x1234)
    message = str(info.value)
    assert "\n" not in message
    assert "0x1234" in message and "PROP_NOT_FOUND (13)" in message and "ncp" in message
    assert info.value.status == Status.PROP_NOT_FOUND and info.value.prop == 0x1234
    assert driver.get(Prop.INTERFACE_TYPE) == pack_uint(PROTOCOL_TYPE_THREAD)


def test_set_goes_through_a_pluggable_property(ncp: SpinelEmulator, driver: SpinelDriver) -> None:
    role = bytearray(b"\x00")

    def set_role(value: bytes) -> None:
        role[:] = value

    ncp.add_property(Prop.NET_ROLE, lambda: bytes(role), set_role)
    assert driver.get(Prop.NET_ROLE) == b"\x00"
    assert driver.set(Prop.NET_ROLE, b"\x02") == b"\x02"
    assert driver.get(Prop.NET_ROLE) == b"\x02"
    with pytest.raises(SpinelStatusError, match="PROP_VALUE_SET HWADDR"):
        driver.set(Prop.HWADDR, b"\x00" * 8)  # read-only: no setter


def test_reset_waits_for_the_notification(ncp: SpinelEmulator, driver: SpinelDriver) -> None:
    ncp.reset_delay_s = 0.3
    ncp.reset_status = Status.RESET_WATCHDOG
    # the status can only come from the notification the NCP sends after its delay
    assert driver.reset(timeout=2.0) == Status.RESET_WATCHDOG
    assert ncp.resets == 1
    assert not driver.unsolicited  # the reset notification is consumed, not queued
    assert driver.identify()["ncp_version"] == ncp.ncp_version


def test_silent_ncp_times_out_fast_with_one_line(ncp: SpinelEmulator, driver: SpinelDriver) -> None:
    driver.get(Prop.NCP_VERSION)
    ncp.silent = True
    with pytest.raises(SpinelTimeout) as info:
        driver.get(Prop.HWADDR, timeout=0.3)
    message = str(info.value)
    assert "within 0.3 s" in message  # it gave up at the timeout it was given
    assert "\n" not in message
    assert "HWADDR" in message and "TID 2" in message and str(driver.port.url) in message
    with pytest.raises(SpinelTimeout, match="RESET"):
        driver.reset(timeout=0.2)
    ncp.silent = False
    assert driver.get(Prop.HWADDR) == ncp.hwaddr


def test_unplug_and_replug_then_identify_again(
    device: PtyDevice, ncp: SpinelEmulator, driver: SpinelDriver
) -> None:
    before = driver.identify()
    device.unplug()
    replug = threading.Timer(0.3, device.replug)
    replug.start()
    try:
        assert driver.identify(timeout=3.0) == before
    finally:
        replug.join()
    assert driver.port.transcript is not None
    assert " EV reopened" in driver.port.transcript.read_text()


def test_replugged_while_idle(device: PtyDevice, ncp: SpinelEmulator, driver: SpinelDriver) -> None:
    before = driver.identify()
    device.unplug()
    device.replug()
    assert driver.identify(timeout=3.0) == before
    assert driver.port.transcript is not None
    assert " EV reopened" in driver.port.transcript.read_text()
