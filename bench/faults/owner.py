"""Owner marks: who made a fault, so a crashed run's faults can be told from live ones.

An owner is ``{"run", "pid", "start", "boot", "created"}``: the run id, the owning
process, its start time in clock ticks since boot (``/proc/PID/stat`` field 22, so a
recycled pid is not mistaken for the owner), the kernel boot id and the creation time
(Unix seconds). nft keeps at most 128 characters per comment, so an nft table's comment
holds the JSON mark without the run id (``{"pid", "start", "boot", "created", "kind"}``,
at most ~121 characters) and each of its chains' comments holds ``{"run": ...}``. nft
cannot quote a ``"`` inside a string: in comments the JSON's double quotes are written as
single quotes (a ``'`` inside a value is escaped as ``\\u0027`` first). tc qdiscs cannot
carry text: their owner is in a state file under :data:`STATE_DIR`.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.faults.base import FaultError
from bench.lab import system

__all__ = [
    "STATE_DIR",
    "Owner",
    "boot_id",
    "current_run_id",
    "decode_comment",
    "encode_comment",
    "encode_run_comment",
    "set_run_id",
]

STATE_DIR = Path("/run/fieldrig/faults")
RUN_ID_ENV = "FIELDRIG_RUN_ID"
_COMMENT_LIMIT = 128  # what nft accepts for a comment
_run_id: str | None = None
_run_lock = threading.Lock()


def set_run_id(run_id: str | None) -> None:
    """The run id every fault this process makes from now on is marked with."""
    global _run_id
    with _run_lock:
        _run_id = run_id


def current_run_id() -> str:
    """The run id set by :func:`set_run_id`, else ``$FIELDRIG_RUN_ID``, else ``"none"``."""
    with _run_lock:
        return _run_id or os.environ.get(RUN_ID_ENV) or "none"


def boot_id() -> str:
    """This kernel boot's id (``/proc/sys/kernel/random/boot_id``)."""
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def process_start(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot, None when it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


@dataclass(frozen=True)
class Owner:
    """The process (of a run, in a boot) that made a fault."""

    run: str
    pid: int
    start: int
    boot: str
    created: int

    @classmethod
    def current(cls) -> Owner:
        pid = os.getpid()
        return cls(
            run=current_run_id(),
            pid=pid,
            start=process_start(pid) or 0,
            boot=boot_id(),
            created=int(time.time()),
        )

    def dead_reason(self) -> str | None:
        """Why the owner is gone (None while it lives)."""
        if self.boot != boot_id():
            return f"made in another boot ({self.boot})"
        if not system.pid_alive(self.pid):
            return f"owner pid {self.pid} is dead"
        if process_start(self.pid) != self.start:
            return f"owner pid {self.pid} was reused by another process"
        return None

    def to_json(self, kind: str) -> dict[str, Any]:
        return {**asdict(self), "kind": kind}

    @classmethod
    def from_json(cls, data: Any) -> Owner | None:
        try:
            return cls(
                run=str(data["run"]),
                pid=int(data["pid"]),
                start=int(data["start"]),
                boot=str(data["boot"]),
                created=int(data["created"]),
            )
        except (KeyError, TypeError, ValueError):
            return None


def _quote(data: dict[str, Any]) -> str:
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=True)
    return text.replace("'", "\\u0027").replace('"', "'")


def encode_comment(owner: Owner, kind: str) -> str:
    """The table's owner mark (everything but the run id) as an nft comment."""
    data = owner.to_json(kind)
    del data["run"]
    comment = _quote(data)
    if len(comment) > _COMMENT_LIMIT:  # cannot happen with a real pid, boot id and kind
        raise FaultError(f"owner mark {comment!r} exceeds nft's {_COMMENT_LIMIT} characters")
    return comment


def encode_run_comment(owner: Owner) -> str:
    """``{"run": ...}`` as a chain comment; a run id too long for nft is cut, marked "~"."""
    run = owner.run
    while len(comment := _quote({"run": run})) > _COMMENT_LIMIT:
        run = run[: len(run) - (len(comment) - _COMMENT_LIMIT) - 1] + "~"
    return comment


def _unquote(comment: str) -> dict[str, Any] | None:
    try:
        data = json.loads(comment.replace("'", '"'))
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def decode_comment(
    table_comment: str, chain_comment: str | None = None
) -> tuple[Owner, str] | None:
    """(owner, kind) from the comments :func:`encode_comment` and
    :func:`encode_run_comment` made; None when the table comment is not a fieldrig mark."""
    data = _unquote(table_comment)
    if data is None:
        return None
    run = _unquote(chain_comment) if chain_comment is not None else None
    owner = Owner.from_json({**data, "run": (run or {}).get("run", "unknown")})
    return None if owner is None else (owner, str(data.get("kind", "unknown")))
