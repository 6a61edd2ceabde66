"""Energy integration on traces with known answers, and the sampler on a real supply."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from bench.gateway import ConnectedGateway
from bench.instruments.meter import Ina3221Meter, SupplyChannelMeter
from bench.instruments.psu import InstrumentError, open_psu
from bench.lab.scpi_server import ResistiveLoad, ScpiPsuServer
from bench.power.energy import MIN_SAMPLES_PER_WINDOW, integrate_joules, window_energies
from bench.power.sampler import Sampler, Trace
from tests.helpers import supply_rig


def test_constant_power_integrates_exactly() -> None:
    t = np.arange(0, 11) * 100_000_000  # 0 .. 1 s every 100 ms
    w = np.full(t.size, 5.0)
    assert integrate_joules(t, w, 0, 1_000_000_000) == pytest.approx(5.0)
    # bounds between samples are interpolated, not snapped
    assert integrate_joules(t, w, 50_000_000, 250_000_000) == pytest.approx(1.0)


def test_ramp_and_sine_within_one_percent() -> None:
    t = np.linspace(0, 2e9, 201).astype(np.int64)  # 100 Hz for 2 s
    ramp = 2.0 + 3.0 * t / 2e9  # 2 W -> 5 W: exactly 7 J
    assert integrate_joules(t, ramp, 0, int(2e9)) == pytest.approx(7.0, rel=1e-9)
    sine = 4.0 + np.sin(2 * math.pi * t / 1e9)  # two whole periods: 8 J
    assert integrate_joules(t, sine, 0, int(2e9)) == pytest.approx(8.0, rel=0.01)


def test_window_outside_the_trace_is_refused() -> None:
    t = np.array([0, 1_000_000_000])
    with pytest.raises(ValueError, match="does not cover"):
        integrate_joules(t, np.array([1.0, 1.0]), 0, 2_000_000_000)


def test_window_energies_align_with_the_clock_offset() -> None:
    trace = Trace(meter="synthetic")
    for i in range(301):  # bench clock: 0 .. 3 s at 100 Hz; 2 W idle, 6 W during 1 .. 2 s
        at = i * 10_000_000
        trace.times_ns.append(at)
        trace.watts.append(6.0 if 1_000_000_000 <= at <= 2_000_000_000 else 2.0)
    offset = 500_000_000  # the board's clock runs 0.5 s ahead of the bench's
    window = {"start_wall_ns": 1_000_000_000 + offset, "end_wall_ns": 2_000_000_000 + offset,
              "latencies_ns": [1] * 100}  # fmt: skip
    (energy,) = window_energies(trace, [window], clock_offset_ns=offset, idle_watts=2.0)
    assert energy.joules == pytest.approx(6.0, rel=0.01)
    assert energy.mj_per_inference == pytest.approx(60.0, rel=0.01)
    assert energy.net_mj_per_inference == pytest.approx(40.0, rel=0.02)
    assert energy.average_watts == pytest.approx(6.0, rel=0.01)
    assert energy.trusted and energy.samples >= MIN_SAMPLES_PER_WINDOW
    sparse = Trace(meter="sparse", times_ns=[0, 3_000_000_000], watts=[2.0, 2.0])
    (few,) = window_energies(sparse, [window], clock_offset_ns=offset, idle_watts=2.0)
    assert not few.trusted  # flagged: too few samples to be trusted


def test_sampler_reads_a_real_supply_over_pyvisa() -> None:
    with ScpiPsuServer(backend=ResistiveLoad(10.0, noise_a=0.0)) as server:
        rig = supply_rig(server.port)
        psu = open_psu("psu", rig.instruments["psu"])
        try:
            psu.output(1, True)
            with Sampler(SupplyChannelMeter(psu, 1)) as trace:
                time.sleep(0.5)
        finally:
            psu.close()
    assert not trace.errors
    assert len(trace.watts) >= 20 and trace.rate_hz > 20
    assert np.mean(trace.watts) == pytest.approx(5.0 * 5.0 / 10.0, rel=0.01)  # V^2 / R
    assert list(trace.times_ns) == sorted(trace.times_ns)


def test_ina3221_meter_reads_hwmon_over_ssh(gw1: ConnectedGateway) -> None:
    """The reader parses the hwmon files a Jetson's INA3221 driver publishes (mV and mA);
    the virtual board has no INA3221, so the test stages the two files on the gateway."""
    hwmon = "/tmp/fieldrig-test-hwmon"
    gw1.run(["mkdir", "-p", hwmon])
    gw1.run(["sh", "-c", f"echo 19040 > {hwmon}/in1_input; echo 316 > {hwmon}/curr1_input"])
    meter = Ina3221Meter(gw1, hwmon, rail=1)
    before = time.time_ns()
    at, watts = meter.read()
    assert before <= at <= time.time_ns()
    assert watts == pytest.approx(19.04 * 0.316)
    assert meter.name == "gw1 INA3221 rail 1"


class _DataloggerThatRefuses:
    """A meter whose datalogger errors (as an instrument without one would answer -113)."""

    name = "refusing datalogger"

    def read_block(self) -> object:
        raise InstrumentError("psu: 'SENS:SWE:POIN 500' failed: -113,\"Undefined header\"")

    def read(self) -> tuple[int, float]:
        time.sleep(0.001)
        return time.time_ns(), 3.0


def test_sampler_falls_back_to_point_queries_when_the_datalogger_fails() -> None:
    with Sampler(_DataloggerThatRefuses()) as trace:  # type: ignore[arg-type]
        time.sleep(0.1)
    assert trace.fallback is not None and "-113" in trace.fallback
    assert len(trace.watts) >= 10 and set(trace.watts) == {3.0}
