"""Client side of the remote agent: many commands over one SSH channel, sub-millisecond."""

from __future__ import annotations

import base64
import contextlib
import itertools
import queue
import shlex
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko

from bench.errors import BenchError, CommandTimeout, TransportError
from bench.transport.agent_remote import HEADER, encode_frame

AGENT_SOURCE = (Path(__file__).parent / "agent_remote.py").read_bytes()
# Read exactly the agent's source from stdin, then run it; nothing is written on the board.
BOOTSTRAP = (
    "python3 -c 'import sys;b=sys.stdin.buffer;"
    'exec(compile(b.read(int(b.readline())),"fieldrig-agent","exec"))\''
)
Command = str | Sequence[str]


class CommandFailed(BenchError):
    """A command exited non-zero where the caller asked for success (check=True)."""


@dataclass(frozen=True)
class CommandResult:
    """What one remote command did; durations are measured on the board."""

    gateway: str
    command: str
    exit_status: int | None
    signal: int | None
    timed_out: bool
    stdout: bytes
    stderr: bytes
    duration_s: float

    @property
    def ok(self) -> bool:
        return self.exit_status == 0 and not self.timed_out

    @property
    def text(self) -> str:
        return self.stdout.decode("utf-8", "replace")

    def check(self) -> CommandResult:
        """Return self, or raise CommandTimeout / CommandFailed with the reason in one line."""
        if self.timed_out:
            raise CommandTimeout(
                f"gateway {self.gateway}: `{self.command}` timed out after {self.duration_s:.1f} s"
                " and was killed"
            )
        if not self.ok:
            err = self.stderr.decode("utf-8", "replace").strip().splitlines()
            how = f"signal {self.signal}" if self.signal else f"exit status {self.exit_status}"
            tail = f": {err[-1]}" if err else ""
            raise CommandFailed(f"gateway {self.gateway}: `{self.command}` failed with {how}{tail}")
        return self


def describe(command: Command) -> str:
    return command if isinstance(command, str) else shlex.join(command)


def _request_fields(command: Command) -> dict[str, Any]:
    return {"shell": command} if isinstance(command, str) else {"argv": list(command)}


class RemoteProcess:
    """A background process on the gateway: stream its lines, signal it, wait for it."""

    def __init__(self, agent: AgentClient, request_id: int, command: str) -> None:
        self._agent = agent
        self.request_id = request_id
        self.command = command
        self.pid: int | None = None
        self.exit_status: int | None = None
        self.signal_number: int | None = None
        self.exited = threading.Event()
        self.started = threading.Event()
        self.lines: queue.Queue[tuple[str, str]] = queue.Queue()

    def _on_event(self, msg: dict[str, Any]) -> None:
        op = msg["op"]
        if op == "started":
            self.pid = msg["pid"]
            self.started.set()
        elif op == "line":
            self.lines.put(
                (msg["stream"], base64.b64decode(msg["data"]).decode("utf-8", "replace"))
            )
        elif op == "exit":
            self.exit_status, self.signal_number = msg["rc"], msg["signal"]
            self.exited.set()
            self.started.set()
        elif op == "error":
            self.lines.put(("err", msg["message"]))
            self.exited.set()
            self.started.set()

    def iter_lines(self, timeout: float) -> Iterator[tuple[str, str]]:
        """Yield (stream, line) until the process exits and its output is drained, or timeout."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CommandTimeout(f"`{self.command}`: no end of output within {timeout} s")
            try:
                yield self.lines.get(timeout=min(remaining, 0.05))
            except queue.Empty:
                if self.exited.is_set() and self.lines.empty():
                    return

    def send_signal(self, sig: int) -> None:
        """Signal the process group on the board."""
        self._agent.call({"op": "signal", "target": self.request_id, "sig": sig}, timeout=10)

    def write(self, data: bytes, eof: bool = False) -> None:
        self._agent.call(
            {"op": "stdin", "target": self.request_id,
             "data": base64.b64encode(data).decode(), "eof": eof},
            timeout=10,
        )  # fmt: skip

    def wait(self, timeout: float) -> int | None:
        """Exit status (None if killed by a signal); CommandTimeout if still running."""
        if not self.exited.wait(timeout):
            raise CommandTimeout(f"`{self.command}` still running after {timeout} s")
        return self.exit_status


@dataclass(frozen=True)
class PendingCommand:
    """A command sent to the agent whose result has not been collected yet."""

    agent: AgentClient
    command: str
    timeout: float
    future: Future[dict[str, Any]]

    def result(self, check: bool = True) -> CommandResult:
        # the agent enforces `timeout` (it kills the process group); wait a little longer here
        reply = self.agent.wait(self.future, self.timeout + 10.0)
        result = CommandResult(
            gateway=self.agent.gateway,
            command=self.command,
            exit_status=reply["rc"],
            signal=reply["signal"],
            timed_out=reply["timed_out"],
            stdout=base64.b64decode(reply["out"]),
            stderr=base64.b64decode(reply["err"]),
            duration_s=(reply["t_end_ns"] - reply["t_start_ns"]) / 1e9,
        )
        return result.check() if check else result


class AgentClient:
    """One agent process on a gateway, reached over one SSH channel of `transport`."""

    def __init__(self, transport: paramiko.Transport, gateway: str, timeout: float = 15.0) -> None:
        self.gateway = gateway
        self._ids = itertools.count(1)
        self._pending: dict[int, Future[dict[str, Any]]] = {}
        self._processes: dict[int, RemoteProcess] = {}
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._closed: str | None = None
        self._stderr = b""
        self._hello: Future[dict[str, Any]] = Future()
        self._pending[0] = self._hello
        try:
            self.channel = transport.open_session(timeout=timeout)
            self.channel.exec_command(BOOTSTRAP)
            self.channel.sendall(b"%d\n" % len(AGENT_SOURCE) + AGENT_SOURCE)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise TransportError(f"gateway {gateway}: cannot start the agent: {exc}") from None
        self._reader = threading.Thread(
            target=self._read_loop, name=f"agent-{gateway}", daemon=True
        )
        self._reader.start()
        try:
            self.hello = self._hello.result(timeout)
        except FutureTimeout:
            self.close()
            raise TransportError(
                f"gateway {gateway}: the agent did not start within {timeout} s"
            ) from None
        except TransportError as exc:
            stderr = self._stderr.decode("utf-8", "replace").strip()
            if "not found" in stderr:
                raise TransportError(
                    f"gateway {gateway}: python3 not found on the board; install python3 "
                    "(the fieldrig agent needs Python 3.8 or newer)"
                ) from None
            raise TransportError(f"{exc}; agent stderr: {stderr[-300:]}") from None

    # ------------------------------------------------------------------ plumbing
    @property
    def alive(self) -> bool:
        return self._closed is None and not self.channel.closed

    def _recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.channel.recv(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return bytes(buf)

    def _read_loop(self) -> None:
        import json

        reason = "the agent's channel closed"
        try:
            while True:
                (length,) = HEADER.unpack(self._recv_exact(HEADER.size))
                msg = json.loads(self._recv_exact(length))
                self._dispatch(msg)
        except (EOFError, OSError, paramiko.SSHException) as exc:
            if not isinstance(exc, EOFError):
                reason = f"connection lost: {exc}"
        while self.channel.recv_stderr_ready():
            self._stderr += self.channel.recv_stderr(65536)
        self._fail_all(reason)

    def _dispatch(self, msg: dict[str, Any]) -> None:
        rid = msg.get("id")
        with self._lock:
            proc = self._processes.get(rid) if isinstance(rid, int) else None
            future = None if proc else self._pending.pop(rid, None)  # type: ignore[arg-type]
        if proc is not None:
            proc._on_event(msg)
            if msg["op"] in ("exit", "error"):
                with self._lock:
                    self._processes.pop(proc.request_id, None)
        elif future is not None:
            future.set_result(msg)

    def _fail_all(self, reason: str) -> None:
        with self._lock:
            self._closed = reason
            pending, self._pending = self._pending, {}
            procs, self._processes = self._processes, {}
        error = TransportError(f"gateway {self.gateway}: {reason}")
        for future in pending.values():
            if not future.done():
                future.set_exception(error)
        for proc in procs.values():
            proc._on_event({"op": "error", "message": str(error)})

    def _send(self, msg: dict[str, Any]) -> None:
        frame = encode_frame(msg)
        try:
            with self._send_lock:
                self.channel.sendall(frame)
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise TransportError(f"gateway {self.gateway}: send failed: {exc}") from None

    def submit(self, msg: dict[str, Any]) -> Future[dict[str, Any]]:
        """Send one request; the future resolves to its reply (or a TransportError)."""
        future: Future[dict[str, Any]] = Future()
        with self._lock:
            if self._closed:
                raise TransportError(f"gateway {self.gateway}: {self._closed}")
            rid = next(self._ids)
            self._pending[rid] = future
        self._send({**msg, "id": rid})
        return future

    def wait(self, future: Future[dict[str, Any]], timeout: float) -> dict[str, Any]:
        """The reply of a submitted request; agent-side errors become TransportErrors."""
        try:
            reply = future.result(timeout)
        except FutureTimeout:
            raise TransportError(
                f"gateway {self.gateway}: no answer from the agent within {timeout:.1f} s"
            ) from None
        if reply["op"] == "error":
            raise TransportError(f"gateway {self.gateway}: agent: {reply['message']}")
        return reply

    def call(self, msg: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send one request and wait for its reply."""
        return self.wait(self.submit(msg), timeout)

    # ------------------------------------------------------------------ API
    def submit_run(
        self,
        command: Command,
        *,
        timeout: float = 60.0,
        stdin: bytes | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> PendingCommand:
        """Start a command without waiting; many may be in flight on one channel."""
        msg: dict[str, Any] = {"op": "run", "timeout": timeout, "env": dict(env or {}), "cwd": cwd}
        msg.update(_request_fields(command))
        if stdin is not None:
            msg["stdin"] = base64.b64encode(stdin).decode("ascii")
        return PendingCommand(self, describe(command), timeout, self.submit(msg))

    def run(
        self,
        command: Command,
        *,
        timeout: float = 60.0,
        stdin: bytes | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        check: bool = True,
    ) -> CommandResult:
        """Run a command (a shell string, or an argv list run without a shell) to completion."""
        pending = self.submit_run(command, timeout=timeout, stdin=stdin, env=env, cwd=cwd)
        return pending.result(check=check)

    def spawn(
        self, command: Command, *, env: Mapping[str, str] | None = None, cwd: str | None = None
    ) -> RemoteProcess:
        """Start a background process; its output streams back line by line."""
        with self._lock:
            if self._closed:
                raise TransportError(f"gateway {self.gateway}: {self._closed}")
            rid = next(self._ids)
            proc = RemoteProcess(self, rid, describe(command))
            self._processes[rid] = proc
        msg: dict[str, Any] = {"op": "spawn", "id": rid, "env": dict(env or {}), "cwd": cwd}
        msg.update(_request_fields(command))
        self._send(msg)
        if not proc.started.wait(15.0):
            raise TransportError(f"gateway {self.gateway}: `{proc.command}` did not start")
        if proc.pid is None:
            raise TransportError(
                f"gateway {self.gateway}: cannot start `{proc.command}`: "
                f"{proc.lines.get_nowait()[1] if not proc.lines.empty() else ''}"
            )
        return proc

    def ping(self, timeout: float = 5.0) -> tuple[int, int, int]:
        """(local wall ns before, board wall ns, local wall ns after) for clock-offset estimates."""
        t0 = time.time_ns()
        reply = self.call({"op": "ping"}, timeout)
        t1 = time.time_ns()
        return t0, int(reply["wall_ns"]), t1

    def close(self) -> None:
        with contextlib.suppress(OSError, paramiko.SSHException, EOFError):
            self.channel.close()
        self._reader.join(timeout=2)
