"""Radio drivers by the name a rig file gives them (``radio: {driver: spinel}``).

Adding a dongle family is one module with a class implementing
:class:`~bench.radio.capability.Radio` and one line here.
"""

from __future__ import annotations

import importlib
from typing import Any

from bench.errors import RigError
from bench.radio.capability import Radio
from bench.rig import RadioLink
from bench.transport.serial import SerialPort

#: driver name -> "module:Class" (imported on first use)
RADIO_DRIVERS = {
    "spinel": "bench.radio.spinel_radio:SpinelRadio",
    "skstack": "bench.radio.skstack_radio:SkstackRadio",
}


def open_radio(link: RadioLink, port: SerialPort) -> Radio:
    """The driver the rig names for this dongle, on its open serial port."""
    target = RADIO_DRIVERS.get(link.driver)
    if target is None:
        valid = ", ".join(RADIO_DRIVERS)
        raise RigError(f"unknown radio driver {link.driver!r}; valid drivers: {valid}")
    module_name, _, class_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    options: dict[str, Any] = {"dialect": link.dialect} if link.dialect else {}
    radio: Radio = cls(port, **options)
    return radio
