"""SCPI supplies: the real driver through pyvisa-py over TCP to the virtual PSU on 127.0.0.1.

The server runs in the dialect of the driver under test (Keysight E36300 for keysight and
scpi-generic; its Rigol DP800 and Siglent SPD3303X modes accept only those families'
commands), and records every command it receives, so the tests check both behaviour and
the exact command strings, including their order.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import pytest
import pyvisa
from pyvisa.resources import MessageBasedResource

from bench.instruments import (
    DIALECTS,
    DRIVERS,
    InstrumentError,
    ScpiPsu,
    SetpointRefused,
    open_psu,
    open_supply,
    safe_on_exit,
)
from bench.instruments.dialects import KEYSIGHT_E36300
from bench.lab.scpi_server import ResistiveLoad, ScpiPsuServer
from bench.rig import PSU_DRIVERS, Instrument

SERVER_DIALECT = {
    "keysight-e36300": "keysight-e36300",
    "scpi-generic": "keysight-e36300",
    "rigol-dp800": "rigol-dp800",
    "siglent-spd3303x": "siglent-spd3303x",
}
DRIVER_NAMES = sorted(SERVER_DIALECT)
CH1 = {"max_voltage": 5.5, "max_current": 3.5, "voltage": 5.1, "current_limit": 3.0}
CH2 = {"max_voltage": 20.0, "max_current": 2.0, "voltage": 19.0, "current_limit": 1.6}
# configure(1) + output(1, True) on a fresh session; each command is followed by SYST:ERR?
EXPECTED = {
    "keysight-e36300": [
        "VOLT:PROT 5.5,(@1)",
        "CURR 3,(@1)",
        "CURR:PROT:STAT ON,(@1)",
        "VOLT 5.1,(@1)",
        "OUTP ON,(@1)",
    ],
    "scpi-generic": [
        "INST:NSEL 1",
        "VOLT:PROT 5.5",
        "VOLT:PROT:STAT ON",
        "CURR 3",
        "CURR:PROT:STAT ON",
        "VOLT 5.1",
        "INST:NSEL 1",
        "OUTP ON",
    ],
    "rigol-dp800": [
        ":OUTP:OVP:VAL CH1,5.5",
        ":OUTP:OVP CH1,ON",
        ":SOUR1:CURR 3",
        ":OUTP:OCP:VAL CH1,3",
        ":OUTP:OCP CH1,ON",
        ":SOUR1:VOLT 5.1",
        ":OUTP CH1,ON",
    ],
    "siglent-spd3303x": ["CH1:CURR 3", "CH1:VOLT 5.1", "OUTP CH1,ON"],
}
VENDOR = {
    "keysight-e36300": "Keysight",
    "scpi-generic": "Keysight",
    "rigol-dp800": "RIGOL",
    "siglent-spd3303x": "Siglent",
}


def make_instrument(driver: str, server: ScpiPsuServer, **channels: dict[str, Any]) -> Instrument:
    table = {int(k.lstrip("ch")): v for k, v in channels.items()} or {1: CH1, 2: CH2}
    return Instrument.model_validate(
        {"driver": driver, "resource": server.resource, "channels": table}
    )


@pytest.fixture
def load() -> ResistiveLoad:
    return ResistiveLoad({1: 10.0, 2: 40.0, 3: 40.0}, noise_a=0.002, seed=7)


@pytest.fixture(params=DRIVER_NAMES)
def rig(
    request: pytest.FixtureRequest, start_server: Callable[..., ScpiPsuServer]
) -> Iterator[tuple[ScpiPsu, ScpiPsuServer]]:
    """A driver (each dialect in turn) and the server speaking its dialect."""
    driver: str = request.param
    server = start_server(SERVER_DIALECT[driver])
    psu = open_psu("psu1", make_instrument(driver, server))
    server.clear_transcript()
    yield psu, server
    psu.close()


@contextlib.contextmanager
def bare_session(resource: str) -> Iterator[MessageBasedResource]:
    """A plain pyvisa session, no driver in between."""
    rm = pyvisa.ResourceManager("@py")
    try:
        res = rm.open_resource(resource, read_termination="\n", write_termination="\n")
        assert isinstance(res, MessageBasedResource)
        res.timeout = 2000
        yield res
    finally:
        rm.close()


@pytest.fixture
def raw(server: ScpiPsuServer) -> Iterator[MessageBasedResource]:
    """A bare pyvisa session to the Keysight-mode server."""
    with bare_session(server.resource) as res:
        yield res


def commands(server: ScpiPsuServer, error_query: str) -> list[str]:
    """The transcript without the error queries that follow each setting."""
    return [c for c in server.transcript() if c.lstrip(":") != error_query.lstrip(":")]


# --- drivers, dialects and the registry --------------------------------------------------------


def test_registry_has_a_driver_for_every_rig_psu_driver(server: ScpiPsuServer) -> None:
    assert set(DRIVERS) == set(PSU_DRIVERS) == set(DIALECTS)
    psu = open_supply("psu1", make_instrument("keysight-e36300", server))
    try:
        assert isinstance(psu, ScpiPsu)
    finally:
        psu.close()


def test_identify_configure_and_read_back(rig: tuple[ScpiPsu, ScpiPsuServer]) -> None:
    psu, server = rig
    assert psu.identify().startswith(VENDOR[psu.instrument.driver])
    psu.configure(1)
    state = server.channel(1)
    assert (state.voltage, state.current, state.output) == (5.1, 3.0, False)
    if psu.dialect.ovp_level is not None:
        assert state.ovp_level == 5.5 and state.ovp_enabled
    if psu.dialect.ocp_enable is not None:
        assert state.ocp_enabled and state.ocp_level in (None, 3.0)
    psu.set_voltage(1, 4.8)
    psu.set_current_limit(1, 2.5)
    state = server.channel(1)
    assert (state.voltage, state.current) == (4.8, 2.5)
    if psu.dialect.ocp_level is not None:
        assert state.ocp_level == 2.5  # a separate OCP level follows the limit


def test_exact_commands_with_protection_before_output_on(
    rig: tuple[ScpiPsu, ScpiPsuServer],
) -> None:
    psu, server = rig
    psu.output(1, True)  # never configured in this session: configures first
    error_query = psu.dialect.error_query
    seen = [c.lstrip(":") for c in server.transcript()]
    assert seen[1::2] == [error_query.lstrip(":")] * (len(seen) // 2)  # each setting checked
    sent = commands(server, error_query)
    assert sent == EXPECTED[psu.instrument.driver]
    protection = [c for c in sent if "PROT" in c or "OVP" in c or "OCP" in c or "CURR" in c]
    assert protection and all(sent.index(c) < sent.index(sent[-1]) for c in protection)
    assert server.channel(1).output


def test_output_and_measurements(rig: tuple[ScpiPsu, ScpiPsuServer], load: ResistiveLoad) -> None:
    psu, server = rig
    psu.output(1, True)
    assert psu.output_state(1) is True
    volts, amps = psu.measure_voltage(1), psu.measure_current(1)
    assert volts == pytest.approx(5.1, abs=1e-3)
    assert amps == pytest.approx(5.1 / 10.0, abs=0.012)  # 6 sigma of the load's noise
    server.clear_transcript()
    power = psu.measure_power(1)
    assert power == pytest.approx(volts * amps, abs=5.1 * 0.012)
    asked = "\n".join(server.transcript())
    if psu.dialect.measure_power is None:  # Keysight E36300: V*I
        assert "POW" not in asked and "MEAS:VOLT?" in asked and "MEAS:CURR?" in asked
    else:
        assert psu.dialect.measure_power.format(ch=1) in asked
    psu.output(1, False)
    assert psu.output_state(1) is False
    assert psu.measure_current(1) == 0.0
    assert load.events == [(1, True), (1, False)]


# --- safety ------------------------------------------------------------------------------------


def test_setpoints_beyond_the_rig_limits_are_refused_before_any_write(
    rig: tuple[ScpiPsu, ScpiPsuServer],
) -> None:
    psu, server = rig
    with pytest.raises(SetpointRefused) as refused:
        psu.set_voltage(1, 6.0)
    message = str(refused.value)
    assert "\n" not in message
    for part in ("psu1", "channel 1", "6 V", "max_voltage 5.5 V", "lower the set-point"):
        assert part in message
    with pytest.raises(SetpointRefused, match=r"current limit 3\.6 A .* max_current 3\.5 A"):
        psu.set_current_limit(1, 3.6)
    for bad in (math.nan, math.inf, -0.1):
        with pytest.raises(SetpointRefused, match="finite number from 0"):
            psu.set_voltage(1, bad)
    assert server.transcript() == []  # nothing reached the supply, no VOLT, no CURR
    assert server.channel(1).voltage == 0.0


def test_undeclared_channel_is_refused(rig: tuple[ScpiPsu, ScpiPsuServer]) -> None:
    psu, server = rig
    calls: list[Callable[[], object]] = [
        lambda: psu.output(3, True),
        lambda: psu.set_voltage(3, 1.0),
        lambda: psu.configure(3),
        lambda: psu.measure_voltage(3),
    ]
    for call in calls:
        with pytest.raises(SetpointRefused, match=r"psu1: channel 3 is not declared .*: 1, 2"):
            call()
    assert server.transcript() == []
    assert not server.channel(3).output


def test_instrument_errors_surface_with_the_supply_text(
    start_server: Callable[..., ScpiPsuServer],
) -> None:
    # the rig allows 5.5 V on channel 1, but this supply's range stops at 5 V
    server = start_server(ranges=[(5.0, 10.0), (25.0, 2.0)])
    with open_psu("psu1", make_instrument("keysight-e36300", server)) as psu:
        with pytest.raises(InstrumentError, match=r'psu1: .*-222,"Data out of range".*VOLT 5\.2'):
            psu.set_voltage(1, 5.2)
        assert psu.output_state(1) is False
    bad = dataclasses.replace(KEYSIGHT_E36300, ocp_enable="CURR:PROT:BOGUS ON,(@{ch})")
    psu = ScpiPsu("psu1", make_instrument("keysight-e36300", server), bad)
    try:
        with pytest.raises(InstrumentError, match=r'-113,"Undefined header".*CURR:PROT:BOGUS'):
            psu.output(1, True)
        assert not server.channel(1).output  # the output never went on
    finally:
        psu.close()


def test_wrong_driver_for_the_supply_is_refused(server: ScpiPsuServer) -> None:
    with pytest.raises(InstrumentError, match=r"identifies as 'Keysight.*not a Rigol"):
        open_psu("psu1", make_instrument("rigol-dp800", server))
    assert "OUTP" not in "".join(server.transcript())


def test_context_manager_restores_safe_state_on_failure(server: ScpiPsuServer) -> None:
    with (
        pytest.raises(RuntimeError),
        open_psu("psu1", make_instrument("keysight-e36300", server)) as psu,
    ):
        psu.output(1, True)
        assert server.channel(1).output
        raise RuntimeError("a test failed")
    assert not server.channel(1).output
    psu.close()  # a second close does nothing


def test_safe_state_honours_a_declared_on(server: ScpiPsuServer) -> None:
    instrument = make_instrument(
        "keysight-e36300", server, ch1=CH1, ch2={**CH2, "safe_state": "on"}
    )
    with open_psu("psu1", instrument) as psu:
        psu.output(1, True)
        psu.safe_state()
        one, two = server.channel(1), server.channel(2)
        assert not one.output
        assert two.output and two.voltage == 19.0 and two.ocp_enabled  # configured first
    assert server.channel(2).output  # close() keeps a safe-"on" channel on


def test_ocp_trips_when_the_load_exceeds_the_limit(
    server: ScpiPsuServer, load: ResistiveLoad, raw: MessageBasedResource
) -> None:
    with open_psu("psu1", make_instrument("keysight-e36300", server)) as psu:
        load.set_ohms(1, 1.0)  # 5.1 A against a 3 A limit
        psu.output(1, True)
        assert server.channel(1).ocp_tripped and psu.output_state(1) is False
        assert raw.query("OUTP:PROT:TRIP? (@1)") == "1"
        raw.write("OUTP:PROT:CLE (@1)")
        assert raw.query("OUTP:PROT:TRIP? (@1)") == "0"
        load.set_ohms(1, 10.0)
        psu.output(1, True)
        assert psu.output_state(1) is True
        load.set_ohms(1, 1.0)  # the load grows while nobody asks: the supply still trips
        deadline = time.monotonic() + 2.0
        while server.channel(1).output and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not server.channel(1).output and server.channel(1).ocp_tripped
    assert load.events[-1] == (1, False)


# --- exit paths --------------------------------------------------------------------------------

CHILD = """
import sys, time
from bench.instruments import open_psu, safe_on_exit
from bench.rig import Instrument
psu = open_psu("psu1", Instrument.model_validate_json(sys.argv[1]))
if sys.argv[2] == "guard":
    safe_on_exit(psu)
psu.output(1, True)
print("on", flush=True)
time.sleep(60)
"""


def _child(instrument: Instrument, mode: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, instrument.model_dump_json(), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        ready = selector.select(timeout=20)
    line = proc.stdout.readline() if ready else ""
    if line.strip() != "on":
        proc.kill()
        pytest.fail(f"the child did not turn the output on: {proc.communicate()[1]}")
    return proc


def test_sigterm_puts_outputs_in_safe_state(server: ScpiPsuServer) -> None:
    proc = _child(make_instrument("keysight-e36300", server), "guard")
    assert server.channel(1).output
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == -signal.SIGTERM  # it still dies of SIGTERM
    assert not server.channel(1).output


def test_sigkill_cannot_but_the_next_session_safe_state_does(server: ScpiPsuServer) -> None:
    """A SIGKILLed process runs no handler at all: the output stays on until the next
    session calls safe_state() at its start, which turns it back off."""
    instrument = make_instrument("keysight-e36300", server)
    proc = _child(instrument, "guard")
    proc.kill()
    assert proc.wait(timeout=20) == -signal.SIGKILL
    assert server.channel(1).output  # nothing could restore it
    with open_psu("psu1", instrument) as psu:
        psu.safe_state()
        assert not server.channel(1).output


def test_safe_on_exit_chains_and_restores_the_previous_handler(server: ScpiPsuServer) -> None:
    original = signal.getsignal(signal.SIGTERM)
    seen: list[int] = []

    def previous(signum: int, frame: FrameType | None) -> None:
        seen.append(signum)

    signal.signal(signal.SIGTERM, previous)
    try:
        psu = open_psu("psu1", make_instrument("keysight-e36300", server))
        with safe_on_exit(psu):
            assert signal.getsignal(signal.SIGTERM) is not previous
        assert signal.getsignal(signal.SIGTERM) is previous  # removed: restored
        guard = safe_on_exit(psu)
        psu.output(1, True)
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 5
        while not seen and time.monotonic() < deadline:
            time.sleep(0.01)
        assert seen == [signal.SIGTERM]  # closed the supply, then called the previous one
        assert not server.channel(1).output
        assert signal.getsignal(signal.SIGTERM) is previous
        guard.remove()
    finally:
        signal.signal(signal.SIGTERM, original)


# --- the virtual supply's SCPI -----------------------------------------------------------------


def test_scpi_forms_compound_commands_and_common_commands(raw: MessageBasedResource) -> None:
    assert raw.query("*idn?").startswith("Keysight Technologies,E36313A,")
    raw.write("sour:volt 2.5,(@2);curr 0.5,(@2)")  # CURR continues the SOUR: path
    raw.write("SOUR:VOLT:LEV 1,(@3);CURR 1,(@3)")  # ...here that is SOUR:VOLT:CURR
    assert raw.query("SYST:ERR?") == '-113,"Undefined header"'
    assert raw.query("VOLT? (@3);CURR? (@3)") == "+1.00000000E+00;+2.00000000E+00"
    assert raw.query("VOLTage:LEVel:IMMediate:AMPLitude? (@2);:CURRent? (@2)") == (
        "+2.50000000E+00;+5.00000000E-01"
    )
    raw.write("INST:NSEL 2;:OUTPut:STATe ON")
    assert raw.query("outp? (@1,2)") == "0,1"
    volts = float(raw.query("MEASure:SCALar:VOLTage:DC? (@2)"))
    amps = float(raw.query("MEAS:CURR?"))  # the selected channel: 2
    assert volts == 2.5 and amps == pytest.approx(2.5 / 40.0, abs=0.012)
    assert float(raw.query("MEAS:POW? (@2)")) == pytest.approx(2.5 * 2.5 / 40.0, abs=0.05)
    assert raw.query("*OPC?") == "1"
    raw.write("*RST")
    assert raw.query("OUTP? (@1:3)") == "0,0,0"
    assert raw.query("SYST:ERR?") == '+0,"No error"'


def test_scpi_error_queue(raw: MessageBasedResource) -> None:
    raw.write("VOLTAG 1")  # not a short or long form
    raw.write("OUTP MAYBE,(@1)")
    raw.write("VOLT 99,(@1)")  # beyond the 6 V range of channel 1
    raw.write("VOLT 1,(@9)")  # no such channel
    assert [raw.query("SYST:ERR?") for _ in range(5)] == [
        '-113,"Undefined header"',
        '-224,"Illegal parameter value"',
        '-222,"Data out of range"',
        '-224,"Illegal parameter value"',
        '+0,"No error"',
    ]
    raw.write(";".join(["BOGUS"] * 25))
    errors = [raw.query("SYST:ERR?") for _ in range(21)]
    assert errors[:19] == ['-113,"Undefined header"'] * 19
    assert errors[19:] == ['-350,"Queue overflow"', '+0,"No error"']
    raw.write("BOGUS")
    raw.write("*CLS")
    assert raw.query("SYST:ERR?") == '+0,"No error"'


@pytest.mark.parametrize("dialect", ["rigol-dp800", "siglent-spd3303x"])
def test_other_dialect_modes_accept_only_their_family(
    dialect: str, start_server: Callable[..., ScpiPsuServer]
) -> None:
    server = start_server(dialect)
    with bare_session(server.resource) as res:
        if dialect == "rigol-dp800":
            res.write(":OUTP CH2,ON")
            assert res.query(":OUTP? CH2") == "ON"
            assert res.query(":OUTP:OCP:ALAR? CH2") == "NO"
        else:
            res.write("OUTP CH2,ON")
            assert res.query("SYST:STAT?") == "0x0024"  # bit 5: CH2 on
        res.write("OUTP ON,(@1)")  # Keysight channel-list form
        assert res.query("SYST:ERR?") == '-108,"Parameter not allowed"'
        res.write("OUTP:PROT:CLE")  # Keysight-only header
        assert res.query("SYST:ERR?").startswith("-113,")


def test_server_runs_as_a_module() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.lab.scpi_server", "--port", "0", "--channels", "2"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        resource = line.split()[-1]
        assert resource.startswith("TCPIP::127.0.0.1::") and "2 channel(s)" in line
        with bare_session(resource) as res:
            assert res.query("OUTP? (@1,2)") == "0,0"
    finally:
        proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0


def test_server_binds_loopback_only() -> None:
    with pytest.raises(ValueError, match="loopback only"):
        ScpiPsuServer(host="0.0.0.0")
