"""The emulated mesh behind a gateway's radio dongle: airtime, links, statistics."""

from bench.mesh.airtime import ack_airtime_s, frame_airtime_s, random_backoff_s
from bench.mesh.links import (
    GilbertElliott,
    calibrated_link,
    delivery_probability,
    path_loss_db,
    wilson_interval,
)

__all__ = [
    "GilbertElliott",
    "ack_airtime_s",
    "calibrated_link",
    "delivery_probability",
    "frame_airtime_s",
    "path_loss_db",
    "random_backoff_s",
    "wilson_interval",
]
