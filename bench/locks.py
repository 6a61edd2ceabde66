"""Host-local locks: one session per rig on a bench host, and per-test resource locks.

All are ``flock(2)`` locks on files in :func:`lock_dir`: the kernel drops them when their
process dies, however it dies, so a killed run never leaves a lock behind and nothing has
to be cleaned up. Labs shared between hosts use a coordinator instead (bench/reservation).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import socket
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.errors import BenchError

DEFAULT_LOCK_DIR = Path("/run/lock/fieldrig")
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


class RigBusy(BenchError):
    """Another session holds the rig on this host."""


def lock_dir() -> Path:
    """Where lock files live (``$FIELDRIG_LOCK_DIR``, default /run/lock/fieldrig); made
    world-writable and sticky, like /run/lock, so every user of the host shares it."""
    path = Path(os.environ.get("FIELDRIG_LOCK_DIR") or DEFAULT_LOCK_DIR)
    if not path.is_dir():
        path.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(PermissionError):
            path.chmod(0o1777)
    return path


def lock_file(name: str) -> Path:
    """The lock file for ``name`` (any characters outside [A-Za-z0-9_.-] become '_')."""
    return lock_dir() / f"{_SAFE.sub('_', name)}.lock"


def _open(path: Path) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError:  # made by another user: a read-only descriptor can be flocked
        return os.open(path, os.O_RDONLY)


class FileLock:
    """One flock on one file; ``acquire`` blocks unless ``wait`` is False."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, *, shared: bool = False, wait: bool = True) -> bool:
        """Take the lock (converting one this object holds); False when ``wait`` is False
        and another process has it."""
        opened = self._fd is None
        if self._fd is None:
            self._fd = _open(self.path)
        mode = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB)
        try:
            fcntl.flock(self._fd, mode)
        except BlockingIOError:
            if opened:
                self.release()
            return False
        return True

    def write(self, data: dict[str, Any]) -> None:
        """Replace the file's content with ``data`` as JSON (who holds it, for the others)."""
        if self._fd is None:
            raise RuntimeError(f"{self.path} is not held")
        text = (json.dumps(data) + "\n").encode()
        with contextlib.suppress(OSError):  # read-only (another user's file): still locked
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, text, 0)

    def read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8") or "{}")
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None


def holder_info(**extra: Any) -> dict[str, Any]:
    """Who this process is, written into a lock it holds."""
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "user": os.environ.get("SUDO_USER") or os.environ.get("USER") or str(os.getuid()),
        "argv": " ".join(sys.argv)[:300],
        "since": datetime.now(UTC).isoformat(timespec="seconds"),
        **extra,
    }


def describe_holder(info: dict[str, Any]) -> str:
    if not info:
        return "another process"
    return (
        f"pid {info.get('pid', '?')} of {info.get('user', '?')} since {info.get('since', '?')} "
        f"({info.get('argv', '?')})"
    )


def take_rig(rig_name: str, **extra: Any) -> FileLock:
    """Hold rig ``rig_name`` for this session; :class:`RigBusy` names the other session."""
    lock = FileLock(lock_file(f"rig-{rig_name}"))
    if not lock.acquire(wait=False):
        raise RigBusy(
            f"rig '{rig_name}' is in use by another session on this host: "
            f"{describe_holder(lock.read())}; wait for it to end (its lock {lock.path} goes "
            "with its process)"
        )
    lock.write(holder_info(rig=rig_name, **extra))
    return lock


def rig_in_use(rig_name: str) -> dict[str, Any] | None:
    """The holder of rig ``rig_name`` when a session holds it, else None."""
    lock = FileLock(lock_file(f"rig-{rig_name}"))
    if lock.acquire(shared=True, wait=False):
        lock.release()
        return None
    return lock.read() or {"pid": "?"}
