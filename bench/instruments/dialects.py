"""SCPI dialects of the bench supplies fieldrig drives: one table per instrument family.

Every difference between families lives here, so :class:`~bench.instruments.psu.ScpiPsu`
has no vendor branches. A table holds command templates: ``{ch}`` is the channel number
and ``{value}`` the number to send. Where ``select`` is set, it is sent before each channel
command (``INST:NSEL n`` + bare commands); otherwise the channel travels in the command.
A template of ``None`` means the family has no such command (the driver then skips the
step, or for power computes V*I). ``array`` is the family's measurement datalogger (a sweep
of points at a fixed interval, fetched as arrays), or ``None`` where the family has none and
the bench reads point queries instead.
"""

from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "DIALECTS",
    "GENERIC",
    "KEYSIGHT_ARRAY",
    "KEYSIGHT_E36300",
    "RIGOL_DP800",
    "SIGLENT_SPD3303X",
    "ArrayCommands",
    "Dialect",
    "parse_bool_reply",
    "parse_siglent_status",
]


def parse_bool_reply(reply: str, channel: int) -> bool:
    """An output state answered as 1/0 or ON/OFF; ValueError for anything else."""
    word = reply.strip().upper()
    if word in ("1", "ON"):
        return True
    if word in ("0", "OFF"):
        return False
    raise ValueError(f"expected 1/0 or ON/OFF for the output state of channel {channel}")


def parse_siglent_status(reply: str, channel: int) -> bool:
    """The output state of CH1/CH2 from the SPD3303X ``SYST:STAT?`` hex word (bits 4, 5)."""
    if channel not in (1, 2):
        raise ValueError(f"the SPD3303X status word reports no output state for CH{channel}")
    try:
        word = int(reply.strip(), 16)
    except ValueError:
        raise ValueError("expected a hex status word such as 0x0010") from None
    return bool(word >> (3 + channel) & 1)


@dataclass(frozen=True)
class ArrayCommands:
    """A family's measurement datalogger: ``points`` samples every ``interval`` seconds.

    The driver sends, each followed by the error query: ``points``, ``interval``, then reads
    ``interval_query`` back (the instrument rounds the interval to its sample clock, and the
    timestamps must use what it really does), ``offset`` (0: the first point is the trigger),
    ``initiate``, ``trigger``; then ``fetch_current`` and ``fetch_voltage`` return the two
    arrays of one acquisition. The bounds are checked before anything is sent.
    """

    points: str
    interval: str
    interval_query: str
    offset: str | None
    initiate: str
    trigger: str
    fetch_current: str
    fetch_voltage: str
    max_points: int
    min_interval_s: float
    max_interval_s: float


@dataclass(frozen=True)
class Dialect:
    """Command templates of one instrument family."""

    name: str
    family: str
    idn_vendors: tuple[str, ...]  # accepted *IDN? manufacturer words; empty: any
    select: str | None
    set_voltage: str
    set_current: str
    ovp_level: str | None
    ovp_enable: str | None
    ocp_level: str | None  # None: OCP trips at the current set-point (CC entry)
    ocp_enable: str | None
    output_on: str
    output_off: str
    output_query: str
    parse_output: Callable[[str, int], bool]
    measure_voltage: str
    measure_current: str
    measure_power: str | None
    error_query: str = "SYST:ERR?"
    clear_status: str | None = "*CLS"
    identify: str = "*IDN?"
    compound: bool = True  # takes "CMD;:SYST:ERR?" (one round trip per checked setting)
    array: ArrayCommands | None = None  # the datalogger; None: point queries only


# Keysight measurement digitizer ("datalogger" in issue 4): SENSe:SWEep + acquire trigger +
# FETCh:ARRay. What the sources available here really say, and what they do not:
# - Agilent 66312A/66332A User's Guide, Language Dictionary p. 47 ("Measurement Commands"):
#   MEASure:ARRay:CURRent[:DC]? / FETCh:ARRay:CURRent[:DC]? (and :VOLTage) return an array
#   of instantaneous output current (voltage); the time interval is set by
#   SENSe:SWEep:TINTerval, the trigger's position in the buffer by SENSe:SWEep:OFFSet, the
#   number of points returned by SENSe:SWEep:POINts. MEASure triggers a new acquisition,
#   FETCh returns the data of the last one.
# - Keysight N6705C User's Guide, ch. 6 "Advanced Source, Measurement, and Control" p. 213:
#   SENS:SWE:TINT values are rounded to the sample clock (10.24 / 20.48 / 40.96 us steps,
#   20.48 us with SENS:SWE:TINT:RES RES20), so the driver reads the interval back;
#   SENS:SWE:OFFS:POIN n,(@1): 0 takes every sample after the trigger, negative values
#   capture pre-trigger data.
# - Keysight E4360 User's Guide p. 59: TRIG:ACQ:SOUR BUS,(@1); INIT:ACQ (@1,2) enables the
#   measurement trigger system, which returns to Idle after one triggered measurement; an
#   immediate trigger over the bus (TRIG:ACQ (@1)) triggers regardless of the source.
# - The E36300 Series Programming Guide (9018-04577; E36311-90008): the copy reachable here
#   shows only its contents, which list ABORt (@<chanlist>) and ABORt:DLOG (a DLOG data
#   logger); no page confirming SENSe:SWEep / FETCh:ARRay on an E36300 could be read. A
#   real E36300 without them answers -113 and the driver raises InstrumentError naming the
#   command: check the guide before relying on arrays from a real E36300.
# Bounds (1..4096 points, 20.48 us..40 000 s) are this project's conservative limits, not
# values read from an E36300 guide; 20.48 us is the N6705C's RES20 sample-clock step. The
# virtual supply's keysight-e36300 mode implements exactly these commands and bounds.
KEYSIGHT_ARRAY = ArrayCommands(
    points="SENS:SWE:POIN {value},(@{ch})",
    interval="SENS:SWE:TINT {value},(@{ch})",
    interval_query="SENS:SWE:TINT? (@{ch})",
    offset="SENS:SWE:OFFS:POIN 0,(@{ch})",
    initiate="INIT:ACQ (@{ch})",
    trigger="TRIG:ACQ (@{ch})",
    fetch_current="FETC:ARR:CURR? (@{ch})",
    fetch_voltage="FETC:ARR:VOLT? (@{ch})",
    max_points=4096,
    min_interval_s=20.48e-6,
    max_interval_s=40_000.0,
)

# Keysight E36300 series (E36311A, E36312A, E36313A). Source: Keysight "E36300 Series
# Programmable DC Power Supplies Programming Guide", SCPI command reference: SOURce
# (VOLTage, CURRent, VOLTage:PROTection[:LEVel], CURRent:PROTection:STATe), OUTPut[:STATe],
# MEASure[:SCALar]:VOLTage|CURRent[:DC]?, SYSTem:ERRor? (answers +0,"No error"). Every
# channel command takes a channel list (@n). OVP has a level and no STATe node here (it is
# always armed); OCP trips when the output enters CC at the CURRent set-point, so OCP "at
# current_limit" is CURR + CURR:PROT:STAT ON. No MEASure:POWer: power is V*I.
KEYSIGHT_E36300 = Dialect(
    name="keysight-e36300",
    family="Keysight E36300 series",
    idn_vendors=("KEYSIGHT", "AGILENT"),
    select=None,
    set_voltage="VOLT {value},(@{ch})",
    set_current="CURR {value},(@{ch})",
    ovp_level="VOLT:PROT {value},(@{ch})",
    ovp_enable=None,
    ocp_level=None,
    ocp_enable="CURR:PROT:STAT ON,(@{ch})",
    output_on="OUTP ON,(@{ch})",
    output_off="OUTP OFF,(@{ch})",
    output_query="OUTP? (@{ch})",
    parse_output=parse_bool_reply,
    measure_voltage="MEAS:VOLT? (@{ch})",
    measure_current="MEAS:CURR? (@{ch})",
    measure_power=None,
    array=KEYSIGHT_ARRAY,
)

# Rigol DP800 series (DP811/DP821/DP831/DP832). Source: RIGOL "DP800 Series Programmable
# Linear DC Power Supply Programming Guide", publication PGH03109-1110, Jun. 2021:
# [:SOURce[<n>]]:VOLTage / :CURRent, :OUTPut[:STATe] [CH<n>,]{ON|OFF}, :OUTPut? CH<n>
# (answers ON/OFF), :OUTPut:OVP:VALue / :OUTPut:OVP [CH<n>,]{ON|OFF}, the same for :OCP
# (OCP has its own level), :MEASure[:VOLTage]|:CURRent|:POWEr? CH<n>, :SYSTem:ERRor?.
# No SCPI array fetch (FETCh:ARRay-style) is used for this family: point queries only
# (array=None); whatever on-instrument recording the DP800 offers is not read from here.
RIGOL_DP800 = Dialect(
    name="rigol-dp800",
    family="Rigol DP800 series",
    idn_vendors=("RIGOL",),
    select=None,
    set_voltage=":SOUR{ch}:VOLT {value}",
    set_current=":SOUR{ch}:CURR {value}",
    ovp_level=":OUTP:OVP:VAL CH{ch},{value}",
    ovp_enable=":OUTP:OVP CH{ch},ON",
    ocp_level=":OUTP:OCP:VAL CH{ch},{value}",
    ocp_enable=":OUTP:OCP CH{ch},ON",
    output_on=":OUTP CH{ch},ON",
    output_off=":OUTP CH{ch},OFF",
    output_query=":OUTP? CH{ch}",
    parse_output=parse_bool_reply,
    measure_voltage=":MEAS:VOLT? CH{ch}",
    measure_current=":MEAS:CURR? CH{ch}",
    measure_power=":MEAS:POWE? CH{ch}",
    error_query=":SYST:ERR?",
)

# Siglent SPD3303X / SPD3303X-E. Source: Siglent "SPD3000X Series Quick Start", remote
# control chapter: [{CH1|CH2}:]VOLTage / CURRent, OUTPut {CH1|CH2|CH3},{ON|OFF},
# MEASure:VOLTage? / CURRent? / POWEr? {CH1|CH2}, SYSTem:ERRor?, SYSTem:STATus? (a hex
# word: bit 4 CH1 on, bit 5 CH2 on). It has no output-state query per channel, no *CLS and
# no programmable OVP/OCP: the CC current limit is its only current protection, and the
# driver's check of every set-point against the rig's limits is the voltage protection.
# Commands are sent one per line (its parser is not documented to take ';' lists). No array
# acquisition is used for this family: point queries only (array=None).
SIGLENT_SPD3303X = Dialect(
    name="siglent-spd3303x",
    family="Siglent SPD3303X series",
    idn_vendors=("SIGLENT",),
    select=None,
    set_voltage="CH{ch}:VOLT {value}",
    set_current="CH{ch}:CURR {value}",
    ovp_level=None,
    ovp_enable=None,
    ocp_level=None,
    ocp_enable=None,
    output_on="OUTP CH{ch},ON",
    output_off="OUTP CH{ch},OFF",
    output_query="SYST:STAT?",
    parse_output=parse_siglent_status,
    measure_voltage="MEAS:VOLT? CH{ch}",
    measure_current="MEAS:CURR? CH{ch}",
    measure_power="MEAS:POWE? CH{ch}",
    clear_status=None,
    compound=False,
)

# Generic SCPI-1999 supply: INSTrument:NSELect n, then bare SOURce/OUTPut/MEASure commands
# (the form the SCPI standard volume 2 and most multi-output supplies accept), OVP with
# VOLT:PROT + VOLT:PROT:STAT, OCP tripping at the CURR set-point (CURR:PROT:STAT). SCPI
# defines no common array-acquisition command set for supplies: point queries (array=None).
GENERIC = Dialect(
    name="scpi-generic",
    family="generic SCPI supply",
    idn_vendors=(),
    select="INST:NSEL {ch}",
    set_voltage="VOLT {value}",
    set_current="CURR {value}",
    ovp_level="VOLT:PROT {value}",
    ovp_enable="VOLT:PROT:STAT ON",
    ocp_level=None,
    ocp_enable="CURR:PROT:STAT ON",
    output_on="OUTP ON",
    output_off="OUTP OFF",
    output_query="OUTP?",
    parse_output=parse_bool_reply,
    measure_voltage="MEAS:VOLT?",
    measure_current="MEAS:CURR?",
    measure_power="MEAS:POW?",
)

DIALECTS: dict[str, Dialect] = {
    d.name: d for d in (KEYSIGHT_E36300, RIGOL_DP800, SIGLENT_SPD3303X, GENERIC)
}
