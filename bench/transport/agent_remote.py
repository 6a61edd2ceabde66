"""The fieldrig remote agent: runs on the gateway, speaks framed JSON over stdin/stdout.

This file is sent verbatim over one SSH channel and executed by the board's python3
(3.8 or newer, standard library only); it must not import anything from ``bench``.
Command output never reaches the channel directly: every child's stdout and stderr go
through pipes and come back inside frames, so output cannot be mistaken for protocol.

Frame: 4-byte big-endian length, then a UTF-8 JSON object. Requests carry an ``id``;
every reply and event carries the ``id`` of the request it belongs to.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import queue
import selectors
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, Any, Dict, List, Optional, Tuple

PROTOCOL_VERSION = 1
HEADER = struct.Struct(">I")
MAX_FRAME = 256 * 1024 * 1024
KILL_GRACE_S = 1.0
ORPHAN_GRACE_S = 2.0  # how long to wait for pipes held by a process that escaped a kill


def encode_frame(message: dict[str, Any]) -> bytes:
    """Bytes of one frame holding `message` (a JSON-serialisable dict)."""
    body = json.dumps(message, separators=(",", ":")).encode("utf-8")
    return HEADER.pack(len(body)) + body


def read_exact(stream: IO[bytes], n: int) -> bytes | None:
    """Read exactly n bytes from a binary stream; None on clean EOF before the first byte."""
    chunks: list[bytes] = []
    while n:
        chunk = stream.read(n)
        if not chunk:
            if chunks:
                raise EOFError("stream ended inside a frame")
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class Workers:
    """Threads reused across requests; a new one starts only when every worker is busy."""

    def __init__(self) -> None:
        self.tasks: queue.Queue[Callable[[], None]] = queue.Queue()
        self.idle = 0
        self.lock = threading.Lock()

    def submit(self, task: Callable[[], None]) -> None:
        with self.lock:
            start = self.idle == 0
            if not start:
                self.idle -= 1
        self.tasks.put(task)
        if start:
            threading.Thread(target=self.loop, daemon=True).start()

    def loop(self) -> None:
        while True:
            self.tasks.get()()
            with self.lock:
                self.idle += 1


class Agent:
    def __init__(self, rfile: IO[bytes], wfile: IO[bytes]) -> None:
        self.rfile = rfile
        self.wfile = wfile
        self.write_lock = threading.Lock()
        self.procs: dict[int, subprocess.Popen[bytes]] = {}  # spawned processes by request id
        self.procs_lock = threading.Lock()
        self.workers = Workers()

    def send(self, message: dict[str, Any]) -> None:
        frame = encode_frame(message)
        with self.write_lock:
            self.wfile.write(frame)
            self.wfile.flush()

    def serve(self) -> None:
        self.send(
            {
                "op": "hello",
                "id": 0,
                "version": PROTOCOL_VERSION,
                "pid": os.getpid(),
                "python": sys.version.split()[0],
            }
        )
        while True:
            header = read_exact(self.rfile, HEADER.size)
            if header is None:
                break
            (length,) = HEADER.unpack(header)
            if length > MAX_FRAME:
                raise ValueError("frame too large")
            body = read_exact(self.rfile, length)
            if body is None:
                break
            request = json.loads(body.decode("utf-8"))
            op = request.get("op")
            if op == "ping":
                self.send(
                    {
                        "op": "pong",
                        "id": request["id"],
                        "wall_ns": time.time_ns(),
                        "mono_ns": time.monotonic_ns(),
                    }
                )
            elif op == "run":
                self.workers.submit(functools.partial(self.guard, self.run, request))
            elif op == "spawn":
                threading.Thread(target=self.guard, args=(self.spawn, request), daemon=True).start()
            elif op == "signal":
                self.guard(self.signal, request)
            elif op == "stdin":
                self.guard(self.stdin, request)
            else:
                self.send({"op": "error", "id": request.get("id"), "message": "unknown op %r" % op})
        self.shutdown()

    def guard(self, worker: Callable[[dict[str, Any]], None], request: dict[str, Any]) -> None:
        try:
            worker(request)
        except Exception as exc:  # report, never die: the channel outlives one bad request
            self.send(
                {
                    "op": "error",
                    "id": request.get("id"),
                    "message": "%s: %s" % (type(exc).__name__, exc),
                }
            )

    def popen(self, request: dict[str, Any], stdin: int) -> subprocess.Popen[bytes]:
        argv = request.get("argv")
        shell = request.get("shell")
        env = None
        if request.get("env"):
            env = dict(os.environ)
            env.update(request["env"])
        return subprocess.Popen(
            argv if argv is not None else ["/bin/sh", "-c", str(shell)],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=request.get("cwd"),
            env=env,
            start_new_session=True,
        )

    def run(self, request: dict[str, Any]) -> None:
        data = request.get("stdin")
        stdin = subprocess.PIPE if data is not None else subprocess.DEVNULL
        t_start = time.monotonic_ns()
        try:
            proc = self.popen(request, stdin)
        except OSError as exc:  # like a shell: 127 not found, 126 not executable
            rc = 127 if isinstance(exc, FileNotFoundError) else 126
            self.send(
                {
                    "op": "result",
                    "id": request["id"],
                    "rc": rc,
                    "signal": None,
                    "timed_out": False,
                    "out": "",
                    "err": b64(str(exc).encode()),
                    "t_start_ns": t_start,
                    "t_end_ns": time.monotonic_ns(),
                }
            )
            return
        payload = base64.b64decode(data) if data is not None else None
        out, err, timed_out = collect(proc, payload, request.get("timeout"))
        t_end = time.monotonic_ns()
        rc = proc.returncode
        self.send(
            {
                "op": "result",
                "id": request["id"],
                "rc": rc if rc >= 0 else None,
                "signal": -rc if rc < 0 else None,
                "timed_out": timed_out,
                "out": b64(out),
                "err": b64(err),
                "t_start_ns": t_start,
                "t_end_ns": t_end,
            }
        )

    def spawn(self, request: dict[str, Any]) -> None:
        rid = request["id"]
        proc = self.popen(request, subprocess.PIPE)
        with self.procs_lock:
            self.procs[rid] = proc
        self.send({"op": "started", "id": rid, "pid": proc.pid})
        pumps = [
            threading.Thread(target=self.pump, args=(rid, name, stream), daemon=True)
            for name, stream in (("out", proc.stdout), ("err", proc.stderr))
        ]
        for pump in pumps:
            pump.start()
        for pump in pumps:
            pump.join()
        rc = proc.wait()
        with self.procs_lock:
            self.procs.pop(rid, None)
        self.send(
            {
                "op": "exit",
                "id": rid,
                "rc": rc if rc >= 0 else None,
                "signal": -rc if rc < 0 else None,
            }
        )

    def pump(self, rid: int, name: str, stream: IO[bytes]) -> None:
        for line in iter(stream.readline, b""):
            self.send({"op": "line", "id": rid, "stream": name, "data": b64(line)})

    def target(self, request: dict[str, Any]) -> subprocess.Popen[bytes]:
        with self.procs_lock:
            proc = self.procs.get(request["target"])
        if proc is None:
            raise LookupError("no running process %r" % request["target"])
        return proc

    def signal(self, request: dict[str, Any]) -> None:
        proc = self.target(request)
        sig = int(request["sig"])
        if request.get("group", True):
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        self.send({"op": "ok", "id": request["id"]})

    def stdin(self, request: dict[str, Any]) -> None:
        stream = self.target(request).stdin
        if stream is None:
            raise LookupError("process %r has no stdin" % request["target"])
        if request.get("data"):
            stream.write(base64.b64decode(request["data"]))
            stream.flush()
        if request.get("eof"):
            stream.close()
        self.send({"op": "ok", "id": request["id"]})

    def shutdown(self) -> None:
        with self.procs_lock:
            procs = list(self.procs.values())
        for proc in procs:
            kill_group(proc)


def feed(stream: IO[bytes], payload: bytes) -> None:
    try:
        stream.write(payload)
        stream.close()
    except OSError:  # the command exited without reading all of it
        pass


def collect(
    proc: subprocess.Popen[bytes], payload: Optional[bytes], timeout: Optional[float]
) -> Tuple[bytes, bytes, bool]:
    """Feed stdin, read stdout and stderr to their end; (out, err, timed out).

    Not Popen.communicate(): with a timeout it polls with sleeps (milliseconds per command),
    and without one it waits forever for pipes a grandchild that left the process group
    still holds. Here a timeout kills the group, and pipes still open ORPHAN_GRACE_S after
    that are abandoned.
    """
    if payload is not None and proc.stdin is not None:
        threading.Thread(target=feed, args=(proc.stdin, payload), daemon=True).start()
    chunks: Dict[int, List[bytes]] = {}
    selector = selectors.DefaultSelector()
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            chunks[stream.fileno()] = []
            selector.register(stream.fileno(), selectors.EVENT_READ)
    deadline = time.monotonic() + timeout if timeout is not None else None
    killed_at: Optional[float] = None
    while selector.get_map():
        now = time.monotonic()
        if deadline is not None and killed_at is None and now >= deadline:
            kill_group(proc)
            killed_at = time.monotonic()
        if killed_at is not None and time.monotonic() - killed_at >= ORPHAN_GRACE_S:
            break
        if killed_at is not None:
            wait: Optional[float] = ORPHAN_GRACE_S - (time.monotonic() - killed_at)
        else:
            wait = None if deadline is None else max(0.0, deadline - now)
        for key, _ in selector.select(wait):
            block = os.read(key.fd, 65536)
            if block:
                chunks[key.fd].append(block)
            else:
                selector.unregister(key.fd)
    selector.close()
    out = b"".join(chunks.get(proc.stdout.fileno(), [])) if proc.stdout else b""
    err = b"".join(chunks.get(proc.stderr.fileno(), [])) if proc.stderr else b""
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    proc.wait()
    return out, err, killed_at is not None


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, SIGKILL it after a grace period: nothing outlives a timeout."""
    for sig, wait_s in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        if wait_s is None:
            return
        try:
            proc.wait(timeout=wait_s)
            # the leader is gone; make sure its group is too
            os.killpg(proc.pid, signal.SIGKILL)
        except subprocess.TimeoutExpired:
            continue
        except (ProcessLookupError, PermissionError):
            pass
        return


def main() -> None:
    # keep the protocol streams private: a stray print() in this process must not corrupt them
    rfile = os.fdopen(os.dup(0), "rb", buffering=0)
    wfile = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    Agent(rfile, wfile).serve()


if __name__ == "__main__":
    main()
