"""Link faults and power cuts, applied by hand or on a timeline, never outliving their run.

Fault kinds: :class:`Loss`, :class:`Partition`, :class:`RateLimit`, :class:`Flapping`,
:class:`Delay` (netem; :class:`RelayDelay`, a userspace TCP relay, where the kernel has no
netem) on a :class:`LinkTarget`, and :class:`PowerCut` on a
supply channel. Each is a context manager (``with Loss(target, 30): ...``); the lowercase
helpers say the same thing (``with loss(target, 30): ...``). :class:`FaultTimeline`
schedules them and records every change. :func:`backend_report` says which mechanism
this host (or a router) uses for each kind; :func:`find_stale` / :func:`clear_stale` deal
with what a killed run left behind. A :class:`LinkTarget` with a :class:`Router` puts the
same faults on a router the bench reaches over SSH. :class:`Protection` names the
management path no fault may touch.
"""

from __future__ import annotations

from bench.faults.base import (
    Fault,
    FaultError,
    FaultLeaked,
    FaultUnsupported,
    LinkFault,
    ManagementLinkRefused,
    Observable,
)
from bench.faults.flapping import Flapping, Transition
from bench.faults.guard import Protection
from bench.faults.kinds import Delay, Loss, Partition, RateLimit
from bench.faults.owner import Owner, set_run_id
from bench.faults.power import PowerCut
from bench.faults.probe import HostSupport, backend_report, probe, support_for
from bench.faults.relay import RelayDelay
from bench.faults.router import Router, routers_of
from bench.faults.stale import StaleFault, clear_stale, find_stale
from bench.faults.target import LinkTarget
from bench.faults.timeline import FaultEvent, FaultTimeline, Sink
from bench.instruments.psu import PowerSupply

__all__ = [
    "Delay",
    "Fault",
    "FaultError",
    "FaultEvent",
    "FaultLeaked",
    "FaultTimeline",
    "FaultUnsupported",
    "Flapping",
    "HostSupport",
    "LinkFault",
    "LinkTarget",
    "Loss",
    "ManagementLinkRefused",
    "Observable",
    "Owner",
    "Partition",
    "PowerCut",
    "Protection",
    "RateLimit",
    "RelayDelay",
    "Router",
    "Sink",
    "StaleFault",
    "Transition",
    "backend_report",
    "clear_stale",
    "delay",
    "find_stale",
    "flapping",
    "loss",
    "partition",
    "power_cut",
    "probe",
    "rate_limit",
    "routers_of",
    "set_run_id",
]


def loss(target: LinkTarget, percent: float, *, protect: Protection | None = None) -> Loss:
    """``with loss(target, 30): ...`` drops 30 % of frames each way inside the block."""
    return Loss(target, percent, protect=protect)


def partition(target: LinkTarget, *, protect: Protection | None = None) -> Partition:
    """``with partition(target): ...`` cuts the link both ways inside the block."""
    return Partition(target, protect=protect)


def rate_limit(
    target: LinkTarget,
    kbit: float,
    burst_bytes: int | None = None,
    *,
    protect: Protection | None = None,
) -> RateLimit:
    """``with rate_limit(target, 512): ...`` caps the link at 512 kbit/s each way."""
    return RateLimit(target, kbit, burst_bytes, protect=protect)


def flapping(
    target: LinkTarget,
    mean_up_s: float,
    mean_down_s: float,
    seed: int = 0,
    *,
    protect: Protection | None = None,
) -> Flapping:
    """``with flapping(target, 5, 2, seed=1): ...`` flaps the link inside the block."""
    return Flapping(target, mean_up_s, mean_down_s, seed, protect=protect)


def delay(
    target: LinkTarget,
    delay_ms: float,
    jitter_ms: float = 0.0,
    *,
    protect: Protection | None = None,
) -> Delay | RelayDelay:
    """``with delay(target, 80, 10): ...``: netem on egress frames where the kernel has
    it (the router's, for a router target), else the userspace relay for the TCP
    connections the target opens (bench host only)."""
    if support_for(target.router).netem:
        return Delay(target, delay_ms, jitter_ms, protect=protect)
    return RelayDelay(target, delay_ms, jitter_ms, protect=protect)


def power_cut(psu: PowerSupply, channel: int) -> PowerCut:
    """``with power_cut(psu, 1): ...`` keeps channel 1 off inside the block."""
    return PowerCut(psu, channel)
