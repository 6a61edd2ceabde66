"""The fault protocols and the errors every fault raises."""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self, runtime_checkable

from bench.errors import BenchError, InfrastructureError

if TYPE_CHECKING:
    from bench.faults.target import LinkTarget

__all__ = [
    "AppliedWhileInside",
    "Composite",
    "Fault",
    "FaultError",
    "FaultLeaked",
    "FaultUnsupported",
    "LinkFault",
    "ManagementLinkRefused",
    "Observable",
    "Observer",
]


class FaultError(InfrastructureError):
    """A fault could not be applied or removed (bad target, tool failure, already applied)."""


class FaultUnsupported(FaultError):
    """This host lacks what a fault kind needs (netem, nftables netdev egress, tbf)."""


class FaultLeaked(FaultError):
    """A fault outlived the test that applied it (a bench bug); it has been removed."""


class ManagementLinkRefused(BenchError):
    """The target is (or carries) the management path the bench depends on: nothing done."""


class Fault(Protocol):
    """Anything a :class:`~bench.faults.timeline.FaultTimeline` can apply and remove."""

    def apply(self) -> None:
        """Start the fault; raises if it is already applied or cannot be applied."""
        ...

    def remove(self) -> None:
        """End the fault; a fault that is not applied is left alone (idempotent)."""
        ...

    def describe(self) -> dict[str, Any]:
        """``{"kind", "target", "params", "backend"}``, JSON-serialisable, for the records."""
        ...


@runtime_checkable
class LinkFault(Fault, Protocol):
    """A fault on one network interface (see :class:`~bench.faults.target.LinkTarget`)."""

    @property
    def target(self) -> LinkTarget: ...


Observer = Callable[[str, dict[str, Any]], None]
"""Called as ``observer(action, details)`` for every transition a fault makes by itself."""


@runtime_checkable
class Composite(Protocol):
    """A fault made of other faults it applies and removes itself (flapping's partition)."""

    def parts(self) -> list[Fault]: ...


@runtime_checkable
class Observable(Protocol):
    """A fault that changes state on its own (flapping) and reports each transition."""

    def set_observer(self, observer: Observer | None) -> None: ...


class AppliedWhileInside:
    """``with fault: ...`` applies it on entry and removes it on every way out."""

    def apply(self) -> None:
        raise NotImplementedError

    def remove(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.apply()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()
