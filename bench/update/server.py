"""HTTP artifact server with single-range ``Range`` support and a per-request byte log.

Update clients resume an interrupted download with ``Range: bytes=<offset>-`` (Mender
does, see DESIGN.md section 5), so the server answers a single byte range with
``206 Partial Content`` and ``Content-Range``, an unsatisfiable one with ``416`` and
``Content-Range: bytes */<size>``, and ignores a range it cannot parse or a multi-range
request (serving the whole file, which RFC 9110 section 14.2 allows). Every request appends
one JSON line to the log: path, method, range header, status, the bytes the response should
carry and the bytes actually written to the socket, client, times, so the bench can measure
"bytes downloaded over artifact size". An optional throttle (bytes/s) stretches downloads
so tests can interrupt them.

Run it as ``python -m bench.update.server --dir D --port P --log F [--bind A]
[--throttle BPS]``; in the virtual lab inside the cloud namespace, through
:class:`ServerProcess`. It binds loopback or private (lab) addresses only.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Self
from urllib.parse import unquote, urlsplit

from bench.errors import BenchError
from bench.lab.system import bench_python_env, in_namespace, stop_process

__all__ = [
    "ArtifactServer",
    "ByteRange",
    "DownloadSummary",
    "RangeNotSatisfiable",
    "RequestRecord",
    "ServerError",
    "ServerProcess",
    "check_bind_address",
    "log_size",
    "parse_range",
    "read_log",
    "summarize",
]

CHUNK = 64 * 1024
READY_LINE = "fieldrig-artifact-server ready"
_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)


class ServerError(BenchError):
    """The artifact server cannot start or was given a bad option."""


class RangeNotSatisfiable(Exception):
    """The Range names no byte of the file: answer 416."""


@dataclass(frozen=True)
class ByteRange:
    """Bytes ``start`` to ``end`` inclusive, as HTTP counts them."""

    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.end}/{size}"


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The single byte range a ``Range`` header asks of a ``size``-byte file.

    None means "send the whole file": no header, a syntactically invalid one, a range with
    last < first, or several ranges (a server may ignore Range, RFC 9110 section 14.2).
    Raises :class:`RangeNotSatisfiable` when the first byte is at or past the end (or a
    zero-length suffix). ``bytes=a-b`` is clamped to the file; ``bytes=-n`` is the last n.
    """
    if header is None or "," in header:
        return None
    match = _RANGE.match(header)
    if match is None:
        return None
    first, last = match.group(1), match.group(2)
    if first == "" and last == "":
        return None
    if first == "":  # suffix: the last n bytes
        n = int(last)
        if n == 0 or size == 0:
            raise RangeNotSatisfiable(header)
        return ByteRange(max(0, size - n), size - 1)
    start = int(first)
    end = int(last) if last != "" else size - 1
    if last != "" and end < start:
        return None
    if start >= size:
        raise RangeNotSatisfiable(header)
    return ByteRange(start, min(end, size - 1))


def check_bind_address(address: str) -> str:
    """``address`` if it is a loopback or private literal IP; a ServerError otherwise."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise ServerError(
            f"artifact server: bind address {address!r} is not an IP address; give the lab's "
            "cloud address (e.g. 10.214.0.1) or 127.0.0.1"
        ) from None
    if ip.is_unspecified or not (ip.is_loopback or ip.is_private):
        raise ServerError(
            f"artifact server: refusing to bind {address}: only loopback or lab (private) "
            "addresses are allowed; give the cloud namespace's address or 127.0.0.1"
        )
    return address


class _Handler(BaseHTTPRequestHandler):
    server: ArtifactServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the JSON log is the record

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        started = time.time()
        record: dict[str, Any] = {
            "time": started,
            "client": self.client_address[0],
            "method": self.command,
            "path": self.path,
            "range": self.headers.get("Range"),
            "status": None,
            "start": None,
            "end": None,
            "expected": 0,
            "sent": 0,
        }
        try:
            self._respond(record, body)
        except OSError as exc:  # the client went away, or the socket timed out
            record["error"] = f"{type(exc).__name__}: {exc}"
            self.close_connection = True
        finally:
            record["duration_s"] = round(time.time() - started, 6)
            record["complete"] = record["sent"] == record["expected"]
            self.server.log_request_record(record)

    def _respond(self, record: dict[str, Any], body: bool) -> None:
        path = self.server.resolve(self.path)
        if path is None:
            record["status"] = HTTPStatus.NOT_FOUND.value
            self.send_error(HTTPStatus.NOT_FOUND, "no such artifact")
            return
        size = path.stat().st_size
        try:
            wanted = parse_range(record["range"], size)
        except RangeNotSatisfiable:
            record["status"] = HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE.value
            self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        span = wanted or ByteRange(0, size - 1)
        status = HTTPStatus.PARTIAL_CONTENT if wanted is not None else HTTPStatus.OK
        record.update(status=status.value, start=span.start, end=span.end)
        record["expected"] = span.length if body else 0
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(max(span.length, 0)))
        if wanted is not None:
            self.send_header("Content-Range", wanted.content_range(size))
        self.end_headers()
        if body and span.length > 0:
            with open(path, "rb") as src:
                self._copy(src, span, record)

    def _copy(self, src: BinaryIO, span: ByteRange, record: dict[str, Any]) -> None:
        src.seek(span.start)
        remaining = span.length
        rate = self.server.throttle_bps
        chunk = CHUNK if rate is None else max(1, min(CHUNK, rate // 20))
        begun = time.monotonic()
        while remaining > 0:
            if self.server.stopping.is_set():
                raise ConnectionAbortedError("server stopping")
            data = src.read(min(chunk, remaining))
            if not data:
                raise OSError("artifact shrank while being served")
            self.wfile.write(data)
            record["sent"] += len(data)
            remaining -= len(data)
            if rate is not None:  # sleep until the bytes sent so far are due
                ahead = record["sent"] / rate - (time.monotonic() - begun)
                if ahead > 0:
                    time.sleep(ahead)


class ArtifactServer(ThreadingHTTPServer):
    """Serves the files directly inside ``directory``; one thread per connection.

    :meth:`stop` cuts every open connection and waits for their threads, so each
    interrupted transfer is still logged with the bytes it did send.
    """

    daemon_threads = False  # server_close() joins them: every request gets its log line

    def __init__(
        self,
        directory: Path,
        address: tuple[str, int],
        log_path: Path,
        *,
        throttle_bps: int | None = None,
        socket_timeout_s: float = 30.0,
    ) -> None:
        if not directory.is_dir():
            raise ServerError(f"artifact server: {directory} is not a directory; create it first")
        if throttle_bps is not None and throttle_bps <= 0:
            raise ServerError(f"artifact server: throttle {throttle_bps} must be > 0 bytes/s")
        check_bind_address(address[0])
        self.directory = directory.resolve()
        self.log_path = log_path
        self.throttle_bps = throttle_bps
        self.stopping = threading.Event()
        self._log_lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        # a socket timeout per connection: a stalled client frees its thread
        handler = type("_TimedHandler", (_Handler,), {"timeout": socket_timeout_s})
        try:
            super().__init__(address, handler)
        except OSError as exc:
            raise ServerError(
                f"artifact server: cannot bind {address[0]}:{address[1]}: {exc.strerror}; "
                "pick another port or stop what holds it"
            ) from None

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        super().server_bind()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def resolve(self, request_path: str) -> Path | None:
        """The served file a request path names, or None (no traversal, no listings)."""
        name = unquote(urlsplit(request_path).path).lstrip("/")
        if not name or "/" in name or name in (".", ".."):
            return None
        path = self.directory / name
        return path if path.is_file() else None

    def log_request_record(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, sort_keys=True) + "\n"
        with self._log_lock, open(self.log_path, "a", encoding="utf-8") as log:
            log.write(line)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def stop(self) -> None:
        """Stop serving: cut open connections, log their transfers, close."""
        self.stopping.set()
        self.shutdown()
        with self._connections_lock:
            open_now = list(self._connections)
        for conn in open_now:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self.server_close()


# ---------------------------------------------------------------------- the log
@dataclass(frozen=True)
class RequestRecord:
    """One line of the server's log."""

    time: float
    client: str
    method: str
    path: str
    range: str | None
    status: int | None
    start: int | None
    end: int | None
    expected: int
    sent: int
    complete: bool
    duration_s: float
    error: str | None = None


def read_log(path: Path, offset: int = 0) -> list[RequestRecord]:
    """Every request the server logged from byte ``offset`` on (see :func:`log_size`),
    oldest first; a missing log is an empty one, and a line still being written (no
    newline yet) is left for the next read."""
    if not path.exists():
        return []
    with open(path, "rb") as log:
        log.seek(offset)
        data = log.read().decode("utf-8")
    return [
        RequestRecord(**json.loads(line))
        for line in data.splitlines(keepends=True)
        if line.endswith("\n") and line.strip()
    ]


def log_size(path: Path) -> int:
    """The log's length in bytes now: :func:`read_log` from it sees only later requests."""
    return path.stat().st_size if path.exists() else 0


@dataclass(frozen=True)
class DownloadSummary:
    """What the server sent for one artifact: requests, ranged requests, bytes."""

    path: str
    requests: int
    range_requests: int
    bytes_sent: int
    size: int

    @property
    def overhead(self) -> float:
        """Bytes sent over the artifact's size (1.0 = each byte once)."""
        return self.bytes_sent / self.size if self.size else 0.0


def summarize(records: Sequence[RequestRecord], path: str, size: int) -> DownloadSummary:
    """Sum the GETs of ``path`` (as requested, e.g. ``/model-2.mender``)."""
    gets = [r for r in records if r.method == "GET" and urlsplit(r.path).path == path]
    return DownloadSummary(
        path=path,
        requests=len(gets),
        range_requests=sum(1 for r in gets if r.range is not None),
        bytes_sent=sum(r.sent for r in gets),
        size=size,
    )


# ---------------------------------------------------------------------- in a namespace
class ServerProcess:
    """The server as a child process, optionally inside a network namespace.

    ``with ServerProcess(d, log, "10.214.0.1", 8080, namespace="fr-virtual-cloud"):``
    runs ``ip netns exec NS python -m bench.update.server ...`` and waits for its ready
    line; leaving the block (or :meth:`stop`) kills it.
    """

    def __init__(
        self,
        directory: Path,
        log_path: Path,
        bind: str,
        port: int,
        *,
        namespace: str | None = None,
        throttle_bps: int | None = None,
        socket_timeout_s: float = 30.0,
        start_timeout_s: float = 15.0,
    ) -> None:
        check_bind_address(bind)
        self.directory, self.log_path = directory, log_path
        self.bind, self.port, self.namespace = bind, port, namespace
        self.throttle_bps = throttle_bps
        self.socket_timeout_s = socket_timeout_s
        self.start_timeout_s = start_timeout_s
        self._proc: subprocess.Popen[str] | None = None

    def url(self, name: str) -> str:
        """The URL a gateway downloads file ``name`` from."""
        return f"http://{self.bind}:{self.port}/{name}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> Self:
        if self.running:
            raise ServerError(f"artifact server on {self.bind}:{self.port} is already running")
        argv = [sys.executable, "-m", "bench.update.server", "--dir", str(self.directory),
                "--port", str(self.port), "--bind", self.bind, "--log", str(self.log_path),
                "--socket-timeout", str(self.socket_timeout_s)]  # fmt: skip
        if self.throttle_bps is not None:
            argv += ["--throttle", str(self.throttle_bps)]
        proc = subprocess.Popen(
            in_namespace(self.namespace, argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=bench_python_env(), start_new_session=True,
        )  # fmt: skip
        self._proc = proc
        ready = threading.Event()

        def wait_ready() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.startswith(READY_LINE):
                    ready.set()
                    break

        threading.Thread(target=wait_ready, daemon=True).start()
        if not ready.wait(self.start_timeout_s) or proc.poll() is not None:
            self._proc = None
            err = stop_process(proc, grace_s=0.0).strip().splitlines()
            raise ServerError(
                f"artifact server on {self.bind}:{self.port} did not start within "
                f"{self.start_timeout_s:g} s: {err[-1] if err else 'no output'}"
            )
        return self

    def stop(self, grace_s: float = 5.0) -> None:
        """Stop the server: SIGTERM (it cuts its connections and logs their transfers,
        so clients see the connection drop), SIGKILL after ``grace_s``."""
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_process(proc, grace_s)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.update.server", description="Serve update artifacts over HTTP."
    )
    parser.add_argument("--dir", type=Path, required=True, help="directory of artifacts")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", type=Path, required=True, help="JSON-lines request log")
    parser.add_argument("--bind", default="127.0.0.1", help="loopback or lab address")
    parser.add_argument("--throttle", type=int, default=None, help="bytes/s per transfer")
    parser.add_argument("--socket-timeout", type=float, default=30.0, help="seconds")
    args = parser.parse_args(argv)
    try:
        server = ArtifactServer(
            args.dir, (args.bind, args.port), args.log,
            throttle_bps=args.throttle, socket_timeout_s=args.socket_timeout,
        )  # fmt: skip
    except ServerError as exc:
        print(exc, file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.stop).start())
    print(f"{READY_LINE} http://{args.bind}:{server.port}/", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
