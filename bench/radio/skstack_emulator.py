"""An emulated SKSTACK-IP Wi-SUN Route-B dongle (ROHM BP35A1 dialect) on a pseudo-terminal.

``SkstackEmulator`` runs a thread on a ``PtyDevice`` and answers the ASCII command set the
way a BP35A1 does on its UART (115200 baud, lines end CRLF). Formats follow the ROHM
"BP35A1 command reference (SKSTACK IP for HAN)" as cited by public clients:
smdn/Smdn.Net.SkStackIP (``SkStackClient.Commands.SKSENDTO.cs``: handle, IPADDR, PORT as
4 hex digits, SEC, DATALEN as 4 hex digits, then the raw data *without* CRLF; data length
1..0x04D0; ``SkStackEventParser`` for ERXUDP / EVENT), yakumo-saki/b-route-reader-go
(``src/bp35a1/const.go``: ``EVENT 22`` ends SKSCAN, ``EPANDESC`` block keys ``Channel:``,
``Channel Page:``, ``Pan ID:``, ``Addr:``, ``LQI:``, ``PairID:``, ``EVENT 25`` ends SKJOIN,
``FAIL ER``), and a BP35C0 Zig client (error codes ER04 command not supported, ER05 invalid
argument, ER06 invalid format or out of range, ER09 UART input error, ER10 execution failed).

Dialect: BP35A1 only. The BP35C0 adds a ``<side>`` parameter (0 B-route, 1 HAN) to SKSCAN,
SKSENDTO, EVENT 21 and ERXUDP; this emulator neither sends nor accepts it, so it is
consistent with the driver in :mod:`bench.radio.skstack_driver`.

What it does:

- echoes every command line while register SFE is 1 (``SKSREG SFE 0`` turns it off; the
  ``SKSREG SFE 0`` line itself is still echoed, as on the device; SKSENDTO echoes its
  header only),
- ``SKVER`` -> ``EVER x.y.z`` + ``OK``; ``SKINFO`` -> ``EINFO ipv6 mac ch panid addr16`` +
  ``OK``; ``SKSREG reg [val]`` (``ESREG val`` when reading),
- ``SKSCAN mode mask duration`` -> ``OK``, then ``EVENT 20`` + ``EPANDESC`` block for the
  configured meter PAN, then ``EVENT 22``,
- ``SKJOIN ipv6`` -> ``OK`` then ``EVENT 25`` (PANA success) or ``EVENT 24`` (``join_ok``),
- ``SKSENDTO`` -> ``EVENT 21 ipv6 00`` (or ``01`` with probability ``send_fail_probability``
  drawn from a seeded RNG), ``OK``, and when delivered and the responder answers, an
  ``ERXUDP sender dest rport lport senderlla secured datalen data`` line (data as hex),
- ``expire_session()`` sends ``EVENT 29``; ``FAIL ER04`` / ``ER05`` / ``ER06`` for unknown
  commands, wrong argument counts and values out of range; ``silent`` makes it a hung dongle.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from bench.radio.emulator import EmulatorThread
from bench.transport.ptyport import PtyDevice

Responder = Callable[[int, bytes], bytes | None]
"""Called with (destination port, request data); returns the meter's answer or None."""

_READ_S = 0.02
_SENDTO_FIELDS = 6  # SKSENDTO handle ipaddr port sec datalen, then the data
_MAX_UDP = 0x04D0
_UDP_PORTS = {1: 0x0E1A, 2: 0x0E1B, 3: 0x02CC, 4: 0, 5: 0, 6: 0}  # BP35A1 default handles


@dataclass
class MeterPan:
    """The smart meter PAN the emulated dongle finds when it scans."""

    channel: int = 0x21
    channel_page: int = 0x09
    pan_id: int = 0x8888
    mac: str = "001D129012345678"
    lqi: int = 0xE1
    pair_id: str = "00AABBCC"

    @property
    def ipv6(self) -> str:
        """The meter's link-local address: FE80::/64 with the MAC's U/L bit flipped."""
        iid = int(self.mac, 16) ^ (1 << 57)
        groups = [0xFE80, 0, 0, 0] + [(iid >> s) & 0xFFFF for s in (48, 32, 16, 0)]
        return ":".join(f"{g:04X}" for g in groups)


def echo_responder(port: int, data: bytes) -> bytes | None:
    """The default meter: answers every request with the same bytes."""
    return data


def _valid_ipv6(text: str) -> bool:
    groups = text.split(":")
    return len(groups) == 8 and all(len(g) == 4 and _is_hex(g) for g in groups)


def _is_hex(text: str) -> bool:
    try:
        int(text, 16)
    except ValueError:
        return False
    return True


class _Fail(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(f"ER{code:02d}")
        self.code = code


class SkstackEmulator(EmulatorThread):
    """A BP35A1 answering SKSTACK-IP on ``device``; ``start()``/``stop()`` or a context."""

    thread_name = "skstack-emulator"

    def __init__(
        self,
        device: PtyDevice,
        *,
        version: str = "1.2.10",
        mac: str = "001D129000003C89",
        meter: MeterPan | None = None,
        join_ok: bool = True,
        send_fail_probability: float = 0.0,
        seed: int = 0,
        responder: Responder | None = echo_responder,
        scan_delay_s: float = 0.05,
    ) -> None:
        self.device = device
        self.version = version
        self.mac = mac.upper()
        self.meter = meter or MeterPan()
        self.join_ok = join_ok
        self.send_fail_probability = send_fail_probability
        self.rng = random.Random(seed)
        self.responder = responder
        self.scan_delay_s = scan_delay_s
        self.silent = False
        self.registers: dict[str, str] = {"SFE": "1", "S2": "21", "S3": "8888"}
        self.commands: list[str] = []
        self.joined: str | None = None
        self._buf = bytearray()
        self._tty = device.tty_name
        super().__init__()
        self._write_lock = threading.Lock()

    @property
    def ipv6(self) -> str:
        iid = int(self.mac, 16) ^ (1 << 57)
        groups = [0xFE80, 0, 0, 0] + [(iid >> s) & 0xFFFF for s in (48, 32, 16, 0)]
        return ":".join(f"{g:04X}" for g in groups)

    # -- life cycle ------------------------------------------------------------------------

    # -- output ----------------------------------------------------------------------------

    def _line(self, text: str) -> None:
        with self._write_lock, contextlib.suppress(TimeoutError):
            self.device.write(text.encode() + b"\r\n")

    def expire_session(self) -> None:
        """The meter ended the PANA session: ``EVENT 29 <meter ipv6>``."""
        self.joined = None
        self._line(f"EVENT 29 {self.meter.ipv6}")

    def send_raw(self, data: bytes) -> None:
        with self._write_lock:
            self.device.write(data)

    # -- input -----------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.device.tty_name != self._tty:  # replugged: a fresh dongle boots
                self._tty = self.device.tty_name
                self._buf.clear()
                self.registers["SFE"] = "1"
                self.joined = None
            data = self.device.read(_READ_S)
            if not data:
                continue
            if self.silent:
                continue
            self._buf += data
            while (request := self._take_request()) is not None:
                header, payload = request
                self._handle(header, payload)

    def _take_request(self) -> tuple[str, bytes | None] | None:
        """One complete command from the buffer: (line, None) or (SKSENDTO header, data)."""
        buf = self._buf
        if buf.startswith(b"SKSENDTO "):
            pos, spaces = 0, 0
            while spaces < _SENDTO_FIELDS:
                nxt = buf.find(b" ", pos)
                eol = buf.find(b"\r\n", pos)
                if eol >= 0 and (nxt < 0 or eol < nxt):
                    break  # the line ended early: too few arguments
                if nxt < 0:
                    return None  # header not complete yet
                pos, spaces = nxt + 1, spaces + 1
            if spaces == _SENDTO_FIELDS:
                header = buf[: pos - 1].decode(errors="replace")
                try:
                    length = int(header.split()[-1], 16)
                except ValueError:
                    length = 0
                if len(buf) - pos < length:
                    return None
                payload = bytes(buf[pos : pos + length])
                del buf[: pos + length]
                return header, payload
        end = buf.find(b"\r\n")
        if end < 0:
            return None
        line = buf[:end].decode(errors="replace")
        del buf[: end + 2]
        return line, None

    def _handle(self, line: str, payload: bytes | None) -> None:
        self.commands.append(line)
        if self.registers["SFE"] == "1":
            self._line(line)
        words = line.split()
        if not words:
            return
        handler = self._handlers().get(words[0])
        try:
            if handler is None:
                raise _Fail(4)
            handler(words[1:], payload)
        except _Fail as fail:
            self._line(f"FAIL ER{fail.code:02d}")

    def _handlers(self) -> dict[str, Callable[[list[str], bytes | None], None]]:
        return {
            "SKVER": self._skver,
            "SKINFO": self._skinfo,
            "SKSREG": self._sksreg,
            "SKSCAN": self._skscan,
            "SKJOIN": self._skjoin,
            "SKSENDTO": self._sksendto,
            "SKTERM": self._skterm,
        }

    @staticmethod
    def _argc(args: list[str], *counts: int) -> None:
        if len(args) not in counts:
            raise _Fail(5)

    @staticmethod
    def _hex(text: str, low: int, high: int) -> int:
        if not _is_hex(text):
            raise _Fail(6)
        value = int(text, 16)
        if not low <= value <= high:
            raise _Fail(6)
        return value

    def _skver(self, args: list[str], payload: bytes | None) -> None:
        self._argc(args, 0)
        self._line(f"EVER {self.version}")
        self._line("OK")

    def _skinfo(self, args: list[str], payload: bytes | None) -> None:
        self._argc(args, 0)
        ch, pan = int(self.registers["S2"], 16), int(self.registers["S3"], 16)
        self._line(f"EINFO {self.ipv6} {self.mac} {ch:02X} {pan:04X} FFFE")
        self._line("OK")

    def _sksreg(self, args: list[str], payload: bytes | None) -> None:
        self._argc(args, 1, 2)
        reg = args[0].upper()
        if reg not in self.registers:
            raise _Fail(6)
        if len(args) == 1:
            self._line(f"ESREG {self.registers[reg]}")
        elif reg == "SFE":
            self.registers[reg] = str(self._hex(args[1], 0, 1))
        elif reg == "S2":
            self.registers[reg] = f"{self._hex(args[1], 0x21, 0x3C):02X}"
        else:
            self.registers[reg] = f"{self._hex(args[1], 0, 0xFFFF):04X}"
        self._line("OK")

    def _skscan(self, args: list[str], payload: bytes | None) -> None:
        self._argc(args, 3)
        mode = self._hex(args[0], 0, 3)
        if mode == 1:
            raise _Fail(6)
        mask = self._hex(args[1], 0, 0xFFFFFFFF)
        self._hex(args[2], 0, 14)
        self._line("OK")
        time.sleep(self.scan_delay_s)
        meter = self.meter
        if mask >> (meter.channel - 0x21) & 1:
            self._line(f"EVENT 20 {meter.ipv6}")
            self._line("EPANDESC")
            self._line(f"  Channel:{meter.channel:02X}")
            self._line(f"  Channel Page:{meter.channel_page:02X}")
            self._line(f"  Pan ID:{meter.pan_id:04X}")
            self._line(f"  Addr:{meter.mac}")
            self._line(f"  LQI:{meter.lqi:02X}")
            if mode == 2:
                self._line(f"  PairID:{meter.pair_id}")
        self._line(f"EVENT 22 {self.ipv6}")

    def _skjoin(self, args: list[str], payload: bytes | None) -> None:
        self._argc(args, 1)
        if not _valid_ipv6(args[0]):
            raise _Fail(6)
        self._line("OK")
        if self.join_ok and args[0].upper() == self.meter.ipv6:
            self.joined = args[0].upper()
            self._line(f"EVENT 25 {self.meter.ipv6}")
        else:
            self._line(f"EVENT 24 {args[0].upper()}")

    def _skterm(self, args: list[str], payload: bytes | None) -> None:
        self._argc(args, 0)
        if self.joined is None:
            raise _Fail(10)
        self._line("OK")
        self._line(f"EVENT 27 {self.joined}")
        self.joined = None

    def _sksendto(self, args: list[str], payload: bytes | None) -> None:
        if payload is None:
            raise _Fail(5)
        self._argc(args, 5)
        handle = self._hex(args[0], 1, 6)
        if not _valid_ipv6(args[1]):
            raise _Fail(6)
        dest = args[1].upper()
        rport = self._hex(args[2], 1, 0xFFFE)
        sec = self._hex(args[3], 0, 2)
        if not 1 <= self._hex(args[4], 1, _MAX_UDP) == len(payload):
            raise _Fail(6)
        delivered = self.rng.random() >= self.send_fail_probability
        self._line(f"EVENT 21 {dest} {0 if delivered else 1:02X}")
        self._line("OK")
        if not delivered or self.responder is None or dest != self.meter.ipv6:
            return
        answer = self.responder(rport, payload)
        if answer is None:
            return
        secured = 1 if sec and self.joined == dest else 0
        self._line(
            f"ERXUDP {dest} {self.ipv6} {rport:04X} {_UDP_PORTS[handle]:04X} "
            f"{self.meter.mac} {secured} {len(answer):04X} {answer.hex().upper()}"
        )
