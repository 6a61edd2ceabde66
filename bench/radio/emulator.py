"""The life cycle every dongle emulator shares: one background thread serving its pty."""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Self


class EmulatorThread:
    """Runs ``self._run()`` on a daemon thread until stopped; usable as a context manager.

    ``_run`` must return soon after ``self._stop`` is set.
    """

    thread_name = "emulator"

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
