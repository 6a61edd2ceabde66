"""The management-path guard: the bench never faults the link it needs to reach gateways.

Rule, checked when a link fault is made and again each time it is applied. A target is
refused (:class:`ManagementLinkRefused`, nothing changed) when

1. its interface is named in :attr:`Protection.interfaces`, as ``iface`` (in any
   namespace) or as ``namespace:iface``; or
2. for any management host in :attr:`Protection.hosts` (the gateways' SSH hosts, and the
   client of the SSH session the bench itself runs in, from ``$SSH_CONNECTION``), seen
   from the target's namespace, the host's address is on the target interface, or the
   route to it (``ip route get``) leaves through the target interface; or
3. the target is on a router (:class:`~bench.faults.router.Router`) and the interface
   carries the bench's own SSH session to that router: it holds the address the session
   arrives at, or the route back to the bench leaves through it (the router's view, from
   its ``$SSH_CONNECTION``). Rule 2 runs there too, with the router's routes.

In the virtual lab this refuses ``mgmt0`` in a gateway namespace (it holds the SSH
address) and the management bridge on the host (the route to every gateway), and allows
``wan0``. A host name that does not resolve is refused too: the guard cannot vouch for it.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field

from bench.faults.base import ManagementLinkRefused
from bench.faults.target import LinkTarget
from bench.rig import Rig

__all__ = ["Protection"]


def _session_client() -> frozenset[str]:
    """The address the bench's own SSH session comes from, if it runs in one."""
    parts = os.environ.get("SSH_CONNECTION", "").split()
    return frozenset(parts[:1])


@dataclass(frozen=True)
class Protection:
    """Management hosts and interfaces that link faults must spare."""

    hosts: frozenset[str] = field(default_factory=frozenset)
    interfaces: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def default(cls, hosts: Iterable[str] = (), interfaces: Iterable[str] = ()) -> Protection:
        """The given hosts and interfaces plus the bench's own SSH client, if any."""
        return cls(frozenset(hosts) | _session_client(), frozenset(interfaces))

    @classmethod
    def for_rig(cls, rig: Rig, interfaces: Iterable[str] = ()) -> Protection:
        """Every gateway's SSH host (plus :meth:`default`)."""
        return cls.default((gw.ssh.host for gw in rig.gateways), interfaces)

    def check(self, target: LinkTarget) -> None:
        """Raise :class:`ManagementLinkRefused` when ``target`` is a management path."""
        if target.interface in self.interfaces or target.label in self.interfaces:
            raise ManagementLinkRefused(
                f"{target.label}: refusing to fault a protected management interface; fault "
                "the backhaul interface instead (the rig's backhaul section names it)"
            )
        if target.router is not None and target.namespace is None:
            for interface, reason in target.router.session_paths():
                if interface == target.interface:
                    raise ManagementLinkRefused(
                        f"{target.label}: refusing to fault the bench's management path: "
                        f"{reason}; fault the backhaul interface instead"
                    )
        if not self.hosts:
            return
        local = _addresses_on(target)
        for host in sorted(self.hosts):
            for address in _resolve(host, target):
                if address in local:
                    reason = f"it holds {address}, the management address of {host}"
                elif _route_device(target, address) == target.interface:
                    reason = f"the route to management host {host} ({address}) leaves through it"
                else:
                    continue
                raise ManagementLinkRefused(
                    f"{target.label}: refusing to fault the bench's management path: {reason}; "
                    "fault the backhaul interface instead"
                )


def _resolve(host: str, target: LinkTarget) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        raise ManagementLinkRefused(
            f"{target.label}: cannot resolve management host {host!r}, so cannot check that "
            "the fault spares it; fix the rig's ssh.host or use an address"
        ) from None
    return sorted({str(info[4][0]) for info in infos})


def _addresses_on(target: LinkTarget) -> set[str]:
    out = target.run(
        ["ip", "-o", "addr", "show", "dev", target.interface],
        what=f"guard on {target.label}",
        check=False,
    ).stdout
    found = set()
    for line in out.splitlines():
        parts = line.split()
        for key in ("inet", "inet6"):
            if key in parts and parts.index(key) + 1 < len(parts):
                found.add(parts[parts.index(key) + 1].split("/")[0])
    return found


def _route_device(target: LinkTarget, address: str) -> str | None:
    proc = target.run(
        ["ip", "-o", "route", "get", address],
        what=f"guard on {target.label}",
        check=False,
    )
    parts = proc.stdout.split()
    return parts[parts.index("dev") + 1] if "dev" in parts[:-1] else None
