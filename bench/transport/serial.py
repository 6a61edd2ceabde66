"""Line-and-expect access to a serial port given as any pyserial URL.

``SerialPort`` works the same over a device path (``/dev/serial/by-id/...``, a pty),
``rfc2217://host:port`` (ser2net), ``socket://host:port`` and ``loop://``. Reads are
buffered: bytes that arrive after a line wait for the next read. With a transcript path,
every chunk read or written and every event is appended and flushed at once, so the
transcript survives a killed run. When the device disappears (a USB dongle pulled, a pty
whose master closed) the port keeps trying to reopen the same URL for
``reopen_deadline_s``, then either carries on or raises one ``TransportError`` line.
"""

from __future__ import annotations

import collections
import contextlib
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Protocol

import serial

from bench.errors import TransportError

_POLL_S = 0.05  # longest a single low-level read blocks; bounds timeout overshoot
_REOPEN_INTERVAL_S = 0.1
_WRITE_TIMEOUT_S = 10.0
_UNMATCHED_MAX = 1000
_LAST_LINES = 5


class SerialTimeout(TransportError):
    """Expected data did not arrive on a serial port in time (the port is still usable)."""


class _Link(Protocol):
    """The part of a pyserial port object this module uses."""

    @property
    def in_waiting(self) -> int: ...
    def read(self, size: int = 1) -> bytes: ...
    def write(self, data: bytes) -> int | None: ...
    def reset_input_buffer(self) -> None: ...
    def close(self) -> None: ...


def _hint(url: str) -> str:
    """What a person should check when ``url`` cannot be opened."""
    if url.startswith("rfc2217://"):
        return "check that the RFC 2217 server (e.g. ser2net) is running and reachable"
    if url.startswith("socket://"):
        return "check that the TCP server is listening at that host and port"
    if "://" in url:
        return "check the URL scheme and its options"
    return (
        "check that the device is plugged in (cable / USB hub), the path exists, "
        "you may open it (dialout group) and no other program holds it"
    )


_HELD_MAX = 4096  # bytes of echo held back at most before they are logged anyway


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


class SerialPort:
    """A serial port with lines, expect(), an optional transcript and reconnection."""

    def __init__(
        self,
        url: str,
        *,
        baudrate: int = 115200,
        name: str = "",
        transcript: Path | None = None,
        reopen_deadline_s: float = 10.0,
        newline: bytes = b"\r\n",
    ) -> None:
        if not newline:
            raise ValueError("newline must not be empty")
        self.url = url
        self.baudrate = baudrate
        self.name = name
        self.transcript = transcript
        self.reopen_deadline_s = reopen_deadline_s
        self.newline = newline
        self.unmatched: collections.deque[str] = collections.deque(maxlen=_UNMATCHED_MAX)
        self._eol = newline[-1:]  # lines end at the last byte of newline (b"\n" for CRLF)
        self._buf = bytearray()
        self._link: _Link | None = None
        self._log_file: IO[str] | None = None
        self._secrets: list[bytes] = []
        self._rx_held: bytearray | None = None  # the echo of a line that carried a secret

    @property
    def label(self) -> str:
        """How messages name this port: ``serial port <name> (<url>)``."""
        return f"serial port {self.name} ({self.url})" if self.name else f"serial port {self.url}"

    @property
    def is_open(self) -> bool:
        return self._link is not None

    # -- opening and closing -------------------------------------------------------------

    def _connect(self) -> _Link:
        options: dict[str, float] = {"timeout": _POLL_S, "write_timeout": _WRITE_TIMEOUT_S}
        if self.url.lower().startswith("rfc2217://"):
            del options["write_timeout"]  # pyserial's RFC 2217 client does not support it
        link: _Link = serial.serial_for_url(self.url, baudrate=self.baudrate, **options)
        return link

    def open(self) -> None:
        """Open the port; raise ``TransportError`` naming it and what to check."""
        if self._link is not None:
            return
        if self.transcript is not None and self._log_file is None:
            try:
                self.transcript.parent.mkdir(parents=True, exist_ok=True)
                self._log_file = self.transcript.open("a", encoding="utf-8")
            except OSError as exc:
                raise TransportError(
                    f"{self.label}: cannot write transcript {self.transcript}: "
                    f"{_one_line(exc)}; check the directory exists and is writable"
                ) from exc
        try:
            self._link = self._connect()
        except (serial.SerialException, OSError, ValueError) as exc:
            self._log("EV", f"open failed: {_one_line(exc)}")
            raise TransportError(
                f"{self.label}: cannot open: {_one_line(exc)}; {_hint(self.url)}"
            ) from exc
        self._log("EV", f"open {self.url} baudrate={self.baudrate}")

    def _drop_link(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            # The device may already be gone; there is nothing left to release then.
            with contextlib.suppress(serial.SerialException, OSError):
                link.close()

    def close(self) -> None:
        if self._link is not None:
            self._drop_link()
            self._log("EV", "close")
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> SerialPort:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- transcript and recovery ---------------------------------------------------------

    def add_secret(self, secret: str | bytes) -> None:
        """Never write ``secret`` to the transcript: it becomes ``<secret>`` there, in what
        is sent and in its echo (held until the echoed line ends, so a split echo cannot
        leak a part of it)."""
        value = secret.encode() if isinstance(secret, str) else bytes(secret)
        if value and value not in self._secrets:
            self._secrets.append(value)

    def _log_data(self, kind: str, data: bytes) -> None:
        if self._secrets:
            if kind == "RX" and self._rx_held is not None:
                self._rx_held += data
                if self._eol not in self._rx_held and len(self._rx_held) < _HELD_MAX:
                    return
                data, self._rx_held = bytes(self._rx_held), None
            carries = any(secret in data for secret in self._secrets)
            for secret in self._secrets:
                data = data.replace(secret, b"<secret>")
            if kind == "TX" and carries:
                self._rx_held = bytearray()
        self._log(kind, repr(data))

    def _log(self, kind: str, text: str) -> None:
        if self._log_file is not None:
            stamp = datetime.now(UTC).isoformat(timespec="microseconds")
            self._log_file.write(f"{stamp} {kind} {text}\n")
            self._log_file.flush()

    def _require_link(self) -> _Link:
        if self._link is None:
            raise TransportError(f"{self.label}: not open; call open() first")
        return self._link

    def _recover(self, exc: BaseException) -> _Link:
        """The device went away: reopen the same URL within the deadline or raise."""
        self._log("EV", f"lost: {_one_line(exc)}")
        self._drop_link()
        deadline = time.monotonic() + self.reopen_deadline_s
        while True:
            try:
                link = self._connect()
            except (serial.SerialException, OSError, ValueError) as err:
                now = time.monotonic()
                if now >= deadline:
                    raise TransportError(
                        f"{self.label}: device gone and did not return within "
                        f"{self.reopen_deadline_s:.1f} s; check the cable / USB hub"
                    ) from err
                time.sleep(min(_REOPEN_INTERVAL_S, deadline - now))
                continue
            self._link = link
            self._log("EV", "reopened")
            return link

    # -- writing -------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Write all of ``data``; after a reconnect the write is retried once."""
        link = self._require_link()
        for attempt in range(2):
            try:
                link.write(data)
            except serial.SerialTimeoutException as exc:
                raise SerialTimeout(
                    f"{self.label}: writing {len(data)} bytes did not finish within "
                    f"{_WRITE_TIMEOUT_S:.1f} s; check that the device reads (flow control)"
                ) from exc
            except (serial.SerialException, OSError) as exc:
                if attempt:
                    self._log("EV", f"lost: {_one_line(exc)}")
                    self._drop_link()
                    raise TransportError(
                        f"{self.label}: write failed again after reconnecting: "
                        f"{_one_line(exc)}; check the cable / USB hub"
                    ) from exc
                link = self._recover(exc)
            else:
                self._log_data("TX", data)
                return

    def write_line(self, line: str) -> None:
        self.write(line.encode() + self.newline)

    # -- reading -------------------------------------------------------------------------

    def _fill(self) -> None:
        """Move what arrives within one poll interval into the buffer; survive a lost device."""
        link = self._require_link()
        try:
            chunk = link.read(1)
            if chunk and (waiting := link.in_waiting):
                chunk += link.read(waiting)
        except (serial.SerialException, OSError) as exc:
            self._recover(exc)
            return
        if chunk:
            self._log_data("RX", chunk)
            self._buf += chunk

    def _take(self, end: int) -> bytes:
        data = bytes(self._buf[:end])
        del self._buf[:end]
        return data

    def read_until(self, terminator: bytes, timeout: float) -> bytes:
        """Bytes up to and including ``terminator``; ``SerialTimeout`` keeps them buffered."""
        deadline = time.monotonic() + timeout
        while (end := self._buf.find(terminator)) < 0:
            if time.monotonic() >= deadline:
                raise SerialTimeout(
                    f"{self.label}: no {terminator!r} within {timeout:.1f} s; "
                    f"received so far: {bytes(self._buf[-200:])!r}"
                )
            self._fill()
        return self._take(end + len(terminator))

    def read_line(self, timeout: float) -> str:
        """One line without its ending (``\\r``/``\\n`` stripped), decoded as UTF-8."""
        data = self.read_until(self._eol, timeout)
        return data.rstrip(b"\r\n").decode(errors="replace")

    def read_exactly(self, n: int, timeout: float) -> bytes:
        """Exactly ``n`` bytes; ``SerialTimeout`` keeps what arrived buffered."""
        deadline = time.monotonic() + timeout
        while len(self._buf) < n:
            if time.monotonic() >= deadline:
                raise SerialTimeout(
                    f"{self.label}: got {len(self._buf)} of {n} bytes within {timeout:.1f} s"
                )
            self._fill()
        return self._take(n)

    def expect(self, pattern: str | re.Pattern[str], timeout: float) -> re.Match[str]:
        """Read lines until one matches (``search``); the others go to ``self.unmatched``."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        seen: collections.deque[str] = collections.deque(maxlen=_LAST_LINES)
        while True:
            try:
                line = self.read_line(max(0.0, deadline - time.monotonic()))
            except SerialTimeout:
                raise SerialTimeout(
                    f"{self.label}: no line matching {regex.pattern!r} within {timeout:.1f} s; "
                    f"last lines: {list(seen)!r}; pending: {bytes(self._buf[-200:])!r}"
                ) from None
            if match := regex.search(line):
                return match
            seen.append(line)
            self.unmatched.append(line)

    def read_some(self) -> bytes:
        """What arrives next: returns as soon as bytes are there, or empty after one short
        poll interval (so frame arrival can be timestamped without busy waiting)."""
        if not self._buf:
            self._fill()
        return self._take(len(self._buf))

    def read_available(self) -> bytes:
        """Everything buffered or already waiting at the port, without blocking."""
        link = self._require_link()
        try:
            while waiting := link.in_waiting:
                chunk = link.read(waiting)
                self._log_data("RX", chunk)
                self._buf += chunk
        except (serial.SerialException, OSError) as exc:
            self._recover(exc)
        return self._take(len(self._buf))

    def reset_input(self) -> None:
        """Discard buffered input and whatever waits at the port."""
        self._buf.clear()
        link = self._require_link()
        try:
            link.reset_input_buffer()
        except (serial.SerialException, OSError) as exc:
            self._recover(exc)
