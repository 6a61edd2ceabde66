"""SSH connections with paramiko: verified host keys, keepalive, one transport per gateway."""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

import paramiko

from bench.errors import TransportError
from bench.transport.hostkeys import verify_host_key

# paramiko logs every failed handshake with a traceback; fieldrig reports them as one line
logging.getLogger("paramiko").addHandler(logging.NullHandler())


@dataclass(frozen=True)
class SshParams:
    """Everything needed to reach one gateway's sshd (built from the rig's ssh section)."""

    gateway: str
    host: str
    port: int = 22
    user: str = "root"
    identity_file: Path | None = None
    use_agent: bool = False
    password_env: str | None = None
    known_hosts: Path | None = None
    pinned: list[str] | None = field(default=None)
    tofu: Path | None = None
    connect_timeout_s: float = 10.0
    keepalive_s: float = 5.0
    reconnect_deadline_s: float = 60.0

    @property
    def where(self) -> str:
        return f"gateway {self.gateway} ({self.user}@{self.host}:{self.port})"


def open_transport(params: SshParams) -> paramiko.Transport:
    """Connect, verify the host key, authenticate; errors are one-line TransportErrors."""
    try:
        sock = socket.create_connection((params.host, params.port), params.connect_timeout_s)
    except OSError as exc:
        raise TransportError(
            f"{params.where}: cannot connect: {exc.strerror or exc}; is the board powered and "
            "its sshd running?"
        ) from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    transport = paramiko.Transport(sock)
    try:
        transport.start_client(timeout=params.connect_timeout_s)
        verify_host_key(
            gateway=params.gateway,
            host=params.host,
            port=params.port,
            presented=transport.get_remote_server_key(),
            known_hosts=params.known_hosts,
            pinned=params.pinned,
            tofu=params.tofu,
        )
        _authenticate(transport, params)
        transport.set_keepalive(max(1, int(params.keepalive_s)))
    except TransportError:
        transport.close()
        raise
    except (paramiko.SSHException, OSError, EOFError) as exc:
        transport.close()
        raise TransportError(f"{params.where}: SSH handshake failed: {exc}") from None
    return transport


def _authenticate(transport: paramiko.Transport, params: SshParams) -> None:
    if params.identity_file is not None:
        try:
            key = paramiko.PKey.from_path(params.identity_file)
        except FileNotFoundError:
            raise TransportError(
                f"{params.where}: identity_file {params.identity_file} does not exist; create "
                "it, or for the virtual lab run `fieldrig lab up`"
            ) from None
        transport.auth_publickey(params.user, key)
    elif params.use_agent:
        keys = paramiko.Agent().get_keys()
        if not keys:
            raise TransportError(
                f"{params.where}: ssh-agent has no keys (is SSH_AUTH_SOCK set?); run ssh-add"
            )
        for key in keys:
            try:
                transport.auth_publickey(params.user, key)
                break
            except paramiko.AuthenticationException:
                continue
    elif params.password_env is not None:
        password = os.environ.get(params.password_env)
        if password is None:
            raise TransportError(
                f"{params.where}: environment variable {params.password_env} (ssh.auth."
                "password_env) is not set; export it before the run"
            )
        transport.auth_password(params.user, password)
    if not transport.is_authenticated():
        raise TransportError(f"{params.where}: authentication failed for user {params.user}")
