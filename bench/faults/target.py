"""Where a link fault goes (a namespace and an interface) and how commands run there."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from bench.faults.base import FaultError
from bench.lab import system
from bench.lab.system import in_namespace
from bench.rig import BackhaulLink

__all__ = ["COMMAND_TIMEOUT_S", "LinkTarget", "run_in"]

COMMAND_TIMEOUT_S = 10.0
_INTERFACE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")  # as bench.rig.InterfaceName
_NAMESPACE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$")  # as bench.rig.NetnsName


@dataclass(frozen=True)
class LinkTarget:
    """One interface, in a named network namespace or (``namespace=None``) on the host."""

    namespace: str | None
    interface: str

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
        assert link.local is not None  # the rig validates exactly one of netns, local
        return cls(None, link.local.interface)

    @property
    def label(self) -> str:
        """``namespace:interface``, or the bare interface for the host."""
        return self.interface if self.namespace is None else f"{self.namespace}:{self.interface}"

    def __str__(self) -> str:
        return self.label

    def check_present(self) -> None:
        """Raise unless the namespace and the interface exist (nft would hook a missing
        device silently and the fault would do nothing)."""
        if self.namespace is not None and self.namespace not in system.netns_list():
            raise FaultError(
                f"{self.label}: no network namespace {self.namespace!r}; is the lab up? "
                "(`ip netns list` shows those that exist)"
            )
        if self.interface not in system.link_names(self.namespace):
            where = f"namespace {self.namespace}" if self.namespace else "this host"
            raise FaultError(
                f"{self.label}: no interface {self.interface!r} in {where}; check the rig's "
                "backhaul section (`ip -n NS link` lists the interfaces)"
            )


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
        raise FaultError(f"{what}: `{' '.join(argv[:3])} ...` failed: {_error_line(proc)}")
    return proc


def _error_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
    for line in lines:
        if line.startswith(("Error:", "RTNETLINK", "Cannot")):
            return line
    return lines[0] if lines else f"exit status {proc.returncode}"
