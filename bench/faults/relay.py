"""Delay without netem: TCP connections leaving the target interface are redirected (nft
``nat`` output hook) to a userspace relay in the same namespace that holds every chunk for
the delay (:mod:`bench.faults.delay_relay`). It delays what the gateway's own TCP
connections carry over the backhaul (downloads, API calls), both directions; UDP and
connections opened towards the gateway pass undelayed: say so where it matters. Used by
:func:`bench.faults.delay` on kernels without ``sch_netem``.
"""

from __future__ import annotations

import math
import os
import secrets
import subprocess
import sys
import threading
import time
from typing import Any

from bench.faults import cleanup
from bench.faults.base import AppliedWhileInside, FaultError, FaultUnsupported
from bench.faults.delay_relay import READY
from bench.faults.guard import Protection
from bench.faults.kinds import TABLE_PREFIX, delete_table
from bench.faults.owner import Owner, encode_comment, encode_run_comment
from bench.faults.probe import probe
from bench.faults.target import LinkTarget, run_in
from bench.lab.system import bench_python_env, in_namespace, stop_process

#: SO_MARK of the relay's own upstream sockets (the redirect rule lets them pass)
RELAY_MARK = 0xF1E1
BACKEND = "userspace TCP relay (nft nat redirect; TCP the target opens)"
_START_S = 10.0


class RelayDelay(AppliedWhileInside):
    """Hold the target's outgoing TCP connections' data ``delay_ms`` +- ``jitter_ms`` in
    each direction (so a request/response round trip grows by twice the delay)."""

    kind = "delay"

    def __init__(
        self,
        target: LinkTarget,
        delay_ms: float,
        jitter_ms: float = 0.0,
        *,
        protect: Protection | None = None,
        seed: int = 0,
    ) -> None:
        if not (math.isfinite(delay_ms) and 0 <= jitter_ms <= delay_ms <= 60_000):
            raise FaultError(
                f"delay on {target}: need 0 <= jitter_ms <= delay_ms <= 60000, "
                f"got {delay_ms}/{jitter_ms}"
            )
        if target.router is not None:
            raise FaultUnsupported(
                f"delay on {target}: the userspace relay runs on the bench host only, and "
                f"{target.router} has no netem; install kmod-sched / sch_netem there"
            )
        if not probe().nft:
            raise FaultError(f"delay on {target} needs nftables; apt-get install nftables")
        self._target = target
        self._protect = Protection.default() if protect is None else protect
        self._protect.check(target)
        self.delay_ms, self.jitter_ms, self.seed = float(delay_ms), float(jitter_ms), seed
        self._lock = threading.RLock()
        self._active = False
        self._table: str | None = None
        self._relay: subprocess.Popen[str] | None = None
        self.port: int | None = None

    @property
    def target(self) -> LinkTarget:
        return self._target

    @property
    def active(self) -> bool:
        return self._active

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "target": self._target.label,
            "params": {"delay_ms": self.delay_ms, "jitter_ms": self.jitter_ms},
            "backend": BACKEND,
        }

    def apply(self) -> None:
        with self._lock:
            if self._active:
                raise FaultError(f"delay on {self._target}: already applied; remove it first")
            self._target.check_present()
            self._protect.check(self._target)
            self._active = True
            cleanup.register(self)
            try:
                self._start_relay()
                self._redirect(Owner.current())
            except BaseException:
                self.remove()
                raise

    def _start_relay(self) -> None:
        self.port = 40000 + secrets.randbelow(10000)
        argv = [sys.executable, "-m", "bench.faults.delay_relay", "--port", str(self.port),
                "--delay-ms", str(self.delay_ms), "--jitter-ms", str(self.jitter_ms),
                "--mark", str(RELAY_MARK), "--parent-pid", str(os.getpid()),
                "--seed", str(self.seed)]  # fmt: skip
        relay = subprocess.Popen(in_namespace(self._target.namespace, argv),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env=bench_python_env(), start_new_session=True)  # fmt: skip
        self._relay = relay
        assert relay.stdout is not None
        deadline = time.monotonic() + _START_S
        line = relay.stdout.readline()  # blocks until the relay speaks or dies
        if not line.startswith(READY) or time.monotonic() > deadline:
            self._relay = None
            err = stop_process(relay).strip().splitlines()
            raise FaultError(
                f"delay on {self._target}: the relay did not start: "
                f"{err[-1] if err else 'no output'}"
            )

    def _redirect(self, owner: Owner) -> None:
        table = f"{TABLE_PREFIX}delay_{owner.pid}_{secrets.token_hex(3)}"
        dev = self._target.interface
        nft = "\n".join(
            [
                f'create table ip {table} {{ comment "{encode_comment(owner, self.kind)}" ; }}',
                f"add chain ip {table} out {{ type nat hook output priority -100 ; policy "
                f'accept ; comment "{encode_run_comment(owner)}" ; }}',
                f'add rule ip {table} out oifname "{dev}" meta mark != {RELAY_MARK} '
                f"meta l4proto tcp redirect to :{self.port}",
            ]
        )
        self._table = table
        run_in(self._target.namespace, ["nft", "-f", "-"], input_text=nft + "\n",
               what=f"delay on {self._target}")  # fmt: skip

    def remove(self) -> None:
        with self._lock:
            if not self._active:
                return
            if self._table is not None:
                delete_table(self._target.namespace, self._table, "ip")
                self._table = None
            relay, self._relay = self._relay, None
            if relay is not None:
                stop_process(relay)
            self._active = False
            cleanup.unregister(self)
