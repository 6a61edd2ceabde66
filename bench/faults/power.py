"""Power cuts as faults: a supply channel's output off on apply, on again on remove."""

from __future__ import annotations

import threading
from typing import Any

from bench.faults import cleanup
from bench.faults.base import AppliedWhileInside, FaultError
from bench.instruments.psu import PowerSupply

__all__ = ["PowerCut"]


class PowerCut(AppliedWhileInside):
    """Cut ``channel`` of ``psu`` (the rig's "psu" capability) for the fault's duration."""

    kind = "power_cut"

    def __init__(self, psu: PowerSupply, channel: int, *, name: str | None = None) -> None:
        self.psu = psu
        self.channel = channel
        self.name = name or str(getattr(psu, "name", "psu"))
        self._lock = threading.RLock()
        self._active = False

    @property
    def active(self) -> bool:
        return self._active

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "target": f"{self.name}:ch{self.channel}",
            "params": {"channel": self.channel},
            "backend": "psu output off/on",
        }

    def apply(self) -> None:
        with self._lock:
            if self._active:
                raise FaultError(f"power cut on {self.name} channel {self.channel}: already cut")
            self._active = True
            cleanup.register(self)
            try:
                self.psu.output(self.channel, False)
            except BaseException:
                self._active = False
                cleanup.unregister(self)
                raise

    def remove(self) -> None:
        with self._lock:
            if not self._active:
                return
            self.psu.output(self.channel, True)
            self._active = False
            cleanup.unregister(self)
