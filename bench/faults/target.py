"""Where a link fault goes (an interface in a namespace, on the bench host or on a router
reached over SSH) and how commands run there."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from bench.faults.base import FaultError
from bench.faults.router import Router
from bench.lab import system
from bench.lab.system import in_namespace
from bench.rig import BackhaulLink

__all__ = ["COMMAND_TIMEOUT_S", "LinkTarget", "error_line", "run_at", "run_in"]

COMMAND_TIMEOUT_S = 10.0
_INTERFACE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")  # as bench.rig.InterfaceName
_NAMESPACE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$")  # as bench.rig.NetnsName


@dataclass(frozen=True)
class LinkTarget:
    """One interface, in a named network namespace or (``namespace=None``) on the host;
    on the bench host, or (``router``) on a router the bench reaches over SSH."""

    namespace: str | None
    interface: str
    router: Router | None = None

    def __post_init__(self) -> None:
        if not _INTERFACE.match(self.interface):
            raise FaultError(
                f"link target: {self.interface!r} is not an interface name; use 1-15 letters, "
                "digits, '_', '.' or '-' (e.g. wan0)"
            )
        if self.namespace is not None and not _NAMESPACE.match(self.namespace):
            raise FaultError(
                f"link target: {self.namespace!r} is not a network namespace name; give one "
                "that `ip netns list` shows (e.g. fr-virtual-gw1), or None for the host"
            )

    @classmethod
    def from_backhaul(cls, link: BackhaulLink) -> LinkTarget:
        """The target a rig gateway's ``backhaul:`` section names."""
        if link.netns is not None:
            return cls(link.netns.namespace, link.netns.interface)
        if link.router is not None:
            return cls(None, link.router.interface, Router.from_endpoint(link.router.ssh))
        assert link.local is not None  # the rig validates exactly one of netns, local, router
        return cls(None, link.local.interface)

    @property
    def label(self) -> str:
        """``namespace:interface``, the bare interface for the host, each prefixed with
        ``router:user@host:`` on a router."""
        local = self.interface if self.namespace is None else f"{self.namespace}:{self.interface}"
        return local if self.router is None else f"{self.router.label}:{local}"

    def run(
        self,
        argv: Sequence[str],
        *,
        input_text: str | None = None,
        what: str,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command where this target's interface is (see :func:`run_at`)."""
        return run_at(self.router, self.namespace, argv, input_text=input_text, what=what,
                      check=check)  # fmt: skip

    def link_names(self) -> list[str]:
        """The interfaces in the target's namespace (on its router, if any)."""
        if self.router is None:
            return system.link_names(self.namespace)
        return self.router.link_names(self.namespace)

    def namespace_gone(self) -> bool:
        """True when the target's (bench-host) namespace no longer exists."""
        return namespace_gone(self.namespace, self.router)

    def __str__(self) -> str:
        return self.label

    def check_present(self) -> None:
        """Raise unless the namespace and the interface exist (nft would hook a missing
        device silently and the fault would do nothing)."""
        if self.router is None and self.namespace_gone():
            raise FaultError(
                f"{self.label}: no network namespace {self.namespace!r}; is the lab up? "
                "(`ip netns list` shows those that exist)"
            )
        if self.interface not in self.link_names():
            where = f"namespace {self.namespace}" if self.namespace else "this host"
            where = where if self.router is None else f"{where} of {self.router.label}"
            raise FaultError(
                f"{self.label}: no interface {self.interface!r} in {where}; check the rig's "
                "backhaul section (`ip -n NS link` lists the interfaces)"
            )


def namespace_gone(namespace: str | None, router: Router | None = None) -> bool:
    """True when a bench-host namespace no longer exists (a router's is never judged)."""
    return router is None and namespace is not None and namespace not in system.netns_list()


def run_at(
    router: Router | None,
    namespace: str | None,
    argv: Sequence[str],
    *,
    input_text: str | None = None,
    what: str,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run a command in ``namespace`` on the bench host (:func:`run_in`) or, with a
    ``router``, over SSH on that router: the same command either way."""
    if router is None:
        return run_in(namespace, argv, input_text=input_text, what=what, check=check)
    full = in_namespace(namespace, argv)
    return router.run(full, input_text=input_text, what=what, check=check,
                      timeout=COMMAND_TIMEOUT_S)  # fmt: skip


def run_in(
    namespace: str | None,
    argv: Sequence[str],
    *,
    input_text: str | None = None,
    what: str,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run a command in ``namespace`` (``ip netns exec``, as bench.lab.virtual does).

    Failures raise a one-line :class:`FaultError` naming ``what`` and the tool's own
    error line (nft prints a caret line last, so the ``Error:`` line is picked).
    """
    full = in_namespace(namespace, argv)
    try:
        proc = subprocess.run(
            full,
            input=input_text,
            capture_output=True,
            text=True,
            check=False,
            timeout=COMMAND_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        raise FaultError(f"{what}: `{' '.join(argv)}` hung for {COMMAND_TIMEOUT_S:g} s") from None
    except FileNotFoundError:
        raise FaultError(f"{what}: {full[0]} is not installed") from None
    if check and proc.returncode != 0:
        raise FaultError(f"{what}: `{' '.join(argv[:3])} ...` failed: {error_line(proc)}")
    return proc


def error_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
    for line in lines:
        if line.startswith(("Error:", "RTNETLINK", "Cannot")):
            return line
    return lines[0] if lines else f"exit status {proc.returncode}"
