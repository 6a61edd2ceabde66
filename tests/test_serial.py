"""SerialPort against real pseudo-terminals, a loopback TCP server and loop://."""

from __future__ import annotations

import ast
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bench.errors import TransportError
from bench.transport.ptyport import PtyDevice
from bench.transport.serial import SerialPort, SerialTimeout

STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00"


def start_thread(target: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def responder(device: PtyDevice) -> Iterator[PtyDevice]:
    """Answer every line 'X' with 'echo X' (and keep answering across unplug/replug)."""
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            line = device.read_line(0.05)
            if line is not None:
                device.write_line(f"echo {line}")

    thread = start_thread(serve)
    yield device
    stop.set()
    thread.join(2)


def test_write_line_read_line_round_trip(responder: PtyDevice) -> None:
    with SerialPort(str(responder.path), name="dongle") as port:
        assert port.is_open
        for text in ("hello", "second line", "ünïcode"):
            port.write_line(text)
            assert port.read_line(2.0) == f"echo {text}"
    assert not port.is_open


def test_expect_finds_pattern_among_noise(device: PtyDevice) -> None:
    with SerialPort(str(device.path)) as port:
        device.write(b"boot: stage 1\r\nnoise \x00\xff\r\nNCP ready fw=1.4.2\r\ntrailing\r\n")
        match = port.expect(re.compile(r"ready fw=(\S+)"), 2.0)
        assert match.group(1) == "1.4.2"
        assert list(port.unmatched) == ["boot: stage 1", "noise \x00\ufffd"]
        assert port.read_line(1.0) == "trailing"  # lines after the match stay for later


def test_timeout_is_quick_and_names_last_lines(device: PtyDevice) -> None:
    with SerialPort(str(device.path), name="ncp") as port:
        device.write(b"".join(f"log {i}\r\n".encode() for i in range(8)) + b"partial")
        start = time.monotonic()
        with pytest.raises(SerialTimeout) as info:
            port.expect("READY", 0.3)
        assert time.monotonic() - start < 1.0
        message = str(info.value)
        assert "\n" not in message
        assert "serial port ncp" in message and "'READY'" in message
        assert "log 7" in message and "log 3" in message and "log 2" not in message
        assert "partial" in message
        assert len(port.unmatched) == 8
        with pytest.raises(SerialTimeout, match="received so far"):
            port.read_line(0.1)
        assert isinstance(info.value, TransportError)


def test_partial_lines_stay_buffered(device: PtyDevice) -> None:
    with SerialPort(str(device.path)) as port:
        device.write(b"hel")
        time.sleep(0.1)
        device.write(b"lo\r\nwor")
        assert port.read_line(2.0) == "hello"
        with pytest.raises(SerialTimeout):
            port.read_line(0.1)
        device.write(b"ld\r\n\x7e\x81\x02\x7eABCDEF")
        assert port.read_line(2.0) == "world"
        assert port.read_until(b"\x7e", 1.0) == b"\x7e"
        assert port.read_until(b"\x7e", 1.0) == b"\x81\x02\x7e"
        assert port.read_exactly(2, 1.0) == b"AB"
        with pytest.raises(SerialTimeout, match="got 4 of 5 bytes"):
            port.read_exactly(5, 0.1)
        assert port.read_available() == b"CDEF"
        assert port.read_available() == b""
        device.write(b"stale\r\n")
        time.sleep(0.1)
        port.reset_input()
        device.write(b"fresh\r\n")
        assert port.read_line(1.0) == "fresh"


def test_transcript_logs_rx_tx_and_events_flushed(responder: PtyDevice, tmp_path: Path) -> None:
    transcript = tmp_path / "runs" / "serial.log"
    with SerialPort(str(responder.path), transcript=transcript) as port:
        port.write_line("ping")
        assert port.read_line(2.0) == "echo ping"
        lines = transcript.read_text().splitlines()  # read while still open: flushed
        assert all(re.fullmatch(rf"{STAMP} (RX|TX|EV) .+", line) for line in lines), lines
        assert re.fullmatch(rf"{STAMP} EV open .*", lines[0])
        assert any(line.endswith(r"TX b'ping\r\n'") for line in lines)
        received = b"".join(
            ast.literal_eval(line.split(" RX ", 1)[1]) for line in lines if " RX " in line
        )
        assert received == b"echo ping\r\n"
    assert transcript.read_text().splitlines()[-1].endswith(" EV close")


def test_unplug_and_replug_within_deadline_reconnects(responder: PtyDevice, tmp_path: Path) -> None:
    transcript = tmp_path / "t.log"
    port = SerialPort(str(responder.path), transcript=transcript, reopen_deadline_s=5.0)
    with port:
        port.write_line("before")
        assert port.read_line(2.0) == "echo before"

        responder.unplug()
        replugger = threading.Timer(0.3, responder.replug)
        replugger.start()
        port.write_line("after")  # fails on the dead pty, reconnects, retries once
        assert port.read_line(2.0) == "echo after"
        replugger.join()

        # Lost while waiting in a read: the read carries on after the reconnect.
        def cycle() -> None:
            responder.unplug()
            time.sleep(0.2)
            responder.replug()
            while not port.is_open:
                time.sleep(0.01)
            time.sleep(0.05)
            responder.write_line("hello again")

        thread = start_thread(cycle)
        assert port.read_line(5.0) == "hello again"
        thread.join(2)
    lines = transcript.read_text().splitlines()
    events = [line.split(" ")[2].rstrip(":") for line in lines if line.split(" ")[1] == "EV"]
    assert events == ["open", "lost", "reopened", "lost", "reopened", "close"]


def test_unplug_without_replug_raises_one_line_after_deadline(device: PtyDevice) -> None:
    with SerialPort(str(device.path), name="dongle", reopen_deadline_s=0.5) as port:
        device.unplug()
        start = time.monotonic()
        with pytest.raises(TransportError) as info:
            port.write_line("anyone?")
        elapsed = time.monotonic() - start
        assert 0.5 <= elapsed < 2.0
        assert not isinstance(info.value, SerialTimeout)
        assert str(info.value) == (
            f"serial port dongle ({device.path}): device gone and did not return "
            "within 0.5 s; check the cable / USB hub"
        )
        assert not port.is_open


def test_open_missing_path_is_one_line_error(tmp_path: Path) -> None:
    missing = tmp_path / "usb-nothing-here"
    port = SerialPort(str(missing), name="radio")
    with pytest.raises(TransportError) as info:
        port.open()
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"serial port radio ({missing}): cannot open:")
    assert "check that the device is plugged in" in message
    assert not port.is_open


def test_socket_url_against_loopback_echo_server() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port_number = server.getsockname()[1]

    def echo() -> None:
        conn, _ = server.accept()
        with conn:
            while data := conn.recv(4096):
                conn.sendall(data)

    thread = start_thread(echo)
    try:
        with SerialPort(f"socket://127.0.0.1:{port_number}") as port:
            port.write_line("over tcp")
            assert port.read_line(2.0) == "over tcp"
            port.write(b"\x00\x01binary")
            assert port.read_exactly(8, 2.0) == b"\x00\x01binary"
    finally:
        server.close()
        thread.join(2)


def test_socket_url_refused_is_transport_error() -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        free = probe.getsockname()[1]
    with pytest.raises(TransportError, match="TCP server is listening"):
        SerialPort(f"socket://127.0.0.1:{free}").open()


def test_loop_url() -> None:
    with SerialPort("loop://", newline=b"\n") as port:
        port.write_line("looped")
        port.write_line("value=42")
        assert port.read_line(1.0) == "looped"
        assert port.expect(r"value=(\d+)", 1.0).group(1) == "42"
        with pytest.raises(SerialTimeout):
            port.read_line(0.1)
