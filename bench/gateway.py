"""A gateway as tests see it: one persistent SSH connection and agent, reconnecting on loss."""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Protocol

import paramiko

from bench.errors import HostKeyMismatch, TransportError
from bench.rig import Gateway, SshEndpoint
from bench.transport.agent import AgentClient, Command, CommandResult, RemoteProcess
from bench.transport.ssh import SshParams, open_transport


class Commands(Protocol):
    """Capability "command": run programs on a board (or on a virtual lab tier)."""

    name: str

    def run(
        self,
        command: Command,
        *,
        timeout: float = 60.0,
        stdin: bytes | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        check: bool = True,
    ) -> CommandResult: ...


class CommandRunner(Commands, Protocol):
    """Commands, and programs left running in the background."""

    def spawn(
        self, command: Command, *, env: Mapping[str, str] | None = None, cwd: str | None = None
    ) -> RemoteProcess: ...


def ssh_params(spec: Gateway) -> SshParams:
    """Flatten a rig gateway's ssh section into connection parameters."""
    return endpoint_params(spec.name, spec.ssh)


def endpoint_params(label: str, ssh: SshEndpoint) -> SshParams:
    """Connection parameters for any ssh block of the rig; ``label`` names the host in
    errors (a gateway's name, ``router <host>``)."""
    auth, host_key = ssh.auth, ssh.host_key
    return SshParams(
        gateway=label,
        host=ssh.host,
        port=ssh.port,
        user=ssh.user,
        identity_file=auth.identity_file,
        use_agent=bool(auth.agent),
        password_env=auth.password_env,
        known_hosts=host_key.known_hosts,
        pinned=list(host_key.pinned) if host_key.pinned is not None else None,
        tofu=host_key.tofu,
        connect_timeout_s=ssh.connect_timeout_s,
        keepalive_s=ssh.keepalive_s,
        reconnect_deadline_s=ssh.reconnect_deadline_s,
    )


class ConnectedGateway:
    """Commands, background processes and files on one gateway over one SSH transport.

    The connection is opened on first use and reused by every caller. When it is lost
    (the board rebooted, sshd restarted, power cut) the next call reconnects, retrying
    until ``reconnect_deadline_s``. A command whose connection died while it ran is never
    re-sent: its outcome is unknown, so the caller gets a TransportError.
    """

    def __init__(self, spec: Gateway, params: SshParams | None = None) -> None:
        self.spec = spec
        self.name = spec.name
        self.params = params or ssh_params(spec)
        self._lock = threading.Lock()
        self._transport: paramiko.Transport | None = None
        self._agent: AgentClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self.connects = 0  # how many times a connection was (re)opened

    def __repr__(self) -> str:
        return f"<ConnectedGateway {self.name} {self.params.host}:{self.params.port}>"

    # ------------------------------------------------------------------ connection
    def connect(self, deadline_s: float | None = None) -> AgentClient:
        """The live agent, (re)connecting until the deadline if needed."""
        with self._lock:
            if self._agent is not None and self._agent.alive:
                return self._agent
            self._drop()
            deadline = time.monotonic() + (
                self.params.reconnect_deadline_s if deadline_s is None else deadline_s
            )
            delay = 0.1
            while True:
                try:
                    self._transport = open_transport(self.params)
                    self._agent = AgentClient(self._transport, self.name)
                    self.connects += 1
                    return self._agent
                except TransportError as exc:
                    self._drop()
                    remaining = deadline - time.monotonic()
                    if isinstance(exc, HostKeyMismatch) or remaining <= 0:
                        raise
                time.sleep(min(delay, remaining))
                delay = min(delay * 2, 2.0)

    def _drop(self) -> None:
        if self._agent is not None:
            self._agent.close()
        if self._sftp is not None:
            with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
                self._sftp.close()
        if self._transport is not None:
            self._transport.close()
        self._agent = self._sftp = self._transport = None

    def close(self) -> None:
        with self._lock:
            self._drop()

    @property
    def connected(self) -> bool:
        return self._agent is not None and self._agent.alive

    # ------------------------------------------------------------------ commands
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
        """Run a command to completion on the board (see AgentClient.run)."""
        return self.connect().run(
            command, timeout=timeout, stdin=stdin, env=env, cwd=cwd, check=check
        )

    def spawn(
        self, command: Command, *, env: Mapping[str, str] | None = None, cwd: str | None = None
    ) -> RemoteProcess:
        """Start a background process on the board."""
        return self.connect().spawn(command, env=env, cwd=cwd)

    def ping(self) -> tuple[int, int, int]:
        """One agent round trip: (local ns before, board wall ns, local ns after)."""
        return self.connect().ping()

    # ------------------------------------------------------------------ files
    def sftp(self) -> paramiko.SFTPClient:
        self.connect()
        with self._lock:
            if self._sftp is None:
                assert self._transport is not None
                self._sftp = paramiko.SFTPClient.from_transport(self._transport)
                if self._sftp is None:
                    raise TransportError(f"gateway {self.name}: the SFTP subsystem refused")
            return self._sftp

    def remote_sha256(self, path: str) -> str | None:
        """sha256 of a file on the board, or None when it does not exist."""
        result = self.run(["sha256sum", "--", path], check=False, timeout=120)
        return result.text.split()[0] if result.ok else None

    def put(self, local: Path, remote: str, mode: int | None = None) -> bool:
        """Upload `local` to `remote` over SFTP unless the board already has identical bytes.

        Returns True when bytes were transferred. The upload goes to a temporary name
        and is renamed into place, so a cut connection never leaves a half file.
        """
        digest = hashlib.sha256(local.read_bytes()).hexdigest()
        if self.remote_sha256(remote) == digest:
            return False
        parent = str(PurePosixPath(remote).parent)
        self.run(["mkdir", "-p", "--", parent])
        tmp = f"{remote}.fieldrig-part"
        sftp = self.sftp()
        sftp.put(str(local), tmp)
        if mode is not None:
            sftp.chmod(tmp, mode)
        sftp.posix_rename(tmp, remote)
        return True

    def get(self, remote: str, local: Path) -> None:
        """Download one file from the board."""
        local.parent.mkdir(parents=True, exist_ok=True)
        self.sftp().get(remote, str(local))
