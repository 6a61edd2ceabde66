"""Host side of a Spinel network co-processor (OpenThread / TI Wi-SUN NCP) over a serial port.

``SpinelDriver`` sends Spinel commands framed in HDLC-lite through a ``SerialPort`` and
matches replies by transaction id (TID 1..15, rotating). Frames with TID 0 are unsolicited
notifications: they are queued in ``driver.unsolicited`` and never taken for a reply. A
``LAST_STATUS`` reply carrying an error raises ``SpinelStatusError``; no reply in time
raises ``SpinelTimeout``; both are one line naming the port, the property and the TID.

Status codes checked against OpenThread ``src/lib/spinel/spinel.h`` (openthread/openthread):
OK 0, FAILURE 1, UNIMPLEMENTED 2, INVALID_ARGUMENT 3, INVALID_STATE 4, INVALID_COMMAND 5,
..., BUSY 12, PROP_NOT_FOUND 13, DROPPED 14, EMPTY 15, ..., INVALID_COMMAND_FOR_PROP 21;
the reset causes are the block ``RESET__BEGIN`` 112 (= RESET_POWER_ON) up to
``RESET__END`` 128 (not included): EXTERNAL 113, SOFTWARE 114, FAULT 115, CRASH 116,
ASSERT 117, OTHER 118, UNKNOWN 119, WATCHDOG 120. ``SPINEL_PROTOCOL_TYPE_THREAD`` is 3.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from typing import TypedDict

from bench.errors import BenchError, TransportError
from bench.radio.hdlc import HdlcDecoder, encode_frame
from bench.radio.spinel import (
    STATUS_RESET_BEGIN,
    STATUS_RESET_END,
    TID_MASK,
    Cmd,
    Prop,
    SpinelError,
    SpinelFrame,
    Status,
    Unpacker,
)
from bench.transport.serial import SerialPort

#: how long the driver sleeps when nothing is waiting at the port
UNSOLICITED_MAX = 256


def is_reset_status(status: int) -> bool:
    """True for the LAST_STATUS values an NCP sends after it (re)started."""
    return STATUS_RESET_BEGIN <= status < STATUS_RESET_END


def status_name(status: int) -> str:
    """``PROP_NOT_FOUND (13)``; unknown codes keep their number."""
    try:
        return f"{Status(status).name} ({status})"
    except ValueError:
        if is_reset_status(status):
            return f"RESET_{status - STATUS_RESET_BEGIN} ({status})"
        return f"status {status}"


def prop_name(prop: int) -> str:
    try:
        return Prop(prop).name
    except ValueError:
        return f"property {prop} (0x{prop:X})"


def _cmd_name(command: int) -> str:
    try:
        return Cmd(command).name
    except ValueError:
        return f"command {command}"


class SpinelStatusError(BenchError):
    """The NCP answered a command with a LAST_STATUS error (one line: port, property, status)."""

    def __init__(self, message: str, prop: int, status: int) -> None:
        super().__init__(message)
        self.prop = prop
        self.status = status


class SpinelTimeout(TransportError):
    """No reply with the expected TID arrived in time (one line: port, property, TID)."""


class NcpIdentity(TypedDict):
    """What ``SpinelDriver.identify()`` returns."""

    protocol_version: tuple[int, int]
    ncp_version: str
    interface_type: int
    vendor_id: int | None
    caps: list[int]
    hwaddr: str  # EUI-64 as colon-separated lower-case hex


class SpinelDriver:
    """Spinel host on a ``SerialPort`` (opened by the caller); one command at a time."""

    def __init__(
        self, port: SerialPort, *, iid: int = 0, unsolicited_max: int = UNSOLICITED_MAX
    ) -> None:
        self.port = port
        self.iid = iid
        self.unsolicited: collections.deque[SpinelFrame] = collections.deque(maxlen=unsolicited_max)
        #: frames that decoded but are no reply we wait for (late replies to timed-out TIDs)
        self.stray = 0
        #: HDLC frames whose FCS checked but which are not Spinel frames
        self.malformed = 0
        self._decoder = HdlcDecoder()
        self._last_tid = 0
        #: called with (frame, time.monotonic_ns() of its arrival) for every unsolicited
        #: frame before it is queued (so a listener can timestamp stream packets)
        self.on_unsolicited: Callable[[SpinelFrame, int], None] | None = None

    @property
    def bad_frames(self) -> int:
        """Frames dropped for a bad FCS (also runts, aborts, overruns)."""
        d = self._decoder
        return d.bad_fcs + d.runts + d.aborts + d.overruns

    # -- low level ----------------------------------------------------------------------

    def _next_tid(self) -> int:
        self._last_tid = self._last_tid % TID_MASK + 1  # 1..15, never 0
        return self._last_tid

    def send(self, frame: SpinelFrame) -> None:
        """Write one Spinel frame, HDLC-lite framed."""
        self.port.write(encode_frame(frame.encode()))

    def _receive(self) -> list[SpinelFrame]:
        """Frames that arrived since the last call (waits one short poll when none did)."""
        data = self.port.read_some()
        if not data:
            return []
        now_ns = time.monotonic_ns()
        frames: list[SpinelFrame] = []
        for payload in self._decoder.feed(data):
            try:
                frame = SpinelFrame.decode(payload)
            except SpinelError:
                self.malformed += 1
                continue
            if frame.unsolicited and self.on_unsolicited is not None:
                self.on_unsolicited(frame, now_ns)
            frames.append(frame)
        return frames

    def poll(self, timeout: float = 0.0) -> None:
        """Read for up to ``timeout``; unsolicited frames go to ``self.unsolicited``."""
        deadline = time.monotonic() + timeout
        while True:
            for frame in self._receive():
                if frame.unsolicited:
                    self.unsolicited.append(frame)
                else:
                    self.stray += 1
            if time.monotonic() >= deadline:
                return

    def transact(self, command: int, prop: int | None, value: bytes, timeout: float) -> SpinelFrame:
        """Send a command with a fresh TID and return the reply carrying that TID."""
        tid = self._next_tid()
        self.send(SpinelFrame(command=command, prop=prop, value=value, tid=tid, iid=self.iid))
        deadline = time.monotonic() + timeout
        while True:
            for frame in self._receive():
                if frame.unsolicited:
                    self.unsolicited.append(frame)
                elif frame.tid == tid and frame.iid == self.iid:
                    return frame
                else:
                    self.stray += 1
            if time.monotonic() >= deadline:
                what = _cmd_name(command) + (f" {prop_name(prop)}" if prop is not None else "")
                raise SpinelTimeout(
                    f"{self.port.label}: no reply to {what} (TID {tid}) within "
                    f"{timeout:.1f} s; check that the NCP is powered and not hung"
                )

    def _prop_command(self, command: Cmd, prop: int, value: bytes, timeout: float) -> bytes:
        reply = self.transact(command, prop, value, timeout)
        is_status = reply.command == Cmd.PROP_VALUE_IS and reply.prop == Prop.LAST_STATUS
        if is_status and prop != Prop.LAST_STATUS:
            status = Unpacker(reply.value).uint()
            if status != Status.OK:
                raise SpinelStatusError(
                    f"{self.port.label}: {command.name} {prop_name(prop)} (TID {reply.tid}) "
                    f"failed: NCP status {status_name(status)}",
                    prop,
                    status,
                )
            return b""
        if reply.prop != prop:
            raise SpinelStatusError(
                f"{self.port.label}: {command.name} {prop_name(prop)} (TID {reply.tid}) "
                f"answered with {_cmd_name(reply.command)} "
                f"{prop_name(reply.prop) if reply.prop is not None else '(no property)'}",
                prop,
                Status.FAILURE,
            )
        return reply.value

    # -- commands -----------------------------------------------------------------------

    def get(self, prop: int, timeout: float = 1.0) -> bytes:
        """The raw value of ``prop`` (PROP_VALUE_GET -> PROP_VALUE_IS)."""
        return self._prop_command(Cmd.PROP_VALUE_GET, prop, b"", timeout)

    def set(self, prop: int, value: bytes, timeout: float = 1.0) -> bytes:
        """Set ``prop``; return the value the NCP reports back."""
        return self._prop_command(Cmd.PROP_VALUE_SET, prop, value, timeout)

    def reset(self, timeout: float = 2.0) -> int:
        """Reset the NCP and wait for its LAST_STATUS RESET_* notification; return the status."""
        tid = self._next_tid()
        self.send(SpinelFrame(command=Cmd.RESET, tid=tid, iid=self.iid))
        deadline = time.monotonic() + timeout
        while True:
            for frame in self._receive():
                if (
                    frame.tid in (0, tid)
                    and frame.command == Cmd.PROP_VALUE_IS
                    and frame.prop == Prop.LAST_STATUS
                ):
                    try:
                        status = Unpacker(frame.value).uint()
                    except SpinelError:
                        self.malformed += 1
                        continue
                    if is_reset_status(status):
                        self._decoder.reset()
                        return status
                if frame.unsolicited:
                    self.unsolicited.append(frame)
                else:
                    self.stray += 1
            if time.monotonic() >= deadline:
                raise SpinelTimeout(
                    f"{self.port.label}: no LAST_STATUS RESET_* notification after RESET "
                    f"(TID {tid}) within {timeout:.1f} s; check that the NCP is powered"
                )

    def identify(self, timeout: float = 1.0) -> NcpIdentity:
        """Protocol version, NCP version, interface type, vendor id, caps and EUI-64."""
        version = Unpacker(self.get(Prop.PROTOCOL_VERSION, timeout))
        protocol_version = (version.uint(), version.uint())
        ncp_version = Unpacker(self.get(Prop.NCP_VERSION, timeout)).utf8()
        interface_type = Unpacker(self.get(Prop.INTERFACE_TYPE, timeout)).uint()
        hwaddr = Unpacker(self.get(Prop.HWADDR, timeout)).eui64()
        vendor_id: int | None = None
        caps: list[int] = []
        try:
            vendor_id = Unpacker(self.get(Prop.VENDOR_ID, timeout)).uint()
        except SpinelStatusError as exc:
            if exc.status != Status.PROP_NOT_FOUND:
                raise
        try:
            raw = Unpacker(self.get(Prop.CAPS, timeout))
            while raw.remaining:
                caps.append(raw.uint())
        except SpinelStatusError as exc:
            if exc.status != Status.PROP_NOT_FOUND:
                raise
        return NcpIdentity(
            protocol_version=protocol_version,
            ncp_version=ncp_version,
            interface_type=interface_type,
            vendor_id=vendor_id,
            caps=caps,
            hwaddr=hwaddr.hex(":"),
        )
