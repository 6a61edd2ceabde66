"""The supply's datalogger: array sweeps through the real driver, pyvisa-py over TCP to the
virtual PSU on 127.0.0.1, the sampler reading blocks at the instrument's rate, refusals and
the virtual supply's own range checks and errors."""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import pyvisa
from pyvisa.resources import MessageBasedResource

from bench.instruments import (
    AcquisitionRefused,
    ArrayReading,
    InstrumentError,
    ScpiPsu,
    SetpointRefused,
    open_psu,
)
from bench.instruments.dialects import KEYSIGHT_ARRAY, KEYSIGHT_E36300
from bench.instruments.meter import ArraySupplyMeter, SupplyChannelMeter, supply_meter
from bench.lab.scpi_server import ARRAY_CLOCK_S, ResistiveLoad, ScpiPsuServer
from bench.power.energy import integrate_joules
from bench.power.sampler import Sampler
from bench.rig import Instrument

CH1 = {"max_voltage": 6.0, "max_current": 3.0, "voltage": 5.0, "current_limit": 2.0}
SERVER_DIALECT = {
    "keysight-e36300": "keysight-e36300",
    "scpi-generic": "keysight-e36300",
    "rigol-dp800": "rigol-dp800",
    "siglent-spd3303x": "siglent-spd3303x",
}


def instrument(driver: str, server: ScpiPsuServer) -> Instrument:
    return Instrument.model_validate(
        {"driver": driver, "resource": server.resource, "channels": {1: CH1}}
    )


def clock(interval_s: float) -> float:
    """The interval the virtual supply really uses: rounded to its 20.48 us sample clock."""
    return round(interval_s / ARRAY_CLOCK_S) * ARRAY_CLOCK_S


@pytest.fixture
def load() -> ResistiveLoad:
    return ResistiveLoad({1: 10.0}, noise_a=0.0)


@pytest.fixture
def psu(server: ScpiPsuServer) -> Iterator[ScpiPsu]:
    """A Keysight supply, channel 1 on at 5 V into the load (10 ohm: 0.5 A, 2.5 W)."""
    supply = open_psu("psu", instrument("keysight-e36300", server))
    supply.output(1, True)
    server.clear_transcript()
    yield supply
    supply.close()


@pytest.fixture
def raw(server: ScpiPsuServer) -> Iterator[MessageBasedResource]:
    rm = pyvisa.ResourceManager("@py")
    try:
        res = rm.open_resource(server.resource, read_termination="\n", write_termination="\n")
        assert isinstance(res, MessageBasedResource)
        res.timeout = 3000
        yield res
    finally:
        rm.close()


# --- the driver ---------------------------------------------------------------------------------


def test_array_sweep_matches_the_resistive_load(psu: ScpiPsu, server: ScpiPsuServer) -> None:
    before = time.time_ns()
    started = time.monotonic()
    sweep = psu.acquire_array(1, 40, 0.005)
    elapsed = time.monotonic() - started
    assert isinstance(sweep, ArrayReading) and sweep.channel == 1
    assert sweep.interval_s == pytest.approx(clock(0.005), abs=1e-12)  # read back, not asked
    assert len(sweep.volts) == len(sweep.amps) == 40
    assert sweep.volts == pytest.approx([5.0] * 40)
    assert sweep.amps == pytest.approx([0.5] * 40)  # V / R
    assert sweep.watts() == pytest.approx([2.5] * 40)
    assert elapsed >= 40 * sweep.interval_s  # the virtual sweep really takes its time
    assert before <= sweep.start_ns <= time.time_ns()
    times = sweep.times_ns()
    assert times[0] == sweep.start_ns
    assert np.diff(times) == pytest.approx(sweep.interval_s * 1e9, abs=1)
    # every step followed by the error query, in one message each
    assert [c for c in server.transcript() if c != ":SYST:ERR?"] == [
        "SENS:SWE:POIN 40,(@1)",
        "SENS:SWE:TINT 0.005,(@1)",
        "SENS:SWE:TINT? (@1)",
        "SENS:SWE:OFFS:POIN 0,(@1)",
        "INIT:ACQ (@1)",
        "TRIG:ACQ (@1)",
        "FETC:ARR:CURR? (@1)",
        "FETC:ARR:VOLT? (@1)",
    ]
    assert server.transcript().count(":SYST:ERR?") == 8


def test_noisy_load_averages_to_ohms_law(
    start_server: Callable[..., ScpiPsuServer],
) -> None:
    server = start_server(backend=ResistiveLoad({1: 20.0}, noise_a=0.002, seed=3))
    with open_psu("psu", instrument("keysight-e36300", server)) as supply:
        supply.output(1, True)
        sweep = supply.acquire_array(1, 1000, 20.48e-6)  # the fastest clock: 20.5 ms
    assert len(sweep.amps) == 1000 and sweep.interval_s == pytest.approx(20.48e-6)
    assert np.mean(sweep.amps) == pytest.approx(5.0 / 20.0, abs=0.001)
    assert np.std(sweep.amps) == pytest.approx(0.002, rel=0.2)  # the load's noise, per point


def test_points_are_taken_at_their_own_time(psu: ScpiPsu, load: ResistiveLoad) -> None:
    """The load halves mid-sweep: the points before read 0.5 A, those after 1 A, and the
    bench timestamps put the step where the bench clock saw it happen."""
    interval = 0.01
    changed: list[int] = []

    def halve() -> None:
        load.set_ohms(1, 5.0)
        changed.append(time.time_ns())

    timer = threading.Timer(0.16, halve)
    timer.start()
    try:
        sweep = psu.acquire_array(1, 40, interval)
    finally:
        timer.cancel()
    amps = np.asarray(sweep.amps)
    assert set(np.round(amps, 6)) == {0.5, 1.0}
    step = int(np.argmax(amps > 0.75))
    assert np.all(amps[:step] == pytest.approx(0.5)) and np.all(amps[step:] == pytest.approx(1.0))
    assert 5 <= step <= 35
    times = sweep.times_ns()
    slack = int(interval * 1e9)  # one point: the server reads ~1 ms late, plus scheduling
    assert times[step - 1] - slack <= changed[0] <= times[step] + slack


def test_driver_extends_its_timeout_for_the_sweep(server: ScpiPsuServer) -> None:
    psu = ScpiPsu("psu", instrument("keysight-e36300", server), KEYSIGHT_E36300, timeout_ms=150)
    try:
        psu.output(1, True)
        sweep = psu.acquire_array(1, 30, 0.01)  # 0.3 s, twice the session's timeout
        assert len(sweep.amps) == 30
        assert psu.measure_voltage(1) == pytest.approx(5.0)  # the timeout is back to 150 ms
        assert psu._res.timeout == 150
    finally:
        psu.close()


# --- the sampler ------------------------------------------------------------------------------


def test_sampler_records_the_datalogger_rate(psu: ScpiPsu) -> None:
    meter = supply_meter(psu, 1, interval_s=0.002, points=250)  # 0.5 s blocks at 500 Hz
    assert isinstance(meter, ArraySupplyMeter)
    with Sampler(meter, rate_hz=5) as trace:  # rate_hz does not apply to blocks
        time.sleep(1.2)
    assert not trace.errors
    interval_ns = clock(0.002) * 1e9
    assert len(trace.watts) % 250 == 0 and len(trace.watts) >= 750
    steps = np.diff(trace.times_ns)
    assert np.all(steps > 0)  # blocks never overlap
    assert np.median(steps) == pytest.approx(interval_ns, abs=1)  # within a block: exact
    assert trace.rate_hz == pytest.approx(1e9 / interval_ns, rel=0.05)  # gaps between blocks
    assert np.mean(trace.watts) == pytest.approx(2.5)
    times, watts = trace.arrays()
    joules = integrate_joules(times, watts, int(times[0]), int(times[-1]))
    assert joules == pytest.approx(2.5 * (times[-1] - times[0]) / 1e9, rel=1e-6)


def test_meter_without_blocks_is_read_point_by_point(psu: ScpiPsu, server: ScpiPsuServer) -> None:
    with Sampler(SupplyChannelMeter(psu, 1), rate_hz=50) as trace:
        time.sleep(0.3)
    assert not trace.errors
    assert 8 <= len(trace.watts) <= 20 and trace.rate_hz == pytest.approx(50, rel=0.2)
    assert set(server.transcript()) == {"MEAS:VOLT? (@1)", "MEAS:CURR? (@1)"}


@pytest.mark.parametrize("driver", sorted(SERVER_DIALECT))
def test_array_meter_only_where_the_family_has_a_datalogger(
    driver: str, start_server: Callable[..., ScpiPsuServer]
) -> None:
    server = start_server(SERVER_DIALECT[driver])
    with open_psu("psu", instrument(driver, server)) as supply:
        meter = supply_meter(supply, 1)
        assert supply.has_datalogger is (driver == "keysight-e36300")
        expected = ArraySupplyMeter if driver == "keysight-e36300" else SupplyChannelMeter
        assert type(meter) is expected


def test_block_meter_errors_land_in_the_trace(psu: ScpiPsu) -> None:
    meter = ArraySupplyMeter(psu, 1, interval_s=1e-7)  # below the sample clock
    with Sampler(meter) as trace:
        time.sleep(0.1)
    assert trace.watts == [] and 1 <= len(trace.errors) <= 11
    assert "interval 1e-07 s refused before anything was sent" in trace.errors[0]


# --- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("points", "interval", "message"),
    [
        (4097, 0.001, r"psu channel 1: 4097 points refused before anything was sent: a "
         r"Keysight E36300 series holds at most 4096 per sweep"),
        (0, 0.001, r"0 points refused .*whole number from 1 to 4096"),
        (1.5, 0.001, r"1\.5 points refused"),
        (10, 1e-6, r"interval 1e-06 s refused .*from 2\.048e-05 s to 40000 s"),
        (10, 0.0, r"interval 0\.0 s refused"),
        (10, -0.01, r"interval -0\.01 s refused"),
        (10, math.nan, r"interval nan s refused"),
        (10, 50_000.0, r"interval 50000\.0 s refused"),
        (4096, 1.0, r"a sweep of 4096 x 1 s = 4096 s refused .*within 60 s"),
    ],
)  # fmt: skip
def test_out_of_bounds_sweeps_are_refused_before_any_write(
    psu: ScpiPsu, server: ScpiPsuServer, points: Any, interval: float, message: str
) -> None:
    with pytest.raises(AcquisitionRefused, match=message) as caught:
        psu.acquire_array(1, points, interval)
    assert "\n" not in str(caught.value)
    assert server.transcript() == []


@pytest.mark.parametrize("driver", ["rigol-dp800", "siglent-spd3303x", "scpi-generic"])
def test_families_without_a_datalogger_refuse_arrays(
    driver: str, start_server: Callable[..., ScpiPsuServer]
) -> None:
    server = start_server(SERVER_DIALECT[driver])
    with open_psu("psu", instrument(driver, server)) as supply:
        server.clear_transcript()
        with pytest.raises(AcquisitionRefused, match=r"has no datalogger.*point queries") as got:
            supply.acquire_array(1, 10, 0.01)
        assert "\n" not in str(got.value)
        assert server.transcript() == []


def test_undeclared_channel_is_refused(psu: ScpiPsu, server: ScpiPsuServer) -> None:
    with pytest.raises(SetpointRefused, match="channel 2 is not declared"):
        psu.acquire_array(2, 10, 0.01)
    assert server.transcript() == []


def test_a_supply_without_the_commands_raises_its_error(server: ScpiPsuServer) -> None:
    """What a real E36300 without SENSe:SWEep would do: -113, surfaced with the command."""
    table = dataclasses.replace(KEYSIGHT_ARRAY, points="SENS:SWE:BOGUS {value},(@{ch})")
    dialect = dataclasses.replace(KEYSIGHT_E36300, array=table)
    with (
        ScpiPsu("psu", instrument("keysight-e36300", server), dialect) as supply,
        pytest.raises(InstrumentError, match=r'-113,"Undefined header".*SENS:SWE:BOGUS'),
    ):
        supply.acquire_array(1, 10, 0.01)
    fetchless = dataclasses.replace(KEYSIGHT_ARRAY, fetch_voltage="FETC:ARR:BOGUS? (@{ch})")
    dialect = dataclasses.replace(KEYSIGHT_E36300, array=fetchless)
    with ScpiPsu("psu", instrument("keysight-e36300", server), dialect) as supply:
        started = time.monotonic()
        with pytest.raises(InstrumentError, match=r"-113.*FETC:ARR:BOGUS\?"):
            supply.acquire_array(1, 10, 0.01)
        assert time.monotonic() - started < 2  # answered with its error, no timeout


# --- the virtual supply's datalogger ----------------------------------------------------------


def errors(raw: MessageBasedResource) -> list[str]:
    found = []
    while (reply := raw.query("SYST:ERR?")) != '+0,"No error"':
        found.append(reply)
    return found


def test_virtual_datalogger_settings_and_range_checks(raw: MessageBasedResource) -> None:
    assert raw.query("SENS:SWE:POIN? (@1);TINT? (@1);OFFS:POIN? (@1)") == (
        "+1024;+2.04800000E-05;+0"  # *RST values
    )
    raw.write("SENSe:SWEep:POINts 4096,(@1,2);:SWE:TINT 0.001,(@1)")  # [SENSe] is optional
    assert raw.query("SWE:POIN? (@1,2);:SENS:SWE:TINT? (@1)") == "+4096,+4096;+1.00352000E-03"
    raw.write("SENS:SWE:POIN 4097,(@1)")
    raw.write("SENS:SWE:POIN 0,(@1)")
    raw.write("SENS:SWE:POIN 1.5,(@1)")
    raw.write("SENS:SWE:TINT 1E-6,(@1)")
    raw.write("SENS:SWE:TINT 40001,(@1)")
    raw.write("SENS:SWE:TINT fast,(@1)")
    raw.write("SENS:SWE:OFFS:POIN -10,(@1)")  # no pre-trigger capture in the virtual supply
    raw.write("SENS:SWE:POIN 10,(@9)")
    assert errors(raw) == [
        '-222,"Data out of range"',
        '-222,"Data out of range"',
        '-224,"Illegal parameter value"',
        '-222,"Data out of range"',
        '-222,"Data out of range"',
        '-224,"Illegal parameter value"',
        '-222,"Data out of range"',
        '-224,"Illegal parameter value"',
    ]
    raw.write("SENS:SWE:POIN MAX,(@1);TINT MIN,(@1)")
    assert raw.query("SENS:SWE:POIN? (@1);TINT? (@1)") == "+4096;+2.04800000E-05"
    raw.write("*RST")
    assert raw.query("SENS:SWE:POIN? (@1)") == "+1024"


def test_virtual_sweep_state_machine(raw: MessageBasedResource) -> None:
    raw.write("VOLT 5,(@1);CURR 2,(@1);OUTP ON,(@1)")
    assert raw.query("FETC:ARR:CURR? (@1);:SYST:ERR?") == '-230,"Data corrupt or stale"'
    raw.write("TRIG:ACQ (@1)")  # not initiated
    assert errors(raw) == ['-211,"Trigger ignored"']
    raw.write("SENS:SWE:POIN 25,(@1);TINT 0.01,(@1);:INIT:ACQ (@1);:TRIG:ACQ (@1)")
    raw.write("SENS:SWE:POIN 10,(@1)")  # a sweep is running
    raw.write("INIT:ACQ (@1)")
    assert errors(raw) == [
        '-221,"Settings conflict; a measurement is in progress"',
        '-213,"Init ignored"',
    ]
    started = time.monotonic()
    amps = [float(v) for v in raw.query("FETC:ARR:CURR? (@1)").split(",")]
    assert time.monotonic() - started > 0.1  # the fetch waited for the running sweep
    assert amps == pytest.approx([0.5] * 25)
    volts = [float(v) for v in raw.query("FETCh:ARRay:VOLTage:DC? (@1)").split(",")]
    assert volts == pytest.approx([5.0] * 25)  # the same sweep, again
    raw.write("SENS:SWE:POIN 3,(@1);TINT MIN,(@1)")
    assert raw.query("MEAS:ARR:VOLT? (@1)").split(",") == ["+5.00000000E+00"] * 3
    raw.write("SENS:SWE:POIN 100,(@1);TINT 0.01,(@1);:INIT:ACQ (@1);:TRIG:ACQ (@1)")
    raw.write("*RST")  # drops the running sweep
    assert raw.query("FETC:ARR:CURR? (@1);:SYST:ERR?") == '-230,"Data corrupt or stale"'


def test_virtual_sweep_honours_the_offset(raw: MessageBasedResource) -> None:
    raw.write("VOLT 5,(@1);CURR 2,(@1);OUTP ON,(@1)")
    raw.write("SENS:SWE:POIN 5,(@1);TINT 0.01,(@1);OFFS:POIN 20,(@1)")
    started = time.monotonic()
    raw.query("MEAS:ARR:CURR? (@1)")
    assert time.monotonic() - started >= 0.25 - 0.002  # 20 points late + 5 points long


@pytest.mark.parametrize("dialect", ["rigol-dp800", "siglent-spd3303x"])
def test_other_dialect_modes_have_no_datalogger(
    dialect: str, start_server: Callable[..., ScpiPsuServer]
) -> None:
    server = start_server(dialect)
    rm = pyvisa.ResourceManager("@py")
    try:
        res = rm.open_resource(server.resource, read_termination="\n", write_termination="\n")
        assert isinstance(res, MessageBasedResource)
        res.write("SENS:SWE:POIN 10")
        assert res.query("SYST:ERR?").startswith("-113,")
    finally:
        rm.close()
