"""Work on many network namespaces at once: one ``ip -batch`` per namespace, one /proc scan
for the processes of all of them, a thread pool for per-gateway host commands.

A lab of 50 gateways built with one ``ip`` process per step forks ~500 of them; batched it
forks one per namespace (see ip(8), ``-batch``: one command per line, ``-force`` goes on
after an error).
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from bench.errors import LabError

NETNS_DIR = Path("/run/netns")  # where `ip netns add` mounts named namespaces
_BATCH_FAILED = re.compile(r"Command failed -:(\d+)")
WORKERS = 8  # host commands in flight at once: enough to hide fork/exec latency on 2 cores

T = TypeVar("T")
R = TypeVar("R")


def ip_batch(commands: Sequence[str], namespace: str | None = None, force: bool = False) -> None:
    """Run ``ip`` commands (one per item, without the leading ``ip``) in one process, in
    ``namespace`` (``ip -n``) or the root namespace; ``force`` keeps going after errors.

    Without ``force`` the first failing command raises a LabError naming it and ip's reason.
    """
    if not commands:
        return
    prefix = ["ip"] if namespace is None else ["ip", "-n", namespace]
    argv = [*prefix, *(["-force"] if force else []), "-batch", "-"]
    proc = subprocess.run(
        argv, input="\n".join(commands) + "\n", capture_output=True, text=True, check=False,
        timeout=60,
    )  # fmt: skip
    if proc.returncode == 0 or force:
        return
    lines = proc.stderr.strip().splitlines()
    failed = _BATCH_FAILED.search(proc.stderr)
    command = commands[int(failed.group(1)) - 1] if failed else "; ".join(commands)
    reasons = [line for line in lines if not _BATCH_FAILED.search(line)]
    reason = reasons[-1] if reasons else f"exit status {proc.returncode}"
    raise LabError(f"`{' '.join(prefix)} {command}` failed: {reason}")


def pids_by_netns(namespaces: Iterable[str]) -> dict[str, list[int]]:
    """Every process in each named namespace (what ``ip netns pids`` does, in one scan)."""
    wanted: dict[tuple[int, int], str] = {}
    found: dict[str, list[int]] = {}
    for name in namespaces:
        found[name] = []
        try:
            st = os.stat(NETNS_DIR / name)
        except OSError:
            continue
        wanted[st.st_dev, st.st_ino] = name
    if not wanted:
        return found
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry.name}/ns/net")
        except OSError:
            continue  # gone, or a kernel thread
        owner = wanted.get((st.st_dev, st.st_ino))
        if owner is not None:
            found[owner].append(int(entry.name))
    return found


def each(items: Sequence[T], work: Callable[[T], R]) -> list[R]:
    """``work(item)`` for every item on a small thread pool; results in order, and the
    first exception (in item order) is raised once all are done."""
    if len(items) <= 1:
        return [work(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(WORKERS, len(items))) as pool:
        futures = [pool.submit(work, item) for item in items]
    return [f.result() for f in futures]
