"""Fault targets on a router the bench reaches over SSH (a Linux or OpenWrt box).

The nft and tc commands the bench runs locally for a fault run on the router instead, over
one SSH connection per router (paramiko; the host key is verified as for gateways, auth
by identity file, ssh-agent or a password in an environment variable). Every command runs
under :data:`~bench.faults.target.COMMAND_TIMEOUT_S`. The router's SSH user needs
CAP_NET_ADMIN there (root on OpenWrt). A lost connection is reopened by the next command.

Owner marks name the bench process (pid, start time, boot id of the bench host), so the
stale sweep judges a router's faults from the bench host: one bench host per router.
"""

from __future__ import annotations

import select
import shlex
import socket
import subprocess
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bench.errors import TransportError
from bench.faults.base import FaultError
from bench.lab.system import in_namespace
from bench.rig import Rig, SshEndpoint

if TYPE_CHECKING:  # paramiko is imported when a router is first used (faster imports)
    import paramiko

    from bench.transport.ssh import SshParams

__all__ = ["Router", "routers_of"]


@dataclass
class _Connection:
    lock: threading.Lock = field(default_factory=threading.Lock)
    transport: paramiko.Transport | None = None
    session_paths: tuple[tuple[str, str], ...] | None = None


_connections: dict[tuple[str, str, int], _Connection] = {}
_connections_lock = threading.Lock()


@dataclass(frozen=True)
class Router:
    """A router reached over SSH; equal (and hashed) by ``user@host:port``."""

    user: str
    host: str
    port: int = 22
    params: SshParams | None = field(default=None, compare=False, hash=False, repr=False)

    @classmethod
    def from_endpoint(cls, ssh: SshEndpoint) -> Router:
        """The router a rig's ``backhaul.router.ssh`` block names."""
        from bench.gateway import endpoint_params

        params = endpoint_params(f"router {ssh.host}", ssh)
        return cls(ssh.user, ssh.host, ssh.port, params)

    @property
    def label(self) -> str:
        """``router:user@host`` (``:port`` off 22)."""
        port = "" if self.port == 22 else f":{self.port}"
        return f"router:{self.user}@{self.host}{port}"

    def key(self) -> dict[str, Any]:
        """What a state file records to find this router again."""
        return {"user": self.user, "host": self.host, "port": self.port}

    def matches(self, data: object) -> bool:
        """Whether a state file's ``router`` entry (:meth:`key`) names this router."""
        return isinstance(data, dict) and data == self.key()

    def __str__(self) -> str:
        return self.label

    # --- commands ------------------------------------------------------------------------

    def _state(self) -> _Connection:
        with _connections_lock:
            return _connections.setdefault((self.user, self.host, self.port), _Connection())

    def _transport(self, state: _Connection) -> paramiko.Transport:
        from bench.transport.ssh import open_transport

        with state.lock:
            if state.transport is not None and state.transport.is_active():
                return state.transport
            if self.params is None:
                raise FaultError(f"{self.label}: no SSH settings; build it from the rig")
            if state.transport is not None:
                state.transport.close()
            state.session_paths = None
            try:
                state.transport = open_transport(self.params)
            except TransportError as exc:
                raise FaultError(f"{self.label}: {exc}") from None
            return state.transport

    def run(
        self,
        argv: Sequence[str],
        *,
        input_text: str | None = None,
        what: str,
        check: bool = True,
        timeout: float = 10.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` on the router; failures are one-line :class:`FaultError`\\ s."""
        import paramiko

        from bench.faults.target import error_line

        command = shlex.join(argv)
        state = self._state()
        try:
            channel = self._transport(state).open_session(timeout=timeout)
            channel.exec_command(command)
            if input_text:
                channel.sendall(input_text.encode())
            channel.shutdown_write()
            out, err, status = _collect(channel, time.monotonic() + timeout)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            with state.lock:
                if state.transport is not None:
                    state.transport.close()
            raise FaultError(f"{what}: {self.label}: SSH failed: {exc}") from None
        if status is None:
            raise FaultError(f"{what}: `{command}` on {self.label} hung for {timeout:g} s")
        proc = subprocess.CompletedProcess(list(argv), status, out, err)
        if status == 127 and not out:
            raise FaultError(f"{what}: {argv[0]} is not installed on {self.label}")
        if check and status != 0:
            raise FaultError(
                f"{what}: `{' '.join(argv[:3])} ...` failed on {self.label}: {error_line(proc)}"
            )
        return proc

    def link_names(self, namespace: str | None = None) -> list[str]:
        """The router's interface names (``ip -o link show``, in ``namespace`` if given)."""
        argv = in_namespace(namespace, ["ip", "-o", "link", "show"])
        out = self.run(argv, what=f"listing links on {self.label}").stdout
        names = []
        for line in out.splitlines():
            parts = line.split(":", 2)
            if len(parts) == 3:
                names.append(parts[1].strip().split("@", 1)[0])
        return names

    def session_paths(self) -> tuple[tuple[str, str], ...]:
        """``(interface, why)`` for each interface the bench's own SSH session to this
        router uses: the one holding the address it connected to, and the one the route
        back to the bench leaves through (as the router sees them, from
        ``$SSH_CONNECTION``; the socket's own view where the router does not set it)."""
        state = self._state()
        transport = self._transport(state)
        with state.lock:
            if state.session_paths is not None:
                return state.session_paths
        what = f"guard on {self.label}"
        env = self.run(["sh", "-c", 'echo "$SSH_CONNECTION"'], what=what).stdout.split()
        sock = transport.sock
        if len(env) == 4:
            client, server = env[0], env[2]
        elif isinstance(sock, socket.socket):
            client, server = str(sock.getsockname()[0]), str(sock.getpeername()[0])
        else:
            raise FaultError(f"{what}: cannot tell which interface the SSH session uses")
        paths: list[tuple[str, str]] = []
        addresses = self.run(["ip", "-o", "addr", "show"], what=what, check=False).stdout
        for line in addresses.splitlines():
            parts = line.split()
            for key in ("inet", "inet6"):
                if key in parts[:-1] and parts[parts.index(key) + 1].split("/")[0] == server:
                    paths.append((parts[1], f"it holds {server}, where the bench's SSH session "
                                  f"to {self.label} arrives"))  # fmt: skip
        route = self.run(["ip", "-o", "route", "get", client], what=what, check=False).stdout
        words = route.split()
        if "dev" in words[:-1]:
            device = words[words.index("dev") + 1]
            paths.append((device, f"the route back to the bench ({client}) on {self.label} "
                          "leaves through it"))  # fmt: skip
        with state.lock:
            state.session_paths = tuple(paths)
        return state.session_paths

    def close(self) -> None:
        """Close this router's connection (the next command reopens it)."""
        state = self._state()
        with state.lock:
            if state.transport is not None:
                state.transport.close()
                state.transport = None
            state.session_paths = None


def _collect(channel: paramiko.Channel, deadline: float) -> tuple[str, str, int | None]:
    """Read stdout and stderr until the command exits; status None when it outlived
    ``deadline`` (the channel is closed then)."""
    out, err = bytearray(), bytearray()
    while True:
        if channel.recv_ready():
            out += channel.recv(65536)
            continue
        if channel.recv_stderr_ready():
            err += channel.recv_stderr(65536)
            continue
        if channel.exit_status_ready():
            break
        left = deadline - time.monotonic()
        if left <= 0:
            channel.close()
            return out.decode(errors="replace"), err.decode(errors="replace"), None
        select.select([channel], [], [], min(left, 0.05))
    while channel.recv_ready() or channel.recv_stderr_ready():
        out += channel.recv(65536) if channel.recv_ready() else b""
        err += channel.recv_stderr(65536) if channel.recv_stderr_ready() else b""
    status = channel.recv_exit_status()
    channel.close()
    if status < 0:
        raise EOFError("the connection closed before the command's exit status came")
    return out.decode(errors="replace"), err.decode(errors="replace"), status


def routers_of(rig: Rig, names: Iterable[str] | None = None) -> list[Router]:
    """Every router the rig's gateways (or those named) fault their backhaul on, once."""
    wanted = None if names is None else set(names)
    found: dict[Router, None] = {}
    for gw in rig.gateways:
        link = gw.backhaul
        if link is None or link.router is None or (wanted is not None and gw.name not in wanted):
            continue
        found.setdefault(Router.from_endpoint(link.router.ssh), None)
    return list(found)
