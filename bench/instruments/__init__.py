"""Bench instruments over pyvisa: SCPI power supplies (psu.py) and their dialects, RF
attenuators (attenuator.py), and the registry that opens them by driver name."""

from bench.instruments.attenuator import Attenuator, MiniCircuitsAttenuator
from bench.instruments.dialects import DIALECTS, Dialect
from bench.instruments.psu import (
    AcquisitionRefused,
    ArrayReading,
    ArraySupply,
    InstrumentError,
    PowerSupply,
    SafeExitGuard,
    ScpiPsu,
    SetpointRefused,
    open_psu,
    safe_on_exit,
)
from bench.instruments.registry import DRIVERS, open_attenuator, open_supply, register

__all__ = [
    "DIALECTS",
    "DRIVERS",
    "AcquisitionRefused",
    "ArrayReading",
    "ArraySupply",
    "Attenuator",
    "Dialect",
    "InstrumentError",
    "MiniCircuitsAttenuator",
    "PowerSupply",
    "SafeExitGuard",
    "ScpiPsu",
    "SetpointRefused",
    "open_attenuator",
    "open_psu",
    "open_supply",
    "register",
    "safe_on_exit",
]
