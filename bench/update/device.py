"""One gateway as a rollout target: the orchestrator's :class:`~bench.update.rollout.Device`
built on any :class:`~bench.update.capability.UpdateClient` (Mender today).

An attempt is: finish what an earlier, interrupted attempt left (an update still waiting
for commit is rolled back, as a device agent does after a crash), install from the job's
URL, run the health check by committing (a failing ArtifactCommit state script rolls the
update back), report. Steps are announced to ``on_step`` (``attempt``, ``install``,
``installed``, ``committed``, ``rolled_back``) so a test can inject a fault at that exact
moment, and marked on the rollout's timeline. An install the device refuses before
installing anything (UpdateState.REJECTED: wrong device type, signature, payload type)
ends the execution REJECTED, which is never retried. :meth:`UpdateDevice.truth` reads
back what the device runs, for the invariant checker, with the device's own evidence
(:meth:`UpdateClient.evidence` after the mark :meth:`UpdateDevice.prepare` took): its
``resumes`` are the download resumptions its log shows since then, and its ``files`` hold
``status``, ``recoveries``, ``update_log`` (the client's log of each command since the
mark), ``payload_files`` (payload and its directory with sha256) and ``markers``
(committed / pending markers).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from bench.errors import BenchError
from bench.update.capability import DeviceEvidence, UpdateClient, UpdateState
from bench.update.invariants import DeviceTruth
from bench.update.rollout import (
    MARK_DETECTED,
    MARK_ROLLED_BACK,
    AttemptContext,
    ExecutionStatus,
    Outcome,
)

StepHook = Callable[[str, str], None]
"""Called with (device name, step) at each step of an attempt."""


@dataclass
class UpdateDevice:
    """``client``'s gateway as a rollout target; ``payload`` is the path the artifacts
    write on the device (its sha256 is part of the truth)."""

    client: UpdateClient
    payload: str
    on_step: StepHook | None = None
    device_type: str | None = None
    """Replaces ``{device_type}`` in a job's URL (one artifact file per device type)."""
    install_timeout_s: float | None = None
    before: str | None = None
    recoveries: list[str] = field(default_factory=list)
    log_mark: int = 0
    """The device's last logged update command when :meth:`prepare` ran."""
    evidence: DeviceEvidence | None = None
    """What :meth:`truth` last read back."""

    @property
    def name(self) -> str:
        return self.client.gateway.name

    def _step(self, ctx: AttemptContext | None, step: str, detail: str = "") -> None:
        if ctx is not None:
            ctx.mark(step, detail)
        if self.on_step is not None:
            self.on_step(self.name, step)

    def prepare(self) -> None:
        """Remember what the device runs before the rollout, and mark its update log."""
        self.before = self.client.status().installed
        self.log_mark = self.client.evidence(self.payload).last_seq

    def run_update(self, ctx: AttemptContext) -> Outcome:
        self._step(ctx, "attempt", f"attempt {ctx.attempt}")
        try:
            status = self.client.status()
            if status.pending is not None:  # an earlier attempt died between install and commit
                self.client.rollback()
                self.recoveries.append(f"rolled back pending {status.pending}")
                self._step(ctx, "recovered", f"rolled back pending {status.pending}")
            url = ctx.job.url.replace("{device_type}", self.device_type or "")
            self._step(ctx, "install", url)
            installed = self.client.install(url, timeout_s=self.install_timeout_s)
            if installed.state == UpdateState.REJECTED:
                ctx.mark(MARK_DETECTED, "install rejected by the device")
                return Outcome(
                    ExecutionStatus.REJECTED,
                    f"the device rejected the artifact (exit {installed.exit_status})",
                    installed=installed.status.installed,
                )
            if installed.state != UpdateState.PENDING:
                ctx.mark(MARK_DETECTED, f"install ended {installed.state}")
                return Outcome(
                    ExecutionStatus.FAILED,
                    f"install ended {installed.state} (exit {installed.exit_status})",
                    installed=installed.status.installed,
                )
            self._step(ctx, "installed", installed.artifact or "")
            committed = self.client.commit()
        except BenchError as exc:
            ctx.mark(MARK_DETECTED, str(exc))
            return Outcome(ExecutionStatus.FAILED, str(exc))
        if committed.state == UpdateState.INSTALLED:
            self._step(ctx, "committed", committed.status.installed or "")
            return Outcome(
                ExecutionStatus.SUCCEEDED, "committed", installed=committed.status.installed
            )
        ctx.mark(MARK_DETECTED, f"commit ended {committed.state}")
        rolled_back = committed.state == UpdateState.ROLLED_BACK
        if rolled_back:
            ctx.mark(MARK_ROLLED_BACK, committed.status.installed or "")
            self._step(None, "rolled_back")
        return Outcome(
            ExecutionStatus.FAILED,
            f"commit ended {committed.state}",
            rolled_back=rolled_back,
            installed=committed.status.installed,
        )

    def truth(self) -> DeviceTruth:
        """What the device says it runs now, the payload's sha256, and its evidence since
        :meth:`prepare`."""
        status = self.client.status()
        evidence = self.client.evidence(self.payload, since=self.log_mark)
        self.evidence = evidence
        files = {"status": status.raw[-4000:], "recoveries": "; ".join(self.recoveries)}
        return DeviceTruth(
            device=self.name,
            before=self.before,
            installed=status.installed,
            payload_sha256=evidence.payload_sha256,
            pending=status.pending,
            rolled_back=status.state == UpdateState.ROLLED_BACK,
            resumes=evidence.resumes,
            files={**files, **evidence.files},
        )
