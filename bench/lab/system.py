"""Thin, checked wrappers around the host tools the virtual lab drives (ip, kill, ...)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from bench.errors import LabError

REQUIRED_TOOLS = {
    "ip": "iproute2",
    "sshd": "openssh-server",
    "ssh-keygen": "openssh-client",
    "unshare": "util-linux",
}


def require_root(action: str) -> None:
    """Refuse politely when not root: namespaces and veth links need CAP_NET_ADMIN/CAP_SYS_ADMIN."""
    if os.geteuid() != 0:
        raise LabError(
            f"{action} needs root: the virtual lab creates network namespaces, veth links and "
            "mount namespaces and starts an sshd per gateway; run it as root "
            "(e.g. `sudo -E fieldrig lab up`, or CI as root)"
        )


def find_tool(name: str) -> str:
    """Absolute path of a host tool, or a LabError saying which package brings it."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")
    if path is None:
        package = REQUIRED_TOOLS.get(name, name)
        raise LabError(f"'{name}' not found on this machine; install it: apt-get install {package}")
    return path


def run(argv: Sequence[str], *, check: bool = True, input_text: str | None = None) -> str:
    """Run a host command; on failure a LabError carries the command and its stderr."""
    proc = subprocess.run(
        list(argv), input=input_text, capture_output=True, text=True, check=False, timeout=60
    )
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        last = detail[-1] if detail else f"exit status {proc.returncode}"
        raise LabError(f"`{' '.join(argv)}` failed: {last}")
    return proc.stdout


def netns_list() -> list[str]:
    """Names of all named network namespaces (`ip netns list`)."""
    out = run(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def netns_pids(namespace: str) -> list[int]:
    """Every process whose network namespace is `namespace`."""
    out = run(["ip", "netns", "pids", namespace], check=False)
    return [int(tok) for tok in out.split() if tok.isdigit()]


def link_names(namespace: str | None = None) -> list[str]:
    """Interface names in the root namespace or in `namespace`."""
    argv = ["ip", "-o", "link", "show"]
    if namespace:
        argv = ["ip", "-n", namespace, "-o", "link", "show"]
    names = []
    for line in run(argv, check=False).splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            names.append(parts[1].strip().split("@", 1)[0])
    return names


def pid_alive(pid: int) -> bool:
    """True when `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def kill_all(pids: Sequence[int], grace_s: float = 1.0) -> None:
    """SIGTERM, then SIGKILL whatever is still alive after `grace_s`; waits until all are gone."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        alive = [p for p in pids if pid_alive(p)]
        for pid in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while alive and time.monotonic() < deadline:
            alive = [p for p in alive if pid_alive(p)]
            if alive:
                time.sleep(0.02)
        if not alive:
            return
    raise LabError(f"processes {alive} survived SIGKILL; check for a hung kernel task (ps -o stat)")


def in_namespace(namespace: str | None, argv: Sequence[str]) -> list[str]:
    """``argv`` as run inside network namespace ``namespace`` (unchanged for None: the host)."""
    return list(argv) if namespace is None else ["ip", "netns", "exec", namespace, *argv]


def bench_python_env() -> dict[str, str]:
    """This environment, with this checkout first on PYTHONPATH, so a helper started as
    ``python -m bench.<module>`` (also inside a namespace) runs this very code."""
    repo = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path}


def stop_process(
    proc: subprocess.Popen[str] | subprocess.Popen[bytes], grace_s: float = 5.0
) -> str:
    """Stop a helper started with ``start_new_session=True``: SIGTERM to its process group,
    SIGKILL after ``grace_s``; wait for it, close its pipes and return what was left unread
    on its stderr pipe (text; "" without one), for the error message of a failed start.
    One that has already exited is only waited for."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        if proc.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=wait_s)
    proc.wait(timeout=10)
    leftover = ""
    if proc.stderr is not None and not proc.stderr.closed:
        data = proc.stderr.read()
        leftover = data.decode(errors="replace") if isinstance(data, bytes) else data
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    return leftover
