"""An emulated SKSTACK-IP Wi-SUN Route-B dongle (ROHM BP35A1 or BP35C0) on a pseudo-terminal.

``SkstackEmulator`` runs a thread on a ``PtyDevice`` and answers the ASCII command set the
way the dongle does on its UART (115200 baud, lines end CRLF). Formats and sources are those
of :mod:`bench.radio.skstack_driver` (ROHM BP35A1 command reference as cited by
smdn/Smdn.Net.SkStackIP and yakumo-saki/b-route-reader-go; the BP35C0 ``<side>`` field as
used by public BP35C0 clients).

``dialect="bp35a1"`` (default) or ``"bp35c0"``; the BP35C0 adds ``<side>`` (0 B-route,
1 HAN) to SKSCAN, SKSENDTO, every EVENT line (``EVENT nn sender side [param]``), ERXUDP
(after ``secured``) and an ``  Side:`` line in EPANDESC; SKSCAN / SKSENDTO without it fail
with ER05 (as a BP35C2 does). SKPING exists only in the bp35a1 emulation (ER04 otherwise).

What it does:

- echoes every command line while register SFE is 1 (``SKSREG SFE 0`` turns it off; the
  ``SKSREG SFE 0`` line itself is still echoed, as on the device; SKSENDTO echoes its
  header only; a BP35C0 with SFE 0 starts its SKSENDTO answer with an empty line),
- ``SKVER`` -> ``EVER x.y.z`` + ``OK``; ``SKINFO`` -> ``EINFO ipv6 mac ch panid addr16`` +
  ``OK``; ``SKSREG reg [val]`` (``ESREG val`` when reading; SFB and SFD are read-only:
  transmit-limited flag and accumulated send time in ms),
- ``SKSETRBID id`` / ``SKSETPWD len pwd``: stored; with ``rbid`` / ``password`` configured,
  SKJOIN succeeds only when they match,
- ``SKSCAN mode mask duration [side]`` -> ``OK``, ``EVENT 20`` + ``EPANDESC`` block for the
  configured meter PAN (B-route side only), then ``EVENT 22``,
- ``SKJOIN ipv6`` -> ``OK`` then ``EVENT 25`` (PANA success) or ``EVENT 24`` (``join_ok``),
- ``SKSENDTO`` -> ``EVENT 21 ipv6 [side] 00`` (or ``01`` with probability
  ``send_fail_probability`` from a seeded RNG, and always while the transmit-time limit is
  active), ``OK``, then - when delivered, the responder answers and the answer is not dropped
  (``answer_drop_probability``, its own seeded RNG) - an ``ERXUDP`` line ``answer_delay_s``
  later, without holding up other commands. Its data is datalen raw bytes (CR, LF and all)
  while the stored option is 00 (``data_format="binary"``, the factory default) and hex text
  when it is 01 (``"hex"``),
- ``ROPT`` -> ``OK 00`` / ``OK 01``; ``WOPT 00|01`` stores the option "in flash": it counts
  in ``flash_writes`` and survives an unplug (SFE does not). ``opt_commands=False`` is a
  hex-only firmware without them (``FAIL ER04``, as the Tessera RL7023 Stick-D/IPS),
- ``SKPING ipv6`` (bp35a1) -> ``OK`` then ``EPONG ipv6`` when the meter is reachable,
- transmit-time limit: every delivered datagram costs airtime (802.15.4g 2-FSK at 100 kbit/s,
  payload plus ``FRAME_OVERHEAD_OCTETS``); when the airtime sent within ``limit_window_s``
  reaches ``airtime_budget_s`` (ARIB STD-T108: 360 s per hour; None = no limit) it sends
  ``EVENT 32``, cancels sends (EVENT 21 .. 01) and sends ``EVENT 33`` once the window has
  slid far enough,
- ``expire_session()`` sends ``EVENT 29``; ``FAIL ER04`` / ``ER05`` / ``ER06`` for unknown
  commands, wrong argument counts and values out of range; ``silent`` makes it a hung dongle;
  ``meter_in_range = False`` hides the meter (no beacon, EVENT 24, sends to it fail);
  ``dropped_requests`` lists the requests whose answers were dropped.

The default responder is :class:`bench.radio.echonet.SmartMeter` (a meter answering ECHONET
Lite Get for EPC 0x80 / 0xE7 on UDP 3610).
"""

from __future__ import annotations

import collections
import contextlib
import heapq
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from bench.mesh.airtime import frame_airtime_s
from bench.radio.echonet import SmartMeter
from bench.radio.emulator import EmulatorThread
from bench.radio.skstack_driver import (
    DIALECTS,
    DataFormat,
    Dialect,
    SkstackUsageError,
    link_local_address,
)
from bench.transport.ptyport import PtyDevice

Responder = Callable[[int, bytes], bytes | None]
"""Called with (destination port, request data); returns the meter's answer or None."""
Handler = Callable[[list[str], bytes | None], None]

_READ_S = 0.02
_MAX_UDP = 0x04D0
_UDP_PORTS = {1: 0x0E1A, 2: 0x0E1B, 3: 0x02CC, 4: 0, 5: 0, 6: 0}  # BP35A1 default handles
ROUTE_B_RATE_BPS = 100_000
FRAME_OVERHEAD_OCTETS = 40
"""MAC header + 6LoWPAN/UDP headers + FCS/MIC around a datagram: an approximation."""
ARIB_BUDGET_S = 360.0
ARIB_WINDOW_S = 3600.0

DEFAULT_METER = SmartMeter()


def echo_responder(port: int, data: bytes) -> bytes | None:
    """A peer that answers every request with the same bytes."""
    return data


def datagram_airtime_s(payload_len: int) -> float:
    """Airtime of one Route-B datagram of ``payload_len`` bytes (see FRAME_OVERHEAD_OCTETS)."""
    return frame_airtime_s(payload_len + FRAME_OVERHEAD_OCTETS, ROUTE_B_RATE_BPS)


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
        return link_local_address(self.mac)


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
    """A BP35A1 / BP35C0 answering SKSTACK-IP on ``device``; ``start()``/``stop()`` or a context."""

    thread_name = "skstack-emulator"

    def __init__(
        self,
        device: PtyDevice,
        *,
        dialect: Dialect = "bp35a1",
        version: str = "1.2.10",
        mac: str = "001D129000003C89",
        meter: MeterPan | None = None,
        join_ok: bool = True,
        rbid: str | None = None,
        password: str | None = None,
        send_fail_probability: float = 0.0,
        seed: int = 0,
        responder: Responder | None = DEFAULT_METER,
        answer_drop_probability: float = 0.0,
        answer_delay_s: float = 0.0,
        airtime_budget_s: float | None = None,
        limit_window_s: float = ARIB_WINDOW_S,
        scan_delay_s: float = 0.05,
        data_format: DataFormat = "binary",
        opt_commands: bool = True,
    ) -> None:
        if dialect not in DIALECTS:
            raise SkstackUsageError(
                f"unknown SKSTACK dialect {dialect!r}; use one of {', '.join(DIALECTS)}"
            )
        if data_format not in ("binary", "hex"):
            raise SkstackUsageError(f"data_format must be binary or hex, got {data_format!r}")
        if not opt_commands and data_format != "hex":
            raise SkstackUsageError(
                "a dongle without ROPT/WOPT (opt_commands=False) sends hex only: "
                "pass data_format='hex'"
            )
        for name, p in (
            ("send_fail_probability", send_fail_probability),
            ("answer_drop_probability", answer_drop_probability),
        ):
            if not 0.0 <= p <= 1.0:
                raise SkstackUsageError(f"{name} must be within 0..1, got {p}")
        if answer_delay_s < 0 or limit_window_s <= 0:
            raise SkstackUsageError(
                "answer_delay_s must be >= 0 and limit_window_s > 0, got "
                f"{answer_delay_s} and {limit_window_s}"
            )
        self.device = device
        self.dialect: Dialect = dialect
        self.version = version
        self.mac = mac.upper()
        self.meter = meter or MeterPan()
        self.join_ok = join_ok
        self.rbid = rbid
        self.password = password
        self.send_fail_probability = send_fail_probability
        self.rng = random.Random(seed)
        self.drop_rng = random.Random(f"{seed}/answer-drop")
        self.responder = responder
        self.answer_drop_probability = answer_drop_probability
        self.answer_delay_s = answer_delay_s
        self.airtime_budget_s = airtime_budget_s
        self.limit_window_s = limit_window_s
        self.scan_delay_s = scan_delay_s
        self.silent = False
        self.meter_in_range = True
        """False: the meter is out of range (no beacon, PANA fails, sends are not acked)."""
        self.registers: dict[str, str] = {"SFE": "1", "S2": "21", "S3": "8888"}
        self.commands: list[str] = []
        self.joined: str | None = None
        self.transmit_limited = False
        self.credentials: tuple[str | None, str | None] = (None, None)
        self.dropped_requests: list[bytes] = []
        """Requests whose answers the emulator dropped (``answer_drop_probability``)."""
        self.option = 1 if data_format == "hex" else 0
        """The stored ERXUDP display option (ROPT / WOPT): 0 raw bytes, 1 hex text."""
        self.opt_commands = opt_commands
        self.flash_writes = 0
        """How many times WOPT wrote the option to flash."""
        self.total_airtime_s = 0.0
        self._airtime: collections.deque[tuple[float, float]] = collections.deque()
        self._later: list[tuple[float, int, bytes]] = []  # (due, order, bytes): late answers
        self._order = 0
        self._buf = bytearray()
        self._tty = device.tty_name
        super().__init__()
        self._write_lock = threading.Lock()

    @property
    def ipv6(self) -> str:
        return link_local_address(self.mac)

    @property
    def _c0(self) -> bool:
        return self.dialect == "bp35c0"

    @property
    def data_format(self) -> DataFormat:
        return "hex" if self.option == 1 else "binary"

    # -- output ----------------------------------------------------------------------------

    def _line(self, text: str) -> None:
        self._write(text.encode() + b"\r\n")

    def _event(self, code: int, sender: str, param: int | None = None) -> None:
        side = " 0" if self._c0 else ""
        tail = "" if param is None else f" {param:02X}"
        self._line(f"EVENT {code:02X} {sender}{side}{tail}")

    def expire_session(self) -> None:
        """The meter ended the PANA session: ``EVENT 29 <meter ipv6>``."""
        self.joined = None
        self._event(0x29, self.meter.ipv6)

    def send_raw(self, data: bytes) -> None:
        with self._write_lock:
            self.device.write(data)

    def _write(self, data: bytes) -> None:
        with self._write_lock, contextlib.suppress(TimeoutError):
            self.device.write(data)

    def _send_later(self, delay_s: float, data: bytes) -> None:
        if delay_s <= 0:
            self._write(data)
            return
        self._order += 1
        heapq.heappush(self._later, (time.monotonic() + delay_s, self._order, data))

    def _flush_later(self) -> None:
        now = time.monotonic()
        while self._later and self._later[0][0] <= now:
            self._write(heapq.heappop(self._later)[2])

    # -- transmit-time limit ---------------------------------------------------------------

    def _used_airtime_s(self) -> float:
        cutoff = time.monotonic() - self.limit_window_s
        while self._airtime and self._airtime[0][0] < cutoff:
            self._airtime.popleft()
        return sum(cost for _, cost in self._airtime)

    def _update_limit(self) -> None:
        """Raise EVENT 32 when the budget is used up, EVENT 33 once it is available again."""
        if self.airtime_budget_s is None:
            return
        limited = self._used_airtime_s() >= self.airtime_budget_s
        if limited != self.transmit_limited:
            self.transmit_limited = limited
            self._event(0x32 if limited else 0x33, self.ipv6)

    def _spend_airtime(self, payload_len: int) -> None:
        cost = datagram_airtime_s(payload_len)
        self.total_airtime_s += cost
        self._airtime.append((time.monotonic(), cost))

    # -- input -----------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.device.tty_name != self._tty:  # replugged: a fresh dongle boots
                self._tty = self.device.tty_name
                self._buf.clear()
                self._later.clear()
                self.registers["SFE"] = "1"
                self.joined = None
            self._flush_later()
            self._update_limit()
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
            fields = 7 if self._c0 else 6  # SKSENDTO handle ipaddr port sec [side] datalen
            pos, spaces = 0, 0
            while spaces < fields:
                nxt = buf.find(b" ", pos)
                eol = buf.find(b"\r\n", pos)
                if eol >= 0 and (nxt < 0 or eol < nxt):
                    break  # the line ended early: too few arguments
                if nxt < 0:
                    return None  # header not complete yet
                pos, spaces = nxt + 1, spaces + 1
            if spaces == fields:
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

    def _handlers(self) -> dict[str, Handler]:
        handlers: dict[str, Handler] = {
            "SKVER": self._skver,
            "SKINFO": self._skinfo,
            "SKSREG": self._sksreg,
            "SKSETRBID": self._sksetrbid,
            "SKSETPWD": self._sksetpwd,
            "SKSCAN": self._skscan,
            "SKJOIN": self._skjoin,
            "SKSENDTO": self._sksendto,
            "SKTERM": self._skterm,
        }
        if self.opt_commands:
            handlers["ROPT"] = self._ropt
            handlers["WOPT"] = self._wopt
        if not self._c0:
            handlers["SKPING"] = self._skping
        return handlers

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
        if reg in ("SFB", "SFD"):  # read-only: transmit-limited flag, send time so far in ms
            if len(args) == 2:
                raise _Fail(6)
            limited = "1" if self.transmit_limited else "0"
            sent_ms = f"{round(self.total_airtime_s * 1000):016X}"
            self._line(f"ESREG {limited if reg == 'SFB' else sent_ms}")
            self._line("OK")
            return
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

    def _ropt(self, args: list[str], payload: bytes | None) -> None:
        self._argc(args, 0)
        self._line(f"OK {self.option:02X}")

    def _wopt(self, args: list[str], payload: bytes | None) -> None:
        self._argc(args, 1)
        self.option = self._hex(args[0], 0, 1)
        self.flash_writes += 1
        self._line("OK")

    def _sksetrbid(self, args: list[str], payload: bytes | None) -> None:
        self._argc(args, 1)
        if len(args[0]) != 32:
            raise _Fail(6)
        self.credentials = (args[0], self.credentials[1])
        self._line("OK")

    def _sksetpwd(self, args: list[str], payload: bytes | None) -> None:
        self._argc(args, 2)
        if self._hex(args[0], 1, 0x20) != len(args[1]):
            raise _Fail(6)
        self.credentials = (self.credentials[0], args[1])
        self._line("OK")

    def _side(self, text: str) -> int:
        return self._hex(text, 0, 1)

    def _skscan(self, args: list[str], payload: bytes | None) -> None:
        self._argc(args, 4 if self._c0 else 3)
        mode = self._hex(args[0], 0, 3)
        if mode == 1:
            raise _Fail(6)
        mask = self._hex(args[1], 0, 0xFFFFFFFF)
        self._hex(args[2], 0, 14)
        side = self._side(args[3]) if self._c0 else 0
        self._line("OK")
        time.sleep(self.scan_delay_s)
        meter = self.meter
        if self.meter_in_range and side == 0 and mask >> (meter.channel - 0x21) & 1:
            self._event(0x20, meter.ipv6)
            self._line("EPANDESC")
            self._line(f"  Channel:{meter.channel:02X}")
            self._line(f"  Channel Page:{meter.channel_page:02X}")
            self._line(f"  Pan ID:{meter.pan_id:04X}")
            self._line(f"  Addr:{meter.mac}")
            self._line(f"  LQI:{meter.lqi:02X}")
            if self._c0:
                self._line("  Side:0")
            if mode == 2:
                self._line(f"  PairID:{meter.pair_id}")
        self._event(0x22, self.ipv6)

    def _credentials_ok(self) -> bool:
        rbid, password = self.credentials
        return (self.rbid is None or rbid == self.rbid) and (
            self.password is None or password == self.password
        )

    def _skjoin(self, args: list[str], payload: bytes | None) -> None:
        self._argc(args, 1)
        if not _valid_ipv6(args[0]):
            raise _Fail(6)
        self._line("OK")
        target = args[0].upper()
        reachable = self.meter_in_range and target == self.meter.ipv6
        if self.join_ok and reachable and self._credentials_ok():
            self.joined = target
            self._event(0x25, self.meter.ipv6)
        else:
            self._event(0x24, target)

    def _skterm(self, args: list[str], payload: bytes | None) -> None:
        self._argc(args, 0)
        if self.joined is None:
            raise _Fail(10)
        self._line("OK")
        self._event(0x27, self.joined)
        self.joined = None

    def _skping(self, args: list[str], payload: bytes | None) -> None:
        self._argc(args, 1)
        if not _valid_ipv6(args[0]):
            raise _Fail(6)
        dest = args[0].upper()
        self._line("OK")
        if self.meter_in_range and dest == self.meter.ipv6 and not self.transmit_limited:
            self._spend_airtime(8)  # ICMPv6 echo header
            self._send_later(self.answer_delay_s, f"EPONG {dest}\r\n".encode())

    def _sksendto(self, args: list[str], payload: bytes | None) -> None:
        if payload is None:
            raise _Fail(5)
        self._argc(args, 6 if self._c0 else 5)
        handle = self._hex(args[0], 1, 6)
        if not _valid_ipv6(args[1]):
            raise _Fail(6)
        dest = args[1].upper()
        rport = self._hex(args[2], 1, 0xFFFE)
        sec = self._hex(args[3], 0, 2)
        side = self._side(args[4]) if self._c0 else 0
        if not 1 <= self._hex(args[-1], 1, _MAX_UDP) == len(payload):
            raise _Fail(6)
        if self._c0 and self.registers["SFE"] == "0":
            self._line("")
        delivered = not self.transmit_limited and self.rng.random() >= self.send_fail_probability
        delivered = delivered and (self.meter_in_range or dest != self.meter.ipv6)
        if delivered:
            self._spend_airtime(len(payload))
        self._event(0x21, dest, 0 if delivered else 1)
        self._line("OK")
        self._update_limit()
        if not delivered or self.responder is None or dest != self.meter.ipv6 or side != 0:
            return
        answer = self.responder(rport, payload)
        if answer is None:
            return
        if self.answer_drop_probability and self.drop_rng.random() < self.answer_drop_probability:
            self.dropped_requests.append(payload)
            return
        secured = 1 if sec and self.joined == dest else 0
        side_field = f" {side}" if self._c0 else ""
        header = (
            f"ERXUDP {dest} {self.ipv6} {rport:04X} {_UDP_PORTS[handle]:04X} "
            f"{self.meter.mac} {secured}{side_field} {len(answer):04X} "
        )
        data = answer.hex().upper().encode() if self.option == 1 else answer
        self._send_later(self.answer_delay_s, header.encode() + data + b"\r\n")
