"""Backhaul: RTT, bandwidth and loss from each gateway to the cloud, and the bytes that
gateway-side data reduction saves, counted on the link with nftables.

An echo service runs in the lab's cloud namespace (``rig.spec.virtual.cloud_address``);
the probes run on the gateway, so they cross its ``wan0`` and the backhaul. The numbers
feed ``fieldrig place`` (bench/placement).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator

import pytest

from bench.errors import BenchError
from bench.faults import LinkTarget
from bench.gateway import ConnectedGateway
from bench.mesh.loss import summarize
from bench.placement.backhaul import BackhaulClient, EchoService
from bench.placement.counters import ByteCounter
from bench.plugin import Recorder
from bench.results.stats import summarize_latencies
from bench.results.units import PROPAGATION_MS_PER_KM
from bench.session import BenchSession

pytestmark = pytest.mark.needs("backhaul")

RTT_COUNT, RTT_SIZE = 500, 64
TIER_RTT_COUNT = 200
BULK_BYTES = 32 << 20
UDP_COUNT, UDP_INTERVAL_S, UDP_TMAX_S = 300, 0.002, 1.0
# one simulated minute of a meter feed: raw samples vs the events the gateway derives
PERIOD_S = 60.0
RAW_RATE, RAW_PAYLOAD = 50.0, 64
EVENT_RATE, EVENT_PAYLOAD = 0.5, 48
SEND_SECONDS = 1.0  # wall time the simulated period is sent in


@pytest.fixture(scope="module")
def echo(rig: BenchSession) -> Iterator[EchoService]:
    try:
        service = EchoService.for_lab(rig.spec)
        service.start()
    except BenchError as exc:
        pytest.skip(str(exc))
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture
def client(gateway: ConnectedGateway, echo: EchoService) -> BackhaulClient:
    return BackhaulClient(gateway, echo)


def test_rtt(client: BackhaulClient, results: Recorder) -> None:
    rtts = client.rtt_ns(RTT_COUNT, RTT_SIZE)
    summary = summarize_latencies([rtts])
    context = {"transport": "tcp", "size": RTT_SIZE}
    for name in ("p50", "p90", "p99", "max"):
        results.record(f"backhaul.rtt.{name}", getattr(summary, f"{name}_us"), "us", **context)
    results.record("backhaul.rtt.count", len(rtts), "count", **context)
    assert len(rtts) == RTT_COUNT and 0 < summary.p50_us <= summary.p99_us


@pytest.mark.parametrize("tier", ["edge", "cloud"])
def test_tier_rtt(
    gateway: ConnectedGateway, rig: BenchSession, tier: str, results: Recorder
) -> None:
    """TCP round trips from the gateway to a compute tier the lab puts ``distance_km`` away
    (``virtual.tiers``): what ``fieldrig place`` uses for that tier instead of assuming."""
    spec = rig.spec.virtual
    if spec is None or tier not in spec.tiers:
        pytest.skip(f"rig '{rig.spec.name}' has no {tier} tier (virtual.tiers.{tier})")
    distance_km = float(spec.tiers[tier].distance_km)
    with EchoService.for_tier(rig.spec, tier) as service:
        rtts = BackhaulClient(gateway, service).rtt_ns(TIER_RTT_COUNT, RTT_SIZE)
    summary = summarize_latencies([rtts])
    context = {"tier": tier, "distance_km": distance_km, "transport": "tcp", "size": RTT_SIZE}
    for name in ("p50", "p90", "p99", "max"):
        results.record(f"tier.rtt.{name}", getattr(summary, f"{name}_us"), "us", **context)
    results.record("tier.distance", distance_km, "km", tier=tier)
    fibre_us = 2 * distance_km * PROPAGATION_MS_PER_KM * 1e3
    assert summary.p50_us >= fibre_us, (
        f"{gateway.name} -> {tier}: median RTT {summary.p50_us:.0f} us is below the "
        f"{fibre_us:.0f} us that {distance_km:g} km of fibre take: the distance is not there"
    )


def test_bandwidth(client: BackhaulClient, results: Recorder) -> None:
    bit_s, raw = client.bandwidth_bit_s(BULK_BYTES)
    results.record(
        "backhaul.bandwidth", bit_s, "bit/s", bytes=raw["bytes"], seconds=raw["ns"] / 1e9
    )
    assert bit_s > 0


def test_loss(client: BackhaulClient, results: Recorder) -> None:
    loss = summarize(client.udp_probes(UDP_COUNT, UDP_INTERVAL_S, UDP_TMAX_S))
    context = {"interval": loss.interval, "tmax_s": UDP_TMAX_S, "probe_interval_s": UDP_INTERVAL_S}
    results.record("backhaul.loss", loss.loss_ratio, "1", **context)
    results.record("backhaul.loss_ci_low", loss.ci_low, "1", **context)
    results.record("backhaul.loss_ci_high", loss.ci_high, "1", **context)
    results.record("backhaul.loss.sent", loss.sent, "count", **context)
    results.record("backhaul.loss.max_loss_period", loss.max_loss_period, "count", **context)
    assert loss.sent == UDP_COUNT


def test_data_reduction(
    gateway: ConnectedGateway, client: BackhaulClient, results: Recorder
) -> None:
    """Bytes out of wan0 for a simulated minute of raw telemetry vs the gateway's events."""
    assert gateway.spec.backhaul is not None
    target = LinkTarget.from_backhaul(gateway.spec.backhaul)
    raw_n, event_n = round(RAW_RATE * PERIOD_S), round(EVENT_RATE * PERIOD_S)
    with ByteCounter(target) as counter:
        client.telemetry(raw_n, RAW_PAYLOAD, SEND_SECONDS)
        time.sleep(0.1)
        raw = counter.reset()
        client.telemetry(event_n, EVENT_PAYLOAD, SEND_SECONDS)
        time.sleep(0.1)
        events = counter.read()
    context = {"period_s": PERIOD_S, "raw_rate": RAW_RATE, "raw_payload": RAW_PAYLOAD,
               "event_rate": EVENT_RATE, "event_payload": EVENT_PAYLOAD,
               "link": target.label, "direction": "egress"}  # fmt: skip
    results.record("backhaul.bytes.raw", raw["egress_bytes"], "B", **context)
    results.record("backhaul.bytes.events", events["egress_bytes"], "B", **context)
    results.record("backhaul.packets.raw", raw["egress_packets"], "count", **context)
    results.record("backhaul.packets.events", events["egress_packets"], "count", **context)
    results.record("backhaul.reduction", events["egress_bytes"] / raw["egress_bytes"], "1",
                   **context)  # fmt: skip
    overhead = statistics.mean(
        [(raw["egress_bytes"] - raw_n * RAW_PAYLOAD) / raw_n,
         (events["egress_bytes"] - event_n * EVENT_PAYLOAD) / event_n]
    )  # fmt: skip
    results.record("backhaul.overhead_per_message", overhead, "B", **context)
    assert raw["egress_packets"] >= raw_n and events["egress_packets"] >= event_n
    assert raw["egress_bytes"] >= raw_n * RAW_PAYLOAD
    assert events["egress_bytes"] < raw["egress_bytes"]
