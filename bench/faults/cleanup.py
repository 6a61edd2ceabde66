"""Removal on every exit path: a process-wide registry of applied faults.

Every fault registers itself before it changes anything and unregisters once removed. At
interpreter exit (``atexit``) and on SIGTERM whatever is still registered is removed,
newest first. The SIGTERM hook is installed from the main thread only (Python's rule) the
first time a fault is applied there or a timeline is made; after cleaning up it hands the
signal to the previous handler, or terminates the process as SIGTERM would have. A process
that ignored SIGTERM keeps ignoring it (and its faults). SIGKILL cannot be caught: the
owner marks let :func:`bench.faults.stale.clear_stale` remove those faults at next start.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
from types import FrameType
from typing import Any

from bench.errors import BenchError
from bench.faults.base import Fault

__all__ = ["active", "install_hooks", "register", "remove_all", "unregister"]

_lock = threading.RLock()
_active: dict[int, Fault] = {}
_atexit_done = False
_previous: Any = None
_sigterm_installed = False


def register(fault: Fault) -> None:
    """Track ``fault`` until :func:`unregister`; installs the exit hooks when it can."""
    install_hooks()
    with _lock:
        _active[id(fault)] = fault


def unregister(fault: Fault) -> None:
    with _lock:
        _active.pop(id(fault), None)


def active() -> list[Fault]:
    """The faults this process has applied and not yet removed, oldest first."""
    with _lock:
        return list(_active.values())


def remove_all() -> list[str]:
    """Remove every registered fault, newest first; returns one line per failure."""
    failures = []
    for fault in reversed(active()):
        try:
            fault.remove()
        except (BenchError, OSError) as exc:
            failures.append(f"{fault.describe().get('target')}: {exc}")
        unregister(fault)
    return failures


def install_hooks() -> None:
    """Install the atexit hook, and the SIGTERM hook when called on the main thread."""
    global _atexit_done, _previous, _sigterm_installed
    with _lock:
        if not _atexit_done:
            atexit.register(_at_exit)
            _atexit_done = True
        if _sigterm_installed or threading.current_thread() is not threading.main_thread():
            return
        previous = signal.getsignal(signal.SIGTERM)
        _sigterm_installed = True
        if previous == signal.SIG_IGN:
            return
        _previous = previous
        signal.signal(signal.SIGTERM, _on_sigterm)


def _at_exit() -> None:
    for line in remove_all():
        print(f"fieldrig: could not remove a fault at exit: {line}", file=sys.stderr)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    _at_exit()
    previous = _previous
    if callable(previous):
        previous(signum, frame)
        return
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)
