"""A pseudo-terminal that stands in for a USB serial device (tests and device emulators).

``PtyDevice`` owns the master side of a pty pair and publishes the slave under a stable
symlink, the way udev publishes a dongle under /dev/serial/by-id. The host side opens
``device.path`` like any serial port; the emulator (or a test thread) talks through
``read*``/``write*``. ``unplug()`` closes the master and removes the symlink (the host's
next read or write fails with EIO, as when a USB dongle is pulled); ``replug()`` creates
a fresh pty behind the same symlink path.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import time
import tty
from pathlib import Path
from types import TracebackType

DEFAULT_NAME = "usb-fieldrig_Virtual_Dongle_0001-if00-port0"
_POLL_S = 0.02
_WRITE_TIMEOUT_S = 5.0


class PtyDevice:
    """The device end of an emulated serial device, published as a symlink in ``directory``.

    Writes may come from any thread; reads should come from one thread at a time.
    """

    def __init__(self, directory: Path, name: str = DEFAULT_NAME) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path: Path = directory / name
        # Reads wait in select() holding the read lock; writes from other threads only take
        # the write lock, so a reader waiting for the host never delays a write. Plugging
        # and unplugging take both, so no fd is closed while in use.
        self._read_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._master: int | None = None
        self._slave: int | None = None
        self._tty_name = ""
        self._buf = bytearray()
        self._plug()

    @property
    def plugged(self) -> bool:
        return self._master is not None

    @property
    def tty_name(self) -> str:
        """The pty the symlink points at now (``/dev/pts/N``), ``""`` while unplugged."""
        return self._tty_name

    def _plug(self) -> None:
        master, slave = os.openpty()
        tty.setraw(master)
        tty.setraw(slave)
        os.set_blocking(master, False)
        tty_name = os.ttyname(slave)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(tty_name)
        os.replace(tmp, self.path)  # atomic: the path never points at a half-made pty
        with self._read_lock, self._write_lock:
            # The slave fd stays open so the master never sees EIO while the host reconnects.
            self._master, self._slave, self._tty_name = master, slave, tty_name

    def unplug(self) -> None:
        """Pull the cable: remove the symlink, close the pty; unread bytes are lost."""
        with self._read_lock, self._write_lock:
            self.path.unlink(missing_ok=True)
            for fd in (self._master, self._slave):
                if fd is not None:
                    os.close(fd)
            self._master = self._slave = None
            self._tty_name = ""
            self._buf.clear()

    def replug(self) -> None:
        """Plug back in: a new pty behind the same symlink path."""
        if self.plugged:
            self.unplug()
        self._plug()

    def close(self) -> None:
        self.unplug()

    def __enter__(self) -> PtyDevice:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def write(self, data: bytes) -> None:
        """Send bytes to the host; while unplugged they are dropped, as on a real device."""
        with self._write_lock:
            fd = self._master
            if fd is None:
                return
            view = memoryview(data)
            deadline = time.monotonic() + _WRITE_TIMEOUT_S
            while view:
                with contextlib.suppress(BlockingIOError):
                    view = view[os.write(fd, view) :]
                if view:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"pty {self._tty_name}: host is not reading")
                    select.select([], [fd], [], _POLL_S)

    def write_line(self, line: str, newline: bytes = b"\r\n") -> None:
        self.write(line.encode() + newline)

    def _receive(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for bytes from the host; append them to the buffer."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = max(0.0, deadline - time.monotonic())
            with self._read_lock:
                fd = self._master
                if fd is not None and select.select([fd], [], [], min(_POLL_S, remaining))[0]:
                    try:
                        data = os.read(fd, 4096)
                    except (BlockingIOError, OSError):
                        data = b""
                    if data:
                        self._buf += data
                        return True
            if fd is None:
                time.sleep(min(_POLL_S, remaining))
            if time.monotonic() >= deadline:
                return False

    def read(self, timeout: float) -> bytes:
        """Return what the host sent, waiting up to ``timeout`` for the first bytes."""
        if not self._buf:
            self._receive(timeout)
        data = bytes(self._buf)
        self._buf.clear()
        return data

    def read_until(self, terminator: bytes, timeout: float) -> bytes | None:
        """Bytes up to and including ``terminator``; ``None`` on timeout (partial data kept)."""
        deadline = time.monotonic() + timeout
        while (end := self._buf.find(terminator)) < 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self._receive(remaining)
        end += len(terminator)
        data = bytes(self._buf[:end])
        del self._buf[:end]
        return data

    def read_line(self, timeout: float) -> str | None:
        """One line from the host without its ending; ``None`` on timeout."""
        data = self.read_until(b"\n", timeout)
        return None if data is None else data.rstrip(b"\r\n").decode(errors="replace")
