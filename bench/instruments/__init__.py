"""Bench instruments over pyvisa: SCPI power supplies (psu.py), their dialects, a registry."""

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
from bench.instruments.registry import DRIVERS, open_supply, register

__all__ = [
    "DIALECTS",
    "DRIVERS",
    "AcquisitionRefused",
    "ArrayReading",
    "ArraySupply",
    "Dialect",
    "InstrumentError",
    "PowerSupply",
    "SafeExitGuard",
    "ScpiPsu",
    "SetpointRefused",
    "open_psu",
    "open_supply",
    "register",
    "safe_on_exit",
]
