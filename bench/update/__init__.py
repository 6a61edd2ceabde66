"""Update capability: install, commit and roll back artifacts on gateways, plus the
artifact builder and HTTP server the bench uses to feed them.

:mod:`bench.update.capability` defines the :class:`UpdateClient` protocol, its result
types, errors and the backend registry (:func:`create_client`);
:mod:`bench.update.mender` is the Mender backend, :mod:`bench.update.artifact` builds
model artifacts with mender-artifact and :mod:`bench.update.server` serves them with HTTP
Range support and a byte log.
"""

from __future__ import annotations

from bench.update.capability import (
    DeviceBusy,
    DeviceEvidence,
    InstallOutcome,
    NothingPending,
    UpdateClient,
    UpdateConnectionLost,
    UpdateError,
    UpdateInProgress,
    UpdateLogEntry,
    UpdateOutcome,
    UpdateState,
    UpdateStatus,
    UpdateTimeout,
    backends,
    create_client,
    register_backend,
)

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
