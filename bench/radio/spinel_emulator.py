"""An emulated Spinel network co-processor (the dongle side) on a pseudo-terminal.

``SpinelEmulator`` runs a thread on a ``PtyDevice`` and behaves as an OpenThread / TI Wi-SUN
NCP does on its UART: HDLC-lite frames whose FCS fails are dropped and counted (no reply),
PROP_VALUE_GET is answered by PROP_VALUE_IS with the request's IID and TID, an unknown
property by PROP_VALUE_IS LAST_STATUS PROP_NOT_FOUND, RESET (after ``reset_delay_s``) by an
unsolicited (TID 0) PROP_VALUE_IS LAST_STATUS RESET_POWER_ON. Properties are a dict of
handlers (``add_property``) so more of them (neighbour and route tables) can be plugged in.

For tests it can emit unsolicited frames or raw bytes at any time, inject bytes just before
its next reply, and go silent (a hung NCP: it still reads, but never answers).
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from collections.abc import Callable

from bench.radio.emulator import EmulatorThread
from bench.radio.hdlc import HdlcDecoder, encode_frame
from bench.radio.spinel import (
    PROTOCOL_TYPE_THREAD,
    PROTOCOL_VERSION_MAJOR,
    PROTOCOL_VERSION_MINOR,
    Cmd,
    Prop,
    SpinelError,
    SpinelFrame,
    Status,
    pack_eui64,
    pack_uint,
    pack_utf8,
)
from bench.transport.ptyport import PtyDevice

Getter = Callable[[], bytes]
Setter = Callable[[bytes], None]
StreamWriter = Callable[[bytes], None]

DEFAULT_NCP_VERSION = "fieldrig-virtual-ncp/1.0; OPENTHREAD"
DEFAULT_HWADDR = bytes.fromhex("18b4300000000001")
#: example capability numbers the emulator advertises (opaque to the driver)
DEFAULT_CAPS = (1, 2, 5, 32, 48)
_READ_S = 0.02
_REQUESTS_KEPT = 256


class PropertyError(Exception):
    """Raised by a property handler to answer with LAST_STATUS ``status`` instead of a value."""

    def __init__(self, status: int) -> None:
        super().__init__(f"status {status}")
        self.status = status


class SpinelEmulator(EmulatorThread):
    """An NCP answering Spinel on ``device``; ``start()``/``stop()`` or use as a context."""

    thread_name = "spinel-emulator"

    def __init__(
        self,
        device: PtyDevice,
        *,
        ncp_version: str = DEFAULT_NCP_VERSION,
        hwaddr: bytes = DEFAULT_HWADDR,
        interface_type: int = PROTOCOL_TYPE_THREAD,
        vendor_id: int = 0,
        caps: tuple[int, ...] = DEFAULT_CAPS,
        reset_delay_s: float = 0.05,
        reset_status: int = Status.RESET_POWER_ON,
    ) -> None:
        self.device = device
        self.ncp_version = ncp_version
        self.hwaddr = pack_eui64(hwaddr)
        self.interface_type = interface_type
        self.vendor_id = vendor_id
        self.caps = caps
        self.reset_delay_s = reset_delay_s
        self.reset_status = reset_status
        #: a hung NCP: frames are still read (and counted) but never answered
        self.silent = False
        self.resets = 0
        #: every Spinel frame received, newest last
        self.requests: collections.deque[SpinelFrame] = collections.deque(maxlen=_REQUESTS_KEPT)
        self.getters: dict[int, Getter] = {}
        self.setters: dict[int, Setter] = {}
        self.streams: dict[int, StreamWriter] = {}
        self._decoder = HdlcDecoder()
        self._malformed = 0
        self._inject: list[bytes] = []
        self._inject_lock = threading.Lock()
        super().__init__()
        self._plugged = device.plugged
        self.add_property(Prop.PROTOCOL_VERSION, self._get_protocol_version)
        self.add_property(Prop.NCP_VERSION, lambda: pack_utf8(self.ncp_version))
        self.add_property(Prop.INTERFACE_TYPE, lambda: pack_uint(self.interface_type))
        self.add_property(Prop.VENDOR_ID, lambda: pack_uint(self.vendor_id))
        self.add_property(Prop.CAPS, lambda: b"".join(pack_uint(c) for c in self.caps))
        self.add_property(Prop.HWADDR, lambda: self.hwaddr)

    @staticmethod
    def _get_protocol_version() -> bytes:
        return pack_uint(PROTOCOL_VERSION_MAJOR) + pack_uint(PROTOCOL_VERSION_MINOR)

    # -- configuration ------------------------------------------------------------------

    def add_property(self, prop: int, getter: Getter, setter: Setter | None = None) -> None:
        """Answer GET ``prop`` with ``getter()``; SET with ``setter(value)`` then ``getter()``."""
        self.getters[prop] = getter
        if setter is not None:
            self.setters[prop] = setter
        else:
            self.setters.pop(prop, None)

    def add_stream(self, prop: int, on_write: StreamWriter) -> None:
        """A stream property (e.g. STREAM_NET): SET hands the value to ``on_write`` and is
        answered LAST_STATUS OK (or the PropertyError's status); GET is refused with
        INVALID_COMMAND_FOR_PROP, as streams cannot be read back."""
        self.streams[prop] = on_write

    def remove_property(self, prop: int) -> None:
        self.getters.pop(prop, None)
        self.setters.pop(prop, None)

    @property
    def bad_frames(self) -> int:
        """Frames dropped for a bad FCS (as a real NCP drops them)."""
        return self._decoder.bad_fcs

    @property
    def malformed(self) -> int:
        """Frames with a good FCS that were not Spinel frames."""
        return self._malformed

    # -- running ------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            data = self.device.read(_READ_S)
            plugged = self.device.plugged
            if plugged != self._plugged:  # unplugged / replugged: any partial frame is gone
                self._plugged = plugged
                self._decoder.reset()
            if not data:
                continue
            for payload in self._decoder.feed(data):
                try:
                    frame = SpinelFrame.decode(payload)
                except SpinelError:
                    self._malformed += 1
                    continue
                self.requests.append(frame)
                if not self.silent:
                    self._handle(frame)

    # -- output -------------------------------------------------------------------------

    def send_raw(self, data: bytes) -> None:
        """Put bytes on the wire as they are (line noise, hand-made frames)."""
        with contextlib.suppress(TimeoutError):
            self.device.write(data)

    def send_frame(self, frame: SpinelFrame) -> None:
        self.send_raw(encode_frame(frame.encode()))

    def emit_unsolicited(self, frame: SpinelFrame) -> None:
        """Send a notification now (normally TID 0) regardless of what the host is doing."""
        self.send_frame(frame)

    def inject_before_next_reply(self, data: bytes) -> None:
        """Write ``data`` on the wire right before the next reply (then forget it)."""
        with self._inject_lock:
            self._inject.append(data)

    def _reply(self, frame: SpinelFrame) -> None:
        with self._inject_lock:
            pending, self._inject = self._inject, []
        for data in pending:
            self.send_raw(data)
        self.send_frame(frame)

    def _status(self, request: SpinelFrame, status: int, tid: int | None = None) -> None:
        self._reply(
            SpinelFrame(
                command=Cmd.PROP_VALUE_IS,
                prop=Prop.LAST_STATUS,
                value=pack_uint(status),
                tid=request.tid if tid is None else tid,
                iid=request.iid,
            )
        )

    # -- commands -----------------------------------------------------------------------

    def _handle(self, frame: SpinelFrame) -> None:
        if frame.command == Cmd.NOOP:
            self._status(frame, Status.OK)
        elif frame.command == Cmd.RESET:
            self.resets += 1
            time.sleep(self.reset_delay_s)
            self._decoder.reset()
            self._status(frame, self.reset_status, tid=0)
        elif frame.command == Cmd.PROP_VALUE_GET:
            self._get(frame)
        elif frame.command == Cmd.PROP_VALUE_SET:
            self._set(frame)
        else:
            self._status(frame, Status.INVALID_COMMAND)

    def _value_is(self, request: SpinelFrame, prop: int) -> None:
        getter = self.getters[prop]
        try:
            value = getter()
        except PropertyError as exc:
            self._status(request, exc.status)
            return
        self._reply(
            SpinelFrame(
                command=Cmd.PROP_VALUE_IS,
                prop=prop,
                value=value,
                tid=request.tid,
                iid=request.iid,
            )
        )

    def _get(self, frame: SpinelFrame) -> None:
        assert frame.prop is not None  # decode() sets it for PROP_VALUE_* commands
        if frame.prop in self.streams:
            self._status(frame, Status.INVALID_COMMAND_FOR_PROP)
            return
        if frame.prop not in self.getters:
            self._status(frame, Status.PROP_NOT_FOUND)
            return
        self._value_is(frame, frame.prop)

    def _set(self, frame: SpinelFrame) -> None:
        assert frame.prop is not None
        stream = self.streams.get(frame.prop)
        if stream is not None:
            try:
                stream(frame.value)
            except PropertyError as exc:
                self._status(frame, exc.status)
                return
            except SpinelError:
                self._status(frame, Status.PARSE_ERROR)
                return
            self._status(frame, Status.OK)
            return
        setter = self.setters.get(frame.prop)
        if setter is None:
            self._status(frame, Status.PROP_NOT_FOUND)
            return
        try:
            setter(frame.value)
        except PropertyError as exc:
            self._status(frame, exc.status)
            return
        except SpinelError:
            self._status(frame, Status.PARSE_ERROR)
            return
        self._value_is(frame, frame.prop)
