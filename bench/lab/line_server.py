"""A line-oriented TCP server on loopback, the transport of the virtual lab instruments.

Each received line (LF-terminated; a trailing CR is dropped) goes to a handler that returns
the answer line or ``None`` for no answer; the answer is sent with the server's line ending.
Clients are served on their own threads; :meth:`LineServer.stop` also drops connected
clients so a driver that still holds a session sees the instrument go away.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import socketserver
import threading
from collections.abc import Callable
from typing import Self

__all__ = ["LineHandler", "LineServer", "check_loopback"]

LineHandler = Callable[[str], str | None]
"""Called with one received line (without its terminator); returns the answer line."""


def check_loopback(host: str, what: str = "the virtual instrument") -> None:
    """Raise ValueError unless ``host`` resolves to a loopback address."""
    try:
        address = ipaddress.ip_address(socket.gethostbyname(host))
    except (OSError, ValueError):
        raise ValueError(f"cannot resolve {host!r}; {what} binds loopback only") from None
    if not address.is_loopback:
        raise ValueError(f"{host} is not a loopback address; {what} binds loopback only")


class _Connection(socketserver.StreamRequestHandler):
    server: _TcpServer

    def handle(self) -> None:
        self.server.track(self.request, True)
        with contextlib.suppress(OSError):
            for raw in self.rfile:
                reply = self.server.handler(raw.decode("ascii", "replace").strip("\r\n"))
                if reply is not None:
                    self.wfile.write(reply.encode("ascii", "replace") + self.server.eol)
        self.server.track(self.request, False)


class _TcpServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: LineHandler, eol: bytes) -> None:
        self.handler = handler
        self.eol = eol
        self._clients: set[socket.socket] = set()
        self._clients_lock = threading.Lock()
        super().__init__(address, _Connection)

    def track(self, client: socket.socket, alive: bool) -> None:
        with self._clients_lock:
            if alive:
                self._clients.add(client)
            else:
                self._clients.discard(client)

    def drop_clients(self) -> None:
        with self._clients_lock:
            for client in self._clients:
                with contextlib.suppress(OSError):
                    client.shutdown(socket.SHUT_RDWR)


class LineServer:
    """A threaded TCP line server bound to a loopback address (port 0: any free port)."""

    def __init__(
        self,
        handler: LineHandler,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        eol: bytes = b"\n",
        name: str = "line-server",
    ) -> None:
        check_loopback(host, name)
        self.handler = handler
        self.host = host
        self.eol = eol
        self.name = name
        self._port = port
        self._server: _TcpServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port once started (the requested one before)."""
        return self._port

    @property
    def resource(self) -> str:
        """The VISA resource string that reaches this server."""
        return f"TCPIP::{self.host}::{self._port}::SOCKET"

    def start(self) -> Self:
        self._server = _TcpServer((self.host, self._port), self.handler, self.eol)
        self._port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name=self.name, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.drop_clients()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
