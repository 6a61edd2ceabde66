"""CPU quotas for virtual gateways, on cgroup v1 (cpu controller) or v2 (cpu.max).

A board profile says how many of the host's CPUs a gateway of that kind may use, so a
Pi-class gateway runs slower than a Jetson-class one in kind. All cgroups of a lab live
under one parent named from the lab id, so teardown finds them without any state file.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from bench.errors import LabError

ROOT = Path("/sys/fs/cgroup")
PERIOD_US = 10_000  # short periods keep throttling stalls short (at most period - quota)


def _flavour() -> str | None:
    if (ROOT / "cpu" / "cpu.cfs_quota_us").exists():
        return "v1"
    controllers = ROOT / "cgroup.controllers"
    if controllers.exists() and "cpu" in controllers.read_text().split():
        return "v2"
    return None


def lab_cgroup(lab_id: str) -> Path | None:
    """The parent cgroup of a lab's gateways, or None where the cpu controller is absent."""
    flavour = _flavour()
    if flavour == "v1":
        return ROOT / "cpu" / f"fieldrig-{lab_id}"
    if flavour == "v2":
        return ROOT / f"fieldrig-{lab_id}"
    return None


def _accounting_parent(lab_id: str) -> Path | None:
    """Where CPU time is counted: cpuacct on v1 (a hierarchy of its own here), else the same
    cgroup as the quota."""
    if _flavour() == "v1":
        cpuacct = ROOT / "cpuacct"
        return cpuacct / f"fieldrig-{lab_id}" if (cpuacct / "cpuacct.usage").exists() else None
    return lab_cgroup(lab_id)


def procs_files(lab_id: str, gateway: str) -> list[Path]:
    """Every cgroup.procs a gateway's first process must join (quota and accounting)."""
    files = []
    for parent in (lab_cgroup(lab_id), _accounting_parent(lab_id)):
        if parent is not None and (parent / gateway / "cgroup.procs") not in files:
            files.append(parent / gateway / "cgroup.procs")
    return [f for f in files if f.parent.exists()]


def cpu_usage_ns(lab_id: str, gateway: str) -> int | None:
    """CPU time all processes of the gateway have used so far (ns), or None if unknown."""
    parent = _accounting_parent(lab_id)
    if parent is None:
        return None
    try:
        if _flavour() == "v1":
            return int((parent / gateway / "cpuacct.usage").read_text())
        for line in (parent / gateway / "cpu.stat").read_text().splitlines():
            if line.startswith("usage_usec"):
                return int(line.split()[1]) * 1000
    except (OSError, ValueError):
        return None
    return None


def create(lab_id: str, gateway: str, cpus: float) -> Path | None:
    """Create the gateway's cgroup limited to `cpus` CPUs (and its CPU-time accounting);
    returns its cgroup.procs file."""
    parent = lab_cgroup(lab_id)
    if parent is None:
        return None
    accounting = _accounting_parent(lab_id)
    if accounting is not None and accounting != parent:
        with contextlib.suppress(OSError):
            (accounting / gateway).mkdir(parents=True, exist_ok=True)
    quota = max(1000, int(cpus * PERIOD_US))
    group = parent / gateway
    try:
        parent.mkdir(exist_ok=True)
        if _flavour() == "v2":
            (ROOT / "cgroup.subtree_control").write_text("+cpu")
            (parent / "cgroup.subtree_control").write_text("+cpu")
            group.mkdir(exist_ok=True)
            (group / "cpu.max").write_text(f"{quota} {PERIOD_US}")
        else:
            group.mkdir(exist_ok=True)
            (group / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (group / "cpu.cfs_quota_us").write_text(str(quota))
    except OSError as exc:
        raise LabError(f"cannot set the CPU quota of gateway {gateway} in {group}: {exc}") from None
    return group / "cgroup.procs"


def remove(lab_id: str) -> None:
    """Remove the lab's cgroups (their processes must be gone already)."""
    for parent in (lab_cgroup(lab_id), _accounting_parent(lab_id)):
        if parent is None or not parent.exists():
            continue
        for group in parent.iterdir():
            if group.is_dir():
                with contextlib.suppress(OSError):
                    group.rmdir()
        with contextlib.suppress(OSError):
            parent.rmdir()
