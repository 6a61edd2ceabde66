"""Power: idle draw, energy per inference, boot time, and a power cut under load.

The supply channel that powers each gateway is sampled while the runner's latency windows
run on the board; the trace is aligned to the windows through the measured clock offset and
integrated (trapezoid) per window. Gross energy per inference is the primary figure; the
idle-subtracted one is secondary and the idle baseline is stored beside it.
"""

from __future__ import annotations

import statistics
import time

import pytest

from bench.fleet.clock import estimate_clock
from bench.gateway import ConnectedGateway
from bench.inference.manifest import ModelEntry, load_manifest
from bench.inference.runner import InferenceOptions, measure_latency
from bench.instruments.meter import ArraySupplyMeter, SupplyChannelMeter
from bench.instruments.psu import PowerSupply
from bench.plugin import Recorder
from bench.power.energy import window_energies
from bench.power.sampler import Sampler, sample_for

IDLE_SECONDS = 2.0
BOOT_DEADLINE_S = 180.0
Power = tuple[PowerSupply, int, SupplyChannelMeter | ArraySupplyMeter]


@pytest.mark.needs("psu")
def test_idle_power(gateway: ConnectedGateway, gateway_power: Power, results: Recorder) -> None:
    _, _, meter = gateway_power
    trace = sample_for(meter, IDLE_SECONDS)
    assert len(trace.watts) >= 10, f"only {len(trace.watts)} samples in {IDLE_SECONDS} s"
    results.record("power.idle", statistics.mean(trace.watts), "W", meter=meter.name)
    results.record("power.idle_std", statistics.stdev(trace.watts), "W", meter=meter.name)
    results.record("power.sampling_rate", trace.rate_hz, "Hz", meter=meter.name)
    results.record("power.sampling_jitter", trace.jitter_ms, "ms", meter=meter.name)
    assert statistics.mean(trace.watts) > 0


@pytest.mark.needs("psu")
@pytest.mark.parametrize("model", load_manifest(), ids=lambda m: m.id)
def test_energy_per_inference(
    gateway: ConnectedGateway,
    gateway_power: Power,
    model: ModelEntry,
    results: Recorder,
    request: pytest.FixtureRequest,
) -> None:
    _, _, meter = gateway_power
    idle = statistics.mean(sample_for(meter, IDLE_SECONDS / 2).watts)
    clock = estimate_clock(gateway.ping, samples=16)
    options = InferenceOptions(
        windows=3, min_secs=max(1.0, request.config.getoption("inference_min_secs")),
        min_inferences=request.config.getoption("inference_min_count"),
    )  # fmt: skip
    with Sampler(meter) as trace:
        run = measure_latency(gateway, model, options)
    energies = window_energies(
        trace, run.raw["windows"], clock_offset_ns=clock.offset_ns, idle_watts=idle
    )
    trusted = [e for e in energies if e.trusted]
    context = {**run.stack, "model": model.name, "variant": model.variant, "meter": meter.name,
               "sampling_fallback": trace.fallback or ""}  # fmt: skip
    results.record("power.idle_baseline", idle, "W", **context)
    results.record("power.sampling_rate", trace.rate_hz, "Hz", **context)
    results.record("power.untrusted_windows", len(energies) - len(trusted), "count", **context)
    assert trusted, f"no window had enough samples (rate {trace.rate_hz:.1f} Hz)"
    for name, unit, value in (
        ("energy.per_inference", "mJ", statistics.median(e.mj_per_inference for e in trusted)),
        ("energy.per_inference_net", "mJ",
         statistics.median(e.net_mj_per_inference for e in trusted)),
        ("energy.average_power", "W", statistics.median(e.average_watts for e in trusted)),
        ("energy.inferences_per_joule", "inf/J",
         statistics.median(e.inferences_per_joule for e in trusted)),
    ):  # fmt: skip
        results.record(name, value, unit, **context)
    # more work, more power: the board draws above its idle baseline while inferring
    assert statistics.median(e.average_watts for e in trusted) > idle


def _cut_and_restore(gateway: ConnectedGateway, psu: PowerSupply, channel: int) -> float:
    """Power off, power on, and the seconds from output-on to a working SSH agent."""
    psu.output(channel, False)
    gateway.close()  # a board without power never closes its TCP connection itself
    time.sleep(0.5)
    on_at = time.monotonic()
    psu.output(channel, True)
    gateway.connect(deadline_s=BOOT_DEADLINE_S)
    gateway.ping()
    return time.monotonic() - on_at


@pytest.mark.needs("psu")
def test_boot_time(gateway: ConnectedGateway, gateway_power: Power, results: Recorder) -> None:
    psu, channel, _ = gateway_power
    results.record("power.boot_to_ssh", _cut_and_restore(gateway, psu, channel), "s")


@pytest.mark.needs("psu")
def test_power_cut_under_load(gateway: ConnectedGateway, gateway_power: Power) -> None:
    """Cut power while the board is busy: it comes back, the bench reconnects, the load is
    gone (the board really rebooted)."""
    psu, channel, _ = gateway_power
    # setsid: the load must outlive the bench's SSH session, so only the power cut can end it
    find_load = "pgrep -f [f]ieldrig-load || true"
    gateway.run("setsid -f python3 -c 'while True: pass  # fieldrig-load' >/dev/null 2>&1")
    try:
        time.sleep(0.5)
        assert gateway.run(find_load).text.strip() != ""
        _cut_and_restore(gateway, psu, channel)
        assert gateway.run(find_load).text.strip() == ""
    finally:
        gateway.run("pkill -f [f]ieldrig-load || true")
    assert gateway.run(["true"]).ok
