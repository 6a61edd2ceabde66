"""Client of the virtual lab's mesh control socket (see :mod:`bench.lab.radio`): power
meters off and on, degrade one link, raise interference (one burst, or a seeded Poisson
process of bursts), read the simulator's clock, counters and bursts.

This is the lab-side lever a real bench pulls by hand (a meter's fuse, a jammer); only the
virtual lab has it, so suites that need it ask for the ``meter_power`` capability.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from bench.errors import LabError

_TIMEOUT_S = 10.0


class MeshControl:
    """Sends one JSON request per call to ``<state_dir>/radio/control.sock``."""

    def __init__(self, path: Path, gateway: str) -> None:
        self.path = path
        self.gateway = gateway

    def _call(self, op: str, **args: Any) -> dict[str, Any]:
        request = {"gateway": self.gateway, "op": op, **args}
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(_TIMEOUT_S)
                sock.connect(str(self.path))
                sock.sendall(json.dumps(request).encode() + b"\n")
                with sock.makefile("rb") as stream:
                    line = stream.readline()
        except OSError as exc:
            raise LabError(
                f"mesh control {self.path}: {exc}; is the virtual lab up (`fieldrig lab status`)?"
            ) from exc
        try:
            answer = json.loads(line)
        except ValueError:
            raise LabError(f"mesh control {self.path}: unreadable answer {line[:200]!r}") from None
        if not isinstance(answer, dict) or not answer.get("ok"):
            error = answer.get("error") if isinstance(answer, dict) else answer
            raise LabError(f"mesh control of {self.gateway}: {op} failed: {error}")
        return answer

    def power_off(self, address: str) -> dict[str, Any]:
        """Cut the power of the meter at ``address``."""
        return self._call("power_off", address=address)

    def power_on(self, address: str) -> dict[str, Any]:
        """Power the meter at ``address`` back on (it rejoins after booting)."""
        return self._call("power_on", address=address)

    def interference(self, duration_s: float, extra_loss_db: float) -> dict[str, Any]:
        """Raise every link's loss by ``extra_loss_db`` for ``duration_s`` simulated seconds."""
        return self._call("interference", duration_s=duration_s, extra_loss_db=extra_loss_db)

    def interference_start(
        self,
        *,
        rate_per_s: float,
        mean_burst_s: float,
        penalty_db: float,
        duration_s: float,
        center: str | None = None,
        radius_m: float | None = None,
        seed: int | None = None,
    ) -> dict[str, Any]:
        """Start an interferer for ``duration_s`` simulated seconds: bursts arrive as a
        Poisson process of ``rate_per_s``, last ``mean_burst_s`` on average and lower the
        margin of every link within ``radius_m`` of the meter at ``center`` (every link
        without one) by ``penalty_db``. The answer's ``bursts`` lists them in mesh time."""
        return self._call(
            "interference_start",
            rate_per_s=rate_per_s,
            mean_burst_s=mean_burst_s,
            penalty_db=penalty_db,
            duration_s=duration_s,
            center=center,
            radius_m=radius_m,
            seed=seed,
        )

    def interference_stop(self) -> dict[str, Any]:
        """End every burst now; the answer's ``bursts`` are the ones that happened."""
        return self._call("interference_stop")

    def degrade_link(self, address: str, peer: str, db: float) -> dict[str, Any]:
        """Lower the margin of the one link between two nodes by ``db`` (0 restores it)."""
        return self._call("degrade_link", address=address, peer=peer, db=db)

    def stats(self) -> dict[str, Any]:
        """Simulated clock, time scale, lag and counters of this gateway's mesh."""
        return self._call("stats")
