"""The heartbeat collector: a UDP listener in the cloud that logs every heartbeat it receives.

``python -m bench.fleet.collector --bind ADDR --port P --out FILE`` appends one JSON line
per datagram to FILE: the heartbeat as sent (see heartbeat_remote.py) plus ``recv_wall``
(Unix time), ``recv_mono`` (CLOCK_MONOTONIC, which network namespaces share, so a monitor on
the same host compares it with its own ``time.monotonic()``) and ``from`` ("ip:port"). A
datagram that is not a JSON object becomes ``{"invalid": ...}``. The first line is
``{"event": "listening", "port": P, ...}`` once the socket is bound (``--port 0`` picks a
free port). Each line is one ``write``, so a reader never sees half of one unless it reads
while it is being written (it keeps the tail for the next read).

In the virtual lab it runs in the cloud namespace (``ip netns exec fr-<lab>-cloud ...``),
bound to the cloud address, where the gateways' backhauls end: :func:`lab_collector`.
``--parent-pid`` makes it exit when the bench that started it is gone (a killed run leaves
no collector behind).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any, Self

from bench.errors import InfrastructureError
from bench.lab.system import in_namespace, stop_process

if TYPE_CHECKING:
    from bench.rig import Rig

__all__ = ["Collector", "CollectorError", "lab_collector", "main", "serve"]

MAX_DATAGRAM = 4096
START_TIMEOUT_S = 15.0
_PARENT_CHECK_S = 0.5


class CollectorError(InfrastructureError):
    """The collector could not be started, or the rig has nowhere to run it."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _record(data: bytes, sender: tuple[str, int]) -> dict[str, Any]:
    wall, mono = time.time(), time.monotonic()
    try:
        message = json.loads(data)
    except ValueError:
        message = None
    if not isinstance(message, dict):
        message = {"invalid": data[:200].decode("utf-8", "replace")}
    message.update(recv_wall=wall, recv_mono=mono, **{"from": f"{sender[0]}:{sender[1]}"})
    return message


def serve(bind: str, port: int, out: Path, parent_pid: int | None = None) -> int:
    """Receive heartbeats until SIGTERM/SIGINT or the parent's death; returns how many."""
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((bind, port))
    count = 0
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        bound = sock.getsockname()
        hello = {"event": "listening", "bind": bound[0], "port": bound[1], "pid": os.getpid(),
                 "recv_wall": time.time(), "recv_mono": time.monotonic()}  # fmt: skip
        os.write(fd, (json.dumps(hello) + "\n").encode())
        while not stopping:
            if parent_pid is not None and not _alive(parent_pid):
                break
            with contextlib.suppress(InterruptedError):
                ready, _, _ = select.select([sock], [], [], _PARENT_CHECK_S)
                if not ready:
                    continue
                data, sender = sock.recvfrom(MAX_DATAGRAM)
                line = json.dumps(_record(data, sender), separators=(",", ":")) + "\n"
                os.write(fd, line.encode())
                count += 1
    finally:
        os.close(fd)
        sock.close()
    return count


class Collector:
    """The collector as a child process of the bench, optionally in a network namespace."""

    def __init__(
        self, out: Path, *, bind: str, port: int = 0, namespace: str | None = None
    ) -> None:
        self.out = out
        self.bind = bind
        self.namespace = namespace
        self._port = port
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = out.with_suffix(".log")

    @property
    def port(self) -> int:
        """The UDP port it listens on (known once started)."""
        if self._proc is None:
            raise CollectorError(f"collector for {self.out}: not started; call start() first")
        return self._port

    @property
    def address(self) -> tuple[str, int]:
        """(address, port) the heartbeat agents send to."""
        return self.bind, self.port

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> Self:
        """Start it and wait for its "listening" line (CollectorError on failure)."""
        if self._proc is not None:
            raise CollectorError(f"collector for {self.out}: already started")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.unlink(missing_ok=True)
        argv = [sys.executable, "-m", "bench.fleet.collector", "--bind", self.bind,
                "--port", str(self._port), "--out", str(self.out),
                "--parent-pid", str(os.getpid())]  # fmt: skip
        with open(self._log, "ab") as log:
            self._proc = subprocess.Popen(
                in_namespace(self.namespace, argv), stdin=subprocess.DEVNULL, stdout=log,
                stderr=log, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            port = self._listening_port()
            if port is not None:
                self._port = port
                return self
            if self._proc.poll() is not None:
                break
            time.sleep(0.02)
        self.stop()
        tail = self._log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
        where = f" in namespace {self.namespace}" if self.namespace else ""
        raise CollectorError(
            f"heartbeat collector on {self.bind}:{self._port}{where} did not start: {tail[0]} "
            f"(log {self._log}); is the lab up and the port free?"
        )

    def _listening_port(self) -> int | None:
        try:
            with open(self.out, encoding="utf-8") as fh:
                first = fh.readline()
        except OSError:
            return None
        if not first.endswith("\n"):
            return None
        hello = json.loads(first)
        return int(hello["port"]) if hello.get("event") == "listening" else None

    def stop(self) -> None:
        """Stop it (SIGTERM, then SIGKILL after 5 s); idempotent."""
        if self._proc is not None:
            stop_process(self._proc)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def lab_collector(rig: Rig, out: Path, port: int = 0) -> Collector:
    """A collector in the virtual lab's cloud namespace, bound to the cloud address."""
    if rig.virtual is None:
        raise CollectorError(
            f"rig '{rig.name}' is not a virtual lab: it has no cloud namespace for the heartbeat "
            "collector; run the collector on your lab's cloud host (python -m "
            "bench.fleet.collector)"
        )
    from bench.lab.virtual import plan_for  # the lab's naming, only needed here

    plan = plan_for(rig)
    return Collector(out, bind=plan.cloud_address, port=port, namespace=plan.cloud_namespace)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.fleet.collector", description="fieldrig heartbeat collector"
    )
    parser.add_argument("--bind", required=True, help="address to listen on")
    parser.add_argument("--port", type=int, required=True, help="UDP port (0: any free one)")
    parser.add_argument("--out", type=Path, required=True, help="JSON-lines file to append to")
    parser.add_argument("--parent-pid", type=int, default=None, help="exit when this pid ends")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port {args.port}: must be 0-65535")
    try:
        serve(args.bind, args.port, args.out, args.parent_pid)
    except OSError as exc:
        print(f"collector on {args.bind}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
