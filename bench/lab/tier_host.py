"""A compute tier of the virtual lab (edge, cloud) as a host that runs programs.

The tier is a namespace on the backhaul (bench/lab/virtual.py); its "server" is this
machine's CPU, unconstrained, running the rig's ``board_python`` (the interpreter with the
inference runtime). Files live on the tier's disk, ``<state_dir>/tiers/<tier>``, and
commands run there as their working directory, the way a board's login runs in its home.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

from bench.errors import LabError
from bench.lab import system
from bench.lab.virtual import plan_for
from bench.rig import Rig
from bench.transport.agent import Command, CommandResult


class TierHost:
    """Runs commands in one tier's namespace; ``put`` copies files onto its disk."""

    def __init__(self, rig: Rig, tier: str) -> None:
        if rig.virtual is None:
            raise LabError(f"rig '{rig.name}' is not a virtual lab: it has no {tier} tier")
        plan = plan_for(rig)
        self.tier = plan.tier(tier)
        self.name = f"{tier}-tier"
        self.home = plan.state_dir / "tiers" / tier
        self.home.mkdir(parents=True, exist_ok=True)
        python = rig.virtual.board_python
        self.python = str(python) if python is not None else "python3"

    def put(self, local: Path, remote: str, mode: int | None = None) -> bool:
        """Copy ``local`` to ``remote`` (relative to the tier's disk) unless identical."""
        target = self.home / remote
        digest = hashlib.sha256(local.read_bytes()).hexdigest()
        if target.is_file() and hashlib.sha256(target.read_bytes()).hexdigest() == digest:
            return False
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        shutil.copyfile(local, tmp)
        if mode is not None:
            tmp.chmod(mode)
        os.replace(tmp, target)
        return True

    def run(
        self,
        command: Command,
        *,
        timeout: float = 60.0,
        stdin: bytes | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        check: bool = True,
    ) -> CommandResult:
        """Run ``command`` in the tier's namespace (``python3`` is the tier's Python)."""
        argv = ["sh", "-c", command] if isinstance(command, str) else [str(a) for a in command]
        if argv and argv[0] == "python3":
            argv[0] = self.python
        start = time.monotonic()
        timed_out = False
        try:
            proc = subprocess.run(
                system.in_namespace(self.tier.namespace, argv), input=stdin or b"",
                capture_output=True, timeout=timeout, cwd=self.home / (cwd or ""),
                env={**os.environ, **(env or {})}, check=False,
            )  # fmt: skip
            status, out, err = proc.returncode, proc.stdout, proc.stderr
        except subprocess.TimeoutExpired as exc:
            timed_out, status = True, None
            out, err = exc.stdout or b"", exc.stderr or b""
        result = CommandResult(
            gateway=self.name, command=" ".join(argv), exit_status=status, signal=None,
            timed_out=timed_out, stdout=out, stderr=err, duration_s=time.monotonic() - start,
        )  # fmt: skip
        if check and not result.ok:
            tail = err.decode("utf-8", "replace").strip().splitlines()
            raise LabError(
                f"{self.name}: {argv[0]} failed ({'timed out' if timed_out else status}): "
                f"{tail[-1] if tail else 'no output'}"
            )
        return result
