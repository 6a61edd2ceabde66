"""Driver for SKSTACK-IP Wi-SUN Route-B dongles (ROHM BP35A1 dialect) over any serial URL.

The command set and formats follow the ROHM "BP35A1 command reference (SKSTACK IP for
HAN)", as cited by public clients: smdn/Smdn.Net.SkStackIP (``SkStackClient.Commands.
SKSENDTO.cs``: ``SKSENDTO handle ipaddr port(4 hex) sec datalen(4 hex) data`` with no CRLF
after the raw data, length 1..0x04D0; ERXUDP ``sender dest rport lport senderlla secured
datalen data``; EVENT ``nn sender [param]``), yakumo-saki/b-route-reader-go
(``src/bp35a1/const.go``: ``EVENT 22`` ends a scan, ``EPANDESC`` keys, ``EVENT 25`` PANA
success) and a BP35C0 client (FAIL codes ER04 unsupported command, ER05 wrong argument
count, ER06 format or range, ER09 UART input error, ER10 execution failed).

BP35A1 dialect only: the BP35C0's extra ``<side>`` field (SKSCAN, SKSENDTO, EVENT 21,
ERXUDP) is not sent and not expected. Lines that start with ``SK`` are echoes of our own
commands (SFE=1) and are never taken as replies. Unsolicited ``EVENT`` and ``ERXUDP`` lines
are queued in ``driver.events`` until something consumes them.
"""

from __future__ import annotations

import collections
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from bench.errors import BenchError, TransportError
from bench.transport.serial import SerialPort, SerialTimeout

FAIL_CODES = {
    4: "unsupported command",
    5: "wrong argument count",
    6: "argument out of range or bad format",
    9: "UART input error",
    10: "command failed",
}

EVENT_BEACON = 0x20
EVENT_UDP_SENT = 0x21
EVENT_SCAN_DONE = 0x22
EVENT_PANA_FAIL = 0x24
EVENT_PANA_OK = 0x25
EVENT_SESSION_EXPIRED = 0x29


class SkstackError(BenchError):
    """The dongle answered ``FAIL ERnn`` (``code``) or refused a join."""

    def __init__(self, message: str, command: str = "", code: int = 0) -> None:
        super().__init__(message)
        self.command = command
        self.code = code


class SkstackTimeout(TransportError):
    """The dongle did not answer in time; the message names the port and the command."""


@dataclass(frozen=True)
class SkEvent:
    """``EVENT nn sender [param]`` (code as the hex number the dongle prints)."""

    code: int
    sender: str
    param: int | None = None


@dataclass(frozen=True)
class UdpDatagram:
    """An ``ERXUDP`` line."""

    sender: str
    dest: str
    rport: int
    lport: int
    sender_lla: str
    secured: bool
    data: bytes


@dataclass(frozen=True)
class PanDescriptor:
    """One ``EPANDESC`` block from an active scan."""

    channel: int
    channel_page: int
    pan_id: int
    addr: str
    lqi: int
    pair_id: str | None = None


@dataclass(frozen=True)
class SkInfo:
    ipv6: str
    mac: str
    channel: int
    pan_id: int
    addr16: int


Item = SkEvent | UdpDatagram | PanDescriptor


def _command_name(command: str) -> str:
    return command.split(" ", 1)[0]


class SkstackDriver:
    """SKSTACK-IP commands on an open ``SerialPort``."""

    def __init__(self, port: SerialPort) -> None:
        self.port = port
        self.events: collections.deque[Item] = collections.deque(maxlen=1000)
        self._pan: dict[str, str] | None = None

    # -- line handling ---------------------------------------------------------------------

    def _timeout(self, command: str, timeout: float, waiting_for: str) -> SkstackTimeout:
        return SkstackTimeout(
            f"{self.port.label}: no {waiting_for} to {_command_name(command)} within "
            f"{timeout:.1f} s; check the dongle is powered and the baud rate is 115200"
        )

    def _finish_pan(self) -> None:
        pan, self._pan = self._pan, None
        if pan is None:
            return
        # a malformed block is dropped; the transcript keeps it
        with contextlib.suppress(KeyError, ValueError):
            self.events.append(
                PanDescriptor(
                    channel=int(pan["Channel"], 16),
                    channel_page=int(pan.get("Channel Page", "0"), 16),
                    pan_id=int(pan["Pan ID"], 16),
                    addr=pan["Addr"].upper(),
                    lqi=int(pan.get("LQI", "0"), 16),
                    pair_id=pan.get("PairID"),
                )
            )

    def _classify(self, line: str) -> str | None:
        """Queue events; return the line if it is a reply, None if consumed or an echo."""
        if self._pan is not None:
            if line[:1].isspace() and ":" in line:
                key, _, value = line.strip().partition(":")
                self._pan[key.strip()] = value.strip()
                return None
            self._finish_pan()
        if not line or line.startswith("SK"):
            return None
        words = line.split()
        if words[0] == "EPANDESC":
            self._pan = {}
            return None
        if words[0] == "EVENT" and len(words) >= 3:
            try:
                code = int(words[1], 16)
                param = int(words[3], 16) if len(words) > 3 else None
            except ValueError:
                return line
            self.events.append(SkEvent(code, words[2].upper(), param))
            return None
        if words[0] == "ERXUDP" and len(words) >= 9:
            try:
                self.events.append(
                    UdpDatagram(
                        sender=words[1].upper(),
                        dest=words[2].upper(),
                        rport=int(words[3], 16),
                        lport=int(words[4], 16),
                        sender_lla=words[5].upper(),
                        secured=words[6] == "1",
                        data=bytes.fromhex(words[8]),
                    )
                )
            except ValueError:
                return line
            return None
        return line

    def _read(self, deadline: float, command: str, timeout: float, what: str) -> str | None:
        try:
            line = self.port.read_line(max(0.0, deadline - time.monotonic()))
        except SerialTimeout:
            raise self._timeout(command, timeout, what) from None
        return self._classify(line)

    def poll(self, timeout: float = 0.0) -> list[Item]:
        """Read whatever arrives within ``timeout``; return (and keep) the queued events."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.port.read_line(max(0.0, deadline - time.monotonic()))
            except SerialTimeout:
                break
            self._classify(line)
        return list(self.events)

    def command(self, command: str, timeout: float = 2.0, data: bytes | None = None) -> list[str]:
        """Send ``command`` (and raw ``data`` after it, no CRLF); the reply lines before OK."""
        if data is None:
            self.port.write_line(command)
        else:
            self.port.write(command.encode() + b" " + data)
        deadline = time.monotonic() + timeout
        replies: list[str] = []
        while True:
            line = self._read(deadline, command, timeout, "OK or FAIL")
            if line is None:
                continue
            if line == "OK":
                return replies
            if line.startswith("FAIL ER"):
                try:
                    code = int(line[7:9])
                except ValueError:
                    code = 0
                meaning = FAIL_CODES.get(code, "unknown error")
                raise SkstackError(
                    f"{self.port.label}: {_command_name(command)} failed: {line} ({meaning})",
                    _command_name(command),
                    code,
                )
            replies.append(line)

    def wait_for(
        self, match: Callable[[Item], bool], timeout: float, command: str, what: str
    ) -> Item:
        """The first queued (or arriving) item that ``match``es; removed from the queue."""
        deadline = time.monotonic() + timeout
        while True:
            for item in self.events:
                if match(item):
                    self.events.remove(item)
                    return item
            self._read(deadline, command, timeout, what)

    # -- commands --------------------------------------------------------------------------

    def version(self, timeout: float = 2.0) -> str:
        for line in self.command("SKVER", timeout):
            if line.startswith("EVER "):
                return line[5:].strip()
        raise SkstackError(f"{self.port.label}: SKVER answered OK without EVER", "SKVER")

    def info(self, timeout: float = 2.0) -> SkInfo:
        for line in self.command("SKINFO", timeout):
            words = line.split()
            if words[0] == "EINFO" and len(words) == 6:
                return SkInfo(
                    ipv6=words[1],
                    mac=words[2],
                    channel=int(words[3], 16),
                    pan_id=int(words[4], 16),
                    addr16=int(words[5], 16),
                )
        raise SkstackError(f"{self.port.label}: SKINFO answered OK without EINFO", "SKINFO")

    def set_echo(self, enabled: bool, timeout: float = 2.0) -> None:
        self.command(f"SKSREG SFE {1 if enabled else 0}", timeout)

    def scan(
        self, duration: int = 4, timeout: float = 10.0, channel_mask: int = 0xFFFFFFFF
    ) -> list[PanDescriptor]:
        """Active scan with IE (mode 2); the PANs found before ``EVENT 22``."""
        command = f"SKSCAN 2 {channel_mask:08X} {duration:X}"
        deadline = time.monotonic() + timeout
        self.command(command, timeout)
        self.wait_for(
            lambda i: isinstance(i, SkEvent) and i.code == EVENT_SCAN_DONE,
            max(0.0, deadline - time.monotonic()),
            command,
            "EVENT 22",
        )
        self._finish_pan()
        pans = [i for i in self.events if isinstance(i, PanDescriptor)]
        for pan in pans:
            self.events.remove(pan)
        for item in [i for i in self.events if isinstance(i, SkEvent) and i.code == EVENT_BEACON]:
            self.events.remove(item)
        return pans

    def join(self, ipv6: str, timeout: float = 30.0) -> None:
        """PANA authentication with ``ipv6``; ``SkstackError`` on EVENT 24."""
        command = f"SKJOIN {ipv6}"
        deadline = time.monotonic() + timeout
        self.command(command, timeout)
        event = self.wait_for(
            lambda i: isinstance(i, SkEvent) and i.code in (EVENT_PANA_OK, EVENT_PANA_FAIL),
            max(0.0, deadline - time.monotonic()),
            command,
            "EVENT 24/25",
        )
        assert isinstance(event, SkEvent)
        if event.code == EVENT_PANA_FAIL:
            raise SkstackError(
                f"{self.port.label}: SKJOIN {ipv6} failed: EVENT 24 (PANA authentication "
                "failed); check the Route-B ID and password",
                "SKJOIN",
            )

    def send_udp(
        self,
        ipv6: str,
        port: int,
        data: bytes,
        timeout: float = 5.0,
        *,
        handle: int = 1,
        sec: int = 1,
    ) -> bool:
        """SKSENDTO; True when ``EVENT 21 ipv6 00`` says the datagram went out."""
        if not 1 <= len(data) <= 0x04D0:
            raise ValueError(f"UDP payload must be 1..1232 bytes, got {len(data)}")
        ipv6 = ipv6.upper()
        command = f"SKSENDTO {handle:X} {ipv6} {port:04X} {sec:X} {len(data):04X}"
        deadline = time.monotonic() + timeout
        self.command(command, timeout, data)
        event = self.wait_for(
            lambda i: isinstance(i, SkEvent) and i.code == EVENT_UDP_SENT and i.sender == ipv6,
            max(0.0, deadline - time.monotonic()),
            command,
            "EVENT 21",
        )
        assert isinstance(event, SkEvent)
        return event.param == 0

    def request(self, ipv6: str, port: int, data: bytes, timeout: float = 5.0) -> bytes | None:
        """Send ``data`` and return the meter's answer; None if not sent or no answer in time."""
        ipv6 = ipv6.upper()
        deadline = time.monotonic() + timeout
        if not self.send_udp(ipv6, port, data, timeout):
            return None
        try:
            answer = self.wait_for(
                lambda i: isinstance(i, UdpDatagram) and i.sender == ipv6 and i.rport == port,
                max(0.0, deadline - time.monotonic()),
                "SKSENDTO",
                "ERXUDP",
            )
        except SkstackTimeout:
            return None
        assert isinstance(answer, UdpDatagram)
        return answer.data
