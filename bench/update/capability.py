"""The update capability: install from a URL, commit, roll back, report, on one device.

An :class:`UpdateClient` drives one update client on one gateway (Mender today; RAUC,
SWUpdate or a custom agent are one module each, registered by name with
:func:`register_backend`). What the device reports becomes data: an
:class:`UpdateStatus` or an :class:`UpdateOutcome` with a state from
:class:`UpdateState`. What keeps the bench from knowing the outcome (a timeout, a lost
connection, a busy device, a command that makes no sense in the current state) raises an
:class:`UpdateError` naming the gateway, the command and what to do. What proves the
device's state (its own log of update commands, the payload files with their sha256, the
pending and committed markers) is read back with :meth:`UpdateClient.evidence` as a
:class:`DeviceEvidence`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from bench.errors import BenchError

if TYPE_CHECKING:
    from bench.gateway import ConnectedGateway

__all__ = [
    "DeviceBusy",
    "DeviceEvidence",
    "InstallOutcome",
    "NothingPending",
    "UpdateClient",
    "UpdateConnectionLost",
    "UpdateError",
    "UpdateInProgress",
    "UpdateLogEntry",
    "UpdateOutcome",
    "UpdateState",
    "UpdateStatus",
    "UpdateTimeout",
    "backends",
    "create_client",
    "register_backend",
]


class UpdateError(BenchError):
    """An update command's outcome is unknown or it was refused; the message says why."""


class UpdateTimeout(UpdateError):
    """The update client ran past the bench's own timeout and was killed."""


class UpdateConnectionLost(UpdateError):
    """The connection to the gateway died while a command ran: its outcome is unknown."""


class DeviceBusy(UpdateError):
    """Another command (this process or another bench process) holds the device's lock."""


class UpdateInProgress(UpdateError):
    """An install was refused because another update waits for commit or roll back."""


class NothingPending(UpdateError):
    """Commit or roll back was asked with no update waiting."""


class UpdateState(StrEnum):
    """Where a device's update stands (status) or how one action ended (outcome)."""

    INSTALLED = "installed"  # a committed artifact runs, nothing waits
    PENDING = "pending-commit"  # installed, waiting for commit or roll back
    ROLLED_BACK = "rolled-back"  # the update was undone; the old artifact runs
    FAILED = "failed"  # the client reported a failure it did not roll back from
    REJECTED = "rejected"  # install refused before anything was installed (wrong device
    # type, bad or missing signature, unsupported payload, unmet dependency)
    INCONSISTENT = "inconsistent"  # the client itself marks the installed artifact broken
    UNPROVISIONED = "unprovisioned"  # no client state on the device yet


@dataclass(frozen=True)
class UpdateStatus:
    """What the device says it runs: committed artifact, pending one, state, raw text."""

    installed: str | None
    pending: str | None
    state: UpdateState
    raw: str


@dataclass(frozen=True)
class UpdateOutcome:
    """How one commit or roll back ended, and the device's status right after."""

    gateway: str
    action: str
    state: UpdateState
    exit_status: int | None
    duration_s: float
    status: UpdateStatus
    output: str  # the client's stdout and stderr, as evidence

    @property
    def ok(self) -> bool:
        """The action did what it was asked (a rollback on commit is not ok; an install
        that needs no commit is)."""
        wanted = {
            "install": (UpdateState.PENDING, UpdateState.INSTALLED),
            "commit": (UpdateState.INSTALLED,),
            "rollback": (UpdateState.ROLLED_BACK,),
        }
        return self.state in wanted.get(self.action, ())


@dataclass(frozen=True)
class InstallOutcome(UpdateOutcome):
    """How an install ended: usually PENDING (commit next) or FAILED."""

    url: str
    artifact: str | None  # the artifact name the device now holds as pending, if any


@dataclass(frozen=True)
class UpdateLogEntry:
    """One update command as the device logged it: ``seq`` counts commands on the device,
    times are the device's clock (epoch seconds), ``exit`` is None when the command never
    finished (power cut, killed connection), ``resumes`` counts download resumptions."""

    seq: int
    action: str
    started: float
    ended: float | None
    exit: str | None
    resumes: int
    text: str


@dataclass(frozen=True)
class DeviceEvidence:
    """Device files that prove its update state, read back from the device.

    ``entries``: the device's log of update commands after the mark ``since`` given to
    :meth:`UpdateClient.evidence` (``last_seq`` is the mark for a later read); ``resumes``:
    download resumptions in those commands; ``files``: name -> text (``update_log``, the
    payload listing with sha256 ``payload_files``, the pending/committed ``markers``).
    """

    last_seq: int
    entries: tuple[UpdateLogEntry, ...]
    payload_sha256: str | None
    files: dict[str, str]

    @property
    def resumes(self) -> int:
        return sum(e.resumes for e in self.entries)


@runtime_checkable
class UpdateClient(Protocol):
    """One update client on one gateway. Commands on a device never overlap."""

    backend: str
    gateway: ConnectedGateway

    def provision(self, initial_artifact: str | None = None) -> UpdateStatus:
        """Prepare the device (config, data directory, factory artifact name); idempotent."""
        ...

    def reset(self) -> UpdateStatus:
        """Forget every update (wipe the client's state) and provision again."""
        ...

    def install(self, url: str, *, timeout_s: float | None = None) -> InstallOutcome:
        """Download and install the artifact at ``url``; it then waits for commit."""
        ...

    def commit(self, *, timeout_s: float | None = None) -> UpdateOutcome:
        """Commit the pending update (health checks may roll it back instead)."""
        ...

    def rollback(self, *, timeout_s: float | None = None) -> UpdateOutcome:
        """Undo the pending update."""
        ...

    def status(self) -> UpdateStatus:
        """The installed and pending artifact names and the state, read from the device."""
        ...

    def evidence(self, payload: str, *, since: int = 0) -> DeviceEvidence:
        """Read back the device's update log after command ``since``, the payload file
        ``payload`` (and its directory) with sha256, and the pending/committed markers."""
        ...


# ---------------------------------------------------------------------- registry
ClientFactory = Callable[..., UpdateClient]
_BACKENDS: dict[str, str | ClientFactory] = {
    "mender": "bench.update.mender:MenderClient",
}


def register_backend(name: str, factory: str | ClientFactory) -> None:
    """Make ``create_client(name, ...)`` build clients with ``factory`` (a callable, or
    ``"package.module:Class"`` imported on first use)."""
    _BACKENDS[name] = factory


def backends() -> list[str]:
    """Names of the registered backends."""
    return sorted(_BACKENDS)


def create_client(name: str, gateway: ConnectedGateway, **options: Any) -> UpdateClient:
    """An update client of backend ``name`` for ``gateway`` (options go to its constructor)."""
    factory = _BACKENDS.get(name)
    if factory is None:
        raise UpdateError(
            f"gateway {gateway.name}: no update backend {name!r}; choose one of "
            f"{', '.join(backends())} (or register_backend() a new one)"
        )
    if isinstance(factory, str):
        module, _, attr = factory.partition(":")
        factory = getattr(importlib.import_module(module), attr)
        assert callable(factory)
        _BACKENDS[name] = factory
    client = factory(gateway, **options)
    if not isinstance(client, UpdateClient):
        raise UpdateError(f"update backend {name!r} built {client!r}, not an UpdateClient")
    return client
