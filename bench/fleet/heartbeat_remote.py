"""The fieldrig heartbeat agent: runs on the gateway and sends UDP heartbeats to a collector.

This file is copied to the board and run by its own python3 (3.8 or newer, standard library
only); it must not import anything from ``bench``. Every ``--interval`` seconds it sends one
datagram, a JSON object::

    {"v": 1, "gateway": NAME, "seq": N, "boot_id": ..., "agent_id": ..., "uptime_s": ...,
     "mono_s": ..., "interval_s": H, "send_errors": E}

``seq`` counts from 0 for each start of the agent (``agent_id`` is new each start), so the
collector sees lost datagrams as gaps. Sends follow a fixed schedule (start + seq * H on the
monotonic clock), so a slow send does not shift the ones after it. A send that fails (no
route, link partitioned) is counted and skipped: the agent keeps its schedule.

Like a real board's agent it dies with the board: after a power cut nothing restarts it
until the bench starts it again once the board has booted.

Modes: ``--detach`` starts it as a daemon (double fork, own session, so it outlives the SSH
session that started it) and prints the daemon's pid; ``--stop`` ends the one recorded in
``--pidfile``; ``--status`` exits 0 when it runs, 1 when not. ``--ttl`` bounds how long it
runs, so one the bench could not stop (the bench was killed) ends by itself.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import sys
import time
import uuid
from typing import Any, Dict, List, Optional

MARKER = "fieldrig-heartbeat"  # in every daemon's argv, so --stop never kills a stranger
PROTOCOL_VERSION = 1


def read_text(path: str) -> Optional[str]:
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            return fh.read().strip()
    except OSError:
        return None


def uptime_s() -> Optional[float]:
    text = read_text("/proc/uptime")
    try:
        return float(text.split()[0]) if text else None
    except ValueError:
        return None


def heartbeat(
    gateway: str, seq: int, boot_id: Optional[str], agent_id: str, interval: float, errors: int
) -> bytes:
    message: Dict[str, Any] = {
        "v": PROTOCOL_VERSION,
        "gateway": gateway,
        "seq": seq,
        "boot_id": boot_id,
        "agent_id": agent_id,
        "uptime_s": uptime_s(),
        "mono_s": time.monotonic(),
        "interval_s": interval,
        "send_errors": errors,
    }
    return json.dumps(message, separators=(",", ":")).encode("utf-8")


def run(args: argparse.Namespace) -> int:
    """Send heartbeats until SIGTERM or the ttl."""
    stop = {"now": False}

    def on_term(signum: int, frame: Any) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    boot_id = read_text("/proc/sys/kernel/random/boot_id")
    agent_id = uuid.uuid4().hex[:12]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if args.source:
        sock.bind((args.source, 0))
    target = (args.collector, args.port)
    start = time.monotonic()
    end = start + args.ttl if args.ttl > 0 else None
    seq = 0
    errors = 0
    while not stop["now"]:
        try:
            sock.sendto(heartbeat(args.gateway, seq, boot_id, agent_id, args.interval, errors),
                        target)  # fmt: skip
        except OSError:
            errors += 1
        seq += 1
        wake = start + seq * args.interval
        now = time.monotonic()
        if end is not None and wake >= end:
            break
        if wake > now:
            time.sleep(wake - now)
        else:  # fell behind (suspended, overloaded): resume the schedule from now
            start = now - seq * args.interval
    sock.close()
    return 0


def pid_of(pidfile: str) -> Optional[int]:
    """The pid in ``pidfile`` when that process is a live heartbeat agent."""
    text = read_text(pidfile)
    if not text or not text.isdigit():
        return None
    pid = int(text)
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as fh:
            argv = fh.read().split(b"\0")
    except OSError:
        return None
    if MARKER.encode() in argv and pidfile.encode() in argv:
        return pid
    return None


def stop(pidfile: str, grace_s: float = 2.0) -> bool:
    """End the agent recorded in ``pidfile``; True when one was running."""
    pid = pid_of(pidfile)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if pid_of(pidfile) is None:
            break
        time.sleep(0.02)
    else:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(OSError):
        os.unlink(pidfile)
    return True


def detach(args: argparse.Namespace) -> int:
    """Start the agent as a daemon and print its pid (the old one, if any, is stopped)."""
    stop(args.pidfile)
    directory = os.path.dirname(args.pidfile)
    if directory:
        os.makedirs(directory, exist_ok=True)
    child_argv = [sys.executable, os.path.abspath(__file__), "--gateway", args.gateway,
                  "--collector", args.collector, "--port", str(args.port),
                  "--interval", repr(args.interval), "--ttl", repr(args.ttl),
                  "--pidfile", args.pidfile, "--marker", MARKER]  # fmt: skip
    if args.source:
        child_argv += ["--source", args.source]
    read_end, write_end = os.pipe()
    if os.fork() == 0:  # first child: new session, then fork again so it is no leader
        os.close(read_end)
        os.setsid()
        pid = os.fork()
        if pid:
            os.write(write_end, str(pid).encode())
            os._exit(0)
        os.close(write_end)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.closerange(3, 1024)
        os.chdir("/")
        os.execv(child_argv[0], child_argv)
    os.close(write_end)
    data = b""
    while True:
        chunk = os.read(read_end, 64)
        if not chunk:
            break
        data += chunk
    os.close(read_end)
    os.wait()
    pid = int(data)
    tmp = args.pidfile + ".tmp"
    with open(tmp, "w", encoding="ascii") as fh:
        fh.write("%d\n" % pid)
    os.replace(tmp, args.pidfile)
    print(pid)
    return 0


def parse(argv: List[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="fieldrig heartbeat agent")
    p.add_argument("--gateway", help="the name this board reports")
    p.add_argument("--collector", help="collector address (IPv4)")
    p.add_argument("--port", type=int, help="collector UDP port")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between heartbeats")
    p.add_argument("--source", default=None, help="local address to send from")
    p.add_argument("--ttl", type=float, default=3600.0, help="stop after this many seconds")
    p.add_argument("--pidfile", default="/tmp/fieldrig/heartbeat.pid")
    p.add_argument("--marker", default=None, help=argparse.SUPPRESS)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--detach", action="store_true", help="run as a daemon, print its pid")
    mode.add_argument("--stop", action="store_true", help="stop the running agent")
    mode.add_argument("--status", action="store_true", help="exit 0 when the agent runs")
    args = p.parse_args(argv)
    if not (args.stop or args.status):
        if not args.gateway or not args.collector or not args.port:
            p.error("--gateway, --collector and --port are required")
        if not 0.01 <= args.interval <= 3600:
            p.error("--interval must be 0.01-3600 s")
    args.pidfile = os.path.abspath(args.pidfile)
    return args


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    if args.stop:
        print("stopped" if stop(args.pidfile) else "not running")
        return 0
    if args.status:
        return 0 if pid_of(args.pidfile) is not None else 1
    if args.detach:
        return detach(args)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
