"""The mesh behind a gateway's radio dongle: probing and loss statistics for any mesh, and
the emulated one (airtime, links, the simulator) the virtual lab puts behind its dongles."""

from bench.mesh.airtime import ack_airtime_s, frame_airtime_s, random_backoff_s
from bench.mesh.links import (
    GilbertElliott,
    calibrated_link,
    delivery_probability,
    path_loss_db,
)
from bench.mesh.loss import (
    LossSummary,
    ProbeRecord,
    by_hops,
    clopper_pearson,
    loss_distances,
    loss_periods,
    summarize,
    wilson_interval,
)
from bench.mesh.probing import Prober, periodic_schedule, poisson_schedule
from bench.mesh.sim import MeshConfig, MeshSimulator, ProbeResult

__all__ = [
    "GilbertElliott",
    "LossSummary",
    "MeshConfig",
    "MeshSimulator",
    "ProbeRecord",
    "ProbeResult",
    "Prober",
    "ack_airtime_s",
    "by_hops",
    "calibrated_link",
    "clopper_pearson",
    "delivery_probability",
    "frame_airtime_s",
    "loss_distances",
    "loss_periods",
    "path_loss_db",
    "periodic_schedule",
    "poisson_schedule",
    "random_backoff_s",
    "summarize",
    "wilson_interval",
]
