"""Placement advice: where should a decision run (device, gateway, edge, cloud)?

``fieldrig place WORKLOAD.yaml`` reads a workload (:mod:`.workload`), pulls measured numbers
from runs (:mod:`.measured`), and computes per tier the decision latency, energy and
backhaul bytes (:mod:`.model`). :mod:`.counters` and :mod:`.backhaul` measure the backhaul.
"""
