"""The life of a lab helper process (``python -m bench.lab.<x> --rig FILE``): start from the
rig, print one line saying what it serves, run until SIGTERM / SIGINT, stop cleanly."""

from __future__ import annotations

import argparse
import signal
import threading
from collections.abc import Callable, Sequence
from types import FrameType

from bench.errors import BenchError
from bench.rig import Rig, load_rig

Started = tuple[str, Callable[[], None]]
"""What a service's start function returns: its banner line and how to stop it."""


def run_service(
    prog: str,
    title: str,
    description: str | None,
    argv: Sequence[str] | None,
    start: Callable[[Rig], Started],
) -> int:
    """Parse ``--rig``, start the service, serve until signalled; 2 when it cannot start."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--rig", required=True)
    args = parser.parse_args(argv)
    try:
        banner, stop_service = start(load_rig(args.rig))
    except (BenchError, OSError) as exc:
        print(f"{title}: {exc}", flush=True)
        return 2
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"{title}: {banner}", flush=True)
    while not stop.wait(1.0):
        pass
    stop_service()
    return 0
