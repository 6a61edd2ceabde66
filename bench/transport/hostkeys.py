"""Host key verification against pinned keys, a known_hosts file, or trust on first use."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import paramiko

from bench.errors import HostKeyMismatch, TransportError


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH-style SHA256 fingerprint (``SHA256:...``)."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def known_hosts_name(host: str, port: int) -> str:
    """How OpenSSH names a host in known_hosts (``[host]:port`` off port 22)."""
    return host if port == 22 else f"[{host}]:{port}"


def _parse_pinned(lines: list[str]) -> list[paramiko.PKey]:
    keys = []
    for line in lines:
        keytype, blob = line.split()[:2]
        keys.append(paramiko.PKey.from_type_string(keytype, base64.b64decode(blob)))
    return keys


def expected_keys(
    *, host: str, port: int, known_hosts: Path | None, pinned: list[str] | None
) -> list[paramiko.PKey]:
    """The keys a host may present, from the rig's pins or a known_hosts file."""
    if pinned is not None:
        return _parse_pinned(pinned)
    if known_hosts is None:
        return []
    if not known_hosts.exists():
        return []
    entries = paramiko.HostKeys(str(known_hosts)).lookup(known_hosts_name(host, port))
    return list(entries.values()) if entries else []


def verify_host_key(
    *,
    gateway: str,
    host: str,
    port: int,
    presented: paramiko.PKey,
    known_hosts: Path | None = None,
    pinned: list[str] | None = None,
    tofu: Path | None = None,
) -> None:
    """Accept `presented` or raise HostKeyMismatch / TransportError with what to do next."""
    where = f"gateway {gateway} ({host}:{port})"
    source = (
        "pinned keys in the rig" if pinned is not None else f"known_hosts {known_hosts or tofu}"
    )
    allowed = expected_keys(host=host, port=port, known_hosts=known_hosts or tofu, pinned=pinned)
    if not allowed:
        if tofu is not None:
            _record(tofu, host, port, presented)
            return
        raise TransportError(
            f"{where}: no host key for it in {source}; add it (e.g. `ssh-keyscan -p {port} {host}`)"
            " or set host_key.tofu in the rig to trust on first use"
        )
    if any(key == presented for key in allowed):
        return
    expected = ", ".join(f"{k.get_name()} {fingerprint(k)}" for k in allowed)
    raise HostKeyMismatch(
        f"{where}: host key mismatch: it presented {presented.get_name()} "
        f"{fingerprint(presented)} but {source} expect {expected}; if the board was "
        "reinstalled update the rig's key, otherwise do not connect"
    )


def _record(path: Path, host: str, port: int, key: paramiko.PKey) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="ascii") as fh:
        fh.write(f"{known_hosts_name(host, port)} {key.get_name()} {key.get_base64()}\n")
