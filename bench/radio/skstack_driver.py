"""Driver for SKSTACK-IP Wi-SUN Route-B dongles (ROHM BP35A1 / BP35C0 dialects) on a serial URL.

The command set and formats follow the ROHM "BP35A1 command reference (SKSTACK IP for
HAN)", as cited by public clients: smdn/Smdn.Net.SkStackIP (``SkStackClient.Commands.
SKSENDTO.cs``: ``SKSENDTO handle ipaddr port(4 hex) sec datalen(4 hex) data`` with no CRLF
after the raw data, length 1..0x04D0; ERXUDP ``sender dest rport lport senderlla secured
datalen data``; EVENT ``nn sender [param]``; EVENT 21 param 0 ok / 1 failed / 2 neighbour
solicitation done; 3.8 SKPING and 4.2 EPONG; registers SFB "sending restricted" and SFD
"accumulated send time in ms", both read-only; ``SkStackLQI``: RSSI = 0.275 * LQI - 104.27
dBm), yakumo-saki/b-route-reader-go (``EVENT 22`` ends a scan, ``EPANDESC`` keys, ``EVENT 25``
PANA success) and a BP35C0 client (FAIL codes ER04 unsupported command, ER05 wrong argument
count, ER06 format or range, ER09 UART input error, ER10 execution failed).

Dialects (``dialect=``): ``bp35a1`` as above. ``bp35c0`` (BP35C0 / BP35C2 / RL7023-11 type
"HAN dual" stacks) adds a ``<side>`` field (0 B-route, 1 HAN), per a public Zig BP35C0 client
(``SKSCAN mode mask duration side``, ``SKSENDTO handle ip port sec side len data``, ``EVENT nn
sender side [param]``, ``ERXUDP sender dest rport lport lla secured side len data``, an
``  Side:`` line in EPANDESC) and a TypeScript Route-B client that sends the side field only
for BP35C0/C2. The dialect is NOT detected: SKVER is no tell (an RL7023-11 needing the side
field reports ``EVER 1.2.8`` like a BP35A1), so the caller says which; a ``FAIL ER05`` to
SKSCAN / SKSENDTO names the other dialect as the likely cause (a BP35C2 answers SKSCAN without
side with ER05, hsakoh/broute-mqtt issue 2). SKPING is sent only in the bp35a1 dialect: its
BP35C0 form could not be verified.

Transmit-time limit (ARIB STD-T108 total send time per hour): ``EVENT 32`` says the limit is
active and, per the BP35A1 reference p.51 as quoted by a public audit, every send request is
then cancelled inside the stack; ``EVENT 33`` says it is lifted. The driver keeps this in
``transmit_limited``; a cancelled send shows up as ``EVENT 21 .. 01`` (SKSENDTO itself is
accepted with OK, it is not refused with FAIL).

ERXUDP data format (``ROPT`` / ``WOPT``, the same on BP35A1 and BP35C0; sources in
:mod:`bench.radio.skstack_stream`): a factory-fresh dongle sends the data as datalen raw bytes
(``ROPT`` -> ``OK 00``), which may contain CR and LF; after ``WOPT 01`` (stored in flash,
which takes a limited number of writes) it sends hex text (``OK 01``). The driver reads both
shapes byte-exact whatever the option says (:class:`~bench.radio.skstack_stream.SkstackStream`)
and asks ``ROPT`` once in :meth:`SkstackDriver.ensure_data_format` (``SkstackRadio`` does on
first use): the answer is kept in ``data_format``, a datagram in the other shape is counted in
``stats["erxudp_unexpected_format"]``. ``write_ascii_option=True`` (default off) sends
``WOPT 01`` once, and only when ``ROPT`` said 00, then reads ``ROPT`` back. A firmware without
``ROPT`` (``FAIL ER04``: hex text only, as on the Tessera RL7023 Stick-D/IPS) is taken as hex,
with a logged note.

Lines that start with ``SK`` (and ``ROPT`` / ``WOPT``) are echoes of our own commands (SFE=1)
and never replies. Unsolicited ``EVENT``/``ERXUDP``/``EPONG`` lines are queued in
``driver.events`` until consumed; the session / limit state and the counters in
``driver.stats`` are updated as lines arrive (``erxudp_malformed``: ERXUDP lines dropped).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, get_args

from bench.errors import BenchError, TransportError
from bench.radio.skstack_stream import RawErxudp, SkstackStream
from bench.transport.serial import SerialPort, SerialTimeout

Dialect = Literal["bp35a1", "bp35c0"]
DIALECTS: tuple[str, ...] = get_args(Dialect)
DataFormat = Literal["binary", "hex"]
"""How the dongle shows ERXUDP data: ``binary`` (ROPT 00, factory default) or ``hex`` (01)."""
ROPT_FORMATS: dict[int, DataFormat] = {0: "binary", 1: "hex"}

log = logging.getLogger("bench.radio.skstack")

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
EVENT_PANA_TERM_REQUESTED = 0x26
EVENT_PANA_TERMINATED = 0x27
EVENT_PANA_TERM_TIMEOUT = 0x28
EVENT_SESSION_EXPIRED = 0x29
EVENT_TX_LIMIT_ON = 0x32
EVENT_TX_LIMIT_OFF = 0x33

UDP_SEND_OK = 0
UDP_SEND_FAILED = 1
UDP_SEND_AFTER_NS = 2
"""EVENT 21 parameter 2: the stack sent a neighbour solicitation (the datagram's fate is open)."""

MAX_UDP = 0x04D0
_SESSION_ENDS = (EVENT_PANA_TERM_REQUESTED, EVENT_PANA_TERMINATED, EVENT_PANA_TERM_TIMEOUT)
_DIALECT_HINT_COMMANDS = ("SKSCAN", "SKSENDTO")
_ECHOES = ("SK", "ROPT", "WOPT")


class SkstackError(BenchError):
    """The dongle answered ``FAIL ERnn`` (``code``) or refused a join."""

    def __init__(self, message: str, command: str = "", code: int = 0) -> None:
        super().__init__(message)
        self.command = command
        self.code = code


class SkstackUsageError(BenchError, ValueError):
    """A driver argument is invalid (checked before anything is written to the dongle)."""


class SkstackTimeout(TransportError):
    """The dongle did not answer in time; the message names the port and the command."""


@dataclass(frozen=True)
class SkEvent:
    """``EVENT nn sender [side] [param]`` (code as the hex number the dongle prints)."""

    code: int
    sender: str
    param: int | None = None
    side: int | None = None
    """Only in the bp35c0 dialect."""


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
    side: int | None = None
    received_ns: int = field(default=0, compare=False)
    """``time.monotonic_ns()`` when the line was read."""
    binary: bool = field(default=False, compare=False)
    """The data came as raw bytes (ROPT 00), not as hex text."""


@dataclass(frozen=True)
class PanDescriptor:
    """One ``EPANDESC`` block from an active scan."""

    channel: int
    channel_page: int
    pan_id: int
    addr: str
    lqi: int
    pair_id: str | None = None
    side: int | None = None

    @property
    def rssi_dbm(self) -> float:
        """RSSI from LQI: 0.275 * LQI - 104.27 dBm (BP35A1 reference 4.6)."""
        return lqi_to_rssi(self.lqi)

    @property
    def ipv6(self) -> str:
        """The coordinator's link-local address (what SKLL64 would answer)."""
        return link_local_address(self.addr)


@dataclass(frozen=True)
class Pong:
    """``EPONG sender``: an ICMP echo reply to SKPING."""

    sender: str


@dataclass(frozen=True)
class SkInfo:
    ipv6: str
    mac: str
    channel: int
    pan_id: int
    addr16: int


Item = SkEvent | UdpDatagram | PanDescriptor | Pong


def lqi_to_rssi(lqi: int) -> float:
    return 0.275 * lqi - 104.27


def link_local_address(mac: str) -> str:
    """FE80::/64 with the EUI-64 (U/L bit flipped), as SKSTACK prints it: 8 groups of 4 hex."""
    if len(mac) != 16 or not _is_hex(mac):
        raise SkstackUsageError(f"MAC must be 16 hex digits, got {mac!r}")
    iid = int(mac, 16) ^ (1 << 57)
    groups = [0xFE80, 0, 0, 0] + [(iid >> s) & 0xFFFF for s in (48, 32, 16, 0)]
    return ":".join(f"{g:04X}" for g in groups)


def _is_hex(text: str) -> bool:
    try:
        int(text, 16)
    except ValueError:
        return False
    return True


def _command_name(command: str) -> str:
    return command.split(" ", 1)[0]


def _ok_value(line: str) -> int:
    """The hex value of an ``OK nn`` line (ROPT's answer); -1 when there is none."""
    try:
        return int(line[3:].strip(), 16)
    except ValueError:
        return -1


class SkstackDriver:
    """SKSTACK-IP commands on an open ``SerialPort`` in one dialect (see the module doc)."""

    def __init__(
        self,
        port: SerialPort,
        *,
        dialect: Dialect = "bp35a1",
        side: int = 0,
        write_ascii_option: bool = False,
    ) -> None:
        if dialect not in DIALECTS:
            raise SkstackUsageError(
                f"unknown SKSTACK dialect {dialect!r}; use one of {', '.join(DIALECTS)}"
            )
        if side not in (0, 1):
            raise SkstackUsageError(f"side must be 0 (B-route) or 1 (HAN), got {side}")
        self.port = port
        self.dialect: Dialect = dialect
        self.side = side
        self.events: collections.deque[Item] = collections.deque(maxlen=1000)
        self.session_peer: str | None = None
        """The PANA peer after EVENT 25, None again after EVENT 26/27/28/29."""
        self.transmit_limited = False
        """True between EVENT 32 and EVENT 33 (ARIB transmit-time limit active)."""
        self.stats: collections.Counter[str] = collections.Counter()
        self.write_ascii_option = write_ascii_option
        """Send ``WOPT 01`` (a flash write) in ensure_data_format() when ROPT says binary."""
        self.data_format: DataFormat | None = None
        """What ROPT said (None before it was asked, or when it answered another value)."""
        self._format_checked = False
        self._stream = SkstackStream(7 if dialect == "bp35c0" else 6)
        self._pan: dict[str, str] | None = None

    @property
    def _c0(self) -> bool:
        return self.dialect == "bp35c0"

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
                    side=int(pan["Side"], 16) if "Side" in pan else None,
                )
            )

    def _note(self, event: SkEvent) -> None:
        """Keep the session / limit state and the counters in step with ``event``."""
        code = event.code
        if code == EVENT_UDP_SENT:
            key = {UDP_SEND_OK: "udp_sent", UDP_SEND_FAILED: "udp_send_failed"}
            self.stats[key.get(event.param or 0, "udp_sent_after_ns")] += 1
        elif code == EVENT_PANA_OK:
            self.session_peer = event.sender
            self.stats["pana_joined"] += 1
        elif code == EVENT_PANA_FAIL:
            self.stats["pana_failed"] += 1
        elif code == EVENT_SESSION_EXPIRED:
            self.session_peer = None
            self.stats["session_expired"] += 1
        elif code in _SESSION_ENDS:
            self.session_peer = None
            self.stats["session_terminated"] += 1
        elif code == EVENT_TX_LIMIT_ON:
            self.transmit_limited = True
            self.stats["transmit_limit_on"] += 1
        elif code == EVENT_TX_LIMIT_OFF:
            self.transmit_limited = False
            self.stats["transmit_limit_off"] += 1

    def _event(self, words: list[str]) -> SkEvent:
        """``EVENT nn sender [param]`` (bp35a1) or ``EVENT nn sender side [param]`` (bp35c0)."""
        code = int(words[1], 16)
        sender = words[2].upper() if len(words) > 2 else ""
        rest = [int(w, 16) for w in words[3:5]]
        side = rest.pop(0) if self._c0 and rest else None
        return SkEvent(code, sender, rest[0] if rest else None, side)

    def _datagram(self, raw: RawErxudp) -> UdpDatagram:
        """``ERXUDP sender dest rport lport senderlla secured [side] datalen data``."""
        f = raw.fields
        return UdpDatagram(
            sender=f[0].upper(),
            dest=f[1].upper(),
            rport=int(f[2], 16),
            lport=int(f[3], 16),
            sender_lla=f[4].upper(),
            secured=f[5] == "1",
            data=raw.data,
            side=int(f[6], 16) if self._c0 else None,
            received_ns=time.monotonic_ns(),
            binary=raw.binary,
        )

    def _receive(self, raw: RawErxudp) -> None:
        try:
            datagram = self._datagram(raw)
        except ValueError:
            self.stats["erxudp_malformed"] += 1
            return
        self.stats["udp_received"] += 1
        expected = self.data_format
        if expected is not None and raw.binary != (expected == "binary"):
            self.stats["erxudp_unexpected_format"] += 1
        self.events.append(datagram)

    def _classify(self, item: str | RawErxudp) -> str | None:
        """Queue events; return the line if it is a reply, None if consumed or an echo."""
        if self._pan is not None:
            if isinstance(item, str) and item[:1].isspace() and ":" in item:
                key, _, value = item.strip().partition(":")
                self._pan[key.strip()] = value.strip()
                return None
            self._finish_pan()
        if isinstance(item, RawErxudp):
            self._receive(item)
            return None
        line = item
        if not line or line.startswith(_ECHOES):
            return None
        words = line.split()
        head = words[0]
        try:
            if head == "EPANDESC":
                self._pan = {}
            elif head == "EVENT" and len(words) >= 2:
                event = self._event(words)
                self._note(event)
                self.events.append(event)
            elif head == "ERXUDP":  # in neither data shape (see skstack_stream)
                self.stats["erxudp_malformed"] += 1
            elif head == "EPONG" and len(words) >= 2:
                self.events.append(Pong(words[1].upper()))
            else:
                return line
        except ValueError:
            return line
        return None

    def _next(self, deadline: float) -> str | RawErxudp:
        """The next line or datagram (``SerialTimeout`` at ``deadline``; a part stays kept)."""
        while (item := self._stream.next()) is None:
            if time.monotonic() >= deadline:
                raise SerialTimeout(f"{self.port.label}: nothing complete before the deadline")
            self._stream.feed(self.port.read_some())
        return item

    def _read(self, deadline: float, command: str, timeout: float, what: str) -> str | None:
        try:
            item = self._next(deadline)
        except SerialTimeout:
            raise self._timeout(command, timeout, what) from None
        return self._classify(item)

    def poll_line(self, timeout: float = 0.0) -> bool:
        """Read and classify at most one line; False when none arrived within ``timeout``."""
        try:
            item = self._next(time.monotonic() + timeout)
        except SerialTimeout:
            return False
        self._classify(item)
        return True

    def poll(self, timeout: float = 0.0) -> list[Item]:
        """Read whatever arrives within ``timeout`` (with 0: what is waiting at the port);
        return (and keep) the queued events."""
        deadline = time.monotonic() + timeout
        wait = max(timeout, 0.001)  # a positive wait reads the port at least once
        while self.poll_line(wait):
            wait = max(0.0, deadline - time.monotonic())
        return list(self.events)

    def _fail(self, command: str, line: str) -> SkstackError:
        try:
            code = int(line[7:9])
        except ValueError:
            code = 0
        name = _command_name(command)
        message = (
            f"{self.port.label}: {name} failed: {line} ({FAIL_CODES.get(code, 'unknown error')})"
        )
        if code == 5 and name in _DIALECT_HINT_COMMANDS:
            other = "bp35a1" if self._c0 else "bp35c0"
            message += (
                f"; the driver speaks the {self.dialect} dialect, the dongle may speak {other} "
                f"(pass dialect={other!r})"
            )
        return SkstackError(message, name, code)

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
            if line.startswith("OK "):  # ROPT answers its value on the OK line
                return [*replies, line]
            if line.startswith("FAIL ER"):
                raise self._fail(command, line)
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

    def read_data_format(self, timeout: float = 2.0) -> DataFormat | None:
        """``ROPT``: how the dongle shows ERXUDP data, kept in ``data_format``.

        ``FAIL ER04`` (no ROPT: a hex-only firmware) counts as ``hex``, with a logged note;
        a value other than 00 / 01 gives None (datagrams are then told by their shape).
        """
        try:
            replies = self.command("ROPT", timeout)
        except SkstackError as exc:
            if exc.code != 4:
                raise
            log.info("%s: no ROPT (FAIL ER04): reading ERXUDP data as hex text", self.port.label)
            self.stats["ropt_unsupported"] += 1
            replies = ["OK 01"]
        answer = next((r for r in replies if r.startswith("OK ")), "OK")
        fmt = ROPT_FORMATS.get(_ok_value(answer))
        if fmt is None:
            log.warning(
                "%s: ROPT answered %r, not OK 00 / OK 01: telling ERXUDP data by its shape",
                self.port.label,
                answer,
            )
        self.data_format = fmt
        self._stream.hex_only = fmt == "hex"
        return fmt

    def ensure_data_format(self, timeout: float = 2.0) -> DataFormat | None:
        """Ask ``ROPT`` the first time only; with ``write_ascii_option`` and a binary answer
        write ``WOPT 01`` (once: it is a flash write) and read ``ROPT`` back."""
        if self._format_checked:
            return self.data_format
        fmt = self.read_data_format(timeout)
        if fmt == "binary" and self.write_ascii_option:
            self.command("WOPT 01", timeout)
            self.stats["wopt_written"] += 1
            fmt = self.read_data_format(timeout)
            if fmt != "hex":
                raise SkstackError(
                    f"{self.port.label}: WOPT 01 was accepted but ROPT still says {fmt}; "
                    "the driver reads binary ERXUDP data too: turn write_ascii_option off",
                    "WOPT",
                )
        self._format_checked = True
        return fmt

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

    def read_register(self, name: str, timeout: float = 2.0) -> str:
        """``SKSREG name`` -> the value of ``ESREG value`` as text."""
        for line in self.command(f"SKSREG {name}", timeout):
            if line.startswith("ESREG "):
                return line[6:].strip()
        raise SkstackError(f"{self.port.label}: SKSREG {name} answered OK without ESREG", "SKSREG")

    def set_register(self, name: str, value: str, timeout: float = 2.0) -> None:
        self.command(f"SKSREG {name} {value}", timeout)

    def set_echo(self, enabled: bool, timeout: float = 2.0) -> None:
        self.set_register("SFE", "1" if enabled else "0", timeout)

    def set_credentials(self, rbid: str, password: str, timeout: float = 2.0) -> None:
        """SKSETRBID (the 32-character Route-B ID) and SKSETPWD (1..32 characters)."""
        if len(rbid) != 32 or not rbid.isascii() or not rbid.isalnum():
            raise SkstackUsageError(
                f"Route-B ID must be 32 letters or digits, got {len(rbid)} characters"
            )
        if not 1 <= len(password) <= 32 or not password.isascii() or " " in password:
            raise SkstackUsageError(
                f"Route-B password must be 1..32 ASCII characters without spaces, "
                f"got {len(password)}"
            )
        self.port.add_secret(rbid)  # the transcript is kept in the run: never the credentials
        self.port.add_secret(password)
        self.command(f"SKSETRBID {rbid}", timeout)
        self.command(f"SKSETPWD {len(password):X} {password}", timeout)

    def scan(
        self, duration: int = 4, timeout: float = 10.0, channel_mask: int = 0xFFFFFFFF
    ) -> list[PanDescriptor]:
        """Active scan with IE (mode 2); the PANs found before ``EVENT 22``."""
        command = f"SKSCAN 2 {channel_mask:08X} {duration:X}"
        if self._c0:
            command += f" {self.side}"
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
        """SKSENDTO; True when ``EVENT 21 ipv6 00`` says the datagram went out.

        False on ``01`` (also while the transmit-time limit is active) and on ``02``.
        """
        if not 1 <= len(data) <= MAX_UDP:
            raise SkstackUsageError(f"UDP payload must be 1..{MAX_UDP} bytes, got {len(data)}")
        ipv6 = ipv6.upper()
        side = f" {self.side}" if self._c0 else ""
        command = f"SKSENDTO {handle:X} {ipv6} {port:04X} {sec:X}{side} {len(data):04X}"
        deadline = time.monotonic() + timeout
        self.command(command, timeout, data)
        event = self.wait_for(
            lambda i: isinstance(i, SkEvent) and i.code == EVENT_UDP_SENT and i.sender == ipv6,
            max(0.0, deadline - time.monotonic()),
            command,
            "EVENT 21",
        )
        assert isinstance(event, SkEvent)
        return event.param == UDP_SEND_OK

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

    def ping(self, ipv6: str, timeout: float = 5.0) -> bool:
        """SKPING (bp35a1 dialect only); True when ``EPONG ipv6`` arrives within ``timeout``."""
        if self._c0:
            raise SkstackUsageError(
                "SKPING is only supported in the bp35a1 dialect (its BP35C0 form is unverified)"
            )
        ipv6 = ipv6.upper()
        command = f"SKPING {ipv6}"
        deadline = time.monotonic() + timeout
        self.command(command, timeout)
        try:
            self.wait_for(
                lambda i: isinstance(i, Pong) and i.sender == ipv6,
                max(0.0, deadline - time.monotonic()),
                command,
                "EPONG",
            )
        except SkstackTimeout:
            return False
        return True
