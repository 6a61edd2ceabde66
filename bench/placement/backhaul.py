"""Backhaul measurements between a gateway and an echo service in the cloud namespace.

The service (:mod:`.backhaul_remote` ``serve``) runs on the bench host inside the lab's
cloud namespace (``ip netns exec``); the client side of the same script runs on the
gateway, so every probe crosses the gateway's ``wan0`` and the backhaul bridge.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from bench.errors import InfrastructureError
from bench.gateway import ConnectedGateway
from bench.lab.system import in_namespace, stop_process
from bench.mesh.loss import ProbeRecord
from bench.rig import Rig

SOURCE = Path(__file__).with_name("backhaul_remote.py")
REMOTE_SCRIPT = "/tmp/fieldrig/backhaul_remote.py"
START_TIMEOUT_S = 15.0


class BackhaulError(InfrastructureError):
    """The echo service or a probe on the gateway failed."""


class EchoService:
    """The echo/sink service, a child of the bench, in the lab's cloud namespace."""

    def __init__(self, namespace: str | None, bind: str) -> None:
        self.namespace = namespace
        self.bind = bind
        self.port = 0
        self._proc: subprocess.Popen[str] | None = None

    @classmethod
    def for_lab(cls, rig: Rig) -> EchoService:
        """In the virtual lab's cloud namespace, on ``rig.virtual.cloud_address``."""
        if rig.virtual is None:
            raise BackhaulError(f"rig '{rig.name}' is not a virtual lab: no cloud namespace")
        from bench.lab.virtual import plan_for

        plan = plan_for(rig)
        return cls(plan.cloud_namespace, str(rig.virtual.cloud_address))

    @classmethod
    def for_tier(cls, rig: Rig, tier: str) -> EchoService:
        """In the virtual lab's ``tier`` namespace (edge, cloud: ``virtual.tiers``)."""
        if rig.virtual is None:
            raise BackhaulError(f"rig '{rig.name}' is not a virtual lab: no {tier} tier")
        from bench.lab.virtual import plan_for

        found = plan_for(rig).tier(tier)
        return cls(found.namespace, found.address)

    def start(self) -> Self:
        argv = [sys.executable, str(SOURCE), "serve", "--bind", self.bind, "--port", "0",
                "--parent-pid", str(os.getpid())]  # fmt: skip
        self._proc = subprocess.Popen(in_namespace(self.namespace, argv),
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      stdin=subprocess.DEVNULL, text=True,
                                      start_new_session=True)  # fmt: skip
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline().split()
        if len(line) != 2 or line[0] != "listening":
            err = stop_process(self._proc).strip().splitlines()
            raise BackhaulError(
                f"echo service on {self.bind} in {self.namespace or 'host'} did not start: "
                f"{err[-1] if err else 'no output'}; is the lab up?"
            )
        self.port = int(line[1])
        return self

    def stop(self) -> None:
        if self._proc is not None:
            stop_process(self._proc)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class BackhaulClient:
    """Runs the probe modes on one gateway against one echo service."""

    def __init__(
        self, gateway: ConnectedGateway, service: EchoService, python: str = "python3"
    ) -> None:
        self.gateway = gateway
        self.service = service
        self.python = python
        gateway.put(SOURCE, REMOTE_SCRIPT)

    def _call(self, mode: str, timeout: float, **options: Any) -> dict[str, Any]:
        argv = [self.python, REMOTE_SCRIPT, mode, "--host", self.service.bind,
                "--port", str(self.service.port)]  # fmt: skip
        for key, value in options.items():
            argv += [f"--{key}", str(value)]
        result = self.gateway.run(argv, timeout=timeout, check=False)
        if not result.ok:
            err = result.stderr.decode("utf-8", "replace").strip().splitlines()
            raise BackhaulError(
                f"gateway {self.gateway.name}: backhaul {mode} failed: "
                f"{err[-1] if err else f'exit status {result.exit_status}'}"
            )
        found: dict[str, Any] = json.loads(result.text.strip().splitlines()[-1])
        return found

    def rtt_ns(self, count: int, size: int = 64) -> list[int]:
        """Round-trip times of ``count`` TCP echoes of ``size`` bytes (on the board's clock)."""
        return [int(v) for v in self._call("rtt", 60, count=count, size=size)["rtt_ns"]]

    def bandwidth_bit_s(self, total: int) -> tuple[float, dict[str, Any]]:
        """Bits per second of a bulk TCP transfer of ``total`` bytes, and the raw answer."""
        raw = self._call("bulk", 120, bytes=total)
        if raw["received"] != raw["bytes"]:
            raise BackhaulError(
                f"gateway {self.gateway.name}: bulk transfer lost data "
                f"({raw['received']} of {raw['bytes']} bytes arrived)"
            )
        return raw["bytes"] * 8 / (raw["ns"] / 1e9), raw

    def udp_probes(self, count: int, interval: float, tmax: float) -> list[ProbeRecord]:
        """Sequence-numbered UDP probes; lost when no echo within ``tmax``."""
        raw = self._call("udp", 60 + count * interval + tmax, count=count, interval=interval,
                         tmax=tmax)  # fmt: skip
        dest = f"{self.service.bind}:{self.service.port}"
        return [
            ProbeRecord(
                int(seq),
                dest,
                None,
                int(sent),
                None if took is None else took / 1e9,
                bool(lost),
                late=took is not None and bool(lost),
            )
            for seq, sent, took, lost in raw["probes"]
        ]

    def telemetry(self, messages: int, payload: int, seconds: float) -> dict[str, Any]:
        """Send ``messages`` datagrams of ``payload`` bytes, paced over ``seconds``."""
        start = time.monotonic()
        raw = self._call("telemetry", 60 + seconds, messages=messages, payload=payload,
                         seconds=seconds)  # fmt: skip
        raw["wall_s"] = time.monotonic() - start
        return raw
